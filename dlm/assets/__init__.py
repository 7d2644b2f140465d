"""Shipped models: `bundled` (the small model), `testbed` (issue 14) and `ar` (APD's small autoregressive model)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent

#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install dlm with its test extras.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), f"dlm needs Python >= 3.11, found {sys.version}"'
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# torch (CPU) and transformers are test-only: the parity tests run dlm against transformers' reference models.
# These machines carry a local CPU wheel of torch 2.13.0 for Python 3.11 only; elsewhere pip would fetch a
# multi-GB CUDA build, so other Pythons skip the extra (the parity tests then skip themselves).
EXTRAS=dev
if .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || [ "${DLM_WITH_TORCH:-0}" = 1 ]; then
  EXTRAS=dev,torch
fi
# setuptools reports every editable install with a package-dir mapping as "information only"; nothing to act on.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q -e ".[$EXTRAS]"

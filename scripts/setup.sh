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
.venv/bin/python -m pip install -q -e '.[dev,torch]'

#!/usr/bin/env bash
# The test command of the README: sets up .venv/ on first use, then runs the whole suite on CPU.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
exec .venv/bin/python -m pytest tests -q "$@"

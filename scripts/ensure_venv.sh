#!/usr/bin/env bash
# Creates .venv/ at the repo root on first use and installs requirements.txt (then
# requirements-no-deps.txt, without dependencies) into it; later calls reuse it (reinstalling
# only when either file or the TensorFlow build changed). Sourced by run.sh and test.sh, so a
# fresh clone needs no separate setup step.
#
# TensorFlow build, at the version pinned in requirements.txt:
#   METASEG_TF=cuda  tensorflow[and-cuda] (CUDA and cuDNN from pip)
#   METASEG_TF=cpu   tensorflow-cpu (no CUDA probing, so no cuInit errors on start-up)
#   unset            cuda when `nvidia-smi -L` lists a GPU, else cpu
# A .venv made before builds were chosen (its stamp holds only the requirements hash) is kept
# as it is unless METASEG_TF is set.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY_BOOT="${PYTHON:-python3}"
if ! "$PY_BOOT" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "metaseg needs Python >= 3.11 (found: $("$PY_BOOT" --version 2>&1)). Set PYTHON=/path/to/python3.11." >&2
  exit 2
fi
TF_BUILD="${METASEG_TF:-}"
if [ -z "$TF_BUILD" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    TF_BUILD=cuda
  else
    TF_BUILD=cpu
  fi
fi
case "$TF_BUILD" in
  cpu) TF_PACKAGE=tensorflow-cpu ;;
  cuda) TF_PACKAGE="tensorflow[and-cuda]" ;;
  *) echo "METASEG_TF must be cpu or cuda (or unset to detect a GPU). Received: $TF_BUILD" >&2; exit 2 ;;
esac
TF_VERSION="$(sed -n 's/^tensorflow==\([^ #]*\).*/\1/p' "$ROOT/requirements.txt")"
if [ -z "$TF_VERSION" ]; then
  echo "requirements.txt must pin tensorflow==VERSION" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PY_BOOT" -m venv "$VENV"
fi
STAMP="$VENV/.requirements.sha256"
HASH="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-no-deps.txt" | sha256sum | cut -d' ' -f1)"
WANT="$HASH $TF_BUILD"
HAVE="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$HAVE" != "$WANT" ] && ! { [ "$HAVE" = "$HASH" ] && [ -z "${METASEG_TF:-}" ]; }; then
  echo "[setup] installing requirements.txt with $TF_PACKAGE==$TF_VERSION into $VENV (first run takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  # tensorflow and tensorflow-cpu install the same module: remove the other build first.
  "$VENV/bin/python" -m pip uninstall --quiet -y tensorflow tensorflow-cpu >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install --quiet "$TF_PACKAGE==$TF_VERSION" >&2
  grep -v '^tensorflow==' "$ROOT/requirements.txt" > "$VENV/.requirements-rest.txt"
  "$VENV/bin/python" -m pip install --quiet -r "$VENV/.requirements-rest.txt" >&2
  # Packages whose declared pins clash with ours (why: requirements.txt's comment).
  "$VENV/bin/python" -m pip install --quiet --no-deps -r "$ROOT/requirements-no-deps.txt" >&2
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
# TensorFlow's C++ log lines: the Python entry points hide them (devices/quiet.py) unless
# TF_CPP_MIN_LOG_LEVEL is set or --verbose is given, so nothing is exported here.

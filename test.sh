#!/usr/bin/env bash
# The test command of the README: sets up .venv/ on first use, then runs the whole suite on CPU.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
# Two worker processes: much of a test's time is single-threaded Python and graph tracing, so
# two of them keep both cores busy (-n 0 runs serially; METASEG_TEST_WORKERS sets another count).
# Each file runs whole on one worker, in order: some tests read what an earlier one wrote.
exec .venv/bin/python -m pytest tests -q -n "${METASEG_TEST_WORKERS:-2}" --dist loadfile "$@"

#!/usr/bin/env bash
# Creates ./.venv if needed and installs crewthrottle (editable, built by maturin) with the
# extras named in $1 (e.g. "test" or "crewai"). Used by test.sh and demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[$1]"

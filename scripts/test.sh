#!/usr/bin/env bash
# The whole test suite on a fresh machine (Python >= 3.10 and a Rust toolchain):
# builds the native module into ./.venv, then runs the Rust and Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

./scripts/check.sh
cargo test --lib --quiet
.venv/bin/python -m pytest "$@"

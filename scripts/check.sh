#!/usr/bin/env bash
# Static checks (run by scripts/test.sh): formatting, lints, types, stubs against the module.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
.venv/bin/ruff check python tests benches
.venv/bin/ruff format --check python tests benches
.venv/bin/python -m mypy --strict python/crewthrottle
.venv/bin/python -m mypy.stubtest crewthrottle._native

#!/usr/bin/env bash
# Static checks (run by scripts/test.sh): formatting, lints, types, stubs against the module.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# The gate's model check (src/core/gate/model.rs) exists only under `--cfg shuttle`; its own
# target directory, so the two builds do not keep invalidating each other.
CARGO_TARGET_DIR=target/shuttle RUSTFLAGS="--cfg shuttle" cargo clippy --lib --tests --quiet -- -D warnings
.venv/bin/ruff check python tests benches scripts
.venv/bin/ruff format --check python tests benches scripts
.venv/bin/python -m mypy --strict python/crewthrottle scripts/check_dist.py scripts/smoke_wheel.py
.venv/bin/python -m mypy.stubtest crewthrottle._native

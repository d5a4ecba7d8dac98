#!/usr/bin/env bash
# The whole test suite on a fresh machine (Python >= 3.10 and a Rust toolchain): builds the
# native module into ./.venv, runs the static checks, the Rust tests (and the gate's model
# check under shuttle), the release packaging (sdist and abi3 wheel built, checked, installed
# without Rust and smoke-tested), pytest, and the CrewAI tests again against the oldest CrewAI
# the extra admits. The shared-budget tests get a real redis-server (installed with apt-get when
# missing; see scripts/redis.sh).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/redis.sh

./scripts/setup-venv.sh test
./scripts/check.sh
cargo test --lib --quiet
# The model check of the gate under shuttle (src/core/gate/model.rs): only its tests, as the
# other tests' threads cannot run on shuttle's lock.
CARGO_TARGET_DIR=target/shuttle RUSTFLAGS="--cfg shuttle" cargo test --lib --quiet model_check
.venv/bin/python scripts/check_dist.py
start_test_redis
.venv/bin/python -m pytest "$@"
./scripts/test-crewai-floor.sh -q

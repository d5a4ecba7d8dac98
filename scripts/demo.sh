#!/usr/bin/env bash
# The demo on a fresh machine (Python >= 3.10 and a Rust toolchain): builds crewthrottle with
# the CrewAI extra into ./.venv, then runs 20 CrewAI crews against a rate-limited fake
# provider, unthrottled, with the usual fix, and with crewthrottle. Extra flags pass through
# (e.g. --crews 40 --window 10; see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup-venv.sh crewai
.venv/bin/python -m crewthrottle demo "$@"

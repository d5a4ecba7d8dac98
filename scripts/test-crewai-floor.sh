#!/usr/bin/env bash
# The CrewAI integration against the oldest CrewAI the `crewai` extra admits (the newest one is
# what ./scripts/test.sh installs in .venv). Run by test.sh after setup-venv.sh has built the
# native module into python/crewthrottle/; it gets a venv of its own, .venv-crewai-floor, in
# which crewthrottle is importable from the source tree. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

floor=$(.venv/bin/python - <<'PY'
import re, tomllib
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["crewai"]
print(re.search(r"crewai>=([\w.]+)", extra[0]).group(1))
PY
)
venv=.venv-crewai-floor
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip show crewai 2>/dev/null | grep -qx "Version: $floor"; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "crewai[litellm,anthropic]==$floor" \
        "pytest>=8,<10" "pytest-timeout>=2.3,<3" "httpx>=0.27,<1" "rich>=13,<15"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD/python" > "$site/crewthrottle-source.pth"
echo "CrewAI $floor (the floor of the crewai extra):"
"$venv/bin/python" -m pytest -p crewthrottle.testing.pytest_plugin tests/test_crewai.py tests/test_seams.py "$@"

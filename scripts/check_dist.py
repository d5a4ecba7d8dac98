"""Release packaging as a user gets it (run by scripts/test.sh; issue 11, item 4).

1. ``maturin build --release --sdist``: the sdist, and the abi3 wheel built *from* it (maturin
   unpacks the sdist and builds there, in a fresh target directory), so one release build
   proves both that the wheel builds and that the sdist is complete.
2. ``twine check --strict`` on both, then their contents and metadata: version from
   Cargo.toml, abi3 tag, license file, project URLs, classifiers, ``py.typed`` and stubs.
3. The wheel installed into a fresh virtual environment per CPython found (3.10, the abi3
   floor, and the newest, when pyenv has them), with no Rust toolchain on ``PATH``, where
   ``scripts/smoke_wheel.py`` exercises the public API.

Usage: ``.venv/bin/python scripts/check_dist.py [--keep DIR]``, or ``--wheel WHEEL`` to check
a wheel built elsewhere (the release workflow's) with this Python only.
"""

from __future__ import annotations

import argparse
import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUST_TOOLS = ("cargo", "rustc", "rustup")

#: What the wheel must ship besides the Python modules (the native module's name varies by OS).
WHEEL_FILES = ("crewthrottle/py.typed", "crewthrottle/_native.pyi", "crewthrottle/__init__.py")
SDIST_FILES = (
    "Cargo.toml",
    "Cargo.lock",
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "src/lib.rs",
    "python/crewthrottle/py.typed",
    "python/crewthrottle/_native.pyi",
)
METADATA_FIELDS = ("Summary", "Requires-Python", "Keywords", "License-Expression", "Project-URL")
CLASSIFIERS = ("Typing :: Typed", "Programming Language :: Python :: 3.10", "Operating System")


def fail(message: str) -> NoReturn:
    sys.exit(f"check_dist: FAILED: {message}")


def run(*command: str | Path, env: dict[str, str] | None = None) -> None:
    print("$", " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], check=True, env=env)


def cargo_version() -> str:
    """The one place the version lives (maturin copies it into the metadata)."""
    text = (ROOT / "Cargo.toml").read_text()
    match = re.search(r'^\[package\][^\[]*?^version = "([^"]+)"', text, re.M | re.S)
    if match is None:
        fail("no version in Cargo.toml's [package]")
    return match.group(1)


def build(dist: Path) -> tuple[Path, Path]:
    run(BIN / "maturin", "build", "--release", "--sdist", "--out", dist, "--quiet")
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        fail(f"expected one wheel and one sdist, got {[p.name for p in dist.iterdir()]}")
    run(BIN / "twine", "check", "--strict", wheels[0], sdists[0])
    return wheels[0], sdists[0]


def check_wheel(wheel: Path, version: str) -> None:
    tag = re.fullmatch(rf"crewthrottle-{re.escape(version)}-cp310-abi3-(.+)\.whl", wheel.name)
    if tag is None:
        fail(f"{wheel.name}: not an abi3 wheel for CPython >= 3.10 of version {version}")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"crewthrottle-{version}.dist-info"
        metadata = archive.read(f"{info}/METADATA").decode()
    missing = [f for f in WHEEL_FILES if f not in names]
    if not any(re.fullmatch(r"crewthrottle/_native\..*(so|pyd)", n) for n in names):
        missing.append("crewthrottle/_native.<abi3 extension>")
    if f"{info}/licenses/LICENSE" not in names:
        missing.append(f"{info}/licenses/LICENSE")
    if missing:
        fail(f"{wheel.name} lacks {missing}")
    check_metadata(metadata, version, wheel.name)


def check_metadata(text: str, version: str, where: str) -> None:
    fields = email.parser.Parser().parsestr(text)
    problems = [f"no {name}" for name in METADATA_FIELDS if not fields.get_all(name)]
    if fields["Version"] != version:
        problems.append(f"Version {fields['Version']!r}, Cargo.toml says {version!r}")
    if fields["License-Expression"] != "MIT":
        problems.append(f"License-Expression {fields['License-Expression']!r}")
    classifiers = fields.get_all("Classifier") or []
    for wanted in CLASSIFIERS:
        if not any(c.startswith(wanted) for c in classifiers):
            problems.append(f"no classifier {wanted!r}")
    for extra in ("otel", "prometheus", "crewai", "langchain"):
        if extra not in (fields.get_all("Provides-Extra") or []):
            problems.append(f"no extra {extra!r}")
    if problems:
        fail(f"{where} metadata: {'; '.join(problems)}")


def check_sdist(sdist: Path, version: str) -> None:
    prefix = f"crewthrottle-{version}/"
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
        pkg_info = archive.extractfile(prefix + "PKG-INFO")
        metadata = pkg_info.read().decode() if pkg_info else ""
    missing = [f for f in SDIST_FILES if prefix + f not in names]
    if missing:
        fail(f"{sdist.name} lacks {missing}")
    check_metadata(metadata, version, sdist.name)


def interpreters() -> list[Path]:
    """This CPython, plus the oldest (>= 3.10) and newest others pyenv has, one per minor."""
    found = {sys.version_info[:2]: Path(getattr(sys, "_base_executable", sys.executable))}
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for candidate in sorted(pyenv.glob("3.*/bin/python3")):
        match = re.fullmatch(r"3\.(\d+)\.\d+", candidate.parent.parent.name)
        if match and int(match.group(1)) >= 10:
            found.setdefault((3, int(match.group(1))), candidate)
    minors = sorted(found)
    chosen = {minors[0], minors[-1], sys.version_info[:2]}
    return [found[m] for m in sorted(chosen)]


def rustless_env() -> dict[str, str]:
    """This environment minus every PATH entry holding a Rust tool, and Rust's variables."""
    path = [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and not any(shutil.which(tool, path=entry) for tool in RUST_TOOLS)
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO", "RUSTUP", "RUST"))}
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    env["PATH"] = os.pathsep.join(path)
    return env


def smoke(wheel: Path, python: Path, work: Path, version: str) -> None:
    venv = work / f"venv-{python.parent.parent.name}"
    env = rustless_env()
    run(python, "-m", "venv", "--without-pip", venv, env=env)
    fresh = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # This Python's pip installs into the fresh venv (pip --python): nothing else goes there.
    run(sys.executable, "-m", "pip", "--python", fresh, "install", "--quiet", "--no-index",
        wheel, env=env)  # fmt: skip
    # From an empty directory, so the source tree cannot shadow the installed package.
    print("$ (in a directory of its own)", fresh, "smoke_wheel.py", flush=True)
    subprocess.run([fresh, ROOT / "scripts" / "smoke_wheel.py", version], check=True, env=env,
                   cwd=work)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build into this directory and keep it")
    parser.add_argument("--wheel", type=Path, help="check this wheel instead of building")
    args = parser.parse_args()
    started, version = time.monotonic(), cargo_version()
    with tempfile.TemporaryDirectory(prefix="crewthrottle-dist-") as scratch:
        if args.wheel:
            wheel, pythons = args.wheel.resolve(), [Path(sys.executable)]
        else:
            wheel, sdist = build(args.keep or Path(scratch) / "dist")
            check_sdist(sdist, version)
            pythons = interpreters()
        built = time.monotonic()
        check_wheel(wheel, version)
        for python in pythons:
            smoke(wheel, python, Path(scratch), version)
        size = wheel.stat().st_size
        print(f"check_dist: OK: {wheel.name} ({size / 1024:.0f} KiB); build "
              f"{built - started:.0f} s, checks {time.monotonic() - built:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()

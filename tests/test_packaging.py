"""The built wheel: every subpackage inside, checks/ installed as torchdoctor.checks
and never as a top-level package, the console script and the pytest11 entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel in a subprocess

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    # build from a clean copy: setuptools reuses a stale build/ folder, which would hide
    # a package missing from pyproject.toml
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for folder in ("torchdoctor", "checks"):
        shutil.copytree(REPO_ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(source)], check=True, capture_output=True)
    (path,) = out.glob("torchdoctor-*.whl")
    return zipfile.ZipFile(path)


@pytest.fixture(scope="module")
def wheel_names(wheel: zipfile.ZipFile) -> list[str]:
    return wheel.namelist()


def test_every_package_of_the_source_tree_is_in_the_wheel(wheel_names: list[str]) -> None:
    source_packages = {str(p.parent.relative_to(REPO_ROOT / "torchdoctor"))
                       for p in (REPO_ROOT / "torchdoctor").rglob("__init__.py")}
    for package in source_packages:
        prefix = "torchdoctor/" if package == "." else f"torchdoctor/{package}/"
        assert f"{prefix}__init__.py" in wheel_names, f"{package} missing from the wheel"
    for module in (REPO_ROOT / "checks").glob("*.py"):
        assert f"torchdoctor/checks/{module.name}" in wheel_names


def test_no_top_level_checks_package(wheel_names: list[str]) -> None:
    assert not [n for n in wheel_names if n.startswith("checks/")]


def test_entry_points(wheel: zipfile.ZipFile) -> None:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(name).decode()
    assert "[console_scripts]\ntorchdoctor = torchdoctor.cli:main" in text
    assert "[pytest11]\ntorchdoctor = torchdoctor.pytest_plugin" in text

"""Shared test configuration: offline, CPU, and the real FashionMNIST subset when the
workspace has it (../shared/data beside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may touch the network in tests: the data module falls back to synthetic data.
os.environ["TORCHDOCTOR_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
BUGS = EXAMPLES / "bugs"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def repo_root() -> Path:
    """The repository root."""
    return REPO_ROOT


@pytest.fixture
def shared_data() -> Path:
    """The real FashionMNIST subset; the test is skipped where it is absent."""
    if not (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
        pytest.skip("no real FashionMNIST subset beside the repository (../shared/data)")
    return SHARED_DATA


@pytest.fixture
def write_program(tmp_path: Path):
    """Write a Python program to tmp_path and return its path."""

    def write(source: str, name: str = "program.py") -> Path:
        path = tmp_path / name
        path.write_text(source, encoding="utf-8")
        return path

    return write

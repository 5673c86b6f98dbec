"""Shared test configuration: offline, CPU, and the real FashionMNIST subset when the
workspace has it (../shared/data beside the repository)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from torchdoctor import Report
from torchdoctor.engine.runner import diagnose

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


@pytest.fixture(scope="module")
def example_reports(request: pytest.FixtureRequest) -> Iterator[dict[str, Report]]:
    """The bug program ``examples/bugs/EXAMPLE.py`` and its ``_fixed`` form, diagnosed
    once per test module with only the module's ``CHECK``. A module sets
    ``EXAMPLES_USE_REAL_DATA = True`` to run them on the real FashionMNIST subset when
    it is there (synthetic data otherwise)."""
    check, example = request.module.CHECK, request.module.EXAMPLE
    with pytest.MonkeyPatch.context() as patch:
        real = (SHARED_DATA / "FashionMNIST" / "raw").is_dir()
        if real and getattr(request.module, "EXAMPLES_USE_REAL_DATA", False):
            patch.setenv("TORCHDOCTOR_DATA", str(SHARED_DATA))
        yield {name: diagnose(str(BUGS / f"{name}.py"), select=[check])
               for name in (example, f"{example}_fixed")}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread while a test runs (restored after): on a loaded 2-core box,
    two threads make small matmuls ten times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

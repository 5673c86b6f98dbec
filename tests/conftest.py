"""Shared test configuration: offline, CPU, and the real FashionMNIST subset when the
workspace has it (../shared/data beside the repository)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
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
    if not real_data_present():
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


def real_data_present() -> bool:
    """Whether the real FashionMNIST subset is beside the repository."""
    return (SHARED_DATA / "FashionMNIST" / "raw").is_dir()


@pytest.fixture(scope="session")
def example_report() -> Callable[[str], Report]:
    """``example_report(NAME)``: the report of ``examples/bugs/NAME.py`` diagnosed with
    every check, on the real FashionMNIST subset where it is present (synthetic data
    otherwise). Each program is diagnosed once per session, however many tests read it,
    on one intra-op thread (see ``one_thread``: on a loaded machine, ten times faster)."""
    reports: dict[str, Report] = {}

    def report(name: str) -> Report:
        if name not in reports:
            threads = torch.get_num_threads()
            with pytest.MonkeyPatch.context() as patch:
                if real_data_present():
                    patch.setenv("TORCHDOCTOR_DATA", str(SHARED_DATA))
                torch.set_num_threads(1)
                try:
                    reports[name] = diagnose(str(BUGS / f"{name}.py"))
                finally:
                    torch.set_num_threads(threads)
        return reports[name]

    return report


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread while a test runs (restored after): on a loaded 2-core box,
    two threads make small matmuls ten times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

"""Script mode's scratch overlay: what the script writes goes to scratch and reads back,
the user's files stay bit-identical, nothing stays patched, and the report lists what the
script would have written."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from torchdoctor.engine.context import CheckOptions
from torchdoctor.findings import Report, WrittenFile
from torchdoctor.report import render_text, written_line
from torchdoctor.scriptrun import overlay, overlaypaths
from torchdoctor.scriptrun.observations import RunStatus, ScriptRun
from torchdoctor.scriptrun.overlay import ScratchOverlay
from torchdoctor.scriptrun.overlaypaths import ScratchView
from torchdoctor.scriptrun.patches import PatchSet, RunLink
from torchdoctor.scriptrun.script import run_script

REPO_ROOT = Path(__file__).resolve().parents[1]

# Writes through every API the overlay covers, reads each back, and checks that a
# removed or renamed-away user file reads as missing. Runs in a directory holding the
# user's model.pt, log.txt, old.txt, data.csv and userdir/f.
EVERY_API = """
import glob, io, os, pathlib, shutil
import numpy as np
import torch
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

here = pathlib.Path(__file__).parent
model = torch.nn.Linear(3, 2)
torch.save(model.state_dict(), "model.pt")
assert torch.load("model.pt")["weight"].shape == (2, 3)
os.makedirs("out/ckpt", exist_ok=True)
torch.save(model.state_dict(), here / "out" / "ckpt" / "m.pt")
assert os.path.exists("out/ckpt/m.pt") and os.path.isdir("out")
with open("log.txt", "a") as f:
    f.write("more\\n")
assert open("log.txt").read() == "old\\nmore\\n"
with io.open("io.txt", "w") as f:
    f.write("io")
p = pathlib.Path("p.txt")
p.write_text("hello")
assert p.read_text() == "hello"
pathlib.Path("pb.bin").write_bytes(b"\\0\\1")
with pathlib.Path("pb.bin").open("ab") as f:
    f.write(b"\\2")
assert pathlib.Path("pb.bin").read_bytes() == b"\\0\\1\\2"
os.mkdir("empty")
os.rmdir("empty")
os.rmdir("emptyuserdir")
assert not os.path.exists("empty") and not os.path.exists("emptyuserdir")
pathlib.Path("pdir/sub").mkdir(parents=True)
pathlib.Path("pdir/sub/t").touch()
pathlib.Path("log.txt").touch()
fd = os.open("raw.bin", os.O_CREAT | os.O_WRONLY)
os.write(fd, b"raw")
os.close(fd)
os.mkdir("d1")
shutil.copy("p.txt", "d1/copy.txt")
shutil.copy2("data.csv", "d1/data.csv")
shutil.copytree("d1", "d2")
shutil.move("d2", "d3")
assert sorted(os.listdir("d3")) == ["copy.txt", "data.csv"]
shutil.rmtree("d3")
assert not os.path.exists("d3")
np.save("arr.npy", np.arange(3))
assert np.load("arr.npy").tolist() == [0, 1, 2]
np.savez("arrs.npz", a=np.ones(2))
assert np.load("arrs.npz")["a"].sum() == 2
np.savetxt("arr.txt", np.eye(2))
assert np.loadtxt("arr.txt").shape == (2, 2)
plt.plot([1, 2])
plt.savefig("plot.png")
assert os.path.getsize("plot.png") > 0
assert open("plot.png", "rb").read(4) == b"\\x89PNG"
os.remove("data.csv")
assert not os.path.exists("data.csv") and "data.csv" not in os.listdir(".")
os.rename("old.txt", "new.txt")
assert open("new.txt").read() == "old\\n" and not pathlib.Path("old.txt").exists()
os.replace("p.txt", "q.txt")
pathlib.Path("q.txt").rename("r.txt")
pathlib.Path("r.txt").unlink()
shutil.rmtree("userdir")
assert not os.path.isdir("userdir")
os.makedirs("userdir")
assert os.listdir("userdir") == []
assert sorted(glob.glob("out/**/*.pt", recursive=True)) == ["out/ckpt/m.pt"]
assert sorted(os.walk("pdir"))[-1][2] == ["t"]
top, dirs, files = next(os.walk("."))  # the user's files and the script's, merged
assert {"model.pt", "io.txt", "train.py"} <= set(files) and "data.csv" not in files
assert {"out", "userdir"} <= set(dirs) and "emptyuserdir" not in dirs
print("ALL OK")
"""

# A file system that behaves as before: the errors a real one raises.
ERRORS = """
import os, pathlib, pytest
with pytest.raises(FileNotFoundError):
    open("no_such_dir/x.txt", "w")
with pytest.raises(FileExistsError):
    open("model.pt", "x")
with pytest.raises(FileExistsError):
    os.mkdir("userdir")
with pytest.raises(FileNotFoundError):
    os.remove("never_there.txt")
os.remove("data.csv")
with pytest.raises(FileNotFoundError):
    open("data.csv")
with pytest.raises(OSError):
    os.rmdir("userdir")  # not empty
with pytest.raises(IsADirectoryError):
    open("userdir", "w")
with pytest.raises(FileNotFoundError):
    pathlib.Path("gone/x").mkdir()
print("ERRORS OK")
"""


def _user_project(root: Path) -> Path:
    """A directory with the user's own files in it."""
    root.mkdir(exist_ok=True)
    torch.save({"w": torch.arange(6.0)}, root / "model.pt")
    (root / "log.txt").write_text("old\n")
    (root / "old.txt").write_text("old\n")
    (root / "data.csv").write_text("1,2\n")
    (root / "userdir").mkdir()
    (root / "userdir" / "f").write_text("u")
    (root / "emptyuserdir").mkdir()
    return root


def _tree(root: Path) -> dict[str, str]:
    """Every path below ``root``: a sha256 for files, ``dir`` for directories."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def _run(root: Path, source: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    script = root / "train.py"
    script.write_text(textwrap.dedent(source), encoding="utf-8")
    monkeypatch.chdir(root)
    return run_script(script, CheckOptions())


def _scratch_dirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("torchdoctor-scratch")}


@pytest.fixture
def private_tempdir(tmp_path_factory: pytest.TempPathFactory,
                    monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory of this test's own, so that scratch directories other runs on
    the machine create meanwhile do not change what :func:`_scratch_dirs` counts."""
    directory = tmp_path_factory.mktemp("systemp")
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def test_exempt_paths_are_left_alone_and_the_project_is_covered_even_in_tmp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    temporary = tempfile.gettempdir()
    project = tmp_path / "project"
    view = ScratchView(str(tmp_path / "scratch"), overlaypaths.exempt_prefixes(), (str(project),))
    assert view.real("/dev/null") is None and view.real("/proc/self/status") is None
    assert view.real(tmp_path / "scratch" / "x") is None  # the scratch itself
    assert view.real(os.path.join(temporary, "tmpabc", "f")) is None  # a temporary file
    assert view.real(os.path.join(temporary, "pymp-x", "listener")) is None
    assert view.real(os.path.expanduser("~/.cache/torch/hub/w.pth")) is None
    assert view.real(project / "model.pt") == str(project / "model.pt")
    assert view.real(project) == str(project)
    assert view.real("/home/someone/model.pt") == "/home/someone/model.pt"
    assert view.real(3) is None  # a file descriptor


def test_files_outside_the_working_directory_show_relative_to_the_script(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = _user_project(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = project / "train.py"
    script.write_text("import os\nopen(os.path.join(os.path.dirname(__file__), 'o.txt'), "
                      "'w').write('x')\n")
    monkeypatch.chdir(elsewhere)
    result = run_script(script, CheckOptions())
    assert [(w.path, w.size) for w in result.run.written] == [("o.txt", 1)]
    assert not (project / "o.txt").exists()


def test_a_script_can_go_into_a_directory_it_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As Hydra does: make outputs/<run>, chdir into it, write there; the working
    directory is the starting one again after the run."""
    project = _user_project(tmp_path)
    before = _tree(project)
    result = _run(project, f"""
        import os, torch
        os.makedirs("outputs/run1")
        os.chdir("outputs/run1")
        assert os.getcwd() == {str(project / "outputs" / "run1")!r}
        torch.save({{"a": 1}}, "m.pt")
        assert torch.load("m.pt") == {{"a": 1}} and os.listdir(".") == ["m.pt"]
        assert os.path.exists("../../model.pt")  # the user's file, from in there
        print("CHDIR OK")
        """, monkeypatch)
    assert result.run.status is RunStatus.COMPLETED, result.run.error
    assert "CHDIR OK" in result.output
    assert os.getcwd() == str(project)
    assert _tree(project) == {**before, "train.py": _tree(project)["train.py"]}
    assert [w.path for w in result.run.written] == ["outputs/run1/m.pt"]


def test_a_checkpoint_overwritten_by_the_script_stays_bit_identical(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = _user_project(tmp_path)
    before = hashlib.sha256((project / "model.pt").read_bytes()).hexdigest()
    result = _run(project, """
        import torch
        model = torch.nn.Linear(2, 2)
        torch.save(model.state_dict(), "model.pt")
        reloaded = torch.load("model.pt", weights_only=True)
        assert torch.equal(reloaded["weight"], model.weight)  # its own save, read back
        print("reloaded")
        """, monkeypatch)
    assert result.run.status is RunStatus.COMPLETED, result.run.error
    assert "reloaded" in result.output
    assert hashlib.sha256((project / "model.pt").read_bytes()).hexdigest() == before
    assert [(w.path, w.action) for w in result.run.written] == [("model.pt", "written")]
    assert result.run.written[0].size is not None and result.run.written[0].size > 500


def test_every_write_api_reads_back_and_leaves_the_directory_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_tempdir: Path) -> None:
    pytest.importorskip("matplotlib")
    project = _user_project(tmp_path)
    scratch_before = _scratch_dirs()
    (project / "train.py").write_text(textwrap.dedent(EVERY_API))
    before = _tree(project)
    result = _run(project, EVERY_API, monkeypatch)
    assert result.run.status is RunStatus.COMPLETED, result.run.error
    assert "ALL OK" in result.output
    assert _tree(project) == before
    assert _scratch_dirs() == scratch_before  # the scratch directory is gone
    written = {w.path: w for w in result.run.written}
    assert {"model.pt", "log.txt", "io.txt", "pb.bin", "raw.bin", "arr.npy", "arrs.npz",
            "arr.txt", "plot.png", "new.txt", "out/ckpt/m.pt", "pdir/sub/t",
            "d1/data.csv"} <= set(written) or result.run.written_more
    assert written["log.txt"].size == len("old\nmore\n")
    assert "p.txt" not in written and "d3/copy.txt" not in written  # moved, then removed
    removed = [w.path for w in result.run.written if w.action == "removed"]
    assert written["pb.bin"].size == 3
    assert removed == ["emptyuserdir", "data.csv", "old.txt", "userdir"]


def test_the_view_raises_what_a_real_file_system_raises(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = _user_project(tmp_path)
    before = _tree(project)
    result = _run(project, ERRORS, monkeypatch)
    assert result.run.status is RunStatus.COMPLETED, result.run.error
    assert "ERRORS OK" in result.output
    assert _tree(project) == {**before, "train.py": _tree(project)["train.py"]}


def _patched() -> dict[str, Any]:
    """Every attribute the overlay patches, by identity."""
    found: dict[str, Any] = {"builtins.open": builtins.open, "io.open": io.open,
                             "shutil.rmtree": shutil.rmtree, "torch.save": torch.save,
                             "torch.load": torch.load,
                             "serialization.save": torch.serialization.save,
                             "np.save": np.save, "np.load": np.load, "np.savetxt": np.savetxt}
    for name in ("open", "stat", "lstat", "access", "mkdir", "remove", "unlink", "rmdir",
                 "rename", "replace", "listdir", "scandir", "chmod", "utime", "truncate"):
        found[f"os.{name}"] = getattr(os, name)
    return found


def test_nothing_stays_patched_and_kept_wrappers_write_for_real_after_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _patched()
    project = _user_project(tmp_path)
    result = _run(project, """
        import os, torch
        from os import remove as kept_remove
        kept_open, kept_save = open, torch.save
        """, monkeypatch)
    assert _patched() == before
    kept = result.namespace
    assert kept["kept_open"] is not builtins.open  # the wrappers escaped the run ...
    with kept["kept_open"](project / "after.txt", "w") as handle:  # ... and are inert
        handle.write("real")
    assert (project / "after.txt").read_text() == "real"
    kept["kept_save"]({"a": 1}, project / "after.pt")
    assert torch.load(project / "after.pt") == {"a": 1}
    kept["kept_remove"](project / "data.csv")
    assert not (project / "data.csv").exists()


def _failing_at(index: int) -> Callable[..., Iterator[Callable[[PatchSet], None]]]:
    real = overlay._installers

    def installers(link: Any) -> Iterator[Callable[[PatchSet], None]]:
        for position, step in enumerate(real(link)):
            if position == index:
                def failing(patches: PatchSet, step: Callable[[PatchSet], None] = step) -> None:
                    step(patches)
                    raise RuntimeError("injected failure")
                yield failing
            else:
                yield step

    return installers


_STEPS = len(list(overlay._installers(RunLink(ScratchView("/nonexistent")))))


@pytest.mark.parametrize("index", range(_STEPS))
def test_a_failure_half_way_through_entry_undoes_everything(
        index: int, monkeypatch: pytest.MonkeyPatch, private_tempdir: Path) -> None:
    before, scratch_before = _patched(), _scratch_dirs()
    monkeypatch.setattr(overlay, "_installers", _failing_at(index))
    with pytest.raises(RuntimeError, match="injected failure"):
        with ScratchOverlay(ScriptRun("train.py")):
            pytest.fail("entered despite the failure")
    assert _patched() == before and _scratch_dirs() == scratch_before


@pytest.mark.slow
def test_dataloader_workers_started_by_fork_write_to_scratch_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = _user_project(tmp_path)
    before = _tree(project)
    result = _run(project, """
        import os, torch
        from torch.utils.data import DataLoader, Dataset

        class Writing(Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                with open(f"seen_{i}.txt", "w") as f:
                    f.write(str(os.getpid()))
                return torch.tensor([float(i)])

        loader = DataLoader(Writing(), batch_size=2, num_workers=1,
                            multiprocessing_context="fork")
        batches = list(loader)
        assert os.path.exists("seen_0.txt") and open("seen_0.txt").read() != str(os.getpid())
        print("WORKERS OK")
        """, monkeypatch)
    assert result.run.status is RunStatus.COMPLETED, result.run.error
    assert "WORKERS OK" in result.output
    assert _tree(project) == {**before, "train.py": _tree(project)["train.py"]}
    assert "seen_0.txt" in {w.path for w in result.run.written}


def test_the_report_lists_what_the_script_would_have_written() -> None:
    written = [WrittenFile(f"ckpt_{i}.pt", 4_600_000, "written") for i in range(9)]
    written.append(WrittenFile("data.csv", None, "removed"))
    report = Report(target="train.py", mode="script", written=written, written_more=5)
    line = written_line(report)
    assert line.startswith("files: the script's writes went to a scratch copy")
    assert "ckpt_0.pt (4.6 MB)" in line and "ckpt_8.pt" not in line
    assert line.endswith("and 7 more")  # 2 of the 10 listed, and the 5 beyond the list
    assert "files:" in render_text(report, width=100)
    data = report.to_dict()
    assert data["written"][0] == {"path": "ckpt_0.pt", "size": 4_600_000, "action": "written"}
    assert data["written"][-1]["action"] == "removed" and data["written_more"] == 5
    assert json.loads(json.dumps(data)) == data
    assert written_line(Report(target="train.py", mode="script")) == ""


@pytest.mark.slow
def test_checking_the_lab_leaves_the_repository_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchdoctor.engine.runner import diagnose

    if not (REPO_ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")

    def status() -> str:
        return subprocess.run(["git", "status", "--porcelain", "-uall"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout

    before = status()
    monkeypatch.chdir(REPO_ROOT)
    report = diagnose("examples/fashion_mnist_lab.py", CheckOptions(limit_batches=2,
                                                                    max_steps=6))
    assert not report.crashed and report.exit_code == 0
    assert status() == before

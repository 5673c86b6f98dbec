"""The command as a process: bad targets answered before torch loads, JSON always an
object, a closed pipe ends quietly, stdin is not the terminal, --verbose shows the
script, profile --steps N profiles N steps, CI formats from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TRAINS = """
import sys
import torch
from torch import nn

model = nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 30):
    opt.zero_grad()
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
"""


def run_cli(*args: str, cwd: Path | None = None, stdin: int | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TORCHDOCTOR_OFFLINE": "1", "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", "torchdoctor", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout, stdin=stdin)


def test_a_bad_target_is_answered_before_torch_is_imported(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys
        from torchdoctor.cli.main import main
        codes = [main(["check", "missing.py"]), main(["check", "."]),
                 main(["check", "missing.py", "--format", "json"])]
        assert codes == [2, 2, 2], codes
        assert "torch" not in sys.modules, "torch was imported"
    """)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert time.perf_counter() - started < 30  # generous: shared CI; no torch is the point
    assert "missing.py: no such file" in result.stderr
    assert ".: is a directory" in result.stderr
    assert json.loads(result.stdout) == {**json.loads(result.stdout), "target": "missing.py",
                                         "error": json.loads(result.stdout)["error"]}


def test_a_directory_target_names_its_python_files(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("x = 1\n")
    result = run_cli("check", str(tmp_path))
    assert result.returncode == 2
    assert "is a directory; give a Python file (here: train.py)" in result.stderr


@pytest.mark.parametrize("fmt", ["json", "sarif", "github"])
def test_machine_formats_answer_a_bad_target_on_stdout(tmp_path: Path, fmt: str) -> None:
    result = run_cli("check", "missing.py", "--format", fmt, cwd=tmp_path)
    assert result.returncode == 2
    if fmt == "json":
        assert json.loads(result.stdout)["error"].startswith("no such file")
    elif fmt == "sarif":
        notes = json.loads(result.stdout)["runs"][0]["invocations"][0]
        assert "missing.py: no such file" in notes["toolExecutionNotifications"][0][
            "message"]["text"]
    else:
        assert result.stdout.startswith("::error title=torchdoctor::missing.py: no such file")


def _closed_pipe(*args: str, cwd: Path) -> tuple[int, str]:
    """Run the command with its stdout closed at once (as ``| head -0`` would)."""
    env = {**os.environ, "TORCHDOCTOR_OFFLINE": "1"}
    with subprocess.Popen([sys.executable, "-m", "torchdoctor", *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read()
        return proc.wait(timeout=300), err


def test_a_closed_pipe_ends_check_list_checks_and_reference_quietly(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAINS)
    code, err = _closed_pipe("check", "train.py", "--select", "missing-zero-grad", "-q",
                             cwd=tmp_path)
    assert (code, "Traceback" in err, "BrokenPipe" in err) == (0, False, False), err
    code, err = _closed_pipe("list-checks", cwd=tmp_path)
    assert (code, err) == (0, "")
    code, err = _closed_pipe("reference", "--limit-batches", "2", "--data", str(tmp_path),
                             cwd=tmp_path)
    assert code in (0, 141) and "Traceback" not in err and "BrokenPipe" not in err, err
    code, err = _closed_pipe("profile", "train.py", "--steps", "3", cwd=tmp_path)
    assert code in (0, 141) and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_script_waiting_for_input_gets_eof_and_the_report_says_so(tmp_path: Path) -> None:
    (tmp_path / "asks.py").write_text("name = input('run name? ')\n" + TRAINS)
    started = time.perf_counter()
    # stdin=None: the child inherits pytest's; it must not be read either way
    result = run_cli("check", "asks.py", "--timeout", "60", "--format", "json",
                     cwd=tmp_path)
    assert time.perf_counter() - started < 55  # not the whole --timeout
    assert result.returncode == 0, result.stdout  # the script is not wrong: a warning
    findings = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "target"]
    assert [(f["severity"], f["location"]) for f in findings] == [("warning", "asks.py:1")]
    assert "asked for input" in findings[0]["message"] and "--stdin FILE" in findings[0]["hint"]
    (tmp_path / "answers.txt").write_text("first\n")
    result = run_cli("check", "asks.py", "--stdin", "answers.txt", "--select",
                     "missing-zero-grad", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not any(f["check"] == "target" for f in json.loads(result.stdout)["findings"])


def test_input_after_training_is_a_warning_at_its_line(tmp_path: Path) -> None:
    (tmp_path / "late.py").write_text(TRAINS + "\ntry:\n    input('save? ')\n"
                                      "except EOFError:\n    pass\n")
    result = run_cli("check", "late.py", "--select", "missing-zero-grad", "--format", "json",
                     cwd=tmp_path)
    finding = next(f for f in json.loads(result.stdout)["findings"] if f["check"] == "target")
    assert finding["severity"] == "warning"
    assert finding["location"] == "late.py:14"
    assert "asked for input" in finding["message"] and "--stdin" in finding["hint"]


def test_verbose_shows_the_scripts_output_and_its_own_traceback(tmp_path: Path) -> None:
    (tmp_path / "crash.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def helper(x):
            return x["missing"]

        model = nn.Linear(4, 2)
        print("hello from the script")
        model(torch.randn(8, 4))
        helper({})
    """))
    result = run_cli("check", "crash.py", "--select", "shape-mismatch", "-v", cwd=tmp_path)
    assert result.returncode == 1
    assert "hello from the script" in result.stderr
    traceback = result.stderr.split("the script's traceback (your frames) ---")[1]
    assert 'crash.py", line 11, in <module>' in traceback
    assert 'crash.py", line 6, in helper' in traceback
    assert "KeyError: 'missing'" in traceback
    assert "torchdoctor" not in traceback and "site-packages" not in traceback
    quiet = run_cli("check", "crash.py", "--select", "shape-mismatch", cwd=tmp_path)
    assert "hello from the script" not in quiet.stderr + quiet.stdout


def test_profile_steps_profiles_that_many_steps_with_script_args(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAINS)
    result = run_cli("profile", "train.py", "--steps", "5", "--format", "json",
                     "--script-args", "12", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["steps"] == 5
    assert any("stopped after 5 optimizer step(s) (--steps)" in n for n in report["notes"])
    assert not any("--max-steps" in n for n in report["notes"])
    result = run_cli("profile", "train.py", "--steps", "50", "--format", "json",
                     "--script-args", "3", cwd=tmp_path)
    assert json.loads(result.stdout)["steps"] == 3  # the script's own 3, passed as argv


def test_sarif_from_the_command_line_points_at_the_line(tmp_path: Path) -> None:
    (tmp_path / "late.py").write_text(TRAINS + "\ntry:\n    input('save? ')\n"
                                      "except EOFError:\n    pass\n")
    result = run_cli("check", "late.py", "--select", "missing-zero-grad", "--format", "sarif",
                     cwd=tmp_path)
    log = json.loads(result.stdout)
    result_0 = log["runs"][0]["results"][0]
    assert result_0["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "late.py"}, "region": {"startLine": 14}}
    assert "missing-zero-grad" in {r["id"] for r in log["runs"][0]["tool"]["driver"]["rules"]}


def test_ctrl_c_exits_130_as_the_help_says(tmp_path: Path) -> None:
    import signal

    (tmp_path / "spin.py").write_text("import torch\nmodel = torch.nn.Linear(2, 2)\n"
                                      "model(torch.ones(1, 2))\nprint('ready', flush=True)\n"
                                      "while True:\n    pass\n")
    env = {**os.environ, "TORCHDOCTOR_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torchdoctor", "check", "spin.py",
                             "--timeout", "120"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(8)  # torch imported, the script spinning
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "torchdoctor: interrupted" in err and "Traceback" not in err
    assert "130 interrupted (Ctrl-C)" in run_cli("check", "--help").stdout


CUDA_AT_START = """
import torch
from torch import nn
model = nn.Linear(4, 2).cuda()
model(torch.randn(8, 4).cuda()).sum().backward()
"""
CUDA_LATER = TRAINS + "x = torch.randn(2, 4).cuda()\n"
CUDA_IDIOM = TRAINS.replace("model = nn.Linear(4, 2)", "device = 'cuda' if torch.cuda."
                            "is_available() else 'cpu'\nmodel = nn.Linear(4, 2).to(device)")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine "
                    "without CUDA")
def test_cuda_on_a_cpu_machine_gets_the_portable_idiom(tmp_path: Path) -> None:
    """With the GPU emulation off the script runs as ``python`` would (by default it runs
    with an emulated GPU, and ``.cuda()`` works)."""
    (tmp_path / "start.py").write_text(CUDA_AT_START)
    emulated = run_cli("check", "start.py", "--format", "json", cwd=tmp_path)
    assert not [f for f in json.loads(emulated.stdout)["findings"] if f["check"] == "target"]
    result = run_cli("check", "start.py", "--format", "json", "--gpu-emulation", "off",
                     cwd=tmp_path)
    assert result.returncode == 1
    finding = next(f for f in json.loads(result.stdout)["findings"] if f["check"] == "target")
    assert finding["location"] == "start.py:4"
    assert "the script asks for CUDA but this machine has none" in finding["message"]
    assert 'device = "cuda" if torch.cuda.is_available() else "cpu"' in finding["hint"]
    (tmp_path / "later.py").write_text(CUDA_LATER)
    result = run_cli("check", "later.py", "--select", "missing-zero-grad", "--format", "json",
                     "--gpu-emulation", "off", cwd=tmp_path)
    finding = next(f for f in json.loads(result.stdout)["findings"] if f["check"] == "target")
    assert finding["location"] == "later.py:12" and finding["severity"] == "error"
    assert "torch.cuda.is_available()" in finding["hint"]
    (tmp_path / "idiom.py").write_text(CUDA_IDIOM)
    result = run_cli("check", "idiom.py", "--select", "missing-zero-grad", "--format", "json",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [f for f in json.loads(result.stdout)["findings"] if f["check"] == "target"]


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_list_checks_fits_the_terminal(columns: int) -> None:
    env = {**os.environ, "COLUMNS": str(columns)}
    out = subprocess.run([sys.executable, "-m", "torchdoctor", "list-checks"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert max(len(line) for line in out.splitlines()) <= columns
    assert "overfit-one-batch" in out


def test_an_unreadable_stdin_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAINS)
    result = run_cli("check", "train.py", "--stdin", "nope.txt", cwd=tmp_path)
    assert result.returncode == 2
    assert "--stdin nope.txt: cannot be read" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_uncaught_eof_after_training_is_the_input_warning_not_an_error(
        tmp_path: Path) -> None:
    (tmp_path / "late.py").write_text(TRAINS + "input('save? ')\n")
    result = run_cli("check", "late.py", "--select", "missing-zero-grad", "--format", "json",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    findings = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "target"]
    assert [(f["severity"], f["location"]) for f in findings] == [("warning", "late.py:12")]

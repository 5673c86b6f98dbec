"""The torchdoctor command: exit codes, bad targets, formats, plugins, import cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from torchdoctor.cli.main import main

HEALTHY_MODEL_FILE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(784, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.flatten(x))))
"""


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TORCHDOCTOR_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "torchdoctor", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.slow
def test_help_and_list_checks_do_not_import_torch() -> None:
    code = textwrap.dedent("""
        import contextlib, io, sys
        from torchdoctor.cli.main import main
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["--help"])
            except SystemExit:
                pass
            main(["list-checks"])
        print(sorted(m for m in ("torch", "torchvision") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_list_checks_names_every_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list-checks"]) == 0
    out = capsys.readouterr().out
    for check_id in ("shape-mismatch", "nan-loss", "missing-zero-grad", "eval-mode",
                     "device-mismatch", "overfit-one-batch", "loss-function"):
        assert check_id in out
    assert "broken" not in out


@pytest.mark.slow
@pytest.mark.parametrize(("source", "expected"), [
    (None, "no such file"),
    ("def broken(:\n", "syntax error"),
    ("import torch\nimport no_such_package_xyz\n", "imports 'no_such_package_xyz', which is "
     "not installed"),
    ("x = 1\n", "no model found"),
])
def test_bad_file_targets_exit_2_with_one_message(tmp_path: Path, source: str | None,
                                                  expected: str) -> None:
    path = tmp_path / "target.py"
    if source is not None:
        path.write_text(source)
    result = run_cli("check", str(path))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_several_candidate_models_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "two.py"
    path.write_text(HEALTHY_MODEL_FILE + "\nclass Other(Net):\n    pass\n")
    result = run_cli("check", str(path))
    assert result.returncode == 2
    assert "several model classes (Net, Other)" in result.stderr
    assert "::Net" in result.stderr


@pytest.mark.slow
def test_model_needing_arguments_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "args.py"
    path.write_text("from torch import nn\nclass Net(nn.Module):\n"
                    "    def __init__(self, width):\n        super().__init__()\n"
                    "        self.fc = nn.Linear(784, width)\n")
    result = run_cli("check", str(path))
    assert result.returncode == 2
    assert "needs constructor arguments (width)" in result.stderr
    assert "torchdoctor_model()" in result.stderr


@pytest.mark.slow
def test_verbose_shows_what_the_script_printed_without_our_traceback(tmp_path: Path) -> None:
    path = tmp_path / "target.py"
    path.write_text("print('no model here')\nx = 1\n")
    result = run_cli("check", str(path), "--verbose")
    assert result.returncode == 2
    assert "no model found" in result.stderr
    assert "the script's output" in result.stderr and "no model here" in result.stderr
    assert "Traceback" not in result.stderr  # the script did not crash; nor did we


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--select", "no-such-check"], ["--device", "cuda:99"],
                                  ["--device", "not-a-device"]])
def test_bad_options_exit_2(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "model.py"
    path.write_text(HEALTHY_MODEL_FILE)
    result = run_cli("check", str(path), *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_bad_target_syntax_exit_2() -> None:
    result = run_cli("check", "not a target")
    assert result.returncode == 2
    assert "file.py, file.py::name or package.module:name" in result.stderr


@pytest.mark.slow
def test_json_report_follows_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(HEALTHY_MODEL_FILE)
    out = tmp_path / "report.json"
    result = run_cli("check", f"{path}::Net", "--format", "json", "--output", str(out),
                     "--select", "shape-mismatch,overfit-one-batch")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["schema"] == 1
    assert set(report) >= {"schema", "torchdoctor_version", "target", "mode", "data",
                           "device", "seconds", "checks", "findings"}
    assert report["mode"] == "model"
    assert report["data"] in ("synthetic", "fashion-mnist")
    assert [c["id"] for c in report["checks"]] == ["shape-mismatch", "overfit-one-batch"]
    assert all(c["outcome"] == "passed" for c in report["checks"])
    assert all(isinstance(c["seconds"], float) for c in report["checks"])


@pytest.mark.slow
def test_error_finding_exits_1_and_is_in_json(tmp_path: Path) -> None:
    path = tmp_path / "flat.py"
    path.write_text(HEALTHY_MODEL_FILE.replace("self.fc1(self.flatten(x))", "self.fc1(x)"))
    result = run_cli("check", f"{path}::Net", "--format", "json",
                     "--select", "shape-mismatch")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    finding = report["findings"][0]
    assert set(finding) == {"check", "severity", "message", "location", "hint"}
    assert finding["check"] == "shape-mismatch" and finding["severity"] == "error"


@pytest.mark.slow
def test_markdown_format(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(HEALTHY_MODEL_FILE)
    result = run_cli("check", f"{path}::Net", "--format", "markdown",
                     "--select", "shape-mismatch")
    assert result.returncode == 0
    assert result.stdout.startswith("## torchdoctor:")
    assert "| check" in result.stdout


@pytest.mark.slow
def test_infinite_loop_ends_at_timeout(tmp_path: Path) -> None:
    path = tmp_path / "loop.py"
    path.write_text(HEALTHY_MODEL_FILE + textwrap.dedent("""
        model = Net()
        model(torch.zeros(2, 1, 28, 28))
        while True:
            pass
    """))
    result = run_cli("check", str(path), "--timeout", "2", "--format", "json",
                     "--select", "shape-mismatch")
    report = json.loads(result.stdout)
    assert any(f["check"] == "target" and "--timeout" in f["message"]
               for f in report["findings"])
    assert report["seconds"] < 60


def _install_plugin(site: Path, body: str) -> None:
    """A real installed distribution with a `torchdoctor` entry point."""
    (site / "myplugin.py").write_text(textwrap.dedent(body))
    dist = site / "myplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[torchdoctor]\nmyplugin = myplugin\n")


@pytest.mark.slow
def test_entry_point_check_runs_and_a_crashing_one_exits_3(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site, """
        from torchdoctor import Check, hookimpl

        class Crashes(Check):
            id = "always-crashes"
            summary = "a check with a bug"

            def run(self, ctx):
                raise ZeroDivisionError("bug in the plugin")

        @hookimpl
        def torchdoctor_checks():
            return [Crashes]
    """)
    model = tmp_path / "model.py"
    model.write_text(HEALTHY_MODEL_FILE)
    env = {**os.environ, "TORCHDOCTOR_OFFLINE": "1", "PYTHONPATH": str(site)}
    listed = subprocess.run([sys.executable, "-m", "torchdoctor", "list-checks"],
                            capture_output=True, text=True, env=env, check=True)
    assert "always-crashes" in listed.stdout
    result = subprocess.run(
        [sys.executable, "-m", "torchdoctor", "check", f"{model}::Net", "--format", "json",
         "--select", "shape-mismatch,always-crashes"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 3, result.stderr
    outcomes = {c["id"]: c["outcome"] for c in json.loads(result.stdout)["checks"]}
    assert outcomes == {"shape-mismatch": "passed", "always-crashes": "crashed"}


@pytest.mark.slow
def test_broken_plugin_is_reported_not_fatal(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site, "raise ImportError('plugin cannot import')\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-m", "torchdoctor", "list-checks"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0
    assert "nan-loss" in result.stdout
    assert "plugin 'myplugin'" in result.stderr and "plugin cannot import" in result.stderr


@pytest.mark.slow
def test_misspelt_hook_function_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(HEALTHY_MODEL_FILE + "\ndef torchdoctor_modle():\n    return Net()\n")
    result = run_cli("check", f"{path}::Net")
    assert result.returncode == 2
    assert "torchdoctor_modle" in result.stderr


@pytest.mark.slow
def test_script_that_needs_arguments_says_so_and_gets_them(tmp_path: Path) -> None:
    path = tmp_path / "train.py"
    path.write_text(HEALTHY_MODEL_FILE + textwrap.dedent("""
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument("--width", type=int, required=True)
        args = parser.parse_args()
        model = Net()
        model(torch.zeros(args.width, 1, 28, 28))
    """))
    refused = run_cli("check", str(path), "--select", "shape-mismatch")
    assert refused.returncode == 2
    assert "the following arguments are required: --width" in refused.stderr
    assert "--script-args" in refused.stderr
    accepted = run_cli("check", str(path), "--select", "shape-mismatch", "--format", "json",
                       "--script-args", "--width 3")
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["mode"] == "script+model"

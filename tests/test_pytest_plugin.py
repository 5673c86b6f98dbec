"""The pytest plugin, exercised by running pytest on small projects (pytester)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import torchdoctor.pytest_plugin as plugin
from torchdoctor.pytest_plugin import pytest_assertrepr_compare, read_settings

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pytest_project"

#: a training script with a missing zero_grad, small enough to run in a second
LEAKY = '''
import torch
from torch import nn


def build() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def torchdoctor_batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=generator), torch.randint(0, 3, (16,),
                                                                  generator=generator)


if __name__ == "__main__":
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs, targets = torchdoctor_batch()
    for step in range(4):
        loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()  # ZERO_GRAD
        optimizer.step()
'''
FIXED = LEAKY.replace("loss.backward()  # ZERO_GRAD",
                      "optimizer.zero_grad()\n        loss.backward()")
TWO_CHECKS = ("--torchdoctor-select", "missing-zero-grad,eval-mode")


@pytest.fixture(scope="module", autouse=True)
def torch_warmed_up() -> None:
    """Import now what torch imports on a first optimizer step (torch._dynamo, triton,
    sympy...). pytester drops the modules first imported inside an inline run, and
    importing those C extensions a second time aborts the process. (Importing the
    doctor's own modules now also spares each inline run importing them.)"""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    from torchdoctor.checks import builtin_checks

    builtin_checks()  # and the check modules, so inline runs need not import them again


@pytest.fixture(autouse=True)
def isolated(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytest runs load this plugin only: other installed plugins cost seconds per
    run. Never download; synthetic data (torchvision, like torch's C extensions, must
    not be imported for the first time inside an inline run)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.plugins.append(plugin)
    monkeypatch.setenv("TORCHDOCTOR_OFFLINE", "1")
    monkeypatch.delenv("TORCHDOCTOR_DATA", raising=False)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest, in-process, with the plugins in ``pytester.plugins`` (this one)."""
    return pytester.runpytest(*args, plugins=list(pytester.plugins))


def autoload(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let pytest load plugins from their entry points, as in a user's project."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    pytester.plugins.remove(plugin)


# ---------------------------------------------------------------- options and ini


def test_loaded_from_its_entry_point_with_options_and_ini_settings(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    autoload(pytester, monkeypatch)
    result = run(pytester, "--help")
    result.stdout.fnmatch_lines([
        "torchdoctor: why a PyTorch model does not train:",
        "*--torchdoctor=TARGET*",
        "*--torchdoctor-select=IDS*",
        "*--torchdoctor-timeout=SECONDS*",
        "*torchdoctor_targets (linelist)*",
        "*torchdoctor_seed (string)*",
    ])


def test_disabled_with_p_no_torchdoctor(pytester: pytest.Pytester,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    autoload(pytester, monkeypatch)
    pytester.makepyfile("def test_uses_fixture(doctor):\n    pass\n")
    result = run(pytester, "-p", "no:torchdoctor", "--torchdoctor", "model.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --torchdoctor*"])
    result = run(pytester, "-p", "no:torchdoctor")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'doctor' not found*"])


def test_settings_come_from_ini_and_the_command_line_wins(pytester: pytest.Pytester) -> None:
    pytester.makeini("""
        [pytest]
        torchdoctor_targets =
            models/net.py
            models/net.py::build
            mypkg.models:build
        torchdoctor_select = nan-loss, eval-mode
        torchdoctor_ignore = eval-mode
        torchdoctor_seed = 7
        torchdoctor_timeout = 12.5
        torchdoctor_data = somewhere
    """)
    settings = read_settings(pytester.parseconfig())
    root = pytester.path
    assert settings.targets == (f"{root / 'models/net.py'}", f"{root / 'models/net.py'}::build",
                                "mypkg.models:build")
    assert settings.select == ("nan-loss", "eval-mode")
    assert settings.ignore == ("eval-mode",)
    options = settings.options
    assert (options.seed, options.timeout, options.data_root) == (7, 12.5, "somewhere")
    assert (options.device, options.max_steps) == ("cpu", 20)
    settings = read_settings(pytester.parseconfig(
        "--torchdoctor-seed", "3", "--torchdoctor-select", "shape-mismatch,nan-loss",
        "--torchdoctor-select", "eval-mode", "--torchdoctor", "other.py",
        "--torchdoctor-max-steps", "5"))
    assert settings.select == ("shape-mismatch", "nan-loss", "eval-mode")
    assert settings.targets == (f"{root / 'other.py'}",)
    assert (settings.options.seed, settings.options.max_steps) == (3, 5)


@pytest.mark.parametrize(("args", "message"), [
    (("--torchdoctor-seed", "abc"), "*--torchdoctor-seed 'abc': expected an integer*"),
    (("--torchdoctor-timeout", "0"), "*--torchdoctor-timeout '0': must be positive*"),
    (("--torchdoctor-max-steps", "0"), "*--torchdoctor-max-steps '0': must be at least 1*"),
    (("--torchdoctor-select", "nan-los"), "*unknown check id 'nan-los'; known: *nan-loss*"),
])
def test_bad_option_values_are_usage_errors(pytester: pytest.Pytester, args: tuple[str, ...],
                                            message: str) -> None:
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


@pytest.mark.slow
def test_plugin_module_does_not_import_torch() -> None:
    code = ("import sys, torchdoctor.pytest_plugin as p\n"
            "assert p.pytest_assertrepr_compare(None, '==', [1], [2]) is None\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------- the marker


def test_marker_sets_the_doctor_defaults(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.torchdoctor(select=["nan-loss", "eval-mode"], ignore="eval-mode")
        def test_marked(doctor):
            assert doctor.select == ("nan-loss", "eval-mode")
            assert doctor.ignore == ("eval-mode",)

        def test_unmarked(doctor):
            assert doctor.select == ("shape-mismatch",) and doctor.ignore == ()

        @pytest.mark.torchdoctor
        def test_bare_marker(doctor):
            assert doctor.select == ("shape-mismatch",)
    """)
    result = run(pytester, "--torchdoctor-select", "shape-mismatch")
    result.assert_outcomes(passed=3)


def test_marker_with_bad_arguments_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.torchdoctor(select="nan-los")
        def test_typo(doctor):
            pass

        @pytest.mark.torchdoctor(selct="nan-loss")
        def test_unknown_kwarg():
            pass

        @pytest.mark.torchdoctor("nan-loss")
        def test_positional():
            pass

        def test_innocent():
            pass
    """)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*test_typo: @pytest.mark.torchdoctor: select=: unknown check id(s) 'nan-los'; known:*",
        "*test_unknown_kwarg: @pytest.mark.torchdoctor: unknown argument selct=*",
        "*test_positional: @pytest.mark.torchdoctor: positional arguments ('nan-loss',)*",
    ])


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.torchdoctor(select=None, ignore=None):*"])


# ---------------------------------------------------------------- check items


def test_targets_from_ini_become_named_items(pytester: pytest.Pytester) -> None:
    pytester.makeini("""
        [pytest]
        torchdoctor_targets = scripts/leaky.py
        torchdoctor_select = missing-zero-grad, eval-mode
    """)
    (pytester.path / "scripts").mkdir()
    (pytester.path / "scripts" / "leaky.py").write_text(LEAKY)
    result = run(pytester, "--collect-only", "-q")
    result.stdout.fnmatch_lines([
        "scripts/leaky.py::torchdoctor::missing-zero-grad",
        "scripts/leaky.py::torchdoctor::eval-mode",
        "scripts/leaky.py::torchdoctor::target",
        "3 tests collected*",
    ])
    # --torchdoctor on the command line replaces the ini's targets
    result = run(pytester, "--collect-only", "-q", "--torchdoctor", "scripts/leaky.py::build")
    result.stdout.fnmatch_lines([
        "scripts/leaky.py::build::torchdoctor::missing-zero-grad",
        "scripts/leaky.py::build::torchdoctor::eval-mode",
        "2 tests collected*",
    ])


def test_k_and_m_select_check_items(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(leaky=LEAKY, test_plain="def test_plain():\n    pass\n")
    result = run(pytester, "--collect-only", "-q", "--torchdoctor", "leaky.py",
                                *TWO_CHECKS, "-k", "zero")
    result.stdout.fnmatch_lines(["leaky.py::torchdoctor::missing-zero-grad",
                                 "1/4 tests collected (3 deselected)*"])
    result = run(pytester, "--collect-only", "-q", "--torchdoctor", "leaky.py",
                                *TWO_CHECKS, "-m", "not torchdoctor")
    result.stdout.fnmatch_lines(["test_plain.py::test_plain", "1/4 tests collected*"])


def test_check_items_fail_with_the_findings_table(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(leaky=LEAKY)
    result = run(pytester, "--torchdoctor", "leaky.py", *TWO_CHECKS, "-v",
                                "--junitxml=report.xml")
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines([
        "leaky.py::torchdoctor::missing-zero-grad FAILED*",
        "leaky.py::torchdoctor::eval-mode PASSED*",
        "leaky.py::torchdoctor::target PASSED*",
        "*leaky.py: torchdoctor missing-zero-grad*",
        "torchdoctor check missing-zero-grad failed on leaky.py",
        "leaky.py:*: error [[]missing-zero-grad[]]",  # the terminal is 80 wide: one block
        "*zero_grad()*",
    ])
    cases = ET.parse(pytester.path / "report.xml").getroot().iter("testcase")
    by_name = {case.get("name"): case for case in cases}
    assert set(by_name) == {"missing-zero-grad", "eval-mode", "target"}
    assert by_name["eval-mode"].get("classname") == "leaky.torchdoctor"
    failure = by_name["missing-zero-grad"].find("failure")
    assert failure is not None and "zero_grad()" in (failure.get("message") or "")
    assert by_name["eval-mode"].find("failure") is None


def test_fixed_script_passes_and_x_stops_at_the_first_failure(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(leaky=LEAKY, fixed=FIXED)
    result = run(pytester, "--torchdoctor", "fixed.py", "--torchdoctor", "leaky.py",
                                "--torchdoctor-select", "missing-zero-grad")
    result.assert_outcomes(passed=3, failed=1)  # 2 checks and 2 `target` items
    result = run(pytester, "--torchdoctor", "leaky.py", "--torchdoctor", "fixed.py",
                                "--torchdoctor-select", "missing-zero-grad", "-x")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*stopping after 1 failures*"])


def test_check_that_does_not_apply_is_skipped(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(leaky=LEAKY)
    result = run(pytester, "--torchdoctor", "leaky.py::build", *TWO_CHECKS, "-rs")
    result.assert_outcomes(skipped=1, passed=1)
    result.stdout.fnmatch_lines(["SKIPPED*missing-zero-grad: needs script mode*"])


def test_crashed_check_is_an_error(pytester: pytest.Pytester,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from torchdoctor.checks.eval_mode import EvalModeCheck

    def crash(self: object, ctx: object) -> list:
        raise RuntimeError("the check itself is broken")

    monkeypatch.setattr(EvalModeCheck, "run", crash)  # a buggy check, not a user's bug
    pytester.makepyfile(leaky=LEAKY)
    result = run(pytester, "--torchdoctor", "leaky.py", *TWO_CHECKS)
    result.assert_outcomes(errors=1, failed=1, passed=1)
    result.stdout.fnmatch_lines(["*check eval-mode crashed on *leaky.py:*",
                                 "*RuntimeError: the check itself is broken*"])


def test_bad_targets_are_reported_without_tracebacks(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(broken="import no_such_package_xyz\n")
    result = run(pytester, "--torchdoctor", "missing.py")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["--torchdoctor *missing.py: no such file"])
    result = run(pytester, "--torchdoctor", "broken.py", *TWO_CHECKS)
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*broken.py*no_such_package_xyz*not installed*"])
    assert "Traceback" not in result.stdout.str()


def test_target_item_reports_an_unexplained_crash_of_the_script(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(crashing=FIXED + "\n    raise KeyError('lost the labels')\n")
    result = run(pytester, "--torchdoctor", "crashing.py", "--torchdoctor-select",
                 "missing-zero-grad", "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["crashing.py::torchdoctor::target FAILED*",
                                 "crashing.py:*: error [[]target[]]",
                                 "*the script raised KeyError*"])


# ---------------------------------------------------------------- fixtures


def test_doctor_fixture_checks_models(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        import torch.nn.functional as F
        from torch import nn
        from torchdoctor.findings import Outcome


        class Probabilities(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

            def forward(self, x):
                return F.softmax(self.fc(x), dim=1)


        @pytest.mark.torchdoctor(select="loss-function")
        def test_report(doctor):
            report = doctor.check(Probabilities())
            assert [r.id for r in report.checks] == ["loss-function"]
            assert report.checks[0].outcome is Outcome.FAILED
            assert doctor.reports == [report]


        @pytest.mark.torchdoctor(select="loss-function")
        def test_healthy(doctor):
            doctor.assert_healthy(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))


        @pytest.mark.torchdoctor(select="loss-function")
        def test_unhealthy(doctor):
            doctor.assert_healthy(Probabilities())


        def test_diagnose_a_script(doctor):
            report = doctor.diagnose("leaky.py", select=["missing-zero-grad"])
            assert [f.check for f in report.errors] == ["missing-zero-grad"]
    """)
    pytester.makepyfile(leaky=LEAKY)
    result = run(pytester)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*TorchDoctorAssertionError: torchdoctor found problems in "
                                 "model: 1 finding(s)*",
                                 "*error*loss-function*"])


def test_reference_batch_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import torch

        def test_batch(reference_batch, request):
            images, labels = reference_batch
            assert images.shape == (64, 1, 28, 28) and images.dtype == torch.float32
            assert labels.shape == (64,) and labels.dtype == torch.long
            assert 0 <= float(images.min()) and float(images.max()) <= 1
            kind = dict(request.node.user_properties)["torchdoctor_data"]
            assert kind in ("fashion-mnist", "synthetic")
    """)
    run(pytester).assert_outcomes(passed=1)


WATCHED_LOOPS = """
    import torch
    import torch.nn.functional as F
    from torch import nn


    def setup(lr):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        return model, torch.optim.SGD(model.parameters(), lr=lr), torch.randn(16, 8)


    def test_healthy_loop(watch):
        model, optimizer, x = setup(0.01)
        with watch(model, optimizer) as doc:
            for _ in range(3):
                optimizer.zero_grad()
                doc.loss(model(x).square().mean()).backward()
                optimizer.step()


    def test_loop_without_zero_grad(watch):
        model, optimizer, x = setup(0.01)
        watch(model, optimizer)  # left open: stopped and judged when the test returns
        for _ in range(3):
            model(x).square().mean().backward()
            optimizer.step()


    def test_hooks_are_gone(watch):
        model, optimizer, x = setup(0.01)
        watch(model, optimizer)
        raise ValueError("the test fails on its own")


    def test_no_hooks_left():
        assert not torch.nn.modules.module._global_forward_hooks
"""


def test_watch_fixture_fails_tests_on_error_findings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(WATCHED_LOOPS)
    result = run(pytester)
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*torchdoctor.watch found 1 error finding(s) in this test's training loop*",
        "*error*missing-zero-grad*",
    ])
    result.stdout.fnmatch_lines(["*ValueError: the test fails on its own*"])


def test_state_is_restored_after_tests_using_torchdoctor(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        import torch

        seen = {}

        def test_before():
            seen["rng"] = torch.get_rng_state()

        def test_meddles(doctor):
            torch.manual_seed(123)
            torch.set_grad_enabled(False)
            torch.autograd.set_detect_anomaly(True)
            torch.nn.modules.module.register_module_forward_hook(lambda *args: None)

        @pytest.mark.torchdoctor
        def test_meddles_too():
            torch.set_default_dtype(torch.float64)

        def test_after():
            assert torch.equal(torch.get_rng_state(), seen["rng"])
            assert torch.is_grad_enabled() and not torch.is_anomaly_enabled()
            assert not torch.nn.modules.module._global_forward_hooks
            assert torch.get_default_dtype() == torch.float32
    """)
    run(pytester, "-p", "no:randomly").assert_outcomes(passed=4)


# ---------------------------------------------------------------- assertion explanations


def test_failed_comparisons_of_tensors_and_shapes_are_explained(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import torch

        def test_shape():
            assert torch.zeros(4, 3).shape == (4, 5)

        def test_scalar():
            assert torch.tensor([1.0, float("nan")]).sum() == 1.0

        def test_plain():
            assert [1, 2] == [1, 3]
    """)
    result = run(pytester)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([
        "*assert shape (4, 3) == (4, 5)",
        "*dim 1: 3 != 5",
        "*assert tensor(nan) == 1.0",
        "*left: shape (), dtype float32, device cpu, 1 NaN",
        "*At index 1 diff: 2 != 3*",
    ])


class Hostile(torch.Tensor):
    """A tensor subclass on which every torch operation raises."""

    @classmethod
    def __torch_function__(cls, func: object, types: object, args: object = (),
                           kwargs: object = None) -> object:
        raise RuntimeError("hostile tensor")


def test_assertrepr_compare_never_raises() -> None:
    hostile = torch.zeros(2).as_subclass(Hostile)
    assert pytest_assertrepr_compare(None, "==", hostile, 1.0) is None  # type: ignore[arg-type]
    assert pytest_assertrepr_compare(None, "==", 1, 2) is None  # type: ignore[arg-type]
    lines = pytest_assertrepr_compare(None, "==", torch.Size([2]), (3,))  # type: ignore[arg-type]
    assert lines == ["shape (2,) == (3,)", "dim 0: 2 != 3"]


# ---------------------------------------------------------------- the example project


@pytest.mark.slow
def test_example_project_suite_passes(pytester: pytest.Pytester) -> None:
    shutil.copytree(EXAMPLE, pytester.path, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    result = run(pytester, "-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=16)  # 7 tests + 9 check items from torchdoctor_targets
    result.stdout.fnmatch_lines(["*test_model.py::test_model_passes_torchdoctor_checks PASSED*",
                                 "model.py::torchdoctor::nan-loss PASSED*"])

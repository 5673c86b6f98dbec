"""One table of run options: ``check``, ``profile`` and the pytest plugin read the same
flags, defaults and validation from torchdoctor.engine.runoptions."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from torchdoctor.cli.main import build_parser
from torchdoctor.engine.context import CheckOptions
from torchdoctor.engine.runoptions import RUN_OPTIONS, check_options, run_option

pytest_plugins = ["pytester"]


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def _defaults(parser: argparse.ArgumentParser) -> dict[str, object]:
    return {a.dest: a.default for a in parser._actions}


def test_every_option_is_a_check_options_field_with_its_default() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(CheckOptions)}
    for option in RUN_OPTIONS:
        assert option.field in fields
        assert option.default == fields[option.field]


@pytest.mark.parametrize("command", ["check", "profile"])
def test_check_and_profile_take_every_run_option_with_the_same_default(command: str) -> None:
    parser = _subparser(command)
    defaults = _defaults(parser)
    flags = {s for a in parser._actions for s in a.option_strings}
    for option in RUN_OPTIONS:
        if command == "profile" and option.field in ("trace_steps", "gpu_emulation"):
            assert option.field not in defaults  # op tracing would be profiled too
            continue
        assert defaults[option.field] == option.default, option.flag
        if option.field != "max_steps" or command == "check":
            assert option.flag in flags
    assert {"--steps", "--max-steps"} <= set(_subparser("profile")._option_string_actions)


def test_parsed_values_become_check_options() -> None:
    args = _subparser("check").parse_args(
        ["t.py", "--limit-batches", "2", "--timeout", "1.5", "--script-args", "--lr 'a b'",
         "--data", "d", "--seed", "-3"])
    options = check_options(vars(args))
    assert (options.limit_batches, options.timeout, options.data_root, options.seed) == \
        (2, 1.5, "d", -3)
    assert options.script_args == ("--lr", "a b")
    assert options.max_steps == CheckOptions().max_steps


@pytest.mark.slow
@pytest.mark.parametrize(("field", "raw", "reason"), [
    ("gpu_emulation", "maybe", "must be auto, on or off"),
    ("max_steps", "0", "must be at least 1"),
    ("timeout", "-1", "must be positive"),
    ("limit_batches", "many", "expected an integer"),
])
def test_the_cli_and_the_plugin_refuse_a_value_with_the_same_reason(
        pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str], field: str, raw: str,
        reason: str) -> None:
    option = run_option(field)
    with pytest.raises(SystemExit) as exc:
        _subparser("check").parse_args(["t.py", option.flag, raw])
    assert exc.value.code == 2
    assert reason in capsys.readouterr().err
    result = pytester.runpytest_subprocess(option.pytest_flag, raw)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option.pytest_flag} '{raw}': {reason}*"])


@pytest.mark.slow
def test_the_plugin_lists_every_run_option_and_ini_setting(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    for option in RUN_OPTIONS:
        result.stdout.fnmatch_lines([f"*{option.pytest_flag}*", f"*{option.ini} *"])


def test_an_ini_value_is_read_like_a_flag(pytester: pytest.Pytester) -> None:
    from torchdoctor.pytest_plugin import read_settings

    pytester.makeini("[pytest]\ntorchdoctor_script_args = --epochs 2 --name 'a b'\n"
                     "torchdoctor_max_steps = 7\n")
    options = read_settings(pytester.parseconfig()).options
    assert options.script_args == ("--epochs", "2", "--name", "a b")
    assert options.max_steps == 7

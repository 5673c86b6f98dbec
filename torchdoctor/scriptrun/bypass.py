"""``torch.compile`` bypassed for the duration of a script-mode run.

Dynamo traces through the doctor's global module hooks and fails on them (or spends
minutes compiling what a fast-dev-run uses for a few steps), so while the script runs
``torch.compile(model)`` returns ``model`` itself and the run's notes say so: the checks
see the eager model, which computes the same thing. Restored on exit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from torchdoctor.scriptrun.observations import ScriptRun
from torchdoctor.scriptrun.patches import RunLink

NOTE = ("torch.compile was bypassed: the model ran eagerly under torchdoctor (same "
        "results; compilation itself was not checked)")


class CompileBypass:
    """Context manager: ``torch.compile`` returns its argument unchanged while active.

    The replacement reaches the run only through a :class:`RunLink`, cut on exit: a
    module that bound ``torch.compile`` during the run (``from torch import compile``
    on its first import) keeps a function that compiles as usual and keeps no run alive.
    """

    def __init__(self, run: ScriptRun) -> None:
        self._link: RunLink[ScriptRun] = RunLink(run)
        self._original: Any = None

    def __enter__(self) -> CompileBypass:
        self._original = torch.compile
        torch.compile = _bypassing(self._original, self._link)  # type: ignore[assignment]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._link.cut()
        torch.compile = self._original


def _bypassing(original: Callable[..., Any], link: RunLink[ScriptRun]) -> Callable[..., Any]:
    """``torch.compile`` that returns the model itself while ``link``'s run is active."""

    @functools.wraps(original)
    def compile_(model: Any = None, **options: Any) -> Any:
        run = link.get()
        if run is None:  # the run is over: behave as torch.compile
            return original(model, **options) if model is not None else original(**options)
        if NOTE not in run.notes:
            run.notes.append(NOTE)
        if model is None:  # @torch.compile(mode=...) used as a decorator factory
            return lambda function: function
        return model

    return compile_

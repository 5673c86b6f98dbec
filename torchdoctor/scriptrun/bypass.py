"""``torch.compile`` bypassed for the duration of a script-mode run.

Dynamo traces through the doctor's global module hooks and fails on them (or spends
minutes compiling what a fast-dev-run uses for a few steps), so while the script runs
``torch.compile(model)`` returns ``model`` itself and the run's notes say so: the checks
see the eager model, which computes the same thing. Restored on exit.
"""

from __future__ import annotations

from typing import Any

import torch

from torchdoctor.scriptrun.observations import ScriptRun

NOTE = ("torch.compile was bypassed: the model ran eagerly under torchdoctor (same "
        "results; compilation itself was not checked)")


class CompileBypass:
    """Context manager: ``torch.compile`` returns its argument unchanged while active."""

    def __init__(self, run: ScriptRun) -> None:
        self._run = run
        self._original: Any = None

    def __enter__(self) -> CompileBypass:
        self._original = torch.compile
        torch.compile = self._compile  # type: ignore[assignment]
        return self

    def __exit__(self, *exc_info: object) -> None:
        torch.compile = self._original

    def _compile(self, model: Any = None, **_options: Any) -> Any:
        if NOTE not in self._run.notes:
            self._run.notes.append(NOTE)
        if model is None:  # @torch.compile(mode=...) used as a decorator factory
            return lambda function: function
        return model

"""Reading the source of a module's ``forward``: the line that does something (returns
an activation, cuts the graph, calls dropout without ``training``), for findings that
point at the user's code. Used by the loss-function, eval-mode and overfit-one-batch
diagnoses. No torch import."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from torchdoctor.scriptrun.observations import CodeLocation


def forward_source_line(module: nn.Module, wanted: Callable[[str], bool], *,
                        last: bool = False) -> tuple[CodeLocation, str] | None:
    """The first (or last) line of ``type(module).forward`` whose code (comments
    stripped) satisfies ``wanted``, with that code; None without source."""
    from torchdoctor.scriptrun.callsite import display_path
    from torchdoctor.scriptrun.observations import CodeLocation

    forward = type(module).forward
    try:
        lines, start = inspect.getsourcelines(forward)
        path = display_path(inspect.getsourcefile(forward) or "")
    except (OSError, TypeError):
        return None
    hits = [(offset, code) for offset, code in
            ((i, line.split("#", 1)[0]) for i, line in enumerate(lines)) if wanted(code)]
    if not hits:
        return None
    offset, code = hits[-1] if last else hits[0]
    return CodeLocation(path, start + offset, forward.__name__), code

"""Hook functions defined below the point where a run was cut.

A user's file may define ``torchdoctor_batch()`` and the other hook functions anywhere,
below the training loop too. A run that reaches the end of the file executes those
``def`` statements itself; one that ended earlier (a safety cap, ``--timeout``, a crash,
``sys.exit``) has not, so the top-level ``def torchdoctor_*`` statements missing from
the namespace are executed here, alone, into it (from the file's AST: nothing else of
the file runs again).
"""

from __future__ import annotations

import ast
import types
from typing import Any

from torchdoctor.hookspecs import USER_HOOKS


def missing_hook_defs(source: str, namespace: dict[str, Any]
                      ) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The top-level ``def torchdoctor_*`` statements whose name the run did not bind."""
    tree = ast.parse(source)
    return [node for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name in USER_HOOKS and node.name not in namespace]


def define_late_hooks(source: str, filename: str, namespace: dict[str, Any]) -> list[str]:
    """Execute the missing hook ``def`` statements into ``namespace``; return notes: the
    names defined, and those whose definition failed (a decorator or default value that
    raised) with why."""
    notes = []
    for node in missing_hook_defs(source, namespace):
        code: types.CodeType = compile(ast.Module(body=[node], type_ignores=[]),
                                       filename, "exec")
        try:
            exec(code, namespace)
        except Exception as exc:  # the user's decorator or default value raised: say so
            notes.append(f"{node.name}() (line {node.lineno}) could not be defined after "
                         f"the run: {type(exc).__name__}: {exc}")
            continue
        notes.append(f"{node.name}() (line {node.lineno}) was defined after the run (the "
                     "program ended before its def)")
    return notes


__all__ = ["define_late_hooks", "missing_hook_defs"]

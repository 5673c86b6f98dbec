"""Every torchdoctor hook, declared once.

Two kinds of plugin implement them:

* **check providers** (the built-in :mod:`torchdoctor.checks`, and third-party packages
  through the entry-point group ``torchdoctor``) implement :func:`torchdoctor_checks`;
* **the user's file**, registered like a pytest ``conftest.py``: plain functions named
  ``torchdoctor_model``, ``torchdoctor_batch``, ``torchdoctor_loss`` and
  ``torchdoctor_optimizer`` adapt the checks to a model that is not a FashionMNIST
  classifier. No decorator is needed there.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT_NAME = "torchdoctor"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def torchdoctor_checks() -> list[type]:
    """Return the :class:`~torchdoctor.check.Check` subclasses this plugin provides."""
    raise NotImplementedError


@hookspec(firstresult=True)
def torchdoctor_explain_crash(error: Any, run: Any) -> Any:
    """Return a :class:`~torchdoctor.findings.Finding` (``explains_crash=True``) that
    explains ``error``, the :class:`~torchdoctor.scriptrun.observations.ErrorRecord`
    that ended the user's script run ``run``, or None when its cause is not yours.

    Every check instance is registered for this hook (see
    :meth:`torchdoctor.check.Check.explain_crash`); the first answer wins, so one crash
    gets one explanation, owned by one check.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def torchdoctor_model() -> Any:
    """Return a new instance of the model to diagnose (called once per copy needed)."""
    raise NotImplementedError


@hookspec(firstresult=True)
def torchdoctor_batch() -> Any:
    """Return one training batch as ``(inputs, targets)``; ``inputs`` is passed to the
    model as ``model(inputs)`` (a tuple is unpacked: ``model(*inputs)``)."""
    raise NotImplementedError


@hookspec(firstresult=True)
def torchdoctor_loss() -> Any:
    """Return the loss function, called as ``loss_fn(model_output, targets)``."""
    raise NotImplementedError


@hookspec(firstresult=True)
def torchdoctor_optimizer(params: Any) -> Any:
    """Return an optimizer over ``params`` (an iterable of parameters)."""
    raise NotImplementedError


#: hook names a user's file may define
USER_HOOKS = ("torchdoctor_model", "torchdoctor_batch", "torchdoctor_loss",
              "torchdoctor_optimizer")

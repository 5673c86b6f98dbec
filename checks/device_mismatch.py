"""device-mismatch: parameters, buffers, inputs and targets on different devices.

Script mode translates the crash ("Expected all tensors to be on the same device", "Input
type (...) and weight type (...) should be the same") and pins it to the module that was
running. Model mode finds what a CPU-only machine hides: tensors kept as plain module
attributes, submodules in plain lists or dicts, and tensors created in forward without
``device=`` (found by running a copy of the model on the ``meta`` device).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchdoctor.check import Check
from torchdoctor.findings import Finding

from ._device_mismatch_impl import (
    DeviceError,
    MetaRun,
    Mix,
    Stray,
    find_strays,
    parse_device_error,
    run_on_meta,
    user_location_of_traceback,
)

if TYPE_CHECKING:
    from torchdoctor.engine.context import CheckContext, ModelCandidate
    from torchdoctor.scriptrun.observations import ErrorRecord, ModuleCall, ScriptRun

_CUDA = "works on CPU, crashes on CUDA"
_MOVE_HINT = ("move the model once after building it, model.to(device), and every batch "
              "in every loop (train and eval): inputs, targets = inputs.to(device), "
              "targets.to(device)")


class DeviceMismatchCheck(Check):
    """Device crashes translated, and device bugs that only a GPU would show."""

    id = "device-mismatch"
    summary = ("tensors on different devices: the crash, and fixed-device tensors or "
               "unregistered tensors/modules that only fail on a GPU")

    # -- script mode -------------------------------------------------------------------
    def explain_crash(self, error: ErrorRecord, run: ScriptRun) -> Finding | None:
        """A device mix that ended the script, with the module that was running."""
        parsed = parse_device_error(error.message)
        if parsed is None:
            return None
        call = error.module_stack[-1] if error.module_stack else None
        message = _crash_message(parsed, call, error.message.splitlines()[0])
        if call is not None and error.location is not None:
            message += f" (raised at {error.location})"
        location = call.module.describe() if call is not None else error.location
        return self.error(message, location=location, hint=_MOVE_HINT, explains_crash=True)

    # -- model mode --------------------------------------------------------------------
    def check_model(self, ctx: CheckContext, candidate: ModelCandidate) -> list[Finding]:
        """A static look for stray tensors and modules, then a copy run on ``meta``."""
        from torchdoctor.reference.trainer import forward

        model = ctx.fresh_model(candidate)
        try:
            model.to("meta")
            inputs, _ = ctx.training_setup().batch("meta")
        except Exception:  # a model or batch that cannot live on meta: static look only
            return self._strays(candidate, find_strays(model), None)
        strays = find_strays(model)
        meta = run_on_meta(model, inputs, strays, forward)
        findings = self._strays(candidate, strays, meta)
        findings.extend(self._mixes(candidate, meta))
        findings.extend(self._meta_failure(ctx, candidate, meta))
        return findings

    def _strays(self, candidate: ModelCandidate, strays: list[Stray],
                meta: MetaRun | None) -> list[Finding]:
        findings = []
        for stray in strays:
            if vars(stray.module).get(stray.attr) is not stray.value:
                continue  # reassigned by forward: a cache of activations, not state
            used = meta is not None and stray.name in meta.used_attrs
            unsure = meta is None or meta.failure is not None
            on_device = _created_on_device(stray)
            message, hint = _stray_text(stray, used and not on_device)
            location = f"{candidate.name}: {stray.name}"
            if (used or stray.trainable or unsure) and not on_device:
                findings.append(self.error(message, location=location, hint=hint))
            else:
                findings.append(self.warning(message, location=location, hint=hint))
        return findings

    def _mixes(self, candidate: ModelCandidate, meta: MetaRun) -> list[Finding]:
        """One finding per stray tensor, listing every place it met the model's."""
        places: dict[Any, list[Mix]] = {}
        for mix in meta.mixes:
            if not mix.origin.attr:
                key = mix.origin if mix.origin.factory else (mix.origin, mix.shape)
                places.setdefault(key, []).append(mix)
        findings = []
        for mixes in places.values():
            message, hint = _mix_text(mixes[0])
            also = list(dict.fromkeys(str(m.used_at) for m in mixes[1:]
                                      if m.used_at and m.used_at != mixes[0].used_at))
            if also:
                message += f" (also used at {', '.join(also)})"
            where = mixes[0].origin.created_at or mixes[0].used_at or candidate.name
            findings.append(self.error(message, location=where, hint=hint))
        return findings

    def _meta_failure(self, ctx: CheckContext, candidate: ModelCandidate,
                      meta: MetaRun) -> list[Finding]:
        failure = meta.failure
        if failure is None:
            return []
        where = user_location_of_traceback(failure.__traceback__) or candidate.name
        text = f"{type(failure).__name__}: {str(failure).splitlines()[0] if str(failure) else ''}"
        if parse_device_error(str(failure)) is not None:
            return [self.error(f"forward mixes devices ({text}), found by running a copy on "
                               f"the meta device: {_CUDA}", location=where,
                               hint="create tensors in forward with device=x.device")]
        if ctx.options.verbose and not meta.mixes:
            return [self.info(f"could not look for fixed-device tensors: a copy of the "
                              f"model does not run on the meta device ({text})",
                              location=where)]
        return []


def _created_on_device(stray: Stray) -> bool:
    """Whether the line that assigned a plain tensor attribute places it on a device
    (``torch.ones(n, device=device)``, ``.to(device)``, ``.cuda()``): it then works
    where the script runs; only moving the model elsewhere or saving it would miss it,
    a latent problem (a warning), not a wrong result."""
    import linecache

    where = stray.assigned_at
    if where is None or stray.kind != "tensor":
        return False
    line = linecache.getline(where.file, where.line)
    return any(mark in line for mark in ("device=", ".to(", ".cuda("))


def _crash_message(parsed: DeviceError, call: ModuleCall | None, torch_text: str) -> str:
    devices = [d for d in (parsed.first, parsed.second) if d]
    pair = " and ".join(devices) if devices else "two devices"
    if call is None:
        return f"tensors on {pair} met in one operation (torch: {torch_text})"
    name = call.module.qualname or f"the model ({call.module.type_name})"
    inputs = sorted({s.device for s in call.inputs})
    others = [d for d in devices if d not in inputs]
    # a library layer (it has an extra_repr) computes with its own weights only
    if len(inputs) == 1 and len(others) == 1 and call.module.detail:
        return (f"{name} got its input on {inputs[0]} but its weights are on {others[0]} "
                f"(torch: {torch_text})")
    got = f" (input on {', '.join(inputs)})" if inputs else ""
    return f"tensors on {pair} met in {name}{got} (torch: {torch_text})"


def _stray_text(stray: Stray, used: bool) -> tuple[str, str]:
    container = type(stray.value).__name__
    assigned = f" (assigned at {stray.assigned_at})" if stray.assigned_at else ""
    if stray.kind == "modules":
        wrapper = "nn.ModuleDict" if container == "dict" else "nn.ModuleList"
        message = (f"{stray.name} keeps submodules in a plain Python {container}{assigned}: "
                   "their parameters are not in model.parameters() (the optimizer never "
                   "trains them), model.to(device) does not move them and state_dict() "
                   "does not save them")
        hint = f"self.{stray.attr} = {wrapper}(...)"
    else:
        what = (f"a plain tensor attribute {tuple(stray.value.shape)}"
                if stray.kind == "tensor" else f"a plain {container} of tensors")
        message = (f"{stray.name} is {what}{assigned}, not a registered buffer or "
                   "parameter: model.to(device) does not move it and state_dict() does "
                   "not save it")
        hint = _register_hint(stray)
        if stray.trainable:
            message += "; it requires grad but the optimizer never sees it"
    if used:
        message += f"; forward uses it: {_CUDA}"
    return message, hint


def _register_hint(stray: Stray) -> str:
    if stray.kind == "tensors":
        wrapper = "nn.ParameterList" if stray.trainable else "one self.register_buffer(...)"
        return f"store them with {wrapper} (e.g. torch.stack the tensors into one buffer)"
    if stray.trainable:
        return f"self.{stray.attr} = nn.Parameter(...) in __init__"
    return (f'self.register_buffer("{stray.attr}", ...) in __init__ instead of '
            f"self.{stray.attr} = ...")


def _mix_text(mix: Mix) -> tuple[str, str]:
    origin = mix.origin
    same_line = origin.created_at is not None and origin.created_at == mix.used_at
    used = f" at {mix.used_at}" if mix.used_at and not same_line else ""
    if origin.factory:  # the finding's location is the line that created it
        message = (f"forward creates a tensor with torch.{origin.factory}(...) and no "
                   f"device=, then uses it in {mix.op}{used}: {_CUDA} (the tensor "
                   "stays on the CPU when model and batch move to the GPU: \"Expected all "
                   "tensors to be on the same device\")")
        hint = (f"create it where the input is: torch.{origin.factory}(..., "
                "device=x.device), or register a constant once with self.register_buffer")
        return message, hint
    message = (f"a tensor {mix.shape} that is neither a parameter nor a buffer of the model "
               f"meets the model's tensors in {mix.op}{used}: it stays on the CPU, so it "
               f"{_CUDA}")
    return message, "move it with .to(x.device), or register it with self.register_buffer"

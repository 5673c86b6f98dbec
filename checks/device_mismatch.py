"""device-mismatch: parameters, buffers, inputs and targets on different devices.

Script mode translates the crash ("Expected all tensors to be on the same device", "Input
type (...) and weight type (...) should be the same") and pins it to the module that was
running; on a machine without a GPU the script runs with an emulated one
(:mod:`torchdoctor.scriptrun.gpuemu`) and every operation that mixed GPU and CPU tensors
is reported at its line, with where the CPU tensor came from. Model mode finds what a
CPU-only machine hides: tensors kept as plain module attributes, submodules in plain
lists or dicts, and tensors created in forward without ``device=`` (found by running a
copy of the model on the ``meta`` device).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchdoctor.check import Check
from torchdoctor.diagnoses.devices import (
    CREATE_ON_INPUT_DEVICE_HINT,
    DEVICE_CHECK,
    MOVE_HINT,
    crash_message,
    created_on_device,
    emulated_mix_text,
    meta_failure_text,
    mix_text,
    parse_device_error,
    stray_text,
)
from torchdoctor.findings import Finding

if TYPE_CHECKING:
    from torchdoctor.diagnoses.device_tracing import MetaRun, Mix, Stray
    from torchdoctor.engine.context import CheckContext, ModelCandidate
    from torchdoctor.scriptrun.observations import ErrorRecord, ScriptRun


class DeviceMismatchCheck(Check):
    """Device crashes translated, and device bugs that only a GPU would show."""

    id = DEVICE_CHECK
    summary = ("tensors on different devices: the crash, and fixed-device tensors or "
               "unregistered tensors/modules that only fail on a GPU")

    # -- script mode -------------------------------------------------------------------
    def explain_crash(self, error: ErrorRecord, run: ScriptRun) -> Finding | None:
        """A device mix that ended the script, with the module that was running."""
        parsed = parse_device_error(error.message)
        if parsed is None:
            return None
        call = error.module_stack[-1] if error.module_stack else None
        message = crash_message(parsed, call, error.message.splitlines()[0])
        if call is not None and error.location is not None:
            message += f" (raised at {error.location})"
        location = call.module.describe() if call is not None else error.location
        return self.error(message, location=location, hint=MOVE_HINT, explains_crash=True)

    def check_script(self, ctx: CheckContext, run: ScriptRun) -> list[Finding]:
        """One error per line and cause where the emulated GPU met the CPU."""
        import linecache

        findings = []
        for record in run.device_mixes:
            where = record.used_at
            source = linecache.getline(where.file, where.line).strip() if where else ""
            message, hint = emulated_mix_text(record, source)
            if record.count > 1:
                message += f" ({record.count} times in the run)"
            findings.append(self.error(message, location=where or run.path, hint=hint))
        return findings

    def wants_models(self, ctx: CheckContext, script_findings: list[Finding]) -> bool:
        """A run with an emulated GPU that showed mixes has said it: the copy on the
        meta device would find the same tensors again."""
        return not (ctx.run is not None and ctx.run.device_mixes)

    # -- model mode --------------------------------------------------------------------
    def check_model(self, ctx: CheckContext, candidate: ModelCandidate) -> list[Finding]:
        """A static look for stray tensors and modules, then a copy run on ``meta``."""
        from torchdoctor.diagnoses.device_tracing import find_strays, run_on_meta
        from torchdoctor.reference.trainer import forward

        model = ctx.fresh_model(candidate)
        try:
            model.to("meta")
            inputs, _ = ctx.training_setup(candidate).batch("meta")
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
            on_device = created_on_device(stray)
            message, hint = stray_text(stray, used and not on_device)
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
            message, hint = mix_text(mixes[0])
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
        from torchdoctor.scriptrun.callsite import user_location_of_traceback

        where = user_location_of_traceback(failure.__traceback__) or candidate.name
        text = f"{type(failure).__name__}: {str(failure).splitlines()[0] if str(failure) else ''}"
        if parse_device_error(str(failure)) is not None:
            return [self.error(meta_failure_text(text), location=where,
                               hint=CREATE_ON_INPUT_DEVICE_HINT)]
        if ctx.options.verbose and not meta.mixes:
            return [self.info(f"could not look for fixed-device tensors: a copy of the "
                              f"model does not run on the meta device ({text})",
                              location=where)]
        return []

"""Device mismatches: tensors on different devices, the crash torch raises for them and
the words and fixes of every device finding.

The one home of this bug class: the ``device-mismatch`` check (the crash, stray tensors
and modules, fixed-device tensors found on the meta device by
:mod:`torchdoctor.diagnoses.device_tracing`) and
:func:`torchdoctor.validators.check_devices` both take their words from here.
No torch import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchdoctor.diagnoses.device_tracing import Mix, Stray
    from torchdoctor.scriptrun.observations import DeviceMixRecord, ModuleCall

#: the finding id of device bugs
DEVICE_CHECK = "device-mismatch"
#: what a bug only a GPU shows is tagged with
CUDA_ONLY = "works on CPU, crashes on CUDA"
#: the fix for model and batch on different devices
MOVE_HINT = ("move the model once after building it, model.to(device), and every batch "
             "in every loop (train and eval): inputs, targets = inputs.to(device), "
             "targets.to(device)")
#: the fix for parameters/buffers left on another device than the rest of the model
PARAMS_OFF_HINT = ("move the whole model once, after building it: model.to(device); a tensor "
                   "made in __init__ must be an nn.Parameter or a buffer "
                   "(self.register_buffer) so that .to() moves it")
#: the fix for a tensor forward creates without device=
CREATE_ON_INPUT_DEVICE_HINT = "create tensors in forward with device=x.device"


#: torch's messages for tensors on different devices; groups ``a``/``b`` name the devices
DEVICE_ERRORS = [
    re.compile(r"found at least two devices, (?P<a>[\w:]+) and (?P<b>[\w:]+)"),
    re.compile(r"(?P<what>\w+) is on (?P<a>[\w:]+), different from other tensors on "
               r"(?P<b>[\w:]+)"),
    re.compile(r"Expected all tensors to be on the same device"),
    re.compile(r"Tensor on device (?P<a>[\w:]+) is not on the expected device (?P<b>[\w:]+)"),
    re.compile(r"Input type \((?P<a>[\w.]+)\) and (?:weight|bias) type \((?P<b>[\w.]+)\) "
               r"should be the same"),
    re.compile(r"Expected object of device type (?P<b>\w+) but got device type (?P<a>\w+)"),
    re.compile(r"found input tensor at (?P<a>[\w:]+) and (?:parameter|hidden) tensor at "
               r"(?P<b>[\w:]+)"),
    re.compile(r"is on (?P<a>CPU|GPU), but expected (?:it|them) to be on (?P<b>CPU|GPU)"),
]


@dataclass(frozen=True)
class DeviceError:
    """A device error read from torch's message: the two devices, when it names them."""

    first: str = ""
    second: str = ""


def _device_of(text: str) -> str:
    """``cuda`` for ``torch.cuda.FloatTensor``/``CUDAFloatType``/``cuda:0``, and so on."""
    lowered = text.lower()
    for kind in ("cuda", "meta", "mps", "xpu"):
        if kind in lowered:
            return text if text.startswith(kind) else kind
    return "cuda" if lowered == "gpu" else "cpu"


def parse_device_error(message: str) -> DeviceError | None:
    """The devices in a torch device error, or None if ``message`` is no device error
    (an "Input type ... and weight type ..." error on one device is a dtype error)."""
    for pattern in DEVICE_ERRORS:
        found = pattern.search(message)
        if found is None:
            continue
        names = found.groupdict()
        if "a" not in names:
            return DeviceError()
        first, second = _device_of(names["a"]), _device_of(names["b"])
        return DeviceError(first, second) if first != second else None
    return None


def crash_message(parsed: DeviceError, call: ModuleCall | None, torch_text: str) -> str:
    """The finding text for a device error torch raised, with the module running."""
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


def stray_text(stray: Stray, used: bool) -> tuple[str, str]:
    """``(message, fix)`` for a tensor or module kept as a plain attribute (``used``:
    forward combines it with the model's tensors)."""
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
        message += f"; forward uses it: {CUDA_ONLY}"
    return message, hint


def created_on_device(stray: Stray) -> bool:
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


def _register_hint(stray: Stray) -> str:
    if stray.kind == "tensors":
        wrapper = "nn.ParameterList" if stray.trainable else "one self.register_buffer(...)"
        return f"store them with {wrapper} (e.g. torch.stack the tensors into one buffer)"
    if stray.trainable:
        return f"self.{stray.attr} = nn.Parameter(...) in __init__"
    return (f'self.register_buffer("{stray.attr}", ...) in __init__ instead of '
            f"self.{stray.attr} = ...")


def mix_text(mix: Mix) -> tuple[str, str]:
    """``(message, fix)`` for an off-device tensor forward combined with the model's."""
    origin = mix.origin
    same_line = origin.created_at is not None and origin.created_at == mix.used_at
    used = f" at {mix.used_at}" if mix.used_at and not same_line else ""
    if origin.factory:  # the finding's location is the line that created it
        message = (f"forward creates a tensor with torch.{origin.factory}(...) and no "
                   f"device=, then uses it in {mix.op}{used}: {CUDA_ONLY} (the tensor "
                   "stays on the CPU when model and batch move to the GPU: \"Expected all "
                   "tensors to be on the same device\")")
        hint = (f"create it where the input is: torch.{origin.factory}(..., "
                "device=x.device), or register a constant once with self.register_buffer")
        return message, hint
    message = (f"a tensor {mix.shape} that is neither a parameter nor a buffer of the model "
               f"meets the model's tensors in {mix.op}{used}: it stays on the CPU, so it "
               f"{CUDA_ONLY}")
    return message, "move it with .to(x.device), or register it with self.register_buffer"


def meta_failure_text(failure_text: str) -> str:
    """The finding text for a device error raised by the run on the meta device."""
    return (f"forward mixes devices ({failure_text}), found by running a copy on the meta "
            f"device: {CUDA_ONLY}")


def params_off_device_message(names: str, home: str | None) -> str:
    """Parameters/buffers (``names``, already listed) not on the model's ``home``."""
    return f"model parameters/buffers {names} are not on {home} like the rest"


def tensor_off_device_message(label: str, shape: str, device: str, home: str | None) -> str:
    """A batch tensor on another device than the model."""
    return f"{label} {shape} is on {device} but the model is on {home}"


# -- script mode with an emulated GPU (torchdoctor.scriptrun.gpuemu) ----------------------

#: what torch raises on a GPU for a mixed operation
SAME_DEVICE_ERROR = '"Expected all tensors to be on the same device"'

#: factories with a ``*_like`` form (same shape and device as another tensor)
_HAS_LIKE = frozenset({"ones", "zeros", "empty", "full", "rand", "randn", "randint"})
_CAUSES = {
    "loader": ("it is a DataLoader batch (fetched at {created}) that was never moved to the "
               "GPU", "move every tensor of the batch, in every loop (train and eval): "
               "inputs, labels = inputs.to(device), labels.to(device)"),
    "factory": ("it was created at {created} by torch.{detail}(...){without}, so it "
                "stays on the CPU when the rest moves",
                "{make}"),
    "attribute": ("{detail} is a plain tensor attribute (assigned at {created}), not a "
                  "buffer: model.to(device) does not move it",
                  'self.register_buffer("{attr}", ...) in __init__ instead of '
                  "self.{attr} = ..."),
    "module-list": ("its layer is kept in {detail}, a plain Python list (at {created}): "
                    "model.to(device) does not move it, and model.parameters() (the "
                    "optimizer) does not see it",
                    "self.{attr} = nn.ModuleList([...]) (nn.ModuleDict for a dict)"),
    "cpu-copy": ("it was moved to the CPU at {created} (.cpu() / .to(\"cpu\"))",
                 "keep it on the device, or move it back with .to(device) before using "
                 "it with GPU tensors"),
    "device": ("the two tensors are on two different GPUs",
               "use one device for the model and its data (device = torch.device(\"cuda\"))"),
    "numpy": ("numpy cannot read GPU memory: on a GPU this raises \"can't convert cuda:0 "
              "device type tensor to numpy\"", "call .cpu() first: t.detach().cpu().numpy()"),
}


def _factory_fix(factory: str) -> str:
    if factory == "from_numpy":
        return ("move it to the device before it meets GPU tensors: "
                "t = torch.from_numpy(a).to(device)")
    like = f" (or torch.{factory}_like(x))" if factory in _HAS_LIKE else ""
    return (f"create it on the device: torch.{factory}(..., device=x.device){like}; a "
            "tensor made once outside the loop: t = t.to(device) after creating it")


def emulated_mix_text(record: DeviceMixRecord, source: str) -> tuple[str, str]:
    """``(message, fix)`` for an operation that mixed the emulated GPU with the CPU
    (``source``: the text of the user's line)."""
    cause, hint = _CAUSES.get(record.origin, ("", MOVE_HINT))
    fill = {"created": record.created_at or "an unknown line", "detail": record.detail,
            "attr": record.detail.rsplit(".", 1)[-1], "make": _factory_fix(record.detail),
            "without": " and never moved" if record.detail == "from_numpy" else
            " without device="}
    line = f" (`{source}`)" if source else ""
    if record.origin == "numpy":
        message = (f"{record.gpu} is converted to numpy{line}: {cause.format(**fill)} "
                   "(found with an emulated GPU)")
    else:
        message = (f"{record.op}{line} mixes {record.gpu} with {record.other}"
                   f"{': ' + cause.format(**fill) if cause else ''}; on a GPU this line "
                   f"raises {SAME_DEVICE_ERROR} (found with an emulated GPU)")
    return message, hint.format(**fill)

"""The torch function mode that makes CPU tensors carry an emulated GPU device.

Every tensor computes on the CPU; the :class:`~torchdoctor.scriptrun.gpuemu.table.DeviceTable`
says which ones the program put on ``cuda:N``. The mode sees each torch call as the
program wrote it (above autograd, before decomposition):

* ``device="cuda..."`` on any call (factories, ``*_like``, ``new_*``): run on the CPU,
  tag the result;
* ``Tensor.to`` / ``.cuda()`` / ``.cpu()``: a change of device returns a *new* tensor
  (a differentiable copy), as torch does, so ``labels.to(device)`` without assigning it
  leaves ``labels`` on the CPU, exactly like on a GPU;
* the ``device``, ``is_cuda``, ``is_cpu`` getters and ``get_device()`` answer with the
  emulated device; ``param.data = t`` (how ``model.to(device)`` keeps parameter identity)
  moves the tag; the ``.grad`` getter tags a gradient autograd made for a tagged tensor;
* ``torch._foreach_*`` / ``torch._fused_*``: the same, index by index (element i of
  each list argument), never across the list;
* any other call: when an emulated-GPU tensor meets a CPU tensor of more than 0 dims that
  the program made itself (a DataLoader batch, a factory call without ``device=``, a
  ``.cpu()`` copy), or two emulated GPUs meet, the mix is handed to the recorder, then the
  call runs on the CPU and its tensors are tagged like its GPU input.

CPU tensors of unknown origin (those autograd makes in C++, a checkpoint loaded for the
CPU) are never called wrong: a mix is only recorded on positive evidence.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode

from torchdoctor.scriptrun.gpuemu.table import DeviceTable, Origin
from torchdoctor.scriptrun.gpuemu.where import user_line
from torchdoctor.tensors import argument_tensors

if TYPE_CHECKING:
    from torchdoctor.scriptrun.gpuemu.record import MixRecorder

#: calls that take tensors on two devices on a real GPU too (copies, conversions,
#: indexing a GPU tensor with CPU indices, shape-only arguments)
ALLOWED_MIXES = frozenset({
    "to", "copy_", "__setitem__", "__getitem__", "index_put", "index_put_", "new_tensor",
    "type_as", "set_", "_has_compatible_shallow_copy_type", "expand_as", "view_as",
    "reshape_as", "size", "dim", "__len__", "__repr__", "__format__", "__deepcopy__",
    "__set__", "is_same_size", "numel",
    # sequence lengths and batch sizes live on the CPU by torch's own rule
    "_pack_padded_sequence", "_pad_packed_sequence", "ctc_loss",
})
#: calls whose first output follows the GPU input and the rest stay on the CPU (the
#: batch sizes and lengths of packed sequences)
FIRST_OUTPUT_ONLY = frozenset({"_pack_padded_sequence", "_pad_packed_sequence"})
#: ops over lists of tensors, one operation per index (optimizers' foreach and fused
#: implementations, ``clip_grad_norm_``'s norms)
FOREACH_PREFIXES = ("_foreach_", "_fused_")
#: factories whose result, made without ``device=``, is a CPU tensor of the program's own
FACTORIES = frozenset({
    "tensor", "as_tensor", "asarray", "ones", "zeros", "empty", "full", "rand", "randn",
    "randint", "randperm", "arange", "linspace", "logspace", "eye", "normal", "bernoulli",
    "tril_indices", "triu_indices", "empty_strided",
})


def emulated_device(value: Any) -> torch.device | None:
    """``cuda:N`` for a device argument naming CUDA (``"cuda"`` is ``cuda:0``, the current
    device of a one-GPU machine), None for any other device."""
    if isinstance(value, int) and not isinstance(value, bool):
        return torch.device("cuda", value)
    if not isinstance(value, (str, torch.device)):
        return None
    device = torch.device(value)
    if device.type != "cuda":
        return None
    return device if device.index is not None else torch.device("cuda", 0)


def _outputs(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (list, tuple)):
        return [r for r in result if isinstance(r, torch.Tensor)]
    return []


class EmulationMode(TorchFunctionMode):
    """See the module docstring; ``recorder`` receives the mixes."""

    def __init__(self, table: DeviceTable, recorder: MixRecorder) -> None:
        super().__init__()
        self.table = table
        self.recorder = recorder
        tensor = torch.Tensor
        self._special: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], Any]] = {
            tensor.to: self._to, tensor.cuda: self._cuda, tensor.cpu: self._cpu,
            tensor.numpy: self._numpy, tensor.__array__: self._array,
            tensor.get_device: self._get_device, tensor.pin_memory: lambda a, k: a[0],
            tensor.is_pinned: lambda a, k: False, tensor.record_stream: lambda a, k: None,
            tensor.register_hook: self._register_hook,
        }

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        special = self._special.get(func)
        if special is not None:
            return special(args, kwargs)
        name = getattr(func, "__name__", "")
        if name == "__get__":
            return self._get(func, args)
        if name == "__set__":
            return self._set(func, args)
        if kwargs.get("device") is not None:
            return self._on_device(func, args, kwargs)
        if self.table.fetching:
            return func(*args, **kwargs)
        if name.startswith(FOREACH_PREFIXES):
            return self._foreach(func, name, args, kwargs)
        tensors = argument_tensors(args, kwargs)
        if not tensors:
            result = func(*args, **kwargs)
            if name in FACTORIES:
                self._factory_origin(result, name)
            return result
        return self._call(func, name, tensors, args, kwargs)

    # -- ordinary calls ---------------------------------------------------------
    def _call(self, func: Any, name: str, tensors: list[torch.Tensor],
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        gpu, gpu_tensor = self._first_gpu(tensors)
        if gpu is None:  # all on the CPU: carry where the program's tensor came from
            result = func(*args, **kwargs)
            self._carry_origin(tensors, result)
            return result
        if name not in ALLOWED_MIXES:
            self._check_mix(name, gpu, gpu_tensor, tensors)
        result = func(*args, **kwargs)
        outputs = _outputs(result)
        for out in outputs[:1] if name in FIRST_OUTPUT_ONLY else outputs:
            self.table.tag(out, gpu)
        return result

    def _foreach(self, func: Any, name: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
        """A ``torch._foreach_*`` (or fused optimizer) op: element i of every list
        argument is one operation. Torch groups these by device before the call, but
        under emulation every tensor is on the CPU, so one group can hold several
        emulated GPUs: each index is checked on its own, an in-place op keeps its
        arguments' tags, and output i takes the device of index i."""
        values = (*args, *kwargs.values())
        lists = [v for v in values if isinstance(v, (list, tuple))]
        shared = [v for v in values if isinstance(v, torch.Tensor)]  # a step, a scale
        devices: list[torch.device | None] = []
        for index in range(max(map(len, lists), default=0)):
            tensors = [*(v[index] for v in lists if index < len(v)
                         and isinstance(v[index], torch.Tensor)), *shared]
            gpu, gpu_tensor = self._first_gpu(tensors)
            devices.append(gpu)
            if gpu is not None:
                self._check_mix(name, gpu, gpu_tensor, tensors)
        result = func(*args, **kwargs)
        if not name.endswith("_"):
            for out, device in zip(_outputs(result), devices):
                self.table.tag(out, device)
        return result

    def _first_gpu(self, tensors: list[torch.Tensor]) -> tuple[torch.device | None, Any]:
        """The emulated device of the first GPU tensor among ``tensors``, and that tensor."""
        for tensor in tensors:
            device = self.table.device_of(tensor)
            if device is not None:
                return device, tensor
        return None, None

    def _check_mix(self, name: str, gpu: torch.device, gpu_tensor: Any,
                   tensors: list[torch.Tensor]) -> None:
        for tensor in tensors:
            device = self.table.device_of(tensor)
            if device is None and tensor.dim() > 0:
                origin = self.table.origin_of(tensor)
                if origin is not None:
                    self.recorder.mix(name, gpu_tensor, gpu, tensor, None, origin)
                    return
            elif device is not None and device != gpu:
                self.recorder.mix(name, gpu_tensor, gpu, tensor, device, None)
                return

    def _carry_origin(self, tensors: list[torch.Tensor], result: Any) -> None:
        origin_of = self.table.origin_of
        origin = next((o for o in map(origin_of, tensors) if o is not None), None)
        if origin is not None:
            for out in _outputs(result):
                if out.dim() > 0:
                    self.table.set_origin(out, origin)

    def _factory_origin(self, result: Any, name: str) -> None:
        if isinstance(result, torch.Tensor) and result.dim() > 0:
            where = user_line()
            if where is not None:
                self.table.set_origin(result, Origin("factory", name, where))

    def _on_device(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A call given ``device=``: a CUDA device is emulated, any other is real."""
        target = emulated_device(kwargs["device"])
        if target is None:
            return func(*args, **kwargs)
        kwargs = {**kwargs, "device": "cpu"}
        kwargs.pop("pin_memory", None)
        result = func(*args, **kwargs)
        for out in _outputs(result):
            self.table.tag(out, target)
        return result

    # -- attributes -------------------------------------------------------------
    def _get(self, func: Any, args: tuple[Any, ...]) -> Any:
        attr = getattr(getattr(func, "__self__", None), "__name__", "")
        tensor = args[0] if args else None
        device = self.table.device_of(tensor) if isinstance(tensor, torch.Tensor) else None
        if device is not None:
            if attr == "device":
                return device
            if attr in ("is_cuda", "is_cpu"):
                return attr == "is_cuda"
        result = func(*args)
        if device is not None and isinstance(result, torch.Tensor):  # .data, .grad, .T
            self.table.tag(result, device)
        return result

    def _set(self, func: Any, args: tuple[Any, ...]) -> Any:
        result = func(*args)
        attr = getattr(getattr(func, "__self__", None), "__name__", "")
        if attr == "data" and len(args) == 2 and isinstance(args[1], torch.Tensor):
            self.table.tag(args[0], self.table.device_of(args[1]))
            origin = self.table.origin_of(args[1])
            if origin is not None:
                self.table.set_origin(args[0], origin)
        return result

    def _get_device(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        device = self.table.device_of(args[0])
        return device.index if device is not None else torch.Tensor.get_device(args[0])

    def _register_hook(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Autograd hands the hook a gradient made in C++: give it the tensor's device."""
        tensor, hook = args[0], args[1] if len(args) > 1 else kwargs["hook"]
        table, owner = self.table, weakref.ref(tensor)

        def emulated_hook(grad: Any) -> Any:
            alive = owner()
            device = table.device_of(alive) if alive is not None else None
            if device is not None and isinstance(grad, torch.Tensor):
                table.tag(grad, device)
            return hook(grad)
        return torch.Tensor.register_hook(tensor, emulated_hook)

    # -- moving between devices ---------------------------------------------------
    def _to(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        tensor, rest = args[0], args[1:]
        if rest and isinstance(rest[0], torch.Tensor):  # .to(other): its device and dtype
            other = rest[0]
            return self._move(tensor, self.table.device_of(other), other.dtype,
                              kwargs.get("non_blocking", False), kwargs.get("copy", False))
        parse = {k: v for k, v in kwargs.items() if k != "copy"}
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*rest, **parse)
        if device is None:  # a dtype change only
            result = torch.Tensor.to(tensor, *rest, **kwargs)
            if result is not tensor:
                self.table.tag(result, self.table.device_of(tensor))
            return result
        if device.type not in ("cuda", "cpu"):  # meta, mps...: a real move, untagged
            return torch.Tensor.to(tensor, *rest, **kwargs)
        return self._move(tensor, emulated_device(device), dtype, non_blocking,
                          kwargs.get("copy", False))

    def _cuda(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        device = args[1] if len(args) > 1 else kwargs.get("device")
        target = emulated_device("cuda" if device is None else device)
        return self._move(args[0], target or torch.device("cuda", 0), None,
                          kwargs.get("non_blocking", False), False)

    def _cpu(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._move(args[0], None, None, False, False)

    def _move(self, tensor: torch.Tensor, target: torch.device | None,
              dtype: torch.dtype | None, non_blocking: bool, copy: bool) -> torch.Tensor:
        """``tensor`` on ``target`` (None: the CPU): itself when already there (and no
        dtype change or copy is asked), else a new tensor, as torch returns."""
        current = self.table.device_of(tensor)
        if current == target:
            if dtype is None and not copy:
                return tensor
            result = torch.Tensor.to(tensor, dtype or tensor.dtype, copy=copy)
        else:
            result = torch.Tensor.to(tensor, "cpu", dtype or tensor.dtype,
                                     non_blocking=non_blocking, copy=True)
        self.table.tag(result, target)
        if target is None and current is not None and result.dim() > 0:
            where = user_line()
            if where is not None:
                self.table.set_origin(result, Origin("cpu-copy", "", where))
        return result

    def _numpy(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``.numpy()`` of a GPU tensor raises on a GPU (``force=True`` copies first)."""
        device = self.table.device_of(args[0])
        if device is not None and not kwargs.get("force", False):
            self.recorder.numpy(args[0], device)
        return torch.Tensor.numpy(*args, **kwargs)

    def _array(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``np.asarray(t)``: numpy's protocol, which raises for a GPU tensor too."""
        device = self.table.device_of(args[0])
        if device is not None:
            self.recorder.numpy(args[0], device)
        return torch.Tensor.__array__(*args, **kwargs)

"""Input specs guessed from a model's layers: what shapes and kinds of tensors its
forward might take.

The first layers that consume an input (registration order, which is usually the order
of use) each suggest specs: a Conv2d(3, ...) suggests 3xSxS images for a few sizes S, an
Embedding(n, d) token ids in [0, n), an LSTM(input_size, batch_first) a sequence, a
Linear(in, ...) feature vectors. :mod:`torchdoctor.synth.resolve` tries them in order.
Nothing here runs the model.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

#: the synthetic batch size; distinct from the sequence length so the batch axis of an
#: input can be told from its time axis
BATCH = 8
#: sequence lengths tried, longest first (a positional table may allow fewer)
SEQUENCE_LENGTHS = (12, 6)
#: spatial sizes tried for a convolution, smallest first: the first that runs is kept
CONV_SIZES = (28, 32, 64, 96, 128, 224, 299)
#: spatial sizes tried for a transposed convolution (generators start from 1x1 noise)
DECONV_SIZES = (1, 4, 7, 8, 16, 28, 32)
#: consumer layers looked at (registration order may differ from order of use)
FIRST_LAYERS = 3


@dataclass(frozen=True)
class TensorSpec:
    """One input tensor: full shape (batch included), float or token ids below ``high``."""

    shape: tuple[int, ...]
    tokens: bool = False
    high: int = 0
    batch_axis: int = 0
    dtype: str = "float32"

    def make(self, generator: torch.Generator) -> torch.Tensor:
        """A deterministic tensor from ``generator`` (the global RNG is not touched)."""
        import torch

        if self.tokens:
            return torch.randint(0, self.high, self.shape, generator=generator)
        return torch.rand(self.shape, generator=generator, dtype=getattr(torch, self.dtype))


@dataclass(frozen=True)
class InputSpec:
    """The tensors given to ``forward`` (one per positional argument) and a phrase for
    the report, e.g. ``3x32x32 images``."""

    tensors: tuple[TensorSpec, ...]
    description: str

    def make(self, seed: int) -> Any:
        """The inputs: one tensor, or a tuple for several arguments."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        made = tuple(t.make(generator) for t in self.tensors)
        return made[0] if len(made) == 1 else made


def required_inputs(model: nn.Module) -> int:
    """How many positional arguments ``forward`` requires (at least 1)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    count = sum(1 for p in params if p.kind in kinds and p.default is inspect.Parameter.empty)
    return max(count, 1)


def candidate_specs(model: nn.Module) -> list[InputSpec]:
    """The specs worth trying for ``model``, most likely first, without duplicates."""
    singles = _single_specs(model)
    wanted = required_inputs(model)
    if wanted == 1:
        specs = singles
    else:
        specs = _combined(model, singles, wanted)
    unique: dict[tuple[tuple[TensorSpec, ...]], InputSpec] = {}
    for spec in specs:
        unique.setdefault((spec.tensors,), spec)
    return list(unique.values())


def _combined(model: nn.Module, singles: list[InputSpec], wanted: int) -> list[InputSpec]:
    """Specs for a forward of several arguments: the first spec repeated (siamese
    networks, src/tgt of a Transformer), then distinct first layers in order (towers)."""
    from torch import nn

    transformer = next((m for m in model.modules() if isinstance(m, nn.Transformer)), None)
    if transformer is not None and wanted == 2:
        return _transformer_specs(transformer)  # already (src, tgt)
    found = [InputSpec(s.tensors * wanted, f"{wanted} x {s.description}") for s in singles]
    if len(singles) >= wanted:
        firsts = singles[:wanted]
        found.append(InputSpec(tuple(t for s in firsts for t in s.tensors),
                               " + ".join(s.description for s in firsts)))
    return found


def _single_specs(model: nn.Module) -> list[InputSpec]:
    """Specs for a single input, from the model's own hints then its first layers."""
    specs = _attribute_specs(model)
    for layer in list(_consumers(model))[:FIRST_LAYERS]:
        specs.extend(_layer_specs(layer, model))
    return specs


def _consumers(model: nn.Module) -> Iterator[nn.Module]:
    """Layers whose type says what input they take, in registration order."""
    from torch import nn

    kinds = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, nn.Embedding, nn.EmbeddingBag,
             nn.RNNBase, nn.Transformer, nn.TransformerEncoder, nn.TransformerEncoderLayer,
             nn.TransformerDecoderLayer, nn.MultiheadAttention, nn.LayerNorm,
             nn.modules.batchnorm._BatchNorm)
    skip: set[int] = set()
    for module in model.modules():
        if id(module) in skip or not isinstance(module, kinds):
            continue
        if isinstance(module, (nn.Transformer, nn.TransformerEncoder, nn.RNNBase,
                               nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            skip.update(id(m) for m in module.modules())  # its own parts are no inputs
        yield module


def _attribute_specs(model: nn.Module) -> list[InputSpec]:
    """torchvision's ViT/Swin-style ``image_size`` attribute fixes the image size."""
    from torch import nn

    size = getattr(model, "image_size", None)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if not isinstance(size, int) or conv is None:
        return []
    return [_image(conv.in_channels, (size, size), _dtype(conv))]


def _layer_specs(layer: nn.Module, model: nn.Module) -> list[InputSpec]:
    from torch import nn

    if isinstance(layer, nn.modules.conv._ConvNd):
        return _conv_specs(layer)
    if isinstance(layer, (nn.Embedding, nn.EmbeddingBag)):
        return [_tokens(layer.num_embeddings, length) for length in SEQUENCE_LENGTHS]
    if isinstance(layer, nn.RNNBase):
        return [_sequence(layer.input_size, bool(layer.batch_first), _dtype(layer))]
    if isinstance(layer, nn.Transformer):
        return _transformer_specs(layer)
    if isinstance(layer, (nn.TransformerEncoder, nn.TransformerEncoderLayer,
                          nn.TransformerDecoderLayer)):
        first = layer.layers[0] if isinstance(layer, nn.TransformerEncoder) else layer
        return [_sequence(first.self_attn.embed_dim, _batch_first(first), _dtype(first))]
    if isinstance(layer, nn.MultiheadAttention):
        return [_sequence(layer.embed_dim, bool(layer.batch_first), _dtype(layer))]
    if isinstance(layer, nn.Linear):
        return [_vector(layer.in_features, _dtype(layer)),
                _sequence(layer.in_features, True, _dtype(layer))]
    if isinstance(layer, nn.Bilinear):
        return [_vector(layer.in1_features, _dtype(layer))]
    if isinstance(layer, nn.LayerNorm):
        shape = tuple(int(s) for s in layer.normalized_shape)
        return [_features(shape, _dtype(layer)), _features((SEQUENCE_LENGTHS[0], *shape),
                                                           _dtype(layer))]
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return _norm_specs(layer)
    return []


def _conv_specs(conv: nn.Module) -> list[InputSpec]:
    from torch import nn

    dims = len(conv.kernel_size)  # type: ignore[arg-type]
    transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
    sizes: tuple[int, ...] = DECONV_SIZES if transposed else CONV_SIZES
    if dims == 3:  # volumes: large sizes cost too much
        sizes = tuple(s for s in sizes if s <= 64)
    return [_image(conv.in_channels, (size,) * dims, _dtype(conv))  # type: ignore[arg-type]
            for size in sizes]


def _norm_specs(norm: nn.Module) -> list[InputSpec]:
    features = int(norm.num_features)  # type: ignore[arg-type]
    dims = {"BatchNorm1d": 0, "BatchNorm2d": 2, "BatchNorm3d": 3}.get(type(norm).__name__, 0)
    if dims:
        return [_image(features, (size,) * dims, "float32") for size in CONV_SIZES[:3]]
    return [_vector(features, "float32")]


def _transformer_specs(layer: nn.Module) -> list[InputSpec]:
    seq = _sequence(layer.d_model, bool(layer.batch_first), _dtype(layer))  # type: ignore[arg-type]
    return [InputSpec(seq.tensors * 2, f"src and tgt {seq.description}")]


def _image(channels: int, spatial: tuple[int, ...], dtype: str) -> InputSpec:
    what = {1: "sequences", 2: "images", 3: "volumes"}[len(spatial)]
    size = "x".join(str(s) for s in (channels, *spatial))
    return InputSpec((TensorSpec((BATCH, channels, *spatial), dtype=dtype),),
                     f"{size} {what}")


def _tokens(vocabulary: int, length: int) -> InputSpec:
    return InputSpec((TensorSpec((BATCH, length), tokens=True, high=vocabulary),),
                     f"token ids < {vocabulary}, length {length}")


def _sequence(features: int, batch_first: bool, dtype: str) -> InputSpec:
    length = SEQUENCE_LENGTHS[0]
    shape = (BATCH, length, features) if batch_first else (length, BATCH, features)
    order = "batch-first" if batch_first else "time-first"
    return InputSpec((TensorSpec(shape, batch_axis=0 if batch_first else 1, dtype=dtype),),
                     f"{order} sequences of {length}x{features}")


def _vector(features: int, dtype: str) -> InputSpec:
    return InputSpec((TensorSpec((BATCH, features), dtype=dtype),), f"{features} features")


def _features(shape: tuple[int, ...], dtype: str) -> InputSpec:
    return InputSpec((TensorSpec((BATCH, *shape), dtype=dtype),),
                     "x".join(str(s) for s in shape) + " features")


def _batch_first(layer: nn.Module) -> bool:
    return bool(getattr(layer.self_attn, "batch_first", False))


def _dtype(layer: nn.Module) -> str:
    """The float dtype of the layer's first parameter (float32 when it has none)."""
    param = next(layer.parameters(), None)
    if param is None or not param.is_floating_point():
        return "float32"
    return str(param.dtype).replace("torch.", "")

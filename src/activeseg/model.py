"""The paper's U-Net with a Monte-Carlo dropout switch, in 2D or 3D.

Architecture (Lubrano di Scandalea et al.): ``depth`` levels with ``base_filters * 2**i``
filters (paper: 5 levels, 32 -> 512). Each level is two 3x3 convolutions with ReLU followed by
BatchNorm; every 2x2 max-pool is followed by dropout; the decoder upsamples with a 2x2
transposed convolution, concatenates the skip connection and applies the same block; a 1x1
convolution gives logits (``sigmoid`` for one channel, ``softmax`` for several). With
``spatial_dims=3`` every layer is its 3D counterpart (3x3x3 convolutions, 2x2x2 pooling): the
same class, the layer types chosen once (:data:`LAYERS`).

Dropout is :class:`MCDropout`: active in training mode, and in evaluation mode only inside
:func:`mc_dropout`, which keeps BatchNorm on its running statistics (running MC passes in
``model.train()`` lets BatchNorm use batch statistics and changes the scores). Masks come from
an explicit ``torch.Generator`` so that runs are reproducible without global RNG state.

MC inference (:meth:`UNet.stem_cache`, :meth:`UNet.forward_cached`) computes what does not
depend on the dropout masks once per image: the first level, its max-pool, and the skip half
of the top decoder convolution (a convolution of a concatenation is the sum of the
convolutions of its parts). Under bf16 autocast the output layer runs in fp32, and so do the
top decoder block's last convolution and BatchNorm in training and plain inference; in MC
inference that convolution runs in bf16 with its result in fp32, and the frozen BatchNorm is
folded into the output layer (:func:`fold_batch_norm`; MC scoring of the paper network
1.2-1.3x faster, std sums within 0.2 % of fp32's on trained networks). On a CPU, MC inference runs
each 2D convolution and its ReLU as one oneDNN call (:func:`inference`).
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

Generators = torch.Generator | Sequence[torch.Generator]
"""Where dropout masks come from: one generator, or one per equal block of the batch's rows."""


class MCDropout(nn.Module):
    """Dropout drawing its masks from ``self.generator``: element-wise, or with
    ``channelwise`` one draw per channel (as :class:`torch.nn.Dropout2d` / ``Dropout3d``).

    ``self.generator`` may be a sequence of G generators: the batch is then G equal blocks of
    rows and block g draws its mask from generator g exactly as it would alone (how several
    patches share one MC forward pass with the masks each would get on its own).
    Active when the module is training or when ``self.mc`` is set (MC-dropout inference);
    active without a generator it raises instead of drawing from the global RNG.
    """

    def __init__(self, p: float, channelwise: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = p
        self.channelwise = channelwise
        self.mc = False
        self.generator: Generators | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not (self.training or self.mc):
            return x
        if self.generator is None:
            raise RuntimeError(
                "dropout is active but has no generator; run the model inside seeded_dropout() "
                "or mc_dropout() (masks never come from the global RNG)"
            )
        shape = (*x.shape[:2], *([1] * (x.ndim - 2))) if self.channelwise else x.shape
        mask = x.new_empty(shape) if self.channelwise else torch.empty_like(x)
        generators = self.generator
        if isinstance(generators, torch.Generator):
            generators = [generators]
        if len(x) % len(generators):
            raise ValueError(f"{len(x)} rows do not split into {len(generators)} equal blocks")
        for block, generator in zip(mask.chunk(len(generators)), generators, strict=True):
            fast_keep_mask(block, 1.0 - self.p, generator, out=block)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}" + (", channelwise" if self.channelwise else "")


_TORCH_DROPOUT = {nn.Dropout: False, nn.Dropout1d: True, nn.Dropout2d: True, nn.Dropout3d: True}


def patch_dropout(model: nn.Module) -> nn.Module:
    """Replace every :class:`torch.nn.Dropout` (and ``Dropout1d/2d/3d``) of ``model`` by an
    :class:`MCDropout` of the same rate, in place, and return ``model`` (baal's
    ``patch_module``, without patching a class globally). Any network then trains with
    seeded masks and gives MC-dropout statistics with BatchNorm frozen."""
    for name, child in list(model.named_children()):
        kind = type(child)
        if kind in _TORCH_DROPOUT:
            rate = float(child.p)  # type: ignore[arg-type]
            setattr(model, name, MCDropout(rate, channelwise=_TORCH_DROPOUT[kind]))
        else:
            patch_dropout(child)
    return model


def fast_keep_mask(
    x: torch.Tensor, keep: float, generator: torch.Generator, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Inverted-dropout mask like ``x`` (dtype and memory layout; written into ``out`` if
    given, which may be ``x``): ``1 / keep`` with probability ``round(keep * 2**16) / 2**16``
    (``keep`` to within 8e-6), else 0.

    Each element compares 16 random bits with a threshold; three such fields come from one
    63-bit draw, several times faster on a CPU than ``bernoulli_`` (one float draw per
    element). The draws fill the mask in logical (row-major) order whatever the layout.
    """
    n = x.numel()
    words = torch.empty(-(-n // 3), dtype=torch.int64, device=x.device).random_(generator=generator)
    fields = words.view(torch.int16).view(-1, 4)[:, _LOW_FIELDS].reshape(-1)[:n]  # uniform int16
    threshold = round(keep * 2**16) - 2**15
    out = torch.empty_like(x) if out is None else out
    return out.copy_((fields < threshold).view(x.shape)).mul_(1.0 / keep)


# The three 16-bit fields of an int64 below its sign field (whose top bit is always 0).
_LOW_FIELDS = slice(0, 3) if sys.byteorder == "little" else slice(1, 4)


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1(x1) convolution of ``x`` ``[B, C, *S]`` with ``weight`` ``[out, C]`` as a matmul
    over the channels -> ``[B, out, *S]``."""
    return F.linear(x.movedim(1, -1), weight, bias).movedim(-1, 1)


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution computed as a matmul over the channels (:func:`pointwise`; as a
    convolution, channels-last inputs took a slow im2col path: 2.5 % of MC scoring time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise(x, self.weight.flatten(1), self.bias)


def fold_batch_norm(
    norm: nn.modules.batchnorm._BatchNorm, layer: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``[out, C]`` and bias ``[out]`` of the 1x1 convolution ``layer`` applied after
    the frozen BatchNorm ``norm`` (running statistics), as one layer: ``layer(norm(y)) =
    pointwise(y, weight, bias)``."""
    if norm.running_var is None or norm.running_mean is None:
        raise ValueError("fold_batch_norm needs a BatchNorm with running statistics")
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    weight = cast(torch.Tensor, layer.weight).flatten(1)
    bias = weight @ shift
    if layer.bias is not None:
        bias = bias + cast(torch.Tensor, layer.bias)
    return weight * scale, bias


NARROW_CHANNELS = 16  # below this, BatchNorm trains in the contiguous layout (see below)


def _batch_norm_layout(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, groups: int = 1
) -> torch.Tensor:
    """Run a BatchNorm ``forward`` that will be differentiated on a narrow channels-last ``x``
    (fewer than :data:`NARROW_CHANNELS` channels per group: ``groups`` networks stacked along
    the channels decide as each alone would) in the contiguous layout and convert back.

    PyTorch's channels-last BatchNorm backward is several times slower for few channels
    (measured here, fwd + bwd of bf16 ``[8, 8, 128, 128]``: 9.3 ms channels-last, 5.8 ms via
    the contiguous layout incl. both conversions; ``[2, 8, 32, 32, 32]`` backward 4.5 vs
    0.7 ms); evaluation and wider layers stay channels-last (faster there).
    """
    fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    narrow = x.shape[1] // groups < NARROW_CHANNELS and torch.is_grad_enabled() and x.requires_grad
    if narrow and not x.is_contiguous() and x.is_contiguous(memory_format=fmt):
        return forward(x.contiguous()).contiguous(memory_format=fmt)
    return forward(x)


class BatchNorm2d(nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` with a fast training pass on narrow channels-last inputs
    (:func:`_batch_norm_layout`); same parameters and state dict. ``groups``: the number of
    networks whose channels are stacked here (:mod:`activeseg.stacked`)."""

    groups = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _batch_norm_layout(super().forward, x, self.groups)


class BatchNorm3d(nn.BatchNorm3d):
    """:class:`torch.nn.BatchNorm3d`, as :class:`BatchNorm2d`."""

    groups = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _batch_norm_layout(super().forward, x, self.groups)


@dataclass(frozen=True)
class Layers:
    """The layer types of one spatial dimensionality."""

    conv: type[nn.Module]
    conv_transpose: type[nn.Module]
    max_pool: type[nn.Module]
    batch_norm: type[nn.Module]
    pointwise: type[nn.Module]


LAYERS: dict[int, Layers] = {
    2: Layers(nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, BatchNorm2d, PointwiseConv),
    3: Layers(nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d, BatchNorm3d, nn.Conv3d),
}


def _block(layers: Layers, in_ch: int, out_ch: int) -> nn.Sequential:
    """Two 3x3(x3) conv + ReLU, then BatchNorm (the paper's order)."""
    return nn.Sequential(
        layers.conv(in_ch, out_ch, 3, padding=1),
        nn.ReLU(inplace=True),
        layers.conv(out_ch, out_ch, 3, padding=1),
        nn.ReLU(inplace=True),
        layers.batch_norm(out_ch),
    )


class UNet(nn.Module):
    """2D or 3D U-Net. Input ``[B, in_channels, *S]`` with ``S`` = (H, W) or (D, H, W), each
    divisible by ``2**(depth-1)``; output logits ``[B, out_channels, *S]``.

    ``stem`` (the first level) contains no dropout: in MC inference it is computed once per
    image and reused for all samples (:meth:`forward_from_stem`).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 5,
        base_filters: int = 32,
        dropout: float = 0.2,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        if spatial_dims not in LAYERS:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        layers = LAYERS[spatial_dims]
        filters = [base_filters * 2**i for i in range(depth)]
        self.depth = depth
        self.spatial_dims = spatial_dims
        self.out_channels = out_channels
        self.stem = _block(layers, in_channels, filters[0])
        self.down = nn.ModuleList(
            nn.Sequential(
                layers.max_pool(2), MCDropout(dropout), _block(layers, filters[i - 1], filters[i])
            )
            for i in range(1, depth)
        )
        self.up = nn.ModuleList(
            layers.conv_transpose(filters[i], filters[i - 1], 2, stride=2)
            for i in range(depth - 1, 0, -1)
        )
        self.dec = nn.ModuleList(
            _block(layers, 2 * filters[i - 1], filters[i - 1]) for i in range(depth - 1, 0, -1)
        )
        self.head = layers.pointwise(filters[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_stem(self.stem(x))

    def forward_from_stem(self, s0: torch.Tensor) -> torch.Tensor:
        """Logits from the first level's output ``s0`` ``[B, base_filters, *S]``."""
        return self.decode(self.encode(s0))

    def encode(self, s0: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of every level from the stem's ``s0``; the last is the bottleneck
        ``[B, base_filters * 2**(depth-1), *S / 2**(depth-1)]``."""
        skips = [s0]
        for down in self.down:
            skips.append(down(skips[-1]))
        return skips

    def decode(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, out_channels, *S]`` from the outputs of :meth:`encode`."""
        skips = list(levels)
        x = skips.pop()
        for up, dec in zip(self.up[:-1], self.dec[:-1], strict=True):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        x = self._top_block[:2](torch.cat([self.up[-1](x), skips.pop()], dim=1))
        return self._top_tail(x)

    def stem_cache(self, x: torch.Tensor) -> StemCache:
        """The mask-independent parts of MC inference for images ``x`` ``[B, 1, *S]``."""
        s0 = self.stem(x)
        top = cast(nn.Conv2d, self._top_block[0])
        half = top.in_channels // 2
        skip = top._conv_forward(s0, top.weight[:, half:].contiguous(), None)
        return StemCache(cast(nn.Sequential, self.down[0])[0](s0), skip)

    def forward_cached(
        self, cache: StemCache, samples: int, memory_format: torch.memory_format
    ) -> torch.Tensor:
        """Logits ``[B * samples, out_channels, *S]`` of ``samples`` stochastic passes of
        each image of ``cache`` (patch-major: row ``b * samples + t``, so with one generator
        per image the masks of image b are those it would get alone), computing only what
        depends on the dropout masks."""
        pooled = cache.pooled
        x = pooled.repeat_interleave(samples, dim=0)
        first = cast(nn.Sequential, cast(nn.Sequential, self.down[0])[1:])
        x = inference(first, x.contiguous(memory_format=memory_format))
        skips = [x]
        for down in self.down[1:]:
            x = inference(cast(nn.Sequential, down), x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up[:-1], self.dec[:-1], strict=True):
            x = inference(cast(nn.Sequential, dec), torch.cat([up(x), skips.pop()], dim=1))
        top = cast(nn.Conv2d, self._top_block[0])
        half = top.in_channels // 2
        x = top._conv_forward(self.up[-1](x), top.weight[:, :half].contiguous(), top.bias)
        x = x.unflatten(0, (-1, samples)).add_(cache.top_skip[:, None]).flatten(0, 1)
        return self._top_tail(self._top_block[1](x), fused=True)

    def _top_tail(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """The top decoder block's last convolution, ReLU and BatchNorm and the output layer,
        in fp32 even under autocast; ``fused`` (MC inference, BatchNorm frozen): the
        convolution and its ReLU in autocast's dtype by :func:`inference`, the rest as one
        fp32 layer (:func:`fold_batch_norm`)."""
        if fused:
            y = inference(cast(nn.Sequential, self._top_block[2:4]), x).float()
            norm = cast(nn.modules.batchnorm._BatchNorm, self._top_block[4])
            with torch.autocast(x.device.type, enabled=False):
                return pointwise(y, *fold_batch_norm(norm, self.head))
        with torch.autocast(x.device.type, enabled=False):
            return self.head(cast(nn.Sequential, self._top_block[2:])(x.float()))

    @property
    def _top_block(self) -> nn.Sequential:
        """The top decoder block: conv (input: upsampled + skip), ReLU, conv, ReLU, BN."""
        return cast(nn.Sequential, self.dec[-1])

    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck descriptors ``[B, base_filters * 2**(depth-1)]``: the deepest level's
        output averaged over space (Yang et al. 2017's image descriptor); dropout as the
        model's mode says (deterministic in evaluation mode)."""
        bottleneck = self.encode(self.stem(x))[-1]
        return bottleneck.float().mean(dim=tuple(range(2, bottleneck.ndim)))

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this."""
        return int(2 ** (self.depth - 1))


def inference(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)`` without autograd, each 2D convolution followed by a ReLU as one oneDNN
    call with the ReLU fused (CPU; elsewhere, in 3D or with autograd on, the plain layers):
    1.4x faster for a bf16 3x3 convolution of ``[10, 64, 64, 64]``, identical output (the
    convolution is computed in the dtype autocast would use)."""
    modules = list(layers)
    i = 0
    while i < len(modules):
        module = modules[i]
        relu_next = i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU)
        if isinstance(module, nn.Sequential):
            x = inference(module, x)
        elif relu_next and type(module) is nn.Conv2d and _fusable(module, x):
            x = _conv_relu(module, x)
            i += 1
        else:
            x = module(x)
        i += 1
    return x


_FUSION = {"on": True}


@contextmanager
def fusion(enabled: bool) -> Iterator[None]:
    """Switch :func:`inference`'s fused convolution + ReLU on or off inside the block (off:
    e.g. to count FLOPs with torch's ``FlopCounterMode``, which does not see the fused op)."""
    before = _FUSION["on"]
    _FUSION["on"] = enabled
    try:
        yield
    finally:
        _FUSION["on"] = before


def _fusable(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether :func:`_conv_relu` runs here: a CPU with oneDNN, 2D, no autograd, and for
    bf16 a CPU with native bf16 (AVX512-BF16 or AMX; as :func:`activeseg.runtime.resolve`)."""
    if not _FUSION["on"] or x.device.type != "cpu" or x.ndim != 4 or torch.is_grad_enabled():
        return False
    if conv.padding_mode != "zeros" or not isinstance(conv.padding, tuple):
        return False
    bf16 = _compute_dtype(x) == torch.bfloat16
    return torch.backends.mkldnn.is_available() and (
        not bf16 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a CPU convolution of ``x`` runs in (autocast's when it is on)."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


_CASTS: weakref.WeakKeyDictionary[
    nn.Module, tuple[tuple[object, ...], torch.Tensor, torch.Tensor | None]
]
_CASTS = weakref.WeakKeyDictionary()


def _conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x))`` as one oneDNN convolution with a ReLU post-op, in autocast's dtype
    when autocast is on (the weights cast once per weight version, not per call)."""
    dtype = _compute_dtype(x)
    weight, bias = conv.weight, conv.bias
    if weight.dtype != dtype:
        key = (dtype, weight._version, weight.data_ptr(), None if bias is None else bias._version)
        cached = _CASTS.get(conv)
        if cached is None or cached[0] != key:
            cached = (key, weight.to(dtype), None if bias is None else bias.to(dtype))
            _CASTS[conv] = cached
        weight, bias = cached[1], cached[2]
    padding = cast(tuple[int, int], conv.padding)
    return torch.ops.mkldnn._convolution_pointwise(
        x.to(dtype), weight, bias, padding, conv.stride, conv.dilation, conv.groups, "relu", [], ""
    )


@dataclass(frozen=True)
class StemCache:
    """Mask-independent activations of MC inference for ``B`` images: ``pooled``, the
    max-pooled first level ``[B, f, *S/2]``, and ``top_skip``, the skip half of the top
    decoder convolution (without bias) ``[B, f, *S]``."""

    pooled: torch.Tensor
    top_skip: torch.Tensor


def seeded_unet(
    seed: int,
    depth: int,
    base_filters: int,
    dropout: float,
    out_channels: int = 1,
    spatial_dims: int = 2,
) -> UNet:
    """A freshly initialised U-Net (one input channel) whose initialisation draws from
    ``seed`` only (the global RNG state is restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(1, out_channels, depth, base_filters, dropout, spatial_dims)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``[B, C, *S]`` logits -> probabilities: sigmoid for C = 1, softmax otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def predicted_labels(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Labels int64 ``[B, *S]`` of probabilities ``[B, C, *S]``: ``p >= threshold`` for one
    (foreground) channel, the most probable class otherwise."""
    if probs.shape[1] == 1:
        return (probs[:, 0] >= threshold).long()
    return probs.argmax(dim=1)


def output_channels(num_classes: int) -> int:
    """Logit channels for ``num_classes`` labels: 1 (sigmoid) for binary, else one each."""
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes (background and foreground), got {num_classes}")
    return 1 if num_classes == 2 else num_classes


def dropout_modules(model: nn.Module) -> list[MCDropout]:
    return [m for m in model.modules() if isinstance(m, MCDropout)]


@contextmanager
def seeded_dropout(model: nn.Module, generator: Generators | None) -> Iterator[None]:
    """Draw the model's dropout masks from ``generator`` inside the block (one, or one per
    equal block of rows: see :class:`MCDropout`)."""
    modules = dropout_modules(model)
    previous = [m.generator for m in modules]
    for m in modules:
        m.generator = generator
    try:
        yield
    finally:
        for m, g in zip(modules, previous, strict=True):
            m.generator = g


@contextmanager
def mc_dropout(model: nn.Module, generator: Generators | None) -> Iterator[None]:
    """Evaluation mode (BatchNorm frozen) with stochastic dropout drawn from ``generator``."""
    was_training = model.training
    model.eval()
    modules = dropout_modules(model)
    for m in modules:
        m.mc = True
    try:
        with seeded_dropout(model, generator):
            yield
    finally:
        for m in modules:
            m.mc = False
        model.train(was_training)

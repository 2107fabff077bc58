"""The paper's U-Net with a Monte-Carlo dropout switch.

Architecture (Lubrano di Scandalea et al.): ``depth`` levels with ``base_filters * 2**i``
filters (paper: 5 levels, 32 -> 512). Each level is two 3x3 convolutions with ReLU followed by
BatchNorm; every 2x2 max-pool is followed by dropout; the decoder upsamples with a 2x2
transposed convolution, concatenates the skip connection and applies the same block; a 1x1
convolution gives logits (``sigmoid`` for one channel, ``softmax`` for several).

Dropout is :class:`MCDropout`: active in training mode, and in evaluation mode only inside
:func:`mc_dropout`, which keeps BatchNorm on its running statistics (running MC passes in
``model.train()`` lets BatchNorm use batch statistics and changes the scores). Masks come from
an explicit ``torch.Generator`` so that runs are reproducible without global RNG state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class MCDropout(nn.Module):
    """Element-wise dropout drawing its masks from ``self.generator``.

    Active when the module is training or when ``self.mc`` is set (MC-dropout inference);
    active without a generator it raises instead of drawing from the global RNG.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = p
        self.mc = False
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not (self.training or self.mc):
            return x
        if self.generator is None:
            raise RuntimeError(
                "dropout is active but has no generator; run the model inside seeded_dropout() "
                "or mc_dropout() (masks never come from the global RNG)"
            )
        keep = 1.0 - self.p
        mask = torch.empty_like(x).bernoulli_(keep, generator=self.generator)
        return x * mask * (1.0 / keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    """Two 3x3 conv + ReLU, then BatchNorm (the paper's order)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(out_ch),
    )


class UNet(nn.Module):
    """2D U-Net. Input ``[B, in_channels, H, W]`` (H, W divisible by ``2**(depth-1)``);
    output logits ``[B, out_channels, H, W]``.

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
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        filters = [base_filters * 2**i for i in range(depth)]
        self.depth = depth
        self.stem = _block(in_channels, filters[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), MCDropout(dropout), _block(filters[i - 1], filters[i]))
            for i in range(1, depth)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(filters[i], filters[i - 1], 2, stride=2)
            for i in range(depth - 1, 0, -1)
        )
        self.dec = nn.ModuleList(
            _block(2 * filters[i - 1], filters[i - 1]) for i in range(depth - 1, 0, -1)
        )
        self.head = nn.Conv2d(filters[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_stem(self.stem(x))

    def forward_from_stem(self, s0: torch.Tensor) -> torch.Tensor:
        """Logits from the first level's output ``s0`` ``[B, base_filters, H, W]``."""
        skips = [s0]
        x = s0
        for down in self.down:
            x = down(x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this."""
        return int(2 ** (self.depth - 1))


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` logits -> probabilities: sigmoid for C = 1, softmax otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def dropout_modules(model: nn.Module) -> list[MCDropout]:
    return [m for m in model.modules() if isinstance(m, MCDropout)]


@contextmanager
def seeded_dropout(model: nn.Module, generator: torch.Generator | None) -> Iterator[None]:
    """Draw the model's dropout masks from ``generator`` inside the block."""
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
def mc_dropout(model: nn.Module, generator: torch.Generator | None) -> Iterator[None]:
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

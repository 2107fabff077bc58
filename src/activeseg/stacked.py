"""Many small networks as one wide one: the M members of a committee in a single module.

A :class:`Stack` maps per-member inputs ``[B, M * 1, *S]`` (channel group ``m`` holds member
``m``'s batch) to per-member logits ``[B, M * C, *S]``; member ``m`` sees only its own inputs,
weights, BatchNorm statistics and dropout masks, so training the stack is training each
member alone (the same arithmetic summed in another order):

* :class:`MemberLoop` (the default, any network): the members run one after the other.
* :class:`StackedUNet` (``grouped``), the built-in U-Net's members as ONE network of grouped
  convolutions (``groups = M``): every layer runs once for all members, M times wider. Every
  parameter's first dimension is member-major, so member ``m``'s coordinates are
  ``p.unflatten(0, (M, -1))[m]``. Measured slower than the loop on a CPU (see :func:`stack`),
  and ``torch.func.functional_call`` + ``vmap`` slower still; kept for devices where grouped
  convolutions may pay (not measured).

Dropout draws member ``m``'s masks from ``generators[m]`` exactly as the member alone would
(:func:`activeseg.model.fast_keep_mask` fills masks in logical order whatever the layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from activeseg.model import (
    BatchNorm2d,
    BatchNorm3d,
    MCDropout,
    PointwiseConv,
    UNet,
    fast_keep_mask,
    seeded_dropout,
)


class StackedDropout(nn.Module):
    """Element-wise dropout of ``members`` channel groups, member ``m``'s mask from
    ``self.generators[m]``; active in training mode only."""

    def __init__(self, p: float, members: int) -> None:
        super().__init__()
        self.p, self.members = p, members
        self.generators: Sequence[torch.Generator] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        if len(self.generators) != self.members:
            raise RuntimeError("stacked dropout needs one generator per member (seeded_members)")
        per_member = x.unflatten(1, (self.members, -1))
        keep = 1.0 - self.p
        masks = [fast_keep_mask(per_member[:, m], keep, g) for m, g in enumerate(self.generators)]
        mask = torch.stack(masks, 1).flatten(1, 2)
        return x * mask.contiguous(memory_format=_format_of(x))


def _format_of(x: torch.Tensor) -> torch.memory_format:
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _interleave(a: torch.Tensor, b: torch.Tensor, members: int) -> torch.Tensor:
    """Member-wise channel concatenation ``[B, M*a]``, ``[B, M*b]`` -> ``[B, M*(a+b)]``."""
    joined = torch.cat([a.unflatten(1, (members, -1)), b.unflatten(1, (members, -1))], 2)
    return joined.flatten(1, 2).contiguous(memory_format=_format_of(a))


def _grouped(layer: nn.Module, members: int) -> nn.Module:
    """The grouped (``groups = members``) counterpart of one U-Net layer, uninitialised."""
    if isinstance(layer, nn.modules.conv._ConvNd):
        conv = cast(type[nn.Conv2d], nn.Conv2d if isinstance(layer, PointwiseConv) else type(layer))
        return conv(
            layer.in_channels * members,
            layer.out_channels * members,
            layer.kernel_size,  # type: ignore[arg-type]
            stride=layer.stride,  # type: ignore[arg-type]
            padding=layer.padding,  # type: ignore[arg-type]
            groups=members,
        )
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        norm = type(layer)(layer.num_features * members, layer.eps, layer.momentum)
        if isinstance(norm, BatchNorm2d | BatchNorm3d):
            norm.groups = members  # the layout choice of each member alone
        return norm
    if isinstance(layer, MCDropout):
        return StackedDropout(layer.p, members)
    if isinstance(layer, nn.Sequential):
        return nn.Sequential(*(_grouped(child, members) for child in layer))
    if isinstance(layer, nn.ModuleList):
        return nn.ModuleList(_grouped(child, members) for child in layer)
    return layer  # ReLU, max-pool: element-wise or per channel already


class StackedUNet(nn.Module):
    """``M`` U-Nets of one architecture as one network of grouped layers (see the module
    docstring); built from and written back to the members by :meth:`load_members` and
    :meth:`store_member`."""

    def __init__(self, template: UNet, members: int) -> None:
        super().__init__()
        self.members = members
        self.out_channels = template.out_channels
        self.stem = _grouped(template.stem, members)
        self.down = _grouped(template.down, members)
        self.up = _grouped(template.up, members)
        self.dec = _grouped(template.dec, members)
        self.head = _grouped(template.head, members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in cast(nn.ModuleList, self.down):
            skips.append(down(skips[-1]))
        x = skips.pop()
        ups, decs = cast(nn.ModuleList, self.up), cast(nn.ModuleList, self.dec)
        for up, dec in zip(ups[:-1], decs[:-1], strict=True):
            x = dec(_interleave(up(x), skips.pop(), self.members))
        top = cast(nn.Sequential, decs[-1])
        x = top[:2](_interleave(ups[-1](x), skips.pop(), self.members))
        with torch.autocast(x.device.type, enabled=False):  # as UNet._top_tail: fp32
            return cast(torch.Tensor, self.head(top[2:](x.float())))

    def _pairs(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(stacked tensor, member tensor) for every parameter and buffer, in order."""
        mine = dict(self.named_parameters()) | dict(self.named_buffers())
        theirs = dict(model.named_parameters()) | dict(model.named_buffers())
        return [(mine[name], theirs[name]) for name in mine]

    @torch.no_grad()
    def load_members(self, models: Sequence[nn.Module]) -> None:
        """Copy the weights and BatchNorm statistics of the ``M`` members in."""
        for m, model in enumerate(models):
            for stacked, member in self._pairs(model):
                if stacked.ndim == 0:  # num_batches_tracked: the members step together
                    stacked.copy_(member)
                else:
                    stacked.unflatten(0, (self.members, -1))[m].copy_(member)

    @torch.no_grad()
    def store_member(self, m: int, model: nn.Module) -> None:
        """Copy member ``m``'s weights and BatchNorm statistics into ``model``."""
        for stacked, member in self._pairs(model):
            member.copy_(
                stacked if stacked.ndim == 0 else stacked.unflatten(0, (self.members, -1))[m]
            )


class MemberLoop(nn.Module):
    """Any networks as a :class:`Stack`: member ``m`` runs on channel group ``m`` with its
    dropout masks from ``generators[m]`` (one after the other)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = len(models)
        self.nets = nn.ModuleList(models)
        self.generators: Sequence[torch.Generator] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for net, part, g in zip(self.nets, x.chunk(self.members, 1), self.generators, strict=True):
            with seeded_dropout(net, g):
                outputs.append(net(part))
        return torch.cat(outputs, 1)

    def load_members(self, models: Sequence[nn.Module]) -> None:
        pass  # the members are the stack's own modules

    def store_member(self, m: int, model: nn.Module) -> None:
        if model is not self.nets[m]:
            model.load_state_dict(self.nets[m].state_dict())


Stack = StackedUNet | MemberLoop


def stack(models: Sequence[nn.Module], grouped: bool = False) -> Stack:
    """The members as a :class:`MemberLoop` (``models`` are its modules: trained in place),
    or with ``grouped`` as one :class:`StackedUNet` when they are built-in U-Nets of one
    architecture. The loop is the default: on a 2-core Sapphire Rapids CPU (bf16, 2
    threads) a training step of 5 ``cpu``-preset members took 226 ms one after the other,
    321 ms as grouped convolutions and 534 ms with ``torch.func`` ``vmap``
    (benchmarks/README.md)."""
    first = models[0]
    same = (
        all(isinstance(m, UNet) for m in models)
        and len({tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in models})
        == 1
    )
    if not (grouped and same):
        return MemberLoop(models)
    stacked = StackedUNet(cast(UNet, first), len(models))
    stacked.load_members(models)
    return stacked


def seed_members(net: Stack, generators: Sequence[torch.Generator]) -> None:
    """Draw member ``m``'s dropout masks from ``generators[m]``."""
    if isinstance(net, MemberLoop):
        net.generators = generators
        return
    for module in net.modules():
        if isinstance(module, StackedDropout):
            module.generators = generators


def _rows(net: Stack, grads: bool) -> list[list[tuple[int, torch.Tensor]]]:
    """Per trainable parameter, (member, tensor) pairs: for a :class:`StackedUNet` one pair
    ``(-1, p)`` of the stacked tensor, for a :class:`MemberLoop` one pair per member."""
    if isinstance(net, MemberLoop):
        per_member = [[p for p in n.parameters() if p.requires_grad] for n in net.nets]
        return [list(enumerate(ps)) for ps in zip(*per_member, strict=True)]
    return [[(-1, p)] for p in net.parameters() if p.requires_grad]


def member_coordinates(net: Stack, grads: bool = False) -> torch.Tensor:
    """The members' trainable parameters (or with ``grads`` their ``.grad``, 0 where none)
    as float64 rows ``[M, D]``: member ``m``'s flat vector is row ``m``."""
    columns = []
    for pairs in _rows(net, grads):
        values = [(p.grad if p.grad is not None else torch.zeros_like(p)) if grads else p.detach()
                  for _, p in pairs]  # fmt: skip
        if pairs[0][0] < 0:
            columns.append(values[0].reshape(net.members, -1))
        else:
            columns.append(torch.stack([v.reshape(-1) for v in values]))
    return torch.cat(columns, 1).double()


def set_member_gradients(net: Stack, rows: torch.Tensor) -> None:
    """Write ``rows`` ``[M, D]`` (as :func:`member_coordinates`) into the ``.grad`` of the
    trainable parameters, each in its parameter's memory layout (fused Adam reads grads in
    the parameter's layout)."""
    offset = 0
    for pairs in _rows(net, grads=True):
        p = pairs[0][1]
        k = p.numel() // (net.members if pairs[0][0] < 0 else 1)
        block = rows[:, offset : offset + k]
        if pairs[0][0] < 0:
            grad = torch.empty_like(p)
            target = grad.unflatten(0, (net.members, -1))
            target.copy_(block.reshape(target.shape))
            p.grad = grad
        else:
            for m, q in pairs:
                q.grad = torch.empty_like(q).copy_(block[m].reshape(q.shape))
        offset += k

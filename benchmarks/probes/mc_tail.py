"""The top decoder tail of MC inference: accuracy against fp32 and speed of the engine's tail
(bf16 convolution with an fp32 result, the frozen BatchNorm folded into the fp32 output
layer) and of the alternatives tried: the tail before it (convolution, BatchNorm and output
layer in fp32), a bf16 output layer, and the top skip's add and ReLU fused into the
convolution (oneDNN binary post-op).

For a `cpu`-preset network (64² patches) and the paper network (128²), each trained 40
steps on phantom patches: the mean std sum at bf16 over that at fp32 (same masks, T = 20),
their correlation, and the median seconds of 4 patches at T = 50 (3 rounds round-robin).
One JSON line per network.

    python benchmarks/probes/mc_tail.py
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from activeseg import model as unet
from activeseg.bench.mc import trained_net
from activeseg.bench.measure import FULL, cpu_info, pool_images
from activeseg.runtime import resolve
from activeseg.scoring import mc_statistics

UNet = unet.UNet
ENGINE_TAIL, ENGINE_CACHED = UNet._top_tail, UNet.forward_cached


def fp32_tail(self: UNet, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
    """The tail before the folded one: convolution, BatchNorm and output layer in fp32."""
    with torch.autocast(x.device.type, enabled=False):
        tail = cast(nn.Sequential, self._top_block[2:])
        return cast(torch.Tensor, self.head(unet.inference(tail, x.float())))


def bf16_head(self: UNet, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
    """The folded tail with the output layer in autocast's dtype too."""
    y = unet.inference(cast(nn.Sequential, self._top_block[2:4]), x)
    norm = cast(nn.modules.batchnorm._BatchNorm, self._top_block[4])
    weight, bias = unet.fold_batch_norm(norm, self.head)
    return unet.pointwise(y, weight.to(y.dtype), bias.to(y.dtype)).float()


def fused_skip(self: UNet, cache: unet.StemCache, samples: int, fmt: Any) -> torch.Tensor:
    """forward_cached with the top skip's add and ReLU as post-ops of the convolution."""
    x = unet.inference(cast(nn.Sequential, self.down[0])[1:], cache.pooled.repeat_interleave(
        samples, dim=0).contiguous(memory_format=fmt))  # fmt: skip
    skips = [x]
    for down in self.down[1:]:
        x = unet.inference(cast(nn.Sequential, down), x)
        skips.append(x)
    skips.pop()
    for up, dec in zip(self.up[:-1], self.dec[:-1], strict=True):
        x = unet.inference(cast(nn.Sequential, dec), torch.cat([up(x), skips.pop()], dim=1))
    top = cast(nn.Conv2d, self._top_block[0])
    u = self.up[-1](x)
    dtype = unet._compute_dtype(u)
    skip = cache.top_skip.to(dtype).repeat_interleave(samples, dim=0).contiguous(memory_format=fmt)
    weight = top.weight[:, : top.in_channels // 2].to(dtype).contiguous()
    bias = cast(torch.Tensor, top.bias).to(dtype)
    args = (list(top.padding), list(top.stride), list(top.dilation), 1)
    y = torch.ops.mkldnn._convolution_pointwise.binary(
        u.to(dtype), skip, weight, bias, *args, "add", None, "relu", [], ""
    )
    return self._top_tail(y, fused=True)


VARIANTS: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {
    "engine": (ENGINE_TAIL, ENGINE_CACHED),
    "fp32 tail (before)": (fp32_tail, ENGINE_CACHED),
    "bf16 output layer": (bf16_head, ENGINE_CACHED),
    "fused skip add + ReLU": (ENGINE_TAIL, fused_skip),
}


def main() -> None:
    print(json.dumps({"cpu": cpu_info(), "threads": torch.get_num_threads()}))
    fp32, bf16 = resolve("cpu", "fp32"), resolve("cpu", "bf16")
    for name, depth, filters, patch in (("cpu", 4, 8, 64), ("paper", 5, 32, 128)):
        net = trained_net(depth, filters, FULL, patch)
        images, ids = pool_images(12, patch), list(range(12))
        reference = mc_statistics(net, images, ids, 20, 10, 0, fp32).std.double().flatten(1).sum(1)
        rows: dict[str, dict[str, Any]] = {}
        for variant, (tail, cached) in VARIANTS.items():
            UNet._top_tail, UNet.forward_cached = tail, cached  # type: ignore[method-assign]
            sums = mc_statistics(net, images, ids, 20, 10, 0, bf16).std.double().flatten(1).sum(1)
            rows[variant] = {
                "std_sum_ratio_vs_fp32": float(sums.mean() / reference.mean()),
                "correlation_vs_fp32": float(torch.corrcoef(torch.stack([sums, reference]))[0, 1]),
                "seconds": [],
            }
        for _ in range(3):
            for variant, (tail, cached) in VARIANTS.items():
                UNet._top_tail, UNet.forward_cached = tail, cached  # type: ignore[method-assign]
                start = time.perf_counter()
                mc_statistics(net, images[:4], ids[:4], 50, 10, 0, bf16)
                rows[variant]["seconds"].append(time.perf_counter() - start)
        UNet._top_tail, UNet.forward_cached = ENGINE_TAIL, ENGINE_CACHED  # type: ignore[method-assign]
        for row in rows.values():
            row["seconds"] = statistics.median(row["seconds"])
        print(json.dumps({"net": name, "patch": patch, **rows}))


if __name__ == "__main__":
    main()

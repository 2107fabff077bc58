"""Benchmarks measured side by side in one process: ratios, not absolute claims.

``activeseg bench [--quick] [--json FILE] [--sem PATH]`` (or ``python benchmarks/bench.py``)
prints the CPU model and flags, one table, and writes the numbers as JSON to FILE after every
section (``"complete": false`` until the last one), so a run cut short keeps what it measured:

* **Peaks** (:mod:`.measure`): the fp32 and bf16 matmul throughput of this machine, now.
* **MC scoring** (:mod:`.mc`; T samples of a pool of patches, the ``cpu`` preset network on
  the preset's patches and the paper network on 128-pixel patches): activeseg's engine
  (:func:`activeseg.scoring.mc_statistics`) vs a naive fp32 loop (one forward per sample and
  patch, NCHW, all outputs kept) vs baal 2's ``ModelWrapper.predict_on_batch`` (default: the
  batch replicated T times in memory) and with ``MCCachingModule`` (T calls, the layers
  before the first dropout cached). Seconds (the median of the timings per method, taken
  round-robin over the methods), patches/s, peak resident memory above the start, executed
  GFLOP/s (FLOPs counted by :class:`torch.utils.flop_counter.FlopCounterMode` over the pool)
  as a fraction of both peaks, and the correlation of the per-patch std sums with the naive
  loop's. On a trained network (the paper's), the Spearman correlation of activeseg's
  per-patch std sums with a plain fp32 loop's, next to the noise floor of two more plain
  loops.
* **Training** (:mod:`.training`): images/s of :func:`activeseg.train.fit` vs a plain fp32
  NCHW loop with per-sample (scipy) augmentation, for both networks.
* **Committee** (:mod:`.training`): ``members`` U-Nets of the ``cpu`` preset trained one
  after the other and in :func:`activeseg.committee.fit_members` (member loop, grouped
  convolutions), in time of one. Next to it, the seconds per training step at the preset's
  patch size and at the smallest patch the network takes (the cost that does not scale
  with pixels), and the bound they give for any stacking of the members that shares that
  cost but not the per-pixel work: ``(fixed + members * (full - fixed)) / full``.
* **One AL iteration** (:mod:`.iteration`) of the ``cpu`` preset on the SEM data (``--sem``;
  else the phantom, sized for the preset's split): the record's seconds.

baal is optional (``pip install activeseg[bench]``); without it its rows are skipped and its
ratios are ``null``. The headline ratios (``mc_speedup_vs_baal_cached``, ...) are the ``cpu``
network's; the same keys ending in ``_paper_net`` are the paper network's. Run it on an idle
machine (the load average before and after is recorded).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from activeseg.bench.iteration import bench_iteration
from activeseg.bench.mc import (
    bench_mc,
    have_baal,
    mc_memory_vs_samples,
    naive_mc,
    ranking_agreement,
    torch_dropout_copy,
    trained_net,
)
from activeseg.bench.measure import FULL, QUICK, Context, cpu_info, make_net, matmul_peak
from activeseg.bench.report import speedups, table
from activeseg.bench.training import (
    bench_committee,
    bench_train,
    plain_augment,
    step_seconds_by_patch,
)
from activeseg.files import atomic_write_text
from activeseg.presets import preset
from activeseg.runtime import resolve

Result = dict[str, Any]


def run(
    quick: bool = False,
    sem: str | None = None,
    log: Callable[[str], None] = print,
    save: Callable[[Result], None] = lambda result: None,
) -> Result:
    """All benchmarks; the result dict (see the module docstring). ``save`` receives the
    result so far after every section."""
    sizes = QUICK if quick else FULL
    native = resolve("cpu", "auto").bf16
    result: Result = {
        "cpu": cpu_info(),
        "threads": torch.get_num_threads(),
        "native_bf16": native,
        "torch": torch.__version__,
        "baal": have_baal(),
        "quick": quick,
        "sizes": {k: v for k, v in vars(sizes).items() if k != "sem_overrides"},
        "load_average_1_5_15_before": os.getloadavg(),
    }
    log(f"CPU: {result['cpu']['model']} ({', '.join(result['cpu']['flags'])}); torch "
        f"{torch.__version__}, {result['threads']} threads, native bf16: {native}, "
        f"baal: {result['baal']}")  # fmt: skip
    peaks = {
        "fp32": matmul_peak(torch.float32, sizes.matmul),
        "bf16": matmul_peak(torch.bfloat16, min(sizes.matmul, 1024)),  # emulated bf16 is slow
    }
    result["matmul_peak_gflop_per_s"] = peaks
    log(f"  matmul peak: fp32 {peaks['fp32']:.1f}, bf16 {peaks['bf16']:.1f} GFLOP/s")
    save(result)
    ctx = Context(sizes, peaks, log)
    cpu = preset("cpu").model
    nets = {"cpu": make_net(cpu.depth, cpu.base_filters)}
    if sizes.paper_pool:
        paper = preset("paper-sbem").model
        nets["paper"] = make_net(paper.depth, paper.base_filters)
    result["mc"], result["train"] = {}, {}
    patch = {"cpu": sizes.patch, "paper": sizes.paper_patch}
    for name, net in nets.items():  # emulated bf16 is slow: measured on the cpu network only
        pool = sizes.pool if name == "cpu" else sizes.paper_pool
        result["mc"][name] = bench_mc(ctx, name, net, pool, patch[name], native or name == "cpu")
        save(result)
    name = "paper" if "paper" in nets else "cpu"
    spec = preset("paper-sbem" if name == "paper" else "cpu").model
    trained = trained_net(spec.depth, spec.base_filters, sizes, patch[name])
    result[f"mc_ranking_{name}_net"] = ranking_agreement(
        trained, sizes, max(sizes.pool, 6), patch[name]
    )
    log(f"  MC ranking, trained {name} net: {result[f'mc_ranking_{name}_net']}")
    save(result)
    result["mc_activeseg_peak_mb_by_samples"] = mc_memory_vs_samples(nets["cpu"], sizes)
    for name, net in nets.items():
        steps = sizes.train_steps // (1 if name == "cpu" else 4)
        result["train"][name] = bench_train(ctx, name, net, steps, patch[name])
        ratios = speedups(result["mc"][name], result["train"][name], native)
        suffix = "" if name == "cpu" else f"_{name}_net"
        result.update({f"{k}{suffix}": v for k, v in ratios.items()})
        save(result)
    committee = bench_committee(ctx, cpu.depth, cpu.base_filters, sizes.train_steps)
    result["committee"] = committee
    one, separate, loop, grouped = (row["seconds"] for row in committee.values())
    result["committee_fit_members_time_vs_one_member"] = loop / one
    result["committee_grouped_time_vs_one_member"] = grouped / one
    result["committee_separate_time_vs_one_member"] = separate / one
    smallest = 2 ** (cpu.depth - 1)  # the smallest patch the network takes
    by_patch = step_seconds_by_patch(
        ctx, cpu.depth, cpu.base_filters, sizes.train_steps, (smallest, sizes.patch)
    )
    result["train_step_seconds_by_patch_cpu_net"] = by_patch
    fixed, full = by_patch[smallest], by_patch[sizes.patch]
    result["committee_bound_sharing_fixed_cost_vs_one_member"] = (
        fixed + sizes.members * (full - fixed)
    ) / full
    save(result)
    iteration = bench_iteration(sem, sizes)
    log(f"  AL iteration: {iteration}")
    result["sem_iteration_seconds"] = iteration["total"]
    result["sem_iteration_split_seconds"] = iteration
    result["sem_data"] = sem or "synthetic phantom (no --sem given)"
    result["load_average_1_5_15_after"] = os.getloadavg()
    return result


def bench(quick: bool = False, json_path: Path | None = None, sem: str | None = None) -> int:
    """``activeseg bench``: run, print the table, write the JSON (after every section, with
    ``"complete": false`` until the end); exit code 0."""

    def save(result: Result, complete: bool = False) -> None:
        if json_path is not None:
            atomic_write_text(json_path, json.dumps({**result, "complete": complete}, indent=1))

    result = run(quick, sem, save=save)
    print(table(result))
    save(result, complete=True)
    return 0


__all__ = [
    "bench",
    "have_baal",
    "make_net",
    "naive_mc",
    "plain_augment",
    "run",
    "table",
    "torch_dropout_copy",
]

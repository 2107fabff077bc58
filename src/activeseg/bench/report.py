"""The headline ratios of a benchmark result and its text table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from activeseg.bench.measure import Row


def speedups(
    mc: dict[str, Row], train: dict[str, Row], native_bf16: bool
) -> dict[str, float | None]:
    """The headline ratios of one network: activeseg at ``precision=auto`` (bf16 where the
    CPU has it natively) against each baseline; ``None`` where a baseline was not run."""
    mode = "activeseg bf16" if native_bf16 else "activeseg fp32"
    best = mc[mode]

    def ratio(key: str) -> float | None:
        return mc[key]["seconds"] / best["seconds"] if key in mc else None

    return {
        "mc_speedup_vs_baal_cached": ratio("baal MCCachingModule"),
        "mc_speedup_vs_baal_default": ratio("baal default"),
        "mc_speedup_vs_naive": ratio("naive fp32 loop"),
        "mc_fraction_of_bf16_peak": best["fraction_of_bf16_peak"],
        "mc_fraction_of_fp32_peak": best["fraction_of_fp32_peak"],
        "train_speedup_vs_fp32_nchw": train[mode]["images_per_s"]
        / train["plain fp32 NCHW"]["images_per_s"],
    }


HEADLINES = ("mc_speedup", "mc_fraction", "train_speedup", "committee_", "sem_iteration_seconds")


def _cell(row: Row, key: str, scale: float) -> str:
    return f"{scale * row[key]:.{0 if scale > 1 else 1}f}" if key in row else ""


def _rows(result: dict[str, Any]) -> Iterator[tuple[str, str, Row, float, str]]:
    """(benchmark, method, row, patches or images per second, std-sum correlation) of every
    MC and training row."""
    for net, rows in result.get("mc", {}).items():
        for method, r in rows.items():
            corr = f"{r['std_sum_correlation_with_naive']:.3f}"
            yield f"MC, {net} net, {r['patches']:.0f} patches", method, r, r["patches_per_s"], corr
    for net, rows in result.get("train", {}).items():
        for method, r in rows.items():
            yield f"train step, {net} net", method, r, r["images_per_s"], ""
    for method, r in result.get("committee", {}).items():
        yield "committee training, cpu net", method, r, r["images_per_s"], ""


def table(result: dict[str, Any]) -> str:
    """The result (complete or partial) as one text table (Markdown)."""
    cpu = result.get("cpu", {})
    lines = [f"CPU: {cpu.get('model')} ({', '.join(cpu.get('flags', []))})"]
    peaks = result.get("matmul_peak_gflop_per_s")
    if peaks:
        lines.append(
            f"matmul peak: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s; "
            f"{result['threads']} threads; native bf16: {result['native_bf16']}"
        )
    lines += [
        "",
        "| benchmark | method | s | patches or images /s | peak MB | GFLOP/s | % fp32 peak "
        "| % bf16 peak | std-sum corr. vs naive |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for benchmark, method, r, per_s, corr in _rows(result):
        lines.append(
            f"| {benchmark} | {method} | {r['seconds']:.2f} | {per_s:.2f} | {r['peak_mb']:.0f} "
            f"| {_cell(r, 'gflop_per_s', 1)} | {_cell(r, 'fraction_of_fp32_peak', 100)} "
            f"| {_cell(r, 'fraction_of_bf16_peak', 100)} | {corr} |"
        )
    lines.append("")
    split = result.get("sem_iteration_split_seconds")
    if split:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in split.items())
        lines.append(f"one AL iteration, cpu preset ({result['sem_data']}): {parts}")
    for key, value in result.items():
        if key.startswith("mc_ranking_"):
            lines.append(f"{key}: " + ", ".join(f"{k} {v:.3f}" for k, v in value.items()))
    if "mc_activeseg_peak_mb_by_samples" in result:
        lines.append(f"activeseg MC peak memory by T: {result['mc_activeseg_peak_mb_by_samples']}")
    lines.append("")
    for key, value in result.items():
        if key.startswith(HEADLINES) and not isinstance(value, dict | list):
            lines.append(f"{key}: {'n/a' if value is None else f'{value:.3g}'}")
    return "\n".join(lines)

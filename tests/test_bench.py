"""``activeseg bench --quick``: the plumbing of the benchmarks (tiny sizes, seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from activeseg import bench
from activeseg.cli import main

REQUIRED = (
    "mc_speedup_vs_baal_cached",
    "mc_speedup_vs_baal_default",
    "mc_fraction_of_bf16_peak",
    "train_speedup_vs_fp32_nchw",
    "sem_iteration_seconds",
)


@pytest.mark.slow
def test_quick_bench_prints_a_table_and_writes_every_required_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["complete"] is True and result["sem_data"].startswith("synthetic")
    baal = bench.have_baal()
    for key in REQUIRED:
        if key.startswith("mc_speedup_vs_baal") and not baal:
            assert result[key] is None
        else:
            assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0
    split = result["sem_iteration_split_seconds"]
    assert set(split) == {"train", "eval", "score", "test_metrics", "test_mc", "total"}
    assert split["total"] == pytest.approx(split["train"] + split["eval"] + split["score"])
    assert result["matmul_peak_gflop_per_s"]["fp32"] > 0
    methods = set(result["mc"]["cpu"])
    assert {"naive fp32 loop", "activeseg fp32"} <= methods
    assert ("baal MCCachingModule" in methods) == baal
    assert set(result["committee"]) == {
        "one member",
        "2 members, one after the other",
        "2 members, fit_members",
        "2 members, fit_members grouped",
    }
    assert result["committee_fit_members_time_vs_one_member"] > 0
    by_patch = result["train_step_seconds_by_patch_cpu_net"]
    assert set(by_patch) == {"8", "32"} and all(s > 0 for s in by_patch.values())
    assert math.isfinite(result["committee_bound_sharing_fixed_cost_vs_one_member"])
    ranking = result["mc_ranking_cpu_net"]
    assert -1 <= ranking["spearman_activeseg_vs_plain"] <= 1
    assert -1 <= ranking["spearman_noise_floor_plain_vs_plain"] <= 1
    rows = result["mc"]["cpu"]
    assert rows["naive fp32 loop"]["std_sum_correlation_with_naive"] == pytest.approx(1.0)
    assert all(-1 <= r["std_sum_correlation_with_naive"] <= 1 for r in rows.values())
    table = capsys.readouterr().out
    assert (
        "| MC, cpu net, 2 patches | activeseg fp32 |" in table
        and "train_speedup_vs_fp32_nchw" in table
    )


def test_baal_is_fed_the_same_network_with_torch_dropout() -> None:
    model = bench.make_net(3, 4)
    copy = bench.torch_dropout_copy(model)
    kinds = [type(m).__name__ for m in copy.modules()]
    assert "MCDropout" not in kinds and kinds.count("Dropout") == 2
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(copy.eval()(x), model.eval()(x))


def test_plain_augmentation_warps_image_and_mask_alike() -> None:
    rng = __import__("numpy").random.default_rng(0)
    image = torch.zeros(32, 32)
    image[8:24, 8:24] = 1.0
    img, msk = bench.plain_augment(image.numpy(), image.numpy(), rng)
    assert set(msk.ravel().tolist()) <= {0.0, 1.0}
    assert ((img > 0.5) == (msk > 0.5)).mean() > 0.97


def test_results_are_written_as_they_come_and_survive_a_failing_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A section that fails after minutes of work no longer loses the earlier numbers."""
    from activeseg.bench import measure

    monkeypatch.setattr(bench, "FULL", measure.QUICK)  # the plumbing, in seconds

    def broken(sem: str | None, sizes: measure.Sizes) -> dict[str, float]:
        raise RuntimeError("the AL iteration failed")

    monkeypatch.setattr(bench, "bench_iteration", broken)
    out = tmp_path / "bench.json"
    with pytest.raises(RuntimeError, match="AL iteration failed"):
        bench.bench(json_path=out)
    partial = json.loads(out.read_text())
    assert partial["complete"] is False
    assert partial["cpu"]["model"] and isinstance(partial["cpu"]["flags"], list)
    assert {"naive fp32 loop", "activeseg fp32"} <= set(partial["mc"]["cpu"])
    assert partial["train_speedup_vs_fp32_nchw"] > 0
    assert "sem_iteration_seconds" not in partial

"""U-Net shapes and the MC-dropout switch: MC passes differ, plain passes repeat, BatchNorm
stays frozen, the mode is restored, and the masks come from the given generator."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import Phantom, Trained, make_unet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from activeseg.model import (
    BatchNorm2d,
    BatchNorm3d,
    MCDropout,
    PointwiseConv,
    UNet,
    dropout_modules,
    fast_keep_mask,
    fold_batch_norm,
    fusion,
    inference,
    mc_dropout,
    pointwise,
    probabilities,
    seeded_dropout,
)
from activeseg.runtime import torch_generator


def batch(seed: int = 0, n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch_generator(seed))


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


@torch.no_grad()
def warmed_up(seed: int = 0, dropout: float = 0.2) -> UNet:
    """A tiny U-Net whose BatchNorm running statistics are not the initial 0 / 1."""
    model = make_unet(seed, dropout=dropout)
    model.train()
    with seeded_dropout(model, torch_generator(seed)):
        model(batch(seed + 100, n=4))
    return model


def test_unet_maps_images_to_one_logit_channel_of_the_same_size() -> None:
    model = make_unet().eval()  # training-mode dropout would need a generator
    assert model(batch(size=32)).shape == (2, 1, 32, 32)
    assert model.divisor == 4


def test_unet_with_two_output_channels_gives_softmax_probabilities() -> None:
    model = UNet(1, 2, depth=2, base_filters=4).eval()
    probs = probabilities(model(batch(size=16)))
    assert probs.shape == (2, 2, 16, 16)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 16, 16))


def test_sigmoid_for_one_channel() -> None:
    logits = torch.tensor([[[[0.0, 2.0]]]])
    torch.testing.assert_close(probabilities(logits), torch.sigmoid(logits))


@pytest.mark.parametrize("depth", [0, 1])
def test_unet_rejects_depth_below_two(depth: int) -> None:
    with pytest.raises(ValueError, match="depth must be >= 2"):
        UNet(depth=depth)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rate_outside_unit_interval_is_rejected(p: float) -> None:
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        MCDropout(p)


def test_every_pooling_level_has_dropout_and_the_stem_none() -> None:
    model = make_unet()
    assert len(dropout_modules(model)) == model.depth - 1
    assert dropout_modules(model.stem) == []


def test_forward_from_stem_equals_forward() -> None:
    model = warmed_up().eval()
    x = batch(1)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_from_stem(model.stem(x)), model(x))


def test_plain_inference_repeats_exactly() -> None:
    model = warmed_up().eval()
    x = batch(1)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_mc_passes_differ(trained: Trained, phantom: Phantom) -> None:
    model = copy.deepcopy(trained.model).eval()
    x = phantom.images[phantom.test[:2]]
    with torch.no_grad(), mc_dropout(model, torch_generator(0)):
        first, second = probabilities(model(x)), probabilities(model(x))
    assert (first - second).abs().max() > 0.05  # a trained net's MC samples disagree visibly


def test_mc_passes_with_zero_dropout_repeat() -> None:
    model = warmed_up(dropout=0.0).eval()
    x = batch(1)
    with torch.no_grad(), mc_dropout(model, torch_generator(0)):
        assert torch.equal(model(x), model(x))


def test_same_generator_seed_gives_identical_mc_outputs() -> None:
    model = warmed_up().eval()
    x = batch(1)
    outputs = []
    for seed in (5, 5, 6):
        with torch.no_grad(), mc_dropout(model, torch_generator(seed)):
            outputs.append(torch.stack([model(x), model(x)]))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


def test_mc_masks_do_not_touch_the_global_rng() -> None:
    model = warmed_up().eval()
    state = torch.random.get_rng_state()
    with torch.no_grad(), mc_dropout(model, torch_generator(0)):
        model(batch(1))
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("training", [True, False])
def test_mc_passes_leave_batchnorm_statistics_unchanged(training: bool) -> None:
    model = warmed_up()
    model.train(training)
    before = buffers(model)
    with torch.no_grad(), mc_dropout(model, torch_generator(0)):
        model(batch(1, n=4))
        model(batch(2, n=4))
    after = buffers(model)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_mc_passes_normalise_with_running_statistics() -> None:
    """An item's MC output does not depend on the other items of its batch (BatchNorm in
    training mode would normalise with the batch's statistics)."""
    model = warmed_up(dropout=0.0).train()
    x = batch(1, n=3)
    with torch.no_grad(), mc_dropout(model, torch_generator(0)):
        alone = model(x[:1])
        mixed = model(torch.cat([x[:1], 10 * x[1:]]))[:1]
    torch.testing.assert_close(alone, mixed)


@pytest.mark.parametrize("training", [True, False])
def test_mc_context_restores_the_previous_mode(training: bool) -> None:
    model = make_unet()
    model.train(training)
    with mc_dropout(model, torch_generator(0)):
        assert not model.training
        assert all(m.mc for m in dropout_modules(model))
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    assert not any(m.mc for m in dropout_modules(model))


def test_mc_context_restores_mode_and_generators_after_an_error() -> None:
    model = make_unet().train()
    own = torch_generator(1)
    for m in dropout_modules(model):
        m.generator = own
    with pytest.raises(RuntimeError, match="boom"), mc_dropout(model, torch_generator(0)):
        raise RuntimeError("boom")
    assert model.training
    assert all(m.generator is own and not m.mc for m in dropout_modules(model))


def test_plain_eval_after_mc_context_is_deterministic_again() -> None:
    model = warmed_up().eval()
    x = batch(1)
    with torch.no_grad():
        reference = model(x)
        with mc_dropout(model, torch_generator(0)):
            model(x)
        assert torch.equal(model(x), reference)


def test_training_mode_dropout_is_seeded_by_seeded_dropout() -> None:
    model = make_unet().train()
    x = batch(1)
    with torch.no_grad():
        with seeded_dropout(model, torch_generator(3)):
            first = model(x)
        with seeded_dropout(model, torch_generator(3)):
            second = model(x)
        with seeded_dropout(model, torch_generator(4)):
            third = model(x)
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


# ------------------------------------------------------------------ MC inference parts


@pytest.mark.parametrize("keep", [0.8, 0.5, 0.95])
def test_fast_masks_keep_at_the_requested_rate_and_scale_inverted(keep: float) -> None:
    x = torch.ones(20, 8, 32, 32)  # 163,840 draws: the rate's std is about 0.001
    mask = fast_keep_mask(x, keep, torch_generator(0))
    values = mask.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / keep)
    assert float((mask > 0).float().mean()) == pytest.approx(keep, abs=0.005)
    assert float(mask.mean()) == pytest.approx(1.0, abs=0.007)


def test_fast_masks_are_independent_of_the_memory_layout_and_seeded() -> None:
    x = torch.randn(3, 4, 8, 8)
    plain = fast_keep_mask(x, 0.8, torch_generator(1))
    last = fast_keep_mask(x.contiguous(memory_format=torch.channels_last), 0.8, torch_generator(1))
    assert last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, last)
    assert not torch.equal(plain, fast_keep_mask(x, 0.8, torch_generator(2)))
    cells = fast_keep_mask(torch.ones(4000, 4), 0.8, torch_generator(3)) > 0
    assert abs(float(cells[:, 3].float().mean()) - 0.8) < 0.03  # every 16-bit field is uniform


def test_cached_mc_passes_equal_full_mc_passes_with_the_same_masks() -> None:
    """stem_cache + forward_cached (first level, its pool and the top skip half computed
    once) give the logits of full forward passes of the repeated image."""
    model = warmed_up().eval()
    x = batch(3, n=1)
    with torch.no_grad(), mc_dropout(model, torch_generator(5)):
        full = model(x.expand(4, -1, -1, -1))
    with torch.no_grad(), mc_dropout(model, torch_generator(5)):
        cached = model.forward_cached(model.stem_cache(x), 4, torch.contiguous_format)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full[0], full[1])  # the passes differ: masks were applied


def test_patches_sharing_cached_passes_get_the_masks_each_gets_alone() -> None:
    """forward_cached of several images with one generator each (patch-major rows) equals
    each image's passes alone with its generator: scoring may group patches freely."""
    model = warmed_up().eval()
    x = batch(4, n=3)
    fmt = torch.contiguous_format
    with torch.no_grad(), mc_dropout(model, [torch_generator(s) for s in (7, 8, 9)]):
        together = model.forward_cached(model.stem_cache(x), 4, fmt)
    alone = []
    for i, s in enumerate((7, 8, 9)):
        with torch.no_grad(), mc_dropout(model, torch_generator(s)):
            alone.append(model.forward_cached(model.stem_cache(x[i : i + 1]), 4, fmt))
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone[0], alone[1])  # the images' passes differ


@pytest.mark.parametrize("dims", [2, 3])
def test_a_frozen_batch_norm_folds_into_the_following_1x1_convolution(dims: int) -> None:
    g = torch_generator(0)
    norm = (BatchNorm2d if dims == 2 else BatchNorm3d)(6)
    layer = (PointwiseConv(6, 3, 1) if dims == 2 else nn.Conv3d(6, 3, 1)).requires_grad_(False)
    for t in (norm.weight, norm.bias, norm.running_mean):
        t.data = torch.randn(6, generator=g)
    norm.running_var = torch.rand(6, generator=g) + 0.1
    y = torch.randn(2, 6, *([5] * dims), generator=g)
    with torch.no_grad():
        expected = layer(norm.eval()(y))
        torch.testing.assert_close(pointwise(y, *fold_batch_norm(norm, layer)), expected)


def test_dropout_with_one_generator_per_block_of_rows() -> None:
    drop = MCDropout(0.5, channelwise=True).train()
    x = torch.ones(6, 4, 3, 3)
    drop.generator = [torch_generator(1), torch_generator(2)]
    blocks = drop(x)
    for rows, seed in ((slice(0, 3), 1), (slice(3, 6), 2)):
        drop.generator = torch_generator(seed)
        assert torch.equal(blocks[rows], drop(x[rows]))
    drop.generator = [torch_generator(1)] * 4
    with pytest.raises(ValueError, match="6 rows do not split into 4"):
        drop(x)


def test_the_top_block_tail_and_output_layer_run_in_fp32_under_autocast() -> None:
    model = warmed_up().eval()
    seen: dict[str, torch.dtype] = {}
    model.head.register_forward_hook(lambda m, i, o: seen.update(head=o.dtype))
    model.dec[-1][2].register_forward_hook(lambda m, i, o: seen.update(tail=o.dtype))
    model.down[0][2][0].register_forward_hook(lambda m, i, o: seen.update(inner=o.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(batch())
    assert seen == {"inner": torch.bfloat16, "tail": torch.float32, "head": torch.float32}


@pytest.mark.parametrize(
    ("layer", "shape", "fmt"),
    [
        (BatchNorm2d, (4, 8, 16, 16), torch.channels_last),
        (BatchNorm2d, (4, 32, 8, 8), torch.channels_last),
        (BatchNorm3d, (2, 4, 8, 8, 8), torch.channels_last_3d),
    ],
)
def test_batchnorm_layout_switch_changes_neither_values_nor_gradients_nor_layout(
    layer: type[nn.Module], shape: tuple[int, ...], fmt: torch.memory_format
) -> None:
    """Narrow channels-last inputs train through the contiguous layout (faster backward);
    the result must be torch's BatchNorm in value, gradients, running statistics and
    memory format."""
    ours = layer(shape[1]).train()
    theirs = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm3d)(shape[1]).train()
    theirs.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).contiguous(memory_format=fmt)
    g = torch.randn(shape, generator=gen).contiguous(memory_format=fmt)
    outs = []
    for bn in (ours, theirs):
        xi = x.clone().requires_grad_(True)
        y = bn(xi)
        y.backward(g)
        outs.append((y, xi.grad, bn.weight.grad, bn.running_mean, bn.running_var))
        assert y.is_contiguous(memory_format=fmt)
    for a, b in zip(*outs, strict=True):  # float32 sums in another order: 1e-4, not 1e-5
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bf16", [False, True])
def test_fused_inference_computes_what_the_layers_compute(bf16: bool) -> None:
    """MC inference fuses each convolution with its ReLU (one oneDNN call on the CPU): the
    same numbers as the layers, in fp32 and under bf16 autocast (where the cast weights are
    reused until the weights change)."""
    net = UNet(1, 1, depth=3, base_filters=8).eval().to(memory_format=torch.channels_last)
    block = net.dec[-1]
    x = torch.randn(3, 16, 16, 16).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with torch.inference_mode(), autocast:
        expected, fused = block(x), inference(block, x)
    assert fused.dtype == expected.dtype
    tolerance = {"atol": 1e-2, "rtol": 1e-2} if bf16 else {"atol": 1e-6, "rtol": 1e-5}
    torch.testing.assert_close(fused, expected, **tolerance)
    with torch.no_grad():
        block[0].weight.mul_(2.0)  # a new weight version: the bf16 copy is made again
    with torch.inference_mode(), autocast:
        torch.testing.assert_close(inference(block, x), block(x), **tolerance)
    with autocast:  # with autograd on, the plain layers (differentiable) run
        assert inference(block, x.requires_grad_()).requires_grad
    x = x.detach()
    with FlopCounterMode(display=False) as counter, torch.no_grad(), autocast:
        with fusion(False):  # the counter sees only torch's own convolutions
            inference(block, x)
        unfused = counter.get_total_flops()
        inference(block, x)
    assert unfused > 0 and counter.get_total_flops() == unfused  # the fused op: not counted

"""Models as files: ``activeseg export`` of a run or a project, ``predict --model`` without
a project, ``init --model`` (round 0 is the model; later rounds fine-tune it), ONNX."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from activeseg.annotation.project import Project
from activeseg.cli import main
from activeseg.config import Config, with_overrides
from activeseg.data.images import read_image, read_mask
from activeseg.data.patches import Normalizer, tile
from activeseg.data.phantom import make_phantom
from activeseg.data.prepare import PER_IMAGE
from activeseg.data.sources import Sample
from activeseg.errors import UserError
from activeseg.learners import LearnerData, ModelLearner, restore
from activeseg.modelfiles import load_model
from activeseg.runtime import resolve
from activeseg.simulation import simulate
from activeseg.train import Labelled, evaluate


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Sample]]:
    """Three 128² phantom images (PNG, no pixel size) and the masks of two of them."""
    root = tmp_path_factory.mktemp("images")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    samples = {
        f"im{i}": dataclasses.replace(s, name=f"im{i}")
        for i, s in enumerate(make_phantom(n_images=3, size=128, seed=21, hard_fraction=0.0))
    }
    for name, s in samples.items():
        Image.fromarray(np.round(s.image * 255).astype(np.uint8)).save(
            root / "images" / f"{name}.png"
        )
        if name != "im1":
            Image.fromarray(s.mask * 255).save(root / "masks" / f"{name}_seg-myelin-manual.png")
    return root / "images", root / "masks", samples


def test_export_a_run_and_predict_without_a_project(
    tiny_run: Path, tmp_path: Path, images: tuple[Path, Path, dict[str, Sample]]
) -> None:
    out = tmp_path / "model.pt"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    payload = torch.load(out, weights_only=True)
    assert payload["classes"] == ["background", "myelin"]
    assert payload["exported_from"] == {
        "run": tiny_run.resolve().name,
        "strategy": "random",  # the run's first strategy, by default
        "repetition": 0,
        "iteration": 2,
        "iterations": 2,
    }
    saved = torch.load(tiny_run / "checkpoints" / "random-rep0.pt", weights_only=True)
    assert payload["normalizer"] == saved["normalizer"] and saved["normalizer"] == PER_IMAGE
    for a, b in zip(payload["models"][0].values(), saved["models"][0].values(), strict=True):
        assert torch.equal(a, b)
    assert main(["export", str(tiny_run), "--out", str(out), "--strategy", "std_edt",
                 "--repetition", "1"]) == 0  # fmt: skip
    assert torch.load(out, weights_only=True)["exported_from"]["strategy"] == "std_edt"
    assert main(["export", str(tiny_run), "--out", str(out), "--strategy", "bald"]) == 2

    folder, _, samples = images
    window = np.round(samples["im1"].image[:64, :64] * 255).astype(np.uint8)  # one window
    Image.fromarray(window).save(tmp_path / "w.png")
    Image.fromarray(np.round(samples["im1"].image[:90, :100] * 255).astype(np.uint8)).save(
        tmp_path / "odd.png"
    )
    pred = tmp_path / "pred"
    files = [str(tmp_path / "w.png"), str(tmp_path / "odd.png")]
    assert main(["predict", "--model", str(out), *files, "--out", str(pred), "--overlap", "0",
                 "--uncertainty", "--quiet"]) == 0  # fmt: skip
    assert read_mask(pred / "odd_seg-myelin.png").shape == (90, 100)  # the image's own size
    assert (pred / "odd_uncertainty.tif").is_file()
    # one window, no blending: the mask is the file's network on the image standardised by
    # its own mean and std, thresholded
    model = load_model(out, device="cpu")
    x = Normalizer.fit(window / 255.0)(window / 255.0)
    expected = model.learner.probabilities(torch.from_numpy(x)[None, None])[0, 0] >= 0.5
    np.testing.assert_array_equal(read_mask(pred / "w_seg-myelin.png"), expected.numpy())
    assert main(["predict", str(tmp_path / "w.png"), "--out", str(pred)]) == 2  # no project


def test_a_model_standardises_each_image_by_its_own_statistics(
    tiny_run: Path, tmp_path: Path
) -> None:
    checkpoint = tiny_run / "checkpoints" / "random-rep0.pt"
    model = load_model(checkpoint)
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    np.testing.assert_allclose(model.normalize(image), Normalizer.fit(image)(image))
    np.testing.assert_allclose(model.normalize(image * 0.5 + 0.2), model.normalize(image),
                               atol=1e-5)  # fmt: skip
    # a model file from an earlier activeseg, trained with one global normaliser, is refused
    payload = torch.load(checkpoint, weights_only=True)
    old = tmp_path / "old.pt"
    torch.save({**payload, "normalizer": {"mode": "global", "mean": 0.4, "std": 0.2}}, old)
    with pytest.raises(UserError, match="old.pt: .*one global mean and std.*retrain"):
        load_model(old)


def _held_out_dice(model_file: Path, image: Path, sample: Sample, config: Config) -> float:
    """The Dice of the model file on the patches of ``image`` (``sample``'s mask), built here
    by hand: the image standardised by its own mean and std, tiled into its windows."""
    payload = torch.load(model_file, weights_only=True)
    pixels = read_image(image)
    normalised = dataclasses.replace(sample, image=Normalizer.fit(pixels)(pixels))
    patches = tile([normalised], config.data.patch_size)
    empty = torch.zeros((0, 1, 1, 1))
    runtime = resolve("cpu", "fp32")
    learner = restore(payload, LearnerData(empty, Labelled(empty, empty)), runtime)
    masks = torch.from_numpy(patches.masks).float()
    return evaluate(learner.model, torch.from_numpy(patches.images), masks, runtime)["dice"]


def test_a_project_starts_from_an_exported_model_and_fine_tunes_it(
    tiny_run: Path,
    tiny_config: Config,
    tmp_path: Path,
    images: tuple[Path, Path, dict[str, Sample]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, masks, samples = images
    model = tmp_path / "model.pt"
    assert main(["export", str(tiny_run), "--out", str(model)]) == 0
    held = tmp_path / "held"
    held.mkdir()
    (masks / "im2_seg-myelin-manual.png").rename(held / "im2_seg-myelin-manual.png")
    try:
        project = tmp_path / "proj"
        assert main(["init", str(project), "--images", str(folder), "--masks", str(held),
                     "--holdout", "im2", "--model", str(model), "--preset", "demo",
                     "--set", "train.warm_epochs=3", "--set", "train.device=cpu",
                     "--set", "train.precision=fp32"]) == 0  # fmt: skip
    finally:
        (held / "im2_seg-myelin-manual.png").rename(masks / "im2_seg-myelin-manual.png")
    p = Project(project)
    (round0,) = p.state().rounds
    assert (round0.round, round0.n_patches, round0.model) == (0, 0, "model.pt")
    assert round0.val_dice == _held_out_dice(
        model, folder / "im2.png", samples["im2"], tiny_config
    )  # exactly
    assert p.config.model == tiny_config.model and p.config.train.init == "warm"
    assert p.settings.normalizer == torch.load(model, weights_only=True)["normalizer"]
    for info in p.settings.images:  # each image its own statistics (no resampling here)
        pixels = read_image(folder / f"{info.name}.png")
        assert info.mean == pytest.approx(float(pixels.mean()), rel=1e-5)

    assert main(["query", str(project), "-k", "2", "--quiet"]) == 0  # with round 0's model
    assert len(p.state().rounds) == 1 and len(p.state().pending) == 2
    for info in sorted((project / "to_annotate").glob("q*.json")):
        q = json.loads(info.read_text())
        r = q["region"]
        crop = samples[r["image"]].mask[r["row"] : r["row"] + r["height"], r["col"] :][
            :, : r["width"]
        ]
        Image.fromarray(crop * 255).save(project / "to_annotate" / q["mask_file"])
    assert main(["import", str(project)]) == 0
    started: list[dict[str, torch.Tensor] | None] = []
    original = ModelLearner.start
    monkeypatch.setattr(
        ModelLearner, "start", lambda self, w=None: (started.append(w), original(self, w))[1]
    )
    assert main(["train", str(project), "--quiet"]) == 0
    round1 = p.state().rounds[-1]
    assert round1.round == 1 and round1.n_regions == 2 and round1.val_dice is not None
    adopted = torch.load(model, weights_only=True)["models"][0]
    assert started and started[0] is not None  # fine-tuned the model, not from scratch
    assert all(torch.equal(started[0][k], adopted[k]) for k in adopted)

    exported = tmp_path / "project.pt"
    assert main(["export", str(project), "--out", str(exported)]) == 0
    assert torch.load(exported, weights_only=True)["exported_from"]["round"] == 1
    assert main(["init", str(tmp_path / "bad"), "--images", str(folder), "--model", str(model),
                 "--set", "model.depth=2"]) == 2  # fmt: skip
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("labels", ["", "axon,myelin"])
def test_onnx_gives_the_same_probabilities(
    tmp_path: Path, labels: str, tiny_config: Config
) -> None:
    ort = pytest.importorskip("onnxruntime", reason="pip install 'activeseg[onnx]' onnxruntime")
    pytest.importorskip("onnxscript", reason="pip install 'activeseg[onnx]'")
    config = with_overrides(
        tiny_config,
        {"loop.strategies": "random", "loop.repetitions": 1, "loop.iterations": 0,
         "loop.upper_bound": False, **({"data.labels": labels} if labels else {})},
    )  # fmt: skip
    run = simulate(config, tmp_path / "run", progress=False, log=lambda line: None)
    model_file = tmp_path / "model.pt"
    assert (
        main(["export", str(run), "--out", str(model_file), "--onnx", str(tmp_path / "m.onnx")])
        == 0
    )
    model = load_model(model_file, device="cpu")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["activeseg"])
    assert meta["classes"] == ["background", *config.data.class_names]
    assert meta["normalizer"] == dict(model.normalizer) and meta["window"] == 64
    for shape in [(2, 1, 64, 64), (1, 1, 96, 128)]:  # any multiple of 4 (depth 3)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        want = model.learner.probabilities(x).numpy()
        got = session.run(["probabilities"], {"image": x.numpy()})[0]
        assert got.shape == want.shape == (shape[0], 3 if labels else 1, *shape[2:])
        np.testing.assert_allclose(got, want, atol=2e-5)

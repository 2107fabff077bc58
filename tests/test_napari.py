"""The napari dock widget, headless (``QT_QPA_PLATFORM=offscreen``): create a project from
open layers, open one, show a region, Submit writes and imports the mask, Retrain asks for
new regions in a worker, Segment adds the labels and a float uncertainty layer; binary and
axon + myelin."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("napari", reason="napari is not installed: pip install 'activeseg[napari]'")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed: pip install 'activeseg[test]'")

from activeseg.annotation.create import init_project  # noqa: E402
from activeseg.data.images import read_mask  # noqa: E402
from activeseg.data.phantom import make_phantom  # noqa: E402
from activeseg.napari._widget import (  # noqa: E402
    HEATMAP,
    IMAGE,
    MASK,
    SEGMENTATION,
    SEGMENTATION_STD,
    AnnotationWidget,
)

TINY = {
    "data.patch_size": 32,
    "model.depth": 3,
    "model.base_filters": 4,
    "train.epochs": 10,
    "train.batch_size": 4,
    "train.validate_every": 5,
    "train.device": "cpu",
    "train.precision": "fp32",
    "scoring.mc_samples": 2,
    "scoring.mc_batch": 2,
}


@pytest.fixture(autouse=True)
def _gl_or_nominal_limits() -> None:
    """The offscreen Qt platform has no OpenGL context here. napari asks OpenGL for its
    texture limits and extensions when it adds a layer (nothing is drawn in this test), so
    without OpenGL those two cached queries are answered with nominal values; the viewer,
    its layers and the widget stay real."""
    import napari._vispy.utils.gl as gl_utils

    try:
        gl_utils.get_max_texture_sizes()
        gl_utils.get_gl_extensions()
    except Exception:
        gl_utils.get_max_texture_sizes.cache_clear()
        gl_utils.get_gl_extensions.cache_clear()
        nominal = lambda p: "" if p == gl_utils.gl.GL_EXTENSIONS else 2048  # noqa: E731
        with (
            mock.patch.object(gl_utils, "_opengl_context"),
            mock.patch.object(gl_utils.gl, "glGetParameter", side_effect=nominal),
        ):
            gl_utils.get_max_texture_sizes()
            gl_utils.get_gl_extensions()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A tiny phantom project: one labelled 64² image, two unlabelled, 2 regions queried."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for s in make_phantom(n_images=3, size=64, seed=1, hard_fraction=0.0):
        Image.fromarray(np.round(s.image * 255).astype(np.uint8)).save(images / f"{s.name}.png")
        if s.name == "phantom-000":
            Image.fromarray(s.mask * 255).save(masks / f"{s.name}_seg-myelin-manual.png")
    p = init_project(tmp_path / "proj", images, masks=masks, preset_name="demo", overrides=TINY)
    p.query(2)
    return p.root


def test_submit_writes_the_mask_and_retrain_asks_for_more(
    make_napari_viewer, qtbot, project: Path
) -> None:
    viewer = make_napari_viewer()
    widget = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="activeseg")
    widget.open_project(project)
    first = widget.current
    assert first is not None and first.id.startswith("q0001-")
    assert {IMAGE, HEATMAP, MASK} <= {layer.name for layer in viewer.layers}
    mask_layer = viewer.layers[MASK]
    assert mask_layer.data.shape == (32, 32)
    mask_layer.data = np.zeros((32, 32), np.uint8)
    mask_layer.data[4:12, 6:20] = 1  # the annotator's correction

    qtbot.mouseClick(widget.submit_button, _left())

    stored = project / "annotations" / f"{first.id}_seg-myelin-manual.png"
    expected = np.zeros((32, 32), np.uint8)
    expected[4:12, 6:20] = 1
    assert np.array_equal(read_mask(stored), expected)
    assert widget.current is not None and widget.current.id.startswith("q0002-")

    qtbot.mouseClick(widget.submit_button, _left())  # accept the second pre-annotation
    assert widget.current is None and not widget.submit_button.isEnabled()

    widget.k_box.setValue(3)
    qtbot.mouseClick(widget.retrain_button, _left())
    assert not widget.retrain_button.isEnabled()  # busy while the worker runs
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.current is not None and widget.current.id.startswith("q0003-")
    assert widget.progress.value() == widget.progress.maximum()
    assert widget.retrain_button.isEnabled()


def _left():  # type: ignore[no-untyped-def]
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton


def test_the_manifest_registers_the_widget() -> None:
    from importlib.resources import files

    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(str(files("activeseg.napari") / "napari.yaml"))
    assert manifest.name == "activeseg"
    (widget,) = manifest.contributions.widgets or []
    (command,) = [c for c in manifest.contributions.commands or [] if c.id == widget.command]
    assert command.python_name is not None
    module, _, name = command.python_name.partition(":")
    assert getattr(__import__(module, fromlist=[name]), name) is AnnotationWidget


def _phantom_layers(viewer, labels: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    samples = make_phantom(n_images=3, size=64, seed=1, hard_fraction=0.0, labels=labels)
    for s in samples:
        viewer.add_image(np.round(s.image * 255).astype(np.uint8), name=s.name)
    viewer.add_labels(samples[0].mask, name="phantom-000 mask")
    return samples


CREATE = {**{k: str(v) for k, v in TINY.items()}, "data.pixel_size": "none", "train.epochs": "30"}


@pytest.mark.parametrize("labels", [(), ("axon", "myelin")])
def test_create_submit_retrain_and_segment_from_open_layers(
    make_napari_viewer, qtbot, tmp_path: Path, labels: tuple[str, ...]
) -> None:
    viewer = make_napari_viewer()
    samples = _phantom_layers(viewer, labels)
    widget = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="activeseg")
    overrides = {**CREATE, **({"data.labels": ",".join(labels)} if labels else {})}
    widget.create_project(tmp_path / "proj", overrides)
    project = widget.project
    assert project is not None and project.root == tmp_path / "proj"
    assert [i.name for i in project.settings.images] == [s.name for s in samples]
    (annotation,) = project.state().annotations  # the mask layer of phantom-000
    np.testing.assert_array_equal(project.read_annotation(annotation), samples[0].mask)

    widget.k_box.setValue(2)
    qtbot.mouseClick(widget.retrain_button, _left())  # trains, asks for 2 regions
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.current is not None
    heat = viewer.layers[HEATMAP]
    assert heat.data.dtype == np.float32 and heat.data.shape == (32, 32)  # a float std map
    mask_layer = viewer.layers[MASK]
    corrected = np.zeros((32, 32), np.uint8)
    corrected[2:10, 3:30] = len(labels) or 1  # myelin: label 2 with axon + myelin
    corrected[20:30, 5:9] = 1
    mask_layer.data = corrected
    first = widget.current.id
    qtbot.mouseClick(widget.submit_button, _left())
    stored = next(a for a in project.state().annotations if a.id == first)
    np.testing.assert_array_equal(project.read_annotation(stored), corrected)

    viewer.layers.selection.active = viewer.layers["phantom-002"]
    qtbot.mouseClick(widget.segment_button, _left())
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    segmentation, std = viewer.layers[SEGMENTATION], viewer.layers[SEGMENTATION_STD]
    assert segmentation.data.shape == std.data.shape == (64, 64)
    assert set(np.unique(segmentation.data)) <= set(range(len(labels) + 2 if labels else 2))
    assert std.data.dtype == np.float32 and std.data.max() > 0
    truth = samples[2].mask
    for k in range(1, (len(labels) or 1) + 1):
        pred, want = segmentation.data == k, truth == k
        assert 2 * (pred & want).sum() / (pred.sum() + want.sum()) > 0.4, k

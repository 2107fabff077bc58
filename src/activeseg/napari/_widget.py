"""The annotation dock widget: create or open a project, correct the queried regions,
retrain, segment whole images.

**New project**: the open Image layers become the project's images (a layer's scale, when
set, is its pixel size in µm), a Labels layer named ``<image> mask`` the whole-image mask of
that image (label 1 = myelin, or with ``data.labels=axon,myelin`` 1 = axon and 2 = myelin);
settings as ``KEY=VALUE`` pairs, as ``--set`` takes them.

Layers it manages for a region (replaced for each): ``activeseg image`` (the crop),
``activeseg uncertainty`` (the MC std, float32 with a colour map: threshold it with the
contrast limits) and ``activeseg mask`` (Labels: the pre-annotation, one layer for all
classes). **Submit** saves the mask as the project's mask files, imports it and shows the
next pending region. **Retrain** runs a round (train on everything annotated, then query
``k`` new regions) in a background thread, so the viewer stays responsive; the progress bar
shows its stage. **Segment** runs the project's model on the selected Image layer (in the
background) and adds ``activeseg segmentation`` (Labels) and ``activeseg segmentation
uncertainty`` (the MC std, float32) on top of it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from activeseg.annotation import masks
from activeseg.annotation.project import Project
from activeseg.annotation.state import DEFAULT_K, HEATMAP_SUFFIX, Query
from activeseg.config import parse_assignments
from activeseg.data.images import as_image, read_image
from activeseg.errors import UserError

if TYPE_CHECKING:
    import napari

IMAGE, HEATMAP, MASK = "activeseg image", "activeseg uncertainty", "activeseg mask"
SEGMENTATION = "activeseg segmentation"
SEGMENTATION_STD = "activeseg segmentation uncertainty"
MASK_LAYER = " mask"
"""A Labels layer named ``<image layer name> mask`` is that image's mask at creation."""
STAGES = ("training", "scoring candidate regions", "writing regions")


class _Signals(QObject):
    stage = Signal(int, str)  # emitted from the worker thread, received in the GUI thread


class AnnotationWidget(QWidget):
    """Dock widget of the ``activeseg`` napari plugin (see the module docstring)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.project: Project | None = None
        self.current: Query | None = None
        self.worker: Any = None
        self._signals = _Signals()
        self._signals.stage.connect(self._on_stage)

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("project folder")
        browse = QPushButton("Open…")
        browse.clicked.connect(self._browse)
        self.path_edit.returnPressed.connect(lambda: self.open_project(self.path_edit.text()))
        self.settings_edit = QLineEdit()
        self.settings_edit.setPlaceholderText("settings of a new project: KEY=VALUE ...")
        self.create_button = QPushButton("New project from the open images")
        self.create_button.clicked.connect(lambda: self.create_project(self.path_edit.text()))
        self.info = QLabel("open a project made with `activeseg init`, or create one")
        self.info.setWordWrap(True)
        self.submit_button = QPushButton("Submit")
        self.submit_button.clicked.connect(self.submit)
        self.k_box = QSpinBox()
        self.k_box.setRange(1, 100)
        self.k_box.setValue(DEFAULT_K)
        self.k_box.setPrefix("k = ")
        self.retrain_button = QPushButton("Retrain")
        self.retrain_button.clicked.connect(self.retrain)
        self.segment_button = QPushButton("Segment the selected image")
        self.segment_button.clicked.connect(lambda: self.segment())
        self.progress = QProgressBar()
        self.progress.setRange(0, len(STAGES))
        self.progress.setValue(0)
        self.progress.setFormat("idle")

        top = QHBoxLayout()
        top.addWidget(self.path_edit)
        top.addWidget(browse)
        bottom = QHBoxLayout()
        bottom.addWidget(self.k_box)
        bottom.addWidget(self.retrain_button)
        layout = QVBoxLayout(self)
        items = (top, self.settings_edit, self.create_button, self.info, self.submit_button)
        for item in (*items, bottom, self.segment_button, self.progress):
            layout.addLayout(item) if isinstance(item, QHBoxLayout) else layout.addWidget(item)
        layout.addStretch()
        self._enable(False)

    # ---- project and regions -----------------------------------------------------------
    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "activeseg project")
        if folder:
            self.open_project(folder)

    def open_project(self, path: str | Path) -> None:
        """Open the project at ``path`` and show its first pending region."""
        try:
            self.project = Project(Path(path))
        except UserError as exc:
            self._say(str(exc))
            return
        self.path_edit.setText(str(path))
        self.show_next()

    def create_project(self, path: str | Path, overrides: dict[str, str] | None = None) -> None:
        """Create the project ``path`` from the open Image layers (and their ``<name> mask``
        Labels layers) with the settings of the settings box (or ``overrides``), then open
        it."""
        from activeseg.annotation.create import init_project

        try:
            sets = (
                overrides
                if overrides is not None
                else parse_assignments(self.settings_edit.text().split())
            )
            with tempfile.TemporaryDirectory() as tmp:
                self._write_layers(Path(tmp), sets)
                init_project(
                    Path(path),
                    Path(tmp) / "images",
                    masks=Path(tmp) / "masks" if any((Path(tmp) / "masks").iterdir()) else None,
                    overrides=sets,
                )
        except UserError as exc:
            self._say(str(exc))
            return
        self.open_project(path)

    def _write_layers(self, folder: Path, overrides: dict[str, str]) -> None:
        """The open Image layers as ``folder/images/<name>.ome.tif`` (pixel size from the
        layer's scale) and their mask layers as per-class mask files in ``folder/masks``."""
        from activeseg.config import with_overrides
        from activeseg.presets import preset

        data = with_overrides(preset("cpu"), overrides).data
        names = masks.MaskNames.of(data.labels)
        (folder / "images").mkdir()
        (folder / "masks").mkdir()
        layers = [
            layer
            for layer in self.viewer.layers
            if type(layer).__name__ == "Image" and not layer.name.startswith("activeseg ")
        ]
        if not layers:
            raise UserError("no image is open: open your images in napari first")
        for layer in layers:
            scale = float(layer.scale[-1])
            meta = {"PhysicalSizeX": scale, "PhysicalSizeY": scale} if scale != 1 else {}
            image = np.asarray(layer.data)
            tifffile.imwrite(folder / "images" / f"{layer.name}.ome.tif", image, metadata=meta)
            label_name = f"{layer.name}{MASK_LAYER}"
            if label_name in self.viewer.layers:
                labels = np.asarray(self.viewer.layers[label_name].data)
                masks.write_correction(folder / "masks", layer.name, labels, names)

    def show_next(self) -> None:
        """Show the first pending region (or say that none is left)."""
        assert self.project is not None
        pending = self.project.state().pending
        self._enable(True)
        if not pending:
            self.current = None
            self.submit_button.setEnabled(False)
            self._say("no region waits for annotation: press Retrain to ask for more")
            return
        self.show_query(pending[0], len(pending))

    def show_query(self, query: Query, n_pending: int = 1) -> None:
        assert self.project is not None
        folder = self.project.to_annotate
        crop = read_image(folder / f"{query.id}.png")
        pred = masks.read_prediction(folder, query.id, self.project.names)
        for name in (IMAGE, HEATMAP, MASK):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.viewer.add_image(crop, name=IMAGE, colormap="gray")
        std = masks.read_uncertainty(folder, query.id)
        if std is not None:
            self.viewer.add_image(
                std, name=HEATMAP, colormap="inferno", blending="additive", opacity=0.6,
                contrast_limits=(0.0, max(float(std.max()), 1e-6)),
            )  # fmt: skip
        elif (folder / f"{query.id}{HEATMAP_SUFFIX}.png").is_file():  # projects of before
            overlay = _read_rgb(folder / f"{query.id}{HEATMAP_SUFFIX}.png")
            self.viewer.add_image(overlay, name=HEATMAP, rgb=True, opacity=0.5)
        pred = pred if pred is not None else np.zeros(crop.shape, np.uint8)
        labels = self.viewer.add_labels(pred.astype(np.uint8), name=MASK, opacity=0.5)
        labels.selected_label = 1
        self.viewer.layers.selection.active = labels
        self.viewer.reset_view()
        self.current = query
        r = query.region
        self._say(
            f"{query.id} ({n_pending} waiting): {r.image}, rows {r.row}–{r.row + r.height}, "
            f"cols {r.col}–{r.col + r.width}; score {query.score:.3g}. Correct the mask "
            f"({self._classes()}), then Submit."
        )

    def _classes(self) -> str:
        assert self.project is not None
        names = self.project.config.data.class_names
        return ", ".join(f"label {k} = {name}" for k, name in enumerate(names, start=1))

    def submit(self) -> None:
        """Save the mask layer as the current region's annotation, import it, go on."""
        if self.project is None or self.current is None:
            return
        data = np.asarray(self.viewer.layers[MASK].data)
        labels = np.where(data < self.project.classes, data, 0).astype(np.uint8)
        masks.write_correction(
            self.project.to_annotate, self.current.id, labels, self.project.names
        )
        result = self.project.import_masks()
        if result.rejected:
            self._say("; ".join(reason for _, reason in result.rejected))
            return
        self.show_next()

    # ---- work in the background ---------------------------------------------------------
    def retrain(self) -> None:
        """Train on everything annotated and query ``k`` new regions, in a worker thread."""
        if self.project is None or self.worker is not None:
            return
        project, k, signals = self.project, self.k_box.value(), self._signals

        def work() -> list[Query]:
            return project.query(k, on_stage=lambda i: signals.stage.emit(i, STAGES[i]))

        self.progress.setValue(0)
        self._start(work, self._retrained)

    def segment(self, layer: Any = None) -> None:
        """Segment ``layer`` (default: the selected Image layer) with the project's model
        in a worker thread; the result layers appear when it is done."""
        if self.project is None or self.worker is not None:
            return
        layer = layer if layer is not None else self.viewer.layers.selection.active
        if layer is None or type(layer).__name__ != "Image" or layer.name.startswith("activeseg"):
            self._say("select one of your Image layers to segment")
            return
        project, name, scale = self.project, layer.name, tuple(layer.scale)
        image = as_image(np.asarray(layer.data), name)

        def work() -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
            labels, std = segment_image(project, image, name, scale[-1])
            return labels, std, scale

        self._say(f"segmenting {name}…")
        self.progress.setFormat("segmenting…")
        self._start(work, self._segmented)

    def _start(self, work: Any, done: Any) -> None:
        from napari.qt.threading import create_worker

        self._enable(False)
        self.worker = create_worker(work)
        self.worker.returned.connect(done)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def _on_stage(self, index: int, text: str) -> None:
        self.progress.setValue(index)
        self.progress.setFormat(f"{text}…")

    def _retrained(self, queries: list[Query]) -> None:
        self.progress.setValue(len(STAGES))
        self.progress.setFormat(f"asked for {len(queries)} new regions")
        self.show_next()

    def _segmented(self, result: tuple[np.ndarray, np.ndarray, tuple[float, ...]]) -> None:
        labels, std, scale = result
        for name in (SEGMENTATION, SEGMENTATION_STD):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.viewer.add_labels(labels, name=SEGMENTATION, scale=scale, opacity=0.5)
        self.viewer.add_image(
            std, name=SEGMENTATION_STD, scale=scale, colormap="inferno", blending="additive",
            contrast_limits=(0.0, max(float(std.max()), 1e-6)), visible=False,
        )  # fmt: skip
        self.progress.setFormat("segmented")
        self._say(f"segmented ({self._classes()}); the std layer is hidden: show it to see it")

    def _failed(self, exc: Exception) -> None:
        self.progress.setFormat("failed")
        self._say(f"failed: {exc}")

    def _finished(self) -> None:
        self.worker = None
        self._enable(True)
        self.submit_button.setEnabled(self.current is not None)

    # ---- helpers ------------------------------------------------------------------------
    def _enable(self, on: bool) -> None:
        for button in (self.submit_button, self.retrain_button, self.segment_button):
            button.setEnabled(on)

    def _say(self, text: str) -> None:
        self.info.setText(text)


def segment_image(
    project: Project, image: np.ndarray, name: str, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Labels uint8 ``[H, W]`` and MC std float32 ``[H, W]`` of ``image`` (``[H, W]`` in
    [0, 1]) by the project's model; pixel size: ``scale`` µm unless 1 (napari's default),
    else the project's image ``name``'s or the project's common one."""
    import torch

    from activeseg.annotation.predict import Window, pixel_size_of, segment_file
    from activeseg.data.sources import ImageFile
    from activeseg.model import predicted_labels
    from activeseg.runtime import derive_seed

    model, cfg = project.segmenter(), project.config
    known = {i.name: i.pixel_size for i in project.settings.images}
    given = None if scale == 1 else float(scale)
    size = pixel_size_of(ImageFile(name, Path(name), given), None, known, cfg.data.pixel_size)
    window = Window(
        cfg.data.patch_size, uncertainty=True, seed=derive_seed(cfg.loop.seed, "napari")
    )
    probs, std = segment_file(model, image, size, window)
    labels = predicted_labels(torch.from_numpy(probs)[None], cfg.scoring.threshold)[0]
    assert std is not None
    return labels.numpy().astype(np.uint8), std.astype(np.float32)


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))

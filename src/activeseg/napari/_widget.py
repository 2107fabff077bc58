"""The annotation dock widget: open a project, correct the queried regions, retrain.

Layers it manages (replaced for each region): ``activeseg image`` (the crop), ``activeseg
uncertainty`` (the heatmap overlay, half transparent, toggle it to see the crop) and
``activeseg mask`` (Labels, the model's pre-annotation: paint label 1 for myelin, erase to
0). **Submit** saves the mask as ``<id>_seg-myelin-manual.png`` in ``to_annotate/``, imports
it into the project and shows the next pending region. **Retrain** runs a round (train on
everything annotated, then query ``k`` new regions) in a background thread, so the viewer
stays responsive; the progress bar shows its stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
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

from activeseg.annotation.project import Project
from activeseg.annotation.state import DEFAULT_K, HEATMAP_SUFFIX, PRED_SUFFIX, Query
from activeseg.data.images import read_image, read_mask, write_mask_png
from activeseg.errors import UserError

if TYPE_CHECKING:
    import napari

IMAGE, HEATMAP, MASK = "activeseg image", "activeseg uncertainty", "activeseg mask"
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
        self.info = QLabel("open a project made with `activeseg init`")
        self.info.setWordWrap(True)
        self.submit_button = QPushButton("Submit")
        self.submit_button.clicked.connect(self.submit)
        self.k_box = QSpinBox()
        self.k_box.setRange(1, 100)
        self.k_box.setValue(DEFAULT_K)
        self.k_box.setPrefix("k = ")
        self.retrain_button = QPushButton("Retrain")
        self.retrain_button.clicked.connect(self.retrain)
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
        for item in (top, self.info, self.submit_button, bottom, self.progress):
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
        pred_path = folder / f"{query.id}{PRED_SUFFIX}.png"
        pred = read_mask(pred_path) if pred_path.is_file() else np.zeros(crop.shape, np.uint8)
        for name in (IMAGE, HEATMAP, MASK):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.viewer.add_image(crop, name=IMAGE, colormap="gray")
        heatmap = folder / f"{query.id}{HEATMAP_SUFFIX}.png"
        if heatmap.is_file():
            overlay = np.asarray(_read_rgb(heatmap))
            self.viewer.add_image(overlay, name=HEATMAP, rgb=True, opacity=0.5)
        labels = self.viewer.add_labels(pred.astype(np.uint8), name=MASK, opacity=0.5)
        labels.selected_label = 1
        self.viewer.layers.selection.active = labels
        self.viewer.reset_view()
        self.current = query
        r = query.region
        self._say(
            f"{query.id} ({n_pending} waiting): {r.image}, rows {r.row}–{r.row + r.height}, "
            f"cols {r.col}–{r.col + r.width}; score {query.score:.3g}. Correct the mask "
            "(label 1 = myelin), then Submit."
        )

    def submit(self) -> None:
        """Save the mask layer as the current region's annotation, import it, go on."""
        if self.project is None or self.current is None:
            return
        data = np.asarray(self.viewer.layers[MASK].data)
        suffix = self.project.settings.mask_suffix
        path = self.project.to_annotate / f"{self.current.id}{suffix}.png"
        write_mask_png(path, (data > 0).astype(np.uint8))
        result = self.project.import_masks()
        if result.rejected:
            self._say("; ".join(reason for _, reason in result.rejected))
            return
        self.show_next()

    # ---- retraining in the background ----------------------------------------------------
    def retrain(self) -> None:
        """Train on everything annotated and query ``k`` new regions, in a worker thread."""
        from napari.qt.threading import create_worker

        if self.project is None or self.worker is not None:
            return
        project, k, signals = self.project, self.k_box.value(), self._signals

        def work() -> list[Query]:
            return project.query(k, on_stage=lambda i: signals.stage.emit(i, STAGES[i]))

        self._enable(False)
        self.progress.setValue(0)
        self.worker = create_worker(work)
        self.worker.returned.connect(self._retrained)
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

    def _failed(self, exc: Exception) -> None:
        self.progress.setFormat("failed")
        self._say(f"retraining failed: {exc}")

    def _finished(self) -> None:
        self.worker = None
        self._enable(True)
        self.submit_button.setEnabled(self.current is not None)

    # ---- helpers ------------------------------------------------------------------------
    def _enable(self, on: bool) -> None:
        for button in (self.submit_button, self.retrain_button):
            button.setEnabled(on)

    def _say(self, text: str) -> None:
        self.info.setText(text)


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))

"""Screenshot of the napari annotation widget on an activeseg project (for docs/annotation.md).

    python docs/napari_screenshot.py PROJECT docs/napari-widget.png

Renders the whole viewer where OpenGL works (e.g. under ``xvfb-run`` with Mesa); on a
platform without OpenGL (e.g. headless, ``QT_QPA_PLATFORM=offscreen``) it saves the dock
widget alone (``QWidget.grab``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
import numpy as np
from PIL import Image

from activeseg.napari._widget import AnnotationWidget


def main(project: Path, target: Path) -> None:
    viewer = napari.Viewer(show=True)
    widget = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="activeseg", area="right")
    viewer.window._qt_window.resize(1200, 720)
    widget.open_project(project)
    napari.qt.get_qapp().processEvents()
    viewer.reset_view()
    napari.qt.get_qapp().processEvents()
    try:
        image = viewer.screenshot(canvas_only=False, flash=False)
        Image.fromarray(np.asarray(image)).save(target)
    except Exception as exc:  # no OpenGL: the widget alone
        print(f"no OpenGL ({exc!r}); saving the widget alone", file=sys.stderr)
        widget.grab().save(str(target))
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

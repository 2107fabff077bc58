"""activeseg: deep active learning for biomedical image segmentation.

The Python API (importing ``activeseg`` is light; each name loads its module on first use):

* :func:`simulate` — a simulated study on labelled data, returns the run (:class:`Run`);
* :class:`Project`, :func:`init_project` — active learning on your own images;
* :func:`register_strategy` — your acquisition function by name (also in ``--workers`` /
  Ray workers; packages can offer strategies through the ``activeseg.strategies`` entry
  points); :class:`Scores`, :class:`PoolScores`, :class:`McStats` — what a strategy sees;
* :class:`ModelLearner` — training and MC-dropout scoring of any ``torch.nn.Module`` with
  dropout (:func:`patch_dropout` turns its ``nn.Dropout`` into seeded MC dropout);
* :class:`Config`, :func:`preset`, :func:`write_report`, :func:`load_run`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "simulate": "activeseg.api",
    "Run": "activeseg.report.records",
    "load_run": "activeseg.report.records",
    "write_report": "activeseg.report.build",
    "Project": "activeseg.annotation.project",
    "init_project": "activeseg.annotation.create",
    "register_strategy": "activeseg.acquisition.registry",
    "get_strategy": "activeseg.acquisition.registry",
    "Scores": "activeseg.acquisition.strategies",
    "PoolScores": "activeseg.acquisition.strategies",
    "McStats": "activeseg.scoring",
    "ModelLearner": "activeseg.learners",
    "patch_dropout": "activeseg.model",
    "Config": "activeseg.config",
    "preset": "activeseg.presets",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'activeseg' has no attribute {name!r}")

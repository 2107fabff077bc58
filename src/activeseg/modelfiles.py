"""Models as files: export a trained model, load it anywhere, and export it to ONNX.

``activeseg export RUN_DIR|PROJECT --out model.pt`` writes the checkpoint format of
:mod:`activeseg.learners` (weights, config, normaliser, committee) plus ``classes`` (the
label names, background first) and ``exported_from`` (what it is the model of). From a
simulation's run directory it takes the final model of one strategy and repetition
(``checkpoints/<strategy>-rep<r>.pt``: the latest finished iteration; default the first
strategy of the run and repetition 0); from a project, its latest model.

:func:`load_model` makes such a file (or any checkpoint of the format) ready to segment whole
images (:class:`~activeseg.annotation.predict.Segmenter`) without a project;
:func:`export_onnx` writes the network(s) as ONNX for use outside Python: input ``image``
float32 ``[B, 1, H, W]`` (H and W multiples of ``2 ** (model.depth - 1)``), already
resampled to the model's pixel size and standardised as ``normalizer`` says; output
``probabilities`` ``[B, C, H, W]`` (C = 1 foreground probability for a binary model, else one
per class; a committee's mean). The ONNX file's metadata (``activeseg``) holds the classes,
normaliser, pixel size and window size as JSON.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from activeseg.annotation.predict import Segmenter
from activeseg.config import Config
from activeseg.errors import UserError
from activeseg.files import atomic_write_bytes
from activeseg.learners import LearnerData, read_checkpoint, restore
from activeseg.model import probabilities
from activeseg.runtime import resolve
from activeseg.train import Labelled


@dataclass(frozen=True)
class Exported:
    """What :func:`export_model` wrote: the file, its config and where it came from."""

    path: Path
    config: Config
    source: dict[str, Any]

    def describe(self) -> str:
        """E.g. ``run runs/sem, strategy std_edt, repetition 0, iteration 3 of 3``."""
        s = self.source
        if "project" in s:
            return f"project {s['project']}, round {s['round']}"
        return (
            f"run {s['run']}, strategy {s['strategy']}, repetition {s['repetition']}, "
            f"iteration {s['iteration']} of {s['iterations']}"
        )


def export_model(
    source: Path, out: Path, *, strategy: str | None = None, repetition: int = 0
) -> Exported:
    """Write the model of the run directory or project ``source`` to ``out`` (module
    docstring); ``strategy`` and ``repetition`` choose a run's model.

    Raises:
        UserError: ``source`` is neither, has no such (or no trained) model, or ``strategy``
            / ``repetition`` are given for a project.
    """
    source = Path(source)
    if (source / "project.json").is_file():
        if strategy is not None or repetition != 0:
            raise UserError("--strategy and --repetition choose a run's model, not a project's")
        path = source / "model" / "model.pt"
        if not path.is_file():
            raise UserError(f"{source} has no trained model yet; run `activeseg train {source}`")
        payload = read_model_file(path)
        origin = {"project": source.resolve().name, "round": payload.get("round")}
    elif (source / "config.yaml").is_file() and (source / "checkpoints").is_dir():
        payload, origin = _run_checkpoint(source, strategy, repetition)
    else:
        raise UserError(
            f"{source} is neither a run directory (config.yaml, checkpoints/) nor a project "
            "(project.json)"
        )
    config, payload = read_checkpoint(payload, str(source))
    payload = {
        **payload,
        "classes": ["background", *config.data.class_names],
        "exported_from": origin,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(Path(out), buffer.getvalue())
    return Exported(Path(out), config, origin)


def _run_checkpoint(
    run: Path, strategy: str | None, repetition: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The final checkpoint of ``strategy`` (default: the run's first) in ``repetition``."""
    from activeseg.config import load_yaml
    from activeseg.simulation.rundir import checkpoint_path

    config = load_yaml(run / "config.yaml")
    name = strategy or config.loop.strategies[0]
    path = checkpoint_path(run, name, repetition)
    if not path.is_file():
        have = sorted(p.stem for p in (run / "checkpoints").glob("*.pt"))
        raise UserError(
            f"{run} has no model of strategy {name} in repetition {repetition} ({path.name}); "
            f"it has: {', '.join(have) or 'none yet'}. Choose with --strategy and --repetition"
        )
    payload = read_model_file(path)
    origin = {
        "run": run.resolve().name,
        "strategy": name,
        "repetition": repetition,
        "iteration": payload.get("iteration"),
        "iterations": config.loop.iterations,
    }
    return payload, origin


def read_model_file(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise UserError(f"cannot read the model file {path} ({exc})") from exc
    if not isinstance(payload, dict):
        raise UserError(f"{path} is not an activeseg model file")
    return dict(payload)


def load_model(path: Path, device: str = "auto") -> Segmenter:
    """The model file ``path`` (an export, a run's checkpoint or a project's model) ready
    to segment whole images on ``device`` (``auto``: a GPU if there is one)."""
    payload = read_model_file(Path(path))
    config, payload = read_checkpoint(payload, str(path))
    runtime = resolve(device, config.train.precision)
    empty = torch.zeros((0, 1, 1, 1))
    learner = restore(payload, LearnerData(empty, Labelled(empty, empty)), runtime, where=str(path))
    return Segmenter(learner, config, payload["normalizer"])


class _Probabilities(nn.Module):
    """The mean probabilities ``[B, C, *S]`` of ``members`` (one network, or a committee)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([probabilities(m(image)) for m in self.members]).mean(0)


def export_onnx(model: Segmenter, out: Path) -> None:
    """Write ``model``'s network(s) as ONNX to ``out`` (format in the module docstring).

    Raises:
        UserError: the ONNX packages are missing (``pip install "activeseg[onnx]"``).
    """
    try:
        import onnx
    except ImportError as exc:
        raise UserError('ONNX export needs `pip install "activeseg[onnx]"`') from exc
    members = [copy.deepcopy(m).float().cpu().eval() for m in model.learner.models]
    network = _Probabilities(members).eval()
    d = model.config.data
    step = 2 ** (model.config.model.depth - 1)
    example = torch.zeros((2, 1, *([2 * step] * d.spatial_dims)))
    batch = torch.export.Dim("batch", min=1)
    dims = {0: batch} | {
        2 + i: step * torch.export.Dim(f"s{i}", min=1) for i in range(d.spatial_dims)
    }
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" lines
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and FutureWarnings
        program = torch.onnx.export(
            network,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_shapes={"image": dims},
            verbose=False,
        )
    quiet.setLevel(level)
    assert program is not None
    proto = program.model_proto
    meta = {
        "classes": ["background", *d.class_names],
        "normalizer": dict(model.normalizer),
        "pixel_size_um": d.pixel_size,
        "window": d.patch_size,
        "threshold": model.config.scoring.threshold,
        "input_multiple": step,
    }
    entry = proto.metadata_props.add()
    entry.key, entry.value = "activeseg", json.dumps(meta)
    onnx.checker.check_model(proto)
    atomic_write_bytes(Path(out), proto.SerializeToString())

"""A human-in-the-loop annotation project on disk: images, masks, model and query history.

Layout of ``PROJECT/`` (every path stored inside is relative, so the folder can be moved or
copied)::

    project.json     images (file, pixel size µm, held out or not, intensity mean and std),
                     mask suffix, strategy; written once by ``init``
    config.yaml      the resolved configuration (preset + --set)
    state.json       annotated regions, pending queries, training rounds (the learning curve)
    images/          copies of the user's images
    annotations/     stored masks: ``<image>_seg-myelin-manual.png`` (whole images given at
                     init) and ``<query>_seg-myelin-manual.png`` (imported regions)
    model/model.pt   the latest model: weights, normaliser, the annotations it was trained on
    to_annotate/     pending queries: ``<query>.png`` (the crop), ``<query>_seg-myelin-pred.png``
                     (pre-annotation to correct), ``<query>_uncertainty.png`` (heatmap overlay),
                     ``<query>.json``; imported ones move to ``to_annotate/imported/``
    project.lock     held while a command changes the project

Every file is written under a temporary name and renamed; ``state.json`` is the one record
of what is annotated and pending, so a crash leaves the project as it was before the command
(or after it). A region is a rectangle in the *original* pixels of an image; the model works
at ``data.pixel_size``. Candidate regions are the ``data.patch_size`` windows of a centred
grid over each resampled image, mapped back to original pixels; a region overlapping an
annotated or pending one is never offered again.

Validation: images designated at ``init --holdout`` (with their masks) are never trained on
nor queried; the model keeps the weights of its best Dice on them (as in the simulation) and
``status`` reports that Dice, which is therefore slightly optimistic. Without a held-out image
there is no validation Dice (training patches stand in for model selection); ``status`` then
reports only the Dice of the model's pre-annotations against the corrected masks (a
pessimistic estimate: queried regions are the ones the model is least sure of).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from activeseg.acquisition import PoolScores, Strategy, get_strategy, select_top_k
from activeseg.config import Config, load_yaml, preset, save_yaml, to_dict, with_overrides
from activeseg.data.images import IMAGE_SUFFIXES, read_image, read_mask, write_mask_png
from activeseg.data.patches import Normalizer, PatchSet, resample, resize, tile
from activeseg.data.sources import MASK_SUFFIXES, ImageFile, Sample, find_images
from activeseg.errors import UserError
from activeseg.metrics import confusion, summarize
from activeseg.model import UNet, seeded_unet
from activeseg.rundir import acquire_lock, atomic_write_bytes, atomic_write_text, remove_temporaries
from activeseg.runtime import Runtime, derive_seed, numpy_generator, resolve, torch_generator
from activeseg.scoring import McStats, mc_statistics
from activeseg.simulate import pool_chunk, validate
from activeseg.train import evaluate, fit

PROJECT_SCHEMA = 1
MASK_SUFFIX = "_seg-myelin-manual"
PRED_SUFFIX = "_seg-myelin-pred"
HEATMAP_SUFFIX = "_uncertainty"
DEFAULT_K = 4
"""Regions per query when ``-k`` is not given."""
TO_ANNOTATE = "to_annotate"


@dataclass(frozen=True)
class Region:
    """A rectangle of a project image in its original pixels: top-left ``(row, col)``,
    ``height`` x ``width``."""

    image: str
    row: int
    col: int
    height: int
    width: int

    def overlaps(self, other: Region) -> bool:
        return (
            self.image == other.image
            and self.row < other.row + other.height
            and other.row < self.row + self.height
            and self.col < other.col + other.width
            and other.col < self.col + self.width
        )

    def crop(self, array: np.ndarray) -> np.ndarray:
        """``array[row:row+height, col:col+width]`` of an ``[H, W]`` image of this region."""
        return array[self.row : self.row + self.height, self.col : self.col + self.width]


@dataclass(frozen=True)
class Annotation:
    """A stored mask: ``mask`` is its path in the project; ``source`` ``init`` (a whole image
    given at init) or ``query``; ``pre_dice`` the Dice of the model's pre-annotation against
    it (queried regions with a pre-annotation only)."""

    id: str
    region: Region
    mask: str
    source: str
    pre_dice: float | None = None


@dataclass(frozen=True)
class Query:
    """A region offered for annotation; ``round`` is the training round whose model chose it."""

    id: str
    region: Region
    score: float
    strategy: str
    round: int


@dataclass(frozen=True)
class Round:
    """One training: ``n_regions`` annotated regions (held-out ones excluded) giving
    ``n_patches`` patches; ``val_dice`` on the held-out images (``None`` without any)."""

    round: int
    n_regions: int
    n_patches: int
    val_dice: float | None
    seconds: float
    annotations: tuple[str, ...]


@dataclass(frozen=True)
class State:
    """What is annotated, pending and trained so far (``state.json``)."""

    annotations: tuple[Annotation, ...] = ()
    pending: tuple[Query, ...] = ()
    rounds: tuple[Round, ...] = ()
    next_query: int = 1


@dataclass(frozen=True)
class ProjectImage:
    """An image of the project: ``file`` relative to the project, ``pixel_size`` µm,
    ``mean`` / ``std`` of its intensities at the model's pixel size (its normaliser)."""

    name: str
    file: str
    pixel_size: float | None
    mean: float
    std: float
    holdout: bool = False

    @property
    def normalizer(self) -> Normalizer:
        return Normalizer(self.mean, self.std)


@dataclass(frozen=True)
class Settings:
    """``project.json``: fixed at init."""

    images: tuple[ProjectImage, ...]
    mask_suffix: str = MASK_SUFFIX
    strategy: str = "std_edt"


@dataclass(frozen=True)
class ImportResult:
    """``imported``: query ids stored; ``rejected``: (file, reason); ``waiting``: query ids
    without a mask file yet."""

    imported: list[str] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Status:
    n_images: int
    n_holdout: int
    n_annotated: int  # regions used for training (held-out images excluded)
    n_pending: int
    rounds: tuple[Round, ...]
    up_to_date: bool  # the latest model was trained on every annotated region
    pre_dice: float | None  # mean Dice of pre-annotations vs corrected masks
    gain: float | None  # estimated held-out Dice gain of the next round
    next_k: int


# --------------------------------------------------------------------------- JSON


def _state_to_json(state: State) -> str:
    return json.dumps({"schema": PROJECT_SCHEMA, **dataclasses.asdict(state)}, indent=1)


def _state_from_json(data: dict[str, Any], where: Path) -> State:
    _check_schema(data, where)
    try:
        return State(
            annotations=tuple(
                Annotation(**{**a, "region": Region(**a["region"])}) for a in data["annotations"]
            ),
            pending=tuple(Query(**{**q, "region": Region(**q["region"])}) for q in data["pending"]),
            rounds=tuple(
                Round(**{**r, "annotations": tuple(r["annotations"])}) for r in data["rounds"]
            ),
            next_query=int(data["next_query"]),
        )
    except (KeyError, TypeError) as exc:
        raise UserError(f"{where} is damaged ({exc!r}); restore it from a copy") from exc


def _check_schema(data: dict[str, Any], where: Path) -> None:
    if not isinstance(data, dict) or data.get("schema") != PROJECT_SCHEMA:
        raise UserError(
            f"{where}: not an activeseg project file of schema {PROJECT_SCHEMA}; it was "
            "written by another version of activeseg"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    _check_schema(data, path)
    return dict(data)


# --------------------------------------------------------------------------- project


class Project:
    """An annotation project opened from its folder (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not (self.root / "project.json").is_file():
            raise UserError(
                f"{self.root} is not an activeseg project (no project.json); create one with "
                f"`activeseg init {self.root} --images DIR`"
            )
        data = _read_json(self.root / "project.json")
        self.settings = Settings(
            images=tuple(ProjectImage(**i) for i in data["images"]),
            mask_suffix=data["mask_suffix"],
            strategy=data["strategy"],
        )
        self.config: Config = load_yaml(self.root / "config.yaml")
        self._by_name = {i.name: i for i in self.settings.images}
        self._cache: dict[tuple[str, bool], np.ndarray] = {}

    # ---- files and state -------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the project's lock (a second writer fails at once) and drop temporaries a
        killed writer left."""
        handle = acquire_lock(self.root / "project.lock")
        try:
            remove_temporaries(self.root)
            yield
        finally:
            handle.close()

    def state(self) -> State:
        path = self.root / "state.json"
        return _state_from_json(_read_json(path), path)

    def _save_state(self, state: State) -> None:
        atomic_write_text(self.root / "state.json", _state_to_json(state))

    @property
    def to_annotate(self) -> Path:
        return self.root / TO_ANNOTATE

    def image(self, name: str, resampled: bool = False) -> np.ndarray:
        """Image ``name`` float32 ``[H, W]`` in [0, 1], original or at ``data.pixel_size``."""
        key = (name, resampled)
        if key not in self._cache:
            if resampled:
                sample = self._sample(name, self.image(name), None)
                self._cache[key] = resample(sample, self.config.data.pixel_size).image
            else:
                self._cache[key] = read_image(self.root / self._by_name[name].file)
        return self._cache[key]

    def _sample(self, name: str, image: np.ndarray, mask: np.ndarray | None) -> Sample:
        pixel_size = self._by_name[name].pixel_size
        if mask is None:
            mask = np.zeros(image.shape, dtype=np.uint8)
        return Sample(name, image, mask, pixel_size)

    def scale(self, name: str) -> float:
        """Resampled pixels per original pixel of image ``name`` (1 without resampling)."""
        target, own = self.config.data.pixel_size, self._by_name[name].pixel_size
        return 1.0 if target is None or own is None else own / target

    def is_holdout(self, name: str) -> bool:
        return self._by_name[name].holdout

    def runtime(self) -> Runtime:
        return resolve(self.config.train.device, self.config.train.precision)

    # ---- training --------------------------------------------------------------------
    def patches(self, annotations: Sequence[Annotation]) -> PatchSet | None:
        """The annotated regions, normalised by their image's normaliser, resampled and
        tiled into ``data.patch_size`` patches (images float32 normalised, masks {0, 1})."""
        samples = [
            dataclasses.replace(
                self._sample(
                    a.region.image,
                    self._by_name[a.region.image].normalizer(
                        a.region.crop(self.image(a.region.image))
                    ),
                    read_mask(self.root / a.mask),
                ),
                name=a.id,
            )
            for a in annotations
        ]
        if not samples:
            return None
        resampled = [resample(s, self.config.data.pixel_size) for s in samples]
        return tile(resampled, self.config.data.patch_size)

    def train(self, progress: bool = False, force: bool = False) -> Round | None:
        """Train a model on every annotated region (from scratch, seeded by the round);
        ``None`` if the latest model already saw them all (unless ``force``)."""
        with self.locked():
            state = self.state()
            if not force and self._up_to_date(state):
                return None
            return self._train(state, progress)[0]

    def _train_annotations(self, state: State) -> list[Annotation]:
        return [a for a in state.annotations if not self.is_holdout(a.region.image)]

    def _up_to_date(self, state: State) -> bool:
        ids = tuple(a.id for a in self._train_annotations(state))
        return bool(state.rounds) and state.rounds[-1].annotations == ids and self.has_model()

    def has_model(self) -> bool:
        return (self.root / "model" / "model.pt").is_file()

    def _train(self, state: State, progress: bool) -> tuple[Round, UNet]:
        train_ann = self._train_annotations(state)
        if not train_ann:
            raise UserError(
                "nothing annotated to train on yet: give masks at init (--masks DIR) or "
                f"annotate the regions in {self.to_annotate} and run `activeseg import`"
            )
        train = self.patches(train_ann)
        val = self.patches([a for a in state.annotations if self.is_holdout(a.region.image)])
        if train is None or len(train) == 0:
            raise UserError("the annotated regions give no patch; check data.patch_size")
        x, y = torch.from_numpy(train.images), torch.from_numpy(train.masks).float()
        vx, vy = (
            (torch.from_numpy(val.images), torch.from_numpy(val.masks).float())
            if val is not None
            else (x, y)
        )
        runtime, m = self.runtime(), self.config.model
        number = len(state.rounds)
        seed = derive_seed(self.config.loop.seed, "train")
        model = seeded_unet(derive_seed(seed, "init"), m.depth, m.base_filters, m.dropout)
        start = time.perf_counter()
        fit(model, x, y, vx, vy, self.config.train, runtime, torch_generator(seed), progress)
        val_dice = (
            evaluate(model, vx, vy, runtime, self.config.scoring.threshold)["dice"]
            if val is not None
            else None
        )
        ids = tuple(a.id for a in train_ann)
        result = Round(number, len(ids), len(train), val_dice, time.perf_counter() - start, ids)
        buffer = io.BytesIO()
        torch.save(
            {
                "model": model.state_dict(),
                "config": to_dict(self.config),
                "round": number,
                "annotations": list(ids),
            },
            buffer,
        )
        atomic_write_bytes(self.root / "model" / "model.pt", buffer.getvalue())
        self._save_state(dataclasses.replace(state, rounds=(*state.rounds, result)))
        return result, model

    def load_model(self) -> UNet:
        """The latest trained model (evaluation mode)."""
        path = self.root / "model" / "model.pt"
        if not path.is_file():
            raise UserError(f"{self.root} has no trained model yet; run `activeseg train`")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        m = self.config.model
        model = UNet(1, 1, m.depth, m.base_filters, m.dropout)
        model.load_state_dict(payload["model"])
        return model.eval()

    # ---- querying --------------------------------------------------------------------
    def query(
        self,
        k: int = DEFAULT_K,
        strategy: str | None = None,
        progress: bool = False,
        on_stage: Callable[[int], None] = lambda stage: None,
    ) -> list[Query]:
        """Train if needed, score every candidate region and write the ``k`` best to
        ``to_annotate/`` (crop, pre-annotation, heatmap overlay, JSON). ``on_stage`` is
        called with 0 (training), 1 (scoring), 2 (writing)."""
        if k < 1:
            raise UserError(f"-k must be >= 1, got {k}")
        s = self.config.scoring
        chosen = get_strategy(strategy or self.settings.strategy, s.edt, s.threshold)
        with self.locked():
            state = self.state()
            on_stage(0)
            if self._up_to_date(state):
                model, number = self.load_model(), state.rounds[-1].round
            else:
                trained, model = self._train(state, progress)
                number, state = trained.round, self.state()
            windows, regions = self.candidates(state)
            if len(regions) < k:
                raise UserError(
                    f"only {len(regions)} candidate regions are left (not annotated, not "
                    f"pending); ask for -k {len(regions)} or fewer"
                )
            seed = derive_seed(self.config.loop.seed, "query", number, state.next_query)
            on_stage(1)
            scores = self._score(model, windows, chosen, seed, progress)
            picked = select_top_k(scores, k, numpy_generator(derive_seed(seed, "select")))
            on_stage(2)
            stats = self._mc(model, windows.images[picked], picked, seed, False)
            queries = []
            for j, index in enumerate(picked):
                qid = f"q{state.next_query + j:04d}-{regions[index].image}"
                query = Query(qid, regions[index], float(scores[index]), chosen.name, number)
                self._write_query(query, stats.mean[j, 0].numpy(), stats.std[j, 0].numpy())
                queries.append(query)
            self._save_state(
                dataclasses.replace(
                    state,
                    pending=(*state.pending, *queries),
                    next_query=state.next_query + k,
                )
            )
            return queries

    def candidates(self, state: State) -> tuple[PatchSet, list[Region]]:
        """The windows (normalised resampled patches) that may be queried and their regions
        in original pixels: the centred patch grid of every image that is not held out,
        minus windows overlapping an annotated or pending region."""
        names = [i.name for i in self.settings.images if not i.holdout]
        samples = [
            self._sample(n, self._by_name[n].normalizer(self.image(n, resampled=True)), None)
            for n in names
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # images smaller than a patch simply give none
            windows = tile(samples, self.config.data.patch_size)
        taken = [a.region for a in state.annotations] + [q.region for q in state.pending]
        keep, regions = [], []
        for index, (source, (row, col)) in enumerate(
            zip(windows.source, windows.origin, strict=True)
        ):
            region = self._region(windows.names[source], int(row), int(col))
            if region is not None and not any(region.overlaps(t) for t in taken):
                keep.append(index)
                regions.append(region)
        return windows.subset(np.asarray(keep, dtype=np.int64)), regions

    def _region(self, name: str, row: int, col: int) -> Region | None:
        """The original-pixel region of the resampled window at ``(row, col)``; its size
        ``ceil(P / scale)`` resamples back to at least ``P`` pixels."""
        scale, p = self.scale(name), self.config.data.patch_size
        size = math.ceil(p / scale - 1e-9)
        h, w = self.image(name).shape
        if size > min(h, w):
            return None
        r = min(round(row / scale), h - size)
        c = min(round(col / scale), w - size)
        return Region(name, r, c, size, size)

    def _mc(
        self, model: UNet, images: np.ndarray, ids: np.ndarray, seed: int, progress: bool
    ) -> McStats:
        s = self.config.scoring
        return mc_statistics(
            model,
            torch.from_numpy(images),
            [int(i) for i in ids],
            s.mc_samples,
            s.mc_batch,
            seed,
            self.runtime(),
            progress,
        )

    def _score(
        self, model: UNet, windows: PatchSet, strategy: Strategy, seed: int, progress: bool
    ) -> np.ndarray:
        """One score per window; MC statistics chunk by chunk (memory bounded)."""
        if strategy.committee is not None:
            raise UserError(f"strategy {strategy.name}: committees are not supported in projects")
        rng = numpy_generator(derive_seed(seed, "strategy"))
        n = len(windows)
        ids = np.arange(n)
        if not strategy.needs_mc:
            raw = strategy.score(None, n, rng).scores
        else:
            chunk = pool_chunk(windows.patch_size)
            out = []
            bar = tqdm(range(0, n, chunk), desc="scoring", disable=not progress, leave=False)
            for start in bar:
                part = ids[start : start + chunk]
                stats = self._mc(model, windows.images[part], part, seed, progress)
                out.append(strategy.score(stats, len(part), rng).scores)
            raw = np.concatenate(out)
        pool = PoolScores(ids, raw, np.zeros(0, np.int64), torch.from_numpy(windows.images))
        return np.asarray(strategy.finalize(pool), dtype=np.float64)

    def _write_query(self, query: Query, mean: np.ndarray, std: np.ndarray) -> None:
        """Crop, pre-annotation mask, heatmap overlay and JSON of ``query`` (window-sized
        ``mean`` / ``std`` maps are resized to the crop)."""
        region = query.region
        crop = region.crop(self.image(region.image))
        shape = (region.height, region.width)
        folder = self.to_annotate
        _write_png(folder / f"{query.id}.png", np.round(crop * 255).astype(np.uint8))
        write_mask_png(
            folder / f"{query.id}{PRED_SUFFIX}.png",
            (resize(mean, shape) >= self.config.scoring.threshold).astype(np.uint8),
        )
        overlay = heatmap_overlay(crop, resize(std, shape))
        _write_png(folder / f"{query.id}{HEATMAP_SUFFIX}.png", overlay)
        info = {
            **dataclasses.asdict(query),
            "mask_file": f"{query.id}{self.settings.mask_suffix}.png",
            "pixel_size": self._by_name[region.image].pixel_size,
            "std_max": float(std.max()),
        }
        atomic_write_text(folder / f"{query.id}.json", json.dumps(info, indent=1))

    # ---- importing -------------------------------------------------------------------
    def import_masks(self, source: Path | None = None, suffix: str | None = None) -> ImportResult:
        """Store the corrected masks ``<query><suffix>.png|tif`` found in ``source`` (default
        ``to_annotate/``): each is checked (readable, the crop's size, two values); good ones
        are stored and their query files move to ``to_annotate/imported/``, bad ones are
        reported and stay pending."""
        folder = Path(source) if source is not None else self.to_annotate
        suffix = self.settings.mask_suffix if suffix is None else suffix
        result = ImportResult()
        with self.locked():
            state = self.state()
            added, done = [], set()
            for query in state.pending:
                path = _find_file(folder, f"{query.id}{suffix}")
                if path is None:
                    result.waiting.append(query.id)
                    continue
                try:
                    mask = _checked_mask(path, query.region, f"{query.id}.png")
                except UserError as exc:
                    result.rejected.append((path, str(exc)))
                    continue
                stored = f"annotations/{query.id}{MASK_SUFFIX}.png"
                write_mask_png(self.root / stored, mask)
                added.append(
                    Annotation(query.id, query.region, stored, "query", self._pre_dice(query, mask))
                )
                done.add(query.id)
                result.imported.append(query.id)
            if added:
                self._save_state(
                    dataclasses.replace(
                        state,
                        annotations=(*state.annotations, *added),
                        pending=tuple(q for q in state.pending if q.id not in done),
                    )
                )
                for qid in done:
                    _move_query_files(self.to_annotate, qid)
        return result

    def _pre_dice(self, query: Query, mask: np.ndarray) -> float | None:
        path = self.to_annotate / f"{query.id}{PRED_SUFFIX}.png"
        if not path.is_file():
            return None
        pred = torch.from_numpy(read_mask(path).reshape(1, -1)).bool()
        return summarize(confusion(pred, torch.from_numpy(mask.reshape(1, -1)).bool()))["dice"]

    # ---- status ----------------------------------------------------------------------
    def status(self) -> Status:
        state = self.state()
        latest = max((q.round for q in state.pending), default=None)
        recent = [q for q in state.pending if q.round == latest]
        k = len(recent) or DEFAULT_K
        pre = [a.pre_dice for a in state.annotations if a.pre_dice is not None]
        return Status(
            n_images=len(self.settings.images),
            n_holdout=sum(i.holdout for i in self.settings.images),
            n_annotated=len(self._train_annotations(state)),
            n_pending=len(state.pending),
            rounds=state.rounds,
            up_to_date=self._up_to_date(state),
            pre_dice=float(np.mean(pre)) if pre else None,
            gain=estimate_gain(
                [(r.n_patches, r.val_dice) for r in state.rounds if r.val_dice is not None], k
            ),
            next_k=k,
        )


def estimate_gain(curve: Sequence[tuple[int, float]], extra: int, last: int = 4) -> float | None:
    """Estimated held-out Dice gain from ``extra`` more patches, from the learning curve
    ``(n_patches, dice)`` of the trainings so far.

    Fits ``dice = a + b * ln(n)`` by least squares to the latest ``last`` points (small-data
    learning curves are close to linear in log n) and returns ``b * ln((n + extra) / n)`` at
    the latest ``n``, clipped to ``[0, 1 - dice]``; ``None`` with fewer than two distinct n.
    """
    points = list(curve)[-last:]
    ns = np.array([p[0] for p in points], dtype=np.float64)
    if len(np.unique(ns)) < 2:
        return None
    dice = np.array([p[1] for p in points], dtype=np.float64)
    slope = np.polyfit(np.log(ns), dice, 1)[0]
    gain = float(slope * math.log((ns[-1] + extra) / ns[-1]))
    return min(max(gain, 0.0), 1.0 - float(dice[-1]))


def heatmap_overlay(image: np.ndarray, std: np.ndarray, scale: float = 0.5) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``: the gray ``image`` ``[H, W]`` (in [0, 1]) with the MC std
    ``[H, W]`` in the ``inferno`` colour map blended over it (alpha = 0.7 * std / scale;
    std 0.5 is the largest a probability can have)."""
    from matplotlib import colormaps

    level = np.clip(std / scale, 0.0, 1.0)[..., None]
    colour = colormaps["inferno"](level[..., 0])[..., :3]
    alpha = 0.7 * np.sqrt(level)
    rgb = image[..., None] * (1 - alpha) + colour * alpha
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _write_png(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _find_file(folder: Path, stem: str) -> Path | None:
    return next(
        (folder / f"{stem}{ext}" for ext in IMAGE_SUFFIXES if (folder / f"{stem}{ext}").is_file()),
        None,
    )


def _checked_mask(path: Path, region: Region, crop: str) -> np.ndarray:
    """The {0, 1} mask of ``path``; :class:`UserError` if unreadable, not of the region's
    size, or holding intermediate levels (not a binary mask)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = read_mask(path)
    if mask.shape != (region.height, region.width):
        raise UserError(
            f"{path} is {mask.shape[1]}x{mask.shape[0]} pixels but its region is "
            f"{region.width}x{region.height}; save the mask at the size of the crop "
            f"{crop} (do not crop or scale it)"
        )
    if caught:
        raise UserError(
            f"{path} is not a binary mask: {caught[0].message}; save it with two values "
            "(0 and 255, myelin bright)"
        )
    return mask


def _move_query_files(folder: Path, qid: str) -> None:
    """Move ``folder/<qid>*`` into ``folder/imported/`` (replacing older copies)."""
    target = folder / "imported"
    target.mkdir(exist_ok=True)
    for path in folder.glob(f"{qid}*"):
        if path.is_file():
            shutil.move(str(path), str(target / path.name))


# --------------------------------------------------------------------------- init


def init_project(
    root: Path,
    images: Path,
    *,
    masks: Path | None = None,
    pixel_size: float | None = None,
    preset_name: str = "cpu",
    overrides: dict[str, Any] | None = None,
    holdout: Sequence[str] = (),
    mask_suffix: str = MASK_SUFFIX,
    strategy: str = "std_edt",
    log: Callable[[str], None] = lambda line: None,
) -> Project:
    """Create the project ``root`` from the images of ``images`` (BIDS or a folder) and the
    whole-image masks found in ``masks`` (``<image stem><suffix>.png|tif``, any depth).

    Everything is checked before the folder is created: bad input leaves nothing behind.
    ``holdout`` names labelled images kept for validation only.
    """
    root = Path(root)
    config = with_overrides(preset(preset_name), overrides or {})
    validate(config)
    get_strategy(strategy, config.scoring.edt, config.scoring.threshold)
    skip = (mask_suffix, *MASK_SUFFIXES, PRED_SUFFIX, HEATMAP_SUFFIX)
    files = [
        f
        for f in find_images(images, pixel_size=pixel_size, modality=config.data.modality)
        if not f.name.endswith(skip)
    ]
    if not files:
        raise UserError(f"no images in {images} (files ending in a mask suffix are skipped)")
    found = _match_masks(files, Path(masks), mask_suffix) if masks is not None else {}
    names = {f.name for f in files}
    for name in holdout:
        if name not in names:
            raise UserError(
                f"--holdout {name}: no such image; image names: {', '.join(sorted(names))}"
            )
        if name not in found:
            raise UserError(f"--holdout {name}: a held-out image needs a mask in --masks")
    if set(holdout) >= names:
        raise UserError("every image is held out; leave at least one image to annotate")
    mask_arrays = {}
    for f in files:
        if f.name in found:
            mask_arrays[f.name] = read_mask(found[f.name])
            shape = read_image(f.path).shape
            if mask_arrays[f.name].shape != shape:
                raise UserError(
                    f"mask {found[f.name]} is {mask_arrays[f.name].shape[1]}x"
                    f"{mask_arrays[f.name].shape[0]} but image {f.path} is {shape[1]}x{shape[0]}"
                )
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not empty; choose a new project folder")
    unknown = [f.name for f in files if f.pixel_size is None]
    if unknown and config.data.pixel_size is not None:
        warnings.warn(
            f"no pixel size for {len(unknown)} image(s) (e.g. {unknown[0]}): used at their "
            f"native size, not resampled to {config.data.pixel_size} µm; give --pixel-size",
            stacklevel=2,
        )
    root.mkdir(parents=True, exist_ok=True)
    handle = acquire_lock(root / "project.lock")
    try:
        entries, annotations = [], []
        for f in tqdm(files, desc="copying images", leave=False, disable=len(files) < 5):
            entry = _copy_image(root, f, f.name in holdout, config.data.pixel_size)
            entries.append(entry)
            if f.name in mask_arrays:
                stored = f"annotations/{f.name}{MASK_SUFFIX}.png"
                write_mask_png(root / stored, mask_arrays[f.name])
                h, w = mask_arrays[f.name].shape
                annotations.append(Annotation(f.name, Region(f.name, 0, 0, h, w), stored, "init"))
        settings = {
            "schema": PROJECT_SCHEMA,
            "images": [dataclasses.asdict(e) for e in entries],
            "mask_suffix": mask_suffix,
            "strategy": strategy,
        }
        atomic_write_text(root / "config.yaml", save_yaml(config))
        atomic_write_text(root / "state.json", _state_to_json(State(tuple(annotations))))
        atomic_write_text(root / "project.json", json.dumps(settings, indent=1))
        (root / TO_ANNOTATE).mkdir(exist_ok=True)
    finally:
        handle.close()
    log(
        f"project {root}: {len(files)} images ({len(holdout)} held out), "
        f"{len(annotations)} with masks"
    )
    return Project(root)


def _copy_image(root: Path, f: ImageFile, holdout: bool, pixel_size: float | None) -> ProjectImage:
    """Copy ``f`` into ``root/images/`` and measure its normaliser at ``pixel_size``."""
    name = f"images/{f.name}{''.join(f.path.suffixes[-1:]).lower()}"
    atomic_write_bytes(root / name, f.path.read_bytes())
    norm = image_normalizer(read_image(f.path), f.pixel_size, pixel_size)
    return ProjectImage(f.name, name, f.pixel_size, norm.mean, norm.std, holdout)


def image_normalizer(
    image: np.ndarray, pixel_size: float | None, model_pixel_size: float | None
) -> Normalizer:
    """The intensity normaliser of one image ``[H, W]``: mean and std of the image
    resampled to the model's pixel size.

    Each image is standardised by its own statistics, at training, querying and prediction
    alike: brightness and contrast differ between acquisitions (the AxonDeepSeg SEM images'
    mean intensity ranges from 0.3 to 0.6), and a model trained on a few regions of one
    image must not see the others as shifted intensities.
    """
    sample = Sample("image", image, np.zeros(image.shape, np.uint8), pixel_size)
    return Normalizer.fit(resample(sample, model_pixel_size).image)


def _match_masks(files: Sequence[ImageFile], folder: Path, suffix: str) -> dict[str, Path]:
    """Image name -> mask file ``<name><suffix>.<ext>`` (or another known mask suffix, or
    the bare name) anywhere under ``folder``."""
    if not folder.is_dir():
        raise UserError(f"mask folder {folder} not found")
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, path)
    found = {}
    for f in files:
        for candidate in (f"{f.name}{suffix}", *(f"{f.name}{s}" for s in MASK_SUFFIXES), f.name):
            if candidate in by_stem and by_stem[candidate] != f.path:
                found[f.name] = by_stem[candidate]
                break
    if not found:
        raise UserError(
            f"no mask in {folder} matches an image: expected e.g. "
            f"{files[0].name}{suffix}.png next to the image names"
        )
    return found


__all__ = [
    "DEFAULT_K",
    "Annotation",
    "ImportResult",
    "Project",
    "Query",
    "Region",
    "Round",
    "State",
    "Status",
    "estimate_gain",
    "heatmap_overlay",
    "init_project",
]

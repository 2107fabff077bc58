"""A human-in-the-loop annotation project on disk: images, masks, model and query history.

Layout of ``PROJECT/`` (every path stored inside is relative, so the folder can be moved or
copied)::

    project.json     images (file, pixel size µm, held out or not, intensity mean and std),
                     mask suffix, strategy; written once by ``init``
    config.yaml      the resolved configuration (preset + --set)
    state.json       annotated regions, pending queries, training rounds (the learning curve)
    images/          copies of the user's images
    annotations/     stored masks: ``<image>_seg-myelin-manual.png`` (whole images given at
                     init) and ``<query>_seg-myelin-manual.png`` (imported regions); with
                     several classes (``data.labels``) label maps ``<id>_seg-labels.png``
                     (values 0 .. C-1)
    model/model.pt   the latest model in the checkpoint format of :mod:`activeseg.learners`
                     (weights, config, per-image normalisation, round, annotations)
    to_annotate/     pending queries (:mod:`activeseg.annotation.queries`)
    project.lock     held while a command changes the project
    environment.json versions, device, CPU, threads and precision of the latest command that
                     changed the project (init, train, query, import; earlier ones that
                     differ under "earlier"; :mod:`activeseg.environment`)
    log.txt          what each command line printed, appended (:mod:`activeseg.console`)

Files are written atomically and one command at a time holds the lock
(:mod:`activeseg.files`), so a crash leaves the project as it was before the command (or
after it). The images, patches and candidate windows of a round come from
:mod:`activeseg.annotation.images`. Training, checkpoints and scoring go through the
learners of :mod:`activeseg.learners` and :func:`activeseg.loop.score_pool`, exactly as in a
simulation, so every strategy (committees and ``max_cover`` included) works in a project.

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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activeseg import loop
from activeseg.acquisition import Strategy, get_selection, get_strategy
from activeseg.acquisition.strategies import std_map
from activeseg.annotation import masks, queries
from activeseg.annotation.images import ProjectImages, RoundData
from activeseg.annotation.masks import MaskNames
from activeseg.annotation.predict import Segmenter
from activeseg.annotation.state import (
    DEFAULT_K,
    MASK_SUFFIX,
    PER_IMAGE,
    TO_ANNOTATE,
    Annotation,
    ProjectImage,
    Query,
    Round,
    Settings,
    State,
    read_json,
    state_from_json,
    state_to_json,
)
from activeseg.annotation.status import Status, estimate_gain
from activeseg.config import Config, load_yaml, to_dict
from activeseg.data.patches import resize
from activeseg.environment import describe, record_environment
from activeseg.errors import UserError
from activeseg.files import acquire_lock, atomic_write_bytes, atomic_write_text, remove_temporaries
from activeseg.learners import (
    LearnerData,
    ModelLearner,
    checkpoint,
    make_learner,
    restore,
    validation_dice,
)
from activeseg.model import predicted_labels
from activeseg.runtime import Runtime, derive_seed, numpy_generator, resolve
from activeseg.simulation.tasks import pool_chunk
from activeseg.train import Labelled


class Project:
    """An annotation project opened from its folder (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not (self.root / "project.json").is_file():
            raise UserError(
                f"{self.root} is not an activeseg project (no project.json); create one with "
                f"`activeseg init {self.root} --images DIR`"
            )
        data = read_json(self.root / "project.json")
        self.settings = Settings(
            images=tuple(ProjectImage(**i) for i in data["images"]),
            mask_suffix=data["mask_suffix"],
            strategy=data["strategy"],
            normalizer=data.get("normalizer", PER_IMAGE),
        )
        self.config: Config = load_yaml(self.root / "config.yaml")
        labels = self.config.data.labels  # (a multi-class project.json may hold an unused suffix)
        self.names = MaskNames.of(labels, MASK_SUFFIX if labels else self.settings.mask_suffix)
        self.images = ProjectImages(self.root, self.settings.images, self.config)

    # ---- files and state -------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the project's lock (a second writer fails at once), drop temporaries a
        killed writer left and record this command's ``environment.json``."""
        lock = acquire_lock(self.root / "project.lock")
        try:
            remove_temporaries(self.root)
            record_environment(self.root, describe(self.runtime()))
            yield
        finally:
            lock.release()

    def state(self) -> State:
        path = self.root / "state.json"
        return state_from_json(read_json(path), path)

    def _save_state(self, state: State) -> None:
        atomic_write_text(self.root / "state.json", state_to_json(state))

    @property
    def to_annotate(self) -> Path:
        return self.root / TO_ANNOTATE

    @property
    def model_path(self) -> Path:
        return self.root / "model" / "model.pt"

    @property
    def classes(self) -> int:
        """C, the number of labels (background included; 2 for binary masks)."""
        return self.config.data.num_classes

    def image(self, name: str, resampled: bool = False) -> np.ndarray:
        """Image ``name`` float32 ``[H, W]`` in [0, 1], original or at ``data.pixel_size``."""
        return self.images.image(name, resampled)

    def entry(self, name: str) -> ProjectImage:
        """The record of image ``name`` (file, pixel size, normaliser, held out or not)."""
        return self.images.entry(name)

    def read_annotation(self, a: Annotation) -> np.ndarray:
        """The stored mask or label map ``[h, w]`` (uint8) of ``a``."""
        return self.images.read_annotation(a)

    def runtime(self) -> Runtime:
        return resolve(self.config.train.device, self.config.train.precision)

    def strategy(self, name: str | None = None) -> Strategy:
        """The strategy ``name`` (default: the project's) for the project's settings."""
        return get_strategy(name or self.settings.strategy, self.config.scoring)

    # ---- training --------------------------------------------------------------------
    def round_data(self, state: State) -> RoundData:
        """What a round of ``state`` trains and scores on (:meth:`ProjectImages.round_data`);
        a project needs an annotation or a model to start from."""
        if not self.images.training(state) and not self.has_model():
            raise UserError(
                "nothing annotated to train on yet: give masks at init (--masks DIR) or "
                f"annotate the regions in {self.to_annotate} and run `activeseg import`"
            )
        return self.images.round_data(state)

    def _up_to_date(self, state: State, committee: str | None) -> bool:
        """Whether the saved model is of kind ``committee`` and trained on every annotation."""
        ids = tuple(a.id for a in self.images.training(state))
        latest = state.rounds[-1] if state.rounds else None
        return (
            latest is not None
            and latest.annotations == ids
            and latest.committee == committee
            and self.model_path.is_file()
        )

    def has_model(self) -> bool:
        return self.model_path.is_file()

    def train(
        self, progress: bool = False, force: bool = False, strategy: str | None = None
    ) -> Round | None:
        """Train the model of ``strategy`` (default: the project's; a committee for committee
        strategies) from scratch on every annotated region, seeded by the project's seed (the
        same annotations give the same model); ``None`` if the latest model already saw them
        all (unless ``force``)."""
        committee = self.strategy(strategy).committee
        with self.locked():
            state = self.state()
            if not force and self._up_to_date(state, committee):
                return None
            return self._fit(self.round_data(state), state, committee, progress)[0]

    def _fit(
        self, rd: RoundData, state: State, committee: str | None, progress: bool
    ) -> tuple[Round, ModelLearner]:
        if len(rd.train) == 0:
            raise UserError(
                "nothing annotated to train on yet: annotate the regions in "
                f"{self.to_annotate} and run `activeseg import`"
            )
        learner = make_learner(committee, rd.data, self.config, self.runtime(), progress=progress)
        if committee is None and self.config.train.init == "warm" and self.has_model():
            previous = self._checkpoint()  # fine-tune the latest model (train.init=warm)
            learner.start(previous["models"][0] if previous["committee"] is None else None)
        start = time.perf_counter()
        info = learner.fit(rd.train, rd.masks, derive_seed(self.config.loop.seed, "train"))
        ids = tuple(a.id for a in self.images.training(state))
        val_dice = float(info["val_dice"]) if rd.holdout else None
        number = len(state.rounds)
        seconds = time.perf_counter() - start
        result = Round(number, len(ids), len(rd.train), val_dice, seconds, ids, committee)
        payload = checkpoint(learner, self.settings.normalizer, round=number, annotations=list(ids))
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(self.model_path, buffer.getvalue())
        self._save_state(dataclasses.replace(state, rounds=(*state.rounds, result)))
        return result, learner

    def adopt(self, payload: dict[str, Any], name: str) -> Round:
        """Round 0 of a project started from the model file ``name``: its weights (checkpoint
        ``payload``) become the project's model without training, with the held-out Dice
        they give (``None`` without a held-out image)."""
        with self.locked():
            state = self.state()
            payload = {**payload, "config": to_dict(self.config), "round": 0, "annotations": []}
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            atomic_write_bytes(self.model_path, buffer.getvalue())
            rd = self.round_data(state)
            dice = validation_dice(self.load_learner(rd.data)) if rd.holdout else None
            committee = payload.get("committee")
            result = Round(0, 0, 0, dice, 0.0, (), committee, model=name)
            self._save_state(dataclasses.replace(state, rounds=(result,)))
            return result

    def _checkpoint(self) -> dict[str, Any]:
        if not self.model_path.is_file():
            raise UserError(f"{self.root} has no trained model yet; run `activeseg train`")
        return dict(torch.load(self.model_path, map_location="cpu", weights_only=True))

    def load_learner(self, data: LearnerData | None = None) -> ModelLearner:
        """The latest trained model as a learner over ``data`` (default: no patches, for
        whole-image prediction)."""
        empty = torch.zeros((0, 1, 1, 1))
        data = data or LearnerData(empty, Labelled(empty, empty))
        return restore(self._checkpoint(), data, self.runtime(), where=str(self.model_path))

    def segmenter(self) -> Segmenter:
        """The latest trained model, ready to segment whole images."""
        normalizer = self._checkpoint()["normalizer"]
        return Segmenter(self.load_learner(), self.config, normalizer)

    # ---- querying --------------------------------------------------------------------
    def query(
        self,
        k: int = DEFAULT_K,
        strategy: str | None = None,
        progress: bool = False,
        on_stage: Callable[[int], None] = lambda stage: None,
    ) -> list[Query]:
        """Train if needed, score every candidate region with the strategy (as a simulation
        scores its pool) and write the ``k`` best to ``to_annotate/`` (crop, pre-annotation,
        heatmap overlay, JSON). ``on_stage`` is called with 0 (training), 1 (scoring), 2
        (writing)."""
        if k < 1:
            raise UserError(f"-k must be >= 1, got {k}")
        chosen = self.strategy(strategy)
        with self.locked():
            state = self.state()
            on_stage(0)
            rd = self.round_data(state)
            if len(rd.regions) < k:
                raise UserError(
                    f"only {len(rd.regions)} candidate regions are left (not annotated, not "
                    f"pending); ask for -k {len(rd.regions)} or fewer"
                )
            if self._up_to_date(state, chosen.committee):
                learner, number = self.load_learner(rd.data), state.rounds[-1].round
            else:
                trained, learner = self._fit(rd, state, chosen.committee, progress)
                number, state = trained.round, self.state()
            seed = derive_seed(self.config.loop.seed, "query", number, state.next_query)
            on_stage(1)
            picked, scores = self._select(learner, chosen, rd, k, seed, number)
            on_stage(2)
            stats = learner.mc(rd.data.images[picked], picked.tolist(), seed)
            std = std_map(stats)
            made = []
            for j, index in enumerate(picked):
                region = rd.regions[index]
                qid = f"q{state.next_query + j:04d}-{region.image}"
                query = Query(qid, region, float(scores[index]), chosen.name, number)
                self._write_query(query, stats.mean[j], std[j])
                made.append(query)
            pending = (*state.pending, *made)
            self._save_state(
                dataclasses.replace(state, pending=pending, next_query=state.next_query + k)
            )
            return made

    def _select(
        self,
        learner: ModelLearner,
        strategy: Strategy,
        rd: RoundData,
        k: int,
        seed: int,
        number: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Window positions ``[k]`` picked by ``strategy`` with the model of round
        ``number``, and every window's score ``[W]``."""
        pool = np.arange(len(rd.windows))
        rng = numpy_generator(derive_seed(seed, "strategy"))
        scores = loop.score_pool(
            learner,
            strategy,
            pool,
            iteration=number,
            mc_seed=seed,
            rng=rng,
            chunk=pool_chunk(self.config.data.patch_size),
            on_chunk=lambda chunk: None,
            labelled=rd.train,
            images=rd.data.images,
        )
        lc = self.config.loop
        select = get_selection(lc.selection, lc.stochastic_groups)
        return select(scores, k, numpy_generator(derive_seed(seed, "select"))), scores

    def _write_query(self, query: Query, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Write ``query``'s files from the MC ``mean`` ``[C, P, P]`` and ``std`` ``[P, P]``
        of its window, resized to the region's own pixels."""
        region = query.region
        shape = (region.height, region.width)
        probs = torch.stack([torch.from_numpy(resize(m.numpy(), shape)) for m in mean])
        labels = predicted_labels(probs[None], self.config.scoring.threshold)[0]
        queries.write_query(
            self.to_annotate,
            query,
            region.crop(self.image(region.image)),
            labels.numpy().astype(np.uint8),
            resize(std.numpy(), shape),
            self.names,
            self.entry(region.image).pixel_size,
        )

    # ---- importing -------------------------------------------------------------------
    def import_masks(
        self, source: Path | None = None, suffix: str | None = None
    ) -> queries.ImportResult:
        """Store the corrected masks ``<query><suffix>.png|tif`` (one per class with
        ``data.labels``) found in ``source`` (default ``to_annotate/``): each is checked
        (readable, the crop's size, two values); good ones are stored and their query files
        move to ``to_annotate/imported/``, bad ones are reported and stay pending.
        ``suffix`` replaces a binary project's mask suffix (an error with ``data.labels``)."""
        folder = Path(source) if source is not None else self.to_annotate
        names = self.names
        if suffix is not None:
            if self.config.data.labels:
                raise UserError(masks.binary_only("--suffix", self.config.data.labels))
            names = dataclasses.replace(names, manual=(suffix,))
        result = queries.ImportResult()
        with self.locked():
            state = self.state()
            added, done = [], set()
            for query in state.pending:
                try:
                    found = masks.read_correction(folder, query, names, f"{query.id}.png")
                except masks.RejectedMask as exc:
                    result.rejected.append((exc.path, str(exc)))
                    continue
                if found is None:
                    result.waiting.append(query.id)
                    continue
                labels = found[0]
                stored = masks.store_annotation(self.root, query.id, labels, self.classes)
                pred = masks.read_prediction(self.to_annotate, query.id, self.names)
                pre = masks.pre_dice(pred, labels, self.classes)
                added.append(Annotation(query.id, query.region, stored, "query", pre))
                done.add(query.id)
                result.imported.append(query.id)
            if added:
                pending = tuple(q for q in state.pending if q.id not in done)
                annotations = (*state.annotations, *added)
                self._save_state(
                    dataclasses.replace(state, annotations=annotations, pending=pending)
                )
                for qid in done:
                    queries.move_query_files(self.to_annotate, qid)
        return result

    # ---- status ----------------------------------------------------------------------
    def status(self) -> Status:
        state = self.state()
        latest = max((q.round for q in state.pending), default=None)
        recent = [q for q in state.pending if q.round == latest]
        k = len(recent) or DEFAULT_K
        pre = [a.pre_dice for a in state.annotations if a.pre_dice is not None]
        committee = self.strategy().committee
        curve = [  # trained rounds (not an adopted model file)
            (r.n_patches, r.val_dice)
            for r in state.rounds
            if r.val_dice is not None and not r.model
        ]
        return Status(
            n_images=len(self.settings.images),
            n_holdout=sum(i.holdout for i in self.settings.images),
            n_annotated=len(self.images.training(state)),
            n_pending=len(state.pending),
            rounds=state.rounds,
            up_to_date=self._up_to_date(state, committee),
            pre_dice=float(np.mean(pre)) if pre else None,
            gain=estimate_gain(curve, k),
            next_k=k,
        )

"""Command line of the annotation project: ``init``, ``train``, ``query``, ``import``,
``status``, ``predict``. Argument parsing and printing only; the work is in
:mod:`activeseg.annotation.create`, :mod:`~activeseg.annotation.project` and
:mod:`~activeseg.annotation.predict`. What a command prints (and its warnings and error) is
also appended to the project's ``log.txt`` (:mod:`activeseg.console`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from activeseg.config import parse_assignments
from activeseg.console import LOG_FILE, LogFile, logged_warnings, tee
from activeseg.errors import UserError
from activeseg.presets import add_base_options, base_config

if TYPE_CHECKING:  # importing the project module loads torch: only when a command runs
    from activeseg.annotation.project import Status

COMMANDS = ("init", "train", "query", "import", "status", "predict", "export-labels")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the project subcommands to the ``activeseg`` parser."""
    init = sub.add_parser("init", help="create an annotation project from your images")
    init.add_argument("project", type=Path, metavar="PROJECT", help="new project folder")
    init.add_argument("--images", type=Path, required=True, help="BIDS dataset or image folder")
    init.add_argument("--masks", type=Path, help="folder of whole-image masks you already have")
    init.add_argument("--pixel-size", type=float, help="µm per pixel of a plain folder's images")
    init.add_argument("--channel", type=int, help="channel (0-based) of multi-channel images")
    add_base_options(init)
    init.add_argument(
        "--holdout",
        default="",
        metavar="NAME[,NAME]",
        help="labelled images kept for validation only (their Dice is what `status` reports)",
    )
    init.add_argument("--strategy", default="std_edt", help="query strategy (default std_edt)")
    init.add_argument("--mask-suffix", help="of your mask files (default _seg-myelin-manual)")
    init.add_argument("--seed", type=int, help="run seed (default: the preset's)")
    init.add_argument(
        "--model",
        type=Path,
        help="start from this model file (activeseg export); later rounds fine-tune it "
        "(train.init=warm, the default here) or retrain from scratch (train.init=scratch)",
    )
    init.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    train = sub.add_parser("train", help="train the project's model on what is annotated")
    train.add_argument("project", type=Path, metavar="PROJECT")
    train.add_argument("--force", action="store_true", help="retrain even if up to date")
    train.add_argument("--quiet", action="store_true")

    query = sub.add_parser("query", help="write the most informative regions to to_annotate/")
    query.add_argument("project", type=Path, metavar="PROJECT")
    query.add_argument("-k", type=int, help="number of regions (default 4)")
    query.add_argument("--strategy", help="override the project's strategy for this query")
    query.add_argument("--quiet", action="store_true")

    imp = sub.add_parser("import", help="store the corrected masks found in to_annotate/")
    imp.add_argument("project", type=Path, metavar="PROJECT")
    imp.add_argument("--from", dest="source", type=Path, help="folder (default to_annotate/)")
    imp.add_argument("--suffix", help="mask file suffix (default: the project's)")

    status = sub.add_parser("status", help="annotated regions, validation Dice, next gain")
    status.add_argument("project", type=Path, metavar="PROJECT")

    pred = sub.add_parser(
        "predict",
        help="segment whole images with a project's model or a file",
        usage="activeseg predict (PROJECT | --model FILE) IMAGES... --out DIR [options]",
    )
    pred.add_argument(
        "inputs",
        type=Path,
        nargs="+",
        metavar="PATH",
        help="the project (unless --model), then image files or folders",
    )
    pred.add_argument("--model", type=Path, help="a model file (activeseg export), no project")
    pred.add_argument("--out", type=Path, required=True, help="output folder")
    pred.add_argument("--uncertainty", action="store_true", help="also <stem>_uncertainty.tif")
    pred.add_argument("--pixel-size", type=float, help="µm per pixel of the images")
    pred.add_argument("--channel", type=int, help="channel of multi-channel images (default: "
                      "the model's)")  # fmt: skip
    pred.add_argument("--overlap", type=float, default=0.25, help="window overlap (default 0.25)")
    pred.add_argument("--quiet", action="store_true")

    labels = sub.add_parser(
        "export-labels", help="write a project's annotations as a BIDS or nnU-Net dataset"
    )
    labels.add_argument("project", type=Path, metavar="PROJECT")
    labels.add_argument("--format", required=True, choices=("bids", "nnunet"))
    labels.add_argument("--out", type=Path, required=True, help="output folder")
    labels.add_argument("--dataset-id", type=int, default=500, help="nnU-Net dataset id (500)")
    labels.add_argument("--name", default="activeseg", help="nnU-Net dataset name (activeseg)")


def run(args: argparse.Namespace) -> int:
    """Run a project subcommand; returns the exit code (2 if an import rejected a file).
    Its lines, warnings and error are appended to ``PROJECT/log.txt`` once the project
    exists (``predict --model`` has no project and no log)."""
    keep = LogFile()
    try:
        with logged_warnings(keep):
            return _run(args, tee(print, keep), keep)
    except BaseException as exc:
        keep(f"activeseg: error: {exc or type(exc).__name__}")
        raise
    finally:
        folder = _project_folder(args)
        if folder is not None and (folder / "project.json").is_file():
            keep.attach(folder / LOG_FILE)


def _project_folder(args: argparse.Namespace) -> Path | None:
    if args.command == "predict":
        return None if args.model is not None or not args.inputs else Path(args.inputs[0])
    return Path(args.project)


def _run(args: argparse.Namespace, say: Callable[[str], None], keep: LogFile) -> int:
    from activeseg.annotation.create import init_project
    from activeseg.annotation.project import Project
    from activeseg.annotation.state import DEFAULT_K, MASK_SUFFIX

    if args.command == "init":
        sets = parse_assignments(args.set)
        if args.seed is not None:
            sets["loop.seed"] = str(args.seed)
        if args.channel is not None:
            sets["data.channel"] = str(args.channel)
        holdout = [n.strip() for n in args.holdout.split(",") if n.strip()]
        init_project(
            args.project,
            args.images,
            masks=args.masks,
            pixel_size=args.pixel_size,
            base=base_config(args.preset, args.config),
            overrides=sets,
            holdout=holdout,
            mask_suffix=args.mask_suffix or MASK_SUFFIX,
            strategy=args.strategy,
            model=args.model,
            log=say,
        )
        say(_status_text(Project(args.project).status()))
        return 0
    if args.command == "predict":
        return _predict(args, say)
    project = Project(args.project)
    if args.command == "train":
        trained = project.train(progress=not args.quiet, force=args.force)
        if trained is None:
            say("the model is up to date (trained on every annotated region); --force retrains")
        say(_status_text(project.status()))
    elif args.command == "query":
        k = DEFAULT_K if args.k is None else args.k
        queries = project.query(k, args.strategy, progress=not args.quiet)
        for q in queries:
            r = q.region
            say(f"{q.id}: {r.image} rows {r.row}-{r.row + r.height} cols {r.col}-"
                  f"{r.col + r.width}, score {q.score:.4g}")  # fmt: skip
        files = " + ".join(f"<id>{suffix}.png" for suffix in project.names.manual)
        say(
            f"annotate them in {project.to_annotate}: save each corrected mask as {files} "
            f"next to <id>.png, then run `activeseg import {args.project}`"
        )
    elif args.command == "import":
        result = project.import_masks(args.source, args.suffix)
        say(f"imported {len(result.imported)} mask(s); {len(result.waiting)} region(s) wait")
        for path, reason in result.rejected:
            line = f"activeseg: error: rejected {path}: {reason}"
            print(line, file=sys.stderr)
            keep(line)
        if result.rejected:
            return 2
    elif args.command == "status":
        say(_status_text(project.status()))
    elif args.command == "export-labels":
        from activeseg.annotation.export import export_labels

        done = export_labels(
            project, args.out, args.format, dataset_id=args.dataset_id, name=args.name
        )
        say(f"{len(done.cases)} labelled image(s) as {args.format}: {done.folder}")
    return 0


def _predict(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    from activeseg.annotation.predict import predict_images
    from activeseg.annotation.project import Project

    known: dict[str, float | None] = {}
    if args.model is not None:
        from activeseg.modelfiles import load_model

        model, images = load_model(args.model), args.inputs
    else:
        if len(args.inputs) < 2:
            raise UserError("predict needs a PROJECT and IMAGES, or --model FILE and IMAGES")
        project, images = Project(args.inputs[0]), args.inputs[1:]
        model = project.segmenter()
        known = {i.name: i.pixel_size for i in project.settings.images}
    written = predict_images(
        model,
        images,
        args.out,
        uncertainty=args.uncertainty,
        pixel_size=args.pixel_size,
        channel=args.channel,
        overlap=args.overlap,
        progress=not args.quiet,
        known_sizes=known,
    )
    say(f"wrote {len(written)} mask file(s) to {args.out}")
    return 0


def _status_text(s: Status) -> str:
    lines = [
        f"images: {s.n_images} ({s.n_holdout} held out for validation)",
        f"annotated regions: {s.n_annotated}; waiting for annotation: {s.n_pending}",
    ]
    if s.rounds:
        last = s.rounds[-1]
        dice = "n/a (no held-out image)" if last.val_dice is None else f"{last.val_dice:.3f}"
        what = f"the model file {last.model}" if last.model else f"{last.n_patches} patches"
        lines.append(
            f"model: round {last.round}, {what}, held-out Dice {dice}"
            + ("" if s.up_to_date else " (older than the annotations: run train or query)")
        )
        curve = ", ".join(
            f"{r.n_patches}:{r.val_dice:.3f}" for r in s.rounds if r.val_dice is not None
        )
        if curve:
            lines.append(f"learning curve (patches:Dice): {curve}")
    else:
        lines.append("model: not trained yet (run `activeseg query` or `activeseg train`)")
    if s.pre_dice is not None:
        lines.append(f"Dice of the pre-annotations you corrected: {s.pre_dice:.3f}")
    if s.gain is None:
        lines.append("next round: benefit unknown until two rounds are trained on a held-out set")
    else:
        lines.append(
            f"next round (+{s.next_k} regions): estimated held-out Dice gain +{s.gain:.3f} "
            "(log-linear fit of the learning curve)"
        )
    return "\n".join(lines)

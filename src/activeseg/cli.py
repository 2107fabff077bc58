"""Command line: argument parsing only; every command calls a plain function.

``main(argv) -> int`` returns the exit code: 0 on success (and after ``--help`` /
``--version``), 2 for a user error or a usage error (printed as one line naming the file or
option, no traceback), 1 for an operating-system error such as a full disk, 130 when
interrupted. Warnings print as one line ``activeseg: warning: ...`` each.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from activeseg import __version__
from activeseg.config import Config, parse_assignments, save_yaml, with_overrides
from activeseg.errors import UserError
from activeseg.presets import add_base_options, base_config, preset


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activeseg", description="Deep active learning for microscopy segmentation."
    )
    parser.add_argument("--version", action="version", version=f"activeseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate active learning on labelled data")
    sim.add_argument(
        "--data", help="BIDS or images/+masks/ folder, or 'synthetic' (default: the preset's)"
    )
    add_base_options(sim)
    sim.add_argument("--strategies", help="comma-separated, e.g. random,std_edt")
    sim.add_argument("--repetitions", type=int)
    sim.add_argument("--iterations", type=int)
    sim.add_argument("-k", "--query-size", type=int, help="patches labelled per iteration")
    sim.add_argument("--seed", type=int)
    sim.add_argument(
        "--pool-policy",
        choices=("remove", "keep"),
        help="remove labelled patches from the pool (default) or keep them re-selectable",
    )
    sim.add_argument("--pixel-size", type=float, help="µm per pixel of a plain folder's images")
    sim.add_argument("--channel", type=int, help="channel (0-based) of multi-channel images")
    sim.add_argument(
        "--init",
        choices=("scratch", "warm"),
        help="train each iteration from scratch (paper) or fine-tune the previous model",
    )
    sim.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        help="bf16 autocast for training and MC scoring; auto: where the hardware has it",
    )
    sim.add_argument("--out", type=Path, required=True, help="run directory")
    sim.add_argument("--resume", action="store_true", help="continue the run in --out")
    sim.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set train.epochs=100",
    )
    sim.add_argument(
        "--upper-bound",
        action=argparse.BooleanOptionalAction,
        help="also train once per repetition on the whole pool (default: the preset's, on)",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress output")
    scale = sim.add_argument_group("scaling (changes no result at equal --cpus-per-run)")
    scale.add_argument("--workers", type=int, default=1, help="local processes running runs")
    scale.add_argument(
        "--ray", metavar="auto|ADDRESS", help="run the runs as Ray tasks (activeseg[ray])"
    )
    scale.add_argument("--cpus-per-run", type=int, help="torch threads (and Ray CPUs) per run")
    scale.add_argument("--gpus-per-run", type=float, help="GPUs a Ray task requests")
    scale.add_argument("--shards", type=int, default=1, help="Ray actors scoring each pool")

    demo = sub.add_parser("demo", help="short simulation on the built-in synthetic phantom")
    demo.add_argument("--out", type=Path, default=Path("activeseg-demo"))
    demo.add_argument("--quiet", action="store_true")

    rep = sub.add_parser("report", help="write the HTML report, figures and CSVs of a run")
    rep.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    rep.add_argument("--out", type=Path, help="HTML file (default RUN_DIR/report/report.html)")
    cost = rep.add_mutually_exclusive_group()
    cost.add_argument(
        "--minutes-per-axon",
        type=float,
        help="annotation hours as myelinated axons x this (default for axon/myelin labels: 3)",
    )
    cost.add_argument(
        "--minutes-per-patch", type=float, help="annotation hours as patches x this (any data)"
    )

    bench = sub.add_parser(
        "bench", help="benchmarks: MC scoring vs baal and a naive loop, training, one iteration"
    )
    bench.add_argument("--quick", action="store_true", help="tiny sizes (checks the plumbing)")
    bench.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    bench.add_argument("--sem", help="BIDS SEM folder for the AL-iteration benchmark")

    exp = sub.add_parser("export", help="write the model of a run or project to a file")
    exp.add_argument("source", type=Path, metavar="RUN_DIR|PROJECT")
    exp.add_argument("--out", type=Path, required=True, help="model file to write (.pt)")
    exp.add_argument("--strategy", help="a run's strategy whose final model (default: the first)")
    exp.add_argument("--repetition", type=int, default=0, help="a run's repetition (default 0)")
    exp.add_argument("--onnx", type=Path, metavar="FILE", help="also write the network as ONNX")

    from activeseg.annotation import cli as project_cli

    project_cli.add_parsers(sub)

    get = sub.add_parser("get-data", help="download a public dataset, pinned by checksums")
    get.add_argument("dataset", choices=("data_axondeepseg_sem",), help="which dataset")
    get.add_argument("out", type=Path, metavar="OUT", help="new folder for the dataset")
    check = sub.add_parser("check-data", help="verify a dataset against activeseg's checksums")
    check.add_argument("folder", type=Path, metavar="FOLDER")
    check.add_argument("--dataset", default="data_axondeepseg_sem", help="(default %(default)s)")

    show = sub.add_parser("config", help="print the resolved config of a preset as YAML")
    show.add_argument("--preset", default="cpu")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return parser


def simulate_config(args: argparse.Namespace) -> Config:
    """The config of ``simulate``'s arguments: ``--preset`` or ``--config``, then named flags,
    then ``--set``."""
    flags = {
        "data.source": args.data,
        "data.source_pixel_size": args.pixel_size,
        "data.channel": args.channel,
        "loop.strategies": args.strategies,
        "loop.repetitions": args.repetitions,
        "loop.iterations": args.iterations,
        "loop.query_size": args.query_size,
        "loop.seed": args.seed,
        "loop.pool_policy": args.pool_policy,
        "loop.upper_bound": args.upper_bound,
        "train.init": args.init,
        "train.precision": args.precision,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    sets = parse_assignments(args.set)
    clash = sorted(set(given) & set(sets))
    if clash:
        raise UserError(f"{', '.join(clash)} given both as a flag and with --set; give it once")
    return with_overrides(with_overrides(base_config(args.preset, args.config), given), sets)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 0 after --help / --version, 2 for a usage error
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    from activeseg.console import show_warning

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show_warning
        try:
            return _run(args)
        except UserError as exc:
            print(f"activeseg: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("activeseg: interrupted; continue with --resume", file=sys.stderr)
            return 130
        except OSError as exc:  # a full disk, lost permissions: finished iterations are kept
            print(
                f"activeseg: error: {exc}; fix the cause, then continue with --resume",
                file=sys.stderr,
            )
            return 1


def _export(args: argparse.Namespace) -> int:
    from activeseg.modelfiles import export_model, export_onnx, load_model

    done = export_model(args.source, args.out, strategy=args.strategy, repetition=args.repetition)
    classes = ", ".join(done.config.data.class_names)
    print(f"the model of {done.describe()} (classes {classes}): {args.out}")
    if args.onnx is not None:
        export_onnx(load_model(args.out, device="cpu"), args.onnx)
        print(f"ONNX: {args.onnx}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from activeseg.annotation import cli as project_cli
    from activeseg.report import text_summary, write_report
    from activeseg.simulation import Execution, simulate

    if args.command in project_cli.COMMANDS:
        return project_cli.run(args)
    if args.command == "get-data":
        from activeseg.data.download import fetch_dataset

        fetch_dataset(args.out, args.dataset)
        return 0
    if args.command == "check-data":
        from activeseg.data.download import check_dataset

        n = check_dataset(args.folder, args.dataset)
        print(f"{args.folder}: all {n} files of {args.dataset} match activeseg's checksums")
        return 0
    if args.command == "config":
        print(save_yaml(with_overrides(preset(args.preset), parse_assignments(args.set))), end="")
        return 0
    if args.command == "bench":
        from activeseg.bench import bench

        return bench(args.quick, args.json, args.sem)
    if args.command == "export":
        return _export(args)
    if args.command == "report":
        html = write_report(args.run_dir, args.out, args.minutes_per_axon, args.minutes_per_patch)
        print(f"report: {html.resolve()}")
        return 0
    execution = Execution()
    if args.command == "demo":
        config, resume = preset("demo"), (args.out / "config.yaml").exists()
    else:
        config, resume = simulate_config(args), args.resume
        execution = Execution(
            args.workers, args.ray, args.cpus_per_run, args.gpus_per_run, args.shards
        )
    from activeseg.console import LOG_FILE, LogFile, echo, logged_warnings, tee

    show = (lambda line: None) if args.quiet else echo
    out = simulate(
        config, args.out, resume=resume, progress=not args.quiet, log=show, execution=execution
    )
    keep = LogFile(out / LOG_FILE)  # the summary too is part of what the terminal showed
    say = tee(print, keep)
    with logged_warnings(keep):
        say(text_summary(out))
        say(f"results: {out.resolve()}")
        say(f"report: {write_report(out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

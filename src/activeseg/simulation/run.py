"""The paper's simulation: strategies x repetitions of the active-learning loop on labelled
data with the ground truth as oracle, written to a run directory (resumable).

:func:`simulate` checks the config and the data, opens the run directory and executes the
unfinished :class:`~activeseg.simulation.tasks.GridTask` s as ``execution`` says (in this
process, a process pool or Ray; :mod:`activeseg.simulation.executors`). The run directory
gets ``log.txt`` (the lines shown, appended per session; :mod:`activeseg.console`) and
``environment.json`` (:mod:`activeseg.environment`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from activeseg.acquisition import strategies_of
from activeseg.acquisition.registry import registered_here
from activeseg.config import Config
from activeseg.console import LOG_FILE, LogFile, echo, logged_warnings, progress_bar, tee
from activeseg.data.prepare import Prepared, prepare
from activeseg.environment import ENVIRONMENT_FILE, describe, record_environment
from activeseg.errors import UserError
from activeseg.files import disk_usage, remove_temporaries
from activeseg.learners import NetworkFactory
from activeseg.runtime import resolve
from activeseg.simulation.executors import Execution, make_executor
from activeseg.simulation.rundir import RunDirectory
from activeseg.simulation.tasks import (
    TaskResult,
    execute_packed,
    execute_task,
    pack,
    pending_tasks,
)
from activeseg.validation import validate


def simulate(
    config: Config,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = echo,
    execution: Execution | None = None,
    network: NetworkFactory | None = None,
) -> Path:
    """Run (or resume) the simulation of ``config`` into the run directory ``out``.

    ``network``: a factory of your own network (default: the config's U-Net). The
    (strategy x repetition) runs and the upper bounds not yet finished are executed as
    ``execution`` says (default: one after the other in this process). Runs write their
    records, checkpoints and maps themselves; this process holds the directory's lock and
    stores the upper bounds. ``progress``: progress bars (on a terminal only); ``log``: where
    the plain lines go (besides the run's ``log.txt``, which always gets them)."""
    keep = LogFile()
    with logged_warnings(keep):
        return _simulate(config, out, resume, progress, tee(log, keep), keep, execution, network)


def _simulate(
    config: Config,
    out: Path,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
    keep: LogFile,
    execution: Execution | None,
    network: NetworkFactory | None,
) -> Path:
    validate(config)
    strategies_of(config)  # unknown or unsuitable strategies fail before any work
    execution = execution or Execution()
    resolve(config.train.device, config.train.precision)  # a bad device fails before any work
    lc = config.loop
    data = prepare(config.data)  # before the run directory: bad data must not leave a run
    needed = lc.query_size if lc.pool_policy == "keep" else lc.iterations * lc.query_size
    if needed > len(data.split.pool):
        raise UserError(
            f"the pool holds {len(data.split.pool)} patches but {lc.iterations} iterations x "
            f"k={lc.query_size} need {needed}; lower --iterations or -k"
        )
    with RunDirectory(out, config, resume) as run:
        keep.attach(out / LOG_FILE)
        try:
            _run(run, config, data, progress, log, execution, network)
        except BaseException as exc:
            keep(f"stopped: {type(exc).__name__}: {exc}")
            raise
    return out


def _run(
    run: RunDirectory,
    config: Config,
    data: Prepared,
    progress: bool,
    log: Callable[[str], None],
    execution: Execution,
    network: NetworkFactory | None,
) -> None:
    """Execute the unfinished tasks of ``run`` and store their upper bounds."""
    lc, out = config.loop, run.root
    runtime = resolve(config.train.device, config.train.precision)
    grid = {"workers": execution.workers, "ray": execution.ray, "shards": execution.shards}
    changed = record_environment(out, describe(runtime, execution.threads(), execution=grid))
    if changed:
        log(
            f"note: {ENVIRONMENT_FILE} differs from the earlier session's ({'; '.join(changed)}); "
            "results may differ in the last bits from the iterations recorded before"
        )
    run.load_or_save_split(data.split_record())
    log(
        f"data: {len(data.patches)} patches of {config.data.patch_size}px; "
        f"initial {len(data.split.initial)}, pool {len(data.split.pool)}, "
        f"val {len(data.split.val)}, test {len(data.split.test)}; device {runtime.device}"
        f"{' bf16' if runtime.bf16 else ''}"
    )
    tasks, done = pending_tasks(
        run,
        config,
        execution.shards,
        quiet=not progress,
        strategies=registered_here(),
        network=network,
    )
    total = lc.repetitions * (len(lc.strategies) * (lc.iterations + 1) + lc.upper_bound)
    bar = progress_bar(total=total, initial=done, desc="trainings", enabled=progress, unit="it")
    executor = make_executor(execution, config.train.device)
    in_process = execution.workers == 1 and execution.ray is None

    def tick(line: str) -> None:  # in this process, the bar moves with each iteration
        log(line)
        bar.update()

    results = (
        executor.run(functools.partial(execute_task, log=tick, progress=progress, data=data), tasks)
        if in_process
        else executor.run(execute_packed, [pack(t) for t in tasks])
    )
    for result in results:
        _store(run, result, log)
        if not in_process or result.upper_bound is not None:
            bar.update(result.trainings)
    bar.close()
    remove_temporaries(out)  # of workers killed mid-write and retried; none is writing now
    size, files = disk_usage(out)
    log(f"run directory {out}: {size / 1e6:.1f} MB in {files} files")


def _store(run: RunDirectory, result: TaskResult, log: Callable[[str], None]) -> None:
    """Store a finished task's upper-bound record (its runs wrote their own records)."""
    r = result.upper_bound
    if r is not None:
        run.append_upper_bound(r)
        log(
            f"upper bound rep {r['repetition']}: {r['n_labelled']} labelled, "
            f"test dice {r['test_dice']:.3f}"
        )

"""The paper's simulation: strategies x repetitions of the active-learning loop on labelled
data with the ground truth as oracle, written to a run directory (resumable).

:func:`simulate` checks the config and the data, opens the run directory and executes the
unfinished :class:`~activeseg.simulation.tasks.GridTask` s as ``execution`` says (in this
process, a process pool or Ray; :mod:`activeseg.simulation.executors`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from activeseg.acquisition import strategies_of
from activeseg.acquisition.registry import registered_here
from activeseg.config import Config, validate
from activeseg.data.prepare import prepare
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


def simulate(
    config: Config,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
    execution: Execution | None = None,
    network: NetworkFactory | None = None,
) -> Path:
    """Run (or resume) the simulation of ``config`` into the run directory ``out``.

    ``network``: a factory of your own network (default: the config's U-Net). The
    (strategy x repetition) runs and the upper bounds not yet finished are executed as
    ``execution`` says (default: one after the other in this process). Runs write their
    records, checkpoints and maps themselves; this process holds the directory's lock and
    stores the upper bounds."""
    validate(config)
    strategies_of(config)  # unknown or unsuitable strategies fail before any work
    execution = execution or Execution()
    runtime = resolve(config.train.device, config.train.precision)
    lc = config.loop
    data = prepare(config.data)  # before the run directory: bad data must not leave a run
    needed = lc.query_size if lc.pool_policy == "keep" else lc.iterations * lc.query_size
    if needed > len(data.split.pool):
        raise UserError(
            f"the pool holds {len(data.split.pool)} patches but {lc.iterations} iterations x "
            f"k={lc.query_size} need {needed}; lower --iterations or -k"
        )
    with RunDirectory(out, config, resume) as run:
        run.load_or_save_split(data.split.to_dict())
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
        bar = tqdm(total=total, initial=done, desc="trainings", disable=not progress, unit="it")
        executor = make_executor(execution, config.train.device)
        in_process = execution.workers == 1 and execution.ray is None

        def tick(line: str) -> None:  # in this process, the bar moves with each iteration
            log(line)
            bar.update()

        results = (
            executor.run(
                functools.partial(execute_task, log=tick, progress=progress, data=data), tasks
            )
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
    return out


def _store(run: RunDirectory, result: TaskResult, log: Callable[[str], None]) -> None:
    """Store a finished task's upper-bound record (its runs wrote their own records)."""
    r = result.upper_bound
    if r is not None:
        run.append_upper_bound(r)
        log(
            f"upper bound rep {r['repetition']}: {r['n_labelled']} labelled, "
            f"test dice {r['test_dice']:.3f}"
        )

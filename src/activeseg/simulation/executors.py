"""Where the independent runs of a grid execute: in this process, on a local process pool,
or as Ray tasks on a local or remote Ray cluster.

An executor receives a picklable function and picklable tasks and yields the function's
results as the tasks finish (in task order in this process, in completion order elsewhere).
It never changes a result, with one caveat: PyTorch's CPU kernels reduce in an order that
depends on the number of intra-op threads, so a run is bit-identical between executors only
when it runs with the same number of threads (``cpus_per_run``, recorded per iteration as
``torch_threads``). Executors set that number in every process that computes for a run.

Ray is optional (``pip install activeseg[ray]``) and imported only when used. A Ray
instance that this module starts itself listens on the loopback interface only.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from activeseg.errors import UserError

T = TypeVar("T")
R = TypeVar("R")

RAY_MAX_RETRIES = 3
"""Times Ray reruns a task whose worker died (a resumed run continues from its records)."""


def available_cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads in this process (``None``: leave as it is)."""
    if threads is not None:
        torch.set_num_threads(threads)


def call_with_threads(fn: Callable[[T], R], threads: int | None, task: T) -> R:
    """``fn(task)`` with ``threads`` torch threads (the body of a pool or Ray task)."""
    set_threads(threads)
    return fn(task)


@dataclass(frozen=True)
class Execution:
    """How to execute a grid; never part of a run's config, since it changes no result
    (at equal ``cpus_per_run``), so a run may be resumed with other execution options.

    ``workers``: local processes (1: this process). ``ray``: ``"auto"`` (the running Ray
    cluster, else a new local one) or a cluster address; runs become Ray tasks.
    ``cpus_per_run``: torch threads of each run and the CPUs a Ray task requests (default:
    the cores divided by the workers; 1 per Ray task). ``gpus_per_run``: GPUs a Ray task
    requests (default: 1 when the cluster has GPUs and ``train.device`` is not ``cpu``).
    ``shards``: Ray actors scoring each run's pool (:mod:`activeseg.shards`).
    """

    workers: int = 1
    ray: str | None = None
    cpus_per_run: int | None = None
    gpus_per_run: float | None = None
    shards: int = 1

    def __post_init__(self) -> None:
        checks = [
            (self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
            (self.shards >= 1, f"--shards must be >= 1, got {self.shards}"),
            (
                self.cpus_per_run is None or self.cpus_per_run >= 1,
                f"--cpus-per-run must be >= 1, got {self.cpus_per_run}",
            ),
            (
                self.gpus_per_run is None or self.gpus_per_run >= 0,
                f"--gpus-per-run must be >= 0, got {self.gpus_per_run}",
            ),
            (
                self.ray is None or self.workers == 1,
                "--workers and --ray exclude each other: Ray runs as many runs at once as "
                "the cluster's resources allow",
            ),
            (self.ray is not None or self.shards == 1, "--shards needs --ray auto|ADDRESS"),
            (self.ray is not None or self.gpus_per_run is None, "--gpus-per-run needs --ray"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def threads(self) -> int | None:
        """Torch threads of each run (``None``: this process's setting, unchanged)."""
        if self.cpus_per_run is not None:
            return self.cpus_per_run
        if self.ray is not None:
            return 1
        if self.workers > 1:
            return max(1, available_cores() // self.workers)
        return None


class Executor(Protocol):
    def run(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        """``fn(task)`` of every task, yielded as each finishes."""
        ...


@dataclass(frozen=True)
class InProcess:
    """Runs the tasks one after the other in this process."""

    threads: int | None = None

    def run(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        previous = torch.get_num_threads()
        set_threads(self.threads)
        try:
            for task in tasks:
                yield fn(task)
        finally:
            torch.set_num_threads(previous)


@dataclass(frozen=True)
class ProcessPool:
    """Runs the tasks on ``workers`` fresh (spawned) processes of ``threads`` torch threads
    each. On a failure the runs not started are cancelled and the running ones stopped."""

    workers: int
    threads: int | None

    def run(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=set_threads,
            initargs=(self.threads,),
        )
        pending: set[Future[R]] = set()
        try:
            pending = {pool.submit(fn, task) for task in tasks}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            # ProcessPoolExecutor has no public way to stop running work before 3.14.
            for process in getattr(pool, "_processes", {}).values():
                process.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class RayTasks:
    """Runs each task as a Ray task of ``cpus`` CPUs (and torch threads) and ``gpus`` GPUs,
    retried up to :data:`RAY_MAX_RETRIES` times when its worker dies. Ray must be
    connected (:func:`connect_ray`). On a failure the other tasks are cancelled."""

    cpus: int
    gpus: float = 0
    max_retries: int = RAY_MAX_RETRIES

    def run(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        import ray

        remote = ray.remote(call_with_threads).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.max_retries
        )
        pending = [remote.remote(fn, self.cpus, task) for task in tasks]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield _ray_result(done[0])
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise


def _ray_result(ref: Any) -> Any:
    """The value of a finished Ray task; a :class:`UserError` raised in it is re-raised as
    itself (one line for the command line), anything else with Ray's remote traceback."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, UserError):
            raise cause from exc
        raise


def make_executor(execution: Execution, device: str = "cpu") -> Executor:
    """The executor of ``execution`` (connects to Ray if asked); ``device`` is the config's
    ``train.device``, which decides whether Ray tasks request a GPU by default."""
    threads = execution.threads()
    if execution.ray is None:
        if execution.workers == 1:
            return InProcess(threads)
        return ProcessPool(execution.workers, threads)
    ray = connect_ray(execution.ray)
    gpus = execution.gpus_per_run
    if gpus is None:
        gpus = 1 if device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    return RayTasks(threads or 1, gpus)


def connect_ray(address: str) -> Any:
    """Connect this process to Ray (once) and return the ``ray`` module.

    ``address``: ``"auto"`` joins the cluster started on this machine (``ray start --head``)
    or named by ``RAY_ADDRESS``, else starts a local instance on the loopback interface;
    anything else is a cluster address (``HOST:PORT`` or ``ray://HOST:PORT``)."""
    try:
        import ray
    except ImportError as exc:
        raise UserError("--ray needs the optional Ray extra: pip install 'activeseg[ray]'") from exc
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=address, log_to_driver=True)
    except ConnectionError as exc:
        if address != "auto":
            raise UserError(
                f"--ray {address}: no Ray cluster answers there ({exc}); start one with "
                "`ray start --head` or use --ray auto"
            ) from exc
        start_local_ray()
    return ray


def start_local_ray(num_cpus: int | None = None) -> None:
    """Start a Ray instance in this process's machine that binds the loopback address only
    (Ray otherwise binds the machine's network address), without the dashboard."""
    import ray
    from ray._private import ray_constants

    # Ray picks the loopback address where it does not support clusters (macOS, Windows);
    # the flag is read when a node or worker starts: set here and for Ray's processes.
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)

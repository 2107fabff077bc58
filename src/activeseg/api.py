"""The Python API in one call: :func:`simulate` a study from a notebook or a script.

Everything else a user needs is importable from ``activeseg`` itself (see its docstring);
``docs/api.md`` walks through an example with your own network and strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from activeseg.config import Config, with_overrides
from activeseg.learners import NetworkFactory
from activeseg.presets import preset
from activeseg.report.records import Run, load_run
from activeseg.simulation import Execution
from activeseg.simulation import simulate as run_simulation


def simulate(
    config: Config | str,
    out: str | Path,
    *,
    data: str | Path | None = None,
    strategies: Sequence[str] | None = None,
    settings: Mapping[str, Any] | None = None,
    network: NetworkFactory | None = None,
    workers: int = 1,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> Run:
    """Simulate active learning and return the run read back (records, upper bound, split).

    ``config``: a :class:`~activeseg.config.Config` or a preset name (``"demo"``, ``"cpu"``,
    ...); ``data``: a BIDS or images/+masks/ folder, an MSD task, or ``"synthetic"``;
    ``strategies``: names (built-in, registered with
    :func:`~activeseg.acquisition.register_strategy`, or from an installed plugin);
    ``settings``: dotted overrides such as ``{"loop.iterations": 2}``; ``network``: a factory
    of your own ``torch.nn.Module`` (default: the config's U-Net); ``workers``: local
    processes running the (strategy x repetition) runs; ``out``: the run directory
    (``resume`` continues it). Progress lines go to ``log``.
    """
    cfg = preset(config) if isinstance(config, str) else config
    overrides: dict[str, Any] = dict(settings or {})
    if data is not None:
        overrides["data.source"] = str(data)
    if strategies is not None:
        overrides["loop.strategies"] = tuple(strategies)
    cfg = with_overrides(cfg, overrides)
    root = run_simulation(
        cfg,
        Path(out),
        resume=resume,
        progress=False,
        log=log,
        execution=Execution(workers=workers),
        network=network,
    )
    return load_run(root)

"""One active-learning iteration of the ``cpu`` preset, end to end."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from activeseg.bench.measure import Sizes
from activeseg.config import with_overrides
from activeseg.files import read_records
from activeseg.presets import preset


def bench_iteration(sem: str | None, sizes: Sizes) -> dict[str, float]:
    """Seconds of iteration 0 (the record's ``seconds``: train, eval and its parts, score; and
    the total of train, eval and score) of the
    ``cpu`` preset with ``std_edt``, on the SEM folder ``sem`` or else the phantom (sized
    for the preset's split by :func:`activeseg.data.synthetic.phantom_layout`)."""
    from activeseg.simulation import simulate

    overrides: dict[str, Any] = {
        "data.source": sem or "synthetic",
        "loop.strategies": "std_edt",
        "loop.repetitions": 1,
        "loop.iterations": 1,
        "loop.upper_bound": False,
        **sizes.sem_overrides,
    }
    config = with_overrides(preset("cpu"), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = simulate(config, Path(tmp) / "run", progress=False, log=lambda line: None)
        record = read_records(out / "records-std_edt-rep0.jsonl")[0]
    seconds = {k: float(v) for k, v in record["seconds"].items()}
    return {**seconds, "total": seconds["train"] + seconds["eval"] + seconds["score"]}

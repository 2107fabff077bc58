"""Strategies by name: the built-in ones, those of installed packages and your own.

A strategy is made by a *factory* ``(ScoringConfig) -> Strategy``, so one name serves every
setting of ``scoring`` (the EDT mode, the threshold, max_cover's K). Names come from, in this
order of precedence:

1. :func:`register_strategy` in this process (a notebook, a script, a test);
2. the entry-point group :data:`ENTRY_POINT_GROUP` of installed packages, e.g. in a plugin's
   ``pyproject.toml``::

       [project.entry-points."activeseg.strategies"]
       margin = "my_package.strategies:make_margin"

3. the built-in :data:`BUILT_IN` strategies.

``<name>@<committee>`` runs any of them on a committee (:class:`OnCommittee`). Strategies
registered in this process travel with a simulation's tasks to ``--workers`` processes and
Ray tasks (:func:`registered_here`); entry points are found by every process by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points

from activeseg.acquisition.strategies import (
    MapStrategy,
    MaxCoverStrategy,
    NathStrategy,
    OnCommittee,
    RandomStrategy,
    Strategy,
)
from activeseg.config import COMMITTEE_KINDS, Config, ScoringConfig
from activeseg.errors import UserError

StrategyFactory = Callable[[ScoringConfig], Strategy]
ENTRY_POINT_GROUP = "activeseg.strategies"

BUILT_IN: dict[str, StrategyFactory] = {
    "random": lambda s: RandomStrategy(),
    "std_sum": lambda s: MapStrategy("std_sum", threshold=s.threshold),
    "std_mean": lambda s: MapStrategy("std_mean", reduction="mean", threshold=s.threshold),
    "var_sum": lambda s: MapStrategy("var_sum", "var", threshold=s.threshold),
    "std_edt": lambda s: MapStrategy("std_edt", edt=s.edt, threshold=s.threshold),
    "entropy": lambda s: MapStrategy("entropy", "entropy", reduction="mean"),
    "bald": lambda s: MapStrategy("bald", "bald", reduction="mean"),
    "ensemble": lambda s: MapStrategy(
        "ensemble", "entropy", reduction="mean", committee="ensemble"
    ),
    "svgd": lambda s: MapStrategy("svgd", "entropy", reduction="mean", committee="svgd"),
    "svgd_mi": lambda s: NathStrategy(),
    # Kuo et al. 2018: the Jensen-Shannon divergence of the members' (here MC samples';
    # jsd@<committee> for committee members) predictions, averaged over pixels. With equal
    # weights JSD = H(mean) - mean H(member): BALD's map, reused.
    "jsd": lambda s: MapStrategy("jsd", "bald", reduction="mean"),
    "max_cover": lambda s: MaxCoverStrategy(candidates=s.cover_candidates),
}
"""The strategies of activeseg itself (see ``docs/strategies.md``)."""

_HERE: dict[str, StrategyFactory] = {}


def register_strategy(name: str, factory: StrategyFactory) -> None:
    """Make ``factory`` (``ScoringConfig -> Strategy``) available as strategy ``name``, in
    the CLI, :func:`activeseg.simulate` (also on ``workers``/Ray) and projects. A later
    registration of the same name replaces the earlier one; a name may shadow a built-in."""
    if not name or "@" in name or "," in name:
        raise UserError(f"strategy name {name!r} must be non-empty without '@' or ','")
    if not callable(factory):
        raise UserError(f"register_strategy({name!r}, ...): the factory must be callable")
    _HERE[name] = factory


def registered_here() -> dict[str, StrategyFactory]:
    """The strategies registered in this process (what a worker process must register)."""
    return dict(_HERE)


def register_all(factories: Mapping[str, StrategyFactory]) -> None:
    """Register several strategies at once (a worker receiving :func:`registered_here`)."""
    for name, factory in factories.items():
        register_strategy(name, factory)


def available() -> dict[str, StrategyFactory]:
    """Every strategy name this process knows, with its factory."""
    plugins = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    out: dict[str, StrategyFactory] = dict(BUILT_IN)
    for name, ep in plugins.items():
        out[name] = _entry_point_factory(ep)
    out.update(_HERE)
    return out


def _entry_point_factory(ep: object) -> StrategyFactory:
    def factory(scoring: ScoringConfig) -> Strategy:
        try:
            made = ep.load()  # type: ignore[attr-defined]
        except Exception as exc:  # a broken plugin must name itself
            raise UserError(f"strategy plugin {ep!r} failed to load: {exc}") from exc
        return made(scoring)

    return factory


def get_strategy(name: str, scoring: ScoringConfig | None = None) -> Strategy:
    """The strategy ``name`` for the settings ``scoring`` (default: the defaults), or
    ``<name>@<committee>`` for strategy ``name`` run on a committee."""
    base, sep, kind = name.partition("@")
    factories = available()
    if base not in factories or (sep and kind not in COMMITTEE_KINDS):
        raise UserError(
            f"unknown strategy {name!r}; choose from: {', '.join(factories)} (or "
            f"<strategy>@<committee>, committee one of {', '.join(COMMITTEE_KINDS)})"
        )
    strategy = factories[base](scoring or ScoringConfig())
    for attribute in ("name", "needs_mc", "committee", "score", "finalize"):
        if not hasattr(strategy, attribute):
            raise UserError(
                f"strategy {base!r} has no {attribute!r}: a strategy has name, needs_mc, "
                "committee, score() and finalize() (activeseg.acquisition.Strategy)"
            )
    return OnCommittee(strategy, kind) if sep else strategy


def strategies_of(config: Config) -> list[Strategy]:
    """The strategies of ``config.loop.strategies``, checked against the config before any
    work starts: max_cover needs K >= k."""
    out = [get_strategy(name, config.scoring) for name in config.loop.strategies]
    for strategy in out:
        if getattr(strategy, "needs_features", False) and (
            config.scoring.cover_candidates < config.loop.query_size
        ):
            raise UserError(
                f"scoring.cover_candidates ({config.scoring.cover_candidates}) must be >= "
                f"loop.query_size ({config.loop.query_size}) for {strategy.name}"
            )
    return out

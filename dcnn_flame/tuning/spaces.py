"""Search spaces: a :class:`~dcnn_flame.config.SearchConfig` -> Tune's ``param_space`` and back.

A trial's config (what Tune stores and shows) is flat: one entry per grid key (dotted
TrainConfig path), ``variant`` (an ablation's name) when the search has variants, and ``seed``.
:func:`trial_overrides` turns it into the TrainConfig overrides of that trial.
"""
from __future__ import annotations

from typing import Any

from dcnn_flame.config import SearchConfig

__all__ = ["VARIANT", "SEED", "trial_count", "param_space", "trial_overrides", "point_label", "check_search"]

VARIANT = "variant"
SEED = "seed"


def check_search(search: SearchConfig) -> None:
    """Raise ValueError naming what is wrong with a search definition."""
    if not search.grid and not search.variants:
        raise ValueError(f"search {search.name!r} has neither a grid nor variants: nothing to try")
    for key, values in search.grid.items():
        if not list(values):
            raise ValueError(f"search {search.name!r}: grid key {key!r} has no values")
        if key in (VARIANT, SEED):
            raise ValueError(f"search {search.name!r}: {key!r} is reserved; use variants/seeds")
    if not list(search.seeds):
        raise ValueError(f"search {search.name!r}: seeds is empty (use [0] for one repeat)")


def trial_count(search: SearchConfig) -> int:
    """Number of trials of the search (grid points x variants x seeds)."""
    n = len(search.seeds)
    for values in search.grid.values():
        n *= len(values)
    return n * max(1, len(search.variants))


def param_space(search: SearchConfig) -> dict[str, Any]:
    """Tune ``param_space``: grid searches over every grid key, the variants and the seeds."""
    from ray import tune

    check_search(search)
    space: dict[str, Any] = {key: tune.grid_search(list(values)) for key, values in search.grid.items()}
    if search.variants:
        space[VARIANT] = tune.grid_search(list(search.variants))
    space[SEED] = tune.grid_search([int(s) for s in search.seeds])
    return space


def trial_overrides(search: SearchConfig, trial_config: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig overrides of one trial: its grid values, its variant's overrides, its seed."""
    out: dict[str, Any] = {key: trial_config[key] for key in search.grid}
    if search.variants:
        name = trial_config[VARIANT]
        if name not in search.variants:
            raise KeyError(f"variant {name!r} is not in search {search.name!r} ({list(search.variants)})")
        out.update(dict(search.variants[name] or {}))
    out["trainer.seed"] = int(trial_config[SEED])
    return out


def point_label(search: SearchConfig, trial_config: dict[str, Any]) -> str:
    """The grid point / variant a trial belongs to, without its seed (rows of the table)."""
    parts = [f"{search.labels.get(k, k)}={trial_config[k]}" for k in search.grid]
    if search.variants:
        parts.insert(0, str(trial_config[VARIANT]))
    return ", ".join(parts)

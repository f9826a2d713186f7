"""Group images of one identity into multi-view samples and split identities train/val.

Everything is a pure function of (inputs, seed): reruns and other machines get the same
groups, splits and therefore the same shard contents.

Identities whose image count is not a multiple of ``num_views`` (including identities with
fewer than ``num_views`` images), by ``policy``:

- "pad" (default): the last group is completed with other images of the same identity,
  drawn at random from the identity's images not already in that group; an identity with
  fewer than ``num_views`` images repeats images (a 1-image identity gives 4 copies of one
  view, which still trains the single-view terms). No image is lost.
- "drop": the incomplete group is dropped; its images are reported (reason
  "too_few_views") so the loss is visible in the failures table.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

POLICIES = ("pad", "drop")


def stable_seed(*parts) -> int:
    """A 64-bit seed from any printable parts (stable across processes, unlike hash())."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little")


def split_identities(identities: Sequence[str], val_fraction: float, seed: int) -> dict[str, str]:
    """identity -> "train" | "val". Identities are ordered by a seeded hash and the first
    ``round(n * val_fraction)`` (at least 1 when val_fraction > 0 and n > 1) go to val."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = sorted(set(identities))
    n_val = int(round(len(ids) * val_fraction))
    if val_fraction > 0 and len(ids) > 1:
        n_val = max(1, min(n_val, len(ids) - 1))
    ordered = sorted(ids, key=lambda i: stable_seed("split", seed, i))
    val = set(ordered[:n_val])
    return {i: ("val" if i in val else "train") for i in ids}


@dataclass(frozen=True)
class ViewGroup:
    """One sample: ``rows`` are indices into the caller's image table, length num_views."""

    identity: str
    group: int
    rows: tuple[int, ...]


def group_views(identity_of_row: Sequence[str], num_views: int, policy: str, seed: int
                ) -> tuple[list[ViewGroup], list[int]]:
    """Group image rows by identity into samples of ``num_views`` views.

    Args:
        identity_of_row: identity of each image row (the row order should be deterministic,
            e.g. sorted by URI).
        num_views: views per sample (>= 1).
        policy: "pad" or "drop" (module docstring).
        seed: grouping seed.

    Returns:
        (groups sorted by identity then group index, rows dropped by the "drop" policy).
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    by_id: dict[str, list[int]] = {}
    for r, ident in enumerate(identity_of_row):
        by_id.setdefault(ident, []).append(r)
    groups: list[ViewGroup] = []
    dropped: list[int] = []
    for ident in sorted(by_id):
        rows = np.asarray(by_id[ident], dtype=np.int64)
        rng = np.random.default_rng(stable_seed("views", seed, ident))
        rows = rows[rng.permutation(len(rows))]
        n_full = len(rows) // num_views
        for g in range(n_full):
            groups.append(ViewGroup(ident, g, tuple(int(x) for x in rows[g * num_views:(g + 1) * num_views])))
        rest = rows[n_full * num_views:]
        if len(rest) == 0:
            continue
        if policy == "drop":
            dropped.extend(int(x) for x in rest)
            continue
        others = np.setdiff1d(rows, rest)
        need = num_views - len(rest)
        if len(others) >= need:
            fill = rng.choice(others, size=need, replace=False)
        else:
            fill = rng.choice(rows, size=need, replace=True)
        groups.append(ViewGroup(ident, n_full, tuple(int(x) for x in np.concatenate([rest, fill]))))
    return groups, sorted(dropped)

"""Four-view grouping and identity splits: complete, same-identity, deterministic."""
from __future__ import annotations

import collections

import pytest

from dcnn_flame.data.views import group_views, split_identities, stable_seed


def _ids(counts):
    return [ident for ident, n in counts.items() for _ in range(n)]


def test_pad_uses_every_image_and_fills_from_same_identity():
    counts = {"a": 9, "b": 4, "c": 1, "d": 6}
    ids = _ids(counts)
    groups, dropped = group_views(ids, 4, "pad", seed=0)
    assert dropped == []
    per_id = collections.defaultdict(list)
    for g in groups:
        assert len(g.rows) == 4
        assert all(ids[r] == g.identity for r in g.rows)
        per_id[g.identity].append(g)
    for ident, n in counts.items():
        rows = [r for g in per_id[ident] for r in g.rows]
        assert len(per_id[ident]) == -(-n // 4)  # ceil
        assert {r for r, i in enumerate(ids) if i == ident} == set(rows)  # no image lost
        full = per_id[ident][: n // 4]
        assert len({r for g in full for r in g.rows}) == 4 * (n // 4)  # full groups: each image once
    # the padded group repeats no image when the identity has enough others
    last_a = per_id["a"][-1].rows
    assert len(set(last_a)) == 4
    assert per_id["c"][0].rows == (ids.index("c"),) * 4  # 1 image -> 4 copies


def test_drop_policy_reports_leftovers():
    ids = _ids({"a": 9, "b": 3})
    groups, dropped = group_views(ids, 4, "drop", seed=0)
    assert [g.identity for g in groups] == ["a", "a"]
    assert len(dropped) == 1 + 3
    used = {r for g in groups for r in g.rows}
    assert used.isdisjoint(dropped) and len(used) + len(dropped) == len(ids)


def test_grouping_is_deterministic_and_seeded():
    ids = _ids({"x": 12, "y": 7})
    g1, _ = group_views(ids, 4, "pad", seed=3)
    g2, _ = group_views(ids, 4, "pad", seed=3)
    g3, _ = group_views(ids, 4, "pad", seed=4)
    assert g1 == g2 and g1 != g3
    single, _ = group_views(ids, 1, "pad", seed=0)
    assert sorted(r for g in single for r in g.rows) == list(range(len(ids)))
    with pytest.raises(ValueError):
        group_views(ids, 0, "pad", 0)
    with pytest.raises(ValueError):
        group_views(ids, 4, "keep", 0)


def test_split_by_identity():
    ids = [f"n{i:06d}" for i in range(200)]
    s = split_identities(ids, 0.1, seed=0)
    assert sum(v == "val" for v in s.values()) == 20
    assert s == split_identities(list(reversed(ids)), 0.1, seed=0)
    assert s != split_identities(ids, 0.1, seed=1)
    assert set(split_identities(ids[:2], 0.01, 0).values()) == {"train", "val"}  # at least one val
    assert set(split_identities(ids, 0.0, 0).values()) == {"train"}
    assert stable_seed("a", 1) == stable_seed("a", 1) != stable_seed("a", 2)

"""VGGFace2 layout + metadata CSVs (real column layout) -> image index and plan."""
from __future__ import annotations

import numpy as np
import pytest
from faces import five_from_68, write_vggface2_tree

from dcnn_flame.data.plan import build_plan, table_from_ipc
from dcnn_flame.data.vggface2 import index_vggface2


@pytest.fixture()
def tree(tmp_path):
    truth = write_vggface2_tree(tmp_path / "vgg", {"train": {"n000002": 5, "n000003": 3}, "test": {"n000001": 2}},
                                seed=1)
    return tmp_path / "vgg", truth


def test_index_joins_boxes_and_landmarks(tree):
    root, truth = tree
    df = index_vggface2(str(root))
    assert len(df) == 10
    assert sorted(df["folder"].unique()) == ["test", "train"]
    for _, r in df.iterrows():
        t = truth[f"{r['folder']}/{r['name_id']}"]
        assert r["uri"] == str(t["path"]) and r["identity"] == r["name_id"].split("/")[0]
        x, y, w, h = t["box"]
        np.testing.assert_allclose([r.box_x0, r.box_y0, r.box_x1, r.box_y1], [x, y, x + w, y + h])
        np.testing.assert_allclose([r[f"lmk5_{i}"] for i in range(10)], five_from_68(t["landmarks"]).reshape(-1),
                                   atol=1e-4)
        assert r["size"] == t["path"].stat().st_size
    assert len(index_vggface2(str(root), folders=("train",), max_identities=1)) == 5


def test_without_metadata_and_stray_files(tree):
    root, _ = tree
    for f in (root / "bb_landmark").iterdir():
        f.unlink()
    (root / "train" / "README.txt").write_text("not an image")
    (root / "train" / "n000002" / "notes.txt").write_text("x")
    df = index_vggface2(str(root))
    assert len(df) == 10 and np.isnan(df["box_x0"]).all() and np.isnan(df["lmk5_0"]).all()


def test_metadata_index_and_bad_header(tree):
    root, _ = tree
    (root / "train" / "n000003" / "0002_01.jpg").unlink()
    df = index_vggface2(str(root), index="metadata")
    assert len(df) == 10  # names come from the CSV: the missing file is still planned
    assert (df["size"] == -1).all()
    (root / "bb_landmark" / "loose_bb_train.csv").write_text("NAME,X,Y,W,H\n\"n000002/0001_01\",1,2,3,4\n")
    with pytest.raises(ValueError, match="NAME_ID"):
        index_vggface2(str(root))


def test_plan_shards_are_deterministic_and_split_by_identity(tree):
    root, _ = tree
    df = index_vggface2(str(root))
    kw = dict(source="vggface2", num_views=4, policy="pad", val_fraction=0.5, seed=0, rows_per_shard=1)
    p1, p2 = build_plan(df, **kw), build_plan(df.sample(frac=1.0, random_state=3), **kw)
    assert [s.name for s in p1.shards] == [s.name for s in p2.shards]
    assert p1.fingerprint({}) == p2.fingerprint({}) != build_plan(df, **{**kw, "seed": 1}).fingerprint({})
    splits = {}
    for s in p1.shards:
        t = table_from_ipc(s.to_ipc())
        assert t.schema == s.table.schema and t.column("uri").equals(s.table.column("uri"))
        for ident, split in zip(t.column("identity").to_pylist(), t.column("split").to_pylist()):
            splits.setdefault(ident, set()).add(split)
    assert splits["n000001"] == {"test"}
    assert all(len(v) == 1 for v in splits.values())  # an identity lives in one split
    assert {next(iter(splits["n000002"])), next(iter(splits["n000003"]))} == {"train", "val"}
    assert p1.samples_per_split() == {"test": 1, **{next(iter(splits[i])): n for i, n in
                                                      (("n000002", 2), ("n000003", 1))}}

"""Fixtures of the generation tests: a tiny checkpoint, a 20-character library with bad inputs."""
from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_helpers import NUM_GOOD, tiny_model_config  # noqa: E402,F401


@pytest.fixture(scope="session")
def head():
    from dcnn_flame.data.synthetic import procedural_head

    return procedural_head(0)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, head):
    """An untrained tiny DCNN-FLAME checkpoint written by the training checkpoint writer."""
    from dcnn_flame.generation.demo import train_demo_checkpoint

    return train_demo_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "checkpoint"), steps=0,
                                 model_cfg=tiny_model_config(), data=head)


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def library(tmp_path_factory, head):
    """``(root, good_ids, bad)``: 20 rendered characters (64 px), one of them ("mixed") with an
    extra broken image, and bad characters: {id: expected failure reason}."""
    from dcnn_flame.generation.demo import make_sample_library

    root = tmp_path_factory.mktemp("library")
    good = [f"hero_{i:02d}" for i in range(NUM_GOOD - 1)] + ["mixed"]
    make_sample_library(str(root), image_size=64, data=head, ids=good)
    (root / "mixed" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    bad = {"bad_empty": "empty", "bad_text": "not_an_image", "bad_truncated": None,
           "bad_blank": "no_face", "bad_huge": "too_large"}
    for cid in bad:
        (root / cid).mkdir()
    (root / "bad_empty" / "a.png").write_bytes(b"")
    (root / "bad_text" / "notes.jpg").write_bytes(b"this is not an image\n" * 20)
    good_png = (root / "hero_00" / "portrait.png").read_bytes()
    (root / "bad_truncated" / "a.png").write_bytes(good_png[: len(good_png) // 2])
    (root / "bad_blank" / "a.png").write_bytes(_png(np.full((96, 96, 3), 128, np.uint8)))
    (root / "bad_huge" / "a.png").write_bytes(_png(np.zeros((2100, 2100, 3), np.uint8)))
    return str(root), good, bad

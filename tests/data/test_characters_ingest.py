"""Character folder with bad inputs: each becomes the right failure row or the right output,
never a crash; labels reach the rows; a rerun writes nothing new."""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from faces import face_image
from ingest_fixtures import ray_local_s3_env  # noqa: F401  (fixture)
from PIL import Image

from dcnn_flame.config import PrepareConfig
from dcnn_flame.constants import AU_IDS
from dcnn_flame.data.characters import index_characters
from dcnn_flame.data.schema import check_table, decode_image


def _jpeg(img: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def _make_folder(root):
    root.mkdir()
    rng = np.random.default_rng(3)
    face, _, _ = face_image(rng, 200, 200, scale=60, roll_deg=0)
    Image.fromarray(face).save(root / "hero.png")
    Image.fromarray(face_image(rng, 180, 180)[0]).save(root / "sidekick.webp", lossless=True)
    (root / "truncated.jpg").write_bytes(_jpeg(face)[:1500])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a picture\n" * 20)
    Image.new("RGB", (1, 1), (9, 9, 9)).save(root / "one_pixel.png")
    Image.new("RGB", (1100, 1100), (30, 60, 90)).save(root / "huge.png")
    Image.fromarray(np.full((120, 160), 40000, dtype=np.uint16)).save(root / "sixteen_bit.png")
    Image.new("CMYK", (150, 150), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)
    # the same face stored sideways with "rotate 90 CW to display" (orientation 6), and upright
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "exif_rotated.jpg").write_bytes(_jpeg(np.ascontiguousarray(np.rot90(face, k=1)), exif=exif.tobytes()))
    (root / "upright.jpg").write_bytes(_jpeg(face))
    (root / "labels.csv").write_text("file,expression,au06,au12\nhero.png,happy,2.5,4\nupright.jpg,3,,\n")
    return face


BAD = {"truncated.jpg": "truncated", "zero.jpg": "empty", "text.jpg": "not_an_image",
       "one_pixel.png": "too_small", "huge.png": "too_large"}


def test_index_reads_labels(tmp_path):
    _make_folder(tmp_path / "c")
    df = index_characters(str(tmp_path / "c"), au_scale=5.0).set_index("name_id")
    assert len(df) == 11 and "labels.csv" not in df.index
    assert df.at["hero.png", "expression_class"] == 1 and df.at["upright.jpg", "expression_class"] == 3
    assert df.at["hero.png", "au06"] == pytest.approx(0.5) and df.at["hero.png", "au12"] == pytest.approx(0.8)
    assert np.isnan(df.at["hero.png", "au01"]) and np.isnan(df.at["upright.jpg", "au12"])
    assert df.at["cmyk.jpg", "expression_class"] == -1 and df.at["hero.png", "identity"] == "hero"
    (tmp_path / "c" / "labels.csv").write_text("file,expression\nhero.png,grumpy\n")
    with pytest.raises(ValueError, match="unknown expression"):
        index_characters(str(tmp_path / "c"))


def _tiny_library(root, files):
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (120, 90, 60)).save(root / rel)


def test_a_label_path_never_labels_another_folders_image_of_the_same_name(tmp_path):
    root = tmp_path / "c"
    _tiny_library(root, ["hero/happy.png", "hero/sad.png", "sidekick/happy.png", "villain/wink.png"])
    (root / "labels.csv").write_text("file,identity,expression,au12\nhero/happy.png,Hero,happy,5\n"
                                     "wink.png,,surprise,1\n")
    df = index_characters(str(root), au_scale=5.0).set_index("name_id")
    assert df.at["hero/happy.png", "identity"] == "Hero" and df.at["hero/happy.png", "expression_class"] == 1
    # the sidekick's happy.png has no row: its own identity, labels missing (it was Hero's, with Hero's AUs)
    assert df.at["sidekick/happy.png", "identity"] == "sidekick"
    assert df.at["sidekick/happy.png", "expression_class"] == -1 and np.isnan(df.at["sidekick/happy.png", "au12"])
    # a bare file name that one image has labels that image
    assert df.at["villain/wink.png", "expression_class"] == 3 and df.at["villain/wink.png", "au12"] == 0.2
    assert df.at["villain/wink.png", "identity"] == "villain" and df.at["hero/sad.png", "expression_class"] == -1
    # a bare file name that several images share is refused, naming them
    (root / "labels.csv").write_text("file,expression\nhappy.png,happy\n")
    with pytest.raises(ValueError, match=r"'happy.png' labels 2 images .*hero/happy.png, sidekick/happy.png"):
        index_characters(str(root))


def test_expression_indices_read_as_numbers_and_blank_cells(tmp_path):
    root = tmp_path / "c"
    _tiny_library(root, ["a.png", "b.png", "c.png"])
    # a column of indices with one blank cell (pandas would read 1.0, NaN) and a spreadsheet's "2.0"
    (root / "labels.csv").write_text("file,expression\na.png,1\nb.png,\nc.png,2.0\n")
    df = index_characters(str(root)).set_index("name_id")
    assert df["expression_class"].to_dict() == {"a.png": 1, "b.png": -1, "c.png": 2}
    (root / "labels.csv").write_text("file,expression\na.png,1\nb.png,9\n")
    with pytest.raises(ValueError, match=r"labels.csv, line 3 \(file 'b.png'\): expression index 9 is outside"):
        index_characters(str(root))


def test_symlinked_images_and_folders_are_listed(tmp_path):
    """A library assembled from links into an asset store: linked folders and files are
    images of the library under their link's path; a dangling link is listed (its read
    fails as a missing file, a failure row) rather than skipped without a word."""
    from dcnn_flame.generation.library import list_library

    store = tmp_path / "store"
    _tiny_library(store, ["hero_v3/front.png", "hero_v3/side.png", "villain.png"])
    root = tmp_path / "c"
    _tiny_library(root, ["sidekick/front.png"])
    (root / "hero").symlink_to(store / "hero_v3", target_is_directory=True)
    (root / "villain").mkdir()
    (root / "villain" / "front.png").symlink_to(store / "villain.png")
    (root / "villain" / "gone.png").symlink_to(store / "missing.png")
    (root / "sidekick" / "loop").symlink_to(root, target_is_directory=True)  # a cycle: walked once
    df = index_characters(str(root)).set_index("name_id")
    assert sorted(df.index) == ["hero/front.png", "hero/side.png", "sidekick/front.png", "villain/front.png",
                                "villain/gone.png"]
    assert df.at["hero/side.png", "identity"] == "hero" and df.at["villain/front.png", "identity"] == "villain"
    assert df.at["villain/front.png", "size"] == (store / "villain.png").stat().st_size
    assert df.at["villain/gone.png", "size"] == -1
    # the generation job's listing is the same
    lib = list_library(str(root))
    assert sorted(lib) == ["hero", "sidekick", "villain"]
    assert [os.path.basename(u) for u, _ in lib["hero"]] == ["front.png", "side.png"]
    assert dict((os.path.basename(u), s) for u, s in lib["villain"])["gone.png"] == -1


@pytest.mark.ray
@pytest.mark.slow
def test_bad_inputs_become_failures_or_correct_outputs(ray_local_s3_env, tmp_path):  # noqa: F811
    from dcnn_flame.data.ingest import run

    face = _make_folder(tmp_path / "c")
    out = tmp_path / "out"
    cfg = PrepareConfig(source="characters", input_uri=str(tmp_path / "c"), output_uri=str(out), num_views=1,
                        val_fraction=0.0, rows_per_shard=4, image_format="png", au_scale=5.0,
                        max_image_pixels=1_000_000, detector="center", center_crop_fraction=0.8, margin=0.0,
                        torch_hub_dir=str(tmp_path / "no_hub"), progress=False, stall_timeout_s=120)
    s = run(cfg)
    assert s.failures == {r: 1 for r in BAD.values()}
    fails = pq.read_table(out / "failures.parquet").to_pylist()
    assert {os.path.basename(f["input_uri"]): f["reason"] for f in fails} == BAD
    assert all(f["stage"] == "decode" and f["detail"] for f in fails)

    rows = {}
    for f in sorted(out.glob("shards/*/*.parquet")):
        t = pq.read_table(f)
        check_table(t, str(f))
        for r in t.to_pylist():
            rows[os.path.basename(r["image_uri"][0])] = r
    assert set(rows) == {"hero.png", "sidekick.webp", "sixteen_bit.png", "cmyk.jpg", "exif_rotated.jpg", "upright.jpg"}
    img = {k: decode_image(r["image"][0]).astype(int) for k, r in rows.items()}
    assert all(v.shape == (224, 224, 3) for v in img.values())
    assert (img["sixteen_bit.png"] == round(40000 / 257)).all()  # 16-bit grey -> 8-bit, exact (PNG)
    np.testing.assert_allclose(img["cmyk.jpg"].reshape(-1, 3).mean(0), [255, 0, 0], atol=6)
    assert np.abs(img["exif_rotated.jpg"] - img["upright.jpg"]).mean() < 4  # EXIF applied: upright
    assert np.abs(np.rot90(img["exif_rotated.jpg"], 1) - img["upright.jpg"]).mean() > 20
    # centre crop with margin 0: the crop is the central 160 px of the 200 px hero image
    ref = np.asarray(Image.fromarray(face[20:180, 20:180]).resize((224, 224), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(img["hero.png"] - ref).mean() < 6
    np.testing.assert_allclose(rows["hero.png"]["crop_box"][0], [20, 20, 180, 180], atol=1e-4)
    hero = rows["hero.png"]
    au = np.array(hero["au"][0])
    assert au[AU_IDS.index(6)] == pytest.approx(0.5) and au[AU_IDS.index(12)] == pytest.approx(0.8)
    assert np.isnan(np.delete(au, [AU_IDS.index(6), AU_IDS.index(12)])).all()
    assert hero["expression_class"] == [1] and rows["upright.jpg"]["expression_class"] == [3]
    assert hero["landmark_source"] == ["none"] and np.isnan(hero["landmarks5"][0]).all()
    assert hero["source"] == "characters" and hero["identity"] == "hero" and hero["split"] == "train"

    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*") if p.is_file()}
    s2 = run(cfg)
    assert s2.shards_written == 0 and s2.images == 0 and s2.failures == s.failures
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*") if p.is_file()} == before


def test_no_face_and_detector_errors_are_failure_rows():
    from dcnn_flame.data.shard_writer import ShardTools, WorkerSettings, _Failure, prepare_view

    settings = WorkerSettings(
        source="characters", output_uri="unused", storage=None, num_views=1, short_identity_policy="pad",
        margin=0.1, align="box", image_format="png", jpeg_quality=95, min_image_size=8,
        max_image_pixels=10 ** 7, max_image_bytes=10 ** 7, landmarks="metadata", fan_path=None,
        detector="center", detector_path=None, center_crop_fraction=0.8, device="cpu")
    tools = ShardTools(settings)
    data = _jpeg(face_image(np.random.default_rng(0), 120, 120)[0])
    nan4, nan10 = np.full(4, np.nan), np.full(10, np.nan)
    assert prepare_view(data, nan4, nan10, settings, tools).source == "none"

    class NoFace:
        def detect(self, image):
            return None

    class Broken:
        def detect(self, image):
            raise RuntimeError("model exploded")

    for det, reason in ((NoFace(), "no_face"), (Broken(), "detector_error")):
        tools.detector = det
        with pytest.raises(_Failure) as e:
            prepare_view(data, nan4, nan10, settings, tools)
        assert (e.value.stage, e.value.reason) == ("detect", reason)
    # a metadata box skips the detector; a degenerate one is an align failure
    assert prepare_view(data, np.array([10, 10, 100, 110.0]), nan10, settings, tools).crop_box
    with pytest.raises(_Failure) as e:
        prepare_view(data, np.array([10, 10, 10, 110.0]), nan10, settings, tools)
    assert (e.value.stage, e.value.reason) == ("align", "bad_box")

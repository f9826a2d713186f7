"""face-alignment for real: random-weight FAN/S3FD files in a temporary torch hub cache are
found and run on CPU (no download, no compile); without them the fallback is used and says so."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from faces import face_image, write_vggface2_tree
from ingest_fixtures import fan_hub, ray_local_s3_env  # noqa: F401  (fixtures)

from dcnn_flame.config import PrepareConfig
from dcnn_flame.data import landmarks as L


@pytest.fixture()
def no_downloads(monkeypatch):
    """Any attempt to download weights fails the test."""
    import torch.hub

    def boom(*a, **k):
        raise AssertionError(f"download attempted: {a[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)
    try:
        import face_alignment.detection.sfd.sfd_detector as sfd
        import face_alignment.utils as fau

        monkeypatch.setattr(fau, "download_url_to_file", boom)
        monkeypatch.setattr(sfd, "load_state_dict_from_url", boom)
    except ImportError:
        pass


def test_file_names_are_the_installed_packages():
    from face_alignment.api import models_urls
    from face_alignment.detection.sfd.sfd_detector import models_urls as sfd_urls

    assert L.FAN_2D_URL == models_urls["2DFAN-4"]
    assert L.S3FD_URL == sfd_urls["s3fd"]


def test_missing_weights_fall_back_and_say_so(tmp_path, monkeypatch, capsys):
    from dcnn_flame.data.ingest import resolve_settings

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    w = L.find_fan_weights()  # torch.hub.get_dir() follows TORCH_HOME
    assert w.checkpoints_dir == str(tmp_path / "th" / "hub" / "checkpoints")
    assert not w.has_fan and not w.has_detector
    assert "not found" in w.describe() and "5 metadata landmarks" in w.describe() and L.FAN_2D_FILE in w.describe()

    cfg = PrepareConfig(input_uri=str(tmp_path), output_uri=str(tmp_path / "o"))
    settings, lmk_msg, det_msg = resolve_settings(cfg, cfg.output_uri, None)
    assert settings.landmarks == "metadata" and settings.fan_path is None
    expected_det = "opencv" if L.opencv_cascade_path() else "center"
    assert settings.detector == expected_det
    assert "not found" in lmk_msg and ("centred square" in det_msg or "cascade" in det_msg)
    with pytest.raises(FileNotFoundError, match="landmarks=fan"):
        resolve_settings(PrepareConfig(input_uri="x", landmarks="fan"), "o", None)
    with pytest.raises(FileNotFoundError, match="detector=s3fd"):
        resolve_settings(PrepareConfig(input_uri="x", detector="s3fd"), "o", None)


@pytest.mark.slow
def test_fan_and_s3fd_found_and_run_on_cpu(fan_hub, monkeypatch, no_downloads):  # noqa: F811
    import torch
    from face_alignment.models import FAN

    monkeypatch.setenv("TORCH_HOME", os.path.dirname(fan_hub))
    assert torch.hub.get_dir() == fan_hub
    w = L.find_fan_weights()
    assert w.fan == os.path.join(fan_hub, "checkpoints", L.FAN_2D_FILE) and w.has_detector
    hub_before = torch.hub.get_dir()
    lm = L.FanLandmarker(w.fan, w.s3fd, device="cpu")
    assert torch.hub.get_dir() == hub_before
    net = lm._fa.face_alignment_net
    assert type(net) is FAN  # compile=False: a plain module, not torch.compile's wrapper
    assert all(p.device.type == "cpu" for p in net.parameters())
    saved = torch.load(w.fan, weights_only=True)
    for k in ("conv1.weight", "l3.weight", "m0.b1_4.conv1.weight"):
        torch.testing.assert_close(net.state_dict()[k], saved[k])  # our random file, not another

    img, truth, box = face_image(np.random.default_rng(0), 240, 260)
    xyxy = np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]], dtype=np.float64)
    out = lm.landmarks(img, xyxy)
    assert out.shape == (68, 2) and np.isfinite(out).all()
    det = lm.detect(img)
    assert det is None or (det.shape == (5,) and det[2] > det[0] and det[3] > det[1])


@pytest.mark.slow
@pytest.mark.ray
def test_ingest_uses_fan_when_present(fan_hub, ray_local_s3_env, tmp_path, capsys):  # noqa: F811
    from dcnn_flame.data.ingest import run

    write_vggface2_tree(tmp_path / "vgg", {"train": {"n000010": 4}}, seed=5)
    cfg = PrepareConfig(source="vggface2", input_uri=str(tmp_path / "vgg"), output_uri=str(tmp_path / "out"),
                        val_fraction=0.0, rows_per_shard=1, torch_hub_dir=fan_hub, num_workers=1,
                        progress=False, stall_timeout_s=300)
    s = run(cfg)
    assert "68 landmarks from face-alignment 2D FAN" in capsys.readouterr().out
    assert s.landmarks == "fan" and s.rows == 1 and s.failures == {}
    for split_file in sorted((tmp_path / "out" / "shards" / "train").glob("*.parquet")):
        for row in pq.read_table(split_file).to_pylist():
            assert row["landmark_source"] == ["fan"] * 4
            assert np.isfinite(np.array(row["landmarks"])).all()
            assert np.isfinite(np.array(row["landmarks5"])).all()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["landmarks"] == "fan" and manifest["detector"] == "s3fd"

    # characters: no metadata box, so S3FD (random weights) picks the box; every image is
    # accounted for as a row or a "no_face" failure, nothing crashes.
    chars = tmp_path / "chars"
    chars.mkdir()
    from PIL import Image

    for i in range(1):
        Image.fromarray(face_image(np.random.default_rng(10 + i), 200, 200)[0]).save(chars / f"c{i}.png")
    s2 = run(PrepareConfig(source="characters", input_uri=str(chars), output_uri=str(tmp_path / "out_c"),
                           num_views=1, val_fraction=0.0, torch_hub_dir=fan_hub, num_workers=1, progress=False,
                           stall_timeout_s=300))
    assert s2.detector == "s3fd"
    assert s2.rows + s2.failures.get("no_face", 0) == 1

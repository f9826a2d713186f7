"""ONNX round trip: the exported graph passes onnx.checker, has a dynamic batch axis, and
onnxruntime matches PyTorch within the stated tolerance (atol 1e-4 + rtol 1e-4 * |torch|)
at two batch sizes; from a random init and from a training checkpoint."""
from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from dcnn_flame.config import ExportConfig, FlameConfig
from dcnn_flame.export import onnx as ox
from dcnn_flame.model.config import ModelConfig
from dcnn_flame.model.inference import OUTPUT_NAMES

ATOL = RTOL = 1e-4
SIZE = 64
TINY_MODEL = ModelConfig(backbone="resnet18", image_size=SIZE, uv_size=16, albedo_size=32, identity_dim=64,
                         mapping_hidden=32, fusion_dim=64, detail_dim=16)


@pytest.fixture(scope="module")
def tiny_flame(tmp_path_factory) -> FlameConfig:
    """A low-resolution procedural head saved as our .npz (fast to load, small graph)."""
    from dcnn_flame.flame.assets import save_flame_model
    from dcnn_flame.flame.procedural import build_procedural_flame

    path = tmp_path_factory.mktemp("flame") / "tiny_head.npz"
    save_flame_model(build_procedural_flame(seed=0, n_shape=12, n_expr=20, resolution="low", texture_size=32), path)
    return FlameConfig(model_path=str(path), n_shape=12, n_expr=20)


def _cfg(out, flame: FlameConfig, **kw) -> ExportConfig:
    base = dict(output_uri=str(out), model=TINY_MODEL, flame=flame, check_batch_sizes=[1, 3], atol=ATOL,
                rtol=RTOL)
    base.update(kw)
    return ExportConfig(**base)


def _ort(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def random_export(tmp_path_factory, tiny_flame):
    out = tmp_path_factory.mktemp("onnx") / "net.onnx"
    cfg = _cfg(out, tiny_flame, random_init=True, with_vertices=True, seed=3)
    # The same seed rebuilds the same PyTorch model, independently of the export.
    return cfg, ox.run(cfg), ox.load_inference_model(cfg).net


def test_random_init_round_trip(random_export):
    cfg, res, net = random_export
    names = list(OUTPUT_NAMES) + ["vertices"]
    onnx.checker.check_model(res.onnx_uri, full_check=True)
    graph = onnx.load(res.onnx_uri).graph
    assert [o.name for o in graph.output] == names
    assert graph.input[0].name == "images"
    assert all(v.type.tensor_type.shape.dim[0].dim_param == "batch" for v in [graph.input[0], *graph.output])

    cmp = res.comparison
    assert cmp.passed and cmp.batch_sizes == [1, 3] and set(cmp.max_abs_diff) == set(names)
    assert 0.0 < cmp.max_abs_diff_all < ATOL  # a real comparison (float noise), within tolerance

    # Independently: onnxruntime at a third batch size agrees with the rebuilt PyTorch model,
    # and a batch equals its rows run one at a time.
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ref = [t.numpy() for t in net(x)]
    sess = _ort(res.onnx_uri)
    got = sess.run(names, {"images": x.numpy()})
    for name, g, r in zip(names, got, ref):
        assert g.shape == r.shape and np.isfinite(g).all(), name
        np.testing.assert_allclose(g, r, atol=ATOL, rtol=RTOL, err_msg=name)
    rows = [sess.run(names, {"images": x[i:i + 1].numpy()}) for i in range(2)]
    for k, name in enumerate(names):
        np.testing.assert_allclose(np.concatenate([row[k] for row in rows]), got[k], atol=1e-5, err_msg=name)
    assert got[names.index("au")].min() >= 0 and got[names.index("au")].max() <= 1
    assert got[names.index("vertices")].shape[1:] == (res.metadata["flame"]["num_vertices"], 3)


def test_metadata(random_export):
    cfg, res, _ = random_export
    meta = json.loads(open(res.metadata_uri).read())
    assert res.metadata_uri.endswith("net.json") and meta == json.loads(json.dumps(res.metadata))
    assert meta["onnx_file"] == "net.onnx" and meta["random_init"] and meta["checkpoint"] is None
    assert meta["input"]["shape"] == ["batch", 3, SIZE, SIZE] and meta["input"]["range"] == [0.0, 1.0]
    assert meta["input"]["normalisation_inside_graph"]["mean"] == [0.485, 0.456, 0.406]
    shapes = {o["name"]: o["shape"] for o in meta["outputs"]}
    assert shapes["shape"] == ["batch", 12] and shapes["expression"] == ["batch", 20]
    assert shapes["pose"] == ["batch", 15] and shapes["camera"] == ["batch", 3] and shapes["light"] == ["batch", 27]
    assert shapes["au"] == ["batch", 17] and shapes["detail_code"] == ["batch", 16]
    by = {o["name"]: o for o in meta["outputs"]}
    assert by["pose"]["joints"] == ["global", "neck", "jaw", "left_eye", "right_eye"]
    assert by["au"]["au_ids"][8] == 12 and by["au"]["source"] == "random"
    assert meta["flame"]["edition"] and meta["flame"]["n_shape"] == 12
    assert meta["check"]["passed"] and meta["check"]["max_abs_diff_all"] == res.comparison.max_abs_diff_all


def test_mismatch_is_detected(random_export):
    cfg, res, net = random_export
    net = copy.deepcopy(net)
    with torch.no_grad():  # the PyTorch side drifts from the exported weights
        for name, p in net.model.coarse.named_parameters():
            if name.endswith("bias"):
                p.add_(0.01)
    names = ox.output_names(True)
    cmp = ox.compare_with_onnxruntime(net, res.onnx_uri, names, SIZE, [2], ATOL, RTOL)
    assert not cmp.passed and "above atol" in cmp.detail and cmp.max_abs_diff_all > ATOL


def test_from_checkpoint(tmp_path, tiny_flame):
    """A checkpoint in the training format (save_checkpoint) exports its own weights; no AU
    detector -> the au output is NaN in both runtimes (NaN positions compared); the
    "w/o detail" ablation exports a zero-width detail_code."""
    import dataclasses

    from dcnn_flame.flame.factory import load_flame_data
    from dcnn_flame.model.build import build_model
    from dcnn_flame.training.checkpoint import save_checkpoint

    arch = dataclasses.replace(TINY_MODEL, use_detail=False)
    torch.manual_seed(5)
    model = build_model(tiny_flame, arch, load_flame_data(tiny_flame)).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    config = {"name": "t", "model": dataclasses.asdict(arch), "flame": dataclasses.asdict(tiny_flame),
              "supervision": {"teachers_path": None}}
    run_dir = tmp_path / "runs" / "t"
    save_checkpoint(str(run_dir / "checkpoint_00000007"), model=model, optimizer=opt, scheduler=sched, step=7,
                    rng=[], counters={}, config=config)
    # the export's own model/flame settings must be ignored in favour of the checkpoint's
    cfg = _cfg(tmp_path / "ck.onnx", FlameConfig(), checkpoint=str(run_dir), model=ModelConfig(),
               check_batch_sizes=[2])
    with pytest.warns(UserWarning, match="au' output is NaN"):
        res = ox.run(cfg)
    assert res.comparison.passed and res.comparison.max_abs_diff_all < ATOL
    assert res.metadata["checkpoint"].endswith("checkpoint_00000007") and res.metadata["checkpoint_step"] == 7
    assert res.metadata["outputs"][-1]["name"] == "au" and res.metadata["outputs"][-1]["source"] == "none"

    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x, render=False)
    got = dict(zip(OUTPUT_NAMES, _ort(res.onnx_uri).run(list(OUTPUT_NAMES), {"images": x.numpy()})))
    for name in ("shape", "expression", "pose", "camera", "albedo_code"):
        np.testing.assert_allclose(got[name], getattr(ref, name).numpy(), atol=ATOL, rtol=RTOL, err_msg=name)
    assert np.isnan(got["au"]).all() and got["au"].shape == (2, 17) and got["detail_code"].shape == (2, 0)


def test_bad_settings(tmp_path):
    flame = FlameConfig()
    with pytest.raises(ValueError, match="random_init=true"):
        ox.run(_cfg(tmp_path / "a.onnx", flame))
    with pytest.raises(ValueError, match="exclude each other"):
        ox.load_inference_model(_cfg(tmp_path / "a.onnx", flame, checkpoint="x", random_init=True))
    with pytest.raises(ValueError, match=".onnx file"):
        ox.run(_cfg(tmp_path / "a.bin", flame, random_init=True))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ox.run(_cfg(tmp_path / "a.onnx", flame, checkpoint=str(tmp_path / "missing")))
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_au_input_is_shrunk_as_the_detector_was_trained_also_in_onnx(tmp_path):
    """The inference graph shrinks the image for the AU detector with the detector's own
    antialiased resize (a plain bilinear shrink aliased: AU probabilities off by up to ~0.03),
    as two matrix products that the ONNX exporter carries (it has no antialiased resize)."""
    import torch.nn.functional as F

    from dcnn_flame.model.inference import antialiased_resize
    from dcnn_flame.supervision.blocks import InputAdapter

    g = torch.Generator().manual_seed(0)
    for shape, size in (((2, 3, 224, 224), 112), ((1, 3, 200, 160), 112), ((1, 3, 64, 64), 112), ((1, 3, 96, 96), 50)):
        x = torch.rand(*shape, generator=g)
        ref = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < shape[-1])
        np.testing.assert_allclose(antialiased_resize(x, size).numpy(), ref.numpy(), atol=2e-5)
        adapter = InputAdapter(size)
        np.testing.assert_allclose(adapter(antialiased_resize(x, size)).numpy(), adapter(x).numpy(), atol=1e-4)
    aliased = F.interpolate(x, size=(50, 50), mode="bilinear", align_corners=False)
    assert np.abs(aliased.numpy() - antialiased_resize(x, 50).numpy()).max() > 0.05  # the difference is real

    class Shrink(torch.nn.Module):
        def forward(self, images):
            return antialiased_resize(images, 112)

    path = tmp_path / "shrink.onnx"
    x = torch.rand(2, 3, 224, 224, generator=g)
    torch.onnx.export(Shrink(), (x,), str(path), input_names=["images"], output_names=["out"], opset_version=17,
                      dynamic_axes={"images": {0: "batch"}, "out": {0: "batch"}}, dynamo=False)
    got = _ort(path).run(["out"], {"images": x[:1].numpy()})[0]
    ref = F.interpolate(x[:1], size=(112, 112), mode="bilinear", align_corners=False, antialias=True)
    np.testing.assert_allclose(got, ref.numpy(), atol=2e-5)

"""Rasterizer backend registry; the PyTorch3D backend when it is installed."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from dcnn_flame.render.backends import available_backends, make_rasterizer
from dcnn_flame.render.primitives import icosphere
from dcnn_flame.render.rasterize import TorchRasterizer, rasterize

HAS_PYTORCH3D = importlib.util.find_spec("pytorch3d") is not None


def sphere_ndc(B=2):
    v, f = icosphere(2)
    verts = torch.cat([v[:, :2] * 0.7, -v[:, 2:] + 2.0], -1).unsqueeze(0).repeat(B, 1, 1)
    verts[1:, :, 0] += 0.15
    return verts, f


def test_registry_and_default():
    assert available_backends() == ("torch", "pytorch3d")
    r = make_rasterizer()
    assert isinstance(r, TorchRasterizer)
    verts, f = sphere_ndc()
    frag = r(verts, f, (12, 16))
    ref = rasterize(verts, f, (12, 16))
    assert torch.equal(frag.face_idx, ref.face_idx)
    culled = make_rasterizer("torch", cull_backfaces=True)(verts, f, (12, 16))
    assert torch.equal(culled.mask, ref.mask)
    with pytest.raises(ValueError, match="unknown rasterizer backend 'opengl'"):
        make_rasterizer("opengl")


@pytest.mark.skipif(HAS_PYTORCH3D, reason="pytorch3d is installed")
def test_pytorch3d_backend_missing_gives_a_clear_error():
    with pytest.raises(ImportError, match=r"pytorch3d is not installed; use backend='torch' \(the default\)"):
        make_rasterizer("pytorch3d")


@pytest.mark.skipif(not HAS_PYTORCH3D, reason="pytorch3d is not installed")
def test_pytorch3d_backend_matches_torch_backend():
    verts, f = sphere_ndc()
    ours = make_rasterizer("torch")(verts, f, (24, 32))
    p3d = make_rasterizer("pytorch3d")(verts, f, (24, 32))
    agree = (ours.face_idx == p3d.face_idx).float().mean()
    assert agree > 0.98  # edge ties may differ
    same = ours.face_idx == p3d.face_idx
    torch.testing.assert_close(ours.bary[same], p3d.bary[same])

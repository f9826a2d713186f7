"""The renderer on CUDA gives the CPU's results (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

from dcnn_flame.render import Renderer, RendererConfig
from dcnn_flame.render.primitives import uv_sphere
from dcnn_flame.render.rasterize import rasterize

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def scene(B=3):
    v, f, uv, uvf = uv_sphere(24, 48)
    g = torch.Generator().manual_seed(0)
    verts = v.unsqueeze(0).repeat(B, 1, 1) + torch.randn(B, 1, 3, generator=g) * 0.1
    cam = torch.tensor([[0.7, 0.0, 0.0]]).repeat(B, 1)
    tex = torch.rand(1, 3, 32, 32, generator=g)
    sh = torch.zeros(B, 9, 3)
    sh[:, 0], sh[:, 3] = 3.0, 0.8
    return verts, f, uv, uvf, cam, tex, sh


def test_rasterize_on_cuda_matches_cpu():
    verts, f, *_ = scene()
    ndc = torch.cat([verts[..., :2] * 0.7, -verts[..., 2:]], -1)
    cpu = rasterize(ndc, f, (40, 48), max_candidates=5000)
    gpu = rasterize(ndc.cuda(), f.cuda(), (40, 48), max_candidates=5000)
    same = (gpu.face_idx.cpu() == cpu.face_idx)
    assert same.float().mean() > 0.999  # only exact edge ties may round differently
    torch.testing.assert_close(gpu.bary.cpu()[same], cpu.bary[same], atol=1e-5, rtol=0)


def test_renderer_on_cuda_matches_cpu_and_has_gradients():
    verts, f, uv, uvf, cam, tex, sh = scene()
    cfg = RendererConfig(image_size=48, antialias=True)
    cpu = Renderer(f, uv, uvf, cfg)(verts, cam, tex, sh).image
    # Built on the CPU, called with CUDA inputs: the inputs decide the device.
    renderer = Renderer(f, uv, uvf, cfg)
    vg = verts.cuda().requires_grad_(True)
    out = renderer(vg, cam.cuda(), tex.cuda(), sh.cuda())
    assert out.image.device.type == "cuda"
    assert (out.image.detach().cpu() - cpu).abs().mean() < 1e-3
    out.image.mean().backward()
    assert torch.isfinite(vg.grad).all() and vg.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_compiled_rasterizer_on_cuda_matches_eager():
    verts, f, *_ = scene(4)
    ndc = torch.cat([verts[..., :2] * 0.7, -verts[..., 2:]], -1).cuda()
    eager = rasterize(ndc, f.cuda(), 64)
    compiled = rasterize(ndc, f.cuda(), 64, compile=True)
    assert (eager.face_idx == compiled.face_idx).float().mean() > 0.999

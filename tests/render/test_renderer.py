"""The default Renderer and MeshRenderer composition, end to end."""
from __future__ import annotations

import math

import pytest
import torch

from dcnn_flame.render import (
    MeshRenderer, OrthographicCamera, PerspectiveCamera, Renderer, RendererConfig,
    SHTextureShader, make_rasterizer)
from dcnn_flame.render.primitives import uv_sphere
from dcnn_flame.render.shading import SH_CONSTANTS


@pytest.fixture(scope="module")
def sphere():
    return uv_sphere(12, 24)


def smooth_texture(T=32):
    uu = (torch.arange(T) + 0.5) / T
    tex = 0.5 + 0.35 * torch.sin(2 * math.pi * 3 * uu)[None, :] * torch.cos(2 * math.pi * 2 * uu)[:, None]
    return torch.stack([tex, 0.8 * tex + 0.1, 1 - tex])[None]


def lights(B=1):
    sh = torch.zeros(B, 9, 3)
    sh[:, 0] = 2.8
    sh[:, 3] = 0.6
    sh[:, 1] = 0.2
    return sh


def test_output_shapes_ranges_and_background(sphere):
    v, f, uv, uvf = sphere
    r = Renderer(f, uv, uvf, RendererConfig(image_size=24))
    B = 2
    bg = torch.rand(B, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    cam = torch.tensor([[0.6, 0.0, 0.0], [0.4, 0.2, -0.1]])
    out = r(v.expand(B, -1, -1), cam, smooth_texture().expand(B, -1, -1, -1), lights(B), background=bg)
    assert out.image.shape == (B, 3, 24, 24) and out.mask.shape == (B, 1, 24, 24)
    assert out.depth.shape == (B, 1, 24, 24) and out.normals.shape == (B, 3, 24, 24)
    assert out.face_idx.shape == (B, 24, 24) and out.soft_mask is None
    assert 0 <= out.image.min() and out.image.max() <= 1
    m = out.mask.bool()
    assert torch.equal(m[:, 0], out.face_idx >= 0)
    outside = ~m.expand(-1, 3, -1, -1)
    assert torch.equal(out.image[outside], bg[outside])
    norms = out.normals.norm(dim=1)
    torch.testing.assert_close(norms[m[:, 0]], torch.ones_like(norms[m[:, 0]]))
    assert (out.normals[outside] == 0).all()
    # The smaller second sphere covers less.
    assert out.mask[1].sum() < out.mask[0].sum()


def test_constant_albedo_and_dc_light_give_constant_colour(sphere):
    v, f, uv, uvf = sphere
    r = Renderer(f, uv, uvf, RendererConfig(image_size=16, clamp=False))
    albedo = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    sh = torch.zeros(1, 9, 3)
    sh[:, 0] = torch.tensor([1.0, 2.0, 3.0])
    out = r(v[None], torch.tensor([[0.8, 0.0, 0.0]]), albedo, sh)
    expected = albedo[0, :, 0, 0] * sh[0, 0] * SH_CONSTANTS[0]
    m = out.mask[0, 0].bool()
    torch.testing.assert_close(out.image[0][:, m], expected[:, None].expand(3, int(m.sum())))


def test_sphere_normals_depth_and_centre_shading(sphere):
    v, f, uv, uvf = uv_sphere(24, 48)
    H = 32
    r = Renderer(f, uv, uvf, RendererConfig(image_size=H, clamp=False))
    s = 0.8
    sh = torch.randn(1, 9, 3, generator=torch.Generator().manual_seed(1))
    albedo = torch.ones(1, 3, 4, 4)
    out = r(v[None], torch.tensor([[s, 0.0, 0.0]]), albedo, sh)
    m = out.mask[0, 0].bool()
    xs = ((torch.arange(H) + 0.5) * 2 / H - 1) / s
    ys = (1 - (torch.arange(H) + 0.5) * 2 / H) / s
    x, y = xs[None, :].expand(H, H), ys[:, None].expand(H, H)
    inner = m & (x ** 2 + y ** 2 < 0.8)
    z = torch.sqrt((1 - x ** 2 - y ** 2).clamp_min(0))
    n_true = torch.stack([x, y, z])
    # A sphere's normal is its position; the mesh is a polygonal approximation.
    assert (out.normals[0][:, inner] - n_true[:, inner]).abs().max() < 0.03
    # Orthographic depth = -z of the front surface (closest layer).
    assert (out.depth[0, 0][inner] + z[inner]).abs().max() < 0.03
    # Shading at a pixel = sum_k sh_k Y_k(n) with the mesh normal there.
    from dcnn_flame.render.shading import sh_basis
    expected = torch.einsum("k,kc->c", sh_basis(out.normals[0, :, H // 2, H // 2]), sh[0])
    torch.testing.assert_close(out.image[0, :, H // 2, H // 2], expected)


def test_perspective_camera_render(sphere):
    v, f, uv, uvf = sphere
    H = 32
    r = Renderer(f, uv, uvf, RendererConfig(image_size=H))
    d = 4.0
    cam = PerspectiveCamera(focal=torch.tensor([3.0]), R=torch.eye(3)[None], t=torch.tensor([[0.0, 0.0, -d]]))
    out = r(v[None], cam, smooth_texture(), lights())
    m = out.mask[0, 0]
    # Silhouette of a unit sphere at distance d: tan(half-angle) = 1 / sqrt(d^2 - 1).
    radius_px = 3.0 / math.sqrt(d * d - 1) * H / 2
    assert abs(m.sum().item() - math.pi * radius_px ** 2) < 0.1 * math.pi * radius_px ** 2
    # Depth of the nearest point is d - 1.
    assert abs(out.depth[0, 0][m.bool()].min().item() - (d - 1)) < 0.02
    # Normals in the eye frame point towards the camera (+z) on the visible side.
    assert (out.normals[0, 2][m.bool()] > 0).all()


def test_gradients_reach_every_input_without_nans(sphere):
    v, f, uv, uvf = sphere
    r = Renderer(f, uv, uvf, RendererConfig(image_size=20, soft_mask=True))
    verts = v[None].clone().requires_grad_(True)
    albedo = smooth_texture(16).requires_grad_(True)
    sh = lights().requires_grad_(True)
    disp = (0.01 * torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(2))).requires_grad_(True)
    cam = torch.tensor([[0.7, 0.0, 0.0]], requires_grad=True)
    out = r(verts, cam, albedo, sh, displacement_map=disp)
    (out.image.mean() + out.soft_mask.mean()).backward()
    for name, t in [("verts", verts), ("albedo", albedo), ("sh", sh), ("disp", disp), ("cam", cam)]:
        assert t.grad is not None and torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name


def test_displacement_changes_normals_and_zero_displacement_does_not(sphere):
    v, f, uv, uvf = uv_sphere(16, 32)
    r = Renderer(f, uv, uvf, RendererConfig(image_size=24))
    cam = torch.tensor([[0.8, 0.0, 0.0]])
    base = r(v[None], cam, smooth_texture(), lights())
    zero = r(v[None], cam, smooth_texture(), lights(), displacement_map=torch.zeros(1, 1, 64, 64))
    m = base.mask[0, 0].bool()
    # UV-resampled smooth normals are close to, not bit-identical with, the per-pixel ones.
    assert (zero.normals - base.normals)[0][:, m].abs().max() < 0.05
    T = 64
    uu = (torch.arange(T) + 0.5) / T
    bumps = 0.03 * torch.sin(2 * math.pi * 8 * uu).view(1, 1, 1, T).expand(1, 1, T, T)
    bumpy = r(v[None], cam, smooth_texture(), lights(), displacement_map=bumps)
    assert (bumpy.normals - base.normals)[0][:, m].abs().max() > 0.2
    assert torch.equal(bumpy.mask, base.mask)


def test_antialias_blends_the_silhouette(sphere):
    v, f, uv, uvf = sphere
    r = Renderer(f, uv, uvf, RendererConfig(image_size=32, antialias=True))
    bg = torch.zeros(1, 3, 32, 32)
    albedo = torch.ones(1, 3, 4, 4)
    sh = torch.zeros(1, 9, 3)
    sh[:, 0] = 1.0 / SH_CONSTANTS[0]  # white, unlit
    out = r(v[None], torch.tensor([[0.6, 0.0, 0.0]]), albedo, sh, background=bg)
    img = out.image[0, 0]
    assert out.soft_mask is not None
    torch.testing.assert_close(img, out.soft_mask[0, 0])  # white over black = coverage
    partial = (img > 0.05) & (img < 0.95)
    assert partial.sum() > 10
    assert img.max() == 1.0


def test_mesh_renderer_composes_any_rasterizer_and_shader(sphere):
    v, f, uv, uvf = sphere
    calls = {}

    def depth_shader(fragments, **inputs):
        calls.update(inputs)
        return fragments.depth

    mr = MeshRenderer(make_rasterizer("torch", cull_backfaces=True), depth_shader)
    depth = mr(v[None], f, OrthographicCamera(torch.tensor([[0.8, 0.0, 0.0]])), 16)
    assert depth.shape == (1, 16, 16) and (depth <= 0).all()
    assert set(calls) >= {"vertices", "verts_ndc", "faces", "camera", "image_size"}
    full = MeshRenderer(make_rasterizer(), SHTextureShader())(
        v[None], f, torch.tensor([[0.8, 0.0, 0.0]]), 16, uv_coords=uv, uv_faces=uvf,
        albedo_map=smooth_texture(), sh=lights())
    assert full.image.shape == (1, 3, 16, 16)


def test_analysis_by_synthesis_recovers_the_camera(sphere):
    """Photometric loss through the renderer recovers scale and translation."""
    v, f, uv, uvf = sphere
    albedo, sh = smooth_texture(), lights()
    bg = torch.full((1, 3, 48, 48), 0.2)
    r = Renderer(f, uv, uvf, RendererConfig(image_size=48, antialias=True))
    target_cam = torch.tensor([[0.7, 0.15, -0.1]])
    with torch.no_grad():
        target = r(v[None], target_cam, albedo, sh, background=bg).image
    cam = torch.tensor([[0.6, 0.0, 0.05]], requires_grad=True)
    opt = torch.optim.Adam([cam], lr=0.015)
    for _ in range(100):
        opt.zero_grad()
        loss = ((r(v[None], cam, albedo, sh, background=bg).image - target) ** 2).mean()
        loss.backward()
        opt.step()
    assert (cam.detach() - target_cam).abs().max() < 2e-3, cam


def test_renderer_input_errors(sphere):
    v, f, uv, uvf = sphere
    with pytest.raises(ValueError, match="uv_faces must both be"):
        Renderer(f, uv, uvf[:-1])
    r = Renderer(f, uv, uvf, RendererConfig(image_size=8))
    with pytest.raises(ValueError, match="9 bands x RGB"):
        r(v[None], torch.tensor([[0.8, 0.0, 0.0]]), smooth_texture(), torch.zeros(1, 10))
    with pytest.raises(ValueError, match="background must be"):
        r(v[None], torch.tensor([[0.8, 0.0, 0.0]]), smooth_texture(), lights(), background=torch.zeros(1, 3, 4, 4))


def test_half_precision_inputs_and_autocast_render_in_float32(sphere):
    """bf16 vertices (as a bf16 autocast region produces) render like their float32 values."""
    v, f, uv, uvf = sphere
    r = Renderer(f, uv, uvf, RendererConfig(image_size=24))
    cam, tex, sh = (t.bfloat16() for t in (torch.tensor([[0.7, 0.05, 0.0]]), smooth_texture(), lights()))
    verts = v[None].bfloat16()
    ref = r(verts.float(), cam.float(), tex.float(), sh.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = r(verts.requires_grad_(True), cam, tex, sh)
    assert out.image.dtype == torch.float32
    assert torch.equal(out.face_idx, ref.face_idx)
    torch.testing.assert_close(out.image, ref.image, atol=1e-6, rtol=0)
    out.image.mean().backward()
    assert verts.grad is not None and torch.isfinite(verts.grad).all()

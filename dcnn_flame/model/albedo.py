"""Linear UV albedo model: albedo(code) = mean + sum_k code_k * basis_k, clamped to [0, 1].

Sources: the procedural head's basis (``FlameModelData.extras``), or a user file:
``FLAME_albedo_from_BFM.npz`` (keys ``MU`` [H*W*3] and ``PC`` [H*W*3, K], values in [0, 1])
or ``FLAME_texture.npz`` (keys ``mean`` [H, W, 3] and ``tex_dir`` [H, W, 3, K], 0..255). Both
store BGR colours (as DECA reads them: it reverses the channels of either file); they are
returned as RGB.
Maps are stored as images: row 0 is v = 1 (the top of the texture), as OBJ/GLB viewers
read texture images.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AlbedoLoadError(ValueError):
    """A user albedo file is missing or has an unexpected layout."""


def load_albedo_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a FLAME albedo/texture model -> (mean [H, W, 3], basis [H, W, 3, K]) in [0, 1].

    ``path`` may be a URI (s3://...): downloaded once per machine into the local cache
    (:func:`dcnn_flame.io.storage.local_copy`, credentials and endpoint from the environment).

    Raises:
        AlbedoLoadError: naming the path and the keys found when the layout is unknown.
    """
    if "://" in str(path) and not str(path).startswith("file://"):
        from dcnn_flame.io.storage import local_copy

        try:
            path = local_copy(str(path), what="model.albedo_path")
        except FileNotFoundError as exc:
            raise AlbedoLoadError(str(exc)) from None
    if not os.path.exists(path):
        raise AlbedoLoadError(f"albedo model not found: {path}. Pass model.albedo_path=<file> "
                              f"(FLAME_albedo_from_BFM.npz or FLAME_texture.npz) or leave it unset "
                              f"to use the procedural albedo.")
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        if {"MU", "PC"} <= keys:
            mu = np.asarray(z["MU"], dtype=np.float32).reshape(-1)
            pc = np.asarray(z["PC"], dtype=np.float32)
            pc = pc.reshape(mu.size, -1)
            scale = 1.0
        elif {"mean", "tex_dir"} <= keys:
            mu = np.asarray(z["mean"], dtype=np.float32).reshape(-1)
            pc = np.asarray(z["tex_dir"], dtype=np.float32).reshape(mu.size, -1)
            scale = 1.0 / 255.0
        else:
            raise AlbedoLoadError(f"{path}: unknown albedo layout, keys {sorted(keys)}; expected "
                                  f"MU/PC (FLAME_albedo_from_BFM.npz) or mean/tex_dir (FLAME_texture.npz)")
    side = int(round((mu.size / 3) ** 0.5))
    if side * side * 3 != mu.size:
        raise AlbedoLoadError(f"{path}: mean has {mu.size} values, not a square RGB map")
    # Both files store their colours in BGR order (BFM_to_FLAME writes ``img[y, x, ::-1] =
    # rgb``; FLAME_texture.npz is a cv2 image): reversed to RGB here, for the mean and the basis.
    mean = np.ascontiguousarray(mu.reshape(side, side, 3)[..., ::-1]) * scale
    basis = np.ascontiguousarray(pc.reshape(side, side, 3, -1)[:, :, ::-1, :]) * scale
    return mean, basis


class AlbedoModel(nn.Module):
    """Linear albedo in UV space (buffers only; nothing trainable).

    Args:
        mean: [H, W, 3] mean albedo in [0, 1].
        basis: [H, W, 3, K] basis.
        num_components: use the first ``num_components`` basis vectors.
        size: resize maps to ``size`` x ``size`` (bilinear) for rendering.
    """

    def __init__(self, mean: np.ndarray, basis: np.ndarray, num_components: int, size: int | None = None):
        super().__init__()
        k = min(num_components, basis.shape[-1])
        m = torch.as_tensor(np.asarray(mean), dtype=torch.float32).permute(2, 0, 1)[None]
        b = torch.as_tensor(np.asarray(basis)[..., :k], dtype=torch.float32).permute(3, 2, 0, 1)
        if size is not None and m.shape[-1] != size:
            m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=(size, size), mode="bilinear", align_corners=False)
        self.register_buffer("mean", m[0], persistent=False)  # [3, H, W]
        self.register_buffer("basis", b, persistent=False)  # [K, 3, H, W]
        self.num_components = k

    def forward(self, code: Tensor) -> Tensor:
        """code [N, K'] (K' >= K is truncated; smaller is zero-padded) -> [N, 3, H, W] in [0, 1]."""
        k = self.num_components
        if code.shape[1] < k:
            code = F.pad(code, (0, k - code.shape[1]))
        code = code[:, :k].to(self.basis.dtype)
        albedo = self.mean[None] + torch.einsum("nk,kchw->nchw", code, self.basis)
        return albedo.clamp(0.0, 1.0)

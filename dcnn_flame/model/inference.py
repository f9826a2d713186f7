"""The inference graph: image -> FLAME parameters, AU activations (and optionally vertices).

Used by the batch job's GPU actor and exported to ONNX. No rendering, no teachers except the
AU detector whose activations are part of the product (the 17 AU vector per image).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Output names, in the order ``InferenceModel.forward`` returns them (ONNX outputs too).
OUTPUT_NAMES = ("shape", "expression", "pose", "camera", "light", "albedo_code", "detail_code", "au")


def resize_matrix(size_in: int, size_out: int, dtype=torch.float32, device=None) -> Tensor:
    """[size_out, size_in]: the rows PyTorch's antialiased bilinear resize (``F.interpolate(...,
    antialias=True)``, the AU detector's own input resize) applies along one axis, taken from it
    by resizing the identity (the resize is linear and separable, so this is exact)."""
    # Two identical columns: with a width of 1, PyTorch 2.13's CPU antialiased kernel returns a
    # constant column (seen here), with 2 it resizes each column like any image's.
    eye = torch.eye(size_in, dtype=torch.float64, device=device).reshape(size_in, 1, size_in, 1).expand(-1, -1, -1, 2)
    rows = F.interpolate(eye.contiguous(), size=(size_out, 2), mode="bilinear", align_corners=False,
                         antialias=size_out < size_in)
    return rows[..., 0].reshape(size_in, size_out).t().to(dtype)


def antialiased_resize(images: Tensor, size: int) -> Tensor:
    """images [N, C, H, W] -> [N, C, size, size], as ``F.interpolate(mode="bilinear",
    antialias=True)`` (what the AU detector was trained to see), written as two matrix products
    so that the ONNX export carries it (the exporter has no antialiased resize). The matrices are
    built from the input's shape: constants in a traced graph."""
    h, w = images.shape[-2:]
    wy = resize_matrix(int(h), size, images.dtype, images.device)  # [size, H]
    wx = resize_matrix(int(w), size, images.dtype, images.device)  # [size, W]
    return torch.matmul(torch.matmul(wy, images), wx.t())


class InferenceModel(nn.Module):
    """Wraps a trained :class:`~dcnn_flame.model.dcnn_flame.DCNNFlame` and AU detector.

    Args:
        model: the reconstruction network (eval mode is set here).
        au_net: the AU detector (17 sigmoid outputs) or None (AU outputs are NaN).
        with_vertices: also return posed vertices [N, V, 3].
        au_input_size: resolution the AU detector sees.
    """

    def __init__(self, model: nn.Module, au_net: nn.Module | None, with_vertices: bool = False,
                 au_input_size: int = 112):
        super().__init__()
        self.model = model.eval()
        self.au_net = au_net.eval() if au_net is not None else None
        self.with_vertices = with_vertices
        self.au_input_size = au_input_size

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """images [N, 3, H, W] in [0, 1] -> (shape [N, S], expression [N, E], pose [N, 15],
        camera [N, 3], light [N, 27], albedo_code [N, K], detail_code [N, D], au [N, 17]
        [, vertices [N, V, 3]])."""
        out = self.model(images, render=False)
        n = images.shape[0]
        if self.au_net is not None:
            s = self.au_input_size
            au_in = images if tuple(images.shape[-2:]) == (s, s) else antialiased_resize(images, s)
            au = self.au_net(au_in).probs
        else:
            au = images.new_full((n, 17), float("nan"))
        detail = out.detail_code if out.detail_code is not None else images.new_zeros((n, 0))
        res = (out.shape, out.expression, out.pose, out.camera, out.light.reshape(n, 27),
               out.albedo_code, detail, au)
        if self.with_vertices:
            res = res + (out.vertices,)
        return res

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
            au_in = images if images.shape[-1] == s else F.interpolate(images, size=(s, s), mode="bilinear",
                                                                       align_corners=False)
            au = self.au_net(au_in).probs
        else:
            au = images.new_full((n, 17), float("nan"))
        detail = out.detail_code if out.detail_code is not None else images.new_zeros((n, 0))
        res = (out.shape, out.expression, out.pose, out.camera, out.light.reshape(n, 27),
               out.albedo_code, detail, au)
        if self.with_vertices:
            res = res + (out.vertices,)
        return res

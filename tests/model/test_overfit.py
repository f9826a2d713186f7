"""DCNN-FLAME learns: overfitting 8 synthetic samples (issue 4).

A few hundred CPU steps on 8 identities of the synthetic world (2 of their views each,
64 px, ResNet-18, no detail branch, landmark + photometric + regularisers) must cut the
landmark and photometric losses by large factors and bring the Eq. 15 vertex error well
below the FLAME mean-face baseline, both as is and after the similarity alignment of the
NoW/REALY protocol (an orthographic image does not fix a head's absolute size). The world
and the model use the same procedural head and the same number of components, so an exact
fit exists.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcnn_flame.config import FlameConfig, SyntheticConfig
from dcnn_flame.losses.combine import LossWeights
from dcnn_flame.model.build import DCNNFlameTask
from dcnn_flame.model.config import ModelConfig

IMG, VIEWS, SAMPLES, N_SHAPE, N_EXPR = 64, 2, 8, 20, 20
STEPS = 500
#: identity variation of the world: x3 the unit prior so identities differ from the mean face
#: by more than a 64 px image's landmark precision can hide (baseline ~14.6 mm).
SHAPE_SCALE = 3.0
REG = 1e-4

# Required improvement factors. Measured (500 steps; 2 threads / 1 thread): landmark loss
# 0.447 -> 0.043 / 0.042 (x10), photometric 0.756 -> 0.090 / 0.085 (x8.4), vertex error
# 14.65 -> 8.62 / 7.28 mm = 0.59 / 0.50 x the 14.64 mm mean face; aligned 12.85 -> 4.96 / 4.02 mm
# = 0.39 / 0.31 x the aligned mean face (12.85 mm).
# The path is seed-sensitive: with the head's 2026-11-25 AU17/AU23 fields (which change a few
# of these views slightly) torch seed 0 ends in a worse basin, 2 threads: landmark 0.447 ->
# 0.095 (x4.7), photometric x5.7, vertex 10.12 mm = 0.69 x mean face, aligned 6.36 mm = 0.49 x;
# seed 1: landmark x10.1, vertex 0.55 x, aligned 0.37 x. The landmark factor is set under the
# worse seed; the vertex errors against the mean face are the claims that matter.
LANDMARK_FACTOR = 4.0
PHOTOMETRIC_FACTOR = 5.0
VERTEX_VS_MEAN_FACE = 0.75
ALIGNED_VERTEX_VS_MEAN_FACE = 0.55


def _batch(identities) -> dict:
    def stack(name):
        return torch.from_numpy(np.stack([getattr(i, name)[:VIEWS] for i in identities]))

    return {
        "images": stack("images").permute(0, 1, 4, 2, 3).float() / 255.0,
        "landmarks": stack("landmarks").float(),
        "gt_shape": torch.from_numpy(np.stack([np.repeat(i.shape[None], VIEWS, 0) for i in identities])).float(),
        "gt_expression": stack("expression").float(),
        "gt_pose": stack("pose").float(),
    }


@pytest.mark.slow
def test_overfits_eight_synthetic_samples():
    from dcnn_flame.data.synthetic import procedural_head, world_for

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        world = world_for(SyntheticConfig(image_size=IMG, antialias=False, n_shape=N_SHAPE, n_expr=N_EXPR,
                                          shape_scale=SHAPE_SCALE, store_vertices=False))
        batch = _batch(world.generate(3, 0, SAMPLES))
        weights = LossWeights(content=0.0, style=0.0, expression=0.0, au=0.0, feedback=0.0, detail_reg=0.0,
                              shape_reg=REG, expr_reg=REG)
        task = DCNNFlameTask(flame=FlameConfig(n_shape=N_SHAPE, n_expr=N_EXPR),
                             model=ModelConfig(backbone="resnet18", image_size=IMG, use_detail=False,
                                               albedo_size=64),
                             loss=weights)
        torch.manual_seed(0)
        parts = task.build(torch.device("cpu"), data=procedural_head(0))
        model, criterion, evaluate = parts.model, parts.criterion, parts.evaluate

        def measure():
            model.eval()
            with torch.no_grad():
                out = model(batch["images"])
                terms = criterion(out, batch)
                metrics = evaluate(out, batch)
            model.train()
            return terms["landmark"].item(), terms["photometric"].item(), metrics, out.pose[:, 9:].norm(dim=1).mean().item()

        lmk0, photo0, m0, _ = measure()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(STEPS):
            terms = criterion(model(batch["images"]), batch)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
        lmk, photo, m, out_eye_norm = measure()
    finally:
        torch.set_num_threads(threads)

    summary = (f"landmark {lmk0:.4f} -> {lmk:.4f}, photometric {photo0:.4f} -> {photo:.4f}, vertex error "
               f"{m0['vertex_error_mm']:.2f} -> {m['vertex_error_mm']:.2f} mm (mean face "
               f"{m['mean_face_error_mm']:.2f} mm), aligned {m0['vertex_error_aligned_mm']:.2f} -> "
               f"{m['vertex_error_aligned_mm']:.2f} mm (mean face {m['mean_face_error_aligned_mm']:.2f} mm), landmark error {m0['landmark_error_px']:.2f} -> "
               f"{m['landmark_error_px']:.2f} px, eye pose {out_eye_norm:.3f} rad")
    print(summary)
    # untrained = the framed mean face
    assert abs(m0["vertex_error_mm"] - m0["mean_face_error_mm"]) < 0.1 * m0["mean_face_error_mm"], summary
    assert lmk * LANDMARK_FACTOR <= lmk0, summary
    assert photo * PHOTOMETRIC_FACTOR <= photo0, summary
    assert m["vertex_error_mm"] <= VERTEX_VS_MEAN_FACE * m["mean_face_error_mm"], summary
    assert m["vertex_error_aligned_mm"] <= ALIGNED_VERTEX_VS_MEAN_FACE * m["mean_face_error_aligned_mm"], summary
    # the eye-pose regulariser keeps the gaze near the (small) ground truth
    assert out_eye_norm < 0.3, summary

"""Light, label-preserving augmentation for the teachers' training images (batched, on device).

- horizontal flip: swaps the subject's left and right. Our 17 AUs are bilateral intensities
  and the 8 classes are symmetric names (contempt is one-sided but stays contempt), so the
  labels do not change;
- random crop/scale: a square window of side ``s`` in [crop_scale_min, 1] of the image at a
  random position, resized back (small zoom and shift, like detector jitter);
- colour jitter: brightness, contrast and saturation factors in [1 - j, 1 + j].

Random numbers come from a CPU ``torch.Generator`` so a seed gives the same augmentation on
every device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_LUMA = (0.299, 0.587, 0.114)


def augment_batch(images: Tensor, generator: torch.Generator, flip_prob: float = 0.5,
                  crop_scale_min: float = 0.9, color_jitter: float = 0.1) -> Tensor:
    """Randomly flip, crop/scale and colour-jitter each image independently.

    Args:
        images: [B, 3, H, W] float in [0, 1].
        generator: CPU generator (seeded by the caller).
        flip_prob: probability of a horizontal flip per image.
        crop_scale_min: smallest crop side as a fraction of the image (1 = no crop).
        color_jitter: j of the colour factors (0 = none).
    Returns: [B, 3, H, W] float in [0, 1], same device and dtype.
    """
    if not 0.0 < crop_scale_min <= 1.0:
        raise ValueError(f"crop_scale_min must be in (0, 1], got {crop_scale_min}")
    b = images.shape[0]
    dev, dt = images.device, images.dtype

    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator).to(device=dev, dtype=dt)

    u_scale, u_x, u_y, u_flip = uniform(4, b)
    s = crop_scale_min + (1.0 - crop_scale_min) * u_scale
    # The window [t - s, t + s] (normalised coords) stays inside [-1, 1]: |t| <= 1 - s.
    tx, ty = (2.0 * u_x - 1.0) * (1.0 - s), (2.0 * u_y - 1.0) * (1.0 - s)
    sx = torch.where(u_flip < flip_prob, -s, s)  # a negative x scale mirrors the image
    zero = torch.zeros_like(s)
    theta = torch.stack([torch.stack([sx, zero, tx], -1), torch.stack([zero, s, ty], -1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if color_jitter > 0:
        bright, contrast, sat = (1.0 + color_jitter * (2.0 * uniform(3, b) - 1.0))[..., None, None, None]
        out = out * bright
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * contrast + mean
        luma = torch.tensor(_LUMA, device=dev, dtype=dt).view(1, 3, 1, 1)
        gray = (out * luma).sum(1, keepdim=True)
        out = gray + (out - gray) * sat
    return out.clamp(0.0, 1.0)

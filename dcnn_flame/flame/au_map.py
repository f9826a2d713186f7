"""The map from facial Action Unit intensities to FLAME expression coefficients and jaw rotation.

FLAME's expression basis is a PCA basis, not a set of AUs, so putting "AU12 at 0.8" onto a
head needs a linear map ``expression = au @ A`` (``A`` [17, E]) plus a jaw rotation
``jaw = au @ J`` (``J`` [17, 3], axis-angle radians; AU25/AU26 open the mouth). The procedural
head carries an exact map in ``extras`` (its first 17 expression components *are* the AUs);
for a real FLAME model the user supplies one as an ``.npz`` with ``au_to_expr`` and
``au_to_jaw`` (fitted, for example, by regressing FLAME expression codes on AU labels).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor, nn

from dcnn_flame.constants import AU_IDS, NUM_AUS
from dcnn_flame.flame.data import FlameModelData

__all__ = ["AUExpressionMap"]


class AUExpressionMap(nn.Module):
    """AU vector -> (expression coefficients, jaw axis-angle), linear.

    Args:
        au_to_expr: [17, E] expression coefficients per unit of each AU (order
            :data:`~dcnn_flame.constants.AU_IDS`).
        au_to_jaw: [17, 3] jaw axis-angle (radians) per unit of each AU.

    Buffers are not persistent: the map belongs to the head model, not to a checkpoint.
    """

    def __init__(self, au_to_expr: np.ndarray | Tensor, au_to_jaw: np.ndarray | Tensor):
        super().__init__()
        a = torch.as_tensor(np.asarray(au_to_expr, dtype=np.float32))
        j = torch.as_tensor(np.asarray(au_to_jaw, dtype=np.float32))
        if a.dim() != 2 or a.shape[0] != NUM_AUS or tuple(j.shape) != (NUM_AUS, 3):
            raise ValueError(f"an AU map needs au_to_expr [{NUM_AUS}, E] and au_to_jaw [{NUM_AUS}, 3] "
                             f"(AUs in the order {AU_IDS}); got {tuple(a.shape)} and {tuple(j.shape)}")
        if not (torch.isfinite(a).all() and torch.isfinite(j).all()):
            raise ValueError("the AU map holds NaN or infinite values")
        self.register_buffer("au_to_expr", a, persistent=False)
        self.register_buffer("au_to_jaw", j, persistent=False)

    @property
    def num_expression(self) -> int:
        """E: the number of expression coefficients the map produces."""
        return int(self.au_to_expr.shape[1])

    def forward(self, au: Tensor) -> tuple[Tensor, Tensor]:
        """au [..., 17] -> (expression [..., E], jaw [..., 3]); dtype and device of the buffers."""
        if au.shape[-1] != NUM_AUS:
            raise ValueError(f"AU vectors need {NUM_AUS} entries (AUs {AU_IDS}), got shape {tuple(au.shape)}")
        au = au.to(dtype=self.au_to_expr.dtype, device=self.au_to_expr.device)
        return au @ self.au_to_expr, au @ self.au_to_jaw

    def truncated(self, n_expr: int) -> "AUExpressionMap":
        """The map restricted (or zero-padded) to ``n_expr`` expression coefficients."""
        a = self.au_to_expr.detach().cpu().numpy()
        out = np.zeros((NUM_AUS, n_expr), dtype=np.float32)
        k = min(n_expr, a.shape[1])
        out[:, :k] = a[:, :k]
        return AUExpressionMap(out, self.au_to_jaw.detach().cpu().numpy())

    @classmethod
    def from_model_data(cls, data: FlameModelData) -> "AUExpressionMap":
        """The map a head model carries in ``extras`` (the procedural head does).

        Raises:
            KeyError: the model has no map (a real FLAME file: use :meth:`from_npz`).
        """
        missing = [k for k in ("au_to_expr", "au_to_jaw") if k not in data.extras]
        if missing:
            raise KeyError(f"the head model '{data.source or data.edition}' carries no AU map ({missing} "
                           f"missing); give an .npz with au_to_expr [17, E] and au_to_jaw [17, 3] "
                           f"(AUExpressionMap.from_npz, config key au_map_path)")
        return cls(data.extras["au_to_expr"], data.extras["au_to_jaw"])

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> "AUExpressionMap":
        """Read an ``.npz`` with ``au_to_expr`` [17, E] and ``au_to_jaw`` [17, 3]."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"AU map file not found: {path}")
        with np.load(path, allow_pickle=False) as z:
            missing = {"au_to_expr", "au_to_jaw"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: AU map file lacks {sorted(missing)} (it has {sorted(z.files)})")
            return cls(z["au_to_expr"], z["au_to_jaw"])

    def save_npz(self, path: str | os.PathLike) -> str:
        """Write the map as an ``.npz`` readable by :meth:`from_npz`; returns the path."""
        path = os.fspath(path)
        np.savez(path, au_to_expr=self.au_to_expr.cpu().numpy(), au_to_jaw=self.au_to_jaw.cpu().numpy())
        return path

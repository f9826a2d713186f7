"""One file holding the trained supervision networks (AU detector + expression classifier).

Written by ``jobs/train_supervision.py``; read by the reconstruction criterion and the batch
job. Plain tensors and dicts only, so ``torch.load(weights_only=True)`` reads it.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Optional

import torch

from dcnn_flame.supervision.au import AUDetector, AUDetectorConfig
from dcnn_flame.supervision.expression import ExpressionClassifier, ExpressionClassifierConfig

FORMAT = "dcnn_flame.teachers/1"


def teachers_to_bytes(au: AUDetector, expr: ExpressionClassifier, meta: Optional[dict] = None) -> bytes:
    """Serialise both networks with their configs (and free-form ``meta``: metrics, data)."""
    payload = {
        "format": FORMAT,
        "au_config": dataclasses.asdict(au.cfg),
        "au_state": {k: v.detach().cpu() for k, v in au.state_dict().items()},
        "expr_config": dataclasses.asdict(expr.cfg),
        "expr_state": {k: v.detach().cpu() for k, v in expr.state_dict().items()},
        "meta": meta or {},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def teachers_from_bytes(data: bytes, where: str = "") -> tuple[AUDetector, ExpressionClassifier, dict]:
    """Inverse of :func:`teachers_to_bytes` -> (AU detector, expression classifier, meta)."""
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{where or 'teachers file'} is not a dcnn-flame teachers file (format "
                         f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}); "
                         f"create one with `python jobs/train_supervision.py`")
    au_cfg = AUDetectorConfig(**{k: (tuple(v) if k in ("channels", "strides") else v)
                                 for k, v in payload["au_config"].items()})
    ex_cfg = ExpressionClassifierConfig(**{k: (tuple(v) if k in ("channels", "strides") else v)
                                           for k, v in payload["expr_config"].items()})
    au, expr = AUDetector(au_cfg), ExpressionClassifier(ex_cfg)
    au.load_state_dict(payload["au_state"])
    expr.load_state_dict(payload["expr_state"])
    return au, expr, dict(payload.get("meta", {}))


def load_teachers(uri: str, options=None) -> tuple[AUDetector, ExpressionClassifier, dict]:
    """Read a teachers file from a path or URI."""
    from dcnn_flame.io.storage import read_bytes

    return teachers_from_bytes(read_bytes(uri, options), where=uri)

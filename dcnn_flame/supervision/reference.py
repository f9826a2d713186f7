"""A two-input AU detector: the face, and the same face's neutral as a reference.

Why. The batch job's check asks "how did this character's face change from its own neutral?"
(:mod:`dcnn_flame.generation.au_check`). A single-image detector answers it as p(expressed) -
p(neutral), and for the AUs that look like identity in one image (AU17's chin boss, AU23's
thinner lips) it hardly responds: a ridge read-out of the single-image detector J's conv
features finds AU17 with R^2 -0.02 from one image and 0.23 from the change against the face's
own neutral (docs/generation.md). This detector gets the neutral render as a second input.

Architecture. The single-image :class:`~dcnn_flame.supervision.au.AUDetector` ``base``'s own
adapter and conv trunk run on both images (one batch: the same BatchNorm statistics), giving
f(x) and f(r) [B, C, h, w]; a 1x1 convolution ``mix`` maps [f(x), f(x) - f(r)] (2C channels)
to C channels, and the base's attention fusion and FC layers read that. ``mix`` starts as the
identity on f(x) and zero on the difference, so before training the detector answers exactly
what ``base`` answers, whatever the reference (tested).

Training (:func:`reference_loss`, :func:`train_reference`) on within-face pairs
(:mod:`dcnn_flame.supervision.pairs`):

    L = BCE(D(expressed | neutral), y) + BCE(D(neutral | neutral), 0)

(weighted soft BCE, y the view's 17 AU intensities). The check's response is
D(expressed | neutral) - D(neutral | neutral) (:func:`reference_response`).

It is a different instrument from the paper's single-image teacher (the reconstruction losses
keep using that one): it answers a question about a change, given the neutral.

Files: :func:`reference_to_bytes` / :func:`load_au_detector` (format ``dcnn_flame.au_reference/1``;
:func:`load_au_detector` also reads a teachers file and returns its single-image detector).
"""
from __future__ import annotations

import dataclasses
import io
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcnn_flame.constants import NUM_AUS
from dcnn_flame.losses.au import au_bce_loss
from dcnn_flame.supervision.au import AUDetector, AUDetectorConfig, AUDetectorOutput

FORMAT = "dcnn_flame.au_reference/1"


class ReferenceAUDetector(nn.Module):
    """forward(x [B, 3, H, W], reference [B, 3, H, W]) in [0, 1] -> :class:`AUDetectorOutput`.

    Args:
        base: the single-image detector whose layers it reuses (shared, not copied).
    """

    def __init__(self, base: AUDetector):
        super().__init__()
        self.base = base
        c = base.trunk.out_channels
        self.mix = nn.Conv2d(2 * c, c, kernel_size=1)
        with torch.no_grad():
            self.mix.weight.zero_()
            self.mix.weight[:, :c, 0, 0] = torch.eye(c)
            self.mix.bias.zero_()

    @property
    def cfg(self) -> AUDetectorConfig:
        return self.base.cfg

    @property
    def feature_dim(self) -> int:
        return self.base.feature_dim

    def features(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, C, h, w]: the base's adapter and conv trunk."""
        return self.base.trunk(self.base.adapter(images))

    def head(self, fx: Tensor, fr: Tensor) -> AUDetectorOutput:
        """Trunk features of the images fx and of their references fr ([B, C, h, w] each) -> outputs."""
        fused, attn, gate = self.base.fusion(self.mix(torch.cat([fx, fx - fr], dim=1)))
        feats = F.relu(self.base.fc1(fused))
        logits = self.base.fc2(self.base.dropout(feats))
        return AUDetectorOutput(torch.sigmoid(logits), logits, feats, attn, gate)

    def forward(self, x: Tensor, reference: Tensor) -> AUDetectorOutput:
        if x.shape != reference.shape:
            raise ValueError(f"the image and its reference must have one shape, got {tuple(x.shape)} and "
                             f"{tuple(reference.shape)}")
        b = x.shape[0]
        f = self.features(torch.cat([x, reference]))  # one batch: same BN statistics
        return self.head(f[:b], f[b:])

    def forward_pair(self, expressed: Tensor, neutral: Tensor) -> tuple[AUDetectorOutput, AUDetectorOutput]:
        """(D(expressed | neutral), D(neutral | neutral)) with one trunk pass over the 2B images
        (``forward`` twice would pass the neutral images through the trunk three times).

        Shapes: expressed, neutral [B, 3, H, W] -> two outputs of B rows. In eval mode it equals
        ``(self(expressed, neutral), self(neutral, neutral))``; in train mode BatchNorm's batch
        statistics come from the 2B distinct images."""
        if expressed.shape != neutral.shape:
            raise ValueError(f"the image and its reference must have one shape, got {tuple(expressed.shape)} and "
                             f"{tuple(neutral.shape)}")
        b = expressed.shape[0]
        f = self.features(torch.cat([expressed, neutral]))
        fe, fn = f[:b], f[b:]
        return self.head(fe, fn), self.head(fn, fn)


def reference_loss(net: ReferenceAUDetector, neutral: Tensor, expressed: Tensor, au: Tensor,
                   pos_weight: Optional[Tensor] = None) -> tuple[Tensor, dict[str, float]]:
    """BCE(D(expressed | neutral), y) + BCE(D(neutral | neutral), 0) on one batch of pairs.

    Shapes: neutral, expressed [B, 3, S, S] in [0, 1]; au [B, 17]; pos_weight [17] or None.
    Returns (scalar loss, {"expressed": ..., "neutral": ...} as floats).
    """
    if neutral.shape != expressed.shape or au.shape != (expressed.shape[0], NUM_AUS):
        raise ValueError(f"pairs need neutral and expressed of one shape and au [B, {NUM_AUS}], got "
                         f"{tuple(neutral.shape)}, {tuple(expressed.shape)}, {tuple(au.shape)}")
    out_e, out_n = net.forward_pair(expressed, neutral)
    le = au_bce_loss(out_e.logits, au, pos_weight=pos_weight)
    ln = au_bce_loss(out_n.logits, torch.zeros_like(au), pos_weight=pos_weight)
    return le + ln, {"expressed": float(le.detach()), "neutral": float(ln.detach())}


def reference_response(net: ReferenceAUDetector, images: Tensor, neutral: Tensor) -> Tensor:
    """D(images | neutral) - D(neutral | neutral) in the net's current mode.

    Shapes: images [K, 3, S, S]; neutral [3, S, S] (one face) or [K, 3, S, S] -> [K, 17]."""
    if neutral.dim() == 3:  # one face: its trunk features once, broadcast over the K images
        if neutral.shape != images.shape[1:]:
            raise ValueError(f"the images and their reference must have one size, got {tuple(images.shape)} and "
                             f"{tuple(neutral.shape)}")
        f = net.features(torch.cat([images, neutral[None]]))
        fx, fn = f[:-1], f[-1:]
        return net.head(fx, fn.expand_as(fx)).probs - net.head(fn, fn).probs
    out_e, out_n = net.forward_pair(images, neutral)
    return out_e.probs - out_n.probs


def train_reference(net: ReferenceAUDetector, train, val, *, epochs: int, lr: float, batch_size: int = 16,
                    pos_weight: Optional[Tensor] = None, seed: int = 0, augment: Optional[dict] = None,
                    log=print, on_best=None) -> tuple[int, list[dict]]:
    """:func:`~dcnn_flame.supervision.pairs.train_on_pairs` with :func:`reference_loss`: Adam,
    cosine learning rate, best epoch by the val pairs' ``contrast_mae`` (the response
    D(e | n) - D(n | n) against g(y)); the last epoch when ``val`` is empty.

    Args:
        train, val: :class:`~dcnn_flame.supervision.pairs.PairSet`.
        augment: ``augment_batch`` keyword arguments applied identically to both images of a pair.
        on_best: as in :func:`~dcnn_flame.supervision.pairs.train_on_pairs`.
    Returns: (best epoch, per-epoch history); ``net`` ends with the best epoch's weights.
    """
    from dcnn_flame.supervision.pairs import train_on_pairs

    # 2 images per pair through the trunk (forward_pair), 2 head passes
    return train_on_pairs(net, train, val, reference_loss, epochs=epochs, lr=lr, batch_size=batch_size,
                          pos_weight=pos_weight, seed=seed, augment=augment, log=log, tag="reference",
                          images_per_pair=2, on_best=on_best)


def at_input_size(net: nn.Module, size: int) -> nn.Module:
    """The same AU detector (single-image or two-input) with every weight, for inputs of ``size``
    pixels (progressive resizing: train at 112 px, then fine-tune at 224). The networks are
    convolutional up to a spatial pooling whose region priors are built per feature-map size, so
    the weights fit any size. Returns ``net`` itself when its size is already ``size``."""
    if int(net.cfg.input_size) == int(size):
        return net
    if int(size) < 16:
        raise ValueError(f"input size must be >= 16 pixels, got {size}")
    base = AUDetector(dataclasses.replace(net.cfg, input_size=int(size)))
    out = ReferenceAUDetector(base) if isinstance(net, ReferenceAUDetector) else base
    out.load_state_dict(net.state_dict())
    return out.to(next(net.parameters()).device)


def reference_to_bytes(net: ReferenceAUDetector, meta: Optional[dict] = None, half: bool = False) -> bytes:
    """The detector (its base's config and every weight) and free-form ``meta`` as bytes;
    ``half`` stores the floating-point tensors as float16 (half the size; loading casts them back)."""
    def cast(v: Tensor) -> Tensor:
        v = v.detach().cpu()
        return v.half() if half and v.is_floating_point() else v

    payload = {"format": FORMAT, "au_config": dataclasses.asdict(net.cfg),
               "state": {k: cast(v) for k, v in net.state_dict().items()}, "meta": meta or {}}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def load_au_detector(uri: str, options=None) -> tuple[nn.Module, dict]:
    """An AU detector file -> (detector, meta): a two-input detector file gives a
    :class:`ReferenceAUDetector`, a teachers file (``jobs/train_supervision.py``) its
    single-image :class:`AUDetector`."""
    from dcnn_flame.io.storage import read_bytes
    from dcnn_flame.supervision.bundle import FORMAT as TEACHERS_FORMAT
    from dcnn_flame.supervision.bundle import teachers_from_bytes

    data = read_bytes(uri, options)
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    kind = payload.get("format") if isinstance(payload, dict) else None
    if kind == TEACHERS_FORMAT:
        au, _, meta = teachers_from_bytes(data, where=uri)
        return au, meta
    if kind != FORMAT:
        raise ValueError(f"{uri} is neither a teachers file nor a two-input AU detector file (format {kind!r}); "
                         f"make one with `python jobs/train_supervision.py` or "
                         f"`python -m dcnn_flame.supervision.pairs --reference`")
    cfg = AUDetectorConfig(**{k: (tuple(v) if k in ("channels", "strides") else v)
                              for k, v in payload["au_config"].items()})
    net = ReferenceAUDetector(AUDetector(cfg))
    net.load_state_dict(payload["state"])
    return net, dict(payload.get("meta", {}))

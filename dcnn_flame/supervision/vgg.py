"""Frozen VGG feature extractor for the content and style losses (paper Section 3.1).

Layers are named as in Gatys et al.: ``conv{block}_{i}``. We return the activations
*after* the ReLU that follows each named conv (Gatys' "conv1_1" is relu1_1 in their code
and in most reimplementations); ``post_relu=False`` returns the raw conv outputs instead.
Max pooling is kept (the ImageNet weights were trained with it).

Only the layers up to the deepest requested one are built and run. Weights come from a
torchvision ``vgg19`` (or ``vgg16``) file; its classifier and deeper convs are skipped.
Without a file the weights are random (He init); ``pretrained`` tells which.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from dcnn_flame.model.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    load_weights,
    make_vgg_features,
    vgg_layer_indices,
)

#: Style layers of the paper (Eq. 2) and the content layer (Eq. 1).
STYLE_LAYERS: tuple[str, ...] = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
CONTENT_LAYER: str = "conv4_2"


class VGGFeatures(nn.Module):
    """Frozen VGG returning named activations of an image in [0, 1].

    Args:
        layers: names ``conv{b}_{i}`` to return (default: 5 style layers + conv4_2).
        weights_path: torchvision-format VGG file; None keeps random weights.
        arch: "vgg19" (paper) or "vgg16" (used by LPIPS).
        post_relu: return activations after the ReLU (default) or the raw conv output.
        mean, std: input normalisation (non-persistent buffers); ImageNet by default.

    forward: x [B, 3, H, W] in [0, 1] -> ``{name: [B, C_l, H_l, W_l]}`` with
        H_l = H / 2**(block-1) (e.g. 32x32 input: conv1_1 [B, 64, 32, 32],
        conv4_2 [B, 512, 4, 4], conv5_1 [B, 512, 2, 2]).

    Parameters never require grad and the module stays in eval mode even when a parent
    calls ``.train()``; gradients flow to ``x``.
    """

    def __init__(
        self,
        layers: Sequence[str] = STYLE_LAYERS + (CONTENT_LAYER,),
        weights_path: str | Path | None = None,
        arch: str = "vgg19",
        post_relu: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        index = vgg_layer_indices(arch)
        unknown = [n for n in layers if n not in index]
        if unknown or not layers:
            raise ValueError(f"unknown or no VGG layers {unknown or list(layers)} for {arch}; valid: {list(index)}")
        self.layers: tuple[str, ...] = tuple(dict.fromkeys(layers))
        offset = 1 if post_relu else 0
        self._capture: dict[int, str] = {index[n] + offset: n for n in self.layers}
        deepest = max(self._capture)
        self.normalize = Normalize(mean, std)
        # Not in-place: a captured conv output must not be overwritten by its ReLU.
        self.features = make_vgg_features(arch, upto=deepest, relu_inplace=False)
        self.pretrained = weights_path is not None
        if weights_path is not None:
            full = len(make_vgg_features(arch))
            skip = ("classifier.",) + tuple(f"features.{i}." for i in range(deepest + 1, full))
            load_weights(self, weights_path, strict=True, skip_prefixes=skip)
        self.arch = arch
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> VGGFeatures:
        # Frozen teacher: ignore a parent's .train().
        return super().train(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        h = self.normalize(x)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self._capture:
                out[self._capture[i]] = h
        return {n: out[n] for n in self.layers}

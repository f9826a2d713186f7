"""Parameter and FLOP count of a DCNN-FLAME configuration, next to the paper's numbers.

    python -m dcnn_flame.model.summary            # default (full) model at 224x224
"""
from __future__ import annotations

import argparse
from collections import OrderedDict

import torch

#: Paper Table 5: DCNN-FLAME parameters and GFLOPs per image.
PAPER_PARAMS_M = 46.8
PAPER_GFLOPS = 39.5


def count_parameters(module: torch.nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_breakdown(model) -> "OrderedDict[str, int]":
    """Trainable parameters per top-level submodule."""
    out: OrderedDict[str, int] = OrderedDict()
    for name, child in model.named_children():
        n = count_parameters(child)
        if n:
            out[name] = n
    return out


def count_flops(model, image_size: int, views: int = 1) -> int:
    """FLOPs of one reconstruction forward pass for ``views`` images (render excluded):
    matmul/conv FLOPs counted by torch's FlopCounterMode (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, views, 3, image_size, image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, render=False)
    return int(counter.get_total_flops())


def main(argv=None) -> None:
    from dcnn_flame.config import FlameConfig
    from dcnn_flame.model.build import build_model
    from dcnn_flame.model.config import ModelConfig

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args(argv)
    model = build_model(FlameConfig(), ModelConfig(backbone=args.backbone, image_size=args.image_size)).eval()
    total = count_parameters(model)
    flops = count_flops(model, args.image_size)
    print(f"DCNN-FLAME ({args.backbone}, {args.image_size}x{args.image_size})")
    for name, n in parameter_breakdown(model).items():
        print(f"  {name:<16} {n / 1e6:8.2f} M")
    print(f"  {'total':<16} {total / 1e6:8.2f} M trainable parameters   (paper: {PAPER_PARAMS_M} M)")
    print(f"  forward          {flops / 1e9:8.2f} GFLOPs per image, render excluded   (paper: {PAPER_GFLOPS} GFLOPs)")


if __name__ == "__main__":
    main()

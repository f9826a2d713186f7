"""DCNN-FLAME throughput: training step (every loss on) and batched inference, images/s.

    python benchmarks/bm_model.py                          # CPU, small batches
    python benchmarks/bm_model.py --device cuda --bf16 --channels-last --train-batch 64 --infer-batch 512

Targets on one H200 (bf16): >= 1,500 images/s training with every loss on, >= 5,000 images/s
batched inference, <= 5 ms single-image latency. Prints one line per measurement.
"""
from __future__ import annotations

import argparse
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(samples: int, views: int, size: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "images": torch.rand(samples, views, 3, size, size, generator=g).to(device),
        "landmarks": (torch.rand(samples, views, 68, 2, generator=g) * size).to(device),
        "landmarks5": torch.full((samples, views, 5, 2), float("nan"), device=device),
        "au": torch.rand(samples, views, 17, generator=g).to(device),
        "expression_class": torch.randint(0, 8, (samples, views), generator=g).to(device),
        "domain": torch.zeros(samples, dtype=torch.long, device=device),
    }


def _memory_format(module, channels_last: bool):
    return module.to(memory_format=torch.channels_last) if channels_last else module


def bench_train(task, device, samples, views, size, iters, bf16, channels_last=False) -> float:
    parts = task.build(device)
    model, criterion = _memory_format(parts.model.train(), channels_last), parts.criterion
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = _batch(samples, views, size, device)

    def step():
        opt.zero_grad(set_to_none=True)
        with (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else _Null()):
            out = model(batch["images"])
            terms = criterion(out, batch)
        terms["total"].backward()
        opt.step()

    step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return samples * views * iters / (time.perf_counter() - t)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def bench_infer(task, device, batch, size, iters, bf16, channels_last=False) -> tuple[float, float]:
    from dcnn_flame.model.inference import InferenceModel

    parts = task.build(device)
    net = _memory_format(InferenceModel(parts.model, parts.evaluate.au_net).to(device).eval(), channels_last)
    x = torch.rand(batch, 3, size, size, device=device)
    one = x[:1]
    with torch.no_grad(), (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else _Null()):
        net(x)
        net(one)
        _sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            net(x)
        _sync(device)
        ips = batch * iters / (time.perf_counter() - t)
        lat = []
        for _ in range(max(iters, 5)):
            t = time.perf_counter()
            net(one)
            _sync(device)
            lat.append(time.perf_counter() - t)
    lat.sort()
    return ips, 1000 * lat[len(lat) // 2]


def main(argv=None) -> None:
    from dcnn_flame.config import FlameConfig
    from dcnn_flame.losses.combine import LossWeights
    from dcnn_flame.model.build import DCNNFlameTask
    from dcnn_flame.model.config import ModelConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--channels-last", action="store_true", help="channels-last memory format (GPU)")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--train-batch", type=int, default=2, help="samples (x4 views) per training step")
    ap.add_argument("--infer-batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    task = DCNNFlameTask(flame=FlameConfig(), model=ModelConfig(backbone=args.backbone, image_size=args.image_size),
                         loss=LossWeights(mmd=0.1, style_consistency=0.1))
    print(f"device={device} bf16={args.bf16} channels_last={args.channels_last} backbone={args.backbone} "
          f"size={args.image_size} "
          f"threads={torch.get_num_threads()}")
    ips = bench_train(task, device, args.train_batch, 4, args.image_size, args.iters, args.bf16, args.channels_last)
    print(f"train (every loss on), batch {args.train_batch}x4 images: {ips:10.1f} images/s")
    ips, lat = bench_infer(task, device, args.infer_batch, args.image_size, args.iters, args.bf16,
                           args.channels_last)
    print(f"inference, batch {args.infer_batch}:            {ips:10.1f} images/s")
    print(f"inference, single image latency:      {lat:10.2f} ms (median)")


if __name__ == "__main__":
    main()

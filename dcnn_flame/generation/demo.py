"""The embedded demo of the batch job: a sample character library and a small checkpoint,
both made by the project from its synthetic world (nothing is downloaded or shipped).

- :func:`make_sample_library`: stylised character portraits rendered from the procedural head
  with our renderer (random identity, albedo, a slight head turn, flat toon colours and a plain
  backdrop), one folder per character, like a studio's library.
- :func:`train_demo_checkpoint`: a small DCNN-FLAME (ResNet-18, 112 px) trained in-process by
  direct supervision on the synthetic world's ground truth (shape, expression, pose, camera,
  albedo code) for a fixed number of steps (80 steps on 40 identities; minutes on 2 CPU cores), saved with
  :func:`dcnn_flame.training.checkpoint.save_checkpoint`, so the job loads it with the same
  loader as a checkpoint of ``jobs/train.py``. It is a demo model: it makes plausible heads,
  not a faithful reconstruction (train with jobs/train.py for that).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict
from typing import Optional

import numpy as np
import torch

from dcnn_flame.io import storage
from dcnn_flame.io.storage import StorageOptions


def _world(image_size: int, num_views: int, seed: int = 0, max_yaw: float = 20.0, data=None):
    from dcnn_flame.config import SyntheticConfig
    from dcnn_flame.data.synthetic import SyntheticWorld, procedural_head

    cfg = SyntheticConfig(image_size=image_size, max_yaw_deg=max_yaw, max_pitch_deg=10.0, max_roll_deg=5.0,
                          procedural_seed=seed)
    return SyntheticWorld(cfg, data if data is not None else procedural_head(seed), num_views=num_views)


def stylise(image: np.ndarray, levels: int = 6, saturation: float = 1.35) -> np.ndarray:
    """Toon look: boost saturation and posterise. [H, W, 3] uint8 -> [H, W, 3] uint8."""
    x = image.astype(np.float32) / 255.0
    grey = x.mean(axis=-1, keepdims=True)
    x = np.clip(grey + (x - grey) * saturation, 0.0, 1.0)
    x = np.round(x * (levels - 1)) / (levels - 1)
    return (x * 255.0).round().astype(np.uint8)


def make_sample_library(uri: str, count: int = 12, image_size: int = 256, seed: int = 7,
                        options: Optional[StorageOptions] = None, data=None,
                        ids: Optional[list[str]] = None) -> list[str]:
    """Render ``count`` stylised characters to ``<uri>/<character_id>/portrait.png``.

    Deterministic in (count, image_size, seed). Existing portraits are kept (not rewritten).

    Returns:
        the character ids (``ids`` or ``character_00`` ...).
    """
    from dcnn_flame.generation.writers import png_bytes

    ids = list(ids) if ids is not None else [f"character_{i:02d}" for i in range(count)]
    world = None
    for i, cid in enumerate(ids):
        target = storage.join(storage.resolve(uri), storage.safe_key(cid), "portrait.png")
        if storage.exists(target, options):
            continue
        if world is None:
            world = _world(image_size, 1, max_yaw=15.0, data=data)
        params = world.sample(seed, i)
        # Mostly neutral-ish portraits, some with an expression, on a flat backdrop.
        params.background[:] = np.asarray([0.85, 0.82, 0.75], np.float32) * (0.8 + 0.2 * ((i % 3) / 2))
        img = world.render(params).images[0]
        storage.atomic_write_bytes(target, png_bytes(stylise(img)), options)
    return ids


def demo_model_config():
    """The small architecture of the demo checkpoint."""
    from dcnn_flame.model.config import ModelConfig

    return ModelConfig(backbone="resnet18", image_size=112, fusion_dim=128, identity_dim=128, mapping_hidden=128,
                       detail_dim=32, uv_size=32, albedo_size=128)


def train_demo_checkpoint(uri: str, steps: int = 80, batch_size: int = 8, seed: int = 0, model_cfg=None,
                          data=None, pool_size: int = 40, log_every: int = 20, num_threads: Optional[int] = None
                          ) -> str:
    """Train the demo model on the synthetic world and save a checkpoint directory at ``uri`` (local).

    Args:
        uri: checkpoint directory to create (model.pt, train_state.pt, config.json, meta.json).
        steps: optimizer steps (0 = save the untrained initialisation; tests use that).
        batch_size: images per step.
        model_cfg: ModelConfig (None = :func:`demo_model_config`).
        data: the procedural head (None = built).
        pool_size: synthetic identities rendered once (2 views each) and cycled through.
    Returns:
        ``uri`` (resolved).
    """
    from dcnn_flame.config import FlameConfig
    from dcnn_flame.data.synthetic import procedural_head
    from dcnn_flame.model.build import build_model
    from dcnn_flame.training.checkpoint import rng_state, save_checkpoint

    if not storage.is_local(uri):
        raise ValueError(f"the demo checkpoint is written locally; got {uri!r}")
    uri = storage.resolve(uri)
    if num_threads:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    model_cfg = model_cfg or demo_model_config()
    flame_cfg = FlameConfig(n_shape=100, n_expr=50)
    data = data if data is not None else procedural_head(flame_cfg.procedural_seed)
    model = build_model(flame_cfg, model_cfg, data)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    t0 = time.time()
    if steps > 0:
        world = _world(model_cfg.image_size, 2, seed=flame_cfg.procedural_seed, max_yaw=30.0, data=data)
        ids = world.generate(seed, 0, pool_size)
        imgs = torch.from_numpy(np.stack([s.images for s in ids])).permute(0, 1, 4, 2, 3).float() / 255.0
        gt_shape = torch.from_numpy(np.stack([s.shape for s in ids])).float()[:, : flame_cfg.n_shape]
        gt_expr = torch.from_numpy(np.stack([s.expression for s in ids])).float()[..., : flame_cfg.n_expr]
        gt_pose = torch.from_numpy(np.stack([s.pose for s in ids])).float()
        gt_cam = torch.from_numpy(np.stack([s.camera for s in ids])).float()
        k = model.albedo_model.num_components
        gt_alb = torch.from_numpy(np.stack([s.albedo for s in ids])).float()[:, :k]
        print(f"demo checkpoint: rendered {pool_size} synthetic identities in {time.time() - t0:.0f}s; "
              f"training {steps} steps ...", flush=True)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for step in range(1, steps + 1):
            idx = torch.randint(0, pool_size, (max(1, batch_size // 2),), generator=gen)
            out = model(imgs[idx], render=False)
            B, V = len(idx), 2
            loss = (torch.nn.functional.mse_loss(out.shape, gt_shape[idx])
                    + torch.nn.functional.mse_loss(out.expression, gt_expr[idx].reshape(B * V, -1))
                    + 10.0 * torch.nn.functional.mse_loss(out.pose, gt_pose[idx].reshape(B * V, -1))
                    + torch.nn.functional.mse_loss(torch.log(out.camera[:, :1].abs() + 1e-6),
                                                   torch.log(gt_cam[idx].reshape(B * V, 3)[:, :1]))
                    + 10.0 * torch.nn.functional.mse_loss(out.camera[:, 1:], gt_cam[idx].reshape(B * V, 3)[:, 1:])
                    + 0.1 * torch.nn.functional.mse_loss(out.albedo_code, gt_alb[idx].repeat_interleave(V, 0)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % log_every == 0 or step == steps:
                print(f"demo checkpoint: step {step}/{steps} loss {float(loss.detach()):.4f} "
                      f"({time.time() - t0:.0f}s)", flush=True)
        model.eval()
    config = {"stage": "demo", "name": "demo", "model": asdict(model_cfg), "flame": asdict(flame_cfg),
              "supervision": {"teachers_path": None, "teacher_image_size": 112},
              "demo": {"steps": steps, "batch_size": batch_size, "seed": seed, "pool_size": pool_size,
                       "trainer": "dcnn_flame.generation.demo.train_demo_checkpoint (direct supervision on "
                                  "the synthetic world's ground truth)"}}
    parent = os.path.dirname(uri)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".ckpt-", dir=parent)
    try:
        save_checkpoint(tmp, model=model, optimizer=opt, scheduler=sched, step=steps, rng=[rng_state()],
                        counters={}, config=config, metrics={"train_seconds": time.time() - t0})
        if os.path.exists(uri):
            shutil.rmtree(uri)
        os.replace(tmp, uri)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return uri

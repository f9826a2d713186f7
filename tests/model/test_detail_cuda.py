"""The detail decoder on CUDA (channels-last inside) gives the CPU's maps (skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_detail_decoder_on_cuda_matches_cpu():
    from dcnn_flame.model.detail import DetailDecoder

    torch.manual_seed(0)
    dec = DetailDecoder(32, 10, uv_size=64, max_displacement=1.0, width=64).eval()
    torch.nn.init.normal_(dec.out.weight, std=0.3)  # the last conv starts at zero: make the maps non-trivial
    sigma, expr, jaw = torch.randn(40, 32), torch.randn(40, 10), torch.randn(40, 3)
    with torch.inference_mode():
        cpu = dec(sigma, expr, jaw)
        gpu = dec.cuda()(sigma.cuda(), expr.cuda(), jaw.cuda())
    assert gpu.shape == cpu.shape == (40, 1, 64, 64) and cpu.abs().max() > 0.1
    torch.testing.assert_close(gpu.float().cpu().contiguous(), cpu, rtol=0, atol=2e-3)  # TF32 convs

"""to_host: device -> host copies through pinned memory give the tensors bit for bit."""
from __future__ import annotations

import pytest
import torch


def test_to_host_returns_cpu_tensors_as_they_are():
    from dcnn_flame.generation.transfer import to_host

    a, b = torch.randn(3, 4), torch.arange(5, dtype=torch.uint8)
    ha, hb = to_host(a, b)
    assert ha is a and hb is b
    assert to_host() == ()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_host_copies_cuda_tensors_exactly_into_pinned_memory():
    from dcnn_flame.generation.transfer import to_host

    g = torch.Generator().manual_seed(0)
    ref = [torch.randn(7, 5023, 3, generator=g), torch.randint(0, 255, (4, 160, 160, 3), generator=g).to(torch.uint8),
           torch.randn(6, 4, generator=g).t()]  # a non-contiguous one
    dev = [t.cuda() for t in ref]
    dev[0].mul_(2.0)  # queued work before the copies is seen by them
    out = to_host(*dev, ref[1])
    assert all(o.device.type == "cpu" for o in out) and out[3] is ref[1]
    assert out[0].is_pinned() and out[1].is_pinned()
    assert torch.equal(out[0], ref[0] * 2.0) and torch.equal(out[1], ref[1]) and torch.equal(out[2], ref[2])
    for _ in range(3):  # the caching host allocator hands freed blocks back: still exact
        again = to_host(*dev)
        assert torch.equal(again[0], ref[0] * 2.0) and torch.equal(again[2], ref[2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_crops_on_cuda_equals_the_cpu_result():
    """The crops travel as uint8 through pinned memory and are converted on the device: the same
    tensor as on the CPU (resize included, to float rounding)."""
    import numpy as np

    from dcnn_flame.generation.predictor import decode_crops
    from dcnn_flame.generation.preprocess import CROP_BYTES

    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, CROP_BYTES, dtype=np.uint8).tobytes() for _ in range(5)]
    for size in (224, 112):
        cpu = decode_crops(crops, size)
        dev = decode_crops(crops, size, torch.device("cuda"))
        assert dev.device.type == "cuda" and dev.shape == cpu.shape
        torch.testing.assert_close(dev.cpu(), cpu, rtol=0, atol=0 if size == 224 else 1e-5)

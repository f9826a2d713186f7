"""Renderer tests run on one torch thread: their tensors are small, so intra-op threads
only add synchronisation (several times slower on a busy 2-core machine), and one thread
fixes the floating-point reduction order of the optimisation tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

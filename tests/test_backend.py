"""Backend resolution: one place turns backend=/device= into a concrete choice."""

import numpy as np
import pytest

from rankkit._backend import HAS_CUDA, HAS_TORCH, array_backend, resolve_backend


def test_array_backend_names_numpy_and_torch():
    assert array_backend(np.zeros(3)) == "numpy"
    assert array_backend([1, 2]) == "numpy"
    if HAS_TORCH:
        import torch

        assert array_backend(torch.zeros(3)) == "torch"


def test_auto_follows_input_array():
    torch = pytest.importorskip("torch")
    backend, device = resolve_backend("auto", like=torch.zeros(2))
    assert backend == "torch" and str(device) == "cpu"


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU machine 'auto' picks CUDA")
def test_auto_without_gpu_is_numpy_on_cpu():
    assert resolve_backend("auto") == ("numpy", "cpu")


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("jax")


def test_numpy_backend_refuses_a_gpu_device():
    with pytest.raises(ValueError, match="CPU only"):
        resolve_backend("numpy", device="cuda")


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without CUDA")
def test_torch_cuda_without_gpu_is_a_clear_error():
    pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_backend("torch", device="cuda")

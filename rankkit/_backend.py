"""Optional array backends, probed once at import (no global mutable state).

``numpy`` is always present. ``torch`` (CPU or CUDA) and ``cupy`` (CUDA) are optional: a
missing package or a missing GPU is recorded in the flags below, never an import error.
``HAS_TORCH`` / ``HAS_CUPY`` are probed at import (a file-system lookup); ``HAS_CUDA`` once,
on first use, because asking torch imports it.
Every array-returning public function takes ``backend=`` ("auto", "numpy", "torch",
"cupy") and ``device=``; :func:`resolve_backend` is the one place that turns those into a
concrete choice.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import numpy as np

__all__ = ["HAS_TORCH", "HAS_CUPY", "HAS_CUDA", "BACKENDS", "resolve_backend", "array_backend",  # noqa: F822 (HAS_CUDA: module __getattr__)
           "torch_cuda_available", "cupy_cuda_available", "to_numpy", "to_backend", "namespace",
           "qr_r", "svdvals", "first_nonfinite", "astype"]

BACKENDS = ("auto", "numpy", "torch", "cupy")

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_CUPY = importlib.util.find_spec("cupy") is not None


def torch_cuda_available() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return bool(torch.cuda.is_available())


def cupy_cuda_available() -> bool:
    if not HAS_CUPY:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception as exc:  # a cupy wheel without a driver: warn, never crash
        warnings.warn(f"cupy is installed but no CUDA device is usable ({exc}); using CPU",
                      RuntimeWarning, stacklevel=2)
        return False


@functools.cache
def _has_cuda() -> bool:
    """``HAS_CUDA``, probed once, on first use: asking torch about CUDA imports torch
    (2–3 s), which ``import rankkit``, ``rankkit --help`` and every numpy-only call must
    not pay."""
    return torch_cuda_available() if HAS_TORCH else False


def __getattr__(name: str):
    # HAS_CUDA is a module attribute computed on first access (PEP 562), then cached as a
    # plain global; HAS_TORCH / HAS_CUPY need no import and stay eager.
    if name == "HAS_CUDA":
        globals()["HAS_CUDA"] = value = _has_cuda()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def array_backend(x) -> str:
    """Name of the backend an array belongs to: "numpy", "torch" or "cupy"."""
    mod = type(x).__module__.split(".")[0]
    if mod == "torch":
        return "torch"
    if mod == "cupy":
        return "cupy"
    return "numpy"


def to_numpy(x, dtype=None) -> np.ndarray:
    """A NumPy copy (or view) of a NumPy, torch (any device) or CuPy array; ``dtype`` None
    keeps the array's own. The one conversion to NumPy of the package."""
    backend = array_backend(x)
    if backend == "torch":
        x = x.detach().cpu().numpy()
    elif backend == "cupy":
        x = x.get()
    return np.asarray(x, dtype=dtype)


def namespace(backend: str):
    """The array module of a backend (``numpy``, ``torch`` or ``cupy``), for the few
    element-wise calls the three share (``isfinite``, ``linalg.qr``, …), in the spirit of the
    array-API ``get_namespace`` scikit-learn uses."""
    if backend == "torch":
        import torch

        return torch
    if backend == "cupy":
        import cupy

        return cupy
    return np


def to_backend(x, backend: str, device=None):
    """Move a dense NumPy, torch or CuPy array to ``backend``/``device`` without changing its
    dtype (a NumPy input to NumPy is returned as is). The one conversion *to* a backend; its
    inverse is :func:`to_numpy`."""
    kind = array_backend(x)
    if backend == "numpy":
        return to_numpy(x)
    if backend == "torch":
        import torch

        if kind == "cupy":
            x = x.get()
        return torch.as_tensor(x, device=device)
    import cupy

    with cupy.cuda.Device(device):
        if kind == "torch":
            x = x.detach()
            return cupy.asarray(x) if x.is_cuda else cupy.asarray(x.numpy())
        return cupy.asarray(x)


def resolve_backend(backend: str = "auto", device=None, like=None) -> tuple[str, object]:
    """Turn ``backend``/``device`` into a concrete (backend, device) pair.

    "auto" follows the input array ``like`` when it is a torch or cupy array, else uses
    torch on CUDA when a GPU is present and ``device`` does not say "cpu", else numpy.
    Asking for a backend that is not installed raises ``ImportError`` naming the extra
    to install.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if like is not None and array_backend(like) != "numpy":
            backend = array_backend(like)
            if device is None:
                device = like.device
        elif device is not None and str(device).startswith("cuda") and HAS_TORCH:
            backend = "torch"
        elif device is None and _has_cuda():
            backend, device = "torch", "cuda"
        else:
            backend = "numpy"
    if backend == "torch":
        if not HAS_TORCH:
            raise ImportError("backend='torch' needs PyTorch: pip install 'rankkit[ext]'")
        import torch

        device = torch.device(device if device is not None else "cpu")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was asked for but torch sees no CUDA device; "
                               "use device='cpu' or backend='numpy'")
    elif backend == "cupy":
        if not HAS_CUPY:
            raise ImportError("backend='cupy' needs CuPy: pip install 'rankkit[gpu]'")
        if not cupy_cuda_available():
            raise RuntimeError("backend='cupy' needs a CUDA device and none is available")
        device = 0 if device is None else device
    else:
        if device is not None and str(device) not in ("cpu",):
            raise ValueError(f"backend='numpy' runs on the CPU only; got device={device!r}")
        device = "cpu"
    return backend, device


# ---- dense linear algebra shared by the backends (numerical rank, thin SVDs) --------------

def qr_r(A, backend: str):
    """R factor of the QR decomposition of a tall matrix, same dtype as ``A``."""
    if backend == "torch":
        import torch

        return torch.linalg.qr(A, mode="r").R
    return namespace(backend).linalg.qr(A, mode="r")


def svdvals(A, backend: str) -> np.ndarray:
    """Singular values of a dense matrix, descending, as a host NumPy array."""
    if backend == "torch":
        import torch

        return to_numpy(torch.linalg.svdvals(A))
    if backend == "cupy":
        import cupy

        return to_numpy(cupy.linalg.svd(A, compute_uv=False))
    # exactly the call np.linalg.matrix_rank makes, so the default path is bit-identical
    return np.linalg.svd(A, compute_uv=False)


def first_nonfinite(A, backend: str) -> tuple[int, int] | None:
    """(row, column) of the first NaN or ±inf of a dense 2-D array, or None."""
    xp = namespace(backend)
    ok = xp.isfinite(A)
    if bool(ok.all()):
        return None
    bad = to_numpy(~ok)
    r, c = np.argwhere(bad)[0]
    return int(r), int(c)


def astype(A, dtype, backend: str):
    """``A`` in ``dtype`` (no copy when it already is)."""
    if backend == "torch":
        return A if A.dtype == dtype else A.to(dtype)
    return A if A.dtype == dtype else A.astype(dtype)

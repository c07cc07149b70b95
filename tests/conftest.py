import os

# Every xdist worker gets one thread per library: CI has 2 cores and runs 2 workers, and
# oversubscribed OpenMP / numba / torch pools slow tiny-array work by 10-50x. Set before
# numba or torch is imported by any test module.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (after the thread settings above)
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# One profile for the whole suite: no per-example deadline (numba compiles on first call,
# and CI has 2 busy cores), a bounded number of examples so the suite stays fast.
settings.register_profile(
    "rankkit", deadline=None, max_examples=int(os.environ.get("RANKKIT_HYPOTHESIS_EXAMPLES", 60)),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("rankkit")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def _cuda_backends():
    """(backend, device) pairs for the GPU backends present, each skipped with a reason."""
    from rankkit._backend import HAS_CUPY, HAS_TORCH, cupy_cuda_available, torch_cuda_available

    reason_torch = "torch is not installed" if not HAS_TORCH else "torch sees no CUDA device"
    reason_cupy = "cupy is not installed" if not HAS_CUPY else "cupy sees no CUDA device"
    return [
        pytest.param("torch", "cuda", marks=pytest.mark.skipif(
            not torch_cuda_available(), reason=reason_torch), id="torch-cuda"),
        pytest.param("cupy", 0, marks=pytest.mark.skipif(
            not (HAS_CUPY and cupy_cuda_available()), reason=reason_cupy), id="cupy-cuda"),
    ]


CUDA_BACKENDS = _cuda_backends()
CPU_BACKENDS = [pytest.param("numpy", None, id="numpy"), pytest.param("torch", "cpu", id="torch-cpu")]


@pytest.fixture(scope="session")
def pairs_csv(tmp_path_factory):
    """``pairs_csv(pairs)``: a CSV file with columns text, score holding (text, label) pairs."""
    import csv

    def write(pairs, name: str = "reviews.csv"):
        f = tmp_path_factory.mktemp("csv") / name
        with open(f, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "score"])
            w.writerows(pairs)
        return f

    return write

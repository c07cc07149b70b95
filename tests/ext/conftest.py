"""Fixtures shared by the tests of the optional extension (``rankkit_ext``: torch, transformers).

``tests/conftest.py`` caps the OpenMP / MKL / OpenBLAS / numba pools through environment variables
before anything is imported; torch's intra-op pool is capped here, per module, by the modules that
ask for it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
"""

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module, the caller's count restored afterwards: on the tiny tensors
    of these tests the thread hand-off on 2 shared cores costs ~20x more than the maths."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

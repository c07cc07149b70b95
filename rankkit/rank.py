"""Numerical rank with NumPy's cutoff, and rank curves over sampled rows (paper 002, App. D.4).

The numerical rank of an :math:`m \\times n` matrix :math:`A` with singular values
:math:`\\sigma_1 \\ge \\sigma_2 \\ge \\dots` counts the singular values above NumPy's and
PyTorch's default cutoff

.. math::

    \\operatorname{rank}(A) = \\#\\{\\, i : \\sigma_i > \\sigma_1 \\max(m, n)\\, \\varepsilon \\,\\},

with :math:`\\varepsilon` the machine epsilon of the dtype (App. D.4). The paper estimates the
rank of learned reward matrices :math:`\\hat R` (Fig. 2, Fig. 9) from i.i.d. sampled rows,
following Finlayson et al. (2024); :func:`rank_curve` does that for a stored matrix or for a
callable that computes rows lazily (a reward model).

For a very wide (or tall) matrix the singular values are taken from the :math:`R` factor of a
QR decomposition of the tall side: :math:`A^\\top = QR` gives :math:`\\sigma(A) = \\sigma(R)`
with :math:`R` only :math:`\\min(m, n)` square. A Gram matrix :math:`AA^\\top` would be
cheaper still but squares the singular values, so everything below
:math:`\\sqrt{\\varepsilon}\\,\\sigma_1` is lost and the cutoff above becomes meaningless.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._backend import (
    array_backend,
    astype,
    first_nonfinite,
    namespace,
    qr_r,
    resolve_backend,
    svdvals,
    to_backend,
)

__all__ = ["numerical_rank", "singular_values", "rank_curve", "RankCurve"]

#: QR of the tall side first when max(m, n) >= _QR_RATIO * min(m, n). LAPACK's gesdd switches
#: to the same QR-first path at 11/6; below 2 the extra factorisation does not pay for itself.
_QR_RATIO = 2

#: Largest dense copy of a sparse input made by default: 256 MiB (≈ 5,800 × 5,800 float64,
#: whose SVD takes seconds); a 2 GiB copy would also take minutes of SVD with no progress
#: shown. Above it, numerical_rank refuses with the size it would need (pass a larger
#: ``max_dense_bytes=`` or use rank_curve on sampled rows).
DEFAULT_MAX_DENSE_BYTES = 2**28
#: rank_curve densifies one block of sampled rows at a time (e.g. 1,024 prefixes × 50,257
#: tokens = 412 MB, a thin SVD of seconds): its own, larger cap.
CURVE_MAX_DENSE_BYTES = 2**31


# ---- the dense operations come from rankkit._backend; the algorithm below is written once --

def _shape(A) -> tuple[int, int]:
    return int(A.shape[0]), int(A.shape[1])


# ---- dtype rules ---------------------------------------------------------------------------

def _dtypes(A, backend: str):
    """(computation dtype of the backend, machine epsilon of the data) for a dense array.

    Integers and booleans are computed in float64, as ``np.linalg`` does. Half precision
    (float16, bfloat16) has no SVD kernel and is computed in float32 with float32's epsilon,
    as if the caller had written ``M.float()``: with the half epsilon the cutoff
    max(m, n)·ε·σ₁ would exceed σ₁ itself beyond 128 (bfloat16) or 1024 (float16) columns
    and every such matrix would have rank 0.
    """
    if backend == "torch":
        import torch

        dt = A.dtype
        if dt.is_complex:
            return dt, float(torch.finfo(A.real.dtype).eps)
        if not dt.is_floating_point:
            return torch.float64, float(np.finfo(np.float64).eps)
        if dt in (torch.float16, torch.bfloat16):
            return torch.float32, float(torch.finfo(torch.float32).eps)
        return dt, float(torch.finfo(dt).eps)
    dt = np.dtype(A.dtype)
    if dt.kind in "biu":
        return np.dtype(np.float64), float(np.finfo(np.float64).eps)
    if dt == np.float16:
        return np.dtype(np.float32), float(np.finfo(np.float32).eps)
    if dt.kind not in "fc":
        raise TypeError(f"M has dtype {dt}; numerical_rank needs a real or complex numeric array")
    return dt, float(np.finfo(dt).eps)


# ---- validation at the boundary --------------------------------------------------------------

def _dense_input(M, backend: str, device, max_dense_bytes: int, name: str = "M"):
    """Validate ``M`` and return (dense backend array in computation dtype, data epsilon)."""
    if sp.issparse(M):
        m, n = (int(s) for s in M.shape)
        dt = np.dtype(M.dtype)
        itemsize = 8 if dt.kind in "biu" else (4 if dt == np.float16 else dt.itemsize)
        need = m * n * itemsize
        if need > max_dense_bytes:
            raise MemoryError(
                f"{name} is a sparse {m}x{n} matrix; its dense copy needs {need / 2**30:.2f} GiB "
                f"({need} bytes), over max_dense_bytes={max_dense_bytes}. Pass a larger "
                f"max_dense_bytes= if the memory is there, or estimate the rank from sampled rows "
                f"with rank_curve({name}, sizes=[...]).")
        M = M.toarray()
    elif not hasattr(M, "shape") or not hasattr(M, "dtype"):
        M = np.asarray(M)
    if len(M.shape) != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(M.shape)}; "
                         "reshape it, or loop over a stack of matrices yourself")
    A = to_backend(M, backend, device)
    dtype, eps = _dtypes(A, backend)
    A = astype(A, dtype, backend)
    bad = first_nonfinite(A, backend) if min(_shape(A)) else None
    if bad is not None:
        raise ValueError(f"{name}[{bad[0]}, {bad[1]}] is not finite (NaN or inf); the singular "
                         "values of such a matrix are undefined. Replace or drop that entry first")
    return A, eps


def _check_tol(tol) -> None:
    if tol is not None and not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be None (the default cutoff) or a finite number >= 0, got {tol!r}")


# ---- the algorithm, written once ---------------------------------------------------------------

def _singular_values(A, backend: str) -> np.ndarray:
    """Singular values of a validated dense backend array (host NumPy, descending).

    A matrix with ``max(m, n) >= 2 min(m, n)`` is first reduced to the square ``R`` factor of
    the QR decomposition of its tall side; ``R`` keeps the dtype of ``A``.
    """
    m, n = _shape(A)
    if min(m, n) == 0:
        return svdvals(A[:0, :0], backend)
    if n >= _QR_RATIO * m:
        A = qr_r(A.T if backend != "torch" else A.mT, backend)
    elif m >= _QR_RATIO * n:
        A = qr_r(A, backend)
    return svdvals(A, backend)


def _default_tol(s: np.ndarray, shape: tuple[int, int], eps: float):
    """NumPy's cutoff σ₁·max(m, n)·ε, computed in the dtype of ``s`` exactly as NumPy does."""
    one = s.dtype.type
    # max(m, n) * eps is exact in float64 (eps is a power of two) and rounds once on the cast,
    # which equals NumPy's `int * finfo(dtype).eps` in the singular values' dtype
    rtol = one(max(shape) * eps)
    return (s.max(initial=0) if s.size else one(0)) * rtol


def _count(s: np.ndarray, shape: tuple[int, int], eps: float, tol) -> int:
    cut = _default_tol(s, shape, eps) if tol is None else np.asarray(tol)
    return int(np.count_nonzero(s > cut))


# ---- public API ------------------------------------------------------------------------------

def singular_values(M, *, backend: str = "auto", device=None,
                    max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES) -> np.ndarray:
    """Singular values of ``M``, descending, as a NumPy array.

    Parameters
    ----------
    M : array_like, torch.Tensor, cupy.ndarray, scipy.sparse matrix or RewardMatrix, shape (m, n)
        A RewardMatrix counts as its label-0 matrix with unobserved cells at 0.
        Sparse input is densified (stored zeros and missing entries alike become 0), but only
        when the dense copy fits in ``max_dense_bytes``.
    backend : {"auto", "numpy", "torch", "cupy"}
        Where the decomposition runs; "auto" follows the array type of ``M`` (see
        :func:`rankkit._backend.resolve_backend`).
    device : str, int or torch.device, optional
        Device for the torch or cupy backend.
    max_dense_bytes : int, default 2**28 (256 MiB)
        Largest dense copy of a sparse ``M`` that may be made.

    Returns
    -------
    s : ndarray, shape (min(m, n),)
        In the computation dtype: float32 for float32/float16/bfloat16 input, float64 for
        float64 and integer input (real dtypes for complex input).

    Notes
    -----
    When ``max(m, n) >= 2 min(m, n)`` the tall side is factored first,
    :math:`A = QR` (or :math:`A^\\top = QR`), and the SVD runs on the small square
    :math:`R`: :math:`\\sigma(A) = \\sigma(R)` because :math:`Q` has orthonormal columns.

    Examples
    --------
    >>> import numpy as np
    >>> singular_values(np.diag([3.0, 1.0])).tolist()
    [3.0, 1.0]
    """
    backend, device = resolve_backend(backend, device, like=None if sp.issparse(M) else M)
    A, _ = _dense_input(M, backend, device, max_dense_bytes)
    return _singular_values(A, backend)


def numerical_rank(M, tol: float | None = None, *, backend: str = "auto", device=None,
                   max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES) -> int:
    """Numerical rank of ``M`` with NumPy's default singular value cutoff (paper 002, App. D.4).

    .. math::

        \\operatorname{rank}(M) = \\#\\{\\, i : \\sigma_i > \\tau \\,\\}, \\qquad
        \\tau = \\sigma_1 \\max(m, n)\\, \\varepsilon_{\\text{dtype}} \\text{ when } \\texttt{tol}
        \\text{ is None, else } \\tau = \\texttt{tol}.

    Parameters
    ----------
    M : array_like, torch.Tensor, cupy.ndarray or scipy.sparse matrix, shape (m, n)
        Sparse input is densified under ``max_dense_bytes`` (missing entries count as 0).
    tol : float, optional
        Absolute threshold, as in :func:`numpy.linalg.matrix_rank`. None uses the cutoff above.
    backend : {"auto", "numpy", "torch", "cupy"}
        "auto" follows the array type of ``M``.
    device : str, int or torch.device, optional
        Device for the torch or cupy backend.
    max_dense_bytes : int, default 2**28 (256 MiB)
        Largest dense copy of a sparse ``M`` that may be made; beyond it a ``MemoryError``
        names the size and the fix.

    Returns
    -------
    int

    Notes
    -----
    On float32 and float64 input with the numpy backend this equals
    ``np.linalg.matrix_rank(M)``: the same LAPACK call (gesdd) for near-square matrices and
    the same cutoff arithmetic. For ``max(m, n) >= 2 min(m, n)`` the singular values come
    from the ``R`` factor of a QR of the tall side (dtype kept, never a Gram matrix, which
    squares them); they then agree with NumPy's to rounding, so only singular values within
    rounding of the cutoff can be counted differently. The cutoff always uses the original
    ``max(m, n)``. float16/bfloat16 are decomposed in float32 with float32's epsilon (a
    half-precision ε times max(m, n) would exceed 1 for a vocabulary-sized matrix); integers
    in float64.

    References
    ----------
    Troshin, Niculae, Fokkens. On the Low-Rank Parametrization of Reward Models for
    Controlled Language Generation. TMLR. App. D.4.

    Examples
    --------
    >>> import numpy as np
    >>> numerical_rank(np.outer([1.0, 2.0, 3.0], [1.0, 0.0, 1.0, 4.0]))
    1
    """
    _check_tol(tol)
    from .matrix import RewardMatrix

    if isinstance(M, RewardMatrix):  # P_Ω(R) with its unobserved cells at 0 (label 0)
        M = M.to_scipy(0)
    backend, device = resolve_backend(backend, device, like=None if sp.issparse(M) else M)
    A, eps = _dense_input(M, backend, device, max_dense_bytes)
    return _count(_singular_values(A, backend), _shape(A), eps, tol)


# ---- rank curves (Fig. 2, Fig. 9) ---------------------------------------------------------------

@dataclass
class RankCurve:
    """Numerical rank of i.i.d. sampled row subsets (paper 002, Fig. 2, Fig. 9, App. D.4).

    Attributes
    ----------
    sizes : ndarray of int64, shape (n_sizes,)
        Numbers of sampled rows, increasing.
    ranks : ndarray of int64, shape (n_sizes, n_repeats)
        ``ranks[i, r]`` is the numerical rank of the first ``sizes[i]`` rows of draw ``r``.
    n_cols : int
        Columns of the matrix (:math:`|V|` for a reward matrix): the largest possible rank.
    dtype : str
        Dtype the singular values were computed in.
    n_rows : int
        Rows the samples were drawn from.
    seed : int
    replace : bool
    """

    sizes: np.ndarray
    ranks: np.ndarray
    n_cols: int
    dtype: str
    n_rows: int
    seed: int | None = None
    replace: bool = False

    @property
    def mean(self) -> np.ndarray:
        """Mean rank over the repeats, shape (n_sizes,)."""
        return self.ranks.mean(axis=1)

    def to_dict(self) -> dict:
        """JSON-ready dictionary (plain ints, lists)."""
        return {"sizes": self.sizes.tolist(), "ranks": self.ranks.tolist(), "n_cols": int(self.n_cols),
                "dtype": self.dtype, "n_rows": int(self.n_rows), "seed": self.seed,
                "replace": bool(self.replace)}

    def plot(self, ax=None, label: str | None = None, **line_kw):
        """Plot rank against sampled rows, with the y = x line of full row rank for reference.

        With more than one repeat the mean is drawn and the min–max range shaded.

        Returns
        -------
        matplotlib.axes.Axes
        """
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(5, 4))
        x = self.sizes
        (line,) = ax.plot(x, self.mean, marker="o", label=label, **line_kw)
        if self.ranks.shape[1] > 1:
            ax.fill_between(x, self.ranks.min(axis=1), self.ranks.max(axis=1),
                            color=line.get_color(), alpha=0.2)
        top = int(x.max()) if x.size else 1
        ax.plot([0, top], [0, top], linestyle=":", color="0.5", label="y = x (full row rank)")
        ax.set_xlabel("sampled rows N")
        ax.set_ylabel("numerical rank")
        ax.legend()
        return ax


def _check_sizes(sizes, n_rows: int, replace: bool) -> np.ndarray:
    s = np.asarray(sizes)
    if s.ndim != 1 or s.size == 0 or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"sizes must be a non-empty 1-D list of integers, got {sizes!r}")
    s = s.astype(np.int64)
    if (s < 1).any():
        raise ValueError(f"sizes must be >= 1, got {s.tolist()}")
    if (np.diff(s) <= 0).any():
        raise ValueError(f"sizes must be strictly increasing, got {s.tolist()}; pass sorted(set(sizes))")
    if not replace and s[-1] > n_rows:
        raise ValueError(f"size {int(s[-1])} exceeds the {n_rows} rows available without replacement; "
                         "use smaller sizes or replace=True")
    return s


def _take_rows(source, idx: np.ndarray):
    """Rows ``idx`` of an array-like source (numpy, torch, cupy or scipy.sparse)."""
    if sp.issparse(source):
        return source[idx]
    kind = array_backend(source)
    if kind == "torch":
        import torch

        return source[torch.as_tensor(idx, device=source.device)]
    if kind == "cupy":
        import cupy

        return source[cupy.asarray(idx)]
    return np.asarray(source)[idx]


def rank_curve(source: object | Callable[[np.ndarray], object], sizes: Sequence[int], *,
               n_rows: int | None = None, n_repeats: int = 1, seed: int | None = 0, replace: bool = False, tol: float | None = None,
               backend: str = "auto", device=None, batch_size: int | None = None,
               max_dense_bytes: int = CURVE_MAX_DENSE_BYTES, progress: bool = False) -> RankCurve:
    """Numerical rank of i.i.d. sampled row subsets of a matrix (paper 002, Fig. 2, 9, App. D.4).

    For each repeat, ``max(sizes)`` row indices are drawn uniformly (without replacement
    unless ``replace``) from ``np.random.default_rng(seed)``; the rank at size ``k`` is
    :func:`numerical_rank` of the first ``k`` drawn rows. The subsets are thus nested, as in
    "incrementally considering more rows" (Fig. 2), and each is itself an i.i.d. sample.

    Parameters
    ----------
    source : 2-D array (numpy, torch, cupy, scipy.sparse) or callable
        A callable ``rows(indices) -> 2-D array`` returns the rows ``indices`` (an int64
        ndarray), so a reward model can supply rows of :math:`\\hat R` lazily; it then needs
        ``n_rows``.
    sizes : sequence of int
        Strictly increasing numbers of rows.
    n_rows : int, optional
        Number of rows of a callable source (ignored for arrays, which know their shape).
    n_repeats : int, default 1
        Independent draws.
    seed : int or None, default 0
        Seed of ``np.random.default_rng``.
    replace : bool, default False
        Draw rows with replacement (duplicate rows then cap the rank).
    tol : float, optional
        Absolute cutoff passed to :func:`numerical_rank`.
    backend, device
        Where the decompositions run; "auto" follows the source's (or the first returned
        block's) array type.
    batch_size : int, optional
        Rows per call of a callable source (default: all ``max(sizes)`` rows in one call).
    max_dense_bytes : int
        Budget for densifying sparse rows.
    progress : bool
        Show a tqdm bar over the row fetches and decompositions.

    Returns
    -------
    RankCurve

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> M = rng.standard_normal((100, 5)) @ rng.standard_normal((5, 40))
    >>> rank_curve(M, sizes=[2, 4, 8, 16]).ranks[:, 0].tolist()
    [2, 4, 5, 5]
    """
    _check_tol(tol)
    lazy = callable(source) and not hasattr(source, "shape")
    if lazy:
        if n_rows is None:
            raise ValueError("a callable source needs n_rows= (how many rows it can return)")
        total = int(n_rows)
    else:
        if sp.issparse(source):
            source = source.tocsr()  # COO and DIA cannot index rows
        elif not hasattr(source, "shape"):
            source = np.asarray(source)
        if len(source.shape) != 2:
            raise ValueError(f"source must be a 2-D matrix or a callable, got shape {tuple(source.shape)}")
        total = int(source.shape[0])
    if int(n_repeats) < 1:
        raise ValueError(f"n_repeats must be >= 1, got {n_repeats}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    s = _check_sizes(sizes, total, replace)
    kmax = int(s[-1])
    rng = np.random.default_rng(seed)
    step = kmax if batch_size is None else int(batch_size)

    from ._progress import progress_bar

    n_batches = -(-kmax // step)
    bar = progress_bar(total=int(n_repeats) * (n_batches + s.size), desc="rank curve", progress=progress)
    ranks = np.zeros((s.size, int(n_repeats)), dtype=np.int64)
    dtype_name, n_cols = "", 0
    resolved = None
    for r in range(int(n_repeats)):
        idx = rng.choice(total, size=kmax, replace=replace).astype(np.int64)
        blocks = []
        for a in range(0, kmax, step):
            part = idx[a:a + step]
            block = source(part) if lazy else _take_rows(source, part)
            if resolved is None:
                resolved = resolve_backend(backend, device, like=None if sp.issparse(block) else block)
            block, eps = _dense_input(block, *resolved, max_dense_bytes, name="rows")
            if block.shape[0] != part.size or (blocks and block.shape[1] != blocks[0].shape[1]):
                raise ValueError(
                    f"the row source returned shape {tuple(block.shape)} for {part.size} indices"
                    + (f" (earlier blocks had {blocks[0].shape[1]} columns)" if blocks else "")
                    + "; it must return one row of equal length per index")
            blocks.append(block)
            bar.update()
        xp = namespace(resolved[0])
        rows = blocks[0] if len(blocks) == 1 else (
            xp.cat(blocks) if resolved[0] == "torch" else xp.concatenate(blocks))
        n_cols = int(rows.shape[1])
        dtype_name = str(rows.dtype).replace("torch.", "")
        for i, k in enumerate(s):
            sub = rows[: int(k)]
            ranks[i, r] = _count(_singular_values(sub, resolved[0]), _shape(sub), eps, tol)
            bar.update()
    bar.close()
    return RankCurve(sizes=s, ranks=ranks, n_cols=n_cols, dtype=dtype_name, n_rows=total,
                     seed=seed, replace=bool(replace))

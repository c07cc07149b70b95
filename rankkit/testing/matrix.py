"""Slow, obvious reference for P_Ω(R) and a reusable assertion against it.

``reward_matrix_dict`` is eq. 4–5 of paper 002 written as directly as possible: one dict
entry per cell, one Python loop over utterances and their prefixes. The fast builder
(:func:`rankkit.build_reward_matrix`) must agree with it on any data.
"""

from __future__ import annotations

import numpy as np

from ..matrix import RewardMatrix
from ..sequences import RewardDataset

__all__ = ["reward_matrix_dict", "assert_reward_matrix_equal"]

Cell = tuple[tuple[int, ...], int]


def reward_matrix_dict(dataset: RewardDataset, max_len: int | None = None
                       ) -> dict[Cell, tuple[np.ndarray, float, int]]:
    r"""Cells of P_Ω(R) by brute force: ``{(prefix, token): (values, weight, count)}``.

    For every utterance u (truncated to ``max_len`` first, L = its truncated length) and
    every t = 1..L the cell (u_{1:t-1}, u_t) receives λ_t y and λ_t with
    λ_t = 2t / (L(L+1)); values = Σλy / Σλ, shape (n_labels,); weight = Σλ; count =
    number of utterances (paper 002, eq. 4–5).
    """
    y = dataset.responses.reshape(len(dataset), dataset.n_labels)
    acc: dict[Cell, list] = {}
    for i, seq in enumerate(dataset.sequences):
        u = [int(t) for t in seq]
        if max_len is not None:
            u = u[:max_len]
        L = len(u)
        for t in range(1, L + 1):
            lam = 2.0 * t / (L * (L + 1.0))
            key = (tuple(u[:t - 1]), u[t - 1])
            if key not in acc:
                acc[key] = [np.zeros(y.shape[1]), 0.0, 0]
            cell = acc[key]
            cell[0] = cell[0] + lam * y[i]
            cell[1] += lam
            cell[2] += 1
    return {k: (s / w, w, c) for k, (s, w, c) in acc.items()}


def assert_reward_matrix_equal(R: RewardMatrix, ref: dict[Cell, tuple[np.ndarray, float, int]],
                               rtol: float | None = None, *, scale: float | None = None) -> None:
    """Assert that ``R`` holds exactly the cells of ``ref`` (from :func:`reward_matrix_dict`).

    Checks: the rows are distinct prefixes, each with ≥ 1 cell, row 0 the empty prefix if
    there is any cell; columns sorted inside each row; the same set of cells; equal counts;
    weights and values within tolerance. Values are means of sums accumulated in a
    different order, so their error grows with the number of terms: per cell the
    tolerance is ``rtol * (count + 1) * scale`` with ``rtol = 4 * eps(float64)`` and
    ``scale`` = the largest :math:`|response|` (default: the largest :math:`|value|` in ``ref``, at least 1);
    weights use ``rtol * (count + 1) * weight``.
    """
    eps = float(np.finfo(np.float64).eps)
    rtol = 4.0 * eps if rtol is None else float(rtol)
    if scale is None:
        scale = max([1.0] + [float(np.max(np.abs(v))) for v, _, _ in ref.values()])
    n_rows = R.shape[0]
    prefixes_ref = {p for p, _ in ref}
    assert R.nnz == len(ref), f"{R.nnz} stored cells, reference has {len(ref)}"
    assert n_rows == len(prefixes_ref), f"{n_rows} rows, reference has {len(prefixes_ref)} prefixes"
    if n_rows:
        assert R.prefix(0).size == 0, f"row 0 has prefix {R.prefix(0).tolist()}, expected the empty one"
    seen: set[tuple[int, ...]] = set()
    for r in range(n_rows):
        prefix = tuple(int(t) for t in R.prefix(r))
        assert prefix not in seen, f"row {r}: prefix {list(prefix)} appears in two rows"
        seen.add(prefix)
        cols = R.indices[R.indptr[r]:R.indptr[r + 1]]
        assert cols.size >= 1, f"row {r} (prefix {list(prefix)}) has no cells"
        assert np.all(np.diff(cols) > 0), f"row {r}: columns not strictly increasing: {cols.tolist()}"
        for k in range(R.indptr[r], R.indptr[r + 1]):
            key = (prefix, int(R.indices[k]))
            assert key in ref, f"row {r}: cell (prefix {list(prefix)}, token {key[1]}) not in reference"
            v_ref, w_ref, c_ref = ref[key]
            assert R.counts[k] == c_ref, f"cell {key}: count {R.counts[k]} != {c_ref}"
            tol_w = rtol * (c_ref + 1) * w_ref
            assert abs(R.weights[k] - w_ref) <= tol_w, f"cell {key}: weight {R.weights[k]!r} != {w_ref!r}"
            v = np.atleast_1d(R.values[k])
            tol_v = rtol * (c_ref + 1) * scale
            assert v.shape == v_ref.shape, f"cell {key}: {v.shape[0]} labels, reference has {v_ref.shape[0]}"
            assert np.all(np.abs(v - v_ref) <= tol_v), (
                f"cell {key}: values {v.tolist()} != reference {v_ref.tolist()} (tol {tol_v:.3g})")

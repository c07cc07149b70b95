"""Build the sparse reward matrix P_Ω(R) from labelled token sequences with a prefix trie.

Paper 002, §3.1.1 and App. B: every utterance u of length L contributes to the L cells
(x', v) with [x', v] = u_{1:t}, t = 1..L, with weight λ_t(u) = 2t / (L(L+1)) (eq. 4, the
weights of one utterance sum to 1), and a cell holds the λ-weighted mean response (eq. 5).

The trie is built without one Python object per token:

1. the sequences are sorted lexicographically (a numba merge sort of sequence indices,
   shorter-is-smaller, stable), so sequences sharing a prefix are neighbours;
2. the longest common prefix (LCP) of each sequence with its sorted predecessor tells how
   many of its trie nodes already exist: sequence i creates nodes at depths
   lcp_i + 1 .. L_i, and the number of nodes (= observed cells) per depth is known before
   any node is made;
3. one numba pass walks the sorted sequences with a stack of the current path and
   accumulates Σλy, Σλ and the count straight into the output slot of each cell. Slots are
   numbered breadth-first (by prefix length, then lexicographically), which makes the
   cells of every row contiguous with sorted columns: the CSR layout falls out with no
   second sort;
4. one more pass over the cells numbers the rows (the internal trie nodes, root first) and
   fills ``indptr`` and the prefix arrays.

Everything after the sort is O(total tokens × n_labels); accumulation is float64.
"""

from __future__ import annotations

import numba
import numpy as np

from .matrix import RewardMatrix
from .sequences import RewardDataset

__all__ = ["build_reward_matrix"]


# ---- kernels --------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _less(tokens, offsets, key, a, b):
    """Sequence a < sequence b lexicographically (a proper prefix is smaller); ties → index."""
    ka, kb = key[a], key[b]
    if ka != kb:
        return ka < kb
    sa, ea = offsets[a] + 2, offsets[a + 1]
    sb, eb = offsets[b] + 2, offsets[b + 1]
    while sa < ea and sb < eb:
        ta, tb = tokens[sa], tokens[sb]
        if ta != tb:
            return ta < tb
        sa += 1
        sb += 1
    la, lb = ea - sa, eb - sb
    if la != lb:
        return la < lb
    return a < b


@numba.njit(cache=True, nogil=True)
def _sort_sequences(tokens, offsets):
    """Indices of the sequences in lexicographic order (bottom-up merge sort, stable).

    The first two tokens are packed into one uint64 key per sequence, so most comparisons
    read one sequential array instead of chasing two sequences through the token buffer.
    """
    n = offsets.size - 1
    key = np.zeros(n, dtype=np.uint64)
    for i in range(n):
        s, e = offsets[i], offsets[i + 1]
        # +1 so that a missing token (0) sorts before every real token: prefix first
        hi = np.uint64(tokens[s] + 1) if e > s else np.uint64(0)
        lo = np.uint64(tokens[s + 1] + 1) if e > s + 1 else np.uint64(0)
        key[i] = (hi << np.uint64(32)) | lo
    a = np.arange(n, dtype=np.int64)
    b = np.empty(n, dtype=np.int64)
    run = 16
    for lo in range(0, n, run):  # insertion sort of short runs
        hi = min(lo + run, n)
        for i in range(lo + 1, hi):
            x = a[i]
            j = i - 1
            while j >= lo and _less(tokens, offsets, key, x, a[j]):
                a[j + 1] = a[j]
                j -= 1
            a[j + 1] = x
    width = run
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                if _less(tokens, offsets, key, a[j], a[i]):
                    b[k] = a[j]
                    j += 1
                else:
                    b[k] = a[i]
                    i += 1
                k += 1
            while i < mid:
                b[k] = a[i]
                i += 1
                k += 1
            while j < hi:
                b[k] = a[j]
                j += 1
                k += 1
        a, b = b, a
        width *= 2
    return a


@numba.njit(cache=True, nogil=True)
def _lcp_and_depth_counts(tokens, offsets, order, max_len):
    """LCP of each sorted sequence with its predecessor, and new trie nodes per depth."""
    n = order.size
    lcp = np.zeros(n, dtype=np.int32)
    diff = np.zeros(max_len + 2, dtype=np.int64)
    for i in range(n):
        s = order[i]
        L = offsets[s + 1] - offsets[s]
        m = 0
        if i > 0:
            p = order[i - 1]
            lp = offsets[p + 1] - offsets[p]
            top = min(L, lp)
            while m < top and tokens[offsets[s] + m] == tokens[offsets[p] + m]:
                m += 1
        lcp[i] = m
        # this sequence creates nodes at depths m+1 .. L (difference array over depth)
        if L > m:
            diff[m + 1] += 1
            diff[L + 1] -= 1
    per_depth = np.cumsum(diff)[1:max_len + 1]  # per_depth[d-1] = new nodes at depth d
    return lcp, per_depth


@numba.njit(cache=True, nogil=True)
def _accumulate(tokens, offsets, order, lcp, y, cell_start, max_len):
    """Create the trie nodes (cells) in breadth-first slots and accumulate eq. 5 sums."""
    nnz = cell_start[-1]
    n_labels = y.shape[1]
    indices = np.empty(nnz, dtype=np.int32)
    parent = np.empty(nnz, dtype=np.int64)      # slot of the parent cell, −1 under the root
    has_child = np.zeros(nnz, dtype=np.bool_)
    weights = np.zeros(nnz, dtype=np.float64)
    counts = np.zeros(nnz, dtype=np.int64)
    ysum = np.zeros((nnz, n_labels), dtype=np.float64)
    fill = cell_start[:-1].copy()               # next free slot per depth
    stack = np.empty(max(max_len, 1), dtype=np.int64)  # slot of the current path at each depth
    for i in range(order.size):
        s = order[i]
        off = offsets[s]
        L = offsets[s + 1] - off
        for d in range(lcp[i], L):              # new nodes at depth d+1
            p = fill[d]
            fill[d] += 1
            indices[p] = tokens[off + d]
            if d == 0:
                parent[p] = -1
            else:
                parent[p] = stack[d - 1]
                has_child[stack[d - 1]] = True
            stack[d] = p
        norm = 2.0 / (L * (L + 1.0))
        for d in range(L):                      # λ_t = 2t / (L(L+1)), t = d + 1
            p = stack[d]
            lam = (d + 1) * norm
            weights[p] += lam
            counts[p] += 1
            for k in range(n_labels):
                ysum[p, k] += lam * y[s, k]
    for p in range(nnz):
        w = weights[p]
        for k in range(n_labels):
            ysum[p, k] /= w
    return indices, parent, has_child, weights, counts, ysum


@numba.njit(cache=True, nogil=True)
def _rows(indices, parent, cell_start, n_rows):
    """Number rows (root, then internal nodes breadth-first) and build indptr / prefixes.

    Cells are in breadth-first order, so their parent slots are non-decreasing and the
    distinct parents, in order, are exactly the rows. ``parent`` is overwritten with the
    row of each cell, which the next depth reads back as its grandparent row.
    """
    nnz = indices.size
    row_nnz = np.zeros(n_rows, dtype=np.int64)
    prefix_parent = np.empty(n_rows, dtype=np.int64)
    prefix_token = np.empty(n_rows, dtype=np.int32)
    prefix_len = np.empty(n_rows, dtype=np.int32)
    prefix_parent[0] = -1
    prefix_token[0] = -1
    prefix_len[0] = 0
    row = 0
    last = np.int64(-1)
    depth = 1
    for p in range(nnz):
        while p >= cell_start[depth]:
            depth += 1
        q = parent[p]
        if q != last:
            row += 1
            last = q
            prefix_parent[row] = parent[q]      # already rewritten to q's own row
            prefix_token[row] = indices[q]
            prefix_len[row] = depth - 1
        row_nnz[row] += 1
        parent[p] = row
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    for r in range(n_rows):
        indptr[r + 1] = indptr[r] + row_nnz[r]
    return indptr, prefix_parent, prefix_token, prefix_len


# ---- public -----------------------------------------------------------------------------

def build_reward_matrix(dataset, max_len: int | None = None, *,
                        progress: bool | None = False, **load_kw) -> RewardMatrix:
    r"""Sparse reward matrix P_Ω(R) of a labelled dataset (paper 002, §3.1.1, App. B).

    .. math::

        R[x', v] = \frac{\sum_{(u, y) \in D,\; u_{1:t} = [x', v]} \lambda_t(u)\, y}
                        {\sum_{(u, y) \in D,\; u_{1:t} = [x', v]} \lambda_t(u)},
        \qquad \lambda_t(u) = \frac{t}{\sum_{s=1}^{L} s} = \frac{2t}{L(L+1)},\; L = l(u)
        \quad \text{(eq. 4–5)}.

    Parameters
    ----------
    dataset : RewardDataset or anything :func:`rankkit.datasets.as_dataset` accepts
        Utterances and their responses (all labels are built at once): a preset such as
        ``"vader:movie"``, a CSV/JSONL/Parquet path, a table, ``(texts, labels)``, a list of
        ``(text, label)`` pairs … are coerced by :func:`~rankkit.datasets.as_dataset`, the
        one input language of every entry point that takes data.
    max_len : int, optional
        Truncate every sequence to its first ``max_len`` tokens *before* building; the
        truncated sequence is then the utterance, so L = min(l(u), max_len) in λ (the
        weights of a truncated utterance still sum to 1 over its cells).
    progress : bool or None, default False
        Show a tqdm bar over the build stages (None: only on a terminal or in a notebook,
        :func:`rankkit._progress.show_progress`).
    **load_kw
        ``tokenizer``, ``text``, ``labels``, ``split``, ``limit`` for a text source, passed
        to :func:`~rankkit.datasets.as_dataset` (as in
        :func:`rankkit.distributed.build_reward_matrix`).

    Returns
    -------
    RewardMatrix
        shape (N, dataset.vocab_size). Rows are the distinct prefixes x' that have at
        least one continuation, numbered by prefix length then lexicographically, so the
        empty prefix is row 0. ``values`` (nnz,) for 1-D responses, else (nnz, n_labels);
        ``weights`` = Σλ, ``counts`` = number of utterances per cell; ``prefix(row)``
        spells a row's prefix.

    Notes
    -----
    Sort (O(n log n) sequence comparisons) + LCP + one accumulation pass, O(total tokens ×
    n_labels), in numba; memory ≈ 45 bytes per observed cell plus the tokens. Empty
    sequences never reach here (``RewardDataset`` drops them).

    Examples
    --------
    >>> ds = RewardDataset([[1, 2], [1, 3]], [0.0, 1.0], vocab_size=4)
    >>> R = build_reward_matrix(ds)
    >>> R.shape, R.nnz, R.prefix(1).tolist()
    ((2, 4), 3, [1])
    >>> R.row(1)[1].tolist()       # cells ([1], 2) and ([1], 3)
    [0.0, 1.0]
    """
    if not isinstance(dataset, RewardDataset) or load_kw:
        from .datasets import as_dataset

        dataset = as_dataset(dataset, **load_kw)
    seqs = dataset.sequences
    if max_len is not None:
        if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
            raise ValueError(f"max_len must be a positive int or None, got {max_len!r}")
        seqs = seqs.truncate(int(max_len))
    y = dataset.responses.reshape(len(dataset), dataset.n_labels)
    vocab = dataset.vocab_size
    meta = {"max_len": None if max_len is None else int(max_len), "n_sequences": len(dataset),
            "n_dropped_empty": dataset.n_dropped_empty}
    values_shape_1d = dataset.responses.ndim == 1
    if len(seqs) == 0:
        n_labels = y.shape[1]
        vals = np.zeros(0) if values_shape_1d else np.zeros((0, n_labels))
        return RewardMatrix((0, vocab), np.zeros(1, np.int64), np.zeros(0, np.int32), vals,
                            np.zeros(0), np.zeros(0, np.int64), dataset.label_names,
                            np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32),
                            meta=meta)

    from ._progress import progress_bar

    bar = progress_bar(total=4, desc="build_reward_matrix", progress=progress)
    tokens, offsets = seqs.tokens, seqs.offsets
    L_max = int(seqs.lengths.max())
    bar.set_postfix_str("sort")
    order = _sort_sequences(tokens, offsets)
    bar.update()
    bar.set_postfix_str("lcp")
    lcp, per_depth = _lcp_and_depth_counts(tokens, offsets, order, L_max)
    cell_start = np.zeros(L_max + 1, dtype=np.int64)
    np.cumsum(per_depth, out=cell_start[1:])
    bar.update()
    bar.set_postfix_str("accumulate")
    indices, parent, has_child, weights, counts, values = _accumulate(
        tokens, offsets, order, lcp, np.ascontiguousarray(y), cell_start, L_max)
    del order, lcp
    bar.update()
    bar.set_postfix_str("rows")
    n_rows = 1 + int(has_child.sum())
    del has_child
    indptr, p_parent, p_token, p_len = _rows(indices, parent, cell_start, n_rows)
    del parent
    bar.update()
    bar.close()
    if values_shape_1d:
        values = values.reshape(-1)
    return RewardMatrix((n_rows, vocab), indptr, indices, values, weights, counts,
                        dataset.label_names, p_parent, p_token, p_len, meta=meta)

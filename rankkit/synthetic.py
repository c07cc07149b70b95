"""Synthetic reward matrices with known minimal rank (paper 002, §3.1.4, App. C.1–C.2).

Each case is a partially observed matrix P_Ω(R) as a :class:`~rankkit.matrix.RewardMatrix`
(observed zeros stored explicitly) with ``meta["case"]`` and ``meta["known_min_rank"]``,
the minimal rank of Definition 1,

.. math::

    \\min\\operatorname{rank}_\\Omega(R) = \\min\\{\\operatorname{rank}(\\hat R) :
    P_\\Omega(\\hat R) = P_\\Omega(R)\\},

or ``None`` where it is not known. They are the stress cases of the rank analysis:

==========================  ===================  ==========================================
case                        paper                known minimal rank
==========================  ===================  ==========================================
``upper_triangular(n)``     Lemma 2, Example 3   n (every completion is triangular, det = 1)
``one_per_row(n, m)``       Example 1, App. C.1  1 (fill each row with its one value)
``context_independent``     Example 2            1 (R[x, v] = label(v))
``arithmetic(n)``           Example 4            n (rows hold every one-hot e_z)
``single_missing(k)``       Lemma 1, App. C.2    k − 1 (almost surely)
``random_low_rank``         —                    the generating rank if fully observed
==========================  ===================  ==========================================

Examples 3 and 4 are phrased as text in the paper; :func:`upper_triangular_dataset` and
:func:`arithmetic_dataset` give them as token utterances whose reward matrix
(:func:`rankkit.build_reward_matrix`) contains the same observed cells.

``rankkit stress`` prints the stress report (:func:`report`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .matrix import RewardMatrix
from .sequences import RewardDataset, TokenSequences

__all__ = ["upper_triangular", "one_per_row", "context_independent", "arithmetic", "single_missing",
           "random_low_rank", "upper_triangular_dataset", "arithmetic_dataset", "Case", "cases",
           "report"]


def _positive(name: str, value, minimum: int = 1) -> int:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _bernoulli_cells(g: np.random.Generator, n: int, m: int, density: float):
    """Cells of an n x m pattern, each present with probability ``density`` (independently).

    The count is Binomial(nm, density) and the cells a uniform draw of that many distinct
    positions: the same law as a dense Bernoulli mask without forming one (nm can be 10^10).
    """
    k = int(g.binomial(n * m, density))
    flat = g.choice(n * m, size=k, replace=False)
    return flat // m, flat % m


def _matrix(rows, cols, vals, shape, case: str, known: int | None, **params) -> RewardMatrix:
    return RewardMatrix.from_coo(rows, cols, vals, shape, label_names=("reward",),
                                 meta={"case": case, "known_min_rank": known, "params": params})


# ---- matrix cases ------------------------------------------------------------------------------

def upper_triangular(n: int) -> RewardMatrix:
    """Lemma 2 / Example 3: ones on the diagonal, observed zeros below, unknown above.

    .. math::

        \\Omega = \\{(i, j) : j \\le i\\}, \\quad R_{ij} = [i = j], \\quad
        \\min\\operatorname{rank}_\\Omega(R) = n,

    since every completion is upper triangular with unit diagonal, so its determinant is 1
    (paper 002, §3.1.4, Lemma 2; App. D.1 uses n = 1024). :math:`|Ω|` = n(n + 1)/2.

    Parameters
    ----------
    n : int
        Rows and columns.

    Returns
    -------
    RewardMatrix
        Shape (n, n), ``meta["known_min_rank"] == n``.

    Examples
    --------
    >>> R = upper_triangular(3)
    >>> R.shape, R.nnz, R.meta["known_min_rank"]
    ((3, 3), 6, 3)
    """
    n = _positive("n", n)
    r, c = np.tril_indices(n)
    return _matrix(r, c, (r == c).astype(np.float64), (n, n), "upper_triangular", n, n=n)


def one_per_row(n: int, m: int, seed: int | None = 0) -> RewardMatrix:
    """Example 1 / App. C.1: every row (prefix seen once) has exactly one observed cell.

    Column uniform in [0, m), value uniform in (0, 1]. Filling each row with its one value
    is a rank-1 completion, and the values are nonzero, so
    :math:`\\min\\operatorname{rank}_\\Omega(R) = 1`. Its Ω₂ (Lemma 3) is empty.

    Parameters
    ----------
    n, m : int
        Rows (prefixes) and columns (vocabulary).
    seed : int or None
        Seed of ``np.random.default_rng``.
    """
    n, m = _positive("n", n), _positive("m", m)
    g = np.random.default_rng(seed)
    cols = g.integers(0, m, n)
    vals = 1.0 - g.random(n)  # (0, 1]: a zero row would lower the minimal rank to 0
    return _matrix(np.arange(n), cols, vals, (n, m), "one_per_row", 1, n=n, m=m, seed=seed)


def context_independent(n: int, m: int, seed: int | None = 0, *, density: float = 0.05) -> RewardMatrix:
    """Example 2: each token is a high- (1) or low-reward (0) token whatever its context.

    .. math::

        R[x', v] = \\ell(v) \\in \\{0, 1\\}, \\qquad R = \\mathbf{1}\\, \\ell^\\top,

    observed on a random pattern (each cell with probability ``density``, at least one per
    row). The full matrix is a rank-1 completion, so the minimal rank is 1 (0 if no observed
    cell happens to have a high-reward token).

    Parameters
    ----------
    n, m : int
        Rows and columns.
    seed : int or None
    density : float in (0, 1]
        Probability that a cell is observed.
    """
    n, m = _positive("n", n), _positive("m", m)
    if not 0 < density <= 1:
        raise ValueError(f"density must lie in (0, 1], got {density!r}")
    g = np.random.default_rng(seed)
    label = g.integers(0, 2, m).astype(np.float64)
    r, c = _bernoulli_cells(g, n, m, density)
    empty = np.flatnonzero(np.bincount(r, minlength=n) == 0)
    r = np.concatenate([r, empty])
    c = np.concatenate([c, g.integers(0, m, empty.size)])
    vals = label[c]
    known = int(bool(vals.any()))
    return _matrix(r, c, vals, (n, m), "context_independent", known, n=n, m=m, seed=seed,
                   density=density)


def arithmetic(n: int) -> RewardMatrix:
    """Example 4: rows are the contexts "x + y =", columns the answers z, all in [0, n).

    .. math::

        R[(x, y), z] = [x + y = z], \\qquad 0 \\le x, y, z < n,

    with every cell observed (the reward is defined for every z). Rows with x + y ≥ n are
    all observed zeros. The rows (z, 0) are the one-hot vectors e_z for every z, so the fully
    observed matrix has rank n and :math:`\\min\\operatorname{rank}_\\Omega(R) = n`.
    Row ``x * n + y`` is the context "x + y =". Shape (n², n), :math:`|Ω|` = n³.
    """
    n = _positive("n", n)
    x, y, z = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    vals = (x + y == z).ravel().astype(np.float64)
    return _matrix((x * n + y).ravel(), z.ravel(), vals, (n * n, n), "arithmetic", n, n=n)


def single_missing(k: int, seed: int | None = 0) -> RewardMatrix:
    """Lemma 1 / App. C.2: a Gaussian k × k matrix with one missing cell.

    Choosing the missing value :math:`x = -\\sum_{i>1} a_{i1}A_{i1} / A_{11}` makes the
    determinant vanish, so :math:`\\min\\operatorname{rank}_\\Omega(R) < k` with probability 1;
    the fully observed (k − 1) × (k − 1) minor avoiding the missing cell is almost surely
    invertible, so the minimal rank is exactly k − 1. The missing cell is
    ``meta["params"]["missing"]``.
    """
    k = _positive("k", k)
    g = np.random.default_rng(seed)
    A = g.standard_normal((k, k))
    i, j = (int(v) for v in g.integers(0, k, 2))
    mask = np.ones((k, k), dtype=bool)
    mask[i, j] = False
    r, c = np.nonzero(mask)
    return _matrix(r, c, A[r, c], (k, k), "single_missing", k - 1, k=k, seed=seed, missing=(i, j))


def random_low_rank(n: int, m: int, rank: int, density: float, noise: float = 0.0,
                    seed: int | None = 0) -> RewardMatrix:
    """A random rank-``rank`` matrix :math:`UV^\\top/\\sqrt{r}` observed with probability ``density``.

    .. math::

        R = U V^\\top / \\sqrt{r} + \\sigma E, \\quad U_{ik}, V_{jk}, E_{ij} \\sim \\mathcal N(0, 1),

    observed cell by cell with probability ``density`` (σ = ``noise``). The minimal rank is at
    most r when ``noise == 0``; it is known to equal r only when everything is observed
    (``density == 1``), otherwise ``meta["known_min_rank"]`` is None and the generating rank
    is ``meta["params"]["rank"]``.
    """
    n, m = _positive("n", n), _positive("m", m)
    rank = _positive("rank", rank, minimum=0)
    if not 0 < density <= 1:
        raise ValueError(f"density must lie in (0, 1], got {density!r}")
    if noise < 0 or not np.isfinite(noise):
        raise ValueError(f"noise must be a finite standard deviation >= 0, got {noise!r}")
    g = np.random.default_rng(seed)
    U = g.standard_normal((n, rank))
    V = g.standard_normal((m, rank))
    r, c = _bernoulli_cells(g, n, m, density)
    # only the observed cells are formed: n * m can be large while nnz is small
    vals = np.einsum("ik,ik->i", U[r], V[c]) / np.sqrt(max(rank, 1))
    if noise:
        vals = vals + noise * g.standard_normal(vals.size)
    known = min(rank, n, m) if (density == 1 and noise == 0) else None
    return _matrix(r, c, vals, (n, m), "random_low_rank", known, n=n, m=m, rank=rank,
                   density=density, noise=noise, seed=seed)


# ---- text versions -----------------------------------------------------------------------------

def upper_triangular_dataset(n: int) -> RewardDataset:
    """Example 3 as text: utterances "k_i v_j" (first name, last name) with j ≤ i.

    Token ``i`` is the first name k_i and token ``n + j`` the last name v_j (vocabulary 2n).
    The reward is 1 for the allowed pair j = i and 0 for the blocked pairs j < i; pairs with
    j > i never occur (unknown). In ``build_reward_matrix`` of this dataset the rows with
    prefix [k_i], restricted to the last-name columns, are :func:`upper_triangular` (n)
    (each cell holds one utterance, so its λ-weighted mean is that utterance's reward). The
    empty-prefix row observes only first-name columns, which no other row observes, so the
    whole matrix still has minimal rank n.
    """
    n = _positive("n", n)
    i, j = np.tril_indices(n)
    seqs = TokenSequences(np.stack([i, n + j], axis=1).ravel(), np.arange(0, 2 * i.size + 1, 2))
    texts = [f"first_{a} last_{b}" for a, b in zip(i.tolist(), j.tolist(), strict=True)]
    return RewardDataset(seqs, (i == j).astype(np.float64), label_names=("reward",),
                         vocab_size=2 * n, texts=texts)


#: token ids of "+" and "=" in :func:`arithmetic_dataset`, after the n number tokens
def _arith_tokens(n: int) -> tuple[int, int]:
    return n, n + 1


def arithmetic_dataset(n: int) -> RewardDataset:
    """Example 4 as text: every utterance "x + y = z" with x, y, z in [0, n), reward [x + y = z].

    Tokens 0..n−1 are the numbers, ``n`` is "+" and ``n + 1`` is "=" (vocabulary n + 2);
    there are n³ utterances of 5 tokens. The rows of ``build_reward_matrix`` with prefix
    [x, +, y, =], restricted to the number columns, are :func:`arithmetic` (n). The other rows
    (shorter prefixes) observe either number columns, which the rank-n block already spans,
    or only the "+"/"=" columns, which that block leaves free, so the minimal rank stays n.
    """
    n = _positive("n", n)
    plus, eq = _arith_tokens(n)
    x, y, z = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij"))
    toks = np.stack([x, np.full_like(x, plus), y, np.full_like(x, eq), z], axis=1)
    seqs = TokenSequences(toks.ravel(), np.arange(0, 5 * x.size + 1, 5))
    texts = [f"{a} + {b} = {c}" for a, b, c in zip(x.tolist(), y.tolist(), z.tolist(), strict=True)]
    return RewardDataset(seqs, (x + y == z).astype(np.float64), label_names=("reward",),
                         vocab_size=n + 2, texts=texts)


# ---- registry and stress report ----------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One stress case: how to build it, at which default size, and what the paper says.

    ``make`` returns a RewardMatrix, or a RewardDataset when ``text`` is True (then the
    matrix is ``build_reward_matrix(make(**defaults))``). ``known_min_rank`` maps the
    parameters to the known minimal rank of that whole matrix.
    """

    name: str
    make: Callable
    defaults: dict
    paper: str
    text: bool = False
    known_min_rank: Callable[..., int | None] | None = field(default=None, repr=False)

    def build(self, **overrides) -> RewardMatrix:
        """The case's reward matrix at the default size (or ``overrides``)."""
        kw = {**self.defaults, **overrides}
        if not self.text:
            return self.make(**kw)
        from .trie import build_reward_matrix

        R = build_reward_matrix(self.make(**kw))
        R.meta.update(case=self.name, known_min_rank=self.known_min_rank(**kw), params=kw)
        return R


def cases() -> dict[str, Case]:
    """All synthetic cases with their default sizes, in report order."""
    return {c.name: c for c in [
        Case("upper_triangular", upper_triangular, {"n": 1024}, "Lemma 2, Ex. 3"),
        Case("upper_triangular_text", upper_triangular_dataset, {"n": 256}, "Ex. 3 (text)", True,
             lambda n: n),
        Case("one_per_row", one_per_row, {"n": 20000, "m": 50257, "seed": 0}, "Ex. 1, C.1"),
        Case("context_independent", context_independent, {"n": 2000, "m": 1000, "seed": 0},
             "Ex. 2"),
        Case("arithmetic", arithmetic, {"n": 40}, "Ex. 4"),
        Case("arithmetic_text", arithmetic_dataset, {"n": 16}, "Ex. 4 (text)", True, lambda n: n),
        Case("single_missing", single_missing, {"k": 256, "seed": 0}, "Lemma 1, C.2"),
        Case("random_low_rank", random_low_rank,
             {"n": 4000, "m": 2000, "rank": 16, "density": 0.01, "noise": 0.0, "seed": 0}, "-"),
    ]}


def report(names: list[str] | None = None, overrides: dict[str, dict] | None = None) -> list[dict]:
    """Build every case (or ``names``) and its Ω₂ reduction; one dict per case.

    ``overrides`` maps a case name to parameters replacing its defaults (e.g. a smaller n).

    Keys: case, paper, rows, cols, observed, omega2_rows, omega2_cols, omega2_observed,
    single_rows (removed by Lemma 3), known_min_rank, seconds.
    """
    from .omega import reduce_omega2

    registry = cases()
    unknown = sorted((set(names or ()) | set(overrides or ())) - set(registry))
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; choose from {list(registry)}")
    out = []
    for name in names or list(registry):
        t0 = time.perf_counter()
        R = registry[name].build(**(overrides or {}).get(name, {}))
        R2 = reduce_omega2(R)
        out.append({
            "case": name, "paper": registry[name].paper,
            "rows": R.shape[0], "cols": R.shape[1], "observed": R.nnz,
            "omega2_rows": R2.shape[0], "omega2_cols": R2.shape[1], "omega2_observed": R2.nnz,
            "single_rows": int(R2.n_single_rows), "known_min_rank": R.meta.get("known_min_rank"),
            "seconds": round(time.perf_counter() - t0, 3),
        })
    return out


def _table(rows: list[dict]) -> str:
    cols = [("case", "case"), ("paper", "paper"), ("shape", None), ("observed", "observed"),
            ("Ω₂ shape", None), ("Ω₂ observed", "omega2_observed"), ("single rows", "single_rows"),
            ("known min rank", "known_min_rank")]
    cells = []
    for r in rows:
        line = []
        for title, key in cols:
            if title == "shape":
                v = f"{r['rows']} x {r['cols']}"
            elif title == "Ω₂ shape":
                v = f"{r['omega2_rows']} x {r['omega2_cols']}"
            else:
                v = r[key]
                v = "unknown" if v is None else (f"{v:,}" if isinstance(v, int) else str(v))
            line.append(v)
        cells.append(line)
    widths = [max(len(t), *(len(c[i]) for c in cells)) for i, (t, _) in enumerate(cols)]
    left = {0, 1}

    def fmt(values):
        return "  ".join(v.ljust(w) if i in left else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True)))

    head = fmt([t for t, _ in cols])
    return "\n".join([head, "-" * len(head), *(fmt(c) for c in cells)])

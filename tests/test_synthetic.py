"""Synthetic cases: patterns against slow loops, and known minimal ranks checked from both sides.

For each case with a known minimal rank r the test builds an explicit completion that agrees
with every observed cell and has numerical rank r (so min rank <= r), and where the paper's
argument gives it, a fully observed submatrix (or forced structure) of rank r (so >= r).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankkit import build_reward_matrix, synthetic
from rankkit.rank import numerical_rank
from rankkit.synthetic import (
    arithmetic,
    arithmetic_dataset,
    context_independent,
    one_per_row,
    random_low_rank,
    single_missing,
    upper_triangular,
    upper_triangular_dataset,
)


def dense(R):
    """(values, mask) of a RewardMatrix: the obvious dense view of P_Ω(R)."""
    vals = np.zeros(R.shape)
    mask = np.zeros(R.shape, dtype=bool)
    r, c = R.rows, R.indices
    vals[r, c] = R.label_values(0)
    mask[r, c] = True
    return vals, mask


def agrees(completion, R) -> bool:
    vals, mask = dense(R)
    return np.array_equal(completion[mask], vals[mask])


# ---- matrix cases -----------------------------------------------------------------------------

@given(n=st.integers(1, 30), seed=st.integers(0, 2**32 - 1))
def test_upper_triangular_pattern_and_every_completion_full_rank(n, seed):
    R = upper_triangular(n)
    vals, mask = dense(R)
    i, j = np.indices((n, n))
    np.testing.assert_array_equal(mask, j <= i)          # observed on and below the diagonal
    np.testing.assert_array_equal(vals, (i == j) * 1.0)  # zeros below are stored, not missing
    assert R.nnz == n * (n + 1) // 2 and R.meta["case"] == "upper_triangular"
    # any completion is upper triangular with unit diagonal: rank n (Lemma 2)
    fill = np.where(mask, vals, np.random.default_rng(seed).uniform(-3, 3, (n, n)))
    assert agrees(fill, R)
    assert numerical_rank(fill) == R.meta["known_min_rank"] == n


@given(n=st.integers(1, 40), m=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_one_per_row_rank_one_completion(n, m, seed):
    R = one_per_row(n, m, seed)
    assert (R.row_nnz == 1).all() and R.shape == (n, m)
    v = R.label_values(0)
    assert ((v > 0) & (v <= 1)).all()
    witness = np.repeat(v[:, None], m, axis=1)  # App. C.1: copy each row's value across it
    assert agrees(witness, R)
    assert numerical_rank(witness) == R.meta["known_min_rank"] == 1


@given(n=st.integers(1, 40), m=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       density=st.floats(0.01, 1.0))
def test_context_independent_is_a_column_function(n, m, seed, density):
    R = context_independent(n, m, seed, density=density)
    assert (R.row_nnz >= 1).all()
    vals, mask = dense(R)
    # each column holds one label whatever the row: recover it and complete as 1 * label^T
    label = np.zeros(m)
    for c in range(m):
        seen = np.unique(vals[mask[:, c], c])
        assert seen.size <= 1 and set(seen.tolist()) <= {0.0, 1.0}
        label[c] = seen[0] if seen.size else 0.0
    witness = np.ones((n, 1)) * label[None, :]
    assert agrees(witness, R)
    assert numerical_rank(witness) == R.meta["known_min_rank"] == int(vals[mask].any())


@given(n=st.integers(1, 12))
def test_arithmetic_matches_a_loop_and_is_full_rank(n):
    R = arithmetic(n)
    vals, mask = dense(R)
    ref = np.zeros((n * n, n))
    for x in range(n):
        for y in range(n):
            for z in range(n):
                ref[x * n + y, z] = float(x + y == z)
    assert mask.all()  # the reward is defined for every answer z
    np.testing.assert_array_equal(vals, ref)
    assert numerical_rank(vals) == R.meta["known_min_rank"] == n


@given(k=st.integers(1, 25), seed=st.integers(0, 2**32 - 1))
def test_single_missing_has_rank_k_minus_one_completion(k, seed):
    R = single_missing(k, seed)
    vals, mask = dense(R)
    i, j = R.meta["params"]["missing"]
    assert (~mask).sum() == 1 and not mask[i, j]
    # det is affine in the missing value x: det(A(x)) = det(A(0)) + x * C_ij  (App. C.2)
    A0 = vals.copy()
    minor = np.delete(np.delete(A0, i, axis=0), j, axis=1)
    cof = (-1) ** (i + j) * (np.linalg.det(minor) if k > 1 else 1.0)
    A = A0.copy()
    A[i, j] = -np.linalg.det(A0) / cof
    assert agrees(A, R)
    s = np.linalg.svd(A, compute_uv=False)
    # the completion is singular up to the rounding of the solve, far below sigma_{k-1}
    assert s[-1] <= 1e3 * k * np.finfo(float).eps * s[0]
    if k > 1:
        assert s[-2] > 1e3 * s[-1]
        # the observed minor avoiding (i, j) is full rank: no completion goes below k - 1
        assert numerical_rank(minor) == k - 1
    assert R.meta["known_min_rank"] == k - 1


@given(n=st.integers(1, 30), m=st.integers(1, 30), rank=st.integers(0, 8),
       seed=st.integers(0, 2**32 - 1))
def test_random_low_rank_fully_observed_has_its_rank(n, m, rank, seed):
    R = random_low_rank(n, m, rank, density=1.0, seed=seed)
    vals, mask = dense(R)
    assert mask.all()
    assert numerical_rank(vals) == R.meta["known_min_rank"] == min(rank, n, m)


def test_random_low_rank_partial_and_noisy(rng):
    n, m, density = 300, 200, 0.05
    R = random_low_rank(n, m, 4, density=density, seed=3)
    sd = np.sqrt(n * m * density * (1 - density))
    assert abs(R.nnz - n * m * density) < 6 * sd  # Binomial(nm, density) cells
    assert R.meta["known_min_rank"] is None and R.meta["params"]["rank"] == 4
    noisy = random_low_rank(n, m, 4, density=density, noise=0.5, seed=3)
    np.testing.assert_array_equal(noisy.indices, R.indices)  # same pattern, same seed
    diff = noisy.label_values(0) - R.label_values(0)
    assert 0.4 < diff.std() < 0.6
    with pytest.raises(ValueError, match="density"):
        random_low_rank(5, 5, 1, density=0.0)
    with pytest.raises(ValueError, match="noise"):
        random_low_rank(5, 5, 1, density=0.5, noise=-1)


def test_seeds_are_explicit_and_reproducible():
    a, b, c = (one_per_row(50, 30, s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        upper_triangular(bad)


# ---- text versions ------------------------------------------------------------------------------

@given(n=st.integers(1, 12))
def test_upper_triangular_text_gives_the_same_cells(n):
    ds = upper_triangular_dataset(n)
    R = build_reward_matrix(ds)
    vals, mask = dense(R)
    rows = np.flatnonzero(R.prefix_len == 1)
    first = np.array([R.prefix(r)[0] for r in rows])
    assert sorted(first.tolist()) == list(range(n))
    block_rows = rows[np.argsort(first)]  # row of prefix [k_i], in order of i
    ref_vals, ref_mask = dense(upper_triangular(n))
    np.testing.assert_array_equal(mask[block_rows][:, n:], ref_mask)
    np.testing.assert_array_equal(vals[block_rows][:, n:], ref_vals)
    assert not mask[block_rows][:, :n].any()  # nothing else observed in those rows
    # root row: a first name's cell is the mean reward of its utterances, 1 / (i + 1)
    root = int(np.flatnonzero(R.prefix_len == 0)[0])
    np.testing.assert_allclose(vals[root, :n], 1.0 / (np.arange(n) + 1), rtol=4 * np.finfo(float).eps)
    # rank-n witness for the whole matrix: identity on the last names, root row = row [k_0]
    W = np.zeros(R.shape)
    W[block_rows, n + np.arange(n)] = 1.0
    W[block_rows[0], :n] = vals[root, :n]
    W[root] = W[block_rows[0]]
    assert agrees(W, R) and numerical_rank(W) == n
    assert ds.texts[0] == "first_0 last_0"


@given(n=st.integers(1, 6))
def test_arithmetic_text_gives_the_same_cells(n):
    ds = arithmetic_dataset(n)
    R = build_reward_matrix(ds)
    vals, mask = dense(R)
    plus, eq = n, n + 1
    rows = np.flatnonzero(R.prefix_len == 4)
    order = np.empty(n * n, dtype=np.int64)
    for r in rows:
        x, p, y, e = R.prefix(r).tolist()
        assert (p, e) == (plus, eq)
        order[x * n + y] = r
    ref_vals, ref_mask = dense(arithmetic(n))
    np.testing.assert_array_equal(mask[order][:, :n], ref_mask)
    np.testing.assert_array_equal(vals[order][:, :n], ref_vals)
    assert not mask[order][:, n:].any()
    # rank-n witness for the whole matrix: every row is (w, w_0, w_0) for some w in R^n
    W = np.zeros(R.shape)
    for r in range(R.shape[0]):
        if mask[r, :n].any():
            assert mask[r, :n].all()  # a row observing numbers observes all of them
            w = vals[r, :n]
        else:
            (c,) = np.flatnonzero(mask[r])
            w = np.eye(n)[0] * vals[r, c]
        W[r] = np.concatenate([w, [w[0], w[0]]])
    assert agrees(W, R) and numerical_rank(W) == n
    assert len(ds) == n**3 and ds.texts[-1] == f"{n - 1} + {n - 1} = {n - 1}"


# ---- registry and report ------------------------------------------------------------------------

SMALL = {"upper_triangular": {"n": 20}, "upper_triangular_text": {"n": 8}, "one_per_row": {"n": 30},
         "context_independent": {"n": 30, "m": 20}, "arithmetic": {"n": 5},
         "arithmetic_text": {"n": 4}, "single_missing": {"k": 9},
         "random_low_rank": {"n": 40, "m": 30, "density": 1.0}}


def test_every_case_builds_and_reports_lemma3_counts():
    assert set(synthetic.cases()) == set(SMALL)
    rows = synthetic.report(overrides=SMALL)
    assert [r["case"] for r in rows] == list(synthetic.cases())
    for row in rows:
        R = synthetic.cases()[row["case"]].build(**SMALL[row["case"]])
        assert R.meta["case"] == row["case"]
        per_row = R.row_nnz
        # Ω₂ (Lemma 3) keeps exactly the rows with >= 2 cells, and counts the single ones
        assert row["observed"] == R.nnz and (row["rows"], row["cols"]) == R.shape
        assert row["omega2_rows"] == int((per_row >= 2).sum())
        assert row["omega2_observed"] == int(per_row[per_row >= 2].sum())
        assert row["single_rows"] == int((per_row == 1).sum())
        assert row["known_min_rank"] == R.meta["known_min_rank"]
    by = {r["case"]: r for r in rows}
    assert by["upper_triangular"]["known_min_rank"] == 20 and by["random_low_rank"]["known_min_rank"] == 16
    with pytest.raises(ValueError, match="unknown case"):
        synthetic.report(["nope"])


def test_cli_table_is_aligned_and_json_parses():
    """The stress report from ``rankkit stress`` (which replaced ``python -m rankkit.synthetic``)."""
    from click.testing import CliRunner

    from rankkit import cli

    res = CliRunner().invoke(cli.main, ["stress", "--case", "arithmetic", "--case", "single_missing"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    table = lines[:4]
    assert len({len(ln) for ln in table}) == 1  # header, rule and rows share one width
    assert "arithmetic" in table[2] and "single_missing" in table[3]
    res = CliRunner().invoke(cli.main, ["stress", "--json", "--case", "single_missing"])
    (row,) = json.loads(res.stdout)
    assert row["known_min_rank"] == row["rows"] - 1 and row["observed"] == row["rows"] ** 2 - 1
    assert not hasattr(synthetic, "main")

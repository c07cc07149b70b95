"""Damaged files: every checkpoint and saved result names the file and says what to do."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import rankkit as rk
from rankkit._io import DamagedFileError, atomic_json, atomic_npz, read_json, read_npz
from rankkit.lowrank import fixed_rank_fit
from rankkit.minrank import MinRankEstimate

FAST = dict(progress=False, backend="numpy")


def _problem(seed=0):
    g = np.random.default_rng(seed)
    M = g.standard_normal((40, 2)) @ g.standard_normal((2, 30))
    mask = g.random(M.shape) < 0.5
    return sp.csr_matrix((M[mask], np.nonzero(mask)), shape=M.shape)


def _damage(path, how):
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # garbage of the same length
        path.write_bytes(bytes((b * 7 + 3) % 256 for b in data))


@pytest.mark.parametrize("how", ["empty", "truncated", "garbage"])
def test_damaged_checkpoints_name_the_file_and_the_fix(tmp_path, how):
    S = _problem()
    si = tmp_path / "si.npz"
    rk.soft_impute(S, 2, 1e-4, checkpoint=si, callback=lambda it, info: it == 3, **FAST)
    fr = tmp_path / "fr.npz"
    fixed_rank_fit(S, 2, eps=1e-30, rho=0.0, checkpoint=fr, callback=lambda it, info: it == 2, **FAST)
    res = tmp_path / "res.npz"
    rk.soft_impute(S, 2, 1e-4, **FAST).save(res)
    for path, call in ((si, lambda: rk.soft_impute(S, 2, 1e-4, checkpoint=si, **FAST)),
                       (fr, lambda: fixed_rank_fit(S, 2, eps=1e-30, rho=0.0, checkpoint=fr, **FAST)),
                       (res, lambda: rk.SoftImputeResult.load(res))):
        _damage(path, how)
        with pytest.raises(DamagedFileError, match=f"{path.name}' is damaged.*(delete it|write it again)"):
            call()


def test_impossible_iteration_counts_are_refused(tmp_path):
    S = _problem(1)
    for name, run, key in (("si.npz", lambda p, **k: rk.soft_impute(S, 2, 1e-4, checkpoint=p, **k, **FAST),
                            "iter"),
                           ("fr.npz", lambda p, **k: fixed_rank_fit(S, 2, eps=1e-30, rho=0.0, checkpoint=p,
                                                                    **k, **FAST), "it")):
        path = tmp_path / name
        run(path, callback=lambda it, info: it == 3)
        z = read_npz(path, "test")
        z[key] = np.array(-5)
        atomic_npz(path, z)
        with pytest.raises(DamagedFileError, match="iteration -5"):
            run(path)


def test_damaged_estimate_and_search_state(tmp_path, rng):
    M = rng.normal(size=(20, 2)) @ rng.normal(size=(2, 15))
    R = rk.RewardMatrix.from_dense(M, rng.random(M.shape) < 0.7)
    est = rk.estimate_min_rank(R, **FAST)
    est.save(tmp_path / "e.json")
    (tmp_path / "e.json").write_text('{"eps": 1e-6, "lower"')
    with pytest.raises(DamagedFileError, match="saved estimate .*e.json' is damaged"):
        MinRankEstimate.load(tmp_path / "e.json")
    ck = tmp_path / "ck"
    rk.estimate_min_rank(R, checkpoint_dir=ck, **FAST)
    (ck / "minrank_state.json").write_text("")
    with pytest.raises(DamagedFileError, match="delete the directory"):
        rk.estimate_min_rank(R, checkpoint_dir=ck, **FAST)


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    atomic_json(tmp_path / "a.json", {"x": [1, 2]})
    atomic_npz(tmp_path / "b.npz", {"x": np.arange(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npz"]
    assert read_json(tmp_path / "a.json", "test") == {"x": [1, 2]}
    np.testing.assert_array_equal(read_npz(tmp_path / "b.npz", "test", required=("x",))["x"], np.arange(3))
    with pytest.raises(DamagedFileError, match="no \\['y'\\] array"):
        read_npz(tmp_path / "b.npz", "test", required=("y",))
    with pytest.raises(FileNotFoundError):
        read_npz(tmp_path / "missing.npz", "test")


@given(st.lists(st.integers(-3, 3), max_size=6), st.lists(st.integers(-3, 3), max_size=6))
def test_fingerprint_separates_different_inputs(a, b):
    from rankkit._io import fingerprint

    fa, fb = fingerprint(np.array(a, np.int64)), fingerprint(np.array(b, np.int64))
    assert (fa == fb) == (a == b)
    # the same values under another dtype, as a plain list, or split differently are other
    # problems: a checkpoint of one must never resume the other
    assert fingerprint(np.array(a, np.int32)) != fa
    assert fingerprint(a) != fa
    assert fingerprint(a, b) != fingerprint(a + b)


def test_fingerprint_is_stable_and_typed():
    from rankkit._io import fingerprint

    assert fingerprint({"b": 1, "a": [1.5, None]}) == fingerprint({"a": [1.5, None], "b": 1})
    assert len({fingerprint(x) for x in (1, 1.0, "1", True, b"1", None)}) == 6
    with pytest.raises(TypeError, match="cannot fingerprint a object"):
        fingerprint(object())
    torch = pytest.importorskip("torch")
    t = torch.arange(4, dtype=torch.float32)
    assert fingerprint(t) == fingerprint(t.clone()) != fingerprint(t.double())
    assert fingerprint(t.bfloat16()) != fingerprint(t)

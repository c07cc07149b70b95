"""log Z bounds and KL estimates (rankkit_ext.tsmc.estimates) against exact enumeration."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rankkit_ext.tsmc.estimates import (  # noqa: E402
    kl_q_sigma,
    kl_sigma_q,
    log_z_lower_bound,
    log_z_upper_bound,
)
from rankkit_ext.tsmc.exact import enumerate_target  # noqa: E402
from rankkit_ext.tsmc.resampling import categorical  # noqa: E402

from ._helpers import make_case, random_twist  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def exact_samples(target, n, seed):
    idx = categorical(target.log_sigma.expand(n, -1), torch.Generator().manual_seed(seed))
    return [list(target.sequences[i]) for i in idx.tolist()]


@pytest.fixture(scope="module")
def case():
    lm, phi = make_case(21, 3, 3, eos=True)
    target = enumerate_target(lm, phi, [0], 3)
    return lm, phi, target, random_twist(lm, 5, 1.0)


@pytest.mark.parametrize("thr", [0.0, 1.0], ids=["sis-iwae", "smc"])
def test_lower_and_upper_bounds_sandwich_log_z(case, thr):
    lm, phi, target, twist = case
    g = torch.Generator().manual_seed(0)
    lo = log_z_lower_bound(lm, twist, phi, [0], 4, 3, 200, g, ess_threshold=thr)
    up = log_z_upper_bound(lm, twist, phi, [0], 4, 3, exact_samples(target, 200, 1), g,
                           ess_threshold=thr)
    # the bias is significant for this poor twist and 4 particles: strict, with CLT margin
    assert lo.mean + 3 * lo.stderr < target.log_Z < up.mean - 3 * up.stderr, (lo, up, target.log_Z)
    # with the optimal twist both bounds are tight: every run equals log Z
    star = target.optimal_twist()
    lo_s = log_z_lower_bound(lm, star, phi, [0], 4, 3, 5, g, ess_threshold=thr)
    up_s = log_z_upper_bound(lm, star, phi, [0], 4, 3, exact_samples(target, 5, 2), g,
                             ess_threshold=thr)
    assert np.allclose(lo_s.values, target.log_Z, atol=1e-9)
    assert np.allclose(up_s.values, target.log_Z, atol=1e-9)


def test_kl_estimates_match_exact(case):
    lm, phi, target, twist = case
    n = 3000
    ks = kl_sigma_q(lm, twist, phi, [0], exact_samples(target, n, 3), target.log_Z)
    kq = kl_q_sigma(lm, twist, phi, [0], n, 3, target.log_Z, torch.Generator().manual_seed(4))
    for est, exact in ((ks, target.kl_sigma_q(twist)), (kq, target.kl_q_sigma(twist))):
        assert exact > 0.05
        assert abs(est.mean - exact) <= 4.5 * est.stderr, (est.mean, exact)
    assert abs(target.kl_sigma_q(target.optimal_twist())) < 1e-12

"""Contrastive twist learning against the exact gradient of Σ_t KL(σ_t ‖ π_t)."""

import pytest

torch = pytest.importorskip("torch")

from rankkit_ext.tsmc.exact import enumerate_target, exact_ctl_loss  # noqa: E402
from rankkit_ext.tsmc.learning import ctl_loss  # noqa: E402
from rankkit_ext.tsmc.sampler import sis, teacher_force, tsmc  # noqa: E402

from ._helpers import make_case, random_twist, train_straight_and_resumed  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mean_ctl_grad(lm, twist, phi, K, runs, target=None):
    acc = torch.zeros_like(twist.table)
    for s in range(runs):
        g = torch.Generator().manual_seed(s)
        pos = None
        if target is not None:  # exact target samples for the positive phase
            pos = tsmc(lm, target.optimal_twist(), phi, [0], K, target.horizon,
                       generator=g).sequences(strip_eos=False)
        twist.table.grad = None
        ctl_loss(lm, twist, phi, [0], K, target.horizon if target else 3, g, pos).backward()
        acc += twist.table.grad
    return acc / runs


def test_ctl_gradient_converges_to_exact_gradient():
    lm, phi = make_case(3, 3, 3, eos=False)
    target = enumerate_target(lm, phi, [0], 3, eos_token_id=None)
    twist = random_twist(lm, 2, 0.5)
    exact_ctl_loss(target, twist).backward()
    g_exact = twist.table.grad.clone()
    assert g_exact.norm() > 0.1  # the twist is far from optimal: a real gradient to match

    def rel(g):
        return float((g - g_exact).norm() / g_exact.norm())

    small, big = (rel(_mean_ctl_grad(lm, twist, phi, K, 10)) for K in (8, 4096))
    assert big < 0.05 and big < small / 2, (small, big)
    exact_pos = rel(_mean_ctl_grad(lm, twist, phi, 4096, 10, target))
    assert exact_pos < 0.05


def test_ctl_exact_loss_is_zero_at_optimal_twist():
    lm, phi = make_case(6, 4, 3, eos=False)
    target = enumerate_target(lm, phi, [0], 3, eos_token_id=None)
    star = target.optimal_twist()
    star.table.requires_grad_(True)
    loss = exact_ctl_loss(target, star)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-12 and float(star.table.grad.abs().max()) < 1e-12


def test_train_twist_reduces_kl_and_resumes_from_checkpoint(tmp_path):
    lm, phi = make_case(9, 3, 3, eos=True)
    target = enumerate_target(lm, phi, [0], 3)
    kw = dict(steps=40, n_particles=64, max_new_tokens=3, lr=0.1, seed=0, progress=False)

    def fresh():
        return random_twist(lm, 0, 0.0)  # psi = 1: the bootstrap proposal

    kl0 = target.kl_sigma_q(fresh())
    # interrupted after 20 steps, resumed to 40: identical to the uninterrupted run
    tw, tw3, res = train_straight_and_resumed(lm, fresh, phi, kw, tmp_path, 20)
    kl1 = target.kl_sigma_q(tw)
    assert kl1 < 0.5 * kl0, (kl0, kl1)
    assert res.steps_done == 40 and len(res.losses) == 40
    assert torch.allclose(tw3.table, tw.table, atol=1e-12)


def _ctl_grads(lm, twist, phi, K, T, runs, **kw):
    """Per-run CTL gradient estimates (runs, numel) at seeds 0..runs-1."""
    out = []
    for s in range(runs):
        twist.table.grad = None
        ctl_loss(lm, twist, phi, [0], K, T, torch.Generator().manual_seed(s), **kw).backward()
        out.append(twist.table.grad.flatten().clone())
    return torch.stack(out)


def _clt_ok(grads, exact, z=4.5, n_dirs=16):
    """Is the mean of i.i.d. per-run estimates within z standard errors of ``exact``?

    Tested along ``n_dirs`` fixed random directions: a single table entry of a rare prefix
    is a rare-event count whose 48-run mean is far from normal (skewed), while a projection
    sums many entries and is close to normal. z = 4.5 over 16 directions: false alarm ~1e-4.
    """
    U = torch.randn(exact.numel(), n_dirs, generator=torch.Generator().manual_seed(0),
                    dtype=exact.dtype)
    proj, ref = grads @ U, exact @ U
    se = proj.std(0) / proj.shape[0] ** 0.5
    zs = (proj.mean(0) - ref).abs() / se
    return bool((zs <= z).all()), float(zs.max())


@pytest.mark.parametrize("method,positive", [("systematic", "sis"), ("residual", "sis"),
                                             ("multinomial", "same"), ("stratified", "same")])
def test_smc_negative_gradient_converges_to_exact_gradient(method, positive):
    # SMC negative phase (resampling every step) against the exact gradient of
    # sum_t KL(sigma_t || pi_t); K large enough that the O(1/K) self-normalisation bias is
    # far below the standard error of the 48-run mean
    lm, phi = make_case(3, 3, 3, eos=False)
    target = enumerate_target(lm, phi, [0], 3, eos_token_id=None)
    twist = random_twist(lm, 2, 0.5)
    exact_ctl_loss(target, twist).backward()
    g_exact = twist.table.grad.flatten().clone()
    r = tsmc(lm, twist, phi, [0], 1024, 3, resample=method, ess_threshold=1.0,
             generator=torch.Generator().manual_seed(0))
    assert r.resampled_at == [0, 1]  # the negative populations really are resampled ones
    kw = dict(resample=method, ess_threshold=1.0, positive=positive)
    grads = _ctl_grads(lm, twist, phi, 1024, 3, 48, **kw)
    ok, zmax = _clt_ok(grads, g_exact)
    assert ok, zmax
    rel = float((grads.mean(0) - g_exact).norm() / g_exact.norm())
    assert rel < 0.05, rel
    # the check has power: the O(1/K) self-normalisation bias at K = 2 is detected
    small = _ctl_grads(lm, twist, phi, 2, 3, 48, **kw)
    assert not _clt_ok(small, g_exact)[0]


@pytest.mark.parametrize("eos", [False, True], ids=["no-eos", "eos"])
def test_smc_ctl_gradient_vanishes_in_mean_at_optimal_twist(eos):
    # with psi = psi*, pi_t = sigma_t: the negative and positive phases cancel in expectation
    lm, phi = make_case(7, 3, 3, eos=eos)
    target = enumerate_target(lm, phi, [0], 3)
    star = target.optimal_twist()
    star.table.requires_grad_(True)
    grads = _ctl_grads(lm, star, phi, 256, 3, 48, resample="systematic", ess_threshold=1.0)
    ok, zmax = _clt_ok(grads, torch.zeros_like(grads[0]))
    assert ok, zmax
    # ... while a random twist's mean gradient is far from zero at the same budget
    other = _ctl_grads(lm, random_twist(lm, 4, 0.5), phi, 256, 3, 48, resample="systematic",
                       ess_threshold=1.0)
    assert other.mean(0).norm() > 10 * grads.mean(0).norm()


def _reference_sis_ctl(lm, twist, phi, K, T, generator):
    """The teacher-forced SIS surrogate (slow obvious reference): one SIS run, then the base
    and the twist re-run along the final particles."""
    r = sis(lm, twist, phi, [0], K, T, generator=generator)
    logp, h = teacher_force(lm, [0], r.tokens, r.lengths)
    lpsi = twist.log_psi(h.reshape(-1, h.shape[-1])).reshape(*h.shape[:2], -1)
    mask = torch.arange(r.tokens.shape[1])[None] < r.lengths[:, None]
    cum_before = torch.cumsum(r.step_log_w, 1) - r.step_log_w
    wbar = torch.softmax(cum_before + r.step_log_pi, 0)  # over particles, per step
    neg = torch.where(mask, wbar * torch.logsumexp(logp + lpsi, -1), 0.0).sum()
    chosen = lpsi.gather(2, r.tokens[..., None]).squeeze(2)
    return neg - (r.weights[:, None] * torch.where(mask, chosen, 0.0)).sum()


@pytest.mark.parametrize("eos", [False, True], ids=["no-eos", "eos"])
def test_recorded_sis_negative_equals_teacher_forced_reference(eos):
    lm, phi = make_case(5, 3, 4, eos=eos)
    twist = random_twist(lm, 5, 0.7)
    for seed in range(3):
        grads = []
        for fn in (lambda g: ctl_loss(lm, twist, phi, [0], 32, 4, g, negative="sis"),
                   lambda g: ctl_loss(lm, twist, phi, [0], 32, 4, g, ess_threshold=0.0,
                                      positive="same"),
                   lambda g: _reference_sis_ctl(lm, twist, phi, 32, 4, g)):
            twist.table.grad = None
            fn(torch.Generator().manual_seed(seed)).backward()
            grads.append(twist.table.grad.clone())
        assert torch.allclose(grads[0], grads[2], atol=1e-12)
        assert torch.equal(grads[0], grads[1])


def test_ctl_loss_rejects_unknown_negative_phase():
    lm, phi = make_case(1, 3, 2, eos=False)
    with pytest.raises(ValueError, match="negative must be one of"):
        ctl_loss(lm, random_twist(lm, 0), phi, [0], 4, 2, torch.Generator(), negative="is")
    with pytest.raises(ValueError, match="positive must be one of"):
        ctl_loss(lm, random_twist(lm, 0), phi, [0], 4, 2, torch.Generator(), positive="smc")
    with pytest.raises(ValueError, match="resample must be one of"):
        ctl_loss(lm, random_twist(lm, 0), phi, [0], 4, 2, torch.Generator(), resample="x")

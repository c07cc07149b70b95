"""Contrastive twist learning against the exact gradient of Σ_t KL(σ_t ‖ π_t)."""

import pytest

torch = pytest.importorskip("torch")

from rankkit_ext.tsmc.exact import enumerate_target, exact_ctl_loss  # noqa: E402
from rankkit_ext.tsmc.learning import ctl_loss, train_twist  # noqa: E402
from rankkit_ext.tsmc.sampler import tsmc  # noqa: E402

from ._helpers import make_case, random_twist  # noqa: E402

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

    tw = fresh()
    kl0 = target.kl_sigma_q(tw)
    train_twist(lm, tw, phi, [0], **kw)
    kl1 = target.kl_sigma_q(tw)
    assert kl1 < 0.5 * kl0, (kl0, kl1)
    # interrupted after 20 steps, resumed to 40: identical to the uninterrupted run
    tw2 = fresh()
    train_twist(lm, tw2, phi, [0], **{**kw, "steps": 20}, checkpoint_dir=tmp_path,
                checkpoint_every=10)
    tw3 = fresh()
    res = train_twist(lm, tw3, phi, [0], **kw, checkpoint_dir=tmp_path, checkpoint_every=10)
    assert res.steps_done == 40 and len(res.losses) == 40
    assert torch.allclose(tw3.table, tw.table, atol=1e-12)

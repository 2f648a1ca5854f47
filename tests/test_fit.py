"""theory.fit: each estimator inverts the model it reads, and a noise-free analytic run is
recovered."""

from __future__ import annotations

import numpy as np
import pytest

from nsr_gym.theory.fit import (
    delta_switch_mean,
    experience_of,
    fit_analytic,
    fit_curve_from_summaries,
    fit_eval_samples,
    gamma_from_keep_start,
    kappa_from_revisit,
    kappa_from_truncation_gap,
)
from nsr_gym.theory.model import ExpCurve
from nsr_gym.theory.theorem1 import CyclicSetting, delta_switch

CURVE = ExpCurve(0.96, 0.5, 5.0)


def fresh_phase(curve: ExpCurve, L: int) -> np.ndarray:
    return np.asarray(curve.acc(np.arange(1, L + 1, dtype=float)))


@pytest.mark.parametrize("L", [8, 20, 40])
def test_summaries_identify_the_curve(L):
    acc = fresh_phase(CURVE, L)
    fit = fit_curve_from_summaries([acc[0]] * 3, [acc.mean()] * 3, [acc[-1]] * 3, L)
    assert (fit.a_star, fit.D, fit.tau) == pytest.approx((0.96, 0.5, 5.0), rel=1e-6)
    assert fit.r2 == pytest.approx(1.0)


def test_inverses_of_the_model():
    h = np.array([0.0, 1.0, 7.5, 30.0])
    np.testing.assert_allclose(experience_of(CURVE.acc(h), CURVE), h, atol=1e-9)
    assert experience_of(CURVE.a_star, CURVE) == np.inf
    assert experience_of(0.0, CURVE) == 0.0
    L = 20
    for kappa in (0.3, 0.8, 1.0):
        eps = float(CURVE.acc(L)) - float(CURVE.acc(kappa * L))
        assert kappa_from_truncation_gap(CURVE, eps, L) == pytest.approx(kappa, rel=1e-6)
        revisit = float(CURVE.acc(kappa * L + 1))
        assert kappa_from_revisit(CURVE, revisit, L) == pytest.approx(kappa, rel=1e-6)
    M = 3
    for gamma in (0.0, 0.99, 0.999):
        G = gamma ** ((M - 1) * L)
        got_gamma, got_G = gamma_from_keep_start(CURVE, float(CURVE.acc(G * L + 1)), M, L)
        assert got_G == pytest.approx(G, abs=1e-9) and got_gamma == pytest.approx(gamma, abs=1e-6)


def test_delta_mean_matches_theorem1():
    s = CyclicSetting(4, 12, 5, CURVE, 0.1, 0.7)
    want = np.mean([delta_switch(s, c) for c in range(2, 6)])
    assert delta_switch_mean(CURVE, 12, 5, 0.7) == pytest.approx(want, rel=1e-12)


def test_eval_samples_reads_binomial_noise():
    rng = np.random.default_rng(0)
    p = np.full(20000, 0.8)
    assert fit_eval_samples(rng.binomial(50, p) / 50, p) == pytest.approx(50, rel=0.05)


def test_fit_analytic_recovers_parameters_from_model_curves():
    L, M, kappa, gamma = 25, 5, 0.9, 0.995
    curves = np.tile(fresh_phase(CURVE, L), (6, 1))
    G = gamma ** ((M - 1) * L)
    fit = fit_analytic(
        curves, None, L=L, M=M,
        keep_first_revisit=float(CURVE.acc(G * L + 1)),
        fresh_first=float(CURVE.acc(1.0)),
        eps=float(CURVE.acc(L)) - float(CURVE.acc(kappa * L)),
        bank_first_revisit=float(CURVE.acc(kappa * L + 1)),
    )
    cfg = fit.config()
    assert cfg["a_star"] == pytest.approx(0.96, abs=1e-5)
    assert cfg["D"] == pytest.approx(0.5, abs=1e-5)
    assert cfg["tau"] == pytest.approx(5.0, rel=1e-4)
    assert cfg["kappa"] == pytest.approx(kappa, rel=1e-4)
    assert cfg["gamma"] == pytest.approx(gamma, abs=1e-4)
    assert fit.diagnostics["bank_first_revisit_gap"] == pytest.approx(0.0, abs=1e-6)
    assert fit.estimates["rho"] == pytest.approx(
        (float(CURVE.acc(G * L + 1)) - float(CURVE.acc(1.0))) / (0.96 - float(CURVE.acc(1.0))))
    with pytest.raises(ValueError):
        fit_analytic(None, None, L=L, M=M)


def test_asymptote_above_one_is_capped_and_kappa_source_is_chosen():
    from nsr_gym.theory.estimate import fit_exponential
    from nsr_gym.theory.fit import cap_asymptote

    s = np.arange(1, 21, dtype=float)
    acc = 1.05 - 0.6 * np.exp(-s / 9.0)  # not flattened: the free fit extrapolates a* > 1
    free = fit_exponential(s, acc)
    capped = cap_asymptote(free, s, acc)
    assert free.a_star > 1 and capped.a_star == 1.0 and capped.tau > 0 and capped.r2 > 0.9
    assert cap_asymptote(capped, s, acc) is capped
    L, M = 20, 3
    curves = np.tile(fresh_phase(CURVE, L), (4, 1))
    eps = float(CURVE.acc(L)) - float(CURVE.acc(0.5 * L))
    bank_first = float(CURVE.acc(0.8 * L + 1))
    by_rev = fit_analytic(curves, None, L=L, M=M, eps=eps, bank_first_revisit=bank_first)
    by_eps = fit_analytic(curves, None, L=L, M=M, eps=eps, bank_first_revisit=bank_first,
                          kappa_source="truncation")
    assert by_rev.kappa == pytest.approx(0.8, rel=1e-4)
    assert by_eps.kappa == pytest.approx(0.5, rel=1e-4)
    assert by_rev.estimates["kappa_from_truncation"] == pytest.approx(0.5, rel=1e-4)


def test_within_phase_noise_ignores_run_to_run_offsets():
    from nsr_gym.theory.fit import fit_eval_samples_within

    rng = np.random.default_rng(1)
    L = 30
    mean = fresh_phase(CURVE, L)
    offsets = rng.normal(0, 0.05, size=(4000, 1))  # whole-phase differences, not noise
    p = np.clip(mean + offsets, 0.01, 0.99)
    curves = rng.binomial(80, p) / 80
    assert fit_eval_samples_within(curves, mean) == pytest.approx(80, rel=0.1)


def test_forgetting_and_transfer_are_recovered_from_keep_current_starts():
    from nsr_gym.theory.fit import forgetting_and_transfer, keep_current_starts

    M, L = 5, 30
    for gamma, transfer in ((0.99, 0.03), (0.98, 0.05), (0.95, 0.0)):
        hf, hr = keep_current_starts(gamma, transfer, M, L)
        got = forgetting_and_transfer(CURVE, float(np.mean(CURVE.acc(hf + 1))),
                                      float(np.mean(CURVE.acc(hr + 1))), M, L)
        assert got == pytest.approx((gamma, transfer), abs=2e-3)
    # no first-visit advantage: no transfer, gamma from the revisit alone
    assert forgetting_and_transfer(CURVE, None, float(CURVE.acc(1.0)), M, L) == (0.0, 0.0)


# ------------------------------------------------------------------ negative transfer (fit gap)
ANALYTIC = dict(a_star=0.95, D=0.5, tau=6.0, gamma=0.9, transfer=0.05, kappa=0.8,
                eval_samples=0)


def _env_returns(agent, M, L, C, K=None, eviction="lru", seed=0):
    import gymnasium as gym

    import nsr_gym  # noqa: F401
    from nsr_gym.agents import Oracle, make_agent, rollout

    kw = dict(backend="analytic", tasks="permuted_digits", n_tasks=M, schedule="cyclic",
              phase_length=L, n_cycles=C, lambda_switch=0.05, learner=ANALYTIC,
              eviction=eviction, **({"capacity": K} if K else {}))
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", **kw)
    policy = Oracle(first_visit="keep") if agent == "bank" else make_agent(agent)
    log = rollout(env, policy, seed)
    env.close()
    return log


@pytest.mark.parametrize("K,eviction,rule", [(None, "lru", "pin"), (2, "reject", "pin"),
                                             (2, "lru", "lru"), (3, "fifo", "fifo")])
def test_transfer_model_without_its_terms_is_the_analytic_env(K, eviction, rule):
    from nsr_gym.theory.negative_transfer import TransferModel, simulate_agent

    model = TransferModel(0.95, 0.5, 6.0, 0.9, 0.05, 0.8, 0.8)
    M, L, C = 4, 5, 3
    for agent in ("bank", "always-fresh", "keep-current", "fixed-slot", "similarity"):
        log = _env_returns(agent, M, L, C, K, eviction)
        per_cycle = log.groupby(log["t"] // (M * L))["reward"].sum().to_numpy()
        np.testing.assert_allclose(simulate_agent(model, agent, M, L, C, 0.05, K, rule),
                                   per_cycle, rtol=0, atol=1e-9, err_msg=agent)


def test_replay_of_logged_actions_is_the_analytic_env_and_the_slow_down_is_recovered():
    from dataclasses import replace

    from nsr_gym.theory.negative_transfer import TransferModel, fit_negative_transfer, replay

    M, L, C = 4, 6, 4
    model = TransferModel(0.95, 0.5, 6.0, 0.9, 0.05, 0.8, 0.8)
    logs = [_env_returns("random-slot", M, L, C, seed=s) for s in range(3)]
    actions = np.stack([lg["action"].to_numpy()[::L] for lg in logs])
    schedule = np.arange(M * C) % M
    acc = replay(model, actions, schedule, L)
    np.testing.assert_allclose(acc.reshape(3, -1), np.stack([lg["accuracy"] for lg in logs]),
                               rtol=0, atol=1e-12)
    truth = replace(model, kappa_other=0.95, beta=0.3, c=2.0)
    returns = replay(truth, actions, schedule, L).sum(axis=2)
    fitted, diag = fit_negative_transfer(replace(model, kappa_other=0.95),
                                         {"random-slot": {"actions": actions,
                                                          "returns": returns}}, schedule, M, L)
    assert diag["rmse_after"] < 1e-6 < diag["rmse_before"]
    np.testing.assert_allclose(replay(fitted, actions, schedule, L).sum(axis=2), returns,
                               atol=1e-5)

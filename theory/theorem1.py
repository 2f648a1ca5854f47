"""Theorem 1 (memoryless policies pay ``Delta_switch`` per missed revisit) and Theorem 2, exactly.

## Setting (theory/THEORY.md)
``M >= 2`` tasks in a fixed cycle, phase length ``L``, ``C`` cycles; phase ``p`` serves task
``m_p = p mod M``, in cycle ``c = p // M + 1``. Cycle 1 holds the first visits, cycles ``2..C`` the
revisits. Env semantics, one step: apply the action (KEEP; FRESH: ``h = 0``; LOAD_k: ``h`` = slot
``k``'s stored vector), pay ``lam`` for any non-KEEP action, do one update on the current task
(``h_m += 1``, every other ``h_j *= gamma``), then reward ``= g(h_m) - lam * switched``. At each
phase end the env stores ``kappa * h`` under the true task id (in place when present, else in the
next free slot, so slot ``k`` holds task ``k`` on a strict cycle). The episode starts with
``h = 0`` and an empty bank. Capacity ``K >= M`` (see ``theory.capacity`` for ``K < M``).

## The comparator B (Bank oracle)
KEEP at first visits; LOAD its own task's entry at the first step of every revisit; KEEP
otherwise. Its visit ``c`` of any task starts from ``H_c`` (``theory.model.bank_experience``), so
its reward over the episode is ``M C L a* - M sum_c Phi(H_c) - lam M (C - 1)``, for any
``gamma`` (its entries' own-task component never meets another task's update).

## Interpretations of the abstract (stated plainly: the full paper is not available)
* The abstract's ``T`` in ``Omega(T (M - 1) Delta_switch)`` is read as the number of cycles; the
  bound counts the ``C - 1`` revisit cycles, since nobody can beat B on first visits.
* ``M - 1`` is read as: a choice blind to the task hits the right slot for at most one task per
  cycle in expectation (its slot probabilities sum to at most 1), so at least ``M - 1`` tasks
  per cycle miss their entry and pay ``Delta_switch - lam``.
* ``Delta_switch`` is read as the extra deficit of one revisit that cannot restore its entry,
  ``Delta_c = Phi(0) - Phi(H_c)``; its minimum ``Delta_2 = Phi(0) - Phi(kappa L)`` is
  theory/THEORY.md's ``Phi(h_bar) - Phi(kappa (h_bar + L))`` at ``h_bar = 0``. With a
  compressing bank (``kappa < 1``) it grows with ``c`` toward ``delta_switch_asymptotic``; the
  exact bounds use the per-cycle values, the simplified ones ``Delta_2``.

## Theorem 1' (A1-A3, complete forgetting ``gamma = 0``, ``K >= M``, ``Delta >= lam``)
With ``x_c = Delta_c - lam`` (tasks share one curve, so ``Delta_{m,c} = Delta_c``):

* M1 (blind: at phase starts only, one fixed action distribution):
  ``R >= sum_{c=2..C} [sum_m x_c - max_m x_c] = (M - 1) sum_c x_c >= (C - 1)(M - 1) x_2``.
* M0 (never LOADs): ``R >= sum_{c=2..C} M x_c >= (C - 1) M x_2``.

*Proof sketch.* (i) Under ``gamma = 0`` a stored vector of task ``j`` is zero off ``j`` (the
phase trained only ``j`` after any reset or load), so LOADing another task's entry, FRESH, or
KEEP across a task change all start the phase at ``h_m = 0``; by induction on ``c`` task ``m``'s
own entry never exceeds ``H_c`` (one phase adds at most ``L``; the store multiplies by
``kappa``). (ii) Hence in cycle 1 every policy has deficit ``>= Phi(0)`` per phase, which B meets
with no switch: regret ``>= 0``. (iii) In a revisit, a policy that does not restore ``m``'s entry
at the phase start (M0 and M1 act at phase starts only) has deficit ``>= Phi(0)`` and switch
cost ``>= 0`` against B's ``Phi(H_c) + lam``: regret ``>= x_c``; one that does restores at most
``H_c`` and pays ``lam``: regret ``>= 0``.
(iv) M0 never restores: ``M x_c`` per cycle. An M1 policy restores task ``m`` with probability
``p_{slot(m)}`` and ``sum_m p_{slot(m)} <= 1``, so the expected regret per cycle is ``>=
sum_m (1 - p_m) x_c >= sum_m x_c - max(0, max_m x_c)``. With ``x_c < 0`` (``lam > Delta``) the
``max(0, .)`` keeps the bound valid; ``lower_bound_m1`` uses it, and the simplified bound then
falls back to ``M x_min`` per cycle.

## Tight cases (exact, ``gamma = 0``; ``S = sum_{c>=2} Delta_c``)
Derived from the semantics above and checked to 1e-9 by ``theory.simulate``:

* always-fresh (FRESH at every phase start except the very first, where ``h`` is already 0;
  that choice is what gives theory/THEORY.md's ``lam (M - 1)``): ``M S + lam (M - 1)``.
* keep-current: ``M S - lam (C - 1) M``, equal to the M0 bound.
* fixed-slot (LOAD slot 0 at every phase start once it is occupied): ``(M - 1) S + lam (M - 1)``;
  equal to the M1 bound at ``lam = 0``. Task 0 follows B's trajectory exactly (its entry is only
  ever rewritten by task 0), which is why this holds for every ``kappa`` and every ``gamma``.
* Bank: 0.

These match theory/THEORY.md for every ``kappa`` (no correction needed). For ``gamma > 0``
always-fresh, fixed-slot and B are unchanged; keep-current then starts revisit ``c`` from
``G x_{c-1}``, ``G = gamma^{(M-1) L}``, ``x_1 = L``, ``x_c = G x_{c-1} + L``, and
``regret_keep_current`` implements that exact recursion (theory/THEORY.md's formula is its
``gamma = 0`` case).

## What breaks it
* ``lam >= Delta``: the bounds turn negative and keep-current beats the Bank; the honest
  constant is ``Delta - lam`` (``lower_bound_m0`` stays exact for keep-current).
* Incomplete forgetting (``gamma > 0``): keep-current keeps ``rho = 1 - q^{G x}`` of the task
  (``theory.estimate.forgetting_ratio``); the bounds refuse ``gamma != 0``. Per-task heads
  are memory too: this model has none, so a baseline that keeps one head per task on the torch
  backend is not bank-free in the theorem's sense.
* Capacity ``K < M``: see ``theory.capacity`` (LRU/FIFO/LFU never hit on a strict cycle).
* Compression: ``kappa < 1`` lowers ``H_c`` and so ``Delta_c``; every formula here keeps it.
* A controller that needs ``d`` extra steps to find its entry (``theory.simulate``'s feedback
  search) pays about ``d (D q + lam)`` per revisit against a saving of about ``D tau``.

## Theorem 2 (the Bank pays first visits only)
Against a prescient comparator at ``a*`` every step, B's *accuracy* regret is
``sum_m sum_c Phi(H_c)``; for ``kappa = 1``, ``Phi(H_c) = Phi(0) q^{(c-1)L}`` and the sum is at
most ``M Phi(0) / (1 - q^L)`` whatever ``C``; for ``kappa < 1`` it grows by ``M Phi(kappa L /
(1 - kappa))`` per cycle. B's switching cost ``lam M (C - 1)`` is *not* in theory/THEORY.md's
formula; ``bank_regret_vs_prescient(include_switch_cost=True)`` adds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from nsr_gym.theory.capacity import hits_per_cycle, simulate_hits
from nsr_gym.theory.model import ExpCurve, bank_experience, phase_deficit
from nsr_gym.theory.simulate import simulate_cyclic, simulated_regret_per_cycle, trace_cyclic

__all__ = [
    "CLOSED_FORM_POLICIES",
    "CyclicSetting",
    "LowerBound",
    "bank_experiences",
    "bank_regret_bound_kappa1",
    "bank_regret_slope",
    "bank_regret_vs_prescient",
    "delta_switch",
    "delta_switch_asymptotic",
    "delta_switch_min",
    "hits_per_cycle",
    "lower_bound_m0",
    "lower_bound_m1",
    "regret_always_fresh",
    "regret_bank",
    "regret_fixed_slot",
    "regret_keep_current",
    "regret_per_cycle",
    "regret_random_slot",
    "simulate_cyclic",
    "simulate_hits",
    "simulated_regret_per_cycle",
    "trace_cyclic",
]


@dataclass(frozen=True)
class CyclicSetting:
    """A strict cyclic schedule with the analytic learner (all tasks share one curve).

    Attributes:
        M: Number of tasks, ``>= 2``.
        L: Phase length in steps (one update per step), ``>= 1``.
        C: Number of cycles, ``>= 1``; cycle 1 holds the first visits.
        curve: Experience curve shared by all tasks (A1).
        lam: Switching cost per non-KEEP action, ``>= 0``.
        kappa: Compression factor of stored entries (A3), in ``(0, 1]``.
        gamma: Forgetting factor per update on another task (A2); 0 is complete forgetting.
    """

    M: int
    L: int
    C: int
    curve: ExpCurve
    lam: float
    kappa: float = 1.0
    gamma: float = 0.0

    def __post_init__(self) -> None:
        if self.M < 2 or self.L < 1 or self.C < 1:
            raise ValueError(f"need M >= 2, L >= 1, C >= 1; got M={self.M}, L={self.L}, C={self.C}")
        if not 0.0 < self.kappa <= 1.0:
            raise ValueError(f"kappa must be in (0, 1], got {self.kappa}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")

    @property
    def n_steps(self) -> int:
        """Episode length ``M L C``."""
        return self.M * self.L * self.C

    def phi(self, H: float | np.ndarray) -> float | np.ndarray:
        """``Phi(H)`` for this setting's ``L`` and curve."""
        return phase_deficit(H, self.L, self.curve)


class LowerBound(NamedTuple):
    """A Theorem 1' lower bound on regret against B."""

    exact: float
    """The per-cycle sum, ``sum_{c>=2} [...]``: the tighter number."""
    simplified: float
    """The ``(C - 1) x (Delta_min - lam)`` form, which is ``<= exact``."""


CLOSED_FORM_POLICIES = ("bank", "always_fresh", "keep_current", "fixed_slot", "random_slot")
"""Policies with an exact closed-form (expected) regret in ``regret_per_cycle``."""


def _require_complete_forgetting(setting: CyclicSetting, what: str) -> None:
    # Under gamma > 0 another task's entry carries a decayed copy of h_m, so step (i) of the
    # proof fails; refusing is better than returning a number that is not a bound.
    if setting.gamma != 0.0:
        raise ValueError(
            f"{what} assumes complete forgetting (gamma = 0), got gamma={setting.gamma}"
        )


# --------------------------------------------------------------------------- Delta_switch


def bank_experiences(setting: CyclicSetting) -> np.ndarray:
    """``H_1..H_C``: the experience B restores at each visit (index 0 is cycle 1)."""
    return np.array([bank_experience(c, setting.L, setting.kappa) for c in range(1, setting.C + 1)])


def delta_switch(setting: CyclicSetting, c: int, h_bar: float = 0.0) -> float:
    """``Delta_{m,c} = Phi(h_bar) - Phi(H_c)``: the deficit a revisit pays for missing its entry.

    Args:
        setting: The cyclic setting.
        c: Cycle, 1-based (``c = 1`` gives ``Phi(h_bar) - Phi(0)``, 0 under complete forgetting).
        h_bar: The A2 forgetting bound; 0 is complete forgetting (theory/THEORY.md's case).
    """
    H_c = bank_experience(c, setting.L, setting.kappa)
    return float(setting.phi(h_bar) - setting.phi(H_c))


def delta_switch_min(setting: CyclicSetting, h_bar: float = 0.0) -> float:
    """``Delta_min = min_{c>=2} Delta_c = Phi(h_bar) - Phi(kappa L)``, the ``Delta_switch``.

    This is the ``Delta_switch`` of theory/THEORY.md. ``H_c`` is nondecreasing in ``c``, so
    ``Delta_c`` is too and the minimum over revisits is at ``c = 2``. theory/THEORY.md writes
    ``Phi(h_bar) - Phi(kappa (h_bar + L))``; the two agree at ``h_bar = 0``, the only case the
    theorem covers. For ``h_bar > 0`` this function follows B's actual trajectory, whose first
    visit starts from 0 whatever the forgetting (a task never trained has no experience to
    forget), so it stores ``kappa L``, not ``kappa (h_bar + L)``.
    """
    return delta_switch(setting, 2, h_bar)


def delta_switch_asymptotic(setting: CyclicSetting, h_bar: float = 0.0) -> float:
    """``lim_{c -> inf} Delta_c = Phi(h_bar) - Phi(kappa L / (1 - kappa))``.

    At ``kappa = 1`` the Bank's experience grows without bound and the limit is ``Phi(h_bar)``.

    For ``L >> tau`` and ``h_bar = 0`` this is about ``D q / (1 - q) ~ D tau``
    (``ExpCurve.area``): the area between the learning curve and its asymptote.
    """
    if setting.kappa == 1.0:
        return float(setting.phi(h_bar))
    H_inf = setting.kappa * setting.L / (1.0 - setting.kappa)
    return float(setting.phi(h_bar) - setting.phi(H_inf))


def _deltas(setting: CyclicSetting) -> np.ndarray:
    """``Delta_c`` for ``c = 2..C`` under complete forgetting."""
    H = bank_experiences(setting)[1:]
    return np.asarray(setting.phi(0.0) - setting.phi(H), dtype=np.float64)


# --------------------------------------------------------------------------- Theorem 1' bounds


def lower_bound_m1(setting: CyclicSetting) -> LowerBound:
    """Theorem 1' for blind (M1) policies: ``sum_{c>=2} [sum_m x_c - max(0, max_m x_c)]``.

    ``x_c = Delta_c - lam``. Identical tasks make the bracket ``(M - 1) x_c`` when ``x_c >= 0``.
    The simplified form is ``(C - 1)(M - 1)(Delta_min - lam)``; when ``lam > Delta_min`` it is
    replaced by ``(C - 1) M (Delta_min - lam)`` so that it stays below ``exact`` (see the module
    docstring's proof, step iv).

    Raises:
        ValueError: if ``gamma != 0`` (the proof needs complete forgetting).
    """
    _require_complete_forgetting(setting, "lower_bound_m1")
    M, C = setting.M, setting.C
    x = _deltas(setting) - setting.lam
    exact = float(np.sum(M * x - np.maximum(0.0, x)))
    x_min = delta_switch_min(setting) - setting.lam
    per_cycle = (M - 1) * x_min if x_min >= 0 else M * x_min
    return LowerBound(exact=exact, simplified=float((C - 1) * per_cycle))


def lower_bound_m0(setting: CyclicSetting) -> LowerBound:
    """Theorem 1' for bank-free (M0) policies: ``sum_{c>=2} M x_c >= (C - 1) M (Delta_min - lam)``.

    Valid for any sign of ``x_c`` (an M0 policy never restores an entry); with ``lam > Delta``
    it is negative: keep-current then beats the Bank.

    Raises:
        ValueError: if ``gamma != 0``.
    """
    _require_complete_forgetting(setting, "lower_bound_m0")
    M, C = setting.M, setting.C
    x = _deltas(setting) - setting.lam
    exact = float(M * np.sum(x))
    simplified = float((C - 1) * M * (delta_switch_min(setting) - setting.lam))
    return LowerBound(exact=exact, simplified=simplified)


# --------------------------------------------------------------------------- Theorem 2


def bank_regret_vs_prescient(setting: CyclicSetting, include_switch_cost: bool = False) -> float:
    """Theorem 2: B against a comparator at ``a*`` every step, ``M sum_{c=1..C} Phi(H_c)``.

    Args:
        setting: The cyclic setting (any ``gamma``: B's trajectory does not depend on it).
        include_switch_cost: Add B's ``lam M (C - 1)`` LOAD costs, which theory/THEORY.md's accuracy
            form leaves out (a prescient comparator is taken to switch for free).
    """
    total = float(setting.M * np.sum(setting.phi(bank_experiences(setting))))
    if include_switch_cost:
        total += setting.lam * setting.M * (setting.C - 1)
    return total


def bank_regret_bound_kappa1(setting: CyclicSetting) -> float:
    """``M Phi(0) / (1 - q^L)``: Theorem 2's ``C``-free bound (valid when ``kappa = 1``).

    Proof: ``H_c = (c - 1) L``, so
    ``sum_c Phi(H_c) = Phi(0) sum_c q^{(c-1)L} <= Phi(0) / (1 - q^L)``.
    """
    q_L = setting.curve.q**setting.L
    return float(setting.M * setting.phi(0.0) / (1.0 - q_L))


def bank_regret_slope(setting: CyclicSetting) -> float:
    """Per-cycle growth of Theorem 2's regret as ``C -> inf``: ``M Phi(kappa L / (1 - kappa))``.

    0 at ``kappa = 1`` (the regret is bounded, ``bank_regret_bound_kappa1``).
    """
    if setting.kappa == 1.0:
        return 0.0
    return float(setting.M * setting.phi(setting.kappa * setting.L / (1.0 - setting.kappa)))


# --------------------------------------------------------------------------- regrets vs B


def regret_per_cycle(setting: CyclicSetting, policy: str) -> np.ndarray:
    """Exact (expected, for ``random_slot``) regret against B in each cycle; shape ``(C,)``.

    Per cycle, with ``Delta_c = Phi(0) - Phi(H_c)`` (cycle 1 first, where ``Delta_1 = 0``):

    * ``bank``: 0.
    * ``always_fresh``: cycle 1 ``lam (M - 1)`` (FRESH at phases ``1..M-1``, B KEEPs), then
      ``M Delta_c`` (both pay ``lam M``).
    * ``keep_current``: cycle 1 0, then ``M (Phi(G x_{c-1}) - Phi(H_c)) - lam M``; with
      ``gamma = 0`` that is ``M Delta_c - lam M``.
    * ``fixed_slot``: cycle 1 ``lam (M - 1)``, then ``(M - 1) Delta_c``.
    * ``random_slot`` (LOAD a uniform occupied slot at every phase start once one exists;
      ``gamma = 0`` only): cycle 1 ``lam (M - 1)``, then ``M [(1 - 1/M) Phi(0) + (1/M)
      E Phi(E_c)] - M Phi(H_c)``, where the entry's experience ``E_c = H_{j+2}`` after ``j``
      consecutive hits, ``P(j) = p^j (1 - p)`` for ``j < c - 2`` and ``p^{c-2}`` for ``j = c - 2``,
      ``p = 1 / M`` (a miss trains from 0 and stores ``kappa L = H_2``).

    Args:
        setting: The cyclic setting.
        policy: One of ``CLOSED_FORM_POLICIES``.
    """
    M, C, lam = setting.M, setting.C, setting.lam
    phi = setting.phi
    H = bank_experiences(setting)
    phi_b = np.asarray(phi(H), dtype=np.float64)  # B's deficit per task at each cycle
    out = np.zeros(C)
    if policy == "bank":
        return out
    if policy == "always_fresh":
        out[0] = lam * (M - 1)
        out[1:] = M * (phi(0.0) - phi_b[1:])
    elif policy == "keep_current":
        G = setting.gamma ** ((M - 1) * setting.L)
        x_end = float(setting.L)  # the task's experience at the end of its first visit
        for c in range(2, C + 1):
            start = G * x_end
            out[c - 1] = M * (phi(start) - phi_b[c - 1]) - lam * M
            x_end = start + setting.L
    elif policy == "fixed_slot":
        out[0] = lam * (M - 1)
        out[1:] = (M - 1) * (phi(0.0) - phi_b[1:])
    elif policy == "random_slot":
        _require_complete_forgetting(setting, "the random_slot closed form")
        p = 1.0 / M
        out[0] = lam * (M - 1)
        for c in range(2, C + 1):
            j = np.arange(c - 1)  # consecutive hits before cycle c: 0..c-2
            prob = p**j * (1.0 - p)
            prob[-1] = p ** (c - 2)
            e_phi = float(np.sum(prob * phi_b[j + 1]))  # E_c = H_{j+2}, stored at index j+1
            out[c - 1] = M * ((1.0 - p) * phi(0.0) + p * e_phi) - M * phi_b[c - 1]
    else:
        raise ValueError(f"no closed form for policy {policy!r}; known: {CLOSED_FORM_POLICIES}")
    return out


def regret_always_fresh(setting: CyclicSetting) -> float:
    """Always-fresh against B: ``M S + lam (M - 1)``."""
    return float(np.sum(regret_per_cycle(setting, "always_fresh")))


def regret_keep_current(setting: CyclicSetting) -> float:
    """Keep-current against B: ``M S - lam (C - 1) M`` at ``gamma = 0``; the recursion otherwise."""
    return float(np.sum(regret_per_cycle(setting, "keep_current")))


def regret_fixed_slot(setting: CyclicSetting) -> float:
    """Fixed-slot (slot 0) against B: ``(M - 1) S + lam (M - 1)``."""
    return float(np.sum(regret_per_cycle(setting, "fixed_slot")))


def regret_random_slot(setting: CyclicSetting) -> float:
    """Random-slot against B, in expectation (``gamma = 0``)."""
    return float(np.sum(regret_per_cycle(setting, "random_slot")))


def regret_bank(setting: CyclicSetting) -> float:
    """B against itself: 0 (kept so that every policy has a closed form to test against)."""
    return 0.0

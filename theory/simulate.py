"""A tiny pure-numpy reference simulator of the cyclic env, to check the closed forms against.

It implements exactly the semantics that ``theory.theorem1`` derives its formulas from, and
nothing else (no noise, no embeddings, no heads):

1. the policy picks an action: ``KEEP = 0``, ``FRESH = 1``, ``LOAD_k = 2 + k``;
2. FRESH sets ``h = 0``; LOAD_k copies slot ``k``'s stored vector into ``h``; any non-KEEP action
   costs ``lam``;
3. one update on the current task ``m``: ``h_m += 1``, every other ``h_j *= gamma``;
4. reward ``= g(h_m) - lam * switched``;
5. at the phase end, store ``kappa * h`` under the true task id: in place when the task has an
   entry, else in the next free slot (capacity ``>= M``: nothing is evicted).

The episode starts with ``h = 0`` and an empty bank. A policy is any callable from a
``StepContext`` to an action; ``make_policy`` builds the ones Theorem 1 talks about, including
two that are *not* memoryless (round-robin over slots and feedback search), which the tests pin
below the M1 bound.

Kept independent of ``theory.theorem1`` at run time (the setting is only a type hint) so that
``theorem1`` can re-export the simulator without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from nsr_gym.theory.theorem1 import CyclicSetting

__all__ = [
    "FRESH",
    "KEEP",
    "POLICY_NAMES",
    "CyclicTrace",
    "Policy",
    "StepContext",
    "load",
    "make_policy",
    "simulate_cyclic",
    "simulated_regret_per_cycle",
    "trace_cyclic",
]

KEEP = 0
FRESH = 1


def load(k: int) -> int:
    """The action that LOADs slot ``k``."""
    return 2 + k


@dataclass(frozen=True)
class StepContext:
    """What a policy may look at before a step.

    Blind (M1) and bank-free (M0) policies read only ``step`` (are we at a phase start: the env's
    task-shift signal) and ``n_occupied`` (the action mask, so as not to LOAD an empty slot; on a
    strict cycle it is constant, ``M``, in every revisit cycle, so it carries no task
    information where the theorem counts). ``phase`` is a counter: reading it makes a policy
    history-aware. ``task`` and ``slot_tasks`` are the oracle's view only.
    """

    phase: int
    """Phase index ``p``, 0-based."""
    step: int
    """Step within the phase, 0-based (0 is the phase start)."""
    task: int
    """True task id (oracle only)."""
    slot_tasks: tuple[int, ...]
    """Task id stored in each occupied slot, in slot order (oracle only)."""
    n_slots: int
    """Bank capacity ``K``."""
    last_acc: float
    """Accuracy after the previous step (``nan`` before the first step)."""
    rng: np.random.Generator
    """The simulation's random generator, for randomized policies."""

    @property
    def n_occupied(self) -> int:
        """Number of occupied slots; they are slots ``0..n_occupied-1``."""
        return len(self.slot_tasks)


Policy = Callable[[StepContext], int]
"""A policy: context in, action out."""


@dataclass(frozen=True)
class CyclicTrace:
    """Per-step record of one simulated episode, all arrays of length ``M L C``."""

    rewards: np.ndarray
    acc: np.ndarray
    switched: np.ndarray
    task: np.ndarray
    phase: np.ndarray
    cycle: np.ndarray
    """1-based cycle of each step."""


# --------------------------------------------------------------------------- policies


def _bank_oracle(ctx: StepContext) -> int:
    if ctx.step == 0 and ctx.task in ctx.slot_tasks:
        return load(ctx.slot_tasks.index(ctx.task))
    return KEEP


def _always_fresh(ctx: StepContext) -> int:
    # In the very first phase h is already 0; FRESH there would only pay lam. theory/THEORY.md's
    # lam (M - 1) for cycle 1 confirms this convention.
    return FRESH if ctx.step == 0 and ctx.phase > 0 else KEEP


def _keep_current(ctx: StepContext) -> int:
    return KEEP


def _fixed_slot(ctx: StepContext) -> int:
    return load(0) if ctx.step == 0 and ctx.n_occupied > 0 else KEEP


def _random_slot(ctx: StepContext) -> int:
    if ctx.step == 0 and ctx.n_occupied > 0:
        return load(int(ctx.rng.integers(ctx.n_occupied)))
    return KEEP


def _round_robin(ctx: StepContext) -> int:
    # A phase counter: on a strict cycle with K = M it LOADs exactly B's slot. Not memoryless.
    if ctx.step == 0:
        k = ctx.phase % ctx.n_slots
        return load(k) if k < ctx.n_occupied else KEEP
    return KEEP


def _feedback_search(threshold: float) -> Policy:
    """Try slot 0, 1, ... one step each until the accuracy reaches ``threshold``.

    It reads observations within the phase, so it is not memoryless. Stateless given the
    context: at step ``s`` it has tried slots ``0..s-1`` iff every one failed, and once it
    succeeds the accuracy never drops again under KEEP.
    """

    def policy(ctx: StepContext) -> int:
        s = ctx.step
        if s >= ctx.n_occupied:
            return KEEP
        if s == 0 or ctx.last_acc < threshold:
            return load(s)
        return KEEP

    return policy


POLICY_NAMES = (
    "bank",
    "always_fresh",
    "keep_current",
    "fixed_slot",
    "random_slot",
    "round_robin",
    "feedback_search",
)


def make_policy(name: str, setting: CyclicSetting) -> Policy:
    """Build a named policy for ``setting``.

    ``feedback_search``'s threshold is halfway between ``g(1)`` (what a step from zero
    experience scores) and ``g(2)``: a right entry with ``H_c >= 1`` clears it, a wrong one
    does not.
    """
    simple: dict[str, Policy] = {
        "bank": _bank_oracle,
        "always_fresh": _always_fresh,
        "keep_current": _keep_current,
        "fixed_slot": _fixed_slot,
        "random_slot": _random_slot,
        "round_robin": _round_robin,
    }
    if name in simple:
        return simple[name]
    if name == "feedback_search":
        g = setting.curve.acc
        return _feedback_search(0.5 * (float(g(1.0)) + float(g(2.0))))
    raise ValueError(f"unknown policy {name!r}; known: {POLICY_NAMES}")


# --------------------------------------------------------------------------- the simulator


def trace_cyclic(
    setting: CyclicSetting,
    policy: str | Policy,
    rng: np.random.Generator | int | None = None,
    n_slots: int | None = None,
) -> CyclicTrace:
    """Run one episode of the strict cycle and record every step.

    Args:
        setting: The cyclic setting (``M, L, C``, curve, ``lam``, ``kappa``, ``gamma``).
        policy: A name from ``POLICY_NAMES`` or a callable.
        rng: Generator or seed for randomized policies.
        n_slots: Bank capacity ``K >= M`` (default ``M``); only round-robin reads it.

    Raises:
        ValueError: if the policy LOADs an empty slot or returns an unknown action.
    """
    M, L, C = setting.M, setting.L, setting.C
    K = M if n_slots is None else n_slots
    if K < M:
        raise ValueError("the reference simulator assumes capacity K >= M (no eviction)")
    pol = make_policy(policy, setting) if isinstance(policy, str) else policy
    gen = np.random.default_rng(rng)
    T = M * L * C
    rewards, acc, switched = np.zeros(T), np.zeros(T), np.zeros(T, dtype=bool)
    h = np.zeros(M)
    slots: list[np.ndarray] = []
    slot_tasks: list[int] = []
    last_acc = float("nan")
    t = 0
    for p in range(M * C):
        m = p % M
        for s in range(L):
            ctx = StepContext(p, s, m, tuple(slot_tasks), K, last_acc, gen)
            a = int(pol(ctx))
            if a == FRESH:
                h = np.zeros(M)
            elif a >= 2:
                if a - 2 >= len(slots):
                    raise ValueError(f"policy loaded empty slot {a - 2} at phase {p}, step {s}")
                h = slots[a - 2].copy()
            elif a != KEEP:
                raise ValueError(f"unknown action {a}")
            own = h[m]
            h *= setting.gamma
            h[m] = own + 1.0
            last_acc = float(setting.curve.acc(h[m]))
            switched[t] = a != KEEP
            acc[t] = last_acc
            rewards[t] = last_acc - setting.lam * switched[t]
            t += 1
        stored = setting.kappa * h
        if m in slot_tasks:
            slots[slot_tasks.index(m)] = stored
        else:
            slots.append(stored)
            slot_tasks.append(m)
    idx = np.arange(T)
    phase = idx // L
    return CyclicTrace(rewards, acc, switched, phase % M, phase, phase // M + 1)


def simulate_cyclic(
    setting: CyclicSetting, policy: str | Policy, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Per-step rewards (length ``M L C``) of one simulated episode; see ``trace_cyclic``."""
    return trace_cyclic(setting, policy, rng).rewards


def simulated_regret_per_cycle(
    setting: CyclicSetting, policy: str | Policy, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Regret against B in each cycle, ``(C,)``, from one simulated episode of each."""
    steps = setting.M * setting.L
    ref = simulate_cyclic(setting, "bank").reshape(setting.C, steps).sum(axis=1)
    got = simulate_cyclic(setting, policy, rng).reshape(setting.C, steps).sum(axis=1)
    return ref - got

"""Rule agents: SB3's predict signature and the behaviour each class promises."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from nsr_gym import FRESH, KEEP, LOAD_OFFSET
from nsr_gym.agents import RULE_AGENTS, make_policy, rollout

ENV = "nsr_gym/CyclicSplitDigits-v0"


def _obs(K=3, sims=(0.0, 0.0, 0.0), occupied=(0, 0, 0), active=0, shift=0.0):
    act = np.zeros(K + 1, np.float32)
    act[active] = 1
    return {"similarity": np.array(sims, np.float32), "occupied": np.array(occupied, np.float32),
            "age": np.zeros(K, np.float32), "usage": np.zeros(K, np.float32), "active": act,
            "last_accuracy": np.zeros(1, np.float32), "task_shift": np.array([shift], np.float32)}


def test_predict_signature_like_sb3():
    for name in RULE_AGENTS:
        action, state = make_policy(name).predict(_obs(), state=None, episode_start=np.ones(1),
                                                  deterministic=True)
        assert np.asarray(action).dtype == np.int64 and state is None


def test_similarity_rule():
    p = make_policy("similarity")
    assert p.act(_obs(sims=(0.1, 0.9, 0.2), occupied=(1, 1, 1), shift=0.5)) == LOAD_OFFSET + 1
    assert p.act(_obs(sims=(0.1, 0.9, 0.2), occupied=(1, 1, 1), active=2)) == KEEP  # already active
    assert p.act(_obs(sims=(0.1, 0.9, 0.2), occupied=(1, 0, 1), shift=0.5)) == FRESH  # slot 1 empty
    assert p.act(_obs(sims=(0.1, 0.2, 0.2), occupied=(1, 1, 1), shift=0.0)) == KEEP


def test_memoryless_agents():
    shift = _obs(occupied=(1, 1, 0), shift=0.5)
    steady = _obs(occupied=(1, 1, 0))
    assert make_policy("keep-current").act(shift) == KEEP
    assert (make_policy("always-fresh").act(shift) == FRESH
            and make_policy("always-fresh").act(steady) == KEEP)
    assert (make_policy("fixed-slot").act(shift) == LOAD_OFFSET
            and make_policy("fixed-slot").act(steady) == KEEP)
    rs = make_policy("random-slot")
    rs.reset(0)
    draws = {rs.act(shift) for _ in range(50)}
    assert draws == {LOAD_OFFSET, LOAD_OFFSET + 1}  # only occupied slots, both drawn


def test_unknown_agent():
    with pytest.raises(ValueError, match="unknown agent"):
        make_policy("ppo-magic")


def test_similarity_threshold_is_the_banks():
    from nsr_gym.agents import AdaptiveSimilarityRule, SimilarityRule
    from nsr_gym.bank import SIMILARITY_THRESHOLD

    assert SimilarityRule().threshold == AdaptiveSimilarityRule().threshold == SIMILARITY_THRESHOLD
    assert make_policy("similarity", threshold=0.8).threshold == 0.8


def test_rollout_before_step_hook_sees_each_decision_and_changes_nothing():
    env = gym.make(ENV, backend="analytic", phase_length=3, n_cycles=2, privileged_info=True)
    plain = rollout(env, make_policy("similarity"), seed=1)
    seen = []
    hooked = rollout(env, make_policy("similarity"), seed=1,
                     before_step=lambda obs, info, action: seen.append(
                         (int(info["next_task_id"]), action, float(obs["task_shift"][0]))))
    assert hooked.equals(plain)
    assert [a for _, a, _ in seen] == plain["action"].tolist()
    assert [t for t, _, _ in seen] == plain["task_id"].tolist()  # the step about to run


@pytest.mark.parametrize("backend", ["torch", "analytic"])
def test_similarity_matches_oracle_and_beats_memoryless(backend):
    env = gym.make(ENV, backend=backend, phase_length=10, n_cycles=3)
    logs = {name: rollout(env, make_policy(name), seed=0) for name in
            ("similarity", "oracle", "keep-current", "always-fresh")}
    ret = {k: v["reward"].sum() for k, v in logs.items()}
    assert ret["similarity"] >= 0.98 * ret["oracle"]
    assert ret["similarity"] > ret["keep-current"] and ret["similarity"] > ret["always-fresh"]
    rev = logs["similarity"].query("is_revisit == 1 and step_in_phase == 0")
    assert (rev["action"] >= LOAD_OFFSET).all()  # every return loads an entry


def _random_cosines(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    keys = rng.normal(size=(n, d))
    query = rng.normal(size=d)
    return (keys @ query) / np.linalg.norm(keys, axis=1) / np.linalg.norm(query)


def test_adaptive_similarity_threshold_grows_with_the_bank():
    from nsr_gym.agents import AdaptiveSimilarityRule, SimilarityRule

    rng = np.random.default_rng(0)
    adaptive, fixed = AdaptiveSimilarityRule(), SimilarityRule()
    # too few rivals: the fixed rule, exactly
    few = np.array([0.9, 0.1, 0.2], np.float32)
    assert adaptive.novelty_threshold(few) == fixed.novelty_threshold(few) == 0.5
    levels = [adaptive.novelty_threshold(_random_cosines(n, 12, rng)) for n in (10, 100, 1000)]
    assert levels == sorted(levels) and levels[-1] > 0.75
    # a new task among 1000 random keys: the fixed rule recalls, the adaptive one does not
    new = _random_cosines(1000, 12, rng).astype(np.float32)
    K = len(new)

    def obs(sims):
        return _obs(K=K, sims=sims, occupied=np.ones(K), shift=0.5)

    assert fixed.act(obs(new)) >= LOAD_OFFSET and adaptive.act(obs(new)) == FRESH
    # a returning task (its own key at cosine 0.97) is still recalled
    returning = new.copy()
    returning[123] = 0.97
    assert adaptive.act(obs(returning)) == LOAD_OFFSET + 123


def test_novelty_study_writes_its_results(tmp_path):
    import pandas as pd

    from nsr_gym.cli import main

    out = tmp_path / "novelty"
    assert main(["study", "novelty", "--quick", "--out", str(out), "--no-progress"]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["agent"]) == {"similarity", "similarity-adaptive"}
    assert runs["warm_start_rate"].between(0, 1).all()
    assert "Written by `" in (out / "novelty.md").read_text()

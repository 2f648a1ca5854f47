"""Agent specs: the one place a name (on the command line or in a study) becomes a policy.

A spec is a rule agent's name (``similarity``, ``oracle``, ... see ``RULE_AGENTS``), a retention
rule's (``pin``, ``lfu-retain``, ``lru-retain``: ``RETENTION_AGENTS``, for ``retention="agent"``
envs), a privileged reference's (``clairvoyant``; ``belady-retain``:
``REFERENCE_RETENTION_AGENTS``; both read the future schedule in ``bind(env)``, memory class
``"clairvoyant"``) or a trained controller ``ALGO:PATH`` with ``ALGO`` in ``ppo``,
``maskable-ppo`` and ``PATH`` a run directory or model zip written by ``nsr-gym train``;
``NAME=ALGO:PATH`` names it in tables.
"""

from __future__ import annotations

from typing import Any

from nsr_gym.agents.clairvoyant import Clairvoyant
from nsr_gym.agents.policies import RULE_AGENTS, Policy, make_policy
from nsr_gym.agents.retention import REFERENCE_RETENTION_AGENTS, RETENTION_AGENTS
from nsr_gym.agents.sb3_policy import SB3_ALGOS, load_sb3_policy


def make_agent(spec: str, **kwargs: Any) -> Policy:
    """Build the policy a spec names: the project's one agent factory.

    Args:
        spec: A rule agent's or retention rule's name, a reference's (``"clairvoyant"``,
            ``"belady-retain"``), or ``[NAME=]ALGO:PATH`` for a trained controller.
        **kwargs: Constructor arguments of a rule agent (``make_agent("oracle",
            first_visit="keep")``, ``make_agent("pin", threshold=0.6)``); a trained controller
            takes none.

    Raises:
        ValueError: for an unknown name or algorithm (the message lists the valid forms), a
            trained model that does not load, or keyword arguments given to one.
    """
    spec = spec.strip()
    if spec in RULE_AGENTS:
        return make_policy(spec, **kwargs)
    if spec in RETENTION_AGENTS:
        return RETENTION_AGENTS[spec](**kwargs)
    if spec == Clairvoyant.name:  # a reference agent: it plans in bind(env), before any predict
        return Clairvoyant(**kwargs)
    if spec in REFERENCE_RETENTION_AGENTS:  # privileged too: it reads the schedule in bind(env)
        return REFERENCE_RETENTION_AGENTS[spec](**kwargs)
    name, _, rest = spec.partition("=") if "=" in spec.split(":", 1)[0] else ("", "", spec)
    algo, sep, path = rest.partition(":")
    if not sep or algo not in SB3_ALGOS or not path:
        raise ValueError(
            f"unknown agent {spec!r}; choose from {sorted(RULE_AGENTS)}, a retention rule "
            f"(retention='agent' envs) from {sorted(RETENTION_AGENTS)}, a privileged reference "
            f"from {[Clairvoyant.name, *REFERENCE_RETENTION_AGENTS]}, or a trained "
            f"controller ALGO:PATH with ALGO in {SB3_ALGOS} (e.g. maskable-ppo:results/train/run)"
        )
    if kwargs:
        raise ValueError(f"a trained controller takes no settings, got {sorted(kwargs)}")
    try:
        return load_sb3_policy(path, algo=algo, name=name or None)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from None

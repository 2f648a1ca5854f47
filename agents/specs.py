"""Agent specs: the one place a name on the command line becomes a policy.

A spec is a rule agent's name (``similarity``, ``oracle``, ... see ``RULE_AGENTS``) or a trained
controller ``ALGO:PATH`` with ``ALGO`` in ``ppo``, ``maskable-ppo`` and ``PATH`` a run directory
or model zip written by ``nsr-gym train``; ``NAME=ALGO:PATH`` names it in tables.
"""

from __future__ import annotations

from agents.policies import RULE_AGENTS, Policy
from agents.sb3_policy import SB3_ALGOS, load_sb3_policy


def make_agent(spec: str) -> Policy:
    """Build the policy a spec names.

    Raises:
        ValueError: for an unknown name or algorithm (the message lists the valid forms), or a
            trained model that does not load.
    """
    spec = spec.strip()
    if spec in RULE_AGENTS:
        return RULE_AGENTS[spec]()
    name, _, rest = spec.partition("=") if "=" in spec.split(":", 1)[0] else ("", "", spec)
    algo, sep, path = rest.partition(":")
    if not sep or algo not in SB3_ALGOS or not path:
        raise ValueError(
            f"unknown agent {spec!r}; choose from {sorted(RULE_AGENTS)} or a trained "
            f"controller ALGO:PATH with ALGO in {SB3_ALGOS} (e.g. maskable-ppo:results/train/run)"
        )
    try:
        return load_sb3_policy(path, algo=algo, name=name or None)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from None

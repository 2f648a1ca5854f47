"""The one wrapper the registered entry points apply: :class:`EpisodeLength`.

``gym.make`` gives every made env a spec with ``max_episode_steps=None`` unless the registration
names a number, and a registered number comes with a ``TimeLimit`` that would cut a longer
episode than the registered one (``gym.make(id, n_cycles=8)`` runs twice as long). The episode
length of an allocation env is known once it is built (``n_phases * phase_length``), so the
entry point wraps the env in :class:`EpisodeLength`, which reports that length in ``env.spec``
and changes nothing else.
"""

from __future__ import annotations

import copy

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

__all__ = ["EpisodeLength"]


class EpisodeLength(gym.Wrapper):
    """Report the env's own episode length as ``env.spec.max_episode_steps``; never truncate.

    The env terminates by itself after ``env.unwrapped.n_steps`` steps; this wrapper passes
    ``step`` and ``reset`` through unchanged. Like ``gym.make``'s own ``PassiveEnvChecker`` and
    ``OrderEnforcing`` it does not add itself to ``spec.additional_wrappers``: the entry point
    applies it, so ``gym.make(env.spec)`` rebuilds the same stack (plus the ``TimeLimit`` that a
    spec with ``max_episode_steps`` asks for, which at the same length cuts nothing).

    Args:
        env: An env whose ``unwrapped`` has ``n_steps``, the exact episode length in steps.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.episode_length = int(env.unwrapped.n_steps)

    @property
    def spec(self) -> EnvSpec | None:
        """A copy of the inner env's spec with ``max_episode_steps`` the episode length."""
        if self._cached_spec is None and self.env.spec is not None:
            spec = copy.deepcopy(self.env.spec)
            spec.max_episode_steps = self.episode_length
            self._cached_spec = spec
        return self._cached_spec

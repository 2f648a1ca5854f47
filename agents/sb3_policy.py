"""A trained SB3 controller as an allocation policy with the rule agents' ``predict``.

:func:`load_sb3_policy` reads what :func:`nsr_gym.agents.train.train` wrote (``config.json``
and the weights) and rebuilds the SB3 policy network without unpickling anything: the weights
come from the zip's safetensors copy (``policy.safetensors`` for ``model.zip``,
``best_policy.safetensors`` for ``best_model.zip``), checked against the sha256 in
``config.json``, or, for a zip without one, from its ``policy.pth`` through
``torch.load(weights_only=True)`` (tensors only).

:class:`SB3Policy` takes the env's ``Dict`` observation, flattens it exactly as training did
(``FlattenObservation``: the parts in the order recorded in ``config.json``) and, for
``MaskablePPO``, derives the action mask from the observation itself: keep and fresh are always
valid, ``load k`` only where ``occupied[k]``, and with ``retention="agent"`` every retention value
while ``pending``, only ``0`` otherwise (the env's ``action_masks()``). So a trained policy runs
through :func:`nsr_gym.agents.evaluation.rollout` on the bare env, like any rule; on a
``retention="agent"`` env its action is the ``(2,)`` array ``[allocation, retention]``.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from nsr_gym.agents.policies import Obs, Policy
from nsr_gym.agents.train import CONFIG_FORMAT, WEIGHTS_OF, _policy_kwargs
from nsr_gym.atomic import sha256_file

#: The algorithms a spec may name, and the SB3 policy class each trained.
SB3_ALGOS = ("ppo", "maskable-ppo")


def flatten_obs(obs: Obs, layout: list[dict[str, Any]]) -> np.ndarray:
    """The parts of ``obs`` concatenated in ``layout``'s order: ``(D,)`` or, batched, ``(n, D)``."""
    missing = [p["key"] for p in layout if p["key"] not in obs]
    if missing:
        raise ValueError(f"observation lacks {missing}: not the env this policy was trained on")
    parts = [np.asarray(obs[p["key"]], dtype=np.float32) for p in layout]
    batched = parts[0].ndim == 2
    parts = [p.reshape(p.shape[0], -1) if batched else p.reshape(-1) for p in parts]
    flat = np.concatenate(parts, axis=-1)
    expected = sum(p["size"] for p in layout)
    if flat.shape[-1] != expected:
        raise ValueError(
            f"flattened observation has {flat.shape[-1]} values, the policy expects "
            f"{expected}: was it trained with another bank capacity?"
        )
    return flat


def masks_from_obs(obs: Obs) -> np.ndarray:
    """The env's ``action_masks()`` from the observation (bool): ``[1, 1] + occupied``, and with
    ``retention="agent"`` (a ``pending`` part) then ``[1] + [pending] * K``."""
    occupied = np.asarray(obs["occupied"]) > 0
    ones = np.ones(occupied.shape[:-1] + (2,), dtype=bool)
    parts = [ones, occupied]
    if "pending" in obs:
        pending = np.asarray(obs["pending"]) > 0
        parts += [ones[..., :1], np.broadcast_to(pending, occupied.shape)]
    return np.concatenate(parts, axis=-1)


class SB3Policy(Policy):
    """A trained ``PPO`` / ``MaskablePPO`` network behind the rule agents' interface.

    Args:
        policy: The SB3 policy module (``ActorCriticPolicy`` or ``MaskableActorCriticPolicy``).
        layout: The flattened observation's parts (``config.json["obs_layout"]``).
        algo: ``"ppo"`` or ``"maskable-ppo"``; the latter is given masks derived from ``obs``.
        name: Name in tables.
        config: The training run's ``config.json`` (kept for provenance).
    """

    memory_class = "learned"

    def __init__(
        self,
        policy: Any,
        layout: list[dict[str, Any]],
        algo: str,
        name: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.policy = policy
        self.layout = layout
        self.algo = algo
        self.name = name or algo
        self.config = config or {}
        #: SHA-256 of the weights file the policy was loaded from ("" when built in memory).
        self.weights_sha256 = ""

    def act(self, obs: Obs) -> Any:
        """One action: an ``int``, or on a ``retention="agent"`` env the ``(2,)`` array."""
        action = np.asarray(self.actions(obs))
        return int(action.reshape(-1)[0]) if action.size == 1 else action.reshape(-1)

    def actions(self, observation: Obs, deterministic: bool = True) -> np.ndarray:
        """The network's action(s): 0-d for one observation, ``(n,)`` for a batched one.

        :meth:`Policy.predict` wraps it; the network is feed-forward, so the recurrent state
        and ``episode_start`` of SB3's ``predict`` play no part (SB3 passes ``state`` through).
        """
        flat = flatten_obs(observation, self.layout)
        if self.algo == "maskable-ppo":
            masks = masks_from_obs(observation)
            return self.policy.predict(flat, deterministic=deterministic, action_masks=masks)[0]
        return self.policy.predict(flat, deterministic=deterministic)[0]


def _read_weights(model_path: Path, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The zip's weights from its safetensors copy (checksum-checked), else from the zip.

    Returns:
        ``(state_dict, sha256 of the file read)``.
    """
    import torch
    from safetensors.torch import load_file

    weights = model_path.with_name(WEIGHTS_OF.get(model_path.name, "-"))
    want = config.get("files", {}).get(weights.name)
    if weights.exists() and want:
        if sha256_file(weights) != want:
            raise ValueError(f"{weights} does not match the checksum in config.json")
        return load_file(str(weights)), want
    with zipfile.ZipFile(model_path) as zf:
        if "policy.pth" not in zf.namelist():
            raise ValueError(f"{model_path} is not an SB3 model zip (no policy.pth)")
        data = io.BytesIO(zf.read("policy.pth"))
    return torch.load(data, map_location="cpu", weights_only=True), sha256_file(model_path)


def load_sb3_policy(
    path: str | Path, algo: str | None = None, name: str | None = None
) -> SB3Policy:
    """Load a controller trained by :func:`nsr_gym.agents.train.train`.

    Args:
        path: The run directory, its ``model.zip`` or another SB3 zip beside its ``config.json``
            (e.g. ``best_model.zip``).
        algo: Expected algorithm; a mismatch with ``config.json`` is an error.
        name: Name in tables (default ``<algo>:<run directory name>``).

    Raises:
        FileNotFoundError: when the model or its ``config.json`` is missing.
        ValueError: on a format, algorithm or checksum mismatch.
    """
    import torch
    from gymnasium import spaces

    path = Path(path)
    model_path = path / "model.zip" if path.is_dir() else path
    config_path = model_path.parent / "config.json"
    for p in (model_path, config_path):
        if not p.exists():
            raise FileNotFoundError(
                f"{p} not found: train one with `nsr-gym train --out {model_path.parent}`"
            )
    config = json.loads(config_path.read_text())
    if config.get("format_version") != CONFIG_FORMAT:
        raise ValueError(
            f"{config_path} has format {config.get('format_version')}, expected {CONFIG_FORMAT}"
        )
    trained_algo = config["settings"]["algo"]
    if algo is not None and algo != trained_algo:
        raise ValueError(f"{model_path} was trained with {trained_algo}, not {algo}")

    layout = config["obs_layout"]
    low = np.concatenate([np.full(p["size"], p["low"], np.float32) for p in layout])
    high = np.concatenate([np.full(p["size"], p["high"], np.float32) for p in layout])
    obs_space = spaces.Box(low, high, dtype=np.float32)
    if "action_nvec" in config:  # retention="agent": [allocation, retention]
        act_space: Any = spaces.MultiDiscrete(config["action_nvec"])
    else:
        act_space = spaces.Discrete(int(config["n_actions"]))
    if trained_algo == "maskable-ppo":
        from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy as policy_cls
    else:
        from stable_baselines3.common.policies import ActorCriticPolicy as policy_cls
    policy = policy_cls(
        obs_space,
        act_space,
        lambda _: 0.0,
        **_policy_kwargs(config["hyperparams"].get("policy_kwargs")),
    )
    state, weights_sha = _read_weights(model_path, config)
    policy.load_state_dict(state)
    policy.set_training_mode(False)
    policy.to(torch.device("cpu"))
    label = model_path.parent.name + (
        "" if model_path.name == "model.zip" else f"-{model_path.stem}"
    )
    loaded = SB3Policy(policy, layout, trained_algo, name or f"{trained_algo}:{label}", config)
    loaded.weights_sha256 = weights_sha
    return loaded

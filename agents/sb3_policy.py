"""A trained SB3 controller as an allocation policy with the rule agents' ``predict``.

:func:`load_sb3_policy` reads what :func:`nsr_gym.agents.train.train` wrote (``config.json``
and the weights) and rebuilds the SB3 policy network without unpickling anything: the weights
come from the zip's safetensors copy only (``policy.safetensors`` for ``model.zip``,
``best_policy.safetensors`` for ``best_model.zip``); the zip's pickled ``policy.pth`` is never
read. Before anything is built, ``config.json`` goes through :func:`nsr_gym.jsonio.read_json`
and every field the loader uses is checked (algorithm, observation layout, action sizes,
``net_arch`` widths, all bounded); the zip and the weights must match the sha256 that
``config.json`` records, and the weights file's tensor names, shapes and dtype must be those of
the network, before a byte of them is loaded. Anything else raises :class:`PolicyFormatError`
naming the file and what is wrong.

:class:`SB3Policy` takes the env's ``Dict`` observation, flattens it exactly as training did
(``FlattenObservation``: the parts in the order recorded in ``config.json``) and, for
``MaskablePPO``, derives the action mask from the observation itself: keep and fresh are always
valid, ``load k`` only where ``occupied[k]``, and with ``retention="agent"`` every retention value
while ``pending``, only ``0`` otherwise (the env's ``action_masks()``). So a trained policy runs
through :func:`nsr_gym.agents.evaluation.rollout` on the bare env, like any rule; on a
``retention="agent"`` env its action is the ``(2,)`` array ``[allocation, retention]``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from nsr_gym.agents.policies import Obs, Policy
from nsr_gym.agents.train import _ACTIVATIONS, CONFIG_FORMAT, WEIGHTS_OF, _policy_kwargs
from nsr_gym.atomic import sha256_file
from nsr_gym.jsonio import JsonFileError, read_json

#: The algorithms a spec may name, and the SB3 policy class each trained.
SB3_ALGOS = ("ppo", "maskable-ppo")
#: Bounds checked before a network is built: widest layer, most layers, largest flattened
#: observation, most actions per dimension (``capacity + 2`` of the largest env).
MAX_WIDTH, MAX_LAYERS, MAX_OBS, MAX_ACTIONS = 4096, 16, 1_000_000, 100_002
_POLICY_KWARGS = ("net_arch", "activation_fn", "ortho_init")
_SHA = re.compile(r"[0-9a-f]{64}")


class PolicyFormatError(ValueError):
    """A trained-policy folder that is malformed, modified or not this loader's format; the
    message names the file, what is wrong and what to do."""


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


def _fail(path: Path, problem: str) -> PolicyFormatError:
    return PolicyFormatError(f"{path}: {problem}; train it again with `nsr-gym train --out "
                             f"{path.parent}` (or restore the folder)")


def _int_in(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def _check_layout(layout: Any, path: Path) -> list[dict[str, Any]]:
    if not isinstance(layout, list) or not 1 <= len(layout) <= 64:
        raise _fail(path, "obs_layout must be a list of 1..64 parts")
    total = 0
    for part in layout:
        ok = isinstance(part, dict) and isinstance(part.get("key"), str) and \
            _int_in(part.get("size"), 1, MAX_OBS) and all(
                type(part.get(b)) in (int, float) and math.isfinite(part[b])
                for b in ("low", "high"))
        if not ok or part["low"] > part["high"]:
            raise _fail(path, f"obs_layout part {str(part)[:80]} is not "
                        "{key: str, size: int >= 1, low <= high: finite numbers}")
        total += part["size"]
    if total > MAX_OBS:
        raise _fail(path, f"obs_layout flattens to {total:,} values (at most {MAX_OBS:,})")
    return layout


def _check_net_arch(arch: Any, path: Path) -> None:
    if isinstance(arch, dict) and set(arch) <= {"pi", "vf"}:
        stacks = [ws for ws in arch.values() if ws is not None]
    else:
        stacks = [arch]
    for widths in stacks:
        if not isinstance(widths, list) or len(widths) > MAX_LAYERS or \
                not all(_int_in(w, 1, MAX_WIDTH) for w in widths):
            raise _fail(path, f"policy_kwargs.net_arch {str(arch)[:80]} must be a list of at "
                        f"most {MAX_LAYERS} widths in 1..{MAX_WIDTH} (or {{pi: [...], vf: "
                        "[...]}})")


def _check_config(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The fields of ``config.json`` the loader uses, each checked and bounded."""
    if config.get("format_version") != CONFIG_FORMAT:
        raise _fail(path, f"format {config.get('format_version')!r}, expected {CONFIG_FORMAT}")
    settings, hp, files = (config.get(k) for k in ("settings", "hyperparams", "files"))
    if not isinstance(settings, dict) or settings.get("algo") not in SB3_ALGOS:
        raise _fail(path, f"settings.algo must be one of {SB3_ALGOS}")
    if not isinstance(hp, dict) or not isinstance(hp.get("policy_kwargs") or {}, dict):
        raise _fail(path, "hyperparams (with its policy_kwargs) must be a JSON object")
    kwargs = dict(hp.get("policy_kwargs") or {})
    unknown = sorted(set(kwargs) - set(_POLICY_KWARGS))
    if unknown:
        raise _fail(path, f"policy_kwargs {unknown} are not supported (only {_POLICY_KWARGS})")
    if "net_arch" in kwargs:
        _check_net_arch(kwargs["net_arch"], path)
    if kwargs.get("activation_fn", "tanh") not in _ACTIVATIONS or \
            type(kwargs.get("ortho_init", True)) is not bool:
        raise _fail(path, f"activation_fn must be one of {sorted(_ACTIVATIONS)} and ortho_init "
                    "a boolean")
    nvec = config.get("action_nvec")
    if nvec is not None and not (isinstance(nvec, list) and len(nvec) == 2 and
                                 all(_int_in(n, 1, MAX_ACTIONS) for n in nvec)):
        raise _fail(path, f"action_nvec must be two integers in 1..{MAX_ACTIONS:,}")
    if nvec is None and not _int_in(config.get("n_actions"), 2, MAX_ACTIONS):
        raise _fail(path, f"n_actions must be an integer in 2..{MAX_ACTIONS:,}")
    if not isinstance(files, dict) or not all(isinstance(v, str) and _SHA.fullmatch(v)
                                              for v in files.values()):
        raise _fail(path, "files must map file names to sha256 hex digests")
    return {"algo": settings["algo"], "layout": _check_layout(config.get("obs_layout"), path),
            "nvec": nvec, "n_actions": config.get("n_actions"), "policy_kwargs": kwargs,
            "files": files}


def _verify(file: Path, files: dict[str, str], config_path: Path) -> str:
    """``file``'s sha256, which must be the one ``config.json`` records for it."""
    want = files.get(file.name)
    if want is None:
        raise _fail(config_path, f"records no sha256 for {file.name}")
    if not file.is_file():
        raise _fail(file, "missing (config.json records its sha256)" + (
            ": this loader reads SB3 policies from their safetensors copy only, never the zip's "
            "pickled policy.pth" if file.suffix == ".safetensors" else ""))
    got = sha256_file(file)
    if got != want:
        raise _fail(file, "its sha256 differs from the one config.json records: modified, "
                    "corrupted or from another run")
    return got


def _read_weights(weights: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """The weights, after their names, shapes and dtypes were checked against the network's
    ``state_dict`` (``expected``) from the file's header alone; values must be finite."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(weights), framework="pt") as f:
            header = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                      for k in f.keys()}
    except Exception as exc:  # safetensors raises its own types for a malformed header
        raise _fail(weights, f"could not be parsed ({type(exc).__name__}: {exc})") from None
    want = {k: (tuple(v.shape), "F32") for k, v in expected.items()}
    if header != want:
        diff = sorted(set(header.items()) ^ set(want.items()))[:3]
        raise _fail(weights, f"tensors (name, shape, dtype) differ from the network config.json "
                    f"describes, e.g. {diff}")
    state = load_file(str(weights))
    bad = [k for k, t in state.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise _fail(weights, f"tensor {bad[0]!r} holds NaN or inf")
    return state


def load_sb3_policy(
    path: str | Path, algo: str | None = None, name: str | None = None
) -> SB3Policy:
    """Load a controller trained by :func:`nsr_gym.agents.train.train`.

    Args:
        path: The run directory, its ``model.zip``, or its ``best_model.zip``.
        algo: Expected algorithm; a mismatch with ``config.json`` is an error.
        name: Name in tables (default ``<algo>:<run directory name>``).

    Raises:
        FileNotFoundError: when the model or its ``config.json`` is missing.
        PolicyFormatError: (a ``ValueError``) naming the file, for a malformed ``config.json``,
            a zip or weights file whose sha256 differs from the recorded one, missing weights,
            weights that do not fit the network, or an algorithm mismatch.
    """
    import torch
    from gymnasium import spaces

    path = Path(path)
    model_path = path / "model.zip" if path.is_dir() else path
    config_path = model_path.parent / "config.json"
    for p in (model_path, config_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found: train one with `nsr-gym train --out {model_path.parent}`"
            )
    if model_path.name not in WEIGHTS_OF:
        raise _fail(model_path, f"not one of {sorted(WEIGHTS_OF)}, whose safetensors copies "
                    "this loader reads")
    try:
        config = read_json(config_path, max_bytes=8 * 2**20, what="SB3 policy config")
    except JsonFileError as exc:
        raise PolicyFormatError(str(exc)) from None
    spec = _check_config(config, config_path)
    if algo is not None and algo != spec["algo"]:
        raise ValueError(f"{model_path} was trained with {spec['algo']}, not {algo}")
    _verify(model_path, spec["files"], config_path)
    weights = model_path.with_name(WEIGHTS_OF[model_path.name])
    weights_sha = _verify(weights, spec["files"], config_path)

    layout = spec["layout"]
    low = np.concatenate([np.full(p["size"], p["low"], np.float32) for p in layout])
    high = np.concatenate([np.full(p["size"], p["high"], np.float32) for p in layout])
    obs_space = spaces.Box(low, high, dtype=np.float32)
    if spec["nvec"] is not None:  # retention="agent": [allocation, retention]
        act_space: Any = spaces.MultiDiscrete(spec["nvec"])
    else:
        act_space = spaces.Discrete(spec["n_actions"])
    if spec["algo"] == "maskable-ppo":
        from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy as policy_cls
    else:
        from stable_baselines3.common.policies import ActorCriticPolicy as policy_cls
    policy = policy_cls(obs_space, act_space, lambda _: 0.0,
                        **_policy_kwargs(spec["policy_kwargs"]))
    policy.load_state_dict(_read_weights(weights, policy.state_dict()))
    policy.set_training_mode(False)
    policy.to(torch.device("cpu"))
    label = model_path.parent.name + (
        "" if model_path.name == "model.zip" else f"-{model_path.stem}"
    )
    loaded = SB3Policy(policy, layout, spec["algo"], name or f"{spec['algo']}:{label}", config)
    loaded.weights_sha256 = weights_sha
    return loaded

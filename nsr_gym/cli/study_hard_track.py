"""``nsr-gym study hard-track``: the similarity rule's headroom on the hard track, and learned
controllers trained on it.

Argument parsing only; the study and its report are :mod:`nsr_gym.studies.hard_track`'s.
Writes ``results/hard_track/`` (``runs.csv``, ``scores.csv``, ``learned.csv``,
``learned_summary.csv``, ``transfer.csv``, ``training_curves.csv``, ``eval_curves.csv``,
``training_curves.png``, ``hard_track.md``, ``manifest.json`` and the trained controllers under
``train/<benchmark>/<backend>/seed<k>/``, PPO's under ``train/<benchmark>/<backend>/ppo/``).
"""

from __future__ import annotations

import argparse
import time

from nsr_gym.cli._common import add_study_parser, parse_ints, study_kwargs


def parse_backends(text: str) -> tuple[str, ...]:
    """``"analytic,torch"`` -> ``("analytic", "torch")``; an unknown name is an error."""
    from nsr_gym.studies.hard_track import BACKENDS

    names = tuple(dict.fromkeys(b.strip() for b in text.split(",") if b.strip()))
    bad = [b for b in names if b not in BACKENDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of {', '.join(BACKENDS)}")
    return names


def parse_algos(text: str) -> tuple[str, ...]:
    """``"maskable-ppo,ppo"`` -> ``("maskable-ppo", "ppo")``; an unknown name is an error."""
    from nsr_gym.studies.hard_track import ALGOS

    names = tuple(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    if not names or set(names) - set(ALGOS):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of {', '.join(ALGOS)}")
    return names


def cmd_hard_track(args: argparse.Namespace) -> int:
    from nsr_gym.studies import hard_track

    kw = study_kwargs(args, "hard_track", seeds=hard_track.SEEDS,
                      quick_seeds=hard_track.QUICK_SEEDS)
    t0 = time.perf_counter()
    print(hard_track.run_study(quick=args.quick, train=not args.no_train,
                               train_seeds=tuple(args.train_seeds) if args.train_seeds else None,
                               train_steps=args.train_steps,
                               train_backends=args.train_backends, algos=args.algos, **kw))
    print(f"wrote {kw['out']}/ in {time.perf_counter() - t0:.1f} s")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_study_parser(
        sub, "hard-track", help="headroom of the similarity rule on the hard track, and "
                                "MaskablePPO and PPO trained on it (results/hard_track)",
        seeds="default 100..109, held out from training", quick="small episodes, short training")
    p.add_argument("--no-train", action="store_true", help="the headroom only")
    p.add_argument("--train-seeds", type=parse_ints, default=None,
                   help="training seeds (default 0..4; 0,1 under --quick)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="env steps per training run (default 100000; 240 under --quick)")
    p.add_argument("--train-backends", type=parse_backends, default=("analytic", "torch"),
                   help="backends to train on, comma-separated (default analytic,torch); "
                        "every controller is evaluated on both")
    p.add_argument("--algos", type=parse_algos, default=("maskable-ppo", "ppo"),
                   help="algorithms to train, comma-separated (default maskable-ppo,ppo; the "
                        "verdict is MaskablePPO's)")
    p.set_defaults(func=cmd_hard_track)

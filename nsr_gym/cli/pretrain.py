"""``nsr-gym pretrain``: regenerate the shipped pretrained backbone (nsr_gym/weights/).

Argument parsing only; the training is :mod:`nsr_gym.studies.pretrain`'s.
"""

from __future__ import annotations

import argparse


def cmd_pretrain(args: argparse.Namespace) -> int:
    from nsr_gym.studies.pretrain import PretrainConfig, check_shipped, run_study

    given = {"seed": args.seed, "epochs": args.epochs, "samples": args.samples}
    cfg = PretrainConfig(**{k: v for k, v in given.items() if v is not None})
    if args.check:
        same, message = check_shipped(cfg)
        print(message)
        return 0 if same else 1
    print(run_study(cfg, args.out, args.weights_dir))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain the shipped MNIST-1D backbone "
                                        "(nsr_gym/weights, results/pretrain)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the initial weights and batch order (default 0)")
    p.add_argument("--epochs", type=int, default=None,
                   help="passes over the pretraining signals (default 20)")
    p.add_argument("--samples", type=int, default=None,
                   help="signals drawn from the pretraining generator (default 20000)")
    p.add_argument("--out", default="results/pretrain", help="training record folder")
    p.add_argument("--weights-dir", default=None,
                   help="where the weights go (default: the package's nsr_gym/weights)")
    p.add_argument("--check", action="store_true",
                   help="retrain into a temporary folder and compare the sha256 with the "
                        "shipped weights (writes nothing; exit status 1 on a mismatch)")
    p.set_defaults(func=cmd_pretrain)

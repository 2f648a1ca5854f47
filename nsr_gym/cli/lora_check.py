"""``nsr-gym lora-check``: does LoRA matter, and what does a pretrained backbone buy?

Argument parsing only; the ablation is :mod:`nsr_gym.studies.lora_check`'s.
"""

from __future__ import annotations

import argparse

from nsr_gym.cli._common import parse_ints, parse_seeds

PARTS = ("digits", "mnist1d")  # nsr_gym.studies.lora_check.PARTS, without importing torch here


def cmd_lora_check(args: argparse.Namespace) -> int:
    from nsr_gym.studies.lora_check import run_study

    parts = PARTS if args.part == "all" else (args.part,)
    print(run_study(args.seeds or list(range(5)), args.budgets, args.out, parts=parts,
                    revisits=args.revisits))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora-check",
                       help="trained adapters vs a trained head alone, random vs pretrained "
                            "backbones (results/lora_check)")
    p.add_argument("--seeds", type=parse_seeds, default=None)
    p.add_argument("--budgets", type=parse_ints, default=[30, 300],
                   help="Adam updates per task, comma-separated (default 30,300)")
    p.add_argument("--part", choices=[*PARTS, "all"], default="all",
                   help="digits: Split-Digits on the default MLP (lora_check.*); mnist1d: the "
                        "MNIST-1D families on random and pretrained backbones, with the "
                        "similarity rule's recall precision (lora_check_mnist1d.*); default all")
    p.add_argument("--revisits", type=int, default=3,
                   help="cyclic probe passes after the first, for the recall precision "
                        "(default 3, as 4 cycles)")
    p.add_argument("--out", default="results/lora_check")
    p.set_defaults(func=cmd_lora_check)

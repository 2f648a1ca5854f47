"""``nsr-gym lora-check``: does LoRA matter on the default backbone?"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nsr_gym.cli._common import markdown_table, parse_seeds


def cmd_lora_check(args: argparse.Namespace) -> int:
    from nsr_gym.lora_check import lora_ablation, summarize_ablation
    from nsr_gym.results import command_line, manifest, provenance_line, write_csv, write_json

    seeds = args.seeds or list(range(5))
    t0 = time.perf_counter()
    raw = lora_ablation(seeds=seeds, budgets=args.budgets)
    table = summarize_ablation(raw)
    meta = manifest(command_line(), seeds, time.perf_counter() - t0, tasks="split_digits")
    out = Path(args.out)
    write_csv(out / "lora_check_raw.csv", raw)
    write_csv(out / "lora_check.csv", table)
    md = (f"# Does LoRA matter? (Split-Digits, torch backend)\n\n{provenance_line(meta)}\n\n"
          f"{markdown_table(table)}\n\nMean held-out accuracy over 5 tasks x seeds after `budget` "
          "Adam updates from a fresh subspace; head-only trains the head on the frozen features.\n")
    (out / "lora_check.md").write_text(md)
    write_json(out / "manifest.json", meta)
    print(md)
    return 0



def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora-check", help="trained adapters vs a trained head alone (results/lora_check)")
    p.add_argument("--seeds", type=parse_seeds, default=None)
    p.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[30, 300])
    p.add_argument("--out", default="results/lora_check")
    p.set_defaults(func=cmd_lora_check)

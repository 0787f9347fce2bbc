"""Trainer throughput, the per-episode reference loop against the batched path, side by side.

``deltamem bench trainer [--out FILE]``: one process builds a trainer per
variant on the embedded backbone (a fresh SSW rank-16 adapter, 1-fact episodes) and runs their
steps in turn (A, B, C, A, B, C, …), so a busy machine slows every variant alike; the table
gives median seconds per step, episodes per second and the ratio to the reference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..config import DeltaMemConfig
from ..training.batched import cpu_has_native_bf16
from ..training.trainer import TrainConfig, Trainer

VARIANTS: dict[str, dict[str, Any]] = {
    "reference loop (one episode at a time, fp32, sdpa attention)": {
        "batched": False,
        "attention": "sdpa",
    },
    "batched, fp32, sdpa attention": {"batched": True, "attention": "sdpa"},
    "batched, fp32, eager attention": {"batched": True, "attention": "eager"},
    # A different adapter (10 of the 30 layers): what --target-layers buys, not a like-for-like row.
    "batched, fp32, eager attention, layers 0-9 adapted": {
        "batched": True,
        "attention": "eager",
        "adapter": DeltaMemConfig(rank=16, write_granularity="segment", target_layers=range(10)),
    },
    "batched, bf16 backbone, eager attention": {
        "batched": True,
        "bf16": True,
        "attention": "eager",
    },
    "batched, bf16 backbone, eager attention, layers 0-9 adapted": {
        "batched": True,
        "bf16": True,
        "attention": "eager",
        "adapter": DeltaMemConfig(rank=16, write_granularity="segment", target_layers=range(10)),
    },
}


def measure(*, steps: int, batch_size: int, distractors: tuple[int, int]) -> list[dict[str, Any]]:
    """Median step time of each variant over ``steps`` interleaved steps (after one warm-up)."""
    base = TrainConfig(
        adapter=DeltaMemConfig(rank=16, write_granularity="segment"),
        steps=10_000,
        batch_size=batch_size,
        lr=3e-3,
        warmup_steps=1,
        num_facts=(1,),
        kinds=("facts",),
        distractors=distractors,
        value_types=("colour", "food"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            name: Trainer(base.model_copy(update=options), Path(tmp) / str(i))
            for i, (name, options) in enumerate(VARIANTS.items())
        }
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for round_ in range(steps + 1):
            for name, trainer in trainers.items():
                record = trainer.train_step()
                if round_:  # the first step of each warms caches and allocators
                    times[name].append(record["seconds"])
    reference = statistics.median(times[next(iter(VARIANTS))])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append(
            {
                "variant": name,
                "seconds_per_step": median,
                "range": (min(values), max(values)),
                "episodes_per_s": batch_size / median,
                "speedup": reference / median,
            }
        )
    return rows


def to_markdown(
    rows: list[dict[str, Any]], *, batch_size: int, distractors: tuple[int, int]
) -> str:
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    lines = [
        f"Batch of {batch_size} one-fact SSW episodes (distractor turns {distractors[0]}–"
        f"{distractors[1]}), rank 16, answer cross-entropy, torch threads "
        f"{torch.get_num_threads()}, CPU {capabilities.get('cpu_name', '?')}, bf16 in "
        f"hardware: {'yes' if cpu_has_native_bf16() else 'no (bf16 is emulated)'}:",
        "",
        "| variant | s/step (median) | range | episodes/s | × reference |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['seconds_per_step']:.2f} | {r['range'][0]:.2f}–"
            f"{r['range'][1]:.2f} | {r['episodes_per_s']:.2f} | {r['speedup']:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``deltamem bench trainer`` options."""
    parser.add_argument("--out", help="also append the markdown table to this file")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--distractors", type=int, nargs=2, default=[0, 0], metavar=("LO", "HI"))
    return parser


def run_from_args(args: argparse.Namespace) -> None:
    distractors = (args.distractors[0], args.distractors[1])
    rows = measure(steps=args.steps, batch_size=args.batch_size, distractors=distractors)
    table = to_markdown(rows, batch_size=args.batch_size, distractors=distractors)
    print(table)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(table + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m langchain_deltamem.bench.trainer")
    run_from_args(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    main()

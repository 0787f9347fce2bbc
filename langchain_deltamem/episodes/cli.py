"""``deltamem data``: generate synthetic episodes and write them as JSONL."""

from __future__ import annotations

import argparse

from .builder import generate_episodes
from .jsonl import write_jsonl
from .schema import KINDS, SPLITS, TRAIN
from .values import VALUE_TYPES


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``deltamem data`` options."""
    parser.add_argument("--out", required=True, help="output JSONL path")
    parser.add_argument("--n", type=int, default=1000, help="number of episodes")
    parser.add_argument("--split", choices=SPLITS, default=TRAIN)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-facts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=None)
    parser.add_argument(
        "--value-types",
        nargs="+",
        choices=VALUE_TYPES,
        default=None,
        help="only personal facts with values of these types",
    )
    parser.add_argument("--candidates", type=int, default=None, help="default: open pool")
    parser.add_argument("--pool-seed", type=int, default=0, help="shuffle of the candidates")
    parser.add_argument(
        "--distractors", type=int, nargs="+", default=[1, 4], metavar="N", help="N or LOW HIGH"
    )
    return parser


def run_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Generate and write the episodes ``args`` ask for (errors go through ``parser``)."""
    if len(args.distractors) > 2:
        parser.error("--distractors takes N or LOW HIGH")
    low, high = args.distractors[0], args.distractors[-1]
    try:
        episodes = generate_episodes(
            args.n,
            split=args.split,
            seed=args.seed,
            num_facts=args.num_facts,
            kinds=args.kinds,
            distractors=(low, high),
            candidates=args.candidates,
            pool_seed=args.pool_seed,
            value_types=args.value_types,
        )
    except ValueError as err:
        parser.error(str(err))
    count = write_jsonl(episodes, args.out)
    print(f"wrote {count} {args.split} episodes to {args.out}")


def main(argv: list[str] | None = None) -> None:
    """``deltamem data``: write synthetic episodes as JSONL."""
    parser = add_arguments(
        argparse.ArgumentParser(
            prog="deltamem data", description="Generate synthetic δ-mem episodes as JSONL."
        )
    )
    run_from_args(parser.parse_args(argv), parser)


if __name__ == "__main__":
    main()

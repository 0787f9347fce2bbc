"""``python -m langchain_deltamem.bench {core,turns} [--out FILE]``."""

from __future__ import annotations

import argparse

from . import core


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m langchain_deltamem.bench")
    sub = parser.add_subparsers(dest="which", required=True)
    core_parser = sub.add_parser("core", help="scan, prefill, decode and state-size ratios")
    core_parser.add_argument("--out", help="also write the markdown table to this file")
    core_parser.add_argument("--repeats", type=int, default=5)
    turns_parser = sub.add_parser("turns", help="per-turn cost of a long chat vs buffer memory")
    turns_parser.add_argument("--out", help="also write the markdown table to this file")
    turns_parser.add_argument("--repeats", type=int, default=3)
    turns_parser.add_argument("--turns", type=int, default=200)
    turns_parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.which == "core":
        core.main(out=args.out, repeats=args.repeats)
    elif args.which == "turns":
        from . import turns

        turns.main(out=args.out, repeats=args.repeats, turns=args.turns, seed=args.seed)


if __name__ == "__main__":
    main()

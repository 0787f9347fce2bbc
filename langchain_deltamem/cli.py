"""``deltamem``: the command-line entry point (subcommands grow with the project)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deltamem", description="δ-mem for LangChain/LangGraph")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="write a conversation into memory and ask about it")
    demo.add_argument("--max-new-tokens", type=int, default=24)
    demo.add_argument("--seed", type=int, default=0)
    bench = sub.add_parser("bench", help="benchmarks printing side-by-side ratios")
    bench.add_argument("which", choices=["core"])
    bench.add_argument("--out")
    bench.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo as demo_module

        demo_module.main(["--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed)])
    elif args.command == "bench":
        from .bench import core

        core.main(out=args.out, repeats=args.repeats)


if __name__ == "__main__":
    main()

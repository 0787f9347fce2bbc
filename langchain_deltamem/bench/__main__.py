"""``python -m langchain_deltamem.bench {core,turns,cost,latency,batching} [--out FILE]``."""

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
    grammar_parser = sub.add_parser("grammar", help="JSON grammar engines per decoded token")
    grammar_parser.add_argument("--out", help="also write the markdown table to this file")
    grammar_parser.add_argument("--repeats", type=int, default=5)
    cost_parser = sub.add_parser("cost", help="per-turn cost: δ-mem vs buffer and vector memory")
    add_cost_arguments(cost_parser)
    latency_parser = sub.add_parser("latency", help="reply latency: δ-mem vs the bare backbone")
    add_latency_arguments(latency_parser)
    batching_parser = sub.add_parser(
        "batching", help="concurrent conversations batched vs one at a time"
    )
    add_batching_arguments(batching_parser)
    args = parser.parse_args(argv)
    if args.which == "core":
        core.main(out=args.out, repeats=args.repeats)
    elif args.which == "turns":
        from . import turns

        turns.main(out=args.out, repeats=args.repeats, turns=args.turns, seed=args.seed)
    elif args.which == "grammar":
        from . import grammar

        grammar.main(out=args.out, repeats=args.repeats)
    elif args.which == "cost":
        run_cost(args)
    elif args.which == "latency":
        run_latency(args)
    elif args.which == "batching":
        run_batching(args)


def add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the cost benchmark (also used by ``deltamem bench cost``)."""
    parser.add_argument("--out", help="write the markdown report here, PNGs next to it")
    parser.add_argument("--repeats", type=int, default=None, help="default 3")
    parser.add_argument("--turns", type=int, default=None, help="default 500")
    parser.add_argument("--points", help="measured turns, e.g. 1,10,20 (default: 1,10,50,…)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-tokens", help="write-throughput sizes, default 1024,4096")
    parser.add_argument(
        "--cache", help="resume directory (default: <DELTAMEM_CACHE_DIR>/bench-cost)"
    )


def run_cost(args: argparse.Namespace) -> None:
    """Run the cost benchmark from parsed options (missing ones take their defaults)."""
    from ..backbones import resolve_cache_dir
    from . import cost

    turns = getattr(args, "turns", None) or cost.DEFAULT_TURNS
    cache = getattr(args, "cache", None) or str(resolve_cache_dir() / "bench-cost")
    cost.main(
        out=args.out,
        repeats=getattr(args, "repeats", None) or 3,
        turns=turns,
        points=getattr(args, "points", None),
        seed=getattr(args, "seed", 0),
        write_tokens=getattr(args, "write_tokens", None),
        cache=cache,
    )


def add_latency_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the latency benchmark (also used by ``deltamem bench latency``)."""
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--repeats", type=int, default=None, help="default 7")
    parser.add_argument("--turns", type=int, default=None, help="the late turn (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache", help="the δ-mem pass's resume directory (default: that of bench cost)"
    )


def run_latency(args: argparse.Namespace) -> None:
    from ..backbones import resolve_cache_dir
    from . import latency

    latency.main(
        out=args.out,
        repeats=getattr(args, "repeats", None) or 7,
        turns=getattr(args, "turns", None) or 200,
        seed=getattr(args, "seed", 0) or 0,
        cache=getattr(args, "cache", None) or str(resolve_cache_dir() / "bench-cost"),
    )


def add_batching_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the batching benchmark (also used by ``deltamem bench batching``)."""
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--sizes", default="1,2,4,8,16", help="conversation counts of the curve")
    parser.add_argument("--turns", type=int, default=None, help="turns per conversation (2)")
    parser.add_argument("--max-tokens", type=int, default=None, help="per reply (default 64)")


def run_batching(args: argparse.Namespace) -> None:
    from . import batching

    batching.main(
        out=args.out,
        sizes=[int(s) for s in str(getattr(args, "sizes", None) or "1,2,4,8,16").split(",")],
        turns=getattr(args, "turns", None) or 2,
        max_tokens=getattr(args, "max_tokens", None) or 64,
    )


if __name__ == "__main__":
    main()

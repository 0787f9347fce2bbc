"""``deltamem``: the command-line entry point (subcommands grow with the project)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deltamem", description="δ-mem for LangChain/LangGraph")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="write a conversation into memory and ask about it")
    demo.add_argument("--max-new-tokens", type=int, default=24)
    demo.add_argument("--seed", type=int, default=0)
    chat = sub.add_parser("chat", help="interactive chat with memory kept in a file")
    from . import chat_cli

    chat_cli.add_arguments(chat)
    bench = sub.add_parser("bench", help="benchmarks printing side-by-side ratios")
    bench.add_argument("which", choices=["core", "turns", "cost", "latency", "batching", "grammar"])
    bench.add_argument("--out")
    bench.add_argument(
        "--repeats", type=int, default=None, help="default: 5 (core), 3 (turns, cost)"
    )
    bench.add_argument(
        "--turns", type=int, default=None, help="cost: turns (500); latency: late turn (200)"
    )
    bench.add_argument("--points", help="cost: measured turns, e.g. 1,10,20")
    bench.add_argument("--cache", help="cost, latency: resume directory")
    bench.add_argument("--sizes", help="batching: conversation counts, e.g. 1,2,4,8,16")
    bench.add_argument("--max-tokens", type=int, default=None, help="batching: per reply")
    from .training import run as train_run

    train_run.add_arguments(sub.add_parser("train", help="train an adapter (CPU by default)"))
    from .episodes import cli as data_module

    data = data_module.add_arguments(
        sub.add_parser("data", help="generate synthetic episodes as JSONL")
    )
    evaluate = sub.add_parser("eval", help="evaluations")
    which_eval = evaluate.add_subparsers(dest="evaluation", required=True)
    from .evaluation import recall

    recall.add_arguments(which_eval.add_parser("recall", help="held-out recall from memory"))
    from .evaluation import locomo

    locomo.add_arguments(which_eval.add_parser("locomo", help="LoCoMo QA against baselines"))
    from .evaluation import perplexity

    perplexity.add_arguments(
        which_eval.add_parser("perplexity", help="plain-text perplexity with an unrelated memory")
    )
    args = parser.parse_args(argv)
    needs = {"train": "train", "eval": "eval", "bench": "bench"}.get(args.command)
    if needs is not None:
        from .extras import MissingExtraError, require

        try:
            require(needs, f"deltamem {args.command}")
        except MissingExtraError as err:
            parser.exit(2, f"deltamem: {err}\n")
    if args.command == "demo":
        from . import demo as demo_module

        demo_module.main(["--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed)])
    elif args.command == "data":
        data_module.run_from_args(args, data)
    elif args.command == "train":
        train_run.run_from_args(args)
    elif args.command == "eval" and args.evaluation == "recall":
        recall.run_from_args(args)
    elif args.command == "eval" and args.evaluation == "locomo":
        locomo.run_from_args(args)
    elif args.command == "eval" and args.evaluation == "perplexity":
        perplexity.run_from_args(args)
    elif args.command == "chat":
        raise SystemExit(chat_cli.run_from_args(args))
    elif args.command == "bench" and args.which == "cost":
        from .bench.__main__ import run_cost

        run_cost(args)
    elif args.command == "bench" and args.which == "grammar":
        from .bench import grammar

        grammar.main(out=args.out, repeats=args.repeats or 5)
    elif args.command == "bench" and args.which == "latency":
        from .bench.__main__ import run_latency

        run_latency(args)
    elif args.command == "bench" and args.which == "batching":
        from .bench.__main__ import run_batching

        run_batching(args)
    elif args.command == "bench" and args.which == "turns":
        from .bench import turns

        turns.main(out=args.out, repeats=args.repeats or 3)
    elif args.command == "bench":
        from .bench import core

        core.main(out=args.out, repeats=args.repeats or 5)


if __name__ == "__main__":
    main()

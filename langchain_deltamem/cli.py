"""``deltamem``: the command-line entry point, a table of front ends.

Every front end is a module with ``add_arguments(parser)`` (its options, defaults included) and
``run_from_args(args)``; a row of `COMMANDS` names the module, its help line and the extra it
needs (`extras`). Only the module of the command asked for is imported, after its extra has
been checked, so ``deltamem --help`` imports none of them and a missing package is named before
anything starts. ``python -m langchain_deltamem.bench NAME`` runs the ``bench`` rows.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One front end: ``deltamem *words``.

    Attributes:
        words: the command words, e.g. ``("eval", "recall")``.
        module: the module, relative to the package, with ``add_arguments`` and
            ``run_from_args``.
        help: the help line.
        extra: the optional dependency group it needs (`extras.EXTRAS`), if any.
        aliases: other names of the last word (old command names kept working).
        passes_parser: ``run_from_args(args, parser)``: the module reports bad option
            combinations through its parser.
    """

    words: tuple[str, ...]
    module: str
    help: str
    extra: str | None = None
    aliases: tuple[str, ...] = ()
    passes_parser: bool = False


GROUPS = {"eval": "evaluations", "bench": "benchmarks printing side-by-side ratios"}
# fmt: off
COMMANDS = (
    Command(("demo",), "demo", "write a conversation into memory and ask about it"),
    Command(("chat",), "chat_cli", "interactive chat with memory kept in a file"),
    Command(("train",), "training.run", "train an adapter (CPU by default)", "train"),
    Command(("data",), "episodes.cli", "generate synthetic episodes as JSONL", passes_parser=True),
    Command(("eval", "recall"), "evaluation.recall", "held-out recall from memory", "eval"),
    Command(("eval", "locomo"), "evaluation.locomo", "LoCoMo QA against baselines", "eval"),
    Command(("eval", "perplexity"), "evaluation.perplexity",
            "plain-text perplexity with an unrelated memory", "eval"),
    Command(("eval", "states"), "evaluation.states",
            "what written states hold: spread and a linear probe per layer"),
    Command(("bench", "core"), "bench.core", "scan, prefill, decode and state-size ratios",
            "bench"),
    Command(("bench", "cost"), "bench.cost",
            "per-turn cost of a long chat: δ-mem vs buffer and vector memory", "bench",
            aliases=("turns",)),
    Command(("bench", "latency"), "bench.latency", "reply latency: δ-mem vs the bare backbone",
            "bench"),
    Command(("bench", "batching"), "bench.batching",
            "concurrent conversations batched vs one at a time", "bench"),
    Command(("bench", "grammar"), "bench.grammar", "JSON grammar engines per decoded token",
            "bench"),
    Command(("bench", "long-session"), "bench.long_session",
            "a 1,000-turn session: time, process memory, state norms", "bench"),
    Command(("bench", "trainer"), "bench.trainer",
            "trainer throughput: the reference loop vs the batched path", "bench"),
)
# fmt: on


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (default: the process's arguments) and run the command it names."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="deltamem", description="δ-mem for LangChain/LangGraph")
    chosen = _add_commands(parser, argv)
    if chosen is None:  # no command, or a group's or the top's --help: argparse answers
        parser.parse_args(argv)
        return
    command, subparser = chosen
    if command.extra is not None:
        from .extras import MissingExtraError, require

        try:
            require(command.extra, f"deltamem {command.words[0]}")
        except MissingExtraError as err:
            parser.exit(2, f"deltamem: {err}\n")
    module = importlib.import_module(f".{command.module}", __package__)
    module.add_arguments(subparser)
    args = parser.parse_args(argv)
    run = module.run_from_args
    result = run(args, subparser) if command.passes_parser else run(args)
    if isinstance(result, int):  # an exit status (chat)
        raise SystemExit(result)


def _add_commands(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[Command, argparse.ArgumentParser] | None:
    """Add a subparser per row (options left empty); return the row ``argv`` names, if any."""
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    chosen = None
    for command in COMMANDS:
        *group, name = command.words
        target = sub
        if group:
            if group[0] not in groups:
                group_parser = sub.add_parser(group[0], help=GROUPS[group[0]])
                groups[group[0]] = group_parser.add_subparsers(dest="which", required=True)
            target = groups[group[0]]
        subparser = target.add_parser(
            name, aliases=list(command.aliases), help=command.help, description=command.help
        )
        given = argv[: len(command.words)]
        if given[:-1] == list(group) and given[-1:] in ([name], *([a] for a in command.aliases)):
            chosen = (command, subparser)
    return chosen


if __name__ == "__main__":
    main()

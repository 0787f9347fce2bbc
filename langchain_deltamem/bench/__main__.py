"""``python -m langchain_deltamem.bench core [--out FILE]``."""

from __future__ import annotations

import argparse

from . import core


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m langchain_deltamem.bench")
    sub = parser.add_subparsers(dest="which", required=True)
    core_parser = sub.add_parser("core", help="scan, prefill, decode and state-size ratios")
    core_parser.add_argument("--out", help="also write the markdown table to this file")
    core_parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.which == "core":
        core.main(out=args.out, repeats=args.repeats)


if __name__ == "__main__":
    main()

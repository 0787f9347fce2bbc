"""Tests for ``langchain_deltamem.state``: serialisation, validation, ownership, batching.

Every state here is written by a real forward pass of a tiny Llama (hidden 64, 2 layers,
vocab 128) with δ-mem attached, so the bytes carry real fingerprints and non-trivial values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
import torch
from safetensors.torch import save as safetensors_save
from transformers import LlamaConfig, LlamaForCausalLM

from langchain_deltamem.config import DeltaMemConfig
from langchain_deltamem.injection import AttachedAdapter, attach
from langchain_deltamem.state import MemoryState, MemoryStateError, state_bytes

TSW = DeltaMemConfig(write_granularity="token")


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


def _attached(
    backbone_seed: int = 0, adapter_seed: int = 0, config: DeltaMemConfig = TSW
) -> tuple[LlamaForCausalLM, AttachedAdapter]:
    model = _tiny_llama(backbone_seed)
    return model, attach(model, config, seed=adapter_seed)


def _tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def _written(handle: AttachedAdapter, batch: int = 2, length: int = 9) -> MemoryState:
    state = handle.new_state(batch)
    with torch.no_grad(), handle.memory(state, write=True):
        handle.model(_tokens(batch, length))
    return state


def _assert_same_state(a: MemoryState, b: MemoryState) -> None:
    assert a.layer_ids == b.layer_ids
    assert a.config == b.config
    assert a.fingerprint == b.fingerprint
    assert len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers, strict=True):
        assert x.dtype == y.dtype == torch.float32
        assert torch.equal(x, y)
    assert torch.equal(a.write_counts, b.write_counts)


@pytest.fixture(scope="module")
def attached() -> tuple[LlamaForCausalLM, AttachedAdapter]:
    return _attached()


@pytest.fixture(scope="module")
def written(attached: tuple[LlamaForCausalLM, AttachedAdapter]) -> MemoryState:
    return _written(attached[1])


def _metadata(state: MemoryState) -> dict[str, object]:
    """The JSON body a state's single ``deltamem`` metadata entry holds."""
    return {
        "format": "langchain-deltamem/memory-state",
        "version": 1,
        "fingerprint": state.fingerprint,
        "layer_ids": list(state.layer_ids),
        "config": state.config.to_json_dict(),
    }


def _save(tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> bytes:
    return safetensors_save(tensors, metadata={"deltamem": json.dumps(meta)})


def _tensors(state: MemoryState) -> dict[str, torch.Tensor]:
    return {
        "states": torch.stack(state.layers).contiguous(),
        "write_counts": state.write_counts.contiguous(),
    }


# ----------------------------------------------------------------------------------------
# Round trip and size
# ----------------------------------------------------------------------------------------


def test_written_state_is_not_trivial(written: MemoryState) -> None:
    assert all(bool(t.abs().sum() > 0) for t in written.layers)
    assert written.write_counts.tolist() == [[9], [9]]


def test_bytes_round_trip_is_bit_exact(
    attached: tuple[LlamaForCausalLM, AttachedAdapter], written: MemoryState
) -> None:
    data = written.to_bytes()
    assert isinstance(data, bytes)
    _assert_same_state(MemoryState.from_bytes(data), written)
    _assert_same_state(MemoryState.from_bytes(bytearray(data)), written)
    _assert_same_state(MemoryState.from_bytes(memoryview(data)), written)
    _, handle = attached
    loaded = handle.load_state(data)
    _assert_same_state(loaded, written)
    _assert_same_state(MemoryState.from_bytes(loaded.to_bytes()), written)


def test_loaded_state_reads_like_the_original(
    attached: tuple[LlamaForCausalLM, AttachedAdapter], written: MemoryState
) -> None:
    model, handle = attached
    loaded = handle.load_state(written.to_bytes())
    question = _tokens(2, 5, seed=7)
    with torch.no_grad():
        with handle.memory(written):
            expected = model(question).logits
        with handle.memory(loaded):
            got = model(question).logits
        plain = model(question).logits
    assert torch.equal(expected, got)
    assert not torch.equal(expected, plain)  # the memory really changes the output


def test_nbytes_per_conversation() -> None:
    config = DeltaMemConfig()
    state = MemoryState.zeros(config, range(30), "backbone:x/adapter:y", batch_size=3)
    assert state.nbytes_per_conversation == 30 * 1 * 8 * 8 * 4 == 7_680
    assert state_bytes(config, 30) == 7_680
    msw = DeltaMemConfig(num_states=4)
    assert MemoryState.zeros(msw, range(30), "f").nbytes_per_conversation == 30_720
    assert state_bytes(msw, 30) == 30_720


def test_serialised_size_is_dominated_by_the_state(written: MemoryState) -> None:
    payload = written.batch_size * written.nbytes_per_conversation
    assert payload == 2 * 2 * 8 * 8 * 4
    assert payload < len(written.to_bytes()) < payload + 4096


# ----------------------------------------------------------------------------------------
# Corrupt bytes
# ----------------------------------------------------------------------------------------


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _header_span(data: bytes) -> tuple[int, int]:
    return 8, 8 + int.from_bytes(data[:8], "little")


def _find(data: bytes, needle: bytes) -> int:
    start, end = _header_span(data)
    index = data.index(needle, start, end)
    return index


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty": (lambda d: b"", "too short"),
    "seven-bytes": (lambda d: d[:7], "too short"),
    "truncated-header": (lambda d: d[:100], "truncated"),
    "truncated-data": (lambda d: d[:-1], "corrupt"),
    "half": (lambda d: d[: len(d) // 2], "corrupt"),
    "garbage": (lambda d: bytes(range(256)) * 4, "corrupt"),
    "garbage-small-header": (lambda d: (5).to_bytes(8, "little") + b"hello world", "header"),
    "non-utf8-header": (lambda d: (4).to_bytes(8, "little") + b"\xff\xfe\xfd\xfc", "header"),
    "zero-length-header": (lambda d: bytes(8) + d[8:], "header"),
    "length-prefix-bit": (lambda d: _flip(d, 0, 3), "corrupt"),
    "length-prefix-high-bit": (lambda d: _flip(d, 7, 7), "truncated"),
    "opening-brace": (lambda d: _flip(d, 8, 1), "header"),
    "dtype-tag": (lambda d: _flip(d, _find(d, b'"F32"') + 2, 2), "corrupt"),
    "shape-digit": (lambda d: _flip(d, _find(d, b'"shape":[2,2,1,8,8]') + 13, 0), "corrupt"),
    "offset-digit": (lambda d: _flip(d, _find(d, b'"data_offsets":[16,1040]') + 17, 1), "corrupt"),
    "format-tag": (lambda d: _flip(d, _find(d, b"langchain-deltamem/memory") + 2, 0), "format"),
    "version-digit": (lambda d: _flip(d, _find(d, b'\\"version\\":1}') + 12, 1), "version"),
    "metadata-json": (lambda d: _flip(d, _find(d, b'"deltamem":"{') + 12, 0), "corrupt"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_bytes_are_refused(name: str, written: MemoryState) -> None:
    corrupt, match = CORRUPTIONS[name]
    data = written.to_bytes()
    bad = corrupt(data)
    assert bad != data
    with pytest.raises(MemoryStateError, match=match):
        MemoryState.from_bytes(bad)


def test_every_single_bit_flip_of_the_header_is_refused_by_the_handle(
    attached: tuple[LlamaForCausalLM, AttachedAdapter], written: MemoryState
) -> None:
    """A damaged header either fails to parse or no longer matches the model: never loaded."""
    _, handle = attached
    data = written.to_bytes()
    _, end = _header_span(data)
    accepted = []
    for index in range(end):
        for bit in range(8):
            try:
                loaded = handle.load_state(_flip(data, index, bit))
            except MemoryStateError:
                continue
            accepted.append(
                (
                    chr(data[index]) if index >= 8 else "<length>",
                    chr(data[index] ^ (1 << bit)) if index >= 8 else bit,
                    loaded.layer_ids,
                    "same config" if loaded.config == handle.config else "other config",
                )
            )
    assert accepted == [], f"{len(accepted)} damaged headers were accepted, e.g. {accepted[:6]}"


def test_memory_state_error_is_a_value_error() -> None:
    assert issubclass(MemoryStateError, ValueError)
    with pytest.raises(ValueError):
        MemoryState.from_bytes(b"")
    with pytest.raises(MemoryStateError, match="bytes"):
        MemoryState.from_bytes("not bytes")  # type: ignore[arg-type]


def _resaved(
    state: MemoryState,
    tensors: dict[str, torch.Tensor] | None = None,
    **metadata: object,
) -> bytes:
    meta = {**_metadata(state), **metadata}
    return _save(tensors if tensors is not None else _tensors(state), meta)


def test_resaving_by_hand_is_accepted(written: MemoryState) -> None:
    # The hand-built files below differ from a valid one in exactly one respect.
    _assert_same_state(MemoryState.from_bytes(_resaved(written)), written)


TENSOR_DAMAGE: dict[str, tuple[Callable[[dict[str, torch.Tensor]], None], str]] = {
    "renamed-states": (lambda t: t.update(state=t.pop("states")), "tensors"),
    "renamed-counts": (lambda t: t.update(counts=t.pop("write_counts")), "tensors"),
    "extra-tensor": (lambda t: t.update(extra=torch.zeros(1)), "tensors"),
    "missing-counts": (lambda t: t.pop("write_counts"), "tensors"),
    "states-fp16": (lambda t: t.update(states=t["states"].half()), "dtype"),
    "states-fp64": (lambda t: t.update(states=t["states"].double()), "dtype"),
    "counts-int32": (lambda t: t.update(write_counts=t["write_counts"].int()), "dtype"),
    "counts-float": (lambda t: t.update(write_counts=t["write_counts"].float()), "dtype"),
    "one-layer-too-few": (lambda t: t.update(states=t["states"][:1].clone()), "shape"),
    "states-4d": (lambda t: t.update(states=t["states"][:, :, 0].clone()), "shape"),
    "wrong-rank": (lambda t: t.update(states=t["states"][..., :4, :4].clone()), "shape"),
    "wrong-num-states": (lambda t: t.update(states=t["states"].repeat(1, 1, 2, 1, 1)), "shape"),
    "counts-wrong-batch": (lambda t: t.update(write_counts=t["write_counts"][:1].clone()), "shape"),
    "counts-wrong-h": (lambda t: t.update(write_counts=t["write_counts"].repeat(1, 2)), "shape"),
    "negative-count": (lambda t: t.update(write_counts=-t["write_counts"]), "negative"),
    "nan": (lambda t: t["states"].view(-1).__setitem__(5, math.nan), "NaN"),
    "inf": (lambda t: t["states"].view(-1).__setitem__(17, math.inf), "Inf"),
    "minus-inf": (lambda t: t["states"].view(-1).__setitem__(-1, -math.inf), "Inf"),
}


@pytest.mark.parametrize("name", list(TENSOR_DAMAGE))
def test_wrong_tensors_are_refused(name: str, written: MemoryState) -> None:
    damage, match = TENSOR_DAMAGE[name]
    tensors = {k: v.clone() for k, v in _tensors(written).items()}
    damage(tensors)
    with pytest.raises(MemoryStateError, match=match):
        MemoryState.from_bytes(_resaved(written, tensors))


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        pytest.param({"format": "langchain-deltamem/adapter"}, "format", id="wrong-format"),
        pytest.param({"format": ""}, "format", id="empty-format"),
        pytest.param({"version": 2}, "version", id="future-version"),
        pytest.param({"version": 0}, "version", id="version-0"),
        pytest.param({"version": "one"}, "version", id="version-text"),
        pytest.param({"layer_ids": "[0, 1"}, "corrupt", id="layer-ids-json"),
        pytest.param({"layer_ids": None}, "corrupt", id="layer-ids-null"),
        pytest.param({"layer_ids": [0, 1, 2]}, "3 layers", id="layer-ids-count"),
        pytest.param({"config": {}}, "corrupt", id="config-empty"),
        pytest.param({"config": "not json"}, "corrupt", id="config-garbage"),
    ],
)
def test_wrong_metadata_is_refused(
    metadata: dict[str, object], match: str, written: MemoryState
) -> None:
    with pytest.raises(MemoryStateError, match=match):
        MemoryState.from_bytes(_resaved(written, **metadata))


@pytest.mark.parametrize("key", ["format", "version", "fingerprint", "layer_ids", "config"])
def test_missing_metadata_is_refused(key: str, written: MemoryState) -> None:
    meta = _metadata(written)
    del meta[key]
    with pytest.raises(MemoryStateError):
        MemoryState.from_bytes(_save(_tensors(written), meta))


def test_no_metadata_at_all_is_refused(written: MemoryState) -> None:
    with pytest.raises(MemoryStateError, match="metadata"):
        MemoryState.from_bytes(safetensors_save(_tensors(written)))


# ----------------------------------------------------------------------------------------
# Ownership: a state only loads into the model and adapter that wrote it
# ----------------------------------------------------------------------------------------


def test_load_state_refuses_another_adapter(written: MemoryState) -> None:
    _, other = _attached(backbone_seed=0, adapter_seed=1)
    assert other.fingerprint().split("/")[0] == written.fingerprint.split("/")[0]
    with pytest.raises(MemoryStateError, match="another adapter") as info:
        other.load_state(written.to_bytes())
    assert "another backbone" not in str(info.value)
    with pytest.raises(MemoryStateError, match="another adapter"):
        with other.memory(written):
            pass


def test_load_state_refuses_another_backbone(written: MemoryState) -> None:
    model, other = _attached(backbone_seed=1, adapter_seed=0)
    backbone = [p for name, p in model.named_parameters() if "delta_mem" not in name]
    reference = list(_tiny_llama(0).parameters())
    assert [p.shape for p in backbone] == [p.shape for p in reference]
    pairs = zip(backbone, reference, strict=True)
    assert not any(torch.equal(p, q) for p, q in pairs if p.dim() == 2)
    with pytest.raises(MemoryStateError, match="another backbone"):
        other.load_state(written.to_bytes())
    with pytest.raises(MemoryStateError, match="another backbone"):
        with other.memory(written):
            pass


def test_from_bytes_checks_expected_fingerprint(written: MemoryState) -> None:
    data = written.to_bytes()
    _assert_same_state(
        MemoryState.from_bytes(data, expected_fingerprint=written.fingerprint), written
    )
    backbone, adapter = written.fingerprint.split("/")
    with pytest.raises(MemoryStateError, match="another adapter"):
        MemoryState.from_bytes(data, expected_fingerprint=f"{backbone}/adapter:0000")
    with pytest.raises(MemoryStateError, match="another backbone"):
        MemoryState.from_bytes(data, expected_fingerprint=f"backbone:0000/{adapter}")


def test_fingerprint_follows_adapter_updates(
    attached: tuple[LlamaForCausalLM, AttachedAdapter],
) -> None:
    _, handle = _attached()
    before = handle.fingerprint()
    assert before == attached[1].fingerprint()  # same backbone, same seed, same config
    state = _written(handle)
    with torch.no_grad():
        handle.layers[0].beta_bias.add_(0.5)
    assert handle.fingerprint() != before
    with pytest.raises(MemoryStateError, match="another adapter"):
        handle.load_state(state.to_bytes())


@pytest.mark.parametrize(
    ("config", "layer_ids", "match"),
    [
        pytest.param(DeltaMemConfig(rank=4, write_granularity="token"), (0, 1), "rank", id="rank"),
        pytest.param(
            DeltaMemConfig(num_states=2, write_granularity="token"),
            (0, 1),
            "2 states",
            id="H",
        ),
        pytest.param(TSW, (0,), "layers", id="fewer-layers"),
        pytest.param(TSW, (1, 0), "layers", id="other-order"),
        pytest.param(TSW, (0, 1, 2), "layers", id="more-layers"),
    ],
)
def test_memory_refuses_incompatible_states(
    attached: tuple[LlamaForCausalLM, AttachedAdapter],
    config: DeltaMemConfig,
    layer_ids: tuple[int, ...],
    match: str,
) -> None:
    _, handle = attached
    state = MemoryState.zeros(config, layer_ids, handle.fingerprint())
    with pytest.raises(MemoryStateError, match=match):
        with handle.memory(state):
            pass


def test_load_state_refuses_a_state_written_for_other_layers(
    attached: tuple[LlamaForCausalLM, AttachedAdapter],
) -> None:
    """Same fingerprint, but the bytes claim other layers: refuse on load, not later."""
    _, handle = attached
    state = MemoryState.zeros(TSW, (1, 0), handle.fingerprint())
    with pytest.raises(MemoryStateError, match="layers"):
        handle.load_state(state.to_bytes())


def test_load_state_refuses_a_state_of_another_rank(
    attached: tuple[LlamaForCausalLM, AttachedAdapter],
) -> None:
    _, handle = attached
    config = DeltaMemConfig(rank=4, write_granularity="token")
    state = MemoryState.zeros(config, handle.layer_ids, handle.fingerprint())
    with pytest.raises(MemoryStateError, match="rank"):
        handle.load_state(state.to_bytes())


def test_memory_refuses_batch_mismatch(attached: tuple[LlamaForCausalLM, AttachedAdapter]) -> None:
    model, handle = attached
    state = handle.new_state(2)
    with pytest.raises(MemoryStateError, match="batch"):
        with torch.no_grad(), handle.memory(state):
            model(_tokens(3, 4))


def test_construction_is_validated() -> None:
    config = DeltaMemConfig()
    good = torch.zeros(1, 1, 8, 8)
    with pytest.raises(MemoryStateError, match="layer ids"):
        MemoryState([good], (0, 1), config, "f")
    with pytest.raises(MemoryStateError, match="at least one"):
        MemoryState([], (), config, "f")
    with pytest.raises(MemoryStateError, match="shape"):
        MemoryState([torch.zeros(1, 1, 4, 4)], (0,), config, "f")
    with pytest.raises(MemoryStateError, match="shape"):
        MemoryState([good, torch.zeros(2, 1, 8, 8)], (0, 1), config, "f")
    with pytest.raises(MemoryStateError, match="fp32"):
        MemoryState([good.double()], (0,), config, "f")
    with pytest.raises(MemoryStateError, match="write_counts"):
        MemoryState([good], (0,), config, "f", torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(MemoryStateError, match="batch_size"):
        MemoryState.zeros(config, (0,), "f", batch_size=0)


# ----------------------------------------------------------------------------------------
# Copies, batching, statistics
# ----------------------------------------------------------------------------------------


def test_clone_is_independent(
    attached: tuple[LlamaForCausalLM, AttachedAdapter], written: MemoryState
) -> None:
    model, handle = attached
    snapshot = MemoryState.from_bytes(written.to_bytes())
    copy = written.clone()
    _assert_same_state(copy, written)
    assert all(
        a.data_ptr() != b.data_ptr() for a, b in zip(copy.layers, written.layers, strict=True)
    )
    copy.layers[0].add_(1.0)
    copy.layers[1][0].zero_()
    copy.write_counts += 5
    _assert_same_state(written, snapshot)
    with torch.no_grad(), handle.memory(copy, write=True):
        model(_tokens(2, 4, seed=3))
    _assert_same_state(written, snapshot)


def test_read_only_use_leaves_the_state_unchanged(
    attached: tuple[LlamaForCausalLM, AttachedAdapter], written: MemoryState
) -> None:
    model, handle = attached
    snapshot = written.clone()
    with torch.no_grad(), handle.memory(written):
        model(_tokens(2, 6, seed=4))
    _assert_same_state(written, snapshot)


def test_clone_detaches_from_autograd(written: MemoryState) -> None:
    tracked = written.clone()
    tracked.layers[0] = tracked.layers[0].clone().requires_grad_(True) * 2
    assert tracked.layers[0].requires_grad
    copy = tracked.clone()
    assert not any(t.requires_grad for t in copy.layers)
    assert not any(t.requires_grad for t in tracked.detach().layers)


def test_select_concat_round_trip(attached: tuple[LlamaForCausalLM, AttachedAdapter]) -> None:
    _, handle = attached
    state = _written(handle, batch=3, length=6)
    parts = [state.select(0), state.select([1, 2])]
    assert [p.batch_size for p in parts] == [1, 2]
    _assert_same_state(MemoryState.concat(parts), state)
    _assert_same_state(MemoryState.concat([state.select(i) for i in range(3)]), state)
    reordered = MemoryState.concat([state.select(2), state.select([0, 1])])
    _assert_same_state(reordered.select([1, 2, 0]), state)
    _assert_same_state(state.select(-1), state.select(2))
    # select copies
    part = state.select([0])
    part.layers[0].add_(1.0)
    assert not torch.equal(part.layers[0][0], state.layers[0][0])


def test_select_and_concat_errors(attached: tuple[LlamaForCausalLM, AttachedAdapter]) -> None:
    _, handle = attached
    state = handle.new_state(2)
    with pytest.raises(MemoryStateError, match="out of range"):
        state.select(2)
    with pytest.raises(MemoryStateError, match="out of range"):
        state.select([0, -3])
    with pytest.raises(MemoryStateError, match="at least one"):
        MemoryState.concat([])
    foreign = MemoryState.zeros(TSW, handle.layer_ids, "backbone:0/adapter:0")
    with pytest.raises(MemoryStateError, match="another"):
        MemoryState.concat([state, foreign])
    other_layers = MemoryState.zeros(TSW, (0,), handle.fingerprint())
    with pytest.raises(MemoryStateError, match="layers"):
        MemoryState.concat([state, other_layers])


def test_stats(written: MemoryState) -> None:
    rows = written.stats()
    assert [row["layer"] for row in rows] == list(written.layer_ids)
    for row, tensor in zip(rows, written.layers, strict=True):
        norms = torch.tensor(row["norm"])
        max_abs = torch.tensor(row["max_abs"])
        assert norms.shape == max_abs.shape == (written.batch_size, written.config.num_states)
        expected = torch.linalg.matrix_norm(tensor)
        torch.testing.assert_close(norms, expected)
        torch.testing.assert_close(max_abs, tensor.abs().amax(dim=(-1, -2)))
        assert bool((norms > 0).all())
    empty = MemoryState.zeros(DeltaMemConfig(num_states=4), (3, 5, 7), "f", batch_size=2).stats()
    assert [row["layer"] for row in empty] == [3, 5, 7]
    assert all(row["norm"] == [[0.0] * 4] * 2 for row in empty)


def test_equal_states_serialise_to_equal_bytes(written: MemoryState) -> None:
    """Checkpoints compare memory by bytes, so serialisation must be deterministic."""
    assert written.to_bytes() == written.clone().to_bytes()
    assert MemoryState.from_bytes(written.to_bytes()).to_bytes() == written.to_bytes()

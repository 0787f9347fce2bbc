"""Hostile and broken input, as property-based tests with hypothesis.

Each family starts from a valid artefact (memory-state bytes, an adapter directory in either
format, a `DeltaMemory` export, a LangGraph store entry, the graph checkpoint field), damages it
(truncation, bit and byte flips, inserted/appended/deleted bytes, oversized or nested-bomb
headers, re-serialised tensors with wrong shapes, dtypes, NaN/Inf, another backbone's or
adapter's content, broken or missing JSON keys) and checks one property:

* the input is refused with the project's documented error type (`MemoryStateError`,
  `AdapterFileError`, `MemoryRecordError`), whose message names the problem, and whatever
  already held a memory or a model is exactly as before (exported bytes, module identity);
* or, only if the damage did not change meaning (e.g. a dropped optional checksum), the result
  equals the original bit for bit; never a half-built, NaN or different state.

Legacy records, snapshots and adapter configs (written before checksums existed) get structural
damage with the checksum removed, so that the validators' own refusals are what is tested. The
reference adapter config has no checksum at all: a small independent table says what each
translated key must load as.

Any other exception type fails the test. States and adapters use a tiny vocab-128 Llama; the
memory, store and graph families use the tiny engine on the embedded tokenizer
(`reliability_support`). Outcome counts show with ``--hypothesis-show-statistics``.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pytest
import torch
from helpers import build_model
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.store.sqlite import SqliteStore
from postgres_support import temporary_database
from reliability_support import build_tiny_engine, register_engine, unregister_engine
from safetensors.torch import load_file, save_file
from safetensors.torch import save as safetensors_save
from torch import nn

from langchain_deltamem.adapter_files import AdapterFileError, load_adapter, save_adapter
from langchain_deltamem.chat_model import ChatDeltaMem
from langchain_deltamem.config import DeltaMemConfig
from langchain_deltamem.engine import DeltaMemEngine
from langchain_deltamem.graph import GraphMemory
from langchain_deltamem.injection import AttachedAdapter, attach
from langchain_deltamem.memory import DEFAULT_NAMESPACE, DeltaMemory, MemoryRecordError
from langchain_deltamem.state import MemoryState, MemoryStateError

pytestmark = pytest.mark.slow  # the memory families use the embedded tokenizer

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ_SLOW = settings(FUZZ, max_examples=120)  # families that build a model per example
FUZZ_LEGACY = settings(FUZZ, max_examples=100)  # validators only: fewer kinds of damage

TSW = DeltaMemConfig(write_granularity="token")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


def _any(*patterns: str) -> str:
    return "|".join(f"(?:{p})" for p in patterns)


# A refusal must name the specific problem its damage causes. Every message starts with a
# generic "corrupt ..." (or the file's path), which proves nothing: the patterns below name
# the problems themselves, per kind of damage (searched case-insensitively).
CHECKSUM = r"checksum mismatch"
STATE_SIZE = r"bytes is too short|truncated header|bytes is too large"
STATE_HEADER = r"state header: |no δ-mem metadata|state metadata: |metadata is not an object"
STATE_PARSE = r"Error while deserializing"  # safetensors' own parser
STATE_META = (
    r"not a memory state: format=|memory state version |metadata field|DeltaMemConfig|"
    r"config version|not a langchain-deltamem config|layer_ids |fingerprint |layer ids"
)
STATE_TENSORS = r"tensors \[|dtypes |states? shape |write_counts shape |layer tensors"
STATE_VALUES = r"NaN or Inf|negative write counts"
STATE_ANY = _any(
    STATE_SIZE, STATE_HEADER, STATE_PARSE, STATE_META, STATE_TENSORS, STATE_VALUES, CHECKSUM
)
STATE_BY_DAMAGE = {
    "truncate": _any(r"too short|truncated header", STATE_PARSE),
    "length-field": _any(r"truncated header|too large", STATE_HEADER, STATE_PARSE),
    "nested-header": _any(r"too large", STATE_HEADER),
    "huge-header": r"too large",
    "append": STATE_PARSE,  # bytes past the tensors
    "flip-tail": _any(STATE_VALUES, CHECKSUM),  # the tensor payload
    "add-key": r"unknown metadata field|Extra inputs are not permitted",
}
FOREIGN_STATE = {
    "adapter": r"another adapter\b",
    "backbone": r"another backbone",
    # a rank-4 adapter's state: its config is part of the adapter fingerprint, which
    # `from_bytes` checks first, so the message says adapter (never "rank 4")
    "config": r"another adapter\b",
}
FOREIGN_RECORD = {k: FOREIGN_STATE[k] for k in ("adapter", "backbone")}

ADAPTER_FIT = (
    r"does not fit the model|has shape|not a finite floating-point tensor|"
    r"non-zero but delta_heads|needs the q or o head"
)
ADAPTER_JSON = r"is not valid JSON|must hold a JSON object"
OWN_WEIGHTS_PARSE = r"is corrupt: Error while deserializing"
REF_WEIGHTS_READ = r"CRC32 mismatch|not a readable tensor file|must hold a dict of name"
OWN_CONFIG_ANY = _any(
    ADAPTER_JSON,
    r"unknown field|format |unsupported (config )?version|validation error|must be an object",
    r"trained on backbone|not a langchain-deltamem config",
    CHECKSUM,
    ADAPTER_FIT,
)
ADAPTER_BY_DAMAGE = {
    "own weights deleted": r"is missing",
    "own weights truncate": OWN_WEIGHTS_PARSE,
    "own weights append": OWN_WEIGHTS_PARSE,
    "own weights huge-header": _any(OWN_WEIGHTS_PARSE, CHECKSUM),
    "own weights flip-tail": _any(CHECKSUM, r"not a finite"),
    "reference weights deleted": r"is missing",
    "own config deleted": r"holds no adapter",
    "own config empty": ADAPTER_JSON,
    "own config non-utf8": ADAPTER_JSON,
    "own config nested": ADAPTER_JSON,
    # top level or in the config: unknown; in the backbone record: only the checksum tells
    "own config add-key": _any(r"unknown field|Extra inputs are not permitted", CHECKSUM),
}

RECORD_TEXT = r"not valid JSON|unreadable entry"  # the JSON (or the store's copy) is broken
RECORD_SHAPE = (
    r"not a δ-mem memory (record|snapshot)|unsupported (record|snapshot) version|unknown field|"
    r"missing field|\(state: |segment log|message keys|'state' must be bytes|'keys' must be"
)
RECORD_ANY = _any(RECORD_TEXT, RECORD_SHAPE, STATE_ANY, *FOREIGN_RECORD.values())
KEYS_PROBLEM = r"\(message keys\)|'keys' must be a list of at most 256 message keys"
RECORD_BY_DAMAGE = {
    "empty": RECORD_TEXT,
    "nested": _any(RECORD_TEXT, r"not a δ-mem memory record"),
    "log-char": _any(r"\(segment log\)", CHECKSUM),
    "key-char": _any(KEYS_PROBLEM, CHECKSUM),
    "state": STATE_ANY,
    "foreign": CHECKSUM,  # a snapshot's checksum covers its state
    "many-keys": KEYS_PROBLEM,
    "type": r"not a δ-mem memory snapshot",
    # a JSON edit may write NaN or Infinity: JSON to Python, not to the SQLite store's orjson
    "add-key": _any(r"unknown field", RECORD_TEXT),
    "drop-state": r"missing fields \['state'\]|'state' must be bytes",
    "set-state": _any(r"\(state: |'state' must be bytes", STATE_ANY, RECORD_TEXT),
    **{f"foreign-{k}": v for k, v in FOREIGN_RECORD.items()},
}


def _state_problem(label: str) -> str:
    """What a refused memory state's message must name, given its damage."""
    if label in STATE_BY_DAMAGE:
        return STATE_BY_DAMAGE[label]
    kind, _, key = label.partition("-")
    if kind in ("drop", "set"):  # a metadata key: named, or the checksum notices
        return _any(re.escape(key), re.escape(key.replace("_", " ")), CHECKSUM, STATE_TENSORS)
    return STATE_ANY


def _adapter_problem(label: str) -> str:
    """What a refused adapter's message must name, given ``"<format> <file> <damage>"``."""
    if label in ADAPTER_BY_DAMAGE:
        return ADAPTER_BY_DAMAGE[label]
    fmt, file, damage = label.split(" ", 2)
    kind, _, key = damage.partition("-")
    if file == "config" and kind in ("drop", "set"):
        return _any(re.escape(key), CHECKSUM, r"trained on backbone", ADAPTER_FIT)
    if file == "config":
        return OWN_CONFIG_ANY
    if fmt == "own":
        return _any(OWN_WEIGHTS_PARSE, CHECKSUM, ADAPTER_FIT)
    return _any(REF_WEIGHTS_READ, ADAPTER_FIT)


def _record_problem(label: str) -> str:
    """What a refused record or snapshot's message must name, given its damage."""
    if label in RECORD_BY_DAMAGE:
        return RECORD_BY_DAMAGE[label]
    kind, _, key = label.partition("-")
    if kind in ("drop", "set"):
        return _any(re.escape(key), CHECKSUM, r"not a δ-mem memory (record|snapshot)", RECORD_TEXT)
    return RECORD_ANY


def _assert_names(problem: str, err: BaseException, label: str) -> None:
    assert re.search(problem, str(err), re.IGNORECASE), f"{label}: unhelpful message {err!s:.300}"


# ------------------------------------------------------------------------------------------
# Damage strategies
# ------------------------------------------------------------------------------------------


def _header_end(data: bytes) -> int:
    """End of a safetensors header (8-byte length prefix + JSON)."""
    return min(len(data), 8 + int.from_bytes(data[:8], "little"))


@st.composite
def byte_damage(draw: st.DrawFn, data: bytes, safetensors: bool = True) -> tuple[str, bytes]:
    """One random corruption of ``data``; returns a label (for statistics) and the bytes."""
    kinds = ["truncate", "flip-bit", "xor-byte", "append", "insert", "delete", "flip-tail"]
    if safetensors:
        kinds += ["flip-header-bit", "length-field", "nested-header", "huge-header"]
    kind = draw(st.sampled_from(kinds))
    n = len(data)
    out = bytearray(data)
    if kind == "truncate":
        out = out[: draw(st.integers(0, n - 1))]
    elif kind in ("flip-bit", "flip-header-bit", "flip-tail"):
        lo, hi = 0, n - 1
        if kind == "flip-header-bit":
            hi = _header_end(data) - 1
        elif kind == "flip-tail":  # the tensor payload (or a file's end)
            lo = _header_end(data) if safetensors else n // 2
        out[draw(st.integers(lo, hi))] ^= 1 << draw(st.integers(0, 7))
    elif kind == "xor-byte":
        out[draw(st.integers(0, n - 1))] ^= draw(st.integers(1, 255))
    elif kind == "append":
        out += draw(st.binary(min_size=1, max_size=64))
    elif kind == "insert":
        at = draw(st.integers(0, n))
        out[at:at] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        at = draw(st.integers(0, n - 1))
        del out[at : at + draw(st.integers(1, 32))]
    elif kind == "length-field":
        value = draw(
            st.sampled_from([0, 1, 7, n, n - 8, n - 7, 2**31, 2**63, 2**64 - 1])
            | st.integers(0, 2**64 - 1)
        )
        assume(value != int.from_bytes(data[:8], "little"))
        out[:8] = value.to_bytes(8, "little")
    elif kind == "nested-header":
        depth = draw(st.integers(50, 200_000))
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        header = opener * depth
        out = bytearray(len(header).to_bytes(8, "little") + header + data[_header_end(data) :])
    elif kind == "huge-header":  # valid JSON padded with spaces: 1-4 MiB of header
        end = _header_end(data)
        pad = draw(st.integers(1 << 20, 1 << 22))
        header = data[8:end] + b" " * pad
        out = bytearray(len(header).to_bytes(8, "little") + header + data[end:])
    mutated = bytes(out)
    assume(mutated != data)
    return kind, mutated


@st.composite
def text_damage(draw: st.DrawFn, text: bytes) -> tuple[str, bytes]:
    """Corruptions of a JSON file's text: byte damage plus nesting bombs and bad encodings."""
    kind = draw(st.sampled_from(["bytes", "nested", "non-utf8", "empty"]))
    if kind == "bytes":
        return draw(byte_damage(text, safetensors=False))
    if kind == "nested":
        depth = draw(st.integers(50, 200_000))
        return kind, b"[" * depth + b"]" * depth
    if kind == "non-utf8":
        at = draw(st.integers(0, len(text)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))
        return kind, text[:at] + bad + text[at:]
    return kind, b""


@st.composite
def json_damage(draw: st.DrawFn, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A structural change to a JSON object: a key dropped, set to any value, or added, at the
    top level or one level down."""
    body = json.loads(json.dumps(body))
    target = body
    nested = [k for k, v in body.items() if isinstance(v, dict) and v]
    if nested and draw(st.booleans()):
        target = body[draw(st.sampled_from(sorted(nested)))]
    kind = draw(st.sampled_from(["drop", "set", "add"]))
    if kind == "add":
        name = draw(st.text(min_size=1, max_size=8))
        assume(name not in target)
        target[name] = draw(JSON_VALUES)
    else:
        name = draw(st.sampled_from(sorted(target)))
        if kind == "drop":
            del target[name]
        else:
            target[name] = draw(JSON_VALUES)
    return f"{kind}-{name}" if kind != "add" else "add-key", body


def _flip_char(draw: st.DrawFn, text: str) -> str:
    """``text`` with one character's code point changed by one bit (still a str)."""
    assume(text)
    at = draw(st.integers(0, len(text) - 1))
    code = ord(text[at]) ^ (1 << draw(st.integers(0, 6)))
    assume(not 0xD800 <= code <= 0xDFFF)
    return text[:at] + chr(code) + text[at + 1 :]


# ------------------------------------------------------------------------------------------
# Memory-state bytes
# ------------------------------------------------------------------------------------------


def _written(
    handle: AttachedAdapter, batch: int = 2, length: int = 9, seed: int = 1
) -> MemoryState:
    tokens = torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(seed))
    state = handle.new_state(batch)
    with torch.no_grad(), handle.memory(state, write=True):
        handle.model(tokens)
    return state


@pytest.fixture(scope="module")
def state_handle() -> AttachedAdapter:
    return attach(build_model("llama", seed=0), TSW, seed=0)


@pytest.fixture(scope="module")
def original_state(state_handle: AttachedAdapter) -> MemoryState:
    state = _written(state_handle)
    assert all(bool(t.abs().sum() > 0) for t in state.layers)
    return state


@pytest.fixture(scope="module")
def foreign_states() -> dict[str, bytes]:
    """States written by another adapter, another backbone and another adapter config."""
    return {
        "adapter": _written(attach(build_model("llama", seed=0), TSW, seed=1)).to_bytes(),
        "backbone": _written(attach(build_model("llama", seed=1), TSW, seed=0)).to_bytes(),
        "config": _written(
            attach(build_model("llama", seed=0), TSW.model_copy(update={"rank": 4}), seed=0)
        ).to_bytes(),
    }


def _event(label: str) -> None:
    """Count an outcome for ``--hypothesis-show-statistics`` (a no-op outside hypothesis)."""
    try:
        event(label)
    except InvalidArgument:
        pass


def _check_state_load(
    load: Callable[[bytes], MemoryState], mutated: bytes, original: bytes, label: str
) -> None:
    """Refused with a named problem, or loaded equal to the original (and finite)."""
    try:
        loaded = load(mutated)
    except MemoryStateError as err:
        _assert_names(_state_problem(label), err, label)
        _event(f"refused: {label}")
        return
    _event(f"accepted equal: {label}")
    assert all(bool(torch.isfinite(t).all()) for t in loaded.layers), label
    assert loaded.to_bytes() == original, f"{label}: a damaged state loaded with other content"


@FUZZ
@given(data=st.data())
def test_damaged_state_bytes_are_refused_or_unchanged(
    data: st.DataObject, state_handle: AttachedAdapter, original_state: MemoryState
) -> None:
    original = original_state.to_bytes()
    label, mutated = data.draw(byte_damage(original))
    _check_state_load(MemoryState.from_bytes, mutated, original, label)
    _check_state_load(state_handle.load_state, mutated, original, label)


def _state_tensors(state: MemoryState) -> dict[str, torch.Tensor]:
    return {"states": torch.stack(state.layers).clone(), "write_counts": state.write_counts.clone()}


def _state_meta(data: bytes) -> dict[str, Any]:
    header = json.loads(data[8 : _header_end(data)])
    return json.loads(header["__metadata__"]["deltamem"])


def _resave(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    return safetensors_save(
        {k: v.contiguous() for k, v in tensors.items()},
        metadata={"deltamem": json.dumps(meta, sort_keys=True, separators=(",", ":"))},
    )


@st.composite
def tensor_damage(draw: st.DrawFn, state: MemoryState) -> tuple[str, dict[str, Any], str]:
    """Re-serialised tensors that are wrong; returns label, tensors and the expected word."""
    tensors = _state_tensors(state)
    states, counts = tensors["states"], tensors["write_counts"]
    kind = draw(
        st.sampled_from(
            [
                *("nan", "inf", "states-shape", "states-dtype", "counts-dtype", "counts-shape"),
                *("negative-count", "missing", "extra", "renamed", "value", "count-value"),
            ]
        )
    )
    expect = {"nan": "NaN", "inf": "Inf", "negative-count": "negative", "value": "checksum"}
    if kind in ("nan", "inf"):
        value = math.nan if kind == "nan" else draw(st.sampled_from([math.inf, -math.inf]))
        states.view(-1)[draw(st.integers(0, states.numel() - 1))] = value
    elif kind == "states-shape":
        shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=6)))
        assume(shape != tuple(states.shape))
        tensors["states"] = torch.randn(shape)
    elif kind == "states-dtype":
        dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float64, torch.int32]))
        tensors["states"] = states.to(dtype)
    elif kind == "counts-dtype":
        dtype = draw(st.sampled_from([torch.int32, torch.int16, torch.uint8, torch.float32]))
        tensors["write_counts"] = counts.to(dtype)
    elif kind == "counts-shape":
        shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
        assume(shape != tuple(counts.shape))
        tensors["write_counts"] = torch.zeros(shape, dtype=torch.int64)
    elif kind == "negative-count":
        counts.view(-1)[draw(st.integers(0, counts.numel() - 1))] = -draw(st.integers(1, 10**9))
    elif kind == "missing":
        del tensors[draw(st.sampled_from(sorted(tensors)))]
    elif kind == "extra":
        tensors[draw(st.text(min_size=1, max_size=8))] = torch.zeros(draw(st.integers(1, 4)))
        assume(len(tensors) == 3)
    elif kind == "renamed":
        old = draw(st.sampled_from(sorted(tensors)))
        new = draw(st.text(min_size=1, max_size=12))
        assume(new not in tensors)
        tensors[new] = tensors.pop(old)
    elif kind == "value":  # a finite value changed: only the checksum can tell
        at = draw(st.integers(0, states.numel() - 1))
        delta = draw(st.floats(-1e3, 1e3, allow_nan=False).filter(lambda x: abs(x) > 1e-3))
        states.view(-1)[at] += delta
        assume(not torch.equal(states, _state_tensors(state)["states"]))
    elif kind == "count-value":
        counts.view(-1)[draw(st.integers(0, counts.numel() - 1))] += draw(st.integers(1, 1000))
        expect[kind] = "checksum"
    words = {"dtype": "dtype", "shape": "shape", "missing": "tensors", "extra": "tensors"}
    words["renamed"] = "tensors"
    word = expect.get(kind) or next(w for k, w in words.items() if k in kind)
    return kind, tensors, word


@FUZZ
@given(data=st.data())
def test_resaved_wrong_tensors_are_refused_by_name(
    data: st.DataObject, state_handle: AttachedAdapter, original_state: MemoryState
) -> None:
    original = original_state.to_bytes()
    label, tensors, word = data.draw(tensor_damage(original_state))
    mutated = _resave(tensors, _state_meta(original))  # the original metadata and checksum
    for load in (MemoryState.from_bytes, state_handle.load_state):
        with pytest.raises(MemoryStateError, match=re.escape(word)):
            load(mutated)
    _event(f"refused: {label}")


@FUZZ
@given(data=st.data())
def test_damaged_state_metadata_is_refused_or_unchanged(
    data: st.DataObject, state_handle: AttachedAdapter, original_state: MemoryState
) -> None:
    original = original_state.to_bytes()
    label, meta = data.draw(json_damage(_state_meta(original)))
    mutated = _resave(_state_tensors(original_state), meta)
    _check_state_load(MemoryState.from_bytes, mutated, original, label)
    _check_state_load(state_handle.load_state, mutated, original, label)


@FUZZ
@given(which=st.sampled_from(["adapter", "backbone", "config"]), data=st.data())
def test_states_of_another_model_are_refused_even_when_damaged(
    which: str,
    data: st.DataObject,
    state_handle: AttachedAdapter,
    foreign_states: dict[str, bytes],
) -> None:
    foreign = foreign_states[which]
    damaged = data.draw(st.booleans())
    label, mutated = data.draw(byte_damage(foreign)) if damaged else ("intact", foreign)
    with pytest.raises(MemoryStateError) as info:
        state_handle.load_state(mutated)
    # intact: exactly what differs; damaged: that, or the damage's own problem
    problem = _any(FOREIGN_STATE[which], _state_problem(label)) if damaged else FOREIGN_STATE[which]
    _assert_names(problem, info.value, f"{which} {label}")


def test_the_state_fuzzer_can_fail(
    state_handle: AttachedAdapter, original_state: MemoryState
) -> None:
    """The checks above catch a silently different state (guards against a vacuous oracle)."""
    other = _written(state_handle, seed=7).to_bytes()
    with pytest.raises(AssertionError, match="other content"):
        _check_state_load(MemoryState.from_bytes, other, original_state.to_bytes(), "swap")


# ------------------------------------------------------------------------------------------
# Adapter directories (own and reference format)
# ------------------------------------------------------------------------------------------

OWN_FILES = ("adapter_config.json", "adapter_model.safetensors")
REF_FILES = ("delta_mem_config.json", "delta_mem_adapter.pt")


@pytest.fixture(scope="module")
def saved_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A randomised SSW adapter on Llama seed 0 in both formats."""
    handle = attach(build_model("llama", seed=0), DeltaMemConfig(), seed=0)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in handle.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    root = tmp_path_factory.mktemp("fuzz-adapters")
    return {
        "own": save_adapter(handle, root / "own"),
        "reference": save_adapter(handle, root / "reference", format="reference"),
        "tensors": {k: v.detach().clone() for k, v in handle.adapter_state_dict().items()},
        "config": handle.config,
    }


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """Copies of an adapter directory, each in a fresh directory (module-scoped: hypothesis
    calls it once per example)."""
    root = tmp_path_factory.mktemp("fuzz-scratch")

    def copy(source: Path) -> Path:
        target = Path(tempfile.mkdtemp(dir=root)) / "adapter"
        return Path(shutil.copytree(source, target))

    return copy


def _model_record(model: nn.Module) -> dict[str, Any]:
    return {
        "modules": dict(model.named_modules()),
        "params": {
            n: (p, p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()
        },
    }


def _assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    """No handle, the very same modules and parameters, with the same values and flags."""
    assert getattr(model, "_deltamem_handle", None) is None
    modules = dict(model.named_modules())
    assert list(modules) == list(before["modules"])
    assert all(modules[n] is m for n, m in before["modules"].items())
    params = dict(model.named_parameters())
    assert list(params) == list(before["params"])
    for name, (param, value, grad) in before["params"].items():
        assert params[name] is param, name
        assert torch.equal(param, value) and param.requires_grad == grad, name


def _check_adapter_load(
    path: Path,
    saved: dict[str, Any],
    label: str,
    expected_config: DeltaMemConfig | None = None,
    file_tensors: dict[str, torch.Tensor] | None = None,
    problem: str | None = None,
) -> str:
    """Refused (model untouched, message naming the problem: ``problem``, else the one of the
    label's damage) or loaded equal: the saved config and tensors, or ``expected_config``
    with its tensors from ``file_tensors``."""
    model = build_model("llama", seed=0)
    before = _model_record(model)
    try:
        handle = load_adapter(model, path)
    except AdapterFileError as err:
        _assert_untouched(model, before)
        _assert_names(problem or _adapter_problem(label), err, label)
        _event(f"refused: {label}")
        return "refused"
    _event(f"accepted: {label}")
    want = expected_config or saved["config"]
    assert _config_json(handle.config) == _config_json(want), f"{label}: {handle.config}"
    tensors = handle.adapter_state_dict()
    expected = saved["tensors"] if file_tensors is None else file_tensors
    if file_tensors is None:
        assert list(tensors) == list(expected), label
    for name, value in tensors.items():
        assert torch.equal(value, expected[name]), f"{label}: {name} loaded changed"
    handle.detach()
    return "accepted"


def _config_json(config: DeltaMemConfig) -> str:
    """A config as comparable text (NaN equals NaN here, unlike in ``==``)."""
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)


def _damage_file(path: Path, new: bytes | None) -> None:
    if new is None:
        path.unlink()
    else:
        path.write_bytes(new)


@FUZZ_SLOW
@given(fmt=st.sampled_from(["own", "reference"]), data=st.data())
def test_damaged_adapter_weights_are_refused_and_the_model_untouched(
    fmt: str, data: st.DataObject, saved_adapters: dict[str, Any], scratch: Any
) -> None:
    path = scratch(saved_adapters[fmt])
    weights = path / (OWN_FILES[1] if fmt == "own" else REF_FILES[1])
    original = weights.read_bytes()
    if data.draw(st.integers(0, 19)) == 0:
        label, new = "deleted", None
    else:
        label, new = data.draw(byte_damage(original, safetensors=fmt == "own"))
    _damage_file(weights, new)
    _check_adapter_load(path, saved_adapters, f"{fmt} weights {label}")


@FUZZ_SLOW
@given(fmt=st.sampled_from(["own", "reference"]), data=st.data())
def test_wrong_adapter_tensors_are_refused_by_name(
    fmt: str, data: st.DataObject, saved_adapters: dict[str, Any], scratch: Any
) -> None:
    path = scratch(saved_adapters[fmt])
    weights = path / (OWN_FILES[1] if fmt == "own" else REF_FILES[1])
    tensors = load_file(weights) if fmt == "own" else torch.load(weights, weights_only=True)
    name = data.draw(st.sampled_from(sorted(saved_adapters["tensors"])))
    kind = data.draw(st.sampled_from(["nan", "inf", "shape", "missing", "integer"]))
    value = tensors[name].clone()
    if kind in ("nan", "inf"):
        value.view(-1)[data.draw(st.integers(0, value.numel() - 1))] = (
            math.nan if kind == "nan" else -math.inf
        )
    elif kind == "shape":
        shape = tuple(data.draw(st.lists(st.integers(1, 70), min_size=1, max_size=3)))
        assume(shape != tuple(value.shape))
        value = torch.zeros(shape)
    elif kind == "integer":
        value = value.to(torch.int32)
    if kind == "missing":
        del tensors[name]
    else:
        tensors[name] = value
    if fmt == "own":
        save_file(tensors, weights)
    else:
        torch.save(tensors, weights)
    model = build_model("llama", seed=0)
    before = _model_record(model)
    with pytest.raises(AdapterFileError, match=re.escape(name)):
        load_adapter(model, path)
    _assert_untouched(model, before)
    _event(f"refused: {fmt} {kind}")


@FUZZ_SLOW
@given(data=st.data())
def test_damaged_own_adapter_config_is_refused_or_unchanged(
    data: st.DataObject, saved_adapters: dict[str, Any], scratch: Any
) -> None:
    path = scratch(saved_adapters["own"])
    config_file = path / OWN_FILES[0]
    text = config_file.read_bytes()
    if data.draw(st.booleans()):
        label, new = data.draw(text_damage(text))
    else:
        label, body = data.draw(json_damage(json.loads(text)))
        new = json.dumps(body, indent=2).encode()
    if data.draw(st.integers(0, 29)) == 0:
        label, new = "deleted", None
    _damage_file(config_file, new)
    _check_adapter_load(path, saved_adapters, f"own config {label}")


# The reference keys this package translates and the config field each sets, with the
# reference's defaults (what a dropped key means; adapter_reference.py's `_REFERENCE_DEFAULTS`
# holds the same facts, read from the reference's code). Written out here, independently of
# `adapter_reference.config_from_reference`, the function under test.
REF_FIELDS = {
    "rank": ("rank", 8),
    "alpha": ("alpha", 16.0),
    "beta_bias_init": ("beta_bias_init", -1.5),
    "online_gain": ("output_init_scale", 0.05),
    "num_state_heads": ("num_states", 1),
    "rankwise_gates": ("rankwise_gates", True),
    "state_update_mode": ("update_mode", "standard"),
    "memory_write_granularity": ("write_granularity", "token"),
    "output_init": ("output_init", "zero"),
    "target_layers": ("target_layers", []),
    "delta_heads": ("heads", ["q", "k", "v", "o"]),
}
REF_VALUES = {  # reference values named otherwise here
    "state_update_mode": {"standard": "standard", "lambda_outside": "gated", "no_lambda": "plain"},
    "memory_write_granularity": {"token": "token", "message_mean": "segment"},
    "output_init": {"zero": "zero", "random": "base_slice"}
    | {"base_slice": "base_slice", "base_slice_fixed": "base_slice"},
}
# Options whose other values change the maths and are refused (the rest only tune options
# this package does not have, and are ignored).
REF_FIXED = {
    *("normalize_qk", "couple_lambda", "num_memory_partitions", "num_global_memory_partitions"),
    *("memory_reader_layers", "latent_memory_layers", "memory_readout_mode"),
    *("memory_write_source", "target_modules", "delta_o_rmsnorm", "trainable_delta_scale"),
}


# Values each translated key may plausibly hold (a random JSON value is rarely one of them).
REF_RETUNE: dict[str, st.SearchStrategy[Any]] = {
    "rank": st.integers(1, 16),
    "alpha": st.floats(0.5, 64) | st.integers(1, 64),
    "beta_bias_init": st.floats(-5, 5),
    "online_gain": st.floats(0, 1),
    "num_state_heads": st.integers(1, 3),
    "rankwise_gates": st.booleans(),
    "state_update_mode": st.sampled_from(sorted(REF_VALUES["state_update_mode"])),
    "memory_write_granularity": st.sampled_from(sorted(REF_VALUES["memory_write_granularity"])),
    "output_init": st.sampled_from(sorted(REF_VALUES["output_init"])),
    "target_layers": st.lists(st.integers(0, 2), max_size=3),
    "delta_heads": st.sampled_from(["q,o", "q", "o", "q, k,v,o", "none"])
    | st.lists(st.sampled_from("qkvo"), min_size=1, max_size=4),
}


def _ref_value(key: str, value: Any) -> Any:
    """The config value a reference value means (raises for values that mean nothing)."""
    if key in REF_VALUES:
        return REF_VALUES[key][value]
    if key == "target_layers":
        return list(value) or None
    if key == "delta_heads":
        if isinstance(value, str):
            value = [] if value.strip().lower() == "none" else value.split(",")
        return [h.strip() for h in value]
    return value


class RefExpect(NamedTuple):
    """What loading a changed reference config must do: refuse naming ``problem``; accept as
    ``config``; or either (``config`` None: the values mean no config, so it must not load)."""

    outcome: Literal["refuse", "accept", "either"]
    config: DeltaMemConfig | None = None
    problem: str = "(?!)"  # matches no message: no refusal is right


def _reference_expectation(
    original: dict[str, Any], new: bytes, saved: DeltaMemConfig
) -> RefExpect:
    try:
        body = json.loads(new.decode())
    except (ValueError, RecursionError):
        return RefExpect("refuse", problem=ADAPTER_JSON)
    if not isinstance(body, dict):
        return RefExpect("refuse", problem=r"must hold a JSON object")
    added = sorted(set(body) - set(original), key=str)
    if added:  # unknown to the format: refused, naming every one
        every = "".join(f"(?=.*{re.escape(repr(k))})" for k in added)
        return RefExpect("refuse", problem=r"unknown field\(s\) " + every)
    changed = sorted(k for k in body if json.dumps(body[k]) != json.dumps(original[k]))
    dropped = set(original) - set(body)
    fields = saved.model_dump()
    for key in sorted(dropped & set(REF_FIELDS)):  # the reference's default
        fields[REF_FIELDS[key][0]] = _ref_value(key, REF_FIELDS[key][1])
    expected: DeltaMemConfig | None
    try:
        for key in sorted(set(changed) & set(REF_FIELDS)):
            fields[REF_FIELDS[key][0]] = _ref_value(key, body[key])
        expected = DeltaMemConfig(**fields)
    except (KeyError, TypeError, ValueError, AttributeError):
        expected = None
    if expected is not None and not set(changed) & (set(REF_FIELDS) | REF_FIXED):
        return RefExpect("accept", expected)  # only dropped keys and ignored options changed
    names = [re.escape(k) for k in changed] + [REF_FIELDS[k][0] for k in changed if k in REF_FIELDS]
    return RefExpect("either", expected, _any(*names, ADAPTER_FIT))


@FUZZ_SLOW
@given(data=st.data())
def test_damaged_reference_config_is_refused_or_loaded_as_written(
    data: st.DataObject, saved_adapters: dict[str, Any], scratch: Any
) -> None:
    """The reference's JSON carries no checksum, so a damaged file that still parses loads the
    config it now says. Property: an unknown key is refused by name; a dropped key loads its
    default; a changed value loads exactly as written (the field a small table maps it to) or
    is refused naming it or the misfit; never half-loaded (the file holds all four heads,
    inactive ones as zeros)."""
    path = scratch(saved_adapters["reference"])
    config_file = path / REF_FILES[0]
    text = config_file.read_bytes()
    how = data.draw(st.sampled_from(["text", "json", "retune"]))
    if how == "text":
        label, new = data.draw(text_damage(text))
    elif how == "json":
        label, body = data.draw(json_damage(json.loads(text)))
        new = json.dumps(body).encode()
    else:  # a translated key set to a value it may hold: the table's mapping is exercised
        key = data.draw(st.sampled_from(sorted(REF_RETUNE)))
        label, body = f"set-{key}", {**json.loads(text), key: data.draw(REF_RETUNE[key])}
        new = json.dumps(body).encode()
    config_file.write_bytes(new)
    label = f"reference config {label}"
    expect = _reference_expectation(json.loads(text), new, saved_adapters["config"])
    weights = torch.load(path / REF_FILES[1], weights_only=True)
    outcome = _check_adapter_load(
        path, saved_adapters, label, expect.config, weights, problem=expect.problem
    )
    if expect.outcome == "refuse" or expect.config is None:
        assert outcome == "refused", f"{label}: loaded, expected {expect}"
    if outcome == "accepted" and expect.config != saved_adapters["config"]:
        _event("reference config: accepted with another meaning (no checksum in the format)")


def test_the_adapter_fuzzer_can_fail(saved_adapters: dict[str, Any], scratch: Any) -> None:
    """An adapter with one changed weight that loads would be caught by the oracle."""
    handle = attach(build_model("llama", seed=0), DeltaMemConfig(), seed=0)
    tensors = dict(saved_adapters["tensors"])
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1.0
    handle.load_adapter_state_dict(tensors)
    path = save_adapter(handle, scratch(saved_adapters["own"]).parent / "changed")
    with pytest.raises(AssertionError, match="loaded changed"):
        _check_adapter_load(path, saved_adapters, "changed")


@pytest.mark.parametrize(
    ("field", "value"),
    [("heads", None), ("heads", 7), ("target_layers", 7), ("target_layers", [None])],
)
def test_a_legacy_own_config_of_the_wrong_type_is_refused_by_name(
    field: str, value: Any, saved_adapters: dict[str, Any], scratch: Any
) -> None:
    """Without a checksum only the config's validation stands between a wrong type and the
    model: an AdapterFileError naming the field, not a TypeError from inside pydantic."""
    path = scratch(saved_adapters["own"])
    body = json.loads((path / OWN_FILES[0]).read_text())
    del body["checksum"]
    body["config"][field] = value
    (path / OWN_FILES[0]).write_text(json.dumps(body))
    model = build_model("llama", seed=0)
    before = _model_record(model)
    with pytest.raises(AdapterFileError, match=field):
        load_adapter(model, path)
    _assert_untouched(model, before)


# ------------------------------------------------------------------------------------------
# DeltaMemory exports, store entries and graph checkpoint fields
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(embedded: Any) -> Iterator[DeltaMemEngine]:
    engine = build_tiny_engine(embedded[1])
    key = register_engine(engine)
    yield engine
    unregister_engine(key)


@pytest.fixture(scope="module")
def foreign_exports(embedded: Any) -> dict[str, bytes]:
    """Exports written by another adapter and by another backbone (same tokenizer)."""
    out = {}
    for which, seeds in (("adapter", (0, 1)), ("backbone", (1, 0))):
        engine = build_tiny_engine(embedded[1], backbone_seed=seeds[0], adapter_seed=seeds[1])
        memory = DeltaMemory(engine)
        memory.write([{"role": "user", "content": "a foreign memory"}], scope="x")
        out[which] = memory.export(scope="x")
    return out


TURN = [
    {"role": "user", "content": "My locker code is 4471."},
    {"role": "assistant", "content": "Noted: locker 4471."},
]
TOOL = [{"role": "tool", "content": "22 °C and sunny", "source": "tool:weather"}]


@pytest.fixture(scope="module")
def source_memory(tiny: DeltaMemEngine) -> DeltaMemory:
    """Scope ``src`` (the artefact to damage) and ``target`` (the memory that must stay)."""
    memory = DeltaMemory(tiny)
    memory.write(TURN, scope="src")
    memory.write(TOOL, scope="src")
    memory.write([{"role": "user", "content": "I am the target scope."}], scope="target")
    return memory


@st.composite
def record_damage(draw: st.DrawFn, export: bytes, foreign: dict[str, bytes]) -> tuple[str, bytes]:
    """Damage to a scope record: its JSON text, its structure, its strings, its state."""
    body = json.loads(export)
    kind = draw(st.sampled_from(["text", "json", "log-char", "key-char", "state", "foreign"]))
    if kind == "text":
        return draw(text_damage(export))
    if kind == "json":
        label, changed = draw(json_damage(body))
        return label, json.dumps(changed).encode()
    if kind == "foreign":
        which = draw(st.sampled_from(sorted(foreign)))
        return f"foreign-{which}", foreign[which]
    if kind == "log-char":
        group = draw(st.integers(0, len(body["log"]) - 1))
        item = draw(st.integers(0, len(body["log"][group]) - 1))
        field = draw(st.sampled_from(["role", "content", "source"]))
        message = body["log"][group][item]
        message[field] = _flip_char(draw, message[field])
    elif kind == "key-char":
        at = draw(st.integers(0, len(body["keys"]) - 1))
        body["keys"][at] = _flip_char(draw, body["keys"][at])
    else:
        state = base64.b64decode(body["state"])
        _, damaged = draw(byte_damage(state))
        body["state"] = base64.b64encode(damaged).decode()
    return kind, json.dumps(body).encode()


def _check_refused(err: Exception, label: str) -> None:
    _assert_names(_record_problem(label), err, label)
    _event(f"refused: {label.split('-')[0]}")


def _check_import(
    memory: DeltaMemory, mutated: bytes, export: bytes, target: bytes, label: str
) -> None:
    """Refused with the target scope untouched, or imported equal to the original export."""
    try:
        memory.import_(mutated, scope="target")
    except MemoryRecordError as err:
        _check_refused(err, label)
        assert memory.export(scope="target") == target, f"{label}: target changed"
        return
    _event(f"accepted equal: {label}")
    imported = memory.export(scope="target")
    memory.import_(target, scope="target")  # back to the baseline for the next example
    assert imported == export, f"{label}: imported other content"


@FUZZ
@given(data=st.data())
def test_damaged_imports_are_refused_and_the_scope_untouched(
    data: st.DataObject, source_memory: DeltaMemory, foreign_exports: dict[str, bytes]
) -> None:
    export = source_memory.export(scope="src")
    target = source_memory.export(scope="target")
    label, mutated = data.draw(record_damage(export, foreign_exports))
    _check_import(source_memory, mutated, export, target, label)


def test_the_import_oracle_can_fail(source_memory: DeltaMemory) -> None:
    """A different (valid) record that imports is reported, and the baseline is put back."""
    target = source_memory.export(scope="target")
    source_memory.write(TOOL, scope="other")
    other = source_memory.export(scope="other")
    with pytest.raises(AssertionError, match="imported other content"):
        _check_import(source_memory, other, source_memory.export(scope="src"), target, "swap")
    assert source_memory.export(scope="target") == target


# Legacy records and snapshots (written before the checksum existed) carry none, so for them
# the structural validators are the only guard: damage each way they check, drop the
# checksum, and require the validator's own refusal (not the checksum's).
NOT_A_LIST = (
    st.none()
    | st.integers()
    | st.text(max_size=5)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
NOT_A_STR = st.none() | st.booleans() | st.integers() | st.lists(st.text(max_size=3), max_size=2)
NOT_HEX = st.characters(codec="utf-8").filter(lambda c: c not in "0123456789abcdef")


@st.composite
def bad_keys(draw: st.DrawFn, keys: list[str]) -> tuple[str, Any]:
    """Message keys that are not a list of at most 256 16-hex-digit strings."""
    keys = list(keys)
    kind = draw(st.sampled_from(["key-char", "key-length", "key-type", "keys-many", "keys-type"]))
    at = draw(st.integers(0, len(keys) - 1))
    if kind == "key-char":  # one character outside [0-9a-f]
        i = draw(st.integers(0, 15))
        keys[at] = keys[at][:i] + draw(NOT_HEX) + keys[at][i + 1 :]
    elif kind == "key-length":
        keys[at] = keys[at][: draw(st.integers(0, 15))] + draw(st.sampled_from(["", "0", "00ff"]))
        assume(len(keys[at]) != 16)
    elif kind == "key-type":
        keys[at] = draw(NOT_A_STR)
    elif kind == "keys-many":  # valid keys, over the cap
        return kind, [f"{i:016x}" for i in range(draw(st.integers(257, 2_000)))]
    else:
        return kind, draw(NOT_A_LIST)
    return kind, keys


@st.composite
def legacy_record_damage(draw: st.DrawFn, export: bytes) -> tuple[str, bytes, str]:
    """A record without its checksum, damaged where `_valid_log` or `_valid_keys` look;
    returns the label, the bytes and the validator's message."""
    body = json.loads(export)
    del body["checksum"]
    if draw(st.booleans()):
        kind, body["keys"] = draw(bad_keys(body["keys"]))
        return kind, json.dumps(body).encode(), r"\(message keys\)"
    kind = draw(st.sampled_from(["drop", "add", "type", "role", "not-a-dict", "not-a-list"]))
    group = draw(st.integers(0, len(body["log"]) - 1))
    item = draw(st.integers(0, len(body["log"][group]) - 1))
    message = body["log"][group][item]
    if kind == "drop":
        del message[draw(st.sampled_from(sorted(message)))]
    elif kind == "add":
        name = draw(st.text(min_size=1, max_size=8))
        assume(name not in message)
        message[name] = draw(st.text(max_size=8))
    elif kind == "type":
        message[draw(st.sampled_from(sorted(message)))] = draw(NOT_A_STR)
    elif kind == "role":  # a string, but not a role the log may hold
        message["role"] = draw(st.sampled_from(["system", "User", "", "developer"]) | st.text())
        assume(message["role"] not in ("user", "assistant", "tool"))
    elif kind == "not-a-dict":
        body["log"][group][item] = draw(NOT_A_STR)
    elif draw(st.booleans()):
        body["log"][group] = draw(NOT_A_LIST)
    else:
        body["log"] = draw(NOT_A_LIST)
    return f"log-{kind}", json.dumps(body).encode(), r"\(segment log\)"


@FUZZ_LEGACY
@given(data=st.data())
def test_legacy_records_with_structural_damage_are_refused_by_the_validators(
    data: st.DataObject, source_memory: DeltaMemory
) -> None:
    export = source_memory.export(scope="src")
    target = source_memory.export(scope="target")
    label, mutated, problem = data.draw(legacy_record_damage(export))
    with pytest.raises(MemoryRecordError, match=problem) as info:
        source_memory.import_(mutated, scope="target")
    assert "checksum" not in str(info.value), label
    assert source_memory.export(scope="target") == target, f"{label}: target changed"
    _event(f"refused: {label}")


def test_an_undamaged_legacy_record_still_loads(source_memory: DeltaMemory) -> None:
    """The control for the test above: without the damage, no checksum is no problem."""
    export = source_memory.export(scope="src")
    target = source_memory.export(scope="target")
    legacy = {k: v for k, v in json.loads(export).items() if k != "checksum"}
    source_memory.import_(json.dumps(legacy).encode(), scope="target")
    assert source_memory.export(scope="target") == export
    source_memory.import_(target, scope="target")


def _sqlite_store(path: Path) -> SqliteStore:
    store = SqliteStore(sqlite3.connect(str(path), check_same_thread=False, isolation_level=None))
    store.setup()
    return store


@pytest.fixture(scope="module", params=["in-memory", "sqlite", "postgres"])
def fuzz_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BaseStore]:
    if request.param == "in-memory":
        yield InMemoryStore()
        return
    if request.param == "postgres":
        from langgraph.store.postgres import PostgresStore

        with temporary_database() as url, PostgresStore.from_conn_string(url) as store:
            store.setup()
            yield store
        return
    store = _sqlite_store(tmp_path_factory.mktemp("fuzz-store") / "store.sqlite")
    yield store
    store.conn.close()


def _raw_entry(store: BaseStore, scope: str) -> Any:
    """The stored entry as the store holds it (the SQLite or jsonb text, or the in-memory value)."""
    if _is_postgres(store):
        row = store.conn.execute(
            "SELECT value::text AS value FROM store WHERE prefix = %s AND key = %s",
            (".".join(DEFAULT_NAMESPACE), scope),
        ).fetchone()
        return row["value"]
    if isinstance(store, SqliteStore):
        row = store.conn.execute(
            "SELECT value FROM store WHERE prefix = ? AND key = ?",
            (".".join(DEFAULT_NAMESPACE), scope),
        ).fetchone()
        return row[0]
    return json.dumps(store.get(DEFAULT_NAMESPACE, scope).value, sort_keys=True)


def _put_raw(store: BaseStore, scope: str, text: bytes) -> bool:
    """Store damaged text as the entry; False if this store cannot hold it (not a JSON dict,
    or for PostgreSQL's jsonb, not JSON at all)."""
    if _is_postgres(store):
        import psycopg

        store.put(DEFAULT_NAMESPACE, scope, {"placeholder": True})
        try:
            store.conn.execute(
                "UPDATE store SET value = %s::jsonb WHERE prefix = %s AND key = %s",
                (text.decode("utf-8", "replace"), ".".join(DEFAULT_NAMESPACE), scope),
            )
        except psycopg.Error:  # the server refuses it (not JSON, too deep): nothing reaches δ-mem
            return False
        return True
    if isinstance(store, SqliteStore):
        store.put(DEFAULT_NAMESPACE, scope, {"placeholder": True})
        store.conn.execute(
            "UPDATE store SET value = ? WHERE prefix = ? AND key = ?",
            (text.decode("utf-8", "replace"), ".".join(DEFAULT_NAMESPACE), scope),
        )
        return True
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if not isinstance(value, dict):
        return False
    store.put(DEFAULT_NAMESPACE, scope, value)
    return True


def _is_postgres(store: BaseStore) -> bool:
    return type(store).__module__.startswith("langgraph.store.postgres")


@FUZZ
@given(data=st.data())
def test_damaged_store_entries_are_refused_and_left_as_they_are(
    data: st.DataObject,
    fuzz_store: BaseStore,
    source_memory: DeltaMemory,
    foreign_exports: dict[str, bytes],
    tiny: DeltaMemEngine,
) -> None:
    export = source_memory.export(scope="src")
    if fuzz_store.get(DEFAULT_NAMESPACE, "ok") is None:  # the neighbour: put once, then written
        fuzz_store.put(DEFAULT_NAMESPACE, "ok", json.loads(export))
    neighbour = _raw_entry(fuzz_store, "ok")
    label, mutated = data.draw(record_damage(export, foreign_exports))
    assume(_put_raw(fuzz_store, "victim", mutated))
    stored = _raw_entry(fuzz_store, "victim")
    memory = DeltaMemory(tiny, store=fuzz_store)
    try:
        loaded = memory.export(scope="victim")
    except MemoryRecordError as err:
        _check_refused(err, label)
        assert "victim" in str(err), err
        with pytest.raises(MemoryRecordError):  # a write neither loads nor replaces it
            memory.write([{"role": "user", "content": "overwrite?"}], scope="victim")
        assert _raw_entry(fuzz_store, "victim") == stored, f"{label}: the entry was changed"
    else:
        _event(f"accepted equal: {label}")
        assert loaded == export, f"{label}: a damaged entry loaded with other content"
    # the neighbouring entry: byte for byte as it was, and still writable, the victim aside
    assert _raw_entry(fuzz_store, "ok") == neighbour, f"{label}: the neighbour changed"
    memory.write([{"role": "user", "content": "the neighbour's note"}], scope="ok")
    assert _raw_entry(fuzz_store, "ok") != neighbour, "the neighbour's write was not stored"
    assert _raw_entry(fuzz_store, "victim") == stored, f"{label}: the neighbour's write hit it"


@pytest.fixture(scope="module")
def graph_memory(tiny: DeltaMemEngine) -> GraphMemory:
    memory = DeltaMemory(tiny)
    model = ChatDeltaMem(backbone=tiny.backbone, adapter=tiny.adapter, memory=memory)
    return GraphMemory(model)


@st.composite
def snapshot_damage(
    draw: st.DrawFn, snapshot: dict[str, Any], foreign: dict[str, bytes]
) -> tuple[str, Any]:
    """Damage to the checkpoint field: its msgpack bytes, its structure, its state or keys."""
    serde = JsonPlusSerializer()
    kind = draw(
        st.sampled_from(["msgpack", "json", "state", "key-char", "foreign", "many-keys", "type"])
    )
    changed = dict(snapshot)
    if kind == "msgpack":
        typ, raw = serde.dumps_typed(snapshot)
        _, damaged = draw(byte_damage(raw, safetensors=False))
        try:
            return kind, serde.loads_typed((typ, damaged))
        except Exception:  # the checkpointer itself cannot decode it: nothing reaches δ-mem
            assume(False)
    if kind == "json":
        plain = {**snapshot, "state": base64.b64encode(snapshot["state"]).decode()}
        label, body = draw(json_damage(plain))
        if isinstance(body.get("state"), str) and body["state"] == plain["state"]:
            body["state"] = snapshot["state"]
        return label, body
    if kind == "state":
        changed["state"] = draw(byte_damage(snapshot["state"]))[1]
    elif kind == "key-char":
        assume(snapshot["keys"])
        at = draw(st.integers(0, len(snapshot["keys"]) - 1))
        changed["keys"] = list(snapshot["keys"])
        changed["keys"][at] = _flip_char(draw, changed["keys"][at])
    elif kind == "foreign":
        which = draw(st.sampled_from(sorted(foreign)))
        changed["state"] = base64.b64decode(json.loads(foreign[which])["state"])
    elif kind == "many-keys":
        changed["keys"] = [f"{i:016x}" for i in range(draw(st.integers(257, 200_000)))]
    else:
        return kind, draw(st.sampled_from([None, [], "snapshot", b"snapshot", 7]))
    return kind, changed


@FUZZ
@given(data=st.data())
def test_damaged_checkpoint_fields_are_refused_and_the_scope_untouched(
    data: st.DataObject, graph_memory: GraphMemory, foreign_exports: dict[str, bytes]
) -> None:
    memory = graph_memory.memory
    memory.write(TURN, scope="checkpoint-src")
    snapshot = memory.snapshot(scope="checkpoint-src")
    memory.reset(scope="checkpoint-src")
    config = {"configurable": {"thread_id": "victim"}}
    memory.reset(scope="victim")
    memory.write([{"role": "user", "content": "the victim's own memory"}], scope="victim")
    before = memory.export(scope="victim")
    label, field = data.draw(snapshot_damage(snapshot, foreign_exports))
    if field is None:  # no snapshot: a new thread, which starts empty (`GraphMemory.load`)
        graph_memory.load({"messages": [], "deltamem": None}, config)
        assert memory.stats(scope="victim")["segments"] == 0, "the thread kept its memory"
        assert memory.export(scope="victim") != before
        empty = memory.snapshot(scope="never-written")
        assert memory.snapshot(scope="victim") == empty, "not an empty state"
        _event("no snapshot: the thread starts empty")
        return
    try:
        graph_memory.load({"messages": [], "deltamem": field}, config)
    except MemoryRecordError as err:
        _check_refused(err, label)
        assert memory.export(scope="victim") == before, f"{label}: the scope changed"
        return
    _event(f"accepted equal: {label}")
    restored = memory.snapshot(scope="victim")
    assert restored["state"] == snapshot["state"], f"{label}: restored another state"
    assert restored["keys"] == snapshot["keys"], f"{label}: restored other keys"


@st.composite
def legacy_snapshot_damage(
    draw: st.DrawFn, snapshot: dict[str, Any]
) -> tuple[str, dict[str, Any], str]:
    """A snapshot without its checksum, damaged where `restore` validates; returns the label,
    the field and the validator's message."""
    changed = {k: v for k, v in snapshot.items() if k != "checksum"}
    kind = draw(st.sampled_from(["keys", "state", "field"]))
    if kind == "keys":
        label, changed["keys"] = draw(bad_keys(snapshot["keys"]))
        return label, changed, r"'keys' must be a list of at most 256 message keys"
    if kind == "state":  # its base64 text (a JSON checkpointer's form), or no bytes at all
        b64 = base64.b64encode(snapshot["state"]).decode()
        changed["state"] = draw(st.just(b64) | NOT_A_STR)
        return "state-type", changed, r"'state' must be bytes"
    name = draw(st.text(min_size=1, max_size=8))
    assume(name not in snapshot)
    changed[name] = draw(JSON_VALUES)
    return "unknown-field", changed, rf"unknown field\(s\) \[{re.escape(repr(name))}\]"


@FUZZ_LEGACY
@given(data=st.data())
def test_legacy_snapshots_with_structural_damage_are_refused_by_the_validators(
    data: st.DataObject, graph_memory: GraphMemory
) -> None:
    memory = graph_memory.memory
    memory.write(TURN, scope="checkpoint-src")
    snapshot = memory.snapshot(scope="checkpoint-src")
    memory.reset(scope="checkpoint-src")
    config = {"configurable": {"thread_id": "legacy-victim"}}
    memory.reset(scope="legacy-victim")
    memory.write([{"role": "user", "content": "the victim's own memory"}], scope="legacy-victim")
    before = memory.export(scope="legacy-victim")
    label, field, problem = data.draw(legacy_snapshot_damage(snapshot))
    with pytest.raises(MemoryRecordError, match=problem) as info:
        graph_memory.load({"messages": [], "deltamem": field}, config)
    assert "checksum" not in str(info.value), label
    assert memory.export(scope="legacy-victim") == before, f"{label}: the scope changed"
    _event(f"refused: {label}")
    # the control: undamaged, the same legacy snapshot restores
    legacy = {k: v for k, v in snapshot.items() if k != "checksum"}
    graph_memory.load({"messages": [], "deltamem": legacy}, config)
    assert memory.snapshot(scope="legacy-victim", keys=len(snapshot["keys"])) == snapshot

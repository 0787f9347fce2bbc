"""`MemoryState`: the δ-mem states of one or more conversations, kept outside the model.

One loaded backbone serves many conversations, so the states live in this object and are
handed to each forward pass explicitly. A state is always fp32 (it accumulates over thousands of
writes), is never reset or re-shaped behind the caller's back, and serialises to safetensors
bytes tagged with a format version, the adapter config and a fingerprint of the backbone and
adapter it was written by, so it cannot be read by a model it does not belong to, plus a
checksum, so damaged bytes are refused rather than read as another memory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from .config import DeltaMemConfig
from .records import (
    CHECKSUM,
    RecordFormat,
    canonical_json,
    checksum_mismatch,
    checksum_of,
    without_checksum,
)

STATE_FORMAT = "langchain-deltamem/memory-state"
STATE_VERSION = 1
_META_KEY = "deltamem"
_STATE_RECORD = RecordFormat(
    format=STATE_FORMAT,
    version=STATE_VERSION,
    fields=frozenset({"format", "version", "fingerprint", "layer_ids", "config"}),
    wrong_format="not a memory state: format={value!r}",
    wrong_version="memory state version {value!r}; this package reads {version}",
    unknown="corrupt memory state: unknown metadata field(s) {value}",
    missing="corrupt memory state: missing metadata field(s) {value}",
)
MAX_HEADER_BYTES = 1 << 16  # a real header is under 1 KiB; refuse JSON bombs unparsed


class MemoryStateError(ValueError):
    """A memory state that is corrupt, foreign to the model, or used in the wrong place."""


@dataclass
class MemoryState:
    """Per-layer states ``[B, H, r, r]`` (fp32) of ``B`` conversations.

    Attributes:
        layers: one tensor per wrapped attention layer, in ``layer_ids`` order. Entries are
            replaced (never modified in place) by writing forward passes, so autograd can run
            through a whole episode.
        layer_ids: decoder-layer index of each entry.
        config: the adapter config the state was written with.
        fingerprint: ``"backbone:<hex>/adapter:<hex>"`` of the model that owns the state.
        write_counts: ``[B, H]`` number of writes each state has received.
    """

    layers: list[torch.Tensor]
    layer_ids: tuple[int, ...]
    config: DeltaMemConfig
    fingerprint: str
    write_counts: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.layer_ids):
            raise MemoryStateError(
                f"{len(self.layers)} layer tensors for {len(self.layer_ids)} layer ids"
            )
        if not self.layers:
            raise MemoryStateError("a memory state needs at least one layer")
        if len(set(self.layer_ids)) != len(self.layer_ids):
            raise MemoryStateError(f"duplicate layer ids {list(self.layer_ids)}")
        expected = (self.config.num_states, self.config.rank, self.config.rank)
        batch = self.layers[0].shape[0]
        for layer_id, tensor in zip(self.layer_ids, self.layers, strict=True):
            if tensor.dim() != 4 or tuple(tensor.shape[1:]) != expected or tensor.shape[0] != batch:
                raise MemoryStateError(
                    f"layer {layer_id}: state shape {tuple(tensor.shape)}, expected "
                    f"{(batch, *expected)}"
                )
            if tensor.dtype != torch.float32:
                raise MemoryStateError(
                    f"layer {layer_id}: state dtype {tensor.dtype}, must be fp32"
                )
        if self.write_counts is None:
            self.write_counts = torch.zeros(batch, self.config.num_states, dtype=torch.int64)
        if tuple(self.write_counts.shape) != (batch, self.config.num_states):
            raise MemoryStateError(
                f"write_counts shape {tuple(self.write_counts.shape)}, expected "
                f"{(batch, self.config.num_states)}"
            )

    # --- construction -------------------------------------------------------------------
    @classmethod
    def zeros(
        cls,
        config: DeltaMemConfig,
        layer_ids: Sequence[int],
        fingerprint: str,
        batch_size: int = 1,
        device: torch.device | str | None = None,
    ) -> MemoryState:
        """An empty memory for ``batch_size`` conversations."""
        if batch_size < 1:
            raise MemoryStateError(f"batch_size must be >= 1, got {batch_size}")
        shape = (batch_size, config.num_states, config.rank, config.rank)
        layers = [torch.zeros(shape, dtype=torch.float32, device=device) for _ in layer_ids]
        return cls(layers, tuple(layer_ids), config, fingerprint)

    # --- shape --------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.layers[0].shape[0]

    @property
    def device(self) -> torch.device:
        return self.layers[0].device

    @property
    def nbytes_per_conversation(self) -> int:
        """Bytes of state one conversation holds: layers × H × r² × 4."""
        return sum(t[0].numel() * t.element_size() for t in self.layers)

    # --- copies and batching ------------------------------------------------------------
    def clone(self) -> MemoryState:
        """An independent copy (detached from any autograd graph)."""
        return MemoryState(
            [t.detach().clone() for t in self.layers],
            self.layer_ids,
            self.config,
            self.fingerprint,
            self.write_counts.clone(),
        )

    def detach(self) -> MemoryState:
        """The same values without autograd history (e.g. between training episodes)."""
        return MemoryState(
            [t.detach() for t in self.layers],
            self.layer_ids,
            self.config,
            self.fingerprint,
            self.write_counts,
        )

    def select(self, index: int | Sequence[int]) -> MemoryState:
        """The conversations at ``index`` as a new state (a copy)."""
        idx = [index] if isinstance(index, int) else list(index)
        for i in idx:
            if not -self.batch_size <= i < self.batch_size:
                raise MemoryStateError(f"index {i} out of range for batch of {self.batch_size}")
        return MemoryState(
            [t[idx].clone() for t in self.layers],
            self.layer_ids,
            self.config,
            self.fingerprint,
            self.write_counts[idx].clone(),
        )

    @classmethod
    def concat(cls, states: Sequence[MemoryState]) -> MemoryState:
        """Stack conversations of compatible states into one batch."""
        if not states:
            raise MemoryStateError("concat needs at least one state")
        first = states[0]
        for other in states[1:]:
            first.check_compatible(other.fingerprint, other.layer_ids, other.config)
        return cls(
            [torch.cat(ts, dim=0) for ts in zip(*(s.layers for s in states), strict=True)],
            first.layer_ids,
            first.config,
            first.fingerprint,
            torch.cat([s.write_counts for s in states], dim=0),
        )

    def to(self, device: torch.device | str) -> MemoryState:
        return MemoryState(
            [t.to(device) for t in self.layers],
            self.layer_ids,
            self.config,
            self.fingerprint,
            self.write_counts,
        )

    def check_compatible(
        self, fingerprint: str, layer_ids: Sequence[int], config: DeltaMemConfig
    ) -> None:
        """Raise `MemoryStateError` unless the state belongs to that model and adapter."""
        if tuple(layer_ids) != self.layer_ids:
            raise MemoryStateError(
                f"state covers layers {list(self.layer_ids)}, the model wraps {list(layer_ids)}"
            )
        if (config.rank, config.num_states) != (self.config.rank, self.config.num_states):
            raise MemoryStateError(
                f"state has rank {self.config.rank} × {self.config.num_states} states, the "
                f"adapter rank {config.rank} × {config.num_states}"
            )
        if config != self.config:
            changed = sorted(
                k
                for k in type(config).model_fields
                if getattr(config, k) != getattr(self.config, k)
            )
            raise MemoryStateError(
                f"state was written with another adapter config (differs in {changed})"
            )
        if fingerprint != self.fingerprint:
            mine, theirs = _split_fingerprint(self.fingerprint), _split_fingerprint(fingerprint)
            what = [k for k in ("backbone", "adapter") if mine.get(k) != theirs.get(k)] or ["model"]
            raise MemoryStateError(
                f"memory state was written by another {' and '.join(what)} "
                f"(state {self.fingerprint}, model {fingerprint}); refusing to mix them"
            )

    # --- statistics ---------------------------------------------------------------------
    def stats(self) -> list[dict[str, object]]:
        """Per-layer statistics of conversation batch: Frobenius norm and max |value| per state."""
        rows = []
        for layer_id, tensor in zip(self.layer_ids, self.layers, strict=True):
            t = tensor.detach()
            rows.append(
                {
                    "layer": layer_id,
                    "norm": t.flatten(2).norm(dim=-1).tolist(),  # [B][H]
                    "max_abs": t.flatten(2).abs().amax(dim=-1).tolist(),
                }
            )
        return rows

    # --- bytes --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialise with safetensors (no pickle): states, write counts, and metadata."""
        tensors = {"states": torch.stack([t.detach() for t in self.layers]).contiguous().cpu()}
        tensors["write_counts"] = self.write_counts.detach().contiguous().cpu()
        # One metadata key holding sorted JSON: safetensors orders a multi-key metadata map
        # arbitrarily, and equal states must give equal bytes (checkpoints compare them).
        header = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "layer_ids": list(self.layer_ids),
            "config": self.config.to_json_dict(),
        }
        # Covers metadata and tensors: a flipped bit anywhere is refused on load, not read
        # as a slightly different memory.
        header[CHECKSUM] = _checksum(header, tensors)
        return safetensors_save(tensors, metadata={_META_KEY: canonical_json(header).decode()})

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        expected_fingerprint: str | None = None,
        device: torch.device | str | None = None,
    ) -> MemoryState:
        """Parse and validate bytes from `to_bytes`; nothing is returned half-checked.

        Raises:
            MemoryStateError: corrupt or truncated bytes, an unknown format or version,
                inconsistent shapes, NaN/Inf values, or (with ``expected_fingerprint``) a state
                written by another backbone or adapter.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MemoryStateError(f"memory state must be bytes, got {type(data).__name__}")
        data = bytes(data)
        metadata = _read_metadata(data)
        _STATE_RECORD.check(metadata, MemoryStateError)
        try:
            tensors = safetensors_load(data)
            config = DeltaMemConfig.from_json_dict(metadata["config"])
            raw_ids, fingerprint = metadata["layer_ids"], metadata["fingerprint"]
        except (SafetensorError, ValueError, TypeError) as err:
            raise MemoryStateError(f"corrupt memory state: {err}") from err
        if not isinstance(raw_ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in raw_ids
        ):
            raise MemoryStateError(f"corrupt memory state: layer_ids {raw_ids!r:.80}")
        if not isinstance(fingerprint, str):
            raise MemoryStateError(f"corrupt memory state: fingerprint {fingerprint!r:.80}")
        layer_ids = tuple(raw_ids)
        if set(tensors) != {"states", "write_counts"}:
            raise MemoryStateError(f"corrupt memory state: tensors {sorted(tensors)}")
        states, counts = tensors["states"], tensors["write_counts"]
        if states.dtype != torch.float32 or counts.dtype != torch.int64:
            raise MemoryStateError(
                f"corrupt memory state: dtypes {states.dtype}/{counts.dtype}, expected fp32/int64"
            )
        if states.dim() != 5 or states.shape[0] != len(layer_ids):
            raise MemoryStateError(
                f"corrupt memory state: states shape {tuple(states.shape)} for "
                f"{len(layer_ids)} layers"
            )
        if not bool(torch.isfinite(states).all()):
            raise MemoryStateError("memory state holds NaN or Inf values; refusing to load it")
        if bool((counts < 0).any()):
            raise MemoryStateError("corrupt memory state: negative write counts")
        state = cls(list(states.unbind(0)), layer_ids, config, fingerprint, counts)
        if checksum_mismatch(metadata, lambda: _checksum(without_checksum(metadata), tensors)):
            raise MemoryStateError(
                "corrupt memory state: checksum mismatch (the bytes were altered or damaged)"
            )
        if expected_fingerprint is not None:
            state.check_compatible(expected_fingerprint, layer_ids, config)
        return state.to(device) if device is not None else state


def _read_metadata(data: bytes) -> dict[str, object]:
    """The safetensors header's ``__metadata__``, with size checks before any parsing."""
    if len(data) < 8:
        raise MemoryStateError(f"corrupt memory state: {len(data)} bytes is too short")
    header_len = int.from_bytes(data[:8], "little")
    if header_len <= 0 or 8 + header_len > len(data):
        raise MemoryStateError("corrupt memory state: truncated header")
    if header_len > MAX_HEADER_BYTES:
        raise MemoryStateError(
            f"corrupt memory state: header of {header_len:,} bytes is too large "
            f"(max {MAX_HEADER_BYTES:,})"
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise MemoryStateError(f"corrupt memory state header: {err}") from err
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not isinstance(metadata.get(_META_KEY), str):
        raise MemoryStateError("corrupt memory state: no δ-mem metadata in header")
    try:
        body = json.loads(metadata[_META_KEY])
    except (json.JSONDecodeError, RecursionError) as err:
        raise MemoryStateError(f"corrupt memory state metadata: {err}") from err
    if not isinstance(body, dict):
        raise MemoryStateError("corrupt memory state: metadata is not an object")
    return body


def _checksum(header: dict[str, object], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the canonical metadata JSON and every tensor's name, dtype, shape and bytes."""
    parts: list[bytes] = []
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        parts.append(f"\0{name}:{tensor.dtype}:{list(tensor.shape)}\0".encode())
        parts.append(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return checksum_of(header, *parts)


def _split_fingerprint(fingerprint: str) -> dict[str, str]:
    parts = dict(p.split(":", 1) for p in fingerprint.split("/") if ":" in p)
    return parts if parts else {"model": fingerprint}


def state_bytes(config: DeltaMemConfig, num_layers: int) -> int:
    """Bytes of fp32 state per conversation for ``num_layers`` wrapped layers."""
    return num_layers * config.num_states * config.rank**2 * 4

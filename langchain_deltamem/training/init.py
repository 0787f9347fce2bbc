"""A data-aware start for a new adapter: centring means and content directions.

Segment means of the backbone's attention inputs share a large common part (training.md:
the fact message's mean differs between episodes by ~3 % of its squared norm), so a random
value projection writes nearly the same state for every message. From a few hundred training
chats this module estimates, per adapted layer,

* ``μ``: the mean segment input, which the layer subtracts before its centred projections
  (``DeltaMemConfig.centred_inputs``);
* the *content directions*: a ridge map from the centred mean of the message holding a fact to
  the mean input embedding of the fact's value, and the top-R principal directions ``P`` of
  what it predicts. The value projection starts as ``P Bᵀ`` (values are a rank-R code of the
  predicted value) and the output head as ``Pᵀ`` (reads add that code back along the value's
  embedding directions), so the write path carries content from step 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..episodes import Episode
from ..injection import AttachedAdapter
from ..segments import encode_segments
from ..writing import MEMORY_SYSTEM_PROMPT
from .batched import backbone_precision


@torch.no_grad()
def segment_inputs(
    handle: AttachedAdapter,
    tokenizer: object,
    episodes: Sequence[Episode],
    *,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
    bf16: bool = False,
) -> tuple[dict[int, torch.Tensor], list[list[str]]]:
    """Mean attention input of every message of every history, per adapted layer, from the
    bare backbone (what a first write call sees).

    Returns ``({layer_id: [M, d]}, contents)`` where ``contents[i]`` are the messages of
    episode ``i`` in the order of the rows."""
    model = handle.model
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    content_only = handle.config.segment_tokens == "content"
    means: dict[int, list[torch.Tensor]] = {i: [] for i in handle.layer_ids}
    contents: list[list[str]] = []
    for episode in episodes:
        messages = [{"role": m.role, "content": m.content} for m in episode.messages]
        encoded = encode_segments(
            tokenizer,  # type: ignore[arg-type]
            [{"role": "system", "content": system_prompt}, *messages],
            content_only=content_only,
        )
        with backbone_precision(bf16):
            hidden = decoder(encoded.input_ids, output_hidden_states=True).hidden_states
        segments = encoded.segment_ids[0]
        kept = [s for s in range(encoded.num_segments) if bool((segments == s).any())]
        contents.append([messages[s]["content"] for s in kept])
        for layer_id in handle.layer_ids:
            norm = decoder.layers[layer_id].input_layernorm
            h = norm(hidden[layer_id][0].float()).float()
            for s in kept:
                means[layer_id].append(h[segments == s].mean(0))
    return {i: torch.stack(rows) for i, rows in means.items()}, contents


def estimate_means(handle: AttachedAdapter, inputs: dict[int, torch.Tensor]) -> None:
    """Set each layer's ``input_mean`` to the mean segment input (centred adapters only)."""
    if not handle.config.centred_inputs:
        raise ValueError("estimate_means: the adapter centres no input (centred_inputs=())")
    for layer_id, rows in inputs.items():
        handle.layers[layer_id].input_mean.data.copy_(rows.mean(0))


@torch.no_grad()
def init_content_directions(
    handle: AttachedAdapter,
    tokenizer: object,
    episodes: Sequence[Episode],
    inputs: dict[int, torch.Tensor],
    contents: list[list[str]],
    *,
    ridge: float = 1e-2,
) -> dict[int, float]:
    """Start value projections and the ``o`` heads from the content directions (see module).

    Returns per layer the fraction of the value embeddings' centred variance the ridge map
    explains on these episodes (a quick check that the content is linearly there)."""
    if "v" not in handle.config.centred_inputs:
        raise ValueError(
            "data-aware init writes a code of the centred input; set centred_inputs to "
            "include 'v' (e.g. --centre k,v)"
        )
    embed = handle.model.get_input_embeddings().weight
    rows, targets = [], []
    offset = 0
    for episode, messages in zip(episodes, contents, strict=True):
        value = episode.meta.get("value") or episode.answer
        holder = next((j for j, text in enumerate(messages) if value in text), None)
        if holder is not None:
            ids = tokenizer(" " + value, add_special_tokens=False).input_ids  # type: ignore[operator]
            rows.append(offset + holder)
            targets.append(embed[ids].float().mean(0))
        offset += len(messages)
    if len(rows) < 8:
        raise ValueError(
            f"data-aware init needs episodes whose history states their answer; found {len(rows)}"
        )
    y = torch.stack(targets)
    y = y - y.mean(0)
    width = handle.config.state_rows
    explained = {}
    for layer_id, all_inputs in inputs.items():
        layer = handle.layers[layer_id]
        x = all_inputs[rows] - all_inputs.mean(0)
        gram = x.T @ x
        lam = ridge * gram.diagonal().mean()
        b = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0]), x.T @ y)  # [d, d]
        fitted = x @ b
        explained[layer_id] = float(1 - (y - fitted).pow(2).sum() / y.pow(2).sum())
        _, _, vh = torch.linalg.svd(fitted, full_matrices=False)
        directions = vh[:width]  # [R, d] in embedding space
        value_proj = directions @ b.T  # [R, d]: v = P Bᵀ (h − μ)
        target_norm = layer.memory_v_proj.norm(dim=1).mean()
        value_proj = value_proj * (target_norm / value_proj.norm(dim=1).clamp_min(1e-12))[:, None]
        layer.memory_v_proj.copy_(value_proj)
        if "o" in handle.config.heads:
            head = layer.correction_head("o")
            head.copy_(directions.T.to(head.dtype) * handle.config.output_init_scale)
    return explained

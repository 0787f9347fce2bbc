"""One training episode as tensors: the write pass and the read pass, and their loss.

The write pass is the chat model's own, `writing.write_history`: the history split into the
write calls `ChatDeltaMem` makes while living through it, each through `writing.write_messages`
(same segments, sources and MSW routing), with gradients kept through the state. The read pass
is `reading.answer_nll`: the question rendered the way the chat model renders a prompt (the
memory system prompt, then the question; the history is in memory only), with writes off, and
the loss is the cross-entropy of the answer tokens (and the end-of-turn token) only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..injection import AttachedAdapter
from ..prompts import chat_ids
from ..reading import answer_nll
from ..state import MemoryState
from ..writing import MEMORY_SYSTEM_PROMPT, SourceRouter, write_history


@dataclass
class EpisodeLoss:
    """The loss of one episode and what it was made of."""

    loss: torch.Tensor  # answer cross-entropy + sparsity · mean write gate
    answer_nll: torch.Tensor  # mean per answer token (detached)
    gate_mean: torch.Tensor  # mean write gate of what was written (detached)
    tokens: int  # tokens through the backbone (write + read passes)
    swapped_nll: torch.Tensor | None = None  # the answer read with another episode's state


def preservation_kl(
    handle: AttachedAdapter,
    tokenizer: object,
    chat: Sequence[Mapping[str, str]],
    state: MemoryState,
) -> tuple[torch.Tensor, int]:
    """Mean per-token KL(bare backbone ‖ adapted) over a plain ``chat`` read with ``state``.

    ``state`` holds an unrelated memory: where the memory has nothing to say, the adapted
    model should stay the backbone's language model (the goal of ``deltamem eval perplexity``).
    Returns the KL and the number of tokens scored."""
    ids = chat_ids(tokenizer, chat).to(state.device)  # type: ignore[arg-type]
    with torch.no_grad():
        bare = F.log_softmax(handle.model(ids, use_cache=False).logits.float(), dim=-1)
    with handle.memory(state, track_corrections=False):
        adapted = F.log_softmax(handle.model(ids, use_cache=False).logits.float(), dim=-1)
    kl = F.kl_div(adapted, bare, log_target=True, reduction="none").sum(-1).mean()
    return kl, int(ids.shape[1])


def between_episode_share(states: Sequence[MemoryState]) -> torch.Tensor:
    """Per layer, the between-episode variance of the states over their mean squared norm.

    Near 0 means every episode leaves (almost) the same matrix, so the read path can only
    learn that a state is present, not what it holds (training.md, session 4). Differentiable:
    ``1 − share`` is the trainer's spread penalty. Returns ``[num_layers]``."""
    if len(states) < 2:
        raise ValueError(f"between_episode_share needs at least 2 states, got {len(states)}")
    shares = []
    for layer in range(len(states[0].layers)):
        x = torch.stack([s.layers[layer].flatten() for s in states])
        variance = (x - x.mean(0)).pow(2).sum(1).mean()
        shares.append(variance / x.pow(2).sum(1).mean().clamp_min(1e-12))
    return torch.stack(shares)


def episode_loss(
    handle: AttachedAdapter,
    tokenizer: object,
    messages: Sequence[Mapping[str, str]],
    question: str,
    answer: str,
    *,
    router: SourceRouter | None = None,
    sparsity: float = 0.0,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
    truncated_writes: bool = True,
    swapped_state: MemoryState | None = None,
    contrast: float = 0.0,
    margin: float = 1.0,
) -> EpisodeLoss:
    """Write pass (with gradients) + read pass + answer-only cross-entropy (+ gate penalty).

    ``truncated_writes`` (default) keeps the write pass's gradients in the memory maths (the
    backbone's hidden states are read as constants, see `AttachedAdapter.memory`): the backward pass
    then skips the backbone for every write call, which is most of an episode's tokens.

    ``swapped_state`` (another episode's memory) adds the content term: the answer read with
    it should be at least ``margin`` nats per token less likely than with the right state,
    ``contrast · relu(margin − (NLL_swapped − NLL_right))``. A model that only learned which
    answers are likely (the prior) gains nothing from its state and pays the full margin."""
    gates: list[torch.Tensor] = []
    state = write_history(
        handle,
        tokenizer,
        messages,
        router=router,
        system_prompt=system_prompt,
        grad=True,
        gate_log=gates,
        detach_inputs=truncated_writes,
    )
    nll, read_tokens = answer_nll(
        handle, tokenizer, state, question, answer, system_prompt=system_prompt
    )
    gate_mean = torch.stack(gates).mean() if gates else nll.new_zeros(())
    loss = nll + sparsity * gate_mean
    swapped_nll = None
    if swapped_state is not None:
        swapped_nll, more = answer_nll(
            handle, tokenizer, swapped_state, question, answer, system_prompt=system_prompt
        )
        read_tokens += more
        loss = loss + contrast * F.relu(margin - (swapped_nll - nll))
        swapped_nll = swapped_nll.detach()
    write_tokens = sum(
        len(tokenizer(m["content"], add_special_tokens=False).input_ids)  # type: ignore[operator]
        for m in messages
    )
    return EpisodeLoss(
        loss, nll.detach(), gate_mean.detach(), write_tokens + read_tokens, swapped_nll
    )

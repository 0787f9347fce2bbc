"""What one training step pays for, on a batch of episodes (the fast, batched path).

* **answer cross-entropy** through memory (the paper's objective);
* **logit distillation**: KL(teacher ‖ student) at the answer positions, where the teacher is
  the same frozen backbone with the history in its prompt (exactly what the memory replaces);
* **content-contrast target**: the teacher's log-probability *difference* between this
  episode's history and a same-type partner's, at its top tokens, is what the student's
  difference between the right and the partner's state must match; the shared part of the
  targets (format, prior), which dominates the plain losses, cancels;
* **attention transfer** (`transfer`): at every adapted layer, the memory's ``o`` correction
  regresses what the teacher's attention took from the history;
* **margin contrast** (older): the answer must be ``margin`` nats less likely with the
  partner's state;
* the write-gate sparsity and the spread penalty (`episodes.between_episode_share`).

``value_start`` weighs the stored value's first answer token in every per-token term: that is
where recall has to choose the value (the tokens after it follow from it, and a lead-in is
learnt in a few steps), yet in a phrased answer it is one token of ten. ``value_rest`` weighs
the value's later tokens: a segment write that recalls a value's first word often stops there.

The episodes of a step are written in one batched write pass and read in one batched read
pass (`batched`); the teacher runs without gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..episodes import Episode, swap_partners
from ..injection import AttachedAdapter
from ..state import MemoryState
from ..writing import MEMORY_SYSTEM_PROMPT, SourceRouter
from . import batched, transfer


@dataclass(frozen=True)
class ObjectiveWeights:
    """Weights of the terms (0 = off) and their settings."""

    sparsity: float = 0.0
    margin_contrast: float = 0.0
    margin: float = 1.0
    distill: float = 0.0
    temperature: float = 1.0
    contrast_target: float = 0.0
    contrast_top_k: int = 20
    attention_transfer: float = 0.0
    spread: float = 0.0
    value_start: float = 1.0
    value_rest: float = 1.0


@dataclass
class StepLoss:
    """The differentiable loss of a batch (``loss`` per episode, ``penalty`` on the batch's
    states as a whole; the step minimises their sum) and the detached numbers logged."""

    loss: torch.Tensor
    answer_nll: float
    gate_mean: float
    tokens: int
    swapped_minus_right: float | None = None
    distill_kl: float | None = None
    contrast_target_error: float | None = None
    transfer_error: float | None = None
    between_episode_share: float | None = None
    penalty: torch.Tensor | float = 0.0


def batch_share(state: MemoryState) -> torch.Tensor:
    """Per layer, between-episode variance of the batch's states over their mean squared norm
    (`episodes.between_episode_share` on a batched state). ``[num_layers]``."""
    shares = []
    for layer in state.layers:
        x = layer.flatten(1)
        variance = (x - x.mean(0)).pow(2).sum(1).mean()
        shares.append(variance / x.pow(2).sum(1).mean().clamp_min(1e-12))
    return torch.stack(shares)


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(logits / temperature, dim=-1)


def batch_loss(
    handle: AttachedAdapter,
    tokenizer: object,
    episodes: Sequence[Episode],
    weights: ObjectiveWeights,
    *,
    router: SourceRouter | None = None,
    system_prompt: str = MEMORY_SYSTEM_PROMPT,
    truncated_writes: bool = True,
    bf16: bool = False,
) -> StepLoss:
    """The loss of one batch (mean over episodes of each per-episode term)."""
    histories = [e.history() for e in episodes]
    questions = [e.question for e in episodes]
    answers = [e.answer for e in episodes]
    gates: list[torch.Tensor] = []
    state = batched.write_histories(
        handle,
        tokenizer,
        histories,
        router=router,
        system_prompt=system_prompt,
        grad=True,
        detach_inputs=truncated_writes,
        gate_log=gates,
        bf16=bf16,
    )
    reads = batched.question_batch(tokenizer, questions, answers, system_prompt)
    logits = batched.scored_logits(handle, reads, state, bf16=bf16)
    targets = reads.targets.to(logits.device)
    token_weights = (
        batched.value_weights(tokenizer, episodes, reads, weights.value_start, weights.value_rest)
        if weights.value_start != 1.0 or weights.value_rest != 1.0
        else None
    )

    def row_means(values: torch.Tensor) -> torch.Tensor:  # what the loss averages
        return batched.per_row_mean(values, reads, token_weights)

    token_nll = F.cross_entropy(logits, targets, reduction="none")
    nll_rows = batched.per_row_mean(token_nll, reads)  # logged unweighted, comparable across runs
    nll = nll_rows.mean()
    gate_mean = torch.stack(gates).mean() if gates else nll.new_zeros(())
    loss = row_means(token_nll).mean() + weights.sparsity * gate_mean
    out = StepLoss(loss, float(nll.detach()), float(gate_mean.detach()), 0)
    tokens = int(reads.attention_mask.sum())

    partners = swap_partners(episodes)
    needs_partner = weights.margin_contrast > 0 or weights.contrast_target > 0
    if needs_partner and len(episodes) > 1:
        # the content target trains both states' write paths; the margin term only the right one
        source = state if weights.contrast_target > 0 else state.detach()
        swapped_logits = batched.scored_logits(
            handle, reads, batched.permuted(source, partners), bf16=bf16
        )
        swapped_nll = F.cross_entropy(swapped_logits, targets, reduction="none")
        gap = batched.per_row_mean(swapped_nll, reads) - nll_rows
        out.swapped_minus_right = float(gap.detach().mean())
        tokens += int(reads.attention_mask.sum())
        if weights.margin_contrast > 0:
            weighted_gap = row_means(swapped_nll) - row_means(token_nll)
            loss = loss + weights.margin_contrast * F.relu(weights.margin - weighted_gap).mean()

    teacher = None
    if weights.distill > 0 or weights.contrast_target > 0 or weights.attention_transfer > 0:
        full = batched.history_batch(tokenizer, histories, questions, answers, system_prompt)
        tokens += int(full.attention_mask.sum())
        if weights.attention_transfer > 0:
            spans = batched.history_spans(tokenizer, histories, system_prompt)
            history = transfer.history_mask(spans, full.input_ids.shape[1])
            teacher, layer_targets = transfer.teacher_targets(handle, full, history, bf16=bf16)
            error = transfer.transfer_loss(handle, state, layer_targets, full.row_of)
            loss = loss + weights.attention_transfer * error
            out.transfer_error = float(error.detach())
        else:
            with torch.no_grad():
                teacher = batched.scored_logits(handle, full, None, bf16=bf16)
    if weights.distill > 0 and teacher is not None:
        t = weights.temperature
        kl = F.kl_div(
            _log_probs(logits, t), _log_probs(teacher, t), log_target=True, reduction="none"
        ).sum(-1)
        kl = row_means(kl).mean() * t * t
        loss = loss + weights.distill * kl
        out.distill_kl = float(kl.detach())
    if weights.contrast_target > 0 and teacher is not None and len(episodes) > 1:
        other = [histories[j] for j in partners]
        partner_full = batched.history_batch(tokenizer, other, questions, answers, system_prompt)
        with torch.no_grad():
            teacher_partner = batched.scored_logits(handle, partner_full, None, bf16=bf16)
        tokens += int(partner_full.attention_mask.sum())
        error = _contrast_target_error(
            logits, swapped_logits, teacher, teacher_partner, targets, weights.contrast_top_k
        )
        error = row_means(error).mean()
        loss = loss + weights.contrast_target * error
        out.contrast_target_error = float(error.detach())

    if weights.spread > 0 and len(episodes) > 1:
        share = batch_share(state).mean()
        out.penalty = weights.spread * (1 - share)
        out.between_episode_share = float(share.detach())
    out.loss = loss
    out.tokens = tokens
    return out


def _contrast_target_error(
    right: torch.Tensor,
    swapped: torch.Tensor,
    teacher_right: torch.Tensor,
    teacher_partner: torch.Tensor,
    targets: torch.Tensor,
    top_k: int,
) -> torch.Tensor:
    """Per scored position, the mean squared error between the student's and the teacher's
    log-probability differences (right − partner) over the teacher's top-k tokens and the
    gold token. ``[N]``."""
    tokens = teacher_right.topk(top_k, dim=-1).indices
    tokens = torch.cat([tokens, targets[:, None]], dim=-1)  # [N, k + 1]

    def diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (F.log_softmax(a, -1) - F.log_softmax(b, -1)).gather(-1, tokens)

    target = diff(teacher_right, teacher_partner)
    return (diff(right, swapped) - target).pow(2).mean(-1)

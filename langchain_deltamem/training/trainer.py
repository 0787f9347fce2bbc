"""The episode trainer: adapter parameters only, frozen backbone, resumable on a CPU.

A step = ``batch_size`` episodes (`episodes.episode_loss` each, gradients accumulated), AdamW,
cosine schedule with warm-up, gradient clipping. Data for step ``k`` is a pure function of the
seed and ``k`` (synthetic episodes are generated on the fly, JSONL episodes are visited in a
seeded order), so a run resumed from a checkpoint sees exactly the batches it would have seen.

Output directory::

    adapter/                   the trained adapter (own format), written at the end
    checkpoint/                adapter + trainer.pt (optimizer, scheduler, RNG) + trainer.json
    metrics.jsonl              one line per step: loss, answer NLL, gate mean, lr, tokens/s
    loss.png                   the loss curve (refreshed at each checkpoint)
    train_config.json          the run's configuration

Under ``accelerate launch`` each process takes its share of every batch and gradients are
averaged across processes before the step (kept working, not tested here: no GPU).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import string
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm import tqdm

from .. import episodes as episode_data
from ..adapter_files import load_adapter, save_adapter
from ..backbones import load_backbone
from ..config import DeltaMemConfig
from ..injection import attach
from ..writing import MEMORY_SYSTEM_PROMPT, SourceRouter, write_history
from .batched import backbone_precision, cpu_has_native_bf16
from .episodes import between_episode_share, episode_loss, preservation_kl
from .init import estimate_means, init_content_directions, segment_inputs
from .objectives import ObjectiveWeights, batch_loss
from .probe import content_probe, controls, probe_episodes

CHECKPOINT_DIR = "checkpoint"
ADAPTER_DIR = "adapter"


BARE_ANSWER = "{answer}"
"""The answer form that trains the bare value (no lead-in)."""


class TrainConfig(BaseModel):
    """Everything that defines a training run (saved next to its outputs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backbone: str | None = None
    """Hugging Face id or directory; None = the embedded SmolLM2-135M-Instruct."""
    adapter: DeltaMemConfig = Field(default_factory=DeltaMemConfig)
    steps: int = Field(600, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(30, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    sparsity: float = Field(0.0, ge=0)
    """Weight of the mean write gate of what was written (keeps writes selective)."""
    seed: int = 0
    checkpoint_every: int = Field(25, ge=1)
    data: str | None = None
    """A JSONL file of episodes or chats; None = synthetic episodes generated per step."""
    num_facts: tuple[int, ...] = (1, 2)
    distractors: tuple[int, int] = (1, 4)
    """Chatter turns between facts (inclusive range), for synthetic episodes."""
    kinds: tuple[str, ...] | None = None
    value_types: tuple[str, ...] | None = None
    """Only personal facts whose value is of these types (`data.VALUE_TYPES`); None = all."""
    curriculum: tuple[tuple[int, int | None], ...] = ((0, None),)
    """``(from_step, candidates)`` pairs: how many candidate values per type synthetic
    episodes draw from, from that step on (None = the whole open pool)."""
    tool_states: dict[str, int] = Field(default_factory=dict)
    system_prompt: str = MEMORY_SYSTEM_PROMPT
    truncated_writes: bool = True
    """Write-pass gradients through the memory maths only (see `episodes.episode_loss`)."""
    contrast: float = Field(0.0, ge=0)
    """Weight of the content term (`episodes.episode_loss`): each episode's answer is also
    read with the state of another episode in the batch (same value type where possible,
    `data.swap_partners`) and must be ``margin`` nats per token less likely there."""
    margin: float = Field(1.0, gt=0)
    spread: float = Field(0.0, ge=0)
    """Weight of ``1 − between-episode share`` of the batch's written states
    (`episodes.between_episode_share`): a state that is the same for every episode carries
    only "something was written"; this pays for that sameness directly."""
    preserve: float = Field(0.0, ge=0)
    """Weight of the preservation loss: per step, the KL from the bare backbone to the adapted
    model on a plain synthetic chat read with another chat's memory (see
    `episodes.preservation_kl`); keeps plain-text perplexity near the backbone's."""
    init_adapter: str | None = None
    """Start from this adapter directory instead of a fresh one."""
    init: Literal["default", "data"] = "default"
    """``data``: a new adapter's value projections and ``o`` heads start from the content
    directions of training chats (`init.init_content_directions`; needs centred values)."""
    init_episodes: int = Field(256, ge=8)
    """Training chats used to estimate the centring means and the data-aware start."""
    batched: bool = True
    """Write and read the step's episodes in batched forwards (`objectives.batch_loss`);
    False runs the per-episode reference (`episodes.episode_loss`), kept for the benchmark."""
    bf16: bool = False
    """bf16 autocast for the frozen backbone's matmuls (the memory maths stays fp32)."""
    attention: Literal["eager", "sdpa"] = "eager"
    """The backbone's attention kernel while training: on the CPU the fused (sdpa) kernel's
    backward is slower than plain matmuls for these short padded rows (`deltamem bench
    trainer`); both give the same numbers within float tolerance."""
    distill: float = Field(0.0, ge=0)
    """Weight of KL(teacher ‖ student) at the answer positions; the teacher is the frozen
    backbone with the history in its prompt."""
    distill_temperature: float = Field(1.0, gt=0)
    contrast_target: float = Field(0.0, ge=0)
    """Weight of the content-contrast target (`objectives`): the student's log-probability
    difference between the right and a same-type partner's state must match the teacher's
    difference between the two histories."""
    attention_transfer: float = Field(0.0, ge=0)
    """Weight of per-layer attention transfer (`transfer`): each layer's ``o`` correction
    regresses what the teacher's attention took from the history (relative squared error)."""
    autoencode: float = Field(0.0, ge=0, le=1)
    """Fraction of each batch turned into autoencoding chats: the question asks for the
    first stored message back, word for word, from memory alone."""
    answer_form: str = BARE_ANSWER
    """How the trained answer is phrased: a template holding ``{answer}`` once (e.g. ``"You
    told me it's {answer}."``). A bare value is an unlikely first token of any reply, even for
    the backbone with the whole history in its prompt; after a lead-in the teacher predicts
    it (docs/results/training.md, session 13). Autoencoding chats keep their own answer."""
    value_start_weight: float = Field(1.0, gt=0)
    """Loss weight of the stored value's first answer token (1 = every answer token alike):
    the token where recall chooses the value, one of ten in a phrased answer
    (`objectives.value_start_token`)."""
    value_rest_weight: float = Field(1.0, gt=0)
    """Loss weight of the stored value's later answer tokens (`batched.value_token_span`)."""
    gate_lr: float | None = Field(None, gt=0)
    """Learning rate of the write gates (``beta_proj``, ``beta_bias``); None = ``lr``."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """``constant`` (after warm-up) lets a run be extended without a jump in the rate."""
    probe_every: int = Field(0, ge=0)
    """Every K steps, the held-out content probe (`probe`) goes into metrics.jsonl; 0 = off."""
    probe_n: int = Field(200, ge=2)
    probe_value_types: tuple[str, ...] | None = ("colour", "food")
    probe_kinds: tuple[str, ...] = ("facts",)
    """Episode kinds of the probe, e.g. ``("agent",)`` for tool results in MSW states."""
    probe_greedy: bool = True
    """The probe also decodes greedily with the right and the swapped state (accuracy)."""
    train: Literal["all", "write", "read"] = "all"
    """Which parameters learn: ``write`` = the write path (key/value projections and gates),
    ``read`` = the read path (query projection and correction heads); the rest stay fixed.
    ``write`` with an ``init_adapter`` whose read path already decodes states puts the whole
    gradient into learning what to write."""

    @field_validator("answer_form")
    @classmethod
    def _valid_answer_form(cls, form: str) -> str:
        return check_answer_form(form)


WRITE_PATH = ("memory_k_proj", "memory_v_proj", "beta_proj", "beta_bias")
GATES = ("beta_proj", "beta_bias")
FIXED = ("input_mean",)
"""Adapter tensors that are estimated from data, never trained."""
EXTENDABLE = ("steps", "probe_every", "bf16", "attention")
"""Fields a run may change when it is resumed: more steps, another probe interval, and how
the backbone computes (bf16 autocast is fast only on CPUs with bf16 instructions, and a run
may move between machines; each metrics row says which precision its step used)."""
AUTOENCODE_QUESTION = "Repeat the first message I sent you, word for word."


def check_answer_form(form: str) -> str:
    """``form`` if it is a template with exactly one ``{answer}`` and no other field."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(form) if f is not None]
    except ValueError as err:
        raise ValueError(f"answer form {form!r} is not a valid template: {err}") from None
    if fields != ["answer"]:
        raise ValueError(
            f"answer form {form!r} must hold {{answer}} exactly once and no other field "
            f"(found {fields or 'none'})"
        )
    return form


def in_answer_form(episode: episode_data.Episode, form: str) -> episode_data.Episode:
    """The episode with its answer phrased by ``form`` (the bare value is kept in ``meta``)."""
    if form == BARE_ANSWER:
        return episode
    return episode.model_copy(update={"answer": form.format(answer=episode.answer)})


def trainable_parameters(handle: Any, which: str) -> list[torch.nn.Parameter]:
    """The adapter parameters that learn (``all``, ``write`` or ``read``); the others get
    ``requires_grad=False`` so the backward pass skips them."""
    return [p for _, p in _trainable(handle, which)]


def _trainable(handle: Any, which: str) -> list[tuple[str, torch.nn.Parameter]]:
    chosen = []
    for layer_id in handle.layer_ids:
        for name, parameter in handle.layers[layer_id].named_parameters():
            if name in FIXED:
                continue
            is_write = name in WRITE_PATH
            keep = which == "all" or (which == "write") == is_write
            parameter.requires_grad_(keep)
            if keep:
                chosen.append((name, parameter))
    if not chosen:
        raise ValueError(f"no adapter parameters to train for train={which!r}")
    return chosen


def make_optimizer(handle: Any, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable adapter parameters; the gates in a group of their own when
    ``gate_lr`` is set."""
    named = _trainable(handle, config.train)
    gates = [p for n, p in named if n in GATES and config.gate_lr is not None]
    rest = [p for n, p in named if not (n in GATES and config.gate_lr is not None)]
    groups: list[dict[str, Any]] = [{"params": rest, "lr": config.lr}]
    if gates:
        groups.append({"params": gates, "lr": config.gate_lr})
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=config.lr, weight_decay=config.weight_decay
    )


def autoencoding(episode: episode_data.Episode) -> episode_data.Episode:
    """The episode with its question replaced by a request for the first stored user
    message, which becomes the answer: the memory must hold the message itself."""
    first = next((m.content for m in episode.messages if m.role == "user"), None)
    if first is None:
        return episode
    return episode.model_copy(
        update={"question": AUTOENCODE_QUESTION, "answer": first, "kind": "autoencode"}
    )


def candidates_at(config: TrainConfig, step: int) -> int | None:
    """The curriculum's candidate-pool size at ``step``."""
    current: int | None = None
    for start, candidates in sorted(config.curriculum, key=lambda pair: pair[0]):
        if step >= start:
            current = candidates
    return current


class EpisodeSource:
    """The episodes of each step, a pure function of (seed, step)."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.fixed: list[episode_data.Episode] | None = None
        if config.data is not None:
            path = Path(config.data)
            try:
                self.fixed = episode_data.read_jsonl(path)
            except ValueError:
                self.fixed = episode_data.load_chats_jsonl(path)
            if not self.fixed:
                raise ValueError(f"{path}: no episodes")

    def batch(self, step: int) -> list[episode_data.Episode]:
        config = self.config
        episodes = [in_answer_form(e, config.answer_form) for e in self._episodes(step)]
        share = round(config.autoencode * len(episodes))
        if share:
            order = list(range(len(episodes)))
            random.Random(config.seed * 31 + step).shuffle(order)
            for i in order[:share]:
                episodes[i] = autoencoding(episodes[i])
        return episodes

    def _episodes(self, step: int) -> list[episode_data.Episode]:
        config = self.config
        if self.fixed is None:
            return episode_data.generate_episodes(
                config.batch_size,
                split="train",
                seed=config.seed * 1_000_003 + step,
                num_facts=config.num_facts,
                kinds=config.kinds,
                distractors=config.distractors,
                candidates=candidates_at(config, step),
                value_types=config.value_types,
            )
        n = len(self.fixed)
        out = []
        for i in range(step * config.batch_size, (step + 1) * config.batch_size):
            epoch, index = divmod(i, n)
            order = list(range(n))
            random.Random(config.seed * 7919 + epoch).shuffle(order)
            out.append(self.fixed[order[index]])
        return out

    def plain_chats(self, step: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """Two synthetic training chats with chatter for step ``step``'s preservation loss:
        the text to score and the unrelated memory to read while scoring it."""
        first, second = episode_data.generate_episodes(
            2,
            split="train",
            seed=self.config.seed * 1_000_003 + step + 500_000_000,
            num_facts=(1, 2, 4),
            kinds=("facts", "update", "document"),
            distractors=(1, 3),
        )
        return first.history(), second.history()


def cosine_lr(step: int, config: TrainConfig) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 10 % of the peak."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """Runs (or resumes) one training run into ``out_dir``."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, *, accelerator: Any = None):
        self.config = config
        self.out = Path(out_dir)
        self.accelerator = accelerator
        torch.manual_seed(config.seed)
        model, self.tokenizer = load_backbone(config.backbone, attn_implementation=config.attention)
        if accelerator is not None:
            model = model.to(accelerator.device)
        if config.bf16 and model.device.type == "cpu" and not cpu_has_native_bf16():
            warnings.warn(
                "bf16 autocast on a CPU without bf16 instructions (AVX512-BF16/AMX) is emulated "
                "and slower than fp32; drop --bf16 on this machine",
                stacklevel=2,
            )
        if config.init_adapter is not None:
            # an MSW run may start from a single-state adapter: its maps shared by the states
            widen = config.adapter.num_states if config.adapter.num_states > 1 else None
            self.handle = load_adapter(model, config.init_adapter, num_states=widen)
        else:
            self.handle = attach(model, config.adapter, seed=config.seed)
            fresh = not (self.out / CHECKPOINT_DIR / "trainer.json").exists()
            if fresh and (config.adapter.centred_inputs or config.init == "data"):
                self._start_from_data()
        self.router = SourceRouter(self.handle.config.num_states, config.tool_states)
        self.params = trainable_parameters(self.handle, config.train)
        self.optimizer = make_optimizer(self.handle, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine_lr(step, config)
        )
        self.source = EpisodeSource(config)
        self.step = 0
        self._probe_set: list[episode_data.Episode] | None = None
        self._controls: dict[str, float] | None = None

    def _start_from_data(self) -> None:
        """Centring means (and with ``init="data"`` the content directions) from training
        chats the steps never use (their own seed)."""
        config = self.config
        episodes = episode_data.generate_episodes(
            config.init_episodes,
            split="train",
            seed=config.seed * 1_000_003 + 900_000_000,
            num_facts=config.num_facts,
            kinds=config.kinds,
            distractors=config.distractors,
            value_types=config.value_types,
        )
        inputs, contents = segment_inputs(
            self.handle, self.tokenizer, episodes, system_prompt=config.system_prompt
        )
        if config.adapter.centred_inputs:
            estimate_means(self.handle, inputs)
        if config.init == "data":
            explained = init_content_directions(
                self.handle, self.tokenizer, episodes, inputs, contents
            )
            self.init_report = explained

    # --- the loop -------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def run(self, *, max_steps: int | None = None, progress: bool = True) -> Path:
        """Train until ``config.steps`` (or ``max_steps`` more steps); returns the adapter dir.

        Resumes from ``out_dir/checkpoint`` when present."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_or_write_config()
        self._resume()
        end = (
            self.config.steps
            if max_steps is None
            else min(self.config.steps, self.step + max_steps)
        )
        bar = tqdm(
            total=self.config.steps,
            initial=self.step,
            desc="train",
            disable=not (progress and self.is_main),
            dynamic_ncols=True,
        )
        try:
            while self.step < end:
                record = self.train_step()
                if self.is_main:
                    self._log(record)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{record['loss']:.3f}",
                    nll=f"{record['answer_nll']:.3f}",
                    tok_s=f"{record['tokens_per_s']:.0f}",
                )
                if (
                    self.is_main
                    and self.config.probe_every
                    and (self.step % self.config.probe_every == 0)
                ):
                    self._log({"step": self.step, "probe": self.probe()})
                if self.step % self.config.checkpoint_every == 0 or self.step == end:
                    self.save_checkpoint()
        finally:
            bar.close()
        if self.step >= self.config.steps and self.is_main:
            save_adapter(self.handle, self.out / ADAPTER_DIR)
        return self.out / ADAPTER_DIR

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over the step's batch; returns its metrics."""
        episodes = self._sample_batch()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        record = self._episode_losses(episodes)
        tokens = record.pop("tokens")
        preserve_kl, kl_tokens = self._preservation_loss()
        grad_norm, lr = self._optimizer_step()
        elapsed = time.perf_counter() - start
        return self._step_metrics(
            {**record, "preserve_kl": preserve_kl},
            episodes=len(episodes),
            tokens=tokens + kl_tokens,
            grad_norm=grad_norm,
            lr=lr,
            seconds=elapsed,
        )

    def _sample_batch(self) -> list[episode_data.Episode]:
        """The step's episodes (a function of the step alone, so a resumed run sees the same);
        with several processes, this process's share."""
        episodes = self.source.batch(self.step)
        if self.accelerator is not None:  # each process takes its share of the batch
            rank, world = self.accelerator.process_index, self.accelerator.num_processes
            episodes = episodes[rank::world]
        return episodes

    def _episode_losses(self, episodes: list[episode_data.Episode]) -> dict[str, Any]:
        """The episodes' losses, backward included, batched or one episode at a time."""
        if self.config.batched:
            return self._batched_losses(episodes)
        return self._reference_losses(episodes)

    def _preservation_loss(self) -> tuple[float | None, int]:
        """With ``preserve`` > 0, the KL that keeps plain chat unchanged by memory, backward
        included; returns its value (None when off) and the tokens it read."""
        config = self.config
        if config.preserve <= 0:
            return None, 0
        text, other = self.source.plain_chats(self.step)
        # The unrelated memory is a constant here: the term teaches the read path to leave
        # text alone, so its write pass needs no graph; bf16 cuts the KL pass by about 40 %.
        with backbone_precision(config.bf16):
            unrelated = self._memory_of(other)
            kl, kl_tokens = preservation_kl(self.handle, self.tokenizer, text, unrelated)
        (config.preserve * kl).backward()
        return float(kl.detach()), kl_tokens

    def _optimizer_step(self) -> tuple[torch.Tensor, float]:
        """Average the gradients over processes, clip them, and step the optimizer and the
        schedule; returns the gradient norm before clipping and the learning rate used."""
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            for p in self.params:
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return grad_norm, lr

    def _step_metrics(
        self,
        record: dict[str, Any],
        *,
        episodes: int,
        tokens: int,
        grad_norm: torch.Tensor,
        lr: float,
        seconds: float,
    ) -> dict[str, Any]:
        """The logged row of the step just taken: its losses, the optimizer's numbers and
        the throughput."""
        return {
            "step": self.step,
            **record,
            "grad_norm": float(grad_norm),
            "lr": lr,
            "candidates": candidates_at(self.config, self.step - 1),
            "bf16": self.config.bf16,
            "episodes_per_s": episodes / max(seconds, 1e-9),
            "tokens_per_s": tokens / max(seconds, 1e-9),
            "seconds": seconds,
        }

    def _batched_losses(self, episodes: list[episode_data.Episode]) -> dict[str, Any]:
        """The batch in batched forwards (`objectives.batch_loss`), backward included."""
        config = self.config
        weights = ObjectiveWeights(
            sparsity=config.sparsity,
            margin_contrast=config.contrast,
            margin=config.margin,
            distill=config.distill,
            temperature=config.distill_temperature,
            contrast_target=config.contrast_target,
            attention_transfer=config.attention_transfer,
            spread=config.spread,
            value_start=config.value_start_weight,
            value_rest=config.value_rest_weight,
        )
        result = batch_loss(
            self.handle,
            self.tokenizer,
            episodes,
            weights,
            router=self.router,
            system_prompt=config.system_prompt,
            truncated_writes=config.truncated_writes,
            bf16=config.bf16,
        )
        (result.loss + result.penalty).backward()
        return {
            "loss": float(result.loss.detach()),
            "answer_nll": result.answer_nll,
            "gate_mean": result.gate_mean,
            "between_episode_share": result.between_episode_share,
            "swapped_minus_right": result.swapped_minus_right,
            "distill_kl": result.distill_kl,
            "contrast_target_error": result.contrast_target_error,
            "transfer_error": result.transfer_error,
            "tokens": result.tokens,
        }

    def _reference_losses(self, episodes: list[episode_data.Episode]) -> dict[str, Any]:
        """The batch one episode at a time (`episodes.episode_loss`), backward included."""
        config = self.config
        if (
            config.distill
            or config.contrast_target
            or config.attention_transfer
            or config.value_start_weight != 1.0
            or config.value_rest_weight != 1.0
        ):
            raise ValueError(
                "distill, contrast_target, attention_transfer and the value weights need the "
                "batched path (batched=True)"
            )
        losses, nlls, gates, tokens = [], [], [], 0
        swapped_nlls: list[float] = []
        partners = episode_data.swap_partners(episodes)
        for index, episode in enumerate(episodes):
            swapped_state = None
            if config.contrast > 0 and partners[index] != index:
                swapped_state = self._memory_of(episodes[partners[index]].history())
            result = episode_loss(
                self.handle,
                self.tokenizer,
                episode.history(),
                episode.question,
                episode.answer,
                router=self.router,
                sparsity=config.sparsity,
                system_prompt=config.system_prompt,
                truncated_writes=config.truncated_writes,
                swapped_state=swapped_state,
                contrast=config.contrast,
                margin=config.margin,
            )
            (result.loss / len(episodes)).backward()
            if result.swapped_nll is not None:
                swapped_nlls.append(float(result.swapped_nll) - float(result.answer_nll))
            losses.append(float(result.loss.detach()))
            nlls.append(float(result.answer_nll))
            gates.append(float(result.gate_mean))
            tokens += result.tokens
        spread_share = None
        if config.spread > 0 and len(episodes) > 1:
            states = [self._memory_of(e.history(), grad=True) for e in episodes]
            share = between_episode_share(states).mean()
            (config.spread * (1 - share)).backward()
            spread_share = float(share.detach())
        return {
            "loss": sum(losses) / len(losses),
            "answer_nll": sum(nlls) / len(nlls),
            "gate_mean": sum(gates) / len(gates),
            "between_episode_share": spread_share,
            "swapped_minus_right": sum(swapped_nlls) / len(swapped_nlls) if swapped_nlls else None,
            "tokens": tokens,
        }

    def probe(self) -> dict[str, Any]:
        """The held-out content probe (`probe.content_probe`) on the current adapter."""
        if self._probe_set is None:
            self._probe_set = probe_episodes(
                self.config.probe_n, self.config.probe_value_types, kinds=self.config.probe_kinds
            )
        result = content_probe(
            self.handle,
            self.tokenizer,
            self._probe_set,
            router=self.router,
            system_prompt=self.config.system_prompt,
            bf16=self.config.bf16,
            greedy=self.config.probe_greedy,
        )
        if self.config.probe_greedy:
            if self._controls is None:  # the bare backbone's: the same at every probe
                self._controls = controls(
                    self.handle,
                    self.tokenizer,
                    self._probe_set,
                    system_prompt=self.config.system_prompt,
                    bf16=self.config.bf16,
                )
            result["controls"] = self._controls
        if self.config.answer_form != BARE_ANSWER:
            # the same episodes scored in the trained phrasing (all of its tokens)
            result["in_answer_form"] = content_probe(
                self.handle,
                self.tokenizer,
                [in_answer_form(e, self.config.answer_form) for e in self._probe_set],
                router=self.router,
                system_prompt=self.config.system_prompt,
                bf16=self.config.bf16,
            )
        return result

    def _memory_of(self, history: list[dict[str, str]], *, grad: bool = False) -> Any:
        """A state written from ``history`` the way the chat model writes it; ``grad`` keeps
        the write path's graph (the swapped control is written without: the right state's
        write path carries the gradient)."""
        with torch.set_grad_enabled(grad):
            return write_history(
                self.handle,
                self.tokenizer,
                history,
                router=self.router,
                system_prompt=self.config.system_prompt,
                grad=grad,
                detach_inputs=self.config.truncated_writes,
            )

    # --- files ----------------------------------------------------------------------------
    def _check_or_write_config(self) -> None:
        path = self.out / "train_config.json"
        body = self.config.model_dump(mode="json")
        if path.exists():
            # fields added since the run started hold their defaults, so older runs resume
            stored = TrainConfig.model_validate(json.loads(path.read_text())).model_dump(
                mode="json"
            )
            differs = sorted(k for k in body if body[k] != stored[k] and k not in EXTENDABLE)
            if differs:
                raise ValueError(
                    f"{self.out} holds a run with another configuration ({', '.join(differs)} "
                    f"differ); use a new --out directory, or the same settings to resume (only "
                    f"{', '.join(EXTENDABLE)} may change, e.g. more --steps to extend it)"
                )
            if stored != body and self.is_main:
                path.write_text(json.dumps(body, indent=2) + "\n")
        elif self.is_main:
            path.write_text(json.dumps(body, indent=2) + "\n")

    def _log(self, record: dict[str, Any]) -> None:
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def save_checkpoint(self) -> None:
        """Adapter + optimizer + scheduler + RNG + step, published atomically."""
        if not self.is_main:
            return
        final = self.out / CHECKPOINT_DIR
        tmp = self.out / f".{CHECKPOINT_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_adapter(self.handle, tmp / ADAPTER_DIR)
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
            tmp / "trainer.pt",
        )
        (tmp / "trainer.json").write_text(json.dumps({"step": self.step}) + "\n")
        old = self.out / f".{CHECKPOINT_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        self._truncate_metrics()
        plot_loss(self.out / "metrics.jsonl", self.out / "loss.png")

    def _truncate_metrics(self) -> None:
        """Drop metric lines past the checkpoint (written by a run that died after them)."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["step"] <= self.step]
        if len(kept) != len(lines):
            path.write_text("".join(ln + "\n" for ln in kept))

    def _resume(self) -> None:
        checkpoint = self.out / CHECKPOINT_DIR
        if not (checkpoint / "trainer.json").exists():
            return
        step = json.loads((checkpoint / "trainer.json").read_text())["step"]
        model = self.handle.model
        self.handle.detach()
        self.handle = load_adapter(model, checkpoint / ADAPTER_DIR)
        self.params = trainable_parameters(self.handle, self.config.train)
        state = torch.load(checkpoint / "trainer.pt", weights_only=True)  # never unpickle code
        self.optimizer = make_optimizer(self.handle, self.config)
        # the scheduler first: building it sets the groups' lr, which the optimizer's saved
        # state (the lr of the next step) must then overwrite
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_lr(s, self.config)
        )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(step)
        self._truncate_metrics()


def read_metrics(path: Path) -> Iterator[dict[str, Any]]:
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def plot_loss(metrics: Path, png: Path) -> None:
    """Loss and answer NLL per step (with a 25-step running mean) and, when the run probes
    itself, the held-out content gap (swapped − right, 95 % interval) over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = list(read_metrics(metrics))
    rows = [r for r in everything if "loss" in r]
    probes = [r for r in everything if "probe" in r]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    panels = 2 if probes else 1
    fig, axes = plt.subplots(panels, 1, figsize=(7, 4 * panels), squeeze=False)
    ax = axes[0][0]
    for key, label in (("loss", "loss"), ("answer_nll", "answer NLL")):
        values = [r[key] for r in rows]
        ax.plot(steps, values, alpha=0.3, linewidth=0.8)
        window = 25
        smooth = [
            sum(values[max(0, i - window + 1) : i + 1])
            / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))
        ]
        ax.plot(steps, smooth, label=f"{label} (running mean)")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per answer token")
    ax.legend()
    ax.grid(alpha=0.3)
    if probes:
        ax = axes[1][0]
        x = [r["step"] for r in probes]
        gap = [r["probe"]["swapped_minus_right"] for r in probes]
        ax.errorbar(
            x,
            [g["estimate"] for g in gap],
            yerr=[
                [g["estimate"] - g["low"] for g in gap],
                [g["high"] - g["estimate"] for g in gap],
            ],
            marker="o",
            capsize=3,
            label=f"held-out swapped − right (n={probes[-1]['probe']['n']}, 95 % CI)",
        )
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("nats per answer token")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png)

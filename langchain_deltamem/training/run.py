"""``deltamem train``: command-line options → `TrainConfig` → `Trainer` (CPU by default).

Runs on the CPU as a plain command; under ``accelerate launch`` (several processes, e.g. GPUs)
each process takes its share of every batch and gradients are averaged (not tested here).
Rerunning the same command with the same ``--out`` resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..config import STRATEGIES, DeltaMemConfig
from ..episodes import KINDS
from ..writing import parse_tool_states
from .trainer import BARE_ANSWER, TrainConfig, Trainer, check_answer_form


def parse_curriculum(text: str) -> tuple[tuple[int, int | None], ...]:
    """``"0:2,100:16,300:"`` → ``((0, 2), (100, 16), (300, None))`` (empty = open pool)."""
    pairs = []
    for part in text.split(","):
        step, _, candidates = part.partition(":")
        try:
            pairs.append((int(step), int(candidates) if candidates.strip() else None))
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"curriculum entry {part!r}: expected STEP:CANDIDATES (e.g. 0:2,100:)"
            ) from err
    return tuple(pairs)


def parse_answer_form(text: str) -> str:
    """``--answer-form``: a template with ``{answer}`` exactly once."""
    try:
        return check_answer_form(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_layers(text: str) -> tuple[int, ...]:
    """``"0-9,20"`` → ``(0, 1, …, 9, 20)``: the decoder layers that get a memory."""
    layers: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low = int(first)
            span = range(low, (int(last) if dash else low) + 1)
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"target layers {part!r}: expected LAYER or FIRST-LAST (e.g. 0-9,20)"
            ) from err
        if not span:
            raise argparse.ArgumentTypeError(f"target layers {part!r}: empty range")
        layers.extend(span)
    return tuple(layers)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    parser.add_argument("--backbone", default=None, help="HF id or directory (default: embedded)")
    parser.add_argument("--mode", choices=sorted(STRATEGIES), default="ssw")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--heads", default="q,o", help="correction heads, e.g. q,o or q,k,v,o")
    parser.add_argument("--alpha", type=float, default=None, help="scale numerator (16)")
    parser.add_argument("--output-init", choices=["zero", "base_slice"], default=None)
    parser.add_argument("--output-init-scale", type=float, default=None)
    parser.add_argument("--beta-bias", type=float, default=None, help="initial gate bias")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many now")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--sparsity", type=float, default=0.0)
    parser.add_argument(
        "--contrast",
        type=float,
        default=0.0,
        help="weight of the content term: the answer must be less likely with another "
        "episode's state",
    )
    parser.add_argument("--margin", type=float, default=1.0, help="nats per answer token")
    parser.add_argument(
        "--spread",
        type=float,
        default=0.0,
        help="weight of the penalty on written states that are the same for every episode",
    )
    parser.add_argument(
        "--preserve",
        type=float,
        default=0.0,
        help="weight of the KL to the bare backbone on plain text with an unrelated memory",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=25)
    parser.add_argument("--data", default=None, help="JSONL episodes or chats (default: synthetic)")
    parser.add_argument("--num-facts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kinds", nargs="*", default=None)
    parser.add_argument(
        "--value-types", nargs="+", default=None, help="only facts with values of these types"
    )
    parser.add_argument("--distractors", type=int, nargs=2, default=[1, 4], metavar=("LO", "HI"))
    parser.add_argument("--curriculum", type=parse_curriculum, default=((0, None),))
    parser.add_argument("--init-adapter", default=None)
    parser.add_argument(
        "--train",
        choices=["all", "write", "read"],
        default="all",
        help="which adapter parameters learn (write: keys, values, gates; read: queries, heads)",
    )
    parser.add_argument("--tool-state", action="append", default=[], metavar="TOOL=INDEX")
    parser.add_argument(
        "--full-write-grad",
        action="store_true",
        help="backpropagate the write pass through the backbone too (slower)",
    )
    parser.add_argument(
        "--centre",
        default="",
        help="write projections whose input is centred, e.g. k,v (μ estimated on chat text)",
    )
    parser.add_argument(
        "--segment-tokens",
        choices=["all", "content"],
        default="all",
        help="content: role markers and template tokens are not part of segment means",
    )
    parser.add_argument(
        "--target-layers",
        type=parse_layers,
        default=None,
        help="adapt only these decoder layers, e.g. 0-9 (default: all); the write pass "
        "stops after the last one",
    )
    parser.add_argument(
        "--update-mode",
        choices=["standard", "gated", "plain"],
        default=None,
        help="plain = no forgetting",
    )
    parser.add_argument(
        "--init",
        choices=["default", "data"],
        default="default",
        help="data: value projections and o heads from the content directions of chats",
    )
    parser.add_argument("--init-episodes", type=int, default=256)
    parser.add_argument(
        "--reference-loop",
        action="store_true",
        help="one episode at a time (the reference the batched path is tested against)",
    )
    parser.add_argument(
        "--bf16", action="store_true", help="bf16 autocast for the backbone (memory maths fp32)"
    )
    parser.add_argument(
        "--attention",
        choices=["eager", "sdpa"],
        default="eager",
        help="the backbone's attention kernel while training (eager is faster on the CPU here)",
    )
    parser.add_argument(
        "--distill",
        type=float,
        default=0.0,
        help="weight of KL(teacher ‖ student) at the answer; teacher = backbone with the history",
    )
    parser.add_argument("--distill-temperature", type=float, default=1.0)
    parser.add_argument(
        "--contrast-target",
        type=float,
        default=0.0,
        help="weight of the content-contrast target (right − partner, student vs teacher)",
    )
    parser.add_argument(
        "--attention-transfer",
        type=float,
        default=0.0,
        help="weight of per-layer attention transfer (o correction ≈ what attention took "
        "from the history)",
    )
    parser.add_argument(
        "--autoencode",
        type=float,
        default=0.0,
        help="fraction of each batch that asks for the first stored message back",
    )
    parser.add_argument(
        "--answer-form",
        type=parse_answer_form,
        default=BARE_ANSWER,
        help="how the trained answer is phrased, a template with {answer} once "
        '(e.g. "You told me it\'s {answer}."); default: the bare value',
    )
    parser.add_argument(
        "--value-start-weight",
        type=float,
        default=1.0,
        help="loss weight of the stored value's first answer token (default 1: all alike)",
    )
    parser.add_argument(
        "--value-rest-weight",
        type=float,
        default=1.0,
        help="loss weight of the stored value's later answer tokens (default 1)",
    )
    parser.add_argument("--gate-lr", type=float, default=None, help="learning rate of the gates")
    parser.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    parser.add_argument(
        "--probe-every", type=int, default=0, help="held-out content probe every K steps"
    )
    parser.add_argument("--probe-n", type=int, default=200)
    parser.add_argument(
        "--probe-nll-only", action="store_true", help="the probe skips greedy decoding"
    )
    parser.add_argument("--probe-value-types", nargs="+", default=["colour", "food"])
    parser.add_argument(
        "--probe-kinds",
        nargs="+",
        default=["facts"],
        choices=KINDS,
        help="episode kinds of the probe (agent: tool results, for MSW tool states)",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    adapter: dict[str, Any] = {
        "rank": args.rank,
        "heads": tuple(h.strip() for h in args.heads.split(",") if h.strip()),
    }
    if args.centre:
        adapter["centred_inputs"] = args.centre
    adapter["segment_tokens"] = args.segment_tokens
    if args.target_layers is not None:
        adapter["target_layers"] = args.target_layers
    for option, field in (
        ("update_mode", "update_mode"),
        ("alpha", "alpha"),
        ("output_init", "output_init"),
        ("output_init_scale", "output_init_scale"),
        ("beta_bias", "beta_bias_init"),
    ):
        if getattr(args, option) is not None:
            adapter[field] = getattr(args, option)
    return TrainConfig(
        backbone=args.backbone,
        adapter=DeltaMemConfig.for_strategy(args.mode, **adapter),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        sparsity=args.sparsity,
        preserve=args.preserve,
        contrast=args.contrast,
        margin=args.margin,
        spread=args.spread,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        data=args.data,
        num_facts=tuple(args.num_facts),
        kinds=tuple(args.kinds) if args.kinds else None,
        value_types=tuple(args.value_types) if args.value_types else None,
        distractors=tuple(args.distractors),
        curriculum=args.curriculum,
        init_adapter=args.init_adapter,
        train=args.train,
        truncated_writes=not args.full_write_grad,
        tool_states=parse_tool_states(args.tool_state),
        init=args.init,
        init_episodes=args.init_episodes,
        batched=not args.reference_loop,
        bf16=args.bf16,
        attention=args.attention,
        distill=args.distill,
        distill_temperature=args.distill_temperature,
        contrast_target=args.contrast_target,
        attention_transfer=args.attention_transfer,
        autoencode=args.autoencode,
        answer_form=args.answer_form,
        value_start_weight=args.value_start_weight,
        value_rest_weight=args.value_rest_weight,
        gate_lr=args.gate_lr,
        schedule=args.schedule,
        probe_every=args.probe_every,
        probe_n=args.probe_n,
        probe_greedy=not args.probe_nll_only,
        probe_value_types=tuple(args.probe_value_types) if args.probe_value_types else None,
        probe_kinds=tuple(args.probe_kinds),
    )


def run_from_args(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch / torchrun
        from accelerate import Accelerator

        accelerator = Accelerator()
    trainer = Trainer(config, args.out, accelerator=accelerator)
    adapter_dir = trainer.run(max_steps=args.max_steps, progress=not args.no_progress)
    if trainer.step >= config.steps:
        print(f"adapter written to {adapter_dir}")
    else:
        print(f"stopped at step {trainer.step}/{config.steps}; rerun to resume")


def main(argv: list[str] | None = None) -> None:
    parser = add_arguments(argparse.ArgumentParser(prog="deltamem train"))
    run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    main()

"""The main job on the embedded default: write a conversation into δ-mem, then ask about it.

Run with ``make demo`` or ``python -m langchain_deltamem.demo``. The question's prompt holds only
the system message and the question; the conversation reaches the model through the memory
state alone. Until a trained adapter ships, the adapter is fresh, so the
memory is written and read but the answer cannot yet depend on it; the printed correction
ratios show how strongly the read memory steers each layer.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from .backbones import load_backbone
from .config import DeltaMemConfig
from .injection import attach
from .segments import encode_segments

SYSTEM_PROMPT = (
    "You answer questions using earlier notes, passages, or dialogue history. Use exact details "
    "from them whenever possible. If they do not contain the answer, reply exactly: No "
    "information available."
)
CONVERSATION = [
    {"role": "user", "content": "Hi! I'm Mara. I just moved to Lisbon for a job at a bakery."},
    {"role": "assistant", "content": "Welcome to Lisbon, Mara! How is the bakery job going?"},
    {"role": "user", "content": "Great. My shift starts at 5 am and my dog Pixel hates it."},
    {"role": "assistant", "content": "Early starts are hard on everyone, Pixel included."},
]
QUESTION = "What is the name of my dog?"


def run(max_new_tokens: int = 24, seed: int = 0) -> dict[str, object]:
    """Load, write, ask; returns what was printed, for tests."""
    started = time.perf_counter()
    model, tokenizer = load_backbone()
    print(
        "backbone: SmolLM2-135M-Instruct (embedded), loaded in "
        f"{time.perf_counter() - started:.1f} s"
    )
    handle = attach(model, DeltaMemConfig(), seed=seed)
    n_params = sum(p.numel() for p in handle.parameters())
    print(
        f"adapter: fresh {handle.config.strategy}, rank {handle.config.rank}, heads "
        f"{','.join(handle.config.heads)}, {n_params:,} parameters on "
        f"{len(handle.layer_ids)} layers"
    )

    state = handle.new_state()
    history = encode_segments(
        tokenizer,
        [{"role": "system", "content": SYSTEM_PROMPT}, *CONVERSATION],
        content_only=handle.config.segment_tokens == "content",
    )
    with (
        torch.no_grad(),
        handle.memory(state, write=True, segment_ids=history.segment_ids) as write,
    ):
        model(history.input_ids)
    print(
        f"wrote {history.num_segments} segments ({history.input_ids.shape[1]} tokens); "
        f"writes per state: {write.writes[0].tolist()}"
    )

    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": QUESTION}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    before = [t.clone() for t in state.layers]
    with torch.no_grad(), handle.memory(state) as read:
        output = model.generate(
            **prompt,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    unchanged = all(torch.equal(a, b) for a, b in zip(before, state.layers, strict=True))
    print(f"\nQ: {QUESTION}\nA: {answer.strip()}")
    print(
        f"(state unchanged by reading: {unchanged}; {state.nbytes_per_conversation:,} bytes "
        "of memory for this conversation)\n"
    )

    ratios = read.correction_ratio()
    print(f"{'layer':>5} {'state norm':>11} {'max |S|':>9} {'Δq/q':>9} {'Δo/o':>9}")
    for row in state.stats():
        layer = row["layer"]
        ratio = ratios.get(layer, {})
        print(
            f"{layer:>5} {row['norm'][0][0]:>11.4f} {row['max_abs'][0][0]:>9.4f} "
            f"{ratio.get('q', 0.0):>9.2e} {ratio.get('o', 0.0):>9.2e}"
        )
    return {"answer": answer, "state_unchanged": unchanged, "ratios": ratios, "state": state}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``deltamem demo`` options."""
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run_from_args(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(args.max_new_tokens, args.seed)


def main(argv: list[str] | None = None) -> None:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    main()

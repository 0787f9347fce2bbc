"""Does the data-aware start carry content before any training?

Builds a centred adapter (k, v; content-only segments), estimates μ and the content
directions on training chats (`training.init`), then runs the held-out content probe
(n episodes, colour/food) at several output-head gains. Prints one line per gain."""

from __future__ import annotations

import argparse
import json

import torch

from langchain_deltamem.backbones import load_backbone
from langchain_deltamem.config import DeltaMemConfig
from langchain_deltamem.episodes import generate_episodes
from langchain_deltamem.injection import attach
from langchain_deltamem.training.init import (
    estimate_means,
    init_content_directions,
    segment_inputs,
)
from langchain_deltamem.training.probe import content_probe, probe_episodes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--gains", type=float, nargs="+", default=[1.0, 10.0, 40.0])
    parser.add_argument("--beta-bias", type=float, default=-1.5)
    parser.add_argument("--layers", default=None, help="e.g. 20-29")
    args = parser.parse_args()
    layers = None
    if args.layers:
        lo, hi = (int(x) for x in args.layers.split("-"))
        layers = tuple(range(lo, hi + 1))
    model, tokenizer = load_backbone(None)
    config = DeltaMemConfig(
        rank=args.rank,
        centred_inputs=("k", "v"),
        segment_tokens="content",
        beta_bias_init=args.beta_bias,
        target_layers=layers,
    )
    handle = attach(model, config, seed=0)
    train = generate_episodes(
        args.episodes,
        split="train",
        seed=77,
        num_facts=(1,),
        kinds=("facts",),
        distractors=(0, 0),
        value_types=("colour", "food"),
    )
    inputs, contents = segment_inputs(handle, tokenizer, train, bf16=True)
    estimate_means(handle, inputs)
    explained = init_content_directions(handle, tokenizer, train, inputs, contents)
    print("explained variance per layer:", {k: round(v, 3) for k, v in explained.items()})
    heads = {i: handle.layers[i].delta_o_proj.detach().clone() for i in handle.layer_ids}
    probe = probe_episodes(args.n, ("colour", "food"))
    for gain in args.gains:
        with torch.no_grad():
            for i in handle.layer_ids:
                handle.layers[i].delta_o_proj.copy_(heads[i] * gain)
        result = content_probe(handle, tokenizer, probe, bf16=True)
        gap = result["swapped_minus_right"]
        print(
            json.dumps(
                {
                    "gain": gain,
                    "nll_right": round(result["nll_right"], 3),
                    "nll_swapped": round(result["nll_swapped"], 3),
                    "nll_zero": round(result["nll_zero"], 3),
                    "gap": [round(gap["estimate"], 3), round(gap["low"], 3), round(gap["high"], 3)],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()

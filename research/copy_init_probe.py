"""Research probe: can a *designed* value path copy a stored word, before any training?

Session-4 diagnosis: trained adapters write states that are ~99 % the same for every episode,
so the read path learns a prior, not the content. This probe asks the opposite question: set
the value projection of a few layers to the top principal directions of the (normalised) token
embeddings, and the ``o`` correction to map them back into the residual stream, so a read adds
the stored message's words to the residual. With tied embeddings that raises those words'
logits. Values are centred (``v = W_v (h̄ − μ)``, μ = mean segment input) so what is added is
what distinguishes this message from an average one; keys and queries share one projection so
every read token sees the stored fact. Prints the held-out answer NLL with the right state and
with a same-type swapped state for each gain.

    python research/copy_init_probe.py --layers 0 1 2 3 --gains 0 50 100 200
"""

from __future__ import annotations

import argparse
import contextlib
import json
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from centred_writes_probe import mean_segment_inputs, probe_episodes

from langchain_deltamem.backbones import load_backbone
from langchain_deltamem.config import DeltaMemConfig
from langchain_deltamem.evaluation.recall import content_nll
from langchain_deltamem.injection import attach
from langchain_deltamem.layer import WriteInputsHook, hook_write_inputs


def embedding_basis(model, rows: int) -> torch.Tensor:
    """Top ``rows`` principal directions of the RMS-normalised token embeddings, ``[rows, d]``."""
    emb = model.get_input_embeddings().weight.detach().float()
    emb = emb / emb.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    emb = emb - emb.mean(0)
    _, _, vh = torch.linalg.svd(emb[::4], full_matrices=False)
    return vh[:rows]


def centre_values(means: dict[int, torch.Tensor]) -> WriteInputsHook:
    """A write-inputs hook: values from ``h̄ − μ``; keys and gates from the raw ``h̄``."""

    def centred(layer, h, default):  # type: ignore[no-untyped-def]
        k, _, beta = default(h)
        v = layer._split_states(F.linear(h - means[id(layer)], layer.memory_v_proj))
        return k, v, beta

    return centred


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--gains", type=float, nargs="+", default=[0.0, 50.0, 100.0, 200.0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--value-types", nargs="+", default=["colour", "food"])
    parser.add_argument("--no-centre", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_backbone(None)
    config = DeltaMemConfig(rank=args.rank, output_init="zero")
    handle = attach(model, config, seed=0)
    basis = embedding_basis(model, args.rank * len(args.layers))
    with torch.no_grad():
        for j, layer_id in enumerate(args.layers):
            layer = handle.layers[layer_id]
            layer.memory_q_proj.copy_(layer.memory_k_proj)
            layer.memory_v_proj.copy_(basis[j * args.rank : (j + 1) * args.rank])
            layer.beta_bias.fill_(4.0)
    hooked = contextlib.nullcontext()
    if not args.no_centre:
        measured = mean_segment_inputs(handle, tokenizer)
        hooked = hook_write_inputs(centre_values(measured), handle.layers.values())
    episodes = probe_episodes(args.n, args.value_types)
    engine = SimpleNamespace(handle=handle, tokenizer=tokenizer)
    with hooked:
        for gain in args.gains:
            with torch.no_grad():
                for j, layer_id in enumerate(args.layers):
                    out = basis[j * args.rank : (j + 1) * args.rank].T * gain
                    handle.layers[layer_id].delta_o_proj.copy_(out)
            result = content_nll(engine, episodes)  # type: ignore[arg-type]
            result["gain"] = gain
            result["layers"] = args.layers
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""Research probe: do *centred* segment writes let the state carry content?

Diagnosis behind it (docs/results/training.md, session 4): the states trained adapters write
are ~99 % the same for every episode (between-episode variance ≈ 1 % of the squared norm), so
the read path learns to answer from "some state is there" (a prior) and not from what it says.
This probe subtracts, in every layer, the mean segment input ``μ`` (estimated once on training
chats) before the key and value projections, ``k, v = f(W (h̄ − μ))``, so a state holds what
distinguishes a message from an average one. The gate still sees the raw input. The probe
hooks the layers' write inputs (`layer.hook_write_inputs`) while it runs; nothing here changes
the shipped mechanism.

    python research/centred_writes_probe.py --init-adapter ADAPTER --out runs/g-centred \
        --steps 150 --value-types colour food --contrast 1.0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from state_spread import spread  # research/ is on the path when this runs as a script

from langchain_deltamem.config import DeltaMemConfig
from langchain_deltamem.episodes import generate_episodes
from langchain_deltamem.evaluation.recall import content_nll
from langchain_deltamem.layer import DeltaMemLayer, WriteInputsHook, hook_write_inputs
from langchain_deltamem.training.trainer import TrainConfig, Trainer
from langchain_deltamem.writing import write_history


def mean_segment_inputs(handle, tokenizer, n: int = 64) -> dict[int, torch.Tensor]:
    """Per layer, the mean pooled segment input over ``n`` training chats' writes."""
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}

    def recording(layer, h, default):  # type: ignore[no-untyped-def]
        rows = h.detach().reshape(-1, h.shape[-1])
        rows = rows[rows.abs().sum(-1) > 0]  # padding segments pool to zero
        sums[id(layer)] = sums.get(id(layer), 0) + rows.sum(0)
        counts[id(layer)] = counts.get(id(layer), 0) + rows.shape[0]
        return default(h)

    episodes = generate_episodes(n, split="train", seed=424242, distractors=(0, 2))
    with torch.no_grad(), hook_write_inputs(recording):
        for episode in episodes:
            write_history(handle, tokenizer, episode.history())
    return {key: sums[key] / counts[key] for key in sums}


def probe_episodes(n: int, value_types: list[str]) -> list:
    """The held-out 1-fact episodes ``deltamem eval recall --facts 1 --distractors 0 0``
    draws with its default seed, so script probes and CLI probes score the same episodes."""
    return generate_episodes(
        n,
        split="heldout",
        seed=1235,
        num_facts=[1],
        kinds=["facts"],
        distractors=(0, 0),
        value_types=value_types,
    )


def centre(trainer: Trainer, by_layer: dict[int, torch.Tensor]) -> WriteInputsHook:
    """A write-inputs hook under which segment keys and values see ``h̄ − μ`` (the gate h̄).

    Layers are found by object; a resumed trainer attaches new ones, so the lookup is rebuilt
    from the trainer's current handle whenever a layer is not known yet (and the hook is set
    for every layer of the process, not the layers of today's handle)."""
    means: dict[int, torch.Tensor] = {}

    def mean_of(layer: DeltaMemLayer) -> torch.Tensor:
        if id(layer) not in means:
            handle = trainer.handle
            means.clear()
            means.update({id(handle.layers[i]): by_layer[i] for i in handle.layer_ids})
        return means[id(layer)]

    def centred(layer, h, default):  # type: ignore[no-untyped-def]
        c = h - mean_of(layer)
        k = F.normalize(
            torch.tanh(layer._split_states(F.linear(c, layer.memory_k_proj))), dim=-1, eps=1e-6
        )
        v = layer._split_states(F.linear(c, layer.memory_v_proj))
        beta = torch.sigmoid(F.linear(h, layer.beta_proj, layer.beta_bias))
        beta = layer._split_states(beta)
        return k, v, beta

    return centred


def state_variance_fraction(handle, tokenizer, episodes) -> float:
    with torch.no_grad():
        states = [write_history(handle, tokenizer, e.history()) for e in episodes]
    fractions = spread(states)
    return sum(fractions) / len(fractions)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--init-adapter", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--probe-every", type=int, default=30)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--contrast", type=float, default=1.0)
    parser.add_argument("--value-types", nargs="+", default=["colour", "food"])
    parser.add_argument(
        "--train", choices=["all", "write"], default="all", help="write: the read path stays"
    )
    args = parser.parse_args()
    config = TrainConfig(
        adapter=DeltaMemConfig(rank=16),
        steps=args.steps,
        batch_size=8,
        lr=args.lr,
        warmup_steps=5,
        num_facts=(1,),
        kinds=("facts",),
        distractors=(0, 0),
        value_types=tuple(args.value_types),
        contrast=args.contrast,
        init_adapter=args.init_adapter,
        checkpoint_every=args.probe_every,
        train=args.train,
    )
    trainer = Trainer(config, args.out)
    handle = trainer.handle
    if not handle.config.rankwise_gates:
        raise SystemExit("this probe assumes rank-wise gates")
    mu_file = Path(f"{args.out}-mu.pt")
    resuming = mu_file.exists()
    if resuming:  # the μ the run started with
        by_layer = torch.load(mu_file, weights_only=True)
    else:
        measured = mean_segment_inputs(handle, trainer.tokenizer)
        by_layer = {i: measured[id(handle.layers[i])] for i in handle.layer_ids}
        torch.save(by_layer, mu_file)
    probe_set = probe_episodes(40, args.value_types)

    def probe(step: int) -> None:
        engine = SimpleNamespace(handle=trainer.handle, tokenizer=trainer.tokenizer)
        result = content_nll(engine, probe_set)  # type: ignore[arg-type]
        result["state_variance_fraction"] = state_variance_fraction(
            trainer.handle, trainer.tokenizer, probe_set
        )
        result["step"] = step
        print(json.dumps(result), flush=True)
        with open(f"{args.out}-probes.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")

    if not resuming:
        probe(-1)  # uncentred, as the adapter was trained
    with hook_write_inputs(centre(trainer, by_layer)):
        if resuming:  # load the checkpoint, then probe where the run stands
            trainer.run(max_steps=0, progress=False)
        probe(trainer.step)
        while trainer.step < args.steps:
            trainer.run(max_steps=args.probe_every, progress=False)
            probe(trainer.step)


if __name__ == "__main__":
    main()

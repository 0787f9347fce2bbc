"""What do the written states hold? Spread and a linear probe, layer by layer.

A memory can only recall what its states keep apart. For held-out one-fact episodes (values
never seen in training) this diagnostic writes each episode's state with the adapter and asks
two questions per layer:

* **between-episode share**: the variance of the states across episodes over their mean
  squared norm. Near 0 means every message leaves (almost) the same matrix.
* **linear probe**: a ridge map from the flattened state to the stored value's mean token
  embedding, fitted on one half of the episodes and tested on the other (their values
  differ): does the predicted embedding pick the right value among all the test half's values?
  Chance is one over their number; the same probe fitted on shuffled targets is the control.

A probe that retrieves far above chance while the answer NLL shows no content effect points at
the read path; states that cannot be told apart point at the write path.

    deltamem eval states --adapter smollm2-ssw --n 400 [--value-types colour food]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..engine import get_engine
from ..episodes import Episode
from ..injection import AttachedAdapter
from ..state import MemoryState
from ..training.batched import write_histories
from ..training.objectives import batch_share
from ..training.probe import probe_episodes

STATES_SEED = 2468


@dataclass(frozen=True)
class Retrieval:
    """Top-1 retrieval of held-out values from features: the probe and its shuffled control."""

    accuracy: float
    shuffled: float
    chance: float


def ridge_retrieval(
    features: torch.Tensor,
    targets: torch.Tensor,
    labels: Sequence[str],
    *,
    ridge: float = 1e-2,
    seed: int = 0,
) -> Retrieval:
    """Fit ``features → targets`` on the first half of the rows, predict the second half's
    targets and pick, by cosine, the nearest of the second half's distinct ``labels``.

    Kernel (dual) form, so wide features (a whole layer's state) cost an ``n × n`` solve;
    ``ridge`` is relative to the mean diagonal of the Gram matrix. The control fits the same
    map to the fitting half's targets in a shuffled order."""
    n = features.shape[0]
    if n < 4 or len(labels) != n or targets.shape[0] != n:
        raise ValueError(f"ridge_retrieval needs ≥ 4 rows with one label each; got {n}")
    half = n // 2
    x = features.double()
    y = targets.double()
    x_mean, y_mean = x[:half].mean(0), y[:half].mean(0)
    x_fit, x_test = x[:half] - x_mean, x[half:] - x_mean
    gram = x_fit @ x_fit.T
    lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    regularised = gram + lam * torch.eye(half, dtype=gram.dtype)
    test_labels = list(labels[half:])
    candidates = sorted(set(test_labels))
    by_label = {label: i for i, label in enumerate(test_labels)}
    bank = torch.stack([y[half + by_label[c]] for c in candidates]) - y_mean
    bank = torch.nn.functional.normalize(bank, dim=1)
    truth = torch.tensor([candidates.index(label) for label in test_labels])

    def accuracy(fit_targets: torch.Tensor) -> float:
        weights = torch.linalg.solve(regularised, fit_targets - y_mean)
        predicted = x_test @ x_fit.T @ weights
        scores = torch.nn.functional.normalize(predicted, dim=1) @ bank.T
        return float((scores.argmax(1) == truth).double().mean())

    order = torch.randperm(half, generator=torch.Generator().manual_seed(seed))
    return Retrieval(accuracy(y[:half]), accuracy(y[:half][order]), 1 / len(candidates))


def value_embeddings(
    handle: AttachedAdapter, tokenizer: Any, values: Sequence[str]
) -> torch.Tensor:
    """The mean input embedding of each value's tokens (as it follows a space in a message)."""
    table = handle.model.get_input_embeddings().weight.detach().float()
    rows = []
    for value in values:
        ids = tokenizer(" " + value, add_special_tokens=False).input_ids
        rows.append(table[torch.tensor(ids)].mean(0))
    return torch.stack(rows)


def state_report(
    handle: AttachedAdapter,
    tokenizer: Any,
    episodes: Sequence[Episode],
    *,
    batch_size: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Per layer the between-episode share and the probe; then all layers together (each
    layer scaled to unit mean square so none dominates)."""
    with torch.inference_mode():
        parts = [
            write_histories(handle, tokenizer, [e.history() for e in episodes[i : i + batch_size]])
            for i in range(0, len(episodes), batch_size)
        ]
    state = MemoryState.concat(parts) if len(parts) > 1 else parts[0]
    values = [e.answer for e in episodes]
    targets = value_embeddings(handle, tokenizer, values)
    shares = batch_share(state).tolist()
    layers, scaled = [], []
    for layer_id, tensor, share in zip(state.layer_ids, state.layers, shares, strict=True):
        x = tensor.flatten(1).double()
        retrieval = ridge_retrieval(x, targets, values, seed=seed)
        layers.append({"layer": layer_id, "share": share, **asdict(retrieval)})
        centred = x - x.mean(0)
        scaled.append(centred / centred.pow(2).sum(1).mean().sqrt().clamp_min(1e-12))
    together = ridge_retrieval(torch.cat(scaled, dim=1), targets, values, seed=seed)
    return {
        "n": len(episodes),
        "layers": layers,
        "all_layers": asdict(together),
        "mean_share": sum(shares) / len(shares),
    }


def to_markdown(report: dict[str, Any], adapter: str) -> str:
    lines = [
        f"Written states of {report['n']} held-out one-fact episodes, adapter {adapter}: "
        f"the probe is fitted on {report['n'] // 2} and retrieves among the other half's "
        f"values (chance {report['all_layers']['chance']:.3f}).",
        "",
        "| layer | between-episode share | probe top-1 | shuffled control |",
        "|---|---|---|---|",
    ]
    for row in report["layers"]:
        lines.append(
            f"| {row['layer']} | {row['share']:.3f} | {row['accuracy']:.3f} | "
            f"{row['shuffled']:.3f} |"
        )
    together = report["all_layers"]
    lines.append(
        f"| all | {report['mean_share']:.3f} (mean) | {together['accuracy']:.3f} | "
        f"{together['shuffled']:.3f} |"
    )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--adapter", default=None, help="adapter directory or name (default: the packaged one)"
    )
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--n", type=int, default=400, help="episodes (half fit, half test)")
    parser.add_argument("--value-types", nargs="+", default=["colour", "food"])
    parser.add_argument("--seed", type=int, default=STATES_SEED)
    parser.add_argument("--out", help="directory for states.json and states.md")
    return parser


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.n < 8:
        raise SystemExit(f"deltamem eval states: --n must be at least 8, got {args.n}")
    engine = get_engine(args.backbone, args.adapter)
    episodes = probe_episodes(args.n, args.value_types, seed=args.seed)
    report = state_report(engine.handle, engine.tokenizer, episodes)
    table = to_markdown(report, str(args.adapter or "default"))
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "states.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "states.md").write_text(table)
    return report

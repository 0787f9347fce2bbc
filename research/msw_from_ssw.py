"""Widen a trained SSW adapter into an MSW one with H states that share its maps.

Every state gets the SSW adapter's key, value, gate and query projections, and each correction
head reads the sum of the states (its columns repeated H times). A conversation written into
state 0 alone therefore reads exactly as under the SSW adapter; tool results routed to states
1…H−1 are written and read by the same learned maps, each in a matrix of its own. No training:
this is how the MSW adapter that ships beside the SSW default is made (docs/results/training.md).

    python research/msw_from_ssw.py SSW_ADAPTER_DIR OUT_DIR [--states 4]
"""

from __future__ import annotations

import argparse

import torch

from langchain_deltamem.adapter_files import read_adapter, save_adapter
from langchain_deltamem.backbones import load_backbone
from langchain_deltamem.injection import attach

ROW_PARAMETERS = ("memory_q_proj", "memory_k_proj", "memory_v_proj", "beta_proj", "beta_bias")


def widen(tensors: dict[str, torch.Tensor], states: int) -> dict[str, torch.Tensor]:
    """SSW tensors → MSW tensors: state rows repeated, head columns repeated."""
    out = {}
    for name, tensor in tensors.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ROW_PARAMETERS:
            out[name] = tensor.repeat(states, *([1] * (tensor.dim() - 1)))
        elif leaf.startswith("delta_"):
            out[name] = tensor.repeat(1, states)
        else:
            out[name] = tensor
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ssw_adapter")
    parser.add_argument("out")
    parser.add_argument("--states", type=int, default=4)
    args = parser.parse_args()
    config, tensors, _ = read_adapter(args.ssw_adapter)
    if config.num_states != 1 or config.write_granularity != "segment":
        raise SystemExit(f"{args.ssw_adapter} is not an SSW adapter: {config}")
    if not config.rankwise_gates:
        raise SystemExit("widening needs rank-wise gates (one gate per state row)")
    model, _ = load_backbone()
    handle = attach(model, config.model_copy(update={"num_states": args.states}))
    handle.load_adapter_state_dict(widen(tensors, args.states))
    print(f"wrote {save_adapter(handle, args.out)} ({args.states} states)")


if __name__ == "__main__":
    main()

"""Reference delta-rule scan: one Python step per token, written for clarity, not speed.

Every fast path is tested against this file (values, final state and gradients).
"""

from __future__ import annotations

import torch

from ._common import check_scan_inputs, update_coefficients


def delta_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    mode: str = "standard",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: read the state, then write it.

    Args:
        q, k, v, beta: ``[B, H, r]`` (q and k already normalised; beta in [0, 1], one gate per
            state row).
        state: ``[B, H, r, r]``, rows indexed by value, columns by key.
        mode: "standard", "gated" or "plain".

    Returns:
        ``(read [B, H, r], new_state [B, H, r, r])``; the read uses the state before the write.
    """
    read = torch.einsum("bhij,bhj->bhi", state, q)
    keep, erase = update_coefficients(beta, mode)
    recalled = torch.einsum("bhij,bhj->bhi", state, k)  # S k: what the key currently retrieves
    kept = state if keep is None else state * keep[..., None]
    new_state = kept + (beta * v - erase * recalled)[..., None] * k[..., None, :]
    return read, new_state


def naive_delta_rule_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    *,
    mode: str = "standard",
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token scan; see :func:`langchain_deltamem.scan.delta_rule_scan` for the contract."""
    beta = check_scan_inputs(q, k, v, beta, state, valid, mode)
    reads = []
    for t in range(q.shape[1]):
        read, state = delta_rule_step(q[:, t], k[:, t], v[:, t], beta[:, t], state, mode)
        reads.append(read)
    if not reads:
        return q.new_zeros(q.shape), state
    return torch.stack(reads, dim=1), state

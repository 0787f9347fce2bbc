"""The delta-rule scan as a pure function: a naive reference and a chunked fast path.

Contract shared by both implementations (flash-linear-attention style, one signature):

* ``q, k, v, beta``: ``[B, T, H, r]``. ``q``/``k`` already normalised per state, ``beta`` the
  write gate of each state row in [0, 1] (broadcast it first when gates are per state).
* ``state``: ``[B, H, r, r]``, rows indexed by value, columns by key; never modified in place.
* ``valid``: optional ``[B, T]`` or ``[B, T, H]`` mask; a masked token (or a token not routed to
  a state) neither writes nor forgets.
* Returns ``(reads [B, T, H, r], final_state)`` where ``reads[:, t] = S_{t-1} q_t``: a token
  reads the state as it was before its own write.
"""

from __future__ import annotations

from typing import Literal

import torch

from ._common import UPDATE_MODES, update_coefficients
from .chunk import DEFAULT_CHUNK_SIZE, chunk_delta_rule_scan
from .naive import delta_rule_step, naive_delta_rule_scan

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "NAIVE_MAX_TOKENS",
    "UPDATE_MODES",
    "chunk_delta_rule_scan",
    "delta_rule_scan",
    "delta_rule_step",
    "naive_delta_rule_scan",
    "read_state",
    "update_coefficients",
]


NAIVE_MAX_TOKENS = 4
"""Up to this many tokens (a decode step, a call's few segment writes) the step-by-step
reference is cheaper than the chunked path's triangular solve."""


def delta_rule_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    *,
    mode: str = "standard",
    valid: torch.Tensor | None = None,
    impl: Literal["chunk", "naive"] = "chunk",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the delta rule over ``T`` tokens; the chunked path unless ``impl="naive"``.

    A few tokens (decoding, segment writes) go through the step-by-step reference, which is
    both paths for so short a scan and costs a few small matmuls instead of a solve.
    """
    if impl not in ("chunk", "naive"):
        raise ValueError(f"scan impl {impl!r}; expected 'chunk' or 'naive'")
    if impl == "naive" or (q.dim() == 4 and q.shape[1] <= NAIVE_MAX_TOKENS):
        return naive_delta_rule_scan(q, k, v, beta, state, mode=mode, valid=valid)
    return chunk_delta_rule_scan(q, k, v, beta, state, mode=mode, valid=valid)


def read_state(state: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Read without writing: ``S q`` for every token. state ``[B,H,r,r]``, q ``[B,T,H,r]``."""
    # [B,T,H,r] -> [B,H,T,r] @ Sᵀ -> back; matmul dispatches faster than einsum when decoding
    return (q.transpose(1, 2) @ state.transpose(-1, -2)).transpose(1, 2)

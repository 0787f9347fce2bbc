"""Pieces shared by every implementation of the delta-rule scan."""

from __future__ import annotations

import torch

UPDATE_MODES = ("standard", "gated", "plain")


def update_coefficients(beta: torch.Tensor, mode: str) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Per-row keep and erase coefficients of one delta-rule update.

    Every mode is ``S_i ← keep_i·S_i − erase_i·(S_i·k) kᵀ + β_i·v_i kᵀ`` row by row:
    standard keeps 1−β and erases β, gated keeps 1−β and erases (1−β)β, plain keeps 1 and
    erases β. ``keep`` is ``None`` for plain (exactly 1), which lets callers skip the decay.
    """
    if mode == "standard":
        return 1.0 - beta, beta
    if mode == "gated":
        keep = 1.0 - beta
        return keep, keep * beta
    if mode == "plain":
        return None, beta
    raise ValueError(f"update mode {mode!r}; expected one of {UPDATE_MODES}")


def check_scan_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    valid: torch.Tensor | None,
    mode: str,
) -> torch.Tensor:
    """Validate the mode and shapes and return ``beta`` with invalid (masked) rows zeroed.

    A zero gate is the whole meaning of "does not write": keep = 1, erase = 0, write = 0, so
    the state passes through unchanged.
    """
    if mode not in UPDATE_MODES:
        raise ValueError(f"update mode {mode!r}; expected one of {UPDATE_MODES}")
    if q.dim() != 4:
        raise ValueError(f"q must be [batch, time, states, rank], got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v), ("beta", beta)):
        if t.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(q.shape)}")
    b, _, h, r = q.shape
    if state.shape != (b, h, r, r):
        raise ValueError(f"state has shape {tuple(state.shape)}, expected {(b, h, r, r)}")
    if valid is None:
        return beta
    if valid.shape == q.shape[:2]:
        valid = valid[:, :, None, None]
    elif valid.shape == q.shape[:3]:
        valid = valid[..., None]
    else:
        raise ValueError(
            f"valid has shape {tuple(valid.shape)}, expected {tuple(q.shape[:2])} "
            f"or {tuple(q.shape[:3])}"
        )
    return beta * valid.to(beta.dtype)

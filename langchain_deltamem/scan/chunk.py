"""Chunked delta-rule scan: parallel inside chunks, one small step per chunk between them.

Each state row ``i`` follows its own affine recurrence over key space,
``s_t = a_t s_{t-1} − b_t (s_{t-1}·k_t) k_t + c_t k_t`` with keep ``a``, erase ``b`` and
write ``c = β v_i``. Inside a chunk that starts from ``s_0`` the change is a decayed sum of
rank-one terms along the chunk's keys,

    s_t = γ_t s_0 + Σ_{j≤t} (γ_t/γ_j) x_j k_j,        γ_t = a_1 ⋯ a_t,

whose coefficients solve the unit lower-triangular system
``x_t + b_t Σ_{j<t} (γ_{t-1}/γ_j)(k_j·k_t) x_j = c_t − b_t γ_{t-1} (s_0·k_t)``
(the WY/UT trick of DeltaNet, with a per-row gate). Everything except the
``N = T / chunk_size`` chunk-to-chunk affine maps is computed for all chunks at once, and all
decay ratios are ``exp`` of differences of cumulative log-keeps (≤ 1), so nothing overflows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import check_scan_inputs, update_coefficients

DEFAULT_CHUNK_SIZE = 16
_MIN_KEEP = 1e-35  # a gate of exactly 1 wipes the row without log(0) = -inf (or NaN grads)


def chunk_delta_rule_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    *,
    mode: str = "standard",
    valid: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked scan; see :func:`langchain_deltamem.scan.delta_rule_scan` for the contract."""
    beta = check_scan_inputs(q, k, v, beta, state, valid, mode)
    bsz, seq_len, n_states, rank = q.shape
    if seq_len == 0:
        return q.new_zeros(q.shape), state
    size = min(chunk_size, seq_len)
    n_chunks = -(-seq_len // size)
    pad = n_chunks * size - seq_len

    def chunked(t: torch.Tensor) -> torch.Tensor:
        # [B, T, H, r] -> [B, H, N, C, r]; padded tokens have zero gates, so they never write
        t = F.pad(t, (0, 0, 0, 0, 0, pad))
        return t.reshape(bsz, n_chunks, size, n_states, rank).permute(0, 3, 1, 2, 4)

    qc, kc, vc, bc = chunked(q), chunked(k), chunked(v), chunked(beta)
    keep, erase = update_coefficients(bc, mode)
    rows = lambda t: t.transpose(-1, -2)  # noqa: E731  [B,H,N,C,r] -> [B,H,N,r_rows,C]
    erase, write = rows(erase), rows(bc * vc)
    # Cumulative log-keeps and their differences in fp64: a gate near 1 adds ~-12 per token,
    # and fp32 sums of such terms lose the small differences the ratios (and dβ) depend on.
    if keep is None:
        log_keep = torch.zeros_like(erase, dtype=torch.float64)
    else:
        log_keep = rows(torch.log(keep.double().clamp_min(_MIN_KEEP)))
    g = log_keep.cumsum(-1)  # log γ_t (inclusive)
    g_prev = F.pad(g[..., :-1], (1, 0))  # log γ_{t-1}

    strict = torch.ones(size, size, dtype=torch.bool, device=q.device).tril(-1)
    log_ratio = (g_prev[..., :, None] - g[..., None, :]).to(q.dtype)  # exact-ish, then fp32
    ratio = log_ratio.masked_fill(~strict, float("-inf")).exp()  # [B,H,N,rows,C,C]: γ_{t-1}/γ_j

    keys = kc[:, :, :, None]  # [B,H,N,1,C,r], shared by the rows of a state
    kk = kc @ kc.transpose(-1, -2)  # [B,H,N,C,C]
    qk = qc @ kc.transpose(-1, -2)  # [B,H,N,C,C]
    lower = erase[..., :, None] * ratio * kk[:, :, :, None]
    start_decay = g_prev.exp().to(q.dtype)  # γ_{t-1}
    rhs = torch.cat([write[..., None], -(erase * start_decay)[..., None] * keys], dim=-1)
    solved = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)
    x_free, x_from_start = solved[..., 0], solved[..., 1:]  # [..,C], [..,C,r]: x = x_free + W s_0

    read_ratio = ratio * qk[:, :, :, None]  # [..,C,C]
    read_from_start = start_decay[..., None] * qc[:, :, :, None] + read_ratio @ x_from_start
    read_free = (read_ratio @ x_free[..., None])[..., 0]  # [..,C]

    end_decay = (g[..., -1:] - g).exp().to(q.dtype)  # γ_C/γ_j
    keys_to_end = end_decay[..., None] * keys  # [..,C,r]
    eye = torch.eye(rank, dtype=q.dtype, device=q.device)
    chunk_decay = g[..., -1, None, None].exp().to(q.dtype)
    transition = chunk_decay * eye + x_from_start.transpose(-1, -2) @ keys_to_end
    offset = (x_free[..., None, :] @ keys_to_end)[..., 0, :]  # [B,H,N,rows,r]

    # Chunk to chunk: s ← s G_n + h_n, on flattened rows [M = B·H·rows, 1, r] (one baddbmm each).
    flat = bsz * n_states * rank
    transition = transition.permute(2, 0, 1, 3, 4, 5).reshape(n_chunks, flat, rank, rank)
    offset = offset.permute(2, 0, 1, 3, 4).reshape(n_chunks, flat, 1, rank)
    current = state.reshape(flat, 1, rank)
    starts = []
    for n in range(n_chunks):
        starts.append(current)
        current = torch.baddbmm(offset[n], current, transition[n])
    start_states = torch.stack(starts, dim=0).reshape(n_chunks, bsz, n_states, rank, rank)
    start_states = start_states.permute(1, 2, 0, 3, 4)  # [B,H,N,rows,r]
    final_state = current.reshape(bsz, n_states, rank, rank)

    reads = (read_from_start @ start_states[..., None])[..., 0] + read_free  # [B,H,N,rows,C]
    reads = reads.permute(0, 2, 4, 1, 3).reshape(bsz, n_chunks * size, n_states, rank)
    return reads[:, :seq_len], final_state

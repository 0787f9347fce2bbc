"""`DeltaMemLayer`: the trainable parameters of one attention layer and the maths around them.

Pure tensor code (no transformers, no LangChain): from the attention input ``h`` it produces
the memory query/key/value/gate, reads and writes an explicit state, and maps reads to the
low-rank corrections of the attention seams. Parameter names follow the reference adapter format
(``memory_q_proj``, ``beta_bias``, ``delta_o_proj`` …) so adapter files map one to one.

Research probes that try another write rule (centred keys, designed value paths, recording
what is written) do so through `hook_write_inputs`, not by patching the class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import DeltaMemConfig
from .scan import delta_rule_scan, read_state

WriteInputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Keys, values and gates of the tokens or segments that write, each ``[B, T, H, r]``."""
WriteInputsHook = Callable[
    ["DeltaMemLayer", torch.Tensor, Callable[[torch.Tensor], WriteInputs]], WriteInputs
]
"""``hook(layer, h, default) -> (k, v, beta)``: ``default(h)`` computes the layer's own."""

PARAMETER_NAMES = (
    "memory_q_proj",
    "memory_k_proj",
    "memory_v_proj",
    "beta_proj",
    "beta_bias",
    "delta_q_proj",
    "delta_k_proj",
    "delta_v_proj",
    "delta_o_proj",
)


class DeltaMemLayer(nn.Module):
    """Memory projections, write gate and correction heads of one attention layer.

    Args:
        config: the adapter config.
        hidden_size: width ``d`` of the attention input.
        head_features: output width of each corrected seam, e.g. ``{"q": 576, "o": 576}``.
    """

    write_inputs_hook: WriteInputsHook | None = None
    """When set (by `hook_write_inputs`), `write_inputs` returns ``hook(self, h, default)``
    instead of the layer's own keys, values and gates; for research probes, never set by the
    package."""

    def __init__(
        self,
        config: DeltaMemConfig,
        hidden_size: int,
        head_features: dict[str, int],
        *,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        missing = [h for h in config.heads if h not in head_features]
        if missing:
            raise ValueError(f"no output width given for correction head(s) {missing}")
        self.config = config
        rows, gates = config.state_rows, config.gate_rows
        opts = {"device": device, "dtype": torch.float32}
        self.memory_q_proj = nn.Parameter(torch.empty(rows, hidden_size, **opts))
        self.memory_k_proj = nn.Parameter(torch.empty(rows, hidden_size, **opts))
        self.memory_v_proj = nn.Parameter(torch.empty(rows, hidden_size, **opts))
        self.beta_proj = nn.Parameter(torch.empty(gates, hidden_size, **opts))
        self.beta_bias = nn.Parameter(torch.empty(gates, **opts))
        for head in config.heads:
            weight = torch.empty(head_features[head], rows, **opts)
            self.register_parameter(f"delta_{head}_proj", nn.Parameter(weight))
        if config.centred_inputs:  # μ: estimated on chat text, never trained
            mean = torch.zeros(hidden_size, **opts)
            self.input_mean = nn.Parameter(mean, requires_grad=False)
        self.reset_parameters()

    def reset_parameters(
        self,
        base_weights: dict[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Initialise as the reference does: Kaiming memory projections, closed gates, and
        correction heads that are zero or a scaled slice of the frozen ``q_proj``/``o_proj``.

        Either way the heads read a zero state at first, so a fresh adapter leaves the
        backbone's outputs unchanged until something is written.
        """
        with torch.no_grad():
            for p in (self.memory_q_proj, self.memory_k_proj, self.memory_v_proj):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=generator)
            self.beta_proj.zero_()
            self.beta_bias.fill_(self.config.beta_bias_init)
            for head in self.config.heads:
                self.correction_head(head).zero_()
            if self.config.output_init != "base_slice":
                return
            width = self.config.rank
            for head, base in (base_weights or {}).items():
                if head not in self.config.heads:
                    continue
                target = self.correction_head(head)
                if base.shape[0] != target.shape[0] or base.shape[1] < width:
                    raise ValueError(
                        f"base_slice init: {head}_proj weight {tuple(base.shape)} does not fit "
                        f"correction head {tuple(target.shape)}"
                    )
                columns = F.normalize(base[:, :width].float(), dim=0)
                target[:, :width] = columns.to(target.device) * self.config.output_init_scale

    def correction_head(self, head: str) -> nn.Parameter:
        """``U_head`` of shape ``[out_features, R]``."""
        return getattr(self, f"delta_{head}_proj")

    # --- projections --------------------------------------------------------------------
    def _split_states(self, x: torch.Tensor) -> torch.Tensor:
        # [..., R] -> [..., H, r]
        return x.unflatten(-1, (self.config.num_states, self.config.rank))

    def queries(self, h: torch.Tensor) -> torch.Tensor:
        """Memory queries ``normalize(tanh(W_mq h))`` per state: ``[B, T, d] -> [B, T, H, r]``."""
        q = self._split_states(F.linear(h, self.memory_q_proj))
        return F.normalize(torch.tanh(q), dim=-1, eps=1e-6)

    def _input_of(self, projection: str, h: torch.Tensor) -> torch.Tensor:
        if projection in self.config.centred_inputs:
            return h - self.input_mean
        return h

    def write_inputs(self, h: torch.Tensor) -> WriteInputs:
        """Keys (normalised), values (raw) and per-row gates, each ``[B, T, H, r]``, from the
        inputs ``h`` ``[B, T, d]`` of the tokens (TSW) or segments (SSW) that write; what the
        `write_inputs_hook` returns when one is set."""
        hook = self.write_inputs_hook
        if hook is not None:
            return hook(self, h, self.default_write_inputs)
        return self.default_write_inputs(h)

    def default_write_inputs(self, h: torch.Tensor) -> WriteInputs:
        """The layer's own `write_inputs` (whatever hook is set)."""
        k = F.linear(self._input_of("k", h), self.memory_k_proj)
        k = F.normalize(torch.tanh(self._split_states(k)), dim=-1, eps=1e-6)
        v = self._split_states(F.linear(self._input_of("v", h), self.memory_v_proj))
        beta = torch.sigmoid(F.linear(self._input_of("beta", h), self.beta_proj, self.beta_bias))
        if self.config.rankwise_gates:
            beta = self._split_states(beta)
        else:  # one gate per state, shared by its r rows
            beta = beta[..., None].expand(*beta.shape, self.config.rank)
        return k, v, beta

    def correction(self, head: str, read: torch.Tensor) -> torch.Tensor:
        """``(α/r) · U_head read``: ``[B, T, R] -> [B, T, out_features]``."""
        return F.linear(read, self.correction_head(head)) * self.config.scale

    # --- memory access ------------------------------------------------------------------
    def read(self, h: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Read without writing: ``S q`` for every token, ``[B, T, d] -> [B, T, R]``."""
        return read_state(state, self.queries(h)).flatten(-2)

    def forward(
        self,
        h: torch.Tensor,
        state: torch.Tensor,
        *,
        write: bool,
        write_mask: torch.Tensor | None = None,
        segment_pool: torch.Tensor | None = None,
        segment_mask: torch.Tensor | None = None,
        gates_out: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Read (and optionally write) the state for one forward call.

        Args:
            h: attention input ``[B, T, d]`` (fp32).
            state: ``[B, H, r, r]`` before this call.
            write: whether this call writes.
            write_mask: token writes (TSW): ``[B, T, H]`` which token writes which state.
            segment_pool: segment writes (SSW): ``[B, S, T]`` averaging matrix whose row ``s``
                turns the call's tokens into the mean input of segment ``s``.
            segment_mask: SSW: ``[B, S, H]`` which segment writes which state.
            gates_out: when given, the mean write gate of the tokens/segments that wrote is
                appended (training's write-sparsity penalty is taken on real writes only).

        Returns:
            ``(read [B, T, R], new_state [B, H, r, r])``. With SSW, or without writes, every
            token reads the state from before the call; with TSW each token reads the state
            left by the tokens before it.
        """
        if not write:
            return self.read(h, state), state
        q = self.queries(h)
        mode = self.config.update_mode
        if segment_pool is None:
            k, v, beta = self.write_inputs(h)
            if gates_out is not None:
                gates_out.append(_mean_written(beta, write_mask))
            reads, new_state = delta_rule_scan(q, k, v, beta, state, mode=mode, valid=write_mask)
            return reads.flatten(-2), new_state
        pooled = segment_pool @ h  # [B, S, d]: one mean input per segment
        k, v, beta = self.write_inputs(pooled)
        if gates_out is not None:
            gates_out.append(_mean_written(beta, segment_mask))
        _, new_state = delta_rule_scan(k, k, v, beta, state, mode=mode, valid=segment_mask)
        return read_state(state, q).flatten(-2), new_state


def _mean_written(beta: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean gate ``[B, N, H, r]`` over the (position, state) pairs that ``mask`` lets write."""
    if mask is None:
        return beta.mean()
    weights = mask.to(beta.dtype)[..., None].expand_as(beta)
    return (beta * weights).sum() / weights.sum().clamp_min(1.0)


@contextmanager
def hook_write_inputs(
    hook: WriteInputsHook, layers: Iterable[DeltaMemLayer] | None = None
) -> Iterator[None]:
    """Route the write inputs of ``layers`` through ``hook`` inside the block.

    Args:
        hook: ``hook(layer, h, default) -> (k, v, beta)``; ``default(h)`` is the layer's own
            computation, so a hook may record ``h``, change it, or change what comes out.
        layers: the layers to hook; None hooks every `DeltaMemLayer` of the process, those
            built inside the block too (a trainer that attaches new layers when it resumes).

    On exit each layer gets back the hook it had before (none, or an enclosing block's).
    """
    owners: list[Any] = [DeltaMemLayer] if layers is None else list(layers)
    value = staticmethod(hook) if layers is None else hook  # a class attribute must not bind
    missing = object()
    before = [vars(owner).get("write_inputs_hook", missing) for owner in owners]
    for owner in owners:
        owner.write_inputs_hook = value
    try:
        yield
    finally:
        for owner, old in zip(owners, before, strict=True):
            if old is missing:
                del owner.write_inputs_hook
            else:
                owner.write_inputs_hook = old

"""`DeltaMemConfig`: every choice that shapes a δ-mem adapter, validated once.

The config is the first link in the data flow (config → memory state → scan → layer →
injection). It is serialised as the project's own JSON (``adapter_config.json``,
``to_json``/``from_json``); the reference implementation's ``delta_mem_config.json`` is
translated with the rest of that format, in `adapter_reference`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Head = Literal["q", "k", "v", "o"]
UpdateMode = Literal["standard", "gated", "plain"]
OutputInit = Literal["zero", "base_slice"]
WriteGranularity = Literal["token", "segment"]

CONFIG_FORMAT = "langchain-deltamem/config"
CONFIG_VERSION = 1
_HEAD_ORDER = ("q", "k", "v", "o")

STRATEGIES: dict[str, dict[str, Any]] = {
    "ssw": {"write_granularity": "segment", "num_states": 1},  # one write per message
    "tsw": {"write_granularity": "token", "num_states": 1},  # every token writes
    "msw": {"write_granularity": "segment", "num_states": 4},  # segment writes, 4 states
}
"""Write strategy name (``--mode`` of ``deltamem train``, ``fresh-<name>`` adapters) → the
config fields it sets."""


class DeltaMemConfig(BaseModel):
    """Hyper-parameters of a δ-mem adapter.

    Attributes follow the paper. A config is immutable once built so that an attached
    adapter can never drift from the config it was built with.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(8, ge=1, le=256, description="Rows/columns r of each state matrix.")
    alpha: float = Field(16.0, gt=0, description="Correction scale numerator: scale = alpha/rank.")
    heads: tuple[Head, ...] = Field(
        ("q", "o"), description="Attention seams that receive a low-rank correction."
    )
    update_mode: UpdateMode = Field(
        "standard",
        description="standard: (1-β)S + β(v - Sk)kᵀ; gated: (1-β)S(I - βkkᵀ) + βvkᵀ; "
        "plain: S + β(v - Sk)kᵀ.",
    )
    rankwise_gates: bool = Field(True, description="One write gate per state row (else per state).")
    beta_bias_init: float = Field(-1.5, description="Initial gate bias; σ(-1.5) ≈ 0.18.")
    output_init: OutputInit = Field(
        "base_slice",
        description="zero: correction heads start at 0; base_slice: first r columns copy the "
        "frozen q_proj/o_proj columns (L2-normalised, times output_init_scale).",
    )
    output_init_scale: float = Field(0.05, ge=0)
    num_states: int = Field(1, ge=1, le=64, description="States per layer H (> 1 for MSW).")
    write_granularity: WriteGranularity = Field(
        "segment",
        description="token = TSW (every token writes); segment = SSW (one write per segment).",
    )
    centred_inputs: tuple[Literal["k", "v", "beta"], ...] = Field(
        (),
        description="Write projections whose input is centred first: the layer's mean "
        "segment input (an adapter tensor, estimated on chat text) is subtracted, so what every "
        "message shares is not written; reads (q) are never centred.",
    )
    segment_tokens: Literal["all", "content"] = Field(
        "all",
        description="all: a segment is every token its message adds to the prompt; content: "
        "the role markers and other template tokens are left out of segment means and token "
        "writes (they are the same in every message).",
    )
    target_layers: tuple[int, ...] | None = Field(
        None, description="Decoder layer indices to wrap; None wraps every attention layer."
    )

    @field_validator("heads", mode="before")
    @classmethod
    def _canonical_heads(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = tuple(value.replace(",", ""))
        try:
            heads = tuple(value)
        except TypeError as err:  # pydantic wraps ValueError only; TypeError would escape
            raise ValueError(f"heads: expected letters ({err})") from err
        unknown = [h for h in heads if h not in _HEAD_ORDER]
        if unknown:
            raise ValueError(f"heads: unknown head(s) {unknown}; choose from q, k, v, o")
        if not heads:
            raise ValueError("heads: at least one of q, k, v, o is required")
        if len(set(heads)) != len(heads):
            raise ValueError(f"heads: duplicates in {list(heads)}")
        return tuple(h for h in _HEAD_ORDER if h in heads)

    @field_validator("centred_inputs", mode="before")
    @classmethod
    def _canonical_centred(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        try:
            items = tuple(value)
        except TypeError as err:  # pydantic wraps ValueError only; TypeError would escape
            raise ValueError(f"centred_inputs: expected names of k, v, beta ({err})") from err
        unknown = [i for i in items if i not in ("k", "v", "beta")]
        if unknown:
            raise ValueError(f"centred_inputs: unknown projection(s) {unknown}; choose k, v, beta")
        if len(set(items)) != len(items):
            raise ValueError(f"centred_inputs: duplicates in {list(items)}")
        return tuple(i for i in ("k", "v", "beta") if i in items)

    @field_validator("target_layers", mode="before")
    @classmethod
    def _sorted_layers(cls, value: Any) -> tuple[int, ...] | None:
        if value is None:
            return None
        try:
            layers = tuple(int(i) for i in value)
        except TypeError as err:  # pydantic wraps ValueError only; TypeError would escape
            raise ValueError(f"target_layers: not a list of integers ({err})") from err
        if not layers:
            raise ValueError("target_layers: empty; use None to wrap every layer")
        if any(i < 0 for i in layers):
            raise ValueError(f"target_layers: negative index in {list(layers)}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"target_layers: duplicates in {list(layers)}")
        return tuple(sorted(layers))

    @model_validator(mode="after")
    def _check_combination(self) -> DeltaMemConfig:
        if self.output_init == "base_slice" and not {"q", "o"} & set(self.heads):
            raise ValueError(
                "output_init='base_slice' needs the q or o head; use output_init='zero'"
            )
        return self

    # --- derived quantities -------------------------------------------------------------
    @property
    def scale(self) -> float:
        """Multiplier of every correction: alpha / rank (not divided by the number of states)."""
        return self.alpha / self.rank

    @property
    def state_rows(self) -> int:
        """R = rank × num_states: width of the concatenated read vector."""
        return self.rank * self.num_states

    @property
    def gate_rows(self) -> int:
        """Number of write gates per token: one per state row, or one per state."""
        return self.state_rows if self.rankwise_gates else self.num_states

    @property
    def strategy(self) -> str:
        """Short name of the write strategy: TSW, SSW, or MSW-TSW / MSW-SSW."""
        base = "TSW" if self.write_granularity == "token" else "SSW"
        return base if self.num_states == 1 else f"MSW-{base}"

    @classmethod
    def for_strategy(cls, name: str, **fields: Any) -> DeltaMemConfig:
        """The config of write strategy ``name`` (a key of `STRATEGIES`), other fields from
        ``fields`` or their defaults.

        Raises:
            ValueError: ``name`` is not a known strategy.
        """
        if name not in STRATEGIES:
            raise ValueError(f"write strategy {name!r}; expected one of {sorted(STRATEGIES)}")
        return cls(**{**STRATEGIES[name], **fields})

    # --- own JSON -----------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict tagged with format and version."""
        body = self.model_dump(mode="json")
        return {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, **body}

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> DeltaMemConfig:
        """Build from the project's JSON; refuses other formats and newer versions."""
        if not isinstance(data, dict):
            raise ValueError(f"DeltaMemConfig JSON must be an object, got {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", None)
        version = data.pop("version", None)
        if fmt != CONFIG_FORMAT:
            raise ValueError(f"not a langchain-deltamem config: format={fmt!r}")
        if not isinstance(version, int) or version > CONFIG_VERSION or version < 1:
            raise ValueError(
                f"unsupported config version {version!r}; this package reads 1..{CONFIG_VERSION}"
            )
        return cls.model_validate(data)

    @classmethod
    def from_json(cls, text: str) -> DeltaMemConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"DeltaMemConfig JSON is not valid JSON: {err}") from err
        return cls.from_json_dict(data)

"""The episode format: `Episode` and its `Message` history (validated, JSON round-trip), and
the kinds and splits an episode can have."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

NO_INFORMATION = "No information available."
KINDS = ("facts", "update", "two_hop", "agent", "document", "absent")
TRAIN, HELDOUT = "train", "heldout"
SPLITS = (TRAIN, HELDOUT)
CHAT_KIND = "chat"


class Message(BaseModel):
    """One history message, exactly the segment dict `DeltaMemory` writes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["user", "assistant", "tool"]
    content: StrictStr
    source: StrictStr

    @model_validator(mode="after")
    def _source_matches_role(self) -> Message:
        if self.role == "tool":
            if not self.source.startswith("tool:") or self.source == "tool:":
                raise ValueError(f"tool message source must be 'tool:<name>', got {self.source!r}")
        elif self.source != self.role:
            raise ValueError(f"{self.role} message source must be {self.role!r}")
        return self


class Episode(BaseModel):
    """A history to write into memory, then a question and its target answer.

    ``meta`` says what was asked (``key``, ``value_type``, ``value``) and, per kind,
    ``old_value`` (update), ``bridge`` (two_hop), ``tool`` (agent) or ``doc`` (document); it is
    for analysis and tests, never for the model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: StrictStr = Field(min_length=1)
    split: Literal["train", "heldout"]
    kind: StrictStr = Field(min_length=1)
    num_facts: StrictInt = Field(ge=0)
    messages: tuple[Message, ...]
    question: StrictStr = Field(min_length=1)
    answer: StrictStr = Field(min_length=1)
    meta: dict[StrictStr, StrictStr] = Field(default_factory=dict)

    def history(self) -> list[dict[str, str]]:
        """The messages as plain ``{"role", "content", "source"}`` dicts (for memory writes)."""
        return [m.model_dump() for m in self.messages]

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-serialisable dict (``messages`` as a list of dicts)."""
        data = self.model_dump()
        data["messages"] = [dict(m) for m in data["messages"]]
        return data

    @classmethod
    def from_json(cls, data: Any) -> Episode:
        """Validate a dict made by `to_json`; raises ValueError saying what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"an episode must be a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ValueError(describe_error(err)) from None


def describe_error(err: ValidationError) -> str:
    """The first validation problem as ``field.path: message`` (pydantic's text is long)."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "episode"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def check_split(split: str) -> None:
    """Refuse a split that is not one of `SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

"""Strict tagged records: the checks every saved δ-mem object shares.

Memory-state bytes (`state`), memory records and snapshots (`memory`) and adapter files
(`adapter_files`) each carry a JSON object tagged with ``format`` and ``version``. A reader
refuses another format, a version it does not know, a field it does not know and (where the
record has no default for it) a missing one, each with the record's own message. An optional
``checksum`` (``"sha256:<hex>"``; records written before checksums existed have none) covers the
object and its payload, so a damaged or edited record is refused instead of being read as
another memory or adapter.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

CHECKSUM = "checksum"
"""The optional checksum field of every tagged record."""


@dataclass(frozen=True)
class RecordFormat:
    """One kind of tagged record: what a reader accepts and what it says otherwise.

    Each message is a `str.format` template given ``where`` (the caller's name for the record,
    e.g. its path), ``value`` (the offending value or the sorted list of field names) and
    ``version`` (the newest version read).

    Attributes:
        format: the ``format`` tag.
        version: the newest version; versions 1 to ``version`` (integers) are read.
        fields: every field besides the optional ones (``format`` and ``version`` included).
        optional: fields that may be absent (always ``checksum``).
        wrong_format: message for another format, or a record that is not a JSON object.
        wrong_version: message for a version outside 1..``version``.
        unknown: message for fields outside ``fields`` and ``optional``.
        missing: message for absent ``fields``; None leaves them to the reader's own checks.
    """

    format: str
    version: int
    fields: frozenset[str]
    wrong_format: str
    wrong_version: str
    unknown: str
    missing: str | None = None
    optional: frozenset[str] = frozenset({CHECKSUM})

    def check(self, body: Any, error: type[Exception], *, where: str = "") -> None:
        """Raise ``error`` unless ``body`` is a record of this format and version with only
        known fields (and every field, when ``missing`` is set)."""
        if not isinstance(body, Mapping) or body.get("format") != self.format:
            value = body.get("format") if isinstance(body, Mapping) else body
            raise error(self._say(self.wrong_format, where, value))
        version = body.get("version")
        if not isinstance(version, int) or not 1 <= version <= self.version:
            raise error(self._say(self.wrong_version, where, version))
        unknown = sorted(set(body) - self.fields - self.optional, key=str)
        if unknown:
            raise error(self._say(self.unknown, where, unknown))
        missing = sorted(self.fields - set(body))
        if missing and self.missing is not None:  # a KeyError would only say the field's name
            raise error(self._say(self.missing, where, missing))

    def _say(self, template: str, where: str, value: Any) -> str:
        return template.format(where=where, value=value, version=self.version)


def canonical_json(value: Any) -> bytes:
    """The one JSON text of ``value`` that checksums are taken over (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def checksum_of(*parts: Any) -> str:
    """``"sha256:<hex>"`` over ``parts`` in order: bytes as they are, anything else as its
    `canonical_json`."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else canonical_json(part))
    return "sha256:" + digest.hexdigest()


def checksum_mismatch(body: Mapping[str, Any], actual: Callable[[], str]) -> bool:
    """Whether ``body`` carries a checksum other than ``actual()`` (computed only then); a
    record without one, written before checksums existed, passes."""
    return CHECKSUM in body and body[CHECKSUM] != actual()


def without_checksum(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` as it was when its checksum was taken (every field but the checksum)."""
    return {k: v for k, v in body.items() if k != CHECKSUM}

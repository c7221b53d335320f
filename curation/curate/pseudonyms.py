"""Pseudonyms, new UIDs and date shifts derived from a secret the user keeps (HMAC-SHA256).

Every derivation is ``HMAC-SHA256(secret, label || 0x00 || old value)``: a function of the old value alone (never
of the image set or row), so a study's UID maps the same way in each of its image sets, primary or not, today
and in next year's run, and the same secret reproduces the same output. The label separates the domains
(``"uid"``, ``"PatientID"``, ``"date-shift"`` ...). The secret itself is never stored; ``fingerprint`` tells two
secrets apart without revealing either.

- UIDs: PS3.5 B.2 ``2.25.<UUID as an integer>``, the UUID an RFC 9562 version 8 one built from 122 HMAC bits
  (at most 44 characters, well under UI's 64; no organisation root is needed under 2.25).
- Pseudonyms: 16 base32 characters (80 bits): they fit SH (16), LO and PN.
- Date shift: one whole-day offset per patient, backwards (no date lands in the future), never 0.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

#: A secret shorter than this is refused: HMAC-SHA256's key should carry at least 256 bits.
MIN_SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh random secret (43 URL-safe characters, 256 bits): keep it in a vault, it re-creates every map."""
    return secrets.token_urlsafe(32)


def _key(secret: bytes | str) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the de-identification secret must have at least {MIN_SECRET_BYTES} bytes (got {len(key)}); "
            "curation.new_secret() makes one"
        )
    return key


@dataclass(frozen=True)
class DateShift:
    """How dates move (PS3.15 E.3.6, Modified Dates): one offset per patient in -1 .. -``max_days`` days;
    ``keep_weekday`` rounds it to whole weeks (weekday effects kept)."""

    max_days: int = 3650
    keep_weekday: bool = False

    def __post_init__(self) -> None:
        if self.max_days < (7 if self.keep_weekday else 1):
            raise ValueError(f"DateShift.max_days must allow a non-zero shift, not {self.max_days}")


class Pseudonyms:
    """HMAC derivations under one secret (see the module docstring)."""

    def __init__(self, secret: bytes | str) -> None:
        self._key = _key(secret)

    def __repr__(self) -> str:
        return f"Pseudonyms(fingerprint={self.fingerprint!r})"

    def digest(self, label: str, value: str) -> bytes:
        """HMAC-SHA256 of ``label || 0x00 || value``."""
        return hmac.new(self._key, label.encode() + b"\x00" + value.encode(), hashlib.sha256).digest()

    @property
    def fingerprint(self) -> str:
        """12 hex characters that identify the secret without revealing it (kept in the image set's marker)."""
        return hmac.new(self._key, b"fingerprint", hashlib.sha256).hexdigest()[:12]

    def uid(self, old: str) -> str:
        """The new UID of ``old``: ``2.25.`` + a version 8 UUID (PS3.5 B.2; RFC 9562 section 5.8)."""
        n = int.from_bytes(self.digest("uid", old)[:16], "big")
        n = (n & ~(0xF << 76)) | (0x8 << 76)  # version 8 (Python 3.11's uuid has no version=8)
        n = (n & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
        return f"2.25.{uuid.UUID(int=n).int}"

    def pseudonym(self, kind: str, old: str) -> str:
        """A 16-character pseudonym of ``old`` in domain ``kind`` (e.g. ``"PatientID"``)."""
        return base64.b32encode(self.digest(kind, old)[:10]).decode()

    def day_shift(self, patient_key: str, shift: DateShift = DateShift()) -> int:
        """The day offset of one patient (negative, never 0)."""
        n = int.from_bytes(self.digest("date-shift", patient_key)[:8], "big")
        if shift.keep_weekday:
            return -7 * (1 + n % (shift.max_days // 7))
        return -(1 + n % shift.max_days)

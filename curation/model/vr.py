"""VR families as AHI's JSON encodes them, defined once from pydicom's ``valuerep`` and imported everywhere.

AHI writes text VRs as JSON strings, the integer VRs as JSON integers, FL/FD as JSON numbers, the binary VRs as
base64 strings, AT as 8 uppercase hex digits and SQ as arrays of objects (see ``curation.model.document``).
pydicom's own families (``STR_VR``, ``INT_VR``, ``FLOAT_VR``, ``BYTES_VR``) are the source; AHI differs from
pydicom in one place only: IS and DS are kept as the strings the file holds (``"120 "``), so they are text
here, not numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.valuerep import BYTES_VR, FLOAT_VR, INT_VR, STR_VR, VR


def _names(vrs: Iterable[VR]) -> frozenset[str]:
    return frozenset(vr.value for vr in vrs)


#: VRs whose values AHI writes as JSON strings (IS and DS included: AHI keeps their text).
TEXT_VRS: frozenset[str] = _names(STR_VR) | {"IS", "DS"}
#: VRs whose values AHI writes as JSON integers.
INT_VRS: frozenset[str] = _names(INT_VR) - {"IS", "AT"}
#: VRs whose values AHI writes as JSON numbers (integers allowed).
FLOAT_VRS: frozenset[str] = _names(FLOAT_VR) - {"DS"}
#: VRs whose values AHI writes as base64 strings.
BINARY_VRS: frozenset[str] = _names(BYTES_VR) - {VR.OB_OW.value, VR.US_SS_OW.value}
#: Every plain two-letter VR (the dictionary's ambiguous "US or SS" forms are not VRs of a value).
ALL_VRS: frozenset[str] = TEXT_VRS | INT_VRS | FLOAT_VRS | BINARY_VRS | {"AT", "SQ"}
#: Every VR pydicom knows, the dictionary's ambiguous forms ("US or SS", "OB or OW") included.
DICTIONARY_VRS: frozenset[str] = _names(VR)


def candidates(vr: str) -> tuple[str, ...]:
    """The plain VRs of a dictionary VR: ``"US or SS"`` -> ``("US", "SS")``, ``"CS"`` -> ``("CS",)``."""
    return tuple(part.strip() for part in vr.split(" or "))

"""DICOM data-dictionary lookups for AHI keys: VRs, keyword <-> tag conversions (pydicom's dictionary).

AHI keys a DICOM attribute by its PS3.6 keyword, or by its 8-digit uppercase hex tag when it has no keyword
(private tags, private creators, unknown tags); a private tag's VR is in the instance's ``DICOMVRs`` map.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache

from pydicom import datadict
from pydicom.valuerep import VR

#: Every VR pydicom knows (the two-letter ones and the dictionary's ambiguous "US or SS" forms).
VALID_VRS = frozenset(vr.value for vr in VR)

_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


def is_tag_key(key: str) -> bool:
    """True when ``key`` is an 8-hex-digit tag key such as ``"7FDF1001"``."""
    return bool(_HEX_TAG.match(key))


def tag_of(key: str) -> int | None:
    """The tag (an int) of a keyword or an 8-hex key; None for a string that is neither."""
    if is_tag_key(key):
        return int(key, 16)
    return datadict.tag_for_keyword(key)


def tag_key(tag: int) -> str:
    """The 8-hex uppercase key AHI uses for ``tag``."""
    return f"{tag:08X}"


def keyword_of(key: str) -> str | None:
    """The keyword of an 8-hex key (None for private or unknown tags), or ``key`` itself when a keyword."""
    if is_tag_key(key):
        keyword = datadict.keyword_for_tag(int(key, 16))
        return keyword or None
    return key if datadict.tag_for_keyword(key) is not None else None


def ahi_key(key: str) -> str:
    """The key AHI uses for an attribute: its keyword when it has one, else its 8-hex tag."""
    if is_tag_key(key):
        return keyword_of(key) or key.upper()
    return key


def is_private(key: str) -> bool:
    """True for a private tag key (odd group number)."""
    return is_tag_key(key) and int(key[:4], 16) % 2 == 1


def is_keyword(key: str) -> bool:
    """True when ``key`` is a keyword of pydicom's data dictionary."""
    return datadict.tag_for_keyword(key) is not None


@cache
def dictionary_vr(key: str) -> str | None:
    """The data dictionary's VR for a keyword or 8-hex key (``"US or SS"`` forms kept), None if unknown."""
    tag = tag_of(key)
    if tag is None:
        return None
    try:
        return datadict.dictionary_VR(tag)
    except KeyError:
        return None


def vr_of(key: str, dicom_vrs: Mapping[str, str] | None = None) -> str | None:
    """The VR of an attribute key: the instance's ``DICOMVRs`` entry first, else pydicom's dictionary.

    Returns None for a key neither knows (a private tag without a ``DICOMVRs`` entry, an unknown keyword).
    """
    if dicom_vrs:
        vr = dicom_vrs.get(key)
        if vr is not None:
            return vr
    return dictionary_vr(key)


@cache
def is_multi_valued(key: str) -> bool:
    """True when the dictionary's VM for ``key`` allows more than one value (AHI then encodes an array)."""
    tag = tag_of(key)
    if tag is None:
        return False
    try:
        vm = datadict.dictionary_VM(tag)
    except KeyError:
        return False
    return vm not in ("1", "")


@cache
def _repeater(key: str) -> tuple[str, str] | None:
    """(VR, VM) of a repeating-group keyword such as ``OverlayData`` (pydicom's RepeatersDictionary)."""
    for entry in datadict.RepeatersDictionary.values():
        if entry[4] == key:
            return entry[0], entry[1]
    return None


@cache
def vm_of(key: str) -> str | None:
    """The data dictionary's VM of a keyword or 8-hex key (``"1"``, ``"2-n"``, ...); None when unknown."""
    tag = tag_of(key)
    if tag is None:
        repeater = _repeater(key)
        return None if repeater is None else repeater[1]
    try:
        return datadict.dictionary_VM(tag)
    except KeyError:
        return None


def vr_vm_of(key: str, dicom_vrs: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """VR and VM of an attribute key: ``dicom_vrs`` (a DICOMVRs map or the user's ``vrs``) first for tags."""
    if dicom_vrs and key in dicom_vrs:
        return dicom_vrs[key], vm_of(key) if not is_tag_key(key) else None
    if is_private(key):
        return None, None
    repeater = _repeater(key)
    return dictionary_vr(key) or (None if repeater is None else repeater[0]), vm_of(key)


def is_standard(key: str) -> bool:
    """True for a keyword of the DICOM standard (the dictionary's, or a repeating group's); False for tags."""
    return not is_tag_key(key) and (is_keyword(key) or _repeater(key) is not None)

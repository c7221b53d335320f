"""AHI's metadata normalization: which DICOM attributes AHI lifts to the Patient, Study and Series levels.

The tag lists are the HealthImaging Developer Guide page "Metadata normalization" (PS3.6 2022b keys), module by
module. Keywords come from pydicom's data dictionary, never typed by hand. Every other attribute (file meta
group 0002, private tags, keyword-less tags, unknown keys) stays at the instance level.
"""

from __future__ import annotations

from typing import Literal

from pydicom.datadict import keyword_for_tag

Level = Literal["Patient", "Study", "Series", "Instance"]

_PATIENT_TAGS: dict[str, str] = {
    "Patient Module": "0010,0010 0010,0020",
    "Issuer of Patient ID Macro": """
        0010,0021 0010,0024 0010,0022 0010,0030 0010,0033 0010,0034 0010,0035 0010,0040 0010,1100 0010,0200
        0008,1120 0010,0032 0010,1002 0010,1001 0010,2160 0010,4000 0010,2201 0010,2202 0010,2292 0010,2293
        0010,2294 0010,0212 0010,0213 0010,0219 0010,0218 0010,0216 0010,0221 0010,2297 0010,2298 0010,2299
        0012,0062 0012,0063 0012,0064
    """,
    "Patient Group Macro": "0010,0026 0010,0027",
    "Clinical Trial Subject Module": """
        0012,0010 0012,0020 0012,0021 0012,0030 0012,0031 0012,0040 0012,0042 0012,0081 0012,0082
    """,
}

_STUDY_TAGS: dict[str, str] = {
    "General Study Module": """
        0020,000D 0008,0020 0008,0030 0008,0090 0008,0096 0008,009C 0008,009D 0020,0010 0008,0050 0008,0051
        0008,1030 0008,1048 0008,1049 0008,1060 0008,1062 0032,1033 0032,1034 0008,1110 0008,1032 0040,1012
    """,
    "Patient Study Module": """
        0008,1080 0008,1084 0010,1010 0010,1020 0010,1030 0010,1022 0010,1023 0010,1024 0010,1021 0010,2000
        0010,2110 0010,21A0 0010,21C0 0010,21D0 0038,0500 0010,2180 0010,21B0 0038,0010 0038,0014 0032,1066
        0032,1067 0038,0060 0038,0064 0038,0062 0010,2203
    """,
    "Clinical Trial Study Module": "0012,0050 0012,0051 0012,0052 0012,0053 0012,0083",
}

_SERIES_TAGS: dict[str, str] = {
    "General Series Module": """
        0008,0060 0020,000E 0020,0011 0020,0060 0008,0021 0008,0031 0008,1050 0008,1052 0018,1030 0008,103E
        0008,103F 0008,1070 0008,1072 0008,1111 0008,1250 0018,0015 0018,5100 0028,0108 0028,0109 0040,0275
        0010,2210 300A,0700
    """,
    "Clinical Trial Series Module": "0012,0060 0012,0071 0012,0072",
    "General Equipment Module": """
        0008,0070 0008,0080 0008,0081 0008,1010 0008,1040 0008,1041 0008,1090 0018,100B 0018,1000 0018,1020
        0018,1008 0018,100A 0018,1002 0018,1050 0018,1200 0018,1201 0028,0120
    """,
    "Frame of Reference Module": "0020,0052 0020,1040",
}


def _tag(text: str) -> int:
    group, element = text.split(",")
    return int(group, 16) << 16 | int(element, 16)


def _keywords(modules: dict[str, str]) -> frozenset[str]:
    keywords = {keyword_for_tag(_tag(tag)) for tags in modules.values() for tag in tags.split()}
    if "" in keywords:  # pragma: no cover - a tag missing from pydicom's dictionary
        raise RuntimeError("a normalization tag has no keyword in pydicom's dictionary")
    return frozenset(keywords)


PATIENT_KEYWORDS: frozenset[str] = _keywords(_PATIENT_TAGS)
STUDY_KEYWORDS: frozenset[str] = _keywords(_STUDY_TAGS)
SERIES_KEYWORDS: frozenset[str] = _keywords(_SERIES_TAGS)

_LEVEL_OF: dict[str, Level] = {
    **{keyword: "Patient" for keyword in PATIENT_KEYWORDS},
    **{keyword: "Study" for keyword in STUDY_KEYWORDS},
    **{keyword: "Series" for keyword in SERIES_KEYWORDS},
}
_LEVEL_OF.update(
    {
        f"{_tag(tag):08X}": _LEVEL_OF[keyword_for_tag(_tag(tag))]
        for modules in (_PATIENT_TAGS, _STUDY_TAGS, _SERIES_TAGS)
        for tags in modules.values()
        for tag in tags.split()
    }
)


def level_of(key: str) -> Level:
    """The level AHI stores attribute ``key`` (a keyword or an 8-hex tag) at; anything unlisted is "Instance"."""
    return _LEVEL_OF.get(key) or _LEVEL_OF.get(key.upper(), "Instance")

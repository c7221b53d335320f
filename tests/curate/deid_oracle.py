"""The tests' independent oracle for de-identification: KitwareMedical dicom-anonymizer's own extraction of the
PS3.15 Table E.1-1 Basic Profile column (2026c), and a document walk that does not use our code."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

from curation.model import dictionary as dicom


def kitware_basic() -> dict[int, str]:
    db = importlib.import_module("dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c")
    out = {}
    for name in ("D", "Z", "X", "U", "Z_D", "X_Z", "X_D", "X_Z_D", "X_Z_U_STAR"):
        for tag in getattr(db, f"{name}_TAGS"):
            if len(tag) == 2:
                out[(tag[0] << 16) | tag[1]] = name.replace("_STAR", "*").replace("_", "/")
    return out


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, str, Any]]:
    for key, value in node.items():
        yield path + key, key, value
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for n, item in enumerate(value):
                yield from walk(item, f"{path}{key}[{n}].")


def dicom_nodes(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield document["Patient"]["DICOM"]
    yield document["Study"]["DICOM"]
    for series in document["Study"]["Series"].values():
        yield series["DICOM"]
        yield from (instance["DICOM"] for instance in series["Instances"].values())


def oracle(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    """Problems by KitwareMedical's basic lists: X present, private present, a listed attribute keeping its old
    value (U: any old UID of the lists), an old UID as a series/instance key."""
    table = kitware_basic()
    old: dict[int, set[str]] = {}
    for document in before:
        for node in dicom_nodes(document):
            for _, key, value in walk(node):
                tag = dicom.tag_of(key)
                if tag in table and isinstance(value, str) and value.strip():
                    old.setdefault(tag, set()).add(value)
    old_uids = {v for tag, code in table.items() if code in ("U", "X/Z/U*") for v in old.get(tag, ())}
    problems = []
    for document in after:
        for node in dicom_nodes(document):
            for path, key, value in walk(node):
                tag = dicom.tag_of(key)
                if tag is None:
                    continue
                if (tag >> 16) % 2:
                    problems.append(f"{path}: private tag remains")
                elif table.get(tag) == "X":
                    problems.append(f"{path}: X but present")
                elif tag in table and isinstance(value, str) and value in old.get(tag, ()):
                    problems.append(f"{path}: {table[tag]} keeps its old value")
                if table.get(tag) in ("U", "X/Z/U*") and isinstance(value, str) and value in old_uids:
                    problems.append(f"{path}: an old UID remains")
        for series_uid, series in document["Study"]["Series"].items():
            problems += [f"key {uid}: old UID" for uid in (series_uid, *series["Instances"]) if uid in old_uids]
    return problems

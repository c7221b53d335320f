"""The apply journal: owner-only file, one fsynced JSON line per record, plan checks, torn-line tolerance."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from curation.run import journal as journal_module
from curation.run.journal import Journal, JournalError, file_mode, read_journal

HEADER = {"plan_id": "p1", "datastore_id": "d" * 32, "base_versions": {"a" * 32: "1"}, "requests": []}


def _request(index: int, status: str) -> dict:
    return {"kind": "request", "plan_id": "p1", "image_set_id": "a" * 32, "index": index, "status": status}


def test_created_owner_only_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with Journal(tmp_path / "j.jsonl") as journal:
            journal.start(HEADER)
    finally:
        os.umask(old)
    assert file_mode(tmp_path / "j.jsonl") == 0o600


def test_reopening_tightens_a_loose_mode(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.start(HEADER)
    os.chmod(path, 0o644)
    Journal(path).close()
    assert file_mode(path) == 0o600


def test_records_round_trip_with_time_and_each_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.start(HEADER)
        before = len(synced)
        journal.append(_request(0, "sending"))
        journal.append(_request(0, "done"))
        assert len(synced) - before == 2
    records = read_journal(path)
    assert [r.get("status") for r in records] == [None, "sending", "done"]
    assert records[0]["kind"] == "plan" and records[0]["plan_id"] == "p1" and records[0]["format_version"] == 1
    assert all("time" in r for r in records)
    assert path.read_bytes().count(b"\n") == 3


def test_resume_with_the_same_plan_and_refuse_another(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.start(HEADER)
        journal.append(_request(0, "done"))
    with Journal(path) as journal:
        assert journal.start(HEADER)["plan_id"] == "p1"
        assert journal.last_states()[("a" * 32, 0)]["status"] == "done"
    with Journal(path) as journal, pytest.raises(JournalError, match="journal of plan 'p1', not of plan 'p2'"):
        journal.start({**HEADER, "plan_id": "p2"})


def test_torn_last_line_is_ignored_and_cut_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.start(HEADER)
        journal.append(_request(0, "sending"))
    with open(path, "ab") as handle:
        handle.write(orjson.dumps(_request(0, "done"))[:25])  # the crash hit mid-write
    assert [r.get("status") for r in read_journal(path)] == [None, "sending"]
    with Journal(path) as journal:
        assert journal.last_states()[("a" * 32, 0)]["status"] == "sending"
        journal.append(_request(0, "done"))
    assert [r.get("status") for r in read_journal(path)] == [None, "sending", "done"]


def test_a_complete_record_without_its_newline_was_never_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.start(HEADER)
    with open(path, "ab") as handle:
        handle.write(orjson.dumps(_request(0, "sending")))
    assert len(read_journal(path)) == 1


def test_corruption_in_the_middle_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.start(HEADER)
    with open(path, "ab") as handle:
        handle.write(b"{not json\n" + orjson.dumps(_request(0, "done")) + b"\n")
    with pytest.raises(JournalError, match="line 2"):
        read_journal(path)


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(orjson.dumps({"hello": 1}) + b"\n")
    with Journal(path) as journal, pytest.raises(JournalError, match="not an ahi-curation journal"):
        journal.start(HEADER)

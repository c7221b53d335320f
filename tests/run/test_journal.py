"""The apply journal: owner-only file, one fsynced JSON line per record, plan checks, torn-line tolerance,
clear errors for files that are not journals, the one-writer lock, and the chains of versions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from curation.curate.updateplan import PlannedRequest, UpdatePlan
from curation.run import journal as journal_module
from curation.run.journal import (
    FORMAT_VERSION,
    Journal,
    JournalBusyError,
    JournalError,
    JournalLock,
    Purpose,
    VersionChains,
    file_mode,
    journal_header,
    journal_plan,
    read_journal,
    touched_versions,
)

DATASTORE = "d" * 32
A, B = "a" * 32, "b" * 32


def _plan(description: str = "x", image_set: str = A) -> UpdatePlan:
    params = {
        "datastoreId": DATASTORE,
        "imageSetId": image_set,
        "updateImageSetMetadataUpdates": {"revertToVersionId": "1"},
    }
    request = PlannedRequest(image_set, 0, params, description=description)
    return UpdatePlan.build(DATASTORE, {image_set: "1"}, [request])


PLAN = _plan()


def _request(index: int, status: str, image_set: str = A, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "request",
        "plan_id": PLAN.plan_id,
        "image_set_id": image_set,
        "index": index,
        "status": status,
        **extra,
    }


def test_created_owner_only_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with Journal(tmp_path / "j.jsonl") as journal:
            journal.start(PLAN, Purpose.APPLY)
    finally:
        os.umask(old)
    assert file_mode(tmp_path / "j.jsonl") == 0o600


def test_reopening_tightens_a_loose_mode(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.start(PLAN, Purpose.APPLY)
    os.chmod(path, 0o644)
    Journal(path).close()
    assert file_mode(path) == 0o600


def test_records_round_trip_with_time_and_each_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.start(PLAN, Purpose.APPLY)
        before = len(synced)
        journal.append(_request(0, "sending"))
        journal.append(_request(0, "done"))
        assert len(synced) - before == 2
    records = read_journal(path)
    assert [r.get("status") for r in records] == [None, "sending", "done"]
    header = journal_header(records, path)
    assert header["plan_id"] == PLAN.plan_id and header["format_version"] == FORMAT_VERSION
    assert journal_plan(header, path) == PLAN  # the plan exactly as UpdatePlan.to_dict wrote it
    assert all("time" in r for r in records)
    assert path.read_bytes().count(b"\n") == 3


def test_resume_with_the_same_plan_and_refuse_another_or_another_purpose(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.start(PLAN, Purpose.APPLY)
        journal.append(_request(0, "done"))
    with Journal(path) as journal:
        assert journal.start(PLAN, Purpose.APPLY)["plan_id"] == PLAN.plan_id
        assert journal.last_states()[(A, 0)]["status"] == "done"
    other = _plan("y")
    with Journal(path) as journal, pytest.raises(JournalError, match=f"journal of plan '{PLAN.plan_id}', not of"):
        journal.start(other, Purpose.APPLY)
    with Journal(path) as journal, pytest.raises(JournalError, match="journals a apply, not a revert"):
        journal.start(PLAN, Purpose.REVERT)


def test_torn_last_line_is_ignored_and_cut_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.start(PLAN, Purpose.APPLY)
        journal.append(_request(0, "sending"))
    with open(path, "ab") as handle:
        handle.write(orjson.dumps(_request(0, "done"))[:25])  # the crash hit mid-write
    assert [r.get("status") for r in read_journal(path)] == [None, "sending"]
    with Journal(path) as journal:
        assert journal.last_states()[(A, 0)]["status"] == "sending"
        journal.append(_request(0, "done"))
    assert [r.get("status") for r in read_journal(path)] == [None, "sending", "done"]


def test_a_complete_record_without_its_newline_was_never_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.start(PLAN, Purpose.APPLY)
    with open(path, "ab") as handle:
        handle.write(orjson.dumps(_request(0, "sending")))
    assert len(read_journal(path)) == 1


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([b"{not json", orjson.dumps(_request(0, "done"))], "line 2 is not JSON"),
        ([b"[1, 2]", orjson.dumps(_request(0, "done"))], "line 2 is not a JSON object"),
        ([orjson.dumps({"kind": "request", "index": 0, "status": "done"})], "record without 'image_set_id'"),
        ([orjson.dumps(_request(0, "finished"))], "line 2: unknown request status 'finished'"),
        ([orjson.dumps({**_request(0, "done"), "index": "0"})], "line 2: a request record without an integer 'index'"),
    ],
)
def test_bad_lines_are_one_clear_error_naming_the_line(tmp_path: Path, lines: list[bytes], message: str) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.start(PLAN, Purpose.APPLY)
    with open(path, "ab") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))
    with pytest.raises(JournalError, match=message):
        read_journal(path)


def test_files_that_are_not_journals_of_this_format_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(orjson.dumps({"hello": 1}) + b"\n")
    with Journal(path) as journal, pytest.raises(JournalError, match="not an ahi-curation journal"):
        journal.start(PLAN, Purpose.APPLY)
    with pytest.raises(JournalError, match="not an ahi-curation journal"):
        journal_header(read_journal(path), path)
    PLAN.save(tmp_path / "plan.json")
    (tmp_path / "plan.jsonl").write_bytes(orjson.dumps(PLAN.to_dict()) + b"\n")
    with pytest.raises(JournalError, match="is a saved plan, not a journal"):
        journal_header(read_journal(tmp_path / "plan.jsonl"), "plan.jsonl")
    old = tmp_path / "old.jsonl"
    old.write_bytes(orjson.dumps({"kind": "plan", "format": "ahi-curation-journal", "format_version": 1}) + b"\n")
    with pytest.raises(JournalError, match="format version 1; this ahi-curation reads version 2"):
        journal_header(read_journal(old), old)
    with pytest.raises(JournalError, match="is empty"):
        journal_header([], "empty.jsonl")


def test_an_edited_plan_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.start(PLAN, Purpose.APPLY)
    records = read_journal(path)
    records[0]["plan"]["base_versions"][A] = "2"
    with pytest.raises(JournalError, match="base_versions differ"):
        journal_plan(records[0], path)


# --- the lock -------------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with JournalLock(path):
        assert journal_module.lock_path(path).read_text().strip() == str(os.getpid())
        assert file_mode(journal_module.lock_path(path)) == 0o600
        with pytest.raises(JournalBusyError, match=f"in use by process {os.getpid()}") as info:
            JournalLock(path).acquire()
        assert info.value.pid == os.getpid()
    with JournalLock(path):  # released: free again
        pass


HOLD = """
import sys, time
from curation.run.journal import JournalLock
lock = JournalLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(JournalBusyError, match=f"process {holder.pid}"):
            JournalLock(path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert journal_module.lock_path(path).read_text().strip() == str(holder.pid)  # the dead holder's PID is left
    with JournalLock(path):
        assert journal_module.lock_path(path).read_text().strip() == str(os.getpid())


# --- chains of versions ---------------------------------------------------------------------------------


def test_chains_follow_versions_not_file_order() -> None:
    records = [
        _request(1, "done", base_version="3", new_version="4"),  # written first, happened second
        _request(0, "done", base_version="1", new_version="3"),  # version 2 is someone else's, between ours
        _request(0, "conflict", base_version="1", actual="2"),  # a conflict record is not a link
        _request(
            0, "done", image_set=B, base_version="5", new_version="6", affected={A: ["4", "5"]}
        ),  # our study-wide request moved A from 4 to 5
    ]
    chains = VersionChains(records, {A: "1", B: "5"})
    assert chains.end(A) == "5" and chains.ours(A) == {"3", "4", "5"} and chains.before(A) == "1"
    assert chains.end(B) == "6"
    before, last = chains.touched()
    assert before == {A: "1", B: "5"} and last == {A: "5", B: "6"}


def test_a_version_not_linked_to_the_base_is_never_ours() -> None:
    records = [
        _request(0, "done", base_version="1", new_version="2"),
        _request(1, "done", base_version="7", new_version="8"),  # sent against a version our chain never made
        _request(2, "failed", base_version="2", new_version="3"),  # failed: a version consumed, no change
    ]
    chains = VersionChains(records, {A: "1"})
    assert chains.ours(A) == {"2", "3"} and chains.end(A) == "3" and chains.last_changed(A) == "2"
    header = {"kind": "plan", "plan": {"base_versions": {A: "1"}}}
    assert touched_versions([header, *records]) == ({A: "1"}, {A: "3"})
    assert VersionChains([_request(0, "failed", base_version="1", new_version="2")], {A: "1"}).touched() == ({}, {})


def test_a_lock_holder_writes_while_a_reader_reads(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with JournalLock(path), Journal(path) as journal:
        journal.start(PLAN, Purpose.APPLY)
        journal.append(_request(0, "sending"))
        assert [r.get("status") for r in journal.reread()] == [None, "sending"]

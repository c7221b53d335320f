"""``ahi-curation serve`` and ``import`` as a user types them: every mistake is one line on stderr, exit code 2,
no traceback; nothing is created by a command that fails; importing again makes no duplicates."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from curation.cli import main

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
ROOT = Path(__file__).parents[2]


def no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


def one_line_mistake(capsys: pytest.CaptureFixture[str], code: int, *words: str) -> str:
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and "force=True" not in captured.err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def image_set_count(store: Path) -> int:
    with sqlite3.connect(store / "store.sqlite3") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM image_sets").fetchone()[0])


# ------------------------------------------------------------------------------------------ serve


def test_serve_refuses_a_store_that_does_not_exist(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    no_aws_environment(monkeypatch)
    code = main(["serve", "--store", str(tmp_path / "typo"), "--port", "0"])
    one_line_mistake(capsys, code, "no store at", "--create")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "empty").mkdir()  # a directory that holds no store is no store either
    one_line_mistake(capsys, main(["serve", "--store", str(tmp_path / "empty"), "--port", "0"]), "no store at")
    assert list((tmp_path / "empty").iterdir()) == []


def test_serve_create_where_nothing_can_be_created(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    no_aws_environment(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(["serve", "--store", str(blocker / "store"), "--create", "--port", "0"])
    one_line_mistake(capsys, code, "cannot open the store")


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--access-key-id", "AKIAEXAMPLE"], ["both an access key ID and a secret"]),
        (["--profile", "nosuchprofile"], ["no AWS profile named 'nosuchprofile'"]),
        (["--no-auth", "--access-key-id", "A", "--secret-access-key", "B"], ["--no-auth takes no credentials"]),
        (["--workers", "0"], ["must be positive"]),
    ],
)
def test_serve_option_mistakes(
    tmp_path: Path, capsys: Any, monkeypatch: Any, flags: list[str], words: list[str]
) -> None:
    no_aws_environment(monkeypatch)
    code = main(["serve", "--store", str(tmp_path / "s"), "--create", "--port", "0", *flags])
    one_line_mistake(capsys, code, *words)
    assert not (tmp_path / "s").exists()


def test_serve_on_a_port_in_use(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    no_aws_environment(monkeypatch)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--store", str(tmp_path / "s"), "--create", "--port", str(port)])
    one_line_mistake(capsys, code, "listen on", str(port))


def test_serve_takes_the_key_pair_from_the_environment(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="AKIAFROMENVIRONMENT0", AWS_SECRET_ACCESS_KEY="secret-from-env")
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    command = [sys.executable, "-m", "curation.cli", "serve", "--store", str(tmp_path / "s"), "--create", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        lines = [process.stdout.readline() for _ in range(2)] if process.stdout else []
        assert "access key AKIAFROMENVIRONMENT0" in lines[1] and "secret-from-env" not in "".join(lines)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert "Traceback" not in (process.stderr.read() if process.stderr else "")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_store_is_private(tmp_path: Path) -> None:
    assert main(["import", "--store", str(tmp_path / "s"), str(CT)]) == 0
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    for file in (tmp_path / "s").iterdir():
        assert file.stat().st_mode & 0o777 == 0o600, file


# ------------------------------------------------------------------------------------------ import


def test_import_of_nothing_readable_creates_nothing(tmp_path: Path, capsys: Any) -> None:
    code = main(["import", "--store", str(tmp_path / "s"), str(tmp_path / "missing.dcm")])
    one_line_mistake(capsys, code, "nothing readable", "nothing was created", "no such file")
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("not a DICOM file")
    code = main(["import", "--store", str(tmp_path / "s"), str(not_dicom)])
    line = one_line_mistake(capsys, code, "nothing readable", "not a DICOM P10 file")
    assert "Use force" not in line
    assert not (tmp_path / "s").exists()


def test_import_of_nothing_into_an_existing_store_makes_no_datastore(tmp_path: Path, capsys: Any) -> None:
    store = tmp_path / "s"
    assert main(["import", "--store", str(store), str(CT)]) == 0
    with sqlite3.connect(store / "store.sqlite3") as conn:
        conn.execute("DELETE FROM datastores")  # a store with no datastore at all
    capsys.readouterr()
    code = main(["import", "--store", str(store), str(tmp_path / "missing.json")])
    one_line_mistake(capsys, code, "nothing readable")
    with sqlite3.connect(store / "store.sqlite3") as conn:
        assert conn.execute("SELECT COUNT(*) FROM datastores").fetchone()[0] == 0


def test_import_into_a_store_that_cannot_be_created(tmp_path: Path, capsys: Any) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(["import", "--store", str(blocker / "store"), str(CT)])
    one_line_mistake(capsys, code, "cannot create or open the store")


def test_import_into_an_unknown_datastore(tmp_path: Path, capsys: Any) -> None:
    assert main(["import", "--store", str(tmp_path / "s"), str(CT)]) == 0
    capsys.readouterr()
    code = main(["import", "--store", str(tmp_path / "s"), "--datastore-id", "e" * 32, str(CT)])
    one_line_mistake(capsys, code, "ResourceNotFoundException")


def test_importing_the_same_documents_again_changes_nothing(tmp_path: Path, capsys: Any) -> None:
    store = tmp_path / "s"
    documents = [str(path) for path in sorted(REFERENCE.glob("*.json"))]
    assert main(["import", "--store", str(store), *documents, str(CT)]) == 0
    first = capsys.readouterr().out
    assert first.count("created ") == 4
    assert main(["import", "--store", str(store), *documents, str(CT)]) == 0
    again = capsys.readouterr().out
    assert "created " not in again and again.count("unchanged ") == 3
    assert image_set_count(store) == 4


_IMPORTER = """
import sys
from curation.local.store import Store
Store(sys.argv[1]).import_paths(sys.argv[2:])
"""


def test_a_killed_import_run_again_leaves_no_duplicates(tmp_path: Path) -> None:
    store = tmp_path / "s"
    source = tmp_path / "documents"
    source.mkdir()
    base = json.loads((REFERENCE / "ct-2025-htj2k-1-instance.json").read_text())
    ((series_uid, node),) = base["Study"]["Series"].items()
    for number in range(40):
        document = json.loads(json.dumps(base))
        document["ImageSetID"] = f"{number:032x}"
        document["Study"]["Series"] = {f"{series_uid}.{number}": node}
        (source / f"{number:02}.json").write_text(json.dumps(document))
    main(["import", "--store", str(store), str(source / "00.json")])  # the store exists before the kill
    importer = subprocess.Popen([sys.executable, "-c", _IMPORTER, str(store), str(source)], cwd=ROOT)
    try:
        for _ in range(3000):  # kill it once it has written some documents, whatever their number
            if image_set_count(store) >= 3 or importer.poll() is not None:
                break
            time.sleep(0.01)
    finally:
        importer.send_signal(signal.SIGKILL)
        importer.wait()
    assert main(["import", "--store", str(store), str(source)]) == 0
    with sqlite3.connect(store / "store.sqlite3") as conn:
        rows = conn.execute("SELECT image_set_id FROM image_sets").fetchall()
    assert sorted(row[0] for row in rows) == [f"{number:032x}" for number in range(40)]


def test_credentials_come_from_flags_environment_or_profile(tmp_path: Path, monkeypatch: Any) -> None:
    from curation.local.auth import Credentials, resolve_credentials

    no_aws_environment(monkeypatch)
    assert resolve_credentials() is None  # nothing anywhere: serve generates a pair
    assert resolve_credentials("AKIAFLAG", "flag-secret") == Credentials("AKIAFLAG", "flag-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    assert resolve_credentials() == Credentials("AKIAENV", "env-secret")
    shared = tmp_path / "credentials"
    shared.write_text("[curator]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    assert resolve_credentials(profile="curator") == Credentials("AKIAPROFILE", "profile-secret")  # beats env
    assert "profile-secret" not in repr(resolve_credentials(profile="curator"))


@pytest.mark.parametrize("inherited", ["ignored", "blocked"])
def test_serve_stops_on_ctrl_c_and_sigterm_even_when_started_with_them_ignored_or_blocked(
    tmp_path: Path, inherited: str
) -> None:
    """A server started by a process that ignores SIGINT (a test runner's worker, ``nohup``, a notebook kernel)
    or blocks it inherits that across exec; Ctrl-C must still stop it, and so must SIGTERM (``docker stop``)."""

    def inherit() -> None:
        if inherited == "ignored":
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

    for number, stop in enumerate((signal.SIGINT, signal.SIGTERM)):
        command = [
            sys.executable,
            "-m",
            "curation.cli",
            "serve",
            "--store",
            str(tmp_path / f"s{number}"),
            "--create",
            "--port",
            "0",
            "--no-auth",
        ]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=inherit
        )
        try:
            assert process.stdout is not None and "http://127.0.0.1:" in process.stdout.readline()
            process.send_signal(stop)
            assert process.wait(timeout=60) == 0, stop
            assert "Traceback" not in (process.stderr.read() if process.stderr else "")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

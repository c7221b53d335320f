"""The ``ahi-curation`` command as a user types it: import, then apply and revert a saved plan over HTTP."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from curation.cli import main
from curation.curate.differ import diff
from curation.curate.planner import plan
from curation.local.server import serving
from curation.local.store import Store
from curation.run.fetching import fetch

REFERENCE = Path(__file__).parents[1] / "data" / "reference"


def _latest_document(store: Store, datastore_id: str, image_set_id: str, version: str | None = None) -> dict:
    params = {"datastoreId": datastore_id, "imageSetId": image_set_id}
    if version:
        params["versionId"] = version
    return json.loads(gzip.decompress(store.call("GetImageSetMetadata", params)["imageSetMetadataBlob"]))


def test_import_prints_the_datastore_and_every_image_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["import", "--store", str(tmp_path / "s"), *map(str, sorted(REFERENCE.glob("*.json")))]) == 0
    lines = capsys.readouterr().out.splitlines()
    datastore_id = lines[0].removeprefix("datastore ")
    created = {line.removeprefix("created ") for line in lines[1:]}
    assert len(created) == 3
    summaries = Store(tmp_path / "s").call("SearchImageSets", {"datastoreId": datastore_id})
    assert {s["imageSetId"] for s in summaries["imageSetsMetadataSummaries"]} == created


def test_apply_then_revert_a_saved_plan_over_http(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = Store(tmp_path / "s")
    report = store.import_paths([str(REFERENCE / "ct-2025-htj2k-1-instance.json")])
    (image_set_id,) = report.created
    with serving(store) as url:
        import curation.local

        snapshot = fetch(curation.local.client(store), report.datastore_id, progress=False)
        studies = snapshot.studies.copy()
        studies.loc[image_set_id, "StudyDescription"] = "CT HEAD"
        plan_path = tmp_path / "plan.json"
        plan(diff(snapshot, studies)).save(plan_path)
        journal = tmp_path / "journal.jsonl"
        common = ["--endpoint-url", url, "--rate", "100", "--no-progress"]

        assert main(["apply", str(plan_path), "--journal", str(journal), "--dry-run", *common]) == 0
        assert not journal.exists()
        assert (
            _latest_document(store, report.datastore_id, image_set_id)["Study"]["DICOM"].get("StudyDescription") is None
        )

        reading = ["--endpoint-url", url, "--no-progress"]
        assert main(["verify", str(plan_path), *reading]) == 1  # not applied yet: the difference is listed
        assert "StudyDescription" in capsys.readouterr().out
        assert main(["apply", str(plan_path), "--journal", str(journal), *common]) == 0
        assert "1 applied" in capsys.readouterr().out
        assert main(["verify", str(plan_path), "--journal", str(journal), *reading]) == 0
        assert "verified" in capsys.readouterr().out
        assert _latest_document(store, report.datastore_id, image_set_id)["Study"]["DICOM"]["StudyDescription"] == (
            "CT HEAD"
        )
        assert main(["apply", str(plan_path), "--journal", str(journal), *common]) == 0  # resume: nothing resent
        versions = store.call("ListImageSetVersions", {"datastoreId": report.datastore_id, "imageSetId": image_set_id})
        assert len(versions["imageSetPropertiesList"]) == 2

        assert main(["revert", str(journal), *common]) == 0
        assert _latest_document(store, report.datastore_id, image_set_id) == _latest_document(
            store, report.datastore_id, image_set_id, "1"
        )


# --- every expected mistake: one line on stderr, exit code 2, no traceback --------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS configuration at all: no region, no profile, no credentials (and no metadata service)."""
    for name in (
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A saved plan (never sent: every case stops before a call), its edited, truncated and foreign twins,
    and an apply journal of another plan."""
    from curation.curate.updateplan import PlannedRequest, UpdatePlan
    from curation.run.journal import Journal, Purpose

    def made(description: str) -> UpdatePlan:
        params = {
            "datastoreId": "d" * 32,
            "imageSetId": "a" * 32,
            "updateImageSetMetadataUpdates": {"revertToVersionId": "1"},
        }
        request = PlannedRequest("a" * 32, 0, params, description=description)
        return UpdatePlan.build("d" * 32, {"a" * 32: "2"}, [request])

    plan_path = tmp_path / "plan.json"
    made("mine").save(plan_path)
    edited = tmp_path / "edited.json"
    edited.write_text(plan_path.read_text().replace('"revertToVersionId": "1"', '"revertToVersionId": "0"'))
    truncated = tmp_path / "truncated.json"
    truncated.write_text(plan_path.read_text()[:200])
    foreign = tmp_path / "foreign.jsonl"
    with Journal(foreign) as journal:
        journal.start(made("theirs"), Purpose.APPLY)
    return {"plan": plan_path, "edited": edited, "truncated": truncated, "foreign": foreign, "dir": tmp_path}


def _mistakes(f: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    local = ["--endpoint-url", "http://127.0.0.1:9", "--no-progress"]
    journal = str(f["dir"] / "new.jsonl")
    return {
        "missing plan": (["apply", str(f["dir"] / "nope.json"), "--journal", journal, *local], "there is no plan file"),
        "missing journal (revert)": (["revert", str(f["dir"] / "nope.jsonl"), *local], "there is no journal"),
        "missing journal (verify)": (
            ["verify", str(f["plan"]), "--journal", str(f["dir"] / "nope.jsonl"), *local],
            "there is no journal",
        ),
        "journal folder missing": (
            ["apply", str(f["plan"]), "--journal", str(f["dir"] / "no" / "j.jsonl"), *local],
            "its folder does not exist",
        ),
        "no region, no endpoint": (["apply", str(f["plan"]), "--journal", journal], "no AWS region"),
        "no credentials": (
            ["apply", str(f["plan"]), "--journal", journal, "--region", "us-east-1"],
            "no AWS credentials",
        ),
        "unknown profile": (
            ["apply", str(f["plan"]), "--journal", journal, "--profile", "nobody"],
            "no AWS profile named 'nobody'",
        ),
        "bad endpoint": (
            ["apply", str(f["plan"]), "--journal", journal, "--endpoint-url", "not a url"],
            "cannot use endpoint",
        ),
        "edited plan": (["apply", str(f["edited"]), "--journal", journal, *local], "was changed after it was made"),
        "truncated plan": (["apply", str(f["truncated"]), "--journal", journal, *local], "not valid JSON"),
        "journal given as plan": (
            ["apply", str(f["foreign"]), "--journal", journal, *local],
            "this is an apply journal",
        ),
        "plan given as journal": (["revert", str(f["plan"]), *local], "is not JSON"),
        "another plan's journal": (
            ["apply", str(f["plan"]), "--journal", str(f["foreign"]), *local],
            "is the journal of plan",
        ),
        "a bad rate": (["apply", str(f["plan"]), "--journal", journal, "--rate", "fast"], "not a number"),
        "no journal option": (["apply", str(f["plan"])], "required: --journal"),
        "no workers": (["apply", str(f["plan"]), "--journal", journal, "--max-workers", "0"], "at least 1 worker"),
        "unknown command": (["aply", str(f["plan"])], "invalid choice"),
    }


def test_every_mistake_is_one_line_and_exit_2(
    files: dict[str, Path], no_aws: None, capsys: pytest.CaptureFixture
) -> None:
    for name, (argv, expected) in _mistakes(files).items():
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's own errors
            code = exit.code
        captured = capsys.readouterr()
        assert code == 2, (name, captured.err)
        assert captured.err.count("\n") == 1 and captured.err.startswith("ahi-curation"), (name, captured.err)
        assert expected in captured.err, (name, captured.err)
        assert "Traceback" not in captured.err + captured.out and "``" not in captured.err, name
    assert not (files["dir"] / "new.jsonl").exists()  # nothing was started for any of them


def test_a_refused_connection_is_one_line_and_journaled_as_not_sent(
    files: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    """A plan for an image set at a closed port: botocore's few quick retries, then one line naming the
    endpoint; the journal says the request was not sent (a later apply sends it)."""
    from curation.run.journal import read_journal

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    journal = files["dir"] / "refused.jsonl"
    code = main(["apply", str(files["plan"]), "--journal", str(journal), "--endpoint-url", endpoint, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"could not connect to {endpoint}: nothing was sent" in err and str(journal) in err
    records = read_journal(journal)
    unsent = [r for r in records if r.get("status") == "unsent"]
    assert len(unsent) == 1 and endpoint in unsent[0]["message"]
    assert [r["reason"] for r in records if r.get("kind") == "stop"] == ["unreachable"]


def test_the_console_script_shows_no_traceback_and_has_a_version(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "curation.cli",
            "apply",
            str(tmp_path / "x.json"),
            "--journal",
            str(tmp_path / "j.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "there is no plan file" in done.stderr
    version = subprocess.run(
        [sys.executable, "-m", "curation.cli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert version.returncode == 0 and version.stdout.startswith("ahi-curation 0.")


def test_help_has_a_description_and_an_example_for_each_command(capsys: pytest.CaptureFixture) -> None:
    for command in ("demo", "serve", "import", "apply", "verify", "revert"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert "example" in text and f"ahi-curation {command}" in text.split("example")[-1], command
        assert "`" not in text, command
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "`" not in capsys.readouterr().out

"""``ahi-curation demo``: the whole workflow on pydicom's files, offline, checked end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.demo import PRIMARY_RULE, demo_files, run_demo

SECTIONS = (
    "== 1. Import",
    "== 2. Fetch and flatten ==",
    "== 3. Correct with pandas",
    "== 4. ChangeSet ==",
    "== 5. UpdatePlan ==",
    "== 6. Apply",
    "== 7. Verify",
    "== 8. History of image set",
    "== 9. Revert",
    "== Summary ==",
)


def test_demo_runs_every_step_and_checks_itself(tmp_path: Path, capsys: Any) -> None:
    assert len(demo_files()) >= 4
    assert run_demo(store_path=tmp_path / "store") == 0
    out = capsys.readouterr().out
    positions = [out.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert PRIMARY_RULE in out
    assert "verified: every image set is exactly as planned" in out
    assert "ABDOMEN LIVER" in out  # the pandas correction reached the ChangeSet and the history diff
    restored = out.split("revert restored ")[1].split(" image sets")[0]
    count, total = restored.split(" of ")
    assert count == total and int(total) >= 4
    assert out.rstrip().endswith("demo OK")
    assert list((tmp_path / "store").glob("journal-*.jsonl"))


def test_demo_runs_again_on_the_same_store(tmp_path: Path, capsys: Any) -> None:
    assert run_demo(store_path=tmp_path / "store") == 0
    assert run_demo(store_path=tmp_path / "store") == 0  # a new plan against the reverted versions
    assert capsys.readouterr().out.count("demo OK") == 2

"""README's notebook example runs as written (on a pydicom test file), so the README stays true."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pydicom
import pytest

README = Path(__file__).parents[2] / "README.md"
EXAMPLE_FILE = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files", "examples_overlay.dcm")


def readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README.md has no python example"
    return blocks[0]


def test_readme_example_runs_and_does_what_it_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = readme_python_example().replace('"path/to/dicom"', repr(EXAMPLE_FILE))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)

    result, snapshot, client = namespace["result"], namespace["snapshot"], namespace["client"]
    assert list(result["status"]) == ["applied"]
    assert len(namespace["changes"]) == 1 and len(namespace["update_plan"]) == 1
    (image_set_id,) = snapshot.image_set_ids
    history = namespace["curation"].history(client, snapshot.datastore_id, image_set_id)
    assert list(history["versionId"]) == ["1", "2", "3"]  # import, the fix, the revert
    import curation

    restored = curation.fetch(client, snapshot.datastore_id, progress=False)
    assert restored.studies.loc[image_set_id, "StudyDescription"] == "abdomen^liver"
    fixed = curation.fetch(client, snapshot.datastore_id, version_ids={image_set_id: "2"}, progress=False)
    assert fixed.studies.loc[image_set_id, "StudyDescription"] == "ABDOMEN LIVER"

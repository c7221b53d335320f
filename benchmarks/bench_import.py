"""DICOM import throughput with frames encoded as AHI stores them (HTJ2K, JPEG 2000 lossless), against today's
path that stores the file's bytes, measured in the same run on the same files.

The files are ``200 * scale`` CT instances of 512 x 512 16-bit pixels (a smooth anatomy-like image plus noise,
seeded, so HTJ2K has realistic work: not a constant image, not white noise), written by pydicom as Explicit VR
Little Endian. Each import goes into a fresh store: the baseline is today's path, ``read_instance(path, None)``
file after file (decode for the checksums, store the file's bytes); ours is ``Store.import_paths``
into an HTJ2K datastore (the default) and into a JPEG 2000 lossless one. A last line measures re-importing the
same files (every instance already held: idempotent) against the first import.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from benchmarks import Measurement

FULL_SIZE = 200
SIDE = 512


def write_series(directory: Path, count: int, seed: int = 15) -> list[Path]:
    """``count`` CT instances of one series with seeded 12-bit pixels in 16-bit words."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    y, x = np.mgrid[-1 : 1 : SIDE * 1j, -1 : 1 : SIDE * 1j]
    body = (x**2 / 0.8 + y**2 / 0.6) < 1
    paths = []
    for number in range(count):
        ring = np.exp(-(((x**2 + y**2) ** 0.5 - 0.3 - 0.001 * number) ** 2) / 0.002)
        pixels = (body * 1000 + ring * 800 + rng.normal(0, 20, (SIDE, SIDE))).clip(0, 4095).astype(np.uint16)
        dataset = template.copy()
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.InstanceNumber = number + 1
        dataset.Rows = dataset.Columns = SIDE
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
        dataset.PixelData = pixels.tobytes()
        dataset["PixelData"].VR = "OW"
        path = directory / f"{number:04d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _store_bytes(path: Path) -> int:
    """The store's size once its write-ahead log is folded into the database."""
    import sqlite3

    with sqlite3.connect(path / "store.sqlite3") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(file.stat().st_size for file in path.iterdir())


def _timed_import(root: Path, name: str, paths: list[Path], storage_format: str | None) -> tuple[float, Path]:
    """Seconds to import ``paths`` into a fresh store (``storage_format`` None: today's path), and the store."""
    from curation.local.importing import ImportInputs
    from curation.local.ingest import read_instance
    from curation.local.store import Store

    store_path = root / name
    store = Store(store_path)
    start = time.perf_counter()
    if storage_format is None:
        records = [read_instance(str(path), None) for path in paths]  # today's: one file after another
        report = store.import_inputs(ImportInputs(records=records))
    else:
        store.create_datastore(datastore_name="bench", lossless_storage_format=storage_format)
        report = store.import_paths(paths)
    seconds = time.perf_counter() - start
    assert not report.failures and len(report.created) == 1, report.failures[:3]
    store.close()
    return seconds, store_path


def run(scale: float) -> Iterable[Measurement]:
    """Import throughput (instances per second) of the encoded import against today's, same files, best of 2."""
    from curation.local.store import Store

    count = max(10, round(FULL_SIZE * scale))
    with tempfile.TemporaryDirectory(prefix="bench-import-") as directory:
        root = Path(directory)
        (root / "files").mkdir()
        paths = write_series(root / "files", count)
        source_mb = sum(path.stat().st_size for path in paths) / 1e6
        _timed_import(root, "warm-up", paths[:2], "HTJ2K")  # imports, codec and model loading off the clock

        def best(storage_format: str | None) -> tuple[float, Path]:
            runs = [_timed_import(root, f"{storage_format}-{n}", paths, storage_format) for n in range(2)]
            return min(runs)

        baseline_seconds, baseline_path = best(None)
        baseline, baseline_mb = count / baseline_seconds, _store_bytes(baseline_path) / 1e6
        for label, storage_format in (("HTJ2K", "HTJ2K"), ("JPEG 2000 lossless", "JPEG_2000_LOSSLESS")):
            seconds, store_path = best(storage_format)
            yield Measurement(
                f"import {count} CT files ({source_mb:.0f} MB), frames as {label}",
                count / seconds,
                baseline,
                "instances/s",
                note=f"baseline: today's import storing the file's bytes; store {_store_bytes(store_path) / 1e6:.0f} MB"
                f" vs {baseline_mb:.0f} MB",
            )
            if storage_format == "HTJ2K":
                store = Store(store_path)
                start = time.perf_counter()
                again = store.import_paths(paths)
                assert not again.created and not again.updated
                yield Measurement(
                    f"re-import the same {count} CT files (nothing to write)",
                    count / (time.perf_counter() - start),
                    count / seconds,
                    "instances/s",
                    note="baseline: the first import of them (HTJ2K)",
                )

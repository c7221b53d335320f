"""Frames as AHI stores them: which transfer syntax an imported frame is stored in, its encoding, its content type.

From the HealthImaging developer guide, "Supported transfer syntaxes": at import most frames are transcoded
to the datastore's ``losslessStorageFormat``, HTJ2K lossless with RPCL options (``1.2.840.10008.1.2.4.202``,
the default) or JPEG 2000 lossless (``1.2.840.10008.1.2.4.90``); some keep their original encoding (JPEG
Baseline 4.50, JPEG 2000 4.91, the MPEG/H.264/HEVC video syntaxes, and binary segmentations in Explicit VR
Little Endian). HTJ2K 4.203 (lossless *or lossy*) is kept as it is too: re-encoding it would not make it
lossless (the guide's table is silent on it; this is the strict reading). ``StoredTransferSyntaxUID`` records
the result. GetImageFrame answers the stored bytes with the content type the API reference lists per stored
transfer syntax (``image/jph`` for 4.202, ``image/j2c`` for 4.91 ...; 4.90 is not in that list, and as a J2K
codestream it is answered ``image/j2c``).

The encoder is imagecodecs (``htj2k_encode`` wraps OpenJPH, ``jpeg2k_encode`` OpenJPEG): reversible wavelet,
no colour transform (the pixels decode to exactly the values pydicom decoded from the file, so the checksums
over decoded pixels stay true), RPCL progression and TLM markers for 4.202 as DICOM PS3.5 8.2.14 asks.
Only 8- and 16-bit integer frames with 1 or 3 samples are encoded; others (32-bit, float, 1-bit) keep their
stored bytes, as do frames pydicom cannot decode here.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)

StorageFormat = Literal["HTJ2K", "JPEG_2000_LOSSLESS"]

HTJ2K_LOSSLESS_RPCL = UID("1.2.840.10008.1.2.4.202")
HTJ2K_LOSSY = UID("1.2.840.10008.1.2.4.203")
#: The stored transfer syntax of each ``losslessStorageFormat`` (service model enum ``LosslessStorageFormat``).
STORAGE_SYNTAXES: dict[str, UID] = {"HTJ2K": HTJ2K_LOSSLESS_RPCL, "JPEG_2000_LOSSLESS": JPEG2000Lossless}

_MPEG2 = (
    "1.2.840.10008.1.2.4.100",
    "1.2.840.10008.1.2.4.100.1",
    "1.2.840.10008.1.2.4.101",
    "1.2.840.10008.1.2.4.101.1",
)
_H264 = tuple(f"1.2.840.10008.1.2.4.{n}{suffix}" for n in range(102, 107) for suffix in ("", ".1"))
_HEVC = ("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108")
#: Transfer syntaxes whose frames AHI keeps in their original encoding.
KEPT_ENCODED = frozenset({JPEGBaseline8Bit, JPEG2000, HTJ2K_LOSSY, *_MPEG2, *_H264, *_HEVC})

_CONTENT_TYPES: dict[str, str] = {
    ExplicitVRLittleEndian: "application/octet-stream",
    JPEGBaseline8Bit: "image/jpeg",
    JPEG2000: "image/j2c",
    JPEG2000Lossless: "image/j2c",
    HTJ2K_LOSSLESS_RPCL: "image/jph",
    "1.2.840.10008.1.2.4.201": "image/jph",
    HTJ2K_LOSSY: "image/jphc",
    **dict.fromkeys(_MPEG2, "video/mpeg"),
    **dict.fromkeys(_H264, "video/mp4"),
    **dict.fromkeys(_HEVC, "video/H256"),  # sic: the API reference's spelling
}


def content_type(stored_transfer_syntax: str | None) -> str:
    """GetImageFrame's ``contentType`` for a frame stored in ``stored_transfer_syntax`` (None: an unlabelled
    frame of a store written before frames were encoded, answered as raw bytes)."""
    if stored_transfer_syntax is None:
        return "application/octet-stream"
    return _CONTENT_TYPES.get(str(stored_transfer_syntax), "application/octet-stream")


def target_syntax(source: UID, storage_format: StorageFormat | None, bits_allocated: int) -> UID | None:
    """The transfer syntax AHI transcodes a frame of ``source`` to, or None when it keeps the stored bytes.

    ``storage_format`` None keeps every frame as stored in the file (the behaviour before frames were encoded,
    kept as the import benchmark's baseline).
    """
    if storage_format is None or source in KEPT_ENCODED or bits_allocated == 1:
        return None
    return STORAGE_SYNTAXES[storage_format]


def kept_syntax(source: UID) -> UID:
    """The stored transfer syntax of a frame kept as in the file (a deflated data set's pixels are native)."""
    return ExplicitVRLittleEndian if source == DeflatedExplicitVRLittleEndian else source


def encodable(pixels: np.ndarray) -> bool:
    """Whether :func:`encode_frame` can store these decoded pixels losslessly (8/16-bit integers, 1 or 3 samples)."""
    samples_ok = pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (1, 3))
    return samples_ok and pixels.dtype.kind in "iu" and pixels.dtype.itemsize in (1, 2)


def encode_frame(pixels: np.ndarray, syntax: UID) -> bytes:
    """One decoded frame (rows x columns [x samples]) as a lossless codestream of ``syntax``."""
    import imagecodecs

    little = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("="))
    if little.ndim == 3 and little.shape[2] == 1:
        little = little[:, :, 0]
    if syntax == HTJ2K_LOSSLESS_RPCL:
        return bytes(imagecodecs.htj2k_encode(little, reversible=True, tlm=True, rgb=False))
    if syntax == JPEG2000Lossless:
        return bytes(imagecodecs.jpeg2k_encode(little, level=0, codecformat="J2K", reversible=True, mct=False))
    raise ValueError(f"{syntax} is not a lossless storage format of HealthImaging")

"""The on-disk layout of a trace dataset, shared by the writer (dataset.py) and the reader (query.py): the Arrow
schema of its rows (the columns of `trace.sip()`), and the description file that marks a directory as a notebook_im
dataset. Its own module so that reading a dataset does not import the writer, nor the writer the reader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

MARKER = "_notebook_im_dataset.json"
FORMAT = "notebook_im trace dataset"
VERSION = 1
_DICT = pa.dictionary(pa.int32(), pa.string())
SCHEMA = pa.schema(
    [
        ("timestamp", pa.timestamp("ns", tz="UTC")),
        ("owner", _DICT),
        ("direction", _DICT),
        ("transport", _DICT),
        ("src", _DICT),
        ("dst", _DICT),
        ("method", _DICT),
        ("status", pa.int16()),
        ("call_id", pa.string()),
        ("cseq", pa.int64()),
        ("from_tag", pa.string()),
        ("to_tag", pa.string()),
        ("branch", pa.string()),
        ("transaction_id", pa.string()),
        ("dialog_id", pa.string()),
        ("body_size", pa.int64()),
        ("raw", pa.string()),
    ]
)
COLUMNS = SCHEMA.names


class DatasetError(ValueError):
    """A dataset path that cannot be used (the message says what to do)."""


def read_marker(root: Path) -> dict[str, Any]:
    """The dataset's description file (format, version, imports); DatasetError if it is not ours or too new."""
    try:
        info = json.loads((root / MARKER).read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"{str(root)!r} has an unreadable {MARKER} ({exc}); it is not a notebook_im dataset"
        ) from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DatasetError(f"{str(root)!r}: {MARKER} does not describe a notebook_im dataset")
    if int(info.get("version", 0)) > VERSION:
        raise DatasetError(
            f"{str(root)!r} is a dataset of format version {info['version']}; this version of "
            f"notebook_im reads version {VERSION}: upgrade notebook_im"
        )
    return info

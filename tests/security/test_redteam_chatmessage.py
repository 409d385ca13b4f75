"""MEDIUM (API). ChatMessage stopped being a dataclass (commit 242686e): what users of a notebook toolkit do with
`session.messages` breaks. Each test passed with the dataclass (HEAD~3) and fails now."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from datetime import datetime, timezone

import pandas as pd
import pytest

from notebook_im import ChatMessage

TS = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _msg(**kw):
    return ChatMessage("id1", "out", "sip:a@x", "sip:b@x", "hi", "text/plain", TS, "sending", "pager", **kw)


def test_a_dataframe_of_messages_has_one_column_per_field():
    df = pd.DataFrame([_msg(), _msg()])  # pd.DataFrame(session.messages) in a notebook
    assert {"id", "text", "state", "status"} <= set(df.columns), list(df.columns)


def test_dataclasses_functions_still_work():
    m = _msg()
    assert dataclasses.is_dataclass(m)
    assert dataclasses.asdict(m)["text"] == "hi"
    assert dataclasses.replace(m, text="edited").text == "edited"


def test_a_note_of_ones_own_and_the_fields_as_a_dict():
    """`vars()` holds only what a user hung on the message (its fields live in one tuple, see ChatMessage);
    `dataclasses.asdict` is the way to have them as a dict, as for any dataclass."""
    m = _msg()
    m.note = "seen in the demo"
    assert m.note == "seen in the demo" and vars(m) == {"note": "seen in the demo"}
    assert dataclasses.asdict(m)["id"] == "id1"


def test_the_extra_dict_given_is_the_one_kept():
    extra: dict = {}
    m = _msg(extra=extra)
    extra["k"] = 1
    assert m.extra is extra  # an empty dict is dropped by `if extra:` and replaced by another on first use


def test_copy_and_pickle_keep_a_subclass():
    m = _Sub("id1", "out", "sip:a@x", "sip:b@x", "hi", "text/plain", TS, "sending")
    assert type(copy.copy(m)) is _Sub
    assert type(pickle.loads(pickle.dumps(m))) is _Sub


def test_match_args():
    match _msg():
        case ChatMessage("id1", "out"):
            pass
        case _:
            pytest.fail("no positional match")


class _Sub(ChatMessage):
    pass

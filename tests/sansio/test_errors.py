"""The error tree is right side up: every error the library raises on purpose is a NotebookImError, and the
branches a caller handles differently are siblings, not subclasses of one another."""

from __future__ import annotations

import notebook_im as nim
from notebook_im.errors import NO_ANSWER


def test_everything_is_a_notebook_im_error():
    for cls in (
        nim.RemoteProtocolError,
        nim.RequestFailed,
        nim.TransactionTimeout,
        nim.TransportError,
        nim.MessageTooLarge,
        nim.ConferenceRequired,
        nim.InvalidState,
        nim.DeadlockError,
        nim.HistoryError,
        nim.errors.LocalProtocolError,
        nim.errors.ProtocolError,
    ):
        assert issubclass(cls, nim.NotebookImError), cls


def test_the_branches_are_siblings():
    assert not issubclass(nim.TransportError, nim.TransactionTimeout)
    assert not issubclass(nim.MessageTooLarge, nim.TransportError)
    assert issubclass(nim.MessageTooLarge, ValueError)  # a wrong argument, raised before sending
    assert issubclass(nim.RemoteProtocolError, nim.errors.ProtocolError)
    assert set(NO_ANSWER) == {nim.TransactionTimeout, nim.TransportError}
    assert (
        nim.TransactionTimeout("MESSAGE").status,
        nim.TransportError("MESSAGE").status,
        nim.MessageTooLarge("MESSAGE").status,
    ) == (408, 503, 513)

"""notebook_im: SIP instant messaging that is at home in Jupyter.

    import notebook_im as nim
    server = nim.Server().start().result()
    platform = nim.Platform()
    alice = await platform.endpoint("sip:alice@example.test", server=server.uri)

The programming model is UCCAPI's "Conducting IM Conversations" (platform -> endpoint -> session manager ->
IM session -> participants), made Pythonic: every call returns an awaitable `Operation`, events are
frozen dataclasses. This module imports neither pandas nor ipywidgets.
"""

from .api.emitter import EventStream, Subscription
from .api.endpoint import Endpoint
from .api.events import (
    ComposingChanged,
    EndpointState,
    EndpointStateChanged,
    Event,
    IncomingSession,
    MessageDelivered,
    MessageDeliveryNotified,
    MessageDisplayed,
    MessageFailed,
    MessageReceived,
    MessageSending,
    ParticipantAdded,
    ParticipantRemoved,
    ParticipantState,
    ParticipantStateChanged,
    SessionModeChanged,
    SessionState,
    SessionStateChanged,
    SessionTerminated,
)
from .api.manager import SessionManager
from .api.messages import ChatMessage
from .api.participant import Participant
from .api.platform import Platform
from .api.session import ImSession
from .errors import (
    ConferenceRequired,
    InvalidState,
    MessageTooLarge,
    NotebookImError,
    RemoteProtocolError,
    RequestFailed,
    TransactionTimeout,
    TransportError,
)
from .net.impairment import Impairment
from .net.memory import MemoryNetwork
from .record import Trace
from .record.budget import TraceBudget
from .record.budget import process_budget as trace_budget
from .record.recorder import TraceBudgetWarning
from .runtime import DeadlockError, Operation
from .sip.transaction import Timers

__version__ = "0.1.0"

# Names whose modules pull in heavy packages (pandas, ipywidgets), or that a client does not need (the embedded
# server, ~20 ms of imports): imported on first use, so that `import notebook_im` stays fast and light.
# "name": "module:attribute".
# the trace's analysis methods: the recorder (below the API) cannot import the analysis layer (above it), so the
# package that composes the layers plugs them in by name; each module is imported when first used (pandas then)
Trace.analysis.update(
    {
        "sip": "notebook_im.trace.frames:sip_frame",
        "messages": "notebook_im.trace.frames:messages_frame",
        "events": "notebook_im.trace.frames:events_frame",
        "drops": "notebook_im.trace.frames:drops_frame",
        "chat_messages": "notebook_im.trace.conversations:chat_messages",
        "dataset": "notebook_im.trace.dataset:write_dataset",
        "pcap": "notebook_im.trace.pcap:write_pcap",
        "ladder": "notebook_im.trace.ladder:Ladder.from_frame",
        "plots": "notebook_im.trace.plots:TracePlots",
    }
)

_LAZY: dict[str, str] = {
    "ConferenceSession": "notebook_im.api.conference:ConferenceSession",
    "HistoryError": "notebook_im.record.store:HistoryError",
    "HistoryInUse": "notebook_im.record.store:HistoryInUse",
    "Server": "notebook_im.server:Server",
    "FocusLimits": "notebook_im.server.conference:FocusLimits",
    "OfflineLimits": "notebook_im.server.offline:OfflineLimits",
    "UdpRelay": "notebook_im.net.relay:UdpRelay",
    "ChatPanel": "notebook_im.widgets.chat:ChatPanel",
    "LadderView": "notebook_im.widgets.ladder_view:LadderView",
    "read_pcap": "notebook_im.trace.pcap:read_pcap",
    "teaching": "notebook_im.teaching:",  # the tutorials' helpers: numbered flows, checked exercises, raw SIP peers
    "open_traces": "notebook_im.trace.query:open_traces",
    "write_dataset": "notebook_im.trace.dataset:write_dataset",
}


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'notebook_im' has no attribute {name!r}")
    import importlib

    module, _, attr = target.partition(":")
    value = importlib.import_module(module) if not attr else getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ChatMessage",
    "ComposingChanged",
    "ConferenceRequired",
    "ConferenceSession",
    "FocusLimits",
    "DeadlockError",
    "HistoryError",
    "HistoryInUse",
    "Endpoint",
    "EndpointState",
    "EndpointStateChanged",
    "Event",
    "EventStream",
    "Impairment",
    "ImSession",
    "MemoryNetwork",
    "IncomingSession",
    "InvalidState",
    "MessageDelivered",
    "MessageDeliveryNotified",
    "MessageDisplayed",
    "MessageFailed",
    "MessageTooLarge",
    "MessageReceived",
    "MessageSending",
    "NotebookImError",
    "OfflineLimits",
    "Operation",
    "Participant",
    "ParticipantAdded",
    "ParticipantRemoved",
    "ParticipantState",
    "ParticipantStateChanged",
    "Platform",
    "RemoteProtocolError",
    "RequestFailed",
    "Server",
    "SessionManager",
    "SessionModeChanged",
    "SessionState",
    "SessionStateChanged",
    "SessionTerminated",
    "Subscription",
    "Timers",
    "TraceBudget",
    "TraceBudgetWarning",
    "trace_budget",
    "Trace",
    "TransactionTimeout",
    "TransportError",
    "UdpRelay",
    "__version__",
]

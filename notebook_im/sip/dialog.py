"""SIP dialogs (RFC 3261 §12): identifiers, CSeq spaces, remote target and route set.

A Dialog is created from the INVITE and its 2xx (UAC side) or from the INVITE and the local tag (UAS
side). It builds in-dialog requests with the right Request-URI and Route headers (loose routing, with
the strict-routing fallback of §12.2.1.1) and checks the remote CSeq of in-dialog requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import LocalProtocolError
from .message import Request, Response, make_request
from .uri import Address, SipUri


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_address: Address  # our From in requests we send (without tag)
    remote_address: Address  # our To in requests we send (without tag)
    remote_target: SipUri
    route_set: list[Address] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int | None = None
    secure: bool = False

    @property
    def id(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def from_uac(cls, request: Request, response: Response) -> Dialog:
        """The dialog a 2xx (or tagged 1xx) to our INVITE creates (RFC 3261 §12.1.2)."""
        to = response.to
        if not to.tag:
            raise LocalProtocolError("a response without a To tag does not create a dialog")
        contacts = response.contacts
        if not contacts:
            raise LocalProtocolError("a dialog-creating response needs a Contact")
        from_ = request.from_
        return cls(
            call_id=request.call_id,
            local_tag=from_.tag or "",
            remote_tag=to.tag,
            local_address=Address(from_.uri, from_.display_name),
            remote_address=Address(to.uri, to.display_name),
            remote_target=contacts[0].uri,
            route_set=list(reversed(response.record_routes)),
            local_seq=request.cseq.number,
            secure=request.uri.scheme == "sips",
        )

    @classmethod
    def from_uas(cls, request: Request, local_tag: str) -> Dialog:
        """The dialog our 2xx to an INVITE creates (RFC 3261 §12.1.1)."""
        contacts = request.contacts
        if not contacts:
            raise LocalProtocolError("a dialog-creating request needs a Contact")
        from_, to = request.from_, request.to
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=from_.tag or "",
            local_address=Address(to.uri, to.display_name),
            remote_address=Address(from_.uri, from_.display_name),
            remote_target=contacts[0].uri,
            route_set=list(request.record_routes),
            remote_seq=request.cseq.number,
            secure=request.uri.scheme == "sips",
        )

    def matches(self, message: Request | Response) -> bool:
        return message.call_id == self.call_id

    def accept_remote_cseq(self, request: Request) -> bool:
        """Check and record the CSeq of an in-dialog request; False means answer 500 (§12.2.2).

        ACK and CANCEL reuse the INVITE's number and are not checked.
        """
        if request.method in ("ACK", "CANCEL"):
            return True
        seq = request.cseq.number
        if self.remote_seq is not None and seq <= self.remote_seq:
            return False
        self.remote_seq = seq
        return True

    def create_request(
        self,
        method: str,
        *,
        via: str,
        contact: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        cseq: int | None = None,
    ) -> Request:
        """An in-dialog request with a new CSeq (or `cseq` for ACK/CANCEL), Route set and Request-URI."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        uri = self.remote_target
        routes = list(self.route_set)
        if routes and "lr" not in routes[0].uri.params:
            # strict routing: the first route becomes the Request-URI, the remote target goes last
            uri = routes[0].uri
            routes = routes[1:] + [Address(self.remote_target)]
        wants_contact = contact and method in ("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER")
        return make_request(
            method,
            uri,
            via=via,
            from_=str(self.local_address.with_tag(self.local_tag)),
            to=str(self.remote_address.with_tag(self.remote_tag)),
            call_id=self.call_id,
            cseq=cseq,
            routes=[str(r) for r in routes],
            contact=contact if wants_contact else None,
            body=body,
            content_type=content_type,
        )

    def update_target(self, request_or_response: Request | Response) -> None:
        """A target refresh (re-INVITE, or its 2xx) replaces the remote target (§12.2)."""
        contacts = request_or_response.contacts
        if contacts:
            self.remote_target = contacts[0].uri

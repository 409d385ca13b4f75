"""IM semantics on top of notebook_im.sip: composing indications (RFC 3994), pager-mode and
session-mode message helpers (RFC 3428, OCS-style INVITE sessions). Sans-IO like sip/."""

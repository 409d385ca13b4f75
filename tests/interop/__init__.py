"""Interop tests: notebook_im against Kamailio, SIPp and sipsak on 127.0.0.1 (marker: interop)."""

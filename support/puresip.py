"""notebook_im's SIP core from its `.py` source, next to the compiled one in the same process.

When the core is compiled (setup.py, mypyc), `import notebook_im.sip.parser` loads the extension module. The
benchmark (bench/parsers.py: compiled against pure in the same interleaved rounds) and the test that both read
every corpus message alike (tests/unit/test_compiled.py) also need the pure modules at the same time: they are
loaded here as a shadow package, `_nim_pure_sip`, whose modules import each other relatively as they do in
notebook_im.sip, so nothing of the compiled build leaks in.
"""

from __future__ import annotations

from typing import Any

PACKAGE = "_nim_pure_sip"


def pure_sip_modules() -> dict[str, Any]:
    """{"errors", "uri", "headers", "message", "parser"} -> the module loaded from its .py file (loaded once)."""
    import notebook_im.sip as sip

    return sip.load_source_modules(PACKAGE)

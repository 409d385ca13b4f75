"""notebook_im's SIP core from its `.py` source, next to the compiled one in the same process.

When the core is compiled (setup.py, mypyc), `import notebook_im.sip.parser` loads the extension module. The
benchmark (bench/parsers.py: compiled against pure in the same interleaved rounds) and the test that both read
every corpus message alike (tests/unit/test_compiled.py) also need the pure modules at the same time: they are
loaded here as a shadow package, `_nim_pure_sip`, whose modules import each other relatively as they do in
notebook_im.sip, so nothing of the compiled build leaks in.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

PACKAGE = "_nim_pure_sip"


def pure_sip_modules() -> dict[str, Any]:
    """{"errors", "uri", "headers", "message", "parser"} -> the module loaded from its .py file (loaded once)."""
    import notebook_im.sip as sip

    names = ("errors", *sip.COMPILED_MODULES)
    if PACKAGE not in sys.modules:
        here = Path(sip.__file__).parent
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(here)]
        sys.modules[PACKAGE] = package
        for name in names:
            spec = importlib.util.spec_from_file_location(f"{PACKAGE}.{name}", here / f"{name}.py")
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load notebook_im/sip/{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
    return {name: sys.modules[f"{PACKAGE}.{name}"] for name in names}

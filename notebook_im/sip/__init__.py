"""Sans-IO SIP: bytes in, events and bytes out.

Nothing in this package opens a socket, touches asyncio or reads the clock: time is passed in by the
caller. That keeps every state machine testable with plain unit tests (the h11/h2 model).

Four modules (uri, headers, message, parser: the parse path of every packet) are compiled with mypyc when the
package is installed with a C compiler at hand (setup.py); the `.py` files are the one source and the fallback.
`COMPILED` says which ones run. `NOTEBOOK_IM_PURE=1` in the environment loads the `.py` modules even where the
compiled ones are installed: the test suite runs both ways with it, and a user who suspects the compiled core
can rule it out without reinstalling.
"""

import os as _os
import sys as _sys

COMPILED_MODULES = ("uri", "headers", "message", "parser")


def load_source_modules(package: str | None = None) -> dict[str, object]:
    """Import the compiled modules (and errors, which they import first) from their `.py` source: as this package's
    own when `package` is None (NOTEBOOK_IM_PURE=1, a stale or broken build), or under a shadow package of that
    name, next to the compiled ones (support/puresip.py: the benchmark and the test that compare the two).

    An extension module wins over a `.py` of the same name in a directory, so the source is loaded by path and
    put in sys.modules before anything imports the module by name. In dependency order: each module's relative
    imports then find their pure siblings already there. Returns name -> module."""
    import importlib.util
    import types

    here = _os.path.dirname(__file__)
    prefix = package or __name__
    if package is not None and package not in _sys.modules:
        shadow = types.ModuleType(package)
        shadow.__path__ = [here]
        _sys.modules[package] = shadow
    loaded: dict[str, object] = {}
    for name in ("errors", *COMPILED_MODULES):  # errors is plain Python either way; uri imports it first
        full = f"{prefix}.{name}"
        if full not in _sys.modules:
            spec = importlib.util.spec_from_file_location(full, _os.path.join(here, f"{name}.py"))
            if spec is None or spec.loader is None:  # pragma: no cover - the .py files ship with the package
                raise ImportError(f"cannot load {full} from source")
            module = importlib.util.module_from_spec(spec)
            _sys.modules[full] = module
            spec.loader.exec_module(module)
            if package is None:
                globals()[name] = module  # as an import would: notebook_im.sip.parser is the module that runs
        loaded[name] = _sys.modules[full]
    return loaded


def _fall_back(why: str) -> None:
    """Run the .py modules instead of a build that must not run, and say so (a RuntimeWarning)."""
    import warnings

    warnings.warn(
        f"notebook_im: {why}; running the .py files. Rebuild it with `pip install -e .` (or `make setup`), or set "
        "NOTEBOOK_IM_PURE=1 to silence this.",
        RuntimeWarning,
        stacklevel=3,
    )
    load_source_modules()


def _extensions_present() -> bool:
    """Whether any of the compiled modules is here as an extension module: any one of them (not only the parser)
    would be imported instead of its `.py` file."""
    from importlib.machinery import EXTENSION_SUFFIXES

    here = _os.path.dirname(__file__)
    return any(
        _os.path.exists(_os.path.join(here, f"{name}{suffix}"))
        for name in COMPILED_MODULES
        for suffix in EXTENSION_SUFFIXES
    )


def compiled_build_is_stale() -> bool:
    """True when a compiled build is installed but its sources have changed since (an editable install whose
    `.py` files were edited): the build would run the old code, so the `.py` files are loaded instead, with a
    warning that says how to rebuild. setup.py records the sha256 of the sources it compiled in `_build.py`;
    hashing them again costs ~0.2 ms of the import, only where a build exists."""
    try:
        from ._build import SOURCE_HASH
    except ImportError:  # no compiled build (or a pure-Python install): nothing can be stale
        return False
    import hashlib

    here = _os.path.dirname(__file__)
    if not _extensions_present():
        return False  # the record outlived its build: the .py files are what loads anyway
    h = hashlib.sha256()
    try:
        for name in COMPILED_MODULES:
            with open(_os.path.join(here, f"{name}.py"), "rb") as f:
                h.update(f.read())
    except OSError:  # sources not shipped: the build is all there is
        return False
    return h.hexdigest() != SOURCE_HASH


if _os.environ.get("NOTEBOOK_IM_PURE") == "1":
    load_source_modules()
elif compiled_build_is_stale():
    _fall_back("the compiled SIP core is older than its sources")
else:
    try:  # the build as installed: every module, so that a broken one is found here and not half way through
        from . import errors, headers, message, parser, uri  # noqa: F401 - imported for sys.modules
    except ImportError as _exc:  # a build that cannot load (a shared library deleted or corrupt): the .py files
        if not _extensions_present():
            raise  # the .py files themselves failed: nothing to fall back to
        for _name in COMPILED_MODULES:  # the ones that did load go too: never half compiled, half pure
            _sys.modules.pop(f"{__name__}.{_name}", None)
        _fall_back(f"the compiled SIP core cannot be loaded ({_exc})")

from .errors import LocalProtocolError, RemoteProtocolError, SipError  # noqa: E402 - after the pure-module switch above
from .message import Message, Request, Response  # noqa: E402 - after the pure-module switch above
from .parser import StreamFramer, parse_message  # noqa: E402 - after the pure-module switch above
from .uri import Address, SipUri, Via  # noqa: E402 - after the pure-module switch above

COMPILED: dict[str, bool] = {
    name: not _sys.modules[f"{__name__}.{name}"].__file__.endswith(".py") for name in COMPILED_MODULES
}  # module -> True when its mypyc build is the one loaded

__all__ = [
    "COMPILED",
    "Address",
    "LocalProtocolError",
    "Message",
    "RemoteProtocolError",
    "Request",
    "Response",
    "SipError",
    "SipUri",
    "StreamFramer",
    "Via",
    "parse_message",
]

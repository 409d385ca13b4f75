"""The compiled sans-IO core: `sip/uri.py`, `headers.py`, `message.py` and `parser.py` built with mypyc.

Everything else about the package is in pyproject.toml; this file exists only because extension modules need
code at build time. Why mypyc: the four modules are already fully type-annotated Python, so mypyc compiles the
same source to C (about 1.3x the parse rate, docs/performance.md) and the `.py` files stay the one source and the
fallback. Nothing here may fail an install:

- `NOTEBOOK_IM_PURE=1` at build time skips the compilation (a pure-Python install);
- no mypy, or mypyc cannot translate the modules: a warning, and a pure-Python install;
- no C compiler, or it fails: a warning, whatever was built is removed (a partial build would leave shims that
  cannot load their shared library), and a pure-Python install.

At run time `NOTEBOOK_IM_PURE=1` loads the `.py` modules even where the compiled ones are installed
(`notebook_im/sip/__init__.py`), which is how the test suite runs against both.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

COMPILED = [
    "notebook_im/sip/uri.py",
    "notebook_im/sip/headers.py",
    "notebook_im/sip/message.py",
    "notebook_im/sip/parser.py",
]


BUILD_RECORD = Path("notebook_im/sip/_build.py")


def source_hash() -> str:
    """sha256 over the compiled modules' source, in order: notebook_im/sip/__init__.py computes the same at import
    and loads the .py files when they no longer match (an edited source next to a stale build)."""
    h = hashlib.sha256()
    for path in COMPILED:
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def remove_compiled() -> None:
    """Remove a compiled build left in the source tree by an earlier editable install, and its record: in an
    editable install a stale extension module would be imported instead of the `.py` file next to it."""
    BUILD_RECORD.unlink(missing_ok=True)
    for path in COMPILED + ["notebook_im/sip/_compiled__mypyc.py"]:
        stem = Path(path).with_suffix("")
        for built in stem.parent.glob(f"{stem.name}.*.so"):
            built.unlink()


def fallback(why: str) -> None:
    """Say, loudly enough to be seen in pip's output, that the install is pure Python and why."""
    remove_compiled()
    message = f"notebook_im: installing the pure-Python SIP core ({why}); it works the same, parsing is slower"
    warnings.warn(message, stacklevel=2)
    print(f"WARNING: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext that turns any failure into the pure-Python fallback instead of a failed install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - a compiler missing or failing must never fail the install
            self._remove_outputs()
            self.extensions = []
            fallback(f"the C build failed: {exc}")

    def _remove_outputs(self) -> None:
        """Delete every extension this command built, so that no half of the compiled core is left to load."""
        for ext in self.extensions:
            for path in (Path(self.get_ext_fullpath(ext.name)), Path(self.get_ext_filename(ext.name))):
                if path.exists():
                    path.unlink()
        # build_py ran first and copied the build record: without the build it would only mislead
        (Path(self.build_lib) / BUILD_RECORD).unlink(missing_ok=True)


def extensions() -> list:
    """The mypyc extensions, or none (with the reason printed) when they cannot or should not be built."""
    if os.environ.get("NOTEBOOK_IM_PURE") == "1":
        fallback("NOTEBOOK_IM_PURE=1")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        fallback(f"mypyc is not available: {exc}")
        return []
    BUILD_RECORD.write_text(
        '"""Written by setup.py when it compiled the SIP core: the hash of the sources it compiled."""\n\n'
        f'SOURCE_HASH = "{source_hash()}"\n'
    )
    try:
        # the rest of the package is imported (the parent packages), not compiled: its typing is not checked here
        return mypycify(
            ["--follow-imports=silent", *COMPILED],
            opt_level="3",
            debug_level="0",
            group_name="notebook_im.sip._compiled",  # the shared library inside the package, not at the top level
        )
    except BaseException as exc:  # noqa: BLE001 - mypyc reports type errors with SystemExit
        fallback(f"mypyc could not compile the modules: {exc!r}")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})

"""The compiled SIP core (setup.py builds uri, headers, message and parser with mypyc) and its pure fallback.

`make test` runs the whole suite on what the install built (compiled where a C compiler is at hand, which
NOTEBOOK_IM_EXPECT_COMPILED=1 then demands), then the sans-IO, unit and hostile-input tests again with
NOTEBOOK_IM_PURE=1 on the .py modules. These tests check the switch itself, that both read every message of
the corpus alike (valid ones to the same fields and bytes, invalid ones to the same error), that an edited
source is never shadowed by a stale build, and that an install without a working compiler still succeeds.
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import notebook_im.sip as sip
from support.fuzzing import mutate

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"


def test_the_loaded_core_is_the_one_asked_for():
    loaded = {name: sys.modules[f"notebook_im.sip.{name}"].__file__ for name in sip.COMPILED_MODULES}
    if os.environ.get("NOTEBOOK_IM_PURE") == "1":
        assert sip.COMPILED == dict.fromkeys(sip.COMPILED_MODULES, False)
        assert all(path.endswith(".py") for path in loaded.values()), loaded
    elif os.environ.get("NOTEBOOK_IM_EXPECT_COMPILED") == "1":  # make test, where `cc` exists
        assert sip.COMPILED == dict.fromkeys(sip.COMPILED_MODULES, True), (
            f"the install did not build the compiled core: {loaded} (`pip install -v -e .` shows setup.py's warning that says why)"
        )
    # either way the flags say what is loaded
    assert sip.COMPILED == {name: not path.endswith(".py") for name, path in loaded.items()}


def _reading(parse, data: bytes):
    """What a parser makes of `data`: the fields a stack reads and the bytes it would send, or the error."""
    try:
        m = parse(data)
        start = m.method if hasattr(m, "method") else m.status
        fields = [start, m.call_id, m.body, list(m.headers.items()), bytes(m)]
        for read in ("cseq", "from_", "to", "top_via"):  # parsed on first access: errors may come from here
            try:
                fields.append(str(getattr(m, read)))
            except Exception as exc:  # noqa: BLE001 - the two must fail alike (classes differ: two modules)
                fields.append((type(exc).__name__, str(exc)))
        return ("ok", fields)
    except Exception as exc:  # noqa: BLE001 - see above
        return ("error", type(exc).__name__, str(exc), getattr(exc, "status", None))


def test_compiled_and_pure_read_every_message_alike():
    if not any(sip.COMPILED.values()):
        pytest.skip("the core is pure Python here: there is no second implementation to compare")
    pure = __import__("support.puresip", fromlist=["pure_sip_modules"]).pure_sip_modules()
    compiled_parse, pure_parse = sip.parse_message, pure["parser"].parse_message
    assert pure["parser"].__file__.endswith(".py") and compiled_parse is not pure_parse
    messages = [p.read_bytes() for p in sorted(CORPUS.glob("*/*.sip"))]
    assert len(messages) > 60
    rng = random.Random(20261205)
    messages += [mutate(data, rng) for data in messages for _ in range(20)]  # odd bytes too: errors must agree
    for data in messages:
        assert _reading(compiled_parse, data) == _reading(pure_parse, data), data[:200]


def _copy_core(tmp: Path, *, build_hash: str, extension: bool, module: str = "parser") -> Path:
    """A copy of notebook_im/sip as a top-level package `sip` with a `_build.py` record (and a fake extension of
    `module`)."""
    pkg = tmp / "sip"
    shutil.copytree(Path(sip.__file__).parent, pkg, ignore=shutil.ignore_patterns("*.so", "_build.py", "__pycache__"))
    (pkg / "_build.py").write_text(f'SOURCE_HASH = "{build_hash}"\n')
    if extension:  # an "extension" that cannot load: importing it would fail loudly
        (pkg / f"{module}{__import__('importlib.machinery').machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"stale")
    return tmp


def _source_hash() -> str:
    """The record setup.py writes for the sources as they are (a build that is not stale)."""
    here = Path(sip.__file__).parent
    return hashlib.sha256(b"".join((here / f"{name}.py").read_bytes() for name in sip.COMPILED_MODULES)).hexdigest()


def _import_copy(tmp: Path) -> subprocess.CompletedProcess:
    code = "import warnings, sip; warnings.simplefilter('always'); print(sorted(sip.COMPILED.items()))"
    env = {k: v for k, v in os.environ.items() if k != "NOTEBOOK_IM_PURE"}
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code], cwd=tmp, env=env, capture_output=True, text=True, timeout=60
    )


def test_a_stale_build_is_never_run(tmp_path):
    """An editable install whose .py files were edited after the build: the .py files run, with a warning."""
    out = _import_copy(_copy_core(tmp_path, build_hash="0" * 64, extension=True))
    assert out.returncode == 0, out.stderr
    assert "compiled SIP core is older than its sources" in out.stderr
    assert "('parser', False)" in out.stdout and "True" not in out.stdout


@pytest.mark.parametrize("module", ["uri", "headers", "message"])
def test_a_stale_build_is_never_run_whichever_module_is_left(tmp_path, module):
    """The parser's extension deleted and another left: that one is stale too (it was imported silently)."""
    out = _import_copy(_copy_core(tmp_path, build_hash="0" * 64, extension=True, module=module))
    assert out.returncode == 0, out.stderr
    assert "compiled SIP core is older than its sources" in out.stderr
    assert "True" not in out.stdout


def test_a_build_that_cannot_load_runs_the_py_files(tmp_path):
    """A build that is current but cannot load (a shared library deleted or corrupt): a warning and the .py
    files, all four of them, not a failed import."""
    tmp = _copy_core(tmp_path, build_hash=_source_hash(), extension=True, module="parser")
    message = sorted((CORPUS / "valid").glob("*.sip"))[0]
    code = (
        "import warnings, sip; warnings.simplefilter('always'); print(sorted(sip.COMPILED.items()));"
        "print(sip.parser.__file__.endswith('.py'), sip.parse_message is sip.parser.parse_message);"
        f"print(sip.parse_message(open({str(message)!r}, 'rb').read()).call_id)"
    )
    env = {k: v for k, v in os.environ.items() if k != "NOTEBOOK_IM_PURE"}
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", code], cwd=tmp, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "compiled SIP core cannot be loaded" in out.stderr and "older than" not in out.stderr
    assert out.stdout.splitlines() == [
        str(sorted(dict.fromkeys(sip.COMPILED_MODULES, False).items())),
        "True True",
        sip.parse_message(message.read_bytes()).call_id,
    ]


def _values(modules):
    uri, message, parser = modules["uri"], modules["message"], modules["parser"]
    data = (CORPUS / "valid").glob("*.sip")
    return [
        uri.SipUri.parse("sip:bob@example.com:5070;transport=tcp;lr"),
        uri.Address.parse('"Bob" <sip:bob@example.com>;tag=9'),
        uri.Via.parse("SIP/2.0/UDP host:5060;branch=z9hG4bK1;rport"),
        message.CSeq(7, "MESSAGE"),
        *(parser.parse_message(p.read_bytes()) for p in sorted(data)[:3]),
    ]


def test_copies_are_alike_compiled_or_pure():
    """copy.copy and copy.deepcopy of the core's values work, and alike, compiled or not (mypyc's __setstate__
    could not fill a frozen dataclass, nor rebuild a Message without its constructor's arguments)."""
    loaded = {name: sys.modules[f"notebook_im.sip.{name}"] for name in sip.COMPILED_MODULES}
    pure = __import__("support.puresip", fromlist=["pure_sip_modules"]).pure_sip_modules()
    for modules in (loaded, pure):
        for value in _values(modules):
            for copied in (copy.copy(value), copy.deepcopy(value)):
                assert type(copied) is type(value)
                if isinstance(value, modules["message"].Message):
                    assert bytes(copied) == bytes(value) and copied.headers is not value.headers
                    copied.headers.set("Subject", "changed")  # the copy's headers are its own
                    assert value.headers.get("Subject") != "changed"
                else:
                    assert copied == value and str(copied) == str(value)
        cseq = modules["message"].CSeq(7, "MESSAGE")
        assert pickle.loads(pickle.dumps(cseq)) == cseq
    shown = [[str(copy.deepcopy(v)) for v in _values(m)] for m in (loaded, pure)]
    assert shown[0] == shown[1]


def test_a_build_record_without_a_build_is_quiet(tmp_path):
    out = _import_copy(_copy_core(tmp_path, build_hash="0" * 64, extension=False))
    assert out.returncode == 0, out.stderr
    assert "older than its sources" not in out.stderr
    assert "True" not in out.stdout


@pytest.mark.slow
def test_an_install_without_a_compiler_is_pure_python_not_a_failure(tmp_path):
    """The constraint on the build: a missing or failing C compiler gives a pure-Python install and a warning."""
    pytest.importorskip("mypyc", reason="the test extra installs mypy (mypyc), as the build does")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "notebook_im", src / "notebook_im", ignore=shutil.ignore_patterns("*.so", "_build.py", "__pycache__")
    )
    env = dict(os.environ, CC="false", LDSHARED="false")  # a compiler that fails every call
    env.pop("NOTEBOOK_IM_PURE", None)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), "."],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "installing the pure-Python SIP core (the C build failed" in out.stdout + out.stderr
    (wheel,) = (tmp_path / "dist").glob("notebook_im-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "notebook_im/sip/parser.py" in names
    assert not [n for n in names if n.endswith(".so") or n.endswith("_build.py")], names

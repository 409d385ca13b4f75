"""The layer rules of docs/architecture.md, checked on the source: every import between notebook_im's modules (at
the top, inside functions, under TYPE_CHECKING) goes to the same layer or one below, and no two files import
each other, directly or around a circle. A new import that breaks either fails here, naming the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "notebook_im"

# bottom first: a module may import modules of its own layer and of the layers below it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("sip", ("sip",)),  # sans-IO SIP: nothing of ours
    ("base", ("errors", "runtime")),  # the error hierarchy, the loop thread
    ("im, net, record", ("im", "net", "record")),  # IM documents and machines; transports; the recorder
    ("core", ("core",)),  # the SIP stack and the user agent, by composition
    ("api and server", ("api", "server")),  # UCCAPI's model; the registrar/proxy/focus
    ("trace", ("trace",)),  # analysis: frames, pcap, datasets, ladders (pandas)
    ("widgets", ("widgets",)),
    ("top", ("", "cli", "teaching", "testing")),  # the package itself composes the layers
]
FORBIDDEN_PAIRS = [("api", "server"), ("server", "api")]  # same layer, but neither knows the other


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported notebook_im module, line) for every import statement in the file, wherever it stands."""
    out = []
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package[: len(package) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                target = f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                if target in known and target != name:
                    out.append((target, node.lineno))
    return out


def layer_of(name: str) -> tuple[int, str]:
    """(layer index, the prefix that matched) for a module: the most specific prefix wins."""
    rel = name.removeprefix("notebook_im").removeprefix(".")
    best: tuple[int, int, str] | None = None
    for index, (_label, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            ok = rel == prefix or (prefix and rel.startswith(prefix + "."))
            weight = len(prefix)
            if ok and (best is None or weight > best[1]):
                best = (index, weight, prefix)
    assert best is not None, f"{name} is in no layer of {__file__}: add it to LAYERS"
    return best[0], best[2]


def top_package(name: str) -> str:
    rel = name.removeprefix("notebook_im").removeprefix(".")
    return rel.split(".")[0]


def test_every_import_goes_down_or_stays_in_its_layer() -> None:
    known = modules()
    wrong = []
    for name, path in sorted(known.items()):
        mine, _ = layer_of(name)
        for target, line in imports(name, path, known):
            theirs, _ = layer_of(target)
            rel = path.relative_to(ROOT.parent)
            if theirs > mine:
                wrong.append(f"{rel}:{line} imports {target} ({LAYERS[theirs][0]}), above {LAYERS[mine][0]}")
            elif (top_package(name), top_package(target)) in FORBIDDEN_PAIRS:
                wrong.append(
                    f"{rel}:{line} imports {target}: {top_package(name)} and {top_package(target)} do not know each other"
                )
    assert not wrong, "imports against the layers (docs/architecture.md):\n" + "\n".join(wrong)


def test_no_import_circles_between_files() -> None:
    known = modules()
    edges = {
        name: {t for t, _ in imports(name, path, known) if not known[t].name == "__init__.py"}
        for name, path in known.items()
    }
    # Tarjan's strongly connected components: any component of more than one file is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not circles, f"files that import each other: {circles}"


def test_the_checks_catch_what_they_claim() -> None:
    """The walker sees imports inside functions and under TYPE_CHECKING, and the layer table places them."""
    known = modules()
    found = {t for t, _ in imports("notebook_im.record.recorder", known["notebook_im.record.recorder"], known)}
    assert "notebook_im.record.extract" in found
    found = {t for t, _ in imports("notebook_im.api.platform", known["notebook_im.api.platform"], known)}
    assert "notebook_im.record.store" in found, "an import inside a function counts"
    assert layer_of("notebook_im.trace.frames")[0] > layer_of("notebook_im.api.session")[0]
    assert layer_of("notebook_im.record.store")[0] < layer_of("notebook_im.core.stack")[0]
    assert layer_of("notebook_im")[0] == len(LAYERS) - 1

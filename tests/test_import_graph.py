"""Which way imports run (docs/architecture.md, "Imports"), checked on the source itself.

Read with `ast`, so nothing is imported: an import inside a function counts for the layer
rules (it runs as soon as that function does), while `if TYPE_CHECKING:` imports never run
and do not count. A cycle is looked for among modules (module-level imports: what runs when a
module loads) and among packages (`app.services`, `workers.engine`, ...: every import).

An exception that must stay goes in an allow-list below, with the reason next to it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "workers", "datacontract")

# (importer, imported) module pairs allowed to break a layer rule, and why.
ALLOWED_IMPORTS: dict[tuple[str, str], str] = {
    # The LSTM is a model definition registered with transformers' Auto classes, not training
    # code: the inference server needs it to load a trained LSTM (imported inside the loader).
    ("workers.inference.registry", "workers.engine.lstm"): "model class to load LSTM weights",
    ("workers.inference.embeddings", "workers.engine.lstm"): "model class to load LSTM weights",
    # The GGUF export (paths in, a file out; no training code): a safetensors causal LM that
    # loads on a CPU is exported once for llama.cpp (imported inside the loader).
    ("workers.inference.registry", "workers.engine.gguf"): "GGUF export for llama.cpp on load",
}
# Module cycles (module-level imports) that remain, as sorted tuples of their modules.
ALLOWED_MODULE_CYCLES: dict[tuple[str, ...], str] = {}
# Package cycles (any import) that remain.
ALLOWED_PACKAGE_CYCLES: dict[tuple[str, ...], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str  # the dotted name as written, resolved against relative imports
    module_level: bool


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _imports_of(name: str, path: Path) -> Iterator[Import]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(nodes: list[ast.stmt], module_level: bool) -> Iterator[Import]:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                yield from visit(node.orelse, module_level)
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(name, alias.name, module_level)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    yield Import(name, full if full in modules() else base, module_level)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from visit(node.body, False)
            elif isinstance(node, ast.ClassDef):
                yield from visit(node.body, module_level)
            else:
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        stmts = [c for c in children if isinstance(c, ast.stmt)]
                        stmts += [s for c in children if hasattr(c, "body") for s in c.body]
                        yield from visit(stmts, module_level)

    yield from visit(ast.parse(path.read_text(), str(path)).body, True)


@cache
def all_imports() -> tuple[Import, ...]:
    return tuple(imp for name, path in modules().items() for imp in _imports_of(name, path))


def _internal(dotted: str) -> str | None:
    """The module of ours a dotted name lies in (`app.db.models.Run` -> the module)."""
    while dotted and dotted not in modules():
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def _package(module: str) -> str:
    """`app.services.runs.service` -> `app.services`; a top-level module counts as its root."""
    parts = module.split(".")
    if len(parts) >= 2 and (ROOT / parts[0] / parts[1]).is_dir():
        return ".".join(parts[:2])
    return parts[0]


def _cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _edges(*, module_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in all_imports():
        if module_level_only and not imp.module_level:
            continue
        target = _internal(imp.imported)
        if target is not None and target != imp.importer:
            graph.setdefault(imp.importer, set()).add(target)
    return graph


def _violations(importer_prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for imp in all_imports():
        if not (imp.importer == importer_prefix or imp.importer.startswith(importer_prefix + ".")):
            continue
        target = _internal(imp.imported) or imp.imported
        if (imp.importer, target) in ALLOWED_IMPORTS:
            continue
        if any(target == f or target.startswith(f + ".") for f in forbidden):
            bad.append(f"{imp.importer} imports {imp.imported}")
    return sorted(set(bad))


def test_the_checker_sees_imports_inside_functions_and_skips_type_checking_ones() -> None:
    sources = {(i.importer, i.imported, i.module_level) for i in all_imports()}
    # app/core/middleware.py imports error_handlers inside a method.
    assert ("app.core.middleware", "app.core.error_handlers", False) in sources
    # generation.py names LoadedModel for type hints only.
    assert not any(
        i.importer == "workers.inference.generation"
        and i.imported.startswith("workers.inference.registry")
        for i in all_imports()
    )
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]


def test_no_module_imports_itself_back_through_a_loop_of_module_level_imports() -> None:
    cycles = [c for c in _cycles(_edges(module_level_only=True)) if c not in ALLOWED_MODULE_CYCLES]
    assert cycles == [], "import cycles between modules: " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_no_package_depends_on_another_that_depends_on_it() -> None:
    graph: dict[str, set[str]] = {}
    for importer, targets in _edges(module_level_only=False).items():
        for target in targets:
            if (importer, target) in ALLOWED_IMPORTS:
                continue
            a, b = _package(importer), _package(target)
            if a != b:
                graph.setdefault(a, set()).add(b)
    cycles = [c for c in _cycles(graph) if c not in ALLOWED_PACKAGE_CYCLES]
    assert cycles == [], "import cycles between packages: " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_app_core_imports_nothing_of_the_layers_above_it() -> None:
    above = ("app.web", "app.api", "app.openai", "app.realtime", "app.services", "app.main")
    assert _violations("app.core", above) == []


def test_the_data_contract_imports_nothing_of_the_product() -> None:
    """app, the workers and the engine all read it, so it may read none of them."""
    assert _violations("datacontract", ("app", "workers")) == []


def test_the_web_app_never_imports_the_workers() -> None:
    assert _violations("app", ("workers",)) == []


def test_the_training_engine_imports_nothing_of_the_app_or_celery() -> None:
    assert _violations("workers.engine", ("app", "celery", "kombu", "workers.tasks")) == []


def test_the_inference_server_imports_neither_the_training_engine_nor_the_web_routes() -> None:
    forbidden = ("workers.engine", "app.web", "app.api", "app.openai", "app.realtime", "celery")
    assert _violations("workers.inference", forbidden) == []


def test_a_browser_still_gets_the_html_error_page(client: TestClient) -> None:
    """error_handlers takes the page renderer from the app factory instead of importing web."""
    page = client.get("/no-such-page", headers={"Accept": "text/html"})
    assert page.status_code == 404
    assert "text/html" in page.headers["content-type"]
    assert "no such page or endpoint: /no-such-page" in page.text and "<h1>Not found" in page.text
    api = client.get("/api/v1/no-such-thing", headers={"Accept": "text/html"})
    assert api.status_code == 404 and api.json()["detail"].startswith("no such page")

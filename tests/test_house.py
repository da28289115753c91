"""The shape of the package (issue 15, "one house"): no import circles and no module-level
mutable state.

Every module under src/lookalike is parsed with ``ast``; an import anywhere in a file counts
(top level, inside functions, under ``if TYPE_CHECKING``), as in the house check
(``/work/shared/checks/house``).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lookalike"
PACKAGE = "lookalike"

#: The plugin registries (kind name -> class) are ``lookalike.registry.Registry`` instances: a
#: table of classes, process-wide on purpose, and not an empty container at module level.
REGISTRIES: frozenset[str] = frozenset()
#: Issue 15: module-level caches in modules other work is rewriting (copies: duplicates.py,
#: words: text_search.py); drop each from this list when it moves onto an instance.
PENDING: frozenset[str] = frozenset()  # module caches not yet moved onto an owner: none


@functools.cache
def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        found[".".join(p for p in parts if p != "__init__")] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module a dotted name lives in (``a.b.func`` -> ``a.b``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(node: ast.ImportFrom, module: str, known: dict[str, Path]) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if known[module].name != "__init__.py":
        base = base[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in the file)."""
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, module, known)
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if name == PACKAGE or not name.startswith(PACKAGE + "."):
                    continue
                target = _resolve(name, known)
                if target and target not in (module, PACKAGE):
                    edges[module].add(target)
    return edges


def circles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_the_graph_sees_imports_inside_functions_and_type_checking() -> None:
    edges = import_graph()
    assert "lookalike.serve.routes_personal" in edges["lookalike.serve.app"]  # top level
    assert "lookalike.watch" in edges["lookalike.cli"]  # inside a command
    assert "lookalike.serve.service" in edges["lookalike.serve.deps"]  # under TYPE_CHECKING
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        frozenset({"a", "b", "c"})]


def test_no_import_circles() -> None:
    """Issue 15: the circles cli <-> commands, serve.app <-> routers, evaluate <-> its modules
    and project.py <-> recommend/* <-> training_run.py are gone; none may come back."""
    assert [sorted(component) for component in circles(import_graph())] == []


def test_the_one_way_rooms() -> None:
    """Routers and command modules never import what assembles them."""
    edges = import_graph()
    for module, targets in edges.items():
        if module.startswith("lookalike.commands."):
            assert "lookalike.cli" not in targets, module
        if module.startswith("lookalike.serve.routes_") or module == "lookalike.serve.deps":
            assert "lookalike.serve.app" not in targets, module
    for module in ("lookalike.recommend.personal", "lookalike.recommend.regions",
                   "lookalike.recommend.box_regression", "lookalike.training_run"):
        assert "lookalike.project" not in edges[module], module  # project.py calls them
    assert "lookalike.recommend.regions" not in edges["lookalike.recommend.windows"]
    assert edges["lookalike.caches"] == set()  # a leaf any room may use
    assert edges["lookalike.threads"] == set()


# The house check's pattern for a module-level cache: a name bound to an empty container.
_CACHE_LINE = re.compile(r"^_?[A-Z][A-Z0-9_]*\s*(:[^=]+)?=\s*(\{\}|dict\(\)|\[\]|set\(\)|"
                         r"OrderedDict\(\)|collections\.OrderedDict\(\)|weakref\.)")
_CONTAINERS = {"dict", "list", "set", "OrderedDict", "defaultdict", "deque",
               "WeakValueDictionary", "WeakKeyDictionary", "WeakSet"}


def _empty_container(value: ast.expr | None) -> bool:
    """``{}``, ``[]``, ``set()``, ``dict()``, ``OrderedDict()``, ``weakref.WeakValueDictionary()``
    and friends: containers made to be filled at run time."""
    if isinstance(value, ast.Dict):
        return not value.keys
    if isinstance(value, (ast.List, ast.Set)):
        return not value.elts
    if isinstance(value, ast.Call):
        func = value.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        return name in _CONTAINERS and not value.args
    return False


def mutable_state() -> set[str]:
    """``file:name`` of every module-level or class-level name bound to an empty container
    (any case; class-level ``ClassVar`` settings excepted), plus every line the house check's
    pattern matches."""
    found = set()
    for path in sorted(SRC.rglob("*.py")):
        where = path.relative_to(SRC.parent).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        scopes = [tree.body] + [n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        for body in scopes:
            for node in body:
                if isinstance(node, ast.Assign):
                    targets, value = node.targets, node.value
                elif isinstance(node, ast.AnnAssign):
                    if "ClassVar" in ast.unparse(node.annotation):
                        continue  # a declared per-subclass setting, read only
                    targets, value = [node.target], node.value
                else:
                    continue
                if _empty_container(value):
                    found |= {f"{where}:{ast.unparse(t)}" for t in targets}
        for line in path.read_text(encoding="utf-8").splitlines():
            if _CACHE_LINE.match(line):
                name = re.split(r"[:=\s]", line, maxsplit=1)[0]
                found.add(f"{where}:{name}")
    return found


def test_the_state_finder_sees_caches() -> None:
    assert _empty_container(ast.parse("x = {}").body[0].value)
    assert _empty_container(ast.parse("x = collections.OrderedDict()").body[0].value)
    assert not _empty_container(ast.parse("x = {'a': 1}").body[0].value)
    assert not _empty_container(ast.parse("x = ('a', 'b')").body[0].value)
    assert not _empty_container(ast.parse("x = Registry('embedder', {})").body[0].value)


def test_one_registry_helper() -> None:
    """Both plug-in registries are the one ``lookalike.registry.Registry``."""
    from lookalike.index import base as index_base
    from lookalike.models import base as models_base
    from lookalike.registry import Registry

    assert isinstance(models_base._REGISTRY, Registry)
    assert isinstance(index_base._REGISTRY, Registry)
    assert "pixels" in models_base.available() and "exact" in index_base.available()


def test_no_module_level_mutable_state() -> None:
    """Caches live on instances (``Project.caches``); only the plugin registries (instances of
    ``lookalike.registry.Registry``) are process-wide."""
    assert mutable_state() - REGISTRIES - PENDING == set()


# ---- one public API (issue 15) ------------------------------------------------------------------
#: What the CLI and the service may import from lookalike besides their own rooms: the public
#: API module, the package itself (``__version__``), the errors, and three public modules that
#: are callers of the API themselves (the folder watcher, the demo, the process's thread setting).
PUBLIC_API = frozenset({"lookalike", "lookalike.api", "lookalike.errors", "lookalike.watch",
                        "lookalike.demo", "lookalike.threads"})
FRONT_ROOMS = ("lookalike.cli", "lookalike.commands", "lookalike.serve")


def _front(module: str) -> bool:
    return any(module == room or module.startswith(room + ".") for room in FRONT_ROOMS)


def test_the_cli_and_the_service_import_only_the_public_api() -> None:
    """``lookalike.cli``, ``lookalike.commands.*`` and ``lookalike.serve.*`` reach the engine only
    through :mod:`lookalike.api` (Project and plain functions), never ``recommend.*``,
    ``evaluate.*``, ``models.*`` or ``index.*`` directly."""
    edges = import_graph()
    wrong = {f"{module} -> {target}" for module, targets in edges.items() if _front(module)
             for target in targets if not _front(target) and target not in PUBLIC_API}
    assert wrong == set()
    assert "lookalike.api" in edges["lookalike.cli"] | edges["lookalike.commands.common"]


def _private_uses(source: str, name: str) -> list[str]:
    """``x._name`` where ``x`` is not ``self`` / ``cls`` (dunders aside)."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_cli_and_the_service_use_no_private_member() -> None:
    """No ``project._index``, ``project._recommendations``, ``service._read``, ... from the CLI
    or the service: what they need is public."""
    known = modules()
    found = [use for module, path in known.items() if _front(module)
             for use in _private_uses(path.read_text(encoding="utf-8"), path.name)]
    assert found == []
    sample = "project._index(None)\nself._lock\nx.__class__\nservice._read(f)\n"
    assert _private_uses(sample, "x.py") == ["x.py:1: project._index", "x.py:4: service._read"]


def test_every_verb_is_a_project_method() -> None:
    """The verbs of docs/architecture.md's table are methods of ``Project`` (the one facade)."""
    from lookalike.api import Project

    verbs = ("ingest", "index", "similar", "search", "answer", "recommend", "look", "clusters",
             "duplicates", "find_duplicates", "train", "evaluate", "text_index",
             "category_search", "evaluate_recs", "searcher", "recommendations")
    assert [v for v in verbs if not callable(getattr(Project, v, None))] == []


# ---- layers: no module imports one above it ------------------------------------------------------
#: Rooms from the bottom up; a module may import its own rank or lower. Siblings share a rank.
LAYERS = (
    ("lookalike.errors", "lookalike.storage", "lookalike.layout", "lookalike.caches",
     "lookalike.threads", "lookalike.registry",
     "lookalike.evaluate.metrics"),  # pure metric functions (import only errors): models use them
    ("lookalike.catalogue",),
    ("lookalike.models", "lookalike.index"),
    ("lookalike.evaluate",),
    ("lookalike.searcher", "lookalike.recommend", "lookalike.training_run"),
    ("lookalike.verbs", "lookalike.project"),
    ("lookalike.api", "lookalike.watch", "lookalike.demo", "lookalike"),
    ("lookalike.commands", "lookalike.serve"),
    ("lookalike.cli", "lookalike.__main__"),
)
#: Upward imports allowed as known detours: none are left (issue 15); keep it empty.
KNOWN_UPWARD: frozenset[tuple[str, str]] = frozenset()


def layer_of(module: str) -> int:
    """The rank of the most specific room a module belongs to."""
    best, rank = "", None
    for n, rooms in enumerate(LAYERS):
        for room in rooms:
            if (module == room or module.startswith(room + ".")) and len(room) > len(best):
                best, rank = room, n
    assert rank is not None, f"{module} is in no layer of LAYERS"
    return rank


def upward_imports(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(module, target) for module, targets in edges.items() for target in targets
            if layer_of(target) > layer_of(module)}


def test_no_upward_imports() -> None:
    """docs/architecture.md's direction, checked from the code's own imports: outer rooms import
    inner ones, never the reverse (bar the detours listed in KNOWN_UPWARD)."""
    assert upward_imports(import_graph()) - KNOWN_UPWARD == set()
    assert upward_imports({"lookalike.catalogue.x": {"lookalike.project"},
                           "lookalike.project": {"lookalike.catalogue.x"}}) == {
        ("lookalike.catalogue.x", "lookalike.project")}

"""The package's layout rules, checked on its imports (read with ``ast``, imports inside
functions included):

- ``read/`` never imports ``write/``, and ``write/`` never imports ``read/``;
- ``format/`` and the shared modules (config, errors, storage, hub, registry, and the
  ``rows/`` package) import neither wing;
- ``compat.py`` imports the read wing and ``rows/``, never ``write/``;
- the library never imports ``cli/`` (only ``wdstream/__main__.py`` does);
- there are no import cycles between modules (a package's ``__init__`` re-exporting its own
  modules excepted);
- imports of the package's own modules inside functions are kept for start-up time and
  optional extras: at most ``MAX_INNER`` of them, each listed in ``ALLOWED_INNER``;
- ``format/`` holds the shard contract, not jobs: it imports no ``threading``,
  ``concurrent`` or ``tqdm``;
- no module imports another module's ``_private`` names, and none reaches for the private
  helpers that have a public counterpart in ``storage`` (``._is_local``,
  ``._is_object_store``) or in fsspec (``._strip_protocol``, ``._run_coros_in_chunks``).
"""

from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, "wdstream")
SHARED = {"config", "errors", "storage", "uploads", "hub", "registry", "rows"}
#: (importing module, imported module) pairs allowed inside a function, and why
ALLOWED_INNER = {
    ("wdstream.cli.demo", "wdstream.demo.run"): "start-up time: torch, datasets, moto",
    ("wdstream.write.executors", "wdstream.write.executors.ray"): "optional extra: ray",
    ("wdstream.read.lookup", "wdstream.read.decode"): "start-up time: torch, for decode=True",
}
MAX_INNER = 15
#: libraries that run jobs, which ``format/`` (the shard contract) must not import
JOB_LIBRARIES = ("threading", "concurrent", "tqdm")
#: private attributes with a public counterpart: storage.is_local, storage.is_object_store,
#: storage.fs_path (fsspec.core.strip_protocol), storage.read_many (asyncio + a semaphore)
PRIVATE_ATTRIBUTES = ("_is_local", "_is_object_store", "_strip_protocol", "_run_coros_in_chunks")


def _modules() -> dict[str, str]:
    mods = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                mods[rel.removesuffix(".__init__")] = path
    return mods


MODULES = _modules()


def _resolve(module: str, node: ast.AST) -> list[str]:
    """The package modules an import statement loads (``from . import x`` included)."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            is_pkg = MODULES[module].endswith("__init__.py")
            base = base[: len(base) - node.level + (1 if is_pkg else 0)]
            name = ".".join(base + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        names = [name] + [f"{name}.{a.name}" for a in node.names]
    else:
        names = [a.name for a in node.names]
    return [n for n in names if n in MODULES]


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """``(edges, inner)``: module -> modules it imports; and the in-function imports."""
    edges: dict[str, set[str]] = {}
    inner: list[tuple[str, str]] = []
    for module, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = [t for t in _resolve(module, node) if t != module]
                edges.setdefault(module, set()).update(targets)
                if id(node) not in top:
                    inner += [(module, t) for t in targets]
    return edges, inner


EDGES, INNER = _imports()


def _trees():
    for module, path in sorted(MODULES.items()):
        with open(path, encoding="utf-8") as f:
            yield module, ast.parse(f.read())


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_layout_is_what_the_rules_talk_about():
    for wing in ("read", "write", "format", "cli", "demo"):
        assert f"wdstream.{wing}" in MODULES, wing
    assert {"wdstream.compat", "wdstream.registry", "wdstream.rows.template"} <= set(MODULES)
    assert sum(len(v) for v in EDGES.values()) > 100  # the walker really sees the imports


@pytest.mark.parametrize(
    "a, b", [("read", "write"), ("write", "read"), ("format", "read"), ("format", "write")]
)
def test_wings_do_not_import_each_other(a, b):
    bad = sorted(
        f"{m} -> {t}" for m, ts in EDGES.items() if _wing(m) == a for t in ts if _wing(t) == b
    )
    assert bad == []


def test_shared_modules_import_no_wing():
    bad = sorted(
        f"{m} -> {t}"
        for m, ts in EDGES.items()
        if _top(m) in SHARED
        for t in ts
        if _wing(t) in ("read", "write", "cli", "demo")
    )
    assert bad == []


def test_compat_imports_no_write_wing():
    bad = sorted(
        t for t in EDGES["wdstream.compat"] if _wing(t) == "write" or t == "wdstream.write"
    )
    assert bad == []


def test_the_library_never_imports_the_cli():
    bad = sorted(
        f"{m} -> {t}"
        for m, ts in EDGES.items()
        if _wing(m) != "cli" and m != "wdstream.__main__"
        for t in ts
        if _wing(t) == "cli" or t == "wdstream.cli"
    )
    assert bad == []


def test_no_import_cycles():
    graph = {
        m: {t for t in ts if not MODULES[t].endswith("__init__.py")}
        for m, ts in EDGES.items()
        if not MODULES[m].endswith("__init__.py")
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_imports_inside_functions_are_few_and_justified():
    unexplained = sorted(f"{m} -> {t}" for m, t in INNER if (m, t) not in ALLOWED_INNER)
    assert unexplained == []
    assert len(INNER) <= MAX_INNER


def test_format_imports_no_job_machinery():
    bad = []
    for module, tree in _trees():
        if _wing(module) != "format" and module != "wdstream.format":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            bad += [f"{module} imports {n}" for n in names if n.split(".")[0] in JOB_LIBRARIES]
    assert bad == []


def test_no_module_imports_another_modules_private_names():
    bad = []
    for module, tree in _trees():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            targets = _resolve(module, node)
            if not targets or targets[0] == module:
                continue
            bad += [
                f"{module}: from {targets[0]} import {a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
    assert bad == []


def test_no_module_uses_private_helpers_that_have_public_counterparts():
    found = set()
    for module, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
                found.add(f"{module}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom):
                found |= {
                    f"{module}: .{a.name}" for a in node.names if a.name in PRIVATE_ATTRIBUTES
                }
    assert sorted(found) == []


def _stage_functions() -> set[str]:
    tree = ast.parse(open(MODULES["wdstream.read.stages"]).read())
    return {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")
    }


def test_only_the_pipeline_chains_read_stages():
    """A module that uses two or more of read/stages.py's public functions chains stages:
    only read/pipeline.py may (one place to change when a chain changes)."""
    stages = _stage_functions()
    chainers = []
    for module, tree in _trees():
        if module == "wdstream.read.stages":
            continue
        used = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _resolve(module, node)[:1] == [
                "wdstream.read.stages"
            ]:
                used |= {a.name for a in node.names} & stages
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "stages"
                and node.attr in stages
            ):
                used.add(node.attr)
        if len(used) >= 2:
            chainers.append(module)
    assert chainers == ["wdstream.read.pipeline"]


def _defined(module: str) -> set[str]:
    names = set()
    for node in ast.parse(open(MODULES[module]).read()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            if "__all__" in names and isinstance(node.value, (ast.List, ast.Tuple)):
                names |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_every_wdstream_name_in_docstrings_and_docs_exists():
    """``wdstream.x.y`` in the package's text, docs/ and the README names a module, or a
    name a module defines: stale names after a move fail here."""
    docs = os.path.join(os.path.dirname(ROOT), "docs")
    texts = [open(p).read() for p in MODULES.values()]
    texts += [open(os.path.join(docs, f)).read() for f in os.listdir(docs) if f.endswith(".md")]
    texts.append(open(os.path.join(os.path.dirname(ROOT), "README.md")).read())
    stale = set()
    for text in texts:
        for ref in re.findall(r"\bwdstream(?:\.[a-z_][a-z0-9_]*)+", text):
            parts = ref.split(".")
            known = next((i for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in MODULES), 0)
            if known == 0 or (
                known < len(parts) and parts[known] not in _defined(".".join(parts[:known]))
            ):
                stale.add(ref)
    assert sorted(stale) == []

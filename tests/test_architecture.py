"""The house rules, read off the source: floors without loops, one home per concern.

Every import between the project's modules counts - module level *and* inside functions - since an
import hidden in a function is still an arrow of the graph. The floors, lowest first:

    base        typed config, registries, events, devices, atomic files
    engine      data, models, teacher/, augmentation/, losses/, mappings, weighting, dynamic, trainer, checkpoints
    pipeline    distil one student (distill) and what it ships to a trial
    search      Ray Tune + Optuna over the pipeline space
    meta        meta-features, meta-dataset, meta-model, portfolio
    interfaces  CLI, the main job (auto), the REST service

A module may import its own floor or a lower one, never a higher one; no module imports itself back
through others (no cycles); no module reaches another's private names; the library never imports the
REST service, which is an optional extra (``pip install autodistill[service]``).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("autodistill", "service")

FLOORS: dict[str, tuple[str, ...]] = {
    "base": ("autodistill", "autodistill.config", "autodistill.registry", "autodistill.progress",
             "autodistill.device", "autodistill.resources", "autodistill.files"),
    "engine": ("autodistill.data", "autodistill.models", "autodistill.metrics", "autodistill.batching",
               "autodistill.evaluation", "autodistill.pooling", "autodistill.trainer", "autodistill.callbacks",
               "autodistill.checkpoints",
               "autodistill.teacher", "autodistill.augmentation", "autodistill.losses", "autodistill.mappings",
               "autodistill.weighting", "autodistill.dynamic", "autodistill.objective", "autodistill.augmented_pool",
               "autodistill.records"),
    "pipeline": ("autodistill.distill", "autodistill.prepare", "autodistill.shipping"),
    "search": ("autodistill.search",),
    "meta": ("autodistill.meta",),
    "interfaces": ("autodistill.cli", "autodistill.auto", "service"),
}
ORDER = list(FLOORS)
SERVICE_ONLY_DEPENDENCIES = ("fastapi", "uvicorn", "sqlalchemy", "psycopg", "python-multipart")


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = module_files()


def floor_of(module: str) -> str:
    """The floor whose longest prefix names the module (``autodistill.cli.meta`` is an interface)."""
    best, floor = "", None
    for name, prefixes in FLOORS.items():
        for prefix in prefixes:
            # the library's root ("autodistill") names its __init__ only; "service" names the whole package
            covers = module == prefix or (prefix != "autodistill" and module.startswith(prefix + "."))
            if covers and len(prefix) > len(best):
                best, floor = prefix, name
    if floor is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS (and to the README's layout table)")
    return floor


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement, wherever it sits."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((_absolute(module, node), [alias.name for alias in node.names], node.lineno))
    return found


def project_edges() -> dict[str, dict[str, int]]:
    """module -> {project module it imports: line}; ``from pkg import mod`` counts as importing pkg.mod."""
    edges: dict[str, dict[str, int]] = defaultdict(dict)
    for module in MODULES:
        for target, names, line in imports_of(module):
            for candidate in [target, *(f"{target}.{name}" for name in names)]:
                if candidate in MODULES and candidate != module:
                    edges[module].setdefault(candidate, line)
    return edges


def test_every_module_sits_on_a_floor():
    for module in MODULES:
        floor_of(module)


def test_no_arrow_points_to_a_higher_floor():
    upward = [f"{MODULES[src].relative_to(ROOT)}:{line} {src} ({floor_of(src)}) imports {dst} ({floor_of(dst)})"
              for src, targets in project_edges().items() for dst, line in targets.items()
              if ORDER.index(floor_of(dst)) > ORDER.index(floor_of(src))]
    assert not upward, "imports that point up:\n" + "\n".join(sorted(upward))


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted({*edges, *(dst for targets in edges.values() for dst in targets)}):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles():
    edges = project_edges()
    # a package's __init__ re-exporting its modules is not a loop of concerns
    edges = {src: {dst: line for dst, line in targets.items() if not src == dst.rsplit(".", 1)[0]}
             for src, targets in edges.items()}
    assert not _cycles(edges), f"import cycles: {_cycles(edges)}"


def test_cycle_finder_finds_a_loop():
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_across_modules():
    reached = []
    for module in MODULES:
        tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
        aliases: dict[str, str] = {}        # local name -> imported module (project or not)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(module, node)
                for alias in node.names:
                    if _private(alias.name):
                        reached.append(f"{module}:{node.lineno} from {target} import {alias.name}")
                    aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases):
                reached.append(f"{module}:{node.lineno} {node.value.id}.{node.attr}")
    assert not reached, "private names reached across modules:\n" + "\n".join(sorted(reached))


def test_the_library_never_imports_the_service():
    offenders = [f"{src} imports {dst}" for src, targets in project_edges().items() if src.startswith("autodistill")
                 for dst in targets if dst.split(".")[0] == "service"]
    web = [f"{module}:{line} imports {target}" for module in MODULES if module.startswith("autodistill")
           for target, _, line in imports_of(module)
           if target.split(".")[0] in ("fastapi", "uvicorn", "sqlalchemy", "psycopg", "starlette")]
    assert not offenders + web, "\n".join(offenders + web)


def test_the_service_is_an_optional_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(requirements: list[str]) -> set[str]:
        return {req.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for req in requirements}

    assert not names(project["dependencies"]) & set(SERVICE_ONLY_DEPENDENCIES)
    assert set(SERVICE_ONLY_DEPENDENCIES) <= names(project["optional-dependencies"]["service"])
    assert "service" in project["entry-points"]["autodistill.commands"]


@pytest.mark.parametrize("argv", [["--help"], ["distill", "--help"]])
def test_the_cli_runs_without_the_service(argv):
    """With the service's packages absent, the library's CLI still works (the service's commands are gone)."""
    code = ("import sys\n"
            "for name in ('service', 'fastapi', 'sqlalchemy', 'psycopg', 'uvicorn'):\n"
            "    sys.modules[name] = None\n"
            "from autodistill.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()


def test_the_readme_layout_lists_every_module_once():
    """README's layout table has one line per module of the tree, and nothing the tree lacks."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = text[text.index("## Layout"):]
    layout = layout[: layout.index("\n## ", 1)]
    listed = [line.split("`")[1] for line in layout.splitlines() if line.startswith("| `") and line.split("`")[1].endswith(".py")]
    tree = sorted(str(path.relative_to(ROOT)) for path in MODULES.values())
    assert len(listed) == len(set(listed)), "listed twice: " + str(sorted({p for p in listed if listed.count(p) > 1}))
    assert sorted(listed) == tree, (f"in the tree, not in README: {sorted(set(tree) - set(listed))}; "
                                    f"in README, not in the tree: {sorted(set(listed) - set(tree))}")

"""The library never imports the layers above it: the REST service joins the CLI through the
`autodistill.commands` entry-point group."""
import ast
from pathlib import Path

from autodistill.cli import build_parser

LIBRARY = Path(__file__).resolve().parents[1] / "autodistill"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_library_imports_no_service_module():
    upward = {f"{p.relative_to(LIBRARY.parent)}: {m}" for p in LIBRARY.rglob("*.py")
              for m in imported_modules(p) if m == "service" or m.startswith("service.")}
    assert not upward


def test_service_commands_join_the_cli_through_the_entry_point():
    args = build_parser().parse_args(["serve", "--port", "8001"])
    assert args.port == 8001 and callable(args.func)

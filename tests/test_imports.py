"""The import graph of vitstem's modules has no loop, counting the imports made inside functions too (a loop blurs
which module owns what, even when it is harmless at import time)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vitstem"


def _graph() -> dict[str, set[str]]:
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vitstem"):
                edges |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith("vitstem")}
        graph[name] = edges - {name, "vitstem"}  # the package's __init__ (its import hooks) is not an owner
    return graph


def test_no_module_imports_itself_through_others():
    graph, loops = _graph(), []

    def visit(node, path):
        for nxt in graph.get(node, ()):
            if nxt == path[0]:
                loops.append(" -> ".join([*path, nxt]))
            elif nxt not in path and len(path) < 8:
                visit(nxt, [*path, nxt])

    for start in graph:
        visit(start, [start])
    assert not loops, loops

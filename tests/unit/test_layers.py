"""The package's import graph (every import, at module level or inside a function): no cycle, and
arrows only down the data path: API -> validate -> plan -> prepare -> kernels -> jit -> runtime."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mategemm"
# What each low layer may import from the package (besides itself).
ALLOWED_BELOW = {
    "mategemm.runtime": ("mategemm.runtime", "mategemm.jit", "mategemm.env", "mategemm.log", "mategemm.types"),
    "mategemm.jit": ("mategemm.jit", "mategemm.env", "mategemm.log", "mategemm.version"),
    "mategemm.kernels": ("mategemm.kernels", "mategemm.jit", "mategemm.runtime", "mategemm.types"),
    "mategemm.heuristics": ("mategemm.heuristics", "mategemm.runtime.device", "mategemm.types", "mategemm.env",
                            "mategemm.log"),
    "mategemm.plan": ("mategemm.heuristics", "mategemm.jit", "mategemm.kernels", "mategemm.runtime.device",
                      "mategemm.types", "mategemm.env"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if "kernels_src" not in p.parts}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mategemm"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name.startswith("mategemm"))
        graph[name] = {d for d in deps if d in modules and d not in (name, "mategemm")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_arrows_point_down_the_data_path():
    wrong = []
    for module, deps in import_graph().items():
        for layer, allowed in ALLOWED_BELOW.items():
            if module == layer or module.startswith(layer + "."):
                wrong += [f"{module} -> {d}" for d in deps if not d.startswith(allowed)]
    assert wrong == []


def test_benchmark_code_lives_outside_the_package():
    """Peers and timing are the benchmarks' (tools/benchkit), and the package imports none of it."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n.split(".")[0] in ("benchkit", "tools") for n in names), path
    assert not list(PACKAGE.rglob("peers.py")) and not list(PACKAGE.rglob("timing.py"))


def test_benchkit_has_no_import_cycle():
    kit = PACKAGE.parent / "tools" / "benchkit"
    graph = {}
    for path in kit.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module] if node.module else [a.name for a in node.names])
        graph[path.stem] = deps
    assert {"registry", "common", "timing", "peers"} <= set(graph)
    assert cycles(graph) == []

"""The package's layering (../shared/DESIGN.md), checked on the source: no import cycle at module
level, passes never import the runtime, and the deploy path loads no compiler module."""
import ast
import subprocess
import sys
from pathlib import Path

import shadowattn_tvm

ROOT = Path(shadowattn_tvm.__file__).parent


def _modules() -> dict:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = ("shadowattn_tvm",) + path.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _targets(mods: dict, module: str, node) -> list:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = module if mods[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package
    for _ in range(max(node.level - 1, 0)):
        base = base.rsplit(".", 1)[0]
    target = (base + ("." + node.module if node.module else "")) if node.level else node.module
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
    return subs if len(subs) == len(node.names) else [target, *subs]  # `from . import sub` needs only sub


def _imports(mods: dict, module: str, module_level: bool) -> set:
    tree = ast.parse(mods[module].read_text())
    nodes = ast.walk(tree) if not module_level else (
        n for top in tree.body for n in (ast.walk(top) if isinstance(top, (ast.If, ast.Try)) else [top]))
    return {t for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))
            for t in _targets(mods, module, n) if t in mods and t != module}


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_at_module_level():
    mods = _modules()
    assert _cycles({m: _imports(mods, m, module_level=True) for m in mods}) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_passes_never_import_the_runtime():
    mods = _modules()
    for module in (m for m in mods if m.startswith("shadowattn_tvm.passes")):
        assert not {t for t in _imports(mods, module, module_level=False) if t.startswith("shadowattn_tvm.runtime")}, module


def test_deploy_path_imports_no_compiler_module():
    code = ("import sys, shadowattn_tvm.runtime.deploy, shadowattn_tvm.runtime.deploy_generation, "
            "shadowattn_tvm.cli.deploy, shadowattn_tvm.emulators.npu_service; "
            "print('\\n'.join(m for m in sys.modules if m.startswith('shadowattn_tvm')))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    compiler = ("passes", "ops", "tuning", "frontend", "calibrate", "evaluation", "testing", "builder.models",
                "builder.options", "builder.build", "builder.reference", "npu.", "targets.hexagon", "targets.adreno",
                "targets.cpu", "demo", "generation")
    assert {"shadowattn_tvm.runtime.deploy", "shadowattn_tvm.runtime.generation", "shadowattn_tvm.weights"} <= loaded
    assert not {m for m in loaded if any(m.startswith(f"shadowattn_tvm.{c}") for c in compiler)}

"""The house's rules, counted from the code: every import of simgan/ and pipeline/ (those inside
functions too) is an edge; the registry's imports by name are edges to every shipped domain's
`domain` and `config` modules. No cycle; no edge up the layers (core < the domain interface and
registry < a domain < pipeline); no domain importing another; and a project import inside a
function says why it is there (an optional extra or a heavy library loaded lazily)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

SHIPPED = ("calorimeter", "airshower", "neuron")


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("simgan", "pipeline"):
        for p in (REPO / top).rglob("*.py"):
            parts = p.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = p
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """The project module an import names (`from a.b import c`: a.b.c if it is a module, else a.b)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(mod: str, path: Path):
    """(target module, line, inside a function, the import block's lines) for every project import."""
    src = path.read_text()
    lines = src.splitlines()
    tree = ast.parse(src)
    in_function = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(fn))
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        block = lines[node.lineno - 1:node.end_lineno]
        k = node.lineno - 2
        while k >= 0 and lines[k].strip().startswith(("import ", "from ", "#")):
            block.append(lines[k])
            k -= 1
        for n in names:
            t = _target(n)
            if t and t != mod:
                yield t, node.lineno, id(node) in in_function, block


def layer(mod: str) -> int:
    if mod.startswith("pipeline"):
        return 3
    parts = mod.split(".")
    if parts[:2] == ["simgan", "domains"]:
        # the interface and the registered model's code (it finds its domain by name, as the registry)
        return 1 if len(parts) == 2 or parts[2] in ("base", "pyfunc") else 2
    return 0


def _domain_of(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[2] if layer(mod) == 2 else None


def graph() -> dict[str, set[str]]:
    g = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for t, *_ in _imports(mod, path):
            g[mod].add(t)
    for d in SHIPPED:  # the registry imports each domain by name
        g["simgan.domains"] |= {f"simgan.domains.{d}.domain", f"simgan.domains.{d}.config"}
    return g


def test_the_import_graph_has_no_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(g[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_no_import_runs_up_the_layers_and_no_domain_imports_another():
    bad = []
    for mod, targets in graph().items():
        for t in targets:
            if mod == "simgan.domains" and layer(t) == 2:
                continue  # the registry's imports by name
            if layer(t) > layer(mod):
                bad.append(f"{mod} (layer {layer(mod)}) -> {t} (layer {layer(t)})")
            elif layer(mod) == layer(t) == 2 and _domain_of(mod) != _domain_of(t):
                bad.append(f"{mod} -> {t}: another domain")
            elif layer(mod) == 2 and t == "simgan.domains":
                bad.append(f"{mod} -> the registry (a domain uses simgan.domains.base)")
    assert not bad, "\n".join(sorted(bad))


def test_a_project_import_inside_a_function_says_why():
    bare = [f"{MODULES[mod].relative_to(REPO)}:{line} ({t})"
            for mod, path in MODULES.items() for t, line, inside, block in _imports(mod, path)
            if inside and not any("#" in b for b in block)]
    assert not bare, "project imports inside functions without a comment saying why:\n" + "\n".join(bare)


@pytest.mark.parametrize("mod", ["simgan.checkpoint", "simgan.train.trainer", "simgan.registry"])
def test_the_core_loads_without_any_domain(mod):
    """Importing a core module loads no domain package (a neuron generate no longer passes
    through the calorimeter's readers)."""
    import subprocess
    import sys
    code = (f"import sys, {mod}; bad = [m for m in sys.modules if m.startswith('simgan.domains')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr

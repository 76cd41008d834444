"""The project's import graph, derived from the code: no circle, and layers point one way
(forgetting_cli -> flows, forgetting_stack -> tasks -> forgetting). Imports inside functions count too: a lazy
import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"forgetting": 0, "tasks": 1, "flows": 2, "forgetting_stack": 2, "forgetting_cli": 3}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for p in (REPO / pkg).rglob("*.py"):
            parts = list(p.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def graph() -> dict[str, set[str]]:
    mods = _modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    out = {}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        deps = set()
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Import):
                deps |= {d for a in n.names if (d := known(a.name))}
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - n.level + 1]
                    base = ".".join(parts + ([n.module] if n.module else []))
                deps |= {d for a in n.names if (d := known(f"{base}.{a.name}") or known(base))}
        out[m] = deps - {m}
    # the method registry imports its packages by name (forgetting.methods.BUILTIN)
    from forgetting.methods import BUILTIN

    out["forgetting.methods"] |= {f"forgetting.methods.{b}" for b in BUILTIN}
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert cycles(graph()) == []


def upward(g: dict[str, set[str]]) -> list[str]:
    return [f"{m} -> {d}" for m, ds in g.items() for d in sorted(ds)
            if LAYERS[d.split(".")[0]] > LAYERS[m.split(".")[0]]]


def test_layers_point_one_way():
    assert upward(graph()) == []


def test_the_library_imports_no_orchestration():
    heavy = ("prefect", "mlflow", "dvc")
    bad = []
    for p in (REPO / "forgetting").rglob("*.py"):
        for n in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in n.names] if isinstance(n, ast.Import) else
                     [n.module or ""] if isinstance(n, ast.ImportFrom) and not n.level else [])
            bad += [f"{p.relative_to(REPO)}: {x}" for x in names if x.split(".")[0] in heavy]
    assert bad == []


def test_every_import_of_the_project_resolves():
    """``from tasks import team`` after tasks/team.py was split would only fail when that line
    runs (inside a function, on a team stack): every name imported from the project's own
    modules is a module or a name defined there."""
    mods = _modules()
    bad = []
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for n in ast.walk(ast.parse(p.read_text())):
            if not isinstance(n, ast.ImportFrom):
                continue
            base = n.module or ""
            if n.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - n.level + 1]
                base = ".".join(parts + ([n.module] if n.module else []))
            if base.split(".")[0] not in LAYERS:
                continue
            if base not in mods:
                bad.append(f"{m}: no module {base}")
                continue
            defined = _defined(mods[base])
            bad += [f"{m}: {base}.{a.name}" for a in n.names
                    if a.name != "*" and f"{base}.{a.name}" not in mods and a.name not in defined]
    assert bad == []


def _defined(path: Path) -> set[str]:
    names = set()
    for n in ast.parse(path.read_text()).body:
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(n.name)
        elif isinstance(n, ast.Assign):
            for t in n.targets:
                elts = t.elts if isinstance(t, ast.Tuple) else [t]
                names |= {e.id for e in elts if isinstance(e, ast.Name)}
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            names.add(n.target.id)
        elif isinstance(n, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return names


def test_the_checker_sees_a_circle_and_an_upward_import():
    g = {"tasks.a": {"tasks.b"}, "tasks.b": {"tasks.a", "flows.c"}, "flows.c": set()}
    assert cycles(g) == [["tasks.a", "tasks.b"]]
    assert upward(g) == ["tasks.b -> flows.c"]

"""How the product packages import each other, read from the source (its syntax) and checked in a fresh process:

- the layers: ``db`` imports no engine, app or torch; the engine (``rm_engine``) no app, command line or worker,
  and never Streamlit; the worker and the command line sit above the engine; the app imports no command line;
- no import circle, counting imports inside functions too;
- an import inside a function only where it keeps torch out of a process that does not need it: the imported
  module loads torch (or transformers) when imported, the importing one does not (torch takes seconds to import,
  and most commands, the Dashboard and the worker's start never touch it);
- the command line builds all its commands without importing torch.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "cli", "db", "rm_engine", "worker")
HEAVY = ("torch", "transformers", "peft", "accelerate")
#: What each package may import of the others (besides itself).
ALLOWED = {
    "db": set(),
    "rm_engine": {"db"},
    "worker": {"db", "rm_engine"},
    "cli": {"db", "rm_engine", "worker"},
    "app": {"db", "rm_engine"},
}
#: The one engine module that reaches up: ``python -m rm_engine`` runs the command line.
LAYER_EXCEPTIONS = {"rm_engine.__main__": {"cli"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            if "migrations" not in path.parts:
                out[_module_name(path)] = path
    return out


def _resolve(name: str) -> str | None:
    """The product module ``name`` refers to (a module, or the module holding an imported attribute)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in _modules():
            return ".".join(parts)
        parts.pop()
    return None


@cache
def _imports(module: str) -> tuple[frozenset[str], tuple[tuple[str, int], ...], frozenset[str]]:
    """``(product modules imported at module level, (product module, line) imported inside functions,
    third-party top-level packages imported at module level)``; imports under ``if TYPE_CHECKING`` do not run."""
    tree = ast.parse(_modules()[module].read_text(encoding="utf-8"))
    top: set[str] = set()
    late: list[tuple[str, int]] = []
    third: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                else:
                    base = child.module or ""
                    subs = [f"{base}.{a.name}" for a in child.names]
                    # ``from package import submodule`` imports the submodule; the package is already initialising
                    names = subs if all(n in _modules() for n in subs) else [*subs, base]
                for name in names:
                    target = _resolve(name) if name.split(".")[0] in PACKAGES else None
                    if target is not None and target != module:
                        (late.append((target, child.lineno)) if in_function else top.add(target))
                    elif target is None and not in_function:
                        third.add(name.split(".")[0])
            visit(child, inner)

    visit(tree, False)
    return frozenset(top), tuple(late), frozenset(third)


@cache
def _loads_torch(module: str, seen: frozenset[str] = frozenset()) -> bool:
    """Whether importing ``module`` imports torch (or transformers, peft, accelerate), directly or through the
    product modules it imports at module level."""
    top, _, third = _imports(module)
    if third & set(HEAVY):
        return True
    return any(_loads_torch(m, seen | {module}) for m in top - seen - {module})


def test_layers() -> None:
    wrong = []
    for module in _modules():
        pkg = module.split(".")[0]
        top, late, third = _imports(module)
        allowed = ALLOWED[pkg] | LAYER_EXCEPTIONS.get(module, set()) | {pkg}
        for target in top | {m for m, _ in late}:
            if target.split(".")[0] not in allowed:
                wrong.append(f"{module} imports {target}")
        if pkg in ("db", "rm_engine", "worker", "cli") and "streamlit" in third:
            wrong.append(f"{module} imports streamlit")
        if pkg == "db" and third & set(HEAVY):
            wrong.append(f"{module} imports {sorted(third & set(HEAVY))}")
    assert not wrong, wrong


def test_no_import_circle() -> None:
    graph = {m: _imports(m)[0] | {t for t, _ in _imports(m)[1]} for m in _modules()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    circles: list[list[str]] = []

    def walk(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                circles.append(path[path.index(t):] + [t])
            elif t not in state:
                walk(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)
    assert not circles, circles


def test_late_imports_only_keep_torch_out() -> None:
    wrong = []
    for module, path in _modules().items():
        for target, line in sorted(set(_imports(module)[1])):
            if not (_loads_torch(target) and not _loads_torch(module)):
                wrong.append(f"{path.relative_to(REPO)}:{line}: {module} imports {target} inside a function "
                             f"(it loads torch: {_loads_torch(target)}; the importer does: {_loads_torch(module)})")
    assert not wrong, "\n".join(wrong)


def test_the_rules_see_what_they_check() -> None:
    """The static reading finds the known cases, so an empty list of offences means something."""
    assert _loads_torch("rm_engine.training") and not _loads_torch("cli")
    assert not _loads_torch("db.session") and not _loads_torch("app.dashboard_data")
    assert any(t == "rm_engine.training" for t, _ in _imports("worker.job_run")[1])
    assert "db.models" in _imports("db.jobs")[0]


def test_the_command_line_starts_without_torch() -> None:
    code = ("import sys, cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout

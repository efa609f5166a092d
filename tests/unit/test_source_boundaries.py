"""Rules read from the source tree (its syntax, not its behaviour): the job queue has one door, ``db/jobs.py``
(and the ``db/`` modules beside it), and the settings are read from the environment only where a program starts."""
from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: The packages and scripts checked (tests build their own fixtures and may do anything).
CHECKED = ("app", "cli", "db", "rm_engine", "worker", "bench")
#: The ORM classes of the queue's tables.
QUEUE_MODELS = {"Job", "JobLog"}
QUEUE_TABLES = {"jobs", "job_logs"}
_SQL_ON_QUEUE = re.compile(r"\b(from|into|update|join|table)\s+\"?(jobs|job_logs)\b", re.IGNORECASE)
#: Where a program starts: the only places that may read the settings from the environment.
ENTRY_POINTS = ("cli/", "bench/", "app/resources.py", "worker/loop.py", "db/migrations/env.py")


def _sources(*tops: str) -> Iterator[tuple[str, ast.Module]]:
    for top in tops:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            yield rel, ast.parse(path.read_text(encoding="utf-8"), filename=rel)


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _in_type_expression(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether ``node`` sits in an annotation or in the parameters of a generic type (``Callable[[Job], ...]``)."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.arg) and parent.annotation is node:
            return True
        if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)) and parent.returns is node:
            return True
        if isinstance(parent, ast.AnnAssign) and parent.annotation is node:
            return True
        if isinstance(parent, ast.Subscript) and parent.slice is node:
            return True
        if not isinstance(parent, (ast.Subscript, ast.Tuple, ast.List, ast.BinOp, ast.Attribute)):
            return False
        node = parent
    return False


def queue_statements(rel: str, tree: ast.Module) -> list[str]:
    """Places in one module that build or run a statement on the queue's tables: a use of ``Job``/``JobLog`` other
    than as a type (``select(Job)``, ``Job.status``, ``JobLog(...)``, ``s.get(Job, id)``), SQL text naming the
    tables, or ``table("jobs")``."""
    names = set()
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "db.models":
            names |= {a.asname or a.name for a in node.names if a.name in QUEUE_MODELS}
        elif isinstance(node, ast.ImportFrom) and node.module == "db" and any(a.name == "models" for a in node.names):
            modules |= {a.asname or a.name for a in node.names if a.name == "models"}
        elif isinstance(node, ast.Import):
            modules |= {a.asname for a in node.names if a.name == "db.models" and a.asname}
    parents = _parents(tree)
    found = []
    for node in ast.walk(tree):
        hit = None
        if isinstance(node, ast.Name) and node.id in names and isinstance(node.ctx, ast.Load):
            hit = node.id
        elif (isinstance(node, ast.Attribute) and node.attr in QUEUE_MODELS and isinstance(node.value, ast.Name)
              and node.value.id in modules):
            hit = f"{node.value.id}.{node.attr}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            arg = node.args[0].value
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if isinstance(arg, str) and (_SQL_ON_QUEUE.search(arg) or (func.lower() == "table" and arg in QUEUE_TABLES)):
                hit = f"{func}({arg[:40]!r})"
        if hit and not (isinstance(node, ast.Name) and _in_type_expression(node, parents)):
            found.append(f"{rel}:{node.lineno}: {hit}")
    return found


def test_only_db_runs_statements_on_the_job_queue() -> None:
    found = [hit for rel, tree in _sources(*CHECKED) if not rel.startswith("db/") for hit in queue_statements(rel, tree)]
    assert not found, "statements on the jobs tables outside db/ (add a function to db/jobs.py):\n" + "\n".join(found)


@pytest.mark.parametrize("code, hits", [
    ("from db.models import Job\nfrom sqlalchemy import select\nselect(Job.id)", ["x.py:3: Job"]),
    ("from db.models import JobLog as L\ns.add(L(job_id=1, line='x'))", ["x.py:2: L"]),
    ("from db import models\ns.get(models.Job, 3)", ["x.py:2: models.Job"]),
    ("from sqlalchemy import text\ns.execute(text('UPDATE jobs SET status = 1'))", ["x.py:2: text('UPDATE jobs SET status = 1')"]),
    ("import sqlalchemy as sa\nsa.table('job_logs')", ["x.py:2: table('job_logs')"]),
    # types are fine: a function may take or return a job it got from db/jobs.py
    ("from db.models import Job\nfrom collections.abc import Callable\ndef f(job: Job) -> Job | None: ...\n"
     "H = Callable[[Job], dict]\nx: list[Job] = []", []),
    ("class Job: ...\nJob()", []),  # a class of the same name that is not the table's
    ("print('claims jobs from the queue')", []),
])
def test_the_queue_rule_tells_statements_from_types(code: str, hits: list[str]) -> None:
    assert queue_statements("x.py", ast.parse(code)) == hits


def settings_reads(rel: str, tree: ast.Module) -> list[str]:
    """Calls of ``Settings.from_env`` in one module."""
    return [f"{rel}:{node.lineno}" for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_env"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "Settings"]


def test_settings_are_read_only_where_a_program_starts() -> None:
    """Library functions take ``settings`` as a parameter: one settings object, read by the entry point (a command,
    the app's resources, the worker's main, a bench script) and passed down."""
    reads = [hit for rel, tree in _sources(*CHECKED) for hit in settings_reads(rel, tree)]
    outside = [hit for hit in reads if not hit.startswith(ENTRY_POINTS)]
    assert not outside, "Settings.from_env() outside the entry points (take settings as a parameter):\n" + "\n".join(outside)
    assert any(hit.startswith("app/resources.py") for hit in reads) and any(hit.startswith("cli/") for hit in reads)

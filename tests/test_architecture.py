"""Which app of the project may import which: one direction, held by an AST scan.

Every module of every project app is parsed (not imported), and every import in it is an edge,
the ones inside functions included: a lazy import is still a dependency, only a hidden one.
``ALLOWED`` lists, per app, the other project apps it may import; an app without a row is not
checked here yet. ``LAZY_EXCEPTIONS`` lists the imports of another app made inside a function
that README ("Architecture") justifies; every other cross-app import is at module level.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_APPS = {"portal", "audit", "accounts", "keys", "usage", "gateway", "docs", "playground"}

# app -> the project apps it may import (directly, at module level or inside a function).
ALLOWED = {
    "audit": set(),  # the security log: everyone records into it, it knows nobody
    "keys": {"audit"},  # never accounts: the user is settings.AUTH_USER_MODEL
    "accounts": {"audit", "keys"},  # account creation makes the default key; closing disables
    "usage": {"audit", "accounts", "keys"},
}

# (module path, imported module) pairs allowed inside a function, each explained in README.
LAZY_EXCEPTIONS: set[tuple[str, str]] = set()


def _imports(path: Path):
    """(imported module, line, inside a function?) for every absolute import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child.lineno, in_function
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.module, child.lineno, in_function
            yield from walk(child, nested)

    yield from walk(tree, False)


def _project_modules():
    for app in sorted(PROJECT_APPS):
        for path in sorted((ROOT / app).rglob("*.py")):
            yield app, path


def _edges():
    for app, path in _project_modules():
        for module, line, in_function in _imports(path):
            target = module.split(".")[0]
            if target in PROJECT_APPS and target != app:
                yield app, path.relative_to(ROOT).as_posix(), line, module, target, in_function


def test_every_project_app_is_scanned():
    found = {p.parent.name for p in ROOT.glob("*/apps.py")} | {"portal"}
    assert found <= PROJECT_APPS, f"new app(s) {found - PROJECT_APPS}: add them to PROJECT_APPS"
    assert all(any((ROOT / app).rglob("*.py")) for app in PROJECT_APPS)


@pytest.mark.parametrize("app", sorted(ALLOWED))
def test_imports_point_one_way(app):
    wrong = [
        f"{path}:{line} imports {module}"
        for source, path, line, module, target, _lazy in _edges()
        if source == app and target not in ALLOWED[app]
    ]
    assert not wrong, (
        f"{app} may import only {sorted(ALLOWED[app]) or 'no other project app'}:\n"
        + "\n".join(wrong)
    )


def test_no_hidden_cross_app_imports():
    hidden = [
        f"{path}:{line} imports {module} inside a function"
        for source, path, line, module, _target, lazy in _edges()
        if lazy and source in ALLOWED and (path, module) not in LAZY_EXCEPTIONS
    ]
    assert not hidden, "move these to module level (or justify them in README):\n" + "\n".join(
        hidden
    )


def test_the_allowed_graph_has_no_cycle():
    def reach(app, seen=()):
        path = (*seen, app)
        for target in ALLOWED.get(app, ()):
            assert target not in path, f"cycle through {(*path, target)}"
            reach(target, path)

    for app in ALLOWED:
        reach(app)

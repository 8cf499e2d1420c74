"""Which project package may import which: the dependency direction, checked on the source.

Every module of every package below is parsed (AST), and every ``import``/``from … import``
counts, including those inside functions (a lazy import is still a dependency). Relative
imports stay inside their package. Tests, benchmarks and scripts are harnesses, not packages of
the project, and may import anything.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the project packages it may import. A package missing here fails the test: add
# its row. Nothing but ``portal`` (the project's settings and entry points) imports ``portal``,
# and ``observability`` imports no project package, so that every package may use it.
ALLOWED_IMPORTS: dict[str, set[str]] = {
    "portal": {"accounts", "keys", "usage", "gateway", "docs", "observability"},
    "docs": {"gateway", "keys", "observability"},
    "playground": {"docs", "gateway", "keys", "usage", "observability"},
    # The staff console reads across the apps and acts through their services; nothing
    # imports it.
    "staff": {"accounts", "audit", "keys", "usage", "gateway", "observability"},
    # The gateway records alert crossings when it settles usage (alerts.services).
    "gateway": {"usage", "keys", "accounts", "alerts", "observability"},
    # Quota alerts read the quota day and pending applications from usage, send through
    # accounts' SMS backends and keep the webhook secret with keys' encryption. Nothing but
    # the gateway (and the Usage page's template, through a template tag) uses them.
    "alerts": {"usage", "keys", "accounts", "observability"},
    "usage": {"keys", "accounts", "audit", "observability"},
    # accounts -> keys -> audit: keys never imports accounts (the user is AUTH_USER_MODEL);
    # audit, the security log, imports no project package, so that every package records.
    "accounts": {"keys", "audit", "observability"},
    "keys": {"audit", "observability"},
    "audit": set(),
    "observability": set(),
}
HARNESSES = {"tests", "bench", "scripts"}


def _project_packages() -> set[str]:
    return {
        path.parent.name
        for path in ROOT.glob("*/__init__.py")
        if path.parent.name not in HARNESSES and not path.parent.name.startswith(".")
    }


def _imported_modules(path: Path):
    """(line, module) for every absolute import in the file."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def _imports(package: str) -> list[tuple[str, str]]:
    """(where, imported project package) for every import of another project package."""
    packages = _project_packages()
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imported_modules(path):
            target = module.split(".")[0]
            if target in packages and target != package:
                found.append((f"{path.relative_to(ROOT)}:{line}", target))
    return found


def test_every_package_has_a_row():
    assert _project_packages() == set(ALLOWED_IMPORTS)


@pytest.mark.parametrize("package", sorted(ALLOWED_IMPORTS))
def test_imports_point_the_allowed_way(package):
    wrong = [
        f"{where} imports {target}"
        for where, target in _imports(package)
        if target not in ALLOWED_IMPORTS[package]
    ]
    assert not wrong, f"{package} may import only {sorted(ALLOWED_IMPORTS[package])}: {wrong}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from portal import settings\n    import usage.quota\n")
    assert [name for _line, name in _imported_modules(module)] == ["portal", "usage.quota"]

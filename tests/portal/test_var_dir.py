"""Test processes running side by side never share files in VAR_DIR (locks, broker, SQLite)."""

import os
import subprocess
import sys

from django.conf import settings


def _var_dir(**env) -> str:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("VAR_DIR", "PYTEST_XDIST_WORKER")
    }
    environment.update(env, DJANGO_SETTINGS_MODULE="portal.settings")
    return subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.VAR_DIR)"],
        env=environment,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_it_gives_each_xdist_worker_a_folder_of_its_own():
    first, second = _var_dir(PYTEST_XDIST_WORKER="gw0"), _var_dir(PYTEST_XDIST_WORKER="gw1")
    assert first != second
    assert first.endswith("test-gw0") and second.endswith("test-gw1")


def test_a_named_folder_is_used_as_it_is(tmp_path):
    assert _var_dir(VAR_DIR=str(tmp_path), PYTEST_XDIST_WORKER="gw0") == str(tmp_path)


def test_outside_tests_it_is_var_in_the_project():
    assert _var_dir() == str(settings.BASE_DIR / "var")

import os

import pytest


def pytest_collection_modifyitems(config, items):
    # Browser tests need Debian's Chromium; skip them with a reason where it is absent
    # (CI installs it, so there they always run).
    if os.path.exists("/usr/bin/chromium"):
        return
    skip = pytest.mark.skip(reason="/usr/bin/chromium is not installed")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)

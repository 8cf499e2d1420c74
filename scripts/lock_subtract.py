"""Remove from a pip-compile lock (argv[1]) every package that another lock (argv[2]) pins.

A requirement is its line plus the indented lines after it (hashes, "# via" notes).
"""

import re
import sys
from pathlib import Path

NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(text: str) -> set[str]:
    return {canonical(m.group(1)) for line in text.splitlines() if (m := NAME.match(line))}


def main(target: str, base: str) -> None:
    drop = pinned(Path(base).read_text())
    kept, skipping = [], False
    for line in Path(target).read_text().splitlines():
        match = NAME.match(line)
        if match:
            skipping = canonical(match.group(1)) in drop
        elif not line.startswith(" "):
            skipping = False
        if not skipping:
            kept.append(line)
    Path(target).write_text("\n".join(kept) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])

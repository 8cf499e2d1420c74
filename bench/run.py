"""`make bench`: every benchmark of the project, one after the other."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import gateway

if __name__ == "__main__":
    gateway.main()

"""`make bench`: every benchmark of the project, one after the other."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import estimates, gateway, redis_clients

if __name__ == "__main__":
    gateway.main()
    estimates.main()
    redis_clients.main([])
    # In its own process: it points Django at a throwaway database before setting Django up.
    # Extra arguments (e.g. "--records 1000000") come from BENCH_USAGE_ARGS.
    usage_args = shlex.split(os.environ.get("BENCH_USAGE_ARGS", ""))
    usage_script = str(Path(__file__).with_name("usage.py"))
    subprocess.run([sys.executable, usage_script, *usage_args], check=False)

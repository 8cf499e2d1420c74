#!/usr/bin/env bash
# `make audit` and CI: fail on a known vulnerability in any locked package (pip-audit against
# PyPI's advisory data, from the hashed locks: no resolution, nothing installed).
# Exit 0: audited, nothing known. 1: a known vulnerability (pip-audit's report says which).
# 3: NOT audited - PyPI's vulnerability data cannot be reached from here (a registry mirror
# without PyPI's JSON API answers 404), or pip-audit skipped packages; it says so, never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
LOCKS=(requirements.lock requirements-dev.lock)  # dev = runtime + dev tools + every SMS extra

offline() {
  echo "pip-audit: NOT AUDITED - PyPI's vulnerability service cannot be reached from this machine ($1)." >&2
  exit 3
}

# The service pip-audit asks (https://pypi.org/pypi/<name>/<version>/json, "vulnerabilities").
if ! "$BIN/python" - <<'PY' 2>/tmp/pip-audit-probe.$$; then
import json, urllib.request
with urllib.request.urlopen("https://pypi.org/pypi/django/4.2/json", timeout=20) as r:
    assert "vulnerabilities" in json.load(r), "no 'vulnerabilities' field in PyPI's answer"
PY
  reason=$(tail -1 /tmp/pip-audit-probe.$$); rm -f /tmp/pip-audit-probe.$$
  offline "$reason"
fi
rm -f /tmp/pip-audit-probe.$$

args=()
for lock in "${LOCKS[@]}"; do args+=(--requirement "$lock"); done
out=$(mktemp)
"$BIN/pip-audit" --require-hashes --disable-pip --vulnerability-service pypi --progress-spinner off \
  "${args[@]}" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ] && grep -qiE "ConnectionError|ServiceError|Max retries|timed out|Name or service not known" "$out"; then
  rm -f "$out"
  offline "pip-audit could not finish its queries"
fi
# pip-audit exits 0 when it could not look a package up at all ("Dependency not found on PyPI
# and could not be audited"): that is not a clean bill of health.
skipped=$(grep -c "could not be audited" "$out")
if [ "$status" -eq 0 ] && [ "$skipped" -gt 0 ]; then
  rm -f "$out"
  offline "$skipped packages could not be looked up"
fi
rm -f "$out"
exit "$status"

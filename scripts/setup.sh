#!/usr/bin/env bash
# Set up a fresh machine: Python venv with the project (always), and with --system the
# services the test suite runs for real (Redis, nginx + Nchan, Chromium, and Java + Maven
# for the Cassandra the CQL tests start). Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--system" ]]; then
  need=()
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v redis-cli >/dev/null || need+=(redis-tools)  # redis-cli --cluster create (Redis Cluster tests)
  command -v nginx >/dev/null || need+=(nginx)
  [[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]] || need+=(libnginx-mod-nchan)
  [[ -x /usr/bin/chromium ]] || need+=(chromium)
  command -v java >/dev/null || need+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || need+=(maven)
  if ((${#need[@]})); then
    echo "setup: installing ${need[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  # Debian starts the packaged services; the tests run their own, so stop those.
  for svc in nginx redis-server; do
    (command -v systemctl >/dev/null && systemctl stop "$svc" 2>/dev/null) || true
  done
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
# The project is installed editable: source changes need no reinstall, only a change of
# pyproject.toml (dependencies, entry points) or of this script does. The stamp records
# the last install that succeeded; pip's output goes to a log, shown only if it fails.
STAMP=.venv/.livecomments-installed
if [[ ! -f $STAMP || pyproject.toml -nt $STAMP || scripts/setup.sh -nt $STAMP ]]; then
  echo "setup: installing the project and its dev tools into .venv (log: .venv/pip.log)"
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[dev]'; } \
      >.venv/pip.log 2>&1; then
    cat .venv/pip.log >&2
    echo "setup: pip install failed (output above, also in .venv/pip.log)" >&2
    exit 1
  fi
  touch "$STAMP"
fi

if [[ "${1:-}" == "--system" ]]; then
  # Cassandra's jars (for the CQL store tests), fetched once into ~/.cache.
  .venv/bin/python tests/services/cassandra.py fetch
fi

#!/usr/bin/env bash
# Sets medloop up on a fresh Debian machine and runs it. Idempotent: safe to run again.
#   bash scripts/bootstrap.sh app          # venv, demo data, one worker, Streamlit on :8501
#   bash scripts/bootstrap.sh test [ARGS]  # venv, PostgreSQL on loopback, Chromium, pytest ARGS
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-app}
shift || true

# torch comes first and pinned: these machines hold these wheels on local disk, while an
# unpinned torch pulls a multi-GB download.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_debian() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_venv() {
  local py=python3.11
  command -v "$py" >/dev/null || py=python3
  if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $($py --version)"
    "$py" -m venv .venv
  fi
  # Reinstall only when the dependency list or this script changed.
  local stamp
  stamp=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
  if [ "$(cat .venv/.medloop-installed 2>/dev/null)" != "$stamp" ]; then
    echo "==> installing Python packages (first time takes a few minutes)"
    local log=.venv/pip-install.log
    {
      .venv/bin/pip install -q --upgrade pip &&
      .venv/bin/pip install -q "${TORCH_PINS[@]}" &&
      .venv/bin/pip install -q -e '.[dev]' "${TORCH_PINS[@]}"
    } >"$log" 2>&1 || { tail -40 "$log" >&2; echo "pip install failed (log: $log)" >&2; exit 1; }
    echo "$stamp" > .venv/.medloop-installed
  fi
}

start_postgres() {
  ensure_debian postgresql
  local ver
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$ver main$" \
    || as_root pg_createcluster "$ver" main >/dev/null
  pg_lsclusters -h | grep "^$ver main" | grep -q online \
    || as_root pg_ctlcluster "$ver" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
  as_root su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='medloop'\"" \
    | grep -q 1 \
    || as_root su postgres -c "psql -qc \"CREATE ROLE medloop LOGIN CREATEDB PASSWORD 'medloop'\""
  # DROP DATABASE ... WITH (FORCE) in the tests ends an autovacuum worker that may still be on
  # a scratch database; without this role that fails now and then ("must be a member of the
  # role whose process is being terminated").
  as_root su postgres -c "psql -qc 'GRANT pg_signal_backend TO medloop'" >/dev/null
  export MEDLOOP_TEST_PG_URL="postgresql+psycopg://medloop:medloop@127.0.0.1:5432/postgres"
}

case "$MODE" in
  app)
    ensure_venv
    export MEDLOOP_DATA_DIR=${MEDLOOP_DATA_DIR:-$PWD/.medloop}
    .venv/bin/medloop demo
    .venv/bin/medloop worker &
    WORKER=$!
    trap 'kill $WORKER 2>/dev/null || true' EXIT INT TERM
    echo "==> medloop on http://localhost:8501 (worker pid $WORKER); Ctrl-C stops both"
    .venv/bin/streamlit run app.py --server.port 8501 --server.headless true \
      --browser.gatherUsageStats false --server.fileWatcherType none \
      --client.toolbarMode viewer
    ;;
  test)
    ensure_debian chromium
    ensure_venv
    start_postgres
    export OMP_NUM_THREADS=1
    exec .venv/bin/python -m pytest "$@"
    ;;
  *)
    echo "usage: bash scripts/bootstrap.sh app|test [pytest args]" >&2
    exit 2
    ;;
esac

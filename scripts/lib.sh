# shellcheck shell=bash
# Shared set-up for the Makefile targets: each function installs or starts what is missing and
# reuses what is there, so running a command twice is fast.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.airflow"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
  # Debian packages, installed only when missing (root on a fresh machine; no sudo needed), without
  # their recommended packages (docker-compose would bring a whole Docker engine).
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_venv() {
  # The runtime pins, the dev/test tools, and this repo installed in editable mode (the `c2b`
  # command, and `c2b` / `devtools` importable from anywhere), redone when any of them changes.
  local want have
  if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3 python3-venv python3-dev
  fi
  # (The last line of the hash input: venvs built before the bytecode below get rebuilt once.)
  want="$( { cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/pyproject.toml";
             echo "installed with compiled bytecode"; } | sha256sum | cut -c1-16)"
  have="$(cat "$VENV/.requirements" 2>/dev/null || true)"
  if [ "$want" = "$have" ] && [ -x "$VENV/bin/c2b" ]; then compile_sources; return 0; fi
  say "creating $VENV and installing the requirements (about a minute the first time)"
  [ -x "$PY" ] || python3 -m venv "$VENV"
  # The same exact pins either way; uv (pinned in requirements-dev.txt, installed first by pip)
  # downloads and unpacks them in parallel: ~20 s on a new machine where pip took minutes (CI has no
  # pip cache). pip does it when uv cannot (it is then what the pins were resolved with).
  local uv_pin; uv_pin="$(grep -E '^uv==' "$ROOT/requirements-dev.txt" || true)"
  if [ -n "$uv_pin" ] && "$PY" -m pip install -q --disable-pip-version-check "$uv_pin" 2>/dev/null \
     && UV_LINK_MODE=copy "$VENV/bin/uv" pip install -q --python "$PY" --compile-bytecode \
          -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt" \
     && UV_LINK_MODE=copy "$VENV/bin/uv" pip install -q --python "$PY" --no-deps -e "$ROOT"; then
    :
  else
    say "uv did not install the requirements; pip does (a few minutes)"
    "$PY" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt" 2>&1 \
      | grep -v "^WARNING: Location .* is ignored" >&2 || true
    "$PY" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT" 2>&1 \
      | grep -v "^WARNING: Location .* is ignored" >&2 || true
  fi
  # dag-factory was once a dev pin here; it registers an Airflow plugin in every process, so the
  # parse bench now keeps it in its own folder (devtools/dagfactory_site.py). Drop an old copy.
  "$PY" -m pip uninstall -q -y --disable-pip-version-check dag-factory >/dev/null 2>&1 || true
  "$PY" -c 'import c2b, devtools' || { echo "the editable install of $ROOT failed" >&2; return 1; }
  # uv compiles only what it installs now; a venv it left without .pyc before keeps none. So all of
  # site-packages, once per install (~25 s on 2 cores; a second or two when all is compiled).
  "$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
    | xargs "$PY" -m compileall -q -j 0 >/dev/null 2>&1 || true
  compile_sources
  echo "$want" > "$VENV/.requirements"
}

compile_sources() {
  # Every Airflow task is a new Python process that imports Airflow, pydantic, DuckDB, redis and
  # this repo. Without .pyc files it compiles them all from source first: ~1.5 s of CPU a task, and
  # the demo plan's 20 tasks took 33-35 s trigger to end instead of 16-18 (LocalExecutor, same
  # hour). uv installs without bytecode unless told (--compile-bytecode and compileall in
  # ensure_venv; pip compiles by default), and where PYTHONDONTWRITEBYTECODE is set (this machine
  # sets it) Python never writes the .pyc itself. So the set-up compiles this repo's own sources
  # too, every time: a tenth of a second when nothing changed.
  "$PY" -m compileall -q -j 0 "$ROOT/plugins" "$ROOT/devtools" "$ROOT/dags" >/dev/null 2>&1 || true
}

export_env() {
  export AIRFLOW_HOME="$STATE"
  export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
  export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__UNIT_TEST_MODE="${AIRFLOW__CORE__UNIT_TEST_MODE:-False}"
  export C2B_WAREHOUSE="${C2B_WAREHOUSE:-$STATE/warehouse.duckdb}"
  export AIRFLOW_CONN_C2B_WAREHOUSE="{\"conn_type\": \"duckdb\", \"host\": \"$C2B_WAREHOUSE\"}"
  export PATH="$VENV/bin:$PATH"
}

ensure_airflow_db() {
  mkdir -p "$STATE"
  [ -f "$STATE/.db-migrated" ] && [ -f "$STATE/airflow.db" ] && return 0
  say "creating the Airflow metadata DB (SQLite, $STATE/airflow.db)"
  "$VENV/bin/airflow" db migrate >"$STATE/db-migrate.log" 2>&1 || { cat "$STATE/db-migrate.log"; return 1; }
  touch "$STATE/.db-migrated"
}

ensure_postgres() {
  # PostgreSQL at 127.0.0.1:5432 (trust auth for the local user postgres): the Celery stack's metadata
  # DB and the PostgreSQL warehouse tests. Installed from Debian and started when missing.
  pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && return 0
  command -v pg_ctlcluster >/dev/null || apt_install postgresql postgresql-client
  local version; version="$(ls /etc/postgresql | sort -V | tail -1)"
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    say "starting PostgreSQL $version"
    # Local connections without a password, as on the developers' machines (a fresh install asks
    # for peer auth): this PostgreSQL is for local development and CI only.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    grep -qE '^host +all +all +127.0.0.1/32 +trust' "$hba" 2>/dev/null \
      || sed -i '1i host all all 127.0.0.1/32 trust' "$hba" 2>/dev/null || true
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- || true
    for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && break; sleep 1; done
  fi
  pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null || { echo "PostgreSQL does not answer at 127.0.0.1:5432" >&2; return 1; }
  # The PostgreSQL warehouse tests load the demo tables into a schema of their own in database `test`.
  psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
    || createdb -h 127.0.0.1 -U postgres test
}

ensure_compose_validator() {
  # Debian's docker-compose (v1, ~15 small Python packages) checks docker-compose.yaml without an
  # engine (tests/dag/test_compose_file.py); where Docker's own `docker compose` exists it is not needed.
  command -v docker-compose >/dev/null || apt_install docker-compose || true
}

ensure_line_pools() {
  # Every business line's pool (`pool:` in dags/plans/<line>/line.yaml) must exist in Airflow, or the
  # scheduler never queues the line's tasks. Re-done only when a line file changes.
  local stamp; stamp=$(cat "$ROOT"/dags/plans/*/line.yaml 2>/dev/null | cksum)
  [ "$(cat "$STATE/.line-pools" 2>/dev/null)" = "$stamp" ] && return 0
  "$PY" -m c2b lines --pools | while read -r pool line; do
    say "creating the Airflow pool $pool of business line $line"
    "$VENV/bin/airflow" pools set "$pool" 16 "c2b business line $line" >/dev/null
  done
  echo "$stamp" >"$STATE/.line-pools"
}

redis_answers() { redis-cli -u "$1" ping 2>/dev/null | grep -q PONG; }

ensure_redis_binary() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_install redis-server
}

ensure_chromium() {
  # Headless Debian chromium for the Results view's browser test (tests/dag/test_results_view_live.py).
  command -v chromium >/dev/null || apt_install chromium
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

ensure_redis() {
  # REDIS_URL if set and answering; else our private redis-server under .airflow/ (started once).
  ensure_redis_binary
  if [ -n "${REDIS_URL:-}" ] && redis_answers "$REDIS_URL"; then
    export C2B_REDIS_URL="$REDIS_URL"
  else
    local port url
    port="$(cat "$STATE/redis.port" 2>/dev/null || true)"
    url="redis://127.0.0.1:${port:-0}"
    if [ -z "$port" ] || ! redis_answers "$url"; then
      port="$(free_port)"; url="redis://127.0.0.1:$port"
      say "starting a private redis-server on 127.0.0.1:$port (pid and log in $STATE)"
      mkdir -p "$STATE/redis"
      # Long-lived daemons get no descriptors beyond 0-2: one inherited from the caller (a lock
      # taken by `flock`, a pipe) would stay open as long as they live.
      redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly yes --appendfsync everysec \
        --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log" --dir "$STATE/redis" >/dev/null \
        3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-
      for _ in $(seq 50); do redis_answers "$url" && break; sleep 0.1; done
      redis_answers "$url" || { echo "redis-server did not start; see $STATE/redis.log" >&2; return 1; }
      echo "$port" > "$STATE/redis.port"
    fi
    export C2B_REDIS_URL="$url"
  fi
  export AIRFLOW_CONN_C2B_REDIS="${C2B_REDIS_URL%/}/?db=0"
}

gateway_answers() { curl -fs "http://127.0.0.1:$1/stats" >/dev/null 2>&1; }

ensure_gateway() {
  # The local test gateway (devtools/gateway.py) stands in for the push/SMS/call/private-domain
  # gateways of the demo; started once in the background, pid and log in $STATE. Points the
  # channel connections at it unless they are already set (a real gateway wins).
  local port
  port="$(cat "$STATE/gateway.port" 2>/dev/null || true)"
  if [ -z "$port" ] || ! gateway_answers "$port"; then
    port="$(free_port)"
    say "starting the demo channel gateway on 127.0.0.1:$port (pid and log in $STATE)"
    mkdir -p "$STATE"
    nohup "$PY" -m devtools.gateway --port "$port" --latency-ms "${C2B_GATEWAY_LATENCY_MS:-5}" \
      >"$STATE/gateway.log" 2>&1 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
    echo $! > "$STATE/gateway.pid"
    for _ in $(seq 50); do gateway_answers "$port" && break; sleep 0.1; done
    gateway_answers "$port" || { echo "the demo gateway did not start; see $STATE/gateway.log" >&2; return 1; }
    echo "$port" > "$STATE/gateway.port"
  fi
  export C2B_GATEWAY_URL="http://127.0.0.1:$port"
  local conn
  conn() { printf '{"conn_type": "http", "host": "127.0.0.1", "port": %s, "schema": "%s", "password": "demo-token", "extra": %s}' "$port" "$1" "$2"; }
  export AIRFLOW_CONN_C2B_PUSH="${AIRFLOW_CONN_C2B_PUSH:-$(conn push '{"batch_size": 100, "timeout": 5}')}"
  export AIRFLOW_CONN_C2B_SMS="${AIRFLOW_CONN_C2B_SMS:-$(conn sms '{"batch_size": 50, "rate_limit": 2000, "sign": "C2B"}')}"
  export AIRFLOW_CONN_C2B_CALL="${AIRFLOW_CONN_C2B_CALL:-$(conn call '{"rate_limit": 50, "queue": "price_up"}')}"
  export AIRFLOW_CONN_C2B_PRIVATE_DOMAIN="${AIRFLOW_CONN_C2B_PRIVATE_DOMAIN:-$(conn private_domain '{"batch_size": 20}')}"
  export AIRFLOW_CONN_C2B_WEBHOOK="${AIRFLOW_CONN_C2B_WEBHOOK:-$(conn webhook '{}')}"
}

ensure_warehouse() {
  # The demo data's dates end at the day it was built: rebuild it on a new day (about a second).
  local today; today="$(date -u +%F)"
  [ -f "$C2B_WAREHOUSE" ] && [ "$(cat "$C2B_WAREHOUSE.as_of" 2>/dev/null)" = "$today" ] && return 0
  say "building the demo warehouse ($C2B_WAREHOUSE, ${C2B_USERS:-200000} users, as of $today)"
  "$PY" -m devtools.demo_warehouse --path "$C2B_WAREHOUSE" --users "${C2B_USERS:-200000}" --as-of "$today"
  echo "$today" > "$C2B_WAREHOUSE.as_of"
}

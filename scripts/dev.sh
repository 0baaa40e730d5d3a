#!/usr/bin/env bash
# Front door behind the Makefile: `scripts/dev.sh demo|test|warehouse|ui|shell [args]`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
cmd="${1:-}"; shift || true
ensure_venv
export_env
case "$cmd" in
  demo)
    ensure_airflow_db; ensure_redis; ensure_warehouse; ensure_gateway
    exec "$PY" -m c2b demo "$@" ;;
  test)
    # Tests start their own redis-server (they restart it on purpose); they need the binary.
    ensure_redis_binary; ensure_airflow_db
    exec "$PY" -m pytest "$@" ;;
  warehouse)
    rm -f "$C2B_WAREHOUSE"; ensure_warehouse ;;
  ui)
    ensure_airflow_db; ensure_line_pools; ensure_redis; ensure_warehouse; ensure_gateway
    exec "$ROOT/scripts/airflow_ui.sh" "$@" ;;
  run)
    ensure_airflow_db; ensure_redis; ensure_warehouse; ensure_gateway
    exec "$@" ;;
  *) echo "usage: scripts/dev.sh demo|test|warehouse|ui|run CMD..." >&2; exit 2 ;;
esac

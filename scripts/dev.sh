#!/usr/bin/env bash
# Front door behind the Makefile: `scripts/dev.sh demo|test|warehouse|ui|cluster|run [args]`.
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
    # Tests start their own redis-server (they restart it on purpose); they need the binary. The
    # PostgreSQL warehouse tests and the Celery stack's metadata DB need PostgreSQL.
    ensure_redis_binary; ensure_postgres; ensure_compose_validator; ensure_chromium; ensure_airflow_db
    # Two test processes (pytest-xdist; tests/conftest.py sends each module to one of them, and the
    # live Airflow stacks all to the same one): most of the suite waits on servers and stacks.
    # C2B_TEST_PROCESSES=1: one process.
    procs="${C2B_TEST_PROCESSES:-2}"
    if [ "$procs" -gt 1 ]; then set -- -n "$procs" --no-loadscope-reorder "$@"; fi
    exec "$PY" -m pytest "$@" ;;
  warehouse)
    rm -f "$C2B_WAREHOUSE"; ensure_warehouse ;;
  ui)
    ensure_airflow_db; ensure_line_pools; ensure_redis; ensure_warehouse; ensure_gateway
    exec "$ROOT/scripts/airflow_ui.sh" "$@" ;;
  cluster)
    # The CeleryExecutor stack (scripts/cluster.sh): metadata DB on PostgreSQL, Celery broker in
    # database 1 of the private Redis (the audience store uses database 0), the demo state.
    [ "${1:-start}" = stop ] || { ensure_postgres; ensure_redis; ensure_warehouse; ensure_gateway; }
    exec "$ROOT/scripts/cluster.sh" "$@" ;;
  run)
    ensure_airflow_db; ensure_redis; ensure_warehouse; ensure_gateway
    exec "$@" ;;
  *) echo "usage: scripts/dev.sh demo|test|warehouse|ui|cluster start|stop|run CMD..." >&2; exit 2 ;;
esac

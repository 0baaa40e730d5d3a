#!/usr/bin/env bash
# Start (`make cluster`) or stop (`make cluster-stop`) a live Airflow on CeleryExecutor on this machine:
# api-server, scheduler, dag-processor, triggerer and two `airflow celery worker` processes, the
# metadata DB in PostgreSQL database c2b_airflow, Celery's broker in database 1 of the private Redis.
# The processes run in the background (logs and pids in .airflow/cluster/); the UI is at
# http://127.0.0.1:${UI_PORT:-8080} with no login. devtools/airflow_stack.py defines the stack; the live
# Celery tests start the same one. Called by scripts/dev.sh with the env of scripts/lib.sh.
set -euo pipefail
action="${1:-start}"
[ "$action" = stop ] || export C2B_BROKER_URL="${C2B_BROKER_URL:-${C2B_REDIS_URL%/}/1}"
exec python -m devtools.airflow_stack "$action" --state "$AIRFLOW_HOME/cluster"

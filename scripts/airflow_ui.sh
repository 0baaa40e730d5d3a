#!/usr/bin/env bash
# Start a live Airflow (api-server + scheduler + dag-processor + triggerer, LocalExecutor) on the project's
# state in .airflow/: the UI at http://127.0.0.1:${UI_PORT:-8080}, no login (all users are admins,
# a local demo set-up). Ctrl-C stops everything. Called by `make ui` with the env of scripts/lib.sh.
set -euo pipefail
PORT="${UI_PORT:-8080}"
LOGS="$AIRFLOW_HOME/ui-logs"; mkdir -p "$LOGS"
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True
export AIRFLOW__API__PORT="$PORT"
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="${WORKER_LOG_PORT:-8793}"
export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT="${TRIGGER_LOG_PORT:-8794}"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="${DAG_REFRESH_SECONDS:-30}"

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT INT TERM
airflow api-server --port "$PORT" --workers 1 >"$LOGS/api-server.log" 2>&1 & pids+=($!)
airflow scheduler >"$LOGS/scheduler.log" 2>&1 & pids+=($!)
airflow dag-processor >"$LOGS/dag-processor.log" 2>&1 & pids+=($!)
# Nothing of c2b defers to it yet, but without a triggerer the UI's health badge is red.
airflow triggerer >"$LOGS/triggerer.log" 2>&1 & pids+=($!)
for _ in $(seq 60); do curl -fs "http://127.0.0.1:$PORT/api/v2/monitor/health" >/dev/null && break; sleep 1; done
echo "Airflow UI: http://127.0.0.1:$PORT  (logs in $LOGS; Ctrl-C to stop)"
echo "Redis: $C2B_REDIS_URL   warehouse: $C2B_WAREHOUSE"
wait -n "${pids[@]}"
echo "an Airflow process exited; see $LOGS" >&2

# The front door. README's two commands are `make demo` and `make test`; CI runs `make test`.
.PHONY: demo test warehouse ui cluster cluster-stop bench lint clean

demo:       ## run the sample plan end to end and print its summary
	@scripts/dev.sh demo

test:       ## run the whole test suite against real Redis, DuckDB, PostgreSQL and HTTP
	@scripts/dev.sh test $(PYTEST_ARGS)

warehouse:  ## rebuild the demo DuckDB warehouse (C2B_USERS=200000)
	@scripts/dev.sh warehouse

ui:         ## start the Airflow UI (api-server + scheduler + dag-processor + triggerer) on the demo state
	@scripts/dev.sh ui

cluster:    ## start Airflow on CeleryExecutor in the background: 2 workers, PostgreSQL metadata DB, Redis broker
	@scripts/dev.sh cluster start

cluster-stop: ## stop what `make cluster` started
	@scripts/dev.sh cluster stop

lint:
	@scripts/dev.sh run ruff check plugins dags tests bench devtools
	@scripts/dev.sh run mypy plugins/c2b

clean:      ## stop the cluster, the private redis-server and demo gateway, and remove local state (.airflow/)
	-@[ -f .airflow/cluster/pids.json ] && scripts/dev.sh cluster stop || true
	-@[ -f .airflow/redis.pid ] && kill $$(cat .airflow/redis.pid) 2>/dev/null || true
	-@[ -f .airflow/gateway.pid ] && kill $$(cat .airflow/gateway.pid) 2>/dev/null || true
	rm -rf .airflow

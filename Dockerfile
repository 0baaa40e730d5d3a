# Image of the scale-out deployment (docker-compose.yaml): Airflow 3.3.2, the engine's runtime pins
# (requirements.txt; no test, bench or lint tools) and this repository installed as a package (`c2b`,
# `devtools` for the demo warehouse and gateway), with the DAGs, plugins and segment SQL inside, so a
# worker on another machine needs nothing but this image. Build context: see .dockerignore.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:0 requirements.txt /tmp/requirements.txt
# Airflow itself comes with the base image; everything else at the pinned versions.
RUN grep -vE '^(apache-airflow|apache-airflow-core|apache-airflow-task-sdk)==' /tmp/requirements.txt > /tmp/req-extra.txt \
    && pip install --no-cache-dir -r /tmp/req-extra.txt
COPY --chown=airflow:0 pyproject.toml requirements.txt requirements-dev.txt /opt/c2b/
COPY --chown=airflow:0 plugins /opt/c2b/plugins
COPY --chown=airflow:0 devtools /opt/c2b/devtools
RUN pip install --no-cache-dir --no-deps /opt/c2b
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 include /opt/airflow/include
ENV C2B_SQL_DIR=/opt/airflow/include/sql

# Image for the scale-out deployment (docker-compose.yaml): Airflow 3.3.2 plus the engine's pins.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt /tmp/requirements.txt
RUN grep -vE '^(apache-airflow|apache-airflow-core|apache-airflow-task-sdk)==' /tmp/requirements.txt > /tmp/req-extra.txt \
    && pip install --no-cache-dir -r /tmp/req-extra.txt

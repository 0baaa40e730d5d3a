"""The Airflow edge: DAG building, the plan importer and resolving connections.

The only package of c2b that imports Airflow."""

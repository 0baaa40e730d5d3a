"""Airflow plugin: the c2b Results view, a tab on each plan's DAG page and on each of its runs.

The api-server mounts the view's FastAPI app under ``/c2b-results``; the UI embeds it through
``external_views`` (``{DAG_ID}`` / ``{RUN_ID}`` are filled in by the UI). The app is built only
where a FastAPI app is served: other Airflow processes (scheduler, workers) load plugins too and
need none of it.
"""

from __future__ import annotations

import sys

from airflow.plugins_manager import AirflowPlugin
from c2b.airflow.results_view import URL_PREFIX, external_views


def _serves_http() -> bool:
    """Return whether this process builds Airflow's FastAPI app (an api-server), which mounts plugin apps.

    Workers load every plugin before each task; building the view's app there would cost each task
    the import of FastAPI and Airflow's API security (~0.8 s of CPU), for nothing.
    """
    return "airflow.api_fastapi.app" in sys.modules


def _fastapi_apps() -> list[dict]:
    from c2b.airflow.results_view import create_app

    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "c2b results"}]


class C2bResultsPlugin(AirflowPlugin):
    """The Results view of c2b campaign plans."""

    name = "c2b_results"
    fastapi_apps = _fastapi_apps() if _serves_http() else []
    external_views = external_views()

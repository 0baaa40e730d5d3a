"""The Results view's HTML (pure rendering) and its registration as an Airflow plugin.

The page's numbers are read back from the HTML the way the browser test reads them
(:func:`page_figures`), so these tests and the live one check the same thing: the page shows the
results page's numbers, SRM verdict first.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from c2b.airflow import results_view as view
from c2b.results.page import example_page

ROOT = Path(__file__).resolve().parents[2]


class _Cells(HTMLParser):
    """Collect the text of every ``<td data-k=...>`` with the ``data-*`` of its row, and element ids in order."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, dict[str, str], str, str]] = []  # (table id, row attrs, field, text)
        self.row_index: list[int] = []  # which <tr> each cell is in
        self._tr = 0
        self.ids: list[str] = []
        self._table = ""
        self._row: dict[str, str] = {}
        self._field: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "table":
            self._table = a.get("id", "")
        elif tag == "tr":
            self._row = {k[5:]: v for k, v in a.items() if k.startswith("data-")}
            self._tr += 1
        elif tag == "td" and "data-k" in a:
            self._field, self._text = a["data-k"], []

    def handle_data(self, data: str) -> None:
        if self._field is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._field is not None:
            self.rows.append((self._table, self._row, self._field, "".join(self._text).strip()))
            self.row_index.append(self._tr)
            self._field = None


def page_figures(html: str) -> tuple[dict[str, Any], list[str]]:
    """Return the figures shown on a Results page, keyed by table, row and field, and the ids in page order."""
    cells = _Cells()
    cells.feed(html)
    figures: dict[str, Any] = {}
    touches: dict[int, dict[str, str]] = {}
    for i, (table, row, field, text) in enumerate(cells.rows):
        if table == "touches":  # one row per (touch, variant, outcome, reason): keep them all
            touches.setdefault(cells.row_index[i], {**row})[field] = text
        else:
            figures.setdefault(table, {}).setdefault(row.get("variant"), {})[field] = text
    figures["touches"] = list(touches.values())
    return figures, cells.ids


def expected_figures(page: dict[str, Any]) -> dict[str, Any]:
    """Return what the page must show for ``page``: counts exactly, rates and intervals as formatted."""
    kind = page["metric"]["kind"]
    fig: dict[str, Any] = {"variants": {}, "uplifts": {}}
    for v in page["variants"]:
        fig["variants"][v["name"]] = {"assigned": f"{v['assigned']:,}", "reached": f"{v['reached']:,}",
                                      "converted": f"{v['converted']:,}", "rate": view.fmt_rate(v["rate"], kind),
                                      "rate_ci": view.fmt_interval(v["rate_ci"], kind)}
    for u in page["uplifts"]:
        fig["uplifts"][u["variant"]] = {
            "abs": view.fmt_abs(u["abs"], kind), "abs_ci": view.fmt_abs_interval(u["abs_ci"], kind),
            "rel": view.fmt_rel(u["rel"]), "rel_ci": view.fmt_rel_interval(u["rel_ci"]),
            "p_value": view.fmt_p(u["p_value"]), "p_adjusted": view.fmt_p(u["p_adjusted"]),
            "significant": "yes" if u["significant"] else "no"}
    return fig


def assert_page_shows(html: str, page: dict[str, Any]) -> None:
    """Assert the HTML shows every figure of ``page`` (counts parsed back as integers)."""
    shown, ids = page_figures(html)
    want = expected_figures(page)
    assert shown["variants"] == want["variants"]
    assert shown.get("uplifts", {}) == want["uplifts"]
    assert _touch_rows(shown["touches"]) == _touch_rows_of(page)
    for name, n in page["srm"]["observed"].items():
        assert int(shown["srm-table"][name]["observed"].replace(",", "")) == n
    assert ids.index("srm") < ids.index("variants")
    if "uplifts" in ids:
        assert ids.index("srm") < ids.index("uplifts")


def _touch_rows(shown: list[dict[str, str]]) -> list[tuple]:
    return sorted((r["touch"], r["variant"], r["outcome"], r["reason"], int(r["count"].replace(",", "")))
                  for r in shown)


def _touch_rows_of(page: dict[str, Any]) -> list[tuple]:
    return sorted((str(t["touch"]), str(t["variant"]), str(t["outcome"]), t["reason"] or "", t["count"])
                  for t in page["touches"])


def test_the_page_shows_every_figure_srm_first() -> None:
    page = example_page()
    html = view.render_page(page)
    assert_page_shows(html, page)
    assert html.index('id="srm"') < html.index("Funnel per variant") < html.index("Uplift against control")
    assert "Sample ratio OK" in html
    assert 'data-method="sequential"' in html and "every day of the attribution window" in html
    assert "O&#x27;Brien-Fleming-type alpha spending over 7 daily looks" in html
    assert html.count("<svg") == 3  # funnel, uplift, conversions per day
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def audit_shown(html: str) -> dict[str, str]:
    """Return the audit table of a Results page: ``{field: text}``."""
    shown, _ = page_figures(html)
    return shown.get("audit", {}).get(None, {})


def test_the_page_shows_the_runs_audit_record_or_says_there_is_none() -> None:
    page = example_page()
    audit = page["audit"]
    shown = audit_shown(view.render_page(page))
    assert shown["plan_sha256"] == audit["plan_sha256"] and shown["git_commit"] == audit["git_commit"]
    assert shown["triggered_by"] == "alice" and shown["trigger"] == "manual"
    assert json.loads(shown["params"]) == audit["params"]
    assert shown["segments"] == "cancelled_for_reason.sql " + audit["segments"]["cancelled_for_reason.sql"]
    assert shown["code"] == "c2b 0.1.0, engine 3a5c7e9b1d2f4a6c, airflow 3.3.2" and shown["line"] == "growth"
    page["audit"] = {**audit, "git_commit": None, "git_dirty": None, "triggered_by": "<script>x</script>"}
    html = view.render_page(page)
    assert audit_shown(html)["git_commit"] == "none (no git checkout)" and "<script>" not in html
    page["audit"] = None
    html = view.render_page(page)
    assert 'id="audit-missing"' in html and not audit_shown(html)


def test_the_app_serves_the_runs_audit_from_the_results_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run logged and reported in a real (DuckDB) results store: the HTML and JSON both show its audit."""
    from datetime import datetime

    from c2b.results.store import DuckDBResultsStore
    from fastapi.testclient import TestClient

    monkeypatch.delenv("AIRFLOW_CONN_C2B_RESULTS", raising=False)
    monkeypatch.setenv("C2B_DATA_DIR", str(tmp_path))
    store = DuckDBResultsStore(tmp_path / "results.duckdb")
    t0 = datetime(2026, 11, 27, 10, 0)
    store.write_log([("p", "manual__1", "coupon", "push", f"u{i}", "sent", None, t0) for i in range(8)],
                    run={"plan_id": "p", "run_id": "manual__1", "weights": {"coupon": 100}, "controls": [],
                         "logged_at": t0, "goal": None})
    audit = {**example_page()["audit"], "plan": "p", "run": "manual__1", "triggered_by": "bob",
             "params": {"dry_run": False, "sample": 8, "only_touches": []}}
    store.save_audit("p", "manual__1", audit, "complete", reported_at=t0)
    client = TestClient(view.create_app(authorize=lambda: None), raise_server_exceptions=False)
    got = client.get("/api/dags/p/runs/manual__1").json()["audit"]
    assert got == {**audit, "reported_at": "2026-11-27T10:00:00+00:00"}
    for path in ("/dags/p/runs/manual__1", "/dags/p"):
        r = client.get(path)
        assert r.status_code == 200, r.text[:300]
        shown = audit_shown(r.text)
        assert shown["plan_sha256"] == audit["plan_sha256"] and shown["git_commit"] == audit["git_commit"]
        assert shown["triggered_by"] == "bob" and json.loads(shown["params"])["sample"] == 8
        assert shown["status"] == "complete"


def test_a_sample_ratio_mismatch_is_said_before_any_uplift() -> None:
    page = example_page()
    page["srm"] = {**page["srm"], "p_value": 2e-7, "ok": False}
    html = view.render_page(page)
    assert "MISMATCH" in html and "Do not trust the uplifts" in html
    assert html.index("MISMATCH") < html.index('id="uplifts"')
    assert re.search(r'class="verdict bad"', html)


def test_without_a_control_group_the_page_says_why_and_shows_no_uplift() -> None:
    page = example_page()
    page["variants"] = [v for v in page["variants"] if not v["is_control"]]
    page["uplifts"] = []
    page["note"] = "No control group in this plan: uplift cannot be measured (add a variant with no touches)."
    html = view.render_page(page)
    assert_page_shows(html, page)
    assert 'id="note"' in html and "No control group" in html
    assert 'id="uplifts"' not in html and html.count("<svg") == 2


def test_fixed_method_and_a_value_metric() -> None:
    page = copy.deepcopy(example_page())
    page["method"] = "fixed"
    page["metric"] = {"name": "order_value", "kind": "value"}
    for v in page["variants"]:
        v["rate"], v["rate_ci"] = 12.5, [10.25, 14.75]
    html = view.render_page(page)
    assert_page_shows(html, page)
    assert 'data-method="fixed"' in html and "fixed-horizon" in html
    assert "mean value per user" in html and "12.5" in html


def test_user_text_is_escaped() -> None:
    page = example_page()
    page["touches"][1]["reason"] = '<img src=x onerror="alert(1)">'
    page["note"] = "<b>bold</b>"
    html = view.render_page(page)
    assert "<img" not in html and "<b>bold" not in html


def _plugin_state(preamble: str) -> dict[str, Any]:
    code = (f"{preamble}; import json; from airflow import plugins_manager as pm; "
            "views, _ = pm._get_ui_plugins(); apps, _ = pm.get_fastapi_plugins(); "
            "print(json.dumps({'errors': pm.get_import_errors(), "
            "'views': [v for v in views if v['name'] == 'Results'], "
            "'apps': [a['url_prefix'] for a in apps]}))")
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_plugin_registers_the_tabs_and_mounts_the_app_only_in_the_api_server() -> None:
    """Airflow's plugin manager loads plugins/c2b_results_plugin.py: two Results tabs, one app.

    A worker (which loads every plugin before each task) does not build the app; a process that
    builds Airflow's API app (the api-server) does.
    """
    worker = _plugin_state("import airflow.sdk")
    assert worker["errors"] == {}
    assert {v["destination"]: v["href"] for v in worker["views"]} == {
        "dag": "/c2b-results/dags/{DAG_ID}", "dag_run": "/c2b-results/dags/{DAG_ID}/runs/{RUN_ID}"}
    assert worker["apps"] == []
    api_server = _plugin_state("import airflow.api_fastapi.app")
    assert api_server["errors"] == {} and api_server["apps"] == ["/c2b-results"]


def test_no_results_yet_is_a_404_page_and_a_broken_store_a_503_page_never_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's own answers, Airflow's auth check replaced (it is tested under a live api-server)."""
    from fastapi.testclient import TestClient

    client = TestClient(view.create_app(authorize=lambda: None), raise_server_exceptions=False)
    monkeypatch.delenv("AIRFLOW_CONN_C2B_RESULTS", raising=False)
    monkeypatch.setenv("C2B_DATA_DIR", str(tmp_path))  # an empty results store
    r = client.get("/dags/some_plan/runs/manual__1")
    assert r.status_code == 404 and 'id="missing"' in r.text and "Traceback" not in r.text
    assert client.get("/api/dags/some_plan/runs/manual__1").json()["detail"]
    monkeypatch.setenv("AIRFLOW_CONN_C2B_RESULTS", '{"conn_type": "duckdb"}')  # no file named
    r = client.get("/dags/some_plan")
    assert r.status_code == 503 and "results store could not be read" in r.text and "c2b_results" in r.text
    assert "Traceback" not in r.text

"""The Results view: a FastAPI app the Airflow api-server mounts (``plugins/c2b_results_plugin.py``).

One server-rendered HTML page per plan run, shown in the Airflow UI as a tab of the plan's DAG
(latest run) and of each run, plus the same page as JSON. No JavaScript and nothing fetched from
elsewhere: charts are inline SVG from :mod:`c2b.results.charts`.

Airflow does not protect a plugin's endpoints by itself. Every route here depends on Airflow's own
``requires_access_dag("GET", DagAccessEntity.RUN)``, which reads ``dag_id`` from the path and asks
the configured auth manager: an anonymous request gets 401, a user who may not read the plan's
DAG runs gets 403 — the same answer as the REST API's ``/dags/{dag_id}/dagRuns``. The UI's session
cookie authenticates the view's iframe; API clients send a bearer token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from c2b.results import charts

log = logging.getLogger(__name__)

URL_PREFIX = "/c2b-results"

METHOD_TEXT = {
    "fixed": ("fixed-horizon 95% intervals",
              "valid when you read the result once, at the end of the window; looking daily and stopping "
              "at the first significant day inflates false positives"),
    "sequential": ("sequential 95% intervals",
                   "valid when read every day of the attribution window: the 5% false-positive risk is "
                   "spent over the window's daily looks, so you may stop the day the interval excludes zero"),
}

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;color:#1f2328;margin:16px 20px;max-width:980px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 8px;border-bottom:1px solid #d0d7de}
.meta{color:#57606a} .verdict{padding:10px 12px;border-radius:6px;margin:12px 0;font-weight:600}
.ok{background:#dafbe1;border:1px solid #4ac26b} .bad{background:#ffebe9;border:1px solid #ff8182}
.none{background:#f6f8fa;border:1px solid #d0d7de} .note{background:#fff8c5;border:1px solid #d4a72c;
padding:8px 12px;border-radius:6px} table{border-collapse:collapse;margin:6px 0}
td,th{padding:3px 10px;border-bottom:1px solid #eaeef2;text-align:right} th{background:#f6f8fa}
td:first-child,th:first-child,td.t{text-align:left} .sig{color:#1a7f37;font-weight:600}
.bad-n{color:#cf222e;font-weight:600} small{color:#57606a}
"""


# --- rendering (pure) -----------------------------------------------------------------------------

def fmt_int(n: Any) -> str:
    """Return a count with thousands separators, or an en dash when there is none."""
    return "–" if n is None else f"{int(n):,}"


def fmt_rate(x: Any, kind: str = "rate") -> str:
    """Return a rate as a percentage with two decimals (a value metric as a plain number)."""
    if x is None:
        return "–"
    return f"{100 * x:.2f}%" if kind == "rate" else f"{x:,.4g}"


def fmt_interval(ci: Sequence[Any] | None, kind: str = "rate") -> str:
    """Return ``[lo, hi]`` in the page's format for the metric kind."""
    if not ci or ci[0] is None or ci[1] is None:
        return "–"
    return f"[{fmt_rate(ci[0], kind)}, {fmt_rate(ci[1], kind)}]"


def fmt_abs(x: Any, kind: str) -> str:
    """Return an absolute uplift: percentage points for a rate metric."""
    return "–" if x is None else charts.format_uplift(float(x), kind)


def fmt_abs_interval(ci: Sequence[Any] | None, kind: str) -> str:
    """Return the interval of an absolute uplift."""
    if not ci or ci[0] is None or ci[1] is None:
        return "–"
    return f"[{fmt_abs(ci[0], kind)}, {fmt_abs(ci[1], kind)}]"


def fmt_rel(x: Any) -> str:
    """Return a relative uplift as a signed percentage."""
    return "–" if x is None else f"{100 * x:+.1f}%"


def fmt_rel_interval(ci: Sequence[Any] | None) -> str:
    """Return the interval of a relative uplift."""
    if not ci or ci[0] is None or ci[1] is None:
        return "–"
    return f"[{fmt_rel(ci[0])}, {fmt_rel(ci[1])}]"


def fmt_p(p: Any) -> str:
    """Return a p-value: four decimals, or ``< 0.0001``."""
    if p is None:
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _td(field: str, text: str, cls: str = "") -> str:
    css = f' class="{cls}"' if cls else ""
    return f'<td data-k="{field}"{css}>{escape(text)}</td>'


def _srm_html(srm: Mapping[str, Any], variants: Sequence[Mapping[str, Any]]) -> str:
    ok, p = srm.get("ok"), srm.get("p_value")
    if ok is None:
        cls, text = "none", "Sample ratio: nothing to test (one variant)."
    elif ok:
        cls, text = "ok", (f"Sample ratio OK (chi-square p = {fmt_p(p)}): users were split as the plan's "
                           "weights say, so the comparison below can be trusted.")
    else:
        cls, text = "bad", (f"Sample ratio MISMATCH (chi-square p = {fmt_p(p)} < 0.001): the split does not "
                            "match the plan's weights; something dropped or duplicated users. "
                            "Do not trust the uplifts below until it is explained.")
    expected, observed = srm.get("expected") or {}, srm.get("observed") or {}
    total = sum(int(n) for n in observed.values()) or 0
    rows = []
    names = [v["name"] for v in variants]
    names += [n for n in [*expected, *observed] if n not in names]
    for name in dict.fromkeys(names):
        share = expected.get(name)
        n = observed.get(name)
        rows.append(f'<tr data-variant="{escape(name)}"><td>{escape(name)}</td>'
                    + _td("expected_share", "–" if share is None else f"{100 * share:.1f}%")
                    + _td("expected_n", "–" if share is None else f"{share * total:,.0f}")
                    + _td("observed", fmt_int(n)) + "</tr>")
    table = ('<table id="srm-table"><tr><th>variant</th><th>planned share</th><th>expected users</th>'
             f"<th>assigned users</th></tr>{''.join(rows)}</table>")
    return f'<div id="srm" class="verdict {cls}" data-ok="{ok}">{escape(text)}</div>{table}'


def _variants_html(variants: Sequence[Mapping[str, Any]], kind: str) -> str:
    rows = []
    for v in variants:
        name = charts.variant_label(v)
        rows.append(f'<tr data-variant="{escape(v["name"])}"><td>{escape(name)}</td>'
                    + _td("assigned", fmt_int(v["assigned"])) + _td("reached", fmt_int(v["reached"]))
                    + _td("converted", fmt_int(v["converted"])) + _td("rate", fmt_rate(v["rate"], kind))
                    + _td("rate_ci", fmt_interval(v["rate_ci"], kind)) + "</tr>")
    rate = "conversion rate" if kind == "rate" else "mean value per user"
    return ('<table id="variants"><tr><th>variant</th><th>assigned</th><th>reached</th><th>converted</th>'
            f"<th>{rate}</th><th>95% interval</th></tr>{''.join(rows)}</table>")


def _uplifts_html(uplifts: Sequence[Mapping[str, Any]], kind: str) -> str:
    rows = []
    for u in uplifts:
        sig = bool(u.get("significant"))
        rows.append(f'<tr data-variant="{escape(u["variant"])}"><td>{escape(u["variant"])} vs '
                    f'{escape(u["control"])}</td>'
                    + _td("abs", fmt_abs(u["abs"], kind)) + _td("abs_ci", fmt_abs_interval(u["abs_ci"], kind))
                    + _td("rel", fmt_rel(u["rel"])) + _td("rel_ci", fmt_rel_interval(u["rel_ci"]))
                    + _td("p_value", fmt_p(u["p_value"])) + _td("p_adjusted", fmt_p(u["p_adjusted"]))
                    + _td("significant", "yes" if sig else "no", "sig" if sig else "") + "</tr>")
    return ('<table id="uplifts"><tr><th>variant</th><th>uplift</th><th>95% interval</th><th>relative</th>'
            '<th>95% interval</th><th>p</th><th>p (Holm)</th><th>significant</th></tr>'
            f"{''.join(rows)}</table>")


def _touches_html(touches: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for t in touches:
        cls = "bad-n" if t["outcome"] == "failed" else ""
        rows.append(f'<tr data-touch="{escape(str(t["touch"]))}" data-variant="{escape(str(t["variant"]))}" '
                    f'data-outcome="{escape(str(t["outcome"]))}"><td>{escape(str(t["touch"]))}</td>'
                    f'<td class="t">{escape(str(t["variant"]))}</td>'
                    + _td("outcome", str(t["outcome"]), f"t {cls}".strip())
                    + _td("reason", t.get("reason") or "", "t") + _td("count", fmt_int(t["count"])) + "</tr>")
    return ('<table id="touches"><tr><th>touch</th><th class="t">variant</th><th class="t">outcome</th>'
            f'<th class="t">reason</th><th>messages</th></tr>{"".join(rows)}</table>')


def _audit_html(audit: Mapping[str, Any] | None) -> str:
    """Return the run's audit record as a table (``data-k`` per field), or say there is none."""
    if not audit:
        return ('<p id="audit-missing" class="note">No audit record stored for this run: its report task has '
                "not run yet (the record is stored with the run's report).</p>")
    import json

    code = audit.get("code") or {}
    commit = audit.get("git_commit")
    rows = [
        ("plan_sha256", "plan file sha256", str(audit.get("plan_sha256") or "–")),
        ("plan_file", "plan file", str(audit.get("plan_file") or "–")),
        ("git_commit", "git commit", (commit or "none (no git checkout)")
         + (" (plan file modified)" if audit.get("git_dirty") else "")),
        ("triggered_by", "triggered by", str(audit.get("triggered_by") or "–")),
        ("trigger", "run type", str(audit.get("trigger") or "–")),
        ("params", "params", json.dumps(audit.get("params") or {}, sort_keys=True)),
        ("segments", "segment files", ", ".join(f"{k} {v}" for k, v in (audit.get("segments") or {}).items())
         or "–"),
        ("code", "code", f"c2b {code.get('c2b')}, engine {code.get('engine_sha256')}, airflow {code.get('airflow')}"),
        ("line", "business line", str(audit.get("line") or "–")),
        ("recorded_at", "recorded", str(audit.get("recorded_at") or "–")),
        ("status", "report status", str(audit.get("status") or "–")),
    ]
    body = "".join(f'<tr data-field="{k}"><td class="t">{escape(label)}</td>{_td(k, text, "t")}</tr>'
                   for k, label, text in rows)
    return f'<table id="audit"><tr><th>audit</th><th class="t">this run</th></tr>{body}</table>'


def render_page(page: Mapping[str, Any]) -> str:
    """Return the Results view of one run as a complete HTML document."""
    kind = page["metric"]["kind"]
    method_name, method_why = METHOD_TEXT.get(page["method"], (str(page["method"]), ""))
    days = page.get("days_since_send")
    window = page["window_days"]
    progress = "window closed" if days is not None and days >= window else \
        f"day {days:.1f} of {window}" if days is not None else "not attributed yet"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Results: {escape(page['plan_id'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Results of {escape(page['plan_id'])}</h1>",
        f'<div class="meta">run <code id="run-id">{escape(page["run_id"])}</code> · goal '
        f'<b id="metric">{escape(page["metric"]["name"] or "none (the plan has no goal)")}</b> '
        f"({escape(kind)} metric) · "
        f"{window}-day attribution window, {escape(progress)}</div>",
        _srm_html(page["srm"], page["variants"]),
    ]
    if page.get("note"):
        parts.append(f'<p id="note" class="note">{escape(page["note"])}</p>')
    parts += ["<h2>Funnel per variant</h2>", _variants_html(page["variants"], kind),
              charts.funnel_svg(page["variants"])]
    parts.append("<h2>Uplift against control</h2>")
    parts.append(f'<p id="method" data-method="{escape(page["method"])}">Intervals: <b>{escape(method_name)}'
                 f"</b> — {escape(method_why)}"
                 + (f' (<span id="method-detail">{escape(page["method_detail"])}</span>)' if page.get("method_detail")
                    else "")
                 + ". An interval that does not cross zero is an effect the data "
                 "supports; p-values are Holm-adjusted across the variants.</p>")
    if page["uplifts"]:
        parts += [charts.uplift_svg(page["uplifts"], kind),
                  _uplifts_html(page["uplifts"], kind)]
    else:
        parts.append("<p><small>No uplift: there is nothing to compare with (see the note above).</small></p>")
    parts += ["<h2>Messages per touch</h2>", _touches_html(page["touches"]),
              "<h2>Conversions per day since the send</h2>", charts.daily_svg(page["daily"], page["variants"]),
              "<h2>Audit: what ran, who started it</h2>", _audit_html(page.get("audit")),
              "</body></html>"]
    return "".join(parts)


def render_missing(dag_id: str, message: str) -> str:
    """Return the page shown when a plan has no results yet (a message, not an error page)."""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Results: {escape(dag_id)}</title>"
            f"<style>{STYLE}</style></head><body><h1>Results of {escape(dag_id)}</h1>"
            f'<p id="missing" class="note">{escape(message)}</p></body></html>')


# --- the app --------------------------------------------------------------------------------------

def create_app(authorize: Any = None) -> Any:
    """Return the FastAPI app; every route requires read access to the plan's DAG runs.

    ``authorize`` replaces Airflow's check (a FastAPI dependency); only tests of the page logic
    without an api-server pass one.
    """
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse, JSONResponse

    can_read_runs = [Depends(authorize or requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))]
    app = FastAPI(title="c2b campaign results", docs_url=None, redoc_url=None, openapi_url=None)

    async def load(dag_id: str, run_id: str | None) -> tuple[dict[str, Any] | None, str, int]:
        """Return (page, message, status): the page, or why there is none (404) or the store failed (503)."""
        from c2b.results.page import results_page

        try:
            return await run_in_threadpool(results_page, dag_id, run_id), "", 200
        except LookupError as exc:  # no logged run yet, or not this one: say what to run
            return None, str(exc.args[0] if exc.args else exc), 404
        except ValueError as exc:  # a misconfigured c2b_results connection, a bad goal: the message says which
            log.warning("results of %s / %s: %s", dag_id, run_id, exc)
            return None, f"The results store could not be read: {exc}", 503

    async def html(dag_id: str, run_id: str | None) -> HTMLResponse:
        page, message, status = await load(dag_id, run_id)
        if page is None:
            return HTMLResponse(render_missing(dag_id, message), status_code=status)
        return HTMLResponse(render_page(page))

    @app.get("/dags/{dag_id}", response_class=HTMLResponse, dependencies=can_read_runs)
    async def latest_run(dag_id: str) -> HTMLResponse:
        return await html(dag_id, None)

    @app.get("/dags/{dag_id}/runs/{run_id}", response_class=HTMLResponse, dependencies=can_read_runs)
    async def one_run(dag_id: str, run_id: str) -> HTMLResponse:
        return await html(dag_id, run_id)

    @app.get("/api/dags/{dag_id}/runs/{run_id}", dependencies=can_read_runs)
    async def one_run_json(dag_id: str, run_id: str) -> JSONResponse:
        page, message, status = await load(dag_id, run_id)
        return JSONResponse(page) if page is not None else JSONResponse({"detail": message}, status_code=status)

    return app


def external_views() -> list[dict[str, Any]]:
    """Return the tabs the Airflow UI shows: on a plan's DAG page (latest run) and on each run."""
    return [
        {"name": "Results", "href": f"{URL_PREFIX}/dags/{{DAG_ID}}", "destination": "dag",
         "url_route": "c2b-results", "category": "c2b"},
        {"name": "Results", "href": f"{URL_PREFIX}/dags/{{DAG_ID}}/runs/{{RUN_ID}}", "destination": "dag_run",
         "url_route": "c2b-run-results", "category": "c2b"},
    ]

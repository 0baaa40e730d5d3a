"""The DAG's doc stays small whatever a plan holds (issue #11 defect 5: params went whole into doc_md)."""

from __future__ import annotations

from pathlib import Path

from c2b.airflow.dag_factory import MAX_DOC_CHARS, build_dag
from c2b.plan.load import parse_plan


def test_doc_md_is_bounded_for_huge_params() -> None:
    data = {"id": "huge", "description": "d" * 50_000,
            "audience": {"segment": "x.sql", "params": {"answer": [["lol"] * 500] * 500, "text": "y" * 100_000}},
            "touches": [{"name": "t", "channel": "outbox", "template": "hi"}]}
    dag = build_dag(parse_plan(data, "huge.yaml"), Path("huge.yaml"))
    assert len(dag.doc_md) <= MAX_DOC_CHARS + 100
    assert "'lol', 'lol'" in dag.doc_md and "..." in dag.doc_md  # params shown, shortened

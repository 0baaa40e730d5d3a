"""Every validation rule of the plan language: one good and one bad example each.

A bad example must fail with a line ``<file>: <field.path>: <what is allowed / how to fix>``;
its good twin (the same field, an allowed value) must validate.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from c2b.plan.errors import PlanError
from c2b.plan.load import load_plan, parse_plan

from devtools.plan_samples import DELETE, base_plan, mutate

FILE = "dags/plans/sample_plan.yaml"

# (rule, field path to change, good value, bad value, field path named by the error, text in the error)
RULES = [
    ("id format", "id", "sample_plan", "Sample-Plan", "id", "lower_snake_case"),
    ("unknown top-level field", "schedul", DELETE, "@daily", "schedul", "did you mean 'schedule'?"),
    ("unknown nested field", "delivery.pagesize", DELETE, 10, "delivery.pagesize", "allowed here: shards"),
    ("tags are text", "tags", ["a", "b"], [""], "tags[0]", "must not be empty"),
    ("schedule preset", "schedule", "@hourly", "@fortnightly", "schedule", "unknown preset"),
    ("schedule cron", "schedule", "0 9 * * 1-5", "0 25 * * *", "schedule", "5-field cron"),
    ("schedule asset", "schedule", {"asset": "warehouse://c2b/nps"}, {"asset": "a b"}, "schedule.asset", "URI"),
    ("schedule asset shape", "schedule", {"asset": "x://y"}, {"assets": "x://y"}, "schedule", "{asset:"),
    ("airflow asset scheme reserved", "schedule", {"asset": "s3://b/k"}, {"asset": "airflow://x"},
     "schedule.asset", "reserved"),
    ("manual schedule", "schedule", None, 5, "schedule", "cron expression"),
    ("start_date is a date", "start_date", "2026-03-01", "next monday", "start_date", "date like"),
    ("send_hours format", "window.send_hours", "20:00-08:00", "9-21", "window.send_hours", "HH:MM-HH:MM"),
    ("send_hours range", "window.send_hours", "00:00-23:59", "09:00-24:00", "window.send_hours", "hours are 00-23"),
    ("send_hours not empty", "window.send_hours", None, "09:00-09:00", "window.send_hours", "empty window"),
    ("window timezone", "window.timezone", "Europe/London", "Mars/Olympus", "window.timezone", "IANA"),
    ("window end after start", "window.end", "2026-01-01", "2025-12-31", "window.end", "before window.start"),
    ("window end after start_date", "window", {"end": "2026-06-30"}, {"end": "2025-06-30"}, "window.end",
     "before start_date"),
    ("audience all", "audience", {"all": True}, {"all": True, "segment": "nps_detractors.sql"},
     "audience.segment", "remove 'all: true'"),
    ("audience needs a segment", "audience.segment", "cancelled_for_reason.sql", DELETE, "audience.segment",
     "or 'all: true'"),
    ("segment file name", "audience.segment", "cancelled_for_reason.sql", "../secrets.sql", "audience.segment",
     "under include/sql/segments"),
    ("segment file exists", "audience.segment", "cancelled_for_reason.sql", "cancelled_for_reasons.sql",
     "audience.segment", "did you mean 'cancelled_for_reason.sql'?"),
    ("params cover placeholders", "audience.params.days", 7, DELETE, "audience.params", "missing days"),
    ("params are placeholders", "audience.params.dayz", DELETE, 7, "audience.params.dayz", "no placeholder :'dayz'"),
    ("param type", "audience.params.days", 14, "14 days", "audience.params.days", "whole number"),
    ("param choices", "audience.params.reason", "data_privacy_worry", "too_cheap", "audience.params.reason",
     "use one of: price_too_low"),
    ("audience limit", "audience.limit", 1, 0, "audience.limit", "must be > 0"),
    ("exclude shape", "audience.exclude[0]", {"suppression_list": "opt_outs"},
     {"suppression_list": "opt_outs", "contacted_within_days": 3}, "audience.exclude[0]", "exactly one of"),
    ("exclude contacted days", "audience.exclude[1].contacted_within_days", 3650, 0,
     "audience.exclude[1].contacted_within_days", "must be >= 1"),
    ("exclude list name", "audience.exclude[0].suppression_list", "vip.opt-outs", "VIP opt outs",
     "audience.exclude[0].suppression_list", "a list name"),
    ("exclude params need a segment", "audience.exclude[0]", {"segment": "all_users.sql"},
     {"suppression_list": "vip", "params": {"a": 1}}, "audience.exclude[0].params", "only goes with 'segment'"),
    ("exclude segment params", "audience.exclude[0]", {"segment": "nps_detractors.sql",
                                                      "params": {"max_score": 6, "days": 30}},
     {"segment": "nps_detractors.sql", "params": {"max_score": 6}}, "audience.exclude[0].params", "missing days"),
    ("variants name touches", "experiment.variants.coupon.touches", ["coupon_push"], ["coupon_psh"],
     "experiment.variants.coupon.touches[0]", "did you mean 'coupon_push'?"),
    ("weights sum > 0", "experiment.variants", {"a": {"weight": 0, "touches": ["coupon_push"]},
                                                "b": {"weight": 1, "touches": ["red_packet_sms"]}},
     {"a": {"weight": 0, "touches": ["coupon_push"]}, "b": {"weight": 0, "control": True}},
     "experiment.variants", "sum to more than 0"),
    ("weight >= 0", "experiment.variants.coupon.weight", 0, -1, "experiment.variants.coupon.weight", ">= 0"),
    ("weight is whole", "experiment.variants.coupon.weight", 3, 2.5, "experiment.variants.coupon.weight",
     "whole number"),
    ("control has no touches", "experiment.variants.control.touches", [], ["coupon_push"],
     "experiment.variants.control.touches", "control variant gets no touches"),
    ("variant names", "experiment.variants", {"arm_a": {"weight": 1, "touches": ["coupon_push"]}},
     {"Arm A": {"weight": 1, "touches": ["coupon_push"]}}, "experiment.variants.Arm A", "lower_snake_case"),
    ("salt not empty", "experiment.salt", "s", "", "experiment.salt", "must not be empty"),
    ("at least one touch", "touches", base_plan()["touches"], [], "touches", "at least 1"),
    ("touch names unique", "touches[1].name", "red_packet_sms", "coupon_push", "touches[1].name", "unique"),
    ("channel", "touches[0].channel", "private_domain", "email", "touches[0].channel",
     "use one of: push, sms, inapp"),
    ("connection defaults per channel", "touches[0]", {"name": "coupon_push", "channel": "inapp", "template": "hi"},
     {"name": "coupon_push", "channel": "push", "template": "hi", "connection": ""}, "touches[0].connection",
     "Airflow Connection id"),
    ("connection id", "touches[0].connection", "c2b.push-1", "my secret token", "touches[0].connection",
     "Airflow Connection id"),
    ("template compiles", "touches[1].template", "{% if city %}{{ city }}{% endif %}", "{% if city %}{{ city }}",
     "touches[1].template", "does not compile"),
    ("template filters", "touches[1].template", "{{ nickname | title }}", "{{ nickname | titel }}",
     "touches[1].template", "did you mean 'title'?"),
    ("template attributes", "touches[1].template", "{{ city }} {{ variant }}", "{{ nick_name }}",
     "touches[1].template", "unknown attribute 'nick_name'"),
    ("template macros", "touches[1].template", "{% macro hi(n) %}Hi {{ n }}{% endmacro %}{{ hi(nickname) }}",
     "{% macro hi(n) %}Hi {{ nick }}{% endmacro %}{{ hi(nickname) }}", "touches[1].template",
     "unknown attribute 'nick'"),
    ("template loops and globals", "touches[1].template",
     "{% for i in range(2) %}{{ loop.index }}{{ i }}{% endfor %}{% set x = city %}{{ x }}",
     "{% for i in range(2) %}{{ loop.index }}{{ j }}{% endfor %}", "touches[1].template", "unknown attribute 'j'"),
    ("template offer fields", "touches[0].template", "{{ offer.currency }}", "{{ offer.amout }}",
     "touches[0].template", "did you mean 'amount'?"),
    ("template needs the offer", "touches[0].offer", {"type": "red_packet", "amount": 5}, None,
     "touches[0].template", "reads offer.amount but the touch has no offer"),
    ("template offer values", "touches[0].offer", {"type": "red_packet", "amount": 5}, {"type": "cs_call"},
     "touches[0].template", "the offer sets no amount"),
    ("template assets", "touches[1].template", "{{ assets.link }}", "{{ assets.video }}",
     "touches[1].template", "add assets.video"),
    ("asset keys", "touches[0].assets", {"video": "https://e.com/v.mp4", "title": "Coupon", "position": "banner"},
     {"qr": "https://e.com/q.png"}, "touches[0].assets.qr", "allowed: link, image, video, title, position"),
    ("asset URLs", "touches[1].assets.link", "http://e.com/x", "e.com/x", "touches[1].assets.link", "http"),
    ("asset position", "touches[0].assets", {"position": "popup"}, {"position": "top left"},
     "touches[0].assets.position", "in-app position"),
    ("coupon amount required", "touches[0].offer.amount", 1.5, DELETE, "touches[0].offer.amount",
     "required for a price_up_coupon"),
    ("red packet amount required", "touches[1].offer", {"type": "red_packet", "amount": 8},
     {"type": "red_packet"}, "touches[1].offer.amount", "required for a red_packet"),
    ("amount > 0", "touches[0].offer.amount", 0.01, 0, "touches[0].offer.amount", "must be > 0"),
    ("tutorial link required", "touches[1].offer", {"type": "tutorial", "link": "https://e.com/t"},
     {"type": "tutorial"}, "touches[1].offer.link", "required for a tutorial"),
    ("offer type", "touches[1].offer.type", "cs_call", "voucher", "touches[1].offer.type", "price_up_coupon"),
    ("currency code", "touches[0].offer.currency", "USD", "yuan", "touches[0].offer.currency", "ISO 4217"),
    ("shards power of two", "delivery.shards", 1024, 12, "delivery.shards", "power of two"),
    ("shards at most 1024", "delivery.shards", "auto", 2048, "delivery.shards", "max_map_length"),
    ("shards not a bool", "delivery.shards", 1, True, "delivery.shards", "power of two"),
    ("max_shard_members", "delivery.max_shard_members", 1, 0, "delivery.max_shard_members", ">= 1"),
    ("encoding", "delivery.encoding", "packed", "json", "delivery.encoding", "auto, zset, packed"),
    ("page_size", "delivery.page_size", 10000, 10001, "delivery.page_size", "<= 10000"),
    ("concurrency", "delivery.concurrency", 1, 0, "delivery.concurrency", ">= 1"),
    ("rate_limit", "delivery.rate_limit", None, 0, "delivery.rate_limit", "> 0"),
    ("retries", "delivery.retries", 0, -1, "delivery.retries", ">= 0"),
    ("retry_delay_seconds", "delivery.retry_delay_seconds", 0, -5, "delivery.retry_delay_seconds", ">= 0"),
    ("retry_backoff", "delivery.retry_backoff", 0, -1.0, "delivery.retry_backoff", ">= 0"),
    ("frequency_cap", "delivery.frequency_cap", 1, 0, "delivery.frequency_cap", ">= 1"),
    ("key_ttl_hours", "delivery.key_ttl_hours", 0.5, 0, "delivery.key_ttl_hours", "> 0"),
]


def lines_of(data: dict) -> list[str]:
    try:
        parse_plan(data, FILE, text=yaml.safe_dump(data, sort_keys=False), check_files=True)
    except PlanError as exc:
        return str(exc).splitlines()
    return []


def test_base_plan_is_valid() -> None:
    assert lines_of(base_plan()) == []


@pytest.mark.parametrize(("rule", "path", "good", "bad", "field", "text"), RULES, ids=[r[0] for r in RULES])
def test_rule(rule: str, path: str, good: object, bad: object, field: str, text: str) -> None:
    assert lines_of(mutate(base_plan(), path, good)) == [], f"{rule}: the good example must validate"
    lines = lines_of(mutate(base_plan(), path, bad))
    assert lines, f"{rule}: the bad example must fail"
    hits = [ln for ln in lines if ln.startswith(f"{FILE}: {field}: ")]
    assert hits, f"{rule}: no error names {field!r}: {lines}"
    assert any(text in ln for ln in hits), f"{rule}: expected {text!r} in {hits}"


def test_errors_carry_the_yaml_line(tmp_path: Path) -> None:
    path = tmp_path / "sample_plan.yaml"
    text = yaml.safe_dump(mutate(base_plan(), "experiment.variants.coupon.weight", -1), sort_keys=False)
    path.write_text(text)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    want = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.strip() == "weight: -1")
    assert info.value.line == want
    assert str(info.value).endswith(f"experiment.variants.coupon.weight: must be >= 0 (line {want})")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "sample_plan.yaml"
    path.write_text("id: sample_plan\naudience:\n  segment: [unclosed\ntouches: []\n")
    with pytest.raises(PlanError, match=r"sample_plan.yaml: not valid YAML: .* \(line \d\)"):
        load_plan(path)


def test_a_plan_is_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "sample_plan.yaml"
    path.write_text("- id: sample_plan\n")
    with pytest.raises(PlanError, match="must be a YAML mapping"):
        load_plan(path)


def test_id_equals_file_name(tmp_path: Path) -> None:
    good = tmp_path / "sample_plan.yaml"
    good.write_text(yaml.safe_dump(base_plan()))
    assert load_plan(good, check_name=True).id == "sample_plan"
    bad = tmp_path / "other_name.yaml"
    bad.write_text(yaml.safe_dump(base_plan()))
    with pytest.raises(PlanError, match=r"other_name.yaml: id: must equal the file name: rename the file to "
                                        r"sample_plan.yaml or set id: other_name"):
        load_plan(bad, check_name=True)


def test_ids_unique_across_files(tmp_path: Path) -> None:
    from c2b.cli import validate_paths

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "sample_plan.yaml").write_text(yaml.safe_dump(base_plan()))
    ok, errors = validate_paths([tmp_path / "a" / "sample_plan.yaml"])
    assert list(ok) == ["sample_plan"] and not errors
    ok, errors = validate_paths([tmp_path / "a" / "sample_plan.yaml", tmp_path / "b" / "sample_plan.yaml"])
    assert list(ok) == ["sample_plan"]
    assert len(errors) == 1 and "b/sample_plan.yaml: id: 'sample_plan' is also the id of" in str(errors[0])


def test_all_users_resolves_to_the_library_segment() -> None:
    plan = parse_plan(mutate(base_plan(), "audience", {"all": True}), FILE, check_files=True)
    assert plan.audience.segment == "all_users.sql" and plan.audience.all
    again = parse_plan(plan.model_dump(mode="json"), FILE, check_files=True)  # a dumped plan validates again
    assert again == plan


def test_every_problem_is_reported_at_once() -> None:
    data = mutate(mutate(base_plan(), "delivery.shards", 3), "touches[0].channel", "fax")
    lines = lines_of(data)
    assert any(".shards:" in ln for ln in lines) and any(".channel:" in ln for ln in lines)
    # Cross-field and repository problems of a well-typed plan come together too.
    data = mutate(mutate(base_plan(), "experiment.variants.coupon.touches", ["nope"]), "audience.params.days", "x")
    lines = lines_of(data)
    assert any("variants.coupon.touches[0]:" in ln for ln in lines), lines
    assert any("audience.params.days:" in ln for ln in lines), lines


def test_defaults_of_the_contract() -> None:
    plan = parse_plan(mutate(mutate(base_plan(), "delivery", {}), "window", {}), FILE, check_files=True)
    d = plan.delivery
    assert (d.shards, d.max_shard_members, d.encoding, d.page_size, d.concurrency, d.rate_limit, d.retries,
            d.retry_delay_seconds, d.retry_backoff, d.frequency_cap, d.key_ttl_hours) == \
        (16, 100_000, "auto", 100, 16, None, 2, 30, 0, None, 48)
    w = plan.window
    assert (w.start, w.end, w.send_hours, w.timezone, w.send_range) == (None, None, None, "Asia/Shanghai", None)
    audience = parse_plan(mutate(base_plan(), "audience", {"segment": "all_users.sql"}), FILE).audience
    assert (audience.all, audience.params, audience.exclude, audience.limit) == (False, {}, [], None)


def test_gateway_channels_default_their_connection() -> None:
    data = mutate(mutate(base_plan(), "touches[0].connection"), "touches[1].channel", "outbound_call")
    plan = parse_plan(mutate(data, "touches[1].connection"), FILE)
    assert [t.connection for t in plan.touches] == ["c2b_push", "c2b_call"]
    inapp = parse_plan(mutate(base_plan(), "touches[0]", {"name": "coupon_push", "channel": "inapp",
                                                          "template": "hi"}), FILE)
    assert inapp.touches[0].connection is None


def test_send_range_parses_overnight_windows() -> None:
    from datetime import time

    from c2b.delivery.controls import quiet_hours

    for text, want in (("20:30-23:59", (time(20, 30), time(23, 59))), ("22:00-07:30", (time(22, 0), time(7, 30)))):
        plan = parse_plan(mutate(base_plan(), "window.send_hours", text), FILE)
        assert plan.window.send_range == want == quiet_hours.parse_send_hours(text)


def test_repository_checks_are_opt_in_for_data_built_in_code() -> None:
    """``load_plan`` (a file) checks segments and templates; ``parse_plan`` on data only when asked."""
    data = mutate(base_plan(), "audience", {"segment": "elsewhere.sql"})
    assert parse_plan(data, FILE).audience.segment == "elsewhere.sql"
    with pytest.raises(PlanError, match="no segment file include/sql/segments/elsewhere.sql"):
        parse_plan(data, FILE, check_files=True)


@pytest.mark.parametrize("channel", [{"type": "price_up_coupon"}, ["sms"], 7])
def test_a_channel_that_is_not_a_name_is_a_plan_error(channel: object) -> None:
    # Found by test_plan_properties: a mapping here raised TypeError (unhashable) from the
    # connection default instead of the plan error naming the field.
    data = {"id": "p", "audience": {"all": True}, "touches": [{"name": "a", "channel": channel, "template": "hi"}]}
    with pytest.raises(PlanError, match=r"p.yaml: touches\[0\].channel: .* is not allowed; use one of: push"):
        parse_plan(data, "p.yaml")

"""``only_touches`` leaves whole arms untouched: their users are not targeted, not holdout (#11.8)."""

from __future__ import annotations

from pathlib import Path

from devtools.deliverkit import load_audience, make_plan, plan_dict
from devtools.gateway import Gateway


def _three_arm_plan():  # -> Plan
    data = plan_dict("p_only", touches=2)
    data["experiment"] = {"salt": "s", "variants": {
        "a": {"weight": 40, "touches": ["t0"]},
        "b": {"weight": 40, "touches": ["t1"]},
        "control": {"weight": 20, "control": True}}}
    return make_plan(data)


def test_untouched_outcomes_name_the_holdout_and_the_filtered_arms() -> None:
    from c2b.delivery.targeting import untouched_outcomes

    plan = _three_arm_plan()
    assert untouched_outcomes(plan) == {"a": "a|-|not_targeted", "b": "b|-|not_targeted",
                                                "control": "control|-|holdout"}


def test_only_touches_counts_filtered_arms_as_not_targeted(redis_client, tmp_path: Path) -> None:
    from c2b import steps
    from c2b.channels import ChannelConfig, make_channel
    from c2b.hashing import VariantPicker
    from c2b.results.report import summarize

    plan = _three_arm_plan()
    users = [f"n{i:04d}" for i in range(600)]
    picker = VariantPicker(plan.salt, plan.variant_weights)
    arms = {v: sum(1 for u in users if picker.pick(u.encode()) == v) for v in ("a", "b", "control")}
    load_audience(redis_client, plan, "r1", users, tmp_path)
    with Gateway() as gw:
        channels = {t.name: make_channel(t.channel, ChannelConfig(url=gw.url, conn_id="t")) for t in plan.touches}
        stats = steps.step_deliver(plan, "r1", 1, redis_client, channels, lambda: False, {"only_touches": ["t0"]})
        assert len(gw.record.accepted) == arms["a"]
    assert stats["counts"] == {"a|t0|sent": arms["a"], "b|-|not_targeted": arms["b"],
                               "control|-|holdout": arms["control"]}
    summary = summarize(plan.id, "r1", {"counts": {}, "path": "x"}, [stats], [1])
    assert summary["per_touch"]["-"] == {"not_targeted": arms["b"], "holdout": arms["control"]}

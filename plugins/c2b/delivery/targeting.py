"""Who a run leaves untouched, and why: the holdout, or users a run's ``only_touches`` filtered out.

A control (holdout) arm gets no touch by design and is the baseline for conversion. A treatment
arm whose touches a run's ``only_touches`` left out also gets nothing in that run, but its users
are not a control group: counting them as ``holdout`` inflates the control arm's size and skews
every comparison made against it. They are ``not_targeted`` (not targeted in this run).
"""

from __future__ import annotations

from c2b.plan.model import Plan

HOLDOUT = "holdout"
NOT_TARGETED = "not_targeted"


def untouched_outcomes(plan: Plan) -> dict[str, str]:
    """Return, per variant, the ``variant|-|outcome`` counter a user of it gets no touch under.

    ``holdout`` for arms without touches in the plan; ``not_targeted`` for arms that have touches
    (a run whose ``only_touches`` leaves such an arm none: the caller only asks for those arms).
    """
    out = {}
    for variant in plan.variant_weights:
        touches = [t.name for t in plan.touches_of(variant)]
        outcome = HOLDOUT if not touches else NOT_TARGETED
        out[variant] = f"{variant}|-|{outcome}"
    return out

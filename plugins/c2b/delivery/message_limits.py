"""Each touch's template, compiled with its channel's message limit (``Channel.max_text_chars``).

An SMS that renders to 5 MB must not be "sent": the template renders within its channel's limit
and a time limit, or the message is recorded failed with the reason (see
:mod:`c2b.plan.template_limits`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from c2b.plan.model import Plan
from c2b.plan.template_limits import DEFAULT_MAX_CHARS, BoundedTemplate
from c2b.plan.templates import compile_bounded


def bounded_templates(plan: Plan, channels: Mapping[str, Any]) -> dict[str, BoundedTemplate]:
    """Return the plan's templates by touch name, each bounded by its touch's channel."""
    out = {}
    for t in plan.touches:
        channel = channels.get(t.name)
        limit = int(getattr(channel, "max_text_chars", 0) or DEFAULT_MAX_CHARS)
        out[t.name] = compile_bounded(t.template, limit, getattr(channel, "name", t.channel))
    return out

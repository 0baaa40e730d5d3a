"""Turn a page of a shard's users into work: one :class:`Item` per (touch, uid), and its message.

Pure: the caller reads the users' stored attributes; this module only decides which touches a
user gets (their variant, the run's ``only_touches``) and renders the message a touch sends.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from c2b.channels.base import Message, new_message
from c2b.delivery.controls.quiet_hours import SendWindow
from c2b.delivery.message_limits import bounded_templates
from c2b.delivery.targeting import untouched_outcomes
from c2b.hashing import VariantPicker
from c2b.plan.model import Plan, Touch
from c2b.plan.template_limits import BoundedTemplate

Attrs = dict[str, dict[str, Any]]  # uid -> its stored attributes


def idempotency_key(plan_id: str, run_id: str, touch: str, uid: str) -> str:
    """Return the key every send of (plan, run, touch, uid) carries, the same on every retry."""
    return hashlib.sha256(f"{plan_id}\x1f{run_id}\x1f{touch}\x1f{uid}".encode("utf-8", "replace")).hexdigest()[:32]


def key_prefix(plan_id: str, run_id: str, touch: str) -> Any:
    """Return a sha256 that has hashed the (plan, run, touch) part of :func:`idempotency_key`.

    ``prefix.copy()`` fed ``uid.encode("utf-8", "replace")`` gives the same digest: UTF-8 (with
    ``replace``) encodes code point by code point, so the encoding of the joined string is the
    encodings of its parts joined.
    """
    return hashlib.sha256(f"{plan_id}\x1f{run_id}\x1f{touch}\x1f".encode("utf-8", "replace"))


@dataclass(slots=True)
class Item:
    """One (touch, uid) on its way: ledger field, counters, the message, and its page."""

    field: str
    variant: str
    touch: str
    uid: str
    day: str
    page: int  # start rank of its page; -1 for the deferred pass (no checkpoint)
    message: Message | None = None
    channel: str = ""  # the touch's channel (frequency caps per channel)

    @property
    def vt(self) -> str:
        return f"{self.variant}|{self.touch}"


@dataclass
class PageWork:
    """The items of one page of users, their attributes, and the control (holdout) counters."""

    items: list[Item]
    attrs: Attrs
    holdout: dict[str, int] = field(default_factory=dict)
    held_out: list[str] = field(default_factory=list)  # uids of control arms (they enter the plan too)


@dataclass(frozen=True)
class _TouchParts:
    """What every message of one touch shares, made once per builder instead of per message."""

    name: str
    channel: str
    template: BoundedTemplate
    key: Any  # sha256 of the idempotency key's (plan, run, touch) prefix: copied per message
    builtins: dict[str, Any]  # the template's per-touch built-in names (offer, assets, plan, touch)
    assets: dict[str, str]  # Message.assets: one dict shared by the touch's messages (never mutated)
    offer: dict[str, Any] | None


class WorkBuilder:
    """Know a plan's touches by variant, their templates, assets and offers; build items and messages."""

    def __init__(self, plan: Plan, run_id: str, window: SendWindow, clock: Callable[[], float],
                 only_touches: set[str] | None = None, channels: Mapping[str, Any] | None = None) -> None:
        self.plan = plan
        self.run_id = run_id
        self.window = window
        self.clock = clock
        self.picker = VariantPicker(plan.salt, plan.variant_weights)
        self.touches: dict[str, Touch] = {t.name: t for t in plan.touches}
        self.templates = bounded_templates(plan, channels or {})  # per channel: max_text_chars, time
        self.assets: dict[str, dict[str, str]] = {t.name: {str(k): v for k, v in t.assets.items()}
                                                   for t in plan.touches}
        self.offers = {t.name: (t.offer.model_dump(exclude_none=True) if t.offer else None) for t in plan.touches}
        self.touches_by_variant = {
            v: [t for t in plan.touches_of(v) if only_touches is None or t.name in only_touches]
            for v in plan.variant_weights}
        self.untouched = untouched_outcomes(plan)
        self.parts = {t.name: _TouchParts(
            t.name, t.channel, self.templates[t.name], key_prefix(plan.id, run_id, t.name),
            {"offer": self.offers[t.name] or {}, "assets": t.assets, "plan": plan.id, "touch": t.name},
            self.assets[t.name], self.offers[t.name]) for t in plan.touches}
        # Per variant: (touch name, ledger field prefix, channel) of each touch it sends.
        self._item_parts = {v: [(t.name, f"{t.name}|", t.channel) for t in ts]
                            for v, ts in self.touches_by_variant.items()}

    def page(self, uids: Sequence[str], attrs: Attrs, page: int,
             wanted: Mapping[str, set[str]] | None = None) -> PageWork:
        """Return the (touch, uid) items of ``uids`` (only the ``wanted`` touches, when given)."""
        items: list[Item] = []
        holdout: Counter[str] = Counter()
        held_out: list[str] = []
        now = datetime.fromtimestamp(self.clock(), UTC)
        days: dict[Any, str] = {}  # timezone -> the users' local day at ``now`` (few zones a page)
        item_parts = self._item_parts
        for uid, variant in zip(uids, self.picker.pick_page(uids), strict=True):
            parts = item_parts[variant]
            if wanted is not None:
                want = wanted.get(uid, ())
                parts = [p for p in parts if p[0] in want]
            elif not parts:
                outcome = self.untouched[variant]  # holdout, or not_targeted by only_touches
                holdout[outcome] += 1
                if outcome.endswith("|holdout"):
                    held_out.append(uid)
                continue
            tz = attrs[uid].get("timezone")
            day = days.get(tz) if tz is None or isinstance(tz, str) else None
            if day is None:
                day = self.window.local_day(now, tz)
                if tz is None or isinstance(tz, str):
                    days[tz] = day
            for name, prefix, channel in parts:
                items.append(Item(prefix + uid, variant, name, uid, day, page, None, channel))
        return PageWork(items, attrs, dict(holdout), held_out)

    def messages(self, items: Sequence[Item], attrs: Attrs) -> list[Message | Exception]:
        """Return the message of each item (``attrs`` by uid), or in its place the error its template
        raised for that user; each touch's messages are rendered as one batch
        (:meth:`BoundedTemplate.render_many`: one clock read a batch instead of several a message)."""
        out: list[Message | Exception | None] = [None] * len(items)
        by_touch: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            by_touch.setdefault(it.touch, []).append(i)
        plan_id, run_id = self.plan.id, self.run_id
        for touch, where in by_touch.items():
            p = self.parts[touch]
            values = []
            for i in where:
                it = items[i]
                builtins = p.builtins.copy()  # as message(): {**attrs, uid, variant, offer, assets, plan, touch}
                builtins["uid"] = it.uid
                builtins["variant"] = it.variant
                values.append((builtins, attrs[it.uid]))
            for i, text in zip(where, p.template.render_many(values), strict=True):
                if isinstance(text, Exception):
                    out[i] = text
                    continue
                it = items[i]
                key = p.key.copy()
                key.update(it.uid.encode("utf-8", "replace"))
                out[i] = new_message(key.hexdigest()[:32], plan_id, run_id, p.name, p.channel, it.uid, it.variant,
                                     text, p.assets, p.offer)
        return out  # type: ignore[return-value]  # every slot is filled above

    def message(self, item: Item, attrs: dict[str, Any]) -> Message:
        """Render the message of ``item``; raises whatever the template raises (missing attribute...)."""
        p = self.parts[item.touch]
        uid = item.uid
        builtins = p.builtins.copy()  # the template sees {**attrs, uid, variant, offer, assets, plan, touch}
        builtins["uid"] = uid
        builtins["variant"] = item.variant
        text = p.template.render_with(builtins, attrs)
        key = p.key.copy()
        key.update(uid.encode("utf-8", "replace"))
        return new_message(key.hexdigest()[:32], self.plan.id, self.run_id, p.name, p.channel, uid, item.variant,
                           text, p.assets, p.offer)

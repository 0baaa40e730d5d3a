"""Quiet hours: a user is only messaged inside the plan's ``send_hours``, in the user's own timezone.

The timezone comes from the segment's ``timezone`` column when it holds an IANA name, else from the
plan's ``window.timezone``. ``send_hours`` is ``"HH:MM-HH:MM"``; an end before the start wraps past
midnight (``"20:00-02:00"``). The window's ``start``/``end`` dates bound the days, also in the user's
timezone.

For a user who is outside the hours now, :meth:`SendWindow.next_open` says when they may be
messaged next (the engine parks them until then) or ``None`` when the plan's window has closed for
good (they are recorded as ``expired``, never sent).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo


def parse_send_hours(text: str) -> tuple[time, time]:
    """Return (start, end) of ``"HH:MM-HH:MM"``; raise ``ValueError`` saying what is wrong."""
    try:
        a, b = (part.strip() for part in text.split("-"))
        start, end = time.fromisoformat(a), time.fromisoformat(b)
    except ValueError:
        raise ValueError(f'send_hours must look like "09:00-21:00", got {text!r}') from None
    if start == end:
        raise ValueError(f"send_hours {text!r} is empty (start equals end)")
    return start, end


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except Exception:  # unknown names and malformed strings alike
        return None


@dataclass(frozen=True)
class SendWindow:
    """The plan's window (dates and daily hours) evaluated per user."""

    default_tz: str = "Asia/Shanghai"
    send_hours: str | None = None
    start: date | None = None
    end: date | None = None

    @classmethod
    def of(cls, window: Any) -> SendWindow:
        """Build from a plan's ``window`` (``None`` means always open)."""
        if window is None:
            return cls()
        return cls(window.timezone, window.send_hours, window.start, window.end)

    @property
    def always_open(self) -> bool:
        return self.send_hours is None and self.start is None and self.end is None

    def zone(self, tz_name: str | None) -> ZoneInfo:
        """Return the user's zone (the plan's default when the name is missing or unknown)."""
        return (_zone(tz_name) if tz_name else None) or _zone(self.default_tz) or ZoneInfo("UTC")

    def _open_at(self, local: datetime) -> bool:
        d = local.date()
        if (self.start and d < self.start) or (self.end and d > self.end):
            return False
        if self.send_hours is None:
            return True
        a, b = parse_send_hours(self.send_hours)
        t = local.time()
        return a <= t < b if a < b else (t >= a or t < b)

    def next_open(self, now: datetime, tz_name: str | None = None) -> datetime | None:
        """Return ``now`` if the user may be messaged now, the next allowed moment, or ``None``.

        ``now`` must be timezone-aware; the answer is in UTC.
        """
        zone = self.zone(tz_name)
        local = now.astimezone(zone)
        if self._open_at(local):
            return now.astimezone(UTC)
        a = parse_send_hours(self.send_hours)[0] if self.send_hours else time(0, 0)
        day = max(local.date(), self.start) if self.start else local.date()
        for _ in range(3):  # today's or tomorrow's opening (or the window's first day)
            candidate = datetime.combine(day, a, tzinfo=zone)
            if candidate > local and self._open_at(candidate):
                return candidate.astimezone(UTC)
            day += timedelta(days=1)
        return None

    def local_day(self, now: datetime, tz_name: str | None = None) -> str:
        """Return the user's calendar day as ``YYYYMMDD`` (the frequency cap's day)."""
        return now.astimezone(self.zone(tz_name)).strftime("%Y%m%d")

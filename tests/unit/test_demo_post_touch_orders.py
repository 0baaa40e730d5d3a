"""The demo clock's post-touch orders: deterministic, inside the window, with the planted uplifts."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from devtools.demo_warehouse import POST_TOUCH_BASE_RATE, POST_TOUCH_UPLIFT, post_touch_orders

T0 = datetime(2026, 11, 27, 10, 0)
USERS = 60_000


def _users(offer: str | None) -> list[tuple[str, str | None, datetime]]:
    return [(str(1_000_000_000 + i), offer, T0) for i in range(USERS)]


def test_same_users_same_orders_inside_the_window() -> None:
    users = _users("price_up_coupon")[:5000]
    first, again = post_touch_orders(users, "p"), post_touch_orders(users, "p")
    assert first.equals(again)
    times = first.column("created_at").to_pylist()
    assert all(T0 < t < T0 + timedelta(days=7) for t in times)
    assert not post_touch_orders(users, "another_plan").equals(first)  # each plan draws its own


@pytest.mark.parametrize("offer", [None, "price_up_coupon", "red_packet"])
def test_rates_are_the_planted_ones(offer: str | None) -> None:
    rate = post_touch_orders(_users(offer), "p").num_rows / USERS
    planted = POST_TOUCH_BASE_RATE + POST_TOUCH_UPLIFT.get(offer or "", 0.0)
    assert rate == pytest.approx(planted, abs=4 * (planted * (1 - planted) / USERS) ** 0.5)

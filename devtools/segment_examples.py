"""Example params for every segment of the library that select users in the demo warehouse."""

from __future__ import annotations

EXAMPLES: dict[str, dict] = {
    "all_users.sql": {},
    "cancelled_for_reason.sql": {"reason": "price_too_low", "days": 30},
    "high_value_cancellations.sql": {"min_price": 3000, "days": 30},
    "new_users_by_channel.sql": {"channel": "douyin_ad", "days": 60},
    "nps_detractors.sql": {"max_score": 6, "days": 90},
    "nps_promoters.sql": {"min_score": 9, "days": 90},
    "low_order_ratings.sql": {"max_rating": 2, "days": 60},
    "survey_answers.sql": {"survey": "privacy_concern", "answer": "yes", "days": 90},
    "cs_complaints.sql": {"topic": "any", "days": 30},
    "inactive_users.sql": {"days": 90},
    "opted_out.sql": {},
    "ordered_within_days.sql": {"days": 14},
}

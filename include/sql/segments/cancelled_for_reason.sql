-- Users who cancelled an order for :reason within the last :days days, not opted out.
-- One row per user: their latest such cancellation.
-- params: reason (text: price_too_low, data_privacy_worry, changed_mind, slow_pickup, other), days (integer, 1-3650)
-- columns: uid, nickname, city, timezone, last_item, quoted_price, cancel_reason, cancelled_at
-- Portable: the same text runs on DuckDB and PostgreSQL (CAST rather than a double-colon cast; INTERVAL '1 day').
-- "Last N days" counts back from current_date, so the window moves with the calendar.
WITH recent AS (
    SELECT c.uid, o.item, o.quoted_price, c.reason, c.cancelled_at,
           row_number() OVER (PARTITION BY c.uid ORDER BY c.cancelled_at DESC, c.order_id DESC) AS rn
    FROM order_cancellations c
    JOIN orders o ON o.order_id = c.order_id
    WHERE c.reason = :reason
      AND c.cancelled_at >= current_date - CAST(:days AS INTEGER) * INTERVAL '1 day'
)
SELECT u.uid, u.nickname, u.city, u.timezone, r.item AS last_item, r.quoted_price,
       r.reason AS cancel_reason, r.cancelled_at
FROM recent r
JOIN users u ON u.uid = r.uid
WHERE r.rn = 1 AND NOT u.opted_out
ORDER BY u.uid

-- Users who cancelled an order quoted at :min_price or more within the last :days days, whatever the
-- reason, not opted out; worth a 1-to-1 customer-service call. One row per user: their latest such
-- cancellation.
-- params: min_price (numeric, CNY, 0-100000000), days (integer, 1-3650)
-- columns: uid, nickname, city, timezone, phone, last_item, quoted_price, cancel_reason, cancelled_at
WITH recent AS (
    SELECT c.uid, o.item, o.quoted_price, c.reason, c.cancelled_at,
           row_number() OVER (PARTITION BY c.uid ORDER BY c.cancelled_at DESC, c.order_id DESC) AS rn
    FROM order_cancellations c
    JOIN orders o ON o.order_id = c.order_id
    WHERE o.quoted_price >= CAST(:min_price AS NUMERIC)
      AND c.cancelled_at >= current_date - CAST(:days AS INTEGER) * INTERVAL '1 day'
)
SELECT u.uid, u.nickname, u.city, u.timezone, u.phone, r.item AS last_item, r.quoted_price,
       r.reason AS cancel_reason, r.cancelled_at
FROM recent r
JOIN users u ON u.uid = r.uid
WHERE r.rn = 1 AND NOT u.opted_out
ORDER BY u.uid

-- Users who cancelled an order quoted at :min_price or more within the last :days days, not opted
-- out. One row per user: their most valuable such cancellation.
-- params: min_price (numeric), days (integer)
-- columns: uid, nickname, city, timezone, phone, last_item, quoted_price, cancel_reason, cancelled_at
WITH recent AS (
    SELECT c.uid, o.item, o.quoted_price, c.reason, c.cancelled_at,
           row_number() OVER (PARTITION BY c.uid ORDER BY o.quoted_price DESC, c.cancelled_at DESC) AS rn
    FROM order_cancellations c
    JOIN orders o ON o.order_id = c.order_id
    WHERE o.quoted_price >= CAST(:min_price AS DECIMAL(10, 2))
      AND c.cancelled_at >= current_date - CAST(:days AS INTEGER) * INTERVAL '1 day'
)
SELECT u.uid, u.nickname, u.city, u.timezone, u.phone, r.item AS last_item, r.quoted_price,
       r.reason AS cancel_reason, r.cancelled_at
FROM recent r
JOIN users u ON u.uid = r.uid
WHERE r.rn = 1 AND NOT u.opted_out
ORDER BY u.uid

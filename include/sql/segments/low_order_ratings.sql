-- Users who rated an order :max_rating stars or fewer (of 5) within the last :days days, not opted
-- out. One row per user: their latest such rating and the item of that order.
-- params: max_rating (integer, 1-5), days (integer, 1-3650)
-- columns: uid, nickname, city, timezone, last_item, rating, comment, rated_at
WITH low AS (
    SELECT r.uid, o.item, r.rating, r.comment, r.rated_at,
           row_number() OVER (PARTITION BY r.uid ORDER BY r.rated_at DESC, r.order_id DESC) AS rn
    FROM order_ratings r
    JOIN orders o ON o.order_id = r.order_id
    WHERE r.rating <= CAST(:max_rating AS INTEGER)
      AND r.rated_at >= current_date - CAST(:days AS INTEGER) * INTERVAL '1 day'
)
SELECT u.uid, u.nickname, u.city, u.timezone, l.item AS last_item, l.rating, l.comment, l.rated_at
FROM low l
JOIN users u ON u.uid = l.uid
WHERE l.rn = 1 AND NOT u.opted_out
ORDER BY u.uid

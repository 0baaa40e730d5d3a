-- Users whose latest NPS answer within the last :days days scored :max_score or less, not opted out.
-- params: max_score (integer), days (integer)
-- columns: uid, nickname, city, timezone, phone, score, answered_at
WITH latest AS (
    SELECT n.uid, n.score, n.answered_at,
           row_number() OVER (PARTITION BY n.uid ORDER BY n.answered_at DESC) AS rn
    FROM nps n
    WHERE n.answered_at >= current_date - CAST(:days AS INTEGER) * INTERVAL '1 day'
)
SELECT u.uid, u.nickname, u.city, u.timezone, u.phone, l.score, l.answered_at
FROM latest l
JOIN users u ON u.uid = l.uid
WHERE l.rn = 1 AND l.score <= CAST(:max_score AS INTEGER)
  AND NOT u.opted_out
ORDER BY u.uid

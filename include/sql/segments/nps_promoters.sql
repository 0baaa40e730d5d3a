-- Users whose latest NPS answer within the last :days days scored :min_score or higher (promoters
-- score 9-10), not opted out: candidates for a referral red packet. One row per user.
-- params: min_score (integer, 0-10), days (integer, 1-3650)
-- columns: uid, nickname, city, timezone, score, answered_at
WITH latest AS (
    SELECT n.uid, n.score, n.answered_at,
           row_number() OVER (PARTITION BY n.uid ORDER BY n.answered_at DESC, n.score) AS rn
    FROM nps n
    WHERE n.answered_at >= current_date - CAST(:days AS INTEGER) * INTERVAL '1 day'
)
SELECT u.uid, u.nickname, u.city, u.timezone, l.score, l.answered_at
FROM latest l
JOIN users u ON u.uid = l.uid
WHERE l.rn = 1 AND l.score >= CAST(:min_score AS INTEGER) AND NOT u.opted_out
ORDER BY u.uid

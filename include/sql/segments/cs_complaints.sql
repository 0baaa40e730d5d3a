-- Users who gave negative customer-service feedback (chat, phone or IM) about :topic within the
-- last :days days, not opted out; topic 'any' takes every topic. One row per user: the latest
-- complaint, with how many they made in the window.
-- params: topic (text: price, privacy, logistics, inspection, refund, other, any), days (integer, 1-3650)
-- columns: uid, nickname, city, timezone, phone, topic, source, complained_at, complaints
WITH negative AS (
    SELECT f.uid, f.topic, f.source, f.created_at,
           count(*) OVER (PARTITION BY f.uid) AS complaints,
           row_number() OVER (PARTITION BY f.uid ORDER BY f.created_at DESC, f.topic, f.source) AS rn
    FROM cs_feedback f
    WHERE f.sentiment = 'negative'
      AND (f.topic = :topic OR :topic = 'any')
      AND f.created_at >= current_date - CAST(:days AS INTEGER) * INTERVAL '1 day'
)
SELECT u.uid, u.nickname, u.city, u.timezone, u.phone, n.topic, n.source, n.created_at AS complained_at,
       n.complaints
FROM negative n
JOIN users u ON u.uid = n.uid
WHERE n.rn = 1 AND NOT u.opted_out
ORDER BY u.uid

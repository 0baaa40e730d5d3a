-- Users whose latest answer to survey :survey within the last :days days was :answer, not opted
-- out. Surveys in the demo data: why_sell (upgrade, need_cash, unused, other) and privacy_concern
-- (yes, no): "yes" there is the audience of the data-clearance tutorial.
-- params: survey (text: why_sell, privacy_concern), answer (text), days (integer, 1-3650)
-- columns: uid, nickname, city, timezone, survey, question, answer, answered_at
WITH latest AS (
    SELECT s.uid, s.survey, s.question, s.answer, s.answered_at,
           row_number() OVER (PARTITION BY s.uid ORDER BY s.answered_at DESC, s.answer) AS rn
    FROM surveys s
    WHERE s.survey = :survey
      AND s.answered_at >= current_date - CAST(:days AS INTEGER) * INTERVAL '1 day'
)
SELECT u.uid, u.nickname, u.city, u.timezone, l.survey, l.question, l.answer, l.answered_at
FROM latest l
JOIN users u ON u.uid = l.uid
WHERE l.rn = 1 AND l.answer = :answer AND NOT u.opted_out
ORDER BY u.uid

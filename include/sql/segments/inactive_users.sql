-- Users not active for more than :days days (last activity before today minus :days days), not
-- opted out: a win-back audience.
-- params: days (integer, 1-3650)
-- columns: uid, nickname, city, timezone, acquisition_channel, last_active_at, inactive_days
SELECT u.uid, u.nickname, u.city, u.timezone, u.acquisition_channel, u.last_active_at,
       CAST(current_date - CAST(u.last_active_at AS DATE) AS INTEGER) AS inactive_days
FROM users u
WHERE u.last_active_at < current_date - CAST(:days AS INTEGER) * INTERVAL '1 day'
  AND NOT u.opted_out
ORDER BY u.uid

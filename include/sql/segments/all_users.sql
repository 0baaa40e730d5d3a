-- Every user who has not opted out: the "everyone" audience of a broad plan.
-- params: (none)
-- columns: uid, nickname, city, timezone, acquisition_channel
SELECT u.uid, u.nickname, u.city, u.timezone, u.acquisition_channel
FROM users u
WHERE NOT u.opted_out
ORDER BY u.uid

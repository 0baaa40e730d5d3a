-- Users who opted out of marketing messages. Every other segment here already leaves them out; use
-- this one in `audience.exclude` with segments written elsewhere that do not.
-- params: (none)
-- columns: uid
SELECT u.uid
FROM users u
WHERE u.opted_out
ORDER BY u.uid

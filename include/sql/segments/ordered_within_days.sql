-- Users who placed an order within the last :days days (any status): an exclusion for win-back
-- plans, since these users came back on their own.
-- params: days (integer, 1-3650)
-- columns: uid
SELECT DISTINCT o.uid
FROM orders o
WHERE o.created_at >= current_date - CAST(:days AS INTEGER) * INTERVAL '1 day'
ORDER BY o.uid

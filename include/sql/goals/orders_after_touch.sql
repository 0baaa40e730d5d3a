-- Orders users placed (items sold to us) from :since until :until, cancelled ones left out.
-- One row per order: a user converts with their first; value is the quoted price in CNY.
-- params: since (timestamp), until (timestamp)
-- columns: uid, event_time, value
-- Portable: the same text runs on DuckDB and PostgreSQL.
SELECT o.uid, o.created_at AS event_time, CAST(o.quoted_price AS DOUBLE PRECISION) AS value
FROM orders o
WHERE o.created_at >= :since
  AND o.created_at < :until
  AND o.status <> 'cancelled'

-- Views for dashboards (Grafana and the like), read through a read-only
-- role (docs/operations.md). They follow the tables through migrations.
-- `ts_ms` / `bucket_ms` are the indexed columns: filter on them
-- (`ts_ms BETWEEN $__unixEpochFrom() * 1000 AND $__unixEpochTo() * 1000`)
-- and display `time`.

CREATE VIEW grafana_points AS
SELECT to_timestamp(p.ts / 1000.0) AS time,
       p.ts AS ts_ms,
       s.device_id AS device,
       s.metric,
       p.value,
       p.seq
FROM points p
JOIN series s ON s.id = p.series_id;

CREATE VIEW grafana_rollup_1m AS
SELECT to_timestamp(r.bucket / 1000.0) AS time,
       r.bucket AS bucket_ms,
       s.device_id AS device,
       s.metric,
       r.min, r.max, r.sum / r.count AS avg, r.count, r.last_value AS last
FROM rollups r
JOIN series s ON s.id = r.series_id
WHERE r.resolution = 60000;

CREATE VIEW grafana_rollup_1h AS
SELECT to_timestamp(r.bucket / 1000.0) AS time,
       r.bucket AS bucket_ms,
       s.device_id AS device,
       s.metric,
       r.min, r.max, r.sum / r.count AS avg, r.count, r.last_value AS last
FROM rollups r
JOIN series s ON s.id = r.series_id
WHERE r.resolution = 3600000;

CREATE VIEW grafana_rollup_1d AS
SELECT to_timestamp(r.bucket / 1000.0) AS time,
       r.bucket AS bucket_ms,
       s.device_id AS device,
       s.metric,
       r.min, r.max, r.sum / r.count AS avg, r.count, r.last_value AS last
FROM rollups r
JOIN series s ON s.id = r.series_id
WHERE r.resolution = 86400000;

CREATE VIEW grafana_presence AS
SELECT to_timestamp(e.at / 1000.0) AS time,
       e.at AS at_ms,
       e.device_id AS device,
       e.online,
       e.reason
FROM presence_events e;

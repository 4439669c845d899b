-- Time series on TimescaleDB: hypertables, compression, retention and a continuous aggregate.
--
-- Chunk intervals: readings 1 day (a plant with 20k tags at 1 Hz writes ~1.7e9 rows/day; a
-- chunk's indexes should fit in ~25% of RAM, and daily chunks also make retention drop exact
-- days), aggregates_1s 7 days, aggregates_1m 30 days (60x / 3600x fewer rows).
-- Compression: segmentby tag_id, orderby time, after 3 / 14 / 60 days. Late data into compressed
-- chunks is still written: INSERT ... ON CONFLICT DO NOTHING checks the unique index against the
-- compressed data (TimescaleDB >= 2.11), so replays and late arrivals never duplicate.
-- Retention: from the retention table (default 90 days of readings; see README).

CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE readings (
    time        timestamptz NOT NULL,
    tag_id      integer NOT NULL,
    v_float     double precision,
    v_int       bigint,
    v_bool      boolean,
    v_text      text,
    quality     smallint NOT NULL CHECK (quality IN (0, 1, 2)),
    status_code bigint CHECK (status_code BETWEEN 0 AND 4294967295),
    lot_id      integer,
    server_time timestamptz,
    seq         bigint NOT NULL,
    PRIMARY KEY (tag_id, time),
    CHECK (num_nonnulls(v_float, v_int, v_bool, v_text) = 1)
);
-- The primary key already serves per-tag range scans; the default time index serves time scans.
SELECT create_hypertable('readings', 'time', chunk_time_interval => interval '1 day');

CREATE TABLE aggregates_1s (
    tag_id    integer NOT NULL,
    start     timestamptz NOT NULL,
    count     integer NOT NULL CHECK (count >= 0),
    bad_count integer NOT NULL CHECK (bad_count >= 0),
    min       double precision,
    max       double precision,
    mean      double precision,
    last      double precision,
    stddev    double precision,
    twa       double precision,
    lot_id    integer,
    PRIMARY KEY (tag_id, start)
);
SELECT create_hypertable('aggregates_1s', 'start', chunk_time_interval => interval '7 days');

CREATE TABLE aggregates_1m (
    tag_id    integer NOT NULL,
    start     timestamptz NOT NULL,
    count     integer NOT NULL CHECK (count >= 0),
    bad_count integer NOT NULL CHECK (bad_count >= 0),
    min       double precision,
    max       double precision,
    mean      double precision,
    last      double precision,
    stddev    double precision,
    twa       double precision,
    lot_id    integer,
    PRIMARY KEY (tag_id, start)
);
SELECT create_hypertable('aggregates_1m', 'start', chunk_time_interval => interval '30 days');

ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_segmentby = 'tag_id',
                          timescaledb.compress_orderby = 'time');
ALTER TABLE aggregates_1s SET (timescaledb.compress, timescaledb.compress_segmentby = 'tag_id',
                               timescaledb.compress_orderby = 'start');
ALTER TABLE aggregates_1m SET (timescaledb.compress, timescaledb.compress_segmentby = 'tag_id',
                               timescaledb.compress_orderby = 'start');
SELECT add_compression_policy('readings', interval '3 days');
SELECT add_compression_policy('aggregates_1s', interval '14 days');
SELECT add_compression_policy('aggregates_1m', interval '60 days');

SELECT add_retention_policy(table_name::regclass, keep) FROM retention
WHERE table_name IN ('readings', 'aggregates_1s', 'aggregates_1m');

-- Hourly rollup for long-range trends; refreshed every 30 min over the last 7 days (late 1 m
-- windows inside that horizon are picked up). Same columns as the plain path's view.
CREATE MATERIALIZED VIEW aggregates_1h WITH (timescaledb.continuous) AS
SELECT tag_id,
       time_bucket(interval '1 hour', start) AS start,
       sum(count)::bigint AS count,
       sum(bad_count)::bigint AS bad_count,
       min(min) AS min,
       max(max) AS max,
       sum(mean * count) / NULLIF(sum(CASE WHEN mean IS NULL THEN 0 ELSE count END), 0) AS mean,
       last(last, start) AS last
FROM aggregates_1m
GROUP BY tag_id, time_bucket(interval '1 hour', start)
WITH NO DATA;
SELECT add_continuous_aggregate_policy('aggregates_1h', start_offset => interval '7 days',
                                       end_offset => interval '1 hour', schedule_interval => interval '30 minutes');

-- The plain path's partition maintenance has nothing to do here (TimescaleDB creates chunks
-- and its jobs apply retention); same signatures so the sink stays path-agnostic.
CREATE FUNCTION ps_ensure_partitions(tbl text, lo timestamptz, hi timestamptz) RETURNS integer
LANGUAGE sql AS $$ SELECT 0 $$;
CREATE FUNCTION ps_apply_retention(tbl text) RETURNS integer
LANGUAGE sql AS $$ SELECT 0 $$;

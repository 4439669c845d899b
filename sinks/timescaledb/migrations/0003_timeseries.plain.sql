-- Time series on plain PostgreSQL: native range partitioning by time.
--
-- readings and aggregates_1s: daily partitions; aggregates_1m: monthly. The sink creates
-- partitions ahead of the data it writes (ps_ensure_partitions); anything outside the covered
-- window lands in the DEFAULT partition and is moved out when its partition is created.
-- Indexes: the primary key (tag_id, time) is the idempotency key and the per-tag range index;
-- BRIN on time keeps whole-plant time scans cheap at a few KB per partition.

CREATE TABLE readings (
    time        timestamptz NOT NULL,
    tag_id      integer NOT NULL,                  -- tags.id (no FK: partitions + FK cost per row)
    v_float     double precision,
    v_int       bigint,
    v_bool      boolean,
    v_text      text,
    quality     smallint NOT NULL CHECK (quality IN (0, 1, 2)),   -- good / uncertain / bad
    status_code bigint CHECK (status_code BETWEEN 0 AND 4294967295), -- raw OPC-UA StatusCode
    lot_id      integer,                           -- lots.id stamped by streams
    server_time timestamptz,                       -- OPC-UA server timestamp when it differs
    seq         bigint NOT NULL,
    PRIMARY KEY (tag_id, time),
    CHECK (num_nonnulls(v_float, v_int, v_bool, v_text) = 1)
) PARTITION BY RANGE (time);
CREATE TABLE readings_default PARTITION OF readings DEFAULT;
CREATE INDEX readings_time_brin ON readings USING brin (time);

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
) PARTITION BY RANGE (start);
CREATE TABLE aggregates_1s_default PARTITION OF aggregates_1s DEFAULT;
CREATE INDEX aggregates_1s_start_brin ON aggregates_1s USING brin (start);

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
) PARTITION BY RANGE (start);
CREATE TABLE aggregates_1m_default PARTITION OF aggregates_1m DEFAULT;
CREATE INDEX aggregates_1m_start_brin ON aggregates_1m USING brin (start);

-- Partition granularity per table (read by ps_ensure_partitions and the retention job).
CREATE TABLE partitioning (
    table_name  text PRIMARY KEY REFERENCES retention (table_name),
    granularity text NOT NULL CHECK (granularity IN ('day', 'month'))
);
INSERT INTO partitioning VALUES ('readings', 'day'), ('aggregates_1s', 'day'), ('aggregates_1m', 'month');

-- Create the partitions of `tbl` covering [lo, hi). Idempotent and safe to call concurrently
-- (advisory lock). Rows already sitting in the default partition for a new range are moved
-- into the new partition, because PostgreSQL refuses to create a partition that the default
-- partition already holds rows for. Returns the number of partitions created.
CREATE FUNCTION ps_ensure_partitions(tbl text, lo timestamptz, hi timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    gran   text;
    step   interval;
    p_lo   timestamp;
    p_hi   timestamp;
    pname  text;
    tcol   text := CASE WHEN tbl = 'readings' THEN 'time' ELSE 'start' END;
    made   integer := 0;
    moved  bigint;
BEGIN
    SELECT granularity INTO gran FROM partitioning WHERE table_name = tbl;
    IF gran IS NULL THEN
        RAISE EXCEPTION 'table % is not partitioned by plantstream', tbl;
    END IF;
    step := CASE gran WHEN 'day' THEN interval '1 day' ELSE interval '1 month' END;
    PERFORM pg_advisory_xact_lock(hashtext('ps_ensure_partitions:' || tbl));
    p_lo := date_trunc(gran, lo AT TIME ZONE 'UTC');
    WHILE p_lo < (hi AT TIME ZONE 'UTC') LOOP
        p_hi := p_lo + step;
        pname := format('%s_p%s', tbl, to_char(p_lo, CASE gran WHEN 'day' THEN 'YYYYMMDD' ELSE 'YYYYMM' END));
        IF to_regclass(pname) IS NULL THEN
            EXECUTE format('CREATE TEMP TABLE ps_moving ON COMMIT DROP AS '
                           'WITH d AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) SELECT * FROM d',
                           tbl || '_default', tcol, p_lo AT TIME ZONE 'UTC', tcol, p_hi AT TIME ZONE 'UTC');
            GET DIAGNOSTICS moved = ROW_COUNT;
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           pname, tbl, p_lo AT TIME ZONE 'UTC', p_hi AT TIME ZONE 'UTC');
            IF moved > 0 THEN
                EXECUTE format('INSERT INTO %I SELECT * FROM ps_moving', tbl);
            END IF;
            DROP TABLE ps_moving;
            made := made + 1;
        END IF;
        p_lo := p_hi;
    END LOOP;
    RETURN made;
END $$;

-- Retention on the plain path: drop whole partitions older than retention.keep and delete old
-- rows from the default partition. Called by the sink's maintenance tick and `plantstream db
-- maintain`. Returns the number of partitions dropped.
CREATE FUNCTION ps_apply_retention(tbl text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    cutoff  timestamptz;
    gran    text;
    step    interval;
    tcol    text := CASE WHEN tbl = 'readings' THEN 'time' ELSE 'start' END;
    part    record;
    p_lo    timestamp;
    dropped integer := 0;
BEGIN
    SELECT now() - keep INTO cutoff FROM retention WHERE table_name = tbl;
    SELECT granularity INTO gran FROM partitioning WHERE table_name = tbl;
    step := CASE gran WHEN 'day' THEN interval '1 day' ELSE interval '1 month' END;
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = tbl::regclass AND c.relname ~ ('^' || tbl || '_p[0-9]+$')
    LOOP
        p_lo := to_date(substring(part.relname FROM '_p([0-9]+)$'),
                        CASE gran WHEN 'day' THEN 'YYYYMMDD' ELSE 'YYYYMM' END)::timestamp;
        IF (p_lo + step) AT TIME ZONE 'UTC' <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    EXECUTE format('DELETE FROM %I WHERE %I < %L', tbl || '_default', tcol, cutoff);
    RETURN dropped;
END $$;

-- Hourly rollup of aggregates_1m. A plain view here; a continuous aggregate on TimescaleDB
-- (same name and columns, so queries work on both paths).
CREATE VIEW aggregates_1h AS
SELECT tag_id,
       date_bin(interval '1 hour', start, timestamptz '2000-01-01 00:00:00+00') AS start,
       sum(count)::bigint AS count,
       sum(bad_count)::bigint AS bad_count,
       min(min) AS min,
       max(max) AS max,
       sum(mean * count) / NULLIF(sum(CASE WHEN mean IS NULL THEN 0 ELSE count END), 0) AS mean,
       (array_agg(last ORDER BY start DESC))[1] AS last
FROM aggregates_1m
GROUP BY 1, 2;

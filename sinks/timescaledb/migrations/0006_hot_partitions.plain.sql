-- Hot partitions are not vacuumed for their inserts while they are being written.
--
-- Since PostgreSQL 13, autovacuum also vacuums a table for its inserts (20 % of its rows). The
-- partition of the current day takes every reading, so at 50k readings/s it was vacuumed and
-- analyzed about once a minute, 2-4 s of a core each time, and every such pass showed up as a
-- latency spike (p99 source -> database 0.7 s -> 2.9 s) on a machine whose cores the pipeline
-- uses. Vacuum skips all-visible pages, so deferring it costs nothing overall: each page is still
-- vacuumed once, after the day is over. Autoanalyze (planner statistics) and anti-wraparound
-- vacuum are unchanged.

CREATE OR REPLACE FUNCTION ps_ensure_partitions(tbl text, lo timestamptz, hi timestamptz) RETURNS integer
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
            -- A day partition is written at ingest rate until its day is over: no vacuum for
            -- inserts until then (ps_settle_partitions lifts it; autovacuum then runs once).
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)%s',
                           pname, tbl, p_lo AT TIME ZONE 'UTC', p_hi AT TIME ZONE 'UTC',
                           CASE gran WHEN 'day' THEN ' WITH (autovacuum_vacuum_insert_threshold = -1)' ELSE '' END);
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

-- Day partitions whose range ended more than `grace` ago get the default insert-vacuum
-- behaviour back, so autovacuum vacuums each of them once (late data after that is vacuumed
-- as usual). Called by the sink's maintenance tick. Returns the number of partitions settled.
CREATE FUNCTION ps_settle_partitions(tbl text, grace interval DEFAULT interval '1 hour') RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    gran    text;
    part    record;
    p_lo    timestamp;
    settled integer := 0;
BEGIN
    SELECT granularity INTO gran FROM partitioning WHERE table_name = tbl;
    IF gran IS DISTINCT FROM 'day' THEN
        RETURN 0;
    END IF;
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = tbl::regclass AND c.relname ~ ('^' || tbl || '_p[0-9]+$')
          AND 'autovacuum_vacuum_insert_threshold=-1' = ANY (c.reloptions)
    LOOP
        p_lo := to_date(substring(part.relname FROM '_p([0-9]+)$'), 'YYYYMMDD')::timestamp;
        IF (p_lo + interval '1 day') AT TIME ZONE 'UTC' <= now() - grace THEN
            EXECUTE format('ALTER TABLE %I RESET (autovacuum_vacuum_insert_threshold)', part.relname);
            settled := settled + 1;
        END IF;
    END LOOP;
    RETURN settled;
END $$;

-- Day partitions made before this migration whose day is not over yet: the same as new ones.
DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.relname FROM partitioning p
        JOIN pg_inherits i ON i.inhparent = p.table_name::regclass
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE p.granularity = 'day' AND c.relname ~ ('^' || p.table_name || '_p[0-9]+$')
          AND (to_date(substring(c.relname FROM '_p([0-9]+)$'), 'YYYYMMDD')::timestamp + interval '1 day')
              AT TIME ZONE 'UTC' > now()
    LOOP
        EXECUTE format('ALTER TABLE %I SET (autovacuum_vacuum_insert_threshold = -1)', part.relname);
    END LOOP;
END $$;

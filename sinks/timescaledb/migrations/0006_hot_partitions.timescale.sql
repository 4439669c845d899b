-- The plain path defers insert-triggered vacuum on the day partition being written and lifts
-- it once the day is over (ps_settle_partitions). TimescaleDB creates and manages its chunks
-- itself; nothing to settle here. Same signature so the sink stays path-agnostic.
CREATE FUNCTION ps_settle_partitions(tbl text, grace interval DEFAULT interval '1 hour') RETURNS integer
LANGUAGE sql AS $$ SELECT 0 $$;

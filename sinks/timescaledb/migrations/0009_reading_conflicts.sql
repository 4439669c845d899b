-- Same key, different value: one policy, never silent.
--
-- A reading is identified by (tag, source timestamp). The first value stored wins (what models
-- and datasets already read stays reproducible); a later reading at the same key with another
-- value or quality (a corrected value from the source, a second device publishing the same tag)
-- is not dropped silently: it is kept here with the value it would have replaced, counted by the
-- sink (plantstream_sink_value_conflicts_total) and visible to owners. A replay of the same
-- record (same value, or same sequence number) adds nothing, so replaying a topic leaves every
-- table unchanged.
CREATE TABLE reading_conflicts (
    tag_id        integer NOT NULL REFERENCES tags (id),
    time          timestamptz NOT NULL,
    incoming_seq  bigint NOT NULL,
    stored        jsonb NOT NULL,   -- {"value", "quality", "seq"} of the row that was kept
    incoming      jsonb NOT NULL,   -- {"value", "quality", "seq"} of the row that was not
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tag_id, time, incoming_seq)
);
GRANT SELECT ON reading_conflicts TO plantstream_owner;

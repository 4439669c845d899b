-- ISA-95 equipment hierarchy and the tag registry.
-- Equipment rows are upserted by the sink on first sight of a path (every ancestor too), so the
-- hierarchy needs no separate master-data load; paths are unique per plant.

CREATE TABLE equipment (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    plant       text NOT NULL,
    path        text NOT NULL,                  -- enterprise/site/area/line/unit (1..5 levels)
    name        text NOT NULL,                  -- last path element
    level       text NOT NULL CHECK (level IN ('enterprise', 'site', 'area', 'line', 'unit')),
    parent_id   integer REFERENCES equipment (id),
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (plant, path)
);
-- Subtree queries are prefix matches on the path (path = $1 OR path LIKE $1 || '/%').
CREATE INDEX equipment_path_prefix ON equipment (plant, path text_pattern_ops);

CREATE TABLE tags (
    -- integer (not text) in every reading row keeps rows and indexes compact.
    id             integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    plant          text NOT NULL,
    tag            text NOT NULL,
    equipment_id   integer NOT NULL REFERENCES equipment (id),
    unit           text NOT NULL DEFAULT '',        -- canonical unit (after normalization by streams)
    datatype       text NOT NULL DEFAULT 'float' CHECK (datatype IN ('float', 'int', 'bool', 'str')),
    lo             double precision,                -- engineering range
    hi             double precision,
    roc_limit      double precision,
    grade          text NOT NULL DEFAULT 'general' CHECK (grade IN ('core', 'important', 'general')),
    source_address text NOT NULL DEFAULT '',
    spec_property  text NOT NULL DEFAULT '',
    description    text NOT NULL DEFAULT '',
    -- 'meta': described by TagMeta; 'reading': registered from a reading, details unknown yet.
    registered_by  text NOT NULL DEFAULT 'reading' CHECK (registered_by IN ('meta', 'reading')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (plant, tag)
);
CREATE INDEX tags_equipment ON tags (equipment_id);

-- Retention per time-series table; the single source of truth for both storage paths
-- (TimescaleDB retention policies are created from it, the plain path's maintenance reads it).
CREATE TABLE retention (
    table_name text PRIMARY KEY,
    keep       interval NOT NULL CHECK (keep > interval '1 hour')
);
INSERT INTO retention (table_name, keep) VALUES
    ('readings', interval '90 days'),
    ('aggregates_1s', interval '180 days'),
    ('aggregates_1m', interval '5 years');

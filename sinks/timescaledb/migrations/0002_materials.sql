-- ISA-95 material model: class -> definition -> spec (test specification) -> lot, plus where a
-- lot was processed (process segments), its genealogy, its lab results and its deviations.

CREATE TABLE material_classes (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,               -- e.g. 'structural steel'
    description text NOT NULL DEFAULT ''
);

CREATE TABLE material_definitions (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    class_id    integer NOT NULL REFERENCES material_classes (id),
    code        text NOT NULL UNIQUE,               -- e.g. 'S355J2'
    description text NOT NULL DEFAULT ''
);

CREATE TABLE material_specs (
    id             integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    spec_id        text NOT NULL,                   -- e.g. 'EN10025-2:S355J2' (what lots reference)
    revision       text NOT NULL,
    definition_id  integer NOT NULL REFERENCES material_definitions (id),
    standard       text NOT NULL,
    grade          text NOT NULL,
    description    text NOT NULL DEFAULT '',
    effective_from date NOT NULL,
    effective_to   date,
    UNIQUE (spec_id, revision),
    CHECK (effective_to IS NULL OR effective_to > effective_from)
);

CREATE TABLE spec_property_limits (
    spec_pk     integer NOT NULL REFERENCES material_specs (id) ON DELETE CASCADE,
    property    text NOT NULL,
    basis       text NOT NULL CHECK (basis IN ('lab', 'process')),
    condition   text NOT NULL DEFAULT '',
    min         double precision,
    max         double precision,
    target      double precision,
    unit        text NOT NULL,
    test_method text NOT NULL DEFAULT '',
    PRIMARY KEY (spec_pk, property, basis, condition),
    CHECK (min IS NULL OR max IS NULL OR min <= max)
);

-- The spec revision in force for each spec_id (latest effective_from not in the future).
CREATE VIEW current_material_specs AS
SELECT DISTINCT ON (spec_id) *
FROM material_specs
WHERE effective_from <= current_date AND (effective_to IS NULL OR effective_to > current_date)
ORDER BY spec_id, effective_from DESC;

CREATE TABLE lots (
    id         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    plant      text NOT NULL,
    lot        text NOT NULL,
    kind       text NOT NULL DEFAULT '',            -- heat, slab, coil, batch, doff, spool, ...
    -- No foreign key: context events may name a spec this database has not been seeded with;
    -- the view lots_unknown_spec lists them.
    spec_id    text,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (plant, lot)
);
CREATE INDEX lots_spec ON lots (spec_id);

CREATE VIEW lots_unknown_spec AS
SELECT l.* FROM lots l
WHERE l.spec_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM material_specs s WHERE s.spec_id = l.spec_id);

CREATE TABLE lot_genealogy (
    parent_id integer NOT NULL REFERENCES lots (id),
    child_id  integer NOT NULL REFERENCES lots (id),
    relation  text NOT NULL CHECK (relation IN ('split', 'merge', 'transform')),
    time      timestamptz NOT NULL,
    PRIMARY KEY (parent_id, child_id),
    CHECK (parent_id <> child_id)
);
CREATE INDEX lot_genealogy_child ON lot_genealogy (child_id);

CREATE TABLE process_segments (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lot_id       integer NOT NULL REFERENCES lots (id),
    equipment_id integer NOT NULL REFERENCES equipment (id),
    start_time   timestamptz NOT NULL,
    end_time     timestamptz,                        -- NULL while the lot is on the equipment
    UNIQUE (lot_id, equipment_id, start_time),
    CHECK (end_time IS NULL OR end_time >= start_time)
);
CREATE INDEX process_segments_equipment_time ON process_segments (equipment_id, start_time);

CREATE TABLE lot_test_results (
    lot_id       integer NOT NULL REFERENCES lots (id),
    property     text NOT NULL,
    time         timestamptz NOT NULL,
    value        double precision NOT NULL,
    unit         text NOT NULL,
    equipment_id integer REFERENCES equipment (id),
    PRIMARY KEY (lot_id, property, time)
);

CREATE TABLE deviations (
    id         text PRIMARY KEY,                     -- stable id from the emitter (re-emission updates)
    kind       text NOT NULL CHECK (kind IN ('process', 'lab')),
    plant      text NOT NULL,
    lot_id     integer REFERENCES lots (id),
    spec_id    text,
    property   text NOT NULL DEFAULT '',
    tag_id     integer REFERENCES tags (id),
    start_time timestamptz NOT NULL,
    end_time   timestamptz,
    peak       double precision,
    "limit"    double precision,
    status     text NOT NULL DEFAULT 'open',
    attrs      jsonb NOT NULL DEFAULT '{}',
    CHECK (end_time IS NULL OR end_time >= start_time)
);
CREATE INDEX deviations_lot ON deviations (lot_id);
CREATE INDEX deviations_start ON deviations (start_time);

-- Access control by data grade (GB/T 43697-2024: core / important / general) and the record of
-- dataset pulls. Same SQL on both storage paths.
--
-- Why security-barrier views and not row-level security: on TimescaleDB, RLS cannot be combined
-- with compression (which readings use) and continuous aggregates over RLS tables are prohibited;
-- chunks do not inherit policies either. Views work identically on plain PostgreSQL and on
-- hypertables. Tier roles get SELECT on the ds_* views only, never on readings/tags/aggregates;
-- the views run with their owner's rights and filter on the CALLER's role (current_user), and
-- security_barrier keeps non-leakproof caller predicates from being evaluated on hidden rows.
--
-- Tier roles are NOLOGIN group roles (plantstream.access.DB_ROLE); grant them to LOGIN roles,
-- or a service SET ROLEs to one per request. Roles are cluster-wide, so create them only once.

DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['plantstream_public', 'plantstream_member', 'plantstream_owner'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END $$;

-- Which grades each tier role may read (mirrors plantstream.access.READABLE).
CREATE TABLE access_grades (
    role  name NOT NULL,
    grade text NOT NULL CHECK (grade IN ('core', 'important', 'general')),
    PRIMARY KEY (role, grade)
);
INSERT INTO access_grades (role, grade) VALUES
    ('plantstream_owner', 'core'), ('plantstream_owner', 'important'), ('plantstream_owner', 'general'),
    ('plantstream_member', 'important'), ('plantstream_member', 'general'),
    ('plantstream_public', 'general');

-- Grades the calling role may read (superusers are members of every role: everything).
CREATE FUNCTION ps_readable_grades() RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(DISTINCT grade ORDER BY grade), '{}')
    FROM access_grades WHERE pg_has_role(current_user, role, 'USAGE')
$$;

-- Every tag's name, equipment and grade, for every tier: a requester learns which tags exist
-- and are withheld from them (the dataset card lists them), never their data or details.
CREATE VIEW ds_tag_catalog WITH (security_barrier) AS
SELECT t.id, t.plant, t.tag, e.path AS equipment, t.grade
FROM tags t JOIN equipment e ON e.id = t.equipment_id;

CREATE VIEW ds_tags WITH (security_barrier) AS
SELECT t.id, t.plant, t.tag, e.path AS equipment, t.unit, t.datatype, t.lo, t.hi, t.grade,
       t.spec_property, t.description
FROM tags t JOIN equipment e ON e.id = t.equipment_id
WHERE t.grade = ANY (ps_readable_grades());

CREATE VIEW ds_readings WITH (security_barrier) AS
SELECT r.time, r.tag_id, r.v_float, r.v_int, r.v_bool, r.v_text, r.quality, r.lot_id
FROM readings r
WHERE r.tag_id IN (SELECT t.id FROM tags t WHERE t.grade = ANY (ps_readable_grades()));

CREATE VIEW ds_aggregates_1m WITH (security_barrier) AS
SELECT a.*
FROM aggregates_1m a
WHERE a.tag_id IN (SELECT t.id FROM tags t WHERE t.grade = ANY (ps_readable_grades()));

-- Ungraded context: lots, lab results, material specs, equipment.
CREATE VIEW ds_lots WITH (security_barrier) AS
SELECT l.id, l.plant, l.lot, l.kind, l.spec_id, s.grade AS material_grade
FROM lots l
LEFT JOIN LATERAL (SELECT grade FROM material_specs m WHERE m.spec_id = l.spec_id
                   ORDER BY m.effective_from DESC LIMIT 1) s ON true;

CREATE VIEW ds_lot_test_results WITH (security_barrier) AS
SELECT lot_id, property, time, value, unit FROM lot_test_results;

CREATE VIEW ds_spec_limits WITH (security_barrier) AS
SELECT s.spec_id, s.revision, s.effective_from, p.property, p.basis, p.condition, p.min, p.max, p.target, p.unit
FROM material_specs s JOIN spec_property_limits p ON p.spec_pk = s.id;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM plantstream_public, plantstream_member, plantstream_owner;
-- The grade mapping is not secret; the views' filter function reads it as the caller.
GRANT SELECT ON access_grades TO plantstream_public, plantstream_member, plantstream_owner;
GRANT SELECT ON ds_tag_catalog, ds_tags, ds_readings, ds_aggregates_1m, ds_lots, ds_lot_test_results, ds_spec_limits
    TO plantstream_public, plantstream_member, plantstream_owner;

-- The record of every dataset pull: who (application requester and database login), when, the
-- canonical request, the snapshot and watermark, the files with their SHA-256, what was withheld.
CREATE TABLE dataset_pulls (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    requester   text NOT NULL,
    tier        text NOT NULL CHECK (tier IN ('owner', 'member', 'public')),
    db_user     text NOT NULL,                 -- session_user: the login, not forgeable by the caller
    db_role     text NOT NULL,                 -- the tier role the pull ran under (checked: usable by db_user)
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'complete', 'failed', 'rejected')),
    request     jsonb NOT NULL,
    snapshot    text,
    watermark   text,
    location    text,
    files       jsonb NOT NULL DEFAULT '[]',   -- [{"path", "sha256", "bytes", "rows"}]
    rows        bigint,
    cells       bigint,
    withheld    jsonb NOT NULL DEFAULT '[]',   -- [{"tag", "grade"}]
    error       text
);
CREATE INDEX dataset_pulls_started ON dataset_pulls (started_at DESC);
CREATE INDEX dataset_pulls_snapshot ON dataset_pulls (snapshot);

-- Tier roles write the record only through these (SECURITY DEFINER: they have no table rights).
-- Inside them current_user is the definer, so the caller passes its current_user; it is checked
-- to be a tier role that the login (session_user) may actually use.
CREATE FUNCTION ps_pull_begin(p_requester text, p_tier text, p_request jsonb, p_role name) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE new_id bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM access_grades WHERE role = p_role) OR NOT pg_has_role(session_user, p_role, 'USAGE') THEN
        RAISE EXCEPTION 'role % is not a plantstream tier role usable by %', p_role, session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO dataset_pulls (requester, tier, db_user, db_role, request)
    VALUES (p_requester, p_tier, session_user, p_role, p_request) RETURNING id INTO new_id;
    RETURN new_id;
END $$;

CREATE FUNCTION ps_pull_finish(p_id bigint, p_status text, p_snapshot text, p_watermark text, p_location text,
                               p_files jsonb, p_rows bigint, p_cells bigint, p_withheld jsonb, p_error text)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE dataset_pulls
    SET status = p_status, finished_at = clock_timestamp(), snapshot = p_snapshot, watermark = p_watermark,
        location = p_location, files = coalesce(p_files, '[]'), rows = p_rows, cells = p_cells,
        withheld = coalesce(p_withheld, '[]'), error = p_error
    WHERE id = p_id AND status = 'running' AND db_user = session_user
    RETURNING true
$$;

REVOKE ALL ON FUNCTION ps_pull_begin(text, text, jsonb, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION ps_pull_finish(bigint, text, text, text, text, jsonb, bigint, bigint, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ps_pull_begin(text, text, jsonb, name),
                          ps_pull_finish(bigint, text, text, text, text, jsonb, bigint, bigint, jsonb, text)
    TO plantstream_public, plantstream_member, plantstream_owner;
-- Owners may read the pull record (audit); others see nothing of it.
GRANT SELECT ON dataset_pulls TO plantstream_owner;

-- Grades fail closed (GB/T 43697-2024 core / important / general).
--
-- * A tag whose grade was never stated is core: the column default, and every tag only ever
--   registered from a reading (registered_by = 'reading', no TagMeta seen) is core from now on.
-- * The tag registry owns grades: a TagMeta (the tags topic) may state a tag's grade the first
--   time and raise it later, never lower it. Lowering is an owner's act: `plantstream db
--   tag-grade`, which sets plantstream.grade_change_by for its transaction. The rule is a trigger,
--   so no writer (sink, script, psql) can lower a grade by accident.
-- * Every change, and every refused lowering, is a row in tag_grade_changes (owners read it).

ALTER TABLE tags ALTER COLUMN grade SET DEFAULT 'core';
UPDATE tags SET grade = 'core' WHERE registered_by = 'reading';

CREATE FUNCTION ps_grade_rank(grade text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE grade WHEN 'core' THEN 3 WHEN 'important' THEN 2 WHEN 'general' THEN 1 END
$$;

CREATE TABLE tag_grade_changes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    tag_id     integer NOT NULL REFERENCES tags (id),
    old_grade  text NOT NULL,
    new_grade  text NOT NULL,
    -- 'meta' (the tags topic), or the owner's name given to `plantstream db tag-grade`.
    changed_by text NOT NULL,
    outcome    text NOT NULL CHECK (outcome IN ('applied', 'refused')),
    reason     text NOT NULL DEFAULT ''
);
CREATE INDEX tag_grade_changes_tag ON tag_grade_changes (tag_id, at);
GRANT SELECT ON tag_grade_changes TO plantstream_owner;

CREATE FUNCTION ps_tags_grade_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    owner_name text := nullif(current_setting('plantstream.grade_change_by', true), '');
    owner_why  text := coalesce(current_setting('plantstream.grade_change_reason', true), '');
BEGIN
    IF NEW.grade IS NOT DISTINCT FROM OLD.grade THEN
        RETURN NEW;
    END IF;
    IF ps_grade_rank(NEW.grade) < ps_grade_rank(OLD.grade) AND owner_name IS NULL
       AND OLD.registered_by <> 'reading' THEN
        -- Recorded once per attempted value, not at every replay of the same TagMeta.
        IF NOT EXISTS (SELECT 1 FROM tag_grade_changes c WHERE c.tag_id = OLD.id AND c.outcome = 'refused'
                       AND c.old_grade = OLD.grade AND c.new_grade = NEW.grade
                       AND c.id > coalesce((SELECT max(a.id) FROM tag_grade_changes a
                                            WHERE a.tag_id = OLD.id AND a.outcome = 'applied'), 0)) THEN
            INSERT INTO tag_grade_changes (tag_id, old_grade, new_grade, changed_by, outcome, reason)
            VALUES (OLD.id, OLD.grade, NEW.grade, NEW.registered_by, 'refused',
                    'a tag''s grade is lowered only by an owner (plantstream db tag-grade)');
        END IF;
        NEW.grade := OLD.grade;
        RETURN NEW;
    END IF;
    INSERT INTO tag_grade_changes (tag_id, old_grade, new_grade, changed_by, outcome, reason)
    VALUES (OLD.id, OLD.grade, NEW.grade, coalesce(owner_name, NEW.registered_by), 'applied',
            CASE WHEN owner_name IS NULL THEN '' ELSE owner_why END);
    RETURN NEW;
END $$;

CREATE TRIGGER tags_grade_guard BEFORE UPDATE OF grade ON tags
FOR EACH ROW EXECUTE FUNCTION ps_tags_grade_guard();

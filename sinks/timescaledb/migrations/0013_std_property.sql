-- Standard property of a tag (issue 18): an id of the shared vocabulary (plantstream.domain.vocabulary,
-- docs/vocabulary.md) such as 'ps:temperature.melt', '' for none. The same quantity in two plants
-- lines up by it, not by tag name. Stored as the tag metadata states it, beside spec_property.
-- Same SQL on both storage paths.

ALTER TABLE tags ADD COLUMN std_property text NOT NULL DEFAULT '';

-- Tags by standard property (a search across a plant's tags for one property and its narrower ones).
CREATE INDEX tags_std_property ON tags (std_property text_pattern_ops) WHERE std_property <> '';

-- Pulls read tag metadata through ds_tags: carry the property there (appended, so the view's
-- existing columns keep their positions and CREATE OR REPLACE applies).
CREATE OR REPLACE VIEW ds_tags WITH (security_barrier) AS
SELECT t.id, t.plant, t.tag, e.path AS equipment, t.unit, t.datatype, t.lo, t.hi, t.grade,
       t.spec_property, t.description, t.std_property
FROM tags t JOIN equipment e ON e.id = t.equipment_id
WHERE t.grade = ANY (ps_readable_grades());

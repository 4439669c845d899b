-- Deviations as per-row event labels of dataset pulls (datasets/README.md, "Event labels"):
-- process deviations and late data on a tag, with their times. Like ds_readings, only deviations
-- on tags the calling tier may read (a deviation on a withheld tag would tell that it exists and
-- when it left its limits); deviations on no tag (lab deviations of a lot) are ungraded context.

CREATE VIEW ds_deviations WITH (security_barrier) AS
SELECT d.id, d.kind, d.plant, d.lot_id, d.tag_id, d.property, d.start_time, d.end_time, d.status
FROM deviations d
WHERE d.tag_id IS NULL OR d.tag_id IN (SELECT t.id FROM tags t WHERE t.grade = ANY (ps_readable_grades()));

GRANT SELECT ON ds_deviations TO plantstream_public, plantstream_member, plantstream_owner;

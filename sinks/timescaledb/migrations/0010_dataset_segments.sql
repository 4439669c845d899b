-- Where and when lots ran, and what they came from, for dataset pulls (datasets/README.md,
-- "Rows scoped to the lot's equipment"). A pull by lot, spec or material grade takes each lot's
-- rows from the equipment its process segments ran on; before this, the tier roles could read
-- lots but not their segments, so a pull could only trust the lot stamped on readings, and a
-- plant whose lines run different lots at once mixed them in one lot column.
--
-- Ungraded context like ds_lots: equipment paths and lot times, no readings.

CREATE VIEW ds_process_segments WITH (security_barrier) AS
SELECT s.lot_id, l.plant, e.path AS equipment, s.start_time, s.end_time
FROM process_segments s
JOIN lots l ON l.id = s.lot_id
JOIN equipment e ON e.id = s.equipment_id;

CREATE VIEW ds_lot_genealogy WITH (security_barrier) AS
SELECT parent_id, child_id, relation, time FROM lot_genealogy;

GRANT SELECT ON ds_process_segments, ds_lot_genealogy TO plantstream_public, plantstream_member, plantstream_owner;

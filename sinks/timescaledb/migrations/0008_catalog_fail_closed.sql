-- A tag a tier may not read is, for that tier, indistinguishable from a tag that does not exist.
--
-- ds_tag_catalog used to list every tag's name, equipment and grade to every tier (so a pull
-- could name what it withheld); a member or the public learnt that the core tags existed and
-- what they were called. Now it lists the readable tags only, like ds_tags. What a pull leaves
-- out is known by count per grade only (how many there are is not withheld; which ones is),
-- through a function that returns nothing but counts.

CREATE OR REPLACE VIEW ds_tag_catalog WITH (security_barrier) AS
SELECT t.id, t.plant, t.tag, e.path AS equipment, t.grade
FROM tags t JOIN equipment e ON e.id = t.equipment_id
WHERE t.grade = ANY (ps_readable_grades());

-- Counts of the tags of a plant (below an equipment path, when given) whose grade is not in
-- ``readable``. SECURITY DEFINER so it can count what the caller cannot see; it returns counts
-- only, so passing a smaller ``readable`` than one's own reveals nothing more than counts.
CREATE FUNCTION ds_withheld_counts(p_plant text, p_equipment text, readable text[])
RETURNS TABLE (grade text, tags bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT t.grade, count(*)
    FROM tags t JOIN equipment e ON e.id = t.equipment_id
    WHERE t.plant = p_plant
      AND (p_equipment IS NULL OR e.path = p_equipment OR starts_with(e.path, p_equipment || '/'))
      AND NOT (t.grade = ANY (readable))
    GROUP BY t.grade
    ORDER BY t.grade
$$;
REVOKE ALL ON FUNCTION ds_withheld_counts(text, text, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ds_withheld_counts(text, text, text[])
    TO plantstream_public, plantstream_member, plantstream_owner;

-- Late-data records from streams (samples that arrived after their aggregation window closed:
-- kept in the clean readings, never merged into aggregates) are stored beside spec deviations,
-- so a dataset can flag the windows they touch. The record's other fields (count, window start,
-- limit_min/limit_max, unit, duration) stay in attrs.
ALTER TABLE deviations DROP CONSTRAINT deviations_kind_check;
ALTER TABLE deviations ADD CONSTRAINT deviations_kind_check CHECK (kind IN ('process', 'lab', 'late_data'));
CREATE INDEX deviations_tag_start ON deviations (tag_id, start_time);

-- Dataset products (issue 18): a pull request published under a name and a semantic version, so a
-- product version is reproducible byte for byte (its request has absolute times, its snapshot,
-- watermark and file manifest are recorded). Same SQL on both storage paths (plain tables).
--
-- Who may see a product is decided here, like a pull's rows: ds_products shows a product to the
-- calling tier role only when its recorded grade is readable AND every tag it was pulled from still
-- exists with a readable grade (a tag raised to core since publishing hides the product; a missing
-- tag hides it too: fail closed). The monitor's catalog and downloads read it under SET ROLE.

CREATE TABLE dataset_products (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,79}$'),
    version             text NOT NULL CHECK (version ~ '^(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})$'),
    major               integer NOT NULL,
    minor               integer NOT NULL,
    patch               integer NOT NULL,
    title               text NOT NULL,
    description         text NOT NULL DEFAULT '',
    field               text NOT NULL,             -- plantstream.domain.catalog.MaterialField
    grade               text NOT NULL CHECK (grade IN ('core', 'important', 'general')),
    access              text NOT NULL CHECK (access IN ('free', 'member', 'paid')),
    license             text NOT NULL,             -- SPDX identifier
    plant               text NOT NULL,
    spec                text,
    request             jsonb NOT NULL,            -- the canonical pull request (absolute times)
    snapshot            text NOT NULL,
    watermark           text NOT NULL,
    files               jsonb NOT NULL,            -- [{"path", "sha256", "bytes", "rows"}]
    tag_ids             integer[] NOT NULL,        -- the tags it was pulled from (grade check above)
    columns             text[] NOT NULL,           -- data columns (the minor-version rule)
    standard_properties text[] NOT NULL DEFAULT '{}',
    rows                bigint NOT NULL,
    bytes               bigint NOT NULL,
    temporal_start      timestamptz NOT NULL,
    temporal_end        timestamptz NOT NULL,
    location            text NOT NULL,             -- where the files are (the node's products dir)
    pull_id             bigint REFERENCES dataset_pulls (id),
    change              text NOT NULL CHECK (change IN ('initial', 'patch', 'minor', 'major')),
    published_at        timestamptz NOT NULL DEFAULT now(),
    publisher           text NOT NULL,
    UNIQUE (name, version)
);
CREATE INDEX dataset_products_name ON dataset_products (name, major, minor, patch);

CREATE VIEW ds_products WITH (security_barrier) AS
SELECT p.id, p.name, p.version, p.title, p.description, p.field, p.grade, p.access, p.license, p.plant, p.spec,
       p.snapshot, p.files, p.standard_properties, p.rows, p.bytes, p.temporal_start, p.temporal_end,
       p.published_at
FROM dataset_products p
WHERE p.grade = ANY (ps_readable_grades())
  AND cardinality(p.tag_ids) > 0
  AND NOT EXISTS (
      SELECT 1 FROM unnest(p.tag_ids) AS u (tag_id)
      WHERE u.tag_id NOT IN (SELECT t.id FROM tags t WHERE t.grade = ANY (ps_readable_grades())));

REVOKE ALL ON dataset_products FROM plantstream_public, plantstream_member, plantstream_owner;
GRANT SELECT ON ds_products TO plantstream_public, plantstream_member, plantstream_owner;
GRANT SELECT ON dataset_products TO plantstream_owner;

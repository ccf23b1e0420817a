-- dedup_ext 1.1 -> 1.2: candidate rows by key hash (issue 5).
\echo Use "ALTER EXTENSION dedup_ext UPDATE TO '1.2'" to load this file. \quit

-- The rows of rel whose key hash another row shares, in ctid order: every
-- row of a duplicate group, and a few rows that only collide.  The window
-- pass that picks survivors sorts these instead of the whole table.  Memory:
-- maintenance_work_mem for the hashes (more rows take more heap scans),
-- work_mem for the result.  Needs SELECT on the key columns; refused where
-- row-level security applies to the caller.
CREATE FUNCTION dedup_key_candidates(rel regclass, key text[], nulls_distinct boolean DEFAULT true)
RETURNS SETOF tid
AS 'MODULE_PATHNAME', 'dedup_key_candidates' LANGUAGE C STRICT VOLATILE ROWS 1000;

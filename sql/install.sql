--
-- install: CREATE EXTENSION and the objects it installs.
--
CREATE EXTENSION dedup_ext;

-- every member object of the extension
\dx+ dedup_ext

-- the extension lives where CREATE EXTENSION put it; archives get their own schema
SELECT e.extname, e.extversion, n.nspname AS extschema, e.extrelocatable
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'dedup_ext';
SELECT nspname FROM pg_namespace WHERE nspname = 'dedup_archive';
-- the archive schema starts empty
SELECT count(*) AS archive_tables
  FROM pg_class WHERE relnamespace = 'dedup_archive'::regnamespace;

-- the contract's signatures: names, parameter names, order, defaults, result columns
\x on
SELECT p.proname,
       pg_get_function_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS result
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'dedup_ext'
 ORDER BY p.proname, arguments;
\x off

-- the dedup_jobs view's columns (the contract's names come first)
SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_attribute a
 WHERE a.attrelid = 'dedup_jobs'::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum;

-- what PUBLIC may do with the extension's relations
SELECT c.relname, c.relkind,
       has_table_privilege('public', c.oid, 'SELECT') AS public_select,
       has_table_privilege('public', c.oid, 'INSERT') AS public_insert,
       has_table_privilege('public', c.oid, 'UPDATE') AS public_update,
       has_table_privilege('public', c.oid, 'DELETE') AS public_delete
  FROM pg_class c
  JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'dedup_ext'
 ORDER BY c.relname;

-- a fresh install has no jobs
SELECT count(*) AS jobs FROM dedup_jobs;

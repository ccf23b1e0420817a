--
-- merge: dedup_table(..., action => 'merge').  A color table with three 'Red'
-- rows (and two 'Blue') is referenced by
--   merge_t.color       itself (parent_id: a self-reference),
--   merge_t.variant     (item_id, color_id, size_id) UNIQUE, ON DELETE CASCADE
--                       ON UPDATE CASCADE: re-pointed rows collide and are removed,
--   merge_t.item_color  a junction table whose primary key holds the foreign key,
--   merge_t.swatch      a two-column foreign key (color_id, color_hex), DEFERRABLE
--                       INITIALLY DEFERRED, with a half-NULL reference,
--   merge_t2.wishlist   another schema, another owner, ON DELETE SET NULL,
--                       DEFERRABLE INITIALLY IMMEDIATE, a NULL reference.
-- Rows pointing at a losing row are re-pointed to the survivor, collisions are
-- removed and archived, NULL references are left alone, the losers are removed;
-- dedup_rollback restores everything exactly.
--
DROP ROLE IF EXISTS regress_merge_owner;
DROP ROLE IF EXISTS regress_merge_other;
CREATE ROLE regress_merge_owner;
CREATE ROLE regress_merge_other;

CREATE SCHEMA merge_t;
CREATE SCHEMA merge_t2;
GRANT USAGE ON SCHEMA merge_t, merge_t2 TO regress_merge_owner, regress_merge_other;
-- (add_unique creates an index in the table's schema)
GRANT CREATE ON SCHEMA merge_t TO regress_merge_owner;
SET search_path = merge_t, public;

CREATE TABLE merge_t.color (
    id        int PRIMARY KEY,
    name      text NOT NULL,
    hex       text NOT NULL,
    parent_id int REFERENCES merge_t.color (id),
    UNIQUE (id, hex)
);
-- Red: 1 (survivor), 3, 5; Blue: 2 (survivor), 6; Green 4, Yellow 7 are alone.
-- Self-references: a survivor pointing at a loser (1 -> 5), a loser pointing at
-- a loser (3 -> 5), another row pointing at a loser (4 -> 3), a survivor pointing
-- at a loser of its own group (2 -> 6), a loser pointing at a survivor (6 -> 1),
-- a NULL (5, 7).
INSERT INTO merge_t.color VALUES
    (1, 'Red',    '#ff0000', NULL),
    (2, 'Blue',   '#0000ff', NULL),
    (3, 'Red',    '#f00',    NULL),
    (4, 'Green',  '#00ff00', NULL),
    (5, 'Red',    'red',     NULL),
    (6, 'Blue',   'blue',    NULL),
    (7, 'Yellow', '#ffff00', NULL);
UPDATE merge_t.color SET parent_id = CASE id WHEN 1 THEN 5 WHEN 3 THEN 5 WHEN 4 THEN 3
                                             WHEN 2 THEN 6 WHEN 6 THEN 1 END;

CREATE TABLE merge_t.item (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO merge_t.item VALUES (1, 'shirt'), (2, 'scarf');
CREATE TABLE merge_t.size (id int PRIMARY KEY, code text NOT NULL UNIQUE);
INSERT INTO merge_t.size VALUES (1, 'S'), (2, 'M');

CREATE TABLE merge_t.variant (
    id       int PRIMARY KEY,
    item_id  int NOT NULL REFERENCES merge_t.item,
    color_id int NOT NULL REFERENCES merge_t.color ON DELETE CASCADE ON UPDATE CASCADE,
    size_id  int REFERENCES merge_t.size,
    sku      text NOT NULL,
    UNIQUE (item_id, color_id, size_id)
);
INSERT INTO merge_t.variant VALUES
    (1, 1, 1, 1,    'shirt-red-s'),     -- survivor's row
    (2, 1, 3, 1,    'shirt-red3-s'),    -- collides with 1 once re-pointed: removed
    (3, 1, 3, 2,    'shirt-red3-m'),    -- 3 and 4 collide with each other once
    (4, 1, 5, 2,    'shirt-red5-m'),    --   re-pointed: one stays, one is removed
    (5, 1, 2, 1,    'shirt-blue-s'),
    (6, 1, 6, 1,    'shirt-blue6-s'),   -- collides with 5: removed
    (7, 2, 5, NULL, 'scarf-red5'),      -- NULL size: no collision with 8
    (8, 2, 1, NULL, 'scarf-red'),
    (9, 2, 4, 1,    'scarf-green-s');   -- untouched

CREATE TABLE merge_t.item_color (
    item_id  int REFERENCES merge_t.item,
    color_id int REFERENCES merge_t.color,
    note     text,
    PRIMARY KEY (item_id, color_id)
);
INSERT INTO merge_t.item_color VALUES
    (1, 1, 'red'), (1, 3, 'red3: collides, removed'), (2, 5, 'red5: re-pointed'),
    (2, 6, 'blue6: re-pointed'), (2, 4, 'green: untouched');

CREATE TABLE merge_t.swatch (
    id        int PRIMARY KEY,
    color_id  int,
    color_hex text,
    FOREIGN KEY (color_id, color_hex) REFERENCES merge_t.color (id, hex)
        DEFERRABLE INITIALLY DEFERRED
);
INSERT INTO merge_t.swatch VALUES
    (1, 3, '#f00'),     -- re-pointed to (1, '#ff0000')
    (2, 5, NULL),       -- half NULL: not a reference (MATCH SIMPLE), left alone
    (3, NULL, NULL),    -- NULL: left alone
    (4, 7, '#ffff00');  -- untouched

-- the second referencing table: another schema, another owner
CREATE TABLE merge_t2.wishlist (
    id       int PRIMARY KEY,
    customer text NOT NULL,
    color_id int REFERENCES merge_t.color ON DELETE SET NULL DEFERRABLE INITIALLY IMMEDIATE
);
INSERT INTO merge_t2.wishlist VALUES
    (1, 'alice', 3), (2, 'bob', NULL), (3, 'carol', 5), (4, 'dave', 6), (5, 'erin', 4),
    (6, 'frank', 1);

-- no primary key: merge refuses it
CREATE TABLE merge_t.nopk (name text NOT NULL, code text UNIQUE);
INSERT INTO merge_t.nopk VALUES ('a', 'x'), ('a', 'y');
CREATE TABLE merge_t.nopk_ref (code text REFERENCES merge_t.nopk (code));
INSERT INTO merge_t.nopk_ref VALUES ('y');

ALTER TABLE merge_t.color OWNER TO regress_merge_owner;
ALTER TABLE merge_t.item OWNER TO regress_merge_owner;
ALTER TABLE merge_t.size OWNER TO regress_merge_owner;
ALTER TABLE merge_t.variant OWNER TO regress_merge_owner;
ALTER TABLE merge_t.item_color OWNER TO regress_merge_owner;
ALTER TABLE merge_t.swatch OWNER TO regress_merge_owner;
ALTER TABLE merge_t2.wishlist OWNER TO regress_merge_other;

-- the state of every table and of the constraints on them
CREATE FUNCTION merge_t.snap() RETURNS text LANGUAGE sql SECURITY DEFINER
  SET search_path = pg_catalog AS $$
  SELECT concat_ws(' | ',
    (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM merge_t.color t),
    (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM merge_t.variant t),
    (SELECT md5(string_agg(t::text, ',' ORDER BY item_id, color_id)) FROM merge_t.item_color t),
    (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM merge_t.swatch t),
    (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM merge_t2.wishlist t),
    (SELECT string_agg(conname || ':' || convalidated || condeferrable || condeferred, ',' ORDER BY conname)
       FROM pg_constraint WHERE connamespace IN ('merge_t'::regnamespace, 'merge_t2'::regnamespace)),
    (SELECT string_agg(relname, ',' ORDER BY relname)
       FROM pg_class WHERE relnamespace IN ('merge_t'::regnamespace, 'merge_t2'::regnamespace)))
$$;
-- ... plus the jobs and the archives
CREATE FUNCTION merge_t.snap_all() RETURNS text LANGUAGE sql SECURITY DEFINER
  SET search_path = pg_catalog AS $$
  SELECT concat_ws(' | ', merge_t.snap(),
    (SELECT count(*) FROM public.dedup_job),
    (SELECT count(*) FROM pg_class WHERE relnamespace = 'dedup_archive'::regnamespace))
$$;
CREATE TABLE merge_t.baseline AS SELECT merge_t.snap() AS s, merge_t.snap_all() AS s_all;
CREATE FUNCTION merge_t.unchanged() RETURNS boolean LANGUAGE sql SECURITY DEFINER
  SET search_path = pg_catalog AS $$
  SELECT merge_t.snap_all() = (SELECT s_all FROM merge_t.baseline)
$$;
-- references to a color that does not exist (must stay 0 everywhere)
CREATE FUNCTION merge_t.dangling(OUT tbl text, OUT n bigint) RETURNS SETOF record
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
  SELECT 'color', count(*) FROM merge_t.color c
   WHERE c.parent_id IS NOT NULL AND NOT EXISTS (SELECT FROM merge_t.color p WHERE p.id = c.parent_id)
  UNION ALL
  SELECT 'variant', count(*) FROM merge_t.variant c
   WHERE NOT EXISTS (SELECT FROM merge_t.color p WHERE p.id = c.color_id)
  UNION ALL
  SELECT 'item_color', count(*) FROM merge_t.item_color c
   WHERE NOT EXISTS (SELECT FROM merge_t.color p WHERE p.id = c.color_id)
  UNION ALL
  SELECT 'swatch', count(*) FROM merge_t.swatch c
   WHERE c.color_id IS NOT NULL AND c.color_hex IS NOT NULL
     AND NOT EXISTS (SELECT FROM merge_t.color p WHERE p.id = c.color_id AND p.hex = c.color_hex)
  UNION ALL
  SELECT 'wishlist', count(*) FROM merge_t2.wishlist c
   WHERE c.color_id IS NOT NULL AND NOT EXISTS (SELECT FROM merge_t.color p WHERE p.id = c.color_id)
$$;
-- this job's archive tables (job id replaced by J) and their rows per action
CREATE FUNCTION merge_t.archives(jid bigint, OUT archive text, OUT action text, OUT n bigint)
RETURNS SETOF record LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT c.oid::regclass AS rel, c.relname FROM pg_class c
            WHERE c.relnamespace = 'dedup_archive'::regnamespace AND c.relkind = 'r'
              AND c.relname ~ ('_' || jid || '(_ref[0-9]+)?$')
  LOOP
    -- (which n a referencing table gets in <child>_<job>_ref<n> is not compared)
    archive := regexp_replace(regexp_replace(r.relname, '_' || jid || '(_ref[0-9]+)?$', '_J\1'),
                              '_ref[0-9]+$', '_refN');
    FOR action, n IN EXECUTE format('SELECT dedup_action, count(*) FROM %s GROUP BY 1', r.rel) LOOP
      RETURN NEXT;
    END LOOP;
  END LOOP;
END $$;
-- the rows of child's archives of this job, without the dedup_* columns
CREATE FUNCTION merge_t.archive_rows(jid bigint, child text, OUT action text, OUT r jsonb)
RETURNS SETOF record LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
  rel regclass;
BEGIN
  FOR rel IN SELECT c.oid::regclass FROM pg_class c
              WHERE c.relnamespace = 'dedup_archive'::regnamespace AND c.relkind = 'r'
                AND c.relname ~ ('^' || child || '_' || jid || '_ref[0-9]+$')
  LOOP
    RETURN QUERY EXECUTE format('SELECT a.dedup_action, to_jsonb(a) - ''dedup_job_id'' - ''dedup_action'''
                                ' - ''dedup_new_value'' - ''dedup_survivor'' - ''dedup_xact'' FROM %s a', rel);
  END LOOP;
END $$;
-- run q, catch its error: SQLSTATE, and whether anything changed
CREATE FUNCTION merge_t.refuse(q text, OUT code text, OUT unchanged boolean)
LANGUAGE plpgsql AS $$
BEGIN
  BEGIN
    EXECUTE q;
    code := 'NOT REFUSED';
    unchanged := merge_t.unchanged();
    RAISE EXCEPTION 'undo';
  EXCEPTION WHEN OTHERS THEN
    IF code IS NULL THEN
      code := SQLSTATE;
    END IF;
  END;
  IF unchanged IS NULL THEN
    unchanged := merge_t.unchanged();
  END IF;
END $$;

SELECT * FROM merge_t.dangling() ORDER BY tbl;

--
-- 1. preview: losers are 'merge' with the survivor's row_id in new_value
--
SELECT row_id, decision, key_values, new_value
  FROM dedup_preview('color', '{name}', action => 'merge')
 ORDER BY (row_id->>'id')::int;
-- one group number per group
SELECT key_values, count(DISTINCT group_no) AS group_nos, count(*) AS group_rows
  FROM dedup_preview('color', '{name}', action => 'merge')
 GROUP BY key_values ORDER BY key_values;
-- keep => 'last': the highest id survives, the others point at it
SELECT row_id, decision, new_value
  FROM dedup_preview('color', '{name}', keep => 'last', action => 'merge')
 ORDER BY (row_id->>'id')::int;
SELECT merge_t.unchanged();

--
-- 2. refusals, nothing changed
--
-- merge needs a primary key: 22023
SELECT * FROM merge_t.refuse($$SELECT * FROM dedup_table('merge_t.nopk', '{name}', action => 'merge')$$);
SELECT * FROM merge_t.refuse($$SELECT * FROM dedup_table('merge_t.nopk', '{name}', action => 'merge', dry_run => true)$$);
SELECT * FROM merge_t.refuse($$SELECT * FROM dedup_preview('merge_t.nopk', '{name}', action => 'merge')$$);
SELECT count(*) AS nopk_rows FROM merge_t.nopk;
SELECT * FROM merge_t.nopk_ref;

-- the caller owns color but has no right on merge_t2.wishlist: 42501
SET ROLE regress_merge_owner;
SELECT * FROM merge_t.refuse($$SELECT * FROM dedup_table('merge_t.color', '{name}', action => 'merge')$$);
RESET ROLE;
-- the caller needs UPDATE and DELETE on each referencing table: UPDATE alone, 42501
GRANT SELECT, UPDATE ON merge_t2.wishlist TO regress_merge_owner;
SET ROLE regress_merge_owner;
SELECT * FROM merge_t.refuse($$SELECT * FROM dedup_table('merge_t.color', '{name}', action => 'merge')$$);
RESET ROLE;
-- not the owner of color, even with every right on every table: 42501
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA merge_t TO regress_merge_other;
SET ROLE regress_merge_other;
SELECT * FROM merge_t.refuse($$SELECT * FROM dedup_table('merge_t.color', '{name}', action => 'merge')$$);
SELECT * FROM merge_t.refuse($$SELECT * FROM dedup_table('merge_t.color', '{name}', action => 'merge', dry_run => true)$$);
RESET ROLE;
REVOKE ALL ON ALL TABLES IN SCHEMA merge_t FROM regress_merge_other;
-- with UPDATE and DELETE on the table it does not own, the owner of color may merge
GRANT DELETE ON merge_t2.wishlist TO regress_merge_owner;

--
-- 3. dry run: the counts, job_id NULL, state 'dry_run', nothing changed
--
SET ROLE regress_merge_owner;
CREATE TEMP TABLE dry AS
SELECT * FROM dedup_table('merge_t.color', '{name}', action => 'merge', dry_run => true);
SELECT job_id, state, duplicate_groups, rows_deleted, rows_renamed, refs_repointed,
       archive_table, unique_index
  FROM dry;
RESET ROLE;
SELECT merge_t.unchanged();

--
-- 4. inside the caller's transaction, with deferrable keys.  A migration that
--    defers its constraints and fixes its own data at the end: the merge neither
--    checks the caller's pending rows early nor changes the caller's constraint
--    modes; a transaction that rolls back leaves no trace of the merge.
--
BEGIN;
SET CONSTRAINTS ALL DEFERRED;
-- the caller's own dangling row, fixed before commit
INSERT INTO merge_t2.wishlist VALUES (98, 'yolanda', 98);
SET LOCAL ROLE regress_merge_owner;
SELECT state, duplicate_groups, rows_deleted
  FROM dedup_table('merge_t.color', '{name}', action => 'merge');
RESET ROLE;
SELECT count(*) AS colors FROM merge_t.color;
INSERT INTO merge_t.color VALUES (98, 'Purple', '#800080', NULL);
-- still deferred as the caller set it: a dangling row is accepted for now ...
INSERT INTO merge_t2.wishlist VALUES (99, 'zed', 3);
SAVEPOINT s;
-- ... and refused when checked
\set VERBOSITY sqlstate
SET CONSTRAINTS ALL IMMEDIATE;
\set VERBOSITY default
ROLLBACK TO SAVEPOINT s;
DELETE FROM merge_t2.wishlist WHERE id = 99;
SET CONSTRAINTS ALL IMMEDIATE;
ROLLBACK;
SELECT merge_t.unchanged();

-- a caller that made the INITIALLY DEFERRED key of swatch IMMEDIATE keeps it so
BEGIN;
SET CONSTRAINTS ALL IMMEDIATE;
SET LOCAL ROLE regress_merge_owner;
SELECT state, rows_deleted, unique_index
  FROM dedup_table('merge_t.color', '{name}', action => 'merge', add_unique => true);
SAVEPOINT s;
\set VERBOSITY sqlstate
INSERT INTO merge_t.swatch VALUES (99, 3, '#f00');
\set VERBOSITY default
ROLLBACK TO SAVEPOINT s;
ROLLBACK;
SELECT merge_t.unchanged();

--
-- 5. the merge, by the owner of color (who only has UPDATE/DELETE on wishlist),
--    with a unique constraint on name afterwards
--
SET ROLE regress_merge_owner;
CREATE TEMP TABLE m1 AS
SELECT * FROM dedup_table('merge_t.color', '{name}', action => 'merge', add_unique => true);
RESET ROLE;
SELECT job_id AS jid, archive_table AS arch FROM m1 \gset
-- expect done, 2 groups, 3 colors removed, 12 rows re-pointed (color: 1, 2, 3, 4 -
-- 3 is a loser itself; variant: 7 and one of 3/4; item_color: (2,5), (2,6);
-- swatch: 1; wishlist: 1, 3, 4), the unique constraint color_name_key
SELECT state, duplicate_groups, rows_deleted, rows_renamed, refs_repointed,
       archive_table::text = 'dedup_archive.color_' || job_id AS archive_named_as_decided,
       unique_index
  FROM m1;
-- the dry run said the same
SELECT d.duplicate_groups = m.duplicate_groups AS same_groups,
       d.rows_deleted = m.rows_deleted AS same_deleted,
       d.refs_repointed = m.refs_repointed AS same_repointed
  FROM dry d, m1 m;
SET ROLE regress_merge_owner;
SELECT kind, relation, state, submitted_by, params->>'action' AS action,
       rows_deleted, refs_repointed, refs_removed, unique_index, error
  FROM dedup_jobs WHERE job_id = :jid;
RESET ROLE;

-- survivors 1, 2; the self-references of the survivors and of 4 point at survivors
SELECT * FROM merge_t.color ORDER BY id;
-- variant: 2 and 6 removed, 3 and 4 merged into one row, 7 re-pointed beside 8
SELECT id, item_id, color_id, size_id, sku FROM merge_t.variant
 WHERE id NOT IN (3, 4) ORDER BY id;
SELECT item_id, color_id, size_id, count(*), min(sku) IN ('shirt-red3-m', 'shirt-red5-m') AS from_3_or_4
  FROM merge_t.variant WHERE id IN (3, 4) GROUP BY 1, 2, 3;
-- item_color: (1,3) removed (its key would be (1,1)), (2,5) -> (2,1), (2,6) -> (2,2)
SELECT * FROM merge_t.item_color ORDER BY item_id, color_id;
-- swatch: 1 re-pointed on both columns, the half-NULL and the NULL reference unchanged
SELECT * FROM merge_t.swatch ORDER BY id;
-- wishlist: re-pointed, the NULL reference unchanged
SELECT * FROM merge_t2.wishlist ORDER BY id;
SELECT * FROM merge_t.dangling() ORDER BY tbl;
-- no duplicate left
SELECT duplicate_groups FROM dedup_audit('merge_t.color', '{name}');
-- the constraints are the same as before (validated, same deferrability)
SELECT conrelid::regclass, conname, convalidated, condeferrable, condeferred, confupdtype, confdeltype
  FROM pg_constraint
 WHERE contype = 'f' AND confrelid = 'merge_t.color'::regclass
 ORDER BY conrelid::regclass::text, conname;

--
-- 6. the archive: color's 3 losers, every re-pointed child row (original
--    version) and every removed child row
--
SELECT * FROM merge_t.archives(:jid) ORDER BY archive, action;
SELECT sum(n) FILTER (WHERE archive <> 'color_J') AS child_rows_archived,
       sum(n) FILTER (WHERE action = 'repoint') AS repointed_archived
  FROM merge_t.archives(:jid);
SELECT id, name, hex, dedup_action, dedup_survivor FROM :arch ORDER BY id;
-- a child archive has the child's columns first, same names, types and order
SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_attribute a
 WHERE a.attrelid = (SELECT c.oid FROM pg_class c
                      WHERE c.relnamespace = 'dedup_archive'::regnamespace
                        AND c.relname ~ ('^wishlist_' || :jid || '_ref[0-9]+$'))
   AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum;
-- the original versions of the re-pointed and removed child rows
SELECT * FROM merge_t.archive_rows(:jid, 'variant') ORDER BY action, r->>'id';
SELECT * FROM merge_t.archive_rows(:jid, 'item_color') ORDER BY action, r::text;
SELECT * FROM merge_t.archive_rows(:jid, 'swatch') ORDER BY action, r->>'id';
SELECT * FROM merge_t.archive_rows(:jid, 'wishlist') ORDER BY action, r->>'id';
SELECT * FROM merge_t.archive_rows(:jid, 'color') ORDER BY action, r->>'id';
-- dedup_verify
SELECT check_name, ok FROM dedup_verify(:jid) ORDER BY check_name;

--
-- 7. rollback, by the same role: parent and children exactly as before, the
--    archives gone, the constraints intact
--
SET ROLE regress_merge_owner;
-- a re-pointed row that points elsewhere since (swatch 1, set to Green by
-- hand): the rollback would undo that, and is refused (55000); nothing
-- changes.  Pointed back where the job left it, the rollback goes on.
UPDATE merge_t.swatch SET color_id = 4, color_hex = '#00ff00' WHERE id = 1;
SELECT count(*) AS colors_before FROM merge_t.color \gset
\set VERBOSITY sqlstate
SELECT dedup_rollback(:jid) AS restored;
\set VERBOSITY default
SELECT (SELECT count(*) FROM merge_t.color) = :colors_before AS colors_unchanged,
       (SELECT format('%s %s', color_id, color_hex) FROM merge_t.swatch WHERE id = 1) AS swatch_1;
UPDATE merge_t.swatch SET color_id = 1, color_hex = '#ff0000' WHERE id = 1;
-- 3 colors + 12 re-pointed + 4 removed child rows
\set VERBOSITY sqlstate
SELECT dedup_rollback(:jid) AS restored;
\set VERBOSITY default
RESET ROLE;
SELECT merge_t.snap() = (SELECT s FROM merge_t.baseline) AS exact;
SELECT * FROM merge_t.color ORDER BY id;
SELECT * FROM merge_t.variant ORDER BY id;
SELECT * FROM merge_t.item_color ORDER BY item_id, color_id;
SELECT * FROM merge_t.swatch ORDER BY id;
SELECT * FROM merge_t2.wishlist ORDER BY id;
SELECT * FROM merge_t.dangling() ORDER BY tbl;
SELECT count(*) AS archives_left FROM merge_t.archives(:jid);
SELECT conrelid::regclass, conname, convalidated, condeferrable, condeferred
  FROM pg_constraint
 WHERE contype = 'f' AND confrelid = 'merge_t.color'::regclass
 ORDER BY conrelid::regclass::text, conname;
-- the keys still hold (and the unique constraint is gone)
\set VERBOSITY sqlstate
INSERT INTO merge_t.variant VALUES (99, 1, 99, 1, 'dangling');
INSERT INTO merge_t2.wishlist VALUES (99, 'zed', 99);
INSERT INTO merge_t.item_color VALUES (1, 3, 'duplicate');
INSERT INTO merge_t.swatch VALUES (99, 3, '#ff0000');
-- 5 is referenced by item_color (NO ACTION)
DELETE FROM merge_t.color WHERE id = 5;
\set VERBOSITY default
SELECT count(*) AS color_rows FROM merge_t.color;
SELECT kind, state, rolled_back_by IS NOT NULL AS rolled_back FROM dedup_jobs WHERE job_id = :jid;
SELECT kind, state, rows_changed FROM dedup_jobs WHERE target_job = :jid;
-- a second rollback: 55000, nothing changed
UPDATE merge_t.baseline SET s_all = merge_t.snap_all();
SELECT * FROM merge_t.refuse(format('SELECT dedup_rollback(%s)', :jid));

--
-- 8. a table with two foreign keys to one parent and a unique constraint over
--    both: a row re-pointed through the first key collides through the second
--
CREATE TABLE merge_t.tone (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO merge_t.tone VALUES (1, 'warm'), (2, 'cold'), (3, 'warm'), (4, 'neutral'),
                                (5, 'warm'), (6, 'cold');
CREATE TABLE merge_t.pairing (
    id        int PRIMARY KEY,
    main_id   int NOT NULL REFERENCES merge_t.tone,
    accent_id int NOT NULL REFERENCES merge_t.tone,
    UNIQUE (main_id, accent_id)
);
INSERT INTO merge_t.pairing VALUES
    (1, 1, 1),      -- warm/warm
    (2, 3, 5),      -- warm3/warm5: becomes warm/warm, collides with 1: removed
    (3, 2, 3),      -- cold/warm3 -> cold/warm
    (4, 6, 4);      -- cold6/neutral -> cold/neutral
SELECT md5(string_agg(t::text, ',' ORDER BY id)) AS tone_before FROM merge_t.tone t \gset
SELECT md5(string_agg(t::text, ',' ORDER BY id)) AS pairing_before FROM merge_t.pairing t \gset
-- 3 tones removed; pairing 3 and 4 re-pointed, 2 removed
SELECT job_id AS jid2, rows_deleted
  FROM dedup_table('merge_t.tone', '{name}', action => 'merge') \gset
SELECT :rows_deleted AS rows_deleted;
SELECT * FROM merge_t.pairing ORDER BY id;
SELECT refs_removed FROM dedup_jobs WHERE job_id = :jid2;
\set VERBOSITY sqlstate
SELECT dedup_rollback(:jid2) > 0 AS rolled_back;
\set VERBOSITY default
SELECT md5(string_agg(t::text, ',' ORDER BY id)) = :'tone_before' AS tone_exact
  FROM merge_t.tone t;
SELECT md5(string_agg(t::text, ',' ORDER BY id)) = :'pairing_before' AS pairing_exact
  FROM merge_t.pairing t;
SELECT * FROM merge_t.pairing ORDER BY id;

--
-- a referencing row that a merge would remove as a collision is itself
-- referenced with ON DELETE CASCADE: refused (2BP01), nothing changes
--
CREATE TABLE merge_t.shade (id int PRIMARY KEY, name text);
INSERT INTO merge_t.shade VALUES (1, 'teal'), (2, 'teal');
CREATE TABLE merge_t.product (id int PRIMARY KEY, item int, shade_id int REFERENCES merge_t.shade,
                              UNIQUE (item, shade_id));
INSERT INTO merge_t.product VALUES (1, 10, 1), (2, 10, 2);
CREATE TABLE merge_t.stock (id int PRIMARY KEY, product_id int REFERENCES merge_t.product ON DELETE CASCADE, qty int);
INSERT INTO merge_t.stock VALUES (1, 2, 20);
\set VERBOSITY sqlstate
SELECT state FROM dedup_table('merge_t.shade', '{name}', action => 'merge');
\set VERBOSITY default
SELECT (SELECT count(*) FROM merge_t.shade) AS shades, (SELECT count(*) FROM merge_t.product) AS products,
       (SELECT count(*) FROM merge_t.stock) AS stock;

--
-- a unique index of the referencing table that covers only part of a
-- two-column foreign key: a re-pointed row collides with a row that
-- references another parent (and is removed, archived), not only with the
-- rows of its survivor
--
CREATE TABLE merge_t.tenant_item (id int PRIMARY KEY, tenant int, code text, name text,
                                  UNIQUE (tenant, code));
INSERT INTO merge_t.tenant_item VALUES (1, 1, 'A', 'x'), (2, 1, 'B', 'x'), (3, 2, 'A', 'y');
CREATE TABLE merge_t.tenant_ref (id int PRIMARY KEY, tenant int, code text, label text,
                                 FOREIGN KEY (tenant, code) REFERENCES merge_t.tenant_item (tenant, code),
                                 UNIQUE (code, label));
INSERT INTO merge_t.tenant_ref VALUES (10, 1, 'B', 'l'), (11, 2, 'A', 'l'), (12, 1, 'B', 'm');
SELECT job_id AS jtenant, rows_deleted, refs_repointed
  FROM dedup_table('merge_t.tenant_item', '{name}', action => 'merge') \gset
SELECT :rows_deleted AS rows_deleted, :refs_repointed AS refs_repointed;
SELECT id, tenant, code, label FROM merge_t.tenant_ref ORDER BY id;
SELECT dedup_rollback(:jtenant) AS restored;
SELECT id, tenant, code, label FROM merge_t.tenant_ref ORDER BY id;

-- a reference by a timestamptz key, rolled back from a session in another
-- time zone: where the job pointed the row is compared as a timestamptz,
-- not as its text, and the rollback goes through
CREATE TABLE merge_t.slot (id int PRIMARY KEY, starts timestamptz UNIQUE, name text);
INSERT INTO merge_t.slot VALUES (1, '2024-01-01 10:00+00', 'a'), (2, '2024-01-01 11:00+00', 'a');
CREATE TABLE merge_t.booking (id int PRIMARY KEY, starts timestamptz REFERENCES merge_t.slot (starts));
INSERT INTO merge_t.booking VALUES (1, '2024-01-01 11:00+00');
SET TimeZone = 'UTC';
SELECT job_id AS jslot FROM dedup_table('merge_t.slot', '{name}', action => 'merge') \gset
SELECT id, starts FROM merge_t.booking;
SET TimeZone = 'America/New_York';
SELECT dedup_rollback(:jslot) AS restored;
RESET TimeZone;
SELECT id, starts AT TIME ZONE 'UTC' AS starts_utc FROM merge_t.booking;

-- row-level security that applies to the caller on a referencing table:
-- the rows it hides would be neither re-pointed nor archived (and here the
-- ON DELETE CASCADE would take them with the loser): refused, 42501
CREATE TABLE merge_t.rp (id int PRIMARY KEY, name text);
INSERT INTO merge_t.rp VALUES (1, 'x'), (2, 'x');
CREATE TABLE merge_t.rc (id int PRIMARY KEY, pid int REFERENCES merge_t.rp ON DELETE CASCADE, owner text);
INSERT INTO merge_t.rc VALUES (1, 2, 'regress_merge_owner'), (2, 2, 'someone else');
ALTER TABLE merge_t.rp OWNER TO regress_merge_owner;
GRANT SELECT, UPDATE, DELETE ON merge_t.rc TO regress_merge_owner;
ALTER TABLE merge_t.rc ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON merge_t.rc USING (owner = current_user);
SET ROLE regress_merge_owner;
\set SHOW_CONTEXT never
SELECT state FROM dedup_table('merge_t.rp', '{name}', action => 'merge');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT (SELECT count(*) FROM merge_t.rp) AS parents, (SELECT count(*) FROM merge_t.rc) AS children;

-- a self-reference whose re-point would make rows of the table collide
-- under its unique index: 4 ('z', the survivor of 6) would move under 1,
-- beside 3; removing it would leave no 'z'.  Refused, 23505, nothing changed
CREATE TABLE merge_t.node (id int PRIMARY KEY, name text, parent int REFERENCES merge_t.node,
                           pos int, UNIQUE (parent, pos));
INSERT INTO merge_t.node VALUES (1, 'x', NULL, 0), (2, 'x', NULL, 1), (3, 'y', 1, 0), (4, 'z', 2, 0), (6, 'z', NULL, 5);
SELECT state FROM dedup_table('merge_t.node', '{name}', action => 'merge');
\echo :LAST_ERROR_SQLSTATE
SELECT string_agg(format('%s:%s', id, name), ' ' ORDER BY id) AS nodes FROM merge_t.node;
-- when the row that would collide is a loser, it is removed, not moved:
-- 4 ('y', a loser of 3) under 2 (a loser of 1) stays where it is and goes
DELETE FROM merge_t.node WHERE id = 6;
UPDATE merge_t.node SET name = 'y' WHERE id = 4;
SELECT state, rows_deleted, refs_repointed FROM dedup_table('merge_t.node', '{name}', action => 'merge');
SELECT string_agg(format('%s:%s:%s', id, name, parent), ' ' ORDER BY id) AS nodes FROM merge_t.node;

-- a unique index on an expression of the referencing table: merged when
-- nothing collides; a collision under it stops the merge (23505) with a hint
CREATE TABLE merge_t.ep (id int PRIMARY KEY, name text);
INSERT INTO merge_t.ep VALUES (1, 'x'), (2, 'x'), (3, 'y'), (4, 'y');
CREATE TABLE merge_t.ec (id int PRIMARY KEY, pid int REFERENCES merge_t.ep, email text);
CREATE UNIQUE INDEX ON merge_t.ec (pid, lower(email));
INSERT INTO merge_t.ec VALUES (1, 2, 'a@x'), (2, 3, 'B@y'), (3, 4, 'b@Y');
BEGIN;
SELECT state, rows_deleted, refs_repointed FROM dedup_table('merge_t.ep', '{name}', action => 'merge',
                                                            filter => 'id <= 2');
ROLLBACK;
SELECT state FROM dedup_table('merge_t.ep', '{name}', action => 'merge');
\echo :LAST_ERROR_SQLSTATE
\set SHOW_CONTEXT errors
SELECT string_agg(format('%s->%s', id, pid), ' ' ORDER BY id) AS refs FROM merge_t.ec;

-- a reference by a char(n) key: the rollback compares it as char(n)
CREATE TABLE merge_t.cur (id int PRIMARY KEY, code char(3) UNIQUE, name text);
INSERT INTO merge_t.cur VALUES (1, 'EUR', 'euro'), (2, 'EU ', 'euro');
CREATE TABLE merge_t.price (id int PRIMARY KEY, code char(3) REFERENCES merge_t.cur (code));
INSERT INTO merge_t.price VALUES (1, 'EU ');
SELECT job_id AS jcur FROM dedup_table('merge_t.cur', '{name}', action => 'merge') \gset
SELECT * FROM merge_t.price;
SELECT dedup_rollback(:jcur) AS restored;
SELECT * FROM merge_t.price;
--
-- what merge refuses rather than lose a reference (each refusal changes
-- nothing: the rows are shown after it)
--
CREATE FUNCTION merge_t.try(q text, OUT code text, OUT message text)
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE q;
  code := 'NOT REFUSED';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
END $$;
-- a BEFORE UPDATE trigger that skips a re-point: the loser's removal would
-- cascade to the row (09000)
CREATE TABLE merge_t.sp (id int PRIMARY KEY, name text);
INSERT INTO merge_t.sp VALUES (1, 'x'), (2, 'x');
CREATE TABLE merge_t.sc (id int PRIMARY KEY, pid int REFERENCES merge_t.sp ON DELETE CASCADE, v text);
INSERT INTO merge_t.sc VALUES (1, 1, 'a'), (2, 2, 'b');
CREATE FUNCTION merge_t.skip_b() RETURNS trigger LANGUAGE plpgsql
  AS $$BEGIN IF OLD.v = 'b' THEN RETURN NULL; END IF; RETURN NEW; END$$;
CREATE TRIGGER skip_b BEFORE UPDATE ON merge_t.sc FOR EACH ROW EXECUTE FUNCTION merge_t.skip_b();
SELECT * FROM merge_t.try($$SELECT * FROM dedup_table('merge_t.sp', '{name}', action => 'merge')$$);
SELECT * FROM merge_t.sc ORDER BY id;
DROP TRIGGER skip_b ON merge_t.sc;
-- a BEFORE DELETE trigger that spares a loser: its duplicate would stay (09000)
CREATE FUNCTION merge_t.keep_2() RETURNS trigger LANGUAGE plpgsql
  AS $$BEGIN IF OLD.id = 2 THEN RETURN NULL; END IF; RETURN OLD; END$$;
CREATE TRIGGER keep_2 BEFORE DELETE ON merge_t.sp FOR EACH ROW EXECUTE FUNCTION merge_t.keep_2();
SELECT * FROM merge_t.try($$SELECT * FROM dedup_table('merge_t.sp', '{name}', action => 'merge')$$);
SELECT id, pid FROM merge_t.sc ORDER BY id;
-- a survivor whose referenced UNIQUE column is NULL: the reference would
-- become NULL (55000)
CREATE TABLE merge_t.np (id int PRIMARY KEY, code text UNIQUE, name text);
INSERT INTO merge_t.np VALUES (1, NULL, 'x'), (2, 'c2', 'x');
CREATE TABLE merge_t.nc (id int PRIMARY KEY, pcode text REFERENCES merge_t.np (code));
INSERT INTO merge_t.nc VALUES (1, 'c2');
SELECT * FROM merge_t.try($$SELECT * FROM dedup_table('merge_t.np', '{name}', action => 'merge')$$);
SELECT * FROM merge_t.nc;
-- two foreign keys sharing a column that re-pointing would change (0A000);
-- with that column in the key, loser and survivor share it: merged
CREATE TABLE merge_t.acct (tenant int, id int, name text, PRIMARY KEY (tenant, id));
INSERT INTO merge_t.acct VALUES (1, 1, 'x'), (2, 5, 'x'), (2, 1, 'z'), (2, 6, 'z');
CREATE TABLE merge_t.ac (id int PRIMARY KEY, tenant int, a1 int, a2 int,
  FOREIGN KEY (tenant, a1) REFERENCES merge_t.acct, FOREIGN KEY (tenant, a2) REFERENCES merge_t.acct);
INSERT INTO merge_t.ac VALUES (1, 2, 5, 1), (2, 2, 6, 6);
SELECT * FROM merge_t.try($$SELECT * FROM dedup_table('merge_t.acct', '{name}', action => 'merge')$$);
SELECT rows_deleted, refs_repointed FROM dedup_table('merge_t.acct', '{tenant,name}', action => 'merge');
SELECT * FROM merge_t.ac ORDER BY id;
-- a key column in the table's foreign key to itself: the foreground
-- statement would leave the duplicates its re-points make (0A000)
CREATE TABLE merge_t.dir (id int PRIMARY KEY, parent_id int REFERENCES merge_t.dir, name text);
INSERT INTO merge_t.dir VALUES (1, NULL, 'home'), (2, NULL, 'home'), (3, 1, 'ssh'), (4, 2, 'ssh');
SELECT * FROM merge_t.try($$SELECT * FROM dedup_table('merge_t.dir', '{parent_id,name}', action => 'merge')$$);
-- a table named "a": the rollback's check for keys taken since names it
-- under an alias of its own
CREATE TABLE merge_t.a (id int PRIMARY KEY, name text);
INSERT INTO merge_t.a VALUES (1, 'x'), (2, 'x');
SELECT job_id AS ja FROM dedup_table('merge_t.a', '{name}', action => 'merge') \gset
SELECT dedup_rollback(:ja) AS restored;
-- a referencing table whose primary key holds the re-pointed column: its
-- rows are found again by ctid, and the row found there must be the one the
-- job re-pointed (a VACUUM FULL since put a newer row at that ctid): 55000
CREATE TABLE merge_t.tg (id int PRIMARY KEY, name text);
INSERT INTO merge_t.tg VALUES (1, 'red'), (2, 'red');
CREATE TABLE merge_t.item_tg (item_id int, tag_id int REFERENCES merge_t.tg, PRIMARY KEY (item_id, tag_id));
INSERT INTO merge_t.item_tg VALUES (10, 2), (11, 1), (12, 1);
SELECT job_id AS jtg FROM dedup_table('merge_t.tg', '{name}', action => 'merge') \gset
INSERT INTO merge_t.item_tg VALUES (13, 1);
VACUUM FULL merge_t.item_tg;
SELECT code, regexp_replace(message, 'job [0-9]+', 'job N') AS message
  FROM merge_t.try(format('SELECT dedup_rollback(%s)', :jtg));
SELECT * FROM merge_t.item_tg ORDER BY item_id;
-- two merges that changed the same referencing rows roll back newest first:
-- the users merge re-pointed member 2, the groups merge then removed it as a
-- collision; the older rollback alone would leave it out and the newer put
-- it back with the older job's value (55000, then both in order: exact)
CREATE TABLE merge_t.mu (id int PRIMARY KEY, email text);
INSERT INTO merge_t.mu VALUES (1, 'a@x'), (2, 'a@x');
CREATE TABLE merge_t.mg (id int PRIMARY KEY, name text);
INSERT INTO merge_t.mg VALUES (10, 'g'), (20, 'g');
CREATE TABLE merge_t.mm (id int PRIMARY KEY, uid int REFERENCES merge_t.mu, gid int REFERENCES merge_t.mg,
  UNIQUE (uid, gid));
INSERT INTO merge_t.mm VALUES (1, 1, 10), (2, 2, 20), (3, 2, 10);
SELECT job_id AS jmu FROM dedup_table('merge_t.mu', '{email}', action => 'merge') \gset
SELECT job_id AS jmg FROM dedup_table('merge_t.mg', '{name}', action => 'merge') \gset
SELECT code, regexp_replace(message, 'job [0-9]+', 'job N', 'g') AS message
  FROM merge_t.try(format('SELECT dedup_rollback(%s)', :jmu));
SELECT dedup_rollback(:jmg) AS restored_groups;
SELECT dedup_rollback(:jmu) AS restored_users;
SELECT * FROM merge_t.mm ORDER BY id;
-- a referencing table found again by ctid whose rows a trigger stamps
-- (updated_at): the rollback tells the job's row by the columns of the
-- table's unique indexes, and puts it back
CREATE TABLE merge_t.tg2 (id int PRIMARY KEY, name text);
INSERT INTO merge_t.tg2 VALUES (1, 'red'), (2, 'red');
CREATE TABLE merge_t.item_tg2 (item_id int, tag_id int REFERENCES merge_t.tg2, touched int NOT NULL DEFAULT 0,
  PRIMARY KEY (item_id, tag_id));
CREATE FUNCTION merge_t.touch() RETURNS trigger LANGUAGE plpgsql
  AS $$BEGIN NEW.touched := OLD.touched + 1; RETURN NEW; END$$;
CREATE TRIGGER touch BEFORE UPDATE ON merge_t.item_tg2 FOR EACH ROW EXECUTE FUNCTION merge_t.touch();
INSERT INTO merge_t.item_tg2 (item_id, tag_id) VALUES (10, 2), (11, 1);
SELECT job_id AS jtg2 FROM dedup_table('merge_t.tg2', '{name}', action => 'merge') \gset
SELECT dedup_rollback(:jtg2) AS restored;
SELECT item_id, tag_id FROM merge_t.item_tg2 ORDER BY item_id;
-- a dry run of a background merge keyed on the self-reference counts what
-- its first pass would merge (its later passes merge what re-points make)
SELECT state, duplicate_groups FROM dedup_table('merge_t.dir', '{parent_id,name}', action => 'merge',
                                                nulls_distinct => false, dry_run => true, background => true);
-- a BEFORE UPDATE trigger on a referencing table that keeps the old value
-- (or sets another): the re-point did not happen, and the loser's removal
-- cascaded to the row, which no archive kept (a rollback could not bring it
-- back); now the merge fails (09000) and changes nothing
CREATE TABLE merge_t.tp (id int PRIMARY KEY, name text);
INSERT INTO merge_t.tp VALUES (1, 'a'), (2, 'a'), (3, 'b');
CREATE TABLE merge_t.tc (id int PRIMARY KEY, pid int REFERENCES merge_t.tp ON DELETE CASCADE, tag text);
INSERT INTO merge_t.tc VALUES (1, 1, 'x'), (2, 2, 'keep-me');
CREATE FUNCTION merge_t.ignore_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$;
CREATE TRIGGER keep_old BEFORE UPDATE ON merge_t.tc FOR EACH ROW EXECUTE FUNCTION merge_t.ignore_update();
\set VERBOSITY sqlstate
SELECT * FROM dedup_table('merge_t.tp', '{name}', action => 'merge');
SELECT * FROM dedup_table('merge_t.tp', '{name}', action => 'merge', archive => false);
\set VERBOSITY default
SELECT * FROM merge_t.tc ORDER BY id;
DROP TRIGGER keep_old ON merge_t.tc;
CREATE FUNCTION merge_t.redirect() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.pid := 3; RETURN NEW; END $$;
CREATE TRIGGER redirect BEFORE UPDATE ON merge_t.tc FOR EACH ROW EXECUTE FUNCTION merge_t.redirect();
SELECT * FROM dedup_table('merge_t.tp', '{name}', action => 'merge');
DROP TRIGGER redirect ON merge_t.tc;
-- a rule on a referencing table's UPDATE or DELETE is refused before
-- anything runs (it failed inside the job's statements)
CREATE RULE tc_noop AS ON UPDATE TO merge_t.tc WHERE old.tag = 'never' DO INSTEAD NOTHING;
SELECT * FROM dedup_table('merge_t.tp', '{name}', action => 'merge');
DROP RULE tc_noop ON merge_t.tc;
SELECT job_id, state, rows_deleted, refs_repointed FROM dedup_table('merge_t.tp', '{name}', action => 'merge') \gset
SELECT :'state' AS state, :rows_deleted AS deleted, :refs_repointed AS repointed;
SELECT * FROM merge_t.tc ORDER BY id;
-- a BEFORE DELETE trigger on a referencing table that keeps a row that
-- would collide once re-pointed: 09000, naming the trigger's table (it was
-- the unique index's 23505, with a hint that did not fit)
CREATE TABLE merge_t.kp (id int PRIMARY KEY, name text);
INSERT INTO merge_t.kp VALUES (1, 'a'), (2, 'a');
CREATE TABLE merge_t.kc (id int PRIMARY KEY, pid int REFERENCES merge_t.kp, tag text, UNIQUE (pid, tag));
INSERT INTO merge_t.kc VALUES (1, 1, 'x'), (2, 2, 'x');
CREATE FUNCTION merge_t.keep_rows() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER no_delete BEFORE DELETE ON merge_t.kc FOR EACH ROW EXECUTE FUNCTION merge_t.keep_rows();
SELECT * FROM dedup_table('merge_t.kp', '{name}', action => 'merge');
SELECT * FROM merge_t.kc ORDER BY id;

-- a partition referenced through its partitioned table: the foreign key
-- has a clone for the partition, on the same column, which is no second
-- foreign key (it was refused as one); the merge re-points, and the
-- rollback puts both tables back
CREATE TABLE merge_t.pp (id int PRIMARY KEY, k text) PARTITION BY RANGE (id);
CREATE TABLE merge_t.pp1 PARTITION OF merge_t.pp FOR VALUES FROM (0) TO (100);
INSERT INTO merge_t.pp SELECT g, 'k' || g % 3 FROM generate_series(1, 9) g;
CREATE TABLE merge_t.pc (id int PRIMARY KEY, pid int REFERENCES merge_t.pp);
INSERT INTO merge_t.pc SELECT g, g FROM generate_series(1, 9) g;
CREATE TABLE merge_t.pc_before AS SELECT * FROM merge_t.pc;
SELECT job_id AS jpp, rows_deleted, refs_repointed FROM dedup_table('merge_t.pp1', '{k}', action => 'merge') \gset
SELECT :rows_deleted AS deleted, :refs_repointed AS repointed;
SELECT pid, count(*) FROM merge_t.pc GROUP BY pid ORDER BY pid;
SELECT dedup_rollback(:jpp) AS restored;
SELECT count(*) AS differ FROM (SELECT * FROM merge_t.pc EXCEPT SELECT * FROM merge_t.pc_before) d;
-- a generated column in a referencing foreign key cannot be re-pointed:
-- refused before anything runs (0A000; it failed inside the job's UPDATE)
CREATE TABLE merge_t.gp (id int PRIMARY KEY, name text);
INSERT INTO merge_t.gp VALUES (1, 'n'), (2, 'n');
CREATE TABLE merge_t.gc (id int PRIMARY KEY, raw int,
                         pid int GENERATED ALWAYS AS (raw) STORED REFERENCES merge_t.gp);
INSERT INTO merge_t.gc (id, raw) VALUES (1, 1), (2, 2);
\set VERBOSITY sqlstate
SELECT * FROM dedup_table('merge_t.gp', '{name}', action => 'merge');
SELECT * FROM dedup_table('merge_t.gp', '{name}', action => 'merge', dry_run => true);
SELECT * FROM dedup_table('merge_t.gp', '{name}', action => 'merge', background => true);
\set VERBOSITY default
SELECT * FROM dedup_table('merge_t.gp', '{name}', action => 'merge');
SELECT count(*) AS parents FROM merge_t.gp;

-- a referencing row removed as a collision that a third table references:
-- refused with 23503 and a hint (no generated statement as its context),
-- the dry run too; nothing changed
CREATE TABLE merge_t.paint (id int PRIMARY KEY, name text);
INSERT INTO merge_t.paint VALUES (1, 'red'), (2, 'red');
CREATE TABLE merge_t.jacket (id int PRIMARY KEY, paint_id int REFERENCES merge_t.paint, size text,
                             UNIQUE (paint_id, size));
INSERT INTO merge_t.jacket VALUES (1, 1, 'S'), (2, 2, 'S');
CREATE TABLE merge_t.zip (id int PRIMARY KEY, jacket_id int REFERENCES merge_t.jacket);
INSERT INTO merge_t.zip VALUES (1, 2);
\set SHOW_CONTEXT always
SELECT * FROM dedup_table('merge_t.paint', '{name}', action => 'merge');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM dedup_table('merge_t.paint', '{name}', action => 'merge', dry_run => true);
\echo :LAST_ERROR_SQLSTATE
\set SHOW_CONTEXT errors
SELECT (SELECT count(*) FROM merge_t.paint) AS paints,
       (SELECT string_agg(id || ':' || paint_id, ' ' ORDER BY id) FROM merge_t.jacket) AS jackets;

--
-- cleanup
--
RESET search_path;
SET client_min_messages = warning;
DROP SCHEMA merge_t CASCADE;
DROP SCHEMA merge_t2 CASCADE;
DROP OWNED BY regress_merge_owner, regress_merge_other;
RESET client_min_messages;
DROP ROLE regress_merge_owner;
DROP ROLE regress_merge_other;

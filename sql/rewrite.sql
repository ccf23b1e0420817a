--
-- strategy => 'rewrite' and 'auto': the survivors go to a new heap that
-- replaces the old one; indexes, constraints, triggers, grants, views and
-- foreign keys stay; space is returned at once; rollback is exact.
--
CREATE SCHEMA rw;
SET search_path = rw, public;
CREATE TABLE rw.parent_ref (id int PRIMARY KEY);
INSERT INTO rw.parent_ref SELECT g FROM generate_series(0, 9) g;
CREATE TABLE rw.photos (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    property_pk int NOT NULL REFERENCES rw.parent_ref,
    photo_id int NOT NULL,
    dropped text,
    note text CHECK (note <> ''),
    big text
);
ALTER TABLE rw.photos DROP COLUMN dropped;
INSERT INTO rw.photos (property_pk, photo_id, note, big)
SELECT g % 10, g % 40, 'n' || g, CASE WHEN g % 500 = 1 THEN repeat(md5(g::text), 200) END
  FROM generate_series(1, 4000) g;
CREATE INDEX photos_note_idx ON rw.photos (note);
CREATE VIEW rw.photo_keys AS SELECT property_pk, photo_id FROM rw.photos;
CREATE FUNCTION rw.no_op() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER photos_ins BEFORE INSERT ON rw.photos FOR EACH ROW EXECUTE FUNCTION rw.no_op();
GRANT SELECT ON rw.photos TO PUBLIC;
ANALYZE rw.photos;
SELECT md5(string_agg(p::text, ',' ORDER BY id)) AS before_md5 FROM rw.photos p \gset
SELECT pg_relation_size('rw.photos') AS before_size \gset

-- 'auto' on 99% duplicates: the dry run says it would rewrite, and changes nothing
SELECT job_id, state, strategy, duplicate_groups, rows_deleted
  FROM dedup_table('photos', '{property_pk,photo_id}', dry_run => true);

CREATE TEMP TABLE r1 AS SELECT * FROM dedup_table('photos', '{property_pk,photo_id}', add_unique => true);
SELECT job_id AS jid FROM r1 \gset
SELECT state, strategy, duplicate_groups, rows_deleted, unique_index FROM r1;
SELECT count(*) AS rows_left, pg_relation_size('rw.photos') < :before_size / 10 AS space_returned
  FROM rw.photos;
-- survivors are the lowest ids, toasted values intact
SELECT min(id), max(id), count(big) AS toasted, bool_and(big IS NULL OR length(big) = 6400) AS big_ok
  FROM rw.photos;
-- the table is still the same object: view, grants, triggers, indexes, constraints
SELECT count(*) AS via_view FROM rw.photo_keys;
SELECT has_table_privilege('public', 'rw.photos', 'SELECT') AS public_select;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'rw.photos'::regclass AND NOT tgisinternal;
SELECT indexrelid::regclass AS index, indisvalid FROM pg_index
 WHERE indrelid = 'rw.photos'::regclass ORDER BY 1::text;
SELECT conname, contype FROM pg_constraint WHERE conrelid = 'rw.photos'::regclass ORDER BY conname;
\set VERBOSITY sqlstate
INSERT INTO rw.photos (property_pk, photo_id) VALUES (1, 1);
INSERT INTO rw.photos (property_pk, photo_id) VALUES (99, 99);
\set VERBOSITY default
SELECT check_name, ok FROM dedup_verify(:jid) ORDER BY check_name;
SELECT dedup_rollback(:jid) AS restored;
SELECT md5(string_agg(p::text, ',' ORDER BY id)) = :'before_md5' AS exact FROM rw.photos p;

-- inside a transaction that rolls back, a rewrite leaves no trace
BEGIN;
SELECT strategy, rows_deleted FROM dedup_table('photos', '{property_pk,photo_id}', strategy => 'rewrite');
ROLLBACK;
SELECT md5(string_agg(p::text, ',' ORDER BY id)) = :'before_md5' AS unchanged FROM rw.photos p;

-- few duplicates: 'auto' deletes in place
CREATE TABLE rw.few (id int PRIMARY KEY, code text);
INSERT INTO rw.few SELECT g, 'c' || CASE WHEN g % 100 = 0 THEN g - 1 ELSE g END FROM generate_series(1, 2000) g;
ANALYZE rw.few;
SELECT strategy, rows_deleted FROM dedup_table('few', '{code}');
-- nothing duplicated under a key of two columns, which the planner alone
-- takes for 90% duplicates (it counts at most a tenth of the rows as groups
-- of several columns): 'auto' deletes in place, and the heap stays
CREATE TABLE rw.pairs (id int PRIMARY KEY, a int NOT NULL, b int NOT NULL);
INSERT INTO rw.pairs SELECT g, g % 100, g / 100 FROM generate_series(1, 50000) g;
ANALYZE rw.pairs;
SELECT pg_relation_filenode('rw.pairs') AS pairs_node \gset
SELECT strategy, duplicate_groups, rows_deleted FROM dedup_table('pairs', '{a,b}');
SELECT pg_relation_filenode('rw.pairs') = :pairs_node AS same_heap;
-- unique but for one pair that a tenth of the rows share: a tenth would go,
-- 'auto' deletes (the sample sees that pair 3,000 times, and counts it as
-- one group of 30,000 rows)
CREATE TABLE rw.one_common (id int PRIMARY KEY, a int NOT NULL, b int NOT NULL);
INSERT INTO rw.one_common SELECT g, g % 1000, g / 1000 FROM generate_series(1, 270000) g;
INSERT INTO rw.one_common SELECT g, -1, -1 FROM generate_series(270001, 300000) g;
ANALYZE rw.one_common;
SELECT strategy, duplicate_groups, rows_deleted FROM dedup_table('one_common', '{a,b}', dry_run => true);
-- estimates that say "mostly duplicates" where a fifth of the rows or none
-- would go: 'auto' counts before it rewrites, and deletes in place.  A few
-- keys shared by a fifth of the rows, the rest unique (the planner takes
-- them for fewer groups than there are):
CREATE TABLE rw.skew (id int PRIMARY KEY, k int NOT NULL, flag bool NOT NULL);
INSERT INTO rw.skew SELECT g, CASE WHEN g % 5 = 0 THEN g % 7 ELSE g + 10 END, g % 5 <> 0
  FROM generate_series(1, 200000) g;
ANALYZE rw.skew;
SELECT strategy, rows_deleted FROM dedup_table('skew', '{k}', dry_run => true);
-- with a filter that lets in none of the shared keys' rows: nothing goes
SELECT strategy, rows_deleted FROM dedup_table('skew', '{k}', filter => 'flag', dry_run => true);
-- a table only vacuumed (no statistics on the key, so the planner guesses
-- 200 groups), nothing duplicated: the real run deletes nothing in place
CREATE TABLE rw.vac (id int PRIMARY KEY, k int NOT NULL);
INSERT INTO rw.vac SELECT g, g FROM generate_series(1, 100000) g;
VACUUM rw.vac;
SELECT pg_relation_filenode('rw.vac') AS vac_node \gset
SELECT strategy, rows_deleted FROM dedup_table('vac', '{k}');
SELECT pg_relation_filenode('rw.vac') = :vac_node AS same_heap;
-- a background job deletes in batches: its dry run says 'delete', and
-- strategy => 'rewrite' with background => true is refused in a dry run too
SELECT strategy FROM dedup_table('photos', '{property_pk,photo_id}', background => true, dry_run => true);
\set VERBOSITY sqlstate
SELECT strategy FROM dedup_table('photos', '{property_pk,photo_id}', background => true,
                                 strategy => 'rewrite', dry_run => true);
\set VERBOSITY default
-- 'auto' with a filter on mostly duplicates: the losers are counted into
-- the table of groups that the rewrite then reads (keep 'last'); the rows
-- the filter leaves out are copied as they are; the rollback restores all
CREATE TABLE rw.tagged (id int PRIMARY KEY, k int NOT NULL, live bool NOT NULL);
INSERT INTO rw.tagged SELECT g, g % 50, g % 10 <> 0 FROM generate_series(1, 20000) g;
ANALYZE rw.tagged;
SELECT md5(string_agg(t::text, ',' ORDER BY id)) AS tagged_md5 FROM rw.tagged t \gset
SELECT job_id AS jt, strategy, duplicate_groups, rows_deleted
  FROM dedup_table('tagged', '{k}', keep => 'last', filter => 'live') \gset
SELECT :'strategy' AS strategy, :duplicate_groups AS groups, :rows_deleted AS deleted;
SELECT count(*) FILTER (WHERE live) AS live_left, count(*) FILTER (WHERE NOT live) AS others_left,
       bool_and(id > 19900) FILTER (WHERE live) AS live_are_last
  FROM rw.tagged;
SELECT dedup_rollback(:jt) AS restored;
SELECT md5(string_agg(t::text, ',' ORDER BY id)) = :'tagged_md5' AS exact FROM rw.tagged t;
-- every row three times: two thirds would go, 'auto' rewrites
INSERT INTO rw.pairs SELECT id + 50000, a, b FROM rw.pairs WHERE id <= 50000;
INSERT INTO rw.pairs SELECT id + 100000, a, b FROM rw.pairs WHERE id <= 50000;
ANALYZE rw.pairs;
SELECT strategy, duplicate_groups, rows_deleted FROM dedup_table('pairs', '{a,b}', dry_run => true);

-- 'rewrite' is refused where it would bypass row-level rules (55000), and for
-- other actions (22023); nothing changes
\set VERBOSITY sqlstate
SELECT strategy FROM dedup_table('photos', '{property_pk,photo_id}', action => 'rename', strategy => 'rewrite');
CREATE TABLE rw.photo_tags (photo bigint REFERENCES rw.photos);
SELECT strategy FROM dedup_table('photos', '{property_pk,photo_id}', strategy => 'rewrite');
DROP TABLE rw.photo_tags;
CREATE FUNCTION rw.audit_del() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN OLD; END$$;
CREATE TRIGGER photos_del BEFORE DELETE ON rw.photos FOR EACH ROW EXECUTE FUNCTION rw.audit_del();
SELECT strategy FROM dedup_table('photos', '{property_pk,photo_id}', strategy => 'rewrite');
DROP TRIGGER photos_del ON rw.photos;
CREATE TABLE rw.gen (id int PRIMARY KEY, k int, twice int GENERATED ALWAYS AS (k * 2) STORED);
INSERT INTO rw.gen SELECT g, g % 2 FROM generate_series(1, 10) g;
SELECT strategy FROM dedup_table('gen', '{k}', strategy => 'rewrite');
\set VERBOSITY default
-- with an obstacle, 'auto' deletes in place
SELECT strategy, rows_deleted FROM dedup_table('gen', '{k}');
SELECT md5(string_agg(p::text, ',' ORDER BY id)) = :'before_md5' AS unchanged FROM rw.photos p;

RESET search_path;

--
-- what a rewrite would bypass is an obstacle: 'rewrite' is refused (55000),
-- 'auto' deletes in place
--
CREATE TABLE rw.guarded (id int PRIMARY KEY, tenant text, k int);
INSERT INTO rw.guarded SELECT g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, g % 3 FROM generate_series(1, 30) g;
CREATE ROLE regress_rw_owner;
ALTER TABLE rw.guarded OWNER TO regress_rw_owner;
GRANT USAGE ON SCHEMA rw TO regress_rw_owner;
ALTER TABLE rw.guarded ENABLE ROW LEVEL SECURITY;
ALTER TABLE rw.guarded FORCE ROW LEVEL SECURITY;
CREATE POLICY only_a ON rw.guarded USING (tenant = 'a');
SET ROLE regress_rw_owner;
\set VERBOSITY sqlstate
SELECT strategy FROM dedup_table('rw.guarded', '{k}', strategy => 'rewrite');
-- add_unique would find the duplicates the policy hides: refused, dry run too
SELECT strategy FROM dedup_table('rw.guarded', '{k}', add_unique => true);
SELECT strategy FROM dedup_table('rw.guarded', '{k}', add_unique => true, dry_run => true);
\set VERBOSITY default
-- auto: a delete removes only the rows the policy shows, and archives them
SELECT strategy, rows_deleted FROM dedup_table('rw.guarded', '{k}');
RESET ROLE;
SELECT tenant, count(*) FROM rw.guarded GROUP BY tenant ORDER BY tenant;

CREATE TABLE rw.published (id int PRIMARY KEY, k int);
INSERT INTO rw.published SELECT g, g % 5 FROM generate_series(1, 100) g;
SET client_min_messages = error;
CREATE PUBLICATION regress_rw_pub FOR TABLE rw.published;
RESET client_min_messages;
\set VERBOSITY sqlstate
SELECT strategy FROM dedup_table('rw.published', '{k}', strategy => 'rewrite');
SELECT strategy FROM dedup_table('rw.photos', '{property_pk,photo_id}', strategy => 'rewrite',
                                 filter => 'random() < 2');
CREATE RULE photos_log AS ON DELETE TO rw.photos DO ALSO NOTIFY photos_deleted;
SELECT strategy FROM dedup_table('rw.photos', '{property_pk,photo_id}', strategy => 'rewrite');
DROP RULE photos_log ON rw.photos;
\set VERBOSITY default
SELECT strategy, rows_deleted FROM dedup_table('rw.published', '{k}');
DROP PUBLICATION regress_rw_pub;

-- columns named like the generated SQL's aliases or the archive's columns
CREATE TABLE rw.odd (id int PRIMARY KEY, r int, c int, dedup_note text);
INSERT INTO rw.odd SELECT g, g % 2, g, 'note ' || g FROM generate_series(1, 6) g;
CREATE TABLE rw.odd_ref (id int PRIMARY KEY, c text, odd_id int REFERENCES rw.odd);
INSERT INTO rw.odd_ref VALUES (1, 'x', 3), (2, 'y', 4);
SELECT md5(string_agg(o::text, ',' ORDER BY id)) AS odd_md5 FROM rw.odd o \gset
SELECT md5(string_agg(o::text, ',' ORDER BY id)) AS ref_md5 FROM rw.odd_ref o \gset
SELECT job_id AS jodd FROM dedup_table('rw.odd', '{r}', action => 'merge') \gset
SELECT * FROM rw.odd_ref ORDER BY id;
SELECT dedup_rollback(:jodd) AS restored;
SELECT md5(string_agg(o::text, ',' ORDER BY id)) = :'odd_md5' AS odd_exact FROM rw.odd o;
SELECT md5(string_agg(o::text, ',' ORDER BY id)) = :'ref_md5' AS ref_exact FROM rw.odd_ref o;

--
-- the table's old storage becomes the archive (keep 'first', no filter):
-- no second copy of the removed rows.  It keeps TOASTed values, rows with a
-- NULL key stay in the table, a dropped column is no obstacle; its TOAST
-- table belongs to the archive and is named after it; dedup_verify is ok;
-- the rollback is exact; VACUUM FULL of the table works afterwards.  A
-- column added with a default after rows were written (its value lives in
-- the table's catalog entry) makes the archive a copy instead.
--
CREATE TABLE rw.stored (id bigint PRIMARY KEY, k int, big text, gone int);
ALTER TABLE rw.stored DROP COLUMN gone;
INSERT INTO rw.stored
SELECT g, CASE WHEN g % 50 = 0 THEN NULL ELSE g % 7 END,
       CASE WHEN g % 3 = 0 THEN repeat(md5(g::text), 200) END
  FROM generate_series(1, 2000) g;
ANALYZE rw.stored;
SELECT md5(string_agg(s::text, ',' ORDER BY id)) AS stored_md5 FROM rw.stored s \gset
SELECT job_id AS jst, strategy, duplicate_groups, rows_deleted
  FROM dedup_table('rw.stored', '{k}', strategy => 'rewrite', add_unique => true) \gset
SELECT :'strategy' AS strategy, :duplicate_groups AS groups, :rows_deleted AS deleted;
SELECT regexp_replace(obj_description(archive_table, 'pg_class'), '[0-9]+', 'N') AS archive_comment
  FROM dedup_jobs WHERE job_id = :jst;
SELECT archive_table AS st_archive FROM dedup_jobs WHERE job_id = :jst \gset
SELECT count(*) AS archived, count(DISTINCT md5(big)) AS toasted_values,
       bool_and(dedup_action = 'delete' AND dedup_job_id = :jst) AS all_delete
  FROM :st_archive;
SELECT count(*) AS kept, count(*) FILTER (WHERE k IS NULL) AS null_keys FROM rw.stored;
SELECT t.relname = 'pg_toast_' || c.oid AS toast_named_after_archive, d.refobjid = c.oid AS toast_owned_by_archive
  FROM pg_class c JOIN pg_class t ON t.oid = c.reltoastrelid
  JOIN pg_depend d ON d.objid = t.oid AND d.classid = 'pg_class'::regclass AND d.deptype = 'i'
 WHERE c.oid = :'st_archive'::regclass;
SELECT check_name, ok FROM dedup_verify(:jst) ORDER BY check_name;
SELECT dedup_rollback(:jst) AS restored;
SELECT md5(string_agg(s::text, ',' ORDER BY id)) = :'stored_md5' AS exact FROM rw.stored s;
VACUUM FULL rw.stored;
SELECT count(*) AS after_vacuum_full FROM rw.stored;
ALTER TABLE rw.stored ADD COLUMN added int DEFAULT 7;
SELECT job_id AS jst2 FROM dedup_table('rw.stored', '{k}', strategy => 'rewrite') \gset
SELECT regexp_replace(obj_description(archive_table, 'pg_class'), '[0-9]+', 'N') AS archive_comment
  FROM dedup_jobs WHERE job_id = :jst2;
SELECT archive_table AS st_archive2 FROM dedup_jobs WHERE job_id = :jst2 \gset
SELECT count(*) AS archived, bool_and(added = 7) AS defaults_kept FROM :st_archive2;

-- without a primary key the survivor is the first/last row by ctid; rows
-- with a NULL in their two-column key all stay; rollback is exact
CREATE TABLE rw.loose (a int, b text, payload int);
INSERT INTO rw.loose
SELECT g % 11, CASE WHEN g % 13 = 0 THEN NULL ELSE (g % 3)::text END, g
  FROM generate_series(1, 3000) g;
ANALYZE rw.loose;
SELECT md5(string_agg(l::text, ',' ORDER BY payload)) AS loose_md5 FROM rw.loose l \gset
-- rows were inserted in payload order: the last by ctid has the highest
CREATE TEMP TABLE loose_expected AS
SELECT payload FROM rw.loose WHERE b IS NULL
UNION ALL
SELECT max(payload) FROM rw.loose WHERE b IS NOT NULL GROUP BY a, b;
SELECT job_id AS jlo, strategy, duplicate_groups, rows_deleted
  FROM dedup_table('rw.loose', '{a,b}', keep => 'last', strategy => 'rewrite') \gset
SELECT :'strategy' AS strategy, :duplicate_groups AS groups, :rows_deleted AS deleted;
SELECT count(*) AS kept, count(*) FILTER (WHERE b IS NULL) AS null_keys,
       (SELECT array_agg(payload ORDER BY payload) FROM rw.loose)
       = (SELECT array_agg(payload ORDER BY payload) FROM loose_expected) AS last_kept,
       array_agg(payload ORDER BY ctid) = array_agg(payload ORDER BY payload) AS physical_order_kept
  FROM rw.loose;
SELECT check_name, ok FROM dedup_verify(:jlo) ORDER BY check_name;
SELECT dedup_rollback(:jlo) AS restored;
SELECT md5(string_agg(l::text, ',' ORDER BY payload)) = :'loose_md5' AS exact FROM rw.loose l;

-- a dry run on a table never analyzed says what the call does (the call
-- analyzes it; the dry run, which changes nothing, counts): it said delete
-- where the call then rewrote
CREATE TABLE rw.fresh (id int PRIMARY KEY, k int) WITH (autovacuum_enabled = off);
INSERT INTO rw.fresh SELECT g, g % 5 FROM generate_series(1, 1000) g;
SELECT strategy, rows_deleted FROM dedup_table('rw.fresh', '{k}', dry_run => true);
SELECT strategy, rows_deleted FROM dedup_table('rw.fresh', '{k}');

-- an invalid index (what a failed CREATE UNIQUE INDEX CONCURRENTLY on the
-- duplicates leaves) is one a rewrite would rebuild and make valid: the
-- unique one then took the removed rows' keys, and the rollback was
-- refused for good.  auto deletes; strategy 'rewrite' is refused (55000)
CREATE TABLE rw.inv (id int PRIMARY KEY, k text);
INSERT INTO rw.inv SELECT g, 'k' || g % 3 FROM generate_series(1, 30) g;
CREATE TABLE rw.inv_before AS SELECT * FROM rw.inv;
\set VERBOSITY terse
CREATE UNIQUE INDEX CONCURRENTLY inv_k_key ON rw.inv (k);
SELECT * FROM dedup_table('rw.inv', '{k}', strategy => 'rewrite');
\set VERBOSITY sqlstate
SELECT * FROM dedup_table('rw.inv', '{k}', strategy => 'rewrite');
\set VERBOSITY default
SELECT job_id AS jinv, strategy FROM dedup_table('rw.inv', '{k}') \gset
SELECT :'strategy' AS strategy, indisvalid FROM pg_index WHERE indexrelid = 'rw.inv_k_key'::regclass;
SELECT dedup_rollback(:jinv) AS restored;
SELECT count(*) AS differ FROM (SELECT * FROM rw.inv_before EXCEPT ALL SELECT * FROM rw.inv) d;

SET client_min_messages = warning;
DROP SCHEMA rw CASCADE;
RESET client_min_messages;
DROP OWNED BY regress_rw_owner;
DROP ROLE regress_rw_owner;

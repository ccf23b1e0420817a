--
-- rerun: the same call run again (a migration applied twice, a nightly
-- pg_cron job).  With add_unique it finds the index a run before built, or
-- one the table already had, that keeps the key unique as its own would, and
-- adds none (a NOTICE says which); its job records no index, so its rollback
-- drops nothing, and dedup_verify finds the key kept unique.  An index that
-- differs in what it enforces (other columns, a collation, NULLs, a
-- predicate, deferrable, not valid) is not such an index: one is built.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dedup_ext;
RESET client_min_messages;
CREATE SCHEMA rerun;
SET search_path = rerun, public;

CREATE TABLE photo (id int PRIMARY KEY, album int, name text, deleted boolean NOT NULL DEFAULT false);
INSERT INTO photo SELECT g, g % 3, 'p' || (g % 5), g % 7 = 0 FROM generate_series(1, 30) g;
CREATE FUNCTION indexes() RETURNS TABLE (index text, def text) LANGUAGE sql AS $$
  SELECT c.relname::text, pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
   WHERE i.indrelid = 'rerun.photo'::regclass ORDER BY 1
$$;

-- the first run builds the constraint; the second finds it
SELECT state, rows_deleted, unique_index FROM dedup_table('photo', '{name}', add_unique => true);
CREATE TEMP TABLE r2 AS SELECT * FROM dedup_table('photo', '{name}', add_unique => true);
SELECT state, duplicate_groups, rows_deleted, unique_index FROM r2;
SELECT * FROM indexes();
SELECT job_id AS jid2 FROM r2 \gset
SELECT unique_index IS NULL AS job_recorded_none FROM dedup_jobs WHERE job_id = :jid2;
SELECT check_name, ok, detail FROM dedup_verify(:jid2) WHERE check_name = 'unique_index';
-- it changed nothing, and leaves no (empty) archive behind
SELECT archive_table IS NULL AS no_archive,
       (SELECT count(*) FROM pg_class WHERE relnamespace = 'dedup_archive'::regnamespace
           AND relname = 'photo_' || :jid2) AS archive_tables
  FROM dedup_jobs WHERE job_id = :jid2;
SELECT check_name, ok FROM dedup_verify(:jid2) ORDER BY check_name;
-- its rollback restores nothing and keeps the index
SELECT dedup_rollback(:jid2) AS restored;
SELECT * FROM indexes();
-- a table without duplicates: the run builds the index and keeps no archive;
-- its rollback drops the index it built
CREATE TABLE clean (id int PRIMARY KEY, k text);
INSERT INTO clean SELECT g, 'c' || g FROM generate_series(1, 10) g;
SELECT job_id AS jclean FROM dedup_table('clean', '{k}', add_unique => true) \gset
SELECT rows_deleted, archive_table, unique_index FROM dedup_jobs WHERE job_id = :jclean;
SELECT dedup_rollback(:jclean) AS restored;
SELECT count(*) AS indexes FROM pg_index WHERE indrelid = 'clean'::regclass;

-- a varchar key (its index's operator class is text's) is found too
CREATE TABLE mail (id int PRIMARY KEY, email varchar(40));
INSERT INTO mail SELECT g, 'u' || (g % 3) FROM generate_series(1, 9) g;
SELECT unique_index FROM dedup_table('mail', '{email}', add_unique => true);
SELECT unique_index FROM dedup_table('mail', '{email}', add_unique => true);

-- the same key in another order is the same uniqueness
ALTER TABLE photo ADD CONSTRAINT photo_album_name UNIQUE (album, name);
SELECT unique_index FROM dedup_table('photo', '{name,album}', add_unique => true);
SELECT count(*) AS indexes FROM indexes();

-- not the same: an index under another collation, a predicate, NULLS NOT
-- DISTINCT, more columns, a deferrable constraint (which ON CONFLICT cannot
-- use), an index not valid; each time one is built
CREATE TABLE tag (id int PRIMARY KEY, k text, deleted boolean NOT NULL DEFAULT false);
INSERT INTO tag SELECT g, 't' || (g % 4), g % 5 = 0 FROM generate_series(1, 20) g;
CREATE UNIQUE INDEX tag_k_c ON tag (k COLLATE "C") WHERE id < 0;
CREATE UNIQUE INDEX tag_k_part ON tag (k) WHERE id < 0;
CREATE UNIQUE INDEX tag_k_id ON tag (k, id);
SELECT unique_index FROM dedup_table('tag', '{k}', filter => 'NOT deleted', add_unique => true);
SELECT unique_index FROM dedup_table('tag', '{k}', filter => 'NOT deleted', add_unique => true);
SELECT unique_index FROM dedup_table('tag', '{k}', filter => '(deleted = false)', add_unique => true);
SELECT unique_index FROM dedup_table('tag', '{k}', add_unique => true);
SELECT unique_index FROM dedup_table('tag', '{k}', nulls_distinct => false, add_unique => true);
SELECT unique_index FROM dedup_table('tag', '{k}', nulls_distinct => false, add_unique => true);
UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'rerun.tag_k_key'::regclass;
SELECT unique_index FROM dedup_table('tag', '{k}', add_unique => true);
SELECT c.relname, pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'rerun.tag'::regclass ORDER BY 1;
CREATE TABLE dfr (id int PRIMARY KEY, k text UNIQUE DEFERRABLE);
INSERT INTO dfr VALUES (1, 'a'), (2, 'b');
SELECT unique_index FROM dedup_table('dfr', '{k}', add_unique => true);

-- in the background too: the job goes from its batches to its end
CREATE TABLE acct (id int PRIMARY KEY, email text);
INSERT INTO acct SELECT g, 'u' || (g % 4) FROM generate_series(1, 20) g;
CREATE UNIQUE INDEX acct_email ON acct (email) WHERE id > 100;
SELECT job_id AS jid_b FROM dedup_table('acct', '{email}', add_unique => true, background => true) \gset
SELECT dedup_wait(:jid_b);
SELECT job_id AS jid_b2 FROM dedup_table('acct', '{email}', add_unique => true, background => true) \gset
SELECT dedup_wait(:jid_b2);
SELECT job_id = :jid_b AS first, state, rows_deleted, unique_index, archive_table IS NULL AS no_archive
  FROM dedup_jobs WHERE job_id IN (:jid_b, :jid_b2) ORDER BY job_id;
SELECT check_name, ok, detail FROM dedup_verify(:jid_b2) WHERE check_name = 'unique_index';
SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'rerun.acct'::regclass ORDER BY 1;

RESET search_path;

-- dedup_ext demo: the property_photos clean-up of the old runbook, in a few calls.
-- Run by demo/run in a throwaway cluster:  psql -X -f demo/demo.sql
\set ON_ERROR_STOP on
\pset pager off
\pset null '(null)'
SET client_min_messages = warning;
SET timezone = 'UTC';

\echo
\echo '######## 0. Setup: the extension and a table the ETL filled with duplicates'
\echo '######## 200,000 rows, 2,000 distinct (property_pk, photo_id) keys, a few rows with a NULL key'
CREATE EXTENSION IF NOT EXISTS dedup_ext;

DROP TABLE IF EXISTS property_photos;
CREATE TABLE property_photos (
    id          bigserial PRIMARY KEY,
    property_pk int,
    photo_id    int,
    url         text,
    created_at  timestamptz
);

-- Every hourly load inserted each photo again (ON CONFLICT DO NOTHING with
-- no conflict target never conflicts).  Keys 0..49 were loaded more often.
INSERT INTO property_photos (property_pk, photo_id, url, created_at)
SELECT k / 20 + 1,
       k % 20 + 1,
       format('https://photos.example.com/%s/%s.jpg?load=%s', k / 20 + 1, k % 20 + 1, g),
       timestamptz '2025-01-01 00:00+00' + g * interval '1 minute'
  FROM generate_series(1, 199990) AS g,
       LATERAL (SELECT CASE WHEN g <= 190000 THEN g % 2000 ELSE g % 50 END AS k) AS kk;
-- rows the API sent without a photo id: never duplicates (NULLs are distinct)
INSERT INTO property_photos (property_pk, photo_id, url, created_at)
SELECT 1, NULL, 'https://photos.example.com/1/unknown.jpg', timestamptz '2025-06-01 00:00+00'
  FROM generate_series(1, 10);
ANALYZE property_photos;
RESET client_min_messages;

SELECT count(*) AS rows,
       pg_size_pretty(pg_total_relation_size('property_photos')) AS table_size_before
  FROM property_photos;

\echo
\echo '######## 1. dedup_audit: how bad is it?'
SELECT * FROM dedup_audit('property_photos', ARRAY['property_pk', 'photo_id']);

\echo
\echo '######## 2. dedup_groups: the five largest groups'
SELECT * FROM dedup_groups('property_photos', ARRAY['property_pk', 'photo_id'], max_groups => 5);

\echo
\echo '######## 3. dedup_preview: which row survives? (keep the newest load)'
SELECT * FROM dedup_preview('property_photos', ARRAY['property_pk', 'photo_id'],
                            keep => 'created_at DESC', max_rows => 10);

\echo
\echo '######## 4. dedup_table with dry_run => true: counts only, nothing changes'
SELECT job_id, state, strategy, duplicate_groups, rows_deleted
  FROM dedup_table('property_photos', ARRAY['property_pk', 'photo_id'],
                   keep => 'created_at DESC', dry_run => true);
SELECT count(*) AS rows_after_dry_run FROM property_photos;

\echo
\echo '######## 5. dedup_table: remove the duplicates, archive them, add a UNIQUE constraint'
CREATE TEMP TABLE demo_job AS
SELECT * FROM dedup_table('property_photos', ARRAY['property_pk', 'photo_id'],
                          keep => 'created_at DESC', add_unique => true);
SELECT * FROM demo_job;
SELECT job_id AS job, archive_table AS archive, archive_table IS NOT NULL AS has_archive
  FROM demo_job \gset

\echo
\echo '######## 6. The job, as dedup_jobs shows it'
\x on
SELECT * FROM dedup_jobs WHERE job_id = :job;
\x off

\echo
\echo '######## 7. dedup_verify: is the job''s promise kept?'
SELECT * FROM dedup_verify(:job);

\echo
\echo '######## 8. Sizes and counts after the dedup'
SELECT count(*) AS rows,
       pg_size_pretty(pg_total_relation_size('property_photos')) AS table_size_after,
       (SELECT count(*) FROM (SELECT FROM property_photos
                               WHERE property_pk IS NOT NULL AND photo_id IS NOT NULL
                               GROUP BY property_pk, photo_id HAVING count(*) > 1) AS d)
         AS duplicate_groups_left
  FROM property_photos;
\if :has_archive
SELECT :'archive' AS archive_table, count(*) AS archived_rows,
       pg_size_pretty(pg_total_relation_size(:'archive')) AS archive_size
  FROM :archive;
\endif
SELECT conname, pg_get_constraintdef(oid) AS definition
  FROM pg_constraint
 WHERE conrelid = 'property_photos'::regclass AND contype = 'u';

\echo
\echo '######## 9. The ETL''s new upsert: INSERT ... ON CONFLICT (property_pk, photo_id) DO UPDATE'
INSERT INTO property_photos (property_pk, photo_id, url, created_at)
VALUES (1, 1, 'https://photos.example.com/1/1.jpg?load=new', timestamptz '2026-01-01 00:00+00'),
       (9999, 1, 'https://photos.example.com/9999/1.jpg', timestamptz '2026-01-01 00:00+00')
ON CONFLICT (property_pk, photo_id) DO UPDATE
   SET url = EXCLUDED.url, created_at = EXCLUDED.created_at
RETURNING id, property_pk, photo_id, url, (xmax::text <> '0') AS updated_existing_row;
SELECT count(*) AS rows_after_upsert FROM property_photos;
-- and a plain INSERT of an existing key is now refused
DO $$
BEGIN
    INSERT INTO property_photos (property_pk, photo_id, url) VALUES (1, 2, 'again');
    RAISE NOTICE 'unexpected: the duplicate was accepted';
EXCEPTION WHEN unique_violation THEN
    RAISE NOTICE 'plain INSERT of an existing key refused: %', SQLERRM;
END
$$;

\echo
\echo '######## 10. dedup_rollback: undo the job (rows come back, the constraint goes)'
SELECT dedup_rollback(:job) AS rows_restored;
SELECT count(*) AS rows_after_rollback,
       pg_size_pretty(pg_total_relation_size('property_photos')) AS table_size
  FROM property_photos;
SELECT * FROM dedup_audit('property_photos', ARRAY['property_pk', 'photo_id']);
SELECT count(*) AS unique_constraints_left
  FROM pg_constraint
 WHERE conrelid = 'property_photos'::regclass AND contype = 'u';
SELECT job_id, kind, relation, state, rows_done, rows_changed
  FROM dedup_jobs ORDER BY job_id;

\echo
\echo '######## 11. the same dedup in the background: committed batches while the table stays writable'
\echo '#########    (batch_delay slows it down so that its progress can be watched)'
SET dedup_ext.batch_delay = 300;
SELECT job_id AS bgjob, state
  FROM dedup_table('property_photos', ARRAY['property_pk', 'photo_id'],
                   background => true, batch_size => 20000, add_unique => true) \gset
SELECT :'bgjob' AS background_job, :'state' AS state;
SELECT pg_sleep(1.5);
SELECT job_id, phase, state, rows_total, rows_done, batches_done, percent, rows_per_second, eta
  FROM dedup_progress;
-- the application keeps writing meanwhile
INSERT INTO property_photos (property_pk, photo_id, url) VALUES (1, 2, 'written during the job');
SELECT pg_sleep(1.5);
SELECT job_id, phase, state, rows_total, rows_done, batches_done, percent, rows_per_second, eta
  FROM dedup_progress;
SELECT dedup_wait(:bgjob) AS final_state;
SELECT job_id, state, passes, batches_done, rows_deleted, unique_index, retries
  FROM dedup_jobs WHERE job_id = :bgjob;
SELECT * FROM dedup_audit('property_photos', ARRAY['property_pk', 'photo_id']);

\echo
\echo '######## Demo finished.'

--
-- payments: duplicate transaction_id.  Dry run changes nothing, preview shows the
-- new values, rename with pre-existing colliding values, unique constraint.
--
CREATE SCHEMA payments;
SET search_path = payments, public;
-- job ids from 10001 on, whatever the tests before took: NOTICEs name them
SELECT setval('public.dedup_job_job_id_seq', 10000) AS job_ids_after;

CREATE TABLE payments.payments (
    id             int PRIMARY KEY,
    transaction_id text NOT NULL,
    amount         numeric(10,2) NOT NULL,
    created_at     timestamp NOT NULL
);
-- TX1 x3, TX2 x2, TX2-5 x2 are duplicates; 'TX1-2' and 'TX1-2-2' already exist,
-- and 'TX2-5' (a group of its own) is what id 5 would first be renamed to.
INSERT INTO payments.payments
SELECT id, tx, amount, timestamp '2024-05-01' + id * interval '1 hour'
  FROM (VALUES ( 1, 'TX1',     10.00), ( 2, 'TX1',     10.00), ( 3, 'TX1',    10.00),
               ( 4, 'TX2',     20.00), ( 5, 'TX2',     20.00), ( 6, 'TX3',    30.00),
               ( 7, 'TX1-2',   40.00), ( 8, 'TX4',     50.00), ( 9, 'TX2-5',  60.00),
               (10, 'TX2-5',   60.00), (11, 'TX1-2-2', 70.00)) v(id, tx, amount);

SELECT md5(string_agg(p::text, ',' ORDER BY id)) AS before_md5 FROM payments.payments p \gset
SELECT count(*) AS njobs FROM dedup_jobs \gset

-- the runbook's query, and the extension's numbers:
-- expect total 11, distinct 7, 3 groups, 4 duplicate rows, largest 3, 0 null
SELECT transaction_id, count(*) AS cnt FROM payments.payments
 GROUP BY transaction_id HAVING count(*) > 1 ORDER BY cnt DESC, transaction_id;
SELECT * FROM dedup_audit('payments', '{transaction_id}');
SELECT key_values, group_rows FROM dedup_groups('payments', '{transaction_id}')
 ORDER BY group_rows DESC, key_values::text;

--
-- dry run: counts of what would change, no job, no archive, no index, no change
--
SELECT job_id IS NULL AS no_job_id, state, strategy, duplicate_groups, rows_deleted,
       rows_renamed, refs_repointed, archive_table, unique_index
  FROM dedup_table('payments', '{transaction_id}', action => 'rename',
                   add_unique => true, dry_run => true);
SELECT job_id IS NULL AS no_job_id, state, duplicate_groups, rows_deleted, rows_renamed
  FROM dedup_table('payments', '{transaction_id}', dry_run => true);
SELECT md5(string_agg(p::text, ',' ORDER BY id)) = :'before_md5' AS unchanged
  FROM payments.payments p;
SELECT count(*) - :njobs AS new_jobs FROM dedup_jobs;
SELECT count(*) AS archives FROM pg_class
 WHERE relnamespace = 'dedup_archive'::regnamespace AND relname ~ '^payments_[0-9]+$';
SELECT indexrelid::regclass FROM pg_index
 WHERE indrelid = 'payments.payments'::regclass ORDER BY 1;

--
-- preview shows the new values:
-- 2 -> TX1-2-2-2 ('TX1-2' and 'TX1-2-2' are taken), 3 -> TX1-3,
-- 5 -> TX2-5-5 ('TX2-5' is kept by id 9), 10 -> TX2-5-10; 1, 4, 9 keep
--
SELECT group_no, row_id, decision, key_values, new_value
  FROM dedup_preview('payments', '{transaction_id}', action => 'rename')
 ORDER BY key_values::text, (row_id->>'id')::int;

--
-- rename, with a unique constraint
--
CREATE TEMP TABLE r1 AS
SELECT * FROM dedup_table('payments', '{transaction_id}', action => 'rename', add_unique => true);
SELECT job_id AS jid, archive_table AS arch FROM r1 \gset
-- expect done, delete, 3 groups, 0 deleted, 4 renamed, payments_transaction_id_key
SELECT state, strategy, duplicate_groups, rows_deleted, rows_renamed, refs_repointed,
       archive_table::text = 'dedup_archive.payments_' || job_id AS archive_named_as_decided,
       unique_index
  FROM r1;
-- survivors untouched, the others renamed as the preview said; other columns untouched
SELECT id, transaction_id, amount FROM payments.payments ORDER BY id;
SELECT * FROM dedup_audit('payments', '{transaction_id}');
SELECT kind, relation, state, rows_deleted, rows_renamed, params->>'action' AS action
  FROM dedup_jobs WHERE job_id = :jid;
-- the archive holds the original version of every renamed row
SELECT id, transaction_id, amount, dedup_action, dedup_new_value, dedup_survivor,
       dedup_job_id = :jid AS this_job
  FROM :arch ORDER BY id;
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid);
SELECT check_name, ok FROM dedup_verify(:jid) ORDER BY check_name;

-- the constraint: a new duplicate fails, ON CONFLICT (transaction_id) works
SELECT conname, contype, pg_get_constraintdef(oid) AS def
  FROM pg_constraint WHERE conrelid = 'payments.payments'::regclass ORDER BY conname;
INSERT INTO payments.payments VALUES (12, 'TX1', 99.00, '2024-06-01');
BEGIN;
INSERT INTO payments.payments AS p VALUES (12, 'TX1', 99.00, '2024-06-01')
ON CONFLICT (transaction_id) DO UPDATE SET amount = p.amount + EXCLUDED.amount
RETURNING id, transaction_id, amount;
ROLLBACK;

-- a renamed row given another value since: the rollback would overwrite it,
-- and is refused (55000); nothing changes.  Set back, the rollback goes on.
SELECT transaction_id AS renamed_tx FROM payments.payments
 WHERE transaction_id LIKE '%-%' ORDER BY id LIMIT 1 \gset
UPDATE payments.payments SET transaction_id = 'TX-by-hand' WHERE transaction_id = :'renamed_tx';
SELECT md5(string_agg(p::text, ',' ORDER BY id)) AS edited_md5 FROM payments.payments p \gset
\set VERBOSITY sqlstate
SELECT dedup_rollback(:jid) AS restored;
\set VERBOSITY default
SELECT md5(string_agg(p::text, ',' ORDER BY id)) = :'edited_md5' AS unchanged,
       to_regclass(:'arch') IS NOT NULL AS archive_kept
  FROM payments.payments p;
UPDATE payments.payments SET transaction_id = :'renamed_tx' WHERE transaction_id = 'TX-by-hand';

-- rollback: the original transaction_ids come back, the constraint goes
SELECT dedup_rollback(:jid) AS restored;
SELECT md5(string_agg(p::text, ',' ORDER BY id)) = :'before_md5' AS exact
  FROM payments.payments p;
SELECT id, transaction_id FROM payments.payments ORDER BY id;
SELECT conname FROM pg_constraint
 WHERE conrelid = 'payments.payments'::regclass ORDER BY conname;
SELECT to_regclass(:'arch') IS NULL AS archive_dropped;

-- what needs no undoing does not stop a rollback: a renamed row deleted
-- since, one given its original value back by hand, one changed in another
-- column; the last is set back
CREATE TABLE payments.pr (id int PRIMARY KEY, tx text NOT NULL, note text);
INSERT INTO payments.pr SELECT g, 'T', NULL FROM generate_series(1, 4) g;
SELECT job_id AS jid_pr, rows_renamed FROM dedup_table('payments.pr', '{tx}', action => 'rename') \gset
SELECT :rows_renamed AS renamed;
DELETE FROM payments.pr WHERE id = 2;
UPDATE payments.pr SET tx = 'T' WHERE id = 3;
UPDATE payments.pr SET note = 'seen' WHERE id = 4;
SELECT dedup_rollback(:jid_pr) AS restored;
SELECT id, tx, note FROM payments.pr ORDER BY id;

--
-- rename, keep => 'last', without unique constraint: the highest id keeps the value
-- 1 -> TX1-1, 2 -> TX1-2-2-2, 4 -> TX2-4, 9 -> TX2-5-9; 3, 5, 10 keep
--
SELECT row_id, decision, new_value
  FROM dedup_preview('payments', '{transaction_id}', keep => 'last', action => 'rename')
 ORDER BY (row_id->>'id')::int;
CREATE TEMP TABLE r2 AS
SELECT * FROM dedup_table('payments', '{transaction_id}', keep => 'last', action => 'rename');
SELECT job_id AS jid2 FROM r2 \gset
SELECT state, duplicate_groups, rows_deleted, rows_renamed, unique_index FROM r2;
SELECT id, transaction_id FROM payments.payments ORDER BY id;
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid2);
SELECT dedup_rollback(:jid2) AS restored;
SELECT md5(string_agg(p::text, ',' ORDER BY id)) = :'before_md5' AS exact
  FROM payments.payments p;

--
-- rename with a composite primary key (joined with '-') and a varchar key column
-- that is not the last key column: key (kind, ref, amt), ref is the last string column
--
CREATE TABLE payments.ledger (
    branch int, seq int, kind text NOT NULL, ref varchar(20) NOT NULL, amt int NOT NULL,
    PRIMARY KEY (branch, seq)
);
INSERT INTO payments.ledger VALUES
  (1, 1, 'a', 'R', 5), (1, 2, 'a', 'R', 5), (2, 1, 'a', 'R', 5), (2, 2, 'a', 'S', 5),
  (3, 1, 'b', 'R', 5);
SELECT md5(string_agg(l::text, ',' ORDER BY branch, seq)) AS ledger_md5 FROM payments.ledger l \gset
-- expect (1,2) -> R-1-2, (2,1) -> R-2-1; row_id {"seq": .., "branch": ..}
SELECT row_id, decision, key_values, new_value
  FROM dedup_preview('ledger', '{kind,ref,amt}', action => 'rename')
 ORDER BY row_id::text;
CREATE TEMP TABLE r3 AS
SELECT * FROM dedup_table('ledger', '{kind,ref,amt}', action => 'rename', add_unique => true);
SELECT job_id AS jid3 FROM r3 \gset
SELECT state, rows_renamed, unique_index FROM r3;
SELECT * FROM payments.ledger ORDER BY branch, seq;
SELECT count(*) > 0 AS has_checks, bool_and(ok) AS all_ok FROM dedup_verify(:jid3);
SELECT dedup_rollback(:jid3) AS restored;
SELECT md5(string_agg(l::text, ',' ORDER BY branch, seq)) = :'ledger_md5' AS exact
  FROM payments.ledger l;

--
-- two renamed values that would collide with each other (text primary key):
-- group 'A': 'a' keeps, 'b-c' -> 'A-b-c'; group 'A-b': 'a0' keeps, 'c' -> 'A-b-c' too.
-- One of them must be extended so that no duplicate remains.
--
CREATE TABLE payments.refs (code text COLLATE "C" PRIMARY KEY, ref text NOT NULL);
INSERT INTO payments.refs VALUES ('a', 'A'), ('b-c', 'A'), ('a0', 'A-b'), ('c', 'A-b');
SELECT md5(string_agg(r::text, ',' ORDER BY code)) AS refs_md5 FROM payments.refs r \gset
SELECT row_id, decision, new_value
  FROM dedup_preview('refs', '{ref}', action => 'rename')
 ORDER BY row_id::text;
-- the rename would leave a duplicate: it is refused (23505), with or without
-- add_unique, and nothing changes
SELECT count(*) AS njobs FROM dedup_jobs \gset
SELECT state, rows_renamed FROM dedup_table('refs', '{ref}', action => 'rename');
SELECT state, rows_renamed FROM dedup_table('refs', '{ref}', action => 'rename', add_unique => true);
SELECT md5(string_agg(r::text, ',' ORDER BY code)) = :'refs_md5' AS unchanged,
       (SELECT count(*) - :njobs FROM dedup_jobs) AS new_jobs
  FROM payments.refs r;

RESET search_path;

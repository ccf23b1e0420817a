# A background batch and the writers around it:
#   1. in a deadlock between a batch and a writer, the batch gives way: it is
#      rolled back and retried, and the writer's statement goes through;
#   2. with add_unique, losers the first pass's batches skipped (a writer
#      updated their survivor) are removed by a second pass before the index
#      is built, not found by a failed build;
#   3. duplicates that come back as fast as the passes remove them for 30
#      passes of a small table (a few seconds), then stop: the job keeps
#      passing, and ends done (it gave up after 25 passes, a second);
#   4. with add_unique, a writer that adds duplicates while each unique
#      index build scans the table: the job keeps the index of a build that
#      failed as a guard (which refuses the writer's duplicates from then
#      on), and ends done with its index valid and its guards dropped;
#   5. a job that stops leaves no guard: paused (its worker drops them),
#      paused or cancelled while no worker runs it, rolled back.  The guards are made
#      by hand: invalid unique indexes of a guard's name, as the index of a
#      build that failed in its second scan is.
#
# 1. t: ids 1..20, k = a..e repeating (group a: survivor 1, losers 6, 11, 16;
# group b: survivor 2, losers 7, 12, 17).  With batch_size 6 the first batch
# is groups a and b: it locks survivors 1 and 2 (FOR SHARE, in that order),
# then deletes their losers.
#   - a blocker holds row 2, so the batch holds row 1 and waits for row 2;
#   - a writer holds loser 16, then updates row 1: it waits for the batch;
#   - the blocker commits: the batch locks row 2 and its DELETE reaches 16,
#     held by the writer, which waits for the batch: a deadlock, closed by
#     the batch.  Both sessions check for it after their deadlock_timeout,
#     the writer (5 s here, so that a slow machine's stall between the two
#     waits cannot let it check first) since before the batch; the worker
#     checks after 10 ms, finds it, and is the one rolled back.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use DedupTest;

my $node = PostgreSQL::Test::Cluster->new('batch_writers');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'dedup_ext'
max_worker_processes = 16
deadlock_timeout = 5s
log_min_messages = debug1
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION dedup_ext;
	CREATE TABLE t (id int PRIMARY KEY, k text NOT NULL, v int NOT NULL DEFAULT 0);
	INSERT INTO t SELECT g, chr(ascii('a') + (g - 1) % 5), 0 FROM generate_series(1, 20) g;
	ANALYZE t;
});

# until the session with this pid waits for a lock
sub wait_for_lock
{
	my ($pid_sql, $what) = @_;
	ok( $node->poll_query_until('postgres',
			qq{SELECT EXISTS (SELECT FROM pg_stat_activity
			                   WHERE pid = ($pid_sql) AND wait_event_type = 'Lock')}),
		"$what waits for a lock");
}

my $blocker = $node->background_psql('postgres');
$blocker->query_safe('BEGIN');
$blocker->query_safe('SELECT FROM t WHERE id = 2 FOR UPDATE');

my $writer = $node->background_psql('postgres', on_error_stop => 0);
my $writer_pid = $writer->query_safe('SELECT pg_backend_pid()');
$writer->query_safe('BEGIN');
$writer->query_safe('UPDATE t SET v = v + 1 WHERE id = 16');

# a lock_timeout long enough that the batch keeps row 1 while it waits for
# row 2 (the retry after the deadlock sleeps as long)
my $job = $node->safe_psql('postgres', q{
	SET dedup_ext.lock_timeout = 6000;
	SELECT job_id FROM dedup_table('t', '{k}', background => true, batch_size => 6);
});
wait_for_lock("SELECT pid FROM pg_stat_activity WHERE backend_type = 'dedup_ext worker'",
	'the batch, on the blocker');

$writer->query_until(qr/sent/,
	"\\echo sent\nUPDATE t SET v = v + 1 WHERE id = 1 RETURNING 'writer updated';\n");
wait_for_lock($writer_pid, 'the writer, on the batch');

$blocker->query_safe('COMMIT');
my ($out) = $writer->query('SELECT 1');
is($writer->{stderr}, '', 'the writer got no error');
like($out, qr/writer updated/, "the writer's update went through");
$writer->query_safe('COMMIT');
$blocker->quit;
$writer->quit;

is($node->safe_psql('postgres', "SELECT dedup_wait($job, '60s')"), 'done', 'the job is done');
like(slurp_file($node->logfile), qr/job $job: retrying a batch after: deadlock detected/,
	'the batch was rolled back by the deadlock, and retried');
is($node->safe_psql('postgres', q{
		SELECT string_agg(k || '=' || id || ':' || v, ' ' ORDER BY k) FROM t}),
	'a=1:1 b=2:0 c=3:0 d=4:0 e=5:0', 'one row a key, with the writer\'s update of 1');
is($node->safe_psql('postgres',
		"SELECT count(*) FROM dedup_verify($job) WHERE NOT ok"), '0', 'dedup_verify all ok');

# add_unique: when the first pass's batches skipped losers, whose survivor a
# writer updated after the pass, the job scans again before it builds the
# index, instead of a build that is bound to fail on them.
$node->safe_psql('postgres', q{
	CREATE TABLE u (id int PRIMARY KEY, k text NOT NULL, v int NOT NULL DEFAULT 0);
	INSERT INTO u SELECT g, chr(ascii('a') + (g - 1) % 5), 0 FROM generate_series(1, 20) g;
	ANALYZE u;
});
$job = $node->safe_psql('postgres', q{
	SET dedup_ext.batch_delay = 500;
	SELECT job_id FROM dedup_table('u', '{k}', background => true, batch_size => 3,
	                               add_unique => true);
});
ok( $node->poll_query_until('postgres',
		"SELECT batches_done >= 1 FROM dedup_jobs WHERE job_id = $job"),
	'add_unique: the first batch is done');
# the survivor of group e, whose batch is the last of the pass
$node->safe_psql('postgres', 'UPDATE u SET v = v + 1 WHERE id = 5');
is(wait_job($node, $job, '60s'), 'done', 'add_unique: the job is done');
is($node->safe_psql('postgres',
		"SELECT passes || ' ' || rows_deleted || ' ' || unique_index FROM dedup_jobs WHERE job_id = $job"),
	'2 15 u_k_key', 'add_unique: a second pass removed the skipped losers, then the index was built');
unlike(slurp_file($node->logfile), qr/job $job: the unique index build found a duplicate/,
	'add_unique: no index build failed on the skipped losers');
is($node->safe_psql('postgres', q{
		SELECT string_agg(k || '=' || id || ':' || v, ' ' ORDER BY k) FROM u}),
	'a=1:0 b=2:0 c=3:0 d=4:0 e=5:1', 'add_unique: one row a key');

# 3. w: 1500 rows, keys 0..999.  The duplicates come back as the passes
# remove them: each loser a batch deletes is written again by a trigger, in
# the batch's own transaction, until the job has made 30 passes.  (A writer
# in a session of its own can stall for longer than a pass of this small
# table takes, which would end the job early.)
$node->safe_psql('postgres', q{
	CREATE TABLE w (id serial PRIMARY KEY, k int NOT NULL);
	INSERT INTO w (k) SELECT g % 1000 FROM generate_series(1, 1500) g;
	ANALYZE w;
	CREATE FUNCTION w_again() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
	  IF coalesce((SELECT max(passes) FROM public.dedup_jobs WHERE relation = 'public.w'::regclass), 0) < 30 THEN
	    INSERT INTO public.w (k) SELECT k FROM gone;
	  END IF;
	  RETURN NULL;
	END $$;
	CREATE TRIGGER w_again AFTER DELETE ON w REFERENCING OLD TABLE AS gone
	  FOR EACH STATEMENT EXECUTE FUNCTION w_again();
});
$job = $node->safe_psql('postgres',
	q{SELECT job_id FROM dedup_table('w', '{k}', background => true, batch_size => 100)});
is($node->safe_psql('postgres', "SELECT dedup_wait($job, '120s')"), 'done',
	'duplicates written during many passes: the job is done once they stop');
cmp_ok($node->safe_psql('postgres', "SELECT passes FROM dedup_jobs WHERE job_id = $job"), '>', 30,
	'after more than 30 passes');
is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || count(DISTINCT k) FROM w}), '1000 1000',
	'one row a key');

# 4. g: 500,000 rows, 1% of them duplicates.  The writer adds a duplicate
# of a random key every 10 ms while an index build of g scans the table
# (pg_stat_progress_create_index), after the build's snapshot: the worst
# moment, which fails every build whose index does not refuse it (the
# build's second scan finds it), as a writer adding duplicates all along
# fails them on a large table.  Each duplicate is a transaction of its own;
# the writer counts those refused.
$node->safe_psql('postgres', q{
	CREATE TABLE g (id serial PRIMARY KEY, k int NOT NULL);
	INSERT INTO g (k) SELECT CASE WHEN g % 100 = 0 THEN g - 1 ELSE g END FROM generate_series(1, 500000) g;
	CREATE TABLE refused (n int);
	ANALYZE g;
});
my $log_offset = -s $node->logfile;
my $steady = $node->background_psql('postgres');
$steady->query_until(qr/writing/, q{\echo writing
DO $$
DECLARE
  until timestamptz := clock_timestamp() + interval '100 s';
  n int := 0;
BEGIN
  WHILE clock_timestamp() < until
        AND NOT EXISTS (SELECT FROM dedup_jobs WHERE relation = 'g'::regclass
                          AND state IN ('done', 'failed', 'cancelled')) LOOP
    IF EXISTS (SELECT FROM pg_stat_progress_create_index
                WHERE relid = 'g'::regclass AND phase LIKE 'building index%') THEN
      BEGIN
        INSERT INTO g (k) VALUES (1 + floor(random() * 499999)::int);
      EXCEPTION WHEN unique_violation THEN
        n := n + 1;
      END;
    END IF;
    -- a new transaction reads the progress anew
    COMMIT;
    PERFORM pg_sleep(0.01);
  END LOOP;
  INSERT INTO refused VALUES (n);
END $$;
\echo written
});
$job = $node->safe_psql('postgres',
	q{SELECT job_id FROM dedup_table('g', '{k}', background => true, add_unique => true)});
is(wait_job($node, $job, '150s'), 'done',
	'add_unique with a writer adding duplicates all along: the job is done');
$steady->query_until(qr/written/, '');
$steady->quit;
like(slurp_file($node->logfile, $log_offset),
	qr/job $job: its unique index build found a duplicate; the index stays as public\.dedup_guard_${job}_1, invalid/,
	'a build that failed left a guard');
is($node->safe_psql('postgres', q{
	SELECT i.indisvalid FROM pg_index i JOIN dedup_jobs j ON j.unique_index::regclass = i.indexrelid
	 WHERE j.relation = 'g'::regclass}), 't', 'its unique index is valid');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_index WHERE indrelid = 'g'::regclass}), '2',
	'no guard is left: the primary key and the unique index');
is($node->safe_psql('postgres', q{SELECT count(*) - count(DISTINCT k) FROM g}), '0', 'no duplicate');
cmp_ok($node->safe_psql('postgres', 'SELECT n FROM refused'), '>', 0,
	"the writer's duplicates were refused");


# 5. p: 1000 rows, keys 0..499 twice over
$node->safe_psql('postgres', q{
	CREATE TABLE p (id int PRIMARY KEY, k int NOT NULL);
	INSERT INTO p SELECT g, g % 500 FROM generate_series(1, 1000) g;
	ANALYZE p;
});
# guard NAME: an invalid unique index of that name on p
sub guard
{
	my ($name, $column) = @_;
	$node->safe_psql('postgres', qq{
		CREATE UNIQUE INDEX $name ON p ($column);
		UPDATE pg_index SET indisvalid = false WHERE indexrelid = '$name'::regclass;
	});
}
my $indexes = q{SELECT string_agg(c.relname || CASE WHEN i.indisvalid THEN '' ELSE ' (invalid)' END, ', '
                                   ORDER BY c.relname)
                  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'p'::regclass};

# 50 batches of 10 losers, 200 ms apart: paused in the middle
$job = $node->safe_psql('postgres', q{
	SET dedup_ext.batch_delay = 200;
	SELECT job_id FROM dedup_table('p', '{k}', background => true, add_unique => true, batch_size => 10);
});
ok($node->poll_query_until('postgres',
		"SELECT phase = 'deleting' FROM dedup_jobs WHERE job_id = $job"), 'the job is in its batches');
guard("dedup_guard_${job}_1", 'id');
guard("dedup_guard_${job}_2", 'id');
# a valid index of a guard's name is not one
$node->safe_psql('postgres', "CREATE INDEX dedup_guard_${job}_3 ON p (k)");
$node->safe_psql('postgres', "SELECT dedup_pause($job)");
is($node->safe_psql('postgres', "SELECT dedup_wait($job, '60s')"), 'paused', 'the job is paused');
is($node->safe_psql('postgres', $indexes), "dedup_guard_${job}_3, p_pkey",
	'its worker dropped its guards, and only them');

guard("dedup_guard_${job}_1", 'id');
is($node->safe_psql('postgres', "SELECT dedup_cancel($job)"), 't', 'the paused job is cancelled');
is($node->safe_psql('postgres', $indexes), "dedup_guard_${job}_3, p_pkey",
	'dedup_cancel dropped its guard');
my $cancelled = $job;

# a job paused before it ran (in its submitting transaction), with a guard
$node->safe_psql('postgres', "DROP INDEX dedup_guard_${cancelled}_3");
my $queued = $node->safe_psql('postgres', q{
	BEGIN;
	CREATE TEMP TABLE submitted ON COMMIT DROP AS
	  SELECT job_id FROM dedup_table('p', '{k}', background => true, add_unique => true);
	SELECT format('CREATE UNIQUE INDEX dedup_guard_%s_1 ON p (id)', job_id) FROM submitted \gexec
	UPDATE pg_index SET indisvalid = false
	 WHERE indexrelid = (SELECT format('dedup_guard_%s_1', job_id)::regclass FROM submitted);
	SELECT dedup_pause(job_id) FROM submitted;
	SELECT job_id FROM submitted;
	COMMIT;
});
($queued) = $queued =~ /(\d+)\s*$/;
is($node->safe_psql('postgres', "SELECT state FROM dedup_jobs WHERE job_id = $queued"), 'paused',
	'a job paused before it ran');
is($node->safe_psql('postgres', $indexes), 'p_pkey', 'dedup_pause dropped its guard');
$node->safe_psql('postgres', "SELECT dedup_cancel($queued)");

# a job done, then a guard on its key (the rows are unique again): its
# rollback drops it, or the duplicates it puts back would be refused
$job = $node->safe_psql('postgres',
	q{SELECT job_id FROM dedup_table('p', '{k}', background => true, add_unique => true)});
is(wait_job($node, $job, '60s'), 'done', 'a second job is done');
guard("dedup_guard_${job}_1", 'k');
cmp_ok($node->safe_psql('postgres', "SELECT dedup_rollback($job)"), '>', 0, 'its rollback puts rows back');
is($node->safe_psql('postgres', $indexes), 'p_pkey', 'and drops its unique index and its guard');
cmp_ok($node->safe_psql('postgres', "SELECT dedup_rollback($cancelled)"), '>', 0,
	"the cancelled job's batches roll back too");
is($node->safe_psql('postgres', 'SELECT count(*) FROM p'), '1000', 'every row is back');

$node->stop;
done_testing();

# With dedup_ext.worker_yield on (off by default; src/cpu_yield.c), a
# background job gives its CPU to processes waiting for one, and still
# finishes on a machine whose CPUs never idle:
#   1. with CPU-bound loops on every CPU and one more, the job naps (its
#      DEBUG1 line counts the times it gave way), and is done with no
#      duplicate left; its batches, which are SQL only, nap too (through
#      the executor hook), but no longer than they run on a CPU: they hold
#      row locks;
#   2. a batch that a writer waits for does not nap: the batch is held (by
#      a trigger waiting for an advisory lock) until a writer waits for one
#      of its survivors, then goes on under the loops;
#   3. a background backfill_fk's linking batches nap too, within the same
#      budget;
#   4. with dedup_ext.worker_yield off, under the same loops, it never naps.
# Linux only: elsewhere the kernel's count of runnable tasks is not read.
use strict;
use warnings;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

plan skip_all => 'no /proc/loadavg' unless -r '/proc/loadavg';

my $node = PostgreSQL::Test::Cluster->new('cpu_yield');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'dedup_ext'
max_worker_processes = 16
log_min_messages = debug1
dedup_ext.worker_yield = on
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION dedup_ext');
is($node->safe_psql('postgres', "SELECT boot_val FROM pg_settings WHERE name = 'dedup_ext.worker_yield'"),
	'off', 'worker_yield is off unless set');

# t_NAME: 50,000 rows and DUPS more, each a duplicate of one of them
sub create_table
{
	my ($name, $dups) = @_;
	$node->safe_psql('postgres', qq{
		CREATE TABLE $name (id bigint PRIMARY KEY, k text NOT NULL);
		INSERT INTO $name SELECT g, 'key-' || g FROM generate_series(1, 50000) g;
		INSERT INTO $name SELECT 50000 + g, 'key-' || (g * 7) FROM generate_series(1, $dups) g;
		ANALYZE $name;
	});
}

# One busy loop more than there are CPUs (as the worker counts them), for
# at most two minutes.  A loop leaves by _exit: exit would run the END blocks
# it inherited, which stop the test's server.
my @loops;
my $test_pid = $$;

sub start_loops
{
	chomp(my $cpus = `getconf _NPROCESSORS_ONLN`);
	for (0 .. $cpus)
	{
		my $pid = fork();
		die "fork: $!" unless defined $pid;
		if ($pid == 0)
		{
			my $end = time() + 120;
			1 while time() < $end;
			POSIX::_exit(0);
		}
		push @loops, $pid;
	}
}

sub stop_loops
{
	kill 'KILL', @loops;
	waitpid($_, 0) for @loops;
	@loops = ();
}

END { stop_loops() if $$ == $test_pid; }

# once the job's worker is gone, what the server logged since offset: the
# worker logs its naps after the job's last commit, then leaves
sub log_after_worker
{
	my ($offset) = @_;
	ok($node->poll_query_until('postgres',
			q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dedup_ext worker'}, '0'),
		'its worker is gone');
	return slurp_file($node->logfile, $offset);
}

# the job's batches napped, and no longer than they ran on a CPU.  Each
# batch looks at its budget before each nap of 100 us: it may overrun by one
# nap and the wait for a CPU after it (a few ms beside the loops).  Without
# the budget, the batches slept 37 times as long as they worked.
sub check_batch_naps
{
	my ($job, $log, $what) = @_;
	my ($naps, $cpu) =
	  $log =~ /dedup_ext job $job: gave the CPU .* its batches napped (\d+) ms against (\d+) ms on a CPU/;
	ok(defined $naps && $naps > 0, "$what gave way") or diag($log);
	my $batches = $node->safe_psql('postgres', "SELECT batches_done FROM dedup_jobs WHERE job_id = $job");
	ok(defined $cpu && $naps <= $cpu + $batches * 50,
		"but napped no longer than they ran on a CPU ($naps ms against $cpu ms, $batches batches)");
}

# runs a background dedup of the table under the loops; returns the job id
# and what the server logged meanwhile
sub run_job
{
	my ($table, $batch_size) = @_;
	my $offset = -s $node->logfile;
	start_loops();
	my $job = $node->safe_psql('postgres',
		qq{SELECT job_id FROM dedup_table('$table', '{k}', background => true, batch_size => $batch_size)});
	$node->poll_query_until('postgres',
		qq{SELECT state IN ('done', 'failed', 'cancelled') FROM dedup_jobs WHERE job_id = $job});
	stop_loops();
	is($node->safe_psql('postgres', qq{SELECT state FROM dedup_jobs WHERE job_id = $job}),
		'done', "$table: the job is done while every CPU is busy");
	return ($job, log_after_worker($offset));
}

# 1. yielding (the default): five batches of 1,000 losers
create_table('t_yield', 5000);
my ($job, $log) = run_job('t_yield', 1000);
like($log, qr/dedup_ext job $job: gave the CPU [1-9]\d* times, \d+ ms in all, to processes waiting for one/,
	'the worker gave its CPU to the waiting loops');
check_batch_naps($job, $log, 'its batches, whose rows come from SQL statements alone,');
is($node->safe_psql('postgres',
		qq{SELECT rows_deleted || ' ' || batches_done || ' ' || (SELECT duplicate_rows FROM dedup_audit('t_yield', '{k}'))
		     FROM dedup_jobs WHERE job_id = $job}),
	'5000 5 0', 'every duplicate is gone, in five batches');

# 2. a writer waits for the batch.  The batch's DELETE fires the trigger
# for its first loser, which waits for the advisory lock this session holds;
# meanwhile the writer's UPDATE of a survivor waits for the batch.  The
# trigger then works about 0.1 ms per row, half a second in all: a batch
# naps only while its naps so far are shorter than its CPU time, and its
# lock statements may have used up that budget before the wait (a nap can
# overrun by the wait for a CPU after it).  The DELETE itself, which finds
# its rows by one TID scan, is too short to earn it back.
create_table('t_waited', 5000);
$node->safe_psql('postgres', q{
	CREATE FUNCTION hold_batch() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_catalog.pg_advisory_xact_lock_shared(7007);
		PERFORM pg_catalog.sum(g) FROM pg_catalog.generate_series(1, 1000) g;
		RETURN OLD;
	END $$;
	CREATE TRIGGER hold_batch BEFORE DELETE ON t_waited FOR EACH ROW EXECUTE FUNCTION hold_batch();
});
my $holder = $node->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(7007)');
my $offset = -s $node->logfile;
start_loops();
# long enough for the trigger's wait: a lock timeout would retry the batch
$job = $node->safe_psql('postgres', q{
	SET dedup_ext.lock_timeout = 600000;
	SELECT job_id FROM dedup_table('t_waited', '{k}', background => true, batch_size => 5000);
});
ok( $node->poll_query_until('postgres', q{
		SELECT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'dedup_ext worker'
		                AND wait_event_type = 'Lock' AND wait_event = 'advisory')}),
	'the batch waits in its trigger');
my $writer = $node->background_psql('postgres');
my $writer_pid = $writer->query_safe('SELECT pg_backend_pid()');
# survivor 7 ('key-7') is in the batch, locked FOR SHARE
$writer->query_until(qr/sent/, "\\echo sent\nUPDATE t_waited SET k = k WHERE id = 7;\n");
ok( $node->poll_query_until('postgres', qq{
		SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $writer_pid
		                AND wait_event_type = 'Lock' AND wait_event = 'transactionid')}),
	'the writer waits for the batch');
$holder->query_safe('SELECT pg_advisory_unlock(7007)');
is($node->safe_psql('postgres', "SELECT dedup_wait($job, '120s')"), 'done', 'the job is done');
stop_loops();
$writer->query_safe('SELECT 1');
$writer->quit;
$holder->quit;
$log = log_after_worker($offset);
my ($skipped) = $log =~ /dedup_ext job $job: gave the CPU .* and did not nap (\d+) times for writers waiting for them/;
ok(defined $skipped && $skipped > 0,
	'the batch saw the writer waiting for it, and did not nap' . (defined $skipped ? " ($skipped times)" : ''))
  or diag($log);
is($node->safe_psql('postgres', qq{SELECT rows_deleted FROM dedup_jobs WHERE job_id = $job}),
	'5000', 'and removed every duplicate');

# 3. a backfill: 50,000 tags naming 1,000 keywords, linked in batches
$node->safe_psql('postgres', q{
	CREATE TABLE kw (id bigint PRIMARY KEY, name text NOT NULL UNIQUE);
	INSERT INTO kw SELECT g, 'kw-' || g FROM generate_series(1, 1000) g;
	CREATE TABLE tag (id bigint PRIMARY KEY, name text NOT NULL, kw_id bigint);
	INSERT INTO tag SELECT g, 'kw-' || (g % 1000 + 1), NULL FROM generate_series(1, 50000) g;
	ANALYZE kw;
	ANALYZE tag;
});
$offset = -s $node->logfile;
start_loops();
$job = $node->safe_psql('postgres',
	q{SELECT job_id FROM backfill_fk('tag', 'kw_id', 'kw', '{name}', background => true, batch_size => 10000)});
is($node->safe_psql('postgres', "SELECT dedup_wait($job, '120s')"), 'done', 'the backfill is done while every CPU is busy');
stop_loops();
$log = log_after_worker($offset);
check_batch_naps($job, $log, 'its linking batches');
is($node->safe_psql('postgres', 'SELECT count(*) FROM tag WHERE kw_id IS NULL'), '0', 'every tag is linked');

# 4. dedup_ext.worker_yield off (a new backend shows that the reload is done)
$node->safe_psql('postgres', 'ALTER SYSTEM SET dedup_ext.worker_yield = off');
$node->reload;
ok($node->poll_query_until('postgres', 'SHOW dedup_ext.worker_yield', 'off'),
	'worker_yield is off');
create_table('t_busy', 500);
($job, $log) = run_job('t_busy', 100);
unlike($log, qr/dedup_ext job $job: gave the CPU/, 'with worker_yield off it never gives way');
is($node->safe_psql('postgres', qq{SELECT rows_deleted FROM dedup_jobs WHERE job_id = $job}),
	'500', 'and removes the same duplicates');

$node->stop;
done_testing();

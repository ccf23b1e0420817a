# Background jobs (dedup_table(..., background => true)) survive what can
# happen to a server while they run, and end in the same table a foreground
# dedup makes:
#   1. preloaded: an immediate stop mid-job; the launcher resumes the job at
#      the next start by itself (its unlogged work list is gone: a new pass
#      lists what is left), and a second job beside it, side by side;
#   2. preloaded: the job's worker is killed with SIGKILL; after the
#      postmaster's crash-restart the job resumes and finishes (a new pass
#      here too);
#   3. dedup_ext.max_workers = 1: of three jobs one runs, the others wait
#      queued, and all three finish; a job whose table is locked when its
#      turn comes waits with no phase yet, then runs; a worker stopped by
#      pg_terminate_backend leaves its job interrupted, shown once, and the
#      job queued behind it gets a new worker; with
#      max_workers lowered to 0, a worker whose job stops takes no other;
#      two jobs submitted in one transaction run side by side; a job queued
#      behind the limit starts when a reload raises it; workers sleep while
#      the only queued job's row is held by another session;
#   4. not preloaded: after an immediate stop the job stays 'interrupted'
#      until dedup_resume, then finishes (with add_unique, built
#      CONCURRENTLY); so does a merge, whose referencing table ends as a
#      foreground merge leaves it; rewrite is refused in the background (0A000);
#   5. a job that hits an error (a trigger's custom SQLSTATE and HINT, a key
#      column dropped under it) fails with that error in dedup_jobs.error and
#      leaves every key with a row;
#   6. a job whose passes hash only the rows changed since its first pass
#      (and read only the pages changed since the pass before) still finds
#      the duplicates writers made between its batches, and a first pass
#      rolled back and run again hashes every row again;
#   7. preloaded: with dedup_ext.wal_compression a job after a checkpoint
#      writes less WAL, and a running worker takes the setting, reloaded,
#      at its next batch.
#   8. a pause that the worker saw at a batch's commit and dedup_resume
#      withdrew before the worker carried it out is not carried out; one
#      that dedup_cancel replaced cancels the job.
# A resumed job's survivors are exactly those of a foreground dedup of the
# same rows, its archive holds every removed row, and dedup_verify agrees.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $N = 200_000;

# $N rows, keys spread by a hash so that groups have various sizes; about
# half of the rows are duplicates
sub create_table
{
	my ($node, $name, $n) = @_;
	$node->safe_psql('postgres', qq{
		CREATE TABLE $name (id int PRIMARY KEY, k int NOT NULL, payload text);
		INSERT INTO $name
		SELECT g, (hashint4(g)::bigint + 2147483648) % ($n * 3 / 5), 'row ' || g
		  FROM generate_series(1, $n) g;
		ANALYZE $name;
	});
	return $node->safe_psql('postgres',
		qq{SELECT duplicate_rows FROM dedup_audit('$name', '{k}')});
}

sub rows_md5
{
	my ($node, $name) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM $name t});
}

# submit a slow background job (the session's batch_delay is captured)
sub submit
{
	my ($node, $table, $delay, $extra) = @_;
	$extra = defined $extra ? ", $extra" : '';
	return $node->safe_psql('postgres', qq{
		SET dedup_ext.batch_delay = $delay;
		SELECT job_id FROM dedup_table('$table', '{k}', background => true,
		                               batch_size => 2000$extra);
	});
}

# wait until no dedup_ext worker is left from the jobs before (one still
# alive would run the next job without the settings changed since)
sub no_worker_left
{
	my ($node, $what) = @_;
	ok($node->poll_query_until('postgres',
			q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'dedup_ext worker'}),
		$what);
}

sub job_field
{
	my ($node, $job, $expr) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT $expr FROM dedup_jobs WHERE job_id = $job});
}

# the end state of a finished delete job on a table made by create_table
sub check_done
{
	my ($node, $table, $job, $dups, $expected_md5, $what) = @_;
	is(job_field($node, $job, 'state'), 'done', "$what: job done");
	is($node->safe_psql('postgres',
			qq{SELECT duplicate_rows FROM dedup_audit('$table', '{k}')}),
		'0', "$what: no duplicates left");
	is(rows_md5($node, $table), $expected_md5,
		"$what: the same survivors as a foreground dedup");
	is(job_field($node, $job, 'rows_deleted'), $dups,
		"$what: rows_deleted = the duplicates the audit counted");
	my $archive = job_field($node, $job, 'archive_table');
	is($node->safe_psql('postgres',
			qq{SELECT (SELECT count(*) FROM $archive) + (SELECT count(*) FROM $table)}),
		$N, "$what: archive + table = the original rows");
	is($node->safe_psql('postgres',
			qq{SELECT count(*) FROM $archive a JOIN $table t USING (id)}),
		'0', "$what: no archived row is still in the table");
	is($node->safe_psql('postgres',
			qq{SELECT string_agg(check_name || ': ' || detail, '; ')
			     FROM dedup_verify($job) WHERE NOT ok}),
		'', "$what: dedup_verify all ok");
	is($node->safe_psql('postgres',
			qq{SELECT count(*) FROM pg_tables
			    WHERE schemaname = 'dedup_archive' AND tablename LIKE '%\\_work'}),
		'0', "$what: work table dropped");
}

# dedup_progress's speed after a pause: the rows of the run since the
# resume over that run's time, not every row over the time since the first
# start.  The job is paused for $pause seconds after its first batch; after
# the resume it does a batch and waits in its batch_delay, running.  A speed
# diluted by the pause would be at most rows_done / $pause, and the eta at
# least the rows left at that speed.
sub speed_after_pause
{
	my ($node, $table, $what) = @_;
	my $pause = 6;
	create_table($node, $table, 20_000);
	my $job = $node->safe_psql('postgres', qq{
		SET dedup_ext.batch_delay = 3000;
		SELECT job_id FROM dedup_table('$table', '{k}', background => true, batch_size => 100);
	});
	ok($node->poll_query_until('postgres', qq{SELECT batches_done >= 1 FROM dedup_jobs WHERE job_id = $job}),
		"$what: the job did a batch");
	$node->safe_psql('postgres', "SELECT dedup_pause($job)");
	is($node->safe_psql('postgres', qq{SELECT dedup_wait($job, '60s')}), 'paused', "$what: paused");
	my $before = job_field($node, $job, 'rows_done');
	sleep $pause;
	is($node->safe_psql('postgres', "SELECT dedup_resume($job)"), 't', "$what: resumed");
	ok($node->poll_query_until('postgres', qq{
			SELECT rows_done > $before AND state = 'running' FROM dedup_progress WHERE job_id = $job}),
		"$what: a batch after the resume");
	is($node->safe_psql('postgres', qq{
			SELECT format('%s %s', rows_per_second > rows_done / $pause.0,
			              eta < make_interval(secs => (rows_total - rows_done) * $pause.0 / rows_done))
			  FROM dedup_progress WHERE job_id = $job}),
		't t', "$what: rows_per_second and eta count the time since the resume only");
	# a worker lets go of its live row just after the commit that ends the
	# job: a row that says the job ended wins (the UPDATE stands for that
	# commit, and is rolled back)
	is($node->safe_psql('postgres', qq{
			BEGIN;
			UPDATE dedup_job SET state = 'done' WHERE job_id = $job;
			SELECT count(*) FROM dedup_progress WHERE job_id = $job;
			ROLLBACK;}),
		'0', "$what: a job whose row says done is not shown running");
	$node->safe_psql('postgres', "SELECT dedup_cancel($job)");
	is($node->safe_psql('postgres', qq{SELECT dedup_wait($job, '60s')}), 'cancelled', "$what: cancelled");
	return $job;
}

###########################################################################
# preloaded node
###########################################################################
my $node = PostgreSQL::Test::Cluster->new('bg_preload');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'dedup_ext'
max_worker_processes = 16
restart_after_crash = on
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION dedup_ext');

# the expected survivors: the same rows deduped in the foreground
my $dups = create_table($node, 'expected', $N);
ok($dups > $N * 0.4 && $dups < $N * 0.6, "about half of the rows are duplicates: $dups");
is($node->safe_psql('postgres',
		q{SELECT state || ' ' || rows_deleted FROM dedup_table('expected', '{k}')}),
	"done $dups", 'foreground dedup of the clone');
my $expected_md5 = rows_md5($node, 'expected');

# 1. immediate stop mid-job; the launcher resumes it at the next start
is(create_table($node, 'big1', $N), $dups, 'big1: same duplicates as the clone');
my $job = submit($node, 'big1', 100);
ok($node->poll_query_until('postgres',
		qq{SELECT batches_done >= 2 FROM dedup_jobs WHERE job_id = $job}),
	'job 1 is batching');
is(job_field($node, $job, 'background::text || phase'), 'truedeleting',
	'a background job in phase deleting');
my $progress = $node->safe_psql('postgres',
	qq{SELECT state || ' ' || phase || ' ' || (percent > 0 AND percent < 100)
	     FROM dedup_progress WHERE job_id = $job});
is($progress, 'running deleting true', 'dedup_progress shows it mid-way');
# a second job beside it, slower: both are resumed, and run side by side
create_table($node, 'side1', 40_000);
my $side = submit($node, 'side1', 1000);
ok($node->poll_query_until('postgres',
		qq{SELECT batches_done >= 1 FROM dedup_jobs WHERE job_id = $side}),
	'a second job is batching beside it');
$node->stop('immediate');
my $log_offset = -s $node->logfile;
$node->start;
ok($node->poll_query_until('postgres',
		qq{SELECT count(*) FROM dedup_progress WHERE job_id IN ($job, $side) AND state = 'running'}, '2'),
	'after an immediate stop and a start both jobs run again, side by side');
ok($node->poll_query_until('postgres',
		qq{SELECT state FROM dedup_jobs WHERE job_id = $job}, 'done'),
	'after an immediate stop and a start the job finishes by itself');
ok($node->log_contains(qr/dedup_ext: resuming 2 interrupted background jobs/, $log_offset),
	'the launcher resumed them');
$node->safe_psql('postgres', "SELECT dedup_cancel($side)");
like($node->safe_psql('postgres', "SELECT dedup_wait($side, '60s')"), qr/^(cancelled|done)$/,
	'the second job is cancelled, or done already (its work table dropped)');
ok($node->log_contains(qr/dedup_ext job $job: its work list was emptied by a crash, scanning the table again/,
		$log_offset),
	'its unlogged work list was lost in the stop, and a new pass listed what was left');
cmp_ok(job_field($node, $job, 'batches_done'), '>=', 2, 'it kept the batches done before the stop');
check_done($node, 'big1', $job, $dups, $expected_md5, 'resumed after stop');

# 2. the worker killed with SIGKILL: crash-restart, then the job resumes.
# Its worker starts with dedup_ext.worker_sched_idle on (a new backend
# shows that the reload is done).
$node->safe_psql('postgres', 'ALTER SYSTEM SET dedup_ext.worker_sched_idle = on');
$node->reload;
ok($node->poll_query_until('postgres', 'SHOW dedup_ext.worker_sched_idle', 'on'),
	'worker_sched_idle is on');
# and the worker that ran job 1, started before the reload, is gone
no_worker_left($node, 'no worker left from job 1');
is(create_table($node, 'big2', $N), $dups, 'big2: same duplicates as the clone');
$job = submit($node, 'big2', 100);
ok($node->poll_query_until('postgres',
		qq{SELECT batches_done >= 2 AND worker_pid IS NOT NULL FROM dedup_jobs WHERE job_id = $job}),
	'job 2 is batching');
my $pid = job_field($node, $job, 'worker_pid');
is($node->safe_psql('postgres',
		qq{SELECT backend_type FROM pg_stat_activity WHERE pid = $pid}),
	'dedup_ext worker', 'worker_pid is the dedup_ext worker');
# /proc/PID/stat: the 19th field is the nice value (the name, field 2, may hold spaces)
my ($after_name) = slurp_file("/proc/$pid/stat") =~ /\)\s+(.*)$/s;
is((split /\s+/, $after_name)[16], 10, 'the worker runs at dedup_ext.worker_nice (10)');
# the 41st field is the scheduling policy: 5 is SCHED_IDLE
is((split /\s+/, $after_name)[38], 5, 'with dedup_ext.worker_sched_idle on, the worker runs at SCHED_IDLE');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET dedup_ext.worker_sched_idle');
$node->reload;
# with autogroup scheduling a nice value ranks a process only within its
# session, and the worker has a session of its own: the session is lowered too
SKIP:
{
	skip 'the kernel has no autogroup scheduling', 1 unless -e "/proc/$pid/autogroup";
	like(slurp_file("/proc/$pid/autogroup"), qr/ nice 10$/m,
		"the worker's session (autogroup) runs at dedup_ext.worker_nice too");
}
$log_offset = -s $node->logfile;
ok(kill('KILL', $pid), "worker $pid killed");
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
# dedup_wait, called while the job is interrupted, waits for the launcher to
# resume it (it returned 'interrupted' at once)
my $waited = '';
for (1 .. 100)
{
	my ($ret, $out) = $node->psql('postgres', qq{SELECT dedup_wait($job, '120s')});
	if ($ret == 0)
	{
		$waited = $out;
		last;
	}
	usleep(100_000);    # until the server accepts connections again
}
is($waited, 'done', 'dedup_wait right after the crash-restart waits until the job is done');
ok($node->poll_query_until('postgres',
		qq{SELECT state FROM dedup_jobs WHERE job_id = $job}, 'done'),
	'after the crash-restart the job finishes');
ok($node->log_contains(qr/dedup_ext: resuming 1 interrupted background jobs/, $log_offset),
	'the launcher resumed it after the crash-restart');
ok($node->log_contains(qr/dedup_ext job $job: its work list was emptied by a crash, scanning the table again/,
		$log_offset),
	'the crash-restart emptied its work list, and a new pass listed what was left');
check_done($node, 'big2', $job, $dups, $expected_md5, 'resumed after SIGKILL');

# 3. dedup_ext.max_workers = 1: one job runs at a time, the others wait
$node->safe_psql('postgres', q{ALTER SYSTEM SET dedup_ext.max_workers = 1});
$node->reload;
ok($node->poll_query_until('postgres', 'SHOW dedup_ext.max_workers', '1'),
	'max_workers = 1 after reload');
create_table($node, "small$_", 20_000) for 1 .. 3;
my @jobs = map { submit($node, "small$_", 200) } 1 .. 3;
my $ids = join(',', @jobs);
my ($max_running, $seen_one_running_two_queued, $all_done) = (0, 0, 0);
my $deadline = time() + 120;
while (time() < $deadline)
{
	my $states = $node->safe_psql('postgres',
		qq{SELECT string_agg(state, ',' ORDER BY job_id) FROM dedup_jobs WHERE job_id IN ($ids)});
	my $running = () = $states =~ /running/g;
	$max_running = $running if $running > $max_running;
	$seen_one_running_two_queued = 1 if $states eq 'running,queued,queued';
	if ($states eq 'done,done,done')
	{
		$all_done = 1;
		last;
	}
	usleep(50_000);
}
ok($all_done, 'all three jobs done');
is($max_running, 1, 'never more than one job running at once');
ok($seen_one_running_two_queued, 'while the first ran, the other two were queued');
is($node->safe_psql('postgres', qq{
		SELECT bool_and(d.duplicate_rows = 0)
		  FROM unnest('{small1,small2,small3}'::regclass[]) r,
		       LATERAL dedup_audit(r, '{k}') d}),
	't', 'no duplicates left in the three tables');
is($node->safe_psql('postgres', qq{
		SELECT bool_and(a.started_at >= b.finished_at)
		  FROM dedup_jobs a JOIN dedup_jobs b ON b.job_id = a.job_id - 1
		 WHERE a.job_id IN ($ids) AND b.job_id IN ($ids)}),
	't', 'each job started after the previous one finished');

# 3b. still one worker at a time: a job that starts while another session
# holds its table waits for the lock before its first phase, and
# dedup_progress (shared memory here) shows it running with no phase yet,
# as dedup_jobs does; it goes on when the lock is released
create_table($node, 'small4', 20_000);
my $runner = submit($node, 'small4', 200);
my $locked_dups = create_table($node, 'locked', 2_000);
my $waiter = $node->safe_psql('postgres', q{
	SET dedup_ext.lock_timeout = 100;
	SELECT job_id FROM dedup_table('locked', '{k}', background => true);
});
is(job_field($node, $waiter, 'state'), 'queued', 'behind a running job, the next one is queued');
my $holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN');
$holder->query_safe('LOCK TABLE locked IN ACCESS EXCLUSIVE MODE');
$node->safe_psql('postgres', "SELECT dedup_cancel($runner)");
ok($node->poll_query_until('postgres', q{
		SELECT EXISTS (SELECT FROM pg_stat_activity
		                WHERE backend_type = 'dedup_ext worker' AND wait_event_type = 'Lock')}),
	"the next job's worker waits for its table's lock");
is($node->safe_psql('postgres', qq{
		SELECT format('%s %s %s', state, pid IS NOT NULL, coalesce(phase, '(null)'))
		  FROM dedup_progress WHERE job_id = $waiter}),
	'running t (null)', 'dedup_progress: running, with its pid, no phase yet');
is(job_field($node, $waiter, "coalesce(phase, '(null)')"), '(null)', 'dedup_jobs: no phase yet');
$holder->query_safe('COMMIT');
$holder->quit;
ok($node->poll_query_until('postgres',
		qq{SELECT state FROM dedup_jobs WHERE job_id = $waiter}, 'done'),
	'once the lock is released the job runs to its end');
is(job_field($node, $waiter, 'rows_deleted'), $locked_dups, 'and removes every duplicate');
is(job_field($node, $runner, 'state'), 'cancelled', 'the job before it was cancelled');

# 3c. a worker stopped by pg_terminate_backend frees its slot of
# dedup_progress: the job shows once, interrupted (no row left in shared
# memory saying it runs), and dedup_resume finishes it; the job queued
# behind it gets a worker of its own
create_table($node, 'small5', 20_000);
create_table($node, 'small5q', 4_000);
my $stopped = submit($node, 'small5', 200);
ok($node->poll_query_until('postgres',
		qq{SELECT batches_done >= 1 FROM dedup_jobs WHERE job_id = $stopped}),
	'a slow job has committed a batch');
my $behind = submit($node, 'small5q', 0);
is(job_field($node, $behind, 'state'), 'queued', 'another job waits behind it (max_workers = 1)');
is($node->safe_psql('postgres', qq{
		SELECT pg_terminate_backend(worker_pid) FROM dedup_jobs WHERE job_id = $stopped}),
	't', 'its worker terminated');
ok($node->poll_query_until('postgres',
		qq{SELECT state FROM dedup_jobs WHERE job_id = $stopped}, 'interrupted'),
	'the job is interrupted');
is($node->safe_psql('postgres', qq{
		SELECT string_agg(state || ' ' || coalesce(pid::text, 'no pid'), ',')
		  FROM dedup_progress WHERE job_id = $stopped}),
	'interrupted no pid', 'dedup_progress: one row, interrupted, run by no process');
is($node->safe_psql('postgres', qq{
		SELECT ok || ' ' || detail FROM dedup_verify($stopped) WHERE check_name = 'job_done'}),
	'false state is interrupted', 'dedup_verify: its state as dedup_jobs shows it');
is($node->safe_psql('postgres', qq{SELECT dedup_wait($behind, '60s')}), 'done',
	'the job queued behind it got a new worker, and is done');
is(job_field($node, $stopped, 'state'), 'interrupted', 'which left the stopped job to dedup_resume');
# the launcher stopped the same way comes back (bgw_restart_time), and
# leaves the interrupted job as it is
my $launcher = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'dedup_ext launcher'});
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($launcher)"), 't', 'the launcher terminated');
ok($node->poll_query_until('postgres',
		qq{SELECT count(*) = 1 FROM pg_stat_activity
		    WHERE backend_type = 'dedup_ext launcher' AND pid <> $launcher}),
	'a new launcher runs');
sleep 1;
is(job_field($node, $stopped, 'state'), 'interrupted', 'the stopped job still waits for dedup_resume');
$node->safe_psql('postgres', "SELECT dedup_resume($stopped)");
ok($node->poll_query_until('postgres',
		qq{SELECT state FROM dedup_jobs WHERE job_id = $stopped}, 'done'),
	'resumed, it finishes');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM dedup_progress WHERE job_id = $stopped}),
	'0', 'and leaves dedup_progress');

# 3d. dedup_ext.max_workers lowered to 0 while a job runs: its worker takes
# no further job once that one stops; the queued job waits, and starts at
# dedup_resume once workers are allowed again
create_table($node, 'small6', 40_000);
create_table($node, 'small7', 20_000);
my $first = submit($node, 'small6', 1000);
my $second = submit($node, 'small7', 200);
ok($node->poll_query_until('postgres',
		qq{SELECT batches_done >= 1 FROM dedup_jobs WHERE job_id = $first}),
	'the first job runs, the second is queued behind it');
$node->safe_psql('postgres', q{ALTER SYSTEM SET dedup_ext.max_workers = 0});
$node->reload;
ok($node->poll_query_until('postgres', 'SHOW dedup_ext.max_workers', '0'),
	'max_workers = 0 after reload');
sleep 1;    # the worker takes the reload at its next batch
$node->safe_psql('postgres', "SELECT dedup_pause($first)");
is($node->safe_psql('postgres', qq{SELECT dedup_wait($first, '60s')}), 'paused',
	'the running job pauses');
sleep 2;
is(job_field($node, $second, 'state'), 'queued',
	'its worker did not take the queued job with max_workers = 0');
$node->safe_psql('postgres', q{ALTER SYSTEM SET dedup_ext.max_workers = 1});
$node->reload;
ok($node->poll_query_until('postgres', 'SHOW dedup_ext.max_workers', '1'),
	'max_workers = 1 again');
$node->safe_psql('postgres', "SELECT dedup_resume($second)");
is($node->safe_psql('postgres', qq{SELECT dedup_wait($second, '120s')}), 'done',
	'resumed, the queued job runs');
$node->safe_psql('postgres', "SELECT dedup_cancel($first)");
$node->safe_psql('postgres', q{ALTER SYSTEM RESET dedup_ext.max_workers});
$node->reload;
ok($node->poll_query_until('postgres', 'SHOW dedup_ext.max_workers', '2'),
	'max_workers = 2 again');

# until jobs x and y have both committed a batch
sub both_batching
{
	my ($node, $x, $y, $what) = @_;
	ok($node->poll_query_until('postgres',
			qq{SELECT count(*) FROM dedup_jobs WHERE job_id IN ($x, $y) AND batches_done >= 1}, '2'),
		$what);
}

sub cancel_both
{
	my ($node, $x, $y, $what) = @_;
	$node->safe_psql('postgres', "SELECT dedup_cancel($x), dedup_cancel($y)");
	is($node->safe_psql('postgres', "SELECT dedup_wait($x, '60s') || dedup_wait($y, '60s')"),
		'cancelledcancelled', $what);
}

# 3e. two jobs submitted in one transaction run side by side (as two
# submitted apart do, with max_workers = 2): its commit starts a worker
# for each (it started one, which ran them one after the other)
create_table($node, 'pair1', 20_000);
create_table($node, 'pair2', 20_000);
my ($pair1, $pair2) = split /\n/, $node->safe_psql('postgres', q{
	SET dedup_ext.batch_delay = 500;
	BEGIN;
	SELECT job_id FROM dedup_table('pair1', '{k}', background => true, batch_size => 1000);
	SELECT job_id FROM dedup_table('pair2', '{k}', background => true, batch_size => 1000);
	COMMIT;
});
both_batching($node, $pair1, $pair2, 'both jobs of one transaction run at once');
cancel_both($node, $pair1, $pair2, 'both cancelled');

# 3f. max_workers raised by a reload while a job waits queued behind the
# limit: the launcher starts a worker for it (it waited for the running one)
$node->safe_psql('postgres', q{ALTER SYSTEM SET dedup_ext.max_workers = 1});
$node->reload;
ok($node->poll_query_until('postgres', 'SHOW dedup_ext.max_workers', '1'),
	'max_workers = 1 for 3f');
my ($wait1, $wait2) = split /\n/, $node->safe_psql('postgres', q{
	SET dedup_ext.batch_delay = 1000;
	SELECT d.job_id FROM unnest('{pair1,pair2}'::regclass[]) t,
	       LATERAL dedup_table(t, '{k}', background => true, batch_size => 1000) d;
});
ok($node->poll_query_until('postgres',
		qq{SELECT string_agg(state, ',' ORDER BY job_id) FROM dedup_jobs WHERE job_id IN ($wait1, $wait2)},
		'running,queued'),
	'one job runs, the other waits queued');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET dedup_ext.max_workers});
$node->reload;
both_batching($node, $wait1, $wait2, 'raised to 2 by a reload, the queued job starts beside the running one');
cancel_both($node, $wait1, $wait2, 'both cancelled again');

# 3g. a queued job whose row a session holds (a dedup_pause in a
# transaction still open): the workers that cannot claim it wait a second
# between looks, sleeping (they spun on the CPU), until it commits
create_table($node, "hold$_", 20_000) for 1 .. 3;
my ($hold1, $hold2, $held) = map { submit($node, "hold$_", 300) } 1 .. 3;
my $pauser = $node->background_psql('postgres');
$pauser->query_safe('BEGIN');
is($pauser->query_safe("SELECT state FROM dedup_jobs WHERE job_id = $held"), 'queued',
	'the third job waits queued behind the two running');
$pauser->query_safe("SELECT dedup_pause($held)");
is($node->safe_psql('postgres', "SELECT dedup_wait($hold1, '60s') || dedup_wait($hold2, '60s')"),
	'donedone', 'the two running jobs are done');
my ($asleep, $looks) = (0, 0);
for (1 .. 100)
{
	my $w = $node->safe_psql('postgres', q{
		SELECT count(*) FILTER (WHERE wait_event_type = 'Extension') || ' ' || count(*)
		  FROM pg_stat_activity WHERE backend_type = 'dedup_ext worker'});
	my ($sleeping, $all) = split / /, $w;
	$looks++ if $all > 0;
	$asleep++ if $all > 0 && $sleeping == $all;
	usleep(50_000);
}
cmp_ok($asleep, '>=', $looks * 0.9, "the workers sleep while the job's row is held ($asleep of $looks looks)");
$pauser->query_safe('COMMIT');
$pauser->quit;
is($node->safe_psql('postgres', "SELECT dedup_wait($held, '60s')"), 'paused', 'then the job is paused');
$node->safe_psql('postgres', "SELECT dedup_cancel($held)");

# 5a. a BEFORE DELETE trigger raises a custom SQLSTATE with a HINT, armed
# once the job has committed a few batches
my $fail_dups = create_table($node, 'trapped', 40_000);
my $fail_keys = $node->safe_psql('postgres', 'SELECT count(DISTINCT k) FROM trapped');
$node->safe_psql('postgres', q{
	CREATE TABLE trap (armed boolean NOT NULL);
	INSERT INTO trap VALUES (false);
	CREATE FUNCTION trap_delete() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF (SELECT armed FROM public.trap) THEN
			RAISE EXCEPTION 'row % may not go', OLD.id
				USING ERRCODE = 'DX123', HINT = 'Ask the data owner first.';
		END IF;
		RETURN OLD;
	END $$;
	CREATE TRIGGER trap BEFORE DELETE ON trapped FOR EACH ROW EXECUTE FUNCTION trap_delete();
});
$job = submit($node, 'trapped', 200);
ok($node->poll_query_until('postgres',
		qq{SELECT batches_done >= 2 FROM dedup_jobs WHERE job_id = $job}),
	'trapped job is batching');
$node->safe_psql('postgres', 'UPDATE trap SET armed = true');
is($node->safe_psql('postgres', qq{SELECT dedup_wait($job, '60s')}), 'failed',
	'the job fails when the trigger raises');
my $error = job_field($node, $job, 'error');
like($error, qr/^DX123: row \d+ may not go/, 'error has the SQLSTATE and the message');
like($error, qr/HINT: +Ask the data owner first\./, 'error has the hint');
my $deleted = job_field($node, $job, 'rows_deleted');
ok($deleted >= 4000 && $deleted < $fail_dups, "the batches before the error stay done: $deleted");
is($node->safe_psql('postgres', 'SELECT count(DISTINCT k) FROM trapped'),
	$fail_keys, 'every key still has a row');
is($node->safe_psql('postgres', 'SELECT count(*) FROM trapped') + $deleted,
	40_000, 'table + rows_deleted = original rows');
is(job_field($node, $job, 'worker_pid IS NULL AND finished_at IS NOT NULL'), 't',
	'failed job finished, no worker');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM dedup_progress WHERE job_id = $job}),
	'0', 'a failed job is not in dedup_progress');
is($node->safe_psql('postgres', qq{SELECT dedup_rollback($job)}), $deleted,
	'dedup_rollback of the failed job restores its rows');
is($node->safe_psql('postgres', 'SELECT count(*) FROM trapped'), '40000',
	'all rows back');

# 5b. the key column dropped while the job waits between batches: the next
# batch finds the table's columns no longer those of its archive
create_table($node, 'dropcol', 20_000);
$job = submit($node, 'dropcol', 300);
ok($node->poll_query_until('postgres',
		qq{SELECT batches_done >= 1 FROM dedup_jobs WHERE job_id = $job}),
	'dropcol job is batching');
$node->safe_psql('postgres', 'ALTER TABLE dropcol DROP COLUMN k');
is($node->safe_psql('postgres', qq{SELECT dedup_wait($job, '60s')}), 'failed',
	'the job fails when its key column is gone');
like(job_field($node, $job, 'error'),
	qr/^55000: the columns of table public\.dropcol changed while job $job ran: column k was dropped or renamed/,
	'error: the table changed under the job, naming the column');
is($node->safe_psql('postgres',
		qq{SELECT count(*) FROM pg_tables
		    WHERE schemaname = 'dedup_archive' AND tablename LIKE '%\\_work'}),
	'0', 'the failed job dropped its work table');

# 6. few duplicates: the job's passes read candidates by key hash, and the
# confirming pass hashes only the rows changed since the first one (and the
# losers a batch skipped).  Writers between the batches: a duplicate of an
# old row, a new pair, survivors deleted (their losers are skipped, and stay
# duplicates of each other), a survivor's key changed to an old row's, a
# loser updated (it moves).  The 'z' groups sort last: their batch comes
# after the writes.
$node->safe_psql('postgres', q{
	CREATE TABLE memo (id int PRIMARY KEY, k text NOT NULL, v int NOT NULL DEFAULT 0)
	  WITH (autovacuum_enabled = off);
	INSERT INTO memo SELECT g, 'k' || CASE WHEN g % 20 = 0 THEN g - 1 ELSE g END, 0
	  FROM generate_series(1, 20000) g;
	INSERT INTO memo SELECT 30000 + g, 'z-' || (g - 1) / 3 + 1, 0 FROM generate_series(1, 30) g;
	ANALYZE memo;
	ALTER DATABASE postgres SET log_min_messages = debug1;
});
# a worker still alive from the last job would not have the setting
no_worker_left($node, 'no dedup_ext worker left from the jobs before');
# A snapshot older than the job, held until it ends: no row the job or the
# writers delete can be pruned meanwhile.  Pruning a page moves its LSN, and
# the pass after would read it again; which pages a scan prunes (the
# writers' count below, a pass's join) depends on which deletions are older
# than every snapshot then, and so on when each session ran (a loaded
# machine's third pass read 14 pages: a batch's 12 pruned in the pass
# before).
my $snapshot = $node->background_psql('postgres');
$snapshot->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
$snapshot->query_safe('SELECT count(*) FROM memo');
$log_offset = -s $node->logfile;
$job = $node->safe_psql('postgres', q{
	SET dedup_ext.batch_delay = 300;
	SELECT job_id FROM dedup_table('memo', '{k}', background => true, batch_size => 100);
});
ok($node->poll_query_until('postgres',
		qq{SELECT batches_done >= 1 FROM dedup_jobs WHERE job_id = $job}),
	'memo job is batching');
my $keys_after_writes = $node->safe_psql('postgres', q{
	INSERT INTO memo VALUES (40001, 'k1'), (40002, 'w-1'), (40003, 'w-1');
	DELETE FROM memo WHERE id IN (30001, 30004, 30007, 30010, 30013);
	UPDATE memo SET k = 'k3' WHERE id = 30016;
	UPDATE memo SET v = 1 WHERE id = 30020;
	SELECT count(DISTINCT k) FROM memo;
});
is($node->safe_psql('postgres', qq{SELECT dedup_wait($job, '60s')}), 'done', 'memo job done');
$snapshot->query_safe('COMMIT');
$snapshot->quit;
$node->safe_psql('postgres', 'ALTER DATABASE postgres RESET log_min_messages');
is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || count(DISTINCT k) FROM memo}),
	"$keys_after_writes $keys_after_writes",
	'no duplicate left, including those the writers made, and every key kept');
ok($node->log_contains(qr/dedup_ext: hashed only the rows of "memo" changed since the remembered pass: \d{1,3}$/m,
		$log_offset),
	'the confirming pass hashed only the few rows changed since the first');
# the pass after the first reads every page (the first pass's batches
# changed each); the one after it only the pages its batch changed and
# those listed again
my @pages = slurp_file($node->logfile, $log_offset) =~
  /dedup_ext: the pass read (\d+) of the (\d+) pages of "memo"$/mg;
is(scalar(@pages), 4, 'both confirming passes logged the pages they read');
is($pages[0], $pages[1], 'the second pass read every page, all changed');
cmp_ok($pages[2], '<', $pages[3] / 10,
	"the third pass read only the pages changed since the second ($pages[2] of $pages[3])");
is(job_field($node, $job, 'passes'), '3', 'memo job: a pass, a pass for the writers\' duplicates, a clean one');

# 6b. the first pass's transaction fails once it has hashed the keys (a lock
# timeout recording its result, made here by a trigger on the job table) and
# runs again: the retry must hash every row again, not confirm against the
# pass that rolled back.
$node->safe_psql('postgres', q{
	CREATE TABLE memo2 (id int PRIMARY KEY, k text NOT NULL);
	INSERT INTO memo2 SELECT g, 'k' || CASE WHEN g % 20 = 0 THEN g - 1 ELSE g END
	  FROM generate_series(1, 20000) g;
	ANALYZE memo2;
	CREATE SEQUENCE memo_trap_seq;
	CREATE FUNCTION memo_trap() RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog AS $$
	BEGIN
	  IF OLD.phase IS NOT DISTINCT FROM 'scanning' AND NEW.phase IS NOT DISTINCT FROM 'deleting' THEN
	    IF pg_catalog.nextval('public.memo_trap_seq') = 1 THEN
	      RAISE EXCEPTION 'memo_trap' USING ERRCODE = 'lock_not_available';
	    END IF;
	  END IF;
	  RETURN NEW;
	END $$;
	CREATE TRIGGER memo_trap BEFORE UPDATE ON dedup_job FOR EACH ROW EXECUTE FUNCTION memo_trap();
});
$job = $node->safe_psql('postgres',
	q{SELECT job_id FROM dedup_table('memo2', '{k}', background => true, batch_size => 500)});
is($node->safe_psql('postgres', qq{SELECT dedup_wait($job, '60s')}), 'done', 'memo2 job done');
$node->safe_psql('postgres', 'DROP TRIGGER memo_trap ON dedup_job');
is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || count(DISTINCT k) FROM memo2}),
	'19000 19000', 'the first pass, run again after its rollback, found every duplicate');
is(job_field($node, $job, 'retries >= 1'), 't', 'memo2: the first pass was retried');

# 6c. duplicates on the first page only: the pass after the first reads the
# pages changed since (its batch's), and checks only the LSN of the others.
$node->safe_psql('postgres', q{
	CREATE TABLE memo3 (id int PRIMARY KEY, k text NOT NULL) WITH (autovacuum_enabled = off);
	INSERT INTO memo3 SELECT g, 'k' || CASE WHEN g <= 40 AND g % 2 = 0 THEN g - 1 ELSE g END
	  FROM generate_series(1, 20000) g;
	ANALYZE memo3;
});
# a background job on memo3 whose worker logs at debug1, with these other
# settings of the database: its id, then the pages each confirming pass
# read and the table's pages, in pairs
my $memo3_job = sub {
	my ($label, %settings) = @_;
	$settings{log_min_messages} = 'debug1';
	$node->safe_psql('postgres',
		join('', map { "ALTER DATABASE postgres SET $_ = $settings{$_};\n" } sort keys %settings));
	# a worker still alive from the last job would not have the settings
	no_worker_left($node, "$label: no dedup_ext worker left from the jobs before");
	my $offset = -s $node->logfile;
	my $id = $node->safe_psql('postgres', q{
		SET default_transaction_isolation = 'read committed';
		SELECT job_id FROM dedup_table('memo3', '{k}', background => true);
	});
	is($node->safe_psql('postgres', qq{
			SET default_transaction_isolation = 'read committed';
			SELECT dedup_wait($id, '60s');
		}), 'done', "$label: job done");
	$node->safe_psql('postgres',
		join('', map { "ALTER DATABASE postgres RESET $_;\n" } sort keys %settings));
	is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || count(DISTINCT k) FROM memo3}),
		'19980 19980', "$label: every duplicate removed");
	return ($id, slurp_file($node->logfile, $offset) =~
		/dedup_ext: the pass read (\d+) of the (\d+) pages of "memo3"$/mg);
};
my ($memo3, @pages3) = $memo3_job->('memo3');
is(scalar(@pages3), 2, 'memo3: one confirming pass, which logged the pages it read');
cmp_ok($pages3[0], '<', $pages3[1] / 10,
	"the pass after the first read only the pages its batch changed ($pages3[0] of $pages3[1])");
# serializable, a pass checks every row it reads for a conflict with its
# writer, as a heap scan does: it reads every page
$node->safe_psql('postgres', qq{SELECT dedup_rollback($memo3)});
($memo3, @pages3) = $memo3_job->('memo3, serializable', default_transaction_isolation => 'serializable');
is(scalar(@pages3), 2, 'memo3, serializable: one confirming pass');
is($pages3[0], $pages3[1], 'serializable: the pass after the first read every page');

# 6d. a rename's passes find their candidates as a delete's do: the pass
# after the first hashes only the rows changed since (the renamed ones, and
# a writer's duplicate and pair)
$node->safe_psql('postgres', q{
	CREATE TABLE memo4 (id int PRIMARY KEY, k text NOT NULL);
	INSERT INTO memo4 SELECT g, 'k' || CASE WHEN g % 20 = 0 THEN g - 1 ELSE g END
	  FROM generate_series(1, 20000) g;
	ANALYZE memo4;
	ALTER DATABASE postgres SET log_min_messages = debug1;
});
no_worker_left($node, 'memo4: no dedup_ext worker left from the jobs before');
$log_offset = -s $node->logfile;
$job = $node->safe_psql('postgres', q{
	SET dedup_ext.batch_delay = 300;
	SELECT job_id FROM dedup_table('memo4', '{k}', action => 'rename', background => true, batch_size => 200);
});
ok($node->poll_query_until('postgres',
		qq{SELECT batches_done >= 1 FROM dedup_jobs WHERE job_id = $job}),
	'memo4 rename is batching');
$node->safe_psql('postgres', q{INSERT INTO memo4 VALUES (30001, 'k1'), (30002, 'w-1'), (30003, 'w-1')});
is($node->safe_psql('postgres', qq{SELECT dedup_wait($job, '60s')}), 'done', 'memo4 rename done');
$node->safe_psql('postgres', 'ALTER DATABASE postgres RESET log_min_messages');
is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || count(DISTINCT k) FROM memo4}),
	'20003 20003', 'memo4: no duplicate left, the writer\'s included');
is(job_field($node, $job, 'rows_renamed'), '1002', 'memo4: the 1000 losers and the writer\'s two renamed');
my @hashed4 = slurp_file($node->logfile, $log_offset) =~
  /dedup_ext: hashed only the rows of "memo4" changed since the remembered pass: (\d+)$/mg;
ok(@hashed4 && $hashed4[0] < 2000,
	'the rename\'s second pass hashed only the rows changed since the first (' . ($hashed4[0] // 'none') . ')');
my @pages4 = slurp_file($node->logfile, $log_offset) =~
  /dedup_ext: the pass read (\d+) of the (\d+) pages of "memo4"$/mg;
is(scalar(@pages4), 4, 'memo4: both later passes logged the pages they read');
cmp_ok($pages4[2], '<', $pages4[3] / 10,
	"the rename's third pass read only the pages changed since the second ($pages4[2] of $pages4[3])");

# 7. dedup_ext.wal_compression: the full-page images a job writes after a
# checkpoint (each page whose rows it deletes) are compressed, and its WAL
# is smaller.  The WAL measured is the server's: no autovacuum meanwhile.
SKIP:
{
	skip 'the server has neither lz4 nor zstd', 4
	  unless $node->safe_psql('postgres',
		q{SELECT enumvals && '{lz4,zstd}' FROM pg_settings WHERE name = 'wal_compression'}) eq 't';
	# one duplicate in a hundred rows, so on every page: what the job writes
	# is mostly the images of those pages
	foreach my $table ('walz_off', 'walz_on')
	{
		$node->safe_psql('postgres', qq{
			CREATE TABLE $table (id int PRIMARY KEY, k int NOT NULL, payload text);
			INSERT INTO $table
			SELECT g, CASE WHEN g % 100 = 0 THEN g - 1 ELSE g END, 'row ' || g
			  FROM generate_series(1, $N) g;
			VACUUM ANALYZE $table;
		});
	}
	my $job_wal = sub {
		my ($table) = @_;
		$node->safe_psql('postgres', 'CHECKPOINT');
		my $lsn = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
		my $job = submit($node, $table, 0);
		$node->safe_psql('postgres', qq{SELECT dedup_wait($job, '60s')}) eq 'done'
		  or die "job $job on $table not done";
		return $node->safe_psql('postgres',
			qq{SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn')::bigint});
	};
	$node->append_conf('postgresql.conf', 'autovacuum = off');
	$node->reload;
	$node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'})
	  or die 'autovacuum workers still running';
	$node->safe_psql('postgres', 'VACUUM');
	my $wal_off = $job_wal->('walz_off');
	# a worker still running reads the setting at its next step
	$node->append_conf('postgresql.conf', 'dedup_ext.wal_compression = on');
	$node->reload;
	my $wal_on = $job_wal->('walz_on');
	cmp_ok($wal_on, '<', $wal_off * 0.7,
		"with dedup_ext.wal_compression the job wrote $wal_on bytes of WAL, against $wal_off");

	# 7b. a running worker takes a reloaded setting at its next step: a
	# statement trigger records, in each batch's DELETE, the worker's
	# settings as the batch sees them
	$node->safe_psql('postgres', q{
		CREATE TABLE walz_log (batch serial, dedup_setting text, server_setting text);
		CREATE FUNCTION walz_note() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
		  INSERT INTO public.walz_log (dedup_setting, server_setting)
		  VALUES (pg_catalog.current_setting('dedup_ext.wal_compression'),
		          pg_catalog.current_setting('wal_compression'));
		  RETURN NULL;
		END $$;
	});
	create_table($node, 'walz_reload', $N);
	$node->safe_psql('postgres',
		'CREATE TRIGGER walz_note BEFORE DELETE ON walz_reload FOR EACH STATEMENT EXECUTE FUNCTION walz_note()');
	my $job = submit($node, 'walz_reload', 100);
	$node->poll_query_until('postgres', 'SELECT count(*) >= 2 FROM walz_log')
	  or die 'walz_reload: no batches';
	$node->append_conf('postgresql.conf', 'dedup_ext.wal_compression = off');
	$node->reload;
	is($node->safe_psql('postgres', qq{SELECT dedup_wait($job, '120s')}), 'done', 'walz_reload: done');
	like($node->safe_psql('postgres',
			'SELECT dedup_setting || \' \' || server_setting FROM walz_log ORDER BY batch LIMIT 1'),
		qr/^on (lz4|zstd)$/, 'a batch compresses its WAL while dedup_ext.wal_compression is on');
	is($node->safe_psql('postgres',
			'SELECT dedup_setting || \' \' || server_setting FROM walz_log ORDER BY batch DESC LIMIT 1'),
		'off off', 'after a reload the running worker\'s next batches do not');
}

# 8. a pause withdrawn after the worker saw it: a batch's commit reads the
# request, the worker sleeps its batch_delay, then reads it again under the
# job row's lock before it stops; dedup_resume withdraws it meanwhile (a
# cancel it does not).  A trigger on the job table notes each state the
# job's row takes.
$node->safe_psql('postgres', q{
	CREATE TABLE job_states (job_id bigint, state text, control text, batches_done bigint);
	CREATE FUNCTION note_job_state() RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog AS $$
	BEGIN
	  INSERT INTO public.job_states VALUES (NEW.job_id, NEW.state, NEW.control, NEW.batches_done);
	  RETURN NEW;
	END $$;
	CREATE TRIGGER note_job_state AFTER UPDATE ON dedup_job FOR EACH ROW EXECUTE FUNCTION note_job_state();
});
# Submit a job on $table, request a pause (or what $request asks) after its
# first batch, and once a later batch has committed (it read the request),
# call $control($job) within the batch delay; its result must be $expected.
# The request and the count of batches are read in one transaction: a batch
# that commits after it waited for the request's row lock, and saw it.
sub request_then
{
	my ($table, $request, $control, $expected) = @_;
	my $requested = $request eq 'dedup_cancel' ? 'cancel' : 'pause';
	my $job = submit($node, $table, 2000);
	ok($node->poll_query_until('postgres',
			qq{SELECT batches_done >= 1 FROM dedup_jobs WHERE job_id = $job}),
		"$table: the job is batching");
	my ($paused, $seen) = split /\n/, $node->safe_psql('postgres', qq{
		BEGIN;
		SELECT $request($job);
		SELECT batches_done FROM dedup_jobs WHERE job_id = $job;
		COMMIT;
	});
	is($paused, 't', "$table: $requested requested");
	# $control: a function, or an expression with %s for the job's id
	my $call = $control =~ /%s/ ? sprintf($control =~ s/%s/%1\$s/gr, $job) : "$control($job)";
	ok($node->poll_query_until('postgres',
			qq{SELECT $call FROM dedup_jobs WHERE job_id = $job AND batches_done > $seen},
			$expected),
		"$table: $call returned $expected after a batch committed");
	is($node->safe_psql('postgres',
			qq{SELECT count(*) > 0 FROM job_states
			   WHERE job_id = $job AND state = 'running' AND control = '$requested' AND batches_done > $seen}),
		't', "$table: the worker recorded a batch with the $requested requested");
	return $job;
}

my $wdups = create_table($node, 'withdrawn', 20_000);
cmp_ok($wdups, '>=', 4 * 2000, 'withdrawn: four batches or more');
# dedup_resume on a running job withdraws its pause, and says so
$job = request_then('withdrawn', 'dedup_pause', 'dedup_resume', 't');
is($node->safe_psql('postgres', qq{SELECT dedup_wait($job, '120s')}), 'done', 'withdrawn: the job finished');
is($node->safe_psql('postgres',
		qq{SELECT count(*) FROM job_states WHERE job_id = $job AND state = 'paused'}),
	'0', 'withdrawn: the job never paused');
is($node->safe_psql('postgres', q{SELECT count(*) - count(DISTINCT k) FROM withdrawn}), '0',
	'withdrawn: no duplicate left');

# the same, the pause replaced by a cancel: the job stops, its committed
# batches archived, the rest of the duplicates left
create_table($node, 'replaced', 20_000);
$job = request_then('replaced', 'dedup_pause', 'dedup_cancel', 't');
is($node->safe_psql('postgres', qq{SELECT dedup_wait($job, '120s')}), 'cancelled',
	'replaced: the job was cancelled');
is($node->safe_psql('postgres',
		qq{SELECT count(*) FROM job_states WHERE job_id = $job AND state = 'paused'}),
	'0', 'replaced: the job never paused');
cmp_ok($node->safe_psql('postgres', q{SELECT count(*) - count(DISTINCT k) FROM replaced}), '>', 0,
	'replaced: the batches after the cancel did not run');
my $replaced_archive = job_field($node, $job, 'archive_table');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM $replaced_archive}),
	job_field($node, $job, 'rows_deleted'), 'replaced: the archive holds the rows the batches deleted');
# a cancel requested is not withdrawn by dedup_resume, nor replaced by a
# pause, while the job runs: both return false, and the job is cancelled
create_table($node, 'kept_cancel', 20_000);
$job = request_then('kept_cancel', 'dedup_cancel',
	q{(SELECT state FROM dedup_jobs WHERE job_id = %s) || ' ' || dedup_resume(%s) || ' ' || dedup_pause(%s)},
	'running false false');
is($node->safe_psql('postgres', qq{SELECT dedup_wait($job, '120s')}), 'cancelled',
	'kept_cancel: the job was cancelled');
cmp_ok($node->safe_psql('postgres', q{SELECT count(*) - count(DISTINCT k) FROM kept_cancel}), '>', 0,
	'kept_cancel: the batches after the cancel did not run');
# a cancel requested, then the worker stopped before it carried it out:
# the job is interrupted, and dedup_resume cancels it (false: nothing
# resumed)
create_table($node, 'lost_cancel', 20_000);
$job = submit($node, 'lost_cancel', 2000);
ok($node->poll_query_until('postgres',
		qq{SELECT batches_done >= 1 FROM dedup_jobs WHERE job_id = $job}),
	'lost_cancel: the job is batching');
is($node->safe_psql('postgres', qq{
		SELECT dedup_cancel($job);
		SELECT pg_terminate_backend(worker_pid) FROM dedup_jobs WHERE job_id = $job}),
	"t\nt", 'lost_cancel: cancel requested, then its worker terminated');
ok($node->poll_query_until('postgres',
		qq{SELECT state FROM dedup_jobs WHERE job_id = $job}, 'interrupted'),
	'lost_cancel: the job is interrupted');
is($node->safe_psql('postgres', qq{SELECT dedup_resume($job)}), 'f', 'lost_cancel: dedup_resume resumes nothing');
is(job_field($node, $job, 'state'), 'cancelled', 'lost_cancel: it carried out the cancel');
$node->safe_psql('postgres', 'DROP TRIGGER note_job_state ON dedup_job');
# 9. dedup_progress's speed after a pause, from shared memory
speed_after_pause($node, 'speed', 'preloaded');

# a database still at 1.5 under this library: its dedup_progress_live has
# thirteen columns and its dedup_job no column for a run's start; a job
# runs and shows as before, and the update to 1.6 while it runs keeps it
$node->safe_psql('postgres', 'CREATE DATABASE v15');
$node->safe_psql('v15', q{
	CREATE EXTENSION dedup_ext VERSION '1.5';
	CREATE TABLE t15 (id int PRIMARY KEY, k int NOT NULL);
	INSERT INTO t15 SELECT g, g % 5000 FROM generate_series(1, 20000) g;
});
my $job15 = $node->safe_psql('v15', q{
	SET dedup_ext.batch_delay = 500;
	SELECT job_id FROM dedup_table('t15', '{k}', background => true, batch_size => 1000);
});
ok($node->poll_query_until('v15', qq{
		SELECT pid IS NOT NULL AND rows_per_second > 0 FROM dedup_progress WHERE job_id = $job15}),
	'at 1.5: the job runs and dedup_progress shows its speed');
$node->safe_psql('v15', 'ALTER EXTENSION dedup_ext UPDATE');
is($node->safe_psql('v15', qq{SELECT dedup_wait($job15, '120s')}), 'done', 'updated to 1.6 meanwhile: done');
is($node->safe_psql('v15', q{
		SELECT extversion || ' ' || (SELECT count(*) - count(DISTINCT k) FROM t15)
		  FROM pg_extension WHERE extname = 'dedup_ext'}),
	'1.6 0', 'v15: at 1.6, no duplicate left');
$node->stop;

###########################################################################
# 4. not preloaded: an interrupted job waits for dedup_resume
###########################################################################
my $plain = PostgreSQL::Test::Cluster->new('bg_plain');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', 'CREATE EXTENSION dedup_ext');
my $pdups = create_table($plain, 'expected', 50_000);
$plain->safe_psql('postgres', q{SELECT dedup_table('expected', '{k}')});
my $pmd5 = rows_md5($plain, 'expected');
create_table($plain, 'big', 50_000);

my ($ret, $stdout, $stderr) = $plain->psql('postgres', qq{\\set VERBOSITY verbose
SELECT * FROM dedup_table('big', '{k}', strategy => 'rewrite', background => true)});
like($stderr, qr/ERROR:  0A000: strategy "rewrite" cannot run in the background/,
	'rewrite refused in the background');
is($plain->safe_psql('postgres', q{SELECT count(*) FROM dedup_jobs WHERE relation = 'big'::regclass}),
	'0', 'refusals leave no job');

is($plain->safe_psql('postgres', q{LOAD 'dedup_ext'; SHOW dedup_ext.max_workers}), '2',
	'max_workers default');
$job = submit($plain, 'big', 100, 'add_unique => true');
ok($plain->poll_query_until('postgres',
		qq{SELECT batches_done >= 2 FROM dedup_jobs WHERE job_id = $job}),
	'not preloaded: job is batching');
$plain->stop('immediate');
$plain->start;
is($plain->safe_psql('postgres', qq{SELECT state FROM dedup_jobs WHERE job_id = $job}),
	'interrupted', 'after the restart the job is interrupted');
sleep 3;
is($plain->safe_psql('postgres', qq{SELECT state FROM dedup_jobs WHERE job_id = $job}),
	'interrupted', 'and stays interrupted without preloading');
is($plain->safe_psql('postgres', qq{
		SELECT state || ' ' || phase || ' ' || coalesce(pid::text, 'no pid') FROM dedup_progress WHERE job_id = $job}),
	'interrupted deleting no pid', 'dedup_progress shows it interrupted, run by no process');
is($plain->safe_psql('postgres', qq{SELECT dedup_wait($job, '1s')}), 'interrupted',
	'dedup_wait returns at once for an interrupted job');
is($plain->safe_psql('postgres', qq{SELECT dedup_resume($job)}), 't', 'dedup_resume');
is($plain->safe_psql('postgres', qq{SELECT dedup_wait($job, '120s')}), 'done',
	'the resumed job is done');
is($plain->safe_psql('postgres', q{SELECT duplicate_rows FROM dedup_audit('big', '{k}')}),
	'0', 'not preloaded: no duplicates left');
is(rows_md5($plain, 'big'), $pmd5, 'not preloaded: survivors as in the foreground');
is(job_field($plain, $job, 'rows_deleted'), $pdups, 'not preloaded: rows_deleted');
my $parchive = job_field($plain, $job, 'archive_table');
is($plain->safe_psql('postgres',
		qq{SELECT (SELECT count(*) FROM $parchive) + (SELECT count(*) FROM big)}),
	'50000', 'not preloaded: archive + table = the original rows');
is($plain->safe_psql('postgres',
		qq{SELECT i.indisvalid AND i.indisunique
		     FROM pg_index i WHERE i.indexrelid = (SELECT unique_index FROM dedup_jobs WHERE job_id = $job)}),
	't', 'the unique index is valid');
is($plain->safe_psql('postgres',
		qq{SELECT bool_and(ok) FROM dedup_verify($job)}), 't', 'not preloaded: verified');
is($plain->safe_psql('postgres', qq{SELECT dedup_resume($job)}), 'f',
	'dedup_resume of a done job: false');

# a merge interrupted mid-way: each parent has a tag 'x' (a loser's collides
# with its survivor's and is removed) and a tag of its own (re-pointed)
sub create_tags
{
	my ($node, $parent) = @_;
	$node->safe_psql('postgres', qq{
		CREATE TABLE ${parent}_tag (id int PRIMARY KEY, pid int NOT NULL REFERENCES $parent,
		                            label text NOT NULL, UNIQUE (pid, label));
		INSERT INTO ${parent}_tag SELECT id, id, 'x' FROM $parent;
		INSERT INTO ${parent}_tag SELECT 100000 + id, id, 'own ' || id FROM $parent;
		ANALYZE ${parent}_tag;
	});
}
create_table($plain, 'mexpected', 50_000);
create_tags($plain, 'mexpected');
my $mfg = $plain->safe_psql('postgres',
	q{SELECT rows_deleted || ' ' || refs_repointed FROM dedup_table('mexpected', '{k}', action => 'merge')});
create_table($plain, 'mbig', 50_000);
create_tags($plain, 'mbig');
my $tags_before = rows_md5($plain, 'mbig_tag');
my $mbig_before = rows_md5($plain, 'mbig');
$job = submit($plain, 'mbig', 100, q{action => 'merge'});
ok($plain->poll_query_until('postgres',
		qq{SELECT batches_done >= 2 FROM dedup_jobs WHERE job_id = $job}),
	'merge: job is batching');
is(job_field($plain, $job, 'phase'), 'merging', 'a background merge in phase merging');
$plain->stop('immediate');
$plain->start;
is($plain->safe_psql('postgres', qq{SELECT state FROM dedup_jobs WHERE job_id = $job}),
	'interrupted', 'merge: interrupted after the restart');
is($plain->safe_psql('postgres', qq{SELECT dedup_resume($job)}), 't', 'merge: dedup_resume');
is($plain->safe_psql('postgres', qq{SELECT dedup_wait($job, '120s')}), 'done', 'merge: done');
is(job_field($plain, $job, q{rows_deleted || ' ' || refs_repointed}), $mfg,
	'merge: rows_deleted and refs_repointed as in the foreground');
is(rows_md5($plain, 'mbig'), rows_md5($plain, 'mexpected'),
	'merge: survivors as in the foreground');
is($plain->safe_psql('postgres', q{SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM mbig_tag t}),
	$plain->safe_psql('postgres', q{SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM mexpected_tag t}),
	'merge: the referencing table as after a foreground merge');
is($plain->safe_psql('postgres',
		qq{SELECT (SELECT count(*) FROM mbig_tag)
		        + (SELECT count(*) FROM dedup_archive.mbig_tag_${job}_ref1 WHERE dedup_action = 'delete')}),
	'100000', 'merge: tags left + tags archived = the original tags');
is($plain->safe_psql('postgres',
		qq{SELECT string_agg(check_name, ', ') FROM dedup_verify($job) WHERE NOT ok}),
	'', 'merge: dedup_verify all ok');
ok($plain->safe_psql('postgres', qq{SELECT dedup_rollback($job)}) > 0, 'merge: rolled back');
is(rows_md5($plain, 'mbig') . ' ' . rows_md5($plain, 'mbig_tag'), "$mbig_before $tags_before",
	'merge: the rollback restores both tables exactly');

# 9. dedup_progress's speed after a pause, from the committed counters
speed_after_pause($plain, 'speed', 'not preloaded');

$plain->stop;
done_testing();

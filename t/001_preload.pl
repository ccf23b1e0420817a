# dedup_ext loaded through shared_preload_libraries: the extension installs and
# a foreground dedup with archive and rollback works as without preloading;
# foreground jobs show in dedup_progress while they run, in their phase.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('preload');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dedup_ext'");
$node->start;

is($node->safe_psql('postgres', 'SHOW dedup_ext.batch_size'), '10000',
	'GUC defined at preload');
$node->safe_psql('postgres', 'CREATE EXTENSION dedup_ext');
$node->safe_psql('postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, k int);
	INSERT INTO t SELECT g, g % 10 FROM generate_series(1, 1000) g;
});
is($node->safe_psql('postgres',
		q{SELECT state || ' ' || rows_deleted FROM dedup_table('t', '{k}', add_unique => true)}),
	'done 990', 'dedup with the library preloaded');
is($node->safe_psql('postgres', 'SELECT count(*) FROM t'), '10', 'survivors left');
is($node->safe_psql('postgres', 'SELECT bool_and(ok) FROM dedup_verify(1)'), 't', 'verified');

$node->restart;
is($node->safe_psql('postgres', 'SELECT dedup_rollback(1)'), '990', 'rollback after restart');
is($node->safe_psql('postgres', 'SELECT count(*) FROM t'), '1000', 'all rows back');

# A foreground job shows in dedup_progress to other sessions while it runs,
# in its phase, with its counts; s1 holds a row the job must change, so the
# job waits in a known phase until s1 commits.
sub progress_of
{
	my ($pid) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT format('%s %s %s %s total %s done %s', kind, relation, phase, state, rows_total, rows_done)
		  FROM dedup_progress WHERE pid = $pid});
}

sub wait_for_lock
{
	my ($pid, $what) = @_;
	ok($node->poll_query_until('postgres', qq{
			SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $pid}),
		"$what waits for s1's row");
}

my $s1 = $node->background_psql('postgres');
my $caller = $node->background_psql('postgres');
my $caller_pid = $caller->query_safe('SELECT pg_backend_pid()');

# s1 locks a row (lock_sql); the caller's call waits for it; dedup_progress
# shows the job as progress says; s1 commits and the call returns result
sub held_call
{
	my ($what, $lock_sql, $call, $progress, $result) = @_;
	$s1->query_safe('BEGIN');
	$s1->query_safe($lock_sql);
	$caller->query_until(qr/sent/, "\\echo sent\n$call;\n");
	wait_for_lock($caller_pid, "a foreground $what");
	is(progress_of($caller_pid), $progress, "dedup_progress: the foreground $what");
	$s1->query_safe('COMMIT');
	like($caller->query_safe('SELECT 1'), qr/^\Q$result\E$/m, "the $what went on once s1 committed");
}

held_call('delete', 'SELECT FROM t WHERE id = 500 FOR UPDATE',
	q{SELECT state || ' ' || rows_deleted FROM dedup_table('t', '{k}', strategy => 'delete', add_unique => true)},
	'dedup t deleting running total 990 done 0', 'done 990');
is(progress_of($caller_pid), '', 'a finished job leaves dedup_progress');

# another session that controls a foreground job it sees in dedup_progress
# is told it is a foreground job in progress (it was told it does not exist)
$node->safe_psql('postgres', q{
	CREATE TABLE fc (id int PRIMARY KEY, k int);
	INSERT INTO fc SELECT g, g % 10 FROM generate_series(1, 100) g;
});
$s1->query_safe('BEGIN');
$s1->query_safe('SELECT FROM fc WHERE id = 50 FOR UPDATE');
$caller->query_until(qr/sent/, "\\echo sent\nSELECT state FROM dedup_table('fc', '{k}', strategy => 'delete');\n");
wait_for_lock($caller_pid, 'a foreground delete to be controlled');
my ($rc, $out, $err) = $node->psql('postgres', qq{
	SELECT dedup_cancel((SELECT job_id FROM dedup_progress WHERE pid = $caller_pid))},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/55000: job \d+ is a foreground job still in progress/,
	'dedup_cancel of a foreground job in progress says so');
$s1->query_safe('COMMIT');
like($caller->query_safe('SELECT 1'), qr/^done$/m, 'the foreground delete went on');

# a foreground merge, held while it re-points a referencing row s1 holds
$node->safe_psql('postgres', q{
	CREATE TABLE mp (id int PRIMARY KEY, name text);
	INSERT INTO mp SELECT g, 'n' || (g % 3) FROM generate_series(1, 9) g;
	CREATE TABLE mc (id int PRIMARY KEY, mp_id int REFERENCES mp);
	INSERT INTO mc VALUES (1, 9);
});
held_call('merge', 'SELECT FROM mc WHERE id = 1 FOR UPDATE',
	q{SELECT state || ' ' || rows_deleted FROM dedup_table('mp', '{name}', action => 'merge')},
	'dedup mp merging running total 6 done 0', 'done 6');

# a foreground rename, held on a loser s1 holds: its one statement finds and
# renames the losers, so none are counted until it returns
$node->safe_psql('postgres', q{
	CREATE TABLE rn (id int PRIMARY KEY, name text);
	INSERT INTO rn SELECT g, 'n' || (g % 3) FROM generate_series(1, 9) g;
});
held_call('rename', 'SELECT FROM rn WHERE id = 9 FOR UPDATE',
	q{SELECT state || ' ' || rows_renamed FROM dedup_table('rn', '{name}', action => 'rename')},
	'dedup rn renaming running total 0 done 0', 'done 6');

# a foreground backfill, held in its linking phase; done, it leaves
# dedup_progress while its caller's transaction goes on
$node->safe_psql('postgres', q{
	CREATE TABLE kw (id int PRIMARY KEY, name text UNIQUE);
	INSERT INTO kw SELECT g, 'kw' || g FROM generate_series(1, 10) g;
	CREATE TABLE tags (id int PRIMARY KEY, name text, kw_id int);
	INSERT INTO tags SELECT g, 'kw' || (g % 12), NULL FROM generate_series(1, 120) g;
});
$caller->query_safe('BEGIN');
held_call('backfill', 'SELECT FROM tags WHERE id = 1 FOR UPDATE',
	q{SELECT state || ' ' || rows_updated || ' ' || orphan_rows FROM backfill_fk('tags', 'kw_id', 'kw', '{name}')},
	'backfill tags linking running total 100 done 0', 'done 100 20');
is(progress_of($caller_pid), '', 'done, it leaves dedup_progress before its transaction ends');
$caller->query_safe('COMMIT');

# a foreground call that fails under a savepoint leaves dedup_progress when
# the savepoint is rolled back, though its transaction goes on (the rename
# does not fit the column: it fails after its job began)
$node->safe_psql('postgres', q{
	CREATE TABLE short (id int PRIMARY KEY, code varchar(3) NOT NULL);
	INSERT INTO short VALUES (1, 'abc'), (2, 'abc');
});
my $sp = $node->background_psql('postgres', on_error_stop => 0);
my $sp_pid = $sp->query_safe('SELECT pg_backend_pid()');
$sp->query_safe('BEGIN');
$sp->query_safe('SAVEPOINT s');
$sp->query(q{SELECT * FROM dedup_table('short', '{code}', action => 'rename')});
like($sp->{stderr}, qr/value too long/, 'the rename fails in its statement');
# (this session's stderr keeps the error: query, not query_safe, from here)
$sp->query('ROLLBACK TO SAVEPOINT s');
is(scalar $sp->query('SELECT 1'), '1', 'the transaction goes on');
is(progress_of($sp_pid), '', 'the savepoint rolled back, the job left dedup_progress');
$sp->query('ROLLBACK');
$sp->quit;
$s1->quit;
$caller->quit;

# DROP DATABASE waits until every process has acknowledged its barrier
# (ProcSignalBarrier); the launcher, which sleeps for the server's lifetime,
# must answer it, or the DROP never returns
$node->safe_psql('postgres', 'CREATE DATABASE scratch');
my ($ret, $stdout, $stderr) = $node->psql('postgres', 'DROP DATABASE scratch',
	timeout => 60);
is($ret, 0, 'DROP DATABASE returns with the launcher running');

$node->stop;
done_testing();

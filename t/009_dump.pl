# pg_dump and pg_restore.  dedup_job and dedup_orphan are configuration
# tables: a dump keeps the jobs, their archives and orphan lists.  Restored
# elsewhere, a job's row names its table, indexes, rows and submitter by
# OIDs and ctids of the database it ran in, which name other objects there:
#   1. restored into a new cluster (whose first role has the OID the jobs'
#      submitter had), the jobs are history: shown to superusers only, with
#      no relation and no submitter; a rollback, resume or pause is refused
#      (55000) and changes nothing; dedup_verify says so; a job that was
#      running when the dump was taken is not resumed by the launcher after
#      a restart, and dedup_wait does not wait for it; dedup_cancel closes
#      it (and drops its work list);
#      dedup_drop_archive drops a restored job's archives;
#   2. jobs run after the restore are the database's own: rolled back as
#      usual, and history again in a copy restored into another database of
#      the same cluster, also into one that has the extension already (from
#      a template that has it), and in a data-only restore with triggers
#      disabled;
#   3. after pg_upgrade, which keeps the files, the jobs run after the
#      restore are still the database's own, and roll back; a data-only
#      restore of the job tables into a database with jobs of its own, with
#      triggers disabled, neither lends them the dump's orphan rows nor sets
#      its job ids back;
#   4. a dump of 1.4 (no origin column) restored under 1.5: history too;
#   5. pg_dump by the tables' owner (no superuser) fails on the
#      configuration tables, and works without the job history as the README
#      says; restored by the owner, new jobs run there;
#   6. the extension dropped and created again, or the database restored
#      with pg_restore --clean, while a worker runs a job between two
#      batches: the worker touches the table no more, nor the job row put in
#      its place (a new job with the same id, the old row restored), and
#      leaves; the new job runs as its own.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

sub preloaded_node
{
	my ($name) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dedup_ext'");
	$node->start;
	return $node;
}

my $dir = PostgreSQL::Test::Utils::tempdir;

# --- the database the jobs ran in -------------------------------------------
my $a = preloaded_node('origin');
$a->safe_psql('postgres', q{
	CREATE ROLE app LOGIN;
	CREATE DATABASE appdb OWNER app;
});
$a->safe_psql('appdb', 'CREATE EXTENSION dedup_ext');
my $app_oid = $a->safe_psql('postgres', q{SELECT 'app'::regrole::oid});
$a->safe_psql('appdb', q{
	SET ROLE app;
	CREATE TABLE photos (id int PRIMARY KEY, url text NOT NULL);
	INSERT INTO photos SELECT g, 'u' || g % 50 FROM generate_series(1, 500) g;
	CREATE TABLE photo_tags (id int PRIMARY KEY, photo_id int REFERENCES photos, tag text);
	INSERT INTO photo_tags SELECT g, g, 't' FROM generate_series(1, 500) g;
	CREATE TABLE keywords (id int PRIMARY KEY, word text);
	INSERT INTO keywords VALUES (1, 'red'), (2, 'blue'), (3, 'blue');
	CREATE TABLE tags (id int PRIMARY KEY, word text, keyword_id int);
	INSERT INTO tags VALUES (1, 'red'), (2, 'blue'), (3, 'green');
	CREATE TABLE events (id int PRIMARY KEY, k int NOT NULL);
	INSERT INTO events SELECT g, g % 1000 FROM generate_series(1, 20000) g;
	CREATE TABLE notes (id int PRIMARY KEY, k int);
	INSERT INTO notes SELECT g, g % 10 FROM generate_series(1, 100) g;
});
my $merge = $a->safe_psql('appdb', q{
	SET ROLE app;
	SELECT job_id FROM dedup_table('photos', '{url}', action => 'merge')});
my $backfill = $a->safe_psql('appdb', q{
	SET ROLE app;
	SELECT job_id FROM backfill_fk('tags', 'keyword_id', 'keywords', '{word}')});
my $undone = $a->safe_psql('appdb', q{
	SET ROLE app;
	SELECT job_id FROM dedup_table('notes', '{k}')});
$a->safe_psql('appdb', "SET ROLE app; SELECT dedup_rollback($undone)");
my $running = $a->safe_psql('appdb', q{
	SET ROLE app;
	SET dedup_ext.batch_delay = 3600000;
	SELECT job_id FROM dedup_table('events', '{k}', background => true, batch_size => 1000)});
ok($a->poll_query_until('appdb',
		"SELECT batches_done > 0 FROM dedup_jobs WHERE job_id = $running"),
	'the background job committed a batch');
my $orphans = $a->safe_psql('appdb', 'SELECT count(*) FROM dedup_orphans');
is($orphans, '2', 'the backfill listed an orphan and an ambiguous row');

# what a restore must bring back, as the dump sees it
my $md5 = q{SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM %s t};
my %before = map { $_ => $a->safe_psql('appdb', sprintf($md5, $_)) }
  qw(photos photo_tags tags events notes);
my $dump = "$dir/appdb.dump";
$a->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $a->connstr('appdb') ],
	'pg_dump as superuser');
is($a->safe_psql('appdb', "SELECT dedup_cancel($running)"), 't',
	'the job is cancelled where it ran');

# --- 5. the tables' owner dumps without the configuration tables' rows -------
my $ret = PostgreSQL::Test::Utils::run_log(
	[ 'pg_dump', '-f', "$dir/by_app.sql", '-d', $a->connstr('appdb') . ' user=app' ]);
ok(!$ret, 'pg_dump by the owner of the data, not a superuser, fails');
$a->command_ok(
	[
		'pg_dump', '-f', "$dir/by_app.sql",
		'--exclude-table-data=public.dedup_job',
		'--exclude-table-data=public.dedup_job_job_id_seq',
		'--exclude-table-data=public.dedup_orphan',
		'--exclude-schema=dedup_archive',
		'-d', $a->connstr('appdb') . ' user=app'
	],
	'and works without the job history, as the README says');
$a->safe_psql('postgres', 'CREATE DATABASE appcopy OWNER app');
$a->safe_psql('appcopy', 'CREATE EXTENSION dedup_ext');
# as app: what only the extension's owner may do (its COMMENT) fails, the rest loads
PostgreSQL::Test::Utils::run_log(
	[ 'psql', '-X', '-q', '-f', "$dir/by_app.sql", '-d', $a->connstr('appcopy') . ' user=app' ]);
is($a->safe_psql('appcopy', sprintf($md5, 'photos')), $a->safe_psql('appdb', sprintf($md5, 'photos')),
	'the owner restores that dump into a database that has the extension');
$a->safe_psql('appcopy', q{SET ROLE app;
	INSERT INTO photos SELECT g, 'u' || g % 50 FROM generate_series(1001, 1010) g});
is($a->safe_psql('appcopy', q{SET ROLE app;
	SELECT job_id || ' ' || rows_deleted || ' ' || archive_table FROM dedup_table('photos', '{url}')}),
	'1 10 dedup_archive.photos_1', 'where jobs start again at 1, their archives clash with none');

# --- 1. restored into a new cluster ------------------------------------------
my $b = preloaded_node('copy');
$b->safe_psql('postgres', q{
	CREATE ROLE mallory LOGIN;
	CREATE ROLE app LOGIN;
	CREATE DATABASE appdb OWNER app;
});
is($b->safe_psql('postgres', q{SELECT 'mallory'::regrole::oid}), $app_oid,
	'the new cluster\'s first role has the OID the jobs\' submitter had');
$b->command_ok([ 'pg_restore', '-d', $b->connstr('appdb'), $dump ], 'pg_restore');
$b->restart;
sleep 3;    # the launcher's look at the database's jobs

is($b->safe_psql('appdb', sprintf($md5, $_)), $before{$_}, "$_ restored as dumped")
  for qw(photos photo_tags tags events);
is($b->safe_psql('appdb', q{
	SELECT string_agg(job_id || ' ' || state || ' ' || coalesce(relation::text, '-') || ' '
	                  || coalesce(submitted_by::text, '-') || ' ' || relation_name || ' ' || restored,
	                  ', ' ORDER BY job_id) FROM dedup_jobs}),
	"$merge done - - photos true, $backfill done - - tags true, $undone done - - notes true, "
	  . ($undone + 1) . " done - - notes true, $running interrupted - - events true",
	'a superuser sees the restored jobs as history: no relation, no submitter, the running one interrupted');
is($b->safe_psql('appdb', 'SELECT count(*) FROM dedup_orphans'), $orphans,
	'with their orphan lists');
ok($b->poll_query_until('appdb', q{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type = 'dedup_ext worker'}, '0'),
	'the job that was running is not resumed after a restart');
is($b->safe_psql('appdb', sprintf($md5, 'events')), $before{events},
	'its table is untouched');

for my $role (qw(mallory app))
{
	is($b->safe_psql('appdb', "SET ROLE $role; SELECT count(*) FROM dedup_jobs"),
		'0', "$role sees none of them");
	is($b->safe_psql('appdb', "SET ROLE $role; SELECT count(*) FROM dedup_orphans"),
		'0', "$role sees none of their orphans");
	my ($r, $o, $e) = $b->psql('appdb', "SET ROLE $role; SELECT dedup_rollback($merge)");
	like($e, qr/job $merge does not exist/, "$role cannot roll one back");
}

# a member of pg_read_all_stats sees the restored jobs, and controls none
$b->safe_psql('postgres', 'CREATE ROLE watcher IN ROLE pg_read_all_stats');
is($b->safe_psql('appdb', 'SET ROLE watcher; SELECT count(*) FROM dedup_jobs WHERE restored'), '5',
	'a member of pg_read_all_stats sees them');
my ($r, $o, $e) = $b->psql('appdb', "SET ROLE watcher; SELECT dedup_rollback($merge)",
	extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
like($e, qr/42501/, 'and may not roll one back (42501)');
($r, $o, $e) = $b->psql('appdb', "SELECT dedup_rollback($merge)",
	extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
like($e, qr/55000/, 'a superuser\'s rollback of a restored job is refused (55000)');
($r, $o, $e) = $b->psql('appdb', "SELECT dedup_rollback($merge)");
like($e, qr/job $merge was restored from a dump of another database/,
	'saying why');
is($b->safe_psql('appdb', sprintf($md5, $_)), $before{$_}, "$_ unchanged by it")
  for qw(photos photo_tags);
($r, $o, $e) = $b->psql('appdb', "SELECT dedup_rollback($backfill)");
like($e, qr/job $backfill was restored from a dump/, 'a restored backfill too');
is($b->safe_psql('appdb', sprintf($md5, 'tags')), $before{tags}, 'tags unchanged');
for my $f (qw(resume pause))
{
	($r, $o, $e) = $b->psql('appdb', "SELECT dedup_$f($running)",
		extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
	like($e, qr/55000/, "dedup_$f of a restored job is refused (55000)");
}
is($b->safe_psql('appdb', "SELECT dedup_wait($running)"), 'interrupted',
	'dedup_wait returns the restored running job\'s state at once');
is($b->safe_psql('appdb',
		"SELECT check_name || ' ' || ok FROM dedup_verify($merge)"),
	'same_database false', 'dedup_verify says where the job ran');
is($b->safe_psql('appdb', "SELECT dedup_cancel($running), dedup_cancel($merge)"),
	't|f', 'dedup_cancel closes the restored running job, not a finished one');
is($b->safe_psql('appdb', "SELECT state FROM dedup_jobs WHERE job_id = $running"),
	'cancelled', 'which is now cancelled');
is($b->safe_psql('appdb', "SELECT to_regclass('dedup_archive.events_${running}_work')"),
	'', 'its restored work list dropped');
is($b->safe_psql('appdb', sprintf($md5, 'events')), $before{events},
	'and its table untouched');
is($b->safe_psql('appdb', "SELECT dedup_drop_archive($merge)"), '2',
	'dedup_drop_archive drops a restored job\'s archives (photos\' and photo_tags\')');

# --- 2. jobs run after the restore are the database's own -------------------
$b->safe_psql('appdb', q{SET ROLE app;
	INSERT INTO photos SELECT g, 'u' || g % 50 FROM generate_series(1001, 1100) g});
my $after = $b->safe_psql('appdb', sprintf($md5, 'photos'));
my $new = $b->safe_psql('appdb', q{
	SET ROLE app;
	SELECT job_id FROM dedup_table('photos', '{url}')});
ok($new > $running, 'a new job takes a new id');
is($b->safe_psql('appdb', "SET ROLE app; SELECT relation::text || ' ' || submitted_by || ' ' || restored
	FROM dedup_jobs WHERE job_id = $new"), 'photos app false', 'its row is the database\'s own');
is($b->safe_psql('appdb', "SET ROLE app; SELECT dedup_rollback($new)"), '100',
	'and rolls back');
is($b->safe_psql('appdb', sprintf($md5, 'photos')), $after, 'exactly');

my $copy = "$dir/copy.dump";
$b->command_ok([ 'pg_dump', '-Fc', '-f', $copy, '-d', $b->connstr('appdb') ],
	'pg_dump of the restored database');
$b->safe_psql('postgres', 'CREATE DATABASE appdb2 OWNER app');
$b->command_ok([ 'pg_restore', '-d', $b->connstr('appdb2'), $copy ],
	'restored into another database of the same cluster');
is($b->safe_psql('appdb2', "SELECT restored FROM dedup_jobs WHERE job_id = $new"), 't',
	'where the job run after the first restore is history too');

# databases made from a template that has the extension, restored into one
# another: a restore brings job rows, never the notes of dedup_job_here
# (not dumped), so they are history there too, also when the restore is
# data-only with triggers disabled (as pg_dump's warning about dedup_job's
# circular foreign keys suggests)
$b->safe_psql('template1', 'CREATE EXTENSION dedup_ext');
$b->safe_psql('postgres', 'CREATE DATABASE one; CREATE DATABASE two; CREATE DATABASE three');
$b->safe_psql('template1', 'DROP EXTENSION dedup_ext');
$b->safe_psql('one', q{
	CREATE TABLE t (id int PRIMARY KEY, k int);
	INSERT INTO t SELECT g, g % 3 FROM generate_series(1, 9) g;
	SELECT dedup_table('t', '{k}');
});
$b->command_ok([ 'pg_dump', '-Fc', '-f', "$dir/one.dump", '-d', $b->connstr('one') ],
	'pg_dump of one');
$b->command_ok([ 'pg_restore', '-d', $b->connstr('two'), "$dir/one.dump" ],
	'restored into two, which has the extension already');
is($b->safe_psql('two', q{SELECT job_id || ' ' || restored FROM dedup_jobs}), '1 true',
	'where its job is history');
($r, $o, $e) = $b->psql('two', 'SELECT dedup_rollback(1)',
	extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
like($e, qr/55000/, 'not rolled back');
is($b->safe_psql('two', 'SELECT count(*) FROM t'), '3', 'two\'s t untouched');
is($b->safe_psql('one', q{SELECT job_id || ' ' || restored FROM dedup_jobs}), '1 false',
	'while one keeps its own job');
is($b->safe_psql('one', 'SELECT dedup_rollback(1)'), '6', 'and rolls it back');
$b->safe_psql('three', 'CREATE TABLE t (id int PRIMARY KEY, k int)');
$b->command_ok(
	[
		'pg_restore', '--data-only', '--disable-triggers', '-n', 'public',
		'-d', $b->connstr('three'), "$dir/one.dump"
	],
	'a data-only restore with --disable-triggers into three, from the same template');
is($b->safe_psql('three', q{SELECT job_id || ' ' || restored FROM dedup_jobs}), '1 true',
	'where its job is history too');

# --- 3. pg_upgrade keeps the files, the OIDs and dedup_job_here ------------
$b->safe_psql('appdb', q{SET ROLE app;
	INSERT INTO notes SELECT g, g % 10 FROM generate_series(101, 150) g});
my $notes = $b->safe_psql('appdb', sprintf($md5, 'notes'));
my $kept = $b->safe_psql('appdb', q{
	SET ROLE app;
	SELECT job_id FROM dedup_table('notes', '{k}')});
$b->stop;
my $c = PostgreSQL::Test::Cluster->new('upgraded');
$c->init;
$c->append_conf('postgresql.conf', "shared_preload_libraries = 'dedup_ext'");
my $bindir = $c->config_data('--bindir');
chdir $dir;    # pg_upgrade writes its scripts where it runs
command_ok(
	[
		'pg_upgrade', '--no-sync', '-d', $b->data_dir, '-D', $c->data_dir,
		'-b', $bindir, '-B', $bindir, '-s', $c->host, '-p', $b->port, '-P', $c->port
	],
	'pg_upgrade of the cluster the dump was restored into');
$c->start;
is($c->safe_psql('appdb', "SELECT job_id || ' ' || restored FROM dedup_jobs
	WHERE job_id IN ($merge, $kept) ORDER BY job_id"),
	"$merge true\n$kept false", 'after pg_upgrade the restored job is still history, the others the database\'s own');
is($c->safe_psql('appdb', "SET ROLE app; SELECT dedup_rollback($kept)"), '140',
	'and roll back');
is($c->safe_psql('appdb', sprintf($md5, 'notes')), $notes, 'exactly');

# a data-only restore of the job tables into a database with jobs of its
# own: the dump's job rows fail on the ids taken, its orphan rows may not
# become the lists of the jobs here, and its sequence value, lower than the
# ids here, does not make the next jobs fail
$c->safe_psql('postgres', 'CREATE DATABASE four');
$c->safe_psql('four', q{
	CREATE EXTENSION dedup_ext;
	CREATE TABLE t (id int PRIMARY KEY, k int);
	CREATE TABLE p (id int PRIMARY KEY, word text);
	CREATE TABLE c (id int PRIMARY KEY, word text, p_id int);
	INSERT INTO p VALUES (1, 'red');
	INSERT INTO c VALUES (1, 'red'), (2, 'gone');
	SELECT dedup_table('t', '{k}');
	SELECT backfill_fk('c', 'p_id', 'p', '{word}');
	SELECT dedup_table('t', '{k}') FROM generate_series(1, 5);
});
is($c->safe_psql('four', 'SELECT max(job_id) || \' \' || count(*) FROM dedup_orphans'), '2 1',
	'four: seven jobs, job 2 a backfill with one orphan');
my $ret4 = PostgreSQL::Test::Utils::run_log(
	[
		'pg_restore', '--data-only', '--disable-triggers', '-t', 'dedup_job', '-t', 'dedup_orphan',
		'-t', 'dedup_job_job_id_seq', '-d', $c->connstr('four'), $dump
	]);
ok(!$ret4, 'a data-only restore of the job tables into four, triggers disabled, fails');
is($c->safe_psql('four', 'SELECT count(*) || \' \' || bool_or(restored) FROM dedup_jobs'), '7 false',
	'none of its job rows loaded');
is($c->safe_psql('four', 'SELECT count(*) FROM dedup_orphans'), '1',
	'its orphan rows, loaded, are not listed under job 2 of four');
is($c->safe_psql('four', q{SELECT ok FROM dedup_verify(2) WHERE check_name = 'orphans_listed'}), 't',
	'nor counted by its dedup_verify');
is($c->safe_psql('four', q{SELECT job_id FROM dedup_table('t', '{k}')}), '8',
	'the next job takes the next id');

# --- 4. a dump of 1.4 --------------------------------------------------------
$a->safe_psql('postgres', 'CREATE DATABASE old');
$a->safe_psql('old', q{
	CREATE EXTENSION dedup_ext VERSION '1.4';
	CREATE TABLE t (id int PRIMARY KEY, k int);
	INSERT INTO t SELECT g, g % 3 FROM generate_series(1, 9) g;
	SELECT dedup_table('t', '{k}');
});
$a->command_ok([ 'pg_dump', '-Fc', '-f', "$dir/old.dump", '-d', $a->connstr('old') ],
	'pg_dump of a database at 1.4');
$c->safe_psql('postgres', 'CREATE DATABASE old');
$c->command_ok([ 'pg_restore', '-d', $c->connstr('old'), "$dir/old.dump" ],
	'restored under 1.6');
is($c->safe_psql('old', q{SELECT extversion FROM pg_extension WHERE extname = 'dedup_ext'}),
	'1.6', 'the restore installs 1.6');
is($c->safe_psql('old', q{SELECT job_id || ' ' || restored FROM dedup_jobs}), '1 true',
	'its job, which has no origin, is history');
($r, $o, $e) = $c->psql('old', 'SELECT dedup_rollback(1)',
	extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
like($e, qr/55000/, 'and is not rolled back');

# --- 6. reinstalled or restored under a running worker -----------------------
# ev: 3000 rows, keys k0..k299; the job removes 10 rows a batch, 3 s apart
sub running_job
{
	my ($db) = @_;
	$a->safe_psql($db, q{
		CREATE TABLE ev (id int PRIMARY KEY, k text NOT NULL);
		INSERT INTO ev SELECT g, 'k' || g % 300 FROM generate_series(1, 3000) g;
	});
	my $job = $a->safe_psql($db, q{SET dedup_ext.batch_delay = 3000;
		SELECT job_id FROM dedup_table('ev', '{k}', background => true, batch_size => 10)});
	ok($a->poll_query_until($db, "SELECT batches_done > 0 FROM dedup_jobs WHERE job_id = $job"),
		"$db: the job committed a batch");
	return $job;
}

sub worker_left
{
	my ($job, $offset, $what) = @_;
	ok($a->wait_for_log(qr/dedup_ext: job $job no longer exists; its worker leaves it/, $offset),
		"$what: the worker leaves the job");
}

$a->safe_psql('postgres', 'CREATE DATABASE reinstall');
$a->safe_psql('reinstall', 'CREATE EXTENSION dedup_ext');
my $gone = running_job('reinstall');
my $offset = -s $a->logfile;
$a->safe_psql('reinstall', 'DROP EXTENSION dedup_ext CASCADE; CREATE EXTENSION dedup_ext');
my $left = $a->safe_psql('reinstall', 'SELECT count(*) FROM ev');
# a new job with the same id on the same table, a rename: the old job's
# deletes would tell themselves apart
my $renamer = $a->safe_psql('reinstall', q{
	SELECT job_id FROM dedup_table('ev', '{k}', action => 'rename', background => true)});
is($renamer, $gone, 'reinstalled: a new job takes the id of the job whose worker still runs');
worker_left($gone, $offset, 'reinstalled');
is($a->safe_psql('reinstall', "SELECT dedup_wait($renamer, '60s')"), 'done', 'the new job is done');
is($a->safe_psql('reinstall', "SELECT rows_deleted || ' ' || rows_renamed || ' ' || coalesce(error, '-')
	FROM dedup_jobs WHERE job_id = $renamer"), '0 ' . ($left - 300) . ' -',
	'it renamed every duplicate left at the reinstall, and removed none');
is($a->safe_psql('reinstall', q{SELECT count(*) || ' ' || count(DISTINCT k) FROM ev}),
	"$left $left", 'no row was removed since the reinstall; every key is distinct');

# pg_restore --clean of a dump taken while the job ran: the job's row comes
# back as it was dumped (its origin too), history of another run
$a->safe_psql('postgres', 'CREATE DATABASE restored');
$a->safe_psql('restored', 'CREATE EXTENSION dedup_ext');
my $was = running_job('restored');
$a->command_ok([ 'pg_dump', '-Fc', '-f', "$dir/restored.dump", '-d', $a->connstr('restored') ],
	'pg_dump while the job runs');
$offset = -s $a->logfile;
$a->command_ok([ 'pg_restore', '--clean', '-d', $a->connstr('restored'), "$dir/restored.dump" ],
	'pg_restore --clean into the same database');
my $ev_restored = $a->safe_psql('restored', sprintf($md5, 'ev'));
worker_left($was, $offset, 'restored');
is($a->safe_psql('restored', "SELECT state || ' ' || restored FROM dedup_jobs WHERE job_id = $was"),
	'interrupted true', 'the restored row of the job is history, as restored');
is($a->safe_psql('restored', sprintf($md5, 'ev')), $ev_restored, 'the restored table is untouched');

done_testing();

# A background dedup's batch finds its rows by one TID scan of their ctids
# (src/batch.c, batch_tids and batch_exec), whatever the table's size:
#   1. each batch's lock and DELETE, as auto_explain logs them in the worker,
#      read the table through TID scans over the batch's list of ctids, each
#      run once, and neither scan the whole table nor loop over it (before,
#      a table of this size was read whole by every batch, and a larger one
#      by a TID scan run again for every row);
#   2. the same for a table without a primary key, and for a merge's locks
#      and map;
#   3. nested loops are off while those statements are planned only: a row
#      trigger sees them on during the DELETE, a deferred one at the commit;
#   4. with a filter that reads another table the DELETE keeps the
#      planner's own choice, without the lists, and the job does what it
#      says.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('batch_plans');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'dedup_ext, auto_explain'
max_worker_processes = 16
auto_explain.log_min_duration = 0
auto_explain.log_analyze = on
auto_explain.log_timing = off
auto_explain.log_nested_statements = on
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION dedup_ext');

# NAME: 20,000 rows and 2,000 more, each a duplicate of one of them
sub create_table
{
	my ($name, $pk) = @_;
	$node->safe_psql('postgres', qq{
		CREATE TABLE $name (id bigint @{[ $pk ? 'PRIMARY KEY' : 'NOT NULL' ]}, k text NOT NULL);
		INSERT INTO $name SELECT g, 'key-' || g FROM generate_series(1, 20000) g;
		INSERT INTO $name SELECT 20000 + g, 'key-' || (g * 7) FROM generate_series(1, 2000) g;
		ANALYZE $name;
	});
}

# runs a background dedup of the table in batches of 500; returns the job id
# and what the server logged until its worker was gone
sub run_job
{
	my ($table, $extra) = @_;
	$extra //= '';
	my $offset = -s $node->logfile;
	my $job = $node->safe_psql('postgres',
		qq{SELECT job_id FROM dedup_table('$table', '{k}', background => true, batch_size => 500$extra)});
	ok($node->poll_query_until('postgres',
			qq{SELECT state IN ('done', 'failed', 'cancelled') FROM dedup_jobs WHERE job_id = $job}),
		"$table: the job ends");
	is($node->safe_psql('postgres', qq{SELECT state FROM dedup_jobs WHERE job_id = $job}),
		'done', "$table: the job is done");
	ok($node->poll_query_until('postgres',
			q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dedup_ext worker'}, '0'),
		"$table: its worker is gone");
	return ($job, slurp_file($node->logfile, $offset));
}

# the plans auto_explain logged for statements whose text starts with $start
sub plans
{
	my ($log, $start) = @_;
	my @plans;
	for my $entry (split /\n(?=\d{4}-\d\d-\d\d )/, $log)
	{
		next unless $entry =~ /LOG:  duration: [\d.]+ ms  plan:\n\tQuery Text: (.*)/;
		push @plans, $entry if index($1, $start) == 0;
	}
	return @plans;
}

# every batch's lock statements (LOCKS of them) and its writing statement,
# whose text starts with WRITE, read the table by one TID scan of a ctid list
sub check_batches
{
	my ($table, $log, $batches, $locks, $write) = @_;
	my @locks = plans($log, "SELECT pg_catalog.count(*) FROM (SELECT FROM ONLY public.$table x");
	my @writes = plans($log, $write // "WITH dedup_d AS (DELETE FROM ONLY public.$table r");
	is(scalar @locks, $batches * ($locks // 1), "$table: its lock statements, for every batch");
	is(scalar @writes, $batches, "$table: one writing statement per batch");
	for my $plan (@locks, @writes)
	{
		my @tid_scans = $plan =~ /(Tid Scan on $table \w+ .*\n\s*TID Cond: .*)/g;
		my $what = $plan =~ /Query Text: SELECT/ ? 'lock' : 'writing statement';
		ok(@tid_scans > 0 && !grep({ !/loops=1\)\n\s*TID Cond: \(ctid = ANY \((?:\$\d+|\(InitPlan \d+\)\.col\d+)\)\)/ } @tid_scans),
			"$table: the batch's $what reads the table by TID scans of its ctid list, each run once")
		  or diag($plan);
		unlike($plan, qr/Seq Scan on $table |Nested Loop/,
			"$table: and neither scans the whole table nor loops over it") or diag($plan);
	}
}

# 1. with a primary key: four batches of 500 losers
create_table('t_pk', 1);
my ($job, $log) = run_job('t_pk');
check_batches('t_pk', $log, 4);
is($node->safe_psql('postgres',
		qq{SELECT rows_deleted || ' ' || (SELECT duplicate_rows FROM dedup_audit('t_pk', '{k}'))
		     FROM dedup_jobs WHERE job_id = $job}),
	'2000 0', 't_pk: every duplicate is gone');

# 2. without one
create_table('t_nopk', 0);
($job, $log) = run_job('t_nopk');
check_batches('t_nopk', $log, 4);
is($node->safe_psql('postgres',
		qq{SELECT rows_deleted || ' ' || (SELECT duplicate_rows FROM dedup_audit('t_nopk', '{k}'))
		     FROM dedup_jobs WHERE job_id = $job}),
	'2000 0', 't_nopk: every duplicate is gone');

# 2b. a merge: its lock statements (survivors, then losers) and the
# statement that writes its map read the table the same way
create_table('t_merge', 1);
$node->safe_psql('postgres', q{
	CREATE TABLE c_merge (id bigint PRIMARY KEY, pid bigint NOT NULL REFERENCES t_merge (id));
	CREATE INDEX ON c_merge (pid);
	INSERT INTO c_merge SELECT id, id FROM t_merge;
	ANALYZE c_merge;
});
($job, $log) = run_job('t_merge', q{, action => 'merge'});
check_batches('t_merge', $log, 4, 2, 'INSERT INTO pg_temp.dedup_merge_map');
is($node->safe_psql('postgres',
		qq{SELECT rows_deleted || ' ' || refs_repointed || ' ' || (SELECT duplicate_rows FROM dedup_audit('t_merge', '{k}'))
		     || ' ' || (SELECT count(DISTINCT pid) FROM c_merge) FROM dedup_jobs WHERE job_id = $job}),
	'2000 2000 0 20000', 't_merge: every duplicate is gone, its references re-pointed to its survivor');

# 3. nested loops are off while a batch's statement is planned, not while
# it runs: a row trigger (and what it plans) sees them on, during the DELETE
# and at the batch's commit
create_table('t_scope', 1);
$node->safe_psql('postgres', q{
	CREATE TABLE seen (at text, nestloop text);
	CREATE FUNCTION note_nestloop() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.seen VALUES (TG_ARGV[0], pg_catalog.current_setting('enable_nestloop'));
		RETURN NULL;
	END $$;
	CREATE TRIGGER during AFTER DELETE ON t_scope FOR EACH ROW EXECUTE FUNCTION note_nestloop('delete');
	CREATE CONSTRAINT TRIGGER at_commit AFTER DELETE ON t_scope DEFERRABLE INITIALLY DEFERRED
		FOR EACH ROW EXECUTE FUNCTION note_nestloop('commit');
});
($job, $log) = run_job('t_scope');
check_batches('t_scope', $log, 4);
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT at || ' ' || nestloop, ', ' ORDER BY at || ' ' || nestloop) FROM seen}),
	'commit on, delete on', 'the statements it fires plan with nested loops, during the DELETE and at the commit');

# 4. a filter that reads another table: the DELETE keeps the planner's
# choice, without the lists (the locks, which have no filter, use them);
# only the filtered groups lose rows
create_table('t_filter', 1);
$node->safe_psql('postgres', q{
	CREATE TABLE wanted (k text PRIMARY KEY);
	INSERT INTO wanted SELECT 'key-' || (g * 7) FROM generate_series(1, 1000) g;
	ANALYZE wanted;
});
($job, $log) = run_job('t_filter', q{, filter => 'EXISTS (SELECT FROM public.wanted w WHERE w.k = t_filter.k)'});
my @deletes = plans($log, 'WITH dedup_d AS (DELETE FROM ONLY public.t_filter r');
is(scalar @deletes, 2, 't_filter: two batches');
ok(!grep({ /ctid = ANY/ } @deletes), 't_filter: the DELETE does not read its rows by lists')
  or diag(join("\n", @deletes));
my @locks = plans($log, 'SELECT pg_catalog.count(*) FROM (SELECT FROM ONLY public.t_filter x');
ok(@locks == 2 && !grep({ !/TID Cond: \(ctid = ANY/ } @locks), 't_filter: its locks do')
  or diag(join("\n", @locks));
is($node->safe_psql('postgres',
		qq{SELECT rows_deleted || ' ' || (SELECT duplicate_rows FROM dedup_audit('t_filter', '{k}'))
		     FROM dedup_jobs WHERE job_id = $job}),
	'1000 1000', 't_filter: the filtered groups lost their duplicates, the others kept theirs');

$node->stop;
done_testing();

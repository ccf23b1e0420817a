# Background jobs submitted by real clients:
#   a. pg_cron (Debian's postgresql-15-cron, preloaded with dedup_ext, its
#      jobs run in background workers) schedules
#      dedup_table(..., background => true); the submission commits, the
#      dedup_ext worker it starts runs the job to 'done' and no duplicate
#      is left.  pg_cron's shortest schedule is one minute, so the test waits
#      for up to three.
#   b. Alembic (Debian's python3-alembic + python3-psycopg2, as in
#      t/003_alembic.pl; dedup_ext not preloaded): a migration submits a
#      background dedup and then does another step.  If that step fails the
#      migration rolls back and the job never exists nor runs; if it commits,
#      the job starts only after the commit and reaches 'done' (a column
#      the migration added after the submission is in the job's archive).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DedupTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

###########################################################################
# a. pg_cron
###########################################################################
my $node = cron_node('bg_cron');
$node->safe_psql('postgres', q{
	CREATE TABLE t (id bigserial PRIMARY KEY, k int, v text);
	INSERT INTO t (k, v) SELECT g % 1000, 'v' || g FROM generate_series(1, 20000) g;
});
my $before = $node->safe_psql('postgres',
	q{SELECT duplicate_rows FROM dedup_audit('t', '{k}')});
is($before, '19000', 'duplicates before');

$node->safe_psql('postgres', q{
	SELECT cron.schedule('bg-dedup', '* * * * *',
	  $$SELECT * FROM dedup_table('t', '{k}', background => true, batch_size => 5000)$$);
});

ok($node->poll_query_until('postgres',
		q{SELECT count(*) >= 1 FROM dedup_jobs WHERE kind = 'dedup' AND state = 'done'}),
	'the background dedup scheduled by pg_cron ran to done');
$node->safe_psql('postgres', q{SELECT cron.unschedule('bg-dedup')});

my $job = $node->safe_psql('postgres',
	q{SELECT min(job_id) FROM dedup_jobs WHERE kind = 'dedup'});
is($node->safe_psql('postgres',
		qq{SELECT background || ' ' || state || ' ' || rows_deleted || ' ' || batches_done
		     FROM dedup_jobs WHERE job_id = $job}),
	"true done $before 4", 'a background job, done in 4 batches');
is($node->safe_psql('postgres', qq{SELECT submitted_by FROM dedup_jobs WHERE job_id = $job}),
	$node->safe_psql('postgres', 'SELECT current_user'), 'submitted as the cron job\'s role');
is($node->safe_psql('postgres', q{SELECT duplicate_rows FROM dedup_audit('t', '{k}')}),
	'0', 'no duplicates left');
is($node->safe_psql('postgres', q{SELECT count(*) FROM t}), '1000', 'one row per key');
is($node->safe_psql('postgres', qq{SELECT bool_and(ok) FROM dedup_verify($job)}), 't',
	'verified');
like($node->safe_psql('postgres',
		q{SELECT status FROM cron.job_run_details ORDER BY runid LIMIT 1}),
	qr/succeeded/, 'pg_cron reports success');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) FROM dedup_jobs WHERE state <> 'done'}, '0'),
	'no job left unfinished');

$node->stop;

###########################################################################
# b. Alembic
###########################################################################
SKIP:
{
	skip 'Debian python3 with alembic and psycopg2 is not installed', 1
	  unless have_alembic();

	my $anode = PostgreSQL::Test::Cluster->new('bg_alembic');
	$anode->init;
	$anode->start;
	$anode->safe_psql('postgres', q{
		CREATE EXTENSION dedup_ext;
		CREATE TABLE payments (id int PRIMARY KEY, transaction_id text NOT NULL, amount int);
		INSERT INTO payments SELECT g, 'TX' || (g % 40), g FROM generate_series(1, 100) g;
	});
	my $payments_md5 = q{SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM payments p};
	my $before_md5 = $anode->safe_psql('postgres', $payments_md5);

	my ($write, $alembic) = alembic_project($anode);

	my $write_migration = sub {
		my ($later_step) = @_;
		$write->('0005_bg_dedup_payments.py', <<"PY");
"""dedupe payments.transaction_id in the background and make it unique"""
from alembic import op

revision = "0005"
down_revision = None


def upgrade():
    op.execute(
        "SELECT * FROM dedup_table('payments', ARRAY['transaction_id'], "
        "keep => 'first', action => 'rename', add_unique => true, "
        "background => true, batch_size => 10)"
    )
    op.execute("SELECT pg_sleep(1)")
    $later_step


def downgrade():
    pass
PY
	};

	# variant 1: the step after the submission fails
	$write_migration->(q{op.execute("SELECT 1 / 0")});
	my ($ok, $log) = $alembic->('upgrade', 'head');
	ok(!$ok, 'a migration that fails after the background submission fails');
	like($log, qr/division by zero/, 'with the later step\'s error');
	is($anode->safe_psql('postgres', q{SELECT count(*) FROM dedup_jobs}), '0',
		'no job row');
	sleep 3;
	is($anode->safe_psql('postgres', q{SELECT count(*) FROM dedup_jobs}), '0',
		'still no job row a few seconds later');
	is($anode->safe_psql('postgres', $payments_md5), $before_md5,
		'payments unchanged');
	is($anode->safe_psql('postgres',
			q{SELECT duplicate_rows FROM dedup_audit('payments', '{transaction_id}')}),
		'60', 'the duplicates are still there');
	is($anode->safe_psql('postgres',
			q{SELECT count(*) FROM pg_tables WHERE schemaname = 'dedup_archive'}),
		'0', 'no archive, no work table');
	is($anode->safe_psql('postgres',
			q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dedup_ext worker'}),
		'0', 'no dedup_ext worker');

	# variant 2: the migration commits; the job starts after the commit.  A
	# later step adds a column to the table: the job's archive, made at the
	# submission, is made again with it before the first batch
	$write_migration->(
		q{op.execute("ALTER TABLE payments ADD COLUMN note text")
    op.execute("CREATE TABLE migration_marker AS SELECT clock_timestamp() AS last_step_at")});
	($ok, $log) = $alembic->('upgrade', 'head');
	ok($ok, 'the migration commits') or diag($log);
	my $job = $anode->safe_psql('postgres',
		q{SELECT job_id FROM dedup_jobs WHERE kind = 'dedup' AND background});
	ok($job =~ /^\d+$/, "one background job: $job");
	is(wait_job($anode, $job, '60s'), 'done', 'dedup_wait from another session: done');
	is($anode->safe_psql('postgres', qq{
			SELECT j.started_at > m.last_step_at
			  FROM dedup_jobs j, migration_marker m WHERE j.job_id = $job}),
		't', 'the job started after the migration\'s last step');
	is($anode->safe_psql('postgres',
			qq{SELECT rows_renamed || ' ' || (batches_done >= 6) FROM dedup_jobs WHERE job_id = $job}),
		'60 true', 'the job renamed the 60 duplicates in batches');
	is($anode->safe_psql('postgres',
			q{SELECT count(DISTINCT transaction_id) FROM payments}), '100',
		'transaction_id unique');
	is($anode->safe_psql('postgres',
			q{SELECT count(*) FROM pg_constraint WHERE conrelid = 'payments'::regclass AND contype = 'u'}),
		'1', 'unique constraint added');
	is($anode->safe_psql('postgres', qq{SELECT bool_and(ok) FROM dedup_verify($job)}), 't',
		'verified');
	is($anode->safe_psql('postgres', qq{
			SELECT count(*) FROM pg_attribute
			 WHERE attrelid = (SELECT archive_table FROM dedup_jobs WHERE job_id = $job)
			   AND attname = 'note'}),
		'1', 'its archive has the column the migration added');
	is($anode->safe_psql('postgres', q{SELECT version_num FROM alembic_version}), '0005',
		'alembic recorded the revision');

	$anode->stop;
}

done_testing();

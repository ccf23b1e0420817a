# The README's migration guide, with Alembic from Debian (python3-alembic +
# python3-psycopg2, run by Debian's own python3): a migration that calls
# dedup_table and then fails in a later step leaves no trace (rows, job row,
# archive, constraint); the same migration without the failing step commits
# all of it, and its downgrade rolls the dedup back.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DedupTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

plan skip_all => 'Debian python3 with alembic and psycopg2 is not installed'
  unless have_alembic();

my $node = PostgreSQL::Test::Cluster->new('alembic');
$node->init;
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION dedup_ext;
	CREATE TABLE payments (id int PRIMARY KEY, transaction_id text NOT NULL, amount int);
	INSERT INTO payments SELECT g, 'TX' || (g % 40), g FROM generate_series(1, 100) g;
});
my $before = $node->safe_psql('postgres',
	q{SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM payments p});

my ($write, $alembic) = alembic_project($node);

sub write_migration
{
	my ($later_step) = @_;
	$write->('0004_dedup_payments.py', <<"PY");
"""dedupe payments.transaction_id and make it unique"""
from alembic import op

revision = "0004"
down_revision = None


def upgrade():
    op.execute(
        "SELECT * FROM dedup_table('payments', ARRAY['transaction_id'], "
        "keep => 'first', action => 'rename', add_unique => true)"
    )
    $later_step


def downgrade():
    op.execute(
        "SELECT dedup_rollback(job_id) FROM dedup_jobs "
        "WHERE relation = 'payments'::regclass AND kind = 'dedup' "
        "AND params->>'action' = 'rename' AND (params->>'add_unique')::boolean "
        "AND rolled_back_by IS NULL ORDER BY job_id DESC LIMIT 1"
    )
PY
}

write_migration(q{op.execute("SELECT 1 / 0")});
my ($ok, $log) = $alembic->('upgrade', 'head');
ok(!$ok, 'a migration that fails after the dedup fails');
like($log, qr/division by zero/, 'with the later step\'s error');
is($node->safe_psql('postgres', q{SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM payments p}),
	$before, 'payments unchanged');
is($node->safe_psql('postgres', q{SELECT count(*) FROM dedup_jobs}), '0', 'no job row');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_tables WHERE schemaname = 'dedup_archive'}),
	'0', 'no archive');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_constraint WHERE conrelid = 'payments'::regclass AND contype = 'u'}),
	'0', 'no unique constraint');

write_migration('');
($ok, $log) = $alembic->('upgrade', 'head');
ok($ok, 'the migration commits') or diag($log);
is($node->safe_psql('postgres',
		q{SELECT state || ' ' || rows_renamed FROM dedup_jobs WHERE kind = 'dedup'}),
	'done 60', 'the job renamed the 60 duplicates');
is($node->safe_psql('postgres',
		q{SELECT count(DISTINCT transaction_id) FROM payments}), '100', 'transaction_id unique');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_constraint WHERE conrelid = 'payments'::regclass AND contype = 'u'}),
	'1', 'unique constraint added');

($ok, $log) = $alembic->('downgrade', 'base');
ok($ok, 'the downgrade runs') or diag($log);
is($node->safe_psql('postgres', q{SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM payments p}),
	$before, 'payments exactly as before');
# the downgrade's statement again, with no job left to undo: no error, no call
is($node->safe_psql('postgres', q{
		SELECT count(*) FROM (SELECT dedup_rollback(job_id) FROM dedup_jobs
		 WHERE relation = 'payments'::regclass AND kind = 'dedup'
		   AND params->>'action' = 'rename' AND (params->>'add_unique')::boolean
		   AND rolled_back_by IS NULL ORDER BY job_id DESC LIMIT 1) r}),
	'0', 'the downgrade statement finds nothing more to undo, and does not fail');

$node->stop;
done_testing();

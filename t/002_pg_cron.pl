# The README's pg_cron guide: a foreground dedup_table scheduled by pg_cron
# (Debian's postgresql-15-cron) runs, commits its job row, and a second run
# finds nothing left to do.  pg_cron's shortest schedule is one minute, so the
# test waits for up to three.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use DedupTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = cron_node('cron');
$node->safe_psql('postgres', q{
	CREATE TABLE property_photos (id bigserial PRIMARY KEY, property_pk int, photo_id int);
	INSERT INTO property_photos (property_pk, photo_id)
	SELECT g % 50, g % 7 FROM generate_series(1, 3500) g;
});
my $before = $node->safe_psql('postgres',
	q{SELECT duplicate_rows FROM dedup_audit('property_photos', '{property_pk,photo_id}')});
ok($before > 0, "duplicates before: $before");

$node->safe_psql('postgres', q{
	SELECT cron.schedule('photo-dedup', '* * * * *',
	  $$SELECT * FROM dedup_table('property_photos', ARRAY['property_pk', 'photo_id'])$$);
});

ok($node->poll_query_until('postgres',
		q{SELECT count(*) >= 1 FROM dedup_jobs WHERE kind = 'dedup' AND state = 'done'},
		't'),
	'the scheduled dedup ran and committed its job');
is($node->safe_psql('postgres',
		q{SELECT duplicate_rows FROM dedup_audit('property_photos', '{property_pk,photo_id}')}),
	'0', 'no duplicates left');
is($node->safe_psql('postgres',
		q{SELECT rows_deleted FROM dedup_jobs WHERE kind = 'dedup' ORDER BY job_id LIMIT 1}),
	$before, 'the job removed exactly the duplicates the audit counted');
# pg_cron's launcher records the run's status after the run's own commit
ok($node->poll_query_until('postgres',
		q{SELECT status FROM cron.job_run_details ORDER BY runid LIMIT 1}, 'succeeded'),
	'pg_cron reports success');

$node->safe_psql('postgres', q{SELECT cron.unschedule('photo-dedup')});
$node->stop;
done_testing();

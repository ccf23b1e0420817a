# dedup_ext loaded through shared_preload_libraries: the extension installs and
# a foreground dedup with archive and rollback works as without preloading.
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

# DROP DATABASE waits until every process has acknowledged its barrier
# (ProcSignalBarrier); the launcher, which sleeps for the server's lifetime,
# must answer it, or the DROP never returns
$node->safe_psql('postgres', 'CREATE DATABASE scratch');
my ($ret, $stdout, $stderr) = $node->psql('postgres', 'DROP DATABASE scratch',
	timeout => 60);
is($ret, 0, 'DROP DATABASE returns with the launcher running');

$node->stop;
done_testing();

# A cluster with more databases than free background worker slots: after an
# immediate stop, the launcher starts a resuming worker for every database,
# those it could not start at first as the ones before them finish, so the
# interrupted or queued job of every database runs by itself and finishes.
# Then jobs submitted in every database while the slots are taken: each
# submission that finds none says so, and the launcher starts the worker
# of its database once a slot is free, without dedup_resume.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $ndb = 6;
my $node = PostgreSQL::Test::Cluster->new('many');
$node->init;
# the launcher, the logical replication launcher and two more
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'dedup_ext'
max_worker_processes = 4
dedup_ext.max_workers = 1
});
$node->start;

for my $i (1 .. $ndb)
{
	$node->safe_psql('postgres', "CREATE DATABASE db$i");
	$node->safe_psql("db$i", q{
		CREATE EXTENSION dedup_ext;
		CREATE TABLE t (id int PRIMARY KEY, k int NOT NULL);
		INSERT INTO t SELECT g, g % 500 FROM generate_series(1, 20000) g;
		SET dedup_ext.batch_delay = 200;
		SELECT dedup_table('t', '{k}', background => true, batch_size => 1000);
	});
}
# two workers can run at once: the other jobs wait queued
ok($node->poll_query_until('db1', 'SELECT batches_done >= 1 FROM dedup_jobs WHERE job_id = 1'),
	'the first job committed a batch');
$node->stop('immediate');
my $offset = -s $node->logfile;
$node->start;

for my $i (1 .. $ndb)
{
	ok($node->poll_query_until("db$i", 'SELECT state FROM dedup_jobs WHERE job_id = 1', 'done'),
		"db$i: the interrupted job resumed and finished");
	is($node->safe_psql("db$i", 'SELECT count(*) FROM t'), '500', "db$i: one row per key left");
}
ok(!$node->log_contains(qr/could not start a dedup_ext background worker/, $offset),
	'no warning about a job left queued after the restart: the launcher tries again');

$offset = -s $node->logfile;
my %job;
for my $i (1 .. $ndb)
{
	$job{$i} = $node->safe_psql("db$i", q{
		INSERT INTO t SELECT g, g % 500 FROM generate_series(20001, 40000) g;
		SET dedup_ext.batch_delay = 200;
		SELECT job_id FROM dedup_table('t', '{k}', background => true, batch_size => 1000);
	});
}
ok($node->log_contains(qr/could not start a dedup_ext background worker yet.*\n.*\n.*HINT:  The job stays queued until a slot is free; the launcher then starts a worker for it/, $offset),
	'a submission that found no free slot says the launcher starts its worker later');
for my $i (1 .. $ndb)
{
	ok($node->poll_query_until("db$i", "SELECT state FROM dedup_jobs WHERE job_id = $job{$i}", 'done'),
		"db$i: the job submitted while the slots were taken finished");
	is($node->safe_psql("db$i", 'SELECT count(*) FROM t'), '500', "db$i: one row per key left again");
}
ok(!$node->log_contains(qr/terminated by signal/),
	'no process crashed (the launcher keeps its list of databases across its waits)');

done_testing();

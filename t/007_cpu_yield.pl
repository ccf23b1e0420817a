# A background job gives its CPU to processes waiting for one
# (dedup_ext.worker_yield, src/cpu_yield.c), and still finishes on a machine
# whose CPUs never idle:
#   1. with CPU-bound loops on every CPU and one more, the job naps (its
#      DEBUG1 line counts the times it gave way), and is done with no
#      duplicate left;
#   2. with dedup_ext.worker_yield off, under the same loops, it never naps.
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
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION dedup_ext');

# t_NAME: 50,000 rows, 500 of them a duplicate of another
sub create_table
{
	my ($name) = @_;
	$node->safe_psql('postgres', qq{
		CREATE TABLE $name (id bigint PRIMARY KEY, k text NOT NULL);
		INSERT INTO $name SELECT g, 'key-' || g FROM generate_series(1, 50000) g;
		INSERT INTO $name SELECT 50000 + g, 'key-' || (g * 97) FROM generate_series(1, 500) g;
		ANALYZE $name;
	});
}

# One busy loop more than there are CPUs (as the worker counts them), for
# at most a minute.  A loop leaves by _exit: exit would run the END blocks
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
			my $end = time() + 60;
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

# runs a background dedup of the table under the loops; returns the job id
# and what the server logged meanwhile
sub run_job
{
	my ($table) = @_;
	my $offset = -s $node->logfile;
	start_loops();
	my $job = $node->safe_psql('postgres',
		qq{SELECT job_id FROM dedup_table('$table', '{k}', background => true, batch_size => 100)});
	$node->poll_query_until('postgres',
		qq{SELECT state IN ('done', 'failed', 'cancelled') FROM dedup_jobs WHERE job_id = $job});
	stop_loops();
	is($node->safe_psql('postgres', qq{SELECT state FROM dedup_jobs WHERE job_id = $job}),
		'done', "$table: the job is done while every CPU is busy");
	# the worker logs its naps after the job's last commit, then leaves
	ok($node->poll_query_until('postgres',
			q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dedup_ext worker'}, '0'),
		'its worker is gone');
	return ($job, slurp_file($node->logfile, $offset));
}

# 1. yielding (the default)
create_table('t_yield');
my ($job, $log) = run_job('t_yield');
like($log, qr/dedup_ext job $job: gave the CPU [1-9]\d* times, \d+ ms in all, to processes waiting for one/,
	'the worker gave its CPU to the waiting loops');
is($node->safe_psql('postgres',
		qq{SELECT rows_deleted || ' ' || (SELECT duplicate_rows FROM dedup_audit('t_yield', '{k}'))
		     FROM dedup_jobs WHERE job_id = $job}),
	'500 0', 'every duplicate is gone');

# 2. dedup_ext.worker_yield off (a new backend shows that the reload is done)
$node->safe_psql('postgres', 'ALTER SYSTEM SET dedup_ext.worker_yield = off');
$node->reload;
ok($node->poll_query_until('postgres', 'SHOW dedup_ext.worker_yield', 'off'),
	'worker_yield is off');
create_table('t_busy');
($job, $log) = run_job('t_busy');
unlike($log, qr/dedup_ext job $job: gave the CPU/, 'with worker_yield off it never gives way');
is($node->safe_psql('postgres', qq{SELECT rows_deleted FROM dedup_jobs WHERE job_id = $job}),
	'500', 'and removes the same duplicates');

$node->stop;
done_testing();

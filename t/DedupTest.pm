# Setups the TAP tests share: a node with pg_cron and dedup_ext preloaded,
# and an Alembic project (Debian's python3-alembic + python3-psycopg2, run by
# Debian's own python3) pointed at a node.
package DedupTest;

use strict;
use warnings;
use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;

our @EXPORT = qw(cron_node have_alembic alembic_project wait_job);

my $python = '/usr/bin/python3';

# dedup_wait(job, timeout) in a session of its own: the job's final state,
# or its state at the timeout.  Called again when it ends with 40P01: the
# unique index build of a job with add_unique that began just as the call
# did may have listed the call's transaction among those it waits for
# (README, "Background jobs").
sub wait_job
{
	my ($node, $job, $timeout, $dbname) = @_;
	$dbname //= 'postgres';
	for (1 .. 20)
	{
		my ($ret, $out, $err) = $node->psql($dbname, "SELECT dedup_wait($job, '$timeout')");
		return $out if $ret == 0;
		die "dedup_wait($job) failed: $err" unless $err =~ /is waiting for this transaction to end/;
	}
	die "dedup_wait($job) refused twenty times";
}

# A started node running pg_cron's jobs in background workers of database
# postgres, with both extensions created there.
sub cron_node
{
	my ($name) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cron, dedup_ext'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 16
});
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION pg_cron; CREATE EXTENSION dedup_ext;');
	return $node;
}

sub have_alembic
{
	return system($python, '-c', 'import alembic, psycopg2') == 0;
}

# A new Alembic project whose database is the node's postgres.  Returns two
# subs: write(FILE, TEXT) puts a migration in its versions directory, and
# run(ARGS...) runs alembic with ARGS, returning (success, stdout + stderr).
sub alembic_project
{
	my ($node) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir;

	system("cd '$dir' && $python -m alembic init migrations >/dev/null") == 0
	  or die 'alembic init failed';
	my $url = sprintf('postgresql+psycopg2:///postgres?host=%s&port=%d&user=%s',
		$node->host, $node->port, scalar getpwuid($<));
	my $ini = slurp_file("$dir/alembic.ini");
	$ini =~ s/^sqlalchemy\.url = .*$/sqlalchemy.url = $url/m;
	$ini =~ s/^script_location = .*$/script_location = $dir\/migrations/m;
	open(my $fh, '>', "$dir/alembic.ini") or die "$dir/alembic.ini: $!";
	print $fh $ini;
	close $fh;

	my $write = sub {
		my ($file, $text) = @_;
		open(my $m, '>', "$dir/migrations/versions/$file") or die "$file: $!";
		print $m $text;
		close $m;
	};
	my $run = sub {
		my @cmd = ($python, '-m', 'alembic', '-c', "$dir/alembic.ini", @_);
		my ($out, $err) = ('', '');
		my $ok = IPC::Run::run(\@cmd, '>', \$out, '2>', \$err);
		return ($ok, $out . $err);
	};
	return ($write, $run);
}

1;

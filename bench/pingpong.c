/*
 * pingpong.c -- what one busy process costs a request/response workload
 * beside it, by the busy process's priority and scheduling policy; for
 * bench/pingpong.sh.  No PostgreSQL: seconds per case instead of minutes, and
 * none of a database's own noise.
 *
 *   pingpong SECONDS ROUNDS PAIRS WORK_US
 *
 * PAIRS servers, each a process in a session of its own (as a backend is),
 * answer one client each over a Unix socket after WORK_US of CPU time; each
 * client (a process of the parent's session, as pgbench's threads are) sends
 * a request every 0.5-4.5 ms.  The latency is the round trip beyond WORK_US.
 * Each case runs SECONDS, ROUNDS times, the cases alternating; the table
 * pools each case's rounds.  The busy process spins in a session of its own
 * at nice 10 with its autogroup at nice 10, as a dedup_ext worker runs, then
 * as the case says.  Two cases pin the workload to CPU 0: alone (what losing
 * a CPU costs it), and with the busy process pinned to CPU 1 (whether a busy
 * CPU slows the other one).  A setting that cannot be taken ends the run.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

typedef enum Busy
{
	BUSY_NONE,					/* no busy process */
	BUSY_PINNED,				/* none, and the workload on CPU 0 */
	BUSY_APART,					/* the workload on CPU 0, busy on CPU 1 */
	BUSY_NICE10,
	BUSY_NICE19,
	BUSY_IDLE,					/* SCHED_IDLE */
	BUSY_SLICE_SHORT,			/* a 0.1 ms time slice (Linux 6.12+) */
	BUSY_SLICE_LONG,			/* a 20 ms time slice */
	BUSY_HALF,					/* busy 1 ms, asleep 1 ms */
	NCASES
} Busy;

static const char *const busy_names[] = {
	"none", "none, workload on one CPU", "workload on one CPU, busy on the other",
	"nice 10 (a worker's default)", "nice 19", "SCHED_IDLE", "time slice 0.1 ms",
	"time slice 20 ms", "busy half the time"
};
_Static_assert(sizeof(busy_names) / sizeof(busy_names[0]) == NCASES, "a name for each case");

/* the first version of the kernel's struct sched_attr (48 bytes) */
struct kernel_sched_attr
{
	uint32_t	size;
	uint32_t	sched_policy;
	uint64_t	sched_flags;
	int32_t		sched_nice;
	uint32_t	sched_priority;
	uint64_t	sched_runtime;
	uint64_t	sched_deadline;
	uint64_t	sched_period;
};

/* per client: the most requests a case can make (one every 0.5 ms at least) */
#define MAX_SAMPLES(seconds) ((seconds) * 2000 + 16)

static double
clock_us(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static double
now_us(void)
{
	return clock_us(CLOCK_MONOTONIC);
}

/* us of this process's own CPU time: time it waits for a CPU does not count */
static void
spin_cpu_us(double us)
{
	double		t0 = clock_us(CLOCK_PROCESS_CPUTIME_ID);

	while (clock_us(CLOCK_PROCESS_CPUTIME_ID) - t0 < us)
		;
}

static void
die(const char *what)
{
	perror(what);
	exit(1);
}

static void
pin_to(int cpu)
{
	cpu_set_t	set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) != 0)
		die("sched_setaffinity");
}

/* a child that must not outlive the run, even in a session of its own */
static void
tie_to_parent(pid_t parent)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
		die("prctl");
	if (getppid() != parent)
		_exit(1);
}

static bool
set_slice(double ms)
{
	struct kernel_sched_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.sched_policy = SCHED_OTHER;
	attr.sched_nice = getpriority(PRIO_PROCESS, 0);
	attr.sched_runtime = (uint64_t) (ms * 1e6);
	if (syscall(SYS_sched_setattr, 0, &attr, 0) != 0)
		return false;
	/* kernels before 6.12 take the field and ignore it */
	memset(&attr, 0, sizeof(attr));
	return syscall(SYS_sched_getattr, 0, &attr, sizeof(attr), 0) == 0 &&
		attr.sched_runtime == (uint64_t) (ms * 1e6);
}

static bool
set_nice(int nice)
{
	FILE	   *autogroup;

	if (setpriority(PRIO_PROCESS, 0, nice) != 0)
		return false;
	autogroup = fopen("/proc/self/autogroup", "w");
	if (autogroup == NULL)
		return true;			/* no autogroup scheduling */
	fprintf(autogroup, "%d", nice);
	return fclose(autogroup) == 0;
}

/* takes its setting, says so on ready ('y' or 'n'), then spins */
static void
busy_main(Busy busy, int ready)
{
	struct sched_param param = {0};
	bool		ok;

	setsid();
	if (busy == BUSY_APART)
		pin_to(1);
	ok = set_nice(busy == BUSY_NICE19 ? 19 : 10);
	if (ok && busy == BUSY_IDLE)
		ok = sched_setscheduler(0, SCHED_IDLE, &param) == 0;
	if (ok && busy == BUSY_SLICE_SHORT)
		ok = set_slice(0.1);
	if (ok && busy == BUSY_SLICE_LONG)
		ok = set_slice(20);
	if (write(ready, ok ? "y" : "n", 1) != 1 || !ok)
		_exit(1);
	close(ready);
	for (;;)
	{
		spin_cpu_us(1000);
		if (busy == BUSY_HALF)
			usleep(1000);
	}
}

static void
server_main(int sock, int work_us)
{
	char		c;

	setsid();
	while (read(sock, &c, 1) == 1)
	{
		spin_cpu_us(work_us);
		if (write(sock, &c, 1) != 1)
			break;
	}
	_exit(0);
}

/* the latencies are written to out at the end, not while they are measured */
static void
client_main(int sock, unsigned seed, int seconds, int work_us, int out)
{
	double		end = now_us() + seconds * 1e6;
	double	   *lat = malloc(MAX_SAMPLES(seconds) * sizeof(double));
	int			n = 0;
	char		c = 'x';

	if (lat == NULL)
		die("malloc");
	while (now_us() < end && n < MAX_SAMPLES(seconds))
	{
		struct timespec pause = {0, (500 + rand_r(&seed) % 4000) * 1000L};
		double		t0;

		nanosleep(&pause, NULL);
		t0 = now_us();
		if (write(sock, &c, 1) != 1 || read(sock, &c, 1) != 1)
			die("client");
		lat[n++] = now_us() - t0 - work_us;
	}
	/* by writes of PIPE_BUF bytes at most, which clients cannot interleave */
	for (int i = 0; i < n; i += PIPE_BUF / sizeof(double))
	{
		int			k = n - i < (int) (PIPE_BUF / sizeof(double)) ? n - i : (int) (PIPE_BUF / sizeof(double));

		if (write(out, lat + i, k * sizeof(double)) != (ssize_t) (k * sizeof(double)))
			die("client results");
	}
	_exit(0);
}

typedef struct Latencies
{
	double	   *v;
	int			n;
	int			cap;
} Latencies;

static void
add_latency(Latencies *lat, double latency)
{
	if (lat->n == lat->cap)
	{
		lat->cap = lat->cap ? lat->cap * 2 : 65536;
		lat->v = realloc(lat->v, lat->cap * sizeof(double));
		if (lat->v == NULL)
			die("realloc");
	}
	lat->v[lat->n++] = latency;
}

static pid_t
fork_or_die(void)
{
	pid_t		pid = fork();

	if (pid < 0)
		die("fork");
	return pid;
}

/* one case for SECONDS in round: its latencies are added to lat */
static void
run_case(Busy busy, int round, int seconds, int pairs, int work_us, Latencies *lat)
{
	pid_t		self = getpid();
	pid_t		busy_pid = 0;
	bool		pinned = busy == BUSY_PINNED || busy == BUSY_APART;
	int			results[2];
	double		latency;

	if (busy >= BUSY_APART)
	{
		int			ready[2];
		char		answer = 'n';

		if (pipe(ready) != 0)
			die("pipe");
		if ((busy_pid = fork_or_die()) == 0)
		{
			close(ready[0]);
			tie_to_parent(self);
			busy_main(busy, ready[1]);
		}
		close(ready[1]);
		if (read(ready[0], &answer, 1) != 1 || answer != 'y')
		{
			fprintf(stderr, "the busy process could not take its setting: %s\n", busy_names[busy]);
			exit(1);
		}
		close(ready[0]);
	}
	if (pipe(results) != 0)
		die("pipe");
	for (int p = 0; p < pairs; p++)
	{
		int			sv[2];

		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
			die("socketpair");
		if (fork_or_die() == 0)
		{
			/* the server holds no end its client or the parent waits on */
			close(sv[0]);
			close(results[0]);
			close(results[1]);
			tie_to_parent(self);
			if (pinned)
				pin_to(0);
			server_main(sv[1], work_us);
		}
		if (fork_or_die() == 0)
		{
			close(sv[1]);
			close(results[0]);
			if (pinned)
				pin_to(0);
			client_main(sv[0], (unsigned) (round * 1000 + p + 1), seconds, work_us, results[1]);
		}
		close(sv[0]);
		close(sv[1]);
	}
	close(results[1]);
	while (read(results[0], &latency, sizeof(latency)) == sizeof(latency))
		add_latency(lat, latency);
	close(results[0]);
	if (busy_pid > 0)
		kill(busy_pid, SIGKILL);
	while (wait(NULL) > 0)
		;
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a;
	double		y = *(const double *) b;

	return x < y ? -1 : x > y;
}

static double
quantile(const Latencies *lat, double q)
{
	return lat->v[(int) (q * (lat->n - 1))];
}

static int
positive_arg(const char *arg, const char *name)
{
	char	   *end;
	long		v = strtol(arg, &end, 10);

	if (*end != '\0' || v < 1 || v > 1000000)
	{
		fprintf(stderr, "%s must be a whole number from 1 to 1000000\n", name);
		exit(2);
	}
	return (int) v;
}

int
main(int argc, char **argv)
{
	int			seconds,
				rounds,
				pairs,
				work_us;
	Latencies	lat[NCASES];
	double		p99_none = 0;

	if (argc != 5)
	{
		fprintf(stderr, "usage: %s SECONDS ROUNDS PAIRS WORK_US\n", argv[0]);
		return 2;
	}
	seconds = positive_arg(argv[1], "SECONDS");
	rounds = positive_arg(argv[2], "ROUNDS");
	pairs = positive_arg(argv[3], "PAIRS");
	work_us = positive_arg(argv[4], "WORK_US");
	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
	{
		fprintf(stderr, "pingpong needs two CPUs or more\n");
		return 1;
	}
	memset(lat, 0, sizeof(lat));
	for (int r = 0; r < rounds; r++)
		for (int c = 0; c < NCASES; c++)
			run_case((Busy) c, r, seconds, pairs, work_us, &lat[c]);

	printf("| busy process | requests | p50 us | p90 us | p99 us | p99.9 us | p99 / none |\n");
	printf("|---|---|---|---|---|---|---|\n");
	for (int c = 0; c < NCASES; c++)
	{
		if (lat[c].n == 0)
		{
			printf("| %s | 0 | | | | | |\n", busy_names[c]);
			continue;
		}
		qsort(lat[c].v, lat[c].n, sizeof(double), cmp_double);
		if (c == BUSY_NONE)
			p99_none = quantile(&lat[c], 0.99);
		printf("| %s | %d | %.0f | %.0f | %.0f | %.0f | %.2fx |\n", busy_names[c], lat[c].n,
			   quantile(&lat[c], 0.5), quantile(&lat[c], 0.9), quantile(&lat[c], 0.99),
			   quantile(&lat[c], 0.999),
			   p99_none > 0 ? quantile(&lat[c], 0.99) / p99_none : 0);
	}
	return 0;
}

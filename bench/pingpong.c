/*
 * pingpong.c -- what one busy process costs a request/response workload
 * beside it, by the busy process's priority and scheduling policy; for
 * bench/pingpong.sh.  No PostgreSQL: seconds per case instead of minutes, and
 * none of a database's own noise.
 *
 *   pingpong SECONDS ROUNDS PAIRS WORK_US
 *
 * PAIRS servers, each a process in a session of its own (as a backend is),
 * answer one client each over a Unix socket after WORK_US of CPU; each client
 * (a process of the parent's session, as pgbench's threads are) sends a
 * request every 0.5-4.5 ms.  The latency is the round trip beyond WORK_US.
 * Each case runs SECONDS, ROUNDS times, the cases alternating; the table
 * pools each case's rounds.  The busy process spins in a session of its own
 * at nice 10 with its autogroup at nice 10, as a dedup_ext worker runs, then
 * as the case says.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

typedef enum Busy
{
	BUSY_NONE,					/* no busy process */
	BUSY_PINNED,				/* none, and the workload on one CPU */
	BUSY_NICE10,
	BUSY_NICE19,
	BUSY_IDLE,					/* SCHED_IDLE */
	BUSY_SLICE_SHORT,			/* a 0.1 ms time slice (Linux 6.12+) */
	BUSY_SLICE_LONG,			/* a 20 ms time slice */
	BUSY_HALF					/* busy 1 ms, asleep 1 ms */
} Busy;

static const char *const busy_names[] = {
	"none", "none, workload on one CPU", "nice 10 (a worker's default)", "nice 19",
	"SCHED_IDLE", "time slice 0.1 ms", "time slice 20 ms", "busy half the time"
};
#define NCASES ((int) (sizeof(busy_names) / sizeof(busy_names[0])))

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

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void
spin_us(double us)
{
	double		t0 = now_us();

	while (now_us() - t0 < us)
		;
}

static void
set_slice(double ms)
{
	struct kernel_sched_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.sched_policy = SCHED_OTHER;
	attr.sched_nice = getpriority(PRIO_PROCESS, 0);
	attr.sched_runtime = (uint64_t) (ms * 1e6);
	if (syscall(SYS_sched_setattr, 0, &attr, 0) != 0)
		perror("sched_setattr");
}

static void
set_nice(int nice)
{
	FILE	   *autogroup;

	setpriority(PRIO_PROCESS, 0, nice);
	autogroup = fopen("/proc/self/autogroup", "w");
	if (autogroup)
	{
		fprintf(autogroup, "%d", nice);
		fclose(autogroup);
	}
}

static void
busy_main(Busy busy)
{
	struct sched_param param = {0};

	setsid();
	set_nice(busy == BUSY_NICE19 ? 19 : 10);
	if (busy == BUSY_IDLE && sched_setscheduler(0, SCHED_IDLE, &param) != 0)
		perror("sched_setscheduler");
	if (busy == BUSY_SLICE_SHORT)
		set_slice(0.1);
	if (busy == BUSY_SLICE_LONG)
		set_slice(20);
	for (;;)
	{
		spin_us(1000);
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
		spin_us(work_us);
		if (write(sock, &c, 1) != 1)
			break;
	}
	_exit(0);
}

static void
client_main(int sock, int id, int seconds, int work_us, int out)
{
	unsigned	seed = id + 1;
	double		end = now_us() + seconds * 1e6;
	char		c = 'x';

	while (now_us() < end)
	{
		struct timespec pause = {0, (500 + rand_r(&seed) % 4000) * 1000L};
		double		t0,
					latency;

		nanosleep(&pause, NULL);
		t0 = now_us();
		if (write(sock, &c, 1) != 1 || read(sock, &c, 1) != 1)
			break;
		latency = now_us() - t0 - work_us;
		if (write(out, &latency, sizeof(latency)) != sizeof(latency))
			break;
	}
	_exit(0);
}

typedef struct Latencies
{
	double	   *v;
	int			n;
	int			cap;
} Latencies;

/* one case for SECONDS: its latencies are added to lat */
static void
run_case(Busy busy, int seconds, int pairs, int work_us, Latencies *lat)
{
	pid_t		busy_pid = 0;
	int			results[2];
	double		latency;
	cpu_set_t	one_cpu;

	if (busy >= BUSY_NICE10 && (busy_pid = fork()) == 0)
		busy_main(busy);
	if (pipe(results) != 0)
		exit(1);
	CPU_ZERO(&one_cpu);
	CPU_SET(0, &one_cpu);
	for (int p = 0; p < pairs; p++)
	{
		int			sv[2];

		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
			exit(1);
		if (fork() == 0)
		{
			/* the server holds no end its client or the parent waits on */
			close(sv[0]);
			close(results[0]);
			close(results[1]);
			if (busy == BUSY_PINNED)
				sched_setaffinity(0, sizeof(one_cpu), &one_cpu);
			server_main(sv[1], work_us);
		}
		if (fork() == 0)
		{
			close(sv[1]);
			close(results[0]);
			if (busy == BUSY_PINNED)
				sched_setaffinity(0, sizeof(one_cpu), &one_cpu);
			client_main(sv[0], p, seconds, work_us, results[1]);
		}
		close(sv[0]);
		close(sv[1]);
	}
	close(results[1]);
	while (read(results[0], &latency, sizeof(latency)) == sizeof(latency))
	{
		if (lat->n == lat->cap)
		{
			lat->cap = lat->cap ? lat->cap * 2 : 65536;
			lat->v = realloc(lat->v, lat->cap * sizeof(double));
		}
		lat->v[lat->n++] = latency;
	}
	close(results[0]);
	if (busy_pid)
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

int
main(int argc, char **argv)
{
	int			seconds,
				rounds,
				pairs,
				work_us;
	Latencies	lat[NCASES];
	double		p99_none;

	if (argc != 5)
	{
		fprintf(stderr, "usage: %s SECONDS ROUNDS PAIRS WORK_US\n", argv[0]);
		return 2;
	}
	seconds = atoi(argv[1]);
	rounds = atoi(argv[2]);
	pairs = atoi(argv[3]);
	work_us = atoi(argv[4]);
	if (pairs < 1 || pairs > 64)
	{
		fprintf(stderr, "PAIRS must be 1 to 64\n");
		return 2;
	}
	memset(lat, 0, sizeof(lat));
	for (int r = 0; r < rounds; r++)
		for (int c = 0; c < NCASES; c++)
			run_case((Busy) c, seconds, pairs, work_us, &lat[c]);

	printf("| busy process | requests | p50 us | p90 us | p99 us | p99.9 us | p99 / none |\n");
	printf("|---|---|---|---|---|---|---|\n");
	for (int c = 0; c < NCASES; c++)
	{
		qsort(lat[c].v, lat[c].n, sizeof(double), cmp_double);
		if (c == BUSY_NONE)
			p99_none = quantile(&lat[c], 0.99);
		printf("| %s | %d | %.0f | %.0f | %.0f | %.0f | %.2fx |\n", busy_names[c], lat[c].n,
			   quantile(&lat[c], 0.5), quantile(&lat[c], 0.9), quantile(&lat[c], 0.99),
			   quantile(&lat[c], 0.999), quantile(&lat[c], 0.99) / p99_none);
	}
	return 0;
}

/*
 * cpu_yield.c
 *		A background worker gives its CPU to the processes waiting for one.
 *
 * A job's long CPU-bound stretch (hashing every row's key, sorting the
 * hashes) keeps a CPU busy.  A backend that wakes up (its client sent a
 * query, its lock was released) on a machine whose CPUs are all taken waits
 * until the scheduler takes one from a running process, and the kernel does
 * that at a time slice's end or a scheduler tick (4 ms at HZ=250), whatever
 * the worker's priority: nice, autogroup nice, SCHED_IDLE, SCHED_BATCH and
 * a short custom slice were measured and moved the application's p99 little
 * or made it worse (README, "Background jobs: benchmark").
 *
 * So the worker looks itself.  The fourth field of /proc/loadavg counts the
 * runnable tasks of the machine, the worker included: more than there are
 * CPUs means one is waiting.  Every 50 us of work (cpu_yield_point, called
 * from the loops of a pass) the worker reads it (about 1 us), and while
 * someone waits it sleeps, 100 us at a time and at most 1 ms in a row, so
 * that on a machine that never idles it still works a twentieth of the
 * time.  Waking up, it looks again before it goes on.
 *
 * Only the loops of a background worker yield, and only where the worker
 * holds no lock a writer could wait for (a pass holds an AccessShareLock on
 * the table, and a batch's row locks are never held across a yield).  A
 * backend never yields: a foreground call is what its session waits for.
 * Without /proc/loadavg (not Linux) nothing yields.
 */
#include "dedup_ext.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "miscadmin.h"

#define POLL_EVERY_NS	(50 * 1000)
#define SLEEP_US		100
#define MAX_SLEEPS		10

int			cpu_yield_calls = 0;	/* countdown to the next clock reading;
									 * 0: never yield */

static int	loadavg_fd = -1;
static long ncpus;
static int64 last_poll_ns;
static int64 yields;
static int64 slept_us;

static int64
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/*
 * Background workers: yield from now on, if dedup_ext.worker_yield is on and
 * the kernel counts runnable tasks.
 */
void
cpu_yield_start(void)
{
	if (!dedup_worker_yield)
		return;
	ncpus = sysconf(_SC_NPROCESSORS_ONLN);
	loadavg_fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
	if (loadavg_fd < 0 || ncpus < 1)
		return;
	last_poll_ns = now_ns();
	cpu_yield_calls = CPU_YIELD_STRIDE;
}

/* does a task wait for a CPU? (runnable tasks, this one included, > CPUs) */
static bool
cpu_wanted(void)
{
	char		buf[128];
	ssize_t		n = pread(loadavg_fd, buf, sizeof(buf) - 1, 0);
	char	   *slash;
	char	   *p;

	if (n <= 0)
		return false;
	buf[n] = '\0';
	/* "0.52 0.58 0.59 3/1234 5678": runnable/all after the third space */
	slash = strchr(buf, '/');
	if (slash == NULL)
		return false;
	for (p = slash; p > buf && p[-1] != ' '; p--)
		;
	return strtol(p, NULL, 10) > ncpus;
}

/* sleep while a task waits for a CPU, up to MAX_SLEEPS naps */
void
cpu_yield_now(void)
{
	if (loadavg_fd < 0)
		return;
	for (int i = 0; i < MAX_SLEEPS && cpu_wanted(); i++)
	{
		pg_usleep(SLEEP_US);
		slept_us += SLEEP_US;
		if (i == 0)
			yields++;
	}
	CHECK_FOR_INTERRUPTS();
}

/* cpu_yield_point's slow path: every POLL_EVERY_NS of work, look */
void
cpu_yield_check(void)
{
	int64		t = now_ns();

	cpu_yield_calls = CPU_YIELD_STRIDE;
	if (t - last_poll_ns < POLL_EVERY_NS)
		return;
	cpu_yield_now();
	last_poll_ns = now_ns();
}

/* what yielding cost so far, for the job's log line; then from zero */
void
cpu_yield_report(int64 *count, int64 *ms)
{
	*count = yields;
	*ms = slept_us / 1000;
	yields = 0;
	slept_us = 0;
}

/*
 * cpu_yield.c
 *		A background worker's pass gives its CPU to the processes waiting
 *		for one.
 *
 * A pass's key hashing and sorting keep a CPU busy for seconds.  On the
 * benchmark's two-CPU machine the application's p99 latency grew by about
 * as much with any busy process beside it, whatever its priority: nice 19,
 * autogroup nice, SCHED_BATCH, a short custom time slice did not help, and
 * SCHED_IDLE (which would starve a worker that holds locks) made it worse
 * under autogroup scheduling (README, "Benchmarks", "Background dedup under
 * a write workload").  What helped was the busy process looking itself.
 *
 * The fourth field of /proc/loadavg counts the runnable tasks of the
 * machine, the worker included: more than there are CPUs means one is
 * waiting.  Every 50 us (wall clock, read every CPU_YIELD_STRIDE calls from
 * the pass's loops) the worker reads it (about 1 us), and while someone
 * waits it sleeps, 100 us at a time and at most ten times in a row.  The count is the
 * machine's: in a container limited by a CPU quota or a cpuset the worker
 * also gives way to other containers' processes, and does not see its own
 * container's limit.
 *
 * Yielding is armed around the statement of a pass only (batch.c's
 * scan_step), where the worker holds an AccessShareLock on the table, the
 * pass's snapshot and an exclusive lock on its own work table, and no row
 * lock: a batch's row locks are never held across a nap.  A backend never
 * yields: a foreground call is what its session waits for.  Without
 * /proc/loadavg (not Linux) nothing yields.
 */
#include "dedup_ext.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/wait_event.h"

#define POLL_EVERY_NS	(50 * 1000)
#define NAP_US			100
#define MAX_NAPS		10

int			cpu_yield_calls = 0;	/* countdown to the next clock reading;
									 * 0: not armed */

static int	loadavg_fd = -1;
static long ncpus;
static int64 last_poll_ns;
static int64 yields;
static int64 slept_ns;

static int64
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void
close_loadavg(void)
{
	close(loadavg_fd);
	ReleaseExternalFD();
	loadavg_fd = -1;
}

/* /proc/loadavg, opened once a worker yields at all; false without it */
static bool
open_loadavg(void)
{
	static bool tried = false;

	if (loadavg_fd >= 0 || tried)
		return loadavg_fd >= 0;
	tried = true;
	ncpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (ncpus < 1 || !AcquireExternalFD())
		return false;
	loadavg_fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
	if (loadavg_fd < 0)
		ReleaseExternalFD();
	return loadavg_fd >= 0;
}

/* in a background worker with dedup_ext.worker_yield on, and the count at hand */
static bool
may_yield(void)
{
	return IsBackgroundWorker && dedup_worker_yield && open_loadavg();
}

/* does a task wait for a CPU? (runnable tasks, this one included, > CPUs) */
static bool
cpu_wanted(void)
{
	char		buf[128];
	ssize_t		n = pread(loadavg_fd, buf, sizeof(buf) - 1, 0);
	char	   *slash;
	char	   *p;

	buf[Max(n, 0)] = '\0';
	/* "0.52 0.58 0.59 3/1234 5678": runnable/all after the third space */
	slash = strchr(buf, '/');
	if (slash == NULL)
	{
		/* not the file this was written for: stop looking */
		close_loadavg();
		return false;
	}
	for (p = slash; p > buf && p[-1] != ' '; p--)
		;
	return strtol(p, NULL, 10) > ncpus;
}

/*
 * Sleep while a task waits for a CPU, at most MAX_NAPS naps.  In a worker
 * with dedup_ext.worker_yield on, between statements (before a batch) or
 * from an armed pass; elsewhere it does nothing.
 */
void
cpu_yield_now(void)
{
	int64		start;
	int			naps;

	if (!may_yield())
		return;
	start = now_ns();
	for (naps = 0; naps < MAX_NAPS && loadavg_fd >= 0 && cpu_wanted(); naps++)
	{
		pgstat_report_wait_start(PG_WAIT_EXTENSION);
		pg_usleep(NAP_US);
		pgstat_report_wait_end();
		CHECK_FOR_INTERRUPTS();
	}
	last_poll_ns = now_ns();
	if (naps > 0)
	{
		yields++;
		slept_ns += last_poll_ns - start;
	}
}

/* a pass's statement starts: its loops call cpu_yield_point */
void
cpu_yield_arm(void)
{
	if (!may_yield())
		return;
	last_poll_ns = now_ns();
	cpu_yield_calls = CPU_YIELD_STRIDE;
}

/* and ends, whatever happened */
void
cpu_yield_disarm(void)
{
	cpu_yield_calls = 0;
}

/* cpu_yield_point's slow path: every POLL_EVERY_NS, look */
void
cpu_yield_check(void)
{
	cpu_yield_calls = CPU_YIELD_STRIDE;
	if (now_ns() - last_poll_ns >= POLL_EVERY_NS)
		cpu_yield_now();
}

/* what yielding cost so far, for the job's log line; then from zero */
void
cpu_yield_report(int64 *count, int64 *ms)
{
	*count = yields;
	*ms = slept_ns / 1000000;
	yields = 0;
	slept_ns = 0;
}

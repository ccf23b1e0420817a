/*
 * cpu_yield.c
 *		A background worker gives its CPU to the processes waiting for one.
 *
 * A pass's key hashing and sorting keep a CPU busy for seconds.  On the
 * benchmark's two-CPU machine the application's p99 latency grew by about
 * as much with any busy process beside it, whatever its priority: nice 19,
 * autogroup nice, SCHED_BATCH, a short custom time slice did not help, and
 * SCHED_IDLE (which would starve a worker that holds locks) made it worse
 * under autogroup scheduling (bench/HISTORY.md, "What the p99 is made of").
 * What helped a busy loop was looking itself.
 *
 * It is off by default (dedup_ext.worker_yield): in the benchmark, with
 * rounds alternating on and off in the same hour (bench/background.sh
 * --alternate), a job that looked took a fifth to a quarter longer, and the
 * application's p99 beside it was no lower (README, "Benchmarks").
 *
 * The fourth field of /proc/loadavg counts the runnable tasks of the
 * machine, the worker included: more than there are CPUs means one is
 * waiting.  Every 50 us (wall clock, read every CPU_YIELD_STRIDE calls of
 * cpu_yield_point) the worker reads it (about 1 us), and while someone
 * waits it sleeps, 100 us at a time and at most ten times in a row.  The
 * count is the machine's: in a container limited by a CPU quota or a cpuset
 * the worker also gives way to other containers' processes, and does not
 * see its own container's limit.
 *
 * cpu_yield_point is called from the pass's own loops (key hashing, sorting)
 * and, through an executor hook, each time a plan node of a statement the
 * worker runs is asked for a row: the window over a pass's candidates and
 * the batches are SQL, and batches that did not yield slowed the application
 * six times as often as the pass around them, which did (bench/HISTORY.md).
 * Yielding is armed around the statement of a pass (batch.c's scan_step),
 * which holds no row lock, and around a batch (a dedup's, or a backfill's
 * linking batch), which does: a writer that wants one of its rows waits for
 * its commit.  So a batch naps no longer in all than it has run on a CPU
 * (its waits for locks or for a CPU do not count), and not at all while a
 * writer waits for one of its rows (a session waiting for the table's lock,
 * as DDL does, is not seen).
 * A nap inside a scan keeps the scan's current page pinned, as any pause
 * between two rows does.  A backend never yields: a foreground call is what
 * its session waits for.  Without /proc/loadavg (not Linux) nothing yields.
 */
#include "dedup_ext.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "access/xact.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "storage/fd.h"
#include "storage/lock.h"
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

/* armed for a batch: its naps may not outlast its CPU time */
static bool bounded;
static int64 armed_cpu_ns;
static int64 armed_slept_ns;
static int64 batches_slept_ns;
static int64 batches_cpu_ns;
static int64 naps_for_waiters;	/* times a batch did not nap: a writer waited */

static ExecutorStart_hook_type prev_executor_start = NULL;

static int64
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* the CPU time this process has used */
static int64
cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
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
 * Does a process wait for this transaction: for a row it locked, deleted or
 * changed?  Such a writer waits on the transaction's own lock.
 */
static bool
someone_waits_for_us(void)
{
	TransactionId xid = GetTopTransactionIdIfAny();
	LOCKTAG		tag;

	if (!TransactionIdIsValid(xid))
		return false;
	SET_LOCKTAG_TRANSACTION(tag, xid);
	return LockHasWaiters(&tag, ExclusiveLock, false);
}

/*
 * Sleep while a task waits for a CPU, at most MAX_NAPS naps.  In a worker
 * with dedup_ext.worker_yield on, between statements (before a batch) or
 * from an armed pass or batch; elsewhere it does nothing.
 */
void
cpu_yield_now(void)
{
	int64		start;
	int64		now;
	int			naps;

	if (!may_yield())
		return;
	start = now = now_ns();
	for (naps = 0; naps < MAX_NAPS && loadavg_fd >= 0; naps++)
	{
		/* a batch's naps: no longer in all than its CPU time so far */
		if (bounded && armed_slept_ns + now - start >= cpu_ns() - armed_cpu_ns)
			break;
		if (!cpu_wanted())
			break;
		if (bounded && someone_waits_for_us())
		{
			naps_for_waiters++;
			break;
		}
		pgstat_report_wait_start(PG_WAIT_EXTENSION);
		pg_usleep(NAP_US);
		pgstat_report_wait_end();
		CHECK_FOR_INTERRUPTS();
		now = now_ns();
	}
	last_poll_ns = now_ns();
	if (naps > 0)
	{
		yields++;
		slept_ns += last_poll_ns - start;
		armed_slept_ns += last_poll_ns - start;
	}
}

/*
 * A pass's statement or a batch starts: from now on cpu_yield_point looks.
 * holds_row_locks: a batch, whose naps may not outlast its CPU time.
 */
void
cpu_yield_arm(bool holds_row_locks)
{
	if (!may_yield())
		return;
	last_poll_ns = now_ns();
	armed_cpu_ns = cpu_ns();
	armed_slept_ns = 0;
	bounded = holds_row_locks;
	cpu_yield_calls = CPU_YIELD_STRIDE;
}

/* and ends, whatever happened */
void
cpu_yield_disarm(void)
{
	if (cpu_yield_calls > 0 && bounded)
	{
		batches_slept_ns += armed_slept_ns;
		batches_cpu_ns += cpu_ns() - armed_cpu_ns;
	}
	cpu_yield_calls = 0;
	bounded = false;
}

/* cpu_yield_point's slow path: every POLL_EVERY_NS, look */
void
cpu_yield_check(void)
{
	cpu_yield_calls = CPU_YIELD_STRIDE;
	if (now_ns() - last_poll_ns >= POLL_EVERY_NS)
		cpu_yield_now();
}

/*
 * A plan node's ExecProcNode while the worker may yield.  ExecProcNodeReal
 * is still the node's own function: only ExecProcNode, through which every
 * caller asks a node for its next row, is replaced.
 */
static TupleTableSlot *
exec_yielding(PlanState *node)
{
	cpu_yield_point();
	return node->ExecProcNodeReal(node);
}

/* its first call, as the executor's own first call checks the stack's depth once */
static TupleTableSlot *
exec_yielding_first(PlanState *node)
{
	check_stack_depth();
	node->ExecProcNode = exec_yielding;
	return exec_yielding(node);
}

/*
 * Every node of a plan, subplans included.  A node with instrumentation
 * (EXPLAIN ANALYZE, auto_explain) keeps the executor's own route to it.
 */
static bool
yield_in_node(PlanState *node, void *context)
{
	if (node == NULL)
		return false;
	if (node->instrument == NULL)
		node->ExecProcNode = exec_yielding_first;
	return planstate_tree_walker(node, yield_in_node, context);
}

static void
yielding_executor_start(QueryDesc *queryDesc, int eflags)
{
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
	if ((eflags & EXEC_FLAG_EXPLAIN_ONLY) || !may_yield())
		return;
	/* a CTE's plan (a batch's DELETE ... RETURNING) is an initPlan: walked */
	yield_in_node(queryDesc->planstate, NULL);
}

/* in a worker, once: its statements' plan nodes call cpu_yield_point */
void
cpu_yield_hook_executor(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = yielding_executor_start;
}

/*
 * What yielding cost so far, for the job's log line: the naps, and those of
 * the batches against the batches' CPU time; then from zero.
 */
void
cpu_yield_report(CpuYieldReport *report)
{
	report->naps = yields;
	report->slept_ms = slept_ns / 1000000;
	report->batches_slept_ms = batches_slept_ns / 1000000;
	report->batches_cpu_ms = batches_cpu_ns / 1000000;
	report->naps_for_waiters = naps_for_waiters;
	yields = 0;
	slept_ns = 0;
	batches_slept_ns = 0;
	batches_cpu_ns = 0;
	naps_for_waiters = 0;
}

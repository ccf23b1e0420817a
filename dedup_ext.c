/*
 * dedup_ext.c
 *		Module entry: settings, shared memory, the launcher.
 *
 * dedup_ext turns the hand-run runbooks for duplicate rows into SQL calls:
 * audit, preview, dedup by delete or rename with an archive, rollback, and a
 * unique index that keeps the duplicates from coming back.  The work itself
 * lives in src/, one file per concern.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include <limits.h>

#include "dedup_ext.h"

PG_MODULE_MAGIC;

int			dedup_batch_size = 10000;
int			dedup_batch_delay = 0;
int			dedup_lock_timeout = 1000;
int			dedup_max_workers = 2;
int			dedup_worker_nice = 10;
bool		dedup_wal_compression = false;
bool		dedup_worker_yield = false;
bool		dedup_worker_sched_idle = false;

void		_PG_init(void);

void
_PG_init(void)
{
	DefineCustomIntVariable("dedup_ext.batch_size",
							"Rows per committed batch in background jobs.",
							NULL, &dedup_batch_size, 10000, 1, INT_MAX,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dedup_ext.batch_delay",
							"Pause between batches of background jobs, to throttle them.",
							NULL, &dedup_batch_delay, 0, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("dedup_ext.lock_timeout",
							"Longest wait of a batch for a lock before it retries later.",
							NULL, &dedup_lock_timeout, 1000, 1, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("dedup_ext.max_workers",
							"Background workers running jobs at once.",
							NULL, &dedup_max_workers, 2, 0, 64,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("dedup_ext.worker_nice",
							"CPU priority (nice) of background workers: higher yields more CPU to the application.",
							NULL, &dedup_worker_nice, 10, 0, 19,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("dedup_ext.worker_yield",
							 "Background workers pause their passes and batches while other processes wait for a CPU.",
							 "Off by default: on the two-CPU machine it was measured on, it cost a background job a fifth of its speed and did not lower the application's latency.",
							 &dedup_worker_yield, false,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("dedup_ext.worker_sched_idle",
							 "Background workers run at the SCHED_IDLE scheduling policy (Linux): on CPU time no other process wants.",
							 "For a worker's whole life, its batches included: on a machine whose CPUs are all busy, a batch can then hold its rows' locks for long.",
							 &dedup_worker_sched_idle, false,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("dedup_ext.wal_compression",
							 "Background workers compress the full-page images their batches and index builds write to the WAL, when wal_compression is off.",
							 "PostgreSQL 15 and later, built with lz4 or zstd.",
							 &dedup_wal_compression, false,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	MarkGUCPrefixReserved("dedup_ext");

	progress_init();
	/* preloaded: resume background jobs after every server start */
	if (process_shared_preload_libraries_in_progress)
		launcher_register();
}

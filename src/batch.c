/*
 * batch.c
 *		dedup_table in the background: the job in committed batches, while
 *		other sessions keep writing the table.
 *
 * A job goes through these phases, each change of phase committed with the
 * work that led to it, so a worker that stops anywhere resumes exactly where
 * the last commit left it:
 *
 *   scanning   one read-only pass over the table (ACCESS SHARE: writers go on)
 *              lists every loser with its group's survivor, by ctid and
 *              primary key, in a work table numbered 1..n in the survivors'
 *              ctid order, so that a batch works on one stretch of the heap;
 *   deleting / renaming / merging
 *              batches of batch_size work rows, each one transaction that
 *              locks the batch's survivors (FOR SHARE) and, renaming or
 *              merging, its losers (FOR UPDATE; a DELETE locks its own),
 *              removes or renames the losers that still have their
 *              survivor's key (a merge first re-points the rows that
 *              reference them), archives them, and records the checkpoint
 *              and the counters in the job's row in the same commit;
 *   scanning   again: rows written during the pass may have made new
 *              duplicates, and the batches skipped losers whose survivor
 *              changed (in the first pass, also those changed themselves:
 *              see id_match); passes repeat until one finds no duplicate;
 *   building unique index
 *              (add_unique, instead of the last scan: see after_batches)
 *              CREATE UNIQUE INDEX CONCURRENTLY, which never blocks
 *              writers; if a writer made a duplicate in the meantime it
 *              fails, and another pass runs; its invalid index is dropped,
 *              or kept until the job ends to refuse writers' duplicates
 *              meanwhile (guard.c), which lets the job converge.
 *
 * A batch never holds a lock on the table stronger than ROW EXCLUSIVE, and
 * only the rows of one batch are locked, for the duration of the batch.
 */
#include "dedup_ext.h"

#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

/*
 * A job whose passes keep finding duplicates gives up after this many
 * passes, and not before they have been finding them for a minute since
 * the scan of its run's first pass ended: on a small table 25 passes take
 * a second, too short to tell writers that keep making duplicates from a
 * burst.
 */
#define MAX_PASSES 25
#define PASS_LIMIT_MIN_MS (60 * 1000)

static const char *
batch_phase(BgJob *job)
{
	switch (job->action)
	{
		case DEDUP_ACTION_RENAME:
			return "renaming";
		case DEDUP_ACTION_MERGE:
			return "merging";
		default:
			return "deleting";
	}
}

/* does id_match match rows by ctid? */
static bool
by_ctid(BgJob *job)
{
	return job->t->npk == 0 || job->passes <= 1;
}

/*
 * The name a batch's survivor subquery gives the survivor's ctid, beside
 * the table's own columns (r.*): one none of them has.
 */
static const char *
survivor_ctid_name(DedupTarget *t)
{
	const char *name = "dedup_sctid";

	for (int i = 1; get_attnum(t->relid, name) != InvalidAttrNumber; i++)
		name = psprintf("dedup_sctid%d", i);
	return name;
}

/*
 * The work row's loser (or survivor) is row a: r.id = w.dedup_p0 AND ...
 * (ctid: the column of a that holds its ctid).
 *
 * In the first pass's batches, also r.ctid = w.dedup_ctid: each row is one
 * heap fetch (a TID scan) instead of an index descent, which halves a
 * batch's time and so how long its rows stay locked.  A row updated before
 * the statement began has a new ctid and is not found: its loser is left to
 * the next pass.  So is one updated while the statement waits for it, when
 * the statement reads its rows by lists (by_lists: the ctid match is a hash
 * join's, checked again against the new version); otherwise the new version
 * is checked again by key against the locked survivor.  Later passes have
 * few rows and match them by primary key alone, whatever their ctid now: a
 * row updated more often than a pass lasts would otherwise be left to the
 * next pass forever (one updated while the statement waits is checked
 * again, in its new version, by key against the locked survivor).  Without
 * a primary key the ctid is all there is.
 */
static char *
id_match(BgJob *job, const char *a, const char *ctid, bool survivor)
{
	DedupTarget *t = job->t;
	StringInfoData buf;

	initStringInfo(&buf);
	if (by_ctid(job))
		appendStringInfo(&buf, "%s.%s OPERATOR(pg_catalog.=) w.%s", a, ctid,
						 survivor ? "dedup_qctid" : "dedup_ctid");
	for (int i = 0; i < t->npk; i++)
		appendStringInfo(&buf, "%s%s.%s %s w.dedup_%c%d", buf.len > 0 ? " AND " : "", a,
						 t->pk[i].quoted, t->pk[i].eq_sql, survivor ? 'q' : 'p', i);
	return buf.data;
}

static char *
work_range(BgJob *job, int64 from, int64 to)
{
	return psprintf("w.dedup_seq OPERATOR(pg_catalog.>) %lld AND w.dedup_seq OPERATOR(pg_catalog.<=) %lld",
					(long long) from, (long long) to);
}

/*
 * col = ANY (the batch's losers' or survivors' ctids): with it, and planned
 * without nested loops (spi_exec_count_no_nestloop), a batch's statement
 * reads its rows by one TID scan over a sorted list.  Matched by id_match's
 * ctid equality alone, each row was found by a TID scan run again for every
 * work row, each run asking the kernel for the table's size (28% of a
 * batch's CPU time in a profile on the benchmark's machine); and a table of
 * up to a few million rows was read whole by every batch, into a hash
 * join, while the batch held its rows' locks.  With the list but nested
 * loops allowed, the planner prices one scan of the list and a scan per row
 * alike and, since it counts 10 elements in an ARRAY(SELECT ...), may test
 * each row against the whole list instead.  EvalPlanQual does not check a
 * TID scan's condition again for a row updated meanwhile: the ctid equality
 * must stay.
 */
static char *
batch_tids(BgJob *job, const char *range, const char *col, bool survivors)
{
	return psprintf("%s OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT w.%s FROM %s w WHERE %s))",
					col, survivors ? "dedup_qctid" : "dedup_ctid", job->work, range);
}

/*
 * Does the batch's delete (or merge map) read its rows by lists?  Not with a
 * filter that is not immutable: it may read other tables, and planned
 * without nested loops its semi-join could hash a whole table every batch.
 * The lock statements have no filter, and always do when by_ctid.
 */
static bool
by_lists(BgJob *job)
{
	return by_ctid(job) && (job->t->filter_text == NULL || job->t->filter_immutable);
}

/* a batch's statement, planned without nested loops when it reads lists */
static int64
batch_exec(bool lists, const char *sql, int expected)
{
	return lists ? spi_exec_count_no_nestloop(sql, expected) : spi_exec_count(sql, expected);
}

/* the columns of a work row, from the ranked pass (sql_ranked) */
static char *
work_columns(DedupTarget *t)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, ", pg_catalog.first_value(r.ctid) OVER dedup_w AS dedup_qctid");
	for (int i = 0; i < t->npk; i++)
		appendStringInfo(&buf, ", r.%s AS dedup_p%d, pg_catalog.first_value(r.%s) OVER dedup_w AS dedup_q%d",
						 t->pk[i].quoted, i, t->pk[i].quoted, i);
	if (t->rename_key >= 0)
		appendStringInfoString(&buf, sql_rename_cols(t));
	return buf.data;
}

static char *
work_select_list(DedupTarget *t, const char *alias)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "%s.dedup_ctid, %s.dedup_qctid", alias, alias);
	for (int i = 0; i < t->npk; i++)
		appendStringInfo(&buf, ", %s.dedup_p%d, %s.dedup_q%d", alias, i, alias, i);
	return buf.data;
}

/*
 * The first step: check the table again as the submitter, create the work
 * table (owned by the submitter, in dedup_archive), and start the first pass.
 *
 * The work table is unlogged.  A pass writes its whole list at once, at its
 * end (100,000 losers: 10 MB), and with a logged table that WAL went to disk
 * with the next commit of any session: beside the benchmark's write workload,
 * a session inserting 100,000 rows at a time took the workload's p99 from
 * 0.64 to 44 ms (bench/neighbours.sh, bench/HISTORY.md).  The list is
 * the job's to recompute: a crash empties it, and the resumed job makes a
 * new pass (pass_rows_step); the batches it committed are in the table and
 * the archive, which are logged.
 */
static void
prepare_step(BgJob *job, void *arg)
{
	DedupTarget *t = job->t;
	MemoryContext oldcxt;
	char	   *work;

	dedup_check_owner(t->relid);
	work = archive_name(t->relname, job->job_id, "work");
	spi_exec_as_owner(psprintf("CREATE UNLOGGED TABLE %s AS SELECT 0::pg_catalog.int8 AS dedup_seq, %s%s FROM (%s) s WITH NO DATA",
							   work, work_select_list(t, "s"),
							   t->rename_key >= 0 ? ", NULL::pg_catalog.text AS dedup_cand" : "",
							   sql_ranked(t, work_columns(t))),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	spi_exec_as_owner(psprintf("ALTER TABLE %s ADD PRIMARY KEY (dedup_seq)", work),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	spi_exec_as_owner(psprintf("COMMENT ON TABLE %s IS %s", work,
							   sql_literal(psprintf("dedup_ext: work list of background job %lld, dropped when it ends",
													(long long) job->job_id))),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	spi_exec_as_owner(psprintf("ALTER TABLE %s OWNER TO %s", work,
							   quote_identifier(GetUserNameFromId(job->submitter, false))),
					  0, NULL, NULL, NULL, SPI_OK_UTILITY);
	bg_record(job, psprintf("phase = 'scanning', work_table = %s", sql_literal(work)));
	oldcxt = MemoryContextSwitchTo(job->cxt);
	job->work = pstrdup(work);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * The candidates of a pass, when the job's filter (if any) takes a row or
 * not by its own columns alone: the first pass this worker runs remembers its
 * key hashes, the later ones hash only the rows changed since, and the
 * losers the work table still lists (a batch may have skipped them, and
 * they may still be duplicates); see candidates.c.
 */
static void
arm_candidates(BgJob *job)
{
	int64		n = 0;
	int64		allocated = 1024;
	ItemPointerData *losers;
	Portal		portal;

	if (!candidates_remembered(job->t->relid))
	{
		candidates_remember_next(job->t->relid, job->cxt);
		return;
	}

	/* by chunks: 6 bytes a loser here, where a result set would take ten times that */
	losers = palloc(allocated * sizeof(ItemPointerData));
	portal = SPI_cursor_open_with_args(NULL, psprintf("SELECT w.dedup_ctid FROM %s w", job->work),
									   0, NULL, NULL, NULL, true, 0);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 10000);
		if (SPI_processed == 0)
			break;
		if (n + (int64) SPI_processed > allocated)
		{
			allocated = Max(allocated * 2, n + (int64) SPI_processed);
			losers = repalloc_huge(losers, allocated * sizeof(ItemPointerData));
		}
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull)
				losers[n++] = *(ItemPointer) DatumGetPointer(d);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	candidates_confirm_next(job->t->relid, losers, n);
}

/* One pass: list the losers and their survivors in the work table. */
static void
scan_step(BgJob *job, void *arg)
{
	DedupTarget *t = job->t;
	volatile int64 n;
	int64		groups;
	const char *next;

	dedup_check_owner(t->relid);
	/*
	 * One statement: the candidates and the window see one snapshot.  The
	 * plan is this step's (its strings live in the step's memory), and made
	 * under the lock the statement will hold anyway.
	 */
	LockRelationOid(t->relid, AccessShareLock);
	/*
	 * Estimated once a run, in its first pass: a sample reads every page,
	 * and a later pass only the pages that changed.
	 */
	if (job->loser_share < 0)
		job->loser_share = estimated_loser_share(t, false, true);
	dedup_target_plan_candidates(t, job->loser_share);
	PG_TRY();
	{
		if (t->candidates_fn && (t->filter_text == NULL || t->filter_immutable))
			arm_candidates(job);
		cpu_yield_arm(false);
		spi_exec_count(psprintf("TRUNCATE %s", job->work), SPI_OK_UTILITY);
		/*
		 * a heap scan (the window's over every row, or the candidates' when
		 * they are not remembered) prunes the pages it reads, of rows the
		 * last pass's batches deleted, and pruning a page writes an image of
		 * it after a checkpoint; the remembered passes' page walk does not
		 * prune (see candidates.c)
		 */
		bg_compress_wal(true);
		if (t->rename_key < 0)
			n = spi_exec_count(psprintf("INSERT INTO %s SELECT pg_catalog.row_number()"
										" OVER (ORDER BY s.dedup_qctid, s.dedup_ctid), %s"
										" FROM (%s) s WHERE s.dedup_rn OPERATOR(pg_catalog.>) 1",
										job->work, work_select_list(t, "s"),
										sql_ranked_dups(t, work_columns(t))),
							   SPI_OK_INSERT);
		else
			/* each loser with its new name, free in the whole table */
			n = spi_exec_count(psprintf("WITH RECURSIVE dedup_l AS (SELECT * FROM (%s) s"
										" WHERE s.dedup_rn OPERATOR(pg_catalog.>) 1), %s"
										" INSERT INTO %s SELECT pg_catalog.row_number()"
										" OVER (ORDER BY l.dedup_qctid, l.dedup_ctid), %s, f.dedup_cand"
										" FROM dedup_l l JOIN dedup_f f ON f.dedup_ctid OPERATOR(pg_catalog.=) l.dedup_ctid",
										sql_ranked_dups(t, work_columns(t)), sql_rename_ctes(t, "dedup_l"),
										job->work, work_select_list(t, "l")),
							   SPI_OK_INSERT);
	}
	PG_FINALLY();
	{
		/*
		 * armed for this statement only, whatever happened; the function's
		 * name lives in the step's memory
		 */
		candidates_disarm();
		cpu_yield_disarm();
		t->candidates_fn = NULL;
	}
	PG_END_TRY();
	bg_compress_wal(false);
	if (t->rename_key >= 0)
	{
		spi_exec_count(psprintf("SELECT (SELECT pg_catalog.count(*) FROM %s w WHERE w.dedup_cand IS NULL),"
								" (SELECT w.dedup_cand FROM %s w GROUP BY w.dedup_cand"
								"  HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1 LIMIT 1)",
								job->work, job->work),
					   SPI_OK_SELECT);
		rename_refusals(t, spi_get_int64(0, 1),
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
	}
	spi_exec_count(psprintf("ANALYZE %s", job->work), SPI_OK_UTILITY);
	spi_exec_count(psprintf("SELECT pg_catalog.count(DISTINCT w.dedup_qctid) FROM %s w", job->work),
				   SPI_OK_SELECT);
	groups = spi_get_int64(0, 1);

	if (job->first_scan_ended == 0)
		job->first_scan_ended = GetCurrentTimestamp();
	else if (n > 0 && job->passes + 1 >= MAX_PASSES &&
			 TimestampDifferenceExceeds(job->first_scan_ended, GetCurrentTimestamp(), PASS_LIMIT_MIN_MS))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("duplicates in %s keep coming back after %d passes", t->qualname, job->passes + 1),
				 errdetail("Writers add duplicates as fast as the job removes them, or a BEFORE trigger on the table skips some losers' delete or rename; the batches done so far stay done."),
				 job->add_unique ?
				 errhint("Stop the writer that makes them (or disable the trigger for the job), then run the job again.") :
				 errhint("Stop the writer that makes them (or disable the trigger for the job), or run with add_unique => true, then run the job again.")));
	if (n > 0)
		next = batch_phase(job);
	else
		next = job->add_unique ? "building unique index" : "finishing";
	job->pass_rows = n;
	bg_record(job, psprintf("phase = '%s', checkpoint = 0, passes = passes OPERATOR(pg_catalog.+) 1,"
							" rows_total = rows_done OPERATOR(pg_catalog.+) %lld,"
							" duplicate_groups = COALESCE(duplicate_groups, 0) OPERATOR(pg_catalog.+) %lld",
							next, (long long) n, (long long) groups));
	job->pass_changed_from = job->rows_changed;
}

/*
 * After the last batch of a pass, whose statement changed the losers of
 * "changed" work rows: scan again, or, with add_unique, build the index at
 * once.  The index build is the check: it fails if a duplicate was written
 * meanwhile (and then a pass follows), so a second full scan would only
 * repeat the work of the build.  But if the pass's batches skipped losers
 * (their rows changed since the pass), or a resumed worker cannot tell, a
 * build would fail for certain: a pass comes first, and finds them.
 */
static const char *
after_batches(BgJob *job, int64 changed)
{
	bool		skipped = job->pass_changed_from < 0 ||
		job->rows_changed + changed - job->pass_changed_from < job->pass_rows;

	return job->add_unique && !skipped ? "building unique index" : "scanning";
}

/*
 * Lock the batch's survivors FOR SHARE, or its losers FOR UPDATE, in
 * primary-key order (ctid order without a primary key), read by their ctid
 * list when matched by ctid (batch_tids).
 */
static void
lock_rows(BgJob *job, const char *range, bool survivors)
{
	DedupTarget *t = job->t;
	char	   *rows;

	if (t->npk == 0)
		rows = batch_tids(job, range, "x.ctid", survivors);
	else
	{
		rows = psprintf("EXISTS (SELECT FROM %s w WHERE %s AND %s)", job->work, range,
						id_match(job, "x", "ctid", survivors));
		if (by_ctid(job))
			rows = psprintf("%s AND %s", batch_tids(job, range, "x.ctid", survivors), rows);
	}
	batch_exec(by_ctid(job),
			   psprintf("SELECT pg_catalog.count(*) FROM (SELECT FROM ONLY %s x WHERE %s ORDER BY %s FOR %s OF x) l",
						t->qualname, rows, sql_pk_list(t, "x"), survivors ? "SHARE" : "UPDATE"),
			   SPI_OK_SELECT);
}

/*
 * Lock the batch's survivors: nobody may delete them or change their key
 * while their group's losers go.  The statements that follow take a new
 * snapshot, in which they are stable.
 *
 * A rename or a merge locks the losers too: a merge must keep new
 * references away from them before it re-points the old ones, and a
 * rename's UPDATE finds each loser by the ctid its statement read, so a
 * loser changed in between would be renamed in its new version without a
 * second look at its key, while the archive got the old one.  A delete does
 * not need to: its DELETE locks each loser itself, and a loser that a writer
 * changed meanwhile is left to the next pass or checked again by key (see
 * id_match).
 * Locking them beforehand took a third of each batch's time, and made a
 * writer that updates a loser wait from the start of the batch instead of
 * from its DELETE.  But where a BEFORE DELETE trigger may skip a loser, or
 * a row-level security policy for DELETE hide one the pass saw (skips),
 * they are locked: a loser then still there, unchanged, was skipped, not
 * left to a writer (losers_deleted_check).
 */
static void
lock_batch(BgJob *job, const char *range, bool skips)
{
	lock_rows(job, range, true);
	if (job->action != DEDUP_ACTION_DELETE || skips)
		lock_rows(job, range, false);
}

/*
 * A merge's batch: the losers still alike their survivor make the map (a
 * temporary table, dropped at commit); the rows that reference them are
 * re-pointed (a referencing table's archive is created by the first batch
 * that finds its foreign key, and listed in the job's ref_archives in the
 * same commit), then the losers are removed.  No other
 * session can add a reference to a loser meanwhile: that needs a KEY SHARE
 * lock on it, which the batch's FOR UPDATE excludes.  Returns the losers
 * removed; *counts gets the job row's assignments for the references.
 */
static int64
merge_batch(BgJob *job, const char *using, const char *where, char **counts)
{
	DedupTarget *t = job->t;
	MergePlan  *plan = merge_plan(t, false, job->archive_table != NULL);
	MergeResult res = {0};
	char	   *map = spi_temp_table_name("merge_map");
	char	   *archives = NULL;
	char	   *select;
	int64		deleted;

	/*
	 * Written once: every later statement must see the same losers, even
	 * with a filter that reads other tables.
	 */
	select = psprintf("SELECT %s FROM ONLY %s r, %s WHERE %s", merge_map_columns(plan), t->qualname, using, where);
	spi_exec_count(psprintf("CREATE TEMP TABLE %s ON COMMIT DROP AS %s WITH NO DATA", map, select),
				   SPI_OK_UTILITY);
	/* filled by an INSERT: a CREATE TABLE AS plans its query only when it runs */
	batch_exec(by_lists(job), psprintf("INSERT INTO %s %s", map, select), SPI_OK_INSERT);
	spi_exec_count(psprintf("ANALYZE %s", map), SPI_OK_UTILITY);

	if (job->archive_table)
	{
		spi_exec_as_owner(psprintf("SELECT COALESCE(ref_archives, '[]')::pg_catalog.text FROM %s.dedup_job"
								   " WHERE job_id OPERATOR(pg_catalog.=) %lld",
								   dedup_ext_schema(), (long long) job->job_id),
						  0, NULL, NULL, NULL, SPI_OK_SELECT);
		archives = merge_archives(plan, job->job_id,
								  SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	}
	merge_refs(plan, map, job->job_id, &res);
	deleted = merge_delete_losers(t, map, job->job_id, job->archive_table);
	*counts = psprintf(", refs_repointed = refs_repointed OPERATOR(pg_catalog.+) %lld,"
					   " refs_removed = refs_removed OPERATOR(pg_catalog.+) %lld%s%s%s",
					   (long long) res.refs_repointed, (long long) res.refs_removed,
					   archives ? ", ref_archives = " : "",
					   archives ? sql_literal(archives) : "",
					   archives ? "::pg_catalog.jsonb" : "");
	return deleted;
}

/* One batch: remove (or rename, or merge) the losers that still belong to their survivor. */
static void
batch_step(BgJob *job, void *arg)
{
	DedupTarget *t = job->t;
	int64		from = job->checkpoint;
	int64		to = Min(from + job->batch_size, job->pass_rows);
	char	   *range = work_range(job, from, to);
	char	   *using;
	char	   *where;
	char	   *tids = "";
	char	   *counts = "";
	int64		changed;
	bool		skips = job->action == DEDUP_ACTION_DELETE &&
		(has_before_delete_trigger(t->relid) || check_enable_rls(t->relid, InvalidOid, true) == RLS_ENABLED);
	const char *sctid = survivor_ctid_name(t);

	dedup_check_owner(t->relid);
	if (job->archive_table)
		archive_check_columns(t->relid, job->archive_table, job->job_id);
	bg_compress_wal(true);
	/* run_step disarms it */
	cpu_yield_arm(true);
	lock_batch(job, range, skips);

	/* the loser r, its work row w, and its survivor s, still alike */
	using = psprintf("%s w, (SELECT r.ctid AS %s, r.* FROM ONLY %s r WHERE %s) s",
					 job->work, sctid, t->qualname, sql_rows_where(t, true));
	where = psprintf("%s AND %s AND %s AND %s AND %s AND r.ctid OPERATOR(pg_catalog.<>) s.%s",
					 range, id_match(job, "r", "ctid", false), id_match(job, "s", sctid, true),
					 sql_keys_match(t, "r", "s"), sql_rows_where(t, true), sctid);
	/*
	 * The delete's and the merge's rows by one TID scan each (batch_exec).
	 * A rename's statement updates each row by its ctid too, a join that
	 * needs a nested loop: it keeps finding its rows one at a time.
	 */
	if (by_lists(job))
		tids = psprintf(" AND %s AND %s", batch_tids(job, range, "r.ctid", false),
						batch_tids(job, range, psprintf("s.%s", sctid), true));
	if (job->action == DEDUP_ACTION_RENAME)
	{
		StringInfoData sql;

		initStringInfo(&sql);
		appendStringInfo(&sql, "WITH dedup_x AS (SELECT r.ctid AS dedup_rctid, w.dedup_cand"
						 " FROM ONLY %s r, %s WHERE %s), %s SELECT pg_catalog.count(*),"
						 " pg_catalog.count(*) FILTER (WHERE u.dedup_same IS NOT TRUE),"
						 " (SELECT pg_catalog.count(*) FROM dedup_x) FROM dedup_u u",
						 t->qualname, using, where,
						 sql_rename_apply(t, "dedup_x", "dedup_rctid", job->archive_table, job->job_id));
		spi_exec_count(sql.data, SPI_OK_SELECT);
		changed = spi_get_int64(0, 1);
		/* the archive holds every loser of dedup_x as renamed */
		rename_skipped_check(t, changed, spi_get_int64(0, 3));
		rename_stored_check(t, spi_get_int64(0, 2));
	}
	else if (job->action == DEDUP_ACTION_MERGE)
	{
		/* its map table's ANALYZE writes pg_statistic, shared by all tables */
		bg_compress_wal(false);
		changed = merge_batch(job, using, psprintf("%s%s", where, tids), &counts);
	}
	else
	{
		char	   *del = psprintf("DELETE FROM ONLY %s r USING %s WHERE %s%s", t->qualname, using, where, tids);

		if (job->archive_table)
			changed = batch_exec(by_lists(job),
								 psprintf("WITH dedup_d AS (%s RETURNING r.*) INSERT INTO %s"
										  " SELECT d.*, %lld, 'delete', NULL, NULL FROM dedup_d d",
										  del, job->archive_table, (long long) job->job_id),
								 SPI_OK_INSERT);
		else
		{
			batch_exec(by_lists(job),
					   psprintf("WITH dedup_d AS (%s RETURNING 1) SELECT pg_catalog.count(*) FROM dedup_d", del),
					   SPI_OK_SELECT);
			changed = spi_get_int64(0, 1);
		}
		/*
		 * The losers locked and still alike their survivor were skipped by
		 * the trigger or hidden by a policy: the job fails now (as in the
		 * foreground) rather than find them again pass after pass.
		 */
		if (skips)
		{
			batch_exec(by_lists(job), psprintf("SELECT pg_catalog.count(*) FROM ONLY %s r, %s WHERE %s%s",
											   t->qualname, using, where, tids),
					   SPI_OK_SELECT);
			losers_deleted_check(t, changed, changed + spi_get_int64(0, 1));
		}
	}
	bg_record(job, psprintf("checkpoint = %lld, rows_done = rows_done OPERATOR(pg_catalog.+) %lld,"
							" rows_changed = rows_changed OPERATOR(pg_catalog.+) %lld,"
							" %s = %s OPERATOR(pg_catalog.+) %lld,"
							" batches_done = batches_done OPERATOR(pg_catalog.+) 1%s%s",
							(long long) to, (long long) (to - from), (long long) changed,
							job->action == DEDUP_ACTION_RENAME ? "rows_renamed" : "rows_deleted",
							job->action == DEDUP_ACTION_RENAME ? "rows_renamed" : "rows_deleted",
							(long long) changed, counts,
							to >= job->pass_rows ? psprintf(", phase = '%s'", after_batches(job, changed)) : ""));
}

/* Is there an index of this name in the table's schema, and is it valid? */
static void
index_state(BgJob *job, void *arg)
{
	int		   *state = (int *) arg;	/* 0: none, 1: invalid, 2: valid */
	bool		ready;
	bool		valid;

	*state = 0;
	if (index_flags(get_relname_relid(job->index_name, get_rel_namespace(job->t->relid)), &ready, &valid))
		*state = valid ? 2 : 1;
}

/* name the index to build, unless one that does its work is there already */
static void
name_index_step(BgJob *job, void *arg)
{
	char	   *existing = unique_existing(job->t);
	MemoryContext oldcxt;

	if (existing)
	{
		ereport(LOG,
				(errmsg("dedup_ext job %lld: unique index %s already keeps the key of %s unique, none added",
						(long long) job->job_id, existing, job->t->qualname)));
		bg_record(job, "phase = 'finishing'");
		return;
	}
	oldcxt = MemoryContextSwitchTo(job->cxt);
	job->index_name = unique_index_name(job->t, &job->is_constraint);
	MemoryContextSwitchTo(oldcxt);
	bg_record(job, psprintf("unique_index = %s, unique_is_constraint = %s",
							sql_literal(quote_qualified_identifier(get_namespace_name(get_rel_namespace(job->t->relid)),
																   job->index_name)),
							job->is_constraint ? "true" : "false"));
}

/* the index is valid: attach it as a constraint where it can be one */
static void
unique_done_step(BgJob *job, void *arg)
{
	if (job->is_constraint)
		spi_exec_count(unique_constraint_sql(job->t, job->index_name), SPI_OK_UTILITY);
	job_note_index(job->job_id, quote_qualified_identifier(job->nspname, job->index_name));
	bg_record(job, "phase = 'finishing'");
}

static void
rescan_step(BgJob *job, void *arg)
{
	bg_record(job, "phase = 'scanning', unique_index = NULL, unique_is_constraint = false");
}

static char *
drop_index_sql(BgJob *job)
{
	/* between transactions: no catalog lookups here */
	return psprintf("DROP INDEX CONCURRENTLY IF EXISTS %s",
					quote_qualified_identifier(job->nspname, job->index_name));
}

/*
 * add_unique: CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... USING
 * INDEX (a catalog change, under lock_timeout).  A duplicate written since the
 * last pass makes the build fail: its invalid index is kept as a guard or
 * dropped (guard.c), and the job scans again.  The guards go once the index
 * is valid.
 */
static void
build_unique(BgJob *job)
{
	int			state = 0;
	bool		kept = false;

	/* a step stopped by a pause or cancel request: the caller obeys it */
	if (!bg_xact(job, job->index_name == NULL ? name_index_step : index_state, &state))
		return;
	if (job->index_name == NULL)
	{
		/* an index that does its work was there (one a user made meanwhile) */
		bg_drop_guards(job);
		return;
	}
	if (state == 1)
		bg_toplevel(job, drop_index_sql(job));
	if (state != 2)
	{
		MemoryContext cxt = CurrentMemoryContext;

		bg_compress_wal(true);
		PG_TRY();
		{
			bg_toplevel(job, unique_index_sql(job->t, job->index_name, true));
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(job->cxt);
			edata = CopyErrorData();
			if (edata->sqlerrcode != ERRCODE_UNIQUE_VIOLATION)
			{
				/*
				 * The job fails (a key too large for a btree entry, say),
				 * and leaves no invalid index of its own on the table.
				 */
				FlushErrorState();
				bg_abort();
				bg_compress_wal(false);
				MemoryContextSwitchTo(job->cxt);
				bg_toplevel(job, drop_index_sql(job));
				ReThrowError(edata);
			}
			MemoryContextSwitchTo(cxt);
			elog(DEBUG1, "dedup_ext job %lld: the unique index build found a duplicate, scanning again: %s",
				 (long long) job->job_id, edata->detail ? edata->detail : edata->message);
			FlushErrorState();
			bg_abort();
			bg_compress_wal(false);
			MemoryContextSwitchTo(job->cxt);
			/* an index that was ready stays, as a guard (see guard.c) */
			if (!bg_xact(job, guard_keep_step, &kept) || !kept)
				bg_toplevel(job, drop_index_sql(job));
			job->index_name = NULL;
			(void) bg_xact(job, rescan_step, NULL);
			return;
		}
		PG_END_TRY();
		bg_compress_wal(false);
	}
	bg_drop_guards(job);
	(void) bg_xact(job, unique_done_step, NULL);
}

static void
pass_rows_step(BgJob *job, void *arg)
{
	spi_exec_count(psprintf("SELECT pg_catalog.max(w.dedup_seq) FROM %s w", job->work), SPI_OK_SELECT);
	job->pass_rows = spi_get_int64(0, 1);
	/* resumed in the middle of a pass: what its batches skipped is unknown */
	job->pass_changed_from = -1;
	if (job->pass_rows == 0)
	{
		/*
		 * A pass that lists nothing ends its phase at once, so an empty list
		 * in a batch phase is one that a crash emptied (the work table is
		 * unlogged, see prepare_step).  The batches committed before it stay
		 * done; a new pass lists what is left.
		 */
		ereport(LOG,
				(errmsg("dedup_ext job %lld: its work list was emptied by a crash, scanning the table again",
						(long long) job->job_id)));
		bg_record(job, "phase = 'scanning', checkpoint = 0");
	}
}

/* the phases of a background dedup, from wherever the job stands */
void
bg_dedup(BgJob *job)
{
	if (job->work && strcmp(job->phase, batch_phase(job)) == 0)
		bg_xact(job, pass_rows_step, NULL);
	for (;;)
	{
		bg_publish(job);
		if (bg_obeyed(job))
			return;
		if (job->work == NULL)
			bg_xact(job, prepare_step, NULL);
		else if (strcmp(job->phase, "scanning") == 0)
		{
			if (bg_xact(job, scan_step, NULL))
				candidates_keep_remembered();
		}
		else if (strcmp(job->phase, batch_phase(job)) == 0)
		{
			/* before a batch takes its row locks (at most 1 ms) */
			cpu_yield_now();
			if (!bg_xact(job, batch_step, NULL))
				continue;
			bg_delay(job);
		}
		else if (strcmp(job->phase, "building unique index") == 0)
			build_unique(job);
		else if (strcmp(job->phase, "finishing") == 0)
		{
			bg_finish(job);
			return;
		}
		else
			elog(ERROR, "dedup_ext: job %lld is in unknown phase \"%s\"",
				 (long long) job->job_id, job->phase);
	}
}

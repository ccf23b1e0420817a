/*
 * dedup.c
 *		dedup_table in the foreground: delete and rename.
 *
 * The losers of every group are found with one window pass over the table
 * (sql_ranked), and the same statement archives and removes (or renames)
 * them: a data-modifying WITH whose sub-statements all see one snapshot, so
 * the archive receives exactly the original versions of the rows the
 * statement changes.  The whole job runs in the caller's transaction, under
 * a SHARE ROW EXCLUSIVE lock that keeps writers (who could add duplicates
 * behind the pass) out and lets readers in.
 */
#include "dedup_ext.h"

#include "access/sysattr.h"
#include "access/xact.h"
#include "catalog/heap.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/rls.h"
#include "utils/tuplestore.h"

/*
 * Memory one ctid of an ARRAY(SELECT ctid ...) takes while it is built and
 * scanned: the array builder's Datum and null flag, the array's element, the
 * TID scan's sorted copy, rounded up.
 */
#define TID_ARRAY_BYTES 32

PG_FUNCTION_INFO_V1(dedup_table);

typedef struct DedupResult
{
	int64		job_id;			/* 0: dry run */
	const char *state;
	const char *strategy;
	int64		groups;
	int64		rows_deleted;
	int64		rows_renamed;
	int64		refs_repointed;
	int64		refs_removed;
	char	   *ref_archives;
	char	   *archive_table;
	char	   *unique_index;
	bool		unique_is_constraint;
} DedupResult;

static void
json_field(StringInfo buf, const char *name, const char *value)
{
	appendStringInfo(buf, "%s", buf->len > 1 ? ", " : "");
	escape_json(buf, name);
	appendStringInfoString(buf, ": ");
	if (value)
		escape_json(buf, value);
	else
		appendStringInfoString(buf, "null");
}

static void
json_raw(StringInfo buf, const char *name, const char *raw)
{
	appendStringInfo(buf, "%s", buf->len > 1 ? ", " : "");
	escape_json(buf, name);
	appendStringInfo(buf, ": %s", raw);
}

/* the job's params, as given, plus what the job resolved (renamed column) */
static char *
params_json(FunctionCallInfo fcinfo, DedupTarget *t, const char *keep,
			DedupAction action, const char *strategy)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	appendStringInfoString(&buf, "\"key\": [");
	for (int i = 0; i < t->nkeys; i++)
	{
		if (i > 0)
			appendStringInfoString(&buf, ", ");
		escape_json(&buf, t->keys[i].name);
	}
	appendStringInfoChar(&buf, ']');
	json_field(&buf, "keep", keep);
	json_field(&buf, "action", dedup_action_name(action));
	json_field(&buf, "filter", t->filter_text);
	json_raw(&buf, "nulls_distinct", t->nulls_distinct ? "true" : "false");
	json_raw(&buf, "archive", PG_GETARG_BOOL(6) ? "true" : "false");
	json_raw(&buf, "add_unique", PG_GETARG_BOOL(7) ? "true" : "false");
	json_raw(&buf, "background", PG_GETARG_BOOL(9) ? "true" : "false");
	json_raw(&buf, "batch_size", PG_ARGISNULL(10) ? "null" : psprintf("%d", PG_GETARG_INT32(10)));
	json_field(&buf, "strategy", strategy);
	json_field(&buf, "rename_column",
			   t->rename_key >= 0 ? t->keys[t->rename_key].name : NULL);
	/* what a worker, or dedup_verify, parses again, and the settings of the session */
	json_field(&buf, "filter_sql", t->filter_bare);
	json_field(&buf, "keep_sql", t->keep_sql);
	job_settings_json(&buf);
	if (PG_GETARG_BOOL(9))
	{
		json_raw(&buf, "batch_rows", psprintf("%d", PG_ARGISNULL(10) ? dedup_batch_size : PG_GETARG_INT32(10)));
		json_raw(&buf, "batch_delay", psprintf("%d", dedup_batch_delay));
		json_raw(&buf, "lock_timeout", psprintf("%d", dedup_lock_timeout));
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/*
 * A dry run's count of the losers and their groups, as the call would find
 * them.  A delete's is refused as the delete would be when a foreign key
 * references a loser (its check, or a deferred one at COMMIT, would fail;
 * a loser's reference to another counts in a background job's, whose
 * batches delete them in different transactions); a BEFORE DELETE trigger
 * that would skip a loser is not foreseen.  A rename's is the read-only
 * transaction's (rolled_back renames otherwise).
 */
static void
count_losers(DedupTarget *t, DedupResult *res, DedupAction action, bool background)
{
	int64		losers;

	spi_exec_count(psprintf("WITH %s SELECT %s, (SELECT pg_catalog.count(*) FROM dedup_l)",
							sql_losers(t), sql_loser_groups(t)),
				   SPI_OK_SELECT);
	res->groups = spi_get_int64(0, 1);
	losers = spi_get_int64(0, 2);
	if (action == DEDUP_ACTION_RENAME)
	{
		res->rows_renamed = losers;
		return;
	}
	res->rows_deleted = losers;
	if (losers > 0)
		refuse_referenced_rows(t->relid, t->qualname, "delete duplicate",
							   psprintf("c.ctid IN (WITH %s SELECT l.dedup_ctid FROM dedup_l l)", sql_losers(t)),
							   false, !background, HINT_MERGE_REFERENCES);
}

/*
 * Delete the losers, archiving them in the same statement.  The losers' ctids
 * are written to a temporary table first.  When their array fits in work_mem
 * the delete fetches them by TID, in block order (a TID scan sorts its list),
 * instead of the hash join over every ctid of the table the planner would
 * pick (it prices a TID fetch as a random page read, even when the table is
 * in shared buffers).
 */
static void
run_delete(DedupTarget *t, DedupResult *res)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	char	   *losers = spi_temp_table_name("losers");
	int64		nlosers;
	const char *del;

	spi_exec_count(psprintf("CREATE TEMP TABLE %s ON COMMIT DROP AS WITH %s"
							" SELECT l.dedup_ctid, %s AS dedup_groups FROM dedup_l l",
							losers, sql_losers(t), sql_loser_groups(t)),
				   SPI_OK_UTILITY);
	spi_exec_count(psprintf("SELECT pg_catalog.max(l.dedup_groups), pg_catalog.count(*) FROM %s l", losers),
				   SPI_OK_SELECT);
	res->groups = spi_get_int64(0, 1);
	nlosers = spi_get_int64(0, 2);
	progress_counts(nlosers, -1, -1, -1);
	refuse_referenced_rows(t->relid, t->qualname, "delete duplicate",
						   psprintf("EXISTS (SELECT FROM %s l WHERE l.dedup_ctid OPERATOR(pg_catalog.=) c.ctid)", losers),
						   true, true, HINT_MERGE_REFERENCES);
	progress_phase("deleting");

	if (nlosers * TID_ARRAY_BYTES <= (int64) work_mem * 1024)
		del = psprintf("DELETE FROM ONLY %s r WHERE r.ctid OPERATOR(pg_catalog.=) ANY"
					   " (ARRAY(SELECT l.dedup_ctid FROM %s l))", t->qualname, losers);
	else
	{
		spi_exec_count(psprintf("ANALYZE %s", losers), SPI_OK_UTILITY);
		del = psprintf("DELETE FROM ONLY %s r USING %s l"
					   " WHERE r.ctid OPERATOR(pg_catalog.=) l.dedup_ctid",
					   t->qualname, losers);
	}
	PG_TRY();
	{
		if (res->archive_table)
			res->rows_deleted = spi_exec_count(psprintf("WITH dedup_d AS (%s RETURNING r.*) INSERT INTO %s"
														" SELECT d.*, %lld, 'delete', NULL, NULL FROM dedup_d d",
														del, res->archive_table, (long long) res->job_id),
											   SPI_OK_INSERT);
		else
			res->rows_deleted = spi_exec_count(del, SPI_OK_DELETE);
	}
	PG_CATCH();
	{
		/* a loser another table references: PostgreSQL's error names it */
		spi_rethrow_with_hint(oldcxt, ERRCODE_FOREIGN_KEY_VIOLATION, 0, HINT_MERGE_REFERENCES, false);
	}
	PG_END_TRY();
	losers_deleted_check(t, res->rows_deleted, nlosers);
	spi_exec_count(psprintf("DROP TABLE %s", losers), SPI_OK_UTILITY);
}

/* Of nlosers losers of the table, deleted were: all, or the job stops. */
void
losers_deleted_check(DedupTarget *t, int64 deleted, int64 nlosers)
{
	if (deleted != nlosers)
		ereport(ERROR,
				(errcode(ERRCODE_TRIGGERED_ACTION_EXCEPTION),
				 errmsg("%lld of the %lld losers of %s were not deleted",
						(long long) (nlosers - deleted), (long long) nlosers, t->qualname),
				 errdetail("A BEFORE DELETE trigger on the table skipped them (or a row-level security policy for DELETE hid them); their duplicates would stay."),
				 errhint("Disable the trigger for the job (ALTER TABLE ... DISABLE TRIGGER), or make it let the losers go.")));
}

/* Rename the losers' key column, archiving their original versions. */
static void
run_rename(DedupTarget *t, DedupResult *res)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	char	   *hint = psprintf("A renamed %s is its value, '-' and the row's primary key; it must fit the column and the table's constraints. Use action => 'delete' or 'merge', or widen the column.",
								t->keys[t->rename_key].quoted);
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfo(&sql, "WITH RECURSIVE dedup_l AS (SELECT * FROM (%s) s"
					 " WHERE s.dedup_rn OPERATOR(pg_catalog.>) 1), %s, ",
					 sql_ranked_dups(t, sql_rename_cols(t)), sql_rename_ctes(t, "dedup_l"));
	appendStringInfo(&sql, "%s SELECT (SELECT pg_catalog.count(*) FROM dedup_u),"
					 " (SELECT pg_catalog.count(*) FROM dedup_f f WHERE f.dedup_rn OPERATOR(pg_catalog.=) 2),"
					 " (SELECT pg_catalog.count(*) FROM dedup_l l WHERE l.dedup_val IS NULL),"
					 " (SELECT pg_catalog.min(f.dedup_cand) FROM dedup_f f GROUP BY f.dedup_cand"
					 "  HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1 LIMIT 1),"
					 " (SELECT pg_catalog.count(*) FROM dedup_f),"
					 " (SELECT pg_catalog.count(*) FROM dedup_u u WHERE u.dedup_same IS NOT TRUE)",
					 sql_rename_apply(t, "dedup_f", "dedup_ctid", res->archive_table, res->job_id));
	PG_TRY();
	{
		spi_exec_count(sql.data, SPI_OK_SELECT);
	}
	PG_CATCH();
	{
		/* a renamed value the column (varchar(n)) or a CHECK rejects */
		spi_rethrow_with_hint(oldcxt, ERRCODE_STRING_DATA_RIGHT_TRUNCATION, ERRCODE_CHECK_VIOLATION,
							  hint, true);
	}
	PG_END_TRY();
	res->rows_renamed = spi_get_int64(0, 1);
	res->groups = spi_get_int64(0, 2);

	/* the statement's changes go with the transaction this error aborts */
	rename_refusals(t, spi_get_int64(0, 3),
					SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4));
	rename_skipped_check(t, res->rows_renamed, spi_get_int64(0, 5));
	rename_stored_check(t, spi_get_int64(0, 6));
}

/*
 * renamed of wanted losers were renamed: the others a BEFORE UPDATE trigger
 * skipped (or row-level security hid), and their duplicates would stay,
 * while the archive holds them as renamed.
 */
void
rename_skipped_check(DedupTarget *t, int64 renamed, int64 wanted)
{
	if (renamed != wanted)
		ereport(ERROR,
				(errcode(ERRCODE_TRIGGERED_ACTION_EXCEPTION),
				 errmsg("%lld of the %lld losers of %s were not renamed",
						(long long) (wanted - renamed), (long long) wanted, t->qualname),
				 errdetail("A BEFORE UPDATE trigger on the table skipped them (or a row-level security policy for UPDATE hid them); their duplicates would stay."),
				 errhint("Disable the trigger for the job (ALTER TABLE ... DISABLE TRIGGER), or make it let the renames through.")));
}

/*
 * changed: renamed rows that do not hold the value the rename wrote.  A
 * BEFORE UPDATE trigger changed it, and may have made it a duplicate again
 * (or of another row); the job cannot say it is done.
 */
void
rename_stored_check(DedupTarget *t, int64 changed)
{
	if (changed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_TRIGGERED_ACTION_EXCEPTION),
				 errmsg("%lld renamed rows of %s do not hold the value the rename gave them",
						(long long) changed, t->qualname),
				 errdetail("A BEFORE UPDATE trigger on the table changed their %s; their duplicates could stay.",
						   t->keys[t->rename_key].quoted),
				 errhint("Disable the trigger for the job (ALTER TABLE ... DISABLE TRIGGER), or use action => 'delete' or 'merge'.")));
}

/*
 * A rename cannot give a key to rows whose value is NULL, nor the same new
 * value to two rows: null_keys is the number of the former, taken one value
 * two rows would get (or NULL).
 */
void
rename_refusals(DedupTarget *t, int64 null_keys, const char *taken)
{
	if (null_keys > 0)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("cannot rename %lld duplicate rows of %s whose %s is NULL",
						(long long) null_keys, t->qualname, t->keys[t->rename_key].quoted),
				 errhint("Use nulls_distinct => true, which leaves rows with NULL keys alone, or action => 'delete'.")));
	if (taken != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("rename would give two rows of %s the value %s",
						t->qualname, quote_literal_cstr(taken)),
				 errdetail("value || '-' || primary key is the same string for two different rows."),
				 errhint("Use action => 'delete' or 'merge' for these rows.")));
}

/*
 * A job that changed nothing drops the archives it made, all empty: a run
 * that finds nothing (a nightly one, most nights) leaves only its job row.
 */
static void
drop_empty_archives(DedupResult *res)
{
	if (res->ref_archives)
	{
		Oid			types[1] = {TEXTOID};
		Datum		values[1] = {CStringGetTextDatum(res->ref_archives)};
		SPITupleTable *archives;

		if (SPI_execute_with_args("SELECT e OPERATOR(pg_catalog.->>) 'archive'"
								  " FROM pg_catalog.jsonb_array_elements($1::pg_catalog.jsonb) e",
								  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "dedup_ext: could not read the job's archives");
		archives = SPI_tuptable;
		for (uint64 i = 0; i < archives->numvals; i++)
			archive_drop_if_empty(SPI_getvalue(archives->vals[i], archives->tupdesc, 1));
		res->ref_archives = NULL;
	}
	if (res->archive_table && archive_drop_if_empty(res->archive_table))
		res->archive_table = NULL;
}

/*
 * Run fn in a subtransaction and roll it back: a dry run of a merge or a
 * rename, whose counts and refusals depend on what the statements meet (the
 * collisions in every referencing table, a new value the column or a
 * constraint rejects, a trigger that skips a row).
 */
static void
rolled_back(void (*fn) (DedupTarget *t, DedupResult *res, bool archived, bool background),
			DedupTarget *t, DedupResult *res, bool archived, bool background)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		fn(t, res, archived, background);
	}
	PG_CATCH();
	{
		/* leave the subtransaction before the error goes up to the caller's */
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		ReThrowError(edata);
	}
	PG_END_TRY();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(oldcxt);
	CurrentResourceOwner = oldowner;
}

/*
 * A merge (a dry run's has no job and no archive).  archived: the call keeps
 * archives (a dry run refuses what it would); background: a dry run of a
 * background job, whose passes may do more.
 */
static void
merge(DedupTarget *t, DedupResult *res, bool archived, bool background)
{
	MergeResult mres = {0};

	run_merge(t, res->job_id, res->archive_table, archived, background, &mres);
	res->groups = mres.groups;
	res->rows_deleted = mres.rows_deleted;
	res->refs_repointed = mres.refs_repointed;
	res->refs_removed = mres.refs_removed;
	res->ref_archives = mres.ref_archives;
}

/* a dry run's rename, with no archive: rolled_back's fn */
static void
dry_rename(DedupTarget *t, DedupResult *res, bool archived, bool background)
{
	run_rename(t, res);
}

/*
 * Deleting losers, or renaming their key, must not cascade through foreign
 * keys into other tables (merge re-points them instead), nor be rewritten by
 * a rule (which PostgreSQL refuses for the data-modifying WITH that archives
 * what it changes, and whose actions elsewhere no archive would keep).
 * Checked at submit time and again by a background worker.
 */
void
dedup_refuse_cascades(DedupTarget *t, DedupAction action)
{
	char	   *rule = enabled_rule(t->relid, action == DEDUP_ACTION_RENAME ? '2' : '4');

	if (rule)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot %s duplicate rows of %s: rule %s rewrites its %s",
						dedup_action_name(action), t->qualname, rule,
						action == DEDUP_ACTION_RENAME ? "UPDATE" : "DELETE"),
				 errdetail("What a rule does instead, or also, no archive would keep."),
				 errhint("Drop or disable the rule for the job (ALTER TABLE ... DISABLE RULE).")));
	if (action == DEDUP_ACTION_MERGE)
		return;
	refuse_cascading_references(t->relid, t->qualname,
								psprintf("%s duplicate", dedup_action_name(action)),
								action == DEDUP_ACTION_DELETE,
								action == DEDUP_ACTION_DELETE ? 0 :
								get_attnum(t->relid, t->keys[t->rename_key].name),
								action == DEDUP_ACTION_DELETE ? HINT_MERGE_REFERENCES : NULL);
}

/*
 * CREATE INDEX needs CREATE on the table's schema as well as ownership of
 * the table: say so before anything changes, not after the job's work.
 */
static void
refuse_index_without_create(DedupTarget *t)
{
	Oid			nsp = get_rel_namespace(t->relid);

	if (pg_namespace_aclcheck(nsp, GetUserId(), ACL_CREATE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("add_unique needs CREATE privilege on schema %s",
						quote_identifier(get_namespace_name(nsp))),
				 errdetail("The unique index goes into the schema of %s.", t->qualname),
				 errhint("GRANT CREATE ON SCHEMA %s to the role, or use add_unique => false.",
						 quote_identifier(get_namespace_name(nsp)))));
}

/*
 * What CREATE UNIQUE INDEX refuses whatever the rows, refused before the
 * job's work (a background job's batches would have committed it): a key
 * of more columns than an index takes, a filter (the index's predicate)
 * that reads a system column.
 */
static void
refuse_unindexable(DedupTarget *t)
{
	Bitmapset  *attrs = NULL;

	if (t->nkeys > INDEX_MAX_KEYS)
		ereport(ERROR,
				(errcode(ERRCODE_TOO_MANY_COLUMNS),
				 errmsg("add_unique cannot be used with a key of %d columns", t->nkeys),
				 errdetail("An index has at most %d columns.", INDEX_MAX_KEYS),
				 errhint("Use add_unique => false.")));
	if (t->filter_expr)
		pull_varattnos(t->filter_expr, 1, &attrs);
	for (int i = FirstLowInvalidHeapAttributeNumber + 1; i < 0; i++)
		if (bms_is_member(i - FirstLowInvalidHeapAttributeNumber, attrs))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
					 errmsg("argument \"filter\" cannot be the predicate of a unique index"),
					 errdetail("It reads system column %s, which an index cannot use.",
							   NameStr(SystemAttributeDefinition(i)->attname)),
					 errhint("Use add_unique => false, or a filter on the table's own columns.")));
}

/*
 * A background job deletes, renames or merges in batches; a rewrite swaps
 * the whole heap under an ACCESS EXCLUSIVE lock, which is what running in
 * the background is meant to avoid.
 */
static void
refuse_in_background(DedupStrategy strategy)
{
	if (strategy == DEDUP_STRATEGY_REWRITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("strategy \"rewrite\" cannot run in the background"),
				 errdetail("A rewrite holds an ACCESS EXCLUSIVE lock on the table until it ends."),
				 errhint("Use strategy => 'auto' or 'delete' (the background job deletes in batches), or run the rewrite in the foreground.")));
}

/*
 * 'auto' rewrites when a delete would remove at least half of the table's
 * rows and the table can be rewritten; otherwise it deletes in place.  The
 * planner's estimate of the key's groups (or a sample's) rules a rewrite
 * out cheaply; where it allows one, the losers are counted before the whole
 * table is rewritten under ACCESS EXCLUSIVE: estimates go far wrong with a
 * few keys shared by many rows and the rest unique, with statistics
 * missing or stale, or with a filter (whose rows alone the estimate
 * counts).  may_rewrite: false for a background job's dry run, whose job
 * deletes in batches.
 */
static const char *
choose_strategy(DedupTarget *t, DedupAction action, DedupStrategy strategy, bool dry_run,
				bool may_rewrite)
{
	const char *obstacle;
	double		share;
	bool		guessed;

	if (action != DEDUP_ACTION_DELETE)
	{
		/*
		 * a rename or merge ranks the candidates as a delete does (a
		 * rename's new names are then checked against the whole table)
		 */
		dedup_target_plan_candidates(t, estimated_loser_share(t, false, true));
		return "delete";
	}
	/*
	 * The call analyzes a table that never was; a dry run, which changes
	 * nothing, counts instead (the planner's guesses without statistics
	 * made it say delete where the call then rewrote)
	 */
	guessed = dry_run && rel_class(t->relid).reltuples < 0;
	if (guessed)
		share = counted_loser_share(t, false, true);
	else
		share = estimated_loser_share(t, !dry_run, true);
	t->few_groups = share >= 0.5;
	dedup_target_plan_candidates(t, share);
	if (strategy == DEDUP_STRATEGY_DELETE || !may_rewrite)
		return "delete";
	obstacle = rewrite_obstacle(t);
	if (strategy == DEDUP_STRATEGY_REWRITE)
	{
		if (obstacle)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot rewrite %s: %s", t->qualname, obstacle),
					 errhint("Use strategy => 'delete' (action => 'merge' where other tables reference the losers).")));
		return "rewrite";
	}
	if (obstacle != NULL || !t->few_groups)
		return "delete";
	/* a dry run that counted already has the count */
	if (!guessed)
		share = counted_loser_share(t, !dry_run, false);
	if (share < 0.5 && t->keep_groups)
	{
		spi_exec_count(psprintf("DROP TABLE %s", t->keep_groups), SPI_OK_UTILITY);
		t->keep_groups = NULL;
	}
	t->few_groups = share >= 0.5;
	dedup_target_plan_candidates(t, share);
	return t->few_groups ? "rewrite" : "delete";
}

/*
 * What dedup_progress shows of a foreground dedup while its one statement
 * runs: a delete finds its losers first ("scanning"), then deletes them; a
 * rename or merge finds and changes them in one go.
 */
static const char *
foreground_phase(const char *strategy, DedupAction action)
{
	if (strcmp(strategy, "rewrite") == 0)
		return "rewriting";
	if (action == DEDUP_ACTION_RENAME)
		return "renaming";
	if (action == DEDUP_ACTION_MERGE)
		return "merging";
	return "scanning";
}

static void
return_result(FunctionCallInfo fcinfo, DedupResult *res)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[9];
	bool		nulls[9] = {0};

	InitMaterializedSRF(fcinfo, 0);
	values[0] = Int64GetDatum(res->job_id);
	nulls[0] = (res->job_id == 0);
	values[1] = CStringGetTextDatum(res->state);
	values[2] = CStringGetTextDatum(res->strategy);
	values[3] = Int64GetDatum(res->groups);
	values[4] = Int64GetDatum(res->rows_deleted);
	values[5] = Int64GetDatum(res->rows_renamed);
	values[6] = Int64GetDatum(res->refs_repointed);
	/* a queued job has not counted anything yet */
	for (int i = 3; i <= 6; i++)
		nulls[i] = (strcmp(res->state, "queued") == 0);
	nulls[7] = (res->archive_table == NULL);
	values[7] = nulls[7] ? (Datum) 0 : ObjectIdGetDatum(dedup_relid_by_name(res->archive_table));
	nulls[8] = (res->unique_index == NULL);
	values[8] = nulls[8] ? (Datum) 0 : ObjectIdGetDatum(dedup_relid_by_name(res->unique_index));
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

Datum
dedup_table(PG_FUNCTION_ARGS)
{
	static const char *const argnames[] = {
		"rel", "key", "keep", "action", NULL, "nulls_distinct", "archive",
		"add_unique", "dry_run", "background", NULL, "strategy"
	};
	DedupTarget *t;
	DedupAction action;
	DedupStrategy strategy;
	const char *keep;
	bool		dry_run;
	bool		add_unique;
	bool		background;
	DedupResult res = {0};
	char	   *own_index = NULL;

	for (int i = 0; i < lengthof(argnames); i++)
		if (argnames[i])
			dedup_require_arg(fcinfo, i, argnames[i]);
	keep = text_to_cstring(PG_GETARG_TEXT_PP(2));
	action = dedup_parse_action(text_to_cstring(PG_GETARG_TEXT_PP(3)));
	strategy = dedup_parse_strategy(text_to_cstring(PG_GETARG_TEXT_PP(11)));
	if (strategy == DEDUP_STRATEGY_REWRITE && action != DEDUP_ACTION_DELETE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("strategy \"rewrite\" works only with action \"delete\""),
				 errhint("Use strategy => 'auto' or 'delete' with action => '%s'.",
						 dedup_action_name(action))));
	if (!PG_ARGISNULL(10) && PG_GETARG_INT32(10) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"batch_size\" must be greater than zero")));
	add_unique = PG_GETARG_BOOL(7);
	dry_run = PG_GETARG_BOOL(8);
	/* a dry run changes nothing: it answers at once, in the foreground */
	background = PG_GETARG_BOOL(9) && !dry_run;
	if (!dry_run)
		PreventCommandIfReadOnly("dedup_table()");

	t = dedup_target_open(PG_GETARG_OID(0), PG_GETARG_ARRAYTYPE_P(1),
						  PG_ARGISNULL(4) ? NULL : PG_GETARG_TEXT_PP(4),
						  PG_GETARG_BOOL(5), true,
						  dry_run || background ? AccessShareLock :
						  strategy == DEDUP_STRATEGY_REWRITE ? AccessExclusiveLock :
						  ShareRowExclusiveLock);
	dedup_target_require_sort(t, "dedup_table");
	dedup_target_set_keep(t, keep);
	if (action == DEDUP_ACTION_RENAME)
		dedup_target_set_rename(t);
	if (PG_GETARG_BOOL(9))
		refuse_in_background(strategy);
	if (add_unique)
	{
		refuse_index_without_create(t);
		refuse_unindexable(t);
	}
	/* a delete under row-level security removes what the policy shows; an index sees all */
	if (add_unique && check_enable_rls(t->relid, InvalidOid, true) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("add_unique cannot be used on %s: row-level security hides some of its rows from you",
						t->qualname),
				 errdetail("The job removes only the duplicates you see; the unique index would find those you do not."),
				 errhint("Run it as a role that row-level security does not apply to on the table, or use add_unique => false.")));
	if (add_unique && t->filter_bare && !t->filter_immutable)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("argument \"filter\" cannot be the predicate of a unique index"),
				 errdetail("An index predicate may use only immutable functions and no subqueries."),
				 errhint("Use add_unique => false, or an immutable filter.")));

	SPI_connect();
	res.strategy = background ? "delete" : choose_strategy(t, action, strategy, dry_run, !PG_GETARG_BOOL(9));
	dedup_refuse_cascades(t, action);
	if (PG_GETARG_BOOL(6))
		archive_refuse_own_names(t->relid);
	if (dry_run)
	{
		res.state = "dry_run";
		/*
		 * A merge's and a rename's dry runs do the work and roll it back;
		 * a read-only transaction (a standby's) counts a rename's losers,
		 * and cannot count a merge's collisions at all
		 */
		if (action == DEDUP_ACTION_MERGE && XactReadOnly)
			ereport(ERROR,
					(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
					 errmsg("a dry run of action \"merge\" cannot run in a read-only transaction"),
					 errdetail("It counts the collisions in the referencing tables by doing the merge in a subtransaction and rolling it back."),
					 errhint("Run it in a read-write transaction, on the primary.")));
		if (action == DEDUP_ACTION_MERGE)
			rolled_back(merge, t, &res, PG_GETARG_BOOL(6), PG_GETARG_BOOL(9));
		else if (action == DEDUP_ACTION_RENAME && !XactReadOnly)
			rolled_back(dry_rename, t, &res, false, false);
		else
			count_losers(t, &res, action, PG_GETARG_BOOL(9));
	}
	else if (background)
	{
		if (t->filter_expr && contain_volatile_functions(t->filter_expr))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid filter: it uses a volatile function"),
					 errdetail("Which rows take part must not depend on chance: a background job reads the table more than once."),
					 errhint("Use background => false, or a filter without volatile functions.")));
		/* a merge's refusals (privileges on referencing tables...) now, not in its first batch */
		if (action == DEDUP_ACTION_MERGE)
			(void) merge_plan(t, false, PG_GETARG_BOOL(6));
		res.state = "queued";
		res.job_id = job_submit("dedup", t->relid, t->relname,
								params_json(fcinfo, t, keep, action,
											text_to_cstring(PG_GETARG_TEXT_PP(11))),
								action == DEDUP_ACTION_MERGE, InvalidOid);
		if (PG_GETARG_BOOL(6))
		{
			res.archive_table = archive_create(t->relid, res.job_id, NULL, InvalidOid, NIL);
			job_set_archive(res.job_id, res.archive_table);
		}
	}
	else
	{
		res.job_id = job_create("dedup", foreground_phase(res.strategy, action),
								t->relid, t->relname,
								params_json(fcinfo, t, keep, action,
											text_to_cstring(PG_GETARG_TEXT_PP(11))), 0);
		/* a rewrite makes its own archive: possibly the table's old storage */
		if (strcmp(res.strategy, "rewrite") == 0)
			res.archive_table = run_rewrite(t, res.job_id, PG_GETARG_BOOL(6),
											&res.groups, &res.rows_deleted);
		else
		{
			if (PG_GETARG_BOOL(6))
				res.archive_table = archive_create(t->relid, res.job_id, NULL, InvalidOid, NIL);
			if (action == DEDUP_ACTION_RENAME)
				run_rename(t, &res);
			else if (action == DEDUP_ACTION_MERGE)
				merge(t, &res, PG_GETARG_BOOL(6), false);
			else
				run_delete(t, &res);
		}
		progress_counts(res.rows_deleted + res.rows_renamed, res.rows_deleted + res.rows_renamed,
						res.rows_deleted + res.rows_renamed, -1);
		if (add_unique)
		{
			res.unique_index = unique_existing(t);
			if (res.unique_index)
				ereport(NOTICE,
						(errmsg("unique index %s already keeps the key of %s unique, none added",
								res.unique_index, t->qualname)));
			else
			{
				/* the job's own index, which its rollback drops */
				progress_phase("building unique index");
				references_immediate(t->relid);
				own_index = unique_create(t, &res.unique_is_constraint);
				res.unique_index = own_index;
			}
		}
		if (res.rows_deleted + res.rows_renamed + res.refs_repointed + res.refs_removed == 0)
			drop_empty_archives(&res);
		job_finish(res.job_id, res.strategy, res.groups, res.rows_deleted, res.rows_renamed,
				   res.rows_deleted + res.rows_renamed, res.archive_table,
				   own_index, res.unique_is_constraint);
		if (action == DEDUP_ACTION_MERGE)
			job_set_refs(res.job_id, res.refs_repointed, res.refs_removed, res.ref_archives);
		archive_close(res.job_id);
		res.state = "done";
	}
	return_result(fcinfo, &res);
	SPI_finish();
	return (Datum) 0;
}

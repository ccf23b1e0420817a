/*
 * verify.c
 *		dedup_verify: checks a finished job against the table as it is now.
 *
 * Every check is one statement; a check that fails says in its detail how
 * many rows are off, so that a DBA can go and look.
 */
#include "dedup_ext.h"

#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(dedup_verify);

static void
add_check(ReturnSetInfo *rsinfo, const char *name, bool ok, const char *detail)
{
	Datum		values[3] = {CStringGetTextDatum(name), BoolGetDatum(ok),
	CStringGetTextDatum(detail)};
	bool		nulls[3] = {0};

	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

static int64
count_of(const char *sql)
{
	spi_exec_count(sql, SPI_OK_SELECT);
	return spi_get_int64(0, 1);
}

/* checks of the archive of a dedup job against the table */
static void
check_archive(ReturnSetInfo *rsinfo, DedupJob *job, DedupTarget *t)
{
	const char *a = job->archive_table;
	int64		deleted,
				renamed,
				n;

	if (!OidIsValid(dedup_relid_by_name(a)))
	{
		add_check(rsinfo, "archive_complete", false,
				  psprintf("archive table %s no longer exists", a));
		return;
	}
	archive_require_intact(a, job->job_id, job->relid, InvalidOid);
	archive_counts(a, "rename", &deleted, &renamed);
	add_check(rsinfo, "archive_complete",
			  deleted == job->rows_deleted && renamed == job->rows_renamed,
			  psprintf("%lld of %lld removed and %lld of %lld renamed rows archived in %s",
					   (long long) deleted, (long long) job->rows_deleted,
					   (long long) renamed, (long long) job->rows_renamed, a));

	if (t->nulls_distinct)
		n = count_of(psprintf("SELECT pg_catalog.count(*) FROM %s a"
							  " WHERE a.dedup_action OPERATOR(pg_catalog.=) 'delete'"
							  " AND NOT EXISTS (SELECT FROM ONLY %s r WHERE %s)",
							  a, t->qualname, sql_keys_match(t, "r", "a")));
	else
	{
		/*
		 * With NULLs not distinct, the match "a = b OR both NULL" cannot be
		 * hashed, and the anti-join looped over the table for each archived
		 * row.  Grouped, as the job grouped the rows: the removed rows of
		 * the keys that no row of the table has.
		 */
		n = count_of(psprintf("SELECT COALESCE(pg_catalog.sum(g.n), 0)::pg_catalog.int8 FROM"
							  " (SELECT pg_catalog.count(*) AS n FROM"
							  " (SELECT %s, true AS dedup_archived FROM %s a"
							  " WHERE a.dedup_action OPERATOR(pg_catalog.=) 'delete'"
							  " UNION ALL SELECT %s, false FROM ONLY %s r) u"
							  " GROUP BY %s HAVING pg_catalog.bool_and(u.dedup_archived)) g",
							  sql_key_list(t, "a"), a, sql_key_list(t, "r"), t->qualname,
							  sql_partition_list(t, "u")));
	}
	add_check(rsinfo, "removed_rows_have_survivor", n == 0,
			  psprintf("%lld removed rows have no row with their key in the table", (long long) n));

	if (t->npk > 0)
	{
		n = count_of(psprintf("SELECT pg_catalog.count(*) FROM %s a"
							  " WHERE a.dedup_action OPERATOR(pg_catalog.=) 'delete'"
							  " AND EXISTS (SELECT FROM ONLY %s r WHERE %s)",
							  a, t->qualname, sql_pk_match(t, "r", "a")));
		add_check(rsinfo, "removed_rows_absent", n == 0,
				  psprintf("%lld removed rows are back in the table", (long long) n));
	}
	if (renamed > 0 && t->rename_key >= 0 && t->npk > 0)
	{
		/* a row renamed in two passes: the value of the later rename */
		n = count_of(psprintf("SELECT pg_catalog.count(*) FROM %s a"
							  " WHERE NOT EXISTS (SELECT FROM ONLY %s r WHERE %s"
							  " AND r.%s::pg_catalog.text OPERATOR(pg_catalog.=) a.dedup_new_value)",
							  archive_last_entries(a, "a.dedup_action OPERATOR(pg_catalog.=) 'rename'",
												   sql_pk_list(t, "a")),
							  t->qualname, sql_pk_match(t, "r", "a"),
							  t->keys[t->rename_key].quoted));
		add_check(rsinfo, "renamed_rows_renamed", n == 0,
				  psprintf("%lld renamed rows no longer have their new value", (long long) n));
	}
}

/*
 * A merge's archives of its re-pointed tables hold, in all, as many removed
 * and re-pointed rows as it counted (as its rollback requires)
 */
static void
check_ref_archives(ReturnSetInfo *rsinfo, DedupJob *job)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(job->ref_archives)};
	SPITupleTable *refs;
	int64		removed = 0,
				repointed = 0;

	if (SPI_execute_with_args("SELECT e OPERATOR(pg_catalog.->>) 'oid', e OPERATOR(pg_catalog.->>) 'archive'"
							  " FROM pg_catalog.jsonb_array_elements($1::pg_catalog.jsonb) e",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read the archives of job %lld", (long long) job->job_id);
	refs = SPI_tuptable;
	for (uint64 i = 0; i < refs->numvals; i++)
	{
		Oid			childid = (Oid) strtoul(SPI_getvalue(refs->vals[i], refs->tupdesc, 1), NULL, 10);
		char	   *archive = SPI_getvalue(refs->vals[i], refs->tupdesc, 2);
		int64		nremoved,
					nrepointed;

		if (!OidIsValid(dedup_relid_by_name(archive)))
		{
			add_check(rsinfo, "ref_archives_complete", false,
					  psprintf("archive table %s no longer exists", archive));
			return;
		}
		/* a re-pointed table dropped since has no owner to grant to */
		archive_require_intact(archive, job->job_id,
							   get_rel_name(childid) ? childid : InvalidOid, job->submitted_by);
		archive_counts(archive, "repoint", &nremoved, &nrepointed);
		removed += nremoved;
		repointed += nrepointed;
	}
	add_check(rsinfo, "ref_archives_complete",
			  removed == job->refs_removed && repointed == job->refs_repointed,
			  psprintf("%lld of %lld removed and %lld of %lld re-pointed rows of the referencing tables archived",
					   (long long) removed, (long long) job->refs_removed,
					   (long long) repointed, (long long) job->refs_repointed));
}

/* the job's unique index, found as dedup_rollback finds it: renamed or moved too */
static void
check_unique(ReturnSetInfo *rsinfo, DedupJob *job, DedupTarget *t)
{
	bool		gone;
	Oid			idx = job_unique_index(job, t, &gone);
	bool		ok = false;
	char	   *name = job->unique_index;

	if (OidIsValid(idx))
	{
		name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(idx)), get_rel_name(idx));
		spi_exec_count(psprintf("SELECT i.indisunique AND i.indisvalid FROM pg_catalog.pg_index i"
								" WHERE i.indexrelid OPERATOR(pg_catalog.=) %u", idx),
					   SPI_OK_SELECT);
		ok = SPI_processed == 1 &&
			strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0;
	}
	add_check(rsinfo, "unique_index", ok,
			  ok ? psprintf("%s is a valid unique index", name)
			  : psprintf("%s is missing or not a valid unique index", name));
}

/*
 * A backfill's lists (with archive) hold as many linked, deleted and created
 * rows as it counted (as its rollback requires)
 */
static void
check_backfill_lists(ReturnSetInfo *rsinfo, DedupJob *job)
{
	static const char *const lists[3] = {"linked", "deleted", "created"};
	int64		have[3],
				want[3];

	for (int i = 0; i < 3; i++)
	{
		char	   *list = json_field_text(job->undo, lists[i]);

		if (list && !OidIsValid(dedup_relid_by_name(list)))
		{
			add_check(rsinfo, "archive_complete", false,
					  psprintf("archive table %s no longer exists", list));
			return;
		}
		if (list)
			archive_require_intact(list, job->job_id, InvalidOid, InvalidOid);
	}
	archive_backfill_counts(job, have, want);
	add_check(rsinfo, "archive_complete",
			  have[0] == want[0] && have[1] == want[1] && have[2] == want[2],
			  psprintf("%lld of %lld linked, %lld of %lld deleted and %lld of %lld created rows listed in the job's archives",
					   (long long) have[0], (long long) want[0], (long long) have[1],
					   (long long) want[1], (long long) have[2], (long long) want[2]));
}

/* checks of a backfill job: what it linked is still linked, its constraints hold */
static void
check_backfill(ReturnSetInfo *rsinfo, DedupJob *job)
{
	char	   *linked = json_field_text(job->undo, "linked");
	char	   *constraint = json_field_text(job->undo, "constraint");
	const char *fk = quote_identifier(json_field_text(job->undo, "fk_column"));
	char	   *child = psprintf("%s.%s",
								 quote_identifier(get_namespace_name(get_rel_namespace(job->relid))),
								 quote_identifier(get_rel_name(job->relid)));
	int64		reported = strtoll(json_field_text(job->undo, "orphan_rows"), NULL, 10) +
		strtoll(json_field_text(job->undo, "ambiguous_rows"), NULL, 10);
	int64		n;
	char	   *origin;

	if (linked)
		check_backfill_lists(rsinfo, job);
	if (linked && OidIsValid(dedup_relid_by_name(linked)))
	{
		archive_require_intact(linked, job->job_id, job->relid, InvalidOid);
		n = count_of(psprintf("SELECT pg_catalog.count(*) FROM %s l WHERE NOT EXISTS"
							  " (SELECT FROM ONLY %s c WHERE %s AND c.%s IS NOT NULL)",
							  linked, child,
							  key_archive_match(dedup_relid_by_name(linked), "c", "l",
												json_field_text(job->undo, "fk_column")), fk));
		add_check(rsinfo, "linked_rows_linked", n == 0,
				  psprintf("%lld rows the job linked are gone or NULL again", (long long) n));
	}
	/*
	 * As the extension's owner, the rows dedup_orphans lists for the job
	 * (those of its origin, from 1.5 on), read from its table: the
	 * view compares each row's origin with its job's by a subquery per row
	 * (seconds for a million orphans), here one for all.
	 */
	origin = job_origin_sql(job->job_id);
	spi_exec_as_owner(psprintf("SELECT pg_catalog.count(*) FROM %s.dedup_orphan o"
							   " WHERE o.job_id OPERATOR(pg_catalog.=) %lld%s%s",
							   dedup_ext_schema(), (long long) job->job_id,
							   origin ? " AND o.origin IS NOT DISTINCT FROM " : "", origin ? origin : ""),
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	n = spi_get_int64(0, 1);
	add_check(rsinfo, "orphans_listed", n == reported,
			  psprintf("%lld of %lld orphan and ambiguous rows listed in dedup_orphans",
					   (long long) n, (long long) reported));
	if (constraint)
	{
		n = count_of(psprintf("SELECT pg_catalog.count(*) FROM pg_catalog.pg_constraint c"
							  " WHERE c.conrelid OPERATOR(pg_catalog.=) %u"
							  " AND c.conname OPERATOR(pg_catalog.=) %s AND c.convalidated",
							  job->relid, sql_literal(constraint)));
		add_check(rsinfo, "foreign_key", n == 1,
				  psprintf("constraint %s is %s", quote_identifier(constraint),
						   n == 1 ? "valid" : "missing or not validated"));
	}
}

Datum
dedup_verify(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	DedupJob   *job;
	DedupTarget *t;
	char	   *filter;
	char	   *add_unique;
	int64		n;
	Oid			saved_user;
	int			saved_sec;
	int			nest;

	dedup_require_arg(fcinfo, 0, "job_id");
	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	job = job_fetch(PG_GETARG_INT64(0), false, false);

	/* a restored job's identifiers name other objects here (job_require_here) */
	if (!job->here)
	{
		add_check(rsinfo, "same_database", false,
				  "the job was restored from a dump of another database: the table, indexes and rows it names are that database's");
		SPI_finish();
		return (Datum) 0;
	}
	add_check(rsinfo, "job_done",
			  strcmp(job->state, "done") == 0 && job->rolled_back_by == 0,
			  job->rolled_back_by ?
			  psprintf("rolled back by job %lld", (long long) job->rolled_back_by) :
			  /* as dedup_jobs shows it: 'interrupted' for a running job whose worker is gone */
			  psprintf("state is %s", strcmp(job->state, "done") == 0 ? job->state :
					   job_effective_state(job->job_id)));
	if (strcmp(job->kind, "rollback") == 0 || job->rolled_back_by != 0 ||
		strcmp(job->state, "done") != 0)
	{
		SPI_finish();
		return (Datum) 0;
	}
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(job->relid)))
	{
		add_check(rsinfo, "table_exists", false, "the table of the job no longer exists");
		SPI_finish();
		return (Datum) 0;
	}

	/*
	 * A superuser verifying another role's job reads with that role's
	 * rights, or the table's owner's when the role owns it no more (or was
	 * dropped).  The filter is the submitter's code (its functions): never
	 * run with the owner's rights, which may be more.
	 */
	if (job_act_as_submitter(job, &saved_user, &saved_sec) && job_param(job, "filter"))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot verify job %lld: its table is no longer its submitter's, and its filter is the submitter's",
						(long long) job->job_id),
				 errdetail("dedup_ext would run the filter with the rights of the table's owner now, which may be more than the submitter's."),
				 errhint("Check the table by hand against archive table %s, or give the table back to the submitter.",
						 job->archive_table ? job->archive_table : "(none)")));
	if (strcmp(job->kind, "backfill") == 0)
	{
		check_backfill(rsinfo, job);
		job_act_as_caller(saved_user, saved_sec);
		SPI_finish();
		return (Datum) 0;
	}

	/* the filter as stored (ISO constants), under the settings of the job's session */
	nest = NewGUCNestLevel();
	job_apply_settings(job, true);
	filter = job_param(job, "filter_sql") ? job_param(job, "filter_sql") : job_param(job, "filter");
	t = dedup_target_open(job->relid, job_param_array(job, "key"),
						  filter ? cstring_to_text(filter) : NULL,
						  strcmp(job_param(job, "nulls_distinct"), "true") == 0,
						  false, AccessShareLock);
	if (job_param(job, "rename_column"))
		dedup_target_set_rename(t);

	n = count_of(psprintf("SELECT pg_catalog.count(*) FROM (SELECT FROM ONLY %s r WHERE %s"
						  " GROUP BY %s HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1) g",
						  t->qualname, sql_rows_where(t, true), sql_key_list(t, "r")));
	add_check(rsinfo, "no_duplicates", n == 0,
			  psprintf("%lld duplicate groups under the key", (long long) n));
	if (job->archive_table)
		check_archive(rsinfo, job, t);
	if (job->ref_archives)
		check_ref_archives(rsinfo, job);
	add_unique = job_param(job, "add_unique");
	if (job->unique_index)
		check_unique(rsinfo, job, t);
	else if (add_unique && strcmp(add_unique, "true") == 0)
	{
		/* the job found an index that did the work, and added none */
		char	   *existing = unique_existing(t);

		add_check(rsinfo, "unique_index", existing != NULL,
				  existing ? psprintf("%s keeps the key unique (the job added none: it was there)", existing)
				  : "the job recorded no unique index, and none keeps the key unique");
	}
	AtEOXact_GUC(true, nest);
	job_act_as_caller(saved_user, saved_sec);
	SPI_finish();
	return (Datum) 0;
}

/*
 * undo_chain.c
 *		Which value a rollback gives back to a row that a job changed more
 *		than once.
 *
 * A background rename or merge works in passes while the application keeps
 * writing, so one row can be changed by the job, then by a writer, then by
 * the job again: its archive holds one entry per change, each with the
 * value the row had before that change and the value the job gave it.  The
 * value before the job is the first entry's only when the entries form an
 * unbroken chain (each one's old value is the value the previous one gave);
 * where a writer's change breaks it, the writer's value is what goes back.
 * Walking the chain newest first, from the row's current value, finds that.
 */
#include "dedup_ext.h"

#include "executor/spi.h"
#include "utils/lsyscache.h"

/*
 * The order in which the entries of archive a were written: by dedup_xact,
 * then (within a transaction, or in an archive without it) by ctid.  desc:
 * newest first.
 */
static char *
write_order(const char *archive, bool desc)
{
	const char *dir = desc ? " DESC" : "";

	if (get_attnum(dedup_relid_by_name(archive), "dedup_xact") != InvalidAttrNumber)
		return psprintf("a.dedup_xact%s, a.ctid%s", dir, dir);
	return psprintf("a.ctid%s", dir);
}

/* the entries of the log's action, but those it supersedes */
static char *
entries_where(const UndoLog *log)
{
	return psprintf("a.dedup_action OPERATOR(pg_catalog.=) %s%s%s", sql_literal(log->action),
					log->superseded ? " AND NOT " : "", log->superseded ? log->superseded : "");
}

/*
 * The newest entry of every row in archive whose entries match where (alias
 * a), rows told apart by key ("a.id, ..."): a subquery
 */
char *
archive_last_entries(const char *archive, const char *where, const char *key)
{
	return psprintf("(SELECT DISTINCT ON (%s) a.* FROM %s a WHERE %s ORDER BY %s, %s)",
					key, archive, where, key, write_order(archive, true));
}

/* the newest entry of every row the job changed */
char *
undo_last_entries(const UndoLog *log)
{
	return archive_last_entries(log->archive, entries_where(log), log->row_key(log, "a"));
}

/*
 * For every row of the table that still holds the value the job's last
 * change gave it, the entry whose archived value goes back: a subquery with
 * the archive's columns.  The walk starts at the row's newest entry and
 * steps to the one before while that one gave the value the later one found
 * (dedup_undo_step counts the entries of a row, newest first).
 */
char *
undo_values_before(const UndoLog *log)
{
	char	   *key = log->row_key(log, "a");

	return psprintf("(WITH RECURSIVE dedup_e AS ("
					"SELECT a.*, pg_catalog.row_number() OVER (PARTITION BY %s ORDER BY %s) AS dedup_undo_step"
					" FROM %s a WHERE %s),"
					" dedup_walk AS ("
					"SELECT e.* FROM dedup_e e WHERE e.dedup_undo_step OPERATOR(pg_catalog.=) 1"
					" AND EXISTS (SELECT FROM ONLY %s c WHERE %s AND %s)"
					" UNION ALL SELECT e.* FROM dedup_walk p JOIN dedup_e e ON %s"
					" AND e.dedup_undo_step OPERATOR(pg_catalog.=) (p.dedup_undo_step OPERATOR(pg_catalog.+) 1)"
					" WHERE %s)"
					" SELECT DISTINCT ON (%s) a.* FROM dedup_walk a ORDER BY %s, a.dedup_undo_step DESC)",
					key, write_order(log->archive, true), log->archive, entries_where(log),
					log->table, log->same_row(log, "c", "e"), log->left_at(log, "c", "e"),
					log->same_row(log, "p", "e"), log->left_at(log, "p", "e"),
					key, key);
}

/*
 * How many rows the job changed hold a value that is neither the one its
 * last change gave them nor one they had before any of its changes: someone
 * else changed them since, and a rollback would overwrite that.  A row that
 * holds an archived old value was set back by hand (or by a writer) and
 * needs nothing.  needs_nothing: another condition on row c under which it
 * needs nothing, or NULL.
 */
int64
undo_count_changed(const UndoLog *log, const char *needs_nothing)
{
	spi_exec_count(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s c, %s l WHERE %s AND NOT (%s)%s%s%s"
							" AND NOT EXISTS (SELECT FROM %s a WHERE %s AND %s AND %s)",
							log->table, undo_last_entries(log), log->same_row(log, "c", "l"),
							log->left_at(log, "c", "l"),
							needs_nothing ? " AND NOT (" : "", needs_nothing ? needs_nothing : "",
							needs_nothing ? ")" : "",
							log->archive, entries_where(log), log->same_row(log, "c", "a"),
							log->same_value(log, "c", "a")),
				   SPI_OK_SELECT);
	return spi_get_int64(0, 1);
}

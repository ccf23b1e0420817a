/*
 * unique.c
 *		add_unique: the unique index that keeps duplicates from coming back.
 *
 * The index is built first (CREATE UNIQUE INDEX takes a SHARE lock, which
 * lets readers in) and then, when it can be one, attached as a table
 * constraint (ADD CONSTRAINT ... USING INDEX is a catalog change only), so
 * INSERT ... ON CONFLICT (key) and ON CONFLICT ON CONSTRAINT both work.  With
 * a filter it stays a partial unique index, which ON CONFLICT (key) WHERE
 * <filter> infers.
 */
#include "dedup_ext.h"

#include "commands/defrem.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

/*
 * The name of the index: like PostgreSQL's own, table_col1_col2_key for a
 * constraint (no filter), table_col1_col2_idx for a partial index.
 */
char *
unique_index_name(DedupTarget *t, bool *is_constraint)
{
	StringInfoData colnames;

	initStringInfo(&colnames);
	for (int i = 0; i < t->nkeys; i++)
		appendStringInfo(&colnames, "%s%s", i > 0 ? "_" : "", t->keys[i].name);
	*is_constraint = (t->filter_bare == NULL);
	return ChooseRelationName(t->relname, colnames.data, *is_constraint ? "key" : "idx",
							  get_rel_namespace(t->relid), *is_constraint);
}

/* CREATE UNIQUE INDEX [CONCURRENTLY] name ON table (key) [NULLS NOT DISTINCT] [WHERE filter] */
char *
unique_index_sql(DedupTarget *t, const char *name, bool concurrently)
{
	const char *nulls_clause = "";

	if (!t->nulls_distinct)
	{
#ifdef DEDUP_HAVE_NULLS_NOT_DISTINCT
		nulls_clause = " NULLS NOT DISTINCT";
#else
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("add_unique with nulls_distinct => false needs PostgreSQL 15 or later")));
#endif
	}
	return psprintf("CREATE UNIQUE INDEX%s %s ON %s (%s)%s%s%s",
					concurrently ? " CONCURRENTLY" : "", quote_identifier(name), t->qualname,
					sql_key_list(t, NULL), nulls_clause,
					t->filter_bare ? " WHERE " : "", t->filter_bare ? t->filter_bare : "");
}

/* attach the index as the table's UNIQUE constraint (a catalog change only) */
char *
unique_constraint_sql(DedupTarget *t, const char *name)
{
	return psprintf("ALTER TABLE %s ADD CONSTRAINT %s UNIQUE USING INDEX %s",
					t->qualname, quote_identifier(name), quote_identifier(name));
}

char *
unique_create(DedupTarget *t, bool *is_constraint)
{
	char	   *name = unique_index_name(t, is_constraint);

	spi_exec_count(unique_index_sql(t, name, false), SPI_OK_UTILITY);
	if (*is_constraint)
		spi_exec_count(unique_constraint_sql(t, name), SPI_OK_UTILITY);
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(t->relid)), name);
}

/*
 * args.c
 *		Validation of the caller's arguments into a DedupTarget.
 *
 * Everything a call needs to know about the relation and the key is checked
 * here, before the call changes anything, so that a refused call changes
 * nothing.  The caller's filter and keep are parsed as exactly one
 * expression / one ORDER BY list, analyzed against the relation, and then
 * deparsed by ruleutils: generated SQL only ever contains that deparsed text,
 * never the caller's string, so nothing can be appended to a statement.
 */
#include "dedup_ext.h"

#include "access/genam.h"
#include "access/relation.h"
#include "catalog/catalog.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_index.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "parser/parse_collate.h"
#include "parser/parse_expr.h"
#include "parser/parse_oper.h"
#include "parser/parse_relation.h"
#include "parser/scansup.h"
#include "parser/parser.h"
#include "rewrite/rewriteManip.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/typcache.h"
#include "utils/regproc.h"

void
dedup_require_arg(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"%s\" must not be null", argname)));
}

/*
 * A type's name for a cast, without a length: format_type_be_qualified()
 * gives "character" for bpchar, which a cast reads as char(1).
 */
char *
sql_type(Oid type)
{
	return format_type_extended(type, -1, FORMAT_TYPE_FORCE_QUALIFY | FORMAT_TYPE_TYPEMOD_GIVEN);
}

/* the fixed-size part of relation relid's pg_class row */
FormData_pg_class
rel_class(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	FormData_pg_class form;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	form = *(Form_pg_class) GETSTRUCT(tup);
	ReleaseSysCache(tup);
	return form;
}

/*
 * Has relation relid a BEFORE DELETE row trigger (enabled or not), which may
 * skip the delete of a row?
 */
bool
has_before_delete_trigger(Oid relid)
{
	Relation	rel = relation_open(relid, AccessShareLock);
	bool		found = rel->trigdesc != NULL && rel->trigdesc->trig_delete_before_row;

	relation_close(rel, AccessShareLock);
	return found;
}

/* the owner of relation relid */
Oid
get_rel_owner(Oid relid)
{
	return rel_class(relid).relowner;
}

/* "OPERATOR(schema.name)" for an operator, so that search_path cannot matter */
char *
sql_operator(Oid opno)
{
	HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opno));
	Form_pg_operator op;
	char	   *result;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", opno);
	op = (Form_pg_operator) GETSTRUCT(tup);
	result = psprintf("OPERATOR(%s.%s)",
					  quote_identifier(get_namespace_name(op->oprnamespace)),
					  NameStr(op->oprname));
	ReleaseSysCache(tup);
	return result;
}

/* relid of a relation named by a qualified (quoted) name, or InvalidOid */
Oid
dedup_relid_by_name(const char *qualified)
{
	List	   *names = stringToQualifiedNameList(qualified);

	return RangeVarGetRelid(makeRangeVarFromNameList(names), NoLock, true);
}

void
dedup_check_owner(Oid relid)
{
	if (!dedup_rel_ownercheck(relid, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of table %s", get_rel_name(relid)),
				 errdetail("dedup_ext changes a table only for its owner or a member of the owning role.")));
}

static const char *
relkind_name(char relkind)
{
	switch (relkind)
	{
		case RELKIND_VIEW:
			return "a view";
		case RELKIND_MATVIEW:
			return "a materialized view";
		case RELKIND_FOREIGN_TABLE:
			return "a foreign table";
		case RELKIND_PARTITIONED_TABLE:
			return "a partitioned table";
		case RELKIND_INDEX:
		case RELKIND_PARTITIONED_INDEX:
			return "an index";
		case RELKIND_SEQUENCE:
			return "a sequence";
		case RELKIND_COMPOSITE_TYPE:
			return "a composite type";
		case RELKIND_TOASTVALUE:
			return "a TOAST table";
		default:
			return "not a table";
	}
}

/*
 * Are two values of the column equal exactly when their bytes are?  For
 * text, varchar and char(n) (trailing blanks aside, which their operators
 * ignore under any collation) under a deterministic collation they are; a
 * collation other than "C" then only makes the comparisons of a sort slower
 * (strcoll, no abbreviated keys), not the groups different.
 */
static bool
bytewise_equality(Form_pg_attribute att)
{
	Oid			base = getBaseType(att->atttypid);

	if (base != TEXTOID && base != VARCHAROID && base != BPCHAROID)
		return false;
	return OidIsValid(att->attcollation) && att->attcollation != C_COLLATION_OID &&
		get_collation_isdeterministic(att->attcollation);
}

/* Fill a DedupColumn from the relation's catalog entry for attnum. */
static void
fill_column(Relation rel, AttrNumber attnum, DedupColumn *col)
{
	Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
	TypeCacheEntry *tce;

	col->name = pstrdup(NameStr(att->attname));
	col->quoted = pstrdup(quote_identifier(col->name));
	col->type = att->atttypid;
	tce = lookup_type_cache(att->atttypid, TYPECACHE_EQ_OPR);
	col->eq_opr = tce->eq_opr;
	col->eq_sql = OidIsValid(tce->eq_opr) ? sql_operator(tce->eq_opr) : NULL;
	col->bytewise_eq = bytewise_equality(att);
}

/* argname: the argument key came as ("key", or backfill_fk's "child_key") */
static void
open_key(DedupTarget *t, Relation rel, ArrayType *key, const char *argname)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (ARR_NDIM(key) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"%s\" must be a one-dimensional array of column names", argname)));
	deconstruct_array(key, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("argument \"%s\" must name at least one column", argname)));

	t->nkeys = n;
	t->keys = palloc0(sizeof(DedupColumn) * n);
	for (int i = 0; i < n; i++)
	{
		char	   *name;
		AttrNumber	attnum;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("argument \"%s\" must not contain NULL", argname)));
		name = TextDatumGetCString(elems[i]);
		attnum = get_attnum(t->relid, name);
		if (attnum == InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" named in %s does not exist", name, argname),
					 errdetail("Table %s has no column \"%s\".", t->qualname, name)));
		if (attnum < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("column \"%s\" named in %s is a system column", name, argname)));
		for (int j = 0; j < i; j++)
			if (strcmp(t->keys[j].name, name) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_COLUMN),
						 errmsg("column \"%s\" appears more than once in %s", name, argname)));

		fill_column(rel, attnum, &t->keys[i]);
		if (!OidIsValid(t->keys[i].eq_opr))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("key column \"%s\" has type %s, which has no equality operator",
							name, format_type_be(t->keys[i].type)),
					 errhint("Key columns need a type with a default btree or hash operator class; use a cast in a generated column if needed.")));
	}
}

/*
 * A preview and every job sort each group's rows (a window over the key):
 * a key type with hash equality only (xid, cid) cannot be sorted.  The
 * audit functions group by hashing and take it.
 */
void
dedup_target_require_sort(DedupTarget *t, const char *fn)
{
	for (int i = 0; i < t->nkeys; i++)
		if (!OidIsValid(lookup_type_cache(t->keys[i].type, TYPECACHE_LT_OPR)->lt_opr))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("key column %s has type %s, which %s cannot sort",
							t->keys[i].quoted, format_type_be(t->keys[i].type), fn),
					 errdetail("Its type has an equality operator but no ordering (no btree operator class)."),
					 errhint("dedup_audit and dedup_groups take this key; for the rest, key on a generated column of a type that sorts.")));
}

static void
open_primary_key(DedupTarget *t, Relation rel)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	Relation	idx;

	t->npk = 0;
	if (!OidIsValid(pkoid))
		return;
	idx = index_open(pkoid, AccessShareLock);
	t->npk = idx->rd_index->indnkeyatts;
	t->pk = palloc0(sizeof(DedupColumn) * t->npk);
	for (int i = 0; i < t->npk; i++)
		fill_column(rel, idx->rd_index->indkey.values[i], &t->pk[i]);
	index_close(idx, AccessShareLock);
}

/*
 * Parse "SELECT <prefix> <text>" and insist on exactly one SELECT whose only
 * clause is the one the argument stands for (WHERE or ORDER BY).  Anything
 * else -- a second statement, a UNION, a LIMIT -- means the argument was more
 * than one expression or ORDER BY list.
 */
static SelectStmt *
parse_clause(const char *argname, const char *prefix, const char *text)
{
	char	   *sql = psprintf("SELECT %s\n%s\n", prefix, text);
	List	   *raw = raw_parser(sql, RAW_PARSE_DEFAULT);
	SelectStmt *s;
	bool		is_where = strcmp(prefix, "WHERE") == 0;

	if (list_length(raw) != 1 ||
		!IsA(((RawStmt *) linitial(raw))->stmt, SelectStmt))
		goto not_one;
	s = (SelectStmt *) ((RawStmt *) linitial(raw))->stmt;
	if (s->op != SETOP_NONE || s->targetList || s->fromClause ||
		s->distinctClause || s->intoClause || s->groupClause ||
		s->havingClause || s->windowClause || s->valuesLists ||
		s->limitCount || s->limitOffset || s->lockingClause || s->withClause)
		goto not_one;
	if (is_where ? (s->sortClause != NIL || s->whereClause == NULL)
		: (s->whereClause != NULL || s->sortClause == NIL))
		goto not_one;
	return s;

not_one:
	ereport(ERROR,
			(errcode(ERRCODE_SYNTAX_ERROR),
			 errmsg("argument \"%s\" must be %s", argname,
					is_where ? "a single boolean expression" : "a single ORDER BY list"),
			 errdetail("Given: %s", text)));
	pg_unreachable();
}

/*
 * Run raw parsing and parse analysis of a caller's argument, prefixing any
 * error with the argument's name.  Nothing has been changed yet when this
 * runs, so rethrowing (rather than recovering in a subtransaction) is safe.
 */
typedef struct ParsedArg
{
	Node	   *expr;			/* the filter expression */
	List	   *sortby;			/* the keep list: SortBy nodes ... */
	List	   *exprs;			/* ... and their analyzed expressions */
	bool		has_aggs;
} ParsedArg;

static void
analyze_arg(DedupTarget *t, Relation rel, const char *argname,
			const char *text, ParsedArg *out)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	bool		is_filter = strcmp(argname, "filter") == 0;

	PG_TRY();
	{
		SelectStmt *s = parse_clause(argname, is_filter ? "WHERE" : "ORDER BY", text);
		ParseState *pstate = make_parsestate(NULL);
		ParseNamespaceItem *nsitem;

		pstate->p_sourcetext = text;
		nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock,
											   NULL, false, true);
		addNSItemToQuery(pstate, nsitem, false, true, true);
		if (is_filter)
		{
			out->expr = transformExpr(pstate, s->whereClause, EXPR_KIND_WHERE);
		}
		else
		{
			ListCell   *lc;

			out->sortby = s->sortClause;
			foreach(lc, s->sortClause)
			{
				SortBy	   *sb = lfirst_node(SortBy, lc);
				Node	   *e = transformExpr(pstate, sb->node, EXPR_KIND_WINDOW_ORDER);

				assign_expr_collations(pstate, e);
				out->exprs = lappend(out->exprs, e);
			}
		}
		out->has_aggs = pstate->p_hasAggs;
		free_parsestate(pstate);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		if (strncmp(edata->message, "argument \"", 10) != 0)
			edata->message = psprintf("invalid %s: %s", argname, edata->message);
		/* positions refer to our wrapper text, not to anything the caller sees */
		edata->cursorpos = 0;
		edata->internalpos = 0;
		ReThrowError(edata);
	}
	PG_END_TRY();

	if (out->has_aggs)
		ereport(ERROR,
				(errcode(ERRCODE_GROUPING_ERROR),
				 errmsg("aggregate functions are not allowed in %s", argname)));
}

/*
 * Deparse with only pg_catalog in the search path, so that every other
 * function, operator and type in the text is schema-qualified: the text
 * means the same under any search_path, including the restricted one of a
 * background worker, which parses it again.  Its constants are written as
 * pg_dump writes them, in the styles every setting reads back alike: a
 * date written in the session's DateStyle (SQL, DMY: 01/02/2024) was read
 * back by a worker at ISO, MDY as another day, and a time zone abbreviation
 * (IST in Asia/Kolkata) as another zone's.
 */
static char *
deparse_qualified(Node *expr, const char *alias, Oid relid, bool prefix)
{
	int			nest = NewGUCNestLevel();
	char	   *text;

	(void) set_config_option("search_path", "pg_catalog", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("DateStyle", "ISO", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("IntervalStyle", "postgres", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("extra_float_digits", "3", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	text = deparse_expression(expr, deparse_context_for(alias, relid), prefix, false);
	AtEOXact_GUC(true, nest);
	return text;
}

static void
open_filter(DedupTarget *t, Relation rel, const char *filter)
{
	ParsedArg	p = {0};
	Node	   *expr;
	Oid			type;

	analyze_arg(t, rel, "filter", filter, &p);
	expr = p.expr;
	type = exprType(expr);
	if (type != BOOLOID && type != UNKNOWNOID && getBaseType(type) != BOOLOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("argument \"filter\" must be a boolean expression, not type %s",
						format_type_be(type)),
				 errdetail("Given: %s", filter)));
	expr = coerce_to_boolean(NULL, expr, "filter");
	assign_expr_collations(NULL, expr);

	t->filter_text = pstrdup(filter);
	t->filter_r = deparse_qualified(expr, "r", t->relid, true);
	t->filter_bare = deparse_qualified(expr, t->relname, t->relid, false);
	t->filter_expr = expr;
	t->filter_immutable = !contain_mutable_functions(expr) && !checkExprHasSubLink(expr);
}

/*
 * Validate rel, key and filter.  check_owner: the call will change the table
 * (or says what a change would do), so only its owner may make it.  The lock
 * is held to the end of the transaction.
 */
DedupTarget *
dedup_target_open(Oid relid, ArrayType *key, text *filter, bool nulls_distinct,
				  bool check_owner, LOCKMODE lockmode)
{
	return dedup_target_open_as(relid, key, filter, nulls_distinct, check_owner, lockmode,
								"rel", "key");
}

/* dedup_target_open, for a function whose rel and key arguments have other names */
DedupTarget *
dedup_target_open_as(Oid relid, ArrayType *key, text *filter, bool nulls_distinct,
					 bool check_owner, LOCKMODE lockmode, const char *relarg, const char *keyarg)
{
	DedupTarget *t = palloc0(sizeof(DedupTarget));
	HeapTuple	tup;
	Form_pg_class classform;
	Relation	rel;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u given as argument \"%s\" does not exist", relid, relarg)));
	classform = (Form_pg_class) GETSTRUCT(tup);
	t->relid = relid;
	t->relowner = classform->relowner;
	t->relname = pstrdup(NameStr(classform->relname));
	t->qualname = quote_qualified_identifier(get_namespace_name(classform->relnamespace),
											 t->relname);
	if (classform->relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("argument \"%s\" must be a table, but \"%s\" is %s",
						relarg, t->relname, relkind_name(classform->relkind)),
				 classform->relkind == RELKIND_PARTITIONED_TABLE ?
				 errhint("Deduplicate each partition: that finds every duplicate when the key contains the partition key.") : 0));
	ReleaseSysCache(tup);

	/* a job's archive is the extension's data too: what its rollback restores */
	if (check_owner)
	{
		const char *not_user = IsCatalogRelationOid(relid) ? "a system catalog" :
			OidIsValid(getExtensionOfObject(RelationRelationId, relid)) ? "part of an extension" :
			strcmp(get_namespace_name(get_rel_namespace(relid)), "dedup_archive") == 0 ?
			"in schema dedup_archive, where dedup_ext keeps its archives" : NULL;

		if (not_user)
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("argument \"%s\" must be a user table, but \"%s\" is %s",
							relarg, t->relname, not_user)));
	}
	if (check_owner)
		dedup_check_owner(relid);
	LockRelationOid(relid, lockmode);
	/* it may have been dropped while we waited for the lock */
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"%s\" was dropped concurrently", t->relname)));
	/* every statement reads ONLY the table: its children's rows would go unseen */
	if (find_inheritance_children(relid, NoLock) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("argument \"%s\" must be a table without inheritance children, but \"%s\" has some",
						relarg, t->relname),
				 errdetail("Its children's rows would be neither read nor changed, though a query of it returns them."),
				 errhint("Deduplicate each table of the hierarchy on its own.")));

	rel = relation_open(relid, NoLock);
	open_key(t, rel, key, keyarg);
	open_primary_key(t, rel);
	t->nulls_distinct = nulls_distinct;
	if (filter != NULL)
		open_filter(t, rel, text_to_cstring(filter));
	t->rename_key = -1;
	relation_close(rel, NoLock);
	return t;
}

/* pk columns (or ctid) in ascending or descending order, alias r */
static void
append_tiebreak(StringInfo buf, DedupTarget *t, bool descending)
{
	const char *dir = descending ? " DESC" : "";

	if (t->npk == 0)
		appendStringInfo(buf, "r.ctid%s", dir);
	for (int i = 0; i < t->npk; i++)
		appendStringInfo(buf, "%sr.%s%s", i > 0 ? ", " : "", t->pk[i].quoted, dir);
}

/*
 * keep: 'first' (lowest primary key, or ctid), 'last', or an ORDER BY list;
 * the list is always followed by the primary key so that the survivor of a
 * group is deterministic.
 */
void
dedup_target_set_keep(DedupTarget *t, const char *keep)
{
	StringInfoData buf;
	Relation	rel;
	ParsedArg	p = {0};
	ListCell   *ls,
			   *le;
	StringInfoData bare;
	char	   *word;

	initStringInfo(&buf);
	/* as SQL's words: in any case, with white space around */
	while (scanner_isspace(*keep))
		keep++;
	word = pstrdup(keep);
	for (char *end = word + strlen(word); end > word && scanner_isspace(end[-1]); end--)
		end[-1] = '\0';
	if (pg_strcasecmp(word, "first") == 0 || pg_strcasecmp(word, "last") == 0)
	{
		bool		last = pg_strcasecmp(word, "last") == 0;

		append_tiebreak(&buf, t, last);
		t->order_r = buf.data;
		t->keep_extreme = last ? 'l' : 'f';
		t->keep_sql = pstrdup(last ? "last" : "first");
		return;
	}

	rel = relation_open(t->relid, NoLock);
	analyze_arg(t, rel, "keep", keep, &p);
	relation_close(rel, NoLock);

	initStringInfo(&bare);
	forboth(ls, p.sortby, le, p.exprs)
	{
		SortBy	   *sb = lfirst_node(SortBy, ls);
		Node	   *e = lfirst(le);
		Oid			type = exprType(e);
		int			from;

		if (contain_volatile_functions(e))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid keep: item %d uses a volatile function", foreach_current_index(ls) + 1),
					 errdetail("The survivor of a group must not depend on chance: a background job reads the groups more than once.")));
		/*
		 * in SQL's ORDER BY 3 means a column of the select list; there is
		 * none here, and an expression of no column ('1 + 1') orders nothing
		 */
		if (!contain_vars_of_level(e, 0))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid keep: item %d is a constant, which orders nothing",
							foreach_current_index(ls) + 1),
					 errhint("Name columns or expressions over them; a number does not refer to a column here.")));
		if (bare.len > 0)
			appendStringInfoString(&bare, ", ");
		appendStringInfoString(&bare, deparse_qualified(e, t->relname, t->relid, false));
		appendStringInfoString(&buf, deparse_qualified(e, "r", t->relid, true));
		from = buf.len;
		if (sb->sortby_dir == SORTBY_USING)
		{
			Oid			opno = compatible_oper_opid(sb->useOp, type, type, false);
			Oid			opfamily;
			Oid			opcintype;
			int16		strategy;

			if (!get_ordering_op_properties(opno, &opfamily, &opcintype, &strategy))
				ereport(ERROR,
						(errcode(ERRCODE_WRONG_OBJECT_TYPE),
						 errmsg("invalid keep: operator %s is not a valid ordering operator",
								strVal(llast(sb->useOp)))));
			appendStringInfo(&buf, " USING %s", sql_operator(opno));
		}
		else
		{
			Oid			sortop;

			get_sort_group_operators(type, false, false, false, &sortop, NULL, NULL, NULL);
			if (!OidIsValid(sortop))
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_FUNCTION),
						 errmsg("invalid keep: item %d is of type %s, which has no ordering",
								foreach_current_index(ls) + 1, format_type_be(type)),
						 errhint("Order by columns or expressions whose type sorts (it has a btree operator class), or name an ordering operator with USING.")));
			if (sb->sortby_dir == SORTBY_DESC)
				appendStringInfoString(&buf, " DESC");
		}
		if (sb->sortby_nulls == SORTBY_NULLS_FIRST)
			appendStringInfoString(&buf, " NULLS FIRST");
		else if (sb->sortby_nulls == SORTBY_NULLS_LAST)
			appendStringInfoString(&buf, " NULLS LAST");
		/* the same direction for the bare list */
		appendStringInfoString(&bare, buf.data + from);
		appendStringInfoString(&buf, ", ");
	}
	append_tiebreak(&buf, t, false);
	t->order_r = buf.data;
	t->keep_sql = bare.data;
}

/*
 * rename: the last key column of a string type gets a suffix made of the
 * primary key, so a primary key is needed.
 */
void
dedup_target_set_rename(DedupTarget *t)
{
	for (int i = t->nkeys - 1; i >= 0 && t->rename_key < 0; i--)
		if (TypeCategory(getBaseType(t->keys[i].type)) == TYPCATEGORY_STRING)
			t->rename_key = i;
	if (t->rename_key < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("action \"rename\" needs a key column of a string type"),
				 errdetail("The renamed column gets the suffix '-' || primary key; no column of the key of %s is text, varchar or similar.",
						   t->qualname),
				 errhint("Use action => 'delete' or 'merge', or add a text column to the key.")));
	if (getBaseType(t->keys[t->rename_key].type) == NAMEOID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("action \"rename\" cannot change key column %s of %s: it is of type name",
						t->keys[t->rename_key].quoted, t->qualname),
				 errdetail("A name holds at most %d bytes and cuts longer values silently: a renamed value could be cut back to a duplicate.",
						   NAMEDATALEN - 1),
				 errhint("Use action => 'delete' or 'merge', or put a column of type text after it in the key.")));
	if (get_attgenerated(t->relid, get_attnum(t->relid, t->keys[t->rename_key].name)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("action \"rename\" cannot change key column %s of %s: it is a generated column",
						t->keys[t->rename_key].quoted, t->qualname),
				 errdetail("The renamed column is the key's last column of a string type; a generated column takes only the value its expression gives."),
				 errhint("Use action => 'delete' or 'merge', or put a column that can be changed last in the key.")));
	if (t->npk == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("action \"rename\" needs a table with a primary key"),
				 errdetail("The renamed value is suffixed with the primary key, and %s has none.",
						   t->qualname),
				 errhint("Add a primary key, or use action => 'delete'.")));
	for (int i = 0; i < t->npk; i++)
		if (strcmp(t->pk[i].name, t->keys[t->rename_key].name) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("action \"rename\" cannot change key column %s of %s: it is part of the primary key",
							t->keys[t->rename_key].quoted, t->qualname),
					 errdetail("Rows are told apart, and their renames undone, by their primary key."),
					 errhint("Use action => 'delete' or 'merge', or put a column outside the primary key last in the key.")));
}

/* the columns and operators of a row of SQL_REFERENCING_FKS; returns their number */
int
fk_keys(HeapTuple tup, TupleDesc desc, Datum **conkey, Datum **confkey, Datum **eqops)
{
	bool		isnull;
	int			n;

	deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 3, &isnull)),
					  INT2OID, 2, true, TYPALIGN_SHORT, conkey, NULL, &n);
	deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 4, &isnull)),
					  INT2OID, 2, true, TYPALIGN_SHORT, confkey, NULL, &n);
	deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 5, &isnull)),
					  OIDOID, 4, true, TYPALIGN_INT, eqops, NULL, &n);
	return n;
}

/*
 * " COLLATE x" for comparing a referencing column (child, cattnum) with the
 * column it references (parent, pattnum), or "": the rows PostgreSQL 15's
 * own check of a referenced row's removal finds (ri_triggers.c).  That
 * compares under the referencing column's collation, unless the referenced
 * column's is another and nondeterministic.  Columns of two collations
 * compare under neither by themselves (42P22); under the referencing
 * column's own, an index on it stays usable.
 */
char *
fk_collate(Oid parent, AttrNumber pattnum, Oid child, AttrNumber cattnum)
{
	Oid			type,
				pcoll,
				ccoll;
	int32		typmod;

	get_atttypetypmodcoll(parent, pattnum, &type, &typmod, &pcoll);
	get_atttypetypmodcoll(child, cattnum, &type, &typmod, &ccoll);
	if (!OidIsValid(pcoll) || !OidIsValid(ccoll) || pcoll == ccoll)
		return "";
	return psprintf(" COLLATE %s",
					generate_collation_name(get_collation_isdeterministic(pcoll) ? ccoll : pcoll));
}

/*
 * The name (quoted) of a rule of table relid on event ev_type (pg_rewrite.
 * ev_type: '2' UPDATE, '3' INSERT, '4' DELETE) that fires in this session,
 * or NULL
 */
char *
enabled_rule(Oid relid, char ev_type)
{
	Oid			argtypes[2] = {OIDOID, CHAROID};
	Datum		args[2] = {ObjectIdGetDatum(relid), CharGetDatum(ev_type)};

	if (SPI_execute_with_args("SELECT r.rulename::pg_catalog.text FROM pg_catalog.pg_rewrite r"
							  " WHERE r.ev_class OPERATOR(pg_catalog.=) $1 AND r.ev_type OPERATOR(pg_catalog.=) $2"
							  /* as the rewriter fires them under session_replication_role */
							  " AND r.ev_enabled OPERATOR(pg_catalog.=) ANY (CASE"
							  "  WHEN pg_catalog.current_setting('session_replication_role')"
							  "       OPERATOR(pg_catalog.=) 'replica' THEN '{R,A}'"
							  "  ELSE '{O,A}' END::pg_catalog.\"char\"[])"
							  " ORDER BY 1 LIMIT 1", 2, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read rules");
	if (SPI_processed == 0)
		return NULL;
	return pstrdup(quote_identifier(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)));
}

/*
 * Deleting rows of a table (or updating column att of it) would make the
 * foreign keys that cascade, or set NULL or a default, change rows of other
 * tables that no archive keeps.  Refuse; merge re-points those references.
 * what: the verb for the message ("delete duplicate", "delete orphan", ...);
 * hint: what to do instead, or NULL.
 */
void
refuse_cascading_references(Oid relid, const char *qualname, const char *what,
							bool on_delete, AttrNumber att, const char *hint)
{
	Oid			types[3] = {OIDOID, BOOLOID, INT2OID};
	Datum		values[3] = {ObjectIdGetDatum(relid), BoolGetDatum(on_delete), Int16GetDatum(att)};

	if (SPI_execute_with_args("SELECT c.conname::pg_catalog.text, c.conrelid::pg_catalog.regclass::pg_catalog.text"
							  " FROM pg_catalog.pg_constraint c"
							  " WHERE c.contype OPERATOR(pg_catalog.=) 'f'"
							  " AND c.confrelid OPERATOR(pg_catalog.=) $1"
							  " AND (CASE WHEN $2 THEN c.confdeltype ELSE c.confupdtype END)"
							  "     OPERATOR(pg_catalog.=) ANY ('{c,n,d}'::pg_catalog.\"char\"[])"
							  " AND ($3 OPERATOR(pg_catalog.=) 0 OR $3 OPERATOR(pg_catalog.=) ANY (c.confkey))"
							  " ORDER BY 1 LIMIT 1",
							  3, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read foreign keys");
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot %s rows of %s: foreign key %s on %s would change rows there that no archive keeps",
						what, qualname,
						quote_identifier(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)),
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2)),
				 errdetail("The foreign key cascades, or sets NULL or a default, on %s.",
						   on_delete ? "delete" : "update"),
				 hint ? errhint("%s", hint) : 0));
}

/*
 * Is one of the rows of table relid (alias c) that match condition rows
 * referenced through a foreign key (with deferred_only, one whose check is
 * deferrable and waits for COMMIT when deferred)?  With together, the rows
 * go in one statement, so a reference from one of them does not count: the
 * check, at the statement's end (or at COMMIT), does not see it.  If so,
 * *found gets the foreign key, its table and the referenced key, for a
 * message.
 */
bool
referenced_row(Oid relid, const char *qualname, const char *rows, bool deferred_only,
			   bool together, ReferencedRow *found)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(relid)};
	SPITupleTable *fks;
	uint64		nfks;

	if (SPI_execute_with_args(psprintf("%s%s AND c.conparentid OPERATOR(pg_catalog.=) 0"
									   " ORDER BY c.conrelid, c.conname", SQL_REFERENCING_FKS,
									   deferred_only ? " AND c.condeferrable AND c.confdeltype OPERATOR(pg_catalog.=) 'a'" : ""),
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read foreign keys");
	fks = SPI_tuptable;
	nfks = SPI_processed;
	for (uint64 f = 0; f < nfks; f++)
	{
		HeapTuple	tup = fks->vals[f];
		bool		isnull;
		Oid			childid = DatumGetObjectId(SPI_getbinval(tup, fks->tupdesc, 2, &isnull));
		char	   *child = quote_qualified_identifier(get_namespace_name(get_rel_namespace(childid)),
													   get_rel_name(childid));
		Datum	   *conkey,
				   *confkey,
				   *eqops;
		int			n;
		StringInfoData refcols,
					refnames,
					match;

		n = fk_keys(tup, fks->tupdesc, &conkey, &confkey, &eqops);
		initStringInfo(&refcols);
		initStringInfo(&refnames);
		initStringInfo(&match);
		for (int i = 0; i < n; i++)
		{
			const char *refcol = quote_identifier(get_attname(relid, DatumGetInt16(confkey[i]), false));

			appendStringInfo(&refcols, "%sc.%s", i > 0 ? ", " : "", refcol);
			appendStringInfo(&refnames, "%s%s", i > 0 ? ", " : "", refcol);
			appendStringInfo(&match, " AND x.%s %s c.%s%s",
							 quote_identifier(get_attname(childid, DatumGetInt16(conkey[i]), false)),
							 sql_operator(DatumGetObjectId(eqops[i])), refcol,
							 fk_collate(relid, DatumGetInt16(confkey[i]), childid, DatumGetInt16(conkey[i])));
		}
		if (together && childid == relid)
			appendStringInfo(&match, " AND NOT (x.tableoid OPERATOR(pg_catalog.=) %u AND EXISTS"
							 " (SELECT FROM ONLY %s c WHERE c.ctid OPERATOR(pg_catalog.=) x.ctid AND %s))",
							 relid, qualname, rows);
		spi_exec_count(psprintf("SELECT ROW(%s)::pg_catalog.text FROM ONLY %s c"
								" WHERE %s AND EXISTS (SELECT FROM %s x WHERE true%s) LIMIT 1",
								refcols.data, qualname, rows, child, match.data),
					   SPI_OK_SELECT);
		if (SPI_processed > 0)
		{
			found->conname = pstrdup(quote_identifier(SPI_getvalue(tup, fks->tupdesc, 1)));
			found->child = child;
			found->key = psprintf("(%s)=%s", refnames.data,
								  SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
			return true;
		}
	}
	return false;
}

/*
 * A deferred foreign key is checked at COMMIT, after the call has returned
 * done: a row it references that the call deletes (those of table relid, c,
 * that match condition rows) would fail the caller's transaction there, with
 * the job long over.  Look for one now and refuse as the immediate check
 * would (the same SQLSTATE).  what, hint: as for refuse_cascading_references.
 * Without deferred_only, every foreign key: a dry run's forecast of what the
 * delete's own checks would refuse.  together: as for referenced_row.
 */
void
refuse_referenced_rows(Oid relid, const char *qualname, const char *what, const char *rows,
					   bool deferred_only, bool together, const char *hint)
{
	ReferencedRow found;

	if (referenced_row(relid, qualname, rows, deferred_only, together, &found))
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("cannot %s rows of %s: %sforeign key %s on %s references them",
						what, qualname, deferred_only ? "deferred " : "", found.conname, found.child),
				 deferred_only ?
				 errdetail("Key %s is still referenced from table %s; the check deferred to COMMIT would fail there.",
						   found.key, found.child) :
				 errdetail("Key %s is still referenced from table %s.", found.key, found.child),
				 hint ? errhint("%s", hint) : 0));
}

/* SET CONSTRAINTS name IMMEDIATE for each (name, table) row that query q finds for $1 */
static void
constraints_immediate(const char *q, Oid relid)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(relid)};
	SPITupleTable *found;
	uint64		nfound;

	if (SPI_execute_with_args(q, 1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not read constraints");
	found = SPI_tuptable;
	nfound = SPI_processed;
	for (uint64 f = 0; f < nfound; f++)
	{
		bool		isnull;
		Oid			conrelid = DatumGetObjectId(SPI_getbinval(found->vals[f], found->tupdesc, 2, &isnull));

		spi_exec_count(psprintf("SET CONSTRAINTS %s IMMEDIATE",
								quote_qualified_identifier(get_namespace_name(get_rel_namespace(conrelid)),
														   SPI_getvalue(found->vals[f], found->tupdesc, 1))),
					   SPI_OK_UTILITY);
	}
}

/*
 * Deferred foreign keys that reference relid queued a check for each row the
 * job removed (or re-pointed away from it), and CREATE INDEX refuses a table
 * with pending trigger events.  Make them IMMEDIATE, which runs those checks
 * now (they pass: no removed row is referenced any more); they stay
 * IMMEDIATE for the rest of the caller's transaction, whose earlier mode is
 * not known here.
 */
void
references_immediate(Oid relid)
{
	constraints_immediate(SQL_REFERENCING_FKS " AND c.condeferrable ORDER BY c.conrelid, c.conname", relid);
}

/*
 * The same for relid's own deferrable constraints (a foreign key of a
 * column the job filled queued a check per row), before ALTER TABLE, which
 * refuses a table with pending trigger events.
 */
void
own_constraints_immediate(Oid relid)
{
	constraints_immediate("SELECT c.conname::pg_catalog.text, c.conrelid FROM pg_catalog.pg_constraint c"
						  " WHERE c.conrelid OPERATOR(pg_catalog.=) $1 AND c.condeferrable ORDER BY c.conname",
						  relid);
}

DedupAction
dedup_parse_action(const char *action)
{
	if (strcmp(action, "delete") == 0)
		return DEDUP_ACTION_DELETE;
	if (strcmp(action, "rename") == 0)
		return DEDUP_ACTION_RENAME;
	if (strcmp(action, "merge") == 0)
		return DEDUP_ACTION_MERGE;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid value for argument \"action\": \"%s\"", action),
			 errhint("Valid values are \"delete\", \"rename\" and \"merge\".")));
	pg_unreachable();
}

const char *
dedup_action_name(DedupAction action)
{
	static const char *const names[] = {"delete", "rename", "merge"};

	return names[action];
}

DedupStrategy
dedup_parse_strategy(const char *strategy)
{
	if (strcmp(strategy, "auto") == 0)
		return DEDUP_STRATEGY_AUTO;
	if (strcmp(strategy, "delete") == 0)
		return DEDUP_STRATEGY_DELETE;
	if (strcmp(strategy, "rewrite") == 0)
		return DEDUP_STRATEGY_REWRITE;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid value for argument \"strategy\": \"%s\"", strategy),
			 errhint("Valid values are \"auto\", \"delete\" and \"rewrite\".")));
	pg_unreachable();
}

/*
 * candidates.c
 *		The rows that may have a duplicate, found by hashing the key.
 *
 * With few duplicates, the window pass that numbers the rows of every group
 * spends nearly all its time sorting rows that turn out to be alone in their
 * group.  Equal keys have equal hashes (the contract of a hash opclass whose
 * equality is the key's), so a row whose key hash no other row shares cannot
 * be a duplicate.  dedup_key_candidates() hashes the key of every row in one
 * pass over the heap, sorts the (hash, ctid) pairs in memory and returns the rows whose
 * hash repeats: whole groups, every duplicate among them, and a few rows that
 * only collide.  The window pass then sorts those alone (sql_ranked_dups).
 *
 * Memory: the pairs of one pass take at most maintenance_work_mem, as an
 * index build's sort would.  More rows than that are split by the low bits of
 * the hash into ranges, one heap scan each.  A range that outgrows the budget
 * is compacted (a hash seen twice keeps one entry, its rows are returned at
 * once; that is what bounds one key with millions of rows) and, if it is still
 * too big, halved, the other half queued for another scan.  The rows found go
 * through a tuplesort (work_mem, spills to disk) that returns them in ctid
 * order, each once, so that the TID scans fetching them read the heap in order.
 *
 * A background job scans again after its batches, to find the duplicates
 * written meanwhile.  Its first pass can keep its sorted pairs (when they
 * fit in one scan's budget): the job's later passes then hash only the rows
 * that may have changed since, on the pages that may have changed since the
 * pass before (see "The job's first pass, remembered" and "The pages a later
 * pass reads").
 */
#include "dedup_ext.h"

#include "access/hash.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_class.h"
#include "catalog/pg_operator_d.h"
#include "catalog/pg_type_d.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "storage/bufmgr.h"
#include "storage/predicate.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/tuplesort.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"

PG_FUNCTION_INFO_V1(dedup_key_candidates);

/* one row's key hash; an invalid tid stands for rows already returned */
typedef struct HashedRow
{
	uint32		hash;
	ItemPointerData tid;
} HashedRow;

/* by hash, and by ctid among equal hashes: a remembered pass merges runs by ctid */
static inline int
pair_cmp(HashedRow *a, HashedRow *b)
{
	return a->hash < b->hash ? -1 : a->hash > b->hash ? 1 : ItemPointerCompare(&a->tid, &b->tid);
}

#define ST_SORT sort_hashed_rows
#define ST_ELEMENT_TYPE HashedRow
#define ST_COMPARE(a, b) pair_cmp((a), (b))
#define ST_SCOPE static
#define ST_DECLARE
#define ST_DEFINE
#include "lib/sort_template.h"

/*
 * Sort pairs whose hashes agree above bit shift + 8 by their hash.  A
 * quicksort of millions of pairs was half of a pass's time: its partitions
 * outgrow the CPU caches.  An in-place radix pass on the 8 bits from shift
 * first (American flag sort: count the 256 buckets, then swap each pair
 * into its bucket through one pointer a bucket), again on each bucket until
 * it holds fewer than RADIX_MIN_ROWS pairs, leaves buckets that sort in
 * cache: 0.40 s instead of 0.83 s for ten million pairs (two radix passes).
 * Every 1024 pairs a background worker may yield (cpu_yield.c).
 */
#define RADIX_BITS 8
#define RADIX_BUCKETS (1 << RADIX_BITS)
#define RADIX_MIN_ROWS 4096

static void
radix_sort_from(HashedRow *rows, int64 n, int shift)
{
	int64		count[RADIX_BUCKETS] = {0};
	int64		next[RADIX_BUCKETS];
	int64		end[RADIX_BUCKETS];
	int64		start = 0;

	if (n < RADIX_MIN_ROWS || shift < 0)
	{
		sort_hashed_rows(rows, n);
		return;
	}
	for (int64 i = 0; i < n; i++)
	{
		if ((i & 1023) == 0)
			cpu_yield_point();
		count[(rows[i].hash >> shift) & (RADIX_BUCKETS - 1)]++;
	}
	for (int b = 0; b < RADIX_BUCKETS; b++)
	{
		next[b] = start;
		start += count[b];
		end[b] = start;
	}
	for (int b = 0; b < RADIX_BUCKETS; b++)
	{
		while (next[b] < end[b])
		{
			/* carry the pair at next[b] along its cycle until one lands here */
			HashedRow	carried = rows[next[b]];
			int			d = (carried.hash >> shift) & (RADIX_BUCKETS - 1);

			while (d != b)
			{
				HashedRow	displaced = rows[next[d]];

				if ((next[d] & 1023) == 0)
					cpu_yield_point();
				rows[next[d]++] = carried;
				carried = displaced;
				d = (carried.hash >> shift) & (RADIX_BUCKETS - 1);
			}
			rows[next[b]++] = carried;
		}
	}
	start = 0;
	for (int b = 0; b < RADIX_BUCKETS; b++)
	{
		radix_sort_from(rows + start, count[b], shift - RADIX_BITS);
		start += count[b];
	}
}

/* the pairs sorted by hash (then ctid), from the top 8 bits down */
static void
sort_by_hash(HashedRow *rows, int64 n)
{
	radix_sort_from(rows, n, 32 - RADIX_BITS);
}

/* the rows whose hash has these low bits: hash & (2^bits - 1) == residue */
typedef struct HashRange
{
	int			bits;
	uint32		residue;
} HashRange;

typedef struct KeyHasher
{
	int			nkeys;
	AttrNumber *attnums;
	Oid		   *collations;
	FmgrInfo  **procs;
	bool		nulls_distinct;
	MemoryContext rowcxt;		/* what hashing one row allocates */
} KeyHasher;

typedef struct CandidateScan
{
	HashedRow  *rows;
	int64		nrows;
	int64		allocated;
	int64		capacity;		/* pairs maintenance_work_mem holds */
	Tuplesortstate *found;		/* ctids of rows whose hash repeats */
	List	   *ranges;			/* HashRange still to scan */
	bool		keep_all;		/* leave the sorted pairs whole (remembered) */
	bool		compacted;		/* the budget forced a compaction */
} CandidateScan;

static inline uint32
range_mask(int bits)
{
	return bits >= 32 ? PG_UINT32_MAX : ((uint32) 1 << bits) - 1;
}

/*
 * Does the type hash consistently with the equality that groups its values?
 * The window pass partitions by the default btree opclass's equality, which
 * the type cache reports as eq_opr; the default hash opclass must have the
 * same equality operator.  An array hashes and compares its elements by
 * their own defaults, so the element type must agree too.  Range types
 * compare their bounds with the range's subtype opclass, which need not be
 * the default one, and composites compare their columns under collations the
 * hash does not see: both keep to the window over every row.
 */
bool
dedup_type_hashable(Oid type)
{
	Oid			base = getBaseType(type);
	char		typtype = get_typtype(base);
	Oid			elem = get_element_type(base);
	TypeCacheEntry *tce;

	if (typtype == TYPTYPE_RANGE || typtype == TYPTYPE_MULTIRANGE || typtype == TYPTYPE_COMPOSITE ||
		base == RECORDOID)
		return false;
	if (OidIsValid(elem) && !dedup_type_hashable(elem))
		return false;
	tce = lookup_type_cache(base, TYPECACHE_EQ_OPR | TYPECACHE_HASH_PROC | TYPECACHE_HASH_OPFAMILY);
	return OidIsValid(tce->eq_opr) && OidIsValid(tce->hash_proc) &&
		get_opfamily_member(tce->hash_opf, tce->hash_opintype, tce->hash_opintype,
							HTEqualStrategyNumber) == tce->eq_opr;
}

/*
 * May the caller read these columns and the rows' ctids?  Table-level
 * SELECT, or SELECT on each column and on ctid (which a column grant on the
 * key alone does not give).
 */
static void
check_select(Relation rel, AttrNumber *attnums, int n)
{
	Oid			relid = RelationGetRelid(rel);
	Oid			user = GetUserId();

	if (pg_class_aclcheck(relid, user, ACL_SELECT) == ACLCHECK_OK)
		return;
	for (int i = 0; i < n; i++)
		if (pg_attribute_aclcheck(relid, attnums[i], user, ACL_SELECT) != ACLCHECK_OK)
			aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_TABLE, RelationGetRelationName(rel));
	if (pg_attribute_aclcheck(relid, SelfItemPointerAttributeNumber, user, ACL_SELECT) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_TABLE, RelationGetRelationName(rel));
}

/*
 * Resolve the key columns (validated as every dedup_ext function does, by
 * dedup_target_open); refuse what the caller may not read or hash.
 */
static void
open_hasher(Relation rel, DedupTarget *t, KeyHasher *h)
{
	Oid			relid = RelationGetRelid(rel);

	h->nkeys = t->nkeys;
	h->attnums = palloc(t->nkeys * sizeof(AttrNumber));
	h->collations = palloc(t->nkeys * sizeof(Oid));
	h->procs = palloc(t->nkeys * sizeof(FmgrInfo *));
	h->nulls_distinct = t->nulls_distinct;
	h->rowcxt = AllocSetContextCreate(CurrentMemoryContext, "dedup_ext key hash", ALLOCSET_DEFAULT_SIZES);
	for (int i = 0; i < t->nkeys; i++)
		h->attnums[i] = get_attnum(relid, t->keys[i].name);
	check_select(rel, h->attnums, t->nkeys);
	if (check_enable_rls(relid, InvalidOid, false) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot hash the keys of \"%s\": row-level security applies to it",
						RelationGetRelationName(rel))));
	for (int i = 0; i < t->nkeys; i++)
	{
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), h->attnums[i] - 1);

		if (!dedup_type_hashable(att->atttypid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("key column \"%s\" has type %s, which has no hash function consistent with its equality",
							NameStr(att->attname), format_type_be(att->atttypid))));
		h->collations[i] = att->attcollation;
		h->procs[i] = &lookup_type_cache(getBaseType(att->atttypid),
										 TYPECACHE_HASH_PROC_FINFO)->hash_proc_finfo;
	}
}

/*
 * The key hash of the slot's row; false when NULLs are distinct and a key
 * column is NULL (such a row is never a duplicate).
 */
static bool
hash_key(KeyHasher *h, TupleTableSlot *slot, uint32 *hash)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(h->rowcxt);
	uint32		result = 0;
	bool		hashed = true;

	for (int i = 0; i < h->nkeys && hashed; i++)
	{
		bool		isnull;
		Datum		value = slot_getattr(slot, h->attnums[i], &isnull);
		uint32		one = 0;

		if (isnull && h->nulls_distinct)
			hashed = false;
		else if (!isnull)
			one = DatumGetUInt32(FunctionCall1Coll(h->procs[i], h->collations[i], value));
		result = i == 0 ? one : hash_combine(result, one);
	}
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(h->rowcxt);
	*hash = result;
	return hashed;
}

/*
 * Sort the pairs, hand the rows of every hash seen more than once to the
 * tuplesort, and keep one entry per hash: a hash seen once keeps its row (a
 * later row may still match it), a repeated one an invalid ctid that makes
 * any later row with that hash a candidate too.  With keep_all, the sorted
 * pairs stay as they are (a first pass being remembered).
 */
static void
compact_rows(CandidateScan *cs, bool keep_all)
{
	int64		kept = 0;
	int64		i = 0;

	sort_by_hash(cs->rows, cs->nrows);
	while (i < cs->nrows)
	{
		int64		end = i + 1;

		while (end < cs->nrows && cs->rows[end].hash == cs->rows[i].hash)
			end++;
		if (end - i > 1 || !ItemPointerIsValid(&cs->rows[i].tid))
			for (int64 j = i; j < end; j++)
				if (ItemPointerIsValid(&cs->rows[j].tid))
					tuplesort_putdatum(cs->found, PointerGetDatum(&cs->rows[j].tid), false);
		if (!keep_all)
		{
			cs->rows[kept] = cs->rows[i];
			if (end - i > 1)
				ItemPointerSetInvalid(&cs->rows[kept].tid);
			kept++;
		}
		i = end;
	}
	if (!keep_all)
		cs->nrows = kept;
}

/* a larger array for the pairs, up to the budget; false when it is reached */
static bool
grow_rows(CandidateScan *cs)
{
	if (cs->allocated >= cs->capacity)
		return false;
	cs->allocated = Min(cs->capacity, cs->allocated * 2);
	cs->rows = repalloc_huge(cs->rows, cs->allocated * sizeof(HashedRow));
	return true;
}

/*
 * Room for one more pair in the range being scanned: grow the array up to
 * the budget, then compact it, then narrow the range (queueing the other half
 * for a later scan) until at most half of the budget is in use.
 */
static void
make_room(CandidateScan *cs, HashRange *range)
{
	if (cs->nrows < cs->allocated || grow_rows(cs))
		return;
	compact_rows(cs, false);
	cs->compacted = true;
	while (cs->nrows > cs->capacity / 2 && range->bits < 32)
	{
		HashRange  *other = palloc(sizeof(HashRange));
		int64		kept = 0;

		other->bits = range->bits + 1;
		other->residue = range->residue | ((uint32) 1 << range->bits);
		cs->ranges = lappend(cs->ranges, other);
		range->bits++;
		for (int64 i = 0; i < cs->nrows; i++)
			if ((cs->rows[i].hash & range_mask(range->bits)) == range->residue)
				cs->rows[kept++] = cs->rows[i];
		cs->nrows = kept;
	}
}

/* keep the pair of a row whose hash is in the range being scanned */
static void
add_in_range(CandidateScan *cs, HashRange *range, uint32 hash, ItemPointer tid)
{
	if ((hash & range_mask(range->bits)) != range->residue)
		return;
	make_room(cs, range);
	/* narrowing the range may have excluded this row */
	if ((hash & range_mask(range->bits)) != range->residue)
		return;
	cs->rows[cs->nrows].hash = hash;
	cs->rows[cs->nrows].tid = *tid;
	cs->nrows++;
}

/* One heap scan: the candidates among the rows whose hash is in range. */
static void
scan_range(Relation rel, KeyHasher *h, CandidateScan *cs, HashRange range)
{
	TableScanDesc scan = table_beginscan(rel, GetActiveSnapshot(), 0, NULL);
	TupleTableSlot *slot = table_slot_create(rel, NULL);

	cs->nrows = 0;
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		uint32		hash;

		CHECK_FOR_INTERRUPTS();
		cpu_yield_point();
		if (hash_key(h, slot, &hash))
			add_in_range(cs, &range, hash, &slot->tts_tid);
	}
	compact_rows(cs, cs->keep_all && !cs->compacted);
	ExecDropSingleTupleTableSlot(slot);
	table_endscan(scan);
}

/*
 * The rows of the table now, from its statistics scaled to its current
 * size, as the planner estimates them; -1 if it was never analyzed.
 */
static double
estimated_rows(Relation rel)
{
	if (rel->rd_rel->reltuples < 0)
		return -1;
	if (rel->rd_rel->relpages == 0)
		return rel->rd_rel->reltuples;
	return rel->rd_rel->reltuples / rel->rd_rel->relpages * RelationGetNumberOfBlocks(rel);
}

/* log2 of the ranges the first scans need for rows to fit capacity */
static int
range_bits(double rows, int64 capacity)
{
	int			bits = 0;

	while (bits < 16 && rows * 1.1 > (double) capacity * ((uint32) 1 << bits))
		bits++;
	return bits;
}

static int64
pair_capacity(void)
{
	return Max((int64) maintenance_work_mem * 1024 / (int64) sizeof(HashedRow), 1024);
}

/*
 * Ranges for the first scans: as many as the table's estimated rows need
 * to fit the budget, so that a table of the size its statistics say needs no
 * narrowing.
 */
static List *
first_ranges(Relation rel, int64 capacity)
{
	int			bits = range_bits(Max(estimated_rows(rel), 0), capacity);
	List	   *ranges = NIL;

	for (uint32 r = 0; r < ((uint32) 1 << bits); r++)
	{
		HashRange  *range = palloc(sizeof(HashRange));

		range->bits = bits;
		range->residue = r;
		ranges = lappend(ranges, range);
	}
	return ranges;
}

/*
 * The job's first pass, remembered.
 *
 * A background job's worker arms the next call for its table
 * (candidates_remember_next): that call keeps its sorted pairs, one for each
 * row it hashed, in the job's memory, with the xmin of the snapshot it read.
 * A row whose inserting transaction precedes that xmin, and that is visible
 * now, was visible then at the same ctid with the same key: its pair is
 * remembered.  So a later pass (candidates_confirm_next) hashes only the rows
 * that may be new since (raw xmin not before the remembered one: inserted or
 * updated since, or by a transaction still running then) and the losers of
 * the last batches (still there if a batch had to skip them), and returns
 * those whose hash another of them or a remembered pair shares, with the
 * remembered rows of that hash: whole groups, as the window pass needs.
 * Remembered rows that are gone come back as ctids that name no row, which
 * the TID scan skips.  It hashes and sorts only what changed.
 *
 * The pages a later pass reads.  Every change to the rows of a page of a
 * WAL-logged table sets the page's LSN to its WAL record's, while the page
 * is locked (hint bits and the all-visible flag change no row).  So each pass
 * notes the WAL insert position before it reads a page; when the next pass
 * comes, a page whose LSN is still at or before that note holds the very
 * rows the pass read there, and each of those visible now was visible to the
 * pass and hashed by it (the first pass hashes every row, a later one those
 * new since the memo's xmin, whose pairs join the memo once its transaction
 * commits), or precedes the memo's xmin and was hashed by the first.  Unless
 * the pass could not see it: a row written by a transaction still running
 * then, or committed after the pass's snapshot, can sit on a page changed
 * before the note and become visible later, so the pass lists such pages to
 * be read again.  The next pass reads a page if it changed since the note,
 * was added since, holds a listed loser, or was listed to be read again, and
 * checks only the LSN of the others: the last, clean pass of a job whose
 * batches touched a few pages (their losers' and, locked, their survivors')
 * reads those.  A page it does not read is still pinned, and read in if it is
 * not in shared buffers: what it saves is the work on its rows and, for a
 * page in shared buffers, streaming it through the CPU's caches.  The page
 * walk does not prune, as a heap scan would: that would change the pages it
 * reads for the next pass.  An unlogged table's pages keep no LSN, and a
 * serializable transaction must check every row it reads for a conflict with
 * its writer: then every pass reads every page.
 *
 * What the call can check, it does: the same relfilenode (no rewrite moved
 * the rows), the same hash functions and collations, a heap table, and not
 * so many transactions since that xids could wrap around; a memo it cannot
 * use is forgotten, and the full pass it runs instead is remembered.  The
 * caller must not arm it when the job's filter could change which rows it
 * takes without the rows changing (mutable functions, subqueries), and
 * declares a recorded pass remembered only once the transaction that ran it
 * has committed (candidates_keep_remembered): a pass rolled back and run
 * again must not confirm against itself.
 */
typedef struct CandidateMemo
{
	MemoryContext cxt;			/* NULL: nothing remembered */
	bool		committed;		/* the pass that recorded it committed */
	Oid			relid;
	Oid			relfilenode;
	int			nkeys;
	Oid		   *hash_procs;
	Oid		   *collations;
	bool		nulls_distinct;
	FullTransactionId xmin;		/* of the pass's snapshot */
	HashedRow  *rows;			/* sorted by hash, then ctid */
	int64		nrows;
	XLogRecPtr	lsn;			/* pages unchanged since hold no row the memo
								 * lacks; invalid: read every page */
	BlockNumber nblocks;		/* the table's pages then: later ones are read */
	BlockNumber *recheck;		/* pages read again whatever their LSN, in order */
	int64		nrecheck;
} CandidateMemo;

/*
 * What a confirming pass adds to the memo: installed once its transaction
 * has committed (candidates_keep_remembered), dropped if it did not.
 */
typedef struct MemoUpdate
{
	FullTransactionId xid;		/* the pass's transaction; invalid: nothing */
	HashedRow  *rows;			/* the memo with the pass's pairs; NULL: as it is */
	int64		nrows;
	XLogRecPtr	lsn;
	BlockNumber nblocks;
	BlockNumber *recheck;
	int64		nrecheck;
} MemoUpdate;

typedef enum MemoMode
{
	MEMO_NONE,
	MEMO_RECORD,
	MEMO_CONFIRM
} MemoMode;

static CandidateMemo memo;
static MemoUpdate staged;

/* what the next call for armed_relid does (one call: it disarms) */
static MemoMode armed_mode = MEMO_NONE;
static Oid	armed_relid = InvalidOid;
static MemoryContext armed_parent;
static ItemPointerData *armed_losers;
static int64 armed_nlosers;

/* so many transactions since the remembered pass: its xmin may be too old */
#define MEMO_MAX_XIDS ((uint64) 1 << 30)

static void
memo_cleared(void *arg)
{
	memset(&memo, 0, sizeof(memo));
	memset(&staged, 0, sizeof(staged));
}

/* forget a confirming pass's additions (allocated in memo.cxt) */
static void
staged_drop(void)
{
	if (staged.rows)
		pfree(staged.rows);
	if (staged.recheck)
		pfree(staged.recheck);
	memset(&staged, 0, sizeof(staged));
}

/* the memo goes with the job's memory */
static MemoryContextCallback memo_cleanup = {memo_cleared, NULL, NULL};

static void
memo_forget(void)
{
	if (memo.cxt)
		MemoryContextDelete(memo.cxt);
}

static int
tid_cmp(const void *a, const void *b)
{
	return ItemPointerCompare((ItemPointer) a, (ItemPointer) b);
}

/*
 * The next call for relid keeps its pairs, in a child of parent, to be used
 * once the caller has committed (candidates_keep_remembered).
 */
void
candidates_remember_next(Oid relid, MemoryContext parent)
{
	staged_drop();
	armed_mode = MEMO_RECORD;
	armed_relid = relid;
	armed_parent = parent;
}

/*
 * Has a committed pass over relid been remembered?  (The call checks again
 * that it can still be used.)
 */
bool
candidates_remembered(Oid relid)
{
	return memo.cxt != NULL && memo.committed && memo.relid == relid;
}

/*
 * The pass just committed: what it recorded (if anything) may be used.
 *
 * If the committed attempt did not call dedup_key_candidates
 * (dedup_target_plan_candidates chose to sort every row this time), the
 * memo, if any, is that of an earlier attempt that rolled back, and is kept
 * all the same: it holds the table as that attempt's snapshot saw it, which
 * its rollback did not change (a pass writes only the work table), and the
 * committed attempt listed every duplicate itself.  What the flag guards
 * against is a retry confirming against a memo whose duplicates no
 * committed pass has listed.
 */
void
candidates_keep_remembered(void)
{
	if (memo.cxt != NULL && memo.rows != NULL)
		memo.committed = true;
	/* a confirming pass's additions, if that pass is the one that committed */
	if (FullTransactionIdIsValid(staged.xid) && memo.committed &&
		TransactionIdDidCommit(XidFromFullTransactionId(staged.xid)))
	{
		if (staged.rows)
		{
			pfree(memo.rows);
			memo.rows = staged.rows;
			memo.nrows = staged.nrows;
		}
		if (memo.recheck)
			pfree(memo.recheck);
		memo.lsn = staged.lsn;
		memo.nblocks = staged.nblocks;
		memo.recheck = staged.recheck;
		memo.nrecheck = staged.nrecheck;
		/* the memo owns them now */
		memset(&staged, 0, sizeof(staged));
	}
	else
		staged_drop();
}

/*
 * The next call for relid hashes only the rows changed since the remembered
 * pass and the listed losers (whose memory the caller keeps until then).
 */
void
candidates_confirm_next(Oid relid, ItemPointerData *losers, int64 nlosers)
{
	armed_mode = MEMO_CONFIRM;
	armed_relid = relid;
	armed_parent = NULL;
	armed_losers = losers;
	armed_nlosers = nlosers;
	qsort(losers, nlosers, sizeof(ItemPointerData), tid_cmp);
	staged_drop();
}

void
candidates_disarm(void)
{
	armed_mode = MEMO_NONE;
	armed_relid = InvalidOid;
	armed_parent = NULL;
	armed_losers = NULL;
	armed_nlosers = 0;
}

static bool
memo_usable(Relation rel, KeyHasher *h)
{
	uint64		since;

	if (memo.cxt == NULL || !memo.committed || memo.relid != RelationGetRelid(rel) ||
		memo.relfilenode != rel->rd_rel->relfilenode ||
		memo.nkeys != h->nkeys || memo.nulls_distinct != h->nulls_distinct)
		return false;
	for (int i = 0; i < h->nkeys; i++)
		if (memo.hash_procs[i] != h->procs[i]->fn_oid || memo.collations[i] != h->collations[i])
			return false;
	since = U64FromFullTransactionId(ReadNextFullTransactionId()) - U64FromFullTransactionId(memo.xmin);
	return since < MEMO_MAX_XIDS;
}

/*
 * Start remembering this call's pairs, allocated in memo.cxt; the caller
 * sets memo.rows when they are complete.
 */
static void
memo_begin(Relation rel, KeyHasher *h, CandidateScan *cs, MemoryContext parent)
{
	FullTransactionId next = ReadNextFullTransactionId();

	memo.cxt = AllocSetContextCreate(parent, "dedup_ext remembered pass", ALLOCSET_DEFAULT_SIZES);
	MemoryContextRegisterResetCallback(memo.cxt, &memo_cleanup);
	memo.relid = RelationGetRelid(rel);
	memo.relfilenode = rel->rd_rel->relfilenode;
	memo.nkeys = h->nkeys;
	memo.nulls_distinct = h->nulls_distinct;
	memo.hash_procs = MemoryContextAlloc(memo.cxt, h->nkeys * sizeof(Oid));
	memo.collations = MemoryContextAlloc(memo.cxt, h->nkeys * sizeof(Oid));
	for (int i = 0; i < h->nkeys; i++)
	{
		memo.hash_procs[i] = h->procs[i]->fn_oid;
		memo.collations[i] = h->collations[i];
	}
	memo.xmin = FullTransactionIdFromU64(U64FromFullTransactionId(next) -
										 (uint32) (XidFromFullTransactionId(next) - GetActiveSnapshot()->xmin));
	pfree(cs->rows);
	cs->allocated = Min(cs->capacity, 1024);
	cs->rows = MemoryContextAllocExtended(memo.cxt, cs->allocated * sizeof(HashedRow), MCXT_ALLOC_HUGE);
	cs->keep_all = true;
}

/* the first pair of the sorted memo with this hash, or memo.nrows */
static int64
memo_lower_bound(uint32 hash)
{
	int64		lo = 0;
	int64		hi = memo.nrows;

	while (lo < hi)
	{
		int64		mid = lo + (hi - lo) / 2;

		if (memo.rows[mid].hash < hash)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* is blkno in the sorted blocks (advancing *i, which starts at 0, as blkno grows)? */
static bool
block_listed(BlockNumber *blocks, int64 n, int64 *i, BlockNumber blkno)
{
	while (*i < n && blocks[*i] < blkno)
		(*i)++;
	return *i < n && blocks[*i] == blkno;
}

/* does the page blkno hold a listed loser? (*i as for block_listed) */
static bool
loser_on_page(ItemPointerData *losers, int64 n, int64 *i, BlockNumber blkno)
{
	while (*i < n && ItemPointerGetBlockNumber(&losers[*i]) < blkno)
		(*i)++;
	return *i < n && ItemPointerGetBlockNumber(&losers[*i]) == blkno;
}

/* the row at a normal line pointer off of the page in buf */
static void
page_tuple(Relation rel, Buffer buf, OffsetNumber off, HeapTuple tuple)
{
	Page		page = BufferGetPage(buf);
	ItemId		itemid = PageGetItemId(page, off);

	tuple->t_data = (HeapTupleHeader) PageGetItem(page, itemid);
	tuple->t_len = ItemIdGetLength(itemid);
	tuple->t_tableOid = RelationGetRelid(rel);
	ItemPointerSet(&tuple->t_self, BufferGetBlockNumber(buf), off);
}

/*
 * The rows of a page to hash, share-locked by the caller and unlocked here:
 * its visible rows, all of them or those new since the memo's xmin and the
 * listed losers (from losers[l] on, this page's first).  *again when a row
 * the snapshot does not see may become visible (see "The pages a later pass
 * reads").  Returns how many offsets it put in rows.
 *
 * A later pass does not ask whether its snapshot sees the other rows: it
 * hashes none of them either way, and on the pages the batches changed
 * (every page, when each holds a loser) asking cost a sixth to a third of
 * the pass's time (README, "Later passes").  A serializable transaction
 * still asks, of every row, as its conflict check needs the answer.
 */
static int
page_rows(Relation rel, Buffer buf, bool all, ItemPointerData *losers, int64 nlosers, int64 l,
		  OffsetNumber *rows, bool *again)
{
	Snapshot	snapshot = GetActiveSnapshot();
	Page		page = BufferGetPage(buf);
	OffsetNumber maxoff = PageIsNew(page) ? InvalidOffsetNumber : PageGetMaxOffsetNumber(page);
	TransactionId xmin = XidFromFullTransactionId(memo.xmin);
	/* every row visible to every snapshot, as a heap scan trusts it */
	bool		all_visible = PageIsAllVisible(page) && !snapshot->takenDuringRecovery;
	bool		check_all = all || IsolationIsSerializable();
	int			n = 0;

	dedup_test_for_old_snapshot(snapshot, rel, page);
	*again = false;
	for (OffsetNumber off = FirstOffsetNumber; off <= maxoff; off++)
	{
		ItemId		itemid = PageGetItemId(page, off);
		HeapTupleData tuple;
		bool		visible;
		bool		changed;
		bool		listed;

		if (!ItemIdIsNormal(itemid))
			continue;
		page_tuple(rel, buf, off, &tuple);
		changed = !TransactionIdPrecedes(HeapTupleHeaderGetRawXmin(tuple.t_data), xmin);
		while (l < nlosers && ItemPointerCompare(&losers[l], &tuple.t_self) < 0)
			l++;
		listed = l < nlosers && ItemPointerEquals(&losers[l], &tuple.t_self);
		if (!check_all && !changed && !listed)
			continue;
		visible = all_visible || HeapTupleSatisfiesVisibility(&tuple, snapshot, buf);
		HeapCheckForSerializableConflictOut(visible, rel, &tuple, buf, snapshot);
		if (!visible)
		{
			if (changed && !*again)
			{
				HTSV_Result state = HeapTupleSatisfiesVacuum(&tuple, snapshot->xmin, buf);

				*again = state == HEAPTUPLE_LIVE || state == HEAPTUPLE_INSERT_IN_PROGRESS ||
					state == HEAPTUPLE_DELETE_IN_PROGRESS;
			}
			continue;
		}
		if (all || changed || listed)
			rows[n++] = off;
	}
	LockBuffer(buf, BUFFER_LOCK_UNLOCK);
	return n;
}

/*
 * The key hash of a row that page_rows chose, read with the buffer's pin
 * alone, as a heap scan reads its rows; false as for hash_key.  The slot
 * keeps the row, and a pin on its buffer, until the caller clears it: rows
 * of the buffer it holds are stored without pinning it again.
 */
static bool
page_row_hash(Relation rel, KeyHasher *h, Buffer buf, OffsetNumber off, TupleTableSlot *slot,
			  uint32 *hash)
{
	HeapTupleData tuple;

	page_tuple(rel, buf, off, &tuple);
	ExecStoreBufferHeapTuple(&tuple, slot, buf);
	return hash_key(h, slot, hash);
}

/* a page to read again in the next pass, listed in cxt */
static void
list_again(MemoryContext cxt, BlockNumber **blocks, int64 *n, int64 *size, BlockNumber blkno)
{
	if (*n == *size)
	{
		*size = Max(*size * 2, 64);
		*blocks = *blocks ? repalloc_huge(*blocks, *size * sizeof(BlockNumber)) :
			MemoryContextAllocExtended(cxt, *size * sizeof(BlockNumber), MCXT_ALLOC_HUGE);
	}
	(*blocks)[(*n)++] = blkno;
}

/* a pass's walk over the heap's pages (see "The pages a later pass reads") */
typedef struct PageWalk
{
	XLogRecPtr	lsn;			/* noted before any page is read */
	BlockNumber nblocks;
	BufferAccessStrategy strategy;
	TupleTableSlot *slot;		/* for page_row_hash */
} PageWalk;

static void
page_walk_begin(Relation rel, PageWalk *walk)
{
	walk->lsn = RelationNeedsWAL(rel) ? GetXLogInsertRecPtr() : InvalidXLogRecPtr;
	walk->nblocks = RelationGetNumberOfBlocks(rel);
	walk->strategy = walk->nblocks > (BlockNumber) NBuffers / 4 ? GetAccessStrategy(BAS_BULKREAD) : NULL;
	walk->slot = table_slot_create(rel, NULL);
	/* what a sequential scan locks in a serializable transaction */
	PredicateLockRelation(rel, GetActiveSnapshot());
}

static void
page_walk_end(PageWalk *walk)
{
	ExecDropSingleTupleTableSlot(walk->slot);
	if (walk->strategy)
		FreeAccessStrategy(walk->strategy);
}

/* a page of the walk, pinned and share-locked */
static Buffer
locked_page(Relation rel, PageWalk *walk, BlockNumber blkno)
{
	Buffer		buf = ReadBufferExtended(rel, MAIN_FORKNUM, blkno, RBM_NORMAL, walk->strategy);

	LockBuffer(buf, BUFFER_LOCK_SHARE);
	return buf;
}

/*
 * The remembered pass's scan: scan_range's, page by page, noting in the
 * memo what the next pass needs to read only the pages changed since (see
 * "The pages a later pass reads").
 */
static void
scan_remembered(Relation rel, KeyHasher *h, CandidateScan *cs, HashRange range)
{
	PageWalk	walk;
	OffsetNumber rows[MaxHeapTuplesPerPage];
	int64		again_size = 0;

	page_walk_begin(rel, &walk);
	cs->nrows = 0;
	for (BlockNumber blkno = 0; blkno < walk.nblocks; blkno++)
	{
		Buffer		buf;
		bool		again;
		int			n;

		CHECK_FOR_INTERRUPTS();
		cpu_yield_point();
		buf = locked_page(rel, &walk, blkno);
		n = page_rows(rel, buf, true, NULL, 0, 0, rows, &again);
		for (int i = 0; i < n; i++)
		{
			uint32		hash;

			cpu_yield_point();
			if (page_row_hash(rel, h, buf, rows[i], walk.slot, &hash))
				add_in_range(cs, &range, hash, &walk.slot->tts_tid);
		}
		ExecClearTuple(walk.slot);
		ReleaseBuffer(buf);
		if (again)
			list_again(memo.cxt, &memo.recheck, &memo.nrecheck, &again_size, blkno);
	}
	compact_rows(cs, cs->keep_all && !cs->compacted);
	page_walk_end(&walk);
	memo.lsn = walk.lsn;
	memo.nblocks = walk.nblocks;
}

/*
 * How many different rows two runs of pairs of one hash name, up to two:
 * both are in ctid order, and a row hashed again may be in both.
 */
static int
distinct_rows(HashedRow *a, int64 na, HashedRow *b, int64 nb)
{
	int64		i = 0;
	int64		j = 0;
	int			n = 0;

	while ((i < na || j < nb) && n < 2)
	{
		int			cmp = i == na ? 1 : j == nb ? -1 : ItemPointerCompare(&a[i].tid, &b[j].tid);

		if (cmp <= 0)
			i++;
		if (cmp >= 0)
			j++;
		n++;
	}
	return n;
}

/*
 * The pass's pairs (sorted as the memo) merged into the memo's, each pair
 * once, for the memo to keep if the pass commits; NULL if they outgrow the
 * budget.
 */
static HashedRow *
merged_pairs(CandidateScan *cs, int64 *n)
{
	HashedRow  *rows;
	int64		i = 0;
	int64		j = 0;

	*n = 0;
	if (memo.nrows + cs->nrows > cs->capacity)
		return NULL;
	rows = MemoryContextAllocExtended(memo.cxt, (memo.nrows + cs->nrows) * sizeof(HashedRow),
									  MCXT_ALLOC_HUGE);
	while (i < memo.nrows || j < cs->nrows)
	{
		int			cmp;

		if (i == memo.nrows)
			cmp = 1;
		else if (j == cs->nrows)
			cmp = -1;
		else
			cmp = pair_cmp(&memo.rows[i], &cs->rows[j]);
		if (cmp <= 0)
			rows[(*n)++] = memo.rows[i++];
		else
			rows[(*n)++] = cs->rows[j++];
		if (cmp == 0)
			j++;
	}
	return rows;
}

/*
 * The confirming pass: hash the rows that may have changed since the
 * remembered pass and the listed losers, on the pages that may have changed
 * since the last pass (see "The pages a later pass reads"), and hand the
 * tuplesort those whose hash repeats among them or in the memo, with the
 * memo's rows of that hash; stage what the memo learns.  False, with
 * nothing handed, when the changed rows outgrow the budget (the caller
 * scans in full instead).
 */
static bool
scan_changed(Relation rel, KeyHasher *h, CandidateScan *cs, ItemPointerData *losers, int64 nlosers)
{
	PageWalk	walk;
	OffsetNumber rows[MaxHeapTuplesPerPage];
	int64		again_size = 0;
	int64		l = 0;
	int64		r = 0;
	BlockNumber nread = 0;
	bool		fits = true;

	/*
	 * A serializable transaction checks each row it reads for a conflict
	 * with its writer (page_rows): it reads every page.
	 */
	bool		may_skip = !XLogRecPtrIsInvalid(memo.lsn) && !IsolationIsSerializable();

	page_walk_begin(rel, &walk);
	cs->nrows = 0;
	for (BlockNumber blkno = 0; blkno < walk.nblocks && fits; blkno++)
	{
		bool		listed = loser_on_page(losers, nlosers, &l, blkno);
		bool		skippable = may_skip && blkno < memo.nblocks && !listed &&
			!block_listed(memo.recheck, memo.nrecheck, &r, blkno);
		Buffer		buf;
		bool		read_again;
		int			n;

		CHECK_FOR_INTERRUPTS();
		cpu_yield_point();
		buf = locked_page(rel, &walk, blkno);
		if (skippable && BufferGetLSNAtomic(buf) <= memo.lsn)
		{
			UnlockReleaseBuffer(buf);
			continue;
		}
		nread++;
		n = page_rows(rel, buf, false, losers, nlosers, l, rows, &read_again);
		for (int i = 0; i < n && fits; i++)
		{
			uint32		hash;

			cpu_yield_point();
			if (!page_row_hash(rel, h, buf, rows[i], walk.slot, &hash))
				continue;
			if (cs->nrows == cs->allocated && !grow_rows(cs))
				fits = false;
			else
			{
				cs->rows[cs->nrows].hash = hash;
				cs->rows[cs->nrows].tid = walk.slot->tts_tid;
				cs->nrows++;
			}
		}
		ExecClearTuple(walk.slot);
		ReleaseBuffer(buf);
		/* staged at once: dropped unless the pass commits */
		if (read_again)
			list_again(memo.cxt, &staged.recheck, &staged.nrecheck, &again_size, blkno);
	}
	page_walk_end(&walk);
	if (!fits)
	{
		elog(DEBUG1, "dedup_ext: more rows of \"%s\" changed than maintenance_work_mem holds; hashing every row",
			 RelationGetRelationName(rel));
		return false;
	}
	elog(DEBUG1, "dedup_ext: hashed only the rows of \"%s\" changed since the remembered pass: %lld",
		 RelationGetRelationName(rel), (long long) cs->nrows);
	elog(DEBUG1, "dedup_ext: the pass read %u of the %u pages of \"%s\"",
		 nread, walk.nblocks, RelationGetRelationName(rel));

	/* a hash that two different rows share: all its rows are candidates */
	sort_by_hash(cs->rows, cs->nrows);
	for (int64 i = 0, end; i < cs->nrows; i = end)
	{
		int64		lo = memo_lower_bound(cs->rows[i].hash);
		int64		hi = lo;

		for (end = i + 1; end < cs->nrows && cs->rows[end].hash == cs->rows[i].hash; end++)
			;
		while (hi < memo.nrows && memo.rows[hi].hash == cs->rows[i].hash)
			hi++;
		if (distinct_rows(cs->rows + i, end - i, memo.rows + lo, hi - lo) < 2)
			continue;
		for (int64 j = i; j < end; j++)
			tuplesort_putdatum(cs->found, PointerGetDatum(&cs->rows[j].tid), false);
		for (int64 j = lo; j < hi; j++)
			tuplesort_putdatum(cs->found, PointerGetDatum(&memo.rows[j].tid), false);
	}

	staged.xid = GetTopFullTransactionId();
	if (cs->nrows > 0)
		staged.rows = merged_pairs(cs, &staged.nrows);
	/* without the pass's pairs in the memo, the next pass reads every page */
	staged.lsn = cs->nrows == 0 || staged.rows ? walk.lsn : InvalidXLogRecPtr;
	staged.nblocks = walk.nblocks;
	return true;
}

/*
 * dedup_key_candidates(rel regclass, key text[], nulls_distinct boolean)
 * RETURNS SETOF tid: the rows of rel whose key hash another row shares, in
 * ctid order.  Needs SELECT on the key columns; refused on a table with
 * row-level security for the caller (it would see hidden rows' hashes).
 */
Datum
dedup_key_candidates(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	DedupTarget *t;
	Relation	rel;
	KeyHasher	h;
	CandidateScan cs = {0};
	MemoryContext oldcxt;
	MemoryContext rowcxt;
	TupleDesc	tupdesc;
	Tuplestorestate *out;
	ItemPointerData last;
	MemoMode	mode;
	MemoryContext parent;
	ItemPointerData *losers;
	int64		nlosers;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("dedup_key_candidates must be called in a context that accepts a set")));

	t = dedup_target_open(PG_GETARG_OID(0), PG_GETARG_ARRAYTYPE_P(1), NULL, PG_GETARG_BOOL(2),
						  false, AccessShareLock);
	rel = table_open(t->relid, NoLock);
	open_hasher(rel, t, &h);

	/* what the worker armed this call for, if anything (once) */
	mode = armed_relid == t->relid ? armed_mode : MEMO_NONE;
	parent = armed_parent;
	losers = armed_losers;
	nlosers = armed_nlosers;
	candidates_disarm();

	cs.capacity = pair_capacity();
	cs.allocated = Min(cs.capacity, 1024);
	cs.rows = palloc_extended(cs.allocated * sizeof(HashedRow), MCXT_ALLOC_HUGE);
	cs.found = dedup_tuplesort_begin_datum(TIDOID, TIDLessOperator, work_mem);
	if (mode == MEMO_CONFIRM && memo_usable(rel, &h) && scan_changed(rel, &h, &cs, losers, nlosers))
		pfree(cs.rows);
	else
	{
		bool		remember;

		/* a memo that could not serve is replaced by this full pass */
		if (mode == MEMO_CONFIRM)
		{
			parent = memo.cxt ? MemoryContextGetParent(memo.cxt) : NULL;
			mode = MEMO_RECORD;
		}
		cs.ranges = first_ranges(rel, cs.capacity);
		remember = mode == MEMO_RECORD && parent != NULL && list_length(cs.ranges) == 1 &&
			rel->rd_tableam == GetHeapamTableAmRoutine();
		if (mode == MEMO_RECORD)
			memo_forget();
		if (remember)
			memo_begin(rel, &h, &cs, parent);
		while (cs.ranges != NIL)
		{
			HashRange	range = *(HashRange *) linitial(cs.ranges);

			cs.ranges = list_delete_first(cs.ranges);
			/* a range narrowed by the budget compacts its pairs: nothing is remembered */
			if (remember && !cs.compacted)
				scan_remembered(rel, &h, &cs, range);
			else
				scan_range(rel, &h, &cs, range);
		}
		if (remember && !cs.compacted)
		{
			memo.rows = cs.rows;
			memo.nrows = cs.nrows;
		}
		else if (remember)
			memo_forget();
		else
			pfree(cs.rows);
	}
	MemoryContextDelete(h.rowcxt);
	table_close(rel, NoLock);

	oldcxt = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	tupdesc = CreateTemplateTupleDesc(1);
	TupleDescInitEntry(tupdesc, 1, "ctid", TIDOID, -1, 0);
	out = tuplestore_begin_heap(false, false, work_mem);
	MemoryContextSwitchTo(oldcxt);

	/* narrowed ranges may have returned a row twice: keep each once */
	tuplesort_performsort(cs.found);
	ItemPointerSetInvalid(&last);
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "dedup_ext candidates",
								   ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		Datum		value;
		bool		isnull;
		bool		more;

		/* a by-reference datum comes back as a fresh copy */
		oldcxt = MemoryContextSwitchTo(rowcxt);
		more = dedup_tuplesort_getdatum(cs.found, &value, &isnull);
		MemoryContextSwitchTo(oldcxt);
		if (!more)
			break;
		if (!ItemPointerEquals((ItemPointer) DatumGetPointer(value), &last))
		{
			tuplestore_putvalues(out, tupdesc, &value, &isnull);
			last = *(ItemPointer) DatumGetPointer(value);
		}
		MemoryContextReset(rowcxt);
	}
	tuplesort_end(cs.found);
	MemoryContextDelete(rowcxt);

	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = out;
	rsinfo->setDesc = tupdesc;
	return (Datum) 0;
}

/*
 * The qualified name of dedup_key_candidates, or NULL where the extension's
 * objects predate it (the library was updated, ALTER EXTENSION UPDATE not
 * run yet): the passes then read every row, as that version did.
 */
static char *
candidates_function(void)
{
	char	   *fn = psprintf("%s.dedup_key_candidates", dedup_ext_schema());
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(psprintf("%s(pg_catalog.regclass, pg_catalog.text[], boolean)", fn))};
	bool		isnull;

	if (SPI_execute_with_args("SELECT pg_catalog.to_regprocedure($1) IS NOT NULL",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "dedup_ext: could not look up dedup_key_candidates");
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) ?
		fn : NULL;
}

/*
 * Let the passes that look for duplicates read only the candidates
 * (sql_ranked_dups) when that is likely much cheaper than sorting every row:
 * by the planner's estimate most rows are unique (with many duplicates nearly
 * every row is a candidate and the hashing is extra work), every key type
 * hashes with its equality, no row-level security applies, and the table's
 * pairs fit in maintenance_work_mem in at most four heap scans.  The caller
 * holds a lock on the table.
 */
void
dedup_target_plan_candidates(DedupTarget *t, double loser_share)
{
	Relation	rel;
	double		rows;

	t->candidates_fn = NULL;
	if (loser_share > 0.25)
		return;
	for (int i = 0; i < t->nkeys; i++)
		if (!dedup_type_hashable(t->keys[i].type))
			return;
	if (check_enable_rls(t->relid, InvalidOid, true) == RLS_ENABLED)
		return;
	rel = table_open(t->relid, NoLock);
	rows = estimated_rows(rel);
	table_close(rel, NoLock);
	if (rows < 0 || range_bits(rows, pair_capacity()) > 2)
		return;
	t->candidates_fn = candidates_function();
}

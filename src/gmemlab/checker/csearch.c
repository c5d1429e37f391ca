/*
 * gmemlab's compiled exploration core: the breadth-first search of
 * explore.py over packed states, in C.
 *
 * It knows nothing of the model.  Everything it applies was derived by the
 * Python engine (engine.py) from runs of the one model and handed over as
 * tables; whenever the search needs an entry nobody has derived yet, gm_run()
 * returns a NEED_* code describing it (the state concerned is in the query
 * buffer), the Python side runs the model or the promise code for it, adds
 * the entry with a gm_add_* call and calls gm_run() again, which resumes
 * exactly where it stopped.  Every computation before a state or an edge is
 * committed is a pure function of the tables, so redoing it after a NEED is
 * harmless; commits happen only once all their inputs are known.  Python
 * errors (a scenario error, a stale reduction table) therefore surface in
 * Python, where they happen, and no C code ever calls back into Python.
 *
 * The tables (all keyed on interned ids the Python side assigns):
 *
 *   groups    (actor, actor state id) -> finished?, and its memo entries;
 *             (NACTORS + observer, 0) for the model's promise hooks
 *   entries   the slots a step (or hook) read, in the order the Python memo
 *             learnt them (the first that matches wins, as in Engine._lookup)
 *   rules     (entry, the values of its slots) -> result id (0: disabled) or
 *             observation id
 *   results   a step's effect: component writes, key-set changes, the
 *             violations of its events, the files whose notifier protocol
 *             (P5) its events advance, the slots it changes
 *   keysets   (key set id, change id) -> key set id after the change
 *   protos    (result, protocol components before) -> writes and violations
 *   verdicts  (P4: private pages before, after, host references after;
 *             state: its observations) -> violation list
 *   safe      partial order: (result, actor) -> writes nothing visible;
 *             (result, actor, mmap_lock, other actor, its state) -> commutes
 *             with all that actor can still do
 *   sym       symmetry: (permutation, slot, value, vmas) -> the permuted
 *             component, or "cannot be permuted"
 *   terms     fingerprints: (slot, value) -> the component's 128-bit term
 *
 * The search numbers states in discovery order (breadth-first: the frontier
 * is a range of numbers) exactly as explore.py does (same numbering, same
 * parents, same edges), and keeps them compactly; what it keeps per state:
 *
 *   record   the state's components as codes: each slot has its own
 *            dictionary of the ids it has held (code 0: its value in the
 *            initial state), and a record is the codes packed into as few
 *            bits as each dictionary needs, fixed width for all states.  A
 *            slot that outgrows its bits gets one more bit at the end of the
 *            record (old records read 0 there: their codes are unchanged);
 *            when the record needs another byte, all records are re-laid out
 *            (in place, once per byte of growth).
 *   visited  a set of (32 hash bits, state number) in 16 open-addressing
 *            segments, each grown on its own (no moment holds two copies of
 *            the whole set); freed when the search ends.
 *   parent   32-bit state number, and the actor that stepped (a byte); the
 *            depth is not stored: the states of one depth are a range.
 *   edges    per state, the mask of the actors with an edge out and the mask
 *            of those that found a new state: that state is the next number
 *            (its parent is this state), so only edges to states already
 *            known store their target (32 bits).
 *   (with symmetry: per state and per stored edge the permutation, a byte;
 *   per state the fingerprint that orders orbits, 16 bytes.)
 *
 * Which actors have finished is read from the record when P8 needs it.  P8
 * is a fixpoint over the stored edges, swept forwards and backwards until
 * nothing changes (no reversed graph is built).
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

typedef uint32_t u32;
typedef uint64_t u64;
typedef int64_t i64;
typedef int16_t i16;
typedef uint8_t u8;
typedef unsigned __int128 u128;

enum {
    RC_DONE = 0, RC_BUDGET = 1, RC_NEED_GROUP = 2, RC_NEED_STEP = 3, RC_NEED_OBS = 4, RC_NEED_KEYSET = 5,
    RC_NEED_PROTO = 6, RC_NEED_VERDICT = 7, RC_NEED_SAFE = 8, RC_NEED_VISIBLE = 9, RC_NEED_SYM = 10,
    RC_NEED_TERM = 11, RC_NOMEM = -1, RC_BAD = -2, RC_TOO_MANY = -3
};
enum { VK_P4 = 1, VK_STATE = 2 };
#define MAXA 30      /* actors (masks are 32-bit, state ids of actors fit in keys) */
#define MAXV 4       /* violation lists per edge: events, protocol, P4; and the state's */
#define NOTSYM (-1)
#define MAXK (MAXA + 34)  /* group kinds: the actors, then the promise hooks' observers */

/* --- growable arrays --------------------------------------------------------------------------- */

#define VEC(T) struct { T *a; u64 n, cap; }
typedef VEC(i64) vi64;
typedef VEC(u32) vu32;
typedef VEC(i16) vi16;
typedef VEC(u128) vu128;

static int grow(void **a, u64 *cap, u64 need, size_t size) {
    if (need <= *cap)
        return 0;
    u64 c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *p = realloc(*a, c * size);
    if (!p)
        return -1;
    *a = p;
    *cap = c;
    return 0;
}
#define RESERVE(v, need) grow((void **)&(v).a, &(v).cap, (need), sizeof(*(v).a))
#define PUSH(v, x) (RESERVE(v, (v).n + 1) ? -1 : ((v).a[(v).n++] = (x), 0))

/* --- hashing ------------------------------------------------------------------------------------ */

/* Keys are short arrays of small ids: each word times its own odd constant,
 * summed (independent multiplies, no chain through the key), then mixed. */
static const u64 HK[16] = {
    0x9E3779B97F4A7C15ull, 0xC2B2AE3D27D4EB4Full, 0x165667B19E3779F9ull, 0xD6E8FEB86659FD93ull,
    0xFF51AFD7ED558CCDull, 0xC4CEB9FE1A85EC53ull, 0xBF58476D1CE4E5B9ull, 0x94D049BB133111EBull,
    0x2545F4914F6CDD1Dull, 0x5851F42D4C957F2Dull, 0x14057B7EF767814Full, 0xDA942042E4DD58B5ull,
    0x9FB21C651E98DF25ull, 0xA0761D6478BD642Full, 0xE7037ED1A0B428DBull, 0x8EBC6AF09C88C6E3ull};

static u64 hwords(const u32 *w, u64 n) {
    u64 a = n * 0x243F6A8885A308D3ull, b = 0;
    u64 i = 0;
    for (; i + 2 <= n; i += 2) {
        a += ((u64)w[i] + 1) * HK[i & 15];
        b += ((u64)w[i + 1] + 1) * HK[(i + 1) & 15];
        if ((i & 15) == 14) {  /* (a position beyond 16 words must not cancel one within) */
            a = (a << 23 | a >> 41) * 0x9E3779B97F4A7C15ull;
            b = (b << 29 | b >> 35) * 0xC2B2AE3D27D4EB4Full;
        }
    }
    if (i < n)
        a += ((u64)w[i] + 1) * HK[i & 15];
    u64 h = a ^ (b << 32 | b >> 32);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h | 1; /* 0 marks an empty slot */
}

/* A state's hash is the sum of one mixed term per non-zero component, so a
 * transition updates it from the few components it writes instead of hashing
 * the whole state again, and widening states (new slots are zero) keeps it. */
static inline u64 slotmix(u64 j, u32 v) {
    if (!v)
        return 0;
    u64 z = (j << 32 | v) + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static u64 hstate(const u32 *s, u64 W) {
    u64 h = 0;
    for (u64 j = 0; j < W; j++)
        h += slotmix(j, s[j]);
    return h;
}

/* A table from variable-length keys of u32 to i64. */
typedef struct { u64 h; u64 off; u64 len; i64 val; } hent;
typedef struct { hent *e; u64 cap, n; vu32 pool; } htab;

static hent *ht_probe(htab *t, const u32 *key, u64 len, u64 h) {
    u64 m = t->cap - 1;
    for (u64 p = h & m;; p = (p + 1) & m) {
        hent *e = &t->e[p];
        if (!e->h)
            return e;
        if (e->h == h && e->len == len && !memcmp(t->pool.a + e->off, key, len * sizeof(u32)))
            return e;
    }
}

static int ht_get(htab *t, const u32 *key, u64 len, i64 *val) {
    if (!t->cap)
        return 0;
    hent *e = ht_probe(t, key, len, hwords(key, len));
    if (!e->h)
        return 0;
    *val = e->val;
    return 1;
}

static int ht_put(htab *t, const u32 *key, u64 len, i64 val) {
    if (2 * (t->n + 1) > t->cap) {
        u64 cap = t->cap ? 2 * t->cap : 64;
        hent *e = calloc(cap, sizeof(hent));
        if (!e)
            return -1;
        hent *old = t->e;
        u64 ocap = t->cap;
        t->e = e;
        t->cap = cap;
        for (u64 i = 0; i < ocap; i++)
            if (old[i].h) {
                u64 m = cap - 1, p = old[i].h & m;
                while (e[p].h)
                    p = (p + 1) & m;
                e[p] = old[i];
            }
        free(old);
    }
    u64 h = hwords(key, len);
    hent *e = ht_probe(t, key, len, h);
    if (e->h) {
        e->val = val;
        return 0;
    }
    if (RESERVE(t->pool, t->pool.n + len))
        return -1;
    memcpy(t->pool.a + t->pool.n, key, len * sizeof(u32));
    e->h = h;
    e->off = t->pool.n;
    e->len = len;
    e->val = val;
    t->pool.n += len;
    t->n++;
    return 0;
}

static void ht_free(htab *t) {
    free(t->e);
    free(t->pool.a);
}

/* --- the context ------------------------------------------------------------------------------- */

/* --- the context ------------------------------------------------------------------------------- */

enum { IO_SIZE = 64 };
#define MAXF 10        /* bit fields of one slot between two re-layouts */
#define NSEG 16        /* segments of the visited set (by the top 4 bits of the hash) */
#define SEGSHIFT 60
#define NOSTATE 0xffffffffu

/* A map from u64 keys (never 0 after the +1 below) to u32: the codes of (slot, id). */
typedef struct { u64 k; u32 v; } cent;
typedef struct { cent *e; u64 cap, n; } cmap;

/* Large arrays read at random (the visited set, the records, P8's masks) on
 * huge pages where the kernel offers them: a TLB miss per probe costs more
 * than the probe (most of all in a virtual machine). */
static void huge(void *p, u64 size) {
#ifdef MADV_HUGEPAGE
    const u64 H = 2u << 20;
    if (size < 2 * H)
        return;
    u64 a = ((u64)(uintptr_t)p + H - 1) & ~(H - 1), b = ((u64)(uintptr_t)p + size) & ~(H - 1);
    if (b > a)
        madvise((void *)(uintptr_t)a, b - a, MADV_HUGEPAGE);
#else
    (void)p;
    (void)size;
#endif
}

/* One segment of the visited set: entries (hash bits << 32 | state + 1), 0 = empty. */
typedef struct { u64 *e; u64 cap, n; } vseg;

typedef struct {
    i64 io[IO_SIZE]; /* the query of the last NEED (and gm_stats' answers) */
    int n;           /* actors */
    u32 aslot[MAXA];
    u64 W;           /* width of every state in ids (>= the slots the Python side has) */
    u64 nslots;      /* the slots the Python side has */
    u8 *sflags;      /* per slot: 1 = a symmetry permutation may change it */
    int all, por, p4, p6;
    i64 max_states;
    int obs_pp, obs_hr, obs_out, nso, so[8];
    i64 mm_slot, vmas_slot, ptes_slot;
    int np;
    int perm[64][MAXA]; /* actor permutations (index 0: the identity) */
    int visible_dirty;       /* a promise hook has read something new since the last check */
    i64 ample_state;         /* the state whose partial-order decision is being made, */
    int ample_dirty;         /* and whether it must check the hooks' reads first */

    vi64 gd[MAXK];   /* groups: per kind, indexed by the actor state id: the group + 1, or 0 */
    htab rules, keysets, protos, verdicts, safe, symt, terms;
    vi64 g_done, g_first, g_last;               /* per group */
    vi64 e_off, e_len, e_next, e_boff, e_bn;   /* per entry: spec, next entry, spec bitset */
    vu32 specs;
    VEC(u64) bits;
    vi64 r_woff, r_wn, r_koff, r_kn, r_ev, r_moff, r_mn, r_toff, r_tn; /* per result */
    vi64 r_count;    /* per result: the transitions taken with it (the steps' coverage) */
    vu32 rdata;
    vi64 o_woff, o_wn, o_vl; /* per protocol outcome */
    vi64 v_off, v_n;         /* per violation list */
    vu32 vdata;
    vu128 term;

    /* the codec: per slot, its dictionary and its bit fields in the record */
    vu32 *cv;        /* code -> id */
    u8 *nb, *nf;     /* bits, fields */
    u32 (*foff)[MAXF];
    u8 (*fw)[MAXF];
    vu32 vs;         /* the slots with bits (all others hold their code 0) */
    cmap codes;      /* (slot, id) -> code */
    u64 hconst;      /* the hash terms of the slots without bits */
    u64 used, R;     /* bits of the layout, bytes of a record */
    int initial_set;

    /* the states, in discovery order */
    u64 ns, scap;    /* states, capacity of the per-state arrays */
    u8 *rec;         /* ns records of R bytes (+8 bytes to read fields as u64) */
    u32 *par;
    u8 *via, *sp;    /* the actor that stepped; the permutation (symmetry only) */
    u8 *msk;         /* per state: the mask of actors with an edge out, then of those to a new state */
    int mb;          /* bytes of one mask */
    vu128 fp;        /* fingerprints (symmetry only) */
    vu32 nt;         /* targets of the edges to states already known, in edge order */
    VEC(u8) ntp;     /* and their permutations (symmetry only) */
    vseg seg[NSEG];
    int visited_freed;
    vi64 lvl;        /* the first state of each depth, up to the depth being expanded */
    VEC(u64) ck;     /* per 64 states: the stored targets before the first (after the search) */
    u32 *can;        /* P8: per state, the actors that can still finish */
    i64 sweeps;
    i64 peak_store;  /* the store's bytes when the search ended (its largest) */

    /* the search */
    i64 transitions;
    u32 found_mask;
    i64 flog[16][4]; /* vlist, position, state, actor */
    int nfound;
    int stopped, phase;
    i64 cur, cur_actor, level_start, level_end;
    u32 *init;
    u32 *S, *T, *I, *B, *Q, *K;   /* the state being expanded (decoded), scratch states */
    u64 Sh;                        /* S's hash */
    u32 *codes_tmp;                /* per slot: codes while (re)encoding */
    u8 *cand, *rtmp;               /* a successor's record; scratch for re-layouts */
    u32 *PB;                       /* per actor: its successor of the state being expanded, */
    u8 *PC;                        /* and that successor's record */
    u64 pbw, pcs;                  /* (their widths) */
    u64 layout;                    /* re-layouts so far */
    vu32 pd[MAXA];                 /* per actor: the writes of its transition (phase one of expand) */
    vu32 dirty;                    /* a transition's writes: (slot, id) pairs */
} ctx;

/* --- the codec ------------------------------------------------------------------------------------ */

static inline u64 cmix(u64 k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static int cmap_get(const cmap *m, u64 key, u32 *v) {
    if (!m->cap)
        return 0;
    key++;
    u64 mask = m->cap - 1;
    for (u64 p = cmix(key) & mask;; p = (p + 1) & mask) {
        if (m->e[p].k == key) {
            *v = m->e[p].v;
            return 1;
        }
        if (!m->e[p].k)
            return 0;
    }
}

static int cmap_put(cmap *m, u64 key, u32 v) {
    if (2 * (m->n + 1) > m->cap) {
        u64 cap = m->cap ? 2 * m->cap : 256;
        cent *e = calloc(cap, sizeof(cent));
        if (!e)
            return -1;
        for (u64 i = 0; i < m->cap; i++)
            if (m->e[i].k) {
                u64 p = cmix(m->e[i].k) & (cap - 1);
                while (e[p].k)
                    p = (p + 1) & (cap - 1);
                e[p] = m->e[i];
            }
        free(m->e);
        m->e = e;
        m->cap = cap;
    }
    key++;
    u64 mask = m->cap - 1, p = cmix(key) & mask;
    while (m->e[p].k && m->e[p].k != key)
        p = (p + 1) & mask;
    if (!m->e[p].k)
        m->n++;
    m->e[p].k = key;
    m->e[p].v = v;
    return 0;
}

static inline u64 get_bits(const u8 *r, u64 off, u32 w) {
    u64 x;
    memcpy(&x, r + (off >> 3), 8);
    return (x >> (off & 7)) & ((1ull << w) - 1);
}

static inline void put_bits(u8 *r, u64 off, u32 w, u64 v) {
    u64 x, m = ((1ull << w) - 1) << (off & 7);
    memcpy(&x, r + (off >> 3), 8);
    x = (x & ~m) | ((v << (off & 7)) & m);
    memcpy(r + (off >> 3), &x, 8);
}

static inline u32 code_in(const ctx *c, const u8 *r, u32 j) {
    u32 code = 0, shift = 0;
    for (int f = 0; f < c->nf[j]; f++) {
        code |= (u32)get_bits(r, c->foff[j][f], c->fw[j][f]) << shift;
        shift += c->fw[j][f];
    }
    return code;
}

static inline void put_code(const ctx *c, u8 *r, u32 j, u32 code) {
    for (int f = 0; f < c->nf[j]; f++) {
        put_bits(r, c->foff[j][f], c->fw[j][f], code);
        code >>= c->fw[j][f];
    }
}

/* Grow the per-state arrays to hold at least `need` states (realloc of large
 * blocks moves pages, it does not copy them: growing costs no second copy). */
static int reserve_states(ctx *c, u64 need) {
    if (need <= c->scap)
        return 0;
    u64 cap = c->scap ? c->scap : 1024;
    while (cap < need)
        cap *= 2;
    u8 *rec = realloc(c->rec, cap * c->R + 8);
    if (!rec)
        return -1;
    c->rec = rec;
    huge(rec, cap * c->R + 8);
    u32 *par = realloc(c->par, cap * sizeof(u32));
    if (!par)
        return -1;
    c->par = par;
    u8 *via = realloc(c->via, cap);
    if (!via)
        return -1;
    c->via = via;
    u8 *msk = realloc(c->msk, cap * 2 * (u64)c->mb);
    if (!msk)
        return -1;
    c->msk = msk;
    if (c->np > 1) {
        u8 *sp = realloc(c->sp, cap);
        if (!sp)
            return -1;
        c->sp = sp;
    }
    c->scap = cap;
    return 0;
}

/* Lay the records out again, one field per slot, in (at least) R bytes, and
 * rewrite every record (from the last, so that a record that grows never
 * overwrites one still to be read). */
static int relayout(ctx *c) {
    u64 used = 0;
    for (u64 q = 0; q < c->vs.n; q++)
        used += c->nb[c->vs.a[q]];
    u64 R = (used + 7) / 8;
    if (R < c->R)
        R = c->R;
    u8 *rec = realloc(c->rec, (c->scap ? c->scap : 1) * R + 8);
    u8 *cand = realloc(c->cand, R + 8), *rtmp = realloc(c->rtmp, R + 8);
    if (rec)
        c->rec = rec;
    if (cand)
        c->cand = cand;
    if (rtmp)
        c->rtmp = rtmp;
    if (!rec || !cand || !rtmp)
        return -1;
    /* the old layout, to read the records with */
    u32 (*ooff)[MAXF] = malloc(c->W * sizeof(*ooff) + 1);
    u8 (*ow)[MAXF] = malloc(c->W * sizeof(*ow) + 1);
    u8 *onf = malloc(c->W + 1);
    if (!ooff || !ow || !onf) {
        free(ooff); free(ow); free(onf);
        return -1;
    }
    memcpy(ooff, c->foff, c->W * sizeof(*ooff));
    memcpy(ow, c->fw, c->W * sizeof(*ow));
    memcpy(onf, c->nf, c->W);
    u64 oR = c->R;
    u64 off = 0;
    for (u64 q = 0; q < c->vs.n; q++) {
        u32 j = c->vs.a[q];
        c->nf[j] = 1;
        c->foff[j][0] = (u32)off;
        c->fw[j][0] = c->nb[j];
        off += c->nb[j];
    }
    c->used = used;
    c->R = R;
    c->layout++;
    for (u64 x = c->ns; x-- > 0;) {
        const u8 *old = c->rec + x * oR;
        memset(c->rtmp, 0, R + 8);
        for (u64 q = 0; q < c->vs.n; q++) {
            u32 j = c->vs.a[q], code = 0, shift = 0;
            for (int f = 0; f < onf[j]; f++) {
                code |= (u32)get_bits(old, ooff[j][f], ow[j][f]) << shift;
                shift += ow[j][f];
            }
            put_code(c, c->rtmp, j, code);
        }
        memcpy(c->rec + x * R, c->rtmp, R);
    }
    memset(c->rec + c->ns * R, 0, 8);
    free(ooff); free(ow); free(onf);
    return 0;
}

/* One more bit for slot j. */
static int grow_slot(ctx *c, u32 j) {
    if (!c->nb[j]) {
        c->hconst -= slotmix(j, c->cv[j].a[0]);
        if (PUSH(c->vs, j))
            return -1;
    }
    c->nb[j]++;
    if (c->used < 8 * c->R && c->nf[j] < MAXF) {
        /* old records read 0 there: their codes stay */
        c->foff[j][c->nf[j]] = (u32)c->used;
        c->fw[j][c->nf[j]] = 1;
        c->nf[j]++;
        c->used++;
        return 0;
    }
    return relayout(c);
}

/* Slot j's code of id v (made, and room for it made, the first time). */
static int code_of(ctx *c, u32 j, u32 v, u32 *code) {
    vu32 *d = &c->cv[j];
    if (d->a[0] == v) {
        *code = 0;
        return 0;
    }
    if (d->n > 1 && cmap_get(&c->codes, (u64)j << 32 | v, code))
        return 0;
    u32 k = (u32)d->n;
    if (PUSH(*d, v) || cmap_put(&c->codes, (u64)j << 32 | v, k))
        return -1;
    while ((1ull << c->nb[j]) <= k)
        if (grow_slot(c, j))
            return -1;
    *code = k;
    return 0;
}

/* State x into S (and its hash into Sh). */
static void decode(ctx *c, u64 x) {
    const u8 *r = c->rec + x * c->R;
    u64 h = c->hconst;
    for (u64 q = 0; q < c->vs.n; q++) {
        u32 j = c->vs.a[q];
        u32 v = c->cv[j].a[code_in(c, r, j)];
        c->S[j] = v;
        h += slotmix(j, v);
    }
    c->Sh = h;
}

/* Actor i's state id in record x. */
static inline u32 actor_id(const ctx *c, u64 x, int i) {
    u32 j = c->aslot[i];
    return c->cv[j].a[c->nb[j] ? code_in(c, c->rec + x * c->R, j) : 0];
}

/* The whole state s as a record, into c->cand. */
static int encode(ctx *c, const u32 *s) {
    for (u64 j = 0; j < c->nslots; j++)
        if (code_of(c, (u32)j, s[j], &c->codes_tmp[j]))
            return -1;
    u8 *cand = c->cand;  /* (after the codes: a new one may have re-laid the records out) */
    memset(cand, 0, c->R + 8);
    for (u64 q = 0; q < c->vs.n; q++) {
        u32 j = c->vs.a[q];
        put_code(c, cand, j, c->codes_tmp[j]);
    }
    return 0;
}

/* A transition's successor is its source s and the writes in c->dirty, (slot,
 * id) pairs in the order made (a later write to a slot wins).  Slot j's id
 * in it: */
static inline u32 current(const ctx *c, const u32 *s, u32 j) {
    for (u64 q = c->dirty.n; q > 0; q -= 2)
        if (c->dirty.a[q - 2] == j)
            return c->dirty.a[q - 1];
    return s[j];
}

/* ... and the whole of it, into T. */
static void successor(const ctx *c, const u32 *s, u32 *T) {
    memcpy(T, s, c->W * sizeof(u32));
    for (u64 q = 0; q < c->dirty.n; q += 2)
        T[c->dirty.a[q]] = c->dirty.a[q + 1];
}

/* The successor of state x by the writes in c->dirty, as a record, into c->cand. */
static int encode_from(ctx *c, u64 x) {
    const u32 *d = c->dirty.a;
    u64 n = c->dirty.n;
    for (u64 q = 0; q < n; q += 2) {
        u64 r = q + 2;
        while (r < n && d[r] != d[q])
            r += 2;
        if (r < n)
            continue;  /* (written again later) */
        if (code_of(c, d[q], d[q + 1], &c->codes_tmp[d[q]]))
            return -1;
    }
    /* (after the codes: a new one may have re-laid the records out) */
    u8 *cand = c->cand;
    memcpy(cand, c->rec + x * c->R, c->R);
    memset(cand + c->R, 0, 8);
    for (u64 q = 0; q < n; q += 2)
        put_code(c, cand, d[q], c->codes_tmp[d[q]]);
    return 0;
}

/* --- the visited set ------------------------------------------------------------------------------- */

static inline u32 tag_of(u64 h) { return (u32)(h >> 24); }

static i64 visited_find(ctx *c, u64 h, const u8 *cand) {
    const vseg *g = &c->seg[h >> SEGSHIFT];
    if (!g->cap)
        return -1;
    u32 tag = tag_of(h);
    u64 m = g->cap - 1;
    for (u64 p = tag & m;; p = (p + 1) & m) {
        u64 e = g->e[p];
        if (!e)
            return -1;
        if ((u32)(e >> 32) == tag) {
            u64 x = (u32)e - 1;
            if (!memcmp(c->rec + x * c->R, cand, c->R))
                return (i64)x;
        }
    }
}

/* (GCC drops a __builtin_prefetch whose address it had to load: nothing
 * else used the loads.) */
static inline void prefetch(const void *p) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("prefetcht0 (%0)" : : "r"(p));
#else
    __builtin_prefetch(p);
    __asm__ volatile("" : : "r"(p));
#endif
}

/* Ask the memory for where visited_find(h) will look. */
static inline void visited_prefetch(const ctx *c, u64 h) {
    const vseg *g = &c->seg[h >> SEGSHIFT];
    if (g->cap)
        prefetch(&g->e[tag_of(h) & (g->cap - 1)]);
}

/* ... and for the record it will compare with first. */
static inline void visited_prefetch_record(const ctx *c, u64 h) {
    const vseg *g = &c->seg[h >> SEGSHIFT];
    if (!g->cap)
        return;
    u32 tag = tag_of(h);
    u64 m = g->cap - 1;
    for (u64 p = tag & m; g->e[p]; p = (p + 1) & m)
        if ((u32)(g->e[p] >> 32) == tag) {
            prefetch(c->rec + ((u32)g->e[p] - 1) * c->R);
            return;
        }
}

static int visited_add(ctx *c, u64 h, u64 x) {
    vseg *g = &c->seg[h >> SEGSHIFT];
    if (5 * (g->n + 1) > 4 * g->cap) {
        u64 cap = g->cap ? 2 * g->cap : 64;
        u64 *e = calloc(cap, sizeof(u64));
        if (!e)
            return -1;
        huge(e, cap * sizeof(u64));
        for (u64 i = 0; i < g->cap; i++)
            if (g->e[i]) {
                u64 p = (g->e[i] >> 32) & (cap - 1);
                while (e[p])
                    p = (p + 1) & (cap - 1);
                e[p] = g->e[i];
            }
        free(g->e);
        g->e = e;
        g->cap = cap;
    }
    u32 tag = tag_of(h);
    u64 m = g->cap - 1, p = tag & m;
    while (g->e[p])
        p = (p + 1) & m;
    g->e[p] = (u64)tag << 32 | (x + 1);
    g->n++;
    return 0;
}

static void visited_free(ctx *c) {
    for (int i = 0; i < NSEG; i++) {
        free(c->seg[i].e);
        c->seg[i].e = NULL;
        c->seg[i].cap = c->seg[i].n = 0;
    }
    c->visited_freed = 1;
}

/* --- per-state edges ------------------------------------------------------------------------------- */

/* (__builtin_popcount is a library call where the compiler may not assume the instruction) */
static inline int popcount32(u32 m) {
    m = m - ((m >> 1) & 0x55555555u);
    m = (m & 0x33333333u) + ((m >> 2) & 0x33333333u);
    return (int)((((m + (m >> 4)) & 0x0F0F0F0Fu) * 0x01010101u) >> 24);
}

static inline u32 get_mask(const ctx *c, u64 x, int which) {
    u32 m = 0;
    memcpy(&m, c->msk + (x * 2 + (u64)which) * (u64)c->mb, (size_t)c->mb);
    return m;
}

static inline void set_mask(ctx *c, u64 x, int which, u32 m) {
    memcpy(c->msk + (x * 2 + (u64)which) * (u64)c->mb, &m, (size_t)c->mb);
}

/* The depth of state x: the range of depths it lies in. */
static i64 depth_of(const ctx *c, u64 x) {
    if ((i64)x >= c->level_end)
        return (i64)c->lvl.n;  /* found while expanding the last depth */
    u64 lo = 0, hi = c->lvl.n;  /* the last level start <= x */
    while (hi - lo > 1) {
        u64 mid = (lo + hi) / 2;
        if ((u64)c->lvl.a[mid] <= x)
            lo = mid;
        else
            hi = mid;
    }
    return (i64)lo;
}

/* --- setup from Python ---------------------------------------------------------------------------- */

/* cfg: n, slots..., all, por, p4, p6, max_states, obs_pp, obs_hr, obs_out, nso, so..., mm_slot,
 *      vmas_slot, ptes_slot, np, perms (np * n) */
void *gm_new(const i64 *cfg) {
    ctx *c = calloc(1, sizeof(ctx));
    if (!c)
        return NULL;
    i64 k = 0;
    c->n = (int)cfg[k++];
    if (c->n < 1 || c->n > MAXA) {
        free(c);
        return NULL;
    }
    for (int i = 0; i < c->n; i++)
        c->aslot[i] = (u32)cfg[k++];
    c->all = (int)cfg[k++];
    c->por = (int)cfg[k++];
    c->p4 = (int)cfg[k++];
    c->p6 = (int)cfg[k++];
    c->max_states = cfg[k++];
    c->obs_pp = (int)cfg[k++];
    c->obs_hr = (int)cfg[k++];
    c->obs_out = (int)cfg[k++];
    c->nso = (int)cfg[k++];
    for (int i = 0; i < c->nso; i++)
        c->so[i] = (int)cfg[k++];
    c->mm_slot = cfg[k++];
    c->vmas_slot = cfg[k++];
    c->ptes_slot = cfg[k++];
    c->np = (int)cfg[k++];
    if (c->np < 1 || c->np > 64) {
        free(c);
        return NULL;
    }
    for (int p = 0; p < c->np; p++)
        for (int i = 0; i < c->n; i++)
            c->perm[p][i] = (int)cfg[k++];
    c->mb = (c->n + 7) / 8;
    c->cur_actor = 0;
    c->ample_state = -1;
    c->cand = calloc(16, 1);
    c->rtmp = calloc(16, 1);
    /* the states' width and buffers come with gm_set_slots */
    /* violation list 0: no violation; result 0: disabled */
    if (!c->cand || !c->rtmp || PUSH(c->v_off, 0) || PUSH(c->v_n, 0)) {
        free(c->cand);
        free(c->rtmp);
        free(c);
        return NULL;
    }
    return c;
}

i64 *gm_io(ctx *c) { return c->io; }
u32 *gm_query(ctx *c) { return c->Q; }
i64 gm_width(ctx *c) { return (i64)c->W; }

static void *widen(void *p, u64 old, u64 now, size_t size) {
    void *q = realloc(p, now * size);
    if (q && now > old)
        memset((char *)q + old * size, 0, (now - old) * size);
    return q;
}

/* The Python side has nslots slots now (flags: one byte per slot).  States
 * hold 0 in the slots they did not know (the code 0 of a new slot). */
int gm_set_slots(ctx *c, i64 nslots, const u8 *flags) {
    u64 old = c->W;
    if ((u64)nslots > old) {
        u64 W = (u64)nslots + 8;
        u32 **bufs[] = {&c->S, &c->T, &c->I, &c->B, &c->Q, &c->init, &c->codes_tmp};
        for (size_t b = 0; b < sizeof(bufs) / sizeof(*bufs); b++) {
            u32 *p = widen(*bufs[b], old, W, sizeof(u32));
            if (!p)
                return RC_NOMEM;
            *bufs[b] = p;
        }
        free(c->K);
        c->K = calloc(W + 8 + MAXA, sizeof(u32));
        u8 *sf = widen(c->sflags, old, W, 1);
        vu32 *cv = widen(c->cv, old, W, sizeof(vu32));
        u8 *nb = widen(c->nb, old, W, 1), *nf = widen(c->nf, old, W, 1);
        if (sf)
            c->sflags = sf;
        if (cv)
            c->cv = cv;
        if (nb)
            c->nb = nb;
        if (nf)
            c->nf = nf;
        void *foff = widen(c->foff, old, W, sizeof(*c->foff)), *fw = widen(c->fw, old, W, sizeof(*c->fw));
        if (foff)
            c->foff = foff;
        if (fw)
            c->fw = fw;
        if (!c->K || !sf || !cv || !nb || !nf || !foff || !fw)
            return RC_NOMEM;
        for (u64 j = old; j < W; j++)
            if (PUSH(c->cv[j], 0))  /* a new slot's code 0: absent */
                return RC_NOMEM;
        c->W = W;
    }
    c->nslots = (u64)nslots;
    memcpy(c->sflags, flags, (size_t)nslots);
    return 0;
}

/* The initial state: every slot's code 0. */
void gm_set_initial(ctx *c, const u32 *s, i64 n) {
    memset(c->init, 0, c->W * sizeof(u32));
    memcpy(c->init, s, (size_t)n * sizeof(u32));
    if (c->ns)
        return;
    c->hconst = 0;
    for (u64 j = 0; j < c->W; j++) {
        c->cv[j].a[0] = c->init[j];
        c->S[j] = c->init[j];
        c->hconst += slotmix(j, c->init[j]);
    }
    c->initial_set = 1;
}

static int set_at(vi64 *v, i64 i, i64 x) {
    if (RESERVE(*v, (u64)i + 1))
        return -1;
    while (v->n <= (u64)i)
        v->a[v->n++] = 0;
    v->a[i] = x;
    return 0;
}

/* The group of (kind, aid): a direct index, as actor state ids are small and dense. */
static inline int group(ctx *c, u32 kind, u32 aid, i64 *g) {
    if (kind >= MAXK || aid >= c->gd[kind].n || !c->gd[kind].a[aid])
        return 0;
    *g = c->gd[kind].a[aid] - 1;
    return 1;
}

int gm_add_group(ctx *c, i64 kind, i64 aid, i64 done) {
    i64 g;
    if (kind < 0 || kind >= MAXK || aid < 0)
        return RC_BAD;
    if (group(c, (u32)kind, (u32)aid, &g))
        return 0;
    g = (i64)c->g_done.n;
    if (PUSH(c->g_done, done) || PUSH(c->g_first, -1) || PUSH(c->g_last, -1))
        return RC_NOMEM;
    return set_at(&c->gd[kind], aid, g + 1) ? RC_NOMEM : 0;
}

int gm_add_rule(ctx *c, i64 kind, i64 aid, i64 nspec, const u32 *spec, const u32 *vals, i64 value) {
    i64 g = 0;
    if (!group(c, (u32)kind, (u32)aid, &g)) {
        int rc = gm_add_group(c, kind, aid, 0);
        if (rc)
            return rc;
        group(c, (u32)kind, (u32)aid, &g);
    }
    i64 e = c->g_first.a[g];
    for (; e >= 0; e = c->e_next.a[e])
        if (c->e_len.a[e] == nspec && !memcmp(c->specs.a + c->e_off.a[e], spec, (size_t)nspec * sizeof(u32)))
            break;
    if (e < 0) {
        e = (i64)c->e_off.n;
        u64 maxslot = 0;
        for (i64 j = 0; j < nspec; j++)
            if (spec[j] > maxslot)
                maxslot = spec[j];
        u64 nb = maxslot / 64 + 1;
        if (PUSH(c->e_off, (i64)c->specs.n) || PUSH(c->e_len, nspec) || PUSH(c->e_next, -1) ||
            PUSH(c->e_boff, (i64)c->bits.n) || PUSH(c->e_bn, (i64)nb) ||
            RESERVE(c->specs, c->specs.n + (u64)nspec) || RESERVE(c->bits, c->bits.n + nb))
            return RC_NOMEM;
        memcpy(c->specs.a + c->specs.n, spec, (size_t)nspec * sizeof(u32));
        c->specs.n += (u64)nspec;
        memset(c->bits.a + c->bits.n, 0, nb * sizeof(u64));
        for (i64 j = 0; j < nspec; j++)
            c->bits.a[c->bits.n + spec[j] / 64] |= 1ull << (spec[j] % 64);
        c->bits.n += nb;
        if (c->g_last.a[g] >= 0)
            c->e_next.a[c->g_last.a[g]] = e;
        else
            c->g_first.a[g] = e;
        c->g_last.a[g] = e;
    }
    if (nspec + 1 > (i64)(c->W + 8 + MAXA))
        return RC_BAD;
    c->K[0] = (u32)e;
    memcpy(c->K + 1, vals, (size_t)nspec * sizeof(u32));
    return ht_put(&c->rules, c->K, (u64)nspec + 1, value) ? RC_NOMEM : 0;
}

static i64 put_data(vu32 *d, const u32 *p, i64 n) {
    if (RESERVE(*d, d->n + (u64)n))
        return -1;
    i64 off = (i64)d->n;
    memcpy(d->a + d->n, p, (size_t)n * sizeof(u32));
    d->n += (u64)n;
    return off;
}

int gm_add_result(ctx *c, i64 rid, i64 nw, const u32 *w, i64 nk, const u32 *k, i64 ev, i64 nm,
                  const u32 *m, i64 nt, const u32 *t) {
    i64 wo = put_data(&c->rdata, w, 2 * nw), ko = put_data(&c->rdata, k, 2 * nk);
    i64 mo = put_data(&c->rdata, m, nm), to = put_data(&c->rdata, t, nt);
    if (wo < 0 || ko < 0 || mo < 0 || to < 0 || set_at(&c->r_woff, rid, wo) || set_at(&c->r_wn, rid, nw) ||
        set_at(&c->r_koff, rid, ko) || set_at(&c->r_kn, rid, nk) || set_at(&c->r_ev, rid, ev) ||
        set_at(&c->r_moff, rid, mo) || set_at(&c->r_mn, rid, nm) || set_at(&c->r_toff, rid, to) ||
        set_at(&c->r_tn, rid, nt) || set_at(&c->r_count, rid, 0))
        return RC_NOMEM;
    return 0;
}

int gm_add_keyset(ctx *c, i64 cur, i64 change, i64 value) {
    u32 key[2] = {(u32)cur, (u32)change};
    return ht_put(&c->keysets, key, 2, value) ? RC_NOMEM : 0;
}

int gm_add_proto(ctx *c, i64 rid, i64 nm, const u32 *vals, i64 nw, const u32 *w, i64 vlist) {
    i64 o = (i64)c->o_woff.n;
    i64 wo = put_data(&c->rdata, w, 2 * nw);
    if (wo < 0 || PUSH(c->o_woff, wo) || PUSH(c->o_wn, nw) || PUSH(c->o_vl, vlist))
        return RC_NOMEM;
    c->K[0] = (u32)rid;
    memcpy(c->K + 1, vals, (size_t)nm * sizeof(u32));
    return ht_put(&c->protos, c->K, (u64)nm + 1, o) ? RC_NOMEM : 0;
}

int gm_add_verdict(ctx *c, i64 n, const u32 *key, i64 vlist) {
    return ht_put(&c->verdicts, key, (u64)n, vlist) ? RC_NOMEM : 0;
}

int gm_add_vlist(ctx *c, i64 vid, i64 n, const u32 *promises) {
    i64 off = put_data(&c->vdata, promises, n);
    if (off < 0 || set_at(&c->v_off, vid, off) || set_at(&c->v_n, vid, n))
        return RC_NOMEM;
    return 0;
}

int gm_add_safe(ctx *c, i64 n, const u32 *key, i64 safe) {
    return ht_put(&c->safe, key, (u64)n, safe) ? RC_NOMEM : 0;
}

int gm_add_sym(ctx *c, const u32 *key4, i64 value) {
    return ht_put(&c->symt, key4, 4, value) ? RC_NOMEM : 0;
}

int gm_add_term(ctx *c, i64 slot, i64 vid, u64 lo, u64 hi) {
    u32 key[2] = {(u32)slot, (u32)vid};
    i64 idx = (i64)c->term.n;
    if (PUSH(c->term, ((u128)hi << 64) | lo))
        return RC_NOMEM;
    return ht_put(&c->terms, key, 2, idx) ? RC_NOMEM : 0;
}

void gm_set_visible_dirty(ctx *c, i64 dirty) {
    c->visible_dirty = (int)dirty;
    if (!dirty)
        c->ample_dirty = 0;
}

/* --- lookups (pure: a miss sets up the query and returns its NEED code) ---------------------------- */

static void query_state(ctx *c, const u32 *s) {
    if (s != c->Q)
        memcpy(c->Q, s, c->W * sizeof(u32));
}

/* The entry matching s in group g, first in learning order: its value, or -1 when none matches. */
static int match(ctx *c, i64 g, const u32 *s, i64 *value, i64 *entry) {
    u32 *K = c->K;
    for (i64 e = c->g_first.a[g]; e >= 0; e = c->e_next.a[e]) {
        i64 n = c->e_len.a[e];
        const u32 *spec = c->specs.a + c->e_off.a[e];
        K[0] = (u32)e;
        for (i64 j = 0; j < n; j++)
            K[j + 1] = s[spec[j]];
        if (ht_get(&c->rules, K, (u64)n + 1, value)) {
            if (entry)
                *entry = e;
            return 1;
        }
    }
    return 0;
}

/* Actor i's step from s: 0 and *rid (0: cannot move), or a NEED code. */
static int step_of(ctx *c, const u32 *s, int i, i64 *rid) {
    i64 g;
    if (group(c, (u32)i, s[c->aslot[i]], &g)) {
        if (c->g_done.a[g]) {
            *rid = 0;
            return 0;
        }
        if (match(c, g, s, rid, NULL))
            return 0;
    }
    c->io[0] = i;
    query_state(c, s);
    return RC_NEED_STEP;
}

static int observe(ctx *c, const u32 *s, int o, i64 *value, i64 *entry) {
    i64 g;
    if (group(c, (u32)(c->n + o), 0, &g) && match(c, g, s, value, entry))
        return 0;
    c->io[0] = o;
    query_state(c, s);
    return RC_NEED_OBS;
}

static int finished_mask(ctx *c, const u32 *s, i64 *mask) {
    i64 m = 0;
    for (int i = 0; i < c->n; i++) {
        i64 g;
        if (!group(c, (u32)i, s[c->aslot[i]], &g)) {
            c->io[0] = i;
            c->io[1] = s[c->aslot[i]];
            return RC_NEED_GROUP;
        }
        if (c->g_done.a[g])
            m |= (i64)1 << i;
    }
    *mask = m;
    return 0;
}

static int verdict(ctx *c, const u32 *key, int n, i64 *vl) {
    if (ht_get(&c->verdicts, key, (u64)n, vl))
        return 0;
    c->io[0] = n;
    for (int j = 0; j < n; j++)
        c->io[1 + j] = key[j];
    return RC_NEED_VERDICT;
}

static int term_of(ctx *c, u32 slot, u32 vid, u128 *t) {
    if (!vid) {
        *t = 0;
        return 0;
    }
    u32 key[2] = {slot, vid};
    i64 idx;
    if (ht_get(&c->terms, key, 2, &idx)) {
        *t = c->term.a[idx];
        return 0;
    }
    c->io[0] = slot;
    c->io[1] = vid;
    return RC_NEED_TERM;
}

static int fingerprint(ctx *c, const u32 *s, u128 *fp) {
    u128 sum = 0, t;
    for (u64 j = 0; j < c->W; j++)
        if (s[j]) {
            int rc = term_of(c, (u32)j, s[j], &t);
            if (rc)
                return rc;
            sum += t;
        }
    *fp = sum;
    return 0;
}

/* fp of t, from that of s (the terms of the components that differ). */
static int fp_update(ctx *c, const u32 *s, const u32 *t, u128 fp, u128 *out) {
    u128 a, b;
    for (u64 j = 0; j < c->W; j++)
        if (s[j] != t[j]) {
            int rc = term_of(c, (u32)j, t[j], &a);
            if (!rc)
                rc = term_of(c, (u32)j, s[j], &b);
            if (rc)
                return rc;
            fp += a - b;
        }
    *out = fp;
    return 0;
}

/* Symmetry: the representative of T's orbit into c->B (Symmetries.canonical). */
static int canonical(ctx *c, const u32 *T, u128 fp, u128 *bfp, int *bg) {
    u64 W = c->W;
    if (T != c->B)
        memcpy(c->B, T, W * sizeof(u32));
    *bfp = fp;
    *bg = 0;
    if (c->np == 1)
        return 0;
    u32 *I = c->I;
    i64 placed[512];
    for (int gi = 1; gi < c->np; gi++) {
        int np = 0;
        u32 vmas = (u64)c->vmas_slot < W ? T[c->vmas_slot] : 0;
        for (u64 j = 0; j < W; j++) {
            if (!(c->sflags[j] & 1) || !T[j])
                continue;
            u32 key[4] = {(u32)gi, (u32)j, T[j], (i64)j == c->ptes_slot ? vmas : 0};
            i64 v;
            if (!ht_get(&c->symt, key, 4, &v)) {
                for (int q = 0; q < 4; q++)
                    c->io[q] = key[q];
                return RC_NEED_SYM;
            }
            if (v == NOTSYM) {
                memcpy(c->B, T, W * sizeof(u32));
                *bfp = fp;
                *bg = 0;
                return 0;
            }
            if (np == 512)
                return RC_BAD;
            placed[np++] = v;
        }
        memcpy(I, T, W * sizeof(u32));
        for (u64 j = 0; j < W; j++)
            if (c->sflags[j] & 1)
                I[j] = 0;
        for (int q = 0; q < np; q++) {
            u64 slot = (u64)placed[q] >> 32;
            if (slot >= W)
                return RC_BAD;
            I[slot] = (u32)(placed[q] & 0xffffffff);
        }
        u128 ifp;
        int rc = fp_update(c, T, I, fp, &ifp);
        if (rc)
            return rc;
        if (ifp < *bfp) {
            memcpy(c->B, I, W * sizeof(u32));
            *bfp = ifp;
            *bg = gi;
        }
    }
    return 0;
}

typedef struct {
    i64 rid;       /* the step's result */
    int nv;
    i64 vl[MAXV];  /* the step's violation lists, in the order explore.py judges them */
    i64 dst;       /* the successor if already visited, else -1 */
    u64 h;
    int perm;
    u128 fp;
    i64 done;      /* a new successor: its finished actors, */
    i64 svl;       /* and the violations of the state */
} trans;

/* The promises judged on a state alone (Engine.state_violations). */
static int state_verdict(ctx *c, const u32 *s, i64 done, i64 *vl) {
    u32 key[16];
    int k = 0;
    i64 full = ((i64)1 << c->n) - 1;
    key[k++] = VK_STATE;
    key[k++] = done == full;
    for (int q = 0; q < c->nso; q++) {
        i64 v;
        int rc = observe(c, s, c->so[q], &v, NULL);
        if (rc)
            return rc;
        key[k++] = (u32)v;
    }
    if (done == full && c->p6) {
        i64 v;
        int rc = observe(c, s, c->obs_out, &v, NULL);
        if (rc)
            return rc;
        key[k++] = (u32)v;
    }
    return verdict(c, key, k, vl);
}

/* P4's observation of the state being expanded: value and the entry that gave it. */
typedef struct { int known; i64 value, entry; } ppinfo;

static int touches(ctx *c, i64 rid, i64 entry) {
    const u32 *t = c->rdata.a + c->r_toff.a[rid];
    i64 nt = c->r_tn.a[rid];
    const u64 *bits = c->bits.a + c->e_boff.a[entry];
    u64 nb = (u64)c->e_bn.a[entry];
    for (i64 q = 0; q < nt; q++)
        if (t[q] / 64 < nb && bits[t[q] / 64] >> (t[q] % 64) & 1)
            return 1;
    return 0;
}

/* An actor's transition rid from s (state x, hash sh, fingerprint sfp): the
 * successor, canonical, into B (c->B with symmetry), its record into c->cand,
 * and (judge) what committing it needs: the state it is if already visited,
 * else its finished actors and broken promises (Engine.step,
 * Explorer._canonical, the visited set).  x < 0 (the agreement tests' probe):
 * the successor is taken as new, no record. */
static int judge_new(ctx *c, const u32 *B, trans *tr);

static int transition(ctx *c, i64 x, const u32 *s, u64 sh, u128 sfp, i64 rid, const ppinfo *pp,
                      trans *tr, u32 *B, int judge) {
    int rc;
    u64 th = sh;  /* the successor's hash, kept up to date with every write (hstate) */
    tr->rid = rid;
    c->dirty.n = 0;  /* the successor: s and these writes, in order (slot, id pairs) */
#define SET(j, v) do { \
        u32 j_ = (j), v_ = (v); \
        th += slotmix(j_, v_) - slotmix(j_, current(c, s, j_)); \
        if (PUSH(c->dirty, j_) || PUSH(c->dirty, v_)) \
            return RC_NOMEM; \
    } while (0)
    const u32 *w = c->rdata.a + c->r_woff.a[rid];
    for (i64 q = 0; q < c->r_wn.a[rid]; q++)
        SET(w[2 * q], w[2 * q + 1]);
    const u32 *k = c->rdata.a + c->r_koff.a[rid];
    for (i64 q = 0; q < c->r_kn.a[rid]; q++) {
        u32 slot = k[2 * q], key[2] = {s[slot], k[2 * q + 1]};
        i64 v;
        if (!ht_get(&c->keysets, key, 2, &v)) {
            c->io[0] = slot;
            c->io[1] = key[0];
            c->io[2] = key[1];
            return RC_NEED_KEYSET;
        }
        SET(slot, (u32)v);
    }
    tr->nv = 0;
    if (c->r_ev.a[rid])
        tr->vl[tr->nv++] = c->r_ev.a[rid];
    i64 nm = c->r_mn.a[rid];
    if (nm) {
        const u32 *m = c->rdata.a + c->r_moff.a[rid];
        c->K[0] = (u32)rid;
        for (i64 q = 0; q < nm; q++)
            c->K[1 + q] = s[m[q]];
        i64 o;
        if (!ht_get(&c->protos, c->K, (u64)nm + 1, &o)) {
            c->io[0] = rid;
            query_state(c, s);
            return RC_NEED_PROTO;
        }
        const u32 *ow = c->rdata.a + c->o_woff.a[o];
        for (i64 q = 0; q < c->o_wn.a[o]; q++)
            SET(ow[2 * q], ow[2 * q + 1]);
        if (c->o_vl.a[o])
            tr->vl[tr->nv++] = c->o_vl.a[o];
    }
#undef SET
    if (x >= 0 && c->np == 1)
        visited_prefetch(c, th);  /* (fetched while the rest is worked out) */
    /* The successor whole, only where something reads it whole: P4's
     * observation, symmetry, the agreement tests, a new state (judge_new). */
    u32 *T = c->np > 1 ? c->T : B;
    int made = 0;
    if (c->p4 && touches(c, rid, pp->entry)) {
        successor(c, s, T);
        made = 1;
        i64 after, refs, vl;
        rc = observe(c, T, c->obs_pp, &after, NULL);
        if (rc)
            return rc;
        if (after != pp->value) {
            rc = observe(c, T, c->obs_hr, &refs, NULL);
            if (rc)
                return rc;
            u32 key[4] = {VK_P4, (u32)pp->value, (u32)after, (u32)refs};
            rc = verdict(c, key, 4, &vl);
            if (rc)
                return rc;
            if (vl)
                tr->vl[tr->nv++] = vl;
        }
    }
    tr->fp = 0;
    tr->perm = 0;
    tr->h = th;
    if (c->np > 1) {
        if (!made)
            successor(c, s, T);
        u128 tfp = 0;
        rc = fp_update(c, s, T, sfp, &tfp);
        if (rc)
            return rc;
        rc = canonical(c, T, tfp, &tr->fp, &tr->perm);
        if (rc)
            return rc;
        B = c->B;
        made = 1;
        tr->h = hstate(B, c->W);
    }
    tr->dst = -1;
    if (x >= 0 && (c->np > 1 ? encode(c, B) : encode_from(c, (u64)x)))
        return RC_NOMEM;
    if (!judge)
        return 0;
    if (x >= 0)
        tr->dst = visited_find(c, tr->h, c->cand);
    if (tr->dst >= 0)
        return 0;
    if (!made)
        successor(c, s, B);
    return judge_new(c, B, tr);
}

static int judge_new(ctx *c, const u32 *B, trans *tr) {
    int rc = finished_mask(c, B, &tr->done);
    if (!rc)
        rc = state_verdict(c, B, tr->done, &tr->svl);
    return rc;
}

/* --- committing ----------------------------------------------------------------------------------- */

static void record(ctx *c, i64 vl, i64 state, i64 actor) {
    const u32 *p = c->vdata.a + c->v_off.a[vl];
    for (i64 q = 0; q < c->v_n.a[vl]; q++) {
        u32 bit = 1u << p[q];
        if (c->found_mask & bit)
            continue;
        c->found_mask |= bit;
        if (c->nfound < 16) {
            c->flog[c->nfound][0] = vl;
            c->flog[c->nfound][1] = q;
            c->flog[c->nfound][2] = state;
            c->flog[c->nfound][3] = actor;
            c->nfound++;
        }
        if (!c->all)
            c->stopped = 1;
    }
}

/* The record in cand as a new state: its number, or RC_NOMEM, or RC_TOO_MANY
 * (more states than 32-bit numbers hold). */
static i64 add_state(ctx *c, const u8 *cand, u64 h, u32 parent, int via, int perm, u128 fp) {
    u64 x = c->ns;
    if (x >= NOSTATE - 1)
        return RC_TOO_MANY;
    if (reserve_states(c, x + 1) || visited_add(c, h, x))
        return RC_NOMEM;
    memcpy(c->rec + x * c->R, cand, c->R);
    memset(c->rec + (x + 1) * c->R, 0, 8);
    c->par[x] = parent;
    c->via[x] = (u8)via;
    if (c->np > 1) {
        c->sp[x] = (u8)perm;
        if (PUSH(c->fp, fp))
            return RC_NOMEM;
    }
    set_mask(c, x, 0, 0);
    set_mask(c, x, 1, 0);
    c->ns++;
    return (i64)x;
}

static int commit(ctx *c, i64 x, int actor, const trans *tr, const u8 *cand) {
    c->transitions++;
    c->r_count.a[tr->rid]++;
    for (int q = 0; q < tr->nv; q++)
        record(c, tr->vl[q], x, actor);
    i64 j = tr->dst;
    u32 bit = 1u << actor;
    set_mask(c, (u64)x, 0, get_mask(c, (u64)x, 0) | bit);
    if (j < 0) {
        j = add_state(c, cand, tr->h, (u32)x, actor, tr->perm, tr->fp);
        if (j < 0)
            return (int)j;
        set_mask(c, (u64)x, 1, get_mask(c, (u64)x, 1) | bit);
        if (tr->svl)
            record(c, tr->svl, j, -1);
    } else {
        if (PUSH(c->nt, (u32)j) || (c->np > 1 && PUSH(c->ntp, (u8)tr->perm)))
            return RC_NOMEM;
    }
    return 0;
}

/* --- the search ------------------------------------------------------------------------------------ */

static int successors(ctx *c, const u32 *s, i64 *rids, int *nsucc) {
    int ns = 0;
    for (int i = 0; i < c->n; i++) {
        int rc = step_of(c, s, i, &rids[i]);
        if (rc)
            return rc;
        ns += rids[i] != 0;
    }
    *nsucc = ns;
    return 0;
}

/* PartialOrder._safe: may actor i's step rid be explored alone?  Its own part
 * (nothing visible written), then its independence of each other actor b,
 * which depends only on b's state and on who holds the mmap_lock: so the
 * answers are kept per actor, not per combination of all the actors' states. */
static int safe_alone(ctx *c, const u32 *s, i64 rid, int i, u32 mm, int *safe) {
    u32 key[5] = {(u32)rid, (u32)i, 0xffffffffu, 0, 0};
    i64 v;
    if (!ht_get(&c->safe, key, 3, &v)) {
        c->io[0] = rid;
        c->io[1] = i;
        c->io[2] = -1;
        query_state(c, s);
        return RC_NEED_SAFE;
    }
    *safe = 0;
    if (!v)
        return 0;
    for (int b = 0; b < c->n; b++) {
        if (b == i)
            continue;
        key[2] = mm;
        key[3] = (u32)b;
        key[4] = s[c->aslot[b]];
        if (!ht_get(&c->safe, key, 5, &v)) {
            c->io[0] = rid;
            c->io[1] = i;
            c->io[2] = b;
            query_state(c, s);
            return RC_NEED_SAFE;
        }
        if (!v)
            return 0;
    }
    *safe = 1;
    return 0;
}

/* Room for every actor's successor and its record. */
static int actor_buffers(ctx *c) {
    if (c->pbw < c->W) {
        u32 *pb = realloc(c->PB, (u64)c->n * c->W * sizeof(u32));
        if (!pb)
            return -1;
        c->PB = pb;
        c->pbw = c->W;
    }
    if (c->pcs < c->R + 8) {
        u8 *pc = realloc(c->PC, (u64)c->n * (c->R + 8));
        if (!pc)
            return -1;
        c->PC = pc;
        c->pcs = c->R + 8;
    }
    return 0;
}

/* Expand state x from actor c->cur_actor on (Explorer._expand). */
static int expand(ctx *c, i64 x) {
    i64 rids[MAXA];
    int nsucc, rc;
    decode(c, (u64)x);
    const u32 *s = c->S;
    u64 sh = c->Sh;
    rc = successors(c, s, rids, &nsucc);
    if (rc)
        return rc;
    ppinfo pp = {0, 0, 0};
    if (c->p4 && nsucc) {
        rc = observe(c, s, c->obs_pp, &pp.value, &pp.entry);
        if (rc)
            return rc;
        pp.known = 1;
    }
    u128 sfp = c->np > 1 ? c->fp.a[x] : 0;
    trans tr;
    u32 *B = c->B;
    if (c->por && nsucc > 1) {
        /* PartialOrder.ample checks the hooks' reads once per state, before
         * anything else (a resumed expansion does not check again) */
        if (c->ample_state != x) {
            c->ample_state = x;
            c->ample_dirty = c->visible_dirty;
        }
        if (c->ample_dirty)
            return RC_NEED_VISIBLE;
        u32 mm = (u64)c->mm_slot < c->W ? s[c->mm_slot] : 0;
        for (int i = 0; i < c->n; i++) {
            if (!rids[i])
                continue;
            int safe;
            rc = safe_alone(c, s, rids[i], i, mm, &safe);
            if (rc)
                return rc;
            if (!safe)
                continue;
            rc = transition(c, x, s, sh, sfp, rids[i], &pp, &tr, B, 1);
            if (rc)
                return rc;
            if (tr.dst < 0)  /* the cycle proviso: a new state, the others can wait */
                return commit(c, x, i, &tr, c->cand);
            break;
        }
    }
    if (c->np > 1) {
        for (int i = (int)c->cur_actor; i < c->n; i++) {
            if (!rids[i])
                continue;
            rc = transition(c, x, s, sh, sfp, rids[i], &pp, &tr, B, 1);
            if (rc)
                return rc;
            rc = commit(c, x, i, &tr, c->cand);
            if (rc)
                return rc;
            c->cur_actor = i + 1;
            if (c->stopped)
                return 0;
        }
        return 0;
    }
    /* Every successor first, each asking the memory for where the visited set
     * will be looked at, then the look-ups and commits in order: the misses
     * overlap.  (A successor found twice is found in the set the second time:
     * the look-ups come after the commits before them.) */
    trans trs[MAXA];
    u64 layout;
    do {
        if (actor_buffers(c))
            return RC_NOMEM;
        layout = c->layout;
        for (int i = (int)c->cur_actor; i < c->n; i++) {
            if (!rids[i])
                continue;
            rc = transition(c, x, s, sh, sfp, rids[i], &pp, &trs[i], c->PB + (u64)i * c->pbw, 0);
            if (rc)
                return rc;
            if (layout != c->layout)
                break;
            memcpy(c->PC + (u64)i * c->pcs, c->cand, c->R + 8);
            c->pd[i].n = 0;
            if (RESERVE(c->pd[i], c->dirty.n))
                return RC_NOMEM;
            memcpy(c->pd[i].a, c->dirty.a, c->dirty.n * sizeof(u32));
            c->pd[i].n = c->dirty.n;
        }
    } while (layout != c->layout);  /* (records made before a re-layout are made again) */
    for (int i = (int)c->cur_actor; i < c->n; i++)
        if (rids[i])
            visited_prefetch_record(c, trs[i].h);
    for (int i = (int)c->cur_actor; i < c->n; i++) {
        if (!rids[i])
            continue;
        const u8 *cand = c->PC + (u64)i * c->pcs;
        trs[i].dst = visited_find(c, trs[i].h, cand);
        if (trs[i].dst < 0) {
            u32 *B = c->PB + (u64)i * c->pbw;
            memcpy(B, s, c->W * sizeof(u32));
            for (u64 q = 0; q < c->pd[i].n; q += 2)
                B[c->pd[i].a[q]] = c->pd[i].a[q + 1];
            rc = judge_new(c, B, &trs[i]);
            if (rc)
                return rc;
        }
        rc = commit(c, x, i, &trs[i], cand);
        if (rc)
            return rc;
        c->cur_actor = i + 1;
        if (c->stopped)
            return 0;
    }
    return 0;
}

static int start(ctx *c) {
    const u32 *s0 = c->init;
    u128 fp = 0;
    int rc, g = 0;
    if (c->np > 1) {
        rc = fingerprint(c, s0, &fp);
        if (rc)
            return rc;
        rc = canonical(c, s0, fp, &fp, &g);
        if (rc)
            return rc;
    } else {
        memcpy(c->B, s0, c->W * sizeof(u32));
    }
    i64 done, vl;
    rc = finished_mask(c, c->B, &done);
    if (!rc)
        rc = state_verdict(c, c->B, done, &vl);
    if (rc)
        return rc;
    if (encode(c, c->B))
        return RC_NOMEM;
    i64 x0 = add_state(c, c->cand, hstate(c->B, c->W), NOSTATE, 0xff, 0, fp);
    if (x0 < 0)
        return (int)x0;
    if (vl)
        record(c, vl, 0, -1);
    c->cur = c->level_start = c->level_end = 0;
    c->cur_actor = 0;
    c->phase = 1;
    return 0;
}

/* After the search: the visited set goes; per 64 states, the stored targets
 * before the first (for the edges of one state). */
static i64 store_bytes(const ctx *c);

static int finish(ctx *c) {
    c->peak_store = store_bytes(c);
    visited_free(c);
    c->ck.n = 0;
    u64 nt = 0;
    for (u64 x = 0; x < c->ns; x++) {
        if (!(x & 63) && PUSH(c->ck, nt))
            return RC_NOMEM;
        nt += (u64)popcount32(get_mask(c, x, 0) & ~get_mask(c, x, 1));
    }
    return 0;
}

/* Search on, for at most `budget` expansions: RC_DONE, RC_BUDGET or a NEED code. */
int gm_run(ctx *c, i64 budget) {
    int rc;
    if (c->phase == 0) {
        rc = start(c);
        if (rc)
            return rc;
    }
    if (c->phase == 2)
        return RC_DONE;
    while (!c->stopped) {
        if (c->cur == c->level_end) {
            if ((i64)c->ns == c->level_end)
                break; /* the next level is empty */
            c->level_start = c->level_end;
            c->level_end = (i64)c->ns;
            if (PUSH(c->lvl, c->level_start))
                return RC_NOMEM;
            continue;
        }
        rc = expand(c, c->cur);
        if (rc)
            return rc;
        c->cur++;
        c->cur_actor = 0;
        if (c->max_states && (i64)c->ns >= c->max_states)
            c->stopped = 1;
        if (--budget <= 0 && !c->stopped)
            return RC_BUDGET;
    }
    rc = finish(c);
    if (rc)
        return rc;
    c->phase = 2;
    return RC_DONE;
}

/* The bytes the store holds: records, parents, masks, stored targets, the
 * visited set (while there is one), the per-state symmetry data. */
static i64 store_bytes(const ctx *c) {
    u64 b = c->ns * (c->R + sizeof(u32) + 1 + 2 * (u64)c->mb) + c->nt.n * sizeof(u32);
    if (c->np > 1)
        b += c->ns * (1 + sizeof(u128)) + c->ntp.n;
    for (int i = 0; i < NSEG; i++)
        b += c->seg[i].cap * sizeof(u64);
    return (i64)b;
}

/* states, transitions, complete, frontier, depth, found, bytes of a record, bytes of the store (at
 * its largest), sweeps of P8's fixpoint */
void gm_stats(ctx *c, i64 *out) {
    out[0] = (i64)c->ns;
    out[1] = c->transitions;
    out[2] = (i64)c->ns == c->level_end && !(c->max_states && (i64)c->ns >= c->max_states);
    out[3] = (i64)c->ns - c->level_start;
    out[4] = c->ns ? depth_of(c, c->ns - 1) : 0;
    out[5] = c->nfound;
    out[6] = (i64)c->R;
    out[7] = store_bytes(c) > c->peak_store ? store_bytes(c) : c->peak_store;
    out[8] = c->sweeps;
}

/* Per result id below n: the transitions taken with it. */
int gm_counts(ctx *c, i64 n, i64 *out) {
    for (i64 r = 0; r < n; r++)
        out[r] = (u64)r < c->r_count.n ? c->r_count.a[r] : 0;
    return 0;
}

/* The found log: nfound rows of (violation list, position, state, actor or -1). */
void gm_found(ctx *c, i64 *out) { memcpy(out, c->flog, (size_t)c->nfound * 4 * sizeof(i64)); }

static u32 finished_of(ctx *c, u64 x) {
    u32 m = 0;
    for (int i = 0; i < c->n; i++) {
        i64 g;
        if (group(c, (u32)i, actor_id(c, x, i), &g) && c->g_done.a[g])
            m |= 1u << i;
    }
    return m;
}

/* State x: parent (-1 for the first), actor that stepped (-1), permutation,
 * depth, finished actors, edges out, the actors that can still finish (P8,
 * once computed; else -1). */
int gm_state(ctx *c, i64 x, i64 *out) {
    if (x < 0 || (u64)x >= c->ns)
        return RC_BAD;
    out[0] = c->par[x] == NOSTATE ? -1 : (i64)c->par[x];
    out[1] = c->via[x] == 0xff ? -1 : (i64)c->via[x];
    out[2] = c->np > 1 ? c->sp[x] : 0;
    out[3] = depth_of(c, (u64)x);
    out[4] = finished_of(c, (u64)x);
    out[5] = popcount32(get_mask(c, (u64)x, 0));
    out[6] = c->can ? (i64)c->can[x] : -1;
    return 0;
}

/* The first state whose parent is x (states found from one state are numbered
 * in a row, and parents never decrease): the target of x's first edge to a new state. */
static u64 first_child(const ctx *c, u64 x) {
    u64 lo = 1, hi = c->ns;
    while (lo < hi) {
        u64 mid = (lo + hi) / 2;
        if (c->par[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The edges out of state x, in the order they were taken: (actor, target,
 * permutation) each; their number, or a negative code. */
int gm_edges(ctx *c, i64 x, i64 *out) {
    if (x < 0 || (u64)x >= c->ns || c->phase != 2)
        return RC_BAD;
    u64 nt = c->ck.a[x >> 6];
    for (u64 y = (u64)x & ~63ull; y < (u64)x; y++)
        nt += (u64)popcount32(get_mask(c, y, 0) & ~get_mask(c, y, 1));
    u32 am = get_mask(c, (u64)x, 0), tm = get_mask(c, (u64)x, 1);
    u64 child = first_child(c, (u64)x);
    int k = 0;
    for (int a = 0; a < c->n; a++) {
        if (!(am >> a & 1))
            continue;
        u64 y;
        int p;
        if (tm >> a & 1) {
            y = child++;
            p = c->np > 1 ? c->sp[y] : 0;
        } else {
            p = c->np > 1 ? c->ntp.a[nt] : 0;
            y = c->nt.a[nt++];
        }
        out[3 * k] = a;
        out[3 * k + 1] = (i64)y;
        out[3 * k + 2] = p;
        k++;
    }
    return k;
}

/* The whole graph as explore.py keeps it (for the tests): which = 0 parent,
 * 1 via, 2 perm, 3 depth, 4 done (per state); 5 src, 6 dst, 7 actor, 8 perm
 * (per edge, in the order taken). */
int gm_export(ctx *c, i64 which, i64 *out) {
    if (c->phase != 2)
        return RC_BAD;
    i64 row[7], e[3 * MAXA];
    u64 k = 0;
    for (u64 x = 0; x < c->ns; x++) {
        if (which < 5) {
            gm_state(c, (i64)x, row);
            out[x] = row[which];
            continue;
        }
        int ne = gm_edges(c, (i64)x, e);
        for (int q = 0; q < ne; q++, k++)
            out[k] = which == 5 ? (i64)x : which == 6 ? e[3 * q + 1] : which == 7 ? e[3 * q] : e[3 * q + 2];
    }
    return 0;
}

/* The mask m of a successor carried back through permutation p: bit a set when bit g[a] is. */
static inline u32 back_mask(const ctx *c, u32 m, int p) {
    if (!p)
        return m;
    u32 r = 0;
    for (int a = 0; a < c->n; a++)
        if (m >> c->perm[p][a] & 1)
            r |= 1u << a;
    return r;
}

/* One sweep of P8's fixpoint over every edge (backwards or forwards through
 * the states): whether some state's mask grew. */
static int sweep(ctx *c, int backwards) {
    int changed = 0;
    u64 ns = c->ns, tc, nc;
    u32 *can = c->can;
    if (backwards) {
        tc = ns - 1;  /* edges to new states before state x, */
        nc = c->nt.n; /* stored targets before state x */
    } else {
        tc = 0;
        nc = 0;
    }
    for (u64 i = 0; i < ns; i++) {
        u64 x = backwards ? ns - 1 - i : i;
        u32 am = get_mask(c, x, 0), tm = get_mask(c, x, 1);
        int ntree = popcount32(tm), nstored = popcount32(am & ~tm);
        if (backwards) {
            tc -= (u64)ntree;
            nc -= (u64)nstored;
        }
        u64 t = tc + 1, k = nc;
        u32 m = 0;
        for (u32 rest = am; rest; rest &= rest - 1) {
            int a = __builtin_ctz(rest);
            u64 y;
            int p = 0;
            if (tm >> a & 1) {
                y = t++;
                if (c->np > 1)
                    p = c->sp[y];
            } else {
                if (c->np > 1)
                    p = c->ntp.a[k];
                y = c->nt.a[k++];
            }
            m |= back_mask(c, can[y], p);
        }
        if (m & ~can[x]) {
            can[x] |= m;
            changed = 1;
        }
        if (!backwards) {
            tc += (u64)ntree;
            nc += (u64)nstored;
        }
    }
    return changed;
}

/* P8: per state, the actors that can still finish (the least fixpoint of
 * "finished here, or can finish after some edge", the actors renamed through
 * each edge's permutation); the shallowest state with one that cannot, lowest
 * actor first (Explorer._can_finish).  out: found, depth, state, actor. */
int gm_liveness(ctx *c, i64 *out) {
    u64 ns = c->ns;
    if (c->phase != 2)
        return RC_BAD;
    free(c->can);
    c->can = malloc((ns ? ns : 1) * sizeof(u32));
    if (!c->can)
        return RC_NOMEM;
    huge(c->can, ns * sizeof(u32));
    for (u64 x = 0; x < ns; x++)
        c->can[x] = finished_of(c, x);
    c->sweeps = 0;
    for (int backwards = 1;; backwards = !backwards) {
        c->sweeps++;
        if (!sweep(c, backwards))
            break;
    }
    int n = c->n;
    u32 full = n == 32 ? 0xffffffffu : ((1u << n) - 1);
    out[0] = 0;
    for (u64 x = 0; x < ns; x++)
        if (c->can[x] != full) {  /* (numbered in order of depth: the first is the shallowest) */
            out[0] = 1;
            out[1] = depth_of(c, x);
            out[2] = (i64)x;
            out[3] = __builtin_ctz(full & ~c->can[x]);
            break;
        }
    return 0;
}

/* For the agreement tests: every actor's transition from state s, as the search
 * would take it (successor taken as new).  info per actor: enabled, then
 * MAXV violation lists (step's, zero-padded), perm, done, state's violations;
 * targets: W ids per actor. */
int gm_probe(ctx *c, const u32 *s_in, i64 *info, u32 *targets) {
    i64 rids[MAXA];
    int nsucc, rc;
    u32 *s = malloc(c->W * sizeof(u32));
    if (!s)
        return RC_NOMEM;
    memcpy(s, s_in, c->W * sizeof(u32));
    rc = successors(c, s, rids, &nsucc);
    ppinfo pp = {0, 0, 0};
    if (!rc && c->p4 && nsucc)
        rc = observe(c, s, c->obs_pp, &pp.value, &pp.entry);
    u128 sfp = 0;
    if (!rc && c->np > 1)
        rc = fingerprint(c, s, &sfp);
    for (int i = 0; !rc && i < c->n; i++) {
        i64 *row = info + i * (MAXV + 4);
        memset(row, 0, (MAXV + 4) * sizeof(i64));
        if (!rids[i])
            continue;
        trans tr;
        rc = transition(c, -1, s, hstate(s, c->W), sfp, rids[i], &pp, &tr, c->B, 1);
        if (rc)
            break;
        row[0] = 1;
        for (int q = 0; q < tr.nv; q++)
            row[1 + q] = tr.vl[q];
        row[MAXV + 1] = tr.perm;
        row[MAXV + 2] = tr.done;
        row[MAXV + 3] = tr.svl;
        memcpy(targets + (u64)i * c->W, c->B, c->W * sizeof(u32));
    }
    free(s);
    return rc;
}

i64 gm_maxv(void) { return MAXV; }

void gm_free(ctx *c) {
    if (!c)
        return;
    for (int k = 0; k < MAXK; k++)
        free(c->gd[k].a);
    htab *tabs[] = {&c->rules, &c->keysets, &c->protos, &c->verdicts, &c->safe, &c->symt, &c->terms};
    for (size_t t = 0; t < sizeof(tabs) / sizeof(*tabs); t++)
        ht_free(tabs[t]);
    visited_free(c);
    for (u64 j = 0; j < c->W; j++)
        free(c->cv[j].a);
    for (int i = 0; i < MAXA; i++)
        free(c->pd[i].a);
    void *ps[] = {c->g_done.a, c->g_first.a, c->g_last.a, c->e_off.a, c->e_len.a, c->e_next.a, c->e_boff.a,
                  c->e_bn.a, c->specs.a, c->bits.a, c->r_woff.a, c->r_wn.a, c->r_koff.a, c->r_kn.a, c->r_ev.a,
                  c->r_moff.a, c->r_mn.a, c->r_toff.a, c->r_tn.a, c->rdata.a, c->o_woff.a, c->o_wn.a,
                  c->o_vl.a, c->v_off.a, c->v_n.a, c->vdata.a, c->term.a, c->r_count.a, c->cv, c->nb, c->nf, c->foff, c->fw,
                  c->vs.a, c->codes.e, c->rec, c->par, c->via, c->sp, c->msk, c->fp.a, c->nt.a, c->ntp.a,
                  c->lvl.a, c->ck.a, c->can, c->init, c->S, c->T, c->I, c->B, c->Q, c->K, c->codes_tmp,
                  c->cand, c->rtmp, c->dirty.a, c->sflags, c->PB, c->PC};
    for (size_t p = 0; p < sizeof(ps) / sizeof(*ps); p++)
        free(ps[p]);
    free(c);
}

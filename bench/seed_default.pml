/*
 * scenarios/seed_default.toml, written by hand in Promela for SPIN: the
 * benchmark baseline of `gmemlab check` (bench/check_vs_spin.py).
 *
 * One 2-page restricted memfd backs memslots 0 and 1 (page i <-> memslot i);
 * its notifiers, in registration order: KVM's for slot 0, a scripted one
 * ("audit"), KVM's for slot 1.  Four processes run the actors' programs:
 *
 *   vmm    mmap the file; write every byte; munmap
 *   vmm2   mmap the file; munmap
 *   guest  convert page 1 to private (retry on EBUSY); private write to page 1;
 *          convert page 0 to private (retry on EBUSY)
 *   kvm    get_pfn(0); put_pfn(0) if it succeeded
 *
 * Each atomic block is one atomic step of the model (model/steps.py): the
 * mmap's lock-and-check step, each notifier call, the turn from mmap_start to
 * mmap_end, the final install; a conversion's zap and store; a private guest
 * access's get_pfn, access and put_pfn; every other operation whole; a step
 * skipped because its input failed is a step too.  Locks: mmap holds the
 * mmap_lock and the file lock across its notifier calls; write_mem and munmap
 * need the mmap_lock; conversions, get_pfn and guest accesses take no lock.
 *
 * -DACTORS=n (4 to 10) runs the first n actors of the seed family
 * (bench/family/seed_family_n.toml; 4 is the default scenario), each size
 * adding one actor to the one before:
 *
 *   kvm2   get_pfn(1); put_pfn(1) if it succeeded                      (5)
 *   reader mmap the file (read-only); read 8 bytes of page 1; munmap   (6)
 *   vmm3   mmap the file; munmap                                        (7)
 *   kvm3   get_pfn(0); put_pfn(0) if it succeeded                      (8)
 *   guest2 convert page 0 to private (retry on EBUSY); private write
 *          to page 0                                                    (9)
 *   kvm4   get_pfn(1); put_pfn(1) if it succeeded                      (10)
 *
 * -DLARGE is -DACTORS=6, bench/seed_large.toml.
 *
 * -DAS_WRITTEN gives the sketch as written: has_mapping is never set, and
 * mmap_end reaches only the last notifier.  -DONLY_P=n keeps only promise n's
 * assertions (P8 is the LTL property `finish`, checked with -a -f).
 *
 * The encoding is independent of gmemlab's model (no code is shared): what it
 * keeps of the state is what decides control flow and the promises, plus the
 * page contents and the order in which pages got their pfns.
 */

#ifndef ONLY_P
#define ONLY_P 0
#endif
#define CHECK(n, cond) if :: (ONLY_P == 0 || ONLY_P == n) -> assert(cond) :: else -> skip fi

#define NONE 0
#define VMM 1
#define VMM2 2
#define READER 3
#define VMM3 4
#ifdef LARGE
#define ACTORS 6
#endif
#ifndef ACTORS
#define ACTORS 4
#endif
#define NACTORS ACTORS

#define EBUSY 16
#define EPERM 1
#define EINVAL 22

bool has_mapping, destroyed;
byte maps;                 /* VMAs of the file */
bool mapped_by[5];         /* which VMM thread holds one */
byte refs[2];              /* get_pfn references per page */
bool private[2];           /* attribute of the gfn bound to page i */
bool pending[2];           /* KVM's mmap_pending, per memslot */
bool converting;
byte mm_lock, file_lock;
byte content[2];           /* 0 hole, 1 zeroes, 2 0x5a, 3 zeroes+guest bytes, 4 0x5a+guest bytes */
byte pfn_order[2];         /* 0 no pfn yet, else the order pfns were handed out in */
byte next_pfn = 1;
/* The notifier protocol as the notifiers saw it (P5): started and unanswered. */
bool started[3];           /* 0 kvm:slot0, 1 audit, 2 kvm:slot1 */
bool refused;
byte done_actors;

inline allocate(p) {
  if :: content[p] == 0 -> content[p] = 1 :: else -> skip fi
}

inline take_pfn(p) {
  allocate(p);
  if :: pfn_order[p] == 0 -> pfn_order[p] = next_pfn; next_pfn++ :: else -> skip fi;
  refs[p]++
}

/* A notifier call of the mmap protocol: KVM's for slot s, or audit's (s = 2). */
inline notify_start(n, err) {
  err = 0;
  if
  :: n == 1 -> skip
  :: else ->
     if
     :: converting -> err = EBUSY
     :: !converting && private[n / 2] -> err = EPERM
     :: else -> pending[n / 2] = 1
     fi
  fi;
  CHECK(5, !started[n]);
  if :: err == 0 -> started[n] = 1 :: else -> refused = 1 fi
}

inline notify_end(n) {
  if :: n != 1 -> pending[n / 2] = 0 :: else -> skip fi;
  CHECK(5, started[n] && !refused);
  started[n] = 0
}

inline notify_abort(n) {
  if :: n != 1 -> pending[n / 2] = 0 :: else -> skip fi;
  /* only to a notifier that started, the last one first */
  CHECK(5, started[n] && (n == 2 || !started[2]) && (n >= 1 || !started[1]));
  started[n] = 0
}

inline mmap_done() {
  CHECK(5, !started[0] && !started[1] && !started[2]);
  CHECK(5, !pending[0] && !pending[1]);
  refused = 0
}

inline promises_on_state() {
  CHECK(3, maps <= 1);
  CHECK(2, maps == 0 || (!private[0] && !private[1]))
}

#define FINISH done_actors++; if :: done_actors == NACTORS -> CHECK(6, refs[0] + refs[1] == 0) :: else -> skip fi

/* mmap of the whole file by thread me: one atomic step per notifier call */
#define MMAP(me, ok, err, ABORT2, ABORT1, ABORT0, OUT) \
  atomic { \
    mm_lock == NONE && file_lock == NONE -> \
    mm_lock = me; file_lock = me; \
    if :: destroyed || has_mapping -> mm_lock = NONE; file_lock = NONE; goto OUT :: else -> skip fi \
  }; \
  atomic { notify_start(0, err); if :: err != 0 -> goto ABORT0 :: else -> skip fi }; \
  atomic { notify_start(1, err); if :: err != 0 -> goto ABORT1 :: else -> skip fi }; \
  atomic { notify_start(2, err); if :: err != 0 -> goto ABORT2 :: else -> skip fi }; \
  ACCEPT_AND_END; \
  atomic { mmap_done(); maps++; mapped_by[me] = 1; ok = 1; promises_on_state(); \
           mm_lock = NONE; file_lock = NONE }; \
  goto OUT; \
ABORT2: atomic { notify_abort(1) }; \
ABORT1: atomic { notify_abort(0) }; \
ABORT0: atomic { mmap_done(); mm_lock = NONE; file_lock = NONE }; \
OUT: skip

/* every notifier accepted; then mmap_end (to each, or as written to the last only) */
#ifdef AS_WRITTEN
#define ACCEPT_AND_END atomic { skip }; atomic { notify_end(2) }
#else
#define ACCEPT_AND_END atomic { has_mapping = 1 }; atomic { notify_end(0) }; \
  atomic { notify_end(1) }; atomic { notify_end(2) }
#endif

#define MUNMAP(me, AFTER) \
  atomic { \
    mm_lock == NONE -> \
    maps--; mapped_by[me] = 0; \
    if :: refs[0] + refs[1] > 0 -> destroyed = 1 :: else -> has_mapping = 0 fi; \
    promises_on_state(); AFTER \
  }

/* set_memory_attributes(page p -> private), tried again while EBUSY: the
   check-and-zap step, then the store step */
#define CONVERT(p, AFTER, RETRY, DONE) \
RETRY: \
  atomic { \
    !converting -> \
    if \
    :: private[p] -> AFTER; goto DONE \
    :: !private[p] && !destroyed && (has_mapping || pending[p]) -> goto RETRY \
    :: else -> converting = 1 \
    fi \
  }; \
  atomic { \
    private[p] = 1; converting = 0; \
    CHECK(2, maps == 0); CHECK(4, maps == 0); promises_on_state(); AFTER \
  }; \
DONE: skip

proctype vmm() {
  bool ok; byte err;
  MMAP(VMM, ok, err, a2, a1, a0, out);
  if
  :: ok ->
     atomic {
       mm_lock == NONE ->
       if
       :: !destroyed ->                           /* a destroyed file's fault is SIGBUS */
          CHECK(1, !private[0]); CHECK(1, !private[1]);
          content[0] = 2; content[1] = 2
       :: else -> skip
       fi
     };
     MUNMAP(VMM, FINISH)
  :: else ->
     atomic { skip };                             /* write_mem skipped: $a unbound */
     atomic { FINISH }                            /* munmap skipped */
  fi
}

/* mmap the file; munmap (VMM threads vmm2, vmm3) */
proctype vmm2(byte me) {
  bool ok; byte err;
  MMAP(me, ok, err, a2, a1, a0, out);
  if
  :: ok -> MUNMAP(me, FINISH)
  :: else -> atomic { FINISH }
  fi
}

/* guest_access, a private write of page p: get_pfn, access, put_pfn; AFTER
   in the step that ends it, which goes on at the caller's label OUT */
#define PRIVATE_WRITE(p, OUT, AFTER) \
  atomic { \
    if \
    :: !private[p] -> AFTER; goto OUT           /* attribute mismatch: memory-fault exit */ \
    :: private[p] && (destroyed || has_mapping) -> AFTER; goto OUT   /* EIO / EBUSY exit */ \
    :: else -> \
       CHECK(2, maps == 0);                      /* get_pfn under a mapping */ \
       take_pfn(p) \
    fi \
  }; \
  atomic { \
    if \
    :: !private[p] -> refs[p]--; AFTER; goto OUT   /* converted meanwhile: fault, reference dropped */ \
    :: else -> content[p] = (content[p] == 2 -> 4 : 3) \
    fi \
  }; \
  atomic { refs[p]--; AFTER }

proctype guest() {
  CONVERT(1, skip, retry1, done1);
  PRIVATE_WRITE(1, access_done, skip);
access_done:
  CONVERT(0, FINISH, retry0, done0)
}

/* get_pfn(p); put_pfn(p) if it succeeded */
proctype kvm(byte p) {
  bool got;
  atomic {
    if
    :: destroyed || has_mapping -> got = 0      /* EIO / EBUSY */
    :: else ->
       CHECK(2, maps == 0);
       take_pfn(p); got = 1
    fi
  };
  if
  :: got -> atomic { refs[p]--; FINISH }
  :: else -> atomic { FINISH }                   /* put_pfn skipped: its reference unbound */
  fi
}

proctype reader() {
  bool ok; byte err;
  MMAP(READER, ok, err, a2, a1, a0, out);
  if
  :: ok ->
     atomic {
       mm_lock == NONE ->
       if
       :: !destroyed -> CHECK(1, !private[1])   /* a destroyed file's fault is SIGBUS */
       :: else -> skip
       fi
     };
     MUNMAP(READER, FINISH)
  :: else ->
     atomic { skip };                             /* read_mem skipped: $r unbound */
     atomic { FINISH }                            /* munmap skipped */
  fi
}

proctype guest2() {
  CONVERT(0, skip, retry0, done0);
  PRIVATE_WRITE(0, access_done, FINISH);
access_done:
  skip
}

/* the actors in the order of bench/family/seed_family_10.toml */
init {
  atomic {
    run vmm(); run vmm2(VMM2); run guest(); run kvm(0);
    if :: ACTORS >= 5 -> run kvm(1) :: else -> skip fi;
    if :: ACTORS >= 6 -> run reader() :: else -> skip fi;
    if :: ACTORS >= 7 -> run vmm2(VMM3) :: else -> skip fi;
    if :: ACTORS >= 8 -> run kvm(0) :: else -> skip fi;
    if :: ACTORS >= 9 -> run guest2() :: else -> skip fi;
    if :: ACTORS >= 10 -> run kvm(1) :: else -> skip fi
  }
}

/* P8: every actor finishes (on every weakly fair run). */
ltl finish { <> (done_actors == NACTORS) }

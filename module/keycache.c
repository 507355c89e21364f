/*
 * The vault key cache: decoded private keys (kh_softkey) kept while a user
 * is logged in, so that a signature does not pay for unsealing and decoding
 * its key each time.
 *
 * Entries are keyed by (token uid, object uid, login generation): a logout
 * bumps the token's generation, so entries of an older login can never be
 * hit again even before the flush that wipes them. The map is bounded
 * (cache_max_keys, least recently used entry evicted first), and an entry
 * unused for cache_idle_s seconds is dropped on the next access.
 *
 * Entries are reference counted: a caller holding a reference (between get
 * or insert and put) keeps the decoded key alive; flush and eviction only
 * detach such an entry from the map, and the last put frees it. Freeing
 * wipes (kh_softkey_free).
 *
 * Locking: one leaf mutex (no other lock is taken under it). Before
 * kh_keycache_configure has run, the cache is disabled and lockless: get
 * misses and insert hands out private entries. In a forked child,
 * kh_keycache_flush_all (or configure) must be the first call: it drops the
 * parent's entries and lock.
 *
 * If the bookkeeping for an insert cannot be allocated, the reference handed
 * out is the key pointer itself with its low bit set; put frees the key.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

typedef struct kc_entry {
    uint8_t token_uid[KH_UID_LEN];
    uint8_t uid[KH_UID_LEN];
    uint64_t gen;
    kh_softkey *key;
    unsigned refs;              /* references held by callers */
    bool live;                  /* in the map; false: freed at the last put */
    uint64_t last_ms;           /* monotonic time of the last get/insert */
    struct kc_entry *hnext;     /* hash chain */
    struct kc_entry *prev, *next; /* LRU list: head most recent */
} kc_entry;

static struct {
    kh_mutex *lock;
    pid_t pid;                  /* process that created lock */
    bool enabled;
    size_t max_keys;
    uint64_t idle_ms;           /* 0: no idle expiry */
    kc_entry **buckets;
    size_t nbuckets;            /* power of two */
    size_t count;               /* live entries */
    kc_entry *head, *tail;
} kc;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The clock idle expiry reads: the monotonic clock, or a test's. */
static uint64_t (*kc_clock)(void) = now_ms;

void kh_keycache_set_clock(uint64_t (*clock_ms)(void))
{
    kc_clock = clock_ms ? clock_ms : now_ms;
}

static void kc_lock(void)
{
    if (kc.lock)
        kh_mutex_lock(kc.lock);
}

static void kc_unlock(void)
{
    if (kc.lock)
        kh_mutex_unlock(kc.lock);
}

static size_t kc_bucket(const uint8_t token_uid[KH_UID_LEN], const uint8_t uid[KH_UID_LEN],
                        uint64_t gen)
{
    /* FNV-1a over the identity; uids are random, this only has to spread them. */
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < KH_UID_LEN; i++)
        h = (h ^ token_uid[i]) * 0x100000001b3u;
    for (size_t i = 0; i < KH_UID_LEN; i++)
        h = (h ^ uid[i]) * 0x100000001b3u;
    h = (h ^ gen) * 0x100000001b3u;
    return (size_t)(h ^ (h >> 32)) & (kc.nbuckets - 1);
}

static void kc_entry_free(kc_entry *e)
{
    kh_softkey_free(e->key);
    free(e);
}

static void lru_unlink(kc_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        kc.head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        kc.tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(kc_entry *e)
{
    e->prev = NULL;
    e->next = kc.head;
    if (kc.head)
        kc.head->prev = e;
    kc.head = e;
    if (!kc.tail)
        kc.tail = e;
}

/* Remove e from the map (caller holds kc.lock); free it unless referenced. */
static void kc_detach_locked(kc_entry *e)
{
    kc_entry **pp = &kc.buckets[kc_bucket(e->token_uid, e->uid, e->gen)];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    e->hnext = NULL;
    lru_unlink(e);
    e->live = false;
    kc.count--;
    if (e->refs == 0)
        kc_entry_free(e);
}

/* Drop entries idle for longer than the configured time (caller holds kc.lock).
 * The LRU tail is the least recently used, so stop at the first fresh one. */
static void kc_expire_locked(uint64_t now)
{
    if (!kc.idle_ms)
        return;
    while (kc.tail && now - kc.tail->last_ms >= kc.idle_ms)
        kc_detach_locked(kc.tail);
}

/* The entry of (token uid, object uid, login generation) in the map, or NULL
 * (caller holds kc.lock). */
static kc_entry *kc_find_locked(const uint8_t token_uid[KH_UID_LEN], const uint8_t uid[KH_UID_LEN],
                                uint64_t gen)
{
    for (kc_entry *e = kc.buckets[kc_bucket(token_uid, uid, gen)]; e; e = e->hnext)
        if (e->gen == gen && memcmp(e->uid, uid, KH_UID_LEN) == 0 &&
            memcmp(e->token_uid, token_uid, KH_UID_LEN) == 0)
            return e;
    return NULL;
}

kh_softkey *kh_keycache_get(const uint8_t token_uid[KH_UID_LEN], const uint8_t uid[KH_UID_LEN],
                            uint64_t login_gen, void **ref)
{
    kh_softkey *key = NULL;
    *ref = NULL;
    kc_lock();
    if (!kc.enabled || !kc.buckets)
        goto out_unlock;
    uint64_t now = kc_clock();
    kc_expire_locked(now);
    kc_entry *e = kc_find_locked(token_uid, uid, login_gen);
    if (e) {
        e->refs++;
        e->last_ms = now;
        lru_unlink(e);
        lru_push_front(e);
        *ref = e;
        key = e->key;
    }
out_unlock:
    kc_unlock();
    return key;
}

void kh_keycache_insert_take(kh_softkey *key, const uint8_t token_uid[KH_UID_LEN],
                             const uint8_t uid[KH_UID_LEN], uint64_t login_gen, void **ref)
{
    kc_entry *e = calloc(1, sizeof *e);
    if (!e) {
        /* No memory for bookkeeping: the caller still signs with key, so hand
         * the key itself back as a tagged reference that put frees. */
        *ref = (void *)((uintptr_t)key | 1u);
        return;
    }
    memcpy(e->token_uid, token_uid, KH_UID_LEN);
    memcpy(e->uid, uid, KH_UID_LEN);
    e->gen = login_gen;
    e->key = key;
    e->refs = 1;
    *ref = e;

    kc_lock();
    if (!kc.enabled || !kc.buckets || kc.max_keys == 0)
        goto out_unlock;   /* private entry: live == false, freed at put */
    uint64_t now = kc_clock();
    e->last_ms = now;
    kc_expire_locked(now);

    /* Two callers can miss at once and both insert: the newer entry wins. */
    kc_entry *old = kc_find_locked(token_uid, uid, login_gen);
    if (old)
        kc_detach_locked(old);
    /* Make room: evict the least recently used entries nobody is using. */
    kc_entry *victim = kc.tail;
    while (kc.count >= kc.max_keys && victim) {
        kc_entry *prev = victim->prev;
        if (victim->refs == 0)
            kc_detach_locked(victim);
        victim = prev;
    }
    if (kc.count >= kc.max_keys)
        goto out_unlock;   /* every cached key is in use: stay private */

    size_t b = kc_bucket(token_uid, uid, login_gen);
    e->live = true;
    e->hnext = kc.buckets[b];
    kc.buckets[b] = e;
    lru_push_front(e);
    kc.count++;
out_unlock:
    kc_unlock();
}

void kh_keycache_put(void *ref)
{
    if (!ref)
        return;
    if ((uintptr_t)ref & 1u) {
        kh_softkey_free((kh_softkey *)((uintptr_t)ref & ~(uintptr_t)1u));
        return;
    }
    kc_entry *e = ref;
    bool free_it;
    kc_lock();
    e->refs--;
    free_it = e->refs == 0 && !e->live;
    kc_unlock();
    if (free_it)
        kc_entry_free(e);
}

void kh_keycache_flush_token(const uint8_t token_uid[KH_UID_LEN])
{
    kc_lock();
    kc_entry *e = kc.head;
    while (e) {
        kc_entry *next = e->next;
        if (memcmp(e->token_uid, token_uid, KH_UID_LEN) == 0)
            kc_detach_locked(e);
        e = next;
    }
    kc_unlock();
}

/*
 * In a forked child the parent's lock may have been held by a thread that
 * does not exist here: replace it (the old one is abandoned, neither used
 * nor freed). References held by the parent's threads died with them, so
 * every entry is dropped from the map; referenced ones are leaked, not freed.
 */
static void kc_after_fork(void)
{
    if (!kc.lock || kc.pid == getpid())
        return;
    kc.lock = NULL;
    for (kc_entry *e = kc.head, *next; e; e = next) {
        next = e->next;
        e->refs = 0;
        kc_detach_locked(e);
    }
    if (kh_mutex_new(&kc.lock) != CKR_OK) {
        kc.lock = NULL;
        kc.enabled = false;   /* no lock: stay lockless and cache nothing */
    }
    kc.pid = getpid();
}

void kh_keycache_flush_all(void)
{
    kc_after_fork();
    kc_lock();
    while (kc.head)
        kc_detach_locked(kc.head);
    kc_unlock();
}

/*
 * C_Finalize: drop every entry and release the cache's lock, which may be an
 * application mutex that must not outlive the library's initialisation.
 */
void kh_keycache_shutdown(void)
{
    kh_keycache_flush_all();
    free(kc.buckets);
    kc.buckets = NULL;
    kc.nbuckets = 0;
    kc.count = 0;
    kc.head = kc.tail = NULL;
    kc.enabled = false;
    if (kc.lock) {
        kh_mutex_free(kc.lock);
        kc.lock = NULL;
    }
}

/*
 * Set the cache up (C_Initialize): no other thread may be inside the module.
 * Drops every entry.
 */
void kh_keycache_configure(bool enabled, size_t max_keys, unsigned idle_s)
{
    kh_keycache_shutdown();    /* its flush replaces a lock inherited over fork first */

    if (kh_mutex_new(&kc.lock) != CKR_OK) {
        kc.lock = NULL;
        kh_log(KH_LOG_WARN, "keycache: no mutex, key cache disabled");
        return;
    }
    kc.pid = getpid();
    kc.max_keys = max_keys;
    kc.idle_ms = (uint64_t)idle_s * 1000u;
    if (!enabled || max_keys == 0)
        return;
    size_t nb = 16;
    while (nb < max_keys / 2 && nb < ((size_t)1 << 20))
        nb <<= 1;
    kc.buckets = calloc(nb, sizeof *kc.buckets);
    if (!kc.buckets) {
        kh_log(KH_LOG_WARN, "keycache: out of memory, key cache disabled");
        return;
    }
    kc.nbuckets = nb;
    kc.enabled = true;
}

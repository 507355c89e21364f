/*
 * Locked memory for secrets: token keys, decoded private keys, unsealed
 * blobs. A small allocator over mmap'd arenas that are mlock'd (kept out of
 * swap), marked MADV_DONTDUMP (kept out of core dumps) and MADV_WIPEONFORK
 * (a forked child sees zeros). Every free wipes.
 *
 * Arenas are KH_ARENA_SIZE bytes cut into KH_GRANULE-byte granules; a bitmap
 * marks used granules and a side table records each allocation's length.
 * The bookkeeping lives in ordinary memory, outside the arenas, so that in a
 * forked child (where the arenas read as zeros) frees still work. Requests
 * larger than half an arena get their own mapping.
 *
 * If mlock fails (RLIMIT_MEMLOCK, EPERM) the memory is still handed out,
 * unlocked, and a warning is logged once: refusing would make the module
 * unusable under a small limit, and the other protections still apply.
 *
 * Process-wide state of the host application (dumpability, rlimits) is left
 * alone. Thread-safe: one pthread mutex, independent of C_Initialize so that
 * secrets can be freed in any state of the module.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base.h"

#include <stdbool.h>
#include <stdint.h>

#define KH_GRANULE 16u
#define KH_ARENA_SIZE (64u * 1024u)
#define KH_ARENA_GRANULES (KH_ARENA_SIZE / KH_GRANULE)
#define KH_DIRECT_MIN (KH_ARENA_SIZE / 2)

typedef struct sm_arena {
    uint8_t *base;
    uint64_t used[KH_ARENA_GRANULES / 64];   /* bit per granule */
    uint16_t run[KH_ARENA_GRANULES];         /* granules of the allocation starting here, 0 if none */
    size_t nused;                            /* granules in use */
    struct sm_arena *next;
} sm_arena;

typedef struct sm_direct {
    uint8_t *base;
    size_t map_len;
    struct sm_direct *next;
} sm_direct;

static pthread_mutex_t sm_lock = PTHREAD_MUTEX_INITIALIZER;
static sm_arena *sm_arenas;
static sm_direct *sm_directs;
static bool sm_warned;

/* Map len bytes (a multiple of the page size) of private memory and protect it. */
static void *sm_map(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_DONTDUMP
    (void)madvise(p, len, MADV_DONTDUMP);
#endif
#ifdef MADV_WIPEONFORK
    (void)madvise(p, len, MADV_WIPEONFORK);  /* EINVAL before Linux 4.14: nothing to do */
#endif
    if (mlock(p, len) != 0 && !sm_warned) {
        sm_warned = true;
        kh_log(KH_LOG_WARN, "secmem: mlock failed (%s); secrets may be swapped out "
               "(raise RLIMIT_MEMLOCK)", strerror(errno));
    }
    return p;
}

static void sm_unmap(void *p, size_t len)
{
    explicit_bzero(p, len);
    (void)munlock(p, len);  /* fails harmlessly if it was never locked */
    munmap(p, len);
}

static size_t page_round(size_t len)
{
    long ps = sysconf(_SC_PAGESIZE);
    size_t page = ps > 0 ? (size_t)ps : 4096u;
    return (len + page - 1) / page * page;
}

static bool bit_get(const sm_arena *a, size_t g)
{
    return (a->used[g / 64] >> (g % 64)) & 1u;
}

static void bits_set(sm_arena *a, size_t g, size_t n, bool v)
{
    for (size_t i = g; i < g + n; i++) {
        if (v)
            a->used[i / 64] |= (uint64_t)1 << (i % 64);
        else
            a->used[i / 64] &= ~((uint64_t)1 << (i % 64));
    }
}

/* First fit of n free granules in a; KH_ARENA_GRANULES if none. */
static size_t arena_find(const sm_arena *a, size_t n)
{
    if (KH_ARENA_GRANULES - a->nused < n)
        return KH_ARENA_GRANULES;
    size_t start = 0, len = 0;
    for (size_t g = 0; g < KH_ARENA_GRANULES; g++) {
        if (a->used[g / 64] == UINT64_MAX && g % 64 == 0) {
            g += 63;
            len = 0;
            continue;
        }
        if (bit_get(a, g)) {
            len = 0;
            continue;
        }
        if (len == 0)
            start = g;
        if (++len == n)
            return start;
    }
    return KH_ARENA_GRANULES;
}

static void *direct_alloc(size_t len)
{
    sm_direct *d = malloc(sizeof *d);
    if (!d)
        return NULL;
    d->map_len = page_round(len);
    d->base = sm_map(d->map_len);
    if (!d->base) {
        free(d);
        return NULL;
    }
    d->next = sm_directs;
    sm_directs = d;
    return d->base;
}

void *kh_secmem_alloc(size_t len)
{
    void *p = NULL;
    if (len == 0)
        len = 1;
    pthread_mutex_lock(&sm_lock);
    if (len >= KH_DIRECT_MIN) {
        p = direct_alloc(len);
        goto out_unlock;
    }
    size_t n = (len + KH_GRANULE - 1) / KH_GRANULE;
    sm_arena *a;
    size_t g = KH_ARENA_GRANULES;
    for (a = sm_arenas; a; a = a->next) {
        g = arena_find(a, n);
        if (g != KH_ARENA_GRANULES)
            break;
    }
    if (!a) {
        a = calloc(1, sizeof *a);
        if (!a)
            goto out_unlock;
        a->base = sm_map(KH_ARENA_SIZE);
        if (!a->base) {
            free(a);
            goto out_unlock;
        }
        a->next = sm_arenas;
        sm_arenas = a;
        g = 0;
    }
    bits_set(a, g, n, true);
    a->run[g] = (uint16_t)n;
    a->nused += n;
    p = a->base + g * KH_GRANULE;
    memset(p, 0, n * KH_GRANULE);  /* fresh pages are zero, reused granules were wiped: belt and braces */
out_unlock:
    pthread_mutex_unlock(&sm_lock);
    return p;
}

/*
 * Wipe and release p (from kh_secmem_alloc; len as allocated). The recorded
 * length is what gets wiped and released; a mismatching len is logged.
 */
void kh_secmem_free(void *p, size_t len)
{
    if (!p)
        return;
    uint8_t *u = p;
    pthread_mutex_lock(&sm_lock);
    sm_arena **pa;
    for (pa = &sm_arenas; *pa; pa = &(*pa)->next) {
        sm_arena *a = *pa;
        if (u < a->base || u >= a->base + KH_ARENA_SIZE)
            continue;
        size_t off = (size_t)(u - a->base);
        size_t g = off / KH_GRANULE;
        size_t n = a->run[g];
        if (off % KH_GRANULE != 0 || n == 0) {
            kh_log(KH_LOG_ERROR, "secmem: free of a pointer that was not allocated");
            goto out_unlock;
        }
        if (len > n * KH_GRANULE)
            kh_log(KH_LOG_ERROR, "secmem: free with a length larger than allocated");
        explicit_bzero(u, n * KH_GRANULE);
        bits_set(a, g, n, false);
        a->run[g] = 0;
        a->nused -= n;
        /* Give empty arenas back, keeping one for the next secret. */
        if (a->nused == 0 && (a != sm_arenas || a->next)) {
            *pa = a->next;
            sm_unmap(a->base, KH_ARENA_SIZE);
            free(a);
        }
        goto out_unlock;
    }
    for (sm_direct **pd = &sm_directs; *pd; pd = &(*pd)->next) {
        sm_direct *d = *pd;
        if (d->base != u)
            continue;
        *pd = d->next;
        sm_unmap(d->base, d->map_len);
        free(d);
        goto out_unlock;
    }
    kh_log(KH_LOG_ERROR, "secmem: free of a pointer that was not allocated");
out_unlock:
    pthread_mutex_unlock(&sm_lock);
}

/*
 * Module unload: release arenas that hold nothing any more (their pages are
 * wiped and unmapped). Arenas still in use are left alone.
 */
void kh_secmem_cleanup(void)
{
    pthread_mutex_lock(&sm_lock);
    for (sm_arena **pp = &sm_arenas; *pp;) {
        sm_arena *a = *pp;
        if (a->nused == 0) {
            *pp = a->next;
            sm_unmap(a->base, KH_ARENA_SIZE);
            free(a);
        } else {
            pp = &a->next;
        }
    }
    pthread_mutex_unlock(&sm_lock);
}

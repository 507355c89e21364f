/*
 * Unit tests for the vault key cache (module/keycache.c), with real
 * secp256k1 keys from kh_softkey_load. Frees are checked by using keys that
 * must still be alive (the sanitizer build reports a use after free) and by
 * the leak checker at exit (a key nobody frees).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "testutil.h"

static uint8_t tok_a[KH_UID_LEN] = { 0xA0 };
static uint8_t tok_b[KH_UID_LEN] = { 0xB0 };

static void uid_n(uint8_t uid[KH_UID_LEN], unsigned n)
{
    memset(uid, 0, KH_UID_LEN);
    uid[0] = 0x5A;
    uid[KH_UID_LEN - 2] = (uint8_t)(n >> 8);
    uid[KH_UID_LEN - 1] = (uint8_t)n;
}

/* A decoded secp256k1 key with secret n+1 (valid, small scalar). */
static kh_softkey *key_n(unsigned n)
{
    uint8_t secret[32] = { 0 };
    secret[30] = (uint8_t)((n + 1) >> 8);
    secret[31] = (uint8_t)(n + 1);
    kh_softkey *k = NULL;
    KH_CHECK_RV(kh_softkey_load(&k, KH_ALG_SECP256K1, secret, sizeof secret), CKR_OK);
    KH_CHECK(k != NULL);
    return k;
}

/* Use k: a BIP-340 signature (fails loudly under ASan if k was freed). */
static void use_key(const kh_softkey *k)
{
    uint8_t msg[32] = { 1, 2, 3 }, sig[64];
    size_t siglen = sizeof sig;
    kh_sigparams sp;
    memset(&sp, 0, sizeof sp);
    KH_CHECK_RV(kh_softkey_sign(k, KH_OP_BIP340, &sp, msg, sizeof msg, sig, &siglen), CKR_OK);
    KH_CHECK(siglen == 64);
}

/* Insert key n of token tok at gen and drop the reference. */
static kh_softkey *insert_n(const uint8_t *tok, unsigned n, uint64_t gen)
{
    uint8_t uid[KH_UID_LEN];
    void *ref = NULL;
    kh_softkey *k = key_n(n);
    uid_n(uid, n);
    kh_keycache_insert_take(k, tok, uid, gen, &ref);
    KH_CHECK(ref != NULL);
    use_key(k);
    kh_keycache_put(ref);
    return k;
}

/* Is key n of tok at gen cached? If want is given, it must be that pointer. */
static bool cached(const uint8_t *tok, unsigned n, uint64_t gen, const kh_softkey *want)
{
    uint8_t uid[KH_UID_LEN];
    void *ref = NULL;
    uid_n(uid, n);
    kh_softkey *k = kh_keycache_get(tok, uid, gen, &ref);
    if (!k) {
        KH_CHECK(ref == NULL);
        return false;
    }
    KH_CHECK(ref != NULL);
    if (want)
        KH_CHECK(k == want);
    use_key(k);
    kh_keycache_put(ref);
    return true;
}

static void test_disabled(void)
{
    kh_keycache_configure(false, 16, 0);
    kh_softkey *k = insert_n(tok_a, 1, 1);
    (void)k;
    KH_CHECK(!cached(tok_a, 1, 1, NULL));
    /* Enabled with room for nothing behaves the same. */
    kh_keycache_configure(true, 0, 0);
    insert_n(tok_a, 1, 1);
    KH_CHECK(!cached(tok_a, 1, 1, NULL));
    kh_keycache_flush_all();
}

static void test_hit_miss(void)
{
    kh_keycache_configure(true, 16, 0);
    KH_CHECK(!cached(tok_a, 1, 7, NULL));
    kh_softkey *k = insert_n(tok_a, 1, 7);
    KH_CHECK(cached(tok_a, 1, 7, k));
    KH_CHECK(cached(tok_a, 1, 7, k));
    KH_CHECK(!cached(tok_a, 2, 7, NULL));    /* other object */
    KH_CHECK(!cached(tok_b, 1, 7, NULL));    /* same object uid, other token */
    /* Two references at once. */
    uint8_t uid[KH_UID_LEN];
    void *r1, *r2;
    uid_n(uid, 1);
    kh_softkey *a = kh_keycache_get(tok_a, uid, 7, &r1);
    kh_softkey *b = kh_keycache_get(tok_a, uid, 7, &r2);
    KH_CHECK(a == k && b == k);
    kh_keycache_put(r1);
    use_key(b);
    kh_keycache_put(r2);
    kh_keycache_put(NULL);   /* no-op */
    kh_keycache_flush_all();
}

static void test_generation(void)
{
    kh_keycache_configure(true, 16, 0);
    kh_softkey *k = insert_n(tok_a, 1, 3);
    KH_CHECK(!cached(tok_a, 1, 4, NULL));    /* after a logout/login */
    KH_CHECK(!cached(tok_a, 1, 2, NULL));
    KH_CHECK(cached(tok_a, 1, 3, k));
    /* The new login's key lives beside the dead one until a flush. */
    kh_softkey *k4 = insert_n(tok_a, 1, 4);
    KH_CHECK(cached(tok_a, 1, 4, k4));
    KH_CHECK(cached(tok_a, 1, 3, k));
    kh_keycache_flush_all();
}

static void test_evict_lru(void)
{
    kh_keycache_configure(true, 4, 0);
    kh_softkey *k[6];
    for (unsigned i = 0; i < 4; i++)
        k[i] = insert_n(tok_a, i, 1);
    for (unsigned i = 0; i < 4; i++)
        KH_CHECK(cached(tok_a, i, 1, k[i]));
    /* Touch 0: now 1 is the least recently used. */
    KH_CHECK(cached(tok_a, 0, 1, k[0]));
    k[4] = insert_n(tok_a, 4, 1);
    KH_CHECK(!cached(tok_a, 1, 1, NULL));
    KH_CHECK(cached(tok_a, 0, 1, k[0]));
    KH_CHECK(cached(tok_a, 4, 1, k[4]));
    /* Then 2 (0 and 4 were just used, 3 after 2). */
    k[5] = insert_n(tok_a, 5, 1);
    KH_CHECK(!cached(tok_a, 2, 1, NULL));
    KH_CHECK(cached(tok_a, 3, 1, k[3]));
    KH_CHECK(cached(tok_a, 5, 1, k[5]));
    kh_keycache_flush_all();
    for (unsigned i = 0; i < 6; i++)
        KH_CHECK(!cached(tok_a, i, 1, NULL));
}

/* Entries in use are never evicted: with every slot held, a new key stays private. */
static void test_evict_in_use(void)
{
    kh_keycache_configure(true, 2, 0);
    uint8_t uid[KH_UID_LEN];
    void *r0, *r1, *r2;
    kh_softkey *k0 = key_n(0), *k1 = key_n(1), *k2 = key_n(2);
    uid_n(uid, 0);
    kh_keycache_insert_take(k0, tok_a, uid, 1, &r0);
    uid_n(uid, 1);
    kh_keycache_insert_take(k1, tok_a, uid, 1, &r1);
    uid_n(uid, 2);
    kh_keycache_insert_take(k2, tok_a, uid, 1, &r2);
    use_key(k0);
    use_key(k1);
    use_key(k2);
    KH_CHECK(!cached(tok_a, 2, 1, NULL));    /* not cached: private */
    kh_keycache_put(r2);                     /* frees k2 */
    kh_keycache_put(r0);
    /* Now 0 is free to go: inserting 3 evicts it, not the held 1. */
    insert_n(tok_a, 3, 1);
    KH_CHECK(!cached(tok_a, 0, 1, NULL));
    use_key(k1);
    kh_keycache_put(r1);
    KH_CHECK(cached(tok_a, 1, 1, k1));
    KH_CHECK(cached(tok_a, 3, 1, NULL));
    kh_keycache_flush_all();
}

static void test_flush(void)
{
    kh_keycache_configure(true, 16, 0);
    kh_softkey *a1 = insert_n(tok_a, 1, 1);
    kh_softkey *a2 = insert_n(tok_a, 2, 1);
    kh_softkey *b1 = insert_n(tok_b, 1, 1);
    kh_keycache_flush_token(tok_a);
    KH_CHECK(!cached(tok_a, 1, 1, NULL));
    KH_CHECK(!cached(tok_a, 2, 1, NULL));
    KH_CHECK(cached(tok_b, 1, 1, b1));
    (void)a1;
    (void)a2;
    insert_n(tok_a, 1, 1);
    kh_keycache_flush_all();
    KH_CHECK(!cached(tok_a, 1, 1, NULL));
    KH_CHECK(!cached(tok_b, 1, 1, NULL));
    /* Flushing an empty cache or an unknown token is harmless. */
    kh_keycache_flush_all();
    kh_keycache_flush_token(tok_b);
}

/* A key in use survives a flush until its last reference is put. */
static void test_refcount(void)
{
    kh_keycache_configure(true, 16, 0);
    uint8_t uid[KH_UID_LEN];
    void *r1, *r2;
    kh_softkey *k = insert_n(tok_a, 1, 1);
    uid_n(uid, 1);
    KH_CHECK(kh_keycache_get(tok_a, uid, 1, &r1) == k);
    KH_CHECK(kh_keycache_get(tok_a, uid, 1, &r2) == k);
    kh_keycache_flush_token(tok_a);
    KH_CHECK(!cached(tok_a, 1, 1, NULL));
    use_key(k);
    kh_keycache_put(r1);
    use_key(k);
    kh_keycache_flush_all();
    use_key(k);
    kh_keycache_put(r2);    /* freed here; the leak checker sees it otherwise */

    /* A re-insert of the same identity replaces the old entry; the old one
     * lives on for its holder. */
    void *ra, *rb;
    kh_softkey *ka = key_n(1), *kb = key_n(1);
    kh_keycache_insert_take(ka, tok_a, uid, 1, &ra);
    kh_keycache_insert_take(kb, tok_a, uid, 1, &rb);
    KH_CHECK(cached(tok_a, 1, 1, kb));
    use_key(ka);
    kh_keycache_put(ra);
    kh_keycache_put(rb);
    KH_CHECK(cached(tok_a, 1, 1, kb));
    kh_keycache_flush_all();
}

/* The key cache's clock in these tests: moved only by advance_ms. */
static uint64_t fake_now_ms = 1000000;

static uint64_t fake_clock(void)
{
    return fake_now_ms;
}

static void advance_ms(unsigned ms)
{
    fake_now_ms += ms;
}

static void test_idle(void)
{
    kh_keycache_set_clock(fake_clock);
    kh_keycache_configure(true, 16, 1);
    kh_softkey *k1 = insert_n(tok_a, 1, 1);
    kh_softkey *k2 = insert_n(tok_a, 2, 1);
    advance_ms(600);
    KH_CHECK(cached(tok_a, 2, 1, k2));       /* used: its idle time restarts */
    advance_ms(400);
    KH_CHECK(!cached(tok_a, 1, 1, NULL));    /* 1 s unused: gone */
    KH_CHECK(cached(tok_a, 2, 1, k2));       /* 0.4 s unused */
    advance_ms(999);
    KH_CHECK(cached(tok_a, 2, 1, k2));       /* 0.999 s unused: still there */
    (void)k1;
    /* A held key that expires is detached but stays alive for its holder. */
    uint8_t uid[KH_UID_LEN];
    void *ref;
    uid_n(uid, 2);
    KH_CHECK(kh_keycache_get(tok_a, uid, 1, &ref) == k2);
    advance_ms(1000);
    KH_CHECK(!cached(tok_a, 3, 1, NULL));    /* any access expires old entries */
    KH_CHECK(!cached(tok_a, 2, 1, NULL));
    use_key(k2);
    kh_keycache_put(ref);
    kh_keycache_flush_all();
    kh_keycache_set_clock(NULL);
}

static void test_many(void)
{
    /* More keys than buckets, several tokens and generations. */
    kh_keycache_configure(true, 300, 0);
    for (unsigned i = 0; i < 600; i++)
        insert_n(i & 1 ? tok_a : tok_b, i, i % 3);
    unsigned hits = 0;
    for (unsigned i = 0; i < 600; i++)
        hits += cached(i & 1 ? tok_a : tok_b, i, i % 3, NULL);
    KH_CHECK(hits == 300);
    for (unsigned i = 300; i < 600; i++)
        KH_CHECK(cached(i & 1 ? tok_a : tok_b, i, i % 3, NULL));
    kh_keycache_configure(false, 0, 0);   /* reconfiguring drops everything */
    KH_CHECK(!cached(tok_a, 599, 599 % 3, NULL));
}

/* A forked child drops the parent's entries (and its lock) at the first flush. */
static void test_fork(void)
{
    kh_keycache_configure(true, 16, 0);
    kh_softkey *k = insert_n(tok_a, 1, 1);
    uint8_t uid[KH_UID_LEN];
    void *ref;
    uid_n(uid, 1);
    KH_CHECK(kh_keycache_get(tok_a, uid, 1, &ref) == k);   /* held across fork */
    pid_t pid = fork();
    if (pid == 0) {
        kh_keycache_flush_all();
        int bad = cached(tok_a, 1, 1, NULL);
        insert_n(tok_a, 2, 1);
        bad |= !cached(tok_a, 2, 1, NULL);
        kh_keycache_flush_all();
        _exit(bad || kh_test_failed());
    }
    int status = 0;
    KH_CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    KH_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    KH_CHECK(cached(tok_a, 1, 1, k));       /* the parent is untouched */
    kh_keycache_put(ref);
    kh_keycache_flush_all();
}

int main(int argc, char **argv)
{
    KH_CHECK_RV(kh_crypto_init(), CKR_OK);
    kh_test_register("/keycache/disabled", test_disabled);
    kh_test_register("/keycache/hit_miss", test_hit_miss);
    kh_test_register("/keycache/generation", test_generation);
    kh_test_register("/keycache/evict/lru", test_evict_lru);
    kh_test_register("/keycache/evict/in_use", test_evict_in_use);
    kh_test_register("/keycache/flush", test_flush);
    kh_test_register("/keycache/refcount", test_refcount);
    kh_test_register("/keycache/idle", test_idle);
    kh_test_register("/keycache/many", test_many);
    kh_test_register("/keycache/fork", test_fork);
    int rc = kh_test_run(argc, argv);
    kh_keycache_configure(false, 0, 0);
    return rc;
}

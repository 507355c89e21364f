/*
 * concurrency: 4 processes x 2 threads signing and generating keys on one
 * store for 20 s; no error reaches any caller and every generated key is
 * listed afterwards.
 *
 * The parent makes a token with four signing set-ups (secp256k1 ECDSA and
 * BIP-340 Schnorr on one key, P-256 ECDSA, Ed25519 EdDSA), finalizes, and
 * forks 4 children. Children 0-2 call C_Initialize with CKF_OS_LOCKING_OK;
 * child 3 passes mutex callbacks built on pthread mutexes and no flag. Each
 * child logs in and runs 2 threads, each with its own R/W session, until the
 * deadline: sign with a random key and mechanism (every 16th signature is
 * checked with C_Verify and, except BIP-340, with OpenSSL), and every 10th
 * iteration generate a key pair labelled "gen-<pid>-<thread>-<n>" (random
 * algorithm), sign with it once and record its label. Any CK_RV other than
 * CKR_OK is an error: printed with its context and counted, and so is a
 * child that signed, verified or generated nothing.
 *
 * Afterwards the parent initializes again and checks that every recorded
 * label finds exactly one private and one public key, and that the token
 * holds exactly the keys made. Exit status 0 only with zero errors.
 *
 * Env: KEYHOLD_MODULE (required), KEYHOLD_KDF_LOG2N, KH_CONCURRENCY_SECONDS
 * (default 20), KH_KEEP_STORE=1.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "p11load.h"

#define CONC_TOKEN_LABEL "concurrency"
#define CONC_SO_PIN "87654321"
#define CONC_USER_PIN "12345678"
#define CONC_NPROCS 4
#define CONC_NTHREADS 2
#define CONC_CALLBACK_CHILD 3        /* this child uses the application's mutex callbacks */
#define CONC_GEN_EVERY 10
#define CONC_VERIFY_EVERY 16
#define CONC_MAX_PRINTED_ERRORS 20   /* per thread; all are counted */
#define CONC_HANG_GRACE_S 120        /* a child still running this long after its deadline hangs */

/* The long-lived signing keys made by the parent. */
enum { CONC_KEY_K1, CONC_KEY_P256, CONC_KEY_ED, CONC_NKEYS };

static const struct {
    const char *label;
    p11l_alg alg;
} conc_keys[CONC_NKEYS] = {
    [CONC_KEY_K1] = { "sig-secp256k1", P11L_SECP256K1 },
    [CONC_KEY_P256] = { "sig-p256", P11L_P256 },
    [CONC_KEY_ED] = { "sig-ed25519", P11L_ED25519 },
};

/* What a thread signs with. */
typedef struct conc_op {
    const char *name;
    CK_MECHANISM_TYPE mech;
    int key;                  /* CONC_KEY_* */
    size_t min_len, max_len;  /* data length range */
    bool ossl;                /* OpenSSL can check it independently */
} conc_op;

static const conc_op conc_ops[] = {
    { "secp256k1 CKM_ECDSA", CKM_ECDSA, CONC_KEY_K1, 32, 32, true },
    { "secp256k1 CKM_KH_BIP340_SCHNORR", CKM_KH_BIP340_SCHNORR, CONC_KEY_K1, 32, 32, false },
    { "P-256 CKM_ECDSA", CKM_ECDSA, CONC_KEY_P256, 32, 32, true },
    { "Ed25519 CKM_EDDSA", CKM_EDDSA, CONC_KEY_ED, 1, 200, true },
};
#define CONC_NOPS (sizeof(conc_ops) / sizeof(conc_ops[0]))

/* Resolved in each process: handles are store row ids, the same everywhere, but look them up. */
typedef struct conc_key {
    CK_OBJECT_HANDLE priv, pub;
    p11l_alg alg;
    uint8_t *point;
    size_t point_len;
} conc_key;

typedef struct conc_thread {
    CK_FUNCTION_LIST_PTR fl;
    CK_SLOT_ID slot;
    const conc_key *keys;
    int child, index;
    double deadline_us;
    pthread_t tid;
    uint64_t rng;
    /* results */
    unsigned long iters, signs, verifies, ossl_checks, gens, errors, printed;
    char **labels;
    size_t nlabels, cap;
} conc_thread;

/* ---------------------------------------------------------------------- */
/* the application's mutex callbacks (child CONC_CALLBACK_CHILD)             */
/* ---------------------------------------------------------------------- */

static atomic_ulong conc_mx_created, conc_mx_destroyed, conc_mx_locks;

static CK_RV conc_mx_create(CK_VOID_PTR_PTR out)
{
    pthread_mutex_t *m = malloc(sizeof(*m));

    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    if (m == NULL)
        return CKR_HOST_MEMORY;
    if (pthread_mutex_init(m, NULL) != 0) {
        free(m);
        return CKR_GENERAL_ERROR;
    }
    atomic_fetch_add(&conc_mx_created, 1);
    *out = m;
    return CKR_OK;
}

static CK_RV conc_mx_destroy(CK_VOID_PTR p)
{
    if (p == NULL)
        return CKR_MUTEX_BAD;
    if (pthread_mutex_destroy(p) != 0)
        return CKR_MUTEX_BAD;
    free(p);
    atomic_fetch_add(&conc_mx_destroyed, 1);
    return CKR_OK;
}

static CK_RV conc_mx_lock(CK_VOID_PTR p)
{
    if (p == NULL)
        return CKR_MUTEX_BAD;
    if (pthread_mutex_lock(p) != 0)
        return CKR_MUTEX_BAD;
    atomic_fetch_add(&conc_mx_locks, 1);
    return CKR_OK;
}

static CK_RV conc_mx_unlock(CK_VOID_PTR p)
{
    if (p == NULL)
        return CKR_MUTEX_BAD;
    return pthread_mutex_unlock(p) == 0 ? CKR_OK : CKR_MUTEX_NOT_LOCKED;
}

/* ---------------------------------------------------------------------- */
/* worker threads                                                           */
/* ---------------------------------------------------------------------- */

static uint64_t conc_rand(conc_thread *t)
{
    /* xorshift64*: test data and choices, not secrets */
    t->rng ^= t->rng >> 12;
    t->rng ^= t->rng << 25;
    t->rng ^= t->rng >> 27;
    return t->rng * 0x2545F4914F6CDD1DULL;
}

static void conc_fill(conc_thread *t, uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(conc_rand(t) >> 56);
}

/* Count (and, up to a cap, print) a call that did not return CKR_OK. */
static void conc_error(conc_thread *t, const char *call, const char *what, CK_RV rv)
{
    t->errors++;
    if (t->printed++ < CONC_MAX_PRINTED_ERRORS)
        fprintf(stderr, "ERROR child %d (pid %ld) thread %d iteration %lu: %s [%s]: %s\n",
                t->child, (long)getpid(), t->index, t->iters, call, what, p11l_rv_str(rv));
    else if (t->printed == CONC_MAX_PRINTED_ERRORS + 1)
        fprintf(stderr, "ERROR child %d thread %d: further errors counted, not printed\n",
                t->child, t->index);
}

static bool conc_add_label(conc_thread *t, const char *label)
{
    if (t->nlabels == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        char **p = realloc(t->labels, cap * sizeof(*p));

        if (p == NULL)
            return false;
        t->labels = p;
        t->cap = cap;
    }
    t->labels[t->nlabels] = strdup(label);
    if (t->labels[t->nlabels] == NULL)
        return false;
    t->nlabels++;
    return true;
}

/*
 * Sign data with key (priv) and mech. Every CONC_VERIFY_EVERY-th signature
 * (or when force_verify) is checked with C_Verify and, when ossl is set, with
 * OpenSSL against point. Errors are counted; returns false on any.
 */
static bool conc_sign_one(conc_thread *t, CK_SESSION_HANDLE s, const conc_key *key,
                          CK_MECHANISM_TYPE mech_type, const char *what, size_t len,
                          bool ossl, bool force_verify)
{
    CK_MECHANISM mech = { mech_type, NULL, 0 };
    uint8_t data[256], sig[256];
    CK_ULONG siglen = sizeof(sig);
    CK_RV rv;

    conc_fill(t, data, len);
    rv = t->fl->C_SignInit(s, &mech, key->priv);
    if (rv != CKR_OK) {
        conc_error(t, "C_SignInit", what, rv);
        return false;
    }
    if (t->signs % 8 == 3) {
        /* the length query keeps the operation active */
        rv = t->fl->C_Sign(s, data, len, NULL, &siglen);
        if (rv != CKR_OK) {
            conc_error(t, "C_Sign(NULL: length query)", what, rv);
            return false;
        }
        if (siglen > sizeof(sig)) {
            conc_error(t, "C_Sign(NULL: length query) returned an absurd length", what,
                       CKR_GENERAL_ERROR);
            return false;
        }
    }
    rv = t->fl->C_Sign(s, data, len, sig, &siglen);
    if (rv != CKR_OK) {
        conc_error(t, "C_Sign", what, rv);
        return false;
    }
    t->signs++;
    if (!force_verify && t->signs % CONC_VERIFY_EVERY != 0)
        return true;

    rv = t->fl->C_VerifyInit(s, &mech, key->pub);
    if (rv != CKR_OK) {
        conc_error(t, "C_VerifyInit", what, rv);
        return false;
    }
    rv = t->fl->C_Verify(s, data, len, sig, siglen);
    if (rv != CKR_OK) {
        conc_error(t, "C_Verify", what, rv);
        return false;
    }
    t->verifies++;
    if (ossl) {
        if (!p11l_ossl_verify(key->alg, key->point, key->point_len, data, len, sig, siglen)) {
            conc_error(t, "OpenSSL verification of the signature", what, CKR_SIGNATURE_INVALID);
            return false;
        }
        t->ossl_checks++;
    }
    return true;
}

/* Generate a key pair, record its label, and sign with it once (verified). */
static void conc_generate(conc_thread *t, CK_SESSION_HANDLE s)
{
    static const p11l_alg algs[] = { P11L_SECP256K1, P11L_P256, P11L_ED25519 };
    char label[64];
    uint8_t id[8];
    conc_key key;
    CK_RV rv;

    memset(&key, 0, sizeof(key));
    key.alg = algs[conc_rand(t) % 3];
    snprintf(label, sizeof(label), "gen-%ld-%d-%lu", (long)getpid(), t->index, t->gens);
    conc_fill(t, id, sizeof(id));
    rv = p11l_gen_keypair(t->fl, &key.pub, &key.priv, s, key.alg, label, id, sizeof(id));
    if (rv != CKR_OK) {
        conc_error(t, "C_GenerateKeyPair", label, rv);
        return;
    }
    t->gens++;
    if (!conc_add_label(t, label)) {
        conc_error(t, "recording the label (out of memory)", label, CKR_HOST_MEMORY);
        return;
    }
    rv = p11l_get_attr(t->fl, &key.point, &key.point_len, s, key.pub, CKA_EC_POINT);
    if (rv != CKR_OK) {
        conc_error(t, "C_GetAttributeValue(CKA_EC_POINT) of a new key", label, rv);
        return;
    }
    if (key.alg == P11L_ED25519)
        conc_sign_one(t, s, &key, CKM_EDDSA, label, 32, true, true);
    else
        conc_sign_one(t, s, &key, CKM_ECDSA, label, 32, true, true);
    free(key.point);
}

static void *conc_thread_main(void *arg)
{
    conc_thread *t = arg;
    CK_SESSION_HANDLE s;
    CK_RV rv;

    rv = t->fl->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        conc_error(t, "C_OpenSession", "worker session", rv);
        return NULL;
    }
    while (p11l_now_us() < t->deadline_us) {
        t->iters++;
        if (t->iters % CONC_GEN_EVERY == 0) {
            conc_generate(t, s);
        } else {
            const conc_op *op = &conc_ops[conc_rand(t) % CONC_NOPS];
            size_t len = op->min_len + conc_rand(t) % (op->max_len - op->min_len + 1);

            conc_sign_one(t, s, &t->keys[op->key], op->mech, op->name, len, op->ossl, false);
        }
    }
    rv = t->fl->C_CloseSession(s);
    if (rv != CKR_OK)
        conc_error(t, "C_CloseSession", "worker session", rv);
    return NULL;
}

/* ---------------------------------------------------------------------- */
/* processes                                                                */
/* ---------------------------------------------------------------------- */

/* Find the long-lived keys and their public points. */
static CK_RV conc_find_keys(CK_FUNCTION_LIST_PTR fl, conc_key *keys, CK_SESSION_HANDLE s)
{
    CK_RV rv;

    for (int i = 0; i < CONC_NKEYS; i++) {
        keys[i].alg = conc_keys[i].alg;
        rv = p11l_find_one(fl, &keys[i].priv, s, CKO_PRIVATE_KEY, conc_keys[i].label);
        if (rv == CKR_OK)
            rv = p11l_find_one(fl, &keys[i].pub, s, CKO_PUBLIC_KEY, conc_keys[i].label);
        if (rv == CKR_OK)
            rv = p11l_get_attr(fl, &keys[i].point, &keys[i].point_len, s, keys[i].pub,
                               CKA_EC_POINT);
        if (rv != CKR_OK)
            return rv;
    }
    return CKR_OK;
}

static void conc_free_keys(conc_key *keys)
{
    for (int i = 0; i < CONC_NKEYS; i++) {
        free(keys[i].point);
        keys[i].point = NULL;
    }
}

static bool conc_write_labels(const char *path, conc_thread *threads)
{
    FILE *f = fopen(path, "w");
    bool ok = f != NULL;

    if (f == NULL) {
        perror(path);
        return false;
    }
    for (int i = 0; i < CONC_NTHREADS; i++)
        for (size_t j = 0; j < threads[i].nlabels; j++)
            if (fprintf(f, "%s\n", threads[i].labels[j]) < 0)
                ok = false;
    if (fclose(f) != 0)
        ok = false;
    if (!ok)
        fprintf(stderr, "writing %s failed\n", path);
    return ok;
}

/* One child process: initialize, log in, run the threads, write the labels. Exit status. */
static int conc_child(CK_FUNCTION_LIST_PTR fl, int child, double seconds, const char *labels_path)
{
    CK_C_INITIALIZE_ARGS args;
    conc_thread threads[CONC_NTHREADS];
    conc_key keys[CONC_NKEYS];
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE login_s;
    unsigned long errors = 0, signs = 0, verifies = 0, ossl = 0, gens = 0, iters = 0;
    uint64_t seed;
    bool callbacks = child == CONC_CALLBACK_CHILD;
    double start;
    CK_RV rv;

    memset(&args, 0, sizeof(args));
    memset(threads, 0, sizeof(threads));
    memset(keys, 0, sizeof(keys));
    if (callbacks) {
        args.CreateMutex = conc_mx_create;
        args.DestroyMutex = conc_mx_destroy;
        args.LockMutex = conc_mx_lock;
        args.UnlockMutex = conc_mx_unlock;
    } else {
        args.flags = CKF_OS_LOCKING_OK;
    }
    rv = fl->C_Initialize(&args);
    if (rv != CKR_OK) {
        fprintf(stderr, "ERROR child %d: C_Initialize(%s): %s\n", child,
                callbacks ? "mutex callbacks" : "CKF_OS_LOCKING_OK", p11l_rv_str(rv));
        return 1;
    }
    if (p11l_find_slot(fl, &slot, CONC_TOKEN_LABEL) != CKR_OK) {
        errors++;
        goto out_finalize;
    }
    rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &login_s);
    if (rv != CKR_OK) {
        fprintf(stderr, "ERROR child %d: C_OpenSession: %s\n", child, p11l_rv_str(rv));
        errors++;
        goto out_finalize;
    }
    if (p11l_login(fl, login_s, CONC_USER_PIN) != CKR_OK ||
        conc_find_keys(fl, keys, login_s) != CKR_OK) {
        fprintf(stderr, "ERROR child %d: login or key lookup failed\n", child);
        errors++;
        goto out_close;
    }

    if (getrandom(&seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
        seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    start = p11l_now_us();
    for (int i = 0; i < CONC_NTHREADS; i++) {
        conc_thread *t = &threads[i];
        int err;

        t->fl = fl;
        t->slot = slot;
        t->keys = keys;
        t->child = child;
        t->index = i;
        t->deadline_us = start + seconds * 1e6;
        t->rng = (seed ^ (0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1))) | 1;
        err = pthread_create(&t->tid, NULL, conc_thread_main, t);
        if (err != 0) {
            fprintf(stderr, "ERROR child %d: pthread_create: %s\n", child, strerror(err));
            t->tid = 0;
            errors++;
        }
    }
    for (int i = 0; i < CONC_NTHREADS; i++) {
        conc_thread *t = &threads[i];

        if (t->tid != 0)
            pthread_join(t->tid, NULL);
        errors += t->errors;
        signs += t->signs;
        verifies += t->verifies;
        ossl += t->ossl_checks;
        gens += t->gens;
        iters += t->iters;
    }
    /* A run that signed, verified or generated nothing checked nothing. */
    if (signs == 0 || verifies == 0 || gens == 0) {
        fprintf(stderr, "ERROR child %d: nothing done before the deadline (%lu signatures, %lu C_Verify, "
                        "%lu key pairs)\n", child, signs, verifies, gens);
        errors++;
    }
    if (!conc_write_labels(labels_path, threads))
        errors++;

    rv = fl->C_Logout(login_s);
    if (rv != CKR_OK) {
        fprintf(stderr, "ERROR child %d: C_Logout: %s\n", child, p11l_rv_str(rv));
        errors++;
    }
out_close:
    rv = fl->C_CloseSession(login_s);
    if (rv != CKR_OK) {
        fprintf(stderr, "ERROR child %d: C_CloseSession: %s\n", child, p11l_rv_str(rv));
        errors++;
    }
out_finalize:
    rv = fl->C_Finalize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "ERROR child %d: C_Finalize: %s\n", child, p11l_rv_str(rv));
        errors++;
    }
    if (callbacks && atomic_load(&conc_mx_locks) == 0) {
        fprintf(stderr, "ERROR child %d: the module never called the application's LockMutex "
                        "(flags without CKF_OS_LOCKING_OK: it must use the callbacks)\n", child);
        errors++;
    }
    printf("child %d (pid %ld, %s): %lu iterations, %lu signatures (%.0f/s), %lu C_Verify, "
           "%lu OpenSSL checks, %lu key pairs generated, %lu errors",
           child, (long)getpid(), callbacks ? "mutex callbacks" : "CKF_OS_LOCKING_OK", iters,
           signs, signs / seconds, verifies, ossl, gens, errors);
    if (callbacks)
        printf("; callbacks: %lu mutexes created, %lu destroyed, %lu locks",
               atomic_load(&conc_mx_created), atomic_load(&conc_mx_destroyed),
               atomic_load(&conc_mx_locks));
    printf("\n");
    fflush(stdout);
    for (int i = 0; i < CONC_NTHREADS; i++) {
        for (size_t j = 0; j < threads[i].nlabels; j++)
            free(threads[i].labels[j]);
        free(threads[i].labels);
    }
    conc_free_keys(keys);
    return errors == 0 ? 0 : 1;
}

/*
 * Parent, before the children: the token and its long-lived keys. A missing
 * mechanism is counted in *missing (the run goes on, and its signatures fail
 * loudly); returns false when the token or a key could not be made.
 */
static bool conc_setup(CK_FUNCTION_LIST_PTR fl, unsigned long *missing)
{
    static const struct { CK_MECHANISM_TYPE m; const char *name; } need[] = {
        { CKM_EC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN" },
        { CKM_EC_EDWARDS_KEY_PAIR_GEN, "CKM_EC_EDWARDS_KEY_PAIR_GEN" },
        { CKM_ECDSA, "CKM_ECDSA" },
        { CKM_EDDSA, "CKM_EDDSA" },
        { CKM_KH_BIP340_SCHNORR, "CKM_KH_BIP340_SCHNORR" },
    };
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s;
    bool ok = false;
    CK_RV rv;

    rv = fl->C_Initialize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "setup: C_Initialize: %s\n", p11l_rv_str(rv));
        return false;
    }
    if (p11l_make_token(fl, &slot, CONC_TOKEN_LABEL, CONC_SO_PIN, CONC_USER_PIN) != CKR_OK)
        goto out_finalize;
    ok = true;
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
        CK_MECHANISM_INFO mi;

        rv = fl->C_GetMechanismInfo(slot, need[i].m, &mi);
        if (rv != CKR_OK) {
            fprintf(stderr, "ERROR setup: C_GetMechanismInfo(%s): %s\n", need[i].name,
                    p11l_rv_str(rv));
            (*missing)++;
        }
    }
    rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        fprintf(stderr, "setup: C_OpenSession: %s\n", p11l_rv_str(rv));
        ok = false;
        goto out_finalize;
    }
    if (p11l_login(fl, s, CONC_USER_PIN) != CKR_OK)
        ok = false;
    for (int i = 0; ok && i < CONC_NKEYS; i++) {
        CK_OBJECT_HANDLE pub, priv;
        uint8_t id[1] = { (uint8_t)(0xA0 + i) };

        if (p11l_gen_keypair(fl, &pub, &priv, s, conc_keys[i].alg, conc_keys[i].label, id,
                             sizeof(id)) != CKR_OK)
            ok = false;
    }
    fl->C_CloseSession(s);
out_finalize:
    rv = fl->C_Finalize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "setup: C_Finalize: %s\n", p11l_rv_str(rv));
        ok = false;
    }
    return ok;
}

/* Parent, after the children: every recorded label is listed. Returns the error count. */
static unsigned long conc_check(CK_FUNCTION_LIST_PTR fl, const char *work, int nchildren)
{
    unsigned long errors = 0, checked = 0;
    CK_BBOOL yes = CK_TRUE;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s;
    size_t npriv = 0, npub = 0;
    CK_RV rv;

    rv = fl->C_Initialize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "check: C_Initialize: %s\n", p11l_rv_str(rv));
        return 1;
    }
    if (p11l_find_slot(fl, &slot, CONC_TOKEN_LABEL) != CKR_OK) {
        errors++;
        goto out_finalize;
    }
    rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        fprintf(stderr, "check: C_OpenSession: %s\n", p11l_rv_str(rv));
        errors++;
        goto out_finalize;
    }
    if (p11l_login(fl, s, CONC_USER_PIN) != CKR_OK) {
        errors++;
        goto out_close;
    }
    for (int c = 0; c < nchildren; c++) {
        char path[4200], line[128];
        FILE *f;

        snprintf(path, sizeof(path), "%s/labels-%d.txt", work, c);
        f = fopen(path, "r");
        if (f == NULL) {
            fprintf(stderr, "check: child %d wrote no label list (%s)\n", c, strerror(errno));
            errors++;
            continue;
        }
        while (fgets(line, sizeof(line), f) != NULL) {
            CK_OBJECT_HANDLE h;

            line[strcspn(line, "\n")] = '\0';
            if (line[0] == '\0')
                continue;
            checked++;
            if (p11l_find_one(fl, &h, s, CKO_PRIVATE_KEY, line) != CKR_OK)
                errors++;
            if (p11l_find_one(fl, &h, s, CKO_PUBLIC_KEY, line) != CKR_OK)
                errors++;
        }
        fclose(f);
    }
    /* The whole listing: the parent's keys plus exactly the generated ones. */
    if (p11l_find(fl, NULL, 0, &npriv, s, CKO_PRIVATE_KEY, CKA_TOKEN, &yes, sizeof(yes)) != CKR_OK ||
        p11l_find(fl, NULL, 0, &npub, s, CKO_PUBLIC_KEY, CKA_TOKEN, &yes, sizeof(yes)) != CKR_OK) {
        errors++;
    } else if (npriv != CONC_NKEYS + checked || npub != CONC_NKEYS + checked) {
        fprintf(stderr, "check: the token lists %zu private and %zu public keys, expected %lu each\n",
                npriv, npub, CONC_NKEYS + checked);
        errors++;
    }
    printf("check: %lu generated key pairs recorded; each found once as private and public key; "
           "token lists %zu private / %zu public keys\n", checked, npriv, npub);
    rv = fl->C_Logout(s);
    if (rv != CKR_OK) {
        fprintf(stderr, "check: C_Logout: %s\n", p11l_rv_str(rv));
        errors++;
    }
out_close:
    fl->C_CloseSession(s);
out_finalize:
    rv = fl->C_Finalize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "check: C_Finalize: %s\n", p11l_rv_str(rv));
        errors++;
    }
    return errors;
}

/* Wait for every child; kill them if they outlive the deadline by CONC_HANG_GRACE_S. */
static unsigned long conc_wait_children(const pid_t *pids, int n, double seconds)
{
    double give_up = p11l_now_us() + (seconds + CONC_HANG_GRACE_S) * 1e6;
    bool done[CONC_NPROCS] = { false };
    unsigned long errors = 0;
    int left = n;

    while (left > 0) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);

        if (pid < 0 && errno != EINTR) {
            perror("waitpid");
            return errors + (unsigned long)left;
        }
        if (pid <= 0) {
            if (p11l_now_us() > give_up) {
                for (int i = 0; i < n; i++) {
                    if (!done[i]) {
                        fprintf(stderr, "ERROR child %d (pid %ld) still running %d s after its "
                                        "deadline: hung (deadlock?); killing it\n",
                                i, (long)pids[i], CONC_HANG_GRACE_S);
                        kill(pids[i], SIGKILL);
                        waitpid(pids[i], NULL, 0);
                        done[i] = true;
                        errors++;
                        left--;
                    }
                }
                break;
            }
            usleep(100 * 1000);
            continue;
        }
        for (int i = 0; i < n; i++) {
            if (pids[i] != pid || done[i])
                continue;
            done[i] = true;
            left--;
            if (WIFSIGNALED(st)) {
                fprintf(stderr, "ERROR child %d (pid %ld) killed by signal %d\n", i, (long)pid,
                        WTERMSIG(st));
                errors++;
            } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "ERROR child %d (pid %ld) exited with status %d\n", i,
                        (long)pid, WEXITSTATUS(st));
                errors++;
            }
        }
    }
    return errors;
}

int main(void)
{
    const char *module = p11l_module_path(), *secs_env = getenv("KH_CONCURRENCY_SECONDS");
    bool keep = getenv("KH_KEEP_STORE") != NULL && strcmp(getenv("KH_KEEP_STORE"), "1") == 0;
    char store[4096], work[4096];
    pid_t pids[CONC_NPROCS];
    CK_FUNCTION_LIST_PTR fl;
    unsigned long errors = 0;
    double seconds = 20;
    int started = 0;
    void *dl;

    if (module == NULL)
        return 1;
    if (secs_env != NULL) {
        seconds = strtod(secs_env, NULL);
        if (!(seconds > 0 && seconds <= 3600)) {
            fprintf(stderr, "KH_CONCURRENCY_SECONDS must be in (0, 3600]\n");
            return 2;
        }
    }
    if (!p11l_tmpdir(store, sizeof(store), "conc-store"))
        return 1;
    if (!p11l_tmpdir(work, sizeof(work), "conc-work")) {
        p11l_rmtree(store);
        return 1;
    }
    if (setenv("KEYHOLD_STORE", store, 1) != 0) {
        perror("setenv");
        errors++;
        goto out_rm;
    }
    if (p11l_load(&dl, &fl, module) != CKR_OK) {
        errors++;
        goto out_rm;
    }
    printf("concurrency: %d processes x %d threads for %.0f s on store %s\n", CONC_NPROCS,
           CONC_NTHREADS, seconds, store);
    if (!conc_setup(fl, &errors)) {
        fprintf(stderr, "ERROR setup failed\n");
        errors++;
        goto out_dlclose;
    }

    fflush(NULL);
    for (int i = 0; i < CONC_NPROCS; i++) {
        pid_t pid = fork();

        if (pid < 0) {
            perror("fork");
            errors++;
            break;
        }
        if (pid == 0) {
            char path[4200];

            snprintf(path, sizeof(path), "%s/labels-%d.txt", work, i);
            fflush(NULL);
            _exit(conc_child(fl, i, seconds, path));
        }
        pids[started++] = pid;
    }
    errors += conc_wait_children(pids, started, seconds);
    errors += conc_check(fl, work, started);

out_dlclose:
    p11l_unload(dl);
out_rm:
    if (keep) {
        printf("store kept in %s, label lists in %s\n", store, work);
    } else {
        p11l_rmtree(store);
        p11l_rmtree(work);
    }
    if (errors != 0) {
        printf("concurrency: FAIL, %lu errors\n", errors);
        return 1;
    }
    printf("concurrency: PASS\n");
    return 0;
}

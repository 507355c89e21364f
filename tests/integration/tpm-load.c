/*
 * tpm-load: TPM keys under load on one swtpm without a resource manager
 * (started by tpm-load.sh; it holds three objects).
 *
 * 1. The parent makes a token with 64 TPM P-256 keys (CKA_KH_BACKEND = 2) and
 *    checks their attributes: the backend reads back as tpm, the private
 *    blob and auth value are never returned (CKR_ATTRIBUTE_SENSITIVE), and
 *    without a login the key cannot sign.
 * 2. Fork: with one key loaded in the parent, a forked child initialises,
 *    logs in and signs with another key; afterwards the parent's object is
 *    still loaded (the child flushed only its own: tpm2_getcap counts them),
 *    and the parent signs again. After the parent's C_Finalize nothing is
 *    loaded.
 * 3. Load: two processes with two threads each sign with all 64 keys round
 *    robin (each thread from its own offset) KH_TPM_LOAD_ROUNDS times
 *    (default 3). Every signature is checked with OpenSSL. Any CK_RV other
 *    than CKR_OK, or a signature that does not verify, is an error.
 *
 * Exit status 0 only with zero errors. Timings are printed, never asserted.
 * Env: KEYHOLD_MODULE, KEYHOLD_TCTI, TPM2TOOLS_TCTI, KH_TPM_LOAD_ROUNDS.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <unistd.h>

#include "p11load.h"

#define LOAD_TOKEN "tpmload"
#define LOAD_SO_PIN "87654321"
#define LOAD_PIN "12345678"
#define LOAD_NKEYS 64
#define LOAD_NPROCS 2
#define LOAD_NTHREADS 2
#define LOAD_ALARM_S 900

static CK_FUNCTION_LIST_PTR fl;
static void *dl;
static CK_OBJECT_HANDLE privs[LOAD_NKEYS];
static uint8_t *points[LOAD_NKEYS];
static size_t point_lens[LOAD_NKEYS];
static int failures;

#define CHECK(cond, ...)                                      \
    do {                                                      \
        if (!(cond)) {                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                     \
            fputc('\n', stderr);                              \
            failures++;                                       \
        }                                                     \
    } while (0)

/* Transient objects loaded in the TPM now (tpm2_getcap). -1 on error. */
static int transient_count(void)
{
    /* Without the sanitizer runtime the sanitizer build preloads into this
     * program: tpm2_getcap with it deadlocks in a library destructor. */
    FILE *p = popen("env -u LD_PRELOAD timeout 60 tpm2_getcap handles-transient 2>/dev/null", "r");
    char line[128];
    int n = 0;
    if (!p)
        return -1;
    while (fgets(line, sizeof line, p))
        if (strstr(line, "0x80"))
            n++;
    return pclose(p) == 0 ? n : -1;
}

static CK_RV gen_tpm_key(CK_SESSION_HANDLE s, int i)
{
    static const uint8_t p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
    CK_BBOOL yes = CK_TRUE;
    CK_ULONG backend = CKV_KH_BACKEND_TPM;
    CK_MECHANISM mech = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
    char label[16];
    uint8_t id = (uint8_t)i;
    CK_OBJECT_HANDLE pub;
    snprintf(label, sizeof label, "tk-%02d", i);
    CK_ATTRIBUTE pt[] = {
        { CKA_TOKEN, &yes, sizeof yes },
        { CKA_VERIFY, &yes, sizeof yes },
        { CKA_EC_PARAMS, (void *)p256, sizeof p256 },
        { CKA_LABEL, label, strlen(label) },
        { CKA_ID, &id, 1 },
    };
    CK_ATTRIBUTE vt[] = {
        { CKA_TOKEN, &yes, sizeof yes },
        { CKA_PRIVATE, &yes, sizeof yes },
        { CKA_SIGN, &yes, sizeof yes },
        { CKA_LABEL, label, strlen(label) },
        { CKA_ID, &id, 1 },
        { CKA_KH_BACKEND, &backend, sizeof backend },
    };
    CK_RV rv = fl->C_GenerateKeyPair(s, &mech, pt, 5, vt, 6, &pub, &privs[i]);
    if (rv != CKR_OK)
        return rv;
    return p11l_get_attr(fl, &points[i], &point_lens[i], s, pub, CKA_EC_POINT);
}

/* Sign a random digest with key i and check it with OpenSSL. */
static CK_RV sign_check(CK_SESSION_HANDLE s, int i, bool *verified)
{
    uint8_t digest[32], sig[64];
    CK_ULONG sl = sizeof sig;
    CK_MECHANISM m = { CKM_ECDSA, NULL, 0 };
    *verified = false;
    if (getrandom(digest, sizeof digest, 0) != sizeof digest)
        return CKR_FUNCTION_FAILED;
    CK_RV rv = fl->C_SignInit(s, &m, privs[i]);
    if (rv == CKR_OK)
        rv = fl->C_Sign(s, digest, sizeof digest, sig, &sl);
    if (rv == CKR_OK)
        *verified = p11l_ossl_verify(P11L_P256, points[i], point_lens[i], digest, sizeof digest, sig, sl);
    return rv;
}

static CK_RV open_login(CK_SESSION_HANDLE *s)
{
    CK_SLOT_ID slot;
    CK_RV rv = p11l_find_slot(fl, &slot, LOAD_TOKEN);
    if (rv == CKR_OK)
        rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s);
    if (rv == CKR_OK)
        rv = p11l_login(fl, *s, LOAD_PIN);
    return rv;
}

static CK_RV init_module(void)
{
    CK_C_INITIALIZE_ARGS ia = { .flags = CKF_OS_LOCKING_OK };
    return fl->C_Initialize(&ia);
}

/* ---- phase 1: keys and attributes ---- */

static void phase_keys(void)
{
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s;
    CK_RV rv = p11l_make_token(fl, &slot, LOAD_TOKEN, LOAD_SO_PIN, LOAD_PIN);
    CHECK(rv == CKR_OK, "make token: %s", p11l_rv_str(rv));
    rv = open_login(&s);
    CHECK(rv == CKR_OK, "open/login: %s", p11l_rv_str(rv));
    double t0 = p11l_now_us();
    for (int i = 0; i < LOAD_NKEYS && rv == CKR_OK; i++) {
        rv = gen_tpm_key(s, i);
        CHECK(rv == CKR_OK, "generate TPM key %d: %s", i, p11l_rv_str(rv));
    }
    printf("generated %d TPM P-256 keys in %.2f s\n", LOAD_NKEYS, (p11l_now_us() - t0) / 1e6);

    CK_ULONG backend = 0;
    uint8_t buf[512];
    CK_ATTRIBUTE a = { CKA_KH_BACKEND, &backend, sizeof backend };
    rv = fl->C_GetAttributeValue(s, privs[0], &a, 1);
    CHECK(rv == CKR_OK && backend == CKV_KH_BACKEND_TPM, "CKA_KH_BACKEND: %s, %lu", p11l_rv_str(rv), backend);
    static const CK_ATTRIBUTE_TYPE secret[] = { CKA_KH_TPM_PRIVATE, CKA_KH_TPM_AUTH, CKA_VALUE };
    for (size_t i = 0; i < sizeof secret / sizeof secret[0]; i++) {
        CK_ATTRIBUTE b = { secret[i], buf, sizeof buf };
        rv = fl->C_GetAttributeValue(s, privs[0], &b, 1);
        CHECK(rv == CKR_ATTRIBUTE_SENSITIVE && b.ulValueLen == CK_UNAVAILABLE_INFORMATION,
              "attribute 0x%lx: %s (want CKR_ATTRIBUTE_SENSITIVE)", secret[i], p11l_rv_str(rv));
    }
    bool ok;
    rv = sign_check(s, 0, &ok);
    CHECK(rv == CKR_OK && ok, "sign with key 0: %s, verified %d", p11l_rv_str(rv), ok);
    rv = fl->C_Logout(s);
    CHECK(rv == CKR_OK, "C_Logout: %s", p11l_rv_str(rv));
    rv = sign_check(s, 0, &ok);
    CHECK(rv != CKR_OK, "signed with a TPM key without a login");
    printf("attributes: backend tpm, private blob and auth sensitive; no signature without login (%s)\n",
           p11l_rv_str(rv));
    fl->C_CloseSession(s);
}

/* ---- phase 2: fork ---- */

static void phase_fork(void)
{
    CK_SESSION_HANDLE s;
    bool ok;
    CK_RV rv = open_login(&s);
    CHECK(rv == CKR_OK, "open/login: %s", p11l_rv_str(rv));
    rv = sign_check(s, 0, &ok);
    CHECK(rv == CKR_OK && ok, "parent sign: %s", p11l_rv_str(rv));
    /* One key (with a persistent primary), or the SRK-template primary and the key. */
    int before = transient_count();
    CHECK(before == 1 || before == 2, "parent with one key used: %d transient objects, want 1 or 2", before);

    pid_t pid = fork();
    if (pid == 0) {
        CK_SESSION_HANDLE cs;
        int bad = 0;
        CK_RV crv = init_module();
        if (crv != CKR_OK) {
            fprintf(stderr, "child C_Initialize: %s\n", p11l_rv_str(crv));
            _exit(1);
        }
        crv = open_login(&cs);
        if (crv == CKR_OK)
            crv = sign_check(cs, 1, &ok);
        if (crv != CKR_OK || !ok) {
            fprintf(stderr, "child sign: %s, verified %d\n", p11l_rv_str(crv), ok);
            bad = 1;
        }
        crv = fl->C_Finalize(NULL);
        if (crv != CKR_OK) {
            fprintf(stderr, "child C_Finalize: %s\n", p11l_rv_str(crv));
            bad = 1;
        }
        _exit(bad);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "forked child failed (status 0x%x)", st);
    /* The child loads two objects at once (its key and its parent, or the
     * persistent primary's scratch slot): with the parent's one there is
     * room for that in three slots, and the child must leave the parent's
     * object alone. With two of the parent's loaded there is not, and the
     * child may flush one of them as it would any other process's. */
    int after = transient_count();
    if (before == 1)
        CHECK(after == 1, "after the child: %d transient objects, want the parent's 1", after);
    rv = sign_check(s, 0, &ok);
    CHECK(rv == CKR_OK && ok, "parent sign after the child: %s", p11l_rv_str(rv));
    printf("fork: the child signed with its own state; the parent's objects: %d before, %d after%s\n", before,
           after, before == 1 ? " (left alone)" : " (no room for the child without flushing one)");
}

/* ---- phase 3: 2 processes x 2 threads x 64 keys ---- */

struct worker {
    int proc, thread, rounds;
    pthread_t tid;
    long signs, errors;
};

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    CK_SESSION_HANDLE s;
    CK_RV rv = open_login(&s);
    if (rv != CKR_OK) {
        fprintf(stderr, "proc %d thread %d: open/login: %s\n", w->proc, w->thread, p11l_rv_str(rv));
        w->errors++;
        return NULL;
    }
    int offset = (w->proc * LOAD_NTHREADS + w->thread) * (LOAD_NKEYS / (LOAD_NPROCS * LOAD_NTHREADS));
    for (int r = 0; r < w->rounds; r++) {
        for (int j = 0; j < LOAD_NKEYS; j++) {
            int k = (offset + j) % LOAD_NKEYS;
            bool ok;
            rv = sign_check(s, k, &ok);
            w->signs++;
            if (rv != CKR_OK || !ok) {
                if (w->errors++ < 10)
                    fprintf(stderr, "proc %d thread %d key %d: %s, verified %d\n", w->proc, w->thread, k,
                            p11l_rv_str(rv), ok);
            }
        }
    }
    fl->C_CloseSession(s);
    return NULL;
}

static int child_load(int proc, int rounds)
{
    struct worker w[LOAD_NTHREADS];
    long signs = 0, errors = 0;
    CK_RV rv = init_module();
    if (rv != CKR_OK) {
        fprintf(stderr, "proc %d: C_Initialize: %s\n", proc, p11l_rv_str(rv));
        return 1;
    }
    double t0 = p11l_now_us();
    for (int t = 0; t < LOAD_NTHREADS; t++) {
        memset(&w[t], 0, sizeof w[t]);
        w[t].proc = proc;
        w[t].thread = t;
        w[t].rounds = rounds;
        pthread_create(&w[t].tid, NULL, worker_run, &w[t]);
    }
    for (int t = 0; t < LOAD_NTHREADS; t++) {
        pthread_join(w[t].tid, NULL);
        signs += w[t].signs;
        errors += w[t].errors;
    }
    double dt = (p11l_now_us() - t0) / 1e6;
    printf("proc %d: %ld signatures over %d keys in %.2f s (%.0f/s), %ld errors\n", proc, signs, LOAD_NKEYS, dt,
           signs / dt, errors);
    fflush(stdout);
    rv = fl->C_Finalize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "proc %d: C_Finalize: %s\n", proc, p11l_rv_str(rv));
        errors++;
    }
    return errors ? 1 : 0;
}

static void phase_load(int rounds)
{
    pid_t pids[LOAD_NPROCS];
    for (int p = 0; p < LOAD_NPROCS; p++) {
        pids[p] = fork();
        if (pids[p] == 0)
            _exit(child_load(p, rounds));
    }
    for (int p = 0; p < LOAD_NPROCS; p++) {
        int st = 0;
        CHECK(pids[p] > 0 && waitpid(pids[p], &st, 0) == pids[p] && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "load process %d failed (status 0x%x)", p, st);
    }
}

int main(void)
{
    const char *path = p11l_module_path();
    const char *r = getenv("KH_TPM_LOAD_ROUNDS");
    int rounds = r && atoi(r) > 0 ? atoi(r) : 3;
    if (!path || !getenv("KEYHOLD_TCTI")) {
        fprintf(stderr, "tpm-load: KEYHOLD_MODULE and KEYHOLD_TCTI must be set (tpm-load.sh does)\n");
        return 2;
    }
    alarm(LOAD_ALARM_S); /* a hang is a failure, not a stuck CI job */
    setvbuf(stdout, NULL, _IOLBF, 0);
    CK_RV rv = p11l_load(&dl, &fl, path);
    if (rv != CKR_OK)
        return 1;
    rv = init_module();
    if (rv != CKR_OK) {
        fprintf(stderr, "C_Initialize: %s\n", p11l_rv_str(rv));
        return 1;
    }
    phase_keys();
    phase_fork();
    rv = fl->C_Finalize(NULL);
    CHECK(rv == CKR_OK, "C_Finalize: %s", p11l_rv_str(rv));
    int left = transient_count();
    CHECK(left == 0, "after C_Finalize: %d transient objects, want 0", left);
    printf("C_Finalize flushed everything (%d left)\n", left);
    if (failures == 0)
        phase_load(rounds);
    int left2 = transient_count();
    CHECK(left2 == 0, "after the load processes: %d transient objects, want 0", left2);
    for (int i = 0; i < LOAD_NKEYS; i++)
        free(points[i]);
    p11l_unload(dl);
    printf("tpm-load: %s (%d failures)\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}

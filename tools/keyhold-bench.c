/*
 * keyhold-bench - how fast a PKCS#11 module signs, generates keys and finds
 * keys at scale, next to the hardware floor and to other modules.
 *
 * An ordinary Cryptoki consumer: it dlopens the module (keyhold by default,
 * --module PATH for any other) and uses only the PKCS#11 interface plus
 * keyhold's vendor constants. Figures:
 *
 *   floor   the same signatures straight from libsecp256k1 / OpenSSL in this
 *           process, keys loaded once (the ceiling a module can approach)
 *   sign    C_SignInit + C_Sign per signature: ops/s, p50/p99 latency, per
 *           figure (mechanism x key class), 1..N threads, one session per
 *           thread ("own") or one session shared under an application lock
 *           ("shared"); the first signature of every thread is verified
 *           with OpenSSL or libsecp256k1
 *   keygen  token key pairs per second (C_GenerateKeyPair returns once the
 *           module says the key is stored)
 *   scale   stores of 10 .. 1,000,000 keys, then in fresh processes:
 *           C_Initialize, C_Login, find by CKA_LABEL and by CKA_ID, and the
 *           first signature
 *
 * --vs MODULE runs the same work against another module (SoftHSM2 and
 * tpm2-pkcs11 get a private configuration, and swtpm for tpm2-pkcs11) in the
 * same run, and the summary prints the ratios and the targets of issue 5.
 * Timings are printed, never judged: the exit status is 0 when every call
 * succeeded and every checked signature verified, 1 otherwise, 2 on a usage
 * error.
 *
 * Internal modes (the scale figure re-executes this program so that each
 * measurement starts in a fresh process): --scale-setup, --scale-measure.
 */
#include "benchcrypto.h"
#include "benchenv.h"
#include "encode.h"
#include "p11.h"

#include <errno.h>
#include <getopt.h>
#include <openssl/crypto.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BENCH_EXIT_OK 0
#define BENCH_EXIT_FAIL 1
#define BENCH_EXIT_USAGE 2

#define BENCH_MAX_VS 4
#define BENCH_MAX_TARGETS (1 + BENCH_MAX_VS)
#define BENCH_MAX_THREADS 64
#define BENCH_MAX_SIZES 8
#define BENCH_MAX_RUNS 15
#define BENCH_MAX_RESULTS 1024
#define BENCH_SO_PIN "87654321"
#define BENCH_USER_PIN "12345678"
#define BENCH_TOKEN_LABEL "bench"
#define BENCH_ID_LEN 16
#define BENCH_SIG_MAX 512
#define BENCH_DATA_MAX 64

static const char *bench_prog = "keyhold-bench";

/* ---- options ----------------------------------------------------------- */

enum { BENCH_DO_FLOOR = 1, BENCH_DO_SIGN = 2, BENCH_DO_KEYGEN = 4, BENCH_DO_SCALE = 8 };

static struct {
    const char *module;
    const char *vs[BENCH_MAX_VS];
    int nvs;
    double seconds;
    unsigned long ops;           /* > 0: fixed op count per thread instead of seconds */
    int threads;
    bool mode_own, mode_shared;
    bool algs[BENCH_SIG_COUNT];
    bool keygen_kinds[KH_KEY_RSA + 1];
    const char *backend_name;
    CK_ULONG backend;            /* 0: none asked */
    const char *tpm2_tcti;       /* --tpm2-tcti: tpm2-pkcs11 uses this TPM, no swtpm started */
    const char *key;             /* --key URI or label */
    const char *token;
    const char *pin;
    size_t sizes[BENCH_MAX_SIZES];
    int nsizes;
    size_t vs_sizes[BENCH_MAX_SIZES];
    int nvs_sizes;
    int runs;
    int repeat;                  /* rounds of floor/sign/keygen; best kept */
    bool json, quiet;
    unsigned what;
    /* internal modes */
    const char *pick_label, *pick_id;
    size_t fill;
    bool bulk;
} opt;

static const char bench_usage[] =
    "usage: keyhold-bench [options] [floor] [sign] [keygen] [scale]\n"
    "\n"
    "Measures a PKCS#11 module (keyhold by default). With no figure named, all four run.\n"
    "  floor    the same signatures straight from libsecp256k1/OpenSSL in this process\n"
    "  sign     C_SignInit+C_Sign: ops/s, p50/p99 latency, 1..N threads, own/shared session\n"
    "  keygen   durable token key pairs per second\n"
    "  scale    C_Initialize, C_Login, find by label/id, first signature at 10..1,000,000 keys\n"
    "\n"
    "options:\n"
    "  --module PATH       module to measure (default: keyhold, found like the keyhold CLI does)\n"
    "  --vs MODULE         also measure MODULE in the same run and print ratios; repeatable.\n"
    "                      'softhsm' and 'tpm2-pkcs11' name Debian's modules and get a private\n"
    "                      configuration (tpm2-pkcs11: a swtpm on a free port)\n"
    "  --seconds S         duration of each sign/keygen cell (default 2)\n"
    "  --ops N             instead: N operations per thread and cell (for instruction counts\n"
    "                      under valgrind --tool=callgrind)\n"
    "  --repeat K          run the floor/sign/keygen cells K times, interleaved, and keep\n"
    "                      each cell's best (default 1; other load only slows a run down)\n"
    "  --threads N         sign with 1..N threads (default: online CPUs)\n"
    "  --modes LIST        own,shared (default both): a session per thread, or one shared\n"
    "  --algs LIST         secp256k1-ecdsa,bip340,p256-ecdsa,ed25519,p384-ecdsa,rsa2048-pkcs1\n"
    "                      (default all)\n"
    "  --keygen-algs LIST  secp256k1,p256,p384,ed25519,rsa2048 (default p256)\n"
    "  --backend NAME      vault, tpm or remote: CKA_KH_BACKEND of the keys keyhold generates;\n"
    "                      with tpm or remote, vault keys of the same types are measured too\n"
    "                      (\"keyhold-vault\") as the reference\n"
    "  --tpm2-tcti TCTI    tpm2-pkcs11 uses this TPM (e.g. the swtpm keyhold's TPM backend\n"
    "                      uses: swtpm:port=N) instead of a swtpm of its own\n"
    "  --key URI|LABEL     sign with an existing key (PKCS#11 URI, or a label with --token)\n"
    "                      instead of generating keys in a temporary token\n"
    "  --token LABEL       token of --key (default: the URI's, else the only token)\n"
    "  --pin PIN           user PIN for --key (default: the URI's pin-value, else $KEYHOLD_PIN)\n"
    "  --sizes LIST        scale: key counts for keyhold (default 10,1000,10000,1000000)\n"
    "  --vs-sizes LIST     scale: key counts for --vs modules (default 10,1000)\n"
    "  --runs N            scale: fresh processes per size, median reported (default 3)\n"
    "  --json              one JSON object per figure on stdout instead of tables\n"
    "  --quiet             no progress messages on stderr\n"
    "\n"
    "Exit status: 0 when every call succeeded and every checked signature verified,\n"
    "1 otherwise, 2 on a usage error.\n";

static void bench_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void bench_err(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", bench_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void bench_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void bench_note(const char *fmt, ...)
{
    va_list ap;
    if (opt.quiet)
        return;
    fprintf(stderr, "%s: ", bench_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static double bench_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static bool bench_parse_sizes(size_t *sizes, int *n, const char *spec)
{
    const char *p = spec;

    *n = 0;
    while (*p) {
        char *end;
        unsigned long long v;
        errno = 0;
        v = strtoull(p, &end, 10);
        if (end == p || errno || v < 2 || v > 10000000 || *n == BENCH_MAX_SIZES)
            return false;
        sizes[(*n)++] = (size_t)v;
        p = end;
        if (*p == ',')
            p++;
        else if (*p)
            return false;
    }
    return *n > 0;
}

/* ---- results ------------------------------------------------------------ */

/* One measured figure, kept for the summary. */
struct bench_result {
    char section[8];             /* "floor", "sign", "keygen", "scale" */
    char module[64];             /* "floor" for the floor */
    char figure[32];             /* bench_sig name, keygen kind, or scale step */
    char detail[96];             /* floor variant, mode, ... */
    int threads;                 /* sign/floor; 0 otherwise */
    bool shared;
    size_t nkeys;                /* scale */
    double value;                /* ops/s, keys/s, or microseconds (scale) */
    double p50_us, p99_us;
    double cpu_us;               /* thread CPU time per op (all threads) */
    double vcsw;                 /* voluntary context switches per 1000 ops (blocking) */
    unsigned long long ops;
    bool skipped;
    char why[512];               /* skip reason or failure */
    bool verified;               /* sign/floor: every checked signature verified */
    int checked;
};

static struct bench_result bench_results[BENCH_MAX_RESULTS];
static int bench_nresults;
static int bench_failures;

static struct bench_result *bench_result_new(const char *section, const char *module,
                                             const char *figure)
{
    static struct bench_result spare;   /* when the table is full: measured, not kept */
    struct bench_result *r = bench_nresults < BENCH_MAX_RESULTS
                                 ? &bench_results[bench_nresults++] : &spare;
    memset(r, 0, sizeof *r);
    snprintf(r->section, sizeof r->section, "%s", section);
    snprintf(r->module, sizeof r->module, "%s", module);
    snprintf(r->figure, sizeof r->figure, "%s", figure);
    return r;
}

/*
 * Best of the rounds: a cell measured again (--repeat) keeps its fastest
 * run (another process on the machine can only slow a run down); every
 * signature checked in any round counts.
 */
static void bench_result_merge(struct bench_result *into, const struct bench_result *r)
{
    if (r->skipped && !into->skipped)
        return;
    if (!r->skipped && (into->skipped || r->value > into->value)) {
        into->skipped = false;
        into->value = r->value;
        into->ops = r->ops;
        into->p50_us = r->p50_us;
        into->p99_us = r->p99_us;
        into->cpu_us = r->cpu_us;
        into->vcsw = r->vcsw;
    }
    if (r->checked) {
        into->verified = (into->checked ? into->verified : true) && r->verified;
        into->checked += r->checked;
    }
    if (r->why[0] && (!into->why[0] || (r->checked && !r->verified)))
        snprintf(into->why, sizeof into->why, "%s", r->why);
}

/* Writes s as a JSON string (quotes included). */
static void bench_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void bench_json_result(const struct bench_result *r)
{
    printf("{\"figure\":");
    bench_json_str(stdout, r->section);
    printf(",\"module\":");
    bench_json_str(stdout, r->module);
    printf(",\"name\":");
    bench_json_str(stdout, r->figure);
    if (r->detail[0]) {
        printf(",\"detail\":");
        bench_json_str(stdout, r->detail);
    }
    if (!strcmp(r->section, "sign") || !strcmp(r->section, "floor")) {
        printf(",\"threads\":%d,\"mode\":\"%s\"", r->threads, r->shared ? "shared" : "own");
    }
    if (r->nkeys)
        printf(",\"keys\":%zu", r->nkeys);
    if (r->skipped) {
        printf(",\"skipped\":true,\"reason\":");
        bench_json_str(stdout, r->why);
        printf("}\n");
        return;
    }
    if (!strcmp(r->section, "scale")) {
        printf(",\"us\":%.1f", r->value);
    } else {
        printf(",\"%s\":%.1f,\"ops\":%llu,\"p50_us\":%.1f,\"p99_us\":%.1f,\"cpu_us_per_op\":%.2f,"
               "\"vcsw_per_1000\":%.2f",
               !strcmp(r->section, "keygen") ? "keys_per_s" : "ops_per_s", r->value, r->ops,
               r->p50_us, r->p99_us, r->cpu_us, r->vcsw);
    }
    if (r->checked || r->why[0]) {
        printf(",\"checked\":%d,\"verified\":%s", r->checked, r->verified ? "true" : "false");
        if (r->why[0]) {
            printf(",\"error\":");
            bench_json_str(stdout, r->why);
        }
    }
    printf("}\n");
}

/* ---- the thread harness ------------------------------------------------- */

/*
 * One signature (or key pair): true on success; on failure a reason in err.
 * *untimed (ns, starts at 0): work inside the op that is not part of the
 * figure (cleanup a module needs between operations).
 */
typedef bool (*bench_op_fn)(void *ctx, uint8_t *out, size_t *outlen, uint64_t *untimed,
                            char *err, size_t errlen);

struct bench_thread {
    pthread_t th;
    struct bench_run *run;
    void *ctx;
    uint64_t *lat;               /* ns per op */
    size_t nlat, cap;
    double t_start, t_end;       /* us */
    double cpu_us;               /* thread CPU time of the timed part */
    long vcsw;                   /* voluntary context switches in the timed part */
    uint8_t first[BENCH_SIG_MAX];
    size_t first_len;
    bool have_first;
    bool failed;
    char err[200];
};

struct bench_run {
    int nthreads;
    double seconds;
    bench_op_fn op;
    pthread_barrier_t barrier;
    struct bench_thread t[BENCH_MAX_THREADS];
};

static double bench_thread_cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static bool bench_lat_push(struct bench_thread *t, uint64_t ns)
{
    if (t->nlat == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 4096;
        uint64_t *n = realloc(t->lat, cap * sizeof *n);
        if (!n)
            return false;
        t->lat = n;
        t->cap = cap;
    }
    t->lat[t->nlat++] = ns;
    return true;
}

static void *bench_thread_main(void *arg)
{
    struct bench_thread *t = arg;
    struct bench_run *run = t->run;
    uint8_t out[BENCH_SIG_MAX];
    size_t outlen;
    double warm_end;

    /* Warm-up, untimed: the first call pays for key caches and lazy setup. */
    warm_end = bench_now_us() + (run->seconds < 1 ? run->seconds * 1e5 : 1e5);
    for (int i = 0; !t->failed && (i < 3 || (!opt.ops && bench_now_us() < warm_end)); i++) {
        uint64_t untimed = 0;
        outlen = sizeof out;
        if (!run->op(t->ctx, out, &outlen, &untimed, t->err, sizeof t->err))
            t->failed = true;
        if (i == 0 && !t->failed) {
            memcpy(t->first, out, outlen);
            t->first_len = outlen;
            t->have_first = true;
        }
    }
    pthread_barrier_wait(&run->barrier);
    if (t->failed)
        return NULL;
    struct rusage ru0, ru1;
    double cpu0 = bench_thread_cpu_us();
    getrusage(RUSAGE_THREAD, &ru0);
    t->t_start = bench_now_us();
    double deadline = t->t_start + run->seconds * 1e6;
    uint64_t t0 = bench_now_ns(), untimed_total = 0;
    for (;;) {
        uint64_t untimed = 0;
        outlen = sizeof out;
        if (!run->op(t->ctx, out, &outlen, &untimed, t->err, sizeof t->err)) {
            t->failed = true;
            break;
        }
        uint64_t t1 = bench_now_ns();
        untimed_total += untimed;
        deadline += (double)untimed / 1e3;
        if (!bench_lat_push(t, t1 - t0 - untimed)) {
            snprintf(t->err, sizeof t->err, "out of memory for latencies");
            t->failed = true;
            break;
        }
        if (opt.ops ? t->nlat >= opt.ops : (double)t1 / 1e3 >= deadline)
            break;
        t0 = t1;
    }
    t->t_end = bench_now_us() - (double)untimed_total / 1e3;
    t->cpu_us = bench_thread_cpu_us() - cpu0;
    getrusage(RUSAGE_THREAD, &ru1);
    t->vcsw = ru1.ru_nvcsw - ru0.ru_nvcsw;
    return NULL;
}

static int bench_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/*
 * Runs op on nthreads threads (ctx[i] each) for opt.seconds after a short
 * warm-up. Fills r->value (ops/s), ops, p50/p99; thread results stay in run
 * for the caller (first signature, errors). Returns false if any op failed.
 */
static bool bench_run_threads(struct bench_run *run, struct bench_result *r, bench_op_fn op,
                              void **ctx, int nthreads, double seconds)
{
    bool ok = true;
    int started = 0;

    memset(run, 0, sizeof *run);
    run->nthreads = nthreads;
    run->seconds = seconds;
    run->op = op;
    pthread_barrier_init(&run->barrier, NULL, (unsigned)nthreads);
    for (int i = 0; i < nthreads; i++) {
        run->t[i].run = run;
        run->t[i].ctx = ctx[i];
    }
    for (started = 0; started < nthreads; started++)
        if (pthread_create(&run->t[started].th, NULL, bench_thread_main, &run->t[started]) != 0)
            break;
    if (started < nthreads) {
        /* Cannot happen on this machine; the started threads would wait forever at the
         * barrier, so give up loudly. */
        bench_err("pthread_create failed");
        exit(BENCH_EXIT_FAIL);
    }
    for (int i = 0; i < nthreads; i++)
        pthread_join(run->t[i].th, NULL);
    pthread_barrier_destroy(&run->barrier);

    double t0 = 0, t1 = 0, cpu = 0;
    long vcsw = 0;
    size_t total = 0;
    for (int i = 0; i < nthreads; i++) {
        struct bench_thread *t = &run->t[i];
        if (t->failed) {
            ok = false;
            if (!r->why[0])
                snprintf(r->why, sizeof r->why, "thread %d: %s", i, t->err);
            continue;
        }
        if (!t0 || t->t_start < t0)
            t0 = t->t_start;
        if (t->t_end > t1)
            t1 = t->t_end;
        total += t->nlat;
        cpu += t->cpu_us;
        vcsw += t->vcsw;
    }
    uint64_t *all = total ? malloc(total * sizeof *all) : NULL;
    if (total && !all) {
        snprintf(r->why, sizeof r->why, "out of memory");
        ok = false;
    }
    size_t k = 0;
    for (int i = 0; i < nthreads; i++) {
        if (all && run->t[i].nlat)
            memcpy(all + k, run->t[i].lat, run->t[i].nlat * sizeof *all);
        k += run->t[i].nlat;
        free(run->t[i].lat);
        run->t[i].lat = NULL;
    }
    if (all && ok) {
        qsort(all, total, sizeof *all, bench_cmp_u64);
        r->ops = total;
        r->value = t1 > t0 ? (double)total / ((t1 - t0) / 1e6) : 0;
        size_t i50 = (total + 1) / 2 - 1, i99 = (size_t)ceil(0.99 * (double)total) - 1;
        r->p50_us = (double)all[i50] / 1e3;
        r->p99_us = (double)all[i99 < total ? i99 : total - 1] / 1e3;
        r->cpu_us = cpu / (double)total;
        r->vcsw = 1000.0 * (double)vcsw / (double)total;
    }
    free(all);
    return ok;
}

/* ---- modules under test ------------------------------------------------- */

struct bench_key {
    bool tried, ok;
    char why[320];
    uint8_t id[BENCH_ID_LEN];    /* CKA_ID of generated keys (found again after a recycle) */
    CK_OBJECT_HANDLE priv, pub;
    struct kh_pubkey pubkey;
};

struct bench_target {
    struct bench_env env;
    struct kh_p11 p11;
    bool ready;
    char why[600];               /* why not ready */
    bool existing;               /* --key: the user's token and key */
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s;         /* R/W, user logged in */
    char pin[256];
    struct bench_key keys[KH_KEY_RSA + 1];
    enum kh_keykind key_kind;    /* --key: the key's kind */
    CK_ULONG key_backend;        /* --key: the key's CKA_KH_BACKEND (0 unknown) */
    struct bench_key ref[KH_KEY_RSA + 1];  /* vault keys: the reference for tpm/remote keys */
    bool parked;                 /* finalized while another module uses the shared TPM */
};

static struct bench_target bench_targets[BENCH_MAX_TARGETS];
static int bench_ntargets;

static bool bench_is_keyhold(const struct bench_target *t)
{
    return t->env.kind == BENCH_ENV_KEYHOLD;
}

/* Make a token on the free slot through PKCS#11: C_InitToken, SO login, C_InitPIN. */
static CK_RV bench_make_token(struct kh_p11 *p, CK_SLOT_ID *slot, char *err, size_t errlen)
{
    struct kh_p11_token free_slot, tok;
    CK_UTF8CHAR label[32];
    CK_SESSION_HANDLE s;
    CK_RV rv;

    rv = kh_p11_free_slot(p, &free_slot);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "no slot with an uninitialised token (%s)", kh_rv_name(rv));
        return rv;
    }
    kh_p11_pad(label, sizeof label, BENCH_TOKEN_LABEL);
    rv = p->f->C_InitToken(free_slot.slot, (CK_UTF8CHAR_PTR)BENCH_SO_PIN, strlen(BENCH_SO_PIN),
                           label);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "C_InitToken: %s", kh_rv_name(rv));
        return rv;
    }
    rv = kh_p11_find_token(p, BENCH_TOKEN_LABEL, &tok);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "the new token is not listed (%s)", kh_rv_name(rv));
        return rv;
    }
    *slot = tok.slot;
    rv = p->f->C_OpenSession(*slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "C_OpenSession: %s", kh_rv_name(rv));
        return rv;
    }
    rv = kh_p11_login(p, s, CKU_SO, BENCH_SO_PIN);
    if (rv == CKR_OK) {
        rv = p->f->C_InitPIN(s, (CK_UTF8CHAR_PTR)BENCH_USER_PIN, strlen(BENCH_USER_PIN));
        if (rv != CKR_OK)
            snprintf(err, errlen, "C_InitPIN: %s", kh_rv_name(rv));
        p->f->C_Logout(s);
    } else {
        snprintf(err, errlen, "C_Login(SO): %s", kh_rv_name(rv));
    }
    p->f->C_CloseSession(s);
    return rv;
}

/* Opens a read-write session on slot and logs the user in with pin. */
static CK_RV bench_open_user(struct kh_p11 *p, CK_SLOT_ID slot, const char *pin, CK_SESSION_HANDLE *s)
{
    CK_RV rv = p->f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s);

    if (rv == CKR_OK)
        rv = kh_p11_login(p, *s, CKU_USER, pin);
    return rv;
}

/*
 * Starts the module afresh: closes session *s, C_Finalize, C_Initialize,
 * finds the bench token again and opens a new session on it with the user
 * logged in (bench_open_user). Out: *s; *slot (when not NULL) the token's
 * slot.
 */
static CK_RV bench_restart(struct kh_p11 *p, const char *pin, CK_SLOT_ID *slot, CK_SESSION_HANDLE *s)
{
    struct kh_p11_token tok;
    CK_RV rv;

    p->f->C_CloseSession(*s);
    p->f->C_Finalize(NULL);
    p->initialized = false;
    rv = kh_p11_initialize(p);
    if (rv == CKR_OK)
        rv = kh_p11_find_token(p, BENCH_TOKEN_LABEL, &tok);
    if (rv == CKR_OK) {
        if (slot)
            *slot = tok.slot;
        rv = bench_open_user(p, tok.slot, pin, s);
    }
    return rv;
}

/* Public key of a key pair member: from obj itself, else from the public key with its CKA_ID. */
static CK_RV bench_read_pub(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
                            enum kh_keykind kind, struct kh_pubkey *pub, CK_OBJECT_HANDLE *pubh)
{
    CK_RV rv = kh_p11_read_pubkey(p, s, priv, kind, pub);
    uint8_t *id = NULL;
    CK_ULONG idlen = 0;
    CK_OBJECT_HANDLE *objs = NULL;
    CK_ULONG n = 0;

    if (rv == CKR_OK)
        return rv;
    rv = kh_p11_get_attr(p, s, priv, CKA_ID, &id, &idlen);
    if (rv != CKR_OK)
        return rv;
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_ATTRIBUTE t[] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_ID, id, idlen } };
    rv = kh_p11_find(p, s, t, 2, &objs, &n);
    if (rv == CKR_OK && n < 1)
        rv = CKR_KEY_HANDLE_INVALID;
    if (rv == CKR_OK) {
        rv = kh_p11_read_pubkey(p, s, objs[0], kind, pub);
        if (pubh)
            *pubh = objs[0];
    }
    free(objs);
    free(id);
    return rv;
}

/*
 * Generate a token key pair of kind with a random CKA_ID. On keyhold with
 * --backend, the private template carries CKA_KH_BACKEND.
 */
static CK_RV bench_gen_keypair_on(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_ULONG backend,
                                  enum kh_keykind kind, const char *label, const uint8_t *id,
                                  size_t idlen, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv);

static CK_RV bench_gen_keypair(struct kh_p11 *p, CK_SESSION_HANDLE s, bool keyhold,
                               enum kh_keykind kind, const char *label, const uint8_t *id,
                               size_t idlen, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
    return bench_gen_keypair_on(p, s, keyhold ? opt.backend : 0, kind, label, id, idlen, pub, priv);
}

/* The same with CKA_KH_BACKEND = backend (0: no such attribute). */
static CK_RV bench_gen_keypair_on(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_ULONG backend,
                                  enum kh_keykind kind, const char *label, const uint8_t *id,
                                  size_t idlen, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
    CK_BBOOL yes = CK_TRUE;
    CK_ULONG bits = 2048;
    CK_BYTE e[] = { 0x01, 0x00, 0x01 };
    CK_MECHANISM mech = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
    const uint8_t *params = NULL;
    size_t plen = 0;
    CK_ATTRIBUTE pt[8], vt[8];
    CK_ULONG pn = 0, vn = 0;

    pt[pn++] = (CK_ATTRIBUTE){ CKA_TOKEN, &yes, sizeof yes };
    pt[pn++] = (CK_ATTRIBUTE){ CKA_VERIFY, &yes, sizeof yes };
    pt[pn++] = (CK_ATTRIBUTE){ CKA_LABEL, (void *)label, strlen(label) };
    pt[pn++] = (CK_ATTRIBUTE){ CKA_ID, (void *)id, idlen };
    vt[vn++] = (CK_ATTRIBUTE){ CKA_TOKEN, &yes, sizeof yes };
    vt[vn++] = (CK_ATTRIBUTE){ CKA_PRIVATE, &yes, sizeof yes };
    vt[vn++] = (CK_ATTRIBUTE){ CKA_SENSITIVE, &yes, sizeof yes };
    vt[vn++] = (CK_ATTRIBUTE){ CKA_SIGN, &yes, sizeof yes };
    vt[vn++] = (CK_ATTRIBUTE){ CKA_LABEL, (void *)label, strlen(label) };
    vt[vn++] = (CK_ATTRIBUTE){ CKA_ID, (void *)id, idlen };
    if (backend)
        vt[vn++] = (CK_ATTRIBUTE){ CKA_KH_BACKEND, &backend, sizeof backend };
    if (kind == KH_KEY_RSA) {
        mech.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
        pt[pn++] = (CK_ATTRIBUTE){ CKA_MODULUS_BITS, &bits, sizeof bits };
        pt[pn++] = (CK_ATTRIBUTE){ CKA_PUBLIC_EXPONENT, e, sizeof e };
    } else {
        if (kind == KH_KEY_ED25519)
            mech.mechanism = CKM_EC_EDWARDS_KEY_PAIR_GEN;
        if (!kh_keykind_ec_params(kind, &params, &plen))
            return CKR_GENERAL_ERROR;
        pt[pn++] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, (void *)params, plen };
    }
    return p->f->C_GenerateKeyPair(s, &mech, pt, pn, vt, vn, pub, priv);
}

/* The key of kind for sign cells: generated once per target (or --key's). */
static struct bench_key *bench_target_key(struct bench_target *t, enum kh_keykind kind)
{
    struct bench_key *k = &t->keys[kind];
    char label[64];
    CK_RV rv;

    if (k->tried)
        return k;
    k->tried = true;
    if (t->existing) {
        snprintf(k->why, sizeof k->why, "--key is a %s key", kh_keykind_name(t->key_kind));
        return k;
    }
    snprintf(label, sizeof label, "bench-%s", kh_keykind_name(kind));
    if (!bench_random(k->id, sizeof k->id)) {
        snprintf(k->why, sizeof k->why, "getrandom failed");
        return k;
    }
    rv = bench_gen_keypair(&t->p11, t->s, bench_is_keyhold(t), kind, label, k->id, sizeof k->id,
                           &k->pub, &k->priv);
    if (rv != CKR_OK) {
        snprintf(k->why, sizeof k->why, "C_GenerateKeyPair(%s): %s", kh_keykind_name(kind),
                 kh_rv_name(rv));
        return k;
    }
    rv = kh_p11_read_pubkey(&t->p11, t->s, k->pub, kind, &k->pubkey);
    if (rv != CKR_OK) {
        snprintf(k->why, sizeof k->why, "reading the public key: %s", kh_rv_name(rv));
        return k;
    }
    k->ok = true;
    return k;
}

/* The backend the module under test signs with: --backend, or --key's. */
static CK_ULONG bench_backend(const struct bench_target *t)
{
    return t->existing ? t->key_backend : opt.backend;
}

/* For the cells' detail: the backend of keyhold's key ("vault", "tpm",
 * "remote"), NULL when not asked for or not keyhold. */
static const char *bench_backend_label(const struct bench_target *t)
{
    return bench_is_keyhold(t) ? kh_p11_backend_name(bench_backend(t)) : NULL;
}

/* TPM and remote keys are also compared with vault keys of the same type. */
static bool bench_wants_ref(const struct bench_target *t)
{
    CK_ULONG b = bench_backend(t);
    return t == &bench_targets[0] && bench_is_keyhold(t) &&
           (b == CKV_KH_BACKEND_TPM || b == CKV_KH_BACKEND_REMOTE);
}

/* A vault key of kind in the target's token, the reference for bench_wants_ref. */
static struct bench_key *bench_ref_key(struct bench_target *t, enum kh_keykind kind)
{
    struct bench_key *k = &t->ref[kind];
    char label[64];
    CK_RV rv;

    if (k->tried)
        return k;
    k->tried = true;
    snprintf(label, sizeof label, "bench-vault-%s", kh_keykind_name(kind));
    if (!bench_random(k->id, sizeof k->id)) {
        snprintf(k->why, sizeof k->why, "getrandom failed");
        return k;
    }
    rv = bench_gen_keypair_on(&t->p11, t->s, CKV_KH_BACKEND_VAULT, kind, label, k->id,
                              sizeof k->id, &k->pub, &k->priv);
    if (rv == CKR_OK)
        rv = kh_p11_read_pubkey(&t->p11, t->s, k->pub, kind, &k->pubkey);
    if (rv != CKR_OK) {
        snprintf(k->why, sizeof k->why, "vault reference key (%s): %s", kh_keykind_name(kind),
                 kh_rv_name(rv));
        return k;
    }
    k->ok = true;
    return k;
}

/* --key: find the token and the key, log in. */
static bool bench_target_existing(struct bench_target *t, char *err, size_t errlen)
{
    struct kh_p11_uri u;
    struct kh_p11_token *toks = NULL, tok;
    size_t ntoks = 0;
    const char *token = opt.token;
    const char *pin = opt.pin;
    CK_ATTRIBUTE tmpl[3];
    CK_ULONG ntmpl = 0;
    CK_OBJECT_CLASS cls_storage, priv_cls = CKO_PRIVATE_KEY;
    CK_OBJECT_HANDLE *objs = NULL;
    CK_ULONG n = 0;
    struct kh_p11_key desc;
    bool ok = false;
    CK_RV rv;

    memset(&u, 0, sizeof u);
    memset(&desc, 0, sizeof desc);
    if (!strncmp(opt.key, "pkcs11:", 7)) {
        if (!kh_p11_uri_parse(&u, opt.key, err, errlen))
            return false;
        if (!token)
            token = u.token;
        if (!pin)
            pin = u.pin_value;
    } else {
        u.object = strdup(opt.key);
        if (!u.object) {
            snprintf(err, errlen, "out of memory");
            return false;
        }
    }
    if (!pin)
        pin = getenv("KEYHOLD_PIN");
    if (!pin) {
        snprintf(err, errlen, "no PIN for --key: --pin, pin-value in the URI or KEYHOLD_PIN");
        goto out;
    }
    rv = kh_p11_tokens(&t->p11, &toks, &ntoks);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "listing tokens: %s", kh_rv_name(rv));
        goto out;
    }
    int found = 0;
    for (size_t i = 0; i < ntoks; i++) {
        if (!(toks[i].info.flags & CKF_TOKEN_INITIALIZED))
            continue;
        if (token ? strcmp(toks[i].label, token) == 0 : kh_p11_uri_match_token(&u, &toks[i])) {
            tok = toks[i];
            found++;
        }
    }
    if (found != 1) {
        snprintf(err, errlen, found ? "several tokens match; name one with --token"
                                    : "no token matches --key/--token");
        goto out;
    }
    t->slot = tok.slot;
    snprintf(t->pin, sizeof t->pin, "%s", pin);
    rv = bench_open_user(&t->p11, t->slot, t->pin, &t->s);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "session/login on token %s: %s", tok.label, kh_rv_name(rv));
        goto out;
    }
    kh_p11_uri_template(&u, tmpl, &ntmpl, &cls_storage);
    if (!u.has_class)
        tmpl[ntmpl++] = (CK_ATTRIBUTE){ CKA_CLASS, &priv_cls, sizeof priv_cls };
    rv = kh_p11_find(&t->p11, t->s, tmpl, ntmpl, &objs, &n);
    if (rv != CKR_OK || n != 1) {
        snprintf(err, errlen, "--key matches %lu private keys (%s); it must match one",
                 (unsigned long)n, kh_rv_name(rv));
        goto out;
    }
    rv = kh_p11_describe(&t->p11, t->s, objs[0], &desc);
    if (rv != CKR_OK || desc.cls != CKO_PRIVATE_KEY || desc.kind == KH_KEY_UNKNOWN ||
        (desc.kind == KH_KEY_RSA && desc.rsa_bits != 2048)) {
        snprintf(err, errlen, "--key is not a private secp256k1, P-256, P-384, Ed25519 or "
                              "RSA-2048 key");
        goto out;
    }
    t->existing = true;
    t->key_kind = desc.kind;
    t->key_backend = desc.has_backend ? desc.backend : 0;
    struct bench_key *k = &t->keys[desc.kind];
    k->tried = true;
    k->priv = objs[0];
    rv = bench_read_pub(&t->p11, t->s, objs[0], desc.kind, &k->pubkey, &k->pub);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "cannot read the public key of --key: %s", kh_rv_name(rv));
        goto out;
    }
    k->ok = true;
    ok = true;
    bench_note("%s: --key is a %s key%s%s", t->env.name, kh_keykind_name(desc.kind),
               desc.has_backend ? " on backend " : "",
               desc.has_backend ? (kh_p11_backend_name(desc.backend) ? kh_p11_backend_name(desc.backend) : "?") : "");
out:
    kh_p11_key_clear(&desc);
    free(objs);
    free(toks);
    kh_p11_uri_clear(&u);
    return ok;
}

/* Load, initialise and log in a target (a temporary token, or --key's). */
static void bench_target_open(struct bench_target *t, bool existing)
{
    char err[512];
    CK_RV rv;

    if (!bench_env_setup(&t->env, !existing, err, sizeof err)) {
        snprintf(t->why, sizeof t->why, "%s", err);
        return;
    }
    rv = kh_p11_load(&t->p11, t->env.module, err, sizeof err);
    if (rv != CKR_OK) {
        snprintf(t->why, sizeof t->why, "%s", err);
        return;
    }
    rv = kh_p11_initialize(&t->p11);
    if (rv != CKR_OK) {
        snprintf(t->why, sizeof t->why, "C_Initialize: %s", kh_rv_name(rv));
        return;
    }
    if (existing) {
        if (!bench_target_existing(t, err, sizeof err)) {
            snprintf(t->why, sizeof t->why, "%s", err);
            return;
        }
        t->ready = true;
        return;
    }
    rv = bench_make_token(&t->p11, &t->slot, err, sizeof err);
    if (rv != CKR_OK) {
        snprintf(t->why, sizeof t->why, "%s", err);
        return;
    }
    snprintf(t->pin, sizeof t->pin, "%s", BENCH_USER_PIN);
    rv = bench_open_user(&t->p11, t->slot, t->pin, &t->s);
    if (rv != CKR_OK) {
        snprintf(t->why, sizeof t->why, "session/login: %s", kh_rv_name(rv));
        return;
    }
    t->ready = true;
}

/* After a restart: k's private key handle again, by CKA_ID (its public key is not used again). */
static void bench_key_refind(struct bench_target *t, struct bench_key *k)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE tmpl[] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_ID, k->id, sizeof k->id } };
    CK_OBJECT_HANDLE *objs = NULL;
    CK_ULONG n = 0;
    CK_RV rv;

    if (!k->ok)
        return;
    rv = kh_p11_find(&t->p11, t->s, tmpl, 2, &objs, &n);
    if (rv == CKR_OK && n == 1) {
        k->priv = objs[0];
    } else {
        k->ok = false;
        snprintf(k->why, sizeof k->why, "key not found after restarting the module");
    }
    free(objs);
}

/*
 * Starts the module afresh (C_Finalize, C_Initialize, session, login) and
 * finds the generated keys again by CKA_ID. For tpm2-pkcs11, which keeps
 * every key it has used loaded in the TPM and fails with
 * TPM_RC_OBJECT_MEMORY once three are (no resource manager): the bench
 * recycles it before each figure, so only that figure's key gets loaded.
 */
static bool bench_target_recycle(struct bench_target *t)
{
    CK_RV rv;

    if (!t->ready || t->existing)
        return t->ready;
    t->ready = false;
    rv = bench_restart(&t->p11, t->pin, &t->slot, &t->s);
    if (rv != CKR_OK) {
        snprintf(t->why, sizeof t->why, "restarting the module: %s", kh_rv_name(rv));
        return false;
    }
    t->ready = true;
    for (int kind = 0; kind <= KH_KEY_RSA; kind++) {
        bench_key_refind(t, &t->keys[kind]);
        bench_key_refind(t, &t->ref[kind]);
    }
    return true;
}

/* Whether t signs with a TPM another target uses too: keyhold's TPM
 * backend and tpm2-pkcs11 on --tpm2-tcti. */
static bool bench_shares_tpm(const struct bench_target *t)
{
    if (!opt.tpm2_tcti || bench_backend(&bench_targets[0]) != CKV_KH_BACKEND_TPM)
        return false;
    return t == &bench_targets[0] || t->env.kind == BENCH_ENV_TPM2_PKCS11;
}

/*
 * Before t's cells on a shared TPM: the other modules on it are finalized
 * ("parked") so that t finds the TPM's few transient slots free, as it would
 * alone (keyhold flushes its objects at C_Finalize; tpm2-pkcs11 keeps its
 * primary, wrapping key and keys loaded while initialized). A parked t is
 * started again (bench_target_recycle; untimed, its warm-up loads the key).
 * Returns whether t was restarted.
 */
static bool bench_take_tpm(struct bench_target *t)
{
    if (!bench_shares_tpm(t))
        return false;
    for (int i = 0; i < bench_ntargets; i++) {
        struct bench_target *u = &bench_targets[i];
        if (u == t || !bench_shares_tpm(u) || !u->ready || u->existing || u->parked)
            continue;
        u->p11.f->C_CloseSession(u->s);
        u->p11.f->C_Finalize(NULL);
        u->p11.initialized = false;
        u->parked = true;
    }
    if (!t->parked)
        return false;
    t->parked = false;
    bench_target_recycle(t);
    return true;
}

/* A failure of the module under test fails the run; one of a --vs module is
 * reported in its cell only (the bench tests keyhold, not the others). */
static void bench_fail(const struct bench_target *t)
{
    if (t == &bench_targets[0])
        bench_failures++;
}

static void bench_target_close(struct bench_target *t)
{
    for (int k = 0; k <= KH_KEY_RSA; k++) {
        kh_pubkey_clear(&t->keys[k].pubkey);
        kh_pubkey_clear(&t->ref[k].pubkey);
        /* Reference keys made in the user's own token go again. */
        if (t->existing && t->ready && t->ref[k].ok) {
            t->p11.f->C_DestroyObject(t->s, t->ref[k].priv);
            t->p11.f->C_DestroyObject(t->s, t->ref[k].pub);
        }
    }
    if (t->p11.f && t->ready && !t->parked)
        t->p11.f->C_CloseSession(t->s);
    kh_p11_close(&t->p11);
    kh_wipe(t->pin, sizeof t->pin);
    bench_env_cleanup(&t->env);
}

/* ---- floor ---------------------------------------------------------------- */

struct bench_floor_ctx {
    struct bench_floor *f;
    uint8_t data[BENCH_DATA_MAX];
    size_t data_len;
};

static bool bench_floor_op(void *ctx, uint8_t *out, size_t *outlen, uint64_t *untimed, char *err,
                           size_t errlen)
{
    (void)untimed;
    struct bench_floor_ctx *c = ctx;
    if (bench_floor_sign(c->f, out, outlen, c->data, c->data_len))
        return true;
    snprintf(err, errlen, "floor signature failed");
    return false;
}

/* The floor cells: [figure][variant][threads]. */
static struct bench_result *bench_floor_cell[BENCH_SIG_COUNT][4][BENCH_MAX_THREADS + 1];

/* The best floor figure of each signature and thread count, for the summary. */
static double bench_floor_best[BENCH_SIG_COUNT][BENCH_MAX_THREADS + 1];
static char bench_floor_best_name[BENCH_SIG_COUNT][64];

static void bench_do_floor(int round)
{
    static struct bench_run run;

    for (int s = 0; s < BENCH_SIG_COUNT; s++) {
        const struct bench_floor_variant *vars;
        size_t nv;

        if (!opt.algs[s])
            continue;
        nv = bench_floor_variants((enum bench_sig)s, &vars);
        for (size_t v = 0; v < nv; v++) {
            for (int n = 1; n <= opt.threads; n++) {
                struct bench_floor_ctx ctx[BENCH_MAX_THREADS];
                void *pctx[BENCH_MAX_THREADS];
                struct bench_result cell, *r = &cell;
                char err[256] = "";
                bool ok = true;

                memset(r, 0, sizeof *r);
                snprintf(r->detail, sizeof r->detail, "%s", vars[v].name);
                r->threads = n;
                memset(ctx, 0, sizeof ctx);
                for (int i = 0; i < n && ok; i++) {
                    ok = bench_floor_new(&ctx[i].f, &vars[v], err, sizeof err) &&
                         bench_sig_data((enum bench_sig)s, ctx[i].data);
                    ctx[i].data_len = bench_sig_get(s)->data_len;
                    pctx[i] = &ctx[i];
                }
                if (!ok) {
                    r->skipped = true;
                    snprintf(r->why, sizeof r->why, "%s", err[0] ? err : "setup failed");
                } else {
                    bench_note("floor: %s (%s), %d thread%s", bench_sig_get(s)->title,
                               vars[v].name, n, n > 1 ? "s" : "");
                    ok = bench_run_threads(&run, r, bench_floor_op, pctx, n, opt.seconds);
                    r->verified = ok;
                    for (int i = 0; i < n && ok; i++) {
                        r->checked++;
                        if (!run.t[i].have_first ||
                            !bench_verify((enum bench_sig)s, bench_floor_pub(ctx[i].f),
                                          ctx[i].data, ctx[i].data_len, run.t[i].first,
                                          run.t[i].first_len, err, sizeof err)) {
                            r->verified = false;
                            snprintf(r->why, sizeof r->why, "floor signature: %s", err);
                        }
                    }
                    if (!r->verified)
                        bench_failures++;
                    else if (r->value > bench_floor_best[s][n]) {
                        bench_floor_best[s][n] = r->value;
                        if (n == 1)
                            snprintf(bench_floor_best_name[s], sizeof bench_floor_best_name[s],
                                     "%s", vars[v].name);
                    }
                }
                for (int i = 0; i < n; i++)
                    bench_floor_free(ctx[i].f);
                if (round == 0) {
                    struct bench_result *keep = bench_result_new("floor", "floor",
                                                                 bench_sig_get(s)->name);
                    memcpy(keep->detail, r->detail, sizeof keep->detail);
                    keep->threads = n;
                    keep->skipped = true;
                    bench_floor_cell[s][v][n] = keep;
                }
                bench_result_merge(bench_floor_cell[s][v][n], r);
            }
        }
    }
}

/* ---- sign ------------------------------------------------------------------- */

struct bench_sign_ctx {
    CK_FUNCTION_LIST *f;
    CK_SESSION_HANDLE s;
    CK_MECHANISM mech;
    CK_OBJECT_HANDLE key;
    uint8_t data[BENCH_DATA_MAX];
    size_t data_len;
    pthread_mutex_t *lock;       /* shared session: the application's lock */
};

static bool bench_sign_op(void *ctx, uint8_t *out, size_t *outlen, uint64_t *untimed, char *err,
                          size_t errlen)
{
    (void)untimed;
    struct bench_sign_ctx *c = ctx;
    CK_ULONG len = (CK_ULONG)*outlen;
    CK_RV rv;

    if (c->lock)
        pthread_mutex_lock(c->lock);
    rv = c->f->C_SignInit(c->s, &c->mech, c->key);
    if (rv == CKR_OK)
        rv = c->f->C_Sign(c->s, c->data, (CK_ULONG)c->data_len, out, &len);
    else
        len = 0;
    if (c->lock)
        pthread_mutex_unlock(c->lock);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "%s: %s", len ? "C_Sign" : "C_SignInit", kh_rv_name(rv));
        return false;
    }
    *outlen = len;
    return true;
}

/* Does the token of t offer mech for signing? */
static bool bench_mech_ok(struct bench_target *t, CK_MECHANISM_TYPE mech, char *why, size_t whylen)
{
    CK_MECHANISM_INFO info;
    CK_RV rv = t->p11.f->C_GetMechanismInfo(t->slot, mech, &info);
    if (rv != CKR_OK) {
        snprintf(why, whylen, "%s not offered (%s)", kh_mech_name(mech), kh_rv_name(rv));
        return false;
    }
    if (!(info.flags & CKF_SIGN)) {
        snprintf(why, whylen, "%s cannot sign here", kh_mech_name(mech));
        return false;
    }
    return true;
}

/* Sign results of (target, sig, threads, mode) for the summary. */
static struct bench_result *bench_sign_cell[BENCH_MAX_TARGETS][BENCH_SIG_COUNT][BENCH_MAX_THREADS + 1][2];

/* The stored cell of (target, figure, threads, mode), made on first use. */
static struct bench_result *bench_sign_slot(struct bench_target *t, int ti, int s, int n, int mode)
{
    struct bench_result **slot = &bench_sign_cell[ti][s][n][mode];
    if (!*slot) {
        const struct bench_sig_info *info = bench_sig_get(s);
        *slot = bench_result_new("sign", t->env.name, info->name);
        (*slot)->threads = n;
        (*slot)->shared = mode == 1;
        (*slot)->skipped = true;
        const char *b = bench_backend_label(t);
        snprintf((*slot)->detail, sizeof (*slot)->detail, "%s %s%s%s", kh_mech_name(info->mech),
                 mode ? "shared session" : "session per thread", b ? ", key on backend " : "",
                 b ? b : "");
    }
    return *slot;
}

/* One sign cell: n threads signing with key k for figure s. Out: r. */
static void bench_sign_measure(struct bench_result *r, struct bench_target *t, int s,
                               struct bench_key *k, int n, int mode)
{
    static struct bench_run run;
    const struct bench_sig_info *info = bench_sig_get(s);
    struct bench_sign_ctx ctx[BENCH_MAX_THREADS];
    void *pctx[BENCH_MAX_THREADS];
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    CK_SESSION_HANDLE shared = CK_INVALID_HANDLE;
    int opened = 0;
    CK_RV rv = CKR_OK;

    memset(ctx, 0, sizeof ctx);
    if (mode == 1)
        rv = t->p11.f->C_OpenSession(t->slot, CKF_SERIAL_SESSION, NULL, NULL, &shared);
    for (int i = 0; i < n && rv == CKR_OK; i++) {
        ctx[i].f = t->p11.f;
        ctx[i].mech.mechanism = info->mech;
        ctx[i].key = k->priv;
        ctx[i].data_len = info->data_len;
        ctx[i].lock = mode == 1 ? &lock : NULL;
        if (!bench_sig_data((enum bench_sig)s, ctx[i].data))
            rv = CKR_FUNCTION_FAILED;
        if (mode == 1) {
            ctx[i].s = shared;
        } else {
            rv = t->p11.f->C_OpenSession(t->slot, CKF_SERIAL_SESSION, NULL, NULL, &ctx[i].s);
            if (rv == CKR_OK)
                opened++;
        }
        pctx[i] = &ctx[i];
    }
    if (rv != CKR_OK) {
        snprintf(r->why, sizeof r->why, "C_OpenSession: %s", kh_rv_name(rv));
        r->checked = 1;
        bench_fail(t);
    } else {
        bench_note("sign: %s %s, %d thread%s, %s", t->env.name, info->title, n, n > 1 ? "s" : "",
                   mode ? "shared session" : "own sessions");
        bool ok = bench_run_threads(&run, r, bench_sign_op, pctx, n, opt.seconds);
        r->verified = true;
        for (int i = 0; i < n; i++) {
            char err[256];
            if (!run.t[i].have_first)
                continue;
            r->checked++;
            if (!bench_verify((enum bench_sig)s, &k->pubkey, ctx[i].data, ctx[i].data_len,
                              run.t[i].first, run.t[i].first_len, err, sizeof err)) {
                r->verified = false;
                snprintf(r->why, sizeof r->why, "%s", err);
            }
        }
        if (!ok || !r->verified || r->checked == 0) {
            r->verified = false;
            r->checked += r->checked == 0;
            bench_fail(t);
            bench_err("sign: %s %s, %d threads: %s", t->env.name, info->title, n,
                      r->why[0] ? r->why : "no signature");
        }
    }
    for (int i = 0; i < opened; i++)
        t->p11.f->C_CloseSession(ctx[i].s);
    if (shared != CK_INVALID_HANDLE)
        t->p11.f->C_CloseSession(shared);
}

/* Vault reference cells of the module under test: [figure][threads]. */
static struct bench_result *bench_ref_cell[BENCH_SIG_COUNT][BENCH_MAX_THREADS + 1];

static void bench_do_sign_ref(struct bench_target *t, int s)
{
    const struct bench_sig_info *info = bench_sig_get(s);
    struct bench_key *k = bench_ref_key(t, info->kind);

    for (int n = 1; n <= opt.threads; n++) {
        struct bench_result cell, **slot = &bench_ref_cell[s][n];
        char name[80];
        if (!*slot) {
            snprintf(name, sizeof name, "%.60s-vault", t->env.name);
            *slot = bench_result_new("sign", name, info->name);
            (*slot)->threads = n;
            (*slot)->skipped = true;
            snprintf((*slot)->detail, sizeof (*slot)->detail, "%s session per thread, vault key",
                     kh_mech_name(info->mech));
        }
        memset(&cell, 0, sizeof cell);
        if (!k->ok) {
            cell.skipped = true;
            snprintf(cell.why, sizeof cell.why, "%s", k->why);
        } else {
            bench_sign_measure(&cell, t, s, k, n, 0);
        }
        bench_result_merge(*slot, &cell);
        if (!k->ok)
            break;
    }
}

static void bench_do_sign_target(struct bench_target *t, int ti, int round)
{
    for (int s = 0; s < BENCH_SIG_COUNT; s++) {
        const struct bench_sig_info *info = bench_sig_get(s);
        char why[512] = "";
        struct bench_key *k = NULL;

        if (!opt.algs[s])
            continue;
        if (t->existing && t->key_kind != info->kind)
            continue;
        if (!bench_take_tpm(t) && t->env.kind == BENCH_ENV_TPM2_PKCS11)
            bench_target_recycle(t);
        if (!t->ready)
            snprintf(why, sizeof why, "%s", t->why);
        else if (!bench_mech_ok(t, info->mech, why, sizeof why))
            ;
        else if (!(k = bench_target_key(t, info->kind))->ok)
            snprintf(why, sizeof why, "%s", k->why);
        if (why[0]) {
            /* One line per figure says why it is not measured. */
            struct bench_result *r = bench_sign_slot(t, ti, s, 1, opt.mode_own ? 0 : 1);
            snprintf(r->why, sizeof r->why, "%s", why);
            if (round == 0) {
                bench_note("sign: %s %s: skipped: %s", t->env.name, info->title, why);
                /* A backend asked for by name that cannot make the key fails the run. */
                if (opt.backend && k && !k->ok && ti == 0) {
                    bench_err("sign: %s %s: --backend %s: %s", t->env.name, info->title,
                              opt.backend_name, why);
                    bench_fail(t);
                }
            }
            continue;
        }
        for (int mode = 0; mode < 2; mode++) {
            if ((mode == 0 && !opt.mode_own) || (mode == 1 && !opt.mode_shared))
                continue;
            for (int n = mode == 1 ? 2 : 1; n <= opt.threads; n++) {
                struct bench_result cell;
                memset(&cell, 0, sizeof cell);
                bench_sign_measure(&cell, t, s, k, n, mode);
                bench_result_merge(bench_sign_slot(t, ti, s, n, mode), &cell);
            }
        }
        if (opt.mode_own && bench_wants_ref(t))
            bench_do_sign_ref(t, s);
    }
}

/* ---- keygen ----------------------------------------------------------------- */

struct bench_keygen_ctx {
    struct bench_target *t;
    enum kh_keykind kind;
    unsigned long n;
    CK_OBJECT_HANDLE *made;      /* pairs, for --key mode cleanup */
    size_t nmade, cap;
};

static bool bench_keygen_op(void *ctx, uint8_t *out, size_t *outlen, uint64_t *untimed, char *err,
                            size_t errlen)
{
    struct bench_keygen_ctx *c = ctx;
    uint8_t id[BENCH_ID_LEN];
    char label[64];
    CK_OBJECT_HANDLE pub, priv;
    CK_RV rv;

    snprintf(label, sizeof label, "bench-keygen-%lu", c->n++);
    if (!bench_random(id, sizeof id)) {
        snprintf(err, errlen, "getrandom failed");
        return false;
    }
    rv = bench_gen_keypair(&c->t->p11, c->t->s, bench_is_keyhold(c->t), c->kind, label, id,
                           sizeof id, &pub, &priv);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "C_GenerateKeyPair: %s", kh_rv_name(rv));
        return false;
    }
    if (c->t->env.kind == BENCH_ENV_TPM2_PKCS11) {
        /* tpm2-pkcs11 keeps every key it makes loaded in the TPM (three objects without a
         * resource manager): restart it, untimed, so that the next one fits. */
        uint64_t d0 = bench_now_ns();
        bool ok = bench_target_recycle(c->t);
        *untimed = bench_now_ns() - d0;
        if (!ok) {
            snprintf(err, errlen, "%s", c->t->why);
            return false;
        }
        *outlen = 0;
        return true;
    }
    if (c->nmade + 2 > c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 256;
        CK_OBJECT_HANDLE *m = realloc(c->made, cap * sizeof *m);
        if (m) {
            c->made = m;
            c->cap = cap;
        }
    }
    if (c->nmade + 2 <= c->cap) {
        c->made[c->nmade++] = pub;
        c->made[c->nmade++] = priv;
    }
    *outlen = 0;
    (void)out;
    return true;
}

static struct bench_result *bench_keygen_cell[BENCH_MAX_TARGETS][KH_KEY_RSA + 1];

static void bench_do_keygen_target(struct bench_target *t, int ti, int round)
{
    static struct bench_run run;

    for (int kind = KH_KEY_SECP256K1; kind <= KH_KEY_RSA; kind++) {
        struct bench_keygen_ctx ctx;
        void *pctx[1] = { &ctx };
        struct bench_result cell, *r = &cell;
        char why[512] = "";
        CK_MECHANISM_TYPE gen = kind == KH_KEY_RSA ? CKM_RSA_PKCS_KEY_PAIR_GEN
                              : kind == KH_KEY_ED25519 ? CKM_EC_EDWARDS_KEY_PAIR_GEN
                              : CKM_EC_KEY_PAIR_GEN;
        CK_MECHANISM_INFO mi;
        CK_RV rv;

        if (!opt.keygen_kinds[kind])
            continue;
        bool restarted = bench_take_tpm(t);
        if (!bench_keygen_cell[ti][kind]) {
            struct bench_result *keep = bench_result_new("keygen", t->env.name,
                                                         kh_keykind_name((enum kh_keykind)kind));
            keep->threads = 1;
            keep->skipped = true;
            const char *b = bench_backend_label(t);
            snprintf(keep->detail, sizeof keep->detail, "%s, token key pair%s%s", kh_mech_name(gen),
                     b ? " on backend " : "", b ? b : "");
            bench_keygen_cell[ti][kind] = keep;
        }
        memset(r, 0, sizeof *r);
        if (!t->ready)
            snprintf(why, sizeof why, "%s", t->why);
        else if ((rv = t->p11.f->C_GetMechanismInfo(t->slot, gen, &mi)) != CKR_OK)
            snprintf(why, sizeof why, "%s not offered (%s)", kh_mech_name(gen), kh_rv_name(rv));
        else if (bench_keygen_cell[ti][kind]->skipped && bench_keygen_cell[ti][kind]->why[0])
            snprintf(why, sizeof why, "%s", bench_keygen_cell[ti][kind]->why);
        if (why[0]) {
            r->skipped = true;
            snprintf(r->why, sizeof r->why, "%s", why);
            if (round == 0)
                bench_note("keygen: %s %s: skipped: %s", t->env.name,
                           kh_keykind_name((enum kh_keykind)kind), why);
            bench_result_merge(bench_keygen_cell[ti][kind], r);
            continue;
        }
        memset(&ctx, 0, sizeof ctx);
        ctx.t = t;
        ctx.kind = (enum kh_keykind)kind;
        if (!restarted && t->env.kind == BENCH_ENV_TPM2_PKCS11)
            bench_target_recycle(t);
        bench_note("keygen: %s %s", t->env.name, kh_keykind_name((enum kh_keykind)kind));
        if (!bench_run_threads(&run, r, bench_keygen_op, pctx, 1, opt.seconds)) {
            /* A module that cannot make this key type (tpm2-pkcs11: secp256k1) is skipped. */
            if (strstr(r->why, "CKR_CURVE_NOT_SUPPORTED") || strstr(r->why, "CKR_MECHANISM") ||
                strstr(r->why, "CKR_DOMAIN_PARAMS_INVALID") ||
                strstr(r->why, "CKR_ATTRIBUTE_VALUE_INVALID") ||
                strstr(r->why, "CKR_TEMPLATE_INCONSISTENT")) {
                r->skipped = true;
            } else {
                bench_fail(t);
                r->checked = 1;
                bench_err("keygen: %s %s: %s", t->env.name,
                          kh_keykind_name((enum kh_keykind)kind), r->why);
            }
        }
        if (t->existing) {
            for (size_t i = 0; i < ctx.nmade; i++)
                t->p11.f->C_DestroyObject(t->s, ctx.made[i]);
        }
        free(ctx.made);
        bench_result_merge(bench_keygen_cell[ti][kind], r);
    }
}

/* ---- scale ------------------------------------------------------------------ */

enum {
    SCALE_DLOPEN,        /* dlopen + C_GetFunctionList */
    SCALE_INIT,          /* C_Initialize */
    SCALE_SLOT,          /* C_GetSlotList + C_GetTokenInfo until the label matches */
    SCALE_OPEN,          /* C_OpenSession */
    SCALE_LOGIN,         /* C_Login (user) */
    SCALE_FIND_LABEL,    /* first find in the process: a filler's private key by CKA_LABEL */
    SCALE_FIND_ID,       /* a filler's private key by CKA_ID */
    SCALE_FIND_TARGET,   /* the target's private key by CKA_LABEL (warm) */
    SCALE_SIGN,          /* first signature: C_SignInit + C_Sign, CKM_ECDSA, P-256 */
    SCALE_NSTEPS
};

static const char *const scale_step_names[SCALE_NSTEPS] = {
    "dlopen", "C_Initialize", "find slot", "C_OpenSession", "C_Login", "find CKA_LABEL",
    "find CKA_ID", "find CKA_LABEL (2nd)", "first C_Sign",
};
static const char *const scale_step_keys[SCALE_NSTEPS] = {
    "dlopen", "initialize", "find_slot", "open_session", "login", "find_label", "find_id",
    "find_label_2nd", "first_sign",
};

#define SCALE_TARGET_LABEL "target"

/* Find exactly one private key where type == value. */
static CK_RV scale_find_one(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_ATTRIBUTE_TYPE type,
                            const void *value, size_t len, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[] = { { CKA_CLASS, &cls, sizeof cls }, { type, (void *)value, len } };
    CK_ULONG n = 0;
    CK_RV rv = p->f->C_FindObjectsInit(s, t, 2);

    if (rv != CKR_OK)
        return rv;
    rv = p->f->C_FindObjects(s, out, 1, &n);
    CK_RV rv2 = p->f->C_FindObjectsFinal(s);
    if (rv == CKR_OK)
        rv = rv2;
    if (rv == CKR_OK && n != 1)
        rv = CKR_OBJECT_HANDLE_INVALID;
    return rv;
}

/* --scale-measure: one fresh process, one line "RESULT <us>..." on stdout. */
static int scale_measure(void)
{
    double t[SCALE_NSTEPS], t0;
    struct kh_p11 p;
    struct kh_p11_token tok;
    struct kh_pubkey pub;
    uint8_t id[BENCH_ID_LEN], digest[32], sig[BENCH_SIG_MAX];
    size_t idlen = 0;
    CK_ULONG siglen = sizeof sig;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE h, target;
    CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
    char err[512];
    int status = BENCH_EXIT_FAIL;
    CK_RV rv;

    memset(&pub, 0, sizeof pub);
    if (!opt.pick_label || !opt.pick_id ||
        !kh_hex_decode(id, &idlen, sizeof id, opt.pick_id, strlen(opt.pick_id)) ||
        !bench_random(digest, sizeof digest)) {
        bench_err("--scale-measure: bad arguments");
        return BENCH_EXIT_USAGE;
    }
    t0 = bench_now_us();
    rv = kh_p11_load(&p, opt.module, err, sizeof err);
    t[SCALE_DLOPEN] = bench_now_us() - t0;
    if (rv != CKR_OK) {
        bench_err("%s", err);
        return BENCH_EXIT_FAIL;
    }
    t0 = bench_now_us();
    rv = kh_p11_initialize(&p);
    t[SCALE_INIT] = bench_now_us() - t0;
    if (rv != CKR_OK) {
        bench_err("C_Initialize: %s", kh_rv_name(rv));
        goto out;
    }
    t0 = bench_now_us();
    rv = kh_p11_find_token(&p, BENCH_TOKEN_LABEL, &tok);
    t[SCALE_SLOT] = bench_now_us() - t0;
    if (rv != CKR_OK) {
        bench_err("token %s: %s", BENCH_TOKEN_LABEL, kh_rv_name(rv));
        goto out;
    }
    t0 = bench_now_us();
    rv = p.f->C_OpenSession(tok.slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    t[SCALE_OPEN] = bench_now_us() - t0;
    if (rv != CKR_OK) {
        bench_err("C_OpenSession: %s", kh_rv_name(rv));
        goto out;
    }
    t0 = bench_now_us();
    rv = kh_p11_login(&p, s, CKU_USER, BENCH_USER_PIN);
    t[SCALE_LOGIN] = bench_now_us() - t0;
    if (rv != CKR_OK) {
        bench_err("C_Login: %s", kh_rv_name(rv));
        goto out;
    }
    t0 = bench_now_us();
    rv = scale_find_one(&p, s, CKA_LABEL, opt.pick_label, strlen(opt.pick_label), &h);
    t[SCALE_FIND_LABEL] = bench_now_us() - t0;
    if (rv != CKR_OK) {
        bench_err("find by CKA_LABEL %s: %s", opt.pick_label, kh_rv_name(rv));
        goto out;
    }
    t0 = bench_now_us();
    rv = scale_find_one(&p, s, CKA_ID, id, idlen, &h);
    t[SCALE_FIND_ID] = bench_now_us() - t0;
    if (rv != CKR_OK) {
        bench_err("find by CKA_ID: %s", kh_rv_name(rv));
        goto out;
    }
    t0 = bench_now_us();
    rv = scale_find_one(&p, s, CKA_LABEL, SCALE_TARGET_LABEL, strlen(SCALE_TARGET_LABEL), &target);
    t[SCALE_FIND_TARGET] = bench_now_us() - t0;
    if (rv != CKR_OK) {
        bench_err("find the target: %s", kh_rv_name(rv));
        goto out;
    }
    t0 = bench_now_us();
    rv = p.f->C_SignInit(s, &mech, target);
    if (rv == CKR_OK)
        rv = p.f->C_Sign(s, digest, sizeof digest, sig, &siglen);
    t[SCALE_SIGN] = bench_now_us() - t0;
    if (rv != CKR_OK) {
        bench_err("first signature: %s", kh_rv_name(rv));
        goto out;
    }
    /* Untimed: the signature must verify outside the module. */
    rv = bench_read_pub(&p, s, target, KH_KEY_P256, &pub, NULL);
    if (rv != CKR_OK) {
        bench_err("reading the target's public key: %s", kh_rv_name(rv));
        goto out;
    }
    if (!bench_verify(BENCH_SIG_P256_ECDSA, &pub, digest, sizeof digest, sig, siglen, err,
                      sizeof err)) {
        bench_err("first signature: %s", err);
        goto out;
    }
    printf("RESULT");
    for (int i = 0; i < SCALE_NSTEPS; i++)
        printf(" %.1f", t[i]);
    printf("\n");
    fflush(stdout);
    status = BENCH_EXIT_OK;
out:
    kh_pubkey_clear(&pub);
    kh_p11_close(&p);
    return status;
}

/*
 * Filler through PKCS#11 (any module but keyhold, which is filled in bulk
 * through its store): n P-256 key pairs labelled k0000001.., random CKA_ID.
 * Imports one key pair over and over with C_CreateObject (fast, and the
 * module still writes every object), or generates each pair where the
 * module does not import. Out: the pair in the middle, for the lookups.
 */
static CK_RV scale_fill_p11(struct kh_p11 *p, CK_SESSION_HANDLE *sp, size_t n, bool recycle,
                            char *pick_label, size_t pick_len, uint8_t pick_id[BENCH_ID_LEN])
{
    CK_SESSION_HANDLE s = *sp;
    uint8_t scalar[32], raw[65], point[67];
    const uint8_t *params;
    size_t plen, pick_at = n / 2;
    bool create = true;
    double last_note = bench_now_us();
    CK_OBJECT_CLASS pc = CKO_PUBLIC_KEY, vc = CKO_PRIVATE_KEY;
    CK_KEY_TYPE kt = CKK_EC;
    CK_BBOOL yes = CK_TRUE;
    CK_RV rv = CKR_OK;

    if (!bench_p256_keypair(scalar, raw) || !kh_keykind_ec_params(KH_KEY_P256, &params, &plen))
        return CKR_FUNCTION_FAILED;
    point[0] = 0x04;     /* CKA_EC_POINT: DER OCTET STRING */
    point[1] = 65;
    memcpy(point + 2, raw, 65);
    for (size_t i = 0; i < n && rv == CKR_OK; i++) {
        char label[32];
        uint8_t id[BENCH_ID_LEN];
        CK_OBJECT_HANDLE hpub, hpriv;

        snprintf(label, sizeof label, "k%07zu", i + 1);
        if (!bench_random(id, sizeof id)) {
            rv = CKR_FUNCTION_FAILED;
            break;
        }
        if (create) {
            CK_ATTRIBUTE pt[] = {
                { CKA_CLASS, &pc, sizeof pc }, { CKA_KEY_TYPE, &kt, sizeof kt },
                { CKA_TOKEN, &yes, sizeof yes }, { CKA_VERIFY, &yes, sizeof yes },
                { CKA_EC_PARAMS, (void *)params, plen }, { CKA_EC_POINT, point, sizeof point },
                { CKA_LABEL, label, strlen(label) }, { CKA_ID, id, sizeof id },
            };
            CK_ATTRIBUTE vt[] = {
                { CKA_CLASS, &vc, sizeof vc }, { CKA_KEY_TYPE, &kt, sizeof kt },
                { CKA_TOKEN, &yes, sizeof yes }, { CKA_PRIVATE, &yes, sizeof yes },
                { CKA_SENSITIVE, &yes, sizeof yes }, { CKA_SIGN, &yes, sizeof yes },
                { CKA_EC_PARAMS, (void *)params, plen }, { CKA_VALUE, scalar, sizeof scalar },
                { CKA_LABEL, label, strlen(label) }, { CKA_ID, id, sizeof id },
            };
            rv = p->f->C_CreateObject(s, pt, sizeof pt / sizeof pt[0], &hpub);
            if (rv == CKR_OK)
                rv = p->f->C_CreateObject(s, vt, sizeof vt / sizeof vt[0], &hpriv);
            if (rv != CKR_OK && i == 0) {
                bench_note("scale: C_CreateObject: %s; generating the filler keys instead",
                           kh_rv_name(rv));
                create = false;
                rv = CKR_OK;
            }
        }
        if (!create && recycle) {
            /* tpm2-pkcs11: the keys it made are still loaded; start it afresh. */
            rv = bench_restart(p, BENCH_USER_PIN, NULL, &s);
            *sp = s;
        }
        if (!create && rv == CKR_OK)
            rv = bench_gen_keypair(p, s, false, KH_KEY_P256, label, id, sizeof id, &hpub, &hpriv);
        if (rv != CKR_OK) {
            bench_err("scale: filler key %zu: %s", i + 1, kh_rv_name(rv));
            break;
        }
        if (i == pick_at) {
            snprintf(pick_label, pick_len, "%s", label);
            memcpy(pick_id, id, BENCH_ID_LEN);
        }
        if (bench_now_us() - last_note > 10e6) {
            bench_note("scale: %zu of %zu filler keys", i + 1, n);
            last_note = bench_now_us();
        }
    }
    kh_wipe(scalar, sizeof scalar);
    return rv;
}

/*
 * --scale-setup: a fresh process makes the token and the P-256 key pair
 * labelled "target" through the module; with --fill N it also adds N filler
 * key pairs through PKCS#11 and prints "PICK <label> <id hex>".
 */
static int scale_setup(void)
{
    struct kh_p11 p;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE pub, priv;
    uint8_t id[BENCH_ID_LEN];
    char err[512], pick_label[32] = "", pick_hex[2 * BENCH_ID_LEN + 1];
    uint8_t pick_id[BENCH_ID_LEN];
    int status = BENCH_EXIT_FAIL;
    bool keyhold;
    CK_RV rv;

    if (kh_p11_open(&p, opt.module, err, sizeof err) != CKR_OK) {
        bench_err("%s", err);
        return BENCH_EXIT_FAIL;
    }
    keyhold = strstr(p.path, "keyhold") != NULL;
    rv = bench_make_token(&p, &slot, err, sizeof err);
    if (rv != CKR_OK) {
        bench_err("%s", err);
        goto out;
    }
    rv = bench_open_user(&p, slot, BENCH_USER_PIN, &s);
    if (rv == CKR_OK && !bench_random(id, sizeof id))
        rv = CKR_FUNCTION_FAILED;
    if (rv == CKR_OK)
        rv = bench_gen_keypair(&p, s, keyhold, KH_KEY_P256, SCALE_TARGET_LABEL, id, sizeof id,
                               &pub, &priv);
    if (rv != CKR_OK) {
        bench_err("scale setup: %s", kh_rv_name(rv));
        goto out;
    }
    if (opt.fill) {
        struct bench_env kind;
        bench_env_resolve(&kind, p.path);
        rv = scale_fill_p11(&p, &s, opt.fill, kind.kind == BENCH_ENV_TPM2_PKCS11, pick_label,
                            sizeof pick_label, pick_id);
        if (rv != CKR_OK)
            goto out;
        kh_hex_encode(pick_hex, sizeof pick_hex, pick_id, sizeof pick_id);
        printf("PICK %s %s\n", pick_label, pick_hex);
        fflush(stdout);
    }
    status = BENCH_EXIT_OK;
out:
    kh_p11_close(&p);
    return status;
}

/*
 * Runs argv with stdout on a pipe. Lines starting with prefix are returned
 * (the last one, in line); others are passed to stderr. Returns -1 when the
 * child fails, 0 when it exits 0 without such a line, 1 with one.
 */
static int bench_child(char *const argv[], const char *prefix, char *line, size_t linelen)
{
    int fds[2], st;
    pid_t pid;
    FILE *in;
    char buf[1024];
    bool got = false;

    if (pipe(fds) != 0) {
        bench_err("pipe: %s", strerror(errno));
        return -1;
    }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        bench_err("fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        if (dup2(fds[1], STDOUT_FILENO) < 0)
            _exit(127);
        close(fds[1]);
        execv(argv[0], argv);
        fprintf(stderr, "%s: exec %s: %s\n", bench_prog, argv[0], strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    in = fdopen(fds[0], "r");
    if (in) {
        while (fgets(buf, sizeof buf, in)) {
            if (!strncmp(buf, prefix, strlen(prefix))) {
                snprintf(line, linelen, "%s", buf + strlen(prefix));
                got = true;
            } else {
                fputs(buf, stderr);
            }
        }
        fclose(in);
    } else {
        close(fds[0]);
    }
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        bench_err("%s %s failed (status %d)", argv[0], argv[1], st);
        return -1;
    }
    return got ? 1 : 0;
}

/* The directory of this executable (for re-executing it and its fill helper). */
static bool bench_self(char *exe, size_t exelen, char *dir, size_t dirlen)
{
    ssize_t n = readlink("/proc/self/exe", exe, exelen - 1);
    char *slash;

    if (n <= 0)
        return false;
    exe[n] = '\0';
    snprintf(dir, dirlen, "%s", exe);
    slash = strrchr(dir, '/');
    if (!slash)
        return false;
    *slash = '\0';
    return true;
}

static int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static struct bench_result *bench_scale_cell[BENCH_MAX_TARGETS][BENCH_MAX_SIZES][SCALE_NSTEPS];
static size_t bench_scale_sizes[BENCH_MAX_TARGETS][BENCH_MAX_SIZES];
static int bench_scale_nsizes[BENCH_MAX_TARGETS];

/* One store size of one module: build it, then measure in fresh processes. */
static bool bench_scale_one(struct bench_target *t, int ti, int si, size_t nkeys)
{
    struct bench_env e;
    char exe[4096], dir[4096], helper[4200], line[1024], err[512], fill[32], pick_label[64] = "",
         pick_id[64] = "";
    double samples[SCALE_NSTEPS][BENCH_MAX_RUNS];
    bool ok = false;
    double t0;

    if (!bench_self(exe, sizeof exe, dir, sizeof dir)) {
        bench_err("cannot find this executable");
        return false;
    }
    memset(&e, 0, sizeof e);
    e.kind = t->env.kind;
    snprintf(e.name, sizeof e.name, "%s", t->env.name);
    snprintf(e.module, sizeof e.module, "%s", t->env.module);
    memcpy(e.tcti, t->env.tcti, sizeof e.tcti);
    if (!bench_env_setup(&e, true, err, sizeof err)) {
        bench_err("scale %s: %s", e.name, err);
        goto out;
    }
    bench_note("scale: %s, %zu keys: building the store", e.name, nkeys);
    t0 = bench_now_us();
    snprintf(fill, sizeof fill, "%zu", bench_is_keyhold(t) ? (size_t)0 : nkeys - 1);
    {
        char *argv[16];
        int a = 0;
        argv[a++] = exe;
        argv[a++] = "--scale-setup";
        argv[a++] = "--module";
        argv[a++] = e.module;
        argv[a++] = "--fill";
        argv[a++] = fill;
        if (opt.backend_name) {
            argv[a++] = "--backend";
            argv[a++] = (char *)opt.backend_name;
        }
        if (opt.quiet)
            argv[a++] = "--quiet";
        argv[a] = NULL;
        int got = bench_child(argv, "PICK ", line, sizeof line);
        if (got < 0 || (got == 0 && !bench_is_keyhold(t))) {
            bench_err("scale %s: the setup process failed", e.name);
            goto out;
        }
    }
    if (bench_is_keyhold(t)) {
        char store[4200], n[32];
        snprintf(helper, sizeof helper, "%s/keyhold-bench-fill", dir);
        if (access(helper, X_OK) != 0)
            snprintf(helper, sizeof helper, "%s", KH_BENCH_FILL_INSTALLED);
        snprintf(store, sizeof store, "%s/store", e.dir);
        snprintf(n, sizeof n, "%zu", nkeys - 1);
        char *argv[] = { helper, store, BENCH_TOKEN_LABEL, SCALE_TARGET_LABEL, n, NULL };
        if (bench_child(argv, "PICK ", line, sizeof line) != 1) {
            bench_err("scale %s: the bulk fill failed", e.name);
            goto out;
        }
    }
    if (sscanf(line, "%63s %63s", pick_label, pick_id) != 2) {
        bench_err("scale %s: no filler key to look up", e.name);
        goto out;
    }
    bench_note("scale: %s, %zu keys: store built in %.1f s", e.name, nkeys,
               (bench_now_us() - t0) / 1e6);
    for (int r = 0; r < opt.runs; r++) {
        char *argv[] = { exe, "--scale-measure", "--module", e.module, "--pick-label", pick_label,
                         "--pick-id", pick_id, NULL };
        char *p = line, *end;
        if (bench_child(argv, "RESULT", line, sizeof line) != 1) {
            bench_err("scale %s: the measuring process failed", e.name);
            goto out;
        }
        for (int i = 0; i < SCALE_NSTEPS; i++) {
            samples[i][r] = strtod(p, &end);
            if (end == p) {
                bench_err("scale %s: bad RESULT line", e.name);
                goto out;
            }
            p = end;
        }
    }
    for (int i = 0; i < SCALE_NSTEPS; i++) {
        struct bench_result *r = bench_result_new("scale", e.name, scale_step_keys[i]);
        qsort(samples[i], (size_t)opt.runs, sizeof(double), bench_cmp_double);
        r->value = opt.runs % 2 ? samples[i][opt.runs / 2]
                                : (samples[i][opt.runs / 2 - 1] + samples[i][opt.runs / 2]) / 2;
        r->nkeys = nkeys;
        snprintf(r->detail, sizeof r->detail, "median of %d fresh processes", opt.runs);
        if (i == SCALE_SIGN) {
            /* Each measuring process verified its signature (it fails otherwise). */
            r->checked = opt.runs;
            r->verified = true;
        }
        bench_scale_cell[ti][si][i] = r;
    }
    ok = true;
out:
    bench_env_cleanup(&e);
    return ok;
}

static void bench_do_scale_target(struct bench_target *t, int ti)
{
    const size_t *sizes = ti == 0 ? opt.sizes : opt.vs_sizes;
    int n = ti == 0 ? opt.nsizes : opt.nvs_sizes;

    bench_scale_nsizes[ti] = 0;
    for (int i = 0; i < n; i++) {
        bench_scale_sizes[ti][i] = sizes[i];
        bench_scale_nsizes[ti] = i + 1;
        if (!bench_scale_one(t, ti, i, sizes[i])) {
            bench_fail(t);
            bench_scale_nsizes[ti] = i;
            break;
        }
    }
}

/* ---- tables and the summary ------------------------------------------------- */

static void bench_print_machine(void)
{
    struct utsname u;
    char model[256] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);

    if (f) {
        while (fgets(line, sizeof line, f)) {
            if (!strncmp(line, "model name", 10)) {
                char *c = strchr(line, ':');
                if (c) {
                    snprintf(model, sizeof model, "%s", c + 2);
                    model[strcspn(model, "\n")] = '\0';
                }
                break;
            }
        }
        fclose(f);
    }
    uname(&u);
    if (opt.json) {
        printf("{\"figure\":\"machine\",\"cpu\":");
        bench_json_str(stdout, model);
        printf(",\"cpus\":%ld,\"kernel\":", cpus);
        bench_json_str(stdout, u.release);
        printf(",\"openssl\":");
        bench_json_str(stdout, OpenSSL_version(OPENSSL_VERSION));
        printf(",\"seconds_per_cell\":%.3f}\n", opt.seconds);
    } else {
        printf("machine: %s, %ld CPUs, Linux %s, %s\n", model, cpus, u.release,
               OpenSSL_version(OPENSSL_VERSION));
        printf("cells: %.2f s each after a short warm-up; threads 1..%d\n\n", opt.seconds,
               opt.threads);
    }
}

static void bench_print_tables(void)
{
    bool head;

    head = false;
    for (int i = 0; i < bench_nresults; i++) {
        const struct bench_result *r = &bench_results[i];
        if (strcmp(r->section, "floor") && strcmp(r->section, "sign"))
            continue;
        if (!head) {
            printf("%-12s %-18s %-7s %-7s %11s %9s %9s %8s %6s  %s\n", "sign", "figure", "threads",
                   "mode", "ops/s", "p50 us", "p99 us", "cpu us", "vcsw", "notes");
            head = true;
        }
        const struct bench_sig_info *info = bench_sig_get(bench_sig_by_name(r->figure));
        if (r->skipped) {
            printf("%-12s %-18s %-7s %-7s %11s %9s %9s %8s %6s  skipped: %s\n", r->module,
                   info ? info->title : r->figure, "-", "-", "-", "-", "-", "-", "-", r->why);
            continue;
        }
        printf("%-12s %-18s %-7d %-7s %11.0f %9.1f %9.1f %8.1f %6.1f  %s%s%s\n", r->module,
               info ? info->title : r->figure, r->threads, r->shared ? "shared" : "own", r->value,
               r->p50_us, r->p99_us, r->cpu_us, r->vcsw, !strcmp(r->section, "floor") ? r->detail : "",
               r->checked ? (r->verified ? (!strcmp(r->section, "floor") ? ", verified" : "verified")
                                         : "VERIFY FAILED: ") : "",
               r->checked && !r->verified ? r->why : "");
    }
    if (head)
        printf("\n");

    head = false;
    for (int i = 0; i < bench_nresults; i++) {
        const struct bench_result *r = &bench_results[i];
        if (strcmp(r->section, "keygen"))
            continue;
        if (!head) {
            printf("%-12s %-10s %11s %9s %9s  %s\n", "keygen", "key", "keys/s", "p50 us", "p99 us",
                   "notes");
            head = true;
        }
        if (r->skipped)
            printf("%-12s %-10s %11s %9s %9s  skipped: %s\n", r->module, r->figure, "-", "-", "-",
                   r->why);
        else
            printf("%-12s %-10s %11.1f %9.1f %9.1f  %s (%llu key pairs)\n", r->module, r->figure,
                   r->value, r->p50_us, r->p99_us, r->detail, r->ops);
    }
    if (head)
        printf("\n");

    for (int ti = 0; ti < bench_ntargets; ti++) {
        int ns = bench_scale_nsizes[ti];
        if (ns == 0)
            continue;
        printf("%-24s", "scale (median us)");
        printf("   %-12s", bench_targets[ti].env.name);
        for (int si = 1; si < ns; si++)
            printf(" %12s", "");
        printf("\n%-24s", "step \\ keys");
        for (int si = 0; si < ns; si++)
            printf(" %12zu", bench_scale_sizes[ti][si]);
        printf("\n");
        for (int st = 0; st < SCALE_NSTEPS; st++) {
            printf("%-24s", scale_step_names[st]);
            for (int si = 0; si < ns; si++) {
                struct bench_result *r = bench_scale_cell[ti][si][st];
                if (r)
                    printf(" %12.1f", r->value);
                else
                    printf(" %12s", "-");
            }
            printf("\n");
        }
        printf("\n");
    }
}

/* One line of the summary: a ratio, and the target it has if any. */
static void bench_ratio(const char *name, const char *a_desc, double a, const char *b_desc,
                        double b, double ratio, const char *target_desc, int target_kind,
                        double target)
{
    /* target_kind: 0 none, 1 ratio >= target, 2 value a <= target, 3 ratio <= target */
    bool met = true;
    if (target_kind == 1)
        met = ratio >= target;
    else if (target_kind == 2)
        met = a <= target;
    else if (target_kind == 3)
        met = ratio <= target;
    if (opt.json) {
        printf("{\"figure\":\"ratio\",\"name\":");
        bench_json_str(stdout, name);
        printf(",\"a\":");
        bench_json_str(stdout, a_desc);
        printf(",\"a_value\":%.2f,\"b\":", a);
        bench_json_str(stdout, b_desc);
        printf(",\"b_value\":%.2f,\"ratio\":%.3f", b, ratio);
        if (target_kind) {
            printf(",\"target\":");
            bench_json_str(stdout, target_desc);
            printf(",\"met\":%s", met ? "true" : "false");
        }
        printf("}\n");
        return;
    }
    char av[32], bv[32], rv[16];
    snprintf(av, sizeof av, "%.1f", a);
    if (b > 0)
        snprintf(bv, sizeof bv, "%.1f", b);
    else
        snprintf(bv, sizeof bv, "-");
    if (ratio > 0)
        snprintf(rv, sizeof rv, "%.2f", ratio);
    else
        snprintf(rv, sizeof rv, "-");
    printf("%-46s %12s %12s %8s  %-20s %s\n", name, av, bv, rv, target_kind ? target_desc : "",
           target_kind ? (met ? "yes" : "NO") : "");
    (void)a_desc;
    (void)b_desc;
}

static const struct bench_result *bench_sign_get(int ti, int s, int n, int mode)
{
    const struct bench_result *r;
    if (n > BENCH_MAX_THREADS || n > opt.threads)
        return NULL;
    r = bench_sign_cell[ti][s][n][mode];
    return r && !r->skipped && r->verified ? r : NULL;
}

static void bench_print_summary(void)
{
    const char *me = bench_targets[0].env.name;
    char name[160], a[128], b[160];

    if (!opt.json) {
        printf("%-46s %12s %12s %8s  %-20s %s\n", "summary", me, "reference", "ratio", "target",
               "met?");
    }
    /* The floor and thread-scaling targets are the vault's: a TPM signs one
     * command at a time and a remote key's time is mostly the round trip. */
    CK_ULONG backend0 = bench_backend(&bench_targets[0]);
    bool vault0 = backend0 == 0 || backend0 == CKV_KH_BACKEND_VAULT;
    /* sign vs floor, 1 thread */
    for (int s = 0; s < BENCH_SIG_COUNT; s++) {
        const struct bench_result *r1 = bench_sign_get(0, s, 1, 0);
        const struct bench_sig_info *info = bench_sig_get(s);
        if (!r1 || bench_floor_best[s][1] <= 0)
            continue;
        snprintf(name, sizeof name, "%s, 1 thread, ops/s vs floor", info->title);
        snprintf(a, sizeof a, "%s sign", me);
        snprintf(b, sizeof b, "floor (%.60s)", bench_floor_best_name[s]);
        bench_ratio(name, a, r1->value, b, bench_floor_best[s][1], r1->value / bench_floor_best[s][1],
                    ">= 0.90 x floor", info->target && vault0 ? 1 : 0, 0.90);
    }
    /* thread scaling */
    for (int s = 0; s < BENCH_SIG_COUNT; s++) {
        const struct bench_result *r1 = bench_sign_get(0, s, 1, 0);
        const struct bench_sig_info *info = bench_sig_get(s);
        for (int mode = 0; mode < 2 && r1; mode++) {
            const struct bench_result *r2 = bench_sign_get(0, s, 2, mode);
            if (!r2)
                continue;
            snprintf(name, sizeof name, "%s, 2 threads %s / 1 thread", info->title,
                     mode ? "shared session" : "own sessions");
            bench_ratio(name, "2 threads", r2->value, "1 thread", r1->value, r2->value / r1->value,
                        ">= 1.8 x 1 thread", info->target && vault0 && mode == 0 ? 1 : 0, 1.8);
        }
        if (bench_floor_best[s][1] > 0 && bench_floor_best[s][2] > 0) {
            snprintf(name, sizeof name, "%s, floor 2 threads / 1 thread", info->title);
            bench_ratio(name, "floor 2 threads", bench_floor_best[s][2], "floor 1 thread",
                        bench_floor_best[s][1], bench_floor_best[s][2] / bench_floor_best[s][1],
                        "", 0, 0);
        }
    }
    /* TPM / remote keys against vault keys of the same type, same module, same run */
    for (int s = 0; s < BENCH_SIG_COUNT; s++) {
        const struct bench_sig_info *info = bench_sig_get(s);
        bool remote = bench_backend(&bench_targets[0]) == CKV_KH_BACKEND_REMOTE;
        for (int n = 1; n <= opt.threads && n <= 2; n++) {
            const struct bench_result *mine = bench_sign_get(0, s, n, 0);
            const struct bench_result *ref = bench_ref_cell[s][n];
            if (!mine || !ref || ref->skipped || !ref->verified || ref->value <= 0)
                continue;
            snprintf(name, sizeof name, "%s, %d thread%s, %s key vs vault key", info->title, n,
                     n > 1 ? "s" : "", kh_p11_backend_name(bench_backend(&bench_targets[0])));
            bench_ratio(name, me, mine->value, ref->module, ref->value, mine->value / ref->value,
                        ">= 0.5 x vault", remote ? 1 : 0, 0.5);
        }
    }
    /* against the other modules */
    for (int ti = 1; ti < bench_ntargets; ti++) {
        const char *other = bench_targets[ti].env.name;
        for (int s = 0; s < BENCH_SIG_COUNT; s++) {
            const struct bench_sig_info *info = bench_sig_get(s);
            for (int n = 1; n <= opt.threads && n <= 2; n++) {
                const struct bench_result *mine = bench_sign_get(0, s, n, 0);
                const struct bench_result *theirs = bench_sign_get(ti, s, n, 0);
                if (!mine || !theirs)
                    continue;
                bool tpm_target = bench_backend(&bench_targets[0]) == CKV_KH_BACKEND_TPM &&
                                  bench_targets[ti].env.kind == BENCH_ENV_TPM2_PKCS11 &&
                                  s == BENCH_SIG_P256_ECDSA && n == 1;
                snprintf(name, sizeof name, "%s, %d thread%s, ops/s vs %s", info->title, n,
                         n > 1 ? "s" : "", other);
                bench_ratio(name, me, mine->value, other, theirs->value, mine->value / theirs->value,
                            ">= 5 x tpm2-pkcs11", tpm_target ? 1 : 0, 5);
            }
            if (opt.algs[s] && bench_sign_get(0, s, 1, 0) && !bench_sign_get(ti, s, 1, 0) &&
                bench_sign_cell[ti][s][1][0] && !opt.json) {
                snprintf(name, sizeof name, "%s vs %s", info->title, other);
                printf("%-46s %12s %12s %8s  %.60s\n", name, "", "-", "-",
                       bench_sign_cell[ti][s][1][0]->why);
            }
        }
        for (int kind = 0; kind <= KH_KEY_RSA; kind++) {
            const struct bench_result *mine = bench_keygen_cell[0][kind];
            const struct bench_result *theirs = bench_keygen_cell[ti][kind];
            if (!mine || !theirs || mine->skipped || theirs->skipped || theirs->value <= 0)
                continue;
            bool target = kind == KH_KEY_P256 && bench_targets[ti].env.kind == BENCH_ENV_SOFTHSM;
            snprintf(name, sizeof name, "keygen %s, keys/s vs %s", mine->figure, other);
            bench_ratio(name, me, mine->value, other, theirs->value, mine->value / theirs->value,
                        ">= 5 x SoftHSM2", target ? 1 : 0, 5);
        }
        for (int si = 0; si < bench_scale_nsizes[ti]; si++) {
            for (int mi = 0; mi < bench_scale_nsizes[0]; mi++) {
                if (bench_scale_sizes[0][mi] != bench_scale_sizes[ti][si])
                    continue;
                static const int steps[] = { SCALE_INIT, SCALE_FIND_LABEL };
                for (size_t k = 0; k < 2; k++) {
                    const struct bench_result *mine = bench_scale_cell[0][mi][steps[k]];
                    const struct bench_result *theirs = bench_scale_cell[ti][si][steps[k]];
                    if (!mine || !theirs)
                        continue;
                    snprintf(name, sizeof name, "%s at %zu keys, us, %s / %s", scale_step_names[steps[k]],
                             bench_scale_sizes[0][mi], other, me);
                    bench_ratio(name, me, mine->value, other, theirs->value,
                                mine->value > 0 ? theirs->value / mine->value : 0, "", 0, 0);
                }
            }
        }
    }
    /* scale targets: at the largest size, against the smallest */
    int ns = bench_scale_nsizes[0];
    if (ns > 0) {
        const struct bench_result *init_big = bench_scale_cell[0][ns - 1][SCALE_INIT];
        const struct bench_result *init_small = bench_scale_cell[0][0][SCALE_INIT];
        const struct bench_result *find_big = bench_scale_cell[0][ns - 1][SCALE_FIND_LABEL];
        size_t big = bench_scale_sizes[0][ns - 1], small = bench_scale_sizes[0][0];
        bool millions = big >= 1000000;
        if (init_big) {
            snprintf(name, sizeof name, "C_Initialize at %zu keys, us", big);
            bench_ratio(name, me, init_big->value, "", 0, 0, "<= 5000 us", millions ? 2 : 0, 5000);
        }
        if (init_big && init_small && ns > 1) {
            snprintf(name, sizeof name, "C_Initialize %zu keys / %zu keys", big, small);
            bench_ratio(name, "big", init_big->value, "small", init_small->value,
                        init_big->value / init_small->value, "<= 2 x 10 keys",
                        millions ? 3 : 0, 2);
        }
        if (find_big) {
            snprintf(name, sizeof name, "find CKA_LABEL at %zu keys, us", big);
            bench_ratio(name, me, find_big->value, "", 0, 0, "<= 100 us", millions ? 2 : 0, 100);
        }
    }
}

/* ---- main ------------------------------------------------------------------- */

enum {
    OPT_MODULE = 256, OPT_VS, OPT_SECONDS, OPT_THREADS, OPT_MODES, OPT_ALGS, OPT_KEYGEN_ALGS,
    OPT_BACKEND, OPT_TPM2_TCTI, OPT_KEY, OPT_TOKEN, OPT_PIN, OPT_SIZES, OPT_VS_SIZES, OPT_RUNS, OPT_JSON,
    OPT_QUIET, OPT_OPS, OPT_REPEAT, OPT_SCALE_SETUP, OPT_SCALE_MEASURE, OPT_PICK_LABEL, OPT_PICK_ID, OPT_FILL,
};

static const struct option bench_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "module", required_argument, NULL, OPT_MODULE },
    { "vs", required_argument, NULL, OPT_VS },
    { "seconds", required_argument, NULL, OPT_SECONDS },
    { "threads", required_argument, NULL, OPT_THREADS },
    { "modes", required_argument, NULL, OPT_MODES },
    { "algs", required_argument, NULL, OPT_ALGS },
    { "keygen-algs", required_argument, NULL, OPT_KEYGEN_ALGS },
    { "backend", required_argument, NULL, OPT_BACKEND },
    { "tpm2-tcti", required_argument, NULL, OPT_TPM2_TCTI },
    { "key", required_argument, NULL, OPT_KEY },
    { "token", required_argument, NULL, OPT_TOKEN },
    { "pin", required_argument, NULL, OPT_PIN },
    { "sizes", required_argument, NULL, OPT_SIZES },
    { "vs-sizes", required_argument, NULL, OPT_VS_SIZES },
    { "runs", required_argument, NULL, OPT_RUNS },
    { "ops", required_argument, NULL, OPT_OPS },
    { "repeat", required_argument, NULL, OPT_REPEAT },
    { "json", no_argument, NULL, OPT_JSON },
    { "quiet", no_argument, NULL, OPT_QUIET },
    { "scale-setup", no_argument, NULL, OPT_SCALE_SETUP },
    { "scale-measure", no_argument, NULL, OPT_SCALE_MEASURE },
    { "pick-label", required_argument, NULL, OPT_PICK_LABEL },
    { "pick-id", required_argument, NULL, OPT_PICK_ID },
    { "fill", required_argument, NULL, OPT_FILL },
    { NULL, 0, NULL, 0 },
};

/* Parses --name's value s: a whole number from lo to hi into *out. */
static bool bench_parse_int(const char *name, const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);

    if (*end || v < lo || v > hi) {
        bench_err("--%s: %d..%d", name, lo, hi);
        return false;
    }
    *out = (int)v;
    return true;
}

/* Parses a comma-separated list against names; sets flags[i] for each. */
static bool bench_parse_list(const char *spec, const char *const *names, size_t n, bool *flags)
{
    char buf[512], *save = NULL, *tok;

    snprintf(buf, sizeof buf, "%s", spec);
    memset(flags, 0, n * sizeof *flags);
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t i;
        for (i = 0; i < n; i++)
            if (names[i] && !strcmp(tok, names[i]))
                break;
        if (i == n) {
            bench_err("unknown value '%s'", tok);
            return false;
        }
        flags[i] = true;
    }
    return true;
}

static int bench_parse_args(int argc, char **argv, int *mode)
{
    const char *sig_names[BENCH_SIG_COUNT];
    const char *kind_names[KH_KEY_RSA + 1] = { NULL, "secp256k1", "p256", "p384", "ed25519", "rsa2048" };
    const char *mode_names[2] = { "own", "shared" };
    bool modes[2];
    int c;
    char *end;

    for (int i = 0; i < BENCH_SIG_COUNT; i++) {
        sig_names[i] = bench_sig_get(i)->name;
        opt.algs[i] = true;
    }
    opt.seconds = 2;
    opt.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (opt.threads < 1)
        opt.threads = 1;
    if (opt.threads > BENCH_MAX_THREADS)
        opt.threads = BENCH_MAX_THREADS;
    opt.mode_own = opt.mode_shared = true;
    opt.keygen_kinds[KH_KEY_P256] = true;
    opt.runs = 3;
    opt.repeat = 1;
    bench_parse_sizes(opt.sizes, &opt.nsizes, "10,1000,10000,1000000");
    bench_parse_sizes(opt.vs_sizes, &opt.nvs_sizes, "10,1000");
    *mode = 0;

    while ((c = getopt_long(argc, argv, "h", bench_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(bench_usage, stdout);
            exit(BENCH_EXIT_OK);
        case OPT_MODULE: opt.module = optarg; break;
        case OPT_VS:
            if (opt.nvs == BENCH_MAX_VS) {
                bench_err("at most %d --vs modules", BENCH_MAX_VS);
                return BENCH_EXIT_USAGE;
            }
            opt.vs[opt.nvs++] = optarg;
            break;
        case OPT_SECONDS:
            opt.seconds = strtod(optarg, &end);
            if (*end || !(opt.seconds > 0) || opt.seconds > 3600) {
                bench_err("--seconds: a duration in seconds, > 0");
                return BENCH_EXIT_USAGE;
            }
            break;
        case OPT_THREADS:
            if (!bench_parse_int("threads", optarg, 1, BENCH_MAX_THREADS, &opt.threads))
                return BENCH_EXIT_USAGE;
            break;
        case OPT_MODES:
            if (!bench_parse_list(optarg, mode_names, 2, modes))
                return BENCH_EXIT_USAGE;
            opt.mode_own = modes[0];
            opt.mode_shared = modes[1];
            break;
        case OPT_ALGS:
            if (!bench_parse_list(optarg, sig_names, BENCH_SIG_COUNT, opt.algs))
                return BENCH_EXIT_USAGE;
            break;
        case OPT_KEYGEN_ALGS:
            if (!bench_parse_list(optarg, kind_names, KH_KEY_RSA + 1, opt.keygen_kinds))
                return BENCH_EXIT_USAGE;
            break;
        case OPT_BACKEND:
            opt.backend_name = optarg;
            opt.backend = !strcmp(optarg, "vault") ? CKV_KH_BACKEND_VAULT
                        : !strcmp(optarg, "tpm") ? CKV_KH_BACKEND_TPM
                        : !strcmp(optarg, "remote") ? CKV_KH_BACKEND_REMOTE : 0;
            if (!opt.backend) {
                bench_err("--backend: vault, tpm or remote");
                return BENCH_EXIT_USAGE;
            }
            break;
        case OPT_TPM2_TCTI:
            if (strlen(optarg) >= sizeof bench_targets[0].env.tcti) {
                bench_err("--tpm2-tcti: too long");
                return BENCH_EXIT_USAGE;
            }
            opt.tpm2_tcti = optarg;
            break;
        case OPT_KEY: opt.key = optarg; break;
        case OPT_TOKEN: opt.token = optarg; break;
        case OPT_PIN: opt.pin = optarg; break;
        case OPT_SIZES:
            if (!bench_parse_sizes(opt.sizes, &opt.nsizes, optarg)) {
                bench_err("--sizes: comma-separated key counts, 2..10000000");
                return BENCH_EXIT_USAGE;
            }
            break;
        case OPT_VS_SIZES:
            if (!bench_parse_sizes(opt.vs_sizes, &opt.nvs_sizes, optarg)) {
                bench_err("--vs-sizes: comma-separated key counts, 2..10000000");
                return BENCH_EXIT_USAGE;
            }
            break;
        case OPT_RUNS:
            if (!bench_parse_int("runs", optarg, 1, BENCH_MAX_RUNS, &opt.runs))
                return BENCH_EXIT_USAGE;
            break;
        case OPT_OPS:
            opt.ops = strtoul(optarg, &end, 10);
            if (*end || opt.ops < 1) {
                bench_err("--ops: a count of operations per thread, >= 1");
                return BENCH_EXIT_USAGE;
            }
            break;
        case OPT_REPEAT:
            if (!bench_parse_int("repeat", optarg, 1, 100, &opt.repeat))
                return BENCH_EXIT_USAGE;
            break;
        case OPT_JSON: opt.json = true; break;
        case OPT_QUIET: opt.quiet = true; break;
        case OPT_SCALE_SETUP: *mode = 1; break;
        case OPT_SCALE_MEASURE: *mode = 2; break;
        case OPT_PICK_LABEL: opt.pick_label = optarg; break;
        case OPT_PICK_ID: opt.pick_id = optarg; break;
        case OPT_FILL: opt.fill = (size_t)strtoull(optarg, NULL, 10); break;
        default:
            fputs(bench_usage, stderr);
            return BENCH_EXIT_USAGE;
        }
    }
    for (int i = optind; i < argc; i++) {
        if (!strcmp(argv[i], "floor"))
            opt.what |= BENCH_DO_FLOOR;
        else if (!strcmp(argv[i], "sign"))
            opt.what |= BENCH_DO_SIGN;
        else if (!strcmp(argv[i], "keygen"))
            opt.what |= BENCH_DO_KEYGEN;
        else if (!strcmp(argv[i], "scale"))
            opt.what |= BENCH_DO_SCALE;
        else if (!strcmp(argv[i], "all"))
            opt.what |= BENCH_DO_FLOOR | BENCH_DO_SIGN | BENCH_DO_KEYGEN | BENCH_DO_SCALE;
        else {
            bench_err("unknown figure '%s' (floor, sign, keygen, scale)", argv[i]);
            return BENCH_EXIT_USAGE;
        }
    }
    if (!opt.what) {
        opt.what = BENCH_DO_FLOOR | BENCH_DO_SIGN | BENCH_DO_SCALE;
        if (!opt.key)   /* keygen writes into the token: only when asked for an existing one */
            opt.what |= BENCH_DO_KEYGEN;
    }
    if ((opt.token || opt.pin) && !opt.key) {
        bench_err("--token and --pin go with --key");
        return BENCH_EXIT_USAGE;
    }
    return -1;
}

int main(int argc, char **argv)
{
    int mode, rc;
    char path[4096];
    enum kh_p11_source src;

    rc = bench_parse_args(argc, argv, &mode);
    if (rc >= 0)
        return rc;
    if (mode == 1)
        return scale_setup();
    if (mode == 2)
        return scale_measure();
    /* Results go to stdout as they come; progress to stderr. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* The module under test, then --vs. */
    if (!kh_p11_resolve_path(path, sizeof path, &src, opt.module)) {
        bench_err("module path too long");
        return BENCH_EXIT_USAGE;
    }
    bench_env_resolve(&bench_targets[0].env, path);
    if (!opt.module && bench_targets[0].env.kind == BENCH_ENV_OTHER) {
        bench_targets[0].env.kind = BENCH_ENV_KEYHOLD;
        snprintf(bench_targets[0].env.name, sizeof bench_targets[0].env.name, "keyhold");
    }
    bench_ntargets = 1;
    for (int i = 0; i < opt.nvs; i++) {
        struct bench_env *e = &bench_targets[bench_ntargets++].env;
        bench_env_resolve(e, opt.vs[i]);
        if (e->kind == BENCH_ENV_TPM2_PKCS11 && opt.tpm2_tcti)
            snprintf(e->tcti, sizeof e->tcti, "%s", opt.tpm2_tcti);
    }
    opt.module = bench_targets[0].env.module;

    bench_print_machine();
    if (opt.what & (BENCH_DO_SIGN | BENCH_DO_KEYGEN)) {
        for (int ti = 0; ti < bench_ntargets; ti++) {
            struct bench_target *t = &bench_targets[ti];
            bench_note("%s: %s", t->env.name, t->env.module);
            bench_target_open(t, ti == 0 && opt.key);
            if (!t->ready) {
                bench_err("%s: %s", t->env.name, t->why);
                if (ti == 0)
                    bench_failures++;
            }
        }
    }
    /* Rounds: every cell once per round, the best kept (see bench_result_merge). */
    for (int round = 0; round < opt.repeat; round++) {
        if (opt.repeat > 1)
            bench_note("round %d of %d", round + 1, opt.repeat);
        if (opt.what & BENCH_DO_FLOOR)
            bench_do_floor(round);
        for (int ti = 0; ti < bench_ntargets && (opt.what & BENCH_DO_SIGN); ti++)
            bench_do_sign_target(&bench_targets[ti], ti, round);
        for (int ti = 0; ti < bench_ntargets && (opt.what & BENCH_DO_KEYGEN); ti++)
            bench_do_keygen_target(&bench_targets[ti], ti, round);
    }
    for (int ti = 0; ti < bench_ntargets; ti++)
        bench_target_close(&bench_targets[ti]);
    if (opt.what & BENCH_DO_SCALE) {
        for (int ti = 0; ti < bench_ntargets; ti++)
            bench_do_scale_target(&bench_targets[ti], ti);
    }
    if (opt.json) {
        for (int i = 0; i < bench_nresults; i++)
            bench_json_result(&bench_results[i]);
    } else {
        bench_print_tables();
    }
    bench_print_summary();

    int checked = 0, bad = 0;
    for (int i = 0; i < bench_nresults; i++) {
        const struct bench_result *r = &bench_results[i];
        bool mine = !strcmp(r->module, "floor") || !strcmp(r->module, bench_targets[0].env.name);
        if (!mine)
            continue;
        checked += r->checked;
        if (r->checked && !r->verified)
            bad++;
    }
    if (opt.json)
        printf("{\"figure\":\"verify\",\"checked\":%d,\"failed_cells\":%d,\"errors\":%d}\n", checked,
               bad, bench_failures);
    else
        printf("\nverify: %d signatures of %s and the floor checked with OpenSSL/libsecp256k1, "
               "%d cells failed; %d errors\n", checked, bench_targets[0].env.name, bad,
               bench_failures);
    return bench_failures || bad ? BENCH_EXIT_FAIL : BENCH_EXIT_OK;
}

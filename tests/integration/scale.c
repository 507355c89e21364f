/*
 * scale: with 100,000 keys in the store, C_Initialize -> login -> find by
 * CKA_LABEL -> sign takes about as long as with 10 keys.
 *
 * For each store size N (default 10 and 100000; KH_SCALE_SIZES="10,1000"
 * overrides), in a fresh store directory:
 *   1. a child process makes the token through the module (C_InitToken on the
 *      free slot, SO login, C_InitPIN, user login) and generates one real
 *      P-256 key pair labelled "target";
 *   2. this process adds N-1 filler key pairs straight through the token store
 *      (kh_store_obj_insert_many, 10,000 rows per transaction): clones of the
 *      target's rows with labels "k%06d", random CKA_ID, random uid and random
 *      sealed bytes (never used), so the index holds N keys (2N objects);
 *   3. a fresh process (this program re-executed as `scale --measure DIR
 *      FILLER_LABEL FILLER_ID_HEX`) times dlopen + C_GetFunctionList +
 *      C_Initialize, the slot lookup, C_OpenSession, C_Login, the find by
 *      CKA_LABEL, and C_SignInit + C_Sign; then finds a filler by label and by
 *      CKA_ID. KH_SCALE_RUNS (default 3) fresh processes per N; the median of
 *      each step is reported.
 *
 * Pass: every call succeeds, each find returns exactly one object and the
 * signature verifies with OpenSSL against the public key's CKA_EC_POINT.
 * Timings are printed, never asserted.
 *
 * Env: KEYHOLD_MODULE (required), KEYHOLD_KDF_LOG2N (10 in tests),
 * KH_SCALE_SIZES, KH_SCALE_RUNS, KH_KEEP_STORE=1 (leave the store directories).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "p11load.h"
#include "store.h"

#define SCALE_TOKEN_LABEL "scale"
#define SCALE_SO_PIN "87654321"
#define SCALE_USER_PIN "12345678"
#define SCALE_TARGET "target"
#define SCALE_ID_LEN 16
#define SCALE_CHUNK 10000 /* rows per kh_store_obj_insert_many transaction */
#define SCALE_MAX_SIZES 8
#define SCALE_MAX_RUNS 15

/* The measured steps, in order; the --measure process prints one value per step. */
enum {
    SCALE_T_INIT,       /* dlopen + C_GetFunctionList + C_Initialize */
    SCALE_T_SLOT,       /* C_GetSlotList + C_GetTokenInfo until the label matches */
    SCALE_T_OPEN,       /* C_OpenSession */
    SCALE_T_LOGIN,      /* C_Login (KDF cost: KEYHOLD_KDF_LOG2N) */
    SCALE_T_FIND,       /* FindObjectsInit/FindObjects/Final, CKA_LABEL="target" + CKO_PRIVATE_KEY */
    SCALE_T_SIGN,       /* C_SignInit + C_Sign, CKM_ECDSA, 32-byte digest */
    SCALE_T_FIND_LABEL, /* the same find for a filler's label */
    SCALE_T_FIND_ID,    /* find by a filler's CKA_ID + CKO_PRIVATE_KEY */
    SCALE_T_COUNT
};

static const char *const scale_step_names[SCALE_T_COUNT] = {
    "dlopen+C_Initialize",
    "find slot by token label",
    "C_OpenSession",
    "C_Login (user)",
    "find CKA_LABEL=target",
    "C_SignInit+C_Sign",
    "find filler by CKA_LABEL",
    "find filler by CKA_ID",
};

/* ---------------------------------------------------------------------- */
/* measured phase (a fresh process)                                          */
/* ---------------------------------------------------------------------- */

static bool scale_hex_decode(uint8_t *out, size_t outlen, const char *hex)
{
    if (strlen(hex) != 2 * outlen)
        return false;
    for (size_t i = 0; i < outlen; i++) {
        unsigned v;

        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return false;
        out[i] = (uint8_t)v;
    }
    return true;
}

/* Find exactly one object of class cls where attribute type equals value. */
static CK_RV scale_find_exactly_one(CK_FUNCTION_LIST_PTR fl, CK_OBJECT_HANDLE *h,
                                    CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                                    CK_ATTRIBUTE_TYPE type, const void *value, size_t len,
                                    const char *what)
{
    size_t n;
    CK_RV rv = p11l_find(fl, h, 1, &n, s, cls, type, value, len);

    if (rv != CKR_OK)
        return rv;
    if (n != 1) {
        fprintf(stderr, "measure: find %s returned %zu objects, expected 1\n", what, n);
        return CKR_GENERAL_ERROR;
    }
    return CKR_OK;
}

/*
 * Peak resident set of this process image in KiB (VmHWM). Not getrusage():
 * its ru_maxrss keeps the pre-exec high-water mark, i.e. the parent's that
 * built the store.
 */
static long scale_peak_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

static int scale_measure(const char *dir, const char *filler_label, const char *filler_id_hex)
{
    double t[SCALE_T_COUNT], t0;
    uint8_t filler_id[SCALE_ID_LEN], digest[32], sig[128], *point = NULL;
    size_t point_len = 0;
    CK_FUNCTION_LIST_PTR fl;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE priv, pub, h;
    CK_MECHANISM mech = { CKM_ECDSA, NULL, 0 };
    CK_ULONG siglen = sizeof(sig);
    const char *module = p11l_module_path();
    const char *env_dir = getenv("KEYHOLD_STORE");
    void *dl;
    int status = 1;
    CK_RV rv;

    if (module == NULL)
        return 1;
    if (env_dir == NULL || strcmp(env_dir, dir) != 0) {
        fprintf(stderr, "measure: KEYHOLD_STORE is not %s\n", dir);
        return 1;
    }
    if (!scale_hex_decode(filler_id, sizeof(filler_id), filler_id_hex)) {
        fprintf(stderr, "measure: bad filler id %s\n", filler_id_hex);
        return 1;
    }
    if (kh_random(digest, sizeof(digest)) != CKR_OK)
        return 1;

    t0 = p11l_now_us();
    rv = p11l_load(&dl, &fl, module);
    if (rv != CKR_OK)
        return 1;
    rv = fl->C_Initialize(NULL);
    t[SCALE_T_INIT] = p11l_now_us() - t0;
    if (rv != CKR_OK) {
        fprintf(stderr, "measure: C_Initialize: %s\n", p11l_rv_str(rv));
        goto out_dlclose;
    }

    t0 = p11l_now_us();
    rv = p11l_find_slot(fl, &slot, SCALE_TOKEN_LABEL);
    t[SCALE_T_SLOT] = p11l_now_us() - t0;
    if (rv != CKR_OK)
        goto out_finalize;

    t0 = p11l_now_us();
    rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    t[SCALE_T_OPEN] = p11l_now_us() - t0;
    if (rv != CKR_OK) {
        fprintf(stderr, "measure: C_OpenSession: %s\n", p11l_rv_str(rv));
        goto out_finalize;
    }

    t0 = p11l_now_us();
    rv = fl->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)SCALE_USER_PIN, strlen(SCALE_USER_PIN));
    t[SCALE_T_LOGIN] = p11l_now_us() - t0;
    if (rv != CKR_OK) {
        fprintf(stderr, "measure: C_Login(CKU_USER): %s\n", p11l_rv_str(rv));
        goto out_close;
    }

    t0 = p11l_now_us();
    rv = scale_find_exactly_one(fl, &priv, s, CKO_PRIVATE_KEY, CKA_LABEL, SCALE_TARGET,
                                strlen(SCALE_TARGET), "private key CKA_LABEL=target");
    t[SCALE_T_FIND] = p11l_now_us() - t0;
    if (rv != CKR_OK)
        goto out_logout;

    t0 = p11l_now_us();
    rv = fl->C_SignInit(s, &mech, priv);
    if (rv == CKR_OK) {
        rv = fl->C_Sign(s, digest, sizeof(digest), sig, &siglen);
        if (rv != CKR_OK)
            fprintf(stderr, "measure: C_Sign(CKM_ECDSA): %s\n", p11l_rv_str(rv));
    } else {
        fprintf(stderr, "measure: C_SignInit(CKM_ECDSA, %lu): %s\n", (unsigned long)priv,
                p11l_rv_str(rv));
    }
    t[SCALE_T_SIGN] = p11l_now_us() - t0;
    if (rv != CKR_OK)
        goto out_logout;

    t0 = p11l_now_us();
    rv = scale_find_exactly_one(fl, &h, s, CKO_PRIVATE_KEY, CKA_LABEL, filler_label,
                                strlen(filler_label), "private key by filler CKA_LABEL");
    t[SCALE_T_FIND_LABEL] = p11l_now_us() - t0;
    if (rv != CKR_OK)
        goto out_logout;

    t0 = p11l_now_us();
    rv = scale_find_exactly_one(fl, &h, s, CKO_PRIVATE_KEY, CKA_ID, filler_id,
                                sizeof(filler_id), "private key by filler CKA_ID");
    t[SCALE_T_FIND_ID] = p11l_now_us() - t0;
    if (rv != CKR_OK)
        goto out_logout;

    /* Untimed: the signature must verify against the public key, outside the module. */
    rv = scale_find_exactly_one(fl, &pub, s, CKO_PUBLIC_KEY, CKA_LABEL, SCALE_TARGET,
                                strlen(SCALE_TARGET), "public key CKA_LABEL=target");
    if (rv != CKR_OK)
        goto out_logout;
    rv = p11l_get_attr(fl, &point, &point_len, s, pub, CKA_EC_POINT);
    if (rv != CKR_OK)
        goto out_logout;
    if (siglen != 64 ||
        !p11l_ossl_verify(P11L_P256, point, point_len, digest, sizeof(digest), sig, siglen)) {
        fprintf(stderr, "measure: the %lu-byte CKM_ECDSA signature does not verify with OpenSSL\n",
                (unsigned long)siglen);
        goto out_logout;
    }

    printf("RESULT");
    for (int i = 0; i < SCALE_T_COUNT; i++)
        printf(" %.1f", t[i]);
    printf(" %ld\n", scale_peak_rss_kib());
    fflush(stdout);
    status = 0;

out_logout:
    rv = fl->C_Logout(s);
    if (rv != CKR_OK) {
        fprintf(stderr, "measure: C_Logout: %s\n", p11l_rv_str(rv));
        status = 1;
    }
out_close:
    rv = fl->C_CloseSession(s);
    if (rv != CKR_OK) {
        fprintf(stderr, "measure: C_CloseSession: %s\n", p11l_rv_str(rv));
        status = 1;
    }
out_finalize:
    rv = fl->C_Finalize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "measure: C_Finalize: %s\n", p11l_rv_str(rv));
        status = 1;
    }
out_dlclose:
    free(point);
    p11l_unload(dl);
    return status;
}

/* ---------------------------------------------------------------------- */
/* setup: token + one real key through the module (in a child process)      */
/* ---------------------------------------------------------------------- */

static int scale_setup_child(void)
{
    CK_FUNCTION_LIST_PTR fl;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE pub, priv;
    uint8_t id[SCALE_ID_LEN];
    const char *module = p11l_module_path();
    void *dl;
    int status = 1;
    CK_RV rv;

    if (module == NULL || kh_random(id, sizeof(id)) != CKR_OK)
        return 1;
    if (p11l_load(&dl, &fl, module) != CKR_OK)
        return 1;
    rv = fl->C_Initialize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "setup: C_Initialize: %s\n", p11l_rv_str(rv));
        goto out_dlclose;
    }
    if (p11l_make_token(fl, &slot, SCALE_TOKEN_LABEL, SCALE_SO_PIN, SCALE_USER_PIN) != CKR_OK)
        goto out_finalize;
    rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        fprintf(stderr, "setup: C_OpenSession: %s\n", p11l_rv_str(rv));
        goto out_finalize;
    }
    if (p11l_login(fl, s, SCALE_USER_PIN) != CKR_OK)
        goto out_close;
    if (p11l_gen_keypair(fl, &pub, &priv, s, P11L_P256, SCALE_TARGET, id, sizeof(id)) != CKR_OK)
        goto out_close;
    status = 0;
out_close:
    fl->C_CloseSession(s);
out_finalize:
    rv = fl->C_Finalize(NULL);
    if (rv != CKR_OK) {
        fprintf(stderr, "setup: C_Finalize: %s\n", p11l_rv_str(rv));
        status = 1;
    }
out_dlclose:
    p11l_unload(dl);
    return status;
}

static bool scale_wait_ok(pid_t pid, const char *what)
{
    int st;

    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            perror("waitpid");
            return false;
        }
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return true;
    if (WIFSIGNALED(st))
        fprintf(stderr, "%s: killed by signal %d\n", what, WTERMSIG(st));
    else
        fprintf(stderr, "%s: exit status %d\n", what, WEXITSTATUS(st));
    return false;
}

static bool scale_setup_token(void)
{
    pid_t pid;

    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        return false;
    }
    if (pid == 0)
        _exit(scale_setup_child());
    return scale_wait_ok(pid, "setup child");
}

/* ---------------------------------------------------------------------- */
/* filler: N-1 key pairs straight into the store                              */
/* ---------------------------------------------------------------------- */

typedef struct scale_filler {
    char label[24];           /* the filler the measured phase looks up */
    uint8_t id[SCALE_ID_LEN];
} scale_filler;

/* The target's two rows, loaded from the store. */
static CK_RV scale_load_target(kh_store *st, kh_obj_rec *pub, kh_obj_rec *priv, int64_t *token_id)
{
    kh_token_rec *toks = NULL;
    size_t ntoks = 0, n = 0;
    int64_t *ids = NULL;
    kh_find_query q;
    CK_RV rv;

    *token_id = 0;
    rv = kh_store_token_list(st, &toks, &ntoks);
    if (rv != CKR_OK) {
        fprintf(stderr, "kh_store_token_list: %s\n", p11l_rv_str(rv));
        return rv;
    }
    for (size_t i = 0; i < ntoks; i++)
        if (strcmp(toks[i].label, SCALE_TOKEN_LABEL) == 0)
            *token_id = toks[i].id;
    free(toks);
    if (*token_id == 0) {
        fprintf(stderr, "the store has no token labelled %s\n", SCALE_TOKEN_LABEL);
        return CKR_GENERAL_ERROR;
    }

    memset(&q, 0, sizeof(q));
    q.token_id = *token_id;
    q.has_label = true;
    q.label = SCALE_TARGET;
    q.label_len = strlen(SCALE_TARGET);
    q.include_private = true;
    rv = kh_store_obj_find(st, &ids, &n, &q);
    if (rv != CKR_OK) {
        fprintf(stderr, "kh_store_obj_find(target): %s\n", p11l_rv_str(rv));
        return rv;
    }
    if (n != 2) {
        fprintf(stderr, "the store holds %zu objects labelled target, expected 2\n", n);
        free(ids);
        return CKR_GENERAL_ERROR;
    }
    memset(pub, 0, sizeof(*pub));
    memset(priv, 0, sizeof(*priv));
    for (size_t i = 0; i < 2 && rv == CKR_OK; i++) {
        kh_obj_rec rec;
        const CK_ATTRIBUTE *cls;

        memset(&rec, 0, sizeof(rec));
        rv = kh_store_obj_get(st, &rec, ids[i]);
        if (rv != CKR_OK) {
            fprintf(stderr, "kh_store_obj_get(%lld): %s\n", (long long)ids[i], p11l_rv_str(rv));
            break;
        }
        cls = kh_obj_rec_attr(&rec, CKA_CLASS);
        if (cls != NULL && cls->ulValueLen == sizeof(CK_OBJECT_CLASS) &&
            *(CK_OBJECT_CLASS *)cls->pValue == CKO_PRIVATE_KEY)
            *priv = rec;
        else if (cls != NULL && cls->ulValueLen == sizeof(CK_OBJECT_CLASS) &&
                 *(CK_OBJECT_CLASS *)cls->pValue == CKO_PUBLIC_KEY)
            *pub = rec;
        else
            kh_obj_rec_clear(&rec);
    }
    free(ids);
    if (rv == CKR_OK && (pub->attrs == NULL || priv->attrs == NULL)) {
        fprintf(stderr, "the target rows are not one public and one private key\n");
        rv = CKR_GENERAL_ERROR;
    }
    if (rv != CKR_OK) {
        kh_obj_rec_clear(pub);
        kh_obj_rec_clear(priv);
    }
    return rv;
}

/*
 * One chunk of filler rows: each row's attributes are the template's, with
 * CKA_LABEL, CKA_ID and CKA_UNIQUE_ID pointing into per-row buffers.
 */
typedef struct scale_chunk {
    kh_obj_rec *recs;
    CK_ATTRIBUTE *attrs;      /* SCALE_CHUNK * max_attrs */
    char (*labels)[24];
    uint8_t (*ids)[SCALE_ID_LEN];
    char (*uniq)[2 * KH_UID_LEN + 1];
    uint8_t *sealed;          /* SCALE_CHUNK * sealed_len */
    size_t max_attrs, sealed_len;
} scale_chunk;

static void scale_chunk_free(scale_chunk *c)
{
    free(c->recs);
    free(c->attrs);
    free(c->labels);
    free(c->ids);
    free(c->uniq);
    free(c->sealed);
    memset(c, 0, sizeof(*c));
}

static bool scale_chunk_alloc(scale_chunk *c, size_t max_attrs, size_t sealed_len)
{
    memset(c, 0, sizeof(*c));
    c->max_attrs = max_attrs + 2; /* room for CKA_LABEL / CKA_ID if the template lacks them */
    c->sealed_len = sealed_len;
    c->recs = calloc(SCALE_CHUNK, sizeof(*c->recs));
    c->attrs = calloc(SCALE_CHUNK * c->max_attrs, sizeof(*c->attrs));
    c->labels = calloc(SCALE_CHUNK, sizeof(*c->labels));
    c->ids = calloc(SCALE_CHUNK, sizeof(*c->ids));
    c->uniq = calloc(SCALE_CHUNK, sizeof(*c->uniq));
    c->sealed = calloc(SCALE_CHUNK, sealed_len ? sealed_len : 1);
    if (c->recs == NULL || c->attrs == NULL || c->labels == NULL || c->ids == NULL ||
        c->uniq == NULL || c->sealed == NULL) {
        scale_chunk_free(c);
        return false;
    }
    return true;
}

/* Row slot of the chunk as a clone of tmpl labelled label with CKA_ID id. */
static CK_RV scale_chunk_row(scale_chunk *c, size_t slot, const kh_obj_rec *tmpl,
                             const char *label, const uint8_t id[SCALE_ID_LEN])
{
    kh_obj_rec *rec = &c->recs[slot];
    CK_ATTRIBUTE *a = &c->attrs[slot * c->max_attrs];
    bool have_label = false, have_id = false;
    size_t n = 0;
    CK_RV rv;

    memset(rec, 0, sizeof(*rec));
    rec->token_id = tmpl->token_id;
    rv = kh_random(rec->uid, sizeof(rec->uid));
    if (rv != CKR_OK)
        return rv;
    snprintf(c->labels[slot], sizeof(c->labels[slot]), "%s", label);
    memcpy(c->ids[slot], id, SCALE_ID_LEN);
    for (size_t i = 0; i < KH_UID_LEN; i++)
        snprintf(c->uniq[slot] + 2 * i, 3, "%02x", rec->uid[i]);

    for (size_t i = 0; i < tmpl->nattrs; i++) {
        a[n] = tmpl->attrs[i];
        if (a[n].type == CKA_LABEL) {
            a[n].pValue = c->labels[slot];
            a[n].ulValueLen = strlen(c->labels[slot]);
            have_label = true;
        } else if (a[n].type == CKA_ID) {
            a[n].pValue = c->ids[slot];
            a[n].ulValueLen = SCALE_ID_LEN;
            have_id = true;
        } else if (a[n].type == CKA_UNIQUE_ID) {
            a[n].pValue = c->uniq[slot];
            a[n].ulValueLen = 2 * KH_UID_LEN;
        }
        n++;
    }
    if (!have_label)
        a[n++] = (CK_ATTRIBUTE){ CKA_LABEL, c->labels[slot], strlen(c->labels[slot]) };
    if (!have_id)
        a[n++] = (CK_ATTRIBUTE){ CKA_ID, c->ids[slot], SCALE_ID_LEN };
    rec->attrs = a;
    rec->nattrs = n;
    if (tmpl->sealed != NULL && c->sealed_len > 0) {
        rec->sealed = c->sealed + slot * c->sealed_len;
        rec->sealed_len = c->sealed_len;
        rv = kh_random(rec->sealed, rec->sealed_len);
    }
    return rv;
}

/*
 * Add nkeys - 1 filler key pairs (public + private rows) to the store in dir.
 * Out: *pick, one filler for the measured phase (the middle one).
 */
static bool scale_fill(const char *dir, size_t nkeys, scale_filler *pick, double *elapsed_s)
{
    kh_obj_rec pub, priv;
    scale_chunk c;
    kh_store *st = NULL;
    int64_t token_id;
    size_t total = 2 * (nkeys - 1), done = 0, count = 0, pick_index = nkeys / 2;
    double t0 = p11l_now_us();
    bool ok = false;
    CK_RV rv;

    memset(pick, 0, sizeof(*pick));
    rv = kh_store_open(&st, dir);
    if (rv != CKR_OK) {
        fprintf(stderr, "kh_store_open(%s): %s\n", dir, p11l_rv_str(rv));
        return false;
    }
    if (scale_load_target(st, &pub, &priv, &token_id) != CKR_OK)
        goto out_close;
    if (!scale_chunk_alloc(&c, pub.nattrs > priv.nattrs ? pub.nattrs : priv.nattrs,
                           priv.sealed_len)) {
        fprintf(stderr, "out of memory for the filler chunk\n");
        goto out_recs;
    }

    while (done < total) {
        size_t n = total - done < SCALE_CHUNK ? total - done : SCALE_CHUNK;

        for (size_t i = 0; i < n; i += 2) {
            size_t key = (done + i) / 2 + 1; /* 1 .. nkeys-1 */
            char label[24];
            uint8_t id[SCALE_ID_LEN];

            snprintf(label, sizeof(label), "k%06zu", key);
            if (kh_random(id, sizeof(id)) != CKR_OK ||
                scale_chunk_row(&c, i, &pub, label, id) != CKR_OK ||
                scale_chunk_row(&c, i + 1, &priv, label, id) != CKR_OK) {
                fprintf(stderr, "building filler row %zu failed\n", key);
                goto out_chunk;
            }
            if (key == pick_index) {
                snprintf(pick->label, sizeof(pick->label), "%s", label);
                memcpy(pick->id, id, sizeof(id));
            }
        }
        rv = kh_store_obj_insert_many(st, NULL, c.recs, n);
        if (rv != CKR_OK) {
            fprintf(stderr, "kh_store_obj_insert_many(%zu rows after %zu): %s\n", n, done,
                    p11l_rv_str(rv));
            goto out_chunk;
        }
        done += n;
    }

    rv = kh_store_obj_count(st, token_id, &count);
    if (rv != CKR_OK) {
        fprintf(stderr, "kh_store_obj_count: %s\n", p11l_rv_str(rv));
        goto out_chunk;
    }
    if (count != 2 * nkeys) {
        fprintf(stderr, "the token holds %zu objects, expected %zu\n", count, 2 * nkeys);
        goto out_chunk;
    }
    if (pick->label[0] == '\0') {
        fprintf(stderr, "no filler picked (N=%zu is too small)\n", nkeys);
        goto out_chunk;
    }
    ok = true;
out_chunk:
    scale_chunk_free(&c);
out_recs:
    kh_obj_rec_clear(&pub);
    kh_obj_rec_clear(&priv);
out_close:
    kh_store_close(st);
    *elapsed_s = (p11l_now_us() - t0) / 1e6;
    return ok;
}

/* ---------------------------------------------------------------------- */
/* driver                                                                    */
/* ---------------------------------------------------------------------- */

/* Run `self --measure dir label idhex` once. Out: t (SCALE_T_COUNT values), *maxrss_kib (VmHWM). */
static bool scale_run_measure(double *t, long *maxrss_kib, const char *dir,
                              const scale_filler *pick)
{
    char idhex[2 * SCALE_ID_LEN + 1], line[512];
    FILE *in;
    bool got = false;
    int fds[2];
    pid_t pid;

    for (size_t i = 0; i < SCALE_ID_LEN; i++)
        snprintf(idhex + 2 * i, 3, "%02x", pick->id[i]);
    if (pipe(fds) != 0) {
        perror("pipe");
        return false;
    }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        close(fds[0]);
        close(fds[1]);
        return false;
    }
    if (pid == 0) {
        char *const args[] = { "scale", "--measure", (char *)dir, (char *)pick->label, idhex, NULL };

        close(fds[0]);
        if (dup2(fds[1], STDOUT_FILENO) < 0)
            _exit(127);
        close(fds[1]);
        execv("/proc/self/exe", args);
        perror("execv /proc/self/exe");
        _exit(127);
    }
    close(fds[1]);
    in = fdopen(fds[0], "r");
    if (in == NULL) {
        close(fds[0]);
        scale_wait_ok(pid, "measure process");
        return false;
    }
    while (fgets(line, sizeof(line), in) != NULL) {
        char *p = line, *end;

        if (strncmp(line, "RESULT", 6) != 0) {
            fputs(line, stdout);
            continue;
        }
        p += 6;
        got = true;
        for (int i = 0; i < SCALE_T_COUNT; i++) {
            t[i] = strtod(p, &end);
            if (end == p)
                got = false;
            p = end;
        }
        *maxrss_kib = strtol(p, &end, 10);
        if (end == p)
            got = false;
    }
    fclose(in);
    if (!scale_wait_ok(pid, "measure process"))
        return false;
    if (!got) {
        fprintf(stderr, "measure process printed no RESULT line\n");
        return false;
    }
    return true;
}

static int scale_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static double scale_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), scale_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* One store size: build, fill, measure runs times. Out: med (median per step), *rss. */
static bool scale_one_size(double *med, long *rss, size_t nkeys, int runs, bool keep)
{
    double samples[SCALE_T_COUNT][SCALE_MAX_RUNS], t[SCALE_T_COUNT], fill_s = 0;
    char dir[4096];
    scale_filler pick;
    bool ok = false;

    *rss = 0;
    if (!p11l_tmpdir(dir, sizeof(dir), "scale"))
        return false;
    if (setenv("KEYHOLD_STORE", dir, 1) != 0) {
        perror("setenv");
        goto out_rm;
    }
    printf("N=%zu: store %s\n", nkeys, dir);
    fflush(stdout);
    if (!scale_setup_token())
        goto out_rm;
    if (!scale_fill(dir, nkeys, &pick, &fill_s))
        goto out_rm;
    printf("N=%zu: %zu filler key pairs inserted in %.2f s (%zu rows per transaction); "
           "filler looked up: %s\n", nkeys, nkeys - 1, fill_s, (size_t)SCALE_CHUNK, pick.label);
    fflush(stdout);

    for (int r = 0; r < runs; r++) {
        long maxrss = 0;

        if (!scale_run_measure(t, &maxrss, dir, &pick))
            goto out_rm;
        for (int i = 0; i < SCALE_T_COUNT; i++)
            samples[i][r] = t[i];
        if (maxrss > *rss)
            *rss = maxrss;
    }
    for (int i = 0; i < SCALE_T_COUNT; i++)
        med[i] = scale_median(samples[i], runs);
    ok = true;
out_rm:
    if (keep)
        printf("N=%zu: store kept in %s\n", nkeys, dir);
    else
        p11l_rmtree(dir);
    return ok;
}

/* Parse "10,100000". Out: sizes, *n. */
static bool scale_parse_sizes(size_t *sizes, int *n, const char *spec)
{
    const char *p = spec;

    *n = 0;
    while (*p != '\0') {
        char *end;
        unsigned long long v;

        errno = 0;
        v = strtoull(p, &end, 10);
        if (end == p || errno != 0 || v < 2 || v > 10000000 || *n == SCALE_MAX_SIZES)
            return false;
        sizes[(*n)++] = (size_t)v;
        p = end;
        if (*p == ',')
            p++;
        else if (*p != '\0')
            return false;
    }
    return *n > 0;
}

int main(int argc, char **argv)
{
    double med[SCALE_MAX_SIZES][SCALE_T_COUNT];
    long rss[SCALE_MAX_SIZES];
    size_t sizes[SCALE_MAX_SIZES];
    const char *spec = getenv("KH_SCALE_SIZES"), *runs_env = getenv("KH_SCALE_RUNS");
    bool keep = getenv("KH_KEEP_STORE") != NULL && strcmp(getenv("KH_KEEP_STORE"), "1") == 0;
    int nsizes, runs = 3;

    if (argc == 5 && strcmp(argv[1], "--measure") == 0)
        return scale_measure(argv[2], argv[3], argv[4]);
    if (argc != 1) {
        fprintf(stderr, "usage: %s (the test)\n"
                        "       %s --measure STORE_DIR FILLER_LABEL FILLER_ID_HEX\n",
                argv[0], argv[0]);
        return 2;
    }
    if (p11l_module_path() == NULL)
        return 1;
    if (!scale_parse_sizes(sizes, &nsizes, spec != NULL ? spec : "10,100000")) {
        fprintf(stderr, "bad KH_SCALE_SIZES (comma-separated key counts >= 2)\n");
        return 2;
    }
    if (runs_env != NULL) {
        runs = atoi(runs_env);
        if (runs < 1 || runs > SCALE_MAX_RUNS) {
            fprintf(stderr, "KH_SCALE_RUNS must be 1..%d\n", SCALE_MAX_RUNS);
            return 2;
        }
    }
    /* The measured process must not inherit a parent's lowered KDF silently: say what it is. */
    printf("scale: KEYHOLD_KDF_LOG2N=%s, %d fresh process(es) per size, median reported\n",
           getenv("KEYHOLD_KDF_LOG2N") ? getenv("KEYHOLD_KDF_LOG2N") : "(default)", runs);

    for (int k = 0; k < nsizes; k++) {
        if (!scale_one_size(med[k], &rss[k], sizes[k], runs, keep)) {
            fprintf(stderr, "scale: FAILED at N=%zu\n", sizes[k]);
            return 1;
        }
    }

    printf("\n%-28s", "step (median us)");
    for (int k = 0; k < nsizes; k++) {
        char head[32];

        snprintf(head, sizeof(head), "N=%zu", sizes[k]);
        printf(" %12s", head);
    }
    if (nsizes > 1)
        printf(" %9s", "ratio");
    printf("\n");
    for (int i = 0; i <= SCALE_T_COUNT; i++) {
        double first = 0, last = 0;

        printf("%-28s", i < SCALE_T_COUNT ? scale_step_names[i] : "total init..sign");
        for (int k = 0; k < nsizes; k++) {
            double v = 0;

            if (i < SCALE_T_COUNT) {
                v = med[k][i];
            } else {
                for (int j = SCALE_T_INIT; j <= SCALE_T_SIGN; j++)
                    v += med[k][j];
            }
            if (k == 0)
                first = v;
            last = v;
            printf(" %12.1f", v);
        }
        if (nsizes > 1)
            printf(" %9.2f", first > 0 ? last / first : 0.0);
        printf("\n");
    }
    printf("%-28s", "peak RSS, measured (KiB)");
    for (int k = 0; k < nsizes; k++)
        printf(" %12ld", rss[k]);
    if (nsizes > 1)
        printf(" %9.2f", rss[0] > 0 ? (double)rss[nsizes - 1] / (double)rss[0] : 0.0);
    printf("\nscale: PASS (timings are reported, not asserted)\n");
    return 0;
}

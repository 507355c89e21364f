/*
 * Known-answer vectors through the PKCS#11 API (the statically linked core,
 * reached by C_GetFunctionList): every Wycheproof case of the shared files
 * verified with the public key made a session object, BIP-340 signatures
 * reproduced and verified (messages that are not 32 bytes refused with
 * CKR_DATA_LEN_RANGE), and CKM_KH_ECDSA_RECOVERABLE checked against
 * libsecp256k1's recovery. test-crypto.c runs the same files one layer down.
 */
#include <stdlib.h>
#include <string.h>

#include <secp256k1.h>
#include <secp256k1_recovery.h>

#include "keyhold.h"
#include "pkcs11.h"
#include "testutil.h"
#include "vectors.h"

#define SO_PIN "vectors-so-pin"
#define USER_PIN "vectors-user-pin"
#define LABEL "keyhold vectors"

static const uint8_t oid_k1[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a };
static const uint8_t oid_p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
static const uint8_t oid_p384[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22 };
static const uint8_t oid_ed25519[] = { 0x06, 0x03, 0x2b, 0x65, 0x70 };

static CK_FUNCTION_LIST_PTR fl;
static CK_SESSION_HANDLE sess = CK_INVALID_HANDLE;
static secp256k1_context *secp;

static CK_BBOOL ck_true = CK_TRUE, ck_false = CK_FALSE;
static CK_OBJECT_CLASS cls_pub = CKO_PUBLIC_KEY, cls_priv = CKO_PRIVATE_KEY;

#define ATTR(t, v) { (t), (void *)(v), sizeof *(v) }

/* ---- setup: a fresh token in a temporary store, a user session ---- */

static bool token_slot(CK_SLOT_ID *out)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CK_TOKEN_INFO ti;

    KH_CHECK_RV(fl->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK);
    for (CK_ULONG i = 0; i < n; i++) {
        if (fl->C_GetTokenInfo(slots[i], &ti) == CKR_OK && (ti.flags & CKF_TOKEN_INITIALIZED) &&
            !memcmp(ti.label, LABEL, strlen(LABEL)) && ti.label[strlen(LABEL)] == ' ') {
            *out = slots[i];
            return true;
        }
    }
    return false;
}

/* Set up once; false (and a failure) when the module could not be brought up. */
static bool setup(void)
{
    static bool done, ok;
    CK_SLOT_ID slots[64], slot;
    CK_ULONG n = 64;
    CK_UTF8CHAR label[32];
    CK_SESSION_HANDLE so;

    if (done)
        return ok;
    done = true;
    secp = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    KH_CHECK(secp != NULL);
    setenv("KEYHOLD_STORE", kh_test_tmpdir(), 1);
    KH_CHECK_RV(C_GetFunctionList(&fl), CKR_OK);
    if (!fl)
        return false;
    KH_CHECK_RV(fl->C_Initialize(NULL), CKR_OK);
    KH_CHECK_RV(fl->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK);
    KH_CHECK(n >= 1);
    if (n < 1)
        return false;
    memset(label, ' ', sizeof label);
    memcpy(label, LABEL, strlen(LABEL));
    /* the free slot is the last one */
    KH_CHECK_RV(fl->C_InitToken(slots[n - 1], (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN), label), CKR_OK);
    if (!token_slot(&slot)) {
        kh_test_fail(__FILE__, __LINE__, "no token labelled \"%s\" after C_InitToken", LABEL);
        return false;
    }
    KH_CHECK_RV(fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &so), CKR_OK);
    KH_CHECK_RV(fl->C_Login(so, CKU_SO, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN)), CKR_OK);
    KH_CHECK_RV(fl->C_InitPIN(so, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN)), CKR_OK);
    KH_CHECK_RV(fl->C_Logout(so), CKR_OK);
    KH_CHECK_RV(fl->C_CloseSession(so), CKR_OK);
    KH_CHECK_RV(fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &sess), CKR_OK);
    KH_CHECK_RV(fl->C_Login(sess, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN)), CKR_OK);
    ok = sess != CK_INVALID_HANDLE;
    return ok;
}

static void teardown(void)
{
    if (fl) {
        if (sess != CK_INVALID_HANDLE) {
            fl->C_Logout(sess);
            fl->C_CloseSession(sess);
        }
        fl->C_Finalize(NULL);
    }
    if (secp)
        secp256k1_context_destroy(secp);
}

/* ---- verification through the module ---- */

static CK_RV verify_once(CK_MECHANISM *mech, CK_OBJECT_HANDLE key, const uint8_t *msg, size_t msg_len,
                         const uint8_t *sig, size_t sig_len)
{
    CK_RV rv = fl->C_VerifyInit(sess, mech, key);
    if (rv != CKR_OK)
        return rv;
    return fl->C_Verify(sess, (CK_BYTE_PTR)msg, msg_len, (CK_BYTE_PTR)sig, sig_len);
}

/* The same through C_VerifyUpdate (three pieces and an empty one) and C_VerifyFinal. */
static CK_RV verify_multi(CK_MECHANISM *mech, CK_OBJECT_HANDLE key, const uint8_t *msg, size_t msg_len,
                          const uint8_t *sig, size_t sig_len)
{
    size_t a = msg_len / 3, b = msg_len - msg_len / 3;
    CK_RV rv = fl->C_VerifyInit(sess, mech, key);

    if (rv == CKR_OK)
        rv = fl->C_VerifyUpdate(sess, (CK_BYTE_PTR)msg, a);
    if (rv == CKR_OK)
        rv = fl->C_VerifyUpdate(sess, (CK_BYTE_PTR)msg + a, b - a);
    if (rv == CKR_OK)
        rv = fl->C_VerifyUpdate(sess, (CK_BYTE_PTR)msg + b, 0);
    if (rv == CKR_OK)
        rv = fl->C_VerifyUpdate(sess, (CK_BYTE_PTR)msg + b, msg_len - b);
    if (rv == CKR_OK)
        rv = fl->C_VerifyFinal(sess, (CK_BYTE_PTR)sig, sig_len);
    return rv;
}

/* ---- Wycheproof ---- */

enum wp_kind { WP_ECDSA, WP_EDDSA, WP_RSA };

struct wp_ctx {
    const char *file;
    enum wp_kind kind;
    const char *curve, *sha;           /* what the file's groups must say */
    const uint8_t *oid;
    size_t oid_len;
    CK_MECHANISM mech;
    CK_RSA_PKCS_PSS_PARAMS pss;
    CK_OBJECT_HANDLE key;
    unsigned multi, multi_every;       /* cases also run multi-part: every multi_every-th */
};

static enum kh_vec_group wp_group(void *ctx, json_object *g)
{
    struct wp_ctx *w = ctx;
    json_object *pk = kh_vec_jobj(g, "publicKey");
    const char *curve = pk ? kh_vec_jstr(pk, "curve") : NULL, *sha = kh_vec_jstr(g, "sha");
    CK_KEY_TYPE kt = w->kind == WP_ECDSA ? CKK_EC : w->kind == WP_EDDSA ? CKK_EC_EDWARDS : CKK_RSA;
    CK_ATTRIBUTE t[8] = {
        ATTR(CKA_CLASS, &cls_pub), ATTR(CKA_KEY_TYPE, &kt), ATTR(CKA_TOKEN, &ck_false),
        ATTR(CKA_VERIFY, &ck_true),
    };
    CK_ULONG n = 4;
    uint8_t point[2 + 97], n_buf[512 + 1], e_buf[16];
    size_t len;
    CK_RV rv;

    w->key = CK_INVALID_HANDLE;
    if (!pk || (w->curve && (!curve || strcmp(curve, w->curve) != 0)) ||
        (w->sha && (!sha || strcmp(sha, w->sha) != 0)))
        return KH_VEC_GROUP_BAD;
    switch (w->kind) {
    case WP_ECDSA:
        /* CKA_EC_POINT: DER OCTET STRING of the uncompressed point */
        len = kh_vec_unhex_to(point + 2, sizeof point - 2, kh_vec_jstr(pk, "uncompressed"));
        if (!len || len > 127)
            return KH_VEC_GROUP_BAD;
        point[0] = 0x04;
        point[1] = (uint8_t)len;
        t[n++] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, (void *)w->oid, w->oid_len };
        t[n++] = (CK_ATTRIBUTE){ CKA_EC_POINT, point, len + 2 };
        break;
    case WP_EDDSA:
        /* CKA_EC_POINT: the 32-byte encoded point */
        len = kh_vec_unhex_to(point, sizeof point, kh_vec_jstr(pk, "pk"));
        if (len != 32)
            return KH_VEC_GROUP_BAD;
        t[n++] = (CK_ATTRIBUTE){ CKA_EC_PARAMS, (void *)w->oid, w->oid_len };
        t[n++] = (CK_ATTRIBUTE){ CKA_EC_POINT, point, len };
        break;
    case WP_RSA:
        len = kh_vec_unhex_to(n_buf, sizeof n_buf, kh_vec_jstr(pk, "modulus"));
        if (!len)
            return KH_VEC_GROUP_BAD;
        t[n++] = (CK_ATTRIBUTE){ CKA_MODULUS, n_buf, len };
        len = kh_vec_unhex_to(e_buf, sizeof e_buf, kh_vec_jstr(pk, "publicExponent"));
        if (!len)
            return KH_VEC_GROUP_BAD;
        t[n++] = (CK_ATTRIBUTE){ CKA_PUBLIC_EXPONENT, e_buf, len };
        if (w->mech.mechanism == CKM_SHA256_RSA_PKCS_PSS) {
            const char *mgf = kh_vec_jstr(g, "mgf"), *mgf_sha = kh_vec_jstr(g, "mgfSha");
            if (!mgf || strcmp(mgf, "MGF1") != 0 || !mgf_sha || strcmp(mgf_sha, "SHA-256") != 0 ||
                json_object_get_int(kh_vec_jobj(g, "sLen")) != 32)
                return KH_VEC_GROUP_BAD;
        }
        break;
    }
    rv = fl->C_CreateObject(sess, t, n, &w->key);
    if (rv != CKR_OK) {
        printf("# %s: C_CreateObject refused a group's key: 0x%lx\n", w->file, (unsigned long)rv);
        return KH_VEC_GROUP_KEY_REFUSED;
    }
    return KH_VEC_GROUP_OK;
}

static CK_RV wp_verify(void *ctx, int tc, const uint8_t *msg, size_t msg_len, const uint8_t *sig,
                       size_t sig_len)
{
    struct wp_ctx *w = ctx;
    CK_RV rv = verify_once(&w->mech, w->key, msg, msg_len, sig, sig_len);

    if (w->multi_every && tc % (int)w->multi_every == 1) {
        CK_RV rv2 = verify_multi(&w->mech, w->key, msg, msg_len, sig, sig_len);
        w->multi++;
        if (rv2 != rv)
            kh_test_fail(__FILE__, __LINE__, "%s tc %d: C_Verify gave 0x%lx, C_VerifyUpdate/Final 0x%lx",
                         w->file, tc, (unsigned long)rv, (unsigned long)rv2);
    }
    return rv;
}

static void wp_group_end(void *ctx)
{
    struct wp_ctx *w = ctx;
    if (w->key != CK_INVALID_HANDLE)
        KH_CHECK_RV(fl->C_DestroyObject(sess, w->key), CKR_OK);
    w->key = CK_INVALID_HANDLE;
}

static void wycheproof(struct wp_ctx *w)
{
    static const struct kh_vec_wp_ops ops = {
        .group = wp_group, .verify = wp_verify, .group_end = wp_group_end,
    };

    if (!setup())
        return;
    w->multi_every = 16;
    kh_vec_wycheproof(w->file, &ops, w, NULL);
    KH_CHECK(w->multi > 0);
    printf("# %s: %u cases also through C_VerifyUpdate/C_VerifyFinal\n", w->file, w->multi);
}

static void test_wp_k1(void)
{
    struct wp_ctx w = { .file = "wycheproof_ecdsa_secp256k1_sha256_p1363_test.json", .kind = WP_ECDSA,
                        .curve = "secp256k1", .sha = "SHA-256", .oid = oid_k1, .oid_len = sizeof oid_k1,
                        .mech = { CKM_ECDSA_SHA256, NULL, 0 } };
    wycheproof(&w);
}

static void test_wp_p256(void)
{
    struct wp_ctx w = { .file = "wycheproof_ecdsa_secp256r1_sha256_p1363_test.json", .kind = WP_ECDSA,
                        .curve = "secp256r1", .sha = "SHA-256", .oid = oid_p256, .oid_len = sizeof oid_p256,
                        .mech = { CKM_ECDSA_SHA256, NULL, 0 } };
    wycheproof(&w);
}

static void test_wp_p384(void)
{
    struct wp_ctx w = { .file = "wycheproof_ecdsa_secp384r1_sha384_p1363_test.json", .kind = WP_ECDSA,
                        .curve = "secp384r1", .sha = "SHA-384", .oid = oid_p384, .oid_len = sizeof oid_p384,
                        .mech = { CKM_ECDSA_SHA384, NULL, 0 } };
    wycheproof(&w);
}

static void test_wp_ed25519(void)
{
    struct wp_ctx w = { .file = "wycheproof_ed25519_test.json", .kind = WP_EDDSA,
                        .curve = "edwards25519", .oid = oid_ed25519, .oid_len = sizeof oid_ed25519,
                        .mech = { CKM_EDDSA, NULL, 0 } };
    wycheproof(&w);
}

static void test_wp_rsa_pkcs1(void)
{
    struct wp_ctx w = { .file = "wycheproof_rsa_signature_2048_sha256_test.json", .kind = WP_RSA,
                        .sha = "SHA-256", .mech = { CKM_SHA256_RSA_PKCS, NULL, 0 } };
    wycheproof(&w);
}

static void test_wp_rsa_pss(void)
{
    struct wp_ctx w = { .file = "wycheproof_rsa_pss_2048_sha256_mgf1_32_test.json", .kind = WP_RSA,
                        .sha = "SHA-256", .pss = { CKM_SHA256, CKG_MGF1_SHA256, 32 } };
    w.mech = (CK_MECHANISM){ CKM_SHA256_RSA_PKCS_PSS, &w.pss, sizeof w.pss };
    wycheproof(&w);
}

/* ---- BIP-340 ---- */

/* DER OCTET STRING of 04||X||Y, Y the even y of X; false when X is not on the curve. */
static bool lift_x(uint8_t der[67], const uint8_t x[32])
{
    uint8_t comp[33];
    secp256k1_pubkey pk;
    size_t len = 65;

    comp[0] = 0x02;
    memcpy(comp + 1, x, 32);
    if (!secp256k1_ec_pubkey_parse(secp, &pk, comp, sizeof comp))
        return false;
    der[0] = 0x04;
    der[1] = 65;
    secp256k1_ec_pubkey_serialize(secp, der + 2, &len, &pk, SECP256K1_EC_UNCOMPRESSED);
    return len == 65;
}

/* Sign the row's message with its secret key: the signature must be the row's. */
static bool bip340_sign(const struct kh_vec_bip340_row *r)
{
    CK_KEY_TYPE kt = CKK_EC;
    CK_ATTRIBUTE t[] = {
        ATTR(CKA_CLASS, &cls_priv), ATTR(CKA_KEY_TYPE, &kt), ATTR(CKA_TOKEN, &ck_false),
        ATTR(CKA_SIGN, &ck_true),
        { CKA_EC_PARAMS, (void *)oid_k1, sizeof oid_k1 },
        { CKA_VALUE, (void *)r->sk, 32 },
    };
    CK_MECHANISM mech = { CKM_KH_BIP340_SCHNORR, (void *)r->aux, 32 };
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    uint8_t sig[64 + 1];
    CK_ULONG sig_len = 0;
    CK_RV rv;

    rv = fl->C_CreateObject(sess, t, sizeof t / sizeof t[0], &key);
    if (rv != CKR_OK) {
        kh_test_fail(__FILE__, __LINE__, "bip340 row %s: C_CreateObject(private key) 0x%lx", r->index,
                     (unsigned long)rv);
        return false;
    }
    rv = fl->C_SignInit(sess, &mech, key);
    if (rv == CKR_OK)
        rv = fl->C_Sign(sess, (CK_BYTE_PTR)r->msg, 32, NULL, &sig_len);   /* length query */
    if (rv == CKR_OK && sig_len != 64)
        kh_test_fail(__FILE__, __LINE__, "bip340 row %s: length query says %lu", r->index,
                     (unsigned long)sig_len);
    sig_len = sizeof sig;
    if (rv == CKR_OK)
        rv = fl->C_Sign(sess, (CK_BYTE_PTR)r->msg, 32, sig, &sig_len);
    KH_CHECK_RV(fl->C_DestroyObject(sess, key), CKR_OK);
    if (rv == CKR_OK && sig_len == 64 && !memcmp(sig, r->sig, 64))
        return true;
    kh_test_fail(__FILE__, __LINE__, "bip340 row %s: signature differs (rv 0x%lx, %lu bytes)", r->index,
                 (unsigned long)rv, (unsigned long)sig_len);
    return false;
}

/*
 * Verify the row through the module, with its key lifted to der (NULL: X is
 * off the curve). True when the verdict is the expected one: the row's for a
 * 32-byte message, CKR_DATA_LEN_RANGE for any other length (the mechanism
 * signs 32 bytes).
 */
static bool bip340_verify(const struct kh_vec_bip340_row *r, const uint8_t *der, bool *multi_done)
{
    CK_KEY_TYPE kt = CKK_EC;
    CK_ATTRIBUTE t[] = {
        ATTR(CKA_CLASS, &cls_pub), ATTR(CKA_KEY_TYPE, &kt), ATTR(CKA_TOKEN, &ck_false),
        ATTR(CKA_VERIFY, &ck_true),
        { CKA_EC_PARAMS, (void *)oid_k1, sizeof oid_k1 },
        { CKA_EC_POINT, (void *)der, 67 },
    };
    CK_MECHANISM mech = { CKM_KH_BIP340_SCHNORR, NULL, 0 };
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    bool right;
    CK_RV rv;

    if (!der) {
        if (r->expect)
            kh_test_fail(__FILE__, __LINE__, "bip340 row %s: valid, but its X is not on the curve", r->index);
        return !r->expect;
    }
    rv = fl->C_CreateObject(sess, t, sizeof t / sizeof t[0], &key);
    if (rv != CKR_OK) {
        kh_test_fail(__FILE__, __LINE__, "bip340 row %s: C_CreateObject(public key) 0x%lx", r->index,
                     (unsigned long)rv);
        return false;
    }
    rv = verify_once(&mech, key, r->msg, r->msg_len, r->sig, 64);
    if (!*multi_done) {   /* once each way through C_VerifyUpdate/Final */
        CK_RV rv2 = verify_multi(&mech, key, r->msg, r->msg_len, r->sig, 64);
        if (rv2 != rv)
            kh_test_fail(__FILE__, __LINE__, "bip340 row %s: C_Verify 0x%lx, C_VerifyUpdate/Final 0x%lx",
                         r->index, (unsigned long)rv, (unsigned long)rv2);
        *multi_done = true;
    }
    KH_CHECK_RV(fl->C_DestroyObject(sess, key), CKR_OK);
    if (r->msg_len != 32)
        right = rv == CKR_DATA_LEN_RANGE;
    else
        right = r->expect ? rv == CKR_OK : (rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE);
    if (!right)
        kh_test_fail(__FILE__, __LINE__, "bip340 row %s (%s, %zu-byte message): expected %s, got 0x%lx",
                     r->index, r->comment, r->msg_len,
                     r->msg_len != 32 ? "CKR_DATA_LEN_RANGE" : r->expect ? "TRUE" : "FALSE",
                     (unsigned long)rv);
    return right;
}

static void test_bip340(void)
{
    FILE *f = fopen(kh_test_vector_path("bip340_test_vectors.csv"), "r");
    struct kh_vec_bip340_row r;
    unsigned rows = 0, signs = 0, signed_ok = 0, verify_ok = 0, verify_true = 0, verify_false = 0;
    unsigned off_curve = 0, not32 = 0, not32_refused = 0;
    bool multi_true = false, multi_false = false;

    KH_CHECK(f != NULL);
    if (!f || !setup()) {
        if (f)
            fclose(f);
        return;
    }
    while (kh_vec_bip340_next(f, &r)) {
        uint8_t der[67];
        bool on_curve = lift_x(der, r.pk);
        bool right;

        rows++;
        off_curve += !on_curve;
        if (r.msg_len != 32)
            not32++;
        else if (r.sk_len == 32) {
            signs++;
            signed_ok += bip340_sign(&r);
        }
        right = bip340_verify(&r, on_curve ? der : NULL, r.expect ? &multi_true : &multi_false);
        if (right && r.msg_len != 32)
            not32_refused++;
        else if (right) {
            verify_ok++;
            if (r.expect)
                verify_true++;
            else
                verify_false++;
        }
    }
    fclose(f);
    KH_CHECK(rows == 19 && signs > 0 && verify_true > 0 && verify_false > 0);
    KH_CHECK(multi_true && multi_false);
    printf("# bip340_test_vectors.csv: %u rows: %u/%u signatures reproduced, %u/%u verdicts right "
           "(%u valid, %u invalid, %u with X off the curve), %u/%u rows with non-32-byte messages "
           "refused (CKR_DATA_LEN_RANGE)\n",
           rows, signed_ok, signs, verify_ok, rows - not32, verify_true, verify_false, off_curve,
           not32_refused, not32);
}

/* ---- CKM_KH_ECDSA_RECOVERABLE ---- */

static void test_recoverable(void)
{
    static const uint8_t half_n[32] = {
        0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        0x5D, 0x57, 0x6E, 0x73, 0x57, 0xA4, 0x50, 0x1D, 0xDF, 0xE9, 0x2F, 0x46, 0x68, 0x1B, 0x20, 0xA0,
    };
    CK_KEY_TYPE kt = CKK_EC;
    CK_ATTRIBUTE pub_t[] = {
        ATTR(CKA_CLASS, &cls_pub), ATTR(CKA_KEY_TYPE, &kt), ATTR(CKA_TOKEN, &ck_false),
        ATTR(CKA_VERIFY, &ck_true),
        { CKA_EC_PARAMS, (void *)oid_k1, sizeof oid_k1 },
    };
    CK_ATTRIBUTE priv_t[] = {
        ATTR(CKA_CLASS, &cls_priv), ATTR(CKA_KEY_TYPE, &kt), ATTR(CKA_TOKEN, &ck_false),
        ATTR(CKA_SIGN, &ck_true),
    };
    CK_MECHANISM gen = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
    CK_MECHANISM rec = { CKM_KH_ECDSA_RECOVERABLE, NULL, 0 };
    CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 };
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE;
    uint8_t der[2 + 65 + 8], point[65];
    CK_ATTRIBUTE pt = { CKA_EC_POINT, der, sizeof der };
    unsigned v_count[2] = { 0, 0 }, rounds = 32;

    if (!setup())
        return;
    KH_CHECK_RV(fl->C_GenerateKeyPair(sess, &gen, pub_t, sizeof pub_t / sizeof pub_t[0], priv_t,
                                      sizeof priv_t / sizeof priv_t[0], &pub, &priv), CKR_OK);
    KH_CHECK_RV(fl->C_GetAttributeValue(sess, pub, &pt, 1), CKR_OK);
    /* DER OCTET STRING of the uncompressed point */
    KH_CHECK(pt.ulValueLen == 67 && der[0] == 0x04 && der[1] == 65 && der[2] == 0x04);
    if (pt.ulValueLen != 67)
        return;
    memcpy(point, der + 2, 65);

    for (unsigned i = 0; i < rounds; i++) {
        uint8_t digest[32], sig[65 + 1], got[65];
        CK_ULONG sig_len = 0;
        secp256k1_ecdsa_recoverable_signature rs;
        secp256k1_pubkey rk;
        size_t got_len = sizeof got;

        kh_test_rand(digest, sizeof digest);
        KH_CHECK_RV(fl->C_SignInit(sess, &rec, priv), CKR_OK);
        KH_CHECK_RV(fl->C_Sign(sess, digest, 32, NULL, &sig_len), CKR_OK);
        KH_CHECK(sig_len == 65);
        sig_len = sizeof sig;
        KH_CHECK_RV(fl->C_Sign(sess, digest, 32, sig, &sig_len), CKR_OK);
        KH_CHECK(sig_len == 65);
        if (sig_len != 65)
            break;
        KH_CHECK(sig[64] <= 1);
        if (sig[64] > 1)
            continue;
        v_count[sig[64]]++;
        KH_CHECK(memcmp(sig + 32, half_n, 32) <= 0);   /* low S */
        KH_CHECK(secp256k1_ecdsa_recoverable_signature_parse_compact(secp, &rs, sig, sig[64]));
        KH_CHECK(secp256k1_ecdsa_recover(secp, &rk, &rs, digest));
        secp256k1_ec_pubkey_serialize(secp, got, &got_len, &rk, SECP256K1_EC_UNCOMPRESSED);
        KH_CHECK(got_len == 65 && !memcmp(got, point, 65));
        /* r||s is an ordinary ECDSA signature of the key, and the 65 bytes verify */
        KH_CHECK_RV(verify_once(&ecdsa, pub, digest, 32, sig, 64), CKR_OK);
        KH_CHECK_RV(verify_once(&rec, pub, digest, 32, sig, 65), CKR_OK);
        sig[64] ^= 1;   /* the other recovery id names another key */
        KH_CHECK_RV(verify_once(&rec, pub, digest, 32, sig, 65), CKR_SIGNATURE_INVALID);
    }
    printf("# CKM_KH_ECDSA_RECOVERABLE: %u signatures recovered to the key (v=0: %u, v=1: %u)\n", rounds,
           v_count[0], v_count[1]);
    KH_CHECK_RV(fl->C_DestroyObject(sess, priv), CKR_OK);
    KH_CHECK_RV(fl->C_DestroyObject(sess, pub), CKR_OK);
}

int main(int argc, char **argv)
{
    kh_test_register("/vectors/wycheproof/ecdsa-secp256k1", test_wp_k1);
    kh_test_register("/vectors/wycheproof/ecdsa-p256", test_wp_p256);
    kh_test_register("/vectors/wycheproof/ecdsa-p384", test_wp_p384);
    kh_test_register("/vectors/wycheproof/ed25519", test_wp_ed25519);
    kh_test_register("/vectors/wycheproof/rsa-pkcs1", test_wp_rsa_pkcs1);
    kh_test_register("/vectors/wycheproof/rsa-pss", test_wp_rsa_pss);
    kh_test_register("/vectors/bip340", test_bip340);
    kh_test_register("/vectors/recoverable", test_recoverable);
    int rc = kh_test_run(argc, argv);
    teardown();
    return rc;
}

/*
 * Tests for kh_verifier (module/crypto.c): a public key parsed once gives
 * exactly kh_crypto_verify's answer. Every Wycheproof case of every key type
 * is checked both ways and the two results must be equal; round trips cover
 * each op (ECDSA, recoverable ECDSA, BIP-340, EdDSA, RSA PKCS#1 and PSS);
 * malformed keys are refused when the verifier is made; and one verifier is
 * used by several threads at once.
 */
#include "crypto.h"
#include "testutil.h"
#include "vectors.h"

#include <pthread.h>
#include <string.h>

/*
 * kh_crypto_verify(pub, ...) and a fresh verifier of pub must agree (a key the
 * verifier refuses must be one kh_crypto_verify refuses with the same code).
 * Returns: kh_crypto_verify's answer.
 */
static CK_RV verify_both(const kh_pubkey *pub, const kh_verifier *v, CK_RV v_rv, kh_sigop op,
                         const kh_sigparams *prm, const uint8_t *data, size_t len,
                         const uint8_t *sig, size_t siglen)
{
    CK_RV want = kh_crypto_verify(pub, op, prm, data, len, sig, siglen);
    CK_RV got = v ? kh_verifier_verify(v, op, prm, data, len, sig, siglen) : v_rv;

    KH_CHECK_RV(got, want);
    return want;
}

/* ---- Wycheproof: the same verdict both ways ---------------------------- */

/* Keys, hashes and data from vectors.c; each group's key also made a verifier. */
struct wp_ctx {
    kh_sigop op;
    kh_alg alg;
    struct kh_vec_wp_key k;
    kh_verifier *v;
    CK_RV v_rv;
};

static enum kh_vec_group wp_group(void *ctx, json_object *g)
{
    struct wp_ctx *w = ctx;

    w->v = NULL;
    if (!kh_vec_wp_key(&w->k, g, w->op, w->alg))
        return KH_VEC_GROUP_BAD;
    w->v_rv = kh_verifier_new(&w->v, &w->k.pub);
    KH_CHECK((w->v_rv == CKR_OK) == (w->v != NULL));
    return KH_VEC_GROUP_OK;
}

static void wp_group_end(void *ctx)
{
    struct wp_ctx *w = ctx;

    kh_verifier_free(w->v);
    w->v = NULL;
}

static CK_RV wp_verify(void *ctx, int tc, const uint8_t *msg, size_t msg_len, const uint8_t *sig,
                       size_t sig_len)
{
    struct wp_ctx *w = ctx;
    uint8_t buf[KH_VEC_WP_DATA_MAX];
    size_t len;
    const uint8_t *data = kh_vec_wp_data(&w->k, buf, msg, msg_len, &len);

    (void)tc;
    return verify_both(&w->k.pub, w->v, w->v_rv, w->k.op, kh_vec_wp_params(&w->k), data, len, sig,
                       sig_len);
}

static void wycheproof(const void *arg)
{
    static const struct kh_vec_wp_ops ops = { .group = wp_group, .verify = wp_verify,
                                              .group_end = wp_group_end };
    const struct kh_vec_wp_file *f = arg;
    struct wp_ctx w = { .op = f->op, .alg = f->alg };

    kh_vec_wycheproof(f->file, &ops, &w, NULL);
}

/* ---- round trips: every op, tampering rejected the same way ------------ */

static void roundtrip(const kh_softkey *key, const kh_pubkey *pub, kh_sigop op,
                      const kh_sigparams *prm, size_t len)
{
    uint8_t data[64], sig[KH_RSA_MAX_BYTES], bad[KH_RSA_MAX_BYTES];
    size_t siglen = sizeof sig;
    kh_verifier *v = NULL;

    kh_test_rand(data, len);
    KH_CHECK_RV(kh_verifier_new(&v, pub), CKR_OK);
    KH_CHECK_RV(kh_softkey_sign(key, op, prm, data, len, sig, &siglen), CKR_OK);
    KH_CHECK_RV(verify_both(pub, v, CKR_OK, op, prm, data, len, sig, siglen), CKR_OK);
    memcpy(bad, sig, siglen);
    bad[siglen / 3] ^= 0x01;
    KH_CHECK_RV(verify_both(pub, v, CKR_OK, op, prm, data, len, bad, siglen), CKR_SIGNATURE_INVALID);
    verify_both(pub, v, CKR_OK, op, prm, data, len, sig, siglen - 1);
    verify_both(pub, v, CKR_OK, op, prm, data, len, NULL, 0);
    if (len > 0) {
        data[0] ^= 0x01;   /* the first byte: ECDSA truncates long digests */
        KH_CHECK_RV(verify_both(pub, v, CKR_OK, op, prm, data, len, sig, siglen),
                    CKR_SIGNATURE_INVALID);
    }
    /* An op that does not fit the key. */
    verify_both(pub, v, CKR_OK, op == KH_OP_EDDSA ? KH_OP_ECDSA : KH_OP_EDDSA, prm, data, len,
                sig, siglen);
    kh_verifier_free(v);
}

static void gen_load(kh_alg alg, unsigned bits, kh_pubkey *pub, kh_softkey **key)
{
    uint8_t *sec = NULL;
    size_t sec_len = 0;

    KH_CHECK_RV(kh_crypto_generate(pub, &sec, &sec_len, alg, bits), CKR_OK);
    KH_CHECK_RV(kh_softkey_load(key, alg, sec, sec_len), CKR_OK);
    kh_crypto_secret_free(sec, sec_len);
}

static void test_roundtrip(void)
{
    kh_sigparams pss = { .pss_hash = KH_HASH_SHA256, .pss_mgf_hash = KH_HASH_SHA256,
                         .pss_salt_len = 32 };
    kh_pubkey pub;
    kh_softkey *key = NULL;

    gen_load(KH_ALG_SECP256K1, 0, &pub, &key);
    roundtrip(key, &pub, KH_OP_ECDSA, NULL, 32);
    roundtrip(key, &pub, KH_OP_ECDSA_RECOVER, NULL, 32);
    roundtrip(key, &pub, KH_OP_BIP340, NULL, 32);
    kh_softkey_free(key);
    gen_load(KH_ALG_P256, 0, &pub, &key);
    roundtrip(key, &pub, KH_OP_ECDSA, NULL, 32);
    roundtrip(key, &pub, KH_OP_ECDSA, NULL, 20);
    kh_softkey_free(key);
    gen_load(KH_ALG_P384, 0, &pub, &key);
    roundtrip(key, &pub, KH_OP_ECDSA, NULL, 48);
    kh_softkey_free(key);
    gen_load(KH_ALG_ED25519, 0, &pub, &key);
    roundtrip(key, &pub, KH_OP_EDDSA, NULL, 0);
    roundtrip(key, &pub, KH_OP_EDDSA, NULL, 64);
    kh_softkey_free(key);
    gen_load(KH_ALG_RSA, 2048, &pub, &key);
    roundtrip(key, &pub, KH_OP_RSA_PKCS, NULL, 51);
    roundtrip(key, &pub, KH_OP_RSA_PSS, &pss, 32);
    kh_softkey_free(key);
}

/* ---- malformed keys are refused when the verifier is made -------------- */

static void test_bad_keys(void)
{
    kh_pubkey pub;
    kh_verifier *v = (kh_verifier *)&pub;   /* must come back NULL */

    memset(&pub, 0, sizeof pub);
    pub.alg = KH_ALG_P256;
    pub.point_len = 65;
    pub.point[0] = 0x04;
    pub.point[64] = 7;                       /* (0, 7): not on P-256 */
    KH_CHECK_RV(kh_verifier_new(&v, &pub), CKR_PUBLIC_KEY_INVALID);
    KH_CHECK(v == NULL);
    pub.alg = KH_ALG_SECP256K1;
    KH_CHECK_RV(kh_verifier_new(&v, &pub), CKR_PUBLIC_KEY_INVALID);
    pub.alg = KH_ALG_P384;
    KH_CHECK_RV(kh_verifier_new(&v, &pub), CKR_PUBLIC_KEY_INVALID);
    pub.alg = KH_ALG_ED25519;
    pub.point_len = 31;
    KH_CHECK_RV(kh_verifier_new(&v, &pub), CKR_PUBLIC_KEY_INVALID);
    pub.alg = KH_ALG_RSA;
    pub.n_len = 128;                         /* 1024 bits */
    memset(pub.n, 0xc5, pub.n_len);
    pub.e_len = 3;
    memcpy(pub.e, "\x01\x00\x01", 3);
    KH_CHECK_RV(kh_verifier_new(&v, &pub), CKR_KEY_SIZE_RANGE);
    pub.alg = KH_ALG_NONE;
    KH_CHECK_RV(kh_verifier_new(&v, &pub), CKR_KEY_TYPE_INCONSISTENT);
    KH_CHECK_RV(kh_verifier_new(&v, NULL), CKR_ARGUMENTS_BAD);
    KH_CHECK_RV(kh_verifier_verify(NULL, KH_OP_ECDSA, NULL, pub.point, 32, pub.point, 64),
                CKR_ARGUMENTS_BAD);
    kh_verifier_free(NULL);
}

/* ---- one verifier, several threads ------------------------------------- */

struct thr_arg {
    const kh_softkey *key;
    const kh_verifier *v;
    kh_sigop op;
    int fails;
};

static void *thr_main(void *p)
{
    struct thr_arg *a = p;
    uint8_t d[32], sig[128];
    size_t l;

    for (int i = 0; i < 100; i++) {
        if (kh_random(d, sizeof d) != CKR_OK) {
            a->fails++;
            continue;
        }
        l = sizeof sig;
        if (kh_softkey_sign(a->key, a->op, NULL, d, 32, sig, &l) != CKR_OK ||
            kh_verifier_verify(a->v, a->op, NULL, d, 32, sig, l) != CKR_OK)
            a->fails++;
        sig[5] ^= 0x10;
        if (kh_verifier_verify(a->v, a->op, NULL, d, 32, sig, l) != CKR_SIGNATURE_INVALID)
            a->fails++;
    }
    return NULL;
}

static void test_threads(void)
{
    static const kh_alg algs[3] = { KH_ALG_SECP256K1, KH_ALG_P256, KH_ALG_ED25519 };
    static const kh_sigop ops[3] = { KH_OP_ECDSA, KH_OP_ECDSA, KH_OP_EDDSA };
    kh_pubkey pub[3];
    kh_softkey *key[3] = { NULL, NULL, NULL };
    kh_verifier *v[3] = { NULL, NULL, NULL };
    struct thr_arg args[6];
    pthread_t th[6];

    for (int k = 0; k < 3; k++) {
        gen_load(algs[k], 0, &pub[k], &key[k]);
        KH_CHECK_RV(kh_verifier_new(&v[k], &pub[k]), CKR_OK);
        if (!key[k] || !v[k])
            goto out;
    }
    for (int i = 0; i < 6; i++) {
        args[i] = (struct thr_arg){ .key = key[i % 3], .v = v[i % 3], .op = ops[i % 3] };
        KH_CHECK(pthread_create(&th[i], NULL, thr_main, &args[i]) == 0);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
        KH_CHECK(args[i].fails == 0);
    }
out:
    for (int k = 0; k < 3; k++) {
        kh_verifier_free(v[k]);
        kh_softkey_free(key[k]);
    }
}

int main(int argc, char **argv)
{
    kh_vec_wp_register("/verifier/wycheproof", wycheproof);
    kh_test_register("/verifier/roundtrip", test_roundtrip);
    kh_test_register("/verifier/bad-keys", test_bad_keys);
    kh_test_register("/verifier/threads", test_threads);
    return kh_test_run(argc, argv);
}

/*
 * Tests for module/crypto.c: known-answer vectors (Wycheproof, BIP-340,
 * RFC 8032, generator points), sign/verify round trips for every alg and op,
 * and the error contract (lengths, buffers, key types, ranges).
 */
#include "crypto.h"
#include "testutil.h"
#include "vectors.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <secp256k1.h>
#include <secp256k1_recovery.h>

/* ---- helpers ---------------------------------------------------------- */

/* Hex to a fixed buffer; returns the length (vectors.c). */
#define unhex_to kh_vec_unhex_to

static const char k1_n[] = "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141";
static const char k1_half_n[] = "7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0";
static const char k1_g[] = "0479BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798"
                           "483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8";
static const char k1_2g[] = "04C6047F9441ED7D6D3045406E95C07CD85C778E4B8CEF3CA7ABAC09B95C709EE5"
                            "1AE168FEA63DC339A3C58419466CEAEEF7F632653266D0E1236431A950CFE52A";
static const char p256_n[] = "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551";
static const char p256_g[] = "046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296"
                             "4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5";
static const char p384_n[] = "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
                             "581A0DB248B0A77AECEC196ACCC52973";
static const char p384_g[] = "04AA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A38"
                             "5502F25DBF55296C3A545E3872760AB73617DE4A96262C6F5D9E98BF9292DC29"
                             "F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F";

static kh_pubkey ec_pub(kh_alg alg, const char *hex)
{
    kh_pubkey p;
    memset(&p, 0, sizeof p);
    p.alg = alg;
    p.point_len = unhex_to(p.point, sizeof p.point, hex);
    return p;
}

/* Sign into a fresh buffer sized by kh_softkey_sig_len. */
static CK_RV sign(const kh_softkey *key, kh_sigop op, const kh_sigparams *prm,
                  const uint8_t *data, size_t len, uint8_t *sig, size_t *siglen)
{
    *siglen = kh_softkey_sig_len(key, op);
    return kh_softkey_sign(key, op, prm, data, len, sig, siglen);
}

/*
 * The full round trip for one key and op: length query, too-small buffer,
 * sign, verify, and rejection of tampered signature, data and lengths.
 */
static void roundtrip(const kh_softkey *key, const kh_pubkey *pub, kh_sigop op,
                      const kh_sigparams *prm, const uint8_t *data, size_t len)
{
    uint8_t sig[KH_RSA_MAX_BYTES + 1], bad[KH_RSA_MAX_BYTES + 1];
    uint8_t data2[128];
    size_t need = kh_crypto_sig_len(pub, op), siglen;

    KH_CHECK(need > 0);
    KH_CHECK(need == kh_softkey_sig_len(key, op));
    siglen = 0;
    KH_CHECK_RV(kh_softkey_sign(key, op, prm, data, len, NULL, &siglen), CKR_OK);
    KH_CHECK(siglen == need);
    siglen = need - 1;
    KH_CHECK_RV(kh_softkey_sign(key, op, prm, data, len, sig, &siglen), CKR_BUFFER_TOO_SMALL);
    KH_CHECK(siglen == need);
    siglen = sizeof sig;
    KH_CHECK_RV(kh_softkey_sign(key, op, prm, data, len, sig, &siglen), CKR_OK);
    KH_CHECK(siglen == need);
    KH_CHECK_RV(kh_crypto_verify(pub, op, prm, data, len, sig, siglen), CKR_OK);

    memcpy(bad, sig, siglen);
    bad[siglen / 3] ^= 0x01;
    KH_CHECK_RV(kh_crypto_verify(pub, op, prm, data, len, bad, siglen), CKR_SIGNATURE_INVALID);
    memcpy(bad, sig, siglen);
    bad[siglen - 2] ^= 0x80;
    KH_CHECK_RV(kh_crypto_verify(pub, op, prm, data, len, bad, siglen), CKR_SIGNATURE_INVALID);
    KH_CHECK_RV(kh_crypto_verify(pub, op, prm, data, len, sig, siglen - 1), CKR_SIGNATURE_LEN_RANGE);
    KH_CHECK_RV(kh_crypto_verify(pub, op, prm, data, len, sig, 0), CKR_SIGNATURE_LEN_RANGE);
    if (len > 0 && len <= sizeof data2) {
        memcpy(data2, data, len);
        data2[0] ^= 0x01;   /* the first byte: ECDSA truncates long digests */
        KH_CHECK_RV(kh_crypto_verify(pub, op, prm, data2, len, sig, siglen), CKR_SIGNATURE_INVALID);
    }
}

static void gen_load(kh_alg alg, unsigned bits, kh_pubkey *pub, kh_softkey **key)
{
    uint8_t *sec = NULL;
    size_t sec_len = 0;
    kh_pubkey pub2;

    KH_CHECK_RV(kh_crypto_generate(pub, &sec, &sec_len, alg, bits), CKR_OK);
    KH_CHECK(sec != NULL);
    KH_CHECK_RV(kh_softkey_load(key, alg, sec, sec_len), CKR_OK);
    /* import reproduces the public key */
    KH_CHECK_RV(kh_crypto_import(&pub2, NULL, NULL, alg, sec, sec_len), CKR_OK);
    KH_CHECK(memcmp(pub, &pub2, sizeof pub2) == 0);
    KH_CHECK_RV(kh_pubkey_check(pub), CKR_OK);
    kh_crypto_secret_free(sec, sec_len);
}

/* One RSA 2048 key shared by the RSA tests (generation is slow). */
static kh_pubkey rsa_pub;
static kh_softkey *rsa_key;
static uint8_t *rsa_der;
static size_t rsa_der_len;

static void rsa_shared(void)
{
    if (rsa_key)
        return;
    KH_CHECK_RV(kh_crypto_generate(&rsa_pub, &rsa_der, &rsa_der_len, KH_ALG_RSA, 2048), CKR_OK);
    KH_CHECK_RV(kh_softkey_load(&rsa_key, KH_ALG_RSA, rsa_der, rsa_der_len), CKR_OK);
}

/* ---- basics ----------------------------------------------------------- */

static void test_init(void)
{
    KH_CHECK_RV(kh_crypto_init(), CKR_OK);
    KH_CHECK_RV(kh_crypto_init(), CKR_OK);
}

static void test_hash(void)
{
    static const struct { kh_hash h; const char *abc; } kat[] = {
        { KH_HASH_SHA1, "a9993e364706816aba3e25717850c26c9cd0d89d" },
        { KH_HASH_SHA224, "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7" },
        { KH_HASH_SHA256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
        { KH_HASH_SHA384, "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
                          "8086072ba1e7cc2358baeca134c825a7" },
        { KH_HASH_SHA512, "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
                          "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f" },
    };
    uint8_t want[64], got[64], got2[64];
    kh_hash_ctx *ctx;
    size_t plen;

    for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
        size_t n = unhex_to(want, sizeof want, kat[i].abc);
        KH_CHECK(kh_hash_len(kat[i].h) == n);
        KH_CHECK_RV(kh_hash_oneshot(got, kat[i].h, (const uint8_t *)"abc", 3), CKR_OK);
        KH_CHECK_MEM(got, want, n);
        KH_CHECK_RV(kh_hash_new(&ctx, kat[i].h), CKR_OK);
        KH_CHECK_RV(kh_hash_update(ctx, (const uint8_t *)"a", 1), CKR_OK);
        KH_CHECK_RV(kh_hash_update(ctx, NULL, 0), CKR_OK);
        KH_CHECK_RV(kh_hash_update(ctx, (const uint8_t *)"bc", 2), CKR_OK);
        KH_CHECK_RV(kh_hash_final(ctx, got2), CKR_OK);
        kh_hash_free(ctx);
        KH_CHECK_MEM(got2, want, n);
        const uint8_t *pfx = kh_hash_digestinfo_prefix(kat[i].h, &plen);
        KH_CHECK(pfx != NULL);
        KH_CHECK(plen >= 15 && pfx[plen - 1] == n && pfx[1] == plen - 2 + n);
    }
    KH_CHECK(kh_hash_len(KH_HASH_NONE) == 0);
    KH_CHECK(kh_hash_digestinfo_prefix(KH_HASH_NONE, &plen) == NULL && plen == 0);
    KH_CHECK_RV(kh_hash_oneshot(got, KH_HASH_NONE, got, 1), CKR_MECHANISM_INVALID);
    KH_CHECK_RV(kh_hash_new(&ctx, KH_HASH_NONE), CKR_MECHANISM_INVALID);
    KH_CHECK(ctx == NULL);
    /* empty input */
    unhex_to(want, sizeof want, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    KH_CHECK_RV(kh_hash_oneshot(got, KH_HASH_SHA256, NULL, 0), CKR_OK);
    KH_CHECK_MEM(got, want, 32);
}

static void test_random(void)
{
    uint8_t a[64], b[64];
    KH_CHECK_RV(kh_random(a, sizeof a), CKR_OK);
    KH_CHECK_RV(kh_random(b, sizeof b), CKR_OK);
    KH_CHECK(memcmp(a, b, sizeof a) != 0);
    KH_CHECK_RV(kh_random(NULL, 0), CKR_OK);
}

/* ---- import ----------------------------------------------------------- */

/* scalar hex -> expected uncompressed point hex */
static void import_known(kh_alg alg, const char *scalar, const char *point)
{
    uint8_t sk[64], want[KH_EC_POINT_MAX];
    size_t sk_len = unhex_to(sk, sizeof sk, scalar);
    size_t want_len = unhex_to(want, sizeof want, point);
    uint8_t *norm = NULL;
    size_t norm_len = 0;
    kh_pubkey pub;

    KH_CHECK_RV(kh_crypto_import(&pub, &norm, &norm_len, alg, sk, sk_len), CKR_OK);
    KH_CHECK(pub.alg == alg);
    KH_CHECK(pub.point_len == want_len);
    KH_CHECK_MEM(pub.point, want, want_len);
    KH_CHECK(norm_len == (want_len - 1) / 2);
    kh_crypto_secret_free(norm, norm_len);
}

static void import_rejects(kh_alg alg, const char *order_hex)
{
    uint8_t buf[64], *norm = (uint8_t *)1;
    size_t n = unhex_to(buf, sizeof buf, order_hex), norm_len = 7;
    kh_pubkey pub;
    kh_softkey *key = (kh_softkey *)1;

    /* n itself, n + 1 (no carry out of the low byte), all-ones, zero, empty, too long */
    KH_CHECK_RV(kh_crypto_import(&pub, &norm, &norm_len, alg, buf, n), CKR_ATTRIBUTE_VALUE_INVALID);
    KH_CHECK(norm == NULL && norm_len == 0);
    KH_CHECK_RV(kh_softkey_load(&key, alg, buf, n), CKR_ATTRIBUTE_VALUE_INVALID);
    KH_CHECK(key == NULL);
    buf[n - 1]++;
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, alg, buf, n), CKR_ATTRIBUTE_VALUE_INVALID);
    memset(buf, 0xff, n);
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, alg, buf, n), CKR_ATTRIBUTE_VALUE_INVALID);
    memset(buf, 0, n);
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, alg, buf, n), CKR_ATTRIBUTE_VALUE_INVALID);
    KH_CHECK_RV(kh_softkey_load(&key, alg, buf, n), CKR_ATTRIBUTE_VALUE_INVALID);
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, alg, buf, 0), CKR_ATTRIBUTE_VALUE_INVALID);
    buf[0] = 1;
    buf[n] = 1;
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, alg, buf, n + 1), CKR_ATTRIBUTE_VALUE_INVALID);
    /* n - 1 is the largest valid scalar */
    n = unhex_to(buf, sizeof buf, order_hex);
    buf[n - 1]--;
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, alg, buf, n), CKR_OK);
}

static void test_import_secp256k1(void)
{
    import_known(KH_ALG_SECP256K1, "01", k1_g);
    import_known(KH_ALG_SECP256K1, "0000000000000000000000000000000000000000000000000000000000000002", k1_2g);
    /* a leading zero byte beyond the field size is tolerated */
    import_known(KH_ALG_SECP256K1, "000000000000000000000000000000000000000000000000000000000000000001", k1_g);
    import_rejects(KH_ALG_SECP256K1, k1_n);
}

static void test_import_p256(void)
{
    import_known(KH_ALG_P256, "0000000000000000000000000000000000000000000000000000000000000001", p256_g);
    import_known(KH_ALG_P256, "01", p256_g);
    import_rejects(KH_ALG_P256, p256_n);
}

static void test_import_p384(void)
{
    import_known(KH_ALG_P384, "01", p384_g);
    import_rejects(KH_ALG_P384, p384_n);
}

static void test_import_ed25519(void)
{
    /* RFC 8032, section 7.1, TEST 1 */
    uint8_t seed[32], want_pub[32], want_sig[64], sig[64];
    size_t siglen = sizeof sig;
    kh_pubkey pub;
    kh_softkey *key = NULL;

    unhex_to(seed, 32, "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    unhex_to(want_pub, 32, "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    unhex_to(want_sig, 64, "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
                           "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b");
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, KH_ALG_ED25519, seed, 32), CKR_OK);
    KH_CHECK(pub.alg == KH_ALG_ED25519 && pub.point_len == 32);
    KH_CHECK_MEM(pub.point, want_pub, 32);
    KH_CHECK_RV(kh_softkey_load(&key, KH_ALG_ED25519, seed, 32), CKR_OK);
    /* twice: the second signature reuses the key's ready signing context */
    for (int i = 0; i < 2; i++) {
        siglen = sizeof sig;
        KH_CHECK_RV(kh_softkey_sign(key, KH_OP_EDDSA, NULL, NULL, 0, sig, &siglen), CKR_OK);
        KH_CHECK(siglen == 64);
        KH_CHECK_MEM(sig, want_sig, 64);
        KH_CHECK_RV(kh_crypto_verify(&pub, KH_OP_EDDSA, NULL, NULL, 0, sig, 64), CKR_OK);
    }
    kh_softkey_free(key);
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, KH_ALG_ED25519, seed, 31), CKR_ATTRIBUTE_VALUE_INVALID);
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, KH_ALG_ED25519, seed, 0), CKR_ATTRIBUTE_VALUE_INVALID);
}

static BIGNUM *rsa_bn(EVP_PKEY *pk, const char *name)
{
    BIGNUM *bn = NULL;
    KH_CHECK(EVP_PKEY_get_bn_param(pk, name, &bn) == 1);
    return bn;
}

static void test_import_rsa(void)
{
    static const char *const names[8] = {
        OSSL_PKEY_PARAM_RSA_N, OSSL_PKEY_PARAM_RSA_E, OSSL_PKEY_PARAM_RSA_D,
        OSSL_PKEY_PARAM_RSA_FACTOR1, OSSL_PKEY_PARAM_RSA_FACTOR2,
        OSSL_PKEY_PARAM_RSA_EXPONENT1, OSSL_PKEY_PARAM_RSA_EXPONENT2,
        OSSL_PKEY_PARAM_RSA_COEFFICIENT1,
    };
    uint8_t comp[8][KH_RSA_MAX_BYTES];
    size_t clen[8];
    uint8_t *norm = NULL, *der2 = NULL, *bad;
    size_t norm_len = 0, der2_len = 0;
    const unsigned char *p;
    EVP_PKEY *pk;
    kh_pubkey pub;

    rsa_shared();
    if (!rsa_key)
        return;
    KH_CHECK(rsa_pub.alg == KH_ALG_RSA && rsa_pub.n_len == 256 && rsa_pub.e_len == 3);
    KH_CHECK(rsa_pub.e[0] == 1 && rsa_pub.e[1] == 0 && rsa_pub.e[2] == 1);
    KH_CHECK_RV(kh_crypto_import(&pub, &norm, &norm_len, KH_ALG_RSA, rsa_der, rsa_der_len), CKR_OK);
    KH_CHECK(memcmp(&pub, &rsa_pub, sizeof pub) == 0);
    KH_CHECK(norm_len == rsa_der_len && memcmp(norm, rsa_der, norm_len) == 0);
    kh_crypto_secret_free(norm, norm_len);

    /* components -> the same DER */
    p = rsa_der;
    pk = d2i_PrivateKey(EVP_PKEY_RSA, NULL, &p, (long)rsa_der_len);
    KH_CHECK(pk != NULL);
    if (!pk)
        return;
    for (int i = 0; i < 8; i++) {
        BIGNUM *bn = rsa_bn(pk, names[i]);
        clen[i] = bn ? (size_t)BN_bn2bin(bn, comp[i]) : 0;
        BN_clear_free(bn);
    }
    EVP_PKEY_free(pk);
    KH_CHECK_RV(kh_crypto_rsa_from_components(&der2, &der2_len, comp[0], clen[0], comp[1], clen[1],
                                              comp[2], clen[2], comp[3], clen[3], comp[4], clen[4],
                                              comp[5], clen[5], comp[6], clen[6], comp[7], clen[7]),
                CKR_OK);
    KH_CHECK(der2_len == rsa_der_len && der2 && memcmp(der2, rsa_der, der2_len) == 0);
    kh_crypto_secret_free(der2, der2_len);
    /* an inconsistent component (d + 2) is refused */
    comp[2][clen[2] - 1] ^= 0x02;
    KH_CHECK_RV(kh_crypto_rsa_from_components(&der2, &der2_len, comp[0], clen[0], comp[1], clen[1],
                                              comp[2], clen[2], comp[3], clen[3], comp[4], clen[4],
                                              comp[5], clen[5], comp[6], clen[6], comp[7], clen[7]),
                CKR_ATTRIBUTE_VALUE_INVALID);
    KH_CHECK(der2 == NULL && der2_len == 0);
    KH_CHECK_RV(kh_crypto_rsa_from_components(&der2, &der2_len, comp[0], clen[0], comp[1], clen[1],
                                              comp[2], 0, comp[3], clen[3], comp[4], clen[4],
                                              comp[5], clen[5], comp[6], clen[6], comp[7], clen[7]),
                CKR_ATTRIBUTE_VALUE_INVALID);

    /* malformed DER: truncated, trailing byte, garbage, a flipped modulus bit */
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, KH_ALG_RSA, rsa_der, rsa_der_len - 1),
                CKR_ATTRIBUTE_VALUE_INVALID);
    bad = malloc(rsa_der_len + 1);
    KH_CHECK(bad != NULL);
    if (!bad)
        return;
    memcpy(bad, rsa_der, rsa_der_len);
    bad[rsa_der_len] = 0;
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, KH_ALG_RSA, bad, rsa_der_len + 1),
                CKR_ATTRIBUTE_VALUE_INVALID);
    bad[40] ^= 0x10;    /* inside n */
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, KH_ALG_RSA, bad, rsa_der_len),
                CKR_ATTRIBUTE_VALUE_INVALID);
    memset(bad, 0x30, 64);
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, KH_ALG_RSA, bad, 64), CKR_ATTRIBUTE_VALUE_INVALID);
    KH_CHECK_RV(kh_crypto_import(&pub, NULL, NULL, KH_ALG_RSA, bad, 0), CKR_ATTRIBUTE_VALUE_INVALID);
    free(bad);
}

/* ---- round trips ------------------------------------------------------ */

static void test_roundtrip_secp256k1(void)
{
    kh_pubkey pub;
    kh_softkey *key = NULL;
    uint8_t d32[32], d48[48], aux[32];
    kh_sigparams prm = { .aux = aux };

    gen_load(KH_ALG_SECP256K1, 0, &pub, &key);
    if (!key)
        return;
    KH_CHECK(pub.point_len == 65 && pub.point[0] == 4);
    kh_test_rand(d32, sizeof d32);
    kh_test_rand(d48, sizeof d48);
    kh_test_rand(aux, sizeof aux);
    roundtrip(key, &pub, KH_OP_ECDSA, NULL, d32, 32);
    roundtrip(key, &pub, KH_OP_ECDSA, NULL, d48, 48);
    roundtrip(key, &pub, KH_OP_ECDSA, NULL, d32, 20);
    roundtrip(key, &pub, KH_OP_ECDSA_RECOVER, NULL, d32, 32);
    roundtrip(key, &pub, KH_OP_BIP340, NULL, d32, 32);
    roundtrip(key, &pub, KH_OP_BIP340, &prm, d32, 32);
    kh_softkey_free(key);
}

static void test_roundtrip_ec(kh_alg alg, size_t flen)
{
    kh_pubkey pub;
    kh_softkey *key = NULL;
    uint8_t d[64];

    gen_load(alg, 0, &pub, &key);
    if (!key)
        return;
    KH_CHECK(pub.point_len == 1 + 2 * flen && pub.point[0] == 4);
    KH_CHECK(kh_crypto_sig_len(&pub, KH_OP_ECDSA) == 2 * flen);
    kh_test_rand(d, sizeof d);
    roundtrip(key, &pub, KH_OP_ECDSA, NULL, d, 32);
    roundtrip(key, &pub, KH_OP_ECDSA, NULL, d, 48);
    roundtrip(key, &pub, KH_OP_ECDSA, NULL, d, 64);
    roundtrip(key, &pub, KH_OP_ECDSA, NULL, d, 20);
    kh_softkey_free(key);
}

static void test_roundtrip_p256(void) { test_roundtrip_ec(KH_ALG_P256, 32); }
static void test_roundtrip_p384(void) { test_roundtrip_ec(KH_ALG_P384, 48); }

static void test_roundtrip_ed25519(void)
{
    kh_pubkey pub;
    kh_softkey *key = NULL;
    uint8_t m[100];
    uint8_t sig1[64], sig2[64];
    size_t l1, l2;

    gen_load(KH_ALG_ED25519, 0, &pub, &key);
    if (!key)
        return;
    kh_test_rand(m, sizeof m);
    roundtrip(key, &pub, KH_OP_EDDSA, NULL, m, sizeof m);
    roundtrip(key, &pub, KH_OP_EDDSA, NULL, m, 1);
    /* deterministic */
    KH_CHECK_RV(sign(key, KH_OP_EDDSA, NULL, m, 33, sig1, &l1), CKR_OK);
    KH_CHECK_RV(sign(key, KH_OP_EDDSA, NULL, m, 33, sig2, &l2), CKR_OK);
    KH_CHECK(l1 == 64 && l2 == 64 && memcmp(sig1, sig2, 64) == 0);
    kh_softkey_free(key);
}

static void rsa_ops(const kh_softkey *key, const kh_pubkey *pub)
{
    uint8_t msg[] = "keyhold rsa";
    uint8_t di[19 + 64], dig[64];
    size_t plen;
    const uint8_t *pfx = kh_hash_digestinfo_prefix(KH_HASH_SHA256, &plen);
    kh_sigparams pss256 = { .pss_hash = KH_HASH_SHA256, .pss_mgf_hash = KH_HASH_SHA256, .pss_salt_len = 32 };
    kh_sigparams pss384 = { .pss_hash = KH_HASH_SHA384, .pss_mgf_hash = KH_HASH_SHA256, .pss_salt_len = 48 };
    kh_sigparams pss512 = { .pss_hash = KH_HASH_SHA512, .pss_mgf_hash = KH_HASH_SHA512, .pss_salt_len = 0 };

    KH_CHECK_RV(kh_hash_oneshot(dig, KH_HASH_SHA256, msg, sizeof msg), CKR_OK);
    memcpy(di, pfx, plen);
    memcpy(di + plen, dig, 32);
    roundtrip(key, pub, KH_OP_RSA_PKCS, NULL, di, plen + 32);
    roundtrip(key, pub, KH_OP_RSA_PKCS, NULL, msg, sizeof msg);   /* raw CKM_RSA_PKCS */
    roundtrip(key, pub, KH_OP_RSA_PSS, &pss256, dig, 32);
    KH_CHECK_RV(kh_hash_oneshot(dig, KH_HASH_SHA384, msg, sizeof msg), CKR_OK);
    roundtrip(key, pub, KH_OP_RSA_PSS, &pss384, dig, 48);
    KH_CHECK_RV(kh_hash_oneshot(dig, KH_HASH_SHA512, msg, sizeof msg), CKR_OK);
    roundtrip(key, pub, KH_OP_RSA_PSS, &pss512, dig, 64);
}

static void test_roundtrip_rsa2048(void)
{
    rsa_shared();
    if (rsa_key)
        rsa_ops(rsa_key, &rsa_pub);
}

static void test_roundtrip_rsa_big(unsigned bits)
{
    kh_pubkey pub;
    kh_softkey *key = NULL;

    gen_load(KH_ALG_RSA, bits, &pub, &key);
    if (!key)
        return;
    KH_CHECK(pub.n_len == bits / 8);
    KH_CHECK(kh_crypto_sig_len(&pub, KH_OP_RSA_PKCS) == bits / 8);
    rsa_ops(key, &pub);
    kh_softkey_free(key);
}

static void test_roundtrip_rsa3072(void) { test_roundtrip_rsa_big(3072); }
static void test_roundtrip_rsa4096(void) { test_roundtrip_rsa_big(4096); }

/* ---- secp256k1 specifics ---------------------------------------------- */

/* out = n - s (32-byte big-endian) */
static void k1_negate_s(uint8_t out[32], const uint8_t s[32])
{
    uint8_t n[32];
    int borrow = 0;

    unhex_to(n, 32, k1_n);
    for (int i = 31; i >= 0; i--) {
        int v = n[i] - s[i] - borrow;
        borrow = v < 0;
        out[i] = (uint8_t)(v + (borrow ? 256 : 0));
    }
}

static void test_k1_low_s(void)
{
    kh_pubkey pub;
    kh_softkey *key = NULL;
    uint8_t half[32], d[32], sig[65], hs[65];
    size_t siglen;
    unsigned high = 0;

    unhex_to(half, 32, k1_half_n);
    gen_load(KH_ALG_SECP256K1, 0, &pub, &key);
    if (!key)
        return;
    for (int i = 0; i < 200; i++) {
        kh_test_rand(d, sizeof d);
        KH_CHECK_RV(sign(key, KH_OP_ECDSA, NULL, d, 32, sig, &siglen), CKR_OK);
        if (memcmp(sig + 32, half, 32) > 0)
            high++;
        /* the high-S twin verifies under SEC1 semantics ... */
        memcpy(hs, sig, 32);
        k1_negate_s(hs + 32, sig + 32);
        KH_CHECK_RV(kh_crypto_verify(&pub, KH_OP_ECDSA, NULL, d, 32, hs, 64), CKR_OK);
        /* ... but not as a recoverable signature, which is low-S only */
        KH_CHECK_RV(sign(key, KH_OP_ECDSA_RECOVER, NULL, d, 32, sig, &siglen), CKR_OK);
        KH_CHECK(memcmp(sig + 32, half, 32) <= 0);
        memcpy(hs, sig, 65);
        k1_negate_s(hs + 32, sig + 32);
        hs[64] ^= 1;
        KH_CHECK_RV(kh_crypto_verify(&pub, KH_OP_ECDSA_RECOVER, NULL, d, 32, hs, 65), CKR_SIGNATURE_INVALID);
    }
    KH_CHECK(high == 0);
    kh_softkey_free(key);
}

/* BIP-340 without an aux parameter draws fresh aux for every signature
 * (across the per-thread pool's refills): same message, new signature. */
static void test_bip340_fresh_aux(void)
{
    kh_pubkey pub;
    kh_softkey *key = NULL;
    uint8_t m[32], sigs[80][64];
    size_t l;

    gen_load(KH_ALG_SECP256K1, 0, &pub, &key);
    if (!key)
        return;
    kh_test_rand(m, sizeof m);
    for (int i = 0; i < 80; i++) {
        KH_CHECK_RV(sign(key, KH_OP_BIP340, NULL, m, 32, sigs[i], &l), CKR_OK);
        KH_CHECK(l == 64);
        KH_CHECK_RV(kh_crypto_verify(&pub, KH_OP_BIP340, NULL, m, 32, sigs[i], 64), CKR_OK);
        for (int j = 0; j < i; j++)
            KH_CHECK(memcmp(sigs[i], sigs[j], 64) != 0);
    }
    kh_softkey_free(key);
}

static void test_k1_recover(void)
{
    secp256k1_context *ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    kh_pubkey pub;
    kh_softkey *key = NULL;
    uint8_t d[32], sig[65], ser[65];
    size_t siglen, serlen;
    unsigned v1 = 0;

    gen_load(KH_ALG_SECP256K1, 0, &pub, &key);
    if (!key)
        return;
    for (int i = 0; i < 64; i++) {
        secp256k1_ecdsa_recoverable_signature rs;
        secp256k1_pubkey pk;

        kh_test_rand(d, sizeof d);
        KH_CHECK_RV(sign(key, KH_OP_ECDSA_RECOVER, NULL, d, 32, sig, &siglen), CKR_OK);
        KH_CHECK(siglen == 65 && sig[64] <= 1);
        v1 += sig[64];
        KH_CHECK(secp256k1_ecdsa_recoverable_signature_parse_compact(ctx, &rs, sig, sig[64]) == 1);
        KH_CHECK(secp256k1_ecdsa_recover(ctx, &pk, &rs, d) == 1);
        serlen = sizeof ser;
        secp256k1_ec_pubkey_serialize(ctx, ser, &serlen, &pk, SECP256K1_EC_UNCOMPRESSED);
        KH_CHECK(serlen == 65 && memcmp(ser, pub.point, 65) == 0);
        /* r||s alone is a plain ECDSA signature */
        KH_CHECK_RV(kh_crypto_verify(&pub, KH_OP_ECDSA, NULL, d, 32, sig, 64), CKR_OK);
        /* the wrong v recovers another key */
        sig[64] ^= 1;
        KH_CHECK_RV(kh_crypto_verify(&pub, KH_OP_ECDSA_RECOVER, NULL, d, 32, sig, 65), CKR_SIGNATURE_INVALID);
        sig[64] = 27;
        KH_CHECK_RV(kh_crypto_verify(&pub, KH_OP_ECDSA_RECOVER, NULL, d, 32, sig, 65), CKR_SIGNATURE_INVALID);
    }
    /* both parities show up in 64 signatures (fails with probability 2^-63) */
    KH_CHECK(v1 > 0 && v1 < 64);
    kh_softkey_free(key);
    secp256k1_context_destroy(ctx);
}

/* Digest longer than the order is truncated, shorter is left-padded (FIPS 186). */
static void test_k1_truncation(void)
{
    kh_pubkey pub;
    kh_softkey *key = NULL;
    uint8_t d[48], pad[32], s1[64], s2[64];
    size_t l1, l2;

    gen_load(KH_ALG_SECP256K1, 0, &pub, &key);
    if (!key)
        return;
    kh_test_rand(d, sizeof d);
    KH_CHECK_RV(sign(key, KH_OP_ECDSA, NULL, d, 48, s1, &l1), CKR_OK);
    KH_CHECK_RV(sign(key, KH_OP_ECDSA, NULL, d, 32, s2, &l2), CKR_OK);
    KH_CHECK(memcmp(s1, s2, 64) == 0);   /* RFC 6979: same integer, same signature */
    memset(pad, 0, 12);
    memcpy(pad + 12, d, 20);
    KH_CHECK_RV(sign(key, KH_OP_ECDSA, NULL, d, 20, s1, &l1), CKR_OK);
    KH_CHECK_RV(sign(key, KH_OP_ECDSA, NULL, pad, 32, s2, &l2), CKR_OK);
    KH_CHECK(memcmp(s1, s2, 64) == 0);
    KH_CHECK_RV(kh_crypto_verify(&pub, KH_OP_ECDSA, NULL, pad, 32, s1, 64), CKR_OK);
    kh_softkey_free(key);
}

static void test_p256_truncation(void)
{
    kh_pubkey pub;
    kh_softkey *key = NULL;
    uint8_t d[64], s[64];
    size_t l;

    gen_load(KH_ALG_P256, 0, &pub, &key);
    if (!key)
        return;
    kh_test_rand(d, sizeof d);
    KH_CHECK_RV(sign(key, KH_OP_ECDSA, NULL, d, 64, s, &l), CKR_OK);
    KH_CHECK_RV(kh_crypto_verify(&pub, KH_OP_ECDSA, NULL, d, 32, s, 64), CKR_OK);
    kh_softkey_free(key);
}

/* ---- error contract --------------------------------------------------- */

static void test_errors_data_len(void)
{
    kh_pubkey k1, p256;
    kh_softkey *kk = NULL, *kp = NULL;
    uint8_t d[600], sig[KH_RSA_MAX_BYTES];
    size_t l;
    kh_sigparams pss = { .pss_hash = KH_HASH_SHA256, .pss_mgf_hash = KH_HASH_SHA256, .pss_salt_len = 32 };

    memset(d, 0x5a, sizeof d);
    memset(sig, 0, sizeof sig);
    gen_load(KH_ALG_SECP256K1, 0, &k1, &kk);
    gen_load(KH_ALG_P256, 0, &p256, &kp);
    rsa_shared();
    if (!kk || !kp || !rsa_key)
        goto out;
    KH_CHECK_RV(sign(kk, KH_OP_BIP340, NULL, d, 31, sig, &l), CKR_DATA_LEN_RANGE);
    KH_CHECK_RV(sign(kk, KH_OP_BIP340, NULL, d, 33, sig, &l), CKR_DATA_LEN_RANGE);
    KH_CHECK_RV(sign(kk, KH_OP_ECDSA_RECOVER, NULL, d, 31, sig, &l), CKR_DATA_LEN_RANGE);
    KH_CHECK_RV(sign(kk, KH_OP_ECDSA, NULL, d, 0, sig, &l), CKR_DATA_LEN_RANGE);
    KH_CHECK_RV(sign(kp, KH_OP_ECDSA, NULL, d, 0, sig, &l), CKR_DATA_LEN_RANGE);
    KH_CHECK_RV(kh_crypto_verify(&k1, KH_OP_BIP340, NULL, d, 31, sig, 64), CKR_DATA_LEN_RANGE);
    KH_CHECK_RV(kh_crypto_verify(&k1, KH_OP_ECDSA_RECOVER, NULL, d, 33, sig, 65), CKR_DATA_LEN_RANGE);
    KH_CHECK_RV(kh_crypto_verify(&p256, KH_OP_ECDSA, NULL, d, 0, sig, 64), CKR_DATA_LEN_RANGE);
    /* RSA: PKCS#1 v1.5 takes at most k - 11 bytes; PSS exactly one digest */
    KH_CHECK_RV(sign(rsa_key, KH_OP_RSA_PKCS, NULL, d, 245, sig, &l), CKR_OK);
    KH_CHECK_RV(sign(rsa_key, KH_OP_RSA_PKCS, NULL, d, 246, sig, &l), CKR_DATA_LEN_RANGE);
    KH_CHECK(sig[0] == 0 && sig[100] == 0);   /* output cleared on failure */
    KH_CHECK_RV(kh_crypto_verify(&rsa_pub, KH_OP_RSA_PKCS, NULL, d, 246, sig, 256), CKR_DATA_LEN_RANGE);
    KH_CHECK_RV(sign(rsa_key, KH_OP_RSA_PSS, &pss, d, 31, sig, &l), CKR_DATA_LEN_RANGE);
    KH_CHECK_RV(sign(rsa_key, KH_OP_RSA_PSS, &pss, d, 48, sig, &l), CKR_DATA_LEN_RANGE);
    KH_CHECK_RV(kh_crypto_verify(&rsa_pub, KH_OP_RSA_PSS, &pss, d, 33, sig, 256), CKR_DATA_LEN_RANGE);
out:
    kh_softkey_free(kk);
    kh_softkey_free(kp);
}

static void test_errors_params(void)
{
    uint8_t d[64], sig[KH_RSA_MAX_BYTES];
    size_t l;
    kh_sigparams pss = { .pss_hash = KH_HASH_SHA256, .pss_mgf_hash = KH_HASH_SHA256 };

    rsa_shared();
    if (!rsa_key)
        return;
    memset(d, 1, sizeof d);
    /* emLen = 256 for 2048 bits: salt <= 256 - 32 - 2 */
    pss.pss_salt_len = 222;
    KH_CHECK_RV(sign(rsa_key, KH_OP_RSA_PSS, &pss, d, 32, sig, &l), CKR_OK);
    KH_CHECK_RV(kh_crypto_verify(&rsa_pub, KH_OP_RSA_PSS, &pss, d, 32, sig, l), CKR_OK);
    pss.pss_salt_len = 223;
    KH_CHECK_RV(sign(rsa_key, KH_OP_RSA_PSS, &pss, d, 32, sig, &l), CKR_MECHANISM_PARAM_INVALID);
    /* a salt length other than the signer's does not verify */
    pss.pss_salt_len = 32;
    KH_CHECK_RV(sign(rsa_key, KH_OP_RSA_PSS, &pss, d, 32, sig, &l), CKR_OK);
    pss.pss_salt_len = 20;
    KH_CHECK_RV(kh_crypto_verify(&rsa_pub, KH_OP_RSA_PSS, &pss, d, 32, sig, l), CKR_SIGNATURE_INVALID);
    pss.pss_hash = KH_HASH_NONE;
    KH_CHECK_RV(sign(rsa_key, KH_OP_RSA_PSS, &pss, d, 32, sig, &l), CKR_MECHANISM_PARAM_INVALID);
    pss.pss_hash = KH_HASH_SHA256;
    pss.pss_mgf_hash = KH_HASH_NONE;
    KH_CHECK_RV(sign(rsa_key, KH_OP_RSA_PSS, &pss, d, 32, sig, &l), CKR_MECHANISM_PARAM_INVALID);
    KH_CHECK_RV(sign(rsa_key, KH_OP_RSA_PSS, NULL, d, 32, sig, &l), CKR_MECHANISM_PARAM_INVALID);
    /* a PKCS#1 v1.5 signature is not a PSS signature */
    pss.pss_mgf_hash = KH_HASH_SHA256;
    KH_CHECK_RV(sign(rsa_key, KH_OP_RSA_PKCS, NULL, d, 32, sig, &l), CKR_OK);
    KH_CHECK_RV(kh_crypto_verify(&rsa_pub, KH_OP_RSA_PSS, &pss, d, 32, sig, l), CKR_SIGNATURE_INVALID);
}

static void test_errors_key_type(void)
{
    kh_pubkey k1, ed;
    kh_softkey *kk = NULL, *ke = NULL;
    uint8_t d[32] = { 1 }, sig[128];
    size_t l = sizeof sig;

    gen_load(KH_ALG_SECP256K1, 0, &k1, &kk);
    gen_load(KH_ALG_ED25519, 0, &ed, &ke);
    if (!kk || !ke)
        goto out;
    KH_CHECK_RV(kh_softkey_sign(kk, KH_OP_EDDSA, NULL, d, 32, sig, &l), CKR_KEY_TYPE_INCONSISTENT);
    KH_CHECK_RV(kh_softkey_sign(kk, KH_OP_RSA_PKCS, NULL, d, 32, sig, &l), CKR_KEY_TYPE_INCONSISTENT);
    KH_CHECK_RV(kh_softkey_sign(ke, KH_OP_BIP340, NULL, d, 32, sig, &l), CKR_KEY_TYPE_INCONSISTENT);
    KH_CHECK_RV(kh_softkey_sign(ke, KH_OP_ECDSA, NULL, d, 32, sig, &l), CKR_KEY_TYPE_INCONSISTENT);
    KH_CHECK_RV(kh_crypto_verify(&k1, KH_OP_EDDSA, NULL, d, 32, sig, 64), CKR_KEY_TYPE_INCONSISTENT);
    KH_CHECK_RV(kh_crypto_verify(&ed, KH_OP_BIP340, NULL, d, 32, sig, 64), CKR_KEY_TYPE_INCONSISTENT);
    KH_CHECK(kh_crypto_sig_len(&ed, KH_OP_ECDSA) == 0);
    KH_CHECK(kh_softkey_sig_len(kk, KH_OP_RSA_PSS) == 0);
    KH_CHECK(kh_crypto_sig_len(&k1, KH_OP_ECDSA_RECOVER) == 65);
out:
    kh_softkey_free(kk);
    kh_softkey_free(ke);
}

static void test_errors_keygen(void)
{
    kh_pubkey pub;
    uint8_t *sec = (uint8_t *)1;
    size_t len = 9;

    KH_CHECK_RV(kh_crypto_generate(&pub, &sec, &len, KH_ALG_RSA, 1024), CKR_KEY_SIZE_RANGE);
    KH_CHECK(sec == NULL && len == 0);
    KH_CHECK_RV(kh_crypto_generate(&pub, &sec, &len, KH_ALG_RSA, 2047), CKR_KEY_SIZE_RANGE);
    KH_CHECK_RV(kh_crypto_generate(&pub, &sec, &len, KH_ALG_RSA, 2049), CKR_KEY_SIZE_RANGE);
    KH_CHECK_RV(kh_crypto_generate(&pub, &sec, &len, KH_ALG_RSA, 4104), CKR_KEY_SIZE_RANGE);
    KH_CHECK_RV(kh_crypto_generate(&pub, &sec, &len, KH_ALG_NONE, 0), CKR_ARGUMENTS_BAD);
}

static void test_pubkey_check(void)
{
    kh_pubkey p = ec_pub(KH_ALG_P256, p256_g);
    uint8_t sig[64] = { 1 }, d[32] = { 2 };
    uint8_t x[32];

    KH_CHECK_RV(kh_pubkey_check(&p), CKR_OK);
    p.point[64] ^= 1;   /* off the curve */
    KH_CHECK_RV(kh_pubkey_check(&p), CKR_ATTRIBUTE_VALUE_INVALID);
    KH_CHECK_RV(kh_crypto_verify(&p, KH_OP_ECDSA, NULL, d, 32, sig, 64), CKR_PUBLIC_KEY_INVALID);
    p = ec_pub(KH_ALG_SECP256K1, k1_g);
    KH_CHECK_RV(kh_pubkey_check(&p), CKR_OK);
    p.point[64] ^= 1;
    KH_CHECK_RV(kh_pubkey_check(&p), CKR_ATTRIBUTE_VALUE_INVALID);
    KH_CHECK_RV(kh_crypto_verify(&p, KH_OP_ECDSA, NULL, d, 32, sig, 64), CKR_PUBLIC_KEY_INVALID);
    p = ec_pub(KH_ALG_P384, p256_g);   /* wrong length for the curve */
    KH_CHECK_RV(kh_pubkey_check(&p), CKR_ATTRIBUTE_VALUE_INVALID);
    /* x-only lift: G has even Y */
    unhex_to(x, 32, "79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798");
    KH_CHECK_RV(kh_pubkey_from_xonly(&p, x), CKR_OK);
    KH_CHECK(p.point_len == 65);
    {
        kh_pubkey g = ec_pub(KH_ALG_SECP256K1, k1_g);
        KH_CHECK(memcmp(&p, &g, sizeof p) == 0);
    }
    memset(x, 0xff, sizeof x);
    KH_CHECK_RV(kh_pubkey_from_xonly(&p, x), CKR_ATTRIBUTE_VALUE_INVALID);
}

/* ---- threads ---------------------------------------------------------- */

struct thr_arg {
    const kh_softkey *key;
    const kh_pubkey *pub;
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
            kh_crypto_verify(a->pub, a->op, NULL, d, 32, sig, l) != CKR_OK)
            a->fails++;
    }
    return NULL;
}

/* Shared read-only keys signed from several threads at once. */
static void test_threads(void)
{
    kh_pubkey pk1, pp, pe;
    kh_softkey *kk = NULL, *kp = NULL, *ke = NULL;
    struct thr_arg args[8];
    pthread_t th[8];

    gen_load(KH_ALG_SECP256K1, 0, &pk1, &kk);
    gen_load(KH_ALG_P256, 0, &pp, &kp);
    gen_load(KH_ALG_ED25519, 0, &pe, &ke);
    if (!kk || !kp || !ke)
        goto out;
    for (int i = 0; i < 8; i++) {
        static const kh_sigop ops[4] = { KH_OP_ECDSA, KH_OP_BIP340, KH_OP_ECDSA, KH_OP_EDDSA };
        args[i].op = ops[i % 4];
        args[i].key = i % 4 < 2 ? kk : i % 4 == 2 ? kp : ke;
        args[i].pub = i % 4 < 2 ? &pk1 : i % 4 == 2 ? &pp : &pe;
        args[i].fails = 0;
        KH_CHECK(pthread_create(&th[i], NULL, thr_main, &args[i]) == 0);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        KH_CHECK(args[i].fails == 0);
    }
out:
    kh_softkey_free(kk);
    kh_softkey_free(kp);
    kh_softkey_free(ke);
}

/* ---- Wycheproof ------------------------------------------------------- */

/* Keys, hashes and data from vectors.c; kh_crypto_verify gives the verdict. */
struct wp_ctx {
    kh_sigop op;
    kh_alg alg;
    struct kh_vec_wp_key k;
};

static enum kh_vec_group wp_group(void *ctx, json_object *g)
{
    struct wp_ctx *w = ctx;
    return kh_vec_wp_key(&w->k, g, w->op, w->alg) ? KH_VEC_GROUP_OK : KH_VEC_GROUP_BAD;
}

static CK_RV wp_verify(void *ctx, int tc, const uint8_t *msg, size_t msg_len, const uint8_t *sig,
                       size_t sig_len)
{
    struct wp_ctx *w = ctx;
    uint8_t buf[KH_VEC_WP_DATA_MAX];
    size_t len;
    const uint8_t *data = kh_vec_wp_data(&w->k, buf, msg, msg_len, &len);

    (void)tc;
    return kh_crypto_verify(&w->k.pub, w->k.op, kh_vec_wp_params(&w->k), data, len, sig, sig_len);
}

static void wycheproof(const void *arg)
{
    static const struct kh_vec_wp_ops ops = { .group = wp_group, .verify = wp_verify };
    const struct kh_vec_wp_file *f = arg;
    struct wp_ctx w = { .op = f->op, .alg = f->alg };

    kh_vec_wycheproof(f->file, &ops, &w, NULL);
}

/* ---- BIP-340 ---------------------------------------------------------- */

/*
 * bip340_test_vectors.csv: index, secret key, public key, aux_rand, message,
 * signature, verification result, comment. Rows with a secret key must sign
 * to exactly the given signature; every row must verify as given. Messages
 * other than 32 bytes (added 2022-12) are outside the KH_OP_BIP340 contract:
 * they must fail with CKR_DATA_LEN_RANGE and are counted separately.
 */
static void test_bip340(void)
{
    FILE *f = fopen(kh_test_vector_path("bip340_test_vectors.csv"), "r");
    struct kh_vec_bip340_row r;
    unsigned rows = 0, signed_ok = 0, verify_ok = 0, verify_true = 0, verify_false = 0, not32 = 0;

    KH_CHECK(f != NULL);
    if (!f)
        return;
    while (kh_vec_bip340_next(f, &r)) {
        uint8_t got[64];
        size_t siglen;
        kh_pubkey pub, pub2;
        CK_RV rv;

        rows++;
        if (r.msg_len != 32) {
            not32++;
            KH_CHECK_RV(kh_pubkey_from_xonly(&pub, r.pk), CKR_OK);
            KH_CHECK_RV(kh_crypto_verify(&pub, KH_OP_BIP340, NULL, r.msg, r.msg_len, r.sig, 64),
                        CKR_DATA_LEN_RANGE);
            continue;
        }
        if (r.sk_len == 32) {
            kh_softkey *key = NULL;
            kh_sigparams prm = { .aux = r.aux };
            uint8_t *norm = NULL;
            size_t norm_len = 0;

            KH_CHECK_RV(kh_crypto_import(&pub2, &norm, &norm_len, KH_ALG_SECP256K1, r.sk, 32), CKR_OK);
            KH_CHECK(pub2.point_len == 65 && memcmp(pub2.point + 1, r.pk, 32) == 0);
            KH_CHECK_RV(kh_softkey_load(&key, KH_ALG_SECP256K1, norm, norm_len), CKR_OK);
            siglen = sizeof got;
            rv = key ? kh_softkey_sign(key, KH_OP_BIP340, &prm, r.msg, 32, got, &siglen) : CKR_GENERAL_ERROR;
            if (rv == CKR_OK && siglen == 64 && memcmp(got, r.sig, 64) == 0)
                signed_ok++;
            else
                kh_test_fail(__FILE__, __LINE__, "bip340 row %s: signature differs (rv 0x%lx)", r.index,
                             (unsigned long)rv);
            /* the full (possibly odd-Y) key verifies too: BIP-340 uses only X */
            KH_CHECK_RV(kh_crypto_verify(&pub2, KH_OP_BIP340, NULL, r.msg, 32, r.sig, 64), CKR_OK);
            kh_softkey_free(key);
            kh_crypto_secret_free(norm, norm_len);
        }
        rv = kh_pubkey_from_xonly(&pub, r.pk);
        if (rv == CKR_OK)
            rv = kh_crypto_verify(&pub, KH_OP_BIP340, NULL, r.msg, 32, r.sig, 64);
        else
            KH_CHECK_RV(rv, CKR_ATTRIBUTE_VALUE_INVALID);
        if ((rv == CKR_OK) == r.expect) {
            verify_ok++;
            if (r.expect)
                verify_true++;
            else
                verify_false++;
        } else {
            kh_test_fail(__FILE__, __LINE__, "bip340 row %s (%s): expected %s, got 0x%lx", r.index,
                         r.comment, r.expect ? "TRUE" : "FALSE", (unsigned long)rv);
        }
    }
    fclose(f);
    KH_CHECK(rows == 19);
    printf("# bip340_test_vectors.csv: %u rows: %u signatures reproduced, %u verdicts right "
           "(%u valid, %u invalid), %u rows with non-32-byte messages refused (DATA_LEN_RANGE)\n",
           rows, signed_ok, verify_ok, verify_true, verify_false, not32);
}


/* Keys made with extra (hardware) randomness mixed in are valid keys, still
 * differ from call to call (the OS RNG is still in), and the mix is an
 * involution that depends on the mix bytes and the counter. */
static void test_generate_mixed(void)
{
    static const kh_alg algs[] = { KH_ALG_SECP256K1, KH_ALG_P256, KH_ALG_P384, KH_ALG_ED25519, KH_ALG_RSA };
    uint8_t mix[48];
    memset(mix, 0xA5, sizeof mix);
    for (size_t i = 0; i < sizeof algs / sizeof algs[0]; i++) {
        kh_pubkey p1, p2, back;
        uint8_t *s1 = NULL, *s2 = NULL;
        size_t l1 = 0, l2 = 0;
        KH_CHECK_RV(kh_crypto_generate_mixed(&p1, &s1, &l1, algs[i], 2048, mix, sizeof mix), CKR_OK);
        KH_CHECK_RV(kh_crypto_generate_mixed(&p2, &s2, &l2, algs[i], 2048, mix, sizeof mix), CKR_OK);
        KH_CHECK(l1 != l2 || memcmp(s1, s2, l1) != 0);
        KH_CHECK_RV(kh_crypto_import(&back, NULL, NULL, algs[i], s1, l1), CKR_OK);
        KH_CHECK(memcmp(&back, &p1, sizeof back) == 0);
        KH_CHECK_RV(kh_pubkey_check(&p1), CKR_OK);
        kh_crypto_secret_free(s1, l1);
        kh_crypto_secret_free(s2, l2);
    }
    uint8_t a[32], b[32], c[32];
    memset(a, 0x11, sizeof a);
    memcpy(b, a, sizeof b);
    memcpy(c, a, sizeof c);
    KH_CHECK_RV(kh_rng_mix(b, sizeof b, mix, sizeof mix, 0), CKR_OK);
    KH_CHECK(memcmp(a, b, sizeof a) != 0);
    KH_CHECK_RV(kh_rng_mix(c, sizeof c, mix, sizeof mix, 1), CKR_OK);
    KH_CHECK(memcmp(b, c, sizeof b) != 0);
    mix[0] ^= 1;
    memcpy(c, a, sizeof c);
    KH_CHECK_RV(kh_rng_mix(c, sizeof c, mix, sizeof mix, 0), CKR_OK);
    KH_CHECK(memcmp(b, c, sizeof b) != 0);
    mix[0] ^= 1;
    KH_CHECK_RV(kh_rng_mix(b, sizeof b, mix, sizeof mix, 0), CKR_OK);
    KH_CHECK_MEM(a, b, sizeof a);
    uint8_t big[65];
    KH_CHECK_RV(kh_rng_mix(big, sizeof big, mix, sizeof mix, 0), CKR_ARGUMENTS_BAD);
}

int main(int argc, char **argv)
{
    kh_test_register("/crypto/init", test_init);
    kh_test_register("/crypto/hash", test_hash);
    kh_test_register("/crypto/random", test_random);
    kh_test_register("/crypto/import/secp256k1", test_import_secp256k1);
    kh_test_register("/crypto/import/p256", test_import_p256);
    kh_test_register("/crypto/import/p384", test_import_p384);
    kh_test_register("/crypto/import/ed25519", test_import_ed25519);
    kh_test_register("/crypto/import/rsa", test_import_rsa);
    kh_test_register("/crypto/roundtrip/secp256k1", test_roundtrip_secp256k1);
    kh_test_register("/crypto/roundtrip/p256", test_roundtrip_p256);
    kh_test_register("/crypto/roundtrip/p384", test_roundtrip_p384);
    kh_test_register("/crypto/roundtrip/ed25519", test_roundtrip_ed25519);
    kh_test_register("/crypto/roundtrip/rsa2048", test_roundtrip_rsa2048);
    kh_test_register("/crypto/roundtrip/rsa3072", test_roundtrip_rsa3072);
    kh_test_register("/crypto/roundtrip/rsa4096", test_roundtrip_rsa4096);
    kh_test_register("/crypto/secp256k1/low-s", test_k1_low_s);
    kh_test_register("/crypto/secp256k1/recover", test_k1_recover);
    kh_test_register("/crypto/secp256k1/bip340-fresh-aux", test_bip340_fresh_aux);
    kh_test_register("/crypto/secp256k1/truncation", test_k1_truncation);
    kh_test_register("/crypto/p256/truncation", test_p256_truncation);
    kh_test_register("/crypto/errors/data-len", test_errors_data_len);
    kh_test_register("/crypto/errors/params", test_errors_params);
    kh_test_register("/crypto/errors/key-type", test_errors_key_type);
    kh_test_register("/crypto/errors/keygen", test_errors_keygen);
    kh_test_register("/crypto/pubkey/check", test_pubkey_check);
    kh_test_register("/crypto/generate-mixed", test_generate_mixed);
    kh_test_register("/crypto/threads", test_threads);
    kh_vec_wp_register("/crypto/vectors/wycheproof", wycheproof);
    kh_test_register("/crypto/vectors/bip340", test_bip340);
    int rc = kh_test_run(argc, argv);
    kh_softkey_free(rsa_key);
    kh_crypto_secret_free(rsa_der, rsa_der_len);
    return rc;
}

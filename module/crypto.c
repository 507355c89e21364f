/*
 * keyhold crypto primitives (contract in crypto.h).
 *
 * secp256k1 goes through libsecp256k1 with one context, created and
 * randomised once and then shared read-only. P-256, P-384, Ed25519 and RSA go
 * through OpenSSL 3 EVP; digests are fetched once. OpenSSL failures reach
 * CK_RV through one translator (kh_crypto_ossl_rv), which logs the native
 * error code once when KEYHOLD_LOG=debug.
 */
#include "crypto.h"
#include "base.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include <secp256k1.h>
#include <secp256k1_extrakeys.h>
#include <secp256k1_recovery.h>
#include <secp256k1_schnorrsig.h>

#define KH_RSA_MIN_BITS 2048u
#define KH_RSA_MAX_BITS 4096u

struct kh_softkey {
    kh_alg alg;
    size_t sig_bytes;              /* EC field size, or RSA modulus bytes */
    unsigned rsa_bits;
    uint8_t seckey[32];            /* secp256k1 */
    secp256k1_keypair keypair;     /* secp256k1, precomputed for BIP-340 */
    EVP_PKEY *pkey;                /* P-256, P-384, Ed25519, RSA */
};

struct kh_hash_ctx {
    EVP_MD_CTX *md;
    kh_hash h;
};

static pthread_once_t kh_crypto_once = PTHREAD_ONCE_INIT;
static CK_RV kh_crypto_init_rv = CKR_FUNCTION_FAILED;
static secp256k1_context *kh_secp;
static EVP_MD *kh_md[KH_HASH_SHA512 + 1];

/*
 * The one translator from OpenSSL failures to CK_RV. `rv` is what the failure
 * means at the call site (an input error or CKR_FUNCTION_FAILED); allocation
 * failures become CKR_HOST_MEMORY whatever the site. The OpenSSL error is
 * logged once (debug only) and the thread's error queue is emptied, so a
 * stale error never leaks into a later call.
 */
static CK_RV kh_crypto_ossl_rv(CK_RV rv, const char *what)
{
    unsigned long e = ERR_peek_last_error();

    if (e != 0 && ERR_GET_REASON(e) == ERR_R_MALLOC_FAILURE)
        rv = CKR_HOST_MEMORY;
    if (e != 0) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        kh_log(KH_LOG_DEBUG, "crypto: %s failed: OpenSSL 0x%lx %s -> CKR 0x%lx", what, e, buf, (unsigned long)rv);
    } else {
        kh_log(KH_LOG_DEBUG, "crypto: %s failed -> CKR 0x%lx", what, (unsigned long)rv);
    }
    ERR_clear_error();
    return rv;
}

static void kh_crypto_do_init(void)
{
    static const char *const names[KH_HASH_SHA512 + 1] = {
        [KH_HASH_SHA1] = "SHA1",     [KH_HASH_SHA224] = "SHA224",
        [KH_HASH_SHA256] = "SHA256", [KH_HASH_SHA384] = "SHA384",
        [KH_HASH_SHA512] = "SHA512",
    };
    uint8_t seed[32];
    for (int h = KH_HASH_SHA1; h <= KH_HASH_SHA512; h++) {
        kh_md[h] = EVP_MD_fetch(kh_ossl_libctx(), names[h], NULL);
        if (!kh_md[h]) {
            kh_crypto_init_rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "EVP_MD_fetch");
            return;
        }
    }
    kh_secp = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    if (!kh_secp) {
        kh_crypto_init_rv = CKR_HOST_MEMORY;
        return;
    }
    if (kh_crypto_random(seed, sizeof seed) != CKR_OK ||
        !secp256k1_context_randomize(kh_secp, seed)) {
        OPENSSL_cleanse(seed, sizeof seed);
        secp256k1_context_destroy(kh_secp);
        kh_secp = NULL;
        kh_crypto_init_rv = CKR_FUNCTION_FAILED;
        return;
    }
    OPENSSL_cleanse(seed, sizeof seed);
    kh_crypto_init_rv = CKR_OK;
}

CK_RV kh_crypto_init(void)
{
    if (pthread_once(&kh_crypto_once, kh_crypto_do_init) != 0)
        return CKR_FUNCTION_FAILED;
    return kh_crypto_init_rv;
}

CK_RV kh_crypto_random(uint8_t *buf, size_t len)
{
    if (!buf && len)
        return CKR_ARGUMENTS_BAD;
    while (len > 0) {
        ssize_t n = getrandom(buf, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return CKR_FUNCTION_FAILED;
        }
        buf += n;
        len -= (size_t)n;
    }
    return CKR_OK;
}

/* ---- small helpers ---------------------------------------------------- */

/* Field (and scalar) size in bytes of an EC alg; 0 for others. */
static size_t kh_field_len(kh_alg alg)
{
    switch (alg) {
    case KH_ALG_SECP256K1:
    case KH_ALG_P256:
    case KH_ALG_ED25519:
        return 32;
    case KH_ALG_P384:
        return 48;
    default:
        return 0;
    }
}

static int kh_ec_nid(kh_alg alg)
{
    return alg == KH_ALG_P256 ? NID_X9_62_prime256v1 : NID_secp384r1;
}

static const char *kh_ec_group_name(kh_alg alg)
{
    return alg == KH_ALG_P256 ? "P-256" : "P-384";
}

/* Strip leading zero bytes of a big-endian integer. */
static const uint8_t *kh_strip_zeros(const uint8_t *p, size_t *len)
{
    while (*len > 0 && p[0] == 0) {
        p++;
        (*len)--;
    }
    return p;
}

/*
 * Fit a big-endian scalar into exactly flen bytes: left-pad a short one, drop
 * excess leading zero bytes of a long one. False if it does not fit.
 */
static bool kh_scalar_fit(uint8_t *out, size_t flen, const uint8_t *in, size_t len)
{
    while (len > flen) {
        if (in[0] != 0)
            return false;
        in++;
        len--;
    }
    memset(out, 0, flen - len);
    memcpy(out + flen - len, in, len);
    return true;
}

/* FIPS 186 digest-to-integer for a 256-bit order: leftmost 32 bytes, or left-padded. */
static void kh_digest_fit32(uint8_t out[32], const uint8_t *data, size_t len)
{
    if (len >= 32) {
        memcpy(out, data, 32);
    } else {
        memset(out, 0, 32 - len);
        memcpy(out + 32 - len, data, len);
    }
}

static const EVP_MD *kh_md_get(kh_hash h)
{
    if (h < KH_HASH_SHA1 || h > KH_HASH_SHA512)
        return NULL;
    return kh_md[h];
}

static bool kh_op_fits(kh_alg alg, kh_sigop op)
{
    switch (op) {
    case KH_OP_ECDSA:
        return alg == KH_ALG_SECP256K1 || alg == KH_ALG_P256 || alg == KH_ALG_P384;
    case KH_OP_ECDSA_RECOVER:
    case KH_OP_BIP340:
        return alg == KH_ALG_SECP256K1;
    case KH_OP_EDDSA:
        return alg == KH_ALG_ED25519;
    case KH_OP_RSA_PKCS:
    case KH_OP_RSA_PSS:
        return alg == KH_ALG_RSA;
    }
    return false;
}

/* Signature length for alg/op; field is the field size or modulus bytes. */
static size_t kh_sig_len_for(kh_alg alg, kh_sigop op, size_t field)
{
    if (!kh_op_fits(alg, op))
        return 0;
    switch (op) {
    case KH_OP_ECDSA:
        return 2 * field;
    case KH_OP_ECDSA_RECOVER:
        return 65;
    case KH_OP_BIP340:
    case KH_OP_EDDSA:
        return 64;
    case KH_OP_RSA_PKCS:
    case KH_OP_RSA_PSS:
        return field;
    }
    return 0;
}

size_t kh_crypto_sig_len(const kh_pubkey *pub, kh_sigop op)
{
    size_t n_len;

    if (!pub)
        return 0;
    if (pub->alg == KH_ALG_RSA) {
        n_len = pub->n_len <= sizeof pub->n ? pub->n_len : 0;
        kh_strip_zeros(pub->n, &n_len);
        return kh_sig_len_for(pub->alg, op, n_len);
    }
    return kh_sig_len_for(pub->alg, op, kh_field_len(pub->alg));
}

size_t kh_softkey_sig_len(const kh_softkey *key, kh_sigop op)
{
    return key ? kh_sig_len_for(key->alg, op, key->sig_bytes) : 0;
}

/* A malloc'd copy for handing a secret out (kh_crypto_secret_free). */
static CK_RV kh_secret_dup(uint8_t **out, size_t *out_len, const uint8_t *p, size_t len)
{
    uint8_t *buf = malloc(len ? len : 1);

    if (!buf)
        return CKR_HOST_MEMORY;
    memcpy(buf, p, len);
    *out = buf;
    *out_len = len;
    return CKR_OK;
}

void kh_crypto_secret_free(uint8_t *secret, size_t len)
{
    if (!secret)
        return;
    OPENSSL_cleanse(secret, len);
    free(secret);
}

/* ---- secp256k1 -------------------------------------------------------- */

/* Validate a 32-byte secp256k1 scalar and derive its uncompressed point. */
static CK_RV kh_k1_pub(kh_pubkey *pub, const uint8_t sk[32])
{
    secp256k1_pubkey pk;
    size_t len = 65;

    if (!secp256k1_ec_seckey_verify(kh_secp, sk) ||
        !secp256k1_ec_pubkey_create(kh_secp, &pk, sk))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    secp256k1_ec_pubkey_serialize(kh_secp, pub->point, &len, &pk, SECP256K1_EC_UNCOMPRESSED);
    pub->point_len = len;
    pub->alg = KH_ALG_SECP256K1;
    return CKR_OK;
}

static bool kh_k1_parse_pub(secp256k1_pubkey *pk, const kh_pubkey *pub)
{
    return pub->point_len == 65 && pub->point[0] == 0x04 &&
           secp256k1_ec_pubkey_parse(kh_secp, pk, pub->point, 65);
}

CK_RV kh_pubkey_from_xonly(kh_pubkey *out, const uint8_t x[32])
{
    uint8_t comp[33];
    secp256k1_pubkey pk;
    size_t len = 65;
    CK_RV rv = kh_crypto_init();

    if (rv != CKR_OK)
        return rv;
    if (!out || !x)
        return CKR_ARGUMENTS_BAD;
    memset(out, 0, sizeof *out);
    /* BIP-340 lifts x to the point with even Y: that is the 0x02 encoding. */
    comp[0] = 0x02;
    memcpy(comp + 1, x, 32);
    if (!secp256k1_ec_pubkey_parse(kh_secp, &pk, comp, sizeof comp))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    secp256k1_ec_pubkey_serialize(kh_secp, out->point, &len, &pk, SECP256K1_EC_UNCOMPRESSED);
    out->point_len = len;
    out->alg = KH_ALG_SECP256K1;
    return CKR_OK;
}

static CK_RV kh_k1_sign(const kh_softkey *key, kh_sigop op, const kh_sigparams *params,
                        const uint8_t *data, size_t data_len, uint8_t *sig)
{
    uint8_t msg[32];
    uint8_t aux[32];
    const uint8_t *auxp;
    secp256k1_ecdsa_signature s;
    secp256k1_ecdsa_recoverable_signature rs;
    int recid = 0;
    CK_RV rv;

    switch (op) {
    case KH_OP_ECDSA:
        if (data_len == 0)
            return CKR_DATA_LEN_RANGE;
        kh_digest_fit32(msg, data, data_len);
        /* RFC 6979 nonces; libsecp256k1 always produces low-S. */
        if (!secp256k1_ecdsa_sign(kh_secp, &s, msg, key->seckey, NULL, NULL))
            return CKR_FUNCTION_FAILED;
        secp256k1_ecdsa_signature_serialize_compact(kh_secp, sig, &s);
        return CKR_OK;
    case KH_OP_ECDSA_RECOVER:
        if (data_len != 32)
            return CKR_DATA_LEN_RANGE;
        if (!secp256k1_ecdsa_sign_recoverable(kh_secp, &rs, data, key->seckey, NULL, NULL))
            return CKR_FUNCTION_FAILED;
        secp256k1_ecdsa_recoverable_signature_serialize_compact(kh_secp, sig, &recid, &rs);
        sig[64] = (uint8_t)recid;
        return CKR_OK;
    case KH_OP_BIP340:
        if (data_len != 32)
            return CKR_DATA_LEN_RANGE;
        auxp = params ? params->aux : NULL;
        if (!auxp) {
            /* BIP-340 recommends fresh auxiliary randomness per signature. */
            rv = kh_crypto_random(aux, sizeof aux);
            if (rv != CKR_OK)
                return rv;
            auxp = aux;
        }
        rv = secp256k1_schnorrsig_sign32(kh_secp, sig, data, &key->keypair, auxp)
                 ? CKR_OK : CKR_FUNCTION_FAILED;
        OPENSSL_cleanse(aux, sizeof aux);
        return rv;
    default:
        return CKR_KEY_TYPE_INCONSISTENT;
    }
}

static bool kh_is_zero(const uint8_t *p, size_t len)
{
    uint8_t acc = 0;

    for (size_t i = 0; i < len; i++)
        acc |= p[i];
    return acc == 0;
}

static CK_RV kh_k1_verify(const kh_pubkey *pub, kh_sigop op, const uint8_t *data, size_t data_len,
                          const uint8_t *sig, size_t sig_len)
{
    secp256k1_pubkey pk, rec;
    secp256k1_xonly_pubkey xpk;
    secp256k1_ecdsa_signature s, low;
    secp256k1_ecdsa_recoverable_signature rs;
    uint8_t msg[32];

    if (!kh_k1_parse_pub(&pk, pub))
        return CKR_PUBLIC_KEY_INVALID;
    switch (op) {
    case KH_OP_ECDSA:
        if (data_len == 0)
            return CKR_DATA_LEN_RANGE;
        if (sig_len != 64)
            return CKR_SIGNATURE_LEN_RANGE;
        /* parse_compact rejects r or s >= n; verify rejects zero, but say so here too. */
        if (kh_is_zero(sig, 32) || kh_is_zero(sig + 32, 32) ||
            !secp256k1_ecdsa_signature_parse_compact(kh_secp, &s, sig))
            return CKR_SIGNATURE_INVALID;
        /* SEC1 accepts high S; libsecp256k1 only verifies low S. */
        secp256k1_ecdsa_signature_normalize(kh_secp, &low, &s);
        kh_digest_fit32(msg, data, data_len);
        return secp256k1_ecdsa_verify(kh_secp, &low, msg, &pk) ? CKR_OK : CKR_SIGNATURE_INVALID;
    case KH_OP_ECDSA_RECOVER:
        if (data_len != 32)
            return CKR_DATA_LEN_RANGE;
        if (sig_len != 65)
            return CKR_SIGNATURE_LEN_RANGE;
        /* Our own format: low-S only, and v must recover exactly this key. */
        if (sig[64] > 3 ||
            !secp256k1_ecdsa_recoverable_signature_parse_compact(kh_secp, &rs, sig, sig[64]))
            return CKR_SIGNATURE_INVALID;
        secp256k1_ecdsa_recoverable_signature_convert(kh_secp, &s, &rs);
        if (!secp256k1_ecdsa_verify(kh_secp, &s, data, &pk) ||
            !secp256k1_ecdsa_recover(kh_secp, &rec, &rs, data) ||
            secp256k1_ec_pubkey_cmp(kh_secp, &rec, &pk) != 0)
            return CKR_SIGNATURE_INVALID;
        return CKR_OK;
    case KH_OP_BIP340:
        if (data_len != 32)
            return CKR_DATA_LEN_RANGE;
        if (sig_len != 64)
            return CKR_SIGNATURE_LEN_RANGE;
        if (!secp256k1_xonly_pubkey_from_pubkey(kh_secp, &xpk, NULL, &pk))
            return CKR_PUBLIC_KEY_INVALID;
        return secp256k1_schnorrsig_verify(kh_secp, sig, data, 32, &xpk)
                   ? CKR_OK : CKR_SIGNATURE_INVALID;
    default:
        return CKR_KEY_TYPE_INCONSISTENT;
    }
}

/* ---- P-256 / P-384 ---------------------------------------------------- */

/*
 * From a field-size scalar: check it is in [1, n-1], derive the public point
 * into pub, and (if pkey_out) build an OpenSSL key pair.
 */
static CK_RV kh_ec_load(EVP_PKEY **pkey_out, kh_pubkey *pub, kh_alg alg, const uint8_t *scalar)
{
    size_t flen = kh_field_len(alg);
    EC_GROUP *group = NULL;
    EC_POINT *pt = NULL;
    BN_CTX *bnctx = NULL;
    BIGNUM *priv = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;
    uint8_t point[KH_EC_POINT_MAX];
    size_t plen;
    CK_RV rv = CKR_FUNCTION_FAILED;

    group = EC_GROUP_new_by_curve_name_ex(kh_ossl_libctx(), NULL, kh_ec_nid(alg));
    bnctx = BN_CTX_secure_new();
    priv = BN_secure_new();
    if (!group || !bnctx || !priv) {
        rv = kh_crypto_ossl_rv(CKR_HOST_MEMORY, "EC setup");
        goto out;
    }
    BN_set_flags(priv, BN_FLG_CONSTTIME);
    if (!BN_bin2bn(scalar, (int)flen, priv)) {
        rv = kh_crypto_ossl_rv(CKR_HOST_MEMORY, "BN_bin2bn");
        goto out;
    }
    if (BN_is_zero(priv) || BN_cmp(priv, EC_GROUP_get0_order(group)) >= 0) {
        rv = CKR_ATTRIBUTE_VALUE_INVALID;
        goto out;
    }
    pt = EC_POINT_new(group);
    if (!pt || !EC_POINT_mul(group, pt, priv, NULL, NULL, bnctx)) {
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "EC_POINT_mul");
        goto out;
    }
    plen = EC_POINT_point2oct(group, pt, POINT_CONVERSION_UNCOMPRESSED, point, sizeof point, bnctx);
    if (plen != 1 + 2 * flen) {
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "EC_POINT_point2oct");
        goto out;
    }
    if (pkey_out) {
        bld = OSSL_PARAM_BLD_new();
        ctx = EVP_PKEY_CTX_new_from_name(kh_ossl_libctx(), "EC", "provider=default");
        if (!bld || !ctx ||
            !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, kh_ec_group_name(alg), 0) ||
            !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, plen) ||
            !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, priv) ||
            !(params = OSSL_PARAM_BLD_to_param(bld)) ||
            EVP_PKEY_fromdata_init(ctx) <= 0 ||
            EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_KEYPAIR, params) <= 0) {
            rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "EC key from data");
            goto out;
        }
    }
    if (pub) {
        memcpy(pub->point, point, plen);
        pub->point_len = plen;
        pub->alg = alg;
    }
    if (pkey_out) {
        *pkey_out = pkey;
        pkey = NULL;
    }
    rv = CKR_OK;
out:
    EVP_PKEY_free(pkey);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);     /* the secure part (the scalar) is cleared */
    OSSL_PARAM_BLD_free(bld);
    BN_clear_free(priv);
    EC_POINT_free(pt);
    BN_CTX_free(bnctx);
    EC_GROUP_free(group);
    return rv;
}

/* An OpenSSL public key from an uncompressed point; NULL if it is not on the curve. */
static CK_RV kh_ec_pub_pkey(EVP_PKEY **out, const kh_pubkey *pub)
{
    size_t flen = kh_field_len(pub->alg);
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    CK_RV rv = CKR_OK;

    *out = NULL;
    if (pub->point_len != 1 + 2 * flen || pub->point[0] != 0x04)
        return CKR_PUBLIC_KEY_INVALID;
    bld = OSSL_PARAM_BLD_new();
    ctx = EVP_PKEY_CTX_new_from_name(kh_ossl_libctx(), "EC", "provider=default");
    if (!bld || !ctx ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, kh_ec_group_name(pub->alg), 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub->point, pub->point_len) ||
        !(params = OSSL_PARAM_BLD_to_param(bld)) ||
        EVP_PKEY_fromdata_init(ctx) <= 0) {
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "EC public key setup");
        goto out;
    }
    /* fromdata decodes the point, which checks that it lies on the curve. */
    if (EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        rv = kh_crypto_ossl_rv(CKR_PUBLIC_KEY_INVALID, "EC public key");
out:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    return rv;
}

/* ECDSA with OpenSSL; DER output converted to fixed-width r||s. */
static CK_RV kh_ec_sign(const kh_softkey *key, const uint8_t *data, size_t data_len, uint8_t *sig)
{
    size_t flen = kh_field_len(key->alg);
    EVP_PKEY_CTX *ctx = NULL;
    ECDSA_SIG *es = NULL;
    uint8_t der[160];
    size_t der_len = sizeof der;
    const unsigned char *p = der;
    const BIGNUM *r, *s;
    CK_RV rv = CKR_OK;

    if (data_len == 0)
        return CKR_DATA_LEN_RANGE;
    ctx = EVP_PKEY_CTX_new_from_pkey(kh_ossl_libctx(), key->pkey, NULL);
    /* No digest set: the data is the digest, truncated per FIPS 186 by OpenSSL. */
    if (!ctx || EVP_PKEY_sign_init(ctx) <= 0 ||
        EVP_PKEY_sign(ctx, der, &der_len, data, data_len) <= 0) {
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "ECDSA sign");
        goto out;
    }
    es = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    if (!es) {
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "d2i_ECDSA_SIG");
        goto out;
    }
    ECDSA_SIG_get0(es, &r, &s);
    if (BN_bn2binpad(r, sig, (int)flen) != (int)flen ||
        BN_bn2binpad(s, sig + flen, (int)flen) != (int)flen)
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "BN_bn2binpad");
out:
    ECDSA_SIG_free(es);
    EVP_PKEY_CTX_free(ctx);
    return rv;
}

static CK_RV kh_ec_verify(const kh_pubkey *pub, const uint8_t *data, size_t data_len,
                          const uint8_t *sig, size_t sig_len)
{
    size_t flen = kh_field_len(pub->alg);
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    ECDSA_SIG *es = NULL;
    BIGNUM *r = NULL, *s = NULL;
    unsigned char *der = NULL;
    int der_len, ok;
    CK_RV rv;

    rv = kh_ec_pub_pkey(&pkey, pub);
    if (rv != CKR_OK)
        return rv;
    if (data_len == 0) {
        rv = CKR_DATA_LEN_RANGE;
        goto out;
    }
    if (sig_len != 2 * flen) {
        rv = CKR_SIGNATURE_LEN_RANGE;
        goto out;
    }
    es = ECDSA_SIG_new();
    r = BN_bin2bn(sig, (int)flen, NULL);
    s = BN_bin2bn(sig + flen, (int)flen, NULL);
    if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        rv = kh_crypto_ossl_rv(CKR_HOST_MEMORY, "ECDSA_SIG");
        goto out;
    }
    der_len = i2d_ECDSA_SIG(es, &der);
    ctx = EVP_PKEY_CTX_new_from_pkey(kh_ossl_libctx(), pkey, NULL);
    if (der_len <= 0 || !ctx || EVP_PKEY_verify_init(ctx) <= 0) {
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "ECDSA verify setup");
        goto out;
    }
    /* OpenSSL rejects r or s of zero or >= n. */
    ok = EVP_PKEY_verify(ctx, der, (size_t)der_len, data, data_len);
    rv = ok == 1 ? CKR_OK : kh_crypto_ossl_rv(CKR_SIGNATURE_INVALID, "ECDSA verify");
out:
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    return rv;
}

/* ---- Ed25519 ---------------------------------------------------------- */

static CK_RV kh_ed_load(EVP_PKEY **pkey_out, kh_pubkey *pub, const uint8_t seed[32])
{
    EVP_PKEY *pkey = EVP_PKEY_new_raw_private_key_ex(kh_ossl_libctx(), "ED25519", NULL, seed, 32);
    size_t len = 32;

    if (!pkey)
        return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "Ed25519 private key");
    if (pub) {
        if (EVP_PKEY_get_raw_public_key(pkey, pub->point, &len) != 1 || len != 32) {
            EVP_PKEY_free(pkey);
            return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "Ed25519 public key");
        }
        pub->point_len = 32;
        pub->alg = KH_ALG_ED25519;
    }
    if (pkey_out)
        *pkey_out = pkey;
    else
        EVP_PKEY_free(pkey);
    return CKR_OK;
}

static CK_RV kh_ed_sign(const kh_softkey *key, const uint8_t *data, size_t data_len, uint8_t *sig)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    size_t len = 64;
    CK_RV rv = CKR_OK;

    if (!md || EVP_DigestSignInit_ex(md, NULL, NULL, kh_ossl_libctx(), NULL, key->pkey, NULL) != 1 ||
        EVP_DigestSign(md, sig, &len, data, data_len) != 1 || len != 64)
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "Ed25519 sign");
    EVP_MD_CTX_free(md);
    return rv;
}

static CK_RV kh_ed_verify(const kh_pubkey *pub, const uint8_t *data, size_t data_len,
                          const uint8_t *sig, size_t sig_len)
{
    EVP_PKEY *pkey = NULL;
    EVP_MD_CTX *md = NULL;
    CK_RV rv;

    if (pub->point_len != 32)
        return CKR_PUBLIC_KEY_INVALID;
    if (sig_len != 64)
        return CKR_SIGNATURE_LEN_RANGE;
    pkey = EVP_PKEY_new_raw_public_key_ex(kh_ossl_libctx(), "ED25519", NULL, pub->point, 32);
    if (!pkey)
        return kh_crypto_ossl_rv(CKR_PUBLIC_KEY_INVALID, "Ed25519 public key");
    md = EVP_MD_CTX_new();
    if (!md || EVP_DigestVerifyInit_ex(md, NULL, NULL, kh_ossl_libctx(), NULL, pkey, NULL) != 1) {
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "Ed25519 verify setup");
        goto out;
    }
    rv = EVP_DigestVerify(md, sig, 64, data, data_len) == 1
             ? CKR_OK : kh_crypto_ossl_rv(CKR_SIGNATURE_INVALID, "Ed25519 verify");
out:
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pkey);
    return rv;
}

/* ---- RSA -------------------------------------------------------------- */

/* Fill pub from an RSA key and check its size. */
static CK_RV kh_rsa_fill_pub(kh_pubkey *pub, const EVP_PKEY *pkey)
{
    BIGNUM *n = NULL, *e = NULL;
    int bits = EVP_PKEY_get_bits(pkey);
    CK_RV rv = CKR_OK;

    if (bits < (int)KH_RSA_MIN_BITS || bits > (int)KH_RSA_MAX_BITS)
        return CKR_KEY_SIZE_RANGE;
    if (!EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) ||
        !EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e)) {
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "RSA n/e");
        goto out;
    }
    if ((size_t)BN_num_bytes(n) > sizeof pub->n || (size_t)BN_num_bytes(e) > sizeof pub->e) {
        rv = CKR_ATTRIBUTE_VALUE_INVALID;
        goto out;
    }
    pub->alg = KH_ALG_RSA;
    pub->n_len = (size_t)BN_bn2bin(n, pub->n);
    pub->e_len = (size_t)BN_bn2bin(e, pub->e);
out:
    BN_free(n);
    BN_free(e);
    return rv;
}

/* PKCS#1 RSAPrivateKey DER of a key, into a malloc'd buffer. */
static CK_RV kh_rsa_encode(uint8_t **der, size_t *der_len, const EVP_PKEY *pkey)
{
    unsigned char *tmp = NULL;
    int len = i2d_PrivateKey(pkey, &tmp);   /* "type-specific" = PKCS#1 for RSA */
    CK_RV rv;

    if (len <= 0)
        return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "i2d_PrivateKey");
    rv = kh_secret_dup(der, der_len, tmp, (size_t)len);
    OPENSSL_clear_free(tmp, (size_t)len);
    return rv;
}

/* Parse PKCS#1 DER (the whole buffer, nothing trailing). */
static CK_RV kh_rsa_decode(EVP_PKEY **out, const uint8_t *der, size_t len)
{
    const unsigned char *p = der;
    EVP_PKEY *pkey;

    *out = NULL;
    if (len == 0 || len > LONG_MAX)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    pkey = d2i_PrivateKey_ex(EVP_PKEY_RSA, NULL, &p, (long)len, kh_ossl_libctx(), NULL);
    if (!pkey)
        return kh_crypto_ossl_rv(CKR_ATTRIBUTE_VALUE_INVALID, "d2i_PrivateKey");
    if (p != der + len || EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
        EVP_PKEY_free(pkey);
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    *out = pkey;
    return CKR_OK;
}

/* Consistency of a private key (n = pq, d, CRT values): for import only, it costs. */
static CK_RV kh_rsa_check(EVP_PKEY *pkey)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(kh_ossl_libctx(), pkey, NULL);
    CK_RV rv = CKR_OK;

    if (!ctx)
        return kh_crypto_ossl_rv(CKR_HOST_MEMORY, "EVP_PKEY_CTX_new_from_pkey");
    if (EVP_PKEY_pairwise_check(ctx) != 1)
        rv = kh_crypto_ossl_rv(CKR_ATTRIBUTE_VALUE_INVALID, "RSA pairwise check");
    EVP_PKEY_CTX_free(ctx);
    return rv;
}

static CK_RV kh_rsa_pub_pkey(EVP_PKEY **out, const kh_pubkey *pub, unsigned *bits)
{
    size_t n_len = pub->n_len <= sizeof pub->n ? pub->n_len : 0;
    size_t e_len = pub->e_len <= sizeof pub->e ? pub->e_len : 0;
    const uint8_t *n = kh_strip_zeros(pub->n, &n_len);
    const uint8_t *e = kh_strip_zeros(pub->e, &e_len);
    BIGNUM *bn_n = NULL, *bn_e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    CK_RV rv = CKR_OK;
    int nbits;

    *out = NULL;
    if (n_len == 0 || e_len == 0 || !(e[e_len - 1] & 1) || (e_len == 1 && e[0] < 3))
        return CKR_PUBLIC_KEY_INVALID;
    bn_n = BN_bin2bn(n, (int)n_len, NULL);
    bn_e = BN_bin2bn(e, (int)e_len, NULL);
    if (!bn_n || !bn_e) {
        rv = kh_crypto_ossl_rv(CKR_HOST_MEMORY, "BN_bin2bn");
        goto out;
    }
    nbits = BN_num_bits(bn_n);
    if (nbits < (int)KH_RSA_MIN_BITS || nbits > (int)KH_RSA_MAX_BITS) {
        rv = CKR_KEY_SIZE_RANGE;
        goto out;
    }
    *bits = (unsigned)nbits;
    bld = OSSL_PARAM_BLD_new();
    ctx = EVP_PKEY_CTX_new_from_name(kh_ossl_libctx(), "RSA", "provider=default");
    if (!bld || !ctx ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e) ||
        !(params = OSSL_PARAM_BLD_to_param(bld)) ||
        EVP_PKEY_fromdata_init(ctx) <= 0) {
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "RSA public key setup");
        goto out;
    }
    if (EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        rv = kh_crypto_ossl_rv(CKR_PUBLIC_KEY_INVALID, "RSA public key");
out:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    return rv;
}

/*
 * Set padding (and for PSS digest, MGF1 digest, salt length) on a sign or
 * verify context, after checking the input length against the key: PKCS#1
 * v1.5 takes at most k-11 bytes, PSS exactly one digest.
 */
static CK_RV kh_rsa_setup(EVP_PKEY_CTX *ctx, kh_sigop op, const kh_sigparams *params,
                          unsigned bits, size_t data_len)
{
    size_t k = (bits + 7) / 8;
    size_t em_len = (bits - 1 + 7) / 8;
    const EVP_MD *md, *mgf;
    size_t hlen;

    if (op == KH_OP_RSA_PKCS) {
        if (data_len > k - 11)
            return CKR_DATA_LEN_RANGE;
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0)
            return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "RSA PKCS#1 padding");
        return CKR_OK;
    }
    if (!params)
        return CKR_MECHANISM_PARAM_INVALID;
    md = kh_md_get(params->pss_hash);
    mgf = kh_md_get(params->pss_mgf_hash);
    if (!md || !mgf)
        return CKR_MECHANISM_PARAM_INVALID;
    hlen = kh_hash_len(params->pss_hash);
    if (data_len != hlen)
        return CKR_DATA_LEN_RANGE;
    if (params->pss_salt_len > INT_MAX || em_len < hlen + 2 ||
        params->pss_salt_len > em_len - hlen - 2)
        return CKR_MECHANISM_PARAM_INVALID;
    if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_signature_md(ctx, md) <= 0 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, mgf) <= 0 ||
        EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, (int)params->pss_salt_len) <= 0)
        return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "RSA PSS parameters");
    return CKR_OK;
}

static CK_RV kh_rsa_sign(const kh_softkey *key, kh_sigop op, const kh_sigparams *params,
                         const uint8_t *data, size_t data_len, uint8_t *sig)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(kh_ossl_libctx(), key->pkey, NULL);
    size_t len = key->sig_bytes;
    CK_RV rv;

    if (!ctx || EVP_PKEY_sign_init(ctx) <= 0) {
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "RSA sign setup");
        goto out;
    }
    rv = kh_rsa_setup(ctx, op, params, key->rsa_bits, data_len);
    if (rv != CKR_OK)
        goto out;
    /* No digest for PKCS#1: OpenSSL pads the DigestInfo (or raw data) with type 1. */
    if (EVP_PKEY_sign(ctx, sig, &len, data, data_len) <= 0 || len != key->sig_bytes)
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "RSA sign");
out:
    EVP_PKEY_CTX_free(ctx);
    return rv;
}

static CK_RV kh_rsa_verify(const kh_pubkey *pub, kh_sigop op, const kh_sigparams *params,
                           const uint8_t *data, size_t data_len, const uint8_t *sig, size_t sig_len)
{
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    unsigned bits = 0;
    CK_RV rv;

    rv = kh_rsa_pub_pkey(&pkey, pub, &bits);
    if (rv != CKR_OK)
        return rv;
    if (sig_len != (bits + 7) / 8) {
        rv = CKR_SIGNATURE_LEN_RANGE;
        goto out;
    }
    ctx = EVP_PKEY_CTX_new_from_pkey(kh_ossl_libctx(), pkey, NULL);
    if (!ctx || EVP_PKEY_verify_init(ctx) <= 0) {
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "RSA verify setup");
        goto out;
    }
    rv = kh_rsa_setup(ctx, op, params, bits, data_len);
    if (rv != CKR_OK)
        goto out;
    rv = EVP_PKEY_verify(ctx, sig, sig_len, data, data_len) == 1
             ? CKR_OK : kh_crypto_ossl_rv(CKR_SIGNATURE_INVALID, "RSA verify");
out:
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    return rv;
}

CK_RV kh_crypto_rsa_from_components(uint8_t **der, size_t *der_len,
                                    const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len,
                                    const uint8_t *d, size_t d_len, const uint8_t *p, size_t p_len,
                                    const uint8_t *q, size_t q_len, const uint8_t *dp, size_t dp_len,
                                    const uint8_t *dq, size_t dq_len, const uint8_t *qi, size_t qi_len)
{
    static const char *const names[8] = {
        OSSL_PKEY_PARAM_RSA_N, OSSL_PKEY_PARAM_RSA_E, OSSL_PKEY_PARAM_RSA_D,
        OSSL_PKEY_PARAM_RSA_FACTOR1, OSSL_PKEY_PARAM_RSA_FACTOR2,
        OSSL_PKEY_PARAM_RSA_EXPONENT1, OSSL_PKEY_PARAM_RSA_EXPONENT2,
        OSSL_PKEY_PARAM_RSA_COEFFICIENT1,
    };
    const uint8_t *in[8] = { n, e, d, p, q, dp, dq, qi };
    const size_t in_len[8] = { n_len, e_len, d_len, p_len, q_len, dp_len, dq_len, qi_len };
    BIGNUM *bn[8] = { NULL };
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;
    kh_pubkey pub;
    CK_RV rv = kh_crypto_init();

    if (rv != CKR_OK)
        return rv;
    if (!der || !der_len)
        return CKR_ARGUMENTS_BAD;
    *der = NULL;
    *der_len = 0;
    for (int i = 0; i < 8; i++) {
        if (!in[i] || in_len[i] == 0 || in_len[i] > KH_RSA_MAX_BYTES + 1)
            return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    bld = OSSL_PARAM_BLD_new();
    ctx = EVP_PKEY_CTX_new_from_name(kh_ossl_libctx(), "RSA", "provider=default");
    if (!bld || !ctx) {
        rv = kh_crypto_ossl_rv(CKR_HOST_MEMORY, "RSA components setup");
        goto out;
    }
    for (int i = 0; i < 8; i++) {
        /* Secure BNs put the secret parameters in memory OSSL_PARAM_free clears. */
        bn[i] = i < 2 ? BN_new() : BN_secure_new();
        if (!bn[i] || !BN_bin2bn(in[i], (int)in_len[i], bn[i]) ||
            !OSSL_PARAM_BLD_push_BN(bld, names[i], bn[i])) {
            rv = kh_crypto_ossl_rv(CKR_HOST_MEMORY, "RSA components");
            goto out;
        }
    }
    params = OSSL_PARAM_BLD_to_param(bld);
    if (!params || EVP_PKEY_fromdata_init(ctx) <= 0) {
        rv = kh_crypto_ossl_rv(CKR_HOST_MEMORY, "RSA components params");
        goto out;
    }
    if (EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_KEYPAIR, params) <= 0) {
        rv = kh_crypto_ossl_rv(CKR_ATTRIBUTE_VALUE_INVALID, "RSA from components");
        goto out;
    }
    rv = kh_rsa_fill_pub(&pub, pkey);
    if (rv == CKR_OK)
        rv = kh_rsa_check(pkey);
    if (rv == CKR_OK)
        rv = kh_rsa_encode(der, der_len, pkey);
out:
    EVP_PKEY_free(pkey);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    for (int i = 0; i < 8; i++)
        BN_clear_free(bn[i]);
    return rv;
}

/* ---- generate / import / load ----------------------------------------- */

CK_RV kh_crypto_generate(kh_pubkey *pub, uint8_t **secret, size_t *secret_len,
                         kh_alg alg, unsigned rsa_bits)
{
    uint8_t sk[48];
    size_t flen = kh_field_len(alg);
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;
    CK_RV rv = kh_crypto_init();

    if (rv != CKR_OK)
        return rv;
    if (!pub || !secret || !secret_len)
        return CKR_ARGUMENTS_BAD;
    memset(pub, 0, sizeof *pub);
    *secret = NULL;
    *secret_len = 0;

    switch (alg) {
    case KH_ALG_SECP256K1:
    case KH_ALG_P256:
    case KH_ALG_P384:
        /* Rejection sampling: a draw outside [1, n-1] is vanishingly rare. */
        for (int tries = 0; tries < 64; tries++) {
            rv = kh_crypto_random(sk, flen);
            if (rv != CKR_OK)
                break;
            rv = alg == KH_ALG_SECP256K1 ? kh_k1_pub(pub, sk) : kh_ec_load(NULL, pub, alg, sk);
            if (rv != CKR_ATTRIBUTE_VALUE_INVALID)
                break;
        }
        if (rv == CKR_ATTRIBUTE_VALUE_INVALID)
            rv = CKR_FUNCTION_FAILED;
        if (rv == CKR_OK)
            rv = kh_secret_dup(secret, secret_len, sk, flen);
        break;
    case KH_ALG_ED25519:
        rv = kh_crypto_random(sk, 32);
        if (rv == CKR_OK)
            rv = kh_ed_load(NULL, pub, sk);
        if (rv == CKR_OK)
            rv = kh_secret_dup(secret, secret_len, sk, 32);
        break;
    case KH_ALG_RSA:
        if (rsa_bits < KH_RSA_MIN_BITS || rsa_bits > KH_RSA_MAX_BITS || rsa_bits % 8 != 0)
            return CKR_KEY_SIZE_RANGE;
        ctx = EVP_PKEY_CTX_new_from_name(kh_ossl_libctx(), "RSA", "provider=default");
        if (!ctx || EVP_PKEY_keygen_init(ctx) <= 0 ||
            EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, (int)rsa_bits) <= 0 ||
            EVP_PKEY_generate(ctx, &pkey) <= 0) {
            rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "RSA keygen");
            break;
        }
        rv = kh_rsa_fill_pub(pub, pkey);
        if (rv == CKR_OK)
            rv = kh_rsa_encode(secret, secret_len, pkey);
        break;
    default:
        return CKR_ARGUMENTS_BAD;
    }
    OPENSSL_cleanse(sk, sizeof sk);
    EVP_PKEY_free(pkey);
    EVP_PKEY_CTX_free(ctx);
    if (rv != CKR_OK) {
        kh_crypto_secret_free(*secret, *secret_len);
        *secret = NULL;
        *secret_len = 0;
        memset(pub, 0, sizeof *pub);
    }
    return rv;
}

CK_RV kh_crypto_import(kh_pubkey *pub, uint8_t **norm, size_t *norm_len,
                       kh_alg alg, const uint8_t *secret, size_t secret_len)
{
    uint8_t sk[48];
    size_t flen = kh_field_len(alg);
    EVP_PKEY *pkey = NULL;
    uint8_t *out = NULL;
    size_t out_len = 0;
    CK_RV rv = kh_crypto_init();

    if (rv != CKR_OK)
        return rv;
    if (!pub || (norm && !norm_len) || (!secret && secret_len))
        return CKR_ARGUMENTS_BAD;
    memset(pub, 0, sizeof *pub);
    if (norm) {
        *norm = NULL;
        *norm_len = 0;
    }

    switch (alg) {
    case KH_ALG_SECP256K1:
    case KH_ALG_P256:
    case KH_ALG_P384:
        if (secret_len == 0 || !kh_scalar_fit(sk, flen, secret, secret_len)) {
            rv = CKR_ATTRIBUTE_VALUE_INVALID;
            break;
        }
        rv = alg == KH_ALG_SECP256K1 ? kh_k1_pub(pub, sk) : kh_ec_load(NULL, pub, alg, sk);
        if (rv == CKR_OK && norm)
            rv = kh_secret_dup(&out, &out_len, sk, flen);
        break;
    case KH_ALG_ED25519:
        if (secret_len != 32) {
            rv = CKR_ATTRIBUTE_VALUE_INVALID;
            break;
        }
        rv = kh_ed_load(NULL, pub, secret);
        if (rv == CKR_OK && norm)
            rv = kh_secret_dup(&out, &out_len, secret, 32);
        break;
    case KH_ALG_RSA:
        rv = kh_rsa_decode(&pkey, secret, secret_len);
        if (rv == CKR_OK)
            rv = kh_rsa_fill_pub(pub, pkey);
        if (rv == CKR_OK)
            rv = kh_rsa_check(pkey);
        if (rv == CKR_OK && norm)
            rv = kh_rsa_encode(&out, &out_len, pkey);
        break;
    default:
        return CKR_ARGUMENTS_BAD;
    }
    OPENSSL_cleanse(sk, sizeof sk);
    EVP_PKEY_free(pkey);
    if (rv != CKR_OK) {
        kh_crypto_secret_free(out, out_len);
        memset(pub, 0, sizeof *pub);
        return rv;
    }
    if (norm) {
        *norm = out;
        *norm_len = out_len;
    }
    return CKR_OK;
}

CK_RV kh_softkey_load(kh_softkey **out, kh_alg alg, const uint8_t *secret, size_t len)
{
    kh_softkey *key;
    uint8_t sk[48];
    size_t flen = kh_field_len(alg);
    CK_RV rv = kh_crypto_init();

    if (rv != CKR_OK)
        return rv;
    if (!out || (!secret && len))
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    if (alg < KH_ALG_SECP256K1 || alg > KH_ALG_RSA)
        return CKR_ARGUMENTS_BAD;
    /* Locked, non-dumpable, wiped-on-fork memory (secmem.c). */
    key = kh_secmem_alloc(sizeof *key);
    if (!key)
        return CKR_HOST_MEMORY;
    key->alg = alg;
    key->sig_bytes = flen;

    switch (alg) {
    case KH_ALG_SECP256K1:
        if (len == 0 || !kh_scalar_fit(key->seckey, 32, secret, len) ||
            !secp256k1_keypair_create(kh_secp, &key->keypair, key->seckey))
            rv = CKR_ATTRIBUTE_VALUE_INVALID;
        break;
    case KH_ALG_P256:
    case KH_ALG_P384:
        if (len == 0 || !kh_scalar_fit(sk, flen, secret, len))
            rv = CKR_ATTRIBUTE_VALUE_INVALID;
        else
            rv = kh_ec_load(&key->pkey, NULL, alg, sk);
        break;
    case KH_ALG_ED25519:
        rv = len == 32 ? kh_ed_load(&key->pkey, NULL, secret) : CKR_ATTRIBUTE_VALUE_INVALID;
        break;
    case KH_ALG_RSA:
        /* No consistency check here: the blob was checked when it was imported. */
        rv = kh_rsa_decode(&key->pkey, secret, len);
        if (rv == CKR_OK) {
            int bits = EVP_PKEY_get_bits(key->pkey);
            if (bits < (int)KH_RSA_MIN_BITS || bits > (int)KH_RSA_MAX_BITS) {
                rv = CKR_KEY_SIZE_RANGE;
            } else {
                key->rsa_bits = (unsigned)bits;
                key->sig_bytes = (size_t)EVP_PKEY_get_size(key->pkey);
            }
        }
        break;
    default:
        rv = CKR_ARGUMENTS_BAD;
        break;
    }
    OPENSSL_cleanse(sk, sizeof sk);
    if (rv != CKR_OK) {
        kh_softkey_free(key);
        return rv;
    }
    *out = key;
    return CKR_OK;
}

void kh_softkey_free(kh_softkey *key)
{
    if (!key)
        return;
    EVP_PKEY_free(key->pkey);   /* OpenSSL clears private key material on free */
    kh_secmem_free(key, sizeof *key);
}

/* ---- sign / verify ---------------------------------------------------- */

CK_RV kh_softkey_sign(const kh_softkey *key, kh_sigop op, const kh_sigparams *params,
                      const uint8_t *data, size_t data_len, uint8_t *sig, size_t *siglen)
{
    size_t need;
    CK_RV rv = kh_crypto_init();

    if (rv != CKR_OK)
        return rv;
    if (!key || !siglen || (!data && data_len))
        return CKR_ARGUMENTS_BAD;
    need = kh_softkey_sig_len(key, op);
    if (need == 0)
        return CKR_KEY_TYPE_INCONSISTENT;
    if (!sig) {
        *siglen = need;
        return CKR_OK;
    }
    if (*siglen < need) {
        *siglen = need;
        return CKR_BUFFER_TOO_SMALL;
    }
    if (!data)
        data = (const uint8_t *)"";

    switch (key->alg) {
    case KH_ALG_SECP256K1:
        rv = kh_k1_sign(key, op, params, data, data_len, sig);
        break;
    case KH_ALG_P256:
    case KH_ALG_P384:
        rv = kh_ec_sign(key, data, data_len, sig);
        break;
    case KH_ALG_ED25519:
        rv = kh_ed_sign(key, data, data_len, sig);
        break;
    case KH_ALG_RSA:
        rv = kh_rsa_sign(key, op, params, data, data_len, sig);
        break;
    default:
        rv = CKR_KEY_TYPE_INCONSISTENT;
        break;
    }
    if (rv != CKR_OK) {
        OPENSSL_cleanse(sig, need);
        return rv;
    }
    *siglen = need;
    return CKR_OK;
}

CK_RV kh_pubkey_check(const kh_pubkey *pub)
{
    secp256k1_pubkey pk;
    EVP_PKEY *pkey = NULL;
    unsigned bits;
    CK_RV rv = kh_crypto_init();

    if (rv != CKR_OK)
        return rv;
    if (!pub)
        return CKR_ARGUMENTS_BAD;
    switch (pub->alg) {
    case KH_ALG_SECP256K1:
        return kh_k1_parse_pub(&pk, pub) ? CKR_OK : CKR_ATTRIBUTE_VALUE_INVALID;
    case KH_ALG_P256:
    case KH_ALG_P384:
        rv = kh_ec_pub_pkey(&pkey, pub);
        break;
    case KH_ALG_ED25519:
        /* OpenSSL decodes the point only when verifying. */
        return pub->point_len == 32 ? CKR_OK : CKR_ATTRIBUTE_VALUE_INVALID;
    case KH_ALG_RSA:
        rv = kh_rsa_pub_pkey(&pkey, pub, &bits);
        break;
    default:
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    EVP_PKEY_free(pkey);
    return rv == CKR_PUBLIC_KEY_INVALID ? CKR_ATTRIBUTE_VALUE_INVALID : rv;
}

CK_RV kh_crypto_verify(const kh_pubkey *pub, kh_sigop op, const kh_sigparams *params,
                       const uint8_t *data, size_t data_len, const uint8_t *sig, size_t sig_len)
{
    CK_RV rv = kh_crypto_init();

    if (rv != CKR_OK)
        return rv;
    if (!pub || (!data && data_len) || (!sig && sig_len))
        return CKR_ARGUMENTS_BAD;
    if (!kh_op_fits(pub->alg, op))
        return CKR_KEY_TYPE_INCONSISTENT;
    if (!data)
        data = (const uint8_t *)"";
    if (!sig)
        sig = (const uint8_t *)"";

    switch (pub->alg) {
    case KH_ALG_SECP256K1:
        return kh_k1_verify(pub, op, data, data_len, sig, sig_len);
    case KH_ALG_P256:
    case KH_ALG_P384:
        return kh_ec_verify(pub, data, data_len, sig, sig_len);
    case KH_ALG_ED25519:
        return kh_ed_verify(pub, data, data_len, sig, sig_len);
    case KH_ALG_RSA:
        return kh_rsa_verify(pub, op, params, data, data_len, sig, sig_len);
    default:
        return CKR_KEY_TYPE_INCONSISTENT;
    }
}

/* ---- hashes ----------------------------------------------------------- */

size_t kh_hash_len(kh_hash h)
{
    switch (h) {
    case KH_HASH_SHA1:
        return 20;
    case KH_HASH_SHA224:
        return 28;
    case KH_HASH_SHA256:
        return 32;
    case KH_HASH_SHA384:
        return 48;
    case KH_HASH_SHA512:
        return 64;
    default:
        return 0;
    }
}

CK_RV kh_hash_oneshot(uint8_t *out, kh_hash h, const uint8_t *data, size_t len)
{
    const EVP_MD *md;
    CK_RV rv = kh_crypto_init();

    if (rv != CKR_OK)
        return rv;
    md = kh_md_get(h);
    if (!md)
        return CKR_MECHANISM_INVALID;
    if (!out || (!data && len))
        return CKR_ARGUMENTS_BAD;
    if (EVP_Digest(data ? data : (const uint8_t *)"", len, out, NULL, md, NULL) != 1)
        return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "EVP_Digest");
    return CKR_OK;
}

CK_RV kh_hash_new(kh_hash_ctx **out, kh_hash h)
{
    kh_hash_ctx *ctx;
    const EVP_MD *md;
    CK_RV rv = kh_crypto_init();

    if (rv != CKR_OK)
        return rv;
    if (!out)
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    md = kh_md_get(h);
    if (!md)
        return CKR_MECHANISM_INVALID;
    ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return CKR_HOST_MEMORY;
    ctx->h = h;
    ctx->md = EVP_MD_CTX_new();
    if (!ctx->md || EVP_DigestInit_ex2(ctx->md, md, NULL) != 1) {
        rv = kh_crypto_ossl_rv(CKR_HOST_MEMORY, "EVP_DigestInit_ex2");
        kh_hash_free(ctx);
        return rv;
    }
    *out = ctx;
    return CKR_OK;
}

CK_RV kh_hash_update(kh_hash_ctx *ctx, const uint8_t *data, size_t len)
{
    if (!ctx || (!data && len))
        return CKR_ARGUMENTS_BAD;
    if (len == 0)
        return CKR_OK;
    if (EVP_DigestUpdate(ctx->md, data, len) != 1)
        return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "EVP_DigestUpdate");
    return CKR_OK;
}

CK_RV kh_hash_final(kh_hash_ctx *ctx, uint8_t *out)
{
    if (!ctx || !out)
        return CKR_ARGUMENTS_BAD;
    if (EVP_DigestFinal_ex(ctx->md, out, NULL) != 1)
        return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "EVP_DigestFinal_ex");
    return CKR_OK;
}

void kh_hash_free(kh_hash_ctx *ctx)
{
    if (!ctx)
        return;
    EVP_MD_CTX_free(ctx->md);   /* clears the digest state */
    free(ctx);
}

const uint8_t *kh_hash_digestinfo_prefix(kh_hash h, size_t *len)
{
    static const uint8_t sha1[] = {
        0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
    };
    static const uint8_t sha224[] = {
        0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04,
        0x05, 0x00, 0x04, 0x1c,
    };
    static const uint8_t sha256[] = {
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    };
    static const uint8_t sha384[] = {
        0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
        0x05, 0x00, 0x04, 0x30,
    };
    static const uint8_t sha512[] = {
        0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
        0x05, 0x00, 0x04, 0x40,
    };
    const uint8_t *p = NULL;
    size_t n = 0;

    switch (h) {
    case KH_HASH_SHA1:
        p = sha1;
        n = sizeof sha1;
        break;
    case KH_HASH_SHA224:
        p = sha224;
        n = sizeof sha224;
        break;
    case KH_HASH_SHA256:
        p = sha256;
        n = sizeof sha256;
        break;
    case KH_HASH_SHA384:
        p = sha384;
        n = sizeof sha384;
        break;
    case KH_HASH_SHA512:
        p = sha512;
        n = sizeof sha512;
        break;
    default:
        break;
    }
    if (len)
        *len = n;
    return p;
}

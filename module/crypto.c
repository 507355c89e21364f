/*
 * keyhold crypto primitives (contract in crypto.h).
 *
 * secp256k1 goes through libsecp256k1 with one context, created and
 * randomised once and then shared read-only. P-256, P-384 and RSA go through
 * OpenSSL's low-level EC_KEY / RSA objects, Ed25519 through OpenSSL 3 EVP
 * (key loading, signing) and libsodium (verification, kh_ed_verify_raw);
 * digests are fetched once. OpenSSL failures reach CK_RV through one
 * translator (kh_crypto_ossl_rv), which logs the native error code once when
 * KEYHOLD_LOG=debug.
 *
 * Engine-free by construction. The module runs inside other people's
 * processes, and OpenSSL 3.0 still consults the host's ENGINE tables even
 * though every call names our own OSSL_LIB_CTX (ossl.c): EVP_PKEY_CTX_new_*
 * takes the EVP_PKEY method of whatever engine claims the key type
 * (ENGINE_get_pkey_meth_engine in int_ctx_new, crypto/evp/pmeth_lib.c), and
 * even the default provider's own RSA and EC keys get the default engine's
 * RSA_METHOD / EC_KEY_METHOD. `openssl ... -engine pkcs11` (libp11) makes
 * itself that default for RSA and EC, so EVP either broke our keys
 * ("operation not supported for this keytype") or handed them to the engine.
 * So P-256/P-384 and RSA keys are EC_KEY and RSA objects whose method is set
 * to OpenSSL's own (EC_KEY_OpenSSL, RSA_PKCS1_OpenSSL) before any key
 * material goes in, and no EVP_PKEY or EVP_PKEY_CTX is ever made for them;
 * a default engine only sees the empty object being created and switched
 * away from. SoftHSM does the same. These APIs are deprecated in OpenSSL 3.0,
 * hence OPENSSL_SUPPRESS_DEPRECATED. Ed25519 has no low-level API and no
 * engine method slot besides the EVP_PKEY one: every Ed25519 operation on
 * OpenSSL first refuses if an engine claims Ed25519 (libp11 does not), then
 * checks that the key and context it got are provider-backed (verification
 * does not use OpenSSL at all).
 */
#define OPENSSL_SUPPRESS_DEPRECATED

#include "crypto.h"
#include "base.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <secp256k1.h>
#include <secp256k1_extrakeys.h>
#include <secp256k1_recovery.h>
#include <secp256k1_schnorrsig.h>
#include <sodium.h>

#define KH_RSA_MIN_BITS 2048u
#define KH_ED_READY 4u   /* ready Ed25519 signing contexts kept per key */
#define KH_RSA_MAX_BITS 4096u

struct kh_softkey {
    kh_alg alg;
    size_t sig_bytes;              /* EC field size, or RSA modulus bytes */
    unsigned rsa_bits;
    uint8_t seckey[32];            /* secp256k1 */
    secp256k1_keypair keypair;     /* secp256k1, precomputed for BIP-340 */
    EC_KEY *ec;                    /* P-256, P-384: OpenSSL's own method */
    RSA *rsa;                      /* RSA: OpenSSL's own method, blinding on */
    EVP_PKEY *pkey;                /* Ed25519 (provider-backed) */
    /* Ed25519: signing contexts made ready once (EVP_DigestSignInit_ex fetches
     * the algorithm under OpenSSL's store lock), taken and put back with
     * atomic exchanges by concurrent signers; the only mutable part of a key. */
    EVP_MD_CTX *ed_ready[KH_ED_READY];
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
    if (sodium_init() < 0) {       /* thread-safe and idempotent; Ed25519 verification */
        kh_crypto_init_rv = CKR_FUNCTION_FAILED;
        return;
    }
    kh_secp = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    if (!kh_secp) {
        kh_crypto_init_rv = CKR_HOST_MEMORY;
        return;
    }
    if (kh_random(seed, sizeof seed) != CKR_OK ||
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

/* Module unload only (pthread_once cannot run the init again afterwards). */
void kh_crypto_cleanup(void)
{
    for (int h = KH_HASH_SHA1; h <= KH_HASH_SHA512; h++) {
        EVP_MD_free(kh_md[h]);
        kh_md[h] = NULL;
    }
    if (kh_secp) {
        secp256k1_context_destroy(kh_secp);
        kh_secp = NULL;
    }
    kh_crypto_init_rv = CKR_CRYPTOKI_NOT_INITIALIZED;
}

CK_RV kh_crypto_init(void)
{
    if (pthread_once(&kh_crypto_once, kh_crypto_do_init) != 0)
        return CKR_FUNCTION_FAILED;
    return kh_crypto_init_rv;
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

/*
 * BIP-340 auxiliary randomness: fresh OS randomness, drawn 1 KiB at a time
 * per thread (one getrandom() per 32 signatures instead of one each), each
 * 32 bytes cleared from the buffer when taken. aux only masks the secret key
 * in the nonce derivation (BIP-340, "Default Signing"): the nonce also hashes
 * the key and the message, so a repeated aux - e.g. in a forked child that
 * inherited this buffer - gives at worst the same signature for the same
 * message, as deterministic signing (all-zero aux) would, never a repeated
 * nonce for different messages.
 */
#define KH_AUX_POOL 1024u
static __thread struct {
    uint8_t buf[KH_AUX_POOL];
    size_t left;               /* bytes not handed out yet, at the end of buf */
} kh_aux_pool;

static CK_RV kh_aux_take(uint8_t out[32])
{
    if (kh_aux_pool.left < 32) {
        CK_RV rv = kh_random(kh_aux_pool.buf, sizeof kh_aux_pool.buf);
        if (rv != CKR_OK)
            return rv;
        kh_aux_pool.left = sizeof kh_aux_pool.buf;
    }
    uint8_t *p = kh_aux_pool.buf + sizeof kh_aux_pool.buf - kh_aux_pool.left;
    memcpy(out, p, 32);
    OPENSSL_cleanse(p, 32);
    kh_aux_pool.left -= 32;
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
            rv = kh_aux_take(aux);
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

/* Verify with an already parsed secp256k1 key (kh_k1_verify, kh_verifier_verify). */
static CK_RV kh_k1_verify_pk(const secp256k1_pubkey *pkp, kh_sigop op, const uint8_t *data,
                             size_t data_len, const uint8_t *sig, size_t sig_len)
{
    secp256k1_pubkey pk = *pkp, rec;
    secp256k1_xonly_pubkey xpk;
    secp256k1_ecdsa_signature s, low;
    secp256k1_ecdsa_recoverable_signature rs;
    uint8_t msg[32];

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

static CK_RV kh_k1_verify(const kh_pubkey *pub, kh_sigop op, const uint8_t *data, size_t data_len,
                          const uint8_t *sig, size_t sig_len)
{
    secp256k1_pubkey pk;

    if (!kh_k1_parse_pub(&pk, pub))
        return CKR_PUBLIC_KEY_INVALID;
    return kh_k1_verify_pk(&pk, op, data, data_len, sig, sig_len);
}

/* ---- P-256 / P-384 ---------------------------------------------------- */

/*
 * An empty EC_KEY on group in our library context, with OpenSSL's own
 * method. EC_KEY_new_ex attaches the default engine's EC_KEY_METHOD, so the
 * method is replaced before the group or any key material goes in.
 */
static EC_KEY *kh_ec_key_new(const EC_GROUP *group)
{
    EC_KEY *key = EC_KEY_new_ex(kh_ossl_libctx(), NULL);

    if (!key || !EC_KEY_set_method(key, EC_KEY_OpenSSL()) || !EC_KEY_set_group(key, group)) {
        EC_KEY_free(key);
        return NULL;
    }
    return key;
}

/*
 * From a field-size scalar: check it is in [1, n-1], derive the public point
 * into pub, and (if key_out) build an OpenSSL key pair.
 */
static CK_RV kh_ec_load(EC_KEY **key_out, kh_pubkey *pub, kh_alg alg, const uint8_t *scalar)
{
    size_t flen = kh_field_len(alg);
    EC_GROUP *group = NULL;
    EC_POINT *pt = NULL;
    BN_CTX *bnctx = NULL;
    BIGNUM *priv = NULL;
    EC_KEY *key = NULL;
    uint8_t point[KH_EC_POINT_MAX];
    size_t plen;
    CK_RV rv = CKR_FUNCTION_FAILED;

    group = EC_GROUP_new_by_curve_name_ex(kh_ossl_libctx(), NULL, kh_ec_nid(alg));
    bnctx = BN_CTX_secure_new_ex(kh_ossl_libctx());
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
    if (key_out) {
        /* set_private_key copies the scalar into a secure, constant-time BIGNUM. */
        key = kh_ec_key_new(group);
        if (!key || !EC_KEY_set_private_key(key, priv) || !EC_KEY_set_public_key(key, pt)) {
            rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "EC key");
            goto out;
        }
    }
    if (pub) {
        memcpy(pub->point, point, plen);
        pub->point_len = plen;
        pub->alg = alg;
    }
    if (key_out) {
        *key_out = key;
        key = NULL;
    }
    rv = CKR_OK;
out:
    EC_KEY_free(key);           /* clears the private key */
    BN_clear_free(priv);
    EC_POINT_free(pt);
    BN_CTX_free(bnctx);
    EC_GROUP_free(group);
    return rv;
}

/* An OpenSSL public key from an uncompressed point; CKR_PUBLIC_KEY_INVALID if it is not on the curve. */
static CK_RV kh_ec_pub_key(EC_KEY **out, const kh_pubkey *pub)
{
    size_t flen = kh_field_len(pub->alg);
    EC_GROUP *group = NULL;
    EC_POINT *pt = NULL;
    EC_KEY *key = NULL;
    CK_RV rv = CKR_OK;

    *out = NULL;
    if (pub->point_len != 1 + 2 * flen || pub->point[0] != 0x04)
        return CKR_PUBLIC_KEY_INVALID;
    group = EC_GROUP_new_by_curve_name_ex(kh_ossl_libctx(), NULL, kh_ec_nid(pub->alg));
    pt = group ? EC_POINT_new(group) : NULL;
    if (!pt) {
        rv = kh_crypto_ossl_rv(CKR_HOST_MEMORY, "EC public key setup");
        goto out;
    }
    /* oct2point decodes the point, which checks that it lies on the curve. */
    if (!EC_POINT_oct2point(group, pt, pub->point, pub->point_len, NULL)) {
        rv = kh_crypto_ossl_rv(CKR_PUBLIC_KEY_INVALID, "EC public key");
        goto out;
    }
    key = kh_ec_key_new(group);
    if (!key || !EC_KEY_set_public_key(key, pt)) {
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "EC public key");
        goto out;
    }
    *out = key;
    key = NULL;
out:
    EC_KEY_free(key);
    EC_POINT_free(pt);
    EC_GROUP_free(group);
    return rv;
}

/*
 * ECDSA takes the leftmost field-size bytes of a longer digest (FIPS 186;
 * both orders are whole bytes), so only those are passed: no int overflow.
 */
static int kh_ec_digest_len(kh_alg alg, size_t data_len)
{
    size_t flen = kh_field_len(alg);

    return (int)(data_len < flen ? data_len : flen);
}

/* ECDSA with OpenSSL's own method, fixed-width r||s out. */
static CK_RV kh_ec_sign(const kh_softkey *key, const uint8_t *data, size_t data_len, uint8_t *sig)
{
    size_t flen = kh_field_len(key->alg);
    ECDSA_SIG *es;
    const BIGNUM *r, *s;
    CK_RV rv = CKR_OK;

    if (data_len == 0)
        return CKR_DATA_LEN_RANGE;
    es = ECDSA_do_sign(data, kh_ec_digest_len(key->alg, data_len), key->ec);
    if (!es)
        return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "ECDSA sign");
    ECDSA_SIG_get0(es, &r, &s);
    if (BN_bn2binpad(r, sig, (int)flen) != (int)flen ||
        BN_bn2binpad(s, sig + flen, (int)flen) != (int)flen)
        rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "BN_bn2binpad");
    ECDSA_SIG_free(es);
    return rv;
}

/* Verify with an OpenSSL key built by kh_ec_pub_key (kh_ec_verify, kh_verifier_verify). */
static CK_RV kh_ec_verify_key(EC_KEY *key, kh_alg alg, const uint8_t *data, size_t data_len,
                              const uint8_t *sig, size_t sig_len)
{
    size_t flen = kh_field_len(alg);
    ECDSA_SIG *es = NULL;
    BIGNUM *r = NULL, *s = NULL;
    int ok;
    CK_RV rv;

    if (data_len == 0)
        return CKR_DATA_LEN_RANGE;
    if (sig_len != 2 * flen)
        return CKR_SIGNATURE_LEN_RANGE;
    es = ECDSA_SIG_new();
    r = BN_bin2bn(sig, (int)flen, NULL);
    s = BN_bin2bn(sig + flen, (int)flen, NULL);
    if (!es || !r || !s || !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        rv = kh_crypto_ossl_rv(CKR_HOST_MEMORY, "ECDSA_SIG");
        goto out;
    }
    /* OpenSSL rejects r or s of zero or >= n. */
    ok = ECDSA_do_verify(data, kh_ec_digest_len(alg, data_len), es, key);
    rv = ok == 1 ? CKR_OK : kh_crypto_ossl_rv(CKR_SIGNATURE_INVALID, "ECDSA verify");
out:
    ECDSA_SIG_free(es);
    return rv;
}

static CK_RV kh_ec_verify(const kh_pubkey *pub, const uint8_t *data, size_t data_len,
                          const uint8_t *sig, size_t sig_len)
{
    EC_KEY *key = NULL;
    CK_RV rv = kh_ec_pub_key(&key, pub);

    if (rv != CKR_OK)
        return rv;
    rv = kh_ec_verify_key(key, pub->alg, data, data_len, sig, sig_len);
    EC_KEY_free(key);
    return rv;
}

/* ---- Ed25519 ---------------------------------------------------------- */

/*
 * Ed25519 stays on EVP (there is no low-level API), whose EVP_PKEY_CTX
 * lookup still asks the ENGINE tables for the key type. No engine we know
 * of claims Ed25519; if one does, refuse rather than let it see our key.
 */
static CK_RV kh_ed_engine_free(void)
{
#ifndef OPENSSL_NO_ENGINE
    ENGINE *pm = ENGINE_get_pkey_meth_engine(EVP_PKEY_ED25519);
    ENGINE *am = ENGINE_get_pkey_asn1_meth_engine(EVP_PKEY_ED25519);
    bool claimed = pm != NULL || am != NULL;

    ENGINE_finish(pm);
    ENGINE_finish(am);
    if (claimed) {
        kh_log(KH_LOG_ERROR, "crypto: an OpenSSL ENGINE of the host process claims Ed25519; not using it");
        return CKR_FUNCTION_FAILED;
    }
#endif
    return CKR_OK;
}

static CK_RV kh_ed_load(EVP_PKEY **pkey_out, kh_pubkey *pub, const uint8_t seed[32])
{
    EVP_PKEY *pkey;
    size_t len = 32;
    CK_RV rv = kh_ed_engine_free();

    if (rv != CKR_OK)
        return rv;
    pkey = EVP_PKEY_new_raw_private_key_ex(kh_ossl_libctx(), "ED25519", NULL, seed, 32);
    if (!pkey)
        return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "Ed25519 private key");
    if (!EVP_PKEY_get0_provider(pkey)) {
        EVP_PKEY_free(pkey);
        kh_log(KH_LOG_ERROR, "crypto: Ed25519 key is not provider-backed");
        return CKR_FUNCTION_FAILED;
    }
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

/* After Digest{Sign,Verify}Init: the operation must be a provider's. */
static bool kh_ed_ctx_provided(EVP_MD_CTX *md)
{
    if (EVP_PKEY_CTX_get0_provider(EVP_MD_CTX_get_pkey_ctx(md)))
        return true;
    kh_log(KH_LOG_ERROR, "crypto: Ed25519 operation is not provider-backed");
    return false;
}

/* A new signing context for key: engine check, init, provider check. */
static CK_RV kh_ed_ctx_new(EVP_MD_CTX **out, const kh_softkey *key)
{
    EVP_MD_CTX *md = NULL;
    CK_RV rv = kh_ed_engine_free();

    *out = NULL;
    if (rv != CKR_OK)
        return rv;
    md = EVP_MD_CTX_new();
    if (!md || EVP_DigestSignInit_ex(md, NULL, NULL, kh_ossl_libctx(), NULL, key->pkey, NULL) != 1) {
        EVP_MD_CTX_free(md);
        return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "Ed25519 sign setup");
    }
    if (!kh_ed_ctx_provided(md)) {
        EVP_MD_CTX_free(md);
        return CKR_FUNCTION_FAILED;
    }
    *out = md;
    return CKR_OK;
}

/*
 * Ed25519 signing reuses a context made ready for the key (one-shot
 * EVP_DigestSign keeps no state between calls in OpenSSL 3.0). The engine and
 * provider checks run whenever a context is made: a ready context is bound
 * to the default provider's implementation and no engine can intercept it.
 * Should a reused context fail (an OpenSSL that refuses a second one-shot
 * call), a fresh one is made and the signature retried once.
 */
static CK_RV kh_ed_sign(const kh_softkey *key, const uint8_t *data, size_t data_len, uint8_t *sig)
{
    kh_softkey *k = (kh_softkey *)key;   /* only the ready-context slots change */
    EVP_MD_CTX *md = NULL;
    size_t len = 64;
    bool reused = false;
    CK_RV rv = CKR_OK;

    for (unsigned i = 0; i < KH_ED_READY && !md; i++)
        md = __atomic_exchange_n(&k->ed_ready[i], NULL, __ATOMIC_ACQ_REL);
    reused = md != NULL;
    if (!md && (rv = kh_ed_ctx_new(&md, key)) != CKR_OK)
        return rv;
    if (EVP_DigestSign(md, sig, &len, data, data_len) != 1 || len != 64) {
        ERR_clear_error();
        EVP_MD_CTX_free(md);
        md = NULL;
        len = 64;
        if (!reused || (rv = kh_ed_ctx_new(&md, key)) != CKR_OK)
            return reused ? rv : kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "Ed25519 sign");
        if (EVP_DigestSign(md, sig, &len, data, data_len) != 1 || len != 64) {
            EVP_MD_CTX_free(md);
            return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "Ed25519 sign");
        }
    }
    for (unsigned i = 0; i < KH_ED_READY && md; i++) {
        EVP_MD_CTX *none = NULL;
        if (__atomic_compare_exchange_n(&k->ed_ready[i], &none, md, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED))
            md = NULL;
    }
    EVP_MD_CTX_free(md);
    return CKR_OK;
}

/*
 * Ed25519 signatures are verified with libsodium: the same verdict as
 * OpenSSL 3.0 on every Wycheproof case (test-crypto, test-verifier), in
 * about 0.57 of the time on this kind of machine (OpenSSL 3.0's Ed25519 is
 * the 25.5-bit-limb reference code), with no OpenSSL engine in the path.
 * It also refuses small-order or non-canonical public keys and R values,
 * which no honest signer produces. Signing stays with OpenSSL.
 */
static CK_RV kh_ed_verify_raw(const uint8_t pk[32], const uint8_t *data, size_t data_len,
                              const uint8_t sig[64])
{
    return crypto_sign_ed25519_verify_detached(sig, data, data_len, pk) == 0
               ? CKR_OK : CKR_SIGNATURE_INVALID;
}

static CK_RV kh_ed_verify(const kh_pubkey *pub, const uint8_t *data, size_t data_len,
                          const uint8_t *sig, size_t sig_len)
{
    if (pub->point_len != 32)
        return CKR_PUBLIC_KEY_INVALID;
    if (sig_len != 64)
        return CKR_SIGNATURE_LEN_RANGE;
    return kh_ed_verify_raw(pub->point, data, data_len, sig);
}

/* ---- RSA -------------------------------------------------------------- */

/*
 * An empty RSA object with OpenSSL's own method and blinding on. RSA_new()
 * attaches the default engine's RSA_METHOD (and its flags), so the method is
 * replaced and the flags reset before any key material goes in. The object
 * has no library context of its own: blinding, PSS salts and RSA key
 * generation draw from OpenSSL's default DRBG.
 */
static RSA *kh_rsa_new(void)
{
    RSA *rsa = RSA_new();

    if (!rsa || !RSA_set_method(rsa, RSA_PKCS1_OpenSSL())) {
        RSA_free(rsa);
        return NULL;
    }
    RSA_clear_flags(rsa, ~(RSA_FLAG_CACHE_PUBLIC | RSA_FLAG_CACHE_PRIVATE));
    return rsa;
}

/* Fill pub from an RSA key and check its size. */
static CK_RV kh_rsa_fill_pub(kh_pubkey *pub, const RSA *rsa)
{
    const BIGNUM *n = NULL, *e = NULL;
    int bits;

    RSA_get0_key(rsa, &n, &e, NULL);
    if (!n || !e)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    bits = BN_num_bits(n);
    if (bits < (int)KH_RSA_MIN_BITS || bits > (int)KH_RSA_MAX_BITS)
        return CKR_KEY_SIZE_RANGE;
    if ((size_t)BN_num_bytes(n) > sizeof pub->n || (size_t)BN_num_bytes(e) > sizeof pub->e)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    pub->alg = KH_ALG_RSA;
    pub->n_len = (size_t)BN_bn2bin(n, pub->n);
    pub->e_len = (size_t)BN_bn2bin(e, pub->e);
    return CKR_OK;
}

/* PKCS#1 RSAPrivateKey DER of a key, into a malloc'd buffer. */
static CK_RV kh_rsa_encode(uint8_t **der, size_t *der_len, const RSA *rsa)
{
    unsigned char *tmp = NULL;
    int len = i2d_RSAPrivateKey(rsa, &tmp);
    CK_RV rv;

    if (len <= 0)
        return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "i2d_RSAPrivateKey");
    rv = kh_secret_dup(der, der_len, tmp, (size_t)len);
    OPENSSL_clear_free(tmp, (size_t)len);
    return rv;
}

/* Parse PKCS#1 RSAPrivateKey DER (the whole buffer, nothing trailing). */
static CK_RV kh_rsa_decode(RSA **out, const uint8_t *der, size_t len)
{
    const unsigned char *p = der;
    RSA *rsa;

    *out = NULL;
    if (len == 0 || len > LONG_MAX)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    rsa = kh_rsa_new();
    if (!rsa)
        return kh_crypto_ossl_rv(CKR_HOST_MEMORY, "RSA_new");
    /* d2i fills the object it is given (secure, constant-time BIGNUMs for
     * the secret parts); on failure it frees it and sets rsa to NULL. */
    if (!d2i_RSAPrivateKey(&rsa, &p, (long)len)) {
        RSA_free(rsa);
        return kh_crypto_ossl_rv(CKR_ATTRIBUTE_VALUE_INVALID, "d2i_RSAPrivateKey");
    }
    if (p != der + len) {
        RSA_free(rsa);
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    *out = rsa;
    return CKR_OK;
}

/* A prime factor below 752 (SP 800-56B's small-factor check on n). */
static bool kh_rsa_small_factor(const BIGNUM *p)
{
    return BN_num_bits(p) <= 10 && BN_get_word(p) < 752;
}

/*
 * Consistency of a private key, for import only (it costs): what OpenSSL's
 * key-pair validation checks, i.e. the public part (odd n without small
 * factors and not a prime power, odd e > 1), 1 <= d < n, and RSA_check_key
 * (primes, n = pq, d, CRT values).
 */
static CK_RV kh_rsa_check(const RSA *rsa)
{
    const BIGNUM *n = NULL, *e = NULL, *d = NULL, *p = NULL, *q = NULL;
    const BIGNUM *extra[8];     /* OpenSSL allows at most 3 extra primes */
    int n_extra = RSA_get_multi_prime_extra_count(rsa);

    RSA_get0_key(rsa, &n, &e, &d);
    RSA_get0_factors(rsa, &p, &q);
    if (!n || !e || !d || !p || !q || !BN_is_odd(n) ||
        BN_cmp(d, BN_value_one()) < 0 || BN_cmp(d, n) >= 0 || BN_cmp(p, q) == 0 ||
        kh_rsa_small_factor(p) || kh_rsa_small_factor(q))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    if (n_extra < 0 || n_extra > 8)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    if (n_extra > 0) {
        if (!RSA_get0_multi_prime_factors(rsa, extra))
            return CKR_ATTRIBUTE_VALUE_INVALID;
        for (int i = 0; i < n_extra; i++) {
            if (kh_rsa_small_factor(extra[i]) || BN_cmp(extra[i], p) == 0 || BN_cmp(extra[i], q) == 0)
                return CKR_ATTRIBUTE_VALUE_INVALID;
            for (int j = 0; j < i; j++) {
                if (BN_cmp(extra[i], extra[j]) == 0)
                    return CKR_ATTRIBUTE_VALUE_INVALID;
            }
        }
    }
    if (RSA_check_key_ex(rsa, NULL) != 1)
        return kh_crypto_ossl_rv(CKR_ATTRIBUTE_VALUE_INVALID, "RSA key check");
    return CKR_OK;
}

static CK_RV kh_rsa_pub_key(RSA **out, const kh_pubkey *pub, unsigned *bits)
{
    size_t n_len = pub->n_len <= sizeof pub->n ? pub->n_len : 0;
    size_t e_len = pub->e_len <= sizeof pub->e ? pub->e_len : 0;
    const uint8_t *n = kh_strip_zeros(pub->n, &n_len);
    const uint8_t *e = kh_strip_zeros(pub->e, &e_len);
    BIGNUM *bn_n = NULL, *bn_e = NULL;
    RSA *rsa = NULL;
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
    rsa = kh_rsa_new();
    if (!rsa || !RSA_set0_key(rsa, bn_n, bn_e, NULL)) {
        rv = kh_crypto_ossl_rv(CKR_HOST_MEMORY, "RSA public key");
        goto out;
    }
    bn_n = bn_e = NULL;     /* owned by rsa now */
    *out = rsa;
    rsa = NULL;
out:
    RSA_free(rsa);
    BN_free(bn_n);
    BN_free(bn_e);
    return rv;
}

/*
 * Check the input length and parameters against the key: PKCS#1 v1.5 takes
 * at most k-11 bytes, PSS exactly one digest, with a salt that fits.
 * For PSS, *md and *mgf are the digests to use.
 */
static CK_RV kh_rsa_params(kh_sigop op, const kh_sigparams *params, unsigned bits, size_t data_len,
                           const EVP_MD **md, const EVP_MD **mgf)
{
    size_t k = (bits + 7) / 8;
    size_t em_len = (bits - 1 + 7) / 8;
    size_t hlen;

    if (op == KH_OP_RSA_PKCS)
        return data_len > k - 11 ? CKR_DATA_LEN_RANGE : CKR_OK;
    if (!params)
        return CKR_MECHANISM_PARAM_INVALID;
    *md = kh_md_get(params->pss_hash);
    *mgf = kh_md_get(params->pss_mgf_hash);
    if (!*md || !*mgf)
        return CKR_MECHANISM_PARAM_INVALID;
    hlen = kh_hash_len(params->pss_hash);
    if (data_len != hlen)
        return CKR_DATA_LEN_RANGE;
    if (params->pss_salt_len > INT_MAX || em_len < hlen + 2 ||
        params->pss_salt_len > em_len - hlen - 2)
        return CKR_MECHANISM_PARAM_INVALID;
    return CKR_OK;
}

static CK_RV kh_rsa_sign(const kh_softkey *key, kh_sigop op, const kh_sigparams *params,
                         const uint8_t *data, size_t data_len, uint8_t *sig)
{
    const EVP_MD *md = NULL, *mgf = NULL;
    uint8_t em[KH_RSA_MAX_BYTES];
    int k = (int)key->sig_bytes;
    int n;
    CK_RV rv;

    rv = kh_rsa_params(op, params, key->rsa_bits, data_len, &md, &mgf);
    if (rv != CKR_OK)
        return rv;
    if (op == KH_OP_RSA_PKCS) {
        /* Type 1 padding over the DigestInfo (or raw data). */
        n = RSA_private_encrypt((int)data_len, data, sig, key->rsa, RSA_PKCS1_PADDING);
    } else {
        /* EMSA-PSS encoding (k bytes, a leading zero when the modulus bits are 8m+1), then the raw private operation. */
        if (!RSA_padding_add_PKCS1_PSS_mgf1(key->rsa, em, data, md, mgf, (int)params->pss_salt_len)) {
            OPENSSL_cleanse(em, sizeof em);
            return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "RSA PSS encode");
        }
        n = RSA_private_encrypt(k, em, sig, key->rsa, RSA_NO_PADDING);
        OPENSSL_cleanse(em, sizeof em);
    }
    if (n != k)
        return kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "RSA sign");
    return CKR_OK;
}

/* Verify with an OpenSSL key built by kh_rsa_pub_key (kh_rsa_verify, kh_verifier_verify). */
static CK_RV kh_rsa_verify_key(RSA *rsa, unsigned bits, kh_sigop op, const kh_sigparams *params,
                               const uint8_t *data, size_t data_len, const uint8_t *sig,
                               size_t sig_len)
{
    const EVP_MD *md = NULL, *mgf = NULL;
    uint8_t buf[KH_RSA_MAX_BYTES];
    int n;
    CK_RV rv;

    if (sig_len != (bits + 7) / 8)
        return CKR_SIGNATURE_LEN_RANGE;
    rv = kh_rsa_params(op, params, bits, data_len, &md, &mgf);
    if (rv != CKR_OK)
        return rv;
    if (op == KH_OP_RSA_PKCS) {
        /* Strip type 1 padding; what is left must be exactly the data. */
        n = RSA_public_decrypt((int)sig_len, sig, buf, rsa, RSA_PKCS1_PADDING);
        rv = n >= 0 && (size_t)n == data_len && CRYPTO_memcmp(buf, data, data_len) == 0
                 ? CKR_OK : kh_crypto_ossl_rv(CKR_SIGNATURE_INVALID, "RSA verify");
    } else {
        n = RSA_public_decrypt((int)sig_len, sig, buf, rsa, RSA_NO_PADDING);
        rv = n == (int)sig_len &&
             RSA_verify_PKCS1_PSS_mgf1(rsa, data, md, mgf, buf, (int)params->pss_salt_len) == 1
                 ? CKR_OK : kh_crypto_ossl_rv(CKR_SIGNATURE_INVALID, "RSA PSS verify");
    }
    return rv;
}

static CK_RV kh_rsa_verify(const kh_pubkey *pub, kh_sigop op, const kh_sigparams *params,
                           const uint8_t *data, size_t data_len, const uint8_t *sig, size_t sig_len)
{
    RSA *rsa = NULL;
    unsigned bits = 0;
    CK_RV rv = kh_rsa_pub_key(&rsa, pub, &bits);

    if (rv != CKR_OK)
        return rv;
    rv = kh_rsa_verify_key(rsa, bits, op, params, data, data_len, sig, sig_len);
    RSA_free(rsa);
    return rv;
}

CK_RV kh_crypto_rsa_from_components(uint8_t **der, size_t *der_len,
                                    const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len,
                                    const uint8_t *d, size_t d_len, const uint8_t *p, size_t p_len,
                                    const uint8_t *q, size_t q_len, const uint8_t *dp, size_t dp_len,
                                    const uint8_t *dq, size_t dq_len, const uint8_t *qi, size_t qi_len)
{
    const uint8_t *in[8] = { n, e, d, p, q, dp, dq, qi };
    const size_t in_len[8] = { n_len, e_len, d_len, p_len, q_len, dp_len, dq_len, qi_len };
    BIGNUM *bn[8] = { NULL };
    RSA *rsa = NULL;
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
    rsa = kh_rsa_new();
    if (!rsa) {
        rv = kh_crypto_ossl_rv(CKR_HOST_MEMORY, "RSA_new");
        goto out;
    }
    for (int i = 0; i < 8; i++) {
        /* Secure, cleared-on-free BIGNUMs for the secret parameters. */
        bn[i] = i < 2 ? BN_new() : BN_secure_new();
        if (!bn[i] || !BN_bin2bn(in[i], (int)in_len[i], bn[i])) {
            rv = kh_crypto_ossl_rv(CKR_HOST_MEMORY, "RSA components");
            goto out;
        }
    }
    /* set0 takes ownership (and marks the secret parts constant-time). */
    if (!RSA_set0_key(rsa, bn[0], bn[1], bn[2])) {
        rv = kh_crypto_ossl_rv(CKR_ATTRIBUTE_VALUE_INVALID, "RSA from components");
        goto out;
    }
    bn[0] = bn[1] = bn[2] = NULL;
    if (!RSA_set0_factors(rsa, bn[3], bn[4])) {
        rv = kh_crypto_ossl_rv(CKR_ATTRIBUTE_VALUE_INVALID, "RSA from components");
        goto out;
    }
    bn[3] = bn[4] = NULL;
    if (!RSA_set0_crt_params(rsa, bn[5], bn[6], bn[7])) {
        rv = kh_crypto_ossl_rv(CKR_ATTRIBUTE_VALUE_INVALID, "RSA from components");
        goto out;
    }
    bn[5] = bn[6] = bn[7] = NULL;
    rv = kh_rsa_fill_pub(&pub, rsa);
    if (rv == CKR_OK)
        rv = kh_rsa_check(rsa);
    if (rv == CKR_OK)
        rv = kh_rsa_encode(der, der_len, rsa);
out:
    RSA_free(rsa);              /* clears the private parts */
    for (int i = 0; i < 8; i++)
        BN_clear_free(bn[i]);
    return rv;
}

/* ---- generate / import / load ----------------------------------------- */

CK_RV kh_rng_mix(uint8_t *buf, size_t len, const uint8_t *mix, size_t mix_len, uint32_t counter)
{
    uint8_t h[64], *in;
    CK_RV rv;

    if (len > sizeof h || (!mix && mix_len))
        return CKR_ARGUMENTS_BAD;
    in = malloc(mix_len + 4);
    if (!in)
        return CKR_HOST_MEMORY;
    if (mix_len)
        memcpy(in, mix, mix_len);
    in[mix_len] = (uint8_t)(counter >> 24);
    in[mix_len + 1] = (uint8_t)(counter >> 16);
    in[mix_len + 2] = (uint8_t)(counter >> 8);
    in[mix_len + 3] = (uint8_t)counter;
    rv = kh_hash_oneshot(h, KH_HASH_SHA512, in, mix_len + 4);
    if (rv == CKR_OK)
        for (size_t i = 0; i < len; i++)
            buf[i] ^= h[i];
    OPENSSL_cleanse(in, mix_len + 4);
    free(in);
    OPENSSL_cleanse(h, sizeof h);
    return rv;
}

CK_RV kh_crypto_generate(kh_pubkey *pub, uint8_t **secret, size_t *secret_len,
                         kh_alg alg, unsigned rsa_bits)
{
    return kh_crypto_generate_mixed(pub, secret, secret_len, alg, rsa_bits, NULL, 0);
}

CK_RV kh_crypto_generate_mixed(kh_pubkey *pub, uint8_t **secret, size_t *secret_len,
                               kh_alg alg, unsigned rsa_bits, const uint8_t *mix, size_t mix_len)
{
    uint8_t sk[48];
    size_t flen = kh_field_len(alg);
    RSA *rsa = NULL;
    BIGNUM *e = NULL;
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
            rv = kh_random(sk, flen);
            if (rv == CKR_OK && mix_len)
                rv = kh_rng_mix(sk, flen, mix, mix_len, (uint32_t)tries);
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
        rv = kh_random(sk, 32);
        if (rv == CKR_OK && mix_len)
            rv = kh_rng_mix(sk, 32, mix, mix_len, 0);
        if (rv == CKR_OK)
            rv = kh_ed_load(NULL, pub, sk);
        if (rv == CKR_OK)
            rv = kh_secret_dup(secret, secret_len, sk, 32);
        break;
    case KH_ALG_RSA:
        if (rsa_bits < KH_RSA_MIN_BITS || rsa_bits > KH_RSA_MAX_BITS || rsa_bits % 8 != 0)
            return CKR_KEY_SIZE_RANGE;
        if (mix_len) {
            /* OpenSSL's DRBG draws the primes: give it the extra bytes as
             * additional input to a reseed (they add, never replace). */
            EVP_RAND_CTX *drbg = RAND_get0_private(NULL);
            if (!drbg || !EVP_RAND_reseed(drbg, 0, NULL, 0, mix, mix_len)) {
                rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "DRBG reseed");
                break;
            }
        }
        rsa = kh_rsa_new();
        e = BN_new();
        if (!rsa || !e || !BN_set_word(e, RSA_F4) ||
            !RSA_generate_key_ex(rsa, (int)rsa_bits, e, NULL)) {
            rv = kh_crypto_ossl_rv(CKR_FUNCTION_FAILED, "RSA keygen");
            break;
        }
        rv = kh_rsa_fill_pub(pub, rsa);
        if (rv == CKR_OK)
            rv = kh_rsa_encode(secret, secret_len, rsa);
        break;
    default:
        return CKR_ARGUMENTS_BAD;
    }
    OPENSSL_cleanse(sk, sizeof sk);
    RSA_free(rsa);              /* clears the private parts */
    BN_free(e);
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
    RSA *rsa = NULL;
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
        rv = kh_rsa_decode(&rsa, secret, secret_len);
        if (rv == CKR_OK)
            rv = kh_rsa_fill_pub(pub, rsa);
        if (rv == CKR_OK)
            rv = kh_rsa_check(rsa);
        if (rv == CKR_OK && norm)
            rv = kh_rsa_encode(&out, &out_len, rsa);
        break;
    default:
        return CKR_ARGUMENTS_BAD;
    }
    OPENSSL_cleanse(sk, sizeof sk);
    RSA_free(rsa);
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
            rv = kh_ec_load(&key->ec, NULL, alg, sk);
        break;
    case KH_ALG_ED25519:
        rv = len == 32 ? kh_ed_load(&key->pkey, NULL, secret) : CKR_ATTRIBUTE_VALUE_INVALID;
        break;
    case KH_ALG_RSA:
        /* No consistency check here: the blob was checked when it was imported. */
        rv = kh_rsa_decode(&key->rsa, secret, len);
        if (rv == CKR_OK) {
            int bits = RSA_bits(key->rsa);
            if (bits < (int)KH_RSA_MIN_BITS || bits > (int)KH_RSA_MAX_BITS) {
                rv = CKR_KEY_SIZE_RANGE;
            } else {
                key->rsa_bits = (unsigned)bits;
                key->sig_bytes = (size_t)RSA_size(key->rsa);
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
    /* OpenSSL clears private key material on free. */
    for (unsigned i = 0; i < KH_ED_READY; i++)
        EVP_MD_CTX_free(key->ed_ready[i]);
    EC_KEY_free(key->ec);
    RSA_free(key->rsa);
    EVP_PKEY_free(key->pkey);
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
    EC_KEY *ec = NULL;
    RSA *rsa = NULL;
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
        rv = kh_ec_pub_key(&ec, pub);
        break;
    case KH_ALG_ED25519:
        /* OpenSSL decodes the point only when verifying. */
        return pub->point_len == 32 ? CKR_OK : CKR_ATTRIBUTE_VALUE_INVALID;
    case KH_ALG_RSA:
        rv = kh_rsa_pub_key(&rsa, pub, &bits);
        break;
    default:
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    EC_KEY_free(ec);
    RSA_free(rsa);
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

/* ---- verifiers: a public key parsed once -------------------------------- */

struct kh_verifier {
    kh_alg alg;
    secp256k1_pubkey k1;           /* secp256k1 */
    EC_KEY *ec;                    /* P-256, P-384: OpenSSL's own method */
    uint8_t ed[32];                /* Ed25519 (libsodium decodes it when verifying) */
    RSA *rsa;                      /* RSA: OpenSSL's own method */
    unsigned rsa_bits;
};

void kh_verifier_free(kh_verifier *v)
{
    if (!v)
        return;
    EC_KEY_free(v->ec);
    RSA_free(v->rsa);
    free(v);
}

CK_RV kh_verifier_new(kh_verifier **out, const kh_pubkey *pub)
{
    kh_verifier *v;
    CK_RV rv = kh_crypto_init();

    if (rv != CKR_OK)
        return rv;
    if (!out || !pub)
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    v = calloc(1, sizeof *v);
    if (!v)
        return CKR_HOST_MEMORY;
    v->alg = pub->alg;
    switch (pub->alg) {
    case KH_ALG_SECP256K1:
        rv = kh_k1_parse_pub(&v->k1, pub) ? CKR_OK : CKR_PUBLIC_KEY_INVALID;
        break;
    case KH_ALG_P256:
    case KH_ALG_P384:
        rv = kh_ec_pub_key(&v->ec, pub);
        break;
    case KH_ALG_ED25519:
        /* As in kh_ed_verify: the point is decoded when a signature is checked. */
        if (pub->point_len != 32) {
            rv = CKR_PUBLIC_KEY_INVALID;
            break;
        }
        memcpy(v->ed, pub->point, 32);
        break;
    case KH_ALG_RSA:
        rv = kh_rsa_pub_key(&v->rsa, pub, &v->rsa_bits);
        break;
    default:
        rv = CKR_KEY_TYPE_INCONSISTENT;
        break;
    }
    if (rv != CKR_OK) {
        kh_verifier_free(v);
        return rv;
    }
    *out = v;
    return CKR_OK;
}

CK_RV kh_verifier_verify(const kh_verifier *v, kh_sigop op, const kh_sigparams *params,
                         const uint8_t *data, size_t data_len, const uint8_t *sig, size_t sig_len)
{
    CK_RV rv = kh_crypto_init();

    if (rv != CKR_OK)
        return rv;
    if (!v || (!data && data_len) || (!sig && sig_len))
        return CKR_ARGUMENTS_BAD;
    if (!kh_op_fits(v->alg, op))
        return CKR_KEY_TYPE_INCONSISTENT;
    if (!data)
        data = (const uint8_t *)"";
    if (!sig)
        sig = (const uint8_t *)"";

    switch (v->alg) {
    case KH_ALG_SECP256K1:
        return kh_k1_verify_pk(&v->k1, op, data, data_len, sig, sig_len);
    case KH_ALG_P256:
    case KH_ALG_P384:
        return kh_ec_verify_key(v->ec, v->alg, data, data_len, sig, sig_len);
    case KH_ALG_ED25519:
        if (sig_len != 64)
            return CKR_SIGNATURE_LEN_RANGE;
        return kh_ed_verify_raw(v->ed, data, data_len, sig);
    case KH_ALG_RSA:
        return kh_rsa_verify_key(v->rsa, v->rsa_bits, op, params, data, data_len, sig, sig_len);
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

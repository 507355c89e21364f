/*
 * signd-sign.c - keyhold-signd's signatures: the protocol's algorithms
 * mapped to Cryptoki mechanisms, run through a worker's session, and each
 * signature checked against the key's public key before it is returned
 * (libsecp256k1 for secp256k1, libsodium for Ed25519, OpenSSL for the
 * rest). A module that signs with the wrong key, or returns garbage,
 * produces an error, never an answer.
 *
 * Each key's public key is parsed once at start (kh_signd_key_prepare), so
 * a check costs the verification itself and nothing else. The configuration
 * may turn the check off ("verify_signatures": false, README) for clients
 * that verify every answer themselves, as keyhold's remote backend does;
 * recoverable signatures are checked regardless (their recovery id is only
 * known once it recovers to the key).
 */
#include "signd.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <secp256k1.h>
#include <secp256k1_extrakeys.h>
#include <secp256k1_recovery.h>
#include <secp256k1_schnorrsig.h>
#include <sodium.h>

#include <stdio.h>
#include <string.h>

int kh_signd_err_from_rv(CK_RV rv)
{
    switch (rv) {
    case CKR_MECHANISM_INVALID:
    case CKR_KEY_TYPE_INCONSISTENT:
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
    case CKR_KEY_SIZE_RANGE:
        return KH_SIGND_E_UNSUPPORTED;
    case CKR_DATA_LEN_RANGE:
    case CKR_DATA_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
        return KH_SIGND_E_INVALID_PARAMS;
    case CKR_FUNCTION_REJECTED:
        return KH_SIGND_E_DENIED;
    case CKR_KEY_HANDLE_INVALID:
        return KH_SIGND_E_UNKNOWN_KEY;
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_DEVICE_MEMORY:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_PIN_EXPIRED:
    case CKR_PIN_LOCKED:
        return KH_SIGND_E_UNAVAILABLE;
    default:
        return KH_SIGND_E_INTERNAL;
    }
}

/* ---- secp256k1 (libsecp256k1) ------------------------------------------ */

static secp256k1_context *kh_secp_ctx;
static pthread_once_t kh_secp_once = PTHREAD_ONCE_INIT;

static void kh_secp_init(void)
{
    uint8_t seed[32];

    if (sodium_init() < 0) {
        kh_signd_log("sodium_init failed");
        return;                        /* kh_secp_ctx stays NULL: nothing is signed */
    }
    kh_secp_ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    /* Randomisation only blinds signing, which never happens here. */
    if (kh_secp_ctx && RAND_bytes(seed, sizeof seed) == 1 &&
        !secp256k1_context_randomize(kh_secp_ctx, seed))
        kh_signd_log("secp256k1_context_randomize failed");
}

/* ---- verifiers: each served key's public key, parsed once --------------- */

struct kh_signd_verifier {
    secp256k1_pubkey k1;           /* secp256k1 */
    secp256k1_xonly_pubkey xonly;  /* secp256k1, for BIP-340 */
    uint8_t ed[32];                /* Ed25519 (libsodium) */
    EVP_PKEY *pkey;                /* P-256, P-384, RSA (OpenSSL) */
};

bool kh_signd_key_prepare(struct kh_signd_key *key, char *why, size_t whylen)
{
    struct kh_signd_verifier *v;

    key->verifier = NULL;
    pthread_once(&kh_secp_once, kh_secp_init);
    if (!kh_secp_ctx) {
        kh_signd_errf(why, whylen, "out of memory");
        return false;
    }
    if (key->pub.kind != key->desc.kind) {
        kh_signd_errf(why, whylen, "the public key is not of the key's type");
        return false;
    }
    v = calloc(1, sizeof *v);
    if (!v) {
        kh_signd_errf(why, whylen, "out of memory");
        return false;
    }
    if (key->pub.kind == KH_KEY_ED25519) {
        if (!key->pub.point || key->pub.point_len != 32) {
            kh_signd_errf(why, whylen, "not an Ed25519 public key");
            free(v);
            return false;
        }
        memcpy(v->ed, key->pub.point, 32);
    } else if (key->pub.kind == KH_KEY_SECP256K1) {
        if (!key->pub.point ||
            !secp256k1_ec_pubkey_parse(kh_secp_ctx, &v->k1, key->pub.point, key->pub.point_len) ||
            !secp256k1_xonly_pubkey_from_pubkey(kh_secp_ctx, &v->xonly, NULL, &v->k1)) {
            kh_signd_errf(why, whylen, "not a secp256k1 public key");
            free(v);
            return false;
        }
    } else {
        size_t len = 0;
        uint8_t *der = kh_pubkey_to_spki_der(&key->pub, &len);
        const unsigned char *p = der;

        v->pkey = der ? d2i_PUBKEY(NULL, &p, (long)len) : NULL;
        free(der);
        if (!v->pkey) {
            kh_signd_errf(why, whylen, "OpenSSL cannot use the public key");
            free(v);
            return false;
        }
    }
    key->verifier = v;
    return true;
}

void kh_signd_key_release(struct kh_signd_key *key)
{
    if (!key->verifier)
        return;
    EVP_PKEY_free(key->verifier->pkey);
    free(key->verifier);
    key->verifier = NULL;
}

/* Returns: true when r||s with recovery id recid over hash recovers to the key. */
static bool kh_recovers_to(const struct kh_signd_verifier *v, const uint8_t rs[64], int recid,
                           const uint8_t hash[32])
{
    secp256k1_ecdsa_recoverable_signature sig;
    secp256k1_pubkey pk;

    return secp256k1_ecdsa_recoverable_signature_parse_compact(kh_secp_ctx, &sig, rs, recid) &&
           secp256k1_ecdsa_recover(kh_secp_ctx, &pk, &sig, hash) &&
           secp256k1_ec_pubkey_cmp(kh_secp_ctx, &pk, &v->k1) == 0;
}

/*
 * Makes a secp256k1 ECDSA signature low-S and, for ecdsa_recoverable,
 * settles its recovery id: the module's own (checked) when it gave one,
 * else the one that recovers to the key. A plain ECDSA signature is
 * verified when check is set. sig holds r||s (|| v) in and out.
 */
static bool kh_secp_finish(const struct kh_signd_key *key, const uint8_t *hash, bool recoverable,
                           bool have_v, bool check, uint8_t *sig, char *why, size_t whylen)
{
    const struct kh_signd_verifier *v = key->verifier;
    secp256k1_ecdsa_signature es;
    int recid = -1;
    bool flipped;

    if (!secp256k1_ecdsa_signature_parse_compact(kh_secp_ctx, &es, sig)) {
        kh_signd_errf(why, whylen, "the token returned an invalid signature");
        return false;
    }
    flipped = secp256k1_ecdsa_signature_normalize(kh_secp_ctx, &es, &es);
    secp256k1_ecdsa_signature_serialize_compact(kh_secp_ctx, sig, &es);
    if (!recoverable) {
        if (check && !secp256k1_ecdsa_verify(kh_secp_ctx, &es, hash, &v->k1)) {
            kh_signd_errf(why, whylen, "the token's signature does not verify with key %s", key->label);
            return false;
        }
        return true;
    }
    if (have_v) {
        int rv = sig[64] ^ (flipped ? 1 : 0);
        if (sig[64] <= 1 && kh_recovers_to(v, sig, rv, hash))
            recid = rv;
    } else {
        for (int i = 0; i < 2 && recid < 0; i++)
            if (kh_recovers_to(v, sig, i, hash))
                recid = i;
    }
    if (recid < 0) {
        kh_signd_errf(why, whylen, "the token's signature does not recover to key %s", key->label);
        return false;
    }
    sig[64] = (uint8_t)recid;
    return true;
}

static bool kh_secp_bip340_ok(const struct kh_signd_key *key, const uint8_t *msg, const uint8_t *sig)
{
    return secp256k1_schnorrsig_verify(kh_secp_ctx, sig, msg, 32, &key->verifier->xonly);
}

/* ---- the rest (OpenSSL) ------------------------------------------------ */

static const EVP_MD *kh_md_of(CK_MECHANISM_TYPE m)
{
    switch (m) {
    case CKM_SHA_1: return EVP_sha1();
    case CKM_SHA224: return EVP_sha224();
    case CKM_SHA256: return EVP_sha256();
    case CKM_SHA384: return EVP_sha384();
    case CKM_SHA512: return EVP_sha512();
    default: return NULL;
    }
}

static const EVP_MD *kh_mgf_md_of(CK_RSA_PKCS_MGF_TYPE g)
{
    switch (g) {
    case CKG_MGF1_SHA1: return EVP_sha1();
    case CKG_MGF1_SHA224: return EVP_sha224();
    case CKG_MGF1_SHA256: return EVP_sha256();
    case CKG_MGF1_SHA384: return EVP_sha384();
    case CKG_MGF1_SHA512: return EVP_sha512();
    default: return NULL;
    }
}

/* One DER INTEGER of the len-byte big-endian unsigned p at out. Returns: bytes written. */
static size_t kh_der_uint(uint8_t *out, const uint8_t *p, size_t len)
{
    size_t n = 0;

    while (len > 1 && *p == 0) {
        p++;
        len--;
    }
    out[n++] = 0x02;
    out[n++] = (uint8_t)(len + (*p & 0x80 ? 1 : 0));
    if (*p & 0x80)
        out[n++] = 0;
    memcpy(out + n, p, len);
    return n + len;
}

/*
 * r||s (2 x half bytes, half <= 66) as a DER ECDSA-Sig-Value.
 * Out: der (at least 2 * (half + 3) + 3 bytes). Returns: its length, 0 if it
 * cannot be one.
 */
static size_t kh_rs_to_der(uint8_t *der, const uint8_t *sig, size_t siglen)
{
    size_t half = siglen / 2, body;

    if (siglen == 0 || siglen % 2 || half > 66)
        return 0;
    body = kh_der_uint(der + 3, sig, half);
    body += kh_der_uint(der + 3 + body, sig + half, half);
    if (body < 0x80) {
        der[1] = 0x30;
        der[2] = (uint8_t)body;
        memmove(der, der + 1, body + 2);
        return body + 2;
    }
    der[0] = 0x30;
    der[1] = 0x81;
    der[2] = (uint8_t)body;
    return body + 3;
}

/* Checks a P-256/P-384 ECDSA or RSA signature with OpenSSL, an Ed25519 one with libsodium. */
static bool kh_ossl_verify(const struct kh_signd_key *key, const struct kh_signd_sign_in *in,
                           const uint8_t *sig, size_t siglen)
{
    EVP_PKEY *pk = key->verifier->pkey;
    EVP_PKEY_CTX *pc = NULL;
    unsigned char *rec = NULL;
    bool ok = false;

    switch (in->alg) {
    case KH_SIGND_ALG_ECDSA: {
        uint8_t der[2 * (66 + 3) + 3];
        size_t derlen = kh_rs_to_der(der, sig, siglen);
        pc = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
        ok = derlen > 0 && pc && EVP_PKEY_verify_init(pc) == 1 &&
             EVP_PKEY_verify(pc, der, derlen, in->input, in->input_len) == 1;
        break;
    }
    case KH_SIGND_ALG_EDDSA:
        /* libsodium: OpenSSL 3.0's verdict on every Wycheproof case, in about
         * 0.57 of the time (module/crypto.c, kh_ed_verify_raw). */
        ok = siglen == 64 && crypto_sign_ed25519_verify_detached(sig, in->input, in->input_len,
                                                                 key->verifier->ed) == 0;
        break;
    case KH_SIGND_ALG_RSA_PKCS1: {
        size_t reclen = siglen;
        rec = malloc(siglen);
        pc = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
        ok = rec && pc && EVP_PKEY_verify_recover_init(pc) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_verify_recover(pc, rec, &reclen, sig, siglen) == 1 &&
             reclen == in->input_len && memcmp(rec, in->input, reclen) == 0;
        break;
    }
    case KH_SIGND_ALG_RSA_PSS: {
        const EVP_MD *md = kh_md_of(in->pss_hash), *mgf = kh_mgf_md_of(in->pss_mgf);
        pc = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
        ok = md && mgf && pc && EVP_PKEY_verify_init(pc) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) == 1 &&
             EVP_PKEY_CTX_set_signature_md(pc, md) == 1 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(pc, mgf) == 1 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, (int)in->pss_salt_len) == 1 &&
             EVP_PKEY_verify(pc, sig, siglen, in->input, in->input_len) == 1;
        break;
    }
    default:
        break;
    }
    free(rec);
    EVP_PKEY_CTX_free(pc);
    ERR_clear_error();
    return ok;
}

/* ---- signing ----------------------------------------------------------- */

/* Does the algorithm fit the key's type? */
static bool kh_alg_fits(enum kh_signd_alg alg, enum kh_keykind kind)
{
    switch (alg) {
    case KH_SIGND_ALG_ECDSA:
        return kind == KH_KEY_SECP256K1 || kind == KH_KEY_P256 || kind == KH_KEY_P384;
    case KH_SIGND_ALG_ECDSA_RECOVERABLE:
    case KH_SIGND_ALG_BIP340:
        return kind == KH_KEY_SECP256K1;
    case KH_SIGND_ALG_EDDSA:
        return kind == KH_KEY_ED25519;
    case KH_SIGND_ALG_RSA_PKCS1:
    case KH_SIGND_ALG_RSA_PSS:
        return kind == KH_KEY_RSA;
    default:
        return false;
    }
}

int kh_signd_sign(struct kh_signd_worker *w, const struct kh_signd_key *key,
                  const struct kh_signd_sign_in *in, uint8_t *sig, size_t *siglen,
                  char *why, size_t whylen)
{
    CK_FUNCTION_LIST *f = w->srv->p11.f;
    CK_RSA_PKCS_PSS_PARAMS pss = { in->pss_hash, in->pss_mgf, in->pss_salt_len };
    CK_MECHANISM mech = { 0, NULL, 0 };
    CK_ULONG len = KH_SIGND_SIG_MAX;
    bool recoverable_via_mech = false, check;
    size_t want = 0;
    CK_RV rv;

    *siglen = 0;
    pthread_once(&kh_secp_once, kh_secp_init);
    if (!kh_secp_ctx) {
        kh_signd_errf(why, whylen, "out of memory");
        return KH_SIGND_E_INTERNAL;
    }
    if (!key->verifier) {
        kh_signd_errf(why, whylen, "key %s has no verifier (not prepared)", key->label);
        return KH_SIGND_E_INTERNAL;
    }
    if (!kh_alg_fits(in->alg, key->desc.kind)) {
        kh_signd_errf(why, whylen, "%s does not fit key %s (%s)", kh_signd_alg_name(in->alg),
                      key->label, kh_keykind_name(key->desc.kind));
        return KH_SIGND_E_UNSUPPORTED;
    }
    switch (in->alg) {
    case KH_SIGND_ALG_ECDSA:
        mech.mechanism = CKM_ECDSA;
        want = 2 * kh_keykind_field_len(key->desc.kind);
        break;
    case KH_SIGND_ALG_ECDSA_RECOVERABLE:
        recoverable_via_mech = key->recoverable_mech;
        mech.mechanism = recoverable_via_mech ? CKM_KH_ECDSA_RECOVERABLE : CKM_ECDSA;
        want = recoverable_via_mech ? 65 : 64;
        break;
    case KH_SIGND_ALG_BIP340:
        mech.mechanism = CKM_KH_BIP340_SCHNORR;
        mech.pParameter = (void *)in->aux;
        mech.ulParameterLen = in->aux ? 32 : 0;
        want = 64;
        break;
    case KH_SIGND_ALG_EDDSA:
        mech.mechanism = CKM_EDDSA;
        want = 64;
        break;
    case KH_SIGND_ALG_RSA_PKCS1:
        mech.mechanism = CKM_RSA_PKCS;
        want = (kh_pubkey_rsa_bits(&key->pub) + 7) / 8;
        break;
    case KH_SIGND_ALG_RSA_PSS:
        mech.mechanism = CKM_RSA_PKCS_PSS;
        mech.pParameter = &pss;
        mech.ulParameterLen = sizeof pss;
        want = (kh_pubkey_rsa_bits(&key->pub) + 7) / 8;
        break;
    default:
        kh_signd_errf(why, whylen, "unknown algorithm");
        return KH_SIGND_E_UNSUPPORTED;
    }

    rv = f->C_SignInit(w->session, &mech, key->priv);
    if (rv == CKR_OK) {
        rv = f->C_Sign(w->session, (CK_BYTE_PTR)in->input, (CK_ULONG)in->input_len, sig, &len);
        if (rv == CKR_BUFFER_TOO_SMALL)
            (void)f->C_SignInit(w->session, NULL, key->priv);   /* PKCS#11 3.0: ends the operation */
    }
    if (rv != CKR_OK) {
        kh_signd_errf(why, whylen, "the token refused to sign: %s", kh_rv_name(rv));
        return kh_signd_err_from_rv(rv);
    }
    if (len != want) {
        kh_signd_errf(why, whylen, "the token returned a %lu-byte signature, %zu expected",
                      (unsigned long)len, want);
        return KH_SIGND_E_INTERNAL;
    }

    check = !w->srv->cfg.skip_verify;
    switch (in->alg) {
    case KH_SIGND_ALG_ECDSA:
        if (key->desc.kind == KH_KEY_SECP256K1) {
            if (in->input_len != 32 ||
                !kh_secp_finish(key, in->input, false, false, check, sig, why, whylen))
                goto bad;
        } else if (check && !kh_ossl_verify(key, in, sig, len)) {
            goto bad_verify;
        }
        break;
    case KH_SIGND_ALG_ECDSA_RECOVERABLE:
        /* Always checked: the recovery id is only known once it recovers to the key. */
        if (!kh_secp_finish(key, in->input, true, recoverable_via_mech, true, sig, why, whylen))
            goto bad;
        len = 65;
        break;
    case KH_SIGND_ALG_BIP340:
        if (check && !kh_secp_bip340_ok(key, in->input, sig))
            goto bad_verify;
        break;
    default:
        if (check && !kh_ossl_verify(key, in, sig, len))
            goto bad_verify;
        break;
    }
    *siglen = len;
    return 0;

bad_verify:
    kh_signd_errf(why, whylen, "the token's signature does not verify with key %s", key->label);
bad:
    memset(sig, 0, KH_SIGND_SIG_MAX);
    kh_signd_log("key=%s %s: %s", key->label, kh_signd_alg_name(in->alg), why);
    return KH_SIGND_E_INTERNAL;
}

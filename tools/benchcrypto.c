/*
 * benchcrypto.c - keyhold-bench's figures, floor signers and verifiers.
 *
 * The floor is what the best in-process implementation of each primitive
 * costs on this machine: libsecp256k1 for secp256k1 (ECDSA, and BIP-340 with
 * a keypair computed once), OpenSSL 3 for the rest with the key loaded and
 * its context made once. Where OpenSSL offers two reasonable paths (EVP and
 * the low-level EC_KEY/RSA calls), both are variants and the bench keeps the
 * faster. Every floor signature is returned in the PKCS#11 form a module
 * must return too (r||s for ECDSA), so the conversion is part of the floor.
 *
 * The low-level EC_KEY/RSA calls are deprecated in OpenSSL 3.0; they are
 * what keyhold's module uses, so the floor measures them as well.
 */
#define OPENSSL_SUPPRESS_DEPRECATED

#include "benchcrypto.h"
#include "keyhold.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <secp256k1.h>
#include <secp256k1_extrakeys.h>
#include <secp256k1_schnorrsig.h>

static const struct bench_sig_info bench_sigs[BENCH_SIG_COUNT] = {
    [BENCH_SIG_K1_ECDSA] = { "secp256k1-ecdsa", "secp256k1 ECDSA", KH_KEY_SECP256K1, CKM_ECDSA,
                             32, 64, true },
    [BENCH_SIG_BIP340] = { "bip340", "secp256k1 BIP-340", KH_KEY_SECP256K1,
                           CKM_KH_BIP340_SCHNORR, 32, 64, true },
    [BENCH_SIG_P256_ECDSA] = { "p256-ecdsa", "P-256 ECDSA", KH_KEY_P256, CKM_ECDSA, 32, 64, true },
    [BENCH_SIG_ED25519] = { "ed25519", "Ed25519 EdDSA", KH_KEY_ED25519, CKM_EDDSA, 32, 64, true },
    [BENCH_SIG_P384_ECDSA] = { "p384-ecdsa", "P-384 ECDSA", KH_KEY_P384, CKM_ECDSA, 48, 96, false },
    [BENCH_SIG_RSA2048] = { "rsa2048-pkcs1", "RSA-2048 PKCS#1", KH_KEY_RSA, CKM_RSA_PKCS, 51, 256,
                            false },
};

const struct bench_sig_info *bench_sig_get(enum bench_sig sig)
{
    return sig < BENCH_SIG_COUNT ? &bench_sigs[sig] : NULL;
}

enum bench_sig bench_sig_by_name(const char *name)
{
    for (int i = 0; i < BENCH_SIG_COUNT; i++)
        if (strcmp(bench_sigs[i].name, name) == 0)
            return (enum bench_sig)i;
    return BENCH_SIG_COUNT;
}

bool bench_random(uint8_t *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = getrandom(buf + got, len - got, 0);
        if (n <= 0)
            return false;
        got += (size_t)n;
    }
    return true;
}

/* DER DigestInfo prefix of SHA-256 (RFC 8017, 9.2 note 1). */
static const uint8_t bench_sha256_prefix[19] = {
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
    0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
};

bool bench_sig_data(enum bench_sig sig, uint8_t *data)
{
    const struct bench_sig_info *info = bench_sig_get(sig);
    uint8_t msg[64];

    if (!info)
        return false;
    if (sig != BENCH_SIG_RSA2048)
        return bench_random(data, info->data_len);
    if (!bench_random(msg, sizeof msg))
        return false;
    memcpy(data, bench_sha256_prefix, sizeof bench_sha256_prefix);
    SHA256(msg, sizeof msg, data + sizeof bench_sha256_prefix);
    return true;
}

/* ---- floor -------------------------------------------------------------- */

enum bench_floor_kind {
    FLOOR_K1_ECDSA,       /* secp256k1_ecdsa_sign + serialize_compact */
    FLOOR_K1_SCHNORR,     /* secp256k1_schnorrsig_sign32, keypair computed once */
    FLOOR_EC_LOWLEVEL,    /* ECDSA_do_sign on an EC_KEY */
    FLOOR_EC_EVP,         /* EVP_PKEY_sign on a ctx initialised once, DER -> r||s */
    FLOOR_ED_REUSE,       /* EVP_DigestSign on an EVP_MD_CTX initialised once */
    FLOOR_ED_INIT,        /* EVP_DigestSignInit_ex + EVP_DigestSign per signature */
    FLOOR_RSA_LOWLEVEL,   /* RSA_private_encrypt, PKCS#1 v1.5 padding */
    FLOOR_RSA_EVP,        /* EVP_PKEY_sign, PKCS#1 v1.5 padding, no md (DigestInfo in) */
};

struct bench_floor {
    enum bench_sig sig;
    enum bench_floor_kind kind;
    struct kh_pubkey pub;
    secp256k1_context *secp;
    uint8_t seckey[32];
    secp256k1_keypair keypair;
    uint8_t aux[32];
    EC_KEY *ec;
    RSA *rsa;
    EVP_PKEY *pkey;
    EVP_PKEY_CTX *pctx;
    EVP_MD_CTX *md;
};

static const struct {
    struct bench_floor_variant v;
    enum bench_floor_kind kind;
} bench_floor_table[] = {
    { { BENCH_SIG_K1_ECDSA, "libsecp256k1 ecdsa_sign" }, FLOOR_K1_ECDSA },
    { { BENCH_SIG_BIP340, "libsecp256k1 schnorrsig_sign32" }, FLOOR_K1_SCHNORR },
    { { BENCH_SIG_P256_ECDSA, "OpenSSL ECDSA_do_sign" }, FLOOR_EC_LOWLEVEL },
    { { BENCH_SIG_P256_ECDSA, "OpenSSL EVP_PKEY_sign" }, FLOOR_EC_EVP },
    { { BENCH_SIG_ED25519, "OpenSSL EVP_DigestSign, ctx reused" }, FLOOR_ED_REUSE },
    { { BENCH_SIG_ED25519, "OpenSSL EVP_DigestSignInit+DigestSign" }, FLOOR_ED_INIT },
    { { BENCH_SIG_P384_ECDSA, "OpenSSL ECDSA_do_sign" }, FLOOR_EC_LOWLEVEL },
    { { BENCH_SIG_P384_ECDSA, "OpenSSL EVP_PKEY_sign" }, FLOOR_EC_EVP },
    { { BENCH_SIG_RSA2048, "OpenSSL RSA_private_encrypt" }, FLOOR_RSA_LOWLEVEL },
    { { BENCH_SIG_RSA2048, "OpenSSL EVP_PKEY_sign" }, FLOOR_RSA_EVP },
};
#define BENCH_NFLOOR (sizeof bench_floor_table / sizeof bench_floor_table[0])

size_t bench_floor_variants(enum bench_sig sig, const struct bench_floor_variant **v)
{
    /* Static per-figure arrays, built from the table once. */
    static struct bench_floor_variant per[BENCH_SIG_COUNT][4];
    static size_t nper[BENCH_SIG_COUNT];
    static bool built;

    if (!built) {
        for (size_t i = 0; i < BENCH_NFLOOR; i++) {
            enum bench_sig s = bench_floor_table[i].v.sig;
            per[s][nper[s]++] = bench_floor_table[i].v;
        }
        built = true;
    }
    *v = per[sig];
    return nper[sig];
}

static void bench_seterr(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[160] = "";

    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    snprintf(err, errlen, "%s%s%s", what, e ? ": " : "", buf);
    ERR_clear_error();
}

static int bench_ec_nid(enum kh_keykind kind)
{
    return kind == KH_KEY_P384 ? NID_secp384r1 : NID_X9_62_prime256v1;
}

/* The EC point of an EC_KEY into pub. */
static bool bench_pub_from_ec(struct kh_pubkey *pub, const EC_KEY *ec, enum kh_keykind kind)
{
    uint8_t pt[133];
    size_t n = EC_POINT_point2oct(EC_KEY_get0_group(ec), EC_KEY_get0_public_key(ec),
                                  POINT_CONVERSION_UNCOMPRESSED, pt, sizeof pt, NULL);
    pub->kind = kind;
    return n > 0 && kh_pubkey_set_ec_point(pub, pt, n);
}

static bool bench_floor_setup_k1(struct bench_floor *f, char *err, size_t errlen)
{
    uint8_t seed[32], pt[65];
    size_t ptlen = sizeof pt;
    secp256k1_pubkey pk;

    f->secp = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    if (!f->secp || !bench_random(seed, sizeof seed) ||
        !secp256k1_context_randomize(f->secp, seed)) {
        snprintf(err, errlen, "secp256k1 context");
        return false;
    }
    do {
        if (!bench_random(f->seckey, sizeof f->seckey)) {
            snprintf(err, errlen, "getrandom");
            return false;
        }
    } while (!secp256k1_ec_seckey_verify(f->secp, f->seckey));
    if (!secp256k1_keypair_create(f->secp, &f->keypair, f->seckey) ||
        !secp256k1_ec_pubkey_create(f->secp, &pk, f->seckey) ||
        !secp256k1_ec_pubkey_serialize(f->secp, pt, &ptlen, &pk, SECP256K1_EC_UNCOMPRESSED) ||
        !bench_random(f->aux, sizeof f->aux)) {
        snprintf(err, errlen, "secp256k1 key");
        return false;
    }
    f->pub.kind = KH_KEY_SECP256K1;
    if (!kh_pubkey_set_ec_point(&f->pub, pt, ptlen)) {
        snprintf(err, errlen, "secp256k1 public key");
        return false;
    }
    return true;
}

static bool bench_floor_setup_ec(struct bench_floor *f, enum kh_keykind kind, char *err,
                                 size_t errlen)
{
    f->ec = EC_KEY_new_by_curve_name(bench_ec_nid(kind));
    if (!f->ec || !EC_KEY_generate_key(f->ec) || !bench_pub_from_ec(&f->pub, f->ec, kind)) {
        bench_seterr(err, errlen, "EC key");
        return false;
    }
    if (f->kind == FLOOR_EC_LOWLEVEL)
        return true;
    f->pkey = EVP_PKEY_new();
    if (!f->pkey || !EVP_PKEY_set1_EC_KEY(f->pkey, f->ec)) {
        bench_seterr(err, errlen, "EVP_PKEY");
        return false;
    }
    EC_KEY_free(f->ec);
    f->ec = NULL;
    f->pctx = EVP_PKEY_CTX_new_from_pkey(NULL, f->pkey, NULL);
    if (!f->pctx || EVP_PKEY_sign_init(f->pctx) != 1) {
        bench_seterr(err, errlen, "EVP_PKEY_sign_init");
        return false;
    }
    return true;
}

static bool bench_floor_setup_ed(struct bench_floor *f, char *err, size_t errlen)
{
    uint8_t raw[32];
    size_t len = sizeof raw;

    f->pkey = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (!f->pkey || EVP_PKEY_get_raw_public_key(f->pkey, raw, &len) != 1 || len != 32) {
        bench_seterr(err, errlen, "Ed25519 key");
        return false;
    }
    f->pub.kind = KH_KEY_ED25519;
    if (!kh_pubkey_set_ec_point(&f->pub, raw, len)) {
        snprintf(err, errlen, "Ed25519 public key");
        return false;
    }
    f->md = EVP_MD_CTX_new();
    if (!f->md) {
        snprintf(err, errlen, "EVP_MD_CTX_new");
        return false;
    }
    if (f->kind == FLOOR_ED_REUSE &&
        EVP_DigestSignInit_ex(f->md, NULL, NULL, NULL, NULL, f->pkey, NULL) != 1) {
        bench_seterr(err, errlen, "EVP_DigestSignInit_ex");
        return false;
    }
    return true;
}

static bool bench_floor_setup_rsa(struct bench_floor *f, char *err, size_t errlen)
{
    BIGNUM *e = BN_new();
    const BIGNUM *n, *pe;
    uint8_t nb[512], eb[8];
    int nl, el;

    f->rsa = RSA_new();
    if (!e || !BN_set_word(e, RSA_F4) || !f->rsa || !RSA_generate_key_ex(f->rsa, 2048, e, NULL)) {
        BN_free(e);
        bench_seterr(err, errlen, "RSA key");
        return false;
    }
    BN_free(e);
    RSA_get0_key(f->rsa, &n, &pe, NULL);
    nl = BN_bn2bin(n, nb);
    el = BN_bn2bin(pe, eb);
    f->pub.kind = KH_KEY_RSA;
    if (!kh_pubkey_set_rsa(&f->pub, nb, (size_t)nl, eb, (size_t)el)) {
        snprintf(err, errlen, "RSA public key");
        return false;
    }
    if (f->kind == FLOOR_RSA_LOWLEVEL)
        return true;
    f->pkey = EVP_PKEY_new();
    if (!f->pkey || !EVP_PKEY_set1_RSA(f->pkey, f->rsa)) {
        bench_seterr(err, errlen, "EVP_PKEY");
        return false;
    }
    RSA_free(f->rsa);
    f->rsa = NULL;
    f->pctx = EVP_PKEY_CTX_new_from_pkey(NULL, f->pkey, NULL);
    if (!f->pctx || EVP_PKEY_sign_init(f->pctx) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(f->pctx, RSA_PKCS1_PADDING) != 1) {
        bench_seterr(err, errlen, "EVP_PKEY_sign_init (RSA)");
        return false;
    }
    return true;
}

bool bench_floor_new(struct bench_floor **out, const struct bench_floor_variant *v, char *err,
                     size_t errlen)
{
    struct bench_floor *f = calloc(1, sizeof *f);
    bool ok = false;
    size_t i;

    *out = NULL;
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    for (i = 0; i < BENCH_NFLOOR; i++)
        if (bench_floor_table[i].v.sig == v->sig && strcmp(bench_floor_table[i].v.name, v->name) == 0)
            break;
    if (i == BENCH_NFLOOR) {
        snprintf(err, errlen, "no floor variant %s", v->name);
        free(f);
        return false;
    }
    f->sig = v->sig;
    f->kind = bench_floor_table[i].kind;
    switch (f->kind) {
    case FLOOR_K1_ECDSA:
    case FLOOR_K1_SCHNORR:
        ok = bench_floor_setup_k1(f, err, errlen);
        break;
    case FLOOR_EC_LOWLEVEL:
    case FLOOR_EC_EVP:
        ok = bench_floor_setup_ec(f, bench_sig_get(v->sig)->kind, err, errlen);
        break;
    case FLOOR_ED_REUSE:
    case FLOOR_ED_INIT:
        ok = bench_floor_setup_ed(f, err, errlen);
        break;
    case FLOOR_RSA_LOWLEVEL:
    case FLOOR_RSA_EVP:
        ok = bench_floor_setup_rsa(f, err, errlen);
        break;
    }
    if (!ok) {
        bench_floor_free(f);
        return false;
    }
    *out = f;
    return true;
}

/* ECDSA_SIG -> fixed-width r||s (flen bytes each); takes es (NULL: false). */
static bool bench_sig_to_rs(uint8_t *sig, size_t flen, ECDSA_SIG *es)
{
    const BIGNUM *r, *s;
    bool ok;

    if (!es)
        return false;
    ECDSA_SIG_get0(es, &r, &s);
    ok = BN_bn2binpad(r, sig, (int)flen) == (int)flen &&
         BN_bn2binpad(s, sig + flen, (int)flen) == (int)flen;
    ECDSA_SIG_free(es);
    return ok;
}

/* DER ECDSA-Sig-Value -> fixed-width r||s. */
static bool bench_der_to_rs(uint8_t *sig, size_t flen, const uint8_t *der, size_t derlen)
{
    const unsigned char *p = der;

    return bench_sig_to_rs(sig, flen, d2i_ECDSA_SIG(NULL, &p, (long)derlen));
}

bool bench_floor_sign(struct bench_floor *f, uint8_t *sig, size_t *siglen, const uint8_t *data,
                      size_t data_len)
{
    const struct bench_sig_info *info = bench_sig_get(f->sig);
    size_t flen = info->sig_len / 2;

    if (*siglen < info->sig_len)
        return false;
    switch (f->kind) {
    case FLOOR_K1_ECDSA: {
        secp256k1_ecdsa_signature s;
        if (data_len != 32 || !secp256k1_ecdsa_sign(f->secp, &s, data, f->seckey, NULL, NULL))
            return false;
        secp256k1_ecdsa_signature_serialize_compact(f->secp, sig, &s);
        *siglen = 64;
        return true;
    }
    case FLOOR_K1_SCHNORR:
        if (data_len != 32 || !secp256k1_schnorrsig_sign32(f->secp, sig, data, &f->keypair, f->aux))
            return false;
        *siglen = 64;
        return true;
    case FLOOR_EC_LOWLEVEL:
        if (!bench_sig_to_rs(sig, flen, ECDSA_do_sign(data, (int)data_len, f->ec)))
            return false;
        *siglen = 2 * flen;
        return true;
    case FLOOR_EC_EVP: {
        uint8_t der[160];
        size_t derlen = sizeof der;
        if (EVP_PKEY_sign(f->pctx, der, &derlen, data, data_len) != 1 ||
            !bench_der_to_rs(sig, flen, der, derlen))
            return false;
        *siglen = 2 * flen;
        return true;
    }
    case FLOOR_ED_INIT:
        if (EVP_DigestSignInit_ex(f->md, NULL, NULL, NULL, NULL, f->pkey, NULL) != 1)
            return false;
        /* fall through */
    case FLOOR_ED_REUSE: {
        size_t len = *siglen;
        if (EVP_DigestSign(f->md, sig, &len, data, data_len) != 1 || len != 64)
            return false;
        *siglen = 64;
        return true;
    }
    case FLOOR_RSA_LOWLEVEL: {
        int n = RSA_private_encrypt((int)data_len, data, sig, f->rsa, RSA_PKCS1_PADDING);
        if (n != (int)info->sig_len)
            return false;
        *siglen = (size_t)n;
        return true;
    }
    case FLOOR_RSA_EVP: {
        size_t len = *siglen;
        if (EVP_PKEY_sign(f->pctx, sig, &len, data, data_len) != 1)
            return false;
        *siglen = len;
        return true;
    }
    }
    return false;
}

const struct kh_pubkey *bench_floor_pub(const struct bench_floor *f)
{
    return &f->pub;
}

void bench_floor_free(struct bench_floor *f)
{
    if (!f)
        return;
    EVP_MD_CTX_free(f->md);
    EVP_PKEY_CTX_free(f->pctx);
    EVP_PKEY_free(f->pkey);
    EC_KEY_free(f->ec);
    RSA_free(f->rsa);
    if (f->secp)
        secp256k1_context_destroy(f->secp);
    kh_wipe(f->seckey, sizeof f->seckey);
    kh_wipe(&f->keypair, sizeof f->keypair);
    kh_pubkey_clear(&f->pub);
    free(f);
}

bool bench_p256_keypair(uint8_t scalar[32], uint8_t point[65])
{
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    bool ok = ec && EC_KEY_generate_key(ec) &&
              BN_bn2binpad(EC_KEY_get0_private_key(ec), scalar, 32) == 32 &&
              EC_POINT_point2oct(EC_KEY_get0_group(ec), EC_KEY_get0_public_key(ec),
                                 POINT_CONVERSION_UNCOMPRESSED, point, 65, NULL) == 65;
    EC_KEY_free(ec);
    return ok;
}

/* ---- verification ------------------------------------------------------- */

static EVP_PKEY *bench_pub_evp(const struct kh_pubkey *pub)
{
    size_t len = 0;
    uint8_t *der = kh_pubkey_to_spki_der(pub, &len);
    const unsigned char *p = der;
    EVP_PKEY *pkey = der ? d2i_PUBKEY(NULL, &p, (long)len) : NULL;

    free(der);
    return pkey;
}

static bool bench_verify_bip340(const struct kh_pubkey *pub, const uint8_t *data, size_t data_len,
                                const uint8_t *s, size_t slen, char *err, size_t errlen)
{
    secp256k1_context *ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    secp256k1_xonly_pubkey xpk;
    bool ok = false;

    if (!ctx) {
        snprintf(err, errlen, "secp256k1 context");
        return false;
    }
    if (pub->kind != KH_KEY_SECP256K1 || pub->point_len != 65 || slen != 64 || data_len != 32) {
        snprintf(err, errlen, "wrong key or signature length for BIP-340");
    } else if (!secp256k1_xonly_pubkey_parse(ctx, &xpk, pub->point + 1)) {
        snprintf(err, errlen, "x-only public key does not parse");
    } else if (!secp256k1_schnorrsig_verify(ctx, s, data, data_len, &xpk)) {
        snprintf(err, errlen, "BIP-340 signature does not verify (libsecp256k1)");
    } else {
        ok = true;
    }
    secp256k1_context_destroy(ctx);
    return ok;
}

bool bench_verify(enum bench_sig sig, const struct kh_pubkey *pub, const uint8_t *data,
                  size_t data_len, const uint8_t *s, size_t slen, char *err, size_t errlen)
{
    const struct bench_sig_info *info = bench_sig_get(sig);
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_MD_CTX *md = NULL;
    bool ok = false;

    if (!info) {
        snprintf(err, errlen, "unknown figure");
        return false;
    }
    if (pub->kind != info->kind) {
        snprintf(err, errlen, "the public key is a %s key, not %s", kh_keykind_name(pub->kind),
                 kh_keykind_name(info->kind));
        return false;
    }
    if (sig == BENCH_SIG_BIP340)
        return bench_verify_bip340(pub, data, data_len, s, slen, err, errlen);
    if (slen != info->sig_len) {
        snprintf(err, errlen, "signature is %zu bytes, expected %zu", slen, info->sig_len);
        return false;
    }
    pkey = bench_pub_evp(pub);
    if (!pkey) {
        bench_seterr(err, errlen, "public key does not load into OpenSSL");
        return false;
    }
    if (sig == BENCH_SIG_ED25519) {
        md = EVP_MD_CTX_new();
        ok = md && EVP_DigestVerifyInit_ex(md, NULL, NULL, NULL, NULL, pkey, NULL) == 1 &&
             EVP_DigestVerify(md, s, slen, data, data_len) == 1;
        if (!ok)
            bench_seterr(err, errlen, "Ed25519 signature does not verify (OpenSSL)");
        goto out;
    }
    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (!ctx || EVP_PKEY_verify_init(ctx) != 1) {
        bench_seterr(err, errlen, "EVP_PKEY_verify_init");
        goto out;
    }
    if (sig == BENCH_SIG_RSA2048) {
        ok = EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_verify(ctx, s, slen, data, data_len) == 1;
        if (!ok)
            bench_seterr(err, errlen, "RSA PKCS#1 signature does not verify (OpenSSL)");
        goto out;
    }
    /* ECDSA: r||s -> DER for OpenSSL, which also accepts high-S. */
    {
        size_t flen = slen / 2;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(s, (int)flen, NULL), *sv = BN_bin2bn(s + flen, (int)flen, NULL);
        unsigned char *der = NULL;
        int derlen;

        if (!es || !r || !sv || !ECDSA_SIG_set0(es, r, sv)) {
            BN_free(r);
            BN_free(sv);
            ECDSA_SIG_free(es);
            snprintf(err, errlen, "out of memory");
            goto out;
        }
        derlen = i2d_ECDSA_SIG(es, &der);
        ok = derlen > 0 && EVP_PKEY_verify(ctx, der, (size_t)derlen, data, data_len) == 1;
        if (!ok)
            bench_seterr(err, errlen, "ECDSA signature does not verify (OpenSSL)");
        OPENSSL_free(der);
        ECDSA_SIG_free(es);
    }
out:
    EVP_MD_CTX_free(md);
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    return ok;
}

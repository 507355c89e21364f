/*
 * encode.c - hex/base64, key kinds, public key encodings (SPKI PEM, OpenSSH,
 * Ethereum address) and PEM private key parsing through OpenSSL 3.
 */
#include "encode.h"
#include "keccak.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kh_wipe(void *p, size_t len)
{
    if (p && len)
        OPENSSL_cleanse(p, len);
}

static void kh_seterr(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
}

/* ---- hex and base64 ---------------------------------------------------- */

bool kh_hex_encode(char *out, size_t outlen, const uint8_t *in, size_t len)
{
    static const char digits[] = "0123456789abcdef";

    if (outlen == 0)
        return false;
    if (len > (outlen - 1) / 2) {
        out[0] = '\0';
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0xf];
    }
    out[2 * len] = '\0';
    return true;
}

static int kh_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool kh_hex_decode(uint8_t *out, size_t *outlen, size_t outmax,
                   const char *hex, size_t hexlen)
{
    *outlen = 0;
    if (hexlen % 2 != 0 || hexlen / 2 > outmax)
        goto fail;
    for (size_t i = 0; i < hexlen / 2; i++) {
        int hi = kh_hexval(hex[2 * i]), lo = kh_hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            goto fail;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    *outlen = hexlen / 2;
    return true;

fail:
    kh_wipe(out, outmax);
    return false;
}

static const char kh_b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *kh_base64_encode(const uint8_t *in, size_t len)
{
    size_t olen = 4 * ((len + 2) / 3) + 1, o = 0;
    char *out = malloc(olen);

    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = kh_b64[(v >> 18) & 63];
        out[o++] = kh_b64[(v >> 12) & 63];
        out[o++] = i + 1 < len ? kh_b64[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? kh_b64[v & 63] : '=';
    }
    out[o] = '\0';
    return out;
}

uint8_t *kh_base64_decode(const char *in, size_t inlen, size_t *outlen)
{
    uint8_t *out;
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0, pad = 0;

    *outlen = 0;
    while (pad < 2 && inlen > 0 && in[inlen - 1] == '=') {
        inlen--;
        pad++;
    }
    if (inlen % 4 == 1 || (pad && (inlen + pad) % 4 != 0))
        return NULL;
    out = malloc(inlen * 3 / 4 + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < inlen; i++) {
        const char *p = in[i] ? strchr(kh_b64, in[i]) : NULL;
        if (!p) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)(p - kh_b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    /* Non-canonical trailing bits are rejected. */
    if (acc & ((1u << bits) - 1)) {
        free(out);
        return NULL;
    }
    *outlen = o;
    return out;
}

/* ---- key kinds --------------------------------------------------------- */

static const uint8_t kh_oid_secp256k1[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a };
static const uint8_t kh_oid_p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
static const uint8_t kh_oid_p384[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22 };
static const uint8_t kh_oid_ed25519[] = { 0x06, 0x03, 0x2b, 0x65, 0x70 };
static const uint8_t kh_str_edwards25519[] = {
    0x13, 0x0c, 'e', 'd', 'w', 'a', 'r', 'd', 's', '2', '5', '5', '1', '9'
};

static const struct {
    enum kh_keykind kind;
    const uint8_t *oid;
    size_t oid_len;
    int nid;
    const char *group;     /* OpenSSL group name */
    size_t field_len;
    const char *name;
} kh_curves[] = {
    { KH_KEY_SECP256K1, kh_oid_secp256k1, sizeof kh_oid_secp256k1, NID_secp256k1, "secp256k1", 32, "secp256k1" },
    { KH_KEY_P256, kh_oid_p256, sizeof kh_oid_p256, NID_X9_62_prime256v1, "prime256v1", 32, "p256" },
    { KH_KEY_P384, kh_oid_p384, sizeof kh_oid_p384, NID_secp384r1, "secp384r1", 48, "p384" },
    { KH_KEY_ED25519, kh_oid_ed25519, sizeof kh_oid_ed25519, NID_ED25519, "ED25519", 32, "ed25519" },
};
#define KH_NCURVES (sizeof kh_curves / sizeof kh_curves[0])

static int kh_curve_index(enum kh_keykind kind)
{
    for (size_t i = 0; i < KH_NCURVES; i++)
        if (kh_curves[i].kind == kind)
            return (int)i;
    return -1;
}

enum kh_keykind kh_keykind_from_ec_params(const uint8_t *der, size_t len)
{
    if (!der)
        return KH_KEY_UNKNOWN;
    for (size_t i = 0; i < KH_NCURVES; i++)
        if (len == kh_curves[i].oid_len && memcmp(der, kh_curves[i].oid, len) == 0)
            return kh_curves[i].kind;
    if (len == sizeof kh_str_edwards25519 && memcmp(der, kh_str_edwards25519, len) == 0)
        return KH_KEY_ED25519;
    return KH_KEY_UNKNOWN;
}

bool kh_keykind_ec_params(enum kh_keykind kind, const uint8_t **der, size_t *len)
{
    int i = kh_curve_index(kind);
    if (i < 0)
        return false;
    *der = kh_curves[i].oid;
    *len = kh_curves[i].oid_len;
    return true;
}

const char *kh_keykind_name(enum kh_keykind kind)
{
    int i = kh_curve_index(kind);
    if (i >= 0)
        return kh_curves[i].name;
    return kind == KH_KEY_RSA ? "rsa" : "unknown";
}

size_t kh_keykind_field_len(enum kh_keykind kind)
{
    int i = kh_curve_index(kind);
    return i >= 0 ? kh_curves[i].field_len : 0;
}

static bool kh_keykind_is_weierstrass(enum kh_keykind kind)
{
    return kind == KH_KEY_SECP256K1 || kind == KH_KEY_P256 || kind == KH_KEY_P384;
}

/* ---- public keys ------------------------------------------------------- */

void kh_pubkey_clear(struct kh_pubkey *pub)
{
    free(pub->point);
    free(pub->n);
    free(pub->e);
    memset(pub, 0, sizeof *pub);
}

static uint8_t *kh_memdup(const uint8_t *p, size_t len)
{
    uint8_t *q = malloc(len ? len : 1);
    if (q && len)
        memcpy(q, p, len);
    return q;
}

/*
 * Converts an encoded EC point (compressed or uncompressed) to the
 * uncompressed form, checking it is on the curve. Returns a malloc'd buffer.
 */
static uint8_t *kh_ec_point_normalize(enum kh_keykind kind, const uint8_t *in,
                                      size_t len, size_t *outlen)
{
    EC_GROUP *group = NULL;
    EC_POINT *pt = NULL;
    uint8_t *out = NULL;
    size_t want = 1 + 2 * kh_keykind_field_len(kind);
    int i = kh_curve_index(kind);

    *outlen = 0;
    if (i < 0 || !kh_keykind_is_weierstrass(kind))
        return NULL;
    group = EC_GROUP_new_by_curve_name(kh_curves[i].nid);
    if (!group)
        goto out;
    pt = EC_POINT_new(group);
    if (!pt || EC_POINT_oct2point(group, pt, in, len, NULL) != 1)
        goto out;
    if (EC_POINT_is_at_infinity(group, pt))
        goto out;
    out = malloc(want);
    if (!out)
        goto out;
    if (EC_POINT_point2oct(group, pt, POINT_CONVERSION_UNCOMPRESSED, out, want, NULL) != want) {
        free(out);
        out = NULL;
        goto out;
    }
    *outlen = want;
out:
    EC_POINT_free(pt);
    EC_GROUP_free(group);
    return out;
}

/* Splits a DER OCTET STRING (short or long form length) covering exactly
 * len bytes. */
static bool kh_der_octet_string(const uint8_t *in, size_t len,
                                const uint8_t **content, size_t *clen)
{
    size_t l, hdr;

    if (len < 2 || in[0] != 0x04)
        return false;
    if (in[1] < 0x80) {
        l = in[1];
        hdr = 2;
    } else if (in[1] == 0x81 && len >= 3) {
        l = in[2];
        hdr = 3;
    } else if (in[1] == 0x82 && len >= 4) {
        l = (size_t)in[2] << 8 | in[3];
        hdr = 4;
    } else {
        return false;
    }
    if (hdr + l != len)
        return false;
    *content = in + hdr;
    *clen = l;
    return true;
}

bool kh_pubkey_set_ec_point(struct kh_pubkey *pub, const uint8_t *val, size_t len)
{
    size_t fl = kh_keykind_field_len(pub->kind);
    const uint8_t *raw = val;
    size_t rawlen = len;
    uint8_t *out = NULL;
    size_t outlen = 0;

    if (fl == 0 || !val)
        return false;
    if (pub->kind == KH_KEY_ED25519) {
        if (len != 32 && !(kh_der_octet_string(val, len, &raw, &rawlen) && rawlen == 32))
            return false;
        out = kh_memdup(raw, 32);
        outlen = 32;
    } else {
        /* Raw sizes (1 + 2*fl, 1 + fl) never equal DER sizes (+2), so the
         * length tells the two forms apart. */
        if (!(len == 1 + 2 * fl || len == 1 + fl)) {
            if (!kh_der_octet_string(val, len, &raw, &rawlen))
                return false;
        }
        out = kh_ec_point_normalize(pub->kind, raw, rawlen, &outlen);
    }
    if (!out)
        return false;
    free(pub->point);
    pub->point = out;
    pub->point_len = outlen;
    return true;
}

bool kh_pubkey_set_rsa(struct kh_pubkey *pub, const uint8_t *n, size_t n_len,
                       const uint8_t *e, size_t e_len)
{
    uint8_t *nn, *ee;

    while (n_len > 0 && n[0] == 0) {
        n++;
        n_len--;
    }
    while (e_len > 0 && e[0] == 0) {
        e++;
        e_len--;
    }
    if (n_len == 0 || e_len == 0)
        return false;
    nn = kh_memdup(n, n_len);
    ee = kh_memdup(e, e_len);
    if (!nn || !ee) {
        free(nn);
        free(ee);
        return false;
    }
    free(pub->n);
    free(pub->e);
    pub->kind = KH_KEY_RSA;
    pub->n = nn;
    pub->n_len = n_len;
    pub->e = ee;
    pub->e_len = e_len;
    return true;
}

size_t kh_pubkey_rsa_bits(const struct kh_pubkey *pub)
{
    size_t bits;
    uint8_t top;

    if (pub->kind != KH_KEY_RSA || pub->n_len == 0)
        return 0;
    bits = 8 * pub->n_len;
    for (top = pub->n[0]; !(top & 0x80); top <<= 1)
        bits--;
    return bits;
}

/* Builds an OpenSSL public key from pub. */
static EVP_PKEY *kh_pubkey_to_evp(const struct kh_pubkey *pub)
{
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;
    BIGNUM *n = NULL, *e = NULL;
    int i = kh_curve_index(pub->kind);

    if (pub->kind == KH_KEY_ED25519) {
        if (pub->point_len != 32)
            return NULL;
        return EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub->point, 32);
    }
    bld = OSSL_PARAM_BLD_new();
    if (!bld)
        goto out;
    if (kh_keykind_is_weierstrass(pub->kind) && i >= 0 && pub->point) {
        if (!OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, kh_curves[i].group, 0) ||
            !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub->point, pub->point_len))
            goto out;
        ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    } else if (pub->kind == KH_KEY_RSA && pub->n && pub->e) {
        n = BN_bin2bn(pub->n, (int)pub->n_len, NULL);
        e = BN_bin2bn(pub->e, (int)pub->e_len, NULL);
        if (!n || !e ||
            !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
            !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
            goto out;
        ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    } else {
        goto out;
    }
    params = OSSL_PARAM_BLD_to_param(bld);
    if (!ctx || !params || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
out:
    BN_free(n);
    BN_free(e);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    return pkey;
}

char *kh_pubkey_to_pem(const struct kh_pubkey *pub)
{
    EVP_PKEY *pkey = kh_pubkey_to_evp(pub);
    BIO *bio = NULL;
    char *data, *out = NULL;
    long len;

    if (!pkey)
        return NULL;
    bio = BIO_new(BIO_s_mem());
    if (!bio || PEM_write_bio_PUBKEY(bio, pkey) != 1)
        goto out;
    len = BIO_get_mem_data(bio, &data);
    if (len <= 0)
        goto out;
    out = malloc((size_t)len + 1);
    if (!out)
        goto out;
    memcpy(out, data, (size_t)len);
    out[len] = '\0';
out:
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    return out;
}

uint8_t *kh_pubkey_to_spki_der(const struct kh_pubkey *pub, size_t *len)
{
    EVP_PKEY *pkey = kh_pubkey_to_evp(pub);
    unsigned char *der = NULL;
    uint8_t *out = NULL;
    int n;

    *len = 0;
    if (!pkey)
        return NULL;
    n = i2d_PUBKEY(pkey, &der);
    if (n > 0) {
        out = kh_memdup(der, (size_t)n);
        if (out)
            *len = (size_t)n;
    }
    OPENSSL_free(der);
    EVP_PKEY_free(pkey);
    return out;
}

/* A growable byte buffer for SSH wire encoding. */
struct kh_buf {
    uint8_t *p;
    size_t len, cap;
    bool failed;
};

static void kh_buf_put(struct kh_buf *b, const void *data, size_t len)
{
    if (b->failed)
        return;
    if (b->len + len > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 256);
        while (cap < b->len + len)
            cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np) {
            b->failed = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, len);
    b->len += len;
}

static void kh_buf_put_string(struct kh_buf *b, const void *data, size_t len)
{
    uint8_t hdr[4] = {
        (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len
    };
    kh_buf_put(b, hdr, 4);
    kh_buf_put(b, data, len);
}

/* SSH mpint of a non-negative big-endian integer. */
static void kh_buf_put_mpint(struct kh_buf *b, const uint8_t *v, size_t len)
{
    static const uint8_t zero = 0;
    while (len > 0 && v[0] == 0) {
        v++;
        len--;
    }
    if (len > 0 && (v[0] & 0x80)) {
        uint8_t hdr[4] = {
            (uint8_t)((len + 1) >> 24), (uint8_t)((len + 1) >> 16),
            (uint8_t)((len + 1) >> 8), (uint8_t)(len + 1)
        };
        kh_buf_put(b, hdr, 4);
        kh_buf_put(b, &zero, 1);
        kh_buf_put(b, v, len);
    } else {
        kh_buf_put_string(b, v, len);
    }
}

char *kh_pubkey_to_ssh(const struct kh_pubkey *pub, const char *comment)
{
    struct kh_buf b = { 0 };
    const char *type;
    char *b64 = NULL, *out = NULL;
    size_t outlen;

    switch (pub->kind) {
    case KH_KEY_P256:
    case KH_KEY_P384: {
        const char *curve = pub->kind == KH_KEY_P256 ? "nistp256" : "nistp384";
        type = pub->kind == KH_KEY_P256 ? "ecdsa-sha2-nistp256" : "ecdsa-sha2-nistp384";
        if (!pub->point)
            return NULL;
        kh_buf_put_string(&b, type, strlen(type));
        kh_buf_put_string(&b, curve, strlen(curve));
        kh_buf_put_string(&b, pub->point, pub->point_len);
        break;
    }
    case KH_KEY_ED25519:
        type = "ssh-ed25519";
        if (!pub->point || pub->point_len != 32)
            return NULL;
        kh_buf_put_string(&b, type, strlen(type));
        kh_buf_put_string(&b, pub->point, 32);
        break;
    case KH_KEY_RSA:
        type = "ssh-rsa";
        if (!pub->n || !pub->e)
            return NULL;
        kh_buf_put_string(&b, type, strlen(type));
        kh_buf_put_mpint(&b, pub->e, pub->e_len);
        kh_buf_put_mpint(&b, pub->n, pub->n_len);
        break;
    default:
        return NULL;
    }
    if (b.failed)
        goto out;
    b64 = kh_base64_encode(b.p, b.len);
    if (!b64)
        goto out;
    outlen = strlen(type) + 1 + strlen(b64) + (comment ? strlen(comment) + 1 : 0) + 1;
    out = malloc(outlen);
    if (!out)
        goto out;
    if (comment && comment[0])
        snprintf(out, outlen, "%s %s %s", type, b64, comment);
    else
        snprintf(out, outlen, "%s %s", type, b64);
out:
    free(b64);
    free(b.p);
    return out;
}

void kh_eip55_encode(char out[KH_ETH_ADDRESS_LEN], const uint8_t addr[20])
{
    uint8_t hh[KH_KECCAK256_LEN];
    char lower[41];

    kh_hex_encode(lower, sizeof lower, addr, 20);
    kh_keccak256(hh, (const uint8_t *)lower, 40);
    out[0] = '0';
    out[1] = 'x';
    for (int i = 0; i < 40; i++) {
        unsigned nib = (i % 2 == 0) ? hh[i / 2] >> 4 : hh[i / 2] & 0xf;
        char c = lower[i];
        if (c >= 'a' && c <= 'f' && nib >= 8)
            c = (char)(c - 'a' + 'A');
        out[2 + i] = c;
    }
    out[42] = '\0';
}

bool kh_pubkey_eth_address(char out[KH_ETH_ADDRESS_LEN], const struct kh_pubkey *pub)
{
    uint8_t h[KH_KECCAK256_LEN];

    out[0] = '\0';
    if (pub->kind != KH_KEY_SECP256K1 || pub->point_len != 65 || pub->point[0] != 0x04)
        return false;
    /* The address: the last 20 bytes of keccak256(X||Y). */
    kh_keccak256(h, pub->point + 1, 64);
    kh_eip55_encode(out, h + 12);
    return true;
}

bool kh_pubkey_default_id(uint8_t id[KH_DEFAULT_ID_LEN], const struct kh_pubkey *pub)
{
    uint8_t h[SHA256_DIGEST_LENGTH];
    const uint8_t *src = pub->kind == KH_KEY_RSA ? pub->n : pub->point;
    size_t len = pub->kind == KH_KEY_RSA ? pub->n_len : pub->point_len;

    if (!src || len == 0)
        return false;
    SHA256(src, len, h);
    memcpy(id, h, KH_DEFAULT_ID_LEN);
    return true;
}

/* ---- private keys ------------------------------------------------------ */

void kh_privkey_clear(struct kh_privkey *key)
{
    if (key->value)
        OPENSSL_clear_free(key->value, key->value_len);
    for (int i = 0; i < KH_RSA_NPARTS; i++)
        if (key->rsa[i])
            OPENSSL_clear_free(key->rsa[i], key->rsa_len[i]);
    kh_pubkey_clear(&key->pub);
    memset(key, 0, sizeof *key);
}

/* Computes the uncompressed public point of scalar on an EC kind, after
 * checking 0 < scalar < order. */
static bool kh_ec_public_from_scalar(struct kh_pubkey *pub, enum kh_keykind kind,
                                     const uint8_t *scalar, size_t len,
                                     char *err, size_t errlen)
{
    EC_GROUP *group = NULL;
    EC_POINT *pt = NULL;
    BIGNUM *k = NULL;
    BN_CTX *bnctx = NULL;
    uint8_t *out = NULL;
    size_t want = 1 + 2 * kh_keykind_field_len(kind);
    int i = kh_curve_index(kind);
    bool ok = false;

    if (i < 0 || !kh_keykind_is_weierstrass(kind)) {
        kh_seterr(err, errlen, "not an EC key");
        return false;
    }
    group = EC_GROUP_new_by_curve_name(kh_curves[i].nid);
    bnctx = BN_CTX_secure_new();
    k = BN_secure_new();
    if (!group || !bnctx || !k || !BN_bin2bn(scalar, (int)len, k))
        goto out_oom;
    if (BN_is_zero(k) || BN_cmp(k, EC_GROUP_get0_order(group)) >= 0) {
        kh_seterr(err, errlen, "private key is out of range for the curve");
        goto out;
    }
    BN_set_flags(k, BN_FLG_CONSTTIME);
    pt = EC_POINT_new(group);
    out = malloc(want);
    if (!pt || !out || EC_POINT_mul(group, pt, k, NULL, NULL, bnctx) != 1 ||
        EC_POINT_point2oct(group, pt, POINT_CONVERSION_UNCOMPRESSED, out, want, bnctx) != want)
        goto out_oom;
    kh_pubkey_clear(pub);
    pub->kind = kind;
    pub->point = out;
    pub->point_len = want;
    out = NULL;
    ok = true;
    goto out;

out_oom:
    kh_seterr(err, errlen, "cannot compute the public key (OpenSSL error)");
out:
    free(out);
    EC_POINT_free(pt);
    BN_clear_free(k);
    BN_CTX_free(bnctx);
    EC_GROUP_free(group);
    return ok;
}

bool kh_privkey_from_secp256k1(struct kh_privkey *key, const uint8_t scalar[32],
                               char *err, size_t errlen)
{
    memset(key, 0, sizeof *key);
    key->kind = KH_KEY_SECP256K1;
    key->value = OPENSSL_malloc(32);
    if (!key->value) {
        kh_seterr(err, errlen, "out of memory");
        goto fail;
    }
    memcpy(key->value, scalar, 32);
    key->value_len = 32;
    if (!kh_ec_public_from_scalar(&key->pub, KH_KEY_SECP256K1, scalar, 32, err, errlen))
        goto fail;
    return true;

fail:
    kh_privkey_clear(key);
    return false;
}

/* Copies a BIGNUM parameter of pkey into a fresh buffer (padded to pad
 * bytes when pad > 0). */
static bool kh_get_bn(const EVP_PKEY *pkey, const char *name, size_t pad,
                      uint8_t **out, size_t *outlen)
{
    BIGNUM *bn = NULL;
    size_t len;
    bool ok = false;

    if (!EVP_PKEY_get_bn_param(pkey, name, &bn) || !bn)
        return false;
    len = (size_t)BN_num_bytes(bn);
    if (pad) {
        if (len > pad)
            goto out;
        len = pad;
    }
    if (len == 0)
        goto out;
    *out = OPENSSL_malloc(len);
    if (!*out)
        goto out;
    if (BN_bn2binpad(bn, *out, (int)len) != (int)len) {
        OPENSSL_clear_free(*out, len);
        *out = NULL;
        goto out;
    }
    *outlen = len;
    ok = true;
out:
    BN_clear_free(bn);
    return ok;
}

static int kh_no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf; (void)size; (void)rwflag; (void)u;
    return -1;
}

bool kh_privkey_from_pem(struct kh_privkey *key, const char *pem, size_t len,
                         char *err, size_t errlen)
{
    BIO *bio = NULL;
    EVP_PKEY *pkey = NULL;
    char group[64];
    size_t glen = 0;

    memset(key, 0, sizeof *key);
    bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio) {
        kh_seterr(err, errlen, "out of memory");
        goto fail;
    }
    pkey = PEM_read_bio_PrivateKey(bio, NULL, kh_no_password, NULL);
    if (!pkey) {
        kh_seterr(err, errlen, "not a readable private key PEM (encrypted keys are not supported)");
        goto fail;
    }

    if (EVP_PKEY_is_a(pkey, "EC")) {
        if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen)) {
            kh_seterr(err, errlen, "EC key without a named curve is not supported");
            goto fail;
        }
        for (size_t i = 0; i < KH_NCURVES; i++)
            if (kh_keykind_is_weierstrass(kh_curves[i].kind) &&
                (strcmp(group, kh_curves[i].group) == 0 ||
                 strcmp(group, OBJ_nid2sn(kh_curves[i].nid)) == 0 ||
                 (kh_curves[i].kind == KH_KEY_P256 && strcmp(group, "P-256") == 0) ||
                 (kh_curves[i].kind == KH_KEY_P384 && strcmp(group, "P-384") == 0)))
                key->kind = kh_curves[i].kind;
        if (key->kind == KH_KEY_UNKNOWN) {
            snprintf(err, errlen, "EC curve %s is not supported (secp256k1, P-256, P-384)", group);
            goto fail;
        }
        if (!kh_get_bn(pkey, OSSL_PKEY_PARAM_PRIV_KEY, kh_keykind_field_len(key->kind),
                       &key->value, &key->value_len)) {
            kh_seterr(err, errlen, "cannot read the EC private scalar");
            goto fail;
        }
        if (!kh_ec_public_from_scalar(&key->pub, key->kind, key->value, key->value_len, err, errlen))
            goto fail;
    } else if (EVP_PKEY_is_a(pkey, "ED25519")) {
        size_t sl = 32, pl = 32;
        key->kind = KH_KEY_ED25519;
        key->value = OPENSSL_malloc(32);
        key->pub.kind = KH_KEY_ED25519;
        key->pub.point = malloc(32);
        if (!key->value || !key->pub.point) {
            kh_seterr(err, errlen, "out of memory");
            goto fail;
        }
        key->value_len = 32;
        key->pub.point_len = 32;
        if (EVP_PKEY_get_raw_private_key(pkey, key->value, &sl) != 1 || sl != 32 ||
            EVP_PKEY_get_raw_public_key(pkey, key->pub.point, &pl) != 1 || pl != 32) {
            kh_seterr(err, errlen, "cannot read the Ed25519 key");
            goto fail;
        }
    } else if (EVP_PKEY_is_a(pkey, "RSA")) {
        static const char *const parts[KH_RSA_NPARTS] = {
            OSSL_PKEY_PARAM_RSA_D, OSSL_PKEY_PARAM_RSA_FACTOR1, OSSL_PKEY_PARAM_RSA_FACTOR2,
            OSSL_PKEY_PARAM_RSA_EXPONENT1, OSSL_PKEY_PARAM_RSA_EXPONENT2,
            OSSL_PKEY_PARAM_RSA_COEFFICIENT1,
        };
        uint8_t *n = NULL, *e = NULL;
        size_t nl = 0, el = 0;
        bool ok;

        key->kind = KH_KEY_RSA;
        ok = kh_get_bn(pkey, OSSL_PKEY_PARAM_RSA_N, 0, &n, &nl) &&
             kh_get_bn(pkey, OSSL_PKEY_PARAM_RSA_E, 0, &e, &el) &&
             kh_pubkey_set_rsa(&key->pub, n, nl, e, el);
        OPENSSL_free(n);
        OPENSSL_free(e);
        if (!ok) {
            kh_seterr(err, errlen, "cannot read the RSA public key");
            goto fail;
        }
        for (int i = 0; i < KH_RSA_NPARTS; i++) {
            if (!kh_get_bn(pkey, parts[i], 0, &key->rsa[i], &key->rsa_len[i])) {
                kh_seterr(err, errlen, "RSA key without all CRT parameters is not supported");
                goto fail;
            }
        }
    } else {
        kh_seterr(err, errlen, "unsupported key type (EC secp256k1/P-256/P-384, Ed25519, RSA)");
        goto fail;
    }
    EVP_PKEY_free(pkey);
    BIO_free(bio);
    return true;

fail:
    EVP_PKEY_free(pkey);
    BIO_free(bio);
    kh_privkey_clear(key);
    return false;
}

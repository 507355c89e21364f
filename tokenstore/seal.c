/*
 * Sealing primitives of the token store: OS randomness, the PIN KDF (scrypt)
 * and AES-256-GCM blobs. No SQLite here, so the module and tools can use
 * these on their own.
 */
#include "store.h"
#include "base.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#define KH_GCM_NONCE_LEN 12
#define KH_GCM_TAG_LEN 16
#define KH_SEAL_OVERHEAD (KH_GCM_NONCE_LEN + KH_GCM_TAG_LEN)

/* Bounds on scrypt cost. Params are read back from the database, so they are
 * untrusted input: cap memory (128 * r * N bytes) at 1 GiB. */
#define KH_KDF_LOG2N_MIN 10
#define KH_KDF_LOG2N_MAX 20
#define KH_KDF_LOG2N_DEFAULT 15
#define KH_KDF_MAXMEM ((uint64_t)1 << 30)

void kh_wipe(void *p, size_t len)
{
    if (p && len)
        OPENSSL_cleanse(p, len);
}

void kh_kdf_default(kh_kdf_params *out)
{
    out->log2_n = KH_KDF_LOG2N_DEFAULT;
    out->r = 8;
    out->p = 1;

    /* secure_getenv: a setuid consumer must not have its KDF cost lowered. */
    const char *s = secure_getenv("KEYHOLD_KDF_LOG2N");
    if (s && *s) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno == 0 && *end == '\0') {
            if (v < KH_KDF_LOG2N_MIN)
                v = KH_KDF_LOG2N_MIN;
            if (v > KH_KDF_LOG2N_MAX)
                v = KH_KDF_LOG2N_MAX;
            out->log2_n = (uint32_t)v;
        }
    }
}

CK_RV kh_hkdf_sha256(uint8_t *out, size_t out_len, const uint8_t *ikm, size_t ikm_len, const char *info)
{
    EVP_KDF *alg = EVP_KDF_fetch(kh_ossl_libctx(), OSSL_KDF_NAME_HKDF, NULL);
    EVP_KDF_CTX *ctx = alg ? EVP_KDF_CTX_new(alg) : NULL;
    CK_RV rv = CKR_FUNCTION_FAILED;
    if (ctx) {
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikm_len),
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, strlen(info)),
            OSSL_PARAM_construct_end(),
        };
        if (EVP_KDF_derive(ctx, out, out_len, params) == 1)
            rv = CKR_OK;
    }
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(alg);
    if (rv != CKR_OK)
        kh_wipe(out, out_len);
    return rv;
}

/* Predicate: are these scrypt parameters within the bounds we accept? */
static bool kh_kdf_params_ok(const kh_kdf_params *kdf)
{
    if (kdf->log2_n < KH_KDF_LOG2N_MIN || kdf->log2_n > KH_KDF_LOG2N_MAX)
        return false;
    if (kdf->r < 1 || kdf->r > 32 || kdf->p < 1 || kdf->p > 16)
        return false;
    return (uint64_t)128 * kdf->r * ((uint64_t)1 << kdf->log2_n) <= KH_KDF_MAXMEM;
}

CK_RV kh_kdf(uint8_t out[32], const uint8_t *pin, size_t pin_len,
             const uint8_t *salt, size_t salt_len, const kh_kdf_params *kdf)
{
    static const uint8_t empty[1];
    CK_RV rv = CKR_FUNCTION_FAILED;
    EVP_KDF *alg = NULL;
    EVP_KDF_CTX *ctx = NULL;
    uint64_t n, maxmem = KH_KDF_MAXMEM;
    uint32_t r, p;
    OSSL_PARAM params[7];

    if (!out || !kdf || (!pin && pin_len) || (!salt && salt_len))
        return CKR_ARGUMENTS_BAD;
    if (!kh_kdf_params_ok(kdf))
        return CKR_ARGUMENTS_BAD;
    n = (uint64_t)1 << kdf->log2_n;
    r = kdf->r;
    p = kdf->p;

    alg = EVP_KDF_fetch(kh_ossl_libctx(), OSSL_KDF_NAME_SCRYPT, NULL);
    if (!alg)
        goto out;
    ctx = EVP_KDF_CTX_new(alg);
    if (!ctx) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD,
                                                  (void *)(pin_len ? pin : empty), pin_len);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT,
                                                  (void *)(salt_len ? salt : empty), salt_len);
    params[2] = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n);
    params[3] = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &r);
    params[4] = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &p);
    params[5] = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem);
    params[6] = OSSL_PARAM_construct_end();
    if (EVP_KDF_derive(ctx, out, 32, params) != 1) {
        kh_wipe(out, 32);
        goto out;
    }
    rv = CKR_OK;
out:
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(alg);
    return rv;
}

static EVP_CIPHER *kh_gcm;
static pthread_once_t kh_gcm_once = PTHREAD_ONCE_INIT;

static void kh_gcm_fetch(void)
{
    kh_gcm = EVP_CIPHER_fetch(kh_ossl_libctx(), "AES-256-GCM", NULL);
}

/* Module unload: release the fetched cipher. */
void kh_seal_cleanup(void)
{
    EVP_CIPHER_free(kh_gcm);
    kh_gcm = NULL;
}

/* AES-256-GCM from the module's own library context (never a host engine). */
static const EVP_CIPHER *gcm_cipher(void)
{
    pthread_once(&kh_gcm_once, kh_gcm_fetch);
    return kh_gcm;
}

CK_RV kh_seal(uint8_t **out, size_t *out_len, const uint8_t key[32],
              const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len)
{
    CK_RV rv = CKR_FUNCTION_FAILED;
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t *buf = NULL;
    size_t len;
    int n;

    if (!out || !out_len || !key || (!aad && aad_len) || (!pt && pt_len))
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    *out_len = 0;
    if (pt_len > (size_t)INT_MAX - KH_SEAL_OVERHEAD || aad_len > INT_MAX)
        return CKR_DATA_LEN_RANGE;
    len = pt_len + KH_SEAL_OVERHEAD;
    buf = malloc(len);
    if (!buf)
        return CKR_HOST_MEMORY;
    rv = kh_random(buf, KH_GCM_NONCE_LEN);
    if (rv != CKR_OK)
        goto out_free;
    rv = CKR_FUNCTION_FAILED;
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx) {
        rv = CKR_HOST_MEMORY;
        goto out_free;
    }
    if (!gcm_cipher() || EVP_EncryptInit_ex(ctx, gcm_cipher(), NULL, key, buf) != 1)
        goto out_free;
    if (aad_len && EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
        goto out_free;
    if (pt_len && EVP_EncryptUpdate(ctx, buf + KH_GCM_NONCE_LEN, &n, pt, (int)pt_len) != 1)
        goto out_free;
    if (EVP_EncryptFinal_ex(ctx, buf + KH_GCM_NONCE_LEN + pt_len, &n) != 1)
        goto out_free;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, KH_GCM_TAG_LEN,
                            buf + KH_GCM_NONCE_LEN + pt_len) != 1)
        goto out_free;
    EVP_CIPHER_CTX_free(ctx);
    *out = buf;
    *out_len = len;
    return CKR_OK;

out_free:
    EVP_CIPHER_CTX_free(ctx);
    kh_wipe(buf, len);
    free(buf);
    return rv;
}

CK_RV kh_unseal(uint8_t **out, size_t *out_len, const uint8_t key[32],
                const uint8_t *aad, size_t aad_len, const uint8_t *blob, size_t blob_len)
{
    CK_RV rv = CKR_FUNCTION_FAILED;
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t *buf = NULL;
    uint8_t tag[KH_GCM_TAG_LEN];
    size_t pt_len = 0;
    int n;

    if (!out || !out_len || !key || (!aad && aad_len) || (!blob && blob_len))
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    *out_len = 0;
    if (blob_len < KH_SEAL_OVERHEAD)
        return CKR_ENCRYPTED_DATA_INVALID;
    if (blob_len > (size_t)INT_MAX || aad_len > INT_MAX)
        return CKR_ENCRYPTED_DATA_LEN_RANGE;
    pt_len = blob_len - KH_SEAL_OVERHEAD;
    buf = malloc(pt_len ? pt_len : 1);
    if (!buf)
        return CKR_HOST_MEMORY;
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx) {
        rv = CKR_HOST_MEMORY;
        goto out_free;
    }
    if (!gcm_cipher() || EVP_DecryptInit_ex(ctx, gcm_cipher(), NULL, key, blob) != 1)
        goto out_free;
    if (aad_len && EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
        goto out_free;
    if (pt_len && EVP_DecryptUpdate(ctx, buf, &n, blob + KH_GCM_NONCE_LEN, (int)pt_len) != 1)
        goto out_free;
    memcpy(tag, blob + KH_GCM_NONCE_LEN + pt_len, KH_GCM_TAG_LEN);
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, KH_GCM_TAG_LEN, tag) != 1)
        goto out_free;
    if (EVP_DecryptFinal_ex(ctx, buf + pt_len, &n) != 1) {
        rv = CKR_ENCRYPTED_DATA_INVALID;
        goto out_free;
    }
    EVP_CIPHER_CTX_free(ctx);
    *out = buf;
    *out_len = pt_len;
    return CKR_OK;

out_free:
    EVP_CIPHER_CTX_free(ctx);
    kh_wipe(buf, pt_len);
    free(buf);
    return rv;
}

void kh_obj_aad(uint8_t out[KH_OBJ_AAD_LEN], const uint8_t token_uid[KH_UID_LEN],
                const uint8_t obj_uid[KH_UID_LEN])
{
    memcpy(out, "keyhold-obj-v1", 14);
    memcpy(out + 14, token_uid, KH_UID_LEN);
    memcpy(out + 14 + KH_UID_LEN, obj_uid, KH_UID_LEN);
}

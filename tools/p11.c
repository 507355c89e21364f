/*
 * p11.c - loading the keyhold module and the Cryptoki helpers the tools
 * share (see p11.h).
 */
#include "p11.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <openssl/crypto.h>

#ifndef KH_MODULE_INSTALLED
#define KH_MODULE_INSTALLED "/usr/local/lib/pkcs11/keyhold-pkcs11.so"
#endif
#define KH_MODULE_BUILD_REL "/../module/keyhold-pkcs11.so"

/* ---- loading ----------------------------------------------------------- */

const char *kh_p11_source_name(enum kh_p11_source src)
{
    switch (src) {
    case KH_P11_SRC_ARG: return "--module";
    case KH_P11_SRC_ENV: return "KEYHOLD_MODULE";
    case KH_P11_SRC_BUILD: return "build tree next to the executable";
    case KH_P11_SRC_INSTALLED: return "installed path";
    }
    return "?";
}

static bool kh_copy_path(char *out, size_t outlen, const char *in)
{
    int n = snprintf(out, outlen, "%s", in);
    return n >= 0 && (size_t)n < outlen;
}

bool kh_p11_resolve_path(char *out, size_t outlen, enum kh_p11_source *src,
                         const char *explicit_path)
{
    const char *env = getenv("KEYHOLD_MODULE");
    char exe[PATH_MAX];
    ssize_t n;

    if (explicit_path && explicit_path[0]) {
        *src = KH_P11_SRC_ARG;
        return kh_copy_path(out, outlen, explicit_path);
    }
    if (env && env[0]) {
        *src = KH_P11_SRC_ENV;
        return kh_copy_path(out, outlen, env);
    }
    n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        char *slash;
        exe[n] = '\0';
        slash = strrchr(exe, '/');
        if (slash) {
            char cand[PATH_MAX + sizeof KH_MODULE_BUILD_REL];
            *slash = '\0';
            snprintf(cand, sizeof cand, "%s%s", exe, KH_MODULE_BUILD_REL);
            if (access(cand, R_OK) == 0) {
                char real[PATH_MAX];
                *src = KH_P11_SRC_BUILD;
                return kh_copy_path(out, outlen, realpath(cand, real) ? real : cand);
            }
        }
    }
    *src = KH_P11_SRC_INSTALLED;
    return kh_copy_path(out, outlen, KH_MODULE_INSTALLED);
}

CK_RV kh_p11_load(struct kh_p11 *p, const char *explicit_path, char *err, size_t errlen)
{
    CK_C_GetFunctionList get;
    CK_RV rv;

    memset(p, 0, sizeof *p);
    if (!kh_p11_resolve_path(p->path, sizeof p->path, &p->source, explicit_path)) {
        snprintf(err, errlen, "module path too long");
        return CKR_LIBRARY_LOAD_FAILED;
    }
    p->dl = dlopen(p->path, RTLD_NOW | RTLD_LOCAL);
    if (!p->dl) {
        const char *e = dlerror();
        snprintf(err, errlen, "cannot load %s: %s", p->path, e ? e : "unknown error");
        return CKR_LIBRARY_LOAD_FAILED;
    }
    /* POSIX allows this conversion from void * to a function pointer. */
    *(void **)&get = dlsym(p->dl, "C_GetFunctionList");
    if (!get) {
        snprintf(err, errlen, "%s has no C_GetFunctionList: not a PKCS#11 module", p->path);
        goto fail;
    }
    rv = get(&p->f);
    if (rv != CKR_OK || !p->f) {
        snprintf(err, errlen, "C_GetFunctionList failed: %s", kh_rv_name(rv));
        goto fail;
    }
    return CKR_OK;

fail:
    dlclose(p->dl);
    p->dl = NULL;
    p->f = NULL;
    return CKR_LIBRARY_LOAD_FAILED;
}

CK_RV kh_p11_initialize(struct kh_p11 *p)
{
    CK_C_INITIALIZE_ARGS args;
    CK_RV rv;

    if (!p->f)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    rv = p->f->C_Initialize(&args);
    if (rv == CKR_OK)
        p->initialized = true;
    return rv;
}

CK_RV kh_p11_open(struct kh_p11 *p, const char *explicit_path, char *err, size_t errlen)
{
    CK_RV rv = kh_p11_load(p, explicit_path, err, errlen);
    if (rv != CKR_OK)
        return rv;
    rv = kh_p11_initialize(p);
    if (rv != CKR_OK) {
        snprintf(err, errlen, "C_Initialize failed: %s", kh_rv_name(rv));
        kh_p11_close(p);
    }
    return rv;
}

void kh_p11_close(struct kh_p11 *p)
{
    if (p->initialized && p->f)
        p->f->C_Finalize(NULL);
    p->initialized = false;
    if (p->dl)
        dlclose(p->dl);
    p->dl = NULL;
    p->f = NULL;
}

/* A value's name in one of the tables below. */
struct kh_name {
    CK_ULONG value;
    const char *name;
};

/* Returns: the name of value in table (n entries), else prefix and the
 * value in hex written into buf. */
static const char *kh_name_find(const struct kh_name *table, size_t n, CK_ULONG value,
                                const char *prefix, char *buf, size_t bufsz)
{
    for (size_t i = 0; i < n; i++)
        if (table[i].value == value)
            return table[i].name;
    snprintf(buf, bufsz, "%s0x%08lx", prefix, value);
    return buf;
}

static const struct kh_name kh_rv_names[] = {
    { CKR_OK, "CKR_OK" },
    { CKR_CANCEL, "CKR_CANCEL" },
    { CKR_HOST_MEMORY, "CKR_HOST_MEMORY" },
    { CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID" },
    { CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR" },
    { CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED" },
    { CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD" },
    { CKR_NO_EVENT, "CKR_NO_EVENT" },
    { CKR_NEED_TO_CREATE_THREADS, "CKR_NEED_TO_CREATE_THREADS" },
    { CKR_CANT_LOCK, "CKR_CANT_LOCK" },
    { CKR_ATTRIBUTE_READ_ONLY, "CKR_ATTRIBUTE_READ_ONLY" },
    { CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE" },
    { CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID" },
    { CKR_ATTRIBUTE_VALUE_INVALID, "CKR_ATTRIBUTE_VALUE_INVALID" },
    { CKR_ACTION_PROHIBITED, "CKR_ACTION_PROHIBITED" },
    { CKR_DATA_INVALID, "CKR_DATA_INVALID" },
    { CKR_DATA_LEN_RANGE, "CKR_DATA_LEN_RANGE" },
    { CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR" },
    { CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY" },
    { CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED" },
    { CKR_ENCRYPTED_DATA_INVALID, "CKR_ENCRYPTED_DATA_INVALID" },
    { CKR_ENCRYPTED_DATA_LEN_RANGE, "CKR_ENCRYPTED_DATA_LEN_RANGE" },
    { CKR_AEAD_DECRYPT_FAILED, "CKR_AEAD_DECRYPT_FAILED" },
    { CKR_FUNCTION_CANCELED, "CKR_FUNCTION_CANCELED" },
    { CKR_FUNCTION_NOT_PARALLEL, "CKR_FUNCTION_NOT_PARALLEL" },
    { CKR_FUNCTION_NOT_SUPPORTED, "CKR_FUNCTION_NOT_SUPPORTED" },
    { CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID" },
    { CKR_KEY_SIZE_RANGE, "CKR_KEY_SIZE_RANGE" },
    { CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT" },
    { CKR_KEY_NOT_NEEDED, "CKR_KEY_NOT_NEEDED" },
    { CKR_KEY_CHANGED, "CKR_KEY_CHANGED" },
    { CKR_KEY_NEEDED, "CKR_KEY_NEEDED" },
    { CKR_KEY_INDIGESTIBLE, "CKR_KEY_INDIGESTIBLE" },
    { CKR_KEY_FUNCTION_NOT_PERMITTED, "CKR_KEY_FUNCTION_NOT_PERMITTED" },
    { CKR_KEY_NOT_WRAPPABLE, "CKR_KEY_NOT_WRAPPABLE" },
    { CKR_KEY_UNEXTRACTABLE, "CKR_KEY_UNEXTRACTABLE" },
    { CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID" },
    { CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID" },
    { CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID" },
    { CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE" },
    { CKR_OPERATION_NOT_INITIALIZED, "CKR_OPERATION_NOT_INITIALIZED" },
    { CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT" },
    { CKR_PIN_INVALID, "CKR_PIN_INVALID" },
    { CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE" },
    { CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED" },
    { CKR_PIN_LOCKED, "CKR_PIN_LOCKED" },
    { CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED" },
    { CKR_SESSION_COUNT, "CKR_SESSION_COUNT" },
    { CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID" },
    { CKR_SESSION_PARALLEL_NOT_SUPPORTED, "CKR_SESSION_PARALLEL_NOT_SUPPORTED" },
    { CKR_SESSION_READ_ONLY, "CKR_SESSION_READ_ONLY" },
    { CKR_SESSION_EXISTS, "CKR_SESSION_EXISTS" },
    { CKR_SESSION_READ_ONLY_EXISTS, "CKR_SESSION_READ_ONLY_EXISTS" },
    { CKR_SESSION_READ_WRITE_SO_EXISTS, "CKR_SESSION_READ_WRITE_SO_EXISTS" },
    { CKR_SIGNATURE_INVALID, "CKR_SIGNATURE_INVALID" },
    { CKR_SIGNATURE_LEN_RANGE, "CKR_SIGNATURE_LEN_RANGE" },
    { CKR_TEMPLATE_INCOMPLETE, "CKR_TEMPLATE_INCOMPLETE" },
    { CKR_TEMPLATE_INCONSISTENT, "CKR_TEMPLATE_INCONSISTENT" },
    { CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT" },
    { CKR_TOKEN_NOT_RECOGNIZED, "CKR_TOKEN_NOT_RECOGNIZED" },
    { CKR_TOKEN_WRITE_PROTECTED, "CKR_TOKEN_WRITE_PROTECTED" },
    { CKR_UNWRAPPING_KEY_HANDLE_INVALID, "CKR_UNWRAPPING_KEY_HANDLE_INVALID" },
    { CKR_UNWRAPPING_KEY_SIZE_RANGE, "CKR_UNWRAPPING_KEY_SIZE_RANGE" },
    { CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT, "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT" },
    { CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN" },
    { CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN" },
    { CKR_USER_PIN_NOT_INITIALIZED, "CKR_USER_PIN_NOT_INITIALIZED" },
    { CKR_USER_TYPE_INVALID, "CKR_USER_TYPE_INVALID" },
    { CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "CKR_USER_ANOTHER_ALREADY_LOGGED_IN" },
    { CKR_USER_TOO_MANY_TYPES, "CKR_USER_TOO_MANY_TYPES" },
    { CKR_WRAPPED_KEY_INVALID, "CKR_WRAPPED_KEY_INVALID" },
    { CKR_WRAPPED_KEY_LEN_RANGE, "CKR_WRAPPED_KEY_LEN_RANGE" },
    { CKR_WRAPPING_KEY_HANDLE_INVALID, "CKR_WRAPPING_KEY_HANDLE_INVALID" },
    { CKR_WRAPPING_KEY_SIZE_RANGE, "CKR_WRAPPING_KEY_SIZE_RANGE" },
    { CKR_WRAPPING_KEY_TYPE_INCONSISTENT, "CKR_WRAPPING_KEY_TYPE_INCONSISTENT" },
    { CKR_RANDOM_SEED_NOT_SUPPORTED, "CKR_RANDOM_SEED_NOT_SUPPORTED" },
    { CKR_RANDOM_NO_RNG, "CKR_RANDOM_NO_RNG" },
    { CKR_DOMAIN_PARAMS_INVALID, "CKR_DOMAIN_PARAMS_INVALID" },
    { CKR_CURVE_NOT_SUPPORTED, "CKR_CURVE_NOT_SUPPORTED" },
    { CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL" },
    { CKR_SAVED_STATE_INVALID, "CKR_SAVED_STATE_INVALID" },
    { CKR_INFORMATION_SENSITIVE, "CKR_INFORMATION_SENSITIVE" },
    { CKR_STATE_UNSAVEABLE, "CKR_STATE_UNSAVEABLE" },
    { CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED" },
    { CKR_CRYPTOKI_ALREADY_INITIALIZED, "CKR_CRYPTOKI_ALREADY_INITIALIZED" },
    { CKR_MUTEX_BAD, "CKR_MUTEX_BAD" },
    { CKR_MUTEX_NOT_LOCKED, "CKR_MUTEX_NOT_LOCKED" },
    { CKR_NEW_PIN_MODE, "CKR_NEW_PIN_MODE" },
    { CKR_NEXT_OTP, "CKR_NEXT_OTP" },
    { CKR_EXCEEDED_MAX_ITERATIONS, "CKR_EXCEEDED_MAX_ITERATIONS" },
    { CKR_FIPS_SELF_TEST_FAILED, "CKR_FIPS_SELF_TEST_FAILED" },
    { CKR_LIBRARY_LOAD_FAILED, "CKR_LIBRARY_LOAD_FAILED" },
    { CKR_PIN_TOO_WEAK, "CKR_PIN_TOO_WEAK" },
    { CKR_PUBLIC_KEY_INVALID, "CKR_PUBLIC_KEY_INVALID" },
    { CKR_FUNCTION_REJECTED, "CKR_FUNCTION_REJECTED" },
    { CKR_TOKEN_RESOURCE_EXCEEDED, "CKR_TOKEN_RESOURCE_EXCEEDED" },
    { CKR_OPERATION_CANCEL_FAILED, "CKR_OPERATION_CANCEL_FAILED" },
    { CKR_KH_STORE_ERROR, "CKR_KH_STORE_ERROR" },
};

const char *kh_rv_name(CK_RV rv)
{
    static _Thread_local char buf[32];

    return kh_name_find(kh_rv_names, sizeof kh_rv_names / sizeof kh_rv_names[0], rv, "CKR_", buf,
                        sizeof buf);
}

static const struct kh_name kh_mech_names[] = {
    { CKM_RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN" },
    { CKM_RSA_PKCS, "CKM_RSA_PKCS" },
    { CKM_RSA_9796, "CKM_RSA_9796" },
    { CKM_RSA_X_509, "CKM_RSA_X_509" },
    { CKM_MD2_RSA_PKCS, "CKM_MD2_RSA_PKCS" },
    { CKM_MD5_RSA_PKCS, "CKM_MD5_RSA_PKCS" },
    { CKM_SHA1_RSA_PKCS, "CKM_SHA1_RSA_PKCS" },
    { CKM_RIPEMD128_RSA_PKCS, "CKM_RIPEMD128_RSA_PKCS" },
    { CKM_RIPEMD160_RSA_PKCS, "CKM_RIPEMD160_RSA_PKCS" },
    { CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP" },
    { CKM_RSA_X9_31_KEY_PAIR_GEN, "CKM_RSA_X9_31_KEY_PAIR_GEN" },
    { CKM_RSA_X9_31, "CKM_RSA_X9_31" },
    { CKM_SHA1_RSA_X9_31, "CKM_SHA1_RSA_X9_31" },
    { CKM_RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS" },
    { CKM_SHA1_RSA_PKCS_PSS, "CKM_SHA1_RSA_PKCS_PSS" },
    { CKM_DSA_KEY_PAIR_GEN, "CKM_DSA_KEY_PAIR_GEN" },
    { CKM_DSA, "CKM_DSA" },
    { CKM_DSA_SHA1, "CKM_DSA_SHA1" },
    { CKM_DSA_SHA224, "CKM_DSA_SHA224" },
    { CKM_DSA_SHA256, "CKM_DSA_SHA256" },
    { CKM_DSA_SHA384, "CKM_DSA_SHA384" },
    { CKM_DSA_SHA512, "CKM_DSA_SHA512" },
    { CKM_DSA_SHA3_224, "CKM_DSA_SHA3_224" },
    { CKM_DSA_SHA3_256, "CKM_DSA_SHA3_256" },
    { CKM_DSA_SHA3_384, "CKM_DSA_SHA3_384" },
    { CKM_DSA_SHA3_512, "CKM_DSA_SHA3_512" },
    { CKM_DH_PKCS_KEY_PAIR_GEN, "CKM_DH_PKCS_KEY_PAIR_GEN" },
    { CKM_DH_PKCS_DERIVE, "CKM_DH_PKCS_DERIVE" },
    { CKM_X9_42_DH_KEY_PAIR_GEN, "CKM_X9_42_DH_KEY_PAIR_GEN" },
    { CKM_X9_42_DH_DERIVE, "CKM_X9_42_DH_DERIVE" },
    { CKM_X9_42_DH_HYBRID_DERIVE, "CKM_X9_42_DH_HYBRID_DERIVE" },
    { CKM_X9_42_MQV_DERIVE, "CKM_X9_42_MQV_DERIVE" },
    { CKM_SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS" },
    { CKM_SHA384_RSA_PKCS, "CKM_SHA384_RSA_PKCS" },
    { CKM_SHA512_RSA_PKCS, "CKM_SHA512_RSA_PKCS" },
    { CKM_SHA256_RSA_PKCS_PSS, "CKM_SHA256_RSA_PKCS_PSS" },
    { CKM_SHA384_RSA_PKCS_PSS, "CKM_SHA384_RSA_PKCS_PSS" },
    { CKM_SHA512_RSA_PKCS_PSS, "CKM_SHA512_RSA_PKCS_PSS" },
    { CKM_SHA224_RSA_PKCS, "CKM_SHA224_RSA_PKCS" },
    { CKM_SHA224_RSA_PKCS_PSS, "CKM_SHA224_RSA_PKCS_PSS" },
    { CKM_SHA512_224, "CKM_SHA512_224" },
    { CKM_SHA512_224_HMAC, "CKM_SHA512_224_HMAC" },
    { CKM_SHA512_224_HMAC_GENERAL, "CKM_SHA512_224_HMAC_GENERAL" },
    { CKM_SHA512_224_KEY_DERIVATION, "CKM_SHA512_224_KEY_DERIVATION" },
    { CKM_SHA512_256, "CKM_SHA512_256" },
    { CKM_SHA512_256_HMAC, "CKM_SHA512_256_HMAC" },
    { CKM_SHA512_256_HMAC_GENERAL, "CKM_SHA512_256_HMAC_GENERAL" },
    { CKM_SHA512_256_KEY_DERIVATION, "CKM_SHA512_256_KEY_DERIVATION" },
    { CKM_SHA512_T, "CKM_SHA512_T" },
    { CKM_SHA512_T_HMAC, "CKM_SHA512_T_HMAC" },
    { CKM_SHA512_T_HMAC_GENERAL, "CKM_SHA512_T_HMAC_GENERAL" },
    { CKM_SHA512_T_KEY_DERIVATION, "CKM_SHA512_T_KEY_DERIVATION" },
    { CKM_SHA3_256_RSA_PKCS, "CKM_SHA3_256_RSA_PKCS" },
    { CKM_SHA3_384_RSA_PKCS, "CKM_SHA3_384_RSA_PKCS" },
    { CKM_SHA3_512_RSA_PKCS, "CKM_SHA3_512_RSA_PKCS" },
    { CKM_SHA3_256_RSA_PKCS_PSS, "CKM_SHA3_256_RSA_PKCS_PSS" },
    { CKM_SHA3_384_RSA_PKCS_PSS, "CKM_SHA3_384_RSA_PKCS_PSS" },
    { CKM_SHA3_512_RSA_PKCS_PSS, "CKM_SHA3_512_RSA_PKCS_PSS" },
    { CKM_SHA3_224_RSA_PKCS, "CKM_SHA3_224_RSA_PKCS" },
    { CKM_SHA3_224_RSA_PKCS_PSS, "CKM_SHA3_224_RSA_PKCS_PSS" },
    { CKM_RC2_KEY_GEN, "CKM_RC2_KEY_GEN" },
    { CKM_RC2_ECB, "CKM_RC2_ECB" },
    { CKM_RC2_CBC, "CKM_RC2_CBC" },
    { CKM_RC2_MAC, "CKM_RC2_MAC" },
    { CKM_RC2_MAC_GENERAL, "CKM_RC2_MAC_GENERAL" },
    { CKM_RC2_CBC_PAD, "CKM_RC2_CBC_PAD" },
    { CKM_RC4_KEY_GEN, "CKM_RC4_KEY_GEN" },
    { CKM_RC4, "CKM_RC4" },
    { CKM_DES_KEY_GEN, "CKM_DES_KEY_GEN" },
    { CKM_DES_ECB, "CKM_DES_ECB" },
    { CKM_DES_CBC, "CKM_DES_CBC" },
    { CKM_DES_MAC, "CKM_DES_MAC" },
    { CKM_DES_MAC_GENERAL, "CKM_DES_MAC_GENERAL" },
    { CKM_DES_CBC_PAD, "CKM_DES_CBC_PAD" },
    { CKM_DES2_KEY_GEN, "CKM_DES2_KEY_GEN" },
    { CKM_DES3_KEY_GEN, "CKM_DES3_KEY_GEN" },
    { CKM_DES3_ECB, "CKM_DES3_ECB" },
    { CKM_DES3_CBC, "CKM_DES3_CBC" },
    { CKM_DES3_MAC, "CKM_DES3_MAC" },
    { CKM_DES3_MAC_GENERAL, "CKM_DES3_MAC_GENERAL" },
    { CKM_DES3_CBC_PAD, "CKM_DES3_CBC_PAD" },
    { CKM_DES3_CMAC_GENERAL, "CKM_DES3_CMAC_GENERAL" },
    { CKM_DES3_CMAC, "CKM_DES3_CMAC" },
    { CKM_DES_OFB64, "CKM_DES_OFB64" },
    { CKM_DES_OFB8, "CKM_DES_OFB8" },
    { CKM_DES_CFB64, "CKM_DES_CFB64" },
    { CKM_DES_CFB8, "CKM_DES_CFB8" },
    { CKM_MD2, "CKM_MD2" },
    { CKM_MD2_HMAC, "CKM_MD2_HMAC" },
    { CKM_MD2_HMAC_GENERAL, "CKM_MD2_HMAC_GENERAL" },
    { CKM_MD5, "CKM_MD5" },
    { CKM_MD5_HMAC, "CKM_MD5_HMAC" },
    { CKM_MD5_HMAC_GENERAL, "CKM_MD5_HMAC_GENERAL" },
    { CKM_SHA_1, "CKM_SHA_1" },
    { CKM_SHA_1_HMAC, "CKM_SHA_1_HMAC" },
    { CKM_SHA_1_HMAC_GENERAL, "CKM_SHA_1_HMAC_GENERAL" },
    { CKM_RIPEMD128, "CKM_RIPEMD128" },
    { CKM_RIPEMD128_HMAC, "CKM_RIPEMD128_HMAC" },
    { CKM_RIPEMD128_HMAC_GENERAL, "CKM_RIPEMD128_HMAC_GENERAL" },
    { CKM_RIPEMD160, "CKM_RIPEMD160" },
    { CKM_RIPEMD160_HMAC, "CKM_RIPEMD160_HMAC" },
    { CKM_RIPEMD160_HMAC_GENERAL, "CKM_RIPEMD160_HMAC_GENERAL" },
    { CKM_SHA256, "CKM_SHA256" },
    { CKM_SHA256_HMAC, "CKM_SHA256_HMAC" },
    { CKM_SHA256_HMAC_GENERAL, "CKM_SHA256_HMAC_GENERAL" },
    { CKM_SHA224, "CKM_SHA224" },
    { CKM_SHA224_HMAC, "CKM_SHA224_HMAC" },
    { CKM_SHA224_HMAC_GENERAL, "CKM_SHA224_HMAC_GENERAL" },
    { CKM_SHA384, "CKM_SHA384" },
    { CKM_SHA384_HMAC, "CKM_SHA384_HMAC" },
    { CKM_SHA384_HMAC_GENERAL, "CKM_SHA384_HMAC_GENERAL" },
    { CKM_SHA512, "CKM_SHA512" },
    { CKM_SHA512_HMAC, "CKM_SHA512_HMAC" },
    { CKM_SHA512_HMAC_GENERAL, "CKM_SHA512_HMAC_GENERAL" },
    { CKM_SECURID_KEY_GEN, "CKM_SECURID_KEY_GEN" },
    { CKM_SECURID, "CKM_SECURID" },
    { CKM_HOTP_KEY_GEN, "CKM_HOTP_KEY_GEN" },
    { CKM_HOTP, "CKM_HOTP" },
    { CKM_ACTI, "CKM_ACTI" },
    { CKM_ACTI_KEY_GEN, "CKM_ACTI_KEY_GEN" },
    { CKM_SHA3_256, "CKM_SHA3_256" },
    { CKM_SHA3_256_HMAC, "CKM_SHA3_256_HMAC" },
    { CKM_SHA3_256_HMAC_GENERAL, "CKM_SHA3_256_HMAC_GENERAL" },
    { CKM_SHA3_256_KEY_GEN, "CKM_SHA3_256_KEY_GEN" },
    { CKM_SHA3_224, "CKM_SHA3_224" },
    { CKM_SHA3_224_HMAC, "CKM_SHA3_224_HMAC" },
    { CKM_SHA3_224_HMAC_GENERAL, "CKM_SHA3_224_HMAC_GENERAL" },
    { CKM_SHA3_224_KEY_GEN, "CKM_SHA3_224_KEY_GEN" },
    { CKM_SHA3_384, "CKM_SHA3_384" },
    { CKM_SHA3_384_HMAC, "CKM_SHA3_384_HMAC" },
    { CKM_SHA3_384_HMAC_GENERAL, "CKM_SHA3_384_HMAC_GENERAL" },
    { CKM_SHA3_384_KEY_GEN, "CKM_SHA3_384_KEY_GEN" },
    { CKM_SHA3_512, "CKM_SHA3_512" },
    { CKM_SHA3_512_HMAC, "CKM_SHA3_512_HMAC" },
    { CKM_SHA3_512_HMAC_GENERAL, "CKM_SHA3_512_HMAC_GENERAL" },
    { CKM_SHA3_512_KEY_GEN, "CKM_SHA3_512_KEY_GEN" },
    { CKM_GENERIC_SECRET_KEY_GEN, "CKM_GENERIC_SECRET_KEY_GEN" },
    { CKM_CONCATENATE_BASE_AND_KEY, "CKM_CONCATENATE_BASE_AND_KEY" },
    { CKM_CONCATENATE_BASE_AND_DATA, "CKM_CONCATENATE_BASE_AND_DATA" },
    { CKM_CONCATENATE_DATA_AND_BASE, "CKM_CONCATENATE_DATA_AND_BASE" },
    { CKM_XOR_BASE_AND_DATA, "CKM_XOR_BASE_AND_DATA" },
    { CKM_EXTRACT_KEY_FROM_KEY, "CKM_EXTRACT_KEY_FROM_KEY" },
    { CKM_SSL3_PRE_MASTER_KEY_GEN, "CKM_SSL3_PRE_MASTER_KEY_GEN" },
    { CKM_SSL3_MASTER_KEY_DERIVE, "CKM_SSL3_MASTER_KEY_DERIVE" },
    { CKM_SSL3_KEY_AND_MAC_DERIVE, "CKM_SSL3_KEY_AND_MAC_DERIVE" },
    { CKM_SSL3_MASTER_KEY_DERIVE_DH, "CKM_SSL3_MASTER_KEY_DERIVE_DH" },
    { CKM_TLS_PRE_MASTER_KEY_GEN, "CKM_TLS_PRE_MASTER_KEY_GEN" },
    { CKM_TLS_MASTER_KEY_DERIVE, "CKM_TLS_MASTER_KEY_DERIVE" },
    { CKM_TLS_KEY_AND_MAC_DERIVE, "CKM_TLS_KEY_AND_MAC_DERIVE" },
    { CKM_TLS_MASTER_KEY_DERIVE_DH, "CKM_TLS_MASTER_KEY_DERIVE_DH" },
    { CKM_TLS_PRF, "CKM_TLS_PRF" },
    { CKM_SSL3_MD5_MAC, "CKM_SSL3_MD5_MAC" },
    { CKM_SSL3_SHA1_MAC, "CKM_SSL3_SHA1_MAC" },
    { CKM_MD5_KEY_DERIVATION, "CKM_MD5_KEY_DERIVATION" },
    { CKM_MD2_KEY_DERIVATION, "CKM_MD2_KEY_DERIVATION" },
    { CKM_SHA1_KEY_DERIVATION, "CKM_SHA1_KEY_DERIVATION" },
    { CKM_SHA256_KEY_DERIVATION, "CKM_SHA256_KEY_DERIVATION" },
    { CKM_SHA384_KEY_DERIVATION, "CKM_SHA384_KEY_DERIVATION" },
    { CKM_SHA512_KEY_DERIVATION, "CKM_SHA512_KEY_DERIVATION" },
    { CKM_SHA224_KEY_DERIVATION, "CKM_SHA224_KEY_DERIVATION" },
    { CKM_SHA3_256_KEY_DERIVATION, "CKM_SHA3_256_KEY_DERIVATION" },
    { CKM_SHA3_224_KEY_DERIVATION, "CKM_SHA3_224_KEY_DERIVATION" },
    { CKM_SHA3_384_KEY_DERIVATION, "CKM_SHA3_384_KEY_DERIVATION" },
    { CKM_SHA3_512_KEY_DERIVATION, "CKM_SHA3_512_KEY_DERIVATION" },
    { CKM_SHAKE_128_KEY_DERIVATION, "CKM_SHAKE_128_KEY_DERIVATION" },
    { CKM_SHAKE_256_KEY_DERIVATION, "CKM_SHAKE_256_KEY_DERIVATION" },
    { CKM_PKCS5_PBKD2, "CKM_PKCS5_PBKD2" },
    { CKM_SP800_108_COUNTER_KDF, "CKM_SP800_108_COUNTER_KDF" },
    { CKM_SP800_108_FEEDBACK_KDF, "CKM_SP800_108_FEEDBACK_KDF" },
    { CKM_SP800_108_DOUBLE_PIPELINE_KDF, "CKM_SP800_108_DOUBLE_PIPELINE_KDF" },
    { CKM_EC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN" },
    { CKM_ECDSA, "CKM_ECDSA" },
    { CKM_ECDSA_SHA1, "CKM_ECDSA_SHA1" },
    { CKM_ECDSA_SHA224, "CKM_ECDSA_SHA224" },
    { CKM_ECDSA_SHA256, "CKM_ECDSA_SHA256" },
    { CKM_ECDSA_SHA384, "CKM_ECDSA_SHA384" },
    { CKM_ECDSA_SHA512, "CKM_ECDSA_SHA512" },
    { CKM_ECDSA_SHA3_224, "CKM_ECDSA_SHA3_224" },
    { CKM_ECDSA_SHA3_256, "CKM_ECDSA_SHA3_256" },
    { CKM_ECDSA_SHA3_384, "CKM_ECDSA_SHA3_384" },
    { CKM_ECDSA_SHA3_512, "CKM_ECDSA_SHA3_512" },
    { CKM_EC_KEY_PAIR_GEN_W_EXTRA_BITS, "CKM_EC_KEY_PAIR_GEN_W_EXTRA_BITS" },
    { CKM_ECDH1_DERIVE, "CKM_ECDH1_DERIVE" },
    { CKM_ECDH1_COFACTOR_DERIVE, "CKM_ECDH1_COFACTOR_DERIVE" },
    { CKM_ECMQV_DERIVE, "CKM_ECMQV_DERIVE" },
    { CKM_ECDH_AES_KEY_WRAP, "CKM_ECDH_AES_KEY_WRAP" },
    { CKM_RSA_AES_KEY_WRAP, "CKM_RSA_AES_KEY_WRAP" },
    { CKM_EC_EDWARDS_KEY_PAIR_GEN, "CKM_EC_EDWARDS_KEY_PAIR_GEN" },
    { CKM_EC_MONTGOMERY_KEY_PAIR_GEN, "CKM_EC_MONTGOMERY_KEY_PAIR_GEN" },
    { CKM_EDDSA, "CKM_EDDSA" },
    { CKM_AES_KEY_GEN, "CKM_AES_KEY_GEN" },
    { CKM_AES_ECB, "CKM_AES_ECB" },
    { CKM_AES_CBC, "CKM_AES_CBC" },
    { CKM_AES_MAC, "CKM_AES_MAC" },
    { CKM_AES_MAC_GENERAL, "CKM_AES_MAC_GENERAL" },
    { CKM_AES_CBC_PAD, "CKM_AES_CBC_PAD" },
    { CKM_AES_CTR, "CKM_AES_CTR" },
    { CKM_AES_GCM, "CKM_AES_GCM" },
    { CKM_AES_CCM, "CKM_AES_CCM" },
    { CKM_AES_CTS, "CKM_AES_CTS" },
    { CKM_AES_CMAC, "CKM_AES_CMAC" },
    { CKM_AES_CMAC_GENERAL, "CKM_AES_CMAC_GENERAL" },
    { CKM_AES_XCBC_MAC, "CKM_AES_XCBC_MAC" },
    { CKM_AES_XCBC_MAC_96, "CKM_AES_XCBC_MAC_96" },
    { CKM_AES_GMAC, "CKM_AES_GMAC" },
    { CKM_BLOWFISH_KEY_GEN, "CKM_BLOWFISH_KEY_GEN" },
    { CKM_BLOWFISH_CBC, "CKM_BLOWFISH_CBC" },
    { CKM_TWOFISH_KEY_GEN, "CKM_TWOFISH_KEY_GEN" },
    { CKM_TWOFISH_CBC, "CKM_TWOFISH_CBC" },
    { CKM_BLOWFISH_CBC_PAD, "CKM_BLOWFISH_CBC_PAD" },
    { CKM_TWOFISH_CBC_PAD, "CKM_TWOFISH_CBC_PAD" },
    { CKM_DES_ECB_ENCRYPT_DATA, "CKM_DES_ECB_ENCRYPT_DATA" },
    { CKM_DES_CBC_ENCRYPT_DATA, "CKM_DES_CBC_ENCRYPT_DATA" },
    { CKM_DES3_ECB_ENCRYPT_DATA, "CKM_DES3_ECB_ENCRYPT_DATA" },
    { CKM_DES3_CBC_ENCRYPT_DATA, "CKM_DES3_CBC_ENCRYPT_DATA" },
    { CKM_AES_ECB_ENCRYPT_DATA, "CKM_AES_ECB_ENCRYPT_DATA" },
    { CKM_AES_CBC_ENCRYPT_DATA, "CKM_AES_CBC_ENCRYPT_DATA" },
    { CKM_GOSTR3410_KEY_PAIR_GEN, "CKM_GOSTR3410_KEY_PAIR_GEN" },
    { CKM_GOSTR3410, "CKM_GOSTR3410" },
    { CKM_GOSTR3410_WITH_GOSTR3411, "CKM_GOSTR3410_WITH_GOSTR3411" },
    { CKM_GOSTR3410_KEY_WRAP, "CKM_GOSTR3410_KEY_WRAP" },
    { CKM_GOSTR3410_DERIVE, "CKM_GOSTR3410_DERIVE" },
    { CKM_GOSTR3411, "CKM_GOSTR3411" },
    { CKM_GOSTR3411_HMAC, "CKM_GOSTR3411_HMAC" },
    { CKM_GOST28147_KEY_GEN, "CKM_GOST28147_KEY_GEN" },
    { CKM_GOST28147_ECB, "CKM_GOST28147_ECB" },
    { CKM_GOST28147, "CKM_GOST28147" },
    { CKM_GOST28147_MAC, "CKM_GOST28147_MAC" },
    { CKM_GOST28147_KEY_WRAP, "CKM_GOST28147_KEY_WRAP" },
    { CKM_CHACHA20_KEY_GEN, "CKM_CHACHA20_KEY_GEN" },
    { CKM_CHACHA20, "CKM_CHACHA20" },
    { CKM_POLY1305_KEY_GEN, "CKM_POLY1305_KEY_GEN" },
    { CKM_POLY1305, "CKM_POLY1305" },
    { CKM_DSA_PARAMETER_GEN, "CKM_DSA_PARAMETER_GEN" },
    { CKM_DH_PKCS_PARAMETER_GEN, "CKM_DH_PKCS_PARAMETER_GEN" },
    { CKM_X9_42_DH_PARAMETER_GEN, "CKM_X9_42_DH_PARAMETER_GEN" },
    { CKM_DSA_PROBABILISTIC_PARAMETER_GEN, "CKM_DSA_PROBABILISTIC_PARAMETER_GEN" },
    { CKM_DSA_SHAWE_TAYLOR_PARAMETER_GEN, "CKM_DSA_SHAWE_TAYLOR_PARAMETER_GEN" },
    { CKM_DSA_FIPS_G_GEN, "CKM_DSA_FIPS_G_GEN" },
    { CKM_AES_OFB, "CKM_AES_OFB" },
    { CKM_AES_CFB64, "CKM_AES_CFB64" },
    { CKM_AES_CFB8, "CKM_AES_CFB8" },
    { CKM_AES_CFB128, "CKM_AES_CFB128" },
    { CKM_AES_CFB1, "CKM_AES_CFB1" },
    { CKM_AES_KEY_WRAP, "CKM_AES_KEY_WRAP" },
    { CKM_AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD" },
    { CKM_AES_KEY_WRAP_KWP, "CKM_AES_KEY_WRAP_KWP" },
    { CKM_RSA_PKCS_TPM_1_1, "CKM_RSA_PKCS_TPM_1_1" },
    { CKM_RSA_PKCS_OAEP_TPM_1_1, "CKM_RSA_PKCS_OAEP_TPM_1_1" },
    { CKM_SHA_1_KEY_GEN, "CKM_SHA_1_KEY_GEN" },
    { CKM_SHA224_KEY_GEN, "CKM_SHA224_KEY_GEN" },
    { CKM_SHA256_KEY_GEN, "CKM_SHA256_KEY_GEN" },
    { CKM_SHA384_KEY_GEN, "CKM_SHA384_KEY_GEN" },
    { CKM_SHA512_KEY_GEN, "CKM_SHA512_KEY_GEN" },
    { CKM_SHA512_224_KEY_GEN, "CKM_SHA512_224_KEY_GEN" },
    { CKM_SHA512_256_KEY_GEN, "CKM_SHA512_256_KEY_GEN" },
    { CKM_SHA512_T_KEY_GEN, "CKM_SHA512_T_KEY_GEN" },
    { CKM_NULL, "CKM_NULL" },
    { CKM_BLAKE2B_160, "CKM_BLAKE2B_160" },
    { CKM_BLAKE2B_160_HMAC, "CKM_BLAKE2B_160_HMAC" },
    { CKM_BLAKE2B_160_HMAC_GENERAL, "CKM_BLAKE2B_160_HMAC_GENERAL" },
    { CKM_BLAKE2B_160_KEY_DERIVE, "CKM_BLAKE2B_160_KEY_DERIVE" },
    { CKM_BLAKE2B_160_KEY_GEN, "CKM_BLAKE2B_160_KEY_GEN" },
    { CKM_BLAKE2B_256, "CKM_BLAKE2B_256" },
    { CKM_BLAKE2B_256_HMAC, "CKM_BLAKE2B_256_HMAC" },
    { CKM_BLAKE2B_256_HMAC_GENERAL, "CKM_BLAKE2B_256_HMAC_GENERAL" },
    { CKM_BLAKE2B_256_KEY_DERIVE, "CKM_BLAKE2B_256_KEY_DERIVE" },
    { CKM_BLAKE2B_256_KEY_GEN, "CKM_BLAKE2B_256_KEY_GEN" },
    { CKM_BLAKE2B_384, "CKM_BLAKE2B_384" },
    { CKM_BLAKE2B_384_HMAC, "CKM_BLAKE2B_384_HMAC" },
    { CKM_BLAKE2B_384_HMAC_GENERAL, "CKM_BLAKE2B_384_HMAC_GENERAL" },
    { CKM_BLAKE2B_384_KEY_DERIVE, "CKM_BLAKE2B_384_KEY_DERIVE" },
    { CKM_BLAKE2B_384_KEY_GEN, "CKM_BLAKE2B_384_KEY_GEN" },
    { CKM_BLAKE2B_512, "CKM_BLAKE2B_512" },
    { CKM_BLAKE2B_512_HMAC, "CKM_BLAKE2B_512_HMAC" },
    { CKM_BLAKE2B_512_HMAC_GENERAL, "CKM_BLAKE2B_512_HMAC_GENERAL" },
    { CKM_BLAKE2B_512_KEY_DERIVE, "CKM_BLAKE2B_512_KEY_DERIVE" },
    { CKM_BLAKE2B_512_KEY_GEN, "CKM_BLAKE2B_512_KEY_GEN" },
    { CKM_SALSA20, "CKM_SALSA20" },
    { CKM_CHACHA20_POLY1305, "CKM_CHACHA20_POLY1305" },
    { CKM_SALSA20_POLY1305, "CKM_SALSA20_POLY1305" },
    { CKM_X3DH_INITIALIZE, "CKM_X3DH_INITIALIZE" },
    { CKM_X3DH_RESPOND, "CKM_X3DH_RESPOND" },
    { CKM_X2RATCHET_INITIALIZE, "CKM_X2RATCHET_INITIALIZE" },
    { CKM_X2RATCHET_RESPOND, "CKM_X2RATCHET_RESPOND" },
    { CKM_X2RATCHET_ENCRYPT, "CKM_X2RATCHET_ENCRYPT" },
    { CKM_X2RATCHET_DECRYPT, "CKM_X2RATCHET_DECRYPT" },
    { CKM_XEDDSA, "CKM_XEDDSA" },
    { CKM_HKDF_DERIVE, "CKM_HKDF_DERIVE" },
    { CKM_HKDF_DATA, "CKM_HKDF_DATA" },
    { CKM_HKDF_KEY_GEN, "CKM_HKDF_KEY_GEN" },
    { CKM_SALSA20_KEY_GEN, "CKM_SALSA20_KEY_GEN" },
    { CKM_KH_BIP340_SCHNORR, "CKM_KH_BIP340_SCHNORR" },
    { CKM_KH_ECDSA_RECOVERABLE, "CKM_KH_ECDSA_RECOVERABLE" },
};

const char *kh_mech_name(CK_MECHANISM_TYPE mech)
{
    static _Thread_local char buf[32];

    return kh_name_find(kh_mech_names, sizeof kh_mech_names / sizeof kh_mech_names[0], mech,
                        "CKM_", buf, sizeof buf);
}

/* ---- tokens ------------------------------------------------------------ */

void kh_p11_unpad(char *out, const CK_UTF8CHAR *in, size_t inlen)
{
    size_t n = inlen;
    while (n > 0 && (in[n - 1] == ' ' || in[n - 1] == '\0'))
        n--;
    memcpy(out, in, n);
    out[n] = '\0';
}

bool kh_p11_pad(CK_UTF8CHAR *out, size_t outlen, const char *str)
{
    size_t n = strlen(str);
    memset(out, ' ', outlen);
    if (n > outlen)
        return false;
    memcpy(out, str, n);
    return true;
}

CK_RV kh_p11_tokens(struct kh_p11 *p, struct kh_p11_token **tokens, size_t *n)
{
    CK_SLOT_ID *slots = NULL;
    CK_ULONG count = 0;
    struct kh_p11_token *out = NULL;
    size_t used = 0;
    CK_RV rv;

    *tokens = NULL;
    *n = 0;
    /* The slot count may change between the two calls: retry then. */
    for (;;) {
        rv = p->f->C_GetSlotList(CK_TRUE, NULL, &count);
        if (rv != CKR_OK)
            return rv;
        free(slots);
        slots = calloc(count ? count : 1, sizeof *slots);
        if (!slots)
            return CKR_HOST_MEMORY;
        rv = p->f->C_GetSlotList(CK_TRUE, slots, &count);
        if (rv == CKR_BUFFER_TOO_SMALL)
            continue;
        if (rv != CKR_OK)
            goto out;
        break;
    }
    out = calloc(count ? count : 1, sizeof *out);
    if (!out) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    for (CK_ULONG i = 0; i < count; i++) {
        struct kh_p11_token *t = &out[used];
        rv = p->f->C_GetTokenInfo(slots[i], &t->info);
        if (rv == CKR_TOKEN_NOT_PRESENT)
            continue;
        if (rv != CKR_OK)
            goto out;
        t->slot = slots[i];
        kh_p11_unpad(t->label, t->info.label, sizeof t->info.label);
        kh_p11_unpad(t->manufacturer, t->info.manufacturerID, sizeof t->info.manufacturerID);
        kh_p11_unpad(t->model, t->info.model, sizeof t->info.model);
        kh_p11_unpad(t->serial, t->info.serialNumber, sizeof t->info.serialNumber);
        used++;
    }
    *tokens = out;
    *n = used;
    out = NULL;
    rv = CKR_OK;
out:
    free(out);
    free(slots);
    return rv;
}

CK_RV kh_p11_find_token(struct kh_p11 *p, const char *label, struct kh_p11_token *out)
{
    struct kh_p11_token *toks;
    size_t n;
    CK_RV rv = kh_p11_tokens(p, &toks, &n);

    if (rv != CKR_OK)
        return rv;
    rv = CKR_TOKEN_NOT_PRESENT;
    for (size_t i = 0; i < n; i++) {
        if ((toks[i].info.flags & CKF_TOKEN_INITIALIZED) && strcmp(toks[i].label, label) == 0) {
            *out = toks[i];
            rv = CKR_OK;
            break;
        }
    }
    free(toks);
    return rv;
}

CK_RV kh_p11_free_slot(struct kh_p11 *p, struct kh_p11_token *out)
{
    struct kh_p11_token *toks;
    size_t n;
    CK_RV rv = kh_p11_tokens(p, &toks, &n);

    if (rv != CKR_OK)
        return rv;
    rv = CKR_TOKEN_NOT_PRESENT;
    for (size_t i = 0; i < n; i++) {
        if (!(toks[i].info.flags & CKF_TOKEN_INITIALIZED)) {
            *out = toks[i];
            rv = CKR_OK;
            break;
        }
    }
    free(toks);
    return rv;
}

CK_RV kh_p11_login(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_USER_TYPE user, const char *pin)
{
    CK_RV rv = p->f->C_Login(s, user, (CK_UTF8CHAR_PTR)pin, pin ? (CK_ULONG)strlen(pin) : 0);
    return rv == CKR_USER_ALREADY_LOGGED_IN ? CKR_OK : rv;
}

/* ---- PINs -------------------------------------------------------------- */

void kh_pin_free(char *pin)
{
    if (pin) {
        OPENSSL_cleanse(pin, strlen(pin));
        free(pin);
    }
}

/* Reads one line (without its line ending) from f into a malloc'd string. */
static int kh_read_line(char **out, FILE *f)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, f);

    if (n < 0) {
        if (line) {
            OPENSSL_cleanse(line, cap);
            free(line);
        }
        return -1;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    /* getline's buffer may be larger than the PIN: copy it out exactly. */
    *out = strdup(line);
    OPENSSL_cleanse(line, cap);
    free(line);
    return *out ? 0 : -1;
}

/* Prompts on the terminal tty (already open) with echo off. */
static int kh_prompt_tty(char **out, FILE *tty, const char *prompt)
{
    struct termios old, noecho;
    int fd = fileno(tty), rc;

    if (tcgetattr(fd, &old) != 0)
        return -1;
    noecho = old;
    noecho.c_lflag &= (tcflag_t)~(ECHO | ECHONL);
    noecho.c_lflag |= ICANON;
    fprintf(tty, "%s", prompt);
    fflush(tty);
    if (tcsetattr(fd, TCSAFLUSH, &noecho) != 0)
        return -1;
    rc = kh_read_line(out, tty);
    tcsetattr(fd, TCSAFLUSH, &old);
    fputc('\n', tty);
    fflush(tty);
    return rc;
}

int kh_pin_get(char **pin, const char *env, const char *file, const char *prompt,
               enum kh_pin_prompt mode, char *err, size_t errlen)
{
    const char *ev = env ? getenv(env) : NULL;
    char *a = NULL, *b = NULL;
    FILE *f, *tty;
    int rc = -1;

    *pin = NULL;
    if (file) {
        bool is_stdin = strcmp(file, "-") == 0;
        f = is_stdin ? stdin : fopen(file, "re");
        if (!f) {
            snprintf(err, errlen, "cannot open PIN file %s: %s", file, strerror(errno));
            return -1;
        }
        rc = kh_read_line(&a, f);
        if (!is_stdin)
            fclose(f);
        if (rc != 0) {
            snprintf(err, errlen, "cannot read a PIN from %s", file);
            return -1;
        }
        goto check;
    }
    if (ev) {
        a = strdup(ev);
        if (!a) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        goto check;
    }
    if (mode == KH_PIN_NO_PROMPT)
        return 1;
    tty = fopen("/dev/tty", "r+e");
    if (!tty)
        return 1;
    rc = kh_prompt_tty(&a, tty, prompt);
    if (rc == 0 && mode == KH_PIN_PROMPT_TWICE) {
        rc = kh_prompt_tty(&b, tty, "Repeat: ");
        if (rc == 0 && strcmp(a, b) != 0) {
            snprintf(err, errlen, "the PINs do not match");
            kh_pin_free(a);
            kh_pin_free(b);
            fclose(tty);
            return -1;
        }
        kh_pin_free(b);
    }
    fclose(tty);
    if (rc != 0) {
        snprintf(err, errlen, "cannot read a PIN from the terminal");
        kh_pin_free(a);
        return -1;
    }
check:
    if (a[0] == '\0') {
        snprintf(err, errlen, "empty PIN");
        kh_pin_free(a);
        return -1;
    }
    *pin = a;
    return 0;
}

int kh_pin_from_uri(char **pin, const struct kh_p11_uri *u, char *err, size_t errlen)
{
    const char *src = u->pin_source, *path;

    *pin = NULL;
    if (u->pin_value && src) {
        snprintf(err, errlen, "the URI has both pin-value and pin-source");
        return -1;
    }
    if (u->pin_value) {
        if (u->pin_value[0] == '\0') {
            snprintf(err, errlen, "empty PIN in the URI's pin-value");
            return -1;
        }
        *pin = strdup(u->pin_value);
        if (!*pin) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        return 0;
    }
    if (!src)
        return 1;
    if (src[0] == '|' || strcmp(src, "builtin-dialog") == 0) {
        snprintf(err, errlen, "unsupported pin-source (only a file: URI or a path)");
        return -1;
    }
    path = src;
    if (strncmp(src, "file:", 5) == 0) {
        path = src + 5;
        if (strncmp(path, "//", 2) == 0) {
            /* file://host/path: only an empty host or localhost is local. */
            const char *slash = strchr(path + 2, '/');
            size_t hlen = slash ? (size_t)(slash - path - 2) : strlen(path + 2);
            if (!slash || (hlen != 0 && !(hlen == 9 && memcmp(path + 2, "localhost", 9) == 0))) {
                snprintf(err, errlen, "pin-source file: URI names a remote host or no path");
                return -1;
            }
            path = slash;
        }
    }
    if (path[0] == '\0' || strcmp(path, "-") == 0) {
        snprintf(err, errlen, "pin-source names no file");
        return -1;
    }
    return kh_pin_get(pin, NULL, path, NULL, KH_PIN_NO_PROMPT, err, errlen);
}

/* ---- objects ----------------------------------------------------------- */

CK_RV kh_p11_find(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl,
                  CK_ULONG ntmpl, CK_OBJECT_HANDLE **objs, CK_ULONG *count)
{
    CK_OBJECT_HANDLE *out = NULL;
    CK_ULONG used = 0, cap = 0, got;
    CK_RV rv, rv2;

    *objs = NULL;
    *count = 0;
    rv = p->f->C_FindObjectsInit(s, tmpl, ntmpl);
    if (rv != CKR_OK)
        return rv;
    for (;;) {
        if (cap - used < 64) {
            CK_OBJECT_HANDLE *np = realloc(out, (cap + 256) * sizeof *out);
            if (!np) {
                rv = CKR_HOST_MEMORY;
                break;
            }
            out = np;
            cap += 256;
        }
        got = 0;
        rv = p->f->C_FindObjects(s, out + used, 64, &got);
        if (rv != CKR_OK || got == 0)
            break;
        used += got;
    }
    rv2 = p->f->C_FindObjectsFinal(s);
    if (rv == CKR_OK)
        rv = rv2;
    if (rv != CKR_OK || used == 0) {
        free(out);
        return rv;
    }
    *objs = out;
    *count = used;
    return CKR_OK;
}

CK_RV kh_p11_get_attr(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                      CK_ATTRIBUTE_TYPE type, uint8_t **val, CK_ULONG *len)
{
    CK_ATTRIBUTE a = { type, NULL, 0 };
    CK_RV rv;

    *val = NULL;
    *len = 0;
    rv = p->f->C_GetAttributeValue(s, obj, &a, 1);
    if (rv != CKR_OK)
        return rv;
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
        return CKR_ATTRIBUTE_TYPE_INVALID;
    a.pValue = malloc(a.ulValueLen + 1);
    if (!a.pValue)
        return CKR_HOST_MEMORY;
    rv = p->f->C_GetAttributeValue(s, obj, &a, 1);
    if (rv != CKR_OK) {
        free(a.pValue);
        return rv;
    }
    ((uint8_t *)a.pValue)[a.ulValueLen] = 0;
    *val = a.pValue;
    *len = a.ulValueLen;
    return CKR_OK;
}

CK_RV kh_p11_get_ulong(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                       CK_ATTRIBUTE_TYPE type, CK_ULONG *v)
{
    CK_ATTRIBUTE a = { type, v, sizeof *v };
    CK_RV rv = p->f->C_GetAttributeValue(s, obj, &a, 1);

    if (rv == CKR_OK && a.ulValueLen != sizeof *v)
        rv = CKR_ATTRIBUTE_VALUE_INVALID;
    return rv;
}

CK_RV kh_p11_sign(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_MECHANISM *mech,
                  CK_OBJECT_HANDLE key, const uint8_t *data, size_t len,
                  uint8_t **sig, size_t *sig_len)
{
    CK_ULONG n = 0;
    uint8_t *buf = NULL;
    CK_RV rv;

    *sig = NULL;
    *sig_len = 0;
    rv = p->f->C_SignInit(s, mech, key);
    if (rv != CKR_OK)
        return rv;
    /* Length query: the operation stays active on success. */
    rv = p->f->C_Sign(s, (CK_BYTE_PTR)data, (CK_ULONG)len, NULL, &n);
    /* A second CKR_BUFFER_TOO_SMALL means the module's length answer moved:
     * one more try with the new length, then give up (ending the operation). */
    for (int tries = 0; rv == CKR_OK && tries < 2; tries++) {
        uint8_t *nb = realloc(buf, n ? n : 1);
        if (!nb) {
            rv = CKR_HOST_MEMORY;
            break;
        }
        buf = nb;
        rv = p->f->C_Sign(s, (CK_BYTE_PTR)data, (CK_ULONG)len, buf, &n);
        if (rv == CKR_OK) {
            *sig = buf;
            *sig_len = n;
            return CKR_OK;
        }
        if (rv == CKR_BUFFER_TOO_SMALL)
            rv = CKR_OK;   /* n now holds the size the module wants */
        else
            break;
    }
    if (rv == CKR_OK)
        rv = CKR_BUFFER_TOO_SMALL;
    free(buf);
    return rv;
}

void kh_p11_key_clear(struct kh_p11_key *key)
{
    free(key->label);
    free(key->id);
    memset(key, 0, sizeof *key);
}

CK_RV kh_p11_describe(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                      struct kh_p11_key *key)
{
    uint8_t *val = NULL;
    CK_ULONG len = 0;
    CK_RV rv;

    memset(key, 0, sizeof *key);
    key->handle = obj;
    key->key_type = CK_UNAVAILABLE_INFORMATION;
    rv = kh_p11_get_ulong(p, s, obj, CKA_CLASS, &key->cls);
    if (rv != CKR_OK)
        goto fail;
    rv = kh_p11_get_attr(p, s, obj, CKA_LABEL, &val, &len);
    if (rv == CKR_OK) {
        key->label = (char *)val;
    } else if (rv == CKR_ATTRIBUTE_TYPE_INVALID) {
        key->label = strdup("");
        if (!key->label) {
            rv = CKR_HOST_MEMORY;
            goto fail;
        }
    } else {
        goto fail;
    }
    rv = kh_p11_get_attr(p, s, obj, CKA_ID, &val, &len);
    if (rv == CKR_OK) {
        key->id = val;
        key->id_len = len;
    } else if (rv != CKR_ATTRIBUTE_TYPE_INVALID) {
        goto fail;
    }
    if (key->cls != CKO_PUBLIC_KEY && key->cls != CKO_PRIVATE_KEY)
        return CKR_OK;

    rv = kh_p11_get_ulong(p, s, obj, CKA_KEY_TYPE, &key->key_type);
    if (rv != CKR_OK)
        goto fail;
    if (key->key_type == CKK_EC || key->key_type == CKK_EC_EDWARDS) {
        rv = kh_p11_get_attr(p, s, obj, CKA_EC_PARAMS, &val, &len);
        if (rv == CKR_OK) {
            key->kind = kh_keykind_from_ec_params(val, len);
            free(val);
        } else if (rv != CKR_ATTRIBUTE_TYPE_INVALID) {
            goto fail;
        }
    } else if (key->key_type == CKK_RSA) {
        key->kind = KH_KEY_RSA;
        rv = kh_p11_get_ulong(p, s, obj, CKA_MODULUS_BITS, &key->rsa_bits);
        if (rv != CKR_OK) {
            /* Private keys need not carry CKA_MODULUS_BITS: count bits. */
            struct kh_pubkey pub = { 0 };
            pub.kind = KH_KEY_RSA;
            rv = kh_p11_get_attr(p, s, obj, CKA_MODULUS, &val, &len);
            if (rv == CKR_OK) {
                uint8_t one = 1;
                if (kh_pubkey_set_rsa(&pub, val, len, &one, 1))
                    key->rsa_bits = (CK_ULONG)kh_pubkey_rsa_bits(&pub);
                kh_pubkey_clear(&pub);
                free(val);
            }
        }
    }
    rv = kh_p11_get_ulong(p, s, obj, CKA_KH_BACKEND, &key->backend);
    key->has_backend = rv == CKR_OK;
    return CKR_OK;

fail:
    kh_p11_key_clear(key);
    return rv;
}

const char *kh_p11_key_type_name(const struct kh_p11_key *key, char *buf, size_t bufsz)
{
    if (key->kind == KH_KEY_RSA) {
        snprintf(buf, bufsz, "rsa%lu", key->rsa_bits);
        return buf;
    }
    return kh_keykind_name(key->kind);
}

const char *kh_p11_backend_name(CK_ULONG backend)
{
    switch (backend) {
    case CKV_KH_BACKEND_VAULT: return "vault";
    case CKV_KH_BACKEND_TPM: return "tpm";
    case CKV_KH_BACKEND_REMOTE: return "remote";
    }
    return NULL;
}

const char *kh_p11_class_name(CK_OBJECT_CLASS cls)
{
    switch (cls) {
    case CKO_PRIVATE_KEY: return "private";
    case CKO_PUBLIC_KEY: return "public";
    case CKO_CERTIFICATE: return "cert";
    case CKO_SECRET_KEY: return "secret-key";
    case CKO_DATA: return "data";
    }
    return "unknown";
}

CK_RV kh_p11_read_pubkey(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                         enum kh_keykind kind, struct kh_pubkey *pub)
{
    uint8_t *a = NULL, *b = NULL;
    CK_ULONG alen = 0, blen = 0;
    CK_RV rv;

    memset(pub, 0, sizeof *pub);
    pub->kind = kind;
    if (kind == KH_KEY_RSA) {
        rv = kh_p11_get_attr(p, s, obj, CKA_MODULUS, &a, &alen);
        if (rv == CKR_OK)
            rv = kh_p11_get_attr(p, s, obj, CKA_PUBLIC_EXPONENT, &b, &blen);
        if (rv == CKR_OK && !kh_pubkey_set_rsa(pub, a, alen, b, blen))
            rv = CKR_ATTRIBUTE_VALUE_INVALID;
    } else if (kind != KH_KEY_UNKNOWN) {
        rv = kh_p11_get_attr(p, s, obj, CKA_EC_POINT, &a, &alen);
        if (rv == CKR_OK && !kh_pubkey_set_ec_point(pub, a, alen))
            rv = CKR_ATTRIBUTE_VALUE_INVALID;
    } else {
        rv = CKR_KEY_TYPE_INCONSISTENT;
    }
    free(a);
    free(b);
    if (rv != CKR_OK)
        kh_pubkey_clear(pub);
    return rv;
}

/* ---- PKCS#11 URIs ------------------------------------------------------ */

static bool kh_uri_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

/* Appends name=value (value percent-encoded, all bytes when force) to a
 * buffer of size cap that holds used bytes. */
static bool kh_uri_append(char **buf, size_t *used, size_t *cap, const char *name,
                          const uint8_t *val, size_t len, bool force)
{
    size_t need = strlen(name) + 2 + 3 * len + 1;
    static const char digits[] = "0123456789ABCDEF";

    if (*used + need > *cap) {
        size_t ncap = (*cap + need) * 2;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return false;
        *buf = nb;
        *cap = ncap;
    }
    *used += (size_t)sprintf(*buf + *used, "%s%s=", (*buf)[*used - 1] == ':' ? "" : ";", name);
    for (size_t i = 0; i < len; i++) {
        if (!force && kh_uri_unreserved(val[i])) {
            (*buf)[(*used)++] = (char)val[i];
        } else {
            (*buf)[(*used)++] = '%';
            (*buf)[(*used)++] = digits[val[i] >> 4];
            (*buf)[(*used)++] = digits[val[i] & 0xf];
        }
    }
    (*buf)[*used] = '\0';
    return true;
}

char *kh_p11_uri_build(const struct kh_p11_token *tok, const char *label,
                       const uint8_t *id, size_t id_len, CK_OBJECT_CLASS cls)
{
    size_t cap = 256, used = 7;
    char *buf = malloc(cap);
    bool ok;

    if (!buf)
        return NULL;
    memcpy(buf, "pkcs11:", 8);
    ok = kh_uri_append(&buf, &used, &cap, "token", (const uint8_t *)tok->label, strlen(tok->label), false) &&
         kh_uri_append(&buf, &used, &cap, "manufacturer", (const uint8_t *)tok->manufacturer,
                       strlen(tok->manufacturer), false) &&
         kh_uri_append(&buf, &used, &cap, "serial", (const uint8_t *)tok->serial, strlen(tok->serial), false) &&
         kh_uri_append(&buf, &used, &cap, "model", (const uint8_t *)tok->model, strlen(tok->model), false);
    if (ok && label)
        ok = kh_uri_append(&buf, &used, &cap, "object", (const uint8_t *)label, strlen(label), false);
    if (ok && id)
        ok = kh_uri_append(&buf, &used, &cap, "id", id, id_len, true);
    if (ok && cls != CK_UNAVAILABLE_INFORMATION) {
        const char *t = kh_p11_class_name(cls);
        ok = kh_uri_append(&buf, &used, &cap, "type", (const uint8_t *)t, strlen(t), false);
    }
    if (!ok) {
        free(buf);
        return NULL;
    }
    return buf;
}

void kh_p11_uri_clear(struct kh_p11_uri *u)
{
    free(u->token);
    free(u->manufacturer);
    free(u->serial);
    free(u->model);
    free(u->object);
    free(u->id);
    kh_pin_free(u->pin_value);
    free(u->pin_source);
    free(u->module_path);
    memset(u, 0, sizeof *u);
}

/* Percent-decodes s[0..len) into a malloc'd buffer (NUL-terminated). */
static uint8_t *kh_uri_decode(const char *s, size_t len, size_t *outlen)
{
    uint8_t *out = malloc(len + 1);
    size_t o = 0;

    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            int hi, lo;
            if (i + 2 >= len) {
                free(out);
                return NULL;
            }
            hi = s[i + 1] >= '0' && s[i + 1] <= '9' ? s[i + 1] - '0' :
                 (s[i + 1] | 0x20) >= 'a' && (s[i + 1] | 0x20) <= 'f' ? (s[i + 1] | 0x20) - 'a' + 10 : -1;
            lo = s[i + 2] >= '0' && s[i + 2] <= '9' ? s[i + 2] - '0' :
                 (s[i + 2] | 0x20) >= 'a' && (s[i + 2] | 0x20) <= 'f' ? (s[i + 2] | 0x20) - 'a' + 10 : -1;
            if (hi < 0 || lo < 0) {
                free(out);
                return NULL;
            }
            out[o++] = (uint8_t)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = (uint8_t)s[i];
        }
    }
    out[o] = 0;
    *outlen = o;
    return out;
}

/* Stores a decoded string attribute, taking val; false (val freed) when the
 * attribute repeats or holds a NUL byte. */
static bool kh_uri_set_str(char **field, uint8_t *val, size_t len)
{
    if (*field || memchr(val, 0, len)) {
        OPENSSL_cleanse(val, len);
        free(val);
        return false;
    }
    *field = (char *)val;
    return true;
}

bool kh_p11_uri_parse(struct kh_p11_uri *u, const char *uri, char *err, size_t errlen)
{
    const char *path, *query, *end, *p;

    memset(u, 0, sizeof *u);
    if (strncmp(uri, "pkcs11:", 7) != 0) {
        snprintf(err, errlen, "not a PKCS#11 URI (must start with pkcs11:)");
        return false;
    }
    path = uri + 7;
    query = strchr(path, '?');
    end = query ? query : path + strlen(path);

    for (p = path; p < end;) {
        const char *sep = memchr(p, ';', (size_t)(end - p));
        const char *aend = sep ? sep : end;
        const char *eq = memchr(p, '=', (size_t)(aend - p));
        uint8_t *val;
        size_t vlen, nlen;
        bool ok = true;

        if (aend == p) {   /* empty attribute ("a=b;;c=d" or trailing ';') */
            p = aend + 1;
            continue;
        }
        if (!eq) {
            snprintf(err, errlen, "URI attribute without '=': %.*s", (int)(aend - p), p);
            goto fail;
        }
        nlen = (size_t)(eq - p);
        val = kh_uri_decode(eq + 1, (size_t)(aend - eq - 1), &vlen);
        if (!val) {
            snprintf(err, errlen, "bad percent-encoding in URI attribute %.*s", (int)nlen, p);
            goto fail;
        }
#define KH_ATTR_IS(s) (nlen == sizeof(s) - 1 && memcmp(p, s, nlen) == 0)
        /* Each branch takes val or frees it. */
        if (KH_ATTR_IS("token")) {
            ok = kh_uri_set_str(&u->token, val, vlen);
        } else if (KH_ATTR_IS("manufacturer")) {
            ok = kh_uri_set_str(&u->manufacturer, val, vlen);
        } else if (KH_ATTR_IS("serial")) {
            ok = kh_uri_set_str(&u->serial, val, vlen);
        } else if (KH_ATTR_IS("model")) {
            ok = kh_uri_set_str(&u->model, val, vlen);
        } else if (KH_ATTR_IS("object")) {
            ok = kh_uri_set_str(&u->object, val, vlen);
        } else if (KH_ATTR_IS("id")) {
            ok = !u->has_id;
            if (ok) {
                u->id = val;
                u->id_len = vlen;
                u->has_id = true;
            } else {
                free(val);
            }
        } else if (KH_ATTR_IS("type")) {
            static const struct { const char *name; CK_OBJECT_CLASS cls; } types[] = {
                { "private", CKO_PRIVATE_KEY }, { "public", CKO_PUBLIC_KEY },
                { "cert", CKO_CERTIFICATE }, { "secret-key", CKO_SECRET_KEY },
                { "data", CKO_DATA },
            };
            ok = false;
            for (size_t i = 0; !u->has_class && i < sizeof types / sizeof types[0]; i++) {
                if (strcmp((char *)val, types[i].name) == 0) {
                    u->cls = types[i].cls;
                    ok = true;
                }
            }
            u->has_class = u->has_class || ok;
            free(val);
        } else if (KH_ATTR_IS("slot-id")) {
            char *e;
            unsigned long v = strtoul((char *)val, &e, 10);
            ok = !u->has_slot_id && vlen > 0 && *e == '\0';
            u->slot_id = v;
            u->has_slot_id = ok;
            free(val);
        } else if (KH_ATTR_IS("library-manufacturer") || KH_ATTR_IS("library-description") ||
                   KH_ATTR_IS("library-version") || KH_ATTR_IS("slot-description") ||
                   KH_ATTR_IS("slot-manufacturer") || (nlen > 2 && memcmp(p, "x-", 2) == 0)) {
            free(val);   /* understood, not used for matching */
        } else {
            free(val);
            snprintf(err, errlen, "unknown URI attribute %.*s", (int)nlen, p);
            goto fail;
        }
        if (!ok) {
            snprintf(err, errlen, "bad or repeated URI attribute %.*s", (int)nlen, p);
            goto fail;
        }
#undef KH_ATTR_IS
        p = sep ? sep + 1 : end;
    }

    for (p = query ? query + 1 : NULL; p && *p;) {
        const char *sep = strchr(p, '&');
        const char *aend = sep ? sep : p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(aend - p));
        char **field = NULL;
        uint8_t *val;
        size_t vlen, nlen;

        if (eq) {
            nlen = (size_t)(eq - p);
            if (nlen == 9 && memcmp(p, "pin-value", 9) == 0)
                field = &u->pin_value;
            else if (nlen == 10 && memcmp(p, "pin-source", 10) == 0)
                field = &u->pin_source;
            else if (nlen == 11 && memcmp(p, "module-path", 11) == 0)
                field = &u->module_path;
        }
        if (field) {
            val = kh_uri_decode(eq + 1, (size_t)(aend - eq - 1), &vlen);
            if (!val || !kh_uri_set_str(field, val, vlen)) {
                snprintf(err, errlen, "bad or repeated URI query attribute %.*s", (int)nlen, p);
                goto fail;
            }
        }
        p = sep ? sep + 1 : aend;
    }
    return true;

fail:
    kh_p11_uri_clear(u);
    return false;
}

bool kh_p11_uri_match_token(const struct kh_p11_uri *u, const struct kh_p11_token *tok)
{
    if (u->token && strcmp(u->token, tok->label) != 0)
        return false;
    if (u->manufacturer && strcmp(u->manufacturer, tok->manufacturer) != 0)
        return false;
    if (u->serial && strcmp(u->serial, tok->serial) != 0)
        return false;
    if (u->model && strcmp(u->model, tok->model) != 0)
        return false;
    if (u->has_slot_id && u->slot_id != tok->slot)
        return false;
    return true;
}

void kh_p11_uri_template(const struct kh_p11_uri *u, CK_ATTRIBUTE tmpl[3], CK_ULONG *n,
                         CK_OBJECT_CLASS *cls_storage)
{
    *n = 0;
    if (u->object) {
        tmpl[*n].type = CKA_LABEL;
        tmpl[*n].pValue = u->object;
        tmpl[*n].ulValueLen = (CK_ULONG)strlen(u->object);
        (*n)++;
    }
    if (u->has_id) {
        tmpl[*n].type = CKA_ID;
        tmpl[*n].pValue = u->id;
        tmpl[*n].ulValueLen = (CK_ULONG)u->id_len;
        (*n)++;
    }
    if (u->has_class) {
        *cls_storage = u->cls;
        tmpl[*n].type = CKA_CLASS;
        tmpl[*n].pValue = cls_storage;
        tmpl[*n].ulValueLen = sizeof *cls_storage;
        (*n)++;
    }
}

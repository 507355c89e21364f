/*
 * p11load: shared helpers of the integration programs (see p11load.h).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "p11load.h"

#include <dlfcn.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

static const uint8_t p11l_oid_p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
static const uint8_t p11l_oid_secp256k1[] = { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a };
static const uint8_t p11l_oid_ed25519[] = { 0x06, 0x03, 0x2b, 0x65, 0x70 };

const char *p11l_rv_str(CK_RV rv)
{
    static const struct { CK_RV rv; const char *name; } names[] = {
#define P11L_RV(x) { x, #x }
        P11L_RV(CKR_OK),
        P11L_RV(CKR_CANCEL),
        P11L_RV(CKR_HOST_MEMORY),
        P11L_RV(CKR_SLOT_ID_INVALID),
        P11L_RV(CKR_GENERAL_ERROR),
        P11L_RV(CKR_FUNCTION_FAILED),
        P11L_RV(CKR_ARGUMENTS_BAD),
        P11L_RV(CKR_CANT_LOCK),
        P11L_RV(CKR_ATTRIBUTE_READ_ONLY),
        P11L_RV(CKR_ATTRIBUTE_SENSITIVE),
        P11L_RV(CKR_ATTRIBUTE_TYPE_INVALID),
        P11L_RV(CKR_ATTRIBUTE_VALUE_INVALID),
        P11L_RV(CKR_DATA_INVALID),
        P11L_RV(CKR_DATA_LEN_RANGE),
        P11L_RV(CKR_DEVICE_ERROR),
        P11L_RV(CKR_DEVICE_MEMORY),
        P11L_RV(CKR_DEVICE_REMOVED),
        P11L_RV(CKR_ENCRYPTED_DATA_INVALID),
        P11L_RV(CKR_FUNCTION_CANCELED),
        P11L_RV(CKR_FUNCTION_NOT_SUPPORTED),
        P11L_RV(CKR_KEY_HANDLE_INVALID),
        P11L_RV(CKR_KEY_SIZE_RANGE),
        P11L_RV(CKR_KEY_TYPE_INCONSISTENT),
        P11L_RV(CKR_KEY_FUNCTION_NOT_PERMITTED),
        P11L_RV(CKR_MECHANISM_INVALID),
        P11L_RV(CKR_MECHANISM_PARAM_INVALID),
        P11L_RV(CKR_OBJECT_HANDLE_INVALID),
        P11L_RV(CKR_OPERATION_ACTIVE),
        P11L_RV(CKR_OPERATION_NOT_INITIALIZED),
        P11L_RV(CKR_PIN_INCORRECT),
        P11L_RV(CKR_PIN_INVALID),
        P11L_RV(CKR_PIN_LEN_RANGE),
        P11L_RV(CKR_PIN_LOCKED),
        P11L_RV(CKR_SESSION_CLOSED),
        P11L_RV(CKR_SESSION_COUNT),
        P11L_RV(CKR_SESSION_HANDLE_INVALID),
        P11L_RV(CKR_SESSION_READ_ONLY),
        P11L_RV(CKR_SESSION_EXISTS),
        P11L_RV(CKR_SESSION_READ_WRITE_SO_EXISTS),
        P11L_RV(CKR_SIGNATURE_INVALID),
        P11L_RV(CKR_SIGNATURE_LEN_RANGE),
        P11L_RV(CKR_TEMPLATE_INCOMPLETE),
        P11L_RV(CKR_TEMPLATE_INCONSISTENT),
        P11L_RV(CKR_TOKEN_NOT_PRESENT),
        P11L_RV(CKR_TOKEN_NOT_RECOGNIZED),
        P11L_RV(CKR_TOKEN_WRITE_PROTECTED),
        P11L_RV(CKR_USER_ALREADY_LOGGED_IN),
        P11L_RV(CKR_USER_NOT_LOGGED_IN),
        P11L_RV(CKR_USER_PIN_NOT_INITIALIZED),
        P11L_RV(CKR_USER_TYPE_INVALID),
        P11L_RV(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
        P11L_RV(CKR_USER_TOO_MANY_TYPES),
        P11L_RV(CKR_BUFFER_TOO_SMALL),
        P11L_RV(CKR_CRYPTOKI_NOT_INITIALIZED),
        P11L_RV(CKR_CRYPTOKI_ALREADY_INITIALIZED),
        P11L_RV(CKR_MUTEX_BAD),
        P11L_RV(CKR_MUTEX_NOT_LOCKED),
        P11L_RV(CKR_KH_STORE_ERROR),
#undef P11L_RV
    };
    static _Thread_local char buf[24];

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].rv == rv)
            return names[i].name;
    snprintf(buf, sizeof(buf), "0x%08lx", (unsigned long)rv);
    return buf;
}

const char *p11l_alg_str(p11l_alg alg)
{
    switch (alg) {
    case P11L_P256: return "P-256";
    case P11L_SECP256K1: return "secp256k1";
    case P11L_ED25519: return "Ed25519";
    }
    return "?";
}

const char *p11l_module_path(void)
{
    const char *path = getenv("KEYHOLD_MODULE");

    if (path == NULL || *path == '\0') {
        fprintf(stderr, "KEYHOLD_MODULE is not set (path of keyhold-pkcs11.so)\n");
        return NULL;
    }
    return path;
}

CK_RV p11l_load(void **dl, CK_FUNCTION_LIST_PTR *fl, const char *path)
{
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
    void *h;
    CK_RV rv;

    *dl = NULL;
    *fl = NULL;
    h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        return CKR_GENERAL_ERROR;
    }
    /* POSIX allows this conversion from the void * dlsym returns. */
    *(void **)&get_list = dlsym(h, "C_GetFunctionList");
    if (get_list == NULL) {
        fprintf(stderr, "%s: no C_GetFunctionList\n", path);
        dlclose(h);
        return CKR_GENERAL_ERROR;
    }
    rv = get_list(fl);
    if (rv != CKR_OK || *fl == NULL) {
        fprintf(stderr, "C_GetFunctionList: %s\n", p11l_rv_str(rv));
        dlclose(h);
        *fl = NULL;
        return rv != CKR_OK ? rv : CKR_GENERAL_ERROR;
    }
    *dl = h;
    return CKR_OK;
}

#if defined(__SANITIZE_ADDRESS__)
#define P11L_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define P11L_ASAN 1
#endif
#endif

void p11l_unload(void *dl)
{
#ifdef P11L_ASAN
    (void)dl;
#else
    if (dl != NULL)
        dlclose(dl);
#endif
}

/* True when the blank-padded field (len bytes) holds exactly s. */
static bool p11l_padded_eq(const CK_UTF8CHAR *field, size_t len, const char *s)
{
    size_t slen = strlen(s);

    if (slen > len || memcmp(field, s, slen) != 0)
        return false;
    for (size_t i = slen; i < len; i++)
        if (field[i] != ' ')
            return false;
    return true;
}

/* All slots (token present or not). Out: *slots (malloc'd), *n. */
static CK_RV p11l_slot_list(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID **slots, CK_ULONG *n)
{
    CK_SLOT_ID *list = NULL;
    CK_ULONG count = 0;
    CK_RV rv;

    *slots = NULL;
    *n = 0;
    for (int tries = 0; tries < 4; tries++) {
        rv = fl->C_GetSlotList(CK_FALSE, NULL, &count);
        if (rv != CKR_OK) {
            fprintf(stderr, "C_GetSlotList(NULL): %s\n", p11l_rv_str(rv));
            return rv;
        }
        free(list);
        list = calloc(count ? count : 1, sizeof(*list));
        if (list == NULL)
            return CKR_HOST_MEMORY;
        rv = fl->C_GetSlotList(CK_FALSE, list, &count);
        if (rv == CKR_BUFFER_TOO_SMALL)
            continue; /* a token appeared between the two calls */
        if (rv != CKR_OK) {
            fprintf(stderr, "C_GetSlotList: %s\n", p11l_rv_str(rv));
            free(list);
            return rv;
        }
        *slots = list;
        *n = count;
        return CKR_OK;
    }
    free(list);
    fprintf(stderr, "C_GetSlotList: slot count keeps changing\n");
    return CKR_GENERAL_ERROR;
}

/*
 * The first slot whose token is initialised and labelled label or, when
 * label is NULL, present but not initialised. Out: *slot; *nslots, how many
 * slots there are. Returns CKR_OK, CKR_SLOT_ID_INVALID when none matches.
 */
static CK_RV p11l_slot_where(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID *slot, const char *label,
                             CK_ULONG *nslots)
{
    CK_SLOT_ID *slots;
    CK_RV rv = p11l_slot_list(fl, &slots, nslots);

    if (rv != CKR_OK)
        return rv;
    rv = CKR_SLOT_ID_INVALID;
    for (CK_ULONG i = 0; i < *nslots; i++) {
        CK_TOKEN_INFO ti;
        bool initialized;

        if (fl->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        initialized = (ti.flags & CKF_TOKEN_INITIALIZED) != 0;
        if (label ? initialized && p11l_padded_eq(ti.label, sizeof(ti.label), label) : !initialized) {
            *slot = slots[i];
            rv = CKR_OK;
            break;
        }
    }
    free(slots);
    return rv;
}

CK_RV p11l_find_slot(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID *slot, const char *label)
{
    CK_ULONG n;
    CK_RV rv = p11l_slot_where(fl, slot, label, &n);

    if (rv == CKR_SLOT_ID_INVALID)
        fprintf(stderr, "no token labelled \"%s\"\n", label);
    return rv;
}

/* The first slot whose token is present and not initialised. */
static CK_RV p11l_free_slot(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID *slot)
{
    CK_ULONG n;
    CK_RV rv = p11l_slot_where(fl, slot, NULL, &n);

    if (rv == CKR_SLOT_ID_INVALID)
        fprintf(stderr, "no free (uninitialised) slot among %lu slots\n", (unsigned long)n);
    return rv;
}

CK_RV p11l_make_token(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID *slot, const char *label,
                      const char *so_pin, const char *user_pin)
{
    CK_UTF8CHAR padded[32];
    CK_SLOT_ID free_slot;
    CK_SESSION_HANDLE s;
    size_t llen = strlen(label);
    CK_RV rv;

    if (llen > sizeof(padded))
        return CKR_ARGUMENTS_BAD;
    rv = p11l_free_slot(fl, &free_slot);
    if (rv != CKR_OK)
        return rv;
    memset(padded, ' ', sizeof(padded));
    memcpy(padded, label, llen);
    rv = fl->C_InitToken(free_slot, (CK_UTF8CHAR_PTR)so_pin, strlen(so_pin), padded);
    if (rv != CKR_OK) {
        fprintf(stderr, "C_InitToken(slot %lu): %s\n", (unsigned long)free_slot, p11l_rv_str(rv));
        return rv;
    }
    rv = p11l_find_slot(fl, slot, label);
    if (rv != CKR_OK)
        return rv;
    rv = fl->C_OpenSession(*slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        fprintf(stderr, "C_OpenSession(slot %lu) after C_InitToken: %s\n",
                (unsigned long)*slot, p11l_rv_str(rv));
        return rv;
    }
    rv = fl->C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)so_pin, strlen(so_pin));
    if (rv != CKR_OK) {
        fprintf(stderr, "C_Login(CKU_SO): %s\n", p11l_rv_str(rv));
        goto out_close;
    }
    rv = fl->C_InitPIN(s, (CK_UTF8CHAR_PTR)user_pin, strlen(user_pin));
    if (rv != CKR_OK) {
        fprintf(stderr, "C_InitPIN: %s\n", p11l_rv_str(rv));
        goto out_logout;
    }
out_logout:
    {
        CK_RV lrv = fl->C_Logout(s);

        if (lrv != CKR_OK) {
            fprintf(stderr, "C_Logout(SO): %s\n", p11l_rv_str(lrv));
            if (rv == CKR_OK)
                rv = lrv;
        }
    }
out_close:
    fl->C_CloseSession(s);
    return rv;
}

CK_RV p11l_login(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, const char *user_pin)
{
    CK_RV rv = fl->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)user_pin, strlen(user_pin));

    if (rv == CKR_USER_ALREADY_LOGGED_IN)
        return CKR_OK;
    if (rv != CKR_OK)
        fprintf(stderr, "C_Login(CKU_USER): %s\n", p11l_rv_str(rv));
    return rv;
}

CK_RV p11l_gen_keypair(CK_FUNCTION_LIST_PTR fl, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv,
                       CK_SESSION_HANDLE s, p11l_alg alg, const char *label,
                       const uint8_t *id, size_t idlen)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_MECHANISM mech = { CKM_EC_KEY_PAIR_GEN, NULL, 0 };
    CK_KEY_TYPE kt = CKK_EC;
    const uint8_t *oid = p11l_oid_p256;
    size_t oidlen = sizeof(p11l_oid_p256);
    CK_RV rv;

    if (alg == P11L_SECP256K1) {
        oid = p11l_oid_secp256k1;
        oidlen = sizeof(p11l_oid_secp256k1);
    } else if (alg == P11L_ED25519) {
        oid = p11l_oid_ed25519;
        oidlen = sizeof(p11l_oid_ed25519);
        mech.mechanism = CKM_EC_EDWARDS_KEY_PAIR_GEN;
        kt = CKK_EC_EDWARDS;
    }
    CK_ATTRIBUTE pub_tmpl[] = {
        { CKA_TOKEN, &yes, sizeof(yes) },
        { CKA_PRIVATE, &no, sizeof(no) },
        { CKA_VERIFY, &yes, sizeof(yes) },
        { CKA_KEY_TYPE, &kt, sizeof(kt) },
        { CKA_EC_PARAMS, (void *)oid, oidlen },
        { CKA_LABEL, (void *)label, strlen(label) },
        { CKA_ID, (void *)id, idlen },
    };
    CK_ATTRIBUTE priv_tmpl[] = {
        { CKA_TOKEN, &yes, sizeof(yes) },
        { CKA_PRIVATE, &yes, sizeof(yes) },
        { CKA_SENSITIVE, &yes, sizeof(yes) },
        { CKA_SIGN, &yes, sizeof(yes) },
        { CKA_KEY_TYPE, &kt, sizeof(kt) },
        { CKA_LABEL, (void *)label, strlen(label) },
        { CKA_ID, (void *)id, idlen },
    };

    rv = fl->C_GenerateKeyPair(s, &mech, pub_tmpl, sizeof(pub_tmpl) / sizeof(pub_tmpl[0]),
                               priv_tmpl, sizeof(priv_tmpl) / sizeof(priv_tmpl[0]), pub, priv);
    if (rv != CKR_OK)
        fprintf(stderr, "C_GenerateKeyPair(%s, \"%s\"): %s\n", p11l_alg_str(alg), label,
                p11l_rv_str(rv));
    return rv;
}

CK_RV p11l_find(CK_FUNCTION_LIST_PTR fl, CK_OBJECT_HANDLE *handles, size_t max, size_t *n,
                CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE type,
                const void *value, size_t len)
{
    CK_ATTRIBUTE tmpl[] = {
        { CKA_CLASS, &cls, sizeof(cls) },
        { type, (void *)value, len },
    };
    CK_OBJECT_HANDLE batch[16];
    CK_ULONG got;
    CK_RV rv, frv;

    *n = 0;
    rv = fl->C_FindObjectsInit(s, tmpl, 2);
    if (rv != CKR_OK) {
        fprintf(stderr, "C_FindObjectsInit: %s\n", p11l_rv_str(rv));
        return rv;
    }
    do {
        rv = fl->C_FindObjects(s, batch, sizeof(batch) / sizeof(batch[0]), &got);
        if (rv != CKR_OK) {
            fprintf(stderr, "C_FindObjects: %s\n", p11l_rv_str(rv));
            break;
        }
        for (CK_ULONG i = 0; i < got; i++, (*n)++)
            if (*n < max)
                handles[*n] = batch[i];
    } while (got > 0);
    frv = fl->C_FindObjectsFinal(s);
    if (frv != CKR_OK) {
        fprintf(stderr, "C_FindObjectsFinal: %s\n", p11l_rv_str(frv));
        if (rv == CKR_OK)
            rv = frv;
    }
    return rv;
}

CK_RV p11l_find_one(CK_FUNCTION_LIST_PTR fl, CK_OBJECT_HANDLE *out, CK_SESSION_HANDLE s,
                    CK_OBJECT_CLASS cls, const char *label)
{
    size_t n;
    CK_RV rv = p11l_find(fl, out, 1, &n, s, cls, CKA_LABEL, label, strlen(label));

    if (rv != CKR_OK)
        return rv;
    if (n != 1) {
        fprintf(stderr, "find %s \"%s\": %zu objects, expected 1\n",
                cls == CKO_PRIVATE_KEY ? "private key" : "public key", label, n);
        return CKR_GENERAL_ERROR;
    }
    return CKR_OK;
}

CK_RV p11l_get_attr(CK_FUNCTION_LIST_PTR fl, uint8_t **value, size_t *len,
                    CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type)
{
    CK_ATTRIBUTE a = { type, NULL, 0 };
    CK_RV rv;

    *value = NULL;
    *len = 0;
    rv = fl->C_GetAttributeValue(s, obj, &a, 1);
    if (rv != CKR_OK) {
        fprintf(stderr, "C_GetAttributeValue(0x%lx, length): %s\n", (unsigned long)type,
                p11l_rv_str(rv));
        return rv;
    }
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
        fprintf(stderr, "C_GetAttributeValue(0x%lx): unavailable\n", (unsigned long)type);
        return CKR_GENERAL_ERROR;
    }
    a.pValue = malloc(a.ulValueLen ? a.ulValueLen : 1);
    if (a.pValue == NULL)
        return CKR_HOST_MEMORY;
    rv = fl->C_GetAttributeValue(s, obj, &a, 1);
    if (rv != CKR_OK) {
        fprintf(stderr, "C_GetAttributeValue(0x%lx): %s\n", (unsigned long)type, p11l_rv_str(rv));
        free(a.pValue);
        return rv;
    }
    *value = a.pValue;
    *len = a.ulValueLen;
    return CKR_OK;
}

/* Strip a DER OCTET STRING wrapper; a bare point is passed through. */
static bool p11l_unwrap_octets(const uint8_t **p, size_t *len)
{
    const uint8_t *d = *p;
    size_t n = *len, clen, hdr;

    if (n < 2 || d[0] != 0x04)
        return true; /* not wrapped (or an uncompressed point starting 0x04, checked below) */
    if (d[1] < 0x80) {
        clen = d[1];
        hdr = 2;
    } else if (d[1] == 0x81 && n >= 3) {
        clen = d[2];
        hdr = 3;
    } else {
        return false;
    }
    if (hdr + clen != n)
        return true; /* the lengths do not describe a wrapper: take it as a raw point */
    *p = d + hdr;
    *len = clen;
    return true;
}

static EVP_PKEY *p11l_ec_pkey(const char *group, const uint8_t *pt, size_t ptlen)
{
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;

    if (bld == NULL ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, ptlen))
        goto out;
    params = OSSL_PARAM_BLD_to_param(bld);
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
out:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    return pkey;
}

bool p11l_ossl_verify(p11l_alg alg, const uint8_t *ec_point, size_t ec_point_len,
                      const uint8_t *msg, size_t msg_len, const uint8_t *sig, size_t sig_len)
{
    const uint8_t *pt = ec_point;
    size_t ptlen = ec_point_len;
    EVP_PKEY *pkey = NULL;
    bool ok = false;

    if (!p11l_unwrap_octets(&pt, &ptlen))
        return false;
    if (alg == P11L_ED25519) {
        EVP_MD_CTX *md = EVP_MD_CTX_new();

        pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pt, ptlen);
        ok = md != NULL && pkey != NULL &&
             EVP_DigestVerifyInit(md, NULL, NULL, NULL, pkey) == 1 &&
             EVP_DigestVerify(md, sig, sig_len, msg, msg_len) == 1;
        EVP_MD_CTX_free(md);
    } else {
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = NULL, *s = NULL;
        EVP_PKEY_CTX *ctx = NULL;
        uint8_t *der = NULL;
        int derlen = -1;

        pkey = p11l_ec_pkey(alg == P11L_P256 ? "prime256v1" : "secp256k1", pt, ptlen);
        if (es == NULL || pkey == NULL || sig_len != 64)
            goto ec_out;
        r = BN_bin2bn(sig, 32, NULL);
        s = BN_bin2bn(sig + 32, 32, NULL);
        if (r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s))
            goto ec_out;
        r = s = NULL; /* owned by es now */
        derlen = i2d_ECDSA_SIG(es, &der);
        ctx = EVP_PKEY_CTX_new(pkey, NULL);
        ok = derlen > 0 && ctx != NULL && EVP_PKEY_verify_init(ctx) == 1 &&
             EVP_PKEY_verify(ctx, der, (size_t)derlen, msg, msg_len) == 1;
ec_out:
        OPENSSL_free(der);
        EVP_PKEY_CTX_free(ctx);
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
    }
    EVP_PKEY_free(pkey);
    return ok;
}

bool p11l_tmpdir(char *buf, size_t buflen, const char *tag)
{
    const char *base = getenv("TMPDIR");
    int n;

    if (base == NULL || *base == '\0')
        base = "/tmp";
    n = snprintf(buf, buflen, "%s/keyhold-%s-XXXXXX", base, tag);
    if (n < 0 || (size_t)n >= buflen)
        return false;
    if (mkdtemp(buf) == NULL) {
        perror("mkdtemp");
        return false;
    }
    return true;
}

static int p11l_rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (type == FTW_DP)
        rmdir(path);
    else
        unlink(path);
    return 0;
}

void p11l_rmtree(const char *dir)
{
    if (dir != NULL && *dir != '\0')
        nftw(dir, p11l_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

double p11l_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

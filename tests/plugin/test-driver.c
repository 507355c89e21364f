/*
 * An example remote driver plugin, for tests: it "signs remotely" with an
 * in-process key derived from the reference, so the plugin path (dlopen,
 * ABI check, init, public_key, sign, fini) runs without any service.
 *
 * Reference (what follows "<name>:" in CKA_KH_REMOTE_REF):
 *     <type>:<name>[+<fault>]
 * type: secp256k1, p256, p384, ed25519 (no RSA: a deterministic RSA key is
 * not worth it here). The key's secret is SHA-256("keyhold-test-driver:" ||
 * type || ":" || name) — for tests only, obviously not for real keys.
 * Faults: +wrongkey signs with the key of "<name>-other"; +der answers ECDSA
 * in DER; +slow<ms> sleeps, then answers (and honours the deadline: it
 * returns KH_DRV_E_TIMEOUT when the sleep would pass it).
 *
 * Built twice: as kh-test-driver.so, and with -DKH_TEST_BAD_ABI as
 * kh-test-driver-badabi.so, whose table claims ABI version 99 (the module
 * must refuse it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "crypto.h"
#include "keyhold-driver.h"

struct td_state {
    unsigned calls;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int td_init(void **state, const char *name)
{
    (void)name;
    if (kh_crypto_init() != CKR_OK)
        return KH_DRV_INTERNAL;
    *state = calloc(1, sizeof(struct td_state));
    return *state ? KH_DRV_OK : KH_DRV_E_NOMEM;
}

static void td_fini(void *state)
{
    free(state);
}

/* Parse "<type>:<name>[+fault]" and derive the key. */
static int td_key(kh_softkey **key, kh_pubkey *pub, uint32_t *type, char *fault, size_t flen,
                  const char *ref, bool other)
{
    static const struct { const char *name; kh_alg alg; uint32_t type; } types[] = {
        { "secp256k1", KH_ALG_SECP256K1, KH_DRV_KEY_SECP256K1 },
        { "p256", KH_ALG_P256, KH_DRV_KEY_P256 },
        { "p384", KH_ALG_P384, KH_DRV_KEY_P384 },
        { "ed25519", KH_ALG_ED25519, KH_DRV_KEY_ED25519 },
    };
    const char *colon = strchr(ref, ':');
    if (!colon)
        return KH_DRV_E_REF;
    size_t i;
    for (i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strlen(types[i].name) == (size_t)(colon - ref) &&
            !strncmp(ref, types[i].name, (size_t)(colon - ref)))
            break;
    if (i == sizeof types / sizeof types[0])
        return !strncmp(ref, "rsa:", 4) ? KH_DRV_UNSUPPORTED : KH_DRV_E_REF;
    const char *name = colon + 1, *plus = strchr(name, '+');
    size_t nlen = plus ? (size_t)(plus - name) : strlen(name);
    snprintf(fault, flen, "%s", plus ? plus + 1 : "");
    if (nlen == 0)
        return KH_DRV_UNKNOWN_KEY;
    char seed_in[512];
    int n = snprintf(seed_in, sizeof seed_in, "keyhold-test-driver:%s:%.*s%s", types[i].name,
                     (int)nlen, name, other ? "-other" : "");
    uint8_t secret[32];
    unsigned int sl = 0;
    if (n < 0 || (size_t)n >= sizeof seed_in ||
        !EVP_Digest(seed_in, (size_t)n, secret, &sl, EVP_sha256(), NULL))
        return KH_DRV_INTERNAL;
    size_t klen = types[i].alg == KH_ALG_P384 ? 48 : 32;
    uint8_t buf[48] = { 0 };
    memcpy(buf + (klen - 32), secret, 32);   /* P-384: a 256-bit scalar, left-padded */
    int st = KH_DRV_OK;
    if (kh_crypto_import(pub, NULL, NULL, types[i].alg, buf, klen) != CKR_OK ||
        (key && kh_softkey_load(key, types[i].alg, buf, klen) != CKR_OK))
        st = KH_DRV_INTERNAL;
    memset(secret, 0, sizeof secret);
    memset(buf, 0, sizeof buf);
    *type = types[i].type;
    return st;
}

static int td_public_key(void *state, kh_driver_pubkey *out, char *msg, size_t msglen,
                         const char *ref, uint64_t deadline_ms)
{
    (void)deadline_ms;
    kh_pubkey pub;
    char fault[64];
    ((struct td_state *)state)->calls++;
    int st = td_key(NULL, &pub, &out->type, fault, sizeof fault, ref, false);
    if (st != KH_DRV_OK) {
        snprintf(msg, msglen, "test driver: cannot make a key from this reference");
        return st;
    }
    memcpy(out->point, pub.point, pub.point_len);
    out->point_len = pub.point_len;
    out->n_len = out->e_len = 0;
    return KH_DRV_OK;
}

static int td_sign(void *state, uint8_t *sig, size_t *sig_len, int *format, char *msg,
                   size_t msglen, const char *ref, const kh_driver_sign_req *req,
                   uint64_t deadline_ms)
{
    kh_softkey *key = NULL;
    kh_pubkey pub;
    uint32_t type;
    char fault[64];
    ((struct td_state *)state)->calls++;
    const char *plus = strchr(ref, '+');
    bool other = plus && !strcmp(plus + 1, "wrongkey");
    int st = td_key(&key, &pub, &type, fault, sizeof fault, ref, other);
    if (st != KH_DRV_OK)
        return st;
    if (!strncmp(fault, "slow", 4)) {
        uint64_t ms = strtoull(fault + 4, NULL, 10);
        if (now_ms() + ms > deadline_ms) {
            uint64_t left = deadline_ms > now_ms() ? deadline_ms - now_ms() : 0;
            usleep((useconds_t)left * 1000u);
            kh_softkey_free(key);
            snprintf(msg, msglen, "test driver: deadline");
            return KH_DRV_E_TIMEOUT;
        }
        usleep((useconds_t)ms * 1000u);
    }
    kh_sigop op;
    switch (req->algorithm) {
    case KH_DRV_ALG_ECDSA: op = KH_OP_ECDSA; break;
    case KH_DRV_ALG_ECDSA_RECOVERABLE: op = KH_OP_ECDSA_RECOVER; break;
    case KH_DRV_ALG_BIP340: op = KH_OP_BIP340; break;
    case KH_DRV_ALG_EDDSA: op = KH_OP_EDDSA; break;
    default:
        kh_softkey_free(key);
        return KH_DRV_UNSUPPORTED;
    }
    kh_sigparams sp = { .aux = req->aux };
    size_t len = KH_DRIVER_SIG_MAX;
    CK_RV rv = kh_softkey_sign(key, op, &sp, req->data, req->data_len, sig, &len);
    kh_softkey_free(key);
    if (rv != CKR_OK) {
        snprintf(msg, msglen, "test driver: sign failed (0x%lx)", (unsigned long)rv);
        return rv == CKR_KEY_TYPE_INCONSISTENT ? KH_DRV_UNSUPPORTED : KH_DRV_INVALID_PARAMS;
    }
    *format = KH_DRV_SIG_RAW;
    if (!strcmp(fault, "der") && op == KH_OP_ECDSA) {
        /* r||s -> DER, both integers positive and minimal */
        uint8_t der[2 * 52 + 6], *p = der + 2;
        size_t f = len / 2;
        for (int k = 0; k < 2; k++) {
            const uint8_t *v = sig + k * f;
            size_t n = f;
            while (n > 1 && *v == 0) { v++; n--; }
            *p++ = 0x02;
            *p++ = (uint8_t)(n + (*v & 0x80 ? 1 : 0));
            if (*v & 0x80)
                *p++ = 0;
            memcpy(p, v, n);
            p += n;
        }
        der[0] = 0x30;
        der[1] = (uint8_t)(p - der - 2);
        len = (size_t)(p - der);
        memcpy(sig, der, len);
        *format = KH_DRV_SIG_DER;
    }
    *sig_len = len;
    return KH_DRV_OK;
}

__attribute__((visibility("default"))) const kh_driver_v1 keyhold_remote_driver_v1 = {
#ifdef KH_TEST_BAD_ABI
    .abi_version = 99,
#else
    .abi_version = KH_DRIVER_ABI_VERSION,
#endif
    .struct_size = sizeof(kh_driver_v1),
    .name = "test-driver",
    .init = td_init,
    .fini = td_fini,
    .public_key = td_public_key,
    .sign = td_sign,
};

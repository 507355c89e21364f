/*
 * test-signd-sign.c - keyhold-signd never hands out a signature that does
 * not verify with the key's public key: kh_signd_sign driven through a
 * stand-in Cryptoki function list (C_SignInit/C_Sign only) that signs with
 * the right key, the wrong key, returns a wrong recovery id, a high S, the
 * wrong length or a Cryptoki error.
 */
#include "testutil.h"

#include "signd.h"

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <secp256k1.h>
#include <secp256k1_extrakeys.h>
#include <secp256k1_recovery.h>
#include <secp256k1_schnorrsig.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* signd-server.c's logger, for the unit under test. */
void kh_signd_log(const char *fmt, ...)
{
    va_list ap;

    fputs("# log: ", stdout);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
}

/* What the stand-in token does on C_Sign. */
enum fake_mode {
    FAKE_OK,           /* sign with the signing key */
    FAKE_FLIP_V,       /* recoverable: the other recovery id */
    FAKE_HIGH_S,       /* ECDSA: s -> n - s (and v flipped, so it is still "right") */
    FAKE_SHORT,        /* one byte short */
    FAKE_GARBAGE,      /* random bytes of the right length */
};

static struct {
    enum fake_mode mode;
    CK_RV init_rv;
    CK_MECHANISM_TYPE mech;
    uint8_t seckey[32];          /* secp256k1 signing key */
    EVP_PKEY *p256;              /* P-256 signing key */
    EVP_PKEY *ed;                /* Ed25519 signing key */
    int calls;
} fake;

static secp256k1_context *ctx;

static CK_RV fake_sign_init(CK_SESSION_HANDLE s, CK_MECHANISM *mech, CK_OBJECT_HANDLE key)
{
    (void)s;
    (void)key;
    if (!mech)
        return CKR_OK;          /* terminating an operation */
    fake.mech = mech->mechanism;
    return fake.init_rv;
}

static void negate_s(uint8_t s[32])
{
    /* n - s for the secp256k1 order n, big-endian. */
    static const uint8_t n[32] = {
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
        0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
    };
    int borrow = 0;

    for (int i = 31; i >= 0; i--) {
        int d = n[i] - s[i] - borrow;
        borrow = d < 0;
        s[i] = (uint8_t)(d + (borrow ? 256 : 0));
    }
}

static CK_RV fake_sign(CK_SESSION_HANDLE s, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig,
                       CK_ULONG_PTR siglen)
{
    secp256k1_ecdsa_recoverable_signature rs;
    size_t n = 0;
    int recid = 0;

    (void)s;
    fake.calls++;
    switch (fake.mech) {
    case CKM_KH_ECDSA_RECOVERABLE:
    case CKM_ECDSA:
        if (fake.p256) {
            EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new(fake.p256, NULL);
            uint8_t der[128];
            size_t derlen = sizeof der;
            const uint8_t *p = der;
            ECDSA_SIG *es;
            KH_CHECK(EVP_PKEY_sign_init(pc) == 1 && EVP_PKEY_sign(pc, der, &derlen, data, len) == 1);
            es = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
            KH_CHECK(es != NULL);
            BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32);
            BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32);
            ECDSA_SIG_free(es);
            EVP_PKEY_CTX_free(pc);
            n = 64;
            break;
        }
        KH_CHECK(len == 32);
        KH_CHECK(secp256k1_ecdsa_sign_recoverable(ctx, &rs, data, fake.seckey, NULL, NULL));
        secp256k1_ecdsa_recoverable_signature_serialize_compact(ctx, sig, &recid, &rs);
        if (fake.mode == FAKE_HIGH_S) {
            negate_s(sig + 32);
            recid ^= 1;
        }
        if (fake.mode == FAKE_FLIP_V)
            recid ^= 1;
        n = 64;
        if (fake.mech == CKM_KH_ECDSA_RECOVERABLE)
            sig[n++] = (uint8_t)recid;
        break;
    case CKM_KH_BIP340_SCHNORR: {
        secp256k1_keypair kp;
        KH_CHECK(secp256k1_keypair_create(ctx, &kp, fake.seckey));
        KH_CHECK(secp256k1_schnorrsig_sign32(ctx, sig, data, &kp, NULL));
        n = 64;
        break;
    }
    case CKM_EDDSA:
        if (fake.ed) {
            EVP_MD_CTX *mc = EVP_MD_CTX_new();
            size_t sl = 64;
            KH_CHECK(mc && EVP_DigestSignInit(mc, NULL, NULL, NULL, fake.ed) == 1 &&
                     EVP_DigestSign(mc, sig, &sl, data, len) == 1 && sl == 64);
            EVP_MD_CTX_free(mc);
            n = 64;
            break;
        }
        /* fall through */
    default:
        n = 64;
        memset(sig, 0x5a, n);
        break;
    }
    if (fake.mode == FAKE_GARBAGE)
        for (size_t i = 0; i < n; i++)
            sig[i] = (uint8_t)(i * 37 + 11);
    if (fake.mode == FAKE_SHORT)
        n--;
    *siglen = (CK_ULONG)n;
    return CKR_OK;
}

static CK_FUNCTION_LIST fake_list;
static struct kh_signd srv;
static struct kh_signd_worker w = { .srv = &srv };

static const uint8_t key_a[32] = { [31] = 1, [0] = 0x11 };
static const uint8_t key_b[32] = { [31] = 2, [0] = 0x22 };

/* A served key of kind with public key point, prepared as keyhold-signd does. */
static void make_key(struct kh_signd_key *k, char *label, enum kh_keykind kind,
                     const uint8_t *point, size_t len)
{
    memset(k, 0, sizeof *k);
    k->label = label;
    k->desc.kind = kind;
    k->pub.kind = kind;
    KH_CHECK(kh_pubkey_set_ec_point(&k->pub, point, len));
    KH_CHECK(kh_signd_key_prepare(k, NULL, 0));
}

/* A served secp256k1 key whose public key is that of seckey. */
static void make_k1(struct kh_signd_key *k, const uint8_t seckey[32], bool recoverable)
{
    secp256k1_pubkey pk;
    uint8_t point[65];
    size_t len = sizeof point;

    KH_CHECK(secp256k1_ec_pubkey_create(ctx, &pk, seckey));
    secp256k1_ec_pubkey_serialize(ctx, point, &len, &pk, SECP256K1_EC_UNCOMPRESSED);
    make_key(k, "k1", KH_KEY_SECP256K1, point, len);
    k->recoverable_mech = recoverable;
}

static void drop_key(struct kh_signd_key *k)
{
    kh_signd_key_release(k);
    kh_pubkey_clear(&k->pub);
}

static int sign(const struct kh_signd_key *k, enum kh_signd_alg alg, uint8_t *sig, size_t *siglen)
{
    static const uint8_t hash[32] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };
    struct kh_signd_sign_in in = { .alg = alg, .input = hash, .input_len = 32 };
    char why[256] = "";
    int code = kh_signd_sign(&w, k, &in, sig, siglen, why, sizeof why);

    if (code != 0)
        printf("# refused (%d): %s\n", code, why);
    return code;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

static void setup(void)
{
    srv.cfg.skip_verify = false;
    if (!ctx)
        ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    memset(&fake_list, 0, sizeof fake_list);
    fake_list.C_SignInit = fake_sign_init;
    fake_list.C_Sign = fake_sign;
    srv.p11.f = &fake_list;
    memset(&fake, 0, sizeof fake);
    fake.init_rv = CKR_OK;
}

static void test_secp256k1(void)
{
    struct kh_signd_key k;
    uint8_t sig[KH_SIGND_SIG_MAX];
    size_t len;

    setup();
    for (int recoverable = 0; recoverable < 2; recoverable++) {
        make_k1(&k, key_a, recoverable);
        memcpy(fake.seckey, key_a, 32);

        fake.mode = FAKE_OK;
        KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA_RECOVERABLE, sig, &len) == 0 && len == 65 && sig[64] <= 1);
        KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA, sig, &len) == 0 && len == 64);
        KH_CHECK(sign(&k, KH_SIGND_ALG_BIP340, sig, &len) == 0 && len == 64);

        /* A high S is normalised (and the recovery id follows). */
        fake.mode = FAKE_HIGH_S;
        KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA_RECOVERABLE, sig, &len) == 0 && len == 65);
        KH_CHECK(sig[32] < 0x80);

        /* The wrong key: refused, nothing left in the buffer. */
        memcpy(fake.seckey, key_b, 32);
        fake.mode = FAKE_OK;
        memset(sig, 0xee, sizeof sig);
        KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA_RECOVERABLE, sig, &len) == KH_SIGND_E_INTERNAL);
        KH_CHECK(all_zero(sig, sizeof sig));
        KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA, sig, &len) == KH_SIGND_E_INTERNAL);
        KH_CHECK(sign(&k, KH_SIGND_ALG_BIP340, sig, &len) == KH_SIGND_E_INTERNAL);
        memcpy(fake.seckey, key_a, 32);

        /* Garbage and a short answer. */
        fake.mode = FAKE_GARBAGE;
        KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA_RECOVERABLE, sig, &len) == KH_SIGND_E_INTERNAL);
        KH_CHECK(sign(&k, KH_SIGND_ALG_BIP340, sig, &len) == KH_SIGND_E_INTERNAL);
        fake.mode = FAKE_SHORT;
        KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA_RECOVERABLE, sig, &len) == KH_SIGND_E_INTERNAL);
        drop_key(&k);
    }

    /* The module's own recovery id must be right: a flipped one is refused. */
    make_k1(&k, key_a, true);
    fake.mode = FAKE_FLIP_V;
    KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA_RECOVERABLE, sig, &len) == KH_SIGND_E_INTERNAL);
    /* Without the vendor mechanism signd finds the id itself. */
    k.recoverable_mech = false;
    KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA_RECOVERABLE, sig, &len) == 0);
    KH_CHECK(fake.mech == CKM_ECDSA);
    drop_key(&k);
}

static void test_cryptoki_errors(void)
{
    static const struct { CK_RV rv; int code; } map[] = {
        { CKR_MECHANISM_INVALID, KH_SIGND_E_UNSUPPORTED },
        { CKR_KEY_HANDLE_INVALID, KH_SIGND_E_UNKNOWN_KEY },
        { CKR_USER_NOT_LOGGED_IN, KH_SIGND_E_UNAVAILABLE },
        { CKR_DEVICE_ERROR, KH_SIGND_E_UNAVAILABLE },
        { CKR_DATA_LEN_RANGE, KH_SIGND_E_INVALID_PARAMS },
        { CKR_FUNCTION_REJECTED, KH_SIGND_E_DENIED },
        { CKR_GENERAL_ERROR, KH_SIGND_E_INTERNAL },
    };
    struct kh_signd_key k;
    uint8_t sig[KH_SIGND_SIG_MAX];
    size_t len;

    setup();
    make_k1(&k, key_a, true);
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        fake.init_rv = map[i].rv;
        KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA_RECOVERABLE, sig, &len) == map[i].code);
    }
    /* An algorithm that does not fit the key never reaches the token. */
    fake.init_rv = CKR_OK;
    fake.calls = 0;
    KH_CHECK(sign(&k, KH_SIGND_ALG_EDDSA, sig, &len) == KH_SIGND_E_UNSUPPORTED);
    KH_CHECK(sign(&k, KH_SIGND_ALG_RSA_PSS, sig, &len) == KH_SIGND_E_UNSUPPORTED);
    KH_CHECK(fake.calls == 0);
    drop_key(&k);
}

/* P-256 through OpenSSL's verification: right key, wrong key, garbage. */
static void test_p256(void)
{
    EVP_PKEY *a = EVP_EC_gen("P-256"), *b = EVP_EC_gen("P-256");
    struct kh_signd_key k;
    uint8_t point[65], sig[KH_SIGND_SIG_MAX];
    size_t plen, len;

    setup();
    KH_CHECK(a && b);
    KH_CHECK(EVP_PKEY_get_octet_string_param(a, "encoded-pub-key", point, sizeof point, &plen) == 1);
    make_key(&k, "p256", KH_KEY_P256, point, plen);

    fake.p256 = a;
    KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA, sig, &len) == 0 && len == 64);
    fake.p256 = b;
    KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA, sig, &len) == KH_SIGND_E_INTERNAL);
    fake.p256 = a;
    fake.mode = FAKE_GARBAGE;
    KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA, sig, &len) == KH_SIGND_E_INTERNAL);
    drop_key(&k);
    EVP_PKEY_free(a);
    EVP_PKEY_free(b);
}

/* Ed25519 through libsodium's verification: right key, wrong key, garbage; unchecked. */
static void test_ed25519(void)
{
    EVP_PKEY *a = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519"), *b = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    struct kh_signd_key k;
    uint8_t point[32], sig[KH_SIGND_SIG_MAX];
    size_t plen = sizeof point, len;

    setup();
    KH_CHECK(a && b);
    KH_CHECK(EVP_PKEY_get_raw_public_key(a, point, &plen) == 1 && plen == 32);
    make_key(&k, "ed", KH_KEY_ED25519, point, plen);

    fake.ed = a;
    KH_CHECK(sign(&k, KH_SIGND_ALG_EDDSA, sig, &len) == 0 && len == 64);
    fake.ed = b;
    memset(sig, 0xee, sizeof sig);
    KH_CHECK(sign(&k, KH_SIGND_ALG_EDDSA, sig, &len) == KH_SIGND_E_INTERNAL);
    KH_CHECK(all_zero(sig, sizeof sig));
    fake.ed = a;
    fake.mode = FAKE_GARBAGE;
    KH_CHECK(sign(&k, KH_SIGND_ALG_EDDSA, sig, &len) == KH_SIGND_E_INTERNAL);
    /* unchecked: the wrong key's signature leaves (what the setting means) */
    fake.mode = FAKE_OK;
    fake.ed = b;
    srv.cfg.skip_verify = true;
    KH_CHECK(sign(&k, KH_SIGND_ALG_EDDSA, sig, &len) == 0 && len == 64);
    srv.cfg.skip_verify = false;
    fake.ed = NULL;
    drop_key(&k);
    EVP_PKEY_free(a);
    EVP_PKEY_free(b);
}

/*
 * "verify_signatures": false: a wrong-key ECDSA or BIP-340 signature leaves
 * unchecked (that is what the setting means), but its shape is still
 * checked and a recoverable signature is still recovered to the key.
 */
static void test_unchecked(void)
{
    struct kh_signd_key k;
    uint8_t sig[KH_SIGND_SIG_MAX];
    size_t len;

    setup();
    srv.cfg.skip_verify = true;
    make_k1(&k, key_a, true);
    memcpy(fake.seckey, key_b, 32);
    KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA, sig, &len) == 0 && len == 64);
    KH_CHECK(sign(&k, KH_SIGND_ALG_BIP340, sig, &len) == 0 && len == 64);
    KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA_RECOVERABLE, sig, &len) == KH_SIGND_E_INTERNAL);
    k.recoverable_mech = false;
    KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA_RECOVERABLE, sig, &len) == KH_SIGND_E_INTERNAL);
    /* a high S still comes out low */
    memcpy(fake.seckey, key_a, 32);
    fake.mode = FAKE_HIGH_S;
    KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA, sig, &len) == 0 && sig[32] < 0x80);
    /* the wrong length is still refused */
    fake.mode = FAKE_SHORT;
    KH_CHECK(sign(&k, KH_SIGND_ALG_ECDSA, sig, &len) == KH_SIGND_E_INTERNAL);
    drop_key(&k);
    srv.cfg.skip_verify = false;
}

int main(int argc, char **argv)
{
    int r;

    kh_test_register("/signd/sign/secp256k1", test_secp256k1);
    kh_test_register("/signd/sign/cryptoki-errors", test_cryptoki_errors);
    kh_test_register("/signd/sign/p256", test_p256);
    kh_test_register("/signd/sign/ed25519", test_ed25519);
    kh_test_register("/signd/sign/unchecked", test_unchecked);
    r = kh_test_run(argc, argv);
    if (ctx)
        secp256k1_context_destroy(ctx);
    return r;
}

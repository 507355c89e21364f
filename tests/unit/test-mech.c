/* Unit tests for the mechanism table (module/mech.c). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "testutil.h"

CK_RV kh_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count);
CK_RV kh_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info);

static CK_MECHANISM_TYPE *all_mechs(CK_ULONG *n)
{
    *n = 0;
    KH_CHECK_RV(kh_GetMechanismList(1, NULL, n), CKR_OK);
    CK_MECHANISM_TYPE *list = calloc(*n ? *n : 1, sizeof *list);
    KH_CHECK(list != NULL);
    KH_CHECK_RV(kh_GetMechanismList(1, list, n), CKR_OK);
    return list;
}

static void test_list(void)
{
    CK_ULONG n = 0, small;
    KH_CHECK_RV(kh_GetMechanismList(1, NULL, NULL), CKR_ARGUMENTS_BAD);
    KH_CHECK_RV(kh_GetMechanismList(1, NULL, &n), CKR_OK);
    KH_CHECK(n == 21);

    CK_MECHANISM_TYPE buf[64];
    small = n - 1;
    KH_CHECK_RV(kh_GetMechanismList(1, buf, &small), CKR_BUFFER_TOO_SMALL);
    KH_CHECK(small == n);
    small = 0;
    KH_CHECK_RV(kh_GetMechanismList(1, buf, &small), CKR_BUFFER_TOO_SMALL);
    KH_CHECK(small == n);

    CK_ULONG big = 64;
    KH_CHECK_RV(kh_GetMechanismList(1, buf, &big), CKR_OK);
    KH_CHECK(big == n);
    for (CK_ULONG i = 0; i < n; i++) {
        KH_CHECK(kh_mech_find(buf[i]) != NULL);
        for (CK_ULONG j = i + 1; j < n; j++)
            KH_CHECK(buf[i] != buf[j]);
    }
    /* What the design requires to be there. */
    static const CK_MECHANISM_TYPE need[] = {
        CKM_EC_KEY_PAIR_GEN, CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_RSA_PKCS_KEY_PAIR_GEN,
        CKM_ECDSA, CKM_ECDSA_SHA256, CKM_ECDSA_SHA384, CKM_ECDSA_SHA512,
        CKM_KH_BIP340_SCHNORR, CKM_KH_ECDSA_RECOVERABLE, CKM_EDDSA,
        CKM_RSA_PKCS, CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS, CKM_SHA512_RSA_PKCS,
        CKM_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS_PSS, CKM_SHA384_RSA_PKCS_PSS,
        CKM_SHA512_RSA_PKCS_PSS, CKM_SHA256, CKM_SHA384, CKM_SHA512,
    };
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++) {
        bool found = false;
        for (CK_ULONG j = 0; j < n; j++)
            found |= buf[j] == need[i];
        if (!found)
            kh_test_fail(__FILE__, __LINE__, "mechanism 0x%lx missing", need[i]);
    }
    KH_CHECK(kh_mech_find(CKM_SHA_1) == NULL);
    KH_CHECK(kh_mech_find(CKM_ECDSA_SHA1) == NULL);
    KH_CHECK(CKM_KH_BIP340_SCHNORR == 0xCB480001UL);
    KH_CHECK(CKM_KH_ECDSA_RECOVERABLE == 0xCB480002UL);
}

/* Every row: what C_GetMechanismInfo says agrees with the row and the design. */
static void test_rows(void)
{
    CK_ULONG n;
    CK_MECHANISM_TYPE *list = all_mechs(&n);
    for (CK_ULONG i = 0; i < n; i++) {
        const kh_mech *m = kh_mech_find(list[i]);
        CK_MECHANISM_INFO info;
        KH_CHECK(m != NULL);
        if (!m)
            continue;
        KH_CHECK_RV(kh_GetMechanismInfo(1, list[i], &info), CKR_OK);
        KH_CHECK(info.flags == m->flags);
        KH_CHECK(info.ulMinKeySize == m->min_bits && info.ulMaxKeySize == m->max_bits);
        KH_CHECK(!(m->flags & CKF_HW));
        KH_CHECK(m->min_bits <= m->max_bits);

        bool sig = m->flags & (CKF_SIGN | CKF_VERIFY);
        if (sig) {
            KH_CHECK((m->flags & (CKF_SIGN | CKF_VERIFY)) == (CKF_SIGN | CKF_VERIFY));
            KH_CHECK(m->op != 0);
            KH_CHECK(m->algs != 0);
            KH_CHECK(!(m->flags & (CKF_DIGEST | CKF_GENERATE_KEY_PAIR)));
        } else {
            KH_CHECK(m->op == 0);
        }
        if (m->flags & CKF_DIGEST) {
            KH_CHECK(m->hash != KH_HASH_NONE);
            KH_CHECK(m->key_type == CK_UNAVAILABLE_INFORMATION);
            KH_CHECK(m->min_bits == 0 && m->max_bits == 0);
            KH_CHECK(m->param == NULL);
        }
        if (m->flags & CKF_GENERATE_KEY_PAIR) {
            KH_CHECK(m->hash == KH_HASH_NONE);
            KH_CHECK(m->param == NULL);
        }
        if (m->flags & (CKF_SIGN | CKF_GENERATE_KEY_PAIR)) {
            switch (m->key_type) {
            case CKK_EC:
                KH_CHECK(m->min_bits >= 256 && m->max_bits <= 384);
                KH_CHECK(!(m->algs & ~((1u << KH_ALG_SECP256K1) | (1u << KH_ALG_P256) |
                                       (1u << KH_ALG_P384))));
                break;
            case CKK_EC_EDWARDS:
                KH_CHECK(m->min_bits == 255 && m->max_bits == 255);
                KH_CHECK(m->algs == 1u << KH_ALG_ED25519);
                break;
            case CKK_RSA:
                KH_CHECK(m->min_bits == 2048 && m->max_bits == 4096);
                KH_CHECK(m->algs == 1u << KH_ALG_RSA);
                break;
            default:
                kh_test_fail(__FILE__, __LINE__, "0x%lx: unexpected key type", m->type);
            }
        }
        /* Operation/key-type pairs and parameters. */
        switch (m->op) {
        case KH_OP_ECDSA:
            KH_CHECK(m->key_type == CKK_EC && m->param == NULL);
            break;
        case KH_OP_ECDSA_RECOVER:
        case KH_OP_BIP340:
            KH_CHECK(m->key_type == CKK_EC && m->algs == 1u << KH_ALG_SECP256K1);
            KH_CHECK(m->hash == KH_HASH_NONE);
            break;
        case KH_OP_EDDSA:
            KH_CHECK(m->key_type == CKK_EC_EDWARDS && m->hash == KH_HASH_NONE);
            break;
        case KH_OP_RSA_PKCS:
            KH_CHECK(m->key_type == CKK_RSA && m->param == NULL);
            break;
        case KH_OP_RSA_PSS:
            KH_CHECK(m->key_type == CKK_RSA && m->param != NULL);
            break;
        }
    }
    free(list);

    const kh_mech *m = kh_mech_find(CKM_ECDSA_SHA384);
    KH_CHECK(m && m->hash == KH_HASH_SHA384);
    m = kh_mech_find(CKM_SHA512_RSA_PKCS);
    KH_CHECK(m && m->hash == KH_HASH_SHA512 && m->op == KH_OP_RSA_PKCS);
    m = kh_mech_find(CKM_ECDSA);
    KH_CHECK(m && m->hash == KH_HASH_NONE && m->algs == ((1u << KH_ALG_SECP256K1) |
                                                       (1u << KH_ALG_P256) | (1u << KH_ALG_P384)));
    m = kh_mech_find(CKM_EC_KEY_PAIR_GEN);
    KH_CHECK(m && (m->flags & (CKF_EC_F_P | CKF_EC_OID | CKF_EC_UNCOMPRESS)) ==
                      (CKF_EC_F_P | CKF_EC_OID | CKF_EC_UNCOMPRESS));

    CK_MECHANISM_INFO info;
    KH_CHECK_RV(kh_GetMechanismInfo(1, CKM_ECDSA, NULL), CKR_ARGUMENTS_BAD);
    KH_CHECK_RV(kh_GetMechanismInfo(1, CKM_SHA_1, &info), CKR_MECHANISM_INVALID);
    KH_CHECK_RV(kh_GetMechanismInfo(1, 0x80001234UL, &info), CKR_MECHANISM_INVALID);
}

/* An RSA key of the given modulus size (top bit set), for checks on size. */
static void rsa_key(kh_key *k, unsigned bits, CK_OBJECT_CLASS cls)
{
    memset(k, 0, sizeof *k);
    k->cls = cls;
    k->key_type = CKK_RSA;
    k->pub.alg = KH_ALG_RSA;
    size_t bytes = (bits + 7) / 8;
    if (bytes > KH_RSA_MAX_BYTES)
        bytes = KH_RSA_MAX_BYTES;
    k->pub.n_len = bytes;
    memset(k->pub.n, 0xA5, bytes);
    k->pub.n[0] = (uint8_t)(0xFFu >> ((8 - bits % 8) % 8));
    k->pub.n[0] |= (uint8_t)(0x80u >> ((8 - bits % 8) % 8));
    k->pub.e[0] = 1; k->pub.e[1] = 0; k->pub.e[2] = 1;
    k->pub.e_len = 3;
    k->can_sign = cls == CKO_PRIVATE_KEY;
    k->can_verify = cls == CKO_PUBLIC_KEY;
    k->backend = CKV_KH_BACKEND_VAULT;
}

static void ec_key(kh_key *k, kh_alg alg, CK_OBJECT_CLASS cls)
{
    memset(k, 0, sizeof *k);
    k->cls = cls;
    k->key_type = alg == KH_ALG_ED25519 ? CKK_EC_EDWARDS : CKK_EC;
    k->pub.alg = alg;
    k->can_sign = cls == CKO_PRIVATE_KEY;
    k->can_verify = cls == CKO_PUBLIC_KEY;
    k->backend = CKV_KH_BACKEND_VAULT;
}

static CK_RV param(CK_MECHANISM_TYPE type, void *p, CK_ULONG len, kh_sigparams *out,
                   const kh_key *key)
{
    const kh_mech *m = kh_mech_find(type);
    CK_MECHANISM mech = { type, p, len };
    memset(out, 0, sizeof *out);
    if (!m || !m->param)
        return CKR_GENERAL_ERROR;
    return m->param(&mech, out, key);
}

static void test_param_pss(void)
{
    kh_key k;
    kh_sigparams sp;
    rsa_key(&k, 2048, CKO_PRIVATE_KEY);
    CK_RSA_PKCS_PSS_PARAMS p = { CKM_SHA256, CKG_MGF1_SHA256, 32 };

    KH_CHECK_RV(param(CKM_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_OK);
    KH_CHECK(sp.pss_hash == KH_HASH_SHA256 && sp.pss_mgf_hash == KH_HASH_SHA256);
    KH_CHECK(sp.pss_salt_len == 32);
    KH_CHECK_RV(param(CKM_SHA256_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_OK);
    /* Required. */
    KH_CHECK_RV(param(CKM_RSA_PKCS_PSS, NULL, 0, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    KH_CHECK_RV(param(CKM_RSA_PKCS_PSS, &p, sizeof p - 1, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    KH_CHECK_RV(param(CKM_RSA_PKCS_PSS, NULL, sizeof p, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    /* Every listed hash for the raw mechanism, and mixed MGF hashes. */
    static const CK_MECHANISM_TYPE hashes[] = { CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384,
                                                CKM_SHA512 };
    for (size_t i = 0; i < 5; i++) {
        p.hashAlg = hashes[i];
        p.mgf = CKG_MGF1_SHA1;
        p.sLen = 20;
        KH_CHECK_RV(param(CKM_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_OK);
    }
    p.hashAlg = CKM_SHA3_256;
    KH_CHECK_RV(param(CKM_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    p.hashAlg = CKM_SHA256;
    p.mgf = CKG_MGF1_SHA3_256;
    KH_CHECK_RV(param(CKM_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    p.mgf = 0;
    KH_CHECK_RV(param(CKM_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    /* The hashing mechanisms insist on their own hash. */
    p.mgf = CKG_MGF1_SHA256;
    p.hashAlg = CKM_SHA384;
    KH_CHECK_RV(param(CKM_SHA256_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    KH_CHECK_RV(param(CKM_SHA384_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_OK);
    KH_CHECK_RV(param(CKM_SHA512_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    /* Salt: emLen = 256 for 2048 bits; SHA-256 leaves 256 - 32 - 2 = 222. */
    p.hashAlg = CKM_SHA256;
    p.sLen = 222;
    KH_CHECK_RV(param(CKM_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_OK);
    p.sLen = 223;
    KH_CHECK_RV(param(CKM_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    p.sLen = (CK_ULONG)-1;
    KH_CHECK_RV(param(CKM_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    /* 2049 bits: emLen is still 257 - ... = ceil(2048/8) = 256. */
    rsa_key(&k, 2049, CKO_PRIVATE_KEY);
    p.sLen = 222;
    KH_CHECK_RV(param(CKM_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_OK);
    p.sLen = 223;
    KH_CHECK_RV(param(CKM_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    /* 4096 bits, SHA-512: 512 - 64 - 2 = 446. */
    rsa_key(&k, 4096, CKO_PUBLIC_KEY);
    p.hashAlg = CKM_SHA512;
    p.mgf = CKG_MGF1_SHA512;
    p.sLen = 446;
    KH_CHECK_RV(param(CKM_SHA512_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_OK);
    p.sLen = 447;
    KH_CHECK_RV(param(CKM_SHA512_RSA_PKCS_PSS, &p, sizeof p, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
}

static void test_param_eddsa(void)
{
    kh_key k;
    kh_sigparams sp;
    ec_key(&k, KH_ALG_ED25519, CKO_PRIVATE_KEY);
    uint8_t ctx[4] = { 1, 2, 3, 4 };
    CK_EDDSA_PARAMS p = { CK_FALSE, 0, NULL };

    KH_CHECK_RV(param(CKM_EDDSA, NULL, 0, &sp, &k), CKR_OK);
    KH_CHECK_RV(param(CKM_EDDSA, &p, sizeof p, &sp, &k), CKR_OK);
    p.phFlag = CK_TRUE;
    KH_CHECK_RV(param(CKM_EDDSA, &p, sizeof p, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    p.phFlag = CK_FALSE;
    p.pContextData = ctx;
    p.ulContextDataLen = sizeof ctx;
    KH_CHECK_RV(param(CKM_EDDSA, &p, sizeof p, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    KH_CHECK_RV(param(CKM_EDDSA, &p, sizeof p + 1, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    KH_CHECK_RV(param(CKM_EDDSA, ctx, sizeof ctx, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    KH_CHECK_RV(param(CKM_EDDSA, NULL, sizeof p, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
}

static void test_param_bip340(void)
{
    kh_key k;
    kh_sigparams sp;
    uint8_t aux[33];
    memset(aux, 7, sizeof aux);
    ec_key(&k, KH_ALG_SECP256K1, CKO_PRIVATE_KEY);

    KH_CHECK_RV(param(CKM_KH_BIP340_SCHNORR, NULL, 0, &sp, &k), CKR_OK);
    KH_CHECK(sp.aux == NULL);
    KH_CHECK_RV(param(CKM_KH_BIP340_SCHNORR, aux, 32, &sp, &k), CKR_OK);
    KH_CHECK(sp.aux == aux);
    KH_CHECK_RV(param(CKM_KH_BIP340_SCHNORR, aux, 31, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    KH_CHECK_RV(param(CKM_KH_BIP340_SCHNORR, aux, 33, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    KH_CHECK_RV(param(CKM_KH_BIP340_SCHNORR, NULL, 32, &sp, &k), CKR_MECHANISM_PARAM_INVALID);
    /* A non-NULL pointer with length 0 is an empty parameter. */
    KH_CHECK_RV(param(CKM_KH_BIP340_SCHNORR, aux, 0, &sp, &k), CKR_OK);
    KH_CHECK(sp.aux == NULL);
}

static void test_check_key_ec(void)
{
    kh_key k1, k1pub, p256, p384, ed;
    ec_key(&k1, KH_ALG_SECP256K1, CKO_PRIVATE_KEY);
    ec_key(&k1pub, KH_ALG_SECP256K1, CKO_PUBLIC_KEY);
    ec_key(&p256, KH_ALG_P256, CKO_PRIVATE_KEY);
    ec_key(&p384, KH_ALG_P384, CKO_PUBLIC_KEY);
    ec_key(&ed, KH_ALG_ED25519, CKO_PRIVATE_KEY);
    const kh_mech *ecdsa = kh_mech_find(CKM_ECDSA);
    const kh_mech *ecdsa256 = kh_mech_find(CKM_ECDSA_SHA256);
    const kh_mech *bip = kh_mech_find(CKM_KH_BIP340_SCHNORR);
    const kh_mech *rec = kh_mech_find(CKM_KH_ECDSA_RECOVERABLE);
    const kh_mech *eddsa = kh_mech_find(CKM_EDDSA);
    const kh_mech *rsa = kh_mech_find(CKM_RSA_PKCS);

    KH_CHECK_RV(kh_mech_check_key(ecdsa, &k1, CKF_SIGN), CKR_OK);
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &p256, CKF_SIGN), CKR_OK);
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &p384, CKF_VERIFY), CKR_OK);
    KH_CHECK_RV(kh_mech_check_key(ecdsa256, &k1, CKF_SIGN), CKR_OK);
    KH_CHECK_RV(kh_mech_check_key(bip, &k1, CKF_SIGN), CKR_OK);
    KH_CHECK_RV(kh_mech_check_key(rec, &k1, CKF_SIGN), CKR_OK);
    KH_CHECK_RV(kh_mech_check_key(bip, &k1pub, CKF_VERIFY), CKR_OK);
    KH_CHECK_RV(kh_mech_check_key(eddsa, &ed, CKF_SIGN), CKR_OK);

    /* Wrong curve or key type. */
    KH_CHECK_RV(kh_mech_check_key(bip, &p256, CKF_SIGN), CKR_KEY_TYPE_INCONSISTENT);
    KH_CHECK_RV(kh_mech_check_key(rec, &p384, CKF_VERIFY), CKR_KEY_TYPE_INCONSISTENT);
    KH_CHECK_RV(kh_mech_check_key(eddsa, &k1, CKF_SIGN), CKR_KEY_TYPE_INCONSISTENT);
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &ed, CKF_SIGN), CKR_KEY_TYPE_INCONSISTENT);
    KH_CHECK_RV(kh_mech_check_key(rsa, &k1, CKF_SIGN), CKR_KEY_TYPE_INCONSISTENT);
    kh_key odd = k1;
    odd.key_type = CKK_EC;
    odd.pub.alg = KH_ALG_ED25519;   /* type says EC, material says Ed25519 */
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &odd, CKF_SIGN), CKR_KEY_TYPE_INCONSISTENT);
    odd = k1;
    odd.pub.alg = KH_ALG_NONE;
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &odd, CKF_SIGN), CKR_KEY_TYPE_INCONSISTENT);
    odd = k1;
    odd.cls = CKO_SECRET_KEY;
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &odd, CKF_SIGN), CKR_KEY_TYPE_INCONSISTENT);

    /* CKA_SIGN / CKA_VERIFY. */
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &k1, CKF_VERIFY), CKR_KEY_FUNCTION_NOT_PERMITTED);
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &k1pub, CKF_SIGN), CKR_KEY_FUNCTION_NOT_PERMITTED);
    odd = k1;
    odd.can_sign = false;
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &odd, CKF_SIGN), CKR_KEY_FUNCTION_NOT_PERMITTED);
    odd = k1;
    odd.can_verify = true;   /* a private key that may verify */
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &odd, CKF_VERIFY), CKR_OK);
    odd = k1pub;
    odd.can_sign = true;     /* a public key never signs */
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &odd, CKF_SIGN), CKR_KEY_TYPE_INCONSISTENT);

    /* CKA_ALLOWED_MECHANISMS. */
    CK_MECHANISM_TYPE allowed[] = { CKM_ECDSA, CKM_KH_BIP340_SCHNORR };
    odd = k1;
    odd.allowed = allowed;
    odd.nallowed = 2;
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &odd, CKF_SIGN), CKR_OK);
    KH_CHECK_RV(kh_mech_check_key(bip, &odd, CKF_SIGN), CKR_OK);
    KH_CHECK_RV(kh_mech_check_key(ecdsa256, &odd, CKF_SIGN), CKR_MECHANISM_INVALID);
    KH_CHECK_RV(kh_mech_check_key(rec, &odd, CKF_SIGN), CKR_MECHANISM_INVALID);
    odd.nallowed = 0;   /* an empty list allows nothing */
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &odd, CKF_SIGN), CKR_MECHANISM_INVALID);

    /* Mechanisms that do not sign, and bad purposes. */
    KH_CHECK_RV(kh_mech_check_key(kh_mech_find(CKM_SHA256), &k1, CKF_SIGN), CKR_MECHANISM_INVALID);
    KH_CHECK_RV(kh_mech_check_key(kh_mech_find(CKM_EC_KEY_PAIR_GEN), &k1, CKF_SIGN),
                CKR_MECHANISM_INVALID);
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &k1, CKF_DIGEST), CKR_MECHANISM_INVALID);
    KH_CHECK_RV(kh_mech_check_key(ecdsa, &k1, CKF_SIGN | CKF_VERIFY), CKR_MECHANISM_INVALID);
    KH_CHECK_RV(kh_mech_check_key(NULL, &k1, CKF_SIGN), CKR_ARGUMENTS_BAD);
    KH_CHECK_RV(kh_mech_check_key(ecdsa, NULL, CKF_SIGN), CKR_ARGUMENTS_BAD);
}

static void test_check_key_rsa(void)
{
    kh_key k;
    static const CK_MECHANISM_TYPE rsa_mechs[] = {
        CKM_RSA_PKCS, CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS, CKM_SHA512_RSA_PKCS,
        CKM_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS_PSS, CKM_SHA384_RSA_PKCS_PSS,
        CKM_SHA512_RSA_PKCS_PSS,
    };
    for (size_t i = 0; i < sizeof rsa_mechs / sizeof rsa_mechs[0]; i++) {
        const kh_mech *m = kh_mech_find(rsa_mechs[i]);
        KH_CHECK(m != NULL);
        rsa_key(&k, 2048, CKO_PRIVATE_KEY);
        KH_CHECK_RV(kh_mech_check_key(m, &k, CKF_SIGN), CKR_OK);
        rsa_key(&k, 3072, CKO_PUBLIC_KEY);
        KH_CHECK_RV(kh_mech_check_key(m, &k, CKF_VERIFY), CKR_OK);
        rsa_key(&k, 4096, CKO_PRIVATE_KEY);
        KH_CHECK_RV(kh_mech_check_key(m, &k, CKF_SIGN), CKR_OK);
        rsa_key(&k, 2047, CKO_PRIVATE_KEY);
        KH_CHECK_RV(kh_mech_check_key(m, &k, CKF_SIGN), CKR_KEY_SIZE_RANGE);
        rsa_key(&k, 1024, CKO_PUBLIC_KEY);
        KH_CHECK_RV(kh_mech_check_key(m, &k, CKF_VERIFY), CKR_KEY_SIZE_RANGE);
        /* A modulus written with a leading zero byte counts by its value. */
        rsa_key(&k, 2048, CKO_PRIVATE_KEY);
        memmove(k.pub.n + 1, k.pub.n, 256);
        k.pub.n[0] = 0;
        k.pub.n_len = 257;
        KH_CHECK_RV(kh_mech_check_key(m, &k, CKF_SIGN), CKR_OK);
        KH_CHECK_RV(kh_mech_check_key(m, &k, CKF_VERIFY), CKR_KEY_FUNCTION_NOT_PERMITTED);
    }
    /* An RSA key with an empty modulus is not in range. */
    rsa_key(&k, 2048, CKO_PRIVATE_KEY);
    k.pub.n_len = 0;
    KH_CHECK_RV(kh_mech_check_key(kh_mech_find(CKM_RSA_PKCS), &k, CKF_SIGN), CKR_KEY_SIZE_RANGE);
}

int main(int argc, char **argv)
{
    kh_test_register("/mech/list", test_list);
    kh_test_register("/mech/rows", test_rows);
    kh_test_register("/mech/param/pss", test_param_pss);
    kh_test_register("/mech/param/eddsa", test_param_eddsa);
    kh_test_register("/mech/param/bip340", test_param_bip340);
    kh_test_register("/mech/check_key/ec", test_check_key_ec);
    kh_test_register("/mech/check_key/rsa", test_check_key_rsa);
    return kh_test_run(argc, argv);
}

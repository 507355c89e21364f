/*
 * The mechanism table: one row per mechanism keyhold implements, with what
 * C_GetMechanismInfo reports (flags, key sizes in bits), which key type and
 * algorithms it works with, the signature operation and the hash the module
 * runs before it, and a validator for its parameter. Everything the sign,
 * verify, digest and key-generation paths need to know about a mechanism is
 * read from here.
 */
#include <string.h>

#include "internal.h"

#define ALG(a) (1u << (a))
#define ALGS_EC (ALG(KH_ALG_SECP256K1) | ALG(KH_ALG_P256) | ALG(KH_ALG_P384))
#define ALGS_K1 ALG(KH_ALG_SECP256K1)
#define ALGS_ED ALG(KH_ALG_ED25519)
#define ALGS_RSA ALG(KH_ALG_RSA)

#define EC_FLAGS (CKF_EC_F_P | CKF_EC_OID | CKF_EC_UNCOMPRESS)
#define SIGVER (CKF_SIGN | CKF_VERIFY)

/* Modulus length in bits of an RSA public key (0 if none). */
static CK_ULONG rsa_bits(const kh_pubkey *pub)
{
    size_t i = 0;
    while (i < pub->n_len && pub->n[i] == 0)
        i++;
    if (i == pub->n_len)
        return 0;
    CK_ULONG bits = (CK_ULONG)(pub->n_len - i - 1) * 8;
    for (unsigned b = pub->n[i]; b; b >>= 1)
        bits++;
    return bits;
}

/* The kh_hash of a CKM_SHA* digest mechanism, or KH_HASH_NONE. */
static kh_hash hash_from_ckm(CK_MECHANISM_TYPE t)
{
    switch (t) {
    case CKM_SHA_1: return KH_HASH_SHA1;
    case CKM_SHA224: return KH_HASH_SHA224;
    case CKM_SHA256: return KH_HASH_SHA256;
    case CKM_SHA384: return KH_HASH_SHA384;
    case CKM_SHA512: return KH_HASH_SHA512;
    default: return KH_HASH_NONE;
    }
}

static kh_hash hash_from_mgf(CK_RSA_PKCS_MGF_TYPE mgf)
{
    switch (mgf) {
    case CKG_MGF1_SHA1: return KH_HASH_SHA1;
    case CKG_MGF1_SHA224: return KH_HASH_SHA224;
    case CKG_MGF1_SHA256: return KH_HASH_SHA256;
    case CKG_MGF1_SHA384: return KH_HASH_SHA384;
    case CKG_MGF1_SHA512: return KH_HASH_SHA512;
    default: return KH_HASH_NONE;
    }
}

/*
 * CK_RSA_PKCS_PSS_PARAMS (required). hashAlg is one of SHA-1/224/256/384/512
 * and, for the CKM_SHAxxx_RSA_PKCS_PSS mechanisms, the mechanism's own hash;
 * mgf is an MGF1 with one of those hashes; sLen fits the modulus
 * (emLen >= hLen + sLen + 2, RFC 8017 9.1.1) when the key is known.
 */
static CK_RV param_pss(const CK_MECHANISM *m, kh_sigparams *out, const kh_key *key)
{
    CK_RSA_PKCS_PSS_PARAMS p;
    if (!m->pParameter || m->ulParameterLen != sizeof p)
        return CKR_MECHANISM_PARAM_INVALID;
    memcpy(&p, m->pParameter, sizeof p);

    kh_hash h = hash_from_ckm(p.hashAlg);
    kh_hash mgf = hash_from_mgf(p.mgf);
    if (h == KH_HASH_NONE || mgf == KH_HASH_NONE)
        return CKR_MECHANISM_PARAM_INVALID;
    const kh_mech *mech = kh_mech_find(m->mechanism);
    if (mech && mech->hash != KH_HASH_NONE && mech->hash != h)
        return CKR_MECHANISM_PARAM_INVALID;

    size_t hlen = kh_hash_len(h);
    if (p.sLen > KH_RSA_MAX_BYTES)
        return CKR_MECHANISM_PARAM_INVALID;
    if (key && key->pub.alg == KH_ALG_RSA) {
        CK_ULONG bits = rsa_bits(&key->pub);
        size_t em_len = bits ? (size_t)(bits - 1 + 7) / 8 : 0;
        if (em_len < hlen + p.sLen + 2)
            return CKR_MECHANISM_PARAM_INVALID;
    }
    out->pss_hash = h;
    out->pss_mgf_hash = mgf;
    out->pss_salt_len = p.sLen;
    return CKR_OK;
}

/*
 * CK_EDDSA_PARAMS (optional). Only pure Ed25519 is implemented, so a
 * parameter asking for Ed25519ph (phFlag) or Ed25519ctx (a context) is refused.
 */
static CK_RV param_eddsa(const CK_MECHANISM *m, kh_sigparams *out, const kh_key *key)
{
    (void)out;
    (void)key;
    if (m->ulParameterLen == 0)
        return CKR_OK;
    CK_EDDSA_PARAMS p;
    if (!m->pParameter || m->ulParameterLen != sizeof p)
        return CKR_MECHANISM_PARAM_INVALID;
    memcpy(&p, m->pParameter, sizeof p);
    if (p.phFlag != CK_FALSE || p.ulContextDataLen != 0)
        return CKR_MECHANISM_PARAM_INVALID;
    return CKR_OK;
}

/* BIP-340: no parameter, or exactly 32 bytes of aux_rand. out->aux points into
 * the caller's mechanism: whoever keeps params past the call copies it. */
static CK_RV param_bip340(const CK_MECHANISM *m, kh_sigparams *out, const kh_key *key)
{
    (void)key;
    if (m->ulParameterLen == 0) {
        out->aux = NULL;
        return CKR_OK;
    }
    if (!m->pParameter || m->ulParameterLen != 32)
        return CKR_MECHANISM_PARAM_INVALID;
    out->aux = m->pParameter;
    return CKR_OK;
}

static const kh_mech mechs[] = {
    /* key generation */
    { .type = CKM_EC_KEY_PAIR_GEN, .flags = CKF_GENERATE_KEY_PAIR | EC_FLAGS,
      .min_bits = 256, .max_bits = 384, .key_type = CKK_EC, .algs = ALGS_EC },
    { .type = CKM_EC_EDWARDS_KEY_PAIR_GEN,
      .flags = CKF_GENERATE_KEY_PAIR | CKF_EC_F_P | CKF_EC_OID | CKF_EC_CURVENAME,
      .min_bits = 255, .max_bits = 255, .key_type = CKK_EC_EDWARDS, .algs = ALGS_ED },
    { .type = CKM_RSA_PKCS_KEY_PAIR_GEN, .flags = CKF_GENERATE_KEY_PAIR,
      .min_bits = 2048, .max_bits = 4096, .key_type = CKK_RSA, .algs = ALGS_RSA },

    /* ECDSA */
    { .type = CKM_ECDSA, .flags = SIGVER | EC_FLAGS, .min_bits = 256, .max_bits = 384,
      .key_type = CKK_EC, .op = KH_OP_ECDSA, .hash = KH_HASH_NONE, .algs = ALGS_EC },
    { .type = CKM_ECDSA_SHA256, .flags = SIGVER | EC_FLAGS, .min_bits = 256, .max_bits = 384,
      .key_type = CKK_EC, .op = KH_OP_ECDSA, .hash = KH_HASH_SHA256, .algs = ALGS_EC },
    { .type = CKM_ECDSA_SHA384, .flags = SIGVER | EC_FLAGS, .min_bits = 256, .max_bits = 384,
      .key_type = CKK_EC, .op = KH_OP_ECDSA, .hash = KH_HASH_SHA384, .algs = ALGS_EC },
    { .type = CKM_ECDSA_SHA512, .flags = SIGVER | EC_FLAGS, .min_bits = 256, .max_bits = 384,
      .key_type = CKK_EC, .op = KH_OP_ECDSA, .hash = KH_HASH_SHA512, .algs = ALGS_EC },

    /* secp256k1 vendor mechanisms */
    { .type = CKM_KH_BIP340_SCHNORR, .flags = SIGVER | EC_FLAGS, .min_bits = 256, .max_bits = 256,
      .key_type = CKK_EC, .op = KH_OP_BIP340, .hash = KH_HASH_NONE, .algs = ALGS_K1,
      .param = param_bip340 },
    { .type = CKM_KH_ECDSA_RECOVERABLE, .flags = SIGVER | EC_FLAGS, .min_bits = 256, .max_bits = 256,
      .key_type = CKK_EC, .op = KH_OP_ECDSA_RECOVER, .hash = KH_HASH_NONE, .algs = ALGS_K1 },

    /* Ed25519 */
    { .type = CKM_EDDSA, .flags = SIGVER, .min_bits = 255, .max_bits = 255,
      .key_type = CKK_EC_EDWARDS, .op = KH_OP_EDDSA, .hash = KH_HASH_NONE, .algs = ALGS_ED,
      .param = param_eddsa },

    /* RSA PKCS#1 v1.5 */
    { .type = CKM_RSA_PKCS, .flags = SIGVER, .min_bits = 2048, .max_bits = 4096,
      .key_type = CKK_RSA, .op = KH_OP_RSA_PKCS, .hash = KH_HASH_NONE, .algs = ALGS_RSA },
    { .type = CKM_SHA256_RSA_PKCS, .flags = SIGVER, .min_bits = 2048, .max_bits = 4096,
      .key_type = CKK_RSA, .op = KH_OP_RSA_PKCS, .hash = KH_HASH_SHA256, .algs = ALGS_RSA },
    { .type = CKM_SHA384_RSA_PKCS, .flags = SIGVER, .min_bits = 2048, .max_bits = 4096,
      .key_type = CKK_RSA, .op = KH_OP_RSA_PKCS, .hash = KH_HASH_SHA384, .algs = ALGS_RSA },
    { .type = CKM_SHA512_RSA_PKCS, .flags = SIGVER, .min_bits = 2048, .max_bits = 4096,
      .key_type = CKK_RSA, .op = KH_OP_RSA_PKCS, .hash = KH_HASH_SHA512, .algs = ALGS_RSA },

    /* RSA PSS */
    { .type = CKM_RSA_PKCS_PSS, .flags = SIGVER, .min_bits = 2048, .max_bits = 4096,
      .key_type = CKK_RSA, .op = KH_OP_RSA_PSS, .hash = KH_HASH_NONE, .algs = ALGS_RSA,
      .param = param_pss },
    { .type = CKM_SHA256_RSA_PKCS_PSS, .flags = SIGVER, .min_bits = 2048, .max_bits = 4096,
      .key_type = CKK_RSA, .op = KH_OP_RSA_PSS, .hash = KH_HASH_SHA256, .algs = ALGS_RSA,
      .param = param_pss },
    { .type = CKM_SHA384_RSA_PKCS_PSS, .flags = SIGVER, .min_bits = 2048, .max_bits = 4096,
      .key_type = CKK_RSA, .op = KH_OP_RSA_PSS, .hash = KH_HASH_SHA384, .algs = ALGS_RSA,
      .param = param_pss },
    { .type = CKM_SHA512_RSA_PKCS_PSS, .flags = SIGVER, .min_bits = 2048, .max_bits = 4096,
      .key_type = CKK_RSA, .op = KH_OP_RSA_PSS, .hash = KH_HASH_SHA512, .algs = ALGS_RSA,
      .param = param_pss },

    /* digests */
    { .type = CKM_SHA256, .flags = CKF_DIGEST, .key_type = CK_UNAVAILABLE_INFORMATION,
      .hash = KH_HASH_SHA256 },
    { .type = CKM_SHA384, .flags = CKF_DIGEST, .key_type = CK_UNAVAILABLE_INFORMATION,
      .hash = KH_HASH_SHA384 },
    { .type = CKM_SHA512, .flags = CKF_DIGEST, .key_type = CK_UNAVAILABLE_INFORMATION,
      .hash = KH_HASH_SHA512 },
};

#define NMECHS (sizeof mechs / sizeof mechs[0])

const kh_mech *kh_mech_find(CK_MECHANISM_TYPE type)
{
    for (size_t i = 0; i < NMECHS; i++)
        if (mechs[i].type == type)
            return &mechs[i];
    return NULL;
}

/*
 * May key be used with mechanism m for purpose (CKF_SIGN or CKF_VERIFY)?
 * Checked in this order: the mechanism does that purpose
 * (CKR_MECHANISM_INVALID); key type and algorithm fit
 * (CKR_KEY_TYPE_INCONSISTENT); the key's CKA_SIGN / CKA_VERIFY
 * (CKR_KEY_FUNCTION_NOT_PERMITTED); CKA_ALLOWED_MECHANISMS
 * (CKR_MECHANISM_INVALID); the RSA modulus size (CKR_KEY_SIZE_RANGE).
 */
CK_RV kh_mech_check_key(const kh_mech *m, const kh_key *key, CK_FLAGS purpose)
{
    if (!m || !key)
        return CKR_ARGUMENTS_BAD;
    if ((purpose != CKF_SIGN && purpose != CKF_VERIFY) || !(m->flags & purpose))
        return CKR_MECHANISM_INVALID;
    if (key->cls != CKO_PRIVATE_KEY && key->cls != CKO_PUBLIC_KEY)
        return CKR_KEY_TYPE_INCONSISTENT;
    if (key->key_type != m->key_type)
        return CKR_KEY_TYPE_INCONSISTENT;
    if ((unsigned)key->pub.alg >= 32 || !(m->algs & ALG(key->pub.alg)))
        return CKR_KEY_TYPE_INCONSISTENT;
    if (purpose == CKF_SIGN && !key->can_sign)
        return CKR_KEY_FUNCTION_NOT_PERMITTED;
    if (purpose == CKF_VERIFY && !key->can_verify)
        return CKR_KEY_FUNCTION_NOT_PERMITTED;
    /* A public key cannot sign, whatever its attributes say. */
    if (purpose == CKF_SIGN && key->cls != CKO_PRIVATE_KEY)
        return CKR_KEY_TYPE_INCONSISTENT;
    if (key->allowed) {
        size_t i;
        for (i = 0; i < key->nallowed; i++)
            if (key->allowed[i] == m->type)
                break;
        if (i == key->nallowed)
            return CKR_MECHANISM_INVALID;
    }
    if (key->pub.alg == KH_ALG_RSA) {
        CK_ULONG bits = rsa_bits(&key->pub);
        if (bits < m->min_bits || bits > m->max_bits)
            return CKR_KEY_SIZE_RANGE;
    }
    return CKR_OK;
}

/* C_GetMechanismList body: the caller has checked initialisation and slot id. */
CK_RV kh_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count)
{
    CK_MECHANISM_TYPE types[NMECHS];
    (void)slot;
    for (size_t i = 0; i < NMECHS; i++)
        types[i] = mechs[i].type;
    return kh_out_ulongs(list, count, types, NMECHS);
}

/*
 * C_GetMechanismInfo body: the caller has checked initialisation. The slot
 * is resolved here, once (CKR_SLOT_ID_INVALID for an unknown one): a token
 * whose new keys go to a backend with its own limits (a TPM) reports what
 * that backend can do, and the free slot's new token would get the
 * configured default backend. Before C_Initialize (the unit tests) the
 * table alone answers.
 */
CK_RV kh_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info)
{
    kh_token *tok = NULL;
    if (kh_mod.initialized) {
        CK_RV rv = kh_token_get(&tok, slot, false);
        if (rv != CKR_OK)
            return rv;
    }
    if (!info)
        return CKR_ARGUMENTS_BAD;
    const kh_mech *m = kh_mech_find(type);
    if (!m)
        return CKR_MECHANISM_INVALID;
    info->ulMinKeySize = m->min_bits;
    info->ulMaxKeySize = m->max_bits;
    info->flags = m->flags;
    if (!tok)
        return CKR_OK;
    CK_ULONG backend = tok->rec.id ? tok->rec.default_backend : kh_mod.cfg.default_backend;
    const kh_backend_ops *be = kh_backend_get(backend);
    if (be && be->mech_info)
        return be->mech_info(tok, type, info);
    return CKR_OK;
}

/*
 * The tpm backend: private keys live in the TPM, stored as wrapped blobs
 * (TPM2B_PUBLIC + TPM2B_PRIVATE under a primary), and sign in the TPM.
 *
 * Each key gets a random 32-byte auth value (noDA: a 256-bit secret needs no
 * dictionary-attack protection) which is kept with the blobs inside the
 * object's sealed blob, under the token key: only a logged-in user can use
 * a TPM key. A warm key signs with exactly one TPM command, TPM2_Sign with
 * the auth value in a password session; a cold one is TPM2_Load-ed first
 * (conn.c keeps an LRU of loaded keys). A handle that another process
 * flushed and reused can never make us return a signature by another key:
 * with a key's own random 256-bit auth value, TPM2_Sign succeeds only on
 * that key (another object fails the auth check, and the key is reloaded);
 * keys with a guessable auth value (adopted ones, usually empty) have every
 * signature verified in software against the object's public key before it
 * is returned.
 *
 * Optional PCR policy (CKA_KH_TPM_PCR_POLICY, "sha256:7"): the key's
 * authPolicy is PolicyPCR(selection, values at creation) then PolicyPassword,
 * and it has no userWithAuth, so it signs only through a policy session
 * while those PCRs hold their creation values (otherwise
 * CKR_KEY_FUNCTION_NOT_PERMITTED).
 *
 * Adopting existing keys (C_CreateObject with CKA_KH_TPM_PUBLIC and
 * CKA_KH_TPM_PRIVATE, as `tpm2_create -u key.pub -r key.priv` writes them):
 * the key is loaded under its parent and signs once with the given auth
 * (CKA_KH_TPM_AUTH, default empty) before the object is made.
 *
 * Token services: PIN sealing (a keyedhash object per PIN, under the
 * primary, whose auth value is derived from the PIN and which is not noDA,
 * so wrong PINs count against the TPM's dictionary-attack lockout; usable
 * only through a PolicyAuthValue + PolicyOR(own branch) session, salted and
 * encrypting the response) and TPM2_GetRandom.
 */
#include "tpm.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tss2/tss2_mu.h>

#define KH_TPM_AUTH_LEN 32
#define KH_TPM_SECRET_LEN 32
/* Sign attempts: a stale handle (another process flushed it, even between
 * our load and sign) and a lost connection each cost one. */
#define KH_TPM_SIGN_TRIES 8
#define KH_TPM_SESSION_TRIES 20
/* Unseal attempts: each may lose its object to another process without a resource manager. */
#define KH_TPM_UNSEAL_TRIES 10

static const TPMT_TK_HASHCHECK null_ticket = { .tag = TPM2_ST_HASHCHECK, .hierarchy = TPM2_RH_NULL };

/* ---- finishers ---- */

struct create_args {
    TPM2B_PRIVATE *priv;
    TPM2B_PUBLIC *pub;
    TPM2B_CREATION_DATA *cdata;
    TPM2B_DIGEST *chash;
    TPMT_TK_CREATION *ticket;
};

static TSS2_RC fin_create(ESYS_CONTEXT *e, void *arg)
{
    struct create_args *a = arg;
    return Esys_Create_Finish(e, &a->priv, &a->pub, &a->cdata, &a->chash, &a->ticket);
}

static void create_args_free(struct create_args *a)
{
    Esys_Free(a->priv);
    Esys_Free(a->pub);
    Esys_Free(a->cdata);
    Esys_Free(a->chash);
    Esys_Free(a->ticket);
    memset(a, 0, sizeof *a);
}

static TSS2_RC fin_sign(ESYS_CONTEXT *e, void *arg)
{
    return Esys_Sign_Finish(e, arg);
}

static TSS2_RC fin_session(ESYS_CONTEXT *e, void *arg)
{
    return Esys_StartAuthSession_Finish(e, arg);
}

static TSS2_RC fin_policy_pcr(ESYS_CONTEXT *e, void *arg)
{
    (void)arg;
    return Esys_PolicyPCR_Finish(e);
}

static TSS2_RC fin_policy_password(ESYS_CONTEXT *e, void *arg)
{
    (void)arg;
    return Esys_PolicyPassword_Finish(e);
}

static TSS2_RC fin_policy_digest(ESYS_CONTEXT *e, void *arg)
{
    return Esys_PolicyGetDigest_Finish(e, arg);
}

static TSS2_RC fin_unseal(ESYS_CONTEXT *e, void *arg)
{
    return Esys_Unseal_Finish(e, arg);
}

static TSS2_RC fin_random(ESYS_CONTEXT *e, void *arg)
{
    return Esys_GetRandom_Finish(e, arg);
}

/* ---- sessions ---- */

/*
 * Start a session of type (TPM2_SE_POLICY or TPM2_SE_TRIAL). salt_key, when
 * not ESYS_TR_NONE, salts it and turns on AES-128-CFB encryption of the
 * response's first parameter (the unsealed secret never crosses the bus in
 * clear). Retries while the TPM has no session slot free.
 */
static TSS2_RC session_start_locked(ESYS_TR *out, TPM2_SE type, ESYS_TR salt_key)
{
    TPMT_SYM_DEF sym = { .algorithm = TPM2_ALG_NULL };
    if (salt_key != ESYS_TR_NONE) {
        sym.algorithm = TPM2_ALG_AES;
        sym.keyBits.aes = 128;
        sym.mode.aes = TPM2_ALG_CFB;
    }
    for (unsigned attempt = 0;; attempt++) {
        ESYS_CONTEXT *e = kh_tpm_esys_locked();
        if (!e)
            return TSS2_TCTI_RC_IO_ERROR;
        *out = ESYS_TR_NONE;
        TSS2_RC rc = kh_tpm_run_locked(Esys_StartAuthSession_Async(e, salt_key, ESYS_TR_NONE, ESYS_TR_NONE,
                                                                   ESYS_TR_NONE, ESYS_TR_NONE, NULL, type, &sym,
                                                                   TPM2_ALG_SHA256),
                                       fin_session, out, kh_tpm_timeout_ms(), "TPM2_StartAuthSession");
        if (rc == TSS2_RC_SUCCESS) {
            if (salt_key != ESYS_TR_NONE)
                rc = Esys_TRSess_SetAttributes(e, *out, TPMA_SESSION_ENCRYPT | TPMA_SESSION_CONTINUESESSION,
                                               0xff);
            return rc;
        }
        if (kh_tpm_rc_base(rc) == TPM2_RC_SESSION_MEMORY && attempt < KH_TPM_SESSION_TRIES) {
            struct timespec ts = { 0, 5 * 1000000L };
            nanosleep(&ts, NULL);
            continue;
        }
        return rc;
    }
}

static TSS2_RC policy_pcr_locked(ESYS_TR s, const TPML_PCR_SELECTION *pcrs)
{
    TPM2B_DIGEST empty = { .size = 0 };
    ESYS_CONTEXT *e = kh_tpm_esys_locked();
    return kh_tpm_run_locked(Esys_PolicyPCR_Async(e, s, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &empty, pcrs),
                             fin_policy_pcr, NULL, kh_tpm_timeout_ms(), "TPM2_PolicyPCR");
}

static TSS2_RC policy_password_locked(ESYS_TR s)
{
    ESYS_CONTEXT *e = kh_tpm_esys_locked();
    return kh_tpm_run_locked(Esys_PolicyPassword_Async(e, s, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE),
                             fin_policy_password, NULL, kh_tpm_timeout_ms(), "TPM2_PolicyPassword");
}

static TSS2_RC fin_policy_auth_value(ESYS_CONTEXT *e, void *arg)
{
    (void)arg;
    return Esys_PolicyAuthValue_Finish(e);
}

static TSS2_RC policy_auth_value_locked(ESYS_TR s)
{
    ESYS_CONTEXT *e = kh_tpm_esys_locked();
    return kh_tpm_run_locked(Esys_PolicyAuthValue_Async(e, s, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE),
                             fin_policy_auth_value, NULL, kh_tpm_timeout_ms(), "TPM2_PolicyAuthValue");
}

/* The authPolicy of PCR keys: PolicyPCR(pcrs, now) then PolicyPassword, from a trial session. */
static TSS2_RC pcr_policy_digest_locked(TPM2B_DIGEST *out, const TPML_PCR_SELECTION *pcrs)
{
    ESYS_TR s;
    TSS2_RC rc = session_start_locked(&s, TPM2_SE_TRIAL, ESYS_TR_NONE);
    if (rc != TSS2_RC_SUCCESS)
        return rc;
    rc = policy_pcr_locked(s, pcrs);
    if (rc == TSS2_RC_SUCCESS)
        rc = policy_password_locked(s);
    if (rc == TSS2_RC_SUCCESS) {
        TPM2B_DIGEST *d = NULL;
        ESYS_CONTEXT *e = kh_tpm_esys_locked();
        rc = kh_tpm_run_locked(Esys_PolicyGetDigest_Async(e, s, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE),
                               fin_policy_digest, &d, kh_tpm_timeout_ms(), "TPM2_PolicyGetDigest");
        if (rc == TSS2_RC_SUCCESS)
            *out = *d;
        Esys_Free(d);
    }
    kh_tpm_flush_locked(s);
    return rc;
}

/* PolicyAuthValue's digest from the empty policy: H(0...0 || TPM_CC_PolicyAuthValue)
 * (TPM 2.0 Part 3, 23.18; PolicyPassword gives the same). */
static CK_RV auth_value_digest(TPM2B_DIGEST *out)
{
    uint8_t in[32 + 4] = { 0 };
    in[32] = (uint8_t)(TPM2_CC_PolicyAuthValue >> 24);
    in[33] = (uint8_t)(TPM2_CC_PolicyAuthValue >> 16);
    in[34] = (uint8_t)(TPM2_CC_PolicyAuthValue >> 8);
    in[35] = (uint8_t)TPM2_CC_PolicyAuthValue;
    out->size = 32;
    return kh_hash_oneshot(out->buffer, KH_HASH_SHA256, in, sizeof in);
}

/* The authPolicy of a PIN-seal object: PolicyOR(PolicyAuthValue, branch),
 * H(0...0 || TPM_CC_PolicyOR || d(PolicyAuthValue) || branch) (Part 3, 23.6). */
static CK_RV seal_policy_digest(TPM2B_DIGEST *out, const TPM2B_DIGEST *branch)
{
    TPM2B_DIGEST av;
    uint8_t in[32 + 4 + 64] = { 0 };
    CK_RV rv = auth_value_digest(&av);
    if (rv != CKR_OK)
        return rv;
    in[32] = (uint8_t)(TPM2_CC_PolicyOR >> 24);
    in[33] = (uint8_t)(TPM2_CC_PolicyOR >> 16);
    in[34] = (uint8_t)(TPM2_CC_PolicyOR >> 8);
    in[35] = (uint8_t)TPM2_CC_PolicyOR;
    memcpy(in + 36, av.buffer, 32);
    memcpy(in + 68, branch->buffer, 32);
    out->size = 32;
    return kh_hash_oneshot(out->buffer, KH_HASH_SHA256, in, sizeof in);
}

static TSS2_RC fin_policy_or(ESYS_CONTEXT *e, void *arg)
{
    (void)arg;
    return Esys_PolicyOR_Finish(e);
}

/* PolicyOR over this seal object's two branches (after PolicyAuthValue). */
static TSS2_RC policy_or_locked(ESYS_TR s, const TPM2B_DIGEST *branch)
{
    TPML_DIGEST list = { .count = 2 };
    if (auth_value_digest(&list.digests[0]) != CKR_OK)
        return TSS2_ESYS_RC_MEMORY;
    list.digests[1] = *branch;
    ESYS_CONTEXT *e = kh_tpm_esys_locked();
    return kh_tpm_run_locked(Esys_PolicyOR_Async(e, s, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &list),
                             fin_policy_or, NULL, kh_tpm_timeout_ms(), "TPM2_PolicyOR");
}

/* ---- templates ---- */

static void key_template(TPM2B_PUBLIC *t, kh_alg alg, unsigned bits, const TPM2B_DIGEST *policy)
{
    memset(t, 0, sizeof *t);
    TPMT_PUBLIC *p = &t->publicArea;
    p->nameAlg = TPM2_ALG_SHA256;
    p->objectAttributes = TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                          TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_NODA;
    if (policy)
        p->authPolicy = *policy;
    else
        p->objectAttributes |= TPMA_OBJECT_USERWITHAUTH;
    if (alg == KH_ALG_RSA) {
        p->type = TPM2_ALG_RSA;
        p->parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
        p->parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
        p->parameters.rsaDetail.keyBits = (UINT16)bits;
        p->parameters.rsaDetail.exponent = 0;
    } else {
        p->type = TPM2_ALG_ECC;
        p->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
        p->parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
        p->parameters.eccDetail.curveID = alg == KH_ALG_P384 ? TPM2_ECC_NIST_P384 : TPM2_ECC_NIST_P256;
        p->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
    }
}

static void seal_template(TPM2B_PUBLIC *t, const TPM2B_DIGEST *policy)
{
    memset(t, 0, sizeof *t);
    TPMT_PUBLIC *p = &t->publicArea;
    p->type = TPM2_ALG_KEYEDHASH;
    p->nameAlg = TPM2_ALG_SHA256;
    /* not noDA: a wrong PIN is a dictionary attack; no userWithAuth: only
     * through PolicyPassword, so a stray password session cannot count */
    p->objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT;
    p->authPolicy = *policy;
    p->parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;
}

/* ---- creating objects ---- */

/* TPM2_Create under parent, retrying on a full TPM. Out: a (create_args_free). */
static TSS2_RC create_locked(struct create_args *a, ESYS_TR parent, const TPM2B_SENSITIVE_CREATE *sens,
                             const TPM2B_PUBLIC *tmpl, unsigned timeout_ms)
{
    TPM2B_DATA outside = { .size = 0 };
    TPML_PCR_SELECTION none = { .count = 0 };
    if (!kh_tpm_make_room_locked(parent, false, 0))
        return TSS2_TCTI_RC_IO_ERROR;
    for (unsigned attempt = 0;; attempt++) {
        ESYS_CONTEXT *e = kh_tpm_esys_locked();
        if (!e)
            return TSS2_TCTI_RC_IO_ERROR;
        memset(a, 0, sizeof *a);
        TSS2_RC rc = kh_tpm_run_locked(Esys_Create_Async(e, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                                         sens, tmpl, &outside, &none),
                                       fin_create, a, timeout_ms, "TPM2_Create");
        if (rc == TSS2_RC_SUCCESS)
            return rc;
        create_args_free(a);
        if (kh_tpm_rc_base(rc) == TPM2_RC_OBJECT_MEMORY && kh_tpm_make_room_locked(parent, true, attempt))
            continue;
        return rc;
    }
}

static const CK_ATTRIBUTE *tmpl_find(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type)
{
    for (CK_ULONG i = 0; i < n; i++)
        if (t[i].type == type)
            return &t[i];
    return NULL;
}

/* CKA_KH_TPM_PCR_POLICY of a template, if any. Out: *has, sel. */
static CK_RV tmpl_pcrs(bool *has, TPML_PCR_SELECTION *sel, const CK_ATTRIBUTE *t, CK_ULONG n)
{
    const CK_ATTRIBUTE *a = tmpl_find(t, n, CKA_KH_TPM_PCR_POLICY);
    char buf[128];
    *has = false;
    if (!a)
        return CKR_OK;
    if (!a->pValue || a->ulValueLen == 0 || a->ulValueLen >= sizeof buf ||
        memchr(a->pValue, 0, a->ulValueLen))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    memcpy(buf, a->pValue, a->ulValueLen);
    buf[a->ulValueLen] = '\0';
    if (!kh_tpm_pcr_parse(sel, buf))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    *has = true;
    return CKR_OK;
}

static CK_RV tpm_generate_tmpl(struct kh_token *tok, kh_pubkey *pub, uint8_t **blob, size_t *blob_len,
                               kh_alg alg, unsigned rsa_bits, const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    kh_tpm_key k;
    TPM2B_SENSITIVE_CREATE sens;
    TPM2B_PUBLIC t;
    TPM2B_DIGEST policy = { .size = 0 };
    struct create_args a = { 0 };
    CK_RV rv;
    TSS2_RC rc = TSS2_RC_SUCCESS;

    (void)tok;
    *blob = NULL;
    *blob_len = 0;
    memset(&k, 0, sizeof k);
    memset(&sens, 0, sizeof sens);
    if (alg != KH_ALG_P256 && alg != KH_ALG_P384 && alg != KH_ALG_RSA)
        return CKR_CURVE_NOT_SUPPORTED; /* secp256k1, Ed25519: no TPM does them */
    if (alg == KH_ALG_RSA && rsa_bits % 1024)
        return CKR_KEY_SIZE_RANGE;
    if (tmpl_find(tmpl, n, CKA_KH_TPM_PUBLIC) || tmpl_find(tmpl, n, CKA_KH_TPM_PARENT))
        return CKR_TEMPLATE_INCONSISTENT; /* those describe existing keys (C_CreateObject) */
    rv = tmpl_pcrs(&k.pcr, &k.pcrs, tmpl, n);
    if (rv != CKR_OK)
        return rv;
    rv = kh_random(k.auth.buffer, KH_TPM_AUTH_LEN);
    if (rv != CKR_OK)
        goto out_wipe;
    k.auth.size = KH_TPM_AUTH_LEN;
    sens.sensitive.userAuth = k.auth;

    unsigned timeout = kh_tpm_timeout_ms();
    if (alg == KH_ALG_RSA)
        timeout *= KH_TPM_CREATE_RSA_FACTOR;
    rv = kh_tpm_lock();
    if (rv != CKR_OK)
        goto out_wipe;
    for (int attempt = 0; attempt < 3; attempt++) {
        ESYS_TR parent;
        kh_tpm_caps caps;
        if (attempt > 0 && kh_tpm_reconnect_locked() != CKR_OK)
            break;
        rv = kh_tpm_caps_locked(&caps);
        if (rv != CKR_OK) {
            if (kh_tpm_retry_locked()) {
                rc = TSS2_TCTI_RC_IO_ERROR;
                continue;
            }
            kh_tpm_unlock();
            goto out_wipe;
        }
        if ((alg == KH_ALG_P256 && !caps.p256) || (alg == KH_ALG_P384 && !caps.p384)) {
            kh_tpm_unlock();
            rv = CKR_CURVE_NOT_SUPPORTED;
            goto out_wipe;
        }
        if (alg == KH_ALG_RSA && !((rsa_bits == 2048 && caps.rsa2048) || (rsa_bits == 3072 && caps.rsa3072) ||
                                   (rsa_bits == 4096 && caps.rsa4096))) {
            kh_tpm_unlock();
            rv = CKR_KEY_SIZE_RANGE;
            goto out_wipe;
        }
        parent = ESYS_TR_NONE;
        rc = kh_tpm_parent_default_locked(&parent, &k.parent);
        if (rc == TSS2_RC_SUCCESS && k.pcr)
            rc = pcr_policy_digest_locked(&policy, &k.pcrs);
        if (rc == TSS2_RC_SUCCESS) {
            key_template(&t, alg, rsa_bits, k.pcr ? &policy : NULL);
            rc = create_locked(&a, parent, &sens, &t, timeout);
        }
        if (rc == TSS2_RC_SUCCESS)
            break;
        if (kh_tpm_rc_stale(rc) && kh_tpm_srk_drop_if_locked(parent))
            continue; /* the SRK's handle went stale: make it again */
        if (!kh_tpm_retry_locked())
            break;
    }
    kh_tpm_unlock();
    rv = rc == TSS2_RC_SUCCESS ? CKR_OK : kh_tpm_rv(rc, KH_TPM_USE_KEY, "create key");
    if (rv != CKR_OK)
        goto out_wipe;
    k.pub = *a.pub;
    k.priv = *a.priv;
    rv = kh_tpm_pubkey(pub, &k.pub.publicArea);
    if (rv == CKR_OK)
        rv = kh_tpm_key_encode(blob, blob_len, &k);
out_wipe:
    create_args_free(&a);
    kh_wipe(&sens, sizeof sens);
    kh_wipe(&k, sizeof k);
    return rv;
}

static CK_RV tpm_generate(struct kh_token *tok, kh_pubkey *pub, uint8_t **blob, size_t *blob_len,
                          kh_alg alg, unsigned rsa_bits)
{
    return tpm_generate_tmpl(tok, pub, blob, blob_len, alg, rsa_bits, NULL, 0);
}

/* ---- signing ---- */

static TPMI_ALG_HASH tpm_hash(kh_hash h)
{
    switch (h) {
    case KH_HASH_SHA1: return TPM2_ALG_SHA1;
    case KH_HASH_SHA256: return TPM2_ALG_SHA256;
    case KH_HASH_SHA384: return TPM2_ALG_SHA384;
    case KH_HASH_SHA512: return TPM2_ALG_SHA512;
    default: return TPM2_ALG_NULL;
    }
}

static size_t tpm_hash_len(TPMI_ALG_HASH h)
{
    switch (h) {
    case TPM2_ALG_SHA1: return 20;
    case TPM2_ALG_SHA256: return 32;
    case TPM2_ALG_SHA384: return 48;
    case TPM2_ALG_SHA512: return 64;
    default: return 0;
    }
}

/* The key's own scheme (imported keys may fix one), or TPM2_ALG_NULL. */
static const TPMT_ASYM_SCHEME *key_scheme(const TPMT_PUBLIC *p)
{
    return p->type == TPM2_ALG_RSA ? (const TPMT_ASYM_SCHEME *)&p->parameters.rsaDetail.scheme
                                   : (const TPMT_ASYM_SCHEME *)&p->parameters.eccDetail.scheme;
}

/*
 * What TPM2_Sign gets for op: the digest and the scheme. ECDSA: the data is
 * a digest of any length; the TPM only checks that the digest has the size
 * of the scheme's hash, and ECDSA uses the leftmost bits of the order's size
 * (FIPS 186-4 6.4), so the data is left-padded with zeros (the same integer)
 * or cut to the order's size. PKCS#1 v1.5: the data must be a DigestInfo of
 * SHA-1/256/384/512 (the TPM adds the DigestInfo itself). PSS: the TPM uses
 * MGF1 with the same hash and a salt as long as the hash.
 */
static CK_RV sign_prep(TPM2B_DIGEST *d, TPMT_SIG_SCHEME *s, const TPMT_PUBLIC *area, const kh_pubkey *pub,
                       kh_sigop op, const kh_sigparams *params, const uint8_t *data, size_t len)
{
    const TPMT_ASYM_SCHEME *fixed = key_scheme(area);
    memset(d, 0, sizeof *d);
    memset(s, 0, sizeof *s);
    switch (op) {
    case KH_OP_ECDSA: {
        size_t flen = pub->alg == KH_ALG_P384 ? 48 : 32;
        TPMI_ALG_HASH h = pub->alg == KH_ALG_P384 ? TPM2_ALG_SHA384 : TPM2_ALG_SHA256;
        if (pub->alg != KH_ALG_P256 && pub->alg != KH_ALG_P384)
            return CKR_KEY_TYPE_INCONSISTENT;
        if (fixed->scheme != TPM2_ALG_NULL) {
            if (fixed->scheme != TPM2_ALG_ECDSA)
                return CKR_MECHANISM_INVALID;
            h = fixed->details.anySig.hashAlg;
        }
        size_t tl = tpm_hash_len(h);
        if (tl == 0 || len == 0)
            return CKR_DATA_LEN_RANGE;
        if (len > tl && tl < flen)
            return CKR_DATA_LEN_RANGE; /* cutting to tl would change the signed value */
        if (len >= tl) {
            memcpy(d->buffer, data, tl);
        } else {
            memcpy(d->buffer + tl - len, data, len);
        }
        d->size = (UINT16)tl;
        s->scheme = TPM2_ALG_ECDSA;
        s->details.ecdsa.hashAlg = h;
        return CKR_OK;
    }
    case KH_OP_RSA_PKCS: {
        static const kh_hash hashes[] = { KH_HASH_SHA256, KH_HASH_SHA384, KH_HASH_SHA512, KH_HASH_SHA1 };
        for (size_t i = 0; i < sizeof hashes / sizeof hashes[0]; i++) {
            size_t plen, hlen = kh_hash_len(hashes[i]);
            const uint8_t *prefix = kh_hash_digestinfo_prefix(hashes[i], &plen);
            if (!prefix || len != plen + hlen || memcmp(data, prefix, plen) != 0)
                continue;
            s->scheme = TPM2_ALG_RSASSA;
            s->details.rsassa.hashAlg = tpm_hash(hashes[i]);
            memcpy(d->buffer, data + plen, hlen);
            d->size = (UINT16)hlen;
            if (fixed->scheme != TPM2_ALG_NULL && (fixed->scheme != TPM2_ALG_RSASSA ||
                                                   fixed->details.anySig.hashAlg != s->details.rsassa.hashAlg))
                return CKR_MECHANISM_INVALID;
            return CKR_OK;
        }
        return CKR_DATA_INVALID; /* a TPM signs DigestInfos of the hashes it knows, not raw data */
    }
    case KH_OP_RSA_PSS: {
        TPMI_ALG_HASH h = tpm_hash(params->pss_hash);
        size_t hlen = tpm_hash_len(h);
        if (h == TPM2_ALG_NULL || params->pss_mgf_hash != params->pss_hash || params->pss_salt_len != hlen)
            return CKR_MECHANISM_PARAM_INVALID;
        if (len != hlen)
            return CKR_DATA_LEN_RANGE;
        if (fixed->scheme != TPM2_ALG_NULL &&
            (fixed->scheme != TPM2_ALG_RSAPSS || fixed->details.anySig.hashAlg != h))
            return CKR_MECHANISM_INVALID;
        memcpy(d->buffer, data, len);
        d->size = (UINT16)len;
        s->scheme = TPM2_ALG_RSAPSS;
        s->details.rsapss.hashAlg = h;
        return CKR_OK;
    }
    default:
        return CKR_MECHANISM_INVALID;
    }
}

/* TPMT_SIGNATURE -> PKCS#11 form (r||s, or the RSA signature). */
static CK_RV sig_out(uint8_t *sig, size_t *siglen, const TPMT_SIGNATURE *ts, const kh_pubkey *pub)
{
    if (ts->sigAlg == TPM2_ALG_ECDSA) {
        size_t flen = pub->alg == KH_ALG_P384 ? 48 : 32;
        const TPM2B_ECC_PARAMETER *r = &ts->signature.ecdsa.signatureR, *s = &ts->signature.ecdsa.signatureS;
        if (*siglen < 2 * flen || r->size > flen || s->size > flen)
            return CKR_DEVICE_ERROR;
        memset(sig, 0, 2 * flen);
        memcpy(sig + flen - r->size, r->buffer, r->size);
        memcpy(sig + 2 * flen - s->size, s->buffer, s->size);
        *siglen = 2 * flen;
        return CKR_OK;
    }
    if (ts->sigAlg == TPM2_ALG_RSASSA || ts->sigAlg == TPM2_ALG_RSAPSS) {
        const TPM2B_PUBLIC_KEY_RSA *r = &ts->signature.rsassa.sig;
        if (r->size != pub->n_len || *siglen < r->size)
            return CKR_DEVICE_ERROR;
        memcpy(sig, r->buffer, r->size);
        *siglen = r->size;
        return CKR_OK;
    }
    return CKR_DEVICE_ERROR;
}

/* Open the object's blob with the token key (only while a user is logged in). */
static CK_RV key_open(kh_tpm_key *k, struct kh_token *tok, const struct kh_key *key)
{
    uint8_t *pt = NULL;
    size_t pt_len = 0;
    CK_RV rv = kh_key_unseal(&pt, &pt_len, tok, key, "tpm");

    if (rv == CKR_OK)
        rv = kh_tpm_key_decode(k, pt, pt_len);
    if (pt) {
        kh_wipe(pt, pt_len);
        free(pt);
    }
    return rv;
}

/* One TPM2_Sign (a policy session around it for PCR keys). Out: *ts, *cached. */
static TSS2_RC sign_once_locked(TPMT_SIGNATURE **ts, bool *cached, const kh_tpm_key *k,
                                const TPM2B_DIGEST *d, const TPMT_SIG_SCHEME *s)
{
    static const TPM2B_AUTH empty = { .size = 0 };
    ESYS_TR tr, session = ESYS_TR_PASSWORD;
    TSS2_RC rc = kh_tpm_obj_get_locked(&tr, cached, &k->parent, &k->pub, &k->priv);
    if (rc != TSS2_RC_SUCCESS)
        return rc;
    ESYS_CONTEXT *e = kh_tpm_esys_locked();
    if (k->pcr) {
        rc = session_start_locked(&session, TPM2_SE_POLICY, ESYS_TR_NONE);
        if (rc == TSS2_RC_SUCCESS) {
            rc = policy_pcr_locked(session, &k->pcrs);
            if (rc == TSS2_RC_SUCCESS)
                rc = policy_password_locked(session);
        }
        if (rc != TSS2_RC_SUCCESS) {
            if (session != ESYS_TR_PASSWORD && kh_tpm_esys_locked())
                kh_tpm_flush_locked(session);
            return rc;
        }
        e = kh_tpm_esys_locked();
    }
    rc = Esys_TR_SetAuth(e, tr, &k->auth);
    if (rc == TSS2_RC_SUCCESS)
        rc = kh_tpm_run_locked(Esys_Sign_Async(e, tr, session, ESYS_TR_NONE, ESYS_TR_NONE, d, s, &null_ticket),
                               fin_sign, ts, kh_tpm_timeout_ms(), "TPM2_Sign");
    e = kh_tpm_esys_locked();
    if (e) {
        Esys_TR_SetAuth(e, tr, &empty); /* ESYS's copy of the auth value, overwritten */
        if (session != ESYS_TR_PASSWORD)
            kh_tpm_flush_locked(session);
    }
    return rc;
}

static CK_RV tpm_sign(struct kh_token *tok, const struct kh_key *key, kh_sigop op,
                      const kh_sigparams *params, const uint8_t *data, size_t data_len,
                      uint8_t *sig, size_t *siglen)
{
    kh_tpm_key k;
    TPM2B_DIGEST d;
    TPMT_SIG_SCHEME s;
    size_t cap = *siglen;
    CK_RV rv = key_open(&k, tok, key);
    if (rv != CKR_OK)
        return rv;
    rv = sign_prep(&d, &s, &k.pub.publicArea, &key->pub, op, params, data, data_len);
    if (rv != CKR_OK)
        goto out_wipe;
    rv = CKR_DEVICE_ERROR;
    bool reconnected = false, policy_retried = false;
    for (int attempt = 0; attempt < KH_TPM_SIGN_TRIES; attempt++) {
        TPMT_SIGNATURE *ts = NULL;
        bool cached = false;
        rv = kh_tpm_lock();
        if (rv != CKR_OK)
            break;
        TSS2_RC rc = sign_once_locked(&ts, &cached, &k, &d, &s);
        if (rc == TSS2_RC_SUCCESS) {
            kh_tpm_unlock();
            *siglen = cap;
            rv = sig_out(sig, siglen, ts, &key->pub);
            Esys_Free(ts);
            /* A key with its own random 256-bit auth value proves by signing that it is
             * this key (a handle holding another object fails the auth check); a key
             * with a guessable auth (adopted keys, often empty) is checked here. */
            if (rv == CKR_OK && (k.auth.size >= KH_TPM_AUTH_LEN ||
                                 kh_crypto_verify(&key->pub, op, params, data, data_len, sig, *siglen) == CKR_OK))
                goto out_wipe;
            /* Not our key's signature: the handle held another object. */
            memset(sig, 0, cap);
            if (kh_tpm_lock() == CKR_OK) {
                kh_tpm_forget_locked(&k.priv);
                kh_tpm_unlock();
            }
            rv = kh_tpm_rv(KH_TPM_RC_STALE, KH_TPM_USE_KEY, "TPM2_Sign");
            continue;
        }
        Esys_Free(ts);
        if (kh_tpm_broken_locked()) {
            if (reconnected || !kh_tpm_retry_locked() || attempt + 1 >= KH_TPM_SIGN_TRIES) {
                kh_tpm_unlock();
                rv = kh_tpm_rv(rc, KH_TPM_USE_KEY, "TPM2_Sign");
                break;
            }
            /* Lost the TPM (restart?): reconnect once and reload. */
            kh_log(KH_LOG_INFO, "tpm: connection lost during TPM2_Sign (0x%08x); reconnecting",
                   (unsigned)rc);
            reconnected = true;
            if (kh_tpm_reconnect_locked() == CKR_OK) {
                kh_tpm_unlock();
                continue;
            }
        } else if ((kh_tpm_rc_stale(rc) || (k.pcr && !policy_retried && kh_tpm_rc_base(rc) == TPM2_RC_POLICY_FAIL)) &&
                   attempt + 1 < KH_TPM_SIGN_TRIES) {
            /* a PCR key's policy failing may be another object at its handle: one fresh try */
            policy_retried = policy_retried || kh_tpm_rc_base(rc) == TPM2_RC_POLICY_FAIL;
            kh_log(KH_LOG_DEBUG, "tpm: %s handle is stale (0x%08x); reloading", cached ? "cached" : "new",
                   (unsigned)rc);
            kh_tpm_forget_locked(&k.priv);
            kh_tpm_unlock();
            continue;
        }
        kh_tpm_unlock();
        rv = kh_tpm_rv(rc, KH_TPM_USE_KEY, "TPM2_Sign");
        break;
    }
out_wipe:
    kh_wipe(&k, sizeof k);
    kh_wipe(&d, sizeof d);
    return rv;
}

/* C_SignInit: can this TPM sign with m and params on key? */
static CK_RV tpm_sign_check(struct kh_token *tok, const struct kh_key *key, const struct kh_mech *m,
                            const kh_sigparams *params)
{
    (void)tok;
    switch (m->op) {
    case KH_OP_ECDSA:
        return key->pub.alg == KH_ALG_P256 || key->pub.alg == KH_ALG_P384 ? CKR_OK : CKR_MECHANISM_INVALID;
    case KH_OP_RSA_PKCS:
        return m->hash == KH_HASH_NONE || tpm_hash(m->hash) != TPM2_ALG_NULL ? CKR_OK : CKR_MECHANISM_INVALID;
    case KH_OP_RSA_PSS:
        if (tpm_hash(params->pss_hash) == TPM2_ALG_NULL || params->pss_mgf_hash != params->pss_hash ||
            params->pss_salt_len != kh_hash_len(params->pss_hash))
            return CKR_MECHANISM_PARAM_INVALID; /* the TPM's PSS: MGF1 of the same hash, salt = hash length */
        return CKR_OK;
    default:
        return CKR_MECHANISM_INVALID;
    }
}

/* C_GetMechanismInfo on a token whose keys go to the TPM by default. */
static CK_RV tpm_mech_info(struct kh_token *tok, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO *info)
{
    kh_tpm_caps c;
    (void)tok;
    if (kh_tpm_lock() != CKR_OK)
        return CKR_OK; /* unreachable: the table's values stand */
    CK_RV rv = kh_tpm_caps_locked(&c);
    kh_tpm_unlock();
    if (rv != CKR_OK)
        return CKR_OK;
    CK_ULONG rsa_max = c.rsa4096 ? 4096 : c.rsa3072 ? 3072 : 2048;
    switch (type) {
    case CKM_EC_KEY_PAIR_GEN:
    case CKM_ECDSA:
    case CKM_ECDSA_SHA256:
    case CKM_ECDSA_SHA384:
    case CKM_ECDSA_SHA512:
        if (c.p256 || c.p384) {
            info->ulMinKeySize = c.p256 ? 256 : 384;
            info->ulMaxKeySize = c.p384 ? 384 : 256;
        }
        if (!c.ecdsa && type != CKM_EC_KEY_PAIR_GEN)
            info->flags &= ~CKF_SIGN;
        break;
    case CKM_RSA_PKCS_KEY_PAIR_GEN:
        if (c.rsa2048)
            info->ulMaxKeySize = rsa_max;
        break;
    case CKM_RSA_PKCS:
    case CKM_SHA256_RSA_PKCS:
    case CKM_SHA384_RSA_PKCS:
    case CKM_SHA512_RSA_PKCS:
        if (c.rsa2048)
            info->ulMaxKeySize = rsa_max;
        if (!c.rsassa || (type == CKM_SHA384_RSA_PKCS && !c.sha384) || (type == CKM_SHA512_RSA_PKCS && !c.sha512))
            info->flags &= ~CKF_SIGN;
        break;
    case CKM_RSA_PKCS_PSS:
    case CKM_SHA256_RSA_PKCS_PSS:
    case CKM_SHA384_RSA_PKCS_PSS:
    case CKM_SHA512_RSA_PKCS_PSS:
        if (c.rsa2048)
            info->ulMaxKeySize = rsa_max;
        if (!c.rsapss || (type == CKM_SHA384_RSA_PKCS_PSS && !c.sha384) ||
            (type == CKM_SHA512_RSA_PKCS_PSS && !c.sha512))
            info->flags &= ~CKF_SIGN;
        break;
    default:
        break;
    }
    return CKR_OK;
}

/* ---- adopting keys made elsewhere (tpm2_create) ---- */

static CK_RV tmpl_bytes(const CK_ATTRIBUTE **out, const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type)
{
    const CK_ATTRIBUTE *a = tmpl_find(t, n, type);
    *out = a;
    if (a && (!a->pValue || a->ulValueLen == 0))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    return CKR_OK;
}

/* A key we can sign with through a password session. */
static CK_RV adoptable(const TPMT_PUBLIC *p)
{
    TPMA_OBJECT a = p->objectAttributes;
    if (!(a & TPMA_OBJECT_SIGN_ENCRYPT) || (a & TPMA_OBJECT_RESTRICTED)) {
        kh_log(KH_LOG_ERROR, "tpm: import: not an unrestricted signing key");
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    if (!(a & TPMA_OBJECT_USERWITHAUTH)) {
        kh_log(KH_LOG_ERROR, "tpm: import: keys usable only through a policy are not supported");
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    const TPMT_ASYM_SCHEME *s = key_scheme(p);
    if (s->scheme != TPM2_ALG_NULL && s->scheme != TPM2_ALG_ECDSA && s->scheme != TPM2_ALG_RSASSA &&
        s->scheme != TPM2_ALG_RSAPSS) {
        kh_log(KH_LOG_ERROR, "tpm: import: the key's scheme 0x%04x is not ECDSA, RSASSA or RSAPSS",
               (unsigned)s->scheme);
        return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    return CKR_OK;
}

/* A scheme and digest the imported key accepts, for the test signature. */
static void probe_scheme(TPMT_SIG_SCHEME *s, TPM2B_DIGEST *d, const TPMT_PUBLIC *p)
{
    const TPMT_ASYM_SCHEME *fixed = key_scheme(p);
    memset(s, 0, sizeof *s);
    memset(d, 0, sizeof *d);
    if (fixed->scheme != TPM2_ALG_NULL) {
        s->scheme = fixed->scheme;
        s->details.any.hashAlg = fixed->details.anySig.hashAlg;
    } else {
        s->scheme = p->type == TPM2_ALG_RSA ? TPM2_ALG_RSASSA : TPM2_ALG_ECDSA;
        s->details.any.hashAlg = TPM2_ALG_SHA256;
    }
    d->size = (UINT16)tpm_hash_len(s->details.any.hashAlg);
    if (d->size == 0) {
        s->details.any.hashAlg = TPM2_ALG_SHA256;
        d->size = 32;
    }
    memset(d->buffer, 0x5a, d->size);
}

static CK_RV tpm_adopt(struct kh_token *tok, kh_pubkey *pub, uint8_t **blob, size_t *blob_len,
                       const CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    const CK_ATTRIBUTE *apub, *apriv, *aauth, *aparent = tmpl_find(tmpl, n, CKA_KH_TPM_PARENT);
    kh_tpm_key k;
    CK_ULONG parent_handle = 0;
    CK_RV rv;
    TSS2_RC rc = TSS2_RC_SUCCESS;
    size_t off;

    (void)tok;
    *blob = NULL;
    *blob_len = 0;
    memset(&k, 0, sizeof k);
    if ((rv = tmpl_bytes(&apub, tmpl, n, CKA_KH_TPM_PUBLIC)) != CKR_OK ||
        (rv = tmpl_bytes(&apriv, tmpl, n, CKA_KH_TPM_PRIVATE)) != CKR_OK)
        return rv;
    aauth = tmpl_find(tmpl, n, CKA_KH_TPM_AUTH);
    if (!apub || !apriv)
        return CKR_TEMPLATE_INCOMPLETE;
    if (tmpl_find(tmpl, n, CKA_KH_TPM_PCR_POLICY))
        return CKR_TEMPLATE_INCONSISTENT; /* a policy is made at key generation only */
    if (aparent) {
        if (aparent->ulValueLen != sizeof(CK_ULONG) || !aparent->pValue)
            return CKR_ATTRIBUTE_VALUE_INVALID;
        memcpy(&parent_handle, aparent->pValue, sizeof parent_handle);
        if (parent_handle < KH_TPM_PERSISTENT_FIRST || parent_handle > KH_TPM_PERSISTENT_LAST)
            return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    off = 0;
    if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(apub->pValue, apub->ulValueLen, &off, &k.pub) != TSS2_RC_SUCCESS ||
        off != apub->ulValueLen)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    off = 0;
    if (Tss2_MU_TPM2B_PRIVATE_Unmarshal(apriv->pValue, apriv->ulValueLen, &off, &k.priv) != TSS2_RC_SUCCESS ||
        off != apriv->ulValueLen) {
        rv = CKR_ATTRIBUTE_VALUE_INVALID;
        goto out_wipe;
    }
    if (aauth) {
        if ((aauth->ulValueLen && !aauth->pValue) || aauth->ulValueLen > sizeof k.auth.buffer) {
            rv = CKR_ATTRIBUTE_VALUE_INVALID;
            goto out_wipe;
        }
        if (aauth->ulValueLen)
            memcpy(k.auth.buffer, aauth->pValue, aauth->ulValueLen);
        k.auth.size = (UINT16)aauth->ulValueLen;
    }
    rv = adoptable(&k.pub.publicArea);
    if (rv == CKR_OK)
        rv = kh_tpm_pubkey(pub, &k.pub.publicArea);
    if (rv != CKR_OK)
        goto out_wipe;

    rv = kh_tpm_lock();
    if (rv != CKR_OK)
        goto out_wipe;
    for (int attempt = 0; attempt < 2; attempt++) {
        ESYS_TR parent, tr;
        bool cached;
        TPMT_SIGNATURE *ts = NULL;
        TPMT_SIG_SCHEME s;
        TPM2B_DIGEST d;
        if (attempt > 0 && kh_tpm_reconnect_locked() != CKR_OK)
            break;
        if (parent_handle)
            rc = kh_tpm_parent_persistent_locked(&parent, &k.parent, (uint32_t)parent_handle);
        else
            rc = kh_tpm_parent_default_locked(&parent, &k.parent);
        if (rc == TSS2_RC_SUCCESS)
            rc = kh_tpm_obj_get_locked(&tr, &cached, &k.parent, &k.pub, &k.priv);
        if (rc == TSS2_RC_SUCCESS) {
            /* one signature proves the blobs load here and the auth value is right */
            static const TPM2B_AUTH empty = { .size = 0 };
            ESYS_CONTEXT *e = kh_tpm_esys_locked();
            probe_scheme(&s, &d, &k.pub.publicArea);
            rc = Esys_TR_SetAuth(e, tr, &k.auth);
            if (rc == TSS2_RC_SUCCESS)
                rc = kh_tpm_run_locked(Esys_Sign_Async(e, tr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &d, &s,
                                                       &null_ticket),
                                       fin_sign, &ts, kh_tpm_timeout_ms(), "TPM2_Sign");
            Esys_Free(ts);
            if (kh_tpm_esys_locked()) {
                Esys_TR_SetAuth(e, tr, &empty);
                if (rc != TSS2_RC_SUCCESS)
                    kh_tpm_flush_locked(tr);
            }
        }
        if (rc == TSS2_RC_SUCCESS || !kh_tpm_retry_locked())
            break;
    }
    kh_tpm_unlock();
    if (rc == KH_TPM_RC_NO_PARENT) {
        kh_log(KH_LOG_ERROR, "tpm: import: no storage key at 0x%08lx to load the key under",
               parent_handle ? parent_handle : (CK_ULONG)(kh_mod.cfg.tpm_primary ? kh_mod.cfg.tpm_primary
                                                                                 : KH_TPM_PRIMARY_DEFAULT));
        rv = CKR_ATTRIBUTE_VALUE_INVALID;
    } else if (rc != TSS2_RC_SUCCESS) {
        rv = kh_tpm_rv(rc, KH_TPM_USE_IMPORT, "import key");
    }
    if (rv == CKR_OK)
        rv = kh_tpm_key_encode(blob, blob_len, &k);
out_wipe:
    kh_wipe(&k, sizeof k);
    return rv;
}

/* ---- token services: random bytes and PIN sealing ---- */

static TSS2_RC random_locked(uint8_t *buf, size_t len)
{
    while (len > 0) {
        TPM2B_DIGEST *r = NULL;
        UINT16 want = len > 32 ? 32 : (UINT16)len;
        ESYS_CONTEXT *e = kh_tpm_esys_locked();
        if (!e)
            return TSS2_TCTI_RC_IO_ERROR;
        TSS2_RC rc = kh_tpm_run_locked(Esys_GetRandom_Async(e, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, want),
                                       fin_random, &r, kh_tpm_timeout_ms(), "TPM2_GetRandom");
        if (rc == TSS2_RC_SUCCESS && (r->size == 0 || r->size > want))
            rc = TSS2_ESYS_RC_MALFORMED_RESPONSE;
        if (rc != TSS2_RC_SUCCESS) {
            Esys_Free(r);
            return rc;
        }
        memcpy(buf, r->buffer, r->size);
        buf += r->size;
        len -= r->size;
        kh_wipe(r->buffer, r->size);
        Esys_Free(r);
    }
    return TSS2_RC_SUCCESS;
}

static CK_RV tpm_random(uint8_t *buf, size_t len)
{
    TSS2_RC rc = TSS2_RC_SUCCESS;
    CK_RV rv = kh_tpm_lock();
    if (rv != CKR_OK)
        return rv;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (attempt > 0 && kh_tpm_reconnect_locked() != CKR_OK)
            break;
        rc = random_locked(buf, len);
        if (rc == TSS2_RC_SUCCESS || !kh_tpm_retry_locked())
            break;
    }
    kh_tpm_unlock();
    if (rc != TSS2_RC_SUCCESS) {
        kh_wipe(buf, len);
        return kh_tpm_rv(rc, KH_TPM_USE_OTHER, "TPM2_GetRandom");
    }
    return CKR_OK;
}

static CK_RV tpm_lockout(bool *locked)
{
    CK_RV rv = kh_tpm_lock();
    if (rv != CKR_OK)
        return rv;
    rv = kh_tpm_lockout_locked(locked);
    /* A dropped connection (a TPM restart) is tried once more. */
    if (rv != CKR_OK && kh_tpm_retry_locked() && kh_tpm_reconnect_locked() == CKR_OK)
        rv = kh_tpm_lockout_locked(locked);
    kh_tpm_unlock();
    return rv;
}

static CK_RV tpm_pin_seal(uint8_t secret[32], uint8_t **blob, size_t *blob_len, const uint8_t auth[32])
{
    kh_tpm_sealobj so;
    TPM2B_SENSITIVE_CREATE sens;
    TPM2B_PUBLIC t;
    TPM2B_DIGEST policy;
    struct create_args a = { 0 };
    TSS2_RC rc = TSS2_RC_SUCCESS;
    CK_RV rv;

    *blob = NULL;
    *blob_len = 0;
    memset(&so, 0, sizeof so);
    memset(&sens, 0, sizeof sens);
    so.branch.size = 32;
    rv = kh_random(so.branch.buffer, 32);
    if (rv == CKR_OK)
        rv = seal_policy_digest(&policy, &so.branch);
    if (rv == CKR_OK)
        rv = kh_random(secret, KH_TPM_SECRET_LEN);
    if (rv != CKR_OK)
        goto out_wipe;
    sens.sensitive.userAuth.size = KH_TPM_AUTH_LEN;
    memcpy(sens.sensitive.userAuth.buffer, auth, KH_TPM_AUTH_LEN);
    sens.sensitive.data.size = KH_TPM_SECRET_LEN;
    memcpy(sens.sensitive.data.buffer, secret, KH_TPM_SECRET_LEN);
    seal_template(&t, &policy);

    rv = kh_tpm_lock();
    if (rv != CKR_OK)
        goto out_wipe;
    bool had_srk = kh_tpm_srk_loaded_locked();
    for (int attempt = 0; attempt < 3; attempt++) {
        ESYS_TR parent = ESYS_TR_NONE;
        if (attempt > 0 && kh_tpm_reconnect_locked() != CKR_OK)
            break;
        rc = kh_tpm_parent_default_locked(&parent, &so.parent);
        if (rc == TSS2_RC_SUCCESS)
            rc = create_locked(&a, parent, &sens, &t, kh_tpm_timeout_ms());
        if (rc == TSS2_RC_SUCCESS)
            break;
        if (kh_tpm_rc_stale(rc) && kh_tpm_srk_drop_if_locked(parent))
            continue; /* the SRK's handle went stale: make it again */
        if (!kh_tpm_retry_locked())
            break;
    }
    if (!had_srk && kh_tpm_esys_locked())
        kh_tpm_srk_flush_locked();
    kh_tpm_unlock();
    if (rc != TSS2_RC_SUCCESS) {
        rv = kh_tpm_rv(rc, KH_TPM_USE_PIN, "seal the token key");
        goto out_wipe;
    }
    so.pub = *a.pub;
    so.priv = *a.priv;
    rv = kh_tpm_seal_encode(blob, blob_len, &so);
out_wipe:
    create_args_free(&a);
    kh_wipe(&sens, sizeof sens);
    if (rv != CKR_OK)
        kh_wipe(secret, KH_TPM_SECRET_LEN);
    return rv;
}

static TSS2_RC unseal_locked(TPM2B_SENSITIVE_DATA **out, const kh_tpm_sealobj *so, const TPM2B_AUTH *auth)
{
    static const TPM2B_AUTH empty = { .size = 0 };
    ESYS_TR tr, parent, session = ESYS_TR_NONE;
    bool cached;
    TSS2_RC rc = kh_tpm_obj_get_locked(&tr, &cached, &so->parent, &so->pub, &so->priv);
    if (rc == TSS2_RC_SUCCESS)
        rc = kh_tpm_parent_find_locked(&parent, &so->parent);
    if (rc != TSS2_RC_SUCCESS)
        return rc;
    /* The session is salted with the parent (loaded: the object was just
     * loaded under it) and encrypts the response: the secret never crosses
     * the bus in clear. PolicyAuthValue (not PolicyPassword: ESYS and the TPM
     * then disagree on the response key) proves the auth value with an HMAC;
     * PolicyOR with the object's own branch makes the policy this object's. */
    rc = session_start_locked(&session, TPM2_SE_POLICY, parent);
    if (rc == TSS2_RC_SUCCESS)
        rc = policy_auth_value_locked(session);
    if (rc == TSS2_RC_SUCCESS)
        rc = policy_or_locked(session, &so->branch);
    ESYS_CONTEXT *e = kh_tpm_esys_locked();
    if (rc == TSS2_RC_SUCCESS)
        rc = Esys_TR_SetAuth(e, tr, auth);
    if (rc == TSS2_RC_SUCCESS)
        rc = kh_tpm_run_locked(Esys_Unseal_Async(e, tr, session, ESYS_TR_NONE, ESYS_TR_NONE), fin_unseal, out,
                               kh_tpm_timeout_ms(), "TPM2_Unseal");
    if (kh_tpm_esys_locked()) {
        Esys_TR_SetAuth(e, tr, &empty);
        if (session != ESYS_TR_NONE)
            kh_tpm_flush_locked(session);
        /* a handle that holds someone else's object by now is forgotten, not flushed */
        if (kh_tpm_rc_stale(rc) || kh_tpm_rc_base(rc) == TPM2_RC_POLICY_FAIL)
            kh_tpm_obj_drop_locked(tr);
        else
            kh_tpm_flush_locked(tr);
    }
    return rc;
}

static CK_RV tpm_pin_unseal(uint8_t secret[32], const uint8_t *blob, size_t blob_len, const uint8_t auth[32])
{
    kh_tpm_sealobj so;
    TPM2B_AUTH a = { .size = KH_TPM_AUTH_LEN };
    TPM2B_SENSITIVE_DATA *out = NULL;
    TSS2_RC rc = TSS2_RC_SUCCESS;
    CK_RV rv = kh_tpm_seal_decode(&so, blob, blob_len);
    if (rv != CKR_OK)
        return rv;
    memcpy(a.buffer, auth, KH_TPM_AUTH_LEN);
    rv = kh_tpm_lock();
    if (rv != CKR_OK)
        goto out_wipe;
    bool had_srk = kh_tpm_srk_loaded_locked();
    bool reconnected = false;
    for (int attempt = 0; attempt < KH_TPM_UNSEAL_TRIES; attempt++) {
        Esys_Free(out);
        out = NULL;
        rc = unseal_locked(&out, &so, &a);
        if (rc == TSS2_RC_SUCCESS)
            break;
        kh_log(KH_LOG_DEBUG, "tpm: unseal attempt %d: 0x%08x", attempt, (unsigned)rc);
        /* Another process took the object's handle between our load and
         * unseal (no resource manager): a handle error, or the policy check
         * of the object now there (each seal object's policy is its own, so
         * this never reaches the auth check). Not a wrong PIN: wait a moment
         * and load it again. */
        if ((kh_tpm_rc_stale(rc) && kh_tpm_rc_base(rc) != TPM2_RC_AUTH_FAIL &&
             kh_tpm_rc_base(rc) != TPM2_RC_BAD_AUTH) ||
            kh_tpm_rc_base(rc) == TPM2_RC_POLICY_FAIL) {
            struct timespec ts = { 0, (long)(1 + attempt) * 1000000L };
            nanosleep(&ts, NULL);
            continue;
        }
        if (!reconnected && kh_tpm_retry_locked() && kh_tpm_reconnect_locked() == CKR_OK) {
            reconnected = true;
            continue;
        }
        break;
    }
    if (!had_srk && kh_tpm_esys_locked())
        kh_tpm_srk_flush_locked();
    kh_tpm_unlock();
    if (rc == TSS2_RC_SUCCESS && (!out || out->size != KH_TPM_SECRET_LEN))
        rc = TSS2_ESYS_RC_MALFORMED_RESPONSE;
    if (rc != TSS2_RC_SUCCESS) {
        rv = kh_tpm_rv(rc, KH_TPM_USE_PIN, "unseal the token key");
    } else {
        memcpy(secret, out->buffer, KH_TPM_SECRET_LEN);
    }
    if (out) {
        kh_wipe(out, sizeof *out);
        Esys_Free(out);
    }
out_wipe:
    kh_wipe(&a, sizeof a);
    return rv;
}

static bool tpm_configured(void)
{
    return kh_mod.cfg.tcti_set || kh_mod.cfg.default_backend == CKV_KH_BACKEND_TPM;
}

const kh_backend_ops kh_backend_tpm = {
    .id = CKV_KH_BACKEND_TPM,
    .name = "tpm",
    .generate = tpm_generate,
    .sign = tpm_sign,
    .init = kh_tpm_conn_init,
    .finalize = kh_tpm_conn_finalize,
    .forked = kh_tpm_conn_forked,
    .generate_tmpl = tpm_generate_tmpl,
    .adopt = tpm_adopt,
    .sign_check = tpm_sign_check,
    .mech_info = tpm_mech_info,
    .random = tpm_random,
    .pin_seal = tpm_pin_seal,
    .pin_unseal = tpm_pin_unseal,
    .lockout = tpm_lockout,
    .configured = tpm_configured,
};

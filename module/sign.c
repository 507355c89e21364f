/*
 * C_Sign*, C_Verify* and C_Digest* bodies (pkcs11.c has checked that the
 * library is initialised and calls these with the caller's arguments).
 *
 * An operation lives in its session (s->sign, s->verify, s->digest) from
 * Init until it ends; the session lock guards those pointers only. Work
 * that may block (the backend's sign: TPM, remote, token lock) never runs
 * under the session lock: the operation is detached from the session first,
 * so the lock order (token -> session) holds.
 *
 * Per PKCS#11 3.0 5.2/5.11/5.12: a length query (NULL output) and
 * CKR_BUFFER_TOO_SMALL keep a sign or digest operation active; any other
 * return of C_Sign / C_SignFinal / C_Digest / C_DigestFinal ends it, and so
 * does an error in an Update. Verify operations end on every return of
 * C_Verify / C_VerifyFinal. C_Sign, C_Verify and C_Digest cannot finish an
 * operation that C_*Update has started: that call returns
 * CKR_OPERATION_ACTIVE and ends the operation.
 *
 * Mechanisms with a hash stream the data through kh_hash_ctx; raw
 * mechanisms collect the data of Update calls in a buffer (capped: 16 MiB
 * for EdDSA messages, 64 KiB for the others, whose inputs are short).
 * The buffer holds data an application signs: it is wiped when freed, and
 * never logged.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define KH_RAW_MAX ((size_t)64 * 1024)
#define KH_EDDSA_MAX ((size_t)16 * 1024 * 1024)
#define KH_DIGEST_MAX 64
#define KH_TBS_TMP (32 + KH_DIGEST_MAX)   /* DigestInfo prefix (<= 19) || digest */

struct kh_sign_op {
    const kh_mech *mech;
    kh_key *key;               /* held from Init to the end of the operation */
    kh_sigparams params;
    uint8_t aux[32];           /* BIP-340 aux, copied out of the caller's mechanism */
    kh_hash_ctx *hash;         /* mech->hash != KH_HASH_NONE */
    uint8_t *buf;              /* raw mechanisms: data collected by Update */
    size_t len, cap, max;
    bool multipart;            /* an Update was called */
};

struct kh_digest_op {
    kh_hash hash;
    kh_hash_ctx *ctx;
    bool multipart;
};

static void sign_op_free(struct kh_sign_op *op)
{
    if (!op)
        return;
    if (op->hash)
        kh_hash_free(op->hash);
    if (op->buf) {
        kh_wipe(op->buf, op->cap);
        free(op->buf);
    }
    if (op->key)
        kh_key_free(op->key);
    kh_wipe(op, sizeof *op);
    free(op);
}

static void digest_op_free(struct kh_digest_op *op)
{
    if (!op)
        return;
    if (op->ctx)
        kh_hash_free(op->ctx);
    free(op);
}

/* Free every operation of s (close session, logout paths). Takes s->lock. */
void kh_sign_ops_reset(kh_session *s)
{
    kh_mutex_lock(s->lock);
    struct kh_sign_op *sign = s->sign, *verify = s->verify;
    struct kh_digest_op *digest = s->digest;
    s->sign = s->verify = NULL;
    s->digest = NULL;
    kh_mutex_unlock(s->lock);
    sign_op_free(sign);
    sign_op_free(verify);
    digest_op_free(digest);
}

/*
 * The length query (NULL buffer) and CKR_BUFFER_TOO_SMALL, once for every
 * output: true when buf can take need bytes; otherwise *len is set to need,
 * *rv says CKR_OK or CKR_BUFFER_TOO_SMALL, and the operation stays active.
 */
static bool out_room(const void *buf, CK_ULONG_PTR len, size_t need, CK_RV *rv)
{
    if (buf && *len >= need)
        return true;
    *rv = buf ? CKR_BUFFER_TOO_SMALL : CKR_OK;
    *len = need;
    return false;
}

/* The slot of s that holds the sign or verify operation. */
static struct kh_sign_op **op_slot(kh_session *s, CK_FLAGS purpose)
{
    return purpose == CKF_SIGN ? &s->sign : &s->verify;
}

/* Validate the mechanism parameter into op->params. */
static CK_RV op_params(struct kh_sign_op *op, const CK_MECHANISM *m)
{
    memset(&op->params, 0, sizeof op->params);
    if (!op->mech->param) {
        /* A mechanism without a parameter accepts only an empty one. */
        return m->ulParameterLen == 0 ? CKR_OK : CKR_MECHANISM_PARAM_INVALID;
    }
    if (m->ulParameterLen != 0 && !m->pParameter)
        return CKR_MECHANISM_PARAM_INVALID;
    CK_RV rv = op->mech->param(m, &op->params, op->key);
    if (rv != CKR_OK)
        return rv;
    if (op->params.aux) {
        memcpy(op->aux, op->params.aux, sizeof op->aux);
        op->params.aux = op->aux;
    }
    return CKR_OK;
}

/* C_SignInit / C_VerifyInit. */
static CK_RV op_init(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE hkey,
                     CK_FLAGS purpose)
{
    kh_session *s = NULL;
    struct kh_sign_op *op = NULL;
    bool active;
    CK_RV rv;

    if (!mech)
        return CKR_ARGUMENTS_BAD;
    rv = kh_session_get(&s, h);
    if (rv != CKR_OK)
        return rv;

    kh_mutex_lock(s->lock);
    active = *op_slot(s, purpose) != NULL;
    kh_mutex_unlock(s->lock);
    if (active) {
        rv = CKR_OPERATION_ACTIVE;
        goto out_put;
    }

    const kh_mech *m = kh_mech_find(mech->mechanism);
    if (!m || !(m->flags & purpose) || m->op == 0) {
        rv = CKR_MECHANISM_INVALID;
        goto out_put;
    }
    op = calloc(1, sizeof *op);
    if (!op) {
        rv = CKR_HOST_MEMORY;
        goto out_put;
    }
    op->mech = m;
    rv = kh_object_key(&op->key, s, hkey);
    if (rv != CKR_OK) {
        op->key = NULL;
        goto out_free;
    }
    if (purpose == CKF_SIGN && op->key->cls == CKO_PRIVATE_KEY &&
        !kh_token_user_logged_in(s->tok)) {
        rv = CKR_USER_NOT_LOGGED_IN;
        goto out_free;
    }
    rv = kh_mech_check_key(m, op->key, purpose);
    if (rv != CKR_OK)
        goto out_free;
    rv = op_params(op, mech);
    if (rv != CKR_OK)
        goto out_free;
    if (purpose == CKF_SIGN) {
        /* The key's backend may sign with fewer mechanisms than the table has (a TPM). */
        const kh_backend_ops *be = kh_backend_get(op->key->backend);
        if (be && be->sign_check) {
            rv = be->sign_check(s->tok, op->key, m, &op->params);
            if (rv != CKR_OK)
                goto out_free;
        }
    }
    if (m->hash != KH_HASH_NONE) {
        rv = kh_hash_new(&op->hash, m->hash);
        if (rv != CKR_OK) {
            op->hash = NULL;
            goto out_free;
        }
    }
    op->max = m->op == KH_OP_EDDSA ? KH_EDDSA_MAX : KH_RAW_MAX;

    kh_mutex_lock(s->lock);
    if (*op_slot(s, purpose)) {
        rv = CKR_OPERATION_ACTIVE;   /* another thread of the app won the race */
    } else {
        *op_slot(s, purpose) = op;
        op = NULL;
    }
    kh_mutex_unlock(s->lock);
out_free:
    sign_op_free(op);
out_put:
    kh_session_put(s);
    return rv;
}

/*
 * Check the length of raw input (mechanisms without a hash) for op.
 * CKR_DATA_LEN_RANGE when it cannot be signed with this mechanism and key.
 */
static CK_RV raw_len_ok(const struct kh_sign_op *op, size_t len)
{
    const kh_pubkey *pub = &op->key->pub;
    switch (op->mech->op) {
    case KH_OP_ECDSA:
        if (pub->alg == KH_ALG_SECP256K1)
            return len == 32 ? CKR_OK : CKR_DATA_LEN_RANGE;
        /* P-256/P-384: a digest of any common size, truncated per FIPS 186. */
        return len >= 1 && len <= KH_DIGEST_MAX ? CKR_OK : CKR_DATA_LEN_RANGE;
    case KH_OP_ECDSA_RECOVER:
    case KH_OP_BIP340:
        return len == 32 ? CKR_OK : CKR_DATA_LEN_RANGE;
    case KH_OP_EDDSA:
        return len <= KH_EDDSA_MAX ? CKR_OK : CKR_DATA_LEN_RANGE;
    case KH_OP_RSA_PKCS: {
        size_t k = kh_crypto_sig_len(pub, KH_OP_RSA_PKCS);
        return k >= 11 && len <= k - 11 ? CKR_OK : CKR_DATA_LEN_RANGE;
    }
    case KH_OP_RSA_PSS:
        return len == kh_hash_len(op->params.pss_hash) ? CKR_OK : CKR_DATA_LEN_RANGE;
    }
    return CKR_GENERAL_ERROR;
}

/*
 * What the backend signs (or crypto verifies) for op: the finished hash
 * (with its DigestInfo for PKCS#1 v1.5) for hashing mechanisms, written to
 * tmp; otherwise raw itself, after its length is checked.
 */
static CK_RV op_tbs(struct kh_sign_op *op, const uint8_t *raw, size_t raw_len,
                    uint8_t tmp[KH_TBS_TMP], const uint8_t **tbs, size_t *tbs_len)
{
    if (op->mech->hash == KH_HASH_NONE) {
        CK_RV rv = raw_len_ok(op, raw_len);
        if (rv != CKR_OK)
            return rv;
        *tbs = raw;
        *tbs_len = raw_len;
        return CKR_OK;
    }
    size_t plen = 0, hlen = kh_hash_len(op->mech->hash);
    if (op->mech->op == KH_OP_RSA_PKCS) {
        const uint8_t *prefix = kh_hash_digestinfo_prefix(op->mech->hash, &plen);
        if (!prefix || plen + hlen > KH_TBS_TMP)
            return CKR_GENERAL_ERROR;
        memcpy(tmp, prefix, plen);
    }
    if (hlen == 0 || hlen > KH_DIGEST_MAX)
        return CKR_GENERAL_ERROR;
    CK_RV rv = kh_hash_final(op->hash, tmp + plen);
    if (rv != CKR_OK)
        return rv;
    *tbs = tmp;
    *tbs_len = plen + hlen;
    return CKR_OK;
}

/* Sign with a detached op: raw is the data (raw mechanisms) or ignored. */
static CK_RV op_sign(kh_session *s, struct kh_sign_op *op, const uint8_t *raw, size_t raw_len,
                     uint8_t *sig, CK_ULONG_PTR sig_len)
{
    uint8_t tmp[KH_TBS_TMP];
    const uint8_t *tbs;
    size_t tbs_len, out_len = *sig_len;
    size_t need = kh_crypto_sig_len(&op->key->pub, op->mech->op);
    CK_RV rv = op_tbs(op, raw, raw_len, tmp, &tbs, &tbs_len);
    if (rv != CKR_OK)
        goto out_wipe;
    const kh_backend_ops *be = kh_backend_get(op->key->backend);
    if (!be || !be->sign) {
        rv = CKR_FUNCTION_NOT_SUPPORTED;
        goto out_wipe;
    }
    rv = be->sign(s->tok, op->key, op->mech->op, &op->params, tbs, tbs_len, sig, &out_len);
    if (rv == CKR_OK && out_len > need)
        rv = CKR_GENERAL_ERROR;    /* cannot happen: the backend overran its contract */
    if (rv == CKR_OK)
        *sig_len = out_len;
    else
        memset(sig, 0, need);
out_wipe:
    kh_wipe(tmp, sizeof tmp);
    return rv;
}

/* Verify with a detached op. */
static CK_RV op_verify(struct kh_sign_op *op, const uint8_t *raw, size_t raw_len,
                       const uint8_t *sig, size_t sig_len)
{
    uint8_t tmp[KH_TBS_TMP];
    const uint8_t *tbs;
    size_t tbs_len;
    if (sig_len != kh_crypto_sig_len(&op->key->pub, op->mech->op))
        return CKR_SIGNATURE_LEN_RANGE;
    CK_RV rv = op_tbs(op, raw, raw_len, tmp, &tbs, &tbs_len);
    if (rv == CKR_OK)
        rv = kh_crypto_verify(&op->key->pub, op->mech->op, &op->params, tbs, tbs_len, sig,
                              sig_len);
    kh_wipe(tmp, sizeof tmp);
    return rv;
}

/* Feed a part to op (caller holds s->lock or owns op). */
static CK_RV op_update(struct kh_sign_op *op, const uint8_t *part, size_t len)
{
    op->multipart = true;
    if (op->hash)
        return len ? kh_hash_update(op->hash, part, len) : CKR_OK;
    if (len > op->max - op->len)
        return CKR_DATA_LEN_RANGE;
    if (op->len + len > op->cap) {
        size_t cap = op->cap ? op->cap : 256;
        while (cap < op->len + len)
            cap = cap > op->max / 2 ? op->max : cap * 2;
        uint8_t *nb = malloc(cap);
        if (!nb)
            return CKR_HOST_MEMORY;
        if (op->buf) {
            memcpy(nb, op->buf, op->len);
            kh_wipe(op->buf, op->cap);
            free(op->buf);
        }
        op->buf = nb;
        op->cap = cap;
    }
    if (len)
        memcpy(op->buf + op->len, part, len);
    op->len += len;
    return CKR_OK;
}

/*
 * Under s->lock: find the active sign op and apply the length rules. Returns
 * the op detached from the session when the caller should go on and sign
 * (*rv == CKR_OK), NULL otherwise with *rv set (op kept on a length query or
 * CKR_BUFFER_TOO_SMALL, ended on anything else).
 */
static struct kh_sign_op *sign_take(kh_session *s, bool one_shot, bool args_ok, uint8_t *sig,
                                    CK_ULONG_PTR sig_len, CK_RV *rv)
{
    struct kh_sign_op *op = NULL;
    kh_mutex_lock(s->lock);
    op = s->sign;
    if (!op) {
        *rv = CKR_OPERATION_NOT_INITIALIZED;
        goto out_unlock_null;
    }
    if (!args_ok) {
        *rv = CKR_ARGUMENTS_BAD;
        goto out_end;
    }
    if (one_shot && op->multipart) {
        *rv = CKR_OPERATION_ACTIVE;
        goto out_end;
    }
    size_t need = kh_crypto_sig_len(&op->key->pub, op->mech->op);
    if (need == 0) {
        *rv = CKR_GENERAL_ERROR;
        goto out_end;
    }
    if (!out_room(sig, sig_len, need, rv))
        goto out_unlock_null;
    s->sign = NULL;
    kh_mutex_unlock(s->lock);
    *rv = CKR_OK;
    return op;

out_end:
    s->sign = NULL;
    kh_mutex_unlock(s->lock);
    sign_op_free(op);
    return NULL;
out_unlock_null:
    kh_mutex_unlock(s->lock);
    return NULL;
}

CK_RV kh_SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key)
{
    return op_init(h, mech, key, CKF_SIGN);
}

CK_RV kh_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG data_len, CK_BYTE_PTR sig,
              CK_ULONG_PTR sig_len)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, h);
    if (rv != CKR_OK)
        return rv;
    bool args_ok = sig_len && (data || data_len == 0);
    CK_ULONG dummy = 0;
    struct kh_sign_op *op = sign_take(s, true, args_ok, sig, sig_len ? sig_len : &dummy, &rv);
    if (op) {
        if (op->hash && data_len)
            rv = kh_hash_update(op->hash, data, data_len);
        if (rv == CKR_OK)
            rv = op_sign(s, op, data, data_len, sig, sig_len);
        sign_op_free(op);
    }
    kh_session_put(s);
    return rv;
}

/* C_SignUpdate / C_VerifyUpdate: an error ends the operation. */
static CK_RV op_update_call(CK_SESSION_HANDLE h, CK_BYTE_PTR part, CK_ULONG len,
                            CK_FLAGS purpose)
{
    kh_session *s;
    struct kh_sign_op *dead = NULL;
    CK_RV rv = kh_session_get(&s, h);
    if (rv != CKR_OK)
        return rv;
    kh_mutex_lock(s->lock);
    struct kh_sign_op **slot = op_slot(s, purpose);
    if (!*slot) {
        rv = CKR_OPERATION_NOT_INITIALIZED;
    } else {
        rv = (part || len == 0) ? op_update(*slot, part, len) : CKR_ARGUMENTS_BAD;
        if (rv != CKR_OK) {
            dead = *slot;
            *slot = NULL;
        }
    }
    kh_mutex_unlock(s->lock);
    sign_op_free(dead);
    kh_session_put(s);
    return rv;
}

CK_RV kh_SignUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR part, CK_ULONG len)
{
    return op_update_call(h, part, len, CKF_SIGN);
}

CK_RV kh_SignFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, h);
    if (rv != CKR_OK)
        return rv;
    CK_ULONG dummy = 0;
    struct kh_sign_op *op = sign_take(s, false, sig_len != NULL, sig,
                                      sig_len ? sig_len : &dummy, &rv);
    if (op) {
        rv = op_sign(s, op, op->buf, op->len, sig, sig_len);
        sign_op_free(op);
    }
    kh_session_put(s);
    return rv;
}

CK_RV kh_VerifyInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key)
{
    return op_init(h, mech, key, CKF_VERIFY);
}

/* Detach the verify op of s (it ends whatever the outcome). */
static struct kh_sign_op *verify_take(kh_session *s)
{
    kh_mutex_lock(s->lock);
    struct kh_sign_op *op = s->verify;
    s->verify = NULL;
    kh_mutex_unlock(s->lock);
    return op;
}

CK_RV kh_Verify(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG data_len, CK_BYTE_PTR sig,
                CK_ULONG sig_len)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, h);
    if (rv != CKR_OK)
        return rv;
    struct kh_sign_op *op = verify_take(s);
    if (!op)
        rv = CKR_OPERATION_NOT_INITIALIZED;
    else if (!sig || (!data && data_len))
        rv = CKR_ARGUMENTS_BAD;
    else if (op->multipart)
        rv = CKR_OPERATION_ACTIVE;
    else {
        if (op->hash && data_len)
            rv = kh_hash_update(op->hash, data, data_len);
        if (rv == CKR_OK)
            rv = op_verify(op, data, data_len, sig, sig_len);
    }
    sign_op_free(op);
    kh_session_put(s);
    return rv;
}

CK_RV kh_VerifyUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR part, CK_ULONG len)
{
    return op_update_call(h, part, len, CKF_VERIFY);
}

CK_RV kh_VerifyFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR sig, CK_ULONG sig_len)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, h);
    if (rv != CKR_OK)
        return rv;
    struct kh_sign_op *op = verify_take(s);
    if (!op)
        rv = CKR_OPERATION_NOT_INITIALIZED;
    else if (!sig)
        rv = CKR_ARGUMENTS_BAD;
    else
        rv = op_verify(op, op->buf, op->len, sig, sig_len);
    sign_op_free(op);
    kh_session_put(s);
    return rv;
}

/* ---- digests ---- */

CK_RV kh_DigestInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR mech)
{
    kh_session *s;
    struct kh_digest_op *op = NULL;
    if (!mech)
        return CKR_ARGUMENTS_BAD;
    CK_RV rv = kh_session_get(&s, h);
    if (rv != CKR_OK)
        return rv;
    const kh_mech *m = kh_mech_find(mech->mechanism);
    kh_mutex_lock(s->lock);
    bool active = s->digest != NULL;
    kh_mutex_unlock(s->lock);
    if (active) {
        rv = CKR_OPERATION_ACTIVE;
        goto out_put;
    }
    if (!m || !(m->flags & CKF_DIGEST) || m->hash == KH_HASH_NONE) {
        rv = CKR_MECHANISM_INVALID;
        goto out_put;
    }
    if (mech->ulParameterLen != 0) {
        rv = CKR_MECHANISM_PARAM_INVALID;
        goto out_put;
    }
    op = calloc(1, sizeof *op);
    if (!op) {
        rv = CKR_HOST_MEMORY;
        goto out_put;
    }
    op->hash = m->hash;
    rv = kh_hash_new(&op->ctx, m->hash);
    if (rv != CKR_OK) {
        op->ctx = NULL;
        goto out_free;
    }
    kh_mutex_lock(s->lock);
    if (s->digest) {
        rv = CKR_OPERATION_ACTIVE;
    } else {
        s->digest = op;
        op = NULL;
    }
    kh_mutex_unlock(s->lock);
out_free:
    digest_op_free(op);
out_put:
    kh_session_put(s);
    return rv;
}

/*
 * Under s->lock: the digest op for C_Digest / C_DigestFinal, with the same
 * length rules as sign_take.
 */
static struct kh_digest_op *digest_take(kh_session *s, bool one_shot, bool args_ok,
                                        uint8_t *out, CK_ULONG_PTR out_len, CK_RV *rv)
{
    kh_mutex_lock(s->lock);
    struct kh_digest_op *op = s->digest;
    if (!op) {
        *rv = CKR_OPERATION_NOT_INITIALIZED;
        goto out_unlock_null;
    }
    if (!args_ok) {
        *rv = CKR_ARGUMENTS_BAD;
        goto out_end;
    }
    if (one_shot && op->multipart) {
        *rv = CKR_OPERATION_ACTIVE;
        goto out_end;
    }
    size_t need = kh_hash_len(op->hash);
    if (!out_room(out, out_len, need, rv))
        goto out_unlock_null;
    s->digest = NULL;
    kh_mutex_unlock(s->lock);
    *rv = CKR_OK;
    return op;

out_end:
    s->digest = NULL;
    kh_mutex_unlock(s->lock);
    digest_op_free(op);
    return NULL;
out_unlock_null:
    kh_mutex_unlock(s->lock);
    return NULL;
}

static CK_RV digest_finish(struct kh_digest_op *op, uint8_t *out, CK_ULONG_PTR out_len)
{
    CK_RV rv = kh_hash_final(op->ctx, out);
    if (rv == CKR_OK)
        *out_len = kh_hash_len(op->hash);
    return rv;
}

CK_RV kh_Digest(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG data_len, CK_BYTE_PTR out,
                CK_ULONG_PTR out_len)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, h);
    if (rv != CKR_OK)
        return rv;
    CK_ULONG dummy = 0;
    bool args_ok = out_len && (data || data_len == 0);
    struct kh_digest_op *op = digest_take(s, true, args_ok, out, out_len ? out_len : &dummy,
                                          &rv);
    if (op) {
        if (data_len)
            rv = kh_hash_update(op->ctx, data, data_len);
        if (rv == CKR_OK)
            rv = digest_finish(op, out, out_len);
        digest_op_free(op);
    }
    kh_session_put(s);
    return rv;
}

CK_RV kh_DigestUpdate(CK_SESSION_HANDLE h, CK_BYTE_PTR part, CK_ULONG len)
{
    kh_session *s;
    struct kh_digest_op *dead = NULL;
    CK_RV rv = kh_session_get(&s, h);
    if (rv != CKR_OK)
        return rv;
    kh_mutex_lock(s->lock);
    if (!s->digest) {
        rv = CKR_OPERATION_NOT_INITIALIZED;
    } else {
        s->digest->multipart = true;
        if (!part && len)
            rv = CKR_ARGUMENTS_BAD;
        else if (len)
            rv = kh_hash_update(s->digest->ctx, part, len);
        if (rv != CKR_OK) {
            dead = s->digest;
            s->digest = NULL;
        }
    }
    kh_mutex_unlock(s->lock);
    digest_op_free(dead);
    kh_session_put(s);
    return rv;
}

CK_RV kh_DigestFinal(CK_SESSION_HANDLE h, CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, h);
    if (rv != CKR_OK)
        return rv;
    CK_ULONG dummy = 0;
    struct kh_digest_op *op = digest_take(s, false, out_len != NULL, out,
                                          out_len ? out_len : &dummy, &rv);
    if (op) {
        rv = digest_finish(op, out, out_len);
        digest_op_free(op);
    }
    kh_session_put(s);
    return rv;
}

/*
 * Objects: creation, key-pair generation, search, attributes, destruction.
 *
 * Token objects live in the store (handle = row id); session objects live in
 * a process list (handle has KH_SESSION_OBJ_BIT). Both are kh_obj_rec: the
 * full attribute set plus the sealed private blob. Which attribute may
 * appear where is decided by the policy table (policy.c) alone.
 *
 * Resolved keys are cached per process by handle and dropped whenever the
 * store reports a write by another connection (PRAGMA data_version) or this
 * process writes. C_SignInit must not act on a key another process has
 * deleted or changed once that write has committed, so every resolution
 * checks; the check is lock-free when nothing was committed since the last
 * one (keys_fresh: the store's WAL-index stamp, a few loads from shared
 * memory), and only a changed stamp takes the store lock and asks SQLite.
 */
#include "internal.h"
#include "policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- attribute lists ---- */

static CK_RV rec_set(kh_obj_rec *rec, CK_ATTRIBUTE_TYPE type, const void *val, CK_ULONG len)
{
    void *copy = malloc(len ? len : 1);
    if (!copy)
        return CKR_HOST_MEMORY;
    if (len)
        memcpy(copy, val, len);
    for (size_t i = 0; i < rec->nattrs; i++) {
        if (rec->attrs[i].type == type) {
            free(rec->attrs[i].pValue);
            rec->attrs[i].pValue = copy;
            rec->attrs[i].ulValueLen = len;
            return CKR_OK;
        }
    }
    CK_ATTRIBUTE *grown = realloc(rec->attrs, (rec->nattrs + 1) * sizeof *grown);
    if (!grown) {
        free(copy);
        return CKR_HOST_MEMORY;
    }
    rec->attrs = grown;
    rec->attrs[rec->nattrs].type = type;
    rec->attrs[rec->nattrs].pValue = copy;
    rec->attrs[rec->nattrs].ulValueLen = len;
    rec->nattrs++;
    return CKR_OK;
}

static CK_RV rec_set_bool(kh_obj_rec *rec, CK_ATTRIBUTE_TYPE type, bool v)
{
    CK_BBOOL b = v ? CK_TRUE : CK_FALSE;
    return rec_set(rec, type, &b, sizeof b);
}

static CK_RV rec_set_ulong(kh_obj_rec *rec, CK_ATTRIBUTE_TYPE type, CK_ULONG v)
{
    return rec_set(rec, type, &v, sizeof v);
}

static bool attr_bool(const CK_ATTRIBUTE *a, bool dflt)
{
    if (!a || a->ulValueLen != sizeof(CK_BBOOL) || !a->pValue)
        return dflt;
    return *(const CK_BBOOL *)a->pValue == CK_TRUE;
}

static bool attr_ulong(const CK_ATTRIBUTE *a, CK_ULONG *out)
{
    if (!a || a->ulValueLen != sizeof(CK_ULONG) || !a->pValue)
        return false;
    memcpy(out, a->pValue, sizeof *out);
    return true;
}

static const CK_ATTRIBUTE *tmpl_find(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type)
{
    for (CK_ULONG i = 0; i < n; i++)
        if (t[i].type == type)
            return &t[i];
    return NULL;
}

static bool rec_bool(const kh_obj_rec *rec, CK_ATTRIBUTE_TYPE type, bool dflt)
{
    return attr_bool(kh_obj_rec_attr(rec, type), dflt);
}

static CK_RV rec_copy(kh_obj_rec *dst, const kh_obj_rec *src)
{
    memset(dst, 0, sizeof *dst);
    dst->id = src->id;
    dst->token_id = src->token_id;
    memcpy(dst->uid, src->uid, KH_UID_LEN);
    for (size_t i = 0; i < src->nattrs; i++) {
        CK_RV rv = rec_set(dst, src->attrs[i].type, src->attrs[i].pValue, src->attrs[i].ulValueLen);
        if (rv != CKR_OK) {
            kh_obj_rec_clear(dst);
            return rv;
        }
    }
    if (src->sealed_len) {
        dst->sealed = malloc(src->sealed_len);
        if (!dst->sealed) {
            kh_obj_rec_clear(dst);
            return CKR_HOST_MEMORY;
        }
        memcpy(dst->sealed, src->sealed, src->sealed_len);
        dst->sealed_len = src->sealed_len;
    }
    return CKR_OK;
}

CK_RV kh_out_bytes(CK_BYTE_PTR out, CK_ULONG_PTR len, const uint8_t *val, size_t n)
{
    if (!len)
        return CKR_ARGUMENTS_BAD;
    if (!out) {
        *len = n;
        return CKR_OK;
    }
    if (*len < n) {
        *len = n;
        return CKR_BUFFER_TOO_SMALL;
    }
    memcpy(out, val, n);
    *len = n;
    return CKR_OK;
}

/* ---- curves and public keys ---- */

static const struct {
    kh_alg alg;
    CK_KEY_TYPE kt;
    const char *name;
    uint8_t der[16];
    size_t len;
} curves[] = {
    { KH_ALG_SECP256K1, CKK_EC, "secp256k1", { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a }, 7 },
    { KH_ALG_P256, CKK_EC, "P-256", { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 }, 10 },
    { KH_ALG_P384, CKK_EC, "P-384", { 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22 }, 7 },
    { KH_ALG_ED25519, CKK_EC_EDWARDS, "Ed25519", { 0x06, 0x03, 0x2b, 0x65, 0x70 }, 5 },
    { KH_ALG_ED25519, CKK_EC_EDWARDS, "edwards25519",
      { 0x13, 0x0c, 'e', 'd', 'w', 'a', 'r', 'd', 's', '2', '5', '5', '1', '9' }, 14 },
};

kh_alg kh_alg_from_ec_params(const uint8_t *params, size_t len)
{
    for (size_t i = 0; i < sizeof curves / sizeof curves[0]; i++)
        if (len == curves[i].len && memcmp(params, curves[i].der, len) == 0)
            return curves[i].alg;
    return KH_ALG_NONE;
}

/* The CKA_EC_PARAMS (OID) of an EC alg, or NULL. Out: *len. */
static const uint8_t *alg_ec_params(kh_alg alg, size_t *len)
{
    for (size_t i = 0; i < sizeof curves / sizeof curves[0]; i++) {
        if (curves[i].alg == alg) {
            *len = curves[i].len;
            return curves[i].der;
        }
    }
    return NULL;
}

static CK_KEY_TYPE alg_key_type(kh_alg alg)
{
    return alg == KH_ALG_ED25519 ? CKK_EC_EDWARDS : alg == KH_ALG_RSA ? CKK_RSA : CKK_EC;
}

static size_t alg_point_len(kh_alg alg)
{
    switch (alg) {
    case KH_ALG_SECP256K1:
    case KH_ALG_P256: return 65;
    case KH_ALG_P384: return 97;
    case KH_ALG_ED25519: return 32;
    default: return 0;
    }
}

/* CKA_EC_POINT as given (DER OCTET STRING or raw) -> raw point. */
static CK_RV ec_point_unwrap(uint8_t *out, size_t *out_len, kh_alg alg, const uint8_t *p, size_t len)
{
    size_t want = alg_point_len(alg);
    if (len == want + 2 && p[0] == 0x04 && p[1] == want) {
        p += 2;
        len -= 2;
    }
    if (len != want)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    if (alg != KH_ALG_ED25519 && p[0] != 0x04)
        return CKR_ATTRIBUTE_VALUE_INVALID; /* only uncompressed points */
    memcpy(out, p, len);
    *out_len = len;
    return CKR_OK;
}

static void strip_zeros(const uint8_t **p, size_t *len)
{
    while (*len > 1 && (*p)[0] == 0) {
        (*p)++;
        (*len)--;
    }
}

/* Public key of an object from its attributes. */
static CK_RV rec_pubkey(kh_pubkey *pub, const kh_obj_rec *rec, CK_KEY_TYPE kt)
{
    memset(pub, 0, sizeof *pub);
    if (kt == CKK_EC || kt == CKK_EC_EDWARDS) {
        const CK_ATTRIBUTE *params = kh_obj_rec_attr(rec, CKA_EC_PARAMS);
        const CK_ATTRIBUTE *point = kh_obj_rec_attr(rec, CKA_EC_POINT);
        if (!params || !point)
            return CKR_TEMPLATE_INCOMPLETE;
        pub->alg = kh_alg_from_ec_params(params->pValue, params->ulValueLen);
        if (pub->alg == KH_ALG_NONE || alg_key_type(pub->alg) != kt)
            return CKR_CURVE_NOT_SUPPORTED;
        return ec_point_unwrap(pub->point, &pub->point_len, pub->alg, point->pValue, point->ulValueLen);
    }
    if (kt == CKK_RSA) {
        const CK_ATTRIBUTE *n = kh_obj_rec_attr(rec, CKA_MODULUS);
        const CK_ATTRIBUTE *e = kh_obj_rec_attr(rec, CKA_PUBLIC_EXPONENT);
        if (!n || !e)
            return CKR_TEMPLATE_INCOMPLETE;
        const uint8_t *np = n->pValue, *ep = e->pValue;
        size_t nl = n->ulValueLen, el = e->ulValueLen;
        if (!nl || !el)
            return CKR_ATTRIBUTE_VALUE_INVALID;
        strip_zeros(&np, &nl);
        strip_zeros(&ep, &el);
        if (nl > KH_RSA_MAX_BYTES || el > sizeof pub->e || nl < 256)
            return CKR_ATTRIBUTE_VALUE_INVALID;
        pub->alg = KH_ALG_RSA;
        memcpy(pub->n, np, nl);
        pub->n_len = nl;
        memcpy(pub->e, ep, el);
        pub->e_len = el;
        return CKR_OK;
    }
    return CKR_KEY_TYPE_INCONSISTENT;
}

/* Write the public attributes derived from pub into rec (both key classes). */
static CK_RV rec_set_public(kh_obj_rec *rec, const kh_pubkey *pub)
{
    CK_RV rv;
    if (pub->alg == KH_ALG_RSA) {
        rv = rec_set(rec, CKA_MODULUS, pub->n, pub->n_len);
        if (rv == CKR_OK)
            rv = rec_set(rec, CKA_PUBLIC_EXPONENT, pub->e, pub->e_len);
        if (rv == CKR_OK) { /* on private keys too: consumers size signatures from it */
            CK_ULONG bits = pub->n_len * 8;
            uint8_t top = pub->n[0];
            while (bits && !(top & 0x80)) {
                top <<= 1;
                bits--;
            }
            rv = rec_set_ulong(rec, CKA_MODULUS_BITS, bits);
        }
        return rv;
    }
    uint8_t der[2 + KH_EC_POINT_MAX];
    der[0] = 0x04;
    der[1] = (uint8_t)pub->point_len;
    memcpy(der + 2, pub->point, pub->point_len);
    return rec_set(rec, CKA_EC_POINT, der, pub->point_len + 2);
}

/* ---- defaults ---- */

static CK_RV rec_defaults(kh_obj_rec *rec, CK_OBJECT_CLASS cls, CK_KEY_TYPE kt)
{
    CK_RV rv = kh_random(rec->uid, KH_UID_LEN);
    char uid_hex[2 * KH_UID_LEN + 1];
    for (size_t i = 0; i < KH_UID_LEN; i++)
        snprintf(uid_hex + 2 * i, 3, "%02x", rec->uid[i]);
    if (rv == CKR_OK) rv = rec_set_ulong(rec, CKA_CLASS, cls);
    if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_TOKEN, false);
    if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_PRIVATE, cls == CKO_PRIVATE_KEY);
    if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_MODIFIABLE, true);
    if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_COPYABLE, false);
    if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_DESTROYABLE, true);
    if (rv == CKR_OK) rv = rec_set(rec, CKA_LABEL, "", 0);
    if (rv == CKR_OK) rv = rec_set(rec, CKA_UNIQUE_ID, uid_hex, 2 * KH_UID_LEN);
    if (rv != CKR_OK || cls == CKO_DATA) {
        if (rv == CKR_OK) rv = rec_set(rec, CKA_APPLICATION, "", 0);
        if (rv == CKR_OK) rv = rec_set(rec, CKA_OBJECT_ID, "", 0);
        if (rv == CKR_OK) rv = rec_set(rec, CKA_VALUE, "", 0);
        return rv;
    }
    if (rv == CKR_OK) rv = rec_set_ulong(rec, CKA_KEY_TYPE, kt);
    if (rv == CKR_OK) rv = rec_set(rec, CKA_ID, "", 0);
    if (rv == CKR_OK) rv = rec_set(rec, CKA_START_DATE, "", 0);
    if (rv == CKR_OK) rv = rec_set(rec, CKA_END_DATE, "", 0);
    if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_DERIVE, false);
    if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_LOCAL, false);
    if (rv == CKR_OK) rv = rec_set_ulong(rec, CKA_KEY_GEN_MECHANISM, CK_UNAVAILABLE_INFORMATION);
    if (rv == CKR_OK) rv = rec_set(rec, CKA_SUBJECT, "", 0);
    if (cls == CKO_PUBLIC_KEY) {
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_ENCRYPT, false);
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_VERIFY, true);
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_VERIFY_RECOVER, false);
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_WRAP, false);
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_TRUSTED, false);
    } else {
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_SENSITIVE, true);
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_DECRYPT, false);
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_SIGN, true);
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_SIGN_RECOVER, false);
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_UNWRAP, false);
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_EXTRACTABLE, false);
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_ALWAYS_SENSITIVE, true);
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_NEVER_EXTRACTABLE, true);
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_WRAP_WITH_TRUSTED, false);
        if (rv == CKR_OK) rv = rec_set_bool(rec, CKA_ALWAYS_AUTHENTICATE, false);
    }
    return rv;
}

/* Copy a checked template into rec, skipping private values. */
static CK_RV rec_apply(kh_obj_rec *rec, CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, const CK_ATTRIBUTE *t, CK_ULONG n)
{
    for (CK_ULONG i = 0; i < n; i++) {
        const kh_attr_rule *r = kh_policy_rule(cls, kt, t[i].type);
        if (!r || (r->flags & KH_AF_SECRET))
            continue;
        CK_RV rv = rec_set(rec, t[i].type, t[i].pValue, t[i].ulValueLen);
        if (rv != CKR_OK)
            return rv;
    }
    return CKR_OK;
}

/* ---- session objects ---- */

typedef struct kh_sobj {
    CK_OBJECT_HANDLE handle;
    CK_SESSION_HANDLE owner;
    kh_obj_rec rec;
    struct kh_sobj *next;
} kh_sobj;

static kh_sobj *sobjs;                /* under kh_mod.lock */
static kh_mutex *keys_lock;           /* resolved-key cache: leaf lock, created lazily */
static CK_OBJECT_HANDLE sobj_next = 1;

static void sobj_free(kh_sobj *o)
{
    if (o->rec.sealed)
        kh_wipe(o->rec.sealed, o->rec.sealed_len);
    kh_obj_rec_clear(&o->rec);
    free(o);
}

void kh_objects_drop_session(CK_SESSION_HANDLE h)
{
    kh_mutex_lock(kh_mod.lock);
    kh_sobj **pp = &sobjs;
    while (*pp) {
        if ((*pp)->owner == h) {
            kh_sobj *o = *pp;
            *pp = o->next;
            sobj_free(o);
        } else {
            pp = &(*pp)->next;
        }
    }
    kh_mutex_unlock(kh_mod.lock);
}

void kh_objects_drop_token(int64_t token_id)
{
    kh_mutex_lock(kh_mod.lock);
    kh_sobj **pp = &sobjs;
    while (*pp) {
        if ((*pp)->rec.token_id == token_id) {
            kh_sobj *o = *pp;
            *pp = o->next;
            sobj_free(o);
        } else {
            pp = &(*pp)->next;
        }
    }
    kh_mutex_unlock(kh_mod.lock);
}

static void keys_flush(void);

void kh_objects_free_all(void)
{
    while (sobjs) {
        kh_sobj *o = sobjs;
        sobjs = o->next;
        sobj_free(o);
    }
    keys_flush();
    if (keys_lock) {
        kh_mutex_free(keys_lock); /* may be an application mutex: not beyond C_Finalize */
        keys_lock = NULL;
    }
}

/* ---- object access ---- */

static bool user_in(kh_session *s)
{
    return kh_token_user_logged_in(s->tok);
}

/*
 * Load object h as seen from s into *out (a copy). Private objects are
 * invisible without a user login. CKR_OBJECT_HANDLE_INVALID otherwise.
 */
static CK_RV obj_load(kh_obj_rec *out, kh_session *s, CK_OBJECT_HANDLE h)
{
    CK_RV rv = CKR_OBJECT_HANDLE_INVALID;
    if (h & KH_SESSION_OBJ_BIT) {
        kh_mutex_lock(kh_mod.lock);
        for (kh_sobj *o = sobjs; o; o = o->next)
            if (o->handle == h && o->rec.token_id == s->tok->id) {
                rv = rec_copy(out, &o->rec);
                break;
            }
        kh_mutex_unlock(kh_mod.lock);
    } else if (h != CK_INVALID_HANDLE) {
        kh_store *st;
        rv = kh_store_acquire(&st);
        if (rv != CKR_OK)
            return rv;
        rv = kh_store_obj_get(st, out, (int64_t)h);
        kh_store_release();
        if (rv == CKR_OK && out->token_id != s->tok->id) {
            kh_obj_rec_clear(out);
            rv = CKR_OBJECT_HANDLE_INVALID;
        }
    }
    if (rv != CKR_OK)
        return rv;
    if (rec_bool(out, CKA_PRIVATE, false) && !user_in(s)) {
        kh_obj_rec_clear(out);
        return CKR_OBJECT_HANDLE_INVALID;
    }
    return CKR_OK;
}

static bool is_token_handle(CK_OBJECT_HANDLE h)
{
    return !(h & KH_SESSION_OBJ_BIT);
}

/* ---- the resolved-key cache (token objects) ---- */

#define KH_KEYS_BUCKETS 256
static struct kh_key_node { kh_key *key; struct kh_key_node *next; } *key_nodes[KH_KEYS_BUCKETS];

/*
 * Drop one reference; the last one frees. refs is atomic, so a holder drops
 * its reference without keys_lock: the cache's own reference is taken and
 * dropped under keys_lock, and a holder's is taken there (lookup) or before
 * the key is shared at all.
 */
static void key_unref(kh_key *key)
{
    if (__atomic_sub_fetch(&key->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        free(key->allowed);
        if (key->sealed)
            kh_wipe(key->sealed, key->sealed_len);
        free(key->sealed);
        free(key);
    }
}

/* Bumped by every flush: a key loaded from the store before a flush is not
 * cached after it (it may be what the flush was about). Under keys_lock. */
static uint64_t keys_gen;

static void keys_flush_locked(void)
{
    keys_gen++;
    for (size_t b = 0; b < KH_KEYS_BUCKETS; b++) {
        struct kh_key_node *n = key_nodes[b];
        while (n) {
            struct kh_key_node *next = n->next;
            key_unref(n->key);
            free(n);
            n = next;
        }
        key_nodes[b] = NULL;
    }
}

static kh_mutex *keys_lock_get(void)
{
    if (!keys_lock) {
        kh_mutex_lock(kh_mod.lock);
        if (!keys_lock && kh_mutex_new(&keys_lock) != CKR_OK)
            keys_lock = NULL;
        kh_mutex_unlock(kh_mod.lock);
    }
    return keys_lock;
}

static void keys_flush(void)
{
    if (!keys_lock)
        return;
    kh_mutex_lock(keys_lock);
    keys_flush_locked();
    kh_mutex_unlock(keys_lock);
}

/*
 * A forked child: forget the session objects and the resolved-key cache
 * without touching them or their lock. A thread of the parent may have held
 * keys_lock or been editing a list when the process forked; that thread does
 * not exist here, so neither the lock nor the lists can be trusted. What
 * they held is leaked (never used again); sealed blobs are ciphertext.
 */
void kh_objects_forked(void)
{
    sobjs = NULL;
    keys_lock = NULL;
    memset(key_nodes, 0, sizeof key_nodes);
    keys_gen++;
}

/* The store was written by this process: cached keys may be stale. */
static void keys_invalidate(void)
{
    keys_flush();
}

/*
 * The stamp at which the cache was last checked against the store, written
 * under the store lock (a sequence count, odd while it is being written) and
 * read without a lock by keys_fresh.
 */
static struct {
    unsigned seq;
    unsigned valid;
    uint32_t w[sizeof(kh_store_stamp) / sizeof(uint32_t)];
} keys_seen;

/* Caller holds the store lock (which serialises writers). */
static void keys_seen_publish_locked(const kh_store_stamp *stamp, bool valid)
{
    unsigned s = __atomic_load_n(&keys_seen.seq, __ATOMIC_RELAXED);
    __atomic_store_n(&keys_seen.seq, s + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&keys_seen.valid, valid ? 1u : 0u, __ATOMIC_RELAXED);
    for (size_t i = 0; valid && i < sizeof keys_seen.w / sizeof keys_seen.w[0]; i++)
        __atomic_store_n(&keys_seen.w[i], stamp->w[i], __ATOMIC_RELAXED);
    __atomic_store_n(&keys_seen.seq, s + 2, __ATOMIC_RELEASE);
}

/*
 * True when nothing was committed to the store since the cache was last
 * checked against it: the store's stamp now equals the one published after
 * that check. False (check with the store) when unsure.
 */
static bool keys_fresh(void)
{
    kh_store *st = __atomic_load_n(&kh_mod.store, __ATOMIC_ACQUIRE);
    kh_store_stamp now;
    uint32_t seen[sizeof keys_seen.w / sizeof keys_seen.w[0]];
    unsigned s1, s2, valid;

    if (!st || !kh_store_stamp_read(st, &now))
        return false;
    s1 = __atomic_load_n(&keys_seen.seq, __ATOMIC_ACQUIRE);
    if (s1 & 1u)
        return false;
    valid = __atomic_load_n(&keys_seen.valid, __ATOMIC_RELAXED);
    for (size_t i = 0; i < sizeof seen / sizeof seen[0]; i++)
        seen[i] = __atomic_load_n(&keys_seen.w[i], __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    s2 = __atomic_load_n(&keys_seen.seq, __ATOMIC_RELAXED);
    return s1 == s2 && valid && memcmp(seen, now.w, sizeof seen) == 0;
}

/*
 * The slow path: under the store lock, read the stamp, then ask SQLite
 * whether another connection wrote (PRAGMA data_version), drop the cache if
 * so, and only then publish the stamp. The stamp is read before the question
 * so that it never covers a commit the question did not see; the flush
 * happens before the publication (and both under the store lock) so that no
 * thread can find the new stamp fresh while stale keys are still cached.
 */
static CK_RV keys_check_store(void)
{
    kh_store *st;
    kh_store_stamp stamp;
    CK_RV rv = kh_store_acquire(&st);
    if (rv != CKR_OK)
        return rv;
    bool have = kh_store_stamp_read(st, &stamp);
    if (kh_store_changed(st))
        keys_flush();
    keys_seen_publish_locked(&stamp, have);
    kh_store_release();
    return CKR_OK;
}

void kh_key_free(kh_key *key)
{
    if (key)
        key_unref(key);
}

CK_RV kh_key_unseal(uint8_t **out, size_t *out_len, kh_token *tok, const kh_key *key,
                    const char *who)
{
    uint8_t token_key[KH_TOKEN_KEY_LEN];
    uint8_t aad[KH_OBJ_AAD_LEN];
    CK_RV rv;

    *out = NULL;
    *out_len = 0;
    if (!key->sealed || key->sealed_len == 0)
        return CKR_KH_STORE_ERROR;
    rv = kh_token_key_copy(tok, token_key);
    if (rv != CKR_OK)
        goto out_wipe;
    kh_obj_aad(aad, key->token_uid, key->uid);
    rv = kh_unseal(out, out_len, token_key, aad, sizeof aad, key->sealed, key->sealed_len);
    if (rv == CKR_ENCRYPTED_DATA_INVALID) {
        kh_log(KH_LOG_ERROR, "%s: sealed blob of object %lu does not open: store corrupted", who,
               (unsigned long)key->handle);
        rv = CKR_KH_STORE_ERROR;
    }
out_wipe:
    kh_wipe(token_key, sizeof token_key);
    return rv;
}

static CK_RV key_build(kh_key **out, const kh_obj_rec *rec, CK_OBJECT_HANDLE h, kh_token *tok)
{
    CK_ULONG cls = 0, kt = 0;
    if (!attr_ulong(kh_obj_rec_attr(rec, CKA_CLASS), &cls) || !attr_ulong(kh_obj_rec_attr(rec, CKA_KEY_TYPE), &kt) ||
        (cls != CKO_PRIVATE_KEY && cls != CKO_PUBLIC_KEY))
        return CKR_KEY_HANDLE_INVALID;
    kh_key *key = calloc(1, sizeof *key);
    if (!key)
        return CKR_HOST_MEMORY;
    key->refs = 1;
    key->handle = h;
    key->token_id = rec->token_id;
    memcpy(key->uid, rec->uid, KH_UID_LEN);
    memcpy(key->token_uid, tok->rec.uid, KH_UID_LEN);
    key->cls = cls;
    key->key_type = kt;
    CK_RV rv = rec_pubkey(&key->pub, rec, kt);
    if (rv != CKR_OK) {
        free(key);
        return CKR_KEY_HANDLE_INVALID;
    }
    key->can_sign = cls == CKO_PRIVATE_KEY && rec_bool(rec, CKA_SIGN, false);
    key->can_verify = cls == CKO_PUBLIC_KEY && rec_bool(rec, CKA_VERIFY, false);
    key->always_authenticate = rec_bool(rec, CKA_ALWAYS_AUTHENTICATE, false);
    key->private_obj = rec_bool(rec, CKA_PRIVATE, false);
    key->backend = CKV_KH_BACKEND_VAULT;
    attr_ulong(kh_obj_rec_attr(rec, CKA_KH_BACKEND), &key->backend);
    const CK_ATTRIBUTE *am = kh_obj_rec_attr(rec, CKA_ALLOWED_MECHANISMS);
    if (am && am->ulValueLen >= sizeof(CK_MECHANISM_TYPE)) {
        key->allowed = malloc(am->ulValueLen);
        if (!key->allowed) {
            free(key);
            return CKR_HOST_MEMORY;
        }
        memcpy(key->allowed, am->pValue, am->ulValueLen);
        key->nallowed = am->ulValueLen / sizeof(CK_MECHANISM_TYPE);
    }
    if (rec->sealed_len) {
        key->sealed = malloc(rec->sealed_len);
        if (!key->sealed) {
            free(key->allowed);
            free(key);
            return CKR_HOST_MEMORY;
        }
        memcpy(key->sealed, rec->sealed, rec->sealed_len);
        key->sealed_len = rec->sealed_len;
    }
    *out = key;
    return CKR_OK;
}

CK_RV kh_object_key(kh_key **out, kh_session *s, CK_OBJECT_HANDLE h)
{
    kh_mutex *l = keys_lock_get();
    if (!l)
        return CKR_HOST_MEMORY;
    kh_obj_rec rec;
    uint64_t gen = 0;
    CK_RV rv;
    if (is_token_handle(h)) {
        if (!keys_fresh()) {
            rv = keys_check_store();
            if (rv != CKR_OK)
                return rv;
        }
        kh_mutex_lock(l);
        kh_key *hit = NULL;
        for (struct kh_key_node *n = key_nodes[h % KH_KEYS_BUCKETS]; n; n = n->next)
            if (n->key->handle == h) {
                hit = n->key;
                __atomic_add_fetch(&hit->refs, 1, __ATOMIC_RELAXED);
                break;
            }
        gen = keys_gen; /* on a miss: a flush from here on keeps the key loaded below out */
        kh_mutex_unlock(l);
        if (hit) {
            if (hit->token_id != s->tok->id || (hit->private_obj && !user_in(s))) {
                kh_key_free(hit);
                return CKR_KEY_HANDLE_INVALID;
            }
            *out = hit;
            return CKR_OK;
        }
    }
    rv = obj_load(&rec, s, h);
    if (rv != CKR_OK)
        return rv == CKR_OBJECT_HANDLE_INVALID ? CKR_KEY_HANDLE_INVALID : rv;
    kh_key *key;
    rv = key_build(&key, &rec, h, s->tok);
    kh_obj_rec_clear(&rec);
    if (rv != CKR_OK)
        return rv;
    if (is_token_handle(h)) {
        struct kh_key_node *node = malloc(sizeof *node);
        if (node) {
            kh_mutex_lock(l);
            if (keys_gen == gen) {
                node->key = key;
                __atomic_add_fetch(&key->refs, 1, __ATOMIC_RELAXED);
                node->next = key_nodes[h % KH_KEYS_BUCKETS];
                key_nodes[h % KH_KEYS_BUCKETS] = node;
                node = NULL;
            }
            kh_mutex_unlock(l);
            free(node);
        }
    }
    *out = key;
    return CKR_OK;
}

/* ---- writing objects ---- */

/* Token objects need a R/W session; private objects need the user. */
static CK_RV check_write(kh_session *s, bool token, bool priv)
{
    if (token && !(s->flags & CKF_RW_SESSION))
        return CKR_SESSION_READ_ONLY;
    CK_STATE st = kh_session_state(s);
    if (priv && st != CKS_RO_USER_FUNCTIONS && st != CKS_RW_USER_FUNCTIONS)
        return CKR_USER_NOT_LOGGED_IN;
    return CKR_OK;
}

/*
 * Store one or two records (token or session); out handles. With event, the
 * token records and an audit row of that event go in one transaction (one
 * commit, one fsync): its detail names the last token record's handle,
 * then detail_tail.
 */
static CK_RV objs_insert(kh_session *s, kh_obj_rec *recs, size_t n, CK_OBJECT_HANDLE *handles,
                         const char *event, const char *detail_tail)
{
    size_t ntok = 0;
    for (size_t i = 0; i < n; i++) {
        recs[i].token_id = s->tok->id;
        if (rec_bool(&recs[i], CKA_TOKEN, false))
            ntok++;
    }
    if (ntok) {
        kh_obj_rec *tok_recs[2];
        kh_obj_rec batch[2];
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (rec_bool(&recs[i], CKA_TOKEN, false)) {
                tok_recs[k] = &recs[i];
                batch[k++] = recs[i];
            }
        int64_t ids[2];
        kh_store *st;
        CK_RV rv = kh_store_acquire(&st);
        if (rv != CKR_OK)
            return rv;
        if (event)
            rv = kh_store_obj_insert_audited(st, ids, batch, k, s->tok->id, event, detail_tail);
        else
            rv = kh_store_obj_insert_many(st, ids, batch, k);
        kh_store_release();
        if (rv != CKR_OK)
            return rv;
        for (size_t i = 0; i < k; i++)
            tok_recs[i]->id = ids[i];
    }
    kh_mutex_lock(kh_mod.lock);
    for (size_t i = 0; i < n; i++) {
        if (rec_bool(&recs[i], CKA_TOKEN, false)) {
            handles[i] = (CK_OBJECT_HANDLE)recs[i].id;
            continue;
        }
        kh_sobj *o = calloc(1, sizeof *o);
        if (!o) {
            kh_mutex_unlock(kh_mod.lock);
            return CKR_HOST_MEMORY; /* token rows already written stay: rare, and they are valid objects */
        }
        o->handle = KH_SESSION_OBJ_BIT | sobj_next++;
        o->owner = s->handle;
        o->rec = recs[i];
        memset(&recs[i], 0, sizeof recs[i]); /* ownership moved */
        o->next = sobjs;
        sobjs = o;
        handles[i] = o->handle;
    }
    kh_mutex_unlock(kh_mod.lock);
    return CKR_OK;
}

/* Seal a backend blob for rec under the token key. */
static CK_RV rec_seal(kh_obj_rec *rec, kh_session *s, const uint8_t *blob, size_t blob_len)
{
    uint8_t key[KH_TOKEN_KEY_LEN];
    uint8_t aad[KH_OBJ_AAD_LEN];
    CK_RV rv = kh_token_key_copy(s->tok, key);
    if (rv != CKR_OK)
        return rv;
    kh_obj_aad(aad, s->tok->rec.uid, rec->uid);
    rv = kh_seal(&rec->sealed, &rec->sealed_len, key, aad, sizeof aad, blob, blob_len);
    kh_wipe(key, sizeof key);
    return rv;
}

/*
 * What a private key the module did not generate gets (imported, adopted,
 * registered): the public attributes of pub, the backend that holds it,
 * CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE false (what happened to
 * the key before is not known here), and the backend's blob sealed under
 * the token key.
 */
static CK_RV rec_set_outside_key(kh_obj_rec *rec, kh_session *s, const kh_pubkey *pub,
                                 CK_ULONG backend, const uint8_t *blob, size_t blob_len)
{
    CK_RV rv = rec_set_public(rec, pub);
    if (rv == CKR_OK)
        rv = rec_set_ulong(rec, CKA_KH_BACKEND, backend);
    if (rv == CKR_OK)
        rv = rec_set_bool(rec, CKA_ALWAYS_SENSITIVE, false);
    if (rv == CKR_OK)
        rv = rec_set_bool(rec, CKA_NEVER_EXTRACTABLE, false);
    if (rv == CKR_OK)
        rv = rec_seal(rec, s, blob, blob_len);
    return rv;
}

/* True when a template holds an attribute of the tpm backend. */
static bool tmpl_has_tpm_attrs(const CK_ATTRIBUTE *t, CK_ULONG n)
{
    for (CK_ULONG i = 0; i < n; i++)
        if (t[i].type >= CKA_KH_TPM_PUBLIC && t[i].type <= (CKA_VENDOR_DEFINED | KH_VENDOR_BASE | 0x1FUL))
            return true;
    return false;
}

static CK_RV backend_for(const kh_backend_ops **out, kh_session *s, const CK_ATTRIBUTE *t, CK_ULONG n, bool gen)
{
    CK_ULONG id = s->tok->rec.default_backend ? s->tok->rec.default_backend : CKV_KH_BACKEND_VAULT;
    const CK_ATTRIBUTE *a = tmpl_find(t, n, CKA_KH_BACKEND);
    if (a && !attr_ulong(a, &id))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    if (id != CKV_KH_BACKEND_VAULT && id != CKV_KH_BACKEND_TPM && id != CKV_KH_BACKEND_REMOTE)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    /* another backend's vendor attributes make no sense here */
    if (id != CKV_KH_BACKEND_TPM && tmpl_has_tpm_attrs(t, n))
        return CKR_TEMPLATE_INCONSISTENT;
    const kh_backend_ops *ops = kh_backend_get(id);
    if (!ops || !(gen ? ops->generate != NULL : ops->import != NULL))
        return CKR_FUNCTION_NOT_SUPPORTED; /* that backend is not available in this build */
    *out = ops;
    return CKR_OK;
}

/*
 * C_CreateObject of a private key that already lives in a backend (tpm:
 * CKA_KH_TPM_PUBLIC / CKA_KH_TPM_PRIVATE): the backend adopts it and tells
 * its public key, which decides CKA_EC_PARAMS (given ones must agree) and
 * the public attributes. No private value may come with it.
 */
static CK_RV create_adopted(kh_obj_rec *rec, uint8_t **blob, size_t *blob_len, kh_session *s,
                            CK_KEY_TYPE kt, const CK_ATTRIBUTE *t, CK_ULONG n)
{
    CK_ULONG id = CKV_KH_BACKEND_TPM;
    const CK_ATTRIBUTE *a = tmpl_find(t, n, CKA_KH_BACKEND);
    if (a && (!attr_ulong(a, &id) || id != CKV_KH_BACKEND_TPM))
        return CKR_TEMPLATE_INCONSISTENT;
    static const CK_ATTRIBUTE_TYPE values[] = { CKA_VALUE, CKA_EC_POINT, CKA_MODULUS, CKA_PRIVATE_EXPONENT,
                                                CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2,
                                                CKA_COEFFICIENT, CKA_PUBLIC_EXPONENT };
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        if (tmpl_find(t, n, values[i]))
            return CKR_TEMPLATE_INCONSISTENT;
    const kh_backend_ops *ops = kh_backend_get(id);
    if (!ops || !ops->adopt)
        return CKR_FUNCTION_NOT_SUPPORTED;
    kh_pubkey pub;
    CK_RV rv = ops->adopt(s->tok, &pub, blob, blob_len, t, n);
    if (rv != CKR_OK)
        return rv;
    if (alg_key_type(pub.alg) != kt)
        return CKR_TEMPLATE_INCONSISTENT;
    if (kt == CKK_EC) {
        size_t plen = 0;
        const uint8_t *params = alg_ec_params(pub.alg, &plen);
        const CK_ATTRIBUTE *given = tmpl_find(t, n, CKA_EC_PARAMS);
        if (!params)
            return CKR_CURVE_NOT_SUPPORTED;
        if (given && (!given->pValue || kh_alg_from_ec_params(given->pValue, given->ulValueLen) != pub.alg))
            return CKR_TEMPLATE_INCONSISTENT;
        if (!given)
            rv = rec_set(rec, CKA_EC_PARAMS, params, plen);
    }
    if (rv == CKR_OK)
        rv = rec_set_outside_key(rec, s, &pub, ops->id, *blob, *blob_len);
    return rv;
}

static bool ulong_attr_mismatch(const CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type, CK_ULONG want)
{
    const CK_ATTRIBUTE *a = tmpl_find(t, n, type);
    CK_ULONG v;
    if (!a)
        return false;
    return !attr_ulong(a, &v) || v != want;
}

/* The private secret of a C_CreateObject template in kh_crypto_import encoding. */
static CK_RV tmpl_secret(uint8_t **out, size_t *out_len, kh_alg alg, const CK_ATTRIBUTE *t, CK_ULONG n)
{
    if (alg != KH_ALG_RSA) {
        const CK_ATTRIBUTE *v = tmpl_find(t, n, CKA_VALUE);
        if (!v)
            return CKR_TEMPLATE_INCOMPLETE;
        if (!v->ulValueLen || v->ulValueLen > 64)
            return CKR_ATTRIBUTE_VALUE_INVALID;
        *out = malloc(v->ulValueLen);
        if (!*out)
            return CKR_HOST_MEMORY;
        memcpy(*out, v->pValue, v->ulValueLen);
        *out_len = v->ulValueLen;
        return CKR_OK;
    }
    static const CK_ATTRIBUTE_TYPE need[] = { CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_PRIVATE_EXPONENT, CKA_PRIME_1,
                                              CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT };
    const CK_ATTRIBUTE *a[8];
    for (size_t i = 0; i < 8; i++) {
        a[i] = tmpl_find(t, n, need[i]);
        if (!a[i])
            return CKR_TEMPLATE_INCOMPLETE;
        if (!a[i]->ulValueLen || !a[i]->pValue)
            return CKR_ATTRIBUTE_VALUE_INVALID;
    }
    return kh_crypto_rsa_from_components(out, out_len, a[0]->pValue, a[0]->ulValueLen, a[1]->pValue, a[1]->ulValueLen,
                                         a[2]->pValue, a[2]->ulValueLen, a[3]->pValue, a[3]->ulValueLen, a[4]->pValue,
                                         a[4]->ulValueLen, a[5]->pValue, a[5]->ulValueLen, a[6]->pValue,
                                         a[6]->ulValueLen, a[7]->pValue, a[7]->ulValueLen);
}

static kh_alg tmpl_alg(CK_KEY_TYPE kt, const CK_ATTRIBUTE *t, CK_ULONG n, CK_RV *rv)
{
    *rv = CKR_OK;
    if (kt == CKK_RSA)
        return KH_ALG_RSA;
    if (kt != CKK_EC && kt != CKK_EC_EDWARDS) {
        *rv = CKR_ATTRIBUTE_VALUE_INVALID;
        return KH_ALG_NONE;
    }
    const CK_ATTRIBUTE *p = tmpl_find(t, n, CKA_EC_PARAMS);
    if (!p) {
        *rv = CKR_TEMPLATE_INCOMPLETE;
        return KH_ALG_NONE;
    }
    kh_alg alg = p->pValue ? kh_alg_from_ec_params(p->pValue, p->ulValueLen) : KH_ALG_NONE;
    if (alg == KH_ALG_NONE || alg_key_type(alg) != kt) {
        *rv = CKR_CURVE_NOT_SUPPORTED;
        return KH_ALG_NONE;
    }
    return alg;
}

/*
 * C_CreateObject of a remote private key: CKA_KH_REMOTE_REF names the key
 * (and CKA_KH_BACKEND, if given, says remote). The remote backend fetches
 * its public key once (network I/O, no lock held); the key type and the
 * public attributes come from that answer. CKA_KEY_TYPE and CKA_EC_PARAMS
 * may be given and must then match it; public values and private values
 * may not be given (the signer's key is the truth). The reference is kept
 * in clear (CKA_KH_REMOTE_REF, searchable) and sealed as the private blob,
 * so only a logged-in user can sign with it.
 */
static CK_RV create_remote_key(kh_session *s, const CK_ATTRIBUTE *t, CK_ULONG n,
                               CK_OBJECT_HANDLE *out)
{
    kh_obj_rec rec = { 0 };
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    CK_ULONG v;
    CK_RV rv;
    const CK_ATTRIBUTE *ref = tmpl_find(t, n, CKA_KH_REMOTE_REF);
    const CK_ATTRIBUTE *be = tmpl_find(t, n, CKA_KH_BACKEND);
    if (!ref) /* a private value for the remote backend: importing is not supported */
        return tmpl_find(t, n, CKA_VALUE) || tmpl_find(t, n, CKA_PRIVATE_EXPONENT)
                   ? CKR_FUNCTION_NOT_SUPPORTED : CKR_TEMPLATE_INCOMPLETE;
    if (be && (!attr_ulong(be, &v) || v != CKV_KH_BACKEND_REMOTE))
        return CKR_TEMPLATE_INCONSISTENT;
    if (!ref->pValue || ref->ulValueLen == 0)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    static const CK_ATTRIBUTE_TYPE not_here[] = {
        CKA_VALUE, CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1,
        CKA_EXPONENT_2, CKA_COEFFICIENT, CKA_EC_POINT, CKA_MODULUS, CKA_PUBLIC_EXPONENT,
        CKA_MODULUS_BITS,
    };
    for (size_t i = 0; i < sizeof not_here / sizeof not_here[0]; i++)
        if (tmpl_find(t, n, not_here[i]))
            return CKR_TEMPLATE_INCONSISTENT;
    bool token = attr_bool(tmpl_find(t, n, CKA_TOKEN), false);
    rv = check_write(s, token, true);
    if (rv != CKR_OK)
        return rv;
    const kh_backend_ops *ops = kh_backend_get(CKV_KH_BACKEND_REMOTE);
    if (!ops || !ops->attach)
        return CKR_FUNCTION_NOT_SUPPORTED;
    kh_pubkey pub;
    rv = ops->attach(s->tok, &pub, &blob, &blob_len, ref->pValue, ref->ulValueLen);
    if (rv != CKR_OK)
        goto out;
    CK_KEY_TYPE kt = alg_key_type(pub.alg);
    const CK_ATTRIBUTE *kta = tmpl_find(t, n, CKA_KEY_TYPE);
    if (kta && (!attr_ulong(kta, &v) || v != kt)) {
        rv = CKR_TEMPLATE_INCONSISTENT;
        goto out;
    }
    const CK_ATTRIBUTE *pa = tmpl_find(t, n, CKA_EC_PARAMS);
    if (pa && (kt == CKK_RSA || !pa->pValue ||
               kh_alg_from_ec_params(pa->pValue, pa->ulValueLen) != pub.alg)) {
        rv = CKR_TEMPLATE_INCONSISTENT;
        goto out;
    }
    rv = kh_policy_check_template(CKO_PRIVATE_KEY, kt, t, n, KH_USE_CREATE);
    if (rv == CKR_OK)
        rv = rec_defaults(&rec, CKO_PRIVATE_KEY, kt);
    if (rv == CKR_OK)
        rv = rec_apply(&rec, CKO_PRIVATE_KEY, kt, t, n);
    if (rv == CKR_OK && kt != CKK_RSA && !pa) {
        size_t plen = 0;
        const uint8_t *params = alg_ec_params(pub.alg, &plen);
        if (!params)
            rv = CKR_GENERAL_ERROR;
        else
            rv = rec_set(&rec, CKA_EC_PARAMS, params, plen);
    }
    if (rv == CKR_OK)
        rv = rec_set_outside_key(&rec, s, &pub, CKV_KH_BACKEND_REMOTE, blob, blob_len);
    if (rv != CKR_OK)
        goto out;
    /* The row and its audit row in one transaction (one fsync). */
    rv = objs_insert(s, &rec, 1, out, "register-remote-key", "backend=remote");
    if (rv == CKR_OK && token)
        keys_invalidate();
out:
    if (blob)
        kh_crypto_secret_free(blob, blob_len);
    if (rec.sealed)
        kh_wipe(rec.sealed, rec.sealed_len);
    kh_obj_rec_clear(&rec);
    return rv;
}

CK_RV kh_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                      CK_OBJECT_HANDLE_PTR phObject)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    kh_obj_rec rec = { 0 };
    uint8_t *secret = NULL, *blob = NULL;
    size_t secret_len = 0, blob_len = 0;
    if ((!pTemplate && ulCount) || !phObject) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    CK_ULONG cls, kt = CK_UNAVAILABLE_INFORMATION;
    if (!attr_ulong(tmpl_find(pTemplate, ulCount, CKA_CLASS), &cls)) {
        rv = tmpl_find(pTemplate, ulCount, CKA_CLASS) ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_TEMPLATE_INCOMPLETE;
        goto out;
    }
    if (!kh_policy_class_supported(cls)) {
        rv = CKR_ATTRIBUTE_VALUE_INVALID;
        goto out;
    }
    if (cls == CKO_PRIVATE_KEY) {
        CK_ULONG be;
        const CK_ATTRIBUTE *bea = tmpl_find(pTemplate, ulCount, CKA_KH_BACKEND);
        if (tmpl_find(pTemplate, ulCount, CKA_KH_REMOTE_REF) ||
            (attr_ulong(bea, &be) && be == CKV_KH_BACKEND_REMOTE)) {
            rv = create_remote_key(s, pTemplate, ulCount, phObject);
            goto out;
        }
    }
    if (cls != CKO_DATA && !attr_ulong(tmpl_find(pTemplate, ulCount, CKA_KEY_TYPE), &kt)) {
        rv = CKR_TEMPLATE_INCOMPLETE;
        goto out;
    }
    rv = kh_policy_check_template(cls, kt, pTemplate, ulCount, KH_USE_CREATE);
    if (rv != CKR_OK)
        goto out;
    bool token = attr_bool(tmpl_find(pTemplate, ulCount, CKA_TOKEN), false);
    bool priv = attr_bool(tmpl_find(pTemplate, ulCount, CKA_PRIVATE), cls == CKO_PRIVATE_KEY);
    rv = check_write(s, token, priv || cls == CKO_PRIVATE_KEY);
    if (rv != CKR_OK)
        goto out;
    rv = rec_defaults(&rec, cls, kt);
    if (rv == CKR_OK)
        rv = rec_apply(&rec, cls, kt, pTemplate, ulCount);
    if (rv != CKR_OK)
        goto out;
    if (cls == CKO_PUBLIC_KEY) {
        kh_pubkey pub;
        kh_alg alg = tmpl_alg(kt, pTemplate, ulCount, &rv);
        if (rv != CKR_OK)
            goto out;
        rv = rec_pubkey(&pub, &rec, kt);
        if (rv == CKR_OK && pub.alg != alg)
            rv = CKR_TEMPLATE_INCONSISTENT;
        if (rv == CKR_OK)
            rv = kh_pubkey_check(&pub); /* the point is on the curve, the modulus in range */
        if (rv == CKR_OK)
            rv = rec_set_public(&rec, &pub); /* normalise CKA_EC_POINT to DER */
        if (rv != CKR_OK)
            goto out;
    } else if (cls == CKO_PRIVATE_KEY && (tmpl_find(pTemplate, ulCount, CKA_KH_TPM_PUBLIC) ||
                                          tmpl_find(pTemplate, ulCount, CKA_KH_TPM_PRIVATE))) {
        rv = create_adopted(&rec, &blob, &blob_len, s, kt, pTemplate, ulCount);
        if (rv != CKR_OK)
            goto out;
    } else if (cls == CKO_PRIVATE_KEY) {
        kh_alg alg = tmpl_alg(kt, pTemplate, ulCount, &rv);
        const kh_backend_ops *ops;
        if (rv == CKR_OK)
            rv = backend_for(&ops, s, pTemplate, ulCount, false);
        if (rv == CKR_OK)
            rv = tmpl_secret(&secret, &secret_len, alg, pTemplate, ulCount);
        kh_pubkey pub;
        if (rv == CKR_OK)
            rv = ops->import(s->tok, &pub, &blob, &blob_len, alg, secret, secret_len);
        if (rv == CKR_OK)
            rv = rec_set_outside_key(&rec, s, &pub, ops->id, blob, blob_len);
        if (rv != CKR_OK)
            goto out;
    }
    rv = objs_insert(s, &rec, 1, phObject, NULL, NULL);
    if (rv == CKR_OK && token)
        keys_invalidate();
out:
    if (secret) {
        kh_wipe(secret, secret_len);
        free(secret);
    }
    if (blob)
        kh_crypto_secret_free(blob, blob_len);
    kh_obj_rec_clear(&rec);
    kh_session_put(s);
    return rv;
}

CK_RV kh_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                         CK_ATTRIBUTE_PTR pPublicKeyTemplate, CK_ULONG ulPublicKeyAttributeCount,
                         CK_ATTRIBUTE_PTR pPrivateKeyTemplate, CK_ULONG ulPrivateKeyAttributeCount,
                         CK_OBJECT_HANDLE_PTR phPublicKey, CK_OBJECT_HANDLE_PTR phPrivateKey)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    const CK_ATTRIBUTE *pt = pPublicKeyTemplate, *vt = pPrivateKeyTemplate;
    CK_ULONG pn = ulPublicKeyAttributeCount, vn = ulPrivateKeyAttributeCount;
    kh_obj_rec recs[2] = { { 0 }, { 0 } };
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    if (!pMechanism || (!pt && pn) || (!vt && vn) || !phPublicKey || !phPrivateKey) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    CK_KEY_TYPE kt;
    CK_MECHANISM_TYPE gen_mech = pMechanism->mechanism;
    switch (gen_mech) {
    case CKM_EC_KEY_PAIR_GEN: kt = CKK_EC; break;
    case CKM_EC_EDWARDS_KEY_PAIR_GEN: kt = CKK_EC_EDWARDS; break;
    case CKM_RSA_PKCS_KEY_PAIR_GEN: kt = CKK_RSA; break;
    default:
        rv = CKR_MECHANISM_INVALID;
        goto out;
    }
    if (pMechanism->pParameter || pMechanism->ulParameterLen) {
        rv = CKR_MECHANISM_PARAM_INVALID;
        goto out;
    }
    if (ulong_attr_mismatch(pt, pn, CKA_CLASS, CKO_PUBLIC_KEY) || ulong_attr_mismatch(vt, vn, CKA_CLASS, CKO_PRIVATE_KEY) ||
        ulong_attr_mismatch(pt, pn, CKA_KEY_TYPE, kt) || ulong_attr_mismatch(vt, vn, CKA_KEY_TYPE, kt)) {
        rv = CKR_TEMPLATE_INCONSISTENT;
        goto out;
    }
    rv = kh_policy_check_template(CKO_PUBLIC_KEY, kt, pt, pn, KH_USE_GENERATE);
    if (rv == CKR_OK)
        rv = kh_policy_check_template(CKO_PRIVATE_KEY, kt, vt, vn, KH_USE_GENERATE);
    if (rv != CKR_OK)
        goto out;
    kh_alg alg;
    unsigned bits = 0;
    if (kt == CKK_RSA) {
        CK_ULONG b;
        if (!attr_ulong(tmpl_find(pt, pn, CKA_MODULUS_BITS), &b)) {
            rv = CKR_TEMPLATE_INCOMPLETE;
            goto out;
        }
        if (b < 2048 || b > 4096) {
            rv = CKR_KEY_SIZE_RANGE;
            goto out;
        }
        const CK_ATTRIBUTE *e = tmpl_find(pt, pn, CKA_PUBLIC_EXPONENT);
        if (e) {
            const uint8_t *ep = e->pValue;
            size_t el = e->ulValueLen;
            if (ep)
                strip_zeros(&ep, &el);
            if (!ep || el != 3 || ep[0] != 0x01 || ep[1] != 0x00 || ep[2] != 0x01) {
                rv = CKR_TEMPLATE_INCONSISTENT; /* only e = 65537 is generated */
                goto out;
            }
        }
        bits = (unsigned)b;
        alg = KH_ALG_RSA;
    } else {
        const CK_ATTRIBUTE *p = tmpl_find(pt, pn, CKA_EC_PARAMS);
        if (!p)
            p = tmpl_find(vt, vn, CKA_EC_PARAMS);
        alg = tmpl_alg(kt, p ? p : pt, p ? 1 : pn, &rv);
        if (rv != CKR_OK)
            goto out;
    }
    bool pub_token = attr_bool(tmpl_find(pt, pn, CKA_TOKEN), false);
    bool priv_token = attr_bool(tmpl_find(vt, vn, CKA_TOKEN), false);
    rv = check_write(s, pub_token || priv_token, true);
    if (rv != CKR_OK)
        goto out;
    const kh_backend_ops *ops;
    rv = backend_for(&ops, s, vt, vn, true);
    if (rv != CKR_OK)
        goto out;
    kh_pubkey pub;
    if (ops->generate_tmpl)
        rv = ops->generate_tmpl(s->tok, &pub, &blob, &blob_len, alg, bits, vt, vn);
    else
        rv = ops->generate(s->tok, &pub, &blob, &blob_len, alg, bits);
    if (rv != CKR_OK)
        goto out;
    rv = rec_defaults(&recs[0], CKO_PUBLIC_KEY, kt);
    if (rv == CKR_OK) rv = rec_apply(&recs[0], CKO_PUBLIC_KEY, kt, pt, pn);
    if (rv == CKR_OK) rv = rec_defaults(&recs[1], CKO_PRIVATE_KEY, kt);
    if (rv == CKR_OK) rv = rec_apply(&recs[1], CKO_PRIVATE_KEY, kt, vt, vn);
    for (int i = 0; i < 2 && rv == CKR_OK; i++) {
        if (kt != CKK_RSA) {
            const kh_obj_rec *other = &recs[1 - i];
            if (!kh_obj_rec_attr(&recs[i], CKA_EC_PARAMS)) {
                const CK_ATTRIBUTE *p = kh_obj_rec_attr(other, CKA_EC_PARAMS);
                rv = rec_set(&recs[i], CKA_EC_PARAMS, p->pValue, p->ulValueLen);
            }
        }
        if (rv == CKR_OK) rv = rec_set_public(&recs[i], &pub);
        if (rv == CKR_OK) rv = rec_set_bool(&recs[i], CKA_LOCAL, true);
        if (rv == CKR_OK) rv = rec_set_ulong(&recs[i], CKA_KEY_GEN_MECHANISM, gen_mech);
    }
    if (rv == CKR_OK)
        rv = rec_set_ulong(&recs[1], CKA_KH_BACKEND, ops->id);
    if (rv == CKR_OK)
        rv = rec_seal(&recs[1], s, blob, blob_len);
    if (rv != CKR_OK)
        goto out;
    CK_OBJECT_HANDLE handles[2];
    char tail[48];
    snprintf(tail, sizeof tail, "backend=%s", ops->name);
    /* One transaction for the token rows and their audit row: one fsync. */
    rv = objs_insert(s, recs, 2, handles, "generate-key-pair", tail);
    if (rv != CKR_OK)
        goto out;
    kh_log(KH_LOG_DEBUG, "token %lld: generated key pair %lu/%lu on %s", (long long)s->tok->id, handles[0],
           handles[1], ops->name);
    *phPublicKey = handles[0];
    *phPrivateKey = handles[1];
out:
    if (blob)
        kh_crypto_secret_free(blob, blob_len);
    kh_obj_rec_clear(&recs[0]);
    if (recs[1].sealed)
        kh_wipe(recs[1].sealed, recs[1].sealed_len);
    kh_obj_rec_clear(&recs[1]);
    kh_session_put(s);
    return rv;
}

CK_RV kh_DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    kh_obj_rec rec;
    rv = obj_load(&rec, s, hObject);
    if (rv != CKR_OK)
        goto out_put;
    bool token = is_token_handle(hObject);
    rv = check_write(s, token, false);
    if (rv == CKR_OK && !rec_bool(&rec, CKA_DESTROYABLE, true))
        rv = CKR_ACTION_PROHIBITED;
    kh_obj_rec_clear(&rec);
    if (rv != CKR_OK)
        goto out_put;
    if (token) {
        kh_store *st;
        rv = kh_store_acquire(&st);
        if (rv == CKR_OK) {
            rv = kh_store_obj_delete(st, (int64_t)hObject);
            if (rv == CKR_OK) {
                char detail[48];
                snprintf(detail, sizeof detail, "handle=%lu", hObject);
                kh_store_audit(st, s->tok->id, "destroy-object", detail);
            }
            kh_store_release();
        }
        keys_invalidate();
    } else {
        kh_mutex_lock(kh_mod.lock);
        for (kh_sobj **pp = &sobjs; *pp; pp = &(*pp)->next) {
            if ((*pp)->handle == hObject) {
                kh_sobj *o = *pp;
                *pp = o->next;
                sobj_free(o);
                break;
            }
        }
        kh_mutex_unlock(kh_mod.lock);
    }
out_put:
    kh_session_put(s);
    return rv;
}

CK_RV kh_GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    if (!pulSize) {
        rv = CKR_ARGUMENTS_BAD;
        goto out_put;
    }
    kh_obj_rec rec;
    rv = obj_load(&rec, s, hObject);
    if (rv != CKR_OK)
        goto out_put;
    uint8_t *blob;
    size_t len;
    rv = kh_attrs_encode(&blob, &len, rec.attrs, rec.nattrs);
    if (rv == CKR_OK) {
        *pulSize = len + rec.sealed_len;
        free(blob);
    }
    kh_obj_rec_clear(&rec);
out_put:
    kh_session_put(s);
    return rv;
}

static bool attr_is_secret(const kh_obj_rec *rec, CK_ATTRIBUTE_TYPE type)
{
    CK_ULONG cls = 0, kt = CK_UNAVAILABLE_INFORMATION;
    attr_ulong(kh_obj_rec_attr(rec, CKA_CLASS), &cls);
    attr_ulong(kh_obj_rec_attr(rec, CKA_KEY_TYPE), &kt);
    const kh_attr_rule *r = kh_policy_rule(cls, kt, type);
    return r && (r->flags & KH_AF_SECRET);
}

CK_RV kh_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                           CK_ULONG ulCount)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    if (!pTemplate && ulCount) {
        rv = CKR_ARGUMENTS_BAD;
        goto out_put;
    }
    kh_obj_rec rec;
    rv = obj_load(&rec, s, hObject);
    if (rv != CKR_OK)
        goto out_put;
    for (CK_ULONG i = 0; i < ulCount; i++) {
        CK_ATTRIBUTE *t = &pTemplate[i];
        const CK_ATTRIBUTE *a = kh_obj_rec_attr(&rec, t->type);
        if (attr_is_secret(&rec, t->type)) {
            t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
            rv = CKR_ATTRIBUTE_SENSITIVE;
        } else if (!a) {
            t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
            rv = CKR_ATTRIBUTE_TYPE_INVALID;
        } else if (!t->pValue) {
            t->ulValueLen = a->ulValueLen;
        } else if (t->ulValueLen < a->ulValueLen) {
            t->ulValueLen = CK_UNAVAILABLE_INFORMATION;
            rv = CKR_BUFFER_TOO_SMALL;
        } else {
            if (a->ulValueLen) /* an empty value read from the store has no buffer */
                memcpy(t->pValue, a->pValue, a->ulValueLen);
            t->ulValueLen = a->ulValueLen;
        }
    }
    kh_obj_rec_clear(&rec);
out_put:
    kh_session_put(s);
    return rv;
}

CK_RV kh_SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                           CK_ULONG ulCount)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    if (!pTemplate && ulCount) {
        rv = CKR_ARGUMENTS_BAD;
        goto out_put;
    }
    kh_obj_rec rec;
    rv = obj_load(&rec, s, hObject);
    if (rv != CKR_OK)
        goto out_put;
    bool token = is_token_handle(hObject);
    CK_ULONG cls = 0, kt = CK_UNAVAILABLE_INFORMATION;
    attr_ulong(kh_obj_rec_attr(&rec, CKA_CLASS), &cls);
    attr_ulong(kh_obj_rec_attr(&rec, CKA_KEY_TYPE), &kt);
    rv = check_write(s, token, false);
    if (rv == CKR_OK && !rec_bool(&rec, CKA_MODIFIABLE, true))
        rv = CKR_ACTION_PROHIBITED;
    if (rv == CKR_OK)
        rv = kh_policy_check_template(cls, kt, pTemplate, ulCount, KH_USE_SET);
    if (rv == CKR_OK)
        rv = rec_apply(&rec, cls, kt, pTemplate, ulCount);
    if (rv != CKR_OK)
        goto out_rec;
    if (token) {
        kh_store *st;
        rv = kh_store_acquire(&st);
        if (rv == CKR_OK) {
            rv = kh_store_obj_update(st, (int64_t)hObject, rec.attrs, rec.nattrs);
            kh_store_release();
        }
        keys_invalidate();
    } else {
        kh_mutex_lock(kh_mod.lock);
        for (kh_sobj *o = sobjs; o; o = o->next) {
            if (o->handle == hObject) {
                kh_obj_rec tmp = o->rec;
                o->rec = rec;
                o->rec.sealed = tmp.sealed;
                o->rec.sealed_len = tmp.sealed_len;
                tmp.sealed = rec.sealed; /* rec's copy of the blob */
                tmp.sealed_len = rec.sealed_len;
                rec = tmp;
                break;
            }
        }
        kh_mutex_unlock(kh_mod.lock);
    }
out_rec:
    kh_obj_rec_clear(&rec);
out_put:
    kh_session_put(s);
    return rv;
}

/* ---- search ---- */

struct kh_find_op {
    CK_OBJECT_HANDLE *handles;
    size_t n, pos;
};

void kh_find_op_reset(kh_session *s)
{
    if (s->find) {
        free(s->find->handles);
        free(s->find);
        s->find = NULL;
    }
}

static bool rec_matches(const kh_obj_rec *rec, const CK_ATTRIBUTE *t, CK_ULONG n)
{
    for (CK_ULONG i = 0; i < n; i++) {
        if (attr_is_secret(rec, t[i].type))
            return false;
        const CK_ATTRIBUTE *a = kh_obj_rec_attr(rec, t[i].type);
        if (!a || a->ulValueLen != t[i].ulValueLen)
            return false;
        if (a->ulValueLen && memcmp(a->pValue, t[i].pValue, a->ulValueLen) != 0)
            return false;
    }
    return true;
}

static CK_RV find_push(struct kh_find_op *op, size_t *cap, CK_OBJECT_HANDLE h)
{
    if (op->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        CK_OBJECT_HANDLE *g = realloc(op->handles, nc * sizeof *g);
        if (!g)
            return CKR_HOST_MEMORY;
        op->handles = g;
        *cap = nc;
    }
    op->handles[op->n++] = h;
    return CKR_OK;
}

CK_RV kh_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    struct kh_find_op *op = NULL;
    int64_t *ids = NULL;
    size_t nids = 0, cap = 0;
    if (!pTemplate && ulCount) {
        rv = CKR_ARGUMENTS_BAD;
        goto out;
    }
    kh_mutex_lock(s->lock);
    bool active = s->find != NULL;
    kh_mutex_unlock(s->lock);
    if (active) {
        rv = CKR_OPERATION_ACTIVE;
        goto out;
    }
    op = calloc(1, sizeof *op);
    if (!op) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    bool logged_in = user_in(s);
    kh_find_query q = { .token_id = s->tok->id, .include_private = logged_in };
    bool want_token = true, want_session = true, need_filter = false;
    for (CK_ULONG i = 0; i < ulCount; i++) {
        const CK_ATTRIBUTE *a = &pTemplate[i];
        CK_ULONG v;
        if (a->type == CKA_CLASS && attr_ulong(a, &v)) {
            q.has_class = true;
            q.cls = v;
        } else if (a->type == CKA_KEY_TYPE && attr_ulong(a, &v)) {
            q.has_key_type = true;
            q.key_type = v;
        } else if (a->type == CKA_ID && (a->pValue || !a->ulValueLen)) {
            q.has_id = true;
            q.ckid = a->pValue;
            q.ckid_len = a->ulValueLen;
        } else if (a->type == CKA_LABEL && (a->pValue || !a->ulValueLen) && !memchr(a->pValue ? a->pValue : "", 0, a->ulValueLen)) {
            q.has_label = true;
            q.label = a->pValue ? a->pValue : "";
            q.label_len = a->ulValueLen;
        } else if (a->type == CKA_TOKEN && a->ulValueLen == sizeof(CK_BBOOL) && a->pValue) {
            bool t = attr_bool(a, false);
            want_token = t;
            want_session = !t;
        } else {
            need_filter = true;
        }
    }
    if (want_token) {
        kh_store *st;
        rv = kh_store_acquire(&st);
        if (rv != CKR_OK)
            goto out;
        rv = kh_store_obj_find(st, &ids, &nids, &q);
        kh_store_release();
        if (rv != CKR_OK)
            goto out;
        for (size_t i = 0; i < nids && rv == CKR_OK; i++) {
            if (need_filter) {
                kh_obj_rec rec;
                if (obj_load(&rec, s, (CK_OBJECT_HANDLE)ids[i]) != CKR_OK)
                    continue; /* deleted meanwhile */
                bool m = rec_matches(&rec, pTemplate, ulCount);
                kh_obj_rec_clear(&rec);
                if (!m)
                    continue;
            }
            rv = find_push(op, &cap, (CK_OBJECT_HANDLE)ids[i]);
        }
        if (rv != CKR_OK)
            goto out;
    }
    if (want_session) {
        kh_mutex_lock(kh_mod.lock);
        for (kh_sobj *o = sobjs; o && rv == CKR_OK; o = o->next) {
            if (o->rec.token_id != s->tok->id)
                continue;
            if (rec_bool(&o->rec, CKA_PRIVATE, false) && !logged_in)
                continue;
            if (rec_matches(&o->rec, pTemplate, ulCount))
                rv = find_push(op, &cap, o->handle);
        }
        kh_mutex_unlock(kh_mod.lock);
        if (rv != CKR_OK)
            goto out;
    }
    kh_mutex_lock(s->lock);
    if (s->find) {
        rv = CKR_OPERATION_ACTIVE;
    } else {
        s->find = op;
        op = NULL;
    }
    kh_mutex_unlock(s->lock);
out:
    free(ids);
    if (op) {
        free(op->handles);
        free(op);
    }
    kh_session_put(s);
    return rv;
}

CK_RV kh_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount,
                     CK_ULONG_PTR pulObjectCount)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    if ((!phObject && ulMaxObjectCount) || !pulObjectCount) {
        rv = CKR_ARGUMENTS_BAD;
        goto out_put;
    }
    kh_mutex_lock(s->lock);
    if (!s->find) {
        rv = CKR_OPERATION_NOT_INITIALIZED;
    } else {
        CK_ULONG k = 0;
        while (k < ulMaxObjectCount && s->find->pos < s->find->n)
            phObject[k++] = s->find->handles[s->find->pos++];
        *pulObjectCount = k;
    }
    kh_mutex_unlock(s->lock);
out_put:
    kh_session_put(s);
    return rv;
}

CK_RV kh_FindObjectsFinal(CK_SESSION_HANDLE hSession)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    kh_mutex_lock(s->lock);
    if (!s->find)
        rv = CKR_OPERATION_NOT_INITIALIZED;
    else
        kh_find_op_reset(s);
    kh_mutex_unlock(s->lock);
    kh_session_put(s);
    return rv;
}

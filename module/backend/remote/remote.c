/*
 * The remote backend: keys whose private half lives in a remote signer.
 * The store keeps, per key, its reference "<driver>:<rest>" (sealed under
 * the token key like any private blob, and in clear as CKA_KH_REMOTE_REF)
 * and the public key fetched once at registration.
 *
 * Drivers: "signer" is built in (signer.c); any other name is a plugin
 * configured as remote_plugin_<name> = /path.so, loaded on first use
 * (dlopen), its table checked (ABI version, size, required calls) and
 * initialised once; C_Finalize calls its fini but leaves it loaded.
 *
 * Every signature: a deadline (remote_timeout_ms), DER -> r||s, low S for
 * secp256k1, then verification against the stored public key. Anything
 * that fails becomes a precise CK_RV through remote_rv(), the backend's one
 * translator from remote errors, which logs the native code once.
 *
 * Per key, what a signature needs besides the signer's answer is made once
 * and kept (rm_keys): the reference, unsealed from the key's blob, and a
 * verifier of the stored public key (kh_verifier: the key parsed once, no
 * decoding per call). An entry belongs to one login of its token (the
 * token's login_gen, as in the vault key cache): a logout makes it dead, and
 * the next login unseals the reference again. It is checked against the
 * key's sealed blob on every use, so a changed object is never served from
 * an old entry.
 *
 * Locking: the driver table and the per-key table each have their own leaf
 * lock (taken briefly, and around a plugin's first load and init), made at
 * C_Initialize and afresh in a forked child; no module lock is held while a
 * driver runs or a signature is verified, so remote I/O never happens under
 * the global lock.
 */
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "remote.h"
#include "wire.h"

#define KH_REMOTE_DRIVERS_MAX (1 + KH_REMOTE_PLUGINS_MAX)

typedef struct rm_driver {
    char name[64];
    const kh_driver_v1 *ops;
    void *state;
    void *dl;                   /* plugin handle, NULL for built-in */
    bool ready;                 /* init succeeded */
    bool failed;                /* load or init failed: not retried until C_Finalize */
} rm_driver;

static struct {
    kh_mutex *lock;
    rm_driver drivers[KH_REMOTE_DRIVERS_MAX];
    size_t ndrivers;
} rm;

/* Entries kept at most; a full table is emptied and refilled on demand. */
#define RM_KEYS_MAX 4096
#define RM_KEYS_BUCKETS 256

/* What one key's signatures need, made once per login (see the head comment). */
typedef struct rm_key {
    uint8_t token_uid[KH_UID_LEN];
    uint8_t uid[KH_UID_LEN];
    uint64_t login_gen;
    uint8_t *sealed;            /* the blob ref was unsealed from */
    size_t sealed_len;
    kh_alg alg;                 /* of the public key verifier was made from */
    char *ref;                  /* "<driver>:<rest>" */
    kh_verifier *verifier;
    unsigned refs;              /* the table's own + one per user; under rm_keys.lock */
    bool linked;                /* still in the table */
    struct rm_key *next;
} rm_key;

static struct {
    kh_mutex *lock;
    rm_key *buckets[RM_KEYS_BUCKETS];
    size_t n;
} rm_keys;

/* ---- configuration ---- */

void kh_remote_config_defaults(kh_remote_config *rc)
{
    memset(rc, 0, sizeof *rc);
    rc->timeout_ms = 5000;
    rc->pool_max = 4;
}

static bool parse_uint(unsigned *out, const char *val, unsigned min, unsigned max)
{
    char *end;
    if (!*val || *val == '-')
        return false;
    unsigned long v = strtoul(val, &end, 10);
    if (*end || v < min || v > max)
        return false;
    *out = (unsigned)v;
    return true;
}

static bool driver_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

bool kh_remote_config_set(kh_remote_config *rc, const char *key, const char *val,
                          const char **why)
{
    *why = NULL;
    if (!strcmp(key, "remote_timeout_ms")) {
        if (!parse_uint(&rc->timeout_ms, val, 1, 600000))
            *why = "remote_timeout_ms must be 1..600000";
    } else if (!strcmp(key, "remote_pool_size")) {
        if (!parse_uint(&rc->pool_max, val, 0, 64))
            *why = "remote_pool_size must be 0..64";
    } else if (!strcmp(key, "remote_tls_ca") || !strcmp(key, "remote_tls_cert") ||
               !strcmp(key, "remote_tls_key")) {
        char *dst = key[11] == 'c' && key[12] == 'a' ? rc->tls_ca
                    : key[11] == 'c' ? rc->tls_cert : rc->tls_key;
        if (strlen(val) >= KH_REMOTE_PATH_MAX)
            *why = "path too long";
        else
            snprintf(dst, KH_REMOTE_PATH_MAX, "%s", val);
    } else if (!strncmp(key, "remote_plugin_", 14)) {
        const char *name = key + 14;
        if (!driver_name_ok(name) || !strcmp(name, "signer"))
            *why = "plugin names are 1..63 of [a-z0-9_-], and not 'signer'";
        else if (val[0] != '/' || strlen(val) >= KH_REMOTE_PATH_MAX)
            *why = "a plugin is named by an absolute path";
        else {
            unsigned i;
            for (i = 0; i < rc->nplugins; i++)
                if (!strcmp(rc->plugins[i].name, name))
                    break;
            if (i == KH_REMOTE_PLUGINS_MAX) {
                *why = "too many plugins (at most 8)";
            } else {
                snprintf(rc->plugins[i].name, sizeof rc->plugins[i].name, "%s", name);
                snprintf(rc->plugins[i].path, sizeof rc->plugins[i].path, "%s", val);
                if (i == rc->nplugins)
                    rc->nplugins++;
            }
        }
    } else {
        /* like every unknown key: ignored, so an older module reads a newer file */
        kh_log(KH_LOG_WARN, "configuration: unknown key %s ignored", key);
    }
    return *why == NULL;
}

/* ---- the one translator ---- */

/*
 * The CK_RV for a driver status, logged once with the driver's message.
 * registering: C_CreateObject of a remote key (an unknown key or a bad
 * reference is then the caller's input).
 */
static CK_RV remote_rv(int status, bool registering, const char *driver, const char *what,
                       const char *msg)
{
    CK_RV rv;
    switch (status) {
    case KH_DRV_OK:
        return CKR_OK;
    case KH_DRV_UNKNOWN_KEY:
    case KH_DRV_E_REF:
        rv = registering ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_DEVICE_ERROR;
        break;
    case KH_DRV_DENIED:
    case KH_DRV_RATE_LIMITED:
        rv = CKR_FUNCTION_REJECTED;
        break;
    case KH_DRV_UNSUPPORTED:
        /* registering: the key (type) is not one this signer or driver serves */
        rv = registering ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_MECHANISM_INVALID;
        break;
    case KH_DRV_E_TOOBIG:
        rv = CKR_DATA_LEN_RANGE;
        break;
    case KH_DRV_E_NOMEM:
        rv = CKR_HOST_MEMORY;
        break;
    default:
        /* unavailable, internal, protocol errors, unreachable, timeout, TLS, bad answers */
        rv = CKR_DEVICE_ERROR;
        break;
    }
    /* The message comes from the signer: print only its printable ASCII. */
    char clean[160];
    size_t j = 0;
    for (size_t i = 0; msg && msg[i] && j + 1 < sizeof clean; i++)
        clean[j++] = msg[i] >= 0x20 && msg[i] < 0x7f ? msg[i] : '?';
    clean[j] = '\0';
    kh_log(rv == CKR_HOST_MEMORY ? KH_LOG_ERROR : KH_LOG_WARN,
           "remote: %s %s: status %d -> CK_RV 0x%lx: %s", driver, what, status,
           (unsigned long)rv, clean);
    return rv;
}

/* ---- drivers ---- */

/* Check a plugin's table; NULL reason when usable. */
static const char *driver_table_problem(const kh_driver_v1 *d)
{
    if (d->abi_version != KH_DRIVER_ABI_VERSION)
        return "ABI version mismatch";
    if (d->struct_size < offsetof(kh_driver_v1, generate))
        return "table too small";
    if (!d->public_key || !d->sign)
        return "public_key or sign missing";
    return NULL;
}

/* Load and initialise entry d (under rm.lock). */
static void driver_load_locked(rm_driver *d, const char *path)
{
    if (path) {
        d->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!d->dl) {
            kh_log(KH_LOG_ERROR, "remote: plugin %s: cannot load %s: %s", d->name, path, dlerror());
            d->failed = true;
            return;
        }
        const kh_driver_v1 *ops = dlsym(d->dl, KH_DRIVER_SYMBOL);
        const char *problem = ops ? driver_table_problem(ops) : "no " KH_DRIVER_SYMBOL " symbol";
        if (problem) {
            kh_log(KH_LOG_ERROR, "remote: plugin %s (%s): %s", d->name, path, problem);
            dlclose(d->dl);
            d->dl = NULL;
            d->failed = true;
            return;
        }
        d->ops = ops;
    }
    if (d->ops->init) {
        int st = d->ops->init(&d->state, d->name);
        if (st != KH_DRV_OK) {
            kh_log(KH_LOG_ERROR, "remote: driver %s: init failed (status %d)", d->name, st);
            d->failed = true;
            return;
        }
    }
    d->ready = true;
}

/*
 * The driver named by the prefix of ref ("<name>:..."). Out: *d, *rest.
 * CKR_ATTRIBUTE_VALUE_INVALID (registering) / CKR_DEVICE_ERROR for an
 * unknown name; CKR_DEVICE_ERROR when a configured plugin cannot be used.
 */
static CK_RV driver_for(rm_driver **out, const char **rest, const char *ref, bool registering)
{
    const char *colon = strchr(ref, ':');
    char name[64];
    size_t n = colon ? (size_t)(colon - ref) : 0;
    if (!colon || n == 0 || n >= sizeof name) {
        kh_log(KH_LOG_WARN, "remote: reference has no '<driver>:' prefix");
        return registering ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_DEVICE_ERROR;
    }
    memcpy(name, ref, n);
    name[n] = '\0';
    const char *path = NULL;
    if (strcmp(name, "signer") != 0) {
        const kh_remote_config *rc = &kh_mod.cfg.remote;
        for (unsigned i = 0; i < rc->nplugins; i++)
            if (!strcmp(rc->plugins[i].name, name))
                path = rc->plugins[i].path;
        if (!path) {
            kh_log(KH_LOG_WARN, "remote: no driver named '%s' (configure remote_plugin_%s)",
                   driver_name_ok(name) ? name : "?", driver_name_ok(name) ? name : "<name>");
            return registering ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_DEVICE_ERROR;
        }
    }
    kh_mutex *l = rm.lock;
    if (!l)
        return CKR_HOST_MEMORY;     /* a forked child could not make its lock */
    CK_RV rv = CKR_OK;
    kh_mutex_lock(l);
    rm_driver *d = NULL;
    for (size_t i = 0; i < rm.ndrivers; i++)
        if (!strcmp(rm.drivers[i].name, name))
            d = &rm.drivers[i];
    if (!d) {
        if (rm.ndrivers == KH_REMOTE_DRIVERS_MAX) {
            rv = CKR_DEVICE_ERROR;
            goto out_unlock;
        }
        d = &rm.drivers[rm.ndrivers++];
        memset(d, 0, sizeof *d);
        snprintf(d->name, sizeof d->name, "%s", name);
        if (!path)
            d->ops = &kh_driver_signer;
        driver_load_locked(d, path);
    }
    if (!d->ready)
        rv = CKR_DEVICE_ERROR;
out_unlock:
    kh_mutex_unlock(l);
    if (rv == CKR_OK) {
        *out = d;
        *rest = colon + 1;
    }
    return rv;
}

/* ---- per-key state (rm_keys) ---- */

static size_t rm_key_bucket(const uint8_t uid[KH_UID_LEN])
{
    size_t h = 0;
    for (size_t i = 0; i < KH_UID_LEN; i++)
        h = h * 31 + uid[i];
    return h % RM_KEYS_BUCKETS;
}

static void rm_key_free(rm_key *e)
{
    kh_verifier_free(e->verifier);
    free(e->ref);
    free(e->sealed);
    free(e);
}

/* Drop one use; the last one frees (caller holds rm_keys.lock). */
static void rm_key_unref_locked(rm_key *e)
{
    if (--e->refs == 0)
        rm_key_free(e);
}

static void rm_key_unlink_locked(rm_key **link)
{
    rm_key *e = *link;
    *link = e->next;
    e->linked = false;
    rm_keys.n--;
    rm_key_unref_locked(e);
}

static void rm_keys_flush_locked(void)
{
    for (size_t b = 0; b < RM_KEYS_BUCKETS; b++)
        while (rm_keys.buckets[b])
            rm_key_unlink_locked(&rm_keys.buckets[b]);
}

static bool rm_key_matches(const rm_key *e, const kh_key *key, uint64_t gen)
{
    return e->login_gen == gen && !memcmp(e->uid, key->uid, KH_UID_LEN) &&
           !memcmp(e->token_uid, key->token_uid, KH_UID_LEN) && e->alg == key->pub.alg &&
           e->sealed_len == key->sealed_len && !memcmp(e->sealed, key->sealed, key->sealed_len);
}

/* Written under tok->lock, read without it on the signing path (internal.h). */
static uint64_t token_login_gen(kh_token *tok)
{
    return __atomic_load_n(&tok->login_gen, __ATOMIC_SEQ_CST);
}

static CK_RV key_ref(char *ref, struct kh_token *tok, const struct kh_key *key);

/*
 * The entry of key for the token's current login: found, or made (the
 * reference unsealed, which needs the user's login; the public key parsed).
 * Out: *out, with a use held (rm_key_put).
 * Returns: CKR_OK; key_ref's errors; CKR_DEVICE_ERROR when the stored public
 *          key cannot verify anything; CKR_HOST_MEMORY.
 */
static CK_RV rm_key_get(rm_key **out, kh_token *tok, const kh_key *key)
{
    uint64_t gen = token_login_gen(tok);
    size_t b = rm_key_bucket(key->uid);
    kh_mutex *l = rm_keys.lock;
    if (!l)
        return CKR_HOST_MEMORY;     /* a forked child could not make its lock */
    kh_mutex_lock(l);
    for (rm_key *e = rm_keys.buckets[b]; e; e = e->next)
        if (rm_key_matches(e, key, gen)) {
            e->refs++;
            kh_mutex_unlock(l);
            *out = e;
            return CKR_OK;
        }
    kh_mutex_unlock(l);

    char ref[KH_REMOTE_REF_MAX + 1];
    rm_key *e = calloc(1, sizeof *e);
    if (!e)
        return CKR_HOST_MEMORY;
    CK_RV rv = key_ref(ref, tok, key);
    if (rv != CKR_OK) {
        free(e);
        return rv;
    }
    rv = kh_verifier_new(&e->verifier, &key->pub);
    if (rv != CKR_OK) {
        kh_log(KH_LOG_ERROR, "remote: the stored public key of object %lu cannot verify "
               "signatures (0x%lx): refused", (unsigned long)key->handle, (unsigned long)rv);
        rm_key_free(e);
        return rv == CKR_HOST_MEMORY ? rv : CKR_DEVICE_ERROR;
    }
    e->ref = strdup(ref);
    e->sealed = malloc(key->sealed_len);
    if (!e->ref || !e->sealed) {
        rm_key_free(e);
        return CKR_HOST_MEMORY;
    }
    memcpy(e->sealed, key->sealed, key->sealed_len);
    e->sealed_len = key->sealed_len;
    memcpy(e->uid, key->uid, KH_UID_LEN);
    memcpy(e->token_uid, key->token_uid, KH_UID_LEN);
    e->login_gen = gen;
    e->alg = key->pub.alg;
    e->refs = 1;                /* the caller's */

    kh_mutex_lock(l);
    /* Entries of this key for other logins are dead; a full table starts over. */
    for (rm_key **link = &rm_keys.buckets[b]; *link;) {
        rm_key *o = *link;
        if (!memcmp(o->uid, key->uid, KH_UID_LEN) && !memcmp(o->token_uid, key->token_uid, KH_UID_LEN))
            rm_key_unlink_locked(link);
        else
            link = &o->next;
    }
    if (rm_keys.n >= RM_KEYS_MAX)
        rm_keys_flush_locked();
    e->refs++;                  /* the table's */
    e->linked = true;
    e->next = rm_keys.buckets[b];
    rm_keys.buckets[b] = e;
    rm_keys.n++;
    kh_mutex_unlock(l);
    *out = e;
    return CKR_OK;
}

static void rm_key_put(rm_key *e)
{
    kh_mutex_lock(rm_keys.lock);
    rm_key_unref_locked(e);
    kh_mutex_unlock(rm_keys.lock);
}

/* C_Initialize: the two leaf locks (no I/O: drivers load on first use). */
static CK_RV remote_init(void)
{
    CK_RV rv = kh_mutex_new(&rm.lock);
    if (rv != CKR_OK)
        return rv;
    rv = kh_mutex_new(&rm_keys.lock);
    if (rv != CKR_OK) {
        kh_mutex_free(rm.lock);
        rm.lock = NULL;
    }
    return rv;
}

static void remote_shutdown(void)
{
    if (rm_keys.lock) {
        kh_mutex_lock(rm_keys.lock);
        rm_keys_flush_locked();
        kh_mutex_unlock(rm_keys.lock);
        kh_mutex_free(rm_keys.lock);
        rm_keys.lock = NULL;
    }
    for (size_t i = 0; i < rm.ndrivers; i++) {
        rm_driver *d = &rm.drivers[i];
        if (d->ready && d->ops->fini)
            d->ops->fini(d->state);
        /* A plugin stays loaded (no dlclose): it may have started threads or
         * registered handlers; loading it again later finds it in place. */
    }
    memset(rm.drivers, 0, sizeof rm.drivers);
    rm.ndrivers = 0;
    if (rm.lock) {
        kh_mutex_free(rm.lock);
        rm.lock = NULL;
    }
}

static void remote_forked(void)
{
    /*
     * The parent's locks may be held by threads that do not exist here:
     * forget them (leaked) and make new ones. The built-in driver drops its
     * pooled connections without touching them; a plugin's state is
     * forgotten (leaked) and the plugin initialised again on first use.
     */
    if (kh_mutex_new(&rm.lock) != CKR_OK)
        rm.lock = NULL;
    if (kh_mutex_new(&rm_keys.lock) != CKR_OK)
        rm_keys.lock = NULL;
    /* Per-key entries: those a parent's thread was using cannot be freed
     * safely and are left (bounded by RM_KEYS_MAX). */
    for (size_t b = 0; b < RM_KEYS_BUCKETS; b++) {
        for (rm_key *e = rm_keys.buckets[b], *next; e; e = next) {
            next = e->next;
            if (e->refs == 1)
                rm_key_free(e);
        }
        rm_keys.buckets[b] = NULL;
    }
    rm_keys.n = 0;
    size_t keep = 0;
    for (size_t i = 0; i < rm.ndrivers; i++) {
        rm_driver *d = &rm.drivers[i];
        if (!d->dl && d->ready) {
            kh_signer_forked(d->state);
            rm.drivers[keep++] = *d;
        }
    }
    memset(rm.drivers + keep, 0, (rm.ndrivers - keep) * sizeof rm.drivers[0]);
    rm.ndrivers = keep;
}

/* ---- public keys ---- */

static CK_RV pubkey_from_driver(kh_pubkey *pub, const kh_driver_pubkey *d)
{
    memset(pub, 0, sizeof *pub);
    size_t want = 0;
    switch (d->type) {
    case KH_DRV_KEY_SECP256K1: pub->alg = KH_ALG_SECP256K1; want = 65; break;
    case KH_DRV_KEY_P256: pub->alg = KH_ALG_P256; want = 65; break;
    case KH_DRV_KEY_P384: pub->alg = KH_ALG_P384; want = 97; break;
    case KH_DRV_KEY_ED25519: pub->alg = KH_ALG_ED25519; want = 32; break;
    case KH_DRV_KEY_RSA: pub->alg = KH_ALG_RSA; break;
    default: return CKR_DEVICE_ERROR;
    }
    if (pub->alg == KH_ALG_RSA) {
        const uint8_t *n = d->n, *e = d->e;
        size_t nl = d->n_len, el = d->e_len;
        while (nl > 1 && *n == 0) { n++; nl--; }
        while (el > 1 && *e == 0) { e++; el--; }
        if (nl == 0 || nl > sizeof pub->n || el == 0 || el > sizeof pub->e)
            return CKR_DEVICE_ERROR;
        memcpy(pub->n, n, nl);
        pub->n_len = nl;
        memcpy(pub->e, e, el);
        pub->e_len = el;
    } else {
        if (d->point_len != want)
            return CKR_DEVICE_ERROR;
        memcpy(pub->point, d->point, want);
        pub->point_len = want;
    }
    /* the signer's key must be a valid key: on its curve, RSA of a size we verify */
    return kh_pubkey_check(pub) == CKR_OK ? CKR_OK : CKR_DEVICE_ERROR;
}

static bool ref_ok(const char *ref, size_t len)
{
    if (len == 0 || len > KH_REMOTE_REF_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)ref[i] < 0x20 || ref[i] == 0x7f)
            return false;   /* includes NUL */
    return true;
}

static CK_RV remote_attach(struct kh_token *tok, kh_pubkey *pub, uint8_t **blob, size_t *blob_len,
                           const char *ref_in, size_t ref_len)
{
    (void)tok;
    *blob = NULL;
    *blob_len = 0;
    if (!ref_ok(ref_in, ref_len))
        return CKR_ATTRIBUTE_VALUE_INVALID;
    char ref[KH_REMOTE_REF_MAX + 1];
    memcpy(ref, ref_in, ref_len);
    ref[ref_len] = '\0';
    rm_driver *d;
    const char *rest;
    CK_RV rv = driver_for(&d, &rest, ref, true);
    if (rv != CKR_OK)
        return rv;
    kh_driver_pubkey dpub;
    char msg[256] = "";
    uint64_t deadline = kh_wire_now_ms() + kh_mod.cfg.remote.timeout_ms;
    int st = d->ops->public_key(d->state, &dpub, msg, sizeof msg, rest, deadline);
    if (st != KH_DRV_OK)
        return remote_rv(st, true, d->name, "public_key", msg);
    rv = pubkey_from_driver(pub, &dpub);
    if (rv != CKR_OK) {
        kh_log(KH_LOG_WARN, "remote: %s public_key: the signer's key is not a valid key", d->name);
        return rv;
    }
    *blob = malloc(ref_len);
    if (!*blob)
        return CKR_HOST_MEMORY;
    memcpy(*blob, ref, ref_len);
    *blob_len = ref_len;
    return CKR_OK;
}

/* ---- signatures ---- */

/* The reference of key, unsealed from its blob (only while a user is logged in). */
static CK_RV key_ref(char *ref, struct kh_token *tok, const struct kh_key *key)
{
    uint8_t *pt;
    size_t pt_len;
    CK_RV rv = kh_key_unseal(&pt, &pt_len, tok, key, "remote");
    if (rv != CKR_OK)
        return rv;
    if (!ref_ok((const char *)pt, pt_len))
        rv = CKR_KH_STORE_ERROR;
    else {
        memcpy(ref, pt, pt_len);
        ref[pt_len] = '\0';
    }
    kh_wipe(pt, pt_len);
    free(pt);
    return rv;
}

static uint32_t drv_hash(kh_hash h)
{
    switch (h) {
    case KH_HASH_SHA1: return KH_DRV_HASH_SHA1;
    case KH_HASH_SHA224: return KH_DRV_HASH_SHA224;
    case KH_HASH_SHA256: return KH_DRV_HASH_SHA256;
    case KH_HASH_SHA384: return KH_DRV_HASH_SHA384;
    case KH_HASH_SHA512: return KH_DRV_HASH_SHA512;
    default: return 0;
    }
}

/*
 * A DER ECDSA-Sig-Value into r||s of 2 * flen bytes. Strict: definite
 * minimal lengths, positive minimal INTEGERs, nothing after the SEQUENCE.
 */
static bool der_to_rs(uint8_t *out, size_t flen, const uint8_t *der, size_t len)
{
    size_t pos = 0;
    if (len < 8 || der[pos++] != 0x30)
        return false;
    size_t seq;
    if (der[pos] < 0x80) {
        seq = der[pos++];
    } else if (der[pos] == 0x81 && der[pos + 1] >= 0x80) {
        seq = der[pos + 1];
        pos += 2;
    } else {
        return false;
    }
    if (pos + seq != len)
        return false;
    memset(out, 0, 2 * flen);
    for (int k = 0; k < 2; k++) {
        if (pos + 2 > len || der[pos] != 0x02)
            return false;
        size_t il = der[pos + 1];
        pos += 2;
        if (il == 0 || il >= 0x80 || pos + il > len)
            return false;
        const uint8_t *v = der + pos;
        if (v[0] & 0x80)
            return false;                       /* negative */
        if (il > 1 && v[0] == 0 && !(v[1] & 0x80))
            return false;                       /* not minimal */
        pos += il;
        while (il > 0 && *v == 0) {
            v++;
            il--;
        }
        if (il == 0 || il > flen)
            return false;                       /* zero, or wider than the field */
        memcpy(out + k * flen + (flen - il), v, il);
    }
    return pos == len;
}

/* secp256k1 group order n and n/2 (big-endian). */
static const uint8_t secp_n[32] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
};
static const uint8_t secp_half_n[32] = {
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
};

/* s > n/2: replace s by n - s. Returns: whether it flipped. */
static bool secp_low_s(uint8_t s[32])
{
    if (memcmp(s, secp_half_n, 32) <= 0)
        return false;
    int borrow = 0;
    for (int i = 31; i >= 0; i--) {
        int d = secp_n[i] - s[i] - borrow;
        borrow = d < 0;
        s[i] = (uint8_t)(d + (borrow ? 256 : 0));
    }
    return true;
}

/*
 * Bring the driver's answer into the PKCS#11 form of op (in place into
 * sig, *len). CKR_DEVICE_ERROR when it cannot be the right shape.
 */
static CK_RV normalise(uint8_t *sig, size_t *len, size_t cap, int format, const kh_pubkey *pub,
                       kh_sigop op)
{
    size_t want = kh_crypto_sig_len(pub, op);
    if (want == 0 || want > cap)
        return CKR_DEVICE_ERROR;
    if (format == KH_DRV_SIG_DER) {
        uint8_t rs[2 * 66];
        if (op != KH_OP_ECDSA || want > sizeof rs || !der_to_rs(rs, want / 2, sig, *len))
            return CKR_DEVICE_ERROR;
        memcpy(sig, rs, want);
        *len = want;
    } else if (format != KH_DRV_SIG_RAW) {
        return CKR_DEVICE_ERROR;
    }
    if (op == KH_OP_RSA_PKCS || op == KH_OP_RSA_PSS) {
        /* a signer may drop leading zero bytes of the k-byte integer */
        if (*len > want || *len == 0)
            return CKR_DEVICE_ERROR;
        if (*len < want) {
            memmove(sig + (want - *len), sig, *len);
            memset(sig, 0, want - *len);
            *len = want;
        }
        return CKR_OK;
    }
    if (*len != want)
        return CKR_DEVICE_ERROR;
    if (op == KH_OP_ECDSA_RECOVER) {
        if (sig[64] == 27 || sig[64] == 28)
            sig[64] -= 27;
        if (sig[64] > 1)
            return CKR_DEVICE_ERROR;
    }
    if (pub->alg == KH_ALG_SECP256K1 && (op == KH_OP_ECDSA || op == KH_OP_ECDSA_RECOVER)) {
        if (secp_low_s(sig + 32) && op == KH_OP_ECDSA_RECOVER)
            sig[64] ^= 1;   /* -s recovers with the other parity of R.y */
    }
    return CKR_OK;
}

static CK_RV remote_sign(struct kh_token *tok, const struct kh_key *key, kh_sigop op,
                         const kh_sigparams *params, const uint8_t *data, size_t data_len,
                         uint8_t *sig, size_t *siglen)
{
    uint8_t out[KH_DRIVER_SIG_MAX];
    size_t out_len = 0, need = kh_crypto_sig_len(&key->pub, op);
    int format = KH_DRV_SIG_RAW;
    char msg[256] = "";

    if (need == 0)
        return CKR_KEY_TYPE_INCONSISTENT;
    if (!sig || *siglen < need)
        return CKR_GENERAL_ERROR;   /* cannot happen: sign.c answered the length query */
    kh_driver_sign_req req = { .data = data, .data_len = data_len };
    switch (op) {
    case KH_OP_ECDSA: req.algorithm = KH_DRV_ALG_ECDSA; break;
    case KH_OP_ECDSA_RECOVER: req.algorithm = KH_DRV_ALG_ECDSA_RECOVERABLE; break;
    case KH_OP_BIP340:
        req.algorithm = KH_DRV_ALG_BIP340;
        req.aux = params ? params->aux : NULL;
        req.aux_len = req.aux ? 32 : 0;
        break;
    case KH_OP_EDDSA: req.algorithm = KH_DRV_ALG_EDDSA; break;
    case KH_OP_RSA_PKCS: req.algorithm = KH_DRV_ALG_RSA_PKCS1; break;
    case KH_OP_RSA_PSS:
        req.algorithm = KH_DRV_ALG_RSA_PSS;
        req.pss_hash = drv_hash(params->pss_hash);
        req.pss_mgf_hash = drv_hash(params->pss_mgf_hash);
        req.pss_salt_len = params->pss_salt_len;
        if (!req.pss_hash || !req.pss_mgf_hash)
            return CKR_MECHANISM_PARAM_INVALID;
        break;
    default:
        return CKR_MECHANISM_INVALID;
    }
    rm_key *e;
    CK_RV rv = rm_key_get(&e, tok, key);
    if (rv != CKR_OK)
        return rv;
    rm_driver *d;
    const char *rest;
    rv = driver_for(&d, &rest, e->ref, false);
    if (rv != CKR_OK)
        goto out_put;
    uint64_t deadline = kh_wire_now_ms() + kh_mod.cfg.remote.timeout_ms;
    int st = d->ops->sign(d->state, out, &out_len, &format, msg, sizeof msg, rest, &req,
                          deadline);
    if (st != KH_DRV_OK) {
        rv = remote_rv(st, false, d->name, "sign", msg);
        goto out_put;
    }
    if (out_len > sizeof out) {
        rv = remote_rv(KH_DRV_E_PROTO, false, d->name, "sign", "signature too long");
        goto out_put;
    }
    if (normalise(out, &out_len, sizeof out, format, &key->pub, op) != CKR_OK) {
        rv = remote_rv(KH_DRV_E_PROTO, false, d->name, "sign", "signature of the wrong shape");
        goto out_put;
    }
    /* The answer is checked against the key registered, before anyone sees it. */
    rv = kh_verifier_verify(e->verifier, op, params, data, data_len, out, out_len);
    if (rv != CKR_OK) {
        kh_log(KH_LOG_ERROR, "remote: %s sign: the signature does not verify with the stored "
               "public key of object %lu (0x%lx): refused", d->name, (unsigned long)key->handle,
               (unsigned long)rv);
        kh_wipe(out, sizeof out);
        rv = CKR_DEVICE_ERROR;
        goto out_put;
    }
    memcpy(sig, out, out_len);
    *siglen = out_len;
out_put:
    rm_key_put(e);
    return rv;
}

const kh_backend_ops kh_backend_remote = {
    .id = CKV_KH_BACKEND_REMOTE,
    .name = "remote",
    .sign = remote_sign,
    .attach = remote_attach,
    .init = remote_init,
    .finalize = remote_shutdown,
    .forked = remote_forked,
};

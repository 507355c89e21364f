/*
 * The tpm backend's internals, shared by its units:
 *   conn.c   the process's one TPM connection: TCTI, ESYS context, its
 *            mutex, command deadlines, the rc translator, parents (the
 *            primary), the LRU of loaded objects, finalize and fork;
 *   blob.c   what the store keeps for a TPM object (key and PIN-seal blobs);
 *   keys.c   the backend ops: generate, adopt, sign, PIN sealing, RNG.
 *
 * Locking: one mutex (kh_tpm_lock) serialises every TPM command of the
 * process and guards everything in conn.c. It is a leaf: taken after the
 * global, token, session and store locks when those are held, never before
 * them, and nothing else is locked while it is held. Functions suffixed
 * _locked need it held.
 */
#ifndef KH_TPM_TPM_H
#define KH_TPM_TPM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tss2/tss2_esys.h>

#include "internal.h"
#include "tpmutil.h"

/* What a TPM response code is about, for the translator: an auth failure
 * on a PIN-derived value is a wrong PIN; on a key it is not. */
typedef enum kh_tpm_use {
    KH_TPM_USE_KEY = 1,     /* using or making a key */
    KH_TPM_USE_PIN,         /* the PIN-sealed secret of a token */
    KH_TPM_USE_IMPORT,      /* blobs an application handed in */
    KH_TPM_USE_OTHER,       /* capabilities, random, sessions */
} kh_tpm_use;

/*
 * The one translator from TSS2 response codes to CK_RV. Logs the native code
 * once (what names the command) and returns: lockout -> CKR_PIN_LOCKED;
 * auth failures -> CKR_PIN_INCORRECT (PIN) or CKR_DEVICE_ERROR (key);
 * policy failures -> CKR_KEY_FUNCTION_NOT_PERMITTED; TPM memory ->
 * CKR_DEVICE_MEMORY; unsupported algorithms, curves, sizes ->
 * CKR_MECHANISM_INVALID / CKR_CURVE_NOT_SUPPORTED / CKR_KEY_SIZE_RANGE;
 * blobs that do not load -> CKR_ATTRIBUTE_VALUE_INVALID (import) or
 * CKR_FUNCTION_FAILED; transport errors and timeouts -> CKR_DEVICE_ERROR.
 */
CK_RV kh_tpm_rv(TSS2_RC rc, kh_tpm_use use, const char *what);

/* ---- the connection (conn.c) ---- */

/* The backend's init, finalize and forked ops (keys.c's ops table). init
 * makes the mutex only (the TPM is reached on first use); finalize flushes
 * what this process loaded and disconnects; forked forgets the parent's
 * connection without sending anything. */
CK_RV kh_tpm_conn_init(void);
void kh_tpm_conn_finalize(void);
void kh_tpm_conn_forked(void);

/*
 * Take the TPM lock and make sure the connection is up (connecting on first
 * use and after a failure). On failure the lock is released and
 * CKR_DEVICE_ERROR (unreachable), CKR_HOST_MEMORY or
 * CKR_CRYPTOKI_NOT_INITIALIZED is returned.
 */
CK_RV kh_tpm_lock(void);
void kh_tpm_unlock(void);
/* The ESYS context (valid until the lock is released or the connection drops). */
ESYS_CONTEXT *kh_tpm_esys_locked(void);
/* True when the last command lost the connection (it is gone; reconnect). */
bool kh_tpm_broken_locked(void);
/* True when the last command lost its transport (a TPM restart, say) and a
 * retry on a new connection makes sense; false after a deadline expired: a
 * TPM that does not answer is not asked again within the same call. */
bool kh_tpm_retry_locked(void);
/* Reconnect after kh_tpm_broken_locked(). CKR_DEVICE_ERROR if unreachable. */
CK_RV kh_tpm_reconnect_locked(void);

/* Deadline of one command in ms (tpm_timeout). */
unsigned kh_tpm_timeout_ms(void);
/* RSA key creation on a real TPM takes seconds to a minute: its deadline is this many times longer. */
#define KH_TPM_CREATE_RSA_FACTOR 12

/* Run a command started with Esys_*_Async (which returned async_rc) to its
 * end: fin calls the matching Esys_*_Finish with arg (kh_tpm_await). A
 * command that loses the transport, leaves ESYS out of step, or misses the
 * deadline (TSS2_TCTI_RC_IO_ERROR, logged with what) drops the connection.
 * Every command goes through this. */
TSS2_RC kh_tpm_run_locked(TSS2_RC async_rc, kh_tpm_fin *fin, void *arg, unsigned timeout_ms, const char *what);

/* TPM capabilities key generation and mechanism info consult (read once
 * per connection). */
typedef struct kh_tpm_caps {
    bool ecdsa, rsassa, rsapss;
    bool sha1, sha256, sha384, sha512;
    bool p256, p384;
    bool rsa2048, rsa3072, rsa4096;
} kh_tpm_caps;
/* Out: caps (reads them on first use after a connect). */
CK_RV kh_tpm_caps_locked(kh_tpm_caps *caps);
/* TPMA_PERMANENT_INLOCKOUT, read now (TPM2_GetCapability). Out: *locked. */
CK_RV kh_tpm_lockout_locked(bool *locked);

/* ---- parents and loaded objects (conn.c) ---- */

/* The parent new objects are created under: the persistent primary when it
 * is a storage key, else the SRK-template primary (made on demand).
 * Out: *tr, name. */
TSS2_RC kh_tpm_parent_default_locked(ESYS_TR *tr, TPM2B_NAME *name);
/* The parent whose Name is name. TSS2_RC_SUCCESS, or KH_TPM_RC_NO_PARENT
 * when neither the persistent primary, nor another persistent storage key,
 * nor the SRK-template primary of this TPM has that Name (the object
 * belongs to another TPM, or the TPM was cleared). */
TSS2_RC kh_tpm_parent_find_locked(ESYS_TR *tr, const TPM2B_NAME *name);
/* The persistent object at handle h if it is a storage key. Out: *tr, name. */
TSS2_RC kh_tpm_parent_persistent_locked(ESYS_TR *tr, TPM2B_NAME *name, uint32_t h);

/* Private response code of this backend: no parent with that Name here. */
#define KH_TPM_RC_NO_PARENT (TSS2_RC_LAYER(0x4B) | 1u)
/* Private response code: the handle did not hold the object we loaded. */
#define KH_TPM_RC_STALE (TSS2_RC_LAYER(0x4B) | 2u)

/*
 * The loaded object for (pub, priv) under the parent named parent: from the
 * LRU, or loaded now (evicting this process's least recently used objects
 * when the TPM is full, and after a grace period flushing other processes'
 * leftovers). *cached tells whether it came from the LRU (a stale handle is
 * then possible). Out: *tr.
 */
TSS2_RC kh_tpm_obj_get_locked(ESYS_TR *tr, bool *cached, const TPM2B_NAME *parent,
                              const TPM2B_PUBLIC *pub, const TPM2B_PRIVATE *priv);
/* Forget the cached object loaded from priv, if any (as kh_tpm_obj_drop_locked). */
void kh_tpm_forget_locked(const TPM2B_PRIVATE *priv);
/* Forget a cached object whose handle turned out stale (not flushed: it may
 * belong to someone else now). */
void kh_tpm_obj_drop_locked(ESYS_TR tr);
/* Whether the SRK-template primary is loaded; flush it (PIN operations
 * leave nothing loaded that they loaded themselves: a process that exits
 * without C_Finalize then leaks nothing into a TPM without a resource manager). */
bool kh_tpm_srk_loaded_locked(void);
void kh_tpm_srk_flush_locked(void);
/* When parent is the SRK-template primary, forget it (its handle went stale)
 * and return true: the caller looks up its parent again and retries. */
bool kh_tpm_srk_drop_if_locked(ESYS_TR parent);
/* Flush a transient object or session we own and forget it. */
void kh_tpm_flush_locked(ESYS_TR tr);
/*
 * Before a command that needs one free object slot (TPM2_Create, a session
 * does not count): evict our least recently used objects down to the limit,
 * keeping keep. On TPM_RC_OBJECT_MEMORY call kh_tpm_make_room_locked again
 * with full = true: it evicts one more, or waits for other processes, or
 * flushes a leftover. Returns false when nothing more can be done.
 */
bool kh_tpm_make_room_locked(ESYS_TR keep, bool full, unsigned attempt);
/* True for response codes that say a handle we used is not (or no longer)
 * our object: not loaded, wrong type, or an auth failure on a key we know. */
bool kh_tpm_rc_stale(TSS2_RC rc);

/* ---- blobs (blob.c) ---- */

/* A TPM key as the store keeps it (sealed under the token key). */
typedef struct kh_tpm_key {
    TPM2B_NAME parent;          /* Name of the parent it was created or imported under */
    TPM2B_PUBLIC pub;
    TPM2B_PRIVATE priv;
    TPM2B_AUTH auth;            /* the key's auth value */
    bool pcr;                   /* signs only under a PolicyPCR (+ PolicyPassword) session */
    TPML_PCR_SELECTION pcrs;
} kh_tpm_key;

/* Serialise / parse a key blob. encode: *out malloc'd (kh_crypto_secret_free).
 * decode: CKR_KH_STORE_ERROR when malformed. */
CK_RV kh_tpm_key_encode(uint8_t **out, size_t *out_len, const kh_tpm_key *k);
CK_RV kh_tpm_key_decode(kh_tpm_key *k, const uint8_t *in, size_t len);

/* A PIN-sealed secret object (tokens row, not secret by itself). Its
 * authPolicy is PolicyOR(PolicyAuthValue, branch): the random branch makes
 * every seal object's policy its own, so a session meant for one object
 * fails the policy check (not the auth check, which would count against the
 * TPM's lockout) on another that took its handle. */
typedef struct kh_tpm_sealobj {
    TPM2B_NAME parent;
    TPM2B_PUBLIC pub;
    TPM2B_PRIVATE priv;
    TPM2B_DIGEST branch;        /* 32 random bytes, the PolicyOR's second branch */
} kh_tpm_sealobj;

CK_RV kh_tpm_seal_encode(uint8_t **out, size_t *out_len, const kh_tpm_sealobj *s);
CK_RV kh_tpm_seal_decode(kh_tpm_sealobj *s, const uint8_t *in, size_t len);

/* The public key of a TPM public area (ECC P-256/P-384 or RSA). Out: pub.
 * CKR_CURVE_NOT_SUPPORTED / CKR_KEY_SIZE_RANGE / CKR_ATTRIBUTE_VALUE_INVALID. */
CK_RV kh_tpm_pubkey(kh_pubkey *pub, const TPMT_PUBLIC *area);

#endif

/*
 * keyhold module internals shared by the units of module/.
 *
 * Lock order (take left before right, never the reverse):
 *     global (kh_mod.lock) -> token (tok->lock) -> session (s->lock) -> store (kh_mod.store_lock)
 *     -> TPM (the tpm backend's connection lock, backend/tpm/conn.c)
 * The key cache has its own leaf lock (keycache.c), and so do the resolved-key
 * cache (object.c) and the session table's stripes (session.c: a stripe is
 * taken alone to look a session up, or under the global lock to add or remove
 * one). No TPM, socket or store I/O under the global lock: the store has its
 * own mutex, and TPM commands are serialised by the TPM lock alone (under the
 * store lock only where a PIN check needs the TPM).
 *
 * Suffixes: _locked = the caller holds the lock named in the comment;
 * _take = ownership of the argument moves to the callee.
 */
#ifndef KH_MODULE_INTERNAL_H
#define KH_MODULE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "keyhold.h"
#include "crypto.h"
#include "store.h"
#include "remote/remote.h"

/* ---- mutexes (CKF_OS_LOCKING_OK or the application's callbacks) ---- */

typedef struct kh_mutex kh_mutex;
CK_RV kh_mutex_new(kh_mutex **out);
void kh_mutex_free(kh_mutex *m);
void kh_mutex_lock(kh_mutex *m);
void kh_mutex_unlock(kh_mutex *m);
/* Chosen at C_Initialize from CK_C_INITIALIZE_ARGS. NULL args: OS locking. */
CK_RV kh_mutex_configure(const CK_C_INITIALIZE_ARGS *args);

#include "base.h"

/* ---- configuration ---- */

typedef struct kh_config {
    char store_dir[4096];
    bool cache_enabled;         /* vault key cache (default on) */
    size_t cache_max_keys;      /* default 4096 */
    unsigned cache_idle_s;      /* default 300 */
    CK_ULONG default_backend;   /* for new tokens: CKV_KH_BACKEND_VAULT */
    int log_level;
    kh_remote_config remote;    /* remote_* keys (module/backend/remote/remote.h) */
    /* tpm backend */
    char tcti[512];             /* TCTI "name:conf"; empty: device:/dev/tpmrm0 */
    bool tcti_set;              /* tcti came from KEYHOLD_CONF or KEYHOLD_TCTI */
    uint32_t tpm_primary;       /* persistent handle of the primary; 0: 0x81000001 */
    unsigned tpm_handles;       /* TPM objects kept loaded; 0: from TPM_PT_HR_TRANSIENT_AVAIL */
    unsigned tpm_timeout_ms;    /* deadline of one TPM command; 0: 10000 */
    int tpm_seal;               /* KH_TPM_SEAL_*: seal new tokens' keys to the TPM */
} kh_config;

/* tpm_seal: auto seals when a TPM is configured (tcti set, or default_backend = tpm). */
enum { KH_TPM_SEAL_AUTO = 0, KH_TPM_SEAL_ON, KH_TPM_SEAL_OFF };

/* Load defaults, then KEYHOLD_CONF (key = value lines), then environment. */
CK_RV kh_config_load(kh_config *cfg);

/* ---- tokens ---- */

#define KH_NOT_LOGGED_IN ((CK_USER_TYPE)-1)

typedef struct kh_token {
    int64_t id;                 /* slot id = token id */
    kh_token_rec rec;           /* refreshed from the store on C_GetTokenInfo */
    kh_mutex *lock;
    CK_USER_TYPE login;         /* KH_NOT_LOGGED_IN, CKU_USER or CKU_SO; written under lock,
                                   read lock-free (__atomic) on the signing path */
    uint8_t *key;               /* token key (KH_TOKEN_KEY_LEN, secmem) while logged in */
    uint64_t login_gen;         /* bumped on every logout: cache entries of older gens are dead
                                   (written under lock, read with __atomic_load) */
    CK_ULONG nsessions, nrw_sessions;
} kh_token;

/* The token in slot, refreshed from the store. need_initialized: the free
 * slot gives CKR_TOKEN_NOT_RECOGNIZED. CKR_SLOT_ID_INVALID for unknown slots. */
CK_RV kh_token_get(kh_token **out, CK_SLOT_ID slot, bool need_initialized);
/* The login of a token ends when its last session closes. */
void kh_token_last_session_closed(kh_token *tok);

/* Copy the token key out while logged in as user (or SO for init-pin paths).
 * CKR_USER_NOT_LOGGED_IN otherwise. out is wiped by the caller. */
CK_RV kh_token_key_copy(kh_token *tok, uint8_t out[KH_TOKEN_KEY_LEN]);
bool kh_token_user_logged_in(kh_token *tok);
/*
 * Random bytes from the hardware the token is bound to (its PIN wraps are
 * sealed to a TPM): TPM2_GetRandom. CKR_FUNCTION_NOT_SUPPORTED for a token
 * without one; CKR_DEVICE_ERROR when the TPM does not answer.
 */
CK_RV kh_token_hw_random(kh_token *tok, uint8_t *buf, size_t len);

/* ---- sessions ---- */

struct kh_sign_op;   /* sign.c */
struct kh_digest_op; /* sign.c */
struct kh_find_op;   /* object.c */

typedef struct kh_session {
    CK_SESSION_HANDLE handle;
    kh_token *tok;
    CK_FLAGS flags;             /* CKF_SERIAL_SESSION | CKF_RW_SESSION */
    kh_mutex *lock;             /* guards the op states below */
    struct kh_sign_op *sign;    /* active C_SignInit, or NULL */
    struct kh_sign_op *verify;  /* active C_VerifyInit, or NULL */
    struct kh_digest_op *digest;
    struct kh_find_op *find;
    unsigned refs;              /* under the session table's stripe lock; freed at 0 */
    bool closed;                /* set under the global lock and the stripe lock */
} kh_session;

/*
 * Look up a session and take a reference (so it cannot be freed under the
 * caller). CKR_CRYPTOKI_NOT_INITIALIZED, CKR_SESSION_HANDLE_INVALID.
 * Release with kh_session_put().
 */
CK_RV kh_session_get(kh_session **out, CK_SESSION_HANDLE h);
void kh_session_put(kh_session *s);
/* CKS_* state of the session given its token's login. */
CK_STATE kh_session_state(const kh_session *s);

/* ---- objects ---- */

/* Session objects have handles with this bit set; token objects are store rowids. */
#define KH_SESSION_OBJ_BIT ((CK_OBJECT_HANDLE)1 << 40)

/* A key as the crypto paths need it, resolved from an object handle. */
typedef struct kh_key {
    CK_OBJECT_HANDLE handle;
    int64_t token_id;
    uint8_t uid[KH_UID_LEN];
    uint8_t token_uid[KH_UID_LEN];
    CK_OBJECT_CLASS cls;        /* CKO_PRIVATE_KEY or CKO_PUBLIC_KEY */
    CK_KEY_TYPE key_type;
    kh_pubkey pub;              /* alg + public material (both classes) */
    CK_ULONG backend;           /* CKV_KH_BACKEND_* (private keys) */
    bool can_sign, can_verify;
    bool always_authenticate;
    bool private_obj;           /* CKA_PRIVATE: visible only while the user is logged in */
    CK_MECHANISM_TYPE *allowed; /* CKA_ALLOWED_MECHANISMS, NULL: any */
    size_t nallowed;
    uint8_t *sealed;            /* sealed secret (vault) or backend reference */
    size_t sealed_len;
    unsigned refs;              /* object.c (atomic): keys are shared read-only; kh_key_free drops one */
} kh_key;

/*
 * Resolve handle h as seen from session s (checks it belongs to the session's
 * token and that a private object is visible at the current login state).
 * CKR_OBJECT_HANDLE_INVALID / CKR_KEY_HANDLE_INVALID (when want_key),
 * CKR_KEY_TYPE_INCONSISTENT for non-keys when want_key. Out: *out (kh_key_free).
 */
CK_RV kh_object_key(kh_key **out, kh_session *s, CK_OBJECT_HANDLE h);
void kh_key_free(kh_key *key);
/*
 * Open key->sealed (the backend's blob, sealed under the token key with the
 * object's identity as associated data): only while a user is logged in.
 * Returns CKR_USER_NOT_LOGGED_IN without a login; CKR_KH_STORE_ERROR when
 * there is no blob or it does not open (logged once, prefixed with who:
 * the store is corrupted or the blob was moved between objects).
 * Out: *out, *out_len (wipe with kh_wipe, then free()).
 */
CK_RV kh_key_unseal(uint8_t **out, size_t *out_len, kh_token *tok, const kh_key *key,
                    const char *who);

/* Map a key type + CKA_EC_PARAMS / modulus to kh_alg. */
kh_alg kh_alg_from_ec_params(const uint8_t *params, size_t len);

/* ---- mechanism table (mech.c) ---- */

typedef struct kh_mech {
    CK_MECHANISM_TYPE type;
    CK_FLAGS flags;             /* CKF_SIGN | CKF_VERIFY | CKF_DIGEST | CKF_GENERATE_KEY_PAIR ... */
    CK_ULONG min_bits, max_bits;
    CK_KEY_TYPE key_type;       /* CK_UNAVAILABLE_INFORMATION for digests */
    kh_sigop op;                /* 0 for non-signature mechanisms */
    kh_hash hash;               /* hash run in the module before op (KH_HASH_NONE: data goes as is) */
    unsigned algs;              /* bit (1u << kh_alg) of algs this mechanism works with */
    /* Validate pParameter; fill params. NULL: the mechanism takes no parameter. */
    CK_RV (*param)(const CK_MECHANISM *m, kh_sigparams *out, const kh_key *key);
} kh_mech;

const kh_mech *kh_mech_find(CK_MECHANISM_TYPE type);
/* CKR_OK if mech may be used with key for the given purpose (CKF_SIGN/CKF_VERIFY). */
CK_RV kh_mech_check_key(const kh_mech *m, const kh_key *key, CK_FLAGS purpose);

/* ---- backends ---- */

#include "backend.h"

/* ---- key cache (keycache.c): decoded vault keys while a user is logged in ---- */

/* Find a decoded key for (token uid, object uid, login generation). On a hit the
 * key is returned with a reference held; release with kh_keycache_put. */
kh_softkey *kh_keycache_get(const uint8_t token_uid[KH_UID_LEN], const uint8_t uid[KH_UID_LEN],
                            uint64_t login_gen, void **ref);
/* Insert (takes ownership of key); returns the reference to release. If caching is
 * off or full, *ref is a private entry freed at kh_keycache_put. */
void kh_keycache_insert_take(kh_softkey *key, const uint8_t token_uid[KH_UID_LEN],
                             const uint8_t uid[KH_UID_LEN], uint64_t login_gen, void **ref);
void kh_keycache_put(void *ref);
/* Drop every entry of a token (logout, close all sessions) or all (finalize, fork). */
void kh_keycache_flush_token(const uint8_t token_uid[KH_UID_LEN]);
void kh_keycache_flush_all(void);
void kh_keycache_configure(bool enabled, size_t max_keys, unsigned idle_s);
/* Unit tests: the millisecond clock idle expiry reads (NULL: CLOCK_MONOTONIC). */
void kh_keycache_set_clock(uint64_t (*clock_ms)(void));
/* C_Finalize: flush and release the cache's mutex. */
void kh_keycache_shutdown(void);

/* ---- the module ---- */

typedef struct kh_module {
    bool initialized;
    pid_t pid;
    kh_mutex *lock;             /* global: slots, tokens array, session table */
    kh_mutex *store_lock;       /* serialises the one SQLite connection */
    kh_store *store;            /* opened lazily on first use (C_Initialize reads nothing) */
    kh_config cfg;
} kh_module;

extern kh_module kh_mod;

/* Run fn-style store access: lock, open lazily, return the handle. Release with kh_store_release. */
CK_RV kh_store_acquire(kh_store **out);
void kh_store_release(void);
/* True in a forked child whose state has not been rebuilt yet: rebuild it. */
CK_RV kh_check_fork(void);
/* Module unload: unmap the fork-detection page. */
void kh_fork_cleanup(void);

/* Length query / CKR_BUFFER_TOO_SMALL for arrays of CK_ULONG (slots, mechanisms, handles). */
CK_RV kh_out_ulongs(CK_ULONG_PTR out, CK_ULONG_PTR count, const CK_ULONG *vals, size_t n);
/* The same for byte strings: pOut NULL -> length; too small -> CKR_BUFFER_TOO_SMALL. */
CK_RV kh_out_bytes(CK_BYTE_PTR out, CK_ULONG_PTR len, const uint8_t *val, size_t n);

/* Setup and teardown (core.c calls these). */
CK_RV kh_sessions_init(void);      /* C_Initialize: the table's stripe locks */
void kh_sessions_drop_all(void);   /* fork child: forget without touching locks, new stripe locks */
void kh_sessions_free_all(void);   /* C_Finalize: sessions and stripe locks */
void kh_objects_free_all(void);    /* session objects */
void kh_objects_forked(void);      /* fork child: forget session objects and cached keys, lock unused */
void kh_objects_drop_token(int64_t token_id);
void kh_objects_drop_session(CK_SESSION_HANDLE h);

/* Session-op reset hooks (sign.c / object.c): free any active operation. */
void kh_sign_ops_reset(kh_session *s);
void kh_find_op_reset(kh_session *s);

#endif

/*
 * keyhold token store: one SQLite database that indexes every object of every
 * token, keeps each token's key wrapped under its PINs, and seals private key
 * material with AES-256-GCM bound to the object's identity.
 *
 * A kh_store is one SQLite connection. It is not thread-safe: the caller
 * serialises every call on one handle (the module holds its store mutex).
 * After fork() the child must not use the parent's handle: it calls
 * kh_store_abandon() and opens a new one.
 *
 * Every function returns CKR_OK or a precise CK_RV; SQLite errors are
 * translated once, in store.c (busy -> CKR_DEVICE_ERROR after busy_timeout,
 * corrupt/IO -> CKR_KH_STORE_ERROR, full -> CKR_DEVICE_MEMORY).
 */
#ifndef KH_TOKENSTORE_STORE_H
#define KH_TOKENSTORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"
#include "keyhold.h"

#define KH_TOKEN_KEY_LEN 32
#define KH_UID_LEN 16
#define KH_LABEL_MAX 32

typedef struct kh_store kh_store;

/* KDF cost for wrapping the token key under a PIN. Stored with each wrap so
 * that a store made with one cost still opens after the default changes. */
typedef struct kh_kdf_params {
    uint32_t log2_n; /* scrypt N = 2^log2_n (default 15) */
    uint32_t r;      /* default 8 */
    uint32_t p;      /* default 1 */
} kh_kdf_params;

/* One token (slot) as the store sees it. */
typedef struct kh_token_rec {
    int64_t id;                      /* also the PKCS#11 slot id */
    char label[KH_LABEL_MAX + 1];    /* NUL-terminated UTF-8, at most 32 bytes */
    uint8_t uid[KH_UID_LEN];         /* random, fixed at creation; part of every blob's AAD */
    char serial[17];                 /* 16 hex digits from uid */
    bool user_pin_set;
    uint32_t user_fail;              /* failed user logins since the last good one */
    uint32_t so_fail;
    CK_ULONG default_backend;        /* CKV_KH_BACKEND_* */
    bool tpm_bound;                  /* its PIN wraps are bound to a TPM (kh_pin_binder) */
} kh_token_rec;

/* Maximum consecutive failed logins before a PIN is locked. */
#define KH_PIN_MAX_TRIES 10

/* One object row. attrs holds every attribute except the sealed secret. */
typedef struct kh_obj_rec {
    int64_t id;                      /* rowid; the PKCS#11 object handle */
    int64_t token_id;
    uint8_t uid[KH_UID_LEN];         /* random identity, bound into the sealed blob */
    CK_ATTRIBUTE *attrs;             /* owned: each pValue malloc'd */
    size_t nattrs;
    uint8_t *sealed;                 /* AES-GCM(token key, secret, aad) or NULL */
    size_t sealed_len;
} kh_obj_rec;

/* What a search can ask of the index; unset fields match everything. */
typedef struct kh_find_query {
    int64_t token_id;
    bool has_class;      CK_OBJECT_CLASS cls;
    bool has_key_type;   CK_KEY_TYPE key_type;
    bool has_id;         const uint8_t *ckid; size_t ckid_len;
    bool has_label;      const char *label; size_t label_len;
    bool include_private;            /* false: rows with CKA_PRIVATE = TRUE are skipped */
} kh_find_query;

/*
 * Open (creating if needed) the store in directory dir (created 0700 if
 * missing; the database file is 0600). Sets WAL, busy_timeout, foreign keys,
 * and runs PRAGMA user_version migrations. Reads no objects.
 * Out: *out. Returns CKR_OK, CKR_KH_STORE_ERROR, CKR_HOST_MEMORY.
 */
CK_RV kh_store_open(kh_store **out, const char *dir);
void kh_store_close(kh_store *st);
/* In a forked child: drop the parent's connection without touching its locks. */
void kh_store_abandon(kh_store *st);
/* Resolve the store directory: KEYHOLD_STORE, else $XDG_DATA_HOME/keyhold,
 * else $HOME/.local/share/keyhold. Out: buf (NUL-terminated). */
CK_RV kh_store_default_dir(char *buf, size_t buflen);
/*
 * Hardware binding of PIN wraps (a TPM). A bound wrap's key is derived from
 * the PIN's KDF output and a 32-byte secret that only the binder can give
 * back, and only for the right auth value (itself derived from the PIN), so a
 * wrong PIN is also counted by the hardware (dictionary-attack lockout) and
 * the store opens nowhere else.
 */
typedef struct kh_pin_binder {
    /* Seal a new random secret under auth. Out: secret, *blob (malloc'd). */
    CK_RV (*seal)(uint8_t secret[32], uint8_t **blob, size_t *blob_len, const uint8_t auth[32]);
    /* Open a sealed secret. CKR_PIN_INCORRECT for a wrong auth (counted as a
     * wrong PIN), CKR_PIN_LOCKED, CKR_FUNCTION_FAILED (not this hardware's),
     * CKR_DEVICE_ERROR: passed on, counting nothing. */
    CK_RV (*unseal)(uint8_t secret[32], const uint8_t *blob, size_t blob_len, const uint8_t auth[32]);
} kh_pin_binder;

/*
 * The binder st uses to open bound wraps (binder NULL: bound tokens cannot
 * log in, CKR_DEVICE_ERROR), and whether tokens initialised through st from
 * now on are bound (their SO wrap, then the user wrap C_InitPIN makes; a
 * PIN change keeps the binding). binder must outlive st.
 */
void kh_store_set_binder(kh_store *st, const kh_pin_binder *binder, bool bind_new);

/* True when another connection has written since the last call (PRAGMA data_version). */
bool kh_store_changed(kh_store *st);

/*
 * A stamp of the database: the WAL-index header, which every transaction any
 * connection (of any process) commits changes. kh_store_stamp_read reads it
 * from the shared memory SQLite maps for the WAL (the -shm file), without a
 * SQLite call, a lock or a system call, so a hot path can tell "nothing was
 * committed since stamp S" at the cost of a few loads; anything else goes
 * through kh_store_changed.
 *
 * Thread-safe and lock-free: may be called from any thread while st is open,
 * concurrently with any other call on st. Returns false when the stamp cannot
 * be read consistently (a writer is updating the header, or the connection has
 * no WAL-index mapping): the caller must then take the slow path.
 *
 * The layout read is SQLite's documented WAL-index header (file format
 * "walformat", version 3007000), reached through the public VFS method
 * xShmMap on the connection's own file handle: no second file descriptor on
 * the -shm file (closing one would drop SQLite's POSIX locks).
 */
typedef struct kh_store_stamp {
    uint32_t w[12];
} kh_store_stamp;
bool kh_store_stamp_read(const kh_store *st, kh_store_stamp *out);

/* Tokens. list returns a malloc'd array (free()). get: CKR_SLOT_ID_INVALID if none. */
CK_RV kh_store_token_list(kh_store *st, kh_token_rec **out, size_t *n);
CK_RV kh_store_token_get(kh_store *st, kh_token_rec *out, int64_t id);
/*
 * C_InitToken. If token id exists: the SO PIN must unwrap its token key
 * (else CKR_PIN_INCORRECT / CKR_PIN_LOCKED), then every object is destroyed,
 * the user PIN is cleared and a new token key is made. If it does not exist,
 * a token with that id (or a new id when id == 0) is created. label is
 * 32 bytes blank-padded as PKCS#11 passes it (trailing blanks trimmed).
 * Out: *out_id.
 */
CK_RV kh_store_token_init(kh_store *st, int64_t *out_id, int64_t id,
                          const uint8_t *so_pin, size_t so_pin_len,
                          const char *label, size_t label_len,
                          const kh_kdf_params *kdf);
/*
 * Check a PIN. user_type is CKU_USER or CKU_SO. On success the token key is
 * written to key_out and the failure counter reset; on a wrong PIN the
 * counter is incremented (CKR_PIN_INCORRECT), and at KH_PIN_MAX_TRIES the
 * PIN is locked (CKR_PIN_LOCKED). CKR_USER_PIN_NOT_INITIALIZED when no user
 * PIN was set. The KDF runs outside any transaction.
 */
CK_RV kh_store_login(kh_store *st, uint8_t key_out[KH_TOKEN_KEY_LEN], int64_t token_id,
                     CK_USER_TYPE user_type, const uint8_t *pin, size_t pin_len);
/* C_InitPIN (SO already holds token_key): (re)wrap the token key under a new user PIN; unlocks it. */
CK_RV kh_store_init_pin(kh_store *st, int64_t token_id, const uint8_t token_key[KH_TOKEN_KEY_LEN],
                        const uint8_t *pin, size_t pin_len, const kh_kdf_params *kdf);
/* C_SetPIN: verify old PIN of user_type (counts as a login attempt), rewrap under new. */
CK_RV kh_store_set_pin(kh_store *st, int64_t token_id, CK_USER_TYPE user_type,
                       const uint8_t *old_pin, size_t old_len,
                       const uint8_t *new_pin, size_t new_len, const kh_kdf_params *kdf);
CK_RV kh_store_token_set_default_backend(kh_store *st, int64_t token_id, CK_ULONG backend);

/*
 * Objects. insert derives the indexed columns (class, key type, CKA_ID,
 * CKA_LABEL, CKA_PRIVATE, CKA_KH_BACKEND, CKA_KH_REMOTE_REF) from rec->attrs;
 * rec->uid must already be set (kh_random). Out: *out_id (the new rowid).
 */
CK_RV kh_store_obj_insert(kh_store *st, int64_t *out_id, const kh_obj_rec *rec);
/* Insert n records in one transaction (bulk builds, key pairs). out_ids may be NULL. */
CK_RV kh_store_obj_insert_many(kh_store *st, int64_t *out_ids, const kh_obj_rec *recs, size_t n);
/*
 * The same, with one audit row in the same transaction (one commit: with
 * synchronous=FULL, one fsync for a generated key pair and its event). The
 * row's detail is "handle=<id of recs[n-1]>", then a blank and detail_tail
 * when that is not NULL; token_id 0 leaves the row without a token.
 */
CK_RV kh_store_obj_insert_audited(kh_store *st, int64_t *out_ids, const kh_obj_rec *recs, size_t n,
                                  int64_t token_id, const char *event, const char *detail_tail);
/* Load one object. CKR_OBJECT_HANDLE_INVALID if no such row. Free with kh_obj_rec_clear(). */
CK_RV kh_store_obj_get(kh_store *st, kh_obj_rec *out, int64_t id);
/* Replace the attribute set (and indexed columns) of object id. */
CK_RV kh_store_obj_update(kh_store *st, int64_t id, const CK_ATTRIBUTE *attrs, size_t nattrs);
CK_RV kh_store_obj_delete(kh_store *st, int64_t id);
/* Ids of matching objects, ascending. *ids malloc'd (free()). */
CK_RV kh_store_obj_find(kh_store *st, int64_t **ids, size_t *n, const kh_find_query *q);
CK_RV kh_store_obj_count(kh_store *st, int64_t token_id, size_t *n);
void kh_obj_rec_clear(kh_obj_rec *rec);
/* Find an attribute in a record; NULL if absent. */
const CK_ATTRIBUTE *kh_obj_rec_attr(const kh_obj_rec *rec, CK_ATTRIBUTE_TYPE type);

/* Audit log: one row per event; detail must never hold a PIN, key or plaintext. */
CK_RV kh_store_audit(kh_store *st, int64_t token_id, const char *event, const char *detail);

/* ---- sealing (seal.c): no SQLite, usable on its own ---- */

/* Default KDF parameters; KEYHOLD_KDF_LOG2N in the environment may lower N for tests (min 10). */
void kh_kdf_default(kh_kdf_params *out);
/* HKDF-SHA-256 (RFC 5869, no salt) of ikm with info. Out: out (out_len bytes). */
CK_RV kh_hkdf_sha256(uint8_t *out, size_t out_len, const uint8_t *ikm, size_t ikm_len, const char *info);
/* scrypt(pin, salt) -> 32 bytes. */
CK_RV kh_kdf(uint8_t out[32], const uint8_t *pin, size_t pin_len,
             const uint8_t *salt, size_t salt_len, const kh_kdf_params *kdf);
/*
 * AES-256-GCM. Output layout: 12-byte nonce || ciphertext || 16-byte tag.
 * *out malloc'd; *out_len = pt_len + 28. unseal returns CKR_ENCRYPTED_DATA_INVALID
 * on a bad tag (wrong key, wrong aad, tampered blob); its *out must be wiped
 * with kh_wipe() before free().
 */
CK_RV kh_seal(uint8_t **out, size_t *out_len, const uint8_t key[32],
              const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len);
CK_RV kh_unseal(uint8_t **out, size_t *out_len, const uint8_t key[32],
                const uint8_t *aad, size_t aad_len, const uint8_t *blob, size_t blob_len);
/* AAD binding a private blob to its object: "keyhold-obj-v1" || token uid || object uid. */
#define KH_OBJ_AAD_LEN (14 + 2 * KH_UID_LEN)
void kh_obj_aad(uint8_t out[KH_OBJ_AAD_LEN], const uint8_t token_uid[KH_UID_LEN],
                const uint8_t obj_uid[KH_UID_LEN]);
/* Module unload: release what sealing fetched from OpenSSL. */
void kh_seal_cleanup(void);
/* A wipe the compiler cannot drop. */
void kh_wipe(void *p, size_t len);

/* ---- attribute blob (attrs.c) ---- */
/* Serialise attributes as a versioned TLV blob; decode allocates every pValue. */
CK_RV kh_attrs_encode(uint8_t **out, size_t *out_len, const CK_ATTRIBUTE *attrs, size_t n);
CK_RV kh_attrs_decode(CK_ATTRIBUTE **out, size_t *n, const uint8_t *blob, size_t len);
void kh_attrs_free(CK_ATTRIBUTE *attrs, size_t n);

#endif

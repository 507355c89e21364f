/*
 * Backends: where a private key lives and who signs with it. Each backend is
 * one const ops table; a NULL member means "not supported" (the module
 * answers CKR_FUNCTION_NOT_SUPPORTED / CKR_MECHANISM_INVALID). No backend
 * knows another. Tests swap a table (kh_backend_override) to inject faults.
 */
#ifndef KH_BACKEND_H
#define KH_BACKEND_H

#include "keyhold.h"
#include "crypto.h"

struct kh_token;
struct kh_key;
struct kh_mech;

typedef struct kh_backend_ops {
    CK_ULONG id;                /* CKV_KH_BACKEND_* */
    const char *name;           /* "vault", "tpm", "remote" */
    /*
     * Make a new key pair. Out: pub, *blob and blob_len: what the store keeps
     * for the private key (sealed by the module under the token key before it
     * is written). Free *blob with kh_crypto_secret_free.
     */
    CK_RV (*generate)(struct kh_token *tok, kh_pubkey *pub, uint8_t **blob, size_t *blob_len,
                      kh_alg alg, unsigned rsa_bits);
    /* Take an existing private key (kh_crypto_import encoding); same outputs as generate. */
    CK_RV (*import)(struct kh_token *tok, kh_pubkey *pub, uint8_t **blob, size_t *blob_len,
                    kh_alg alg, const uint8_t *secret, size_t secret_len);
    /*
     * Sign data (already hashed if the mechanism hashes) with key. key->sealed
     * is the blob the store keeps (sealed under the token key with
     * kh_obj_aad(token uid, key uid)); the backend unseals it itself with
     * kh_key_unseal() (internal.h; vault: only on a key-cache miss).
     * *siglen in: buffer size (>= kh_crypto_sig_len), out: written length.
     */
    CK_RV (*sign)(struct kh_token *tok, const struct kh_key *key, kh_sigop op,
                  const kh_sigparams *params, const uint8_t *data, size_t data_len,
                  uint8_t *sig, size_t *siglen);
    /*
     * Register a key that lives elsewhere (remote): resolve ref (ref_len
     * bytes, not NUL-terminated) and fetch its public key, once. May do
     * network I/O: called with no module lock held. Out: pub, and *blob,
     * blob_len: what the store keeps (sealed by the module); free with
     * kh_crypto_secret_free.
     */
    CK_RV (*attach)(struct kh_token *tok, kh_pubkey *pub, uint8_t **blob, size_t *blob_len,
                    const char *ref, size_t ref_len);

    /* ---- life cycle (each optional) ---- */

    /* C_Initialize: make mutexes (kh_mutex_new); no I/O, no threads. */
    CK_RV (*init)(void);
    /* C_Finalize: release everything the backend holds (the tpm backend
     * flushes every TPM object this process loaded and disconnects). */
    void (*finalize)(void);
    /* In a forked child, before any other call: forget the parent's state
     * without touching it (nothing is sent, flushed or closed) and make
     * fresh mutexes; the child starts afresh on first use. */
    void (*forked)(void);

    /* ---- optional members ---- */

    /*
     * generate with the private key's C_GenerateKeyPair template at hand,
     * for the backend's own vendor attributes (tpm: CKA_KH_TPM_PCR_POLICY).
     * When set, C_GenerateKeyPair calls it instead of generate. Vendor
     * attributes it does not accept: CKR_TEMPLATE_INCONSISTENT.
     */
    CK_RV (*generate_tmpl)(struct kh_token *tok, kh_pubkey *pub, uint8_t **blob, size_t *blob_len,
                           kh_alg alg, unsigned rsa_bits, const CK_ATTRIBUTE *priv_tmpl, CK_ULONG n);
    /*
     * Adopt a private key that already lives in the backend, described by
     * the backend's vendor attributes of a C_CreateObject template (tpm:
     * CKA_KH_TPM_PUBLIC + CKA_KH_TPM_PRIVATE, optional CKA_KH_TPM_AUTH and
     * CKA_KH_TPM_PARENT). Out: pub (its algorithm decides CKA_KEY_TYPE and
     * CKA_EC_PARAMS), *blob and blob_len as for generate.
     * CKR_TEMPLATE_INCOMPLETE without the describing attributes,
     * CKR_ATTRIBUTE_VALUE_INVALID when they do not describe a usable key.
     */
    CK_RV (*adopt)(struct kh_token *tok, kh_pubkey *pub, uint8_t **blob, size_t *blob_len,
                   const CK_ATTRIBUTE *tmpl, CK_ULONG n);
    /*
     * C_SignInit: can this backend sign with mechanism m (and its checked
     * parameters) on key? CKR_OK, CKR_MECHANISM_INVALID or
     * CKR_MECHANISM_PARAM_INVALID. NULL: whatever the mechanism table allows.
     */
    CK_RV (*sign_check)(struct kh_token *tok, const struct kh_key *key, const struct kh_mech *m,
                        const kh_sigparams *params);
    /*
     * C_GetMechanismInfo on a token whose default backend is this one:
     * narrow info (filled from the mechanism table) to what the backend can
     * do (key sizes; CKF_SIGN cleared when it cannot sign with type).
     * Returns CKR_OK (info unchanged when the backend cannot tell).
     */
    CK_RV (*mech_info)(struct kh_token *tok, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO *info);

    /* ---- token services of a hardware backend (tpm) ---- */

    /* Fill buf with len bytes from the hardware RNG. CKR_DEVICE_ERROR when unreachable. */
    CK_RV (*random)(uint8_t *buf, size_t len);
    /*
     * Seal a new random 32-byte secret to the hardware under auth (derived
     * from a PIN). Out: secret, *blob (malloc'd; free()) that pin_unseal
     * opens. The hardware counts wrong auth values (dictionary-attack
     * lockout).
     */
    CK_RV (*pin_seal)(uint8_t secret[32], uint8_t **blob, size_t *blob_len, const uint8_t auth[32]);
    /*
     * Open a pin_seal blob. Out: secret. CKR_PIN_INCORRECT (wrong auth,
     * counted by the hardware), CKR_PIN_LOCKED (lockout), CKR_FUNCTION_FAILED
     * (the blob belongs to another TPM), CKR_DEVICE_ERROR (unreachable).
     */
    CK_RV (*pin_unseal)(uint8_t secret[32], const uint8_t *blob, size_t blob_len, const uint8_t auth[32]);
    /*
     * Whether the hardware's dictionary-attack protection is in lockout now
     * (then pin_unseal gives CKR_PIN_LOCKED whatever the PIN). Out: *locked.
     * CKR_DEVICE_ERROR when unreachable.
     */
    CK_RV (*lockout)(bool *locked);
    /* True when the configuration asks for this backend (tpm: a TCTI is
     * configured, or it is the default backend). */
    bool (*configured)(void);
} kh_backend_ops;

extern const kh_backend_ops kh_backend_vault;
extern const kh_backend_ops kh_backend_tpm;
extern const kh_backend_ops kh_backend_remote;

/* The table for id, or NULL when no such backend is built in. */
const kh_backend_ops *kh_backend_get(CK_ULONG id);
/* The built-in tables (for life-cycle calls). Out: *n. */
const kh_backend_ops *const *kh_backends(size_t *n);
/* Tests only: replace the table for ops->id (NULL restores the built-in). */
void kh_backend_override(CK_ULONG id, const kh_backend_ops *ops);

#endif

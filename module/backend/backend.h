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
     * kh_token_key_copy() (vault: only on a key-cache miss).
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
    /* Optional: C_Finalize, release everything the backend holds. */
    void (*shutdown)(void);
    /* Optional: first thing in a forked child: drop the parent's connections
     * and locks without using them. */
    void (*forked)(void);
} kh_backend_ops;

extern const kh_backend_ops kh_backend_vault;
extern const kh_backend_ops kh_backend_remote;

/* The table for id, or NULL when no such backend is built in. */
const kh_backend_ops *kh_backend_get(CK_ULONG id);
/* Tests only: replace the table for ops->id (NULL restores the built-in). */
void kh_backend_override(CK_ULONG id, const kh_backend_ops *ops);
/* Call every built-in backend's shutdown (C_Finalize) / forked (fork child) hook. */
void kh_backends_shutdown(void);
void kh_backends_forked(void);

#endif

/*
 * The vault backend: private keys live in the store as AES-256-GCM blobs
 * under the token key, and are used here, inside the module, with the
 * software crypto (libsecp256k1 / OpenSSL). On a token bound to a TPM, new
 * keys mix TPM2_GetRandom output into the OS RNG's.
 *
 * generate/import return the private key encoding of kh_crypto_* as the
 * blob; the module seals it before it reaches the store. sign opens the
 * blob only on a key-cache miss (kh_key_unseal: only while a user is logged
 * in), decodes the secret into a kh_softkey and hands it to the cache. The
 * unsealed secret is wiped before sign returns, on every path.
 */
#include <stdlib.h>

#include "internal.h"

/*
 * On a token bound to a TPM the new secret also depends on TPM2_GetRandom
 * output (mixed into the OS RNG's, see kh_crypto_generate_mixed); if the
 * TPM does not answer, no key is made (CKR_DEVICE_ERROR).
 */
static CK_RV vault_generate(struct kh_token *tok, kh_pubkey *pub, uint8_t **blob,
                            size_t *blob_len, kh_alg alg, unsigned rsa_bits)
{
    uint8_t mix[48];
    CK_RV rv = tok ? kh_token_hw_random(tok, mix, sizeof mix) : CKR_FUNCTION_NOT_SUPPORTED;
    if (rv == CKR_FUNCTION_NOT_SUPPORTED)
        return kh_crypto_generate(pub, blob, blob_len, alg, rsa_bits);
    if (rv == CKR_OK)
        rv = kh_crypto_generate_mixed(pub, blob, blob_len, alg, rsa_bits, mix, sizeof mix);
    kh_wipe(mix, sizeof mix);
    return rv;
}

static CK_RV vault_import(struct kh_token *tok, kh_pubkey *pub, uint8_t **blob,
                          size_t *blob_len, kh_alg alg, const uint8_t *secret,
                          size_t secret_len)
{
    (void)tok;
    return kh_crypto_import(pub, blob, blob_len, alg, secret, secret_len);
}

/* Written under tok->lock, read here without it (core.c, token_logout_locked). */
static uint64_t login_gen(kh_token *tok)
{
    return __atomic_load_n(&tok->login_gen, __ATOMIC_SEQ_CST);
}

/*
 * Unseal key's blob and decode it. CKR_USER_NOT_LOGGED_IN without a user
 * login; CKR_KH_STORE_ERROR when the blob does not open under the token key
 * (the store is corrupted or the blob was moved between objects).
 */
static CK_RV vault_load(kh_softkey **out, kh_token *tok, const struct kh_key *key)
{
    uint8_t *secret;
    size_t secret_len;

    *out = NULL;
    CK_RV rv = kh_key_unseal(&secret, &secret_len, tok, key, "vault");
    if (rv != CKR_OK)
        return rv;
    rv = kh_softkey_load(out, key->pub.alg, secret, secret_len);
    if (rv != CKR_OK) {
        /* The blob opened, so it is ours: a secret that does not decode is a store fault. */
        kh_log(KH_LOG_ERROR, "vault: private key of object %lu does not decode (0x%lx)",
               (unsigned long)key->handle, (unsigned long)rv);
        if (rv != CKR_HOST_MEMORY)
            rv = CKR_KH_STORE_ERROR;
    }
    kh_wipe(secret, secret_len);
    free(secret);
    return rv;
}

static CK_RV vault_sign(struct kh_token *tok, const struct kh_key *key, kh_sigop op,
                        const kh_sigparams *params, const uint8_t *data, size_t data_len,
                        uint8_t *sig, size_t *siglen)
{
    void *ref = NULL;
    uint64_t gen = login_gen(tok);
    const kh_softkey *sk = kh_keycache_get(key->token_uid, key->uid, gen, &ref);
    if (!sk) {
        kh_softkey *loaded;
        CK_RV rv = vault_load(&loaded, tok, key);
        if (rv != CKR_OK)
            return rv;
        kh_keycache_insert_take(loaded, key->token_uid, key->uid, gen, &ref);
        sk = loaded;
        /* A logout between reading gen and inserting may have flushed the
         * token before our entry went in: flush again so no decoded key of
         * a finished login stays cached. Logout bumps login_gen before it
         * flushes, so either its flush runs after our insert or we see the
         * new generation here (the cache lock orders the two). */
        if (login_gen(tok) != gen)
            kh_keycache_flush_token(key->token_uid);
    }
    CK_RV rv = kh_softkey_sign(sk, op, params, data, data_len, sig, siglen);
    kh_keycache_put(ref);
    return rv;
}

const kh_backend_ops kh_backend_vault = {
    .id = CKV_KH_BACKEND_VAULT,
    .name = "vault",
    .generate = vault_generate,
    .import = vault_import,
    .sign = vault_sign,
};

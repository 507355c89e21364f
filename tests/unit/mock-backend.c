/*
 * The mock backend (see mock-backend.h). Faults are one-shot: arming one
 * makes the next call of that member fail with the given CK_RV, and the
 * call after it delegates again. Counters count every call, failed or not.
 */
#include "mock-backend.h"

#include <string.h>

kh_mock_calls kh_mock_count;

static CK_RV fault_sign, fault_generate, fault_import;

/* Take the armed fault (CKR_OK if none). */
static CK_RV take(CK_RV *fault)
{
    CK_RV rv = *fault;
    *fault = CKR_OK;
    return rv;
}

static CK_RV mock_generate(struct kh_token *tok, kh_pubkey *pub, uint8_t **blob, size_t *blob_len,
                           kh_alg alg, unsigned rsa_bits)
{
    (void)tok;
    kh_mock_count.generate++;
    CK_RV rv = take(&fault_generate);
    if (rv != CKR_OK)
        return rv;
    return kh_crypto_generate(pub, blob, blob_len, alg, rsa_bits);
}

static CK_RV mock_import(struct kh_token *tok, kh_pubkey *pub, uint8_t **blob, size_t *blob_len,
                         kh_alg alg, const uint8_t *secret, size_t secret_len)
{
    (void)tok;
    kh_mock_count.import++;
    CK_RV rv = take(&fault_import);
    if (rv != CKR_OK)
        return rv;
    return kh_crypto_import(pub, blob, blob_len, alg, secret, secret_len);
}

static CK_RV mock_sign(struct kh_token *tok, const struct kh_key *key, kh_sigop op,
                       const kh_sigparams *params, const uint8_t *data, size_t data_len,
                       uint8_t *sig, size_t *siglen)
{
    kh_mock_count.sign++;
    CK_RV rv = take(&fault_sign);
    if (rv != CKR_OK)
        return rv;
    return kh_backend_vault.sign(tok, key, op, params, data, data_len, sig, siglen);
}

const kh_backend_ops kh_mock_ops = {
    .id = CKV_KH_BACKEND_VAULT,
    .name = "mock",
    .generate = mock_generate,
    .import = mock_import,
    .sign = mock_sign,
};

const kh_backend_ops kh_mock_ops_nosign = {
    .id = CKV_KH_BACKEND_VAULT,
    .name = "mock-nosign",
    .generate = mock_generate,
    .import = mock_import,
    .sign = NULL,
};

const kh_backend_ops kh_mock_ops_signonly = {
    .id = CKV_KH_BACKEND_VAULT,
    .name = "mock-signonly",
    .generate = NULL,
    .import = NULL,
    .sign = mock_sign,
};

void kh_mock_install(const kh_backend_ops *ops)
{
    memset(&kh_mock_count, 0, sizeof kh_mock_count);
    fault_sign = fault_generate = fault_import = CKR_OK;
    kh_backend_override(CKV_KH_BACKEND_VAULT, ops);
}

void kh_mock_uninstall(void)
{
    fault_sign = fault_generate = fault_import = CKR_OK;
    kh_backend_override(CKV_KH_BACKEND_VAULT, NULL);
}

void kh_mock_fail_next_sign(CK_RV rv)
{
    fault_sign = rv;
}

void kh_mock_fail_next_generate(CK_RV rv)
{
    fault_generate = rv;
}

void kh_mock_fail_next_import(CK_RV rv)
{
    fault_import = rv;
}

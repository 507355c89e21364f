/*
 * What the store keeps for TPM objects, and public keys of TPM public areas.
 *
 * Key blob (sealed by the module under the token key, so it never reaches
 * the disk in clear):
 *     "KHTK" | version (1) | flags (bit 0: PCR policy)
 *     | TPM2B_NAME parent | TPM2B_PUBLIC | TPM2B_PRIVATE | TPM2B_AUTH
 *     | TPML_PCR_SELECTION (flag bit 0 only)
 * PIN-seal blob (a token's tokens row; useless without the TPM and the PIN):
 *     "KHTS" | version (1) | 0 | TPM2B_NAME parent | TPM2B_PUBLIC | TPM2B_PRIVATE
 *     | TPM2B_DIGEST branch (the policy's own PolicyOR branch)
 * Every TPM structure is in TPM wire format (tss2-mu), as tpm2-tools writes
 * its .pub and .priv files.
 */
#include "tpm.h"

#include <stdlib.h>
#include <string.h>

#include <tss2/tss2_mu.h>

#define KH_TPM_BLOB_VERSION 1
#define KH_TPM_FLAG_PCR 0x01

static const uint8_t key_magic[4] = { 'K', 'H', 'T', 'K' };
static const uint8_t seal_magic[4] = { 'K', 'H', 'T', 'S' };

/* Room for any blob: the structures at their largest plus the header. */
#define KH_TPM_BLOB_MAX (8 + sizeof(TPM2B_NAME) + sizeof(TPM2B_PUBLIC) + sizeof(TPM2B_PRIVATE) + \
                         sizeof(TPM2B_AUTH) + sizeof(TPML_PCR_SELECTION) + sizeof(TPM2B_DIGEST))

static void blob_header(uint8_t *buf, size_t *off, const uint8_t magic[4], uint8_t flags)
{
    memcpy(buf, magic, 4);
    buf[4] = KH_TPM_BLOB_VERSION;
    buf[5] = flags;
    *off = 6;
}

CK_RV kh_tpm_key_encode(uint8_t **out, size_t *out_len, const kh_tpm_key *k)
{
    uint8_t *buf = malloc(KH_TPM_BLOB_MAX);
    size_t off = 0;
    TSS2_RC rc;

    *out = NULL;
    *out_len = 0;
    if (!buf)
        return CKR_HOST_MEMORY;
    blob_header(buf, &off, key_magic, k->pcr ? KH_TPM_FLAG_PCR : 0);
    rc = Tss2_MU_TPM2B_NAME_Marshal(&k->parent, buf, KH_TPM_BLOB_MAX, &off);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_PUBLIC_Marshal(&k->pub, buf, KH_TPM_BLOB_MAX, &off);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_PRIVATE_Marshal(&k->priv, buf, KH_TPM_BLOB_MAX, &off);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_AUTH_Marshal(&k->auth, buf, KH_TPM_BLOB_MAX, &off);
    if (rc == TSS2_RC_SUCCESS && k->pcr)
        rc = Tss2_MU_TPML_PCR_SELECTION_Marshal(&k->pcrs, buf, KH_TPM_BLOB_MAX, &off);
    if (rc != TSS2_RC_SUCCESS) {
        kh_crypto_secret_free(buf, KH_TPM_BLOB_MAX);
        return kh_tpm_rv(rc, KH_TPM_USE_KEY, "marshal key blob");
    }
    *out = buf;
    *out_len = off;
    /* kh_crypto_secret_free(out, out_len) wipes the used part; the rest was never written. */
    return CKR_OK;
}

CK_RV kh_tpm_key_decode(kh_tpm_key *k, const uint8_t *in, size_t len)
{
    size_t off = 6;
    TSS2_RC rc;

    memset(k, 0, sizeof *k);
    if (len < 6 || memcmp(in, key_magic, 4) != 0 || in[4] != KH_TPM_BLOB_VERSION ||
        (in[5] & ~KH_TPM_FLAG_PCR))
        return CKR_KH_STORE_ERROR;
    k->pcr = (in[5] & KH_TPM_FLAG_PCR) != 0;
    rc = Tss2_MU_TPM2B_NAME_Unmarshal(in, len, &off, &k->parent);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_PUBLIC_Unmarshal(in, len, &off, &k->pub);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_PRIVATE_Unmarshal(in, len, &off, &k->priv);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_AUTH_Unmarshal(in, len, &off, &k->auth);
    if (rc == TSS2_RC_SUCCESS && k->pcr)
        rc = Tss2_MU_TPML_PCR_SELECTION_Unmarshal(in, len, &off, &k->pcrs);
    if (rc != TSS2_RC_SUCCESS || off != len) {
        kh_wipe(k, sizeof *k);
        kh_log(KH_LOG_ERROR, "tpm: a key blob does not parse: store corrupted");
        return CKR_KH_STORE_ERROR;
    }
    return CKR_OK;
}

CK_RV kh_tpm_seal_encode(uint8_t **out, size_t *out_len, const kh_tpm_sealobj *s)
{
    uint8_t *buf = malloc(KH_TPM_BLOB_MAX);
    size_t off = 0;
    TSS2_RC rc;

    *out = NULL;
    *out_len = 0;
    if (!buf)
        return CKR_HOST_MEMORY;
    blob_header(buf, &off, seal_magic, 0);
    rc = Tss2_MU_TPM2B_NAME_Marshal(&s->parent, buf, KH_TPM_BLOB_MAX, &off);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_PUBLIC_Marshal(&s->pub, buf, KH_TPM_BLOB_MAX, &off);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_PRIVATE_Marshal(&s->priv, buf, KH_TPM_BLOB_MAX, &off);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_DIGEST_Marshal(&s->branch, buf, KH_TPM_BLOB_MAX, &off);
    if (rc != TSS2_RC_SUCCESS) {
        free(buf);
        return kh_tpm_rv(rc, KH_TPM_USE_PIN, "marshal seal blob");
    }
    *out = buf;
    *out_len = off;
    return CKR_OK;
}

CK_RV kh_tpm_seal_decode(kh_tpm_sealobj *s, const uint8_t *in, size_t len)
{
    size_t off = 6;
    TSS2_RC rc;

    memset(s, 0, sizeof *s);
    if (len < 6 || memcmp(in, seal_magic, 4) != 0 || in[4] != KH_TPM_BLOB_VERSION || in[5] != 0)
        return CKR_KH_STORE_ERROR;
    rc = Tss2_MU_TPM2B_NAME_Unmarshal(in, len, &off, &s->parent);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_PUBLIC_Unmarshal(in, len, &off, &s->pub);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_PRIVATE_Unmarshal(in, len, &off, &s->priv);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_DIGEST_Unmarshal(in, len, &off, &s->branch);
    if (rc != TSS2_RC_SUCCESS || off != len || s->branch.size != 32) {
        kh_log(KH_LOG_ERROR, "tpm: a PIN seal blob does not parse: store corrupted");
        return CKR_KH_STORE_ERROR;
    }
    return CKR_OK;
}

/* Copy a big-endian TPM2B value into a field of flen bytes, left-padded. */
static bool copy_padded(uint8_t *dst, size_t flen, const uint8_t *src, size_t len)
{
    while (len > flen && *src == 0) {
        src++;
        len--;
    }
    if (len > flen)
        return false;
    memset(dst, 0, flen - len);
    memcpy(dst + flen - len, src, len);
    return true;
}

CK_RV kh_tpm_pubkey(kh_pubkey *pub, const TPMT_PUBLIC *area)
{
    memset(pub, 0, sizeof *pub);
    if (area->type == TPM2_ALG_ECC) {
        size_t flen;
        switch (area->parameters.eccDetail.curveID) {
        case TPM2_ECC_NIST_P256:
            pub->alg = KH_ALG_P256;
            flen = 32;
            break;
        case TPM2_ECC_NIST_P384:
            pub->alg = KH_ALG_P384;
            flen = 48;
            break;
        default:
            return CKR_CURVE_NOT_SUPPORTED;
        }
        pub->point[0] = 0x04;
        if (!copy_padded(pub->point + 1, flen, area->unique.ecc.x.buffer, area->unique.ecc.x.size) ||
            !copy_padded(pub->point + 1 + flen, flen, area->unique.ecc.y.buffer, area->unique.ecc.y.size))
            return CKR_ATTRIBUTE_VALUE_INVALID;
        pub->point_len = 1 + 2 * flen;
        return kh_pubkey_check(pub) == CKR_OK ? CKR_OK : CKR_ATTRIBUTE_VALUE_INVALID;
    }
    if (area->type == TPM2_ALG_RSA) {
        unsigned bits = area->parameters.rsaDetail.keyBits;
        UINT32 e = area->parameters.rsaDetail.exponent;
        const TPM2B_PUBLIC_KEY_RSA *n = &area->unique.rsa;
        if (bits < 2048 || bits > 4096 || bits % 8 || n->size != bits / 8)
            return CKR_KEY_SIZE_RANGE;
        pub->alg = KH_ALG_RSA;
        memcpy(pub->n, n->buffer, n->size);
        pub->n_len = n->size;
        if (e == 0)
            e = 65537;
        size_t el = 0;
        uint8_t eb[4] = { (uint8_t)(e >> 24), (uint8_t)(e >> 16), (uint8_t)(e >> 8), (uint8_t)e };
        size_t skip = 0;
        while (skip < 3 && eb[skip] == 0)
            skip++;
        el = 4 - skip;
        memcpy(pub->e, eb + skip, el);
        pub->e_len = el;
        return kh_pubkey_check(pub) == CKR_OK ? CKR_OK : CKR_ATTRIBUTE_VALUE_INVALID;
    }
    return CKR_KEY_TYPE_INCONSISTENT;
}

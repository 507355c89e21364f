/*
 * signd-attest.c - keyhold-signd's attestation: a TPM2_Quote (tpm2-tss
 * ESYS) over configured PCRs whose qualifying data binds the client's nonce
 * and the signer's public key, in a JSON document that tpm2_checkquote can
 * check:
 *
 *   qualifying_data = SHA-256("keyhold-signd attestation v1" || nonce || public_key)
 *   tpm2_checkquote -u ak.pem -m quote.bin -s signature.bin -f pcrs.bin \
 *                   -g sha256 -q <qualifying_data>
 *
 * The attestation key (AK) is a primary key of the endorsement hierarchy
 * (ECC P-256, restricted, ECDSA-SHA256, made at start; the same key after a
 * restart, since primaries derive from the hierarchy's seed). It is not
 * certified here: a verifier must know this AK from provisioning (or tie it
 * to the EK by other means).
 *
 * The ESYS context is not thread-safe: one lock around every TPM command.
 * Every command has a deadline (Esys_SetTimeout).
 */
#include "signd.h"

#include <json-c/json.h>
#include <openssl/sha.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Deadline of one TPM command. */
#define KH_ATTEST_TIMEOUT_MS 5000

static const char kh_attest_label[] = "keyhold-signd attestation v1";

struct kh_signd_attest {
    pthread_mutex_t lock;
    TSS2_TCTI_CONTEXT *tcti;
    ESYS_CONTEXT *esys;
    ESYS_TR ak;
    TPM2B_PUBLIC *ak_pub;
    char *ak_pem;
    TPML_PCR_SELECTION sel;
    const char *bank_name;
};

/* Parses "sha256:0,1,7" (bank sha1, sha256, sha384 or sha512; PCRs 0..23). */
static bool kh_parse_pcrs(struct kh_signd_attest *at, const char *s, char *err, size_t errlen)
{
    static const struct {
        const char *name;
        TPMI_ALG_HASH alg;
    } banks[] = {
        { "sha1", TPM2_ALG_SHA1 }, { "sha256", TPM2_ALG_SHA256 },
        { "sha384", TPM2_ALG_SHA384 }, { "sha512", TPM2_ALG_SHA512 },
    };
    const char *colon = strchr(s, ':'), *p;
    TPMS_PCR_SELECTION *ps = &at->sel.pcrSelections[0];
    size_t i;

    memset(&at->sel, 0, sizeof at->sel);
    for (i = 0; colon && i < sizeof banks / sizeof banks[0]; i++)
        if (strlen(banks[i].name) == (size_t)(colon - s) && strncmp(s, banks[i].name, (size_t)(colon - s)) == 0)
            break;
    if (!colon || i == sizeof banks / sizeof banks[0]) {
        kh_signd_errf(err, errlen, "PCR selection '%s': want BANK:N,N,... with BANK sha1, sha256, "
                      "sha384 or sha512", s);
        return false;
    }
    at->bank_name = banks[i].name;
    ps->hash = banks[i].alg;
    ps->sizeofSelect = 3;
    p = colon + 1;
    for (;;) {
        char *end;
        long n = strtol(p, &end, 10);
        if (end == p || n < 0 || n > 23 || (*end != ',' && *end != '\0')) {
            kh_signd_errf(err, errlen, "PCR selection '%s': PCR numbers are 0..23, comma-separated", s);
            return false;
        }
        ps->pcrSelect[n / 8] |= (uint8_t)(1u << (n % 8));
        if (*end == '\0')
            break;
        p = end + 1;
    }
    at->sel.count = 1;
    return true;
}

/* The AK public key (ECC P-256) as PEM. */
static char *kh_ak_pem(const TPM2B_PUBLIC *pub)
{
    const TPMS_ECC_POINT *q = &pub->publicArea.unique.ecc;
    struct kh_pubkey pk = { .kind = KH_KEY_P256 };
    uint8_t point[65];
    char *pem;

    if (q->x.size > 32 || q->y.size > 32)
        return NULL;
    memset(point, 0, sizeof point);
    point[0] = 0x04;
    memcpy(point + 1 + 32 - q->x.size, q->x.buffer, q->x.size);
    memcpy(point + 33 + 32 - q->y.size, q->y.buffer, q->y.size);
    if (!kh_pubkey_set_ec_point(&pk, point, sizeof point))
        return NULL;
    pem = kh_pubkey_to_pem(&pk);
    kh_pubkey_clear(&pk);
    return pem;
}

bool kh_signd_attest_open(struct kh_signd_attest **out, const char *tcti, const char *pcrs,
                          char *err, size_t errlen)
{
    struct kh_signd_attest *at;
    TPM2B_SENSITIVE_CREATE sens;
    TPM2B_PUBLIC tmpl;
    TPM2B_DATA outside;
    TPML_PCR_SELECTION creation;
    TSS2_RC rc;

    *out = NULL;
    at = calloc(1, sizeof *at);
    if (!at) {
        kh_signd_errf(err, errlen, "out of memory");
        return false;
    }
    pthread_mutex_init(&at->lock, NULL);
    at->ak = ESYS_TR_NONE;
    if (!kh_parse_pcrs(at, pcrs, err, errlen))
        goto fail;
    rc = Tss2_TctiLdr_Initialize(tcti, &at->tcti);
    if (rc != TSS2_RC_SUCCESS) {
        kh_signd_errf(err, errlen, "TCTI '%s': %s", tcti, Tss2_RC_Decode(rc));
        goto fail;
    }
    rc = Esys_Initialize(&at->esys, at->tcti, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        kh_signd_errf(err, errlen, "Esys_Initialize: %s", Tss2_RC_Decode(rc));
        goto fail;
    }
    Esys_SetTimeout(at->esys, KH_ATTEST_TIMEOUT_MS);
    rc = Esys_Startup(at->esys, TPM2_SU_CLEAR);
    if (rc != TSS2_RC_SUCCESS && rc != TPM2_RC_INITIALIZE) {
        kh_signd_errf(err, errlen, "TPM2_Startup: %s", Tss2_RC_Decode(rc));
        goto fail;
    }

    memset(&sens, 0, sizeof sens);
    memset(&tmpl, 0, sizeof tmpl);
    memset(&outside, 0, sizeof outside);
    memset(&creation, 0, sizeof creation);
    tmpl.publicArea.type = TPM2_ALG_ECC;
    tmpl.publicArea.nameAlg = TPM2_ALG_SHA256;
    tmpl.publicArea.objectAttributes = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT |
                                       TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                       TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH;
    tmpl.publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
    tmpl.publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
    tmpl.publicArea.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
    tmpl.publicArea.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    tmpl.publicArea.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
    rc = Esys_CreatePrimary(at->esys, ESYS_TR_RH_ENDORSEMENT, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                            ESYS_TR_NONE, &sens, &tmpl, &outside, &creation, &at->ak, &at->ak_pub,
                            NULL, NULL, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        kh_signd_errf(err, errlen, "creating the attestation key: %s", Tss2_RC_Decode(rc));
        goto fail;
    }
    at->ak_pem = kh_ak_pem(at->ak_pub);
    if (!at->ak_pem) {
        kh_signd_errf(err, errlen, "cannot encode the attestation key");
        goto fail;
    }
    *out = at;
    return true;
fail:
    kh_signd_attest_close(at);
    return false;
}

void kh_signd_attest_close(struct kh_signd_attest *at)
{
    if (!at)
        return;
    if (at->esys && at->ak != ESYS_TR_NONE)
        Esys_FlushContext(at->esys, at->ak);
    if (at->esys)
        Esys_Finalize(&at->esys);
    if (at->tcti)
        Tss2_TctiLdr_Finalize(&at->tcti);
    Esys_Free(at->ak_pub);
    free(at->ak_pem);
    pthread_mutex_destroy(&at->lock);
    free(at);
}

/* Adds name: base64 of len bytes. Returns false when out of memory. */
static bool kh_doc_b64(struct json_object *doc, const char *name, const void *p, size_t len)
{
    char *b = kh_base64_encode(p, len);

    if (!b)
        return false;
    json_object_object_add(doc, name, json_object_new_string(b));
    free(b);
    return true;
}

static bool kh_doc_hex(struct json_object *doc, const char *name, const uint8_t *p, size_t len)
{
    char *h = malloc(2 * len + 1);

    if (!h)
        return false;
    kh_hex_encode(h, 2 * len + 1, p, len);
    json_object_object_add(doc, name, json_object_new_string(h));
    free(h);
    return true;
}

/*
 * Reads the selected PCRs: the values (in PCR order) and tpm2-tools'
 * "serialized" PCR file (TPML_PCR_SELECTION, a UINT32 count, then that many
 * TPML_DIGEST, each as the host lays the structure out), as tpm2_quote -o
 * writes it and tpm2_checkquote -f reads it.
 */
static TSS2_RC kh_read_pcrs(struct kh_signd_attest *at, struct json_object *values,
                            uint8_t **file, size_t *file_len)
{
    TPML_PCR_SELECTION want = at->sel;
    TPML_DIGEST digests[TPM2_MAX_PCRS];
    UINT32 count = 0;
    TSS2_RC rc = TSS2_RC_SUCCESS;
    int next_pcr = 0;

    *file = NULL;
    while (count < TPM2_MAX_PCRS) {
        TPML_PCR_SELECTION *got = NULL;
        TPML_DIGEST *vals = NULL;
        UINT32 counter;
        bool any = false;

        for (int i = 0; i < 3; i++)
            any |= want.pcrSelections[0].pcrSelect[i] != 0;
        if (!any)
            break;
        rc = Esys_PCR_Read(at->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &want, &counter,
                           &got, &vals);
        if (rc != TSS2_RC_SUCCESS)
            return rc;
        if (got->count != 1 || vals->count == 0) {
            Esys_Free(got);
            Esys_Free(vals);
            return TSS2_ESYS_RC_MALFORMED_RESPONSE;
        }
        digests[count++] = *vals;
        /* Name each value by its PCR: the returned bits, in ascending order. */
        for (UINT32 v = 0; v < vals->count; v++) {
            char key[16];
            while (next_pcr < 24 && !(got->pcrSelections[0].pcrSelect[next_pcr / 8] & (1u << (next_pcr % 8))))
                next_pcr++;
            snprintf(key, sizeof key, "%d", next_pcr++);
            char hex[2 * sizeof vals->digests[v].buffer + 1];
            kh_hex_encode(hex, sizeof hex, vals->digests[v].buffer, vals->digests[v].size);
            json_object_object_add(values, key, json_object_new_string(hex));
        }
        for (int i = 0; i < 3; i++)
            want.pcrSelections[0].pcrSelect[i] &= (uint8_t)~got->pcrSelections[0].pcrSelect[i];
        Esys_Free(got);
        Esys_Free(vals);
    }
    *file_len = sizeof at->sel + sizeof count + count * sizeof digests[0];
    *file = calloc(1, *file_len);
    if (!*file)
        return TSS2_ESYS_RC_MEMORY;
    memcpy(*file, &at->sel, sizeof at->sel);
    memcpy(*file + sizeof at->sel, &count, sizeof count);
    memcpy(*file + sizeof at->sel + sizeof count, digests, count * sizeof digests[0]);
    return TSS2_RC_SUCCESS;
}

bool kh_signd_attest_quote(struct kh_signd_attest *at, const struct kh_signd_key *key,
                           const uint8_t *nonce, size_t nonce_len, char **doc_out,
                           char *err, size_t errlen)
{
    TPM2B_DATA qd = { .size = SHA256_DIGEST_LENGTH };
    TPMT_SIG_SCHEME scheme = { .scheme = TPM2_ALG_NULL };
    TPM2B_ATTEST *quoted = NULL;
    TPMT_SIGNATURE *sig = NULL;
    uint8_t sigbuf[sizeof(TPMT_SIGNATURE)], pubbuf[sizeof(TPM2B_PUBLIC)], *pcrfile = NULL;
    size_t siglen = 0, publen = 0, pcrlen = 0;
    struct json_object *doc = NULL, *values = NULL;
    const uint8_t *pk = key->desc.kind == KH_KEY_RSA ? key->pub.n : key->pub.point;
    size_t pklen = key->desc.kind == KH_KEY_RSA ? key->pub.n_len : key->pub.point_len;
    uint8_t bind[sizeof kh_attest_label + 64 + 1024];
    TSS2_RC rc;
    bool ok = false;

    *doc_out = NULL;
    if (nonce_len > 64 || pklen > 1024) {
        kh_signd_errf(err, errlen, "nonce or public key too long");
        return false;
    }
    memcpy(bind, kh_attest_label, sizeof kh_attest_label - 1);
    memcpy(bind + sizeof kh_attest_label - 1, nonce, nonce_len);
    memcpy(bind + sizeof kh_attest_label - 1 + nonce_len, pk, pklen);
    SHA256(bind, sizeof kh_attest_label - 1 + nonce_len + pklen, qd.buffer);

    doc = json_object_new_object();
    values = json_object_new_object();
    if (!doc || !values) {
        kh_signd_errf(err, errlen, "out of memory");
        goto out;
    }
    pthread_mutex_lock(&at->lock);
    rc = Esys_Quote(at->esys, at->ak, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &qd, &scheme,
                    &at->sel, &quoted, &sig);
    if (rc == TSS2_RC_SUCCESS)
        rc = kh_read_pcrs(at, values, &pcrfile, &pcrlen);
    pthread_mutex_unlock(&at->lock);
    if (rc != TSS2_RC_SUCCESS) {
        kh_signd_errf(err, errlen, "TPM: %s", Tss2_RC_Decode(rc));
        goto out;
    }
    rc = Tss2_MU_TPMT_SIGNATURE_Marshal(sig, sigbuf, sizeof sigbuf, &siglen);
    if (rc == TSS2_RC_SUCCESS)
        rc = Tss2_MU_TPM2B_PUBLIC_Marshal(at->ak_pub, pubbuf, sizeof pubbuf, &publen);
    if (rc != TSS2_RC_SUCCESS) {
        kh_signd_errf(err, errlen, "marshaling: %s", Tss2_RC_Decode(rc));
        goto out;
    }

    json_object_object_add(doc, "format", json_object_new_string("keyhold-signd-attestation-v1"));
    json_object_object_add(doc, "key", json_object_new_string(key->label));
    json_object_object_add(doc, "key_type", json_object_new_string(kh_keykind_name(key->desc.kind)));
    if (key->has_address)
        json_object_object_add(doc, "address", json_object_new_string(key->address));
    json_object_object_add(doc, "pcr_bank", json_object_new_string(at->bank_name));
    json_object_object_add(doc, "pcrs", values);
    values = NULL;
    json_object_object_add(doc, "ak_public_pem", json_object_new_string(at->ak_pem));
    ok = kh_doc_hex(doc, "nonce", nonce, nonce_len) &&
         kh_doc_hex(doc, "public_key", pk, pklen) &&
         kh_doc_hex(doc, "qualifying_data", qd.buffer, qd.size) &&
         kh_doc_b64(doc, "quote_b64", quoted->attestationData, quoted->size) &&
         kh_doc_b64(doc, "signature_b64", sigbuf, siglen) &&
         kh_doc_b64(doc, "pcrs_b64", pcrfile, pcrlen) &&
         kh_doc_b64(doc, "ak_public_b64", pubbuf, publen);
    if (ok) {
        const char *s = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN |
                                                            JSON_C_TO_STRING_NOSLASHESCAPE);
        *doc_out = s ? strdup(s) : NULL;
        ok = *doc_out != NULL;
    }
    if (!ok)
        kh_signd_errf(err, errlen, "out of memory");
out:
    free(pcrfile);
    Esys_Free(quoted);
    Esys_Free(sig);
    json_object_put(values);
    json_object_put(doc);
    return ok;
}

/*
 * TPM helpers without module state (see tpmutil.h).
 */
#include "tpmutil.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void kh_tpm_srk_template(TPM2B_PUBLIC *out)
{
    memset(out, 0, sizeof *out);
    TPMT_PUBLIC *p = &out->publicArea;
    p->type = TPM2_ALG_ECC;
    p->nameAlg = TPM2_ALG_SHA256;
    p->objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                          TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                          TPMA_OBJECT_NODA | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
    p->authPolicy.size = 0;
    p->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
    p->parameters.eccDetail.symmetric.keyBits.aes = 128;
    p->parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
    p->parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
    p->parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    p->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
    p->unique.ecc.x.size = 32;
    p->unique.ecc.y.size = 32;
}

bool kh_tpm_is_storage_key(const TPMT_PUBLIC *pub)
{
    const TPMA_OBJECT need = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT | TPMA_OBJECT_FIXEDTPM |
                             TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_USERWITHAUTH;
    const TPMT_SYM_DEF_OBJECT *sym;

    if ((pub->objectAttributes & need) != need || (pub->objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT))
        return false;
    if (pub->type == TPM2_ALG_ECC)
        sym = &pub->parameters.eccDetail.symmetric;
    else if (pub->type == TPM2_ALG_RSA)
        sym = &pub->parameters.rsaDetail.symmetric;
    else
        return false;
    return sym->algorithm == TPM2_ALG_AES && sym->mode.aes == TPM2_ALG_CFB;
}

TSS2_RC kh_tpm_rc_base(TSS2_RC rc)
{
    if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER)
        return rc;
    if (rc & TPM2_RC_FMT1)
        return rc & (TPM2_RC_FMT1 | 0x3F);
    return rc & 0xFFF;
}

static bool pcr_bank(TPMI_ALG_HASH *alg, const char *name, size_t len)
{
    static const struct { const char *name; TPMI_ALG_HASH alg; } banks[] = {
        { "sha1", TPM2_ALG_SHA1 },
        { "sha256", TPM2_ALG_SHA256 },
        { "sha384", TPM2_ALG_SHA384 },
        { "sha512", TPM2_ALG_SHA512 },
    };
    for (size_t i = 0; i < sizeof banks / sizeof banks[0]; i++) {
        if (strlen(banks[i].name) == len && strncmp(banks[i].name, name, len) == 0) {
            *alg = banks[i].alg;
            return true;
        }
    }
    return false;
}

bool kh_tpm_pcr_parse(TPML_PCR_SELECTION *sel, const char *s)
{
    memset(sel, 0, sizeof *sel);
    if (!s || !*s)
        return false;
    while (*s) {
        const char *colon = strchr(s, ':');
        if (!colon || sel->count >= TPM2_NUM_PCR_BANKS)
            goto bad;
        TPMS_PCR_SELECTION *b = &sel->pcrSelections[sel->count];
        if (!pcr_bank(&b->hash, s, (size_t)(colon - s)))
            goto bad;
        for (uint32_t i = 0; i < sel->count; i++)
            if (sel->pcrSelections[i].hash == b->hash)
                goto bad; /* a bank named twice */
        b->sizeofSelect = 3;
        s = colon + 1;
        bool any = false;
        for (;;) {
            char *end;
            errno = 0;
            if (*s < '0' || *s > '9')
                goto bad;
            unsigned long pcr = strtoul(s, &end, 10);
            if (errno || end == s || pcr > 23)
                goto bad;
            b->pcrSelect[pcr / 8] |= (uint8_t)(1u << (pcr % 8));
            any = true;
            s = end;
            if (*s != ',')
                break;
            s++;
        }
        if (!any)
            goto bad;
        sel->count++;
        if (*s == '+')
            s++;
        else if (*s)
            goto bad;
    }
    return sel->count > 0;
bad:
    memset(sel, 0, sizeof *sel);
    return false;
}

bool kh_tpm_parse_persistent(uint32_t *out, const char *s)
{
    char *end;
    errno = 0;
    if (!s || !*s)
        return false;
    unsigned long v = strtoul(s, &end, 0);
    if (errno || *end || v < KH_TPM_PERSISTENT_FIRST || v > KH_TPM_PERSISTENT_LAST)
        return false;
    *out = (uint32_t)v;
    return true;
}

bool kh_tpm_name_eq(const TPM2B_NAME *a, const TPM2B_NAME *b)
{
    return a->size == b->size && a->size <= sizeof a->name && memcmp(a->name, b->name, a->size) == 0;
}

double kh_tpm_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- awaiting asynchronous ESYS commands ---- */

TSS2_RC kh_tpm_await(ESYS_CONTEXT *esys, bool *late, kh_tpm_fin *fin, void *arg, unsigned timeout_ms)
{
    double deadline = kh_tpm_now_ms() + timeout_ms;
    *late = false;
    for (;;) {
        TSS2_RC rc = fin(esys, arg);
        if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TPM_RC_LAYER || (rc & ~TSS2_RC_LAYER_MASK) != TSS2_BASE_RC_TRY_AGAIN)
            return rc;
        if (kh_tpm_now_ms() > deadline) {
            *late = true;
            return TSS2_TCTI_RC_IO_ERROR;
        }
    }
}

TSS2_RC kh_tpm_fin_cap(ESYS_CONTEXT *esys, void *arg)
{
    kh_tpm_cap_out *o = arg;
    return Esys_GetCapability_Finish(esys, &o->more, &o->data);
}

TSS2_RC kh_tpm_fin_from_public(ESYS_CONTEXT *esys, void *arg)
{
    return Esys_TR_FromTPMPublic_Finish(esys, arg);
}

TSS2_RC kh_tpm_fin_readpub(ESYS_CONTEXT *esys, void *arg)
{
    kh_tpm_readpub_out *o = arg;
    return Esys_ReadPublic_Finish(esys, &o->pub, &o->name, &o->qname);
}

TSS2_RC kh_tpm_fin_primary(ESYS_CONTEXT *esys, void *arg)
{
    kh_tpm_primary_out *o = arg;
    return Esys_CreatePrimary_Finish(esys, &o->tr, &o->pub, &o->cdata, &o->chash, &o->ticket);
}

TSS2_RC kh_tpm_fin_flush(ESYS_CONTEXT *esys, void *arg)
{
    (void)arg;
    return Esys_FlushContext_Finish(esys);
}

void kh_tpm_primary_out_free(kh_tpm_primary_out *o)
{
    Esys_Free(o->pub);
    Esys_Free(o->cdata);
    Esys_Free(o->chash);
    Esys_Free(o->ticket);
}

/*
 * The keyhold tool's direct TPM work (see tpm.h).
 */
#include "tpm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>

#include "encode.h"
#include "tpmutil.h"

#define KH_TOOL_TPM_TIMEOUT_MS 30000
#define KH_TOOL_TPM_POLL_MS 100

/* ---- configuration ---- */

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
        *--e = '\0';
    return s;
}

bool kh_tpm_conf_read(struct kh_tpm_conf *conf, char *err, size_t errlen)
{
    const char *path = getenv("KEYHOLD_CONF"), *env = getenv("KEYHOLD_TCTI");

    memset(conf, 0, sizeof *conf);
    snprintf(conf->tcti, sizeof conf->tcti, "%s", KH_TPM_TCTI_DEFAULT);
    conf->tcti_from = "default";
    conf->primary = KH_TPM_PRIMARY_DEFAULT;
    if (path && *path) {
        FILE *f = fopen(path, "re");
        char line[4352];
        if (!f) {
            snprintf(err, errlen, "cannot open KEYHOLD_CONF %s: %s", path, strerror(errno));
            return false;
        }
        while (fgets(line, sizeof line, f)) {
            char *p = trim(line), *eq = strchr(p, '=');
            if (*p == '#' || !eq)
                continue;
            *eq = '\0';
            char *key = trim(p), *val = trim(eq + 1);
            if (strcmp(key, "tcti") == 0 && *val) {
                snprintf(conf->tcti, sizeof conf->tcti, "%s", val);
                conf->tcti_from = "KEYHOLD_CONF";
            } else if (strcmp(key, "tpm_primary") == 0) {
                if (!kh_tpm_parse_persistent(&conf->primary, val)) {
                    snprintf(err, errlen, "%s: tpm_primary '%s' is not a persistent handle (0x81xxxxxx)",
                             path, val);
                    fclose(f);
                    return false;
                }
            } else if (strcmp(key, "default_backend") == 0) {
                conf->default_tpm = strcmp(val, "tpm") == 0;
            }
        }
        fclose(f);
    }
    if (env && *env) {
        snprintf(conf->tcti, sizeof conf->tcti, "%s", env);
        conf->tcti_from = "KEYHOLD_TCTI";
    }
    return true;
}

/* ---- a connection with deadlines ---- */

struct tconn {
    TSS2_TCTI_CONTEXT *tcti;    /* as the module opens it (kh_tpm_tcti_open) */
    ESYS_CONTEXT *esys;
};

static void rc_text(char *out, size_t len, const char *what, TSS2_RC rc)
{
    const char *d = Tss2_RC_Decode(rc);
    snprintf(out, len, "%s: 0x%08x (%s)", what, (unsigned)rc, d ? d : "?");
}

static void conn_close(struct tconn *c)
{
    if (c->esys)
        Esys_Finalize(&c->esys);
    kh_tpm_tcti_close(c->tcti);
    c->tcti = NULL;
}

static bool conn_open(struct tconn *c, const char *tcti, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    if (!getenv("TSS2_LOG"))
        setenv("TSS2_LOG", "all+NONE", 0);
    TSS2_RC rc = kh_tpm_tcti_open(&c->tcti, tcti, KH_TOOL_TPM_TIMEOUT_MS);
    if (rc != TSS2_RC_SUCCESS) {
        rc_text(err, errlen, "cannot open the TCTI", rc);
        return false;
    }
    rc = Esys_Initialize(&c->esys, c->tcti, NULL);
    if (rc == TSS2_RC_SUCCESS)
        rc = Esys_SetTimeout(c->esys, KH_TOOL_TPM_POLL_MS);
    if (rc != TSS2_RC_SUCCESS) {
        rc_text(err, errlen, "Esys_Initialize", rc);
        conn_close(c);
        return false;
    }
    return true;
}

/* Await an Esys_*_Async command; a TPM that does not answer in time is an error. */
static TSS2_RC wait_cmd(struct tconn *c, TSS2_RC async_rc, kh_tpm_fin *fin, void *arg)
{
    bool late;
    if (async_rc != TSS2_RC_SUCCESS)
        return async_rc;
    return kh_tpm_await(c->esys, &late, fin, arg, KH_TOOL_TPM_TIMEOUT_MS);
}

static TSS2_RC fin_evict(ESYS_CONTEXT *e, void *arg)
{
    return Esys_EvictControl_Finish(e, arg);
}

/* One TPM property (TPM_PT_*). */
static TSS2_RC get_prop(struct tconn *c, TPM2_PT prop, UINT32 *val)
{
    kh_tpm_cap_out a = { 0 };
    TSS2_RC rc = wait_cmd(c, Esys_GetCapability_Async(c->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                                      TPM2_CAP_TPM_PROPERTIES, prop, 1),
                          kh_tpm_fin_cap, &a);
    if (rc == TSS2_RC_SUCCESS) {
        if (a.data->data.tpmProperties.count >= 1 && a.data->data.tpmProperties.tpmProperty[0].property == prop)
            *val = a.data->data.tpmProperties.tpmProperty[0].value;
        else
            rc = TSS2_ESYS_RC_MALFORMED_RESPONSE;
    }
    Esys_Free(a.data);
    return rc;
}

/* Read the public area at handle. Out: *pub (Esys_Free), *name (Esys_Free).
 * TPM2_RC_HANDLE-based codes when nothing is there. */
static TSS2_RC read_handle(struct tconn *c, uint32_t handle, TPM2B_PUBLIC **pub, TPM2B_NAME **name)
{
    ESYS_TR tr = ESYS_TR_NONE;
    kh_tpm_readpub_out a = { 0 };
    TSS2_RC rc = wait_cmd(c, Esys_TR_FromTPMPublic_Async(c->esys, handle, ESYS_TR_NONE, ESYS_TR_NONE,
                                                         ESYS_TR_NONE),
                          kh_tpm_fin_from_public, &tr);
    if (rc != TSS2_RC_SUCCESS)
        return rc;
    rc = wait_cmd(c, Esys_ReadPublic_Async(c->esys, tr, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE),
                  kh_tpm_fin_readpub, &a);
    Esys_TR_Close(c->esys, &tr);
    Esys_Free(a.qname);
    if (rc != TSS2_RC_SUCCESS) {
        Esys_Free(a.pub);
        Esys_Free(a.name);
        return rc;
    }
    *pub = a.pub;
    *name = a.name;
    return rc;
}

/* Create the SRK-template primary under the owner hierarchy. Out: a. */
static TSS2_RC make_srk(struct tconn *c, kh_tpm_primary_out *a, const char *owner_auth)
{
    TPM2B_PUBLIC tmpl;
    TPM2B_SENSITIVE_CREATE sens;
    TPM2B_DATA outside = { .size = 0 };
    TPML_PCR_SELECTION pcrs = { .count = 0 };
    TPM2B_AUTH auth = { .size = 0 };
    size_t alen = owner_auth ? strlen(owner_auth) : 0;

    if (alen > sizeof auth.buffer)
        return TSS2_ESYS_RC_BAD_VALUE;
    memcpy(auth.buffer, owner_auth ? owner_auth : "", alen);
    auth.size = (UINT16)alen;
    kh_tpm_srk_template(&tmpl);
    memset(&sens, 0, sizeof sens);
    memset(a, 0, sizeof *a);
    TSS2_RC rc = Esys_TR_SetAuth(c->esys, ESYS_TR_RH_OWNER, &auth);
    if (rc == TSS2_RC_SUCCESS)
        rc = wait_cmd(c, Esys_CreatePrimary_Async(c->esys, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                                  ESYS_TR_NONE, &sens, &tmpl, &outside, &pcrs),
                      kh_tpm_fin_primary, a);
    kh_wipe(&auth, sizeof auth);
    return rc;
}

/* The Name of the SRK-template key on this TPM (made, read, flushed). */
static TSS2_RC srk_name(struct tconn *c, TPM2B_NAME *out, const char *owner_auth)
{
    kh_tpm_primary_out a;
    TSS2_RC rc = make_srk(c, &a, owner_auth);
    if (rc == TSS2_RC_SUCCESS) {
        TPM2B_NAME *n = NULL;
        rc = Esys_TR_GetName(c->esys, a.tr, &n);
        if (rc == TSS2_RC_SUCCESS)
            *out = *n;
        Esys_Free(n);
        wait_cmd(c, Esys_FlushContext_Async(c->esys, a.tr), kh_tpm_fin_flush, NULL);
    }
    kh_tpm_primary_out_free(&a);
    return rc;
}

void kh_tpm_probe(const struct kh_tpm_conf *conf, struct kh_tpm_probe *pr)
{
    struct tconn c;
    UINT32 v = 0;
    TSS2_RC rc;

    memset(pr, 0, sizeof *pr);
    if (!conn_open(&c, conf->tcti, pr->error, sizeof pr->error))
        return;
    rc = get_prop(&c, TPM2_PT_MANUFACTURER, &v);
    if (rc != TSS2_RC_SUCCESS) {
        rc_text(pr->error, sizeof pr->error, "TPM2_GetCapability", rc);
        conn_close(&c);
        return;
    }
    pr->reachable = true;
    for (int i = 0; i < 4; i++) {
        char ch = (char)(v >> (24 - 8 * i));
        pr->manufacturer[i] = ch >= 0x20 && ch < 0x7f ? ch : ' ';
    }
    if (get_prop(&c, TPM2_PT_PERMANENT, &v) == TSS2_RC_SUCCESS) {
        pr->owner_auth_set = (v & TPMA_PERMANENT_OWNERAUTHSET) != 0;
        pr->in_lockout = (v & TPMA_PERMANENT_INLOCKOUT) != 0;
    }
    if (get_prop(&c, TPM2_PT_HR_TRANSIENT_AVAIL, &v) == TSS2_RC_SUCCESS)
        pr->transient_avail = v;
    if (get_prop(&c, TPM2_PT_LOCKOUT_COUNTER, &v) == TSS2_RC_SUCCESS)
        pr->lockout_counter = v;
    if (get_prop(&c, TPM2_PT_MAX_AUTH_FAIL, &v) == TSS2_RC_SUCCESS)
        pr->max_auth_fail = v;
    TPM2B_PUBLIC *pub = NULL;
    TPM2B_NAME *name = NULL;
    rc = read_handle(&c, conf->primary, &pub, &name);
    if (rc == TSS2_RC_SUCCESS) {
        pr->primary_present = true;
        pr->primary_storage = kh_tpm_is_storage_key(&pub->publicArea);
        TPM2B_NAME srk;
        if (!pr->owner_auth_set && srk_name(&c, &srk, NULL) == TSS2_RC_SUCCESS)
            pr->primary_is_srk = kh_tpm_name_eq(&srk, name);
    }
    Esys_Free(pub);
    Esys_Free(name);
    conn_close(&c);
}

bool kh_tpm_owner_auth_set(const struct kh_tpm_conf *conf, bool *set, char *err, size_t errlen)
{
    struct tconn c;
    UINT32 v = 0;
    if (!conn_open(&c, conf->tcti, err, errlen))
        return false;
    TSS2_RC rc = get_prop(&c, TPM2_PT_PERMANENT, &v);
    conn_close(&c);
    if (rc != TSS2_RC_SUCCESS) {
        rc_text(err, errlen, "TPM2_GetCapability", rc);
        return false;
    }
    *set = (v & TPMA_PERMANENT_OWNERAUTHSET) != 0;
    return true;
}

int kh_tpm_setup(const struct kh_tpm_conf *conf, uint32_t handle, const char *owner_auth,
                 bool *already, char *msg, size_t msglen)
{
    struct tconn c;
    kh_tpm_primary_out a;
    TPM2B_PUBLIC *pub = NULL;
    TPM2B_NAME *name = NULL, *newname = NULL;
    ESYS_TR persisted = ESYS_TR_NONE;
    int ret = 1;
    TSS2_RC rc;

    *already = false;
    if (!conn_open(&c, conf->tcti, msg, msglen))
        return 1;
    rc = make_srk(&c, &a, owner_auth);
    if (rc != TSS2_RC_SUCCESS) {
        TSS2_RC base = kh_tpm_rc_base(rc);
        if (base == TPM2_RC_BAD_AUTH || base == TPM2_RC_AUTH_FAIL)
            snprintf(msg, msglen, "the owner hierarchy's auth value is wrong (TPM2_CreatePrimary: 0x%08x)",
                     (unsigned)rc);
        else
            rc_text(msg, msglen, "TPM2_CreatePrimary", rc);
        goto out_close;
    }
    rc = Esys_TR_GetName(c.esys, a.tr, &newname);
    if (rc != TSS2_RC_SUCCESS) {
        rc_text(msg, msglen, "Esys_TR_GetName", rc);
        goto out_flush;
    }
    rc = read_handle(&c, handle, &pub, &name);
    if (rc == TSS2_RC_SUCCESS) {
        if (kh_tpm_name_eq(name, newname)) {
            *already = true;
            snprintf(msg, msglen, "0x%08x already holds the SRK-template primary; nothing changed",
                     (unsigned)handle);
            ret = 0;
        } else {
            snprintf(msg, msglen, "0x%08x already holds another key (%s); left alone. keyhold %s it as "
                     "the primary. Remove it with tpm2_evictcontrol to replace it",
                     (unsigned)handle, kh_tpm_is_storage_key(&pub->publicArea) ? "a storage key" : "not a storage key",
                     kh_tpm_is_storage_key(&pub->publicArea) ? "uses" : "ignores");
        }
        goto out_flush;
    }
    if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER) {
        rc_text(msg, msglen, "TPM2_ReadPublic", rc);
        goto out_flush;
    }
    rc = wait_cmd(&c, Esys_EvictControl_Async(c.esys, ESYS_TR_RH_OWNER, a.tr, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                              ESYS_TR_NONE, handle),
                  fin_evict, &persisted);
    if (rc != TSS2_RC_SUCCESS) {
        rc_text(msg, msglen, "TPM2_EvictControl", rc);
        goto out_flush;
    }
    snprintf(msg, msglen, "persisted the SRK-template primary at 0x%08x", (unsigned)handle);
    ret = 0;
out_flush:
    wait_cmd(&c, Esys_FlushContext_Async(c.esys, a.tr), kh_tpm_fin_flush, NULL);
    kh_tpm_primary_out_free(&a);
out_close:
    Esys_Free(pub);
    Esys_Free(name);
    Esys_Free(newname);
    {
        TPM2B_AUTH empty = { .size = 0 };
        Esys_TR_SetAuth(c.esys, ESYS_TR_RH_OWNER, &empty);
    }
    conn_close(&c);
    return ret;
}

bool kh_tpm_pub_keytype(const uint8_t *buf, size_t len, CK_KEY_TYPE *kt)
{
    TPM2B_PUBLIC pub;
    size_t off = 0;
    memset(&pub, 0, sizeof pub); /* tss2-mu refuses to unmarshal into a TPM2B whose size is set */
    if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(buf, len, &off, &pub) != TSS2_RC_SUCCESS || off != len)
        return false;
    if (pub.publicArea.type == TPM2_ALG_ECC)
        *kt = CKK_EC;
    else if (pub.publicArea.type == TPM2_ALG_RSA)
        *kt = CKK_RSA;
    else
        return false;
    return true;
}

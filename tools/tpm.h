/*
 * tpm.h - what the keyhold tool does with the TPM directly (not through the
 * module): read the module's TPM configuration, persist the primary key
 * (`keyhold tpm setup`), check the TPM for `keyhold doctor`, and read the
 * key type of a `tpm2_create` public blob for `keyhold import`.
 *
 * TPM commands run against a deadline, like the module's: a silent TPM
 * gives an error, never a hang.
 */
#ifndef KH_TOOLS_TPM_H
#define KH_TOOLS_TPM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pkcs11.h"

/* The module's TPM settings, read as it reads them. */
struct kh_tpm_conf {
    char tcti[512];           /* KEYHOLD_TCTI, else KEYHOLD_CONF tcti, else device:/dev/tpmrm0 */
    const char *tcti_from;    /* "KEYHOLD_TCTI", "KEYHOLD_CONF" or "default" */
    uint32_t primary;         /* tpm_primary, else 0x81000001 */
    bool default_tpm;         /* default_backend = tpm */
};

/*
 * Reads KEYHOLD_TCTI and KEYHOLD_CONF (keys tcti, tpm_primary,
 * default_backend). Out: conf.
 * Returns: true; false with a reason in err when KEYHOLD_CONF cannot be read
 *          or holds a bad tpm_primary.
 */
bool kh_tpm_conf_read(struct kh_tpm_conf *conf, char *err, size_t errlen);

/* What kh_tpm_probe found. */
struct kh_tpm_probe {
    bool reachable;           /* the TCTI opened and the TPM answered */
    char manufacturer[5];     /* TPM_PT_MANUFACTURER as text */
    bool owner_auth_set;
    bool in_lockout;
    unsigned transient_avail; /* TPM_PT_HR_TRANSIENT_AVAIL */
    unsigned lockout_counter, max_auth_fail;
    bool primary_present;     /* an object at the primary handle */
    bool primary_storage;     /* ... and it is a storage key keyhold can use */
    bool primary_is_srk;      /* ... and it is the SRK-template key */
    char error[256];          /* why not reachable / what failed */
};

/* Connects through conf->tcti and reads what doctor reports. Out: pr. */
void kh_tpm_probe(const struct kh_tpm_conf *conf, struct kh_tpm_probe *pr);

/*
 * `keyhold tpm setup`: make the SRK-template primary and persist it at
 * handle, with the owner hierarchy's auth value (owner_auth, may be empty).
 * Nothing is changed when handle already holds the SRK-template key
 * (*already set). Out: msg (what happened, or why it failed).
 * Returns: 0 done; 1 failed (msg says why: the handle holds another key,
 *          wrong owner auth, TPM unreachable).
 */
int kh_tpm_setup(const struct kh_tpm_conf *conf, uint32_t handle, const char *owner_auth,
                 bool *already, char *msg, size_t msglen);

/* True when the owner hierarchy has an auth value (setup must ask for it).
 * Out: *set. Returns false with err when the TPM cannot be asked. */
bool kh_tpm_owner_auth_set(const struct kh_tpm_conf *conf, bool *set, char *err, size_t errlen);

/*
 * The PKCS#11 key type of a TPM2B_PUBLIC as `tpm2_create -u` writes it.
 * Out: *kt (CKK_EC or CKK_RSA). Returns false if buf is not a TPM2B_PUBLIC
 * of an ECC or RSA key.
 */
bool kh_tpm_pub_keytype(const uint8_t *buf, size_t len, CK_KEY_TYPE *kt);

#endif

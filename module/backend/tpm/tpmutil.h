/*
 * TPM helpers without module state, shared by the tpm backend and the
 * keyhold tool (`keyhold tpm setup`, `keyhold doctor`): the primary's
 * template, what counts as a storage key, response-code bases, PCR
 * selections, and keyhold's configuration keys for the TPM; how a TCTI is
 * opened and a command awaited against a deadline, and the ESYS finishers
 * both run.
 */
#ifndef KH_TPM_TPMUTIL_H
#define KH_TPM_TPMUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <tss2/tss2_common.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tcti.h>
#include <tss2/tss2_tpm2_types.h>

/* Persistent handle of the primary when the configuration names none. */
#define KH_TPM_PRIMARY_DEFAULT 0x81000001u
/* Handle ranges (the tss2 header's TPM2_HR_* macros shift a signed int past
 * its width, which the sanitizer build rejects). */
#define KH_TPM_TRANSIENT_FIRST 0x80000000u
#define KH_TPM_PERSISTENT_FIRST 0x81000000u
#define KH_TPM_PERSISTENT_LAST 0x81FFFFFFu
/* TCTI when the configuration names none: the kernel's resource manager. */
#define KH_TPM_TCTI_DEFAULT "device:/dev/tpmrm0"

/*
 * The SRK template of the TCG "TPM v2.0 Provisioning Guidance" (ECC NIST
 * P-256 storage key: restricted decrypt, fixedTPM, fixedParent,
 * sensitiveDataOrigin, userWithAuth, noDA, AES-128-CFB, SHA-256 name, empty
 * policy, unique = 32 zero bytes for x and y). A primary made from it is a
 * function of the owner seed only: the same key after every reboot.
 * Out: out.
 */
void kh_tpm_srk_template(TPM2B_PUBLIC *out);

/*
 * True when pub describes a storage key that keys can be created and loaded
 * under with an empty password: restricted and decrypt but not sign,
 * fixedTPM, fixedParent, userWithAuth, RSA or ECC with an AES CFB symmetric
 * key. The SRK template passes, and so does tpm2_createprimary's default.
 */
bool kh_tpm_is_storage_key(const TPMT_PUBLIC *pub);

/*
 * The base of a response code: for TPM format-one codes the parameter,
 * handle or session number is cleared (TPM2_RC_BAD_AUTH + RC_S + RC_1 gives
 * TPM2_RC_BAD_AUTH); other codes are returned unchanged (with their layer).
 */
TSS2_RC kh_tpm_rc_base(TSS2_RC rc);

/*
 * Parse a PCR selection as tpm2-tools writes it: "sha256:0,7" or several
 * banks joined by '+' ("sha1:7+sha256:7"). Banks: sha1, sha256, sha384,
 * sha512; PCRs 0..23.
 * Out: sel. Returns false on a syntax error (sel is then zeroed).
 */
bool kh_tpm_pcr_parse(TPML_PCR_SELECTION *sel, const char *s);

/* The parsed value of a handle string ("0x81000001"); false if it is not a
 * persistent handle (0x81000000..0x81FFFFFF). */
bool kh_tpm_parse_persistent(uint32_t *out, const char *s);

/* True when a and b are the same Name (a size out of range never matches). */
bool kh_tpm_name_eq(const TPM2B_NAME *a, const TPM2B_NAME *b);

/* CLOCK_MONOTONIC in milliseconds: what deadlines are measured against. */
double kh_tpm_now_ms(void);

/* ---- awaiting asynchronous ESYS commands ---- */

/* A finisher: calls the Esys_*_Finish of one command with its outputs in arg. */
typedef TSS2_RC kh_tpm_fin(ESYS_CONTEXT *esys, void *arg);

/*
 * Call fin until the command is done (anything but a TRY_AGAIN from below
 * the TPM), for at most timeout_ms: the synchronous ESYS calls would wait
 * for a silent TPM forever.
 * Out: *late (the deadline passed first: ESYS is then out of step with the
 * TPM and the connection is unusable).
 * Returns fin's last result; TSS2_TCTI_RC_IO_ERROR when late.
 */
TSS2_RC kh_tpm_await(ESYS_CONTEXT *esys, bool *late, kh_tpm_fin *fin, void *arg, unsigned timeout_ms);

/* The finishers that the module and the tool both run. arg is: */
typedef struct kh_tpm_cap_out {         /* kh_tpm_fin_cap (data: Esys_Free) */
    TPMI_YES_NO more;
    TPMS_CAPABILITY_DATA *data;
} kh_tpm_cap_out;
typedef struct kh_tpm_readpub_out {     /* kh_tpm_fin_readpub (each: Esys_Free) */
    TPM2B_PUBLIC *pub;
    TPM2B_NAME *name, *qname;
} kh_tpm_readpub_out;
typedef struct kh_tpm_primary_out {     /* kh_tpm_fin_primary (kh_tpm_primary_out_free) */
    ESYS_TR tr;
    TPM2B_PUBLIC *pub;
    TPM2B_CREATION_DATA *cdata;
    TPM2B_DIGEST *chash;
    TPMT_TK_CREATION *ticket;
} kh_tpm_primary_out;
TSS2_RC kh_tpm_fin_cap(ESYS_CONTEXT *esys, void *arg);         /* TPM2_GetCapability */
TSS2_RC kh_tpm_fin_from_public(ESYS_CONTEXT *esys, void *arg); /* Esys_TR_FromTPMPublic; arg: ESYS_TR * */
TSS2_RC kh_tpm_fin_readpub(ESYS_CONTEXT *esys, void *arg);     /* TPM2_ReadPublic */
TSS2_RC kh_tpm_fin_primary(ESYS_CONTEXT *esys, void *arg);     /* TPM2_CreatePrimary */
TSS2_RC kh_tpm_fin_flush(ESYS_CONTEXT *esys, void *arg);       /* TPM2_FlushContext; arg: unused */
/* Free the outputs of TPM2_CreatePrimary but the handle (o->tr). */
void kh_tpm_primary_out_free(kh_tpm_primary_out *o);

/* ---- TCTIs (tcti.c) ---- */

/*
 * Open the TCTI that conf names: keyhold's swtpm TCTI below (with
 * io_timeout_ms) for "swtpm..." configurations, the TCTI loader's for any
 * other. Out: *out (kh_tpm_tcti_close; NULL on failure).
 */
TSS2_RC kh_tpm_tcti_open(TSS2_TCTI_CONTEXT **out, const char *conf, unsigned io_timeout_ms);
/* Finalize and free a TCTI from kh_tpm_tcti_open (NULL: nothing). */
void kh_tpm_tcti_close(TSS2_TCTI_CONTEXT *ctx);

/* ---- a swtpm TCTI with deadlines ---- */

/* True when conf names swtpm ("swtpm", "swtpm:path=...", "swtpm:host=..,port=.."). */
bool kh_tcti_is_swtpm(const char *conf);
/*
 * A TCTI for swtpm whose every connect, send and receive waits at most
 * io_timeout_ms (receive also honours the caller's shorter timeout and
 * returns TSS2_TCTI_RC_TRY_AGAIN), unlike tpm2-tss 3.2's swtpm TCTI, which
 * blocks on a silent swtpm. Out: *out (kh_tcti_swtpm_free).
 * TSS2_TCTI_RC_BAD_VALUE for a malformed conf, TSS2_TCTI_RC_MEMORY.
 */
TSS2_RC kh_tcti_swtpm_new(TSS2_TCTI_CONTEXT **out, const char *conf, unsigned io_timeout_ms);
void kh_tcti_swtpm_free(TSS2_TCTI_CONTEXT *ctx);

#endif

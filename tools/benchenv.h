/*
 * benchenv.h - the private world keyhold-bench gives each module it measures:
 * a temporary directory, the module's configuration in the environment
 * (KEYHOLD_STORE, SOFTHSM2_CONF, TPM2_PKCS11_STORE/TCTI) and, for
 * tpm2-pkcs11, a swtpm on a free port with its store initialised by
 * `tpm2_ptool init`. The token itself is then made through PKCS#11
 * (C_InitToken on the free slot), the same way for every module.
 *
 * Each module reads its own variables, so several can be set up in one
 * process at once.
 */
#ifndef KH_TOOLS_BENCHENV_H
#define KH_TOOLS_BENCHENV_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

enum bench_env_kind {
    BENCH_ENV_KEYHOLD,
    BENCH_ENV_SOFTHSM,
    BENCH_ENV_TPM2_PKCS11,
    BENCH_ENV_OTHER,        /* any other module: used as configured by the caller */
};

struct bench_env {
    enum bench_env_kind kind;
    char name[64];          /* "keyhold", "softhsm2", "tpm2-pkcs11", or the file name */
    char module[4096];      /* path to dlopen */
    char dir[4096];         /* temporary directory ("" when none) */
    pid_t swtpm;            /* 0 when none */
    int swtpm_port;
    char tcti[256];         /* tpm2-pkcs11: use this TPM (e.g. the one keyhold's TPM backend
                               uses) instead of starting a swtpm; "" = start one */
};

/* Where Debian puts the two modules keyhold-bench compares with. */
#define BENCH_SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define BENCH_TPM2_PKCS11_MODULE "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so"

/*
 * Chooses the module for a --vs argument: "softhsm"/"softhsm2" and
 * "tpm2-pkcs11"/"tpm2" name Debian's modules; anything else is a path (its
 * kind is then told from its file name).
 */
void bench_env_resolve(struct bench_env *e, const char *spec);

/*
 * Sets up e (resolved, or kind BENCH_ENV_KEYHOLD with module set): makes the
 * temporary directory and the module's configuration, starts swtpm for
 * tpm2-pkcs11 (unless e->tcti names a TPM to use). With own_store false (benching an existing keyhold token)
 * keyhold keeps the store it is configured with.
 *
 * Returns: true on success; false with a reason in err (cleanup still needed).
 */
bool bench_env_setup(struct bench_env *e, bool own_store, char *err, size_t errlen);

/* Stops swtpm (by its pid) and removes the temporary directory. Safe twice. */
void bench_env_cleanup(struct bench_env *e);

/* Removes a directory tree; quiet when it does not exist. */
void bench_rmtree(const char *dir);

#endif

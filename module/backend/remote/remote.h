/*
 * The remote backend's internals shared by its units: configuration
 * (remote_* keys), the built-in signer driver (signer.c) and the backend
 * proper (remote.c: driver table, plugins, normalisation, verification, the
 * one translator from remote errors to CK_RV).
 */
#ifndef KH_REMOTE_H
#define KH_REMOTE_H

#include <stdbool.h>

#include "keyhold-driver.h"

#define KH_REMOTE_PLUGINS_MAX 8
#define KH_REMOTE_PATH_MAX 4096
/* Longest CKA_KH_REMOTE_REF accepted. */
#define KH_REMOTE_REF_MAX 1024

typedef struct kh_remote_config {
    unsigned timeout_ms;               /* remote_timeout_ms: deadline of one remote call (5000) */
    unsigned pool_max;                 /* remote_pool_size: idle connections kept per URL (4) */
    char tls_ca[KH_REMOTE_PATH_MAX];   /* remote_tls_ca: CA file for tls:// signers ("": system store) */
    char tls_cert[KH_REMOTE_PATH_MAX]; /* remote_tls_cert: client certificate ("": none) */
    char tls_key[KH_REMOTE_PATH_MAX];  /* remote_tls_key: its private key ("": in tls_cert) */
    struct {
        char name[64];
        char path[KH_REMOTE_PATH_MAX];
    } plugins[KH_REMOTE_PLUGINS_MAX];  /* remote_plugin_<name> = path */
    unsigned nplugins;
} kh_remote_config;

void kh_remote_config_defaults(kh_remote_config *rc);
/*
 * Apply one remote_* key of the configuration file (an unknown one is
 * logged and ignored).
 * Returns: true, or false with *why set (a bad value).
 */
bool kh_remote_config_set(kh_remote_config *rc, const char *key, const char *val,
                          const char **why);

/* The built-in driver: the keyhold signer protocol (signer.c). */
extern const kh_driver_v1 kh_driver_signer;
/* In a forked child: forget the parent's pooled connections without using them. */
void kh_signer_forked(void *state);

#endif

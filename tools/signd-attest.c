/*
 * signd-attest.c - keyhold-signd's attestation.
 *
 * Without a TPM configured the server never opens this (the method answers
 * "unavailable"). TPM quotes are not implemented yet: configuring a TPM
 * fails at start with a clear message rather than pretending.
 */
#include "signd.h"

#include <stdio.h>

struct kh_signd_attest {
    int unused;
};

bool kh_signd_attest_open(struct kh_signd_attest **at, const char *tcti, const char *pcrs,
                          char *err, size_t errlen)
{
    (void)tcti;
    (void)pcrs;
    *at = NULL;
    snprintf(err, errlen, "TPM attestation is not implemented in this version");
    return false;
}

void kh_signd_attest_close(struct kh_signd_attest *at)
{
    (void)at;
}

bool kh_signd_attest_quote(struct kh_signd_attest *at, const struct kh_signd_key *key,
                           const uint8_t *nonce, size_t nonce_len, char **doc,
                           char *err, size_t errlen)
{
    (void)at;
    (void)key;
    (void)nonce;
    (void)nonce_len;
    *doc = NULL;
    snprintf(err, errlen, "TPM attestation is not implemented in this version");
    return false;
}

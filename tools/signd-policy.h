/*
 * signd-policy.h - keyhold-signd's configuration file and per-key policy:
 * which keys are served, which methods each key may be used with, which
 * chains, recipients and call selectors its transactions may have, the
 * largest value it may send, and a request rate (token bucket).
 *
 * The file is one JSON object (README, "keyhold-signd"); unknown members are
 * refused so that a typo cannot silently widen a policy.
 */
#ifndef KH_SIGND_POLICY_H
#define KH_SIGND_POLICY_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "signd-eth.h"

/* Methods a key can be used with (bits of kh_signd_key_policy.methods). */
enum kh_signd_method_bit {
    KH_SIGND_M_ADDRESS = 1u << 0,
    KH_SIGND_M_SIGN_MESSAGE_DEFUNCT = 1u << 1,
    KH_SIGND_M_SIGN_TRANSACTION = 1u << 2,
    KH_SIGND_M_ATTESTATION = 1u << 3,
    KH_SIGND_M_PUBLIC_KEY = 1u << 4,
    KH_SIGND_M_SIGN = 1u << 5,
    KH_SIGND_M_ALL = (1u << 6) - 1,
};

/* Returns: the bit of a per-key method name, or 0 for another name. */
uint32_t kh_signd_method_bit(const char *name);

/* The "sign" method's algorithms (README: "The signer protocol"). */
enum kh_signd_alg {
    KH_SIGND_ALG_ECDSA,
    KH_SIGND_ALG_ECDSA_RECOVERABLE,
    KH_SIGND_ALG_BIP340,
    KH_SIGND_ALG_EDDSA,
    KH_SIGND_ALG_RSA_PKCS1,
    KH_SIGND_ALG_RSA_PSS,
    KH_SIGND_ALG_COUNT,
};

#define KH_SIGND_ALG_ALL ((1u << KH_SIGND_ALG_COUNT) - 1)

/* Returns: true and the algorithm of a name ("ecdsa", ...); false for another name. */
bool kh_signd_alg_parse(enum kh_signd_alg *alg, const char *name);

/* Returns: the protocol name of an algorithm. */
const char *kh_signd_alg_name(enum kh_signd_alg alg);

/* A token bucket: up to burst requests at once, refilled at rate per second.
 * rate 0 means unlimited. Thread-safe. */
struct kh_bucket {
    pthread_mutex_t lock;
    double rate;
    double burst;
    double tokens;
    uint64_t last_ms;
};

/* Starts a full bucket. */
void kh_bucket_init(struct kh_bucket *b, double rate, double burst, uint64_t now_ms);

/* Frees the bucket's lock. */
void kh_bucket_destroy(struct kh_bucket *b);

/* Takes one token at time now_ms. Returns: false when the bucket is empty. */
bool kh_bucket_take(struct kh_bucket *b, uint64_t now_ms);

/* The policy of one key (by CKA_LABEL). A NULL/0 list means "any". */
struct kh_signd_key_policy {
    char *label;
    uint32_t methods;              /* KH_SIGND_M_* */
    uint32_t algorithms;           /* 1 << KH_SIGND_ALG_*, for "sign" */
    kh_u256 *chain_ids;
    size_t nchain_ids;
    bool has_chain_ids;
    uint8_t (*to)[KH_ETH_ADDR_LEN];
    size_t nto;
    bool has_to;                   /* then contract creations are refused too */
    uint8_t (*selectors)[4];
    size_t nselectors;
    bool has_selectors;
    bool allow_empty_data;         /* with selectors: a plain transfer (no data) is fine */
    bool has_max_value;
    kh_u256 max_value;
    double rate;                   /* requests per second; 0: unlimited */
    double burst;
};

/* Defaults of the limits (the command line and the file override them). */
#define KH_SIGND_DEF_MAX_CONN 64
#define KH_SIGND_DEF_IDLE_MS 60000
#define KH_SIGND_DEF_IO_MS 10000

/* The whole configuration. */
struct kh_signd_config {
    char *default_key;             /* label; NULL: the only secp256k1 key */
    bool has_keys;                 /* a "keys" member: only those keys are served */
    struct kh_signd_key_policy *keys;
    size_t nkeys;
    unsigned max_connections;
    unsigned idle_timeout_ms;
    unsigned io_timeout_ms;        /* to finish reading a started frame / to send a reply */
    size_t max_frame;              /* <= KH_WIRE_FRAME_MAX */
    char *tpm_tcti;                /* attestation: TCTI configuration; NULL: no TPM */
    char *tpm_pcrs;                /* attestation: PCR selection, e.g. "sha256:0,1,7" */
    bool skip_verify;              /* "verify_signatures": false: signatures leave unchecked
                                      (recoverable ones are always checked); zero = checked */
};

/* Sets the defaults: no keys section, every limit at its default. */
void kh_signd_config_init(struct kh_signd_config *c, size_t frame_max);

/*
 * Reads a configuration from JSON text (len bytes).
 * Out: c: filled in over the defaults (kh_signd_config_init first).
 * Returns: true; false with a reason in err (c then keeps what was read so
 *          far; free it with kh_signd_config_clear).
 */
bool kh_signd_config_parse(struct kh_signd_config *c, const char *json, size_t len,
                           char *err, size_t errlen);

/* Reads the file at path (at most 1 MiB) with kh_signd_config_parse. */
bool kh_signd_config_load(struct kh_signd_config *c, const char *path, char *err, size_t errlen);

/* Frees everything; safe on an initialised config. */
void kh_signd_config_clear(struct kh_signd_config *c);

/* Returns: the policy of the key labelled label, or NULL. */
const struct kh_signd_key_policy *kh_signd_config_key(const struct kh_signd_config *c,
                                                      const char *label);

/* Fills p with the policy of a key the file does not restrict: every method, no limits. */
void kh_signd_policy_open(struct kh_signd_key_policy *p);

/*
 * Checks a transaction against a key's policy.
 * Returns: true when allowed; false with the reason (no payload) in why.
 */
bool kh_signd_policy_check_tx(const struct kh_signd_key_policy *p, const struct kh_eth_tx *tx,
                              char *why, size_t whylen);

#endif

/*
 * keyhold-driver.h - remote signing drivers for keyhold's remote backend.
 *
 * A driver is one const ops table. The built-in "signer" driver (the
 * keyhold signer protocol) is one; third-party drivers are shared objects
 * that export the table under the symbol KH_DRIVER_SYMBOL and are named in
 * the module's configuration:
 *
 *     remote_plugin_<name> = /path/to/driver.so
 *
 * A remote key whose CKA_KH_REMOTE_REF is "<name>:<rest>" is then served by
 * that driver, which receives "<rest>" as the key's reference.
 *
 * The module does everything around the driver: deadlines are computed by
 * the module (the driver must return by them), DER signatures are converted
 * to r||s, secp256k1 signatures are normalised to low S, and every signature
 * is verified against the public key stored at registration before it is
 * returned. A driver therefore never has to be trusted for correctness,
 * only for availability.
 *
 * Threads: the module may call public_key and sign from many threads at
 * once, for the same or different keys. init and fini are called once, with
 * no other call running.
 */
#ifndef KEYHOLD_DRIVER_H
#define KEYHOLD_DRIVER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI this header describes; the module refuses a table with another. */
#define KH_DRIVER_ABI_VERSION 1u
/* The symbol a plugin exports: const kh_driver_v1 keyhold_remote_driver_v1. */
#define KH_DRIVER_SYMBOL "keyhold_remote_driver_v1"

/*
 * Results. 0 is success. Positive values and -32700..-32600 are the signer
 * protocol's error codes (a driver for another service maps its errors onto
 * them); values <= -1000 are local failures.
 */
enum kh_driver_status {
    KH_DRV_OK = 0,
    KH_DRV_UNKNOWN_KEY = 1,      /* no such key */
    KH_DRV_DENIED = 2,           /* the remote policy refuses */
    KH_DRV_RATE_LIMITED = 3,
    KH_DRV_UNSUPPORTED = 4,      /* algorithm does not fit the key / not offered */
    KH_DRV_UNAVAILABLE = 5,      /* the service cannot serve now */
    KH_DRV_INTERNAL = 6,
    KH_DRV_PARSE_ERROR = -32700,
    KH_DRV_INVALID_REQUEST = -32600,
    KH_DRV_METHOD_NOT_FOUND = -32601,
    KH_DRV_INVALID_PARAMS = -32602,
    KH_DRV_E_REF = -1000,        /* the reference is malformed (caller's input) */
    KH_DRV_E_CONNECT = -1001,    /* the service is unreachable, or the connection was lost */
    KH_DRV_E_TIMEOUT = -1002,    /* the deadline passed */
    KH_DRV_E_PROTO = -1003,      /* the answer is malformed */
    KH_DRV_E_TOOBIG = -1004,     /* the request does not fit the transport */
    KH_DRV_E_NOMEM = -1005,
    KH_DRV_E_TLS = -1006,        /* TLS handshake or certificate verification failed */
};

enum kh_driver_key_type {
    KH_DRV_KEY_SECP256K1 = 1,
    KH_DRV_KEY_P256 = 2,
    KH_DRV_KEY_P384 = 3,
    KH_DRV_KEY_ED25519 = 4,
    KH_DRV_KEY_RSA = 5,
};

/* The raw signature operations (the signer protocol's "algorithm" names). */
enum kh_driver_alg {
    KH_DRV_ALG_ECDSA = 1,             /* data: digest */
    KH_DRV_ALG_ECDSA_RECOVERABLE = 2, /* data: 32-byte digest; out r||s||v */
    KH_DRV_ALG_BIP340 = 3,            /* data: 32-byte message; aux: NULL or 32 bytes */
    KH_DRV_ALG_EDDSA = 4,             /* data: message */
    KH_DRV_ALG_RSA_PKCS1 = 5,         /* data: bytes to pad (DigestInfo), <= k-11 */
    KH_DRV_ALG_RSA_PSS = 6,           /* data: digest; pss_* set */
};

enum kh_driver_hash {
    KH_DRV_HASH_SHA1 = 1,
    KH_DRV_HASH_SHA224 = 2,
    KH_DRV_HASH_SHA256 = 3,
    KH_DRV_HASH_SHA384 = 4,
    KH_DRV_HASH_SHA512 = 5,
};

/* A public key. EC: uncompressed point 04||X||Y; Ed25519: 32 bytes; RSA: n, e big-endian. */
typedef struct kh_driver_pubkey {
    uint32_t type;               /* kh_driver_key_type */
    uint8_t point[97];
    size_t point_len;
    uint8_t n[512];
    size_t n_len;
    uint8_t e[8];
    size_t e_len;
} kh_driver_pubkey;

typedef struct kh_driver_sign_req {
    uint32_t algorithm;          /* kh_driver_alg */
    const uint8_t *data;
    size_t data_len;
    const uint8_t *aux;          /* BIP-340 only: NULL or 32 bytes */
    size_t aux_len;
    uint32_t pss_hash;           /* RSA-PSS only: kh_driver_hash */
    uint32_t pss_mgf_hash;
    size_t pss_salt_len;
} kh_driver_sign_req;

/* Largest signature a driver may return (RSA-4096; DER ECDSA is shorter). */
#define KH_DRIVER_SIG_MAX 512u

enum kh_driver_sig_format {
    KH_DRV_SIG_RAW = 0,          /* the protocol's signature form (r||s, 64-byte, k bytes) */
    KH_DRV_SIG_DER = 1,          /* ECDSA only: a DER ECDSA-Sig-Value */
};

typedef struct kh_driver_v1 {
    uint32_t abi_version;        /* KH_DRIVER_ABI_VERSION */
    uint32_t struct_size;        /* sizeof(kh_driver_v1) as the driver was built */
    const char *name;            /* for logs */

    /*
     * Optional. Called once before any other call. name: the configured
     * name ("remote_plugin_<name>"). Out: *state, passed to every call.
     * Returns: KH_DRV_OK, or a status (the driver is then not used).
     */
    int (*init)(void **state, const char *name);
    /* Optional. C_Finalize: release everything (state was init's). */
    void (*fini)(void *state);

    /*
     * Fetch the public key of the key named by ref. Must return by
     * deadline_ms (CLOCK_MONOTONIC, milliseconds).
     * Out: pub; msg: a reason on failure (NUL-terminated, no secrets).
     */
    int (*public_key)(void *state, kh_driver_pubkey *pub, char *msg, size_t msglen,
                      const char *ref, uint64_t deadline_ms);

    /*
     * Sign. Out: sig (KH_DRIVER_SIG_MAX bytes available), *sig_len,
     * *format (kh_driver_sig_format); msg as above.
     */
    int (*sign)(void *state, uint8_t *sig, size_t *sig_len, int *format, char *msg,
                size_t msglen, const char *ref, const kh_driver_sign_req *req,
                uint64_t deadline_ms);

    /*
     * Optional, not called by this version of the module (key generation on
     * the remote backend answers CKR_FUNCTION_NOT_SUPPORTED, and PKCS#11 has
     * no attestation call). Kept in the table so drivers can offer them.
     */
    int (*generate)(void *state, char *ref_out, size_t ref_len, kh_driver_pubkey *pub,
                    char *msg, size_t msglen, uint32_t type, unsigned rsa_bits,
                    uint64_t deadline_ms);
    int (*attestation)(void *state, uint8_t **doc, size_t *doc_len, char *msg,
                       size_t msglen, const char *ref, const uint8_t *nonce,
                       size_t nonce_len, uint64_t deadline_ms);
} kh_driver_v1;

#ifdef __cplusplus
}
#endif

#endif /* KEYHOLD_DRIVER_H */

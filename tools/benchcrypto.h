/*
 * benchcrypto.h - the signatures keyhold-bench measures, the "floor" (the
 * same signatures made straight with libsecp256k1 and OpenSSL in the bench's
 * own process, keys already loaded: the ceiling a module can approach), and
 * independent verification of a module's signatures.
 *
 * Nothing here talks to a PKCS#11 module.
 */
#ifndef KH_TOOLS_BENCHCRYPTO_H
#define KH_TOOLS_BENCHCRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "encode.h"
#include "pkcs11.h"

/* One signing figure: a mechanism on a key class. */
enum bench_sig {
    BENCH_SIG_K1_ECDSA,    /* secp256k1, CKM_ECDSA on a 32-byte digest */
    BENCH_SIG_BIP340,      /* secp256k1, CKM_KH_BIP340_SCHNORR on a 32-byte message */
    BENCH_SIG_P256_ECDSA,  /* P-256, CKM_ECDSA on a 32-byte digest */
    BENCH_SIG_ED25519,     /* Ed25519, CKM_EDDSA on a 32-byte message */
    BENCH_SIG_P384_ECDSA,  /* P-384, CKM_ECDSA on a 48-byte digest */
    BENCH_SIG_RSA2048,     /* RSA-2048, CKM_RSA_PKCS on a SHA-256 DigestInfo */
    BENCH_SIG_COUNT
};

struct bench_sig_info {
    const char *name;            /* "secp256k1-ecdsa", ... (command line and JSON) */
    const char *title;           /* "secp256k1 ECDSA" (tables) */
    enum kh_keykind kind;
    CK_MECHANISM_TYPE mech;
    size_t data_len;             /* what the bench passes to C_Sign */
    size_t sig_len;              /* what comes back */
    bool target;                 /* one of the four with a 0.90 x floor target */
};

/* Returns: the description of sig (never NULL for a valid value). */
const struct bench_sig_info *bench_sig_get(enum bench_sig sig);

/* Returns: the figure named name, or BENCH_SIG_COUNT. */
enum bench_sig bench_sig_by_name(const char *name);

/* Fills buf with len bytes from getrandom(2). Returns: true on success. */
bool bench_random(uint8_t *buf, size_t len);

/*
 * Fills data (info->data_len bytes) with what the bench signs: random bytes,
 * except for RSA, where it is the DER DigestInfo of SHA-256 over random bytes
 * (what CKM_RSA_PKCS callers pass).
 *
 * Returns: true on success.
 */
bool bench_sig_data(enum bench_sig sig, uint8_t *data);

/* ---- the floor ---------------------------------------------------------- */

/* A ready signer with its key loaded (one per thread). */
struct bench_floor;

/* How the floor of a figure may be computed; the bench runs each and keeps
 * the fastest. */
struct bench_floor_variant {
    enum bench_sig sig;
    const char *name;            /* "libsecp256k1", "EVP_PKEY_sign", "ECDSA_do_sign", ... */
};

/*
 * Lists the floor variants of sig.
 *
 * Out: *v: a static array; returns its length (at least 1).
 */
size_t bench_floor_variants(enum bench_sig sig, const struct bench_floor_variant **v);

/*
 * Makes a new key for variant v and everything signing needs (contexts,
 * precomputed keypair) ready, as the best in-process implementation would
 * keep it.
 *
 * Returns: true on success; false with a reason in err.
 */
bool bench_floor_new(struct bench_floor **out, const struct bench_floor_variant *v,
                     char *err, size_t errlen);

/*
 * Signs data (the figure's data_len bytes) into sig in PKCS#11 form (r||s,
 * 64-byte Schnorr/EdDSA, RSA signature). *siglen in: room, out: length.
 *
 * Returns: true on success.
 */
bool bench_floor_sign(struct bench_floor *f, uint8_t *sig, size_t *siglen,
                      const uint8_t *data, size_t data_len);

/* Returns: the public key of the floor's key (for checking its signatures). */
const struct kh_pubkey *bench_floor_pub(const struct bench_floor *f);

void bench_floor_free(struct bench_floor *f);

/*
 * Makes a random P-256 key pair (for importing filler keys into a module).
 *
 * Out: scalar (big-endian), point (uncompressed 04||X||Y).
 * Returns: true on success.
 */
bool bench_p256_keypair(uint8_t scalar[32], uint8_t point[65]);

/* ---- verification ------------------------------------------------------- */

/*
 * Verifies a signature made for figure sig, independently of any module:
 * OpenSSL for ECDSA (any curve, r||s), EdDSA and RSA PKCS#1 v1.5;
 * libsecp256k1 for BIP-340 Schnorr.
 *
 * Returns: true when the signature is valid for pub over data; false with a
 *          reason in err otherwise.
 */
bool bench_verify(enum bench_sig sig, const struct kh_pubkey *pub, const uint8_t *data,
                  size_t data_len, const uint8_t *s, size_t slen, char *err, size_t errlen);

#endif

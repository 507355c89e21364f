/*
 * keyhold crypto primitives: key generation, signing and verification on raw
 * key material, with libsecp256k1 (secp256k1), OpenSSL 3 (P-256, P-384,
 * Ed25519, RSA) and libsodium (Ed25519 verification). No PKCS#11 object logic lives here: the vault backend uses it
 * to sign, and the module uses kh_crypto_verify() for C_Verify on any key.
 *
 * Thread safety: every function may be called from any thread at once; the
 * secp256k1 context is created and randomised once (kh_crypto_init) and then
 * shared read-only. A kh_softkey is used by one thread at a time or shared
 * read-only (sign does not mutate it).
 *
 * Secrets: secret buffers handed out are malloc'd and must be released with
 * kh_crypto_secret_free() (wipes). Every path wipes temporaries.
 */
#ifndef KH_MODULE_CRYPTO_H
#define KH_MODULE_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"
#include "keyhold.h"

typedef enum kh_alg {
    KH_ALG_NONE = 0,
    KH_ALG_SECP256K1,
    KH_ALG_P256,
    KH_ALG_P384,
    KH_ALG_ED25519,
    KH_ALG_RSA,
} kh_alg;

/* Signature operations. The module hashes (if the mechanism says so) before
 * calling; data is then the digest. */
typedef enum kh_sigop {
    KH_OP_ECDSA = 1,        /* data: digest (any length; truncated/padded per FIPS 186 for the curve). secp256k1 output is low-S. out: r||s */
    KH_OP_ECDSA_RECOVER,    /* secp256k1 only; data: 32-byte digest. out: r||s||v, v in {0,1}, low-S */
    KH_OP_BIP340,           /* secp256k1 only; data: 32-byte message; aux optional 32 bytes. out: 64 bytes */
    KH_OP_EDDSA,            /* Ed25519 pure; data: message. out: 64 bytes */
    KH_OP_RSA_PKCS,         /* data: already-encoded DigestInfo (or raw data for CKM_RSA_PKCS), <= k-11 bytes; PKCS#1 v1.5 type 1 padding */
    KH_OP_RSA_PSS,          /* data: digest of hash; params: hash, mgf hash, salt length */
} kh_sigop;

typedef enum kh_hash {
    KH_HASH_NONE = 0,
    KH_HASH_SHA1,
    KH_HASH_SHA224,
    KH_HASH_SHA256,
    KH_HASH_SHA384,
    KH_HASH_SHA512,
} kh_hash;

typedef struct kh_sigparams {
    kh_hash pss_hash;        /* KH_OP_RSA_PSS */
    kh_hash pss_mgf_hash;
    size_t pss_salt_len;
    const uint8_t *aux;      /* KH_OP_BIP340: NULL or 32 bytes */
} kh_sigparams;

#define KH_RSA_MAX_BYTES 512  /* 4096 bits */
#define KH_EC_POINT_MAX 97    /* 0x04 || X || Y for P-384 */

/* A public key. EC: uncompressed point 0x04||X||Y. Ed25519: 32 bytes. RSA: n and e big-endian. */
typedef struct kh_pubkey {
    kh_alg alg;
    uint8_t point[KH_EC_POINT_MAX];
    size_t point_len;
    uint8_t n[KH_RSA_MAX_BYTES];
    size_t n_len;
    uint8_t e[8];
    size_t e_len;
} kh_pubkey;

typedef struct kh_softkey kh_softkey;

CK_RV kh_crypto_init(void);
/* Module unload: free the shared contexts (kh_crypto_init will not run again). */
void kh_crypto_cleanup(void);  /* idempotent, thread-safe (pthread_once) */

/*
 * Signature length in bytes for op with this key: 2 * field size for ECDSA
 * (64 for secp256k1/P-256, 96 for P-384), 65 for ECDSA_RECOVER, 64 for BIP-340
 * and EdDSA, modulus bytes for RSA. 0 if op does not fit the key's alg.
 */
size_t kh_crypto_sig_len(const kh_pubkey *pub, kh_sigop op);
/* The same for a loaded private key. */
size_t kh_softkey_sig_len(const kh_softkey *key, kh_sigop op);

/*
 * Generate a key. rsa_bits: 2048..4096, multiple of 8 (CKR_KEY_SIZE_RANGE otherwise);
 * ignored for other algs; e = 65537. EC/Ed25519 secrets come from kh_random,
 * RSA from OpenSSL's DRBG.
 * Out: pub; *secret (secp256k1/P-256/P-384: big-endian scalar of field size;
 * Ed25519: 32-byte seed; RSA: PKCS#1 RSAPrivateKey DER), free with kh_crypto_secret_free.
 */
CK_RV kh_crypto_generate(kh_pubkey *pub, uint8_t **secret, size_t *secret_len,
                         kh_alg alg, unsigned rsa_bits);
/*
 * kh_crypto_generate with extra random bytes (mix, mix_len; from a hardware
 * RNG) mixed into the OS RNG's output: EC and Ed25519 secrets are the OS
 * bytes XOR SHA-512(mix || draw counter) (uniform if either source is);
 * for RSA, mix is additional input to a reseed of OpenSSL's DRBG.
 */
CK_RV kh_crypto_generate_mixed(kh_pubkey *pub, uint8_t **secret, size_t *secret_len,
                               kh_alg alg, unsigned rsa_bits, const uint8_t *mix, size_t mix_len);
/* buf ^= SHA-512(mix || counter as 4 bytes big-endian)[0..len); len <= 64. */
CK_RV kh_rng_mix(uint8_t *buf, size_t len, const uint8_t *mix, size_t mix_len, uint32_t counter);
/*
 * Validate a private key and derive its public key. secret in the same
 * encoding as kh_crypto_generate produces. EC scalars shorter than the field
 * size are left-padded (longer ones only if the excess bytes are zero).
 * CKR_ATTRIBUTE_VALUE_INVALID for out-of-range scalars, malformed DER or an
 * inconsistent RSA key; CKR_KEY_SIZE_RANGE for RSA outside 2048..4096 bits.
 * Out: pub, *norm (normalised secret; kh_crypto_secret_free). norm and
 * norm_len may be NULL when only the check and the public key are wanted.
 */
CK_RV kh_crypto_import(kh_pubkey *pub, uint8_t **norm, size_t *norm_len,
                       kh_alg alg, const uint8_t *secret, size_t secret_len);
/* Build an RSA PKCS#1 RSAPrivateKey DER from components (CKA_MODULUS, CKA_PUBLIC_EXPONENT,
 * CKA_PRIVATE_EXPONENT, CKA_PRIME_1/2, CKA_EXPONENT_1/2, CKA_COEFFICIENT; all required).
 * The key is checked for consistency (CKR_ATTRIBUTE_VALUE_INVALID, CKR_KEY_SIZE_RANGE). */
CK_RV kh_crypto_rsa_from_components(uint8_t **der, size_t *der_len,
                                    const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len,
                                    const uint8_t *d, size_t d_len, const uint8_t *p, size_t p_len,
                                    const uint8_t *q, size_t q_len, const uint8_t *dp, size_t dp_len,
                                    const uint8_t *dq, size_t dq_len, const uint8_t *qi, size_t qi_len);
void kh_crypto_secret_free(uint8_t *secret, size_t len);

/* Decode a secret once for repeated signing (the key cache holds these). */
CK_RV kh_softkey_load(kh_softkey **out, kh_alg alg, const uint8_t *secret, size_t len);
void kh_softkey_free(kh_softkey *key);  /* wipes */
/*
 * Sign. sig/siglen follow the PKCS#11 convention only in that *siglen is the
 * buffer size in and the written length out; callers size the buffer with
 * kh_crypto_sig_len first (CKR_BUFFER_TOO_SMALL otherwise, with *siglen set
 * to the length needed). sig NULL: *siglen = length needed, CKR_OK.
 * CKR_DATA_LEN_RANGE for a wrong input length (e.g. BIP-340 message != 32,
 * empty ECDSA digest, PKCS#1 data > k-11, PSS data != hash length),
 * CKR_MECHANISM_PARAM_INVALID for bad PSS parameters (hash NONE, salt too long),
 * CKR_KEY_TYPE_INCONSISTENT if op does not fit the key's alg.
 * On failure sig is cleared.
 */
CK_RV kh_softkey_sign(const kh_softkey *key, kh_sigop op, const kh_sigparams *params,
                      const uint8_t *data, size_t data_len, uint8_t *sig, size_t *siglen);

/* Parse a public key into an OpenSSL-free form and verify. CKR_OK, CKR_SIGNATURE_INVALID,
 * CKR_SIGNATURE_LEN_RANGE. For KH_OP_ECDSA on secp256k1, high-S signatures are accepted
 * (verification follows SEC1, as Wycheproof expects); KH_OP_ECDSA_RECOVER accepts
 * only low-S with a v (0..3) that recovers exactly pub.
 * Also: CKR_DATA_LEN_RANGE / CKR_MECHANISM_PARAM_INVALID as for signing,
 * CKR_KEY_TYPE_INCONSISTENT if op does not fit pub->alg, CKR_PUBLIC_KEY_INVALID
 * for a malformed key or a point not on the curve, CKR_KEY_SIZE_RANGE for RSA
 * outside 2048..4096 bits. */
CK_RV kh_crypto_verify(const kh_pubkey *pub, kh_sigop op, const kh_sigparams *params,
                       const uint8_t *data, size_t data_len, const uint8_t *sig, size_t sig_len);
/*
 * A public key parsed once for repeated verification: the libsecp256k1 point
 * or OpenSSL EC_KEY / RSA that kh_crypto_verify would build from a kh_pubkey
 * on every call (Ed25519: the 32 bytes), built a single time (the remote
 * backend checks every remote signature with one, cached per key).
 * Immutable once made: any number of threads may verify with one at once.
 */
typedef struct kh_verifier kh_verifier;

/*
 * Parses pub for kh_verifier_verify.
 * Out: *out (kh_verifier_free).
 * Returns: CKR_OK; CKR_PUBLIC_KEY_INVALID for a malformed key or a point not
 *          on its curve; CKR_KEY_SIZE_RANGE for RSA outside 2048..4096 bits;
 *          CKR_KEY_TYPE_INCONSISTENT for an unknown alg; CKR_HOST_MEMORY.
 */
CK_RV kh_verifier_new(kh_verifier **out, const kh_pubkey *pub);
/* Frees a verifier (NULL is fine). */
void kh_verifier_free(kh_verifier *v);
/*
 * Exactly kh_crypto_verify(pub, ...) for the pub v was made from, with the
 * same results, without decoding the key again.
 */
CK_RV kh_verifier_verify(const kh_verifier *v, kh_sigop op, const kh_sigparams *params,
                         const uint8_t *data, size_t data_len, const uint8_t *sig, size_t sig_len);

/* Validate a public key (for C_CreateObject of a public key): EC point on its curve
 * (uncompressed, right length), Ed25519 32 bytes, RSA 2048..4096 bits with odd e >= 3.
 * CKR_OK, CKR_ATTRIBUTE_VALUE_INVALID, CKR_KEY_SIZE_RANGE. */
CK_RV kh_pubkey_check(const kh_pubkey *pub);
/* secp256k1 public key from a BIP-340 x-only key (lifted to the point with even Y).
 * CKR_ATTRIBUTE_VALUE_INVALID if x is not the X coordinate of a curve point. */
CK_RV kh_pubkey_from_xonly(kh_pubkey *out, const uint8_t x[32]);

/* Hash helpers. kh_hash_len: 0 for NONE. One-shot and streaming (EVP_MD_CTX wrapped).
 * CKR_MECHANISM_INVALID for KH_HASH_NONE or an unknown hash. */
size_t kh_hash_len(kh_hash h);
CK_RV kh_hash_oneshot(uint8_t *out, kh_hash h, const uint8_t *data, size_t len);
typedef struct kh_hash_ctx kh_hash_ctx;
CK_RV kh_hash_new(kh_hash_ctx **out, kh_hash h);
CK_RV kh_hash_update(kh_hash_ctx *ctx, const uint8_t *data, size_t len);
CK_RV kh_hash_final(kh_hash_ctx *ctx, uint8_t *out);  /* then still needs kh_hash_free */
void kh_hash_free(kh_hash_ctx *ctx);
/* DER DigestInfo prefix for PKCS#1 v1.5 (CKM_SHAxxx_RSA_PKCS). Out: *len. */
const uint8_t *kh_hash_digestinfo_prefix(kh_hash h, size_t *len);


#endif

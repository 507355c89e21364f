/*
 * encode.h - text and key encodings for keyhold's tools: hex, base64, the
 * key kinds keyhold supports and their PKCS#11 curve parameters, public keys
 * as SubjectPublicKeyInfo PEM, OpenSSH lines and Ethereum addresses, and
 * private keys read from PEM (through OpenSSL) for import.
 *
 * Nothing here talks to a PKCS#11 module; p11.h builds on it.
 */
#ifndef KH_TOOLS_ENCODE_H
#define KH_TOOLS_ENCODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- hex and base64 ---------------------------------------------------- */

/*
 * Writes len bytes as lowercase hex.
 *
 * Returns: true on success; false if out (size outlen) cannot hold
 *          2 * len + 1 characters (out is then "").
 */
bool kh_hex_encode(char *out, size_t outlen, const uint8_t *in, size_t len);

/*
 * Parses hex (either case, even length, no separators) of length hexlen.
 *
 * Returns: true on success; false on a bad digit, odd length or more than
 *          outmax bytes (out is then cleared and *outlen is 0).
 */
bool kh_hex_decode(uint8_t *out, size_t *outlen, size_t outmax,
                   const char *hex, size_t hexlen);

/* Returns: a malloc'd NUL-terminated standard base64 string (with padding,
 * no line breaks) of in, or NULL when out of memory. */
char *kh_base64_encode(const uint8_t *in, size_t len);

/*
 * Parses standard base64 (padding optional, no whitespace).
 *
 * Returns: a malloc'd buffer with *outlen bytes (never NULL on success, even
 *          for empty input), or NULL on a format error or when out of memory.
 */
uint8_t *kh_base64_decode(const char *in, size_t inlen, size_t *outlen);

/* ---- key kinds --------------------------------------------------------- */

enum kh_keykind {
    KH_KEY_UNKNOWN = 0,
    KH_KEY_SECP256K1,
    KH_KEY_P256,
    KH_KEY_P384,
    KH_KEY_ED25519,
    KH_KEY_RSA,
};

/*
 * Identifies a curve from a CKA_EC_PARAMS value (DER OID, or the
 * PrintableString "edwards25519" that pkcs11-tool 0.23 sends).
 *
 * Returns: the kind, or KH_KEY_UNKNOWN.
 */
enum kh_keykind kh_keykind_from_ec_params(const uint8_t *der, size_t len);

/*
 * The DER OID to put into CKA_EC_PARAMS for an EC or Ed25519 kind.
 *
 * Returns: true and sets *der and *len (static data); false for RSA/unknown.
 */
bool kh_keykind_ec_params(enum kh_keykind kind, const uint8_t **der, size_t *len);

/* Returns: the short name ("secp256k1", "p256", "p384", "ed25519", "rsa")
 * of a kind, or "unknown". */
const char *kh_keykind_name(enum kh_keykind kind);

/* Returns: the coordinate (field element) size in bytes of an EC kind
 * (32, 48; 32 for Ed25519), 0 otherwise. */
size_t kh_keykind_field_len(enum kh_keykind kind);

/* ---- public keys ------------------------------------------------------- */

/* A public key. EC: point = uncompressed 04||X||Y. Ed25519: point = the 32
 * raw bytes. RSA: n and e big-endian without leading zeros. All malloc'd. */
struct kh_pubkey {
    enum kh_keykind kind;
    uint8_t *point;
    size_t point_len;
    uint8_t *n;
    size_t n_len;
    uint8_t *e;
    size_t e_len;
};

/* Frees the buffers and zeroes the struct (safe on a zeroed struct). */
void kh_pubkey_clear(struct kh_pubkey *pub);

/*
 * Sets the point of an EC or Ed25519 key from a CKA_EC_POINT value. Accepts
 * the DER OCTET STRING form and the raw form; EC points may be compressed
 * and are stored uncompressed, after checking they lie on the curve.
 *
 * Returns: true on success; false if the value does not fit the kind.
 * In/Out: pub: pub->kind must be set; pub->point is replaced.
 */
bool kh_pubkey_set_ec_point(struct kh_pubkey *pub, const uint8_t *val, size_t len);

/* Sets n and e of an RSA key (leading zero bytes dropped). Returns false on
 * empty values or out of memory. */
bool kh_pubkey_set_rsa(struct kh_pubkey *pub, const uint8_t *n, size_t n_len,
                       const uint8_t *e, size_t e_len);

/* Returns: the RSA modulus size in bits (0 for other kinds). */
size_t kh_pubkey_rsa_bits(const struct kh_pubkey *pub);

/*
 * The key as SubjectPublicKeyInfo PEM ("-----BEGIN PUBLIC KEY-----").
 *
 * Returns: a malloc'd NUL-terminated string, or NULL on error.
 */
char *kh_pubkey_to_pem(const struct kh_pubkey *pub);

/*
 * The key as DER SubjectPublicKeyInfo.
 *
 * Returns: a malloc'd buffer with *len bytes, or NULL on error.
 */
uint8_t *kh_pubkey_to_spki_der(const struct kh_pubkey *pub, size_t *len);

/*
 * The key as one OpenSSH public key line "<type> <base64> [comment]"
 * (ecdsa-sha2-nistp256/384, ssh-ed25519, ssh-rsa).
 *
 * Returns: a malloc'd string without a trailing newline, or NULL when
 *          OpenSSH has no type for the key (secp256k1) or on error.
 * In: comment: appended after a blank when not NULL or empty.
 */
char *kh_pubkey_to_ssh(const struct kh_pubkey *pub, const char *comment);

/* Length of "0x" + 40 hex digits + NUL. */
#define KH_ETH_ADDRESS_LEN 43

/*
 * Writes a 20-byte Ethereum address as "0x" + EIP-55 mixed-case hex: a hex
 * letter is uppercase when its nibble of keccak256(lowercase hex) is >= 8.
 */
void kh_eip55_encode(char out[KH_ETH_ADDRESS_LEN], const uint8_t addr[20]);

/*
 * The Ethereum address of a secp256k1 key: "0x" + EIP-55 mixed-case hex of
 * the last 20 bytes of keccak256(X||Y).
 *
 * Returns: true on success; false when pub is not a secp256k1 key.
 */
bool kh_pubkey_eth_address(char out[KH_ETH_ADDRESS_LEN], const struct kh_pubkey *pub);

/* Length of keyhold's default CKA_ID. */
#define KH_DEFAULT_ID_LEN 16

/*
 * keyhold's default CKA_ID: the first 16 bytes of SHA-256 over the EC point
 * (uncompressed; raw 32 bytes for Ed25519) or the RSA modulus.
 *
 * Returns: true on success; false for an empty key.
 */
bool kh_pubkey_default_id(uint8_t id[KH_DEFAULT_ID_LEN], const struct kh_pubkey *pub);

/* ---- private keys (import) --------------------------------------------- */

enum kh_rsa_part {
    KH_RSA_D, KH_RSA_P, KH_RSA_Q, KH_RSA_DP, KH_RSA_DQ, KH_RSA_QINV, KH_RSA_NPARTS
};

/* A private key ready to become PKCS#11 attributes. EC: value = scalar,
 * big-endian, padded to the field size. Ed25519: value = the 32-byte seed.
 * RSA: the private parts (the public ones are in pub). Secret buffers are
 * wiped when cleared. */
struct kh_privkey {
    enum kh_keykind kind;
    uint8_t *value;
    size_t value_len;
    uint8_t *rsa[KH_RSA_NPARTS];
    size_t rsa_len[KH_RSA_NPARTS];
    struct kh_pubkey pub;
};

/* Wipes and frees everything; safe on a zeroed struct. */
void kh_privkey_clear(struct kh_privkey *key);

/*
 * Builds a secp256k1 private key from a 32-byte big-endian scalar and derives
 * its public key.
 *
 * Returns: true on success; false if the scalar is 0 or not below the group
 *          order (key is then cleared; err says why).
 */
bool kh_privkey_from_secp256k1(struct kh_privkey *key, const uint8_t scalar[32],
                               char *err, size_t errlen);

/*
 * Reads a private key from PEM (PKCS#8 or traditional; unencrypted) through
 * OpenSSL: EC P-256/P-384/secp256k1, Ed25519 or RSA.
 *
 * Returns: true on success; false with a reason in err (key is then cleared).
 */
bool kh_privkey_from_pem(struct kh_privkey *key, const char *pem, size_t len,
                         char *err, size_t errlen);

/* Wipes len bytes (OPENSSL_cleanse). */
void kh_wipe(void *p, size_t len);

#endif

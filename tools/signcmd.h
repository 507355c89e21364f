/*
 * signcmd.h - the parts of keyhold-sign that do not talk to a module:
 * options and the configuration file, reading and decoding the message on
 * stdin, encoding the signature, the mechanism names and which mechanism a
 * key gets, and the exit codes.
 *
 * Kept apart from keyhold-sign.c so the unit tests (tests/unit/test-sign.c)
 * can check every parsing rule without a token.
 */
#ifndef KH_TOOLS_SIGNCMD_H
#define KH_TOOLS_SIGNCMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pkcs11.h"
#include "keyhold.h"
#include "encode.h"

/* ---- exit codes -------------------------------------------------------- */

/* keyhold-sign's exit status. Documented in README ("keyhold-sign"). */
enum kh_sign_exit {
    KH_SIGN_EXIT_OK = 0,
    KH_SIGN_EXIT_FAIL = 1,         /* any other signing error */
    KH_SIGN_EXIT_USAGE = 2,        /* bad options, configuration or URI */
    KH_SIGN_EXIT_INPUT = 3,        /* the message on stdin is malformed or too long */
    KH_SIGN_EXIT_NO_KEY = 4,       /* no private key matches the URI */
    KH_SIGN_EXIT_LOGIN = 5,        /* no PIN, wrong PIN, PIN locked */
    KH_SIGN_EXIT_UNAVAILABLE = 6,  /* module, token or device not usable */
    KH_SIGN_EXIT_TIMEOUT = 7,      /* the deadline passed */
};

/*
 * Returns: the exit code for a Cryptoki error: KH_SIGN_EXIT_LOGIN for the
 * PIN errors, KH_SIGN_EXIT_UNAVAILABLE for the module/token/device ones,
 * KH_SIGN_EXIT_INPUT for CKR_DATA_INVALID/CKR_DATA_LEN_RANGE,
 * KH_SIGN_EXIT_FAIL otherwise (KH_SIGN_EXIT_OK for CKR_OK).
 */
int kh_sign_exit_for_rv(CK_RV rv);

/* ---- options ----------------------------------------------------------- */

/* Largest message keyhold-sign signs (decoded bytes). */
#define KH_SIGN_MAX_MESSAGE ((size_t)1024 * 1024)
/* Largest stdin in base64 mode: the encoded maximum plus "\r\n". */
#define KH_SIGN_MAX_BASE64 (4 * ((KH_SIGN_MAX_MESSAGE + 2) / 3) + 2)
/* Largest configuration file. */
#define KH_SIGN_MAX_CONFIG ((size_t)64 * 1024)

#define KH_SIGN_TIMEOUT_DEFAULT_MS 10000L
#define KH_SIGN_TIMEOUT_MAX_MS 3600000L

enum kh_sign_in { KH_SIGN_IN_UNSET = 0, KH_SIGN_IN_BASE64, KH_SIGN_IN_RAW };
enum kh_sign_out { KH_SIGN_OUT_UNSET = 0, KH_SIGN_OUT_BASE64, KH_SIGN_OUT_HEX, KH_SIGN_OUT_RAW };

/* keyhold-sign's settings. Strings are malloc'd, NULL when unset; in, out
 * and timeout_ms are 0 when unset. */
struct kh_sign_opts {
    char *uri;          /* may hold a pin-value: wiped when cleared */
    char *module;
    char *pin_file;
    char *mechanism;
    enum kh_sign_in in;
    enum kh_sign_out out;
    long timeout_ms;
};

/* Frees (and wipes the URI of) o; leaves it zeroed. Safe on a zeroed struct. */
void kh_sign_opts_clear(struct kh_sign_opts *o);

/*
 * Sets one setting by its configuration name: uri, module, pin_file,
 * mechanism, in (base64|raw), out (base64|hex|raw), timeout_ms (1 to
 * KH_SIGN_TIMEOUT_MAX_MS, decimal digits only). Values are checked here;
 * the mechanism name is checked against the table.
 *
 * Returns: true; false with a reason in err on an unknown name, a bad value
 *          or a setting already set (o is then unchanged). The reason does
 *          not repeat the name (callers say "--timeout-ms: " or "line 3:
 *          timeout_ms: ") and never holds the value of uri (it may carry a
 *          PIN).
 */
bool kh_sign_opts_set(struct kh_sign_opts *o, const char *name, const char *value,
                      char *err, size_t errlen);

/*
 * Parses a configuration file's text: "name = value" lines (names as for
 * kh_sign_opts_set), blank lines and lines starting with '#'; blanks around
 * names and values are dropped. A NUL byte, a line without '=', an unknown
 * name, a bad value or a repeated name is an error.
 *
 * In/Out: o: settings are added (o may already hold some: those are kept
 *         and a repeat of one of them is an error).
 * Returns: true; false with "line N: reason" in err.
 */
bool kh_sign_conf_parse(struct kh_sign_opts *o, const char *text, size_t len,
                        char *err, size_t errlen);

/* Moves every setting that is unset in dst from src (src keeps the rest;
 * clear it afterwards). */
void kh_sign_opts_merge(struct kh_sign_opts *dst, struct kh_sign_opts *src);

/* ---- input and output -------------------------------------------------- */

/*
 * Reads fd to end of file.
 *
 * Out: buf: malloc'd (never NULL on success, even when empty); len.
 * Returns: KH_SIGN_EXIT_OK; KH_SIGN_EXIT_INPUT when more than max bytes
 *          come; KH_SIGN_EXIT_FAIL on a read error (reason in err).
 */
int kh_sign_read_all(int fd, size_t max, uint8_t **buf, size_t *len, char *err, size_t errlen);

/*
 * Turns what was read from stdin into the message to sign.
 *
 * base64: one line of standard base64 (RFC 4648 alphabet, '=' padding
 * required, length a multiple of 4, canonical: unused bits zero) followed
 * by "\n" or "\r\n" or by nothing, then end of input. An empty line is the
 * empty message; no input at all is an error. Anything after the line
 * ending, an invalid character (reported by offset, never shown) or a bad
 * padding is an error.
 * raw: the bytes as they are (any length, empty included).
 *
 * Out: msg: malloc'd (never NULL on success); msg_len.
 * Returns: KH_SIGN_EXIT_OK; KH_SIGN_EXIT_INPUT with a reason in err;
 *          KH_SIGN_EXIT_FAIL when out of memory.
 */
int kh_sign_decode_input(uint8_t **msg, size_t *msg_len, enum kh_sign_in in,
                         const uint8_t *data, size_t len, char *err, size_t errlen);

/*
 * Encodes a signature for stdout: base64 + "\n", lowercase hex + "\n", or
 * the raw bytes.
 *
 * Returns: a malloc'd buffer of *out_len bytes, or NULL when out of memory.
 */
uint8_t *kh_sign_encode_output(enum kh_sign_out fmt, const uint8_t *sig, size_t sig_len,
                               size_t *out_len);

/* ---- mechanisms -------------------------------------------------------- */

enum kh_sign_hash { KH_SIGN_HASH_NONE = 0, KH_SIGN_HASH_SHA256, KH_SIGN_HASH_SHA384, KH_SIGN_HASH_SHA512 };

/* One --mechanism choice. */
struct kh_sign_mech {
    const char *name;            /* --mechanism value */
    CK_MECHANISM_TYPE mech;      /* what C_SignInit gets */
    CK_KEY_TYPE key_type;        /* keys it works with */
    enum kh_keykind kind;        /* KH_KEY_UNKNOWN: any key of key_type */
    size_t input_len;            /* exact message length required; 0: any */
    enum kh_sign_hash hash;      /* the hash inside mech, for the fallback */
    /* Mechanism used with the hash computed here when the token does not
     * offer mech; CK_UNAVAILABLE_INFORMATION when there is none. */
    CK_MECHANISM_TYPE raw_mech;
    bool digest_info;            /* the fallback input is DigestInfo || digest */
    bool pss;                    /* takes CK_RSA_PKCS_PSS_PARAMS for hash */
};

/* Returns: the mechanism called name, or NULL. */
const struct kh_sign_mech *kh_sign_mech_by_name(const char *name);

/* Returns: the default mechanism for a key type (CKK_EC_EDWARDS: eddsa,
 * CKK_EC: ecdsa-sha256, CKK_RSA: rsa-pkcs-sha256), or NULL. */
const struct kh_sign_mech *kh_sign_mech_default(CK_KEY_TYPE key_type);

/* Returns: true when m can be used with a key of this type and kind. */
bool kh_sign_mech_fits(const struct kh_sign_mech *m, CK_KEY_TYPE key_type, enum kh_keykind kind);

/* Returns: the names of every mechanism, separated by ", " (static). */
const char *kh_sign_mech_names(void);

/*
 * The PSS parameters for m (hash, MGF1 with the same hash, salt length =
 * hash length).
 *
 * Returns: false when m is not a PSS mechanism.
 */
bool kh_sign_mech_pss_params(const struct kh_sign_mech *m, CK_RSA_PKCS_PSS_PARAMS *params);

/* Largest output of kh_sign_prehash: a SHA-512 DigestInfo. */
#define KH_SIGN_PREHASH_MAX (19 + 64)

/*
 * The input of m's fallback (raw_mech) for msg: the digest, or for
 * PKCS #1 v1.5 the DER DigestInfo followed by the digest.
 *
 * Out: out: at least KH_SIGN_PREHASH_MAX bytes; out_len.
 * Returns: false when m has no fallback or hashing fails.
 */
bool kh_sign_prehash(const struct kh_sign_mech *m, const uint8_t *msg, size_t len,
                     uint8_t *out, size_t *out_len);

#endif

/*
 * p11.h - what every keyhold tool needs to act as a plain Cryptoki consumer
 * of the keyhold module: locate and dlopen it, name CK_RVs, enumerate tokens
 * by label, read PINs without echo, find objects, read attributes with the
 * length query done once, describe keys, and build and parse RFC 7512
 * PKCS#11 URIs.
 *
 * Used by keyhold (admin), keyhold-sign, keyhold-signd and keyhold-bench.
 * Nothing here links the module's internals.
 */
#ifndef KH_TOOLS_P11_H
#define KH_TOOLS_P11_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pkcs11.h"
#include "keyhold.h"
#include "encode.h"

/* ---- loading ----------------------------------------------------------- */

/* Where the module path came from. */
enum kh_p11_source {
    KH_P11_SRC_ARG,        /* --module PATH */
    KH_P11_SRC_ENV,        /* KEYHOLD_MODULE */
    KH_P11_SRC_BUILD,      /* <dir of executable>/../module/keyhold-pkcs11.so */
    KH_P11_SRC_INSTALLED,  /* <libdir>/pkcs11/keyhold-pkcs11.so */
};

/* A loaded module. Zero-initialise before use. */
struct kh_p11 {
    void *dl;
    CK_FUNCTION_LIST *f;    /* the module's function list, once loaded */
    bool initialized;       /* C_Initialize succeeded, C_Finalize pending */
    enum kh_p11_source source;
    char path[4096];
};

/* Returns: a short description of a path source ("--module", ...). */
const char *kh_p11_source_name(enum kh_p11_source src);

/*
 * Chooses the module path: explicit (when not NULL or empty), else
 * $KEYHOLD_MODULE, else the build-tree module next to the running
 * executable when it exists, else the installed path.
 *
 * Out: out: the path (truncation makes it fail); src: where it came from.
 * Returns: true on success.
 */
bool kh_p11_resolve_path(char *out, size_t outlen, enum kh_p11_source *src,
                         const char *explicit_path);

/*
 * Resolves the path (see kh_p11_resolve_path), dlopens the module and gets
 * its function list. Does not call C_Initialize.
 *
 * Returns: CKR_OK; CKR_LIBRARY_LOAD_FAILED with the dlerror() text in err.
 */
CK_RV kh_p11_load(struct kh_p11 *p, const char *explicit_path, char *err, size_t errlen);

/* Calls C_Initialize (CKF_OS_LOCKING_OK) on a loaded module. */
CK_RV kh_p11_initialize(struct kh_p11 *p);

/* kh_p11_load + kh_p11_initialize; on failure the module is unloaded. */
CK_RV kh_p11_open(struct kh_p11 *p, const char *explicit_path, char *err, size_t errlen);

/* C_Finalize (when initialised) and dlclose; safe to call twice. */
void kh_p11_close(struct kh_p11 *p);

/*
 * Returns: the name of a return value ("CKR_PIN_INCORRECT"), keyhold's
 * vendor codes included; unknown values as "CKR_0x%08lx" in a thread-local
 * buffer valid until the next call on the same thread.
 */
const char *kh_rv_name(CK_RV rv);

/* Returns: the name of a mechanism ("CKM_ECDSA"), keyhold's vendor ones
 * included; unknown values as "CKM_0x%08lx" (thread-local buffer). */
const char *kh_mech_name(CK_MECHANISM_TYPE mech);

/* ---- tokens ------------------------------------------------------------ */

/* A slot with a token, its info and blank-trimmed NUL-terminated strings. */
struct kh_p11_token {
    CK_SLOT_ID slot;
    CK_TOKEN_INFO info;
    char label[33];
    char manufacturer[33];
    char model[17];
    char serial[17];
};

/* Copies a blank-padded Cryptoki string of inlen bytes into out (size at
 * least inlen + 1) without the trailing blanks. */
void kh_p11_unpad(char *out, const CK_UTF8CHAR *in, size_t inlen);

/* Writes str into a blank-padded field of outlen bytes. Returns false (the
 * field is then all blanks) when str is longer than outlen. */
bool kh_p11_pad(CK_UTF8CHAR *out, size_t outlen, const char *str);

/*
 * Lists every slot that has a token present (initialised or not).
 *
 * Out: tokens: a malloc'd array (free()); n: its length.
 */
CK_RV kh_p11_tokens(struct kh_p11 *p, struct kh_p11_token **tokens, size_t *n);

/*
 * Finds the initialised token with the given label.
 *
 * Returns: CKR_OK; CKR_TOKEN_NOT_PRESENT when no token has that label.
 */
CK_RV kh_p11_find_token(struct kh_p11 *p, const char *label, struct kh_p11_token *out);

/*
 * Finds the slot whose token is present but not initialised (keyhold keeps
 * exactly one).
 *
 * Returns: CKR_OK; CKR_TOKEN_NOT_PRESENT when there is none.
 */
CK_RV kh_p11_free_slot(struct kh_p11 *p, struct kh_p11_token *out);

/*
 * C_Login that accepts CKR_USER_ALREADY_LOGGED_IN as success.
 */
CK_RV kh_p11_login(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_USER_TYPE user, const char *pin);

/* ---- PINs -------------------------------------------------------------- */

enum kh_pin_prompt {
    KH_PIN_NO_PROMPT,      /* only the file or the environment */
    KH_PIN_PROMPT,         /* else ask once on the terminal */
    KH_PIN_PROMPT_TWICE,   /* else ask twice and require both to match */
};

/*
 * Gets a PIN: from file (first line; "-" = stdin) when file is not NULL,
 * else from the environment variable env, else, as mode allows, from the
 * controlling terminal with echo off. The PIN is never echoed or logged.
 *
 * Returns: 0 and a malloc'd PIN in *pin (free with kh_pin_free); 1 when no
 *          source is available (no file, no variable, no terminal or
 *          prompting not allowed); -1 on an error, with a reason in err.
 */
int kh_pin_get(char **pin, const char *env, const char *file, const char *prompt,
               enum kh_pin_prompt mode, char *err, size_t errlen);

/* Wipes and frees a PIN from kh_pin_get; NULL is fine. */
void kh_pin_free(char *pin);

struct kh_p11_uri;

/*
 * Gets the PIN a parsed PKCS#11 URI carries (RFC 7512 query attributes): its
 * pin-value, or the first line of the file its pin-source names, given as a
 * file: URI ("file:/path", "file:///path", "file://localhost/path") or as a
 * plain path. pin-source forms that run a program ("|/path") or prompt
 * ("builtin-dialog"), "-" (stdin) and a URI with both attributes are refused.
 *
 * Returns: 0 and a malloc'd PIN in *pin (free with kh_pin_free); 1 when the
 *          URI has neither attribute; -1 with a reason in err (never the PIN).
 */
int kh_pin_from_uri(char **pin, const struct kh_p11_uri *u, char *err, size_t errlen);

/* ---- objects ----------------------------------------------------------- */

/*
 * Finds every object matching a template.
 *
 * Out: objs: a malloc'd array (free(); NULL when *count is 0); count.
 */
CK_RV kh_p11_find(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl,
                  CK_ULONG ntmpl, CK_OBJECT_HANDLE **objs, CK_ULONG *count);

/*
 * Reads one attribute of any length (length query, then the value).
 *
 * Out: val: malloc'd, with one extra NUL byte after the value (so strings
 *      can be used directly; free with free(), or kh_wipe first); len.
 * Returns: CKR_OK or the module's error for that attribute
 *          (CKR_ATTRIBUTE_TYPE_INVALID, CKR_ATTRIBUTE_SENSITIVE, ...).
 */
CK_RV kh_p11_get_attr(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                      CK_ATTRIBUTE_TYPE type, uint8_t **val, CK_ULONG *len);

/*
 * Signs data with one C_SignInit + C_Sign. The length query (NULL buffer) and
 * a CKR_BUFFER_TOO_SMALL answer are handled here, once for every tool.
 *
 * Out: sig: the signature, malloc'd (free()); NULL on failure; sig_len.
 * Returns: CKR_OK, or the module's error from C_SignInit or C_Sign. After
 *          CKR_HOST_MEMORY, or a module that answers CKR_BUFFER_TOO_SMALL
 *          twice, the operation may still be active: close the session.
 */
CK_RV kh_p11_sign(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_MECHANISM *mech,
                  CK_OBJECT_HANDLE key, const uint8_t *data, size_t len,
                  uint8_t **sig, size_t *sig_len);

/* Reads a CK_ULONG-valued attribute (class, key type, backend, ...). */
CK_RV kh_p11_get_ulong(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                       CK_ATTRIBUTE_TYPE type, CK_ULONG *v);

/* What the tools need to know about a key object. */
struct kh_p11_key {
    CK_OBJECT_HANDLE handle;
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE key_type;          /* CK_UNAVAILABLE_INFORMATION if none */
    enum kh_keykind kind;
    CK_ULONG rsa_bits;             /* RSA only */
    char *label;                   /* malloc'd, "" when absent */
    uint8_t *id;                   /* malloc'd, may be NULL when id_len is 0 */
    size_t id_len;
    bool has_backend;
    CK_ULONG backend;              /* CKV_KH_BACKEND_* when has_backend */
};

/* Reads class, key type, curve/size, label, id and backend of an object. */
CK_RV kh_p11_describe(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                      struct kh_p11_key *key);

/* Frees what kh_p11_describe allocated; safe on a zeroed struct. */
void kh_p11_key_clear(struct kh_p11_key *key);

/* Returns: "secp256k1", "p256", "p384", "ed25519", "rsa2048" (written into
 * buf of bufsz bytes for RSA) or "unknown". */
const char *kh_p11_key_type_name(const struct kh_p11_key *key, char *buf, size_t bufsz);

/* Returns: "vault", "tpm", "remote", or NULL for an unknown/absent value. */
const char *kh_p11_backend_name(CK_ULONG backend);

/* Returns: "private", "public", "cert", "secret-key", "data" (RFC 7512
 * type= values) or "unknown". */
const char *kh_p11_class_name(CK_OBJECT_CLASS cls);

/*
 * Reads the public key of a key object (public or private): CKA_EC_POINT for
 * EC/Ed25519, CKA_MODULUS and CKA_PUBLIC_EXPONENT for RSA.
 *
 * In: kind: the key's kind (from kh_p11_describe).
 * Out: pub: filled in (clear with kh_pubkey_clear).
 * Returns: CKR_OK; the module's error; CKR_ATTRIBUTE_VALUE_INVALID if the
 *          value does not parse.
 */
CK_RV kh_p11_read_pubkey(struct kh_p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                         enum kh_keykind kind, struct kh_pubkey *pub);

/* ---- PKCS#11 URIs (RFC 7512) ------------------------------------------- */

/*
 * Builds "pkcs11:token=..;manufacturer=..;serial=..;model=..;object=..;
 * id=%xx..;type=.." for an object of tok. Everything but RFC 3986
 * unreserved characters is percent-encoded; id always is.
 *
 * Returns: a malloc'd string, or NULL when out of memory.
 * In: label may be NULL (no object=); id may be NULL (no id=); cls ==
 *     CK_UNAVAILABLE_INFORMATION leaves out type=.
 */
char *kh_p11_uri_build(const struct kh_p11_token *tok, const char *label,
                       const uint8_t *id, size_t id_len, CK_OBJECT_CLASS cls);

/* A parsed PKCS#11 URI. Strings are malloc'd and NULL when absent. */
struct kh_p11_uri {
    char *token, *manufacturer, *serial, *model;
    char *object;
    uint8_t *id;
    size_t id_len;
    bool has_id;
    bool has_class;
    CK_OBJECT_CLASS cls;
    bool has_slot_id;
    CK_SLOT_ID slot_id;
    char *pin_value;      /* query pin-value (wipe: kh_p11_uri_clear does) */
    char *pin_source;     /* query pin-source */
    char *module_path;    /* query module-path */
};

/*
 * Parses a PKCS#11 URI. Unknown path attributes are refused unless they
 * start with "x-"; unknown query attributes are ignored.
 *
 * Returns: true on success; false with a reason in err (u is then cleared).
 */
bool kh_p11_uri_parse(struct kh_p11_uri *u, const char *uri, char *err, size_t errlen);

/* Frees (and wipes the PIN of) a parsed URI; safe on a zeroed struct. */
void kh_p11_uri_clear(struct kh_p11_uri *u);

/* Returns: true when every token attribute the URI names matches tok. */
bool kh_p11_uri_match_token(const struct kh_p11_uri *u, const struct kh_p11_token *tok);

/*
 * Fills a C_FindObjectsInit template from the object attributes of u
 * (object, id, type).
 *
 * Out: tmpl: at least 3 entries; n: how many were used; cls_storage: holds
 *      the class value tmpl points to, so it must live as long as tmpl.
 */
void kh_p11_uri_template(const struct kh_p11_uri *u, CK_ATTRIBUTE tmpl[3], CK_ULONG *n,
                         CK_OBJECT_CLASS *cls_storage);

#endif

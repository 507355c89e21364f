/*
 * signd.h - keyhold-signd's shared state: the served keys, the server and
 * its workers, and the functions its units call across files.
 *
 *   keyhold-signd.c   options, module, token, login, key table, main
 *   signd-server.c    listener, connection threads, limits, drain, log lines
 *   signd-methods.c   request parsing and the protocol's methods
 *   signd-attest.c    attestation (TPM2_Quote through tpm2-tss, or unavailable)
 *   signd-eth.c       Ethereum encodings      signd-policy.c  configuration
 *
 * Threads: one per connection (capped), each with its own PKCS#11 session,
 * joined by the accepting thread once finished (so their thread-local state,
 * OpenSSL's included, is released before the process exits);
 * the login is the token's (one session opened at start keeps it). The key
 * table is built before the first connection and read-only afterwards,
 * except each key's token bucket, which has its own lock.
 */
#ifndef KH_SIGND_H
#define KH_SIGND_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "p11.h"
#include "signd-policy.h"
#include "wire.h"

struct kh_signd_verifier;          /* signd-sign.c */

/* One served key. */
struct kh_signd_key {
    char *label;
    CK_OBJECT_HANDLE priv;
    struct kh_p11_key desc;        /* class, type, id, backend */
    struct kh_pubkey pub;
    bool has_address;              /* secp256k1 */
    char address[43];              /* EIP-55 */
    bool recoverable_mech;         /* the module has CKM_KH_ECDSA_RECOVERABLE */
    struct kh_signd_verifier *verifier; /* pub parsed once (kh_signd_key_prepare) */
    const struct kh_signd_key_policy *policy;
    struct kh_bucket bucket;
};

struct kh_signd_attest;

/* The server. */
struct kh_signd {
    struct kh_p11 p11;
    struct kh_p11_token tok;
    CK_SESSION_HANDLE login_session;
    bool have_login_session;
    bool logged_in;
    bool keyhold_module;           /* keys carry CKA_KH_BACKEND */

    struct kh_signd_config cfg;
    struct kh_signd_key_policy open_policy;   /* for keys the file does not restrict */
    struct kh_signd_key *keys;
    size_t nkeys;
    struct kh_signd_key *default_key;          /* NULL: none chosen */

    struct kh_signd_attest *attest;            /* NULL: no TPM configured */

    /* listener */
    kh_wire_url url;
    kh_wire_tls tls;
    char listen_desc[300];         /* the URL actually bound (port 0 resolved) */
    unsigned handshake_timeout_ms;

    /* connections */
    pthread_mutex_t lock;
    pthread_cond_t idle;           /* signalled when active drops */
    unsigned active;               /* connection threads alive */
    uint64_t next_conn_id;
    pthread_t *done;               /* finished connection threads, to be joined */
    size_t ndone;
    size_t done_cap;
    int reap_pipe[2];              /* a finished thread writes a byte here */
    int stop_pipe[2];              /* readable once SIGTERM/SIGINT arrived */
    atomic_bool stopping;
};

/* A connection thread's own state. */
struct kh_signd_worker {
    struct kh_signd *srv;
    CK_SESSION_HANDLE session;
    bool have_session;
    uint64_t conn_id;
};

/* What a request leaves for its log line (never payload, PIN or signature). */
struct kh_signd_logrec {
    const char *method;            /* a known method name, or "-" / "(unknown)" */
    const char *key;               /* a served key's label, or "-" */
    const char *outcome;           /* "ok" or an error code */
};

/* Error codes of the protocol (README: "The signer protocol", Errors). A
 * message starts with the code's name: "denied: ...". */
enum kh_signd_errcode {
    KH_SIGND_E_PARSE_ERROR = -32700,
    KH_SIGND_E_INVALID_REQUEST = -32600,
    KH_SIGND_E_METHOD_NOT_FOUND = -32601,
    KH_SIGND_E_INVALID_PARAMS = -32602,
    KH_SIGND_E_UNKNOWN_KEY = 1,
    KH_SIGND_E_DENIED = 2,
    KH_SIGND_E_RATE_LIMITED = 3,
    KH_SIGND_E_UNSUPPORTED = 4,
    KH_SIGND_E_UNAVAILABLE = 5,
    KH_SIGND_E_INTERNAL = 6,
};

/* Returns: the served key labelled label, or NULL (keyhold-signd.c). */
struct kh_signd_key *kh_signd_key_find(const struct kh_signd *srv, const char *label);

/* Returns: the name of an error code ("denied"), "error" for others. */
const char *kh_signd_err_name(int code);

/*
 * Handles one request frame (signd-methods.c).
 * In: json, len: the frame body.
 * Out: log: what the log line says.
 * Returns: the reply's JSON text (malloc'd), or NULL when out of memory.
 */
char *kh_signd_handle(struct kh_signd_worker *w, const char *json, size_t len,
                      struct kh_signd_logrec *log);

/* Returns: a malloc'd {"error": {"code", "message": "<name>: <detail>"}}
 * reply, or NULL. */
char *kh_signd_error_reply(int code, const char *detail);

/* ---- signing (signd-sign.c) -------------------------------------------- */

/* What to sign and how: the protocol's "sign" algorithms. */
struct kh_signd_sign_in {
    enum kh_signd_alg alg;
    const uint8_t *input;          /* digest, message or data, as alg says */
    size_t input_len;
    const uint8_t *aux;            /* bip340: 32 bytes or NULL */
    CK_MECHANISM_TYPE pss_hash;    /* rsa_pss: CKM_SHA256, ... */
    CK_RSA_PKCS_MGF_TYPE pss_mgf;  /* rsa_pss: CKG_MGF1_SHA256, ... */
    CK_ULONG pss_salt_len;
};

/* Largest signature kh_signd_sign writes (RSA-4096 is 512 bytes). */
#define KH_SIGND_SIG_MAX 1024

/*
 * Signs with the worker's session and checks the signature against the
 * key's public key before returning it (a signature that does not verify is
 * an internal error, never an answer) unless the configuration turned the
 * check off (cfg.skip_verify; recoverable signatures are checked anyway).
 * secp256k1 ECDSA comes out low-S; ecdsa_recoverable gives r || s ||
 * recovery id (0/1). key must have been prepared (kh_signd_key_prepare).
 *
 * Out: sig (KH_SIGND_SIG_MAX bytes), siglen; why: the reason on failure.
 * Returns: 0, or a kh_signd_errcode.
 */
int kh_signd_sign(struct kh_signd_worker *w, const struct kh_signd_key *key,
                  const struct kh_signd_sign_in *in, uint8_t *sig, size_t *siglen,
                  char *why, size_t whylen);

/*
 * Parses key->pub once into what checking a signature needs (an OpenSSL
 * key, or libsecp256k1's parsed point), so that no request decodes a public
 * key or builds one. Called for every served key before the first
 * connection; the verifier is then shared read-only by every thread.
 *
 * Out: key->verifier; why: the reason on failure.
 * Returns: true; false when the public key cannot be used.
 */
bool kh_signd_key_prepare(struct kh_signd_key *key, char *why, size_t whylen);

/* Frees key->verifier (NULL is fine). */
void kh_signd_key_release(struct kh_signd_key *key);

/* Returns: the kh_signd_errcode a Cryptoki error becomes. */
int kh_signd_err_from_rv(CK_RV rv);

/* Writes one log line to stderr: "keyhold-signd: <fmt>" (one write). */
void kh_signd_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Serves until SIGTERM/SIGINT, then drains (signd-server.c).
 * Returns: 0 after a clean drain; 1 when the listener failed.
 */
int kh_signd_serve(struct kh_signd *srv, kh_wire_listener *listener);

/* ---- attestation (signd-attest.c) ---------------------------------------- */

/*
 * Opens the TPM named by tcti and parses the PCR selection pcrs.
 * Out: at: the attestation state; err: why it failed.
 * Returns: true; false (at NULL) when the TPM cannot be used.
 */
bool kh_signd_attest_open(struct kh_signd_attest **at, const char *tcti, const char *pcrs,
                          char *err, size_t errlen);

/* Closes the TPM and frees (NULL is fine). */
void kh_signd_attest_close(struct kh_signd_attest *at);

/*
 * Makes an attestation document for key with the given nonce.
 * Out: doc: malloc'd JSON text of the document; err: why not.
 * Returns: true; false with a reason in err.
 */
bool kh_signd_attest_quote(struct kh_signd_attest *at, const struct kh_signd_key *key,
                           const uint8_t *nonce, size_t nonce_len, char **doc,
                           char *err, size_t errlen);

#endif

/*
 * wire.h - the keyhold signer protocol's transports and framing.
 *
 * One frame is a 4-byte big-endian length followed by that many bytes of a
 * UTF-8 JSON object. The length is checked against a cap before anything is
 * allocated. Transports: tcp://host:port, unix:/path, vsock://cid:port and
 * tls://host:port (OpenSSL; the client verifies the server, a client
 * certificate is optional).
 *
 * Shared by the module's remote backend (client side) and keyhold-signd
 * (server side), so both ends read and write frames with the same code.
 * Every blocking call takes an absolute deadline on the monotonic clock
 * (kh_wire_now_ms() + timeout) and fails with KH_WIRE_ETIMEDOUT when it
 * passes: nothing here waits without a bound.
 */
#ifndef KH_WIRE_H
#define KH_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ossl_lib_ctx_st;  /* OSSL_LIB_CTX */

/* The largest frame body either side accepts (1 MiB). */
#define KH_WIRE_FRAME_MAX (1024u * 1024u)

/* Results: 0 is success, the rest are negative. */
enum kh_wire_err {
    KH_WIRE_OK = 0,
    KH_WIRE_EADDR = -1,      /* bad URL, or the address cannot be resolved / bound */
    KH_WIRE_ECONNECT = -2,   /* connection refused or unreachable */
    KH_WIRE_ETIMEDOUT = -3,  /* the deadline passed */
    KH_WIRE_ECLOSED = -4,    /* the peer closed the connection (mid-frame or between frames) */
    KH_WIRE_EIO = -5,        /* other socket error */
    KH_WIRE_ETOOBIG = -6,    /* a frame longer than the cap (announced or to send) */
    KH_WIRE_ETLS = -7,       /* TLS handshake or certificate verification failed */
    KH_WIRE_ENOMEM = -8,
};

enum kh_wire_kind { KH_WIRE_TCP, KH_WIRE_UNIX, KH_WIRE_VSOCK, KH_WIRE_TLS };

typedef struct kh_wire_url {
    enum kh_wire_kind kind;
    char host[256];          /* tcp, tls: name or address ([v6] brackets stripped) */
    char path[108];          /* unix: socket path */
    uint32_t cid;            /* vsock */
    uint32_t port;           /* tcp, tls (1..65535), vsock (32-bit) */
} kh_wire_url;

/* TLS settings; NULL members mean "not used". */
typedef struct kh_wire_tls {
    const char *ca_file;     /* client: CA to verify the server (NULL: system store);
                                server: CA to verify client certificates (NULL: none asked) */
    const char *cert_file;   /* server: required; client: optional client certificate */
    const char *key_file;    /* private key for cert_file */
    const char *server_name; /* client: name to verify (NULL: the URL's host) */
    struct ossl_lib_ctx_st *libctx; /* OpenSSL library context for the SSL_CTX (NULL: default) */
} kh_wire_tls;

typedef struct kh_wire_conn kh_wire_conn;
typedef struct kh_wire_listener kh_wire_listener;

/* Returns: milliseconds on the monotonic clock. */
uint64_t kh_wire_now_ms(void);

/* Returns: a short English description of a kh_wire_err value. */
const char *kh_wire_strerror(int err);

/*
 * Parses a URL of one of the four forms.
 * Out: url; err: why it was refused (NUL-terminated, may be NULL).
 * Returns: KH_WIRE_OK or KH_WIRE_EADDR.
 */
int kh_wire_url_parse(kh_wire_url *url, char *err, size_t errlen, const char *s);

/*
 * Connects (and for tls, completes the handshake and verifies the server)
 * before deadline_ms.
 * Out: conn (close with kh_wire_close).
 * In: url; tls: used for KH_WIRE_TLS only (may be NULL: system CAs, no client cert).
 * Returns: KH_WIRE_OK or a kh_wire_err.
 */
int kh_wire_connect(kh_wire_conn **conn, const kh_wire_url *url, const kh_wire_tls *tls,
                    uint64_t deadline_ms);

/*
 * Sends one frame holding len bytes of json.
 * Returns: KH_WIRE_OK, KH_WIRE_ETOOBIG (len > KH_WIRE_FRAME_MAX, nothing sent),
 *          or a transport error (the connection is then unusable).
 */
int kh_wire_send(kh_wire_conn *conn, const char *json, size_t len, uint64_t deadline_ms);

/*
 * Receives one frame. The announced length is checked against cap
 * (<= KH_WIRE_FRAME_MAX) before anything is allocated.
 * Out: json: malloc'd body plus a terminating NUL (free()); len: body length.
 * Returns: KH_WIRE_OK, KH_WIRE_ETOOBIG, KH_WIRE_ECLOSED, KH_WIRE_ETIMEDOUT, ...
 *          On failure *json is NULL and the connection is unusable.
 */
int kh_wire_recv(kh_wire_conn *conn, char **json, size_t *len, size_t cap, uint64_t deadline_ms);

/* Returns: the connection's socket (for poll), or -1. */
int kh_wire_conn_fd(const kh_wire_conn *conn);

/*
 * True when bytes of the stream were already received and wait inside conn
 * (tls: a record that held more than the last frame, e.g. requests a client
 * wrote back to back): poll() on the socket does not see them, so a server
 * calls kh_wire_recv at once instead of waiting. Never blocks.
 */
bool kh_wire_conn_buffered(const kh_wire_conn *conn);

/*
 * For a pool of idle client connections: true when conn shows no sign of
 * being dead (no EOF, error or unsolicited data pending). Never blocks. A
 * true answer is no promise: the peer may still be gone by the next send.
 */
bool kh_wire_conn_idle_ok(kh_wire_conn *conn);

/*
 * Returns: a description of the last failure in this thread (errno text,
 * OpenSSL's reason, the certificate verification error), for logs; "" if
 * none. Never holds frame contents.
 */
const char *kh_wire_detail(void);

/* Closes the connection and frees it (NULL is fine). */
void kh_wire_close(kh_wire_conn *conn);

/*
 * Frees conn and closes its descriptor without sending anything (no TLS
 * close_notify): for a forked child dropping connections its parent still
 * uses.
 */
void kh_wire_abandon(kh_wire_conn *conn);

/*
 * Binds and listens on url (unix: an existing socket file is replaced only
 * if nothing listens on it; the file is created mode 0600). tls: for
 * KH_WIRE_TLS, cert_file and key_file are required; ca_file, when set, makes
 * a client certificate mandatory.
 * Out: listener; err: why it failed.
 */
int kh_wire_listen(kh_wire_listener **listener, char *err, size_t errlen,
                   const kh_wire_url *url, const kh_wire_tls *tls);

/* Returns: the listening socket (for poll). */
int kh_wire_listener_fd(const kh_wire_listener *listener);

/*
 * Accepts one connection (for tls, completes the server handshake before
 * deadline_ms). Out: conn.
 */
int kh_wire_accept(kh_wire_listener *listener, kh_wire_conn **conn, uint64_t deadline_ms);

/*
 * Accepts one connection (waiting for one until deadline_ms) but leaves the
 * TLS handshake of a tls listener's connection to kh_wire_handshake, so a
 * server can hand the connection to its own thread at once: a client that
 * stalls its handshake then holds up only that thread, never the accepting
 * one. Plain transports are ready as returned.
 * Out: conn (close with kh_wire_close, handshake done or not).
 * Returns: KH_WIRE_OK, KH_WIRE_ETIMEDOUT, KH_WIRE_ENOMEM (out of
 *          descriptors or memory), KH_WIRE_EIO.
 */
int kh_wire_accept_pending(kh_wire_listener *listener, kh_wire_conn **conn, uint64_t deadline_ms);

/*
 * Runs the server side of the TLS handshake of a connection from
 * kh_wire_accept_pending before deadline_ms (client certificate checked
 * when the listener asks for one). KH_WIRE_OK at once when there is nothing
 * to do (plain transport, handshake done). kh_wire_send and kh_wire_recv
 * run a pending handshake themselves, within their own deadline.
 * Returns: KH_WIRE_OK, KH_WIRE_ETLS, KH_WIRE_ETIMEDOUT, ...; on failure the
 *          connection is unusable.
 */
int kh_wire_handshake(kh_wire_conn *conn, uint64_t deadline_ms);

/* Stops listening, removes a unix socket file it created, frees. */
void kh_wire_listener_close(kh_wire_listener *listener);

#endif

/*
 * wire.c - the signer protocol's transports and framing (see wire.h).
 *
 * Every socket is non-blocking; each blocking step (name resolution,
 * connect, TLS handshake, accept, read, write) waits in poll() for at most
 * the time left before the caller's deadline. Nothing here blocks without a
 * bound and nothing raises SIGPIPE: plain sockets write with MSG_NOSIGNAL,
 * and TLS runs over a small BIO of ours that does the same.
 *
 * A frame's announced length is compared with the cap before the body is
 * allocated. After any transport error a connection is marked broken and
 * every later call on it fails at once.
 *
 * Thread safety: a connection or listener is used by one thread at a time;
 * different ones may be used in parallel. kh_wire_detail() is per thread.
 */
#include "wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <linux/vm_sockets.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct kh_wire_conn {
    int fd;
    SSL *ssl;                /* NULL: plain stream */
    bool broken;             /* a transport error happened: unusable */
    bool handshake_pending;  /* accepted tls: the server handshake is still to run */
};

struct kh_wire_listener {
    int fd;
    enum kh_wire_kind kind;
    SSL_CTX *ctx;            /* tls only */
    char path[108];          /* unix: the socket file we created */
    dev_t dev;
    ino_t ino;
};

/* ---- time, errors ---- */

uint64_t kh_wire_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static _Thread_local char wire_detail[256];

const char *kh_wire_detail(void)
{
    return wire_detail;
}

static void detail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void detail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(wire_detail, sizeof wire_detail, fmt, ap);
    va_end(ap);
}

/* Record the first OpenSSL error (if any) after what, and empty the queue. */
static void detail_ssl(const char *what)
{
    unsigned long e = ERR_peek_error();
    char buf[200] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    detail("%s%s%s", what, e ? ": " : "", buf);
    ERR_clear_error();
}

const char *kh_wire_strerror(int err)
{
    switch (err) {
    case KH_WIRE_OK: return "success";
    case KH_WIRE_EADDR: return "bad or unusable address";
    case KH_WIRE_ECONNECT: return "connection refused or unreachable";
    case KH_WIRE_ETIMEDOUT: return "deadline passed";
    case KH_WIRE_ECLOSED: return "connection closed by the peer";
    case KH_WIRE_EIO: return "socket error";
    case KH_WIRE_ETOOBIG: return "frame larger than the cap";
    case KH_WIRE_ETLS: return "TLS handshake or certificate verification failed";
    case KH_WIRE_ENOMEM: return "out of memory";
    }
    return "unknown error";
}

/* Milliseconds left before deadline for poll(), or -1 when it has passed. */
static int ms_left(uint64_t deadline_ms)
{
    uint64_t now = kh_wire_now_ms();
    if (now >= deadline_ms)
        return -1;
    uint64_t left = deadline_ms - now;
    return left > INT_MAX ? INT_MAX : (int)left;
}

/*
 * Wait until fd is ready for events or the deadline passes.
 * Returns: KH_WIRE_OK, KH_WIRE_ETIMEDOUT or KH_WIRE_EIO.
 */
static int wait_fd(int fd, short events, uint64_t deadline_ms)
{
    for (;;) {
        int left = ms_left(deadline_ms);
        if (left < 0) {
            detail("deadline passed");
            return KH_WIRE_ETIMEDOUT;
        }
        struct pollfd p = { .fd = fd, .events = events };
        int n = poll(&p, 1, left);
        if (n > 0)
            return KH_WIRE_OK;   /* ready, or an error/hangup the next call reports */
        if (n == 0)
            continue;            /* re-check the clock: poll may wake early */
        if (errno != EINTR) {
            detail("poll: %s", strerror(errno));
            return KH_WIRE_EIO;
        }
    }
}

/* ---- URLs ---- */

static bool parse_u32(uint32_t *out, const char *s, size_t len, uint64_t max)
{
    if (len == 0 || len > 10)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > max)
        return false;
    *out = (uint32_t)v;
    return true;
}

static int url_fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return KH_WIRE_EADDR;
}

/* "host:port" or "[v6]:port" into url->host and url->port. */
static int parse_host_port(kh_wire_url *url, char *err, size_t errlen, const char *s)
{
    const char *host = s, *host_end, *colon;
    if (*s == '[') {
        host = s + 1;
        host_end = strchr(host, ']');
        if (!host_end)
            return url_fail(err, errlen, "missing ']' after an IPv6 address");
        if (host_end[1] != ':')
            return url_fail(err, errlen, "missing ':port' after ']'");
        colon = host_end + 1;
        struct in6_addr a6;
        char tmp[INET6_ADDRSTRLEN + 1];
        size_t hl = (size_t)(host_end - host);
        if (hl == 0 || hl >= sizeof tmp)
            return url_fail(err, errlen, "bad IPv6 address");
        memcpy(tmp, host, hl);
        tmp[hl] = '\0';
        if (inet_pton(AF_INET6, tmp, &a6) != 1)
            return url_fail(err, errlen, "bad IPv6 address");
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return url_fail(err, errlen, "missing ':port'");
        host_end = colon;
        if (memchr(host, ':', (size_t)(host_end - host)))
            return url_fail(err, errlen, "an IPv6 address needs brackets: [addr]:port");
    }
    size_t hl = (size_t)(host_end - host);
    if (hl == 0)
        return url_fail(err, errlen, "empty host");
    if (hl >= sizeof url->host)
        return url_fail(err, errlen, "host name too long");
    for (size_t i = 0; i < hl; i++) {
        unsigned char c = (unsigned char)host[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.' || c == '_' || (*s == '[' && c == ':');
        if (!ok)
            return url_fail(err, errlen, "invalid character in host");
    }
    const char *port = colon + 1;
    if (!parse_u32(&url->port, port, strlen(port), 65535) || url->port == 0)
        return url_fail(err, errlen, "port must be a number 1..65535");
    memcpy(url->host, host, hl);
    url->host[hl] = '\0';
    return KH_WIRE_OK;
}

int kh_wire_url_parse(kh_wire_url *url, char *err, size_t errlen, const char *s)
{
    if (err && errlen)
        err[0] = '\0';
    memset(url, 0, sizeof *url);
    if (!s)
        return url_fail(err, errlen, "no URL");
    if (!strncmp(s, "tcp://", 6) || !strncmp(s, "tls://", 6)) {
        url->kind = s[1] == 'c' ? KH_WIRE_TCP : KH_WIRE_TLS;
        int rc = parse_host_port(url, err, errlen, s + 6);
        if (rc != KH_WIRE_OK)
            memset(url, 0, sizeof *url);
        return rc;
    }
    if (!strncmp(s, "unix:", 5)) {
        const char *p = s + 5;
        size_t len = strlen(p);
        if (len == 0)
            return url_fail(err, errlen, "empty unix socket path");
        if (len >= sizeof url->path)
            return url_fail(err, errlen, "unix socket path longer than 107 bytes");
        url->kind = KH_WIRE_UNIX;
        memcpy(url->path, p, len + 1);
        return KH_WIRE_OK;
    }
    if (!strncmp(s, "vsock://", 8)) {
        const char *p = s + 8, *colon = strchr(p, ':');
        if (!colon)
            return url_fail(err, errlen, "missing ':port'");
        url->kind = KH_WIRE_VSOCK;
        if (!parse_u32(&url->cid, p, (size_t)(colon - p), UINT32_MAX) ||
            !parse_u32(&url->port, colon + 1, strlen(colon + 1), UINT32_MAX)) {
            memset(url, 0, sizeof *url);
            return url_fail(err, errlen, "vsock cid and port must be 32-bit numbers");
        }
        return KH_WIRE_OK;
    }
    return url_fail(err, errlen, "unknown scheme (tcp://, tls://, unix:, vsock://)");
}

/* ---- TLS plumbing ---- */

/*
 * A socket BIO that never raises SIGPIPE (send with MSG_NOSIGNAL) and
 * reports EAGAIN as "retry", so SSL_* calls on the non-blocking socket come
 * back with SSL_ERROR_WANT_READ/WRITE and the caller polls.
 */
static BIO_METHOD *nosig_method;
static pthread_once_t nosig_once = PTHREAD_ONCE_INIT;

static int nosig_write(BIO *b, const char *buf, int len)
{
    BIO_clear_retry_flags(b);
    ssize_t n = send(BIO_get_fd(b, NULL), buf, (size_t)len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        BIO_set_retry_write(b);
    return (int)n;
}

static int nosig_read(BIO *b, char *buf, int len)
{
    BIO_clear_retry_flags(b);
    ssize_t n = recv(BIO_get_fd(b, NULL), buf, (size_t)len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        BIO_set_retry_read(b);
    return (int)n;
}

static int nosig_puts(BIO *b, const char *s)
{
    return nosig_write(b, s, (int)strlen(s));
}

static void nosig_init(void)
{
    /* The stock socket BIO's ctrl (get/set fd, close flag, flush) is reused. */
    const BIO_METHOD *sock = BIO_s_socket();
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
                                 "keyhold nosigpipe socket");
    if (!m)
        return;
    if (!BIO_meth_set_write(m, nosig_write) || !BIO_meth_set_read(m, nosig_read) ||
        !BIO_meth_set_puts(m, nosig_puts) ||
        !BIO_meth_set_ctrl(m, BIO_meth_get_ctrl(sock)) ||
        !BIO_meth_set_create(m, BIO_meth_get_create(sock)) ||
        !BIO_meth_set_destroy(m, BIO_meth_get_destroy(sock))) {
        BIO_meth_free(m);
        return;
    }
    nosig_method = m;
}

/* Attach fd (not closed by the BIO) to ssl. */
static int ssl_set_fd(SSL *ssl, int fd)
{
    pthread_once(&nosig_once, nosig_init);
    if (!nosig_method) {
        detail("cannot create the socket BIO");
        return KH_WIRE_ENOMEM;
    }
    BIO *bio = BIO_new(nosig_method);
    if (!bio) {
        detail_ssl("BIO_new");
        return KH_WIRE_ENOMEM;
    }
    BIO_set_fd(bio, fd, BIO_NOCLOSE);
    SSL_set_bio(ssl, bio, bio);
    return KH_WIRE_OK;
}

/*
 * Drive an SSL call that may want to read or write: wait for the socket and
 * retry until it succeeds, fails, or the deadline passes.
 * Out: *ret: the call's return value on success.
 */
enum ssl_step { STEP_CONNECT, STEP_ACCEPT, STEP_READ, STEP_WRITE };

static int ssl_drive(kh_wire_conn *c, enum ssl_step step, void *buf, size_t len, size_t *done,
                     uint64_t deadline_ms)
{
    for (;;) {
        int r;
        size_t n = 0;
        ERR_clear_error();
        switch (step) {
        case STEP_CONNECT: r = SSL_connect(c->ssl); break;
        case STEP_ACCEPT: r = SSL_accept(c->ssl); break;
        case STEP_READ: r = SSL_read_ex(c->ssl, buf, len, &n); break;
        default: r = SSL_write_ex(c->ssl, buf, len, &n); break;
        }
        if (r > 0) {
            if (done)
                *done = n;
            return KH_WIRE_OK;
        }
        int e = SSL_get_error(c->ssl, r);
        short ev;
        if (e == SSL_ERROR_WANT_READ) {
            ev = POLLIN;
        } else if (e == SSL_ERROR_WANT_WRITE) {
            ev = POLLOUT;
        } else if (e == SSL_ERROR_ZERO_RETURN) {
            detail("peer closed the TLS session");
            return KH_WIRE_ECLOSED;
        } else if (e == SSL_ERROR_SYSCALL) {
            int en = errno;
            if (ERR_peek_error() == 0 && (en == 0 || en == ECONNRESET || en == EPIPE)) {
                detail("peer closed the connection");
                ERR_clear_error();
                return step == STEP_CONNECT || step == STEP_ACCEPT ? KH_WIRE_ETLS : KH_WIRE_ECLOSED;
            }
            detail("TLS socket error: %s", strerror(en));
            ERR_clear_error();
            return KH_WIRE_EIO;
        } else {
            if (step == STEP_CONNECT || step == STEP_ACCEPT) {
                long v = SSL_get_verify_result(c->ssl);
                if (v != X509_V_OK) {
                    detail("certificate verification failed: %s",
                           X509_verify_cert_error_string(v));
                    ERR_clear_error();
                } else {
                    detail_ssl("TLS handshake failed");
                }
                return KH_WIRE_ETLS;
            }
            detail_ssl("TLS error");
            /* A protocol error mid-stream (e.g. the peer spoke plain text). */
            return KH_WIRE_ETLS;
        }
        int rc = wait_fd(c->fd, ev, deadline_ms);
        if (rc != KH_WIRE_OK)
            return rc;
    }
}

static SSL_CTX *ctx_new(const kh_wire_tls *tls, bool server)
{
    SSL_CTX *ctx = SSL_CTX_new_ex(tls ? tls->libctx : NULL, NULL,
                                  server ? TLS_server_method() : TLS_client_method());
    if (!ctx) {
        detail_ssl("SSL_CTX_new");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
    return ctx;
}

static bool load_cert_key(SSL_CTX *ctx, const kh_wire_tls *tls)
{
    if (SSL_CTX_use_certificate_chain_file(ctx, tls->cert_file) != 1) {
        detail_ssl("cannot load the certificate");
        return false;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, tls->key_file ? tls->key_file : tls->cert_file,
                                    SSL_FILETYPE_PEM) != 1) {
        detail_ssl("cannot load the private key");
        return false;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        detail_ssl("the private key does not match the certificate");
        return false;
    }
    return true;
}

/* Client side: verify the server against ca_file (or the system store) and name. */
static int tls_client(kh_wire_conn *c, const kh_wire_url *url, const kh_wire_tls *tls,
                      uint64_t deadline_ms)
{
    int rc = KH_WIRE_ETLS;
    SSL_CTX *ctx = ctx_new(tls, false);
    if (!ctx)
        return KH_WIRE_ENOMEM;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (tls && tls->ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, tls->ca_file, NULL) != 1) {
            detail_ssl("cannot load the CA file");
            goto out_ctx;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        detail_ssl("cannot load the system CA store");
        goto out_ctx;
    }
    if (tls && tls->cert_file && !load_cert_key(ctx, tls))
        goto out_ctx;
    c->ssl = SSL_new(ctx);
    if (!c->ssl) {
        detail_ssl("SSL_new");
        rc = KH_WIRE_ENOMEM;
        goto out_ctx;
    }
    const char *name = tls && tls->server_name ? tls->server_name : url->host;
    unsigned char ip[16];
    bool is_ip = inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1;
    if (is_ip) {
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), name) != 1) {
            detail_ssl("cannot set the expected address");
            goto out_ctx;
        }
    } else if (SSL_set1_host(c->ssl, name) != 1 || SSL_set_tlsext_host_name(c->ssl, name) != 1) {
        detail_ssl("cannot set the expected host name");
        goto out_ctx;
    }
    rc = ssl_set_fd(c->ssl, c->fd);
    if (rc == KH_WIRE_OK)
        rc = ssl_drive(c, STEP_CONNECT, NULL, 0, NULL, deadline_ms);
out_ctx:
    SSL_CTX_free(ctx);   /* the SSL holds its own reference */
    return rc;
}

/* ---- connecting ---- */

static int stream_socket(int family)
{
    return socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
}

/*
 * Connect fd to addr before the deadline.
 * Returns: KH_WIRE_OK, KH_WIRE_ECONNECT, KH_WIRE_ETIMEDOUT, KH_WIRE_EIO.
 */
static int connect_fd(int fd, const struct sockaddr *addr, socklen_t len, uint64_t deadline_ms)
{
    for (;;) {
        if (connect(fd, addr, len) == 0)
            return KH_WIRE_OK;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN && addr->sa_family == AF_UNIX) {
            /* The listener's backlog is full: try again shortly. */
            int left = ms_left(deadline_ms);
            if (left < 0) {
                detail("deadline passed (listen queue full)");
                return KH_WIRE_ETIMEDOUT;
            }
            struct timespec ts = { 0, (left < 5 ? left : 5) * 1000000L };
            nanosleep(&ts, NULL);
            continue;
        }
        break;
    }
    if (errno != EINPROGRESS) {
        int en = errno;
        detail("connect: %s", strerror(en));
        return en == ENOMEM || en == ENOBUFS ? KH_WIRE_ENOMEM : KH_WIRE_ECONNECT;
    }
    int rc = wait_fd(fd, POLLOUT, deadline_ms);
    if (rc != KH_WIRE_OK)
        return rc;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) {
        detail("getsockopt: %s", strerror(errno));
        return KH_WIRE_EIO;
    }
    if (soerr != 0) {
        detail("connect: %s", strerror(soerr));
        return KH_WIRE_ECONNECT;
    }
    return KH_WIRE_OK;
}

/*
 * Resolve host:port before the deadline. Numeric addresses need no lookup;
 * names go through getaddrinfo_a so the wait is bounded. A lookup still
 * running at the deadline is cancelled, or, if the resolver cannot cancel
 * it, left to finish on its own (its small request block is then leaked
 * on purpose: the resolver's thread still writes to it).
 */
static int resolve(struct addrinfo **out, const char *host, uint32_t port, bool passive,
                   uint64_t deadline_ms)
{
    char service[8];
    snprintf(service, sizeof service, "%u", (unsigned)port);
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0) };
    unsigned char ip[16];
    if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1) {
        hints.ai_flags |= AI_NUMERICHOST;
        int r = getaddrinfo(host, service, &hints, out);
        if (r != 0) {
            detail("address %s: %s", host, gai_strerror(r));
            return KH_WIRE_EADDR;
        }
        return KH_WIRE_OK;
    }
    struct lookup {
        struct gaicb cb;
        struct addrinfo hints;
        char host[256];
        char service[8];
    } *lk = calloc(1, sizeof *lk);
    if (!lk)
        return KH_WIRE_ENOMEM;
    snprintf(lk->host, sizeof lk->host, "%s", host);
    memcpy(lk->service, service, sizeof service);
    lk->hints = hints;
    lk->cb.ar_name = lk->host;
    lk->cb.ar_service = lk->service;
    lk->cb.ar_request = &lk->hints;
    struct gaicb *list[1] = { &lk->cb };
    int r = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
    if (r != 0) {
        detail("resolving %s: %s", host, gai_strerror(r));
        free(lk);
        return KH_WIRE_EADDR;
    }
    for (;;) {
        r = gai_error(&lk->cb);
        if (r != EAI_INPROGRESS)
            break;
        int left = ms_left(deadline_ms);
        if (left < 0) {
            detail("resolving %s: deadline passed", host);
            if (gai_cancel(&lk->cb) == EAI_CANCELED)
                free(lk);
            /* else: still running, lk stays with the resolver */
            return KH_WIRE_ETIMEDOUT;
        }
        struct timespec ts = { left / 1000, (left % 1000) * 1000000L };
        const struct gaicb *wl[1] = { &lk->cb };
        gai_suspend(wl, 1, &ts);
    }
    if (r != 0) {
        detail("resolving %s: %s", host, gai_strerror(r));
        free(lk);
        return KH_WIRE_EADDR;
    }
    *out = lk->cb.ar_result;
    free(lk);
    return KH_WIRE_OK;
}

static void conn_new_fd(kh_wire_conn **out, int fd)
{
    kh_wire_conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        *out = NULL;
        return;
    }
    c->fd = fd;
    *out = c;
}

static int connect_inet(int *fd_out, const kh_wire_url *url, uint64_t deadline_ms)
{
    struct addrinfo *ai = NULL;
    int rc = resolve(&ai, url->host, url->port, false, deadline_ms);
    if (rc != KH_WIRE_OK)
        return rc;
    rc = KH_WIRE_ECONNECT;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        int fd = stream_socket(a->ai_family);
        if (fd < 0) {
            detail("socket: %s", strerror(errno));
            rc = KH_WIRE_EIO;
            continue;
        }
        rc = connect_fd(fd, a->ai_addr, a->ai_addrlen, deadline_ms);
        if (rc == KH_WIRE_OK) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            *fd_out = fd;
            break;
        }
        close(fd);
        if (rc == KH_WIRE_ETIMEDOUT)
            break;
    }
    freeaddrinfo(ai);
    return rc;
}

int kh_wire_connect(kh_wire_conn **conn, const kh_wire_url *url, const kh_wire_tls *tls,
                    uint64_t deadline_ms)
{
    int fd = -1, rc;
    *conn = NULL;
    wire_detail[0] = '\0';
    switch (url->kind) {
    case KH_WIRE_TCP:
    case KH_WIRE_TLS:
        rc = connect_inet(&fd, url, deadline_ms);
        break;
    case KH_WIRE_UNIX: {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        if (strlen(url->path) >= sizeof sa.sun_path) {
            detail("unix socket path too long");
            return KH_WIRE_EADDR;
        }
        memcpy(sa.sun_path, url->path, strlen(url->path) + 1);
        fd = stream_socket(AF_UNIX);
        if (fd < 0) {
            detail("socket: %s", strerror(errno));
            return KH_WIRE_EIO;
        }
        rc = connect_fd(fd, (struct sockaddr *)&sa, sizeof sa, deadline_ms);
        break;
    }
    case KH_WIRE_VSOCK: {
        struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = url->cid,
                                  .svm_port = url->port };
        fd = stream_socket(AF_VSOCK);
        if (fd < 0) {
            detail("vsock socket: %s", strerror(errno));
            return KH_WIRE_ECONNECT;
        }
        rc = connect_fd(fd, (struct sockaddr *)&sa, sizeof sa, deadline_ms);
        break;
    }
    default:
        detail("unknown transport");
        return KH_WIRE_EADDR;
    }
    if (rc != KH_WIRE_OK) {
        if (fd >= 0 && url->kind != KH_WIRE_TCP && url->kind != KH_WIRE_TLS)
            close(fd);
        return rc;
    }
    kh_wire_conn *c;
    conn_new_fd(&c, fd);
    if (!c)
        return KH_WIRE_ENOMEM;
    if (url->kind == KH_WIRE_TLS) {
        rc = tls_client(c, url, tls, deadline_ms);
        if (rc != KH_WIRE_OK) {
            kh_wire_close(c);
            return rc;
        }
    }
    *conn = c;
    return KH_WIRE_OK;
}

/* ---- frames ---- */

static int conn_write(kh_wire_conn *c, const uint8_t *p, size_t len, uint64_t deadline_ms)
{
    while (len) {
        size_t n = 0;
        if (c->ssl) {
            int rc = ssl_drive(c, STEP_WRITE, (void *)p, len, &n, deadline_ms);
            if (rc != KH_WIRE_OK)
                return rc;
        } else {
            ssize_t r = send(c->fd, p, len, MSG_NOSIGNAL);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    int rc = wait_fd(c->fd, POLLOUT, deadline_ms);
                    if (rc != KH_WIRE_OK)
                        return rc;
                    continue;
                }
                detail("send: %s", strerror(errno));
                return errno == EPIPE || errno == ECONNRESET ? KH_WIRE_ECLOSED : KH_WIRE_EIO;
            }
            n = (size_t)r;
        }
        p += n;
        len -= n;
    }
    return KH_WIRE_OK;
}

static int conn_read(kh_wire_conn *c, uint8_t *p, size_t len, uint64_t deadline_ms)
{
    while (len) {
        size_t n = 0;
        if (c->ssl) {
            int rc = ssl_drive(c, STEP_READ, p, len, &n, deadline_ms);
            if (rc != KH_WIRE_OK)
                return rc;
        } else {
            ssize_t r = recv(c->fd, p, len, 0);
            if (r == 0) {
                detail("peer closed the connection");
                return KH_WIRE_ECLOSED;
            }
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    int rc = wait_fd(c->fd, POLLIN, deadline_ms);
                    if (rc != KH_WIRE_OK)
                        return rc;
                    continue;
                }
                detail("recv: %s", strerror(errno));
                return errno == ECONNRESET ? KH_WIRE_ECLOSED : KH_WIRE_EIO;
            }
            n = (size_t)r;
        }
        p += n;
        len -= n;
    }
    return KH_WIRE_OK;
}

int kh_wire_send(kh_wire_conn *conn, const char *json, size_t len, uint64_t deadline_ms)
{
    if (!conn || conn->broken) {
        detail("connection unusable after an earlier error");
        return KH_WIRE_EIO;
    }
    if (len > KH_WIRE_FRAME_MAX) {
        detail("frame of %zu bytes exceeds the cap", len);
        return KH_WIRE_ETOOBIG;
    }
    int hrc = kh_wire_handshake(conn, deadline_ms);
    if (hrc != KH_WIRE_OK)
        return hrc;
    /* One write for header and body: one segment, one TLS record for small frames. */
    uint8_t stackbuf[4096];
    uint8_t *buf = len + 4 <= sizeof stackbuf ? stackbuf : malloc(len + 4);
    if (!buf)
        return KH_WIRE_ENOMEM;
    buf[0] = (uint8_t)(len >> 24);
    buf[1] = (uint8_t)(len >> 16);
    buf[2] = (uint8_t)(len >> 8);
    buf[3] = (uint8_t)len;
    if (len)
        memcpy(buf + 4, json, len);
    int rc = conn_write(conn, buf, len + 4, deadline_ms);
    if (buf != stackbuf)
        free(buf);
    if (rc != KH_WIRE_OK)
        conn->broken = true;
    return rc;
}

int kh_wire_recv(kh_wire_conn *conn, char **json, size_t *len, size_t cap, uint64_t deadline_ms)
{
    *json = NULL;
    *len = 0;
    if (!conn || conn->broken) {
        detail("connection unusable after an earlier error");
        return KH_WIRE_EIO;
    }
    if (cap > KH_WIRE_FRAME_MAX)
        cap = KH_WIRE_FRAME_MAX;
    int rc = kh_wire_handshake(conn, deadline_ms);
    if (rc != KH_WIRE_OK)
        return rc;
    uint8_t hdr[4];
    rc = conn_read(conn, hdr, sizeof hdr, deadline_ms);
    if (rc != KH_WIRE_OK)
        goto out_broken;
    uint32_t n = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
    if (n > cap) {
        detail("peer announced a frame of %u bytes (cap %zu)", (unsigned)n, cap);
        rc = KH_WIRE_ETOOBIG;
        goto out_broken;
    }
    char *body = malloc((size_t)n + 1);
    if (!body) {
        rc = KH_WIRE_ENOMEM;
        goto out_broken;
    }
    rc = conn_read(conn, (uint8_t *)body, n, deadline_ms);
    if (rc != KH_WIRE_OK) {
        free(body);
        goto out_broken;
    }
    body[n] = '\0';
    *json = body;
    *len = n;
    return KH_WIRE_OK;
out_broken:
    conn->broken = true;
    return rc;
}

int kh_wire_conn_fd(const kh_wire_conn *conn)
{
    return conn ? conn->fd : -1;
}

bool kh_wire_conn_buffered(const kh_wire_conn *conn)
{
    /* Plain streams read exactly a frame's bytes and keep nothing back. */
    return conn && !conn->broken && conn->ssl && !conn->handshake_pending &&
           (SSL_pending(conn->ssl) > 0 || SSL_has_pending(conn->ssl));
}

bool kh_wire_conn_idle_ok(kh_wire_conn *conn)
{
    if (!conn || conn->broken)
        return false;
    struct pollfd p = { .fd = conn->fd, .events = POLLIN };
    int n = poll(&p, 1, 0);
    if (n == 0)
        return true;                    /* nothing pending: alive as far as we can tell */
    if (n < 0 || (p.revents & (POLLERR | POLLNVAL)))
        return false;
    if (conn->ssl) {
        /* TLS may carry records that are not data (session tickets, key
         * updates): let OpenSSL consume them; data or a close means "not idle". */
        char b;
        size_t got = 0;
        ERR_clear_error();
        int r = SSL_peek_ex(conn->ssl, &b, 1, &got);
        if (r > 0)
            return false;
        int e = SSL_get_error(conn->ssl, r);
        ERR_clear_error();
        return e == SSL_ERROR_WANT_READ;
    }
    char b;
    ssize_t r = recv(conn->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return true;
    return false;                       /* EOF, error, or data nobody asked for */
}

void kh_wire_close(kh_wire_conn *conn)
{
    if (!conn)
        return;
    if (conn->ssl) {
        if (!conn->broken && !conn->handshake_pending)
            SSL_shutdown(conn->ssl);   /* best effort, non-blocking: one close_notify */
        SSL_free(conn->ssl);
        ERR_clear_error();
    }
    if (conn->fd >= 0)
        close(conn->fd);
    free(conn);
}

void kh_wire_abandon(kh_wire_conn *conn)
{
    if (!conn)
        return;
    conn->broken = true;
    kh_wire_close(conn);
}

/* ---- listening ---- */

/*
 * A unix socket file at path may be replaced only if nothing listens on it.
 * Returns: KH_WIRE_OK (absent or removed) or KH_WIRE_EADDR.
 */
static int unix_clear_stale(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? KH_WIRE_OK : (detail("%s: %s", path, strerror(errno)), KH_WIRE_EADDR);
    if (!S_ISSOCK(st.st_mode)) {
        detail("%s exists and is not a socket", path);
        return KH_WIRE_EADDR;
    }
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        detail("socket: %s", strerror(errno));
        return KH_WIRE_EADDR;
    }
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int en = errno;
    close(fd);
    if (r == 0 || en == EAGAIN) {
        detail("%s: another process listens on it", path);
        return KH_WIRE_EADDR;
    }
    if (en != ECONNREFUSED) {
        detail("%s: %s", path, strerror(en));
        return KH_WIRE_EADDR;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        detail("cannot remove stale socket %s: %s", path, strerror(errno));
        return KH_WIRE_EADDR;
    }
    return KH_WIRE_OK;
}

static int listen_fail(kh_wire_listener *l, char *err, size_t errlen, int rc)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", wire_detail[0] ? wire_detail : kh_wire_strerror(rc));
    kh_wire_listener_close(l);
    return rc;
}

int kh_wire_listen(kh_wire_listener **listener, char *err, size_t errlen,
                   const kh_wire_url *url, const kh_wire_tls *tls)
{
    *listener = NULL;
    wire_detail[0] = '\0';
    if (err && errlen)
        err[0] = '\0';
    kh_wire_listener *l = calloc(1, sizeof *l);
    if (!l)
        return KH_WIRE_ENOMEM;
    l->fd = -1;
    l->kind = url->kind;
    int rc = KH_WIRE_EADDR;

    if (url->kind == KH_WIRE_TLS) {
        if (!tls || !tls->cert_file) {
            detail("a TLS listener needs a certificate and key");
            return listen_fail(l, err, errlen, KH_WIRE_ETLS);
        }
        l->ctx = ctx_new(tls, true);
        if (!l->ctx)
            return listen_fail(l, err, errlen, KH_WIRE_ETLS);
        SSL_CTX_set_num_tickets(l->ctx, 0);   /* nothing unsolicited on an idle connection */
        if (!load_cert_key(l->ctx, tls))
            return listen_fail(l, err, errlen, KH_WIRE_ETLS);
        if (tls->ca_file) {
            if (SSL_CTX_load_verify_locations(l->ctx, tls->ca_file, NULL) != 1) {
                detail_ssl("cannot load the client CA file");
                return listen_fail(l, err, errlen, KH_WIRE_ETLS);
            }
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(tls->ca_file);
            if (names)
                SSL_CTX_set_client_CA_list(l->ctx, names);
            SSL_CTX_set_verify(l->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        }
    }

    switch (url->kind) {
    case KH_WIRE_TCP:
    case KH_WIRE_TLS: {
        struct addrinfo *ai = NULL;
        rc = resolve(&ai, url->host, url->port, true, kh_wire_now_ms() + 10000);
        if (rc != KH_WIRE_OK)
            return listen_fail(l, err, errlen, rc);
        rc = KH_WIRE_EADDR;
        for (struct addrinfo *a = ai; a; a = a->ai_next) {
            int fd = stream_socket(a->ai_family);
            if (fd < 0)
                continue;
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 128) == 0) {
                l->fd = fd;
                rc = KH_WIRE_OK;
                break;
            }
            detail("bind %s:%u: %s", url->host, (unsigned)url->port, strerror(errno));
            close(fd);
        }
        freeaddrinfo(ai);
        break;
    }
    case KH_WIRE_UNIX: {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        memcpy(sa.sun_path, url->path, strlen(url->path) + 1);
        rc = unix_clear_stale(url->path);
        if (rc != KH_WIRE_OK)
            break;
        rc = KH_WIRE_EADDR;
        int fd = stream_socket(AF_UNIX);
        if (fd < 0) {
            detail("socket: %s", strerror(errno));
            break;
        }
        /* On Linux the mode of the socket inode becomes the file's mode at bind. */
        fchmod(fd, 0600);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            detail("bind %s: %s", url->path, strerror(errno));
            close(fd);
            break;
        }
        struct stat st;
        if (chmod(url->path, 0600) != 0 || lstat(url->path, &st) != 0 || listen(fd, 128) != 0) {
            detail("%s: %s", url->path, strerror(errno));
            unlink(url->path);
            close(fd);
            break;
        }
        snprintf(l->path, sizeof l->path, "%s", url->path);
        l->dev = st.st_dev;
        l->ino = st.st_ino;
        l->fd = fd;
        rc = KH_WIRE_OK;
        break;
    }
    case KH_WIRE_VSOCK: {
        struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = url->cid,
                                  .svm_port = url->port };
        int fd = stream_socket(AF_VSOCK);
        if (fd < 0) {
            detail("vsock socket: %s", strerror(errno));
            break;
        }
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 128) != 0) {
            detail("vsock bind %u:%u: %s", (unsigned)url->cid, (unsigned)url->port,
                   strerror(errno));
            close(fd);
            break;
        }
        l->fd = fd;
        rc = KH_WIRE_OK;
        break;
    }
    }
    if (rc != KH_WIRE_OK)
        return listen_fail(l, err, errlen, rc);
    *listener = l;
    return KH_WIRE_OK;
}

int kh_wire_listener_fd(const kh_wire_listener *listener)
{
    return listener ? listener->fd : -1;
}

int kh_wire_accept_pending(kh_wire_listener *listener, kh_wire_conn **conn, uint64_t deadline_ms)
{
    *conn = NULL;
    wire_detail[0] = '\0';
    int fd;
    for (;;) {
        fd = accept4(listener->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            break;
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int rc = wait_fd(listener->fd, POLLIN, deadline_ms);
            if (rc != KH_WIRE_OK)
                return rc;
            continue;
        }
        detail("accept: %s", strerror(errno));
        return errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS
                   ? KH_WIRE_ENOMEM : KH_WIRE_EIO;
    }
    if (listener->kind == KH_WIRE_TCP || listener->kind == KH_WIRE_TLS) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    kh_wire_conn *c;
    conn_new_fd(&c, fd);
    if (!c)
        return KH_WIRE_ENOMEM;
    if (listener->ctx) {
        c->ssl = SSL_new(listener->ctx);
        int rc = c->ssl ? ssl_set_fd(c->ssl, fd) : KH_WIRE_ENOMEM;
        if (rc != KH_WIRE_OK) {
            if (!c->ssl)
                detail_ssl("SSL_new");
            c->broken = true;
            kh_wire_close(c);
            return rc;
        }
        SSL_set_accept_state(c->ssl);
        c->handshake_pending = true;
    }
    *conn = c;
    return KH_WIRE_OK;
}

int kh_wire_handshake(kh_wire_conn *conn, uint64_t deadline_ms)
{
    if (!conn || conn->broken) {
        detail("connection unusable after an earlier error");
        return KH_WIRE_EIO;
    }
    if (!conn->handshake_pending)
        return KH_WIRE_OK;
    int rc = ssl_drive(conn, STEP_ACCEPT, NULL, 0, NULL, deadline_ms);
    if (rc != KH_WIRE_OK) {
        conn->broken = true;
        return rc;
    }
    conn->handshake_pending = false;
    return KH_WIRE_OK;
}

int kh_wire_accept(kh_wire_listener *listener, kh_wire_conn **conn, uint64_t deadline_ms)
{
    kh_wire_conn *c;
    int rc = kh_wire_accept_pending(listener, &c, deadline_ms);
    if (rc != KH_WIRE_OK)
        return rc;
    rc = kh_wire_handshake(c, deadline_ms);
    if (rc != KH_WIRE_OK) {
        kh_wire_close(c);
        return rc;
    }
    *conn = c;
    return KH_WIRE_OK;
}

void kh_wire_listener_close(kh_wire_listener *listener)
{
    if (!listener)
        return;
    if (listener->fd >= 0)
        close(listener->fd);
    if (listener->path[0]) {
        struct stat st;
        if (lstat(listener->path, &st) == 0 && st.st_dev == listener->dev &&
            st.st_ino == listener->ino)
            unlink(listener->path);
    }
    SSL_CTX_free(listener->ctx);
    free(listener);
}

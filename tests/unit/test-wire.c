/*
 * Unit tests for the signer protocol's transports and framing
 * (module/backend/remote/wire.c): URL forms, frame round trips over unix and
 * TCP, the frame cap, a peer closing mid-frame, deadlines, and TLS with a CA
 * and certificates made by openssl at run time.
 *
 * The binary is linked with -Wl,--wrap=malloc so the test sees every
 * allocation wire.c makes: a 4 GiB length prefix must be refused without a
 * large allocation (the largest request is recorded).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "testutil.h"
#include "wire.h"

/* ---- allocation watch ---- */

void *__real_malloc(size_t n);
void *__wrap_malloc(size_t n);
static size_t largest_malloc;
static pthread_mutex_t malloc_mu = PTHREAD_MUTEX_INITIALIZER;

void *__wrap_malloc(size_t n)
{
    pthread_mutex_lock(&malloc_mu);
    if (n > largest_malloc)
        largest_malloc = n;
    pthread_mutex_unlock(&malloc_mu);
    return __real_malloc(n);
}

static void malloc_watch_reset(void)
{
    pthread_mutex_lock(&malloc_mu);
    largest_malloc = 0;
    pthread_mutex_unlock(&malloc_mu);
}

static size_t malloc_watch_largest(void)
{
    pthread_mutex_lock(&malloc_mu);
    size_t n = largest_malloc;
    pthread_mutex_unlock(&malloc_mu);
    return n;
}

/* ---- helpers ---- */

static uint64_t soon(unsigned ms)
{
    return kh_wire_now_ms() + ms;
}

/* A TCP port that was free a moment ago on 127.0.0.1. */
static unsigned free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        perror("free_port");
        exit(2);
    }
    close(fd);
    return ntohs(sa.sin_port);
}

static void url_or_die(kh_wire_url *u, const char *s)
{
    char err[128];
    if (kh_wire_url_parse(u, err, sizeof err, s) != KH_WIRE_OK) {
        fprintf(stderr, "bad test URL %s: %s\n", s, err);
        exit(2);
    }
}

static kh_wire_listener *listen_or_fail(const char *url_s, const kh_wire_tls *tls)
{
    kh_wire_url u;
    kh_wire_listener *l = NULL;
    char err[256];
    url_or_die(&u, url_s);
    int rc = kh_wire_listen(&l, err, sizeof err, &u, tls);
    if (rc != KH_WIRE_OK)
        kh_test_fail(__FILE__, __LINE__, "listen %s: %d %s", url_s, rc, err);
    return l;
}

static kh_wire_conn *connect_or_fail(const char *url_s, const kh_wire_tls *tls)
{
    kh_wire_url u;
    kh_wire_conn *c = NULL;
    url_or_die(&u, url_s);
    int rc = kh_wire_connect(&c, &u, tls, soon(5000));
    if (rc != KH_WIRE_OK)
        kh_test_fail(__FILE__, __LINE__, "connect %s: %d %s", url_s, rc, kh_wire_detail());
    return c;
}

/* ---- URL parsing ---- */

static void test_url_forms(void)
{
    kh_wire_url u;
    char err[128];
    KH_CHECK_RV(kh_wire_url_parse(&u, err, sizeof err, "tcp://127.0.0.1:7000"), KH_WIRE_OK);
    KH_CHECK(u.kind == KH_WIRE_TCP && !strcmp(u.host, "127.0.0.1") && u.port == 7000);
    KH_CHECK_RV(kh_wire_url_parse(&u, err, sizeof err, "tls://signer.example:443"), KH_WIRE_OK);
    KH_CHECK(u.kind == KH_WIRE_TLS && !strcmp(u.host, "signer.example") && u.port == 443);
    KH_CHECK_RV(kh_wire_url_parse(&u, err, sizeof err, "tcp://[::1]:65535"), KH_WIRE_OK);
    KH_CHECK(u.kind == KH_WIRE_TCP && !strcmp(u.host, "::1") && u.port == 65535);
    KH_CHECK_RV(kh_wire_url_parse(&u, err, sizeof err, "tls://[2001:db8::1]:1"), KH_WIRE_OK);
    KH_CHECK(!strcmp(u.host, "2001:db8::1") && u.port == 1);
    KH_CHECK_RV(kh_wire_url_parse(&u, err, sizeof err, "unix:/run/keyhold/signd.sock"), KH_WIRE_OK);
    KH_CHECK(u.kind == KH_WIRE_UNIX && !strcmp(u.path, "/run/keyhold/signd.sock"));
    KH_CHECK_RV(kh_wire_url_parse(&u, err, sizeof err, "unix:rel.sock"), KH_WIRE_OK);
    KH_CHECK(u.kind == KH_WIRE_UNIX && !strcmp(u.path, "rel.sock"));
    KH_CHECK_RV(kh_wire_url_parse(&u, err, sizeof err, "vsock://3:5000"), KH_WIRE_OK);
    KH_CHECK(u.kind == KH_WIRE_VSOCK && u.cid == 3 && u.port == 5000);
    KH_CHECK_RV(kh_wire_url_parse(&u, err, sizeof err, "vsock://4294967295:4294967295"), KH_WIRE_OK);
    KH_CHECK(u.cid == 4294967295u && u.port == 4294967295u);
    /* exactly 107 bytes of path fit sun_path with its NUL */
    char longp[5 + 108 + 1];
    memcpy(longp, "unix:", 5);
    memset(longp + 5, 'a', 107);
    longp[5 + 107] = '\0';
    KH_CHECK_RV(kh_wire_url_parse(&u, err, sizeof err, longp), KH_WIRE_OK);
    KH_CHECK(strlen(u.path) == 107);
}

static void test_url_errors(void)
{
    static const char *bad[] = {
        "", "tcp://", "tcp://host", "tcp://host:", "tcp://:80", "tcp://host:0", "tcp://host:65536",
        "tcp://host:80/path", "tcp://host:80x", "tcp://host:-1", "tcp://ho st:80", "tcp://::1:80",
        "tcp://[::1]80", "tcp://[::1:80", "tcp://[zz]:80", "tcp://[]:80", "http://host:80",
        "TCP://host:80", "tls://host", "unix:", "vsock://", "vsock://3", "vsock://3:", "vsock://:5",
        "vsock://x:5", "vsock://3:5x", "vsock://4294967296:1", "vsock://1:4294967296",
        "tcp://user@host:80", "tcp://host:99999999999", "tcp://[fe80::1%eth0]:1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kh_wire_url u;
        char err[128] = "";
        int rc = kh_wire_url_parse(&u, err, sizeof err, bad[i]);
        if (rc != KH_WIRE_EADDR)
            kh_test_fail(__FILE__, __LINE__, "'%s' accepted", bad[i]);
        else if (!err[0])
            kh_test_fail(__FILE__, __LINE__, "'%s' refused without a reason", bad[i]);
    }
    char longp[5 + 200];
    memcpy(longp, "unix:", 5);
    memset(longp + 5, 'a', 108);
    longp[5 + 108] = '\0';
    kh_wire_url u;
    KH_CHECK_RV(kh_wire_url_parse(&u, NULL, 0, longp), KH_WIRE_EADDR);
    char longh[300];
    snprintf(longh, sizeof longh, "tcp://%0256d:1", 0);
    KH_CHECK_RV(kh_wire_url_parse(&u, NULL, 0, longh), KH_WIRE_EADDR);
    KH_CHECK_RV(kh_wire_url_parse(&u, NULL, 0, NULL), KH_WIRE_EADDR);
}

/* AF_VSOCK loopback is not available on these machines: the error path. */
static void test_vsock_error(void)
{
    kh_wire_url u;
    url_or_die(&u, "vsock://1:40123");
    kh_wire_conn *c = (kh_wire_conn *)1;
    uint64_t t0 = kh_wire_now_ms();
    int rc = kh_wire_connect(&c, &u, NULL, t0 + 1000);
    printf("# vsock connect: %s (%s) after %llu ms\n", kh_wire_strerror(rc), kh_wire_detail(),
           (unsigned long long)(kh_wire_now_ms() - t0));
    if (rc == KH_WIRE_OK) {
        /* a machine with vsock loopback: then it must also work */
        kh_wire_close(c);
    } else {
        KH_CHECK(rc == KH_WIRE_ECONNECT || rc == KH_WIRE_ETIMEDOUT);
        KH_CHECK(c == NULL);
    }
    kh_wire_listener *l = (kh_wire_listener *)1;
    char err[200] = "";
    rc = kh_wire_listen(&l, err, sizeof err, &u, NULL);
    printf("# vsock listen: %s (%s)\n", kh_wire_strerror(rc), err);
    if (rc == KH_WIRE_OK) {
        kh_wire_listener_close(l);
    } else {
        KH_CHECK_RV(rc, KH_WIRE_EADDR);
        KH_CHECK(l == NULL && err[0]);
    }
}

/* ---- an echo server on a thread ---- */

struct server {
    kh_wire_listener *l;
    int accept_rc;           /* result of kh_wire_accept */
    int end_rc;              /* how the echo loop ended */
    unsigned frames;
    pthread_t th;
};

static void *echo_main(void *arg)
{
    struct server *s = arg;
    kh_wire_conn *c = NULL;
    s->accept_rc = kh_wire_accept(s->l, &c, soon(10000));
    if (s->accept_rc != KH_WIRE_OK)
        return NULL;
    for (;;) {
        char *buf;
        size_t len;
        int rc = kh_wire_recv(c, &buf, &len, KH_WIRE_FRAME_MAX, soon(10000));
        if (rc != KH_WIRE_OK) {
            s->end_rc = rc;
            break;
        }
        rc = kh_wire_send(c, buf, len, soon(10000));
        free(buf);
        if (rc != KH_WIRE_OK) {
            s->end_rc = rc;
            break;
        }
        s->frames++;
    }
    kh_wire_close(c);
    return NULL;
}

static void server_start(struct server *s, kh_wire_listener *l)
{
    memset(s, 0, sizeof *s);
    s->l = l;
    s->accept_rc = 99;
    pthread_create(&s->th, NULL, echo_main, s);
}

static void server_join(struct server *s)
{
    pthread_join(s->th, NULL);
    kh_wire_listener_close(s->l);
}

/* Send frames of several sizes and expect them back byte for byte. */
static void round_trips(kh_wire_conn *c)
{
    static const size_t sizes[] = { 0, 1, 2, 17, 4091, 4092, 4096, 65536, 300000, KH_WIRE_FRAME_MAX };
    char *msg = malloc(KH_WIRE_FRAME_MAX);
    uint64_t x = kh_test_seed() | 1;
    for (size_t i = 0; i < KH_WIRE_FRAME_MAX; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        msg[i] = (char)(' ' + x % 90);
    }
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        malloc_watch_reset();
        KH_CHECK_RV(kh_wire_send(c, msg, sizes[i], soon(10000)), KH_WIRE_OK);
        char *back = NULL;
        size_t len = 0;
        KH_CHECK_RV(kh_wire_recv(c, &back, &len, KH_WIRE_FRAME_MAX, soon(10000)), KH_WIRE_OK);
        KH_CHECK(back && len == sizes[i]);
        if (back && len == sizes[i]) {
            KH_CHECK(memcmp(back, msg, len) == 0);
            KH_CHECK(back[len] == '\0');
        }
        free(back);
        if (sizes[i] == 300000)   /* the watch sees wire.c's allocations */
            KH_CHECK(malloc_watch_largest() >= 300001);
    }
    /* one byte over the cap is refused before anything is sent, and the
     * connection stays usable */
    KH_CHECK_RV(kh_wire_send(c, msg, KH_WIRE_FRAME_MAX + 1, soon(1000)), KH_WIRE_ETOOBIG);
    KH_CHECK_RV(kh_wire_send(c, "{}", 2, soon(5000)), KH_WIRE_OK);
    char *back = NULL;
    size_t len = 0;
    KH_CHECK_RV(kh_wire_recv(c, &back, &len, KH_WIRE_FRAME_MAX, soon(5000)), KH_WIRE_OK);
    KH_CHECK(back && len == 2 && !memcmp(back, "{}", 2));
    free(back);
    free(msg);
}

static void test_unix_roundtrip(void)
{
    char url[300], path[256];
    snprintf(path, sizeof path, "%s/s.sock", kh_test_tmpdir());
    snprintf(url, sizeof url, "unix:%s", path);
    struct server s;
    kh_wire_listener *l = listen_or_fail(url, NULL);
    if (!l)
        return;
    struct stat st;
    KH_CHECK(lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0600);
    server_start(&s, l);
    kh_wire_conn *c = connect_or_fail(url, NULL);
    if (c) {
        round_trips(c);
        kh_wire_close(c);
    }
    server_join(&s);
    KH_CHECK_RV(s.accept_rc, KH_WIRE_OK);
    KH_CHECK_RV(s.end_rc, KH_WIRE_ECLOSED);  /* we closed between frames */
    KH_CHECK(s.frames == 11);
    KH_CHECK(lstat(path, &st) != 0 && errno == ENOENT);   /* removed on close */
}

static void test_unix_socket_file(void)
{
    char url[300], path[256];
    const char *dir = kh_test_tmpdir();
    kh_wire_url u;
    kh_wire_listener *l = NULL, *l2 = NULL;
    char err[256];

    /* a live listener is not replaced */
    snprintf(path, sizeof path, "%s/live.sock", dir);
    snprintf(url, sizeof url, "unix:%s", path);
    l = listen_or_fail(url, NULL);
    url_or_die(&u, url);
    KH_CHECK_RV(kh_wire_listen(&l2, err, sizeof err, &u, NULL), KH_WIRE_EADDR);
    KH_CHECK(l2 == NULL && strstr(err, "listens"));
    kh_wire_listener_close(l);

    /* a stale socket file (nobody listens) is replaced */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, path, strlen(path) < sizeof sa.sun_path ? strlen(path) + 1 : 0);
    KH_CHECK(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    close(fd);
    KH_CHECK_RV(kh_wire_listen(&l, err, sizeof err, &u, NULL), KH_WIRE_OK);
    kh_wire_listener_close(l);

    /* a regular file is never removed */
    snprintf(path, sizeof path, "%s/file", dir);
    FILE *f = fopen(path, "w");
    fputs("keep me", f);
    fclose(f);
    snprintf(url, sizeof url, "unix:%s", path);
    url_or_die(&u, url);
    KH_CHECK_RV(kh_wire_listen(&l, err, sizeof err, &u, NULL), KH_WIRE_EADDR);
    struct stat st;
    KH_CHECK(stat(path, &st) == 0 && S_ISREG(st.st_mode));

    /* nothing at the path: connection refused, quickly */
    snprintf(url, sizeof url, "unix:%s/none.sock", dir);
    url_or_die(&u, url);
    kh_wire_conn *c = NULL;
    KH_CHECK_RV(kh_wire_connect(&c, &u, NULL, soon(2000)), KH_WIRE_ECONNECT);
    KH_CHECK(c == NULL);
}

static void test_tcp_roundtrip(void)
{
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%u", free_port());
    struct server s;
    kh_wire_listener *l = listen_or_fail(url, NULL);
    if (!l)
        return;
    server_start(&s, l);
    kh_wire_conn *c = connect_or_fail(url, NULL);
    if (c) {
        round_trips(c);
        kh_wire_close(c);
    }
    server_join(&s);
    KH_CHECK_RV(s.accept_rc, KH_WIRE_OK);
    KH_CHECK(s.frames == 11);

    /* by name: localhost resolves (through the bounded resolver path) */
    snprintf(url, sizeof url, "tcp://localhost:%u", free_port());
    kh_wire_url u;
    url_or_die(&u, url);
    char err[256];
    l = NULL;
    if (kh_wire_listen(&l, err, sizeof err, &u, NULL) == KH_WIRE_OK) {
        server_start(&s, l);
        c = connect_or_fail(url, NULL);
        if (c) {
            KH_CHECK_RV(kh_wire_send(c, "{\"a\":1}", 7, soon(5000)), KH_WIRE_OK);
            char *b = NULL;
            size_t n = 0;
            KH_CHECK_RV(kh_wire_recv(c, &b, &n, 100, soon(5000)), KH_WIRE_OK);
            KH_CHECK(n == 7 && b && !strcmp(b, "{\"a\":1}"));
            free(b);
            kh_wire_close(c);
        }
        server_join(&s);
    } else {
        kh_test_fail(__FILE__, __LINE__, "listen on localhost: %s", err);
    }

    /* a port nobody listens on: refused */
    snprintf(url, sizeof url, "tcp://127.0.0.1:%u", free_port());
    url_or_die(&u, url);
    c = NULL;
    KH_CHECK_RV(kh_wire_connect(&c, &u, NULL, soon(2000)), KH_WIRE_ECONNECT);
    KH_CHECK(c == NULL);
}

/* ---- misbehaving peers (raw sockets on a thread) ---- */

struct raw_peer {
    int lfd;
    const uint8_t *bytes;    /* written after accept */
    size_t len;
    unsigned hold_ms;        /* stay silent this long before closing */
    pthread_t th;
};

static void *raw_main(void *arg)
{
    struct raw_peer *p = arg;
    int fd = accept(p->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    if (p->len)
        (void)!write(fd, p->bytes, p->len);
    if (p->hold_ms)
        usleep(p->hold_ms * 1000u);
    close(fd);
    return NULL;
}

/* Listen on a unix socket in a fresh directory; url_out gets its URL. */
static int raw_listen(char *url_out, size_t url_len)
{
    char path[256];
    snprintf(path, sizeof path, "%s/raw.sock", kh_test_tmpdir());
    snprintf(url_out, url_len, "unix:%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, path, strlen(path) < sizeof sa.sun_path ? strlen(path) + 1 : 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 4) != 0) {
        perror("raw_listen");
        exit(2);
    }
    return fd;
}

static void raw_start(struct raw_peer *p, int lfd, const void *bytes, size_t len, unsigned hold_ms)
{
    memset(p, 0, sizeof *p);
    p->lfd = lfd;
    p->bytes = bytes;
    p->len = len;
    p->hold_ms = hold_ms;
    pthread_create(&p->th, NULL, raw_main, p);
}

static void test_cap(void)
{
    char url[300];
    int lfd = raw_listen(url, sizeof url);
    struct raw_peer p;

    /* a 4 GiB - 1 length prefix: refused at once, nothing large allocated */
    static const uint8_t huge[] = { 0xff, 0xff, 0xff, 0xff, '{', '}' };
    raw_start(&p, lfd, huge, sizeof huge, 2000);
    kh_wire_conn *c = connect_or_fail(url, NULL);
    char *buf = (char *)1;
    size_t len = 7;
    malloc_watch_reset();
    uint64_t t0 = kh_wire_now_ms();
    KH_CHECK_RV(kh_wire_recv(c, &buf, &len, KH_WIRE_FRAME_MAX, soon(5000)), KH_WIRE_ETOOBIG);
    uint64_t dt = kh_wire_now_ms() - t0;
    size_t big = malloc_watch_largest();
    printf("# 4 GiB prefix refused after %llu ms; largest allocation meanwhile %zu bytes\n",
           (unsigned long long)dt, big);
    KH_CHECK(big < 4096);
    KH_CHECK(buf == NULL && len == 0);
    /* the body was not read: its bytes still wait in the socket */
    char peek[2];
    KH_CHECK(recv(kh_wire_conn_fd(c), peek, 2, MSG_PEEK | MSG_DONTWAIT) == 2 && peek[0] == '{');
    /* the connection is dead from now on */
    KH_CHECK_RV(kh_wire_recv(c, &buf, &len, KH_WIRE_FRAME_MAX, soon(100)), KH_WIRE_EIO);
    KH_CHECK_RV(kh_wire_send(c, "{}", 2, soon(100)), KH_WIRE_EIO);
    kh_wire_close(c);
    pthread_join(p.th, NULL);

    /* a smaller caller cap is honoured the same way: 101 > 100 */
    static const uint8_t over[] = { 0, 0, 0, 101 };
    raw_start(&p, lfd, over, sizeof over, 2000);
    c = connect_or_fail(url, NULL);
    malloc_watch_reset();
    KH_CHECK_RV(kh_wire_recv(c, &buf, &len, 100, soon(5000)), KH_WIRE_ETOOBIG);
    KH_CHECK(malloc_watch_largest() < 101);
    kh_wire_close(c);
    pthread_join(p.th, NULL);

    /* and the 1 MiB + 1 prefix against the protocol cap */
    static const uint8_t mib1[] = { 0x00, 0x10, 0x00, 0x01 };
    raw_start(&p, lfd, mib1, sizeof mib1, 2000);
    c = connect_or_fail(url, NULL);
    malloc_watch_reset();
    KH_CHECK_RV(kh_wire_recv(c, &buf, &len, SIZE_MAX, soon(5000)), KH_WIRE_ETOOBIG);
    KH_CHECK(malloc_watch_largest() < 4096);
    kh_wire_close(c);
    pthread_join(p.th, NULL);
    close(lfd);
}

static void test_closed_mid_frame(void)
{
    char url[300];
    int lfd = raw_listen(url, sizeof url);
    struct raw_peer p;
    /* announces 100 bytes, sends 10, closes */
    static const uint8_t partial[] = { 0, 0, 0, 100, '{', '"', 'a', '"', ':', '1', '2', '3', '4', '5' };
    raw_start(&p, lfd, partial, sizeof partial, 0);
    kh_wire_conn *c = connect_or_fail(url, NULL);
    char *buf = NULL;
    size_t len = 0;
    KH_CHECK_RV(kh_wire_recv(c, &buf, &len, KH_WIRE_FRAME_MAX, soon(5000)), KH_WIRE_ECLOSED);
    KH_CHECK(buf == NULL);
    kh_wire_close(c);
    pthread_join(p.th, NULL);

    /* closes inside the length prefix */
    static const uint8_t half[] = { 0, 0 };
    raw_start(&p, lfd, half, sizeof half, 0);
    c = connect_or_fail(url, NULL);
    KH_CHECK_RV(kh_wire_recv(c, &buf, &len, KH_WIRE_FRAME_MAX, soon(5000)), KH_WIRE_ECLOSED);
    kh_wire_close(c);
    pthread_join(p.th, NULL);

    /* closes before anything: a pooled connection the peer dropped */
    raw_start(&p, lfd, NULL, 0, 0);
    c = connect_or_fail(url, NULL);
    pthread_join(p.th, NULL);
    usleep(20000);
    KH_CHECK(!kh_wire_conn_idle_ok(c));
    KH_CHECK_RV(kh_wire_recv(c, &buf, &len, KH_WIRE_FRAME_MAX, soon(5000)), KH_WIRE_ECLOSED);
    kh_wire_close(c);

    /* sending to a closed peer fails with an error, not SIGPIPE */
    raw_start(&p, lfd, NULL, 0, 0);
    c = connect_or_fail(url, NULL);
    pthread_join(p.th, NULL);
    usleep(20000);
    char *big = calloc(1, 512 * 1024);
    int rc = KH_WIRE_OK;
    for (int i = 0; i < 8 && rc == KH_WIRE_OK; i++)
        rc = kh_wire_send(c, big, 512 * 1024, soon(5000));
    KH_CHECK(rc == KH_WIRE_ECLOSED || rc == KH_WIRE_EIO);
    free(big);
    kh_wire_close(c);
    close(lfd);
}

static void test_deadlines(void)
{
    char url[300];
    int lfd = raw_listen(url, sizeof url);
    struct raw_peer p;

    /* a silent peer: ETIMEDOUT, not before the deadline */
    raw_start(&p, lfd, NULL, 0, 3000);
    kh_wire_conn *c = connect_or_fail(url, NULL);
    KH_CHECK(kh_wire_conn_idle_ok(c));
    char *buf = NULL;
    size_t len = 0;
    uint64_t t0 = kh_wire_now_ms();
    KH_CHECK_RV(kh_wire_recv(c, &buf, &len, KH_WIRE_FRAME_MAX, t0 + 300), KH_WIRE_ETIMEDOUT);
    uint64_t dt = kh_wire_now_ms() - t0;
    printf("# silent peer: ETIMEDOUT after %llu ms (deadline 300 ms)\n", (unsigned long long)dt);
    KH_CHECK(dt >= 300);
    KH_CHECK(dt < 2500);   /* returned while the peer still held the connection open */
    kh_wire_close(c);
    pthread_join(p.th, NULL);

    /* a peer that stalls mid-frame */
    static const uint8_t partial[] = { 0, 0, 0, 50, '{' };
    raw_start(&p, lfd, partial, sizeof partial, 3000);
    c = connect_or_fail(url, NULL);
    t0 = kh_wire_now_ms();
    KH_CHECK_RV(kh_wire_recv(c, &buf, &len, KH_WIRE_FRAME_MAX, t0 + 200), KH_WIRE_ETIMEDOUT);
    dt = kh_wire_now_ms() - t0;
    printf("# stalled frame: ETIMEDOUT after %llu ms (deadline 200 ms)\n", (unsigned long long)dt);
    KH_CHECK(dt >= 200 && dt < 2500);
    kh_wire_close(c);
    pthread_join(p.th, NULL);

    /* a deadline already passed fails at once */
    raw_start(&p, lfd, NULL, 0, 0);
    c = connect_or_fail(url, NULL);
    KH_CHECK_RV(kh_wire_recv(c, &buf, &len, KH_WIRE_FRAME_MAX, kh_wire_now_ms() - 1),
                KH_WIRE_ETIMEDOUT);
    kh_wire_close(c);
    pthread_join(p.th, NULL);
    close(lfd);

    /* accept with nobody connecting */
    char url2[300];
    snprintf(url2, sizeof url2, "unix:%s/acc.sock", kh_test_tmpdir());
    kh_wire_listener *l = listen_or_fail(url2, NULL);
    kh_wire_conn *ac = NULL;
    t0 = kh_wire_now_ms();
    KH_CHECK_RV(kh_wire_accept(l, &ac, t0 + 200), KH_WIRE_ETIMEDOUT);
    KH_CHECK(ac == NULL && kh_wire_now_ms() - t0 >= 200);
    kh_wire_listener_close(l);

    /* the server side of a silent client: recv times out as well */
    l = listen_or_fail(url2, NULL);
    c = connect_or_fail(url2, NULL);
    KH_CHECK_RV(kh_wire_accept(l, &ac, soon(5000)), KH_WIRE_OK);
    KH_CHECK_RV(kh_wire_recv(ac, &buf, &len, KH_WIRE_FRAME_MAX, soon(150)), KH_WIRE_ETIMEDOUT);
    kh_wire_close(ac);
    kh_wire_close(c);
    kh_wire_listener_close(l);
}

/* ---- TLS ---- */

static char pki[256];

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0)
        kh_test_fail(__FILE__, __LINE__, "command failed (%d): %s", rc, cmd);
    return rc;
}

/*
 * Two CAs (ca, other) and three leaf certificates: server (localhost and
 * 127.0.0.1), client (signed by ca) and rogue client (signed by other).
 */
static bool make_pki(void)
{
    if (pki[0])
        return true;
    snprintf(pki, sizeof pki, "%s", kh_test_tmpdir());
    const char *q = ">/dev/null 2>&1";
    if (sh("cd %s && for ca in ca other; do openssl req -x509 -newkey ec "
           "-pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $ca.key -out $ca.pem -days 2 "
           "-subj /CN=keyhold-test-$ca -addext basicConstraints=critical,CA:TRUE "
           "-addext keyUsage=critical,keyCertSign %s || exit 1; done", pki, q))
        return false;
    if (sh("cd %s && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n"
           "extendedKeyUsage=serverAuth\\n' >srv.ext && "
           "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key "
           "-out srv.csr -subj /CN=localhost %s && openssl x509 -req -in srv.csr -CA ca.pem "
           "-CAkey ca.key -CAcreateserial -days 2 -extfile srv.ext -out srv.pem %s", pki, q, q))
        return false;
    if (sh("cd %s && printf 'extendedKeyUsage=clientAuth\\n' >cli.ext && "
           "for c in cli:ca rogue:other; do n=${c%%:*}; ca=${c#*:}; "
           "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $n.key "
           "-out $n.csr -subj /CN=keyhold-$n %s && openssl x509 -req -in $n.csr -CA $ca.pem "
           "-CAkey $ca.key -CAcreateserial -days 2 -extfile cli.ext -out $n.pem %s || exit 1; "
           "done", pki, q, q))
        return false;
    return true;
}

static char *pkif(const char *name)
{
    static char bufs[32][320];
    static unsigned i;
    char *b = bufs[i++ % 32];
    snprintf(b, sizeof bufs[0], "%s/%s", pki, name);
    return b;
}

static void test_tls_server_verified(void)
{
    if (!make_pki())
        return;
    kh_wire_tls stls = { .cert_file = pkif("srv.pem"), .key_file = pkif("srv.key") };
    kh_wire_tls ctls = { .ca_file = pkif("ca.pem") };
    unsigned port = free_port();
    char url[64], url_name[64];
    snprintf(url, sizeof url, "tls://127.0.0.1:%u", port);
    snprintf(url_name, sizeof url_name, "tls://localhost:%u", port);

    /* by IP address (IP SAN) */
    struct server s;
    kh_wire_listener *l = listen_or_fail(url, &stls);
    if (!l)
        return;
    server_start(&s, l);
    kh_wire_conn *c = connect_or_fail(url, &ctls);
    if (c) {
        round_trips(c);
        /* idle and healthy: no ticket or other record makes it look dead */
        KH_CHECK(kh_wire_conn_idle_ok(c));
        kh_wire_close(c);
    }
    server_join(&s);
    KH_CHECK_RV(s.accept_rc, KH_WIRE_OK);
    KH_CHECK(s.frames == 11);

    /* by name (DNS SAN), and by an explicit server_name */
    l = listen_or_fail(url, &stls);
    if (!l)
        return;
    server_start(&s, l);
    kh_wire_tls named = ctls;
    named.server_name = "localhost";
    c = connect_or_fail(url, &named);
    if (c) {
        KH_CHECK_RV(kh_wire_send(c, "{}", 2, soon(5000)), KH_WIRE_OK);
        char *b = NULL;
        size_t n = 0;
        KH_CHECK_RV(kh_wire_recv(c, &b, &n, 16, soon(5000)), KH_WIRE_OK);
        free(b);
        kh_wire_close(c);
    }
    server_join(&s);
    KH_CHECK_RV(s.accept_rc, KH_WIRE_OK);
    (void)url_name;
}

static void test_tls_refused(void)
{
    if (!make_pki())
        return;
    kh_wire_tls stls = { .cert_file = pkif("srv.pem"), .key_file = pkif("srv.key") };
    char url[64];
    snprintf(url, sizeof url, "tls://127.0.0.1:%u", free_port());
    kh_wire_url u;
    url_or_die(&u, url);

    /* a CA that did not sign the server's certificate */
    kh_wire_tls wrong_ca = { .ca_file = pkif("other.pem") };
    struct server s;
    kh_wire_listener *l = listen_or_fail(url, &stls);
    if (!l)
        return;
    server_start(&s, l);
    kh_wire_conn *c = NULL;
    int rc = kh_wire_connect(&c, &u, &wrong_ca, soon(5000));
    printf("# wrong CA: %s (%s)\n", kh_wire_strerror(rc), kh_wire_detail());
    KH_CHECK_RV(rc, KH_WIRE_ETLS);
    KH_CHECK(c == NULL);
    KH_CHECK(strstr(kh_wire_detail(), "verif") != NULL);
    server_join(&s);
    KH_CHECK(s.accept_rc != KH_WIRE_OK);

    /* the right CA but another name than the certificate's */
    kh_wire_tls wrong_name = { .ca_file = pkif("ca.pem"), .server_name = "signer.example" };
    l = listen_or_fail(url, &stls);
    if (!l)
        return;
    server_start(&s, l);
    rc = kh_wire_connect(&c, &u, &wrong_name, soon(5000));
    printf("# wrong name: %s (%s)\n", kh_wire_strerror(rc), kh_wire_detail());
    KH_CHECK_RV(rc, KH_WIRE_ETLS);
    server_join(&s);

    /* a plain TCP server behind a tls:// URL: the handshake fails, fast */
    kh_wire_url plain;
    char purl[64];
    snprintf(purl, sizeof purl, "tcp://127.0.0.1:%u", u.port);
    url_or_die(&plain, purl);
    char err[256];
    KH_CHECK_RV(kh_wire_listen(&l, err, sizeof err, &plain, NULL), KH_WIRE_OK);
    server_start(&s, l);
    kh_wire_tls ok = { .ca_file = pkif("ca.pem") };
    uint64_t t0 = kh_wire_now_ms();
    rc = kh_wire_connect(&c, &u, &ok, t0 + 2000);
    printf("# TLS to a plain server: %s (%s) after %llu ms\n", kh_wire_strerror(rc),
           kh_wire_detail(), (unsigned long long)(kh_wire_now_ms() - t0));
    KH_CHECK(rc == KH_WIRE_ETLS || rc == KH_WIRE_ETIMEDOUT);
    server_join(&s);

    /* a TLS listener needs a certificate */
    kh_wire_tls none = { 0 };
    KH_CHECK_RV(kh_wire_listen(&l, err, sizeof err, &u, &none), KH_WIRE_ETLS);
    KH_CHECK(err[0] != '\0');
    kh_wire_tls badkey = { .cert_file = pkif("srv.pem"), .key_file = pkif("cli.key") };
    KH_CHECK_RV(kh_wire_listen(&l, err, sizeof err, &u, &badkey), KH_WIRE_ETLS);
    printf("# mismatched key: %s\n", err);
}

static void test_tls_client_cert(void)
{
    if (!make_pki())
        return;
    /* the server asks for a client certificate signed by ca */
    kh_wire_tls stls = { .cert_file = pkif("srv.pem"), .key_file = pkif("srv.key"),
                         .ca_file = pkif("ca.pem") };
    char url[64];
    snprintf(url, sizeof url, "tls://127.0.0.1:%u", free_port());
    kh_wire_url u;
    url_or_die(&u, url);

    /* given: works */
    kh_wire_tls with = { .ca_file = pkif("ca.pem"), .cert_file = pkif("cli.pem"),
                         .key_file = pkif("cli.key") };
    struct server s;
    kh_wire_listener *l = listen_or_fail(url, &stls);
    if (!l)
        return;
    server_start(&s, l);
    kh_wire_conn *c = connect_or_fail(url, &with);
    if (c) {
        KH_CHECK_RV(kh_wire_send(c, "{\"x\":true}", 10, soon(5000)), KH_WIRE_OK);
        char *b = NULL;
        size_t n = 0;
        KH_CHECK_RV(kh_wire_recv(c, &b, &n, 64, soon(5000)), KH_WIRE_OK);
        KH_CHECK(n == 10 && b && !memcmp(b, "{\"x\":true}", 10));
        free(b);
        kh_wire_close(c);
    }
    server_join(&s);
    KH_CHECK_RV(s.accept_rc, KH_WIRE_OK);
    KH_CHECK(s.frames == 1);

    /* not given, or signed by another CA: the server refuses, and the client
     * gets an error at the latest on its first exchange (TLS 1.3 reports the
     * client-certificate alert after the client's handshake completes) */
    kh_wire_tls without = { .ca_file = pkif("ca.pem") };
    kh_wire_tls rogue = { .ca_file = pkif("ca.pem"), .cert_file = pkif("rogue.pem"),
                          .key_file = pkif("rogue.key") };
    const kh_wire_tls *bad[] = { &without, &rogue };
    for (int i = 0; i < 2; i++) {
        l = listen_or_fail(url, &stls);
        if (!l)
            return;
        server_start(&s, l);
        c = NULL;
        int rc = kh_wire_connect(&c, &u, bad[i], soon(5000));
        if (rc == KH_WIRE_OK) {
            rc = kh_wire_send(c, "{}", 2, soon(5000));
            if (rc == KH_WIRE_OK) {
                char *b = NULL;
                size_t n = 0;
                rc = kh_wire_recv(c, &b, &n, 64, soon(5000));
                free(b);
            }
            kh_wire_close(c);
        }
        printf("# client %s: %s (%s)\n", i ? "certificate from another CA" : "without certificate",
               kh_wire_strerror(rc), kh_wire_detail());
        KH_CHECK(rc == KH_WIRE_ETLS || rc == KH_WIRE_ECLOSED);
        server_join(&s);
        KH_CHECK_RV(s.accept_rc, KH_WIRE_ETLS);
        KH_CHECK(s.frames == 0);
    }
}

/* A client on its own thread: connect (TLS handshake included), one frame there and back. */
struct tls_client {
    const char *url;
    const kh_wire_tls *tls;
    int rc;
    pthread_t th;
};

static void *tls_client_main(void *arg)
{
    struct tls_client *t = arg;
    kh_wire_url u;
    kh_wire_conn *c = NULL;
    char *b = NULL;
    size_t n = 0;

    url_or_die(&u, t->url);
    t->rc = kh_wire_connect(&c, &u, t->tls, soon(10000));
    if (t->rc == KH_WIRE_OK)
        t->rc = kh_wire_send(c, "{\"n\":1}", 7, soon(10000));
    if (t->rc == KH_WIRE_OK)
        t->rc = kh_wire_recv(c, &b, &n, 64, soon(10000));
    if (t->rc == KH_WIRE_OK && (n != 7 || memcmp(b, "{\"n\":1}", 7) != 0))
        t->rc = -100;
    free(b);
    kh_wire_close(c);
    return NULL;
}

/*
 * kh_wire_accept_pending hands a tls connection over before its handshake:
 * one whose client never sends a byte is accepted all the same, and a
 * second client is served while the first one's handshake is still open;
 * the stalled handshake ends at its own deadline. Plain connections have
 * nothing pending.
 */
static void test_tls_accept_pending(void)
{
    if (!make_pki())
        return;
    kh_wire_tls stls = { .cert_file = pkif("srv.pem"), .key_file = pkif("srv.key") };
    kh_wire_tls ctls = { .ca_file = pkif("ca.pem") };
    unsigned port = free_port();
    char url[64];
    snprintf(url, sizeof url, "tls://127.0.0.1:%u", port);
    kh_wire_listener *l = listen_or_fail(url, &stls);
    if (!l)
        return;

    /* a TCP client that never says anything */
    int raw = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    KH_CHECK(raw >= 0 && connect(raw, (struct sockaddr *)&sa, sizeof sa) == 0);
    kh_wire_conn *stalled = NULL, *c = NULL;
    KH_CHECK_RV(kh_wire_accept_pending(l, &stalled, soon(5000)), KH_WIRE_OK);

    /* a real client meanwhile: accepted and served, its handshake done by recv */
    struct tls_client tc = { .url = url, .tls = &ctls, .rc = 99 };
    pthread_create(&tc.th, NULL, tls_client_main, &tc);
    KH_CHECK_RV(kh_wire_accept_pending(l, &c, soon(10000)), KH_WIRE_OK);
    if (c) {
        char *b = NULL;
        size_t n = 0;
        KH_CHECK_RV(kh_wire_recv(c, &b, &n, 64, soon(10000)), KH_WIRE_OK);
        if (b)
            KH_CHECK_RV(kh_wire_send(c, b, n, soon(10000)), KH_WIRE_OK);
        free(b);
        KH_CHECK_RV(kh_wire_handshake(c, soon(10)), KH_WIRE_OK);   /* done: nothing to do */
    }
    pthread_join(tc.th, NULL);
    KH_CHECK_RV(tc.rc, KH_WIRE_OK);
    kh_wire_close(c);

    /* the stalled handshake ends at its deadline, and the connection is then unusable */
    KH_CHECK_RV(kh_wire_handshake(stalled, soon(300)), KH_WIRE_ETIMEDOUT);
    KH_CHECK_RV(kh_wire_send(stalled, "{}", 2, soon(100)), KH_WIRE_EIO);
    kh_wire_close(stalled);
    close(raw);

    /* a client that leaves during its handshake: a TLS failure, not a hang */
    raw = socket(AF_INET, SOCK_STREAM, 0);
    KH_CHECK(raw >= 0 && connect(raw, (struct sockaddr *)&sa, sizeof sa) == 0);
    KH_CHECK_RV(kh_wire_accept_pending(l, &stalled, soon(5000)), KH_WIRE_OK);
    close(raw);
    int rc = kh_wire_handshake(stalled, soon(5000));
    printf("# client gone during the handshake: %s (%s)\n", kh_wire_strerror(rc), kh_wire_detail());
    KH_CHECK(rc == KH_WIRE_ETLS || rc == KH_WIRE_ECLOSED || rc == KH_WIRE_EIO);
    kh_wire_close(stalled);
    kh_wire_listener_close(l);

    /* plain TCP: nothing pending */
    snprintf(url, sizeof url, "tcp://127.0.0.1:%u", free_port());
    l = listen_or_fail(url, NULL);
    if (!l)
        return;
    c = connect_or_fail(url, NULL);
    kh_wire_conn *s = NULL;
    KH_CHECK_RV(kh_wire_accept_pending(l, &s, soon(5000)), KH_WIRE_OK);
    KH_CHECK_RV(kh_wire_handshake(s, soon(0)), KH_WIRE_OK);
    kh_wire_close(s);
    kh_wire_close(c);
    kh_wire_listener_close(l);
}

int main(int argc, char **argv)
{
    kh_test_register("/wire/url/forms", test_url_forms);
    kh_test_register("/wire/url/errors", test_url_errors);
    kh_test_register("/wire/vsock/error", test_vsock_error);
    kh_test_register("/wire/unix/roundtrip", test_unix_roundtrip);
    kh_test_register("/wire/unix/socket-file", test_unix_socket_file);
    kh_test_register("/wire/tcp/roundtrip", test_tcp_roundtrip);
    kh_test_register("/wire/cap", test_cap);
    kh_test_register("/wire/closed-mid-frame", test_closed_mid_frame);
    kh_test_register("/wire/deadlines", test_deadlines);
    kh_test_register("/wire/tls/server-verified", test_tls_server_verified);
    kh_test_register("/wire/tls/refused", test_tls_refused);
    kh_test_register("/wire/tls/client-cert", test_tls_client_cert);
    kh_test_register("/wire/tls/accept-pending", test_tls_accept_pending);
    return kh_test_run(argc, argv);
}

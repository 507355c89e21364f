/*
 * Opening the configured TCTI, and a TCTI for swtpm's socket interface with
 * deadlines.
 *
 * tpm2-tss 3.2's swtpm TCTI (libtss2-tcti-swtpm, Debian 12) reads the
 * response with a blocking read() and asks the control channel for a
 * locality at initialisation, also without a deadline: a swtpm that stops
 * answering (SIGSTOP, a stuck host) hangs the caller forever. This TCTI
 * speaks the same protocol (one connection per command on the TPM command
 * channel: the raw command in, the raw response out; swtpm serves one
 * connection at a time) and does every connect, send and receive with poll()
 * under a deadline. It does not use the control channel.
 *
 * Configuration as the swtpm TCTI takes it: "swtpm" (localhost:2321),
 * "swtpm:host=H,port=P", "swtpm:port=P", "swtpm:path=/run/swtpm.sock".
 */
#include "tpmutil.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <tss2/tss2_tcti.h>
#include <tss2/tss2_tctildr.h>

#define KH_TCTI_MAGIC 0x6b6874637469ULL /* "khtcti" */
#define KH_TCTI_MAX_RESPONSE 4096
#define KH_TCTI_HEADER 10

typedef struct kh_tcti {
    TSS2_TCTI_CONTEXT_COMMON_V2 v2;
    char host[256];
    char port[8];
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    unsigned io_timeout_ms;     /* cap on any one wait */
    int fd;                     /* the command in flight's connection, or -1 */
    bool receiving;
    uint8_t resp[KH_TCTI_MAX_RESPONSE];
    size_t got, want;           /* response bytes read / expected (0: header not read) */
} kh_tcti;

static kh_tcti *cast(TSS2_TCTI_CONTEXT *c)
{
    kh_tcti *t = (kh_tcti *)c;
    return t && t->v2.v1.magic == KH_TCTI_MAGIC ? t : NULL;
}

/* Wait for events on fd for at most ms; true when they came. */
static bool wait_fd(int fd, short events, int ms)
{
    double deadline = kh_tpm_now_ms() + ms;
    for (;;) {
        double left = deadline - kh_tpm_now_ms();
        struct pollfd p = { .fd = fd, .events = events };
        int n = poll(&p, 1, left > 0 ? (int)left : 0);
        if (n > 0)
            return (p.revents & (events | POLLHUP | POLLERR)) != 0;
        if (n == 0 || errno != EINTR)
            return false;
    }
}

static void drop(kh_tcti *t)
{
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
    t->receiving = false;
    t->got = t->want = 0;
}

/* Connect without blocking past io_timeout_ms. */
static TSS2_RC connect_cmd(kh_tcti *t)
{
    int fd;
    if (t->path[0]) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        memcpy(sa.sun_path, t->path, strlen(t->path) + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return TSS2_TCTI_RC_IO_ERROR;
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS && errno != EAGAIN) {
            close(fd);
            return TSS2_TCTI_RC_NO_CONNECTION;
        }
    } else {
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
        if (getaddrinfo(t->host, t->port, &hints, &ai) != 0 || !ai)
            return TSS2_TCTI_RC_NO_CONNECTION;
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int c = fd < 0 ? -1 : connect(fd, ai->ai_addr, ai->ai_addrlen);
        int err = errno;
        freeaddrinfo(ai);
        if (fd < 0)
            return TSS2_TCTI_RC_IO_ERROR;
        if (c != 0 && err != EINPROGRESS) {
            close(fd);
            return TSS2_TCTI_RC_NO_CONNECTION;
        }
    }
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (!wait_fd(fd, POLLOUT, (int)t->io_timeout_ms) ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
        close(fd);
        return TSS2_TCTI_RC_NO_CONNECTION;
    }
    t->fd = fd;
    return TSS2_RC_SUCCESS;
}

static TSS2_RC kh_tcti_transmit(TSS2_TCTI_CONTEXT *ctx, size_t size, const uint8_t *cmd)
{
    kh_tcti *t = cast(ctx);
    if (!t)
        return TSS2_TCTI_RC_BAD_CONTEXT;
    if (!cmd || size < KH_TCTI_HEADER)
        return TSS2_TCTI_RC_BAD_VALUE;
    if (t->receiving)
        return TSS2_TCTI_RC_BAD_SEQUENCE;
    drop(t);
    TSS2_RC rc = connect_cmd(t);
    if (rc != TSS2_RC_SUCCESS)
        return rc;
    size_t off = 0;
    double deadline = kh_tpm_now_ms() + t->io_timeout_ms;
    while (off < size) {
        ssize_t n = send(t->fd, cmd + off, size - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        double left = deadline - kh_tpm_now_ms();
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && left > 0 &&
            wait_fd(t->fd, POLLOUT, (int)left))
            continue;
        drop(t);
        return TSS2_TCTI_RC_IO_ERROR;
    }
    t->receiving = true;
    t->got = t->want = 0;
    return TSS2_RC_SUCCESS;
}

/*
 * Read what has arrived, waiting at most timeout ms (TSS2_TCTI_TIMEOUT_BLOCK:
 * io_timeout_ms). TSS2_TCTI_RC_TRY_AGAIN when the response is not complete
 * yet; the caller's deadline decides when to give up.
 */
static TSS2_RC kh_tcti_receive(TSS2_TCTI_CONTEXT *ctx, size_t *size, uint8_t *response, int32_t timeout)
{
    kh_tcti *t = cast(ctx);
    if (!t)
        return TSS2_TCTI_RC_BAD_CONTEXT;
    if (!size)
        return TSS2_TCTI_RC_BAD_REFERENCE;
    if (!t->receiving)
        return TSS2_TCTI_RC_BAD_SEQUENCE;
    int wait_ms = timeout == TSS2_TCTI_TIMEOUT_BLOCK || timeout < 0 ? (int)t->io_timeout_ms : timeout;
    double deadline = kh_tpm_now_ms() + wait_ms;
    while (t->want == 0 || t->got < t->want) {
        size_t need = t->want ? t->want : KH_TCTI_HEADER;
        ssize_t n = recv(t->fd, t->resp + t->got, need - t->got, 0);
        if (n > 0) {
            t->got += (size_t)n;
            if (t->want == 0 && t->got == KH_TCTI_HEADER) {
                uint32_t len = (uint32_t)t->resp[2] << 24 | (uint32_t)t->resp[3] << 16 |
                               (uint32_t)t->resp[4] << 8 | t->resp[5];
                if (len < KH_TCTI_HEADER || len > sizeof t->resp) {
                    drop(t);
                    return TSS2_TCTI_RC_MALFORMED_RESPONSE;
                }
                t->want = len;
            }
            continue;
        }
        if (n == 0) { /* swtpm went away */
            drop(t);
            return TSS2_TCTI_RC_IO_ERROR;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            drop(t);
            return TSS2_TCTI_RC_IO_ERROR;
        }
        double left = deadline - kh_tpm_now_ms();
        if (left <= 0 || !wait_fd(t->fd, POLLIN, (int)left))
            return TSS2_TCTI_RC_TRY_AGAIN;
    }
    if (!response) {
        *size = t->want;
        return TSS2_RC_SUCCESS;
    }
    if (*size < t->want) {
        *size = t->want;
        return TSS2_TCTI_RC_INSUFFICIENT_BUFFER;
    }
    memcpy(response, t->resp, t->want);
    *size = t->want;
    drop(t);
    return TSS2_RC_SUCCESS;
}

static void kh_tcti_finalize(TSS2_TCTI_CONTEXT *ctx)
{
    kh_tcti *t = cast(ctx);
    if (t)
        drop(t);
}

static TSS2_RC kh_tcti_cancel(TSS2_TCTI_CONTEXT *ctx)
{
    (void)ctx;
    return TSS2_TCTI_RC_NOT_IMPLEMENTED;
}

static TSS2_RC kh_tcti_poll_handles(TSS2_TCTI_CONTEXT *ctx, TSS2_TCTI_POLL_HANDLE *handles, size_t *n)
{
    kh_tcti *t = cast(ctx);
    if (!t || !n)
        return TSS2_TCTI_RC_BAD_REFERENCE;
    if (!handles) {
        *n = t->fd >= 0 ? 1 : 0;
        return TSS2_RC_SUCCESS;
    }
    if (t->fd < 0) {
        *n = 0;
        return TSS2_RC_SUCCESS;
    }
    if (*n < 1)
        return TSS2_TCTI_RC_INSUFFICIENT_BUFFER;
    handles[0].fd = t->fd;
    handles[0].events = POLLIN;
    *n = 1;
    return TSS2_RC_SUCCESS;
}

static TSS2_RC kh_tcti_set_locality(TSS2_TCTI_CONTEXT *ctx, uint8_t locality)
{
    (void)ctx;
    return locality == 0 ? TSS2_RC_SUCCESS : TSS2_TCTI_RC_NOT_IMPLEMENTED;
}

static TSS2_RC kh_tcti_make_sticky(TSS2_TCTI_CONTEXT *ctx, TPM2_HANDLE *handle, uint8_t sticky)
{
    (void)ctx;
    (void)handle;
    (void)sticky;
    return TSS2_TCTI_RC_NOT_IMPLEMENTED;
}

bool kh_tcti_is_swtpm(const char *conf)
{
    return conf && strncmp(conf, "swtpm", 5) == 0 && (conf[5] == '\0' || conf[5] == ':');
}

TSS2_RC kh_tcti_swtpm_new(TSS2_TCTI_CONTEXT **out, const char *conf, unsigned io_timeout_ms)
{
    *out = NULL;
    if (!kh_tcti_is_swtpm(conf))
        return TSS2_TCTI_RC_BAD_VALUE;
    kh_tcti *t = calloc(1, sizeof *t);
    if (!t)
        return TSS2_TCTI_RC_MEMORY;
    snprintf(t->host, sizeof t->host, "localhost");
    snprintf(t->port, sizeof t->port, "2321");
    const char *p = conf[5] ? conf + 6 : "";
    while (*p) {
        size_t len = strcspn(p, ",");
        if (len > 5 && !strncmp(p, "path=", 5) && len - 5 < sizeof t->path) {
            memcpy(t->path, p + 5, len - 5);
            t->path[len - 5] = '\0';
        } else if (len > 5 && !strncmp(p, "host=", 5) && len - 5 < sizeof t->host) {
            memcpy(t->host, p + 5, len - 5);
            t->host[len - 5] = '\0';
        } else if (len > 5 && !strncmp(p, "port=", 5) && len - 5 < sizeof t->port) {
            memcpy(t->port, p + 5, len - 5);
            t->port[len - 5] = '\0';
            char *end;
            unsigned long v = strtoul(t->port, &end, 10);
            if (*end || v == 0 || v > 65535) {
                free(t);
                return TSS2_TCTI_RC_BAD_VALUE;
            }
        } else {
            free(t);
            return TSS2_TCTI_RC_BAD_VALUE;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    t->v2.v1.magic = KH_TCTI_MAGIC;
    t->v2.v1.version = 2;
    t->v2.v1.transmit = kh_tcti_transmit;
    t->v2.v1.receive = kh_tcti_receive;
    t->v2.v1.finalize = kh_tcti_finalize;
    t->v2.v1.cancel = kh_tcti_cancel;
    t->v2.v1.getPollHandles = kh_tcti_poll_handles;
    t->v2.v1.setLocality = kh_tcti_set_locality;
    t->v2.makeSticky = kh_tcti_make_sticky;
    t->io_timeout_ms = io_timeout_ms ? io_timeout_ms : 10000;
    t->fd = -1;
    *out = (TSS2_TCTI_CONTEXT *)t;
    return TSS2_RC_SUCCESS;
}

void kh_tcti_swtpm_free(TSS2_TCTI_CONTEXT *ctx)
{
    kh_tcti *t = cast(ctx);
    if (!t)
        return;
    drop(t);
    free(t);
}

TSS2_RC kh_tpm_tcti_open(TSS2_TCTI_CONTEXT **out, const char *conf, unsigned io_timeout_ms)
{
    if (kh_tcti_is_swtpm(conf))
        return kh_tcti_swtpm_new(out, conf, io_timeout_ms);
    TSS2_RC rc = Tss2_TctiLdr_Initialize(conf, out);
    if (rc != TSS2_RC_SUCCESS)
        *out = NULL;
    return rc;
}

void kh_tpm_tcti_close(TSS2_TCTI_CONTEXT *ctx)
{
    if (cast(ctx))
        kh_tcti_swtpm_free(ctx);
    else if (ctx)
        Tss2_TctiLdr_Finalize(&ctx);
}

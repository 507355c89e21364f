/*
 * signd-server.c - keyhold-signd's server loop: accept connections up to the
 * cap (the rest get an "unavailable" error and are closed), one thread per
 * connection with its own PKCS#11 session, frames read under the io
 * deadline and connections closed after the idle timeout, one log line per
 * request, and on SIGTERM/SIGINT a drain: no new connections, every request
 * already received is answered, then the connection closes.
 *
 * The accepting thread never waits for a client: for tls:// it hands the
 * connection over before the handshake, which the connection's thread runs
 * under --handshake-timeout-ms (a stalled handshake holds one thread and one
 * place under the cap, for at most that long).
 */
#include "signd.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* How long a refused connection gets to take its error reply. */
#define KH_SIGND_BUSY_SEND_MS 1000

void kh_signd_log(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n = snprintf(line, sizeof line, "keyhold-signd: ");

    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    /* One write, so lines from different threads do not interleave. */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

static double kh_now_ms_f(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

struct kh_conn_arg {
    struct kh_signd *srv;
    kh_wire_conn *conn;
    uint64_t id;
};

/* Sends a reply (taken: freed here). Returns: the kh_wire_send result. */
static int kh_send_reply_take(kh_wire_conn *conn, char *reply, uint64_t io_ms)
{
    int rc;

    if (!reply)
        return KH_WIRE_ENOMEM;
    rc = kh_wire_send(conn, reply, strlen(reply), kh_wire_now_ms() + io_ms);
    free(reply);
    return rc;
}

/* The end of a connection thread: it leaves its id to be joined. */
static void kh_conn_done(struct kh_signd *srv)
{
    char b = 1;

    pthread_mutex_lock(&srv->lock);
    /* done has room for every thread started (kh_signd_serve grows it first). */
    srv->done[srv->ndone++] = pthread_self();
    srv->active--;
    pthread_cond_broadcast(&srv->idle);
    pthread_mutex_unlock(&srv->lock);
    ssize_t w = write(srv->reap_pipe[1], &b, 1);   /* wakes the accepting thread; a full pipe is fine */
    (void)w;
}

/* Joins every finished connection thread. */
static void kh_reap(struct kh_signd *srv)
{
    char buf[64];
    pthread_t th[64];
    size_t n;

    while (read(srv->reap_pipe[0], buf, sizeof buf) > 0)
        ;
    do {
        pthread_mutex_lock(&srv->lock);
        n = srv->ndone < 64 ? srv->ndone : 64;
        srv->ndone -= n;
        memcpy(th, srv->done + srv->ndone, n * sizeof th[0]);
        pthread_mutex_unlock(&srv->lock);
        for (size_t i = 0; i < n; i++)
            pthread_join(th[i], NULL);
    } while (n == 64);
}

/* Makes sure done can hold one more finished thread per live one. */
static bool kh_done_room(struct kh_signd *srv)
{
    size_t need = srv->active + srv->ndone + 1;
    pthread_t *p;

    if (need <= srv->done_cap)
        return true;
    p = realloc(srv->done, 2 * need * sizeof *p);
    if (!p)
        return false;
    srv->done = p;
    srv->done_cap = 2 * need;
    return true;
}

static void *kh_conn_thread(void *arg)
{
    struct kh_conn_arg a = *(struct kh_conn_arg *)arg;
    struct kh_signd *srv = a.srv;
    struct kh_signd_worker w = { .srv = srv, .conn_id = a.id };
    unsigned long long id = (unsigned long long)a.id;
    CK_RV rv;
    int rc;

    free(arg);
    /* tls: the handshake runs here, under its own deadline, so a client
     * that stalls it holds up only this thread (kh_wire_accept_pending). */
    rc = kh_wire_handshake(a.conn, kh_wire_now_ms() + srv->handshake_timeout_ms);
    if (rc != KH_WIRE_OK) {
        kh_signd_log("conn=%llu closed: TLS handshake: %s (%s)", id, kh_wire_strerror(rc),
                     kh_wire_detail());
        kh_wire_close(a.conn);
        kh_conn_done(srv);
        return NULL;
    }
    rv = srv->p11.f->C_OpenSession(srv->tok.slot, CKF_SERIAL_SESSION, NULL, NULL, &w.session);
    if (rv != CKR_OK) {
        kh_signd_log("conn=%llu C_OpenSession failed: %s", id, kh_rv_name(rv));
        kh_send_reply_take(a.conn,
                           kh_signd_error_reply(KH_SIGND_E_UNAVAILABLE,
                                                "the token has no session for this connection"),
                           srv->cfg.io_timeout_ms);
        goto out;
    }
    w.have_session = true;

    for (;;) {
        struct pollfd pf[2] = {
            { .fd = kh_wire_conn_fd(a.conn), .events = POLLIN },
            { .fd = srv->stop_pipe[0], .events = POLLIN },
        };
        struct kh_signd_logrec log;
        char *json = NULL, *reply;
        size_t len = 0;
        double t0;
        int n;

        /* A request already inside the connection (tls) is not seen by poll. */
        if (kh_wire_conn_buffered(a.conn)) {
            n = 1;
            pf[0].revents = POLLIN;
            pf[1].revents = 0;
        } else {
            n = poll(pf, 2, (int)srv->cfg.idle_timeout_ms);
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            kh_signd_log("conn=%llu poll: %s", id, strerror(errno));
            break;
        }
        if (n == 0) {
            kh_signd_log("conn=%llu closed: idle for %u ms", id, srv->cfg.idle_timeout_ms);
            break;
        }
        /* A request already arriving is served even while stopping (the
         * drain); with nothing pending, a stop closes the connection. */
        if (!(pf[0].revents & (POLLIN | POLLHUP | POLLERR)))
            break;

        t0 = kh_now_ms_f();
        rc = kh_wire_recv(a.conn, &json, &len, srv->cfg.max_frame,
                          kh_wire_now_ms() + srv->cfg.io_timeout_ms);
        if (rc == KH_WIRE_ECLOSED)
            break;
        if (rc != KH_WIRE_OK) {
            /* The stream is out of step (too big, cut, too slow): close. */
            kh_signd_log("conn=%llu method=- key=- outcome=%s ms=%.2f (%s)", id,
                         rc == KH_WIRE_ETOOBIG ? "too_large" :
                         rc == KH_WIRE_ETIMEDOUT ? "timeout" : "recv_error",
                         kh_now_ms_f() - t0, kh_wire_strerror(rc));
            break;
        }
        reply = kh_signd_handle(&w, json, len, &log);
        free(json);
        rc = kh_send_reply_take(a.conn, reply, srv->cfg.io_timeout_ms);
        kh_signd_log("conn=%llu method=%s key=%s outcome=%s ms=%.2f%s%s", id, log.method, log.key,
                     log.outcome, kh_now_ms_f() - t0, rc != KH_WIRE_OK ? " send: " : "",
                     rc != KH_WIRE_OK ? kh_wire_strerror(rc) : "");
        if (rc != KH_WIRE_OK || atomic_load(&srv->stopping))
            break;
    }
out:
    if (w.have_session)
        srv->p11.f->C_CloseSession(w.session);
    kh_wire_close(a.conn);
    kh_conn_done(srv);
    return NULL;
}

/*
 * Refuses a connection (over the cap) with an "unavailable" error. A tls
 * connection is closed without one: the reply would need the handshake,
 * which a client could stall while the accepting thread waits.
 */
static void kh_refuse(struct kh_signd *srv, kh_wire_conn *conn, const char *why)
{
    int rc = KH_WIRE_ETLS;

    if (srv->url.kind != KH_WIRE_TLS)
        rc = kh_send_reply_take(conn, kh_signd_error_reply(KH_SIGND_E_UNAVAILABLE, why),
                                KH_SIGND_BUSY_SEND_MS);
    kh_signd_log("conn=- method=- key=- outcome=unavailable (%s)%s", why,
                 rc == KH_WIRE_OK ? "" : srv->url.kind == KH_WIRE_TLS ? ", tls: closed without a reply"
                                                                      : ", reply not delivered");
    kh_wire_close(conn);
}

int kh_signd_serve(struct kh_signd *srv, kh_wire_listener *listener)
{
    int lfd = kh_wire_listener_fd(listener);
    int ret = 0;

    while (!atomic_load(&srv->stopping)) {
        struct pollfd pf[3] = {
            { .fd = lfd, .events = POLLIN },
            { .fd = srv->stop_pipe[0], .events = POLLIN },
            { .fd = srv->reap_pipe[0], .events = POLLIN },
        };
        struct kh_conn_arg *arg;
        kh_wire_conn *conn = NULL;
        pthread_t th;
        int n, rc;

        n = poll(pf, 3, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            kh_signd_log("poll: %s", strerror(errno));
            ret = 1;
            break;
        }
        if (pf[1].revents)
            break;
        if (pf[2].revents)
            kh_reap(srv);
        if (!(pf[0].revents & POLLIN))
            continue;
        /* Never waits: the listener is readable; a tls connection's handshake
         * is its thread's first step. */
        rc = kh_wire_accept_pending(listener, &conn, kh_wire_now_ms());
        if (rc == KH_WIRE_ETIMEDOUT)
            continue;                  /* the client gave up before we got to it */
        if (rc != KH_WIRE_OK) {
            kh_signd_log("accept: %s (%s)", kh_wire_strerror(rc), kh_wire_detail());
            if (rc == KH_WIRE_ENOMEM) {
                /* Out of descriptors: let connections finish before trying again. */
                struct timespec ts = { 0, 100 * 1000 * 1000 };
                nanosleep(&ts, NULL);
            }
            continue;
        }

        pthread_mutex_lock(&srv->lock);
        if (srv->active >= srv->cfg.max_connections) {
            pthread_mutex_unlock(&srv->lock);
            kh_refuse(srv, conn, "too many connections");
            continue;
        }
        if (!kh_done_room(srv)) {
            pthread_mutex_unlock(&srv->lock);
            kh_refuse(srv, conn, "out of memory");
            continue;
        }
        srv->active++;
        srv->next_conn_id++;
        pthread_mutex_unlock(&srv->lock);

        arg = malloc(sizeof *arg);
        rc = arg ? 0 : ENOMEM;
        if (arg) {
            arg->srv = srv;
            arg->conn = conn;
            arg->id = srv->next_conn_id;
            rc = pthread_create(&th, NULL, kh_conn_thread, arg);
        }
        if (rc != 0) {
            free(arg);
            pthread_mutex_lock(&srv->lock);
            srv->active--;
            pthread_mutex_unlock(&srv->lock);
            kh_refuse(srv, conn, "cannot start a connection thread");
        }
    }

    /* Drain: no new connections; wait for every connection thread. */
    kh_wire_listener_close(listener);
    pthread_mutex_lock(&srv->lock);
    if (srv->active)
        kh_signd_log("stopping: waiting for %u connection(s)", srv->active);
    while (srv->active > 0)
        pthread_cond_wait(&srv->idle, &srv->lock);
    pthread_mutex_unlock(&srv->lock);
    kh_reap(srv);
    free(srv->done);
    srv->done = NULL;
    srv->done_cap = 0;
    return ret;
}

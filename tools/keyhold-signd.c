/*
 * keyhold-signd - serves the keyhold signer protocol from a token of any
 * PKCS#11 module (keyhold's by default), for enclaves, payment backends and
 * keyhold's own remote backend.
 *
 * A plain Cryptoki consumer: it loads the module, logs in to one token and
 * signs with its keys; no key material passes through this process.
 * The protocol, methods, configuration and limits are in README
 * ("keyhold-signd").
 *
 * Exit status: 0 after a clean stop (SIGTERM/SIGINT), 1 runtime error,
 * 2 usage error.
 */
#include "signd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define KH_EXIT_OK 0
#define KH_EXIT_FAIL 1
#define KH_EXIT_USAGE 2

#define KH_SIGND_DEF_HANDSHAKE_MS 3000

static struct kh_signd *kh_signd_global;   /* for the signal handler */

static void kh_usage(FILE *f)
{
    fputs("usage: keyhold-signd --listen URL --token LABEL [options]\n"
          "\n"
          "Serves the keyhold signer protocol from a PKCS#11 token.\n"
          "\n"
          "  --listen URL             tcp://HOST:PORT (port 0: any free port), unix:/PATH,\n"
          "                           vsock://CID:PORT or tls://HOST:PORT\n"
          "  --token LABEL            the token whose keys are served\n"
          "  --module PATH            PKCS#11 module (default: keyhold's)\n"
          "  --pin-file FILE          user PIN, first line ('-' = stdin); else $KEYHOLD_PIN\n"
          "  --config FILE            JSON configuration: keys, policy, limits (README)\n"
          "  --key LABEL              default key (else the configuration's default_key,\n"
          "                           else the token's only secp256k1 key)\n"
          "  --max-connections N      connection cap (default 64)\n"
          "  --idle-timeout-ms N      close a connection idle this long (default 60000)\n"
          "  --io-timeout-ms N        deadline to read a started frame / send a reply (10000)\n"
          "  --tls-cert FILE          tls://: server certificate chain (PEM)\n"
          "  --tls-key FILE           tls://: its private key (PEM)\n"
          "  --tls-client-ca FILE     tls://: require client certificates from this CA\n"
          "  --handshake-timeout-ms N tls://: deadline of a TLS handshake (default 3000)\n"
          "  --tpm TCTI               attestation TPM, e.g. device:/dev/tpmrm0 or swtpm:port=N\n"
          "  --pcrs SELECTION         PCRs to quote (default sha256:0,1,2,3,4,5,6,7)\n"
          "  --ready-file FILE        write the URL actually listened on to FILE once ready\n"
          "  -h, --help               this text\n",
          f);
}

enum {
    OPT_LISTEN = 256, OPT_TOKEN, OPT_MODULE, OPT_PIN_FILE, OPT_CONFIG, OPT_KEY, OPT_MAX_CONN,
    OPT_IDLE, OPT_IO, OPT_TLS_CERT, OPT_TLS_KEY, OPT_TLS_CA, OPT_HANDSHAKE, OPT_TPM, OPT_PCRS,
    OPT_READY,
};

struct kh_opts {
    const char *listen, *token, *module, *pin_file, *config, *key;
    const char *tls_cert, *tls_key, *tls_ca, *tpm, *pcrs, *ready_file;
    long max_conn, idle_ms, io_ms, handshake_ms;
};

static bool kh_parse_long(long *out, const char *s, long min, long max)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

static int kh_parse_opts(struct kh_opts *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        { "listen", required_argument, NULL, OPT_LISTEN },
        { "token", required_argument, NULL, OPT_TOKEN },
        { "module", required_argument, NULL, OPT_MODULE },
        { "pin-file", required_argument, NULL, OPT_PIN_FILE },
        { "config", required_argument, NULL, OPT_CONFIG },
        { "key", required_argument, NULL, OPT_KEY },
        { "max-connections", required_argument, NULL, OPT_MAX_CONN },
        { "idle-timeout-ms", required_argument, NULL, OPT_IDLE },
        { "io-timeout-ms", required_argument, NULL, OPT_IO },
        { "tls-cert", required_argument, NULL, OPT_TLS_CERT },
        { "tls-key", required_argument, NULL, OPT_TLS_KEY },
        { "tls-client-ca", required_argument, NULL, OPT_TLS_CA },
        { "handshake-timeout-ms", required_argument, NULL, OPT_HANDSHAKE },
        { "tpm", required_argument, NULL, OPT_TPM },
        { "pcrs", required_argument, NULL, OPT_PCRS },
        { "ready-file", required_argument, NULL, OPT_READY },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    memset(o, 0, sizeof *o);
    o->max_conn = o->idle_ms = o->io_ms = o->handshake_ms = -1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_LISTEN: o->listen = optarg; break;
        case OPT_TOKEN: o->token = optarg; break;
        case OPT_MODULE: o->module = optarg; break;
        case OPT_PIN_FILE: o->pin_file = optarg; break;
        case OPT_CONFIG: o->config = optarg; break;
        case OPT_KEY: o->key = optarg; break;
        case OPT_TLS_CERT: o->tls_cert = optarg; break;
        case OPT_TLS_KEY: o->tls_key = optarg; break;
        case OPT_TLS_CA: o->tls_ca = optarg; break;
        case OPT_TPM: o->tpm = optarg; break;
        case OPT_PCRS: o->pcrs = optarg; break;
        case OPT_READY: o->ready_file = optarg; break;
        case OPT_MAX_CONN:
            if (!kh_parse_long(&o->max_conn, optarg, 1, 4096)) {
                fprintf(stderr, "keyhold-signd: --max-connections takes 1..4096\n");
                return KH_EXIT_USAGE;
            }
            break;
        case OPT_IDLE:
            if (!kh_parse_long(&o->idle_ms, optarg, 10, 86400000)) {
                fprintf(stderr, "keyhold-signd: --idle-timeout-ms takes 10..86400000\n");
                return KH_EXIT_USAGE;
            }
            break;
        case OPT_IO:
            if (!kh_parse_long(&o->io_ms, optarg, 10, 600000)) {
                fprintf(stderr, "keyhold-signd: --io-timeout-ms takes 10..600000\n");
                return KH_EXIT_USAGE;
            }
            break;
        case OPT_HANDSHAKE:
            if (!kh_parse_long(&o->handshake_ms, optarg, 10, 60000)) {
                fprintf(stderr, "keyhold-signd: --handshake-timeout-ms takes 10..60000\n");
                return KH_EXIT_USAGE;
            }
            break;
        case 'h':
            kh_usage(stdout);
            exit(KH_EXIT_OK);
        default:
            fprintf(stderr, "keyhold-signd: unknown or incomplete option '%s'\n", argv[optind - 1]);
            kh_usage(stderr);
            return KH_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "keyhold-signd: unexpected argument '%s'\n", argv[optind]);
        return KH_EXIT_USAGE;
    }
    if (!o->listen || !o->token) {
        fprintf(stderr, "keyhold-signd: --listen and --token are required\n");
        kh_usage(stderr);
        return KH_EXIT_USAGE;
    }
    return KH_EXIT_OK;
}

static void kh_on_signal(int sig)
{
    struct kh_signd *srv = kh_signd_global;
    char b = 1;

    (void)sig;
    if (!srv)
        return;
    atomic_store(&srv->stopping, true);
    ssize_t w = write(srv->stop_pipe[1], &b, 1);
    (void)w;
}

/* ---- keys -------------------------------------------------------------- */

/* Reads a private key's public key: from the object itself, else from the
 * public key object with the same CKA_ID (modules differ). */
static CK_RV kh_key_pubkey(struct kh_signd *srv, struct kh_signd_key *k)
{
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_ATTRIBUTE tmpl[2] = {
        { CKA_CLASS, &cls, sizeof cls },
        { CKA_ID, k->desc.id, (CK_ULONG)k->desc.id_len },
    };
    CK_OBJECT_HANDLE *objs = NULL;
    CK_ULONG n = 0;
    CK_RV rv = kh_p11_read_pubkey(&srv->p11, srv->login_session, k->priv, k->desc.kind, &k->pub);

    if (rv == CKR_OK || k->desc.id_len == 0)
        return rv;
    rv = kh_p11_find(&srv->p11, srv->login_session, tmpl, 2, &objs, &n);
    if (rv == CKR_OK && n == 0)
        rv = CKR_KEY_HANDLE_INVALID;
    if (rv == CKR_OK)
        rv = kh_p11_read_pubkey(&srv->p11, srv->login_session, objs[0], k->desc.kind, &k->pub);
    free(objs);
    return rv;
}

struct kh_signd_key *kh_signd_key_find(const struct kh_signd *srv, const char *label)
{
    for (size_t i = 0; i < srv->nkeys; i++)
        if (strcmp(srv->keys[i].label, label) == 0)
            return &srv->keys[i];
    return NULL;
}

/* Builds the table of served keys and picks the default key. */
static int kh_load_keys(struct kh_signd *srv, const char *default_label)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE tmpl[1] = { { CKA_CLASS, &cls, sizeof cls } };
    CK_MECHANISM_INFO mi;
    CK_OBJECT_HANDLE *objs = NULL;
    CK_ULONG n = 0;
    bool recoverable;
    char err[256];
    CK_RV rv;
    int ret = KH_EXIT_FAIL;

    recoverable = srv->p11.f->C_GetMechanismInfo(srv->tok.slot, CKM_KH_ECDSA_RECOVERABLE, &mi) == CKR_OK;
    rv = kh_p11_find(&srv->p11, srv->login_session, tmpl, 1, &objs, &n);
    if (rv != CKR_OK) {
        fprintf(stderr, "keyhold-signd: cannot list the token's keys: %s\n", kh_rv_name(rv));
        return KH_EXIT_FAIL;
    }
    srv->keys = calloc(n ? n : 1, sizeof *srv->keys);
    if (!srv->keys) {
        fprintf(stderr, "keyhold-signd: out of memory\n");
        goto out;
    }
    for (CK_ULONG i = 0; i < n; i++) {
        struct kh_signd_key *k = &srv->keys[srv->nkeys];
        const struct kh_signd_key_policy *pol = NULL;

        memset(k, 0, sizeof *k);
        k->priv = objs[i];
        rv = kh_p11_describe(&srv->p11, srv->login_session, objs[i], &k->desc);
        if (rv != CKR_OK) {
            fprintf(stderr, "keyhold-signd: cannot read a key's attributes: %s\n", kh_rv_name(rv));
            goto out;
        }
        if (srv->cfg.has_keys && !(pol = kh_signd_config_key(&srv->cfg, k->desc.label))) {
            kh_p11_key_clear(&k->desc);
            continue;                          /* not served */
        }
        if (k->desc.label[0] == '\0' || k->desc.kind == KH_KEY_UNKNOWN) {
            kh_p11_key_clear(&k->desc);
            continue;                          /* no label to name it by, or unusable */
        }
        if (kh_signd_key_find(srv, k->desc.label)) {
            fprintf(stderr, "keyhold-signd: token '%s' has two private keys labelled '%s'; "
                    "labels of served keys must be unique\n", srv->tok.label, k->desc.label);
            kh_p11_key_clear(&k->desc);
            goto out;
        }
        rv = kh_key_pubkey(srv, k);
        if (rv != CKR_OK) {
            fprintf(stderr, "keyhold-signd: key '%s': cannot read its public key: %s\n",
                    k->desc.label, kh_rv_name(rv));
            kh_p11_key_clear(&k->desc);
            goto out;
        }
        if (!kh_signd_key_prepare(k, err, sizeof err)) {
            fprintf(stderr, "keyhold-signd: key '%s': %s\n", k->desc.label, err);
            kh_pubkey_clear(&k->pub);
            kh_p11_key_clear(&k->desc);
            goto out;
        }
        k->label = k->desc.label;
        k->has_address = kh_pubkey_eth_address(k->address, &k->pub);
        k->recoverable_mech = recoverable;
        k->policy = pol ? pol : &srv->open_policy;
        kh_bucket_init(&k->bucket, k->policy->rate, k->policy->burst, kh_wire_now_ms());
        srv->nkeys++;
    }
    for (size_t i = 0; srv->cfg.has_keys && i < srv->cfg.nkeys; i++)
        if (!kh_signd_key_find(srv, srv->cfg.keys[i].label)) {
            fprintf(stderr, "keyhold-signd: key '%s' of the configuration is not a private key "
                    "on token '%s'\n", srv->cfg.keys[i].label, srv->tok.label);
            goto out;
        }

    if (!default_label)
        default_label = srv->cfg.default_key;
    if (default_label) {
        srv->default_key = kh_signd_key_find(srv, default_label);
        if (!srv->default_key) {
            fprintf(stderr, "keyhold-signd: default key '%s' is not served from token '%s'\n",
                    default_label, srv->tok.label);
            goto out;
        }
    } else {
        for (size_t i = 0; i < srv->nkeys; i++)
            if (srv->keys[i].has_address) {
                if (srv->default_key) {
                    srv->default_key = NULL;   /* more than one: the caller must choose */
                    break;
                }
                srv->default_key = &srv->keys[i];
            }
    }
    srv->keyhold_module = srv->default_key && srv->default_key->desc.has_backend;
    ret = KH_EXIT_OK;
out:
    free(objs);
    return ret;
}

static void kh_free_keys(struct kh_signd *srv)
{
    for (size_t i = 0; i < srv->nkeys; i++) {
        kh_bucket_destroy(&srv->keys[i].bucket);
        kh_signd_key_release(&srv->keys[i]);
        kh_pubkey_clear(&srv->keys[i].pub);
        kh_p11_key_clear(&srv->keys[i].desc);
    }
    free(srv->keys);
    srv->keys = NULL;
    srv->nkeys = 0;
}

/* ---- start-up ---------------------------------------------------------- */

static int kh_open_token(struct kh_signd *srv, const struct kh_opts *o)
{
    char err[4200], prompt[128];
    char *pin = NULL;
    CK_RV rv;
    int r;

    rv = kh_p11_open(&srv->p11, o->module, err, sizeof err);
    if (rv != CKR_OK) {
        fprintf(stderr, "keyhold-signd: %s\n", err);
        return KH_EXIT_FAIL;
    }
    rv = kh_p11_find_token(&srv->p11, o->token, &srv->tok);
    if (rv != CKR_OK) {
        fprintf(stderr, "keyhold-signd: no token labelled '%s' in %s (%s)\n", o->token,
                srv->p11.path, kh_rv_name(rv));
        return KH_EXIT_FAIL;
    }
    rv = srv->p11.f->C_OpenSession(srv->tok.slot, CKF_SERIAL_SESSION, NULL, NULL,
                                   &srv->login_session);
    if (rv != CKR_OK) {
        fprintf(stderr, "keyhold-signd: C_OpenSession: %s\n", kh_rv_name(rv));
        return KH_EXIT_FAIL;
    }
    srv->have_login_session = true;
    snprintf(prompt, sizeof prompt, "User PIN for token '%s': ", srv->tok.label);
    r = kh_pin_get(&pin, "KEYHOLD_PIN", o->pin_file, prompt, KH_PIN_PROMPT, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "keyhold-signd: %s\n", err);
        return KH_EXIT_FAIL;
    }
    if (r > 0) {
        fprintf(stderr, "keyhold-signd: a user PIN is needed: --pin-file or KEYHOLD_PIN\n");
        return KH_EXIT_FAIL;
    }
    rv = kh_p11_login(&srv->p11, srv->login_session, CKU_USER, pin);
    kh_pin_free(pin);
    if (rv != CKR_OK) {
        fprintf(stderr, "keyhold-signd: C_Login on token '%s': %s\n", srv->tok.label, kh_rv_name(rv));
        return KH_EXIT_FAIL;
    }
    srv->logged_in = true;
    return KH_EXIT_OK;
}

/* Describes the bound address (the real port when 0 was asked for). */
static void kh_listen_desc(struct kh_signd *srv, kh_wire_listener *l)
{
    const kh_wire_url *u = &srv->url;

    if (u->kind == KH_WIRE_TCP || u->kind == KH_WIRE_TLS) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        unsigned port = u->port;
        bool v6 = strchr(u->host, ':') != NULL;

        if (getsockname(kh_wire_listener_fd(l), (struct sockaddr *)&ss, &sl) == 0) {
            if (ss.ss_family == AF_INET)
                port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            else if (ss.ss_family == AF_INET6)
                port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
        snprintf(srv->listen_desc, sizeof srv->listen_desc, "%s://%s%s%s:%u",
                 u->kind == KH_WIRE_TLS ? "tls" : "tcp", v6 ? "[" : "", u->host, v6 ? "]" : "",
                 port);
    } else if (u->kind == KH_WIRE_UNIX) {
        snprintf(srv->listen_desc, sizeof srv->listen_desc, "unix:%s", u->path);
    } else {
        snprintf(srv->listen_desc, sizeof srv->listen_desc, "vsock://%u:%u", u->cid, u->port);
    }
}

/*
 * Parses the --listen URL. wire.c refuses port 0 (no client can connect to
 * it); a server may bind it and let the kernel choose a free port, which
 * --ready-file and the start-up line then tell.
 */
static int kh_parse_listen_url(kh_wire_url *url, char *err, size_t errlen, const char *s)
{
    size_t n = strlen(s);
    char *tmp;
    int rc;

    if ((strncmp(s, "tcp://", 6) != 0 && strncmp(s, "tls://", 6) != 0) || n < 8 ||
        strcmp(s + n - 2, ":0") != 0)
        return kh_wire_url_parse(url, err, errlen, s);
    tmp = strdup(s);
    if (!tmp) {
        snprintf(err, errlen, "out of memory");
        return KH_WIRE_ENOMEM;
    }
    tmp[n - 1] = '1';
    rc = kh_wire_url_parse(url, err, errlen, tmp);
    free(tmp);
    if (rc == KH_WIRE_OK)
        url->port = 0;
    return rc;
}

static bool kh_write_ready(const char *path, const char *text)
{
    char tmp[4200];
    FILE *f;

    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "w");
    if (!f)
        return false;
    fprintf(f, "%s\n", text);
    if (fclose(f) != 0)
        return false;
    return rename(tmp, path) == 0;
}

int main(int argc, char **argv)
{
    struct kh_signd srv;
    struct kh_opts o;
    kh_wire_listener *listener = NULL;
    struct sigaction sa;
    char err[1024];
    int ret, rc;

    ret = kh_parse_opts(&o, argc, argv);
    if (ret != KH_EXIT_OK)
        return ret;

    memset(&srv, 0, sizeof srv);
    srv.stop_pipe[0] = srv.stop_pipe[1] = -1;
    srv.reap_pipe[0] = srv.reap_pipe[1] = -1;
    pthread_mutex_init(&srv.lock, NULL);
    pthread_cond_init(&srv.idle, NULL);
    atomic_init(&srv.stopping, false);
    kh_signd_policy_open(&srv.open_policy);
    kh_signd_config_init(&srv.cfg, KH_WIRE_FRAME_MAX);
    ret = KH_EXIT_FAIL;

    if (o.config && !kh_signd_config_load(&srv.cfg, o.config, err, sizeof err)) {
        fprintf(stderr, "keyhold-signd: configuration %s\n", err);
        ret = KH_EXIT_USAGE;
        goto out;
    }
    if (o.max_conn > 0)
        srv.cfg.max_connections = (unsigned)o.max_conn;
    if (o.idle_ms > 0)
        srv.cfg.idle_timeout_ms = (unsigned)o.idle_ms;
    if (o.io_ms > 0)
        srv.cfg.io_timeout_ms = (unsigned)o.io_ms;
    srv.handshake_timeout_ms = o.handshake_ms > 0 ? (unsigned)o.handshake_ms : KH_SIGND_DEF_HANDSHAKE_MS;

    if (kh_parse_listen_url(&srv.url, err, sizeof err, o.listen) != KH_WIRE_OK) {
        fprintf(stderr, "keyhold-signd: --listen %s: %s\n", o.listen, err);
        ret = KH_EXIT_USAGE;
        goto out;
    }
    if (srv.url.kind == KH_WIRE_TLS) {
        if (!o.tls_cert || !o.tls_key) {
            fprintf(stderr, "keyhold-signd: tls:// needs --tls-cert and --tls-key\n");
            ret = KH_EXIT_USAGE;
            goto out;
        }
        srv.tls.cert_file = o.tls_cert;
        srv.tls.key_file = o.tls_key;
        srv.tls.ca_file = o.tls_ca;
    } else if (o.tls_cert || o.tls_key || o.tls_ca) {
        fprintf(stderr, "keyhold-signd: --tls-* options need a tls:// URL\n");
        ret = KH_EXIT_USAGE;
        goto out;
    }

    if (kh_open_token(&srv, &o) != KH_EXIT_OK)
        goto out;
    if (kh_load_keys(&srv, o.key) != KH_EXIT_OK)
        goto out;

    if (o.tpm || srv.cfg.tpm_tcti) {
        const char *pcrs = o.pcrs ? o.pcrs : srv.cfg.tpm_pcrs;
        if (!kh_signd_attest_open(&srv.attest, o.tpm ? o.tpm : srv.cfg.tpm_tcti,
                                  pcrs ? pcrs : "sha256:0,1,2,3,4,5,6,7", err, sizeof err)) {
            fprintf(stderr, "keyhold-signd: attestation TPM: %s\n", err);
            goto out;
        }
    }

    if (pipe2(srv.stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0 ||
        pipe2(srv.reap_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        fprintf(stderr, "keyhold-signd: pipe: %s\n", strerror(errno));
        goto out;
    }
    kh_signd_global = &srv;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = kh_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    rc = kh_wire_listen(&listener, err, sizeof err, &srv.url, &srv.tls);
    if (rc != KH_WIRE_OK) {
        fprintf(stderr, "keyhold-signd: cannot listen on %s: %s (%s)\n", o.listen,
                kh_wire_strerror(rc), err);
        goto out;
    }
    kh_listen_desc(&srv, listener);
    kh_signd_log("listening on %s: token '%s', %zu key(s), default key %s%s%s, "
                 "max %u connections, attestation %s%s", srv.listen_desc, srv.tok.label, srv.nkeys,
                 srv.default_key ? srv.default_key->label : "(none)",
                 srv.default_key && srv.default_key->has_address ? " " : "",
                 srv.default_key && srv.default_key->has_address ? srv.default_key->address : "",
                 srv.cfg.max_connections, srv.attest ? "on" : "unavailable",
                 srv.cfg.skip_verify ? ", signatures NOT checked before they leave "
                                       "(verify_signatures: false)" : "");
    if (o.ready_file && !kh_write_ready(o.ready_file, srv.listen_desc)) {
        fprintf(stderr, "keyhold-signd: cannot write %s: %s\n", o.ready_file, strerror(errno));
        kh_wire_listener_close(listener);
        goto out;
    }

    ret = kh_signd_serve(&srv, listener) == 0 ? KH_EXIT_OK : KH_EXIT_FAIL;
    kh_signd_log("stopped");
out:
    kh_signd_global = NULL;
    kh_signd_attest_close(srv.attest);
    kh_free_keys(&srv);
    if (srv.logged_in)
        srv.p11.f->C_Logout(srv.login_session);
    if (srv.have_login_session)
        srv.p11.f->C_CloseSession(srv.login_session);
    kh_p11_close(&srv.p11);
    kh_signd_config_clear(&srv.cfg);
    for (int i = 0; i < 2; i++) {
        if (srv.stop_pipe[i] >= 0)
            close(srv.stop_pipe[i]);
        if (srv.reap_pipe[i] >= 0)
            close(srv.reap_pipe[i]);
    }
    pthread_cond_destroy(&srv.idle);
    pthread_mutex_destroy(&srv.lock);
    return ret;
}

/*
 * keyhold-sign - the external-signer command for gateways (SIGNER_CMD).
 *
 * Reads one message on stdin (a base64 line by default, raw bytes with
 * --in raw), signs it with the private key a PKCS#11 URI names, and writes
 * the signature on stdout (base64 line by default, hex line or raw bytes).
 * Ed25519 keys sign the message (CKM_EDDSA), EC keys its SHA-256
 * (CKM_ECDSA_SHA256, r||s), RSA keys CKM_SHA256_RSA_PKCS; --mechanism
 * chooses another (signcmd.c has the table).
 *
 * Fail closed: stdout stays empty unless the signature is complete; each
 * failure has its own exit code (signcmd.h) and one line on stderr that
 * never holds the PIN or the message. The whole run, module load included,
 * has a deadline: the work runs in a second thread and the main thread,
 * when the deadline passes, _exits with KH_SIGN_EXIT_TIMEOUT, so a module
 * call that hangs cannot keep the process alive.
 *
 * An ordinary Cryptoki consumer: it dlopens the module (keyhold's by
 * default, any PKCS#11 module with --module).
 */
#include "p11.h"
#include "signcmd.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char kh_sign_usage[] =
    "Usage: keyhold-sign --uri 'pkcs11:token=T;object=O' [--in base64|raw]\n"
    "                    [--out base64|hex|raw] [--timeout-ms N] [--module PATH]\n"
    "                    [--pin-file FILE] [--mechanism NAME] [--config FILE]\n"
    "\n"
    "Sign the message on stdin with a PKCS#11 private key; the signature goes\n"
    "to stdout. Input: one line of base64 (default) or raw bytes. Output: a\n"
    "base64 line (default), a hex line or raw bytes. Nothing is written to\n"
    "stdout unless signing succeeded.\n"
    "\n"
    "  --uri URI         the private key (RFC 7512; object= or id= required)\n"
    "  --in FMT          base64 (one line, '=' padded) or raw\n"
    "  --out FMT         base64, hex or raw\n"
    "  --timeout-ms N    deadline for the whole run (default 10000)\n"
    "  --module PATH     PKCS#11 module (default: the URI's module-path,\n"
    "                    $KEYHOLD_MODULE, else keyhold's)\n"
    "  --pin-file FILE   user PIN: first line of FILE\n"
    "  --mechanism NAME  eddsa, ecdsa-sha256 (EC default), ecdsa-sha384,\n"
    "                    ecdsa-sha512, ecdsa, bip340, ecdsa-recoverable,\n"
    "                    rsa-pkcs-sha256 (RSA default), rsa-pkcs-sha384/512,\n"
    "                    rsa-pss-sha256/384/512\n"
    "  --config FILE     'name = value' lines: uri, module, pin_file, in, out,\n"
    "                    timeout_ms, mechanism (default: $KEYHOLD_SIGN_CONFIG)\n"
    "\n"
    "The URI may also come from $KEYHOLD_SIGN_URI. PIN: the URI's pin-value or\n"
    "pin-source, else --pin-file, else $KEYHOLD_PIN.\n"
    "Exit: 0 ok, 1 signing error, 2 usage, 3 bad input, 4 key not found,\n"
    "5 login failed, 6 signer unavailable, 7 timeout.\n";

/* The error text buffer: long enough for a dlerror() with a full path. */
#define KH_SIGN_ERR_LEN 4400

/* One run: what the main thread hands the worker and what comes back. */
struct kh_sign_job {
    /* In (read-only once the worker runs, but for what it takes). */
    const struct kh_sign_opts *o;
    struct kh_p11_uri *uri;
    const char *module;          /* explicit module path or NULL */
    char *env_pin;               /* taken from $KEYHOLD_PIN; the worker wipes it */

    /* Out, valid once done is set. */
    int code;
    char err[KH_SIGN_ERR_LEN];
    uint8_t *out;
    size_t out_len;

    /* What the worker is doing, for the timeout message. */
    _Atomic(const char *) stage;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
};

static void kh_sign_stage(struct kh_sign_job *j, const char *stage)
{
    atomic_store(&j->stage, stage);
}

/* Formats a failure into j->err; returns code. */
static int kh_sign_fail(struct kh_sign_job *j, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int kh_sign_fail(struct kh_sign_job *j, int code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(j->err, sizeof j->err, fmt, ap);
    va_end(ap);
    return code;
}

/* A failed Cryptoki call: its exit code and "what: CKR_X (hint)". */
static int kh_sign_fail_rv(struct kh_sign_job *j, const char *what, CK_RV rv)
{
    const char *hint = "";

    switch (rv) {
    case CKR_PIN_INCORRECT: hint = " (wrong PIN)"; break;
    case CKR_PIN_LOCKED: hint = " (the PIN is locked after too many failures)"; break;
    case CKR_USER_PIN_NOT_INITIALIZED: hint = " (the token has no user PIN yet)"; break;
    case CKR_USER_NOT_LOGGED_IN: hint = " (no PIN was given and the key needs a login)"; break;
    case CKR_KEY_TYPE_INCONSISTENT: hint = " (the mechanism does not fit this key)"; break;
    case CKR_KEY_FUNCTION_NOT_PERMITTED: hint = " (the key may not sign)"; break;
    case CKR_MECHANISM_INVALID: hint = " (the token does not offer this mechanism)"; break;
    case CKR_DEVICE_ERROR: hint = " (the signing device failed or did not answer)"; break;
    case CKR_KH_STORE_ERROR: hint = " (the token store could not be read)"; break;
    default: break;
    }
    return kh_sign_fail(j, kh_sign_exit_for_rv(rv), "%s: %s%s", what, kh_rv_name(rv), hint);
}

/* Finds the one initialised token the URI's token attributes match. */
static int kh_sign_pick_token(struct kh_sign_job *j, struct kh_p11 *p, struct kh_p11_token *out)
{
    struct kh_p11_token *toks = NULL;
    size_t n = 0, found = 0;
    CK_RV rv = kh_p11_tokens(p, &toks, &n);

    if (rv != CKR_OK)
        return kh_sign_fail_rv(j, "C_GetSlotList", rv);
    for (size_t i = 0; i < n; i++) {
        if (!(toks[i].info.flags & CKF_TOKEN_INITIALIZED) || !kh_p11_uri_match_token(j->uri, &toks[i]))
            continue;
        if (found++ == 0)
            *out = toks[i];
    }
    free(toks);
    if (found == 0) {
        if (j->uri->token)
            return kh_sign_fail(j, KH_SIGN_EXIT_UNAVAILABLE, "no token labelled '%s' is present",
                                j->uri->token);
        return kh_sign_fail(j, KH_SIGN_EXIT_UNAVAILABLE, "no initialised token matches the URI");
    }
    if (found > 1)
        return kh_sign_fail(j, KH_SIGN_EXIT_USAGE,
                            "the URI matches %zu tokens: name one with token=", found);
    return KH_SIGN_EXIT_OK;
}

/*
 * Gets the user PIN: the URI's pin-value or pin-source, else --pin-file,
 * else $KEYHOLD_PIN. Returns as kh_pin_get: 0 (PIN in *pin), 1 none, -1.
 */
static int kh_sign_get_pin(struct kh_sign_job *j, char **pin)
{
    int r = kh_pin_from_uri(pin, j->uri, j->err, sizeof j->err);

    if (r <= 0)
        return r;
    if (j->o->pin_file)
        return kh_pin_get(pin, NULL, j->o->pin_file, NULL, KH_PIN_NO_PROMPT, j->err, sizeof j->err);
    if (j->env_pin) {
        if (!j->env_pin[0]) {
            snprintf(j->err, sizeof j->err, "empty PIN in KEYHOLD_PIN");
            return -1;
        }
        *pin = j->env_pin;
        j->env_pin = NULL;
        return 0;
    }
    return 1;
}

/* Logs the user in when a PIN is available or the token requires it.
 * Every copy of the PIN is wiped before this returns. */
static int kh_sign_login(struct kh_sign_job *j, struct kh_p11 *p, CK_SESSION_HANDLE s,
                         const struct kh_p11_token *tok, bool *logged_in)
{
    char *pin = NULL;
    int r = kh_sign_get_pin(j, &pin);
    CK_RV rv;

    /* Whatever source was used, no other copy is kept. */
    kh_pin_free(j->env_pin);
    j->env_pin = NULL;
    kh_pin_free(j->uri->pin_value);
    j->uri->pin_value = NULL;

    if (r < 0)
        return KH_SIGN_EXIT_LOGIN;   /* j->err says why, without the PIN */
    if (r > 0) {
        if (tok->info.flags & CKF_LOGIN_REQUIRED)
            return kh_sign_fail(j, KH_SIGN_EXIT_LOGIN,
                                "no PIN: give the URI a pin-source, use --pin-file or set KEYHOLD_PIN");
        return KH_SIGN_EXIT_OK;
    }
    rv = kh_p11_login(p, s, CKU_USER, pin);
    kh_pin_free(pin);
    if (rv != CKR_OK)
        return kh_sign_fail_rv(j, "C_Login", rv);
    *logged_in = true;
    return KH_SIGN_EXIT_OK;
}

/* Describes the URI's object for messages: "label 'x', id 01ab". */
static void kh_sign_describe_uri(const struct kh_p11_uri *u, char *buf, size_t len)
{
    char idhex[2 * 32 + 4] = "";

    if (u->has_id && !kh_hex_encode(idhex, sizeof idhex, u->id, u->id_len))
        snprintf(idhex, sizeof idhex, "(%zu bytes)", u->id_len);
    snprintf(buf, len, "%s%s%s%s%s%s", u->object ? "label '" : "", u->object ? u->object : "",
             u->object ? "'" : "", u->object && u->has_id ? ", " : "", u->has_id ? "id " : "",
             u->has_id ? idhex : "");
}

/* Finds the one private key the URI names. */
static int kh_sign_find_key(struct kh_sign_job *j, struct kh_p11 *p, CK_SESSION_HANDLE s,
                            const struct kh_p11_token *tok, CK_OBJECT_HANDLE *key)
{
    CK_ATTRIBUTE tmpl[3];
    CK_ULONG n = 0, count = 0;
    CK_OBJECT_CLASS cls;
    CK_OBJECT_HANDLE *objs = NULL;
    char what[512];
    CK_RV rv;

    kh_p11_uri_template(j->uri, tmpl, &n, &cls);
    if (!j->uri->has_class) {
        /* object and/or id are there (main checked): room for the class. */
        cls = CKO_PRIVATE_KEY;
        tmpl[n].type = CKA_CLASS;
        tmpl[n].pValue = &cls;
        tmpl[n].ulValueLen = sizeof cls;
        n++;
    }
    rv = kh_p11_find(p, s, tmpl, n, &objs, &count);
    if (rv != CKR_OK)
        return kh_sign_fail_rv(j, "C_FindObjects", rv);
    kh_sign_describe_uri(j->uri, what, sizeof what);
    if (count == 0)
        return kh_sign_fail(j, KH_SIGN_EXIT_NO_KEY, "no private key with %s on token '%s'", what,
                            tok->label);
    if (count > 1) {
        free(objs);
        return kh_sign_fail(j, KH_SIGN_EXIT_USAGE,
                            "%lu private keys match %s on token '%s': the URI must name one (object= and id=)", count,
                            what, tok->label);
    }
    *key = objs[0];
    free(objs);
    return KH_SIGN_EXIT_OK;
}

/* Is mech offered for signing on slot? CKR_MECHANISM_INVALID (or no
 * CKF_SIGN) is a "no"; any other answer is a "maybe" (C_SignInit decides). */
static bool kh_sign_mech_offered(struct kh_p11 *p, CK_SLOT_ID slot, CK_MECHANISM_TYPE mech)
{
    CK_MECHANISM_INFO info;
    CK_RV rv = p->f->C_GetMechanismInfo(slot, mech, &info);

    if (rv == CKR_OK)
        return (info.flags & CKF_SIGN) != 0;
    return rv != CKR_MECHANISM_INVALID;
}

/* Chooses the mechanism, signs msg and encodes the signature into j->out. */
static int kh_sign_with_key(struct kh_sign_job *j, struct kh_p11 *p, CK_SESSION_HANDLE s,
                            const struct kh_p11_token *tok, CK_OBJECT_HANDLE key,
                            const uint8_t *msg, size_t msg_len)
{
    const struct kh_sign_mech *m;
    struct kh_p11_key desc;
    CK_RSA_PKCS_PSS_PARAMS pss;
    CK_MECHANISM mech = { 0, NULL, 0 };
    uint8_t pre[KH_SIGN_PREHASH_MAX];
    const uint8_t *data = msg;
    size_t data_len = msg_len, sig_len = 0;
    uint8_t *sig = NULL;
    char tbuf[32];
    const char *tname;
    int ret;
    CK_RV rv;

    rv = kh_p11_describe(p, s, key, &desc);
    if (rv != CKR_OK)
        return kh_sign_fail_rv(j, "C_GetAttributeValue", rv);
    tname = kh_p11_key_type_name(&desc, tbuf, sizeof tbuf);
    if (j->o->mechanism) {
        m = kh_sign_mech_by_name(j->o->mechanism);
        if (!m || !kh_sign_mech_fits(m, desc.key_type, desc.kind)) {
            ret = kh_sign_fail(j, KH_SIGN_EXIT_USAGE, "mechanism %s does not fit this %s key",
                               j->o->mechanism, tname);
            goto out;
        }
    } else {
        m = kh_sign_mech_default(desc.key_type);
        if (!m) {
            ret = kh_sign_fail(j, KH_SIGN_EXIT_FAIL, "no signing mechanism for this %s key", tname);
            goto out;
        }
    }
    if (m->input_len && msg_len != m->input_len) {
        ret = kh_sign_fail(j, KH_SIGN_EXIT_INPUT, "mechanism %s signs exactly %zu bytes; the message has %zu",
                           m->name, m->input_len, msg_len);
        goto out;
    }

    mech.mechanism = m->mech;
    if (!kh_sign_mech_offered(p, tok->slot, m->mech) && m->raw_mech != CK_UNAVAILABLE_INFORMATION &&
        kh_sign_mech_offered(p, tok->slot, m->raw_mech)) {
        /* The token lacks the hashing mechanism: hash here, sign raw. */
        if (!kh_sign_prehash(m, msg, msg_len, pre, &data_len)) {
            ret = kh_sign_fail(j, KH_SIGN_EXIT_FAIL, "cannot hash the message for %s", m->name);
            goto out;
        }
        data = pre;
        mech.mechanism = m->raw_mech;
    }
    if (kh_sign_mech_pss_params(m, &pss)) {
        mech.pParameter = &pss;
        mech.ulParameterLen = sizeof pss;
    }

    kh_sign_stage(j, "signing (C_SignInit, C_Sign)");
    rv = kh_p11_sign(p, s, &mech, key, data, data_len, &sig, &sig_len);
    if (rv != CKR_OK) {
        char what[96];
        snprintf(what, sizeof what, "C_Sign with %s", kh_mech_name(mech.mechanism));
        ret = kh_sign_fail_rv(j, what, rv);
        goto out;
    }
    j->out = kh_sign_encode_output(j->o->out, sig, sig_len, &j->out_len);
    ret = j->out ? KH_SIGN_EXIT_OK : kh_sign_fail(j, KH_SIGN_EXIT_FAIL, "out of memory");
out:
    kh_wipe(pre, sizeof pre);
    free(sig);
    kh_p11_key_clear(&desc);
    return ret;
}

/* The whole run, in the worker thread. */
static int kh_sign_run(struct kh_sign_job *j)
{
    struct kh_p11 p;
    struct kh_p11_token tok;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    uint8_t *data = NULL, *msg = NULL;
    size_t len = 0, msg_len = 0;
    bool have_session = false, logged_in = false;
    int ret;
    CK_RV rv;

    memset(&p, 0, sizeof p);
    kh_sign_stage(j, "reading the message");
    ret = kh_sign_read_all(STDIN_FILENO,
                           j->o->in == KH_SIGN_IN_RAW ? KH_SIGN_MAX_MESSAGE : KH_SIGN_MAX_BASE64,
                           &data, &len, j->err, sizeof j->err);
    if (ret != KH_SIGN_EXIT_OK)
        goto out;
    ret = kh_sign_decode_input(&msg, &msg_len, j->o->in, data, len, j->err, sizeof j->err);
    if (ret != KH_SIGN_EXIT_OK)
        goto out;

    kh_sign_stage(j, "loading the module");
    rv = kh_p11_load(&p, j->module, j->err, sizeof j->err);
    if (rv != CKR_OK) {
        ret = KH_SIGN_EXIT_UNAVAILABLE;
        goto out;
    }
    kh_sign_stage(j, "initialising the module (C_Initialize)");
    rv = kh_p11_initialize(&p);
    if (rv != CKR_OK) {
        kh_sign_fail_rv(j, "C_Initialize", rv);
        ret = KH_SIGN_EXIT_UNAVAILABLE;
        goto out;
    }
    kh_sign_stage(j, "finding the token");
    ret = kh_sign_pick_token(j, &p, &tok);
    if (ret != KH_SIGN_EXIT_OK)
        goto out;
    rv = p.f->C_OpenSession(tok.slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        ret = kh_sign_fail_rv(j, "C_OpenSession", rv);
        goto out;
    }
    have_session = true;
    kh_sign_stage(j, "logging in (C_Login)");
    ret = kh_sign_login(j, &p, s, &tok, &logged_in);
    if (ret != KH_SIGN_EXIT_OK)
        goto out;
    kh_sign_stage(j, "finding the key");
    ret = kh_sign_find_key(j, &p, s, &tok, &key);
    if (ret != KH_SIGN_EXIT_OK)
        goto out;
    ret = kh_sign_with_key(j, &p, s, &tok, key, msg, msg_len);

out:
    kh_sign_stage(j, "closing the module (C_Logout, C_Finalize)");
    kh_pin_free(j->env_pin);
    j->env_pin = NULL;
    if (logged_in)
        p.f->C_Logout(s);
    if (have_session)
        p.f->C_CloseSession(s);
    kh_p11_close(&p);
    if (msg)
        kh_wipe(msg, msg_len);
    free(msg);
    if (data)
        kh_wipe(data, len);
    free(data);
    if (ret != KH_SIGN_EXIT_OK) {
        free(j->out);
        j->out = NULL;
        j->out_len = 0;
    }
    return ret;
}

static void *kh_sign_worker(void *arg)
{
    struct kh_sign_job *j = arg;
    int code = kh_sign_run(j);

    pthread_mutex_lock(&j->lock);
    j->code = code;
    j->done = true;
    pthread_cond_signal(&j->cond);
    pthread_mutex_unlock(&j->lock);
    return NULL;
}

/* ---- the main thread --------------------------------------------------- */

static void kh_sign_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void kh_sign_usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("keyhold-sign: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (see keyhold-sign --help)\n", stderr);
}

/* Overwrites the value of every pin-value query attribute in a PKCS#11 URI
 * string in place (argv, environment), so process listings lose it. */
static void kh_sign_hide_pin_value(char *s)
{
    char *q = strstr(s, "pkcs11:");

    q = q ? strchr(q, '?') : NULL;
    while (q) {
        q++;
        if (strncmp(q, "pin-value=", 10) == 0) {
            for (char *v = q + 10; *v && *v != '&'; v++)
                *v = '*';
        }
        q = strchr(q, '&');
    }
}

/* Takes $KEYHOLD_PIN out of the environment: a copy comes back, the
 * variable's bytes (which /proc/PID/environ shows) are wiped. */
static char *kh_sign_take_env_pin(void)
{
    char *v = getenv("KEYHOLD_PIN"), *copy;

    if (!v)
        return NULL;
    copy = strdup(v);
    kh_wipe(v, strlen(v));
    unsetenv("KEYHOLD_PIN");
    return copy;
}

/* Reads and parses a configuration file into cfg. */
static bool kh_sign_load_config(struct kh_sign_opts *cfg, const char *path)
{
    char err[512];
    uint8_t *text = NULL;
    size_t len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int r;
    bool ok;

    if (fd < 0) {
        kh_sign_usage_error("cannot open the configuration %s: %s", path, strerror(errno));
        return false;
    }
    r = kh_sign_read_all(fd, KH_SIGN_MAX_CONFIG, &text, &len, err, sizeof err);
    close(fd);
    if (r != KH_SIGN_EXIT_OK) {
        kh_sign_usage_error("configuration %s: %s", path, err);
        return false;
    }
    ok = kh_sign_conf_parse(cfg, (const char *)text, len, err, sizeof err);
    kh_wipe(text, len);
    free(text);
    if (!ok)
        kh_sign_usage_error("configuration %s: %s", path, err);
    return ok;
}

enum {
    KH_SO_URI = 256, KH_SO_IN, KH_SO_OUT, KH_SO_TIMEOUT, KH_SO_MODULE, KH_SO_PIN_FILE,
    KH_SO_MECHANISM, KH_SO_CONFIG,
};

static const struct option kh_sign_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "uri", required_argument, NULL, KH_SO_URI },
    { "in", required_argument, NULL, KH_SO_IN },
    { "out", required_argument, NULL, KH_SO_OUT },
    { "timeout-ms", required_argument, NULL, KH_SO_TIMEOUT },
    { "module", required_argument, NULL, KH_SO_MODULE },
    { "pin-file", required_argument, NULL, KH_SO_PIN_FILE },
    { "mechanism", required_argument, NULL, KH_SO_MECHANISM },
    { "config", required_argument, NULL, KH_SO_CONFIG },
    { NULL, 0, NULL, 0 },
};

/*
 * Parses the command line, the configuration and $KEYHOLD_SIGN_URI into o
 * (command line first, then the configuration, then the environment).
 * Returns -1 to go on, else the exit status.
 */
static int kh_sign_parse_args(struct kh_sign_opts *o, int argc, char **argv)
{
    struct kh_sign_opts cfg;
    const char *config = NULL;
    char err[512];
    int c;

    memset(&cfg, 0, sizeof cfg);
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", kh_sign_options, NULL)) != -1) {
        const char *name = NULL;
        const struct option *opt = NULL;
        switch (c) {
        case 'h':
            fputs(kh_sign_usage, stdout);
            return KH_SIGN_EXIT_OK;
        case KH_SO_URI: name = "uri"; break;
        case KH_SO_IN: name = "in"; break;
        case KH_SO_OUT: name = "out"; break;
        case KH_SO_TIMEOUT: name = "timeout_ms"; break;
        case KH_SO_MODULE: name = "module"; break;
        case KH_SO_PIN_FILE: name = "pin_file"; break;
        case KH_SO_MECHANISM: name = "mechanism"; break;
        case KH_SO_CONFIG:
            if (config) {
                kh_sign_usage_error("--config is given twice");
                return KH_SIGN_EXIT_USAGE;
            }
            config = optarg;
            continue;
        default:
            if (optopt && optopt < 256)
                kh_sign_usage_error("unknown option -%c", optopt);
            else
                kh_sign_usage_error("unknown option or missing argument: %s", argv[optind - 1]);
            return KH_SIGN_EXIT_USAGE;
        }
        if (!kh_sign_opts_set(o, name, optarg, err, sizeof err)) {
            for (opt = kh_sign_options; opt->name && opt->val != c; opt++)
                ;
            kh_sign_usage_error("--%s: %s", opt->name ? opt->name : name, err);
            return KH_SIGN_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        kh_sign_usage_error("unexpected argument %s", argv[optind]);
        return KH_SIGN_EXIT_USAGE;
    }
    if (!config) {
        config = getenv("KEYHOLD_SIGN_CONFIG");
        if (config && !config[0])
            config = NULL;
    }
    if (config) {
        if (!kh_sign_load_config(&cfg, config)) {
            kh_sign_opts_clear(&cfg);
            return KH_SIGN_EXIT_USAGE;
        }
        kh_sign_opts_merge(o, &cfg);
        kh_sign_opts_clear(&cfg);
    }
    if (!o->uri) {
        char *env = getenv("KEYHOLD_SIGN_URI");
        if (env && env[0]) {
            bool ok = kh_sign_opts_set(o, "uri", env, err, sizeof err);
            kh_sign_hide_pin_value(env);
            if (!ok) {
                kh_sign_usage_error("KEYHOLD_SIGN_URI: %s", err);
                return KH_SIGN_EXIT_USAGE;
            }
        }
    }
    if (!o->uri) {
        kh_sign_usage_error("no key: give --uri, a configuration with uri, or KEYHOLD_SIGN_URI");
        return KH_SIGN_EXIT_USAGE;
    }
    if (o->in == KH_SIGN_IN_UNSET)
        o->in = KH_SIGN_IN_BASE64;
    if (o->out == KH_SIGN_OUT_UNSET)
        o->out = KH_SIGN_OUT_BASE64;
    if (o->timeout_ms == 0)
        o->timeout_ms = KH_SIGN_TIMEOUT_DEFAULT_MS;
    return -1;
}

/* Writes all of buf to fd. Returns 0 or an errno value. */
static int kh_sign_write_all(int fd, const uint8_t *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        if (n == 0)
            return EIO;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Gives up at the deadline: one line on stderr (write(2): no stdio lock
 * the worker might hold), nothing on stdout, no cleanup that could block. */
static _Noreturn void kh_sign_timeout(struct kh_sign_job *j, long ms)
{
    char line[256];
    const char *stage = atomic_load(&j->stage);
    int n = snprintf(line, sizeof line, "keyhold-sign: timed out after %ld ms while %s\n", ms,
                     stage ? stage : "starting");

    if (n > 0)
        (void)!write(STDERR_FILENO, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    _exit(KH_SIGN_EXIT_TIMEOUT);
}

int main(int argc, char **argv)
{
    struct kh_sign_opts o;
    struct kh_p11_uri uri;
    struct kh_sign_job *j = NULL;
    struct timespec deadline;
    pthread_condattr_t ca;
    pthread_t worker;
    char err[512];
    char *env_pin;
    int ret, rc;

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    signal(SIGPIPE, SIG_IGN);
    env_pin = kh_sign_take_env_pin();
    memset(&o, 0, sizeof o);
    memset(&uri, 0, sizeof uri);

    ret = kh_sign_parse_args(&o, argc, argv);
    for (int i = 1; i < argc; i++)
        kh_sign_hide_pin_value(argv[i]);
    if (ret >= 0)
        goto out;
    ret = KH_SIGN_EXIT_USAGE;
    if (!kh_p11_uri_parse(&uri, o.uri, err, sizeof err)) {
        kh_sign_usage_error("bad URI: %s", err);
        goto out;
    }
    kh_sign_hide_pin_value(o.uri);   /* the parsed copy is wiped after C_Login */
    if (!uri.object && !uri.has_id) {
        kh_sign_usage_error("the URI must name the key with object= or id=");
        goto out;
    }
    if (uri.has_class && uri.cls != CKO_PRIVATE_KEY) {
        kh_sign_usage_error("the URI's type= must be private (or left out)");
        goto out;
    }

    j = calloc(1, sizeof *j);
    if (!j) {
        fputs("keyhold-sign: out of memory\n", stderr);
        ret = KH_SIGN_EXIT_FAIL;
        goto out;
    }
    j->o = &o;
    j->uri = &uri;
    j->module = o.module ? o.module : uri.module_path;
    j->env_pin = env_pin;
    env_pin = NULL;
    atomic_init(&j->stage, "starting");

    deadline.tv_sec += o.timeout_ms / 1000;
    deadline.tv_nsec += (o.timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    if (pthread_condattr_init(&ca) != 0 || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&j->cond, &ca) != 0 || pthread_mutex_init(&j->lock, NULL) != 0) {
        fputs("keyhold-sign: cannot set up the deadline\n", stderr);
        ret = KH_SIGN_EXIT_FAIL;
        goto out;
    }
    pthread_condattr_destroy(&ca);
    rc = pthread_create(&worker, NULL, kh_sign_worker, j);
    if (rc != 0) {
        fprintf(stderr, "keyhold-sign: cannot start the worker thread: %s\n", strerror(rc));
        ret = KH_SIGN_EXIT_FAIL;
        goto out;
    }

    pthread_mutex_lock(&j->lock);
    while (!j->done) {
        rc = pthread_cond_timedwait(&j->cond, &j->lock, &deadline);
        if (rc == ETIMEDOUT && !j->done)
            kh_sign_timeout(j, o.timeout_ms);
    }
    pthread_mutex_unlock(&j->lock);
    pthread_join(worker, NULL);
    pthread_cond_destroy(&j->cond);
    pthread_mutex_destroy(&j->lock);

    ret = j->code;
    if (ret == KH_SIGN_EXIT_OK) {
        rc = kh_sign_write_all(STDOUT_FILENO, j->out, j->out_len);
        if (rc == 0 && close(STDOUT_FILENO) != 0 && errno != EINTR)
            rc = errno;
        if (rc != 0) {
            fprintf(stderr, "keyhold-sign: cannot write the signature: %s\n", strerror(rc));
            ret = KH_SIGN_EXIT_FAIL;
        }
    } else {
        fprintf(stderr, "keyhold-sign: %s\n", j->err[0] ? j->err : "signing failed");
    }

out:
    if (j) {
        free(j->out);
        kh_pin_free(j->env_pin);
        free(j);
    }
    kh_pin_free(env_pin);
    kh_p11_uri_clear(&uri);
    kh_sign_opts_clear(&o);
    return ret;
}

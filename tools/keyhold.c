/*
 * keyhold - the keyhold admin command.
 *
 * An ordinary Cryptoki consumer of the keyhold module: it dlopens the module
 * and uses only the PKCS#11 interface plus keyhold's vendor constants, so
 * anything it does, any PKCS#11 application can do.
 *
 * Exit status: 0 success, 1 runtime error, 2 usage error.
 */
#include "bech32.h"
#include "encode.h"
#include "p11.h"
#include "tpm.h"
#include "tpmutil.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KH_EXIT_OK 0
#define KH_EXIT_FAIL 1
#define KH_EXIT_USAGE 2

/* Largest key file import reads (an RSA-4096 PEM is about 3.3 KiB). */
#define KH_IMPORT_MAX (64 * 1024)
/* Largest CKA_ID accepted from --id. */
#define KH_ID_MAX 128

static const char *kh_prog = "keyhold";

/* ---- messages ---------------------------------------------------------- */

static void kh_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void kh_err(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", kh_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Reports a failed Cryptoki call; returns KH_EXIT_FAIL. */
static int kh_err_rv(const char *what, CK_RV rv)
{
    const char *hint = "";

    switch (rv) {
    case CKR_PIN_INCORRECT: hint = " (wrong PIN)"; break;
    case CKR_PIN_LOCKED: hint = " (the PIN is locked after too many failures)"; break;
    case CKR_USER_PIN_NOT_INITIALIZED: hint = " (the token has no user PIN yet)"; break;
    case CKR_MECHANISM_INVALID: hint = " (the token does not support this key type)"; break;
    case CKR_KH_STORE_ERROR: hint = " (the token store could not be read or written)"; break;
    default: break;
    }
    kh_err("%s: %s%s", what, kh_rv_name(rv), hint);
    return KH_EXIT_FAIL;
}

/* ---- usage ------------------------------------------------------------- */

static const char kh_usage_main[] =
    "Usage: keyhold [--module PATH] COMMAND [OPTIONS]\n"
    "\n"
    "Administer keyhold PKCS#11 tokens and keys.\n"
    "\n"
    "Commands:\n"
    "  init      create a token (sets the SO and user PINs)\n"
    "  keygen    generate a key pair on a token\n"
    "  import    import a private key (hex, nsec, PEM) or a TPM key (tpm2_create)\n"
    "  list      list objects as PKCS#11 URIs (or JSON)\n"
    "  pubkey    print a public key (PEM, hex, x-only, npub, Ethereum, OpenSSH)\n"
    "  delete    delete a key pair\n"
    "  remote add  register a key held by a remote signer\n"
    "  doctor    check the installation and explain what does not work\n"
    "  tpm setup persist the TPM primary key keyhold creates TPM keys under\n"
    "\n"
    "Global options (also accepted after COMMAND):\n"
    "  --module PATH   the keyhold module (default: $KEYHOLD_MODULE, the build\n"
    "                  tree next to this program, or the installed module)\n"
    "  -h, --help      show help; 'keyhold COMMAND --help' for a command\n"
    "\n"
    "Environment: KEYHOLD_MODULE, KEYHOLD_PIN, KEYHOLD_SO_PIN; the module reads\n"
    "KEYHOLD_STORE, KEYHOLD_CONF and KEYHOLD_TCTI itself (tpm setup and doctor\n"
    "read KEYHOLD_CONF and KEYHOLD_TCTI too).\n";

static const char kh_usage_init[] =
    "Usage: keyhold init --label LABEL [--so-pin-file FILE] [--pin-file FILE]\n"
    "\n"
    "Initialise the free slot's token as LABEL, set its SO PIN and user PIN.\n"
    "PINs come from the files (first line; '-' = stdin), else $KEYHOLD_SO_PIN\n"
    "and $KEYHOLD_PIN, else are asked twice on the terminal.\n";

static const char kh_usage_keygen[] =
    "Usage: keyhold keygen --token TOKEN --type TYPE --label LABEL [--id HEX]\n"
    "                      [--backend vault|tpm|remote] [--pcr SEL] [--pin-file FILE]\n"
    "\n"
    "Generate a key pair. TYPE: secp256k1, p256, p384, ed25519, rsa2048,\n"
    "rsa3072, rsa4096. Without --id a random 16-byte CKA_ID is used; without\n"
    "--backend the token's default backend. Prints the private key's URI.\n"
    "--pcr SEL (TPM keys): the key signs only while the PCRs in SEL\n"
    "(\"sha256:7\", \"sha256:0,7\") hold their values of now.\n"
    "The user PIN comes from --pin-file, $KEYHOLD_PIN or the terminal.\n";

static const char kh_usage_import[] =
    "Usage: keyhold import --token TOKEN --label LABEL [--id HEX] [--pin-file FILE]\n"
    "                      (--hex | --nsec | --pem) FILE\n"
    "       keyhold import --token TOKEN --label LABEL [--id HEX] [--pin-file FILE]\n"
    "                      --tpm-pub FILE --tpm-priv FILE [--tpm-auth-file FILE]\n"
    "                      [--tpm-parent HANDLE]\n"
    "\n"
    "Import a private key from FILE ('-' = stdin):\n"
    "  --hex   a 32-byte secp256k1 secret in hex (optional 0x)\n"
    "  --nsec  a NIP-19 nsec (secp256k1)\n"
    "  --pem   a PEM private key: EC P-256/P-384/secp256k1, Ed25519 or RSA\n"
    "or adopt a key that lives in the TPM, as `tpm2_create -u PUB -r PRIV`\n"
    "wrote it: its auth value is empty or the first line of --tpm-auth-file;\n"
    "its parent is the persistent key at --tpm-parent (default: the\n"
    "configured primary, 0x81000001).\n"
    "Without --id, CKA_ID is the first 16 bytes of SHA-256 of the public key.\n"
    "Prints the private key's URI.\n";

static const char kh_usage_list[] =
    "Usage: keyhold list [--token TOKEN] [--json] [--pin-file FILE]\n"
    "\n"
    "List the objects of every token (or one) as PKCS#11 URIs, or as a JSON\n"
    "array. Private objects are listed only with a PIN ($KEYHOLD_PIN or\n"
    "--pin-file); the terminal is never asked.\n";

static const char kh_usage_pubkey[] =
    "Usage: keyhold pubkey --token TOKEN --label LABEL --format FORMAT\n"
    "                      [--pin-file FILE]\n"
    "\n"
    "Print a public key. FORMAT:\n"
    "  pem    SubjectPublicKeyInfo PEM\n"
    "  hex    EC: uncompressed point; Ed25519: 32 bytes; RSA: modulus\n"
    "  xonly  secp256k1 x coordinate (BIP-340 / Nostr)\n"
    "  npub   secp256k1 x coordinate as a NIP-19 npub\n"
    "  eth    secp256k1 Ethereum address (EIP-55)\n"
    "  ssh    OpenSSH public key line (P-256, P-384, Ed25519, RSA)\n";

static const char kh_usage_delete[] =
    "Usage: keyhold delete --token TOKEN --label LABEL [--pin-file FILE]\n"
    "\n"
    "Destroy the private and public key objects labelled LABEL.\n";

static const char kh_usage_remote_add[] =
    "Usage: keyhold remote add --url URL --key REMOTE_ID [--label LABEL] [--token TOKEN]\n"
    "                          [--id HEX] [--pin-file FILE]\n"
    "       keyhold remote add --driver NAME --key REF [--label LABEL] [--token TOKEN] ...\n"
    "\n"
    "Register a key that a remote signer holds. The module asks the signer for\n"
    "the key's public key once and stores it with the reference\n"
    "(CKA_KH_REMOTE_REF) as a key pair: signatures are made by the signer and\n"
    "checked against that public key. URL: unix:/path, tcp://host:port,\n"
    "tls://host:port or vsock://cid:port; the reference is 'signer:URL#REMOTE_ID'.\n"
    "With --driver, a plugin driver configured as remote_plugin_NAME serves the\n"
    "key and the reference is 'NAME:REF'. Without --label the label is the\n"
    "remote id; without --token the only initialised token; without --id,\n"
    "CKA_ID is the first 16 bytes of SHA-256 of the public key. Prints the\n"
    "private key's URI.\n";
static const char kh_usage_tpm_setup[] =
    "Usage: keyhold tpm setup [--handle HANDLE] [--owner-auth-file FILE]\n"
    "\n"
    "Create the TPM primary key from the TCG SRK template (ECC P-256; the same\n"
    "key after every reboot) and persist it at HANDLE (default: tpm_primary\n"
    "of KEYHOLD_CONF, else 0x81000001), where the module looks for it. The\n"
    "owner hierarchy's auth value, if it has one, is the first line of FILE\n"
    "('-' = stdin) or asked on the terminal. Nothing changes when HANDLE\n"
    "already holds that key; another key there is left alone (exit 1).\n";

static const char kh_usage_doctor[] =
    "Usage: keyhold doctor\n"
    "\n"
    "Check the module, the store, the tokens and their mechanisms. Each line\n"
    "is ok, warn or fail with a reason; exit status 1 if anything failed.\n";

/* ---- options ----------------------------------------------------------- */

enum {
    KH_OPT_MODULE = 256,
    KH_OPT_LABEL,
    KH_OPT_TOKEN,
    KH_OPT_TYPE,
    KH_OPT_ID,
    KH_OPT_BACKEND,
    KH_OPT_PIN_FILE,
    KH_OPT_SO_PIN_FILE,
    KH_OPT_HEX,
    KH_OPT_NSEC,
    KH_OPT_PEM,
    KH_OPT_JSON,
    KH_OPT_FORMAT,
    KH_OPT_URL,
    KH_OPT_KEY,
    KH_OPT_DRIVER,
    KH_OPT_PCR,
    KH_OPT_TPM_PUB,
    KH_OPT_TPM_PRIV,
    KH_OPT_TPM_AUTH_FILE,
    KH_OPT_TPM_PARENT,
    KH_OPT_HANDLE,
    KH_OPT_OWNER_AUTH_FILE,
};

/* Everything any command may be given; each command says which it takes. */
struct kh_opts {
    const char *module;
    const char *label;
    const char *token;
    const char *type;
    const char *id;
    const char *backend;
    const char *pin_file;
    const char *so_pin_file;
    const char *format;
    const char *url;
    const char *key;
    const char *driver;
    int import_kind;      /* KH_OPT_HEX, KH_OPT_NSEC, KH_OPT_PEM, KH_OPT_TPM_PUB or 0 */
    const char *import_file;
    bool json;
    const char *pcr;
    const char *tpm_priv;
    const char *tpm_auth_file;
    const char *tpm_parent;
    const char *handle;
    const char *owner_auth_file;
};

static const struct option kh_all_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "module", required_argument, NULL, KH_OPT_MODULE },
    { "label", required_argument, NULL, KH_OPT_LABEL },
    { "token", required_argument, NULL, KH_OPT_TOKEN },
    { "type", required_argument, NULL, KH_OPT_TYPE },
    { "id", required_argument, NULL, KH_OPT_ID },
    { "backend", required_argument, NULL, KH_OPT_BACKEND },
    { "pin-file", required_argument, NULL, KH_OPT_PIN_FILE },
    { "so-pin-file", required_argument, NULL, KH_OPT_SO_PIN_FILE },
    { "hex", required_argument, NULL, KH_OPT_HEX },
    { "nsec", required_argument, NULL, KH_OPT_NSEC },
    { "pem", required_argument, NULL, KH_OPT_PEM },
    { "json", no_argument, NULL, KH_OPT_JSON },
    { "format", required_argument, NULL, KH_OPT_FORMAT },
    { "url", required_argument, NULL, KH_OPT_URL },
    { "key", required_argument, NULL, KH_OPT_KEY },
    { "driver", required_argument, NULL, KH_OPT_DRIVER },
    { "pcr", required_argument, NULL, KH_OPT_PCR },
    { "tpm-pub", required_argument, NULL, KH_OPT_TPM_PUB },
    { "tpm-priv", required_argument, NULL, KH_OPT_TPM_PRIV },
    { "tpm-auth-file", required_argument, NULL, KH_OPT_TPM_AUTH_FILE },
    { "tpm-parent", required_argument, NULL, KH_OPT_TPM_PARENT },
    { "handle", required_argument, NULL, KH_OPT_HANDLE },
    { "owner-auth-file", required_argument, NULL, KH_OPT_OWNER_AUTH_FILE },
    { NULL, 0, NULL, 0 },
};

struct kh_command {
    const char *name;
    int (*run)(const struct kh_opts *o);
    const char *usage;
    const int *allowed;   /* option codes besides --help and --module, 0-terminated */
    const int *required;  /* 0-terminated */
};

static bool kh_in_list(const int *list, int v)
{
    for (; list && *list; list++)
        if (*list == v)
            return true;
    return false;
}

static const char *kh_opt_name(int code)
{
    for (const struct option *o = kh_all_options; o->name; o++)
        if (o->val == code)
            return o->name;
    return "?";
}

/*
 * Parses the options of one command. Returns -1 to go on, else the exit
 * status (0 after --help, 2 on a usage error).
 */
static int kh_parse(const struct kh_command *cmd, int argc, char **argv, struct kh_opts *o)
{
    int c;

    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "+h", kh_all_options, NULL)) != -1) {
        if (c == 'h') {
            fputs(cmd->usage, stdout);
            return KH_EXIT_OK;
        }
        if (c == '?' || c == ':') {
            if (optopt && optopt < 256)
                kh_err("%s: unknown option -%c", cmd->name, optopt);
            else
                kh_err("%s: unknown option or missing argument: %s", cmd->name, argv[optind - 1]);
            goto usage;
        }
        if (c != KH_OPT_MODULE && !kh_in_list(cmd->allowed, c)) {
            kh_err("%s: option --%s does not apply here", cmd->name, kh_opt_name(c));
            goto usage;
        }
        switch (c) {
        case KH_OPT_MODULE: o->module = optarg; break;
        case KH_OPT_LABEL: o->label = optarg; break;
        case KH_OPT_TOKEN: o->token = optarg; break;
        case KH_OPT_TYPE: o->type = optarg; break;
        case KH_OPT_ID: o->id = optarg; break;
        case KH_OPT_BACKEND: o->backend = optarg; break;
        case KH_OPT_PIN_FILE: o->pin_file = optarg; break;
        case KH_OPT_SO_PIN_FILE: o->so_pin_file = optarg; break;
        case KH_OPT_FORMAT: o->format = optarg; break;
        case KH_OPT_JSON: o->json = true; break;
        case KH_OPT_URL: o->url = optarg; break;
        case KH_OPT_KEY: o->key = optarg; break;
        case KH_OPT_DRIVER: o->driver = optarg; break;
        case KH_OPT_PCR: o->pcr = optarg; break;
        case KH_OPT_TPM_PRIV: o->tpm_priv = optarg; break;
        case KH_OPT_TPM_AUTH_FILE: o->tpm_auth_file = optarg; break;
        case KH_OPT_TPM_PARENT: o->tpm_parent = optarg; break;
        case KH_OPT_HANDLE: o->handle = optarg; break;
        case KH_OPT_OWNER_AUTH_FILE: o->owner_auth_file = optarg; break;
        case KH_OPT_HEX:
        case KH_OPT_NSEC:
        case KH_OPT_PEM:
        case KH_OPT_TPM_PUB:
            if (o->import_kind) {
                kh_err("%s: give only one of --hex, --nsec, --pem, --tpm-pub", cmd->name);
                goto usage;
            }
            o->import_kind = c;
            o->import_file = optarg;
            break;
        default:
            goto usage;
        }
    }
    if (optind < argc) {
        kh_err("%s: unexpected argument: %s", cmd->name, argv[optind]);
        goto usage;
    }
    for (const int *r = cmd->required; r && *r; r++) {
        bool have = (*r == KH_OPT_LABEL && o->label) || (*r == KH_OPT_TOKEN && o->token) ||
                    (*r == KH_OPT_TYPE && o->type) || (*r == KH_OPT_FORMAT && o->format) ||
                    (*r == KH_OPT_HEX && o->import_kind) || (*r == KH_OPT_KEY && o->key);
        if (!have) {
            if (*r == KH_OPT_HEX)
                kh_err("%s: one of --hex, --nsec, --pem, --tpm-pub is required", cmd->name);
            else
                kh_err("%s: --%s is required", cmd->name, kh_opt_name(*r));
            goto usage;
        }
    }
    return -1;

usage:
    fputs(cmd->usage, stderr);
    return KH_EXIT_USAGE;
}

/* ---- shared steps ------------------------------------------------------ */

/* A module with one session on one token. */
struct kh_ctx {
    struct kh_p11 p;
    struct kh_p11_token tok;
    CK_SESSION_HANDLE s;
    bool have_session;
    bool logged_in;
};

static int kh_ctx_load(struct kh_ctx *c, const char *module)
{
    char err[4200];
    CK_RV rv;

    memset(c, 0, sizeof *c);
    rv = kh_p11_open(&c->p, module, err, sizeof err);
    if (rv != CKR_OK) {
        kh_err("%s", err);
        return KH_EXIT_FAIL;
    }
    return KH_EXIT_OK;
}

/* Fills c->tok with the only initialised token (what `remote add` uses
 * without --token). */
static int kh_ctx_only_token(struct kh_ctx *c)
{
    struct kh_p11_token *toks = NULL;
    size_t n = 0, found = 0;
    CK_RV rv = kh_p11_tokens(&c->p, &toks, &n);

    if (rv != CKR_OK)
        return kh_err_rv("C_GetSlotList", rv);
    for (size_t i = 0; i < n; i++)
        if (toks[i].info.flags & CKF_TOKEN_INITIALIZED) {
            if (!found)
                c->tok = toks[i];
            found++;
        }
    free(toks);
    if (found != 1) {
        kh_err(found ? "there are %zu tokens: say which with --token"
                     : "there is no token yet (keyhold init)", found);
        return KH_EXIT_USAGE;
    }
    return KH_EXIT_OK;
}

/* Loads the module and opens a session on the token labelled token or,
 * when token is NULL, on the only initialised token. */
static int kh_ctx_open(struct kh_ctx *c, const char *module, const char *token, bool rw)
{
    CK_FLAGS flags = CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0);
    int ret = kh_ctx_load(c, module);
    CK_RV rv;

    if (ret != KH_EXIT_OK)
        return ret;
    if (!token) {
        ret = kh_ctx_only_token(c);
        if (ret != KH_EXIT_OK)
            return ret;
    } else {
        rv = kh_p11_find_token(&c->p, token, &c->tok);
        if (rv == CKR_TOKEN_NOT_PRESENT) {
            kh_err("no token labelled '%s' (see 'keyhold list' or 'keyhold init')", token);
            return KH_EXIT_FAIL;
        }
        if (rv != CKR_OK)
            return kh_err_rv("C_GetTokenInfo", rv);
    }
    rv = c->p.f->C_OpenSession(c->tok.slot, flags, NULL, NULL, &c->s);
    if (rv != CKR_OK)
        return kh_err_rv("C_OpenSession", rv);
    c->have_session = true;
    return KH_EXIT_OK;
}

/* Logs the user in with a PIN from pin_file, $KEYHOLD_PIN or (as mode
 * allows) the terminal. */
static int kh_ctx_login(struct kh_ctx *c, const char *pin_file, enum kh_pin_prompt mode)
{
    char err[256], prompt[128];
    char *pin = NULL;
    CK_RV rv;
    int r;

    snprintf(prompt, sizeof prompt, "User PIN for token '%s': ", c->tok.label);
    r = kh_pin_get(&pin, "KEYHOLD_PIN", pin_file, prompt, mode, err, sizeof err);
    if (r < 0) {
        kh_err("%s", err);
        return KH_EXIT_FAIL;
    }
    if (r > 0) {
        kh_err("a user PIN is needed: set KEYHOLD_PIN, use --pin-file, or run on a terminal");
        return KH_EXIT_FAIL;
    }
    rv = kh_p11_login(&c->p, c->s, CKU_USER, pin);
    kh_pin_free(pin);
    if (rv != CKR_OK)
        return kh_err_rv("C_Login", rv);
    c->logged_in = true;
    return KH_EXIT_OK;
}

static void kh_ctx_close(struct kh_ctx *c)
{
    if (c->logged_in)
        c->p.f->C_Logout(c->s);
    if (c->have_session)
        c->p.f->C_CloseSession(c->s);
    c->logged_in = c->have_session = false;
    kh_p11_close(&c->p);
}

/* Finds the objects labelled label of class cls (of any class when cls is
 * CK_UNAVAILABLE_INFORMATION); see kh_p11_find for objs and n. */
static CK_RV kh_find_labelled(struct kh_ctx *c, const char *label, CK_OBJECT_CLASS cls,
                              CK_OBJECT_HANDLE **objs, CK_ULONG *n)
{
    CK_ATTRIBUTE tmpl[2] = {
        { CKA_LABEL, (void *)label, (CK_ULONG)strlen(label) },
        { CKA_CLASS, &cls, sizeof cls },
    };
    return kh_p11_find(&c->p, c->s, tmpl, cls == CK_UNAVAILABLE_INFORMATION ? 1 : 2, objs, n);
}

/* Fails when a key with this label already exists on the token. */
static int kh_check_label_free(struct kh_ctx *c, const char *label)
{
    CK_OBJECT_HANDLE *objs;
    CK_ULONG n;
    CK_RV rv = kh_find_labelled(c, label, CK_UNAVAILABLE_INFORMATION, &objs, &n);

    if (rv != CKR_OK)
        return kh_err_rv("C_FindObjects", rv);
    free(objs);
    if (n > 0) {
        kh_err("token '%s' already has an object labelled '%s'", c->tok.label, label);
        return KH_EXIT_FAIL;
    }
    return KH_EXIT_OK;
}

/*
 * Opens a read-write session on --token (the only initialised token
 * without it) and logs the user in (kh_ctx_login, terminal allowed). When
 * new_label is not NULL, also fails when the token already has an object
 * labelled new_label: the key-making commands refuse a taken label.
 */
static int kh_ctx_open_user(struct kh_ctx *c, const struct kh_opts *o, const char *new_label)
{
    int ret = kh_ctx_open(c, o->module, o->token, true);

    if (ret == KH_EXIT_OK)
        ret = kh_ctx_login(c, o->pin_file, KH_PIN_PROMPT);
    if (ret == KH_EXIT_OK && new_label)
        ret = kh_check_label_free(c, new_label);
    return ret;
}

/*
 * Checks what every key-making command is given: --id id_arg (hex, optional
 * 0x, 1..KH_ID_MAX bytes; NULL leaves *id_len 0) and a non-empty label.
 * Returns KH_EXIT_OK or KH_EXIT_USAGE (said why).
 */
static int kh_key_args(uint8_t id[KH_ID_MAX], size_t *id_len, const char *id_arg, const char *label)
{
    *id_len = 0;
    if (id_arg) {
        const char *s = id_arg;
        if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
            s += 2;
        if (!kh_hex_decode(id, id_len, KH_ID_MAX, s, strlen(s)) || *id_len == 0) {
            kh_err("--id must be 1 to %d bytes of hex", KH_ID_MAX);
            return KH_EXIT_USAGE;
        }
    }
    if (label[0] == '\0') {
        kh_err("the label must not be empty");
        return KH_EXIT_USAGE;
    }
    return KH_EXIT_OK;
}

/* Prints the URI of an object. */
static int kh_print_uri(struct kh_ctx *c, const char *label, const uint8_t *id, size_t id_len,
                        CK_OBJECT_CLASS cls)
{
    char *uri = kh_p11_uri_build(&c->tok, label, id, id_len, cls);
    if (!uri) {
        kh_err("out of memory");
        return KH_EXIT_FAIL;
    }
    printf("%s\n", uri);
    free(uri);
    return KH_EXIT_OK;
}

/* Appends one attribute to a template (the caller sizes the array). */
static void kh_attr_add(CK_ATTRIBUTE *tmpl, CK_ULONG *n, CK_ATTRIBUTE_TYPE type,
                        const void *val, size_t len)
{
    tmpl[*n].type = type;
    tmpl[*n].pValue = (void *)val;
    tmpl[*n].ulValueLen = (CK_ULONG)len;
    (*n)++;
}

/* Values the key templates point to. */
static CK_BBOOL kh_true = CK_TRUE;
static CK_OBJECT_CLASS kh_class_private = CKO_PRIVATE_KEY;
static CK_OBJECT_CLASS kh_class_public = CKO_PUBLIC_KEY;

/* Starts the template of a token private key that signs: class, key type
 * (when ktype is not NULL), token, private, sensitive, sign, label. At
 * most 7 entries; the caller adds the rest. */
static void kh_private_template(CK_ATTRIBUTE *t, CK_ULONG *n, const CK_KEY_TYPE *ktype,
                                const char *label)
{
    kh_attr_add(t, n, CKA_CLASS, &kh_class_private, sizeof kh_class_private);
    if (ktype)
        kh_attr_add(t, n, CKA_KEY_TYPE, ktype, sizeof *ktype);
    kh_attr_add(t, n, CKA_TOKEN, &kh_true, sizeof kh_true);
    kh_attr_add(t, n, CKA_PRIVATE, &kh_true, sizeof kh_true);
    kh_attr_add(t, n, CKA_SENSITIVE, &kh_true, sizeof kh_true);
    kh_attr_add(t, n, CKA_SIGN, &kh_true, sizeof kh_true);
    kh_attr_add(t, n, CKA_LABEL, label, strlen(label));
}

/* Starts the template of a token public key that verifies: class, key type
 * (when ktype is not NULL), token, verify, label, id. At most 6 entries. */
static void kh_public_template(CK_ATTRIBUTE *t, CK_ULONG *n, const CK_KEY_TYPE *ktype,
                               const char *label, const uint8_t *id, size_t id_len)
{
    kh_attr_add(t, n, CKA_CLASS, &kh_class_public, sizeof kh_class_public);
    if (ktype)
        kh_attr_add(t, n, CKA_KEY_TYPE, ktype, sizeof *ktype);
    kh_attr_add(t, n, CKA_TOKEN, &kh_true, sizeof kh_true);
    kh_attr_add(t, n, CKA_VERIFY, &kh_true, sizeof kh_true);
    kh_attr_add(t, n, CKA_LABEL, label, strlen(label));
    kh_attr_add(t, n, CKA_ID, id, id_len);
}

/* ---- init -------------------------------------------------------------- */

/* Checks a PIN against the token's advertised length range, when it has a
 * sensible one, so a bad PIN is refused before the token is touched. */
static bool kh_pin_len_ok(const CK_TOKEN_INFO *info, const char *pin)
{
    size_t n = strlen(pin);

    if (info->ulMaxPinLen == 0 || info->ulMaxPinLen == CK_UNAVAILABLE_INFORMATION ||
        info->ulMaxPinLen < info->ulMinPinLen)
        return true;
    return n >= info->ulMinPinLen && n <= info->ulMaxPinLen;
}

static int kh_cmd_init(const struct kh_opts *o)
{
    struct kh_ctx c;
    struct kh_p11_token free_tok, existing;
    CK_UTF8CHAR label32[32];
    char err[256];
    char *so_pin = NULL, *user_pin = NULL;
    int ret, r;
    CK_RV rv;

    /* Cryptoki pads labels with blanks, so edge blanks would not survive. */
    if (!kh_p11_pad(label32, sizeof label32, o->label) || o->label[0] == '\0' ||
        o->label[0] == ' ' || o->label[strlen(o->label) - 1] == ' ') {
        kh_err("a token label is 1 to 32 bytes and neither starts nor ends with a blank");
        return KH_EXIT_FAIL;
    }
    ret = kh_ctx_load(&c, o->module);
    if (ret != KH_EXIT_OK)
        goto out;
    ret = KH_EXIT_FAIL;
    rv = kh_p11_find_token(&c.p, o->label, &existing);
    if (rv == CKR_OK) {
        kh_err("a token labelled '%s' already exists (slot %lu)", o->label, existing.slot);
        goto out;
    }
    if (rv != CKR_TOKEN_NOT_PRESENT) {
        ret = kh_err_rv("C_GetTokenInfo", rv);
        goto out;
    }
    rv = kh_p11_free_slot(&c.p, &free_tok);
    if (rv != CKR_OK) {
        if (rv == CKR_TOKEN_NOT_PRESENT)
            kh_err("the module offers no uninitialised token");
        else
            kh_err_rv("C_GetTokenInfo", rv);
        goto out;
    }

    /* Both PINs first, so a missing one does not leave a half-made token. */
    r = kh_pin_get(&so_pin, "KEYHOLD_SO_PIN", o->so_pin_file, "New SO PIN: ",
                   KH_PIN_PROMPT_TWICE, err, sizeof err);
    if (r != 0) {
        kh_err("%s", r < 0 ? err : "an SO PIN is needed: set KEYHOLD_SO_PIN, use --so-pin-file, or run on a terminal");
        goto out_wipe;
    }
    r = kh_pin_get(&user_pin, "KEYHOLD_PIN", o->pin_file, "New user PIN: ",
                   KH_PIN_PROMPT_TWICE, err, sizeof err);
    if (r != 0) {
        kh_err("%s", r < 0 ? err : "a user PIN is needed: set KEYHOLD_PIN, use --pin-file, or run on a terminal");
        goto out_wipe;
    }

    if (!kh_pin_len_ok(&free_tok.info, so_pin) || !kh_pin_len_ok(&free_tok.info, user_pin)) {
        kh_err("PINs must be %lu to %lu characters long", free_tok.info.ulMinPinLen,
               free_tok.info.ulMaxPinLen);
        goto out_wipe;
    }
    rv = c.p.f->C_InitToken(free_tok.slot, (CK_UTF8CHAR_PTR)so_pin, (CK_ULONG)strlen(so_pin), label32);
    if (rv != CKR_OK) {
        kh_err_rv("C_InitToken", rv);
        goto out_wipe;
    }
    /* The token may now sit in another slot: look it up by label again. */
    rv = kh_p11_find_token(&c.p, o->label, &c.tok);
    if (rv != CKR_OK) {
        kh_err_rv("finding the new token", rv);
        goto out_wipe;
    }
    rv = c.p.f->C_OpenSession(c.tok.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &c.s);
    if (rv != CKR_OK) {
        kh_err_rv("C_OpenSession", rv);
        goto out_half;
    }
    c.have_session = true;
    rv = kh_p11_login(&c.p, c.s, CKU_SO, so_pin);
    if (rv != CKR_OK) {
        kh_err_rv("C_Login (SO)", rv);
        goto out_half;
    }
    c.logged_in = true;
    rv = c.p.f->C_InitPIN(c.s, (CK_UTF8CHAR_PTR)user_pin, (CK_ULONG)strlen(user_pin));
    if (rv != CKR_OK) {
        kh_err_rv("C_InitPIN", rv);
        goto out_half;
    }
    rv = c.p.f->C_Logout(c.s);
    c.logged_in = false;
    if (rv != CKR_OK) {
        kh_err_rv("C_Logout", rv);
        goto out_wipe;
    }
    printf("token '%s' initialised (slot %lu, serial %s)\n", c.tok.label, c.tok.slot, c.tok.serial);
    ret = KH_EXIT_OK;
    goto out_wipe;

out_half:
    kh_err("token '%s' was created but has no user PIN; set one with C_InitPIN as SO", o->label);
out_wipe:
    kh_pin_free(so_pin);
    kh_pin_free(user_pin);
out:
    kh_ctx_close(&c);
    return ret;
}

/* ---- keygen ------------------------------------------------------------ */

static const struct {
    const char *name;
    enum kh_keykind kind;
    CK_ULONG bits;
} kh_keygen_types[] = {
    { "secp256k1", KH_KEY_SECP256K1, 0 },
    { "p256", KH_KEY_P256, 0 },
    { "p384", KH_KEY_P384, 0 },
    { "ed25519", KH_KEY_ED25519, 0 },
    { "rsa2048", KH_KEY_RSA, 2048 },
    { "rsa3072", KH_KEY_RSA, 3072 },
    { "rsa4096", KH_KEY_RSA, 4096 },
};

static bool kh_parse_backend(const char *s, CK_ULONG *backend)
{
    if (strcmp(s, "vault") == 0)
        *backend = CKV_KH_BACKEND_VAULT;
    else if (strcmp(s, "tpm") == 0)
        *backend = CKV_KH_BACKEND_TPM;
    else if (strcmp(s, "remote") == 0)
        *backend = CKV_KH_BACKEND_REMOTE;
    else
        return false;
    return true;
}

static int kh_cmd_keygen(const struct kh_opts *o)
{
    static CK_BYTE f4[] = { 0x01, 0x00, 0x01 };
    CK_ATTRIBUTE pub_t[8], priv_t[12];
    CK_ULONG npub = 0, npriv = 0, bits = 0, backend = 0;
    CK_MECHANISM mech = { 0, NULL, 0 };
    CK_OBJECT_HANDLE hpub, hpriv;
    uint8_t id[KH_ID_MAX];
    size_t id_len = 0;
    const uint8_t *params = NULL;
    size_t params_len = 0;
    enum kh_keykind kind = KH_KEY_UNKNOWN;
    struct kh_ctx c;
    int ret;
    CK_RV rv;

    for (size_t i = 0; i < sizeof kh_keygen_types / sizeof kh_keygen_types[0]; i++) {
        if (strcmp(o->type, kh_keygen_types[i].name) == 0) {
            kind = kh_keygen_types[i].kind;
            bits = kh_keygen_types[i].bits;
        }
    }
    if (kind == KH_KEY_UNKNOWN) {
        kh_err("unknown key type '%s' (secp256k1, p256, p384, ed25519, rsa2048, rsa3072, rsa4096)", o->type);
        return KH_EXIT_USAGE;
    }
    if (o->backend && !kh_parse_backend(o->backend, &backend)) {
        kh_err("unknown backend '%s' (vault, tpm, remote)", o->backend);
        return KH_EXIT_USAGE;
    }
    ret = kh_key_args(id, &id_len, o->id, o->label);
    if (ret != KH_EXIT_OK)
        return ret;
    if (o->pcr && (!o->backend || backend != CKV_KH_BACKEND_TPM)) {
        kh_err("--pcr makes a TPM key: it needs --backend tpm");
        return KH_EXIT_USAGE;
    }

    ret = kh_ctx_open_user(&c, o, o->label);
    if (ret != KH_EXIT_OK)
        goto out;
    if (id_len == 0) {
        rv = c.p.f->C_GenerateRandom(c.s, id, KH_DEFAULT_ID_LEN);
        if (rv != CKR_OK) {
            ret = kh_err_rv("C_GenerateRandom", rv);
            goto out;
        }
        id_len = KH_DEFAULT_ID_LEN;
    }

    kh_public_template(pub_t, &npub, NULL, o->label, id, id_len);
    kh_private_template(priv_t, &npriv, NULL, o->label);
    kh_attr_add(priv_t, &npriv, CKA_ID, id, id_len);
    if (o->backend)
        kh_attr_add(priv_t, &npriv, CKA_KH_BACKEND, &backend, sizeof backend);
    if (o->pcr)
        kh_attr_add(priv_t, &npriv, CKA_KH_TPM_PCR_POLICY, o->pcr, strlen(o->pcr));
    if (kind == KH_KEY_RSA) {
        mech.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
        kh_attr_add(pub_t, &npub, CKA_MODULUS_BITS, &bits, sizeof bits);
        kh_attr_add(pub_t, &npub, CKA_PUBLIC_EXPONENT, f4, sizeof f4);
    } else {
        mech.mechanism = kind == KH_KEY_ED25519 ? CKM_EC_EDWARDS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN;
        kh_keykind_ec_params(kind, &params, &params_len);
        kh_attr_add(pub_t, &npub, CKA_EC_PARAMS, params, params_len);
    }

    rv = c.p.f->C_GenerateKeyPair(c.s, &mech, pub_t, npub, priv_t, npriv, &hpub, &hpriv);
    if (rv != CKR_OK) {
        ret = kh_err_rv("C_GenerateKeyPair", rv);
        if (o->pcr && rv == CKR_ATTRIBUTE_VALUE_INVALID)
            kh_err("--pcr: expected a PCR selection such as sha256:7 or sha256:0,7");
        else if (o->backend && (rv == CKR_FUNCTION_NOT_SUPPORTED || rv == CKR_ATTRIBUTE_VALUE_INVALID ||
                                rv == CKR_TEMPLATE_INCONSISTENT || rv == CKR_CURVE_NOT_SUPPORTED ||
                                rv == CKR_DEVICE_ERROR))
            kh_err("the %s backend may not be available for %s keys here (see 'keyhold doctor')",
                   o->backend, o->type);
        goto out;
    }
    ret = kh_print_uri(&c, o->label, id, id_len, CKO_PRIVATE_KEY);
out:
    kh_ctx_close(&c);
    return ret;
}

/* ---- import ------------------------------------------------------------ */

/* Wipes (all of it, whatever was read) and frees a kh_read_secret_file
 * buffer; NULL is fine. */
static void kh_secret_file_free(char *buf)
{
    if (buf) {
        kh_wipe(buf, KH_IMPORT_MAX + 1);
        free(buf);
    }
}

/* Reads a whole file ('-' = stdin) of at most KH_IMPORT_MAX bytes into one
 * buffer allocated up front (no realloc: no stray copies of a secret). */
static int kh_read_secret_file(const char *path, char **buf, size_t *len)
{
    bool is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rbe");
    char *b;
    size_t n = 0, got;

    *buf = NULL;
    *len = 0;
    if (!f) {
        kh_err("cannot open %s: %s", path, strerror(errno));
        return KH_EXIT_FAIL;
    }
    b = malloc(KH_IMPORT_MAX + 1);
    if (!b) {
        kh_err("out of memory");
        goto fail;
    }
    while ((got = fread(b + n, 1, KH_IMPORT_MAX + 1 - n, f)) > 0) {
        n += got;
        if (n > KH_IMPORT_MAX)
            break;
    }
    if (ferror(f)) {
        kh_err("cannot read %s", is_stdin ? "standard input" : path);
        goto fail;
    }
    if (n > KH_IMPORT_MAX) {
        kh_err("%s is too large for a key file", is_stdin ? "standard input" : path);
        goto fail;
    }
    b[n] = '\0';
    if (!is_stdin)
        fclose(f);
    *buf = b;
    *len = n;
    return KH_EXIT_OK;

fail:
    kh_secret_file_free(b);
    if (!is_stdin)
        fclose(f);
    return KH_EXIT_FAIL;
}

/* Trims leading and trailing white space in place; returns the start. */
static char *kh_trim(char *s, size_t *len)
{
    size_t n = *len;
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    while (n > 0 && isspace((unsigned char)*s)) {
        s++;
        n--;
    }
    *len = n;
    return s;
}

/* Turns the file content into a private key, per --hex/--nsec/--pem. */
static int kh_import_parse(struct kh_privkey *key, int how, char *buf, size_t len)
{
    uint8_t scalar[64];
    size_t slen = 0;
    char err[256], hrp[16];
    char *s = kh_trim(buf, &len);
    int ret = KH_EXIT_FAIL;

    switch (how) {
    case KH_OPT_HEX:
        if (len >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
            s += 2;
            len -= 2;
        }
        if (len != 64 || !kh_hex_decode(scalar, &slen, sizeof scalar, s, len)) {
            kh_err("--hex wants exactly 64 hex digits (a 32-byte secp256k1 secret)");
            goto out;
        }
        break;
    case KH_OPT_NSEC:
        if (memchr(s, '\0', len) || !kh_bech32_decode(hrp, sizeof hrp, scalar, &slen, sizeof scalar, s)) {
            kh_err("--nsec: not a valid bech32 string");
            goto out;
        }
        if (strcmp(hrp, "nsec") != 0 || slen != 32) {
            kh_err("--nsec: expected an nsec1... key of 32 bytes, got '%s' with %zu bytes", hrp, slen);
            goto out;
        }
        break;
    case KH_OPT_PEM:
        if (!kh_privkey_from_pem(key, s, len, err, sizeof err)) {
            kh_err("--pem: %s", err);
            goto out;
        }
        ret = KH_EXIT_OK;
        goto out;
    default:
        goto out;
    }
    if (!kh_privkey_from_secp256k1(key, scalar, err, sizeof err)) {
        kh_err("%s", err);
        goto out;
    }
    ret = KH_EXIT_OK;
out:
    kh_wipe(scalar, sizeof scalar);
    return ret;
}

/* Encodes an EC point as a DER OCTET STRING (what CKA_EC_POINT holds). */
static uint8_t *kh_der_octets(const uint8_t *in, size_t len, size_t *outlen)
{
    uint8_t *out = malloc(len + 4);
    size_t h = 0;

    if (!out || len > 0xffff) {
        free(out);
        return NULL;
    }
    out[h++] = 0x04;
    if (len < 0x80) {
        out[h++] = (uint8_t)len;
    } else if (len < 0x100) {
        out[h++] = 0x81;
        out[h++] = (uint8_t)len;
    } else {
        out[h++] = 0x82;
        out[h++] = (uint8_t)(len >> 8);
        out[h++] = (uint8_t)len;
    }
    memcpy(out + h, in, len);
    *outlen = h + len;
    return out;
}

/*
 * Creates the public key object of a key pair whose private key is on the
 * token: key type ktype, label, id, and pub's key material (RSA modulus and
 * exponent, or the curve and the DER-wrapped point).
 */
static int kh_create_public(struct kh_ctx *c, CK_KEY_TYPE ktype, const char *label,
                            const uint8_t *id, size_t id_len, const struct kh_pubkey *pub)
{
    CK_ATTRIBUTE t[8];
    CK_ULONG n = 0;
    CK_OBJECT_HANDLE h;
    const uint8_t *params = NULL;
    uint8_t *point_der = NULL;
    size_t params_len = 0, point_der_len = 0;
    int ret = KH_EXIT_FAIL;
    CK_RV rv;

    kh_public_template(t, &n, &ktype, label, id, id_len);
    if (pub->kind == KH_KEY_RSA) {
        kh_attr_add(t, &n, CKA_MODULUS, pub->n, pub->n_len);
        kh_attr_add(t, &n, CKA_PUBLIC_EXPONENT, pub->e, pub->e_len);
    } else {
        if (!kh_keykind_ec_params(pub->kind, &params, &params_len)) {
            kh_err("the module reports an EC key of an unknown curve");
            return KH_EXIT_FAIL;
        }
        point_der = kh_der_octets(pub->point, pub->point_len, &point_der_len);
        if (!point_der) {
            kh_err("out of memory");
            return KH_EXIT_FAIL;
        }
        kh_attr_add(t, &n, CKA_EC_PARAMS, params, params_len);
        kh_attr_add(t, &n, CKA_EC_POINT, point_der, point_der_len);
    }
    rv = c->p.f->C_CreateObject(c->s, t, n, &h);
    if (rv != CKR_OK)
        kh_err_rv("C_CreateObject (public key)", rv);
    else
        ret = KH_EXIT_OK;
    free(point_der);
    return ret;
}

/*
 * Reads back the public key of hpriv, a private key object the module
 * just made and filled in itself (TPM, remote); what names it in messages
 * ("new private key"). Out: pub; *ktype (when not NULL) its key type. When
 * *id_len is 0, keyhold's default CKA_ID is derived from pub into id and
 * set on hpriv.
 */
static int kh_read_back(struct kh_ctx *c, CK_OBJECT_HANDLE hpriv, const char *what,
                        struct kh_pubkey *pub, CK_KEY_TYPE *ktype, uint8_t *id, size_t *id_len)
{
    struct kh_p11_key desc;
    CK_ATTRIBUTE set = { CKA_ID, id, KH_DEFAULT_ID_LEN };
    char msg[96];
    CK_RV rv = kh_p11_describe(&c->p, c->s, hpriv, &desc);

    if (rv == CKR_OK) {
        rv = kh_p11_read_pubkey(&c->p, c->s, hpriv, desc.kind, pub);
        if (ktype)
            *ktype = desc.key_type;
        kh_p11_key_clear(&desc);
    }
    if (rv != CKR_OK) {
        snprintf(msg, sizeof msg, "reading the public key of the %s", what);
        return kh_err_rv(msg, rv);
    }
    if (*id_len > 0)
        return KH_EXIT_OK;
    if (!kh_pubkey_default_id(id, pub)) {
        kh_err("cannot derive a CKA_ID from the public key");
        return KH_EXIT_FAIL;
    }
    *id_len = KH_DEFAULT_ID_LEN;
    rv = c->p.f->C_SetAttributeValue(c->s, hpriv, &set, 1);
    if (rv != CKR_OK)
        return kh_err_rv("C_SetAttributeValue (CKA_ID)", rv);
    return KH_EXIT_OK;
}

/*
 * Adopts a TPM key made by `tpm2_create -u PUB -r PRIV`: the private key
 * object from CKA_KH_TPM_PUBLIC/PRIVATE (+ AUTH, PARENT), the public key
 * object from what the module reports for it.
 */
static int kh_cmd_import_tpm(const struct kh_opts *o)
{
    CK_KEY_TYPE ktype;
    CK_ATTRIBUTE priv_t[14];
    CK_ULONG npriv = 0, parent = 0;
    CK_OBJECT_HANDLE hpriv = CK_INVALID_HANDLE;
    struct kh_pubkey back = { 0 };
    struct kh_ctx c;
    uint8_t id[KH_ID_MAX];
    size_t id_len = 0, pub_len = 0, priv_len = 0, auth_len = 0;
    char *pubf = NULL, *privf = NULL, *auth = NULL;
    int ret;
    CK_RV rv;

    memset(&c, 0, sizeof c);
    if (!o->tpm_priv) {
        kh_err("--tpm-pub needs --tpm-priv");
        return KH_EXIT_USAGE;
    }
    ret = kh_key_args(id, &id_len, o->id, o->label);
    if (ret != KH_EXIT_OK)
        return ret;
    if (o->tpm_parent) {
        uint32_t h;
        if (!kh_tpm_parse_persistent(&h, o->tpm_parent)) {
            kh_err("--tpm-parent must be a persistent handle (0x81000000 to 0x81ffffff)");
            return KH_EXIT_USAGE;
        }
        parent = h;
    }
    ret = kh_read_secret_file(o->import_file, &pubf, &pub_len);
    if (ret == KH_EXIT_OK)
        ret = kh_read_secret_file(o->tpm_priv, &privf, &priv_len);
    if (ret == KH_EXIT_OK && o->tpm_auth_file) {
        ret = kh_read_secret_file(o->tpm_auth_file, &auth, &auth_len);
        if (ret == KH_EXIT_OK)
            auth_len = strcspn(auth, "\r\n"); /* the first line */
    }
    if (ret != KH_EXIT_OK)
        goto out;
    if (!kh_tpm_pub_keytype((const uint8_t *)pubf, pub_len, &ktype)) {
        kh_err("%s is not a TPM2B_PUBLIC of an ECC or RSA key (tpm2_create -u)", o->import_file);
        ret = KH_EXIT_FAIL;
        goto out;
    }

    ret = kh_ctx_open_user(&c, o, o->label);
    if (ret != KH_EXIT_OK)
        goto out;
    ret = KH_EXIT_FAIL;

    kh_private_template(priv_t, &npriv, &ktype, o->label);
    if (id_len)
        kh_attr_add(priv_t, &npriv, CKA_ID, id, id_len);
    kh_attr_add(priv_t, &npriv, CKA_KH_TPM_PUBLIC, pubf, pub_len);
    kh_attr_add(priv_t, &npriv, CKA_KH_TPM_PRIVATE, privf, priv_len);
    if (auth)
        kh_attr_add(priv_t, &npriv, CKA_KH_TPM_AUTH, auth, auth_len);
    if (parent)
        kh_attr_add(priv_t, &npriv, CKA_KH_TPM_PARENT, &parent, sizeof parent);
    rv = c.p.f->C_CreateObject(c.s, priv_t, npriv, &hpriv);
    if (rv != CKR_OK) {
        kh_err_rv("C_CreateObject (TPM private key)", rv);
        if (rv == CKR_ATTRIBUTE_VALUE_INVALID)
            kh_err("the TPM did not accept the key: wrong --tpm-auth-file, another parent (--tpm-parent),"
                   " or not a signing key (KEYHOLD_LOG=info tells more)");
        goto out;
    }
    if (kh_read_back(&c, hpriv, "new private key", &back, NULL, id, &id_len) != KH_EXIT_OK ||
        kh_create_public(&c, ktype, o->label, id, id_len, &back) != KH_EXIT_OK)
        goto out_destroy;
    ret = kh_print_uri(&c, o->label, id, id_len, CKO_PRIVATE_KEY);
    goto out;

out_destroy:
    rv = c.p.f->C_DestroyObject(c.s, hpriv);
    if (rv != CKR_OK)
        kh_err_rv("C_DestroyObject (removing the half-imported private key)", rv);
out:
    kh_pubkey_clear(&back);
    kh_secret_file_free(auth);
    kh_secret_file_free(privf);
    free(pubf);
    kh_wipe(priv_t, sizeof priv_t);
    kh_ctx_close(&c);
    return ret;
}

static int kh_cmd_import(const struct kh_opts *o)
{
    CK_KEY_TYPE ktype;
    CK_ATTRIBUTE priv_t[20];
    CK_ULONG npriv = 0;
    CK_OBJECT_HANDLE hpriv = CK_INVALID_HANDLE;
    struct kh_privkey key;
    struct kh_pubkey back = { 0 };
    struct kh_ctx c;
    uint8_t id[KH_ID_MAX];
    size_t id_len = 0, file_len = 0;
    const uint8_t *params = NULL;
    size_t params_len = 0;
    char *file = NULL;
    int ret;
    CK_RV rv;

    memset(&key, 0, sizeof key);
    memset(&c, 0, sizeof c);
    if (o->import_kind == KH_OPT_TPM_PUB)
        return kh_cmd_import_tpm(o);
    if (o->tpm_priv || o->tpm_auth_file || o->tpm_parent) {
        kh_err("--tpm-priv, --tpm-auth-file and --tpm-parent go with --tpm-pub");
        return KH_EXIT_USAGE;
    }
    ret = kh_key_args(id, &id_len, o->id, o->label);
    if (ret != KH_EXIT_OK)
        return ret;
    ret = kh_read_secret_file(o->import_file, &file, &file_len);
    if (ret != KH_EXIT_OK)
        return ret;
    ret = kh_import_parse(&key, o->import_kind, file, file_len);
    kh_secret_file_free(file);
    if (ret != KH_EXIT_OK)
        goto out;
    if (id_len == 0) {
        kh_pubkey_default_id(id, &key.pub);
        id_len = KH_DEFAULT_ID_LEN;
    }

    ret = kh_ctx_open_user(&c, o, o->label);
    if (ret != KH_EXIT_OK)
        goto out;
    ret = KH_EXIT_FAIL;

    ktype = key.kind == KH_KEY_RSA ? CKK_RSA : key.kind == KH_KEY_ED25519 ? CKK_EC_EDWARDS : CKK_EC;
    kh_private_template(priv_t, &npriv, &ktype, o->label);
    kh_attr_add(priv_t, &npriv, CKA_ID, id, id_len);
    if (key.kind == KH_KEY_RSA) {
        static const CK_ATTRIBUTE_TYPE parts[KH_RSA_NPARTS] = {
            CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2,
            CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT,
        };
        kh_attr_add(priv_t, &npriv, CKA_MODULUS, key.pub.n, key.pub.n_len);
        kh_attr_add(priv_t, &npriv, CKA_PUBLIC_EXPONENT, key.pub.e, key.pub.e_len);
        for (int i = 0; i < KH_RSA_NPARTS; i++)
            kh_attr_add(priv_t, &npriv, parts[i], key.rsa[i], key.rsa_len[i]);
    } else {
        kh_keykind_ec_params(key.kind, &params, &params_len);
        kh_attr_add(priv_t, &npriv, CKA_EC_PARAMS, params, params_len);
        kh_attr_add(priv_t, &npriv, CKA_VALUE, key.value, key.value_len);
    }

    rv = c.p.f->C_CreateObject(c.s, priv_t, npriv, &hpriv);
    if (rv != CKR_OK) {
        kh_err_rv("C_CreateObject (private key)", rv);
        goto out;
    }

    /* The public half, as the module sees it; it must match ours. */
    rv = kh_p11_read_pubkey(&c.p, c.s, hpriv, key.kind, &back);
    if (rv != CKR_OK) {
        kh_err_rv("reading the public key from the new private key", rv);
        goto out_destroy;
    }
    if ((key.kind == KH_KEY_RSA &&
         (back.n_len != key.pub.n_len || memcmp(back.n, key.pub.n, back.n_len) != 0 ||
          back.e_len != key.pub.e_len || memcmp(back.e, key.pub.e, back.e_len) != 0)) ||
        (key.kind != KH_KEY_RSA &&
         (back.point_len != key.pub.point_len || memcmp(back.point, key.pub.point, back.point_len) != 0))) {
        kh_err("the module reports a different public key than the imported private key has");
        goto out_destroy;
    }
    if (kh_create_public(&c, ktype, o->label, id, id_len, &back) != KH_EXIT_OK)
        goto out_destroy;
    ret = kh_print_uri(&c, o->label, id, id_len, CKO_PRIVATE_KEY);
    goto out;

out_destroy:
    rv = c.p.f->C_DestroyObject(c.s, hpriv);
    if (rv != CKR_OK)
        kh_err_rv("C_DestroyObject (removing the half-imported private key)", rv);
out:
    kh_pubkey_clear(&back);
    kh_privkey_clear(&key);
    kh_wipe(priv_t, sizeof priv_t);
    kh_ctx_close(&c);
    return ret;
}

/* ---- remote add -------------------------------------------------------- */

static int kh_cmd_remote_add(const struct kh_opts *o)
{
    CK_ULONG backend = CKV_KH_BACKEND_REMOTE;
    CK_KEY_TYPE ktype = CK_UNAVAILABLE_INFORMATION;
    CK_ATTRIBUTE priv_t[10];
    CK_ULONG npriv = 0;
    CK_OBJECT_HANDLE hpriv = CK_INVALID_HANDLE;
    struct kh_pubkey pub = { 0 };
    struct kh_ctx c;
    uint8_t id[KH_ID_MAX];
    size_t id_len = 0;
    char *ref = NULL;
    const char *driver = o->driver ? o->driver : "signer";
    const char *label = o->label ? o->label : o->key;
    int ret;
    CK_RV rv;

    memset(&c, 0, sizeof c);
    if (strcmp(driver, "signer") == 0) {
        if (!o->url) {
            kh_err("remote add: --url is required (or --driver for a plugin)");
            return KH_EXIT_USAGE;
        }
        if (strchr(o->key, '#') || o->key[0] == '\0') {
            kh_err("remote add: --key must be a non-empty id without '#'");
            return KH_EXIT_USAGE;
        }
    } else if (o->url) {
        kh_err("remote add: --url is for the built-in signer driver; a plugin's --key is its whole reference");
        return KH_EXIT_USAGE;
    }
    ret = kh_key_args(id, &id_len, o->id, label);
    if (ret != KH_EXIT_OK)
        return ret;
    size_t ref_len = strlen(driver) + 1 + (o->url ? strlen(o->url) + 1 : 0) + strlen(o->key);
    ref = malloc(ref_len + 1);
    if (!ref) {
        kh_err("out of memory");
        return KH_EXIT_FAIL;
    }
    if (o->url)
        snprintf(ref, ref_len + 1, "%s:%s#%s", driver, o->url, o->key);
    else
        snprintf(ref, ref_len + 1, "%s:%s", driver, o->key);

    ret = kh_ctx_open_user(&c, o, label);
    if (ret != KH_EXIT_OK)
        goto out;
    ret = KH_EXIT_FAIL;

    kh_private_template(priv_t, &npriv, NULL, label);
    kh_attr_add(priv_t, &npriv, CKA_KH_BACKEND, &backend, sizeof backend);
    kh_attr_add(priv_t, &npriv, CKA_KH_REMOTE_REF, ref, strlen(ref));
    if (id_len)
        kh_attr_add(priv_t, &npriv, CKA_ID, id, id_len);
    rv = c.p.f->C_CreateObject(c.s, priv_t, npriv, &hpriv);
    if (rv != CKR_OK) {
        kh_err_rv("C_CreateObject (remote private key)", rv);
        if (rv == CKR_DEVICE_ERROR)
            kh_err("the signer could not be reached or gave no usable public key "
                   "(KEYHOLD_LOG=warn shows why)");
        else if (rv == CKR_ATTRIBUTE_VALUE_INVALID)
            kh_err("the signer does not know this key, or no driver serves '%s' "
                   "(KEYHOLD_LOG=warn shows why)", driver);
        goto out;
    }

    /* The public key the module fetched: the public object gets the same. */
    if (kh_read_back(&c, hpriv, "new remote key", &pub, &ktype, id, &id_len) != KH_EXIT_OK ||
        kh_create_public(&c, ktype, label, id, id_len, &pub) != KH_EXIT_OK)
        goto out_destroy;
    ret = kh_print_uri(&c, label, id, id_len, CKO_PRIVATE_KEY);
    goto out;

out_destroy:
    rv = c.p.f->C_DestroyObject(c.s, hpriv);
    if (rv != CKR_OK)
        kh_err_rv("C_DestroyObject (removing the half-registered private key)", rv);
out:
    free(ref);
    kh_pubkey_clear(&pub);
    kh_ctx_close(&c);
    return ret;
}

/* ---- list -------------------------------------------------------------- */

static void kh_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", f);
        else if (ch == '\t')
            fputs("\\t", f);
        else if (ch == '\r')
            fputs("\\r", f);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static int kh_key_cmp(const void *a, const void *b)
{
    const struct kh_p11_key *x = a, *y = b;
    int r = strcmp(x->label, y->label);
    if (r != 0)
        return r;
    /* private before public, then anything else */
    return (x->cls == CKO_PRIVATE_KEY ? 0 : x->cls == CKO_PUBLIC_KEY ? 1 : 2) -
           (y->cls == CKO_PRIVATE_KEY ? 0 : y->cls == CKO_PUBLIC_KEY ? 1 : 2);
}

/* Lists one token's objects; *first tracks JSON commas across tokens. */
static int kh_list_token(struct kh_p11 *p, const struct kh_p11_token *tok, const char *pin,
                         bool json, bool *first)
{
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE *objs = NULL;
    CK_ULONG n = 0;
    struct kh_p11_key *keys = NULL;
    size_t nkeys = 0;
    bool logged_in = false, login_failed = false;
    int ret = KH_EXIT_FAIL;
    CK_RV rv;

    rv = p->f->C_OpenSession(tok->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK)
        return kh_err_rv("C_OpenSession", rv);
    if (pin) {
        rv = kh_p11_login(p, s, CKU_USER, pin);
        if (rv == CKR_OK) {
            logged_in = true;
        } else {
            char what[96];
            snprintf(what, sizeof what, "C_Login on token '%s' (listing its public objects only)",
                     tok->label);
            kh_err_rv(what, rv);
            login_failed = true;
        }
    }
    rv = kh_p11_find(p, s, NULL, 0, &objs, &n);
    if (rv != CKR_OK) {
        kh_err_rv("C_FindObjects", rv);
        goto out;
    }
    keys = calloc(n ? n : 1, sizeof *keys);
    if (!keys) {
        kh_err("out of memory");
        goto out;
    }
    for (CK_ULONG i = 0; i < n; i++) {
        rv = kh_p11_describe(p, s, objs[i], &keys[nkeys]);
        if (rv == CKR_OBJECT_HANDLE_INVALID)
            continue;   /* deleted meanwhile by another process */
        if (rv != CKR_OK) {
            kh_err_rv("C_GetAttributeValue", rv);
            goto out;
        }
        nkeys++;
    }
    qsort(keys, nkeys, sizeof *keys, kh_key_cmp);
    for (size_t i = 0; i < nkeys; i++) {
        struct kh_p11_key *k = &keys[i];
        char *uri = kh_p11_uri_build(tok, k->label, k->id, k->id_len, k->cls);
        char typebuf[32], *idhex;
        const char *backend;

        if (!uri) {
            kh_err("out of memory");
            goto out;
        }
        if (!json) {
            printf("%s\n", uri);
            free(uri);
            continue;
        }
        idhex = malloc(2 * k->id_len + 1);
        if (!idhex) {
            free(uri);
            kh_err("out of memory");
            goto out;
        }
        kh_hex_encode(idhex, 2 * k->id_len + 1, k->id, k->id_len);
        backend = k->has_backend ? kh_p11_backend_name(k->backend) : NULL;
        printf("%s\n  {\"token\": ", *first ? "" : ",");
        *first = false;
        kh_json_string(stdout, tok->label);
        fputs(", \"label\": ", stdout);
        kh_json_string(stdout, k->label);
        printf(", \"id\": \"%s\", \"class\": \"%s\", \"key_type\": ", idhex, kh_p11_class_name(k->cls));
        if (k->cls == CKO_PRIVATE_KEY || k->cls == CKO_PUBLIC_KEY)
            kh_json_string(stdout, kh_p11_key_type_name(k, typebuf, sizeof typebuf));
        else
            fputs("null", stdout);
        fputs(", \"backend\": ", stdout);
        if (backend)
            kh_json_string(stdout, backend);
        else
            fputs("null", stdout);
        fputs(", \"uri\": ", stdout);
        kh_json_string(stdout, uri);
        fputc('}', stdout);
        free(idhex);
        free(uri);
    }
    ret = login_failed ? KH_EXIT_FAIL : KH_EXIT_OK;
out:
    for (size_t i = 0; i < nkeys; i++)
        kh_p11_key_clear(&keys[i]);
    free(keys);
    free(objs);
    if (logged_in)
        p->f->C_Logout(s);
    p->f->C_CloseSession(s);
    return ret;
}

static int kh_cmd_list(const struct kh_opts *o)
{
    struct kh_ctx c;
    struct kh_p11_token *toks = NULL;
    size_t ntoks = 0;
    char err[256];
    char *pin = NULL;
    bool first = true, found = false;
    int ret, r;
    CK_RV rv;

    r = kh_pin_get(&pin, "KEYHOLD_PIN", o->pin_file, NULL, KH_PIN_NO_PROMPT, err, sizeof err);
    if (r < 0) {
        kh_err("%s", err);
        return KH_EXIT_FAIL;
    }
    ret = kh_ctx_load(&c, o->module);
    if (ret != KH_EXIT_OK)
        goto out;
    if (r > 0)
        kh_err("no PIN (KEYHOLD_PIN or --pin-file): listing public objects only");
    rv = kh_p11_tokens(&c.p, &toks, &ntoks);
    if (rv != CKR_OK) {
        ret = kh_err_rv("C_GetSlotList", rv);
        goto out;
    }
    if (o->json)
        fputs("[", stdout);
    for (size_t i = 0; i < ntoks; i++) {
        if (!(toks[i].info.flags & CKF_TOKEN_INITIALIZED))
            continue;
        if (o->token && strcmp(o->token, toks[i].label) != 0)
            continue;
        found = true;
        /* A failure on one token (wrong PIN there) does not hide the others. */
        if (kh_list_token(&c.p, &toks[i], pin, o->json, &first) != KH_EXIT_OK)
            ret = KH_EXIT_FAIL;
    }
    if (o->json)
        fputs(first ? "]\n" : "\n]\n", stdout);
    if (o->token && !found) {
        kh_err("no token labelled '%s'", o->token);
        ret = KH_EXIT_FAIL;
    }
out:
    free(toks);
    kh_pin_free(pin);
    kh_ctx_close(&c);
    return ret;
}

/* ---- pubkey ------------------------------------------------------------ */

static int kh_cmd_pubkey(const struct kh_opts *o)
{
    static const char *const formats[] = { "pem", "hex", "xonly", "npub", "eth", "ssh" };
    struct kh_ctx c;
    struct kh_p11_key key;
    struct kh_pubkey pub = { 0 };
    CK_OBJECT_HANDLE *objs = NULL;
    CK_ULONG n = 0;
    char *text = NULL;
    bool known = false;
    int ret;
    CK_RV rv;

    memset(&key, 0, sizeof key);
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
        known = known || strcmp(o->format, formats[i]) == 0;
    if (!known) {
        kh_err("unknown format '%s' (pem, hex, xonly, npub, eth, ssh)", o->format);
        return KH_EXIT_USAGE;
    }
    ret = kh_ctx_open(&c, o->module, o->token, false);
    if (ret != KH_EXIT_OK)
        goto out;
    ret = KH_EXIT_FAIL;
    rv = kh_find_labelled(&c, o->label, CKO_PUBLIC_KEY, &objs, &n);
    if (rv == CKR_OK && n == 0) {
        /* No public object: the private key carries the public attributes,
         * but only a logged-in user sees it. */
        free(objs);
        objs = NULL;
        ret = kh_ctx_login(&c, o->pin_file, KH_PIN_PROMPT);
        if (ret != KH_EXIT_OK)
            goto out;
        ret = KH_EXIT_FAIL;
        rv = kh_find_labelled(&c, o->label, CKO_PRIVATE_KEY, &objs, &n);
    }
    if (rv != CKR_OK) {
        kh_err_rv("C_FindObjects", rv);
        goto out;
    }
    if (n == 0) {
        kh_err("no key labelled '%s' on token '%s'", o->label, c.tok.label);
        goto out;
    }
    if (n > 1)
        kh_err("warning: %lu keys are labelled '%s'; showing the first", n, o->label);
    rv = kh_p11_describe(&c.p, c.s, objs[0], &key);
    if (rv != CKR_OK) {
        kh_err_rv("C_GetAttributeValue", rv);
        goto out;
    }
    if (key.kind == KH_KEY_UNKNOWN) {
        kh_err("'%s' is not a key type keyhold knows", o->label);
        goto out;
    }
    rv = kh_p11_read_pubkey(&c.p, c.s, objs[0], key.kind, &pub);
    if (rv != CKR_OK) {
        kh_err_rv("reading the public key", rv);
        goto out;
    }

    if (strcmp(o->format, "pem") == 0) {
        text = kh_pubkey_to_pem(&pub);
        if (!text) {
            kh_err("cannot encode the public key as PEM");
            goto out;
        }
        fputs(text, stdout);
    } else if (strcmp(o->format, "hex") == 0) {
        const uint8_t *v = key.kind == KH_KEY_RSA ? pub.n : pub.point;
        size_t vl = key.kind == KH_KEY_RSA ? pub.n_len : pub.point_len;
        text = malloc(2 * vl + 1);
        if (!text) {
            kh_err("out of memory");
            goto out;
        }
        kh_hex_encode(text, 2 * vl + 1, v, vl);
        printf("%s\n", text);
    } else if (strcmp(o->format, "ssh") == 0) {
        if (key.kind == KH_KEY_SECP256K1) {
            kh_err("no OpenSSH key type for secp256k1");
            goto out;
        }
        text = kh_pubkey_to_ssh(&pub, key.label);
        if (!text) {
            kh_err("cannot encode the public key for OpenSSH");
            goto out;
        }
        printf("%s\n", text);
    } else {
        /* xonly, npub, eth: secp256k1 only */
        if (key.kind != KH_KEY_SECP256K1) {
            kh_err("format %s is for secp256k1 keys; '%s' is %s", o->format, o->label,
                   kh_keykind_name(key.kind));
            goto out;
        }
        text = malloc(KH_BECH32_MAX + 1);
        if (!text) {
            kh_err("out of memory");
            goto out;
        }
        if (strcmp(o->format, "xonly") == 0)
            kh_hex_encode(text, KH_BECH32_MAX + 1, pub.point + 1, 32);
        else if (strcmp(o->format, "npub") == 0)
            kh_bech32_encode(text, KH_BECH32_MAX + 1, "npub", pub.point + 1, 32);
        else
            kh_pubkey_eth_address(text, &pub);
        printf("%s\n", text);
    }
    ret = KH_EXIT_OK;
out:
    free(text);
    kh_pubkey_clear(&pub);
    kh_p11_key_clear(&key);
    free(objs);
    kh_ctx_close(&c);
    return ret;
}

/* ---- delete ------------------------------------------------------------ */

static int kh_cmd_delete(const struct kh_opts *o)
{
    static const CK_OBJECT_CLASS classes[] = { CKO_PRIVATE_KEY, CKO_PUBLIC_KEY };
    struct kh_ctx c;
    unsigned long deleted = 0;
    int ret;

    ret = kh_ctx_open_user(&c, o, NULL);
    if (ret != KH_EXIT_OK)
        goto out;
    for (size_t k = 0; k < 2 && ret == KH_EXIT_OK; k++) {
        CK_OBJECT_HANDLE *objs;
        CK_ULONG n;
        CK_RV rv = kh_find_labelled(&c, o->label, classes[k], &objs, &n);

        if (rv != CKR_OK) {
            ret = kh_err_rv("C_FindObjects", rv);
            break;
        }
        for (CK_ULONG i = 0; i < n; i++) {
            rv = c.p.f->C_DestroyObject(c.s, objs[i]);
            if (rv != CKR_OK) {
                ret = kh_err_rv("C_DestroyObject", rv);
                break;
            }
            deleted++;
        }
        free(objs);
    }
    if (ret == KH_EXIT_OK && deleted == 0) {
        kh_err("no key labelled '%s' on token '%s'", o->label, c.tok.label);
        ret = KH_EXIT_FAIL;
    }
    if (ret == KH_EXIT_OK || deleted > 0)
        printf("deleted %lu object%s labelled '%s'\n", deleted, deleted == 1 ? "" : "s", o->label);
out:
    kh_ctx_close(&c);
    return ret;
}

/* ---- tpm setup --------------------------------------------------------- */

static int kh_cmd_tpm_setup(const struct kh_opts *o)
{
    struct kh_tpm_conf conf;
    char err[512], msg[512];
    char *auth = NULL;
    bool set = false, already = false;
    uint32_t handle;
    int ret;

    if (!kh_tpm_conf_read(&conf, err, sizeof err)) {
        kh_err("%s", err);
        return KH_EXIT_FAIL;
    }
    handle = conf.primary;
    if (o->handle && !kh_tpm_parse_persistent(&handle, o->handle)) {
        kh_err("--handle must be a persistent handle (0x81000000 to 0x81ffffff)");
        return KH_EXIT_USAGE;
    }
    if (!kh_tpm_owner_auth_set(&conf, &set, err, sizeof err)) {
        kh_err("TPM at '%s' (%s): %s", conf.tcti, conf.tcti_from, err);
        return KH_EXIT_FAIL;
    }
    if (o->owner_auth_file) {
        size_t len = 0;
        ret = kh_read_secret_file(o->owner_auth_file, &auth, &len);
        if (ret != KH_EXIT_OK)
            return ret;
        auth[strcspn(auth, "\r\n")] = '\0';
    } else if (set) {
        int r = kh_pin_get(&auth, NULL, NULL, "TPM owner hierarchy auth value: ", KH_PIN_PROMPT, err, sizeof err);
        if (r != 0) {
            kh_err("the owner hierarchy has an auth value: give it with --owner-auth-file%s%s",
                   r < 0 ? ": " : "", r < 0 ? err : "");
            return KH_EXIT_FAIL;
        }
    }
    ret = kh_tpm_setup(&conf, handle, auth, &already, msg, sizeof msg) == 0 ? KH_EXIT_OK : KH_EXIT_FAIL;
    /* A file's buffer holds more than its first line: wipe all of it. */
    if (o->owner_auth_file)
        kh_secret_file_free(auth);
    else
        kh_pin_free(auth);
    if (ret == KH_EXIT_OK)
        printf("%s (TPM at %s)\n", msg, conf.tcti);
    else
        kh_err("%s", msg);
    return ret;
}

/* ---- doctor ------------------------------------------------------------ */

enum kh_check { KH_CHECK_OK, KH_CHECK_WARN, KH_CHECK_FAIL };

static int kh_doctor_worst;

static void kh_check(enum kh_check st, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void kh_check(enum kh_check st, const char *what, const char *fmt, ...)
{
    static const char *const names[] = { "ok", "warn", "FAIL" };
    va_list ap;

    if ((int)st > kh_doctor_worst)
        kh_doctor_worst = (int)st;
    printf("%-4s  %s: ", names[st], what);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

/* Store directory as the module documents it: KEYHOLD_STORE, else
 * $XDG_DATA_HOME/keyhold, else ~/.local/share/keyhold. */
static bool kh_store_dir(char *out, size_t outlen, const char **why)
{
    const char *e = getenv("KEYHOLD_STORE"), *x = getenv("XDG_DATA_HOME"), *h = getenv("HOME");
    int n;

    if (e && e[0]) {
        *why = "KEYHOLD_STORE";
        n = snprintf(out, outlen, "%s", e);
    } else if (x && x[0]) {
        *why = "XDG_DATA_HOME";
        n = snprintf(out, outlen, "%s/keyhold", x);
    } else if (h && h[0]) {
        *why = "HOME";
        n = snprintf(out, outlen, "%s/.local/share/keyhold", h);
    } else {
        return false;
    }
    return n > 0 && (size_t)n < outlen;
}

static void kh_doctor_store(void)
{
    char dir[4096], parent[4096];
    const char *why, *conf = getenv("KEYHOLD_CONF");
    struct stat st;

    if (conf && conf[0]) {
        if (access(conf, R_OK) == 0)
            kh_check(KH_CHECK_OK, "config", "%s (from KEYHOLD_CONF) is readable", conf);
        else
            kh_check(KH_CHECK_FAIL, "config", "%s (from KEYHOLD_CONF): %s", conf, strerror(errno));
    }
    if (!kh_store_dir(dir, sizeof dir, &why)) {
        kh_check(KH_CHECK_FAIL, "store", "no KEYHOLD_STORE, XDG_DATA_HOME or HOME to place it in");
        return;
    }
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            kh_check(KH_CHECK_FAIL, "store", "%s (from %s) is not a directory", dir, why);
        else if (access(dir, W_OK | X_OK) != 0)
            kh_check(KH_CHECK_FAIL, "store", "%s (from %s) is not writable: %s", dir, why, strerror(errno));
        else if (st.st_mode & 0077)
            kh_check(KH_CHECK_WARN, "store", "%s (from %s) is writable but readable by others (mode %03o)",
                     dir, why, (unsigned)(st.st_mode & 0777));
        else
            kh_check(KH_CHECK_OK, "store", "%s (from %s) is writable", dir, why);
        return;
    }
    /* Not there yet: fine if it can be created. Walk up to an existing dir. */
    snprintf(parent, sizeof parent, "%s", dir);
    for (;;) {
        char *slash = strrchr(parent, '/');
        if (!slash || slash == parent) {
            snprintf(parent, sizeof parent, "%s", slash ? "/" : ".");
            break;
        }
        *slash = '\0';
        if (stat(parent, &st) == 0)
            break;
    }
    if (access(parent, W_OK | X_OK) == 0)
        kh_check(KH_CHECK_OK, "store", "%s (from %s) does not exist yet; it will be created on first use",
                 dir, why);
    else
        kh_check(KH_CHECK_FAIL, "store", "%s (from %s) does not exist and %s is not writable", dir, why, parent);
}

static void kh_doctor_mechanisms(struct kh_p11 *p, const struct kh_p11_token *t)
{
    static const CK_MECHANISM_TYPE wanted[] = {
        CKM_EC_KEY_PAIR_GEN, CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_RSA_PKCS_KEY_PAIR_GEN,
        CKM_ECDSA, CKM_ECDSA_SHA256, CKM_EDDSA, CKM_RSA_PKCS, CKM_SHA256_RSA_PKCS,
        CKM_RSA_PKCS_PSS, CKM_KH_BIP340_SCHNORR, CKM_KH_ECDSA_RECOVERABLE,
    };
    CK_MECHANISM_TYPE *mechs = NULL;
    CK_ULONG n = 0;
    char what[64], missing[512] = "", list[4096] = "";
    size_t used = 0;
    CK_RV rv;

    snprintf(what, sizeof what, "mechanisms (slot %lu)", t->slot);
    rv = p->f->C_GetMechanismList(t->slot, NULL, &n);
    if (rv == CKR_OK) {
        mechs = calloc(n ? n : 1, sizeof *mechs);
        rv = mechs ? p->f->C_GetMechanismList(t->slot, mechs, &n) : CKR_HOST_MEMORY;
    }
    if (rv != CKR_OK) {
        kh_check(KH_CHECK_FAIL, what, "C_GetMechanismList: %s", kh_rv_name(rv));
        free(mechs);
        return;
    }
    for (CK_ULONG i = 0; i < n; i++) {
        int w = snprintf(list + used, sizeof list - used, "%s%s", i ? " " : "", kh_mech_name(mechs[i]));
        if (w > 0 && (size_t)w < sizeof list - used)
            used += (size_t)w;
    }
    for (size_t w = 0; w < sizeof wanted / sizeof wanted[0]; w++) {
        bool have = false;
        for (CK_ULONG i = 0; i < n; i++)
            have = have || mechs[i] == wanted[w];
        if (!have) {
            size_t l = strlen(missing);
            snprintf(missing + l, sizeof missing - l, "%s%s", l ? ", " : "", kh_mech_name(wanted[w]));
        }
    }
    if (missing[0])
        kh_check(KH_CHECK_WARN, what, "%lu, missing %s; has: %s", n, missing, list);
    else
        kh_check(KH_CHECK_OK, what, "%lu: %s", n, list);
    free(mechs);
}

static void kh_doctor_tokens(struct kh_p11 *p)
{
    struct kh_p11_token *toks = NULL;
    size_t n = 0, nfree = 0;
    CK_RV rv = kh_p11_tokens(p, &toks, &n);

    if (rv != CKR_OK) {
        kh_check(KH_CHECK_FAIL, "tokens", "C_GetSlotList/C_GetTokenInfo: %s", kh_rv_name(rv));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const struct kh_p11_token *t = &toks[i];
        CK_FLAGS f = t->info.flags;
        char what[96];

        if (!(f & CKF_TOKEN_INITIALIZED)) {
            nfree++;
            continue;
        }
        snprintf(what, sizeof what, "token '%s'", t->label);
        if (f & CKF_USER_PIN_LOCKED)
            kh_check(KH_CHECK_FAIL, what, "slot %lu, serial %s: user PIN locked", t->slot, t->serial);
        else if (!(f & CKF_USER_PIN_INITIALIZED))
            kh_check(KH_CHECK_FAIL, what, "slot %lu, serial %s: no user PIN set (C_InitPIN as SO)",
                     t->slot, t->serial);
        else if (f & (CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_COUNT_LOW))
            kh_check(KH_CHECK_WARN, what, "slot %lu, serial %s: user PIN %s", t->slot, t->serial,
                     (f & CKF_USER_PIN_FINAL_TRY) ? "has one try left" : "failed recently (count low)");
        else if (f & CKF_SO_PIN_LOCKED)
            kh_check(KH_CHECK_WARN, what, "slot %lu, serial %s: SO PIN locked", t->slot, t->serial);
        else
            kh_check(KH_CHECK_OK, what, "slot %lu, serial %s, model %s: initialised, user PIN set",
                     t->slot, t->serial, t->model);
        kh_doctor_mechanisms(p, t);
    }
    if (nfree == 1)
        kh_check(KH_CHECK_OK, "free slot", "one uninitialised token is available for 'keyhold init'");
    else
        kh_check(KH_CHECK_WARN, "free slot", "%zu uninitialised tokens (expected exactly one)", nfree);
    if (n == nfree)
        kh_check(KH_CHECK_WARN, "tokens", "none initialised yet (keyhold init --label NAME)");
    free(toks);
}

static void kh_doctor_tpm(void)
{
    struct kh_tpm_conf conf;
    struct kh_tpm_probe pr;
    char err[512];

    if (!kh_tpm_conf_read(&conf, err, sizeof err)) {
        kh_check(KH_CHECK_FAIL, "TPM", "%s", err);
        return;
    }
    bool wanted = strcmp(conf.tcti_from, "default") != 0 || conf.default_tpm;
    kh_tpm_probe(&conf, &pr);
    if (!pr.reachable) {
        kh_check(wanted ? KH_CHECK_FAIL : KH_CHECK_WARN, "TPM",
                 "'%s' (%s) is not reachable: %s%s", conf.tcti, conf.tcti_from, pr.error,
                 wanted ? "" : "; tpm keys and TPM-sealed tokens are unavailable (set tcti or KEYHOLD_TCTI)");
        return;
    }
    kh_check(KH_CHECK_OK, "TPM", "'%s' (%s) answers: manufacturer %s, %u transient slots free", conf.tcti,
             conf.tcti_from, pr.manufacturer, pr.transient_avail);
    if (pr.in_lockout)
        kh_check(KH_CHECK_FAIL, "TPM lockout", "the TPM is in dictionary-attack lockout (%u of %u failures): "
                 "PINs of TPM-sealed tokens and DA-protected keys are refused until it recovers",
                 pr.lockout_counter, pr.max_auth_fail);
    else if (pr.lockout_counter > 0)
        kh_check(KH_CHECK_WARN, "TPM lockout", "%u of %u authorization failures counted", pr.lockout_counter,
                 pr.max_auth_fail);
    if (pr.primary_present && pr.primary_storage)
        kh_check(KH_CHECK_OK, "TPM primary", "0x%08x holds %s: new TPM keys go under it", (unsigned)conf.primary,
                 pr.primary_is_srk ? "the SRK-template key" : "a storage key");
    else if (pr.primary_present)
        kh_check(KH_CHECK_WARN, "TPM primary", "0x%08x holds a key that is not a storage key: ignored; TPM keys "
                 "go under the SRK-template primary made on demand", (unsigned)conf.primary);
    else if (pr.owner_auth_set)
        kh_check(KH_CHECK_FAIL, "TPM primary", "nothing at 0x%08x and the owner hierarchy has an auth value: "
                 "run 'keyhold tpm setup'", (unsigned)conf.primary);
    else
        kh_check(KH_CHECK_WARN, "TPM primary", "nothing at 0x%08x: TPM keys go under the SRK-template primary, "
                 "made on demand; 'keyhold tpm setup' persists it", (unsigned)conf.primary);
}

static int kh_cmd_doctor(const struct kh_opts *o)
{
    struct kh_p11 p;
    char err[4200], desc[33], manuf[33];
    CK_INFO info;
    CK_RV rv;

    kh_doctor_worst = KH_CHECK_OK;
    rv = kh_p11_load(&p, o->module, err, sizeof err);
    if (rv != CKR_OK) {
        char path[4096];
        enum kh_p11_source src;
        if (kh_p11_resolve_path(path, sizeof path, &src, o->module))
            kh_check(KH_CHECK_FAIL, "module", "%s (from %s) does not load: %s", path,
                     kh_p11_source_name(src), err);
        else
            kh_check(KH_CHECK_FAIL, "module", "%s", err);
        kh_doctor_store();
        return KH_EXIT_FAIL;
    }
    kh_check(KH_CHECK_OK, "module", "%s (from %s) loads", p.path, kh_p11_source_name(p.source));
    rv = kh_p11_initialize(&p);
    if (rv != CKR_OK) {
        kh_check(KH_CHECK_FAIL, "C_Initialize", "%s", kh_rv_name(rv));
        kh_doctor_store();
        kh_p11_close(&p);
        return KH_EXIT_FAIL;
    }
    rv = p.f->C_GetInfo(&info);
    if (rv == CKR_OK) {
        kh_p11_unpad(desc, info.libraryDescription, sizeof info.libraryDescription);
        kh_p11_unpad(manuf, info.manufacturerID, sizeof info.manufacturerID);
        kh_check(KH_CHECK_OK, "C_GetInfo", "Cryptoki %u.%u, %s by %s, version %u.%u",
                 info.cryptokiVersion.major, info.cryptokiVersion.minor, desc, manuf,
                 info.libraryVersion.major, info.libraryVersion.minor);
    } else {
        kh_check(KH_CHECK_FAIL, "C_GetInfo", "%s", kh_rv_name(rv));
    }
    kh_doctor_store();
    kh_doctor_tokens(&p);
    kh_p11_close(&p);
    kh_doctor_tpm();
    return kh_doctor_worst == KH_CHECK_FAIL ? KH_EXIT_FAIL : KH_EXIT_OK;
}

/* ---- main -------------------------------------------------------------- */

static const int kh_init_allowed[] = { KH_OPT_LABEL, KH_OPT_SO_PIN_FILE, KH_OPT_PIN_FILE, 0 };
static const int kh_init_required[] = { KH_OPT_LABEL, 0 };
static const int kh_keygen_allowed[] = {
    KH_OPT_TOKEN, KH_OPT_TYPE, KH_OPT_LABEL, KH_OPT_ID, KH_OPT_BACKEND, KH_OPT_PIN_FILE, KH_OPT_PCR, 0
};
static const int kh_keygen_required[] = { KH_OPT_TOKEN, KH_OPT_TYPE, KH_OPT_LABEL, 0 };
static const int kh_import_allowed[] = {
    KH_OPT_TOKEN, KH_OPT_LABEL, KH_OPT_ID, KH_OPT_PIN_FILE, KH_OPT_HEX, KH_OPT_NSEC, KH_OPT_PEM,
    KH_OPT_TPM_PUB, KH_OPT_TPM_PRIV, KH_OPT_TPM_AUTH_FILE, KH_OPT_TPM_PARENT, 0
};
static const int kh_import_required[] = { KH_OPT_TOKEN, KH_OPT_LABEL, KH_OPT_HEX, 0 };
static const int kh_list_allowed[] = { KH_OPT_TOKEN, KH_OPT_JSON, KH_OPT_PIN_FILE, 0 };
static const int kh_pubkey_allowed[] = { KH_OPT_TOKEN, KH_OPT_LABEL, KH_OPT_FORMAT, KH_OPT_PIN_FILE, 0 };
static const int kh_pubkey_required[] = { KH_OPT_TOKEN, KH_OPT_LABEL, KH_OPT_FORMAT, 0 };
static const int kh_delete_allowed[] = { KH_OPT_TOKEN, KH_OPT_LABEL, KH_OPT_PIN_FILE, 0 };
static const int kh_delete_required[] = { KH_OPT_TOKEN, KH_OPT_LABEL, 0 };
static const int kh_remote_add_allowed[] = {
    KH_OPT_URL, KH_OPT_KEY, KH_OPT_DRIVER, KH_OPT_LABEL, KH_OPT_TOKEN, KH_OPT_ID, KH_OPT_PIN_FILE, 0
};
static const int kh_remote_add_required[] = { KH_OPT_KEY, 0 };
static const int kh_tpm_setup_allowed[] = { KH_OPT_HANDLE, KH_OPT_OWNER_AUTH_FILE, 0 };

static const struct kh_command kh_commands[] = {
    { "init", kh_cmd_init, kh_usage_init, kh_init_allowed, kh_init_required },
    { "keygen", kh_cmd_keygen, kh_usage_keygen, kh_keygen_allowed, kh_keygen_required },
    { "import", kh_cmd_import, kh_usage_import, kh_import_allowed, kh_import_required },
    { "list", kh_cmd_list, kh_usage_list, kh_list_allowed, NULL },
    { "pubkey", kh_cmd_pubkey, kh_usage_pubkey, kh_pubkey_allowed, kh_pubkey_required },
    { "delete", kh_cmd_delete, kh_usage_delete, kh_delete_allowed, kh_delete_required },
    { "doctor", kh_cmd_doctor, kh_usage_doctor, NULL, NULL },
    { "remote add", kh_cmd_remote_add, kh_usage_remote_add, kh_remote_add_allowed,
      kh_remote_add_required },
    { "tpm setup", kh_cmd_tpm_setup, kh_usage_tpm_setup, kh_tpm_setup_allowed, NULL },
};

static const struct kh_command *kh_find_command(const char *name)
{
    for (size_t i = 0; i < sizeof kh_commands / sizeof kh_commands[0]; i++)
        if (strcmp(kh_commands[i].name, name) == 0)
            return &kh_commands[i];
    return NULL;
}

int main(int argc, char **argv)
{
    const struct kh_command *cmd;
    struct kh_opts o;
    const char *module = NULL;
    int i = 1, ret;

    memset(&o, 0, sizeof o);
    /* Global options before the command. */
    while (i < argc && argv[i][0] == '-') {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(kh_usage_main, stdout);
            return KH_EXIT_OK;
        } else if (strcmp(argv[i], "--module") == 0 && i + 1 < argc) {
            module = argv[i + 1];
            i += 2;
        } else if (strncmp(argv[i], "--module=", 9) == 0) {
            module = argv[i] + 9;
            i++;
        } else {
            kh_err("unknown option: %s", argv[i]);
            fputs(kh_usage_main, stderr);
            return KH_EXIT_USAGE;
        }
    }
    if (i >= argc) {
        fputs(kh_usage_main, stderr);
        return KH_EXIT_USAGE;
    }
    if (strcmp(argv[i], "help") == 0) {
        if (i + 1 < argc && (cmd = kh_find_command(strcmp(argv[i + 1], "tpm") ? argv[i + 1] : "tpm setup"))) {
            fputs(cmd->usage, stdout);
            return KH_EXIT_OK;
        }
        fputs(kh_usage_main, stdout);
        return i + 1 < argc ? KH_EXIT_USAGE : KH_EXIT_OK;
    }
    if (strcmp(argv[i], "remote") == 0) {
        /* two-word commands: "remote add" */
        if (i + 1 >= argc || strcmp(argv[i + 1], "add") != 0) {
            kh_err("remote: expected 'remote add'");
            fputs(kh_usage_remote_add, stderr);
            return KH_EXIT_USAGE;
        }
        i++;
        cmd = kh_find_command("remote add");
    } else if (strcmp(argv[i], "tpm") == 0) {
        /* two words: "tpm setup" */
        if (i + 1 >= argc || strcmp(argv[i + 1], "setup") != 0) {
            kh_err("tpm: expected 'keyhold tpm setup'");
            fputs(kh_usage_tpm_setup, stderr);
            return KH_EXIT_USAGE;
        }
        i++;
        cmd = kh_find_command("tpm setup");
    } else {
        cmd = kh_find_command(argv[i]);
    }
    if (!cmd) {
        kh_err("unknown command: %s", argv[i]);
        fputs(kh_usage_main, stderr);
        return KH_EXIT_USAGE;
    }
    o.module = module;
    ret = kh_parse(cmd, argc - i, argv + i, &o);
    if (ret >= 0)
        return ret;
    ret = cmd->run(&o);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        kh_err("cannot write to standard output");
        ret = KH_EXIT_FAIL;
    }
    return ret;
}

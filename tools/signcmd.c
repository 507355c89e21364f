/*
 * signcmd.c - keyhold-sign's options, configuration file, message decoding,
 * signature encoding, mechanism table and exit codes (see signcmd.h).
 */
#include "signcmd.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

/* ---- exit codes -------------------------------------------------------- */

int kh_sign_exit_for_rv(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
        return KH_SIGN_EXIT_OK;
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_PIN_EXPIRED:
    case CKR_PIN_LOCKED:
    case CKR_USER_PIN_NOT_INITIALIZED:
    case CKR_USER_NOT_LOGGED_IN:
        return KH_SIGN_EXIT_LOGIN;
    case CKR_LIBRARY_LOAD_FAILED:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_CANT_LOCK:
    case CKR_NEED_TO_CREATE_THREADS:
    case CKR_SLOT_ID_INVALID:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_MEMORY:
    case CKR_DEVICE_REMOVED:
    case CKR_SESSION_COUNT:
    case CKR_KH_STORE_ERROR:
        return KH_SIGN_EXIT_UNAVAILABLE;
    case CKR_DATA_INVALID:
    case CKR_DATA_LEN_RANGE:
        return KH_SIGN_EXIT_INPUT;
    default:
        return KH_SIGN_EXIT_FAIL;
    }
}

/* ---- mechanisms -------------------------------------------------------- */

#define KH_NO_MECH CK_UNAVAILABLE_INFORMATION

static const struct kh_sign_mech kh_sign_mechs[] = {
    { .name = "eddsa", .mech = CKM_EDDSA, .key_type = CKK_EC_EDWARDS, .raw_mech = KH_NO_MECH },
    { .name = "ecdsa-sha256", .mech = CKM_ECDSA_SHA256, .key_type = CKK_EC,
      .hash = KH_SIGN_HASH_SHA256, .raw_mech = CKM_ECDSA },
    { .name = "ecdsa-sha384", .mech = CKM_ECDSA_SHA384, .key_type = CKK_EC,
      .hash = KH_SIGN_HASH_SHA384, .raw_mech = CKM_ECDSA },
    { .name = "ecdsa-sha512", .mech = CKM_ECDSA_SHA512, .key_type = CKK_EC,
      .hash = KH_SIGN_HASH_SHA512, .raw_mech = CKM_ECDSA },
    { .name = "ecdsa", .mech = CKM_ECDSA, .key_type = CKK_EC, .raw_mech = KH_NO_MECH },
    { .name = "bip340", .mech = CKM_KH_BIP340_SCHNORR, .key_type = CKK_EC,
      .kind = KH_KEY_SECP256K1, .input_len = 32, .raw_mech = KH_NO_MECH },
    { .name = "ecdsa-recoverable", .mech = CKM_KH_ECDSA_RECOVERABLE, .key_type = CKK_EC,
      .kind = KH_KEY_SECP256K1, .input_len = 32, .raw_mech = KH_NO_MECH },
    { .name = "rsa-pkcs-sha256", .mech = CKM_SHA256_RSA_PKCS, .key_type = CKK_RSA,
      .hash = KH_SIGN_HASH_SHA256, .raw_mech = CKM_RSA_PKCS, .digest_info = true },
    { .name = "rsa-pkcs-sha384", .mech = CKM_SHA384_RSA_PKCS, .key_type = CKK_RSA,
      .hash = KH_SIGN_HASH_SHA384, .raw_mech = CKM_RSA_PKCS, .digest_info = true },
    { .name = "rsa-pkcs-sha512", .mech = CKM_SHA512_RSA_PKCS, .key_type = CKK_RSA,
      .hash = KH_SIGN_HASH_SHA512, .raw_mech = CKM_RSA_PKCS, .digest_info = true },
    { .name = "rsa-pss-sha256", .mech = CKM_SHA256_RSA_PKCS_PSS, .key_type = CKK_RSA,
      .hash = KH_SIGN_HASH_SHA256, .raw_mech = CKM_RSA_PKCS_PSS, .pss = true },
    { .name = "rsa-pss-sha384", .mech = CKM_SHA384_RSA_PKCS_PSS, .key_type = CKK_RSA,
      .hash = KH_SIGN_HASH_SHA384, .raw_mech = CKM_RSA_PKCS_PSS, .pss = true },
    { .name = "rsa-pss-sha512", .mech = CKM_SHA512_RSA_PKCS_PSS, .key_type = CKK_RSA,
      .hash = KH_SIGN_HASH_SHA512, .raw_mech = CKM_RSA_PKCS_PSS, .pss = true },
};

#define KH_SIGN_NMECHS (sizeof kh_sign_mechs / sizeof kh_sign_mechs[0])

const struct kh_sign_mech *kh_sign_mech_by_name(const char *name)
{
    for (size_t i = 0; i < KH_SIGN_NMECHS; i++)
        if (strcmp(kh_sign_mechs[i].name, name) == 0)
            return &kh_sign_mechs[i];
    return NULL;
}

const struct kh_sign_mech *kh_sign_mech_default(CK_KEY_TYPE key_type)
{
    switch (key_type) {
    case CKK_EC_EDWARDS: return kh_sign_mech_by_name("eddsa");
    case CKK_EC: return kh_sign_mech_by_name("ecdsa-sha256");
    case CKK_RSA: return kh_sign_mech_by_name("rsa-pkcs-sha256");
    default: return NULL;
    }
}

bool kh_sign_mech_fits(const struct kh_sign_mech *m, CK_KEY_TYPE key_type, enum kh_keykind kind)
{
    return m->key_type == key_type && (m->kind == KH_KEY_UNKNOWN || m->kind == kind);
}

const char *kh_sign_mech_names(void)
{
    static char buf[512];

    if (!buf[0]) {
        size_t used = 0;
        for (size_t i = 0; i < KH_SIGN_NMECHS; i++) {
            int n = snprintf(buf + used, sizeof buf - used, "%s%s", i ? ", " : "",
                             kh_sign_mechs[i].name);
            if (n < 0 || (size_t)n >= sizeof buf - used)
                break;
            used += (size_t)n;
        }
    }
    return buf;
}

static size_t kh_sign_hash_len(enum kh_sign_hash h)
{
    switch (h) {
    case KH_SIGN_HASH_SHA256: return 32;
    case KH_SIGN_HASH_SHA384: return 48;
    case KH_SIGN_HASH_SHA512: return 64;
    default: return 0;
    }
}

bool kh_sign_mech_pss_params(const struct kh_sign_mech *m, CK_RSA_PKCS_PSS_PARAMS *params)
{
    if (!m->pss)
        return false;
    switch (m->hash) {
    case KH_SIGN_HASH_SHA256: params->hashAlg = CKM_SHA256; params->mgf = CKG_MGF1_SHA256; break;
    case KH_SIGN_HASH_SHA384: params->hashAlg = CKM_SHA384; params->mgf = CKG_MGF1_SHA384; break;
    case KH_SIGN_HASH_SHA512: params->hashAlg = CKM_SHA512; params->mgf = CKG_MGF1_SHA512; break;
    default: return false;
    }
    params->sLen = (CK_ULONG)kh_sign_hash_len(m->hash);
    return true;
}

bool kh_sign_prehash(const struct kh_sign_mech *m, const uint8_t *msg, size_t len,
                     uint8_t *out, size_t *out_len)
{
    /* DER DigestInfo prefixes (RFC 8017, section 9.2, note 1). */
    static const uint8_t di_sha256[] = { 0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                         0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20 };
    static const uint8_t di_sha384[] = { 0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                         0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30 };
    static const uint8_t di_sha512[] = { 0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                         0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40 };
    const uint8_t *prefix;
    const EVP_MD *md;
    unsigned int dlen = 0;
    size_t plen = 0;

    *out_len = 0;
    if (m->raw_mech == KH_NO_MECH)
        return false;
    switch (m->hash) {
    case KH_SIGN_HASH_SHA256: md = EVP_sha256(); prefix = di_sha256; break;
    case KH_SIGN_HASH_SHA384: md = EVP_sha384(); prefix = di_sha384; break;
    case KH_SIGN_HASH_SHA512: md = EVP_sha512(); prefix = di_sha512; break;
    default: return false;
    }
    if (m->digest_info) {
        plen = sizeof di_sha256;   /* all three prefixes are 19 bytes */
        memcpy(out, prefix, plen);
    }
    if (EVP_Digest(msg, len, out + plen, &dlen, md, NULL) != 1)
        return false;
    *out_len = plen + dlen;
    return true;
}

/* ---- options ----------------------------------------------------------- */

void kh_sign_opts_clear(struct kh_sign_opts *o)
{
    if (o->uri)
        kh_wipe(o->uri, strlen(o->uri));
    free(o->uri);
    free(o->module);
    free(o->pin_file);
    free(o->mechanism);
    memset(o, 0, sizeof *o);
}

/* Parses a timeout: decimal digits only, 1..KH_SIGN_TIMEOUT_MAX_MS. */
static bool kh_sign_parse_timeout(const char *s, long *ms)
{
    long v = 0;

    if (!s[0])
        return false;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (*p - '0');
        if (v > KH_SIGN_TIMEOUT_MAX_MS)
            return false;
    }
    if (v < 1)
        return false;
    *ms = v;
    return true;
}

bool kh_sign_opts_set(struct kh_sign_opts *o, const char *name, const char *value,
                      char *err, size_t errlen)
{
    char **str = NULL;
    bool repeated = false;

    if (strcmp(name, "uri") == 0) {
        str = &o->uri;
        if (strncmp(value, "pkcs11:", 7) != 0) {
            snprintf(err, errlen, "not a PKCS#11 URI (must start with pkcs11:)");
            return false;
        }
    } else if (strcmp(name, "module") == 0) {
        str = &o->module;
    } else if (strcmp(name, "pin_file") == 0) {
        str = &o->pin_file;
        if (strcmp(value, "-") == 0) {
            snprintf(err, errlen, "'-' (stdin) cannot be used: stdin carries the message");
            return false;
        }
    } else if (strcmp(name, "mechanism") == 0) {
        str = &o->mechanism;
        if (!kh_sign_mech_by_name(value)) {
            snprintf(err, errlen, "unknown mechanism '%s' (one of: %s)", value, kh_sign_mech_names());
            return false;
        }
    } else if (strcmp(name, "in") == 0) {
        enum kh_sign_in v;
        if (strcmp(value, "base64") == 0) {
            v = KH_SIGN_IN_BASE64;
        } else if (strcmp(value, "raw") == 0) {
            v = KH_SIGN_IN_RAW;
        } else {
            snprintf(err, errlen, "unknown format '%s' (base64, raw)", value);
            return false;
        }
        repeated = o->in != KH_SIGN_IN_UNSET;
        if (!repeated)
            o->in = v;
    } else if (strcmp(name, "out") == 0) {
        enum kh_sign_out v;
        if (strcmp(value, "base64") == 0) {
            v = KH_SIGN_OUT_BASE64;
        } else if (strcmp(value, "hex") == 0) {
            v = KH_SIGN_OUT_HEX;
        } else if (strcmp(value, "raw") == 0) {
            v = KH_SIGN_OUT_RAW;
        } else {
            snprintf(err, errlen, "unknown format '%s' (base64, hex, raw)", value);
            return false;
        }
        repeated = o->out != KH_SIGN_OUT_UNSET;
        if (!repeated)
            o->out = v;
    } else if (strcmp(name, "timeout_ms") == 0) {
        long v;
        if (!kh_sign_parse_timeout(value, &v)) {
            snprintf(err, errlen, "'%s' is not a whole number of milliseconds from 1 to %ld",
                     value, KH_SIGN_TIMEOUT_MAX_MS);
            return false;
        }
        repeated = o->timeout_ms != 0;
        if (!repeated)
            o->timeout_ms = v;
    } else {
        snprintf(err, errlen, "unknown setting");
        return false;
    }

    if (str) {
        if (!value[0]) {
            snprintf(err, errlen, "empty value");
            return false;
        }
        repeated = *str != NULL;
        if (!repeated) {
            *str = strdup(value);
            if (!*str) {
                snprintf(err, errlen, "out of memory");
                return false;
            }
        }
    }
    if (repeated) {
        snprintf(err, errlen, "given twice");
        return false;
    }
    return true;
}

static bool kh_sign_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

bool kh_sign_conf_parse(struct kh_sign_opts *o, const char *text, size_t len,
                        char *err, size_t errlen)
{
    const char *p = text, *end = text + len;
    unsigned line = 0;

    if (memchr(text, '\0', len)) {
        snprintf(err, errlen, "the configuration holds a NUL byte");
        return false;
    }
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end, *ks = p, *ke, *vs, *ve, *eq;
        char name[64], *value;
        char why[256];
        bool ok;

        line++;
        p = nl ? nl + 1 : end;
        while (ks < le && kh_sign_blank(*ks))
            ks++;
        if (ks == le || *ks == '#')
            continue;
        eq = memchr(ks, '=', (size_t)(le - ks));
        if (!eq) {
            snprintf(err, errlen, "line %u: expected 'name = value'", line);
            return false;
        }
        ke = eq;
        while (ke > ks && kh_sign_blank(ke[-1]))
            ke--;
        vs = eq + 1;
        while (vs < le && kh_sign_blank(*vs))
            vs++;
        ve = le;
        while (ve > vs && kh_sign_blank(ve[-1]))
            ve--;
        if (ke == ks || (size_t)(ke - ks) >= sizeof name) {
            snprintf(err, errlen, "line %u: missing or overlong setting name", line);
            return false;
        }
        memcpy(name, ks, (size_t)(ke - ks));
        name[ke - ks] = '\0';
        /* Not strndup: text need not be NUL-terminated. */
        value = malloc((size_t)(ve - vs) + 1);
        if (!value) {
            snprintf(err, errlen, "out of memory");
            return false;
        }
        memcpy(value, vs, (size_t)(ve - vs));
        value[ve - vs] = '\0';
        ok = kh_sign_opts_set(o, name, value, why, sizeof why);
        kh_wipe(value, strlen(value));
        free(value);
        if (!ok) {
            snprintf(err, errlen, "line %u: %s: %s", line, name, why);
            return false;
        }
    }
    return true;
}

void kh_sign_opts_merge(struct kh_sign_opts *dst, struct kh_sign_opts *src)
{
    char **d[] = { &dst->uri, &dst->module, &dst->pin_file, &dst->mechanism };
    char **s[] = { &src->uri, &src->module, &src->pin_file, &src->mechanism };

    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) {
        if (!*d[i]) {
            *d[i] = *s[i];
            *s[i] = NULL;
        }
    }
    if (dst->in == KH_SIGN_IN_UNSET)
        dst->in = src->in;
    if (dst->out == KH_SIGN_OUT_UNSET)
        dst->out = src->out;
    if (dst->timeout_ms == 0)
        dst->timeout_ms = src->timeout_ms;
}

/* ---- input and output -------------------------------------------------- */

int kh_sign_read_all(int fd, size_t max, uint8_t **buf, size_t *len, char *err, size_t errlen)
{
    size_t used = 0, cap = 4096;
    uint8_t *b = malloc(cap);

    *buf = NULL;
    *len = 0;
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return KH_SIGN_EXIT_FAIL;
    }
    for (;;) {
        ssize_t n;
        if (used == cap) {
            /* Room for one byte past max, to tell "exactly max" from "more". */
            size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            uint8_t *nb;
            if (ncap <= cap) {
                snprintf(err, errlen, "input longer than %zu bytes", max);
                free(b);
                return KH_SIGN_EXIT_INPUT;
            }
            nb = realloc(b, ncap);
            if (!nb) {
                snprintf(err, errlen, "out of memory");
                free(b);
                return KH_SIGN_EXIT_FAIL;
            }
            b = nb;
            cap = ncap;
        }
        n = read(fd, b + used, cap - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "cannot read the message: %s", strerror(errno));
            free(b);
            return KH_SIGN_EXIT_FAIL;
        }
        if (n == 0)
            break;
        used += (size_t)n;
        if (used > max) {
            snprintf(err, errlen, "input longer than %zu bytes", max);
            free(b);
            return KH_SIGN_EXIT_INPUT;
        }
    }
    *buf = b;
    *len = used;
    return KH_SIGN_EXIT_OK;
}

static int kh_sign_b64val(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Strict base64 decoding of one line (no line ending) into out. */
static int kh_sign_decode_base64(uint8_t **msg, size_t *msg_len, const uint8_t *line,
                                 size_t len, char *err, size_t errlen)
{
    size_t pad = 0, o = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    uint8_t *out;

    /* First the alphabet, then where '=' stands: the first bad byte is named. */
    for (size_t i = 0; i < len; i++) {
        if (line[i] != '=' && kh_sign_b64val(line[i]) < 0) {
            if (line[i] == '\n' || line[i] == '\r')
                snprintf(err, errlen, "invalid base64: line break at offset %zu (one line expected)", i);
            else
                snprintf(err, errlen, "invalid base64: byte at offset %zu is not in the base64 alphabet", i);
            return KH_SIGN_EXIT_INPUT;
        }
    }
    for (size_t i = 0; i < len; i++) {
        if (line[i] != '=')
            continue;
        /* '=' only as the last one or two characters of the line. */
        if (i + 2 < len || (i + 2 == len && line[i + 1] != '=')) {
            snprintf(err, errlen, "invalid base64: '=' at offset %zu is not final padding", i);
            return KH_SIGN_EXIT_INPUT;
        }
        pad++;
    }
    if (len % 4 != 0) {
        snprintf(err, errlen, "invalid base64: length %zu is not a multiple of 4 ('=' padding is required)", len);
        return KH_SIGN_EXIT_INPUT;
    }
    out = malloc(len / 4 * 3 + 1);
    if (!out) {
        snprintf(err, errlen, "out of memory");
        return KH_SIGN_EXIT_FAIL;
    }
    for (size_t i = 0; i < len - pad; i++) {
        acc = (acc << 6) | (uint32_t)kh_sign_b64val(line[i]);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (acc & ((1u << bits) - 1)) {
        snprintf(err, errlen, "invalid base64: non-canonical encoding (padding bits are not zero)");
        free(out);
        return KH_SIGN_EXIT_INPUT;
    }
    if (o > KH_SIGN_MAX_MESSAGE) {
        snprintf(err, errlen, "message longer than %zu bytes", KH_SIGN_MAX_MESSAGE);
        free(out);
        return KH_SIGN_EXIT_INPUT;
    }
    *msg = out;
    *msg_len = o;
    return KH_SIGN_EXIT_OK;
}

int kh_sign_decode_input(uint8_t **msg, size_t *msg_len, enum kh_sign_in in,
                         const uint8_t *data, size_t len, char *err, size_t errlen)
{
    const uint8_t *nl;
    size_t line_len;

    *msg = NULL;
    *msg_len = 0;
    if (in == KH_SIGN_IN_RAW) {
        if (len > KH_SIGN_MAX_MESSAGE) {
            snprintf(err, errlen, "message longer than %zu bytes", KH_SIGN_MAX_MESSAGE);
            return KH_SIGN_EXIT_INPUT;
        }
        *msg = malloc(len ? len : 1);
        if (!*msg) {
            snprintf(err, errlen, "out of memory");
            return KH_SIGN_EXIT_FAIL;
        }
        if (len)
            memcpy(*msg, data, len);
        *msg_len = len;
        return KH_SIGN_EXIT_OK;
    }

    if (len == 0) {
        snprintf(err, errlen, "no input: expected the message as one line of base64");
        return KH_SIGN_EXIT_INPUT;
    }
    nl = memchr(data, '\n', len);
    line_len = nl ? (size_t)(nl - data) : len;
    if (nl && (size_t)(nl - data) + 1 < len) {
        snprintf(err, errlen, "trailing data after the base64 line: %zu more bytes after offset %zu",
                 len - line_len - 1, line_len);
        return KH_SIGN_EXIT_INPUT;
    }
    if (nl && line_len > 0 && data[line_len - 1] == '\r')
        line_len--;      /* "\r\n" line ending */
    return kh_sign_decode_base64(msg, msg_len, data, line_len, err, errlen);
}

uint8_t *kh_sign_encode_output(enum kh_sign_out fmt, const uint8_t *sig, size_t sig_len,
                               size_t *out_len)
{
    uint8_t *out = NULL;

    *out_len = 0;
    if (fmt == KH_SIGN_OUT_RAW) {
        out = malloc(sig_len ? sig_len : 1);
        if (out) {
            if (sig_len)
                memcpy(out, sig, sig_len);
            *out_len = sig_len;
        }
    } else if (fmt == KH_SIGN_OUT_HEX) {
        out = malloc(2 * sig_len + 2);
        if (out && kh_hex_encode((char *)out, 2 * sig_len + 1, sig, sig_len)) {
            out[2 * sig_len] = '\n';
            *out_len = 2 * sig_len + 1;
        } else {
            free(out);
            out = NULL;
        }
    } else {
        char *b64 = kh_base64_encode(sig, sig_len);
        if (b64) {
            size_t n = strlen(b64);
            out = realloc(b64, n + 1);
            if (out) {
                out[n] = '\n';
                *out_len = n + 1;
            } else {
                free(b64);
            }
        }
    }
    return out;
}

/*
 * The token store: one SQLite database per store directory (keyhold.db).
 *
 * The schema lives here and only here, as a list of migration steps applied
 * under PRAGMA user_version. Every statement a hot path runs is prepared once
 * per handle and cached (kh_store_stmt); object searches use one cached
 * statement per query shape. Writes that span several statements run in
 * BEGIN IMMEDIATE transactions; single-statement writes run in autocommit.
 * The PIN KDF never runs inside a transaction: PIN checks read the wrap, run
 * the KDF unlocked, then write back with a compare-and-swap on the wrap blob
 * (and retry if another process changed it in between).
 *
 * Every SQLite error goes through kh_store_rv(), the one translator to CK_RV.
 */
#include "store.h"
#include "base.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#define KH_DB_NAME "keyhold.db"
#define KH_BUSY_TIMEOUT_MS 10000
#define KH_SALT_LEN 16
#define KH_PIN_MIN 4
#define KH_PIN_MAX 256
/* How often a compare-and-swap on a wrap is retried when another process
 * changed the wrap while our KDF ran. */
#define KH_CAS_TRIES 3

/* Index into per-user-type statement pairs. */
enum kh_who { KH_WHO_SO = 0, KH_WHO_USER = 1 };

/* ---- schema: one migration step per user_version ---- */

static const char *const kh_store_migrations[] = {
    /* version 1: initial schema */
    "CREATE TABLE tokens ("
    "  id INTEGER PRIMARY KEY,"
    "  label TEXT NOT NULL,"
    "  uid BLOB NOT NULL,"
    "  user_salt BLOB, user_kdf_log2n INTEGER, user_kdf_r INTEGER, user_kdf_p INTEGER,"
    "  user_wrap BLOB,"
    "  so_salt BLOB, so_kdf_log2n INTEGER, so_kdf_r INTEGER, so_kdf_p INTEGER,"
    "  so_wrap BLOB,"
    /* key_check: kh_seal(token key, aad "keyhold-kcv-v1" || uid, empty);
     * proves a token key held by a session is still this token's key. */
    "  key_check BLOB NOT NULL,"
    "  user_fail INTEGER NOT NULL DEFAULT 0,"
    "  so_fail INTEGER NOT NULL DEFAULT 0,"
    "  default_backend INTEGER NOT NULL DEFAULT 1,"
    "  created INTEGER NOT NULL"
    ");"
    /* AUTOINCREMENT: a rowid is an object handle, and a handle another
     * process still holds must never come back as a different object. */
    "CREATE TABLE objects ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  token_id INTEGER NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,"
    "  uid BLOB NOT NULL,"
    "  class INTEGER,"
    "  key_type INTEGER,"
    "  ckid BLOB,"
    "  label TEXT,"
    "  private INTEGER NOT NULL DEFAULT 0,"
    "  backend INTEGER,"
    "  remote_ref TEXT,"
    "  attrs BLOB NOT NULL,"
    "  sealed BLOB"
    ");"
    "CREATE INDEX objects_token_label ON objects(token_id, label);"
    "CREATE INDEX objects_token_ckid ON objects(token_id, ckid);"
    "CREATE INDEX objects_token_class ON objects(token_id, class, key_type);"
    "CREATE TABLE audit ("
    "  id INTEGER PRIMARY KEY,"
    "  ts INTEGER NOT NULL,"
    "  token_id INTEGER,"
    "  event TEXT NOT NULL,"
    "  detail TEXT"
    ");",
    /* version 2: PIN wraps bound to a TPM. A bound wrap's key is derived
     * from the PIN and a secret the TPM unseals only with a PIN-derived auth
     * value (kh_pin_binder); these columns hold the TPM's sealed object. A
     * token is bound when its SO wrap is (so_tpm IS NOT NULL). */
    "ALTER TABLE tokens ADD COLUMN user_tpm BLOB;"
    "ALTER TABLE tokens ADD COLUMN so_tpm BLOB;",
    /* version 3 goes here */
};
#define KH_SCHEMA_VERSION ((int)(sizeof kh_store_migrations / sizeof kh_store_migrations[0]))

/* ---- cached statements ---- */

enum kh_stmt {
    KH_ST_BEGIN,
    KH_ST_COMMIT,
    KH_ST_ROLLBACK,
    KH_ST_DATA_VERSION,
    KH_ST_TOKEN_LIST,
    KH_ST_TOKEN_GET,
    KH_ST_TOKEN_INSERT,
    KH_ST_TOKEN_REINIT,
    KH_ST_TOKEN_SET_BACKEND,
    KH_ST_TOKEN_KEY_CHECK,
    KH_ST_WRAP_GET_SO,
    KH_ST_WRAP_GET_USER,
    KH_ST_FAIL_INC_SO,
    KH_ST_FAIL_INC_USER,
    KH_ST_FAIL_RESET_SO,
    KH_ST_FAIL_RESET_USER,
    KH_ST_WRAP_SET_SO,
    KH_ST_WRAP_SET_USER,
    KH_ST_OBJ_INSERT,
    KH_ST_OBJ_GET,
    KH_ST_OBJ_UPDATE,
    KH_ST_OBJ_DELETE,
    KH_ST_OBJ_DELETE_TOKEN,
    KH_ST_OBJ_COUNT,
    KH_ST_AUDIT,
    KH_ST_COUNT
};

#define KH_TOKEN_COLS \
    "id, label, uid, user_wrap IS NOT NULL, user_fail, so_fail, default_backend, so_tpm IS NOT NULL"

static const char *const kh_stmt_sql[KH_ST_COUNT] = {
    [KH_ST_BEGIN] = "BEGIN IMMEDIATE",
    [KH_ST_COMMIT] = "COMMIT",
    [KH_ST_ROLLBACK] = "ROLLBACK",
    [KH_ST_DATA_VERSION] = "PRAGMA data_version",
    [KH_ST_TOKEN_LIST] = "SELECT " KH_TOKEN_COLS " FROM tokens ORDER BY id",
    [KH_ST_TOKEN_GET] = "SELECT " KH_TOKEN_COLS " FROM tokens WHERE id = ?1",
    [KH_ST_TOKEN_INSERT] =
        "INSERT INTO tokens (id, label, uid, so_salt, so_kdf_log2n, so_kdf_r, so_kdf_p,"
        " so_wrap, key_check, default_backend, created, so_tpm)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    [KH_ST_TOKEN_REINIT] =
        "UPDATE tokens SET label = ?2, uid = ?3, so_salt = ?4, so_kdf_log2n = ?5,"
        " so_kdf_r = ?6, so_kdf_p = ?7, so_wrap = ?8, key_check = ?10, so_fail = 0,"
        " so_tpm = ?11, user_tpm = NULL,"
        " user_salt = NULL, user_kdf_log2n = NULL, user_kdf_r = NULL, user_kdf_p = NULL,"
        " user_wrap = NULL, user_fail = 0 WHERE id = ?1 AND so_wrap = ?9",
    [KH_ST_TOKEN_SET_BACKEND] = "UPDATE tokens SET default_backend = ?2 WHERE id = ?1",
    [KH_ST_TOKEN_KEY_CHECK] = "SELECT uid, key_check, so_tpm IS NOT NULL FROM tokens WHERE id = ?1",
    [KH_ST_WRAP_GET_SO] =
        "SELECT uid, so_salt, so_kdf_log2n, so_kdf_r, so_kdf_p, so_wrap, so_fail, so_tpm"
        " FROM tokens WHERE id = ?1",
    [KH_ST_WRAP_GET_USER] =
        "SELECT uid, user_salt, user_kdf_log2n, user_kdf_r, user_kdf_p, user_wrap, user_fail, user_tpm"
        " FROM tokens WHERE id = ?1",
    [KH_ST_FAIL_INC_SO] =
        "UPDATE tokens SET so_fail = so_fail + 1 WHERE id = ?1 AND so_wrap = ?2"
        " RETURNING so_fail",
    [KH_ST_FAIL_INC_USER] =
        "UPDATE tokens SET user_fail = user_fail + 1 WHERE id = ?1 AND user_wrap = ?2"
        " RETURNING user_fail",
    [KH_ST_FAIL_RESET_SO] =
        "UPDATE tokens SET so_fail = 0 WHERE id = ?1 AND so_wrap = ?2 AND so_fail < ?3",
    [KH_ST_FAIL_RESET_USER] =
        "UPDATE tokens SET user_fail = 0 WHERE id = ?1 AND user_wrap = ?2 AND user_fail < ?3",
    [KH_ST_WRAP_SET_SO] =
        "UPDATE tokens SET so_salt = ?2, so_kdf_log2n = ?3, so_kdf_r = ?4, so_kdf_p = ?5,"
        " so_wrap = ?6, so_tpm = ?9, so_fail = 0"
        " WHERE id = ?1 AND uid = ?7 AND (?8 IS NULL OR so_wrap = ?8)",
    [KH_ST_WRAP_SET_USER] =
        "UPDATE tokens SET user_salt = ?2, user_kdf_log2n = ?3, user_kdf_r = ?4,"
        " user_kdf_p = ?5, user_wrap = ?6, user_tpm = ?9, user_fail = 0"
        " WHERE id = ?1 AND uid = ?7 AND (?8 IS NULL OR user_wrap = ?8)",
    [KH_ST_OBJ_INSERT] =
        "INSERT INTO objects (token_id, uid, class, key_type, ckid, label, private, backend,"
        " remote_ref, attrs, sealed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    [KH_ST_OBJ_GET] = "SELECT token_id, uid, attrs, sealed FROM objects WHERE id = ?1",
    [KH_ST_OBJ_UPDATE] =
        "UPDATE objects SET class = ?2, key_type = ?3, ckid = ?4, label = ?5, private = ?6,"
        " backend = ?7, remote_ref = ?8, attrs = ?9 WHERE id = ?1",
    [KH_ST_OBJ_DELETE] = "DELETE FROM objects WHERE id = ?1",
    [KH_ST_OBJ_DELETE_TOKEN] = "DELETE FROM objects WHERE token_id = ?1",
    [KH_ST_OBJ_COUNT] = "SELECT count(*) FROM objects WHERE token_id = ?1",
    [KH_ST_AUDIT] = "INSERT INTO audit (ts, token_id, event, detail) VALUES (?1, ?2, ?3, ?4)",
};

/* Find shapes: one bit per constrained field. */
#define KH_FIND_TOKEN 0x01
#define KH_FIND_CLASS 0x02
#define KH_FIND_KTYPE 0x04
#define KH_FIND_CKID 0x08
#define KH_FIND_LABEL 0x10
#define KH_FIND_PUBLIC 0x20
#define KH_FIND_SHAPES 0x40

struct kh_store {
    sqlite3 *db;
    sqlite3_stmt *stmt[KH_ST_COUNT];
    sqlite3_stmt *find[KH_FIND_SHAPES];
    int64_t data_version;
    const volatile uint32_t *wal_hdr;   /* WAL-index header in SQLite's -shm mapping, or NULL */
    const kh_pin_binder *binder;    /* opens bound wraps; NULL: none available */
    bool bind_new;                  /* bind the wraps of tokens initialised from now on */
};

static void kh_store_map_wal_hdr(kh_store *st);
static CK_RV kh_find_stmt(kh_store *st, sqlite3_stmt **out, unsigned shape);

/* ---- errors ---- */

/*
 * The one translator from SQLite result codes to CK_RV. Logs the native
 * code once (debug level). what names the operation for the log line.
 */
static CK_RV kh_store_rv(kh_store *st, int rc, const char *what)
{
    kh_log(KH_LOG_DEBUG, "store: %s: sqlite error %d (%s): %s", what, rc, sqlite3_errstr(rc),
           st && st->db ? sqlite3_errmsg(st->db) : "-");
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return CKR_OK;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return CKR_DEVICE_ERROR;
    case SQLITE_NOMEM:
        return CKR_HOST_MEMORY;
    case SQLITE_FULL:
        return CKR_DEVICE_MEMORY;
    default: /* CORRUPT, NOTADB, IOERR, CANTOPEN, READONLY, ... */
        return CKR_KH_STORE_ERROR;
    }
}

/* ---- statement helpers ---- */

/* Get cached statement which, preparing it on first use. */
static CK_RV kh_store_stmt(kh_store *st, sqlite3_stmt **out, enum kh_stmt which)
{
    if (!st->stmt[which]) {
        int rc = sqlite3_prepare_v3(st->db, kh_stmt_sql[which], -1, SQLITE_PREPARE_PERSISTENT,
                                    &st->stmt[which], NULL);
        if (rc != SQLITE_OK)
            return kh_store_rv(st, rc, "prepare");
    }
    *out = st->stmt[which];
    return CKR_OK;
}

/* Return a cached statement to its idle state (ends its read, drops bindings). */
static void kh_store_done(sqlite3_stmt *s)
{
    if (s) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    }
}

/* Run a cached statement that returns no rows. */
static CK_RV kh_store_exec(kh_store *st, enum kh_stmt which, const char *what)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv = kh_store_stmt(st, &s, which);
    if (rv != CKR_OK)
        return rv;
    int rc = sqlite3_step(s);
    rv = rc == SQLITE_DONE ? CKR_OK : kh_store_rv(st, rc, what);
    kh_store_done(s);
    return rv;
}

static CK_RV kh_store_begin(kh_store *st)
{
    return kh_store_exec(st, KH_ST_BEGIN, "begin");
}

static CK_RV kh_store_commit(kh_store *st)
{
    CK_RV rv = kh_store_exec(st, KH_ST_COMMIT, "commit");
    if (rv != CKR_OK && !sqlite3_get_autocommit(st->db))
        kh_store_exec(st, KH_ST_ROLLBACK, "rollback");
    return rv;
}

static void kh_store_rollback(kh_store *st)
{
    if (!sqlite3_get_autocommit(st->db))
        kh_store_exec(st, KH_ST_ROLLBACK, "rollback");
}

/* Bind a blob; NULL p binds SQL NULL, a zero length binds an empty blob. */
static int kh_bind_blob(sqlite3_stmt *s, int i, const void *p, size_t len)
{
    if (!p)
        return sqlite3_bind_null(s, i);
    if (len > INT_MAX)
        return SQLITE_TOOBIG;
    return sqlite3_bind_blob(s, i, len ? p : "", (int)len, SQLITE_STATIC);
}

static int kh_bind_text(sqlite3_stmt *s, int i, const char *p, size_t len)
{
    if (!p)
        return sqlite3_bind_null(s, i);
    if (len > INT_MAX)
        return SQLITE_TOOBIG;
    return sqlite3_bind_text(s, i, len ? p : "", (int)len, SQLITE_STATIC);
}

/* Copy a blob column into a malloc'd buffer; SQL NULL gives NULL/0. */
static CK_RV kh_col_dup(uint8_t **out, size_t *out_len, sqlite3_stmt *s, int col)
{
    *out = NULL;
    *out_len = 0;
    if (sqlite3_column_type(s, col) == SQLITE_NULL)
        return CKR_OK;
    const void *p = sqlite3_column_blob(s, col);
    int n = sqlite3_column_bytes(s, col);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    if (!buf)
        return CKR_HOST_MEMORY;
    if (n > 0)
        memcpy(buf, p, (size_t)n);
    *out = buf;
    *out_len = (size_t)n;
    return CKR_OK;
}

/* Copy a fixed-size blob column; anything else is a damaged store. */
static CK_RV kh_col_fixed(uint8_t *out, size_t len, sqlite3_stmt *s, int col)
{
    const void *p = sqlite3_column_blob(s, col);
    if (!p || (size_t)sqlite3_column_bytes(s, col) != len)
        return CKR_KH_STORE_ERROR;
    memcpy(out, p, len);
    return CKR_OK;
}

/* ---- open / close ---- */

/* mkdir -p with mode 0700 for every directory created. */
static CK_RV kh_store_mkdirs(const char *dir)
{
    char path[PATH_MAX];
    struct stat sb;
    size_t len = strlen(dir);

    if (len == 0 || len >= sizeof path)
        return CKR_ARGUMENTS_BAD;
    memcpy(path, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        char c = path[i];
        path[i] = '\0';
        if (mkdir(path, 0700) == 0) {
            /* 0700 whatever the umask */
            if (chmod(path, 0700) != 0)
                kh_log(KH_LOG_DEBUG, "store: chmod %s: %s", path, strerror(errno));
        } else if (errno != EEXIST) {
            kh_log(KH_LOG_DEBUG, "store: mkdir %s: %s", path, strerror(errno));
            return CKR_KH_STORE_ERROR;
        }
        path[i] = c;
    }
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        kh_log(KH_LOG_DEBUG, "store: %s is not a directory", dir);
        return CKR_KH_STORE_ERROR;
    }
    return CKR_OK;
}

/* Create the database file 0600 whatever the umask; tighten an existing one. */
static CK_RV kh_store_create_file(const char *path)
{
    struct stat sb;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        kh_log(KH_LOG_DEBUG, "store: open %s: %s", path, strerror(errno));
        return CKR_KH_STORE_ERROR;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return CKR_KH_STORE_ERROR;
    }
    if ((sb.st_mode & 07777) != 0600 && fchmod(fd, 0600) != 0)
        kh_log(KH_LOG_DEBUG, "store: chmod %s: %s", path, strerror(errno));
    close(fd);
    return CKR_OK;
}

/* Run a one-off statement returning one integer (PRAGMAs at open). */
static CK_RV kh_store_pragma_int(kh_store *st, const char *sql, int64_t *out)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(st->db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK)
        return kh_store_rv(st, rc, sql);
    rc = sqlite3_step(s);
    CK_RV rv = CKR_OK;
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(s, 0);
    else
        rv = kh_store_rv(st, rc == SQLITE_DONE ? SQLITE_CORRUPT : rc, sql);
    sqlite3_finalize(s);
    return rv;
}

static CK_RV kh_store_exec_sql(kh_store *st, const char *sql)
{
    int rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? CKR_OK : kh_store_rv(st, rc, "exec");
}

/* Bring the schema up to KH_SCHEMA_VERSION, one transaction per step. Each
 * step re-reads user_version under the write lock, so concurrent openers
 * apply it exactly once. */
static CK_RV kh_store_migrate(kh_store *st)
{
    int64_t ver;
    CK_RV rv = kh_store_pragma_int(st, "PRAGMA user_version", &ver);
    if (rv != CKR_OK)
        return rv;
    if (ver > KH_SCHEMA_VERSION) {
        kh_log(KH_LOG_DEBUG, "store: store version %lld is newer than this build (%d)", (long long)ver,
               KH_SCHEMA_VERSION);
        return CKR_KH_STORE_ERROR;
    }
    while (ver < KH_SCHEMA_VERSION) {
        char sql[64];
        rv = kh_store_begin(st);
        if (rv != CKR_OK)
            return rv;
        rv = kh_store_pragma_int(st, "PRAGMA user_version", &ver);
        if (rv != CKR_OK)
            goto out_rollback;
        if (ver < KH_SCHEMA_VERSION) {
            rv = kh_store_exec_sql(st, kh_store_migrations[ver]);
            if (rv != CKR_OK)
                goto out_rollback;
            snprintf(sql, sizeof sql, "PRAGMA user_version = %lld", (long long)ver + 1);
            rv = kh_store_exec_sql(st, sql);
            if (rv != CKR_OK)
                goto out_rollback;
        }
        rv = kh_store_commit(st);
        if (rv != CKR_OK)
            return rv;
        rv = kh_store_pragma_int(st, "PRAGMA user_version", &ver);
        if (rv != CKR_OK)
            return rv;
    }
    return CKR_OK;

out_rollback:
    kh_store_rollback(st);
    return rv;
}

CK_RV kh_store_open(kh_store **out, const char *dir)
{
    char path[PATH_MAX];
    kh_store *st;
    CK_RV rv;
    int rc;

    if (!out || !dir)
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    if (snprintf(path, sizeof path, "%s/%s", dir, KH_DB_NAME) >= (int)sizeof path)
        return CKR_ARGUMENTS_BAD;
    rv = kh_store_mkdirs(dir);
    if (rv != CKR_OK)
        return rv;
    rv = kh_store_create_file(path);
    if (rv != CKR_OK)
        return rv;

    st = calloc(1, sizeof *st);
    if (!st)
        return CKR_HOST_MEMORY;
    /* NOMUTEX: the caller serialises every call on a handle. */
    rc = sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rv = kh_store_rv(st, rc, "open");
        goto out_close;
    }
    sqlite3_extended_result_codes(st->db, 1);
    sqlite3_busy_timeout(st->db, KH_BUSY_TIMEOUT_MS);

    /* journal_mode returns the mode now in effect. */
    {
        sqlite3_stmt *s = NULL;
        rc = sqlite3_prepare_v2(st->db, "PRAGMA journal_mode = WAL", -1, &s, NULL);
        if (rc == SQLITE_OK) {
            rc = sqlite3_step(s);
            if (rc == SQLITE_ROW) {
                const char *mode = (const char *)sqlite3_column_text(s, 0);
                rc = mode && strcmp(mode, "wal") == 0 ? SQLITE_OK : SQLITE_CANTOPEN;
            }
        }
        if (rc != SQLITE_OK)
            rv = kh_store_rv(st, rc, "journal_mode");
        sqlite3_finalize(s);
        if (rv != CKR_OK)
            goto out_close;
    }
    /* synchronous=FULL: a generated key must survive power loss.
     * secure_delete: old wraps and deleted blobs do not linger in free pages. */
    rv = kh_store_exec_sql(st, "PRAGMA synchronous = FULL;"
                               "PRAGMA foreign_keys = ON;"
                               "PRAGMA secure_delete = ON;");
    if (rv != CKR_OK)
        goto out_close;
    rv = kh_store_migrate(st);
    if (rv != CKR_OK)
        goto out_close;
    rv = kh_store_pragma_int(st, "PRAGMA data_version", &st->data_version);
    if (rv != CKR_OK)
        goto out_close;
    kh_store_map_wal_hdr(st);
    /* The lookups applications make first (by label or CKA_ID, with or
     * without the class) are prepared now, with the connection, so that the
     * first C_FindObjectsInit of a process does not pay for parsing and
     * planning. A failure here only means they are prepared on first use. */
    static const unsigned warm[] = {
        KH_FIND_TOKEN | KH_FIND_CLASS | KH_FIND_LABEL, KH_FIND_TOKEN | KH_FIND_CLASS | KH_FIND_CKID,
        KH_FIND_TOKEN | KH_FIND_LABEL, KH_FIND_TOKEN | KH_FIND_CKID,
    };
    for (size_t i = 0; i < sizeof warm / sizeof warm[0]; i++) {
        sqlite3_stmt *unused;
        (void)kh_find_stmt(st, &unused, warm[i]);
    }
    *out = st;
    return CKR_OK;

out_close:
    kh_store_close(st);
    return rv;
}

void kh_store_close(kh_store *st)
{
    if (!st)
        return;
    for (int i = 0; i < KH_ST_COUNT; i++)
        sqlite3_finalize(st->stmt[i]);
    for (int i = 0; i < KH_FIND_SHAPES; i++)
        sqlite3_finalize(st->find[i]);
    sqlite3_close_v2(st->db);
    free(st);
}

/*
 * After fork() the connection belongs to the parent: closing it in the child
 * could checkpoint or unlink the parent's WAL, or drop POSIX locks SQLite
 * tracks per process. So the connection and its statements are leaked on
 * purpose; only the handle's own memory is freed.
 */
void kh_store_abandon(kh_store *st)
{
    free(st);
}

CK_RV kh_store_default_dir(char *buf, size_t buflen)
{
    const char *s;
    int n;

    if (!buf || buflen == 0)
        return CKR_ARGUMENTS_BAD;
    buf[0] = '\0';
    if ((s = secure_getenv("KEYHOLD_STORE")) && *s) {
        n = snprintf(buf, buflen, "%s", s);
    } else if ((s = secure_getenv("XDG_DATA_HOME")) && s[0] == '/') {
        n = snprintf(buf, buflen, "%s/keyhold", s);
    } else {
        s = secure_getenv("HOME");
        if (!s || s[0] != '/') {
            struct passwd pw, *res = NULL;
            char pwbuf[4096];
            if (getpwuid_r(getuid(), &pw, pwbuf, sizeof pwbuf, &res) != 0 || !res ||
                !res->pw_dir || res->pw_dir[0] != '/')
                return CKR_KH_STORE_ERROR;
            n = snprintf(buf, buflen, "%s/.local/share/keyhold", res->pw_dir);
        } else {
            n = snprintf(buf, buflen, "%s/.local/share/keyhold", s);
        }
    }
    if (n < 0 || (size_t)n >= buflen) {
        buf[0] = '\0';
        return CKR_BUFFER_TOO_SMALL;
    }
    return CKR_OK;
}

/* The WAL-index header: two 48-byte copies at the start of region 0 (32 KiB)
 * of the -shm mapping. iVersion of the format this code knows. */
#define KH_WALINDEX_REGION 32768
#define KH_WALINDEX_VERSION 3007000u
#define KH_WALHDR_WORDS 12

/*
 * Find the WAL-index header through SQLite's own mapping (xShmMap on the
 * main database file, region 0, not extending it). The region stays mapped
 * while the connection is open. Without it (a VFS with no shared memory),
 * wal_hdr stays NULL and every stamp read fails: callers use the slow path.
 */
static void kh_store_map_wal_hdr(kh_store *st)
{
    sqlite3_file *fp = NULL;
    void volatile *p = NULL;

    st->wal_hdr = NULL;
    if (sqlite3_file_control(st->db, "main", SQLITE_FCNTL_FILE_POINTER, &fp) != SQLITE_OK || !fp ||
        !fp->pMethods || fp->pMethods->iVersion < 2 || !fp->pMethods->xShmMap)
        return;
    if (fp->pMethods->xShmMap(fp, 0, KH_WALINDEX_REGION, 0, &p) != SQLITE_OK || !p)
        return;
    st->wal_hdr = (const volatile uint32_t *)p;
}

bool kh_store_stamp_read(const kh_store *st, kh_store_stamp *out)
{
    const volatile uint32_t *h = st ? st->wal_hdr : NULL;
    uint32_t a[KH_WALHDR_WORDS], b[KH_WALHDR_WORDS];

    if (!h)
        return false;
    /* SQLite writes the second copy, a barrier, then the first; readers read
     * the first, a barrier, the second, and trust them only when equal. */
    for (int i = 0; i < KH_WALHDR_WORDS; i++)
        a[i] = h[i];
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    for (int i = 0; i < KH_WALHDR_WORDS; i++)
        b[i] = h[KH_WALHDR_WORDS + i];
    if (memcmp(a, b, sizeof a) != 0 || a[0] != KH_WALINDEX_VERSION)
        return false;
    /* isInit is the first byte of word 3 (after iVersion, unused, iChange). */
    if (((const uint8_t *)a)[12] == 0)
        return false;
    memcpy(out->w, a, sizeof a);
    return true;
}

void kh_store_set_binder(kh_store *st, const kh_pin_binder *binder, bool bind_new)
{
    st->binder = binder;
    st->bind_new = binder && bind_new;
}

bool kh_store_changed(kh_store *st)
{
    sqlite3_stmt *s = NULL;
    bool changed = true; /* on error, make the caller re-read */

    if (kh_store_stmt(st, &s, KH_ST_DATA_VERSION) != CKR_OK)
        return true;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        int64_t v = sqlite3_column_int64(s, 0);
        changed = v != st->data_version;
        st->data_version = v;
    } else {
        kh_store_rv(st, rc, "data_version");
    }
    kh_store_done(s);
    return changed;
}

/* ---- tokens ---- */

/* Fill a token record from a row of KH_TOKEN_COLS. */
static CK_RV kh_token_from_row(kh_token_rec *t, sqlite3_stmt *s)
{
    static const char hex[] = "0123456789ABCDEF";
    memset(t, 0, sizeof *t);
    t->id = sqlite3_column_int64(s, 0);
    const char *label = (const char *)sqlite3_column_text(s, 1);
    size_t len = (size_t)sqlite3_column_bytes(s, 1);
    if (len > KH_LABEL_MAX)
        len = KH_LABEL_MAX;
    if (label)
        memcpy(t->label, label, len);
    if (kh_col_fixed(t->uid, KH_UID_LEN, s, 2) != CKR_OK)
        return CKR_KH_STORE_ERROR;
    for (int i = 0; i < 8; i++) {
        t->serial[2 * i] = hex[t->uid[i] >> 4];
        t->serial[2 * i + 1] = hex[t->uid[i] & 15];
    }
    t->user_pin_set = sqlite3_column_int(s, 3) != 0;
    t->user_fail = (uint32_t)sqlite3_column_int64(s, 4);
    t->so_fail = (uint32_t)sqlite3_column_int64(s, 5);
    t->default_backend = (CK_ULONG)sqlite3_column_int64(s, 6);
    t->tpm_bound = sqlite3_column_int(s, 7) != 0;
    return CKR_OK;
}

CK_RV kh_store_token_list(kh_store *st, kh_token_rec **out, size_t *n)
{
    sqlite3_stmt *s = NULL;
    kh_token_rec *recs = NULL;
    size_t count = 0, cap = 0;
    CK_RV rv;
    int rc;

    if (!st || !out || !n)
        return CKR_ARGUMENTS_BAD;
    *out = NULL;
    *n = 0;
    rv = kh_store_stmt(st, &s, KH_ST_TOKEN_LIST);
    if (rv != CKR_OK)
        return rv;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (count == cap) {
            size_t ncap = cap ? 2 * cap : 8;
            kh_token_rec *p = realloc(recs, ncap * sizeof *recs);
            if (!p) {
                rv = CKR_HOST_MEMORY;
                goto out_free;
            }
            recs = p;
            cap = ncap;
        }
        rv = kh_token_from_row(&recs[count], s);
        if (rv != CKR_OK)
            goto out_free;
        count++;
    }
    if (rc != SQLITE_DONE) {
        rv = kh_store_rv(st, rc, "token_list");
        goto out_free;
    }
    kh_store_done(s);
    if (!recs) {
        recs = malloc(sizeof *recs);
        if (!recs)
            return CKR_HOST_MEMORY;
    }
    *out = recs;
    *n = count;
    return CKR_OK;

out_free:
    kh_store_done(s);
    free(recs);
    return rv;
}

CK_RV kh_store_token_get(kh_store *st, kh_token_rec *out, int64_t id)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv;

    if (!st || !out)
        return CKR_ARGUMENTS_BAD;
    rv = kh_store_stmt(st, &s, KH_ST_TOKEN_GET);
    if (rv != CKR_OK)
        return rv;
    sqlite3_bind_int64(s, 1, id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        rv = kh_token_from_row(out, s);
    else if (rc == SQLITE_DONE)
        rv = CKR_SLOT_ID_INVALID;
    else
        rv = kh_store_rv(st, rc, "token_get");
    kh_store_done(s);
    return rv;
}

CK_RV kh_store_token_set_default_backend(kh_store *st, int64_t token_id, CK_ULONG backend)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv;

    if (!st)
        return CKR_ARGUMENTS_BAD;
    rv = kh_store_stmt(st, &s, KH_ST_TOKEN_SET_BACKEND);
    if (rv != CKR_OK)
        return rv;
    sqlite3_bind_int64(s, 1, token_id);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)backend);
    int rc = sqlite3_step(s);
    if (rc != SQLITE_DONE)
        rv = kh_store_rv(st, rc, "set_default_backend");
    else if (sqlite3_changes(st->db) == 0)
        rv = CKR_SLOT_ID_INVALID;
    kh_store_done(s);
    return rv;
}

/* ---- PIN wraps ---- */

/* One PIN's wrap of the token key, as read from the tokens row. */
struct kh_wrap {
    uint8_t token_uid[KH_UID_LEN];
    uint8_t salt[KH_SALT_LEN];
    kh_kdf_params kdf;
    uint8_t *blob;       /* NULL: no PIN set */
    size_t blob_len;
    uint32_t fail;
    uint8_t *tpm;        /* the binder's sealed secret, or NULL: not bound */
    size_t tpm_len;
};

static void kh_wrap_clear(struct kh_wrap *w)
{
    free(w->blob);
    free(w->tpm);
    memset(w, 0, sizeof *w);
}

static bool kh_pin_len_ok(size_t len)
{
    return len >= KH_PIN_MIN && len <= KH_PIN_MAX;
}

static enum kh_who kh_who_of(CK_USER_TYPE user_type)
{
    return user_type == CKU_SO ? KH_WHO_SO : KH_WHO_USER;
}

/* AAD of a PIN wrap: "keyhold-pin-v1" || token uid || user type byte. */
#define KH_PIN_AAD_LEN (14 + KH_UID_LEN + 1)
static void kh_pin_aad(uint8_t out[KH_PIN_AAD_LEN], const uint8_t token_uid[KH_UID_LEN],
                       enum kh_who who)
{
    memcpy(out, "keyhold-pin-v1", 14);
    memcpy(out + 14, token_uid, KH_UID_LEN);
    out[14 + KH_UID_LEN] = (uint8_t)(who == KH_WHO_SO ? CKU_SO : CKU_USER);
}

/* AAD of a token's key check value: "keyhold-kcv-v1" || token uid. */
#define KH_KCV_AAD_LEN (14 + KH_UID_LEN)
static void kh_kcv_aad(uint8_t out[KH_KCV_AAD_LEN], const uint8_t token_uid[KH_UID_LEN])
{
    memcpy(out, "keyhold-kcv-v1", 14);
    memcpy(out + 14, token_uid, KH_UID_LEN);
}

/* Read token_id's wrap for who. CKR_SLOT_ID_INVALID if no such token. */
static CK_RV kh_wrap_load(kh_store *st, struct kh_wrap *w, int64_t token_id, enum kh_who who)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv;

    memset(w, 0, sizeof *w);
    rv = kh_store_stmt(st, &s, who == KH_WHO_SO ? KH_ST_WRAP_GET_SO : KH_ST_WRAP_GET_USER);
    if (rv != CKR_OK)
        return rv;
    sqlite3_bind_int64(s, 1, token_id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        rv = CKR_SLOT_ID_INVALID;
        goto out;
    }
    if (rc != SQLITE_ROW) {
        rv = kh_store_rv(st, rc, "wrap_load");
        goto out;
    }
    rv = kh_col_fixed(w->token_uid, KH_UID_LEN, s, 0);
    if (rv != CKR_OK)
        goto out;
    w->fail = (uint32_t)sqlite3_column_int64(s, 6);
    if (sqlite3_column_type(s, 5) == SQLITE_NULL)
        goto out; /* no PIN of this kind */
    rv = kh_col_fixed(w->salt, KH_SALT_LEN, s, 1);
    if (rv != CKR_OK)
        goto out;
    w->kdf.log2_n = (uint32_t)sqlite3_column_int64(s, 2);
    w->kdf.r = (uint32_t)sqlite3_column_int64(s, 3);
    w->kdf.p = (uint32_t)sqlite3_column_int64(s, 4);
    rv = kh_col_dup(&w->blob, &w->blob_len, s, 5);
    if (rv == CKR_OK)
        rv = kh_col_dup(&w->tpm, &w->tpm_len, s, 7);
out:
    kh_store_done(s);
    if (rv != CKR_OK)
        kh_wrap_clear(w);
    return rv;
}

/* Labels of the two HKDF-SHA-256 derivations of a bound wrap. */
#define KH_INFO_TPM_AUTH "keyhold-tpm-auth-v1"
#define KH_INFO_PIN_KEK "keyhold-pin-kek-v1"

/* The auth value the binder's object gets: HKDF(KDF output, KH_INFO_TPM_AUTH). */
static CK_RV kh_bound_auth(uint8_t auth[32], const uint8_t kdf_out[32])
{
    return kh_hkdf_sha256(auth, 32, kdf_out, 32, KH_INFO_TPM_AUTH);
}

/* A bound wrap's key: HKDF(KDF output || the unsealed secret, KH_INFO_PIN_KEK). */
static CK_RV kh_bound_kek(uint8_t kek[32], const uint8_t kdf_out[32], const uint8_t secret[32])
{
    uint8_t ikm[64];
    memcpy(ikm, kdf_out, 32);
    memcpy(ikm + 32, secret, 32);
    CK_RV rv = kh_hkdf_sha256(kek, 32, ikm, sizeof ikm, KH_INFO_PIN_KEK);
    kh_wipe(ikm, sizeof ikm);
    return rv;
}

/*
 * Make a fresh wrap of key under pin for who: new salt, KDF, seal. With a
 * binder the wrap is bound: the binder seals a new secret under an auth value
 * derived from the PIN, and the wrap's key mixes that secret in. Runs the
 * KDF (and the binder), so never call it inside a transaction.
 */
static CK_RV kh_wrap_make(struct kh_wrap *w, const uint8_t key[KH_TOKEN_KEY_LEN],
                          const uint8_t token_uid[KH_UID_LEN], enum kh_who who,
                          const uint8_t *pin, size_t pin_len, const kh_kdf_params *kdf,
                          const kh_pin_binder *binder)
{
    uint8_t kek[32], aad[KH_PIN_AAD_LEN], auth[32], secret[32];
    CK_RV rv;

    memset(w, 0, sizeof *w);
    memcpy(w->token_uid, token_uid, KH_UID_LEN);
    if (kdf)
        w->kdf = *kdf;
    else
        kh_kdf_default(&w->kdf);
    rv = kh_random(w->salt, KH_SALT_LEN);
    if (rv != CKR_OK)
        return rv;
    rv = kh_kdf(kek, pin, pin_len, w->salt, KH_SALT_LEN, &w->kdf);
    if (rv != CKR_OK)
        goto out_wipe;
    if (binder) {
        rv = kh_bound_auth(auth, kek);
        if (rv == CKR_OK)
            rv = binder->seal(secret, &w->tpm, &w->tpm_len, auth);
        if (rv == CKR_OK)
            rv = kh_bound_kek(kek, kek, secret);
        if (rv != CKR_OK)
            goto out_wipe;
    }
    kh_pin_aad(aad, token_uid, who);
    rv = kh_seal(&w->blob, &w->blob_len, kek, aad, sizeof aad, key, KH_TOKEN_KEY_LEN);
out_wipe:
    kh_wipe(kek, sizeof kek);
    kh_wipe(auth, sizeof auth);
    kh_wipe(secret, sizeof secret);
    if (rv != CKR_OK)
        kh_wrap_clear(w);
    return rv;
}

/* Bind salt, kdf params and blob of w at positions first..first+4. */
static void kh_wrap_bind(sqlite3_stmt *s, int first, const struct kh_wrap *w)
{
    kh_bind_blob(s, first, w->salt, KH_SALT_LEN);
    sqlite3_bind_int64(s, first + 1, w->kdf.log2_n);
    sqlite3_bind_int64(s, first + 2, w->kdf.r);
    sqlite3_bind_int64(s, first + 3, w->kdf.p);
    kh_bind_blob(s, first + 4, w->blob, w->blob_len);
}

/* Failed attempt against wrap w: count it. Out: *locked. CKR_CANCEL when the
 * wrap changed underneath (caller retries). */
static CK_RV kh_pin_count_failure(kh_store *st, bool *locked, int64_t token_id,
                                  enum kh_who who, const struct kh_wrap *w)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv = kh_store_stmt(st, &s, who == KH_WHO_SO ? KH_ST_FAIL_INC_SO : KH_ST_FAIL_INC_USER);
    int64_t fail = -1;
    int rc;

    if (rv != CKR_OK)
        return rv;
    sqlite3_bind_int64(s, 1, token_id);
    kh_bind_blob(s, 2, w->blob, w->blob_len);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        fail = sqlite3_column_int64(s, 0);
    if (rc != SQLITE_DONE)
        rv = kh_store_rv(st, rc, "pin_fail");
    else if (fail < 0)
        rv = CKR_CANCEL;
    else
        *locked = fail >= KH_PIN_MAX_TRIES;
    kh_store_done(s);
    return rv;
}

/* Good attempt: reset the counter unless it locked meanwhile. CKR_CANCEL
 * when the row no longer matches (locked or rewrapped; caller re-reads). */
static CK_RV kh_pin_reset_failures(kh_store *st, int64_t token_id, enum kh_who who,
                                   const struct kh_wrap *w)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv = kh_store_stmt(st, &s,
                             who == KH_WHO_SO ? KH_ST_FAIL_RESET_SO : KH_ST_FAIL_RESET_USER);
    if (rv != CKR_OK)
        return rv;
    sqlite3_bind_int64(s, 1, token_id);
    kh_bind_blob(s, 2, w->blob, w->blob_len);
    sqlite3_bind_int(s, 3, KH_PIN_MAX_TRIES);
    int rc = sqlite3_step(s);
    if (rc != SQLITE_DONE)
        rv = kh_store_rv(st, rc, "pin_reset");
    else if (sqlite3_changes(st->db) == 0)
        rv = CKR_CANCEL;
    kh_store_done(s);
    return rv;
}

/*
 * The key of a bound wrap, in place of kek (the KDF output on entry): the
 * binder unseals its secret with the auth value derived from kek. A wrong
 * auth (counted by the TPM) comes back as CKR_ENCRYPTED_DATA_INVALID, a wrong
 * PIN like any other; the binder's other errors (CKR_PIN_LOCKED in the TPM's
 * lockout, CKR_FUNCTION_FAILED for another TPM, CKR_DEVICE_ERROR) pass
 * through and count nothing.
 */
static CK_RV kh_bound_open(kh_store *st, uint8_t kek[32], const uint8_t *blob, size_t blob_len)
{
    uint8_t auth[32], secret[32];
    CK_RV rv;
    if (!st->binder) {
        kh_log(KH_LOG_DEBUG, "store: token is bound to a TPM, but no TPM binder is available");
        return CKR_DEVICE_ERROR;
    }
    rv = kh_bound_auth(auth, kek);
    if (rv == CKR_OK)
        rv = st->binder->unseal(secret, blob, blob_len, auth);
    if (rv == CKR_PIN_INCORRECT)
        rv = CKR_ENCRYPTED_DATA_INVALID;
    if (rv == CKR_OK)
        rv = kh_bound_kek(kek, kek, secret);
    kh_wipe(auth, sizeof auth);
    kh_wipe(secret, sizeof secret);
    return rv;
}

/*
 * Check pin against token_id's wrap for who, counting failures. On success
 * key_out holds the token key and *wrap_out (if not NULL) the wrap that was
 * opened (for a later compare-and-swap). The KDF runs with no transaction
 * open; if the wrap changes meanwhile the check starts over.
 */
static CK_RV kh_pin_verify(kh_store *st, uint8_t key_out[KH_TOKEN_KEY_LEN],
                           struct kh_wrap *wrap_out, int64_t token_id, enum kh_who who,
                           const uint8_t *pin, size_t pin_len)
{
    for (int attempt = 0; attempt < KH_CAS_TRIES; attempt++) {
        struct kh_wrap w;
        uint8_t kek[32], aad[KH_PIN_AAD_LEN];
        uint8_t *pt = NULL;
        size_t pt_len = 0;
        bool locked = false;
        CK_RV rv = kh_wrap_load(st, &w, token_id, who);

        if (rv != CKR_OK)
            return rv;
        if (!w.blob) {
            kh_wrap_clear(&w);
            return CKR_USER_PIN_NOT_INITIALIZED;
        }
        if (w.fail >= KH_PIN_MAX_TRIES) {
            kh_wrap_clear(&w);
            return CKR_PIN_LOCKED;
        }
        rv = CKR_ENCRYPTED_DATA_INVALID; /* an impossible length is a wrong PIN */
        if (pin && kh_pin_len_ok(pin_len)) {
            rv = kh_kdf(kek, pin, pin_len, w.salt, KH_SALT_LEN, &w.kdf);
            if (rv == CKR_ARGUMENTS_BAD)
                rv = CKR_KH_STORE_ERROR; /* KDF params in the row are out of bounds */
            if (rv == CKR_OK && w.tpm)
                rv = kh_bound_open(st, kek, w.tpm, w.tpm_len);
            if (rv == CKR_OK) {
                kh_pin_aad(aad, w.token_uid, who);
                rv = kh_unseal(&pt, &pt_len, kek, aad, sizeof aad, w.blob, w.blob_len);
            }
            kh_wipe(kek, sizeof kek);
        }
        if (rv == CKR_OK) {
            if (pt_len == KH_TOKEN_KEY_LEN)
                memcpy(key_out, pt, KH_TOKEN_KEY_LEN);
            else
                rv = CKR_KH_STORE_ERROR;
            kh_wipe(pt, pt_len);
            free(pt);
            if (rv == CKR_OK)
                rv = kh_pin_reset_failures(st, token_id, who, &w);
            if (rv != CKR_OK)
                kh_wipe(key_out, KH_TOKEN_KEY_LEN);
        } else if (rv == CKR_ENCRYPTED_DATA_INVALID) {
            rv = kh_pin_count_failure(st, &locked, token_id, who, &w);
            if (rv == CKR_OK)
                rv = locked ? CKR_PIN_LOCKED : CKR_PIN_INCORRECT;
        }
        if (rv == CKR_CANCEL) {
            kh_wrap_clear(&w);
            continue;
        }
        if (rv == CKR_OK && wrap_out)
            *wrap_out = w;
        else
            kh_wrap_clear(&w);
        return rv;
    }
    return CKR_DEVICE_ERROR;
}

CK_RV kh_store_login(kh_store *st, uint8_t key_out[KH_TOKEN_KEY_LEN], int64_t token_id,
                     CK_USER_TYPE user_type, const uint8_t *pin, size_t pin_len)
{
    if (!st || !key_out)
        return CKR_ARGUMENTS_BAD;
    if (user_type != CKU_SO && user_type != CKU_USER)
        return CKR_USER_TYPE_INVALID;
    return kh_pin_verify(st, key_out, NULL, token_id, kh_who_of(user_type), pin, pin_len);
}

/*
 * Install w as who's wrap on token_id, if the token still has uid w->token_uid
 * and (old != NULL) the current wrap is still old. CKR_CANCEL otherwise.
 */
static CK_RV kh_wrap_store(kh_store *st, int64_t token_id, enum kh_who who,
                           const struct kh_wrap *w, const struct kh_wrap *old)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv = kh_store_stmt(st, &s, who == KH_WHO_SO ? KH_ST_WRAP_SET_SO : KH_ST_WRAP_SET_USER);
    if (rv != CKR_OK)
        return rv;
    sqlite3_bind_int64(s, 1, token_id);
    kh_wrap_bind(s, 2, w);
    kh_bind_blob(s, 7, w->token_uid, KH_UID_LEN);
    if (old)
        kh_bind_blob(s, 8, old->blob, old->blob_len);
    kh_bind_blob(s, 9, w->tpm, w->tpm_len);
    int rc = sqlite3_step(s);
    if (rc != SQLITE_DONE)
        rv = kh_store_rv(st, rc, "wrap_store");
    else if (sqlite3_changes(st->db) == 0)
        rv = CKR_CANCEL;
    kh_store_done(s);
    return rv;
}

/*
 * Check that key is token_id's current token key (its key check value opens
 * under it). Out: token_uid, the uid the check was made against.
 * CKR_USER_NOT_LOGGED_IN when it is not: the token was re-initialised since
 * the caller logged in, so the caller's login is void.
 */
static CK_RV kh_token_key_check(kh_store *st, uint8_t token_uid[KH_UID_LEN], bool *bound,
                                int64_t token_id, const uint8_t key[KH_TOKEN_KEY_LEN])
{
    uint8_t aad[KH_KCV_AAD_LEN];
    uint8_t *kcv = NULL, *pt = NULL;
    size_t kcv_len = 0, pt_len = 0;
    sqlite3_stmt *s = NULL;
    CK_RV rv = kh_store_stmt(st, &s, KH_ST_TOKEN_KEY_CHECK);
    if (rv != CKR_OK)
        return rv;
    sqlite3_bind_int64(s, 1, token_id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        rv = kh_col_fixed(token_uid, KH_UID_LEN, s, 0);
        if (rv == CKR_OK)
            rv = kh_col_dup(&kcv, &kcv_len, s, 1);
        *bound = sqlite3_column_int(s, 2) != 0;
    } else {
        rv = rc == SQLITE_DONE ? CKR_SLOT_ID_INVALID : kh_store_rv(st, rc, "key_check");
    }
    kh_store_done(s);
    if (rv != CKR_OK)
        goto out;
    if (!kcv) {
        rv = CKR_KH_STORE_ERROR;
        goto out;
    }
    kh_kcv_aad(aad, token_uid);
    rv = kh_unseal(&pt, &pt_len, key, aad, sizeof aad, kcv, kcv_len);
    if (rv == CKR_ENCRYPTED_DATA_INVALID)
        rv = CKR_USER_NOT_LOGGED_IN;
    free(pt);
out:
    free(kcv);
    return rv;
}

CK_RV kh_store_init_pin(kh_store *st, int64_t token_id, const uint8_t token_key[KH_TOKEN_KEY_LEN],
                        const uint8_t *pin, size_t pin_len, const kh_kdf_params *kdf)
{
    uint8_t uid[KH_UID_LEN];
    struct kh_wrap w;
    bool bound = false;
    CK_RV rv;

    if (!st || !token_key || (!pin && pin_len))
        return CKR_ARGUMENTS_BAD;
    if (!kh_pin_len_ok(pin_len))
        return CKR_PIN_LEN_RANGE;
    rv = kh_token_key_check(st, uid, &bound, token_id, token_key);
    if (rv != CKR_OK)
        return rv;
    if (bound && !st->binder)
        return CKR_DEVICE_ERROR;
    /* the user's wrap is bound like the token (its SO wrap) */
    rv = kh_wrap_make(&w, token_key, uid, KH_WHO_USER, pin, pin_len, kdf, bound ? st->binder : NULL);
    /* The uid guard catches a re-init that lands while the KDF runs. */
    if (rv == CKR_OK)
        rv = kh_wrap_store(st, token_id, KH_WHO_USER, &w, NULL);
    if (rv == CKR_CANCEL)
        rv = CKR_USER_NOT_LOGGED_IN;
    kh_wrap_clear(&w);
    return rv;
}

CK_RV kh_store_set_pin(kh_store *st, int64_t token_id, CK_USER_TYPE user_type,
                       const uint8_t *old_pin, size_t old_len,
                       const uint8_t *new_pin, size_t new_len, const kh_kdf_params *kdf)
{
    if (!st || (!new_pin && new_len))
        return CKR_ARGUMENTS_BAD;
    if (user_type != CKU_SO && user_type != CKU_USER)
        return CKR_USER_TYPE_INVALID;
    if (!kh_pin_len_ok(new_len))
        return CKR_PIN_LEN_RANGE;
    enum kh_who who = kh_who_of(user_type);

    for (int attempt = 0; attempt < KH_CAS_TRIES; attempt++) {
        uint8_t key[KH_TOKEN_KEY_LEN];
        struct kh_wrap old, w;
        CK_RV rv = kh_pin_verify(st, key, &old, token_id, who, old_pin, old_len);
        if (rv != CKR_OK)
            return rv;
        rv = kh_wrap_make(&w, key, old.token_uid, who, new_pin, new_len, kdf, old.tpm ? st->binder : NULL);
        kh_wipe(key, sizeof key);
        if (rv == CKR_OK)
            rv = kh_wrap_store(st, token_id, who, &w, &old);
        kh_wrap_clear(&w);
        kh_wrap_clear(&old);
        if (rv != CKR_CANCEL)
            return rv;
    }
    return CKR_DEVICE_ERROR;
}

/* Trim a blank-padded PKCS#11 label (also at a NUL). */
static size_t kh_label_trim(const char *label, size_t len)
{
    size_t n = 0;
    while (n < len && label[n] != '\0')
        n++;
    while (n > 0 && label[n - 1] == ' ')
        n--;
    return n;
}

/* Replace existing token id: objects deleted, user PIN cleared, new uid and
 * key, all in one transaction, provided the SO wrap is still old. */
static CK_RV kh_token_reinit(kh_store *st, int64_t id, const char *label, size_t label_len,
                             const struct kh_wrap *w, const uint8_t *kcv, size_t kcv_len,
                             const struct kh_wrap *old)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv = kh_store_begin(st);
    int rc;

    if (rv != CKR_OK)
        return rv;
    rv = kh_store_stmt(st, &s, KH_ST_OBJ_DELETE_TOKEN);
    if (rv != CKR_OK)
        goto out_rollback;
    sqlite3_bind_int64(s, 1, id);
    rc = sqlite3_step(s);
    kh_store_done(s);
    if (rc != SQLITE_DONE) {
        rv = kh_store_rv(st, rc, "reinit_delete");
        goto out_rollback;
    }
    rv = kh_store_stmt(st, &s, KH_ST_TOKEN_REINIT);
    if (rv != CKR_OK)
        goto out_rollback;
    sqlite3_bind_int64(s, 1, id);
    kh_bind_text(s, 2, label, label_len);
    kh_bind_blob(s, 3, w->token_uid, KH_UID_LEN);
    kh_wrap_bind(s, 4, w);
    kh_bind_blob(s, 9, old->blob, old->blob_len);
    kh_bind_blob(s, 10, kcv, kcv_len);
    kh_bind_blob(s, 11, w->tpm, w->tpm_len);
    rc = sqlite3_step(s);
    kh_store_done(s);
    if (rc != SQLITE_DONE) {
        rv = kh_store_rv(st, rc, "reinit");
        goto out_rollback;
    }
    if (sqlite3_changes(st->db) == 0) {
        rv = CKR_CANCEL; /* SO PIN changed meanwhile */
        goto out_rollback;
    }
    return kh_store_commit(st);

out_rollback:
    kh_store_rollback(st);
    return rv;
}

/* Insert a new token (id 0: next free id). CKR_CANCEL if id was taken. */
static CK_RV kh_token_insert(kh_store *st, int64_t *out_id, int64_t id, const char *label,
                             size_t label_len, const struct kh_wrap *w, const uint8_t *kcv,
                             size_t kcv_len)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv = kh_store_stmt(st, &s, KH_ST_TOKEN_INSERT);
    if (rv != CKR_OK)
        return rv;
    if (id)
        sqlite3_bind_int64(s, 1, id);
    else
        sqlite3_bind_null(s, 1);
    kh_bind_text(s, 2, label, label_len);
    kh_bind_blob(s, 3, w->token_uid, KH_UID_LEN);
    kh_wrap_bind(s, 4, w);
    kh_bind_blob(s, 9, kcv, kcv_len);
    sqlite3_bind_int64(s, 10, (sqlite3_int64)CKV_KH_BACKEND_VAULT);
    sqlite3_bind_int64(s, 11, (sqlite3_int64)time(NULL));
    kh_bind_blob(s, 12, w->tpm, w->tpm_len);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE)
        *out_id = sqlite3_last_insert_rowid(st->db);
    else if (rc == SQLITE_CONSTRAINT_PRIMARYKEY && id)
        rv = CKR_CANCEL;
    else
        rv = kh_store_rv(st, rc, "token_insert");
    kh_store_done(s);
    return rv;
}

CK_RV kh_store_token_init(kh_store *st, int64_t *out_id, int64_t id,
                          const uint8_t *so_pin, size_t so_pin_len,
                          const char *label, size_t label_len,
                          const kh_kdf_params *kdf)
{
    if (!st || !out_id || (!so_pin && so_pin_len) || (!label && label_len))
        return CKR_ARGUMENTS_BAD;
    *out_id = 0;
    if (id < 0)
        return CKR_SLOT_ID_INVALID;
    if (!kh_pin_len_ok(so_pin_len))
        return CKR_PIN_LEN_RANGE;
    label_len = label ? kh_label_trim(label, label_len) : 0;
    if (label_len > KH_LABEL_MAX)
        return CKR_ARGUMENTS_BAD;

    for (int attempt = 0; attempt < KH_CAS_TRIES; attempt++) {
        uint8_t key[KH_TOKEN_KEY_LEN], uid[KH_UID_LEN], aad[KH_KCV_AAD_LEN];
        uint8_t *kcv = NULL;
        size_t kcv_len = 0;
        struct kh_wrap old = { 0 }, w = { 0 };
        bool exists = false;
        CK_RV rv = CKR_OK;

        if (id) {
            rv = kh_pin_verify(st, key, &old, id, KH_WHO_SO, so_pin, so_pin_len);
            kh_wipe(key, sizeof key);
            exists = rv != CKR_SLOT_ID_INVALID;
            if (rv == CKR_SLOT_ID_INVALID)
                rv = CKR_OK;
            if (rv != CKR_OK)
                return rv;
        }
        rv = kh_random(key, sizeof key);
        if (rv == CKR_OK)
            rv = kh_random(uid, sizeof uid);
        if (rv == CKR_OK)
            rv = kh_wrap_make(&w, key, uid, KH_WHO_SO, so_pin, so_pin_len, kdf,
                              st->bind_new ? st->binder : NULL);
        if (rv == CKR_OK) {
            kh_kcv_aad(aad, uid);
            rv = kh_seal(&kcv, &kcv_len, key, aad, sizeof aad, NULL, 0);
        }
        kh_wipe(key, sizeof key);
        if (rv == CKR_OK) {
            if (exists)
                rv = kh_token_reinit(st, id, label ? label : "", label_len, &w, kcv, kcv_len,
                                     &old);
            else
                rv = kh_token_insert(st, out_id, id, label ? label : "", label_len, &w, kcv,
                                     kcv_len);
        }
        if (rv == CKR_OK && exists)
            *out_id = id;
        free(kcv);
        kh_wrap_clear(&w);
        kh_wrap_clear(&old);
        if (rv != CKR_CANCEL)
            return rv;
    }
    return CKR_DEVICE_ERROR;
}

/* ---- objects ---- */

/* The indexed columns of an object, derived from its attributes. */
struct kh_obj_cols {
    bool has_class, has_key_type, has_backend;
    CK_ULONG cls, key_type, backend;
    const void *ckid;    /* NULL: no CKA_ID */
    size_t ckid_len;
    const char *label;   /* NULL: no CKA_LABEL */
    size_t label_len;
    const char *ref;     /* NULL: no CKA_KH_REMOTE_REF */
    size_t ref_len;
    int priv;
};

static CK_RV kh_attr_ulong(CK_ULONG *out, const CK_ATTRIBUTE *a)
{
    if (a->ulValueLen != sizeof(CK_ULONG) || !a->pValue)
        return CKR_ATTRIBUTE_VALUE_INVALID;
    memcpy(out, a->pValue, sizeof *out);
    return CKR_OK;
}

/*
 * Derive the index columns. Absent CKA_PRIVATE defaults to TRUE for private
 * and secret keys and FALSE otherwise (fail closed; the module normally sets
 * it explicitly).
 */
static CK_RV kh_obj_cols_derive(struct kh_obj_cols *c, const CK_ATTRIBUTE *attrs, size_t n)
{
    int priv = -1;
    CK_RV rv = CKR_OK;

    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < n && rv == CKR_OK; i++) {
        const CK_ATTRIBUTE *a = &attrs[i];
        if (a->ulValueLen == CK_UNAVAILABLE_INFORMATION)
            continue;
        if (!a->pValue && a->ulValueLen)
            return CKR_ATTRIBUTE_VALUE_INVALID;
        switch (a->type) {
        case CKA_CLASS:
            rv = kh_attr_ulong(&c->cls, a);
            c->has_class = true;
            break;
        case CKA_KEY_TYPE:
            rv = kh_attr_ulong(&c->key_type, a);
            c->has_key_type = true;
            break;
        case CKA_KH_BACKEND:
            rv = kh_attr_ulong(&c->backend, a);
            c->has_backend = true;
            break;
        case CKA_PRIVATE:
            if (a->ulValueLen != sizeof(CK_BBOOL))
                return CKR_ATTRIBUTE_VALUE_INVALID;
            priv = *(const CK_BBOOL *)a->pValue != CK_FALSE;
            break;
        case CKA_ID:
            c->ckid = a->ulValueLen ? a->pValue : "";
            c->ckid_len = a->ulValueLen;
            break;
        case CKA_LABEL:
            c->label = a->ulValueLen ? a->pValue : "";
            c->label_len = a->ulValueLen;
            break;
        case CKA_KH_REMOTE_REF:
            c->ref = a->ulValueLen ? a->pValue : "";
            c->ref_len = a->ulValueLen;
            break;
        default:
            break;
        }
    }
    if (rv != CKR_OK)
        return rv;
    if (priv < 0)
        priv = c->has_class && (c->cls == CKO_PRIVATE_KEY || c->cls == CKO_SECRET_KEY);
    c->priv = priv;
    return CKR_OK;
}

/* Bind class..remote_ref at positions first..first+6. */
static void kh_obj_cols_bind(sqlite3_stmt *s, int first, const struct kh_obj_cols *c)
{
    if (c->has_class)
        sqlite3_bind_int64(s, first, (sqlite3_int64)c->cls);
    if (c->has_key_type)
        sqlite3_bind_int64(s, first + 1, (sqlite3_int64)c->key_type);
    kh_bind_blob(s, first + 2, c->ckid, c->ckid_len);
    kh_bind_text(s, first + 3, c->label, c->label_len);
    sqlite3_bind_int(s, first + 4, c->priv);
    if (c->has_backend)
        sqlite3_bind_int64(s, first + 5, (sqlite3_int64)c->backend);
    kh_bind_text(s, first + 6, c->ref, c->ref_len);
}

/* Insert one row; no transaction handling. */
static CK_RV kh_obj_insert_one(kh_store *st, int64_t *out_id, const kh_obj_rec *rec)
{
    struct kh_obj_cols c;
    sqlite3_stmt *s = NULL;
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    CK_RV rv;
    int rc;

    if (!rec || (!rec->attrs && rec->nattrs) || (!rec->sealed && rec->sealed_len))
        return CKR_ARGUMENTS_BAD;
    rv = kh_obj_cols_derive(&c, rec->attrs, rec->nattrs);
    if (rv != CKR_OK)
        return rv;
    rv = kh_attrs_encode(&blob, &blob_len, rec->attrs, rec->nattrs);
    if (rv != CKR_OK)
        return rv;
    rv = kh_store_stmt(st, &s, KH_ST_OBJ_INSERT);
    if (rv != CKR_OK)
        goto out_free;
    sqlite3_bind_int64(s, 1, rec->token_id);
    kh_bind_blob(s, 2, rec->uid, KH_UID_LEN);
    kh_obj_cols_bind(s, 3, &c);
    kh_bind_blob(s, 10, blob, blob_len);
    kh_bind_blob(s, 11, rec->sealed, rec->sealed_len);
    rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        if (out_id)
            *out_id = sqlite3_last_insert_rowid(st->db);
    } else if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) {
        rv = CKR_SLOT_ID_INVALID;
    } else {
        rv = kh_store_rv(st, rc, "obj_insert");
    }
    kh_store_done(s);
out_free:
    free(blob);
    return rv;
}

CK_RV kh_store_obj_insert(kh_store *st, int64_t *out_id, const kh_obj_rec *rec)
{
    if (!st || !out_id)
        return CKR_ARGUMENTS_BAD;
    *out_id = 0;
    return kh_obj_insert_one(st, out_id, rec);
}

/* Both inserts: n records, and the audit row when event is not NULL. */
static CK_RV kh_obj_insert_tx(kh_store *st, int64_t *out_ids, const kh_obj_rec *recs, size_t n,
                              int64_t token_id, const char *event, const char *detail_tail)
{
    CK_RV rv;
    size_t i;
    int64_t last = 0;

    if (!st || (!recs && n))
        return CKR_ARGUMENTS_BAD;
    if (n == 0)
        return CKR_OK;
    rv = kh_store_begin(st);
    if (rv != CKR_OK)
        return rv;
    for (i = 0; i < n; i++) {
        rv = kh_obj_insert_one(st, &last, &recs[i]);
        if (rv != CKR_OK)
            goto out_rollback;
        if (out_ids)
            out_ids[i] = last;
    }
    if (event) {
        char detail[160];
        int len = snprintf(detail, sizeof detail, "handle=%lld%s%s", (long long)last,
                           detail_tail ? " " : "", detail_tail ? detail_tail : "");
        if (len < 0 || (size_t)len >= sizeof detail) {
            rv = CKR_ARGUMENTS_BAD;
            goto out_rollback;
        }
        rv = kh_store_audit(st, token_id, event, detail);
        if (rv != CKR_OK)
            goto out_rollback;
    }
    rv = kh_store_commit(st);
    if (rv != CKR_OK)
        goto out_clear;
    return CKR_OK;

out_rollback:
    kh_store_rollback(st);
out_clear:
    if (out_ids)
        memset(out_ids, 0, n * sizeof *out_ids);
    return rv;
}

CK_RV kh_store_obj_insert_many(kh_store *st, int64_t *out_ids, const kh_obj_rec *recs, size_t n)
{
    return kh_obj_insert_tx(st, out_ids, recs, n, 0, NULL, NULL);
}

CK_RV kh_store_obj_insert_audited(kh_store *st, int64_t *out_ids, const kh_obj_rec *recs, size_t n,
                                  int64_t token_id, const char *event, const char *detail_tail)
{
    if (!event)
        return CKR_ARGUMENTS_BAD;
    return kh_obj_insert_tx(st, out_ids, recs, n, token_id, event, detail_tail);
}

CK_RV kh_store_obj_get(kh_store *st, kh_obj_rec *out, int64_t id)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv;

    if (!st || !out)
        return CKR_ARGUMENTS_BAD;
    memset(out, 0, sizeof *out);
    rv = kh_store_stmt(st, &s, KH_ST_OBJ_GET);
    if (rv != CKR_OK)
        return rv;
    sqlite3_bind_int64(s, 1, id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        rv = CKR_OBJECT_HANDLE_INVALID;
        goto out;
    }
    if (rc != SQLITE_ROW) {
        rv = kh_store_rv(st, rc, "obj_get");
        goto out;
    }
    out->id = id;
    out->token_id = sqlite3_column_int64(s, 0);
    rv = kh_col_fixed(out->uid, KH_UID_LEN, s, 1);
    if (rv != CKR_OK)
        goto out;
    {
        const uint8_t *blob = sqlite3_column_blob(s, 2);
        size_t len = (size_t)sqlite3_column_bytes(s, 2);
        rv = kh_attrs_decode(&out->attrs, &out->nattrs, blob, len);
        if (rv != CKR_OK)
            goto out;
    }
    rv = kh_col_dup(&out->sealed, &out->sealed_len, s, 3);
out:
    kh_store_done(s);
    if (rv != CKR_OK)
        kh_obj_rec_clear(out);
    return rv;
}

CK_RV kh_store_obj_update(kh_store *st, int64_t id, const CK_ATTRIBUTE *attrs, size_t nattrs)
{
    struct kh_obj_cols c;
    sqlite3_stmt *s = NULL;
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    CK_RV rv;
    int rc;

    if (!st || (!attrs && nattrs))
        return CKR_ARGUMENTS_BAD;
    rv = kh_obj_cols_derive(&c, attrs, nattrs);
    if (rv != CKR_OK)
        return rv;
    rv = kh_attrs_encode(&blob, &blob_len, attrs, nattrs);
    if (rv != CKR_OK)
        return rv;
    rv = kh_store_stmt(st, &s, KH_ST_OBJ_UPDATE);
    if (rv != CKR_OK)
        goto out_free;
    sqlite3_bind_int64(s, 1, id);
    kh_obj_cols_bind(s, 2, &c);
    kh_bind_blob(s, 9, blob, blob_len);
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE)
        rv = kh_store_rv(st, rc, "obj_update");
    else if (sqlite3_changes(st->db) == 0)
        rv = CKR_OBJECT_HANDLE_INVALID;
    kh_store_done(s);
out_free:
    free(blob);
    return rv;
}

CK_RV kh_store_obj_delete(kh_store *st, int64_t id)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv;

    if (!st)
        return CKR_ARGUMENTS_BAD;
    rv = kh_store_stmt(st, &s, KH_ST_OBJ_DELETE);
    if (rv != CKR_OK)
        return rv;
    sqlite3_bind_int64(s, 1, id);
    int rc = sqlite3_step(s);
    if (rc != SQLITE_DONE)
        rv = kh_store_rv(st, rc, "obj_delete");
    else if (sqlite3_changes(st->db) == 0)
        rv = CKR_OBJECT_HANDLE_INVALID;
    kh_store_done(s);
    return rv;
}

/*
 * The statement for one find shape, built and cached on first use.
 * Parameters: ?1 token, ?2 class, ?3 key type, ?4 CKA_ID, ?5 label.
 * When CKA_ID or the label is asked for, class and key type are written
 * "+class" so the planner takes the (far more selective) id/label index
 * instead of (token_id, class, key_type); likewise label defers to CKA_ID.
 * Without a token, "token_id IN (SELECT id FROM tokens)" still lets every
 * index be used, one probe per token.
 */
static CK_RV kh_find_stmt(kh_store *st, sqlite3_stmt **out, unsigned shape)
{
    char sql[512];
    bool narrow = shape & (KH_FIND_CKID | KH_FIND_LABEL);
    const char *plus = narrow ? "+" : "";

    if (st->find[shape]) {
        *out = st->find[shape];
        return CKR_OK;
    }
    snprintf(sql, sizeof sql, "SELECT id FROM objects WHERE %s%s%s%s%s%s%s%s%s%s ORDER BY id",
             shape & KH_FIND_TOKEN ? "token_id = ?1" : "token_id IN (SELECT id FROM tokens)",
             shape & KH_FIND_CLASS ? " AND " : "", shape & KH_FIND_CLASS ? plus : "",
             shape & KH_FIND_CLASS ? "class = ?2" : "",
             shape & KH_FIND_KTYPE ? " AND " : "", shape & KH_FIND_KTYPE ? plus : "",
             shape & KH_FIND_KTYPE ? "key_type = ?3" : "",
             shape & KH_FIND_CKID ? " AND ckid = ?4" : "",
             shape & KH_FIND_LABEL ? (shape & KH_FIND_CKID ? " AND +label = ?5"
                                                           : " AND label = ?5") : "",
             shape & KH_FIND_PUBLIC ? " AND private = 0" : "");
    int rc = sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st->find[shape],
                                NULL);
    if (rc != SQLITE_OK)
        return kh_store_rv(st, rc, "prepare_find");
    *out = st->find[shape];
    return CKR_OK;
}

CK_RV kh_store_obj_find(kh_store *st, int64_t **ids, size_t *n, const kh_find_query *q)
{
    sqlite3_stmt *s = NULL;
    int64_t *out = NULL;
    size_t count = 0, cap = 0;
    unsigned shape = 0;
    CK_RV rv;
    int rc;

    if (!st || !ids || !n || !q)
        return CKR_ARGUMENTS_BAD;
    *ids = NULL;
    *n = 0;
    if ((q->has_id && !q->ckid && q->ckid_len) || (q->has_label && !q->label && q->label_len))
        return CKR_ARGUMENTS_BAD;
    if (q->token_id != 0)
        shape |= KH_FIND_TOKEN;
    if (q->has_class)
        shape |= KH_FIND_CLASS;
    if (q->has_key_type)
        shape |= KH_FIND_KTYPE;
    if (q->has_id)
        shape |= KH_FIND_CKID;
    if (q->has_label)
        shape |= KH_FIND_LABEL;
    if (!q->include_private)
        shape |= KH_FIND_PUBLIC;
    rv = kh_find_stmt(st, &s, shape);
    if (rv != CKR_OK)
        return rv;
    if (shape & KH_FIND_TOKEN)
        sqlite3_bind_int64(s, 1, q->token_id);
    if (shape & KH_FIND_CLASS)
        sqlite3_bind_int64(s, 2, (sqlite3_int64)q->cls);
    if (shape & KH_FIND_KTYPE)
        sqlite3_bind_int64(s, 3, (sqlite3_int64)q->key_type);
    if (shape & KH_FIND_CKID)
        kh_bind_blob(s, 4, q->ckid ? (const void *)q->ckid : "", q->ckid_len);
    if (shape & KH_FIND_LABEL)
        kh_bind_text(s, 5, q->label ? q->label : "", q->label_len);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (count == cap) {
            size_t ncap = cap ? 2 * cap : 16;
            int64_t *p = realloc(out, ncap * sizeof *out);
            if (!p) {
                rv = CKR_HOST_MEMORY;
                goto out_free;
            }
            out = p;
            cap = ncap;
        }
        out[count++] = sqlite3_column_int64(s, 0);
    }
    if (rc != SQLITE_DONE) {
        rv = kh_store_rv(st, rc, "obj_find");
        goto out_free;
    }
    kh_store_done(s);
    if (!out) {
        out = malloc(sizeof *out);
        if (!out)
            return CKR_HOST_MEMORY;
    }
    *ids = out;
    *n = count;
    return CKR_OK;

out_free:
    kh_store_done(s);
    free(out);
    return rv;
}

CK_RV kh_store_obj_count(kh_store *st, int64_t token_id, size_t *n)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv;

    if (!st || !n)
        return CKR_ARGUMENTS_BAD;
    *n = 0;
    rv = kh_store_stmt(st, &s, KH_ST_OBJ_COUNT);
    if (rv != CKR_OK)
        return rv;
    sqlite3_bind_int64(s, 1, token_id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        *n = (size_t)sqlite3_column_int64(s, 0);
    else
        rv = kh_store_rv(st, rc, "obj_count");
    kh_store_done(s);
    return rv;
}

void kh_obj_rec_clear(kh_obj_rec *rec)
{
    if (!rec)
        return;
    kh_attrs_free(rec->attrs, rec->nattrs);
    free(rec->sealed);
    memset(rec, 0, sizeof *rec);
}

const CK_ATTRIBUTE *kh_obj_rec_attr(const kh_obj_rec *rec, CK_ATTRIBUTE_TYPE type)
{
    if (!rec)
        return NULL;
    for (size_t i = 0; i < rec->nattrs; i++) {
        if (rec->attrs[i].type == type)
            return &rec->attrs[i];
    }
    return NULL;
}

/* ---- audit ---- */

CK_RV kh_store_audit(kh_store *st, int64_t token_id, const char *event, const char *detail)
{
    sqlite3_stmt *s = NULL;
    CK_RV rv;

    if (!st || !event)
        return CKR_ARGUMENTS_BAD;
    rv = kh_store_stmt(st, &s, KH_ST_AUDIT);
    if (rv != CKR_OK)
        return rv;
    sqlite3_bind_int64(s, 1, (sqlite3_int64)time(NULL));
    if (token_id)
        sqlite3_bind_int64(s, 2, token_id);
    kh_bind_text(s, 3, event, strlen(event));
    if (detail)
        kh_bind_text(s, 4, detail, strlen(detail));
    int rc = sqlite3_step(s);
    if (rc != SQLITE_DONE)
        rv = kh_store_rv(st, rc, "audit");
    kh_store_done(s);
    return rv;
}

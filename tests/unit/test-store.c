/* Tests of the token store (tokenstore/). Run with KEYHOLD_KDF_LOG2N=10. */
#include "store.h"
#include "testutil.h"

#include <dirent.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const uint8_t so_pin[] = "so-pin-1234";
static const uint8_t user_pin[] = "user-pin-5678";
#define SO_PIN so_pin, sizeof so_pin - 1
#define USER_PIN user_pin, sizeof user_pin - 1

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Open a store in a fresh directory. */
static kh_store *open_fresh(const char **dir_out)
{
    kh_store *st = NULL;
    const char *dir = kh_test_tmpdir();
    KH_CHECK_RV(kh_store_open(&st, dir), CKR_OK);
    if (dir_out)
        *dir_out = dir;
    return st;
}

/* A store with one token (SO PIN set, user PIN set). */
static kh_store *open_with_token(int64_t *tok, uint8_t key[KH_TOKEN_KEY_LEN])
{
    kh_store *st = open_fresh(NULL);
    uint8_t k[KH_TOKEN_KEY_LEN];
    KH_CHECK_RV(kh_store_token_init(st, tok, 0, SO_PIN, "test", 4, NULL), CKR_OK);
    KH_CHECK_RV(kh_store_login(st, k, *tok, CKU_SO, SO_PIN), CKR_OK);
    KH_CHECK_RV(kh_store_init_pin(st, *tok, k, USER_PIN, NULL), CKR_OK);
    if (key)
        memcpy(key, k, sizeof k);
    return st;
}

static int64_t db_int(const char *dir, const char *sql)
{
    char path[4200];
    sqlite3 *db;
    sqlite3_stmt *s;
    int64_t v = -1;
    snprintf(path, sizeof path, "%s/keyhold.db", dir);
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        return -1;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK) {
        if (sqlite3_step(s) == SQLITE_ROW)
            v = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
    }
    sqlite3_close(db);
    return v;
}

/* ---- attribute templates ---- */

typedef struct obj_spec {
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE kt;
    CK_BBOOL priv;
    CK_ULONG backend;
    char ckid[16];
    char label[40];
    char ref[40];
    CK_ATTRIBUTE attrs[8];
} obj_spec;

static void spec_fill(obj_spec *o, CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, bool priv,
                      const char *ckid, const char *label)
{
    memset(o, 0, sizeof *o);
    o->cls = cls;
    o->kt = kt;
    o->priv = priv ? CK_TRUE : CK_FALSE;
    o->backend = CKV_KH_BACKEND_VAULT;
    snprintf(o->ckid, sizeof o->ckid, "%s", ckid);
    snprintf(o->label, sizeof o->label, "%s", label);
    snprintf(o->ref, sizeof o->ref, "ref-%s", label);
    CK_ATTRIBUTE a[8] = {
        { CKA_CLASS, &o->cls, sizeof o->cls },
        { CKA_KEY_TYPE, &o->kt, sizeof o->kt },
        { CKA_PRIVATE, &o->priv, sizeof o->priv },
        { CKA_ID, o->ckid, strlen(o->ckid) },
        { CKA_LABEL, o->label, strlen(o->label) },
        { CKA_KH_BACKEND, &o->backend, sizeof o->backend },
        { CKA_KH_REMOTE_REF, o->ref, strlen(o->ref) },
        { CKA_SIGN, NULL, CK_UNAVAILABLE_INFORMATION }, /* never stored */
    };
    memcpy(o->attrs, a, sizeof a);
}

static int64_t insert_obj(kh_store *st, int64_t tok, obj_spec *o, const uint8_t *sealed,
                          size_t sealed_len)
{
    kh_obj_rec rec = { 0 };
    int64_t id = 0;
    rec.token_id = tok;
    KH_CHECK_RV(kh_random(rec.uid, KH_UID_LEN), CKR_OK);
    rec.attrs = o->attrs;
    rec.nattrs = 8;
    rec.sealed = (uint8_t *)sealed;
    rec.sealed_len = sealed_len;
    KH_CHECK_RV(kh_store_obj_insert(st, &id, &rec), CKR_OK);
    KH_CHECK(id > 0);
    return id;
}

static size_t find_n(kh_store *st, const kh_find_query *q, int64_t **ids_out)
{
    int64_t *ids = NULL;
    size_t n = 99;
    KH_CHECK_RV(kh_store_obj_find(st, &ids, &n, q), CKR_OK);
    KH_CHECK(ids != NULL);
    for (size_t i = 1; i < n; i++)
        KH_CHECK(ids[i - 1] < ids[i]);
    if (ids_out)
        *ids_out = ids;
    else
        free(ids);
    return n;
}

/* ---- open ---- */

static void test_open_modes(void)
{
    char dir[4200];
    struct stat sb;
    kh_store *st = NULL;
    mode_t old = umask(0277); /* hostile umask: the store must still be 0700/0600 */

    snprintf(dir, sizeof dir, "%s/a/b/store", kh_test_tmpdir());
    KH_CHECK_RV(kh_store_open(&st, dir), CKR_OK);
    int64_t tok = 0;
    KH_CHECK_RV(kh_store_token_init(st, &tok, 0, SO_PIN, "persist", 7, NULL), CKR_OK);
    umask(old);
    KH_CHECK(stat(dir, &sb) == 0 && (sb.st_mode & 07777) == 0700);
    char db[4300];
    snprintf(db, sizeof db, "%s/keyhold.db", dir);
    KH_CHECK(stat(db, &sb) == 0 && (sb.st_mode & 07777) == 0600);
    snprintf(db, sizeof db, "%s/keyhold.db-wal", dir); /* SQLite copies the db's mode */
    KH_CHECK(stat(db, &sb) == 0 && (sb.st_mode & 07777) == 0600);
    KH_CHECK(db_int(dir, "PRAGMA user_version") == 2);
    /* nothing but the database and SQLite's WAL/SHM beside it */
    DIR *d = opendir(dir);
    KH_CHECK(d != NULL);
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, "keyhold.db") &&
            strcmp(e->d_name, "keyhold.db-wal") && strcmp(e->d_name, "keyhold.db-shm"))
            kh_test_fail(__FILE__, __LINE__, "unexpected file in the store: %s", e->d_name);
    }
    if (d)
        closedir(d);
    kh_store_close(st);

    /* umask 0: still 0600 */
    old = umask(0);
    snprintf(dir, sizeof dir, "%s/c", kh_test_tmpdir());
    KH_CHECK_RV(kh_store_open(&st, dir), CKR_OK);
    umask(old);
    snprintf(db, sizeof db, "%s/keyhold.db", dir);
    KH_CHECK(stat(db, &sb) == 0 && (sb.st_mode & 07777) == 0600);
    KH_CHECK(stat(dir, &sb) == 0 && (sb.st_mode & 07777) == 0700);
    kh_store_close(st);
}

static void test_open_reopen(void)
{
    const char *dir;
    kh_store *st = open_fresh(&dir);
    char saved[4200];
    snprintf(saved, sizeof saved, "%s", dir);
    int64_t tok = 0;
    KH_CHECK_RV(kh_store_token_init(st, &tok, 0, SO_PIN, "persist", 7, NULL), CKR_OK);
    kh_store_close(st);

    st = NULL;
    KH_CHECK_RV(kh_store_open(&st, saved), CKR_OK);
    kh_token_rec rec;
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(strcmp(rec.label, "persist") == 0);
    kh_store_close(st);
    KH_CHECK(db_int(saved, "PRAGMA user_version") == 2);
    /* WAL mode persists in the file */
    char jm[4300];
    sqlite3 *db;
    snprintf(jm, sizeof jm, "%s/keyhold.db", saved);
    KH_CHECK(sqlite3_open(jm, &db) == SQLITE_OK);
    sqlite3_stmt *s;
    KH_CHECK(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL) == SQLITE_OK);
    KH_CHECK(sqlite3_step(s) == SQLITE_ROW);
    KH_CHECK(strcmp((const char *)sqlite3_column_text(s, 0), "wal") == 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
}

static void test_open_newer_version(void)
{
    const char *dir;
    kh_store *st = open_fresh(&dir);
    kh_store_close(st);
    char path[4300];
    snprintf(path, sizeof path, "%s/keyhold.db", dir);
    sqlite3 *db;
    KH_CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    KH_CHECK(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    st = NULL;
    KH_CHECK_RV(kh_store_open(&st, dir), CKR_KH_STORE_ERROR);
    KH_CHECK(st == NULL);
}

static void test_open_not_a_db(void)
{
    const char *dir = kh_test_tmpdir();
    char path[4300];
    snprintf(path, sizeof path, "%s/keyhold.db", dir);
    FILE *f = fopen(path, "w");
    KH_CHECK(f != NULL);
    for (int i = 0; i < 200; i++)
        fputs("this is not a database. ", f);
    fclose(f);
    kh_store *st = NULL;
    KH_CHECK_RV(kh_store_open(&st, dir), CKR_KH_STORE_ERROR);
}

static void test_default_dir(void)
{
    char buf[4096];
    char *saved_store = getenv("KEYHOLD_STORE") ? strdup(getenv("KEYHOLD_STORE")) : NULL;
    char *saved_xdg = getenv("XDG_DATA_HOME") ? strdup(getenv("XDG_DATA_HOME")) : NULL;
    char *saved_home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;

    setenv("KEYHOLD_STORE", "/srv/ks", 1);
    KH_CHECK_RV(kh_store_default_dir(buf, sizeof buf), CKR_OK);
    KH_CHECK(strcmp(buf, "/srv/ks") == 0);
    unsetenv("KEYHOLD_STORE");
    setenv("XDG_DATA_HOME", "/x/data", 1);
    KH_CHECK_RV(kh_store_default_dir(buf, sizeof buf), CKR_OK);
    KH_CHECK(strcmp(buf, "/x/data/keyhold") == 0);
    unsetenv("XDG_DATA_HOME");
    setenv("HOME", "/home/u", 1);
    KH_CHECK_RV(kh_store_default_dir(buf, sizeof buf), CKR_OK);
    KH_CHECK(strcmp(buf, "/home/u/.local/share/keyhold") == 0);
    KH_CHECK_RV(kh_store_default_dir(buf, 5), CKR_BUFFER_TOO_SMALL);

    if (saved_store)
        setenv("KEYHOLD_STORE", saved_store, 1);
    if (saved_xdg)
        setenv("XDG_DATA_HOME", saved_xdg, 1);
    if (saved_home)
        setenv("HOME", saved_home, 1);
    else
        unsetenv("HOME");
    free(saved_store);
    free(saved_xdg);
    free(saved_home);
}

/* ---- tokens ---- */

static void test_token_init_list_get(void)
{
    kh_store *st = open_fresh(NULL);
    int64_t a = 0, b = 0, c = 0;
    kh_token_rec *list = NULL, rec;
    size_t n = 99;

    KH_CHECK_RV(kh_store_token_list(st, &list, &n), CKR_OK);
    KH_CHECK(n == 0 && list != NULL);
    free(list);

    KH_CHECK_RV(kh_store_token_init(st, &a, 0, SO_PIN, "first token                     ",
                                    32, NULL), CKR_OK);
    KH_CHECK(a == 1);
    KH_CHECK_RV(kh_store_token_init(st, &b, 7, SO_PIN, "seven", 5, NULL), CKR_OK);
    KH_CHECK(b == 7);
    KH_CHECK_RV(kh_store_token_init(st, &c, 0, SO_PIN, NULL, 0, NULL), CKR_OK);
    KH_CHECK(c == 8);

    KH_CHECK_RV(kh_store_token_get(st, &rec, a), CKR_OK);
    KH_CHECK(rec.id == 1 && strcmp(rec.label, "first token") == 0);
    KH_CHECK(!rec.user_pin_set && rec.user_fail == 0 && rec.so_fail == 0);
    KH_CHECK(rec.default_backend == CKV_KH_BACKEND_VAULT);
    KH_CHECK(strlen(rec.serial) == 16);
    KH_CHECK_RV(kh_store_token_get(st, &rec, 2), CKR_SLOT_ID_INVALID);

    KH_CHECK_RV(kh_store_token_list(st, &list, &n), CKR_OK);
    KH_CHECK(n == 3);
    if (n == 3) {
        KH_CHECK(list[0].id == 1 && list[1].id == 7 && list[2].id == 8);
        KH_CHECK(strcmp(list[1].label, "seven") == 0 && list[2].label[0] == '\0');
        KH_CHECK(memcmp(list[0].uid, list[1].uid, KH_UID_LEN) != 0);
    }
    free(list);

    KH_CHECK_RV(kh_store_token_set_default_backend(st, b, CKV_KH_BACKEND_REMOTE), CKR_OK);
    KH_CHECK_RV(kh_store_token_get(st, &rec, b), CKR_OK);
    KH_CHECK(rec.default_backend == CKV_KH_BACKEND_REMOTE);
    KH_CHECK_RV(kh_store_token_set_default_backend(st, 99, 1), CKR_SLOT_ID_INVALID);

    /* PIN length bounds */
    int64_t d = 0;
    KH_CHECK_RV(kh_store_token_init(st, &d, 0, (const uint8_t *)"abc", 3, "x", 1, NULL),
                CKR_PIN_LEN_RANGE);
    uint8_t longpin[257];
    memset(longpin, 'p', sizeof longpin);
    KH_CHECK_RV(kh_store_token_init(st, &d, 0, longpin, 257, "x", 1, NULL), CKR_PIN_LEN_RANGE);
    KH_CHECK_RV(kh_store_token_init(st, &d, 0, longpin, 256, "x", 1, NULL), CKR_OK);
    KH_CHECK_RV(kh_store_token_init(st, &d, 0, SO_PIN, "123456789012345678901234567890123",
                                    33, NULL), CKR_ARGUMENTS_BAD);
    kh_store_close(st);
}

static void test_login(void)
{
    int64_t tok = 0;
    uint8_t so_key[KH_TOKEN_KEY_LEN], key[KH_TOKEN_KEY_LEN];
    kh_store *st = open_fresh(NULL);
    kh_token_rec rec;

    KH_CHECK_RV(kh_store_token_init(st, &tok, 0, SO_PIN, "t", 1, NULL), CKR_OK);
    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_USER, USER_PIN), CKR_USER_PIN_NOT_INITIALIZED);
    KH_CHECK_RV(kh_store_login(st, so_key, tok, CKU_SO, SO_PIN), CKR_OK);
    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_CONTEXT_SPECIFIC, SO_PIN), CKR_USER_TYPE_INVALID);
    KH_CHECK_RV(kh_store_login(st, key, 42, CKU_SO, SO_PIN), CKR_SLOT_ID_INVALID);
    KH_CHECK_RV(kh_store_init_pin(st, tok, so_key, (const uint8_t *)"12", 2, NULL),
                CKR_PIN_LEN_RANGE);
    KH_CHECK_RV(kh_store_init_pin(st, tok, so_key, USER_PIN, NULL), CKR_OK);
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(rec.user_pin_set);

    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_USER, USER_PIN), CKR_OK);
    KH_CHECK_MEM(key, so_key, KH_TOKEN_KEY_LEN);

    /* wrong PINs count; a good login resets */
    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_USER, (const uint8_t *)"wrong-pin", 9),
                CKR_PIN_INCORRECT);
    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_USER, (const uint8_t *)"x", 1),
                CKR_PIN_INCORRECT); /* bad length counts as a wrong PIN */
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(rec.user_fail == 2 && rec.so_fail == 0);
    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_USER, USER_PIN), CKR_OK);
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(rec.user_fail == 0);

    /* SO counter is separate */
    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_SO, USER_PIN), CKR_PIN_INCORRECT);
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(rec.user_fail == 0 && rec.so_fail == 1);
    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_SO, SO_PIN), CKR_OK);

    /* lockout at KH_PIN_MAX_TRIES */
    for (int i = 1; i < KH_PIN_MAX_TRIES; i++)
        KH_CHECK_RV(kh_store_login(st, key, tok, CKU_USER, (const uint8_t *)"wrong-pin", 9),
                    CKR_PIN_INCORRECT);
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(rec.user_fail == KH_PIN_MAX_TRIES - 1);
    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_USER, (const uint8_t *)"wrong-pin", 9),
                CKR_PIN_LOCKED);
    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_USER, USER_PIN), CKR_PIN_LOCKED);
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(rec.user_fail == KH_PIN_MAX_TRIES);

    /* C_InitPIN unlocks */
    KH_CHECK_RV(kh_store_init_pin(st, tok, so_key, (const uint8_t *)"fresh-pin", 9, NULL), CKR_OK);
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(rec.user_fail == 0);
    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_USER, USER_PIN), CKR_PIN_INCORRECT);
    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_USER, (const uint8_t *)"fresh-pin", 9), CKR_OK);
    KH_CHECK_MEM(key, so_key, KH_TOKEN_KEY_LEN);
    kh_store_close(st);
}

/* The stored KDF cost is used to unwrap, whatever the current default. */
static void test_login_kdf_params(void)
{
    int64_t tok = 0;
    uint8_t key[KH_TOKEN_KEY_LEN];
    kh_kdf_params kdf = { 11, 4, 2 };
    kh_store *st = open_fresh(NULL);
    KH_CHECK_RV(kh_store_token_init(st, &tok, 0, SO_PIN, "t", 1, &kdf), CKR_OK);
    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_SO, SO_PIN), CKR_OK);
    kh_kdf_params bad = { 40, 8, 1 };
    KH_CHECK_RV(kh_store_init_pin(st, tok, key, USER_PIN, &bad), CKR_ARGUMENTS_BAD);
    kh_store_close(st);
}

static void test_set_pin(void)
{
    int64_t tok = 0;
    uint8_t key[KH_TOKEN_KEY_LEN], key2[KH_TOKEN_KEY_LEN];
    kh_store *st = open_with_token(&tok, key);
    const uint8_t np[] = "new-user-pin";

    KH_CHECK_RV(kh_store_set_pin(st, tok, CKU_USER, (const uint8_t *)"bad-old", 7, np, 12, NULL),
                CKR_PIN_INCORRECT);
    KH_CHECK_RV(kh_store_set_pin(st, tok, CKU_USER, USER_PIN, np, 2, NULL), CKR_PIN_LEN_RANGE);
    KH_CHECK_RV(kh_store_set_pin(st, tok, CKU_USER, USER_PIN, np, 12, NULL), CKR_OK);
    KH_CHECK_RV(kh_store_login(st, key2, tok, CKU_USER, USER_PIN), CKR_PIN_INCORRECT);
    KH_CHECK_RV(kh_store_login(st, key2, tok, CKU_USER, np, 12), CKR_OK);
    KH_CHECK_MEM(key, key2, KH_TOKEN_KEY_LEN);
    kh_token_rec rec;
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(rec.user_fail == 0);

    /* SO */
    KH_CHECK_RV(kh_store_set_pin(st, tok, CKU_SO, SO_PIN, (const uint8_t *)"new-so-pin", 10,
                                 NULL), CKR_OK);
    KH_CHECK_RV(kh_store_login(st, key2, tok, CKU_SO, SO_PIN), CKR_PIN_INCORRECT);
    KH_CHECK_RV(kh_store_login(st, key2, tok, CKU_SO, (const uint8_t *)"new-so-pin", 10), CKR_OK);
    KH_CHECK_MEM(key, key2, KH_TOKEN_KEY_LEN);
    kh_store_close(st);
}

static void test_token_reinit(void)
{
    int64_t tok = 0, other = 0, out = 0;
    uint8_t key[KH_TOKEN_KEY_LEN], key2[KH_TOKEN_KEY_LEN];
    kh_store *st = open_with_token(&tok, key);
    kh_token_rec before, after;
    obj_spec o;

    KH_CHECK_RV(kh_store_token_init(st, &other, 0, SO_PIN, "other", 5, NULL), CKR_OK);
    for (int i = 0; i < 5; i++) {
        char lbl[16];
        snprintf(lbl, sizeof lbl, "k%d", i);
        spec_fill(&o, CKO_PUBLIC_KEY, CKK_EC, false, "id", lbl);
        insert_obj(st, tok, &o, NULL, 0);
    }
    insert_obj(st, other, &o, NULL, 0);
    KH_CHECK_RV(kh_store_token_get(st, &before, tok), CKR_OK);

    /* wrong SO PIN: nothing changes */
    KH_CHECK_RV(kh_store_token_init(st, &out, tok, (const uint8_t *)"wrong-so", 8, "new", 3,
                                    NULL), CKR_PIN_INCORRECT);
    size_t n = 0;
    KH_CHECK_RV(kh_store_obj_count(st, tok, &n), CKR_OK);
    KH_CHECK(n == 5);
    KH_CHECK_RV(kh_store_token_get(st, &after, tok), CKR_OK);
    KH_CHECK(memcmp(before.uid, after.uid, KH_UID_LEN) == 0);
    KH_CHECK(strcmp(after.label, "test") == 0 && after.user_pin_set && after.so_fail == 1);
    KH_CHECK_RV(kh_store_login(st, key2, tok, CKU_USER, USER_PIN), CKR_OK);

    /* right SO PIN: objects gone, user PIN cleared, new uid and key */
    KH_CHECK_RV(kh_store_token_init(st, &out, tok, SO_PIN, "renewed", 7, NULL), CKR_OK);
    KH_CHECK(out == tok);
    KH_CHECK_RV(kh_store_obj_count(st, tok, &n), CKR_OK);
    KH_CHECK(n == 0);
    KH_CHECK_RV(kh_store_obj_count(st, other, &n), CKR_OK);
    KH_CHECK(n == 1);
    KH_CHECK_RV(kh_store_token_get(st, &after, tok), CKR_OK);
    KH_CHECK(memcmp(before.uid, after.uid, KH_UID_LEN) != 0);
    KH_CHECK(strcmp(after.label, "renewed") == 0 && !after.user_pin_set && after.so_fail == 0);
    KH_CHECK_RV(kh_store_login(st, key2, tok, CKU_USER, USER_PIN), CKR_USER_PIN_NOT_INITIALIZED);
    KH_CHECK_RV(kh_store_login(st, key2, tok, CKU_SO, SO_PIN), CKR_OK);
    KH_CHECK(memcmp(key, key2, KH_TOKEN_KEY_LEN) != 0);

    /* the old SO session's key is stale: C_InitPIN with it is refused */
    KH_CHECK_RV(kh_store_init_pin(st, tok, key, USER_PIN, NULL), CKR_USER_NOT_LOGGED_IN);
    KH_CHECK_RV(kh_store_token_get(st, &after, tok), CKR_OK);
    KH_CHECK(!after.user_pin_set);
    KH_CHECK_RV(kh_store_init_pin(st, tok, key2, USER_PIN, NULL), CKR_OK);
    KH_CHECK_RV(kh_store_login(st, key, tok, CKU_USER, USER_PIN), CKR_OK);
    KH_CHECK_MEM(key, key2, KH_TOKEN_KEY_LEN);
    kh_store_close(st);
}

/* ---- objects ---- */

static void test_obj_crud(void)
{
    int64_t tok = 0;
    uint8_t key[KH_TOKEN_KEY_LEN];
    kh_store *st = open_with_token(&tok, key);
    obj_spec o;
    kh_obj_rec rec;
    const uint8_t sealed[] = { 1, 2, 3, 4, 5 };

    spec_fill(&o, CKO_PRIVATE_KEY, CKK_EC, true, "\x01\x02", "signer");
    int64_t id = insert_obj(st, tok, &o, sealed, sizeof sealed);
    KH_CHECK_RV(kh_store_obj_get(st, &rec, id), CKR_OK);
    KH_CHECK(rec.id == id && rec.token_id == tok);
    KH_CHECK(rec.nattrs == 7); /* the unavailable one is not stored */
    KH_CHECK(rec.sealed_len == sizeof sealed && memcmp(rec.sealed, sealed, sizeof sealed) == 0);
    const CK_ATTRIBUTE *a = kh_obj_rec_attr(&rec, CKA_LABEL);
    KH_CHECK(a && a->ulValueLen == 6 && memcmp(a->pValue, "signer", 6) == 0);
    a = kh_obj_rec_attr(&rec, CKA_CLASS);
    KH_CHECK(a && a->ulValueLen == sizeof(CK_ULONG) &&
             *(CK_OBJECT_CLASS *)a->pValue == CKO_PRIVATE_KEY);
    KH_CHECK(kh_obj_rec_attr(&rec, CKA_SIGN) == NULL);
    kh_obj_rec_clear(&rec);
    KH_CHECK(rec.attrs == NULL && rec.sealed == NULL);

    /* update: new label, found by it; sealed kept */
    snprintf(o.label, sizeof o.label, "renamed");
    o.attrs[4].ulValueLen = 7;
    KH_CHECK_RV(kh_store_obj_update(st, id, o.attrs, 8), CKR_OK);
    kh_find_query q = { .token_id = tok, .has_label = true, .label = "renamed", .label_len = 7,
                        .include_private = true };
    int64_t *ids;
    KH_CHECK(find_n(st, &q, &ids) == 1 && ids[0] == id);
    free(ids);
    q.label = "signer";
    q.label_len = 6;
    KH_CHECK(find_n(st, &q, NULL) == 0);
    KH_CHECK_RV(kh_store_obj_get(st, &rec, id), CKR_OK);
    KH_CHECK(rec.sealed_len == sizeof sealed);
    kh_obj_rec_clear(&rec);
    KH_CHECK_RV(kh_store_obj_update(st, id + 100, o.attrs, 8), CKR_OBJECT_HANDLE_INVALID);

    /* bad attribute values */
    CK_BBOOL t = CK_TRUE;
    CK_ATTRIBUTE badcls[] = { { CKA_CLASS, &t, sizeof t } };
    KH_CHECK_RV(kh_store_obj_update(st, id, badcls, 1), CKR_ATTRIBUTE_VALUE_INVALID);

    /* delete */
    KH_CHECK_RV(kh_store_obj_delete(st, id), CKR_OK);
    KH_CHECK_RV(kh_store_obj_get(st, &rec, id), CKR_OBJECT_HANDLE_INVALID);
    KH_CHECK_RV(kh_store_obj_delete(st, id), CKR_OBJECT_HANDLE_INVALID);

    /* handles are not reused after deleting the newest row */
    int64_t id2 = insert_obj(st, tok, &o, NULL, 0);
    KH_CHECK(id2 > id);
    KH_CHECK_RV(kh_store_obj_get(st, &rec, id2), CKR_OK);
    KH_CHECK(rec.sealed == NULL && rec.sealed_len == 0);
    kh_obj_rec_clear(&rec);

    /* no such token */
    kh_obj_rec r = { .token_id = 999, .attrs = o.attrs, .nattrs = 8 };
    int64_t bad = 0;
    KH_CHECK_RV(kh_store_obj_insert(st, &bad, &r), CKR_SLOT_ID_INVALID);
    kh_store_close(st);
}

static void test_obj_find(void)
{
    int64_t tok = 0, tok2 = 0;
    uint8_t key[KH_TOKEN_KEY_LEN];
    kh_store *st = open_with_token(&tok, key);
    obj_spec o;
    int64_t pub[4], priv[4], other;

    KH_CHECK_RV(kh_store_token_init(st, &tok2, 0, SO_PIN, "two", 3, NULL), CKR_OK);
    for (int i = 0; i < 4; i++) {
        char id[16], lbl[16];
        snprintf(id, sizeof id, "id%d", i);
        snprintf(lbl, sizeof lbl, "key%d", i);
        spec_fill(&o, CKO_PUBLIC_KEY, i < 2 ? CKK_EC : CKK_RSA, false, id, lbl);
        pub[i] = insert_obj(st, tok, &o, NULL, 0);
        spec_fill(&o, CKO_PRIVATE_KEY, i < 2 ? CKK_EC : CKK_RSA, true, id, lbl);
        priv[i] = insert_obj(st, tok, &o, (const uint8_t *)"x", 1);
    }
    spec_fill(&o, CKO_PUBLIC_KEY, CKK_EC, false, "id0", "key0");
    other = insert_obj(st, tok2, &o, NULL, 0);

    kh_find_query q = { .token_id = tok, .include_private = true };
    int64_t *ids;
    KH_CHECK(find_n(st, &q, NULL) == 8);
    q.include_private = false;
    KH_CHECK(find_n(st, &q, NULL) == 4);

    /* by class */
    q = (kh_find_query){ .token_id = tok, .has_class = true, .cls = CKO_PRIVATE_KEY,
                         .include_private = true };
    KH_CHECK(find_n(st, &q, &ids) == 4);
    KH_CHECK(ids[0] == priv[0] && ids[3] == priv[3]);
    free(ids);
    q.include_private = false;
    KH_CHECK(find_n(st, &q, NULL) == 0);

    /* by key type */
    q = (kh_find_query){ .token_id = tok, .has_key_type = true, .key_type = CKK_RSA,
                         .include_private = true };
    KH_CHECK(find_n(st, &q, &ids) == 4);
    KH_CHECK(ids[0] == pub[2] && ids[1] == priv[2] && ids[2] == pub[3] && ids[3] == priv[3]);
    free(ids);

    /* by CKA_ID */
    q = (kh_find_query){ .token_id = tok, .has_id = true, .ckid = (const uint8_t *)"id1",
                         .ckid_len = 3, .include_private = true };
    KH_CHECK(find_n(st, &q, &ids) == 2);
    KH_CHECK(ids[0] == pub[1] && ids[1] == priv[1]);
    free(ids);
    q.ckid_len = 2; /* "id" is a prefix, not a match */
    KH_CHECK(find_n(st, &q, NULL) == 0);

    /* by label */
    q = (kh_find_query){ .token_id = tok, .has_label = true, .label = "key3", .label_len = 4,
                         .include_private = false };
    KH_CHECK(find_n(st, &q, &ids) == 1);
    KH_CHECK(ids[0] == pub[3]);
    free(ids);

    /* combined */
    q = (kh_find_query){ .token_id = tok, .has_class = true, .cls = CKO_PRIVATE_KEY,
                         .has_key_type = true, .key_type = CKK_EC, .has_id = true,
                         .ckid = (const uint8_t *)"id0", .ckid_len = 3, .has_label = true,
                         .label = "key0", .label_len = 4, .include_private = true };
    KH_CHECK(find_n(st, &q, &ids) == 1);
    KH_CHECK(ids[0] == priv[0]);
    free(ids);
    q.key_type = CKK_RSA;
    KH_CHECK(find_n(st, &q, NULL) == 0);
    q = (kh_find_query){ .token_id = tok, .has_class = true, .cls = CKO_PUBLIC_KEY,
                         .has_key_type = true, .key_type = CKK_EC };
    KH_CHECK(find_n(st, &q, &ids) == 2);
    KH_CHECK(ids[0] == pub[0] && ids[1] == pub[1]);
    free(ids);

    /* token_id 0: every token */
    q = (kh_find_query){ .has_label = true, .label = "key0", .label_len = 4 };
    KH_CHECK(find_n(st, &q, &ids) == 2);
    KH_CHECK(ids[0] == pub[0] && ids[1] == other);
    free(ids);
    q = (kh_find_query){ .token_id = tok2, .include_private = true };
    KH_CHECK(find_n(st, &q, &ids) == 1);
    KH_CHECK(ids[0] == other);
    free(ids);

    size_t n = 0;
    KH_CHECK_RV(kh_store_obj_count(st, tok, &n), CKR_OK);
    KH_CHECK(n == 8);

    /* absent CKA_PRIVATE on a private key defaults to private */
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE a[] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_LABEL, "np", 2 } };
    kh_obj_rec r = { .token_id = tok, .attrs = a, .nattrs = 2 };
    int64_t id = 0;
    KH_CHECK_RV(kh_store_obj_insert(st, &id, &r), CKR_OK);
    q = (kh_find_query){ .token_id = tok, .has_label = true, .label = "np", .label_len = 2 };
    KH_CHECK(find_n(st, &q, NULL) == 0);
    q.include_private = true;
    KH_CHECK(find_n(st, &q, NULL) == 1);
    /* empty label is a value, distinct from no label */
    CK_ATTRIBUTE e[] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_LABEL, NULL, 0 } };
    r.attrs = e;
    KH_CHECK_RV(kh_store_obj_insert(st, &id, &r), CKR_OK);
    q = (kh_find_query){ .token_id = tok, .has_label = true, .label = "", .label_len = 0,
                         .include_private = true };
    KH_CHECK(find_n(st, &q, &ids) == 1);
    KH_CHECK(ids[0] == id);
    free(ids);
    kh_store_close(st);
}

static void test_obj_bulk(void)
{
    enum { N = 100000 };
    int64_t tok = 0;
    uint8_t key[KH_TOKEN_KEY_LEN];
    kh_store *st = open_with_token(&tok, key);
    kh_obj_rec *recs = calloc(N, sizeof *recs);
    obj_spec *specs = calloc(N, sizeof *specs);
    int64_t *out = calloc(N, sizeof *out);

    KH_CHECK(recs && specs && out);
    if (!recs || !specs || !out)
        goto out;
    for (size_t i = 0; i < N; i++) {
        char id[16], lbl[32];
        snprintf(id, sizeof id, "%zu", i);
        snprintf(lbl, sizeof lbl, "bulk-%zu", i);
        spec_fill(&specs[i], i % 2 ? CKO_PRIVATE_KEY : CKO_PUBLIC_KEY, CKK_EC, i % 2, id, lbl);
        recs[i].token_id = tok;
        kh_random(recs[i].uid, KH_UID_LEN);
        recs[i].attrs = specs[i].attrs;
        recs[i].nattrs = 8;
    }
    double t0 = now_s();
    KH_CHECK_RV(kh_store_obj_insert_many(st, out, recs, N), CKR_OK);
    double t1 = now_s();
    for (size_t i = 1; i < N; i++)
        KH_CHECK(out[i] == out[i - 1] + 1);
    size_t n = 0;
    KH_CHECK_RV(kh_store_obj_count(st, tok, &n), CKR_OK);
    KH_CHECK(n == N);

    enum { LOOKUPS = 10000 };
    uint64_t x = kh_test_seed() | 1;
    double t2 = now_s();
    for (int i = 0; i < LOOKUPS; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t k = (size_t)(x % N);
        kh_find_query q = { .token_id = tok, .has_label = true, .label = specs[k].label,
                            .label_len = strlen(specs[k].label), .include_private = true };
        int64_t *ids;
        if (find_n(st, &q, &ids) != 1 || ids[0] != out[k])
            KH_CHECK(!"label lookup");
        free(ids);
    }
    double t3 = now_s();
    /* by CKA_ID, with class narrowing (must still use the ckid index) */
    double t4 = now_s();
    for (int i = 0; i < LOOKUPS; i++) {
        size_t k = (size_t)i * 7 % N;
        kh_find_query q = { .token_id = tok, .has_class = true, .cls = specs[k].cls,
                            .has_id = true, .ckid = (const uint8_t *)specs[k].ckid,
                            .ckid_len = strlen(specs[k].ckid), .include_private = true };
        int64_t *ids;
        if (find_n(st, &q, &ids) != 1 || ids[0] != out[k])
            KH_CHECK(!"id lookup");
        free(ids);
    }
    double t5 = now_s();
    kh_obj_rec rec;
    double t6 = now_s();
    for (int i = 0; i < LOOKUPS; i++) {
        KH_CHECK_RV(kh_store_obj_get(st, &rec, out[(size_t)i * 13 % N]), CKR_OK);
        kh_obj_rec_clear(&rec);
    }
    double t7 = now_s();
    printf("# bulk: insert %d rows %.3f s; find by label %.2f us; by class+id %.2f us;"
           " get %.2f us\n", N, t1 - t0, (t3 - t2) / LOOKUPS * 1e6, (t5 - t4) / LOOKUPS * 1e6,
           (t7 - t6) / LOOKUPS * 1e6);

    /* a failing record rolls the whole batch back */
    CK_BBOOL t = CK_TRUE;
    CK_ATTRIBUTE badcls[] = { { CKA_CLASS, &t, sizeof t } };
    recs[5].attrs = badcls;
    recs[5].nattrs = 1;
    KH_CHECK_RV(kh_store_obj_insert_many(st, out, recs, 10), CKR_ATTRIBUTE_VALUE_INVALID);
    KH_CHECK(out[0] == 0 && out[9] == 0);
    KH_CHECK_RV(kh_store_obj_count(st, tok, &n), CKR_OK);
    KH_CHECK(n == N);
out:
    free(recs);
    free(specs);
    free(out);
    kh_store_close(st);
}

/* ---- two connections ---- */

static void test_two_handles(void)
{
    const char *d;
    char dir[4200];
    kh_store *a = open_fresh(&d), *b = NULL;
    snprintf(dir, sizeof dir, "%s", d);
    KH_CHECK_RV(kh_store_open(&b, dir), CKR_OK);
    KH_CHECK(!kh_store_changed(b));

    int64_t tok = 0;
    KH_CHECK_RV(kh_store_token_init(a, &tok, 0, SO_PIN, "shared", 6, NULL), CKR_OK);
    KH_CHECK(kh_store_changed(b));
    KH_CHECK(!kh_store_changed(b));
    KH_CHECK(!kh_store_changed(a)); /* own writes do not count */

    obj_spec o;
    spec_fill(&o, CKO_PUBLIC_KEY, CKK_EC, false, "x", "from-a");
    int64_t id = insert_obj(a, tok, &o, NULL, 0);
    KH_CHECK(kh_store_changed(b));
    kh_find_query q = { .token_id = tok, .has_label = true, .label = "from-a", .label_len = 6 };
    int64_t *ids;
    KH_CHECK(find_n(b, &q, &ids) == 1 && ids[0] == id);
    free(ids);

    /* lockout counted through b is seen by a */
    uint8_t key[KH_TOKEN_KEY_LEN];
    KH_CHECK_RV(kh_store_login(b, key, tok, CKU_SO, (const uint8_t *)"nope-nope", 9),
                CKR_PIN_INCORRECT);
    kh_token_rec rec;
    KH_CHECK_RV(kh_store_token_get(a, &rec, tok), CKR_OK);
    KH_CHECK(rec.so_fail == 1);
    KH_CHECK_RV(kh_store_login(a, key, tok, CKU_SO, SO_PIN), CKR_OK);

    KH_CHECK_RV(kh_store_obj_delete(b, id), CKR_OK);
    KH_CHECK(kh_store_changed(a));
    kh_obj_rec r;
    KH_CHECK_RV(kh_store_obj_get(a, &r, id), CKR_OBJECT_HANDLE_INVALID);
    kh_store_close(a);
    kh_store_close(b);
}

/* The stamp changes with every commit of any connection (another process
 * included), and only then. */
static void test_stamp(void)
{
    const char *d;
    char dir[4200];
    kh_store *a = open_fresh(&d), *b = NULL;
    kh_store_stamp s1, s2, s3;
    snprintf(dir, sizeof dir, "%s", d);
    KH_CHECK_RV(kh_store_open(&b, dir), CKR_OK);

    KH_CHECK(kh_store_stamp_read(a, &s1));
    KH_CHECK(kh_store_stamp_read(a, &s2));
    KH_CHECK(memcmp(&s1, &s2, sizeof s1) == 0);
    KH_CHECK(kh_store_stamp_read(b, &s3));
    KH_CHECK(memcmp(&s1, &s3, sizeof s1) == 0); /* one database, one header */

    /* reads change nothing */
    kh_token_rec *toks = NULL;
    size_t n = 0;
    KH_CHECK_RV(kh_store_token_list(b, &toks, &n), CKR_OK);
    free(toks);
    KH_CHECK(!kh_store_changed(a));
    KH_CHECK(kh_store_stamp_read(a, &s2));
    KH_CHECK(memcmp(&s1, &s2, sizeof s1) == 0);

    /* a commit through b changes a's stamp; so does one through a itself */
    int64_t tok = 0;
    KH_CHECK_RV(kh_store_token_init(b, &tok, 0, SO_PIN, "stamp", 5, NULL), CKR_OK);
    KH_CHECK(kh_store_stamp_read(a, &s2));
    KH_CHECK(memcmp(&s1, &s2, sizeof s1) != 0);
    KH_CHECK(kh_store_changed(a));
    obj_spec o;
    spec_fill(&o, CKO_PUBLIC_KEY, CKK_EC, false, "x", "from-a");
    int64_t id = insert_obj(a, tok, &o, NULL, 0);
    KH_CHECK(kh_store_stamp_read(b, &s3));
    KH_CHECK(memcmp(&s2, &s3, sizeof s2) != 0);

    /* in another process, as the module sees a delete by another program */
    kh_store_stamp before;
    KH_CHECK(kh_store_stamp_read(a, &before));
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        kh_store *c = NULL;
        _exit(kh_store_open(&c, dir) == CKR_OK && kh_store_obj_delete(c, id) == CKR_OK ? 0 : 1);
    }
    int st = 0;
    KH_CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    KH_CHECK(kh_store_stamp_read(a, &s3));
    KH_CHECK(memcmp(&before, &s3, sizeof s3) != 0);
    KH_CHECK(kh_store_changed(a));
    kh_store_close(a);
    kh_store_close(b);
}

/* Failed logins from several processes at once are all counted. */
static void test_login_concurrent(void)
{
    enum { PROCS = 4, EACH = 2 };
    const char *d;
    char dir[4200];
    int64_t tok = 0;
    kh_store *st = open_fresh(&d);
    snprintf(dir, sizeof dir, "%s", d);
    KH_CHECK_RV(kh_store_token_init(st, &tok, 0, SO_PIN, "race", 4, NULL), CKR_OK);

    pid_t pids[PROCS];
    for (int i = 0; i < PROCS; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            kh_store *c = NULL;
            uint8_t key[KH_TOKEN_KEY_LEN];
            int bad = 0;
            kh_store_abandon(st); /* the parent's connection is not ours */
            if (kh_store_open(&c, dir) != CKR_OK)
                _exit(2);
            for (int j = 0; j < EACH; j++) {
                if (kh_store_login(c, key, tok, CKU_SO, (const uint8_t *)"wrong-pin", 9) !=
                    CKR_PIN_INCORRECT)
                    bad = 1;
            }
            kh_store_close(c);
            _exit(bad);
        }
        KH_CHECK(pids[i] > 0);
    }
    for (int i = 0; i < PROCS; i++) {
        int status = -1;
        KH_CHECK(waitpid(pids[i], &status, 0) == pids[i]);
        KH_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    kh_token_rec rec;
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(rec.so_fail == PROCS * EACH);
    KH_CHECK(kh_store_changed(st));
    kh_store_close(st);
}

static void test_audit(void)
{
    const char *d;
    char dir[4200];
    kh_store *st = open_fresh(&d);
    snprintf(dir, sizeof dir, "%s", d);
    KH_CHECK_RV(kh_store_audit(st, 0, "open", NULL), CKR_OK);
    KH_CHECK_RV(kh_store_audit(st, 3, "login", "user"), CKR_OK);
    kh_store_close(st);
    KH_CHECK(db_int(dir, "SELECT count(*) FROM audit") == 2);
    KH_CHECK(db_int(dir, "SELECT count(*) FROM audit WHERE token_id IS NULL") == 1);
}

/* A key pair and its audit row commit together, or not at all. */
static void test_insert_audited(void)
{
    const char *d;
    char dir[4200], sql[256];
    int64_t tok = 0, ids[2] = { 0, 0 };
    kh_store *st = open_fresh(&d);
    obj_spec o[2];
    kh_obj_rec recs[2];
    snprintf(dir, sizeof dir, "%s", d);
    KH_CHECK_RV(kh_store_token_init(st, &tok, 0, SO_PIN, "test", 4, NULL), CKR_OK);
    spec_fill(&o[0], CKO_PUBLIC_KEY, CKK_EC, false, "p", "pair");
    spec_fill(&o[1], CKO_PRIVATE_KEY, CKK_EC, true, "p", "pair");
    memset(recs, 0, sizeof recs);
    for (int i = 0; i < 2; i++) {
        recs[i].token_id = tok;
        KH_CHECK_RV(kh_random(recs[i].uid, KH_UID_LEN), CKR_OK);
        recs[i].attrs = o[i].attrs;
        recs[i].nattrs = 8;
    }
    int64_t before = db_int(dir, "SELECT count(*) FROM audit");
    KH_CHECK_RV(kh_store_obj_insert_audited(st, ids, recs, 2, tok, "generate-key-pair",
                                            "backend=vault"), CKR_OK);
    KH_CHECK(ids[0] > 0 && ids[1] > ids[0]);
    KH_CHECK(db_int(dir, "SELECT count(*) FROM audit") == before + 1);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM audit WHERE event = 'generate-key-pair' AND token_id = %lld "
             "AND detail = 'handle=%lld backend=vault'", (long long)tok, (long long)ids[1]);
    KH_CHECK(db_int(dir, sql) == 1);
    KH_CHECK_RV(kh_store_obj_insert_audited(st, ids, recs, 2, tok, NULL, NULL), CKR_ARGUMENTS_BAD);

    /* the second record fails (no such token): neither object nor audit row stays */
    int64_t objs = db_int(dir, "SELECT count(*) FROM objects");
    recs[1].token_id = tok + 1000;
    KH_CHECK(kh_store_obj_insert_audited(st, ids, recs, 2, tok, "generate-key-pair", NULL) != CKR_OK);
    KH_CHECK(ids[0] == 0 && ids[1] == 0);
    KH_CHECK(db_int(dir, "SELECT count(*) FROM objects") == objs);
    KH_CHECK(db_int(dir, "SELECT count(*) FROM audit") == before + 1);
    kh_store_close(st);
}

/* ---- seal ---- */

static void test_seal(void)
{
    uint8_t key[32], key2[32];
    const uint8_t aad[] = "aad";
    const uint8_t pt[] = "the private key bytes";
    uint8_t *blob = NULL, *out = NULL;
    size_t blob_len = 0, out_len = 0;

    KH_CHECK_RV(kh_random(key, sizeof key), CKR_OK);
    memcpy(key2, key, sizeof key);
    key2[0] ^= 1;
    KH_CHECK_RV(kh_seal(&blob, &blob_len, key, aad, 3, pt, sizeof pt), CKR_OK);
    KH_CHECK(blob_len == sizeof pt + 28);
    KH_CHECK_RV(kh_unseal(&out, &out_len, key, aad, 3, blob, blob_len), CKR_OK);
    KH_CHECK(out_len == sizeof pt && memcmp(out, pt, sizeof pt) == 0);
    kh_wipe(out, out_len);
    free(out);

    /* flip one bit in nonce, ciphertext and tag */
    size_t where[] = { 0, 11, 12, 12 + sizeof pt - 1, blob_len - 16, blob_len - 1 };
    for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
        blob[where[i]] ^= 0x10;
        out = (uint8_t *)1;
        KH_CHECK_RV(kh_unseal(&out, &out_len, key, aad, 3, blob, blob_len),
                    CKR_ENCRYPTED_DATA_INVALID);
        KH_CHECK(out == NULL && out_len == 0);
        blob[where[i]] ^= 0x10;
    }
    KH_CHECK_RV(kh_unseal(&out, &out_len, key, (const uint8_t *)"aae", 3, blob, blob_len),
                CKR_ENCRYPTED_DATA_INVALID);
    KH_CHECK_RV(kh_unseal(&out, &out_len, key, aad, 2, blob, blob_len),
                CKR_ENCRYPTED_DATA_INVALID);
    KH_CHECK_RV(kh_unseal(&out, &out_len, key, NULL, 0, blob, blob_len),
                CKR_ENCRYPTED_DATA_INVALID);
    KH_CHECK_RV(kh_unseal(&out, &out_len, key2, aad, 3, blob, blob_len),
                CKR_ENCRYPTED_DATA_INVALID);
    KH_CHECK_RV(kh_unseal(&out, &out_len, key, aad, 3, blob, blob_len - 1),
                CKR_ENCRYPTED_DATA_INVALID);
    KH_CHECK_RV(kh_unseal(&out, &out_len, key, aad, 3, blob, 27), CKR_ENCRYPTED_DATA_INVALID);
    free(blob);

    /* two seals of the same plaintext differ (random nonce) */
    uint8_t *b1, *b2;
    size_t l1, l2;
    KH_CHECK_RV(kh_seal(&b1, &l1, key, NULL, 0, pt, sizeof pt), CKR_OK);
    KH_CHECK_RV(kh_seal(&b2, &l2, key, NULL, 0, pt, sizeof pt), CKR_OK);
    KH_CHECK(l1 == l2 && memcmp(b1, b2, l1) != 0);
    free(b1);
    free(b2);

    /* empty plaintext */
    KH_CHECK_RV(kh_seal(&blob, &blob_len, key, aad, 3, NULL, 0), CKR_OK);
    KH_CHECK(blob_len == 28);
    KH_CHECK_RV(kh_unseal(&out, &out_len, key, aad, 3, blob, blob_len), CKR_OK);
    KH_CHECK(out != NULL && out_len == 0);
    free(out);
    blob[20] ^= 1;
    KH_CHECK_RV(kh_unseal(&out, &out_len, key, aad, 3, blob, blob_len),
                CKR_ENCRYPTED_DATA_INVALID);
    free(blob);

    /* object AAD layout */
    uint8_t tu[KH_UID_LEN], ou[KH_UID_LEN], oaad[KH_OBJ_AAD_LEN];
    memset(tu, 0xAA, sizeof tu);
    memset(ou, 0xBB, sizeof ou);
    kh_obj_aad(oaad, tu, ou);
    KH_CHECK(memcmp(oaad, "keyhold-obj-v1", 14) == 0);
    KH_CHECK(oaad[14] == 0xAA && oaad[14 + KH_UID_LEN] == 0xBB);
    KH_CHECK(oaad[KH_OBJ_AAD_LEN - 1] == 0xBB);
}

static void test_kdf(void)
{
    kh_kdf_params p;
    uint8_t a[32], b[32], c[32];
    const uint8_t salt[16] = { 1 };

    kh_kdf_default(&p);
    KH_CHECK(p.r == 8 && p.p == 1 && p.log2_n >= 10 && p.log2_n <= 15);
    char *saved = getenv("KEYHOLD_KDF_LOG2N") ? strdup(getenv("KEYHOLD_KDF_LOG2N")) : NULL;
    setenv("KEYHOLD_KDF_LOG2N", "4", 1);
    kh_kdf_default(&p);
    KH_CHECK(p.log2_n == 10);
    unsetenv("KEYHOLD_KDF_LOG2N");
    kh_kdf_default(&p);
    KH_CHECK(p.log2_n == 15);
    if (saved)
        setenv("KEYHOLD_KDF_LOG2N", saved, 1);
    free(saved);

    p = (kh_kdf_params){ 10, 8, 1 };
    KH_CHECK_RV(kh_kdf(a, (const uint8_t *)"1234", 4, salt, 16, &p), CKR_OK);
    KH_CHECK_RV(kh_kdf(b, (const uint8_t *)"1234", 4, salt, 16, &p), CKR_OK);
    KH_CHECK_RV(kh_kdf(c, (const uint8_t *)"1235", 4, salt, 16, &p), CKR_OK);
    KH_CHECK(memcmp(a, b, 32) == 0 && memcmp(a, c, 32) != 0);
    p.r = 4;
    KH_CHECK_RV(kh_kdf(c, (const uint8_t *)"1234", 4, salt, 16, &p), CKR_OK);
    KH_CHECK(memcmp(a, c, 32) != 0);

    /* RFC 7914 test vector 2: "password"/"NaCl", N=1024, r=8, p=16 */
    p = (kh_kdf_params){ 10, 8, 16 };
    size_t len;
    uint8_t *want = kh_test_unhex("fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162",
                                  &len);
    KH_CHECK_RV(kh_kdf(a, (const uint8_t *)"password", 8, (const uint8_t *)"NaCl", 4, &p), CKR_OK);
    KH_CHECK(want && len == 32 && memcmp(a, want, 32) == 0);
    free(want);

    p = (kh_kdf_params){ 9, 8, 1 };
    KH_CHECK_RV(kh_kdf(a, (const uint8_t *)"1234", 4, salt, 16, &p), CKR_ARGUMENTS_BAD);
    p = (kh_kdf_params){ 25, 8, 1 };
    KH_CHECK_RV(kh_kdf(a, (const uint8_t *)"1234", 4, salt, 16, &p), CKR_ARGUMENTS_BAD);
}

/* ---- attrs ---- */

static void test_attrs(void)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_BBOOL t = CK_TRUE;
    uint8_t big[300];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)i;
    CK_ATTRIBUTE in[] = {
        { CKA_CLASS, &cls, sizeof cls },
        { CKA_TOKEN, &t, sizeof t },
        { CKA_LABEL, NULL, 0 },
        { CKA_SIGN, NULL, CK_UNAVAILABLE_INFORMATION },
        { CKA_VALUE, big, sizeof big },
        { CKA_KH_REMOTE_REF, "kms://x", 7 },
    };
    uint8_t *blob = NULL;
    size_t len = 0;
    CK_ATTRIBUTE *out = NULL;
    size_t n = 0;

    KH_CHECK_RV(kh_attrs_encode(&blob, &len, in, 6), CKR_OK);
    KH_CHECK(len == 1 + 5 * 16 + sizeof cls + 1 + 0 + sizeof big + 7);
    KH_CHECK_RV(kh_attrs_decode(&out, &n, blob, len), CKR_OK);
    KH_CHECK(n == 5);
    if (n == 5) {
        size_t j = 0;
        for (size_t i = 0; i < 6; i++) {
            if (in[i].ulValueLen == CK_UNAVAILABLE_INFORMATION)
                continue;
            KH_CHECK(out[j].type == in[i].type && out[j].ulValueLen == in[i].ulValueLen);
            if (in[i].ulValueLen)
                KH_CHECK(memcmp(out[j].pValue, in[i].pValue, in[i].ulValueLen) == 0);
            j++;
        }
    }
    kh_attrs_free(out, n);

    /* every truncation is rejected (or, at an entry boundary, decodes fewer) */
    for (size_t cut = 0; cut < len; cut++) {
        CK_RV rv = kh_attrs_decode(&out, &n, blob, cut);
        if (rv == CKR_OK) {
            KH_CHECK(n < 5 && cut >= 1);
            kh_attrs_free(out, n);
        } else {
            KH_CHECK(rv == CKR_KH_STORE_ERROR && out == NULL && n == 0);
        }
    }
    /* truncation inside the header or value of an entry */
    KH_CHECK_RV(kh_attrs_decode(&out, &n, blob, 1 + 8), CKR_KH_STORE_ERROR);
    KH_CHECK_RV(kh_attrs_decode(&out, &n, blob, 1 + 16 + 3), CKR_KH_STORE_ERROR);
    KH_CHECK_RV(kh_attrs_decode(&out, &n, blob, len - 1), CKR_KH_STORE_ERROR);
    KH_CHECK_RV(kh_attrs_decode(&out, &n, blob, 0), CKR_KH_STORE_ERROR);

    /* bad version */
    blob[0] ^= 0xFF;
    KH_CHECK_RV(kh_attrs_decode(&out, &n, blob, len), CKR_KH_STORE_ERROR);
    blob[0] ^= 0xFF;
    /* a length that runs past the end, incl. one that would wrap */
    uint8_t saved[8];
    memcpy(saved, blob + 1 + 8, 8);
    memset(blob + 1 + 8, 0xFF, 8);
    KH_CHECK_RV(kh_attrs_decode(&out, &n, blob, len), CKR_KH_STORE_ERROR);
    memset(blob + 1 + 8, 0, 8);
    blob[1 + 8] = 0xF0;
    KH_CHECK_RV(kh_attrs_decode(&out, &n, blob, len), CKR_KH_STORE_ERROR);
    memcpy(blob + 1 + 8, saved, 8);
    KH_CHECK_RV(kh_attrs_decode(&out, &n, blob, len), CKR_OK);
    kh_attrs_free(out, n);
    free(blob);

    /* duplicates */
    CK_ATTRIBUTE dup[] = { { CKA_TOKEN, &t, 1 }, { CKA_TOKEN, &t, 1 } };
    KH_CHECK_RV(kh_attrs_encode(&blob, &len, dup, 2), CKR_TEMPLATE_INCONSISTENT);
    uint8_t raw[1 + 2 * 17] = { 0xA1 };
    raw[1] = (uint8_t)CKA_TOKEN;
    raw[9] = 1;
    raw[17] = 1;
    memcpy(raw + 18, raw + 1, 17);
    KH_CHECK_RV(kh_attrs_decode(&out, &n, raw, 18), CKR_OK);
    KH_CHECK(n == 1);
    kh_attrs_free(out, n);
    KH_CHECK_RV(kh_attrs_decode(&out, &n, raw, sizeof raw), CKR_KH_STORE_ERROR);

    /* nested templates cannot be serialised */
    CK_ATTRIBUTE tmpl[] = { { CKA_WRAP_TEMPLATE, in, sizeof in } };
    KH_CHECK_RV(kh_attrs_encode(&blob, &len, tmpl, 1), CKR_ATTRIBUTE_TYPE_INVALID);

    /* empty set */
    KH_CHECK_RV(kh_attrs_encode(&blob, &len, NULL, 0), CKR_OK);
    KH_CHECK(len == 1);
    KH_CHECK_RV(kh_attrs_decode(&out, &n, blob, len), CKR_OK);
    KH_CHECK(n == 0);
    kh_attrs_free(out, n);
    free(blob);
}


/* ---- PIN wraps bound to hardware (a mock of the TPM binder) ---- */

/* A pretend TPM: sealed secrets by id, with their auth values. */
#define MOCK_SLOTS 16
static struct {
    uint8_t secret[MOCK_SLOTS][32], auth[MOCK_SLOTS][32];
    int n;
    int seals, unseals, bad_auths;
    CK_RV fail_with;       /* CKR_OK, or what unseal returns instead of working */
} mock;

static CK_RV mock_seal(uint8_t secret[32], uint8_t **blob, size_t *blob_len, const uint8_t auth[32])
{
    if (mock.n == MOCK_SLOTS)
        return CKR_DEVICE_MEMORY;
    KH_CHECK_RV(kh_random(secret, 32), CKR_OK);
    memcpy(mock.secret[mock.n], secret, 32);
    memcpy(mock.auth[mock.n], auth, 32);
    *blob = malloc(1);
    **blob = (uint8_t)mock.n++;
    *blob_len = 1;
    mock.seals++;
    return CKR_OK;
}

static CK_RV mock_unseal(uint8_t secret[32], const uint8_t *blob, size_t blob_len, const uint8_t auth[32])
{
    mock.unseals++;
    if (mock.fail_with != CKR_OK)
        return mock.fail_with;
    if (blob_len != 1 || blob[0] >= mock.n)
        return CKR_FUNCTION_FAILED;
    if (memcmp(mock.auth[blob[0]], auth, 32) != 0) {
        mock.bad_auths++;
        return CKR_PIN_INCORRECT;
    }
    memcpy(secret, mock.secret[blob[0]], 32);
    return CKR_OK;
}

static const kh_pin_binder mock_binder = { mock_seal, mock_unseal };

static kh_store *open_bound_token(int64_t *tok, const char **dir)
{
    memset(&mock, 0, sizeof mock);
    kh_store *st = open_fresh(dir);
    uint8_t k[KH_TOKEN_KEY_LEN];
    kh_store_set_binder(st, &mock_binder, true);
    KH_CHECK_RV(kh_store_token_init(st, tok, 0, SO_PIN, "bound", 5, NULL), CKR_OK);
    KH_CHECK_RV(kh_store_login(st, k, *tok, CKU_SO, SO_PIN), CKR_OK);
    KH_CHECK_RV(kh_store_init_pin(st, *tok, k, USER_PIN, NULL), CKR_OK);
    return st;
}

static void test_bound_login(void)
{
    int64_t tok = 0;
    uint8_t k1[KH_TOKEN_KEY_LEN], k2[KH_TOKEN_KEY_LEN];
    kh_token_rec rec;
    kh_store *st = open_bound_token(&tok, NULL);
    KH_CHECK(mock.seals == 2); /* SO and user wraps */
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(rec.tpm_bound);
    KH_CHECK_RV(kh_store_login(st, k1, tok, CKU_USER, USER_PIN), CKR_OK);
    KH_CHECK_RV(kh_store_login(st, k2, tok, CKU_SO, SO_PIN), CKR_OK);
    KH_CHECK_MEM(k1, k2, sizeof k1);
    int before = mock.unseals;
    KH_CHECK_RV(kh_store_login(st, k1, tok, CKU_USER, (const uint8_t *)"wrong-pin", 9), CKR_PIN_INCORRECT);
    KH_CHECK(mock.unseals == before + 1 && mock.bad_auths == 1); /* the hardware saw the wrong PIN */
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(rec.user_fail == 1);
    KH_CHECK_RV(kh_store_login(st, k1, tok, CKU_USER, USER_PIN), CKR_OK);
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(rec.user_fail == 0);
    kh_store_close(st);
}

/* The PIN alone opens nothing: the wrap needs the hardware's secret. */
static void test_bound_needs_secret(void)
{
    int64_t tok = 0;
    uint8_t k[KH_TOKEN_KEY_LEN];
    kh_store *st = open_bound_token(&tok, NULL);
    for (int i = 0; i < mock.n; i++)
        mock.secret[i][0] ^= 1; /* the hardware gives back another secret */
    KH_CHECK_RV(kh_store_login(st, k, tok, CKU_USER, USER_PIN), CKR_PIN_INCORRECT);
    for (int i = 0; i < mock.n; i++)
        mock.secret[i][0] ^= 1;
    KH_CHECK_RV(kh_store_login(st, k, tok, CKU_USER, USER_PIN), CKR_OK);
    kh_store_close(st);
}

/* Lockout, another TPM, no TPM: reported as such, counted as nothing. */
static void test_bound_failures(void)
{
    int64_t tok = 0;
    uint8_t k[KH_TOKEN_KEY_LEN];
    kh_token_rec rec;
    const char *dir;
    kh_store *st = open_bound_token(&tok, &dir);
    static const CK_RV passed[] = { CKR_PIN_LOCKED, CKR_FUNCTION_FAILED, CKR_DEVICE_ERROR };
    for (size_t i = 0; i < sizeof passed / sizeof passed[0]; i++) {
        mock.fail_with = passed[i];
        KH_CHECK_RV(kh_store_login(st, k, tok, CKU_USER, USER_PIN), passed[i]);
        KH_CHECK_RV(kh_store_login(st, k, tok, CKU_SO, SO_PIN), passed[i]);
    }
    mock.fail_with = CKR_OK;
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(rec.user_fail == 0 && rec.so_fail == 0);
    /* another handle without a binder cannot open a bound token */
    kh_store *st2 = NULL;
    KH_CHECK_RV(kh_store_open(&st2, dir), CKR_OK);
    KH_CHECK_RV(kh_store_login(st2, k, tok, CKU_USER, USER_PIN), CKR_DEVICE_ERROR);
    KH_CHECK_RV(kh_store_token_get(st2, &rec, tok), CKR_OK);
    KH_CHECK(rec.tpm_bound && rec.user_fail == 0);
    kh_store_close(st2);
    kh_store_close(st);
}

/* A PIN change keeps the binding; a re-init follows bind_new. */
static void test_bound_set_pin_reinit(void)
{
    int64_t tok = 0, id2 = 0;
    uint8_t k[KH_TOKEN_KEY_LEN];
    kh_token_rec rec;
    kh_store *st = open_bound_token(&tok, NULL);
    static const uint8_t pin2[] = "new-user-pin";
    KH_CHECK_RV(kh_store_set_pin(st, tok, CKU_USER, USER_PIN, pin2, sizeof pin2 - 1, NULL), CKR_OK);
    KH_CHECK(mock.seals == 3);
    int before = mock.unseals;
    KH_CHECK_RV(kh_store_login(st, k, tok, CKU_USER, pin2, sizeof pin2 - 1), CKR_OK);
    KH_CHECK(mock.unseals == before + 1);
    KH_CHECK_RV(kh_store_login(st, k, tok, CKU_USER, USER_PIN), CKR_PIN_INCORRECT);
    /* re-initialise without binding: the token is no longer bound */
    kh_store_set_binder(st, &mock_binder, false);
    KH_CHECK_RV(kh_store_token_init(st, &id2, tok, SO_PIN, "plain", 5, NULL), CKR_OK);
    KH_CHECK(id2 == tok);
    KH_CHECK_RV(kh_store_token_get(st, &rec, tok), CKR_OK);
    KH_CHECK(!rec.tpm_bound);
    before = mock.unseals;
    KH_CHECK_RV(kh_store_login(st, k, tok, CKU_SO, SO_PIN), CKR_OK);
    KH_CHECK(mock.unseals == before);
    kh_store_close(st);
}

/* A version 1 store (before bound wraps) opens, migrates and logs in. */
static void test_migrate_v1(void)
{
    int64_t tok = 0;
    uint8_t k[KH_TOKEN_KEY_LEN];
    const char *dir;
    char path[4300];
    sqlite3 *db;
    kh_store *st = open_fresh(&dir);
    KH_CHECK_RV(kh_store_token_init(st, &tok, 0, SO_PIN, "old", 3, NULL), CKR_OK);
    kh_store_close(st);
    snprintf(path, sizeof path, "%s/keyhold.db", dir);
    KH_CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    KH_CHECK(sqlite3_exec(db, "ALTER TABLE tokens DROP COLUMN user_tpm; ALTER TABLE tokens DROP COLUMN so_tpm;"
                              "PRAGMA user_version = 1;", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    KH_CHECK(db_int(dir, "PRAGMA user_version") == 1);
    st = NULL;
    KH_CHECK_RV(kh_store_open(&st, dir), CKR_OK);
    KH_CHECK(db_int(dir, "PRAGMA user_version") == 2);
    KH_CHECK(db_int(dir, "SELECT count(*) FROM tokens WHERE so_tpm IS NULL AND user_tpm IS NULL") == 1);
    KH_CHECK_RV(kh_store_login(st, k, tok, CKU_SO, SO_PIN), CKR_OK);
    kh_store_close(st);
}

static void test_hkdf(void)
{
    /* RFC 5869 A.3: SHA-256, no salt, no info */
    uint8_t ikm3[22], okm[42];
    size_t want_len = 0;
    uint8_t *want = kh_test_unhex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
                                  "9d201395faa4b61a96c8", &want_len);
    memset(ikm3, 0x0b, sizeof ikm3);
    KH_CHECK(want_len == sizeof okm);
    KH_CHECK_RV(kh_hkdf_sha256(okm, sizeof okm, ikm3, sizeof ikm3, ""), CKR_OK);
    KH_CHECK_MEM(okm, want, sizeof okm);
    free(want);
    /* and what keyhold relies on: deterministic, separated by info */
    uint8_t a[32], b[32], c[32];
    static const uint8_t ikm[32] = { 1, 2, 3 };
    KH_CHECK_RV(kh_hkdf_sha256(a, 32, ikm, 32, "one"), CKR_OK);
    KH_CHECK_RV(kh_hkdf_sha256(b, 32, ikm, 32, "one"), CKR_OK);
    KH_CHECK_RV(kh_hkdf_sha256(c, 32, ikm, 32, "two"), CKR_OK);
    KH_CHECK_MEM(a, b, 32);
    KH_CHECK(memcmp(a, c, 32) != 0);
}

int main(int argc, char **argv)
{
    if (!getenv("KEYHOLD_KDF_LOG2N"))
        setenv("KEYHOLD_KDF_LOG2N", "10", 1);
    kh_test_register("/store/open/modes", test_open_modes);
    kh_test_register("/store/open/reopen", test_open_reopen);
    kh_test_register("/store/open/newer-version", test_open_newer_version);
    kh_test_register("/store/open/not-a-db", test_open_not_a_db);
    kh_test_register("/store/open/default-dir", test_default_dir);
    kh_test_register("/store/token/init-list-get", test_token_init_list_get);
    kh_test_register("/store/token/login", test_login);
    kh_test_register("/store/token/login-kdf-params", test_login_kdf_params);
    kh_test_register("/store/token/set-pin", test_set_pin);
    kh_test_register("/store/token/reinit", test_token_reinit);
    kh_test_register("/store/obj/crud", test_obj_crud);
    kh_test_register("/store/obj/find", test_obj_find);
    kh_test_register("/store/obj/bulk", test_obj_bulk);
    kh_test_register("/store/two-handles", test_two_handles);
    kh_test_register("/store/two-handles/login-concurrent", test_login_concurrent);
    kh_test_register("/store/two-handles/stamp", test_stamp);
    kh_test_register("/store/audit", test_audit);
    kh_test_register("/store/obj/insert-audited", test_insert_audited);
    kh_test_register("/store/seal", test_seal);
    kh_test_register("/store/kdf", test_kdf);
    kh_test_register("/store/attrs", test_attrs);
    kh_test_register("/store/bound/login", test_bound_login);
    kh_test_register("/store/bound/needs-secret", test_bound_needs_secret);
    kh_test_register("/store/bound/failures", test_bound_failures);
    kh_test_register("/store/bound/set-pin-reinit", test_bound_set_pin_reinit);
    kh_test_register("/store/migrate-v1", test_migrate_v1);
    kh_test_register("/store/hkdf", test_hkdf);
    return kh_test_run(argc, argv);
}

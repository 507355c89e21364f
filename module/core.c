/*
 * The module's general, slot, token and login functions: C_Initialize and
 * C_Finalize (locking model, fork detection), slots (one per token in the
 * store plus one free slot for C_InitToken), token info, PINs and login.
 *
 * C_Initialize reads nothing from the store; the store is opened on first
 * use, under its own mutex, never under the global lock.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

kh_module kh_mod;

/* ---- mutexes ---- */

struct kh_mutex {
    void *app;                  /* application mutex (callbacks) */
    pthread_mutex_t os;
};

static CK_C_INITIALIZE_ARGS kh_app_locks; /* CreateMutex != NULL: use the callbacks */

CK_RV kh_mutex_configure(const CK_C_INITIALIZE_ARGS *args)
{
    memset(&kh_app_locks, 0, sizeof kh_app_locks);
    if (!args)
        return CKR_OK;
    if (args->pReserved)
        return CKR_ARGUMENTS_BAD;
    bool some = args->CreateMutex || args->DestroyMutex || args->LockMutex || args->UnlockMutex;
    bool all = args->CreateMutex && args->DestroyMutex && args->LockMutex && args->UnlockMutex;
    if (some && !all)
        return CKR_ARGUMENTS_BAD;
    /* With CKF_OS_LOCKING_OK we may use OS locks even when callbacks are given. */
    if (all && !(args->flags & CKF_OS_LOCKING_OK))
        kh_app_locks = *args;
    return CKR_OK;
}

CK_RV kh_mutex_new(kh_mutex **out)
{
    kh_mutex *m = calloc(1, sizeof *m);
    if (!m)
        return CKR_HOST_MEMORY;
    if (kh_app_locks.CreateMutex) {
        CK_RV rv = kh_app_locks.CreateMutex(&m->app);
        if (rv != CKR_OK) {
            free(m);
            return rv;
        }
    } else if (pthread_mutex_init(&m->os, NULL) != 0) {
        free(m);
        return CKR_CANT_LOCK;
    }
    *out = m;
    return CKR_OK;
}

void kh_mutex_free(kh_mutex *m)
{
    if (!m)
        return;
    if (m->app)
        kh_app_locks.DestroyMutex(m->app);
    else
        pthread_mutex_destroy(&m->os);
    free(m);
}

void kh_mutex_lock(kh_mutex *m)
{
    if (m->app)
        kh_app_locks.LockMutex(m->app);
    else
        pthread_mutex_lock(&m->os);
}

void kh_mutex_unlock(kh_mutex *m)
{
    if (m->app)
        kh_app_locks.UnlockMutex(m->app);
    else
        pthread_mutex_unlock(&m->os);
}

/* ---- configuration ---- */

static bool parse_bool(const char *v)
{
    return !strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on");
}

static CK_ULONG backend_from_name(const char *v)
{
    if (!strcmp(v, "vault"))
        return CKV_KH_BACKEND_VAULT;
    if (!strcmp(v, "tpm"))
        return CKV_KH_BACKEND_TPM;
    if (!strcmp(v, "remote"))
        return CKV_KH_BACKEND_REMOTE;
    return 0;
}

/*
 * KEYHOLD_CONF: "key = value" lines, '#' comments. Unknown keys are logged
 * and ignored so an older module reads a newer file.
 */
static CK_RV config_read_file(kh_config *cfg, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        kh_log(KH_LOG_ERROR, "cannot open configuration %s: %s", path, strerror(errno));
        return CKR_GENERAL_ERROR;
    }
    char line[4352];
    unsigned lineno = 0;
    CK_RV rv = CKR_OK;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *p = line + strspn(line, " \t");
        if (*p == '#' || *p == '\n' || *p == '\0')
            continue;
        char *eq = strchr(p, '=');
        if (!eq) {
            kh_log(KH_LOG_ERROR, "%s:%u: expected key = value", path, lineno);
            rv = CKR_GENERAL_ERROR;
            break;
        }
        char *key = p, *val = eq + 1;
        char *end = eq;
        while (end > key && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        *end = '\0';
        val += strspn(val, " \t");
        val[strcspn(val, "\r\n")] = '\0';
        end = val + strlen(val);
        while (end > val && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = '\0';
        if (!strcmp(key, "store")) {
            snprintf(cfg->store_dir, sizeof cfg->store_dir, "%s", val);
        } else if (!strcmp(key, "key_cache")) {
            cfg->cache_enabled = parse_bool(val);
        } else if (!strcmp(key, "key_cache_max")) {
            cfg->cache_max_keys = strtoul(val, NULL, 10);
        } else if (!strcmp(key, "key_cache_idle")) {
            cfg->cache_idle_s = (unsigned)strtoul(val, NULL, 10);
        } else if (!strcmp(key, "default_backend")) {
            CK_ULONG b = backend_from_name(val);
            if (!b) {
                kh_log(KH_LOG_ERROR, "%s:%u: unknown backend", path, lineno);
                rv = CKR_GENERAL_ERROR;
                break;
            }
            cfg->default_backend = b;
        } else if (!strncmp(key, "remote_", 7)) {
            const char *why;
            if (!kh_remote_config_set(&cfg->remote, key, val, &why)) {
                kh_log(KH_LOG_ERROR, "%s:%u: %s", path, lineno, why);
                rv = CKR_GENERAL_ERROR;
                break;
            }
        } else if (!strcmp(key, "tcti")) {
            if (strlen(val) >= sizeof cfg->tcti || !*val) {
                kh_log(KH_LOG_ERROR, "%s:%u: tcti is empty or too long", path, lineno);
                rv = CKR_GENERAL_ERROR;
                break;
            }
            snprintf(cfg->tcti, sizeof cfg->tcti, "%s", val);
            cfg->tcti_set = true;
        } else if (!strcmp(key, "tpm_primary")) {
            char *hend;
            unsigned long h = strtoul(val, &hend, 0);
            if (*hend || h < 0x81000000UL || h > 0x81FFFFFFUL) {
                kh_log(KH_LOG_ERROR, "%s:%u: tpm_primary is not a persistent handle (0x81xxxxxx)", path,
                       lineno);
                rv = CKR_GENERAL_ERROR;
                break;
            }
            cfg->tpm_primary = (uint32_t)h;
        } else if (!strcmp(key, "tpm_handles")) {
            cfg->tpm_handles = (unsigned)strtoul(val, NULL, 10);
        } else if (!strcmp(key, "tpm_timeout")) {
            cfg->tpm_timeout_ms = (unsigned)strtoul(val, NULL, 10);
        } else if (!strcmp(key, "tpm_seal")) {
            if (!strcmp(val, "auto"))
                cfg->tpm_seal = KH_TPM_SEAL_AUTO;
            else if (parse_bool(val))
                cfg->tpm_seal = KH_TPM_SEAL_ON;
            else if (!strcmp(val, "0") || !strcasecmp(val, "off") || !strcasecmp(val, "no") ||
                     !strcasecmp(val, "false"))
                cfg->tpm_seal = KH_TPM_SEAL_OFF;
            else {
                kh_log(KH_LOG_ERROR, "%s:%u: tpm_seal is auto, on or off", path, lineno);
                rv = CKR_GENERAL_ERROR;
                break;
            }
        } else if (!strcmp(key, "log_level")) {
            cfg->log_level = !strcmp(val, "error") ? KH_LOG_ERROR : !strcmp(val, "warn") ? KH_LOG_WARN
                : !strcmp(val, "info") ? KH_LOG_INFO : !strcmp(val, "debug") ? KH_LOG_DEBUG : 0;
        } else {
            kh_log(KH_LOG_WARN, "%s:%u: unknown key ignored", path, lineno);
        }
    }
    fclose(f);
    return rv;
}

CK_RV kh_config_load(kh_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->cache_enabled = true;
    cfg->cache_max_keys = 4096;
    cfg->cache_idle_s = 300;
    cfg->default_backend = CKV_KH_BACKEND_VAULT;
    kh_remote_config_defaults(&cfg->remote);
    const char *conf = getenv("KEYHOLD_CONF");
    if (conf && *conf) {
        CK_RV rv = config_read_file(cfg, conf);
        if (rv != CKR_OK)
            return rv;
    }
    const char *store = getenv("KEYHOLD_STORE");
    if (store && *store)
        snprintf(cfg->store_dir, sizeof cfg->store_dir, "%s", store);
    const char *tcti = getenv("KEYHOLD_TCTI");
    if (tcti && *tcti) {
        if (strlen(tcti) >= sizeof cfg->tcti) {
            kh_log(KH_LOG_ERROR, "KEYHOLD_TCTI is too long");
            return CKR_GENERAL_ERROR;
        }
        snprintf(cfg->tcti, sizeof cfg->tcti, "%s", tcti);
        cfg->tcti_set = true;
    }
    if (!cfg->store_dir[0])
        return kh_store_default_dir(cfg->store_dir, sizeof cfg->store_dir);
    return CKR_OK;
}

/* ---- tokens and slots (under the global lock) ---- */

static kh_token **kh_tokens;   /* tokens this process has touched */
static size_t kh_ntokens;

/* The kh_token for id, created on first use. Caller holds kh_mod.lock. */
static CK_RV token_lookup_locked(kh_token **out, int64_t id)
{
    for (size_t i = 0; i < kh_ntokens; i++) {
        if (kh_tokens[i]->id == id) {
            *out = kh_tokens[i];
            return CKR_OK;
        }
    }
    kh_token **grown = realloc(kh_tokens, (kh_ntokens + 1) * sizeof *grown);
    if (!grown)
        return CKR_HOST_MEMORY;
    kh_tokens = grown;
    kh_token *tok = calloc(1, sizeof *tok);
    if (!tok)
        return CKR_HOST_MEMORY;
    CK_RV rv = kh_mutex_new(&tok->lock);
    if (rv != CKR_OK) {
        free(tok);
        return rv;
    }
    tok->id = id;
    tok->login = KH_NOT_LOGGED_IN;
    kh_tokens[kh_ntokens++] = tok;
    *out = tok;
    return CKR_OK;
}

/*
 * login and login_gen are written under tok->lock and read without it on the
 * signing path (kh_token_user_logged_in, the vault's generation check). The
 * generation is bumped before the key cache is flushed: a signer that inserts
 * a decoded key after the flush then sees the new generation and flushes
 * again itself (vault.c).
 */
static void token_logout_locked(kh_token *tok)
{
    bool was_in = tok->login != KH_NOT_LOGGED_IN;
    if (tok->key) {
        kh_secmem_free(tok->key, KH_TOKEN_KEY_LEN);
        tok->key = NULL;
    }
    __atomic_store_n(&tok->login, KH_NOT_LOGGED_IN, __ATOMIC_RELEASE);
    __atomic_add_fetch(&tok->login_gen, 1, __ATOMIC_SEQ_CST);
    if (was_in)
        kh_keycache_flush_token(tok->rec.uid);
}

static void tokens_free_all(void)
{
    for (size_t i = 0; i < kh_ntokens; i++) {
        token_logout_locked(kh_tokens[i]);
        kh_mutex_free(kh_tokens[i]->lock);
        free(kh_tokens[i]);
    }
    free(kh_tokens);
    kh_tokens = NULL;
    kh_ntokens = 0;
}

CK_RV kh_token_key_copy(kh_token *tok, uint8_t out[KH_TOKEN_KEY_LEN])
{
    CK_RV rv = CKR_USER_NOT_LOGGED_IN;
    kh_mutex_lock(tok->lock);
    if (tok->key) {
        memcpy(out, tok->key, KH_TOKEN_KEY_LEN);
        rv = CKR_OK;
    }
    kh_mutex_unlock(tok->lock);
    return rv;
}

bool kh_token_user_logged_in(kh_token *tok)
{
    return __atomic_load_n(&tok->login, __ATOMIC_ACQUIRE) == CKU_USER;
}

/* PIN wraps bound to the TPM: the tpm backend's pin_seal / pin_unseal. */
static kh_pin_binder kh_tpm_binder;

/*
 * Give the store the TPM binder (bound tokens log in through it), and say
 * whether new tokens are bound: tpm_seal = on, or auto with a TPM configured
 * (tcti set, or default_backend = tpm).
 */
static void store_bind(kh_store *st)
{
    const kh_backend_ops *tpm = kh_backend_get(CKV_KH_BACKEND_TPM);
    if (!tpm || !tpm->pin_seal || !tpm->pin_unseal) {
        kh_store_set_binder(st, NULL, false);
        return;
    }
    kh_tpm_binder.seal = tpm->pin_seal;
    kh_tpm_binder.unseal = tpm->pin_unseal;
    bool bind_new = kh_mod.cfg.tpm_seal == KH_TPM_SEAL_ON ||
                    (kh_mod.cfg.tpm_seal == KH_TPM_SEAL_AUTO && tpm->configured && tpm->configured());
    kh_store_set_binder(st, &kh_tpm_binder, bind_new);
}

CK_RV kh_store_acquire(kh_store **out)
{
    kh_mutex_lock(kh_mod.store_lock);
    if (!kh_mod.store) {
        kh_store *st = NULL;
        CK_RV rv = kh_store_open(&st, kh_mod.cfg.store_dir);
        if (rv != CKR_OK) {
            kh_mutex_unlock(kh_mod.store_lock);
            kh_log(KH_LOG_ERROR, "cannot open the token store (rv 0x%lx)", rv);
            return rv;
        }
        store_bind(st);
        /* Published for lock-free readers of its stamp (object.c keys_fresh). */
        __atomic_store_n(&kh_mod.store, st, __ATOMIC_RELEASE);
    }
    *out = kh_mod.store;
    return CKR_OK;
}

CK_RV kh_token_hw_random(kh_token *tok, uint8_t *buf, size_t len)
{
    kh_mutex_lock(tok->lock);
    bool bound = tok->rec.tpm_bound;
    kh_mutex_unlock(tok->lock);
    const kh_backend_ops *tpm = kh_backend_get(CKV_KH_BACKEND_TPM);
    if (!bound || !tpm || !tpm->random)
        return CKR_FUNCTION_NOT_SUPPORTED;
    return tpm->random(buf, len);
}

void kh_store_release(void)
{
    kh_mutex_unlock(kh_mod.store_lock);
}

/*
 * The slot set: every token id in the store, then the free slot (one more
 * than the largest id). Out: *ids (malloc'd), *n, and the token records.
 */
static CK_RV slots_read(kh_token_rec **recs, size_t *n, int64_t *free_id)
{
    kh_store *st;
    CK_RV rv = kh_store_acquire(&st);
    if (rv != CKR_OK)
        return rv;
    rv = kh_store_token_list(st, recs, n);
    kh_store_release();
    if (rv != CKR_OK)
        return rv;
    int64_t max = 0;
    for (size_t i = 0; i < *n; i++)
        if ((*recs)[i].id > max)
            max = (*recs)[i].id;
    *free_id = max + 1;
    return CKR_OK;
}

/*
 * Resolve a slot id. Out: *rec filled (rec->id == 0 for the free slot).
 * CKR_SLOT_ID_INVALID when it is neither a token nor the free slot.
 */
static CK_RV slot_resolve(kh_token_rec *rec, CK_SLOT_ID slot)
{
    kh_token_rec *recs = NULL;
    size_t n = 0;
    int64_t free_id;
    CK_RV rv = slots_read(&recs, &n, &free_id);
    if (rv != CKR_OK)
        return rv;
    rv = CKR_SLOT_ID_INVALID;
    memset(rec, 0, sizeof *rec);
    for (size_t i = 0; i < n; i++) {
        if ((CK_SLOT_ID)recs[i].id == slot) {
            *rec = recs[i];
            rv = CKR_OK;
        }
    }
    if (rv != CKR_OK && slot == (CK_SLOT_ID)free_id)
        rv = CKR_OK;
    free(recs);
    return rv;
}

CK_RV kh_token_get(kh_token **out, CK_SLOT_ID slot, bool need_initialized)
{
    kh_token_rec rec;
    CK_RV rv = slot_resolve(&rec, slot);
    if (rv != CKR_OK)
        return rv;
    if (rec.id == 0 && need_initialized)
        return CKR_TOKEN_NOT_RECOGNIZED;
    kh_mutex_lock(kh_mod.lock);
    rv = token_lookup_locked(out, (int64_t)slot);
    kh_mutex_unlock(kh_mod.lock);
    if (rv != CKR_OK)
        return rv;
    kh_mutex_lock((*out)->lock);
    if (rec.id != 0) {
        if ((*out)->rec.id && memcmp((*out)->rec.uid, rec.uid, KH_UID_LEN) != 0)
            token_logout_locked(*out); /* re-initialised by another process */
        (*out)->rec = rec;
    }
    kh_mutex_unlock((*out)->lock);
    return CKR_OK;
}

/* ---- backends' life cycle ---- */

static CK_RV backends_init(void)
{
    size_t n;
    const kh_backend_ops *const *b = kh_backends(&n);
    for (size_t i = 0; i < n; i++) {
        if (b[i]->init) {
            CK_RV rv = b[i]->init();
            if (rv != CKR_OK) {
                while (i-- > 0)
                    if (b[i]->finalize)
                        b[i]->finalize();
                return rv;
            }
        }
    }
    return CKR_OK;
}

static void backends_finalize(void)
{
    size_t n;
    const kh_backend_ops *const *b = kh_backends(&n);
    for (size_t i = 0; i < n; i++)
        if (b[i]->finalize)
            b[i]->finalize();
}

static void backends_forked(void)
{
    size_t n;
    const kh_backend_ops *const *b = kh_backends(&n);
    for (size_t i = 0; i < n; i++)
        if (b[i]->forked)
            b[i]->forked();
}

/* ---- fork ---- */

/*
 * Fork detection without a system call on every Cryptoki call: one page
 * mapped with MADV_WIPEONFORK holds a marker, which the kernel replaces by
 * zeros in a forked child (however the child was made). A call that reads
 * the marker knows it runs in the process that set it; one that does not
 * (a child, or a kernel before 4.14 without MADV_WIPEONFORK, where the page
 * is not kept) compares getpid() with kh_mod.pid as before. getpid() is a
 * real system call in glibc >= 2.25 (no pid cache), and kh_check_fork runs
 * twice per signature, so this keeps it off the signing path.
 */
#define KH_FORK_MARK 0x6b682d616c697665ULL   /* "kh-alive" */
static volatile uint64_t *kh_fork_page;

static void fork_mark_arm(void)
{
#ifdef MADV_WIPEONFORK
    if (!kh_fork_page) {
        long pg = sysconf(_SC_PAGESIZE);
        void *p = mmap(NULL, (size_t)pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return;
        if (madvise(p, (size_t)pg, MADV_WIPEONFORK) != 0) {
            munmap(p, (size_t)pg);
            return;
        }
        kh_fork_page = p;
    }
    *kh_fork_page = KH_FORK_MARK;
#endif
}

void kh_fork_cleanup(void)
{
    if (kh_fork_page) {
        munmap((void *)kh_fork_page, (size_t)sysconf(_SC_PAGESIZE));
        kh_fork_page = NULL;
    }
}

/*
 * SQLite is not fork-safe while one of its calls is running: a thread of the
 * parent inside it (holding SQLite's own VFS mutex) when another thread forks
 * leaves that mutex locked forever in the child, whose first store access
 * then hangs. Around fork() the module therefore holds its store lock, so no
 * thread of this process is inside SQLite at that moment. The child never
 * touches the held lock: kh_check_fork replaces it. Registered once per
 * process; glibc unregisters the handlers when the module is unloaded.
 */
static kh_mutex *fork_held;

static void fork_prepare(void)
{
    kh_mutex *l = kh_mod.initialized ? kh_mod.store_lock : NULL;
    if (l)
        kh_mutex_lock(l);
    fork_held = l;
}

static void fork_parent(void)
{
    if (fork_held)
        kh_mutex_unlock(fork_held);
    fork_held = NULL;
}

static void fork_child(void)
{
    fork_held = NULL; /* left locked: the child's first call builds new locks */
}

static pthread_once_t fork_handlers_once = PTHREAD_ONCE_INIT;

static void fork_handlers_register(void)
{
    if (pthread_atfork(fork_prepare, fork_parent, fork_child) != 0)
        kh_log(KH_LOG_WARN, "pthread_atfork failed: forking while another thread uses the store may hang the child");
}

CK_RV kh_check_fork(void)
{
    if (!kh_mod.initialized)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (kh_fork_page && *kh_fork_page == KH_FORK_MARK)
        return CKR_OK;
    if (kh_mod.pid == getpid())
        return CKR_OK;
    /*
     * A forked child: the parent's locks may be held by threads that do not
     * exist here, its SQLite connection must not be used, and its login state
     * does not carry over. Rebuild from scratch (leaking the old mutexes).
     */
    if (kh_mod.store)
        kh_store_abandon(kh_mod.store);
    kh_mod.store = NULL;
    if (kh_mutex_new(&kh_mod.lock) != CKR_OK || kh_mutex_new(&kh_mod.store_lock) != CKR_OK) {
        kh_mod.initialized = false;
        return CKR_HOST_MEMORY;
    }
    for (size_t i = 0; i < kh_ntokens; i++) {
        kh_token *tok = kh_tokens[i];
        if (kh_mutex_new(&tok->lock) != CKR_OK) {
            kh_mod.initialized = false;
            return CKR_HOST_MEMORY;
        }
        tok->key = NULL; /* secmem is MADV_WIPEONFORK: nothing to wipe here */
        tok->login = KH_NOT_LOGGED_IN;
        tok->login_gen++;
        tok->nsessions = tok->nrw_sessions = 0;
    }
    kh_sessions_drop_all();
    kh_objects_forked();
    if (!kh_mod.initialized)
        return CKR_HOST_MEMORY;
    kh_keycache_flush_all();
    backends_forked();
    kh_mod.pid = getpid();
    fork_mark_arm();
    return CKR_OK;
}

/* ---- general functions ---- */

/*
 * C_Initialize and C_Finalize change the module's state as a whole; two
 * threads calling C_Initialize at once (pkcs11-tool --test-threads does)
 * must not both build it. An OS mutex (the application's callbacks are not
 * known yet) serialises them.
 */
static pthread_mutex_t kh_init_lock = PTHREAD_MUTEX_INITIALIZER;

static CK_RV initialize_serialised(CK_VOID_PTR pInitArgs);
static CK_RV finalize_serialised(CK_VOID_PTR pReserved);

CK_RV kh_Initialize(CK_VOID_PTR pInitArgs)
{
    pthread_mutex_lock(&kh_init_lock);
    CK_RV rv = initialize_serialised(pInitArgs);
    pthread_mutex_unlock(&kh_init_lock);
    return rv;
}

CK_RV kh_Finalize(CK_VOID_PTR pReserved)
{
    pthread_mutex_lock(&kh_init_lock);
    CK_RV rv = finalize_serialised(pReserved);
    pthread_mutex_unlock(&kh_init_lock);
    return rv;
}

static CK_RV initialize_serialised(CK_VOID_PTR pInitArgs)
{
    CK_C_INITIALIZE_ARGS *args = pInitArgs;
    if (kh_mod.initialized) {
        if (kh_mod.pid == getpid())
            return CKR_CRYPTOKI_ALREADY_INITIALIZED;
        /* a forked child initialising again: start from a clean state */
        CK_RV rv = kh_check_fork();
        if (rv != CKR_OK)
            return rv;
        return CKR_OK;
    }
    CK_RV rv = kh_mutex_configure(args);
    if (rv != CKR_OK)
        return rv;
    if (args && (args->flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS)) {
        /* keyhold starts no threads: nothing to do */
    }
    rv = kh_config_load(&kh_mod.cfg);
    if (rv != CKR_OK)
        return rv;
    kh_log_set_level(kh_mod.cfg.log_level);
    /* tpm2-tss logs to stderr unless told otherwise; keyhold is quiet by default. */
    if (!getenv("TSS2_LOG") && !kh_log_enabled(KH_LOG_DEBUG))
        setenv("TSS2_LOG", "all+NONE", 0);
    rv = kh_crypto_init();
    if (rv != CKR_OK)
        return rv;
    rv = kh_mutex_new(&kh_mod.lock);
    if (rv != CKR_OK)
        return rv;
    rv = kh_mutex_new(&kh_mod.store_lock);
    if (rv != CKR_OK) {
        kh_mutex_free(kh_mod.lock);
        return rv;
    }
    rv = kh_sessions_init();
    if (rv == CKR_OK) {
        rv = backends_init();
        if (rv != CKR_OK)
            kh_sessions_free_all();
    }
    if (rv != CKR_OK) {
        kh_mutex_free(kh_mod.store_lock);
        kh_mutex_free(kh_mod.lock);
        return rv;
    }
    kh_keycache_configure(kh_mod.cfg.cache_enabled, kh_mod.cfg.cache_max_keys, kh_mod.cfg.cache_idle_s);
    kh_mod.pid = getpid();
    fork_mark_arm();
    pthread_once(&fork_handlers_once, fork_handlers_register);
    kh_mod.store = NULL;
    kh_mod.initialized = true;
    return CKR_OK;
}

static CK_RV finalize_serialised(CK_VOID_PTR pReserved)
{
    if (pReserved)
        return CKR_ARGUMENTS_BAD;
    CK_RV rv = kh_check_fork();
    if (rv != CKR_OK)
        return rv;
    kh_sessions_free_all();
    kh_objects_free_all();
    tokens_free_all();
    kh_keycache_shutdown();
    backends_finalize();
    if (kh_mod.store)
        kh_store_close(kh_mod.store);
    kh_mod.store = NULL;
    kh_mutex_free(kh_mod.store_lock);
    kh_mutex_free(kh_mod.lock);
    kh_mod.initialized = false;
    return CKR_OK;
}

static void pad_copy(CK_UTF8CHAR *dst, size_t dlen, const char *src)
{
    size_t n = strlen(src);
    if (n > dlen)
        n = dlen;
    memset(dst, ' ', dlen);
    memcpy(dst, src, n);
}

CK_RV kh_GetInfo(CK_INFO_PTR pInfo)
{
    CK_RV rv = kh_check_fork();
    if (rv != CKR_OK)
        return rv;
    if (!pInfo)
        return CKR_ARGUMENTS_BAD;
    memset(pInfo, 0, sizeof *pInfo);
    pInfo->cryptokiVersion.major = 3;
    pInfo->cryptokiVersion.minor = 0;
    pad_copy(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "keyhold");
    pad_copy(pInfo->libraryDescription, sizeof pInfo->libraryDescription, "keyhold PKCS#11 module");
    pInfo->libraryVersion.major = 0;
    pInfo->libraryVersion.minor = 1;
    return CKR_OK;
}

/* Shared helper for every "array out" call: length query and CKR_BUFFER_TOO_SMALL. */
CK_RV kh_out_ulongs(CK_ULONG_PTR out, CK_ULONG_PTR count, const CK_ULONG *vals, size_t n)
{
    if (!count)
        return CKR_ARGUMENTS_BAD;
    if (!out) {
        *count = n;
        return CKR_OK;
    }
    if (*count < n) {
        *count = n;
        return CKR_BUFFER_TOO_SMALL;
    }
    memcpy(out, vals, n * sizeof *vals);
    *count = n;
    return CKR_OK;
}

CK_RV kh_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
    (void)tokenPresent; /* every slot always holds a token (the free slot's is uninitialised) */
    CK_RV rv = kh_check_fork();
    if (rv != CKR_OK)
        return rv;
    if (!pulCount)
        return CKR_ARGUMENTS_BAD;
    kh_token_rec *recs = NULL;
    size_t n = 0;
    int64_t free_id;
    rv = slots_read(&recs, &n, &free_id);
    if (rv != CKR_OK)
        return rv;
    CK_SLOT_ID *ids = malloc((n + 1) * sizeof *ids);
    if (!ids) {
        free(recs);
        return CKR_HOST_MEMORY;
    }
    for (size_t i = 0; i < n; i++)
        ids[i] = (CK_SLOT_ID)recs[i].id;
    ids[n] = (CK_SLOT_ID)free_id;
    rv = kh_out_ulongs(pSlotList, pulCount, ids, n + 1);
    free(ids);
    free(recs);
    return rv;
}

CK_RV kh_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
    CK_RV rv = kh_check_fork();
    if (rv != CKR_OK)
        return rv;
    if (!pInfo)
        return CKR_ARGUMENTS_BAD;
    kh_token_rec rec;
    rv = slot_resolve(&rec, slotID);
    if (rv != CKR_OK)
        return rv;
    memset(pInfo, 0, sizeof *pInfo);
    pad_copy(pInfo->slotDescription, sizeof pInfo->slotDescription,
             rec.id ? "keyhold token slot" : "keyhold free slot (C_InitToken)");
    pad_copy(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "keyhold");
    pInfo->flags = CKF_TOKEN_PRESENT;
    pInfo->hardwareVersion.major = 0;
    pInfo->firmwareVersion.major = 0;
    pInfo->firmwareVersion.minor = 1;
    return CKR_OK;
}

CK_RV kh_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
    CK_RV rv = kh_check_fork();
    if (rv != CKR_OK)
        return rv;
    if (!pInfo)
        return CKR_ARGUMENTS_BAD;
    kh_token_rec rec;
    rv = slot_resolve(&rec, slotID);
    if (rv != CKR_OK)
        return rv;
    memset(pInfo, 0, sizeof *pInfo);
    pad_copy(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "keyhold");
    pad_copy(pInfo->model, sizeof pInfo->model, rec.tpm_bound ? "vault+tpm" : "vault");
    pInfo->flags = CKF_RNG | CKF_LOGIN_REQUIRED;
    if (rec.id) {
        pad_copy(pInfo->label, sizeof pInfo->label, rec.label);
        pad_copy((CK_UTF8CHAR *)pInfo->serialNumber, sizeof pInfo->serialNumber, rec.serial);
        pInfo->flags |= CKF_TOKEN_INITIALIZED;
        if (rec.user_pin_set)
            pInfo->flags |= CKF_USER_PIN_INITIALIZED;
        if (rec.user_fail > 0)
            pInfo->flags |= CKF_USER_PIN_COUNT_LOW;
        if (rec.user_fail + 1 == KH_PIN_MAX_TRIES)
            pInfo->flags |= CKF_USER_PIN_FINAL_TRY;
        if (rec.user_fail >= KH_PIN_MAX_TRIES)
            pInfo->flags |= CKF_USER_PIN_LOCKED;
        if (rec.so_fail > 0)
            pInfo->flags |= CKF_SO_PIN_COUNT_LOW;
        if (rec.so_fail + 1 == KH_PIN_MAX_TRIES)
            pInfo->flags |= CKF_SO_PIN_FINAL_TRY;
        if (rec.so_fail >= KH_PIN_MAX_TRIES)
            pInfo->flags |= CKF_SO_PIN_LOCKED;
        /* A bound token's PINs open through the TPM: in its dictionary-attack
         * lockout no PIN logs in (CKR_PIN_LOCKED), and the flags say so. A TPM
         * that does not answer changes no flag (C_Login reports it). */
        const kh_backend_ops *tpm = kh_backend_get(CKV_KH_BACKEND_TPM);
        bool locked = false;
        if (rec.tpm_bound && tpm && tpm->lockout && tpm->lockout(&locked) == CKR_OK && locked)
            pInfo->flags |= CKF_USER_PIN_LOCKED | CKF_SO_PIN_LOCKED;
    } else {
        pad_copy(pInfo->label, sizeof pInfo->label, "");
        pad_copy((CK_UTF8CHAR *)pInfo->serialNumber, sizeof pInfo->serialNumber, "");
    }
    kh_mutex_lock(kh_mod.lock);
    for (size_t i = 0; i < kh_ntokens; i++) {
        if (kh_tokens[i]->id == (int64_t)slotID) {
            pInfo->ulSessionCount = kh_tokens[i]->nsessions;
            pInfo->ulRwSessionCount = kh_tokens[i]->nrw_sessions;
        }
    }
    kh_mutex_unlock(kh_mod.lock);
    pInfo->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
    pInfo->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
    pInfo->ulMaxPinLen = 256;
    pInfo->ulMinPinLen = 4;
    pInfo->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
    pInfo->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
    pInfo->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
    pInfo->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
    pInfo->firmwareVersion.minor = 1;
    memset(pInfo->utcTime, ' ', sizeof pInfo->utcTime);
    return CKR_OK;
}

static bool pin_len_ok(CK_ULONG len)
{
    return len >= 4 && len <= 256;
}

CK_RV kh_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel)
{
    CK_RV rv = kh_check_fork();
    if (rv != CKR_OK)
        return rv;
    if (!pPin || !pLabel)
        return CKR_ARGUMENTS_BAD;
    if (!pin_len_ok(ulPinLen))
        return CKR_PIN_LEN_RANGE;
    kh_token *tok;
    rv = kh_token_get(&tok, slotID, false);
    if (rv != CKR_OK)
        return rv;
    kh_mutex_lock(kh_mod.lock);
    bool busy = tok->nsessions > 0;
    kh_mutex_unlock(kh_mod.lock);
    if (busy)
        return CKR_SESSION_EXISTS;
    kh_kdf_params kdf;
    kh_kdf_default(&kdf);
    kh_store *st;
    rv = kh_store_acquire(&st);
    if (rv != CKR_OK)
        return rv;
    int64_t id = 0;
    rv = kh_store_token_init(st, &id, (int64_t)slotID, pPin, ulPinLen, (const char *)pLabel, 32, &kdf);
    if (rv == CKR_OK) {
        kh_store_token_set_default_backend(st, id, kh_mod.cfg.default_backend);
        kh_store_audit(st, id, "init-token", NULL);
    }
    kh_store_release();
    if (rv != CKR_OK)
        return rv;
    kh_mutex_lock(tok->lock);
    token_logout_locked(tok);
    memset(&tok->rec, 0, sizeof tok->rec);
    kh_mutex_unlock(tok->lock);
    /* drop session objects of the old token incarnation */
    kh_objects_drop_token(id);
    return kh_token_get(&tok, slotID, true);
}

/* ---- login ---- */

CK_RV kh_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    kh_token *tok = s->tok;
    if (userType == CKU_CONTEXT_SPECIFIC) {
        rv = CKR_OPERATION_NOT_INITIALIZED; /* no key here needs CKA_ALWAYS_AUTHENTICATE */
        goto out_put;
    }
    if (userType != CKU_USER && userType != CKU_SO) {
        rv = CKR_USER_TYPE_INVALID;
        goto out_put;
    }
    if (!pPin && ulPinLen) {
        rv = CKR_ARGUMENTS_BAD;
        goto out_put;
    }
    kh_mutex_lock(tok->lock);
    CK_USER_TYPE cur = tok->login;
    kh_mutex_unlock(tok->lock);
    if (cur == userType) {
        rv = CKR_USER_ALREADY_LOGGED_IN;
        goto out_put;
    }
    if (cur != KH_NOT_LOGGED_IN) {
        rv = CKR_USER_ANOTHER_ALREADY_LOGGED_IN;
        goto out_put;
    }
    if (userType == CKU_SO) {
        kh_mutex_lock(kh_mod.lock);
        bool ro = tok->nsessions > tok->nrw_sessions;
        kh_mutex_unlock(kh_mod.lock);
        if (ro) {
            rv = CKR_SESSION_READ_ONLY_EXISTS;
            goto out_put;
        }
    }
    uint8_t *key = kh_secmem_alloc(KH_TOKEN_KEY_LEN);
    if (!key) {
        rv = CKR_HOST_MEMORY;
        goto out_put;
    }
    /* The slow KDF runs under the store mutex only (one connection), never the global lock. */
    kh_store *st;
    rv = kh_store_acquire(&st);
    if (rv != CKR_OK) {
        kh_secmem_free(key, KH_TOKEN_KEY_LEN);
        goto out_put;
    }
    rv = kh_store_login(st, key, tok->id, userType, pPin ? pPin : (CK_UTF8CHAR_PTR)"", ulPinLen);
    kh_store_audit(st, tok->id, userType == CKU_SO ? "login-so" : "login-user",
                   rv == CKR_OK ? "ok" : "failed");
    kh_store_release();
    if (rv != CKR_OK) {
        kh_log(KH_LOG_INFO, "token %lld: %s login failed (rv 0x%lx)", (long long)tok->id,
               userType == CKU_SO ? "SO" : "user", rv);
        kh_secmem_free(key, KH_TOKEN_KEY_LEN);
        goto out_put;
    }
    kh_log(KH_LOG_DEBUG, "token %lld: %s logged in", (long long)tok->id, userType == CKU_SO ? "SO" : "user");
    kh_mutex_lock(tok->lock);
    if (tok->login != KH_NOT_LOGGED_IN) {
        /* another thread logged in meanwhile */
        rv = tok->login == userType ? CKR_USER_ALREADY_LOGGED_IN : CKR_USER_ANOTHER_ALREADY_LOGGED_IN;
        kh_mutex_unlock(tok->lock);
        kh_secmem_free(key, KH_TOKEN_KEY_LEN);
        goto out_put;
    }
    tok->key = key;
    __atomic_store_n(&tok->login, userType, __ATOMIC_RELEASE);
    kh_mutex_unlock(tok->lock);
out_put:
    kh_session_put(s);
    return rv;
}

CK_RV kh_Logout(CK_SESSION_HANDLE hSession)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    kh_mutex_lock(s->tok->lock);
    if (s->tok->login == KH_NOT_LOGGED_IN)
        rv = CKR_USER_NOT_LOGGED_IN;
    else
        token_logout_locked(s->tok);
    kh_mutex_unlock(s->tok->lock);
    kh_session_put(s);
    return rv;
}

/* Called when the last session of a token closes: the login ends (spec). */
void kh_token_last_session_closed(kh_token *tok)
{
    kh_mutex_lock(tok->lock);
    token_logout_locked(tok);
    kh_mutex_unlock(tok->lock);
}

CK_RV kh_InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    uint8_t key[KH_TOKEN_KEY_LEN];
    if (!pPin) {
        rv = CKR_ARGUMENTS_BAD;
        goto out_put;
    }
    if (kh_session_state(s) != CKS_RW_SO_FUNCTIONS) {
        rv = CKR_USER_NOT_LOGGED_IN;
        goto out_put;
    }
    if (!pin_len_ok(ulPinLen)) {
        rv = CKR_PIN_LEN_RANGE;
        goto out_put;
    }
    rv = kh_token_key_copy(s->tok, key);
    if (rv != CKR_OK)
        goto out_put;
    kh_kdf_params kdf;
    kh_kdf_default(&kdf);
    kh_store *st;
    rv = kh_store_acquire(&st);
    if (rv == CKR_OK) {
        rv = kh_store_init_pin(st, s->tok->id, key, pPin, ulPinLen, &kdf);
        kh_store_audit(st, s->tok->id, "init-pin", rv == CKR_OK ? "ok" : "failed");
        kh_store_release();
    }
    kh_wipe(key, sizeof key);
out_put:
    kh_session_put(s);
    return rv;
}

CK_RV kh_SetPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen,
                CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    if (!pOldPin || !pNewPin) {
        rv = CKR_ARGUMENTS_BAD;
        goto out_put;
    }
    if (!(s->flags & CKF_RW_SESSION)) {
        rv = CKR_SESSION_READ_ONLY;
        goto out_put;
    }
    if (!pin_len_ok(ulNewLen)) {
        rv = CKR_PIN_LEN_RANGE;
        goto out_put;
    }
    CK_STATE state = kh_session_state(s);
    CK_USER_TYPE who = state == CKS_RW_SO_FUNCTIONS ? CKU_SO : CKU_USER;
    kh_kdf_params kdf;
    kh_kdf_default(&kdf);
    kh_store *st;
    rv = kh_store_acquire(&st);
    if (rv == CKR_OK) {
        rv = kh_store_set_pin(st, s->tok->id, who, pOldPin, ulOldLen, pNewPin, ulNewLen, &kdf);
        kh_store_audit(st, s->tok->id, "set-pin", rv == CKR_OK ? "ok" : "failed");
        kh_store_release();
    }
out_put:
    kh_session_put(s);
    return rv;
}

CK_RV kh_GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pRandomData, CK_ULONG ulRandomLen)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    if (!pRandomData && ulRandomLen)
        rv = CKR_ARGUMENTS_BAD;
    else if (ulRandomLen)
        rv = kh_random(pRandomData, ulRandomLen);
    kh_session_put(s);
    return rv;
}

CK_RV kh_SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen)
{
    kh_session *s;
    CK_RV rv = kh_session_get(&s, hSession);
    if (rv != CKR_OK)
        return rv;
    rv = (!pSeed && ulSeedLen) ? CKR_ARGUMENTS_BAD : CKR_RANDOM_SEED_NOT_SUPPORTED;
    kh_session_put(s);
    return rv;
}

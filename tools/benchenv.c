/*
 * benchenv.c - temporary homes for the modules keyhold-bench measures.
 */
#include "benchenv.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int bench_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void bench_rmtree(const char *dir)
{
    if (dir && dir[0])
        nftw(dir, bench_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void bench_env_resolve(struct bench_env *e, const char *spec)
{
    const char *base;

    memset(e, 0, sizeof *e);
    if (!strcmp(spec, "softhsm") || !strcmp(spec, "softhsm2")) {
        e->kind = BENCH_ENV_SOFTHSM;
        snprintf(e->module, sizeof e->module, "%s", BENCH_SOFTHSM_MODULE);
    } else if (!strcmp(spec, "tpm2-pkcs11") || !strcmp(spec, "tpm2")) {
        e->kind = BENCH_ENV_TPM2_PKCS11;
        snprintf(e->module, sizeof e->module, "%s", BENCH_TPM2_PKCS11_MODULE);
    } else {
        snprintf(e->module, sizeof e->module, "%s", spec);
        base = strrchr(spec, '/');
        base = base ? base + 1 : spec;
        if (strstr(base, "softhsm"))
            e->kind = BENCH_ENV_SOFTHSM;
        else if (strstr(base, "tpm2_pkcs11") || strstr(base, "tpm2-pkcs11"))
            e->kind = BENCH_ENV_TPM2_PKCS11;
        else if (strstr(base, "keyhold"))
            e->kind = BENCH_ENV_KEYHOLD;
        else
            e->kind = BENCH_ENV_OTHER;
    }
    switch (e->kind) {
    case BENCH_ENV_KEYHOLD: snprintf(e->name, sizeof e->name, "keyhold"); break;
    case BENCH_ENV_SOFTHSM: snprintf(e->name, sizeof e->name, "softhsm2"); break;
    case BENCH_ENV_TPM2_PKCS11: snprintf(e->name, sizeof e->name, "tpm2-pkcs11"); break;
    case BENCH_ENV_OTHER:
        base = strrchr(spec, '/');
        snprintf(e->name, sizeof e->name, "%s", base ? base + 1 : spec);
        break;
    }
}

static bool bench_write_file(const char *path, const char *text, char *err, size_t errlen)
{
    FILE *f = fopen(path, "w");
    bool ok = f && fputs(text, f) >= 0;

    if (f && fclose(f) != 0)
        ok = false;
    if (!ok)
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
    return ok;
}

/*
 * Starts argv (searched in PATH) with stdout and stderr appended to log.
 * Returns: its pid; -1 with a reason in err when it cannot fork.
 */
static pid_t bench_spawn(char *const argv[], const char *log, char *err, size_t errlen)
{
    pid_t pid;

    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/*
 * Runs argv (searched in PATH) with stdout and stderr appended to log;
 * returns true when it exits 0.
 */
static bool bench_run(char *const argv[], const char *log, char *err, size_t errlen)
{
    pid_t pid = bench_spawn(argv, log, err, errlen);
    int st;

    if (pid < 0)
        return false;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            break;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return true;
    snprintf(err, errlen, "%s failed (exit %d; output in %s)", argv[0],
             WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), log);
    return false;
}

/* A loopback TCP port that can be bound now, with port + 1 free as well
 * (swtpm's control channel; the swtpm TCTI expects it there). */
static int bench_free_port_pair(void)
{
    for (int attempt = 0; attempt < 50; attempt++) {
        struct sockaddr_in a;
        socklen_t len = sizeof a;
        int s1 = socket(AF_INET, SOCK_STREAM, 0), s2 = -1, port = -1;

        if (s1 < 0)
            return -1;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(s1, (struct sockaddr *)&a, sizeof a) == 0 &&
            getsockname(s1, (struct sockaddr *)&a, &len) == 0 && ntohs(a.sin_port) < 65535) {
            port = ntohs(a.sin_port);
            s2 = socket(AF_INET, SOCK_STREAM, 0);
            a.sin_port = htons((uint16_t)(port + 1));
            if (s2 < 0 || bind(s2, (struct sockaddr *)&a, sizeof a) != 0)
                port = -1;
        }
        close(s1);
        if (s2 >= 0)
            close(s2);
        if (port > 0)
            return port;
    }
    return -1;
}

static bool bench_port_accepts(int port)
{
    struct sockaddr_in a;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    bool ok;

    if (s < 0)
        return false;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    ok = connect(s, (struct sockaddr *)&a, sizeof a) == 0;
    close(s);
    return ok;
}

/* Starts swtpm on a free port pair and waits (5 s at most) until it listens. */
static bool bench_swtpm_start(struct bench_env *e, char *err, size_t errlen)
{
    char state[4200], log[4200], server[128], ctrl[128], tpmstate[4300];

    snprintf(state, sizeof state, "%s/tpm-state", e->dir);
    snprintf(log, sizeof log, "%s/swtpm.log", e->dir);
    if (mkdir(state, 0700) != 0) {
        snprintf(err, errlen, "mkdir %s: %s", state, strerror(errno));
        return false;
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        int port = bench_free_port_pair();
        if (port < 0) {
            snprintf(err, errlen, "no free loopback port pair for swtpm");
            return false;
        }
        snprintf(server, sizeof server, "type=tcp,port=%d,bindaddr=127.0.0.1", port);
        snprintf(ctrl, sizeof ctrl, "type=tcp,port=%d,bindaddr=127.0.0.1", port + 1);
        snprintf(tpmstate, sizeof tpmstate, "dir=%s", state);
        char *const argv[] = { "swtpm", "socket", "--tpm2", "--tpmstate", tpmstate, "--server",
                               server, "--ctrl", ctrl, "--flags", "not-need-init,startup-clear",
                               NULL };
        pid_t pid = bench_spawn(argv, log, err, errlen);
        if (pid < 0)
            return false;
        for (int i = 0; i < 500; i++) {
            int st;
            if (waitpid(pid, &st, WNOHANG) == pid) {
                pid = 0;    /* exited: the port was taken meanwhile, try another */
                break;
            }
            if (bench_port_accepts(port)) {
                e->swtpm = pid;
                e->swtpm_port = port;
                return true;
            }
            struct timespec ts = { 0, 10 * 1000 * 1000 };
            nanosleep(&ts, NULL);
        }
        if (pid > 0) {
            kill(pid, SIGTERM);
            waitpid(pid, NULL, 0);
        }
    }
    snprintf(err, errlen, "swtpm did not start (see %s)", log);
    return false;
}

/*
 * tpm2-pkcs11: swtpm (or the TPM e->tcti names), then `tpm2_ptool init` (the
 * store and its primary object, persisted at a free handle). Without a resource manager tpm2-tools leave their transient
 * objects loaded, and `tpm2_ptool addtoken` runs out of the TPM's three
 * object slots; so the token is made later through the module's own
 * C_InitToken (which flushes what it loads), after `tpm2_flushcontext -t`.
 */
static bool bench_env_tpm2(struct bench_env *e, char *err, size_t errlen)
{
    char store[4200], tcti[300], log[4200];

    if (e->tcti[0]) {
        snprintf(tcti, sizeof tcti, "%s", e->tcti);
    } else {
        if (!bench_swtpm_start(e, err, errlen))
            return false;
        snprintf(tcti, sizeof tcti, "swtpm:host=127.0.0.1,port=%d", e->swtpm_port);
    }
    snprintf(store, sizeof store, "%s/tpm2-pkcs11", e->dir);
    snprintf(log, sizeof log, "%s/tpm2_ptool.log", e->dir);
    if (mkdir(store, 0700) != 0) {
        snprintf(err, errlen, "mkdir %s: %s", store, strerror(errno));
        return false;
    }
    if (setenv("TPM2_PKCS11_STORE", store, 1) != 0 || setenv("TPM2_PKCS11_TCTI", tcti, 1) != 0 ||
        setenv("TPM2TOOLS_TCTI", tcti, 1) != 0) {
        snprintf(err, errlen, "setenv: %s", strerror(errno));
        return false;
    }
    char path_arg[4300];
    snprintf(path_arg, sizeof path_arg, "--path=%s", store);
    char *const init[] = { "tpm2_ptool", "init", path_arg, NULL };
    char *const flush[] = { "tpm2_flushcontext", "-t", NULL };
    return bench_run(init, log, err, errlen) && bench_run(flush, log, err, errlen);
}

bool bench_env_setup(struct bench_env *e, bool own_store, char *err, size_t errlen)
{
    char path[4200], text[8600];
    const char *tmp = getenv("TMPDIR");

    snprintf(e->dir, sizeof e->dir, "%s/keyhold-bench-%s.XXXXXX", tmp && *tmp ? tmp : "/tmp",
             e->name);
    if (!mkdtemp(e->dir)) {
        snprintf(err, errlen, "mkdtemp %s: %s", e->dir, strerror(errno));
        e->dir[0] = '\0';
        return false;
    }
    switch (e->kind) {
    case BENCH_ENV_KEYHOLD:
        if (!own_store)
            return true;
        snprintf(path, sizeof path, "%s/store", e->dir);
        if (setenv("KEYHOLD_STORE", path, 1) != 0) {
            snprintf(err, errlen, "setenv: %s", strerror(errno));
            return false;
        }
        return true;
    case BENCH_ENV_SOFTHSM:
        snprintf(path, sizeof path, "%s/softhsm-tokens", e->dir);
        if (mkdir(path, 0700) != 0) {
            snprintf(err, errlen, "mkdir %s: %s", path, strerror(errno));
            return false;
        }
        snprintf(text, sizeof text,
                 "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n"
                 "slots.removable = false\n", path);
        snprintf(path, sizeof path, "%s/softhsm2.conf", e->dir);
        if (!bench_write_file(path, text, err, errlen))
            return false;
        if (setenv("SOFTHSM2_CONF", path, 1) != 0) {
            snprintf(err, errlen, "setenv: %s", strerror(errno));
            return false;
        }
        return true;
    case BENCH_ENV_TPM2_PKCS11:
        return bench_env_tpm2(e, err, errlen);
    case BENCH_ENV_OTHER:
        return true;
    }
    return false;
}

void bench_env_cleanup(struct bench_env *e)
{
    if (e->swtpm > 0) {
        kill(e->swtpm, SIGTERM);
        waitpid(e->swtpm, NULL, 0);
        e->swtpm = 0;
    }
    if (e->dir[0]) {
        bench_rmtree(e->dir);
        e->dir[0] = '\0';
    }
}

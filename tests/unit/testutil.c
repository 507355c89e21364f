/* The unit-test harness (see testutil.h). */
#include "testutil.h"

#include <ftw.h>
#include <sys/stat.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define KH_TEST_MAX 512

static struct {
    const char *name;
    kh_test_fn fn;
    kh_test_arg_fn fn_arg;
    const void *arg;
} tests[KH_TEST_MAX];
static size_t ntests;
static int case_failures;
static uint64_t seed;
static char tmproot[4096];
static unsigned tmpcount;

void kh_test_register_arg(const char *name, kh_test_arg_fn fn, const void *arg)
{
    if (ntests == KH_TEST_MAX) {
        fprintf(stderr, "too many tests\n");
        exit(2);
    }
    tests[ntests].name = name;
    tests[ntests].fn_arg = fn;
    tests[ntests].arg = arg;
    ntests++;
}

void kh_test_register(const char *name, kh_test_fn fn)
{
    kh_test_register_arg(name, NULL, NULL);
    tests[ntests - 1].fn = fn;
}

uint64_t kh_test_seed(void) { return seed; }

void kh_test_rand(uint8_t *buf, size_t len)
{
    static uint64_t state;

    if (!state)
        state = seed | 1;
    for (size_t i = 0; i < len; i++) {   /* xorshift64* */
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        buf[i] = (uint8_t)((state * 0x2545F4914F6CDD1DULL) >> 56);
    }
}

bool kh_test_failed(void) { return case_failures != 0; }

void kh_test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "  FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    case_failures++;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

static void cleanup_tmp(void)
{
    if (tmproot[0] && !getenv("KH_TEST_KEEP"))
        nftw(tmproot, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

const char *kh_test_tmpdir(void)
{
    static char path[4200];
    if (!tmproot[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(tmproot, sizeof tmproot, "%s/kh-test-XXXXXX", t ? t : "/tmp");
        if (!mkdtemp(tmproot)) {
            perror("mkdtemp");
            exit(2);
        }
        atexit(cleanup_tmp);
    }
    snprintf(path, sizeof path, "%s/%u", tmproot, tmpcount++);
    if (mkdir(path, 0700) != 0) {
        perror("mkdir");
        exit(2);
    }
    return path;
}

uint8_t *kh_test_unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    uint8_t *out = malloc(n ? n : 1);
    if (!out)
        exit(2);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
            free(out);
            *len = 0;
            return NULL;
        }
        out[i] = (uint8_t)v;
    }
    *len = n;
    return out;
}

const char *kh_test_vector_path(const char *name)
{
    static char path[4096];
    const char *dir = getenv("KEYHOLD_TESTVECTORS");
    snprintf(path, sizeof path, "%s/%s", dir ? dir : "../shared/testvectors", name);
    return path;
}

int kh_test_run(int argc, char **argv)
{
    const char *s = getenv("KH_TEST_SEED");
    seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) ^ (uint64_t)getpid();
    printf("# seed %llu\n", (unsigned long long)seed);
    size_t passed = 0, failed = 0;
    for (size_t i = 0; i < ntests; i++) {
        if (argc > 1 && strncmp(tests[i].name, argv[1], strlen(argv[1])) != 0)
            continue;
        case_failures = 0;
        if (tests[i].fn)
            tests[i].fn();
        else
            tests[i].fn_arg(tests[i].arg);
        if (case_failures) {
            printf("not ok %s\n", tests[i].name);
            failed++;
        } else {
            printf("ok %s\n", tests[i].name);
            passed++;
        }
        fflush(stdout);
    }
    printf("# %zu passed, %zu failed\n", passed, failed);
    return failed ? 1 : 0;
}

/* Unit tests for locked memory (module/secmem.c). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>   /* MADV_WIPEONFORK */
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "testutil.h"

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

static void test_sizes(void)
{
    enum { N = 200 };
    uint8_t *p[N];
    size_t len[N];
    uint64_t x = kh_test_seed() | 1;
    for (size_t i = 0; i < N; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        len[i] = i % 50 == 0 ? 40000 + (size_t)(x % 5000) : 1 + (size_t)(x % 600);
        p[i] = kh_secmem_alloc(len[i]);
        KH_CHECK(p[i] != NULL);
        if (!p[i])
            return;
        KH_CHECK(((uintptr_t)p[i] & 15) == 0);
        KH_CHECK(all_zero(p[i], len[i]));
        memset(p[i], (int)(i & 0xff) | 1, len[i]);
    }
    /* No overlap: every block still holds its own pattern. */
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < len[i]; j++)
            if (p[i][j] != ((i & 0xff) | 1)) {
                kh_test_fail(__FILE__, __LINE__, "block %zu overwritten", i);
                break;
            }
    /* Free every other one, reallocate: new blocks come back zeroed. */
    for (size_t i = 0; i < N; i += 2)
        kh_secmem_free(p[i], len[i]);
    for (size_t i = 0; i < N; i += 2) {
        p[i] = kh_secmem_alloc(len[i]);
        KH_CHECK(p[i] && all_zero(p[i], len[i]));
    }
    for (size_t i = 0; i < N; i++)
        kh_secmem_free(p[i], len[i]);
    kh_secmem_free(NULL, 10);
    uint8_t *z = kh_secmem_alloc(0);
    KH_CHECK(z != NULL);
    kh_secmem_free(z, 0);
}

static void *thread_fn(void *arg)
{
    (void)arg;
    for (int i = 0; i < 2000; i++) {
        size_t n = 1 + (size_t)(i % 300);
        uint8_t *p = kh_secmem_alloc(n);
        if (!p)
            return (void *)1;
        memset(p, 0xAB, n);
        for (size_t j = 0; j < n; j++)
            if (p[j] != 0xAB)
                return (void *)1;
        kh_secmem_free(p, n);
    }
    return NULL;
}

static void test_threads(void)
{
    pthread_t t[8];
    for (int i = 0; i < 8; i++)
        KH_CHECK(pthread_create(&t[i], NULL, thread_fn, NULL) == 0);
    for (int i = 0; i < 8; i++) {
        void *r;
        pthread_join(t[i], &r);
        KH_CHECK(r == NULL);
    }
}

/* With MADV_WIPEONFORK (Linux >= 4.14) a child sees zeros where secrets were. */
static void test_fork(void)
{
#ifdef MADV_WIPEONFORK
    uint8_t *p = kh_secmem_alloc(32);
    KH_CHECK(p != NULL);
    if (!p)
        return;
    memset(p, 0x5C, 32);
    pid_t pid = fork();
    if (pid == 0) {
        int zero = all_zero(p, 32);
        kh_secmem_free(p, 32);   /* bookkeeping still works in the child */
        _exit(zero ? 0 : 1);
    }
    int status = 0;
    KH_CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    KH_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    KH_CHECK(p[0] == 0x5C && p[31] == 0x5C);  /* the parent keeps its copy */
    kh_secmem_free(p, 32);
#endif
}

int main(int argc, char **argv)
{
    kh_test_register("/secmem/sizes", test_sizes);
    kh_test_register("/secmem/threads", test_threads);
    kh_test_register("/secmem/fork", test_fork);
    return kh_test_run(argc, argv);
}

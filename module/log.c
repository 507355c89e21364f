/*
 * Logging: quiet by default. KEYHOLD_LOG=error|warn|info|debug (or the
 * configuration's log_level) enables lines on stderr. Callers never pass a
 * PIN, key or signed plaintext; this unit cannot check that, so every call
 * site logs only codes, handles and labels.
 */
#include "base.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int kh_log_level_cached = -1;

static int log_level_from_env(void)
{
    const char *v = getenv("KEYHOLD_LOG");
    if (!v)
        return 0;
    if (!strcmp(v, "error"))
        return KH_LOG_ERROR;
    if (!strcmp(v, "warn"))
        return KH_LOG_WARN;
    if (!strcmp(v, "info"))
        return KH_LOG_INFO;
    if (!strcmp(v, "debug"))
        return KH_LOG_DEBUG;
    return 0;
}

bool kh_log_enabled(enum kh_log_level level)
{
    int max = kh_log_level_cached;
    if (max < 0)
        max = kh_log_level_cached = log_level_from_env();
    return (int)level <= max;
}

void kh_log(enum kh_log_level level, const char *fmt, ...)
{
    static const char *names[] = { "", "error", "warn", "info", "debug" };
    if (!kh_log_enabled(level))
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "keyhold[%s]: %s\n", names[level], line);
}

/* The configuration may raise the level set by the environment. */
void kh_log_set_level(int level)
{
    int env = log_level_from_env();
    kh_log_level_cached = level > env ? level : env;
}

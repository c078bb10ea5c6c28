/* glibc's string functions against plain C references, on seeded random strings at every
 * alignment, ending right before an unmapped page (so an over-read faults).
 *
 * Dynamically linked, glibc picks each function's variant at start-up from CPUID (IFUNC):
 * with SSE4.2 reported, glibc 2.36 takes its SSE4.2 strcspn, strspn, strpbrk, strcasecmp and
 * strncasecmp (PCMPISTRI), SSSE3/SSE2 variants of the others. Run in the Debian guest and on
 * the host with the same seed, it must print the same digest.
 *
 * Prints "KILN-STRINGS-OK <checks> <digest>" and exits 0, or names the first wrong result on
 * stderr and exits 1. Usage: strings [SEED] [ROUNDS]
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

static uint64_t state;
static uint64_t digest = 1469598103934665603ull;
static unsigned long checks;

static uint64_t next(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static void mix(uint64_t v) {
    digest = (digest ^ v) * 1099511628211ull;
    checks++;
}

static int fail(const char *what, long got, long want, size_t len, size_t align) {
    fprintf(stderr, "KILN-STRINGS-FAIL %s: got %ld, want %ld (length %zu, alignment %zu)\n",
            what, got, want, len, align);
    exit(1);
}

#define CHECK(what, got, want)                                                           \
    do {                                                                                 \
        long g_ = (long)(got), w_ = (long)(want);                                        \
        if (g_ != w_) fail(what, g_, w_, len, align);                                    \
        mix((uint64_t)g_);                                                               \
    } while (0)

static size_t ref_strlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }
static long ref_memchr(const char *s, int c, size_t n) {
    for (size_t i = 0; i < n; i++) if (s[i] == (char)c) return (long)i;
    return -1;
}
static long ref_memrchr(const char *s, int c, size_t n) {
    for (size_t i = n; i-- > 0;) if (s[i] == (char)c) return (long)i;
    return -1;
}
static long ref_strrchr(const char *s, int c) {
    long at = -1;
    for (size_t i = 0;; i++) { if (s[i] == (char)c) at = (long)i; if (!s[i]) return at; }
}
static size_t ref_span(const char *s, const char *set, int in) {
    size_t n = 0;
    for (; s[n]; n++) {
        int found = 0;
        for (const char *p = set; *p; p++) found |= *p == s[n];
        if (found != in) break;
    }
    return n;
}
static int sign(int v) { return (v > 0) - (v < 0); }
static int ref_casecmp(const char *a, const char *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z') x += 32;
        if (y >= 'A' && y <= 'Z') y += 32;
        if (x != y) return sign(x - y);
        if (!x) return 0;
    }
    return 0;
}
static int ref_cmp(const char *a, const char *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x != y) return sign(x - y);
        if (!x) return 0;
    }
    return 0;
}
static long ref_strstr(const char *h, const char *n) {
    size_t hl = ref_strlen(h), nl = ref_strlen(n);
    for (size_t i = 0; i + nl <= hl; i++) if (memcmp(h + i, n, nl) == 0) return (long)i;
    return -1;
}

/* A random byte from a small alphabet (so sets and needles match often), sometimes high. */
static char letter(void) {
    static const char alphabet[] = "abcABC xyz-_09";
    uint64_t r = next();
    return (r & 31) == 0 ? (char)(0x80 | (r >> 8 & 0x7f)) : alphabet[(r >> 8) % 14];
}

int main(int argc, char **argv) {
    state = argc > 1 ? strtoull(argv[1], NULL, 0) : 0x6b696c6e;
    long rounds = argc > 2 ? strtol(argv[2], NULL, 0) : 4000;
    if (state == 0) state = 1;
    long page = sysconf(_SC_PAGESIZE);
    char *map = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *other = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED || other == MAP_FAILED || mprotect(map + page, page, PROT_NONE) ||
        mprotect(other + page, page, PROT_NONE)) {
        perror("mmap");
        return 2;
    }
    char *end = map + page, *oend = other + page;
    for (long round = 0; round < rounds; round++) {
        size_t len = next() % 300, align = next() % 64;
        /* The string ends (its NUL) on the last byte before the unmapped page, starting
         * `align` bytes past a 64-byte boundary. */
        char *s = end - 1 - len;
        s -= ((uintptr_t)s - align) & 63;
        if (s < map) s += 64;
        len = (size_t)(end - 1 - s);
        for (size_t i = 0; i < len; i++) do s[i] = letter(); while (!s[i]);
        s[len] = 0;
        int c = (unsigned char)letter();

        CHECK("strlen", strlen(s), ref_strlen(s));
        size_t max = next() % (len + 8);
        CHECK("strnlen", strnlen(s, max), len < max ? len : max);
        char *m = memchr(s, c, len);
        CHECK("memchr", m ? m - s : -1, ref_memchr(s, c, len));
        m = memrchr(s, c, len);
        CHECK("memrchr", m ? m - s : -1, ref_memrchr(s, c, len));
        m = strchr(s, c);
        CHECK("strchr", m ? m - s : -1, ref_memchr(s, c, len + 1));
        m = strrchr(s, c);
        CHECK("strrchr", m ? m - s : -1, ref_strrchr(s, c));
        CHECK("strchr NUL", strchr(s, 0) - s, (long)len);

        char set[20];
        size_t setlen = 1 + next() % 18;
        for (size_t i = 0; i < setlen; i++) do set[i] = letter(); while (!set[i]);
        set[setlen] = 0;
        CHECK("strspn", strspn(s, set), ref_span(s, set, 1));
        CHECK("strcspn", strcspn(s, set), ref_span(s, set, 0));
        m = strpbrk(s, set);
        size_t at = ref_span(s, set, 0);
        CHECK("strpbrk", m ? m - s : -1, s[at] ? (long)at : -1);

        /* A second string: a copy of the first with case flips and one changed byte, ending
         * at the other page end. */
        char *t = oend - 1 - len;
        memcpy(t, s, len + 1);
        for (size_t i = 0; i < len; i++)
            if ((next() & 3) == 0 && ((t[i] | 32) >= 'a' && (t[i] | 32) <= 'z')) t[i] ^= 32;
        if (len && (next() & 1)) t[next() % len] = letter();
        size_t n = next() % (len + 4);
        CHECK("strcasecmp", sign(strcasecmp(s, t)), ref_casecmp(s, t, len + 1));
        CHECK("strncasecmp", sign(strncasecmp(s, t, n)), ref_casecmp(s, t, n));
        CHECK("strcmp", sign(strcmp(s, t)), ref_cmp(s, t, len + 1));
        CHECK("strncmp", sign(strncmp(s, t, n)), ref_cmp(s, t, n));
        CHECK("memcmp", sign(memcmp(s, t, len)), ref_cmp(s, t, len));

        char needle[8];
        size_t nl = next() % 6, from = len ? next() % len : 0;
        for (size_t i = 0; i < nl; i++) needle[i] = (from + i < len && (next() & 3)) ? s[from + i] : letter();
        needle[nl] = 0;
        if (strlen(needle) == nl) {
            m = strstr(s, needle);
            CHECK("strstr", m ? m - s : -1, ref_strstr(s, needle));
        }
    }
    printf("KILN-STRINGS-OK %lu %016llx\n", checks, (unsigned long long)digest);
    return 0;
}

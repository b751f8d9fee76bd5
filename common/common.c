/*
 * common.c — errors, bounded buffers, time and hex helpers.
 */
#include "common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ====================================================================== errors */

const char *cairn_strerror(int err)
{
    switch (err) {
    case CAIRN_OK: return "ok";
    case CAIRN_EINVAL: return "invalid input";
    case CAIRN_ENOMEM: return "out of memory";
    case CAIRN_EIO: return "I/O error";
    case CAIRN_EDB: return "database error";
    case CAIRN_ECONFLICT: return "conflict";
    case CAIRN_ECORRUPT: return "corrupt data";
    case CAIRN_ENOTFOUND: return "not found";
    case CAIRN_EBUSY: return "busy, retry later";
    case CAIRN_ETOOBIG: return "too large";
    case CAIRN_ECLOSED: return "closed";
    case CAIRN_EMAPFULL: return "map full";
    case CAIRN_ENOSPC: return "no space left on the disk";
    }
    return "unknown error";
}

void cairn_error_clear(struct cairn_error *e)
{
    if (!e)
        return;
    e->code = NULL;
    e->field[0] = '\0';
    e->message[0] = '\0';
}

int cairn_error_set(struct cairn_error *e, const char *code, const char *field, const char *fmt,
                    ...)
{
    if (!e)
        return CAIRN_EINVAL;
    e->code = code;
    snprintf(e->field, sizeof e->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return CAIRN_EINVAL;
}

/* ====================================================================== buffers */

void *cairn_calloc_written(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    size_t bytes = n * size;
    void *p = malloc(bytes ? bytes : 1);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void cairn_buf_init(struct cairn_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void cairn_buf_deinit(struct cairn_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void cairn_buf_reset(struct cairn_buf *b)
{
    b->len = 0;
}

int cairn_buf_reserve(struct cairn_buf *b, size_t extra)
{
    if (extra > b->max || b->len > b->max - extra)
        return CAIRN_ETOOBIG;
    size_t need = b->len + extra;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > b->max)
        cap = b->max;
    uint8_t *p = realloc(b->data, cap);
    if (!p)
        return CAIRN_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int cairn_buf_append(struct cairn_buf *b, const void *p, size_t n)
{
    int rc = cairn_buf_reserve(b, n);
    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int cairn_buf_putc(struct cairn_buf *b, char c)
{
    if (b->len < b->cap) {
        b->data[b->len++] = (uint8_t)c;
        return 0;
    }
    return cairn_buf_append(b, &c, 1);
}

int cairn_buf_puts(struct cairn_buf *b, const char *s)
{
    return cairn_buf_append(b, s, strlen(s));
}

int cairn_buf_printf(struct cairn_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return CAIRN_EINVAL;
    int rc = cairn_buf_reserve(b, (size_t)n + 1);
    if (rc)
        return rc;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int cairn_buf_json_str(struct cairn_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* Worst case every byte becomes \u00XX. */
    int rc = cairn_buf_reserve(b, n * 6 + 2);
    if (rc)
        return rc;
    uint8_t *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = c;
        } else if (c >= 0x20) {
            *o++ = c;
        } else if (c == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else if (c == '\r') {
            *o++ = '\\';
            *o++ = 'r';
        } else if (c == '\t') {
            *o++ = '\\';
            *o++ = 't';
        } else {
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return 0;
}

int cairn_buf_msgpack_write(void *data, const char *p, size_t n)
{
    return cairn_buf_append(data, p, n) ? -1 : 0;
}

bool cairn_blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
            return false;
    return true;
}

/* ====================================================================== time */

int64_t cairn_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil), so no timegm/TZ dependence. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

/* Reads exactly `w` digits at s[*i]. */
static int digits(const char *s, size_t n, size_t *i, int w, int *out)
{
    int v = 0;
    for (int k = 0; k < w; k++, (*i)++) {
        if (*i >= n || s[*i] < '0' || s[*i] > '9')
            return -1;
        v = v * 10 + (s[*i] - '0');
    }
    *out = v;
    return 0;
}

static int expect(const char *s, size_t n, size_t *i, const char *set)
{
    if (*i >= n || !strchr(set, s[*i]))
        return -1;
    (*i)++;
    return 0;
}

int cairn_time_parse(const char *s, size_t n, int64_t *out)
{
    static const unsigned mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    size_t i = 0;
    int Y, M, D, h, mi, sec, frac = 0, fd = 0;
    if (digits(s, n, &i, 4, &Y) || expect(s, n, &i, "-") || digits(s, n, &i, 2, &M) ||
        expect(s, n, &i, "-") || digits(s, n, &i, 2, &D) || expect(s, n, &i, "Tt ") ||
        digits(s, n, &i, 2, &h) || expect(s, n, &i, ":") || digits(s, n, &i, 2, &mi) ||
        expect(s, n, &i, ":") || digits(s, n, &i, 2, &sec))
        return CAIRN_EINVAL;
    if (M < 1 || M > 12 || D < 1 || (unsigned)D > mdays[M - 1] || h > 23 || mi > 59 || sec > 60)
        return CAIRN_EINVAL;
    bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    if (M == 2 && D == 29 && !leap)
        return CAIRN_EINVAL;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            if (fd < 9) {
                frac = frac * 10 + (s[i] - '0');
                fd++;
            }
            i++;
        }
        if (fd == 0)
            return CAIRN_EINVAL;
        for (int k = fd; k < 9; k++)
            frac *= 10;
    }
    int64_t off = 0;
    if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i < n && (s[i] == '+' || s[i] == '-')) {
        int sign = s[i++] == '-' ? -1 : 1, oh, om;
        if (digits(s, n, &i, 2, &oh) || expect(s, n, &i, ":") || digits(s, n, &i, 2, &om) ||
            oh > 23 || om > 59)
            return CAIRN_EINVAL;
        off = sign * (oh * 3600 + om * 60);
    } else {
        return CAIRN_EINVAL;
    }
    if (i != n)
        return CAIRN_EINVAL;
    if (sec == 60) /* a leap second is folded onto the next second */
        sec = 59, frac = 999999999;
    int64_t secs =
        days_from_civil(Y, (unsigned)M, (unsigned)D) * 86400 + h * 3600 + mi * 60 + sec - off;
    /* int64 ns covers 1677..2262; refuse what would overflow. */
    if (secs < -9223372035LL || secs > 9223372035LL)
        return CAIRN_EINVAL;
    *out = secs * 1000000000LL + frac;
    return 0;
}

/* Writes v as exactly w digits. */
static char *put_digits(char *o, uint64_t v, int w)
{
    for (int i = w - 1; i >= 0; i--, v /= 10)
        o[i] = (char)('0' + v % 10);
    return o + w;
}

size_t cairn_u64_dec(char *o, uint64_t v)
{
    char t[20];
    size_t k = 0;
    do
        t[k++] = (char)('0' + v % 10);
    while (v /= 10);
    for (size_t i = 0; i < k; i++)
        o[i] = t[k - 1 - i];
    return k;
}

/* The fraction of a second (0 <= frac < 1e9) as ".ddd", ".dddddd" or
 * ".ddddddddd" — the shortest that is exact, nothing for 0 — then 'Z'. */
static char *put_frac(char *o, int64_t frac)
{
    if (frac) {
        *o++ = '.';
        if (frac % 1000000 == 0)
            o = put_digits(o, (uint64_t)(frac / 1000000), 3);
        else if (frac % 1000 == 0)
            o = put_digits(o, (uint64_t)(frac / 1000), 6);
        else
            o = put_digits(o, (uint64_t)frac, 9);
    }
    *o++ = 'Z';
    return o;
}

/* Hot: every document with a time field formats it (devices: three per
 * event), so digits are written directly instead of through snprintf. */
size_t cairn_time_format(int64_t ns, char *out, size_t cap)
{
    char tmp[40], *o = tmp;
    int64_t secs = ns / 1000000000LL, frac = ns % 1000000000LL;
    if (frac < 0)
        frac += 1000000000LL, secs -= 1;
    int64_t days = secs / 86400, rem = secs % 86400;
    if (rem < 0)
        rem += 86400, days -= 1;
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    if (y < 0 || y > 9999) /* outside RFC 3339's 4-digit years: rare, slow path */
        return (size_t)snprintf(out, cap, "%lld-%02u-%02uT%02d:%02d:%02dZ", (long long)y, m, d,
                                (int)(rem / 3600), (int)(rem / 60 % 60), (int)(rem % 60));
    o = put_digits(o, (uint64_t)y, 4);
    *o++ = '-';
    o = put_digits(o, m, 2);
    *o++ = '-';
    o = put_digits(o, d, 2);
    *o++ = 'T';
    o = put_digits(o, (uint64_t)(rem / 3600), 2);
    *o++ = ':';
    o = put_digits(o, (uint64_t)(rem / 60 % 60), 2);
    *o++ = ':';
    o = put_digits(o, (uint64_t)(rem % 60), 2);
    o = put_frac(o, frac);
    size_t n = (size_t)(o - tmp);
    if (cap) {
        size_t k = n < cap ? n : cap - 1;
        memcpy(out, tmp, k);
        out[k] = '\0';
    }
    return n;
}

void cairn_time_cache_init(struct cairn_time_cache *c)
{
    for (size_t i = 0; i < CAIRN_TIME_CACHE_SLOTS; i++)
        c->slot[i].sec = -1;
}

size_t cairn_time_format_cached(struct cairn_time_cache *c, int64_t ns, char *out, size_t cap)
{
    if (ns < 0 || cap < 36)
        return cairn_time_format(ns, out, cap);
    int64_t sec = ns / 1000000000, frac = ns % 1000000000;
    struct cairn_time_slot *s = &c->slot[sec % CAIRN_TIME_CACHE_SLOTS];
    if (s->sec != sec) {
        char t[40];
        if (cairn_time_format(sec * 1000000000, t, sizeof t) != 20) /* a year past 9999 */
            return cairn_time_format(ns, out, cap);
        memcpy(s->date, t, sizeof s->date);
        s->sec = sec;
    }
    memcpy(out, s->date, sizeof s->date);
    char *o = put_frac(out + sizeof s->date, frac);
    *o = '\0';
    return (size_t)(o - out);
}

/* ====================================================================== hex and integers */

void cairn_hex(const uint8_t *p, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[p[i] >> 4];
        out[2 * i + 1] = hex[p[i] & 15];
    }
    out[2 * n] = '\0';
}

int cairn_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int cairn_unhex(const char *s, size_t n, uint8_t *out)
{
    if (n % 2)
        return CAIRN_EINVAL;
    for (size_t i = 0; i < n; i += 2) {
        int hi = cairn_hex_digit(s[i]), lo = cairn_hex_digit(s[i + 1]);
        if (hi < 0 || lo < 0)
            return CAIRN_EINVAL;
        out[i / 2] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

size_t cairn_tkey(uint8_t *out, size_t cap, const struct cairn_str *tenant,
                  const struct cairn_str *rest)
{
    if (tenant->n > CAIRN_TENANT_MAX || 1 + tenant->n + rest->n > cap)
        return 0;
    out[0] = (uint8_t)tenant->n;
    memcpy(out + 1, tenant->p, tenant->n);
    if (rest->n)
        memcpy(out + 1 + tenant->n, rest->p, rest->n);
    return 1 + tenant->n + rest->n;
}

/* ====================================================================== sorting by key */

void cairn_ksort_set(struct cairn_ksort *e, const uint8_t *k, size_t n, void *p)
{
    e->k0 = cairn_be_prefix(k, n);
    e->k1 = n > 8 ? cairn_be_prefix(k + 8, n - 8) : 0;
    e->k2 = n > 16 ? cairn_be_prefix(k + 16, n - 16) : 0;
    e->k3 = n > 24 ? cairn_be_prefix(k + 24, n - 24) : 0;
    e->p = p;
}

/* By prefix, then by record address: equal prefixes come out in the
 * order of the caller's records, which is the callers' order of equal
 * keys (their records are in event order), so most runs need no sort. */
static bool ks_lt(const struct cairn_ksort *x, const struct cairn_ksort *y)
{
    if (x->k0 != y->k0)
        return x->k0 < y->k0;
    if (x->k1 != y->k1)
        return x->k1 < y->k1;
    if (x->k2 != y->k2)
        return x->k2 < y->k2;
    return x->k3 != y->k3 ? x->k3 < y->k3 : (uintptr_t)x->p < (uintptr_t)y->p;
}

static void ks_swap(struct cairn_ksort *x, struct cairn_ksort *y)
{
    struct cairn_ksort t = *x;
    *x = *y;
    *y = t;
}

/* The index of the median of o[a], o[b], o[c]. */
static size_t ks_med3(const struct cairn_ksort *o, size_t a, size_t b, size_t c)
{
    if (ks_lt(&o[b], &o[a])) {
        size_t t = a;
        a = b, b = t;
    } /* now o[a] <= o[b] */
    if (ks_lt(&o[c], &o[a]))
        return a;
    return ks_lt(&o[c], &o[b]) ? c : b;
}

/* Sorts o[0..n) by (k0, k1, k2, k3, p): a quicksort with the comparison
 * inline (a radix sort over 16 bytes cost twice as much: most vary).
 * The pivot is the median of three pseudo-random entries (*seed): dirty
 * lists come in patterns (a rotated sorted run: devices reporting in
 * turn) that made fixed median-of-three positions quadratic. The order is
 * the keys' either way. */
static void ks_prefix(struct cairn_ksort *o, size_t n, uint64_t *seed)
{
    while (n > 16) {
        size_t r[3];
        for (int k = 0; k < 3; k++) {
            *seed ^= *seed << 13, *seed ^= *seed >> 7, *seed ^= *seed << 17;
            r[k] = (size_t)(*seed % n);
        }
        /* the median of the three to o[0], then Sedgewick's partition */
        size_t m = ks_med3(o, r[0], r[1], r[2]);
        ks_swap(&o[0], &o[m]);
        struct cairn_ksort piv = o[0];
        size_t i = 0, j = n;
        for (;;) {
            while (++i < n && ks_lt(&o[i], &piv))
                ;
            while (ks_lt(&piv, &o[--j]))
                ;
            if (i >= j)
                break;
            ks_swap(&o[i], &o[j]);
        }
        ks_swap(&o[0], &o[j]);
        /* recurse into the smaller side, loop on the larger */
        if (j < n - j - 1) {
            ks_prefix(o, j, seed);
            o += j + 1;
            n -= j + 1;
        } else {
            ks_prefix(o + j + 1, n - j - 1, seed);
            n = j;
        }
    }
    for (size_t i = 1; i < n; i++) {
        struct cairn_ksort t = o[i];
        size_t j = i;
        for (; j > 0 && ks_lt(&t, &o[j - 1]); j--)
            o[j] = o[j - 1];
        o[j] = t;
    }
}

/* How deep ks_level recurses (32 bytes per level) before it leaves a run
 * to cmp: keys of up to 1 KiB are sorted by bytes all the way. */
#define KS_DEPTH_MAX 32

/* The bytes every key of o[0, n) shares (n >= 1). */
static size_t ks_shared(const struct cairn_ksort *o, size_t n, cairn_ksort_key key, void *arg)
{
    size_t fn, kn;
    const uint8_t *f = key(o[0].p, &fn, arg);
    size_t s = fn;
    for (size_t i = 1; i < n && s; i++) {
        const uint8_t *k = key(o[i].p, &kn, arg);
        s = cairn_shared_prefix(f, s, k, kn);
    }
    return s;
}

/* Sorts o[0, n), whose keys all share their first `skip` bytes: by the 32
 * bytes after those, then each run that ties on them and is not in order
 * yet by the bytes its keys share and the 32 after (a level deeper), or
 * by cmp when that gains nothing (a key ends within the 32: zero padding
 * tied it) or the keys are deeper than KS_DEPTH_MAX levels. */
static void ks_level(struct cairn_ksort *o, size_t n, size_t skip, int depth, cairn_ksort_key key,
                     cairn_ksort_cmp cmp, void *arg, uint64_t *seed)
{
    for (size_t i = 0; i < n; i++) {
        size_t kn;
        /* What key() reads, loaded ahead: the record 8 on (o[].p: where
         * the callers' keys are found), the key of the one 4 on. Each is
         * a cache miss when the records are many (a flush's entries). */
        if (i + 8 < n)
            __builtin_prefetch(o[i + 8].p);
        if (i + 4 < n)
            __builtin_prefetch(key(o[i + 4].p, &kn, arg) + skip);
        const uint8_t *k = key(o[i].p, &kn, arg);
        cairn_ksort_set(&o[i], k + skip, kn - skip, o[i].p);
    }
    ks_prefix(o, n, seed);
    for (size_t i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && o[j].k0 == o[i].k0 && o[j].k1 == o[i].k1 && o[j].k2 == o[i].k2 &&
                        o[j].k3 == o[i].k3;)
            j++;
        size_t a = i + 1;
        while (a < j && cmp(&o[a - 1], &o[a], arg) <= 0)
            a++;
        if (a == j)
            continue; /* in order already: the same key, in record order */
        size_t s = ks_shared(o + i, j - i, key, arg);
        if (s >= skip + 32 && depth < KS_DEPTH_MAX) {
            ks_level(o + i, j - i, s, depth + 1, key, cmp, arg, seed);
        } else if (j - i > 16) {
            qsort_r(o + i, j - i, sizeof *o, cmp, arg);
        } else {
            for (; a < j; a++) { /* insertion, from the first out of order */
                struct cairn_ksort t = o[a];
                size_t b = a;
                for (; b > i && cmp(&t, &o[b - 1], arg) < 0; b--)
                    o[b] = o[b - 1];
                o[b] = t;
            }
        }
    }
}

void cairn_ksort(struct cairn_ksort *o, size_t n, cairn_ksort_key key, cairn_ksort_cmp cmp,
                 void *arg)
{
    uint64_t seed = 0x9E3779B97F4A7C15ULL;
    if (n > 1)
        ks_level(o, n, ks_shared(o, n, key, arg), 0, key, cmp, arg, &seed);
}

int cairn_ksort_ptrs(void *v, size_t n, cairn_ksort_key key, cairn_ksort_cmp cmp, void *arg)
{
    if (n < 2)
        return 0;
    struct cairn_ksort *o = malloc(n * sizeof *o);
    if (!o)
        return CAIRN_ENOMEM;
    /* memcpy: the array's elements are the caller's pointer type */
    char *a = v;
    for (size_t i = 0; i < n; i++)
        memcpy(&o[i].p, a + i * sizeof o[i].p, sizeof o[i].p);
    cairn_ksort(o, n, key, cmp, arg);
    for (size_t i = 0; i < n; i++)
        memcpy(a + i * sizeof o[i].p, &o[i].p, sizeof o[i].p);
    free(o);
    return 0;
}

/* ====================================================================== files */

int cairn_mkdirs(const char *path)
{
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s", path);
    if (n <= 0 || (size_t)n >= sizeof tmp)
        return CAIRN_EINVAL;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) && errno != EEXIST)
            return CAIRN_EIO;
        *p = '/';
    }
    if (mkdir(tmp, 0755) && errno != EEXIST)
        return CAIRN_EIO;
    return 0;
}

/*
 * bench.h — helpers shared by the benchmarks in bench/: clocks, quantiles,
 * scratch directories, and the raw LMDB append loop every log benchmark
 * compares itself with (the machine's limit for durable appends).
 */
#ifndef CAIRN_BENCH_H
#define CAIRN_BENCH_H

#include "common.h"
#include "workload.h"

/* CLOCK_MONOTONIC in ns. */
int64_t bench_mono_ns(void);
/* CPU time (user + system) of the whole process / of the calling thread. */
int64_t bench_cpu_ns(void);
int64_t bench_thread_cpu_ns(void);
/* System (kernel) CPU time of the whole process. */
int64_t bench_sys_ns(void);

/* A field of /proc/self/io ("wchar", "write_bytes", …); 0 when unavailable. */
uint64_t bench_io_field(const char *name);
/* Bytes this process passed to write(2)-like calls so far (wchar of
 * /proc/self/io; 0 where unavailable): how much LMDB really wrote. */
uint64_t bench_io_wchar(void);

/* The 1-minute load average (/proc/loadavg), -1 when unavailable. */
double bench_loadavg(void);

/* Sorts v ascending, then bench_quantile(v, n, 0.99) is the nearest-rank
 * 99th percentile of the sorted array (0 when n == 0). */
void bench_sort(int64_t *v, size_t n);
int64_t bench_quantile(const int64_t *v, size_t n, double q);

/* Marks the timed phase a profiler should see: cmd "enable" at its start,
 * "disable" at its end. With CAIRN_BENCH_PERF_CTL=FIFO
 * (perf record -D -1 --control fifo:FIFO) perf samples only those phases;
 * under `valgrind --tool=callgrind --instr-atstart=no` they are the only
 * ones instrumented (the client requests are no-ops otherwise). */
void bench_perf_ctl(const char *cmd);

/* Creates parent/cairn-bench-XXXXXX (mkdtemp) and writes its path to out. */
int bench_tmpdir(const char *parent, char *out, size_t cap);
/* rm -r path (does not follow symlinks). */
int bench_rmtree(const char *path);
/* Joins dir + "/" + name into out; CAIRN_ETOOBIG when it does not fit. */
int bench_path(char *out, size_t cap, const char *dir, const char *name);

/* What the raw loop achieved. */
struct bench_raw_result {
    uint64_t values, bytes, commits;
    uint64_t written; /* bytes LMDB wrote to its files (bench_io_wchar) */
    int64_t wall_ns;
    int64_t p50_ns, p99_ns, max_ns; /* per commit: begin .. commit returned */
};

/* The baseline: a fresh LMDB environment in `dir` (created), one DBI,
 * value i of `vals` put under key i + 1 (u64 big-endian) with MDB_APPEND,
 * a durable commit (default flags: fsync) every `batch` values. The map is
 * sized up front so it never grows while timed. */
int bench_raw_append(const char *dir, const struct workload_corpus *vals, size_t batch,
                     struct bench_raw_result *out);

#endif

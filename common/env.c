/*
 * env.c — an LMDB environment whose map grows instead of failing.
 *
 * Why a lock: mdb_env_set_mapsize() remaps the file, so no transaction of
 * this process may be open while it runs (LMDB does not check this). Every
 * transaction holds `resize` shared; growing holds it exclusive. The lock is
 * writer-preferring so a stream of readers cannot starve a grow.
 *
 * Another process may grow the map too (a `cairn append` next to a running
 * server): then mdb_txn_begin answers MDB_MAP_RESIZED and we adopt the new
 * size with mdb_env_set_mapsize(env, 0) and retry.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

struct cairn_env {
    MDB_env *env;
    pthread_rwlock_t resize;
    size_t mapsize;
    unsigned map_gen; /* bumped at every remap, under `resize` exclusive */
    /* cairn_env_populate's view of the map, under pop_mu: found in
     * /proc/self/maps for map_gen pop_gen; pop_off once it cannot work. */
    pthread_mutex_t pop_mu;
    uint8_t *pop_base;
    size_t pop_len;
    unsigned pop_gen;
    bool pop_found, pop_off;
};

int cairn_errno_err(int err)
{
    switch (err) {
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return CAIRN_ENOSPC;
    case ENOMEM: return CAIRN_ENOMEM;
    default: return CAIRN_EIO;
    }
}

int cairn_mdb_err(int rc)
{
    switch (rc) {
    case 0: return 0;
    case MDB_MAP_FULL: return CAIRN_EMAPFULL;
    case MDB_NOTFOUND: return CAIRN_ENOTFOUND;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH: return CAIRN_ECORRUPT;
    case ENOMEM: return CAIRN_ENOMEM;
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return CAIRN_ENOSPC;
    default: return CAIRN_EDB;
    }
}

int cairn_env_open(struct cairn_env **out, const char *path, unsigned maxdbs, size_t mapsize,
                   unsigned flags)
{
    struct cairn_env *ce = calloc(1, sizeof *ce);
    if (!ce)
        return CAIRN_ENOMEM;
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&ce->resize, &attr);
    pthread_rwlockattr_destroy(&attr);
    pthread_mutex_init(&ce->pop_mu, NULL);

    int rc = CAIRN_EIO;
    if (!(flags & MDB_RDONLY) && cairn_mkdirs(path))
        goto fail;
    rc = cairn_mdb_err(mdb_env_create(&ce->env));
    if (rc)
        goto fail;
    mdb_env_set_maxdbs(ce->env, maxdbs);
    /* Readers: one per thread; an HTTP server with many subscribers reads
     * from the loop thread and a few workers, so 510 is generous. */
    mdb_env_set_maxreaders(ce->env, 510);
    mdb_env_set_mapsize(ce->env, mapsize ? mapsize : CAIRN_MAP_SIZE_DEFAULT);
    /* MDB_NOTLS: read txns are not tied to threads (HTTP handlers may
     * finish a read on another thread than they began). */
    int mrc = mdb_env_open(ce->env, path, flags | MDB_NOTLS, 0644);
    if (mrc) {
        fprintf(stderr, "cairn: cannot open LMDB environment %s: %s\n", path, mdb_strerror(mrc));
        rc = mrc == ENOENT || mrc == EACCES ? CAIRN_EIO : cairn_mdb_err(mrc);
        goto fail;
    }
    MDB_envinfo info;
    mdb_env_info(ce->env, &info);
    ce->mapsize = info.me_mapsize;
    *out = ce;
    return 0;
fail:
    if (ce->env)
        mdb_env_close(ce->env);
    pthread_rwlock_destroy(&ce->resize);
    pthread_mutex_destroy(&ce->pop_mu);
    free(ce);
    return rc;
}

void cairn_env_close(struct cairn_env *ce)
{
    if (!ce)
        return;
    mdb_env_close(ce->env);
    pthread_rwlock_destroy(&ce->resize);
    pthread_mutex_destroy(&ce->pop_mu);
    free(ce);
}

MDB_env *cairn_env_mdb(struct cairn_env *ce)
{
    return ce->env;
}

/* Adopts a size another process set. Needs the exclusive lock. */
static void adopt_mapsize(struct cairn_env *ce)
{
    pthread_rwlock_wrlock(&ce->resize);
    mdb_env_set_mapsize(ce->env, 0);
    ce->map_gen++;
    MDB_envinfo info;
    mdb_env_info(ce->env, &info);
    ce->mapsize = info.me_mapsize;
    pthread_rwlock_unlock(&ce->resize);
}

static int txn_begin(struct cairn_env *ce, unsigned flags, MDB_txn **txn)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        pthread_rwlock_rdlock(&ce->resize);
        int rc = mdb_txn_begin(ce->env, NULL, flags, txn);
        if (rc == 0)
            return 0;
        pthread_rwlock_unlock(&ce->resize);
        if (rc != MDB_MAP_RESIZED)
            return cairn_mdb_err(rc);
        adopt_mapsize(ce);
    }
    return CAIRN_EDB;
}

int cairn_env_read_begin(struct cairn_env *ce, MDB_txn **txn)
{
    return txn_begin(ce, MDB_RDONLY, txn);
}

void cairn_env_read_end(struct cairn_env *ce, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&ce->resize);
}

int cairn_env_read_commit(struct cairn_env *ce, MDB_txn *txn)
{
    int rc = mdb_txn_commit(txn);
    pthread_rwlock_unlock(&ce->resize);
    return cairn_mdb_err(rc);
}

int cairn_env_write_begin(struct cairn_env *ce, MDB_txn **txn)
{
    return txn_begin(ce, 0, txn);
}

/* LMDB reports a write the disk cut short as EIO ("short write,
 * filesystem full?", mdb_page_flush): the usual way a full disk shows.
 * Said as the full disk it is when the file system has less than a
 * megabyte left after it. */
#define FULL_DISK_FREE (1u << 20)

static int commit_err(struct cairn_env *ce, int rc)
{
    const char *path;
    struct statvfs vfs;
    if (rc == EIO && !mdb_env_get_path(ce->env, &path) && !statvfs(path, &vfs) &&
        (uint64_t)vfs.f_bavail * vfs.f_frsize < FULL_DISK_FREE)
        return CAIRN_ENOSPC;
    return cairn_mdb_err(rc);
}

int cairn_env_write_commit(struct cairn_env *ce, MDB_txn *txn)
{
    int rc = mdb_txn_commit(txn);
    pthread_rwlock_unlock(&ce->resize);
    return rc ? commit_err(ce, rc) : 0;
}

void cairn_env_write_abort(struct cairn_env *ce, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&ce->resize);
}

/* A writer in another process (a server) that grows the map while a
 * reader here copies makes the copy's read transaction meet
 * MDB_MAP_RESIZED as it begins: the size is adopted and the copy begun
 * again, as txn_begin does for every other read. */
#define COPY_ATTEMPTS 8

int cairn_env_copy(struct cairn_env *ce, const char *dir)
{
    char path[4200];
    int rc = cairn_mkdirs(dir);
    if (rc)
        return rc;
    snprintf(path, sizeof path, "%.4000s/data.mdb", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return cairn_errno_err(errno);
    int mrc = MDB_MAP_RESIZED;
    for (int attempt = 0; attempt < COPY_ATTEMPTS && mrc == MDB_MAP_RESIZED; attempt++) {
        if (attempt)
            adopt_mapsize(ce);
        if (ftruncate(fd, 0) || lseek(fd, 0, SEEK_SET)) {
            mrc = errno;
            break;
        }
        pthread_rwlock_rdlock(&ce->resize); /* the map may not move under the copy */
        mrc = mdb_env_copyfd2(ce->env, fd, MDB_CP_COMPACT);
        pthread_rwlock_unlock(&ce->resize);
    }
    if (!mrc && fsync(fd))
        mrc = errno;
    if (close(fd) && !mrc)
        mrc = errno;
    if (!mrc)
        return 0;
    unlink(path);
    return mrc == MDB_MAP_RESIZED ? CAIRN_EBUSY : cairn_errno_err(mrc);
}

int cairn_env_grow(struct cairn_env *ce)
{
    int rc = 0;
    pthread_rwlock_wrlock(&ce->resize);
    /* Another process may have grown it already; start from the larger. */
    MDB_envinfo info;
    mdb_env_info(ce->env, &info);
    size_t cur = info.me_mapsize > ce->mapsize ? info.me_mapsize : ce->mapsize;
    if (cur >= CAIRN_MAP_SIZE_CEILING) {
        rc = CAIRN_ETOOBIG;
    } else {
        size_t next = cur * 2 > CAIRN_MAP_SIZE_CEILING ? CAIRN_MAP_SIZE_CEILING : cur * 2;
        int mrc = mdb_env_set_mapsize(ce->env, next);
        ce->map_gen++;
        if (mrc)
            rc = cairn_mdb_err(mrc);
        else
            ce->mapsize = next;
    }
    pthread_rwlock_unlock(&ce->resize);
    return rc;
}

/* An fdatasync of the data file: what mdb_env_sync(env, 1) is on Linux,
 * with or without MDB_WRITEMAP (with it, LMDB's msync(MS_SYNC) of the
 * whole map, which Linux does as an fdatasync: stores through a shared
 * mapping are dirty pages of the file's page cache). Not the msync
 * itself: valgrind's memcheck checks every byte of an msync's range,
 * half a second for a 256 MiB map — three syncs of the log index per
 * open and close of a log, one of the state per replay: over half of
 * every `cairn` command's run in the memcheck tests. */
int cairn_env_sync(struct cairn_env *ce)
{
    int fd;
    int rc = mdb_env_get_fd(ce->env, &fd);
    if (rc)
        return cairn_mdb_err(rc);
    return fdatasync(fd) ? CAIRN_EIO : 0;
}

static uint8_t *map_base(struct cairn_env *ce, size_t *len);

/* The map's pages leave this process's page tables first (MADV_DONTNEED:
 * on a shared file mapping a page stays in the page cache with its bytes,
 * a dirty one dirty, and the next access maps it again). Writing back a
 * page that is mapped write-protects its entry, and each is a TLB
 * shootdown: an interrupt of every other CPU running the process — 20 000
 * for bench/replay's 1M-event state, felt by whatever the other thread
 * does meanwhile (engine_replay: the handlers' close). Unmapping the
 * range flushes the TLB once. Tried only (trylock), as populating: a
 * thread about to remap must not wait for this. */
void cairn_env_sync_start(struct cairn_env *ce)
{
    int fd;
    size_t len;
    if (!pthread_rwlock_tryrdlock(&ce->resize)) {
        uint8_t *base = map_base(ce, &len);
        if (base)
            (void)madvise(base, len, MADV_DONTNEED);
        pthread_rwlock_unlock(&ce->resize);
    }
    if (!mdb_env_get_fd(ce->env, &fd))
        (void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

/* ====================================================================== populating the map
 *
 * With MDB_WRITEMAP (the state, proj.c) LMDB writes new pages straight
 * into the mapped file, and the first store to each page is a page fault
 * in which the kernel allocates a page-cache page, zeroes it and lets the
 * file system map its block (page_mkwrite): ~5 us on the test VM, tens of
 * thousands of times per replay transaction, most of them in the
 * handlers' flushes (proj_prefault). madvise(MADV_POPULATE_WRITE, Linux
 * 5.14) does the same work for a range, as a write would, on the calling
 * thread — another CPU than the writer's — and changes no byte.
 *
 * Only for pages reserved on disk (proj.c reserves the whole map, so no
 * SIGBUS). The map's address is not exported by LMDB (me_mapaddr is only
 * set with MDB_FIXEDMAP): it is the mapping of the data file at offset 0
 * in /proc/self/maps, found again after each remap (map_gen). `resize` is
 * held shared around the madvise, so the map cannot move under it; only
 * tried (trylock): a thread waiting to grow the map must not wait for
 * this, nor this for it. */

/* The address and length of this environment's map, or NULL. */
static uint8_t *map_address(struct cairn_env *ce, size_t *len)
{
    int fd;
    struct stat st;
    if (mdb_env_get_fd(ce->env, &fd) || fstat(fd, &st))
        return NULL;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return NULL;
    char line[512];
    uint8_t *found = NULL;
    while (!found && fgets(line, sizeof line, f)) {
        unsigned long lo, hi, ino;
        unsigned long long off;
        unsigned maj, mnr;
        char perm[8];
        if (sscanf(line, "%lx-%lx %7s %llx %x:%x %lu", &lo, &hi, perm, &off, &maj, &mnr, &ino) ==
                7 &&
            off == 0 && ino == st.st_ino && maj == major(st.st_dev) && mnr == minor(st.st_dev) &&
            perm[1] == 'w' && perm[3] == 's') {
            found = (uint8_t *)lo;
            *len = hi - lo;
        }
    }
    fclose(f);
    return found;
}

/* The map's address and length (NULL: not found), with `resize` held
 * shared by the caller. */
static uint8_t *map_base(struct cairn_env *ce, size_t *len)
{
    pthread_mutex_lock(&ce->pop_mu);
    if (!ce->pop_off && (!ce->pop_found || ce->pop_gen != ce->map_gen)) {
        ce->pop_base = map_address(ce, &ce->pop_len);
        ce->pop_gen = ce->map_gen;
        ce->pop_found = true;
        ce->pop_off = !ce->pop_base;
    }
    uint8_t *base = ce->pop_off ? NULL : ce->pop_base;
    *len = ce->pop_len;
    pthread_mutex_unlock(&ce->pop_mu);
    return base;
}

/* Populating at least this many pages, the range is advised sequential
 * for the time of it: the kernel then reads the file's fresh blocks in
 * batches (readahead; the blocks are reserved and unwritten, so "read" is
 * zeroing) instead of one page per call — LMDB advises a MDB_NORDAHEAD map
 * random. A test on this VM, 20 000 pages of a fallocated file populated
 * in chunks: 5.0-5.2 us a page advised random; advised sequential, 1.4-1.7
 * us in chunks of 1 024 or 2 048 pages, but erratic in chunks of 512
 * (1.5-9 us) and 9-11 us in chunks of 64 or 128. */
#define POPULATE_SEQ_MIN 1024

int cairn_env_populate(struct cairn_env *ce, size_t from, size_t n)
{
    int rc = 0;
    if (pthread_rwlock_tryrdlock(&ce->resize))
        return 0; /* a remap is due: skip, the writes will fault */
    size_t psize = (size_t)sysconf(_SC_PAGESIZE), len;
    uint8_t *base = map_base(ce, &len);
    if (!base) {
        rc = CAIRN_EIO;
    } else if (from < len / psize) {
        n = n < len / psize - from ? n : len / psize - from;
        uint8_t *at = base + from * psize;
        unsigned flags = 0;
        bool seq = n >= POPULATE_SEQ_MIN && !mdb_env_get_flags(ce->env, &flags);
        if (seq)
            (void)madvise(at, n * psize, MADV_SEQUENTIAL);
        int prc = madvise(at, n * psize, MADV_POPULATE_WRITE);
        if (seq) /* back to what LMDB advised (MDB_NORDAHEAD: random) */
            (void)madvise(at, n * psize, flags & MDB_NORDAHEAD ? MADV_RANDOM : MADV_NORMAL);
        if (prc) {
            /* EINVAL: a kernel without it; the others (memory) may pass */
            if (errno == EINVAL || errno == EPERM) {
                pthread_mutex_lock(&ce->pop_mu);
                ce->pop_off = true;
                pthread_mutex_unlock(&ce->pop_mu);
            }
            rc = CAIRN_EIO;
        }
    }
    pthread_rwlock_unlock(&ce->resize);
    return rc;
}

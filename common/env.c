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
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

struct cairn_env {
    MDB_env *env;
    pthread_rwlock_t resize;
    size_t mapsize;
};

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
    free(ce);
    return rc;
}

void cairn_env_close(struct cairn_env *ce)
{
    if (!ce)
        return;
    mdb_env_close(ce->env);
    pthread_rwlock_destroy(&ce->resize);
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

int cairn_env_write_commit(struct cairn_env *ce, MDB_txn *txn)
{
    int rc = mdb_txn_commit(txn);
    pthread_rwlock_unlock(&ce->resize);
    return cairn_mdb_err(rc);
}

void cairn_env_write_abort(struct cairn_env *ce, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&ce->resize);
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

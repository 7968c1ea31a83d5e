/* test_core.c -- the file helpers of core (and the writers built on them): readers never block
 * on a FIFO and accept only regular files; writers never follow a planted symlink, never replace
 * a device, FIFO, directory or symlink, sync file and directory, and leave nothing behind when a
 * write fails; init-model removes what it created when it fails (issue 7, defects 4-7 and 16).
 * The step workspace (arena): sizing equals what is taken, 64-byte alignment, marks, a take
 * that does not fit or overflows is NULL with DSACP_ENOMEM (issue 21). */
#include "core/core.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static char g_dir[64];

static void path_in(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

/* ---- fsync interposed: counts syncs of regular files and of directories, can fail on demand.
 * The library's calls to fsync resolve to this definition (the executable's symbol wins). ---- */
static int g_fsync_files, g_fsync_dirs, g_fsync_fail;
int fsync(int fd)
{
    struct stat st;
    if (fstat(fd, &st) == 0) {
        if (S_ISDIR(st.st_mode)) g_fsync_dirs++;
        else if (S_ISREG(st.st_mode)) g_fsync_files++;
    }
    if (g_fsync_fail) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_fsync, fd);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

static bool file_is(const char *path, const char *text)
{
    char *buf;
    size_t len;
    if (dsacp_read_file(path, &buf, &len, 1 << 20) != DSACP_OK) return false;
    bool same = len == strlen(text) && memcmp(buf, text, len) == 0;
    dsacp_free(buf);
    return same;
}

/* Entries in a directory other than . and .. whose name contains `part` (NULL: every one). */
static int count_entries(const char *dir, const char *part)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && (!part || strstr(e->d_name, part))) n++;
    closedir(d);
    return n;
}

static int dir_entries(const char *dir) { return count_entries(dir, NULL); }

/* Temporaries left in a directory: names containing ".tmp". */
static int temporaries(const char *dir) { return count_entries(dir, ".tmp"); }

static bool msg_has(const char *needle) { return strstr(dsacp_last_error(), needle) != NULL; }

/* Defect 6: a FIFO (or a directory) as any input fails at once, naming the file. alarm() turns
 * a regression (a blocking open) into a failure instead of a hang. */
static void test_readers_refuse_fifo(void)
{
    char fifo[128], dir[128];
    path_in(fifo, sizeof fifo, "in.fifo");
    path_in(dir, sizeof dir, "adir");
    REQUIRE_OK(mkfifo(fifo, 0600) == 0 ? 0 : DSACP_EIO);
    REQUIRE_OK(mkdir(dir, 0700) == 0 ? 0 : DSACP_EIO);
    alarm(20);
    char *buf = NULL;
    size_t len = 0;
    int rc = dsacp_read_file(fifo, &buf, &len, 1 << 20);
    CHECKF(rc == DSACP_EIO && msg_has(fifo) && msg_has("FIFO"), "rc %d: %s", rc, dsacp_last_error());
    CHECK(buf == NULL);
    rc = dsacp_read_file(dir, &buf, &len, 1 << 20);
    CHECKF(rc == DSACP_EIO && msg_has(dir) && msg_has("directory"), "rc %d: %s", rc, dsacp_last_error());
    dsacp_st_file *f = NULL;
    rc = dsacp_st_open(fifo, &f);
    CHECKF(rc == DSACP_EIO && msg_has(fifo) && msg_has("FIFO") && !f, "rc %d: %s", rc, dsacp_last_error());
    int fd = -1;
    rc = dsacp_open_regular(fifo, &fd, NULL);
    CHECK(rc == DSACP_EIO && fd == -1);
    alarm(0);
    /* A regular file still reads whole. */
    char reg[128];
    path_in(reg, sizeof reg, "reg.txt");
    write_text(reg, "hello");
    CHECK(file_is(reg, "hello"));
    unlink(reg);
    unlink(fifo);
    rmdir(dir);
}

/* Defect 4: a symlink planted at the old predictable temporary names (<out>.tmp.<pid>) and at
 * names of the new form is never followed: the victim keeps its bytes. */
static void test_writers_ignore_planted_symlinks(void)
{
    char victim[128], out[128], st_out[128], link[192];
    path_in(victim, sizeof victim, "victim.txt");
    path_in(out, sizeof out, "out.json");
    path_in(st_out, sizeof st_out, "out.safetensors");
    write_text(victim, "precious");
    const char *targets[2] = {out, st_out};
    for (int i = 0; i < 2; i++) {
        snprintf(link, sizeof link, "%s.tmp.%ld", targets[i], (long)getpid());
        REQUIRE_OK(symlink(victim, link) == 0 ? 0 : DSACP_EIO);
    }
    CHECK_OK(dsacp_write_file_atomic(out, "{}", 2));
    CHECK(file_is(out, "{}"));
    dsacp_st_writer *w;
    REQUIRE_OK(dsacp_st_writer_create(&w));
    const float x[3] = {1, 2, 3};
    const int64_t shape[1] = {3};
    CHECK_OK(dsacp_st_writer_add(w, "x", DSACP_F32, 1, shape, x));
    CHECK_OK(dsacp_st_writer_write(w, st_out));
    dsacp_st_writer_free(w);
    dsacp_st_file *f;
    CHECK_OK(dsacp_st_open(st_out, &f));
    if (f) dsacp_st_close(f);
    CHECKF(file_is(victim, "precious"), "the planted symlink was followed");
    struct stat st;
    for (int i = 0; i < 2; i++) {
        snprintf(link, sizeof link, "%s.tmp.%ld", targets[i], (long)getpid());
        CHECK(lstat(link, &st) == 0 && S_ISLNK(st.st_mode));
        unlink(link);
    }
    /* Nothing else left behind: victim, out.json, out.safetensors. */
    CHECK(temporaries(g_dir) == 0);
    CHECK(dir_entries(g_dir) == 3);
    /* The new file has the usual permissions (0644 less the umask), not mkstemp's 0600. */
    mode_t um = umask(022);
    umask(um);
    CHECK(stat(out, &st) == 0 && (st.st_mode & 0777) == (0644 & ~um));
    unlink(out);
    unlink(st_out);
    unlink(victim);
}

/* Defect 5: an existing output that is not a regular file is refused with a message naming it,
 * and stays what it was. */
static void check_refused(const char *path, mode_t type, const char *kind)
{
    int rc = dsacp_write_file_atomic(path, "data", 4);
    CHECKF(rc == DSACP_EIO && msg_has(path) && msg_has(kind), "%s: rc %d: %s", path, rc, dsacp_last_error());
    dsacp_st_writer *w;
    REQUIRE_OK(dsacp_st_writer_create(&w));
    rc = dsacp_st_writer_write(w, path);
    dsacp_st_writer_free(w);
    CHECKF(rc == DSACP_EIO && msg_has(path) && msg_has(kind), "%s: rc %d: %s", path, rc, dsacp_last_error());
    struct stat st;
    CHECKF(lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == type, "%s was replaced", path);
    CHECK(temporaries(g_dir) == 0);
}

static void test_writers_refuse_special_outputs(void)
{
    char fifo[128], dir[128], link[128], victim[128], dev[128];
    path_in(fifo, sizeof fifo, "out.fifo");
    path_in(dir, sizeof dir, "out.dir");
    path_in(link, sizeof link, "out.link");
    path_in(victim, sizeof victim, "victim2.txt");
    REQUIRE_OK(mkfifo(fifo, 0600) == 0 ? 0 : DSACP_EIO);
    REQUIRE_OK(mkdir(dir, 0700) == 0 ? 0 : DSACP_EIO);
    write_text(victim, "keep me");
    REQUIRE_OK(symlink(victim, link) == 0 ? 0 : DSACP_EIO);
    alarm(20);
    check_refused(fifo, S_IFIFO, "FIFO");
    check_refused(dir, S_IFDIR, "directory");
    check_refused(link, S_IFLNK, "symbolic link");
    CHECK(file_is(victim, "keep me"));
    /* A character device like /dev/full (1, 7), made here: only root may. */
    path_in(dev, sizeof dev, "out.dev");
    if (mknod(dev, S_IFCHR | 0600, makedev(1, 7)) == 0) {
        check_refused(dev, S_IFCHR, "character device");
        unlink(dev);
    } else {
        printf("skipping the device-node case (mknod: %s)\n", strerror(errno));
    }
    alarm(0);
    /* A regular file is replaced as before. */
    char reg[128];
    path_in(reg, sizeof reg, "out.reg");
    write_text(reg, "old");
    CHECK_OK(dsacp_write_file_atomic(reg, "new", 3));
    CHECK(file_is(reg, "new"));
    unlink(reg);
    unlink(fifo);
    rmdir(dir);
    unlink(link);
    unlink(victim);
}

/* Defect 16: every writer syncs the file before the rename and the directory after it; a failed
 * fsync is an error that leaves the target as it was and no temporary behind. */
static void test_writers_sync(void)
{
    char out[128], st_out[128];
    path_in(out, sizeof out, "sync.json");
    path_in(st_out, sizeof st_out, "sync.safetensors");
    g_fsync_files = g_fsync_dirs = 0;
    CHECK_OK(dsacp_write_file_atomic(out, "one", 3));
    CHECKF(g_fsync_files >= 1 && g_fsync_dirs >= 1, "file syncs %d, directory syncs %d", g_fsync_files,
           g_fsync_dirs);
    dsacp_st_writer *w;
    REQUIRE_OK(dsacp_st_writer_create(&w));
    g_fsync_files = g_fsync_dirs = 0;
    CHECK_OK(dsacp_st_writer_write(w, st_out));
    CHECKF(g_fsync_files >= 1 && g_fsync_dirs >= 1, "file syncs %d, directory syncs %d", g_fsync_files,
           g_fsync_dirs);

    g_fsync_fail = 1;
    int rc = dsacp_write_file_atomic(out, "two", 3);
    CHECKF(rc == DSACP_EIO && msg_has(out) && msg_has("fsync"), "rc %d: %s", rc, dsacp_last_error());
    rc = dsacp_st_writer_write(w, st_out);
    CHECKF(rc == DSACP_EIO && msg_has(st_out), "rc %d: %s", rc, dsacp_last_error());
    g_fsync_fail = 0;
    dsacp_st_writer_free(w);
    CHECK(file_is(out, "one"));
    CHECK(temporaries(g_dir) == 0);
    unlink(out);
    unlink(st_out);
}

/* A write that fails half way (EFBIG under RLIMIT_FSIZE) is reported and leaves nothing. */
static struct rlimit g_saved;
static void limit_file_size(rlim_t bytes)
{
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &g_saved);
    struct rlimit r = g_saved;
    r.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &r);
}
static void unlimit_file_size(void) { setrlimit(RLIMIT_FSIZE, &g_saved); }

static void test_write_failure_leaves_nothing(void)
{
    char out[128];
    path_in(out, sizeof out, "big.bin");
    size_t n = 1 << 20;
    char *big = dsacp_calloc(n, 1);
    REQUIRE_OK(big ? 0 : DSACP_ENOMEM);
    limit_file_size(64 * 1024);
    int rc = dsacp_write_file_atomic(out, big, n);
    unlimit_file_size();
    CHECKF(rc == DSACP_EIO && msg_has(out), "rc %d: %s", rc, dsacp_last_error());
    CHECK(access(out, F_OK) != 0);
    CHECK(temporaries(g_dir) == 0);
    dsacp_free(big);
}

/* Defect 7: init-model that fails (file size limit: EFBIG, as on a full disk) removes the
 * directory it created, and in an existing directory leaves only what was there. */
static void test_init_model_failure_cleans_up(void)
{
    dsacp_config cfg;
    REQUIRE_OK(dsacp_preset_config("tiny", &cfg));
    char mdir[128], old[128], keep[160];
    path_in(mdir, sizeof mdir, "model_new");
    limit_file_size(64 * 1024);
    int rc = dsacp_model_init(&cfg, mdir, 1, DSACP_WEIGHTS_BF16);
    unlimit_file_size();
    CHECKF(rc != DSACP_OK, "init-model succeeded under a 64 KiB file size limit");
    CHECKF(access(mdir, F_OK) != 0, "%s left behind after a failed init-model", mdir);

    path_in(old, sizeof old, "model_old");
    REQUIRE_OK(mkdir(old, 0755) == 0 ? 0 : DSACP_EIO);
    snprintf(keep, sizeof keep, "%s/notes.txt", old);
    write_text(keep, "mine");
    limit_file_size(64 * 1024);
    rc = dsacp_model_init(&cfg, old, 1, DSACP_WEIGHTS_BF16);
    unlimit_file_size();
    CHECK(rc != DSACP_OK);
    CHECK(dir_entries(old) == 1 && file_is(keep, "mine"));

    /* Without the limit both succeed and leave exactly config.json and model.safetensors. */
    CHECK_OK(dsacp_model_init(&cfg, mdir, 1, DSACP_WEIGHTS_BF16));
    CHECK(dir_entries(mdir) == 2);
    char p[192];
    snprintf(p, sizeof p, "%s/config.json", mdir);
    unlink(p);
    snprintf(p, sizeof p, "%s/model.safetensors", mdir);
    unlink(p);
    rmdir(mdir);
    unlink(keep);
    rmdir(old);
}

static void test_make_dir_created(void)
{
    char d[128];
    path_in(d, sizeof d, "made");
    bool created = false;
    CHECK_OK(dsacp_make_dir_created(d, &created));
    CHECK(created);
    CHECK_OK(dsacp_make_dir_created(d, &created));
    CHECK(!created);
    rmdir(d);
}

/* The step workspace: what dsacp_arena_need counts is exactly what the takes use; buffers are
 * 64-byte aligned and disjoint; a mark gives back a phase's buffers; a take beyond the capacity
 * or with an overflowing size is NULL with DSACP_ENOMEM naming the buffer; an overflowed size is
 * refused by create. */
static void test_arena(void)
{
    size_t need = 0;
    dsacp_arena_need(&need, 3, 5, sizeof(float));   /* 60 -> 64 */
    dsacp_arena_need(&need, 7, 1, sizeof(int64_t)); /* 56 -> 64 */
    dsacp_arena_need(&need, 0, 9, sizeof(double));  /* 0 */
    dsacp_arena_need(&need, 2, 100, 1);             /* 200 -> 256 */
    CHECKF(need == 384, "need %zu", need);
    dsacp_arena a;
    REQUIRE_OK(dsacp_arena_create(&a, need, "test"));
    float *f = dsacp_arena_take(&a, 3, 5, sizeof(float), "f");
    int64_t *i = dsacp_arena_take(&a, 7, 1, sizeof(int64_t), "i");
    double *none = dsacp_arena_take(&a, 0, 9, sizeof(double), "none");
    const size_t mark = dsacp_arena_mark(&a);
    unsigned char *c = dsacp_arena_take(&a, 2, 100, 1, "c");
    CHECK(f && i && none && c);
    CHECK((uintptr_t)f % 64 == 0 && (uintptr_t)i % 64 == 0 && (uintptr_t)c % 64 == 0);
    CHECK((unsigned char *)i >= (unsigned char *)(f + 15) && c >= (unsigned char *)(i + 7));
    CHECK(a.used == need && a.peak == need);
    dsacp_error_clear();
    CHECK(dsacp_arena_take(&a, 1, 1, 1, "extra") == NULL);
    CHECKF(strstr(dsacp_last_error(), "extra: workspace too small") != NULL, "%s", dsacp_last_error());
    dsacp_arena_rewind(&a, mark);
    CHECK(dsacp_arena_take(&a, 1, 256, 1, "reused") == c);
    CHECK(dsacp_arena_take(&a, INT64_MAX, INT64_MAX, 8, "huge") == NULL);
    CHECK(dsacp_arena_take(&a, -1, 1, 8, "negative") == NULL);
    dsacp_arena_reset(&a);
    CHECK(dsacp_arena_take(&a, 3, 5, sizeof(float), "again") == f);
    CHECK_OK(dsacp_arena_reserve(&a, need - 64, "smaller")); /* no change */
    CHECK(a.base == (unsigned char *)f && a.cap == need);
    CHECK_OK(dsacp_arena_reserve(&a, 4 * need, "larger"));
    CHECK(a.cap == 4 * need && a.used == 0 && (uintptr_t)a.base % 64 == 0);
    dsacp_arena_destroy(&a);
    CHECK(a.base == NULL && a.cap == 0);
    dsacp_arena_destroy(&a);

    size_t over = 0;
    dsacp_arena_need(&over, INT64_MAX, 2, 8);
    CHECK(over == SIZE_MAX);
    dsacp_arena_need(&over, 1, 1, 1); /* stays overflowed */
    CHECK(over == SIZE_MAX);
    CHECK(dsacp_arena_create(&a, over, "overflowed") == DSACP_ERANGE);
    CHECK(a.base == NULL);
    CHECK_OK(dsacp_arena_create(&a, 0, "empty"));
    CHECK(dsacp_arena_take(&a, 0, 0, 4, "nothing") != NULL);
    CHECK(dsacp_arena_take(&a, 1, 1, 4, "something") == NULL);
    dsacp_arena_destroy(&a);
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/dsacp_core_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_readers_refuse_fifo();
    test_writers_ignore_planted_symlinks();
    test_writers_refuse_special_outputs();
    test_writers_sync();
    test_write_failure_leaves_nothing();
    test_init_model_failure_cleans_up();
    test_make_dir_created();
    test_arena();
    CHECKF(dir_entries(g_dir) == 0, "%d entries left in %s", dir_entries(g_dir), g_dir);
    rmdir(g_dir);
    return test_finish("test_core");
}

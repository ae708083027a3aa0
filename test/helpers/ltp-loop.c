/*
 * The Linux Test Project's loop device tests (testcases/kernel/syscalls/ioctl/
 * ioctl_loop01.c … ioctl_loop07.c and ioctl09.c), their assertions ported to
 * run against any loop-control and any directory of loopN entries: the
 * kernel's (/dev/loop-control, /dev) or a loopfs instance's (DIR/loop-control,
 * DIR). Our own code, written from reading LTP's; each case keeps LTP's order
 * of steps and LTP's expected results and errnos.
 *
 *   ltp-loop CASE CONTROL DEVDIR MODE      (run in an empty directory)
 *
 * MODE is "sysfs" (kernel devices), "nosysfs" (loopfs), or "sysfs,noparts"
 * for a kernel built without the MBR partition parser: its partitions never
 * appear, so the partition assertions are listed as exclusions there.
 *
 * Output, one line each:
 *   PASS <assertion>             the assertion held
 *   FAIL <assertion>: <why>      it did not
 *   EXCL <assertion>: <why>      it reads sysfs (/sys/block/loopN/...), which
 *                                exists only for kernel devices; printed instead
 *                                of checking it when run with "nosysfs". Each
 *                                such assertion is followed by one that checks
 *                                the same fact through an ioctl, on both sides.
 *   VALUE <key> <value>          an observation that LTP accepts either way (an
 *                                errno it only prints); the caller compares it
 *                                between the kernel and loopfs.
 *   INFO <text>
 *   BROK <why>                   the set-up failed (exit 2); exit 3 when the
 *                                device was taken by someone else meanwhile
 *                                (kernel devices are shared: the caller retries).
 * Exit 0 when nothing failed, 1 otherwise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>
#include <linux/loop.h>

#ifndef BLK_MAX_BLOCK_SIZE
#define BLK_MAX_BLOCK_SIZE 0x00010000 /* 64 KiB, as LTP's lapi/blkdev.h */
#endif

static const char *ctl_path, *dev_dir;
static int use_sysfs, no_parts;
static char dev_path[PATH_MAX], cwd[PATH_MAX];
static int dev_num = -1, dev_fd = -1, attached;
static int failures;

/* ---- reporting ---- */

static void res(int ok, const char *id, const char *fmt, ...)
{
	if (ok) {
		printf("PASS %s\n", id);
	} else {
		char why[512] = "";
		if (fmt) {
			va_list ap;
			va_start(ap, fmt);
			vsnprintf(why, sizeof(why), fmt, ap);
			va_end(ap);
		}
		printf("FAIL %s: %s\n", id, why);
		failures++;
	}
	fflush(stdout);
}

static void info(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("INFO ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
}

static void value(const char *key, const char *val)
{
	printf("VALUE %s %s\n", key, val);
	fflush(stdout);
}

static void cleanup(void);

static void __attribute__((noreturn)) brok(int code, const char *fmt, ...)
{
	va_list ap;
	int e = errno;
	va_start(ap, fmt);
	printf("BROK ");
	vprintf(fmt, ap);
	printf(": %s\n", strerrorname_np(e) ? strerrorname_np(e) : "0");
	va_end(ap);
	fflush(stdout);
	cleanup();
	exit(code);
}

static const char *ename(int e)
{
	const char *n = strerrorname_np(e);
	return n ? n : "?";
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* LTP's SAFE_IOCTL: an ioctl that must succeed, as a named assertion. */
static int must_ioctl(const char *id, int fd, unsigned long cmd, unsigned long arg)
{
	int r = ioctl(fd, cmd, arg);
	res(r == 0, id, "ioctl failed: %s", ename(errno));
	return r;
}

/* LTP's TST_RETRY_FUNC(…, TST_RETVAL_EQ0): retried while it fails (EAGAIN/EBUSY while a partition scan runs), then asserted. */
static int retry_ioctl(const char *id, int fd, unsigned long cmd, unsigned long arg)
{
	int r = -1;
	for (int i = 0; i < 100; i++) {
		r = ioctl(fd, cmd, arg);
		if (r == 0 || (errno != EAGAIN && errno != EBUSY))
			break;
		sleep_ms(20);
	}
	res(r == 0, id, "ioctl failed: %s", ename(errno));
	return r;
}

/* ---- sysfs, only for kernel devices ---- */

static void sysfs_path(char *buf, size_t len, const char *rel)
{
	snprintf(buf, len, "/sys/block/loop%d/%s", dev_num, rel);
}

static int read_sysfs(const char *rel, char *buf, size_t len)
{
	char p[PATH_MAX];
	sysfs_path(p, sizeof(p), rel);
	FILE *f = fopen(p, "r");
	if (!f)
		return -1;
	if (!fgets(buf, len, f))
		buf[0] = 0;
	fclose(f);
	buf[strcspn(buf, "\n")] = 0;
	return 0;
}

/* LTP's TST_ASSERT_INT on a sysfs file of the device. */
static void sysfs_int(const char *id, const char *rel, long long expect)
{
	if (!use_sysfs) {
		printf("EXCL %s: reads /sys/block/loopN/%s, which only a kernel block device has; the same fact is checked through an ioctl next\n", id, rel);
		return;
	}
	char buf[256];
	if (read_sysfs(rel, buf, sizeof(buf)))
		return res(0, id, "cannot read /sys/block/loop%d/%s", dev_num, rel);
	res(atoll(buf) == expect, id, "/sys/block/loop%d/%s is %s, expected %lld", dev_num, rel, buf, expect);
}

/* LTP's TST_ASSERT_STR on /sys/block/loopN/loop/backing_file. */
static void sysfs_backing(const char *id, const char *file)
{
	if (!use_sysfs) {
		printf("EXCL %s: reads /sys/block/loopN/loop/backing_file, which only a kernel block device has; the backing file is checked by lo_device/lo_inode next\n", id);
		return;
	}
	char buf[PATH_MAX], want[PATH_MAX * 2];
	snprintf(want, sizeof(want), "%s/%s", cwd, file);
	if (read_sysfs("loop/backing_file", buf, sizeof(buf)))
		return res(0, id, "cannot read backing_file");
	res(strcmp(buf, want) == 0, id, "backing_file is %s, expected %s", buf, want);
}

/* LTP's access() of /sys/block/loopN/loopNpM. */
static int exists_retry(const char *p, int want, int tries)
{
	for (int i = 0; i < tries; i++) {
		if ((access(p, F_OK) == 0) == want)
			return 1;
		sleep_ms(50);
	}
	return (access(p, F_OK) == 0) == want;
}

static void check_partition(const char *tag, int part, int want)
{
	char id[256], p[PATH_MAX + 16];
	snprintf(id, sizeof(id), "%s: /sys/block/loopN/loopNp%d %s", tag, part, want ? "exists" : "does not exist");
	if (no_parts) {
		printf("EXCL %s: this kernel reads no partition table (CONFIG_MSDOS_PARTITION is not set)\n", id);
		snprintf(id, sizeof(id), "%s: loopNp%d %s", tag, part, want ? "exists" : "does not exist");
		printf("EXCL %s: this kernel reads no partition table (CONFIG_MSDOS_PARTITION is not set)\n", id);
		return;
	}
	if (use_sysfs) {
		snprintf(p, sizeof(p), "/sys/block/loop%d/loop%dp%d", dev_num, dev_num, part);
		res(exists_retry(p, want, want ? 200 : 1), id, "%s", want ? "missing" : "present");
	} else {
		printf("EXCL %s: a loopfs partition is the entry loopNp%d of the instance, checked next; there is no sysfs node\n", id, part);
	}
	snprintf(id, sizeof(id), "%s: loopNp%d %s", tag, part, want ? "exists" : "does not exist");
	snprintf(p, sizeof(p), "%sp%d", dev_path, part);
	res(exists_retry(p, want, want ? 200 : 1), id, "%s %s", p, want ? "missing" : "present");
}

/* ---- the ioctl counterparts of the sysfs checks, run on both sides ---- */

static int get_status64(struct loop_info64 *li)
{
	memset(li, 0, sizeof(*li));
	return ioctl(dev_fd, LOOP_GET_STATUS64, li);
}

static void flags_are(const char *id, unsigned want)
{
	struct loop_info64 li;
	if (get_status64(&li))
		return res(0, id, "LOOP_GET_STATUS64: %s", ename(errno));
	res(li.lo_flags == want, id, "lo_flags 0x%x, expected 0x%x", li.lo_flags, want);
}

static void backing_is(const char *id, const char *file)
{
	struct loop_info64 li;
	struct stat st;
	if (stat(file, &st))
		return res(0, id, "stat %s: %s", file, ename(errno));
	if (get_status64(&li))
		return res(0, id, "LOOP_GET_STATUS64: %s", ename(errno));
	/* The kernel reports the backing file's st_dev encoded as huge_encode_dev(). */
	unsigned long long dev = (unsigned long long)minor(st.st_dev) & 0xff;
	dev |= (unsigned long long)major(st.st_dev) << 8;
	dev |= ((unsigned long long)minor(st.st_dev) & ~0xffULL) << 12;
	res(li.lo_inode == st.st_ino && li.lo_device == dev, id,
	    "lo_device 0x%llx lo_inode %llu, expected 0x%llx %llu", (unsigned long long)li.lo_device,
	    (unsigned long long)li.lo_inode, dev, (unsigned long long)st.st_ino);
}

static void size_is(const char *id, unsigned long long bytes)
{
	unsigned long long got = 0;
	if (ioctl(dev_fd, BLKGETSIZE64, &got))
		return res(0, id, "BLKGETSIZE64: %s", ename(errno));
	res(got == bytes, id, "BLKGETSIZE64 %llu, expected %llu", got, bytes);
}

static void ro_is(const char *id, int want)
{
	int ro = -1;
	if (ioctl(dev_fd, BLKROGET, &ro))
		return res(0, id, "BLKROGET: %s", ename(errno));
	res(ro == want, id, "BLKROGET %d, expected %d", ro, want);
}

/* ---- LTP's library: tst_device.c ---- */

static void fill_file(const char *name, size_t bs, size_t count)
{
	int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		brok(2, "create %s", name);
	char *buf = calloc(1, bs);
	for (size_t i = 0; i < count; i++)
		if (write(fd, buf, bs) != (ssize_t)bs)
			brok(2, "write %s", name);
	free(buf);
	fsync(fd);
	close(fd);
}

static void prealloc_file(const char *name, size_t bs, size_t count)
{
	int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || fallocate(fd, 0, 0, (off_t)(bs * count)))
		brok(2, "fallocate %s", name);
	close(fd);
}

/* tst_find_free_loopdev(): LOOP_CTL_GET_FREE on the control file, then wait for the entry. */
static void find_free_loopdev(void)
{
	int ctl = open(ctl_path, O_RDWR);
	if (ctl < 0)
		brok(2, "open %s", ctl_path);
	dev_num = ioctl(ctl, LOOP_CTL_GET_FREE);
	close(ctl);
	if (dev_num < 0)
		brok(2, "LOOP_CTL_GET_FREE");
	snprintf(dev_path, sizeof(dev_path), "%s/loop%d", dev_dir, dev_num);
	if (!exists_retry(dev_path, 1, 20))
		brok(2, "could not stat loop device %d", dev_num);
	info("found free device %d", dev_num);
}

/* tst_attach_device(): LOOP_SET_FD then LOOP_SET_STATUS with the file name. */
static void attach_device(const char *file)
{
	struct loop_info li;
	int fd = open(dev_path, O_RDWR);
	if (fd < 0)
		brok(2, "open %s", dev_path);
	int ffd = open(file, O_RDWR);
	if (ffd < 0)
		brok(2, "open %s", file);
	if (ioctl(fd, LOOP_SET_FD, ffd) < 0) {
		/* A kernel device picked by GET_FREE may be taken by another program before we bind it. */
		if (errno == EBUSY && use_sysfs)
			brok(3, "LOOP_SET_FD on %s: taken meanwhile", dev_path);
		brok(2, "LOOP_SET_FD on %s", dev_path);
	}
	attached = 1;
	memset(&li, 0, sizeof(li));
	strncpy(li.lo_name, file, sizeof(li.lo_name) - 1);
	if (ioctl(fd, LOOP_SET_STATUS, &li))
		brok(2, "LOOP_SET_STATUS on %s", dev_path);
	close(fd);
	close(ffd);
}

/*
 * tst_detach_device_by_fd(): LOOP_CLR_FD until ENXIO (the kernel marks the
 * device for detach and answers ENXIO once it is gone), close, then insist
 * that no partition of it is left.
 */
static void detach_by_fd(const char *tag)
{
	char id[256];
	int r = 0, e = 0, i;
	for (i = 0; i < 40; i++) {
		r = ioctl(dev_fd, LOOP_CLR_FD, 0);
		e = errno;
		if (r && (e == ENXIO || e != EBUSY))
			break;
		sleep_ms(50);
	}
	snprintf(id, sizeof(id), "%s: LOOP_CLR_FD detaches (ends in ENXIO)", tag);
	res(r && e == ENXIO, id, r ? "LOOP_CLR_FD failed %s" : "no ENXIO for too long", ename(e));
	close(dev_fd);
	dev_fd = -1;
	attached = 0;
	char part[PATH_MAX + 8];
	snprintf(part, sizeof(part), "%sp1", dev_path);
	snprintf(id, sizeof(id), "%s: no partition left after detach", tag);
	res(exists_retry(part, 0, 100), id, "%s still exists", part);
}

static void detach_device(const char *tag)
{
	dev_fd = open(dev_path, O_RDONLY);
	if (dev_fd < 0)
		brok(2, "open %s", dev_path);
	detach_by_fd(tag);
}

static int reopen_dev(void)
{
	dev_fd = open(dev_path, O_RDWR);
	if (dev_fd < 0)
		brok(2, "open %s", dev_path);
	return dev_fd;
}

static int open_or_brok(const char *name, int mode)
{
	int fd = open(name, mode);
	if (fd < 0)
		brok(2, "open %s", name);
	return fd;
}

static void cleanup(void)
{
	if (!attached || dev_num < 0)
		return;
	int fd = open(dev_path, O_RDONLY);
	if (fd >= 0) {
		ioctl(fd, LOOP_CLR_FD, 0);
		close(fd);
	}
}

/* Runs a tool (parted); on failure its output is shown as INFO lines. */
static int run_cmd(const char *const argv[])
{
	char log[] = "/tmp/ltp-loop-cmd-XXXXXX";
	int out = mkstemp(log);
	pid_t pid = fork();
	if (pid == 0) {
		dup2(out, 1);
		dup2(out, 2);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	int st;
	waitpid(pid, &st, 0);
	int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
	if (rc) {
		char line[512];
		FILE *f = fopen(log, "r");
		info("%s exited %d:", argv[0], rc);
		while (f && fgets(line, sizeof(line), f))
			if (!strstr(line, "udevadm"))
				printf("INFO   %s", line);
		if (f)
			fclose(f);
	}
	close(out);
	unlink(log);
	return rc;
}

/* LOOP_CONFIGURE with fd -1: EBADF where the kernel knows the ioctl (LTP's probe, here an assertion). */
static void probe_configure(const char *tag)
{
	struct loop_config c;
	char id[256];
	memset(&c, 0, sizeof(c));
	c.fd = (unsigned)-1;
	int r = ioctl(dev_fd, LOOP_CONFIGURE, &c);
	snprintf(id, sizeof(id), "%s: LOOP_CONFIGURE with fd -1 fails EBADF", tag);
	res(r == -1 && errno == EBADF, id, r ? "got %s" : "succeeded", ename(errno));
}

/* ---- ioctl_loop01: LO_FLAGS_AUTOCLEAR and LO_FLAGS_PARTSCAN ---- */

static void loop01_check(const char *tag, unsigned set, unsigned get, int autoclear, int parted)
{
	struct loop_info li, got;
	char id[256];
	memset(&li, 0, sizeof(li));
	memset(&got, 0, sizeof(got));
	li.lo_flags = (int)set;
	snprintf(id, sizeof(id), "loop01 %s: LOOP_SET_STATUS lo_flags=0x%x", tag, set);
	must_ioctl(id, dev_fd, LOOP_SET_STATUS, (unsigned long)&li);
	snprintf(id, sizeof(id), "loop01 %s: LOOP_GET_STATUS", tag);
	must_ioctl(id, dev_fd, LOOP_GET_STATUS, (unsigned long)&got);
	snprintf(id, sizeof(id), "loop01 %s: lo_flags has no flag beyond 0x%x", tag, get);
	res(!(got.lo_flags & ~(int)get), id, "expected %d but got %d", get, got.lo_flags);
	snprintf(id, sizeof(id), "loop01 %s: sysfs partscan is 1", tag);
	sysfs_int(id, "loop/partscan", 1);
	snprintf(id, sizeof(id), "loop01 %s: sysfs autoclear is %d", tag, autoclear);
	sysfs_int(id, "loop/autoclear", autoclear);
	snprintf(id, sizeof(id), "loop01 %s: LOOP_GET_STATUS64 lo_flags are PARTSCAN%s (ioctl for partscan/autoclear)", tag,
		 autoclear ? "|AUTOCLEAR" : "");
	flags_are(id, LO_FLAGS_PARTSCAN | (autoclear ? LO_FLAGS_AUTOCLEAR : 0));
	if (!parted) {
		printf("EXCL loop01 %s: partition p1: parted is not installed\n", tag);
		return;
	}
	snprintf(id, sizeof(id), "loop01 %s", tag);
	check_partition(id, 1, 1);
}

static void loop01(void)
{
	int parted = run_cmd((const char *const[]){ "parted", "--version", NULL }) == 0;
	find_free_loopdev();
	fill_file("test.img", 1024 * 1024, 10);
	attach_device("test.img");
	if (parted) {
		const char *const cmd[] = { "parted", "-s", dev_path, "mklabel", "msdos", "mkpart", "primary", "ext4", "1M", "10M", NULL };
		if (run_cmd(cmd))
			brok(2, "parted on %s failed", dev_path);
	}
	dev_fd = -1;
	sysfs_int("loop01: sysfs partscan is 0 after attach", "loop/partscan", 0);
	sysfs_int("loop01: sysfs autoclear is 0 after attach", "loop/autoclear", 0);
	sysfs_backing("loop01: sysfs backing_file is test.img", "test.img");
	reopen_dev();
	flags_are("loop01: LOOP_GET_STATUS64 lo_flags are 0 after attach (ioctl for partscan/autoclear)", 0);
	backing_is("loop01: LOOP_GET_STATUS64 lo_device/lo_inode are test.img's (ioctl for backing_file)", "test.img");
	loop01_check("set all four flags", LO_FLAGS_AUTOCLEAR | LO_FLAGS_PARTSCAN | LO_FLAGS_READ_ONLY | LO_FLAGS_DIRECT_IO,
		     LO_FLAGS_AUTOCLEAR | LO_FLAGS_PARTSCAN, 1, parted);
	info("test flag can be cleared");
	loop01_check("clear", 0, LO_FLAGS_PARTSCAN, 0, parted);
	detach_by_fd("loop01");
}

/* ---- ioctl_loop02: LO_FLAGS_READ_ONLY and LOOP_CHANGE_FD ---- */

static void loop02(void)
{
	find_free_loopdev();
	fill_file("test.img", 1024, 10);
	fill_file("test1.img", 1024, 10);
	fill_file("test2.img", 2048, 20);
	int change_fd = open_or_brok("test1.img", O_RDWR);
	int invalid_fd = open_or_brok("test2.img", O_RDWR);
	reopen_dev();
	probe_configure("loop02");
	for (int n = 0; n < 2; n++) {
		const char *tag = n == 0 ? "loop02 LOOP_SET_FD on an O_RDONLY file" : "loop02 LOOP_CONFIGURE with LO_FLAGS_READ_ONLY";
		char id[256];
		int file_fd = open_or_brok("test.img", n == 0 ? O_RDONLY : O_RDWR);
		if (n == 0) {
			snprintf(id, sizeof(id), "%s: LOOP_SET_FD", tag);
			if (must_ioctl(id, dev_fd, LOOP_SET_FD, (unsigned long)file_fd))
				brok(use_sysfs && errno == EBUSY ? 3 : 2, "%s", id);
		} else {
			struct loop_config c;
			memset(&c, 0, sizeof(c));
			c.fd = (unsigned)file_fd;
			c.info.lo_flags = LO_FLAGS_READ_ONLY;
			snprintf(id, sizeof(id), "%s: LOOP_CONFIGURE", tag);
			if (must_ioctl(id, dev_fd, LOOP_CONFIGURE, (unsigned long)&c))
				brok(use_sysfs && errno == EBUSY ? 3 : 2, "%s", id);
		}
		attached = 1;
		snprintf(id, sizeof(id), "%s: sysfs ro is 1", tag);
		sysfs_int(id, "ro", 1);
		snprintf(id, sizeof(id), "%s: BLKROGET is 1 (ioctl for ro)", tag);
		ro_is(id, 1);
		snprintf(id, sizeof(id), "%s: sysfs backing_file is test.img", tag);
		sysfs_backing(id, "test.img");
		snprintf(id, sizeof(id), "%s: lo_device/lo_inode are test.img's (ioctl for backing_file)", tag);
		backing_is(id, "test.img");

		struct loop_info got;
		memset(&got, 0, sizeof(got));
		snprintf(id, sizeof(id), "%s: LOOP_GET_STATUS", tag);
		must_ioctl(id, dev_fd, LOOP_GET_STATUS, (unsigned long)&got);
		snprintf(id, sizeof(id), "%s: lo_flags only has LO_FLAGS_READ_ONLY", tag);
		res(!(got.lo_flags & ~LO_FLAGS_READ_ONLY), id, "lo_flags has unexpected %d flag", got.lo_flags);

		errno = 0;
		ssize_t w = write(dev_fd, "xx", 2);
		snprintf(id, sizeof(id), "%s: write to the read-only device fails", tag);
		res(w == -1, id, "write succeeded (%zd)", w);
		snprintf(id, sizeof(id), "loop02.%d.write-errno", n);
		value(id, w == -1 ? ename(errno) : "none");

		snprintf(id, sizeof(id), "%s: LOOP_CHANGE_FD to a file of the same size succeeds", tag);
		int r = ioctl(dev_fd, LOOP_CHANGE_FD, change_fd);
		res(r == 0, id, "LOOP_CHANGE_FD failed: %s", ename(errno));
		if (r == 0) {
			snprintf(id, sizeof(id), "%s: after LOOP_CHANGE_FD sysfs ro is 1", tag);
			sysfs_int(id, "ro", 1);
			snprintf(id, sizeof(id), "%s: after LOOP_CHANGE_FD BLKROGET is 1 (ioctl for ro)", tag);
			ro_is(id, 1);
			snprintf(id, sizeof(id), "%s: after LOOP_CHANGE_FD sysfs backing_file is test1.img", tag);
			sysfs_backing(id, "test1.img");
			snprintf(id, sizeof(id), "%s: after LOOP_CHANGE_FD lo_device/lo_inode are test1.img's (ioctl for backing_file)", tag);
			backing_is(id, "test1.img");
		}
		r = ioctl(dev_fd, LOOP_CHANGE_FD, invalid_fd);
		snprintf(id, sizeof(id), "%s: LOOP_CHANGE_FD to a file of another size fails EINVAL", tag);
		res(r == -1 && errno == EINVAL, id, r ? "got %s" : "succeeded", ename(errno));

		close(file_fd);
		detach_by_fd(tag);
		reopen_dev();
	}
	close(change_fd);
	close(invalid_fd);
}

/* ---- ioctl_loop03: LOOP_CHANGE_FD on a writable device is EINVAL ---- */

static void loop03(void)
{
	struct loop_info got;
	find_free_loopdev();
	fill_file("test.img", 1024, 10);
	attach_device("test.img");
	reopen_dev();
	int file_fd = open_or_brok("test.img", O_RDWR);
	memset(&got, 0, sizeof(got));
	if (ioctl(dev_fd, LOOP_GET_STATUS, &got))
		brok(2, "LOOP_GET_STATUS");
	if (got.lo_flags & LO_FLAGS_READ_ONLY)
		brok(2, "unexpected LO_FLAGS_READ_ONLY");
	int r = ioctl(dev_fd, LOOP_CHANGE_FD, file_fd);
	res(r == -1 && errno == EINVAL, "loop03: LOOP_CHANGE_FD on a read-write device fails EINVAL", r ? "got %s" : "succeeded",
	    ename(errno));
	close(file_fd);
	detach_by_fd("loop03");
}

/* ---- ioctl_loop04: LOOP_SET_CAPACITY after the file shrank ---- */

static void loop04(void)
{
	enum { OLD_SIZE = 10240, NEW_SIZE = 5120 };
	struct loop_info got;
	char *wrbuf = malloc(OLD_SIZE);
	memset(wrbuf, 'x', OLD_SIZE);
	find_free_loopdev();
	reopen_dev();
	fill_file("test.img", 1024, OLD_SIZE / 1024);
	attach_device("test.img");
	sysfs_int("loop04: sysfs size is 20 sectors", "size", OLD_SIZE / 512);
	size_is("loop04: BLKGETSIZE64 is 10240 (ioctl for size)", OLD_SIZE);
	int file_fd = open_or_brok("test.img", O_RDWR);
	memset(&got, 0, sizeof(got));
	must_ioctl("loop04: LOOP_GET_STATUS", dev_fd, LOOP_GET_STATUS, (unsigned long)&got);
	if (got.lo_flags & LO_FLAGS_READ_ONLY)
		brok(2, "unexpected LO_FLAGS_READ_ONLY");
	if (truncate("test.img", NEW_SIZE))
		brok(2, "truncate");
	must_ioctl("loop04: LOOP_SET_CAPACITY", dev_fd, LOOP_SET_CAPACITY, 0);
	lseek(dev_fd, 0, SEEK_SET);
	ssize_t w = write(dev_fd, wrbuf, OLD_SIZE);
	res(w == NEW_SIZE, "loop04: a 10240-byte write at 0 writes 5120 bytes after LOOP_SET_CAPACITY",
	    "LOOP_SET_CAPACITY didn't set loop size to %d, its size is %zd (%s)", NEW_SIZE, w, w < 0 ? ename(errno) : "");
	sysfs_int("loop04: sysfs size is 10 sectors", "size", NEW_SIZE / 512);
	size_is("loop04: BLKGETSIZE64 is 5120 (ioctl for size)", NEW_SIZE);
	close(file_fd);
	detach_by_fd("loop04");
	reopen_dev();
	unlink("test.img");
	free(wrbuf);
}

/* ---- ioctl_loop05: LOOP_SET_DIRECT_IO ---- */

static int backing_logical_block_size(const char *file)
{
	struct stat st;
	char p[PATH_MAX], buf[64];
	if (stat(file, &st))
		brok(2, "stat %s", file);
	const char *rel[] = { "queue/logical_block_size", "../queue/logical_block_size" };
	for (int i = 0; i < 2; i++) {
		snprintf(p, sizeof(p), "/sys/dev/block/%u:%u/%s", major(st.st_dev), minor(st.st_dev), rel[i]);
		FILE *f = fopen(p, "r");
		if (!f)
			continue;
		int ok = fgets(buf, sizeof(buf), f) != NULL;
		fclose(f);
		if (ok)
			return atoi(buf);
	}
	errno = ENOENT;
	brok(2, "no block device under %s (LTP skips tmpfs and overlayfs)", file);
}

static void loop05_check(const char *tag, int flag)
{
	char id[256];
	struct loop_info got;
	memset(&got, 0, sizeof(got));
	snprintf(id, sizeof(id), "loop05 %s: LOOP_GET_STATUS", tag);
	must_ioctl(id, dev_fd, LOOP_GET_STATUS, (unsigned long)&got);
	snprintf(id, sizeof(id), "loop05 %s: lo_flags %s LO_FLAGS_DIRECT_IO", tag, flag ? "has" : "lacks");
	res(!!(got.lo_flags & LO_FLAGS_DIRECT_IO) == flag, id, "lo_flags 0x%x", got.lo_flags);
	snprintf(id, sizeof(id), "loop05 %s: sysfs dio is %d", tag, flag);
	if (use_sysfs)
		sysfs_int(id, "loop/dio", flag);
	else
		printf("EXCL %s: reads /sys/block/loopN/loop/dio, which only a kernel block device has; it is the LO_FLAGS_DIRECT_IO bit checked above\n", id);
}

static void loop05(void)
{
	struct loop_info li;
	find_free_loopdev();
	fill_file("test.img", 1024, 1024);
	attach_device("test.img");
	reopen_dev();
	int r = ioctl(dev_fd, LOOP_SET_DIRECT_IO, 0);
	res(r == 0 || errno != EINVAL, "loop05: LOOP_SET_DIRECT_IO is supported (0 is not EINVAL)", "EINVAL");
	int lbs = backing_logical_block_size("test.img");
	info("backing device logical_block_size is %d", lbs);
	if (lbs > 512)
		retry_ioctl("loop05: LOOP_SET_BLOCK_SIZE to the backing device's", dev_fd, LOOP_SET_BLOCK_SIZE, (unsigned long)lbs);

	memset(&li, 0, sizeof(li));
	retry_ioctl("loop05: LOOP_SET_STATUS (zeroed)", dev_fd, LOOP_SET_STATUS, (unsigned long)&li);
	info("without setting lo_offset or sizelimit");
	must_ioctl("loop05 no offset: LOOP_SET_DIRECT_IO 1", dev_fd, LOOP_SET_DIRECT_IO, 1);
	loop05_check("no offset, dio on", 1);
	must_ioctl("loop05 no offset: LOOP_SET_DIRECT_IO 0", dev_fd, LOOP_SET_DIRECT_IO, 0);
	loop05_check("no offset, dio off", 0);

	info("with offset equal to logical_block_size");
	li.lo_offset = lbs;
	retry_ioctl("loop05: LOOP_SET_STATUS lo_offset=logical block size", dev_fd, LOOP_SET_STATUS, (unsigned long)&li);
	r = ioctl(dev_fd, LOOP_SET_DIRECT_IO, 1);
	res(r == 0, "loop05 aligned offset: LOOP_SET_DIRECT_IO 1 succeeds", "failed: %s", ename(errno));
	if (r == 0) {
		loop05_check("aligned offset, dio on", 1);
		must_ioctl("loop05 aligned offset: LOOP_SET_DIRECT_IO 0", dev_fd, LOOP_SET_DIRECT_IO, 0);
	}

	info("with nonzero offset less than logical_block_size");
	li.lo_offset = lbs / 2;
	retry_ioctl("loop05: LOOP_SET_STATUS lo_offset=half the logical block size", dev_fd, LOOP_SET_STATUS, (unsigned long)&li);
	r = ioctl(dev_fd, LOOP_SET_DIRECT_IO, 1);
	int e = errno;
	/* LTP accepts both: success (the offset is ignored) or EINVAL. Which one is compared with the kernel. */
	res(r == 0 || e == EINVAL, "loop05 unaligned offset: LOOP_SET_DIRECT_IO 1 succeeds or fails EINVAL", "got %s", ename(e));
	value("loop05.unaligned-dio", r == 0 ? "0" : ename(e));
	if (r == 0)
		must_ioctl("loop05 unaligned offset: LOOP_SET_DIRECT_IO 0", dev_fd, LOOP_SET_DIRECT_IO, 0);
	detach_by_fd("loop05");
}

/* ---- ioctl_loop06: invalid block sizes ---- */

static void loop06(void)
{
	unsigned half = 256, invalid = BLK_MAX_BLOCK_SIZE * 2, unalign = (unsigned)getpagesize() - 1;
	struct {
		unsigned *val;
		int configure;
		const char *msg;
	} tc[] = {
		{ &half, 0, "LOOP_SET_BLOCK_SIZE with arg < 512" },
		{ &invalid, 0, "LOOP_SET_BLOCK_SIZE with arg > BLK_MAX_BLOCK_SIZE" },
		{ &unalign, 0, "LOOP_SET_BLOCK_SIZE with arg != power_of_2" },
		{ &half, 1, "LOOP_CONFIGURE with block_size < 512" },
		{ &invalid, 1, "LOOP_CONFIGURE with block_size > BLK_MAX_BLOCK_SIZE" },
		{ &unalign, 1, "LOOP_CONFIGURE with block_size != power_of_2" },
	};
	struct loop_config c;
	find_free_loopdev();
	size_t bs = 4 * BLK_MAX_BLOCK_SIZE / 1024;
	fill_file("test.img", bs, 1024);
	reopen_dev();
	int r = ioctl(dev_fd, LOOP_SET_BLOCK_SIZE, 512);
	res(!(r && (errno == EINVAL || errno == ENOTTY)), "loop06: LOOP_SET_BLOCK_SIZE is supported (not EINVAL/ENOTTY on an unbound device)",
	    "got %s", ename(errno));
	value("loop06.unbound-set-block-size", r == 0 ? "0" : ename(errno));
	int file_fd = open_or_brok("test.img", O_RDWR);
	probe_configure("loop06");
	memset(&c, 0, sizeof(c));
	c.fd = (unsigned)file_fd;
	for (size_t n = 0; n < sizeof(tc) / sizeof(tc[0]); n++) {
		char id[256];
		snprintf(id, sizeof(id), "loop06: %s fails EINVAL", tc[n].msg);
		if (!tc[n].configure) {
			if (!attached)
				attach_device("test.img");
			r = ioctl(dev_fd, LOOP_SET_BLOCK_SIZE, *tc[n].val);
		} else {
			if (attached) {
				detach_by_fd("loop06");
				reopen_dev();
			}
			c.block_size = *tc[n].val;
			r = ioctl(dev_fd, LOOP_CONFIGURE, &c);
		}
		res(r == -1 && errno == EINVAL, id, r ? "got %s" : "set block size succeeded unexpectedly", ename(errno));
		if (r == 0 && tc[n].configure) {
			attached = 1;
			detach_by_fd("loop06");
			reopen_dev();
		}
	}
	close(file_fd);
}

/* ---- ioctl_loop07: lo_sizelimit by LOOP_SET_STATUS64 and LOOP_CONFIGURE ---- */

static void loop07(void)
{
	struct {
		unsigned sizelimit, sectors;
		int configure;
		const char *msg;
	} tc[] = {
		{ 1024 * 4096, 2048, 0, "sizelimit greater than the file by LOOP_SET_STATUS64" },
		{ 1024 * 512, 1024, 0, "sizelimit less than the file by LOOP_SET_STATUS64" },
		{ 1024 * 4096, 2048, 1, "sizelimit greater than the file by LOOP_CONFIGURE" },
		{ 1024 * 512, 1024, 1, "sizelimit less than the file by LOOP_CONFIGURE" },
	};
	struct loop_config c;
	find_free_loopdev();
	fill_file("test.img", 1024 * 1024, 1);
	attach_device("test.img");
	detach_device("loop07 set-up");
	info("original loop size 2048 sectors");
	int file_fd = open_or_brok("test.img", O_RDWR);
	reopen_dev();
	probe_configure("loop07");
	memset(&c, 0, sizeof(c));
	c.fd = (unsigned)file_fd;
	for (size_t n = 0; n < sizeof(tc) / sizeof(tc[0]); n++) {
		char id[256], tag[160];
		struct loop_info64 li, got;
		snprintf(tag, sizeof(tag), "loop07 %s", tc[n].msg);
		memset(&li, 0, sizeof(li));
		if (tc[n].configure) {
			if (attached) {
				detach_by_fd(tag);
				reopen_dev();
			}
			c.info.lo_sizelimit = tc[n].sizelimit;
			snprintf(id, sizeof(id), "%s: LOOP_CONFIGURE", tag);
			if (must_ioctl(id, dev_fd, LOOP_CONFIGURE, (unsigned long)&c))
				brok(use_sysfs && errno == EBUSY ? 3 : 2, "%s", id);
			attached = 1;
		} else {
			if (!attached)
				attach_device("test.img");
			li.lo_sizelimit = tc[n].sizelimit;
			snprintf(id, sizeof(id), "%s: LOOP_SET_STATUS64", tag);
			retry_ioctl(id, dev_fd, LOOP_SET_STATUS64, (unsigned long)&li);
		}
		snprintf(id, sizeof(id), "%s: sysfs size is %u sectors", tag, tc[n].sectors);
		sysfs_int(id, "size", tc[n].sectors);
		snprintf(id, sizeof(id), "%s: BLKGETSIZE64 is %u (ioctl for size)", tag, tc[n].sectors * 512);
		size_is(id, (unsigned long long)tc[n].sectors * 512);
		snprintf(id, sizeof(id), "%s: sysfs loop/sizelimit is %u", tag, tc[n].sizelimit);
		if (use_sysfs)
			sysfs_int(id, "loop/sizelimit", tc[n].sizelimit);
		else
			printf("EXCL %s: reads /sys/block/loopN/loop/sizelimit, which only a kernel block device has; it is lo_sizelimit, checked next\n", id);
		memset(&got, 0, sizeof(got));
		snprintf(id, sizeof(id), "%s: LOOP_GET_STATUS64", tag);
		must_ioctl(id, dev_fd, LOOP_GET_STATUS64, (unsigned long)&got);
		snprintf(id, sizeof(id), "%s: LOOP_GET_STATUS64 lo_sizelimit is %u", tag, tc[n].sizelimit);
		res(got.lo_sizelimit == tc[n].sizelimit, id, "got %llu", (unsigned long long)got.lo_sizelimit);
		if (tc[n].configure) {
			detach_by_fd(tag);
			reopen_dev();
		} else {
			struct loop_info old;
			memset(&old, 0, sizeof(old));
			snprintf(id, sizeof(id), "%s: reset by LOOP_SET_STATUS", tag);
			retry_ioctl(id, dev_fd, LOOP_SET_STATUS, (unsigned long)&old);
		}
	}
	close(file_fd);
}

/* ---- ioctl09: BLKRRPART with LO_FLAGS_PARTSCAN ---- */

static void ioctl09(void)
{
	struct loop_info li;
	find_free_loopdev();
	prealloc_file("test.img", 1024 * 1024, 20);
	reopen_dev();
	const char *const parted_old[] = { "parted", "-s", "test.img", "mklabel", "msdos", "mkpart", "primary", "ext4", "1M", "10M", NULL };
	const char *const parted_new[] = { "parted", "-s", dev_path, "mklabel", "msdos", "mkpart", "primary", "ext4", "1M", "10M",
					   "mkpart", "primary", "ext4", "10M", "20M", NULL };
	if (run_cmd(parted_old))
		brok(2, "parted on test.img failed");
	attach_device("test.img");
	memset(&li, 0, sizeof(li));
	li.lo_flags = LO_FLAGS_PARTSCAN;
	must_ioctl("ioctl09: LOOP_SET_STATUS LO_FLAGS_PARTSCAN", dev_fd, LOOP_SET_STATUS, (unsigned long)&li);
	check_partition("ioctl09 one partition", 1, 1);
	check_partition("ioctl09 one partition", 2, 0);
	res(run_cmd(parted_new) == 0, "ioctl09: parted writes a second partition through the device", "parted failed");
	retry_ioctl("ioctl09: BLKRRPART", dev_fd, BLKRRPART, 0);
	check_partition("ioctl09 two partitions", 1, 1);
	check_partition("ioctl09 two partitions", 2, 1);
	detach_by_fd("ioctl09");
	reopen_dev();
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: ltp-loop CASE CONTROL DEVDIR sysfs|nosysfs[,noparts]\n");
		return 2;
	}
	ctl_path = argv[2];
	dev_dir = argv[3];
	use_sysfs = strncmp(argv[4], "sysfs", 5) == 0;
	no_parts = strstr(argv[4], "noparts") != NULL;
	if (!getcwd(cwd, sizeof(cwd)))
		return 2;
	setvbuf(stdout, NULL, _IOLBF, 0);
	const struct {
		const char *name;
		void (*fn)(void);
	} cases[] = { { "loop01", loop01 }, { "loop02", loop02 }, { "loop03", loop03 }, { "loop04", loop04 },
		      { "loop05", loop05 }, { "loop06", loop06 }, { "loop07", loop07 }, { "ioctl09", ioctl09 } };
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (strcmp(cases[i].name, argv[1]) == 0) {
			cases[i].fn();
			if (dev_fd >= 0)
				close(dev_fd);
			dev_fd = -1;
			cleanup();
			return failures ? 1 : 0;
		}
	}
	fprintf(stderr, "ltp-loop: unknown case %s\n", argv[1]);
	return 2;
}

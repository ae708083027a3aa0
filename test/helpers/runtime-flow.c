/*
 * What a container runtime does with loop devices, by ioctl only (no loopfs
 * program): open loop-control, LOOP_CTL_GET_FREE, open loopN, bind a file,
 * set and read back its status, move data through the device.
 *
 *   runtime-flow flow      CONTROL DEVDIR FILE   LOOP_SET_FD + LOOP_SET_STATUS64 (offset 4096,
 *                                                sizelimit 1 MiB, AUTOCLEAR, file name), read back
 *                                                with LOOP_GET_STATUS64, write and read 64 KiB
 *                                                through the device and check them in the file,
 *                                                close: autoclear detaches
 *   runtime-flow configure CONTROL DEVDIR FILE   the same with one LOOP_CONFIGURE
 *   runtime-flow bind      CONTROL DEVDIR FILE   LOOP_CONFIGURE of the whole file, no autoclear;
 *                                                prints the device and leaves it bound
 *   runtime-flow clear     DEV                   LOOP_CLR_FD
 *
 * Prints key=value lines; exits 1 at the first failed step, naming it and its errno.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/loop.h>

#define OFFSET 4096
#define SIZELIMIT (1 << 20)
#define DATA (64 * 1024)

static void __attribute__((noreturn)) die(const char *step)
{
	const char *n = strerrorname_np(errno);
	printf("failed=%s errno=%s\n", step, n ? n : "?");
	exit(1);
}

static void print_status(int dev)
{
	struct loop_info64 li;
	memset(&li, 0, sizeof(li));
	if (ioctl(dev, LOOP_GET_STATUS64, &li))
		die("LOOP_GET_STATUS64");
	printf("offset=%llu\nsizelimit=%llu\nflags=%u\nfile_name=%s\n", (unsigned long long)li.lo_offset,
	       (unsigned long long)li.lo_sizelimit, li.lo_flags, (char *)li.lo_file_name);
}

static void set_info(struct loop_info64 *li, const char *file, unsigned flags, int window)
{
	memset(li, 0, sizeof(*li));
	if (window) {
		li->lo_offset = OFFSET;
		li->lo_sizelimit = SIZELIMIT;
	}
	li->lo_flags = flags;
	strncpy((char *)li->lo_file_name, file, LO_NAME_SIZE - 1);
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "clear") == 0) {
		int dev = open(argv[2], O_RDONLY);
		if (dev < 0)
			die("open device");
		if (ioctl(dev, LOOP_CLR_FD, 0))
			die("LOOP_CLR_FD");
		printf("cleared=%s\n", argv[2]);
		return 0;
	}
	if (argc != 5) {
		fprintf(stderr, "usage: runtime-flow flow|configure|bind CONTROL DEVDIR FILE | clear DEV\n");
		return 2;
	}
	const char *mode = argv[1], *file = argv[4];
	printf("pid=%d\n", getpid());
	int ctl = open(argv[2], O_RDWR | O_CLOEXEC);
	if (ctl < 0)
		die("open loop-control");
	int n = ioctl(ctl, LOOP_CTL_GET_FREE);
	if (n < 0)
		die("LOOP_CTL_GET_FREE");
	close(ctl);
	char path[4096];
	snprintf(path, sizeof(path), "%s/loop%d", argv[3], n);
	printf("device=%s\n", path);
	int dev = open(path, O_RDWR | O_CLOEXEC);
	if (dev < 0)
		die("open device");
	int fd = open(file, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		die("open file");

	struct loop_info64 li;
	if (strcmp(mode, "flow") == 0) {
		if (ioctl(dev, LOOP_SET_FD, fd))
			die("LOOP_SET_FD");
		set_info(&li, file, LO_FLAGS_AUTOCLEAR, 1);
		if (ioctl(dev, LOOP_SET_STATUS64, &li))
			die("LOOP_SET_STATUS64");
	} else {
		struct loop_config c;
		memset(&c, 0, sizeof(c));
		c.fd = (unsigned)fd;
		set_info(&c.info, file, strcmp(mode, "bind") ? LO_FLAGS_AUTOCLEAR : 0, strcmp(mode, "bind") != 0);
		if (ioctl(dev, LOOP_CONFIGURE, &c))
			die("LOOP_CONFIGURE");
	}
	close(fd); /* the device holds the file now, as in the kernel */
	print_status(dev);
	if (strcmp(mode, "bind") == 0)
		return 0;

	/* 64 KiB through the device: they land at OFFSET in the file, and read back the same. */
	static char out[DATA], back[DATA], infile[DATA];
	for (int i = 0; i < DATA; i++)
		out[i] = (char)(i * 7 + n);
	if (pwrite(dev, out, DATA, 0) != DATA)
		die("write device");
	if (fsync(dev))
		die("fsync device");
	if (pread(dev, back, DATA, 0) != DATA)
		die("read device");
	int f = open(file, O_RDONLY);
	if (f < 0 || pread(f, infile, DATA, OFFSET) != DATA)
		die("read file");
	close(f);
	printf("readback=%s\nin_file=%s\n", memcmp(out, back, DATA) ? "differs" : "same", memcmp(out, infile, DATA) ? "differs" : "same");
	/* Past the window (sizelimit): end of device. */
	printf("read_at_end=%zd\n", pread(dev, back, 512, SIZELIMIT));

	close(dev);
	/* Autoclear: the device is detached when its last opener closes (a FUSE release may land just after close returns). */
	int err = 0;
	for (int i = 0; i < 200; i++) {
		dev = open(path, O_RDONLY | O_CLOEXEC);
		if (dev < 0)
			die("reopen device");
		memset(&li, 0, sizeof(li));
		int r = ioctl(dev, LOOP_GET_STATUS64, &li);
		err = r ? errno : 0;
		close(dev);
		if (err == ENXIO)
			break;
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	const char *en = err ? strerrorname_np(err) : "0";
	printf("after_close=%s\n", en ? en : "?");
	return 0;
}

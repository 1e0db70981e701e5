/*
 * rand-read - 4 KiB random-read IOPS of a block device, O_DIRECT, one
 * request at a time (queue depth 1, so it measures round-trip latency).
 *
 * Usage: rand-read /dev/sdX [SECONDS] [SPAN_MIB]
 *
 * Reads 4 KiB at random 4 KiB-aligned offsets within the first SPAN_MIB
 * (default: the whole device) for SECONDS (default 4) and prints
 * "iops N reads M".  The offsets come from a fixed seed, so every path
 * in a benchmark reads the same sequence.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define BLOCK	4096

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double secs = argc > 2 ? atof(argv[2]) : 4.0, start, end;
	uint64_t size = 0, blocks, x = 0x9e3779b97f4a7c15ull;
	long n = 0;
	void *buf;
	int fd;

	if (argc < 2) {
		fprintf(stderr, "usage: rand-read /dev/sdX [SECONDS] [SPAN_MIB]\n");
		return 2;
	}
	fd = open(argv[1], O_RDONLY | O_DIRECT);
	if (fd < 0 || ioctl(fd, BLKGETSIZE64, &size) != 0) {
		fprintf(stderr, "rand-read: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	if (argc > 3 && (uint64_t)atol(argv[3]) << 20 < size)
		size = (uint64_t)atol(argv[3]) << 20;
	blocks = size / BLOCK;
	if (blocks == 0 || posix_memalign(&buf, BLOCK, BLOCK) != 0) {
		fprintf(stderr, "rand-read: %s: empty device\n", argv[1]);
		return 1;
	}
	start = now();
	end = start + secs;
	do {
		/* xorshift64: cheap, fixed sequence */
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		if (pread(fd, buf, BLOCK, (off_t)((x % blocks) * BLOCK)) != BLOCK) {
			fprintf(stderr, "rand-read: read #%ld: %s\n", n,
				strerror(errno));
			return 1;
		}
		n++;
	} while (now() < end);
	printf("iops %.0f reads %ld\n", (double)n / (now() - start), n);
	return 0;
}

/*
 * rtt-bench - round trips per second, one request at a time, so that it
 * measures latency: 4 KiB random reads of a block device, or control
 * transfers to a USB device.
 *
 * Usage: rtt-bench read4k /dev/sdX [SECONDS] [SPAN_MIB]
 *        rtt-bench ctrl /dev/bus/usb/BBB/DDD [SECONDS]
 *        rtt-bench wake [SECONDS]
 *
 * read4k reads 4 KiB with O_DIRECT at random 4 KiB-aligned offsets within
 * the first SPAN_MIB (default: the whole device) and prints "iops N reads
 * M".  The offsets come from a fixed seed, so every path in a benchmark
 * reads the same sequence.
 *
 * ctrl issues GET_DESCRIPTOR(DEVICE) (18 bytes, recipient: device, so no
 * interface has to be claimed and the bound class driver is undisturbed)
 * through usbfs' USBDEVFS_CONTROL and prints "ctrl_rtt_per_s N iterations
 * M".  Each one is a full round trip to the device: through vhci_hcd and
 * the USB/IP server when the node is an imported device.
 *
 * Both run for SECONDS (default 3) and exit 1 on a failed or wrong reply.
 *
 * wake measures what one wakeup costs on this machine, with no USB at all:
 * a byte bounced through two pipes, between two threads of one process and
 * between two processes, both on CPU 0 and on CPUs 0 and 1.  It prints
 * "wake_us thread_1cpu A process_1cpu B thread_2cpu C process_2cpu D
 * syscall E socketpair_48b F", each wakeup half a round trip, SECONDS
 * (default 1) each; E is a null syscall, F a 48-byte write and read over a
 * socketpair (a USB/IP header's size), with no wakeup.  A server in user
 * space pays all of these where usbip-host's kernel threads, which never
 * switch address space, pay less.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/usbdevice_fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BLOCK	4096

static uint64_t blocks;		/* read4k: the span, in blocks */
static void *block;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int open_disk(const char *path, const char *span_mib)
{
	uint64_t size = 0;
	int fd = open(path, O_RDONLY | O_DIRECT);

	if (fd < 0 || ioctl(fd, BLKGETSIZE64, &size) != 0)
		return -1;
	if (span_mib && (uint64_t)atol(span_mib) << 20 < size)
		size = (uint64_t)atol(span_mib) << 20;
	blocks = size / BLOCK;
	if (blocks == 0 || posix_memalign(&block, BLOCK, BLOCK) != 0) {
		errno = ENOSPC;
		return -1;
	}
	return fd;
}

static int read4k(int fd, long n)
{
	static uint64_t x = 0x9e3779b97f4a7c15ull;

	/* xorshift64: cheap, fixed sequence */
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	if (pread(fd, block, BLOCK, (off_t)((x % blocks) * BLOCK)) == BLOCK)
		return 0;
	fprintf(stderr, "rtt-bench: read #%ld: %s\n", n, strerror(errno));
	return -1;
}

static int get_descriptor(int fd, long n)
{
	uint8_t desc[18] = { 0 };
	struct usbdevfs_ctrltransfer ct = {
		.bRequestType = 0x80,	/* IN, standard, device */
		.bRequest = 6,		/* GET_DESCRIPTOR */
		.wValue = 0x0100,	/* DEVICE, index 0 */
		.wIndex = 0,
		.wLength = sizeof(desc),
		.timeout = 2000,	/* ms */
		.data = desc,
	};
	int rc = ioctl(fd, USBDEVFS_CONTROL, &ct);

	if (rc == (int)sizeof(desc) && desc[0] == 18 && desc[1] == 1)
		return 0;
	fprintf(stderr, "rtt-bench: GET_DESCRIPTOR #%ld: rc %d (%s), bLength %u "
		"bDescriptorType %u\n", n, rc, rc < 0 ? strerror(errno) : "short",
		desc[0], desc[1]);
	return -1;
}

static int ping[2], pong[2];

static void pin_to(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);	/* this thread only */
}

static void *echo(void *cpu)
{
	char c;

	pin_to(*(int *)cpu);
	while (read(ping[0], &c, 1) == 1 && write(pong[1], &c, 1) == 1)
		;
	return NULL;
}

/* Microseconds per wakeup; the echo side ends on EOF from ping. */
static double wake_us(int processes, int cpus, double secs)
{
	int echo_cpu = cpus - 1;
	double start, elapsed;
	pthread_t thread;
	pid_t pid = 0;
	long n = 0;
	char c = 0;

	if (pipe(ping) != 0 || pipe(pong) != 0)
		return -1;
	pin_to(0);
	if (processes) {
		pid = fork();
		if (pid == 0) {
			close(ping[1]);
			echo(&echo_cpu);
			_exit(0);
		}
	} else if (pthread_create(&thread, NULL, echo, &echo_cpu) != 0) {
		return -1;
	}
	start = now();
	do {
		if (write(ping[1], &c, 1) != 1 || read(pong[0], &c, 1) != 1)
			return -1;
		n++;
	} while (now() < start + secs);
	elapsed = now() - start;
	close(ping[1]);
	if (processes)
		waitpid(pid, NULL, 0);
	else
		pthread_join(thread, NULL);
	close(ping[0]);
	close(pong[0]);
	close(pong[1]);
	return elapsed / (double)n / 2 * 1e6;
}

/* Microseconds per syscall (none: getppid) or per write+read pair. */
static double syscall_us(int pair, double secs)
{
	double start = now(), elapsed;
	char buf[48] = { 0 };
	long n = 0;
	int sv[2];

	if (pair && socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		return -1;
	do {
		for (int i = 0; i < 100; i++, n++) {
			if (!pair)
				getppid();
			else if (write(sv[0], buf, sizeof(buf)) != sizeof(buf) ||
				 read(sv[1], buf, sizeof(buf)) != sizeof(buf))
				return -1;
		}
	} while (now() < start + secs);
	elapsed = now() - start;
	if (pair) {
		close(sv[0]);
		close(sv[1]);
	}
	return elapsed / (double)n * 1e6;
}

static int wake(double secs)
{
	double t1 = wake_us(0, 1, secs), p1 = wake_us(1, 1, secs);
	double t2 = wake_us(0, 2, secs), p2 = wake_us(1, 2, secs);

	printf("wake_us thread_1cpu %.0f process_1cpu %.0f thread_2cpu %.0f"
	       " process_2cpu %.0f syscall %.1f socketpair_48b %.1f\n",
	       t1, p1, t2, p2, syscall_us(0, secs), syscall_us(1, secs));
	return 0;
}

int main(int argc, char **argv)
{
	int ctrl = argc > 2 && strcmp(argv[1], "ctrl") == 0;
	int (*once)(int, long) = ctrl ? get_descriptor : read4k;
	double secs = argc > 3 ? atof(argv[3]) : 3.0, start, end;
	long n = 0;
	int fd;

	if (argc > 1 && strcmp(argv[1], "wake") == 0)
		return wake(argc > 2 ? atof(argv[2]) : 1.0);
	if (argc < 3 || (!ctrl && strcmp(argv[1], "read4k") != 0)) {
		fprintf(stderr, "usage: rtt-bench read4k /dev/sdX [SECONDS] [SPAN_MIB]\n"
				"       rtt-bench ctrl /dev/bus/usb/BBB/DDD [SECONDS]\n"
				"       rtt-bench wake [SECONDS]\n");
		return 2;
	}
	fd = ctrl ? open(argv[2], O_RDWR) :
		    open_disk(argv[2], argc > 4 ? argv[4] : NULL);
	if (fd < 0) {
		fprintf(stderr, "rtt-bench: %s: %s\n", argv[2], strerror(errno));
		return 1;
	}
	start = now();
	end = start + secs;
	do {
		if (once(fd, n) != 0)
			return 1;
		n++;
	} while (now() < end);
	printf(ctrl ? "ctrl_rtt_per_s %.0f iterations %ld\n" : "iops %.0f reads %ld\n",
	       (double)n / (now() - start), n);
	return 0;
}

/*
 * rtt-bench - round trips per second, one request at a time, so that it
 * measures latency: 4 KiB random reads of a block device, or control
 * transfers to a USB device.
 *
 * Usage: rtt-bench read4k /dev/sdX [SECONDS] [SPAN_MIB]
 *        rtt-bench ctrl /dev/bus/usb/BBB/DDD [SECONDS]
 *        rtt-bench slot SEQ_S SECS SLICE NODE DISKS PIDS [NODE DISKS PIDS]
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
 * slot is one slot of tests/bench.sh, in one process (under TCG every
 * fork and exec of a shell script's dd costs tens of milliseconds), with
 * one path or two.  A path is NODE (its usbfs node, or -), DISKS (its
 * disks, comma-separated; several are loaded at once, a thread each) and
 * PIDS (comma-separated processes or kernel threads whose CPU time is
 * its server's, or -).  Four phases: sequential reads (1 MiB O_DIRECT,
 * as dd bs=1M iflag=direct, in order from the start, wrapping at the end)
 * and sequential writes of zeros, SEQ_S seconds each, then 4 KiB random
 * reads and control round trips, SECS seconds each (those two with one
 * disk only; control ones given a NODE).  Two paths alternate within each
 * phase in micro-rounds of about SLICE seconds, the first path half a
 * slice first and last (A/2 B A B ... A/2): the two halves of a phase see
 * the same host, whatever else it is doing.  Printed, one line per path
 * ("a ...", "b ..."): read_mbps, write_mbps (10^6 bytes/s, summed over
 * its disks), cpu_s_per_gib (the PIDS' CPU time over both sequential
 * phases, /proc/PID/task/T/schedstat, per GiB moved), iops,
 * ctrl_rtt_per_s.
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
#include <dirent.h>
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

/* Nanoseconds on a CPU of every thread of process (or kernel thread) PID. */
static unsigned long long task_ns(const char *pid)
{
	unsigned long long sum = 0, ns;
	char path[300];
	struct dirent *e;
	DIR *d;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%s/task", pid);
	if (!(d = opendir(path)))
		return 0;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/task/%s/schedstat", pid, e->d_name);
		if ((f = fopen(path, "r"))) {
			if (fscanf(f, "%llu", &ns) == 1)
				sum += ns;
			fclose(f);
		}
	}
	closedir(d);
	return sum;
}

static unsigned long long cpu_ns(char **pids, int n)
{
	unsigned long long sum = 0;

	for (int i = 0; i < n; i++)
		sum += task_ns(pids[i]);
	return sum;
}

#define SEQ_BLOCK	(1 << 20)
#define MAX_DISKS	8
#define MAX_PIDS	32

enum { P_READ, P_WRITE, P_RAND, P_CTRL, PHASES };

/* One side of a slot: a path's disks, its usbfs node, its server's PIDs. */
struct side {
	char *node;			/* NULL: no control round trips */
	char *disks[MAX_DISKS];
	char *pids[MAX_PIDS];
	int ndisks, npids;
	int fd[MAX_DISKS], ctrl_fd;
	uint64_t size[MAX_DISKS], pos[MAX_DISKS];
	void *buf[MAX_DISKS];
	double secs[PHASES], work[PHASES];	/* time spent; bytes or trips */
	unsigned long long cpu0, cpu1;
};

/* split S at commas into V (at most MAX), "-" being none; the count */
static int split(char *s, char **v, int max)
{
	int n = 0;

	if (strcmp(s, "-") == 0)
		return 0;
	for (char *t = strtok(s, ","); t && n < max; t = strtok(NULL, ","))
		v[n++] = t;
	return n;
}

static void side_open(struct side *d)
{
	for (int i = 0; i < d->ndisks; i++) {
		d->fd[i] = open(d->disks[i], O_RDWR | O_DIRECT);
		if (d->fd[i] < 0 || ioctl(d->fd[i], BLKGETSIZE64, &d->size[i]) != 0 ||
		    d->size[i] < SEQ_BLOCK ||
		    posix_memalign(&d->buf[i], BLOCK, SEQ_BLOCK) != 0) {
			fprintf(stderr, "rtt-bench: %s: %s\n", d->disks[i], strerror(errno));
			exit(1);
		}
		memset(d->buf[i], 0, SEQ_BLOCK);
	}
	if (d->ndisks == 1) {
		blocks = d->size[0] / BLOCK;
		if (!block && posix_memalign(&block, BLOCK, BLOCK) != 0)
			exit(1);
	}
	d->ctrl_fd = -1;
	if (d->node && (d->ctrl_fd = open(d->node, O_RDWR)) < 0) {
		fprintf(stderr, "rtt-bench: %s: %s\n", d->node, strerror(errno));
		exit(1);
	}
}

struct stream {
	struct side *d;
	int i, write;
	double until;
	double bytes;
	int rc;
};

/* One disk's part of a sequential micro-round: 1 MiB blocks, in order
 * (wrapping at the end of the disk), until the deadline. */
static void *stream(void *arg)
{
	struct stream *q = arg;
	struct side *d = q->d;
	int i = q->i;

	q->rc = -1;
	do {
		ssize_t n;

		if (d->pos[i] + SEQ_BLOCK > d->size[i])
			d->pos[i] = 0;
		n = q->write ? pwrite(d->fd[i], d->buf[i], SEQ_BLOCK, (off_t)d->pos[i]) :
			       pread(d->fd[i], d->buf[i], SEQ_BLOCK, (off_t)d->pos[i]);
		if (n != SEQ_BLOCK) {
			fprintf(stderr, "rtt-bench: %s at %llu: %s\n", d->disks[i],
				(unsigned long long)d->pos[i], n < 0 ? strerror(errno) : "short");
			return NULL;
		}
		d->pos[i] += SEQ_BLOCK;
		q->bytes += SEQ_BLOCK;
	} while (now() < q->until);
	q->rc = 0;
	return NULL;
}

/* One micro-round of PHASE on side D for SECS seconds: its work and its
 * time added to the side's. */
static int micro(struct side *d, int phase, double secs)
{
	double t0 = now(), until = t0 + secs;
	long n = 0;
	int rc = 0;

	if (phase == P_READ || phase == P_WRITE) {
		struct stream q[MAX_DISKS];
		pthread_t t[MAX_DISKS];

		for (int i = 0; i < d->ndisks; i++) {
			q[i] = (struct stream){ d, i, phase == P_WRITE, until, 0, -1 };
			if (d->ndisks > 1 && pthread_create(&t[i], NULL, stream, &q[i]) != 0)
				exit(1);
		}
		if (d->ndisks == 1)
			stream(&q[0]);
		for (int i = 0; i < d->ndisks; i++) {
			if (d->ndisks > 1)
				pthread_join(t[i], NULL);
			rc |= q[i].rc;
			d->work[phase] += q[i].bytes;
		}
	} else {
		do {
			if (phase == P_RAND ? read4k(d->fd[0], n) : get_descriptor(d->ctrl_fd, n))
				return -1;
			n++;
		} while (now() < until);
		d->work[phase] += (double)n;
	}
	d->secs[phase] += now() - t0;
	return rc;
}

/*
 * One phase of a slot, SECS seconds in all.  Two sides alternate in
 * micro-rounds of SLICE seconds, the first (the kernel's) half a slice
 * first and last, so that every micro-round of the second has the first
 * right before and after it and both get the same time:
 * A/2 B A B ... A B A/2.  One side: SECS/2 in one go.
 */
static int phase_run(struct side *a, struct side *b, int phase, double secs, double slice)
{
	int m = (int)(secs / 2 / slice + 0.5);

	if (!b)
		return micro(a, phase, secs / 2);
	if (m < 1)
		m = 1;
	slice = secs / 2 / m;
	if (micro(a, phase, slice / 2))
		return -1;
	for (int i = 0; i < m; i++)
		if (micro(b, phase, slice) || micro(a, phase, i < m - 1 ? slice : slice / 2))
			return -1;
	return 0;
}

static void side_print(const char *tag, struct side *d)
{
	printf("%s read_mbps %.2f write_mbps %.2f", tag,
	       d->work[P_READ] / 1e6 / d->secs[P_READ],
	       d->work[P_WRITE] / 1e6 / d->secs[P_WRITE]);
	if (d->npids)
		printf(" cpu_s_per_gib %.2f", (double)(d->cpu1 - d->cpu0) / 1e9 /
		       ((d->work[P_READ] + d->work[P_WRITE]) / (1 << 30)));
	if (d->ndisks == 1)
		printf(" iops %.0f", d->work[P_RAND] / d->secs[P_RAND]);
	if (d->node)
		printf(" ctrl_rtt_per_s %.0f", d->work[P_CTRL] / d->secs[P_CTRL]);
	printf("\n");
}

/* rtt-bench slot SEQ_S SECS SLICE NODE DISKS PIDS [NODE DISKS PIDS] */
static int slot(int argc, char **argv)
{
	struct side sides[2] = { { 0 } }, *a = &sides[0], *b = NULL;
	int n = argc == 11 ? 2 : 1;
	double seq_s = argc > 4 ? atof(argv[2]) : 0, secs = argc > 4 ? atof(argv[3]) : 0,
	       slice = argc > 4 ? atof(argv[4]) : 0;

	if ((argc != 8 && argc != 11) || seq_s <= 0 || secs <= 0 || slice <= 0) {
		fprintf(stderr, "rtt-bench slot: SEQ_S SECS SLICE NODE DISKS PIDS"
				" [NODE DISKS PIDS]\n");
		return 2;
	}
	for (int k = 0; k < n; k++) {
		struct side *d = &sides[k];
		char **v = argv + 5 + 3 * k;

		d->node = strcmp(v[0], "-") == 0 ? NULL : v[0];
		d->ndisks = split(v[1], d->disks, MAX_DISKS);
		d->npids = split(v[2], d->pids, MAX_PIDS);
		if (d->ndisks < 1) {
			fprintf(stderr, "rtt-bench slot: no disk\n");
			return 2;
		}
		if (d->ndisks > 1)
			d->node = NULL;
		side_open(d);
	}
	if (n == 2) {
		b = &sides[1];
		if (a->ndisks != b->ndisks || !a->node != !b->node) {
			fprintf(stderr, "rtt-bench slot: the sides differ\n");
			return 2;
		}
	}
	for (int k = 0; k < n; k++)
		sides[k].cpu0 = cpu_ns(sides[k].pids, sides[k].npids);
	if (phase_run(a, b, P_READ, seq_s, slice) || phase_run(a, b, P_WRITE, seq_s, slice))
		return 1;
	for (int k = 0; k < n; k++)
		sides[k].cpu1 = cpu_ns(sides[k].pids, sides[k].npids);
	if (a->ndisks == 1 && phase_run(a, b, P_RAND, secs, slice))
		return 1;
	if (a->node && phase_run(a, b, P_CTRL, secs, slice))
		return 1;
	side_print("a", a);
	if (b)
		side_print("b", b);
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
	if (argc > 1 && strcmp(argv[1], "slot") == 0)
		return slot(argc, argv);
	if (argc < 3 || (!ctrl && strcmp(argv[1], "read4k") != 0)) {
		fprintf(stderr, "usage: rtt-bench read4k /dev/sdX [SECONDS] [SPAN_MIB]\n"
				"       rtt-bench ctrl /dev/bus/usb/BBB/DDD [SECONDS]\n"
				"       rtt-bench slot SEQ_S SECS SLICE NODE DISKS PIDS [NODE DISKS PIDS]\n"
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

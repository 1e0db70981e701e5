/*
 * usbfs-poke - drive a Loopback gadget through usbfs, with unlinks, halts
 * and SET_INTERFACE thrown in; used by the VM fault scenarios.
 *
 *   usbfs-poke DEVNODE INTF EPOUT EPIN check BYTES
 *   usbfs-poke DEVNODE INTF EPOUT EPIN drain
 *   usbfs-poke DEVNODE INTF EPOUT EPIN storm SECONDS
 *   usbfs-poke DEVNODE INTF EPOUT EPIN stream
 *
 * DEVNODE is /dev/bus/usb/BBB/DDD of the (imported) device, INTF its
 * interface number, EPOUT/EPIN the bulk endpoint addresses (hex, e.g. 02
 * 81).  The Loopback function sends back on EPIN what it got on EPOUT, so:
 *
 *   check   writes BYTES (a multiple of 16 KiB) of fresh pseudo-random data
 *           and reads it back; any difference is a desynchronised stream.
 *   drain   SET_INTERFACE (the gadget drops what it holds), then reads
 *           until nothing has come for 300 ms.
 *   storm   for SECONDS: CLEAR_HALT on both endpoints with reads pending,
 *           SET_INTERFACE with reads pending, reads discarded (unlinked),
 *           writes and reads discarded mid-transfer; after every one of
 *           them a check must pass.  Prints what it did.
 *   stream  reads and writes with 16 URBs in flight until killed.
 *
 * Exit 0 when every check passed, 1 otherwise (with a line on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/usbdevice_fs.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define CHUNK	16384
#define MAXURB	32

static int fd, intf;
static unsigned epout, epin;
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static long nsubmitted;

struct xfer {
	struct usbdevfs_urb urb;
	unsigned char buf[CHUNK];
	int busy;
	long seq;		/* submission order */
};
static struct xfer xf[MAXURB];

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "usbfs-poke: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned char next_byte(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (unsigned char)(rng >> 24);
}

static struct xfer *submit(unsigned ep, const unsigned char *data, int len)
{
	int i;

	for (i = 0; i < MAXURB && xf[i].busy; i++)
		;
	if (i == MAXURB)
		die("out of URB slots");
	memset(&xf[i].urb, 0, sizeof(xf[i].urb));
	xf[i].urb.type = USBDEVFS_URB_TYPE_BULK;
	xf[i].urb.endpoint = (unsigned char)ep;
	xf[i].urb.buffer = xf[i].buf;
	xf[i].urb.buffer_length = len;
	xf[i].urb.usercontext = &xf[i];
	if (data)
		memcpy(xf[i].buf, data, (size_t)len);
	if (ioctl(fd, USBDEVFS_SUBMITURB, &xf[i].urb) < 0)
		die("SUBMITURB ep %02x: %s", ep, strerror(errno));
	xf[i].busy = 1;
	xf[i].seq = nsubmitted++;
	return &xf[i];
}

/* Waits (at most secs) for the next completed URB. */
static struct xfer *reap(double secs)
{
	struct usbdevfs_urb *u;
	double end = now() + secs;

	for (;;) {
		if (ioctl(fd, USBDEVFS_REAPURBNDELAY, &u) == 0) {
			struct xfer *x = u->usercontext;

			x->busy = 0;
			return x;
		}
		if (errno != EAGAIN)
			die("REAPURB: %s", strerror(errno));
		double left = end - now();
		if (left <= 0)
			return NULL;
		struct pollfd p = { fd, POLLOUT, 0 };
		poll(&p, 1, (int)(left * 1000) + 1);
	}
}

static int busy_count(void)
{
	int i, n = 0;

	for (i = 0; i < MAXURB; i++)
		n += xf[i].busy;
	return n;
}

static void discard_all(void)
{
	int i;

	for (i = 0; i < MAXURB; i++)
		if (xf[i].busy)
			ioctl(fd, USBDEVFS_DISCARDURB, &xf[i].urb);
	while (busy_count())
		if (!reap(10))
			die("%d discarded URBs never came back", busy_count());
}

static void clear_halt(unsigned ep)
{
	unsigned int e = ep;

	if (ioctl(fd, USBDEVFS_CLEAR_HALT, &e) < 0)
		die("CLEAR_HALT ep %02x: %s", ep, strerror(errno));
}

static void set_interface(void)
{
	struct usbdevfs_setinterface si = { (unsigned)intf, 0 };

	if (ioctl(fd, USBDEVFS_SETINTERFACE, &si) < 0)
		die("SETINTERFACE %d: %s", intf, strerror(errno));
}

/*
 * Writes BYTES of fresh data and reads them back.  The reads that are
 * already pending (npending of them, submitted by the caller) come first:
 * IN URBs on one endpoint complete in the order they were submitted.
 */
static void check(int bytes, int npending)
{
	static unsigned char want[MAXURB / 2 * CHUNK], got[MAXURB / 2 * CHUNK];
	struct xfer *in[MAXURB];
	int nin = 0, i, n = bytes / CHUNK, have = 0, outs = 0;

	if (bytes % CHUNK || n > MAXURB / 2 || npending > n)
		die("check: bad size %d", bytes);
	for (i = 0; i < MAXURB; i++)	/* the caller's pending reads */
		if (xf[i].busy && xf[i].urb.endpoint == epin)
			in[nin++] = &xf[i];
	for (i = 1; i < nin; i++)	/* in submission order */
		for (int j = i; j > 0 && in[j - 1]->seq > in[j]->seq; j--) {
			struct xfer *t = in[j];

			in[j] = in[j - 1];
			in[j - 1] = t;
		}
	while (nin < n)
		in[nin++] = submit(epin, NULL, CHUNK);
	for (i = 0; i < bytes; i++)
		want[i] = next_byte();
	for (i = 0; i < n; i++)
		submit(epout, want + i * CHUNK, CHUNK);
	/* Sort completions back into submission order of the reads. */
	int done[MAXURB] = { 0 }, next = 0;
	while (busy_count()) {
		struct xfer *x = reap(15);

		if (!x)
			die("check: %d URBs still pending after 15 s "
			    "(%d bytes back)", busy_count(), have);
		if (x->urb.endpoint == epout) {
			if (x->urb.status || x->urb.actual_length != CHUNK)
				die("check: write status %d actual %d",
				    x->urb.status, x->urb.actual_length);
			outs++;
			continue;
		}
		if (x->urb.status)
			die("check: read status %d", x->urb.status);
		for (i = 0; i < nin; i++)
			if (in[i] == x)
				done[i] = 1;
		while (next < nin && done[next]) {
			memcpy(got + have, in[next]->buf,
			       (size_t)in[next]->urb.actual_length);
			have += in[next]->urb.actual_length;
			next++;
		}
	}
	if (have != bytes)
		die("check: wrote %d bytes, read back %d", bytes, have);
	for (i = 0; i < bytes; i++)
		if (want[i] != got[i])
			die("check: stream differs at byte %d of %d "
			    "(want %02x got %02x)", i, bytes, want[i], got[i]);
}

static void drain(void)
{
	int n = 0;

	set_interface();
	for (;;) {
		struct xfer *x;

		submit(epin, NULL, CHUNK);
		x = reap(0.3);
		if (!x) {
			discard_all();
			break;
		}
		n += x->urb.actual_length;
	}
	if (n)
		fprintf(stderr, "usbfs-poke: drained %d stale bytes\n", n);
}

static void pending_reads(int n)
{
	while (n--)
		submit(epin, NULL, CHUNK);
}

static void storm(double secs)
{
	double end = now() + secs;
	long ops[5] = { 0 }, cancelled = 0, i = 0;

	while (now() < end) {
		int op = (int)(i++ % 5), k;

		switch (op) {
		case 0:	/* CLEAR_HALT both ways while reads wait for data */
			pending_reads(4);
			clear_halt(epin);
			clear_halt(epout);
			check(4 * CHUNK, 4);
			break;
		case 1:	/* SET_INTERFACE kills the pending reads */
			pending_reads(4);
			set_interface();
			while (busy_count()) {
				struct xfer *x = reap(10);

				if (!x)
					die("reads not ended by SET_INTERFACE");
				cancelled += x->urb.status != 0;
			}
			check(4 * CHUNK, 0);
			break;
		case 2:	/* pending reads unlinked */
			pending_reads(8);
			discard_all();
			check(4 * CHUNK, 0);
			break;
		case 3:	/* writes and reads unlinked mid-transfer */
			pending_reads(8);
			for (k = 0; k < 8; k++) {
				unsigned char junk[CHUNK];

				memset(junk, k, sizeof(junk));
				submit(epout, junk, CHUNK);
			}
			usleep((useconds_t)(i % 7) * 3000);
			discard_all();
			drain();
			check(4 * CHUNK, 0);
			break;
		default:	/* plain traffic */
			check(8 * CHUNK, 0);
		}
		ops[op]++;
	}
	printf("usbfs-poke: %ld clear-halt, %ld set-interface (%ld reads "
	       "cancelled), %ld discard-reads, %ld discard-mid-transfer, "
	       "%ld plain rounds; every check passed\n",
	       ops[0], ops[1], cancelled, ops[2], ops[3], ops[4]);
}

static void stream(void)
{
	static unsigned char data[CHUNK];

	memset(data, 0x5a, sizeof(data));
	pending_reads(8);
	for (int k = 0; k < 8; k++)
		submit(epout, data, CHUNK);
	for (;;) {
		struct xfer *x = reap(60);

		if (!x)
			die("stream stalled");
		if (x->urb.endpoint == epin)
			submit(epin, NULL, CHUNK);
		else
			submit(epout, data, CHUNK);
	}
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: usbfs-poke DEVNODE INTF EPOUT EPIN "
			"check BYTES|drain|storm SECONDS|stream\n");
		return 2;
	}
	fd = open(argv[1], O_RDWR);
	if (fd < 0)
		die("%s: %s", argv[1], strerror(errno));
	intf = atoi(argv[2]);
	epout = (unsigned)strtoul(argv[3], NULL, 16);
	epin = (unsigned)strtoul(argv[4], NULL, 16) | 0x80;
	rng ^= (uint64_t)getpid() << 32 ^ (uint64_t)time(NULL);
	unsigned int i = (unsigned)intf;
	if (ioctl(fd, USBDEVFS_CLAIMINTERFACE, &i) < 0)
		die("claim interface %d: %s", intf, strerror(errno));
	if (!strcmp(argv[5], "check") && argc > 6)
		check(atoi(argv[6]), 0);
	else if (!strcmp(argv[5], "drain"))
		drain();
	else if (!strcmp(argv[5], "storm") && argc > 6)
		storm(atof(argv[6]));
	else if (!strcmp(argv[5], "stream"))
		stream();
	else
		die("unknown mode %s", argv[5]);
	return 0;
}

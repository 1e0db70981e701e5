/*
 * usbfs-poke - drive a Loopback gadget through usbfs, with unlinks, halts
 * and SET_INTERFACE thrown in; used by the VM fault scenarios.
 *
 *   usbfs-poke DEVNODE INTF EPOUT EPIN check BYTES
 *   usbfs-poke DEVNODE INTF EPOUT EPIN drain
 *   usbfs-poke DEVNODE INTF EPOUT EPIN storm SECONDS
 *   usbfs-poke DEVNODE INTF EPOUT EPIN stream
 *   usbfs-poke DEVNODE INTF EPOUT EPIN cancel COUNT SECONDS
 *   usbfs-poke DEVNODE INTF EPOUT EPIN pattern BYTES
 *   usbfs-poke DEVNODE INTF EPOUT EPIN ctrlq
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
 * The next three want a SourceSink gadget (f_sourcesink, "Gadget Zero")
 * with pattern=1: byte i of what its IN endpoint sends is (i % P) % 63,
 * P being the endpoint's packet size (Linux 6.x; older kernels restarted
 * the count with each request, P = bulk_buflen).  So any stretch read
 * from it is ((p + i) % P) % 63 for some phase p, which is 0 when reads
 * end on packet boundaries (a read cancelled part-way may not).
 *
 *   cancel  COUNT times (for at most SECONDS): submit a read on EPIN,
 *           discard it at once, reap it; a read that completed anyway
 *           must hold the pattern.  Then the device must still answer
 *           and 8 reads in a row of 16 KiB must be one stretch of it.
 *   pattern reads BYTES (a multiple of 16 KiB), 4 reads queued at a
 *           time, and checks that they are one stretch of the pattern.
 *   ctrlq   queues 16 asynchronous control requests on endpoint 0 (all
 *           submitted before the first reap): descriptors, statuses,
 *           the gadget's vendor write/read-back pair 0x5b/0x5c, one
 *           request the gadget stalls, CLEAR_FEATURE(ENDPOINT_HALT) on
 *           endpoint 0, SET_INTERFACE and CLEAR_FEATURE(ENDPOINT_HALT) on
 *           EPIN.  Prints "done INDEX status S actual A NAME" for each in
 *           the order they complete, whether a read-back matched what was
 *           written, and whether the order was the submission order.  It
 *           judges no status: the caller compares them with another
 *           path's (directly on the gadget vs. imported).
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
static char where[64];		/* for die(): e.g. "cycle 17: " */
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

	fprintf(stderr, "usbfs-poke: %s", where);
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

/* Waits (at most secs) for the next completed URB of any kind. */
static struct usbdevfs_urb *reap_urb(double secs)
{
	struct usbdevfs_urb *u;
	double end = now() + secs;

	for (;;) {
		if (ioctl(fd, USBDEVFS_REAPURBNDELAY, &u) == 0)
			return u;
		if (errno != EAGAIN)
			die("REAPURB: %s", strerror(errno));
		double left = end - now();
		if (left <= 0)
			return NULL;
		struct pollfd p = { fd, POLLOUT, 0 };
		poll(&p, 1, (int)(left * 1000) + 1);
	}
}

/* Waits (at most secs) for the next completed URB of ours. */
static struct xfer *reap(double secs)
{
	struct usbdevfs_urb *u = reap_urb(secs);
	struct xfer *x;

	if (!u)
		return NULL;
	x = u->usercontext;
	x->busy = 0;
	return x;
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

/* -- SourceSink (pattern=1) -- */

/*
 * A period P (packet sizes, and the bulk_buflen of 4096 the scenarios
 * set) and phase p with b[i] == ((p + i) % P) % 63 for all i: returns
 * p + P * 65536, or -1 when there is none.
 */
static int pattern_phase(const unsigned char *b, int n)
{
	static const int periods[] = { 512, 64, 1024, 4096 };

	for (unsigned k = 0; k < sizeof(periods) / sizeof(periods[0]); k++) {
		int per = periods[k];

		for (int p = 0; p < per; p++) {
			int i;

			for (i = 0; i < n; i++)
				if (b[i] != (unsigned char)((p + i) % per % 63))
					break;
			if (i == n)
				return p + per * 65536;
		}
	}
	return -1;
}

/* Where a buffer first differs from the high-speed pattern, for messages. */
static void describe_break(const unsigned char *b, int n, char *out,
			   size_t len)
{
	int i;

	for (i = 0; i < n; i++)
		if (b[i] != (unsigned char)(i % 512 % 63))
			break;
	snprintf(out, len, "byte %d of %d is %02x, (%d %% 512) %% 63 is %02x",
		 i, n, i < n ? b[i] : 0, i, i % 512 % 63);
}

static void pattern_read(int bytes)
{
	static unsigned char got[64 * CHUNK];
	struct xfer *q[4];
	int n = bytes / CHUNK, sent = 0, have = 0, head = 0;

	if (bytes <= 0 || bytes % CHUNK || n > 64)
		die("pattern: bad size %d", bytes);
	while (have < bytes) {
		while (sent < n && sent - head < 4)
			q[sent++ % 4] = submit(epin, NULL, CHUNK);
		struct xfer *x = reap(10);

		if (!x)
			die("pattern: read %d of %d did not complete in 10 s "
			    "(%d bytes back)", head + 1, n, have);
		if (x != q[head % 4])
			die("pattern: reads completed out of order");
		if (x->urb.status)
			die("pattern: read %d of %d: status %d (%s)", head + 1,
			    n, x->urb.status, strerror(-x->urb.status));
		if (x->urb.actual_length != CHUNK)
			die("pattern: read %d of %d: %d bytes, not %d",
			    head + 1, n, x->urb.actual_length, CHUNK);
		memcpy(got + have, x->buf, CHUNK);
		have += CHUNK;
		head++;
	}
	int p = pattern_phase(got, have);

	if (p < 0) {
		char why[80];

		describe_break(got, have, why, sizeof(why));
		die("pattern: %d bytes read are not the gadget's pattern: %s",
		    have, why);
	}
	printf("usbfs-poke: %d bytes read in %d reads of %d, one stretch of "
	       "the pattern (period %d, phase %d)\n", have, n, CHUNK,
	       p / 65536, p % 65536);
}

static void cancel_storm(long count, double secs)
{
	double t0 = now(), end = t0 + secs;
	long i, done = 0, cancelled = 0, partial = 0;
	unsigned int ci;

	for (i = 0; i < count && now() < end; i++) {
		snprintf(where, sizeof(where), "cycle %ld of %ld: ", i + 1,
			 count);
		struct xfer *x = submit(epin, NULL, CHUNK);

		if (ioctl(fd, USBDEVFS_DISCARDURB, &x->urb) < 0 &&
		    errno != EINVAL)	/* EINVAL: completed already */
			die("DISCARDURB: %s", strerror(errno));
		if (!reap(10))
			die("the discarded read did not come back in 10 s");
		int st = x->urb.status, n = x->urb.actual_length;

		if (st == 0)
			done++;
		else if (st == -ECONNRESET || st == -ENOENT)
			cancelled++;
		else
			die("the read ended with status %d (%s)", st,
			    strerror(-st));
		partial += st != 0 && n > 0;
		if (n > 0 && pattern_phase(x->buf, n) < 0) {
			char why[80];

			describe_break(x->buf, n, why, sizeof(why));
			die("a read (status %d) brought %d bytes that are "
			    "not the pattern: %s", st, n, why);
		}
	}
	where[0] = 0;
	printf("usbfs-poke: %ld submit+discard cycles in %.2f s: %ld reads "
	       "cancelled (%ld of them with some data), %ld completed first; "
	       "all data the pattern\n", i, now() - t0, cancelled, partial,
	       done);
	if (i < count)
		die("only %ld of %ld cycles in %.0f s", i, count, secs);
	if (ioctl(fd, USBDEVFS_GET_CAPABILITIES, &ci) < 0)
		die("the device no longer answers: %s", strerror(errno));
	pattern_read(8 * CHUNK);
}

struct creq {
	const char *name;
	uint8_t type, req;
	uint16_t value, index, length;	/* index 0xffff: EPIN */
	int fill;		/* OUT data: this byte plus the offset */
	int echo_of;		/* IN: must read back request echo_of's data */
};

static struct cstate {
	struct usbdevfs_urb urb;
	unsigned char buf[8 + 512];
	int submitted, done;
} cs[16];

static void control_queue(void)
{
	/* 0x5b: SourceSink keeps the data in its ep0 buffer, 0x5c reads it
	 * back; with wValue != 0 it refuses (stalls) either of them. */
	static const struct creq r[] = {
		{ "GET_DESCRIPTOR(DEVICE)", 0x80, 6, 0x0100, 0, 18, 0, -1 },
		{ "vendor 0x5b write 64", 0x40, 0x5b, 0, 0, 64, 0x11, -1 },
		{ "vendor 0x5c read 64", 0xc0, 0x5c, 0, 0, 64, 0, 1 },
		{ "CLEAR_FEATURE(ENDPOINT_HALT) ep 00", 0x02, 1, 0, 0x00, 0, 0, -1 },
		{ "GET_STATUS(DEVICE)", 0x80, 0, 0, 0, 2, 0, -1 },
		{ "GET_DESCRIPTOR(CONFIGURATION)", 0x80, 6, 0x0200, 0, 255, 0, -1 },
		{ "SET_INTERFACE 0 alt 0", 0x01, 11, 0, 0, 0, 0, -1 },
		{ "vendor 0x5c wValue 1 (stalls)", 0xc0, 0x5c, 1, 0, 8, 0, -1 },
		{ "GET_STATUS(INTERFACE 0)", 0x81, 0, 0, 0, 2, 0, -1 },
		{ "vendor 0x5b write 128", 0x40, 0x5b, 0, 0, 128, 0x5a, -1 },
		{ "vendor 0x5c read 128", 0xc0, 0x5c, 0, 0, 128, 0, 9 },
		{ "CLEAR_FEATURE(ENDPOINT_HALT) ep IN", 0x02, 1, 0, 0xffff, 0, 0, -1 },
		{ "GET_STATUS(ENDPOINT IN)", 0x82, 0, 0, 0xffff, 2, 0, -1 },
		{ "GET_DESCRIPTOR(STRING 0)", 0x80, 6, 0x0300, 0, 255, 0, -1 },
		{ "GET_DESCRIPTOR(STRING 2)", 0x80, 6, 0x0302, 0x0409, 255, 0, -1 },
		{ "GET_DESCRIPTOR(DEVICE) again", 0x80, 6, 0x0100, 0, 18, 0, -1 },
	};
	enum { n = sizeof(r) / sizeof(r[0]) };
	int i, pending = 0, ndone = 0, order[n], in_order = 1;

	_Static_assert(n <= sizeof(cs) / sizeof(cs[0]), "cs[] too small");
	for (i = 0; i < n; i++) {
		const struct creq *c = &r[i];
		unsigned char *s = cs[i].buf;
		uint16_t index = c->index == 0xffff ? (uint16_t)epin : c->index;

		s[0] = c->type;
		s[1] = c->req;
		s[2] = (unsigned char)c->value;
		s[3] = (unsigned char)(c->value >> 8);
		s[4] = (unsigned char)index;
		s[5] = (unsigned char)(index >> 8);
		s[6] = (unsigned char)c->length;
		s[7] = (unsigned char)(c->length >> 8);
		memset(s + 8, 0xee, sizeof(cs[i].buf) - 8);
		if (!(c->type & 0x80))
			for (int k = 0; k < c->length; k++)
				s[8 + k] = (unsigned char)(c->fill + k);
		memset(&cs[i].urb, 0, sizeof(cs[i].urb));
		cs[i].urb.type = USBDEVFS_URB_TYPE_CONTROL;
		cs[i].urb.endpoint = 0;
		cs[i].urb.buffer = cs[i].buf;
		cs[i].urb.buffer_length = 8 + c->length;
		cs[i].urb.usercontext = &cs[i];
	}
	for (i = 0; i < n; i++) {
		if (ioctl(fd, USBDEVFS_SUBMITURB, &cs[i].urb) < 0) {
			/* usbfs itself refused it: say so */
			printf("submit %d refused by usbfs: %d (%s) %s\n", i,
			       -errno, strerror(errno), r[i].name);
			cs[i].urb.status = -errno;
			continue;
		}
		cs[i].submitted = 1;
		pending++;
	}
	double end = now() + 15;

	while (pending) {
		struct usbdevfs_urb *u = reap_urb(end - now());

		if (!u) {
			printf("still pending after 15 s:");
			for (i = 0; i < n; i++)
				if (cs[i].submitted && !cs[i].done)
					printf(" %d", i);
			printf("\n");
			die("%d control requests never completed", pending);
		}
		i = (int)((struct cstate *)u->usercontext - cs);
		cs[i].done = 1;
		pending--;
		if (ndone > 0 && order[ndone - 1] > i)
			in_order = 0;
		order[ndone++] = i;
		printf("done %d status %d actual %d %s\n", i, u->status,
		       u->actual_length, r[i].name);
	}
	for (i = 0; i < n; i++) {
		const struct creq *c = &r[i];
		const struct cstate *got = &cs[i];

		if (c->echo_of < 0)
			continue;
		if (got->urb.status || got->urb.actual_length != c->length ||
		    memcmp(got->buf + 8, cs[c->echo_of].buf + 8, c->length))
			printf("echo %d -> %d: differs (status %d actual %d)\n",
			       c->echo_of, i, got->urb.status,
			       got->urb.actual_length);
		else
			printf("echo %d -> %d: ok, %d bytes read back\n",
			       c->echo_of, i, c->length);
	}
	printf("order:");
	for (i = 0; i < ndone; i++)
		printf(" %d", order[i]);
	printf(" (%s)\n", in_order ? "submission order" : "NOT submission order");
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: usbfs-poke DEVNODE INTF EPOUT EPIN "
			"check BYTES|drain|storm SECONDS|stream|\n"
			"       cancel COUNT SECONDS|pattern BYTES|ctrlq\n");
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
	else if (!strcmp(argv[5], "cancel") && argc > 7)
		cancel_storm(atol(argv[6]), atof(argv[7]));
	else if (!strcmp(argv[5], "pattern") && argc > 6)
		pattern_read(atoi(argv[6]));
	else if (!strcmp(argv[5], "ctrlq"))
		control_queue();
	else
		die("unknown mode %s", argv[5]);
	return 0;
}

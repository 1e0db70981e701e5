/*
 * fuzz.c - the server's input path under a fuzzer, over a fake device;
 * with -DFUZZ_CLIENT, the client's (see "the client side" below).
 *
 * p2pusb.c is compiled into this file (as tests/wire-test.c does) and linked
 * WITHOUT libusb: every libusb_* function it calls is defined below, as a
 * fake of one high-speed device "1-1" (bus 1, address 2) that keeps libusb's
 * rules and checks that p2pusb keeps them too.  p2pusb finds devices in
 * sysfs and opens /dev/bus/usb/BBB/DDD itself: the harness points sysfs_usb
 * and usbfs_dir at a fake tree in a temporary directory (a hub "1-2", the
 * device "1-1" and its interfaces; the usbfs node is an empty file), kept
 * in step with the fake device's configuration.  A connection is a socketpair:
 * the harness plays the client on one end, writes the fuzz input into it in
 * chunks, and runs the server's own read_input / write_output / reap_conns
 * plus the fake's event handling in a loop, the way serve() does.  At the
 * end it closes its end and runs until the connection is reaped, so leaks
 * (LSan) and use-after-free at teardown are caught.  p2pusb's malloc,
 * calloc and realloc go through the harness, which fails those of more
 * than FZ_MEMORY bytes, and any one the control bytes say (STEP_NOMEM).
 *
 * Input layout:
 *   byte 0      mode: F_* flags below (F_IMPORT prepends OP_REQ_IMPORT "1-1")
 *   byte 1      n: how many control bytes follow
 *   n bytes     control, read as the run goes: one per loop turn says how
 *               many bytes the client sends next (or: unplug the device,
 *               connect a second client, disconnect now, fail the next
 *               allocation or reset, re-enumerate at the next reset:
 *               STEP_*), one per pending transfer per turn says its fate
 *               (FATE_*), one per cancel says whether it loses the race
 *               with completion; when they run out, the rest is sent at
 *               once, transfers complete normally, and every reply is read
 *   the rest    what the client sends, from its first byte
 *
 * Besides ASan/UBSan/LSan, the harness checks (each failure is one line
 * "p2pusb-fuzz: FAIL <class>: ..." and abort()):
 *   libusb    p2pusb broke a libusb rule (freed or closed with transfers in
 *             flight, iso packets beyond the allocation, ...)
 *   wire      the reply stream is malformed
 *   answer    as vhci_hcd sees it: a reply for an URB already given back
 *             (by a RET_UNLINK that found it, -ECONNRESET or 0), or (once
 *             all input is consumed and the device is idle) an URB or
 *             unlink never answered; an unlink may overtake the submit it
 *             names, as vhci_hcd's can (see model_parse())
 *   order     a RET_SUBMIT on endpoint 0 before that of an earlier control
 *             request: the device runs them in order (the fake too)
 *   ep0       a request endpoint 0's device answers was not sent to it
 *   iso       iso descriptors vhci_hcd rejects (sum of actual_length !=
 *             actual_length, which makes vhci_hcd drop the device), for
 *             input vhci_hcd could have sent
 *   cancel    a closed connection left a transfer in flight uncancelled
 *   claim     a live session with an interface not claimed by p2pusb or
 *             bound to a kernel driver
 *   eptype    p2pusb's endpoint table differs from the device's
 *   reset     an import accepted on a device whose reset failed, or that
 *             was enumerated anew (a stale handle)
 *   giveback  after the session (or an import refused once the device was
 *             opened) the device is not back with its driver
 *   busy      two connections hold the device at once
 *   text      a log line is not one line of printable ASCII
 *   exit      p2pusb called err() or errx(): the server would exit
 *   hang      the connection is never reaped
 *   leak      device references, handles, descriptors or transfers left
 * P2PUSB_FUZZ_IGNORE=class,class turns those classes into warnings
 * (except libusb, exit, hang and leak); P2PUSB_FUZZ_VERBOSE=1 shows
 * p2pusb's log (escaped).
 *
 * Builds (from the top of the tree); -DFUZZ_CLIENT for the client's:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined \
 *       -fno-sanitize-recover=all -DFUZZ_LIBFUZZER \
 *       $(pkg-config --cflags libusb-1.0) -o tests/fuzz tests/fuzz.c
 *   gcc -std=c11 -g -O1 -fsanitize=address,undefined \
 *       -fno-sanitize-recover=all $(pkg-config --cflags libusb-1.0) \
 *       -o tests/fuzz-replay tests/fuzz.c
 * (test.sh does these: the "fuzz:" checks.)
 * tests/fuzz-replay FILE|DIR...   runs every input once (no libFuzzer;
 *                                 a directory's subdirectories are not)
 * tests/fuzz-replay -g DIR        writes both seed corpora (tests/corpus,
 *                                 the client's in tests/corpus/client)
 * tests/fuzz-replay -d FILE       prints an input decoded
 */
#define _GNU_SOURCE
#include <err.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

/*
 * p2pusb's log, its exits, what it prints and what it allocates go
 * through the harness: the declarations come first, so that the system
 * headers p2pusb.c includes again declare the real functions.
 */
void fuzz_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fuzz_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fuzz_err(int eval, const char *fmt, ...)
	__attribute__((noreturn, format(printf, 2, 3)));
static void fuzz_errx(int eval, const char *fmt, ...)
	__attribute__((noreturn, format(printf, 2, 3)));
static int fuzz_printf(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));
static void *fz_malloc(size_t n);
static void *fz_calloc(size_t n, size_t size);
static void *fz_realloc(void *p, size_t n);

#define warnx fuzz_warnx
#define warn fuzz_warn
#define err fuzz_err
#define errx fuzz_errx
#define printf fuzz_printf
#define malloc fz_malloc
#define calloc fz_calloc
#define realloc fz_realloc
#define main p2pusb_main
#include "../p2pusb.c"

/* serve's options as the harness runs it: every device but hubs. */
static const struct serve_opts fz_opts = { .max_length = URB_LENGTH_MAX };
#undef main
#undef malloc		/* the harness's and the fake's own: never fail */
#undef calloc
#undef realloc
#undef printf
#undef errx
#undef err

#include <dirent.h>
#include <ftw.h>
#include <sys/ioctl.h>

/* ---- input layout ----------------------------------------------------- */

#define F_IMPORT	0x01	/* prepend OP_REQ_IMPORT "1-1" to the wire */
#define F_NO_USB	0x02	/* no libusb context: usb == NULL */
#define F_OPEN_FAIL	0x04	/* the usbfs node is missing: open() fails */
#define F_CLAIM_FAIL	0x08	/* libusb_claim_interface fails: BUSY */
#define F_DRIVER	0x10	/* interfaces have a kernel driver, bound */
#define F_UNCONFIGURED	0x20	/* the device starts in configuration 0 */
#define F_SMALL_SOCK	0x40	/* small socket buffer, client reads slowly */
#define F_WRAP_FAIL	0x80	/* libusb_wrap_sys_device fails */

/* Control byte for a write step: bytes of wire sent before the next pump
 * (low 4 bits); STEP_UNPLUG also unplugs the device first, STEP_SECOND
 * also connects a second client that imports "1-1" (once), STEP_CLOSE has
 * the client disconnect at once, whatever is in flight.  STEP_NOMEM makes
 * the next allocation fail (p2pusb's malloc, calloc, realloc, or
 * libusb_alloc_transfer); STEP_RESET_FAIL the device's next reset (libusb:
 * LIBUSB_ERROR_OTHER, nothing else changes); STEP_REENUM has the next
 * reset enumerate the device anew (libusb: LIBUSB_ERROR_NOT_FOUND): the
 * old handle is stale, the device is "1-1" at address 4 (devid
 * DEVID_REENUM), with a new usbfs node.  Each of the three adds up. */
#define STEP_REENUM	0x90
#define STEP_NOMEM	0xa0
#define STEP_RESET_FAIL	0xb0
#define STEP_SECOND	0xc0	/* a second client imports "1-1" */
#define STEP_CLOSE	0xd0
#define STEP_UNPLUG	0xe0
static const size_t chunk_sizes[16] = {
	0, 1, 2, 3, 4, 8, 16, 20, 32, 40, 47, 48, 49, 64, 512, (size_t)-1,
};

/*
 * Control byte for a pending transfer at each event round (low 3 bits; the
 * rest scales lengths): 0 stays pending, 1 completes in full, 2 completes
 * short, 3 stalls, 4 completes as cancelled if cancelled (else in full),
 * 5 an error (ERROR/TIMED_OUT/OVERFLOW), 6 the device is unplugged,
 * 7 completes in full if cancelled (the cancel lost), else stays pending.
 * A control byte with bit 7 set at a libusb_cancel_transfer makes the
 * cancel lose the race: LIBUSB_ERROR_NOT_FOUND, and the transfer will
 * complete normally.
 */
enum { FATE_PENDING, FATE_FULL, FATE_SHORT, FATE_STALL, FATE_CANCEL,
       FATE_ERROR, FATE_UNPLUG, FATE_LATE };
#define FATE_KILLED	(-2)	/* not a control byte: ended by the kernel */

static const uint8_t *ctl_p, *ctl_end;

static int ctl_next(void)
{
	return ctl_p < ctl_end ? *ctl_p++ : -1;
}

/* -- memory: what p2pusb allocates can fail -- */

/*
 * No single allocation of more than FZ_MEMORY bytes succeeds (the fake
 * machine has no more to spare: an URB near URB_LENGTH_MAX fails), and
 * STEP_NOMEM fails the next one, whatever its size.
 */
#define FZ_MEMORY	(8u << 20)

static int fz_nomem;		/* this many allocations fail next */

static int fz_alloc_fails(size_t n)
{
	if (n > FZ_MEMORY)
		return 1;
	if (fz_nomem > 0) {
		fz_nomem--;
		return 1;
	}
	return 0;
}

static void *fz_malloc(size_t n)
{
	return fz_alloc_fails(n) ? NULL : malloc(n);
}

static void *fz_calloc(size_t n, size_t size)
{
	if (size && n > (size_t)-1 / size)
		return NULL;
	return fz_alloc_fails(n * size) ? NULL : calloc(n, size);
}

static void *fz_realloc(void *p, size_t n)
{
	return fz_alloc_fails(n) ? NULL : realloc(p, n);
}

/* ---- failures --------------------------------------------------------- */

#define LOG_LINES	8
static char log_ring[LOG_LINES][200];
static unsigned log_n;
static int log_verbose;
static char fz_ignored[256];

static void fz_fail(const char *cls, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* S with every byte but printable ASCII as \xNN, for a failure line. */
static const char *escape(const char *s, char *buf, size_t len)
{
	size_t o = 0;

	for (; *s && o + 5 < len; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch >= ' ' && ch <= '~' && ch != '\\')
			buf[o++] = (char)ch;
		else
			o += (size_t)snprintf(buf + o, len - o, "\\x%02x", ch);
	}
	buf[o] = '\0';
	return buf;
}

/*
 * What p2pusb says reaches a terminal: a busid or a product name from
 * the network must not rewrite the user's screen or fake a second line.
 * A LINE (without its newline) is printable ASCII, nothing else.
 */
static void check_text(const char *kind, const char *line)
{
	char shown[600];
	const char *p;

	for (p = line; *p; p++) {
		if ((unsigned char)*p < ' ' || (unsigned char)*p > '~') {
			fz_fail("text", "%s with byte 0x%02x: \"%s\"", kind,
				(unsigned char)*p,
				escape(line, shown, sizeof(shown)));
			return;
		}
	}
}

static void log_line(const char *line)
{
	snprintf(log_ring[log_n++ % LOG_LINES], sizeof(log_ring[0]), "%s",
		 line);
	if (log_verbose) {
		char shown[4096];

		fprintf(stderr, "p2pusb: %s\n",
			escape(line, shown, sizeof(shown)));
	}
	check_text("log line", line);
}

void fuzz_warnx(const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	log_line(line);
}

void fuzz_warn(const char *fmt, ...)
{
	char msg[800];
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fuzz_warnx("%s: %s", msg, strerror(saved));
}

/*
 * err() and errx(): the server must never exit (one session's trouble is
 * not the others'): class "exit".  The client target (FUZZ_CLIENT) arms
 * fz_exit_jmp, and the exit becomes a longjmp back to the harness.
 */
static jmp_buf *fz_exit_jmp;
static char fz_exit_msg[1024];

__attribute__((noreturn))
static void fz_exit(int eval)
{
	log_line(fz_exit_msg);
	if (!fz_exit_jmp) {
		fz_fail("exit", "p2pusb exits (status %d): %s", eval,
			fz_exit_msg);
		abort();	/* "exit" cannot be ignored */
	}
	longjmp(*fz_exit_jmp, 1);
}

static void fuzz_errx(int eval, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(fz_exit_msg, sizeof(fz_exit_msg), fmt, ap);
	va_end(ap);
	fz_exit(eval);
}

static void fuzz_err(int eval, const char *fmt, ...)
{
	char msg[800];
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(fz_exit_msg, sizeof(fz_exit_msg), "%s: %s", msg,
		 strerror(saved));
	fz_exit(eval);
}

/* printf(): each call one whole line of printable text, counted. */
static int fz_print_lines;

static int fuzz_printf(const char *fmt, ...)
{
	char out[2048], shown[sizeof(out) * 4], *nl;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out, sizeof(out), fmt, ap);
	va_end(ap);
	if (log_verbose)
		fprintf(stderr, "p2pusb prints: %s\n",
			escape(out, shown, sizeof(shown)));
	nl = strchr(out, '\n');
	if (!nl || nl[1] != '\0') {
		fz_fail("text", "printf output is not one line: \"%s\"",
			escape(out, shown, sizeof(shown)));
		return n;
	}
	*nl = '\0';
	check_text("printed line", out);
	fz_print_lines++;
	return n;
}

static void dump_log(void)
{
	unsigned i = log_n > LOG_LINES ? log_n - LOG_LINES : 0;
	char shown[sizeof(log_ring[0]) * 4];

	if (log_n && !log_verbose)
		fprintf(stderr, "p2pusb-fuzz: p2pusb's last log lines:\n");
	for (; i < log_n && !log_verbose; i++)
		fprintf(stderr, "    %s\n", escape(log_ring[i % LOG_LINES],
						   shown, sizeof(shown)));
}

static int is_ignored(const char *cls)
{
	size_t n = strlen(cls);
	const char *p = fz_ignored;

	while ((p = strstr(p, cls)) != NULL) {
		if ((p == fz_ignored || p[-1] == ',') &&
		    (p[n] == '\0' || p[n] == ','))
			return 1;
		p += n;
	}
	return 0;
}

static void fs_remove(void);

static void fz_fail(const char *cls, const char *fmt, ...)
{
	static char seen[32][160];
	static int nseen;
	char msg[400];
	va_list ap;
	int i;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (is_ignored(cls) && strcmp(cls, "libusb") && strcmp(cls, "hang") &&
	    strcmp(cls, "leak") && strcmp(cls, "exit")) {
		for (i = 0; i < nseen; i++)
			if (strncmp(seen[i], msg, sizeof(seen[i]) - 1) == 0)
				return;
		if (nseen < 32)
			snprintf(seen[nseen++], sizeof(seen[0]), "%.159s", msg);
		fprintf(stderr, "p2pusb-fuzz: ignored %s: %s\n", cls, msg);
		return;
	}
	fprintf(stderr, "p2pusb-fuzz: FAIL %s: %s\n", cls, msg);
	dump_log();
	fs_remove();		/* abort() skips atexit */
	abort();
}

/* ---- the fake device -------------------------------------------------- */

#define EP(addr, type, size, interval) {				\
	.bLength = LIBUSB_DT_ENDPOINT_SIZE,				\
	.bDescriptorType = LIBUSB_DT_ENDPOINT,				\
	.bEndpointAddress = (addr), .bmAttributes = (type),		\
	.wMaxPacketSize = (size), .bInterval = (interval) }
#define ALT(num, alt, cls, eps) {					\
	.bLength = LIBUSB_DT_INTERFACE_SIZE,				\
	.bDescriptorType = LIBUSB_DT_INTERFACE,				\
	.bInterfaceNumber = (num), .bAlternateSetting = (alt),		\
	.bNumEndpoints = sizeof(eps) / sizeof(eps[0]),			\
	.bInterfaceClass = (cls), .endpoint = (eps) }
#define CONFIG(value, ifs) {						\
	.bLength = LIBUSB_DT_CONFIG_SIZE,				\
	.bDescriptorType = LIBUSB_DT_CONFIG,				\
	.bNumInterfaces = sizeof(ifs) / sizeof(ifs[0]),			\
	.bConfigurationValue = (value), .bmAttributes = 0x80,		\
	.MaxPower = 50, .interface = (ifs) }

enum { BULK = LIBUSB_TRANSFER_TYPE_BULK, INTR = LIBUSB_TRANSFER_TYPE_INTERRUPT,
       ISOC = LIBUSB_TRANSFER_TYPE_ISOCHRONOUS };

/* Configuration 1: one interface, bulk IN/OUT, interrupt IN, iso OUT; its
 * altsetting 1 adds an iso IN endpoint. */
static const struct libusb_endpoint_descriptor c1_a0_eps[] = {
	EP(0x81, BULK, 512, 0), EP(0x02, BULK, 512, 0),
	EP(0x83, INTR, 64, 4), EP(0x04, ISOC, 1024, 1),
};
static const struct libusb_endpoint_descriptor c1_a1_eps[] = {
	EP(0x81, BULK, 512, 0), EP(0x02, BULK, 512, 0),
	EP(0x83, INTR, 64, 4), EP(0x04, ISOC, 1024, 1),
	EP(0x85, ISOC, 1024, 1),
};
static const struct libusb_interface_descriptor c1_if0[] = {
	ALT(0, 0, 0xff, c1_a0_eps), ALT(0, 1, 0xff, c1_a1_eps),
};
static const struct libusb_interface c1_ifs[] = { { c1_if0, 2 } };

/* Configuration 2: two interfaces listed out of order (index 0 is
 * interface 1); 0x81 is an interrupt endpoint here. */
static const struct libusb_endpoint_descriptor c2_i1a0_eps[] = {
	EP(0x01, BULK, 512, 0),
};
static const struct libusb_endpoint_descriptor c2_i1a1_eps[] = {
	EP(0x01, BULK, 512, 0), EP(0x82, BULK, 512, 0),
};
static const struct libusb_endpoint_descriptor c2_i0a0_eps[] = {
	EP(0x81, INTR, 8, 10),
};
static const struct libusb_interface_descriptor c2_if1[] = {
	ALT(1, 0, 0x0a, c2_i1a0_eps), ALT(1, 1, 0x0a, c2_i1a1_eps),
};
static const struct libusb_interface_descriptor c2_if0[] = {
	ALT(0, 0, 0x02, c2_i0a0_eps),
};
static const struct libusb_interface c2_ifs[] = { { c2_if1, 2 }, { c2_if0, 1 } };

static const struct libusb_config_descriptor gadget_configs[] = {
	CONFIG(1, c1_ifs), CONFIG(2, c2_ifs),
};

/* Hubs: offered never, listed never, but enumerated. */
static const struct libusb_endpoint_descriptor hub_eps[] = {
	EP(0x81, INTR, 2, 12),
};
static const struct libusb_interface_descriptor hub_if0[] = {
	ALT(0, 0, LIBUSB_CLASS_HUB, hub_eps),
};
static const struct libusb_interface hub_ifs[] = { { hub_if0, 1 } };
static const struct libusb_config_descriptor hub_config = CONFIG(1, hub_ifs);

static const uint8_t gadget_dev_desc[18] = {
	18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x6b, 0x1d, 0x04, 0x01, 0x00, 0x01,
	0, 0, 0, 2,
};

#define NIFS		2	/* interface numbers 0 and 1 */
#define USBFS_LIMIT	(16u << 20)	/* usbfs_memory_mb's default */
#define MAX_ISO_PACKET	8192	/* libusb's limit for high speed */

struct libusb_context { int unused; };

enum { DEV_ROOT_HUB, DEV_GADGET, DEV_HUB, NDEVS };

struct libusb_device {
	int refs;
	int kind;
	uint8_t bus, addr, nports, ports[2];
};

struct libusb_device_handle {
	libusb_device *dev;
	uint32_t claimed;	/* by interface number */
	int fd;			/* wrapped usbfs descriptor; -1: libusb_open */
	struct stat node;	/* ... and the usbfs node it is */
	int mapped;		/* libusb_dev_mem_alloc buffers not yet freed */
	int gen;		/* fz_dev.gen when opened: else stale */
};

/* A transfer: this header, then the libusb_transfer, then its packets. */
struct fx {
	struct fx *next;	/* fz_dev.pending, in submission order */
	int npackets;		/* allocated iso packet descriptors */
	int inflight;		/* submitted; callback not yet called */
	int cancelled;		/* libusb_cancel_transfer returned 0 */
	int cancel_lost;	/* ... returned NOT_FOUND: completes normally */
	int killed;		/* the kernel ended it: kill_status next */
	enum libusb_transfer_status kill_status;
	size_t bytes;		/* usbfs memory */
};
#define FX_HDR	((sizeof(struct fx) + 15) & ~(size_t)15)

static struct fx *fx_of(struct libusb_transfer *t)
{
	return (struct fx *)(void *)((char *)t - FX_HDR);
}

static struct libusb_transfer *xfer_of(struct fx *f)
{
	return (struct libusb_transfer *)(void *)((char *)f + FX_HDR);
}

static struct libusb_context fake_ctx;
static struct libusb_device fz_devs[NDEVS];

static struct {
	int flags;
	int config;		/* 0 (unconfigured), 1 or 2 */
	uint8_t alt[NIFS];
	uint8_t bound[NIFS];	/* a kernel driver has the interface */
	uint32_t claimed;	/* union of every handle's */
	int gone;		/* unplugged */
	int handles;
	size_t usbfs_bytes;
	struct fx *pending;
	long transfers;		/* allocated, not freed */
	int in_events;
	int force;		/* complete everything, ignore control bytes */
	int hold;		/* no control byte: uncancelled ones wait */
	int gone_turns;		/* loop turns since the unplug */
	int gen;		/* enumerations since the start: handles of an
				 * older one are stale (NO_DEVICE) */
	int stale_turns;	/* loop turns since the last one */
	int reset_fail, reenum;	/* armed: STEP_RESET_FAIL, STEP_REENUM */
	int reset_failures;	/* resets that failed (not NOT_FOUND) */
	int reenumerations;
	int opened;		/* p2pusb wrapped a usbfs descriptor */
	libusb_device_handle *last_open;	/* the last it wrapped, */
	int open_reset;		/*   and it was reset since */
} fz_dev;

/* Is H's device gone (unplugged, or enumerated anew since H opened)? */
static int h_gone(const libusb_device_handle *h)
{
	return fz_dev.gone || (h && h->gen != fz_dev.gen);
}

static int fz_dev_config(void)
{
	return fz_dev.config;
}

static const struct libusb_config_descriptor *active_config(void)
{
	return fz_dev.config ? &gadget_configs[fz_dev.config - 1] : NULL;
}

static const struct libusb_interface *find_interface(int num)
{
	const struct libusb_config_descriptor *cfg = active_config();
	int i;

	for (i = 0; cfg && i < cfg->bNumInterfaces; i++)
		if (cfg->interface[i].altsetting[0].bInterfaceNumber == num)
			return &cfg->interface[i];
	return NULL;
}

static const struct libusb_interface_descriptor *find_alt(int num, int alt)
{
	const struct libusb_interface *intf = find_interface(num);
	int a;

	for (a = 0; intf && a < intf->num_altsetting; a++)
		if (intf->altsetting[a].bAlternateSetting == alt)
			return &intf->altsetting[a];
	return NULL;
}

/* The endpoint with this address in the current altsettings, or NULL. */
static const struct libusb_endpoint_descriptor *find_ep(uint8_t addr,
							 int *ifnum)
{
	int i, e;

	for (i = 0; i < NIFS; i++) {
		const struct libusb_interface_descriptor *alt =
		    find_alt(i, fz_dev.alt[i]);

		for (e = 0; alt && e < alt->bNumEndpoints; e++) {
			if (alt->endpoint[e].bEndpointAddress == addr) {
				if (ifnum)
					*ifnum = i;
				return &alt->endpoint[e];
			}
		}
	}
	return NULL;
}

/* The kernel ends transfers itself: they complete at the next event round. */
static void kill_where(int (*match)(struct libusb_transfer *, int), int arg,
		       enum libusb_transfer_status status)
{
	struct fx *f;

	for (f = fz_dev.pending; f; f = f->next) {
		if (f->killed || !match(xfer_of(f), arg))
			continue;
		f->killed = 1;
		/* A cancel already in the kernel reports CANCELLED; libusb
		 * reports other killed URBs (-ENOENT) as COMPLETED. */
		f->kill_status = status == LIBUSB_TRANSFER_COMPLETED &&
				 f->cancelled ? LIBUSB_TRANSFER_CANCELLED : status;
	}
}

static int on_interface(struct libusb_transfer *t, int num)
{
	int ifnum;

	return t->endpoint & 0x0f && find_ep(t->endpoint, &ifnum) &&
	       ifnum == num;
}

static int on_any_but_ep0(struct libusb_transfer *t, int unused)
{
	(void)unused;
	return (t->endpoint & 0x0f) != 0;
}

static int on_any(struct libusb_transfer *t, int unused)
{
	(void)t;
	(void)unused;
	return 1;
}

static void fs_gone(int gone);

/* The kernel fails every URB and removes the device from sysfs. */
static void fz_unplug(void)
{
	fz_dev.gone = 1;
	kill_where(on_any, 0, LIBUSB_TRANSFER_NO_DEVICE);
	fs_gone(1);
}

/* -- the fake sysfs and usbfs: what p2pusb reads and opens -- */

static char fz_root[PATH_MAX / 2], fz_sysfs[PATH_MAX], fz_usbfs[PATH_MAX],
	    fz_nousbfs[PATH_MAX];
static struct stat fz_node;	/* the device's usbfs node */
static int fz_node_addr;	/* ... 001/<this> */

/* The descriptors p2pusb wrapped, to find one left open at the end. */
#define MAX_WRAPPED	16
static struct { int fd; struct stat node; } fz_wrapped[MAX_WRAPPED];
static int fz_nwrapped;
static unsigned fz_mem_calls;	/* libusb_dev_mem_alloc's, this run */

static void fs_write(const char *name, const char *attr, const char *value)
{
	char path[PATH_MAX * 2];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s%s%s", fz_sysfs, name,
		 attr ? "/" : "", attr ? attr : "");
	if (!attr) {
		if (mkdir(path, 0755) < 0 && errno != EEXIST)
			err(1, "%s", path);
		return;
	}
	f = fopen(path, "w");
	if (!f || fprintf(f, "%s\n", value) < 0 || fclose(f) != 0)
		err(1, "%s", path);
}

static void fs_device(const char *name, const char *devnum,
		      const char *cls, const char *pid)
{
	fs_write(name, NULL, NULL);
	fs_write(name, "busnum", "1");
	fs_write(name, "devnum", devnum);
	fs_write(name, "speed", "480");
	fs_write(name, "idVendor", "1d6b");
	fs_write(name, "idProduct", pid);
	fs_write(name, "bcdDevice", "0100");
	fs_write(name, "bDeviceClass", cls);
	fs_write(name, "bDeviceSubClass", "00");
	fs_write(name, "bDeviceProtocol", "00");
	fs_write(name, "bConfigurationValue", "1");
	fs_write(name, "bNumConfigurations", strcmp(cls, "09") ? "2" : "1");
	fs_write(name, "bNumInterfaces", " 1");
}

static void fs_interface(const char *name, const char *cls)
{
	fs_write(name, NULL, NULL);
	fs_write(name, "bInterfaceClass", cls);
	fs_write(name, "bInterfaceSubClass", "00");
	fs_write(name, "bInterfaceProtocol", "00");
}

/* sysfs is always current: the configuration follows the device's. */
static void fs_sync_config(void)
{
	static int config = -1;
	char v[8];

	if (config == fz_dev_config())
		return;
	config = fz_dev_config();
	snprintf(v, sizeof(v), "%d", config);
	fs_write("1-1", "bConfigurationValue", config ? v : "");
	fs_write("1-1", "bNumInterfaces", config == 2 ? " 2" :
		 config == 1 ? " 1" : "");
}

static void fs_gone(int gone)
{
	static int is_gone;
	char here[PATH_MAX + 8], away[PATH_MAX];

	if (gone == is_gone)
		return;
	is_gone = gone;
	snprintf(here, sizeof(here), "%s/1-1", fz_sysfs);
	snprintf(away, sizeof(away), "%s/.gone", fz_root);
	if (gone ? rename(here, away) : rename(away, here))
		err(1, "rename %s", here);
}

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void fs_remove(void)
{
	if (fz_root[0])
		nftw(fz_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void fs_create(void)
{
	const char *tmp = getenv("TMPDIR");
	char path[PATH_MAX * 2];

	snprintf(fz_root, sizeof(fz_root), "%s/p2pusb-fuzz.XXXXXX",
		 tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(fz_root))
		err(1, "mkdtemp %s", fz_root);
	atexit(fs_remove);
	snprintf(fz_sysfs, sizeof(fz_sysfs), "%s/sys", fz_root);
	snprintf(fz_usbfs, sizeof(fz_usbfs), "%s/usbfs", fz_root);
	snprintf(fz_nousbfs, sizeof(fz_nousbfs), "%s/missing", fz_root);
	snprintf(path, sizeof(path), "%s/001", fz_usbfs);
	if (mkdir(fz_sysfs, 0755) < 0 || mkdir(fz_usbfs, 0755) < 0 ||
	    mkdir(path, 0755) < 0)
		err(1, "mkdir %s", path);
	fs_write("usb1", NULL, NULL);		/* a root hub: not a busid */
	fs_device("1-1", "2", "00", "0104");
	fs_device("1-2", "3", "09", "0002");	/* a hub: never offered */
	fs_interface("1-1:1.0", "ff");
	fs_interface("1-1:2.0", "02");
	fs_interface("1-1:2.1", "0a");
	fs_interface("1-2:1.0", "09");
	sysfs_usb = fz_sysfs;
}

/* The device's usbfs node moves to address ADDR: a new file. */
static void fs_node(int addr)
{
	char path[PATH_MAX * 2];
	int fd;

	if (addr == fz_node_addr)
		return;
	snprintf(path, sizeof(path), "%s/001/%03d", fz_usbfs, addr);
	fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0644);
	if (fd < 0 || fstat(fd, &fz_node) < 0)
		err(1, "%s", path);
	close(fd);
	if (fz_node_addr) {
		snprintf(path, sizeof(path), "%s/001/%03d", fz_usbfs,
			 fz_node_addr);
		if (unlink(path) < 0)
			err(1, "%s", path);
	}
	fz_node_addr = addr;
	snprintf(path, sizeof(path), "%d", addr);
	fs_write("1-1", "devnum", path);
}

static void fake_reset(int flags)
{
	fs_gone(0);
	static const struct libusb_device init[NDEVS] = {
		[DEV_ROOT_HUB] = { 1, DEV_ROOT_HUB, 1, 1, 0, { 0, 0 } },
		[DEV_GADGET] = { 1, DEV_GADGET, 1, 2, 1, { 1, 0 } },
		[DEV_HUB] = { 1, DEV_HUB, 1, 3, 1, { 2, 0 } },
	};
	int i;

	memcpy(fz_devs, init, sizeof(fz_devs));
	memset(&fz_dev, 0, sizeof(fz_dev));
	fz_dev.flags = flags;
	fz_dev.config = flags & F_UNCONFIGURED ? 0 : 1;
	for (i = 0; i < NIFS; i++)
		fz_dev.bound[i] = (flags & F_DRIVER) && find_interface(i);
	fs_sync_config();
	fs_node(fz_devs[DEV_GADGET].addr);
	usbfs_dir = flags & F_OPEN_FAIL ? fz_nousbfs : fz_usbfs;
	fz_nwrapped = 0;
	fz_nomem = 0;
	fz_mem_calls = 0;
}

/*
 * A reset after which the kernel sees other descriptors: it disconnects
 * the device and enumerates it anew, at the next address.  Every handle
 * of the old one is stale; the new one is configured and probed by
 * drivers as at plug-in.
 */
static void fz_reenumerate(void)
{
	int i;

	fz_dev.gen++;
	fz_dev.stale_turns = 0;
	fz_dev.reenumerations++;
	kill_where(on_any, 0, LIBUSB_TRANSFER_NO_DEVICE);
	fz_dev.claimed = 0;
	fz_devs[DEV_GADGET].addr = fz_devs[DEV_GADGET].addr < 4 ? 4 :
				   fz_devs[DEV_GADGET].addr + 1;
	fs_node(fz_devs[DEV_GADGET].addr);
	fz_dev.config = fz_dev.flags & F_UNCONFIGURED ? 0 : 1;
	fs_sync_config();
	memset(fz_dev.alt, 0, sizeof(fz_dev.alt));
	for (i = 0; i < NIFS; i++)
		fz_dev.bound[i] = (fz_dev.flags & F_DRIVER) &&
				  find_interface(i);
}

/* ---- the fake libusb: context, devices, descriptors ------------------- */

int libusb_init(libusb_context **ctx)
{
	if (ctx)
		*ctx = &fake_ctx;
	return 0;
}

void libusb_exit(libusb_context *ctx)
{
	(void)ctx;
}

const char *libusb_strerror(int code)
{
	switch (code) {
	case LIBUSB_SUCCESS: return "Success";
	case LIBUSB_ERROR_IO: return "Input/Output Error";
	case LIBUSB_ERROR_INVALID_PARAM: return "Invalid parameter";
	case LIBUSB_ERROR_ACCESS: return "Access denied (insufficient permissions)";
	case LIBUSB_ERROR_NO_DEVICE: return "No such device (it may have been disconnected)";
	case LIBUSB_ERROR_NOT_FOUND: return "Entity not found";
	case LIBUSB_ERROR_BUSY: return "Resource busy";
	case LIBUSB_ERROR_TIMEOUT: return "Operation timed out";
	case LIBUSB_ERROR_OVERFLOW: return "Overflow";
	case LIBUSB_ERROR_PIPE: return "Pipe error";
	case LIBUSB_ERROR_INTERRUPTED: return "System call interrupted (perhaps due to signal)";
	case LIBUSB_ERROR_NO_MEM: return "Insufficient memory";
	case LIBUSB_ERROR_NOT_SUPPORTED: return "Operation not supported or unimplemented on this platform";
	default: return "Other error";
	}
}

const char *libusb_error_name(int code)
{
	return libusb_strerror(code);
}

ssize_t libusb_get_device_list(libusb_context *ctx, libusb_device ***list)
{
	libusb_device **l = calloc(NDEVS + 1, sizeof(*l));
	int i;

	if (ctx != &fake_ctx)
		fz_fail("libusb", "libusb_get_device_list with context %p", (void *)ctx);
	if (!l)
		return LIBUSB_ERROR_NO_MEM;
	for (i = 0; i < NDEVS; i++)
		l[i] = libusb_ref_device(&fz_devs[i]);
	*list = l;
	return NDEVS;
}

void libusb_free_device_list(libusb_device **list, int unref)
{
	int i;

	if (!list)
		return;
	for (i = 0; unref && list[i]; i++)
		libusb_unref_device(list[i]);
	free(list);
}

libusb_device *libusb_ref_device(libusb_device *d)
{
	d->refs++;
	return d;
}

void libusb_unref_device(libusb_device *d)
{
	if (!d)
		return;
	if (d->refs <= 1)	/* the context's own reference is never dropped */
		fz_fail("libusb", "libusb_unref_device of bus %u addr %u: more "
		     "unrefs than refs", d->bus, d->addr);
	d->refs--;
}

uint8_t libusb_get_bus_number(libusb_device *d)
{
	return d->bus;
}

uint8_t libusb_get_device_address(libusb_device *d)
{
	return d->addr;
}

uint8_t libusb_get_port_number(libusb_device *d)
{
	return d->nports ? d->ports[d->nports - 1] : 0;
}

int libusb_get_port_numbers(libusb_device *d, uint8_t *ports, int len)
{
	if (len < d->nports)
		return LIBUSB_ERROR_OVERFLOW;
	memcpy(ports, d->ports, d->nports);
	return d->nports;
}

libusb_device *libusb_get_parent(libusb_device *d)
{
	return d->kind == DEV_ROOT_HUB ? NULL : &fz_devs[DEV_ROOT_HUB];
}

int libusb_get_device_speed(libusb_device *d)
{
	(void)d;
	return LIBUSB_SPEED_HIGH;
}

int libusb_get_device_descriptor(libusb_device *d,
				 struct libusb_device_descriptor *dd)
{
	const uint8_t *b = gadget_dev_desc;

	memset(dd, 0, sizeof(*dd));
	dd->bLength = b[0];
	dd->bDescriptorType = b[1];
	dd->bcdUSB = 0x0200;
	dd->bMaxPacketSize0 = b[7];
	dd->bNumConfigurations = d->kind == DEV_GADGET ? b[17] : 1;
	if (d->kind == DEV_GADGET) {
		dd->idVendor = 0x1d6b;
		dd->idProduct = 0x0104;
		dd->bcdDevice = 0x0100;
	} else {
		dd->bDeviceClass = LIBUSB_CLASS_HUB;
		dd->idVendor = 0x1d6b;
		dd->idProduct = 0x0002;
	}
	return 0;
}

static int copy_config(const struct libusb_config_descriptor *src,
		       struct libusb_config_descriptor **cfg)
{
	struct libusb_config_descriptor *c = malloc(sizeof(*c));

	if (!c)
		return LIBUSB_ERROR_NO_MEM;
	*c = *src;
	*cfg = c;
	return 0;
}

int libusb_get_active_config_descriptor(libusb_device *d,
					struct libusb_config_descriptor **cfg)
{
	if (d->kind != DEV_GADGET)
		return copy_config(&hub_config, cfg);
	if (!active_config())
		return LIBUSB_ERROR_NOT_FOUND;
	return copy_config(active_config(), cfg);
}

int libusb_get_config_descriptor(libusb_device *d, uint8_t index,
				 struct libusb_config_descriptor **cfg)
{
	if (d->kind != DEV_GADGET)
		return index ? LIBUSB_ERROR_NOT_FOUND : copy_config(&hub_config, cfg);
	if (index >= 2)
		return LIBUSB_ERROR_NOT_FOUND;
	return copy_config(&gadget_configs[index], cfg);
}

int libusb_get_config_descriptor_by_value(libusb_device *d, uint8_t value,
					  struct libusb_config_descriptor **cfg)
{
	if (d->kind != DEV_GADGET || value < 1 || value > 2)
		return LIBUSB_ERROR_NOT_FOUND;
	return copy_config(&gadget_configs[value - 1], cfg);
}

void libusb_free_config_descriptor(struct libusb_config_descriptor *cfg)
{
	free(cfg);
}

const struct libusb_pollfd **libusb_get_pollfds(libusb_context *ctx)
{
	(void)ctx;
	return calloc(1, sizeof(struct libusb_pollfd *));
}

void libusb_free_pollfds(const struct libusb_pollfd **fds)
{
	free((void *)fds);
}

/* ---- the fake libusb: handles and device requests --------------------- */

int libusb_open(libusb_device *d, libusb_device_handle **h)
{
	if (d->kind != DEV_GADGET || (fz_dev.flags & F_OPEN_FAIL))
		return LIBUSB_ERROR_ACCESS;
	if (fz_dev.gone)
		return LIBUSB_ERROR_NO_DEVICE;
	*h = calloc(1, sizeof(**h));
	if (!*h)
		return LIBUSB_ERROR_NO_MEM;
	(*h)->dev = libusb_ref_device(d);
	(*h)->fd = -1;
	(*h)->gen = fz_dev.gen;
	fz_dev.handles++;
	return 0;
}

/* p2pusb opens the usbfs node itself; the descriptor must stay open until
 * libusb_close (libusb does not close it). */
int libusb_wrap_sys_device(libusb_context *ctx, intptr_t fd,
			   libusb_device_handle **h)
{
	struct stat st;

	if (ctx != &fake_ctx)
		fz_fail("libusb", "libusb_wrap_sys_device with context %p",
			(void *)ctx);
	if (fstat((int)fd, &st) < 0 || st.st_ino != fz_node.st_ino ||
	    st.st_dev != fz_node.st_dev)
		fz_fail("libusb", "libusb_wrap_sys_device of descriptor %ld, "
			"not the device's usbfs node", (long)fd);
	if (fz_dev.flags & F_WRAP_FAIL)
		return LIBUSB_ERROR_IO;
	if (fz_dev.gone)
		return LIBUSB_ERROR_NO_DEVICE;
	*h = calloc(1, sizeof(**h));
	if (!*h)
		return LIBUSB_ERROR_NO_MEM;
	(*h)->dev = libusb_ref_device(&fz_devs[DEV_GADGET]);
	(*h)->fd = (int)fd;
	(*h)->node = st;
	(*h)->gen = fz_dev.gen;
	if (fz_nwrapped < MAX_WRAPPED) {
		fz_wrapped[fz_nwrapped].fd = (int)fd;
		fz_wrapped[fz_nwrapped++].node = st;
	}
	fz_dev.opened = 1;
	fz_dev.last_open = *h;
	fz_dev.open_reset = 0;
	fz_dev.handles++;
	return 0;
}

int libusb_set_option(libusb_context *ctx, enum libusb_option option, ...)
{
	(void)ctx;
	(void)option;
	return 0;
}

libusb_device *libusb_get_device(libusb_device_handle *h)
{
	return h->dev;
}

static int bad_interface(int i)
{
	return i < 0 || i >= 32;	/* USB_MAXINTERFACES */
}

/* usbfs's answer before it looks at what interface I is bound to. */
static int interface_error(const libusb_device_handle *h, int i)
{
	if (bad_interface(i))
		return LIBUSB_ERROR_INVALID_PARAM;
	if (h_gone(h))
		return LIBUSB_ERROR_NO_DEVICE;
	if (!find_interface(i))
		return LIBUSB_ERROR_NOT_FOUND;
	return 0;
}

int libusb_kernel_driver_active(libusb_device_handle *h, int i)
{
	int rc = interface_error(h, i);

	return rc ? rc : fz_dev.bound[i];
}

int libusb_detach_kernel_driver(libusb_device_handle *h, int i)
{
	int rc = interface_error(h, i);

	if (rc)
		return rc;
	if (!fz_dev.bound[i])
		return LIBUSB_ERROR_NOT_FOUND;
	fz_dev.bound[i] = 0;
	return 0;
}

/* USBDEVFS_CONNECT: the kernel probes drivers; 0 even when none matches. */
int libusb_attach_kernel_driver(libusb_device_handle *h, int i)
{
	int rc = interface_error(h, i);

	if (rc)
		return rc;
	if ((fz_dev.claimed >> i & 1) || fz_dev.bound[i])
		return LIBUSB_ERROR_BUSY;
	if (fz_dev.flags & F_DRIVER)
		fz_dev.bound[i] = 1;
	return 0;
}

int libusb_claim_interface(libusb_device_handle *h, int i)
{
	if (bad_interface(i))
		return LIBUSB_ERROR_INVALID_PARAM;
	if (h->claimed >> i & 1)
		return 0;
	if (h_gone(h))
		return LIBUSB_ERROR_NO_DEVICE;
	if (!find_interface(i))
		return LIBUSB_ERROR_NOT_FOUND;
	if (fz_dev.bound[i] || (fz_dev.claimed >> i & 1) ||
	    (fz_dev.flags & F_CLAIM_FAIL))
		return LIBUSB_ERROR_BUSY;
	h->claimed |= 1u << i;
	fz_dev.claimed |= 1u << i;
	return 0;
}

/* Unbinding usbfs kills the interface's URBs and resets it to altsetting 0. */
static void fz_release(libusb_device_handle *h, int i)
{
	kill_where(on_interface, i, LIBUSB_TRANSFER_COMPLETED);
	if (i < NIFS)
		fz_dev.alt[i] = 0;
	h->claimed &= ~(1u << i);
	fz_dev.claimed &= ~(1u << i);
}

int libusb_release_interface(libusb_device_handle *h, int i)
{
	if (bad_interface(i))
		return LIBUSB_ERROR_INVALID_PARAM;
	if (!(h->claimed >> i & 1))
		return LIBUSB_ERROR_NOT_FOUND;
	if (h_gone(h))
		return LIBUSB_ERROR_NO_DEVICE;
	fz_release(h, i);
	return 0;
}

int libusb_set_interface_alt_setting(libusb_device_handle *h, int i, int alt)
{
	if (bad_interface(i) || alt < 0 || alt > 255)
		return LIBUSB_ERROR_INVALID_PARAM;
	if (!(h->claimed >> i & 1))
		return LIBUSB_ERROR_NOT_FOUND;
	if (h_gone(h))
		return LIBUSB_ERROR_NO_DEVICE;
	if (!find_alt(i, alt))
		return LIBUSB_ERROR_NOT_FOUND;
	kill_where(on_interface, i, LIBUSB_TRANSFER_COMPLETED);
	fz_dev.alt[i] = (uint8_t)alt;
	return 0;
}

int libusb_get_configuration(libusb_device_handle *h, int *config)
{
	if (h_gone(h))
		return LIBUSB_ERROR_NO_DEVICE;
	*config = fz_dev.config;
	return 0;
}

/* usbfs refuses while any interface is claimed, by anyone (proc_setconfig). */
int libusb_set_configuration(libusb_device_handle *h, int value)
{
	int i;

	if (value < -1 || value > 255)
		return LIBUSB_ERROR_INVALID_PARAM;
	if (h_gone(h))
		return LIBUSB_ERROR_NO_DEVICE;
	for (i = 0; i < NIFS; i++)
		if (find_interface(i) && (fz_dev.bound[i] || (fz_dev.claimed >> i & 1)))
			return LIBUSB_ERROR_BUSY;
	if (value == -1)
		value = 0;
	if (value > 2)
		return LIBUSB_ERROR_NOT_FOUND;
	kill_where(on_any_but_ep0, 0, LIBUSB_TRANSFER_COMPLETED);
	fz_dev.config = value;
	fs_sync_config();
	memset(fz_dev.alt, 0, sizeof(fz_dev.alt));
	for (i = 0; i < NIFS; i++)	/* the kernel probes the new interfaces */
		fz_dev.bound[i] = (fz_dev.flags & F_DRIVER) && find_interface(i);
	return 0;
}

/*
 * USBDEVFS_CLEAR_HALT finds the endpoint among the interfaces' (ENOENT
 * for endpoint 0).  A request for endpoint 0's halt is the device's to
 * answer, through an ordinary control transfer.
 */
int libusb_clear_halt(libusb_device_handle *h, unsigned char ep)
{
	int ifnum;

	if ((ep & 0x0f) == 0)
		fz_fail("ep0", "libusb_clear_halt of endpoint 0x%02x: usbfs "
			"says ENOENT; CLEAR_FEATURE(ENDPOINT_HALT) of endpoint "
			"0 goes to the device", ep);
	if (h_gone(h))
		return LIBUSB_ERROR_NO_DEVICE;
	if (!find_ep(ep, &ifnum))
		return LIBUSB_ERROR_NOT_FOUND;
	if (fz_dev.bound[ifnum])
		return LIBUSB_ERROR_OTHER;
	return 0;
}

/*
 * Every URB dies (ep0 too); libusb re-claims; altsettings are restored.
 * Armed by the control bytes, a reset fails (LIBUSB_ERROR_OTHER, libusb's
 * "reset failed"), or the kernel enumerates the device anew after it
 * (ENODEV: LIBUSB_ERROR_NOT_FOUND, the handle is stale).
 */
int libusb_reset_device(libusb_device_handle *h)
{
	if (h_gone(h))
		return LIBUSB_ERROR_NO_DEVICE;
	if (fz_dev.reset_fail > 0) {
		fz_dev.reset_fail--;
		fz_dev.reset_failures++;
		return LIBUSB_ERROR_OTHER;
	}
	if (fz_dev.reenum > 0) {
		fz_dev.reenum--;
		fz_reenumerate();
		return LIBUSB_ERROR_NOT_FOUND;
	}
	kill_where(on_any, 0, LIBUSB_TRANSFER_COMPLETED);
	if (h == fz_dev.last_open)
		fz_dev.open_reset = 1;	/* the session's is clean */
	return 0;
}

int libusb_set_auto_detach_kernel_driver(libusb_device_handle *h, int enable)
{
	(void)h;
	(void)enable;
	return 0;
}

void libusb_close(libusb_device_handle *h)
{
	struct fx *f;
	int i;

	if (!h)
		return;
	for (f = fz_dev.pending; f; f = f->next)
		if (xfer_of(f)->dev_handle == h)
			fz_fail("libusb", "libusb_close with a transfer in flight "
			     "(endpoint 0x%02x)", xfer_of(f)->endpoint);
	if (h->fd >= 0) {
		struct stat st;

		if (fstat(h->fd, &st) < 0 || st.st_ino != h->node.st_ino ||
		    st.st_dev != h->node.st_dev)
			fz_fail("libusb", "usbfs descriptor %d closed before "
				"libusb_close", h->fd);
	}
	if (h->mapped)
		fz_fail("libusb", "libusb_close with %d mapped buffers left",
			h->mapped);
	for (i = 0; i < 32; i++)	/* a stale handle's went with it */
		if ((h->claimed >> i & 1) && !h_gone(h))
			fz_release(h, i);
	libusb_unref_device(h->dev);
	fz_dev.handles--;
	free(h);
}

/* ---- the fake libusb: transfers --------------------------------------- */

static volatile uint8_t fz_sink;

/* The kernel copies OUT data at submit: read it all, so ASan sees it. */
static void read_buffer(const uint8_t *p, size_t len)
{
	uint8_t x = 0;
	size_t i;

	for (i = 0; i < len; i++)
		x ^= p[i];
	fz_sink = x;
}

/* usbfs memory, as malloc: every odd call of a run fails, as on a kernel
 * without usbfs mmap, so both of p2pusb's buffer kinds are exercised. */
unsigned char *libusb_dev_mem_alloc(libusb_device_handle *h, size_t len)
{
	unsigned char *p;

	if (!h || len == 0 || len % 4096)
		fz_fail("libusb", "libusb_dev_mem_alloc of %zu bytes", len);
	if (h->mapped >= URB_SPARES)
		fz_fail("p2pusb", "more than %d buffers mapped for one device",
			URB_SPARES);
	if (fz_mem_calls++ % 2 || h_gone(h) || !(p = malloc(len)))
		return NULL;
	h->mapped++;
	return p;
}

int libusb_dev_mem_free(libusb_device_handle *h, unsigned char *buf,
			size_t len)
{
	if (!h || !buf || len == 0 || h->mapped == 0)
		fz_fail("libusb", "libusb_dev_mem_free of %zu bytes", len);
	h->mapped--;
	free(buf);
	return 0;
}

struct libusb_transfer *libusb_alloc_transfer(int iso_packets)
{
	struct fx *f;

	if (iso_packets < 0 || fz_alloc_fails(0))
		return NULL;
	f = calloc(1, FX_HDR + sizeof(struct libusb_transfer) +
		   (size_t)iso_packets *
		   sizeof(struct libusb_iso_packet_descriptor));
	if (!f)
		return NULL;
	f->npackets = iso_packets;
	fz_dev.transfers++;
	return xfer_of(f);	/* num_iso_packets stays 0, as in libusb */
}

void libusb_free_transfer(struct libusb_transfer *t)
{
	struct fx *f;

	if (!t)
		return;
	f = fx_of(t);
	if (f->inflight)
		fz_fail("libusb", "libusb_free_transfer of a transfer in flight "
		     "(endpoint 0x%02x)", t->endpoint);
	if ((t->flags & LIBUSB_TRANSFER_FREE_BUFFER) && t->buffer)
		free(t->buffer);
	fz_dev.transfers--;
	free(f);
}

static int submit_checks(struct libusb_transfer *t)
{
	const struct libusb_endpoint_descriptor *ep;
	int ifnum, type, i;
	size_t total = 0;

	if (t->length < 0)
		return LIBUSB_ERROR_INVALID_PARAM;
	if (t->type == LIBUSB_TRANSFER_TYPE_CONTROL) {
		struct libusb_control_setup *s;

		if (t->length < (int)LIBUSB_CONTROL_SETUP_SIZE)
			return LIBUSB_ERROR_INVALID_PARAM;
		s = (struct libusb_control_setup *)(void *)t->buffer;
		if (t->length - LIBUSB_CONTROL_SETUP_SIZE > 4096)
			return LIBUSB_ERROR_INVALID_PARAM;	/* usbfs */
		if (libusb_le16_to_cpu(s->wLength) >
		    t->length - LIBUSB_CONTROL_SETUP_SIZE)
			fz_fail("libusb", "control wLength %u beyond the %d-byte "
			     "buffer", libusb_le16_to_cpu(s->wLength),
			     t->length);
		read_buffer(t->buffer, s->bmRequestType & 0x80 ?
			    LIBUSB_CONTROL_SETUP_SIZE : (size_t)t->length);
		return 0;
	}
	ep = find_ep(t->endpoint, &ifnum);
	if (!ep)
		return LIBUSB_ERROR_IO;		/* usbfs: ENOENT */
	type = ep->bmAttributes & 3;
	if ((t->type == LIBUSB_TRANSFER_TYPE_BULK &&
	     type != BULK && type != INTR) ||
	    (t->type == LIBUSB_TRANSFER_TYPE_INTERRUPT && type != INTR) ||
	    (t->type == LIBUSB_TRANSFER_TYPE_ISOCHRONOUS && type != ISOC))
		return LIBUSB_ERROR_IO;		/* usbfs: EINVAL */
	if (fz_dev.bound[ifnum])
		return LIBUSB_ERROR_IO;		/* usbfs cannot claim: EBUSY */
	if (t->type == LIBUSB_TRANSFER_TYPE_ISOCHRONOUS) {
		if (t->num_iso_packets > fx_of(t)->npackets)
			fz_fail("libusb", "num_iso_packets %d but %d allocated",
			     t->num_iso_packets, fx_of(t)->npackets);
		if (t->num_iso_packets < 1)
			return LIBUSB_ERROR_INVALID_PARAM;
		for (i = 0; i < t->num_iso_packets; i++) {
			if (t->iso_packet_desc[i].length > MAX_ISO_PACKET)
				return LIBUSB_ERROR_INVALID_PARAM;
			total += t->iso_packet_desc[i].length;
		}
		if (total > (size_t)t->length)
			return LIBUSB_ERROR_INVALID_PARAM;
	} else {
		total = (size_t)t->length;
	}
	if (!(t->endpoint & 0x80))
		read_buffer(t->buffer, total);
	return 0;
}

int libusb_submit_transfer(struct libusb_transfer *t)
{
	struct fx *f = fx_of(t), **pp;
	int rc;

	if (f->inflight)
		return LIBUSB_ERROR_BUSY;
	if (!t->dev_handle || t->dev_handle->dev != &fz_devs[DEV_GADGET])
		fz_fail("libusb", "libusb_submit_transfer without a device handle");
	if (!t->callback)
		fz_fail("libusb", "libusb_submit_transfer without a callback");
	if (h_gone(t->dev_handle))
		return LIBUSB_ERROR_NO_DEVICE;
	rc = submit_checks(t);
	if (rc)
		return rc;
	if (fz_dev.usbfs_bytes + (size_t)t->length > USBFS_LIMIT)
		return LIBUSB_ERROR_NO_MEM;
	f->bytes = (size_t)t->length;
	fz_dev.usbfs_bytes += f->bytes;
	f->inflight = 1;
	f->cancelled = f->cancel_lost = f->killed = 0;
	f->next = NULL;
	for (pp = &fz_dev.pending; *pp; pp = &(*pp)->next)
		;
	*pp = f;
	return 0;
}

int libusb_cancel_transfer(struct libusb_transfer *t)
{
	struct fx *f = fx_of(t);
	int b;

	if (!f->inflight || f->cancelled || f->cancel_lost)
		return LIBUSB_ERROR_NOT_FOUND;
	if (h_gone(t->dev_handle))
		return LIBUSB_ERROR_NO_DEVICE;	/* already killed by unplug */
	b = fz_dev.force ? -1 : ctl_next();
	if (b >= 0 && (b & 0x80)) {
		f->cancel_lost = 1;	/* completed in the kernel already */
		return LIBUSB_ERROR_NOT_FOUND;
	}
	f->cancelled = 1;
	if (f->killed && f->kill_status == LIBUSB_TRANSFER_COMPLETED)
		f->kill_status = LIBUSB_TRANSFER_CANCELLED;
	return 0;
}

/* What a device answers: the device descriptor, or a counting pattern. */
static void fill_in(struct libusb_transfer *t, uint8_t *p, int len)
{
	const uint8_t *s = t->buffer;
	int i;

	if (t->type == LIBUSB_TRANSFER_TYPE_CONTROL && s[1] == 6 && s[3] == 1) {
		for (i = 0; i < len; i++)
			p[i] = i < 18 ? gadget_dev_desc[i] : 0;
		return;
	}
	for (i = 0; i < len; i++)
		p[i] = (uint8_t)(i * 7 + t->endpoint);
}

static void fz_complete(struct fx *f, enum libusb_transfer_status status,
		     int fate)
{
	struct libusb_transfer *t = xfer_of(f);
	int in = t->endpoint & 0x80, scale = fate < 0 ? 32 : fate >> 3;
	int killed = fate == FATE_KILLED;

	if (killed) {		/* no data, iso packets untouched */
		scale = 0;
		fate = FATE_SHORT;
	}
	struct fx **pp;

	for (pp = &fz_dev.pending; *pp != f; pp = &(*pp)->next)
		;
	*pp = f->next;
	f->inflight = 0;
	fz_dev.usbfs_bytes -= f->bytes;

	if (t->type == LIBUSB_TRANSFER_TYPE_CONTROL) {
		struct libusb_control_setup *s = (void *)t->buffer;
		int room = t->length - LIBUSB_CONTROL_SETUP_SIZE, n;

		in = s->bmRequestType & 0x80;
		n = status == LIBUSB_TRANSFER_COMPLETED && (fate < 0 ||
		    (fate & 7) != FATE_SHORT) ? room : room * scale / 32;
		if (status != LIBUSB_TRANSFER_COMPLETED &&
		    status != LIBUSB_TRANSFER_CANCELLED)
			n = 0;
		if (in)
			fill_in(t, t->buffer + LIBUSB_CONTROL_SETUP_SIZE, n);
		t->actual_length = n;
	} else if (t->type == LIBUSB_TRANSFER_TYPE_ISOCHRONOUS) {
		int i, pos = 0;

		t->actual_length = 0;	/* libusb leaves it 0 for iso */
		for (i = 0; status == LIBUSB_TRANSFER_COMPLETED && !killed &&
		     i < t->num_iso_packets; i++) {
			struct libusb_iso_packet_descriptor *p =
			    &t->iso_packet_desc[i];
			int bad = fate >= 0 && (fate >> 3 & 3) == 3 && (i & 1);

			p->status = bad ? LIBUSB_TRANSFER_ERROR :
					  LIBUSB_TRANSFER_COMPLETED;
			p->actual_length = bad ? 0 :
			    in && fate >= 0 && (fate & 7) == FATE_SHORT ?
			    p->length * (unsigned)(i + scale) % (p->length + 1) :
			    p->length;
			if (in)
				fill_in(t, t->buffer + pos, (int)p->actual_length);
			pos += (int)p->length;
		}
	} else {
		int n = (fate < 0 || (fate & 7) != FATE_SHORT) ? t->length :
			(int)((int64_t)t->length * scale / 32);

		if (t->length > (1 << 20) && n == t->length)
			n = 1 << 20;		/* keep the fuzzer fast */
		if (status != LIBUSB_TRANSFER_COMPLETED &&
		    status != LIBUSB_TRANSFER_CANCELLED &&
		    status != LIBUSB_TRANSFER_STALL)
			n = 0;
		if (status != LIBUSB_TRANSFER_COMPLETED && fate >= 0)
			n = n * (fate >> 3 & 3) / 4;
		if (in)
			fill_in(t, t->buffer, n);
		t->actual_length = n;
	}
	t->status = status;
	t->callback(t);		/* may free t */
}

static int pending_count(void)
{
	struct fx *f;
	int n = 0;

	for (f = fz_dev.pending; f; f = f->next)
		n++;
	return n;
}

/* A device runs its control requests one after the other: a later one
 * waits while one submitted before it is still with the device. */
static int behind_control(const struct fx *f)
{
	const struct libusb_transfer *t = xfer_of((struct fx *)f);
	const struct fx *e;

	if (t->type != LIBUSB_TRANSFER_TYPE_CONTROL)
		return 0;
	for (e = fz_dev.pending; e && e != f; e = e->next) {
		const struct libusb_transfer *et = xfer_of((struct fx *)e);

		if (et->type == LIBUSB_TRANSFER_TYPE_CONTROL &&
		    et->dev_handle == t->dev_handle && !e->cancelled &&
		    !e->killed)
			return 1;
	}
	return 0;
}

int libusb_handle_events_timeout_completed(libusb_context *ctx,
					   struct timeval *tv, int *completed)
{
	struct fx **snap, *f;
	int n, i;

	(void)tv;
	if (ctx != &fake_ctx)
		fz_fail("libusb", "handle_events with context %p", (void *)ctx);
	if (fz_dev.in_events)
		fz_fail("libusb", "libusb_handle_events called from a callback");
	if (completed && *completed)
		return 0;
	n = pending_count();
	if (n == 0)
		return 0;
	snap = malloc((size_t)n * sizeof(*snap));
	if (!snap)
		abort();
	for (i = 0, f = fz_dev.pending; f; f = f->next)
		snap[i++] = f;
	fz_dev.in_events = 1;
	for (i = 0; i < n; i++) {
		int fate;

		f = snap[i];
		if (!f->inflight)
			continue;	/* cannot happen: only we complete */
		if (f->killed) {
			fz_complete(f, f->kill_status, FATE_KILLED);
			continue;
		}
		if (behind_control(f) && !f->cancelled)
			continue;
		fate = fz_dev.force ? -1 : ctl_next();
		if (fate < 0 && fz_dev.hold && !f->cancelled && !f->cancel_lost)
			continue;
		if (fate < 0) {
			fz_complete(f, f->cancelled ? LIBUSB_TRANSFER_CANCELLED :
				 LIBUSB_TRANSFER_COMPLETED, -1);
			continue;
		}
		switch (fate & 7) {
		case FATE_PENDING:
			break;
		case FATE_LATE:
			if (f->cancelled)
				fz_complete(f, LIBUSB_TRANSFER_COMPLETED, fate);
			break;
		case FATE_FULL:
		case FATE_SHORT:
			fz_complete(f, f->cancelled ? LIBUSB_TRANSFER_CANCELLED :
				 LIBUSB_TRANSFER_COMPLETED, fate);
			break;
		case FATE_STALL:
			fz_complete(f, LIBUSB_TRANSFER_STALL, fate);
			break;
		case FATE_CANCEL:
			fz_complete(f, f->cancelled ? LIBUSB_TRANSFER_CANCELLED :
				 LIBUSB_TRANSFER_COMPLETED, fate);
			break;
		case FATE_ERROR: {
			static const enum libusb_transfer_status e[4] = {
				LIBUSB_TRANSFER_ERROR, LIBUSB_TRANSFER_TIMED_OUT,
				LIBUSB_TRANSFER_OVERFLOW, LIBUSB_TRANSFER_ERROR,
			};
			fz_complete(f, e[fate >> 3 & 3], fate);
			break;
		}
		case FATE_UNPLUG:
			fz_unplug();
			fz_complete(f, LIBUSB_TRANSFER_NO_DEVICE, fate);
			break;
		}
	}
	fz_dev.in_events = 0;
	free(snap);
	if (completed)
		*completed = 1;
	return 0;
}

int libusb_handle_events_timeout(libusb_context *ctx, struct timeval *tv)
{
	return libusb_handle_events_timeout_completed(ctx, tv, NULL);
}

int libusb_handle_events(libusb_context *ctx)
{
	return libusb_handle_events_timeout_completed(ctx, NULL, NULL);
}

int libusb_handle_events_completed(libusb_context *ctx, int *completed)
{
	return libusb_handle_events_timeout_completed(ctx, NULL, completed);
}

int libusb_get_next_timeout(libusb_context *ctx, struct timeval *tv)
{
	(void)ctx;
	(void)tv;
	return 0;
}

/* The fake has no descriptors to poll: nothing is ever added. */
void libusb_set_pollfd_notifiers(libusb_context *ctx,
				 libusb_pollfd_added_cb added_cb,
				 libusb_pollfd_removed_cb removed_cb,
				 void *user_data)
{
	(void)ctx;
	(void)added_cb;
	(void)removed_cb;
	(void)user_data;
}

int libusb_pollfds_handle_timeouts(libusb_context *ctx)
{
	(void)ctx;
	return 1;
}

void libusb_interrupt_event_handler(libusb_context *ctx)
{
	(void)ctx;
}

int libusb_has_capability(uint32_t capability)
{
	return capability == LIBUSB_CAP_HAS_CAPABILITY;
}

const struct libusb_version *libusb_get_version(void)
{
	static const struct libusb_version v = { 1, 0, 26, 0, "", "fake" };

	return &v;
}

int libusb_get_max_packet_size(libusb_device *d, unsigned char endpoint)
{
	const struct libusb_endpoint_descriptor *ep = find_ep(endpoint, NULL);

	(void)d;
	return ep ? ep->wMaxPacketSize & 0x7ff : LIBUSB_ERROR_NOT_FOUND;
}

int libusb_get_max_iso_packet_size(libusb_device *d, unsigned char endpoint)
{
	const struct libusb_endpoint_descriptor *ep = find_ep(endpoint, NULL);

	(void)d;
	return ep ? (ep->wMaxPacketSize & 0x7ff) *
		    (1 + (ep->wMaxPacketSize >> 11 & 3)) :
		    LIBUSB_ERROR_NOT_FOUND;
}

/* Synchronous requests: the device answers a pattern, or the descriptor. */
int libusb_control_transfer(libusb_device_handle *h, uint8_t request_type,
			    uint8_t request, uint16_t value, uint16_t index,
			    unsigned char *data, uint16_t length,
			    unsigned int timeout)
{
	uint16_t i;

	(void)index;
	(void)timeout;
	if (h_gone(h))
		return LIBUSB_ERROR_NO_DEVICE;
	if (!(request_type & 0x80)) {
		read_buffer(data, length);
		return length;
	}
	for (i = 0; i < length; i++)
		data[i] = request == 6 && value >> 8 == 1 && i < 18 ?
			  gadget_dev_desc[i] : (uint8_t)i;
	return length;
}

int libusb_get_string_descriptor_ascii(libusb_device_handle *h,
				       uint8_t index, unsigned char *data,
				       int length)
{
	if (h_gone(h))
		return LIBUSB_ERROR_NO_DEVICE;
	if (length < 1)
		return LIBUSB_ERROR_INVALID_PARAM;
	return snprintf((char *)data, (size_t)length, "fake %u", index) >=
	       length ? length - 1 : (int)strlen((char *)data);
}

/* ---- the client's view: what it sent, and what came back -------------- */

#define DEVID_1_1	(1u << 16 | 2)
#define DEVID_REENUM	(1u << 16 | 4)	/* 1-1 after a STEP_REENUM */

struct mcmd {
	uint32_t seq;
	int unlink;
	uint32_t victim;	/* CMD_UNLINK */
	int early;		/* ... sent before its victim's CMD_SUBMIT,
				 * which has not come (yet) */
	uint32_t dir, ep;	/* CMD_SUBMIT */
	int32_t len, np;
	int answered;		/* RET_SUBMIT seen, or given back by unlink */
};

/* vhci_hcd's seqnums count up, modulo 2^32: is A newer than B? */
static int seq_newer(uint32_t a, uint32_t b)
{
	return (int32_t)(a - b) > 0;
}

enum { HS_NONE, HS_DEVLIST, HS_IMPORT, HS_BAD };

static struct {
	struct mcmd *cmds;
	int n, cap;
	int handshake;
	char busid[SYSFS_BUS_ID_SIZE + 1];
	int vhci_like;		/* unique seqnums, unlinks of known URBs */
	int complete;		/* parsed to the end, no partial message */
} fz_model;

static struct mcmd *model_add(void)
{
	if (fz_model.n == fz_model.cap) {
		fz_model.cap = fz_model.cap ? 2 * fz_model.cap : 64;
		fz_model.cmds = realloc(fz_model.cmds, (size_t)fz_model.cap *
				     sizeof(*fz_model.cmds));
		if (!fz_model.cmds)
			abort();
	}
	memset(&fz_model.cmds[fz_model.n], 0, sizeof(fz_model.cmds[0]));
	return &fz_model.cmds[fz_model.n++];
}

static struct mcmd *model_find(uint32_t seq, int unlink, int answered)
{
	int i;

	for (i = 0; i < fz_model.n; i++)
		if (fz_model.cmds[i].seq == seq && fz_model.cmds[i].unlink == unlink &&
		    fz_model.cmds[i].answered == answered)
			return &fz_model.cmds[i];
	return NULL;
}

/*
 * Frames the client's bytes as vhci_hcd would have written them.  It stops
 * where the server must end the session (bad version, bad command), so
 * that what it records is what the server may answer.
 *
 * vhci_hcd numbers its commands with one counter, and a device's submits
 * leave in that order; its unlinks leave from another queue and can
 * overtake the CMD_SUBMIT they name (Linux 6.12).  So an unlink of a
 * seqnum newer than every submit so far is vhci-like: its URB is on the
 * way.  It is answered RET_UNLINK -ECONNRESET when that submit comes (and
 * the URB gets no RET_SUBMIT), or RET_UNLINK 0 when a later submit passes
 * it (the URB will never come); until then it need not be answered.  The
 * server holds EARLY_UNLINKS of them: more is not vhci-like.
 */
static void model_parse(const uint8_t *w, size_t n)
{
	size_t pos = 0;
	uint32_t newest = 0;	/* the newest CMD_SUBMIT so far, */
	int submitted = 0;	/*   if any */
	int nearly = 0;		/* unlinks early, victim not come yet */
	int i;

	memset(&fz_model, 0, sizeof(fz_model));
	fz_model.vhci_like = 1;
	if (n < OP_COMMON_SIZE)
		return;
	if (get16(w) != USBIP_VERSION) {
		fz_model.handshake = HS_BAD;
		return;
	}
	if (get16(w + 2) == OP_REQ_DEVLIST) {
		fz_model.handshake = HS_DEVLIST;
		return;
	}
	if (get16(w + 2) != OP_REQ_IMPORT || n < OP_REQ_IMPORT_SIZE) {
		fz_model.handshake = HS_BAD;
		return;
	}
	fz_model.handshake = HS_IMPORT;
	memcpy(fz_model.busid, w + OP_COMMON_SIZE, SYSFS_BUS_ID_SIZE);
	pos = OP_REQ_IMPORT_SIZE;
	while (pos + USBIP_HEADER_SIZE <= n) {
		const uint8_t *h = w + pos;
		struct mcmd *m;
		size_t extra = 0;
		uint32_t cmd = get32(h), seq = get32(h + 4);

		if ((cmd != USBIP_CMD_SUBMIT && cmd != USBIP_CMD_UNLINK) ||
		    (get32(h + 8) != DEVID_1_1 &&
		     get32(h + 8) != DEVID_REENUM))
			return;
		if (cmd == USBIP_CMD_SUBMIT) {
			int32_t len = (int32_t)get32(h + 24);
			int32_t np = (int32_t)get32(h + 32);

			if (get32(h + 12) > 1 || get32(h + 16) > 15 || len < 0 ||
			    len > URB_LENGTH_MAX || np > ISO_PACKETS_MAX)
				return;
			if (np < 0)
				np = 0;
			if (get32(h + 12) == USBIP_DIR_OUT)
				extra += (size_t)len;
			if (pos + USBIP_HEADER_SIZE + extra +
			    (size_t)np * USBIP_ISO_DESC_SIZE > n)
				return;
			/* usb_submit_urb() zeroes every packet's
			 * actual_length before vhci_hcd sends it */
			for (i = 0; i < np; i++)
				if (get32(h + USBIP_HEADER_SIZE + extra +
					  (size_t)i * USBIP_ISO_DESC_SIZE + 8))
					fz_model.vhci_like = 0;
			extra += (size_t)np * USBIP_ISO_DESC_SIZE;
		}
		for (i = 0; i < fz_model.n; i++)
			if (fz_model.cmds[i].seq == seq)
				fz_model.vhci_like = 0;
		m = model_add();
		m->seq = seq;
		if (cmd == USBIP_CMD_UNLINK) {
			struct mcmd *v = NULL;

			m->unlink = 1;
			m->victim = get32(h + 20);
			for (i = 0; i < fz_model.n - 1; i++)
				if (fz_model.cmds[i].seq == m->victim)
					v = &fz_model.cmds[i];
			/* vhci unlinks only its own URBs, once each: one sent
			 * already, or one on its way (older than the unlink) */
			if (v && v->unlink)
				fz_model.vhci_like = 0;
			if (!v) {
				m->early = 1;
				if ((submitted &&
				     !seq_newer(m->victim, newest)) ||
				    !seq_newer(seq, m->victim))
					fz_model.vhci_like = 0;
				if (++nearly > EARLY_UNLINKS)
					fz_model.vhci_like = 0;
			}
			for (i = 0; i < fz_model.n - 1; i++)
				if (fz_model.cmds[i].unlink &&
				    fz_model.cmds[i].victim == m->victim)
					fz_model.vhci_like = 0;
		} else {
			/* its submits go in order; it answers early unlinks */
			if (submitted && !seq_newer(seq, newest))
				fz_model.vhci_like = 0;
			newest = seq;
			submitted = 1;
			for (i = 0; i < fz_model.n - 1; i++) {
				struct mcmd *e = &fz_model.cmds[i];

				if (e->unlink && e->early &&
				    (e->victim == seq ||
				     seq_newer(seq, e->victim))) {
					e->early = 0;
					nearly--;
				}
			}
			m->dir = get32(h + 12);
			m->ep = get32(h + 16);
			m->len = (int32_t)get32(h + 24);
			m->np = (int32_t)get32(h + 32) < 0 ? 0 :
				(int32_t)get32(h + 32);
		}
		pos += USBIP_HEADER_SIZE + extra;
	}
	fz_model.complete = pos == n;
}

static int fz_peer = -1;		/* the client's end of the socketpair */
static int fz_peer2 = -1;		/* a second client's, if any */
static struct conn *fz_conn1;		/* the first client's connection */

/* The reply stream, parsed as it arrives. */
enum { OUT_HS, OUT_DEVLIST, OUT_URBS, OUT_DONE, OUT_LOST };

static struct {
	uint8_t *buf;
	size_t len, cap;
	int state;
	int imported;
} fz_out;

static void out_append(const uint8_t *p, size_t n)
{
	if (fz_out.len + n > fz_out.cap) {
		fz_out.cap = (fz_out.len + n) * 2;
		fz_out.buf = realloc(fz_out.buf, fz_out.cap);
		if (!fz_out.buf)
			abort();
	}
	memcpy(fz_out.buf + fz_out.len, p, n);
	fz_out.len += n;
}

static void check_record(const uint8_t *p)
{
	struct usbip_usb_device d;
	/* the configuration when the record was made: the initial one */
	const struct libusb_config_descriptor *cfg =
	    fz_dev.flags & F_UNCONFIGURED ? NULL : &gadget_configs[0];

	unpack_device(p, &d);
	if (strcmp(d.busid, "1-1") != 0 || d.busnum != 1 ||
	    d.devnum != fz_devs[DEV_GADGET].addr ||
	    d.speed != USB_SPEED_HIGH || d.idVendor != 0x1d6b ||
	    d.idProduct != 0x0104 || d.bNumConfigurations != 2 ||
	    d.bConfigurationValue != (cfg ? cfg->bConfigurationValue : 0) ||
	    d.bNumInterfaces != (cfg ? cfg->bNumInterfaces : 0))
		fz_fail("wire", "device record: busid %s bus %u dev %u speed %u "
		     "%04x:%04x config %u of %u, %u interfaces", d.busid,
		     d.busnum, d.devnum, d.speed, d.idVendor, d.idProduct,
		     d.bConfigurationValue, d.bNumConfigurations,
		     d.bNumInterfaces);
}

/*
 * With repeated seqnums a reply cannot be matched to its URB; it can still
 * be framed if every URB with that seqnum has the same direction and
 * packet count.  Returns one of them with the largest length, or NULL.
 */
static struct mcmd *frame_of(uint32_t seq)
{
	struct mcmd *m = NULL;
	int i;

	for (i = 0; i < fz_model.n; i++) {
		struct mcmd *c = &fz_model.cmds[i];

		if (c->unlink || c->seq != seq)
			continue;
		if (m && (m->dir != c->dir || m->np != c->np))
			return NULL;
		if (!m || c->len > m->len)
			m = c;
	}
	return m;
}

static int ep_is_iso(uint32_t dir, uint32_t ep)
{
	const struct libusb_endpoint_descriptor *e =
	    find_ep((uint8_t)(ep | (dir ? 0x80 : 0)), NULL);

	return e && (e->bmAttributes & 3) == ISOC;
}

/*
 * A device answers the control requests on endpoint 0 in the order they
 * were made (the host controller runs them one at a time), and drivers
 * count on that: the RET_SUBMIT of one comes after those of every earlier
 * one not given back by an unlink.
 */
static void check_order(const struct mcmd *m)
{
	const struct mcmd *e;

	for (e = fz_model.cmds; e < m; e++)
		if (!e->unlink && e->ep == 0 && !e->answered)
			fz_fail("order", "RET_SUBMIT seq %u (endpoint 0) "
				"before that of seq %u, sent earlier: control "
				"requests complete in order", m->seq, e->seq);
}

/* One RET_SUBMIT or RET_UNLINK; returns its size, 0 if not all here. */
static size_t parse_ret(const uint8_t *p, size_t avail)
{
	uint32_t cmd = get32(p), seq = get32(p + 4);
	int32_t status = (int32_t)get32(p + 20);

	if (cmd == USBIP_RET_UNLINK) {
		struct mcmd *u = model_find(seq, 1, 0), *v;

		if (!fz_model.vhci_like)
			return USBIP_HEADER_SIZE;
		if (!u)
			fz_fail("answer", "RET_UNLINK seq %u: no such unlink %s", seq,
			     model_find(seq, 1, 1) ? "(answered twice)" :
			     "pending");
		u->answered = 1;
		/* vhci gives the URB back on any RET_UNLINK that finds it */
		v = model_find(u->victim, 0, 0);
		if (v)
			v->answered = 2;
		if (status != 0 && status != -ECONNRESET)
			fz_fail("answer", "RET_UNLINK seq %u status %d", seq, status);
		if (status == -ECONNRESET && !v)
			fz_fail("answer", "RET_UNLINK seq %u says seq %u was "
			     "cancelled, but it was answered already (or never "
			     "sent)", seq, u->victim);
		return USBIP_HEADER_SIZE;
	}
	if (cmd == USBIP_RET_SUBMIT) {
		int32_t actual = (int32_t)get32(p + 24);
		int32_t np = (int32_t)get32(p + 32);
		struct mcmd *m = model_find(seq, 0, 0);
		size_t need = USBIP_HEADER_SIZE;
		uint32_t sum = 0;
		int i;

		if (!fz_model.vhci_like) {
			m = frame_of(seq);	/* seqnums repeat: framing only */
			if (!m) {
				fz_out.state = OUT_LOST;
				return USBIP_HEADER_SIZE;
			}
		} else if (!m) {
			struct mcmd *done = model_find(seq, 0, 1);

			if (!done)
				done = model_find(seq, 0, 2);
			if (done)
				fz_fail("answer", "RET_SUBMIT seq %u after the URB "
				     "was %s: vhci_hcd drops the device", seq,
				     done->answered == 2 ?
				     "given back by RET_UNLINK" : "answered");
			fz_fail("answer", "RET_SUBMIT seq %u: no such URB", seq);
		}
		if (actual < 0 || actual > m->len)
			fz_fail("wire", "RET_SUBMIT seq %u actual_length %d of %d",
			     seq, actual, m->len);
		if (np != m->np)
			fz_fail("wire", "RET_SUBMIT seq %u number_of_packets %d, "
			     "sent %d", seq, np, m->np);
		if (m->dir == USBIP_DIR_IN && actual > 0)
			need += (size_t)actual;
		if (m->np > 0)
			need += (size_t)m->np * USBIP_ISO_DESC_SIZE;
		if (avail < need)
			return 0;
		for (i = 0; i < m->np; i++) {
			const uint8_t *d = p + need -
			    (size_t)(m->np - i) * USBIP_ISO_DESC_SIZE;

			sum += get32(d + 8);
			if (get32(d + 8) > (uint32_t)m->len &&
			    ep_is_iso(m->dir, m->ep) && fz_model.vhci_like)
				fz_fail("iso", "RET_SUBMIT seq %u packet %d "
				     "actual_length %u > buffer %d", seq, i,
				     get32(d + 8), m->len);
		}
		if (m->np > 0 && sum != (uint32_t)actual &&
		    ep_is_iso(m->dir, m->ep) && fz_model.vhci_like)
			fz_fail("iso", "RET_SUBMIT seq %u (status %d): iso "
			     "actual_lengths add up to %u, actual_length is %d: "
			     "vhci_hcd drops the device", seq, status, sum, actual);
		if (m->ep == 0 && fz_model.vhci_like)
			check_order(m);
		if (!m->answered)
			m->answered = 1;
		return need;
	}
	fz_fail("wire", "reply with command %u", cmd);
	return 0;
}

static void out_parse(void)
{
	size_t pos = 0, n;

	while (fz_out.buf && pos < fz_out.len && fz_out.state != OUT_LOST) {
		const uint8_t *p = fz_out.buf + pos;
		size_t avail = fz_out.len - pos;

		if (fz_out.state == OUT_DONE)
			fz_fail("wire", "%zu bytes after the last reply", avail);
		if (fz_out.state == OUT_HS) {
			uint16_t code;

			if (avail < OP_COMMON_SIZE)
				break;
			code = get16(p + 2);
			if (get16(p) != USBIP_VERSION)
				fz_fail("wire", "reply version %04x", get16(p));
			if (fz_model.handshake == HS_DEVLIST && code == OP_REP_DEVLIST) {
				if (get32(p + 4) != ST_OK)
					fz_fail("wire", "OP_REP_DEVLIST status %u",
					     get32(p + 4));
				fz_out.state = OUT_DEVLIST;
				continue;
			}
			if (fz_model.handshake != HS_IMPORT || code != OP_REP_IMPORT)
				fz_fail("wire", "reply op code %04x", code);
			if (get32(p + 4) != ST_OK) {
				/* refused: allowed where import_device()
				 * cannot get a clean device */
				int want_ok = usb && !fz_dev.gone &&
				    fz_peer2 < 0 && !(fz_dev.flags &
				    (F_OPEN_FAIL | F_CLAIM_FAIL | F_WRAP_FAIL)) &&
				    strcmp(fz_model.busid, "1-1") == 0 &&
				    !fz_dev.reset_failures &&
				    fz_dev.reenumerations < 2;

				if (want_ok)
					fz_fail("wire", "import of 1-1 refused: "
					     "status %u", get32(p + 4));
				pos += OP_COMMON_SIZE;
				fz_out.state = OUT_DONE;
				continue;
			}
			if (avail < OP_REP_IMPORT_SIZE)
				break;
			if (strcmp(fz_model.busid, "1-1") != 0)
				fz_fail("wire", "import of \"%.32s\" accepted",
				     fz_model.busid);
			/* a session starts from a reset device */
			if (!fz_dev.open_reset)
				fz_fail("reset", "import of 1-1 accepted, but "
					"the device p2pusb opened last was not "
					"reset (%d resets failed, %d "
					"re-enumerated it)",
					fz_dev.reset_failures,
					fz_dev.reenumerations);
			check_record(p + OP_COMMON_SIZE);
			fz_out.imported = 1;
			pos += OP_REP_IMPORT_SIZE;
			fz_out.state = OUT_URBS;
			continue;
		}
		if (fz_out.state == OUT_DEVLIST) {
			uint32_t ndev, i;
			size_t need = OP_COMMON_SIZE + 4;

			if (avail < need)
				break;
			ndev = get32(p + OP_COMMON_SIZE);
			for (i = 0; i < ndev && avail >= need +
			     USBIP_DEVICE_SIZE; i++)
				need += USBIP_DEVICE_SIZE +
				    (size_t)p[need + 0x137] * USBIP_INTERFACE_SIZE;
			if (i < ndev || avail < need)
				break;
			/* from sysfs, with or without libusb */
			if (ndev != 1 && !(fz_dev.gone && ndev == 0))
				fz_fail("wire", "OP_REP_DEVLIST lists %u devices",
				     ndev);
			if (ndev)
				check_record(p + OP_COMMON_SIZE + 4);
			pos += need;
			fz_out.state = OUT_DONE;
			continue;
		}
		/* OUT_URBS */
		if (avail < USBIP_HEADER_SIZE)
			break;
		n = parse_ret(p, avail);
		if (n == 0)
			break;
		pos += n;
	}
	if (pos) {
		memmove(fz_out.buf, fz_out.buf + pos, fz_out.len - pos);
		fz_out.len -= pos;
	}
}

/* ---- driving the server ----------------------------------------------- */


static void drain_peer(void)
{
	static uint8_t buf[65536];	/* static: ASan (un)poisons stack arrays */
	size_t max = fz_dev.flags & F_SMALL_SOCK ? 700 : sizeof(buf);
	ssize_t n;

	while ((n = read(fz_peer, buf, max)) > 0) {
		out_append(buf, (size_t)n);
		if (fz_dev.flags & F_SMALL_SOCK)
			break;
	}
	out_parse();
	while (fz_peer2 >= 0 && read(fz_peer2, buf, sizeof(buf)) > 0)
		;			/* the second client only listens */
}

/* Session invariants, from the device's side. */
static void check_conns(void)
{
	struct conn *c;
	struct fx *f;
	int i, d, e, sessions = 0;

	for (c = conns; c; c = c->next)
		sessions += c->handle != NULL;
	if (sessions > 1)
		fz_fail("busy", "%d connections hold the device at once",
			sessions);
	for (c = conns; c; c = c->next) {
		if (!c->handle)
			continue;
		if (c->fd < 0) {
			for (f = fz_dev.pending; f; f = f->next)
				if (xfer_of(f)->dev_handle == c->handle &&
				    !f->cancelled && !f->cancel_lost &&
				    !f->killed)
					fz_fail("cancel", "connection closed, "
					     "transfer on endpoint 0x%02x "
					     "still in flight, not cancelled",
					     xfer_of(f)->endpoint);
			continue;
		}
		if (h_gone(c->handle))
			continue;	/* it hears of that next turn */
		/* (with F_CLAIM_FAIL claims fail: not p2pusb's doing) */
		for (i = 0; i < NIFS && !(fz_dev.flags & F_CLAIM_FAIL); i++) {
			if (!find_interface(i))
				continue;
			if (!(c->handle->claimed >> i & 1) ||
			    !(fz_dev.claimed >> i & 1) || fz_dev.bound[i])
				fz_fail("claim", "session live (config %d) but "
				     "interface %d is %s", fz_dev.config, i,
				     fz_dev.bound[i] ? "bound to its kernel driver"
				     : "not claimed");
		}
		for (d = 0; d < 2; d++) {
			for (e = 1; e < 16; e++) {
				const struct libusb_endpoint_descriptor *ep =
				    find_ep((uint8_t)(e | (d ? 0x80 : 0)), NULL);
				int want = ep ? ep->bmAttributes & 3 : EP_NONE;

				if (c->eptype[d][e] != want)
					fz_fail("eptype", "endpoint 0x%02x: p2pusb "
					     "says type %d, the device %d "
					     "(config %d alt %d/%d)",
					     e | (d ? 0x80 : 0), c->eptype[d][e],
					     want, fz_dev.config, fz_dev.alt[0],
					     fz_dev.alt[1]);
			}
		}
	}
}

/* One turn of serve()'s loop (dispatch()), as if every descriptor were
 * ready. */
static void fz_pump(void)
{
	struct timeval zero = { 0, 0 };
	struct conn *c;

	reap_conns();
	if (usb) {
		libusb_handle_events_timeout_completed(usb, &zero, NULL);
		/* usbfs descriptors report POLLERR, from the next turn on
		 * (a stale one's too) */
		if ((fz_dev.gone && fz_dev.gone_turns++ > 0) ||
		    (fz_dev.gen && fz_dev.stale_turns++ > 0))
			end_unplugged_sessions();
		for (c = conns; c; c = c->next)
			write_output(c);
	}
	for (c = conns; c; c = c->next) {
		if (c->fd < 0)
			continue;
		write_output(c);
		read_input(c, 1);
		if (c->fd >= 0)
			write_output(c);
	}
	if (fz_peer >= 0)
		drain_peer();
	check_conns();
}

/* No transfer pending, nothing queued, nothing unread by the client. */
static int fz_quiet(void)
{
	struct conn *c;
	int unread = 0;

	if (fz_dev.pending)
		return 0;
	if (fz_peer >= 0 && (ioctl(fz_peer, FIONREAD, &unread) < 0 || unread))
		return 0;
	for (c = conns; c; c = c->next)
		if (c->fd >= 0 && (c->outq || has_read_ahead(c)))
			return 0;
	return 1;
}

static void describe_conns(void)
{
	struct conn *c;

	for (c = conns; c; c = c->next)
		fprintf(stderr, "    conn fd %d rx %d need %zu have %zu "
			"inflight %u outbytes %zu handle %p\n", c->fd, c->rx,
			c->rxneed, c->rxhave, c->ninflight, c->outbytes,
			(void *)c->handle);
	fprintf(stderr, "    fake: %d pending, %ld transfers allocated, "
		"gone %d\n", pending_count(), fz_dev.transfers, fz_dev.gone);
}

static void second_client(void)
{
	uint8_t req[OP_REQ_IMPORT_SIZE];
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
		       0, sv) < 0)
		abort();
	add_conn(sv[0], sv[0], "fuzz-client-2", &fz_opts);
	pack_import_request(req, "1-1");
	/* refused (out of memory, STEP_NOMEM), its end is closed */
	if (write(sv[1], req, sizeof(req)) != (ssize_t)sizeof(req)) {
		close(sv[1]);
		return;
	}
	fz_peer2 = sv[1];
}

static void run_input(const uint8_t *data, size_t size)
{
	uint8_t *wire;
	size_t nwire, sent = 0, nctl;
	int sv[2], mode, i, steps = 0, closed_early = 0;
	struct conn *c;

	mode = size > 0 ? data[0] : 0;
	nctl = size > 1 ? data[1] : 0;
	if (nctl > (size > 2 ? size - 2 : 0))
		nctl = size > 2 ? size - 2 : 0;
	ctl_p = data + (size > 2 ? 2 : size);
	ctl_end = ctl_p + nctl;
	nwire = size - (size_t)(ctl_end - data);
	wire = malloc(nwire + OP_REQ_IMPORT_SIZE + 1);
	if (!wire)
		abort();
	if (mode & F_IMPORT) {
		pack_import_request(wire, "1-1");
		memcpy(wire + OP_REQ_IMPORT_SIZE, ctl_end, nwire);
		nwire += OP_REQ_IMPORT_SIZE;
	} else {
		memcpy(wire, ctl_end, nwire);
	}

	fake_reset(mode);
	usb = mode & F_NO_USB ? NULL : &fake_ctx;
	model_parse(wire, nwire);
	memset(&fz_out, 0, sizeof(fz_out));
	log_n = 0;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
		       0, sv) < 0)
		abort();
	if (mode & F_SMALL_SOCK) {
		int small = 4096;

		setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
	}
	fz_peer = sv[1];
	add_conn(sv[0], sv[0], "fuzz-client", &fz_opts);	/* accept_client */
	fz_conn1 = conns;

	/* The client's bytes in chunks, the loop turning between, for as
	 * long as there are bytes or control bytes. */
	while ((sent < nwire || ctl_p < ctl_end) && steps++ < 100000) {
		int b = ctl_next();
		size_t want = b < 0 ? nwire - sent : chunk_sizes[b & 15];
		ssize_t n;

		if ((b & 0xf0) == STEP_CLOSE) {
			closed_early = 1;
			break;
		}
		if ((b & 0xf0) == STEP_UNPLUG && !fz_dev.gone)
			fz_unplug();
		if ((b & 0xf0) == STEP_SECOND && fz_peer2 < 0)
			second_client();
		if (b >= 0 && (b & 0xf0) == STEP_NOMEM)
			fz_nomem++;
		if (b >= 0 && (b & 0xf0) == STEP_RESET_FAIL)
			fz_dev.reset_fail++;
		if (b >= 0 && (b & 0xf0) == STEP_REENUM)
			fz_dev.reenum++;
		if (want > nwire - sent)
			want = nwire - sent;
		n = want ? write(fz_peer, wire + sent, want) : 0;
		if (n > 0)
			sent += (size_t)n;
		else if (n < 0 && errno != EAGAIN)
			break;		/* the server hung up */
		fz_pump();
	}
	/* Settle: every transfer completes, every reply is read. */
	fz_dev.force = 1;
	for (i = 0; !closed_early && i < 1000 && !(fz_quiet() && i > 2); i++)
		fz_pump();
	fz_dev.force = 0;
	/* Everything sent was consumed and the device is idle: vhci_hcd
	 * must have an answer to every URB and every unlink by now. */
	for (c = conns; c && c != fz_conn1; c = c->next)
		;
	if (!closed_early && c && c->fd >= 0 && sent == nwire &&
	    c->rx == RX_HEADER &&
	    c->rxhave == 0 && fz_quiet() && fz_model.complete && fz_model.vhci_like &&
	    fz_out.state == OUT_URBS) {
		for (i = 0; i < fz_model.n; i++)
			/* (an early unlink is held for its URB) */
			if (!fz_model.cmds[i].answered &&
			    !fz_model.cmds[i].early)
				fz_fail("answer", "%s seq %u never answered",
				     fz_model.cmds[i].unlink ? "CMD_UNLINK" :
				     "CMD_SUBMIT", fz_model.cmds[i].seq);
	}

	/* The client goes away; the connection must be reaped.  Transfers
	 * wait (as a slow device's would) until the server has seen it. */
	close(fz_peer);
	fz_peer = -1;
	if (fz_peer2 >= 0)
		close(fz_peer2);
	fz_peer2 = -1;
	fz_dev.hold = 1;
	for (i = 0; i < 1000 && conns; i++) {
		if (i == 100)
			fz_dev.hold = 0;
		fz_pump();
	}
	if (conns) {
		fprintf(stderr, "p2pusb-fuzz: FAIL hang: the connection is "
			"never reaped\n");
		describe_conns();
		dump_log();
		fs_remove();
		abort();
	}
	if (fz_dev.pending)
		fz_fail("leak", "%d transfers still in flight after the session",
		     pending_count());
	if (fz_dev.transfers)
		fz_fail("leak", "%ld transfers allocated and never freed",
		     fz_dev.transfers);
	if (fz_dev.handles)
		fz_fail("leak", "%d device handles left open", fz_dev.handles);
	for (i = 0; i < fz_nwrapped; i++) {
		struct stat st;

		if (fstat(fz_wrapped[i].fd, &st) == 0 &&
		    st.st_ino == fz_wrapped[i].node.st_ino &&
		    st.st_dev == fz_wrapped[i].node.st_dev)
			fz_fail("leak", "usbfs descriptor %d left open",
				fz_wrapped[i].fd);
	}
	for (i = 0; i < NDEVS; i++)
		if (fz_devs[i].refs != 1)
			fz_fail("leak", "device %d has %d references, expected 1",
			     i, fz_devs[i].refs);
	if (!fz_dev.gone && fz_dev.claimed)
		fz_fail("giveback", "interfaces %#x still claimed", fz_dev.claimed);
	/* imported, or opened for an import refused after all */
	for (i = 0; i < NIFS && !fz_dev.gone && (mode & F_DRIVER); i++)
		if (find_interface(i) && !fz_dev.bound[i] &&
		    (fz_out.imported || fz_dev.opened))
			fz_fail("giveback", "interface %d not back with its kernel "
			     "driver", i);
	free(wire);
	free(fz_out.buf);
	free(fz_model.cmds);
	memset(&fz_out, 0, sizeof(fz_out));
	memset(&fz_model, 0, sizeof(fz_model));
}

/* ---- the client side: handshake replies and the --via relay ----------- */

/*
 * With -DFUZZ_CLIENT the input is what a server (or whatever answers
 * there) sends to `p2pusb list`, `p2pusb attach`, and attach --via's
 * relay, which frames the server's RET stream on its way to vhci_hcd:
 *   byte 0      mode: CL_* below, | CL_DEAF
 *   byte 1      n: how many control bytes follow (the relay's steps)
 *   n bytes     control, one per relay step: CL_TO_VHCI says the server
 *               sends it (else vhci_hcd's commands, toward the server),
 *               CL_LATER keeps it for relay() itself at the end (else
 *               the framer takes it now), the low 4 bits its size
 *               (chunk_sizes); when they run out, the rest goes:
 *   the rest    what the server sends, after what the steps took
 * request_devlist() and request_import() read from a socketpair holding
 * the whole reply, then its end; the relay's steps go through frame(),
 * then relay() runs on socketpairs holding what is left, to the end of
 * the server's bytes (CL_RELAY_DETACH: vhci_hcd's end closes first).
 * p2pusb's errx() and err() jump back here.  Checks, as for the server:
 *   text      a message or a printed line is not one line of printable
 *             ASCII (a busid or product name from the network, raw)
 *   refusal   a well-formed refusal is not reported as one
 *   import    request_import() accepted a reply vhci_hcd cannot take
 *             (not OK, another busid, an unknown speed), or read more or
 *             less than its 320 bytes
 *   output    `list` printed another number of lines than it listed
 *   wire      the request the client sent is not the spec's
 *   relay     relay() forwarded other bytes than it was given, or said
 *             vhci_hcd ended the session while its end is open
 */
enum { CL_DEVLIST, CL_IMPORT, CL_RELAY, CL_RELAY_DETACH };
#define CL_DEAF		0x04	/* the server reads nothing */
#define CL_TO_VHCI	0x80
#define CL_LATER	0x40
#define CL_MAX_INPUT	65536	/* what fits in a socketpair at once */
#define CL_PEER		"fuzz-server"
#define CL_TIMEOUT_MS	1000	/* the reply is all there: never waited */

static jmp_buf fz_client_jmp;
static int fz_client_returned;	/* the call under test returned */

static void xsocketpair(int sv[2])
{
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
}

/* All of P into FD, which must take it at once. */
static void put_all(int fd, const void *p, size_t n)
{
	if (n && write(fd, p, n) != (ssize_t)n)
		abort();
}

/* What is waiting in FD, up to LEN bytes, without blocking. */
static size_t take_all(int fd, uint8_t *buf, size_t len)
{
	size_t got = 0;
	ssize_t n;

	while (got < len &&
	       (n = recv(fd, buf + got, len - got, MSG_DONTWAIT)) > 0)
		got += (size_t)n;
	return got;
}

static int reply_ok(const uint8_t *r, size_t n, uint16_t code)
{
	return n >= OP_COMMON_SIZE && get16(r) == USBIP_VERSION &&
	       get16(r + 2) == code && get32(r + 4) == ST_OK;
}

/* A reply that says no, well-formed: p2pusb must say so, not more. */
static void check_refusal(const uint8_t *r, size_t n, uint16_t code)
{
	if (n < OP_COMMON_SIZE || get16(r) != USBIP_VERSION ||
	    get16(r + 2) != code || get32(r + 4) == ST_OK)
		return;
	if (fz_client_returned)
		fz_fail("refusal", "status %u accepted", get32(r + 4));
	if (!strstr(fz_exit_msg, "refused") &&
	    !strstr(fz_exit_msg, "not offered"))
		fz_fail("refusal", "status %u reported as \"%s\"",
			get32(r + 4), fz_exit_msg);
}

static void client_devlist(int mode, const uint8_t *r, size_t n)
{
	static const uint8_t want[OP_COMMON_SIZE] = {
		0x01, 0x11, 0x80, 0x05, 0, 0, 0, 0,
	};
	uint8_t req[64];
	size_t got;
	int sv[2];

	xsocketpair(sv);
	put_all(sv[1], r, n);
	shutdown(sv[1], SHUT_WR);
	if (mode & CL_DEAF)
		shutdown(sv[1], SHUT_RD);
	fz_exit_jmp = &fz_client_jmp;
	if (setjmp(fz_client_jmp) == 0) {
		/* as cmd_list() does */
		if (request_devlist(sv[0], sv[0], CL_PEER, CL_TIMEOUT_MS,
				    print_device_line, "") == 0)
			fuzz_printf("%s offers no devices\n", CL_PEER);
		fz_client_returned = 1;
	}
	fz_exit_jmp = NULL;
	got = take_all(sv[1], req, sizeof(req));
	if (!(mode & CL_DEAF) &&
	    (got != sizeof(want) || memcmp(req, want, sizeof(want))))
		fz_fail("wire", "OP_REQ_DEVLIST sent as %zu bytes", got);
	if (fz_client_returned && (mode & CL_DEAF))
		fz_fail("wire", "request_devlist() went on, its request "
			"unsent");
	if (!(mode & CL_DEAF))
		check_refusal(r, n, OP_REP_DEVLIST);
	if (fz_client_returned) {
		uint32_t ndev = n >= OP_COMMON_SIZE + 4 ?
				get32(r + OP_COMMON_SIZE) : 0;

		if (!reply_ok(r, n, OP_REP_DEVLIST))
			fz_fail("output", "a broken OP_REP_DEVLIST accepted");
		if (fz_print_lines != (int)(ndev ? ndev : 1))
			fz_fail("output", "%d lines printed for %u devices",
				fz_print_lines, ndev);
	}
	close(sv[0]);
	close(sv[1]);
}

/* As with --via: the reply comes on one descriptor, the request leaves
 * on another. */
static void client_import(int mode, const uint8_t *r, size_t n)
{
	uint8_t want[OP_REQ_IMPORT_SIZE], req[64];
	struct usbip_usb_device rec;
	int down[2], up[2], unread = -1;
	size_t got;

	xsocketpair(down);
	xsocketpair(up);
	put_all(down[1], r, n);
	shutdown(down[1], SHUT_WR);
	if (mode & CL_DEAF) {
		close(up[1]);
		up[1] = -1;
	}
	memset(&rec, 0, sizeof(rec));
	fz_exit_jmp = &fz_client_jmp;
	if (setjmp(fz_client_jmp) == 0) {
		request_import(down[0], up[0], "1-1", CL_PEER, CL_TIMEOUT_MS,
			       &rec);
		fz_client_returned = 1;
	}
	fz_exit_jmp = NULL;
	pack_import_request(want, "1-1");
	got = up[1] < 0 ? 0 : take_all(up[1], req, sizeof(req));
	if (up[1] >= 0 &&
	    (got != sizeof(want) || memcmp(req, want, sizeof(want))))
		fz_fail("wire", "OP_REQ_IMPORT sent as %zu bytes", got);
	if (!(mode & CL_DEAF))
		check_refusal(r, n, OP_REP_IMPORT);
	if (fz_client_returned) {
		if ((mode & CL_DEAF) || !reply_ok(r, n, OP_REP_IMPORT))
			fz_fail("import", "accepted a failed handshake");
		if (strncmp(rec.busid, "1-1", sizeof(rec.busid)) != 0)
			fz_fail("import", "accepted a record for another "
				"busid");
		/* vhci_hcd's attach takes these speeds only (EINVAL) */
		if (rec.speed < USB_SPEED_LOW ||
		    rec.speed > USB_SPEED_SUPER_PLUS)
			fz_fail("import", "accepted speed %u, which vhci_hcd "
				"refuses", rec.speed);
		/* what follows is vhci_hcd's to read */
		if (ioctl(down[0], FIONREAD, &unread) < 0 ||
		    (size_t)unread != n - OP_REP_IMPORT_SIZE)
			fz_fail("import", "read %zu bytes of the reply, not %d",
				n - (size_t)unread, OP_REP_IMPORT_SIZE);
	}
	close(down[0]);
	close(down[1]);
	close(up[0]);
	if (up[1] >= 0)
		close(up[1]);
}

/* A prefix of WANT (what relay() forwards until it stops)? */
static void check_forwarded(const char *toward, int fd, const uint8_t *want,
			    size_t n)
{
	static uint8_t got[2 * CL_MAX_INPUT];
	size_t len;

	if (fd < 0)
		return;
	len = take_all(fd, got, sizeof(got));
	if (len > n || memcmp(got, want, len) != 0)
		fz_fail("relay", "%zu bytes forwarded toward %s, not the %zu "
			"bytes it was given", len, toward, n);
}

static void client_relay(int mode, const uint8_t *ctl, size_t nctl,
			 const uint8_t *d, size_t n)
{
	static uint8_t later[2][CL_MAX_INPUT];	/* [CL_TO_VHCI?] */
	static struct attach_opts o;	/* --pcap, to see it take it all */
	struct framer to_server = { .who = CL_PEER }, to_vhci;
	size_t nlater[2] = { 0, 0 }, pos = 0, i;
	int vh[2], up[2], down[2], r = 0;
	struct link l;

	if (!o.capture)
		o.capture = open_capture("/dev/null");
	to_server.cap = o.capture;
	to_vhci = to_server;
	/* The steps: framed as they would pass, in the order given. */
	for (i = 0; i < nctl && r == 0; i++) {
		int server = ctl[i] & CL_TO_VHCI ? 1 : 0;
		size_t step = chunk_sizes[ctl[i] & 15];

		if (step > n - pos)
			step = n - pos;
		if (ctl[i] & CL_LATER) {
			memcpy(later[server] + nlater[server], d + pos, step);
			nlater[server] += step;
		} else {
			r = frame(server ? &to_vhci : &to_server, d + pos,
				  step);
		}
		pos += step;
	}
	free(to_server.payload);
	free(to_vhci.payload);
	if (r != 0)
		return;		/* the relay ends there */
	memcpy(later[1] + nlater[1], d + pos, n - pos);
	nlater[1] += n - pos;

	/* relay() itself, on what is left: to the server's end. */
	xsocketpair(vh);
	xsocketpair(up);
	xsocketpair(down);
	put_all(vh[1], later[0], nlater[0]);
	put_all(down[1], later[1], nlater[1]);
	shutdown(down[1], SHUT_WR);
	if (mode & CL_DEAF) {
		close(up[1]);
		up[1] = -1;
	}
	if ((mode & 3) == CL_RELAY_DETACH) {
		close(vh[1]);
		vh[1] = -1;
	}
	memset(&l, 0, sizeof(l));
	l.rfd = down[0];
	l.wfd = up[0];
	snprintf(l.peer, sizeof(l.peer), "%s", CL_PEER);
	r = relay(vh[0], &l, &o, 0);
	if (r == 0 && vh[1] >= 0)
		fz_fail("relay", "relay() says vhci_hcd ended the session, "
			"but its end is open");
	check_forwarded("the server", up[1], later[0], nlater[0]);
	check_forwarded("vhci_hcd", vh[1], later[1], nlater[1]);
	close(vh[0]);
	close(up[0]);
	close(down[0]);
	close(down[1]);
	if (vh[1] >= 0)
		close(vh[1]);
	if (up[1] >= 0)
		close(up[1]);
}

static void run_client_input(const uint8_t *data, size_t size)
{
	size_t nctl, n;
	int mode;

	if (size > CL_MAX_INPUT)
		size = CL_MAX_INPUT;
	mode = size > 0 ? data[0] : 0;
	nctl = size > 1 ? data[1] : 0;
	if (nctl > (size > 2 ? size - 2 : 0))
		nctl = size > 2 ? size - 2 : 0;
	n = size - (size > 2 ? 2 : size) - nctl;
	log_n = 0;
	fz_print_lines = 0;
	fz_client_returned = 0;
	fz_exit_msg[0] = '\0';
	switch (mode & 3) {
	case CL_DEVLIST:
		client_devlist(mode, data + size - n, n);
		break;
	case CL_IMPORT:
		client_import(mode, data + size - n, n);
		break;
	default:
		client_relay(mode, data + 2, nctl, data + size - n, n);
	}
	free(pending);		/* the relay's table: once per process */
	pending = NULL;
	npending = pending_cap = 0;
}

/* Which side this build fuzzes: -DFUZZ_CLIENT, the client's. */
#ifdef FUZZ_CLIENT
static const int fz_client_target = 1;
#else
static const int fz_client_target = 0;
#endif

static void setup_once(void)
{
	const char *s = getenv("P2PUSB_FUZZ_IGNORE");

	signal(SIGPIPE, SIG_IGN);
	fs_create();
	snprintf(fz_ignored, sizeof(fz_ignored), "%s", s ? s : "");
	log_verbose = getenv("P2PUSB_FUZZ_VERBOSE") != NULL;
	verbose = 2;	/* -vv: its decoding runs too, into the log ring */
}

#ifdef FUZZ_LIBFUZZER

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	setup_once();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	(fz_client_target ? run_client_input : run_input)(data, size);
	return 0;
}

#else /* the replay main, the corpus generator and the decoder */

/* -- seeds: every one built here, so tests/corpus can be regenerated -- */

struct seed {
	uint8_t ctl[256], wire[8192];
	size_t nctl, nwire;
	int mode;
	uint32_t devid;		/* in what s_submit writes; 0: 1-1's */
};

static void s_ctl(struct seed *s, int n, ...)
{
	va_list ap;

	va_start(ap, n);
	while (n-- > 0)
		s->ctl[s->nctl++] = (uint8_t)va_arg(ap, int);
	va_end(ap);
}

/* The control byte for a write step of len bytes. */
static int fz_chunk(size_t len)
{
	int i;

	for (i = 0; i < 16; i++)
		if (chunk_sizes[i] == len)
			return i;
	abort();
}

static void s_bytes(struct seed *s, const void *p, size_t n)
{
	memcpy(s->wire + s->nwire, p, n);
	s->nwire += n;
}

static void s_fill(struct seed *s, size_t n)
{
	while (n--) {
		s->wire[s->nwire] = (uint8_t)(s->nwire * 13);
		s->nwire++;
	}
}

static void s_op(struct seed *s, uint16_t version, uint16_t code)
{
	uint8_t b[OP_COMMON_SIZE];

	put16(b, version);
	put16(b + 2, code);
	put32(b + 4, 0);
	s_bytes(s, b, sizeof(b));
}

static void s_import(struct seed *s, const char *busid)
{
	uint8_t b[SYSFS_BUS_ID_SIZE] = { 0 };

	s_op(s, USBIP_VERSION, OP_REQ_IMPORT);
	memcpy(b, busid, strlen(busid));
	s_bytes(s, b, sizeof(b));
}

static void s_submit(struct seed *s, uint32_t seq, uint32_t dir, uint32_t ep,
		     uint32_t flags, int32_t len, int32_t np,
		     const uint8_t setup[8])
{
	uint8_t h[USBIP_HEADER_SIZE] = { 0 };

	put32(h, USBIP_CMD_SUBMIT);
	put32(h + 4, seq);
	put32(h + 8, s->devid ? s->devid : DEVID_1_1);
	put32(h + 12, dir);
	put32(h + 16, ep);
	put32(h + 20, flags);
	put32(h + 24, (uint32_t)len);
	put32(h + 28, 0);
	put32(h + 32, (uint32_t)np);
	put32(h + 36, 0);
	if (setup)
		memcpy(h + 40, setup, 8);
	s_bytes(s, h, sizeof(h));
}

static void s_unlink(struct seed *s, uint32_t seq, uint32_t victim)
{
	uint8_t h[USBIP_HEADER_SIZE] = { 0 };

	put32(h, USBIP_CMD_UNLINK);
	put32(h + 4, seq);
	put32(h + 8, DEVID_1_1);
	put32(h + 20, victim);
	s_bytes(s, h, sizeof(h));
}

/* N unlinks: seqnums SEQ, SEQ + 1, ... of VICTIM, VICTIM + 1, ... */
static void s_unlinks(struct seed *s, int n, uint32_t seq, uint32_t victim)
{
	while (n-- > 0)
		s_unlink(s, seq++, victim++);
}

static void s_iso(struct seed *s, uint32_t offset, uint32_t length)
{
	uint8_t d[USBIP_ISO_DESC_SIZE] = { 0 };

	put32(d, offset);
	put32(d + 4, length);
	s_bytes(s, d, sizeof(d));
}

#define SETUP(...) ((const uint8_t[8]){ __VA_ARGS__ })

static const uint8_t get_dev_desc[8] = { 0x80, 6, 0, 1, 0, 0, 18, 0 };

static int write_seed(const char *dir, const char *name, const struct seed *s)
{
	char path[PATH_MAX];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f) {
		perror(path);
		return -1;
	}
	fputc(s->mode, f);
	fputc((int)s->nctl, f);
	fwrite(s->ctl, 1, s->nctl, f);
	fwrite(s->wire, 1, s->nwire, f);
	return fclose(f);
}

static int make_corpus(const char *dir)
{
	struct seed s;
	int rc = 0;

#define SEED(name, body) do {						\
		memset(&s, 0, sizeof(s));				\
		body;							\
		rc |= write_seed(dir, name, &s);			\
	} while (0)

	SEED("devlist", s_op(&s, USBIP_VERSION, OP_REQ_DEVLIST));
	SEED("devlist-no-usb", (s.mode = F_NO_USB,
		s_op(&s, USBIP_VERSION, OP_REQ_DEVLIST)));
	SEED("bad-version", s_op(&s, 0x0200, OP_REQ_DEVLIST));
	SEED("unknown-op", s_op(&s, USBIP_VERSION, 0x8004));
	SEED("import-ok", s_import(&s, "1-1"));
	SEED("import-unknown-busid", s_import(&s, "9-9"));
	SEED("import-hub", s_import(&s, "1-2"));
	SEED("import-unterminated", (s_op(&s, USBIP_VERSION, OP_REQ_IMPORT),
		s_fill(&s, 32)));
	SEED("import-open-fails", (s.mode = F_OPEN_FAIL, s_import(&s, "1-1")));
	SEED("import-claim-fails", (s.mode = F_CLAIM_FAIL | F_DRIVER,
		s_import(&s, "1-1")));
	/* The handshake one byte at a time, then a descriptor request. */
	SEED("import-bytewise", (s_ctl(&s, 4, fz_chunk(1), fz_chunk(1), fz_chunk(2),
		fz_chunk(3)), s_import(&s, "1-1"),
		s_submit(&s, 1, 1, 0, 0, 18, 0, get_dev_desc)));
	SEED("truncated-header", (s.mode = F_IMPORT,
		s_submit(&s, 1, 1, 1, 0, 512, 0, NULL), s.nwire = 20));
	SEED("bad-devid", (s.mode = F_IMPORT,
		s_submit(&s, 1, 1, 1, 0, 512, 0, NULL), s.wire[11] = 9));
	SEED("bad-command", (s.mode = F_IMPORT,
		s_submit(&s, 1, 1, 1, 0, 512, 0, NULL), s.wire[3] = 3));
	SEED("too-long", (s.mode = F_IMPORT,
		s_submit(&s, 1, 1, 1, 0, URB_LENGTH_MAX + 1, 0, NULL)));
	SEED("ctrl-get-descriptor", (s.mode = F_IMPORT,
		s_submit(&s, 1, 1, 0, 0, 18, 0, get_dev_desc)));
	SEED("ctrl-out-data", (s.mode = F_IMPORT,
		s_submit(&s, 1, 0, 0, 0, 4, 0, SETUP(0x21, 9, 0, 2, 0, 0, 4, 0)),
		s_fill(&s, 4)));
	SEED("ctrl-wlength-too-big", (s.mode = F_IMPORT,
		s_submit(&s, 1, 1, 0, 0, 8, 0, get_dev_desc)));
	SEED("bulk-out", (s.mode = F_IMPORT,
		s_submit(&s, 1, 0, 2, 0, 100, 0, NULL), s_fill(&s, 100)));
	SEED("bulk-out-zero-packet", (s.mode = F_IMPORT,
		s_submit(&s, 1, 0, 2, URB_ZERO_PACKET, 512, 0, NULL),
		s_fill(&s, 512)));
	SEED("bulk-in", (s.mode = F_IMPORT,
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	SEED("bulk-in-short-not-ok", (s.mode = F_IMPORT,
		s_ctl(&s, 3, fz_chunk(40), fz_chunk(48), FATE_SHORT | 8 << 3),
		s_submit(&s, 1, 1, 1, URB_SHORT_NOT_OK | URB_DIR_IN, 512, 0,
			 NULL)));
	SEED("bulk-in-stall-clear-halt", (s.mode = F_IMPORT,
		s_ctl(&s, 4, fz_chunk(40), fz_chunk(48), fz_chunk(48),
		      FATE_STALL),
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL),
		s_submit(&s, 2, 0, 0, 0, 0, 0, SETUP(2, 1, 0, 0, 0x81, 0, 0, 0))));
	SEED("bulk-in-big-slow-client", (s.mode = F_IMPORT | F_SMALL_SOCK,
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 65536, 0, NULL),
		s_submit(&s, 2, 1, 1, URB_DIR_IN, 65536, 0, NULL)));
	SEED("no-such-endpoint", (s.mode = F_IMPORT,
		s_submit(&s, 1, 1, 7, URB_DIR_IN, 64, 0, NULL)));
	/* Interrupt IN stays pending; CMD_UNLINK cancels it. */
	SEED("intr-in-unlink", (s.mode = F_IMPORT,
		s_ctl(&s, 5, fz_chunk(40), fz_chunk(48), fz_chunk(48),
		      FATE_PENDING, 0),
		s_submit(&s, 1, 1, 3, URB_DIR_IN, 64, 0, NULL),
		s_unlink(&s, 2, 1)));
	/* ... and the same where the URB completes before the cancel. */
	SEED("intr-in-unlink-race", (s.mode = F_IMPORT,
		s_ctl(&s, 5, fz_chunk(40), fz_chunk(48), fz_chunk(48),
		      FATE_PENDING, 0x80),
		s_submit(&s, 1, 1, 3, URB_DIR_IN, 64, 0, NULL),
		s_unlink(&s, 2, 1)));
	SEED("unlink-unknown", (s.mode = F_IMPORT, s_unlink(&s, 5, 99)));
	/* Three URBs in flight when the client disconnects. */
	SEED("close-with-inflight", (s.mode = F_IMPORT,
		s_ctl(&s, 6, fz_chunk(512), fz_chunk(0), FATE_PENDING,
		      FATE_PENDING, FATE_PENDING, STEP_CLOSE),
		s_submit(&s, 1, 1, 3, URB_DIR_IN, 64, 0, NULL),
		s_submit(&s, 2, 1, 1, URB_DIR_IN, 512, 0, NULL),
		s_submit(&s, 3, 0, 2, 0, 8, 0, NULL), s_fill(&s, 8)));
	SEED("iso-out", (s.mode = F_IMPORT,
		s_submit(&s, 1, 0, 4, URB_ISO_ASAP, 300, 3, NULL),
		s_fill(&s, 300), s_iso(&s, 0, 100), s_iso(&s, 100, 100),
		s_iso(&s, 200, 100)));
	SEED("iso-out-bad-offsets", (s.mode = F_IMPORT,
		s_submit(&s, 1, 0, 4, URB_ISO_ASAP, 300, 2, NULL),
		s_fill(&s, 300), s_iso(&s, 100, 100), s_iso(&s, 0, 100)));
	SEED("set-interface-iso-in", (s.mode = F_IMPORT,
		s_submit(&s, 1, 0, 0, 0, 0, 0, SETUP(1, 11, 1, 0, 0, 0, 0, 0)),
		s_submit(&s, 2, 1, 5, URB_ISO_ASAP | URB_DIR_IN, 2048, 2, NULL),
		s_iso(&s, 0, 1024), s_iso(&s, 1024, 1024)));
	SEED("set-interface-bad-alt", (s.mode = F_IMPORT,
		s_submit(&s, 1, 0, 0, 0, 0, 0, SETUP(1, 11, 7, 0, 0, 0, 0, 0))));
	SEED("set-configuration-2", (s.mode = F_IMPORT,
		s_submit(&s, 1, 0, 0, 0, 0, 0, SETUP(0, 9, 2, 0, 0, 0, 0, 0)),
		s_submit(&s, 2, 0, 1, 0, 16, 0, NULL), s_fill(&s, 16),
		s_submit(&s, 3, 1, 1, URB_DIR_IN, 8, 0, NULL)));
	SEED("set-configuration-0", (s.mode = F_IMPORT,
		s_submit(&s, 1, 0, 0, 0, 0, 0, SETUP(0, 9, 0, 0, 0, 0, 0, 0)),
		s_submit(&s, 2, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	SEED("set-configuration-same", (s.mode = F_IMPORT | F_DRIVER,
		s_submit(&s, 1, 0, 0, 0, 0, 0, SETUP(0, 9, 1, 0, 0, 0, 0, 0))));
	SEED("clear-halt", (s.mode = F_IMPORT,
		s_submit(&s, 1, 0, 0, 0, 0, 0, SETUP(2, 1, 0, 0, 0x81, 0, 0, 0))));
	SEED("port-reset", (s.mode = F_IMPORT,
		s_ctl(&s, 4, fz_chunk(40), fz_chunk(48), fz_chunk(48),
		      FATE_PENDING),
		s_submit(&s, 1, 1, 3, URB_DIR_IN, 64, 0, NULL),
		s_submit(&s, 2, 0, 0, 0, 0, 0, SETUP(0x23, 3, 4, 0, 1, 0, 0, 0))));
	SEED("unplug", (s.mode = F_IMPORT | F_DRIVER,
		s_ctl(&s, 4, fz_chunk(40), fz_chunk(48), fz_chunk(48),
		      FATE_UNPLUG),
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL),
		s_submit(&s, 2, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	/* An idle session: the unplug is seen only on the usbfs descriptor. */
	SEED("unplug-idle", (s.mode = F_IMPORT,
		s_ctl(&s, 2, fz_chunk(40), STEP_UNPLUG),
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	/* The device goes away while a CMD_SUBMIT is being read. */
	SEED("unplug-during-submit", (s.mode = F_IMPORT,
		s_ctl(&s, 2, fz_chunk(40), fz_chunk(48) | STEP_UNPLUG),
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	/* A second client asks for the device while it is imported. */
	SEED("second-client-busy", (s.mode = F_IMPORT,
		s_ctl(&s, 3, fz_chunk(40), fz_chunk(48) | STEP_SECOND, fz_chunk(0)),
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	/* ... and before the first client's import arrives. */
	SEED("second-client-first", (s.mode = F_IMPORT,
		s_ctl(&s, 2, fz_chunk(0) | STEP_SECOND, fz_chunk(40)),
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	/* Transfer errors: ERROR, TIMED_OUT, OVERFLOW; iso packet errors. */
	SEED("transfer-errors", (s.mode = F_IMPORT,
		s_ctl(&s, 5, fz_chunk(512), fz_chunk(0), FATE_ERROR,
		      FATE_ERROR | 1 << 3, FATE_ERROR | 2 << 3),
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL),
		s_submit(&s, 2, 1, 3, URB_DIR_IN, 64, 0, NULL),
		s_submit(&s, 3, 0, 2, 0, 4, 0, NULL), s_fill(&s, 4)));
	SEED("iso-in-packet-errors", (s.mode = F_IMPORT,
		s_ctl(&s, 3, fz_chunk(512), fz_chunk(0), FATE_SHORT | 3 << 3),
		s_submit(&s, 1, 0, 0, 0, 0, 0, SETUP(1, 11, 1, 0, 0, 0, 0, 0)),
		s_submit(&s, 2, 1, 5, URB_ISO_ASAP | URB_DIR_IN, 3072, 3, NULL),
		s_iso(&s, 0, 1024), s_iso(&s, 1024, 1024),
		s_iso(&s, 2048, 1024)));
	SEED("import-wrap-fails", (s.mode = F_WRAP_FAIL, s_import(&s, "1-1")));
	/* SET_CONFIGURATION while the device's interfaces have a kernel
	 * driver (usb-storage, cdc-acm, ...) that p2pusb detached. */
	SEED("set-configuration-2-kernel-driver", (s.mode = F_IMPORT | F_DRIVER,
		s_submit(&s, 1, 0, 0, 0, 0, 0, SETUP(0, 9, 2, 0, 0, 0, 0, 0)),
		s_submit(&s, 2, 0, 1, 0, 16, 0, NULL), s_fill(&s, 16)));
	SEED("unconfigured-device", (s.mode = F_IMPORT | F_UNCONFIGURED,
		s_submit(&s, 1, 1, 0, 0, 18, 0, get_dev_desc),
		s_submit(&s, 2, 0, 0, 0, 0, 0, SETUP(0, 9, 1, 0, 0, 0, 0, 0)),
		s_submit(&s, 3, 1, 1, URB_DIR_IN, 512, 0, NULL)));

	/* An unlink overtakes the submit it names (vhci_hcd on 6.12): the
	 * URB is answered RET_UNLINK -ECONNRESET on arrival, not run. */
	SEED("unlink-before-submit", (s.mode = F_IMPORT,
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL),
		s_unlink(&s, 3, 2),
		s_submit(&s, 2, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	/* ... where a later submit comes instead: that URB never will. */
	SEED("unlink-passed", (s.mode = F_IMPORT,
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL),
		s_unlink(&s, 3, 2),
		s_submit(&s, 4, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	/* ... with seqnums that wrap past 0xffffffff. */
	SEED("unlink-before-submit-wrap", (s.mode = F_IMPORT,
		s_submit(&s, 0xfffffffe, 1, 1, URB_DIR_IN, 512, 0, NULL),
		s_unlink(&s, 0, 0xffffffff),
		s_submit(&s, 0xffffffff, 1, 1, URB_DIR_IN, 512, 0, NULL),
		s_unlink(&s, 2, 1),
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	/* More early unlinks than are held: the oldest is answered. */
	SEED("unlink-early-overflow", (s.mode = F_IMPORT,
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL),
		s_unlinks(&s, EARLY_UNLINKS + 1, 100, 2),
		s_submit(&s, 2, 1, 1, URB_DIR_IN, 512, 0, NULL),
		s_submit(&s, 30, 1, 1, URB_DIR_IN, 512, 0, NULL)));

	/* Endpoint 0 in order: a control transfer stays with the device
	 * while a request answered by p2pusb itself comes behind it. */
	SEED("ctrl-pending-then-set-interface", (s.mode = F_IMPORT,
		s_ctl(&s, 4, fz_chunk(40), fz_chunk(48), fz_chunk(48),
		      FATE_PENDING),
		s_submit(&s, 1, 1, 0, 0, 18, 0, get_dev_desc),
		s_submit(&s, 2, 0, 0, 0, 0, 0,
			 SETUP(1, 11, 1, 0, 0, 0, 0, 0))));
	SEED("ctrl-pending-then-clear-halt", (s.mode = F_IMPORT,
		s_ctl(&s, 4, fz_chunk(40), fz_chunk(48), fz_chunk(48),
		      FATE_PENDING),
		s_submit(&s, 1, 1, 0, 0, 18, 0, get_dev_desc),
		s_submit(&s, 2, 0, 0, 0, 0, 0,
			 SETUP(2, 1, 0, 0, 0x81, 0, 0, 0))));
	SEED("ctrl-pending-then-port-reset", (s.mode = F_IMPORT,
		s_ctl(&s, 4, fz_chunk(40), fz_chunk(48), fz_chunk(48),
		      FATE_PENDING),
		s_submit(&s, 1, 1, 0, 0, 18, 0, get_dev_desc),
		s_submit(&s, 2, 0, 0, 0, 0, 0,
			 SETUP(0x23, 3, 4, 0, 1, 0, 0, 0))));
	/* ... one refused before it reaches the device (wLength > length). */
	SEED("ctrl-pending-then-refused", (s.mode = F_IMPORT,
		s_ctl(&s, 4, fz_chunk(40), fz_chunk(48), fz_chunk(48),
		      FATE_PENDING),
		s_submit(&s, 1, 1, 0, 0, 18, 0, get_dev_desc),
		s_submit(&s, 2, 1, 0, 0, 8, 0, get_dev_desc)));
	/* ... held, then unlinked: RET_UNLINK -ECONNRESET, never run. */
	SEED("ctrl-held-unlinked", (s.mode = F_IMPORT,
		s_ctl(&s, 6, fz_chunk(40), fz_chunk(48), fz_chunk(48),
		      FATE_PENDING, fz_chunk(48), FATE_PENDING),
		s_submit(&s, 1, 1, 0, 0, 18, 0, get_dev_desc),
		s_submit(&s, 2, 0, 0, 0, 0, 0, SETUP(0, 9, 2, 0, 0, 0, 0, 0)),
		s_unlink(&s, 3, 2)));
	/* CLEAR_FEATURE(ENDPOINT_HALT) of endpoint 0 (OUT, then IN) is an
	 * ordinary request for the device: usbfs clears no halt there. */
	SEED("clear-halt-ep0", (s.mode = F_IMPORT,
		s_submit(&s, 1, 0, 0, 0, 0, 0, SETUP(2, 1, 0, 0, 0, 0, 0, 0)),
		s_submit(&s, 2, 0, 0, 0, 0, 0,
			 SETUP(2, 1, 0, 0, 0x80, 0, 0, 0))));

	/* Out of memory: the session ends, the server and device do not. */
	SEED("nomem-big-urb", (s.mode = F_IMPORT | F_DRIVER,
		s_submit(&s, 1, 1, 1, URB_DIR_IN, URB_LENGTH_MAX, 0, NULL)));
	SEED("nomem-urb", (s.mode = F_IMPORT | F_DRIVER,
		s_ctl(&s, 2, fz_chunk(40), STEP_NOMEM | fz_chunk(48)),
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	SEED("nomem-ret-unlink", (s.mode = F_IMPORT | F_DRIVER,
		s_ctl(&s, 3, fz_chunk(40), fz_chunk(48),
		      STEP_NOMEM | fz_chunk(48)),
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL),
		s_unlink(&s, 2, 1)));
	SEED("nomem-import-reply", (s.mode = F_DRIVER,
		s_ctl(&s, 1, STEP_NOMEM | fz_chunk(40)), s_import(&s, "1-1")));
	SEED("nomem-devlist", (s_ctl(&s, 1, STEP_NOMEM | fz_chunk(8)),
		s_op(&s, USBIP_VERSION, OP_REQ_DEVLIST)));

	/* The reset at import fails: refused, the interfaces given back. */
	SEED("import-reset-fails", (s.mode = F_DRIVER,
		s_ctl(&s, 1, STEP_RESET_FAIL | fz_chunk(40)),
		s_import(&s, "1-1")));
	/* ... or the device comes back enumerated anew: opened again. */
	SEED("import-reenumerated", (s.mode = F_DRIVER,
		s_ctl(&s, 1, STEP_REENUM | fz_chunk(40)), s_import(&s, "1-1"),
		s.devid = DEVID_REENUM,
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	SEED("import-reenumerated-twice", (s.mode = F_DRIVER,
		s_ctl(&s, 2, STEP_REENUM | fz_chunk(0),
		      STEP_REENUM | fz_chunk(40)), s_import(&s, "1-1")));
	/* A hub's PORT_RESET after which the device is enumerated anew:
	 * the session's handle is stale, and the session ends. */
	SEED("port-reset-reenumerated", (s.mode = F_IMPORT | F_DRIVER,
		s_ctl(&s, 3, fz_chunk(40), STEP_REENUM | fz_chunk(48),
		      fz_chunk(48)),
		s_submit(&s, 1, 0, 0, 0, 0, 0,
			 SETUP(0x23, 3, 4, 0, 1, 0, 0, 0)),
		s_submit(&s, 2, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	/* The reset at give-back fails: the interfaces go back anyway. */
	SEED("giveback-reset-fails", (s.mode = F_IMPORT | F_DRIVER,
		s_ctl(&s, 3, fz_chunk(40), fz_chunk(48),
		      STEP_RESET_FAIL | fz_chunk(0)),
		s_submit(&s, 1, 1, 1, URB_DIR_IN, 512, 0, NULL)));
	/* A busid that would rewrite a terminal: logged escaped. */
	SEED("import-busid-escape", (s_op(&s, USBIP_VERSION, OP_REQ_IMPORT),
		s_bytes(&s, "1-1\x1b[2J\r\nimported 1-1\0\0\0\0\0\0\0\0"
			"\0\0\0\0\0\0", 32)));
#undef SEED
	return rc ? 1 : 0;
}

/* -- the client target's seeds: tests/corpus/client -- */

/* A relay step of N bytes, in as few control bytes as chunk_sizes take. */
static void c_step(struct seed *s, int flags, const void *p, size_t n)
{
	const uint8_t *b = p;

	while (n > 0) {
		int i = 14;	/* 512: the largest but "all" */

		while (chunk_sizes[i] > n)
			i--;
		s->ctl[s->nctl++] = (uint8_t)(flags | i);
		s_bytes(s, b, chunk_sizes[i]);
		b += chunk_sizes[i];
		n -= chunk_sizes[i];
	}
}

static void c_op(struct seed *s, uint16_t code, uint32_t status)
{
	uint8_t b[OP_COMMON_SIZE];

	pack_op_common(b, code, status);
	s_bytes(s, b, sizeof(b));
}

/* A device record as a server sends it: BUSID (raw, up to 31 bytes). */
static void c_record(struct seed *s, const char *busid, uint32_t speed,
		     int nifs)
{
	struct usbip_usb_device d;
	uint8_t b[USBIP_DEVICE_SIZE];

	memset(&d, 0, sizeof(d));
	snprintf(d.path, sizeof(d.path), "/sys/devices/platform/usb1/1-1");
	memcpy(d.busid, busid, strnlen(busid, sizeof(d.busid) - 1));
	d.busnum = 1;
	d.devnum = 2;
	d.speed = speed;
	d.idVendor = 0x1d6b;
	d.idProduct = 0x0104;
	d.bcdDevice = 0x0100;
	d.bConfigurationValue = 1;
	d.bNumConfigurations = 1;
	d.bNumInterfaces = (uint8_t)nifs;
	pack_device(b, &d);
	s_bytes(s, b, sizeof(b));
	while (nifs-- > 0)
		s_bytes(s, "\xff\x00\x00\x00", USBIP_INTERFACE_SIZE);
}

/* A URB header: A at 0x14 (flags, status, unlinked seqnum), B at 0x18
 * (length, actual length), NP at 0x20. */
static void c_header(uint8_t *h, uint32_t cmd, uint32_t seq, uint32_t dir,
		     uint32_t ep, uint32_t a, uint32_t b, uint32_t np)
{
	memset(h, 0, USBIP_HEADER_SIZE);
	put32(h, cmd);
	put32(h + 4, seq);
	put32(h + 8, cmd == USBIP_CMD_SUBMIT || cmd == USBIP_CMD_UNLINK ?
		     DEVID_1_1 : 0);
	put32(h + 12, dir);
	put32(h + 16, ep);
	put32(h + 20, a);
	put32(h + 24, b);
	put32(h + 32, np);
}

/* One message of the relay's streams: a header and PAYLOAD bytes. */
static void c_msg(struct seed *s, int flags, uint32_t cmd, uint32_t seq,
		  uint32_t dir, uint32_t a, uint32_t b, uint32_t np,
		  size_t payload)
{
	uint8_t m[USBIP_HEADER_SIZE + 512];
	size_t i;

	c_header(m, cmd, seq, dir, 1, a, b, np);
	for (i = 0; i < payload; i++)
		m[USBIP_HEADER_SIZE + i] = (uint8_t)(i * 13);
	if (flags < 0)		/* the rest: no control byte */
		s_bytes(s, m, USBIP_HEADER_SIZE + payload);
	else
		c_step(s, flags, m, USBIP_HEADER_SIZE + payload);
}

#define V2S	0		/* vhci_hcd's command, framed now */
#define S2V	CL_TO_VHCI	/* the server's reply, framed now */
#define REST	(-1)		/* the server's, through relay() */
#define SUBMIT	USBIP_CMD_SUBMIT
#define UNLINK	USBIP_CMD_UNLINK
#define RSUBMIT	USBIP_RET_SUBMIT
#define RUNLINK	USBIP_RET_UNLINK

static int make_client_corpus(const char *dir)
{
	struct seed s;
	int rc = 0;

#define SEED(name, body) do {						\
		memset(&s, 0, sizeof(s));				\
		body;							\
		rc |= write_seed(dir, name, &s);			\
	} while (0)

	SEED("devlist-ok", (s.mode = CL_DEVLIST,
		c_op(&s, OP_REP_DEVLIST, ST_OK), s_bytes(&s, "\0\0\0\2", 4),
		c_record(&s, "1-1", USB_SPEED_HIGH, 1),
		c_record(&s, "1-2.4", USB_SPEED_SUPER, 2)));
	SEED("devlist-empty", (s.mode = CL_DEVLIST,
		c_op(&s, OP_REP_DEVLIST, ST_OK), s_bytes(&s, "\0\0\0\0", 4)));
	/* A refusal is the 8 bytes of op_common, and then the end. */
	SEED("devlist-refused", (s.mode = CL_DEVLIST,
		c_op(&s, OP_REP_DEVLIST, ST_NA)));
	/* A busid that retitles the terminal and fakes a second line. */
	SEED("devlist-escape", (s.mode = CL_DEVLIST,
		c_op(&s, OP_REP_DEVLIST, ST_OK), s_bytes(&s, "\0\0\0\1", 4),
		c_record(&s, "1-1\x1b]0;owned\x07\n9-9", USB_SPEED_HIGH, 0)));
	SEED("devlist-truncated", (s.mode = CL_DEVLIST,
		c_op(&s, OP_REP_DEVLIST, ST_OK), s_bytes(&s, "\0\0\0\3", 4),
		c_record(&s, "1-1", USB_SPEED_HIGH, 1), s.nwire -= 100));
	SEED("devlist-bad-version", (s.mode = CL_DEVLIST,
		c_op(&s, OP_REP_DEVLIST, ST_OK), s.wire[1] = 0x06,
		s_bytes(&s, "\0\0\0\0", 4)));
	SEED("devlist-deaf", (s.mode = CL_DEVLIST | CL_DEAF,
		c_op(&s, OP_REP_DEVLIST, ST_OK), s_bytes(&s, "\0\0\0\0", 4)));

	/* An import, and the first reply behind it: vhci_hcd's to read. */
	SEED("import-ok", (s.mode = CL_IMPORT, c_op(&s, OP_REP_IMPORT, ST_OK),
		c_record(&s, "1-1", USB_SPEED_HIGH, 0),
		c_msg(&s, REST, RSUBMIT, 1, 0, 0, 0, 0, 0)));
	SEED("import-refused", (s.mode = CL_IMPORT,
		c_op(&s, OP_REP_IMPORT, ST_DEV_BUSY)));
	SEED("import-no-such-busid", (s.mode = CL_IMPORT,
		c_op(&s, OP_REP_IMPORT, ST_NODEV)));
	/* vhci_hcd refuses a speed it does not know: not attached. */
	SEED("import-unknown-speed", (s.mode = CL_IMPORT,
		c_op(&s, OP_REP_IMPORT, ST_OK),
		c_record(&s, "1-1", USB_SPEED_UNKNOWN, 0)));
	SEED("import-speed-too-high", (s.mode = CL_IMPORT,
		c_op(&s, OP_REP_IMPORT, ST_OK),
		c_record(&s, "1-1", USB_SPEED_SUPER_PLUS + 1, 0)));
	SEED("import-busid-escape", (s.mode = CL_IMPORT,
		c_op(&s, OP_REP_IMPORT, ST_OK),
		c_record(&s, "1-1\x1b[2J\x1b[H\r\nok", USB_SPEED_HIGH, 0)));
	SEED("import-truncated", (s.mode = CL_IMPORT,
		c_op(&s, OP_REP_IMPORT, ST_OK),
		c_record(&s, "1-1", USB_SPEED_HIGH, 0), s.nwire -= 200));
	SEED("import-wrong-code", (s.mode = CL_IMPORT,
		c_op(&s, OP_REP_DEVLIST, ST_OK),
		c_record(&s, "1-1", USB_SPEED_HIGH, 0)));
	SEED("import-deaf", (s.mode = CL_IMPORT | CL_DEAF,
		c_op(&s, OP_REP_IMPORT, ST_OK),
		c_record(&s, "1-1", USB_SPEED_HIGH, 0)));

	/* The relay: an IN and an OUT transfer, an unlink, iso, replies
	 * interleaved; the last ones through relay() to the server's end. */
	SEED("relay-session", (s.mode = CL_RELAY,
		c_msg(&s, V2S, SUBMIT, 1, USBIP_DIR_IN, 0, 64, 0, 0),
		c_msg(&s, V2S, SUBMIT, 2, USBIP_DIR_OUT, 0, 16, 0, 16),
		c_msg(&s, S2V, RSUBMIT, 1, 0, 0, 64, 0, 64),
		c_msg(&s, V2S, SUBMIT, 3, USBIP_DIR_IN, 0, 512, 0, 0),
		c_msg(&s, V2S, UNLINK, 4, 0, 3, 0, 0, 0),
		c_msg(&s, S2V, RSUBMIT, 2, 0, 0, 16, 0, 0),
		c_msg(&s, S2V, RUNLINK, 4, 0, (uint32_t)-ECONNRESET, 0, 0, 0),
		c_msg(&s, V2S, SUBMIT, 5, USBIP_DIR_IN, 0, 2048, 2, 32),
		c_msg(&s, V2S | CL_LATER, SUBMIT, 6, USBIP_DIR_IN, 0, 8, 0, 0),
		c_msg(&s, REST, RSUBMIT, 5, 0, 0, 0, 2, 32),
		c_msg(&s, REST, RSUBMIT, 6, 0, 0, 8, 0, 8)));
	/* A reply for an URB given back already: the stream is broken. */
	SEED("relay-submit-after-unlink", (s.mode = CL_RELAY,
		c_msg(&s, V2S, SUBMIT, 1, USBIP_DIR_IN, 0, 64, 0, 0),
		c_msg(&s, V2S, UNLINK, 2, 0, 1, 0, 0, 0),
		c_msg(&s, S2V, RUNLINK, 2, 0, (uint32_t)-ECONNRESET, 0, 0, 0),
		c_msg(&s, S2V, RSUBMIT, 1, 0, 0, 64, 0, 64)));
	SEED("relay-unknown-seqnum", (s.mode = CL_RELAY,
		c_msg(&s, REST, RSUBMIT, 7, 0, 0, 64, 0, 64)));
	/* More data than asked for, or a direction that is neither. */
	SEED("relay-actual-beyond-length", (s.mode = CL_RELAY,
		c_msg(&s, V2S, SUBMIT, 1, USBIP_DIR_IN, 0, 64, 0, 0),
		c_msg(&s, REST, RSUBMIT, 1, 0, 0, 65, 0, 65)));
	SEED("relay-bad-direction", (s.mode = CL_RELAY,
		c_msg(&s, V2S, SUBMIT, 1, 0xffffffff, 0, 64, 0, 0),
		c_msg(&s, REST, RSUBMIT, 1, 0, 0, 64, 0, 64)));
	SEED("relay-negative-length", (s.mode = CL_RELAY,
		c_msg(&s, V2S | CL_LATER, SUBMIT, 1, USBIP_DIR_IN, 0, 64, 0, 0),
		c_msg(&s, REST, RSUBMIT, 1, 0, 0, (uint32_t)-5, 0, 0)));
	/* vhci_hcd detaches: its end closes. */
	SEED("relay-detach", (s.mode = CL_RELAY_DETACH,
		c_msg(&s, V2S, SUBMIT, 1, USBIP_DIR_IN, 0, 64, 0, 0),
		c_msg(&s, REST, RSUBMIT, 1, 0, 0, 64, 0, 64)));
	/* The server's end reads nothing: the relay ends, and says so. */
	SEED("relay-deaf", (s.mode = CL_RELAY | CL_DEAF,
		c_msg(&s, V2S | CL_LATER, SUBMIT, 1, USBIP_DIR_IN, 0, 64, 0, 0),
		c_msg(&s, REST, RSUBMIT, 1, 0, 0, 64, 0, 64)));
#undef SEED
	return rc ? 1 : 0;
}

/* Both seed sets: the server's in DIR, the client's in DIR/client. */
static int make_corpora(const char *dir)
{
	char sub[PATH_MAX];

	snprintf(sub, sizeof(sub), "%s/client", dir);
	if (mkdir(sub, 0755) < 0 && errno != EEXIST) {
		perror(sub);
		return 1;
	}
	return make_corpus(dir) | make_client_corpus(sub);
}

/* -- decoding an input, for reading a crash -- */

static void hexline(const char *what, const uint8_t *p, size_t n)
{
	size_t i;

	printf("%-10s", what);
	for (i = 0; i < n; i++)
		printf("%s%02x", i && i % 16 == 0 ? "\n          " : " ", p[i]);
	printf("\n");
}

/* An input file, up to 1 MiB of it; NULL (said on stderr) if unreadable. */
static const uint8_t *slurp(const char *path, size_t *n)
{
	static uint8_t buf[1 << 20];
	FILE *f = fopen(path, "rb");

	if (!f) {
		perror(path);
		return NULL;
	}
	*n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	return buf;
}

static int fz_decode(const char *path)
{
	const uint8_t *buf;
	size_t n, pos, nctl;
	int mode;

	if (!(buf = slurp(path, &n)))
		return 1;
	mode = n ? buf[0] : 0;
	nctl = n > 1 ? buf[1] : 0;
	if (nctl > (n > 2 ? n - 2 : 0))
		nctl = n > 2 ? n - 2 : 0;
	printf("mode      %#04x%s%s%s%s%s%s%s%s\n", mode,
	       mode & F_IMPORT ? " import" : "", mode & F_NO_USB ? " no-usb" : "",
	       mode & F_OPEN_FAIL ? " open-fails" : "",
	       mode & F_CLAIM_FAIL ? " claim-fails" : "",
	       mode & F_DRIVER ? " kernel-driver" : "",
	       mode & F_UNCONFIGURED ? " unconfigured" : "",
	       mode & F_SMALL_SOCK ? " small-socket" : "",
	       mode & F_WRAP_FAIL ? " wrap-fails" : "");
	hexline("control", buf + 2, nctl);
	pos = 2 + nctl;
	if (n < pos)
		pos = n;
	if (!(mode & F_IMPORT) && n - pos >= OP_COMMON_SIZE) {
		hexline("op", buf + pos, OP_COMMON_SIZE);
		pos += OP_COMMON_SIZE;
		if (get16(buf + pos - 6) == OP_REQ_IMPORT && n - pos >= 32) {
			hexline("busid", buf + pos, 32);
			pos += 32;
		}
	}
	while (n - pos >= USBIP_HEADER_SIZE) {
		const uint8_t *h = buf + pos;
		size_t extra = 0;

		if (get32(h) == USBIP_CMD_SUBMIT) {
			int32_t len = (int32_t)get32(h + 24);
			int32_t np = (int32_t)get32(h + 32);

			printf("SUBMIT    seq %u devid %08x %s ep %u flags %#x "
			       "len %d np %d setup %02x %02x %02x%02x %02x%02x "
			       "%02x%02x\n", get32(h + 4), get32(h + 8),
			       get32(h + 12) ? "in" : "out", get32(h + 16),
			       get32(h + 20), len, np, h[40], h[41], h[43],
			       h[42], h[45], h[44], h[47], h[46]);
			if (get32(h + 12) == 0 && len > 0)
				extra += (size_t)len;
			if (np > 0)
				extra += (size_t)np * 16;
		} else if (get32(h) == USBIP_CMD_UNLINK) {
			printf("UNLINK    seq %u devid %08x of seq %u\n",
			       get32(h + 4), get32(h + 8), get32(h + 20));
		} else {
			hexline("header?", h, USBIP_HEADER_SIZE);
		}
		pos += USBIP_HEADER_SIZE;
		if (extra > n - pos)
			extra = n - pos;
		if (extra)
			hexline("payload", buf + pos, extra);
		pos += extra;
	}
	if (pos < n)
		hexline("rest", buf + pos, n - pos);
	return 0;
}

/* A client input: its mode, its relay steps, the server's bytes. */
static int cl_decode(const char *path)
{
	static const char *modes[] = { "devlist", "import", "relay",
				       "relay, vhci_hcd detaches" };
	const uint8_t *buf;
	size_t n, i, nctl, pos;

	if (!(buf = slurp(path, &n)))
		return 1;
	nctl = n > 1 ? buf[1] : 0;
	if (nctl > (n > 2 ? n - 2 : 0))
		nctl = n > 2 ? n - 2 : 0;
	printf("mode      %#04x %s%s\n", n ? buf[0] : 0,
	       modes[n ? buf[0] & 3 : 0],
	       n && (buf[0] & CL_DEAF) ? ", the server reads nothing" : "");
	pos = 2 + nctl < n ? 2 + nctl : n;
	for (i = 0; i < nctl; i++) {
		uint8_t b = buf[2 + i];
		size_t len = chunk_sizes[b & 15];
		char what[64];

		if (len > n - pos)
			len = n - pos;
		snprintf(what, sizeof(what), "%s%s",
			 b & CL_TO_VHCI ? "server" : "vhci",
			 b & CL_LATER ? "*" : "");
		hexline(what, buf + pos, len);
		pos += len;
	}
	hexline("server", buf + pos, n - pos);
	return 0;
}

/* -- replay -- */

static int run_file(const char *path)
{
	const uint8_t *buf;
	size_t n;

	if (!(buf = slurp(path, &n)))
		return 1;
	fprintf(stderr, "replay %s (%zu bytes)\n", path, n);
	(fz_client_target ? run_client_input : run_input)(buf, n);
	return 0;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_dir(const char *path, int *count)
{
	DIR *d = opendir(path);
	struct dirent *e;
	char **names = NULL;
	size_t n = 0, cap = 0, i;
	int rc = 0;

	if (!d) {
		++*count;
		return run_file(path);
	}
	while ((e = readdir(d)) != NULL) {
		struct stat st;
		char sub[PATH_MAX];

		snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
		if (e->d_name[0] == '.' || (stat(sub, &st) == 0 &&
					    S_ISDIR(st.st_mode)))
			continue;	/* the client's seeds: their own run */
		if (n == cap) {
			cap = cap ? 2 * cap : 64;
			names = realloc(names, cap * sizeof(*names));
			if (!names)
				abort();
		}
		if (asprintf(&names[n++], "%s/%s", path, e->d_name) < 0)
			abort();
	}
	closedir(d);
	qsort(names, n, sizeof(*names), cmp_names);
	for (i = 0; i < n; i++) {
		rc |= run_file(names[i]);
		++*count;
		free(names[i]);
	}
	free(names);
	return rc;
}

int main(int argc, char **argv)
{
	int i, rc = 0, count = 0;

	setup_once();
	if (argc == 3 && strcmp(argv[1], "-g") == 0)
		return make_corpora(argv[2]);
	if (argc == 3 && strcmp(argv[1], "-d") == 0)
		return (fz_client_target ? cl_decode : fz_decode)(argv[2]);
	if (argc < 2) {
		fprintf(stderr, "usage: %s FILE|DIR...   replay inputs\n"
			"       %s -g DIR          write the seed corpus\n"
			"       %s -d FILE         decode an input\n",
			argv[0], argv[0], argv[0]);
		return 2;
	}
	for (i = 1; i < argc; i++)
		rc |= run_dir(argv[i], &count);
	printf("replayed %d inputs\n", count);
	return rc;
}

#endif /* FUZZ_LIBFUZZER */

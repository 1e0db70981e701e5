/*
 * bad-server - a fake USB/IP server that answers a client's handshake the
 * way a hostile or broken server might, to test how p2pusb's client side
 * (list, attach, attach --via) copes.  It speaks just enough of the
 * protocol (USB/IP 1.11, as the kernel's tools/usb/usbip speak it) to read one
 * request, then misbehaves as SCENARIO says.  It has no USB device: it
 * only makes up device records.
 *
 *   bad-server [-n CONNS] [-t SECS] [-l LOG] PORT SCENARIO
 *       listen on 127.0.0.1:PORT, serve CONNS connections (default 1) one
 *       after the other, then exit.  Prints "bad-server: listening on
 *       127.0.0.1:PORT" on stderr (or LOG) once the port is open.
 *   bad-server [-t SECS] [-l LOG] --stdio SCENARIO
 *       one session on stdin/stdout, for `p2pusb attach --via`.  Logs only
 *       with -l: its stderr is the client's.
 *
 *   -t SECS  hard bound on the whole run (SIGALRM; default 60).
 *   -l LOG   append log lines to LOG instead of stderr.
 *   -s SEED  seed of the garbage generator (default fixed: runs repeat).
 *
 * Scenarios (the reply to OP_REQ_DEVLIST or OP_REQ_IMPORT):
 *   devlist-escape    OP_REP_DEVLIST ok, 1 device whose busid and path hold
 *                     terminal escapes (OSC title, clear screen, C1 CSI, DEL)
 *   import-escape     OP_REP_IMPORT ok, the record's busid is not the one
 *                     asked for and holds the same escapes
 *   devlist-refused   OP_REP_DEVLIST status 1 (NA), only the 8-byte op_common
 *   unknown-speed     OP_REP_IMPORT ok, a valid record for the busid asked
 *                     for, but speed 99
 *   short-record      the reply (DEVLIST or IMPORT, as asked) cut short in
 *                     the middle of the device record, then EOF
 *   huge-count        OP_REP_DEVLIST ok with ndev 0xffffffff, then EOF (to
 *                     an import too: the wrong answer)
 *   silent            read the request, never answer; ends at the client's EOF
 *   garbage           64 MiB of pseudo-random bytes instead of any answer
 *   devlist-garbage   OP_REP_DEVLIST ok, ndev 0xffffffff, then 1 MiB of
 *                     pseudo-random bytes as device records (about 1300)
 *   stdio-closed-stdin (--stdio only) a correct import of a high-speed
 *                     device, then stdin closed while stdout stays open for
 *                     5 s: the client's next write to us fails (EPIPE)
 *
 * After its answer bad-server ends its side (shutdown / close stdout); on a
 * socket it then waits for the client to hang up, so the client never gets
 * a reset instead of the bytes it was sent.  With --via, run it as
 * `exec bad-server --stdio ...`: otherwise the shell in between holds the
 * pipes open (dash forks for sh -c), and a closed stdin or stdout of ours
 * never reaches the client.  Exit status 0, 2 on bad usage, 3 when -t
 * ran out.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define OP_COMMON_SIZE	8
#define BUSID_SIZE	32
#define PATH_SIZE	256
#define RECORD_SIZE	312
#define GARBAGE_BYTES	(64u << 20)
#define LIST_GARBAGE_BYTES (1u << 20)	/* p2pusb reads a record per call */

/* Every kind of byte a terminal acts on: OSC (sets the window title),
 * CSI clear screen, a C1 CSI (0x9b: 8-bit terminals), DEL. */
#define ESCAPES		"\x1b]0;pwned\x07\x1b[2J\x9b" "2J\x7f"

static FILE *logfp;
static const char *scenario;
static uint64_t seed = 0x2545f4914f6cdd1dULL;

static void say(const char *fmt, ...)
{
	va_list ap;

	if (!logfp)
		return;
	va_start(ap, fmt);
	fprintf(logfp, "bad-server: ");
	vfprintf(logfp, fmt, ap);
	fprintf(logfp, "\n");
	fflush(logfp);
	va_end(ap);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: bad-server [-n CONNS] [-t SECS] [-l LOG] [-s SEED] PORT SCENARIO\n"
		"       bad-server [-t SECS] [-l LOG] [-s SEED] --stdio SCENARIO\n"
		"scenarios: devlist-escape import-escape devlist-refused "
		"unknown-speed short-record huge-count silent garbage "
		"devlist-garbage stdio-closed-stdin\n");
	exit(2);
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/* 0 once LEN bytes are in, -1 on EOF or error (logged). */
static int read_full(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			say("request cut short (%s)",
			    n == 0 ? "EOF" : strerror(errno));
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Bytes written before an error (a client that hung up: EPIPE, reset). */
static size_t write_some(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	size_t done = 0;

	while (done < len) {
		ssize_t n = write(fd, p + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	return done;
}

static void op_common(uint8_t *p, uint16_t code, uint32_t status)
{
	put16(p, 0x0111);
	put16(p + 2, code);
	put32(p + 4, status);
}

/* A plausible device record: a high-speed device on bus 1, device 2. */
static void record(uint8_t *p, const char *path, const char *busid,
		   uint32_t speed)
{
	memset(p, 0, RECORD_SIZE);
	memcpy(p, path, strnlen(path, PATH_SIZE - 1));
	memcpy(p + 0x100, busid, strnlen(busid, BUSID_SIZE));
	put32(p + 0x120, 1);		/* busnum */
	put32(p + 0x124, 2);		/* devnum */
	put32(p + 0x128, speed);
	put16(p + 0x12c, 0x1d6b);	/* idVendor */
	put16(p + 0x12e, 0x0104);	/* idProduct */
	put16(p + 0x130, 0x0100);	/* bcdDevice */
	p[0x135] = 1;			/* bConfigurationValue */
	p[0x136] = 1;			/* bNumConfigurations */
	p[0x137] = 1;			/* bNumInterfaces */
}

static uint64_t next_random(void)
{
	seed ^= seed >> 12;
	seed ^= seed << 25;
	seed ^= seed >> 27;
	return seed * 0x2545f4914f6cdd1dULL;
}

static void send_garbage(int fd, size_t total)
{
	static uint8_t buf[65536];
	size_t sent = 0, i, n;

	while (sent < total) {
		for (i = 0; i < sizeof(buf); i += 8) {
			uint64_t r = next_random();

			memcpy(buf + i, &r, 8);
		}
		n = write_some(fd, buf, sizeof(buf));
		sent += n;
		if (n < sizeof(buf))
			break;
	}
	say("sent %zu bytes of garbage%s", sent,
	    sent < total ? " before the client hung up" : "");
}

static void send_bytes(int fd, const void *buf, size_t len, const char *what)
{
	size_t n = write_some(fd, buf, len);

	if (n < len)
		say("sent %zu of %zu bytes of %s: %s", n, len, what,
		    strerror(errno));
	else
		say("sent %s (%zu bytes)", what, len);
}

/*
 * Our side is done: the client sees EOF.  A socket then waits for the
 * client to hang up too (closing with its bytes unread would send a reset,
 * which can overtake what we sent).  --stdio just ends: under `sh -c` the
 * shell keeps its own copy of our stdout, so the client sees EOF only once
 * the whole command is gone.
 */
static void finish(int rfd, int wfd, int is_socket)
{
	uint8_t buf[4096];
	ssize_t n;
	size_t drained = 0;

	if (!is_socket) {
		if (wfd >= 0)
			close(wfd);
		say("done");
		return;
	}
	shutdown(wfd, SHUT_WR);
	while ((n = read(rfd, buf, sizeof(buf))) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		drained += (size_t)n;
	}
	say("client hung up%s", drained ? " (after sending more)" : "");
}

static void serve(int rfd, int wfd, int is_socket)
{
	uint8_t req[OP_COMMON_SIZE + BUSID_SIZE], out[OP_COMMON_SIZE + 4 +
						       RECORD_SIZE + 4];
	char busid[BUSID_SIZE + 1] = "";
	uint16_t code;
	int import;

	if (read_full(rfd, req, OP_COMMON_SIZE) < 0)
		return;
	code = get16(req + 2);
	import = code == 0x8003;
	if (import) {
		if (read_full(rfd, req + OP_COMMON_SIZE, BUSID_SIZE) < 0)
			return;
		memcpy(busid, req + OP_COMMON_SIZE, BUSID_SIZE);
		say("OP_REQ_IMPORT for busid '%s'", busid);
	} else {
		say("request code 0x%04x, version 0x%04x", code, get16(req));
	}

	if (strcmp(scenario, "devlist-escape") == 0) {
		op_common(out, 0x0005, 0);
		put32(out + 8, 1);
		record(out + 12, "/sys/devices/" ESCAPES "/usb1/1-1",
		       "1-1" ESCAPES, 3);
		memcpy(out + 12 + RECORD_SIZE, "\x08\x06\x50\x00", 4);
		send_bytes(wfd, out, 12 + RECORD_SIZE + 4,
			   "a device list with escapes");
	} else if (strcmp(scenario, "import-escape") == 0) {
		op_common(out, 0x0003, 0);
		record(out + 8, "/sys/devices/" ESCAPES, "9-9" ESCAPES, 3);
		send_bytes(wfd, out, 8 + RECORD_SIZE,
			   "an import of another busid, with escapes");
	} else if (strcmp(scenario, "devlist-refused") == 0) {
		op_common(out, 0x0005, 1);
		send_bytes(wfd, out, 8, "OP_REP_DEVLIST status 1, no body");
	} else if (strcmp(scenario, "unknown-speed") == 0) {
		op_common(out, 0x0003, 0);
		record(out + 8, "/sys/devices/fake/usb1/1-1", busid, 99);
		send_bytes(wfd, out, 8 + RECORD_SIZE,
			   "an import with speed 99");
	} else if (strcmp(scenario, "short-record") == 0) {
		/* Cut in the middle of the busid field (offset 0x100). */
		if (import) {
			op_common(out, 0x0003, 0);
			record(out + 8, "/sys/devices/fake/usb1/1-1", busid, 3);
			send_bytes(wfd, out, 8 + 0x102,
				   "an import reply cut short");
		} else {
			op_common(out, 0x0005, 0);
			put32(out + 8, 1);
			record(out + 12, "/sys/devices/fake/usb1/1-1", "1-1",
			       3);
			send_bytes(wfd, out, 12 + 0x102,
				   "a device list cut short");
		}
	} else if (strcmp(scenario, "huge-count") == 0) {
		op_common(out, 0x0005, 0);
		put32(out + 8, 0xffffffff);
		send_bytes(wfd, out, 12, "OP_REP_DEVLIST with ndev 0xffffffff");
	} else if (strcmp(scenario, "silent") == 0) {
		say("not answering");
		while (read(rfd, out, sizeof(out)) > 0)
			;		/* until the client gives up */
		say("client hung up");
		return;
	} else if (strcmp(scenario, "garbage") == 0) {
		send_garbage(wfd, GARBAGE_BYTES);
	} else if (strcmp(scenario, "devlist-garbage") == 0) {
		op_common(out, 0x0005, 0);
		put32(out + 8, 0xffffffff);
		send_bytes(wfd, out, 12, "OP_REP_DEVLIST with ndev 0xffffffff");
		send_garbage(wfd, LIST_GARBAGE_BYTES);
	} else if (strcmp(scenario, "stdio-closed-stdin") == 0) {
		op_common(out, 0x0003, 0);
		record(out + 8, "/sys/devices/fake/usb1/1-1", busid, 3);
		send_bytes(wfd, out, 8 + RECORD_SIZE, "a correct import");
		close(rfd);
		say("stdin closed; stdout stays open for 5 s");
		sleep(5);
		say("exiting");
		return;
	}
	finish(rfd, wfd, is_socket);
}

static void on_alarm(int sig)
{
	static const char msg[] = "bad-server: time is up\n";

	(void)sig;
	if (logfp && write(fileno(logfp), msg, sizeof(msg) - 1) < 0)
		_exit(3);
	_exit(3);
}

int main(int argc, char **argv)
{
	static const char *known[] = {
		"devlist-escape", "import-escape", "devlist-refused",
		"unknown-speed", "short-record", "huge-count", "silent",
		"garbage", "devlist-garbage", "stdio-closed-stdin",
	};
	static const struct option longopts[] = {
		{ "stdio", no_argument, NULL, 'S' },
		{ NULL, 0, NULL, 0 },
	};
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int stdio = 0, conns = 1, secs = 60, ch, lfd, one = 1, i;
	const char *logname = NULL;
	size_t k;

	while ((ch = getopt_long(argc, argv, "+n:t:l:s:", longopts,
				 NULL)) != -1) {
		switch (ch) {
		case 'n':
			conns = atoi(optarg);
			break;
		case 't':
			secs = atoi(optarg);
			break;
		case 'l':
			logname = optarg;
			break;
		case 's':
			seed = strtoull(optarg, NULL, 0) | 1;
			break;
		case 'S':
			stdio = 1;
			break;
		default:
			usage();
		}
	}
	if (argc - optind != (stdio ? 1 : 2) || conns < 1 || conns > 100 ||
	    secs < 1)
		usage();
	scenario = argv[argc - 1];
	for (k = 0; k < sizeof(known) / sizeof(known[0]); k++)
		if (strcmp(scenario, known[k]) == 0)
			break;
	if (k == sizeof(known) / sizeof(known[0]) ||
	    (!stdio && strcmp(scenario, "stdio-closed-stdin") == 0))
		usage();

	if (logname) {
		logfp = fopen(logname, "a");
		if (!logfp) {
			perror(logname);
			return 2;
		}
	} else if (!stdio) {
		logfp = stderr;
	}
	signal(SIGPIPE, SIG_IGN);
	signal(SIGALRM, on_alarm);
	alarm((unsigned)secs);

	if (stdio) {
		say("--stdio %s", scenario);
		serve(STDIN_FILENO, STDOUT_FILENO, 0);
		return 0;
	}

	sa.sin_port = htons((uint16_t)atoi(argv[optind]));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 ||
	    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(lfd, 4) < 0) {
		fprintf(stderr, "bad-server: 127.0.0.1:%s: %s\n", argv[optind],
			strerror(errno));
		return 2;
	}
	say("listening on 127.0.0.1:%s (%s)", argv[optind], scenario);
	for (i = 0; i < conns; i++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR)
				continue;
			say("accept: %s", strerror(errno));
			return 1;
		}
		serve(fd, fd, 1);
		close(fd);
	}
	close(lfd);
	return 0;
}

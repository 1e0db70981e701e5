/*
 * p2pusb - share USB devices between Linux machines over TCP, speaking the
 * kernel's own USB/IP protocol.
 *
 *   p2pusb serve    exports local devices through libusb: a userspace
 *                   usbipd and usbip-host in one process
 *   p2pusb attach   imports a remote device into this kernel's vhci_hcd
 *
 * A USB/IP session is one TCP connection in two phases:
 *
 *   1. handshake: the client sends OP_REQ_IMPORT naming a busid; the server
 *      claims the device and answers OP_REP_IMPORT with its record.
 *   2. URBs: the client's vhci_hcd sends CMD_SUBMIT and CMD_UNLINK; the
 *      server runs them on the real device and answers RET_SUBMIT and
 *      RET_UNLINK.
 *
 * vhci_hcd speaks only phase 2.  The attach side does phase 1 itself and
 * then hands the connected socket to the kernel through sysfs.  The
 * messages are laid out in p2pusb.h; the kernel documents them in
 * Documentation/usb/usbip_protocol.rst, and its drivers/usb/usbip and
 * tools/usb/usbip are the other ends this file talks to.
 *
 * Where to start reading: "the server, as one URB lives it" follows a
 * client from accept_client() through the handshake (answer_import()),
 * one CMD_SUBMIT (on_header(), on_cmd_submit(), submit_urb()), its
 * completion (on_transfer_done()) and its reply (queue_ret_submit(),
 * write_output()); serve() is the one poll() loop that drives it all.
 * The client is attach_once().  Sections, in order:
 *
 *   the wire format      one encoder and one decoder per message
 *   sockets              listen, dial, bounded reads for the client
 *   local USB devices    found in sysfs, as the kernel's usbipd finds them
 *   the server           its state, then one URB's life, then its loop
 *   the client           handshake, vhci_hcd, attach / port / detach
 *   the command line     main()
 *   extras               -vv trace, --allow, dialing either way, --stdio
 *                        and --via, --persist, --pcap, making it fast:
 *                        each hooks into the core through one named
 *                        function, and a first reading can skip them all
 */
#define _GNU_SOURCE

#include <arpa/inet.h>
#include <ctype.h>
#include <err.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <dirent.h>
#include <glob.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libusb.h>

#include "p2pusb.h"

#define P2PUSB_VERSION	"0.1"

/*
 * Code that runs rarely (once per command, session or connection, or on
 * the way to an error) is most of this file: ONCE compiles it for size,
 * as gcc and clang do cold functions, which keeps the binary small for
 * boards.  Never on what runs per URB, nor on what every run of serve()
 * or relay() calls first (main, cmd_serve, attach_once, ...): gcc takes
 * what only cold code calls for cold too, and would compile the URB path
 * for size.  test.sh checks that it does not.
 */
#define ONCE	__attribute__((cold))

static int verbose;

#define debug(level, ...) \
	do { if (verbose >= (level)) warnx(__VA_ARGS__); } while (0)

/* ARG as a decimal number in MIN..MAX, or exit with FMT (naming ARG). */
static ONCE long parse_number(const char *arg, long min, long max,
			      const char *fmt)
{
	char *end;
	long n = strtol(arg, &end, 10);

	if (*arg == '\0' || *end != '\0' || n < min || n > max)
		errx(1, fmt, arg);
	return n;
}

/* ==== the wire format: explicit big-endian, field by field =============== */

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

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

/* Where a field sits on the wire: its offset in the checked struct. */
#define AT(p, type, field) ((p) + offsetof(struct type, field))
/* ... and in the part of a URB header that is CMD_SUBMIT's or RET_SUBMIT's. */
#define CMD_AT(p, field) AT(p, usbip_header, u.cmd_submit.field)
#define RET_AT(p, field) AT(p, usbip_header, u.ret_submit.field)

static ONCE void pack_op_common(uint8_t *p, uint16_t code, uint32_t status)
{
	put16(AT(p, op_common, version), USBIP_VERSION);
	put16(AT(p, op_common, code), code);
	put32(AT(p, op_common, status), status);
}

static ONCE void unpack_op_common(const uint8_t *p, struct op_common *op)
{
	op->version = get16(AT(p, op_common, version));
	op->code = get16(AT(p, op_common, code));
	op->status = get32(AT(p, op_common, status));
}

static ONCE void pack_import_request(uint8_t *p, const char *busid)
{
	pack_op_common(p, OP_REQ_IMPORT, ST_OK);
	memset(p + OP_COMMON_SIZE, 0, SYSFS_BUS_ID_SIZE);
	memcpy(p + OP_COMMON_SIZE, busid,
	       strnlen(busid, SYSFS_BUS_ID_SIZE - 1));
}

static ONCE void pack_device(uint8_t *p, const struct usbip_usb_device *d)
{
	memcpy(AT(p, usbip_usb_device, path), d->path, SYSFS_PATH_MAX);
	memcpy(AT(p, usbip_usb_device, busid), d->busid, SYSFS_BUS_ID_SIZE);
	put32(AT(p, usbip_usb_device, busnum), d->busnum);
	put32(AT(p, usbip_usb_device, devnum), d->devnum);
	put32(AT(p, usbip_usb_device, speed), d->speed);
	put16(AT(p, usbip_usb_device, idVendor), d->idVendor);
	put16(AT(p, usbip_usb_device, idProduct), d->idProduct);
	put16(AT(p, usbip_usb_device, bcdDevice), d->bcdDevice);
	*AT(p, usbip_usb_device, bDeviceClass) = d->bDeviceClass;
	*AT(p, usbip_usb_device, bDeviceSubClass) = d->bDeviceSubClass;
	*AT(p, usbip_usb_device, bDeviceProtocol) = d->bDeviceProtocol;
	*AT(p, usbip_usb_device, bConfigurationValue) = d->bConfigurationValue;
	*AT(p, usbip_usb_device, bNumConfigurations) = d->bNumConfigurations;
	*AT(p, usbip_usb_device, bNumInterfaces) = d->bNumInterfaces;
}

static ONCE void unpack_device(const uint8_t *p, struct usbip_usb_device *d)
{
	memcpy(d->path, AT(p, usbip_usb_device, path), SYSFS_PATH_MAX);
	memcpy(d->busid, AT(p, usbip_usb_device, busid), SYSFS_BUS_ID_SIZE);
	d->path[SYSFS_PATH_MAX - 1] = '\0';
	d->busid[SYSFS_BUS_ID_SIZE - 1] = '\0';
	d->busnum = get32(AT(p, usbip_usb_device, busnum));
	d->devnum = get32(AT(p, usbip_usb_device, devnum));
	d->speed = get32(AT(p, usbip_usb_device, speed));
	d->idVendor = get16(AT(p, usbip_usb_device, idVendor));
	d->idProduct = get16(AT(p, usbip_usb_device, idProduct));
	d->bcdDevice = get16(AT(p, usbip_usb_device, bcdDevice));
	d->bDeviceClass = *AT(p, usbip_usb_device, bDeviceClass);
	d->bDeviceSubClass = *AT(p, usbip_usb_device, bDeviceSubClass);
	d->bDeviceProtocol = *AT(p, usbip_usb_device, bDeviceProtocol);
	d->bConfigurationValue = *AT(p, usbip_usb_device, bConfigurationValue);
	d->bNumConfigurations = *AT(p, usbip_usb_device, bNumConfigurations);
	d->bNumInterfaces = *AT(p, usbip_usb_device, bNumInterfaces);
}

static ONCE void pack_interface(uint8_t *p, const struct usbip_usb_interface *i)
{
	p[0] = i->bInterfaceClass;
	p[1] = i->bInterfaceSubClass;
	p[2] = i->bInterfaceProtocol;
	p[3] = 0;
}

static void unpack_interface(const uint8_t *p, struct usbip_usb_interface *i)
{
	i->bInterfaceClass = p[0];
	i->bInterfaceSubClass = p[1];
	i->bInterfaceProtocol = p[2];
	i->padding = 0;
}

/*
 * The kernel's stub zeroes devid, direction and ep in what it sends back;
 * vhci matches replies by seqnum alone.
 */
static void pack_basic(uint8_t *p, uint32_t command, uint32_t seqnum)
{
	memset(p, 0, USBIP_HEADER_SIZE);
	put32(AT(p, usbip_header, base.command), command);
	put32(AT(p, usbip_header, base.seqnum), seqnum);
}

static void pack_ret_submit(uint8_t *p, uint32_t seqnum,
			    const struct usbip_header_ret_submit *r)
{
	pack_basic(p, USBIP_RET_SUBMIT, seqnum);
	put32(RET_AT(p, status), (uint32_t)r->status);
	put32(RET_AT(p, actual_length), (uint32_t)r->actual_length);
	put32(RET_AT(p, start_frame), (uint32_t)r->start_frame);
	put32(RET_AT(p, number_of_packets), (uint32_t)r->number_of_packets);
	put32(RET_AT(p, error_count), (uint32_t)r->error_count);
}

static void pack_ret_unlink(uint8_t *p, uint32_t seqnum, int32_t status)
{
	pack_basic(p, USBIP_RET_UNLINK, seqnum);
	put32(AT(p, usbip_header, u.ret_unlink.status), (uint32_t)status);
}

/* Decodes any of the four URB headers; unknown commands keep the base. */
static void unpack_header(const uint8_t *p, struct usbip_header *h)
{
	struct usbip_header_cmd_submit *cmd = &h->u.cmd_submit;
	struct usbip_header_ret_submit *ret = &h->u.ret_submit;

	memset(h, 0, sizeof(*h));
	h->base.command = get32(AT(p, usbip_header, base.command));
	h->base.seqnum = get32(AT(p, usbip_header, base.seqnum));
	h->base.devid = get32(AT(p, usbip_header, base.devid));
	h->base.direction = get32(AT(p, usbip_header, base.direction));
	h->base.ep = get32(AT(p, usbip_header, base.ep));

	switch (h->base.command) {
	case USBIP_CMD_SUBMIT:
		cmd->transfer_flags = get32(CMD_AT(p, transfer_flags));
		cmd->transfer_buffer_length =
		    (int32_t)get32(CMD_AT(p, transfer_buffer_length));
		cmd->start_frame = (int32_t)get32(CMD_AT(p, start_frame));
		cmd->number_of_packets =
		    (int32_t)get32(CMD_AT(p, number_of_packets));
		cmd->interval = (int32_t)get32(CMD_AT(p, interval));
		memcpy(cmd->setup, CMD_AT(p, setup), 8);
		break;
	case USBIP_RET_SUBMIT:
		ret->status = (int32_t)get32(RET_AT(p, status));
		ret->actual_length = (int32_t)get32(RET_AT(p, actual_length));
		ret->start_frame = (int32_t)get32(RET_AT(p, start_frame));
		ret->number_of_packets =
		    (int32_t)get32(RET_AT(p, number_of_packets));
		ret->error_count = (int32_t)get32(RET_AT(p, error_count));
		break;
	case USBIP_CMD_UNLINK:
		h->u.cmd_unlink.seqnum =
		    get32(AT(p, usbip_header, u.cmd_unlink.seqnum));
		break;
	case USBIP_RET_UNLINK:
		h->u.ret_unlink.status =
		    (int32_t)get32(AT(p, usbip_header, u.ret_unlink.status));
		break;
	}
}

static ONCE void pack_iso_desc(uint8_t *p,
			       const struct usbip_iso_packet_descriptor *d)
{
	put32(AT(p, usbip_iso_packet_descriptor, offset), d->offset);
	put32(AT(p, usbip_iso_packet_descriptor, length), d->length);
	put32(AT(p, usbip_iso_packet_descriptor, actual_length),
	      d->actual_length);
	put32(AT(p, usbip_iso_packet_descriptor, status), d->status);
}

static void unpack_iso_desc(const uint8_t *p,
			    struct usbip_iso_packet_descriptor *d)
{
	d->offset = get32(AT(p, usbip_iso_packet_descriptor, offset));
	d->length = get32(AT(p, usbip_iso_packet_descriptor, length));
	d->actual_length =
	    get32(AT(p, usbip_iso_packet_descriptor, actual_length));
	d->status = get32(AT(p, usbip_iso_packet_descriptor, status));
}

/* ==== sockets ============================================================ */

#define IO_TIMEOUT_MS	10000	/* handshake replies; never on vhci's socket */
#define VIA_TIMEOUT_MS	120000	/* --via: ssh may ask for a password first */

/*
 * A string a peer sent, fit for a terminal: a busid may hold escape
 * sequences that would rewrite the user's screen.  Bytes other than
 * printable ASCII come out as \xNN.  Returns BUF, of ESCAPED(LEN) bytes.
 */
#define ESCAPED(len)	((len) * 4 + 1)

static ONCE const char *printable(const char *s, size_t len, char *buf)
{
	size_t i, o = 0;

	for (i = 0; i < len && s[i]; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch >= ' ' && ch <= '~' && ch != '\\')
			buf[o++] = (char)ch;
		else
			o += (size_t)sprintf(buf + o, "\\x%02x", ch);
	}
	buf[o] = '\0';
	return buf;
}

/* "host", "host:port", "[v6]", "[v6]:port"; a bare v6 address has no port. */
static void split_host_port(const char *arg, char *host, size_t hostlen,
			    char *port, size_t portlen)
{
	const char *colon = strrchr(arg, ':');
	size_t n;

	snprintf(port, portlen, "%s", USBIP_PORT);
	if (arg[0] == '[') {
		const char *end = strchr(arg, ']');

		if (!end)
			errx(1, "%s: missing ']' after IPv6 address", arg);
		n = (size_t)(end - arg - 1);
		if (end[1] == ':')
			snprintf(port, portlen, "%s", end + 2);
		arg++;
	} else if (colon && colon == strchr(arg, ':')) {
		n = (size_t)(colon - arg);
		snprintf(port, portlen, "%s", colon + 1);
	} else {
		n = strlen(arg);
	}
	if (n >= hostlen)
		errx(1, "%s: host name too long", arg);
	memcpy(host, arg, n);
	host[n] = '\0';
}

static ONCE void name_peer(const char *host, const char *service, char *buf,
			   size_t len)
{
	snprintf(buf, len, strchr(host, ':') ? "[%s]:%s" : "%s:%s", host,
		 service);
}

static ONCE void format_peer(const struct sockaddr *sa, char *buf, size_t len)
{
	char host[NI_MAXHOST], serv[NI_MAXSERV];

	if (getnameinfo(sa, sa->sa_family == AF_INET6 ?
			sizeof(struct sockaddr_in6) :
			sizeof(struct sockaddr_in),
			host, sizeof(host), serv, sizeof(serv),
			NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		snprintf(buf, len, "?");
	else if (sa->sa_family == AF_INET6)
		snprintf(buf, len, "[%.*s]:%.5s", INET6_ADDRSTRLEN, host, serv);
	else
		snprintf(buf, len, "%.*s:%.5s", INET6_ADDRSTRLEN, host, serv);
}

static ONCE void set_nonblocking(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static ONCE void set_blocking(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
}

/*
 * URBs are small and latency-bound, so no Nagle.  A peer that vanished
 * without a FIN must still be noticed, on both sides and also by vhci_hcd,
 * which keeps these options on the socket it is handed: an idle connection
 * is probed after 30 s and given up after 3 unanswered probes 5 s apart;
 * data unacknowledged for 45 s ends it too.
 */
#define KEEPALIVE_IDLE_S	30
#define KEEPALIVE_INTERVAL_S	5
#define KEEPALIVE_PROBES	3

static ONCE void set_tcp_options(int fd)
{
	int one = 1, idle = KEEPALIVE_IDLE_S, intvl = KEEPALIVE_INTERVAL_S,
	    cnt = KEEPALIVE_PROBES;
	unsigned user_timeout_ms =
	    (KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_PROBES) * 1000;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms,
		   sizeof(user_timeout_ms));
}

/* Binds every address ADDR resolves to (all of them when ADDR is NULL). */
static int listen_on(const char *addr, const char *port, int *fds, int max)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_PASSIVE,
	};
	struct addrinfo *res, *ai;
	int n = 0, one = 1, rc;
	char name[80];

	rc = getaddrinfo(addr, port, &hints, &res);
	if (rc != 0)
		errx(1, "cannot listen on %s port %s: %s", addr ? addr : "*",
		     port, gai_strerror(rc));
	for (ai = res; ai && n < max; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
				ai->ai_protocol);

		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (ai->ai_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one,
				   sizeof(one));
		format_peer(ai->ai_addr, name, sizeof(name));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
		    listen(fd, 64) < 0) {
			warn("cannot listen on %s", name);
			close(fd);
			continue;
		}
		set_nonblocking(fd);
		debug(1, "listening on %s", name);
		fds[n++] = fd;
	}
	freeaddrinfo(res);
	if (n == 0)
		errx(1, "cannot listen on %s port %s", addr ? addr : "*", port);
	return n;
}

static ONCE int connect_within(int fd, const struct sockaddr *sa, socklen_t len)
{
	struct pollfd pfd = { .fd = fd, .events = POLLOUT };
	int error = 0;
	socklen_t elen = sizeof(error);

	set_nonblocking(fd);
	if (connect(fd, sa, len) < 0 && errno != EINPROGRESS)
		return -1;
	if (poll(&pfd, 1, IO_TIMEOUT_MS) == 0) {
		errno = ETIMEDOUT;
		return -1;
	}
	getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &elen);
	set_blocking(fd);
	errno = error;
	return error ? -1 : 0;
}

/* Returns a connected socket, or -1 with the reason in WHY. */
static int try_dial(const char *host, const char *port, char *why,
		    size_t whylen)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
	};
	struct addrinfo *res, *ai;
	int fd = -1, rc, saved = 0;

	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		snprintf(why, whylen, "%s: %s", host, gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0)
			continue;
		set_tcp_options(fd);
		if (connect_within(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		saved = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		snprintf(why, whylen, "cannot connect to %s port %s: %s", host,
			 port, strerror(saved));
	return fd;
}

static ONCE int dial(const char *host, const char *port)
{
	char why[512];
	int fd = try_dial(host, port, why, sizeof(why));

	if (fd < 0)
		errx(1, "%s", why);
	return fd;
}

/* Blocking, bounded reads and writes for the client's short exchanges. */
static ONCE void read_exact(int fd, void *buf, size_t len, const char *peer,
			    int timeout_ms)
{
	uint8_t *p = buf;

	while (len > 0) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&pfd, 1, timeout_ms) == 0)
			errx(1, "%s: no answer within %d s", peer,
			     timeout_ms / 1000);
		n = read(fd, p, len);
		if (n == 0)
			errx(1, "%s closed the connection", peer);
		if (n < 0 && errno != EINTR)
			err(1, "%s: read", peer);
		if (n > 0) {
			p += n;
			len -= (size_t)n;
		}
	}
}

/* A blocking write of all LEN bytes (a pipe with --via); 0 or -1. */
static int write_fully(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno != EINTR)
			return -1;
		if (n > 0) {
			p += n;
			len -= (size_t)n;
		}
	}
	return 0;
}

static void write_all(int fd, const void *buf, size_t len, const char *peer)
{
	if (write_fully(fd, buf, len) < 0)
		err(1, "%s: write", peer);
}

/* ==== local USB devices ================================================== */

/*
 * Devices are found the way the kernel's usbipd finds them: in sysfs, where
 * the kernel keeps every attribute the handshake needs, always current.
 * libusb only drives a device once it is imported, through a usbfs file
 * descriptor we open ourselves (libusb_wrap_sys_device), so neither udev nor
 * libusb's own device discovery is involved.
 */
#define MAX_INTERFACES	32

static const char *sysfs_usb = "/sys/bus/usb/devices";
static const char *usbfs_dir = "/dev/bus/usb";
static libusb_context *usb;	/* NULL where libusb could not start */

static ONCE const char *speed_name(uint32_t speed)
{
	static const char *names[] = {
		"unknown", "low", "full", "high", "wireless", "super",
		"super+",
	};

	return speed < sizeof(names) / sizeof(names[0]) ? names[speed] : "?";
}

/* sysfs says Mbit/s; the wire wants the kernel's enum usb_device_speed. */
static ONCE uint32_t speed_from_sysfs(const char *mbps)
{
	static const struct {
		const char *mbps;
		uint32_t speed;
	} map[] = {
		{ "1.5", USB_SPEED_LOW },	{ "12", USB_SPEED_FULL },
		{ "480", USB_SPEED_HIGH },
		{ "53.3-480", USB_SPEED_WIRELESS },
		{ "5000", USB_SPEED_SUPER },
		{ "10000", USB_SPEED_SUPER_PLUS },
		{ "20000", USB_SPEED_SUPER_PLUS },
	};
	size_t i;

	for (i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(mbps, map[i].mbps) == 0)
			return map[i].speed;
	return USB_SPEED_UNKNOWN;
}

static ONCE void read_sysfs_attr(const char *name, const char *attr, char *buf,
				 size_t len)
{
	char path[PATH_MAX];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s/%s", sysfs_usb, name, attr);
	buf[0] = '\0';
	f = fopen(path, "r");
	if (!f)
		return;
	if (!fgets(buf, (int)len, f))
		buf[0] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	fclose(f);
}

static ONCE unsigned long sysfs_number(const char *name, const char *attr,
				       int base)
{
	char buf[32];

	read_sysfs_attr(name, attr, buf, sizeof(buf));
	return strtoul(buf, NULL, base);
}

/*
 * "1-1.2" is a device; "usb1" is a root hub and "1-1.2:1.0" an interface.
 * A busid from the network becomes part of a path: digits, '-', '.' only.
 */
static ONCE int is_device_name(const char *name)
{
	size_t len = strlen(name);

	return len > 0 && len < SYSFS_BUS_ID_SIZE && name[0] != '.' &&
	       strchr(name, '-') && strspn(name, "0123456789-.") == len;
}

/*
 * Fills the record the handshake sends, and the interface list that
 * OP_REP_DEVLIST appends to it.  Returns the number of interfaces, or -1
 * if there is no such device.
 */
static ONCE int describe_device(const char *busid, struct usbip_usb_device *rec,
				struct usbip_usb_interface *ifs)
{
	char path[PATH_MAX], real[PATH_MAX], speed[16], intf[64];
	int i, n;

	memset(rec, 0, sizeof(*rec));
	snprintf(path, sizeof(path), "%s/%s", sysfs_usb, busid);
	if (!is_device_name(busid) || !realpath(path, real))
		return -1;
	snprintf(rec->path, sizeof(rec->path), "%.*s", SYSFS_PATH_MAX - 1,
		 real);
	snprintf(rec->busid, sizeof(rec->busid), "%s", busid);
	rec->busnum = (uint32_t)sysfs_number(busid, "busnum", 10);
	rec->devnum = (uint32_t)sysfs_number(busid, "devnum", 10);
	read_sysfs_attr(busid, "speed", speed, sizeof(speed));
	rec->speed = speed_from_sysfs(speed);
	rec->idVendor = (uint16_t)sysfs_number(busid, "idVendor", 16);
	rec->idProduct = (uint16_t)sysfs_number(busid, "idProduct", 16);
	rec->bcdDevice = (uint16_t)sysfs_number(busid, "bcdDevice", 16);
	rec->bDeviceClass = (uint8_t)sysfs_number(busid, "bDeviceClass", 16);
	rec->bDeviceSubClass =
	    (uint8_t)sysfs_number(busid, "bDeviceSubClass", 16);
	rec->bDeviceProtocol =
	    (uint8_t)sysfs_number(busid, "bDeviceProtocol", 16);
	rec->bConfigurationValue =
	    (uint8_t)sysfs_number(busid, "bConfigurationValue", 10);
	rec->bNumConfigurations =
	    (uint8_t)sysfs_number(busid, "bNumConfigurations", 10);
	n = (int)sysfs_number(busid, "bNumInterfaces", 10);
	if (rec->bConfigurationValue == 0 || n > MAX_INTERFACES)
		n = 0;		/* unconfigured: no interfaces to list */
	rec->bNumInterfaces = (uint8_t)n;

	/* Interfaces are named BUSID:CONFIG.NUMBER, as usbipd reads them. */
	for (i = 0; i < n; i++) {
		snprintf(intf, sizeof(intf), "%s:%u.%d", busid,
			 rec->bConfigurationValue, i);
		ifs[i].bInterfaceClass =
		    (uint8_t)sysfs_number(intf, "bInterfaceClass", 16);
		ifs[i].bInterfaceSubClass =
		    (uint8_t)sysfs_number(intf, "bInterfaceSubClass", 16);
		ifs[i].bInterfaceProtocol =
		    (uint8_t)sysfs_number(intf, "bInterfaceProtocol", 16);
		ifs[i].padding = 0;
	}
	return n;
}

/*
 * "1050:0407", four hex digits at most on each side: a device by its
 * VID:PID, which follows it from port to port (a busid has no colon).
 * Returns 0 if ARG is not one.
 */
static int parse_vid_pid(const char *arg, uint16_t *vid, uint16_t *pid)
{
	static const char hex[] = "0123456789abcdefABCDEF";
	size_t a = strspn(arg, hex), b = strspn(arg + a + (arg[a] != 0), hex);

	if (a < 1 || a > 4 || arg[a] != ':' || b < 1 || b > 4 ||
	    arg[a + 1 + b] != '\0')
		return 0;
	*vid = (uint16_t)strtoul(arg, NULL, 16);
	*pid = (uint16_t)strtoul(arg + a + 1, NULL, 16);
	return 1;
}

typedef int device_fn(const struct usbip_usb_device *rec,
		      const struct usbip_usb_interface *ifs, int nifs,
		      void *arg);

/* Calls fn for every device, hubs too, in busid order; stops early when
 * fn returns non-zero. */
static ONCE int for_each_device(device_fn *fn, void *arg)
{
	struct dirent **names;
	int n = scandir(sysfs_usb, &names, NULL, versionsort), i, rc = 0;

	if (n < 0)
		return 0;	/* no USB in this kernel */
	for (i = 0; i < n; i++) {
		struct usbip_usb_device rec;
		struct usbip_usb_interface ifs[MAX_INTERFACES];
		int nifs;

		if (rc == 0 && (nifs = describe_device(names[i]->d_name, &rec,
						       ifs)) >= 0)
			rc = fn(&rec, ifs, nifs, arg);
		free(names[i]);
	}
	free(names);
	return rc;
}

/* ==== the server: its state ============================================== */

/*
 * Bounds on what one client can make the server hold.  Past a limit the
 * server stops reading that client until replies drain: TCP then pushes
 * back on the sender, and no other session is affected.
 */
#define URB_LENGTH_MAX	(16 << 20)	/* default -m: vhci sends < 1 MiB */
#define ISO_PACKETS_MAX	1024
#define OUTQ_LIMIT	(8u << 20)	/* reply bytes queued, not yet sent */
#define OUTQ_MSGS	4096		/* replies queued (each has its URB) */
#define INFLIGHT_LIMIT	1024		/* URBs submitted to libusb */
#define INFLIGHT_BYTES	(64u << 20)	/* their buffers */
#define MAX_CONNS	512
#define HANDSHAKE_MS	10000		/* to send a whole request */
#define EP_NONE		0xff
#define URB_SPARES	8		/* finished URBs a connection keeps, */
#define SPARE_BYTES	(1u << 20)	/*   each with at most this buffer */
#define MAPPED_LIMIT	(4u << 20)	/* usbfs-mapped buffers, all devices */
#define EARLY_UNLINKS	16		/* unlinks held for their submit */

/* DMA memory is cache-coherent here, so usbfs maps it cached: alloc_buf(). */
#if defined(__x86_64__) || defined(__i386__)
#define MAP_USBFS	1
#else
#define MAP_USBFS	0
#endif

/* Bytes queued for a client: an URB's reply or a standalone message. */
struct msg {
	struct msg *next;
	struct urb *urb;		/* freed once sent; NULL: the msg */
	struct iovec iov[3];
	int iovcnt;
};

/*
 * One CMD_SUBMIT: the request, its libusb transfer, then its reply.  The
 * transfer and both buffers outlive the URB: a finished URB waits in its
 * connection's spares for the next CMD_SUBMIT (see get_urb()).
 */
struct urb {
	struct urb *next;		/* in conn->inflight */
	struct conn *conn;
	struct usbip_header cmd;	/* number_of_packets > 0: iso */
	struct libusb_transfer *xfer;
	uint8_t *buf;			/* control: setup, then data */
	size_t bufsize;
	int mapped;			/* buf is usbfs memory (alloc_buf) */
	uint8_t *iso;			/* wire descriptors, then the reply's */
	int max_packets;		/* what xfer and iso have room for */
	int unlinked;			/* a CMD_UNLINK waits on this URB */
	uint32_t unlink_seqnum;
	uint8_t head[USBIP_HEADER_SIZE];
	struct msg reply;
};

enum rx_state {
	RX_OP_COMMON,		/* 8 bytes: which request */
	RX_IMPORT_BUSID,	/* 32 bytes: OP_REQ_IMPORT's body */
	RX_HEADER,		/* 48 bytes: CMD_SUBMIT or CMD_UNLINK */
	RX_OUT_DATA,		/* an OUT transfer's payload */
	RX_ISO_DESC,		/* isochronous packet descriptors */
	RX_NONE,		/* not reading: closing once replies are out */
};

struct conn {
	struct conn *next;
	const struct serve_opts *o;
	int fd;				/* -1 once closed */
	int wfd;			/* the same socket, or stdout */
	char peer[80];
	const char *end_reason;

	enum rx_state rx;		/* reading: rxneed bytes into rxdst */
	uint8_t rxbuf[USBIP_HEADER_SIZE];
	uint8_t *rxdst;
	size_t rxneed, rxhave;
	uint8_t inbuf[8192];		/* read ahead, not yet taken */
	size_t inoff, inlen;
	struct urb *rxurb;

	struct msg *outq, **outtail;	/* writing */
	size_t outbytes, noutq;

	struct urb *spare[URB_SPARES];	/* finished, kept for reuse */
	int nspare;
	int nmapped;			/* URBs with a usbfs-mapped buffer */

	struct urb *inflight;		/* submitted to libusb */
	unsigned ninflight;
	size_t inflight_bytes;
	unsigned ep0_busy;		/* control transfers in libusb */
	struct urb *ep0_held, **ep0_tail;	/* waiting their turn */
	unsigned nheld;

	/* CMD_UNLINKs that came before their CMD_SUBMIT (on_cmd_unlink) */
	struct early_unlink { uint32_t victim, seqnum; } early[EARLY_UNLINKS];
	int nearly;
	uint32_t newest_submit;		/* the highest seqnum submitted yet */
	int submitted;			/* newest_submit is set */
	long long deadline_ms;		/* for the handshake; 0: none */

	/* The imported device, once OP_REQ_IMPORT succeeded. */
	libusb_device_handle *handle;
	char busid[SYSFS_BUS_ID_SIZE];
	uint32_t devid;
	uint8_t altsetting[MAX_INTERFACES];	/* by bInterfaceNumber */
	uint8_t eptype[2][16];		/* [direction][ep]: libusb type */
	int usbfs;			/* its /dev/bus/usb node */
};

/* serve's command line, as every session reads it. */
struct serve_opts {
	const char *addr, *port;	/* listen here (the default) */
	const char *connect_to;		/* --connect HOST[:PORT]: dial out */
	int stdio;			/* --stdio: one session, stdin/stdout */
	long busy_poll_us;		/* --busy-poll: spin after events */
	char **busids;			/* BUSID...: offered; none: all but */
	int nbusids;			/*   hubs */
	struct cidr *allowed;		/* --allow; none: everyone */
	int nallowed;
	int max_length;			/* -m: of one URB */
	struct capture *capture;	/* --pcap FILE, or NULL */
};

static struct conn *conns;
static volatile sig_atomic_t stop_requested;

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/*
 * The story is told in the order a URB lives it, callers before the
 * functions they call; these declarations let C read it that way.
 */
struct server;
struct busy_poll;
struct link;
struct attach_opts;
struct framer;
struct urb_seen;
static void add_conn(int rfd, int wfd, const char *peer,
		     const struct serve_opts *o);
static int count_conns(void);
static void answer_devlist(struct conn *c);
static ONCE int busid_in_use(const char *busid);
static ONCE int import_device(struct conn *c, struct usbip_usb_device *rec,
			      struct usbip_usb_interface *ifs);
static ONCE int open_device(struct conn *c, const struct usbip_usb_device *rec);
static ONCE void learn_endpoints(struct conn *c);
static ONCE int take_interfaces(libusb_device_handle *h);
static ONCE void give_back_interfaces(libusb_device_handle *h);
static ONCE void close_device(struct conn *c);
static int may_read(const struct conn *c);
static ssize_t take_input(struct conn *c, int *from_socket);
static void expect(struct conn *c, enum rx_state rx, void *dst, size_t len);
static void on_input(struct conn *c);
static void on_header(struct conn *c);
static void on_cmd_submit(struct conn *c, const struct usbip_header *h);
static void start_urb(struct urb *u);
static void hold_control(struct conn *c, struct urb *u);
static void submit_urb(struct urb *u);
static int32_t fill_transfer(struct urb *u, int type);
static void inflight_add(struct conn *c, struct urb *u);
static int32_t load_iso(struct urb *u);
static int run_intercepted(struct urb *u);
static ONCE int set_configuration(struct conn *c, int value);
static int set_interface(struct conn *c, int intf, int alt);
static void on_cmd_unlink(struct conn *c, const struct usbip_header *h);
static int is_early_unlink(const struct conn *c, uint32_t victim);
static void hold_unlink(struct conn *c, uint32_t victim, uint32_t seqnum);
static void match_early_unlinks(struct conn *c, struct urb *u);
static void LIBUSB_CALL on_transfer_done(struct libusb_transfer *x);
static void answer_transfer(struct urb *u);
static void inflight_remove(struct conn *c, struct urb *u);
static int32_t finish_iso(struct urb *u, int32_t *error_count);
static int32_t urb_status(enum libusb_transfer_status s);
static ONCE int32_t submit_errno(int rc);
static int urb_packets(const struct urb *u);
static void queue_ret_submit(struct urb *u, int32_t status, int32_t actual,
			     int32_t error_count);
static void queue_ret_unlink(struct conn *c, uint32_t seqnum, int32_t status);
static void answer_unlinked(struct urb *u);
static void queue_bytes(struct conn *c, const void *data, size_t len);
static void queue_msg(struct conn *c, struct msg *m);
static void consume_output(struct conn *c, size_t n);
static void free_msg(struct msg *m);
static void end_after_replies(struct conn *c, const char *why);
static void protocol_error(struct conn *c, const char *fmt, ...);
static void close_conn(struct conn *c, const char *why);
static void give_back_device(struct conn *c);
static int finished(struct server *sv);
static int next_wakeup_ms(struct server *sv);
static void dispatch(struct server *sv, int ready);
static void build_pollset(struct server *sv);
static void begin_stop(struct server *sv);
static ONCE void pause_accepting(struct server *sv);
static ONCE void resume_accepting(struct server *sv, int freed);
static ONCE const char *op_status_name(uint32_t status);
static void find_busid(const struct attach_opts *o,
		       char busid[SYSFS_BUS_ID_SIZE]);
static ONCE void close_link(struct link *l);
static void trace_header(const char *who, const struct usbip_header *h,
			 int type);
static void trace_reply(const char *who, const uint8_t *head);
static ONCE void parse_allow(struct serve_opts *o, const char *list);
static int is_allowed(const struct serve_opts *o, const struct sockaddr *sa);
static ONCE void redial(struct server *sv);
static ONCE int backoff(int *next_ms);
static ONCE void accept_one(const char *where, struct link *l);
static ONCE void spawn_via(const char *command, struct link *l);
static int relay(int vhci, const struct link *l,
		 const struct attach_opts *o, uint32_t devid);
static int pass_both_ways(int vhci, const struct link *l, long busy_poll_us,
			  struct framer *f);
static ONCE void end_child(struct link *l);
static ONCE int attach_persist(const struct attach_opts *o, const char *dir);
static ONCE int import_in_child(const struct attach_opts *o, const char *dir,
				pid_t *pid);
static ONCE void wait_while_attached(const char *dir, int port);
static ONCE struct capture *open_capture(const char *path);
static void capture_submit(struct urb *u);
static void capture_reply(struct urb *u, int32_t status, int32_t actual);
static void capture_served(struct urb *u, char type, int32_t status,
			   int32_t length);
static uint8_t usbmon_type(const struct urb *u);
static void capture_passing(struct framer *f);
static void capture_urb(struct capture *cap, const struct urb_seen *s,
			char type, int32_t status, uint32_t length);
static struct usbmon_iso_desc usbmon_desc(const struct urb_seen *s,
					  uint32_t i, char type);
static ONCE void stop_capture(struct capture *cap);
static int capture_data(FILE *f, const uint8_t *data, uint32_t len);
static void put_urb(struct urb *u);
static struct urb *get_urb(struct conn *c, size_t len, int np);
static ONCE void drop_spares(struct conn *c);
static void alloc_buf(struct urb *u, size_t len);
static void free_buf(struct urb *u);
static int busy_poll_wait(const struct busy_poll *b, int wait_ms);
static void busy_poll_after(struct busy_poll *b, int ready, int waited_ms);
static ONCE long parse_busy_poll(const char *arg);

/* ==== the server, as one URB lives it ==================================== */

/* -- a client connects -- */

/* Returns -1 when the process or the system is out of descriptors. */
static int accept_client(const struct serve_opts *o, int lfd)
{
	static int said_full;
	struct sockaddr_storage sa;
	socklen_t len = sizeof(sa);
	char peer[80];
	int fd = accept4(lfd, (struct sockaddr *)&sa, &len,
			 SOCK_NONBLOCK | SOCK_CLOEXEC);

	if (fd < 0)
		return errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
		       errno == ENOMEM ? -1 : 0;
	format_peer((struct sockaddr *)&sa, peer, sizeof(peer));
	if (!is_allowed(o, (struct sockaddr *)&sa)) {
		warnx("%s: refused: not in --allow", peer);
		close(fd);
		return 0;
	}
	if (count_conns() >= MAX_CONNS) {
		if (!said_full)
			warnx("%s: refused: %d connections already", peer,
			      MAX_CONNS);
		said_full = 1;
		close(fd);
		return 0;
	}
	said_full = 0;
	set_tcp_options(fd);
	add_conn(fd, fd, peer, o);
	return 0;
}

/* A new client: it has HANDSHAKE_MS to send its whole request. */
static void add_conn(int rfd, int wfd, const char *peer,
		     const struct serve_opts *o)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (!c) {
		warnx("%s: refused: out of memory", peer);
		close(rfd);
		if (wfd != rfd)
			close(wfd);
		return;
	}
	c->o = o;
	c->fd = rfd;
	c->wfd = wfd;
	set_nonblocking(rfd);
	set_nonblocking(wfd);
	c->outtail = &c->outq;
	c->ep0_tail = &c->ep0_held;
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	expect(c, RX_OP_COMMON, c->rxbuf, OP_COMMON_SIZE);
	c->deadline_ms = now_ms() + HANDSHAKE_MS;
	c->next = conns;
	conns = c;
	debug(1, "%s: connected", c->peer);
}

static int count_conns(void)
{
	struct conn *c;
	int n = 0;

	for (c = conns; c; c = c->next)
		n++;
	return n;
}

/* -- the handshake: OP_REQ_DEVLIST and OP_REQ_IMPORT -- */

static void on_op_common(struct conn *c)
{
	struct op_common op;

	unpack_op_common(c->rxbuf, &op);
	if (op.version != USBIP_VERSION)
		protocol_error(c, "USB/IP version %x.%02x, expected 1.11",
			       op.version >> 8, op.version & 0xff);
	else if (op.code == OP_REQ_DEVLIST)
		answer_devlist(c);
	else if (op.code == OP_REQ_IMPORT)
		expect(c, RX_IMPORT_BUSID, c->rxbuf, SYSFS_BUS_ID_SIZE);
	else
		protocol_error(c, "unknown request 0x%04x", op.code);
}

/* Whether serve shares REC: named on its command line by busid or by
 * VID:PID (plugged in later too), or (with none named) not a hub. */
static ONCE int is_offered(const struct serve_opts *o,
			   const struct usbip_usb_device *rec)
{
	uint16_t vid, pid;
	int i;

	if (o->nbusids == 0)
		return rec->bDeviceClass != LIBUSB_CLASS_HUB;
	for (i = 0; i < o->nbusids; i++)
		if (parse_vid_pid(o->busids[i], &vid, &pid) ?
		    vid == rec->idVendor && pid == rec->idProduct :
		    strcmp(o->busids[i], rec->busid) == 0)
			return 1;
	return 0;
}

struct devlist {
	const struct serve_opts *o;
	uint8_t *buf;			/* NULL: out of memory */
	size_t len;
	uint32_t ndev;
};

static ONCE int append_device(const struct usbip_usb_device *rec,
			      const struct usbip_usb_interface *ifs, int nifs,
			      void *arg)
{
	struct devlist *dl = arg;
	uint8_t *p;
	int i;

	if (!is_offered(dl->o, rec))
		return 0;
	p = realloc(dl->buf, dl->len + USBIP_DEVICE_SIZE +
		    (size_t)nifs * USBIP_INTERFACE_SIZE);
	if (!p) {
		free(dl->buf);
		dl->buf = NULL;
		return 1;
	}
	dl->buf = p;
	pack_device(p + dl->len, rec);
	dl->len += USBIP_DEVICE_SIZE;
	for (i = 0; i < nifs; i++, dl->len += USBIP_INTERFACE_SIZE)
		pack_interface(p + dl->len, &ifs[i]);
	dl->ndev++;
	return 0;
}

static void answer_devlist(struct conn *c)
{
	size_t head = OP_COMMON_SIZE + sizeof(struct op_devlist_reply);
	struct devlist dl = { c->o, malloc(head), head, 0 };

	if (dl.buf)
		for_each_device(append_device, &dl);
	if (!dl.buf) {
		end_after_replies(c, "out of memory for the device list");
		return;
	}
	pack_op_common(dl.buf, OP_REP_DEVLIST, ST_OK);
	put32(dl.buf + OP_COMMON_SIZE, dl.ndev);
	queue_bytes(c, dl.buf, dl.len);
	free(dl.buf);
	debug(1, "%s: listed %u devices", c->peer, dl.ndev);
	end_after_replies(c, "device list sent");
}

static void answer_import(struct conn *c)
{
	uint8_t rep[OP_REP_IMPORT_SIZE];
	struct usbip_usb_interface ifs[MAX_INTERFACES];
	struct usbip_usb_device rec;
	uint32_t status;

	if (memchr(c->rxbuf, '\0', SYSFS_BUS_ID_SIZE) == NULL) {
		protocol_error(c, "OP_REQ_IMPORT busid is not terminated");
		return;
	}
	memcpy(c->busid, c->rxbuf, SYSFS_BUS_ID_SIZE);
	if (describe_device(c->busid, &rec, ifs) < 0 ||
	    !is_offered(c->o, &rec))
		status = ST_NODEV;
	else if (busid_in_use(c->busid))
		status = ST_DEV_BUSY;
	else
		status = import_device(c, &rec, ifs);

	if (status != ST_OK) {
		char busid[ESCAPED(SYSFS_BUS_ID_SIZE)];

		warnx("%s: import of %s refused: %s", c->peer,
		      printable(c->busid, sizeof(c->busid), busid),
		      op_status_name(status));
		pack_op_common(rep, OP_REP_IMPORT, status);
		queue_bytes(c, rep, OP_COMMON_SIZE);
		end_after_replies(c, "import refused");
	} else {
		c->devid = rec.busnum << 16 | rec.devnum;
		c->deadline_ms = 0;	/* URB phase: idle is normal now */
		expect(c, RX_HEADER, c->rxbuf, USBIP_HEADER_SIZE);
		pack_op_common(rep, OP_REP_IMPORT, ST_OK);
		pack_device(rep + OP_COMMON_SIZE, &rec);
		queue_bytes(c, rep, sizeof(rep));
		warnx("%s: imported %s (%04x:%04x, %s speed)", c->peer,
		      c->busid, rec.idVendor, rec.idProduct,
		      speed_name(rec.speed));
	}
}

static ONCE int busid_in_use(const char *busid)
{
	struct conn *c;

	for (c = conns; c; c = c->next)
		if (c->handle && strcmp(c->busid, busid) == 0)
			return 1;
	return 0;
}

/*
 * Opens and claims the device REC names, and resets it: a server killed
 * mid-session leaves a device mid-command, and the client's port reset
 * never reaches it (vhci_hcd emulates its own ports), so every session
 * starts from a reset device.  A reset after which the kernel enumerates
 * the device anew (its descriptors changed) leaves the handle stale:
 * libusb says NOT_FOUND, and the device is looked up by its busid and
 * opened once more.  Returns an ST_* status, and REC as opened.
 */
static ONCE int import_device(struct conn *c, struct usbip_usb_device *rec,
			      struct usbip_usb_interface *ifs)
{
	int tries = 0, status, rc;

	do {
		status = open_device(c, rec);
		if (status != ST_OK)
			return status;
		rc = libusb_reset_device(c->handle);
		if (rc == 0) {
			memset(c->altsetting, 0, sizeof(c->altsetting));
			learn_endpoints(c);
			return ST_OK;
		}
		give_back_interfaces(c->handle);
		close_device(c);
	} while (rc == LIBUSB_ERROR_NOT_FOUND && ++tries < 2 &&
		 describe_device(c->busid, rec, ifs) >= 0);
	warnx("%s: cannot reset %s: %s", c->peer, c->busid,
	      libusb_strerror(rc));
	return ST_DEV_ERR;
}

/* usbfs's node for the device, handed to libusb as an open descriptor. */
static ONCE int open_device(struct conn *c, const struct usbip_usb_device *rec)
{
	char path[PATH_MAX];
	int rc;

	if (!usb)
		return ST_DEV_ERR;
	snprintf(path, sizeof(path), "%s/%03u/%03u", usbfs_dir, rec->busnum,
		 rec->devnum);
	c->usbfs = open(path, O_RDWR | O_CLOEXEC);
	if (c->usbfs < 0) {
		rc = errno;
		warn("%s: cannot open %s (%s)", c->peer, c->busid, path);
		return rc == EACCES || rc == EPERM ? ST_NA : ST_DEV_ERR;
	}
	rc = libusb_wrap_sys_device(usb, (intptr_t)c->usbfs, &c->handle);
	if (rc != 0) {
		warnx("%s: cannot open %s: %s", c->peer, c->busid,
		      libusb_strerror(rc));
		close(c->usbfs);
		c->handle = NULL;
		return ST_DEV_ERR;
	}
	rc = take_interfaces(c->handle);
	if (rc != 0) {
		warnx("%s: cannot claim %s: %s", c->peer, c->busid,
		      libusb_strerror(rc));
		give_back_interfaces(c->handle);
		close_device(c);
		return ST_DEV_BUSY;
	}
	return ST_OK;
}

static ONCE void learn_endpoints(struct conn *c)
{
	libusb_device *dev = libusb_get_device(c->handle);
	struct libusb_config_descriptor *cfg;
	int i, a, e;

	memset(c->eptype, EP_NONE, sizeof(c->eptype));
	if (libusb_get_active_config_descriptor(dev, &cfg) != 0)
		return;
	for (i = 0; i < cfg->bNumInterfaces; i++) {
		const struct libusb_interface *intf = &cfg->interface[i];

		for (a = 0; a < intf->num_altsetting; a++) {
			const struct libusb_interface_descriptor *alt =
			    &intf->altsetting[a];

			if (alt->bInterfaceNumber >= MAX_INTERFACES ||
			    alt->bAlternateSetting !=
			    c->altsetting[alt->bInterfaceNumber])
				continue;
			for (e = 0; e < alt->bNumEndpoints; e++) {
				uint8_t addr =
				    alt->endpoint[e].bEndpointAddress;

				c->eptype[addr & LIBUSB_ENDPOINT_DIR_MASK ?
					  USBIP_DIR_IN : USBIP_DIR_OUT]
					 [addr & LIBUSB_ENDPOINT_ADDRESS_MASK] =
				    alt->endpoint[e].bmAttributes &
				    LIBUSB_TRANSFER_TYPE_MASK;
			}
		}
	}
	libusb_free_config_descriptor(cfg);
}

/* The active configuration's bInterfaceNumbers, in IFNUM; returns how
 * many (none when unconfigured). */
static ONCE int active_interfaces(libusb_device_handle *h,
				  uint8_t ifnum[UINT8_MAX + 1])
{
	struct libusb_config_descriptor *cfg;
	int i;

	if (libusb_get_active_config_descriptor(libusb_get_device(h), &cfg))
		return 0;
	for (i = 0; i < cfg->bNumInterfaces; i++)
		ifnum[i] = cfg->interface[i].altsetting[0].bInterfaceNumber;
	libusb_free_config_descriptor(cfg);
	return i;
}

/* Every interface ours, from whatever kernel driver had it; a libusb
 * error if one cannot be claimed. */
static ONCE int take_interfaces(libusb_device_handle *h)
{
	uint8_t ifnum[UINT8_MAX + 1];
	int n = active_interfaces(h, ifnum), i, rc = 0;

	for (i = 0; i < n && rc == 0; i++) {
		if (libusb_kernel_driver_active(h, ifnum[i]) == 1)
			libusb_detach_kernel_driver(h, ifnum[i]);
		rc = libusb_claim_interface(h, ifnum[i]);
	}
	return rc;
}

static ONCE void release_interfaces(libusb_device_handle *h)
{
	uint8_t ifnum[UINT8_MAX + 1];
	int n = active_interfaces(h, ifnum), i;

	for (i = 0; i < n; i++)
		libusb_release_interface(h, ifnum[i]);
}

/*
 * Rebinding whatever kernel driver matches is what "give back" means.
 * Every interface is released first: a driver such as cdc_acm claims its
 * sibling interfaces when it probes, so none may still be ours then.
 */
static ONCE void give_back_interfaces(libusb_device_handle *h)
{
	uint8_t ifnum[UINT8_MAX + 1];
	int n = active_interfaces(h, ifnum), i;

	release_interfaces(h);
	for (i = 0; i < n; i++)
		libusb_attach_kernel_driver(h, ifnum[i]);
}

static ONCE void close_device(struct conn *c)
{
	libusb_close(c->handle);
	c->handle = NULL;
	close(c->usbfs);
	c->usbfs = -1;
}

/* -- reading: the input state machine -- */

/*
 * A connection expects one piece at a time (expect(), enum rx_state).
 * This reads what C expects and acts on each complete piece
 * (on_input()) while C may read (may_read()): from what was read ahead
 * and, with FROM_SOCKET (poll() said so), from the socket until empty.
 */
static void read_input(struct conn *c, int from_socket)
{
	while (may_read(c)) {
		if (c->rxhave < c->rxneed) {
			ssize_t n = take_input(c, &from_socket);

			if (n == 0) {
				close_conn(c, c->handle ?
					   "client closed the connection" :
					   "client left");
				return;
			}
			if (n < 0) {
				if (errno != EAGAIN && errno != EINTR)
					close_conn(c, strerror(errno));
				return;
			}
			c->rxhave += (size_t)n;
		}
		if (c->rxhave == c->rxneed)
			on_input(c);
	}
}

/* Whether C is read at all: open, expecting input, under every limit. */
static int may_read(const struct conn *c)
{
	return c->fd >= 0 && c->rx != RX_NONE && c->outbytes < OUTQ_LIMIT &&
	       c->noutq < OUTQ_MSGS &&
	       c->ninflight + c->nheld < INFLIGHT_LIMIT &&
	       c->inflight_bytes < INFLIGHT_BYTES;
}

/* Input read ahead and not yet taken: poll() would not wake us for it. */
static int has_read_ahead(const struct conn *c)
{
	return c->inoff < c->inlen && may_read(c);
}

/*
 * Moves expected bytes into rxdst; returns how many, 0 at EOF, or -1 with
 * errno (EAGAIN: nothing to take).  Headers and short payloads come out
 * of a read-ahead buffer, so one read() serves several of them; a large
 * OUT payload is read straight into its transfer buffer.  A short read
 * means the socket is empty: *FROM_SOCKET is cleared, and the next read()
 * waits for poll() instead of failing with EAGAIN.
 */
static ssize_t take_input(struct conn *c, int *from_socket)
{
	size_t want = c->rxneed - c->rxhave, n = c->inlen - c->inoff;
	ssize_t got;

	if (n == 0 && !*from_socket) {
		errno = EAGAIN;
		return -1;
	}
	if (n == 0 && want >= sizeof(c->inbuf)) {
		got = read(c->fd, c->rxdst + c->rxhave, want);
		*from_socket = got < 0 || (size_t)got == want;
		return got;
	}
	if (n == 0) {
		got = read(c->fd, c->inbuf, sizeof(c->inbuf));
		if (got <= 0)
			return got;
		*from_socket = (size_t)got == sizeof(c->inbuf);
		c->inoff = 0;
		c->inlen = n = (size_t)got;
	}
	n = n < want ? n : want;
	memcpy(c->rxdst + c->rxhave, c->inbuf + c->inoff, n);
	c->inoff += n;
	return (ssize_t)n;
}

/* What to read next.  RX_NONE is final: a session that ends stays ended. */
static void expect(struct conn *c, enum rx_state rx, void *dst, size_t len)
{
	if (c->rx == RX_NONE)
		return;
	c->rx = rx;
	c->rxdst = dst;
	c->rxneed = len;
	c->rxhave = 0;
}

/* The current read is complete: act on it and say what to read next. */
static void on_input(struct conn *c)
{
	struct urb *u = c->rxurb;

	switch (c->rx) {
	case RX_OP_COMMON:
		on_op_common(c);
		break;
	case RX_IMPORT_BUSID:
		answer_import(c);
		break;
	case RX_HEADER:
		on_header(c);
		break;
	case RX_OUT_DATA:
		if (urb_packets(u) > 0) {
			expect(c, RX_ISO_DESC, u->iso,
			       (size_t)u->cmd.u.cmd_submit.number_of_packets *
			       USBIP_ISO_DESC_SIZE);
			break;
		}
		/* fall through */
	case RX_ISO_DESC:
		c->rxurb = NULL;
		expect(c, RX_HEADER, c->rxbuf, USBIP_HEADER_SIZE);
		start_urb(u);
		break;
	case RX_NONE:
		break;
	}
}

static void on_header(struct conn *c)
{
	struct usbip_header h;

	unpack_header(c->rxbuf, &h);
	if (h.base.command != USBIP_CMD_SUBMIT &&
	    h.base.command != USBIP_CMD_UNLINK) {
		protocol_error(c, "unknown command %u", h.base.command);
	} else if (h.base.devid != c->devid) {
		protocol_error(c, "seq %u: devid %08x, expected %08x",
			       h.base.seqnum, h.base.devid, c->devid);
	} else if (h.base.command == USBIP_CMD_UNLINK) {
		on_cmd_unlink(c, &h);
		expect(c, RX_HEADER, c->rxbuf, USBIP_HEADER_SIZE);
	} else if (h.base.direction > USBIP_DIR_IN || h.base.ep > 15) {
		protocol_error(c, "seq %u: bad endpoint %u direction %u",
			       h.base.seqnum, h.base.ep, h.base.direction);
	} else {
		on_cmd_submit(c, &h);
	}
}

/* -- CMD_SUBMIT: the URB goes to the device -- */

static void on_cmd_submit(struct conn *c, const struct usbip_header *h)
{
	const struct usbip_header_cmd_submit *cmd = &h->u.cmd_submit;
	int len = cmd->transfer_buffer_length, np = cmd->number_of_packets;
	size_t setup = h->base.ep == 0 ? LIBUSB_CONTROL_SETUP_SIZE : 0;
	struct urb *u;

	if (len < 0 || len > c->o->max_length) {
		protocol_error(c, "seq %u: transfer length %d out of range",
			       h->base.seqnum, len);
		return;
	}
	/* The kernel's usbip_protocol.rst has non-iso URBs say -1. */
	if (np < 0)
		np = 0;
	if (np > ISO_PACKETS_MAX) {
		protocol_error(c, "seq %u: %d iso packets out of range",
			       h->base.seqnum, np);
		return;
	}
	u = get_urb(c, setup + (size_t)len + 1, np);
	if (!u) {
		static char why[64];

		/* Its OUT data cannot be skipped without a buffer: the end. */
		snprintf(why, sizeof(why), "no memory for an URB of %d bytes",
			 len);
		end_after_replies(c, why);
		return;
	}
	u->cmd = *h;
	u->cmd.u.cmd_submit.number_of_packets = np;
	memcpy(u->buf, cmd->setup, setup);
	match_early_unlinks(c, u);
	trace_header(c->peer, h, c->eptype[h->base.direction][h->base.ep]);

	c->rxurb = u;
	if (h->base.direction == USBIP_DIR_OUT && len > 0)
		expect(c, RX_OUT_DATA, u->buf + setup, (size_t)len);
	else if (np > 0)
		expect(c, RX_ISO_DESC, u->iso,
		       (size_t)np * USBIP_ISO_DESC_SIZE);
	else
		expect(c, RX_OUT_DATA, NULL, 0);
}

/* A CMD_SUBMIT read in full: cancelled already, held, or run. */
static void start_urb(struct urb *u)
{
	struct conn *c = u->conn;

	capture_submit(u);
	if (u->unlinked)
		answer_unlinked(u);
	else if (u->cmd.base.ep == 0 && (c->ep0_busy > 0 || c->ep0_held))
		hold_control(c, u);
	else
		submit_urb(u);
}

/*
 * A device runs the control requests queued on endpoint 0 one after the
 * other, and drivers count on their completions coming back in that
 * order.  Some requests are answered at once here (run_intercepted(), or
 * refused before they reach the device); were they let through while an
 * earlier one is still with the device, their replies would overtake it.
 * So a control request waits until the one before it is back: the bus
 * would have run them one at a time anyway.
 */
static void hold_control(struct conn *c, struct urb *u)
{
	u->next = NULL;
	*c->ep0_tail = u;
	c->ep0_tail = &u->next;
	c->nheld++;
}

/* Takes the held request SEQNUM out of the queue; NULL if not held. */
static struct urb *unhold_control(struct conn *c, uint32_t seqnum)
{
	struct urb **pp, *u;

	for (pp = &c->ep0_held; (u = *pp) != NULL; pp = &u->next) {
		if (u->cmd.base.seqnum == seqnum) {
			*pp = u->next;
			if (!*pp)
				c->ep0_tail = pp;
			c->nheld--;
			return u;
		}
	}
	return NULL;
}

/* The URB goes to libusb, or is answered here and now. */
static void submit_urb(struct urb *u)
{
	struct conn *c = u->conn;
	unsigned ep = u->cmd.base.ep, dir = u->cmd.base.direction;
	int type = ep == 0 ? LIBUSB_TRANSFER_TYPE_CONTROL : c->eptype[dir][ep];
	int32_t status;
	int rc;

	/* Iso packets go with an iso endpoint, and only with one. */
	if ((type == LIBUSB_TRANSFER_TYPE_ISOCHRONOUS) !=
	    (urb_packets(u) > 0)) {
		queue_ret_submit(u, -EINVAL, 0, 0);
		return;
	}
	if (type == LIBUSB_TRANSFER_TYPE_CONTROL && run_intercepted(u))
		return;
	/* A reused transfer keeps what its last fill left: reset that. */
	u->xfer->num_iso_packets = 0;
	u->xfer->flags = u->cmd.u.cmd_submit.transfer_flags & URB_ZERO_PACKET ?
			 LIBUSB_TRANSFER_ADD_ZERO_PACKET : 0;
	status = fill_transfer(u, type);
	if (status == 0) {
		rc = libusb_submit_transfer(u->xfer);
		if (rc == 0) {
			inflight_add(c, u);
			return;
		}
		status = submit_errno(rc);
		if (rc == LIBUSB_ERROR_NO_DEVICE)
			end_after_replies(c, "device unplugged");
	}
	/* Refused before it reached the device: answer at once, no data. */
	queue_ret_submit(u, status, 0, 0);
}

/*
 * Fills U's libusb transfer for an endpoint of TYPE; returns 0, or the
 * status that refuses the URB before it reaches the device.
 */
static int32_t fill_transfer(struct urb *u, int type)
{
	struct conn *c = u->conn;
	unsigned ep = u->cmd.base.ep, dir = u->cmd.base.direction;
	unsigned char addr =
	    (unsigned char)(ep | (dir ? LIBUSB_ENDPOINT_IN : 0));
	int len = u->cmd.u.cmd_submit.transfer_buffer_length;
	struct libusb_transfer *x = u->xfer;

	switch (type) {
	case LIBUSB_TRANSFER_TYPE_CONTROL:
		libusb_fill_control_transfer(x, c->handle, u->buf,
					     on_transfer_done, u, 0);
		return libusb_le16_to_cpu(libusb_control_transfer_get_setup(
			x)->wLength) > len ? -EINVAL : 0;
	case LIBUSB_TRANSFER_TYPE_BULK:
		libusb_fill_bulk_transfer(x, c->handle, addr, u->buf, len,
					  on_transfer_done, u, 0);
		return 0;
	case LIBUSB_TRANSFER_TYPE_INTERRUPT:
		libusb_fill_interrupt_transfer(x, c->handle, addr, u->buf, len,
					       on_transfer_done, u, 0);
		return 0;
	case LIBUSB_TRANSFER_TYPE_ISOCHRONOUS:
		libusb_fill_iso_transfer(x, c->handle, addr, u->buf, len,
					 urb_packets(u), on_transfer_done, u,
					 0);
		return load_iso(u);
	default:
		return -EPIPE;	/* no such endpoint right now */
	}
}

static void inflight_add(struct conn *c, struct urb *u)
{
	u->next = c->inflight;
	c->inflight = u;
	c->ninflight++;
	c->inflight_bytes += (size_t)u->xfer->length;
	if (u->cmd.base.ep == 0)
		c->ep0_busy++;
}

/* Packs OUT iso packets back to back, the layout libusb sends from. */
static int32_t load_iso(struct urb *u)
{
	struct libusb_transfer *x = u->xfer;
	uint32_t pos = 0, end = 0;
	int i;

	for (i = 0; i < x->num_iso_packets; i++) {
		struct usbip_iso_packet_descriptor d;

		unpack_iso_desc(u->iso + (size_t)i * USBIP_ISO_DESC_SIZE, &d);
		if (d.offset < end || d.length > (uint32_t)INT32_MAX ||
		    d.offset + (uint64_t)d.length >
		    (uint64_t)u->cmd.u.cmd_submit.transfer_buffer_length)
			return -EINVAL;
		if (u->cmd.base.direction == USBIP_DIR_OUT)
			memmove(u->buf + pos, u->buf + d.offset, d.length);
		x->iso_packet_desc[i].length = d.length;
		pos += d.length;
		end = d.offset + d.length;
	}
	return 0;
}

/* Names from USB 2.0 chapter 9 (and 11, hubs) that libusb does not have. */
#define USB_TYPE_MASK		0x60	/* bmRequestType: standard/class/... */
#define USB_RECIP_MASK		0x1f	/* bmRequestType: device/... */
#define USB_ENDPOINT_HALT	0	/* feature selectors */
#define USB_PORT_FEAT_RESET	4

/*
 * The host's USB core must see these as real operations (stub_rx.c in the
 * kernel does the same), or its idea of toggles and altsettings drifts
 * from the device's.  Returns 1 when the request was handled here.
 */
static int run_intercepted(struct urb *u)
{
	const uint8_t *s = u->cmd.u.cmd_submit.setup;
	uint8_t type = s[0], req = s[1];
	uint16_t value = (uint16_t)(s[2] | s[3] << 8);
	uint16_t index = (uint16_t)(s[4] | s[5] << 8);
	struct conn *c = u->conn;
	int rc;

	/* usbfs clears no halt on endpoint 0: the device itself answers. */
	if (type == LIBUSB_RECIPIENT_ENDPOINT &&
	    req == LIBUSB_REQUEST_CLEAR_FEATURE &&
	    value == USB_ENDPOINT_HALT &&
	    (index & LIBUSB_ENDPOINT_ADDRESS_MASK) != 0)
		rc = libusb_clear_halt(c->handle, (uint8_t)index);
	else if (type == LIBUSB_RECIPIENT_INTERFACE &&
		 req == LIBUSB_REQUEST_SET_INTERFACE)
		rc = set_interface(c, index, value);
	else if (type == LIBUSB_RECIPIENT_DEVICE &&
		 req == LIBUSB_REQUEST_SET_CONFIGURATION)
		rc = set_configuration(c, value);
	else if (type == (LIBUSB_REQUEST_TYPE_CLASS | LIBUSB_RECIPIENT_OTHER) &&
		 req == LIBUSB_REQUEST_SET_FEATURE &&
		 value == USB_PORT_FEAT_RESET)
		rc = libusb_reset_device(c->handle);	/* the device: a hub */
	else
		return 0;
	debug(1, "%s: ran request %02x %02x %04x %04x: %s", c->peer, type,
	      req, value, index, rc ? libusb_strerror(rc) : "ok");
	queue_ret_submit(u, rc ? submit_errno(rc) : 0, 0, 0);
	return 1;
}

/*
 * usbfs changes configuration only with every interface released.  They
 * are not given back to kernel drivers meanwhile (a driver would grab
 * them and the change would fail): whatever configuration is active
 * afterwards, new or unchanged, has its interfaces claimed again.
 */
static ONCE int set_configuration(struct conn *c, int value)
{
	int cur = -1, rc, claimed;

	if (libusb_get_configuration(c->handle, &cur) == 0 && cur == value)
		return 0;
	release_interfaces(c->handle);
	rc = libusb_set_configuration(c->handle, value);
	claimed = take_interfaces(c->handle);
	memset(c->altsetting, 0, sizeof(c->altsetting));
	learn_endpoints(c);
	return rc ? rc : claimed;
}

static int set_interface(struct conn *c, int intf, int alt)
{
	int rc = libusb_set_interface_alt_setting(c->handle, intf, alt);

	if (rc == 0 && intf < MAX_INTERFACES) {
		c->altsetting[intf] = (uint8_t)alt;
		learn_endpoints(c);
	}
	return rc;
}

/* -- CMD_UNLINK: the driver gives up on an URB -- */

/*
 * Every unlink gets a RET_UNLINK that echoes the unlink's own seqnum, and
 * never before the RET_SUBMIT of an URB already answered: -ECONNRESET
 * when the URB was stopped before it completed (and then it gets no
 * RET_SUBMIT), 0 when it was too late (see answer_transfer()).
 */
static void on_cmd_unlink(struct conn *c, const struct usbip_header *h)
{
	uint32_t victim = h->u.cmd_unlink.seqnum;
	struct urb *u;

	trace_header(c->peer, h, -1);
	for (u = c->inflight; u; u = u->next) {
		if (u->cmd.base.seqnum == victim && !u->unlinked) {
			u->unlinked = 1;
			u->unlink_seqnum = h->base.seqnum;
			libusb_cancel_transfer(u->xfer);
			return;	/* answered from on_transfer_done() */
		}
	}
	if ((u = unhold_control(c, victim)) != NULL) {
		u->unlink_seqnum = h->base.seqnum;
		answer_unlinked(u);
	} else if (is_early_unlink(c, victim)) {
		hold_unlink(c, victim, h->base.seqnum);
	} else {
		/* Answered already: its RET_SUBMIT is queued ahead. */
		queue_ret_unlink(c, h->base.seqnum, 0);
	}
}

/*
 * vhci_hcd sends submits and unlinks from two queues, and its sender can
 * put a CMD_UNLINK on the wire before the CMD_SUBMIT it names (seen with
 * Linux 6.12).  Its seqnums grow by one per command, modulo 2^32, and a
 * device's submits leave in seqnum order: an unlink that names a seqnum
 * newer than every submit so far is for an URB still on its way.  It is
 * held, and that URB is answered as cancelled the moment it arrives.
 * A submit that passes a held seqnum means its URB will never come.
 */
static int seq_after(uint32_t a, uint32_t b)
{
	return (int32_t)(a - b) > 0;
}

static int is_early_unlink(const struct conn *c, uint32_t victim)
{
	return !c->submitted || seq_after(victim, c->newest_submit);
}

/* A client that holds more than vhci_hcd ever would loses the oldest. */
static void hold_unlink(struct conn *c, uint32_t victim, uint32_t seqnum)
{
	if (c->nearly == EARLY_UNLINKS) {
		queue_ret_unlink(c, c->early[0].seqnum, 0);
		memmove(c->early, c->early + 1,
			(EARLY_UNLINKS - 1) * sizeof(c->early[0]));
		c->nearly--;
	}
	c->early[c->nearly++] = (struct early_unlink){ victim, seqnum };
}

/* U's CMD_SUBMIT arrived: was it unlinked already? */
static void match_early_unlinks(struct conn *c, struct urb *u)
{
	uint32_t seq = u->cmd.base.seqnum;
	int i, kept = 0;

	if (is_early_unlink(c, seq))
		c->newest_submit = seq;
	c->submitted = 1;
	for (i = 0; i < c->nearly; i++) {
		struct early_unlink e = c->early[i];

		if (e.victim == seq) {
			u->unlinked = 1;
			u->unlink_seqnum = e.seqnum;
		} else if (seq_after(seq, e.victim)) {
			queue_ret_unlink(c, e.seqnum, 0);	/* never came */
		} else {
			c->early[kept++] = e;
		}
	}
	c->nearly = kept;
}

/* -- completion: the device is done with it -- */

/* libusb calls this from libusb_handle_events(): one URB is done. */
static void LIBUSB_CALL on_transfer_done(struct libusb_transfer *x)
{
	struct urb *u = x->user_data;
	struct conn *c = u->conn;
	int control = u->cmd.base.ep == 0;

	inflight_remove(c, u);
	if (c->fd < 0) {
		put_urb(u);
		return;
	}
	answer_transfer(u);
	/* Endpoint 0 is free: run held requests until one is with it. */
	while (control && c->ep0_held && c->ep0_busy == 0)
		submit_urb(unhold_control(c, c->ep0_held->cmd.base.seqnum));
}

/*
 * A transfer came back from the device: its reply.  The unlink rules, as
 * vhci_hcd needs them (drivers/usb/usbip/vhci_rx.c):
 *  - cancelled in flight by a CMD_UNLINK: a RET_UNLINK with -ECONNRESET
 *    and no RET_SUBMIT; vhci gives the URB back on the RET_UNLINK and would
 *    take a RET_SUBMIT after it for a broken stream;
 *  - completed before the cancel took effect: its RET_SUBMIT, then a
 *    RET_UNLINK with 0.  The kernel's stub sends the RET_UNLINK alone,
 *    with the URB's status (stub_tx.c), and so drops an IN transfer's
 *    data; vhci takes this order too (vhci_recv_ret_unlink() finds the URB
 *    given back already and just says so), and the driver gets its data.
 */
static void answer_transfer(struct urb *u)
{
	struct libusb_transfer *x = u->xfer;
	struct conn *c = u->conn;
	const struct usbip_header_cmd_submit *cmd = &u->cmd.u.cmd_submit;
	int32_t actual = x->actual_length, status = urb_status(x->status);
	int32_t errors = 0;

	if (u->unlinked && x->status == LIBUSB_TRANSFER_CANCELLED) {
		answer_unlinked(u);
		return;
	}
	if (urb_packets(u) > 0)
		actual = finish_iso(u, &errors);
	if (actual > cmd->transfer_buffer_length)
		actual = cmd->transfer_buffer_length;
	if (x->status == LIBUSB_TRANSFER_COMPLETED &&
	    u->cmd.base.direction == USBIP_DIR_IN && urb_packets(u) == 0 &&
	    (cmd->transfer_flags & URB_SHORT_NOT_OK) &&
	    actual < cmd->transfer_buffer_length)
		status = -EREMOTEIO;
	queue_ret_submit(u, status, actual, errors);
	if (u->unlinked)
		queue_ret_unlink(c, u->unlink_seqnum, 0);
	if (x->status == LIBUSB_TRANSFER_NO_DEVICE)
		end_after_replies(c, "device unplugged");
}

static void inflight_remove(struct conn *c, struct urb *u)
{
	struct urb **pp;

	for (pp = &c->inflight; *pp; pp = &(*pp)->next) {
		if (*pp == u) {
			*pp = u->next;
			c->ninflight--;
			c->inflight_bytes -= (size_t)u->xfer->length;
			if (u->cmd.base.ep == 0)
				c->ep0_busy--;
			return;
		}
	}
}

/*
 * vhci wants the received bytes of an IN iso URB back to back and each
 * descriptor with its original offset and length; libusb laid packet i at
 * the sum of the lengths before it.  Returns the total actual length.
 */
static int32_t finish_iso(struct urb *u, int32_t *error_count)
{
	struct libusb_transfer *x = u->xfer;
	uint32_t pos = 0, packed = 0;
	int i;

	*error_count = 0;
	for (i = 0; i < x->num_iso_packets; i++) {
		struct libusb_iso_packet_descriptor *p = &x->iso_packet_desc[i];
		struct usbip_iso_packet_descriptor d;
		uint8_t *wire = u->iso + (size_t)i * USBIP_ISO_DESC_SIZE;

		unpack_iso_desc(wire, &d);
		d.actual_length = p->actual_length;
		d.status = (uint32_t)urb_status(p->status);
		if (p->status != LIBUSB_TRANSFER_COMPLETED)
			(*error_count)++;
		if (u->cmd.base.direction == USBIP_DIR_IN)
			memmove(u->buf + packed, u->buf + pos, d.actual_length);
		packed += d.actual_length;
		pos += p->length;
		pack_iso_desc(wire, &d);
	}
	return (int32_t)packed;
}

/* libusb's outcome as the negative errno a Linux URB would carry. */
static int32_t urb_status(enum libusb_transfer_status s)
{
	static const int32_t errnos[] = {
		[LIBUSB_TRANSFER_COMPLETED] = 0,
		[LIBUSB_TRANSFER_ERROR] = -EPROTO,
		[LIBUSB_TRANSFER_TIMED_OUT] = -ETIMEDOUT,
		[LIBUSB_TRANSFER_CANCELLED] = -ECONNRESET,
		[LIBUSB_TRANSFER_STALL] = -EPIPE,
		[LIBUSB_TRANSFER_NO_DEVICE] = -ESHUTDOWN,
		[LIBUSB_TRANSFER_OVERFLOW] = -EOVERFLOW,
	};

	return (unsigned)s < sizeof(errnos) / sizeof(errnos[0]) ? errnos[s]
							       : -EPROTO;
}

static ONCE int32_t submit_errno(int rc)
{
	static const int32_t errnos[] = {
		[-LIBUSB_ERROR_NO_DEVICE] = -ESHUTDOWN,
		[-LIBUSB_ERROR_PIPE] = -EPIPE,
		[-LIBUSB_ERROR_INVALID_PARAM] = -EINVAL,
		[-LIBUSB_ERROR_NO_MEM] = -ENOMEM,
		[-LIBUSB_ERROR_BUSY] = -EBUSY,
		[-LIBUSB_ERROR_NOT_FOUND] = -ENOENT,
	};

	return rc < 0 && (size_t)-rc < sizeof(errnos) / sizeof(errnos[0]) &&
	       errnos[-rc] ? errnos[-rc] : -EIO;
}

static uint8_t *urb_data(struct urb *u)
{
	return u->cmd.base.ep == 0 ? u->buf + LIBUSB_CONTROL_SETUP_SIZE
				   : u->buf;
}

static int urb_packets(const struct urb *u)
{
	return u->cmd.u.cmd_submit.number_of_packets;
}

/* -- replies: RET_SUBMIT and RET_UNLINK -- */

static void queue_ret_submit(struct urb *u, int32_t status, int32_t actual,
			     int32_t error_count)
{
	struct conn *c = u->conn;
	const struct usbip_header_cmd_submit *cmd = &u->cmd.u.cmd_submit;
	struct usbip_header_ret_submit ret = {
		.status = status,
		.actual_length = actual,
		.start_frame = cmd->start_frame,
		.number_of_packets = cmd->number_of_packets,
		.error_count = error_count,
	};
	struct msg *m = &u->reply;

	pack_ret_submit(u->head, u->cmd.base.seqnum, &ret);
	m->urb = u;
	m->iov[0] = (struct iovec){ u->head, USBIP_HEADER_SIZE };
	m->iovcnt = 1;
	if (u->cmd.base.direction == USBIP_DIR_IN && actual > 0)
		m->iov[m->iovcnt++] =
		    (struct iovec){ urb_data(u), (size_t)actual };
	if (urb_packets(u) > 0)
		m->iov[m->iovcnt++] = (struct iovec){
			u->iso, (size_t)urb_packets(u) * USBIP_ISO_DESC_SIZE };
	queue_msg(c, m);
	trace_reply(c->peer, u->head);
	capture_reply(u, status, actual);
}

static void queue_ret_unlink(struct conn *c, uint32_t seqnum, int32_t status)
{
	uint8_t head[USBIP_HEADER_SIZE];

	pack_ret_unlink(head, seqnum, status);
	queue_bytes(c, head, sizeof(head));
	trace_reply(c->peer, head);
}

/* An URB stopped before it completed: its unlink's RET_UNLINK alone. */
static void answer_unlinked(struct urb *u)
{
	queue_ret_unlink(u->conn, u->unlink_seqnum, -ECONNRESET);
	capture_reply(u, -ECONNRESET, 0);
	put_urb(u);
}

/*
 * A standalone message owning a copy of its bytes.  Out of memory, the
 * session ends (once what is queued is out) and the others go on.
 */
static void queue_bytes(struct conn *c, const void *data, size_t len)
{
	struct msg *m = malloc(sizeof(*m) + len);

	if (!m) {
		end_after_replies(c, "out of memory");
		return;
	}
	memcpy(m + 1, data, len);
	m->urb = NULL;
	m->iov[0] = (struct iovec){ m + 1, len };
	m->iovcnt = 1;
	queue_msg(c, m);
}

static void queue_msg(struct conn *c, struct msg *m)
{
	int i;

	m->next = NULL;
	*c->outtail = m;
	c->outtail = &m->next;
	c->noutq++;
	for (i = 0; i < m->iovcnt; i++)
		c->outbytes += m->iov[i].iov_len;
}

/* -- writing: replies leave in order -- */

#define WRITE_IOVS	64

/* Several replies per writev(): one syscall for a burst of completions. */
static void write_output(struct conn *c)
{
	while (c->fd >= 0 && c->outq) {
		struct iovec iov[WRITE_IOVS];
		struct msg *m;
		int cnt = 0, i;
		size_t tried = 0;
		ssize_t n;

		for (m = c->outq; m && cnt + 3 <= WRITE_IOVS; m = m->next)
			for (i = 0; i < m->iovcnt; i++)
				if (m->iov[i].iov_len > 0) {
					tried += m->iov[i].iov_len;
					iov[cnt++] = m->iov[i];
				}
		n = writev(c->wfd, iov, cnt);
		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR)
				close_conn(c, strerror(errno));
			return;
		}
		consume_output(c, (size_t)n);
		if ((size_t)n < tried)
			return;	/* the socket is full: wait for POLLOUT */
	}
	if (c->fd >= 0 && !c->outq && c->rx == RX_NONE)
		close_conn(c, NULL);
}

/* Drops N written bytes from the front of the queue. */
static void consume_output(struct conn *c, size_t n)
{
	c->outbytes -= n;
	while (c->outq) {
		struct msg *m = c->outq;
		int i;

		for (i = 0; i < m->iovcnt && n > 0; i++) {
			size_t step = n < m->iov[i].iov_len ? n :
				      m->iov[i].iov_len;

			m->iov[i].iov_base =
			    (uint8_t *)m->iov[i].iov_base + step;
			m->iov[i].iov_len -= step;
			n -= step;
		}
		if (m->iov[m->iovcnt - 1].iov_len > 0)
			return;		/* partly written */
		c->outq = m->next;
		if (!c->outq)
			c->outtail = &c->outq;
		c->noutq--;
		free_msg(m);
	}
}

static void free_msg(struct msg *m)
{
	if (m->urb)
		put_urb(m->urb);
	else
		free(m);
}

/* -- the end of a session -- */

/* Stops reading; the connection closes once its replies are written. */
static void end_after_replies(struct conn *c, const char *why)
{
	if (!c->end_reason)
		c->end_reason = why;
	c->rx = RX_NONE;
}

/* A protocol violation: one line naming the peer, and the session ends. */
static void protocol_error(struct conn *c, const char *fmt, ...)
{
	static char why[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	if (!c->handle)		/* close_conn() logs only sessions */
		warnx("%s: %s", c->peer, why);
	c->end_reason = why;	/* the violation, whatever came before */
	close_conn(c, NULL);
}

/*
 * Closing the socket is what tells vhci_hcd the device is gone.  Transfers
 * still in libusb are cancelled here; the connection is freed by
 * reap_conns() once the last of them has called back.
 */
static void close_conn(struct conn *c, const char *why)
{
	struct urb *u;

	if (c->fd < 0)
		return;
	if (!c->end_reason)
		c->end_reason = why;
	if (c->handle || verbose)
		warnx("%s: session%s%s ended: %s", c->peer,
		      c->handle ? " for " : "", c->handle ? c->busid : "",
		      c->end_reason ? c->end_reason : "done");
	close(c->fd);
	if (c->wfd != c->fd)
		close(c->wfd);
	c->fd = c->wfd = -1;
	c->rx = RX_NONE;
	while (c->outq) {
		struct msg *m = c->outq;

		c->outq = m->next;
		free_msg(m);
	}
	c->outtail = &c->outq;
	c->outbytes = c->noutq = 0;
	if (c->rxurb) {
		put_urb(c->rxurb);
		c->rxurb = NULL;
	}
	while (c->ep0_held)
		put_urb(unhold_control(c, c->ep0_held->cmd.base.seqnum));
	for (u = c->inflight; u; u = u->next)
		libusb_cancel_transfer(u->xfer);
}

/* Frees connections that are closed and have no transfer left in libusb;
 * returns how many. */
static int reap_conns(void)
{
	struct conn **pp = &conns;
	int n = 0;

	while (*pp) {
		struct conn *c = *pp;

		if (c->fd >= 0 || c->ninflight > 0) {
			pp = &c->next;
			continue;
		}
		drop_spares(c);
		if (c->handle)
			give_back_device(c);
		*pp = c->next;
		free(c);
		n++;
	}
	return n;
}

/*
 * Reset first, while the interfaces are still ours (libusb re-claims them
 * across the reset), so the device leaves in a clean state; then release
 * and let the kernel rebind its drivers.
 */
static void give_back_device(struct conn *c)
{
	int rc = libusb_reset_device(c->handle);

	/* Gone, or enumerated anew: the kernel binds the new one itself. */
	if (rc != 0 && rc != LIBUSB_ERROR_NOT_FOUND &&
	    rc != LIBUSB_ERROR_NO_DEVICE)
		warnx("%s: cannot reset %s (%s): giving it back as it is",
		      c->peer, c->busid, libusb_strerror(rc));
	give_back_interfaces(c->handle);
	close_device(c);
	debug(1, "%s: %s given back to its kernel driver", c->peer, c->busid);
}

/* A client that connects and then says nothing must not hold a slot. */
static int expire_handshakes(void)
{
	long long now = 0, next = 0;
	struct conn *c;

	for (c = conns; c; c = c->next) {
		if (c->fd < 0 || c->deadline_ms == 0)
			continue;
		if (now == 0)	/* the clock, only while a handshake is due */
			now = now_ms();
		if (now >= c->deadline_ms)
			protocol_error(c, "no complete request within %d s",
				       HANDSHAKE_MS / 1000);
		else if (next == 0 || c->deadline_ms < next)
			next = c->deadline_ms;
	}
	return next ? (int)(next - now) : -1;
}

/*
 * libusb reports an unplugged device only through the transfers it fails.
 * An idle session (a disk between commands) has none, yet vhci_hcd must
 * hear of it: only a closed connection makes it remove the device.
 */
static ONCE void end_unplugged_sessions(void)
{
	struct conn *c;

	for (c = conns; c; c = c->next)
		if (c->fd >= 0 && c->handle &&
		    libusb_kernel_driver_active(c->handle, 0) ==
		    LIBUSB_ERROR_NO_DEVICE)
			end_after_replies(c, "device unplugged");
}

/* ==== the server's event loop ============================================ */

#define MAX_LISTENERS	8
#define ACCEPT_PAUSE_MS	1000	/* out of descriptors: listeners rest */
#define SHUTDOWN_MS	5000
#define REDIAL_MAX_MS	30000

/* --busy-poll's window (see "making it fast"). */
struct busy_poll {
	long usec;			/* the window; 0: off */
	long long until_us;		/* open until then */
};

struct server {
	const struct serve_opts *o;
	int lfd[MAX_LISTENERS], nlfd;
	long long stop_by_ms;		/* set when stopping: give up then */
	long long redial_ms;		/* --connect: next attempt */
	int backoff_ms;			/* --connect: see backoff() */
	long long accept_again_ms;	/* out of descriptors: 0 or when */
	int out_of_fds;			/* ... and said so */
	struct pollfd *pfd;		/* this round's poll set: */
	struct conn **pconn;		/*   the connection of each entry */
	size_t n, cap, nusb;
};

static ONCE void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

/* SIGINT/SIGTERM are blocked except inside ppoll(), so none is missed. */
static ONCE void catch_stop_signals(sigset_t *unblocked)
{
	struct sigaction sa = { .sa_handler = on_signal };
	sigset_t block;

	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, unblocked);
}

/* libusb's descriptors change only as devices open and close. */
static const struct libusb_pollfd **usb_fds;
static int usb_fds_stale = 1;

static ONCE void LIBUSB_CALL usb_fd_added(int fd, short events, void *arg)
{
	(void)fd;
	(void)events;
	(void)arg;
	usb_fds_stale = 1;
}

static ONCE void LIBUSB_CALL usb_fd_removed(int fd, void *arg)
{
	(void)fd;
	(void)arg;
	usb_fds_stale = 1;
}

/* Without USB, serve still runs: it offers nothing and says why once. */
static void open_usb(void)
{
	int rc;

	/* Devices come from sysfs and our own usbfs descriptors (above). */
	libusb_set_option(NULL, LIBUSB_OPTION_NO_DEVICE_DISCOVERY);
	rc = libusb_init(&usb);
	if (rc != 0) {
		warnx("libusb cannot start (%s): offering no devices",
		      libusb_strerror(rc));
		usb = NULL;
		return;
	}
	libusb_set_pollfd_notifiers(usb, usb_fd_added, usb_fd_removed, NULL);
	if (access(sysfs_usb, F_OK) != 0)
		warnx("no USB support in this kernel (no %s): offering no "
		      "devices", sysfs_usb);
}

static int serve(const struct serve_opts *o)
{
	struct server sv = { .o = o };
	struct busy_poll busy = { .usec = o->busy_poll_us };
	sigset_t unblocked;

	open_usb();
	catch_stop_signals(&unblocked);
	if (o->stdio) {
		add_conn(STDIN_FILENO, STDOUT_FILENO, "stdio", o);
	} else if (!o->connect_to) {
		sv.nlfd = listen_on(o->addr, o->port, sv.lfd, MAX_LISTENERS);
		warnx("serving on port %s", o->port);
	}

	for (;;) {
		struct timespec tv, *timeout = NULL;
		int wait_ms, ready;

		if (stop_requested && !sv.stop_by_ms)
			begin_stop(&sv);
		resume_accepting(&sv, reap_conns());
		if (finished(&sv))
			break;
		if (o->connect_to && !stop_requested)
			redial(&sv);
		wait_ms = busy_poll_wait(&busy, next_wakeup_ms(&sv));
		if (wait_ms >= 0) {
			tv.tv_sec = wait_ms / 1000;
			tv.tv_nsec = wait_ms % 1000 * 1000000L;
			timeout = &tv;
		}
		build_pollset(&sv);
		ready = ppoll(sv.pfd, sv.n, timeout, &unblocked);
		if (ready < 0 && errno != EINTR)
			err(1, "poll");
		busy_poll_after(&busy, ready, wait_ms);
		dispatch(&sv, ready);
	}
	free(sv.pfd);
	free(sv.pconn);
	libusb_free_pollfds(usb_fds);
	if (usb)
		libusb_exit(usb);
	return 0;
}

/* Whether the loop is over: stopped and drained, or the one session gone. */
static int finished(struct server *sv)
{
	if (stop_requested && !conns)
		return 1;
	if (stop_requested && now_ms() > sv->stop_by_ms) {
		warnx("transfers did not finish in time");
		return 1;
	}
	return sv->o->stdio && !conns;
}

/* How long poll may sleep: -1 for as long as it takes. */
static int next_wakeup_ms(struct server *sv)
{
	int wait_ms = expire_handshakes();

	if (stop_requested)
		return 100;
	if (sv->accept_again_ms) {
		long long left = sv->accept_again_ms - now_ms();
		int again_in = left > 0 ? (int)left : 0;

		if (wait_ms < 0 || again_in < wait_ms)
			wait_ms = again_in;
	}
	if (sv->o->connect_to && !conns) {
		long long now = now_ms();
		int redial_in = sv->redial_ms > now ?
				(int)(sv->redial_ms - now) : 0;

		if (wait_ms < 0 || redial_in < wait_ms)
			wait_ms = redial_in;
	}
	return wait_ms;
}

static void dispatch(struct server *sv, int ready)
{
	size_t i, nsock = sv->n - sv->nusb;
	short usb_events = 0;
	struct conn *c;

	for (i = nsock; i < sv->n; i++)
		usb_events |= sv->pfd[i].revents;
	/* libusb polls its descriptors again inside: only when one is ready. */
	if (usb && (usb_events || stop_requested)) {
		struct timeval zero = { 0, 0 };

		libusb_handle_events_timeout_completed(usb, &zero, NULL);
		if (usb_events & (POLLERR | POLLHUP))
			end_unplugged_sessions();
		/* Completions queued replies: send them now. */
		for (c = conns; c; c = c->next)
			write_output(c);
	}
	for (i = 0; ready > 0 && i < nsock; i++) {
		short ev = sv->pfd[i].revents;

		c = sv->pconn[i];
		if (!ev)
			continue;
		if (!c) {
			if (accept_client(sv->o, sv->pfd[i].fd) < 0)
				pause_accepting(sv);
			else
				sv->out_of_fds = 0;
			continue;
		}
		/* Room in the socket again: what waited for it. */
		if (ev & (POLLOUT | POLLERR | POLLHUP))
			write_output(c);
		if (ev & (POLLIN | POLLERR | POLLHUP))
			read_input(c, 1);
		/* What reading queued: handshake replies, RET_UNLINKs. */
		if (c->fd >= 0)
			write_output(c);
	}
	/* Room again for a client that was not read while behind. */
	for (c = conns; c; c = c->next)
		if (has_read_ahead(c))
			read_input(c, 0);
}

static void pollset_add(struct server *sv, int fd, short events,
			struct conn *c)
{
	if (sv->n == sv->cap) {
		sv->cap = sv->cap ? sv->cap * 2 : 64;
		sv->pfd = realloc(sv->pfd, sv->cap * sizeof(*sv->pfd));
		sv->pconn = realloc(sv->pconn, sv->cap * sizeof(*sv->pconn));
		if (!sv->pfd || !sv->pconn)
			err(1, "realloc");
	}
	sv->pfd[sv->n] = (struct pollfd){ fd, events, 0 };
	sv->pconn[sv->n++] = c;
}

/* Listeners first, then every client, then libusb's descriptors. */
static void build_pollset(struct server *sv)
{
	struct conn *c;
	int i;

	if (usb && usb_fds_stale) {
		libusb_free_pollfds(usb_fds);
		usb_fds = libusb_get_pollfds(usb);
		usb_fds_stale = 0;
	}
	sv->n = 0;
	for (i = 0; i < sv->nlfd && !sv->accept_again_ms; i++)
		pollset_add(sv, sv->lfd[i], POLLIN, NULL);
	for (c = conns; c; c = c->next) {
		if (c->fd < 0)
			continue;
		if (c->wfd == c->fd) {
			pollset_add(sv, c->fd, (short)((may_read(c) ?
				    POLLIN : 0) | (c->outq ? POLLOUT : 0)), c);
			continue;
		}
		pollset_add(sv, c->fd, may_read(c) ? POLLIN : 0, c);
		if (c->outq)
			pollset_add(sv, c->wfd, POLLOUT, c);
	}
	sv->nusb = 0;
	for (i = 0; usb_fds && usb_fds[i]; i++, sv->nusb++)
		pollset_add(sv, usb_fds[i]->fd, usb_fds[i]->events, NULL);
}

static void begin_stop(struct server *sv)
{
	struct conn *c;
	int i;

	warnx("stopping: ending every session");
	for (i = 0; i < sv->nlfd; i++)
		close(sv->lfd[i]);
	sv->nlfd = 0;
	for (c = conns; c; c = c->next)
		close_conn(c, "server stopping");
	sv->stop_by_ms = now_ms() + SHUTDOWN_MS;
}

/*
 * Out of descriptors, accept() fails and leaves the connection queued, so
 * the listener stays readable and poll() would return at once, forever.
 * The listeners rest instead, for ACCEPT_PAUSE_MS or until a session
 * ends and frees a descriptor; the sessions there are go on.
 */
static ONCE void pause_accepting(struct server *sv)
{
	if (!sv->out_of_fds)
		warnx("cannot accept connections: %s; new clients wait",
		      strerror(errno));
	sv->out_of_fds = 1;
	sv->accept_again_ms = now_ms() + ACCEPT_PAUSE_MS;
}

static ONCE void resume_accepting(struct server *sv, int freed)
{
	if (sv->accept_again_ms && (freed || now_ms() >= sv->accept_again_ms))
		sv->accept_again_ms = 0;
}

/* ==== the client: import a device into vhci_hcd ========================== */

/* -- the handshake, client side: blocking, one-shot (see answer_import()) -- */

/*
 * An error that trying again cannot mend exits with this status: 1, like
 * every error, but in an --persist child EXIT_PERMANENT, so that its
 * parent stops trying.
 */
#define EXIT_PERMANENT	3

static int permanent_error = 1;

static ONCE const char *op_status_name(uint32_t status)
{
	static const char *names[] = {
		[ST_OK] = "ok",
		[ST_NA] = "not available",
		[ST_DEV_BUSY] = "device busy (imported by someone else)",
		[ST_DEV_ERR] = "device error on the server",
		[ST_NODEV] = "no such device",
		[ST_ERROR] = "server error",
	};

	return status < sizeof(names) / sizeof(names[0]) ? names[status]
							  : "unknown status";
}

static void check_op_reply(const uint8_t *p, uint16_t code, const char *peer,
			   struct op_common *op)
{
	unpack_op_common(p, op);
	if (op->version != USBIP_VERSION)
		errx(1, "%s: speaks USB/IP version %x.%02x, not 1.11", peer,
		     op->version >> 8, op->version & 0xff);
	if (op->code != code)
		errx(1, "%s: answered with op code 0x%04x, expected 0x%04x",
		     peer, op->code, code);
}

/* OP_REQ_IMPORT, then OP_REP_IMPORT read in full: nothing may be left in
 * the socket for vhci_hcd to misread as a RET_SUBMIT. */
static ONCE void request_import(int rfd, int wfd, const char *busid,
				const char *peer, int timeout_ms,
				struct usbip_usb_device *rec)
{
	uint8_t req[OP_REQ_IMPORT_SIZE], rep[OP_REP_IMPORT_SIZE];
	char text[ESCAPED(SYSFS_BUS_ID_SIZE)];
	struct op_common op;

	pack_import_request(req, busid);
	write_all(wfd, req, sizeof(req), peer);
	read_exact(rfd, rep, OP_COMMON_SIZE, peer, timeout_ms);
	check_op_reply(rep, OP_REP_IMPORT, peer, &op);
	if (op.status == ST_NODEV)
		errx(permanent_error, "busid %s not offered by %s", busid,
		     peer);
	if (op.status != ST_OK)
		errx(1, "%s refused busid %s: %s", peer, busid,
		     op_status_name(op.status));
	read_exact(rfd, rep + OP_COMMON_SIZE, USBIP_DEVICE_SIZE, peer,
		   timeout_ms);
	unpack_device(rep + OP_COMMON_SIZE, rec);
	if (strncmp(rec->busid, busid, SYSFS_BUS_ID_SIZE) != 0)
		errx(1, "%s answered for busid %s, not %s", peer,
		     printable(rec->busid, sizeof(rec->busid), text), busid);
	/* vhci_hcd refuses a speed it does not know, with EINVAL alone. */
	if (rec->speed < USB_SPEED_LOW || rec->speed > USB_SPEED_SUPER_PLUS)
		errx(1, "%s reported an unknown speed %u for busid %s", peer,
		     rec->speed, busid);
}

/* OP_REQ_DEVLIST: calls FN for each device the server lists; returns how
 * many it listed. */
static ONCE uint32_t request_devlist(int rfd, int wfd, const char *peer,
				     int timeout_ms, device_fn *fn,
				     void *arg)
{
	uint8_t buf[USBIP_DEVICE_SIZE];
	struct op_common op;
	uint32_t ndev, i;

	pack_op_common(buf, OP_REQ_DEVLIST, ST_OK);
	write_all(wfd, buf, OP_COMMON_SIZE, peer);
	/* A refusal is op_common alone: the count follows only an OK. */
	read_exact(rfd, buf, OP_COMMON_SIZE, peer, timeout_ms);
	check_op_reply(buf, OP_REP_DEVLIST, peer, &op);
	if (op.status != ST_OK)
		errx(1, "%s refused the device list: %s", peer,
		     op_status_name(op.status));
	read_exact(rfd, buf, 4, peer, timeout_ms);
	ndev = get32(buf);
	for (i = 0; i < ndev; i++) {
		struct usbip_usb_device d;
		struct usbip_usb_interface ifs[UINT8_MAX + 1];	/* a u8 */
		uint8_t raw[USBIP_INTERFACE_SIZE];
		int j;

		read_exact(rfd, buf, USBIP_DEVICE_SIZE, peer, timeout_ms);
		unpack_device(buf, &d);
		for (j = 0; j < d.bNumInterfaces; j++) {
			read_exact(rfd, raw, sizeof(raw), peer, timeout_ms);
			unpack_interface(raw, &ifs[j]);
		}
		fn(&d, ifs, d.bNumInterfaces, arg);
	}
	return ndev;
}

/* A device_fn: PRODUCT is the device's name, "" where unknown. */
static ONCE int print_device_line(const struct usbip_usb_device *d,
				  const struct usbip_usb_interface *ifs,
				  int nifs, void *product)
{
	uint8_t cls = d->bDeviceClass, sub = d->bDeviceSubClass,
		proto = d->bDeviceProtocol;
	char busid[ESCAPED(SYSFS_BUS_ID_SIZE)], name[ESCAPED(128)];

	/* Class 0 means "see the interfaces": show the first one's. */
	if (cls == 0 && nifs > 0) {
		cls = ifs[0].bInterfaceClass;
		sub = ifs[0].bInterfaceSubClass;
		proto = ifs[0].bInterfaceProtocol;
	}
	printf("%-12s %04x:%04x  %-7s %02x/%02x/%02x  %s\n",
	       printable(d->busid, sizeof(d->busid), busid), d->idVendor,
	       d->idProduct, speed_name(d->speed), cls, sub, proto,
	       printable(product, 128, name));
	return 0;
}

/* -- vhci_hcd: the kernel takes the socket -- */

#define VHCI_STATE_FREE	4	/* VDEV_ST_NULL in the kernel's vhci.h */
#define VHCI_PORTS_MAX	256	/* every controller's, read at once */
#define VHCI_RECORDS	"/var/run/vhci_hcd"

struct vhci_port {
	int port;
	char hub[3];			/* "hs" or "ss" */
	int status, speed;
	char local_busid[SYSFS_BUS_ID_SIZE];
};

/* vhci_hcd.0 holds the attach/detach files for every controller. */
static void find_vhci(char *dir, size_t len)
{
	static const char *candidates[] = {
		"/sys/devices/platform/vhci_hcd.0",
		"/sys/bus/platform/devices/vhci_hcd.0",
		"/sys/devices/platform/*/vhci_hcd.0",
		"/sys/devices/platform/vhci_hcd",	/* before 4.9 */
	};
	size_t i;

	for (i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++) {
		glob_t g;

		if (glob(candidates[i], 0, NULL, &g) == 0) {
			snprintf(dir, len, "%s", g.gl_pathv[0]);
			globfree(&g);
			return;
		}
	}
	errx(1, "vhci_hcd not loaded: modprobe vhci-hcd");
}

/* Reads every status file ("status", "status.1", ...): one per controller. */
static int read_vhci_ports(const char *dir, struct vhci_port *ports,
			   int max)
{
	char pattern[PATH_MAX], line[256];
	glob_t g;
	size_t f;
	int n = 0;

	snprintf(pattern, sizeof(pattern), "%s/status*", dir);
	if (glob(pattern, 0, NULL, &g) != 0)
		errx(1, "%s: no status file", dir);
	for (f = 0; f < g.gl_pathc; f++) {
		FILE *fp = fopen(g.gl_pathv[f], "r");

		if (!fp)
			err(1, "%s", g.gl_pathv[f]);
		while (n < max && fgets(line, sizeof(line), fp)) {
			struct vhci_port *p = &ports[n];
			const char *rest = line;

			/*
			 * "hs  0000 004 000 00000000 000000 0-0" since 4.13.
			 * Before, no hub column (every port is high-speed) and
			 * 4 port digits (3 before 4.9).  The socket column is a
			 * hex kernel pointer before 4.15, and a free port shows
			 * "000 000" for dev before 4.9: skip it as a word.
			 */
			if (strncmp(line, "hs ", 3) == 0 ||
			    strncmp(line, "ss ", 3) == 0) {
				memcpy(p->hub, line, 2);
				p->hub[2] = '\0';
				rest = line + 3;
			} else if (isdigit((unsigned char)line[0])) {
				strcpy(p->hub, "hs");
			} else {
				continue;	/* the header */
			}
			if (sscanf(rest, "%d %d %d %*x %*s %31s", &p->port,
				   &p->status, &p->speed, p->local_busid) == 4)
				n++;
		}
		fclose(fp);
	}
	globfree(&g);
	return n;
}

static ONCE int find_vhci_port(const char *dir, int port, struct vhci_port *out)
{
	struct vhci_port ports[VHCI_PORTS_MAX];
	int n = read_vhci_ports(dir, ports, VHCI_PORTS_MAX), i;

	for (i = 0; i < n; i++) {
		if (ports[i].port == port) {
			*out = ports[i];
			return 1;
		}
	}
	return 0;
}

static ONCE int write_sysfs(const char *dir, const char *file, const char *text)
{
	char path[PATH_MAX];
	int fd, rc = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, text, strlen(text)) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

/* Same format as `usbip attach`, so `usbip port` and `usbip detach` work. */
static void write_record(int port, const char *host, const char *service,
			 const char *busid)
{
	char path[PATH_MAX];
	FILE *f;

	mkdir(VHCI_RECORDS, 0700);
	snprintf(path, sizeof(path), VHCI_RECORDS "/port%d", port);
	f = fopen(path, "w");
	if (!f) {
		warn("%s", path);
		return;
	}
	fprintf(f, "%s %s %s\n", host, service, busid);
	fclose(f);
}

static ONCE void remove_record(int port)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), VHCI_RECORDS "/port%d", port);
	unlink(path);
}

/* vhci_hcd's attach file: "PORT SOCKFD DEVID SPEED", the fd ours. */
static ONCE int vhci_attach(const char *dir, int port, int fd, uint32_t devid,
			    uint32_t speed)
{
	char line[64];

	snprintf(line, sizeof(line), "%d %d %u %u", port, fd, devid, speed);
	return write_sysfs(dir, "attach", line);
}

static int attach_to_vhci(const char *dir, int fd,
			  const struct usbip_usb_device *rec)
{
	struct vhci_port ports[VHCI_PORTS_MAX];
	uint32_t speed = rec->speed;
	const char *hub = speed >= USB_SPEED_SUPER ? "ss" : "hs";
	uint32_t devid = rec->busnum << 16 | rec->devnum;
	int n = read_vhci_ports(dir, ports, VHCI_PORTS_MAX), i, rc = 0,
	    hub_seen = 0;

	for (i = 0; i < n; i++) {
		if (strcmp(ports[i].hub, hub) != 0)
			continue;
		hub_seen = 1;
		if (ports[i].status != VHCI_STATE_FREE)
			continue;
		rc = vhci_attach(dir, ports[i].port, fd, devid, speed);
		if (rc == -EINVAL && speed == USB_SPEED_SUPER_PLUS) {
			/* vhci before 6.12 knows no SuperSpeed+. */
			speed = USB_SPEED_SUPER;
			rc = vhci_attach(dir, ports[i].port, fd, devid, speed);
		}
		if (rc == 0)
			return ports[i].port;
		/* Taken since we read its status: EBUSY (or old EINVAL). */
		if (rc == -EBUSY || rc == -EINVAL)
			continue;
		if (rc == -EACCES || rc == -EPERM)
			errx(permanent_error,
			     "%s/attach: permission denied (run as root)", dir);
		errx(1, "vhci_hcd refused port %d: %s", ports[i].port,
		     strerror(-rc));
	}
	if (!hub_seen && speed >= USB_SPEED_SUPER)
		errx(permanent_error, "this kernel's vhci_hcd has no "
		     "SuperSpeed ports (before Linux 4.13): cannot import a "
		     "%s speed device", speed_name(rec->speed));
	if (rc == -EINVAL)
		errx(1, "vhci_hcd refused every free port: %s (see dmesg)",
		     strerror(-rc));
	errx(1, "no free %s vhci port", speed >= USB_SPEED_SUPER ?
	     "super-speed" : "high-speed");
}

/* -- attach, port, detach -- */

/* Where the imported device comes from: a socket, or --via's pipes. */
struct link {
	int rfd, wfd;
	pid_t child;			/* --via's command */
	int timeout_ms;			/* for each handshake reply */
	char host[256], service[32], peer[300];
};

struct attach_opts {
	const char *target;		/* HOST[:PORT] */
	const char *listen;		/* --listen [ADDR:]PORT */
	const char *via;		/* --via COMMAND */
	int persist;
	const char *busid;
	long busy_poll_us;		/* --busy-poll, for the --via relay */
	struct capture *capture;	/* --pcap, for the --via relay */
};

static ONCE void open_link(const struct attach_opts *o, struct link *l)
{
	memset(l, 0, sizeof(*l));
	l->timeout_ms = IO_TIMEOUT_MS;
	if (o->via) {
		spawn_via(o->via, l);
	} else if (o->listen) {
		accept_one(o->listen, l);
	} else {
		split_host_port(o->target, l->host, sizeof(l->host),
				l->service, sizeof(l->service));
		name_peer(l->host, l->service, l->peer, sizeof(l->peer));
		l->rfd = l->wfd = dial(l->host, l->service);
	}
}

/*
 * One import: link, handshake, hand over.  With --via the relay runs
 * here until the session ends; otherwise the kernel keeps the socket and
 * we return at once.  Prints the vhci port.
 */
static int attach_once(const struct attach_opts *o, const char *dir)
{
	char busid[SYSFS_BUS_ID_SIZE];
	struct usbip_usb_device rec;
	struct link l;
	int pair[2], port, rc = 0;

	find_busid(o, busid);
	open_link(o, &l);
	request_import(l.rfd, l.wfd, busid, l.peer, l.timeout_ms, &rec);
	if (!o->via) {
		port = attach_to_vhci(dir, l.rfd, &rec);
		/* The kernel holds its own reference to the socket now. */
		close(l.rfd);
	} else {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
			       pair) < 0)
			err(1, "socketpair");
		port = attach_to_vhci(dir, pair[1], &rec);
		close(pair[1]);
	}
	write_record(port, l.host, l.service, busid);
	debug(1, "attached %s from %s (%04x:%04x, %s speed)", busid,
	      l.peer, rec.idVendor, rec.idProduct, speed_name(rec.speed));
	printf("%d\n", port);
	fflush(stdout);
	if (o->via) {
		rc = relay(pair[0], &l, o, rec.busnum << 16 | rec.devnum);
		/* Closing our end is what makes vhci_hcd let the port go. */
		close(pair[0]);
		close_link(&l);
		remove_record(port);
		debug(1, "port %d: session over", port);
	}
	return rc;
}

/* A device the server lists under the VID:PID the user gave. */
struct match {
	uint16_t vid, pid;
	int n;
	char busid[SYSFS_BUS_ID_SIZE];		/* the first */
	char all[ESCAPED(SYSFS_BUS_ID_SIZE) * 4];	/* for the error */
};

static ONCE int match_device(const struct usbip_usb_device *rec,
			     const struct usbip_usb_interface *ifs, int nifs,
			     void *arg)
{
	struct match *m = arg;
	char text[ESCAPED(SYSFS_BUS_ID_SIZE)];
	size_t len = strlen(m->all);

	(void)ifs;
	(void)nifs;
	if (rec->idVendor != m->vid || rec->idProduct != m->pid)
		return 0;
	if (m->n++ == 0)
		snprintf(m->busid, sizeof(m->busid), "%s", rec->busid);
	snprintf(m->all + len, sizeof(m->all) - len, "%s%s", len ? ", " : "",
		 printable(rec->busid, sizeof(rec->busid), text));
	return 0;
}

/*
 * The busid to import: the one the user named, or the one device that
 * the VID:PID the user named stands for on the server now, asked for in
 * a first OP_REQ_DEVLIST (USB/IP imports by busid only).  --persist asks
 * again every time, so the device is found on whatever port it is.
 */
static void find_busid(const struct attach_opts *o,
		       char busid[SYSFS_BUS_ID_SIZE])
{
	struct match m = { .n = 0 };
	struct link l;

	if (!parse_vid_pid(o->busid, &m.vid, &m.pid)) {
		snprintf(busid, SYSFS_BUS_ID_SIZE, "%s", o->busid);
		return;
	}
	open_link(o, &l);
	request_devlist(l.rfd, l.wfd, l.peer, l.timeout_ms, match_device, &m);
	close_link(&l);
	if (m.n == 0)
		errx(1, "no %s on %s", o->busid, l.peer);
	if (m.n > 1)
		errx(permanent_error, "%s is %d devices on %s (%s): name one "
		     "busid", o->busid, m.n, l.peer, m.all);
	snprintf(busid, SYSFS_BUS_ID_SIZE, "%s", m.busid);
}

/* Ends a link that served its purpose: its descriptors, --via's command. */
static ONCE void close_link(struct link *l)
{
	close(l->rfd);
	if (l->wfd != l->rfd)
		close(l->wfd);
	end_child(l);
}

static ONCE int cmd_port(void)
{
	struct vhci_port ports[VHCI_PORTS_MAX];
	char dir[PATH_MAX];
	int n, i, shown = 0;

	find_vhci(dir, sizeof(dir));
	n = read_vhci_ports(dir, ports, VHCI_PORTS_MAX);
	for (i = 0; i < n; i++) {
		struct vhci_port *p = &ports[i];
		char path[PATH_MAX], record[300] = "", vid[8], pid[8],
		     product[128], name[ESCAPED(128)];
		FILE *f;

		if (p->status == VHCI_STATE_FREE)
			continue;
		snprintf(path, sizeof(path), VHCI_RECORDS "/port%d", p->port);
		f = fopen(path, "r");
		if (f) {
			if (fgets(record, sizeof(record), f))
				record[strcspn(record, "\n")] = '\0';
			fclose(f);
		}
		read_sysfs_attr(p->local_busid, "idVendor", vid, sizeof(vid));
		read_sysfs_attr(p->local_busid, "idProduct", pid, sizeof(pid));
		read_sysfs_attr(p->local_busid, "product", product,
				sizeof(product));
		printf("port %d: %s speed, %s:%s %s, local busid %s, from %s\n",
		       p->port, speed_name((uint32_t)p->speed),
		       vid[0] ? vid : "?", pid[0] ? pid : "?",
		       printable(product, sizeof(product), name),
		       p->local_busid, record[0] ? record : "(no record)");
		shown++;
	}
	if (shown == 0)
		printf("no imported devices\n");
	return 0;
}

static ONCE int cmd_detach(const char *arg)
{
	struct vhci_port p;
	char dir[PATH_MAX];
	long port = parse_number(arg, 0, 65535, "%s: not a port number");
	int rc;

	find_vhci(dir, sizeof(dir));
	if (!find_vhci_port(dir, (int)port, &p))
		errx(1, "no vhci port %ld", port);
	if (p.status == VHCI_STATE_FREE)
		errx(1, "port %ld is not in use", port);
	rc = write_sysfs(dir, "detach", arg);
	if (rc == -EACCES || rc == -EPERM)
		errx(1, "%s/detach: permission denied (run as root)", dir);
	if (rc != 0)
		errx(1, "detach port %ld: %s", port, strerror(-rc));
	remove_record((int)port);
	debug(1, "detached port %ld", port);
	return 0;
}

/* ==== the command line =================================================== */

static ONCE int print_local_device(const struct usbip_usb_device *rec,
				   const struct usbip_usb_interface *ifs,
				   int nifs, void *arg)
{
	char product[128];

	if (rec->bDeviceClass == LIBUSB_CLASS_HUB)
		return 0;
	(*(int *)arg)++;
	read_sysfs_attr(rec->busid, "product", product, sizeof(product));
	print_device_line(rec, ifs, nifs, product);
	return 0;
}

static ONCE int cmd_list(const char *target)
{
	struct attach_opts o = { .target = target };
	struct link l;
	int n = 0;

	if (!target) {
		for_each_device(print_local_device, &n);
		if (n == 0)
			printf("no shareable USB devices on this machine\n");
		return 0;
	}
	open_link(&o, &l);
	if (request_devlist(l.rfd, l.wfd, l.peer, l.timeout_ms,
			    print_device_line, "") == 0)
		printf("%s offers no devices\n", l.peer);
	close_link(&l);
	return 0;
}

static ONCE void usage(FILE *out)
{
	fprintf(out,
"usage: p2pusb [-v] COMMAND [ARGS]\n"
"  list                           local devices that can be shared\n"
"  list HOST[:PORT]               devices a server offers\n"
"  serve [-a ADDR] [-p PORT] [--allow CIDR,...] [-m BYTES] [DEVICE...]\n"
"                                 share devices (default: all but hubs,\n"
"                                 port " USBIP_PORT ", every address, any\n"
"                                 client, URBs up to 16 MiB)\n"
"  serve --connect HOST[:PORT] [DEVICE...]\n"
"                                 dial the client instead of listening\n"
"  serve --stdio DEVICE           one session on stdin/stdout (ssh)\n"
"  serve --busy-poll USEC ...     spin USEC us after each event: lower\n"
"                                 latency for CPU (default: sleep)\n"
"  serve --pcap FILE ...          every URB to FILE (- for stdout) in\n"
"                                 usbmon's format, for Wireshark\n"
"  attach [--persist] HOST[:PORT] DEVICE\n"
"  attach [--persist] --listen [ADDR:]PORT DEVICE\n"
"  attach [--persist] [--busy-poll USEC] [--pcap FILE]\n"
"         --via 'COMMAND' DEVICE\n"
"                                 import a device into vhci_hcd; prints\n"
"                                 the vhci port (--via stays to relay)\n"
"  port                           devices imported on this machine\n"
"  detach PORT                    remove an imported device\n"
"DEVICE: a busid (1-1.2) or a VID:PID (1050:0407), which follows the\n"
"device to whatever port it is plugged into\n"
"options: -v more log (twice: every URB), -h help, -V version\n");
}

/*
 * What serve's options must agree on, checked once all are read: each
 * DEVICE a busid or a VID:PID, --stdio with one, and --pcap's file, which
 * this opens.
 */
static void finish_serve_opts(struct serve_opts *o, const char *pcap)
{
	uint16_t vid, pid;
	int i;

	for (i = 0; i < o->nbusids; i++)
		if (strchr(o->busids[i], ':') &&
		    !parse_vid_pid(o->busids[i], &vid, &pid))
			errx(1, "%s is neither a busid nor a VID:PID such as "
			     "1050:0407", o->busids[i]);
	if (o->stdio && (o->connect_to || o->nbusids != 1))
		errx(1, "serve --stdio takes exactly one DEVICE and no "
		     "--connect");
	if (pcap && o->stdio && strcmp(pcap, "-") == 0)
		errx(1, "serve --stdio needs stdout: --pcap to a file");
	if (pcap)
		o->capture = open_capture(pcap);
}

/* A command's next option, or -1: -v and mistakes are dealt with here. */
static int next_option(int argc, char **argv, const char *shortopts,
		       const struct option *longopts)
{
	int ch;

	while ((ch = getopt_long(argc, argv, shortopts, longopts, NULL)) == 'v')
		verbose++;
	if (ch == '?') {
		usage(stderr);
		exit(1);
	}
	return ch;
}

static int cmd_serve(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "allow", required_argument, NULL, 'A' },
		{ "max-length", required_argument, NULL, 'm' },
		{ "connect", required_argument, NULL, 'c' },
		{ "stdio", no_argument, NULL, 's' },
		{ "busy-poll", required_argument, NULL, 'B' },
		{ "pcap", required_argument, NULL, 'C' },
		{ NULL, 0, NULL, 0 },
	};
	const char *pcap = NULL;
	struct serve_opts o = { .port = USBIP_PORT,
				.max_length = URB_LENGTH_MAX };
	int ch;

	optind = 0;	/* glibc: restart scanning on the subcommand's argv */
	while ((ch = next_option(argc, argv, "+a:p:m:v", longopts)) != -1) {
		switch (ch) {
		case 'a':
			o.addr = optarg;
			break;
		case 'p':
			o.port = optarg;
			break;
		case 'c':
			o.connect_to = optarg;
			break;
		case 's':
			o.stdio = 1;
			break;
		case 'B':
			o.busy_poll_us = parse_busy_poll(optarg);
			break;
		case 'C':
			pcap = optarg;
			break;
		case 'A':
			parse_allow(&o, optarg);
			break;
		case 'm':
			o.max_length = (int)parse_number(optarg, 0, INT32_MAX,
				"--max-length: %s is not a byte count");
			break;
		}
	}
	o.busids = argv + optind;
	o.nbusids = argc - optind;
	finish_serve_opts(&o, pcap);
	return serve(&o);
}

static int cmd_attach(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "via", required_argument, NULL, 'x' },
		{ "persist", no_argument, NULL, 'P' },
		{ "busy-poll", required_argument, NULL, 'B' },
		{ "pcap", required_argument, NULL, 'C' },
		{ NULL, 0, NULL, 0 },
	};
	struct attach_opts o = { 0 };
	const char *pcap = NULL;
	char dir[PATH_MAX];
	int ch;

	optind = 0;
	while ((ch = next_option(argc, argv, "+v", longopts)) != -1) {
		switch (ch) {
		case 'l':
			o.listen = optarg;
			break;
		case 'x':
			o.via = optarg;
			break;
		case 'P':
			o.persist = 1;
			break;
		case 'B':
			o.busy_poll_us = parse_busy_poll(optarg);
			break;
		case 'C':
			pcap = optarg;
			break;
		}
	}
	argc -= optind;
	argv += optind;
	if (o.listen || o.via) {
		if (argc != 1 || (o.listen && o.via))
			errx(1, "attach --listen or --via takes one BUSID");
		o.busid = argv[0];
	} else {
		if (argc != 2)
			errx(1, "attach needs HOST[:PORT] and BUSID");
		o.target = argv[0];
		o.busid = argv[1];
	}
	if (strlen(o.busid) >= SYSFS_BUS_ID_SIZE)
		errx(1, "busid %s is too long", o.busid);
	/* Without --via the kernel reads the socket: nothing here polls. */
	if ((o.busy_poll_us || pcap) && !o.via)
		errx(1, "attach --%s works with --via only",
		     pcap ? "pcap" : "busy-poll");
	if (pcap && strcmp(pcap, "-") == 0)
		errx(1, "attach prints its port on stdout: --pcap to a file");
	if (pcap)
		o.capture = open_capture(pcap);
	find_vhci(dir, sizeof(dir));
	return o.persist ? attach_persist(&o, dir) : attach_once(&o, dir);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "verbose", no_argument, NULL, 'v' },
		{ NULL, 0, NULL, 0 },
	};
	const char *cmd;
	int ch;

	while ((ch = next_option(argc, argv, "+hVv", longopts)) != -1) {
		switch (ch) {
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("p2pusb " P2PUSB_VERSION "\n");
			return 0;
		}
	}
	argc -= optind;
	argv += optind;
	signal(SIGPIPE, SIG_IGN);	/* a closed peer: an error, not death */
	cmd = argc > 0 ? argv[0] : "";
	if (strcmp(cmd, "list") == 0 && argc <= 2)
		return cmd_list(argc == 2 ? argv[1] : NULL);
	if (strcmp(cmd, "serve") == 0)
		return cmd_serve(argc, argv);
	if (strcmp(cmd, "attach") == 0)
		return cmd_attach(argc, argv);
	if (strcmp(cmd, "port") == 0 && argc == 1)
		return cmd_port();
	if (strcmp(cmd, "detach") == 0 && argc == 2)
		return cmd_detach(argv[1]);
	usage(stderr);
	return 1;
}

/* ==== extras: each one hooks into the core above, and can be skipped ===== */

/* ==== the URB trace (-vv): the stream decoded for people ================= */

static ONCE const char *status_name(int32_t status)
{
	static const struct {
		int err;
		const char *name;
	} names[] = {
		{ 0, "ok" },
		{ EPIPE, "EPIPE (stall)" },
		{ ECONNRESET, "ECONNRESET (unlinked)" },
		{ ENOENT, "ENOENT" },
		{ ESHUTDOWN, "ESHUTDOWN (device gone)" },
		{ ENODEV, "ENODEV" },
		{ ETIMEDOUT, "ETIMEDOUT" },
		{ EOVERFLOW, "EOVERFLOW (babble)" },
		{ EPROTO, "EPROTO" },
		{ EREMOTEIO, "EREMOTEIO (short)" },
		{ EINVAL, "EINVAL" },
		{ EBUSY, "EBUSY" },
		{ ENOMEM, "ENOMEM" },
		{ EXDEV, "EXDEV (iso partial)" },
	};
	static char other[24];
	size_t i;

	/* A peer may send any 32 bits: -INT32_MIN does not fit an int32_t. */
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (-(int64_t)names[i].err == status)
			return names[i].name;
	snprintf(other, sizeof(other), "errno %lld", -(long long)status);
	return other;
}

static ONCE const char *transfer_type_name(int type)
{
	static const char *names[] = {
		[LIBUSB_TRANSFER_TYPE_CONTROL] = "control",
		[LIBUSB_TRANSFER_TYPE_ISOCHRONOUS] = "iso",
		[LIBUSB_TRANSFER_TYPE_BULK] = "bulk",
		[LIBUSB_TRANSFER_TYPE_INTERRUPT] = "interrupt",
	};

	return type >= 0 && type < 4 ? names[type] : "";
}

/* Standard requests by name; class and vendor requests shown raw. */
static ONCE void describe_setup(const uint8_t *s, char *buf, size_t len)
{
	static const char *requests[] = {
		"GET_STATUS", "CLEAR_FEATURE", "?", "SET_FEATURE", "?",
		"SET_ADDRESS", "GET_DESCRIPTOR", "SET_DESCRIPTOR",
		"GET_CONFIGURATION", "SET_CONFIGURATION", "GET_INTERFACE",
		"SET_INTERFACE", "SYNCH_FRAME",
	};
	static const char *descriptors[] = {
		"?", "DEVICE", "CONFIGURATION", "STRING", "INTERFACE",
		"ENDPOINT", "DEVICE_QUALIFIER", "OTHER_SPEED_CONFIGURATION",
	};
	uint8_t type = s[0], req = s[1];
	unsigned value = (unsigned)(s[2] | s[3] << 8);
	unsigned index = (unsigned)(s[4] | s[5] << 8);
	unsigned length = (unsigned)(s[6] | s[7] << 8);

	if ((type & USB_TYPE_MASK) != LIBUSB_REQUEST_TYPE_STANDARD ||
	    req >= sizeof(requests) / sizeof(*requests)) {
		snprintf(buf, len, "%s request %02x %02x %04x %04x len %u",
			 (type & USB_TYPE_MASK) == LIBUSB_REQUEST_TYPE_CLASS ?
			 "class" :
			 (type & USB_TYPE_MASK) == LIBUSB_REQUEST_TYPE_VENDOR ?
			 "vendor" : "other", type, req, value, index, length);
	} else if (req == LIBUSB_REQUEST_GET_DESCRIPTOR) {
		unsigned dt = value >> 8;

		if (dt == LIBUSB_DT_STRING)
			snprintf(buf, len, "GET_DESCRIPTOR(STRING %u) len %u",
				 value & 0xffu, length);
		else if (dt < sizeof(descriptors) / sizeof(*descriptors))
			snprintf(buf, len, "GET_DESCRIPTOR(%s) len %u",
				 descriptors[dt], length);
		else
			snprintf(buf, len, "GET_DESCRIPTOR(0x%02x) len %u", dt,
				 length);
	} else if (req == LIBUSB_REQUEST_SET_INTERFACE) {
		snprintf(buf, len, "SET_INTERFACE %u alt %u", index, value);
	} else if (req == LIBUSB_REQUEST_SET_CONFIGURATION) {
		snprintf(buf, len, "SET_CONFIGURATION %u", value);
	} else if ((req == LIBUSB_REQUEST_CLEAR_FEATURE ||
		    req == LIBUSB_REQUEST_SET_FEATURE) &&
		   (type & USB_RECIP_MASK) == LIBUSB_RECIPIENT_ENDPOINT &&
		   value == USB_ENDPOINT_HALT) {
		snprintf(buf, len, "%s(ENDPOINT_HALT) ep %02x", requests[req],
			 index);
	} else {
		snprintf(buf, len, "%s %04x %04x len %u", requests[req], value,
			 index, length);
	}
}

/* TYPE is the endpoint's transfer type where the caller knows it, or -1. */
static void trace_header(const char *who, const struct usbip_header *h,
			 int type)
{
	const struct usbip_header_cmd_submit *cmd = &h->u.cmd_submit;
	const struct usbip_header_ret_submit *ret = &h->u.ret_submit;
	char what[96] = "";

	if (verbose < 2)
		return;
	switch (h->base.command) {
	case USBIP_CMD_SUBMIT:
		if (h->base.ep == 0)
			describe_setup(cmd->setup, what, sizeof(what));
		else
			snprintf(what, sizeof(what), "%s%slen %d",
				 transfer_type_name(type),
				 *transfer_type_name(type) ? " " : "",
				 cmd->transfer_buffer_length);
		if (cmd->number_of_packets > 0)
			snprintf(what + strlen(what),
				 sizeof(what) - strlen(what),
				 " in %d packets", cmd->number_of_packets);
		warnx("%s: seq %u > CMD_SUBMIT ep %u %s %s%s", who,
		      h->base.seqnum, h->base.ep,
		      h->base.direction == USBIP_DIR_IN ? "in" : "out",
		      h->base.ep == 0 ? "control " : "", what);
		break;
	case USBIP_RET_SUBMIT:
		warnx("%s: seq %u < RET_SUBMIT %s actual %d%s", who,
		      h->base.seqnum, status_name(ret->status),
		      ret->actual_length,
		      ret->error_count > 0 ? " (iso errors)" : "");
		break;
	case USBIP_CMD_UNLINK:
		warnx("%s: seq %u > CMD_UNLINK seq %u", who, h->base.seqnum,
		      h->u.cmd_unlink.seqnum);
		break;
	case USBIP_RET_UNLINK:
		warnx("%s: seq %u < RET_UNLINK %s", who, h->base.seqnum,
		      status_name(h->u.ret_unlink.status));
		break;
	}
}

/* A reply as queued, in its wire form: the server's trace hook. */
static void trace_reply(const char *who, const uint8_t *head)
{
	struct usbip_header h;

	if (verbose < 2)
		return;
	unpack_header(head, &h);
	trace_header(who, &h, -1);
}

/* ==== --allow CIDR,...: who may connect ================================== */

struct cidr {
	int family;
	uint8_t addr[16];
	int bits;
};

static ONCE void parse_allow(struct serve_opts *o, const char *list)
{
	char *copy = strdup(list), *tok, *save = NULL;

	if (!copy)
		err(1, "strdup");
	for (tok = strtok_r(copy, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		char *slash = strchr(tok, '/');
		struct cidr r = { 0 };
		int max;

		if (slash)
			*slash = '\0';
		if (inet_pton(AF_INET, tok, r.addr) == 1)
			r.family = AF_INET, max = 32;
		else if (inet_pton(AF_INET6, tok, r.addr) == 1)
			r.family = AF_INET6, max = 128;
		else
			errx(1, "--allow: %s is not an IPv4 or IPv6 address",
			     tok);
		r.bits = max;
		if (slash)
			r.bits = (int)parse_number(slash + 1, 0, max,
					"--allow: bad prefix length /%s");
		o->allowed = realloc(o->allowed, (size_t)(o->nallowed + 1) *
				     sizeof(*o->allowed));
		if (!o->allowed)
			err(1, "realloc");
		o->allowed[o->nallowed++] = r;
	}
	free(copy);
}

static ONCE int prefix_matches(const uint8_t *a, const uint8_t *b, int bits)
{
	int full = bits / 8, rest = bits % 8;

	if (memcmp(a, b, (size_t)full) != 0)
		return 0;
	return rest == 0 || ((a[full] ^ b[full]) & (0xff00 >> rest)) == 0;
}

static int is_allowed(const struct serve_opts *o, const struct sockaddr *sa)
{
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
	const uint8_t *addr;
	int family = sa->sa_family, i;

	if (o->nallowed == 0)
		return 1;
	if (family == AF_INET) {
		addr = (const uint8_t *)
		    &((const struct sockaddr_in *)sa)->sin_addr;
	} else if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
		family = AF_INET;
		addr = sin6->sin6_addr.s6_addr + 12;
	} else {
		addr = sin6->sin6_addr.s6_addr;
	}
	for (i = 0; i < o->nallowed; i++)
		if (o->allowed[i].family == family &&
		    prefix_matches(addr, o->allowed[i].addr,
				   o->allowed[i].bits))
			return 1;
	return 0;
}

/* ==== dialing either way: serve --connect, attach --listen =============== */

/* --connect: the device side dials out, retrying with backoff. */
static ONCE void redial(struct server *sv)
{
	char host[256], port[32], peer[300], why[512];
	int fd, wait_ms;

	if (conns || now_ms() < sv->redial_ms)
		return;
	split_host_port(sv->o->connect_to, host, sizeof(host), port,
			sizeof(port));
	name_peer(host, port, peer, sizeof(peer));
	fd = try_dial(host, port, why, sizeof(why));
	if (fd >= 0) {
		add_conn(fd, fd, peer, sv->o);
		sv->backoff_ms = 0;
		return;
	}
	wait_ms = backoff(&sv->backoff_ms);
	warnx("%s; again in %d s", why, wait_ms / 1000);
	sv->redial_ms = now_ms() + wait_ms;
}

/*
 * How long to wait before trying again: 1 s, doubling up to REDIAL_MAX_MS
 * (serve --connect, attach --persist).  *NEXT_MS is 0 after a success.
 */
static ONCE int backoff(int *next_ms)
{
	int wait_ms = *next_ms ? *next_ms : 1000;

	*next_ms = wait_ms * 2 > REDIAL_MAX_MS ? REDIAL_MAX_MS : wait_ms * 2;
	return wait_ms;
}

/* --listen: the device side dials us (it is behind NAT, say). */
static ONCE void accept_one(const char *where, struct link *l)
{
	char addr[256], port[32];
	struct sockaddr_storage sa;
	socklen_t len = sizeof(sa);
	int lfd[MAX_LISTENERS], n, i, fd = -1;
	struct pollfd pfd[MAX_LISTENERS];

	/* "PORT" or "ADDR:PORT": a lone number is a port here. */
	if (strspn(where, "0123456789") == strlen(where))
		snprintf(addr, sizeof(addr), "*:%s", where);
	else
		snprintf(addr, sizeof(addr), "%s", where);
	split_host_port(addr, l->host, sizeof(l->host), port, sizeof(port));
	n = listen_on(strcmp(l->host, "*") ? l->host : NULL, port, lfd,
		      MAX_LISTENERS);
	for (i = 0; i < n; i++)
		pfd[i] = (struct pollfd){ lfd[i], POLLIN, 0 };
	debug(1, "waiting for a server to dial port %s", port);
	while (fd < 0) {
		if (poll(pfd, (nfds_t)n, -1) < 0 && errno != EINTR)
			err(1, "poll");
		for (i = 0; i < n && fd < 0; i++)
			if (pfd[i].revents)
				fd = accept4(lfd[i], (struct sockaddr *)&sa,
					     &len, SOCK_CLOEXEC);
	}
	for (i = 0; i < n; i++)
		close(lfd[i]);
	set_blocking(fd);
	set_tcp_options(fd);
	format_peer((struct sockaddr *)&sa, l->peer, sizeof(l->peer));
	/* The record names the peer the way `usbip port` prints it. */
	split_host_port(l->peer, l->host, sizeof(l->host), l->service,
			sizeof(l->service));
	l->rfd = l->wfd = fd;
}

/* ==== one session over a pipe: serve --stdio, attach --via =============== */

/* --via: run COMMAND with its stdin and stdout as our two pipes. */
static ONCE void spawn_via(const char *command, struct link *l)
{
	int in[2], out[2];

	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0)
		err(1, "pipe");
	l->child = fork();
	if (l->child < 0)
		err(1, "fork");
	if (l->child == 0) {
		dup2(in[0], STDIN_FILENO);
		dup2(out[1], STDOUT_FILENO);
		execl("/bin/sh", "sh", "-c", command, (char *)NULL);
		err(127, "/bin/sh");
	}
	close(in[0]);
	close(out[1]);
	l->wfd = in[1];
	l->rfd = out[0];
	l->timeout_ms = VIA_TIMEOUT_MS;
	snprintf(l->peer, sizeof(l->peer), "'%s'", command);
	snprintf(l->host, sizeof(l->host), "via");
	snprintf(l->service, sizeof(l->service), "relay");
}

/*
 * vhci_hcd must be given a socket, so with --via it gets one end of a
 * socketpair and we copy bytes between the other end and the pipes.  The
 * copy reads the framing as it passes: that is what -vv prints and
 * --pcap records, and a stream that stops making sense ends the session
 * instead of confusing the kernel.
 */
struct framer {
	const char *who;
	uint8_t head[USBIP_HEADER_SIZE];
	size_t have;			/* header bytes so far */
	uint64_t skip;			/* payload bytes still to pass */
	struct usbip_header h;		/* the message passing */
	struct usbip_header cmd;	/* the CMD_SUBMIT it answers */
	struct capture *cap;		/* attach --pcap, or NULL; then: */
	uint32_t devid;			/* the device's busnum and devnum */
	uint8_t *payload;		/* the message's payload so far */
	size_t got, room;
};

/* The commands awaiting replies, as their headers. */
static struct usbip_header *pending;
static size_t npending, pending_cap;

static void remember(const struct usbip_header *h)
{
	if (npending == pending_cap) {
		pending_cap = pending_cap ? pending_cap * 2 : 64;
		pending = realloc(pending, pending_cap * sizeof(*pending));
		if (!pending)
			err(1, "realloc");
	}
	pending[npending++] = *h;
}

/* Forgets the COMMAND numbered SEQNUM into CMD; returns 0 if unknown. */
static int forget(uint32_t seqnum, uint32_t command, struct usbip_header *cmd)
{
	size_t i;

	for (i = 0; i < npending; i++) {
		if (pending[i].base.seqnum == seqnum &&
		    pending[i].base.command == command) {
			*cmd = pending[i];
			pending[i] = pending[--npending];
			return 1;
		}
	}
	return 0;
}

/* How many bytes follow F's header; -1 if the header makes no sense. */
static int64_t payload_after(struct framer *f)
{
	const struct usbip_header *h = &f->h;
	const struct usbip_header_cmd_submit *cmd = &f->cmd.u.cmd_submit;
	const struct usbip_header_ret_submit *ret = &h->u.ret_submit;
	struct usbip_header victim;
	int32_t np = h->u.cmd_submit.number_of_packets;

	switch (h->base.command) {
	case USBIP_CMD_SUBMIT:
		if (h->u.cmd_submit.transfer_buffer_length < 0 ||
		    h->base.direction > USBIP_DIR_IN)
			return -1;
		remember(h);
		return (h->base.direction == USBIP_DIR_OUT ?
			h->u.cmd_submit.transfer_buffer_length : 0) +
		       (np > 0 ? (int64_t)np * USBIP_ISO_DESC_SIZE : 0);
	case USBIP_RET_SUBMIT:
		/* vhci_rx.c drops the device on more data or other packets
		 * than the CMD_SUBMIT's, which alone says the direction. */
		if (!forget(h->base.seqnum, USBIP_CMD_SUBMIT, &f->cmd) ||
		    ret->actual_length < 0 ||
		    ret->actual_length > cmd->transfer_buffer_length ||
		    ((np > 0 || cmd->number_of_packets > 0) &&
		     np != cmd->number_of_packets))
			return -1;
		return (f->cmd.base.direction == USBIP_DIR_IN ?
			ret->actual_length : 0) +
		       (np > 0 ? (int64_t)np * USBIP_ISO_DESC_SIZE : 0);
	case USBIP_CMD_UNLINK:
		remember(h);
		return 0;
	case USBIP_RET_UNLINK:
		/* The unlinked URB gets no RET_SUBMIT if this says so. */
		f->cmd.base.command = 0;
		if (forget(h->base.seqnum, USBIP_CMD_UNLINK, &victim) &&
		    h->u.ret_unlink.status != 0)
			forget(victim.u.cmd_unlink.seqnum, USBIP_CMD_SUBMIT,
			       &f->cmd);
		return 0;
	default:
		return -1;
	}
}

/* Reads a header that F has whole; returns 0 if it makes sense. */
static int frame_header(struct framer *f)
{
	int64_t more;

	f->have = 0;
	unpack_header(f->head, &f->h);
	trace_header(f->who, &f->h, -1);
	more = payload_after(f);
	if (more < 0) {
		warnx("%s: broken stream at seq %u (command %u)", f->who,
		      f->h.base.seqnum, f->h.base.command);
		return -1;
	}
	f->skip = (uint64_t)more;
	f->got = 0;
	if (f->cap && f->skip > f->room) {
		free(f->payload);
		f->room = 0;
		f->payload = malloc((size_t)f->skip);
		if (f->payload)
			f->room = (size_t)f->skip;
		else
			stop_capture(f->cap);
	}
	return 0;
}

/* Follows the framing of N bytes passing through; 0 while it makes sense. */
static int frame(struct framer *f, const uint8_t *p, size_t n)
{
	while (n > 0) {
		size_t step;

		if (f->skip > 0) {
			step = n < f->skip ? n : (size_t)f->skip;
			if (f->room)
				memcpy(f->payload + f->got, p, step);
			f->got += step;
			f->skip -= step;
		} else {
			step = USBIP_HEADER_SIZE - f->have;
			step = n < step ? n : step;
			memcpy(f->head + f->have, p, step);
			f->have += step;
			if (f->have == USBIP_HEADER_SIZE &&
			    frame_header(f) != 0)
				return -1;
		}
		if (f->have == 0 && f->skip == 0 && f->cap)
			capture_passing(f);	/* a message whole */
		p += step;
		n -= step;
	}
	return 0;
}

enum pumped { PUMPED, PUMP_EOF, PUMP_READ_ERROR, PUMP_BROKEN,
	      PUMP_WRITE_ERROR };

/* Copies what FROM has into TO; says how that went (errno with errors). */
static enum pumped pump(int from, int to, struct framer *f)
{
	uint8_t buf[65536];
	ssize_t n = read(from, buf, sizeof(buf));

	if (n < 0)
		return errno == EINTR ? PUMPED : PUMP_READ_ERROR;
	if (n == 0)
		return PUMP_EOF;
	if (frame(f, buf, (size_t)n) != 0)
		return PUMP_BROKEN;	/* frame() said why */
	return write_fully(to, buf, (size_t)n) == 0 ? PUMPED :
						      PUMP_WRITE_ERROR;
}

/* Returns 0 when vhci_hcd ended the session (detach), 1 otherwise. */
static int relay(int vhci, const struct link *l,
		 const struct attach_opts *o, uint32_t devid)
{
	struct framer f[2] = { { .who = l->peer, .cap = o->capture,
				 .devid = devid } };
	int rc;

	f[1] = f[0];
	rc = pass_both_ways(vhci, l, o->busy_poll_us, f);
	free(f[0].payload);
	free(f[1].payload);
	return rc;
}

/* relay()'s loop: F[0] frames what goes to the server, F[1] the rest. */
static int pass_both_ways(int vhci, const struct link *l, long busy_poll_us,
			  struct framer *f)
{
	struct busy_poll busy = { .usec = busy_poll_us };
	struct pollfd pfd[2] = {
		{ .fd = vhci, .events = POLLIN },
		{ .fd = l->rfd, .events = POLLIN },
	};
	enum pumped r;

	for (;;) {
		int wait_ms = busy_poll_wait(&busy, -1),
		    ready = poll(pfd, 2, wait_ms);

		busy_poll_after(&busy, ready, wait_ms);
		if (ready < 0) {
			if (errno == EINTR && !stop_requested)
				continue;
			return 1;
		}
		/* vhci_hcd's side: its end closes when the port detaches. */
		r = pfd[0].revents ? pump(vhci, l->wfd, &f[0]) : PUMPED;
		if (r == PUMP_EOF || r == PUMP_READ_ERROR)
			return 0;
		if (r == PUMP_WRITE_ERROR)
			warn("%s: cannot write to it", l->peer);
		if (r != PUMPED)
			return 1;
		r = pfd[1].revents ? pump(l->rfd, vhci, &f[1]) : PUMPED;
		if (r == PUMP_EOF)
			warnx("%s closed the connection", l->peer);
		else if (r == PUMP_READ_ERROR)
			warn("%s: cannot read from it", l->peer);
		else if (r == PUMP_WRITE_ERROR)
			warn("%s: cannot write to vhci_hcd", l->peer);
		if (r != PUMPED)
			return 1;
	}
}

static ONCE void end_child(struct link *l)
{
	int i;

	if (l->child <= 0)
		return;
	for (i = 0; i < 50 && waitpid(l->child, NULL, WNOHANG) == 0; i++)
		usleep(100 * 1000);
	if (i == 50) {
		kill(l->child, SIGTERM);
		waitpid(l->child, NULL, 0);
	}
	l->child = 0;
}

/* ==== --persist: import again when the connection drops ================== */

static ONCE int port_in_use(const char *dir, int port)
{
	struct vhci_port p;

	return find_vhci_port(dir, port, &p) && p.status != VHCI_STATE_FREE;
}

/*
 * --persist: every import runs in a child, so its one-line errors (err(3)
 * style, exiting) stay simple; the parent watches the port the child
 * printed and imports again, with backoff, once the port is free.  A
 * child that exits EXIT_PERMANENT met an error that trying again cannot
 * mend (the busid is not offered, vhci_hcd refuses us), and said so.
 */
static ONCE int attach_persist(const struct attach_opts *o, const char *dir)
{
	int backoff_ms = 0, status, wait_ms;
	sigset_t unblocked;

	catch_stop_signals(&unblocked);
	sigprocmask(SIG_SETMASK, &unblocked, NULL);
	while (!stop_requested) {
		pid_t pid;
		int port = import_in_child(o, dir, &pid);

		if (port >= 0) {
			printf("%d\n", port);
			fflush(stdout);
			backoff_ms = 0;
			/* --via: the child is the relay; else the kernel. */
			if (!o->via)
				wait_while_attached(dir, port);
		}
		if (stop_requested)
			kill(pid, SIGTERM);
		waitpid(pid, &status, 0);
		if (stop_requested)
			break;
		if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_PERMANENT)
			return 1;
		wait_ms = backoff(&backoff_ms);
		warnx("%s: %s %s; importing again in %d s", o->busid,
		      port >= 0 ? "connection lost to" : "import failed from",
		      o->via ? o->via : o->listen ? o->listen : o->target,
		      wait_ms / 1000);
		sleep((unsigned)(wait_ms / 1000));
	}
	return 0;
}

/* Forks attach_once(); returns the port it printed, or -1 if none. */
static ONCE int import_in_child(const struct attach_opts *o, const char *dir,
				pid_t *pid)
{
	char line[32];
	size_t n = 0;
	ssize_t got;
	int out[2];

	if (pipe(out) < 0)
		err(1, "pipe");
	*pid = fork();
	if (*pid < 0)
		err(1, "fork");
	if (*pid == 0) {
		close(out[0]);
		dup2(out[1], STDOUT_FILENO);
		permanent_error = EXIT_PERMANENT;
		exit(attach_once(o, dir));
	}
	close(out[1]);
	while (n < sizeof(line) - 1 && !memchr(line, '\n', n)) {
		got = read(out[0], line + n, sizeof(line) - 1 - n);
		if (got <= 0 && !(got < 0 && errno == EINTR && !stop_requested))
			break;
		n += got > 0 ? (size_t)got : 0;
	}
	close(out[0]);
	line[n] = '\0';
	return isdigit((unsigned char)line[0]) ? atoi(line) : -1;
}

/* Sleeps while the kernel has PORT; a stop signal detaches it. */
static ONCE void wait_while_attached(const char *dir, int port)
{
	char arg[16];

	while (!stop_requested && port_in_use(dir, port))
		sleep(1);
	if (stop_requested && port_in_use(dir, port)) {
		snprintf(arg, sizeof(arg), "%d", port);
		write_sysfs(dir, "detach", arg);
		remove_record(port);
	}
}

/* ==== --pcap FILE: every URB as usbmon records, for Wireshark ============ */

/*
 * serve --pcap writes each URB as the kernel's usbmon would have seen it
 * on the server, so Wireshark and tshark decode the USB traffic itself
 * (descriptors, SCSI commands, HID reports), not only USB/IP's headers:
 * an 'S' record when a CMD_SUBMIT has been read, with its setup packet
 * and OUT data, and a 'C' record for its reply, with the status, IN data
 * and iso descriptors.  The format is in p2pusb.h.  A write that fails
 * ends the capture with one line, never a session.  The --via relay
 * writes the same records from the messages passing through it.
 */
#define PCAP_SNAPLEN	(1u << 27)	/* Wireshark's limit for USB */

struct capture {
	FILE *f;			/* NULL once a write failed */
	const char *path;
};

/* Opens PATH ("-": stdout) for serve --pcap, with the file header. */
static ONCE struct capture *open_capture(const char *path)
{
	static struct capture cap;
	struct pcap_file_header h = {
		PCAP_MAGIC, 2, 4, 0, 0, PCAP_SNAPLEN,
		LINKTYPE_USB_LINUX_MMAPPED,
	};

	cap.path = path;
	cap.f = strcmp(path, "-") ? fopen(path, "we") : stdout;
	if (!cap.f || setvbuf(cap.f, NULL, _IOFBF, 65536) != 0)
		err(1, "--pcap %s", path);
	if (fwrite(&h, sizeof(h), 1, cap.f) != 1 || fflush(cap.f) != 0)
		err(1, "--pcap %s", path);
	return &cap;
}

/* What a usbmon record tells of one URB, whoever saw it pass. */
struct urb_seen {
	const struct usbip_header *cmd;	/* its CMD_SUBMIT */
	uint32_t devid;			/* busnum << 16 | devnum */
	uint8_t xfer_type;		/* USBMON_* */
	const uint8_t *data;
	const uint8_t *iso;		/* its iso descriptors, or NULL */
};

static void capture_submit(struct urb *u)
{
	capture_served(u, 'S', -EINPROGRESS,
		       u->cmd.u.cmd_submit.transfer_buffer_length);
}

static void capture_reply(struct urb *u, int32_t status, int32_t actual)
{
	capture_served(u, 'C', status, actual);
}

/* The server's records: U knows its endpoint's type and its device. */
static void capture_served(struct urb *u, char type, int32_t status,
			   int32_t length)
{
	struct urb_seen s = { &u->cmd, u->conn->devid, 0, urb_data(u),
			      u->iso };

	if (!u->conn->o->capture)
		return;		/* no --pcap: nothing per URB */
	s.xfer_type = usbmon_type(u);
	capture_urb(u->conn->o->capture, &s, type, status, (uint32_t)length);
}

/* usbmon's numbers for the endpoint's transfer type. */
static uint8_t usbmon_type(const struct urb *u)
{
	static const uint8_t from_libusb[] = {
		[LIBUSB_TRANSFER_TYPE_CONTROL] = USBMON_CONTROL,
		[LIBUSB_TRANSFER_TYPE_ISOCHRONOUS] = USBMON_ISO,
		[LIBUSB_TRANSFER_TYPE_BULK] = USBMON_BULK,
		[LIBUSB_TRANSFER_TYPE_INTERRUPT] = USBMON_INTERRUPT,
	};
	unsigned ep = u->cmd.base.ep, dir = u->cmd.base.direction;
	int type = ep == 0 ? LIBUSB_TRANSFER_TYPE_CONTROL :
			     u->conn->eptype[dir][ep];

	return type < 4 ? from_libusb[type] : USBMON_BULK;
}

/*
 * attach --via --pcap: the relay's records, for each message it has
 * whole.  The relay sees no descriptors, so it tells the transfer type
 * from the URB: endpoint 0 is control, packets make it isochronous, an
 * interval interrupt, and the rest is bulk.
 */
static void capture_passing(struct framer *f)
{
	const struct usbip_header *h = &f->h, *cmd = &f->cmd;
	int32_t np, status = h->u.ret_submit.status,
		length = h->u.ret_submit.actual_length;
	struct urb_seen s = { cmd, f->devid, USBMON_BULK, f->payload, NULL };
	char type = 'C';

	if (h->base.command == USBIP_CMD_SUBMIT) {
		s.cmd = cmd = h;
		type = 'S';
		status = -EINPROGRESS;
		length = h->u.cmd_submit.transfer_buffer_length;
	} else if (h->base.command == USBIP_RET_UNLINK &&
		   cmd->base.command == USBIP_CMD_SUBMIT) {
		status = h->u.ret_unlink.status;
		length = 0;
	} else if (h->base.command != USBIP_RET_SUBMIT) {
		return;
	}
	np = cmd->u.cmd_submit.number_of_packets;
	s.xfer_type = cmd->base.ep == 0 ? USBMON_CONTROL : np > 0 ?
		USBMON_ISO : cmd->u.cmd_submit.interval ? USBMON_INTERRUPT :
		USBMON_BULK;
	if (np > 0 && f->got >= (size_t)np * USBIP_ISO_DESC_SIZE)
		/* the descriptors follow the data */
		s.iso = f->payload + f->got - (size_t)np * USBIP_ISO_DESC_SIZE;
	capture_urb(f->cap, &s, type, status, (uint32_t)length);
}

/*
 * One usbmon record of TYPE for the URB S: STATUS and LENGTH as usbmon
 * means them, and the data that goes with them ('S' OUT, 'C' IN).
 */
static void capture_urb(struct capture *cap, const struct urb_seen *s,
			char type, int32_t status, uint32_t length)
{
	const struct usbip_header_cmd_submit *cmd = &s->cmd->u.cmd_submit;
	int in = s->cmd->base.direction == USBIP_DIR_IN, failed;
	uint32_t len = (type == 'S') != in ? length : 0, i;
	struct usbmon_packet m = { .type = (uint8_t)type };
	struct pcap_record_header r;
	struct timespec ts;

	if (!cap || !cap->f)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	m.id = s->cmd->base.seqnum;
	m.xfer_type = s->xfer_type;
	m.epnum = (uint8_t)(s->cmd->base.ep | (in ? LIBUSB_ENDPOINT_IN : 0));
	m.devnum = (uint8_t)s->devid;
	m.busnum = (uint16_t)(s->devid >> 16);
	m.flag_setup = type == 'S' && s->cmd->base.ep == 0 ? 0 : '-';
	if (m.flag_setup == 0)
		memcpy(m.s.setup, cmd->setup, sizeof(m.s.setup));
	/* No data: '<' for an IN submission, '>' for an OUT completion. */
	m.flag_data = len ? 0 : type == 'S' && in ? '<' : type == 'C' && !in ?
		      '>' : 0;
	m.ts_sec = ts.tv_sec;
	m.ts_usec = (int32_t)(ts.tv_nsec / 1000);
	m.status = status;
	m.length = length;
	m.len_cap = len;
	m.interval = cmd->interval;
	m.start_frame = cmd->start_frame;
	m.xfer_flags = cmd->transfer_flags;
	m.ndesc = s->iso && cmd->number_of_packets > 0 ?
		  (uint32_t)cmd->number_of_packets : 0;
	if (m.ndesc > 0)	/* the union's other half: no setup then */
		m.s.iso.numdesc = (int32_t)m.ndesc;
	for (i = 0; i < m.ndesc; i++)
		m.s.iso.error_count += usbmon_desc(s, i, type).status != 0;
	r = (struct pcap_record_header){ (uint32_t)ts.tv_sec,
		(uint32_t)m.ts_usec, 0, 0 };
	r.incl_len = r.orig_len = (uint32_t)(sizeof(m) + len +
		m.ndesc * sizeof(struct usbmon_iso_desc));
	failed = fwrite(&r, sizeof(r), 1, cap->f) != 1 ||
		 fwrite(&m, sizeof(m), 1, cap->f) != 1;
	for (i = 0; i < m.ndesc && !failed; i++) {
		struct usbmon_iso_desc d = usbmon_desc(s, i, type);

		failed = fwrite(&d, sizeof(d), 1, cap->f) != 1;
	}
	if (failed || !capture_data(cap->f, s->data, len) || fflush(cap->f))
		stop_capture(cap);
}

static ONCE void stop_capture(struct capture *cap)
{
	if (!cap->f)
		return;
	warn("--pcap %s: capture stopped", cap->path);
	fclose(cap->f);
	cap->f = NULL;
}

/* The Ith iso descriptor of S as usbmon has it in a record of TYPE. */
static struct usbmon_iso_desc usbmon_desc(const struct urb_seen *s,
					  uint32_t i, char type)
{
	struct usbip_iso_packet_descriptor w;

	unpack_iso_desc(s->iso + (size_t)i * USBIP_ISO_DESC_SIZE, &w);
	return (struct usbmon_iso_desc){ type == 'C' ? (int32_t)w.status : 0,
		w.offset, type == 'C' ? w.actual_length : w.length, 0 };
}

/*
 * Copies LEN bytes of DATA into F through stdio's own buffer, a page at a
 * time: a usbfs-mapped transfer buffer is no memory that write() may be
 * given for every file (9p, for one, fails with EFAULT).  Returns 0 if
 * a write failed.
 */
static int capture_data(FILE *f, const uint8_t *data, uint32_t len)
{
	uint32_t off, step;

	for (off = 0; off < len; off += step) {
		step = len - off < 4096 ? len - off : 4096;
		if (fwrite(data + off, 1, step, f) != step)
			return 0;
	}
	return 1;
}

/* ==== making it fast ===================================================== */

/* -- finished URBs kept for the next CMD_SUBMIT -- */

/* Only while the device is open: a mapped buffer is freed through it. */
static void destroy_urb(struct urb *u)
{
	libusb_free_transfer(u->xfer);
	free_buf(u);
	free(u->iso);
	free(u);
}

/*
 * A finished URB: kept as a spare while its connection lives.  A mapped
 * one always stays, in place of an unmapped spare if need be: with at most
 * URB_SPARES mapped per connection, there is always one to give way.
 */
static void put_urb(struct urb *u)
{
	struct conn *c = u->conn;
	int i;

	if (c->fd < 0 || (!u->mapped && u->bufsize > SPARE_BYTES)) {
		destroy_urb(u);
		return;
	}
	if (c->nspare < URB_SPARES) {
		c->spare[c->nspare++] = u;
		return;
	}
	for (i = 0; u->mapped && i < c->nspare; i++) {
		if (!c->spare[i]->mapped) {
			destroy_urb(c->spare[i]);
			c->spare[i] = u;
			return;
		}
	}
	destroy_urb(u);
}

/*
 * A URB with room for LEN buffer bytes and NP iso packets, or NULL when
 * memory is short.  The spare that fits best is reused (or, failing that,
 * grown), so a connection in its steady state allocates nothing per URB.
 */
static struct urb *get_urb(struct conn *c, size_t len, int np)
{
	struct urb *u;
	int i, best = -1;

	for (i = 0; i < c->nspare; i++)
		if (c->spare[i]->bufsize >= len &&
		    c->spare[i]->max_packets >= np &&
		    (best < 0 || c->spare[i]->bufsize <
				 c->spare[best]->bufsize))
			best = i;
	if (best < 0)
		best = c->nspare - 1;
	if (best >= 0) {
		u = c->spare[best];
		c->spare[best] = c->spare[--c->nspare];
		u->unlinked = 0;
	} else if ((u = calloc(1, sizeof(*u))) != NULL) {
		u->conn = c;
	} else {
		return NULL;
	}
	if (u->bufsize < len) {
		free_buf(u);
		alloc_buf(u, len);
	}
	if (!u->xfer || u->max_packets < np) {
		libusb_free_transfer(u->xfer);
		u->xfer = libusb_alloc_transfer(np);
		free(u->iso);
		u->iso = malloc((size_t)np * USBIP_ISO_DESC_SIZE + 1);
		u->max_packets = np;
	}
	if (!u->buf || !u->xfer || !u->iso) {
		destroy_urb(u);
		return NULL;
	}
	return u;
}

static ONCE void drop_spares(struct conn *c)
{
	while (c->nspare > 0)
		destroy_urb(c->spare[--c->nspare]);
}

/* -- transfer buffers mapped from usbfs -- */

/*
 * Buffers of a page or more are usbfs's own memory, mapped from the device
 * node: the kernel then moves the data straight between the device and the
 * buffer we read() OUT payloads into and writev() IN replies from, instead
 * of copying it in and out of a buffer of its own.
 *
 * Three limits keep that a gain.  Only where DMA is cache-coherent (x86):
 * elsewhere usbfs may map the memory uncached, and every reply read from
 * it would cost more than the copy saved.  A connection maps at most
 * URB_SPARES buffers and keeps them until it ends (see put_urb()): a
 * mapping is slow to make.  And usbfs charges mappings to its system-wide
 * budget (usbfs_memory_mb, 16 MiB by default), the one that also pays for
 * every malloc'd buffer in flight: MAPPED_LIMIT leaves most of it to those
 * and to other programs.  Past any limit, or where the kernel cannot map
 * usbfs, buffers come from malloc().
 */
static size_t mapped_bytes;

static void alloc_buf(struct urb *u, size_t len)
{
	struct conn *c = u->conn;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t mapped = (len + page - 1) / page * page;

	u->buf = NULL;
	u->mapped = 0;
	if (MAP_USBFS && c->handle && len >= page &&
	    c->nmapped < URB_SPARES && mapped_bytes + mapped <= MAPPED_LIMIT &&
	    (u->buf = libusb_dev_mem_alloc(c->handle, mapped)) != NULL) {
		u->mapped = 1;
		u->bufsize = mapped;
		mapped_bytes += mapped;
		c->nmapped++;
		return;
	}
	u->buf = malloc(len);
	u->bufsize = len;
}

static void free_buf(struct urb *u)
{
	if (u->mapped) {
		libusb_dev_mem_free(u->conn->handle, u->buf, u->bufsize);
		mapped_bytes -= u->bufsize;
		u->conn->nmapped--;
	} else {
		free(u->buf);
	}
	u->buf = NULL;
	u->bufsize = 0;
	u->mapped = 0;
}

/* -- --busy-poll USEC: spin a while before sleeping -- */

/*
 * A round trip through a user-space server wakes it twice, and in a VM a
 * wakeup can cost more than the transfer.  With --busy-poll, a loop that
 * just had an event keeps polling without sleeping for up to USEC
 * microseconds, so the next event of a busy device finds it awake; then
 * it blocks as before, and an idle server costs nothing.  Each empty
 * round yields the CPU: on a machine with few CPUs the spinning must not
 * keep the work it waits for (vhci_hcd's threads, the device's) from
 * running.
 */
static long long now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/* The poll timeout to use: 0 while the window is open, else WAIT_MS. */
static int busy_poll_wait(const struct busy_poll *b, int wait_ms)
{
	return b->usec && now_us() < b->until_us ? 0 : wait_ms;
}

/* After poll() returned READY: an event reopens the window. */
static void busy_poll_after(struct busy_poll *b, int ready, int waited_ms)
{
	if (!b->usec)
		return;
	if (ready > 0)
		b->until_us = now_us() + b->usec;
	else if (ready == 0 && waited_ms == 0)
		sched_yield();
}

static ONCE long parse_busy_poll(const char *arg)
{
	return parse_number(arg, 1, 1000000,
			    "--busy-poll: %s is not 1..1000000 microseconds");
}

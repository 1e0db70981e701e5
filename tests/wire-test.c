/*
 * wire-test.c - p2pusb's wire encoding against hand-written byte vectors.
 *
 * Every vector below was written by hand from the kernel's USB/IP sources
 * (include/uapi/linux/usbip.h, drivers/usb/usbip/usbip_common.h and
 * Documentation/usb/usbip_protocol.rst: offsets, sizes, big-endian), never
 * produced by p2pusb's own encoder: a vector places bytes at the offsets
 * those give and everything else is
 * zero.  Encoders write into a buffer prefilled with 0xaa and followed by a
 * guard, so a byte left unwritten or written past the end shows up too.
 *
 * Build, from the top of the tree:
 *   cc -std=c11 -Wall -Wextra -Werror -g -fsanitize=address,undefined \
 *      $(pkg-config --cflags libusb-1.0) -o tests/wire-test \
 *      tests/wire-test.c $(pkg-config --libs libusb-1.0)
 *
 * Output: "ok NAME" or "FAIL NAME: detail" per check, then a total line;
 * the exit status is 1 if anything failed.
 */
#define main p2pusb_main
#include "../p2pusb.c"
#undef main

#define MSG_MAX		512	/* largest vector: OP_REP_DEVLIST, 328 bytes */
#define GUARD		16	/* bytes after a message an encoder must not touch */
#define POISON		0xaa
#define PREFIX_LEN	96	/* a test's name ... */
#define NAME_LEN	160	/* ... and with a field appended: always fits */

static int n_pass, n_fail;

/* ---- reporting ------------------------------------------------------- */

static void pass(const char *name)
{
	printf("ok %s\n", name);
	n_pass++;
}

static void fail(const char *name, const char *fmt, ...)
{
	va_list ap;

	printf("FAIL %s: ", name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	n_fail++;
}

/* Rows of 16 that differ: wanted bytes, got bytes, ^^ under each mismatch.
 * base is the offset of want[0] in its message, for the row labels. */
static void dump_diff(const uint8_t *want, const uint8_t *got, size_t len,
		      size_t base)
{
	size_t row, i, last, shown = 0;

	for (row = 0; row < len && shown < 8; row += 16) {
		size_t end = row + 16 < len ? row + 16 : len;

		if (memcmp(want + row, got + row, end - row) == 0)
			continue;
		printf("    %04zx want:", base + row);
		for (i = row; i < end; i++)
			printf(" %02x", want[i]);
		printf("\n    %4s  got:", "");
		for (i = row; i < end; i++)
			printf(" %02x", got[i]);
		for (last = end - 1; want[last] == got[last]; last--)
			;
		printf("\n    %4s      ", "");
		for (i = row; i <= last; i++)
			printf(" %s", want[i] == got[i] ? "  " : "^^");
		printf("\n");
		shown++;
	}
}

/* len bytes at offset base of a message, compared with the vector's. */
static void check_bytes(const char *name, const uint8_t *got,
			const uint8_t *want, size_t len, size_t base)
{
	size_t i;

	for (i = 0; i < len && got[i] == want[i]; i++)
		;
	if (i == len) {
		pass(name);
		return;
	}
	fail(name, "byte 0x%zx is %02x, want %02x (hex diff below)", base + i,
	     got[i], want[i]);
	dump_diff(want, got, len, base);
}

static void check_num(const char *test, const char *field, long long got,
		      long long want)
{
	char name[NAME_LEN];

	snprintf(name, sizeof(name), "%s.%s", test, field);
	if (got == want)
		pass(name);
	else
		fail(name, "got %lld (0x%llx), want %lld (0x%llx)", got,
		     (unsigned long long)got, want, (unsigned long long)want);
}

static void reverse(uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i < n / 2; i++) {
		uint8_t t = p[i];

		p[i] = p[n - 1 - i];
		p[n - 1 - i] = t;
	}
}

/* A host-order u32 of the pcap file read back, as the record says it. */
static long long get32le(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static void check_str(const char *test, const char *field, const char *got,
		      const char *want)
{
	char name[NAME_LEN];

	snprintf(name, sizeof(name), "%s.%s", test, field);
	if (strcmp(got, want) == 0)
		pass(name);
	else
		fail(name, "got \"%s\", want \"%s\"", got, want);
}

/* One line per field: TEST.field compared as a number. */
#define CHECK_FIELD(test, got, want, field) \
	check_num(test, #field, (long long)(got).field, (long long)(want).field)

/* ---- vectors ----------------------------------------------------------- */

/* "01 11 80 05" -> bytes; whitespace ignored.  A bad vector is a bug here. */
static size_t from_hex(const char *s, uint8_t *out, size_t max)
{
	size_t n = 0;
	int hi = -1;

	for (; *s; s++) {
		int v;

		if (isspace((unsigned char)*s))
			continue;
		if (!isxdigit((unsigned char)*s))
			errx(2, "vector: bad character '%c' in \"%s\"", *s, s);
		v = isdigit((unsigned char)*s) ? *s - '0'
					       : tolower((unsigned char)*s) - 'a' + 10;
		if (hi < 0) {
			hi = v;
			continue;
		}
		if (n == max)
			errx(2, "vector: more than %zu bytes", max);
		out[n++] = (uint8_t)(hi << 4 | v);
		hi = -1;
	}
	if (hi >= 0)
		errx(2, "vector: odd number of hex digits");
	return n;
}

/* Bytes at an offset of a zero-filled message: hex, or raw ASCII text. */
struct span {
	size_t off;
	const char *hex;
	const char *text;
};

#define SPANS_MAX	16

/* A len-byte vector from spans, up to one with neither hex nor text. */
static void build(uint8_t *out, size_t len, const struct span *s)
{
	memset(out, 0, len);
	for (; s->hex || s->text; s++) {
		size_t room = s->off < len ? len - s->off : 0, n;

		if (s->text) {
			n = strlen(s->text);
			if (n > room)
				errx(2, "vector: text at 0x%zx overflows", s->off);
			memcpy(out + s->off, s->text, n);
		} else {
			from_hex(s->hex, out + s->off, room);
		}
	}
}

/* ---- fixtures --------------------------------------------------------- */

/* A typical record (a Linux gadget at high speed), and one whose
 * neighbouring fields all differ, so that a field written at its
 * neighbour's offset cannot hide behind equal values. */
#define GADGET_PATH	"/sys/devices/pci0000:00/0000:00:01.2/usb1/1-1"
#define DISTINCT_PATH	"/sys/devices/pci0000:00/0000:00:14.0/usb7/7-1.4"

static const struct usbip_usb_device dev_gadget = {
	.path = GADGET_PATH, .busid = "1-1",
	.busnum = 1, .devnum = 2, .speed = USB_SPEED_HIGH,
	.idVendor = 0x1d6b, .idProduct = 0x0104, .bcdDevice = 0x0510,
	.bDeviceClass = 0, .bDeviceSubClass = 0, .bDeviceProtocol = 0,
	.bConfigurationValue = 1, .bNumConfigurations = 1,
	.bNumInterfaces = 1,
};

static const struct usbip_usb_device dev_distinct = {
	.path = DISTINCT_PATH, .busid = "7-1.4",
	.busnum = 7, .devnum = 127, .speed = USB_SPEED_SUPER,
	.idVendor = 0x046d, .idProduct = 0xc52b, .bcdDevice = 0x1234,
	.bDeviceClass = 0xef, .bDeviceSubClass = 0x02, .bDeviceProtocol = 0x01,
	.bConfigurationValue = 2, .bNumConfigurations = 3,
	.bNumInterfaces = 4,
};

/*
 * A 312-byte device record at base, by the spec's table: path @0x000 and
 * busid @0x100 NUL-padded, then @0x120 the fixed fields in one row:
 *
 *   busnum      devnum      speed       idVen idPro bcdDv cl sc pr cv nc ni
 */
#define GADGET_TAIL \
    "00 00 00 01 00 00 00 02 00 00 00 03 1d 6b 01 04 05 10 00 00 00 01 01 01"
#define DISTINCT_TAIL \
    "00 00 00 07 00 00 00 7f 00 00 00 05 04 6d c5 2b 12 34 ef 02 01 02 03 04"
#define RECORD(base, path, busid_hex, tail_hex)		\
	{ (base) + 0x000, NULL, path },			\
	{ (base) + 0x100, busid_hex, NULL },		\
	{ (base) + 0x120, tail_hex, NULL }

/* Offsets in the spec's device-record table are inside the record. */
#define DEV	OP_COMMON_SIZE

struct ret_case {
	uint32_t seqnum;
	struct usbip_header_ret_submit r;
};

/* ---- encoders under test, and decoders of the same vectors -------------- */

static void enc_op_common(uint8_t *p, const void *arg)
{
	const struct op_common *op = arg;

	pack_op_common(p, op->code, op->status);
}

static void dec_op_common(const char *t, const uint8_t *v, const void *arg)
{
	const struct op_common *want = arg;
	struct op_common op;

	unpack_op_common(v, &op);
	check_num(t, "version", op.version, USBIP_VERSION);
	CHECK_FIELD(t, op, *want, code);
	CHECK_FIELD(t, op, *want, status);
}

static void enc_req_import(uint8_t *p, const void *busid)
{
	pack_import_request(p, busid);
}

static void enc_rep_import(uint8_t *p, const void *dev)
{
	pack_op_common(p, OP_REP_IMPORT, ST_OK);
	pack_device(p + OP_COMMON_SIZE, dev);
}

static void dec_rep_import(const char *t, const uint8_t *v, const void *arg)
{
	static const struct op_common ok = { USBIP_VERSION, OP_REP_IMPORT,
					     ST_OK };
	const struct usbip_usb_device *w = arg;
	struct usbip_usb_device d;

	dec_op_common(t, v, &ok);
	memset(&d, 0xff, sizeof(d));
	unpack_device(v + OP_COMMON_SIZE, &d);
	check_str(t, "path", d.path, w->path);
	check_str(t, "busid", d.busid, w->busid);
	CHECK_FIELD(t, d, *w, busnum);
	CHECK_FIELD(t, d, *w, devnum);
	CHECK_FIELD(t, d, *w, speed);
	CHECK_FIELD(t, d, *w, idVendor);
	CHECK_FIELD(t, d, *w, idProduct);
	CHECK_FIELD(t, d, *w, bcdDevice);
	CHECK_FIELD(t, d, *w, bDeviceClass);
	CHECK_FIELD(t, d, *w, bDeviceSubClass);
	CHECK_FIELD(t, d, *w, bDeviceProtocol);
	CHECK_FIELD(t, d, *w, bConfigurationValue);
	CHECK_FIELD(t, d, *w, bNumConfigurations);
	CHECK_FIELD(t, d, *w, bNumInterfaces);
}

/* As answer_devlist() and append_device() lay it out, for one device. */
static void enc_rep_devlist(uint8_t *p, const void *dev)
{
	static const struct usbip_usb_interface mass_storage = {
		.bInterfaceClass = 0x08,
		.bInterfaceSubClass = 0x06,
		.bInterfaceProtocol = 0x50,
		.padding = 0x5a,	/* must not reach the wire */
	};

	pack_op_common(p, OP_REP_DEVLIST, ST_OK);
	put32(p + OP_COMMON_SIZE, 1);
	pack_device(p + OP_COMMON_SIZE + 4, dev);
	pack_interface(p + OP_COMMON_SIZE + 4 + USBIP_DEVICE_SIZE,
		       &mass_storage);
}

static void enc_ret_submit(uint8_t *p, const void *arg)
{
	const struct ret_case *rc = arg;

	pack_ret_submit(p, rc->seqnum, &rc->r);
}

static void enc_ret_unlink(uint8_t *p, const void *arg)
{
	const struct ret_case *rc = arg;

	pack_ret_unlink(p, rc->seqnum, rc->r.status);
}

static void enc_iso_desc(uint8_t *p, const void *desc)
{
	pack_iso_desc(p, desc);
}

static void dec_iso_desc(const char *t, const uint8_t *v, const void *arg)
{
	const struct usbip_iso_packet_descriptor *w = arg;
	struct usbip_iso_packet_descriptor d;

	unpack_iso_desc(v, &d);
	CHECK_FIELD(t, d, *w, offset);
	CHECK_FIELD(t, d, *w, length);
	CHECK_FIELD(t, d, *w, actual_length);
	check_num(t, "status(s32)", (int32_t)d.status, (int32_t)w->status);
}

static const struct op_common req_devlist = {
	USBIP_VERSION, OP_REQ_DEVLIST, ST_OK };
static const struct op_common rep_import_nodev = {
	USBIP_VERSION, OP_REP_IMPORT, ST_NODEV };
static const struct ret_case ret_stall = {
	5, { .status = -EPIPE, .actual_length = 18,
	     .padding = { 1, 2, 3, 4, 5, 6, 7, 8 } } };	/* padding: not sent */
static const struct ret_case ret_iso = {
	0x12345678, { .status = 0, .actual_length = 500, .start_frame = 16,
		      .number_of_packets = 3, .error_count = 1 } };
static const struct ret_case ret_unlinked = { 7, { .status = -ECONNRESET } };
static const struct usbip_iso_packet_descriptor iso_desc = {
	.offset = 384, .length = 192, .actual_length = 188,
	.status = (uint32_t)-EXDEV,
};

/* A field's bytes at its spec offset inside the encoded message. */
struct spot {
	const char *name;
	size_t off;
	const char *hex;
};

struct enc_case {
	const char *name;
	size_t len;
	void (*encode)(uint8_t *p, const void *arg);
	void (*decode)(const char *name, const uint8_t *vec, const void *arg);
	const void *arg;
	struct span vec[SPANS_MAX];
	struct spot spots[8];
};

static const struct enc_case enc_cases[] = {
	{ .name = "OP_REQ_DEVLIST", .len = 8,
	  .encode = enc_op_common, .decode = dec_op_common,
	  .arg = &req_devlist,
	  .vec = { { 0, "01 11 80 05 00 00 00 00", NULL } } },
	{ .name = "OP_REQ_IMPORT", .len = 40, .encode = enc_req_import,
	  .arg = "1-1.2",
	  .vec = { { 0, "01 11 80 03 00 00 00 00", NULL },
		   { 8, "31 2d 31 2e 32", NULL } },	/* "1-1.2", NUL-padded */
	  .spots = { { "busid-NUL-padded", 8 + 5,
		       "00 00 00 00 00 00 00 00 00 00 00 00 00 00"
		       "00 00 00 00 00 00 00 00 00 00 00 00 00" } } },
	/* A busid too long for char[32] keeps 31 bytes and its NUL. */
	{ .name = "OP_REQ_IMPORT.long-busid", .len = 40,
	  .encode = enc_req_import,
	  .arg = "0123456789abcdef0123456789abcdefXYZ",
	  .vec = { { 0, "01 11 80 03 00 00 00 00", NULL },
		   { 8, NULL, "0123456789abcdef0123456789abcde" } },
	  .spots = { { "busid-terminated", 39, "00" } } },
	{ .name = "OP_REP_IMPORT", .len = 320,
	  .encode = enc_rep_import, .decode = dec_rep_import,
	  .arg = &dev_gadget,
	  .vec = { { 0, "01 11 00 03 00 00 00 00", NULL },
		   RECORD(DEV, GADGET_PATH, "31 2d 31", GADGET_TAIL) },
	  .spots = { { "busid@0x100", DEV + 0x100, "31 2d 31 00" },
		     { "busnum@0x120", DEV + 0x120, "00 00 00 01" },
		     { "idVendor@0x12C", DEV + 0x12c, "1d 6b" },
		     { "bNumInterfaces@0x137-is-last-byte", 319, "01" } } },
	{ .name = "OP_REP_IMPORT.distinct-fields", .len = 320,
	  .encode = enc_rep_import, .decode = dec_rep_import,
	  .arg = &dev_distinct,
	  .vec = { { 0, "01 11 00 03 00 00 00 00", NULL },
		   RECORD(DEV, DISTINCT_PATH, "37 2d 31 2e 34",
			  DISTINCT_TAIL) } },
	/* Status != 0: only op_common goes out. */
	{ .name = "OP_REP_IMPORT.nodev", .len = 8,
	  .encode = enc_op_common, .decode = dec_op_common,
	  .arg = &rep_import_nodev,
	  .vec = { { 0, "01 11 00 03 00 00 00 04", NULL } } },
	{ .name = "OP_REP_DEVLIST", .len = 8 + 4 + 312 + 4,
	  .encode = enc_rep_devlist, .arg = &dev_gadget,
	  .vec = { { 0, "01 11 00 05 00 00 00 00  00 00 00 01", NULL },
		   RECORD(12, GADGET_PATH, "31 2d 31", GADGET_TAIL),
		   { 12 + 312, "08 06 50 00", NULL } },	/* interface */
	  .spots = { { "interface-pad-zero", 12 + 312 + 3, "00" } } },
	{ .name = "RET_SUBMIT", .len = 48, .encode = enc_ret_submit,
	  .arg = &ret_stall,
	  .vec = { { 0x00, "00 00 00 03  00 00 00 05  00 00 00 00"
			   "00 00 00 00  00 00 00 00", NULL },	/* basic */
		   { 0x14, "ff ff ff e0  00 00 00 12  00 00 00 00"
			   "00 00 00 00  00 00 00 00", NULL },
		   { 0x28, "00 00 00 00 00 00 00 00", NULL } },	/* zero[8] */
	  .spots = { { "devid-zero", 0x08, "00 00 00 00" },
		     { "direction-zero", 0x0c, "00 00 00 00" },
		     { "ep-zero", 0x10, "00 00 00 00" },
		     { "status=-32", 0x14, "ff ff ff e0" },
		     { "actual_length=18", 0x18, "00 00 00 12" } } },
	{ .name = "RET_SUBMIT.iso-distinct-fields", .len = 48,
	  .encode = enc_ret_submit, .arg = &ret_iso,
	  .vec = { { 0x00, "00 00 00 03  12 34 56 78", NULL },
		   { 0x14, "00 00 00 00  00 00 01 f4  00 00 00 10"
			   "00 00 00 03  00 00 00 01", NULL } } },
	{ .name = "RET_UNLINK", .len = 48, .encode = enc_ret_unlink,
	  .arg = &ret_unlinked,
	  .vec = { { 0x00, "00 00 00 04  00 00 00 07", NULL },
		   { 0x14, "ff ff ff 98", NULL } },	/* the rest zero */
	  .spots = { { "status=-104", 0x14, "ff ff ff 98" } } },
	{ .name = "iso_packet_descriptor", .len = 16,
	  .encode = enc_iso_desc, .decode = dec_iso_desc, .arg = &iso_desc,
	  .vec = { { 0, "00 00 01 80  00 00 00 c0  00 00 00 bc  ff ff ff ee",
		     NULL } } },
};

static void run_enc_case(const struct enc_case *c)
{
	uint8_t want[MSG_MAX], *got = malloc(c->len + GUARD), guard[GUARD];
	char name[NAME_LEN];
	const struct spot *s;

	if (!got)
		err(2, "malloc");
	build(want, c->len, c->vec);
	memset(got, POISON, c->len + GUARD);
	memset(guard, POISON, GUARD);
	c->encode(got, c->arg);

	snprintf(name, sizeof(name), "%s.encode", c->name);
	check_bytes(name, got, want, c->len, 0);
	snprintf(name, sizeof(name), "%s.encode.no-write-past-%zu", c->name,
		 c->len);
	check_bytes(name, got + c->len, guard, GUARD, c->len);
	for (s = c->spots; s->name; s++) {
		uint8_t field[64];
		size_t n = from_hex(s->hex, field, sizeof(field));

		snprintf(name, sizeof(name), "%s.%s", c->name, s->name);
		if (s->off + n > c->len)
			fail(name, "spot at 0x%zx lies outside the message",
			     s->off);
		else
			check_bytes(name, got + s->off, field, n, s->off);
	}
	free(got);
	if (c->decode) {
		snprintf(name, sizeof(name), "%s.decode", c->name);
		c->decode(name, want, c->arg);
	}
}

/* A peer's busid filling all 32 bytes must still come out terminated. */
static void test_unterminated_busid(void)
{
	uint8_t rec[USBIP_DEVICE_SIZE];
	struct usbip_usb_device d;

	memset(rec, 'x', sizeof(rec));
	unpack_device(rec, &d);
	check_num("unpack_device.unterminated", "path-strlen",
		  (long long)strlen(d.path), SYSFS_PATH_MAX - 1);
	check_num("unpack_device.unterminated", "busid-strlen",
		  (long long)strlen(d.busid), SYSFS_BUS_ID_SIZE - 1);
}

/* ---- URB-phase decoders ------------------------------------------------ */

/* The 48-byte header checked field by field against what the vector says. */
static void check_header(const char *t, const struct usbip_header *got,
			 const struct usbip_header *want)
{
	char name[NAME_LEN];

	CHECK_FIELD(t, got->base, want->base, command);
	CHECK_FIELD(t, got->base, want->base, seqnum);
	CHECK_FIELD(t, got->base, want->base, devid);
	CHECK_FIELD(t, got->base, want->base, direction);
	CHECK_FIELD(t, got->base, want->base, ep);
	if (want->base.command == USBIP_CMD_UNLINK) {
		static const uint8_t zero[24];

		check_num(t, "unlink_seqnum", got->u.cmd_unlink.seqnum,
			  want->u.cmd_unlink.seqnum);
		snprintf(name, sizeof(name), "%s.padding-zero", t);
		check_bytes(name, got->u.cmd_unlink.padding, zero, 24, 0x18);
		return;
	}
	CHECK_FIELD(t, got->u.cmd_submit, want->u.cmd_submit, transfer_flags);
	CHECK_FIELD(t, got->u.cmd_submit, want->u.cmd_submit,
		    transfer_buffer_length);
	CHECK_FIELD(t, got->u.cmd_submit, want->u.cmd_submit, start_frame);
	CHECK_FIELD(t, got->u.cmd_submit, want->u.cmd_submit,
		    number_of_packets);
	CHECK_FIELD(t, got->u.cmd_submit, want->u.cmd_submit, interval);
	snprintf(name, sizeof(name), "%s.setup-raw", t);
	check_bytes(name, got->u.cmd_submit.setup, want->u.cmd_submit.setup,
		    8, 0x28);
}

struct dec_case {
	const char *name;
	const char *hex;		/* the whole 48-byte header */
	struct usbip_header want;
};

enum { DEC_GET_DESCRIPTOR, DEC_BULK_OUT, DEC_PACKETS_NEG, DEC_UNLINK };

static const struct dec_case dec_cases[] = {
	/* Control IN GET_DESCRIPTOR(DEVICE), 18 bytes. */
	[DEC_GET_DESCRIPTOR] = { "CMD_SUBMIT.get-descriptor",
	  "00 00 00 01  00 00 00 05  00 01 00 02  00 00 00 01  00 00 00 00"
	  "00 00 02 00  00 00 00 12  00 00 00 00  00 00 00 00  00 00 00 00"
	  "80 06 00 01 00 00 12 00",
	  { { USBIP_CMD_SUBMIT, 5, 0x00010002, USBIP_DIR_IN, 0 },
	    .u.cmd_submit = { 0x200, 18, 0, 0, 0,
			      { 0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x12,
				0x00 } } } },
	/* Bulk OUT ep 2: high-bit seqnum, DMA noise + ZERO_PACKET, 128 KiB. */
	[DEC_BULK_OUT] = { "CMD_SUBMIT.bulk-out",
	  "00 00 00 01  80 00 00 01  00 01 00 02  00 00 00 00  00 00 00 02"
	  "00 01 00 40  00 02 00 00  00 00 00 00  00 00 00 00  00 00 00 00"
	  "00 00 00 00 00 00 00 00",
	  { { USBIP_CMD_SUBMIT, 0x80000001u, 0x00010002, USBIP_DIR_OUT, 2 },
	    .u.cmd_submit = { 0x00010040, 0x20000, 0, 0, 0, { 0 } } } },
	/* Iso IN ep 3, number_of_packets 0xffffffff: must read as -1. */
	[DEC_PACKETS_NEG] = { "CMD_SUBMIT.packets-0xffffffff",
	  "00 00 00 01  00 00 00 09  00 01 00 02  00 00 00 01  00 00 00 03"
	  "00 00 02 02  00 00 03 00  ff ff ff fe  ff ff ff ff  00 00 00 01"
	  "00 00 00 00 00 00 00 00",
	  { { USBIP_CMD_SUBMIT, 9, 0x00010002, USBIP_DIR_IN, 3 },
	    .u.cmd_submit = { 0x202, 0x300, -2, -1, 1, { 0 } } } },
	/* CMD_UNLINK seqnum 7 of seqnum 5; 24 zero bytes after. */
	[DEC_UNLINK] = { "CMD_UNLINK",
	  "00 00 00 02  00 00 00 07  00 01 00 02  00 00 00 00  00 00 00 00"
	  "00 00 00 05  00 00 00 00  00 00 00 00  00 00 00 00  00 00 00 00"
	  "00 00 00 00 00 00 00 00",
	  { { USBIP_CMD_UNLINK, 7, 0x00010002, USBIP_DIR_OUT, 0 },
	    .u.cmd_unlink = { 5, { 0 } } } },
};

static void run_dec_case(const struct dec_case *c)
{
	uint8_t buf[USBIP_HEADER_SIZE];
	struct usbip_header h;
	char name[PREFIX_LEN];

	if (from_hex(c->hex, buf, sizeof(buf)) != USBIP_HEADER_SIZE)
		errx(2, "%s: vector is not 48 bytes", c->name);
	memset(&h, 0xa5, sizeof(h));
	unpack_header(buf, &h);
	snprintf(name, sizeof(name), "%s.decode", c->name);
	check_header(name, &h, &c->want);
}

/* Setup stays USB little-endian: wLength 18 is 12 00 at setup[6..7]. */
static void test_setup_little_endian(void)
{
	uint8_t buf[USBIP_HEADER_SIZE];
	struct usbip_header h;
	const uint8_t *s = h.u.cmd_submit.setup;

	from_hex(dec_cases[DEC_GET_DESCRIPTOR].hex, buf, sizeof(buf));
	unpack_header(buf, &h);
	check_num("CMD_SUBMIT.setup", "bmRequestType", s[0], 0x80);
	check_num("CMD_SUBMIT.setup", "bRequest", s[1], 0x06);
	check_num("CMD_SUBMIT.setup", "wValue-le", s[2] | s[3] << 8, 0x0100);
	check_num("CMD_SUBMIT.setup", "wIndex-le", s[4] | s[5] << 8, 0);
	check_num("CMD_SUBMIT.setup", "wLength-le", s[6] | s[7] << 8, 18);
}

/* ---- the server's reaction to a decoded header ------------------------- */

/* A connection as answer_import() leaves it, on /dev/null. */
static const struct serve_opts wire_opts = { .max_length = URB_LENGTH_MAX };

static void fake_conn(struct conn *c)
{
	memset(c, 0, sizeof(*c));
	c->o = &wire_opts;
	c->fd = open("/dev/null", O_RDWR);
	if (c->fd < 0)
		err(2, "/dev/null");
	snprintf(c->peer, sizeof(c->peer), "wire-test");
	c->outtail = &c->outq;
	c->devid = 0x00010002;
	expect(c, RX_HEADER, c->rxbuf, USBIP_HEADER_SIZE);
}

static void drop_conn(struct conn *c)
{
	while (c->outq) {
		struct msg *m = c->outq;

		c->outq = m->next;
		free_msg(m);
	}
	if (c->rxurb)
		destroy_urb(c->rxurb);
	drop_spares(c);
	if (c->fd >= 0)
		close(c->fd);
}

static void feed_header(struct conn *c, const char *hex)
{
	from_hex(hex, c->rxbuf, sizeof(c->rxbuf));
	on_header(c);
}

static void test_server_reactions(void)
{
	static const struct span ret_unlink_0[] = {
		{ 0x00, "00 00 00 04  00 00 00 07", NULL },	/* own seqnum */
		{ 0x14, "00 00 00 00", NULL },			/* status 0 */
		{ 0, NULL, NULL },
	};
	static const struct span ret_unlink_reset[] = {
		{ 0x00, "00 00 00 04  00 00 00 07", NULL },
		{ 0x14, "ff ff ff 98", NULL },		/* -ECONNRESET */
		{ 0, NULL, NULL },
	};
	uint8_t want[USBIP_HEADER_SIZE];
	const char *t;
	struct conn c;

	/*
	 * number_of_packets -1 is what the kernel's .rst prescribes for
	 * non-iso URBs: accepted as "no iso packets", not a broken stream.
	 */
	t = "server.packets-0xffffffff";
	fake_conn(&c);
	feed_header(&c, dec_cases[DEC_PACKETS_NEG].hex);
	check_num(t, "session-open", c.fd >= 0, 1);
	check_num(t, "packets-read-as-0",
		  c.rxurb ? c.rxurb->cmd.u.cmd_submit.number_of_packets : -99,
		  0);
	check_num(t, "no-iso-descriptors-to-read", c.rx == RX_ISO_DESC, 0);
	drop_conn(&c);

	/* More packets than ISO_PACKETS_MAX: the session ends, named. */
	t = "server.packets-too-many";
	fake_conn(&c);
	from_hex(dec_cases[DEC_PACKETS_NEG].hex, c.rxbuf, sizeof(c.rxbuf));
	put32(c.rxbuf + 0x20, ISO_PACKETS_MAX + 1);
	on_header(&c);
	check_num(t, "session-closed", c.fd, -1);
	check_num(t, "no-urb", c.rxurb != NULL, 0);
	if (c.end_reason && strstr(c.end_reason, "iso packets"))
		pass("server.packets-too-many.reason");
	else
		fail("server.packets-too-many.reason", "end_reason \"%s\"",
		     c.end_reason ? c.end_reason : "(none)");
	drop_conn(&c);

	/* Control IN: accepted, no payload to read, setup raw at buf[0..7]. */
	t = "server.get-descriptor";
	fake_conn(&c);
	feed_header(&c, dec_cases[DEC_GET_DESCRIPTOR].hex);
	check_num(t, "session-open", c.fd >= 0, 1);
	check_num(t, "rx-state", c.rx, RX_OUT_DATA);
	check_num(t, "no-payload-for-IN", (long long)c.rxneed, 0);
	if (c.rxurb)
		check_bytes("server.get-descriptor.setup-in-libusb-buffer",
			    c.rxurb->buf,
			    dec_cases[DEC_GET_DESCRIPTOR].want.u.cmd_submit.setup,
			    LIBUSB_CONTROL_SETUP_SIZE, 0);
	else
		fail("server.get-descriptor.setup-in-libusb-buffer", "no urb");
	drop_conn(&c);

	/*
	 * CMD_UNLINK of seqnum 5 once seqnum 6 was submitted: 5 was
	 * answered already, so RET_UNLINK 0 echoing the unlink's seqnum 7.
	 */
	t = "server.unlink-unknown";
	fake_conn(&c);
	c.submitted = 1;
	c.newest_submit = 6;
	feed_header(&c, dec_cases[DEC_UNLINK].hex);
	build(want, sizeof(want), ret_unlink_0);
	check_num(t, "session-open", c.fd >= 0, 1);
	if (c.outq && c.outq->iovcnt == 1 &&
	    c.outq->iov[0].iov_len == USBIP_HEADER_SIZE && !c.outq->next)
		check_bytes("server.unlink-unknown.RET_UNLINK",
			    c.outq->iov[0].iov_base, want, sizeof(want), 0);
	else
		fail("server.unlink-unknown.RET_UNLINK",
		     "expected exactly one 48-byte message queued");
	drop_conn(&c);

	/*
	 * The same CMD_UNLINK before any CMD_SUBMIT (vhci_hcd on 6.12 can
	 * send it first): held, no reply; then CMD_SUBMIT seqnum 5 arrives
	 * and is answered RET_UNLINK -ECONNRESET alone, never run.
	 */
	t = "server.unlink-before-submit";
	fake_conn(&c);
	feed_header(&c, dec_cases[DEC_UNLINK].hex);
	check_num(t, "held", c.nearly, 1);
	check_num(t, "no-reply-yet", c.outq != NULL, 0);
	feed_header(&c, dec_cases[DEC_GET_DESCRIPTOR].hex);
	on_input(&c);
	build(want, sizeof(want), ret_unlink_reset);
	check_num(t, "not-held", c.nearly, 0);
	check_num(t, "not-submitted", c.ninflight, 0);
	if (c.outq && c.outq->iovcnt == 1 &&
	    c.outq->iov[0].iov_len == USBIP_HEADER_SIZE && !c.outq->next)
		check_bytes("server.unlink-before-submit.RET_UNLINK",
			    c.outq->iov[0].iov_base, want, sizeof(want), 0);
	else
		fail("server.unlink-before-submit.RET_UNLINK",
		     "expected exactly one 48-byte message queued");
	drop_conn(&c);
}

/* ---- helpers outside the wire format ------------------------------------ */

/*
 * The 'S' record of DEC_GET_DESCRIPTOR (devid 1-2) as usbmon writes it on
 * this machine: little-endian by hand, its multi-byte fields reversed on
 * a big-endian one.
 */
static void usbmon_want(uint8_t want[64])
{
	static const char usbmon_hex[] =
	    "05 00 00 00 00 00 00 00  53 02 80 02  01 00  00 3c"
	    "00 00 00 00 00 00 00 00  00 00 00 00  8d ff ff ff"
	    "12 00 00 00  00 00 00 00  80 06 00 01 00 00 12 00"
	    "00 00 00 00  00 00 00 00  00 02 00 00  00 00 00 00";
	/* multi-byte fields: offset, size */
	static const uint8_t usbmon_fields[][2] = {
		{ 0, 8 }, { 12, 2 }, { 28, 4 }, { 32, 4 }, { 36, 4 },
		{ 56, 4 },
	};
	size_t i;

	from_hex(usbmon_hex, want, 64);
	for (i = 0; htonl(1) == 1 && i < sizeof(usbmon_fields) / 2; i++)
		reverse(want + usbmon_fields[i][0], usbmon_fields[i][1]);
}

/*
 * serve --pcap: the file header and a GET_DESCRIPTOR submission as usbmon
 * records it, written by hand from the kernel's Documentation/usb/
 * usbmon.rst (struct usbmon_packet) and pcap's file format, little-endian
 * (the format is the writer's byte order: on a big-endian machine each
 * multi-byte field is compared reversed).  The timestamps are not
 * compared.
 */
static void test_pcap_records(void)
{
	static const char file_hex[] =
	    "d4 c3 b2 a1  02 00 04 00  00 00 00 00  00 00 00 00"
	    "00 00 00 08  dc 00 00 00";
	/* the file header's multi-byte fields: offset, size */
	static const uint8_t file_fields[][2] = {
		{ 0, 4 }, { 4, 2 }, { 6, 2 }, { 16, 4 }, { 20, 4 },
	};
	static struct serve_opts opts = { .max_length = URB_LENGTH_MAX };
	uint8_t want_file[24], want[64], got[24 + 16 + 64 + 1];
	char path[] = "/tmp/p2pusb-wire-test.XXXXXX";
	int fd = mkstemp(path), big = htonl(1) == 1;
	struct conn c;
	struct urb *u;
	size_t i, n;
	FILE *f;

	if (fd < 0)
		err(2, "mkstemp");
	close(fd);
	from_hex(file_hex, want_file, sizeof(want_file));
	usbmon_want(want);
	for (i = 0; big && i < sizeof(file_fields) / 2; i++)
		reverse(want_file + file_fields[i][0], file_fields[i][1]);
	opts.capture = open_capture(path);
	fake_conn(&c);
	c.o = &opts;
	from_hex(dec_cases[DEC_GET_DESCRIPTOR].hex, c.rxbuf, sizeof(c.rxbuf));
	on_header(&c);
	u = c.rxurb;
	if (!u) {
		fail("pcap.submit", "no urb");
		return;
	}
	capture_submit(u);
	fclose(opts.capture->f);
	f = fopen(path, "r");
	n = f ? fread(got, 1, sizeof(got), f) : 0;
	if (f)
		fclose(f);
	unlink(path);
	check_num("pcap", "bytes", (long long)n, 24 + 16 + 64);
	check_bytes("pcap.file-header", got, want_file, 24, 0);
	check_num("pcap", "record-length", get32le(got + 24 + 8), 64);
	memset(got + 40 + 16, 0, 12);	/* ts_sec, ts_usec */
	check_bytes("pcap.usbmon-S-GET_DESCRIPTOR", got + 40, want, 64, 0);
	c.o = NULL;
	drop_conn(&c);
}

/*
 * attach --via --pcap: the relay records what passes through it.  The
 * same GET_DESCRIPTOR, cut in two pieces, must give the server's 'S'
 * record byte for byte; its RET_SUBMIT (18 bytes, in 3 pieces) a 'C'
 * record with status 0, length 18 and the data after the 64 bytes.
 */
static void test_pcap_relay(void)
{
	uint8_t cmd[USBIP_HEADER_SIZE], ret[USBIP_HEADER_SIZE + 18],
		want[64], got[24 + 2 * (16 + 64) + 18 + 1];
	char path[] = "/tmp/p2pusb-wire-test.XXXXXX";
	int fd = mkstemp(path);
	struct framer to_server = { .who = "relay", .devid = 0x00010002 },
		      to_vhci;
	size_t n, c = 24 + 16 + 64;	/* where the 'C' record starts */
	FILE *f;

	if (fd < 0)
		err(2, "mkstemp");
	close(fd);
	usbmon_want(want);
	from_hex(dec_cases[DEC_GET_DESCRIPTOR].hex, cmd, sizeof(cmd));
	pack_ret_submit(ret, 5, &(struct usbip_header_ret_submit){
		.actual_length = 18 });
	memset(ret + USBIP_HEADER_SIZE, 0x12, 18);
	to_server.cap = open_capture(path);
	to_vhci = to_server;
	if (frame(&to_server, cmd, 20) || frame(&to_server, cmd + 20, 28) ||
	    frame(&to_vhci, ret, 30) || frame(&to_vhci, ret + 30, 30) ||
	    frame(&to_vhci, ret + 60, sizeof(ret) - 60))
		fail("pcap.relay", "frame() refused the stream");
	fclose(to_server.cap->f);
	free(to_server.payload);
	free(to_vhci.payload);
	f = fopen(path, "r");
	n = f ? fread(got, 1, sizeof(got), f) : 0;
	if (f)
		fclose(f);
	unlink(path);
	check_num("pcap.relay", "bytes", (long long)n,
		  (long long)c + 16 + 64 + 18);
	memset(got + 40 + 16, 0, 12);	/* ts_sec, ts_usec */
	check_bytes("pcap.relay-S-GET_DESCRIPTOR", got + 40, want, 64, 0);
	check_num("pcap.relay", "C-record-length", get32le(got + c + 8),
		  64 + 18);
	check_num("pcap.relay", "C-type", got[c + 16 + 8], 'C');
	check_num("pcap.relay", "C-status",
		  (int32_t)get32le(got + c + 16 + 28), 0);
	check_num("pcap.relay", "C-length", get32le(got + c + 16 + 32), 18);
	check_num("pcap.relay", "C-data", got[c + 16 + 64 + 17], 0x12);
}

/* A status is whatever 32 bits a peer sends: INT32_MIN too (UBSan). */
static void test_status_names(void)
{
	if (strcmp(status_name(-EPIPE), "EPIPE (stall)") == 0)
		pass("status_name.EPIPE");
	else
		fail("status_name.EPIPE", "%s", status_name(-EPIPE));
	if (strcmp(status_name(INT32_MIN), "errno 2147483648") == 0)
		pass("status_name.INT32_MIN");
	else
		fail("status_name.INT32_MIN", "%s", status_name(INT32_MIN));
}

static void test_split_host_port(void)
{
	static const struct {
		const char *arg, *host, *port;
	} cases[] = {
		{ "server", "server", "3240" },
		{ "server:4000", "server", "4000" },
		{ "10.0.0.2:3241", "10.0.0.2", "3241" },
		{ "[fe80::1]", "fe80::1", "3240" },
		{ "[fe80::1%eth0]:4000", "fe80::1%eth0", "4000" },
		{ "fe80::1", "fe80::1", "3240" },
		{ "::1", "::1", "3240" },
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char host[256], port[32], t[PREFIX_LEN];

		memset(host, 'x', sizeof(host));
		memset(port, 'x', sizeof(port));
		split_host_port(cases[i].arg, host, sizeof(host), port,
				sizeof(port));
		snprintf(t, sizeof(t), "split_host_port(%s)", cases[i].arg);
		check_str(t, "host", host, cases[i].host);
		check_str(t, "port", port, cases[i].port);
	}
}

/* sysfs gives speeds in Mbit/s; the wire wants enum usb_device_speed. */
static void test_speed_from_sysfs(void)
{
	static const struct {
		const char *mbps;
		uint32_t wire;
	} cases[] = {
		{ "1.5", 1 }, { "12", 2 }, { "480", 3 }, { "53.3-480", 4 },
		{ "5000", 5 }, { "10000", 6 }, { "20000", 6 }, { "", 0 },
		{ "42", 0 },
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_num("speed_from_sysfs", cases[i].mbps,
			  speed_from_sysfs(cases[i].mbps), cases[i].wire);
}

/* A busid from the network becomes part of a sysfs path. */
static void test_busid_names(void)
{
	static const struct {
		const char *name;
		int ok;
	} cases[] = {
		{ "1-1", 1 }, { "3-1.2.4", 1 }, { "usb1", 0 }, { "1-1:1.0", 0 },
		{ "1-1/../..", 0 }, { "..-1", 0 }, { "", 0 }, { "11", 0 },
		{ "1-1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1", 0 },	/* 33 bytes */
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_num("is_device_name", cases[i].name,
			  is_device_name(cases[i].name), cases[i].ok);
}

int main(void)
{
	size_t i;

	setvbuf(stdout, NULL, _IOLBF, 0);	/* keep progress if a check crashes */

	for (i = 0; i < sizeof(enc_cases) / sizeof(enc_cases[0]); i++)
		run_enc_case(&enc_cases[i]);
	test_unterminated_busid();
	for (i = 0; i < sizeof(dec_cases) / sizeof(dec_cases[0]); i++)
		run_dec_case(&dec_cases[i]);
	test_setup_little_endian();
	test_server_reactions();
	test_status_names();
	test_pcap_records();
	test_pcap_relay();
	test_split_host_port();
	test_speed_from_sysfs();
	test_busid_names();

	printf("%d passed, %d failed\n", n_pass, n_fail);
	return n_fail ? 1 : 0;
}

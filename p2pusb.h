/*
 * p2pusb.h - the USB/IP wire protocol as data.
 *
 * Every struct below mirrors one message of the protocol, field for field,
 * in wire order.  The fields hold host-order values: p2pusb.c never copies
 * a struct onto the wire, it encodes each field big-endian at the field's
 * offset.  The _Static_asserts pin every size and offset to the kernel's
 * (drivers/usb/usbip, include/uapi/linux/usbip.h), so a compiler that pads
 * differently fails the build instead of the connection.
 */
#ifndef P2PUSB_H
#define P2PUSB_H

#include <stddef.h>
#include <stdint.h>

#define USBIP_VERSION		0x0111
#define USBIP_PORT		"3240"

/* ---- handshake: op_common + body ---------------------------------- */

#define OP_REQ_DEVLIST		0x8005
#define OP_REP_DEVLIST		0x0005
#define OP_REQ_IMPORT		0x8003
#define OP_REP_IMPORT		0x0003

/* op_common.status */
#define ST_OK			0x00
#define ST_NA			0x01
#define ST_DEV_BUSY		0x02
#define ST_DEV_ERR		0x03
#define ST_NODEV		0x04
#define ST_ERROR		0x05

#define SYSFS_PATH_MAX		256
#define SYSFS_BUS_ID_SIZE	32

struct op_common {
	uint16_t version;
	uint16_t code;
	uint32_t status;
};

/* The device record of OP_REP_DEVLIST and OP_REP_IMPORT. */
struct usbip_usb_device {
	char path[SYSFS_PATH_MAX];
	char busid[SYSFS_BUS_ID_SIZE];
	uint32_t busnum;
	uint32_t devnum;
	uint32_t speed;			/* enum usb_device_speed, below */
	uint16_t idVendor;
	uint16_t idProduct;
	uint16_t bcdDevice;
	uint8_t bDeviceClass;
	uint8_t bDeviceSubClass;
	uint8_t bDeviceProtocol;
	uint8_t bConfigurationValue;
	uint8_t bNumConfigurations;
	uint8_t bNumInterfaces;
};

/* OP_REP_DEVLIST: bNumInterfaces of these follow each device record. */
struct usbip_usb_interface {
	uint8_t bInterfaceClass;
	uint8_t bInterfaceSubClass;
	uint8_t bInterfaceProtocol;
	uint8_t padding;
};

struct op_devlist_reply {
	uint32_t ndev;
};

struct op_import_request {
	char busid[SYSFS_BUS_ID_SIZE];
};

/* The kernel's enum usb_device_speed (libusb numbers them differently). */
#define USB_SPEED_UNKNOWN	0
#define USB_SPEED_LOW		1
#define USB_SPEED_FULL		2
#define USB_SPEED_HIGH		3
#define USB_SPEED_WIRELESS	4
#define USB_SPEED_SUPER		5
#define USB_SPEED_SUPER_PLUS	6

/* ---- URB phase: 48-byte headers ------------------------------------ */

#define USBIP_CMD_SUBMIT	1
#define USBIP_CMD_UNLINK	2
#define USBIP_RET_SUBMIT	3
#define USBIP_RET_UNLINK	4

#define USBIP_DIR_OUT		0
#define USBIP_DIR_IN		1

/* transfer_flags that change what the server does; the rest is noise. */
#define URB_SHORT_NOT_OK	0x0001
#define URB_ISO_ASAP		0x0002
#define URB_ZERO_PACKET		0x0040
#define URB_DIR_IN		0x0200

struct usbip_header_basic {
	uint32_t command;
	uint32_t seqnum;
	uint32_t devid;			/* busnum << 16 | devnum */
	uint32_t direction;
	uint32_t ep;			/* 0..15, no direction bit */
};

struct usbip_header_cmd_submit {
	uint32_t transfer_flags;
	int32_t transfer_buffer_length;
	int32_t start_frame;
	int32_t number_of_packets;
	int32_t interval;
	uint8_t setup[8];		/* raw: USB little-endian inside */
};

struct usbip_header_ret_submit {
	int32_t status;			/* negative Linux errno */
	int32_t actual_length;
	int32_t start_frame;
	int32_t number_of_packets;
	int32_t error_count;
	uint8_t padding[8];
};

struct usbip_header_cmd_unlink {
	uint32_t seqnum;		/* the CMD_SUBMIT to cancel */
	uint8_t padding[24];
};

struct usbip_header_ret_unlink {
	int32_t status;
	uint8_t padding[24];
};

struct usbip_header {
	struct usbip_header_basic base;
	union {
		struct usbip_header_cmd_submit cmd_submit;
		struct usbip_header_ret_submit ret_submit;
		struct usbip_header_cmd_unlink cmd_unlink;
		struct usbip_header_ret_unlink ret_unlink;
	} u;
};

/* One per isochronous packet, after the payload. */
struct usbip_iso_packet_descriptor {
	uint32_t offset;
	uint32_t length;
	uint32_t actual_length;
	uint32_t status;
};

/* ---- sizes the wire depends on ------------------------------------- */

#define OP_COMMON_SIZE		8
#define OP_REQ_IMPORT_SIZE	40
#define OP_REP_IMPORT_SIZE	320
#define USBIP_DEVICE_SIZE	312
#define USBIP_INTERFACE_SIZE	4
#define USBIP_HEADER_SIZE	48
#define USBIP_ISO_DESC_SIZE	16

_Static_assert(sizeof(struct op_common) == OP_COMMON_SIZE, "op_common");
_Static_assert(sizeof(struct usbip_usb_device) == USBIP_DEVICE_SIZE,
	       "device record");
_Static_assert(offsetof(struct usbip_usb_device, busid) == 0x100, "busid");
_Static_assert(offsetof(struct usbip_usb_device, busnum) == 0x120, "busnum");
_Static_assert(offsetof(struct usbip_usb_device, idVendor) == 0x12c,
	       "idVendor");
_Static_assert(offsetof(struct usbip_usb_device, bNumInterfaces) == 0x137,
	       "bNumInterfaces");
_Static_assert(sizeof(struct usbip_usb_interface) == USBIP_INTERFACE_SIZE,
	       "interface record");
_Static_assert(sizeof(struct op_devlist_reply) == 4, "devlist reply");
_Static_assert(OP_COMMON_SIZE + sizeof(struct op_import_request) ==
	       OP_REQ_IMPORT_SIZE, "OP_REQ_IMPORT");
_Static_assert(OP_COMMON_SIZE + USBIP_DEVICE_SIZE == OP_REP_IMPORT_SIZE,
	       "OP_REP_IMPORT");
_Static_assert(sizeof(struct usbip_header_basic) == 20, "basic header");
_Static_assert(sizeof(struct usbip_header_cmd_submit) == 28, "cmd_submit");
_Static_assert(sizeof(struct usbip_header_ret_submit) == 28, "ret_submit");
_Static_assert(sizeof(struct usbip_header_cmd_unlink) == 28, "cmd_unlink");
_Static_assert(sizeof(struct usbip_header_ret_unlink) == 28, "ret_unlink");
_Static_assert(sizeof(struct usbip_header) == USBIP_HEADER_SIZE, "header");
_Static_assert(offsetof(struct usbip_header, u.cmd_submit.setup) == 0x28,
	       "setup");
_Static_assert(sizeof(struct usbip_iso_packet_descriptor) ==
	       USBIP_ISO_DESC_SIZE, "iso descriptor");

/* ---- serve --pcap: the Linux usbmon capture format ------------------ */

/*
 * What Wireshark reads as USB itself (Documentation/usb/usbmon.rst, "raw
 * binary format"; pcap link type 220, LINKTYPE_USB_LINUX_MMAPPED).  Unlike
 * USB/IP's, these fields are in the byte order of the machine that wrote
 * the file, which the pcap magic number tells the reader.
 */
#define LINKTYPE_USB_LINUX_MMAPPED	220
#define PCAP_MAGIC		0xa1b2c3d4

struct pcap_file_header {
	uint32_t magic;
	uint16_t version_major, version_minor;	/* 2.4 */
	int32_t thiszone;
	uint32_t sigfigs, snaplen, linktype;
};

struct pcap_record_header {
	uint32_t ts_sec, ts_usec, incl_len, orig_len;
};

struct usbmon_packet {
	uint64_t id;			/* the same for an URB's S and C */
	uint8_t type;			/* 'S'ubmission, 'C'allback */
	uint8_t xfer_type;		/* USBMON_ISO ... USBMON_BULK */
	uint8_t epnum;			/* with 0x80 for IN */
	uint8_t devnum;
	uint16_t busnum;
	int8_t flag_setup;		/* 0: setup holds the SETUP packet */
	int8_t flag_data;		/* 0: data follows; '<', '>': none */
	int64_t ts_sec;
	int32_t ts_usec;
	int32_t status;
	uint32_t length;		/* requested, or actual */
	uint32_t len_cap;		/* data bytes in this record */
	union {
		uint8_t setup[8];
		struct { int32_t error_count, numdesc; } iso;
	} s;
	int32_t interval;
	int32_t start_frame;
	uint32_t xfer_flags;
	uint32_t ndesc;			/* iso descriptors after the header */
};

struct usbmon_iso_desc {
	int32_t status;
	uint32_t offset, length, pad;
};

#define USBMON_ISO		0
#define USBMON_INTERRUPT	1
#define USBMON_CONTROL		2
#define USBMON_BULK		3

_Static_assert(sizeof(struct pcap_file_header) == 24, "pcap header");
_Static_assert(sizeof(struct pcap_record_header) == 16, "pcap record");
_Static_assert(sizeof(struct usbmon_packet) == 64, "usbmon packet");
_Static_assert(offsetof(struct usbmon_packet, busnum) == 12, "busnum");
_Static_assert(offsetof(struct usbmon_packet, ts_sec) == 16, "ts_sec");
_Static_assert(offsetof(struct usbmon_packet, status) == 28, "status");
_Static_assert(offsetof(struct usbmon_packet, s) == 40, "setup");
_Static_assert(offsetof(struct usbmon_packet, ndesc) == 60, "ndesc");
_Static_assert(sizeof(struct usbmon_iso_desc) == 16, "usbmon iso desc");

#endif /* P2PUSB_H */

/*
 * ctrl-bench - control-transfer round trips per second on a USB device.
 *
 * Usage: ctrl-bench /dev/bus/usb/BBB/DDD [SECONDS]
 *
 * Issues GET_DESCRIPTOR(DEVICE) (18 bytes, recipient: device, so no
 * interface has to be claimed and the bound class driver is undisturbed)
 * through usbfs' USBDEVFS_CONTROL, one after the other, for SECONDS
 * (default 3), and prints "ctrl_rtt_per_s N iterations M".  Each one is a
 * full round trip to the device: through vhci_hcd and the USB/IP server
 * when the node is an imported device.  Exits 1 if a reply is wrong.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/usbdevice_fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double secs = argc > 2 ? atof(argv[2]) : 3.0, start, end;
	uint8_t desc[18];
	struct usbdevfs_ctrltransfer ct = {
		.bRequestType = 0x80,	/* IN, standard, device */
		.bRequest = 6,		/* GET_DESCRIPTOR */
		.wValue = 0x0100,	/* DEVICE, index 0 */
		.wIndex = 0,
		.wLength = sizeof(desc),
		.timeout = 2000,	/* ms */
		.data = desc,
	};
	long n = 0;
	int fd;

	if (argc < 2) {
		fprintf(stderr, "usage: ctrl-bench /dev/bus/usb/BBB/DDD [SECONDS]\n");
		return 2;
	}
	fd = open(argv[1], O_RDWR);
	if (fd < 0) {
		fprintf(stderr, "ctrl-bench: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	start = now();
	end = start + secs;
	do {
		int rc;

		memset(desc, 0, sizeof(desc));
		rc = ioctl(fd, USBDEVFS_CONTROL, &ct);
		if (rc != (int)sizeof(desc) || desc[0] != 18 || desc[1] != 1) {
			fprintf(stderr, "ctrl-bench: GET_DESCRIPTOR #%ld: rc %d (%s), "
				"bLength %u bDescriptorType %u\n", n, rc,
				rc < 0 ? strerror(errno) : "short", desc[0],
				desc[1]);
			return 1;
		}
		n++;
	} while (now() < end);
	printf("ctrl_rtt_per_s %.0f iterations %ld\n", (double)n / (now() - start), n);
	return 0;
}

/*
 * flood - a client that imports a device, then sends CMD_SUBMITs as fast
 * as it can and never reads a reply.  The server must stop reading it
 * (bounded memory) and keep serving everyone else.
 *
 *   flood HOST PORT BUSID SECONDS
 *
 * Prints how many submits the server took before it pushed back.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <err.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	uint8_t req[40] = { 0x01, 0x11, 0x80, 0x03 }, rep[320], cmd[48];
	uint32_t seq = 0, devid;
	time_t end;
	ssize_t n;
	size_t got = 0;
	int fd;

	if (argc != 5)
		errx(2, "usage: flood HOST PORT BUSID SECONDS");
	sa.sin_port = htons((uint16_t)atoi(argv[2]));
	inet_pton(AF_INET, argv[1], &sa.sin_addr);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		err(1, "connect");
	strncpy((char *)req + 8, argv[3], 31);
	if (write(fd, req, sizeof(req)) != sizeof(req))
		err(1, "write");
	while (got < sizeof(rep) && (n = read(fd, rep + got,
					      sizeof(rep) - got)) > 0)
		got += (size_t)n;
	if (got != sizeof(rep) || rep[7] != 0)
		errx(1, "import refused");
	devid = (uint32_t)rep[8 + 0x120 + 2] << 24 | /* busnum, low half */
		(uint32_t)rep[8 + 0x120 + 3] << 16 |
		(uint32_t)rep[8 + 0x124 + 2] << 8 | rep[8 + 0x124 + 3];

	/* GET_DESCRIPTOR(DEVICE): completes at once, so replies pile up. */
	memset(cmd, 0, sizeof(cmd));
	put32(cmd + 0x00, 1);
	put32(cmd + 0x08, devid);
	put32(cmd + 0x0c, 1);
	put32(cmd + 0x18, 18);
	memcpy(cmd + 0x28, "\x80\x06\x00\x01\x00\x00\x12\x00", 8);
	end = time(NULL) + atoi(argv[4]);
	while (time(NULL) < end) {
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		size_t off = 0;

		put32(cmd + 0x04, ++seq);
		while (off < sizeof(cmd) && time(NULL) < end) {
			/* Pushed back: wait, but only until END. */
			if (poll(&pfd, 1, 200) <= 0)
				continue;
			n = send(fd, cmd + off, sizeof(cmd) - off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
			if (n < 0 && errno != EAGAIN)
				err(1, "send");
			if (n > 0)
				off += (size_t)n;
		}
	}
	printf("measured: %u submits sent without reading a reply\n", seq);
	close(fd);
	return 0;
}

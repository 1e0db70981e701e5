# p2pusb: one C file, libusb-1.0 as the only dependency.
CC      ?= cc
PKG_CONFIG ?= pkg-config
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -Wall -Wextra -Werror $(shell $(PKG_CONFIG) --cflags libusb-1.0)
LDLIBS  += $(shell $(PKG_CONFIG) --libs libusb-1.0)

all: p2pusb

p2pusb: p2pusb.c p2pusb.h
	$(CC) $(CFLAGS) $(CPPFLAGS) $(LDFLAGS) -o $@ p2pusb.c $(LDLIBS)

test: p2pusb
	./test.sh

clean:
	rm -f p2pusb tests/wire-test

.PHONY: all test clean

# p2pusb: one C file, libusb-1.0 as the only dependency.
CC      ?= cc
PKG_CONFIG ?= pkg-config
CFLAGS  ?= -O2 -g
# C needs no unwind tables (no exceptions; debuggers read -g's .debug_frame):
# without them the stripped binary is 4 KiB smaller, for small boards.
SIZE_FLAGS = -fno-asynchronous-unwind-tables
CFLAGS  += -std=c11 -Wall -Wextra -Werror $(SIZE_FLAGS) $(shell $(PKG_CONFIG) --cflags libusb-1.0)
LDLIBS  += $(shell $(PKG_CONFIG) --libs libusb-1.0)

all: p2pusb

p2pusb: p2pusb.c p2pusb.h
	$(CC) $(CFLAGS) $(CPPFLAGS) $(LDFLAGS) -o $@ p2pusb.c $(LDLIBS)

test: p2pusb
	./test.sh

# p2pusb against the kernel's usbip-host in one VM (about 10 minutes).
bench: p2pusb
	tests/bench.sh

clean:
	rm -f p2pusb tests/wire-test

# Debian's habits: PREFIX for where it lives, DESTDIR for packaging.
PREFIX  ?= /usr/local
BINDIR  = $(DESTDIR)$(PREFIX)/bin
DOCDIR  = $(DESTDIR)$(PREFIX)/share/doc/p2pusb

install: p2pusb
	install -d $(BINDIR) $(DOCDIR)
	install -m 755 p2pusb $(BINDIR)/p2pusb
	install -m 644 README $(DOCDIR)/README

uninstall:
	rm -f $(BINDIR)/p2pusb $(DOCDIR)/README
	-rmdir $(DOCDIR) 2>/dev/null

.PHONY: all test clean bench install uninstall

# ---- embedded boards: cross and static builds (README: Embedded boards) --
#   make CROSS=aarch64-linux-gnu-     ->  p2pusb-aarch64
#   make CROSS=arm-linux-gnueabihf-   ->  p2pusb-armhf
#   make static [CROSS=...]           ->  p2pusb-static, p2pusb-armhf-static
# The target's libusb comes from pkg-config looking in Debian's multiarch
# /usr/lib/TRIPLET/pkgconfig (libusb-1.0-0-dev:arm64, ...); PKG_CONFIG_PATH
# is still searched first, and CROSS_PKG_CONFIG replaces the command.  The
# binaries are build outputs like ./p2pusb: never committed; make clean.
CROSS_TRIPLET = $(notdir $(CROSS:-=))
CROSS_ARCH ?= $(if $(filter %eabihf,$(CROSS_TRIPLET)),armhf,$(firstword $(subst -, ,$(CROSS_TRIPLET))))
CROSS_CC ?= $(CROSS)gcc
CROSS_CFLAGS ?= -O2 -g
CROSS_PKG_CONFIG ?= PKG_CONFIG_LIBDIR=/usr/lib/$(CROSS_TRIPLET)/pkgconfig:/usr/share/pkgconfig $(PKG_CONFIG)

ifdef CROSS
EMB_BIN = p2pusb-$(CROSS_ARCH)
EMB_CC = $(CROSS_CC)
EMB_PC = $(CROSS_PKG_CONFIG)
EMB_CFLAGS = $(CROSS_CFLAGS) -std=c11 -Wall -Wextra -Werror $(SIZE_FLAGS)
.DEFAULT_GOAL := $(EMB_BIN)

$(EMB_BIN): p2pusb.c p2pusb.h
	@$(EMB_PC) --exists libusb-1.0 || { echo "make: no libusb-1.0 for $(CROSS_TRIPLET) (Debian: dpkg --add-architecture ARCH; apt-get update; apt-get install libusb-1.0-0-dev:ARCH), or set PKG_CONFIG_PATH or CROSS_PKG_CONFIG" >&2; exit 1; }
	$(EMB_CC) $$($(EMB_PC) --cflags libusb-1.0) $(EMB_CFLAGS) $(CPPFLAGS) $(LDFLAGS) -o $@ p2pusb.c $$($(EMB_PC) --libs libusb-1.0)
else
EMB_BIN = p2pusb
EMB_CC = $(CC)
EMB_PC = $(PKG_CONFIG)
EMB_CFLAGS = $(CFLAGS)
endif

# Static: every library that `pkg-config --static` names must exist as a .a.
# Debian ships no libudev.a, which its libusb-1.0.a wants for device
# discovery.  p2pusb never lets libusb discover devices (it finds them in
# sysfs and hands libusb its own usbfs descriptors, with
# LIBUSB_OPTION_NO_DEVICE_DISCOVERY), so libusb's udev backend is replaced
# by four stubs that fail, and libudev is not needed.  Any other missing
# archive stops the build with a message instead of a linker error.
UDEV_STUBS = struct libusb_context; \
	int linux_udev_start_event_monitor(void) { return -99; } \
	int linux_udev_stop_event_monitor(void) { return 0; } \
	int linux_udev_scan_devices(struct libusb_context *c) { (void)c; return -99; } \
	void linux_udev_hotplug_poll(void) { }

static: $(EMB_BIN)-static

$(EMB_BIN)-static: p2pusb.c p2pusb.h
	@libs=$$($(EMB_PC) --static --libs libusb-1.0) || exit 1; missing=; stub=; \
	for l in $$libs; do \
		case $$l in -l*) a=lib$${l#-l}.a ;; *) continue ;; esac; \
		found=; \
		for d in $$($(EMB_PC) --static --libs-only-L libusb-1.0); do \
			[ -f "$${d#-L}/$$a" ] && found=1; \
		done; \
		case $$($(EMB_CC) -print-file-name=$$a) in */*) found=1 ;; esac; \
		[ -n "$$found" ] || missing="$$missing $$a"; \
	done; \
	if [ "$$missing" = " libudev.a" ] && grep -q LIBUSB_OPTION_NO_DEVICE_DISCOVERY p2pusb.c; then \
		stub=$${TMPDIR:-/tmp}/p2pusb-udev-stubs.$$$$.o; \
		echo '$(UDEV_STUBS)' | $(EMB_CC) -x c -c -o $$stub - || exit 1; \
		libs=$$(echo " $$libs " | sed 's/ -ludev / /'); missing=; \
		echo "make static: no libudev.a: libusb's udev backend replaced by stubs (p2pusb does not use it)"; \
	fi; \
	[ -z "$$missing" ] || { \
		echo "make static: no$$missing for $(or $(CROSS_TRIPLET),this machine)." >&2; \
		echo "  The static libusb needs: $$libs" >&2; \
		echo "  Install those static libraries, or build libusb without udev and point pkg-config at it:" >&2; \
		echo "    ./configure --disable-udev --enable-static --disable-shared --prefix=\$$HOME/libusb-static$(if $(CROSS), --host=$(CROSS_TRIPLET))" >&2; \
		echo "    make install; PKG_CONFIG_PATH=\$$HOME/libusb-static/lib/pkgconfig make static$(if $(CROSS), CROSS=$(CROSS))" >&2; \
		echo "  (README: Embedded boards)" >&2; exit 1; }; \
	echo "$(EMB_CC) \$$($(EMB_PC) --cflags libusb-1.0) $(EMB_CFLAGS) $(CPPFLAGS) $(LDFLAGS) -static -o $@ p2pusb.c $$stub $$libs"; \
	$(EMB_CC) $$($(EMB_PC) --cflags libusb-1.0) $(EMB_CFLAGS) $(CPPFLAGS) $(LDFLAGS) -static -o $@ p2pusb.c $$stub $$libs; \
	rc=$$?; rm -f $$stub; exit $$rc

clean: clean-embedded
clean-embedded:
	rm -f p2pusb-*

.PHONY: static clean-embedded

# ---- fuzzing (tests/fuzz.c; test.sh builds and runs it) ----
clean: clean-fuzz
clean-fuzz:
	rm -f tests/fuzz tests/fuzz-replay

.PHONY: clean-fuzz

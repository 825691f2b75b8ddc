# Build, test and install the mail suite.
#   make build     release build of the whole workspace
#   make test      build, Rust unit tests, then the end-to-end suite in tests/ (run as root)
#   make install   PREFIX=/usr/local by default; DESTDIR for staged installs
#   make demo      serve a demo mailbox on 127.0.0.1:11110 and read it with poplib and curl

PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo
# Debian's python3 carries python3-pytest; prefer it over any other python3 on PATH.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)

SBINDIR = $(DESTDIR)$(PREFIX)/sbin
HELPERDIR = $(DESTDIR)$(PREFIX)/libexec/mailsuite
DOCDIR = $(DESTDIR)$(PREFIX)/share/doc/mailsuite
EXAMPLES = xinetd.d/pop3 xinetd.d/pop3s xinetd.d/imap xinetd.d/imaps inetd.conf.sample \
	systemd/ipop3d.socket systemd/ipop3d@.service \
	systemd/ipop3ds.socket systemd/ipop3ds@.service \
	systemd/imapd.socket systemd/imapd@.service \
	systemd/imapds.socket systemd/imapds@.service \
	pam.d/pop pam.d/imap stunnel/ipop3d.conf stunnel/imapd.conf

.PHONY: build test install demo

build:
	$(CARGO) build --release --workspace

# Both suites always run (CI shows every failure); the target fails if either did.
test: build
	@status=0; \
	$(CARGO) test --workspace --release || status=1; \
	IPOP3D=$(CURDIR)/target/release/ipop3d IMAPD=$(CURDIR)/target/release/imapd $(PYTHON) -m pytest -v tests/ || status=1; \
	exit $$status

install: build
	install -d -m 0755 $(SBINDIR) $(HELPERDIR) $(DOCDIR)
	install -m 0755 target/release/ipop3d $(SBINDIR)/ipop3d
	install -m 0755 target/release/imapd $(SBINDIR)/imapd
	install -m 2755 -o root -g mail target/release/mlock $(HELPERDIR)/mlock
	for f in $(EXAMPLES); do \
		install -D -m 0644 $$f $(DOCDIR)/examples/$$f || exit 1; \
	done

demo:
	bash demo/demo.sh

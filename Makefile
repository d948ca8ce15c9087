# midfs — see README.md. Every target works on a fresh Debian machine after .ci/run's apt-get.
GO      ?= go
PREFIX  ?= /usr/local
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# urfave/cli's doc generators (and with them md2man and blackfriday) stay out
# of the binary; the man page is made by `make man` and committed.
TAGS    := urfave_cli_no_docs

.PHONY: build test unit e2e bench lint install clean

# midfs-node-hook is sshd's AuthorizedPrincipalsCommand on enforcing nodes,
# a small static C program (cmd/midfs-node-hook says why it is not Go).
CC      ?= cc
HOOKFLAGS := -O2 -static -Wall -Wextra -Werror

build: bin/midfs-node-hook
	$(GO) build -tags $(TAGS) -ldflags "$(LDFLAGS)" -o bin/midfs ./cmd/midfs

bin/midfs-node-hook: cmd/midfs-node-hook/midfs-node-hook.c
	mkdir -p bin
	$(CC) $(HOOKFLAGS) -o $@ $<

# The README's test command: lint, unit tests, then end-to-end tests against
# real FUSE, sshd and mount(8). Needs root (FUSE mounts, sshd, other uids).
test: lint unit e2e

unit:
	$(GO) test -count=1 -timeout 20m $(shell $(GO) list ./... | grep -v /e2e)

# Twice: as is, then with every midfs process on one P (GOMAXPROCS=1), where
# a FUSE server that waits on its own mount deadlocks instead of getting lucky.
e2e: build
	MIDFS_BIN=$(CURDIR)/bin/midfs $(GO) test -count=1 -timeout 45m -v ./e2e/...
	GOMAXPROCS=1 MIDFS_BIN=$(CURDIR)/bin/midfs $(GO) test -count=1 -timeout 45m ./e2e/...

bench: build
	MIDFS_BIN=$(CURDIR)/bin/midfs $(GO) test -run '^$$' -bench . -benchtime 2s -timeout 30m ./...

# staticcheck at a pinned version, so that a new release cannot fail a build
# that passed yesterday.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint:
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod tidy -diff
	$(GO) run $(STATICCHECK) ./...

# Install layout. mount(8) finds helpers only in /sbin (/usr/sbin on a
# merged-/usr system), whatever PREFIX is. Units name /usr/bin/midfs; they
# are rewritten to BINDIR on the way in.
BINDIR      ?= $(PREFIX)/bin
SBINDIR     ?= /sbin
UNITDIR     ?= $(PREFIX)/lib/systemd/system
MANDIR      ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/site-functions
EXAMPLEDIR  ?= $(PREFIX)/share/doc/midfs/examples

.PHONY: man completion deb install-files

# The man page, generated from the command definitions by a build with the
# generator (-tags mangen, cmd/midfs/man.go). doc/midfs.1 is committed, so
# that man works from a checkout; run this after changing a command or flag
# (TestManPageCurrent in cmd/midfs fails until you do).
man:
	mkdir -p doc
	$(GO) run -tags mangen ./cmd/midfs man > doc/midfs.1.tmp
	mv doc/midfs.1.tmp doc/midfs.1

completion: build
	mkdir -p bin/completion
	bin/midfs completion bash > bin/completion/midfs
	bin/midfs completion zsh > bin/completion/_midfs

install: build completion install-files
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi

# install-files copies what build and completion made, and the committed
# man page; `make deb`
# stages the package with it.
install-files:
	install -D -m 0755 bin/midfs $(DESTDIR)$(BINDIR)/midfs
	install -m 0755 bin/midfs-node-hook $(DESTDIR)$(BINDIR)/midfs-node-hook
	install -d $(DESTDIR)$(SBINDIR)
	ln -sfn $(BINDIR)/midfs $(DESTDIR)$(SBINDIR)/mount.fuse.midfs
	install -d $(DESTDIR)$(UNITDIR)
	for u in contrib/*.service contrib/*.mount; do \
		sed 's#/usr/bin/midfs#$(BINDIR)/midfs#g' "$$u" > "$(DESTDIR)$(UNITDIR)/$$(basename "$$u")"; \
		chmod 0644 "$(DESTDIR)$(UNITDIR)/$$(basename "$$u")"; \
	done
	install -d $(DESTDIR)$(MANDIR)/man1
	gzip -9n < doc/midfs.1 > $(DESTDIR)$(MANDIR)/man1/midfs.1.gz
	chmod 0644 $(DESTDIR)$(MANDIR)/man1/midfs.1.gz
	install -D -m 0644 bin/completion/midfs $(DESTDIR)$(BASHCOMPDIR)/midfs
	install -D -m 0644 bin/completion/_midfs $(DESTDIR)$(ZSHCOMPDIR)/_midfs
	install -d $(DESTDIR)$(EXAMPLEDIR)
	install -m 0644 contrib/agent.yaml contrib/auth.yaml contrib/node.yaml contrib/fstab.example $(DESTDIR)$(EXAMPLEDIR)/

# A .deb for this machine's Debian, staged in dist/ and built by dpkg-deb
# (no network, no debhelper). It installs the same tree as `make install`
# with PREFIX=/usr.
# Evaluated once (:=): HEAD may move while the package builds.
ifndef DEB_VERSION
DEB_VERSION := 0.0.0+git$(shell git rev-list --count HEAD 2>/dev/null || echo 0).$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
endif
DEB_ARCH    ?= $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB_OUT     ?= dist
DEB_ROOT    := $(DEB_OUT)/deb/midfs_$(DEB_VERSION)_$(DEB_ARCH)

deb: build completion
	rm -rf $(DEB_ROOT)
	$(MAKE) --no-print-directory install-files DESTDIR=$(abspath $(DEB_ROOT)) PREFIX=/usr \
		SBINDIR=/sbin UNITDIR=/lib/systemd/system ZSHCOMPDIR=/usr/share/zsh/vendor-completions
	strip --strip-unneeded $(DEB_ROOT)/usr/bin/midfs $(DEB_ROOT)/usr/bin/midfs-node-hook
	install -d -m 0700 $(DEB_ROOT)/etc/midfs
	sed 's/^\([a-z_]*:\)/#\1/' contrib/auth.yaml > $(DEB_ROOT)/etc/midfs/auth.yaml
	chmod 0600 $(DEB_ROOT)/etc/midfs/auth.yaml
	install -D -m 0644 LICENSE $(DEB_ROOT)/usr/share/doc/midfs/copyright
	install -d $(DEB_ROOT)/DEBIAN
	glibc=$$(objdump -T bin/midfs 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1); \
	depends="fuse3$${glibc:+, libc6 (>= $$glibc)}"; \
	size=$$(du -sk --exclude=DEBIAN $(DEB_ROOT) | cut -f1); \
	sed -e 's/@VERSION@/$(DEB_VERSION)/' -e 's/@ARCH@/$(DEB_ARCH)/' -e "s/@DEPENDS@/$$depends/" -e "s/@SIZE@/$$size/" \
		contrib/debian/control > $(DEB_ROOT)/DEBIAN/control
	install -m 0755 contrib/debian/postinst contrib/debian/postrm $(DEB_ROOT)/DEBIAN/
	echo /etc/midfs/auth.yaml > $(DEB_ROOT)/DEBIAN/conffiles
	cd $(DEB_ROOT) && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum > DEBIAN/md5sums
	dpkg-deb --root-owner-group -Zxz --build $(DEB_ROOT) $(DEB_OUT)/

clean:
	rm -rf bin dist

# midfs — see README.md. Every target works on a fresh Debian machine after .ci/run's apt-get.
GO      ?= go
PREFIX  ?= /usr/local
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: build test unit e2e bench lint install clean

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/midfs ./cmd/midfs

# The README's test command: lint, unit tests, then end-to-end tests against
# real FUSE, sshd and mount(8). Needs root (FUSE mounts, sshd, other uids).
test: lint unit e2e

unit:
	$(GO) test -count=1 -timeout 20m $(shell $(GO) list ./... | grep -v /e2e)

e2e: build
	MIDFS_BIN=$(CURDIR)/bin/midfs $(GO) test -count=1 -timeout 30m -v ./e2e/...

bench: build
	MIDFS_BIN=$(CURDIR)/bin/midfs $(GO) test -run '^$$' -bench . -benchtime 2s -timeout 30m ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

install: build
	install -D -m 0755 bin/midfs $(DESTDIR)$(PREFIX)/bin/midfs

clean:
	rm -rf bin dist

// Package admin is the room of the authority's admin socket
// (DATA_DIR/admin.sock): the server that serves an Authority (package auth's
// Server) to root over it, the Client the command line uses, the requests
// and answers they exchange, and the kinds of its errors, which travel as
// HTTP statuses (400 invalid, 404 not found, 409 conflict, 500 internal) so
// that the command line can tell "not there" from "already there" from a
// bad request.
//
// It imports policy, identity, wire and audit, never auth: auth and cmd
// import it.
package admin

import (
	"errors"
	"fmt"
	"net/http"
)

// Kind says what went wrong with an admin request.
type Kind int

const (
	// Internal: the authority failed (its store is closed, a disk error).
	// An error nobody marked is Internal.
	Internal Kind = iota
	// Invalid: the request is wrong (bad YAML, name, value or reference)
	// and nothing changed.
	Invalid
	// NotFound: the named resource does not exist.
	NotFound
	// Conflict: the resource exists (create without --force) or its state
	// forbids the change (a role in use, a bot that is not locked).
	Conflict
)

var names = [...]string{Internal: "internal", Invalid: "invalid", NotFound: "not found", Conflict: "conflict"}

func (k Kind) String() string {
	if k < 0 || int(k) >= len(names) {
		return fmt.Sprintf("kind %d", int(k))
	}
	return names[k]
}

// kindError marks err with a kind; its text is err's.
type kindError struct {
	kind Kind
	err  error
}

func (e *kindError) Error() string { return e.err.Error() }
func (e *kindError) Unwrap() error { return e.err }

// Mark gives err the kind k; a nil err stays nil. The outermost mark wins.
func Mark(k Kind, err error) error {
	if err == nil {
		return nil
	}
	return &kindError{kind: k, err: err}
}

// Errorf is fmt.Errorf marked with the kind k.
func Errorf(k Kind, format string, args ...any) error {
	return Mark(k, fmt.Errorf(format, args...))
}

// KindOf is the kind of err: of the outermost mark in its chain, or
// Internal when nothing marked it.
func KindOf(err error) Kind {
	var ke *kindError
	if errors.As(err, &ke) {
		return ke.kind
	}
	return Internal
}

// Status is the HTTP status the admin socket answers an error of kind k
// with.
func (k Kind) Status() int {
	switch k {
	case Invalid:
		return http.StatusBadRequest
	case NotFound:
		return http.StatusNotFound
	case Conflict:
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

// KindOfStatus is the kind of an error answer with HTTP status code: the
// reverse of Kind.Status. Statuses it does not know are Internal.
func KindOfStatus(code int) Kind {
	for _, k := range []Kind{Invalid, NotFound, Conflict} {
		if k.Status() == code {
			return k
		}
	}
	return Internal
}

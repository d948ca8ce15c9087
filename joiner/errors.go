package joiner

import "errors"

// Kinds of failure a caller may want to tell apart (the mount command maps
// them to exit codes). Test with errors.Is; the error's text is the full
// one-line message for the user.
var (
	// ErrConfig: the configuration cannot work (bad pin syntax, no token,
	// no CA pin for a join). Nothing was sent.
	ErrConfig = errors.New("bad configuration")
	// ErrRefused: the authority answered and said no (token invalid, expired
	// or used; bot locked or removed). Retrying will not help.
	ErrRefused = errors.New("refused by the authority")
	// ErrPinMismatch: the authority's CA does not match the pin, or its
	// server certificate is not signed by the pinned CA. Nothing secret was sent.
	ErrPinMismatch = errors.New("CA pin mismatch")
	// ErrUnreachable: the authority could not be reached before the join
	// timeout ran out.
	ErrUnreachable = errors.New("authority unreachable")
)

// kindError is an error of one of the kinds above with its own message.
type kindError struct {
	kind  error
	msg   string
	cause error
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }
func (e *kindError) Unwrap() error        { return e.cause }

// retryable marks a failure that may go away by itself: the network, a
// timeout, or the authority answering 5xx or 429.
type retryable struct{ err error }

func (e *retryable) Error() string { return e.err.Error() }
func (e *retryable) Unwrap() error { return e.err }

func isRetryable(err error) bool {
	var r *retryable
	return errors.As(err, &r)
}

package testenv

import (
	"bytes"
	"sync"
)

// LogBuffer collects what a logger or a child process writes, safe for
// the writer and the test to use at once, so tests can search it (for a
// message, or for a secret that must not be there).
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String is everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Len is how many bytes were written so far; Since(Len()) is what comes
// after.
func (l *LogBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Len()
}

// Since is what was written after the first off bytes.
func (l *LogBuffer) Since(off int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf.Bytes()[off:])
}

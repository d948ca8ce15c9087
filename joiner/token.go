package joiner

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// MaxTokenInput bounds what is read from a token file or standard input: a
// token is 64 hex digits, an iam token name at most a few hundred bytes.
const MaxTokenInput = 4 << 10

// ReadToken reads one join token from r (a token file, standard input):
// surrounding white space is dropped, and anything else than one word is
// refused, so that a wrong file is not sent. from names r in errors.
func ReadToken(r io.Reader, from string) (string, error) {
	data, err := io.ReadAll(io.LimitReader(bufio.NewReader(r), MaxTokenInput+1))
	if err != nil {
		return "", fmt.Errorf("cannot read the join token from %s: %v", from, err)
	}
	tok := string(bytes.TrimSpace(data))
	switch {
	case len(data) > MaxTokenInput:
		err = fmt.Errorf("is longer than %d bytes", MaxTokenInput)
	case tok == "":
		err = errors.New("is empty")
	case strings.ContainsFunc(tok, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		err = errors.New("holds more than one word")
	}
	if err != nil {
		return "", fmt.Errorf("the join token from %s %v: give the token that `midfs bots add` printed, alone", from, err)
	}
	return tok, nil
}

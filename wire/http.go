package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
)

// ErrTooLarge is DecodeStrict's error for a body over MaxBody bytes.
var ErrTooLarge = fmt.Errorf("request body larger than %d bytes", MaxBody)

// DecodeStrict reads one JSON object of at most MaxBody bytes into v, with
// no unknown fields and nothing after it (fuzzed in auth/fuzz_test.go).
func DecodeStrict(body io.Reader, v any) error {
	dec := json.NewDecoder(io.LimitReader(body, MaxBody+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return ErrTooLarge
		}
		return fmt.Errorf("bad request body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("bad request body: data after the JSON object")
	}
	return nil
}

// WriteJSON answers 200 with v as JSON.
func WriteJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "internal error: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

// WriteError answers status with msg as an Error.
func WriteError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(Error{Error: msg})
}

// Recover turns a panic in h into a 500 and a log line, so a malformed
// request never takes the authority down.
func Recover(log *slog.Logger, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				log.Error("panic in API handler", "path", r.URL.Path, "panic", fmt.Sprint(p))
				WriteError(w, http.StatusInternalServerError, "internal error; see the authority's log")
			}
		}()
		h.ServeHTTP(w, r)
	})
}

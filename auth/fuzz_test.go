package auth

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/midfs/midfs/wire"
)

// FuzzDecodeRequests: any body either decodes into the API's request types
// or is an error; accepted keys are ones the authority can sign for.
// Seeds: testdata/fuzz/FuzzDecodeRequests.
func FuzzDecodeRequests(f *testing.F) {
	_, pub := newKey(f)
	for _, v := range []any{
		wire.JoinRequest{Token: strings.Repeat("ab", 32), PublicKey: pub},
		wire.RenewRequest{PublicKey: pub},
		wire.CertsRequest{PublicKey: pub, TTLSeconds: 3600},
	} {
		b, _ := json.Marshal(v)
		f.Add(b)
	}
	f.Add([]byte(`{"token":"x","public_key":"AAAA","extra":1}`))
	f.Add([]byte(`{"token":"x"}{"token":"y"}`))
	f.Add([]byte(`{"public_key":null,"ttl_seconds":-1}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, v := range []any{&wire.JoinRequest{}, &wire.RenewRequest{}, &wire.CertsRequest{}} {
			if err := wire.DecodeStrict(bytes.NewReader(body), v); err != nil {
				if err.Error() == "" {
					t.Fatal("empty error message")
				}
				continue
			}
			var key []byte
			switch r := v.(type) {
			case *wire.JoinRequest:
				key = r.PublicKey
			case *wire.RenewRequest:
				key = r.PublicKey
			case *wire.CertsRequest:
				key = r.PublicKey
			}
			if pub, err := parsePublicKey(key); err == nil && pub == nil {
				t.Fatal("parsePublicKey accepted a key and returned nil")
			}
		}
	})
}

// FuzzJoinHandler sends arbitrary bodies to the join, renew and certs
// handlers of a real authority: every answer is a 4xx with a one-line JSON
// error (no panic, no 5xx), and no body without a valid token gets an
// identity.
func FuzzJoinHandler(f *testing.F) {
	s := startTest(f)
	_, pub := newKey(f)
	b, _ := json.Marshal(wire.JoinRequest{Token: strings.Repeat("0", 64), PublicKey: pub})
	f.Add(b)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"token":"","public_key":""}`))
	f.Add(bytes.Repeat([]byte("x"), wire.MaxBody+10))
	h := s.routes()
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, path := range []string{wire.PathJoin, wire.PathRenew, wire.PathCerts} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
			if rec.Code < 400 || rec.Code >= 500 {
				t.Fatalf("%s answered %d to %q", path, rec.Code, body)
			}
			var e wire.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" || strings.Contains(e.Error, "\n") {
				t.Fatalf("%s error body %q is not one line of wire.Error", path, rec.Body.Bytes())
			}
		}
	})
}

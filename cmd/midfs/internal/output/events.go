package output

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// EventLine prints one audit event, given as the JSON of audit.Event,
// on one line: as that JSON (the stable form, for a SIEM) or as text,
// "TIME TYPE key=value ...", with the fields of the JSON in its order (an
// actor's as actor.uid=...).
func EventLine(w io.Writer, raw []byte, format string) error {
	if format == "json" {
		if _, err := w.Write(raw); err != nil {
			return err
		}
		_, err := w.Write([]byte{'\n'})
		return err
	}
	var head struct {
		Time time.Time `json:"time"`
		Type string    `json:"type"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return err
	}
	var line strings.Builder
	line.WriteString(head.Time.UTC().Format("2006-01-02T15:04:05.000Z07:00"))
	line.WriteString(" " + head.Type)
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := flatten(dec, "", &line); err != nil {
		return err
	}
	line.WriteByte('\n')
	_, err := io.WriteString(w, line.String())
	return err
}

// skipped are the fields the line starts with, or leaves out (the ID is
// for JSON consumers that resume).
var skipped = map[string]bool{"id": true, "time": true, "type": true}

// flatten writes " key=value" for each field of the JSON object dec is
// at, nested objects as prefix.key, lists comma-joined.
func flatten(dec *json.Decoder, prefix string, out *strings.Builder) error {
	if _, err := dec.Token(); err != nil { // {
		return err
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		key := prefix + t.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		if prefix == "" && skipped[key] {
			continue
		}
		if len(raw) > 0 && raw[0] == '{' && !strings.HasPrefix(key, "labels") {
			sub := json.NewDecoder(bytes.NewReader(raw))
			sub.UseNumber()
			if err := flatten(sub, key+".", out); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(out, " %s=%s", key, textValue(raw))
	}
	_, err := dec.Token() // }
	return err
}

// textValue is a JSON value as text: strings bare unless they need
// quoting, lists comma-joined, labels as k=v,k=v.
func textValue(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return quoteIfNeeded(s)
	}
	var list []string
	if json.Unmarshal(raw, &list) == nil {
		return quoteIfNeeded(strings.Join(list, ","))
	}
	var m map[string]string
	if json.Unmarshal(raw, &m) == nil {
		kv := make([]string, 0, len(m))
		for k, v := range m {
			kv = append(kv, k+"="+v)
		}
		slices.Sort(kv)
		return quoteIfNeeded(strings.Join(kv, ","))
	}
	return string(raw)
}

func quoteIfNeeded(s string) string {
	if s == "" || strings.ContainsAny(s, " \t\"\\") || strconv.Quote(s) != `"`+s+`"` {
		return strconv.Quote(s)
	}
	return s
}

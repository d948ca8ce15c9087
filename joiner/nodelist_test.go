package joiner

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// countingReader counts how many bytes the decoder pulled.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestDecodeNodes(t *testing.T) {
	nodes, cas, err := decodeNodes(&budgetReader{r: strings.NewReader(
		`{"later":{"x":[1,2]},"nodes":[{"name":"b","addr":"10.0.0.2:22"},{"name":"a","addr":"10.0.0.1:22","labels":{"env":"prod"}}],"cas":{"phases":{"user":"init"}}}`)})
	if err != nil || len(nodes) != 2 || nodes[1].Labels["env"] != "prod" || cas == nil || cas.Phases["user"] != "init" {
		t.Fatalf("decodeNodes: %v %+v %+v", err, nodes, cas)
	}
	if nodes, cas, err := decodeNodes(&budgetReader{r: strings.NewReader(`{"nodes":[]}`)}); err != nil || len(nodes) != 0 || cas != nil {
		t.Errorf("empty list: %v %+v", err, nodes)
	}
	for _, bad := range []string{``, `[]`, `{"nodes":{}}`, `{"nodes":[{"name":1}]}`, `{"nodes":[{"name":"a"}`, `{"nodes":[]`, `{"cas":[],"nodes":[]}`} {
		if _, _, err := decodeNodes(&budgetReader{r: strings.NewReader(bad)}); err == nil {
			t.Errorf("decodeNodes(%q) accepted", bad)
		}
	}
}

// A node above maxNodeBytes is refused before it is read whole, however
// long it goes on; nodes just under the limit pass.
func TestDecodeNodesLimitsOneNode(t *testing.T) {
	fits := fmt.Sprintf(`{"name":"a","addr":"h:22","labels":{"k":"%s"}}`, strings.Repeat("v", maxNodeBytes-100))
	list := `{"nodes":[` + fits + `,` + fits + `]}`
	if nodes, _, err := decodeNodes(&budgetReader{r: strings.NewReader(list)}); err != nil || len(nodes) != 2 {
		t.Fatalf("two nodes just under the limit: %v", err)
	}
	huge := io.MultiReader(strings.NewReader(`{"nodes":[{"name":"a","addr":"h:22","labels":{"k":"`), endless('v'))
	cr := &countingReader{r: huge}
	_, _, err := decodeNodes(&budgetReader{r: cr})
	if !errors.Is(err, errListLimit) || !strings.Contains(err.Error(), "node of more than") {
		t.Fatalf("endless node: %v, want the per-node limit", err)
	}
	if cr.n > 2*maxNodeBytes {
		t.Errorf("read %d bytes of one endless node; want the read stopped near %d", cr.n, maxNodeBytes)
	}
}

// endless is a reader of one byte repeated forever.
type endless byte

func (e endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(e)
	}
	return len(p), nil
}

// Package output prints what midfs's commands show: the one table printer
// (status, get, ls), admin resources as a table, YAML or JSON, and the
// join instructions `bots add` prints. Only cmd/midfs imports it.
package output

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Table is the one printer of every table midfs shows (status, get, ls):
// columns aligned by text/tabwriter, two spaces apart, and a dashed line
// under the header when there is one.
type Table struct {
	rows [][]string
}

func (t *Table) Header(cols ...string) {
	dashes := make([]string, len(cols))
	for i, c := range cols {
		dashes[i] = strings.Repeat("-", len(c))
	}
	t.rows = append(t.rows, cols, dashes)
}

func (t *Table) Row(cols ...string) { t.rows = append(t.rows, cols) }

func (t *Table) Print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

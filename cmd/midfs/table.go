package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// table is the one printer of every table midfs shows (status, get, ls):
// columns aligned by text/tabwriter, two spaces apart, and a dashed line
// under the header when there is one.
type table struct {
	rows [][]string
}

func (t *table) header(cols ...string) {
	dashes := make([]string, len(cols))
	for i, c := range cols {
		dashes[i] = strings.Repeat("-", len(c))
	}
	t.rows = append(t.rows, cols, dashes)
}

func (t *table) row(cols ...string) { t.rows = append(t.rows, cols) }

func (t *table) print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

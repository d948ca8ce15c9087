package cliconfig

import (
	"io"
	"strings"

	"github.com/urfave/cli/v2"
)

// HelpWidth is the widest line of any --help: urfave/cli's own layout puts
// every flag's usage after the longest flag name, on one unbroken line.
const HelpWidth = 100

// flagNameWidth caps the column of flag names; a longer entry puts its
// usage on the next line instead of pushing every usage to the right.
const flagNameWidth = 30

// SetHelp makes urfave/cli wrap every help text at HelpWidth and print
// flags with printFlags. urfave/cli keeps its printer in a package
// variable, so this holds for every App in the process.
func SetHelp() {
	flags := strings.NewReplacer(
		`{{template "visibleFlagCategoryTemplate" .}}`, `{{printFlags .VisibleFlags}}`,
		`{{template "visibleFlagTemplate" .}}`, `{{printFlags .VisibleFlags}}`,
	)
	cli.HelpPrinter = func(w io.Writer, templ string, data any) {
		cli.HelpPrinterCustom(w, flags.Replace(templ), data, map[string]any{
			"wrapAt":     func() int { return HelpWidth },
			"printFlags": printFlags,
		})
	}
}

// printFlags lays flags out in two columns, names and usage, the usage
// wrapped at HelpWidth. It writes no tabs: urfave/cli runs the help
// through a tabwriter, which would realign the columns.
func printFlags(flags []cli.Flag) string {
	names := make([]string, len(flags))
	col := 0
	for i, f := range flags {
		names[i] = flagNames(f)
		if len(names[i]) <= flagNameWidth {
			col = max(col, len(names[i]))
		}
	}
	const indent = "   "
	pad := strings.Repeat(" ", len(indent)+col+2)
	var b strings.Builder
	for i, f := range flags {
		b.WriteString("\n" + indent + names[i])
		if len(names[i]) > col {
			b.WriteString("\n" + pad)
		} else {
			b.WriteString(strings.Repeat(" ", col+2-len(names[i])))
		}
		b.WriteString(strings.Join(wrapWords(flagUsage(f), HelpWidth-len(pad)), "\n"+pad))
	}
	return b.String()
}

// flagNames is "--reader, --readers USER|@GROUP": every name, then the
// placeholder the usage names between backquotes.
func flagNames(f cli.Flag) string {
	var names []string
	for _, n := range f.Names() {
		if len(n) == 1 {
			names = append(names, "-"+n)
		} else {
			names = append(names, "--"+n)
		}
	}
	s := strings.Join(names, ", ")
	if df, ok := f.(cli.DocGenerationFlag); ok && df.TakesValue() {
		if ph, _ := Placeholder(df.GetUsage()); ph != "" {
			s += " " + ph
		}
	}
	return s
}

// flagUsage is the usage without backquotes, with the default, whether
// the flag repeats, and its environment variables.
func flagUsage(f cli.Flag) string {
	df, ok := f.(cli.DocGenerationFlag)
	if !ok {
		return ""
	}
	_, usage := Placeholder(df.GetUsage())
	if _, isBool := f.(*cli.BoolFlag); !isBool && df.GetDefaultText() != "" {
		usage += " (default: " + df.GetDefaultText() + ")"
	}
	if sf, ok := f.(cli.DocGenerationSliceFlag); ok && sf.IsSliceFlag() {
		usage += " (repeatable)"
	}
	if env := df.GetEnvVars(); len(env) > 0 {
		usage += " [$" + strings.Join(env, ", $") + "]"
	}
	return usage
}

// Placeholder splits the placeholder out of a usage written as
// "`HOST:PORT` of the authority", urfave/cli's convention. A usage that
// starts with it and a colon ("`token|iam`: how ...") lists the values
// only once, in the names column.
func Placeholder(usage string) (name, text string) {
	before, rest, ok := strings.Cut(usage, "`")
	if !ok {
		return "", usage
	}
	name, after, ok := strings.Cut(rest, "`")
	if !ok {
		return "", usage
	}
	if before == "" && strings.HasPrefix(after, ": ") {
		return name, after[2:]
	}
	return name, before + name + after
}

// wrapWords breaks text into lines of at most width columns at spaces; a
// single word longer than width gets a line of its own.
func wrapWords(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		switch {
		case line == "":
			line = w
		case len(line)+1+len(w) <= width:
			line += " " + w
		default:
			lines = append(lines, line)
			line = w
		}
	}
	return append(lines, line)
}

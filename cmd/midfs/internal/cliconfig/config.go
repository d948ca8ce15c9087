// Package cliconfig is how a urfave/cli command gets its flag values
// besides the command line's own parsing: from a YAML config file whose
// keys are the flag names (Load), and from a command line with flags after
// positional arguments (PermuteArgs); with the lookups and typo distance
// both need; and how the command line presents itself: the help layout
// (SetHelp) and the shell completion scripts. It is generic over the
// commands' cli.Flag lists and knows no command of midfs (the completion
// scripts only name the binary). It imports the standard library,
// urfave/cli and YAML; being internal to cmd/midfs, only that command
// imports it.
package cliconfig

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"
	"go.yaml.in/yaml/v3"
)

// A config file is YAML whose keys are the command's flag names with
// underscores (auth_server, ca_pin, readers, log_level, ...). It is applied
// from a command's Before hook, after flags and MIDFS_* variables were
// parsed, and only to flags that neither of them set: flags > env > file.
// Being generic over the command's cli.Flag list, every flag works in the
// file without anyone having to remember to add it here.

// File is what a config file gave a command.
type File struct {
	path       string
	extras     map[string]string // keys that are not flags, such as the mount point (a positional argument)
	lines      map[string]int    // flag name -> line of the file that set it
	logChanged bool
}

// Extra is the value of a key that is not a flag ("" when not set).
func (f *File) Extra(key string) string { return f.extras[key] }

// LogChanged says whether the file set log_level or log_format, app-wide
// flags: logging must then be set up again for the file's choice to hold.
func (f *File) LogChanged() bool { return f.logChanged }

// Annotate points a usage error message about a flag the file set at the
// file's line: the command checks values (a user that does not exist)
// after the file was read, and only knows the flag's name. ok is false
// when the message names no flag the file set.
func (f *File) Annotate(msg string) (annotated string, ok bool) {
	if f == nil {
		return msg, false
	}
	for name, line := range f.lines {
		if i := strings.Index(msg, "--"+name); i >= 0 && !isFlagChar(msg, i+2+len(name)) {
			return fmt.Sprintf("%s (--%s is set in config %s line %d)", msg, name, f.path, line), true
		}
	}
	return msg, false
}

func isFlagChar(s string, i int) bool {
	return i < len(s) && (s[i] == '-' || s[i] >= 'a' && s[i] <= 'z')
}

// Load reads the file named by --config, if any, and sets every flag of c
// that the command line and the environment left alone. extraKeys names
// the non-flag keys the command accepts; File.Extra has their values. Every
// error is about the file or a value in it (a usage error), on one line.
func Load(c *cli.Context, extraKeys ...string) (*File, error) {
	path := c.String("config")
	cf := &File{path: path, extras: map[string]string{}, lines: map[string]int{}}
	if path == "" {
		return cf, nil
	}
	data, err := readConfigFile(path)
	if err != nil {
		return nil, err
	}
	entries, err := parseConfig(path, data)
	if err != nil {
		return nil, err
	}
	warnIfReadable(path, entries)
	for _, e := range entries {
		if slices.Contains(extraKeys, e.key) {
			if e.node.Kind != yaml.ScalarNode || e.node.Value == "" {
				return nil, e.errorf("%s wants a single value", e.key)
			}
			cf.extras[e.key] = e.node.Value
			continue
		}
		f, name := FlagForKey(c, e.key)
		if f == nil {
			return nil, e.errorf("unknown key %q%s", e.key, suggestKey(c, e.key, extraKeys))
		}
		if name == "config" {
			return nil, e.errorf("a config file cannot name another config file")
		}
		if c.IsSet(name) {
			continue // flag or MIDFS_* variable: they win over the file
		}
		if err := applyConfigValue(c, f, name, e.node); err != nil {
			return nil, e.errorf("%s: %v", e.key, err)
		}
		cf.lines[name] = e.line
		if name == "log-level" || name == "log-format" {
			cf.logChanged = true
		}
	}
	slog.Debug("config file applied", "file", path)
	return cf, nil
}

// Key reads the value of one top-level key of a config file, without
// applying anything; found is false when the file has no such key.
func Key(path, key string) (value string, found bool, err error) {
	data, err := readConfigFile(path)
	if err != nil {
		return "", false, err
	}
	entries, err := parseConfig(path, data)
	if err != nil {
		return "", false, err
	}
	for _, e := range entries {
		if e.key == key {
			return e.node.Value, true, nil
		}
	}
	return "", false, nil
}

// maxConfigFile caps a config file: it holds a few dozen keys, and parsing
// YAML takes tens of times its size in memory (a 17 MB file took 678 MB).
const maxConfigFile = 1 << 20

// readConfigFile reads a config file, refusing one over maxConfigFile
// without reading the rest.
func readConfigFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read config file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read config file: %w", err)
	}
	if len(data) > maxConfigFile {
		return nil, fmt.Errorf("config %s is larger than 1 MiB; a midfs config file holds a few keys: check that --config names the right file", path)
	}
	return data, nil
}

// configEntry is one top-level key of a config file with its value node.
type configEntry struct {
	file string
	key  string
	line int
	node *yaml.Node
}

func (e configEntry) errorf(format string, args ...any) error {
	return fmt.Errorf("config %s line %d: %s", e.file, e.line, fmt.Sprintf(format, args...))
}

// parseConfig checks the file's shape: one mapping of unique keys. An empty
// file is an empty config.
func parseConfig(path string, data []byte) ([]configEntry, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("config %s %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("config %s line %d: want a mapping of flag names to values (key: value)", path, root.Line)
	}
	var entries []configEntry
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		e := configEntry{file: path, key: k.Value, line: k.Line, node: v}
		if k.Kind != yaml.ScalarNode {
			return nil, e.errorf("keys must be flag names")
		}
		if first, dup := seen[k.Value]; dup {
			return nil, e.errorf("%s is already set on line %d", k.Value, first)
		}
		seen[k.Value] = k.Line
		entries = append(entries, e)
	}
	return entries, nil
}

// FlagForKey finds the flag a key names: its name (or an alias) with
// underscores; a repeatable flag also answers to its plural (readers).
func FlagForKey(c *cli.Context, key string) (cli.Flag, string) {
	name := strings.ReplaceAll(key, "_", "-")
	if strings.Contains(key, "-") {
		return nil, "" // keys use underscores, as the docs and examples say
	}
	for _, flags := range contextFlags(c) {
		for _, f := range flags {
			for _, n := range f.Names() {
				if n == name {
					return f, f.Names()[0]
				}
				if _, ok := f.(*cli.StringSliceFlag); ok && n+"s" == name {
					return f, f.Names()[0]
				}
			}
		}
	}
	return nil, ""
}

// contextFlags lists the flags visible from c: the command's own, then
// those of its parents and the app (log_level, log_format).
func contextFlags(c *cli.Context) [][]cli.Flag {
	var out [][]cli.Flag
	for _, l := range c.Lineage() {
		if l.Command != nil {
			out = append(out, l.Command.Flags)
		}
	}
	if c.App != nil {
		out = append(out, c.App.Flags)
	}
	return out
}

// applyConfigValue sets one flag from a YAML value, checking the value's
// shape against the flag's kind first so the error is about the file.
func applyConfigValue(c *cli.Context, f cli.Flag, name string, v *yaml.Node) error {
	switch f.(type) {
	case *cli.BoolFlag:
		if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" {
			return fmt.Errorf("want true or false, got %s", describeNode(v))
		}
		return c.Set(name, strings.ToLower(v.Value))
	case *cli.StringSliceFlag:
		items := []*yaml.Node{v}
		if v.Kind == yaml.SequenceNode {
			items = v.Content
		}
		for _, it := range items {
			if it.Kind != yaml.ScalarNode || it.ShortTag() == "!!null" {
				return fmt.Errorf("want a value or a list of values, got %s", describeNode(it))
			}
			if err := c.Set(name, it.Value); err != nil {
				return badValue(f, it.Value, err)
			}
		}
		return nil
	default:
		if v.Kind != yaml.ScalarNode || v.ShortTag() == "!!null" {
			return fmt.Errorf("want a single value, got %s", describeNode(v))
		}
		if err := c.Set(name, v.Value); err != nil {
			return badValue(f, v.Value, err)
		}
		return nil
	}
}

// badValue explains a value the flag refused; the standard flag package
// only says "parse error".
func badValue(f cli.Flag, value string, err error) error {
	switch f.(type) {
	case *cli.DurationFlag:
		return fmt.Errorf("%q is not a duration; write it like 90s, 30m or 1h", value)
	case *cli.IntFlag, *cli.Int64Flag, *cli.UintFlag, *cli.Uint64Flag:
		return fmt.Errorf("%q is not a whole number", value)
	}
	return fmt.Errorf("bad value %q: %v", value, err)
}

func describeNode(v *yaml.Node) string {
	switch {
	case v.Kind == yaml.SequenceNode:
		return "a list"
	case v.Kind == yaml.MappingNode:
		return "a mapping"
	case v.ShortTag() == "!!null":
		return "nothing"
	}
	return fmt.Sprintf("%q", v.Value)
}

// suggestKey names the key the user probably meant, or lists them all.
func suggestKey(c *cli.Context, key string, extraKeys []string) string {
	if strings.Contains(key, "-") {
		if f, _ := FlagForKey(c, strings.ReplaceAll(key, "-", "_")); f != nil {
			return fmt.Sprintf(" (keys use underscores: %s)", strings.ReplaceAll(key, "-", "_"))
		}
	}
	names := append(configKeys(c), extraKeys...)
	sort.Strings(names)
	for _, n := range names {
		if EditDistance(n, key) <= 2 {
			return fmt.Sprintf(" (did you mean %s?)", n)
		}
	}
	return "; known keys: " + strings.Join(names, ", ")
}

// configKeys lists the keys a config file may use here.
func configKeys(c *cli.Context) []string {
	seen := map[string]bool{"config": true, "help": true}
	var names []string
	for _, flags := range contextFlags(c) {
		for _, f := range flags {
			n := strings.ReplaceAll(f.Names()[0], "-", "_")
			if _, ok := f.(*cli.StringSliceFlag); ok {
				n += "s"
			}
			if !seen[n] {
				seen[n] = true
				names = append(names, n)
			}
		}
	}
	sort.Strings(names)
	return names
}

// EditDistance is the Levenshtein distance, for typo suggestions.
func EditDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// warnIfReadable warns when a config file holding a join token can be read
// by users other than its owner. (An iam token name is no secret, but the
// file cannot tell which kind it holds.)
func warnIfReadable(path string, entries []configEntry) {
	for _, e := range entries {
		if e.key != "token" {
			continue
		}
		if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
			slog.Warn("config file holds a token and is readable by other users; run chmod 600 on it", "file", path)
		}
	}
}

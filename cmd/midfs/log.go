package main

import (
	"log/slog"
	"os"
	"time"

	"github.com/lmittmann/tint"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

func logFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "`debug|info|warn|error`: the least severe level logged"},
		&cli.StringFlag{Name: "log-format", Value: "auto", Usage: "`text|json|auto`: auto is text with colours on a terminal, JSON otherwise"},
	}
}

// setupLogging installs the process-wide slog logger: tint on a terminal,
// JSON otherwise, so journald and log shippers get structured lines.
func setupLogging(c *cli.Context) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return failf(exitUsage, "bad --log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	format := c.String("log-format")
	if format == "auto" {
		format = "json"
		if isTerminal(os.Stderr) {
			format = "text"
		}
	}
	var h slog.Handler
	switch format {
	case "text":
		h = tint.NewTextHandler(os.Stderr, &tint.Options{Level: level, TimeFormat: time.TimeOnly, NoColor: !isTerminal(os.Stderr)})
	case "json":
		h = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	default:
		return failf(exitUsage, "bad --log-format %q: want text, json or auto", format)
	}
	slog.SetDefault(slog.New(h))
	return nil
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

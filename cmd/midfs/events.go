package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/cmd/midfs/internal/output"
)

// eventsPage is how many events one admin request carries.
const eventsPage = 5000

// followWait is how long one follow request may wait for an event.
const followWait = 20 * time.Second

func eventsCommand() *cli.Command {
	return &cli.Command{
		Name:  "events",
		Usage: "show the audit trail: joins, renewals, certificates issued, locks, admin changes",
		Description: "Prints the events of a time range, oldest first, one per line; --follow then prints new ones as they come.\n" +
			"--format=json prints one JSON object per line with the stable fields listed in the README, for a SIEM.\n" +
			exitHelp(exitUsage, exitAuthority),
		Flags: []cli.Flag{
			dataDirFlag(),
			&cli.StringFlag{Name: "since", Value: "24h", Usage: "`DURATION|TIME`: events from then on: a duration back from now (90m, 7d) or a time (2026-12-01T08:00:00Z, 2026-12-01)"},
			&cli.StringFlag{Name: "until", Usage: "`DURATION|TIME`: events before then (default: now)"},
			&cli.StringFlag{Name: "type", Usage: "`TYPE[,TYPE]`: only these event types, e.g. bot.join_refused,bot.generation_locked"},
			&cli.StringFlag{Name: "bot", Usage: "`NAME`: only events about this bot"},
			&cli.StringFlag{Name: "format", Value: "text", Usage: "`text|json`: a line of text, or a JSON object, per event"},
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "then print new events as they come, until interrupted"},
		},
		Action: events,
	}
}

// events checks every flag before it asks the authority anything.
func events(c *cli.Context) error {
	if c.NArg() > 0 {
		return failf(exitUsage, "events takes no arguments, got %q", strings.Join(c.Args().Slice(), " "))
	}
	q, err := eventQuery(c, time.Now())
	if err != nil {
		return fail(exitUsage, err)
	}
	format := c.String("format")
	if format != "text" && format != "json" {
		return failf(exitUsage, "bad --format %q: want text or json", format)
	}
	follow := c.Bool("follow")
	if follow && !q.Until.IsZero() {
		return failf(exitUsage, "--follow prints events as they come: it takes no --until")
	}
	ac, err := admin.Dial(c.String("data-dir"))
	if err != nil {
		return fail(exitAuthority, err)
	}
	defer ac.Close()
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	w := bufio.NewWriter(c.App.Writer)
	defer w.Flush()
	end, err := listEvents(ctx, ac, q, w, format)
	if err == nil && follow {
		err = followEvents(ctx, ac, q, end, w, format)
	}
	if err != nil && ctx.Err() == nil {
		return fail(exitFailure, err)
	}
	return nil
}

// eventQuery reads the filters of the flags.
func eventQuery(c *cli.Context, now time.Time) (admin.EventQuery, error) {
	q := admin.EventQuery{Bot: c.String("bot"), Limit: eventsPage}
	var err error
	if q.Since, err = audit.ParseTime(c.String("since"), now); err != nil {
		return q, errors.New("--since: " + err.Error())
	}
	if u := c.String("until"); u != "" {
		if q.Until, err = audit.ParseTime(u, now); err != nil {
			return q, errors.New("--until: " + err.Error())
		}
		if !q.Since.Before(q.Until) {
			return q, errors.New("--since must be before --until")
		}
	}
	if q.Types, err = audit.ParseTypes(c.String("type")); err != nil {
		return q, errors.New("--type: " + err.Error())
	}
	return q, nil
}

// listEvents prints the events q selects, page by page, as the trail was
// when the first page was read; it returns where the listing ended, where
// following starts.
func listEvents(ctx context.Context, ac *admin.Client, q admin.EventQuery, w *bufio.Writer, format string) (string, error) {
	for {
		p, err := ac.Events(ctx, q)
		if err != nil {
			return "", err
		}
		q.Upto = p.End
		if err := printEvents(w, p.Events, format); err != nil {
			return "", err
		}
		if len(p.Events) < q.Limit {
			return p.End, nil
		}
		var last audit.Event
		if err := json.Unmarshal(p.Events[len(p.Events)-1], &last); err != nil {
			return "", err
		}
		q.AfterTime, q.AfterID = last.Time, last.ID
	}
}

// followEvents prints the events after position from, in the order they
// were committed, until ctx ends. The authority holds each request until
// an event comes or followWait passes.
func followEvents(ctx context.Context, ac *admin.Client, q admin.EventQuery, from string, w *bufio.Writer, format string) error {
	fq := admin.EventQuery{Types: q.Types, Bot: q.Bot, Follow: true, From: from, Limit: eventsPage, Wait: followWait}
	for ctx.Err() == nil {
		p, err := ac.Events(ctx, fq)
		if err != nil {
			return err
		}
		if err := printEvents(w, p.Events, format); err != nil {
			return err
		}
		fq.From = p.Next
	}
	return nil
}

func printEvents(w *bufio.Writer, evs []json.RawMessage, format string) error {
	for _, e := range evs {
		if err := output.EventLine(w, e, format); err != nil {
			return err
		}
	}
	return w.Flush()
}

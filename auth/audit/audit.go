// Package audit is what the authority records of every security-relevant
// action: the Event, its types, its stable JSON form (one object per line
// for a SIEM), the reason codes of refused joins, and the checks of the
// filters `midfs events` takes.
//
// The authority (auth) writes events in the store transaction of the change
// they describe, auth/store keeps them, auth/admin carries them over the
// admin socket and cmd prints them. It imports only the standard library.
//
// Nothing secret ever goes into an event: no join token (tokens are named,
// and a one-time token's name is derived from a hash of it), no key, no
// certificate body.
package audit

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Event is one recorded action. Its JSON field names and meanings are
// stable: fields are only ever added. Empty fields are left out; which
// fields each type sets is in Types.
type Event struct {
	// ID is given by the store: it grows in the order events commit.
	ID int64 `json:"id"`
	// Time is when the authority acted (its clock), UTC.
	Time time.Time `json:"time"`
	// Type is one of Types, "subject.action".
	Type string `json:"type"`

	// Actor is who asked through the admin socket; absent for actions of
	// bots and nodes (see Addr) and of the authority itself.
	Actor *Actor `json:"actor,omitempty"`
	// Addr is the source address (IP:port) of an API request.
	Addr string `json:"addr,omitempty"`

	Bot        string `json:"bot,omitempty"`
	Instance   string `json:"instance,omitempty"`   // the bot's instance (changes at each token join)
	Generation uint64 `json:"generation,omitempty"` // the bot identity's generation
	Method     string `json:"method,omitempty"`     // join method: token, iam
	Token      string `json:"token,omitempty"`      // a token's name, never its secret
	AWSAccount string `json:"aws_account,omitempty"`
	AWSARN     string `json:"aws_arn,omitempty"`
	Retry      bool   `json:"retry,omitempty"` // a retried join or renewal answered again; nothing changed

	// Name is the name of the role, token, node or lock (its ID) that a
	// *.created, *.updated or *.removed event is about.
	Name     string            `json:"name,omitempty"`
	Roles    []string          `json:"roles,omitempty"`
	Logins   []string          `json:"logins,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	NodeAddr string            `json:"node_addr,omitempty"` // a node's sshd address

	// Cert is what was issued: "bot" (a bot identity, X.509), "user" (an
	// output identity: SSH user and X.509 client certificates over one
	// key) or "host" (an SSH host certificate).
	Cert       string    `json:"cert,omitempty"`
	Serial     string    `json:"serial,omitempty"`     // X.509 serial, hex
	SSHSerial  uint64    `json:"ssh_serial,omitempty"` // SSH certificate serial
	Principals []string  `json:"principals,omitempty"`
	TTL        int64     `json:"ttl,omitempty"` // seconds
	Expires    time.Time `json:"expires,omitzero"`

	// Code is why something was refused or locked: for join refusals one
	// of RefusalCodes.
	Code string `json:"code,omitempty"`
	// Detail is the authority's finer reason code, as in its log and
	// metrics (e.g. iam_sts_denied); it may gain values.
	Detail string `json:"detail,omitempty"`
	// Ref is the reference the refused client was given.
	Ref     string `json:"ref,omitempty"`
	Message string `json:"message,omitempty"` // free text; never a secret

	CA    string `json:"ca,omitempty"`    // user, host or db
	Phase string `json:"phase,omitempty"` // a CA rotation phase
	Count int64  `json:"count,omitempty"` // audit.refusals_dropped: how many
}

// Actor is the process at the other end of the admin socket, as the kernel
// tells it (SO_PEERCRED), and the socket it used.
type Actor struct {
	UID    int    `json:"uid"`
	User   string `json:"user,omitempty"` // name of UID, if it has one
	PID    int    `json:"pid,omitempty"`
	Socket string `json:"socket"`
}

// Event types.
const (
	BotJoined        = "bot.joined"
	JoinRefused      = "bot.join_refused"
	BotRenewed       = "bot.renewed"
	RenewRefused     = "bot.renew_refused"
	GenerationLocked = "bot.generation_locked"
	BotUnlocked      = "bot.unlocked"
	BotCreated       = "bot.created"
	BotUpdated       = "bot.updated"
	BotRemoved       = "bot.removed"
	CertIssued       = "cert.issued"
	RoleCreated      = "role.created"
	RoleUpdated      = "role.updated"
	RoleRemoved      = "role.removed"
	TokenCreated     = "token.created"
	TokenUpdated     = "token.updated"
	TokenRemoved     = "token.removed"
	NodeCreated      = "node.created"
	NodeUpdated      = "node.updated"
	NodeRemoved      = "node.removed"
	NodeJoined       = "node.joined"
	NodeGone         = "node.gone"
	LockCreated      = "lock.created"
	LockRemoved      = "lock.removed"
	RotationPhase    = "ca.rotation_phase"
	RefusalsDropped  = "audit.refusals_dropped"
)

// TypeInfo describes an event type: what it records and the fields it sets
// beyond id, time and type.
type TypeInfo struct {
	Type   string
	Doc    string
	Fields string
}

// Types is every event type, in the order the README lists them.
var Types = []TypeInfo{
	{BotJoined, "a bot joined (a token redeemed, or an IAM identity admitted) and got a bot identity", "addr, bot, instance, generation, method, token, aws_account, aws_arn, cert, serial, ttl, expires, retry"},
	{JoinRefused, "a join was refused", "addr, method, code, detail, ref, message; bot and token when known"},
	{BotRenewed, "a bot renewed its identity to the next generation", "addr, bot, instance, generation, cert, serial, ttl, expires, retry"},
	{RenewRefused, "a renewal was refused (removed, superseded or locked bot, bad request)", "addr, bot, code, detail, message"},
	{GenerationLocked, "a bot was locked: its identity was presented at a generation it is not at (a copy)", "addr, bot, generation (presented), code, message"},
	{BotUnlocked, "an administrator cleared a bot's generation lock", "actor, bot, message (the lock's reason)"},
	{BotCreated, "a bot was made", "actor, bot, roles, logins, token"},
	{BotUpdated, "a bot was given other roles, logins or token", "actor, bot, roles, logins, token"},
	{BotRemoved, "a bot was removed", "actor, bot"},
	{CertIssued, "certificates were issued: an output identity to a bot, or a host certificate", "cert (user or host), serial, ssh_serial, principals, ttl, expires; addr and bot (an output identity), addr and name (a joined node's host certificate), or actor (`midfs auth sign`)"},
	{RoleCreated, "a role was created", "actor, name"},
	{RoleUpdated, "a role was replaced", "actor, name"},
	{RoleRemoved, "a role was removed", "actor, name"},
	{TokenCreated, "a join token was created", "actor, name, bot (a bot's token) or labels (a node's), method, expires"},
	{TokenUpdated, "a join token was replaced", "actor, name, bot, method, expires"},
	{TokenRemoved, "a join token was removed", "actor, name"},
	{NodeCreated, "a node was added to the inventory", "actor, name, node_addr, labels"},
	{NodeUpdated, "a node of the inventory was changed: by an administrator (actor), or by its own heartbeat (addr) when it came back or its address or labels changed", "actor or addr, name, node_addr, labels"},
	{NodeRemoved, "a node was removed from the inventory", "actor, name"},
	{NodeJoined, "a node joined with a node token (its first heartbeat brings it into the inventory); its host certificates are cert.issued events", "addr, name, node_addr, labels, method, token, instance, generation, cert, serial, ttl, expires, retry"},
	{NodeGone, "a node stopped heartbeating and left the inventory (each replica that notices records it)", "name, node_addr"},
	{LockCreated, "a lock was put on a bot", "actor, name (the lock's ID), bot, message, expires"},
	{LockRemoved, "a lock was removed", "actor, name (the lock's ID)"},
	{RotationPhase, "a CA rotation moved to another phase: by an administrator (actor), or by the authority when an automatic rotation's phase fell due", "actor, ca, phase, message (the phase it left, and the mode: manual or auto)"},
	{RefusalsDropped, "refusals came faster than they could be recorded one by one; this many were counted, not recorded", "count"},
}

var known = func() map[string]bool {
	m := make(map[string]bool, len(Types))
	for _, t := range Types {
		m[t.Type] = true
	}
	return m
}()

// KnownType says whether t is one of Types.
func KnownType(t string) bool { return known[t] }

// ParseTypes reads a comma-separated --type value: every item must be a
// known type. An empty value selects every type.
func ParseTypes(s string) ([]string, error) {
	var out []string
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if !KnownType(t) {
			return nil, fmt.Errorf("unknown event type %q: want one or more of %s", t, typeList())
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

func typeList() string {
	names := make([]string, len(Types))
	for i, t := range Types {
		names[i] = t.Type
	}
	return strings.Join(names, ", ")
}

// ParseTime reads a --since or --until value: a duration back from now
// (90s, 15m, 1h30m, 7d), an RFC 3339 time (2026-12-01T08:00:00Z, or with
// a zone offset), or a date (2026-12-01, midnight UTC).
func ParseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, fmt.Errorf("empty time: give a duration back from now (like 1h or 7d) or a time (like 2026-12-01T08:00:00Z)")
	}
	if d, ok := parseAgo(s); ok {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("bad time %q: give a duration back from now (like 1h or 7d) or a time (like 2026-12-01T08:00:00Z or 2026-12-01)", s)
}

// parseAgo reads a non-negative duration, with "d" for days as well as
// Go's units.
func parseAgo(s string) (time.Duration, bool) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		if _, err := fmt.Sscanf(days, "%d", &n); err != nil || n < 0 || fmt.Sprint(n) != days || n > 100*365 {
			return 0, false
		}
		return time.Duration(n) * 24 * time.Hour, true
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, false
	}
	return d, true
}

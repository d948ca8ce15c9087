package auth

// Nodes that join (`midfs node start`): their join token, their
// renewable identity, their host certificates and their heartbeats.
//
// A node's renewable identity is a row of the bots table named
// "node:NAME", a name no bot can have (policy.CheckName refuses ':'). So a
// node joins, renews, retries a renewal whose answer it lost and is locked
// when its identity is copied by the very code that does it for bots
// (join.go), and every check of a bot identity (checkCurrent) holds for a
// node's too. What the node is to bots (address, labels, whether it
// heartbeats) is its row of the nodes table, with Agent set.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/midfs/midfs/auth/audit"
	"maps"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// nodeBotPrefix starts the bot name of a node's renewable identity.
const nodeBotPrefix = "node:"

// nodeBot is the bot name of node's renewable identity.
func nodeBot(node string) string { return nodeBotPrefix + node }

// isNodeBot says whether a bot row is a node's identity, not a bot.
func isNodeBot(bot string) bool { return strings.HasPrefix(bot, nodeBotPrefix) }

// Bounds of the heartbeat interval a node may ask for: often enough to
// test with, rarely enough that a dead node still leaves within minutes.
const (
	minHeartbeat = time.Second
	maxHeartbeat = 10 * time.Minute
)

// nodeStay is how long a heartbeat keeps a node in the inventory: one and a
// half of its intervals, so one heartbeat may come up to half an interval
// late. With the agents' node list polls (15 s), a node that stops leaves
// every bot's ssh_config within two intervals of 30 s (the node side's
// default).
func nodeStay(interval time.Duration) time.Duration { return interval + interval/2 }

// AddNodeToken makes a one-time token that joins one node, with the
// labels every node joining with it gets.
func (s *Server) AddNodeToken(ctx context.Context, spec admin.NodeTokenSpec) (*admin.NodeToken, error) {
	for k, v := range spec.Labels {
		if err := identity.CheckLabel(k, v); err != nil {
			return nil, admin.Errorf(admin.Invalid, "--labels: %w", err)
		}
	}
	if spec.TTL == 0 {
		spec.TTL = DefaultNodeTokenTTL
	}
	if spec.TTL < 0 || spec.TTL > maxJoinTTL {
		return nil, admin.Errorf(admin.Invalid, "bad token --ttl %s: give a duration between 1s and %s", spec.TTL, maxJoinTTL)
	}
	b := make([]byte, 32)
	rand.Read(b)
	secret := hex.EncodeToString(b)
	hash := hashToken(secret)
	now := s.cfg.Clock.Now()
	out := &admin.NodeToken{
		Token: secret, TokenName: "node-" + hex.EncodeToString(hash[:6]), Labels: spec.Labels,
		Expires: now.Add(spec.TTL).Truncate(time.Second), CAPin: s.CAPin(), AuthServer: s.advertise, ClusterName: s.cluster,
	}
	err := s.st.Update(ctx, func(tx store.Tx) error {
		err := tx.PutToken(ctx, &store.Token{
			Name: out.TokenName, Role: policy.TokenRoleNode, Labels: spec.Labels, JoinMethod: wire.JoinToken,
			Expires: out.Expires, SecretHash: hash, Created: now,
		}, false)
		if err != nil {
			return err
		}
		return s.record(ctx, tx, audit.Event{Type: audit.TokenCreated, Name: out.TokenName, Method: wire.JoinToken,
			Labels: spec.Labels, Expires: out.Expires.UTC()})
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("node token added", "token", out.TokenName, "labels", identity.FormatLabels(spec.Labels), "expires", out.Expires.UTC().Format(time.RFC3339))
	return out, nil
}

// DefaultNodeTokenTTL is how long a node token waits to be used, as
// Teleport's `tctl tokens add` has it.
const DefaultNodeTokenTTL = 30 * time.Minute

// tokenTarget is the bot row a join with token t makes or re-joins, after
// checking that the request (node, unless a bot joins) fits the token: a
// node token joins a node that names itself, a bot token a bot. The token
// was found by its secret, or (iam) the caller proved an AWS identity it
// allows, so the refusals may say why.
func tokenTarget(t *store.Token, node *wire.NodeInfo) (string, error) {
	wrong := func(why string) error {
		return &refusal{Code: "token_role", Reason: fmt.Sprintf("token %s: %s", t.Name, why), Public: why, Status: 400}
	}
	if t.Role != policy.TokenRoleNode {
		if node == nil {
			return t.BotName, nil
		}
		if t.JoinMethod == wire.JoinIAM {
			return "", wrong(fmt.Sprintf("token %s joins a bot (`midfs mount`), not a node; a node joins with an iam token of spec.roles: [Node]", t.Name))
		}
		return "", wrong("this token joins a bot (`midfs mount`), not a node; make a node token with `midfs tokens add --type=node`")
	}
	if node == nil {
		if t.JoinMethod == wire.JoinIAM {
			return "", wrong(fmt.Sprintf("token %s joins nodes (`midfs node start`), not a bot; a bot joins with an iam token of spec.roles: [Bot] that names it", t.Name))
		}
		return "", wrong("this token joins a node (`midfs node start`), not a bot")
	}
	n := nodeOf(node, t.Labels)
	if err := identity.CheckNode(n); err != nil {
		return "", &refusal{Code: "bad_request", Reason: err.Error(), Public: err.Error(), Status: 400}
	}
	return nodeBot(n.Name), nil
}

// nodeOf is the node as bots see it: its own labels, overridden by those
// of the token it joined with.
func nodeOf(info *wire.NodeInfo, tokenLabels map[string]string) identity.Node {
	labels := maps.Clone(info.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, tokenLabels)
	return identity.Node{Name: info.Name, Addr: info.Addr, Labels: labels}
}

// claimNodeName refuses a join under a name that another node holds: one
// typed by an administrator, or one that still heartbeats (by the store, or
// by this authority's memory, a second ahead of it). Taking it would send
// its bots to the new node, with a host certificate for its name.
func (s *Server) claimNodeName(ctx context.Context, tx store.Tx, name string, now time.Time) error {
	n, err := tx.Node(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	taken := func(why string) error {
		return &refusal{Code: "node_name_taken", Reason: "node " + name + ": " + why, Public: why, Status: 409}
	}
	if !n.Agent {
		return taken(fmt.Sprintf("node %s is in the inventory, typed by an administrator; to let it join, remove it first with `midfs nodes rm %s`", name, name))
	}
	until := n.Expires
	if t, ok := s.inv.stay(name); ok && t.After(until) {
		until = t
	}
	if until.After(now) {
		return taken(fmt.Sprintf("node %s is online under an earlier join (it heartbeats until %s); stop that node agent, or run `midfs nodes rm %s`, then join again",
			name, until.UTC().Format(time.RFC3339), name))
	}
	return nil
}

// claimNode, at a node's first join, claims its name (claimNodeName) and
// makes the row of its identity, bot name, unless b, read in tx, is it.
func (s *Server) claimNode(ctx context.Context, tx store.Tx, b *store.Bot, name string, now time.Time) (*store.Bot, error) {
	if err := s.claimNodeName(ctx, tx, strings.TrimPrefix(name, nodeBotPrefix), now); err != nil {
		return nil, err
	}
	if b != nil {
		return b, nil
	}
	b = &store.Bot{Name: name, Created: now}
	return b, tx.AddBot(ctx, b)
}

// joinedNode stores what a node that joined said of itself, not yet in
// the inventory: it enters with its first heartbeat, once its sshd can
// present a host certificate.
func joinedNode(ctx context.Context, tx store.Tx, info *wire.NodeInfo, tokenLabels map[string]string) error {
	return tx.PutNode(ctx, store.Node{Node: nodeOf(info, tokenLabels), Agent: true, TokenLabels: tokenLabels})
}

// checkNodeCert refuses a bot identity where a node's is needed.
func checkNodeCert(bc *botCert) error {
	if bc.Node == "" {
		return &refusal{Code: "not_a_node", Reason: fmt.Sprintf("bot %s called a node's API", bc.Bot), Public: "this call needs a node's identity (midfs node start)", Status: 403}
	}
	return nil
}

// checkBotOnly refuses a node's identity where a bot's is needed.
func checkBotOnly(bc *botCert) error {
	if bc.Node != "" {
		return &refusal{Code: "node_identity", Reason: fmt.Sprintf("node %s called a bot's API", bc.Node), Public: "a node's identity gets host certificates, not a bot's credentials or node list", Status: 403}
	}
	return nil
}

// hostCert signs the node's SSH host key for NAME.CLUSTER and NAME.
func (s *Server) hostCert(ctx context.Context, bc *botCert, req *wire.HostCertRequest) (*wire.HostCerts, error) {
	if err := checkNodeCert(bc); err != nil {
		return nil, err
	}
	bad := func(msg string) error { return &refusal{Code: "bad_request", Reason: msg, Public: msg, Status: 400} }
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(req.PublicKey))
	if err != nil {
		return nil, bad("public_key is not an SSH public key in authorized_keys form")
	}
	if _, isCert := pub.(*ssh.Certificate); isCert {
		return nil, bad("public_key is a certificate; give the plain host public key")
	}
	if req.TTLSeconds < 0 {
		return nil, bad("ttl_seconds must not be negative")
	}
	ttl := s.cfg.DefaultTTL
	if req.TTLSeconds > 0 {
		ttl = min(time.Duration(min(req.TTLSeconds, int64(wire.MaxTTL/time.Second)))*time.Second, s.cfg.MaxTTL)
	}
	if _, err := s.checkCurrent(ctx, bc); err != nil {
		return nil, err
	}
	cert, err := s.signHostKey(pub, []string{bc.Node + "." + s.cluster, bc.Node}, ttl)
	if err != nil {
		return nil, fmt.Errorf("sign host certificate: %w", err)
	}
	ev := hostCertEvent(cert)
	ev.Name = bc.Node
	if err := s.recordAlone(ctx, ev); err != nil {
		return nil, err
	}
	return &wire.HostCerts{
		ClusterName: s.cluster,
		HostCert:    string(ssh.MarshalAuthorizedKey(cert)),
		UserCAs:     s.caSet().userCALines(), // both, during a rotation of the user CA
	}, nil
}

// heartbeat keeps a node in the inventory for nodeStay of its interval and
// takes its address and labels; a node that was out of the inventory (or
// changed) moves its version, so that every bot's list follows.
func (s *Server) heartbeat(ctx context.Context, bc *botCert, hb *wire.Heartbeat) (*wire.HeartbeatAnswer, error) {
	if err := checkNodeCert(bc); err != nil {
		return nil, err
	}
	interval := time.Duration(hb.IntervalSeconds) * time.Second
	if interval < minHeartbeat || interval > maxHeartbeat {
		msg := fmt.Sprintf("interval_seconds %d: give %d to %d", hb.IntervalSeconds, int(minHeartbeat/time.Second), int(maxHeartbeat/time.Second))
		return nil, &refusal{Code: "bad_request", Reason: msg, Public: msg, Status: 400}
	}
	if _, err := s.checkCurrent(ctx, bc); err != nil {
		return nil, err
	}
	now := s.cfg.Clock.Now()
	expires := now.Add(nodeStay(interval))
	row, err := s.st.Node(ctx, bc.Node)
	if err != nil || !row.Agent {
		return nil, nodeMissing(bc.Node, err)
	}
	node := nodeOf(&wire.NodeInfo{Name: bc.Node, Addr: hb.Addr, Labels: hb.Labels}, row.TokenLabels)
	if err := identity.CheckNode(node); err != nil {
		return nil, &refusal{Code: "bad_request", Reason: err.Error(), Public: err.Error(), Status: 400}
	}
	// A node that stays, unchanged, only extends its stay: in memory at
	// once, in the store within a second (flushStays), with no version
	// moved. Only a node that comes in, or changes, moves what bots see
	// (and, through the store's inventory topic, every replica's copy).
	until, live := s.inv.stay(bc.Node)
	stays := (live && until.After(now)) || row.Expires.After(now)
	if stays && row.Addr == node.Addr && maps.Equal(row.Labels, node.Labels) {
		s.inv.extend(bc.Node, expires)
		return &wire.HeartbeatAnswer{Labels: node.Labels, Expires: expires, CAs: &s.caSet().wire}, nil
	}
	err = s.st.Update(ctx, func(tx store.Tx) error {
		row, err := tx.Node(ctx, bc.Node)
		if err != nil || !row.Agent {
			return nodeMissing(bc.Node, err)
		}
		node = nodeOf(&wire.NodeInfo{Name: bc.Node, Addr: hb.Addr, Labels: hb.Labels}, row.TokenLabels)
		if err := identity.CheckNode(node); err != nil {
			return &refusal{Code: "bad_request", Reason: err.Error(), Public: err.Error(), Status: 400}
		}
		row.Node, row.Expires = node, expires
		if err := tx.PutNode(ctx, *row); err != nil {
			return err
		}
		return s.record(ctx, tx, audit.Event{Type: audit.NodeUpdated, Name: node.Name, NodeAddr: node.Addr, Labels: node.Labels})
	})
	if err != nil {
		return nil, err
	}
	s.inv.heartbeat(bc.Node, expires)
	s.inv.changed()
	s.log.Info("node in the inventory", "node", node.Name, "addr", node.Addr, "labels", identity.FormatLabels(node.Labels), "until", expires.UTC().Format(time.RFC3339))
	return &wire.HeartbeatAnswer{Labels: node.Labels, Expires: expires, CAs: &s.caSet().wire}, nil
}

// nodeMissing is the refusal of a heartbeat of a node that is not in the
// inventory as a joined node (removed by an administrator, or typed by one
// after it was removed); err is the store's.
func nodeMissing(node string, err error) error {
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return &refusal{Code: "node_missing", Reason: fmt.Sprintf("node %s heartbeats but is not in the inventory as a joined node", node),
		Public: fmt.Sprintf("node %s was removed from the inventory (midfs nodes rm); join it again with a new token", node), Status: 403}
}

// stayFlush is how often the stays that heartbeats extended are written to
// the store: one commit a second, for any number of nodes, instead of one
// per heartbeat. What a crash loses is a second of extensions, which the
// next heartbeats make up; other replicas see a stay a second late, well
// within the half interval a stay has to spare.
const stayFlush = time.Second

// flushStays writes the extended stays to the store until stop is closed,
// and once more then.
func (s *Server) flushStays(stop <-chan struct{}) {
	t := time.NewTicker(stayFlush)
	defer t.Stop()
	for {
		select {
		case <-stop:
			s.flushStaysOnce()
			return
		case <-t.C:
			s.flushStaysOnce()
		}
	}
}

func (s *Server) flushStaysOnce() {
	pending := s.inv.takeExtended()
	if len(pending) == 0 {
		return
	}
	err := s.st.Update(context.Background(), func(tx store.Tx) error {
		for name, until := range pending {
			if _, err := tx.ExtendNode(context.Background(), name, until); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Warn("cannot write the nodes' heartbeats to the state; trying again", "err", err, "nodes", len(pending))
		s.inv.requeue(pending)
	}
}

// removeJoinedNode drops what a joined node holds besides its inventory
// row (which the caller removes in the same transaction): its identity,
// so that it can neither heartbeat back nor renew.
func removeJoinedNode(ctx context.Context, tx store.Tx, name string) error {
	_, err := tx.Remove(ctx, policy.KindBot, nodeBot(name))
	return err
}

package auth

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// Status describes the running authority.
func (s *Server) Status(ctx context.Context) (*admin.Status, error) {
	return &admin.Status{ClusterName: s.cluster, Version: s.cfg.Version, CAPin: s.CAPin(), Addr: s.Addr(), AdvertiseAddr: s.advertise,
		CAs: s.caResources()}, nil
}

// maxJoinTTL bounds how long a one-time token may wait to be used.
const maxJoinTTL = 7 * 24 * time.Hour

func checkLogins(logins []string) error {
	for _, l := range logins {
		if err := identity.CheckLogin(l); err != nil {
			return admin.Errorf(admin.Invalid, "--logins: %w", err)
		}
	}
	return nil
}

// AddBot makes a bot (in one transaction with its token). Unknown roles,
// an existing bot (without Replace) or an unsuitable delegated token are
// errors, and then nothing is stored.
func (s *Server) AddBot(ctx context.Context, spec admin.BotSpec) (*admin.BotToken, error) {
	if err := policy.CheckName("bot", spec.Name); err != nil {
		return nil, admin.Mark(admin.Invalid, err)
	}
	if len(spec.Roles) == 0 {
		return nil, admin.Errorf(admin.Invalid, "bot %s: give at least one role with --roles (for example --roles=access)", spec.Name)
	}
	if err := checkLogins(spec.Logins); err != nil {
		return nil, err
	}
	if spec.TTL == 0 {
		spec.TTL = DefaultJoinTTL
	}
	if spec.TTL < 0 || spec.TTL > maxJoinTTL {
		return nil, admin.Errorf(admin.Invalid, "bad token --ttl %s: give a duration between 1s and %s", spec.TTL, maxJoinTTL)
	}
	now := s.cfg.Clock.Now()
	out := &admin.BotToken{Bot: spec.Name, CAPin: s.CAPin(), AuthServer: s.advertise, ClusterName: s.cluster}
	var secret string
	var rolesChanged bool // of an existing bot: the nodes it may see change
	defer func() {
		if rolesChanged {
			s.inv.changed()
		}
	}()
	if spec.TokenName == "" {
		b := make([]byte, 32)
		rand.Read(b)
		secret = hex.EncodeToString(b)
		out.Token, out.JoinMethod, out.Expires = secret, wire.JoinToken, now.Add(spec.TTL).Truncate(time.Second)
		out.TokenName = oneTimeTokenName(spec.Name, hashToken(secret))
	}
	err := s.st.Update(ctx, func(tx store.Tx) error {
		_, err := tx.Roles(ctx, spec.Roles)
		if errors.Is(err, store.ErrNotFound) {
			return admin.Errorf(admin.Invalid, "%w; see `midfs get roles`", err)
		}
		if err != nil {
			return err
		}
		old, err := tx.Bot(ctx, spec.Name)
		switch {
		case err == nil && !spec.Replace:
			return admin.Errorf(admin.Conflict, "bot %s already exists (generation %d); remove it with `midfs bots rm %s` first", old.Name, old.Generation, old.Name)
		case err != nil && !errors.Is(err, store.ErrNotFound):
			return err
		}
		if spec.TokenName != "" {
			t, err := tx.Token(ctx, spec.TokenName)
			if errors.Is(err, store.ErrNotFound) {
				return admin.Errorf(admin.Invalid, "token %q not found: create it first with `midfs create -f TOKEN.yaml`", spec.TokenName)
			}
			if err != nil {
				return err
			}
			if t.JoinMethod == wire.JoinToken {
				return admin.Errorf(admin.Invalid, "token %s is a one-time token; --token takes a delegated (join_method: iam) token", t.Name)
			}
			if t.Role == policy.TokenRoleNode {
				return admin.Errorf(admin.Invalid, "token %s joins nodes (spec.roles: [Node]); a bot's --token takes a token with roles [Bot] and bot_name %s", t.Name, spec.Name)
			}
			if t.BotName != spec.Name {
				return admin.Errorf(admin.Invalid, "token %s is for bot %q, not %q; set spec.bot_name in the token", t.Name, t.BotName, spec.Name)
			}
			out.TokenName, out.JoinMethod = t.Name, t.JoinMethod
			out.Expires = t.Expires
		}
		if old == nil {
			// A bot removed less than a day ago stays locked, so that
			// the certificates it still holds are refused by nodes; a
			// new bot of its name would be refused with them.
			if err := s.checkLocks(ctx, tx, spec.Name); err != nil {
				return admin.Errorf(admin.Conflict, "cannot add bot %s: %w", spec.Name, err)
			}
		}
		rolesChanged = old != nil && !slices.Equal(old.Roles, spec.Roles)
		if old == nil {
			err = tx.AddBot(ctx, &store.Bot{Name: spec.Name, Roles: spec.Roles, Logins: spec.Logins, Instance: newInstanceID(), TokenName: spec.TokenName, Created: now})
		} else {
			err = tx.SetBotGrants(ctx, spec.Name, spec.Roles, spec.Logins, spec.TokenName)
		}
		if err != nil {
			return err
		}
		if err := s.record(ctx, tx, botEvent(old == nil, spec)); err != nil {
			return err
		}
		if secret == "" {
			return nil
		}
		// A re-issued token replaces the bot's unused ones.
		if err := tx.RemoveBotTokens(ctx, spec.Name, wire.JoinToken, true); err != nil {
			return err
		}
		err = tx.PutToken(ctx, &store.Token{
			Name: out.TokenName, BotName: spec.Name, JoinMethod: wire.JoinToken, Expires: out.Expires,
			SecretHash: hashToken(secret),
			Created:    now,
		}, false)
		if err != nil {
			return err
		}
		return s.record(ctx, tx, audit.Event{Type: audit.TokenCreated, Name: out.TokenName, Bot: spec.Name, Method: wire.JoinToken, Expires: out.Expires.UTC()})
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("bot added", "bot", spec.Name, "roles", spec.Roles, "logins", spec.Logins, "token", out.TokenName, "method", out.JoinMethod, "replace", spec.Replace)
	return out, nil
}

// oneTimeTokenName names a one-time token without revealing it: the bot
// and a prefix of the token's hash.
func oneTimeTokenName(bot string, hash []byte) string {
	return bot + "-" + hex.EncodeToString(hash[:6])
}

// RemoveBot deletes a bot and its one-time tokens: every identity it holds
// is refused from then on, and its tokens no longer join. It also locks
// the bot until every certificate it may hold has expired, so that
// enforcing nodes, which never ask the authority about a login, refuse
// them too.
func (s *Server) RemoveBot(ctx context.Context, name string) error {
	if node, ok := strings.CutPrefix(name, nodeBotPrefix); ok {
		return admin.Errorf(admin.NotFound, "%s is the identity of node %s, not a bot: remove the node with `midfs nodes rm %s`", name, node, node)
	}
	now := s.cfg.Clock.Now().Truncate(time.Second)
	lock := wire.Lock{ID: newLockID(), Bot: name, Message: "bot removed", Created: now, Expires: now.Add(removedBotLockTTL)}
	err := s.st.Update(ctx, func(tx store.Tx) error {
		found, err := tx.Remove(ctx, policy.KindBot, name)
		if err != nil {
			return err
		}
		if !found {
			return admin.Errorf(admin.NotFound, "bot %q not found; see `midfs bots ls`", name)
		}
		if err := s.record(ctx, tx, audit.Event{Type: audit.BotRemoved, Bot: name}); err != nil {
			return err
		}
		if err := tx.RemoveBotTokens(ctx, name, wire.JoinToken, false); err != nil {
			return err
		}
		return s.putLock(ctx, tx, lock)
	})
	if err == nil {
		s.locks.changed()
		s.log.Info("bot removed and locked until its certificates expire", "bot", name, "lock", lock.ID, "expires", lock.Expires)
	}
	return err
}

// UnlockBot clears a lock. The bot's current holder continues at the
// stored generation, as does the holder of the key of the last renewal
// when it retries that renewal (its answer was lost); a copied identity at
// another generation locks it again.
func (s *Server) UnlockBot(ctx context.Context, name string) error {
	var was string
	err := s.st.Update(ctx, func(tx store.Tx) error {
		b, err := tx.Bot(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			return admin.Errorf(admin.NotFound, "%w; see `midfs bots ls`", err)
		}
		if err != nil {
			return err
		}
		was = b.Locked
		if was == "" {
			return admin.Errorf(admin.Conflict, "bot %s is not locked", name)
		}
		if err := s.record(ctx, tx, audit.Event{Type: audit.BotUnlocked, Bot: name, Message: was}); err != nil {
			return err
		}
		return tx.SetLocked(ctx, name, "")
	})
	if err == nil {
		s.log.Info("bot unlocked", "bot", name, "was", was)
	}
	return err
}

// AddNode adds or updates a node in the inventory. Every field reaches the
// ssh_config of bots, so a node that fails identity.CheckNode is refused.
func (s *Server) AddNode(ctx context.Context, n identity.Node) error {
	if err := identity.CheckNode(n); err != nil {
		return admin.Mark(admin.Invalid, err)
	}
	defer s.inv.changed()
	return s.st.Update(ctx, func(tx store.Tx) error {
		existed, err := putTypedNode(ctx, tx, n)
		if err != nil {
			return err
		}
		return s.record(ctx, tx, nodeEvent(existed, n))
	})
}

// putTypedNode stores a node typed by an administrator, unless a node of
// that name joined by itself: its row says what its heartbeats said, and
// the admin's would be overwritten by the next one. It says whether a node
// of that name was there before.
func putTypedNode(ctx context.Context, tx store.Tx, n identity.Node) (existed bool, err error) {
	old, err := tx.Node(ctx, n.Name)
	if err == nil && old.Agent {
		return true, admin.Errorf(admin.Conflict, "node %s joined with `midfs node start` and registers itself; to type it by hand, remove it first with `midfs nodes rm %s`", n.Name, n.Name)
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return false, err
	}
	return err == nil, tx.PutNode(ctx, store.Node{Node: n})
}

// CreateYAML parses resources (see ParseResources) and stores them all in
// one transaction. Existing resources are errors unless force is set.
// It returns one line per resource, like "role/dev created".
func (s *Server) CreateYAML(ctx context.Context, data []byte, force bool) ([]string, error) {
	res, err := policy.ParseResources(data)
	if err != nil {
		return nil, admin.Mark(admin.Invalid, err)
	}
	return s.Create(ctx, res, force)
}

// Create stores parsed resources in one transaction.
func (s *Server) Create(ctx context.Context, res *policy.Resources, force bool) ([]string, error) {
	now := s.cfg.Clock.Now()
	var done []string
	if len(res.Roles) > 0 || len(res.Nodes) > 0 {
		defer s.inv.changed()
	}
	err := s.st.Update(ctx, func(tx store.Tx) error {
		done = nil // fn may run again (store.Store)
		// put stores one resource with save, refusing to replace one
		// that exists unless force is set.
		put := func(kind, name string, save func() error) error {
			existed, err := tx.Exists(ctx, kind, name)
			if err != nil {
				return err
			}
			if existed && !force {
				return admin.Errorf(admin.Conflict, "%s %s already exists; use --force to replace it", kind, name)
			}
			if err := save(); err != nil {
				return err
			}
			verb := "created"
			if existed {
				verb = "updated"
			}
			done = append(done, kind+"/"+name+" "+verb)
			return s.record(ctx, tx, audit.Event{Type: kind + "." + verb, Name: name})
		}
		for _, r := range res.Roles {
			if err := put(policy.KindRole, r.Metadata.Name, func() error { return tx.PutRole(ctx, r) }); err != nil {
				return err
			}
		}
		for _, t := range res.Tokens {
			row := &store.Token{BotName: t.Spec.BotName, Role: t.Spec.Roles[0], Labels: t.Spec.Labels, JoinMethod: t.Spec.JoinMethod, Allow: t.Spec.Allow, Created: now}
			if t.Metadata.Expires != nil {
				row.Expires = t.Metadata.Expires.Truncate(time.Second)
				if !row.Expires.After(now) {
					return admin.Errorf(admin.Invalid, "token %s: metadata.expires %s is in the past", t.DisplayName(), row.Expires.UTC().Format(time.RFC3339))
				}
			}
			if t.Spec.JoinMethod == wire.JoinToken {
				row.SecretHash = hashToken(t.Metadata.Name)
				row.Name = oneTimeTokenName(t.Spec.BotName, row.SecretHash)
				if row.Expires.IsZero() {
					row.Expires = now.Add(DefaultJoinTTL).Truncate(time.Second)
				}
			} else {
				row.Name = t.Metadata.Name
			}
			err := put(policy.KindToken, row.Name, func() error {
				err := tx.PutToken(ctx, row, true)
				if errors.Is(err, store.ErrConflict) {
					return admin.Errorf(admin.Conflict, "token %s: this secret is already in use", row.Name)
				}
				return err
			})
			if err != nil {
				return err
			}
		}
		for _, n := range res.Nodes {
			node := identity.Node{Name: n.Metadata.Name, Addr: n.Spec.Addr, Labels: n.Metadata.Labels}
			if err := identity.CheckNode(node); err != nil {
				return admin.Mark(admin.Invalid, err)
			}
			if err := put(policy.KindNode, node.Name, func() error {
				_, err := putTypedNode(ctx, tx, node)
				return err
			}); err != nil {
				return err
			}
		}
		if len(res.Bots) > 0 {
			return admin.Errorf(admin.Invalid, "bots are made with `midfs bots add`, not from YAML")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("resources stored", "resources", done)
	return done, nil
}

// Get lists resources of a kind, or the one named (an error if missing).
func (s *Server) Get(ctx context.Context, kind, name string) (*policy.Resources, error) {
	kind, err := policy.NormalizeKind(kind)
	if err != nil {
		return nil, admin.Mark(admin.Invalid, err)
	}
	res := &policy.Resources{}
	switch kind {
	case policy.KindRole:
		roles, err := s.st.AllRoles(ctx)
		if err != nil {
			return nil, err
		}
		for _, r := range roles {
			if name == "" || r.Metadata.Name == name {
				res.Roles = append(res.Roles, r)
			}
		}
	case policy.KindToken:
		tokens, err := s.st.Tokens(ctx)
		if err != nil {
			return nil, err
		}
		for _, t := range tokens {
			if name == "" || t.Name == name {
				res.Tokens = append(res.Tokens, tokenResource(t))
			}
		}
	case policy.KindBot:
		bots, err := s.st.Bots(ctx)
		if err != nil {
			return nil, err
		}
		for _, b := range bots {
			if (name == "" || b.Name == name) && !isNodeBot(b.Name) {
				res.Bots = append(res.Bots, botResource(b))
			}
		}
	case policy.KindLock:
		locks, err := s.st.Locks(ctx, "")
		if err != nil {
			return nil, err
		}
		res.Locks = lockResources(locks, name)
	case policy.KindCA:
		for _, ca := range s.caResources() {
			if name == "" || ca.Metadata.Name == name {
				res.CAs = append(res.CAs, ca)
			}
		}
	case policy.KindNode:
		nodes, err := s.st.Nodes(ctx)
		if err != nil {
			return nil, err
		}
		s.inv.expire(ctx, s.cfg.Clock.Now())
		for _, n := range nodes {
			if name == "" || n.Name == name {
				res.Nodes = append(res.Nodes, s.nodeResource(n))
			}
		}
	}
	if name != "" && res.Len() == 0 {
		return nil, admin.Errorf(admin.NotFound, "%s %q not found; see `midfs get %ss`", kind, name, kind)
	}
	return res, nil
}

// nodeResource is a node as `get nodes` shows it: typed by an
// administrator, or joined, and then whether it heartbeats.
func (s *Server) nodeResource(n store.Node) policy.NodeResource {
	r := policy.NodeResource{Kind: policy.KindNode, Version: policy.NodeVersion,
		Metadata: policy.Metadata{Name: n.Name, Labels: n.Labels}, Spec: policy.NodeSpec{Addr: n.Addr},
		Status: &policy.NodeStatus{Enforcing: n.Agent, Online: !n.Agent}}
	if n.Agent {
		until, live := s.inv.stay(n.Name)
		if !live {
			until = n.Expires
		}
		r.Status.Online = live
		if !until.IsZero() {
			until = until.UTC()
			r.Status.Expires = &until
		}
	}
	return r
}

func tokenResource(t *store.Token) policy.TokenResource {
	role := t.Role
	if role == "" {
		role = policy.TokenRoleBot
	}
	r := policy.TokenResource{Kind: policy.KindToken, Version: policy.TokenVersion, Metadata: policy.Metadata{Name: t.Name},
		Spec: policy.TokenSpec{Roles: []string{role}, BotName: t.BotName, Labels: t.Labels, JoinMethod: t.JoinMethod, Allow: t.Allow}}
	if !t.Expires.IsZero() {
		e := t.Expires.UTC()
		r.Metadata.Expires = &e
	}
	if t.JoinMethod == wire.JoinToken {
		r.Status = &policy.TokenState{Used: !t.Used.IsZero()}
		if !t.Used.IsZero() {
			u := t.Used.UTC()
			r.Status.UsedAt = &u
		}
	}
	return r
}

func botResource(b *store.Bot) policy.BotResource {
	r := policy.BotResource{Kind: policy.KindBot, Version: policy.BotVersion, Metadata: policy.Metadata{Name: b.Name},
		Spec:   policy.BotSpecV1{Roles: b.Roles},
		Status: policy.BotStatus{Generation: b.Generation, Locked: b.Locked, Token: b.TokenName, Created: b.Created.UTC()}}
	if len(b.Logins) > 0 {
		r.Spec.Traits = []policy.Trait{{Name: "logins", Values: b.Logins}}
	}
	return r
}

// Bots lists every bot.
func (s *Server) Bots(ctx context.Context) ([]policy.BotResource, error) {
	res, err := s.Get(ctx, policy.KindBot, "")
	if err != nil {
		return nil, err
	}
	return res.Bots, nil
}

// Remove deletes a role, token, node, lock or bot. A role that bots use is kept:
// removing it would silently change what they may do.
func (s *Server) Remove(ctx context.Context, kind, name string) error {
	kind, err := policy.NormalizeKind(kind)
	if err != nil {
		return admin.Mark(admin.Invalid, err)
	}
	if kind == policy.KindBot {
		return s.RemoveBot(ctx, name)
	}
	if kind == policy.KindCA {
		return admin.Errorf(admin.Invalid, "a CA is not removed but replaced: `midfs auth rotate --type=%s`", name)
	}
	if kind == policy.KindRole || kind == policy.KindNode {
		defer s.inv.changed()
	}
	joined := false
	if kind == policy.KindLock {
		defer s.locks.changed()
	}
	err = s.st.Update(ctx, func(tx store.Tx) error {
		if kind == policy.KindNode {
			n, err := tx.Node(ctx, name)
			if err == nil && n.Agent {
				joined = true
				if err := removeJoinedNode(ctx, tx, name); err != nil {
					return err
				}
			}
		}
		if kind == policy.KindRole {
			bots, err := tx.Bots(ctx)
			if err != nil {
				return err
			}
			var users []string
			for _, b := range bots {
				if slices.Contains(b.Roles, name) {
					users = append(users, b.Name)
				}
			}
			if len(users) > 0 {
				return admin.Errorf(admin.Conflict, "role %s is used by bots %s; remove them or give them other roles first", name, strings.Join(users, ", "))
			}
		}
		found, err := tx.Remove(ctx, kind, name)
		if err != nil {
			return err
		}
		if !found {
			return admin.Errorf(admin.NotFound, "%s %q not found; see `midfs get %ss`", kind, name, kind)
		}
		return s.record(ctx, tx, audit.Event{Type: kind + ".removed", Name: name})
	})
	if err == nil {
		if joined {
			s.inv.forget(name)
		}
		s.log.Info("resource removed", "kind", kind, "name", name)
	}
	return err
}

// Export prints a CA in the form its consumers read: during a rotation,
// both CAs of the kind, oldest first, as both are trusted.
func (s *Server) Export(ctx context.Context, typ string) (string, error) {
	cas := s.caSet().identity()
	switch typ {
	case admin.ExportUser:
		var b strings.Builder
		for _, ca := range cas.User {
			b.Write(ssh.MarshalAuthorizedKey(ca.SSH))
		}
		return b.String(), nil
	case admin.ExportHost:
		b, err := identity.KnownHosts(s.cluster, cas.Host)
		return string(b), err
	case admin.ExportTLSUser:
		return string(identity.CertsPEM(cas.User)), nil
	case admin.ExportTLSHost:
		return string(identity.CertsPEM(cas.Host)), nil
	case admin.ExportDB:
		return string(identity.CertsPEM(cas.Database)), nil
	}
	return "", admin.Errorf(admin.Invalid, "unknown export type %q: want user, host, tls-user, tls-host or db", typ)
}

// DefaultHostCertTTL is the validity of `auth sign` host certificates.
const DefaultHostCertTTL = 8760 * time.Hour

// SignHost has the host CA sign an SSH host public key (authorized_keys
// form) for the given host names; it returns the certificate line.
func (s *Server) SignHost(ctx context.Context, publicKey string, hosts []string, ttl time.Duration) (string, error) {
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(publicKey))
	if err != nil {
		return "", admin.Errorf(admin.Invalid, "bad host public key: %v", err)
	}
	if _, isCert := pub.(*ssh.Certificate); isCert {
		return "", admin.Errorf(admin.Invalid, "bad host public key: it is a certificate; give the plain public key")
	}
	if len(hosts) == 0 {
		return "", admin.Errorf(admin.Invalid, "give the host names the certificate is for with --host=NAME[,NAME]")
	}
	for _, h := range hosts {
		if h == "" || strings.ContainsAny(h, " \t\n,*?") {
			return "", admin.Errorf(admin.Invalid, "bad host name %q: give plain names without spaces, ',' or wildcards, as in --host=node1.example.com,node1", h)
		}
	}
	if ttl == 0 {
		ttl = DefaultHostCertTTL
	}
	if ttl < 0 || ttl > caValidity {
		return "", admin.Errorf(admin.Invalid, "bad --ttl %s: give a positive duration up to %s", ttl, caValidity)
	}
	cert, err := s.signHostKey(pub, hosts, ttl)
	if err != nil {
		return "", err
	}
	if err := s.recordAlone(ctx, hostCertEvent(cert)); err != nil {
		return "", err
	}
	s.log.Info("host certificate signed", "hosts", hosts, "ttl", ttl.String())
	return string(ssh.MarshalAuthorizedKey(cert)), nil
}

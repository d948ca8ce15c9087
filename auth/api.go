package auth

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/wire"
)

// routes is the HTTPS API of wire.Path*.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+wire.PathCA, s.handleCA)
	// Everything but the CAs needs the database: without it a replica
	// answers 503 rather than from what it holds in memory.
	mux.HandleFunc("POST "+wire.PathJoin, s.needsDB(s.handleJoin))
	mux.HandleFunc("POST "+wire.PathRenew, s.needsDB(s.handleRenew))
	mux.HandleFunc("POST "+wire.PathCerts, s.needsDB(s.handleCerts))
	mux.HandleFunc("GET "+wire.PathNodes, s.needsDB(s.handleNodes))
	mux.HandleFunc("POST "+wire.PathHostCert, s.needsDB(s.handleHostCert))
	mux.HandleFunc("POST "+wire.PathHeartbeat, s.needsDB(s.handleHeartbeat))
	mux.HandleFunc("GET "+wire.PathLocks, s.needsDB(s.handleLocks))
	s.iamRoutes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// %q: the path is decoded, so it may hold a line break.
		wire.WriteError(w, http.StatusNotFound, fmt.Sprintf("no API at %s %q", r.Method, r.URL.Path))
	})
	return wire.Recover(s.log, withSourceAddr(mux))
}

func (s *Server) handleCA(w http.ResponseWriter, r *http.Request) {
	var hostCAs [][]byte
	for _, a := range s.caSet().kinds[caHost].all {
		hostCAs = append(hostCAs, a.cert.Raw)
	}
	wire.WriteJSON(w, wire.CAResponse{ClusterName: s.cluster, HostCAs: hostCAs})
}

func (s *Server) handleJoin(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req wire.JoinRequest
	if err := decodeRequest(w, r, &req); err != nil {
		s.refuseJoin(w, r, wire.JoinToken, err)
		return
	}
	id, err := s.joinToken(r.Context(), &req)
	if err != nil {
		s.refuseJoin(w, r, wire.JoinToken, err)
		return
	}
	s.metrics.join(wire.JoinToken, "ok")
	s.metrics.issued("join", time.Since(start))
	s.log.Info("bot joined", "bot", id.BotName, "method", wire.JoinToken, "generation", id.Generation, "remote", r.RemoteAddr)
	wire.WriteJSON(w, id)
}

// refuseJoin answers a refused or failed join of the given method: the
// authority logs the real reason and counts it; the client gets one line
// (for token problems, the same generic line whatever the reason). The IAM
// join uses it too. Pass a *refusal for a refusal; any other error is an
// internal error.
func (s *Server) refuseJoin(w http.ResponseWriter, r *http.Request, method string, err error) {
	s.metrics.join(method, "refused")
	s.recordRefusal(r.Context(), audit.JoinRefused, method, err)
	s.refuse(w, r, "join", err)
}

// refuse logs, counts and answers a refusal or internal error.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, what string, err error) {
	var ref *refusal
	if !errors.As(err, &ref) {
		s.internalError(w, r, what, err)
		return
	}
	s.metrics.refused(ref.Code)
	s.log.Warn(what+" refused", "reason", ref.Reason, "code", ref.Code, "remote", r.RemoteAddr)
	wire.WriteError(w, ref.Status, ref.Public)
}

// clientBot reads the verified client certificate, if any.
func (s *Server) clientBot(r *http.Request) (*botCert, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.PeerCertificates) == 0 {
		return nil, &refusal{Code: "no_client_cert", Reason: "no verified client certificate", Public: "this call needs a bot identity client certificate from this cluster", Status: 401}
	}
	bc, err := readBotCert(r.TLS.PeerCertificates[0])
	if err != nil {
		return nil, &refusal{Code: "not_a_bot", Reason: err.Error(), Public: err.Error(), Status: 403}
	}
	return bc, nil
}

func (s *Server) handleRenew(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	fail := func(err error) {
		s.metrics.renewal("refused")
		s.recordRefusal(r.Context(), audit.RenewRefused, "", err)
		s.refuse(w, r, "renewal", err)
	}
	bc, err := s.clientBot(r)
	if err != nil {
		fail(err)
		return
	}
	var req wire.RenewRequest
	if err := decodeRequest(w, r, &req); err != nil {
		fail(err)
		return
	}
	id, err := s.renew(r.Context(), bc, &req)
	if err != nil {
		fail(err)
		return
	}
	s.metrics.renewal("ok")
	s.metrics.issued("renew", time.Since(start))
	s.log.Debug("bot renewed", "bot", id.BotName, "generation", id.Generation)
	wire.WriteJSON(w, id)
}

func (s *Server) handleCerts(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	bc, err := s.clientBot(r)
	if err == nil {
		err = checkBotOnly(bc)
	}
	if err != nil {
		s.refuse(w, r, "certs", err)
		return
	}
	var req wire.CertsRequest
	if err := decodeRequest(w, r, &req); err != nil {
		s.refuse(w, r, "certs", err)
		return
	}
	certs, err := s.certs(r.Context(), bc, &req)
	if err != nil {
		s.refuse(w, r, "certs", err)
		return
	}
	s.metrics.issued("certs", time.Since(start))
	s.log.Debug("output identity issued", "bot", bc.Bot)
	wire.WriteJSON(w, certs)
}

// handleNodes answers with the nodes the client may reach, or with 304
// Not Modified when its If-None-Match names the current inventory: that
// answer needs no database and no encoding, so agents may poll often. A
// 304 only says that the list the client holds is still the current one;
// whether the bot may still have a list (not removed or joined again
// since) is checked for every list sent, and at every renewal; a lock, at
// every request, from the locks in memory.
func (s *Server) handleNodes(w http.ResponseWriter, r *http.Request) {
	bc, err := s.clientBot(r)
	if err == nil {
		err = checkBotOnly(bc)
	}
	if err != nil {
		s.refuse(w, r, "nodes", err)
		return
	}
	s.inv.expire(r.Context(), s.cfg.Clock.Now())
	if err := s.checkLockedNow(r.Context(), bc.Bot); err != nil {
		s.refuse(w, r, "nodes", err)
		return
	}
	// The tag names the CAs too (their stored version, the same on every
	// replica), so that an agent hears of a rotation's phase change at
	// its next poll; the list sent under it carries that very set.
	v, cas := s.inv.version.Load(), s.caSet()
	tag := s.inv.etag(v, cas.version)
	if etagMatches(r.Header.Get("If-None-Match"), tag) {
		s.metrics.nodeList("not_modified")
		w.Header().Set("ETag", tag)
		w.WriteHeader(http.StatusNotModified)
		return
	}
	list, err := s.nodes(r.Context(), bc, v)
	if err != nil {
		s.refuse(w, r, "nodes", err)
		return
	}
	s.metrics.nodeList("full")
	w.Header().Set("ETag", tag)
	if err := writeNodeList(w, cas.wireJSON, list, s.https.WriteTimeout); err != nil {
		s.log.Debug("node list not sent whole", "bot", bc.Bot, "nodes", len(list), "err", err)
	}
}

// handleHostCert signs a node's host key (node identities only).
func (s *Server) handleHostCert(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	bc, err := s.clientBot(r)
	if err != nil {
		s.refuse(w, r, "host certificate", err)
		return
	}
	var req wire.HostCertRequest
	if err := decodeRequest(w, r, &req); err != nil {
		s.refuse(w, r, "host certificate", err)
		return
	}
	certs, err := s.hostCert(r.Context(), bc, &req)
	if err != nil {
		s.refuse(w, r, "host certificate", err)
		return
	}
	s.metrics.issued("hostcert", time.Since(start))
	s.log.Debug("host certificate issued", "node", bc.Node)
	wire.WriteJSON(w, certs)
}

// handleHeartbeat keeps a node in the inventory (node identities only).
func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	bc, err := s.clientBot(r)
	if err != nil {
		s.refuse(w, r, "heartbeat", err)
		return
	}
	var hb wire.Heartbeat
	if err := decodeRequest(w, r, &hb); err != nil {
		s.refuse(w, r, "heartbeat", err)
		return
	}
	ans, err := s.heartbeat(r.Context(), bc, &hb)
	if err != nil {
		s.refuse(w, r, "heartbeat", err)
		return
	}
	wire.WriteJSON(w, ans)
}

// decodeRequest reads one JSON object of at most wire.MaxBody bytes with no
// unknown fields and nothing after it. Errors are refusals: 413 for a body
// that is too large, 400 otherwise.
func decodeRequest(w http.ResponseWriter, r *http.Request, v any) error {
	r.Body = http.MaxBytesReader(w, r.Body, wire.MaxBody)
	if err := wire.DecodeStrict(r.Body, v); err != nil {
		status := http.StatusBadRequest
		if errors.Is(err, wire.ErrTooLarge) {
			status = http.StatusRequestEntityTooLarge
		}
		return &refusal{Code: "bad_request", Reason: err.Error(), Public: err.Error(), Status: status}
	}
	return nil
}

package node

import (
	"crypto"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// hostAgent lets sshd sign with the host key (sshd_config HostKeyAgent)
// while the key stays in this process. It answers only what sshd asks (list
// the key, sign with it): adding, removing or locking keys, which the
// ssh-agent protocol also offers, would let any process that reaches the
// socket take the node's sshd down, so they are refused.
type hostAgent struct {
	signer ssh.AlgorithmSigner
}

var errReadOnly = errors.New("this agent serves the node's host key to sshd and takes no changes")

func newHostAgent(key crypto.Signer) (*hostAgent, error) {
	s, err := ssh.NewSignerFromSigner(key)
	if err != nil {
		return nil, err
	}
	as, ok := s.(ssh.AlgorithmSigner)
	if !ok {
		return nil, fmt.Errorf("host key of type %s cannot choose its signature algorithm", s.PublicKey().Type())
	}
	return &hostAgent{signer: as}, nil
}

func (h *hostAgent) List() ([]*agent.Key, error) {
	pub := h.signer.PublicKey()
	return []*agent.Key{{Format: pub.Type(), Blob: pub.Marshal(), Comment: "midfs node host key"}}, nil
}

func (h *hostAgent) Sign(key ssh.PublicKey, data []byte) (*ssh.Signature, error) {
	return h.SignWithFlags(key, data, 0)
}

// SignWithFlags honours the RSA SHA-2 flags sshd sends for rsa-sha2-256
// and rsa-sha2-512 host key algorithms.
func (h *hostAgent) SignWithFlags(key ssh.PublicKey, data []byte, flags agent.SignatureFlags) (*ssh.Signature, error) {
	if string(key.Marshal()) != string(h.signer.PublicKey().Marshal()) {
		return nil, errors.New("not this node's host key")
	}
	alg := ""
	switch {
	case flags&agent.SignatureFlagRsaSha256 != 0:
		alg = ssh.KeyAlgoRSASHA256
	case flags&agent.SignatureFlagRsaSha512 != 0:
		alg = ssh.KeyAlgoRSASHA512
	}
	return h.signer.SignWithAlgorithm(rand.Reader, data, alg)
}

func (h *hostAgent) Add(agent.AddedKey) error       { return errReadOnly }
func (h *hostAgent) Remove(ssh.PublicKey) error     { return errReadOnly }
func (h *hostAgent) RemoveAll() error               { return errReadOnly }
func (h *hostAgent) Lock([]byte) error              { return errReadOnly }
func (h *hostAgent) Unlock([]byte) error            { return errReadOnly }
func (h *hostAgent) Signers() ([]ssh.Signer, error) { return nil, errReadOnly }
func (h *hostAgent) Extension(string, []byte) ([]byte, error) {
	return nil, agent.ErrExtensionUnsupported
}

// agentServer serves a hostAgent on a Unix socket.
type agentServer struct {
	ln   net.Listener
	log  *slog.Logger
	wg   sync.WaitGroup
	mu   sync.Mutex
	conn map[net.Conn]struct{}
}

// serveAgent listens at path, replacing whatever socket is there (the one
// of the process before a restart) in one rename, so that sshd finds a
// socket at every moment. Only root may connect: sshd's monitor, which
// signs, runs as root.
func serveAgent(path string, h *hostAgent, log *slog.Logger) (*agentServer, error) {
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.%d", filepath.Base(path), os.Getpid()))
	os.Remove(tmp)
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("host key agent socket: %w", err)
	}
	// The socket outlives this listener under its final name: do not
	// remove it on Close (a restart renames its own over it).
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	err = os.Chmod(tmp, 0o600)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("host key agent socket %s: %w", path, err)
	}
	s := &agentServer{ln: ln, log: log, conn: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept(h)
	return s, nil
}

func (s *agentServer) accept(h *hostAgent) {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Error("host key agent stopped accepting", "err", err)
			}
			return
		}
		s.mu.Lock()
		s.conn[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			agent.ServeAgent(h, c) // until sshd hangs up
			c.Close()
			s.mu.Lock()
			delete(s.conn, c)
			s.mu.Unlock()
		}()
	}
}

// Close stops serving and waits for the connections to end.
func (s *agentServer) Close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conn {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

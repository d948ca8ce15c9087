package joiner

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/midfs/midfs/internal/atomicfile"
)

// Store keeps the renewable bot identity across restarts of the agent, so
// that a restart needs no new one-time token. It holds only the bot
// identity, never the output identity that the mount serves.
type Store interface {
	// Load returns the stored blob, or ErrNotStored.
	Load() ([]byte, error)
	// Save replaces the stored blob. expires is when it becomes useless,
	// for stores that can forget by themselves.
	Save(blob []byte, expires time.Time) error
	// Delete forgets the blob; deleting nothing is not an error.
	Delete() error
	// String describes where the blob lives, for logs and errors.
	String() string
}

// ErrNotStored is Load's answer when nothing is stored.
var ErrNotStored = errors.New("no stored bot identity")

// StoreName names the stored identity of one mount of one authority: the
// first 16 hex digits of the SHA-256 of the auth server address and the
// absolute mountpoint. Two mounts on one machine do not share (and so do
// not fight over) a bot identity. Of a list of replicas only the first
// counts, so that replicas added after it keep the identity.
func StoreName(authServer, mountpoint string) string {
	if abs, err := filepath.Abs(mountpoint); err == nil {
		mountpoint = abs
	}
	first, _, _ := strings.Cut(authServer, ",")
	sum := sha256.Sum256([]byte(strings.TrimSpace(first) + "\x00" + filepath.Clean(mountpoint)))
	return hex.EncodeToString(sum[:])[:16]
}

// NodeStoreName names the stored identity of node (`midfs node start
// --name`) of one authority, as StoreName does for a mount: by the first
// of its addresses, so that naming another replica keeps the identity.
func NodeStoreName(authServer, node string) string {
	first, _, _ := strings.Cut(authServer, ",")
	sum := sha256.Sum256([]byte(strings.TrimSpace(first) + "\x00node\x00" + node))
	return "node-" + hex.EncodeToString(sum[:])[:16]
}

// OpenStore opens the store spec names for the identity called name (see
// StoreName): "keyring" (the Linux kernel user keyring, the default),
// "memory" (keeps nothing) or "dir:PATH" (a 0600 file in PATH).
func OpenStore(spec, name string) (Store, error) {
	switch {
	case spec == "" || spec == "keyring":
		return KeyringStore(name)
	case spec == "memory":
		return MemoryStore(), nil
	case strings.HasPrefix(spec, "dir:"):
		dir := strings.TrimPrefix(spec, "dir:")
		if dir == "" {
			return nil, &kindError{kind: ErrConfig, msg: "bad storage \"dir:\": give a directory, e.g. dir:/var/lib/midfs-agent"}
		}
		return DirStore(dir, name)
	}
	return nil, &kindError{kind: ErrConfig, msg: fmt.Sprintf("bad storage %q: want keyring, memory or dir:PATH", spec)}
}

// MemoryStore keeps nothing: a restart needs a new token (or an iam join).
func MemoryStore() Store { return memoryStore{} }

type memoryStore struct{}

func (memoryStore) Load() ([]byte, error)        { return nil, ErrNotStored }
func (memoryStore) Save([]byte, time.Time) error { return nil }
func (memoryStore) Delete() error                { return nil }
func (memoryStore) String() string               { return "memory (nothing kept)" }

// DirStore keeps the blob in the file PATH/bot-NAME, mode 0600, replaced
// atomically. This puts the bot's private key on disk: for those who
// accept that in exchange for surviving a reboot.
func DirStore(dir, name string) (Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, &kindError{kind: ErrConfig, msg: fmt.Sprintf("bad storage directory %q: %v", dir, err)}
	}
	return &dirStore{path: filepath.Join(abs, "bot-"+name)}, nil
}

type dirStore struct{ path string }

func (d *dirStore) String() string { return "file " + d.path }

func (d *dirStore) Load() ([]byte, error) {
	b, err := os.ReadFile(d.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotStored
	}
	return b, err
}

func (d *dirStore) Save(blob []byte, _ time.Time) error {
	dir := filepath.Dir(d.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// After a crash the file is the old blob or the new one, never a torn
	// one (a torn one would lose the bot).
	return atomicfile.Write(d.path, blob, 0o600)
}

func (d *dirStore) Delete() error {
	err := os.Remove(d.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

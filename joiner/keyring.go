package joiner

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Key permissions: everything for the possessor and for processes of the
// same uid (a systemd service has a private session keyring, so it finds
// the key by uid, not by possession); nothing for group or others.
const keyPerm = 0x3f3f0000

// KeyringStore keeps the blob in the Linux kernel's user keyring (@u) as a
// "user" key named "midfs:bot:NAME": it outlives the process, never
// touches disk or swap, and is gone at reboot. The kernel also forgets it
// when the bot identity expires.
func KeyringStore(name string) (Store, error) {
	if _, err := unix.KeyctlGetKeyringID(unix.KEY_SPEC_USER_KEYRING, true); err != nil {
		return nil, &kindError{kind: ErrConfig, msg: fmt.Sprintf(
			"the kernel user keyring is not available (%v): use --storage=memory, or --storage=dir:PATH to accept a key on disk", err)}
	}
	return &keyringStore{desc: "midfs:bot:" + name}, nil
}

type keyringStore struct{ desc string }

func (k *keyringStore) String() string { return "kernel keyring @u key " + k.desc }

func (k *keyringStore) find() (int, error) {
	id, err := unix.KeyctlSearch(unix.KEY_SPEC_USER_KEYRING, "user", k.desc, 0)
	if gone(err) {
		return 0, ErrNotStored
	}
	return id, err
}

// gone says the kernel has no usable key: never stored, expired (the
// timeout Save sets) or revoked. It can happen between any two calls.
func gone(err error) bool {
	return errors.Is(err, unix.ENOKEY) || errors.Is(err, unix.EKEYEXPIRED) || errors.Is(err, unix.EKEYREVOKED)
}

func (k *keyringStore) Load() ([]byte, error) {
	id, err := k.find()
	if err != nil {
		return nil, err
	}
	// The payload can change between asking its size and reading it (a
	// second agent saving); read until the buffer was big enough.
	size := 4096
	for {
		buf := make([]byte, size)
		n, err := unix.KeyctlBuffer(unix.KEYCTL_READ, id, buf, 0)
		if err != nil {
			if gone(err) {
				return nil, ErrNotStored
			}
			return nil, fmt.Errorf("read %s: %w", k, err)
		}
		if n <= len(buf) {
			return buf[:n], nil
		}
		clear(buf)
		size = n
	}
}

// Save makes a new key and puts it in @u in place of the previous one.
//
// Only a process that possesses a key may change its permissions, and a key
// is possessed when it is reachable from the process's own keyrings. A
// service manager usually gives each service a session keyring of its own
// that does not link @u (systemd's KeyringMode=private, the default for
// system services), so a key added straight to @u is not possessed and
// setting its permissions fails. The key is therefore made in this
// thread's keyring, possessed there whatever the session keyring, given
// its permissions and lifetime, and only then linked into @u, which
// replaces the previous key of the same name atomically. The thread
// keyring is per thread, hence the locked OS thread.
func (k *keyringStore) Save(blob []byte, expires time.Time) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	id, err := unix.AddKey("user", k.desc, blob, unix.KEY_SPEC_THREAD_KEYRING)
	if err != nil {
		return fmt.Errorf("save to %s: %w", k, err)
	}
	// Once in @u (or on failure) the thread's link is not needed: the
	// thread keyring outlives this call, the key must not.
	defer unix.KeyctlInt(unix.KEYCTL_UNLINK, id, unix.KEY_SPEC_THREAD_KEYRING, 0, 0)
	if err := unix.KeyctlSetperm(id, keyPerm); err != nil {
		return fmt.Errorf("set permissions of %s: %w", k, err)
	}
	if !expires.IsZero() {
		secs := int(time.Until(expires)/time.Second) + 60
		if secs < 60 {
			secs = 60
		}
		// Best effort: an expired bot identity is useless, let the kernel drop it.
		unix.KeyctlInt(unix.KEYCTL_SET_TIMEOUT, id, secs, 0, 0)
	}
	if _, err := unix.KeyctlInt(unix.KEYCTL_LINK, id, unix.KEY_SPEC_USER_KEYRING, 0, 0); err != nil {
		return fmt.Errorf("save to %s: %w", k, err)
	}
	return nil
}

func (k *keyringStore) Delete() error {
	id, err := k.find()
	if errors.Is(err, ErrNotStored) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := unix.KeyctlInt(unix.KEYCTL_INVALIDATE, id, 0, 0, 0); err != nil {
		if _, err2 := unix.KeyctlInt(unix.KEYCTL_UNLINK, id, unix.KEY_SPEC_USER_KEYRING, 0, 0); err2 != nil {
			return fmt.Errorf("delete %s: %w", k, err)
		}
	}
	return nil
}

package fs

import "os"

// Access is who may use the private key: root, the owner and the readers.
// It decides the opens of key and identity (maySeeSecrets) and the
// connections to an ssh-agent socket that serves the same key, so the
// files and the socket follow one rule.
type Access struct {
	UID, GID uint32 // the owner
	Readers  []Reader
}

// Allows says whether a process running as uid, with primary group gid, may
// use the key. groups yields its supplementary groups; it is called only
// when a group reader could match, since finding them may cost a read of
// /proc.
func (a Access) Allows(uid, gid uint32, groups func() []uint32) bool {
	if uid == 0 || uid == a.UID {
		return true
	}
	groupReaders := false
	for _, r := range a.Readers {
		switch {
		case !r.IsGroup && r.UID == uid:
			return true
		case r.IsGroup && r.GID == gid:
			return true
		case r.IsGroup:
			groupReaders = true
		}
	}
	if !groupReaders {
		return false
	}
	for _, g := range groups() {
		for _, r := range a.Readers {
			if r.IsGroup && r.GID == g {
				return true
			}
		}
	}
	return false
}

// SocketMode is the mode for a Unix socket owned by UID:GID that every
// process Allows admits must be able to connect to (connect(2) needs write
// permission on the socket). The kernel's check is only the first gate:
// whoever connects is still checked against Allows, as an open of key is.
// No readers: 0600. Readers that are all the owner's group: 0660. Any
// other reader: 0666, and Allows alone decides.
func (a Access) SocketMode() os.FileMode {
	mode := os.FileMode(0o600)
	for _, r := range a.Readers {
		if !r.IsGroup || r.GID != a.GID {
			return 0o666
		}
		mode = 0o660
	}
	return mode
}

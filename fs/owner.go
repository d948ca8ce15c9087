package fs

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
)

// ParseOwner reads USER[:GROUP] (names or numbers); empty means the
// running user and group. A user alone brings its primary group. Errors
// say what is wrong with s; the caller names where s came from.
func ParseOwner(s string) (uid, gid uint32, err error) {
	if s == "" {
		return uint32(os.Getuid()), uint32(os.Getgid()), nil
	}
	name, group, hasGroup := strings.Cut(s, ":")
	uid, gid, err = lookupUser(name)
	if err != nil {
		return 0, 0, err
	}
	if hasGroup {
		if gid, err = lookupGroup(group); err != nil {
			return 0, 0, err
		}
	}
	return uid, gid, nil
}

// ParseReader reads USER or @GROUP (names or numbers). Errors say what
// is wrong with s; the caller names where s came from.
func ParseReader(s string) (Reader, error) {
	if g, ok := strings.CutPrefix(s, "@"); ok {
		gid, err := lookupGroup(g)
		if err != nil {
			return Reader{}, err
		}
		return Reader{GID: gid, IsGroup: true}, nil
	}
	uid, _, err := lookupUser(s)
	if err != nil {
		return Reader{}, fmt.Errorf("%v (write @NAME for a group)", err)
	}
	return Reader{UID: uid}, nil
}

// lookupUser finds a user by name or number. A number need not exist in
// /etc/passwd (containers and LDAP-less hosts); its primary group is then
// the same number.
func lookupUser(s string) (uid, gid uint32, err error) {
	if s == "" {
		return 0, 0, errors.New("empty user name")
	}
	u, lerr := user.Lookup(s)
	if lerr != nil {
		u, lerr = user.LookupId(s)
	}
	if lerr != nil {
		n, perr := strconv.ParseUint(s, 10, 32)
		if perr != nil {
			return 0, 0, fmt.Errorf("no user %q on this machine", s)
		}
		return uint32(n), uint32(n), nil
	}
	uid64, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid64, _ := strconv.ParseUint(u.Gid, 10, 32)
	return uint32(uid64), uint32(gid64), nil
}

func lookupGroup(s string) (uint32, error) {
	if s == "" {
		return 0, errors.New("empty group name")
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		g, err = user.LookupGroupId(s)
	}
	if err != nil {
		n, perr := strconv.ParseUint(s, 10, 32)
		if perr != nil {
			return 0, fmt.Errorf("no group %q on this machine", s)
		}
		return uint32(n), nil
	}
	n, _ := strconv.ParseUint(g.Gid, 10, 32)
	return uint32(n), nil
}

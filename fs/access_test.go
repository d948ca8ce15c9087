package fs

import (
	"encoding/json"
	"math/big"
	"os"
	"strings"
	"testing"
)

// Secret files open for the owner, root, reader uids and members of reader
// groups (primary or supplementary); anyone else gets EACCES at open, and
// still reads the public files.
func TestSecretFilesOpenOnlyForOwnerRootAndReaders(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{
		UID: 1000, GID: 1000,
		Readers: []Reader{{UID: 2000}, {GID: 3000, IsGroup: true}},
	})
	cases := []struct {
		who, cred string
		allowed   bool
	}{
		{"root", "", true},
		{"owner", "1000:1000", true},
		{"reader uid", "2000:2000", true},
		{"reader group as primary gid", "4000:3000", true},
		{"reader group as supplementary group", "4001:4001:5,3000", true},
		{"owner's group is not enough", "4002:1000", false},
		{"stranger", "5000:5000:6,7", false},
	}
	for _, c := range cases {
		t.Run(c.who, func(t *testing.T) {
			r := startReader(t, s.dir, c.cred)
			for _, name := range []string{"key", "identity"} {
				got := r.do("cat " + name)
				if c.allowed && !strings.HasPrefix(got, "data ") {
					t.Errorf("%s: open %s: %s, want the file", c.who, name, got)
				}
				if !c.allowed && got != "err EACCES" {
					t.Errorf("%s: open %s: %.40s, want err EACCES", c.who, name, got)
				}
				// access(2) agrees with open.
				acc := r.do("access " + name)
				if (acc == "ok") != c.allowed {
					t.Errorf("%s: access(%s, R_OK) = %s", c.who, name, acc)
				}
			}
			for _, name := range []string{"key.pub", "key-cert.pub", "tlscert", "ssh_config", "known_hosts"} {
				if got := r.do("cat " + name); !strings.HasPrefix(got, "data ") {
					t.Errorf("%s: open public %s: %s", c.who, name, got)
				}
			}
		})
	}

	// Every open was counted, denials included.
	var opens map[string]int
	if err := json.Unmarshal([]byte(s.do("opens")), &opens); err != nil {
		t.Fatal(err)
	}
	if opens["key denied"] != 2 || opens["identity denied"] != 2 || opens["key ok"] < 5 {
		t.Errorf("OnOpen counts: %v", opens)
	}

	// Secret opens are logged at debug level with who asked, never with
	// what the file holds.
	log := s.stderr.String()
	if !strings.Contains(log, `msg="open secret file" file=key uid=5000`) || !strings.Contains(log, "result=denied") ||
		!strings.Contains(log, "comm=fs.test") {
		t.Errorf("no debug line for a denied open of key:\n%s", log)
	}
	if !strings.Contains(log, "result=ok generation=") {
		t.Errorf("no debug line naming the generation an allowed open reads:\n%s", log)
	}
	if strings.Contains(log, "PRIVATE KEY") {
		t.Errorf("log holds key material:\n%s", log)
	}
}

// The root directory carries the configured xattrs, read-only.
func TestRootXattrs(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{Xattrs: map[string]string{"user.midfs.auth_server": "auth.example:3025"}})
	buf := make([]byte, 256)
	n, err := getxattr(s.dir, "user.midfs.auth_server", buf)
	if err != nil || string(buf[:n]) != "auth.example:3025" {
		t.Fatalf("getxattr: %q, %v", buf[:n], err)
	}
	n, err = listxattr(s.dir, buf)
	if err != nil || !strings.Contains(string(buf[:n]), "user.midfs.auth_server\x00") {
		t.Fatalf("listxattr: %q, %v", buf[:n], err)
	}
	if _, err := getxattr(s.path("key"), "user.midfs.auth_server", buf); err == nil {
		t.Error("files carry no xattrs, but getxattr on key succeeded")
	}
	if _, err := os.Stat(s.dir); err != nil {
		t.Fatal(err)
	}
}

// The root's cert serial moves at every publish: `midfs renew` waits on it,
// as the files would hold it to the generation it read before (pins.go).
func TestRootCertSerialFollowsPublish(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{})
	serial := func() string {
		buf := make([]byte, 64)
		n, err := getxattr(s.dir, XattrCertSerial, buf)
		if err != nil {
			t.Fatalf("getxattr %s: %v", XattrCertSerial, err)
		}
		return string(buf[:n])
	}
	before := serial()
	if _, ok := new(big.Int).SetString(before, 10); !ok {
		t.Fatalf("%s is %q, want a decimal serial", XattrCertSerial, before)
	}
	s.publish()
	if after := serial(); after == before {
		t.Fatalf("%s stayed %s after a publish", XattrCertSerial, before)
	}
}

// The socket mode lets every process Access admits through the kernel's
// check and no more than it must: the peer check does the rest.
func TestSocketModeFitsTheReaders(t *testing.T) {
	for _, c := range []struct {
		readers []Reader
		want    os.FileMode
	}{
		{nil, 0o600},
		{[]Reader{{GID: 1000, IsGroup: true}}, 0o660},
		{[]Reader{{GID: 1000, IsGroup: true}, {GID: 1000, IsGroup: true}}, 0o660},
		{[]Reader{{GID: 1000, IsGroup: true}, {GID: 3000, IsGroup: true}}, 0o666},
		{[]Reader{{UID: 2000}}, 0o666},
	} {
		a := Access{UID: 1000, GID: 1000, Readers: c.readers}
		if got := a.SocketMode(); got != c.want {
			t.Errorf("readers %+v: socket mode %v, want %v", c.readers, got, c.want)
		}
	}
}

// Access.Allows reads the supplementary groups only when a group reader
// could match, and admits by them.
func TestAccessReadsGroupsOnlyWhenNeeded(t *testing.T) {
	asked := 0
	groups := func(gs ...uint32) func() []uint32 { return func() []uint32 { asked++; return gs } }
	byUser := Access{UID: 1000, Readers: []Reader{{UID: 2000}}}
	if byUser.Allows(5000, 5000, groups(2000)) || asked != 0 {
		t.Errorf("user readers only: a stranger was admitted or its groups read (%d)", asked)
	}
	byGroup := Access{UID: 1000, Readers: []Reader{{GID: 3000, IsGroup: true}}}
	if !byGroup.Allows(5000, 5000, groups(7, 3000)) || asked != 1 {
		t.Errorf("a member of the reader group by its supplementary groups was refused")
	}
	if byGroup.Allows(5000, 5000, groups(7)) {
		t.Errorf("a stranger was admitted")
	}
	if !byGroup.Allows(0, 0, nil) || !byGroup.Allows(1000, 9, nil) {
		t.Errorf("root or the owner was refused")
	}
}

package service

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary plays the other process: the new one of a handover, or
// a service started with descriptors from the store.
func TestMain(m *testing.M) {
	switch os.Getenv("MIDFS_SVCTEST_ROLE") {
	case "successor":
		os.Exit(successorMain())
	case "listener":
		os.Exit(listenerMain())
	}
	os.Exit(m.Run())
}

// successorMain takes the descriptors, prints each name with what a read
// of it gives, and behaves as MIDFS_SVCTEST_MODE says: "ok" resumes,
// "fail" refuses.
func successorMain() int {
	p := PredecessorFromEnv()
	if p == nil {
		fmt.Println("no predecessor")
		return 1
	}
	if os.Getenv(handoverEnv) != "" {
		fmt.Println("the handover variable is left for children")
		return 1
	}
	fds, err := p.Take(10 * time.Second)
	if err != nil {
		fmt.Println("take:", err)
		return 1
	}
	if os.Getenv("MIDFS_SVCTEST_MODE") == "fail" {
		p.Failed(fmt.Errorf("cannot serve"))
		return 1
	}
	p.Resumed() // returns once the old process is gone
	var lines []string
	for name, f := range fds {
		b, _ := io.ReadAll(f)
		lines = append(lines, name+"="+string(b))
	}
	sort.Strings(lines)
	fmt.Println(strings.Join(lines, " "))
	return 0
}

func listenerMain() int {
	fds, err := listenFDs()
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	var lines []string
	for name, f := range fds {
		b, _ := io.ReadAll(f)
		lines = append(lines, name+"="+string(b))
	}
	sort.Strings(lines)
	fmt.Println(strings.Join(lines, " "), os.Getenv("LISTEN_FDS") == "")
	return 0
}

// fileWith is a memfd holding s, at offset 0.
func fileWith(t *testing.T, s string) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "test")
	t.Cleanup(func() { f.Close() })
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	f.Seek(0, io.SeekStart)
	return f
}

// The old process hands its descriptors to the new one and learns when it
// has taken them; the new one returns from Resumed only once the old one
// is gone (here: has closed its end, as its exit does).
func TestHandoverPassesDescriptors(t *testing.T) {
	r, w, _ := os.Pipe()
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(l)
	}()
	stdout := os.Stdout
	os.Stdout = w // the successor writes where this process's stdout is
	env := append(os.Environ(), "MIDFS_SVCTEST_ROLE=successor")
	succ, err := StartSuccessor(os.Args[0], nil, env, 10*time.Second)
	os.Stdout = stdout
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	a, b := fileWith(t, "alpha"), fileWith(t, "beta")
	if err := succ.Hand(map[string]*os.File{"fuse": a, "state": b}, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	unix.Close(succ.conn) // what the old process's exit does
	select {
	case got := <-line:
		if got != "fuse=alpha state=beta" {
			t.Errorf("the new process got %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Error("the new process did not go on after the old one closed its end")
	}
}

// A new process that cannot take over says why, and the old one serves on.
func TestHandoverRefusedSaysWhy(t *testing.T) {
	env := append(os.Environ(), "MIDFS_SVCTEST_ROLE=successor", "MIDFS_SVCTEST_MODE=fail")
	succ, err := StartSuccessor(os.Args[0], nil, env, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	err = succ.Hand(map[string]*os.File{"fuse": fileWith(t, "x")}, 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "cannot serve") {
		t.Errorf("a refused handover: %v", err)
	}
}

// A binary that is no midfs never says hello: StartSuccessor gives up.
func TestHandoverToSomethingElseTimesOut(t *testing.T) {
	_, err := StartSuccessor("/bin/sleep", []string{"5"}, os.Environ(), 200*time.Millisecond)
	if err == nil {
		t.Fatal("a successor that never answered was taken")
	}
}

// Keep stores a descriptor under its name (dropping what the name held
// before), Drop removes it; without $FDSTORE nothing is sent.
func TestKeepStoresDescriptors(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify.sock")
	conn := listenNotify(t, addr)
	t.Setenv("FDSTORE", "8")
	svc := New()
	if !svc.FDStore() {
		t.Fatal("no store with NOTIFY_SOCKET and FDSTORE set")
	}
	f := fileWith(t, "state bytes")
	svc.Keep("state", f)
	if got := readDatagram(t, conn); got != "FDSTOREREMOVE=1\nFDNAME=state\n" {
		t.Fatalf("first datagram %q", got)
	}
	msg, fds := readDatagramFDs(t, conn)
	if msg != "FDSTORE=1\nFDNAME=state\n" || len(fds) != 1 {
		t.Fatalf("store datagram %q with %d descriptors", msg, len(fds))
	}
	var a, b unix.Stat_t
	unix.Fstat(int(f.Fd()), &a)
	unix.Fstat(fds[0], &b)
	unix.Close(fds[0])
	if a.Ino != b.Ino || a.Dev != b.Dev {
		t.Error("the stored descriptor is not the file kept")
	}
	svc.Drop("gen-3")
	if got := readDatagram(t, conn); got != "FDSTOREREMOVE=1\nFDNAME=gen-3\n" {
		t.Fatalf("drop sent %q", got)
	}
	svc.Keep("bad:name", f) // refused: nothing sent
	svc.Drop("x")
	if got := readDatagram(t, conn); got != "FDSTOREREMOVE=1\nFDNAME=x\n" {
		t.Fatalf("after a bad name, got %q", got)
	}

	t.Setenv("FDSTORE", "")
	listenNotify(t, filepath.Join(t.TempDir(), "notify2.sock"))
	if New().FDStore() {
		t.Error("a store without FDSTORE (FileDescriptorStoreMax=0)")
	}
}

// The descriptors systemd passes at start are taken by name, for this
// process only, and the variables are unset.
func TestStoredDescriptorsAreTakenByName(t *testing.T) {
	run := func(pid string) string {
		cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=${PID:-$$} exec "$0"`, os.Args[0])
		cmd.Env = append(os.Environ(), "MIDFS_SVCTEST_ROLE=listener", "LISTEN_FDS=2", "LISTEN_FDNAMES=fuse:state", "PID="+pid)
		cmd.ExtraFiles = []*os.File{fileWith(t, "one"), fileWith(t, "two")}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := run(""); got != "fuse=one state=two true" {
		t.Errorf("passed descriptors: %q", got)
	}
	if got := run("1"); got != "true" {
		t.Errorf("descriptors meant for another process were taken: %q", got)
	}
}

func readDatagramFDs(t *testing.T, conn *net.UnixConn) (string, []int) {
	t.Helper()
	buf, oob := make([]byte, 4096), make([]byte, 128)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("no datagram: %v", err)
	}
	var fds []int
	msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
	for i := range msgs {
		got, _ := unix.ParseUnixRights(&msgs[i])
		fds = append(fds, got...)
	}
	return string(buf[:n]), fds
}

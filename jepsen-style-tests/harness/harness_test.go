package harness

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quorumq/quorumq/client"
)

// The ports are distinct and each can be bound once FreePorts returns.
func TestFreePortsAreDistinctAndBindable(t *testing.T) {
	ports, err := FreePorts(30)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d handed out twice in %v", p, ports)
		}
		seen[p] = true
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		l.Close()
	}
}

// The built binary is the quorumq command: it runs and knows its verbs.
func TestBuildBinaryBuildsTheCommand(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "quorumq")
	if err := BuildBinary(bin, nil); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "server") || !strings.Contains(string(out), "recv") {
		t.Fatalf("%s --help: %v\n%s", bin, err, out)
	}
	if err := BuildBinary(filepath.Join(t.TempDir(), "q"), nil, "-no-such-flag"); err == nil || !strings.Contains(err.Error(), "go build") {
		t.Fatalf("a build that cannot succeed: %v, want an error naming go build", err)
	}
}

// A Cluster of three server processes comes up with a leader; after the
// leader's kill -9 the other two elect another, and the killed node,
// restarted on its data dir, rejoins with the same state as the others.
func TestClusterElectsAgainAndTheKilledNodeRejoins(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: builds the binary and starts three servers (-short)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "quorumq")
	if err := BuildBinary(bin, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cl, err := StartCluster(ctx, ClusterConfig{Bin: bin, DataDir: filepath.Join(dir, "data"), LogDir: dir, IDs: []string{"n1", "n2", "n3"}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	logs := func() {
		for _, n := range cl.Nodes {
			b, _ := os.ReadFile(n.LogPath)
			t.Logf("--- %s log ---\n%s", n.ID, b)
		}
	}
	c, err := client.New(ctx, cl.APIAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Send(ctx, "q", []byte("before the kill")); err != nil {
		t.Fatal(err)
	}
	first, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	var second *Node
	for second == nil || second == first {
		if second, err = cl.WaitLeader(ctx); err != nil {
			logs()
			t.Fatalf("no leader after %s's kill: %v", first.ID, err)
		}
	}
	if _, err := c.Send(ctx, "q", []byte("after the kill")); err != nil {
		t.Fatal(err)
	}
	if err := cl.Restart(first, false); err != nil {
		t.Fatal(err)
	}
	if err := cl.WaitHealthy(ctx, 3); err != nil {
		logs()
		t.Fatal(err)
	}
	if conv := cl.WaitConverged(ctx); !conv.Converged {
		logs()
		t.Fatalf("not converged after %s's restart: %s (applied %v)", first.ID, conv.Problem, conv.Applied)
	}
	b, _ := os.ReadFile(first.LogPath)
	if !strings.Contains(string(b), StartMarker+"2") {
		t.Fatalf("%s's log lacks the second start marker:\n%s", first.ID, b)
	}
}

// EmptyDir empties a data dir that may be a mount point, which must stay.
func TestEmptyDirKeepsTheDirectory(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"raft.db", "snapshots/2-9-1/state.bin"} {
		p = filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := EmptyDir(dir); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("the directory itself is gone: %v", err)
	}
	if len(entries) != 0 {
		t.Fatalf("%d entries left after EmptyDir", len(entries))
	}
}

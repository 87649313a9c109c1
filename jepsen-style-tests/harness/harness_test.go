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

// The pieces make a cluster of server processes: three nodes started with
// ServerArgs on FreePorts elect a leader, and after the leader's kill -9
// the other two elect another.
func TestThreeServerProcessesElectALeader(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: builds the binary and starts three servers (-short)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "quorumq")
	if err := BuildBinary(bin, nil); err != nil {
		t.Fatal(err)
	}
	ports, err := FreePorts(9)
	if err != nil {
		t.Fatal(err)
	}
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	servers := make([]Server, 3)
	for i := range servers {
		id := "n" + strconv.Itoa(i+1)
		servers[i] = Server{ID: id, DataDir: filepath.Join(dir, id), API: addr(3 * i), Raft: addr(3*i + 1), Gossip: addr(3*i + 2)}
	}
	procs := map[string]*Process{}
	var apis []string
	for _, s := range servers {
		p := &Process{Bin: bin, Args: ServerArgs(s, servers, len(servers)), LogPath: filepath.Join(dir, s.ID+".log")}
		t.Cleanup(func() { p.Close() })
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		procs[s.ID] = p
		apis = append(apis, s.API)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := client.New(ctx, apis)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	leader := func(not string) string {
		t.Helper()
		for ctx.Err() == nil {
			lctx, lcancel := context.WithTimeout(ctx, 2*time.Second)
			id, _, err := c.Leader(lctx)
			lcancel()
			if err == nil && id != "" && id != not {
				return id
			}
			time.Sleep(100 * time.Millisecond)
		}
		for id, p := range procs {
			b, _ := os.ReadFile(p.LogPath)
			t.Logf("--- %s log ---\n%s", id, b)
		}
		t.Fatalf("no leader other than %q", not)
		return ""
	}
	first := leader("")
	if err := procs[first].Kill(); err != nil {
		t.Fatal(err)
	}
	if second := leader(first); second == first {
		t.Fatalf("leader %s again after its kill", second)
	}
	b, _ := os.ReadFile(procs[first].LogPath)
	if !strings.Contains(string(b), StartMarker+"1") {
		t.Fatalf("%s log lacks the start marker:\n%s", first, b)
	}
}

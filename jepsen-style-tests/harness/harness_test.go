package harness

import (
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
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

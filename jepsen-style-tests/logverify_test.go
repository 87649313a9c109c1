package jepsen

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
)

// TestLogVerifyFailuresAreProblems: a node log line in which the server
// reports a log verification mismatch is found and named by node; the
// other lines, and a healthy verification, are not.
func TestLogVerifyFailuresAreProblems(t *testing.T) {
	dir := t.TempDir()
	logs := map[string]string{
		"n1": `time=... level=INFO msg="node started" node=n1
time=... level=DEBUG msg="log checkpoint not applied" node=n1 err="not leader"
`,
		"n2": `time=... level=ERROR msg="log verification failed: this node's log differs from what the leader wrote; replace the node (docs/operations.md)" node=n2 range="[10, 20)" err="storage corruption"
`,
	}
	c := &Cluster{&harness.Cluster{}}
	for _, id := range []string{"n1", "n2"} {
		path := filepath.Join(dir, id+".log")
		if err := os.WriteFile(path, []byte(logs[id]), 0o600); err != nil {
			t.Fatal(err)
		}
		c.Nodes = append(c.Nodes, &Node{ID: id, LogPath: path})
	}
	got := logVerifyFailures(c)
	if len(got) != 1 || !strings.HasPrefix(got[0], "n2: ") || !strings.Contains(got[0], "storage corruption") {
		t.Fatalf("logVerifyFailures = %q, want n2's mismatch only", got)
	}
}

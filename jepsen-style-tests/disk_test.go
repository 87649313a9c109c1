package jepsen

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quorumq/quorumq/jepsen-style-tests/lazyfs"
)

// TestPowerModeCoversEveryCombination: two injections of one power
// nemesis (the short profile) meet both modes, four meet Drop and Torn
// each with and without a snapshot in flight.
func TestPowerModeCoversEveryCombination(t *testing.T) {
	type combo struct {
		mode lazyfs.Mode
		snap bool
	}
	seen := map[combo]int{}
	modes := map[lazyfs.Mode]bool{}
	for i := range 4 {
		m, s := powerMode(i)
		seen[combo{m, s}]++
		if i < 2 {
			modes[m] = true
		}
	}
	if len(seen) != 4 {
		t.Errorf("four injections give %v, want all four combinations of mode and mid-snapshot", seen)
	}
	if len(modes) != 2 {
		t.Errorf("two injections give modes %v, want Drop and Torn", modes)
	}
}

func TestRefusalNaming(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "n1.log")
	db := "/data/n1/raft.db"
	cases := []struct {
		name, log string
		ok        bool
	}{
		{"names the file", "=== jepsen: start #1\nquorumq: unusable data dir: /data/n1/raft.db: log entry 9 is corrupt\n", true},
		{"names another file", "=== jepsen: start #1\nquorumq: unusable data dir: /data/n1/node.json is corrupt\n", false},
		{"no refusal", "=== jepsen: start #1\nlevel=INFO msg=\"node started\"\n", false},
		// An earlier incarnation's refusal does not count for this one.
		{"refusal of an earlier start", "=== jepsen: start #1\nquorumq: unusable data dir: /data/n1/raft.db: x\n=== jepsen: start #2\nlevel=INFO msg=\"node started\"\n", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(logPath, []byte(c.log), 0o644); err != nil {
				t.Fatal(err)
			}
			line, err := refusalNaming(logPath, db)
			if (err == nil) != c.ok {
				t.Fatalf("refusalNaming = %q, %v; want ok=%v", line, err, c.ok)
			}
			if c.ok && !strings.Contains(line, db) {
				t.Fatalf("refusal line %q does not name %s", line, db)
			}
		})
	}
}

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
	if err := emptyDir(dir); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("the directory itself is gone: %v", err)
	}
	if len(entries) != 0 {
		t.Fatalf("%d entries left after emptyDir", len(entries))
	}
}

package jepsen

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
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
		{"names the file", harness.StartMarker + "1\nquorumq: unusable data dir: /data/n1/raft.db: log entry 9 is corrupt\n", true},
		{"names another file", harness.StartMarker + "1\nquorumq: unusable data dir: /data/n1/node.json is corrupt\n", false},
		{"no refusal", harness.StartMarker + "1\nlevel=INFO msg=\"node started\"\n", false},
		// An earlier incarnation's refusal does not count for this one.
		{"refusal of an earlier start", harness.StartMarker + "1\nquorumq: unusable data dir: /data/n1/raft.db: x\n" + harness.StartMarker + "2\nlevel=INFO msg=\"node started\"\n", false},
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

// lyingDisks makes every node's disk acknowledge fsync without writing
// anything, lets the workloads run on them, and then cuts the power of all
// three at once: writes the cluster acknowledged meanwhile are gone from
// every replica.
type lyingDisks struct{ victims []*Node }

func (l *lyingDisks) Name() string       { return "lying-disks-power-all" }
func (l *lyingDisks) NeedsNetwork() bool { return false }
func (l *lyingDisks) NeedsLazyFS() bool  { return true }

func (l *lyingDisks) Inject(ctx context.Context, env *Env) (string, error) {
	for _, fs := range env.Disks {
		fs.LieAboutFsync(true)
	}
	time.Sleep(3 * time.Second)
	l.victims = env.Cluster.Nodes
	detail, err := cutPower(ctx, env, l.Name(), l.victims, lazyfs.Drop, false)
	for _, fs := range env.Disks {
		fs.LieAboutFsync(false)
	}
	return "3 s of fsyncs acknowledged and not done, then " + detail, err
}

func (l *lyingDisks) Heal(_ context.Context, env *Env) (string, error) {
	return restartAll(env, l.victims)
}

// TestPowerNemesisBitesInTheSuite is the suite's own proof that a power
// failure can make the cluster forget acknowledged writes and that the
// checkers report it: with disks that lie about fsync, the case must be
// invalid, and the at-least-once queue must show the forgotten enqueues,
// as lost values (acknowledged, never delivered) or as order violations
// (the forgotten messages' IDs handed out again to later sends). Lost
// alone is not certain: the consumers keep the queues near empty, so most
// forgotten messages were already delivered before the power failed.
// (lazyfs's TestPowerFailureBites shows loss itself for a toy writer
// that acknowledges before fsync.)
func TestPowerNemesisBitesInTheSuite(t *testing.T) {
	res := runMustFail(t, CaseConfig{
		Name: "lying-disks", LazyFS: true,
		Schedule: Schedule{Nemeses: []Nemesis{&lyingDisks{}}, Cycles: 1, Quiet: [2]time.Duration{2 * time.Second, 2 * time.Second}, Fault: [2]time.Duration{time.Second, time.Second}},
	}, lazyfs.Available, "the cluster forgot acknowledged writes")
	// The at-least-once workload's queue is busy enough to show it in
	// every run; the timing workload's few messages may all have been
	// delivered before the power failed.
	for _, q := range res.Queues {
		if q.Mode != AtLeastOnce || q.Workload != (&atLeastOnce{}).Name() {
			continue
		}
		if q.Lost == 0 && q.OrderViolations == 0 {
			t.Fatalf("%s: neither lost values nor reused message IDs after a power failure of disks that lied about fsync: the power nemesis or the checker does not bite", q.Source)
		}
		t.Logf("%s: the checker reports %d acknowledged values lost and %d order violations (message IDs handed out twice)", q.Source, q.Lost, q.OrderViolations)
	}
}

// TestCorruptionsHitTheNodesLogStore runs the corrupt-node nemesis's log
// corruptions on data dirs laid out as a wal node's and a bolt node's:
// each damages the store the node has and names the file the node's
// refusal must name.
func TestCorruptionsHitTheNodesLogStore(t *testing.T) {
	value := []byte("..at-least-once-p1-000042..")
	write := func(dir, rel string, data []byte) {
		t.Helper()
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	seg1, seg2 := "wal/00000000000000000001-0000000000000000.wal", "wal/00000000000000004097-0000000000000001.wal"
	walNode := t.TempDir()
	write(walNode, seg1, bytes.Repeat(value, 100))
	write(walNode, seg2, bytes.Repeat(value, 100))
	write(walNode, walMetaFile, make([]byte, 32<<10))
	boltNode := t.TempDir()
	write(boltNode, boltFile, bytes.Repeat(value, 100))
	env := &Env{Rand: rand.New(rand.NewPCG(1, 2))}

	for _, tc := range []struct {
		name    string
		fn      corruption
		dir     string
		wantRel string
	}{
		{"entries on the wal: the oldest segment hit", corruptLogEntries, walNode, seg1},
		{"truncated wal: the newest segment", truncateLog, walNode, seg2},
		{"truncated wal meta DB", truncateLogMeta, walNode, walMetaFile},
		{"entries in raft.db", corruptLogEntries, boltNode, boltFile},
		{"truncated raft.db", truncateLog, boltNode, boltFile},
		{"metadata of a bolt node: raft.db", truncateLogMeta, boltNode, boltFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := os.ReadFile(filepath.Join(tc.dir, tc.wantRel))
			what, rel, err := tc.fn(tc.dir, env)
			if err != nil {
				t.Fatal(err)
			}
			if rel != tc.wantRel {
				t.Fatalf("names %q, want %q (%s)", rel, tc.wantRel, what)
			}
			after, _ := os.ReadFile(filepath.Join(tc.dir, rel))
			if bytes.Equal(before, after) {
				t.Fatalf("%s unchanged after %q", rel, what)
			}
			t.Log(what)
		})
	}
	// Every segment that holds the value is hit, not only the one named.
	for _, seg := range []string{seg1, seg2} {
		b, _ := os.ReadFile(filepath.Join(walNode, seg))
		if bytes.Contains(b, value) {
			t.Errorf("%s still holds an intact copy of the value", seg)
		}
	}
}

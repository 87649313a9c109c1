package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// flipMiddleBits flips the lowest bit of the middle byte of every
// occurrence of pattern in path (a stopped node's file) and returns how
// many it hit.
func flipMiddleBits(t *testing.T, path string, pattern []byte) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for from := 0; ; {
		i := bytes.Index(data[from:], pattern)
		if i < 0 {
			break
		}
		data[from+i+len(pattern)/2] ^= 1
		from += i + len(pattern)
		n++
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return n
}

// receiveAll drains queue through node i and returns the bodies.
func receiveAll(t *testing.T, c *TestCluster, i int, queue string) []string {
	t.Helper()
	resp, err := quorumqpb.NewQueueClient(c.Conn(t, i)).Receive(ctxT(t, 10*time.Second),
		&quorumqpb.ReceiveRequest{Queue: queue, Max: 1000, AutoAck: true})
	if err != nil {
		t.Fatalf("receive from %s: %v", queue, err)
	}
	var bodies []string
	for _, d := range resp.GetDeliveries() {
		bodies = append(bodies, string(d.GetBody()))
	}
	return bodies
}

// TestCorruptLogEntryRefusedThenNodeReplaced flips a bit inside one log
// entry's command in a stopped follower's log store (raft.db, or the wal
// segment that holds it): the node refuses to start naming the file and
// the entry, the other two keep serving every value intact, and the
// operator's procedure (remove, wipe, rejoin) brings the node back through
// a snapshot install.
func TestCorruptLogEntryRefusedThenNodeReplaced(t *testing.T) {
	for _, kind := range []string{LogStoreWAL, LogStoreBolt} {
		t.Run(kind, func(t *testing.T) { corruptEntryThenReplace(t, kind) })
	}
}

func corruptEntryThenReplace(t *testing.T, kind string) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) {
		cfg.LogStore = kind
		cfg.TrailingLogs = 5
		cfg.SnapshotThreshold = 1 << 30
	})
	li := c.Index(c.Leader(t))
	var want []string
	for i := range 10 {
		b := fmt.Sprintf("value-%02d", i)
		want = append(want, b)
		enqueue(t, c, li, "q", b)
	}
	want = append(want, "CORRUPT-ME-PLEASE", "value-after")
	enqueue(t, c, li, "q", "CORRUPT-ME-PLEASE")
	// One more batch after it: a flipped bit in the last batch of a wal
	// tail is what a write torn by a crash looks like, and raft-wal drops
	// that batch at start instead of refusing (TestWALDropsATornLastBatch).
	enqueue(t, c, li, "q", "value-after")
	c.WaitReplicated(t)

	fi := follower(t, c)
	cfg := c.configs[fi]
	c.Kill(fi)
	files := []string{filepath.Join(cfg.DataDir, raftDBFile)}
	if kind == LogStoreWAL {
		files = segmentFiles(t, cfg.DataDir)
	}
	var dbPath string
	for _, f := range files {
		if flipMiddleBits(t, f, []byte("CORRUPT-ME-PLEASE")) > 0 {
			dbPath = f
		}
	}
	if dbPath == "" {
		t.Fatalf("the value is not in %v", files)
	}
	_, err := Start(context.Background(), cfg)
	if err == nil {
		t.Fatal("node started with a corrupt log entry")
	}
	if !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), dbPath) || !strings.Contains(err.Error(), "log entr") {
		t.Fatalf("start with a corrupt entry: %q; want ErrDataDir naming %s and the log entry", err, dbPath)
	}
	t.Logf("refused: %v", err)

	// The other two serve, and every value reaches the client intact.
	li = c.Index(c.Leader(t))
	want = append(want, "after")
	enqueue(t, c, li, "q", "after")
	if got := receiveAll(t, c, li, "q"); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("received %q, want %q", got, want)
	}
	for _, n := range c.Live() {
		if err := n.raft.Snapshot().Error(); err != nil {
			t.Fatalf("snapshot on %s: %v", n.ID(), err)
		}
	}

	// Replace: remove from the configuration, wipe the data dir, start it
	// again with --join under the same ID.
	cl := quorumqpb.NewClusterClient(c.Conn(t, li))
	if _, err := cl.RemoveServer(ctxT(t, 10*time.Second), &quorumqpb.RemoveServerRequest{Id: cfg.NodeID}); err != nil {
		t.Fatalf("RemoveServer %s: %v", cfg.NodeID, err)
	}
	if err := os.RemoveAll(cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	n := c.Restart(t, fi)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(strings.Join(voters(t, c.Leader(t)), ","), cfg.NodeID) {
		if time.Now().After(deadline) {
			t.Fatalf("%s not a voter again within 20 s: voters %v", cfg.NodeID, voters(t, c.Leader(t)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.WaitReplicated(t)
	if snaps, err := n.snaps.List(); err != nil || len(snaps) == 0 {
		t.Fatalf("replaced node has no snapshot (err %v): it did not catch up by InstallSnapshot", err)
	}
}

// TestCorruptSnapshotRefusesToStart flips a bit in a stopped node's
// snapshot state file.
func TestCorruptSnapshotRefusesToStart(t *testing.T) {
	c := StartTestCluster(t, 3)
	li := c.Index(c.Leader(t))
	// The queue's name is in state.bin (its queue record); its messages
	// and dedup IDs are in the segment files beside it.
	enqueue(t, c, li, "SNAPSHOT-QUEUE-0001", "v1", "v2")
	c.WaitReplicated(t)
	fi := follower(t, c)
	if err := c.Nodes[fi].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	snaps, err := c.Nodes[fi].snaps.List()
	if err != nil || len(snaps) != 1 {
		t.Fatalf("snapshots %v, %v: want one", snaps, err)
	}
	cfg := c.configs[fi]
	c.Kill(fi)
	state := filepath.Join(cfg.DataDir, "snapshots", snaps[0].ID, "state.bin")
	if n := flipMiddleBits(t, state, []byte("SNAPSHOT-QUEUE-0001")); n == 0 {
		t.Fatalf("queue name not found in %s", state)
	}
	_, err = Start(context.Background(), cfg)
	if !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), state) {
		t.Fatalf("start with a corrupt snapshot: %v; want ErrDataDir naming %s", err, state)
	}
	t.Logf("refused: %v", err)
}

func TestCheckedLogStoreRefusesCorruptEntries(t *testing.T) {
	good, err := fsm.Encode(&fsmpb.Command{NowUnixNano: 1})
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), good...)
	bad[len(bad)-1] ^= 0x10
	inner := raft.NewInmemStore()
	if err := inner.StoreLogs([]*raft.Log{
		{Index: 1, Term: 1, Type: raft.LogCommand, Data: good},
		{Index: 2, Term: 1, Type: raft.LogCommand, Data: bad},
		{Index: 3, Term: 1, Type: raft.LogNoop},
		{Index: 4, Term: 1, Type: raft.LogCommand, Data: fsm.CheckpointData()},
	}); err != nil {
		t.Fatal(err)
	}
	s := &checkedLogStore{LogStore: inner, path: "/data/raft.db"}
	var l raft.Log
	if err := s.GetLog(1, &l); err != nil {
		t.Fatalf("good entry: %v", err)
	}
	err = s.GetLog(2, &l)
	if !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), "/data/raft.db") || !strings.Contains(err.Error(), "log entry 2") {
		t.Fatalf("corrupt entry: %v; want ErrDataDir naming the file and entry 2", err)
	}
	if err := s.GetLog(3, &l); err != nil {
		t.Fatalf("noop entry: %v", err)
	}
	if err := s.GetLog(4, &l); err != nil {
		t.Fatalf("log-verification checkpoint: %v", err)
	}
	if err := s.GetLog(9, &l); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("missing entry: %v, want raft.ErrLogNotFound unchanged (raft sends a snapshot then)", err)
	}
}

// TestRandomBitFlipsInBoltFile flips random bits of a closed raft.db and
// runs the start-up checks on each copy: every outcome is either a clean
// pass with every entry intact or ErrDataDir naming the file; never a crash
// and never a wrong entry.
func TestRandomBitFlipsInBoltFile(t *testing.T) {
	dir := t.TempDir()
	orig := filepath.Join(dir, "orig.db")
	store, err := raftboltdb.New(raftboltdb.Options{Path: orig})
	if err != nil {
		t.Fatal(err)
	}
	var logs []*raft.Log
	for i := uint64(1); i <= 300; i++ {
		data, err := fsm.Encode(&fsmpb.Command{NowUnixNano: int64(i), Op: &fsmpb.Command_Enqueue{Enqueue: &fsmpb.Enqueue{
			Queue: "q", Messages: []*fsmpb.Message{{Body: bytes.Repeat([]byte{byte(i)}, 200)}}}}})
		if err != nil {
			t.Fatal(err)
		}
		logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: data})
	}
	if err := store.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	store.Close()
	content, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]int{}
	examples := map[string]string{}
	rng := rand.New(rand.NewPCG(7, 7))
	for round := range 40 {
		data := append([]byte(nil), content...)
		for range 4 {
			data[rng.IntN(len(data))] ^= 1 << rng.IntN(8)
		}
		path := filepath.Join(dir, fmt.Sprintf("r%d.db", round))
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		err := checkCopy(path, logs)
		switch {
		case err == nil:
			outcomes["intact"]++
		case errors.Is(err, ErrDataDir) && strings.Contains(err.Error(), path):
			outcomes[errKind(err)]++
			examples[errKind(err)] = err.Error()
		default:
			t.Fatalf("round %d: %v; want ErrDataDir naming %s", round, err, path)
		}
	}
	t.Logf("40 copies with 4 random bit flips each: %v", outcomes)
	for k, e := range examples {
		t.Logf("%s, e.g. %s", k, e)
	}
}

// checkCopy runs the start-up checks a node runs on path and compares
// every entry with want.
func checkCopy(path string, want []*raft.Log) error {
	if err := checkBoltFile(path); err != nil {
		return err
	}
	if err := checkBoltPages(path); err != nil {
		return err
	}
	var store *raftboltdb.BoltStore
	err := faultsAsErrors(path, func() error {
		var err error
		store, err = raftboltdb.New(raftboltdb.Options{Path: path})
		return err
	})
	if err != nil {
		return fmt.Errorf("%w: open %s: %v", ErrDataDir, path, err)
	}
	defer store.Close()
	if err := verifyLog(store, path, 0, nil); err != nil {
		return err
	}
	for _, w := range want {
		var l raft.Log
		if err := store.GetLog(w.Index, &l); err != nil || !bytes.Equal(l.Data, w.Data) {
			return fmt.Errorf("entry %d passed the checks but differs from what was written (err %v)", w.Index, err)
		}
	}
	return nil
}

// errKind names which check refused a file, for the test log.
func errKind(err error) string {
	msg := err.Error()
	for _, k := range []string{"bbolt check", "reading it failed", "batch of log entries", "frames after log entry", "log entry", "meta page", "truncated", "not a valid bolt", "open"} {
		if strings.Contains(msg, k) {
			return "refused: " + k
		}
	}
	return "refused: other"
}

// TestVerifyLogAcceptsTheGapASnapshotInstallLeaves: after a follower
// installs a snapshot it keeps its older entries and appends after the
// snapshot's index, so its log has a hole below that index. That is
// hashicorp/raft's normal state, not corruption (the fault suite's kill-one
// case hit it: a restarted node refused its own healthy data dir). A hole
// above the newest snapshot is still refused.
func TestVerifyLogAcceptsTheGapASnapshotInstallLeaves(t *testing.T) {
	cmd, err := fsm.Encode(&fsmpb.Command{Op: &fsmpb.Command_Tick{Tick: &fsmpb.Tick{}}})
	if err != nil {
		t.Fatal(err)
	}
	store := raft.NewInmemStore()
	var logs []*raft.Log
	for _, i := range []uint64{5, 6, 7, 20, 21, 22} {
		logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: cmd})
	}
	if err := store.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := verifyLog(store, "/data/raft.db", 19, nil); err != nil {
		t.Fatalf("log 5-7, 20-22 with a snapshot at 19: %v; want accepted", err)
	}
	err = verifyLog(store, "/data/raft.db", 6, nil)
	if !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), "log entry 8 is missing") {
		t.Fatalf("the same log with the newest snapshot at 6: %v; want entry 8 missing", err)
	}
}

package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/transport/raftnet"
)

// heldSnapshot is a snapshot read out of a node's store: the metadata and
// bytes a leader's replication sends in an InstallSnapshot RPC.
type heldSnapshot struct {
	meta *raft.SnapshotMeta
	data []byte
}

// takeSnapshot snapshots node n and reads the snapshot back.
func takeSnapshot(t *testing.T, n *Node) heldSnapshot {
	t.Helper()
	f := n.raft.Snapshot()
	if err := f.Error(); err != nil {
		t.Fatalf("snapshot on %s: %v", n.ID(), err)
	}
	meta, rc, err := f.Open()
	if err != nil {
		t.Fatalf("open snapshot on %s: %v", n.ID(), err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read snapshot %s: %v", meta.ID, err)
	}
	return heldSnapshot{meta: meta, data: data}
}

// sendSnapshot delivers s to node to as an InstallSnapshot RPC from leader,
// in leader's current term, over a Raft transport of its own: the RPC a
// replication goroutine of leader sends when it has no log to offer. It
// returns the error the node answered with.
func sendSnapshot(t *testing.T, leader, to *Node, s heldSnapshot) error {
	t.Helper()
	layer, err := raftnet.Listen(raftnet.Config{Bind: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: layer, MaxPool: 1, Timeout: 10 * time.Second, Logger: hclogFor(testLogger(), "raft-net"),
	})
	defer trans.Close()
	req := &raft.InstallSnapshotRequest{
		RPCHeader:          raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(leader.ID()), Addr: []byte(leader.RaftAddr())},
		SnapshotVersion:    s.meta.Version,
		Term:               leader.raft.CurrentTerm(),
		Leader:             []byte(leader.RaftAddr()),
		LastLogIndex:       s.meta.Index,
		LastLogTerm:        s.meta.Term,
		Configuration:      raft.EncodeConfiguration(s.meta.Configuration),
		ConfigurationIndex: s.meta.ConfigurationIndex,
		Size:               s.meta.Size,
	}
	var resp raft.InstallSnapshotResponse
	if err := trans.InstallSnapshot(raft.ServerID(to.ID()), raft.ServerAddress(to.RaftAddr()), req, &resp, bytes.NewReader(s.data)); err != nil {
		return err
	}
	if !resp.Success {
		return fmt.Errorf("InstallSnapshot answered Success=false without an error (term %d, request term %d)", resp.Term, req.Term)
	}
	return nil
}

// newestSnapshot is the index of the newest snapshot in n's store (0: none).
func newestSnapshot(t *testing.T, n *Node) uint64 {
	t.Helper()
	list, err := n.snaps.List()
	if err != nil {
		t.Fatalf("list snapshots of %s: %v", n.ID(), err)
	}
	if len(list) == 0 {
		return 0
	}
	return list[0].Index
}

// checkRefusedOlder asserts that err is the refusal of a snapshot at
// index older, naming the index.
func checkRefusedOlder(t *testing.T, err error, node string, older uint64) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s installed the snapshot at index %d; want it refused", node, older)
	case !strings.Contains(err.Error(), fmt.Sprintf("snapshot at index %d", older)):
		t.Errorf("%s refused the snapshot at index %d with %q; want an error naming it", node, older, err)
	default:
		t.Logf("refused: %v", err)
	}
}

// TestReplacedNodeRefusesAnOlderSnapshot plays hashicorp/raft#697 as the
// fault suite's corrupt-node case met it: a wiped node rejoins, installs
// the leader's newest snapshot and compacts its log, and then an older
// snapshot arrives, sent by the leader's replication to the node's previous
// incarnation. Installed, it rewinds the node to an index whose following
// entries its log no longer has, and raft panics ("log not found") at the
// next commit. The node must refuse it and keep serving.
func TestReplacedNodeRefusesAnOlderSnapshot(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) {
		cfg.TrailingLogs = 5 // compact aggressively so the rejoined node needs a snapshot
		cfg.SnapshotThreshold = 1 << 30
	})
	leader := c.Leader(t)
	li := c.Index(leader)
	enqueue(t, c, li, "q", "a", "b")
	older := takeSnapshot(t, leader)
	for i := range 20 {
		enqueue(t, c, li, "q", fmt.Sprintf("m%02d", i))
	}
	newer := takeSnapshot(t, leader)

	n := replaceNode(t, c, follower(t, c))
	c.WaitReplicated(t)
	if got := newestSnapshot(t, n); got < newer.meta.Index {
		t.Fatalf("replaced %s holds a snapshot at %d, want the leader's at %d or later: it did not rejoin by InstallSnapshot", n.ID(), got, newer.meta.Index)
	}
	if !leader.IsLeader() {
		t.Fatalf("leadership moved from %s; the stale RPC is sent in its term", leader.ID())
	}
	applied := n.AppliedIndex()

	err := sendSnapshot(t, leader, n, older)
	checkRefusedOlder(t, err, n.ID(), older.meta.Index)
	if got := n.AppliedIndex(); got < applied {
		t.Errorf("%s rewound from applied index %d to %d", n.ID(), applied, got)
	}
	if got := newestSnapshot(t, n); got < newer.meta.Index {
		t.Errorf("%s's newest snapshot is at %d after the refusal, was %d or later", n.ID(), got, newer.meta.Index)
	}

	// The node lives on: it applies the next commits and snapshots again.
	enqueue(t, c, li, "q", "after")
	c.WaitReplicated(t)
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Errorf("snapshot on %s after the refusal: %v", n.ID(), err)
	}
	if info, err := n.fsm.Queue("q"); err != nil || info.GetStats().GetReady() != 23 {
		t.Errorf("%s's queue q after the refusal: %v (err %v), want 23 ready", n.ID(), info.GetStats(), err)
	}
}

// TestFollowerRefusesASnapshotOlderThanItsState: a follower that caught up
// through the log holds no snapshot, so its log has no hole to fall into,
// but installing an older snapshot still rewinds its state and its view of
// the configuration (raft takes the snapshot's, and configuration entries
// after it in the log are not read again). The follower refuses it.
func TestFollowerRefusesASnapshotOlderThanItsState(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) {
		cfg.SnapshotThreshold = 1 << 30
	})
	leader := c.Leader(t)
	li := c.Index(leader)
	enqueue(t, c, li, "q", "a")
	older := takeSnapshot(t, leader)
	enqueue(t, c, li, "q", "b", "c")
	c.WaitReplicated(t)
	n := c.Nodes[follower(t, c)]
	if got := newestSnapshot(t, n); got != 0 {
		t.Fatalf("follower %s holds a snapshot at %d; this test is about one that holds none", n.ID(), got)
	}
	applied := n.AppliedIndex()

	err := sendSnapshot(t, leader, n, older)
	checkRefusedOlder(t, err, n.ID(), older.meta.Index)
	if got := n.AppliedIndex(); got < applied {
		t.Errorf("%s rewound from applied index %d to %d", n.ID(), applied, got)
	}
	if got := newestSnapshot(t, n); got != 0 {
		t.Errorf("%s stored the refused snapshot (newest at %d)", n.ID(), got)
	}
	enqueue(t, c, li, "q", "d")
	c.WaitReplicated(t)
}

// appliedAt is a fixed applied index, standing in for raft's.
type appliedAt uint64

func (a appliedAt) AppliedIndex() uint64 { return uint64(a) }

// TestSnapshotStoreKeepsOwnSnapshotsBehindTheAppliedIndex: raft takes the
// node's own snapshot at an index its FSM has passed by the time the
// snapshot is closed (applies go on while Persist writes). Those are kept;
// a received snapshot at the same kind of index is refused, and so is any
// snapshot below the newest held.
func TestSnapshotStoreKeepsOwnSnapshotsBehindTheAppliedIndex(t *testing.T) {
	dir := t.TempDir()
	files, err := raft.NewFileSnapshotStore(dir, 3, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	store := &snapshotStore{FileSnapshotStore: files, dir: filepath.Join(dir, "snapshots")}
	store.follow(appliedAt(10))
	own, err := observedFSM{FSM: fsm.New(), m: newMetrics(&Node{}), budget: newLogBudget(defaultSnapshotBytes)}.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	conf := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: "n1", Address: "127.0.0.1:1"}}}
	_, trans := raft.NewInmemTransport("127.0.0.1:1") // the file store encodes the peers through it
	create := func(index uint64) (raft.SnapshotSink, error) {
		return store.Create(raft.SnapshotVersionMax, index, 1, conf, 1, trans)
	}

	sink, err := create(8)
	if err != nil {
		t.Fatalf("create at 8 with nothing held: %v", err)
	}
	if err := own.Persist(sink); err != nil {
		t.Fatalf("own snapshot at 8, applied 10: %v; want kept", err)
	}

	received, err := create(9)
	if err != nil {
		t.Fatalf("create at 9 with 8 held: %v", err)
	}
	if _, err := received.Write([]byte("state")); err != nil {
		t.Fatal(err)
	}
	if err := received.Close(); !errors.Is(err, errOlderSnapshot) || !strings.Contains(err.Error(), "applied, at index 10") {
		t.Fatalf("received snapshot at 9, applied 10: closed with %v; want refused naming the applied index", err)
	}

	if _, err := create(7); !errors.Is(err, errOlderSnapshot) || !strings.Contains(err.Error(), "holds, at index 8") {
		t.Fatalf("create at 7 with 8 held: %v; want refused naming the held snapshot", err)
	}

	received, err = create(11)
	if err != nil {
		t.Fatalf("create at 11: %v", err)
	}
	if err := received.Close(); err != nil {
		t.Fatalf("received snapshot at 11, applied 10: %v; want kept", err)
	}
	list, err := store.List()
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, m := range list {
		got = append(got, m.Index)
	}
	if fmt.Sprint(got) != "[11 8]" {
		t.Fatalf("store holds snapshots at %v, want [11 8]", got)
	}
}

// A stop in the middle of a snapshot leaves raft's "<id>.tmp" directory
// with a checkpoint of the body store in it: hard links that keep every
// sstable they name on disk. raft never deletes it; the node does, at its
// next start, and leaves its finished snapshots alone.
func TestUnfinishedSnapshotIsRemovedAtStart(t *testing.T) {
	c := StartTestCluster(t, 3)
	leader := c.Leader(t)
	enqueue(t, c, c.Index(leader), "q", "a", "b")
	c.WaitReplicated(t)
	i := (c.Index(leader) + 1) % 3
	n := c.Nodes[i]
	done := takeSnapshot(t, n).meta.ID
	snapDir := filepath.Join(n.cfg.DataDir, "snapshots")
	unfinished := filepath.Join(snapDir, "2-999-1796450000000.tmp")
	cp, err := n.bodies.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(unfinished, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := cp.Write(filepath.Join(unfinished, checkpointDir)); err != nil {
		t.Fatal(err)
	}
	cp.Release()
	c.Kill(i)
	c.Restart(t, i)
	if _, err := os.Stat(unfinished); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unfinished snapshot after the restart: %v, want it removed", err)
	}
	if _, err := os.Stat(filepath.Join(snapDir, done)); err != nil {
		t.Fatalf("finished snapshot %s: %v", done, err)
	}
	c.WaitReplicated(t)
}

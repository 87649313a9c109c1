package cluster

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// A node's snapshot refers to a checkpoint of its body store instead of
// carrying the bodies: raft's state.bin holds the index, whatever the
// backlog, and the bodies are hard links to the store's files. A restart
// links those files back into the store instead of writing every body
// again, and serves every body, from the snapshot's part and from the log
// after it, with equal state hashes on every node.
func TestSnapshotRefersToACheckpointOfTheStore(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.TickInterval = time.Hour })
	li := c.Index(c.Leader(t))
	const (
		size = 16 << 10
		n    = 600 // 9.4 MiB of bodies
	)
	enqueueBodies(t, c, li, "q", 0, n, size)
	c.WaitReplicated(t)
	for _, node := range c.Live() {
		if err := node.raft.Snapshot().Error(); err != nil {
			t.Fatalf("snapshot on %s: %v", node.ID(), err)
		}
	}
	for i, node := range c.Nodes {
		list, err := node.snaps.List()
		if err != nil || len(list) == 0 {
			t.Fatalf("node %d: no snapshot (err %v)", i, err)
		}
		dir := filepath.Join(c.configs[i].DataDir, "snapshots", list[0].ID)
		st, err := os.Stat(filepath.Join(dir, "state.bin"))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("node %d: state.bin of snapshot %s is %d bytes with %d MiB of bodies queued", i, list[0].ID, st.Size(), n*size>>20)
		if st.Size() > 1<<20 {
			t.Fatalf("node %d: state.bin is %d bytes: the snapshot copies the bodies instead of referring to the store", i, st.Size())
		}
	}
	// After the snapshot: more messages, and acks of some of the first.
	enqueueBodies(t, c, li, "q", n, 40, size)
	receiveAndAck(t, c, li, "q", 10)
	c.WaitReplicated(t)
	restartAll(t, c)
	for i := range c.Nodes {
		checkPeekBodies(t, c, i, "q", 10, n+30, size)
		if linked := linkedFiles(t, filepath.Join(c.configs[i].DataDir, bodyStoreDir)); linked == 0 {
			t.Fatalf("node %d: no file of the restarted store is shared with the snapshot's checkpoint: the start rewrote the bodies", i)
		}
	}
}

// receiveAndAck receives the first n messages of queue through node i and
// acks them.
func receiveAndAck(t *testing.T, c *TestCluster, i int, queue string, n int) {
	t.Helper()
	q := quorumqpb.NewQueueClient(c.Conn(t, i))
	resp, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: queue, Max: uint32(n), VisibilityNs: int64(time.Minute)})
	if err != nil || len(resp.GetDeliveries()) != n {
		t.Fatalf("receive: %v (%d deliveries, want %d)", err, len(resp.GetDeliveries()), n)
	}
	var receipts []*fsmpb.Receipt
	for _, d := range resp.GetDeliveries() {
		receipts = append(receipts, d.GetReceipt())
	}
	if _, err := q.Ack(ctxT(t, 10*time.Second), &quorumqpb.AckRequest{Queue: queue, Receipts: receipts}); err != nil {
		t.Fatalf("ack: %v", err)
	}
}

// linkedFiles counts the sstables in dir that have more than one link.
func linkedFiles(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if filepath.Ext(e.Name()) != ".sst" {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
			n++
		}
	}
	return n
}

package cluster

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// The Raft log is bounded in bytes as well as in entries: a node snapshots
// once the entries it applied since its last snapshot pass SnapshotBytes,
// followers included, and keeps about TrailingBytes of log after it. Large
// entries (a producer's batches of hundreds of messages) would otherwise
// pass raft's entry counts only after gigabytes, all of which a restart
// reads and replays.
func TestLogBoundedInBytes(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) {
		cfg.TickInterval = time.Hour
		cfg.SnapshotBytes = 1 << 20
		cfg.TrailingBytes = 1 << 20
	})
	li := c.Index(c.Leader(t))
	const size = 8 << 10
	enqueueBodies(t, c, li, "q", 0, 2048, size) // 16 MiB in 64 entries of 256 KiB
	c.WaitReplicated(t)
	deadline := time.Now().Add(10 * time.Second)
	for i, n := range c.Nodes {
		for {
			list, err := n.snaps.List()
			if err != nil {
				t.Fatal(err)
			}
			first, err := n.logs.FirstIndex()
			if err != nil {
				t.Fatal(err)
			}
			last, err := n.logs.LastIndex()
			if err != nil {
				t.Fatal(err)
			}
			// 1 MiB of 256 KiB entries is 4: raft keeps minTrailingLogs
			// (16) after the snapshot, and at most 4 more came since.
			if len(list) > 0 && last-first+1 <= minTrailingLogs+5 {
				t.Logf("node %d: snapshot at index %d, log %d..%d", i, list[0].Index, first, last)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d: %d snapshots, log %d..%d after 16 MiB of entries with a 1 MiB budget", i, len(list), first, last)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// A drained queue gives its disk back: the store flushes the deletes of a
// drain (which never fill a memtable), its compactions drop the files they
// cover, and a new snapshot lets the checkpoint that still linked them go.
func TestDrainedStoreGivesItsSpaceBack(t *testing.T) {
	c := StartTestClusterWith(t, 1, func(_ int, cfg *Config) {
		cfg.TickInterval = 100 * time.Millisecond
		cfg.storeCheck = 200 * time.Millisecond
	})
	n := c.Nodes[0]
	const (
		size  = 16 << 10
		count = 1024 // 16 MiB
	)
	q := quorumqpb.NewQueueClient(c.Conn(t, 0))
	r := rand.New(rand.NewPCG(1, 2))
	for lo := 0; lo < count; lo += 32 {
		req := &quorumqpb.EnqueueRequest{Queue: "q"}
		for range 32 {
			b := make([]byte, size)
			for i := range b {
				b[i] = byte(r.Uint32()) // incompressible, as pebble compresses
			}
			req.Messages = append(req.Messages, &fsmpb.Message{Body: b})
		}
		if _, err := q.Enqueue(ctxT(t, 10*time.Second), req); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	full := n.bodies.diskBytes() + n.snapStore.pinnedBytes()
	for got := 0; got < count; {
		resp, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "q", Max: 100, AutoAck: true})
		if err != nil {
			t.Fatal(err)
		}
		got += len(resp.GetDeliveries())
	}
	// Drained: the store is small, and what only the newest snapshot's
	// checkpoint still holds is at most what storeLoop leaves there
	// without asking for a new snapshot (minPinnedBytes, or a quarter of
	// the store): a snapshot taken during the drain may keep that much
	// until the next one.
	deadline := time.Now().Add(20 * time.Second)
	for {
		store, pinned := n.bodies.diskBytes(), n.snapStore.pinnedBytes()
		if store < full/8 && pinned <= max(minPinnedBytes, store/4) {
			t.Logf("store and checkpoint-only files: %d bytes with 16 MiB queued; %d + %d drained", full, store, pinned)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("drained for 20 s: store %d bytes, %d only in the checkpoint; %d when 16 MiB were queued", store, pinned, full)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

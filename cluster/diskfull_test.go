package cluster

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// fullDiskLogStore fails StoreLogs with ENOSPC while full is set, as
// raft-boltdb does when its file cannot grow. A refusal takes about as
// long as a write (bolt writes and syncs pages before the one that does
// not fit), so the leader's next batches are on their way meanwhile.
// Reads and the stable store are untouched: a full disk still reads.
type fullDiskLogStore struct {
	raft.LogStore
	full   atomic.Bool
	failed atomic.Int64 // StoreLogs calls refused
}

// IsMonotonic passes the store's answer through, as every wrapper must.
func (s *fullDiskLogStore) IsMonotonic() bool { return monotonic(s.LogStore) }

func (s *fullDiskLogStore) StoreLog(l *raft.Log) error {
	return s.StoreLogs([]*raft.Log{l})
}

func (s *fullDiskLogStore) StoreLogs(logs []*raft.Log) error {
	if s.full.Load() {
		s.failed.Add(1)
		time.Sleep(5 * time.Millisecond)
		return fmt.Errorf("write the log: %w", syscall.ENOSPC)
	}
	return s.LogStore.StoreLogs(logs)
}

// fullDiskCluster starts three nodes, each on a fullDiskLogStore, with
// tweak (if not nil) applied to each node's Config.
func fullDiskCluster(t *testing.T, tweak func(i int, cfg *Config)) (*TestCluster, []*fullDiskLogStore) {
	disks := make([]*fullDiskLogStore, 3)
	c := StartTestClusterWith(t, 3, func(i int, cfg *Config) {
		if tweak != nil {
			tweak(i, cfg)
		}
		cfg.wrapLogStore = func(s raft.LogStore) raft.LogStore {
			disks[i] = &fullDiskLogStore{LogStore: s}
			return disks[i]
		}
	})
	return c, disks
}

// TestFollowerCatchesUpAfterItsDiskWasFull fills one follower's disk while
// producers keep the leader replicating, then frees it. The follower
// answers every AppendEntries of that window with Success=false; once its
// writes succeed again it must reach the leader's commit index and the
// same state, with every acknowledged message kept.
func TestFollowerCatchesUpAfterItsDiskWasFull(t *testing.T) {
	c, disks := fullDiskCluster(t, nil)
	leader := c.Leader(t)
	li := c.Index(leader)
	fi := (li + 1) % 3
	follower := c.Nodes[fi]
	qc := quorumqpb.NewQueueClient(c.Conn(t, li))

	// Bounded load: producers, each with one batch in flight, until stop
	// (at most maxSends each). Concurrent batches keep several
	// AppendEntries in flight to every follower.
	const producers, batch, maxSends = 8, 4, 5000
	var acked, unknown atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < maxSends; i++ {
				select {
				case <-stop:
					return
				default:
				}
				req := &quorumqpb.EnqueueRequest{Queue: "jobs"}
				for j := range batch {
					req.Messages = append(req.Messages, &fsmpb.Message{Body: []byte("x"), DedupId: fmt.Sprintf("p%d-%d-%d", p, i, j)})
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := qc.Enqueue(ctx, req)
				cancel()
				if err != nil {
					unknown.Add(batch)
					continue
				}
				acked.Add(batch)
			}
		}()
	}

	time.Sleep(time.Second)
	disks[fi].full.Store(true)
	time.Sleep(3 * time.Second)
	disks[fi].full.Store(false)
	freed := time.Now()
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if disks[fi].failed.Load() == 0 {
		t.Fatalf("%s refused no write while its disk was full: the test exercised nothing", follower.ID())
	}
	t.Logf("%s refused %d appends; %d messages acknowledged, %d unknown", follower.ID(), disks[fi].failed.Load(), acked.Load(), unknown.Load())

	target := leader.raft.CommitIndex()
	for follower.AppliedIndex() < target {
		if time.Since(freed) > 15*time.Second {
			t.Fatalf("%s applied index %d, leader's commit index %d: not caught up 15 s after its disk was freed (leader applied %d)",
				follower.ID(), follower.AppliedIndex(), target, leader.AppliedIndex())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%s caught up with commit index %d %v after its disk was freed", follower.ID(), target, time.Since(freed).Round(time.Millisecond))
	c.WaitReplicated(t)

	for _, n := range c.Nodes {
		info, err := n.fsm.Queue("jobs")
		if err != nil {
			t.Fatalf("%s: %v", n.ID(), err)
		}
		ready := int64(info.GetStats().GetReady())
		if ready < acked.Load() || ready > acked.Load()+unknown.Load() {
			t.Errorf("%s holds %d messages; %d were acknowledged and %d had an unknown outcome", n.ID(), ready, acked.Load(), unknown.Load())
		}
	}
}

package cluster

import (
	"testing"
	"time"
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

package cluster

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/raft-wal/verifier"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// verifyCounts is what node n's log verifier has counted so far.
func verifyCounts(n *Node) (ranges, readFailures, writeFailures uint64) {
	ranges, readFailures, writeFailures, _ = n.verify.counts()
	return ranges, readFailures, writeFailures
}

// waitVerified waits until every node in nodes has verified at least
// ranges log ranges.
func waitVerified(t *testing.T, nodes []*Node, ranges uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range nodes {
		for {
			got, _, _ := verifyCounts(n)
			if got >= ranges {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s verified %d log ranges, want at least %d", n.ID(), got, ranges)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// clusterStatus is `quorumq status`'s view: the Status call through node i.
func clusterStatus(t *testing.T, c *TestCluster, i int) map[string]*quorumqpb.NodeStatus {
	t.Helper()
	resp, err := quorumqpb.NewClusterClient(c.Conn(t, i)).Status(ctxT(t, 10*time.Second), &quorumqpb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*quorumqpb.NodeStatus{}
	for _, s := range resp.GetNodes() {
		out[s.GetId()] = s
	}
	return out
}

// TestLogVerificationHealthyCluster: with checkpoints every 100 ms under
// load, every node verifies range after range and finds no mismatch, on
// either log store; the checkpoints leave the replicas' state equal, and
// a node whose log holds them passes the start-up checks and catches up.
func TestLogVerificationHealthyCluster(t *testing.T) {
	for _, kind := range []string{LogStoreWAL, LogStoreBolt} {
		t.Run(kind, func(t *testing.T) { healthyLogVerification(t, kind) })
	}
}

func healthyLogVerification(t *testing.T, kind string) {
	c := StartTestClusterWith(t, 3, func(i int, cfg *Config) {
		cfg.LogVerifyInterval = 100 * time.Millisecond
		cfg.LogStore = kind
	})
	li := c.Index(c.Leader(t))
	for i := range 40 {
		enqueue(t, c, li, "q", strings.Repeat("m", i+1))
		time.Sleep(10 * time.Millisecond)
	}
	waitVerified(t, c.Nodes, 4)
	c.WaitReplicated(t)
	for _, n := range c.Nodes {
		ranges, reads, writes := verifyCounts(n)
		if reads != 0 || writes != 0 {
			t.Errorf("%s: %d read and %d write checksum failures in %d ranges of a healthy log", n.ID(), reads, writes, ranges)
		}
	}
	for id, s := range clusterStatus(t, c, li) {
		if s.GetLogRangesVerified() < 4 || s.GetLogReadMismatches() != 0 || s.GetLogWriteMismatches() != 0 || s.GetLogVerifyError() != "" {
			t.Errorf("status of %s: %d ranges verified, %d read / %d write mismatches, error %q; want at least 4 ranges and no mismatch",
				id, s.GetLogRangesVerified(), s.GetLogReadMismatches(), s.GetLogWriteMismatches(), s.GetLogVerifyError())
		}
	}
	fi := (li + 1) % 3
	c.Shutdown(t, fi)
	enqueue(t, c, li, "q", "while-down")
	c.Restart(t, fi)
	c.WaitReplicated(t)
}

// flipByteAt flips one bit in the middle of the only occurrence of
// pattern in the file at path, in place (one write of one byte, as a
// failing disk would change it underneath a running process).
func flipByteAt(t *testing.T, path string, pattern []byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(data, pattern)
	if i < 0 || bytes.Contains(data[i+1:], pattern) {
		t.Fatalf("%s holds %q %d times, want once", path, pattern, bytes.Count(data, pattern))
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	at := int64(i + len(pattern)/2)
	if _, err := f.WriteAt([]byte{data[at] ^ 0x10}, at); err != nil {
		t.Fatal(err)
	}
}

// TestLogVerificationDetectsAFlippedBitOnAFollower flips a bit in an
// entry a running follower has written to its wal segment, after it
// wrote it and before the next checkpoint: when the leader's checkpoint
// arrives, the follower reads the range back from disk, its checksum
// differs from the leader's, and the mismatch shows as a read (storage)
// corruption in its metrics and in the cluster status, without a
// restart. The leader and the other follower find nothing.
func TestLogVerificationDetectsAFlippedBitOnAFollower(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(i int, cfg *Config) {
		cfg.LogVerifyInterval = time.Hour // checkpoints only where the test appends them
		cfg.AdminAddr = "127.0.0.1:0"
	})
	leader := c.Leader(t)
	li := c.Index(leader)
	fi := (li + 1) % 3
	follower := c.Nodes[fi]
	ctx := ctxT(t, 20*time.Second)

	enqueue(t, c, li, "q", "before")
	if err := leader.appendCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	waitVerified(t, c.Nodes, 1)

	needle := "needle-5d1c0b7e9a2f4463"
	qc := quorumqpb.NewQueueClient(c.Conn(t, li))
	if _, err := qc.Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "q", Messages: []*fsmpb.Message{{Body: []byte(needle), DedupId: "n"}}}); err != nil {
		t.Fatal(err)
	}
	c.WaitReplicated(t)
	segs := segmentFiles(t, c.configs[fi].DataDir)
	flipByteAt(t, segs[len(segs)-1], []byte(needle))

	if err := leader.appendCheckpoint(ctx); err != nil {
		t.Fatal(err)
	}
	waitVerified(t, c.Nodes, 2)
	for _, n := range c.Nodes {
		_, reads, writes := verifyCounts(n)
		switch {
		case n == follower && (reads != 1 || writes != 0):
			t.Errorf("%s, whose segment was flipped: %d read and %d write checksum failures, want 1 read failure", n.ID(), reads, writes)
		case n != follower && (reads != 0 || writes != 0):
			t.Errorf("%s: %d read and %d write checksum failures, want none", n.ID(), reads, writes)
		}
	}
	st := clusterStatus(t, c, li)
	fs := st[follower.ID()]
	if fs.GetLogReadMismatches() != 1 || !strings.Contains(fs.GetLogVerifyError(), "storage corruption") {
		t.Errorf("status of %s: %d read mismatches, error %q; want 1 and the storage corruption named", follower.ID(), fs.GetLogReadMismatches(), fs.GetLogVerifyError())
	}
	if ls := st[leader.ID()]; ls.GetLogReadMismatches() != 0 || ls.GetLogVerifyError() != "" {
		t.Errorf("status of leader %s: %d read mismatches, error %q; want none", leader.ID(), ls.GetLogReadMismatches(), ls.GetLogVerifyError())
	}
	m := scrape(t, follower.AdminAddr())
	if m["quorumq_log_verifier_read_checksum_failures_total"] != 1 || m["quorumq_log_verifier_write_checksum_failures_total"] != 0 || m["quorumq_log_verifier_ranges_verified_total"] < 2 {
		t.Errorf("metrics of %s: read failures %v, write failures %v, ranges verified %v; want 1, 0 and at least 2", follower.ID(),
			m["quorumq_log_verifier_read_checksum_failures_total"], m["quorumq_log_verifier_write_checksum_failures_total"], m["quorumq_log_verifier_ranges_verified_total"])
	}
}

// TestLogVerificationAfterAConflictingSuffix: a follower that held
// entries of an old leader deletes them when the new leader's conflict
// (raft deletes the suffix) and writes the new leader's instead. What it
// wrote since the last checkpoint then differs from the leader's range
// without anything being corrupt: the range is verified by reading it
// back, not reported as in-flight corruption. A store that corrupts
// nothing reports no mismatch.
func TestLogVerificationAfterAConflictingSuffix(t *testing.T) {
	reports := make(chan verifier.VerificationReport, 4)
	newStore := func() *logVerification {
		v := newLogVerification(raft.NewInmemStore(), func(uint64) string { return "mem" }, t.Logf, t.Logf, t.Logf)
		v.onReport = func(r verifier.VerificationReport) { reports <- r }
		return v
	}
	leader, follower := newStore(), newStore()
	entry := func(i, term uint64, data string) *raft.Log {
		return &raft.Log{Index: i, Term: term, Type: raft.LogCommand, Data: []byte(data)}
	}
	store := func(v *logVerification, logs ...*raft.Log) {
		if err := v.store.StoreLogs(logs); err != nil {
			t.Fatal(err)
		}
	}
	// Both saw a checkpoint at 2; the follower then took 3 and 4 from a
	// leader of term 1 that lost them.
	for _, v := range []*logVerification{leader, follower} {
		store(v, entry(1, 1, "a"), &raft.Log{Index: 2, Term: 1, Type: raft.LogCommand, Data: fsm.CheckpointData()})
		<-reports
	}
	store(follower, entry(3, 1, "lost"), entry(4, 1, "lost too"))
	store(leader, entry(3, 2, "b"), entry(4, 2, "c"))
	cp := &raft.Log{Index: 5, Term: 2, Type: raft.LogCommand, Data: fsm.CheckpointData()}
	store(leader, cp)
	if r := <-reports; r.Err != nil {
		t.Fatalf("leader: %v", r.Err)
	}
	if err := follower.store.DeleteRange(3, 4); err != nil {
		t.Fatal(err)
	}
	cpCopy := *cp
	store(follower, entry(3, 2, "b"), entry(4, 2, "c"), &cpCopy)
	r := <-reports
	if r.Err != nil {
		t.Fatalf("follower after a conflicting suffix: %v", r.Err)
	}
	if r.ReadSum != r.ExpectedSum {
		t.Fatalf("follower read sum %x, leader's %x: the range was not read back", r.ReadSum, r.ExpectedSum)
	}
	if _, reads, writes, last := follower.counts(); reads != 0 || writes != 0 || last != "" {
		t.Fatalf("follower counts %d read and %d write mismatches (%q)", reads, writes, last)
	}
}

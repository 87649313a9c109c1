package cluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// smallDisks mounts a tmpfs of size bytes for each of n nodes and returns
// their mount points; they are unmounted after the test's cluster has
// stopped. The test is skipped when this process cannot mount.
func smallDisks(t *testing.T, n int, size int64) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test mounts a small tmpfs under each node's data dir")
	}
	base := t.TempDir()
	var dirs []string
	for i := range n {
		dir := filepath.Join(base, fmt.Sprintf("disk%d", i+1))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
			t.Skipf("cannot mount a tmpfs on %s (needs CAP_SYS_ADMIN): %v", dir, err)
		}
		t.Cleanup(func() {
			if err := syscall.Unmount(dir, 0); err != nil {
				syscall.Unmount(dir, syscall.MNT_DETACH)
				t.Errorf("unmount %s: %v", dir, err)
			}
		})
		dirs = append(dirs, dir)
	}
	return dirs
}

// freeBytes is what statfs says dir's file system has available.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// fillTo writes path until dir's file system has at most leave bytes free.
func fillTo(t *testing.T, dir, path string, leave int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for free := freeBytes(t, dir); free > leave; free = freeBytes(t, dir) {
		if _, err := f.Write(buf[:min(int64(len(buf)), free-leave)]); err != nil {
			t.Fatalf("fill %s: %v", path, err)
		}
	}
}

// TestEnqueuesAreRefusedWhileTheLeadersDiskIsLow runs three nodes, each
// on a 160 MiB tmpfs with a 16 MiB threshold, and fills the leader's file
// system to 8 MiB free: every call that adds data (enqueue, enqueue
// stream, transaction, queue creation) is refused with ResourceExhausted
// naming the free space and the threshold, nothing is proposed, while
// receives, acks, nacks, extends and purges go on. A follower's low disk
// refuses nothing: an enqueue sent to it is still redirected. Once the
// filler is removed, enqueues are accepted again.
func TestEnqueuesAreRefusedWhileTheLeadersDiskIsLow(t *testing.T) {
	const threshold = 16 << 20
	disks := smallDisks(t, 3, 160<<20) // raft-wal preallocates a 64 MiB segment
	c := StartTestClusterWith(t, 3, func(i int, cfg *Config) {
		cfg.DataDir = filepath.Join(disks[i], "data")
		cfg.MinFreeDisk = threshold
		cfg.AdminAddr = "127.0.0.1:0"
		// No tick: the test's calls are the only commands, so the log's
		// last index shows whether a refused call proposed anything.
		cfg.TickInterval = time.Hour
	})
	leader := c.Leader(t)
	li := c.Index(leader)
	fi := (li + 1) % 3
	qc := quorumqpb.NewQueueClient(c.Conn(t, li))
	ctx := ctxT(t, 60*time.Second)
	if _, err := qc.CreateQueue(ctx, &quorumqpb.CreateQueueRequest{Name: "jobs"}); err != nil {
		t.Fatal(err)
	}
	enqueue(t, c, li, "jobs", "m0", "m1", "m2", "m3")

	filler := filepath.Join(disks[li], "filler")
	fillTo(t, disks[li], filler, 8<<20)
	// The guard's reading of the free space is at most diskReadEvery old.
	time.Sleep(2 * diskReadEvery)

	last := leader.raft.LastIndex()
	msgs := []*fsmpb.Message{{Body: []byte("refused")}}
	refusals := map[string]error{}
	_, refusals["Enqueue"] = qc.Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "jobs", Messages: msgs})
	_, refusals["Enqueue auto-creating a queue"] = qc.Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "new", Messages: msgs})
	_, refusals["CreateQueue"] = qc.CreateQueue(ctx, &quorumqpb.CreateQueueRequest{Name: "more"})
	_, refusals["Transaction"] = qc.Transaction(ctx, &quorumqpb.TransactionRequest{
		Enqueues: []*quorumqpb.EnqueueRequest{{Queue: "jobs", Messages: msgs}}})
	stream, err := qc.EnqueueStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&quorumqpb.EnqueueRequest{Queue: "jobs", Messages: msgs}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	_, refusals["EnqueueStream"] = stream.Recv()
	want := fmt.Sprintf("less than %d (--min-free-disk)", threshold)
	for call, err := range refusals {
		st := status.Convert(err)
		if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), leader.cfg.DataDir) ||
			!strings.Contains(st.Message(), "bytes free") || !strings.Contains(st.Message(), want) {
			t.Errorf("%s with 8 MiB free: %v, want ResourceExhausted naming %s, its free bytes and %q", call, err, leader.cfg.DataDir, want)
		} else if call == "Enqueue" {
			t.Logf("refused: %s", st.Message())
		}
	}
	if got := leader.raft.LastIndex(); got != last {
		t.Errorf("refused calls moved the leader's last log index from %d to %d", last, got)
	}

	// A follower's disk decides nothing: the leader's quorum stores the
	// entry. An enqueue sent to it is redirected as always.
	fillTo(t, disks[fi], filepath.Join(disks[fi], "filler"), 8<<20)
	time.Sleep(2 * diskReadEvery)
	_, err = quorumqpb.NewQueueClient(c.Conn(t, fi)).Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "jobs", Messages: msgs})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("enqueue on a follower with 8 MiB free: %v, want Unavailable (not leader)", err)
	}

	// Consumers drain.
	rr, err := qc.Receive(ctx, &quorumqpb.ReceiveRequest{Queue: "jobs", Max: 4, VisibilityNs: int64(time.Minute)})
	if err != nil || len(rr.GetDeliveries()) != 4 {
		t.Fatalf("receive with the leader's disk low: %v, %d deliveries, want 4", err, len(rr.GetDeliveries()))
	}
	receipt := func(i int) []*fsmpb.Receipt { return []*fsmpb.Receipt{rr.GetDeliveries()[i].GetReceipt()} }
	ack, err := qc.Ack(ctx, &quorumqpb.AckRequest{Queue: "jobs", Receipts: append(receipt(0), receipt(1)...)})
	if err != nil || len(ack.GetOutcomes()) != 2 || ack.GetOutcomes()[0] != fsmpb.AckOutcome_ACK_OK || ack.GetOutcomes()[1] != fsmpb.AckOutcome_ACK_OK {
		t.Fatalf("ack with the leader's disk low: %v %v", ack.GetOutcomes(), err)
	}
	if r, err := qc.Extend(ctx, &quorumqpb.ExtendRequest{Queue: "jobs", Receipts: receipt(2), VisibilityNs: int64(time.Minute)}); err != nil || r.GetOutcomes()[0] != fsmpb.AckOutcome_ACK_OK {
		t.Fatalf("extend with the leader's disk low: %v %v", r.GetOutcomes(), err)
	}
	if r, err := qc.Nack(ctx, &quorumqpb.NackRequest{Queue: "jobs", Receipts: receipt(3)}); err != nil || r.GetOutcomes()[0] != fsmpb.AckOutcome_ACK_OK {
		t.Fatalf("nack with the leader's disk low: %v %v", r.GetOutcomes(), err)
	}
	if p, err := qc.Purge(ctx, &quorumqpb.PurgeRequest{Queue: "jobs"}); err != nil || p.GetPurged() != 2 {
		t.Fatalf("purge with the leader's disk low: %v, purged %d, want 2", err, p.GetPurged())
	}
	gq, err := qc.GetQueue(ctx, &quorumqpb.GetQueueRequest{Name: "jobs"})
	if err != nil {
		t.Fatal(err)
	}
	if st := gq.GetQueue().GetStats(); st.GetEnqueuedTotal() != 4 || st.GetAckedTotal() != 2 || st.GetPurgedTotal() != 2 {
		t.Errorf("jobs after the drain: enqueued %d acked %d purged %d, want 4, 2, 2", st.GetEnqueuedTotal(), st.GetAckedTotal(), st.GetPurgedTotal())
	}

	m := scrape(t, leader.AdminAddr())
	if got := m["quorumq_disk_guard_rejects_total"]; got != float64(len(refusals)) {
		t.Errorf("quorumq_disk_guard_rejects_total = %v, want %d", got, len(refusals))
	}
	if got := m["quorumq_disk_free_bytes"]; got <= 0 || got > threshold {
		t.Errorf("quorumq_disk_free_bytes = %v, want the leader's 8 MiB or so", got)
	}
	if got := m["quorumq_disk_min_free_bytes"]; got != threshold {
		t.Errorf("quorumq_disk_min_free_bytes = %v, want %d", got, threshold)
	}

	// Space comes back: enqueues are accepted again.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * diskReadEvery)
	res := enqueue(t, c, li, "jobs", "after")
	if res[0].GetMessageId() != 5 {
		t.Errorf("enqueue after the space came back: message id %d, want 5", res[0].GetMessageId())
	}
	if got := scrape(t, leader.AdminAddr())["quorumq_disk_free_bytes"]; got < 64<<20 {
		t.Errorf("quorumq_disk_free_bytes after the filler was removed = %v (%s MiB), want about 90 MiB", got, strconv.FormatFloat(got/(1<<20), 'f', 1, 64))
	}
}

// The free-space threshold is bytes or a percentage, not both, and a
// percentage is above 0 and below 100.
func TestMinFreeDiskIsValidated(t *testing.T) {
	base := Config{NodeID: "n1", DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0"}
	for _, tc := range []struct {
		bytes   int64
		percent float64
		want    string
	}{
		{1 << 30, 5, "min free disk: 1073741824 bytes and 5% both set; set one"},
		{0, 100, "min free disk 100%: want more than 0 and less than 100"},
		{0, -1, "min free disk -1%: want more than 0 and less than 100"},
	} {
		cfg := base
		cfg.MinFreeDisk, cfg.MinFreeDiskPercent = tc.bytes, tc.percent
		if _, err := cfg.withDefaults(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("MinFreeDisk %d, MinFreeDiskPercent %v: %v, want %q", tc.bytes, tc.percent, err, tc.want)
		}
	}
	if _, err := base.withDefaults(); err != nil {
		t.Errorf("neither set: %v", err)
	}
}

// With no threshold configured, a node keeps 5 % of its file system
// free, at least two wal segments (128 MiB with the default segment
// size), at most a quarter of the file system.
func TestDefaultMinFreeDisk(t *testing.T) {
	for _, tc := range []struct{ size, segment, want int64 }{
		{100 << 30, 64 << 20, 5 << 30},    // 5 %
		{1 << 30, 64 << 20, 128 << 20},    // 5 % is 51 MiB: the floor
		{128 << 20, 64 << 20, 32 << 20},   // the floor would be all of it: a quarter
		{2 << 40, 64 << 20, 2 << 40 / 20}, // 5 %
		{1 << 30, 1 << 20, 1 << 30 / 20},  // 1 MiB segments: 5 % is above the floor
		{1 << 30, 1 << 30, 1 << 30 / 4},   // 1 GiB segments: a quarter
		{100 << 30, 1 << 30, 5 << 30},     // 2 GiB floor, 5 % above it
		{20 << 30, 1 << 30, 2 << 30},      // 5 % is 1 GiB: the floor
	} {
		if got := defaultMinFreeDisk(tc.size, tc.segment); got != tc.want {
			t.Errorf("defaultMinFreeDisk(%d, segment %d) = %d, want %d", tc.size, tc.segment, got, tc.want)
		}
	}
	g := newDiskGuard(Config{DataDir: t.TempDir()}, func() bool { return true }, prometheus.NewRegistry())
	r := g.read()
	if r.err != nil || r.min != defaultMinFreeDisk(r.size, defaultWALSegmentSize) {
		t.Fatalf("a guard with no threshold configured holds %d bytes of %d free (%v), want %d", r.min, r.size, r.err, defaultMinFreeDisk(r.size, defaultWALSegmentSize))
	}
	g.set(0, 0)
	g.readAt, g.space = time.Now(), diskSpace{free: 1 << 20, size: 1 << 30}
	if low, _ := g.check(); low == nil || !strings.Contains(low.Error(), "has 1048576 bytes free, less than 134217728 (--min-free-disk auto: 5% of its 1073741824 bytes, at least two wal segments of 67108864 bytes, at most a quarter)") {
		t.Errorf("1 MiB free of 1 GiB under the default threshold: %v", low)
	}
	g = newDiskGuard(Config{DataDir: t.TempDir(), WALSegmentSize: 1 << 30}, func() bool { return true }, prometheus.NewRegistry())
	g.readAt, g.space = time.Now(), diskSpace{free: 1 << 30, size: 20 << 30}
	if low, _ := g.check(); low == nil || !strings.Contains(low.Error(), "less than 2147483648 (--min-free-disk auto: 5% of its 21474836480 bytes, at least two wal segments of 1073741824 bytes") {
		t.Errorf("1 GiB free of 20 GiB with 1 GiB segments: %v, want the two-segment floor", low)
	}
}

// A threshold given as a percentage is named as one, and only a leader
// refuses.
func TestDiskGuardNamesAPercentThreshold(t *testing.T) {
	dir := t.TempDir()
	leader := false
	g := newDiskGuard(Config{DataDir: dir, MinFreeDiskPercent: 99.9999}, func() bool { return leader }, prometheus.NewRegistry())
	if err := g.admit(); err != nil {
		t.Errorf("a follower refused: %v", err)
	}
	leader = true
	err := g.admit()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "data dir "+dir+" has ") ||
		!strings.Contains(err.Error(), "(99.9999% of its ") || !strings.Contains(err.Error(), " bytes, --min-free-disk)") {
		t.Errorf("a leader with less than 99.9999%% of its disk free: %v, want ResourceExhausted naming the percentage", err)
	}
	g.set(-1, 0)
	if err := g.admit(); err != nil {
		t.Errorf("no threshold: %v", err)
	}
}

package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/fsm/limits"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// segmentChunk is the number of ids per segment file (fsm.segmentShift).
const segmentChunk = 1 << 14

// snapshotSegments returns, for node i's newest snapshot, each segment
// file's inode by the queue's birth count and the chunk its name gives
// ("5/2" for the message records of chunk 2, "5/2dedup" for its dedup
// entries).
func snapshotSegments(t *testing.T, c *TestCluster, i int) map[string]uint64 {
	t.Helper()
	list, err := c.Nodes[i].snaps.List()
	if err != nil || len(list) == 0 {
		t.Fatalf("node %d: no snapshot (err %v)", i, err)
	}
	dir := filepath.Join(c.configs[i].DataDir, "snapshots", list[0].ID, segmentDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("node %d: %v", i, err)
	}
	files := make(map[string]uint64)
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		// era-born-chunk-change, and -dedup for a chunk's dedup entries
		parts := strings.Split(e.Name(), "-")
		if len(parts) != 4 && (len(parts) != 5 || parts[4] != "dedup") {
			t.Fatalf("segment file %s: name is not era-born-chunk-change[-dedup]", e.Name())
		}
		files[parts[1]+"/"+parts[2]+strings.Join(parts[4:], "")] = fi.Sys().(*syscall.Stat_t).Ino
	}
	return files
}

func enqueueSmall(t *testing.T, c *TestCluster, i int, queue string, first, n int) {
	t.Helper()
	q := quorumqpb.NewQueueClient(c.Conn(t, i))
	for lo := first; lo < first+n; lo += limits.MaxBatch {
		req := &quorumqpb.EnqueueRequest{Queue: queue}
		for j := lo; j < min(lo+limits.MaxBatch, first+n); j++ {
			// Dedup IDs that fall as ids grow: each chunk's dedup file
			// holds a range of keys below the one before it, so reading
			// them back in key order interleaves the files.
			req.Messages = append(req.Messages, &fsmpb.Message{Body: fmt.Appendf(nil, "m%d", j), DedupId: fmt.Sprintf("%09d", 1e8-j)})
		}
		if _, err := q.Enqueue(ctxT(t, 30*time.Second), req); err != nil {
			t.Fatalf("enqueue: %v", err)
		}
	}
}

// A snapshot writes only the chunks of message records and dedup entries
// that changed since the last one and links the rest: with three chunks
// queued, an ack at the head and an enqueue at the tail leave the middle
// chunk's two files the same files (one inode each, linked into the new
// snapshot). A restart restores from the linked and written files alike,
// the dedup files merged back into key order: the state hash is the one
// before, and every message is served.
func TestSnapshotLinksUnchangedSegments(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.TickInterval = time.Hour })
	li := c.Index(c.Leader(t))
	n := 3*segmentChunk - 100 // ids 1 … n: chunks 0, 1 and 2
	enqueueSmall(t, c, li, "q", 0, n)
	c.WaitReplicated(t)
	if err := c.Nodes[li].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	first := snapshotSegments(t, c, li)
	if len(first) != 6 {
		t.Fatalf("first snapshot: segment files by chunk %v, want the records and dedup entries of chunks 0, 1 and 2", first)
	}

	receiveAndAck(t, c, li, "q", 10)
	enqueueSmall(t, c, li, "q", n, 10)
	c.WaitReplicated(t)
	if err := c.Nodes[li].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	second := snapshotSegments(t, c, li)
	t.Logf("segment inodes by chunk: first snapshot %v, second %v", first, second)
	if len(second) != 6 {
		t.Fatalf("second snapshot: segment files by chunk %v, want the records and dedup entries of chunks 0, 1 and 2", second)
	}
	for chunk, ino := range first {
		if unchanged := strings.Contains(chunk, "/1"); unchanged != (second[chunk] == ino) {
			t.Errorf("chunk %s: inode %d, then %d; want the same file only for chunk 1, which nothing changed", chunk, ino, second[chunk])
		}
	}

	hash := c.Nodes[li].StateHash()
	c.Kill(li)
	node := c.Restart(t, li)
	if got := node.StateHash(); got != hash {
		t.Fatalf("restarted from the snapshot: state hash %s, want %s", got, hash)
	}
	enqueue(t, c, c.Index(c.Leader(t)), "other", "x")
	c.WaitReplicated(t)
	peek, err := quorumqpb.NewQueueClient(c.Conn(t, li)).Peek(ctxT(t, 10*time.Second), &quorumqpb.PeekRequest{Queue: "q", FromId: uint64(segmentChunk - 5), Max: 10})
	if err != nil || len(peek.GetMessages()) != 10 {
		t.Fatalf("peek on the restarted node: %v (%d messages)", err, len(peek.GetMessages()))
	}
	for k, m := range peek.GetMessages() {
		if want := fmt.Sprintf("m%d", segmentChunk-6+k); string(m.GetBody()) != want {
			t.Fatalf("message %d: body %q, want %q", m.GetId(), m.GetBody(), want)
		}
	}
}

// A flipped bit in a segment file of a stopped node's snapshot, one of
// message records or one of dedup entries, makes the node refuse to start,
// naming the file, as a corrupt state.bin does: the data check reads every
// segment against the CRC its reference holds.
func TestCorruptSegmentRefusesToStart(t *testing.T) {
	for _, kind := range []string{"messages", "dedup"} {
		t.Run(kind, func(t *testing.T) {
			c := StartTestCluster(t, 3)
			li := c.Index(c.Leader(t))
			enqueue(t, c, li, "q", "SEGMENT-VALUE-0001", "SEGMENT-VALUE-0002")
			c.WaitReplicated(t)
			fi := follower(t, c)
			if err := c.Nodes[fi].raft.Snapshot().Error(); err != nil {
				t.Fatal(err)
			}
			list, err := c.Nodes[fi].snaps.List()
			if err != nil || len(list) == 0 {
				t.Fatalf("snapshots %v, %v", list, err)
			}
			cfg := c.configs[fi]
			c.Kill(fi)
			pattern := "*[0-9a-f]"
			if kind == "dedup" {
				pattern = "*-dedup"
			}
			segs, _ := filepath.Glob(filepath.Join(cfg.DataDir, "snapshots", list[0].ID, segmentDir, pattern))
			if len(segs) != 1 {
				t.Fatalf("%s segment files %v, want one", kind, segs)
			}
			if n := flipMiddleBits(t, segs[0], []byte("q/SEGMENT-VALUE-0002")); n == 0 {
				t.Fatalf("dedup ID not found in %s", segs[0])
			}
			_, err = Start(context.Background(), cfg)
			if !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), segs[0]) {
				t.Fatalf("start with a corrupt segment: %v; want ErrDataDir naming %s", err, segs[0])
			}
			t.Logf("refused: %v", err)
		})
	}
}

// Segment files of different queues never share a name: after a restart
// every restored queue gets a birth count of its own, so the next
// snapshot's files of two queues with messages in the same chunk, and
// changed by the same commands, differ. (With one count for all restored
// queues, the second queue's file replaced the first's, and the start
// after that snapshot found a file whose CRC did not match.)
func TestSnapshotAfterRestartKeepsQueuesApart(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.TickInterval = time.Hour })
	li := c.Index(c.Leader(t))
	enqueueSmall(t, c, li, "a", 0, 50)
	enqueueSmall(t, c, li, "b", 0, 70)
	c.WaitReplicated(t)
	fi := follower(t, c)
	for round := range 2 {
		if round > 0 {
			// Something new to snapshot, in a third queue: a and b stay
			// as restored.
			enqueue(t, c, c.Index(c.Leader(t)), "other", "x")
			c.WaitReplicated(t)
		}
		if err := c.Nodes[fi].raft.Snapshot().Error(); err != nil {
			t.Fatal(err)
		}
		if round > 0 {
			if segs := snapshotSegments(t, c, fi); len(segs) != 6 {
				t.Fatalf("segment files %v: want the records and dedup entries of chunk 0 of each of the three queues", segs)
			}
		}
		hash := c.Nodes[fi].StateHash()
		c.Kill(fi)
		if got := c.Restart(t, fi).StateHash(); got != hash {
			t.Fatalf("restart %d: state hash %s, want %s", round+1, got, hash)
		}
	}
}

// A snapshot being sent stays complete when a newer snapshot removes its
// segment files meanwhile: Open opens them all, as it opens the
// checkpoint's files. (Opened one by one as the stream reached them, the
// stream of a large backlog, which takes minutes to send, broke at the
// first file removed, and InstallSnapshot never finished.)
func TestOpenSnapshotSurvivesANewerSnapshot(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.TickInterval = time.Hour })
	li := c.Index(c.Leader(t))
	enqueueSmall(t, c, li, "q", 0, 2*segmentChunk)
	c.WaitReplicated(t)
	node := c.Nodes[li]
	if err := node.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	list, err := node.snaps.List()
	if err != nil || len(list) == 0 {
		t.Fatalf("snapshots %v, %v", list, err)
	}
	meta, rc, err := node.snapStore.Open(list[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	enqueueSmall(t, c, li, "q", 2*segmentChunk, 10)
	c.WaitReplicated(t)
	if err := node.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(c.configs[li].DataDir, "snapshots", list[0].ID, segmentDir)
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s is still there after a newer snapshot (%v)", old, err)
	}
	n, err := io.Copy(io.Discard, rc)
	if err != nil || n != meta.Size {
		t.Fatalf("read %d of %d bytes of the opened snapshot: %v", n, meta.Size, err)
	}
}

// A follower gives back the segment space of tombstones once the dedup
// window has dropped them: its snapshot's files hold far more records
// than its state, so it takes a snapshot of its own, though its log
// budget is far from due. (Without that, a follower kept them until its
// log grew by --snapshot-bytes, which after a drain can take hours.)
func TestFollowerSnapshotsOnceTombstonesAreGone(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) {
		cfg.TickInterval = 200 * time.Millisecond
		cfg.storeCheck = 200 * time.Millisecond
		cfg.staleRecords = 100
	})
	li := c.Index(c.Leader(t))
	q := quorumqpb.NewQueueClient(c.Conn(t, li))
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "q",
		Settings: &fsmpb.QueueSettings{DedupWindowNs: proto.Int64(int64(time.Second))}}); err != nil {
		t.Fatal(err)
	}
	enqueueSmall(t, c, li, "q", 0, 600)
	receiveAndAck(t, c, li, "q", 600)
	c.WaitReplicated(t)
	fi := follower(t, c)
	f := c.Nodes[fi]
	if err := f.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	snap, now := f.fsm.SegmentRecords()
	t.Logf("%s after its snapshot: %d records in its segment files, %d in its state", f.ID(), snap, now)
	if snap < 600 {
		t.Fatalf("%s's snapshot holds %d records, want the 600 tombstones at least", f.ID(), snap)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		snap, now = f.fsm.SegmentRecords()
		if snap <= 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d records in its snapshot's segment files after 20 s, %d in its state: it kept the tombstones the window dropped", f.ID(), snap, now)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%s: %d records in its segment files, %d in its state", f.ID(), snap, now)
}

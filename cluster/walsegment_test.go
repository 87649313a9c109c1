package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/segment"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// segmentSizes returns the size of each wal segment file of dataDir, by
// name, and the size limit the wal's meta DB records for each.
func segmentSizes(t *testing.T, dataDir string) (sizes, limits map[string]int64) {
	t.Helper()
	dir := filepath.Join(dataDir, walDirName)
	sizes, limits = map[string]int64{}, map[string]int64{}
	for _, p := range segmentFiles(t, dataDir) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		sizes[filepath.Base(p)] = fi.Size()
	}
	meta := &metadb.BoltMetaDB{}
	st, err := meta.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer meta.Close()
	for _, s := range st.Segments {
		limits[segment.FileName(s)] = int64(s.SizeLimit)
	}
	return sizes, limits
}

// fillLog enqueues about mib MiB of message bodies through node i.
func fillLog(t *testing.T, c *TestCluster, i int, queue string, mib int) {
	t.Helper()
	body := strings.Repeat("x", 60<<10)
	qc := quorumqpb.NewQueueClient(c.Conn(t, i))
	for k := 0; k < mib*16; k++ {
		_, err := qc.Enqueue(ctxT(t, 10*time.Second), &quorumqpb.EnqueueRequest{Queue: queue,
			Messages: []*fsmpb.Message{{Body: []byte(body), DedupId: fmt.Sprintf("%s-%d", queue, k)}}})
		if err != nil {
			t.Fatalf("enqueue %d: %v", k, err)
		}
	}
}

// TestWALSegmentSizeRotatesSegments: a node with a 1 MiB segment size
// starts a new segment file about every MiB of log, each preallocated to
// 1 MiB; restarted with another size it keeps the segments it has (each
// checked against the size its meta records) and makes new ones of the
// new size.
func TestWALSegmentSizeRotatesSegments(t *testing.T) {
	c := StartTestClusterWith(t, 1, func(i int, cfg *Config) { cfg.WALSegmentSize = 1 << 20 })
	fillLog(t, c, 0, "big", 4)
	dataDir := c.configs[0].DataDir
	c.Shutdown(t, 0) // the meta DB is locked while the node runs
	sizes, limits := segmentSizes(t, dataDir)
	if len(sizes) < 4 {
		t.Fatalf("%d segment files after 4 MiB of log with 1 MiB segments, want at least 4: %v", len(sizes), sizes)
	}
	for name, size := range sizes {
		if limits[name] != 1<<20 {
			t.Errorf("segment %s: size limit %d in the meta DB, want %d", name, limits[name], 1<<20)
		}
		if size < 1<<20 || size >= 2<<20 {
			t.Errorf("segment %s: %d bytes, want about 1 MiB", name, size)
		}
	}

	c.configs[0].WALSegmentSize = 2 << 20
	c.Restart(t, 0)
	c.Leader(t)
	fillLog(t, c, 0, "more", 3)
	for queue, want := range map[string]uint64{"big": 4 * 16, "more": 3 * 16} {
		info, err := c.Nodes[0].fsm.Queue(queue)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.GetStats().GetReady(); got != want {
			t.Fatalf("queue %s: %d messages after the restart, want %d", queue, got, want)
		}
	}
	c.Shutdown(t, 0)
	after, limits := segmentSizes(t, dataDir)
	var bigger int
	for name, size := range after {
		if _, old := sizes[name]; old {
			continue
		}
		if limits[name] == 2<<20 && size >= 2<<20 {
			bigger++
		}
	}
	if bigger == 0 {
		t.Fatalf("no new 2 MiB segment after the restart with a 2 MiB segment size: %v (limits %v)", after, limits)
	}
}

// TestWALSegmentSizeLimits: a segment size outside 1 MiB to 1 GiB is
// refused naming the setting and the range.
func TestWALSegmentSizeLimits(t *testing.T) {
	for _, size := range []int64{-1, 1<<20 - 1, 1<<30 + 1} {
		cfg := Config{NodeID: "n1", DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", WALSegmentSize: size}
		_, err := cfg.withDefaults()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "--wal-segment-size") || !strings.Contains(err.Error(), "1MiB to 1GiB") {
			t.Errorf("segment size %d: %v, want a config error naming --wal-segment-size and its range", size, err)
		}
	}
	for _, size := range []int64{0, 1 << 20, 1 << 30} {
		cfg := Config{NodeID: "n1", DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", WALSegmentSize: size}
		got, err := cfg.withDefaults()
		if err != nil {
			t.Errorf("segment size %d: %v", size, err)
			continue
		}
		want := size
		if size == 0 {
			want = defaultWALSegmentSize
		}
		if got.WALSegmentSize != want {
			t.Errorf("segment size %d became %d, want %d", size, got.WALSegmentSize, want)
		}
	}
}

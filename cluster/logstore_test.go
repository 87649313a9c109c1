package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/raft-wal/types"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// commandLogs returns entries first..last, each a valid fsm command.
func commandLogs(t *testing.T, first, last uint64, term uint64) []*raft.Log {
	t.Helper()
	var logs []*raft.Log
	for i := first; i <= last; i++ {
		data, err := fsm.Encode(&fsmpb.Command{NowUnixNano: int64(i), Op: &fsmpb.Command_Enqueue{Enqueue: &fsmpb.Enqueue{
			Queue: "q", Messages: []*fsmpb.Message{{Body: fmt.Appendf(nil, "entry-%04d-term-%d", i, term)}}}}})
		if err != nil {
			t.Fatal(err)
		}
		logs = append(logs, &raft.Log{Index: i, Term: term, Type: raft.LogCommand, Data: data})
	}
	return logs
}

// isMonotonic reports what raft sees: whether s implements
// raft.MonotonicLogStore and says it is monotonic.
func isMonotonic(s raft.LogStore) bool {
	m, ok := s.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

// TestNewDataDirRunsOnTheWAL: a node on a new data dir keeps its log in
// raft-wal (no raft.db), raft sees a monotonic store through the cache and
// the read checks, and a node killed and started again in the same
// process gets the wal's files back (the meta DB's lock included) with
// every message.
func TestNewDataDirRunsOnTheWAL(t *testing.T) {
	c := StartTestCluster(t, 3)
	li := c.Index(c.Leader(t))
	enqueue(t, c, li, "q", "a", "b", "c")
	c.WaitReplicated(t)
	for _, n := range c.Live() {
		if n.storeKind != LogStoreWAL {
			t.Fatalf("%s runs on %q, want %q", n.ID(), n.storeKind, LogStoreWAL)
		}
		if !isMonotonic(n.logs) {
			t.Fatalf("%s: raft's log store does not report itself monotonic", n.ID())
		}
		dir := n.cfg.DataDir
		if _, err := os.Stat(filepath.Join(dir, raftDBFile)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: %s exists (err %v); a wal data dir has none", n.ID(), raftDBFile, err)
		}
		segs, _ := filepath.Glob(filepath.Join(dir, walDirName, "*.wal"))
		if len(segs) == 0 {
			t.Fatalf("%s: no segment file in %s", n.ID(), filepath.Join(dir, walDirName))
		}
	}
	fi := follower(t, c)
	c.Kill(fi)
	done := make(chan struct{})
	go func() { c.Restart(t, fi); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("restart of a killed wal node did not return within 20 s (meta DB still locked?)")
	}
	c.WaitReplicated(t)
	li = c.Index(c.Leader(t))
	if got := strings.Join(receiveAll(t, c, li, "q"), ","); got != "a,b,c" {
		t.Fatalf("received %q, want a,b,c", got)
	}
}

// TestStoreWrappersPassMonotonicThrough: the wrappers report what the store under
// them reports; raft-boltdb does not say it is monotonic.
func TestStoreWrappersPassMonotonicThrough(t *testing.T) {
	for _, kind := range []string{LogStoreWAL, LogStoreBolt} {
		dir := t.TempDir()
		s, err := openLogStore(dir, kind, 0, testLogger(), nil)
		if err != nil {
			t.Fatal(err)
		}
		v := newLogVerification(s.LogStore, s.fileOf, t.Logf, t.Logf, t.Logf)
		wrapped := newLogCache(&checkedLogStore{LogStore: v.store, path: s.path}, 8, 1<<20)
		if got, want := isMonotonic(wrapped), kind == LogStoreWAL; got != want {
			t.Errorf("%s store under the cache, the checks and the verifier: monotonic %v, want %v", kind, got, want)
		}
		v.store.Close()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestExistingBoltDataDirStaysOnBolt: a data dir made on raft-boltdb runs
// on it again whatever the setting for new data dirs says.
func TestExistingBoltDataDirStaysOnBolt(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.LogStore = LogStoreBolt })
	li := c.Index(c.Leader(t))
	enqueue(t, c, li, "q", "x", "y")
	c.WaitReplicated(t)
	for i := range c.Nodes {
		c.Kill(i)
	}
	for i := range c.configs {
		c.configs[i].LogStore = LogStoreWAL
	}
	for i := range c.configs {
		n := c.Restart(t, i)
		if n.storeKind != LogStoreBolt {
			t.Fatalf("%s: restarted on %q, want bolt (its data dir has raft.db)", n.ID(), n.storeKind)
		}
		if isMonotonic(n.logs) {
			t.Fatalf("%s: a bolt store reports itself monotonic", n.ID())
		}
		if _, err := os.Stat(filepath.Join(n.cfg.DataDir, walDirName)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: a wal dir was created beside raft.db (err %v)", n.ID(), err)
		}
	}
	li = c.Index(c.Leader(t))
	if got := strings.Join(receiveAll(t, c, li, "q"), ","); got != "x,y" {
		t.Fatalf("received %q, want x,y", got)
	}
}

// TestWALReopensAfterTailTruncation: raft deletes a suffix of a follower's
// log that conflicts with the leader's. raft-wal v0.4.0 then marks the
// tail segment sealed without writing its index block
// (hashicorp/raft-wal#31), and on the next open every read of that
// segment failed with "sealed segment has no index block".
func TestWALReopensAfterTailTruncation(t *testing.T) {
	dir := t.TempDir()
	s, err := openLogStore(dir, LogStoreWAL, 0, testLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(commandLogs(t, 1, 10, 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(8, 10); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(commandLogs(t, 8, 12, 2)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = openLogStore(dir, LogStoreWAL, 0, testLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := verifyLog(s.LogStore, s.path, 0, s.fileOf); err != nil {
		t.Fatalf("reopened after a tail truncation: %v", err)
	}
	var l raft.Log
	for i := uint64(1); i <= 12; i++ {
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		want := uint64(1)
		if i >= 8 {
			want = 2
		}
		if l.Term != want {
			t.Fatalf("entry %d has term %d, want %d", i, l.Term, want)
		}
	}
}

// TestWALInUseIsRefused: a second open of a wal in use fails with an
// error naming the meta DB instead of waiting for its lock forever.
func TestWALInUseIsRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := openLogStore(dir, LogStoreWAL, 0, testLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	errc := make(chan error, 1)
	go func() {
		s2, err := openLogStore(dir, LogStoreWAL, 0, testLogger(), nil)
		if err == nil {
			s2.Close()
		}
		errc <- err
	}()
	select {
	case err := <-errc:
		meta := filepath.Join(dir, walDirName, walMetaFile)
		if !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), meta) || !strings.Contains(err.Error(), "locked") {
			t.Fatalf("second open: %v; want ErrDataDir naming %s as locked", err, meta)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second open of a wal in use still waiting after 10 s")
	}
}

// TestLogStoreSettingIsChecked: an unknown log store is a configuration
// error naming the setting and the choices.
func TestLogStoreSettingIsChecked(t *testing.T) {
	cfg := Config{NodeID: "n1", DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", LogStore: "rocks"}
	_, err := Start(context.Background(), cfg)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), `"rocks"`) || !strings.Contains(err.Error(), "wal or bolt") {
		t.Fatalf("log store rocks: %v; want ErrConfig naming the value and the choices", err)
	}
}

// TestWALHeadDeletionIsFinal: entries raft deleted from the head of the
// log are gone, also while they still sit in the tail segment's file.
func TestWALHeadDeletionIsFinal(t *testing.T) {
	s, err := openLogStore(t.TempDir(), LogStoreWAL, 0, testLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.StoreLogs(commandLogs(t, 1, 20, 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(1, 12); err != nil {
		t.Fatal(err)
	}
	var l raft.Log
	if err := s.GetLog(5, &l); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("entry 5 after deleting 1..12: %v (entry %d), want raft.ErrLogNotFound", err, l.Index)
	}
	if err := s.GetLog(13, &l); err != nil {
		t.Fatalf("entry 13: %v", err)
	}
}

// fullVFS fails the creation of a segment file with ENOSPC while full is
// set, leaving the empty file behind as raft-wal's file system does when
// the preallocation does not fit.
type fullVFS struct {
	types.VFS
	full *atomic.Bool
}

func (v fullVFS) Create(dir, name string, size uint64) (types.WritableFile, error) {
	if v.full.Load() {
		f, err := os.Create(filepath.Join(dir, name))
		if err == nil {
			f.Close()
		}
		return nil, fmt.Errorf("preallocate %s: %w", name, syscall.ENOSPC)
	}
	return v.VFS.Create(dir, name, size)
}

// TestWALAppendsAgainAfterAFailedSegmentRotation: a full disk makes the
// creation of the next segment fail. raft-wal v0.4.0 then refuses every
// append ("sealed") until the process restarts; the store appends again
// once the disk has room, and the log is whole after a restart.
func TestWALAppendsAgainAfterAFailedSegmentRotation(t *testing.T) {
	var full atomic.Bool
	walVFS = func(v types.VFS) types.VFS { return fullVFS{VFS: v, full: &full} }
	defer func() { walVFS = nil }()
	dir := t.TempDir()
	s, err := openLogStore(dir, LogStoreWAL, 16<<10, testLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	next := uint64(1)
	store := func() error {
		err := s.StoreLogs(commandLogs(t, next, next+9, 1))
		if err == nil {
			next += 10
		}
		return err
	}
	full.Store(true)
	var failed error
	for range 200 {
		if failed = store(); failed != nil {
			break
		}
	}
	if failed == nil {
		t.Fatal("200 batches appended without a segment rotation failing")
	}
	if err := store(); err == nil {
		t.Fatal("append succeeded while the disk is still full")
	}
	full.Store(false)
	for i := range 3 {
		if err := store(); err != nil {
			t.Fatalf("append %d after the disk has room again: %v (first failure: %v)", i, err, failed)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	walVFS = nil
	s, err = openLogStore(dir, LogStoreWAL, 0, testLogger(), nil)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	if err := verifyLog(s.LogStore, s.path, 0, s.fileOf); err != nil {
		t.Fatal(err)
	}
	if first, last, _ := indexes(s.LogStore); first != 1 || last != next-1 {
		t.Fatalf("log %d..%d after the restart, want 1..%d", first, last, next-1)
	}
}

// TestWALTruncatesAgainAfterAFailedSegmentCreation: removing a suffix of
// the log (a follower whose log conflicts with its leader's) or all of it
// (after a snapshot install) makes raft-wal create a new segment. When a
// full disk fails that creation, raft-wal leaves the file behind and
// names the next try identically, which then failed with "file exists"
// for as long as the process ran: the fault suite saw a follower install
// 51 snapshots in a row without catching up. Once the disk has room, the
// truncation and the appends after it succeed.
func TestWALTruncatesAgainAfterAFailedSegmentCreation(t *testing.T) {
	var full atomic.Bool
	walVFS = func(v types.VFS) types.VFS { return fullVFS{VFS: v, full: &full} }
	defer func() { walVFS = nil }()
	s, err := openLogStore(t.TempDir(), LogStoreWAL, 0, testLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.StoreLogs(commandLogs(t, 1, 30, 1)); err != nil {
		t.Fatal(err)
	}
	full.Store(true)
	if err := s.DeleteRange(21, 30); err == nil {
		t.Fatal("suffix removed while the disk is full; the test injects nothing")
	}
	if err := s.DeleteRange(1, 30); err == nil {
		t.Fatal("log reset while the disk is full; the test injects nothing")
	}
	full.Store(false)
	if err := s.DeleteRange(21, 30); err != nil {
		t.Fatalf("remove the suffix 21..30 once the disk has room: %v", err)
	}
	if err := s.StoreLogs(commandLogs(t, 21, 25, 2)); err != nil {
		t.Fatalf("append 21..25 after the suffix was removed: %v", err)
	}
	if err := s.DeleteRange(1, 25); err != nil {
		t.Fatalf("reset the log once the disk has room: %v", err)
	}
	if err := s.StoreLogs(commandLogs(t, 41, 45, 3)); err != nil {
		t.Fatalf("append 41..45 after the reset: %v", err)
	}
	if first, last, _ := indexes(s.LogStore); first != 41 || last != 45 {
		t.Fatalf("log %d..%d, want 41..45", first, last)
	}
}

// TestSealedSegmentsHoldNoWriteBuffers: raft-wal reads a sealed segment
// through the writer that filled it, and that writer keeps a commit
// buffer the size of the largest batch the segment took. A log of many
// sealed segments must not hold one such buffer per segment: a node with
// a 1 GB log of 1 MiB batches held tens of megabytes that way.
func TestSealedSegmentsHoldNoWriteBuffers(t *testing.T) {
	dir := t.TempDir()
	s, err := openLogStore(dir, LogStoreWAL, minWALSegmentSize, testLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	const segments, perBatch, entrySize = 32, 16, 64 << 10
	data := bytes.Repeat([]byte{'x'}, entrySize)
	before := heap()
	// Each batch of 16 × 64 KiB fills a 1 MiB segment, which is sealed
	// after it.
	next := uint64(1)
	for range segments {
		logs := make([]*raft.Log, perBatch)
		for i := range logs {
			logs[i] = &raft.Log{Index: next, Term: 1, Type: raft.LogCommand, Data: data}
			next++
		}
		if err := s.StoreLogs(logs); err != nil {
			t.Fatal(err)
		}
	}
	grown := int64(heap()) - int64(before)
	t.Logf("heap grew by %d KiB for %d sealed segments", grown>>10, segments)
	if grown > 8<<20 {
		t.Fatalf("heap grew by %d MiB after %d segments of 1 MiB batches were sealed: the sealed segments keep their write buffers", grown>>20, segments)
	}
	check := func(s *logStore) {
		t.Helper()
		var l raft.Log
		for i := uint64(1); i < next; i++ {
			if err := s.GetLog(i, &l); err != nil {
				t.Fatalf("entry %d: %v", i, err)
			}
			if l.Index != i || !bytes.Equal(l.Data, data) {
				t.Fatalf("entry %d reads back as index %d with %d bytes", i, l.Index, len(l.Data))
			}
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = openLogStore(dir, LogStoreWAL, minWALSegmentSize, testLogger(), nil); err != nil {
		t.Fatal(err)
	}
	check(s)
}

package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// countingHandler counts the records logged at error level.
type countingHandler struct{ errors atomic.Int64 }

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.errors.Add(1)
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

// TestBodyStoreFlushOnAFullDiskBacksOffAndRecovers fills the file system
// of a body store with 1 MiB memtables, then writes enough to need a
// flush. pebble retries a failed flush at once, without end (pebble#6139:
// about 10^5 attempts a second, each one logged): the store must back off
// instead, and log a line per 10 s, not one per attempt: in two seconds of
// a full disk, a few dozen attempts and one line, not thousands of each. Once space returns, the flush goes through and
// every body reads back.
func TestBodyStoreFlushOnAFullDiskBacksOffAndRecovers(t *testing.T) {
	disk := smallDisks(t, 1, 16<<20)[0]
	logs := &countingHandler{}
	s, err := openBodyStoreSized(disk, slog.New(logs), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	filler := filepath.Join(disk, "filler")
	fillTo(t, disk, filler, 0)

	const n, size = 24, 64 << 10 // 1.5 MiB: one memtable to flush, the next one filling
	for i := range n {
		b := s.Batch()
		b.Set([]byte(fmt.Sprintf("b%08d", i)), bodyOf(i, size))
		if err := b.Commit(); err != nil {
			t.Fatalf("commit %d on a full disk: %v", i, err)
		}
	}
	time.Sleep(2 * time.Second)
	failed := logs.errors.Load()
	t.Logf("errors logged in 2 s of a full disk: %d; flush attempts: %d", failed, s.db.Metrics().Flush.Count)
	if failed == 0 {
		t.Fatal("no error logged: the flush did not run into the full disk, the test proves nothing")
	}
	if failed > 3 {
		t.Fatalf("%d errors logged in 2 s of a full disk: the failed flush is logged at every retry", failed)
	}
	if attempts := s.db.Metrics().Flush.Count; attempts > 40 {
		t.Fatalf("%d flush attempts in 2 s of a full disk: the failed flush is retried without backing off", attempts)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.backoff.ok.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no flush within 10 s of space returning (%d errors logged)", logs.errors.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := range n {
		v, ok, err := s.Get([]byte(fmt.Sprintf("b%08d", i)))
		if err != nil || !ok || string(v) != string(bodyOf(i, size)) {
			t.Fatalf("body %d after the disk came back: found %v, err %v", i, ok, err)
		}
	}
}

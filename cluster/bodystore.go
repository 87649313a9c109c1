package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/quorumq/quorumq/fsm"
)

// bodyStoreDir is the data dir's body store: pebble, holding the bodies
// and attributes of the messages the FSM's records refer to.
const bodyStoreDir = "store"

// Body store sizing: 64 MiB memtables (pebble's default of 4 MiB flushed
// every 4,000 bodies of 1 KiB and ran a fill 3.5 times slower,
// internal/storebench) and a 64 MiB block cache for the reads of
// receives and snapshots. pebble allocates both outside the Go heap.
const (
	bodyStoreMemTable = 64 << 20
	bodyStoreCache    = 64 << 20
)

// bodyStore is the fsm.Store of a node: pebble without its WAL, every
// batch committed without fsync. The Raft log is the write-ahead log:
// the store is derived state, removed and recreated empty at every start
// and filled again by raft's restore of the newest snapshot and replay of
// the log after it (cluster/DESIGN.md, "Storage on disk"). So a crash
// that loses unflushed memtables, or leaves a half-written file, loses
// nothing.
type bodyStore struct {
	db      *pebble.DB
	path    string
	backoff *backgroundBackoff
}

var _ fsm.Store = (*bodyStore)(nil)

// openBodyStore removes dataDir's body store and opens a new, empty one.
// The caller holds the data dir's lock (the log store's), so no other
// process uses the store it removes.
func openBodyStore(dataDir string, log *slog.Logger) (*bodyStore, error) {
	return openBodyStoreSized(dataDir, log, bodyStoreMemTable)
}

// openBodyStoreSized is openBodyStore with memtables of memtable bytes.
func openBodyStoreSized(dataDir string, log *slog.Logger, memtable uint64) (*bodyStore, error) {
	path := filepath.Join(dataDir, bodyStoreDir)
	if err := os.RemoveAll(path); err != nil {
		return nil, fmt.Errorf("%w: remove the body store %s: %v", ErrDataDir, path, err)
	}
	cache := pebble.NewCache(bodyStoreCache)
	defer cache.Unref()
	log = log.With("component", "body-store")
	backoff := &backgroundBackoff{log: log}
	db, err := pebble.Open(path, &pebble.Options{
		Cache:              cache,
		DisableWAL:         true,
		FormatMajorVersion: pebble.FormatNewest,
		MemTableSize:       memtable,
		Logger:             pebbleLogger{log: log},
		EventListener: &pebble.EventListener{
			BackgroundError: backoff.failed,
			FlushEnd: func(info pebble.FlushInfo) {
				if info.Done && info.Err == nil {
					backoff.succeeded()
				}
			},
			CompactionEnd: func(info pebble.CompactionInfo) {
				if info.Done && info.Err == nil {
					backoff.succeeded()
				}
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: open the body store %s: %v", ErrDataDir, path, err)
	}
	return &bodyStore{db: db, path: path, backoff: backoff}, nil
}

// Get implements fsm.Store; the value is a copy.
func (s *bodyStore) Get(key []byte) ([]byte, bool, error) { return pebbleGet(s.db, key) }

// Batch implements fsm.Store.
func (s *bodyStore) Batch() fsm.StoreBatch { return &bodyBatch{b: s.db.NewBatch()} }

// View implements fsm.Store with a pebble snapshot: no copy, and the
// sstables it reads stay until it is closed.
func (s *bodyStore) View() (fsm.StoreView, error) { return &bodyView{s: s.db.NewSnapshot()}, nil }

// Close closes pebble. Unflushed writes are lost, which the next start,
// which removes the store, does not mind.
func (s *bodyStore) Close() error { return s.db.Close() }

// pebbleGet reads key from a pebble DB or snapshot and copies the value
// out of pebble's buffers.
func pebbleGet(r interface {
	Get(key []byte) ([]byte, io.Closer, error)
}, key []byte) ([]byte, bool, error) {
	v, c, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := append([]byte(nil), v...)
	return out, true, c.Close()
}

type bodyBatch struct{ b *pebble.Batch }

func (b *bodyBatch) Set(key, value []byte) { _ = b.b.Set(key, value, nil) }
func (b *bodyBatch) Delete(key []byte)     { _ = b.b.Delete(key, nil) }
func (b *bodyBatch) DeleteRange(from, to []byte) {
	_ = b.b.DeleteRange(from, to, nil)
}

// Commit applies the batch without fsync: the store is rebuilt from the
// Raft log after a crash.
func (b *bodyBatch) Commit() error {
	if b.b.Empty() {
		return nil
	}
	return b.b.Commit(pebble.NoSync)
}

func (b *bodyBatch) Close() {
	if b.b != nil {
		_ = b.b.Close()
		b.b = nil
	}
}

// bodyView reads a pebble snapshot through one iterator: Persist and a
// receive read body ids in mostly ascending order (a queue's messages
// in id order), and a seek to a key after the last one continues from
// where the iterator is instead of descending the levels again (pebble's
// TrySeekUsingNext): 1.1–2.7 µs per 1 KiB body against 10–14 µs by point
// reads (internal/storebench, cluster/DESIGN.md). Like any iterator it is
// for one goroutine.
type bodyView struct {
	s  *pebble.Snapshot
	it *pebble.Iterator
}

func (v *bodyView) Get(key []byte) ([]byte, bool, error) {
	if v.it == nil {
		it, err := v.s.NewIter(nil)
		if err != nil {
			return nil, false, err
		}
		v.it = it
	}
	if !v.it.SeekGE(key) || !bytes.Equal(v.it.Key(), key) {
		return nil, false, v.it.Error()
	}
	val, err := v.it.ValueAndErr()
	if err != nil {
		return nil, false, err
	}
	return append([]byte(nil), val...), true, nil
}

func (v *bodyView) Close() error {
	var err error
	if v.it != nil {
		err = v.it.Close()
	}
	return errors.Join(err, v.s.Close())
}

// backgroundBackoff slows pebble's retries of a failed flush or
// compaction. pebble v2.1.7 schedules the next flush as soon as one fails
// (pebble#6139, open): on a full disk that is about 10^5 attempts a
// second, a core burnt and an error logged for each. pebble calls
// BackgroundError on the goroutine of the failed job, before it schedules
// the next one, so sleeping there spaces the retries out: 50 ms after the
// first failure, doubling up to 1 s, back to none after a flush or
// compaction that succeeds. The sleep holds pebble's DB mutex, so writes
// wait too; they would stall soon anyway, with memtables that cannot be
// flushed. It logs the first failure after a success and then one line
// per 10 s with the count, not one per attempt.
type backgroundBackoff struct {
	log *slog.Logger

	mu       sync.Mutex
	delay    time.Duration
	failures int64 // since the last line logged
	logged   time.Time
	ok       atomic.Int64 // flushes and compactions that succeeded
}

const (
	backgroundBackoffMin = 50 * time.Millisecond
	backgroundBackoffMax = time.Second
	backgroundLogEvery   = 10 * time.Second
)

func (b *backgroundBackoff) failed(err error) {
	b.mu.Lock()
	b.delay = min(max(2*b.delay, backgroundBackoffMin), backgroundBackoffMax)
	delay := b.delay
	b.failures++
	if now := time.Now(); b.logged.IsZero() || now.Sub(b.logged) >= backgroundLogEvery {
		b.log.Error("body store: background flush or compaction failed; retrying", "err", err,
			"failures", b.failures, "next_retry_in", delay)
		b.failures, b.logged = 0, now
	}
	b.mu.Unlock()
	time.Sleep(delay)
}

func (b *backgroundBackoff) succeeded() {
	b.ok.Add(1)
	b.mu.Lock()
	b.delay, b.failures, b.logged = 0, 0, time.Time{}
	b.mu.Unlock()
}

// pebbleLogger sends pebble's errors to the node's log and drops its
// informational lines (a line per flush and compaction).
type pebbleLogger struct{ log *slog.Logger }

func (pebbleLogger) Infof(string, ...any) {}
func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...))
}
func (l pebbleLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("body store: "+format, args...))
}

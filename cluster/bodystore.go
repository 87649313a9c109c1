package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
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

// Body store sizing: 16 MiB memtables (pebble's default of 4 MiB flushed
// every 4,000 bodies of 1 KiB and ran a fill 3.5 times slower,
// internal/storebench; 64 MiB ones, a full one and one being flushed per
// node, were 370 MB of the RSS of three nodes holding 1,000,000 messages,
// and filled no faster) and a 64 MiB block cache for the reads of
// receives and snapshots. pebble allocates both outside the Go heap.
const (
	bodyStoreMemTable = 16 << 20
	bodyStoreCache    = 64 << 20
)

// bodyStore is the fsm.Store of a node: pebble without its WAL, every
// batch committed without fsync. The Raft log is the write-ahead log:
// the store is derived state, removed and recreated empty at every start
// and filled again by raft's restore of the newest snapshot (which links
// the snapshot's checkpoint back in, checkpoint.go) and replay of the log
// after it (cluster/DESIGN.md, "Storage on disk"). So a crash that loses
// unflushed memtables, or leaves a half-written file, loses nothing.
type bodyStore struct {
	path     string
	memtable uint64
	log      *slog.Logger
	backoff  *backgroundBackoff

	// mu guards db, which adopt replaces, and pin.
	mu  sync.RWMutex
	db  *pebble.DB
	pin *pinned // deletes held back for a pending checkpoint; nil: none

	// cpMu keeps a checkpoint's Write and adopt apart.
	cpMu sync.Mutex

	cache *bodyCache // the leader's last committed values (bodycache.go)
	// deletes counts the batches with deletes since the last flush.
	deletes atomic.Int64
	// lowDisk, if set, says why the data dir's disk is low (the disk
	// guard's reading): no flush is begun then (flushDeletes).
	lowDisk func() error
}

var _ fsm.CheckpointStore = (*bodyStore)(nil)

// openBodyStore removes dataDir's body store and opens a new, empty one.
// The caller holds the data dir's lock (the log store's), so no other
// process uses the store it removes.
func openBodyStore(dataDir string, log *slog.Logger) (*bodyStore, error) {
	return openBodyStoreSized(dataDir, log, bodyStoreMemTable)
}

// openBodyStoreSized is openBodyStore with memtables of memtable bytes.
func openBodyStoreSized(dataDir string, log *slog.Logger, memtable uint64) (*bodyStore, error) {
	path := filepath.Join(dataDir, bodyStoreDir)
	for _, dir := range []string{path, path + incomingSuffix} {
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("%w: remove the body store %s: %v", ErrDataDir, dir, err)
		}
	}
	log = log.With("component", "body-store")
	s := &bodyStore{path: path, memtable: memtable, log: log, backoff: &backgroundBackoff{log: log}, cache: newBodyCache(bodyCacheBytes)}
	db, err := s.open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: open the body store %s: %v", ErrDataDir, path, err)
	}
	s.db = db
	return s, nil
}

// open opens pebble on dir with the store's options.
func (s *bodyStore) open(dir string) (*pebble.DB, error) {
	cache := pebble.NewCache(bodyStoreCache)
	defer cache.Unref()
	return pebble.Open(dir, &pebble.Options{
		Cache:              cache,
		DisableWAL:         true,
		FormatMajorVersion: pebble.FormatNewest,
		MemTableSize:       s.memtable,
		Logger:             pebbleLogger{log: s.log},
		EventListener: &pebble.EventListener{
			BackgroundError: s.backoff.failed,
			FlushEnd: func(info pebble.FlushInfo) {
				if info.Done && info.Err == nil {
					s.backoff.succeeded()
				}
			},
			CompactionEnd: func(info pebble.CompactionInfo) {
				if info.Done && info.Err == nil {
					s.backoff.succeeded()
				}
			},
		},
	})
}

// Get implements fsm.Store; the value is a copy.
func (s *bodyStore) Get(key []byte) ([]byte, bool, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if v, ok := s.cache.get(key); ok {
		return v, true, nil
	}
	if s.pin != nil && s.pin.deleted(key, math.MaxInt) {
		return nil, false, nil
	}
	return pebbleGet(s.db, key)
}

// Batch implements fsm.Store. Batches are written and committed on the
// FSM's goroutine under its lock, as adopt is, so the DB a batch was
// started on is still the store's at its Commit.
func (s *bodyStore) Batch() fsm.StoreBatch {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return &bodyBatch{s: s, b: s.db.NewBatch()}
}

// View implements fsm.Store with a pebble snapshot: no copy, and the
// sstables it reads stay until it is closed.
func (s *bodyStore) View() (fsm.StoreView, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v := &bodyView{s: s.db.NewSnapshot(), pin: s.pin, cache: s.cache}
	if v.pin != nil {
		v.seq = v.pin.len()
	}
	return v, nil
}

// flushDeletes flushes the memtable if batches deleted something since the
// last time: the deletes of a drain are small, so a memtable can hold
// them for hours without filling, and until it is flushed the files they
// cover are not compacted away. Not on a low disk: pebble retries a flush
// that failed until it succeeds, and its writes wait meanwhile
// (backgroundBackoff), so a flush begun on a full disk would stall every
// apply until space returns. It waits for the flush, or for stop.
func (s *bodyStore) flushDeletes(stop <-chan struct{}) error {
	if s.deletes.Load() == 0 || s.diskLow() != nil {
		return nil
	}
	s.deletes.Store(0)
	s.cpMu.Lock() // not while adopt replaces the DB
	s.mu.RLock()
	done, err := s.db.AsyncFlush()
	s.mu.RUnlock()
	s.cpMu.Unlock()
	if err != nil {
		return err
	}
	select {
	case <-done:
	case <-stop:
	}
	return nil
}

// diskLow returns why the data dir's disk is below --min-free-disk, or nil.
func (s *bodyStore) diskLow() error {
	if s.lowDisk == nil {
		return nil
	}
	return s.lowDisk()
}

// diskBytes is what the store's files take on disk.
func (s *bodyStore) diskBytes() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return int64(s.db.Metrics().DiskSpaceUsage())
}

// Close closes pebble. Unflushed writes are lost, which the next start,
// which removes the store, does not mind.
func (s *bodyStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Close()
}

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

// bodyBatch writes its sets into a pebble batch as they come and keeps its
// deletes aside until Commit, which holds them back while a checkpoint is
// pending (pinned). The FSM never deletes a key it sets in a later part of
// the same batch (body ids are never reused), so deletes after sets keep
// the batch's meaning.
type bodyBatch struct {
	s    *bodyStore
	b    *pebble.Batch
	dels []deletion
	sets []cachedSet // for the cache, while it is on
}

// deletion is a key (end nil) or a range [key, end).
type deletion struct{ key, end []byte }

func (b *bodyBatch) Set(key, value []byte) {
	_ = b.b.Set(key, value, nil)
	if k, ok := toCacheKey(key); ok && b.s.cache.on.Load() {
		b.sets = append(b.sets, cachedSet{key: k, value: value})
	}
}
func (b *bodyBatch) Delete(key []byte) {
	b.dels = append(b.dels, deletion{key: bytes.Clone(key)})
}
func (b *bodyBatch) DeleteRange(from, to []byte) {
	b.dels = append(b.dels, deletion{key: bytes.Clone(from), end: bytes.Clone(to)})
}

// Commit applies the batch without fsync: the store is rebuilt from the
// Raft log after a crash.
func (b *bodyBatch) Commit() error {
	s := b.s
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.pin != nil {
		s.pin.add(b.dels)
	} else {
		for _, d := range b.dels {
			d.apply(b.b)
		}
	}
	dels, sets := b.dels, b.sets
	b.dels, b.sets = nil, nil
	if len(dels) > 0 {
		s.deletes.Add(1)
	}
	if b.b.Empty() {
		return nil
	}
	if err := b.b.Commit(pebble.NoSync); err != nil {
		return err
	}
	s.cache.commit(sets, dels)
	return nil
}

func (d deletion) apply(b *pebble.Batch) {
	if d.end == nil {
		_ = b.Delete(d.key, nil)
	} else {
		_ = b.DeleteRange(d.key, d.end, nil)
	}
}

func (b *bodyBatch) Close() {
	if b.b != nil {
		_ = b.b.Close()
		b.b = nil
	}
}

// pinned holds the deletes of the batches committed while a checkpoint is
// pending: the checkpoint is written after the snapshot's entry, so the
// bodies that entry's state refers to must still be in pebble then. Reads
// treat them as done. seq orders them, so that a view taken meanwhile
// hides only the deletes committed before it.
type pinned struct {
	mu     sync.RWMutex
	keys   map[string]int // key → seq
	ranges []seqDeletion
	n      int
}

type seqDeletion struct {
	deletion
	seq int
}

func newPinned() *pinned { return &pinned{keys: make(map[string]int)} }

func (p *pinned) add(dels []deletion) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range dels {
		if d.end == nil {
			if _, ok := p.keys[string(d.key)]; !ok {
				p.keys[string(d.key)] = p.n
			}
		} else {
			p.ranges = append(p.ranges, seqDeletion{deletion: d, seq: p.n})
		}
		p.n++
	}
}

func (p *pinned) len() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.n
}

// deleted reports whether a delete of key committed before seq is held.
func (p *pinned) deleted(key []byte, before int) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if seq, ok := p.keys[string(key)]; ok && seq < before {
		return true
	}
	for _, r := range p.ranges {
		if r.seq < before && bytes.Compare(key, r.key) >= 0 && bytes.Compare(key, r.end) < 0 {
			return true
		}
	}
	return false
}

// Checkpoint implements fsm.CheckpointStore: it pins the store until the
// checkpoint is released.
func (s *bodyStore) Checkpoint() (fsm.StoreCheckpoint, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pin != nil {
		return nil, errors.New("body store: a checkpoint is pending already")
	}
	s.pin = newPinned()
	return &storeCheckpoint{s: s, pin: s.pin, db: s.db}, nil
}

type storeCheckpoint struct {
	s    *bodyStore
	pin  *pinned
	db   *pebble.DB
	once sync.Once
}

// Write flushes the memtables, so that the files hold every batch
// committed up to now, and writes a pebble checkpoint into dir: hard links
// to the sstables, a copy of the manifest and options. Its cost follows
// the number of files and the memtable's size, not the backlog.
func (c *storeCheckpoint) Write(dir string) error {
	c.s.cpMu.Lock()
	defer c.s.cpMu.Unlock()
	c.s.mu.RLock()
	swapped := c.s.db != c.db
	c.s.mu.RUnlock()
	if swapped {
		return errors.New("body store: replaced by a restore since the checkpoint was pinned")
	}
	if err := c.s.diskLow(); err != nil {
		return fmt.Errorf("no checkpoint while the disk is low (its flush would stall the store until space returns): %w", err)
	}
	if err := c.db.Flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	if err := c.db.Checkpoint(dir); err != nil {
		return fmt.Errorf("checkpoint into %s: %w", dir, err)
	}
	return nil
}

// Release commits the held deletes, in one batch, and unpins.
func (c *storeCheckpoint) Release() {
	c.once.Do(func() {
		s := c.s
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.pin != c.pin {
			return
		}
		s.pin = nil
		if s.db != c.db {
			return // the store was replaced; its deletes went with it
		}
		b := s.db.NewBatch()
		defer b.Close()
		c.pin.mu.RLock()
		for k := range c.pin.keys {
			_ = b.Delete([]byte(k), nil)
		}
		for _, r := range c.pin.ranges {
			r.apply(b)
		}
		c.pin.mu.RUnlock()
		if err := b.Commit(pebble.NoSync); err != nil {
			// The bodies stay as garbage until the next start rebuilds
			// the store; nothing refers to them.
			s.log.Error("body store: deletes held for a checkpoint failed", "err", err, "keys", len(c.pin.keys))
		}
	})
}

// adopt makes the pebble files in dir the store: the open DB is closed,
// dir renamed to the store's path and opened. A checkpoint pinned on the
// old DB is dropped with it. An error after the old DB closed leaves the
// store unusable, so it panics: the node stops rather than run without
// the bodies its state refers to, and rebuilds the store at its next
// start.
func (s *bodyStore) adopt(dir string) error {
	s.cpMu.Lock()
	defer s.cpMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pin = nil
	s.cache.clear() // the adopted store numbers its bodies otherwise
	if err := s.db.Close(); err != nil {
		s.log.Warn("body store: close before a restore", "err", err)
	}
	fail := func(err error) { panic(fmt.Sprintf("body store: adopt %s: %v", dir, err)) }
	if err := os.RemoveAll(s.path); err != nil {
		fail(err)
	}
	if err := os.Rename(dir, s.path); err != nil {
		fail(err)
	}
	if err := syncDir(filepath.Dir(s.path)); err != nil {
		fail(err)
	}
	db, err := s.open(s.path)
	if err != nil {
		fail(err)
	}
	s.db = db
	return nil
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
	// pin, if a checkpoint was pending when the view was taken: its
	// first seq deletes were committed before the view.
	pin   *pinned
	seq   int
	cache *bodyCache
}

// Get reads key as of the view. A value in the cache was committed before
// the view was taken: the reads of a view are of bodies its state refers
// to, and a body deleted since is no longer in the cache.
func (v *bodyView) Get(key []byte) ([]byte, bool, error) {
	if val, ok := v.cache.get(key); ok {
		return val, true, nil
	}
	if v.pin != nil && v.pin.deleted(key, v.seq) {
		return nil, false, nil
	}
	if v.it == nil {
		it, err := v.s.NewIter(nil)
		if err != nil {
			return nil, false, err
		}
		v.it = it
	}
	// A receive reads consecutive ids: the next key is usually the one
	// after the iterator's, one step away instead of a seek.
	found := false
	if v.it.Valid() && bytes.Compare(v.it.Key(), key) < 0 && v.it.Next() {
		found = bytes.Equal(v.it.Key(), key)
	}
	if !found && (!v.it.SeekGE(key) || !bytes.Equal(v.it.Key(), key)) {
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

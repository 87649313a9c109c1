package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
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
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"

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
// unflushed memtables or the body buffer (bodybuffer.go), or leaves a
// half-written file, loses nothing.
type bodyStore struct {
	path     string
	memtable uint64
	opts     *pebble.Options // of the open DB
	log      *slog.Logger
	backoff  *backgroundBackoff

	// mu guards db, which adopt replaces, and pin.
	mu  sync.RWMutex
	db  *pebble.DB
	pin *pinned // deletes held back for a pending checkpoint; nil: none

	// cpMu keeps a checkpoint's Write and adopt apart.
	cpMu sync.Mutex

	// buf holds the bodies stored last, before they reach pebble
	// (bodybuffer.go). flushMu is held by whatever writes a chunk of it
	// into pebble, and by the deletes that must come after that write.
	buf     *bodyBuffer
	flushMu sync.Mutex
	wake    chan struct{} // the flusher: the buffer passed its bound, or a chunk died
	stop    chan struct{}
	stopped chan struct{}
	// flushErr is the flusher's last failure, which the next Commit
	// returns: a store that cannot write stops the node.
	flushErr atomic.Pointer[error]
	// beforeFlushCommit, if set, runs between a flush's choice of bodies
	// and its commit (tests).
	beforeFlushCommit func()
	// deletes counts the batches with deletes since the last flush.
	deletes atomic.Int64
	// spanMu guards the span of body ids deleted in pebble since the last
	// compaction (compactDeleted).
	spanMu         sync.Mutex
	spanLo, spanHi uint64
	spanSet        bool
	// lowDisk, if set, says why the data dir's disk is low (the disk
	// guard's reading): no flush is begun then (flushDeletes).
	lowDisk func() error
}

var _ fsm.CheckpointStore = (*bodyStore)(nil)

// openBodyStore removes dataDir's body store and opens a new, empty one.
// The caller holds the data dir's lock (the log store's), so no other
// process uses the store it removes.
func openBodyStore(dataDir string, log *slog.Logger, buffer int) (*bodyStore, error) {
	return openBodyStoreWith(dataDir, log, bodyStoreMemTable, buffer)
}

// openBodyStoreSized is openBodyStore with memtables of memtable bytes and
// no body buffer: every body goes to pebble as it is stored.
func openBodyStoreSized(dataDir string, log *slog.Logger, memtable uint64) (*bodyStore, error) {
	return openBodyStoreWith(dataDir, log, memtable, 0)
}

// openBodyStoreWith is openBodyStore with memtables of memtable bytes and
// a body buffer of buffer bytes (0: none).
func openBodyStoreWith(dataDir string, log *slog.Logger, memtable uint64, buffer int) (*bodyStore, error) {
	path := filepath.Join(dataDir, bodyStoreDir)
	for _, dir := range []string{path, path + incomingSuffix, path + ingestSuffix} {
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("%w: remove the body store %s: %v", ErrDataDir, dir, err)
		}
	}
	log = log.With("component", "body-store")
	s := &bodyStore{path: path, memtable: memtable, log: log, backoff: &backgroundBackoff{log: log},
		buf: newBodyBuffer(buffer), wake: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{})}
	db, err := s.open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: open the body store %s: %v", ErrDataDir, path, err)
	}
	s.db = db
	go s.flusher()
	return s, nil
}

// flusher writes the oldest chunks of the buffer into pebble whenever it
// passes its bound, and drops the chunks whose bodies are all deleted.
func (s *bodyStore) flusher() {
	defer close(s.stopped)
	for {
		select {
		case <-s.stop:
			return
		case <-s.wake:
		}
		for {
			select {
			case <-s.stop:
				return
			default:
			}
			more, err := s.flush(false, 0)
			if err != nil {
				s.flushErr.Store(&err)
				s.log.Error("body store: write buffered bodies", "err", err)
				break
			}
			if !more {
				break
			}
		}
	}
}

func (s *bodyStore) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pinSeqLocked is the buffer's delete sequence at the pending
// checkpoint's pin, -1 without one; the caller holds s.mu.
func (s *bodyStore) pinSeqLocked() int64 {
	if s.pin == nil {
		return -1
	}
	return s.pin.bufSeq
}

// open opens pebble on dir with the store's options.
func (s *bodyStore) open(dir string) (*pebble.DB, error) {
	cache := pebble.NewCache(bodyStoreCache)
	defer cache.Unref()
	s.opts = &pebble.Options{
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
	}
	db, err := pebble.Open(dir, s.opts)
	s.opts.EnsureDefaults() // for the writer options of ingested files
	return db, err
}

// ingestSuffix names the file, beside the store, that a flush writes and
// pebble links in.
const ingestSuffix = "-ingest.sst"

// ingestMin is the least a flush writes as a file of its own; less goes
// through the memtable.
const ingestMin = 1 << 20

// flush writes chunks of the buffer into pebble and removes them from it:
// with force, those that start at or below upTo (a checkpoint); else, if
// the buffer is over its bound, the oldest down to half of it. It reports
// whether it wrote any.
//
// The bodies go into one sstable that pebble ingests: written once, in key
// order, and linked in at the lowest level, below everything, since body
// ids grow, where a write through the memtable would insert each body,
// stall while full memtables flush, write it again and compact it. Less
// than ingestMin goes through the memtable. The FSM goes on meanwhile: a
// delete of a body being written marks it in the buffer, and the flush
// deletes it in pebble after its write, before the chunk leaves the
// buffer.
func (s *bodyStore) flush(force bool, upTo uint64) (wrote bool, err error) {
	s.flushMu.Lock() // adopt and Release take it too: s.db stays
	defer s.flushMu.Unlock()
	// Under s.mu, so that no checkpoint pins between the choice of the
	// bodies and the pin's sequence they were chosen by.
	s.mu.RLock()
	ws := s.buf.startFlush(force, upTo, s.pinSeqLocked())
	s.mu.RUnlock()
	if len(ws) == 0 {
		return false, nil
	}
	if s.beforeFlushCommit != nil {
		s.beforeFlushCommit()
	}
	if err := s.write(ws); err != nil {
		s.buf.abortFlush(ws)
		return false, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	s.buf.mu.Lock()
	defer s.buf.mu.Unlock()
	if gone := s.buf.endFlushLocked(ws, s.pinSeqLocked()); len(gone) > 0 {
		b := s.db.NewBatch()
		defer b.Close()
		for _, id := range gone {
			_ = b.Delete(storeBodyKey(id), nil)
			s.noteDeleted(id, id)
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			return true, fmt.Errorf("delete %d bodies acked while they were written: %w", len(gone), err)
		}
		s.deletes.Add(1)
	}
	return true, nil
}

// write puts the bodies of ws into pebble.
func (s *bodyStore) write(ws []flushWrite) error {
	n := 0
	for _, w := range ws {
		for _, e := range w.bodies {
			n += len(e.value)
		}
	}
	if n == 0 {
		return nil
	}
	var key [9]byte
	key[0] = 'b'
	if n < ingestMin {
		b := s.db.NewBatch()
		defer b.Close()
		for _, w := range ws {
			for _, e := range w.bodies {
				binary.BigEndian.PutUint64(key[1:], e.id)
				_ = b.Set(key[:], e.value, nil)
			}
		}
		return b.Commit(pebble.NoSync)
	}
	tmp := s.path + ingestSuffix
	f, err := vfs.Default.Create(tmp, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // pebble linked it, or it failed
	wr := sstable.NewWriter(objstorageprovider.NewFileWritable(f), s.opts.MakeWriterOptions(0, s.db.TableFormat()))
	for _, w := range ws {
		for _, e := range w.bodies {
			binary.BigEndian.PutUint64(key[1:], e.id)
			if err := wr.Set(key[:], e.value); err != nil {
				_ = wr.Close()
				return err
			}
		}
	}
	if err := wr.Close(); err != nil {
		return err
	}
	return s.db.Ingest(context.Background(), []string{tmp})
}

// Get implements fsm.Store. A value from pebble is a copy; one from the
// buffer is shared, and nothing changes it.
func (s *bodyStore) Get(key []byte) ([]byte, bool, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if id, ok := bodyKeyID(key); ok {
		if v, live, held := s.buf.get(id); held {
			return v, live, nil
		}
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
	// The buffer's lock keeps a flush from moving a chunk into pebble
	// between the snapshot and the buffer's view: each body is in one of
	// them.
	s.buf.mu.RLock()
	v := &bodyView{s: s.db.NewSnapshot(), pin: s.pin, buf: s.buf.viewLocked()}
	s.buf.mu.RUnlock()
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
		return nil
	}
	return s.compactDeleted(stop)
}

// noteDeleted records that pebble got a delete of the body ids lo..hi.
func (s *bodyStore) noteDeleted(lo, hi uint64) {
	s.spanMu.Lock()
	defer s.spanMu.Unlock()
	if !s.spanSet {
		s.spanLo, s.spanHi, s.spanSet = lo, hi, true
		return
	}
	s.spanLo, s.spanHi = min(s.spanLo, lo), max(s.spanHi, hi)
}

// noteDeletion is noteDeleted of a delete of the store's keys; a range
// to the top of the ids ends at the highest id pebble may hold.
func (s *bodyStore) noteDeletion(d deletion) {
	if d.end == nil {
		if id, ok := bodyKeyID(d.key); ok {
			s.noteDeleted(id, id)
		}
		return
	}
	lo, hi, ok := bodyRangeIDs(d.key, d.end)
	if !ok || hi == 0 {
		return
	}
	s.buf.mu.RLock()
	top := s.buf.pebbleMax
	s.buf.mu.RUnlock()
	if hi = min(hi-1, top); lo <= hi {
		s.noteDeleted(lo, hi)
	}
}

// compactDeleted compacts the span of body ids deleted since the last
// time. The bodies a flush writes go to the lowest level as files of
// their own, and the range deletes of a drain, each over the ids of one
// ack, cover none of them whole, so pebble would leave them until its
// level-0 files pile up; compacting the drained span drops them now, and
// rewrites only the live bodies among them. Not while the disk is low
// (flushDeletes).
func (s *bodyStore) compactDeleted(stop <-chan struct{}) error {
	s.spanMu.Lock()
	lo, hi, ok := s.spanLo, s.spanHi, s.spanSet
	s.spanSet = false
	s.spanMu.Unlock()
	if !ok {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	end := []byte{'b' + 1}
	if hi < math.MaxUint64 {
		end = storeBodyKey(hi + 1)
	}
	s.cpMu.Lock() // not while adopt replaces the DB
	defer s.cpMu.Unlock()
	s.mu.RLock()
	db := s.db
	s.mu.RUnlock()
	if err := db.Compact(ctx, storeBodyKey(lo), end, false); err != nil && ctx.Err() == nil {
		return fmt.Errorf("compact the drained bodies %d..%d: %w", lo, hi, err)
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

// Close stops the flusher and closes pebble. The buffer and unflushed
// writes are lost, which the next start, which removes the store, does not
// mind.
func (s *bodyStore) Close() error {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.stopped
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

// bodyBatch puts its sets into the buffer at Commit, or into a pebble
// batch as they come if the buffer takes none, and keeps its deletes aside
// until Commit, which holds them back while a checkpoint is pending
// (pinned). The FSM never deletes a key it sets in a later part of the
// same batch (body ids are never reused), so deletes after sets keep the
// batch's meaning.
type bodyBatch struct {
	s    *bodyStore
	b    *pebble.Batch
	dels []deletion
	sets []bufEntry // for the buffer
}

// deletion is a key (end nil) or a range [key, end).
type deletion struct{ key, end []byte }

// Set keeps value for the buffer (the FSM hands over values it keeps
// nothing of, and nothing changes them) or copies it into the pebble
// batch.
func (b *bodyBatch) Set(key, value []byte) {
	if id, ok := bodyKeyID(key); ok && b.s.buf.max > 0 {
		b.sets = append(b.sets, bufEntry{id: id, value: value})
		return
	}
	_ = b.b.Set(key, value, nil)
}
func (b *bodyBatch) Delete(key []byte) {
	b.dels = append(b.dels, deletion{key: bytes.Clone(key)})
}
func (b *bodyBatch) DeleteRange(from, to []byte) {
	b.dels = append(b.dels, deletion{key: bytes.Clone(from), end: bytes.Clone(to)})
}

// Commit applies the batch without fsync: the store is rebuilt from the
// Raft log after a crash. Bodies go into the buffer; a delete of a body
// the buffer holds only marks it there, others go to pebble (or to the
// pending checkpoint's held deletes). A flush that is writing a body
// deleted here deletes it in pebble after its write.
func (b *bodyBatch) Commit() error {
	s := b.s
	if p := s.flushErr.Swap(nil); p != nil {
		return fmt.Errorf("write buffered bodies: %w", *p)
	}
	s.mu.RLock()
	for _, e := range b.sets {
		if !s.buf.add(e.id, e.value) {
			_ = b.b.Set(storeBodyKey(e.id), e.value, nil)
			s.buf.wrote(e.id)
		}
	}
	var emptied, deleted bool
	var held []deletion
	for _, d := range b.dels {
		var r markResult
		if d.end == nil {
			if id, ok := bodyKeyID(d.key); ok {
				r = s.buf.markPoint(id)
			}
		} else if lo, hi, ok := bodyRangeIDs(d.key, d.end); ok {
			r = s.buf.markRange(lo, hi, s.pin == nil)
		}
		emptied = emptied || r.emptied
		switch {
		case s.pin != nil:
			held = append(held, d)
		case !r.held:
			d.apply(b.b)
			s.noteDeletion(d)
			deleted = true
		}
	}
	if len(held) > 0 {
		s.pin.add(held)
		deleted = true
	}
	s.mu.RUnlock()
	if deleted {
		s.deletes.Add(1)
	}
	b.dels, b.sets = nil, nil
	if !b.b.Empty() {
		s.mu.RLock()
		err := b.b.Commit(pebble.NoSync)
		s.mu.RUnlock()
		if err != nil {
			return err
		}
	}
	switch {
	case s.buf.over(2):
		// The flusher does not keep up: write on this goroutine, which
		// holds the FSM back as a slow engine would.
		for s.buf.over(1) {
			if _, err := s.flush(false, 0); err != nil {
				return fmt.Errorf("write buffered bodies: %w", err)
			}
		}
	case emptied || s.buf.over(1):
		s.signal()
	}
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
	// bufSeq is the buffer's delete sequence at the pin, upTo the highest
	// body id it held: Write puts the buffer's bodies up to upTo into
	// pebble, those deleted after bufSeq too.
	bufSeq int64
	upTo   uint64

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
	s.buf.mu.RLock()
	s.pin.bufSeq, s.pin.upTo = s.buf.seq, s.buf.lastID
	s.buf.mu.RUnlock()
	return &storeCheckpoint{s: s, pin: s.pin, db: s.db}, nil
}

type storeCheckpoint struct {
	s    *bodyStore
	pin  *pinned
	db   *pebble.DB
	once sync.Once
}

// Write writes the buffer's bodies of the pinned state into pebble,
// flushes the memtables, so that the files hold every batch committed up
// to now, and writes a pebble checkpoint into dir: hard links to the
// sstables, a copy of the manifest and options. Its cost follows the
// buffer's bound, the number of files and the memtable's size, not the
// backlog.
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
	start := time.Now()
	if _, err := c.s.flush(true, c.pin.upTo); err != nil {
		return fmt.Errorf("write buffered bodies: %w", err)
	}
	buffered := time.Since(start)
	if err := c.db.Flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	flushed := time.Since(start)
	if err := c.db.Checkpoint(dir); err != nil {
		return fmt.Errorf("checkpoint into %s: %w", dir, err)
	}
	c.s.log.Info("body store checkpoint written", "buffer", buffered.Round(time.Millisecond),
		"memtable", (flushed - buffered).Round(time.Millisecond), "links", (time.Since(start) - flushed).Round(time.Millisecond))
	return nil
}

// Release commits the held deletes, in one batch, and unpins. A held
// delete of a body still in the buffer is not one pebble needs. It waits
// for a flush in progress, whose bodies some deletes may be of.
func (c *storeCheckpoint) Release() {
	c.once.Do(func() {
		s := c.s
		s.flushMu.Lock()
		defer s.flushMu.Unlock()
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
			if id, ok := bodyKeyID([]byte(k)); ok {
				if _, _, held := s.buf.get(id); held {
					continue
				}
			}
			_ = b.Delete([]byte(k), nil)
			s.noteDeletion(deletion{key: []byte(k)})
		}
		for _, r := range c.pin.ranges {
			r.apply(b)
			s.noteDeletion(r.deletion)
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
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pin = nil
	s.buf.clear() // the adopted store numbers its bodies otherwise
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

// Cached implements fsm.CachedStore: the bodies in the buffer, which a
// receive reads without a pebble iterator and without a copy.
func (s *bodyStore) Cached(key []byte) ([]byte, bool) {
	id, ok := bodyKeyID(key)
	if !ok {
		return nil, false
	}
	v, live, _ := s.buf.get(id)
	return v, live
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
	pin *pinned
	seq int
	buf bufView
}

// Get reads key as of the view: from the buffer's chunks as the view saw
// them, or from the pebble snapshot.
func (v *bodyView) Get(key []byte) ([]byte, bool, error) {
	if id, ok := bodyKeyID(key); ok {
		if val, live, held := v.buf.get(id); held {
			return val, live, nil
		}
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

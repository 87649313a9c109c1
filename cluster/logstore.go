package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/metadb"
	walmetrics "github.com/hashicorp/raft-wal/metrics"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Log stores a data dir can hold (Config.LogStore).
const (
	// LogStoreWAL is hashicorp/raft-wal: each Raft batch is appended to a
	// segment file with one fsync; the segment list and the stable store
	// (term, vote) live in the wal's meta DB. The default for new data dirs.
	LogStoreWAL = "wal"
	// LogStoreBolt is raft-boltdb: log and stable store in raft.db.
	LogStoreBolt = "bolt"
)

// Files of a wal data dir.
const (
	walDirName       = "wal"           // raft-wal's segment files and meta DB
	walMetaFile      = metadb.FileName // the meta DB inside walDirName
	walMigratingName = "wal.migrating" // a conversion from raft.db in progress (migrate.go)
)

// Segment sizes a node accepts (Config.WALSegmentSize). Below 1 MiB most
// Raft batches of large enqueues would span segments and rotations would
// cost more than appends; raft-wal keeps offsets in 32 bits and its file
// system refuses a preallocation above 2 GiB, and segments are only
// reclaimed whole, so 1 GiB bounds what one stale segment keeps on disk.
const (
	minWALSegmentSize     = 1 << 20
	maxWALSegmentSize     = 1 << 30
	defaultWALSegmentSize = 64 << 20 // raft-wal's wal.DefaultSegmentSize
)

// storeLockTimeout bounds the wait for the lock of a store file: a store in
// use by another process (or another node of this process) is refused
// instead of waited for.
const storeLockTimeout = time.Second

// logStore is the Raft log and stable store of one data dir.
type logStore struct {
	raft.LogStore // *walLog or *raftboltdb.BoltStore
	stable        raft.StableStore
	kind          string
	// path is the store's file (raft.db) or directory (wal), named in
	// errors about the store as a whole.
	path string

	bolt       *raftboltdb.BoltStore       // nil on a wal store
	walMeta    *metadb.BoltMetaDB          // nil on a bolt store
	walMetrics *walmetrics.AtomicCollector // nil on a bolt store
	close      func() error
}

// IsMonotonic reports whether the store refuses gaps in the log (raft-wal
// does): raft then removes the whole log after it installs a snapshot.
func (s *logStore) IsMonotonic() bool { return monotonic(s.LogStore) }

// monotonic reports whether raft would see store as a
// raft.MonotonicLogStore that is monotonic. Every wrapper of the log store
// passes it through; one that did not would make raft treat raft-wal as a
// store with gaps after a snapshot install, which raft-wal refuses.
func monotonic(store raft.LogStore) bool {
	m, ok := store.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

// Close closes the store's files.
func (s *logStore) Close() error { return s.close() }

// fileOf names the file that holds log entry index: raft.db, or the wal's
// segment file whose range covers it (the wal dir if none does).
func (s *logStore) fileOf(index uint64) string {
	if s.walMeta == nil {
		return s.path
	}
	st, err := s.walMeta.Load(s.path)
	if err != nil {
		return s.path
	}
	name := ""
	for _, seg := range st.Segments {
		if seg.BaseIndex <= index && (seg.SealTime.IsZero() || index <= seg.MaxIndex) {
			name = segment.FileName(seg)
		}
	}
	if name == "" {
		return s.path
	}
	return filepath.Join(s.path, name)
}

// openLogStore opens the store of kind in dataDir. segSize is the size of
// the wal segments it creates (0: raft-wal's default). fsyncs, if not nil,
// observes the duration of every fsync of a wal segment file.
func openLogStore(dataDir, kind string, segSize int64, log *slog.Logger, fsyncs prometheus.Observer) (*logStore, error) {
	switch kind {
	case LogStoreBolt:
		return openBolt(filepath.Join(dataDir, raftDBFile))
	case LogStoreWAL:
		return openWAL(filepath.Join(dataDir, walDirName), segSize, log, fsyncs)
	}
	return nil, configErr("log store %q: want wal or bolt", kind)
}

func openBolt(path string) (*logStore, error) {
	store, err := raftboltdb.New(raftboltdb.Options{
		Path: path,
		// NoFreelistSync: the freelist is rebuilt from the pages on open
		// instead of being rewritten by every commit, so a commit (one per
		// Raft batch) writes and fsyncs less. The log data itself is still
		// fsynced: raft-boltdb's NoSync stays false.
		BoltOptions: &bbolt.Options{Timeout: storeLockTimeout, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType},
	})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s is locked by another process (is another quorumq using this data dir?)", ErrDataDir, path)
		}
		return nil, fmt.Errorf("%w: open %s: %v", ErrDataDir, path, err)
	}
	return &logStore{LogStore: store, stable: store, kind: LogStoreBolt, path: path, bolt: store, close: store.Close}, nil
}

// openWAL opens (or creates) the raft-wal store in dir, after checking
// its segment files (checkSegmentFiles). New segments are segSize bytes
// (0: raft-wal's default); a segment already on disk keeps the size its
// meta records, which is also what checkSegmentFiles checks it against,
// so a node restarted with another size opens its log. raft-wal keeps
// two things open that its Close leaves alone or cannot bound:
//
//   - Its meta DB is a bbolt file opened without a lock timeout, so a
//     second open waits forever for the lock. The lock is tried here first,
//     for storeLockTimeout.
//   - wal.Close does not close the meta DB, whose lock then stays held for
//     the life of the process: a node stopped and started again in one
//     process (tests, quorumq dev) would wait forever. The meta DB is
//     created here and closed by the store's Close after the wal's.
func openWAL(dir string, segSize int64, log *slog.Logger, fsyncs prometheus.Observer) (*logStore, error) {
	if segSize == 0 {
		segSize = defaultWALSegmentSize
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: create %s: %v", ErrDataDir, dir, err)
	}
	metaPath := filepath.Join(dir, walMetaFile)
	if err := checkBoltFile(metaPath); err != nil {
		return nil, err
	}
	if err := lockFree(metaPath, storeLockTimeout); err != nil {
		return nil, err
	}
	meta := &metadb.BoltMetaDB{}
	st, err := meta.Load(dir)
	if err != nil {
		meta.Close()
		return nil, fmt.Errorf("%w: %s: read the segment list: %v", ErrDataDir, metaPath, err)
	}
	torn, err := checkSegmentFiles(dir, st) // walcheck.go
	if err != nil {
		meta.Close()
		return nil, err
	}
	if torn != "" {
		log.Warn("the wal's last batch fails its checksum; raft-wal drops it, as a write torn by a crash (its entries come back from the leader)", "batch", torn)
	}
	collector := walmetrics.NewAtomicCollector(wal.MetricDefinitions)
	var vfs types.VFS = fs.New()
	if fsyncs != nil {
		vfs = timedVFS{VFS: vfs, fsyncs: fsyncs}
	}
	if walVFS != nil {
		vfs = walVFS(vfs)
	}
	vfs = createVFS{VFS: vfs, log: log}
	wl := &walLog{dir: dir, meta: meta, log: log, open: func() (*wal.WAL, error) {
		if err := removeEmptyTail(dir, meta); err != nil {
			return nil, err
		}
		return wal.Open(dir,
			wal.WithMetaStore(meta),
			wal.WithSegmentFiler(walFiler{segment.NewFiler(dir, vfs)}),
			wal.WithSegmentSize(int(segSize)),
			wal.WithMetricsCollector(collector),
			wal.WithLogger(hclogFor(log, "wal")),
		)
	}}
	if wl.w, err = wl.open(); err != nil {
		meta.Close()
		return nil, fmt.Errorf("%w: open the raft-wal store in %s: %v", ErrDataDir, dir, err)
	}
	return &logStore{
		LogStore: wl, stable: wl, kind: LogStoreWAL, path: dir,
		walMeta: meta, walMetrics: collector,
		close: wl.Close,
	}, nil
}

// walVFS, if not nil, wraps the file system raft-wal writes through
// (tests make it fail as a full disk does).
var walVFS func(types.VFS) types.VFS

// removeEmptyTail removes the tail segment file if nothing was ever
// committed to it (its header, written with the first batch, is zeros or
// missing), so that raft-wal creates it again, preallocated. raft-wal
// leaves such a file when preallocating a new segment fails (a full disk)
// and would otherwise append to it unpreallocated.
func removeEmptyTail(dir string, meta *metadb.BoltMetaDB) error {
	st, err := meta.Load(dir)
	if err != nil || len(st.Segments) == 0 {
		return err
	}
	tail := st.Segments[len(st.Segments)-1]
	if !tail.SealTime.IsZero() {
		return nil
	}
	path := filepath.Join(dir, segment.FileName(tail))
	if _, err := os.Stat(path); err != nil || hasHeader(path) {
		return nil
	}
	return os.Remove(path)
}

// lockFree waits up to d for no one to hold the bolt lock (flock) of path,
// and reports "locked" naming path if someone still does. A missing file
// is free.
func lockFree(path string, d time.Duration) error {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: open %s: %v", ErrDataDir, path, err)
	}
	defer f.Close() // releases the lock taken below
	deadline := time.Now().Add(d)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("%w: lock %s: %v", ErrDataDir, path, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s is locked by another process (is another quorumq using this data dir?)", ErrDataDir, path)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// walLog is raft-wal's log and stable store with two repairs.
//
//   - After raft deletes the head of the log (compaction after a snapshot),
//     raft-wal v0.4.0 still returns the deleted entries that sit in the
//     tail segment: the tail's reader checks the range the segment was
//     created with, not the one the deletion left. Raft would then
//     replicate a new follower from entries it compacted, and after a
//     restart the same reads fail. A read below the first index is
//     ErrLogNotFound, as in raft-boltdb: raft sends a snapshot instead.
//   - raft-wal seals a full segment and starts the next one in the
//     background. If creating the next file fails (a full disk cannot hold
//     its preallocation), raft-wal logs "rotate error" and never tries
//     again: every later append fails with "sealed" until the process
//     restarts, also once the disk has room. An append that fails so opens
//     the wal again, the way a restart would (raft-wal then creates the
//     missing segment), and retries; while that fails too, the append
//     fails as on a full disk, reads go on from the wal that is open, and
//     the next append tries again.
type walLog struct {
	dir  string
	meta *metadb.BoltMetaDB
	log  *slog.Logger
	open func() (*wal.WAL, error)

	mu sync.RWMutex // held for reading around every call of w
	w  *wal.WAL
}

func (l *walLog) with(fn func(w *wal.WAL) error) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return fn(l.w)
}

// FirstIndex implements raft.LogStore.
func (l *walLog) FirstIndex() (i uint64, err error) {
	err = l.with(func(w *wal.WAL) (err error) { i, err = w.FirstIndex(); return err })
	return i, err
}

// LastIndex implements raft.LogStore.
func (l *walLog) LastIndex() (i uint64, err error) {
	err = l.with(func(w *wal.WAL) (err error) { i, err = w.LastIndex(); return err })
	return i, err
}

// GetLog implements raft.LogStore.
func (l *walLog) GetLog(index uint64, log *raft.Log) error {
	return l.with(func(w *wal.WAL) error {
		first, err := w.FirstIndex()
		if err != nil {
			return err
		}
		if index < first {
			return raft.ErrLogNotFound
		}
		return w.GetLog(index, log)
	})
}

// StoreLog implements raft.LogStore.
func (l *walLog) StoreLog(log *raft.Log) error { return l.StoreLogs([]*raft.Log{log}) }

// StoreLogs implements raft.LogStore.
func (l *walLog) StoreLogs(logs []*raft.Log) error {
	var sealed *wal.WAL
	err := l.with(func(w *wal.WAL) error {
		err := w.StoreLogs(logs)
		if errors.Is(err, wal.ErrSealed) {
			sealed = w
		}
		return err
	})
	if sealed == nil {
		return err
	}
	if rerr := l.reopen(sealed); rerr != nil {
		return fmt.Errorf("%w (the wal could not start a new segment: %v)", err, rerr)
	}
	return l.with(func(w *wal.WAL) error { return w.StoreLogs(logs) })
}

// reopen replaces sealed, unless another call did already, by the wal
// opened again. The new one is opened before the old one is closed, so a
// failure leaves the old one serving reads.
func (l *walLog) reopen(sealed *wal.WAL) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w != sealed {
		return nil
	}
	w, err := l.open()
	if err != nil {
		return err
	}
	l.w = w
	l.log.Warn("the wal could not start its next segment (was the disk full?) and has been opened again", "dir", l.dir)
	return sealed.Close()
}

// DeleteRange implements raft.LogStore.
func (l *walLog) DeleteRange(lo, hi uint64) error {
	return l.with(func(w *wal.WAL) error { return w.DeleteRange(lo, hi) })
}

// IsMonotonic implements raft.MonotonicLogStore.
func (l *walLog) IsMonotonic() bool { return true }

// Set implements raft.StableStore.
func (l *walLog) Set(k, v []byte) error {
	return l.with(func(w *wal.WAL) error { return w.Set(k, v) })
}

// Get implements raft.StableStore.
func (l *walLog) Get(k []byte) (v []byte, err error) {
	err = l.with(func(w *wal.WAL) (err error) { v, err = w.Get(k); return err })
	return v, err
}

// SetUint64 implements raft.StableStore.
func (l *walLog) SetUint64(k []byte, v uint64) error {
	return l.with(func(w *wal.WAL) error { return w.SetUint64(k, v) })
}

// GetUint64 implements raft.StableStore.
func (l *walLog) GetUint64(k []byte) (v uint64, err error) {
	err = l.with(func(w *wal.WAL) (err error) { v, err = w.GetUint64(k); return err })
	return v, err
}

// Close closes the wal, then its meta DB, which wal.Close leaves open.
func (l *walLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return errors.Join(l.w.Close(), l.meta.Close())
}

// walFiler is raft-wal's segment filer with one repair. raft-wal v0.4.0
// seals the tail segment when raft deletes a suffix of the log (a follower
// whose log conflicts with its leader's) but does not write the index block
// a sealed segment is read through (hashicorp/raft-wal#31, fixed upstream
// after v0.4.0). While the process runs the segment is still read through
// its writer's in-memory index; after a restart every read of it failed
// with "sealed segment has no index block", and raft panics on a log read
// error. A sealed segment without an index is opened the way raft-wal
// opens a tail instead: by reading its frames through once, which rebuilds
// that index in memory. The wal only reads it up to the MaxIndex the
// truncation recorded, so the deleted entries after it stay unread.
type walFiler struct{ *segment.Filer }

// Open implements types.SegmentFiler.
func (f walFiler) Open(info types.SegmentInfo) (types.SegmentReader, error) {
	if !info.SealTime.IsZero() && info.IndexStart == 0 {
		return f.RecoverTail(info)
	}
	return f.Filer.Open(info)
}

// Create implements types.SegmentFiler: the new tail's writer is wrapped
// in a sealingWriter.
func (f walFiler) Create(info types.SegmentInfo) (types.SegmentWriter, error) {
	w, err := f.Filer.Create(info)
	if err != nil {
		return nil, err
	}
	return &sealingWriter{SegmentWriter: w, filer: f.Filer, info: info}, nil
}

// RecoverTail implements types.SegmentFiler, as Create does.
func (f walFiler) RecoverTail(info types.SegmentInfo) (types.SegmentWriter, error) {
	w, err := f.Filer.RecoverTail(info)
	if err != nil {
		return nil, err
	}
	return &sealingWriter{SegmentWriter: w, filer: f.Filer, info: info}, nil
}

// sealingWriter lets go of a segment writer once its segment is sealed.
// raft-wal keeps a sealed tail's writer as the segment's reader until
// the segment is deleted, and with it the writer's commit buffer, which
// has grown to the largest batch the segment took (a power of two: 1 MiB
// batches of bodies make 1–2 MiB buffers, batches of a pipeline more).
// A node then held one such buffer per segment of its log. Once sealed,
// the segment is read through a reader raft-wal opens as it does at a
// start (the index block the seal wrote), and the writer is closed.
type sealingWriter struct {
	types.SegmentWriter
	filer *segment.Filer
	info  types.SegmentInfo

	mu     sync.RWMutex
	reader types.SegmentReader // once sealed
}

// Sealed implements types.SegmentWriter.
func (w *sealingWriter) Sealed() (bool, uint64, error) {
	sealed, indexStart, err := w.SegmentWriter.Sealed()
	if !sealed || err != nil {
		return sealed, indexStart, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.reader != nil {
		return sealed, indexStart, err
	}
	last := w.SegmentWriter.LastIndex()
	info := w.info
	info.IndexStart, info.MaxIndex, info.SealTime = indexStart, last, time.Now()
	r, rerr := w.filer.Open(info)
	if rerr != nil {
		return sealed, indexStart, err // read through the writer, as before
	}
	w.reader = r
	_ = w.SegmentWriter.Close()
	w.SegmentWriter = sealedTail{lastIndex: last, indexStart: indexStart}
	return sealed, indexStart, err
}

// GetLog implements types.SegmentReader.
func (w *sealingWriter) GetLog(idx uint64) (*types.PooledBuffer, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.reader != nil {
		return w.reader.GetLog(idx)
	}
	return w.SegmentWriter.GetLog(idx)
}

// LastIndex implements types.SegmentWriter.
func (w *sealingWriter) LastIndex() uint64 {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.SegmentWriter.LastIndex()
}

// Close implements io.Closer.
func (w *sealingWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.reader != nil {
		return w.reader.Close()
	}
	return w.SegmentWriter.Close()
}

// sealedTail stands in for a closed writer of a sealed segment: raft-wal
// appends to the new tail only.
type sealedTail struct{ lastIndex, indexStart uint64 }

func (t sealedTail) Append([]types.LogEntry) error              { return types.ErrSealed }
func (t sealedTail) Sealed() (bool, uint64, error)              { return true, t.indexStart, nil }
func (t sealedTail) LastIndex() uint64                          { return t.lastIndex }
func (t sealedTail) GetLog(uint64) (*types.PooledBuffer, error) { return nil, types.ErrNotFound }
func (t sealedTail) Close() error                               { return nil }

// createVFS cleans up after a segment creation that failed. raft-wal
// creates a segment file exclusively, then preallocates it; when the
// preallocation fails (a full disk) the file stays, and raft-wal's next
// try names the segment identically (same ID, same base index) and fails
// with "file exists", every time, for as long as the process runs: the
// log can then neither rotate nor drop a suffix nor be reset after a
// snapshot install. A segment being created is never one the wal's meta
// DB lists (its ID is above all of theirs), so a file of its name is the
// leftover of such a failure, and is removed.
type createVFS struct {
	types.VFS
	log *slog.Logger
}

func (v createVFS) Create(dir, name string, size uint64) (types.WritableFile, error) {
	path := filepath.Join(dir, name)
	f, err := v.VFS.Create(dir, name, size)
	if errors.Is(err, os.ErrExist) {
		if rerr := os.Remove(path); rerr != nil {
			return nil, err
		}
		v.log.Warn("removed a segment file left by a creation that failed", "file", path)
		f, err = v.VFS.Create(dir, name, size)
	}
	if err != nil && !errors.Is(err, os.ErrExist) {
		_ = os.Remove(path) // left by a failed preallocation, if this call created it
	}
	return f, err
}

// timedVFS is the file system raft-wal writes segments through, with
// every fsync of a segment file timed.
type timedVFS struct {
	types.VFS
	fsyncs prometheus.Observer
}

func (v timedVFS) Create(dir, name string, size uint64) (types.WritableFile, error) {
	f, err := v.VFS.Create(dir, name, size)
	if err != nil {
		return nil, err
	}
	return timedFile{WritableFile: f, fsyncs: v.fsyncs}, nil
}

func (v timedVFS) OpenWriter(dir, name string) (types.WritableFile, error) {
	f, err := v.VFS.OpenWriter(dir, name)
	if err != nil {
		return nil, err
	}
	return timedFile{WritableFile: f, fsyncs: v.fsyncs}, nil
}

type timedFile struct {
	types.WritableFile
	fsyncs prometheus.Observer
}

func (f timedFile) Sync() error {
	start := time.Now()
	err := f.WritableFile.Sync()
	f.fsyncs.Observe(time.Since(start).Seconds())
	return err
}

// storeOnDisk reports which log store dataDir holds: bolt (raft.db),
// wal (the wal's meta DB) or "" (neither yet).
func storeOnDisk(dataDir string) (string, error) {
	hasBolt, err := exists(filepath.Join(dataDir, raftDBFile))
	if err != nil {
		return "", err
	}
	hasWAL, err := exists(filepath.Join(dataDir, walDirName, walMetaFile))
	if err != nil {
		return "", err
	}
	switch {
	case hasBolt && hasWAL:
		return "", fmt.Errorf("%w: %s holds both %s and %s; start the node or run quorumq data migrate-log to resolve it", ErrDataDir, dataDir, raftDBFile, walDirName)
	case hasBolt:
		return LogStoreBolt, nil
	case hasWAL:
		return LogStoreWAL, nil
	}
	return "", nil
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: stat %s: %v", ErrDataDir, path, err)
	}
	return true, nil
}

// chooseLogStore picks the log store of the node's data dir: the one it
// holds, or Config.LogStore for a dir that holds none yet. A conversion
// interrupted by a crash is resolved first (finishMigration). A data dir
// never changes store at start: a setting that asks for the other one is
// logged and ignored, since the log and the vote are in the store it has
// (quorumq data migrate-log converts bolt to wal).
func (n *Node) chooseLogStore() (string, error) {
	if err := finishMigration(n.cfg.DataDir, n.log); err != nil {
		return "", err
	}
	onDisk, err := storeOnDisk(n.cfg.DataDir)
	if err != nil {
		return "", err
	}
	if onDisk == "" {
		return n.cfg.LogStore, nil
	}
	if onDisk != n.cfg.LogStore {
		hint := "convert it with quorumq data migrate-log while the node is stopped"
		if onDisk == LogStoreWAL {
			hint = "a wal data dir is not converted back to bolt"
		}
		n.log.Warn("the data dir keeps the log store it has; --log-store applies to new data dirs only",
			"data_dir", n.cfg.DataDir, "log_store", onDisk, "configured", n.cfg.LogStore, "hint", hint)
	}
	return onDisk, nil
}

// boltFile is the bolt file of the node's store: raft.db, or the wal's
// meta DB.
func (n *Node) boltFile() string {
	if n.storeKind == LogStoreWAL {
		return filepath.Join(n.cfg.DataDir, walDirName, walMetaFile)
	}
	return filepath.Join(n.cfg.DataDir, raftDBFile)
}

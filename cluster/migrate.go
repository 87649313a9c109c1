package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/raft-wal/migrate"
)

// Converting a data dir from raft-boltdb to raft-wal (MigrateLogStore)
// must leave it usable if it stops at any point: as the bolt store it was
// or as the wal store it becomes, never neither. The order:
//
//  1. The wal is written into <data-dir>/wal.migrating: every entry and
//     the stable store's keys (term, vote), each append fsynced by raft-wal,
//     then read back and compared with raft.db.
//  2. wal.migrating is renamed to wal and the data dir fsynced. The rename
//     is the commit: a wal dir only ever appears complete.
//  3. raft.db is removed and the data dir fsynced.
//
// A stop before 2 leaves raft.db and a wal.migrating; a stop between 2 and
// 3 leaves raft.db and a complete wal. finishMigration, which every node
// start and every conversion runs first, resolves both the same way every
// time: wal.migrating is removed (the node runs on raft.db as before), and
// of raft.db and a wal the wal wins and raft.db is removed (a node only
// ever ran on the wal once it existed, so raft.db holds nothing newer).

// migrateStop, if set (tests), makes MigrateLogStore stop with an error
// after the step it names ("copied" or "renamed"), as a crash there would.
var migrateStop string

// errMigrateStopped is what MigrateLogStore returns when migrateStop
// stopped it.
var errMigrateStopped = errors.New("conversion stopped by the test hook")

// Migration says what MigrateLogStore did.
type Migration struct {
	// Converted is false when the data dir was on the wal already.
	Converted bool
	// First and Last are the log entries copied (0, 0 for an empty log).
	First, Last uint64
	// Skipped counts entries below a snapshot's index not copied: raft.db
	// had a hole after them (a snapshot install leaves one), and the wal
	// holds no holes.
	Skipped uint64
}

// MigrateLogStore converts the raft-boltdb store (raft.db) of a stopped
// node's data dir into a raft-wal store, in a way that a stop at any point
// leaves the data dir usable (see above). The log is checked the way a
// node checks it at start before anything is copied: a corrupt raft.db is
// refused, not converted. Progress goes to log.
func MigrateLogStore(ctx context.Context, dataDir string, log *slog.Logger) (Migration, error) {
	if log == nil {
		log = slog.Default()
	}
	if _, err := os.Stat(filepath.Join(dataDir, identityFile)); err != nil {
		return Migration{}, fmt.Errorf("%w: %s: %v (not a quorumq data dir?)", ErrDataDir, filepath.Join(dataDir, identityFile), err)
	}
	if err := finishMigration(dataDir, log); err != nil {
		return Migration{}, err
	}
	kind, err := storeOnDisk(dataDir)
	if err != nil {
		return Migration{}, err
	}
	switch kind {
	case LogStoreWAL:
		return Migration{}, nil
	case "":
		return Migration{}, fmt.Errorf("%w: %s has no log store (neither %s nor %s)", ErrDataDir, dataDir, raftDBFile, walDirName)
	}

	dbPath := filepath.Join(dataDir, raftDBFile)
	if err := checkBoltFile(dbPath); err != nil {
		return Migration{}, err
	}
	if err := checkBoltPages(dbPath); err != nil {
		return Migration{}, err
	}
	bolt, err := openBolt(dbPath)
	if err != nil {
		return Migration{}, err
	}
	defer bolt.Close()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dataDir, 1, hclogFor(log, "snapshot"))
	if err != nil {
		return Migration{}, fmt.Errorf("%w: snapshot store in %s: %v", ErrDataDir, filepath.Join(dataDir, "snapshots"), err)
	}
	metas, err := snaps.List()
	if err != nil {
		return Migration{}, fmt.Errorf("%w: list snapshots in %s: %v", ErrDataDir, filepath.Join(dataDir, "snapshots"), err)
	}
	var snapIndex uint64
	for _, s := range metas {
		snapIndex = max(snapIndex, s.Index)
	}
	if err := verifyLog(bolt.LogStore, dbPath, snapIndex, nil); err != nil {
		return Migration{}, err
	}
	src, m, err := contiguousTail(bolt.LogStore)
	if err != nil {
		return Migration{}, err
	}

	tmp := filepath.Join(dataDir, walMigratingName)
	if err := os.RemoveAll(tmp); err != nil {
		return Migration{}, fmt.Errorf("%w: remove %s: %v", ErrDataDir, tmp, err)
	}
	if err := copyToWAL(ctx, tmp, src, bolt.stable, log); err != nil {
		return Migration{}, errors.Join(err, os.RemoveAll(tmp))
	}
	if err := syncDir(tmp); err != nil {
		return Migration{}, err
	}
	if migrateStop == "copied" {
		return Migration{}, errMigrateStopped
	}
	if err := os.Rename(tmp, filepath.Join(dataDir, walDirName)); err != nil {
		return Migration{}, fmt.Errorf("%w: rename %s: %v", ErrDataDir, tmp, err)
	}
	if err := syncDir(dataDir); err != nil {
		return Migration{}, err
	}
	if migrateStop == "renamed" {
		return Migration{}, errMigrateStopped
	}
	if err := bolt.Close(); err != nil {
		return Migration{}, fmt.Errorf("close %s: %w", dbPath, err)
	}
	if err := removeSynced(dbPath); err != nil {
		return Migration{}, err
	}
	m.Converted = true
	log.Info("log store converted from raft-boltdb to raft-wal", "data_dir", dataDir,
		"first", m.First, "last", m.Last, "skipped_below_snapshot", m.Skipped)
	return m, nil
}

// contiguousTail returns the part of store that raft-wal can hold, which
// refuses holes: the entries after the last hole. verifyLog allowed holes
// only below the newest snapshot, so the entries before one are covered by
// that snapshot and raft never reads them.
func contiguousTail(store raft.LogStore) (raft.LogStore, Migration, error) {
	first, err := store.FirstIndex()
	if err != nil {
		return nil, Migration{}, err
	}
	last, err := store.LastIndex()
	if err != nil {
		return nil, Migration{}, err
	}
	if last == 0 {
		return store, Migration{}, nil
	}
	start := first
	var l raft.Log
	for i := first; i <= last; i++ {
		if err := store.GetLog(i, &l); errors.Is(err, raft.ErrLogNotFound) {
			start = i + 1
		} else if err != nil {
			return nil, Migration{}, err
		}
	}
	var skipped uint64
	for i := first; i < start; i++ {
		if store.GetLog(i, &l) == nil {
			skipped++
		}
	}
	return fromIndex{LogStore: store, first: start}, Migration{First: start, Last: last, Skipped: skipped}, nil
}

// fromIndex is a log store whose first entry is first.
type fromIndex struct {
	raft.LogStore
	first uint64
}

func (f fromIndex) FirstIndex() (uint64, error) { return f.first, nil }

// copyToWAL writes a new wal in dir with every entry of src and the
// stable store's keys, then reads it back and compares every entry.
func copyToWAL(ctx context.Context, dir string, src raft.LogStore, stable raft.StableStore, log *slog.Logger) error {
	w, err := openWAL(dir, 0, log, nil)
	if err != nil {
		return err
	}
	progress := make(chan string, 64)
	done := make(chan struct{})
	go func() {
		for msg := range progress {
			log.Info("migrate: " + msg)
		}
		close(done)
	}()
	err = migrate.CopyLogs(ctx, w.LogStore, src, 4<<20, progress) // closes progress
	<-done
	if err == nil {
		err = migrate.CopyStable(ctx, w.stable, missingAsEmpty{stable}, nil, nil, nil)
	}
	if err == nil {
		err = sameLog(w.LogStore, src, dir)
	}
	return errors.Join(err, w.Close())
}

// missingAsEmpty reads a key the store does not have as empty, as raft
// does: raft-boltdb answers "not found" for a vote never cast, and
// migrate.CopyStable copies every key raft uses.
type missingAsEmpty struct{ raft.StableStore }

func (s missingAsEmpty) Get(key []byte) ([]byte, error) {
	v, err := s.StableStore.Get(key)
	if err != nil && err.Error() == "not found" { // raft's own test for a missing key
		return nil, nil
	}
	return v, err
}

func (s missingAsEmpty) GetUint64(key []byte) (uint64, error) {
	v, err := s.StableStore.GetUint64(key)
	if err != nil && err.Error() == "not found" {
		return 0, nil
	}
	return v, err
}

// sameLog compares every entry of got (the new wal in dir) with want.
func sameLog(got, want raft.LogStore, dir string) error {
	first, err := want.FirstIndex()
	if err != nil {
		return err
	}
	last, err := want.LastIndex()
	if err != nil {
		return err
	}
	if last == 0 {
		return nil
	}
	if gf, gl, _ := indexes(got); gf != first || gl != last {
		return fmt.Errorf("%s holds entries %d to %d after the copy, want %d to %d", dir, gf, gl, first, last)
	}
	var a, b raft.Log
	for i := first; i <= last; i++ {
		if err := got.GetLog(i, &a); err != nil {
			return fmt.Errorf("%s: read back entry %d: %w", dir, i, err)
		}
		if err := want.GetLog(i, &b); err != nil {
			return err
		}
		if a.Index != b.Index || a.Term != b.Term || a.Type != b.Type || string(a.Data) != string(b.Data) || string(a.Extensions) != string(b.Extensions) {
			return fmt.Errorf("%s: entry %d read back differs from raft.db's", dir, i)
		}
	}
	return nil
}

func indexes(s raft.LogStore) (first, last uint64, err error) {
	if first, err = s.FirstIndex(); err != nil {
		return 0, 0, err
	}
	last, err = s.LastIndex()
	return first, last, err
}

// finishMigration resolves what a conversion stopped halfway leaves in
// dataDir (see the order above): a wal.migrating is removed; raft.db
// beside a wal is removed.
func finishMigration(dataDir string, log *slog.Logger) error {
	tmp := filepath.Join(dataDir, walMigratingName)
	if ok, err := exists(tmp); err != nil {
		return err
	} else if ok {
		log.Warn("removing an unfinished log store conversion; the node stays on raft.db", "dir", tmp)
		if err := os.RemoveAll(tmp); err != nil {
			return fmt.Errorf("%w: remove %s: %v", ErrDataDir, tmp, err)
		}
		if err := syncDir(dataDir); err != nil {
			return err
		}
	}
	db := filepath.Join(dataDir, raftDBFile)
	hasBolt, err := exists(db)
	if err != nil {
		return err
	}
	hasWAL, err := exists(filepath.Join(dataDir, walDirName, walMetaFile))
	if err != nil {
		return err
	}
	if hasBolt && hasWAL {
		log.Warn("finishing a log store conversion: the wal is complete, removing raft.db", "file", db)
		return removeSynced(db)
	}
	return nil
}

// removeSynced removes path and fsyncs its directory.
func removeSynced(path string) error {
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("%w: remove %s: %v", ErrDataDir, path, err)
	}
	return syncDir(filepath.Dir(path))
}

// syncDir fsyncs dir, so the names created, renamed or removed in it are
// on disk.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("%w: open %s: %v", ErrDataDir, dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("%w: fsync %s: %v", ErrDataDir, dir, err)
	}
	return nil
}

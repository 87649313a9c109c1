package cluster

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime/debug"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/quorumq/quorumq/fsm"
)

// Corruption on one node must stay on that node. bbolt has no page
// checksums and raft replicates log entries as the raw bytes it reads back
// from the store, so a flipped bit in raft.db would otherwise be applied
// (the FSM answers a bad command checksum with an error result and moves
// on: silent divergence) or sent to followers. Three checks close that:
//
//   - checkedLogStore verifies every entry read back from raft-boltdb: the
//     index it claims and, for commands, their CRC32C (fsm.Verify). A bad entry
//     is an error naming raft.db and the index, never data. raft treats a
//     log read error on the apply path as fatal (it logs and panics), so a
//     node that finds corruption while running stops instead of applying
//     garbage; on the replication path the leader logs the error and does
//     not send the entry.
//   - verifyStores, at start-up, runs bbolt's own consistency check over
//     every page, reads every log entry through the checked store, and
//     opens every retained snapshot (raft's FileSnapshotStore verifies the
//     state file's CRC64 on open; a snapshot that is then restored or sent
//     is also checked by the fsm's own CRC32C). Any failure refuses the
//     start with ErrDataDir and the file's path.
//   - bbolt can fault rather than return an error on a page whose pointers
//     were corrupted; the page walk runs with panics on faults enabled, so
//     that too becomes an error naming raft.db.
//
// The fix for a node refused this way is to replace its data: remove it
// from the configuration, wipe the data dir, start it with --join, and
// let it catch up by snapshot (DESIGN.md, "Corrupt data").

// checkedLogStore is a raft.LogStore whose reads are verified.
type checkedLogStore struct {
	raft.LogStore
	path string
	// fileOf, if not nil, names the file that holds an entry (a wal
	// segment); errors name path otherwise.
	fileOf func(index uint64) string
}

// GetLog reads entry index and verifies it.
func (s *checkedLogStore) GetLog(index uint64, log *raft.Log) error {
	if err := s.LogStore.GetLog(index, log); err != nil {
		if errors.Is(err, raft.ErrLogNotFound) {
			return err
		}
		return fmt.Errorf("%w: %s: read log entry %d: %v", ErrDataDir, s.file(index), index, err)
	}
	if err := verifyEntry(index, log); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrDataDir, s.file(index), err)
	}
	return nil
}

// IsMonotonic implements raft.MonotonicLogStore: the checks change
// nothing of what the store under them is.
func (s *checkedLogStore) IsMonotonic() bool { return monotonic(s.LogStore) }

func (s *checkedLogStore) file(index uint64) string {
	if s.fileOf != nil {
		return s.fileOf(index)
	}
	return s.path
}

func verifyEntry(index uint64, log *raft.Log) error {
	if log.Index != index {
		return fmt.Errorf("log entry stored under index %d says it is index %d (corrupt)", index, log.Index)
	}
	// A log-verification checkpoint is a command entry that is not a
	// command (fsm.IsCheckpoint): the FSM passes over it.
	// Its checksum is checked, not its protobuf: decoding a batch of
	// bodies to find a flipped bit cost a start as much as replaying it.
	if log.Type == raft.LogCommand && !fsm.IsCheckpoint(log.Data) {
		if err := fsm.Verify(log.Data); err != nil {
			return fmt.Errorf("log entry %d (term %d) is corrupt: %v", index, log.Term, err)
		}
	}
	return nil
}

// verifyStores checks an existing data dir's stores before raft uses them.
func (n *Node) verifyStores() error {
	snaps, err := n.snaps.List()
	if err != nil {
		return fmt.Errorf("%w: list snapshots in %s: %v", ErrDataDir, filepath.Join(n.cfg.DataDir, "snapshots"), err)
	}
	var snapIndex uint64
	for _, s := range snaps {
		snapIndex = max(snapIndex, s.Index)
	}
	if err := verifyLog(n.store.LogStore, n.store.path, snapIndex, n.store.fileOf); err != nil {
		return err
	}
	for _, s := range snaps {
		_, rc, err := n.snaps.Open(s.ID)
		if err != nil {
			return fmt.Errorf("%w: snapshot %s is corrupt: %v", ErrDataDir, filepath.Join(n.cfg.DataDir, "snapshots", s.ID, "state.bin"), err)
		}
		rc.Close()
		if err := checkSegments(filepath.Join(n.cfg.DataDir, "snapshots", s.ID)); err != nil {
			return fmt.Errorf("%w: %v", ErrDataDir, err)
		}
	}
	return nil
}

// verifyLog reads every entry of store (raft.db or the wal dir at path;
// fileOf, if not nil, names the file of one entry) through the checked
// store: none may be unreadable or corrupt, and none above snapIndex (the
// newest snapshot's) may be missing. Below it a hole is normal: a follower
// that installed a snapshot keeps its older entries and appends after the
// snapshot's index, and raft never reads below it.
func verifyLog(store raft.LogStore, path string, snapIndex uint64, fileOf func(uint64) string) error {
	logs := &checkedLogStore{LogStore: store, path: path, fileOf: fileOf}
	return faultsAsErrors(path, func() error {
		first, err := logs.FirstIndex()
		if err != nil {
			return fmt.Errorf("%w: %s: first log index: %v", ErrDataDir, path, err)
		}
		last, err := logs.LastIndex()
		if err != nil {
			return fmt.Errorf("%w: %s: last log index: %v", ErrDataDir, path, err)
		}
		if last == 0 {
			return nil
		}
		var entry raft.Log
		for i := first; i <= last; i++ {
			if err := logs.GetLog(i, &entry); err != nil {
				if errors.Is(err, raft.ErrLogNotFound) && i <= snapIndex {
					continue
				}
				if errors.Is(err, raft.ErrLogNotFound) {
					return fmt.Errorf("%w: %s: log entry %d is missing between %d and %d (corrupt)", ErrDataDir, path, i, first, last)
				}
				return err
			}
		}
		return nil
	})
}

// checkBoltPages runs bbolt's consistency check (every page reachable
// exactly once, every branch and leaf well formed) on a closed bolt file.
// bbolt turns a panic inside the check into an error itself.
func checkBoltPages(path string) error {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: storeLockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("%w: %s is locked by another process (is another quorumq using this data dir?)", ErrDataDir, path)
	}
	if err != nil {
		return fmt.Errorf("%w: open %s to check it: %v", ErrDataDir, path, err)
	}
	defer db.Close()
	return db.View(func(tx *bbolt.Tx) error {
		var first error
		for cerr := range tx.Check() { // drained: the check runs in its own goroutine
			if first == nil {
				first = fmt.Errorf("%w: %s is corrupt: bbolt check: %v", ErrDataDir, path, cerr)
			}
		}
		return first
	})
}

// faultsAsErrors runs fn, turning a panic, or a memory fault from reading
// a corrupt bolt page through the mapping, into an error naming path.
func faultsAsErrors(path string, fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s is corrupt: reading it failed: %v", ErrDataDir, path, r)
		}
	}()
	return fn()
}

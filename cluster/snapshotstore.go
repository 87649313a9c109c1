package cluster

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// errOlderSnapshot is the refusal of a snapshot older than the node's
// state. It reaches the leader as the InstallSnapshot RPC's error.
var errOlderSnapshot = errors.New("refusing an older snapshot")

// snapshotStore is the snapshot store raft uses: the node's
// FileSnapshotStore, refusing a snapshot older than the node's own state.
//
// hashicorp/raft installs whatever InstallSnapshot brings
// (hashicorp/raft#697): an older snapshot rewinds the FSM, raft's applied
// index and its configuration to that snapshot's, and when the log was
// compacted past it, the next commit panics ("log not found"). An RPC
// that old is stale, e.g. one the leader's replication sent to a node's
// previous incarnation, which arrives after the replaced node installed a
// newer snapshot. Raft asks the store for a sink before it copies,
// restores or compacts anything, and answers the RPC with the store's
// error, so refusing here leaves the node as it was.
//
// Two checks, because raft gives the store no way to tell a received
// snapshot from one of the node's own FSM at Create:
//   - Create refuses an index below the newest snapshot held. That is
//     right for every caller: the node's own snapshot is taken at its
//     FSM's applied index, which never goes below the newest snapshot
//     unless a newer one was installed while it was being taken, and then
//     it would rewind raft's snapshot index.
//   - Close refuses a sink its own FSM did not write (observedSnapshot
//     marks those) whose index is below raft's applied index. Own
//     snapshots are exempt: raft takes them at an index the FSM has
//     already passed by the time Close runs.
//
// A user restore (raft.Restore) creates its snapshot above the last log
// index, and a restore from a backup (seedFromBackup) writes into an empty
// store before raft starts: neither is refused.
type snapshotStore struct {
	*raft.FileSnapshotStore
	dir string // the FileSnapshotStore's: <data-dir>/snapshots
	// state holds an appliedIndexer: the node's Raft once NewRaft
	// returned. Until then nothing has been applied.
	state atomic.Value
}

// appliedIndexer reports the index of the last entry handed to the FSM
// (*raft.Raft does).
type appliedIndexer interface{ AppliedIndex() uint64 }

// follow makes r the source of the applied index.
func (s *snapshotStore) follow(r appliedIndexer) { s.state.Store(r) }

func (s *snapshotStore) applied() uint64 {
	if r, ok := s.state.Load().(appliedIndexer); ok {
		return r.AppliedIndex()
	}
	return 0
}

// Create opens a sink for a snapshot at index, unless the store holds a
// newer snapshot.
func (s *snapshotStore) Create(version raft.SnapshotVersion, index, term uint64, conf raft.Configuration, confIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	list, err := s.List()
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	if len(list) > 0 && index < list[0].Index {
		return nil, fmt.Errorf("%w: snapshot at index %d (term %d) is older than the newest this node holds, at index %d (term %d)",
			errOlderSnapshot, index, term, list[0].Index, list[0].Term)
	}
	sink, err := s.FileSnapshotStore.Create(version, index, term, conf, confIndex, trans)
	if err != nil {
		return nil, err
	}
	return &checkedSink{SnapshotSink: sink, index: index, term: term, store: s}, nil
}

// checkedSink is a sink of snapshotStore: it keeps a received snapshot
// only if it is not older than the applied state.
type checkedSink struct {
	raft.SnapshotSink
	index, term uint64
	store       *snapshotStore
	own         bool // written by this node's FSM (observedSnapshot.Persist)
	// segments: the snapshot holds segment files; earlier: the segment
	// directories of the completed snapshots, newest first, that
	// LinkSegment links from (see segments.go).
	segments bool
	earlier  []string
}

// markOwnSnapshot records that sink is being written by this node's FSM.
func markOwnSnapshot(sink raft.SnapshotSink) {
	if c, ok := sink.(*checkedSink); ok {
		c.own = true
	}
}

// Close keeps the snapshot, or cancels it and returns errOlderSnapshot
// when it was received and the node has applied past its index.
func (c *checkedSink) Close() error {
	if !c.own {
		if applied := c.store.applied(); c.index < applied {
			_ = c.SnapshotSink.Cancel()
			return fmt.Errorf("%w: snapshot at index %d (term %d) is older than the state this node has applied, at index %d",
				errOlderSnapshot, c.index, c.term, applied)
		}
	}
	if err := c.syncSegments(); err != nil {
		_ = c.SnapshotSink.Cancel()
		return fmt.Errorf("sync the snapshot's segment files: %w", err)
	}
	if err := c.SnapshotSink.Close(); err != nil {
		return err
	}
	c.store.dropOlderCheckpoints(c.ID())
	return nil
}

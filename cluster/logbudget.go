package cluster

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// raft bounds its log in entries: a snapshot every SnapshotThreshold
// entries (checked every SnapshotInterval), and TrailingLogs entries kept
// after it. An entry is one command, and a producer's batch of hundreds
// of messages makes one entry of hundreds of kilobytes: 1,000,000
// messages of 1 KiB filled 1,462 entries, so no snapshot came and every
// node kept, checked at start (datacheck.go) and replayed its whole
// 1.1 GB log. The log budget bounds it in bytes too:
//
//   - every node counts the bytes of the entries it applied since its
//     last snapshot, and past SnapshotBytes asks raft for one (followers
//     too: each node snapshots its own state);
//   - before that snapshot, it sets raft's TrailingLogs (a reloadable
//     setting) to about TrailingBytes of entries of the sizes it has
//     seen, at least minTrailingLogs and at most the configured
//     TrailingLogs, so that the compaction after the snapshot keeps about
//     that many bytes.
//
// So a start reads at most about SnapshotBytes + TrailingBytes of log and
// replays at most about SnapshotBytes.
const (
	defaultSnapshotBytes = 256 << 20
	defaultTrailingBytes = 512 << 20
	// minTrailingLogs keeps a follower that is a few entries behind out
	// of a snapshot install, however large the entries.
	minTrailingLogs = 16
)

// logBudget counts what was applied since the last snapshot. A snapshot
// writes the whole index (about 110 bytes per queued message), so the
// budget is at least twice the last snapshot's size: with 10,000,000
// messages queued (a 1.1 GB index) a snapshot every 256 MiB of log would
// leave the node snapshotting all the time, and the log a start replays
// stays within twice what it reads from the snapshot anyway.
type logBudget struct {
	snapshotBytes uint64
	lastSnapshot  atomic.Uint64 // bytes the node's last snapshot wrote
	trigger       chan struct{} // cap 1: a snapshot is due

	mu      sync.Mutex
	bytes   uint64 // since the last snapshot
	entries uint64
}

func newLogBudget(snapshotBytes uint64) *logBudget {
	return &logBudget{snapshotBytes: snapshotBytes, trigger: make(chan struct{}, 1)}
}

// applied counts an entry of n bytes (raft's apply goroutine).
func (b *logBudget) applied(n int) {
	b.mu.Lock()
	b.bytes += uint64(n)
	b.entries++
	due := b.bytes >= max(b.snapshotBytes, 2*b.lastSnapshot.Load())
	b.mu.Unlock()
	if due {
		select {
		case b.trigger <- struct{}{}:
		default:
		}
	}
}

// snapshotted restarts the count (FSM.Snapshot, at the snapshot's entry).
func (b *logBudget) snapshotted() {
	b.mu.Lock()
	b.bytes, b.entries = 0, 0
	b.mu.Unlock()
}

// meanEntry is the mean size of the entries counted, 0 if none.
func (b *logBudget) meanEntry() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.entries == 0 {
		return 0
	}
	return b.bytes / b.entries
}

// trailingLogs is how many entries of mean bytes make about
// trailingBytes, within [minTrailingLogs, most].
func trailingLogs(trailingBytes, mean, most uint64) uint64 {
	if mean == 0 {
		return most
	}
	return min(max(trailingBytes/mean, minTrailingLogs), most)
}

// budgetLoop takes the snapshots the log budget calls for.
func (n *Node) budgetLoop() {
	defer n.wg.Done()
	for {
		select {
		case <-n.stop:
			return
		case <-n.budget.trigger:
		}
		rc := n.raft.ReloadableConfig()
		if want := trailingLogs(n.cfg.TrailingBytes, n.budget.meanEntry(), n.cfg.TrailingLogs); want != rc.TrailingLogs {
			rc.TrailingLogs = want
			if err := n.raft.ReloadConfig(rc); err != nil {
				n.log.Warn("log budget: set trailing logs", "trailing_logs", want, "err", err)
			}
		}
		err := n.raft.Snapshot().Error()
		switch {
		case err == nil, errors.Is(err, raft.ErrNothingNewToSnapshot):
		case errors.Is(err, raft.ErrRaftShutdown):
			return
		default:
			n.log.Warn("log budget: snapshot failed; the next entry tries again", "err", err)
		}
	}
}

// Space given back. The deletes of acked, expired and purged bodies reach
// the store's files only through a memtable flush and the compactions
// after it (delete-only ones for the files a range delete covers), and a
// snapshot's checkpoint keeps the files it links. So every
// storeCheckInterval a node flushes its store if anything was deleted
// since, and asks for a snapshot when the files only the newest
// checkpoint still holds pass a quarter of the store (at least
// minPinnedBytes): the new checkpoint links the store as it is now, and
// the old one goes (dropOlderCheckpoints). It asks too when the segment
// files of its newest snapshot hold more than twice the records the state
// holds now (at least minStaleRecords more): after a drain, the
// tombstones that the dedup window kept are gone from the state but not
// from the snapshot, and only a node's own snapshot replaces it. A
// follower's log grows slowly once the producers stop, so its budget
// alone would keep them for long.
const (
	storeCheckInterval = 10 * time.Second
	minPinnedBytes     = 4 << 20
	minStaleRecords    = 1 << 16
)

func (n *Node) storeLoop() {
	defer n.wg.Done()
	every := storeCheckInterval
	if n.cfg.storeCheck != 0 {
		every = n.cfg.storeCheck
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		if err := n.bodies.flushDeletes(n.stop); err != nil {
			n.log.Warn("body store: flush after deletes failed", "err", err)
		}
		if n.bodies.diskLow() != nil {
			continue // a snapshot's checkpoint flushes the store too
		}
		stale := uint64(minStaleRecords)
		if n.cfg.staleRecords != 0 {
			stale = n.cfg.staleRecords
		}
		snap, now := n.fsm.SegmentRecords()
		if pinned := n.snapStore.pinnedBytes(); pinned > max(minPinnedBytes, n.bodies.diskBytes()/4) || snap > max(now+stale, 2*now) {
			select {
			case n.budget.trigger <- struct{}{}:
			default:
			}
		}
	}
}

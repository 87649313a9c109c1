package fsm

import (
	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// tick purges, in every queue, messages past retention, dedup entries and
// ack tombstones past the dedup window and expired receive replay entries.
// Result.count is the number of entries purged.
func (t *txn) tick() (*fsmpb.Result, *cmdError) {
	var total uint64
	var names []string
	t.committed.Scan(func(q *queue) bool {
		names = append(names, q.name)
		return true
	})
	for _, name := range names {
		q, _ := t.mut("tick", name)
		total += q.tick(t.now)
	}
	return &fsmpb.Result{Count: total}, nil
}

func (q *queue) tick(now int64) uint64 {
	var n uint64
	window := q.settings.dedupWindow
	// Message ids increase with enqueue time (now is monotone), so both
	// the retention and the dedup scans stop at the first young record.
	if q.settings.retention > 0 {
		var old []*message
		q.msgs.Scan(func(m *message) bool {
			if m.enqueuedAt+q.settings.retention > now {
				return false
			}
			if !m.is(flagDeleted) {
				old = append(old, m)
			}
			return true
		})
		for _, m := range old {
			q.remove(m, m.attempt, now, 0, expiredExt)
			q.counters.expired++
		}
		n += uint64(len(old))
	}
	var passed []*message
	q.msgs.Ascend(&message{id: q.dedupCursor}, func(m *message) bool {
		if m.enqueuedAt+window > now {
			return false
		}
		passed = append(passed, m)
		return true
	})
	for _, m := range passed {
		if m.dedupID != "" {
			if cur, ok := q.dedup.Get(m); ok && cur.id == m.id {
				q.dedup.Delete(m)
				q.touch(m.id)
				n++
			}
		}
		if m.is(flagDeleted) && m.at+window <= now {
			q.dropTomb(m)
			n++
		}
		q.dedupCursor = m.id + 1
	}
	// A tombstone goes when its own window is over and the dedup cursor
	// no longer needs it to find its dedup entry.
	var tombs []*message
	q.tombs.Scan(func(m *message) bool {
		if m.at+window > now {
			return false
		}
		if m.id < q.dedupCursor || m.dedupID == "" {
			tombs = append(tombs, m)
		}
		return true
	})
	for _, m := range tombs {
		q.dropTomb(m)
	}
	n += uint64(len(tombs))
	var replays []*replayEntry
	q.replayAt.Scan(func(e *replayEntry) bool {
		if e.at+window > now {
			return false
		}
		replays = append(replays, e)
		return true
	})
	for _, e := range replays {
		q.dropReplay(e)
	}
	return n + uint64(len(replays))
}

func (q *queue) dropTomb(m *message) {
	q.dropMsg(m)
	q.tombs.Delete(m)
}

// dropReplay removes replay entry e and deletes the bodies its auto-ack
// records kept.
func (q *queue) dropReplay(e *replayEntry) {
	q.replay.Delete(e)
	q.replayAt.Delete(e)
	for _, m := range e.autoAcked {
		q.dropBody(m)
	}
}

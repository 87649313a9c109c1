package fsm

import (
	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// redrive moves up to r.max messages out of r.queue, lowest id first: the
// available messages that arrived as dead letters and the queue's own dead
// messages. Each goes to r.to, or ("") to the queue its dead letter came
// from, as a new ready message with the same body, dedup ID and
// attributes, deleted from r.queue in this same command, so that a crash
// can neither lose nor duplicate it. The dedup ID is not looked up in the
// target's dedup window: a message put back must not be swallowed as a
// duplicate of itself. A message whose source is unknown (a dead letter
// of an earlier release) or no longer exists stays where it is.
func (t *txn) redrive(r *fsmpb.Redrive) (*fsmpb.Result, *cmdError) {
	if r.GetMax() < 1 || r.GetMax() > MaxBatch {
		return nil, invalid("redrive.max is %d, limit is 1 to %d", r.GetMax(), MaxBatch)
	}
	if to := r.GetTo(); to != "" {
		if err := checkQueueName("redrive.to", to); err != nil {
			return nil, err
		}
		if t.lookup(to) == nil {
			return nil, fail(fsmpb.ErrorCode_QUEUE_NOT_FOUND, "redrive.to: queue %q does not exist", to)
		}
	}
	q, err := t.mut("redrive.queue", r.GetQueue())
	if err != nil {
		return nil, err
	}
	q.promote(t.now)
	target := func(m *message) string {
		if r.GetTo() != "" {
			return r.GetTo()
		}
		return m.dead().GetSourceQueue()
	}
	var picked []*message
	// held: the groups of which a live message stays, so that none of
	// their later messages may move ahead of it.
	held := make(map[string]bool)
	q.msgs.Scan(func(m *message) bool {
		if uint32(len(picked)) >= r.GetMax() {
			return false
		}
		if m.is(flagDeleted) {
			return true
		}
		// A dead letter waiting behind its group moves only behind the
		// group's earlier messages, in this same command.
		movable := m.is(flagDead) || m.is(flagDeadLetter) && m.is(flagReady|flagWaiting)
		group := ""
		if !m.is(flagDead) {
			group = m.group()
		}
		if to := target(m); movable && to != "" && t.lookup(to) != nil && !held[group] {
			picked = append(picked, m)
		} else if group != "" {
			held[group] = true
		}
		return true
	})
	for _, m := range picked {
		to, _ := t.mut("redrive.to", target(m))
		var ext *extra
		if to.stamp.fates {
			ext = &extra{firstEnqueued: m.firstEnqueued()}
		}
		if g := m.group(); g != "" {
			// Back at the end of its group in the target.
			if ext == nil {
				ext = &extra{}
			}
			ext.group = g
		}
		moved := to.add(m.body, m.dedupID, ext, t.now, t.now, 0) // the body moves, under the same key
		q.tombstone(m, m.attempt, t.now, 0, movedExt(fsmpb.MessageState_MESSAGE_REDRIVEN, to.name, moved.id))
		q.counters.redriven++
		t.notify(to.name)
	}
	return &fsmpb.Result{Count: uint64(len(picked))}, nil
}

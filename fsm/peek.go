package fsm

import (
	"fmt"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/fsm/limits"
)

// PeekOptions selects the messages a Peek shows.
type PeekOptions struct {
	// From is the lowest message id to show (0 and 1: from the start).
	From uint64
	// Max is how many messages to show: 1 to limits.MaxPeek.
	Max int
	// State shows only messages in that state; PEEK_ALL shows every live
	// message.
	State fsmpb.PeekState
	// NoBody leaves bodies out; BodySize still gives their size.
	NoBody bool
}

// Peek returns up to o.Max live messages of queue with id >= o.From in id
// order, as of the last applied command, and the From of the next page (0
// when none is left). It reads and changes nothing else: no lease, no
// attempt, no counter, no log entry. States are judged at the last applied
// now, as the stats are: a due delayed message and an ended lease are
// ready. Bodies and attributes are read from the store. An error wraps ErrInvalidArgument (max, state) or
// ErrQueueNotFound; it is returned before anything is read.
func (f *FSM) Peek(queue string, o PeekOptions) ([]*fsmpb.PeekedMessage, uint64, error) {
	if p := limits.PeekProblem(o.Max, o.State); p != "" {
		return nil, 0, fmt.Errorf("%w: %s", ErrInvalidArgument, p)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	q := f.get(queue)
	if q == nil {
		return nil, 0, fmt.Errorf("%w: %q", ErrQueueNotFound, queue)
	}
	var (
		out  []*fsmpb.PeekedMessage
		next uint64
		err  error
	)
	q.msgs.Ascend(&message{id: o.From}, func(m *message) bool {
		state := peekState(m, f.now)
		if state == fsmpb.PeekState_PEEK_ALL || o.State != fsmpb.PeekState_PEEK_ALL && state != o.State {
			return true
		}
		if len(out) == o.Max {
			next = m.id
			return false
		}
		p := peeked(m, state)
		// Under the read lock the store holds exactly what the records
		// refer to: batches are committed under the write lock.
		body, attrs, ok, rerr := readValue(f.store.Get, m.body)
		if rerr == nil && !ok {
			rerr = fmt.Errorf("body of message %d is missing from the store", m.id)
		}
		if rerr != nil {
			err = fmt.Errorf("fsm: peek %q: %w", queue, rerr)
			return false
		}
		if !o.NoBody {
			p.Body = append([]byte(nil), body...)
		}
		p.Attributes = attrs
		out = append(out, p)
		return true
	})
	if err != nil {
		return nil, 0, err
	}
	return out, next, nil
}

// peekState is m's state at now, or PEEK_ALL for a tombstone.
func peekState(m *message, now int64) fsmpb.PeekState {
	switch {
	case m.is(flagDeleted):
		return fsmpb.PeekState_PEEK_ALL
	case m.is(flagDead):
		return fsmpb.PeekState_PEEK_DEAD
	case m.is(flagWaiting):
		return fsmpb.PeekState_PEEK_WAITING
	case m.is(flagReady) || m.at <= now:
		return fsmpb.PeekState_PEEK_READY
	case m.is(flagLeased):
		return fsmpb.PeekState_PEEK_LEASED
	default:
		return fsmpb.PeekState_PEEK_DELAYED
	}
}

// peeked is m as a peek shows it, without body and attributes.
func peeked(m *message, state fsmpb.PeekState) *fsmpb.PeekedMessage {
	p := &fsmpb.PeekedMessage{
		Id:                 m.id,
		State:              state,
		Attempts:           m.attempt,
		BodySize:           uint64(m.body.size),
		DedupId:            m.dedupID,
		EnqueuedAtUnixNano: m.enqueuedAt,
		LastNackReason:     m.nackReason(),
		DeadLetter:         deadLetterOf(m),
		Group:              m.group(),
	}
	if state == fsmpb.PeekState_PEEK_LEASED || state == fsmpb.PeekState_PEEK_DELAYED {
		p.AtUnixNano = m.at
	}
	if state == fsmpb.PeekState_PEEK_LEASED {
		p.Consumer = m.consumer()
	}
	if p.DeadLetter == nil && m.is(flagDead) {
		p.DeadLetter = m.dead()
	}
	return p
}

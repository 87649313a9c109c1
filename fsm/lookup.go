package fsm

import (
	"fmt"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// Lookup tells what became of one message of queue, named by its id or
// by the dedup ID it was first enqueued with (exactly one of them), as of
// the last applied command: live (ready, delayed, leased by whom until
// when, dead), or what removed it (acked at, dead-lettered or redriven to
// which queue as which id, expired, purged) for as long as its tombstone
// is kept, with the Raft index of the command that last changed it. A
// message never enqueued, or whose tombstone and dedup entry are purged,
// is MESSAGE_UNKNOWN. States are judged as Peek judges them. It reads
// under the read lock and changes nothing. An error wraps
// ErrInvalidArgument or ErrQueueNotFound.
func (f *FSM) Lookup(queue string, id uint64, dedupID string) (*fsmpb.MessageFate, error) {
	switch {
	case id == 0 && dedupID == "":
		return nil, fmt.Errorf("%w: give an id or a dedup ID", ErrInvalidArgument)
	case id != 0 && dedupID != "":
		return nil, fmt.Errorf("%w: give an id or a dedup ID, not both", ErrInvalidArgument)
	case len(dedupID) > MaxDedupID:
		return nil, fmt.Errorf("%w: dedup_id is %d bytes, limit is %d", ErrInvalidArgument, len(dedupID), MaxDedupID)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	q := f.get(queue)
	if q == nil {
		return nil, fmt.Errorf("%w: %q", ErrQueueNotFound, queue)
	}
	if dedupID != "" {
		first, ok := q.dedupLookup(dedupID, f.now, nil)
		if !ok {
			return &fsmpb.MessageFate{DedupId: dedupID}, nil
		}
		id = first
	}
	m, ok := q.msgs.Get(&message{id: id})
	if !ok {
		return &fsmpb.MessageFate{Id: id, DedupId: dedupID}, nil
	}
	return fateOf(m, f.now), nil
}

// fateOf is what Lookup says of record m at now.
func fateOf(m *message, now int64) *fsmpb.MessageFate {
	out := &fsmpb.MessageFate{
		Id:                 m.id,
		DedupId:            m.dedupID,
		EnqueuedAtUnixNano: m.enqueuedAt,
		Attempts:           m.attempt,
		ChangedIndex:       m.index,
		Rejected:           m.is(flagRejected),
		LastNackReason:     m.nackReason(),
		DeadLetter:         deadLetterOf(m),
	}
	if !m.is(flagDeleted) {
		out.Group = m.group()
		switch peekState(m, now) {
		case fsmpb.PeekState_PEEK_WAITING:
			out.State = fsmpb.MessageState_MESSAGE_WAITING
		case fsmpb.PeekState_PEEK_READY:
			out.State = fsmpb.MessageState_MESSAGE_READY
		case fsmpb.PeekState_PEEK_DELAYED:
			out.State, out.AtUnixNano = fsmpb.MessageState_MESSAGE_DELAYED, m.at
		case fsmpb.PeekState_PEEK_LEASED:
			out.State, out.AtUnixNano, out.Consumer = fsmpb.MessageState_MESSAGE_LEASED, m.at, m.consumer()
		case fsmpb.PeekState_PEEK_DEAD:
			out.State, out.AtUnixNano = fsmpb.MessageState_MESSAGE_DEAD, m.at
			out.DeadLetter = m.dead()
		}
		return out
	}
	out.AtUnixNano = m.at
	switch fa := m.fate(); {
	case m.is(flagAcked):
		out.State = fsmpb.MessageState_MESSAGE_ACKED
	case fa != nil:
		out.State, out.MovedToQueue, out.MovedToId = fa.state, fa.queue, fa.id
	default:
		out.State = fsmpb.MessageState_MESSAGE_REMOVED
	}
	return out
}

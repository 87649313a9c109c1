package client

import (
	"context"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// MessageState is where one message is, as Lookup finds it.
type MessageState string

// The states Lookup reports. A delayed message that is due and a lease
// that ran out are ready, as Peek and the queue's stats count them.
const (
	// MessageUnknown: never enqueued under that id or dedup ID, or out of
	// the window: the queue no longer remembers it (its dedup window after
	// removal has passed), or the queue was deleted since.
	MessageUnknown MessageState = "unknown"
	MessageReady   MessageState = "ready"
	MessageDelayed MessageState = "delayed"
	MessageLeased  MessageState = "leased"
	// MessageWaiting: held behind an earlier message of its group
	// (WithGroup), which is delivered first.
	MessageWaiting MessageState = "waiting"
	// MessageDead: dead-lettered with no queue to go to, kept in its queue.
	MessageDead  MessageState = "dead"
	MessageAcked MessageState = "acked"
	// MessageDeadLettered: moved to MovedTo as MovedToID by max deliveries
	// or, with Rejected, by a reject.
	MessageDeadLettered MessageState = "dead-lettered"
	MessageExpired      MessageState = "expired"
	MessagePurged       MessageState = "purged"
	// MessageRedriven: moved to MovedTo as MovedToID by a redrive.
	MessageRedriven MessageState = "redriven"
	// MessageRemoved: removed by a command of a cluster that did not yet
	// record why (a server of an earlier release was a voter).
	MessageRemoved MessageState = "removed"
)

// LookupOptions names the message Lookup looks for: exactly one of ID and
// DedupID.
type LookupOptions struct {
	ID uint64
	// DedupID is the dedup ID the message was first enqueued with; it is
	// found for the queue's dedup window from that enqueue. A dead letter
	// carries its dedup ID into its dead-letter queue without registering
	// it there: look it up by id (the source's MovedToID).
	DedupID string
	// Leader asks for the leader's view, read after it confirms that it
	// is still the leader. Without it the node the client talks to
	// answers from the state it has applied, which on a follower may lag.
	Leader bool
}

// MessageFate is what Lookup knows of one message.
type MessageFate struct {
	Queue   string
	ID      uint64 // 0 when a dedup ID was not found
	DedupID string
	// Group is the message's group while it is live; "" for none.
	Group string
	State MessageState
	// EnqueuedAt is when it was enqueued to Queue.
	EnqueuedAt time.Time
	// Attempts is its deliveries so far, or the final one of a removed
	// message.
	Attempts uint32
	// At is when a delayed message becomes ready, when a lease ends, or
	// when a removed or dead message was removed (acked at, dead-lettered
	// at, ...); zero for a ready one.
	At time.Time
	// Consumer is who holds the lease of a leased message: the consumer
	// name its receive gave ("" for none).
	Consumer string
	// MovedTo and MovedToID say where a dead-lettered or redriven message
	// went, as a new message of that queue.
	MovedTo   string
	MovedToID uint64
	// Rejected: it was dead-lettered by a consumer's reject.
	Rejected bool
	// ChangedIndex is the Raft index of the command that last changed it
	// (0: changed before the cluster recorded it).
	ChangedIndex uint64
	// AppliedIndex is the Raft index of the state the answer was read from
	// (at least).
	AppliedIndex uint64
	// DeadLetter is the origin of a message that arrived as a dead letter,
	// or of a dead one; LastNackReason its last nack reason.
	DeadLetter     *DeadLetter
	LastNackReason string
}

// Lookup tells what became of one message of queue: where it is (ready,
// delayed, leased by whom until when, dead) or what removed it (acked,
// dead-lettered or redriven to which queue as which id, expired, purged),
// and the Raft index that last changed it. It reads, writes nothing and
// is safe to retry.
//
// It is the honest answer to ErrOutcomeUnknown: a producer whose Send
// with a dedup ID ended with an unknown outcome can look the dedup ID up
// instead of guessing. Any state but MessageUnknown means the send landed,
// and says where the message is now. MessageUnknown (read with Leader)
// means it has not landed by the time of the read: a request still on
// its way inside the cluster when the call gave up can land a moment
// later, so the way on is to send it again with the same dedup ID within
// the window, which is safe: should the first one land too, the two are
// one message. A queue remembers a removed message for its dedup window
// after removal, and a dedup ID for the window from its first enqueue.
func (c *Client) Lookup(ctx context.Context, queue string, o LookupOptions) (*MessageFate, error) {
	if err := validateQueueName("Lookup queue", queue); err != nil {
		return nil, err
	}
	if err := wire.ValidateLookup(o.ID, o.DedupID); err != nil {
		return nil, fromStatus("", err)
	}
	req := &quorumqpb.LookupRequest{Queue: queue, Id: o.ID, DedupId: o.DedupID, Leader: o.Leader}
	var resp *quorumqpb.LookupResponse
	err := c.call(ctx, "Lookup", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).Lookup(ctx, req)
		return err
	}, nil)
	if err != nil {
		return nil, err
	}
	m := resp.GetMessage()
	f := &MessageFate{
		Queue: queue, ID: m.GetId(), DedupID: m.GetDedupId(), Group: m.GetGroup(), State: messageStateOf(m.GetState()),
		Attempts: m.GetAttempts(), Consumer: m.GetConsumer(), MovedTo: m.GetMovedToQueue(), MovedToID: m.GetMovedToId(),
		Rejected: m.GetRejected(), ChangedIndex: m.GetChangedIndex(), AppliedIndex: resp.GetAppliedIndex(),
		DeadLetter: deadLetterOf(m.GetDeadLetter()), LastNackReason: m.GetLastNackReason(),
	}
	if f.DedupID == "" {
		f.DedupID = o.DedupID
	}
	if ns := m.GetEnqueuedAtUnixNano(); ns != 0 {
		f.EnqueuedAt = time.Unix(0, ns)
	}
	if ns := m.GetAtUnixNano(); ns != 0 {
		f.At = time.Unix(0, ns)
	}
	return f, nil
}

// messageStateOf turns MESSAGE_DEAD_LETTERED into "dead-lettered".
func messageStateOf(s fsmpb.MessageState) MessageState {
	return MessageState(strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.String(), "MESSAGE_")), "_", "-"))
}

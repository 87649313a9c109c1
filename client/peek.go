package client

import (
	"context"
	"time"

	"google.golang.org/grpc"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// PeekState is a message's state as Peek shows it, and Peek's filter.
type PeekState string

// The states Peek shows and filters by. A delayed message that is due and
// a lease that ran out are ready, as the queue's stats count them.
const (
	PeekAll     PeekState = "all" // as a filter only: every live message
	PeekReady   PeekState = "ready"
	PeekDelayed PeekState = "delayed"
	PeekLeased  PeekState = "leased"
	// PeekDead: dead-lettered with no queue to go to, kept in its source
	// queue and never delivered.
	PeekDead PeekState = "dead"
	// PeekWaiting: held behind an earlier message of its group
	// (WithGroup): only a group's first message may be delivered.
	PeekWaiting PeekState = "waiting"
)

var peekStates = map[PeekState]fsmpb.PeekState{
	"": fsmpb.PeekState_PEEK_ALL, PeekAll: fsmpb.PeekState_PEEK_ALL, PeekReady: fsmpb.PeekState_PEEK_READY,
	PeekDelayed: fsmpb.PeekState_PEEK_DELAYED, PeekLeased: fsmpb.PeekState_PEEK_LEASED, PeekDead: fsmpb.PeekState_PEEK_DEAD,
	PeekWaiting: fsmpb.PeekState_PEEK_WAITING,
}

// DefaultPeekMax is how many messages Peek shows when PeekOptions.Max is 0.
const DefaultPeekMax = 20

// PeekOptions selects what Peek shows.
type PeekOptions struct {
	// From is the lowest message id to show (0: from the start); a page's
	// Next continues after it.
	From uint64
	// Max is how many messages to show: 1 to 100 (the state machine's
	// limits.MaxPeek); 0 means DefaultPeekMax.
	Max int
	// State shows only messages in that state; "" or PeekAll shows all.
	State PeekState
	// NoBody leaves bodies out; BodySize still gives each size.
	NoBody bool
	// Leader asks for the leader's view, read after it confirms that it
	// is still the leader. Without it the node the client talks to (the
	// leader when the client knows it) answers from the state it has
	// applied, which on a follower may lag behind.
	Leader bool
}

// PeekedMessage is a live message as Peek shows it. It carries no receipt:
// a peek leases nothing.
type PeekedMessage struct {
	ID       uint64
	State    PeekState
	Attempts uint32 // deliveries so far
	Body     []byte // nil with PeekOptions.NoBody
	BodySize int
	// Attributes, DedupID, Group, EnqueuedAt, LastNackReason and
	// DeadLetter are as on a received Message.
	Attributes     map[string]string
	DedupID        string
	Group          string
	EnqueuedAt     time.Time
	LastNackReason string
	DeadLetter     *DeadLetter
	// Until is when a delayed message becomes ready or a lease ends; zero
	// for ready and dead messages.
	Until time.Time
	// Consumer is who holds the lease of a leased message: the consumer
	// name its receive gave.
	Consumer string
}

// PeekPage is one answer of Peek.
type PeekPage struct {
	Messages []PeekedMessage
	// Next is the From of the next page; 0 when no message is left.
	Next uint64
	// AppliedIndex is the Raft index of the state the page was read from
	// (at least).
	AppliedIndex uint64
}

// Peek shows up to o.Max live messages of queue with id >= o.From, in id
// order, without leasing or changing any: no attempt is counted and no
// Raft entry is written. Paging with Next visits every message that stays
// in the queue exactly once.
func (c *Client) Peek(ctx context.Context, queue string, o PeekOptions) (*PeekPage, error) {
	if err := validateQueueName("Peek queue", queue); err != nil {
		return nil, err
	}
	state, ok := peekStates[o.State]
	if !ok {
		return nil, invalidArg("Peek state", "%q is not all, ready, delayed, leased, dead or waiting", o.State)
	}
	if o.Max == 0 {
		o.Max = DefaultPeekMax
	}
	if err := wire.ValidatePeek(o.Max, state); err != nil {
		return nil, fromStatus("", err)
	}
	req := &quorumqpb.PeekRequest{Queue: queue, FromId: o.From, Max: uint32(o.Max), State: state, NoBody: o.NoBody, Leader: o.Leader}
	var resp *quorumqpb.PeekResponse
	err := c.call(ctx, "Peek", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).Peek(ctx, req)
		return err
	}, nil)
	if err != nil {
		return nil, err
	}
	page := &PeekPage{Next: resp.GetNextId(), AppliedIndex: resp.GetAppliedIndex()}
	for _, p := range resp.GetMessages() {
		m := messageOf(queue, &fsmpb.Delivery{
			Body: p.GetBody(), EnqueuedAtUnixNano: p.GetEnqueuedAtUnixNano(), Attributes: p.GetAttributes(),
			DedupId: p.GetDedupId(), DeadLetter: p.GetDeadLetter(), LastNackReason: p.GetLastNackReason(), Group: p.GetGroup(),
		})
		pm := PeekedMessage{
			ID: p.GetId(), State: peekStateOf(p.GetState()), Attempts: p.GetAttempts(), Body: m.Body,
			BodySize: int(p.GetBodySize()), Attributes: m.Attributes, DedupID: m.DedupID, Group: m.Group, EnqueuedAt: m.EnqueuedAt,
			LastNackReason: m.LastNackReason, DeadLetter: m.DeadLetter, Consumer: p.GetConsumer(),
		}
		if at := p.GetAtUnixNano(); at != 0 {
			pm.Until = time.Unix(0, at)
		}
		page.Messages = append(page.Messages, pm)
	}
	return page, nil
}

func peekStateOf(s fsmpb.PeekState) PeekState {
	for k, v := range peekStates {
		if v == s && k != "" && k != PeekAll {
			return k
		}
	}
	return PeekState(s.String())
}

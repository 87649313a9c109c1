package client

import (
	"context"
	"math"
	"time"

	"google.golang.org/grpc"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// Receipt identifies one delivery of a message: Ack, Nack and Extend take
// it, and the cluster refuses it once the message was delivered again.
type Receipt struct {
	MessageID uint64
	Attempt   uint32 // delivery attempt, 1 for the first delivery
	// Queue is the queue that delivered the message. Message IDs are
	// unique per queue only, so a receipt used on another queue is
	// refused (ErrWrongQueue). Empty: not checked.
	Queue string
}

// Message is one delivered message.
type Message struct {
	Queue      string
	Receipt    Receipt
	Body       []byte
	Attributes map[string]string
	DedupID    string
	// Group is the message's group (WithGroup); "" for none.
	Group      string
	EnqueuedAt time.Time
	// LeaseUntil is when the lease ends by the leader's clock; the message
	// is delivered again after it unless acked, nacked or extended.
	LeaseUntil time.Time
	// LastNackReason is the reason of the last nack in this queue that
	// gave one (NackWithReason).
	LastNackReason string
	// DeadLetter is set on a message that arrived as a dead letter: where
	// it came from and why.
	DeadLetter *DeadLetter
}

// DeadLetter is the origin of a dead letter.
type DeadLetter struct {
	SourceQueue     string
	SourceMessageID uint64
	Reason          DeadLetterReason
	Attempts        uint32 // deliveries in the source queue
	// FirstEnqueuedAt is when it was enqueued to the source queue, or,
	// when it was a dead letter there too, to the first queue.
	FirstEnqueuedAt time.Time
	// LastNackReason is the reason of its last nack in the source queue
	// that gave one.
	LastNackReason string
	// RejectReason is the reason given to Reject.
	RejectReason string
}

// DeadLetterReason is why a message was dead-lettered.
type DeadLetterReason string

// The reasons a message is dead-lettered.
const (
	// DeadLetterMaxDeliveries: it would have been delivered more than its
	// queue's max deliveries.
	DeadLetterMaxDeliveries DeadLetterReason = "max_deliveries"
	// DeadLetterRejected: a consumer rejected it.
	DeadLetterRejected DeadLetterReason = "rejected"
	// DeadLetterUnknown: dead-lettered by a release that kept no reason.
	DeadLetterUnknown DeadLetterReason = "unknown"
)

func deadLetterOf(d *fsmpb.DeadLetter) *DeadLetter {
	if d == nil {
		return nil
	}
	out := &DeadLetter{
		SourceQueue:     d.GetSourceQueue(),
		SourceMessageID: d.GetSourceMessageId(),
		Reason:          DeadLetterUnknown,
		Attempts:        d.GetAttempts(),
		LastNackReason:  d.GetLastNackReason(),
		RejectReason:    d.GetRejectReason(),
	}
	switch d.GetReason() {
	case fsmpb.DeadLetterReason_DEAD_LETTER_MAX_DELIVERIES:
		out.Reason = DeadLetterMaxDeliveries
	case fsmpb.DeadLetterReason_DEAD_LETTER_REJECTED:
		out.Reason = DeadLetterRejected
	}
	if ns := d.GetFirstEnqueuedAtUnixNano(); ns != 0 {
		out.FirstEnqueuedAt = time.Unix(0, ns)
	}
	return out
}

// ReceiveOption configures one Receive.
type ReceiveOption func(*receiveOptions)

type receiveOptions struct {
	wait       time.Duration
	visibility time.Duration
	autoAck    bool
	requestID  string
	consumer   *string
}

// WithConsumer sets the consumer name this receive gives instead of the
// client's (WithConsumerName); "" gives none.
func WithConsumer(name string) ReceiveOption { return func(o *receiveOptions) { o.consumer = &name } }

// WithWait long-polls: when no message is available, the call waits up to d
// (at most MaxWait) for one. It is shortened to fit the caller's deadline.
func WithWait(d time.Duration) ReceiveOption { return func(o *receiveOptions) { o.wait = d } }

// WithVisibility sets the lease length; 0 uses the queue's visibility
// timeout.
func WithVisibility(d time.Duration) ReceiveOption {
	return func(o *receiveOptions) { o.visibility = d }
}

// WithAutoAck deletes the messages as they are delivered: at-most-once. A
// reply lost for good (the caller's context ends while the reply is in
// flight) is a lost message.
func WithAutoAck() ReceiveOption { return func(o *receiveOptions) { o.autoAck = true } }

// WithRequestID sets the receive request ID. A Receive with an ID the queue
// saw within its dedup window leases nothing new: it returns again those of
// the first call's deliveries that are still leased under their receipts
// (not the ones acked, nacked, expired or delivered again since), or, with
// WithAutoAck, all of them. Receive
// picks a fresh one when none is given, which makes its own retries safe;
// give one to make a retry across calls safe.
func WithRequestID(id string) ReceiveOption { return func(o *receiveOptions) { o.requestID = id } }

// Receive leases up to maxMsgs available messages of queue. With WithWait it
// long-polls; it returns an empty slice when the wait ends with nothing.
func (c *Client) Receive(ctx context.Context, queue string, maxMsgs int, opts ...ReceiveOption) ([]Message, error) {
	msgs, _, err := c.receive(ctx, queue, nil, maxMsgs, opts)
	return msgs, err
}

// AckAndReceive acks the receipts of queue and leases up to maxMsgs more in
// one call and one Raft entry: a consumer confirms its previous batch and
// takes the next one in a single round. The acks are applied at once, also
// when the call then long-polls. ackErr is nil when every receipt was acked,
// otherwise an *AckError as from Ack; the messages are returned (and
// leased) either way. err reports the call itself failing, and then it is
// unknown whether the acks were applied: ack the receipts again (acking is
// idempotent).
func (c *Client) AckAndReceive(ctx context.Context, queue string, acks []Receipt, maxMsgs int, opts ...ReceiveOption) (msgs []Message, ackErr, err error) {
	if len(acks) > 0 {
		if err := validateReceipts("AckAndReceive acks", queue, acks); err != nil {
			return nil, nil, err
		}
	}
	return c.receive(ctx, queue, acks, maxMsgs, opts)
}

func (c *Client) receive(ctx context.Context, queue string, acks []Receipt, maxMsgs int, opts []ReceiveOption) ([]Message, error, error) {
	var o receiveOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := validateQueueName("Receive queue", queue); err != nil {
		return nil, nil, err
	}
	if maxMsgs < 1 || maxMsgs > math.MaxUint32 {
		return nil, nil, invalidArg("Receive max", "must be 1..%d, got %d", uint32(math.MaxUint32), maxMsgs)
	}
	if o.wait < 0 || o.wait > MaxWait {
		return nil, nil, invalidArg("Receive WithWait", "must be 0..%v, got %v", MaxWait, o.wait)
	}
	if err := validateDuration("Receive WithVisibility", o.visibility, limits.MaxVisibility); err != nil {
		return nil, nil, err
	}
	consumer := c.consumer
	if o.consumer != nil {
		consumer = *o.consumer
		if err := wire.ValidateConsumer("Receive WithConsumer", consumer); err != nil {
			return nil, nil, fromStatus("", err)
		}
	}
	if dl, ok := ctx.Deadline(); ok {
		// Leave time for the reply: a poll cut off by the caller's deadline
		// would lease messages nobody reads.
		o.wait = max(0, min(o.wait, time.Until(dl)-time.Second))
	}
	if o.requestID == "" {
		o.requestID = NewDedupID()
	}
	req := &quorumqpb.ReceiveRequest{
		Queue:        queue,
		Max:          uint32(maxMsgs),
		VisibilityNs: int64(o.visibility),
		WaitNs:       int64(o.wait),
		AutoAck:      o.autoAck,
		RequestId:    o.requestID,
		Ack:          receiptsPB(acks),
		Consumer:     consumer,
	}
	var resp *quorumqpb.ReceiveResponse
	err := c.call(ctx, "Receive", idempotent, o.wait, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).Receive(ctx, req)
		return err
	}, func() {
		// The lost attempt may have leased messages under this request
		// ID. A long poll would wait for *other* available messages before
		// proposing, so the retry proposes at once and gets the replay.
		req.WaitNs = 0
	})
	if err != nil {
		return nil, nil, err
	}
	out := make([]Message, len(resp.GetDeliveries()))
	for i, d := range resp.GetDeliveries() {
		out[i] = messageOf(queue, d)
	}
	if len(acks) == 0 {
		return out, nil, nil
	}
	return out, ackError("AckAndReceive", queue, acks, resp.GetAckOutcomes(), nil), nil
}

func messageOf(queue string, d *fsmpb.Delivery) Message {
	m := Message{
		Queue:      queue,
		Receipt:    Receipt{MessageID: d.GetReceipt().GetMessageId(), Attempt: d.GetReceipt().GetAttempt(), Queue: queue},
		Body:       d.GetBody(),
		DedupID:    d.GetDedupId(),
		Group:      d.GetGroup(),
		EnqueuedAt: time.Unix(0, d.GetEnqueuedAtUnixNano()),
		LeaseUntil: time.Unix(0, d.GetLeaseUntilUnixNano()),

		LastNackReason: d.GetLastNackReason(),
		DeadLetter:     deadLetterOf(d.GetDeadLetter()),
	}
	if len(d.GetAttributes()) > 0 {
		m.Attributes = make(map[string]string, len(d.GetAttributes()))
		for _, a := range d.GetAttributes() {
			m.Attributes[a.GetKey()] = a.GetValue()
		}
	}
	return m
}

func receiptsPB(rs []Receipt) []*fsmpb.Receipt {
	out := make([]*fsmpb.Receipt, len(rs))
	for i, r := range rs {
		out[i] = &fsmpb.Receipt{MessageId: r.MessageID, Attempt: r.Attempt, Queue: r.Queue}
	}
	return out
}

// Ack deletes the messages of the receipts. It returns nil when every
// receipt was acked (acking an acked receipt again counts as acked);
// otherwise an *AckError lists the receipts that failed, and
// errors.Is(err, ErrLeaseLost) tells that some message was delivered again
// meanwhile.
func (c *Client) Ack(ctx context.Context, queue string, receipts ...Receipt) error {
	if err := validateQueueName("Ack queue", queue); err != nil {
		return err
	}
	if err := validateReceipts("Ack receipts", queue, receipts); err != nil {
		return err
	}
	req := &quorumqpb.AckRequest{Queue: queue, Receipts: receiptsPB(receipts)}
	var resp *quorumqpb.AckResponse
	err := c.call(ctx, "Ack", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).Ack(ctx, req)
		return err
	}, nil)
	if err != nil {
		return err
	}
	return ackError("Ack", queue, receipts, resp.GetOutcomes(), nil)
}

// Nack gives the messages back: they become available again after delay.
// After an attempt with an unknown outcome, a LeaseLost answer to the retry
// counts as success (see the package doc).
func (c *Client) Nack(ctx context.Context, queue string, delay time.Duration, receipts ...Receipt) error {
	return c.NackWithReason(ctx, queue, delay, "", receipts...)
}

// NackWithReason is Nack that also says why: each message keeps reason
// as its LastNackReason and carries it into its dead letter. An empty
// reason keeps the one an earlier nack gave. A reason is at most 1024
// bytes.
func (c *Client) NackWithReason(ctx context.Context, queue string, delay time.Duration, reason string, receipts ...Receipt) error {
	if err := validateQueueName("Nack queue", queue); err != nil {
		return err
	}
	if err := validateDuration("Nack delay", delay, limits.MaxDelay); err != nil {
		return err
	}
	if err := validateNackReason("Nack reason", reason); err != nil {
		return err
	}
	if err := validateReceipts("Nack receipts", queue, receipts); err != nil {
		return err
	}
	req := &quorumqpb.NackRequest{Queue: queue, Receipts: receiptsPB(receipts), DelayNs: int64(delay), Reason: reason}
	var resp *quorumqpb.NackResponse
	retried := false
	err := c.call(ctx, "Nack", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).Nack(ctx, req)
		return err
	}, func() { retried = true })
	if err != nil {
		return err
	}
	return ackError("Nack", queue, receipts, resp.GetOutcomes(), func(o fsmpb.AckOutcome) bool {
		return retried && o == fsmpb.AckOutcome_ACK_LEASE_LOST
	})
}

// Reject sends the messages of the receipts to their queue's dead-letter
// queue now, with reason (at most 1024 bytes) as the dead letter's
// RejectReason. It is fenced like Ack: a receipt whose message was
// delivered again fails with ErrLeaseLost in the returned *AckError, and
// rejecting a rejected message again with the same receipt succeeds, so
// a retry is safe.
func (c *Client) Reject(ctx context.Context, queue, reason string, receipts ...Receipt) error {
	if err := validateQueueName("Reject queue", queue); err != nil {
		return err
	}
	if err := validateNackReason("Reject reason", reason); err != nil {
		return err
	}
	if err := validateReceipts("Reject receipts", queue, receipts); err != nil {
		return err
	}
	req := &quorumqpb.RejectRequest{Queue: queue, Receipts: receiptsPB(receipts), Reason: reason}
	var resp *quorumqpb.RejectResponse
	err := c.call(ctx, "Reject", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).Reject(ctx, req)
		return err
	}, nil)
	if err != nil {
		return err
	}
	return ackError("Reject", queue, receipts, resp.GetOutcomes(), nil)
}

// Extend renews the leases of the receipts to visibility from now (0: the
// queue's visibility timeout). A receipt whose message was delivered again
// fails with ErrLeaseLost in the returned *AckError.
func (c *Client) Extend(ctx context.Context, queue string, visibility time.Duration, receipts ...Receipt) error {
	if err := validateQueueName("Extend queue", queue); err != nil {
		return err
	}
	if err := validateDuration("Extend visibility", visibility, limits.MaxVisibility); err != nil {
		return err
	}
	if err := validateReceipts("Extend receipts", queue, receipts); err != nil {
		return err
	}
	req := &quorumqpb.ExtendRequest{Queue: queue, Receipts: receiptsPB(receipts), VisibilityNs: int64(visibility)}
	var resp *quorumqpb.ExtendResponse
	err := c.call(ctx, "Extend", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).Extend(ctx, req)
		return err
	}, nil)
	if err != nil {
		return err
	}
	return ackError("Extend", queue, receipts, resp.GetOutcomes(), nil)
}

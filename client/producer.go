package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// OutMessage is a message to enqueue. An empty DedupID is replaced by a
// fresh ULID before the first attempt, so retries of the same call can never
// enqueue it twice; give your own DedupID to make retries across calls (or
// across process restarts) safe too.
type OutMessage struct {
	Body       []byte
	DedupID    string
	Delay      time.Duration
	Attributes map[string]string
	// Group is the message's group (see WithGroup); "" for none.
	Group string
}

// SendResult is the outcome of enqueueing one message.
type SendResult struct {
	MessageID uint64
	DedupID   string
	// Duplicate: the caller's dedup ID was already recorded in the
	// queue's dedup window, and MessageID is the original message's;
	// nothing was enqueued. With a caller-given dedup ID, the original can
	// be an earlier attempt of this same call whose reply was lost. A dedup
	// ID the client generated is never reported as a duplicate: being
	// fresh, it can only have been recorded by this call's own attempt.
	Duplicate bool
}

// SendOption configures one Send.
type SendOption func(*OutMessage)

// WithDedupID sets the message's dedup ID.
func WithDedupID(id string) SendOption { return func(m *OutMessage) { m.DedupID = id } }

// WithDelay makes the message available only after d.
func WithDelay(d time.Duration) SendOption { return func(m *OutMessage) { m.Delay = d } }

// WithAttributes attaches key/value attributes to the message.
func WithAttributes(a map[string]string) SendOption {
	return func(m *OutMessage) { m.Attributes = a }
}

// WithGroup puts the message in group key: the cluster delivers the
// messages of a group one at a time, in the order they were enqueued,
// and the next only once the one before is acked, rejected or
// dead-lettered (a nack or an expired lease makes the same message the
// group's next again). Groups are independent of each other, and
// messages without a group are delivered as before. Consume also runs
// the handlers of a group one at a time. A key is at most 128 bytes of
// UTF-8 without control characters; a longer or invalid one is refused
// with ErrInvalidArgument before anything is sent.
//
// While a server of an earlier release is a voter, the cluster refuses
// an enqueue that holds a grouped message (a gRPC FailedPrecondition
// naming the group) until every server is upgraded. A Send is refused
// alone even when gathered with others' Sends; a SendBatch, a
// transaction or a Producer's batch holding one is refused whole.
func WithGroup(key string) SendOption { return func(m *OutMessage) { m.Group = key } }

// NewDedupID returns a fresh, time-ordered unique ID (a ULID), the kind the
// client picks when the caller gives none.
func NewDedupID() string { return ulid.Make().String() }

// Send enqueues one message and returns its ID. It is safe to retry: the
// message's dedup ID is fixed before the first attempt.
//
// Concurrent Sends to the same queue from one Client are gathered: while
// a batch to that queue is on the wire, the Sends that arrive wait for a
// send slot together and go as one Enqueue RPC, one Raft entry (see
// WithSendGathering). Each Send still gets its own result, and a Send
// returns only once its message is committed, so one goroutine's Sends
// stay in order.
func (c *Client) Send(ctx context.Context, queue string, body []byte, opts ...SendOption) (SendResult, error) {
	m := OutMessage{Body: body}
	for _, o := range opts {
		o(&m)
	}
	if c.sender != nil {
		f := c.sender.SendAsync(ctx, queue, m)
		select {
		case <-f.done:
			return f.res, f.err
		case <-ctx.Done():
			if f.sent.Load() {
				return SendResult{}, fmt.Errorf("Send: %w: %w", ErrOutcomeUnknown, ctx.Err())
			}
			return SendResult{}, fmt.Errorf("Send: %w", ctx.Err())
		}
	}
	res, err := c.sendBatch(ctx, "Send", queue, []OutMessage{m})
	if err != nil {
		return SendResult{}, err
	}
	return res[0], nil
}

// SendBatch enqueues msgs to queue in one Raft entry, all or nothing, and
// returns one result per message in order.
func (c *Client) SendBatch(ctx context.Context, queue string, msgs []OutMessage) ([]SendResult, error) {
	return c.sendBatch(ctx, "SendBatch", queue, msgs)
}

func (c *Client) sendBatch(ctx context.Context, op, queue string, msgs []OutMessage) ([]SendResult, error) {
	req, generated, err := enqueueRequest(op, queue, msgs)
	if err != nil {
		return nil, err
	}
	return c.enqueue(ctx, op, req, generated)
}

// enqueue sends req (retrying through leader changes) and pairs the
// results with its messages.
func (c *Client) enqueue(ctx context.Context, op string, req *quorumqpb.EnqueueRequest, generated []bool) ([]SendResult, error) {
	var resp *quorumqpb.EnqueueResponse
	err := c.call(ctx, op, idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).Enqueue(ctx, req)
		return err
	}, nil)
	if err != nil {
		return nil, err
	}
	return sendResults(op, req.Messages, generated, resp.GetResults())
}

// enqueueRequest validates msgs and fixes their dedup IDs; generated[i]
// tells whether message i's ID was generated here.
func enqueueRequest(op, queue string, msgs []OutMessage) (req *quorumqpb.EnqueueRequest, generated []bool, err error) {
	if err := validateQueueName(op+" queue", queue); err != nil {
		return nil, nil, err
	}
	if len(msgs) == 0 {
		return nil, nil, invalidArg(op+" msgs", "at least one message is required")
	}
	pb := make([]*fsmpb.Message, len(msgs))
	generated = make([]bool, len(msgs))
	for i, m := range msgs {
		pb[i], generated[i], err = messagePB(fmt.Sprintf("%s msgs[%d]", op, i), m)
		if err != nil {
			return nil, nil, err
		}
	}
	return &quorumqpb.EnqueueRequest{Queue: queue, Messages: pb}, generated, nil
}

// messagePB converts m, giving it a fresh dedup ID when it has none
// (generated is then true), and checks it with the state machine's
// message rule (sizes, attributes, the group key). Every path that sends
// a message converts it here.
func messagePB(field string, m OutMessage) (_ *fsmpb.Message, generated bool, _ error) {
	if err := validateDuration(field+".Delay", m.Delay, limits.MaxDelay); err != nil {
		return nil, false, err
	}
	id := m.DedupID
	if id == "" {
		id, generated = NewDedupID(), true
	}
	p := &fsmpb.Message{Body: m.Body, DedupId: id, DelayNs: int64(m.Delay), Group: m.Group}
	// Sorted, so the same message always encodes the same way.
	for _, k := range slices.Sorted(maps.Keys(m.Attributes)) {
		p.Attributes = append(p.Attributes, &fsmpb.Attribute{Key: k, Value: m.Attributes[k]})
	}
	if err := validateMessage(field, p); err != nil {
		return nil, false, err
	}
	return p, generated, nil
}

func sendResults(op string, sent []*fsmpb.Message, generated []bool, got []*fsmpb.EnqueueResult) ([]SendResult, error) {
	if len(got) != len(sent) {
		return nil, fmt.Errorf("%s: server returned %d results for %d messages", op, len(got), len(sent))
	}
	out := make([]SendResult, len(got))
	for i, r := range got {
		out[i] = SendResult{MessageID: r.GetMessageId(), DedupID: sent[i].GetDedupId(), Duplicate: r.GetDuplicate() && !generated[i]}
	}
	return out, nil
}

// ProducerOption configures a Producer.
type ProducerOption func(*producerOptions)

type producerOptions struct {
	linger          time.Duration
	batchMessages   int
	batchBytes      int
	maxMessages     int64
	maxBytes        int64
	batchesInFlight int
	sendTimeout     time.Duration

	// Set for the Client's own gatherer behind Send: errors name caller
	// (the call that took the message) and op (the call that sent it), and a
	// batch is retried for as long as one of its callers' contexts lives
	// instead of for sendTimeout.
	caller, op     string
	callerContexts bool
}

// regather is how long, after a batch of several messages is answered, the
// next batch to its queue waits for as many messages before it goes: the
// callers of the answered batch are about to send again, and a batch sent
// without them would leave them to the batch after, so that callers split
// into two groups that each wait two rounds.
const regather = time.Millisecond

// WithLinger sets how long a Producer waits for more messages to the same
// queue before sending a batch. Default 0: a batch goes as soon as its
// queue has a free send slot, and while one batch is on the wire the next
// one fills, so batches grow with the load by themselves.
func WithLinger(d time.Duration) ProducerOption { return func(o *producerOptions) { o.linger = d } }

// WithBatchLimits bounds one enqueue RPC. Defaults: 1000 messages, 1 MiB of
// bodies (the server's defaults allow 1000 messages and 8 MiB).
func WithBatchLimits(messages, bytes int) ProducerOption {
	return func(o *producerOptions) { o.batchMessages, o.batchBytes = messages, bytes }
}

// WithMaxInFlight bounds the messages and body bytes a Producer holds
// (gathering or sent, not yet answered); SendAsync blocks while the bound
// is reached. Defaults: 10000 messages, 64 MiB.
func WithMaxInFlight(messages int, bytes int64) ProducerOption {
	return func(o *producerOptions) { o.maxMessages, o.maxBytes = int64(messages), bytes }
}

// WithBatchesInFlight sets how many batches to one queue may be on the
// wire at once. Default 4. The messages of one queue are enqueued in the
// order of the SendAsync calls whatever n is, through retries and leader
// changes (a batch that finally fails leaves a gap, not a reordering).
//
// A batch that is not full goes at once when none of its queue is on the
// wire. Beside others, a batch goes when it is full (WithBatchLimits) or
// holds 64 messages or 64 KiB, and fills until then, since a Raft round
// costs about as much for one message as for sixty. So a producer with
// more to send than one batch holds keeps several rounds busy
// (BenchmarkProducer: about 1.4x the messages per second of n = 1), so
// does one with a few hundred messages in flight, and one that sends less
// is not split into more, smaller rounds.
//
// With n > 1 the batches of a queue travel on one EnqueueStream, which the
// leader submits to Raft in order, each chained behind the one before by
// after_dedup_id: if a batch is refused or lost on the way, the ones
// behind it are refused by the state machine too (not enqueued ahead of
// it) and the Producer sends them again behind it. With n = 1 each batch
// is one Enqueue call, sent when the one before is answered.
func WithBatchesInFlight(n int) ProducerOption {
	return func(o *producerOptions) { o.batchesInFlight = n }
}

// WithSendTimeout bounds how long one batch is retried (through leader
// changes) before its futures fail. Default 30 s.
func WithSendTimeout(d time.Duration) ProducerOption {
	return func(o *producerOptions) { o.sendTimeout = d }
}

// Producer gathers concurrent SendAsync calls to the same queue into one
// Enqueue RPC: a batch is sent when it is full or its linger time has
// passed (at once, with the default linger of 0) and a send slot of its
// queue is free, so while a batch is on the wire the next one keeps
// filling. Raft writes each batch as one log entry,
// which is where quorumq's throughput comes from. Each message gets its
// own result. A Producer is safe for concurrent use.
type Producer struct {
	c    *Client
	o    producerOptions
	err  error // invalid options: every SendAsync fails with it
	msgs *semaphore.Weighted
	byts *semaphore.Weighted

	mu     sync.Mutex
	queues map[string]*queueBatches
	closed bool
}

// queueBatches is the send state of one queue: the batch filling, full
// batches waiting for a send slot, and batches on the wire.
type queueBatches struct {
	name    string
	filling *batch
	waiting []*batch
	sending map[*batch]struct{}

	// With regather: the size of the last batch answered and until when
	// its callers are expected back with their next messages.
	expect        int
	regatherUntil time.Time

	// With more than one batch in flight: batches handed to the queue's
	// pipe and not yet taken by it, and whether its goroutine runs.
	toPipe []*batch
	piping bool
	wake   chan struct{}
}

type batch struct {
	futs  []*SendFuture
	bytes int
	due   bool // linger passed or flushed: send as soon as a slot is free
	timer *time.Timer
	done  chan struct{}
}

func (b *batch) stopTimer() {
	if b.timer != nil {
		b.timer.Stop()
	}
}

// SendFuture is the pending result of a SendAsync.
type SendFuture struct {
	ctx       context.Context
	msg       *fsmpb.Message
	generated bool
	weight    int64
	sent      atomic.Bool // in a batch on the wire
	done      chan struct{}
	res       SendResult
	err       error
}

// Done is closed once the result is known.
func (f *SendFuture) Done() <-chan struct{} { return f.done }

// Wait returns the result, or ctx's error if ctx ends first (the message
// may still be enqueued then).
func (f *SendFuture) Wait(ctx context.Context) (SendResult, error) {
	select {
	case <-f.done:
		return f.res, f.err
	case <-ctx.Done():
		return SendResult{}, fmt.Errorf("SendFuture.Wait: %w", ctx.Err())
	}
}

func (f *SendFuture) resolve(r SendResult, err error) {
	f.res, f.err = r, err
	close(f.done)
}

// NewProducer returns an asynchronous, batching producer on c.
func (c *Client) NewProducer(opts ...ProducerOption) *Producer {
	o := producerOptions{
		linger:          0,
		batchMessages:   1000,
		batchBytes:      1 << 20,
		maxMessages:     10000,
		maxBytes:        64 << 20,
		batchesInFlight: 4,
		sendTimeout:     30 * time.Second,
		caller:          "SendAsync",
		op:              "Producer.Send",
	}
	for _, opt := range opts {
		opt(&o)
	}
	p := &Producer{c: c, o: o, queues: map[string]*queueBatches{}}
	switch {
	case o.linger < 0:
		p.err = invalidArg("WithLinger", "must be >= 0, got %v", o.linger)
	case o.batchMessages < 1 || o.batchBytes < 1:
		p.err = invalidArg("WithBatchLimits", "messages and bytes must be >= 1, got %d and %d", o.batchMessages, o.batchBytes)
	case o.maxMessages < 1 || o.maxBytes < 1:
		p.err = invalidArg("WithMaxInFlight", "messages and bytes must be >= 1, got %d and %d", o.maxMessages, o.maxBytes)
	case o.batchesInFlight < 1:
		p.err = invalidArg("WithBatchesInFlight", "must be >= 1, got %d", o.batchesInFlight)
	case o.sendTimeout <= 0:
		p.err = invalidArg("WithSendTimeout", "must be > 0, got %v", o.sendTimeout)
	}
	if p.err == nil {
		p.msgs = semaphore.NewWeighted(o.maxMessages)
		p.byts = semaphore.NewWeighted(o.maxBytes)
	}
	return p
}

// SendAsync adds msg to the batch for queue and returns at once with a
// future, unless the in-flight bound is reached: then it waits for room
// (or for ctx). The message's dedup ID is fixed here. If ctx ends before
// the batch is sent, the message is dropped and its future reports ctx's
// error.
func (p *Producer) SendAsync(ctx context.Context, queue string, msg OutMessage) *SendFuture {
	f := &SendFuture{ctx: ctx, done: make(chan struct{})}
	if p.err != nil {
		f.resolve(SendResult{}, p.err)
		return f
	}
	if err := validateQueueName(p.o.caller+" queue", queue); err != nil {
		f.resolve(SendResult{}, err)
		return f
	}
	pb, generated, err := messagePB(p.o.caller+" msg", msg)
	if err != nil {
		f.resolve(SendResult{}, err)
		return f
	}
	f.msg, f.generated = pb, generated
	f.weight = min(int64(len(msg.Body))+1, p.o.maxBytes)
	if err := p.msgs.Acquire(ctx, 1); err != nil {
		f.resolve(SendResult{}, fmt.Errorf("%s: waiting for room: %w", p.o.caller, err))
		return f
	}
	if err := p.byts.Acquire(ctx, f.weight); err != nil {
		p.msgs.Release(1)
		f.resolve(SendResult{}, fmt.Errorf("%s: waiting for room: %w", p.o.caller, err))
		return f
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.release(f)
		f.resolve(SendResult{}, fmt.Errorf("%s: %w", p.o.caller, ErrClosed))
		return f
	}
	q := p.queues[queue]
	if q == nil {
		q = &queueBatches{name: queue, sending: map[*batch]struct{}{}, wake: make(chan struct{}, 1)}
		p.queues[queue] = q
	}
	if b := q.filling; b != nil && b.bytes+len(msg.Body) > p.o.batchBytes {
		p.closeBatchLocked(q)
	}
	b := q.filling
	if b == nil {
		b = &batch{done: make(chan struct{})}
		q.filling = b
		if p.o.linger > 0 {
			b.timer = time.AfterFunc(p.o.linger, func() {
				p.mu.Lock()
				defer p.mu.Unlock()
				b.due = true
				p.startLocked(q)
			})
		}
	}
	b.futs = append(b.futs, f)
	b.bytes += len(msg.Body)
	if len(b.futs) >= p.o.batchMessages || b.bytes >= p.o.batchBytes {
		p.closeBatchLocked(q)
	} else if p.o.linger == 0 {
		b.due = true
		p.startLocked(q)
	}
	return f
}

func (p *Producer) release(f *SendFuture) {
	p.msgs.Release(1)
	p.byts.Release(f.weight)
}

// closeBatchLocked ends q's filling batch: it is due and waits for a slot.
func (p *Producer) closeBatchLocked(q *queueBatches) {
	b := q.filling
	q.filling = nil
	b.stopTimer()
	b.due = true
	q.waiting = append(q.waiting, b)
	p.startLocked(q)
}

// startLocked sends q's due batches, oldest first, while send slots are
// free. p.mu must be held.
func (p *Producer) startLocked(q *queueBatches) {
	for len(q.sending) < p.o.batchesInFlight {
		var b *batch
		switch {
		case len(q.waiting) > 0:
			b, q.waiting = q.waiting[0], q.waiting[1:]
		case q.filling != nil && q.filling.due && len(q.sending) == 0 && !p.regatherLocked(q):
			// A batch that is not full goes at once when none of its
			// queue is on the wire.
			b, q.filling = q.filling, nil
			b.stopTimer()
		case q.filling != nil && q.filling.due && p.pipelinesLocked(q.filling):
			// Beside batches on the wire, a batch goes once it is worth a
			// Raft round of its own (pipelinesLocked); a smaller one
			// keeps filling until a batch is answered.
			b, q.filling = q.filling, nil
			b.stopTimer()
		default:
			return
		}
		q.sending[b] = struct{}{}
		if p.o.batchesInFlight == 1 {
			go p.send(q, b)
			continue
		}
		q.toPipe = append(q.toPipe, b)
		if !q.piping {
			q.piping = true
			go p.runPipe(q)
		} else {
			select {
			case q.wake <- struct{}{}:
			default:
			}
		}
	}
}

// finished frees b's send slot once every future of b is resolved.
func (p *Producer) finished(q *queueBatches, b *batch) {
	p.mu.Lock()
	delete(q.sending, b)
	if p.o.linger == 0 && len(b.futs) > 1 {
		q.expect, q.regatherUntil = len(b.futs), time.Now().Add(regather)
		time.AfterFunc(regather, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.forgetIdleLocked(q)
		})
	}
	p.startLocked(q)
	p.forgetIdleLocked(q)
	p.mu.Unlock()
	close(b.done)
}

// prepare drops the futures of b whose context ended, marks the others
// sent, and builds their request.
func (p *Producer) prepare(q *queueBatches, b *batch) (live []*SendFuture, req *quorumqpb.EnqueueRequest, generated []bool) {
	for _, f := range b.futs {
		if err := f.ctx.Err(); err != nil {
			p.release(f)
			f.resolve(SendResult{}, fmt.Errorf("%s: not sent: %w", p.o.caller, err))
			continue
		}
		f.sent.Store(true)
		live = append(live, f)
	}
	req = &quorumqpb.EnqueueRequest{Queue: q.name, Messages: make([]*fsmpb.Message, len(live))}
	generated = make([]bool, len(live))
	for i, f := range live {
		req.Messages[i], generated[i] = f.msg, f.generated
	}
	return live, req, generated
}

func (p *Producer) send(q *queueBatches, b *batch) {
	defer p.finished(q, b)
	live, req, generated := p.prepare(q, b)
	if len(live) == 0 {
		return
	}
	ctx, cancel := p.batchContext(live)
	res, err := p.c.enqueue(ctx, p.o.op, req, generated)
	cancel()
	if err != nil && len(live) > 1 && p.o.callerContexts && refusedForOne(err) {
		// A gathered batch is all or nothing and nothing was enqueued:
		// send each message alone, so each caller gets its own answer
		// (the message at fault its error, the others their place).
		for _, f := range live {
			res, err := p.c.enqueue(f.ctx, p.o.op, &quorumqpb.EnqueueRequest{Queue: q.name, Messages: []*fsmpb.Message{f.msg}}, []bool{f.generated})
			p.release(f)
			if err != nil {
				f.resolve(SendResult{}, err)
			} else {
				f.resolve(res[0], nil)
			}
		}
		return
	}
	p.resolveAll(live, res, err)
}

// refusedForOne tells whether err refused a whole batch, with nothing
// enqueued, for what one of its messages may carry alone: a field beyond
// a limit, a full queue, or a field a voter of an earlier release does
// not know yet (a message group during a rolling upgrade), which the
// cluster refuses with FailedPrecondition before proposing, without a
// queue error.
func refusedForOne(err error) bool {
	var typed *Error
	return errors.Is(err, ErrInvalidArgument) || errors.Is(err, ErrQueueFull) ||
		(!errors.As(err, &typed) && status.Code(err) == codes.FailedPrecondition)
}

// resolveAll gives each future of live its result (res[i], or err for
// all) and frees its room.
func (p *Producer) resolveAll(live []*SendFuture, res []SendResult, err error) {
	for i, f := range live {
		p.release(f)
		if err != nil {
			f.resolve(SendResult{}, err)
		} else {
			f.resolve(res[i], nil)
		}
	}
}

// batchContext bounds the retries of one batch: sendTimeout, or, for the
// Client's gatherer, until every caller has given up (the batch goes on
// while one caller still waits for it).
func (p *Producer) batchContext(live []*SendFuture) (context.Context, context.CancelFunc) {
	if !p.o.callerContexts {
		return context.WithTimeout(context.Background(), p.o.sendTimeout)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var alive atomic.Int64
	alive.Store(int64(len(live)))
	stops := make([]func() bool, len(live))
	for i, f := range live {
		stops[i] = context.AfterFunc(f.ctx, func() {
			if alive.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

// pipelinesLocked tells whether b, a batch that is not full, may take a
// free send slot while other batches of its queue are on the wire: when it
// holds pipelineMessages messages or pipelineBytes bytes (each at most
// the full batch). A Raft round takes the leader's and a follower's log
// append one after the other, so the next batch's append overlaps the
// round before only if it is already on its way; a producer with a few
// hundred messages in flight (less than a full batch) then keeps several
// rounds busy instead of one (docs/performance.md, "Ratio to NATS
// JetStream"). Smaller batches wait: a Raft round costs about as much for
// one message as for sixty, and raft's group commit only merges entries
// that arrive together.
func (p *Producer) pipelinesLocked(b *batch) bool {
	return len(b.futs) >= min(pipelineMessages, p.o.batchMessages) || b.bytes >= min(pipelineBytes, p.o.batchBytes)
}

// pipelineMessages and pipelineBytes size a batch that goes beside others
// on the wire (pipelinesLocked).
const (
	pipelineMessages = 64
	pipelineBytes    = 64 << 10
)

// regatherLocked tells whether q's filling batch should wait for the
// callers of the batch just answered, who are about to send their next
// messages: sent now, it would go without them, and they would make the
// next batch, every caller waiting two rounds instead of one. A timer
// sends it when the wait is over.
func (p *Producer) regatherLocked(q *queueBatches) bool {
	b := q.filling
	wait := time.Until(q.regatherUntil)
	if wait <= 0 || len(b.futs) >= q.expect {
		return false
	}
	if b.timer == nil {
		b.timer = time.AfterFunc(wait, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			if q.filling == b {
				q.regatherUntil = time.Time{}
				p.startLocked(q)
			}
		})
	}
	return true
}

// forgetIdleLocked drops q's state once nothing is pending for it and
// no callers are expected back.
func (p *Producer) forgetIdleLocked(q *queueBatches) {
	if q.filling == nil && len(q.waiting) == 0 && len(q.sending) == 0 &&
		!time.Now().Before(q.regatherUntil) && p.queues[q.name] == q {
		delete(p.queues, q.name)
	}
}

// Flush sends every gathering batch now and waits until all messages given
// to SendAsync so far have their result, or until ctx ends.
func (p *Producer) Flush(ctx context.Context) error {
	p.mu.Lock()
	var wait []*batch
	for _, q := range p.queues {
		if q.filling != nil {
			q.filling.due = true
		}
		q.regatherUntil = time.Time{}
		for b := range q.sending {
			wait = append(wait, b)
		}
		wait = append(wait, q.waiting...)
		if q.filling != nil {
			wait = append(wait, q.filling)
		}
		p.startLocked(q)
	}
	p.mu.Unlock()
	for _, b := range wait {
		select {
		case <-b.done:
		case <-ctx.Done():
			return fmt.Errorf("Producer.Flush: %w", ctx.Err())
		}
	}
	return nil
}

// Close flushes and waits for every outstanding message; later SendAsync
// calls fail with ErrClosed. It does not close the Client.
func (p *Producer) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	return p.Flush(context.Background())
}

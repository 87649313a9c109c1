package client

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/quorumq/quorumq/transport/wire"
)

// Handler processes one message. Returning nil acks it; an error nacks it
// with backoff so it is delivered again. ctx ends when the consumer stops
// or when the lease is lost (then context.Cause(ctx) is ErrLeaseLost and
// any work done may be repeated elsewhere).
type Handler func(ctx context.Context, m *Message) error

// PipelineHandler processes one message of an exactly-once stage and
// returns the messages to enqueue for it. See ConsumeExactlyOnce.
type PipelineHandler func(ctx context.Context, m *Message) ([]TxEnqueue, error)

// ConsumerOption configures Consume and ConsumeExactlyOnce.
type ConsumerOption func(*consumerOptions)

type consumerOptions struct {
	concurrency   int
	visibility    time.Duration
	wait          time.Duration
	nackMin       time.Duration
	nackMax       time.Duration
	ackLinger     time.Duration
	ackMax        int
	settleTimeout time.Duration
	onError       func(error)
}

// WithConcurrency sets how many handlers run at once. Default 8.
func WithConcurrency(n int) ConsumerOption { return func(o *consumerOptions) { o.concurrency = n } }

// WithLease sets the lease requested per delivery; the consumer extends it
// while the handler runs. Default: the queue's visibility timeout.
func WithLease(d time.Duration) ConsumerOption { return func(o *consumerOptions) { o.visibility = d } }

// WithPollWait sets the long-poll wait of the consumer's receives. Default
// 10 s.
func WithPollWait(d time.Duration) ConsumerOption { return func(o *consumerOptions) { o.wait = d } }

// WithNackBackoff sets the redelivery delay after a handler error: min on
// the first delivery, doubling with every attempt up to max. Defaults: 1 s
// and 1 min.
func WithNackBackoff(min, max time.Duration) ConsumerOption {
	return func(o *consumerOptions) { o.nackMin, o.nackMax = min, max }
}

// WithAckBatching sets how long acks are gathered (linger) and how many go
// in one Ack call. Defaults: 5 ms and 256.
func WithAckBatching(linger time.Duration, max int) ConsumerOption {
	return func(o *consumerOptions) { o.ackLinger, o.ackMax = linger, max }
}

// WithSettleTimeout bounds how long acks, nacks and transactions are
// retried, also after the consumer's context ended. Default 30 s.
func WithSettleTimeout(d time.Duration) ConsumerOption {
	return func(o *consumerOptions) { o.settleTimeout = d }
}

// WithErrorHandler receives errors that have no caller to return to: an
// ack that found its lease lost, a failed nack or extend. Default: logged
// at warn level on the client's logger.
func WithErrorHandler(f func(error)) ConsumerOption {
	return func(o *consumerOptions) { o.onError = f }
}

func (o *consumerOptions) validate() error {
	switch {
	case o.concurrency < 1:
		return invalidArg("WithConcurrency", "must be >= 1, got %d", o.concurrency)
	case o.visibility < 0:
		return invalidArg("WithLease", "must be >= 0, got %v", o.visibility)
	case o.visibility > 0 && o.visibility < 100*time.Millisecond:
		return invalidArg("WithLease", "must be >= 100ms to leave time for extensions, got %v", o.visibility)
	case o.wait < 0 || o.wait > MaxWait:
		return invalidArg("WithPollWait", "must be 0..%v, got %v", MaxWait, o.wait)
	case o.nackMin < 0 || o.nackMax < o.nackMin:
		return invalidArg("WithNackBackoff", "need 0 <= min <= max, got %v and %v", o.nackMin, o.nackMax)
	case o.ackLinger < 0 || o.ackMax < 1:
		return invalidArg("WithAckBatching", "need linger >= 0 and max >= 1, got %v and %d", o.ackLinger, o.ackMax)
	case o.settleTimeout <= 0:
		return invalidArg("WithSettleTimeout", "must be > 0, got %v", o.settleTimeout)
	}
	return nil
}

// Consume receives messages of queue and runs h on each, at most
// WithConcurrency at a time, until ctx ends; it returns nil then, after the
// running handlers returned and their acks and nacks were sent. While a
// handler runs its lease is extended, so a slow handler keeps its message.
// A nil return acks (in batches), an error nacks with backoff and the
// error's text (its first 1024 bytes) as the nack reason, which the next
// delivery and a dead letter show. When ctx
// ends, the handlers' contexts end too; a handler that then returns an
// error has its message nacked without delay, so another consumer takes it
// at once. Consume returns early only for errors that retrying cannot fix
// (the queue does not exist, bad options, credentials); other receive
// errors go to the error handler and are retried with backoff.
//
// The messages of a group (WithGroup) are handled one at a time, in the
// order the cluster delivers them, which is their enqueue order: the
// cluster delivers a group's next message only once the one before is
// acked (or rejected, or dead-lettered). When it delivers a message
// again while the handler of its earlier delivery still runs here (that
// lease ran out: the process stalled, or the handler ignored its
// context, which ends with ErrLeaseLost), the new delivery waits until
// that handler returned; so do several messages of one group from a
// server that does not order groups. A waiting delivery takes no handler slot, so other groups and
// messages without a group keep running beside it, and its lease is
// extended while it waits. Should its lease end anyway (its extensions
// went unanswered past the lease's end, or the cluster answered that
// the message was delivered again), it is not handled: the error handler
// gets ErrLeaseLost and the cluster delivers the message again, with
// nothing of its group delivered after it meanwhile. At most
// WithConcurrency deliveries wait at a time; when that many wait, no
// more are received until one runs. When ctx ends, waiting deliveries
// are given back unhandled, without delay. This holds within one
// Consume call; separate consumers of a queue rely on the cluster's
// order alone.
func (c *Client) Consume(ctx context.Context, queue string, h Handler, opts ...ConsumerOption) error {
	return c.consume(ctx, "Consume", queue, opts, func(r *run, hctx context.Context, m *Message) {
		if err := h(hctx, m); err != nil {
			r.nack(hctx, m, err)
			return
		}
		r.ack(m)
	})
}

// ConsumeExactlyOnce runs a pipeline stage: for each message of queue, h
// returns output messages, and the consumer enqueues them and acks the
// input in one transaction. Outputs without a DedupID get one derived from
// the input (queue, message ID, enqueue time) and the output's index, so
// when the input is delivered again — the transaction's outcome was
// unknown, or the lease was lost — and h runs again, the outputs are
// recognised as duplicates and each input yields its outputs exactly once.
// h must therefore return the same outputs, in the same order, for the same
// input. Options and stopping are as for Consume.
//
// Inputs of a group are handled as by Consume: one at a time, in order,
// each input's transaction applied before the next input of its group is
// delivered, so the outputs of a group's inputs are enqueued in the
// inputs' order. An output is in the group its OutMessage names; it does
// not inherit the input's group (Group "" is no group, as for every
// send). To keep a group's order downstream, give the outputs a group,
// e.g. Group: m.Group.
func (c *Client) ConsumeExactlyOnce(ctx context.Context, queue string, h PipelineHandler, opts ...ConsumerOption) error {
	return c.consume(ctx, "ConsumeExactlyOnce", queue, opts, func(r *run, hctx context.Context, m *Message) {
		outs, err := h(hctx, m)
		if err != nil {
			r.nack(hctx, m, err)
			return
		}
		tx := Transaction{Acks: []TxAck{{Queue: m.Queue, Receipt: m.Receipt}}, Enqueues: make([]TxEnqueue, len(outs))}
		for i, o := range outs {
			if o.Message.DedupID == "" {
				o.Message.DedupID = PipelineDedupID(m, i)
			}
			tx.Enqueues[i] = o
		}
		sctx, cancel := r.settleCtx()
		defer cancel()
		_, err = c.Transact(sctx, tx)
		switch {
		case err == nil:
			r.leases.remove(m.Receipt)
		case errors.Is(err, ErrLeaseLost):
			// Nothing was enqueued; the message is someone else's now.
			r.leases.remove(m.Receipt)
			r.report(fmt.Errorf("ConsumeExactlyOnce %s: message %d: %w", m.Queue, m.Receipt.MessageID, err))
		default:
			// E.g. an output queue is missing or full. Give the input back
			// with backoff; if the transaction did apply after all, the nack
			// finds the message acked and changes nothing.
			r.nack(hctx, m, fmt.Errorf("transaction: %w", err))
		}
	})
}

// PipelineDedupID is the dedup ID ConsumeExactlyOnce gives output i of
// input message m: the same for every delivery of m, distinct for distinct
// messages (the enqueue time tells apart messages of a queue that was
// deleted and re-created, whose IDs start over).
func PipelineDedupID(m *Message, i int) string {
	h := sha256.New()
	h.Write([]byte(m.Queue))
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], m.Receipt.MessageID)
	binary.BigEndian.PutUint64(b[8:], uint64(m.EnqueuedAt.UnixNano()))
	h.Write(b[:])
	return "eo-" + hex.EncodeToString(h.Sum(nil)[:16]) + "-" + strconv.Itoa(i)
}

// run is one Consume loop: its lease keeper and acker and the options.
type run struct {
	c      *Client
	queue  string
	o      consumerOptions
	ctx    context.Context // the caller's
	leases *leaseKeeper
	acks   *acker
}

func (c *Client) consume(ctx context.Context, op, queue string, opts []ConsumerOption,
	process func(r *run, hctx context.Context, m *Message)) error {
	o := consumerOptions{
		concurrency:   8,
		wait:          10 * time.Second,
		nackMin:       time.Second,
		nackMax:       time.Minute,
		ackLinger:     5 * time.Millisecond,
		ackMax:        256,
		settleTimeout: 30 * time.Second,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(); err != nil {
		return err
	}
	if err := validateQueueName(op+" queue", queue); err != nil {
		return err
	}
	if o.onError == nil {
		o.onError = func(err error) { c.log.Warn("quorumq consumer", "queue", queue, "err", err) }
	}
	lease := o.visibility
	if lease == 0 {
		// The keeper must know the lease length to extend in time.
		info, err := c.GetQueue(ctx, queue)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%s: %w", op, err)
		}
		lease = info.Settings.VisibilityTimeout
		if lease <= 0 {
			return fmt.Errorf("%s: queue %s reports visibility timeout %v", op, queue, lease)
		}
	}
	r := &run{c: c, queue: queue, o: o, ctx: ctx}
	r.leases = newLeaseKeeper(r, lease)
	r.acks = newAcker(r)
	// Unwound in reverse: handlers return, acks are sent (leases still
	// extended meanwhile), then the keeper stops.
	defer r.leases.close()
	defer r.acks.close()

	bo := backoff{min: c.opts.backoffMin, max: c.opts.backoffMax}
	d := newDispatcher(o.concurrency, func(p pending) { r.handle(p, process) })
	defer d.wait()
	for {
		n := d.reserve(ctx, o.concurrency)
		if n == 0 {
			return nil
		}
		started := time.Now()
		msgs, err := c.Receive(ctx, queue, n, WithWait(o.wait), WithVisibility(lease))
		d.unreserve(n - len(msgs))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if permanent(err) {
				return fmt.Errorf("%s: %w", op, err)
			}
			r.report(fmt.Errorf("%s: receive: %w", op, err))
			if sleepCtx(ctx, bo.next()) != nil {
				return nil
			}
			continue
		}
		bo.n = 0
		for i := range msgs {
			m := &msgs[i]
			d.dispatch(pending{m: m, ctx: r.leases.add(m, started)})
		}
	}
}

// handle runs process on a delivery whose turn came: at once, or after
// it waited behind an earlier delivery of its group. A delivery is not
// handled when its lease ended while it waited: the cluster delivers
// the message again (and the group's order holds, as nothing of the
// group after it was delivered meanwhile). Nor when the consumer is
// stopping: it is given back at once, for another consumer to take.
func (r *run) handle(p pending, process func(r *run, hctx context.Context, m *Message)) {
	switch {
	case !r.leases.live(p.m.Receipt):
		r.leases.remove(p.m.Receipt)
		r.report(fmt.Errorf("message %d attempt %d of group %q: not handled, its lease ended while it waited behind its group: %w",
			p.m.Receipt.MessageID, p.m.Receipt.Attempt, p.m.Group, ErrLeaseLost))
	case r.ctx.Err() != nil:
		r.nack(p.ctx, p.m, nil)
	default:
		process(r, p.ctx, p.m)
	}
}

// permanent reports errors that a retry of the same receive cannot fix.
func permanent(err error) bool {
	for _, e := range []error{ErrQueueNotFound, ErrInvalidArgument, ErrUnauthenticated, ErrPermissionDenied, ErrClosed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// settleCtx is the context for acks, nacks and transactions: it outlives
// the caller's context (a handler that finished as the consumer stops still
// gets its outcome recorded) but is bounded by the settle timeout.
func (r *run) settleCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(r.ctx), r.o.settleTimeout)
}

func (r *run) report(err error) { r.o.onError(err) }

// ack hands m's receipt to the acker; the lease stays extended until the
// ack is confirmed.
func (r *run) ack(m *Message) { r.acks.add(m) }

// nack gives m back with a delay that grows with its delivery attempt; when
// the consumer is stopping, at once, so another consumer takes it. herr,
// the handler's error, is the nack reason; nil gives back a message no
// handler ran on, keeping the reason an earlier nack gave.
func (r *run) nack(hctx context.Context, m *Message, herr error) {
	defer r.leases.remove(m.Receipt)
	delay := time.Duration(0)
	if r.ctx.Err() == nil {
		delay = r.o.nackMin
		for a := uint32(1); a < m.Receipt.Attempt && delay < r.o.nackMax; a++ {
			delay *= 2
		}
		delay = min(delay, r.o.nackMax)
	}
	if errors.Is(context.Cause(hctx), ErrLeaseLost) {
		return // the message is already someone else's
	}
	sctx, cancel := r.settleCtx()
	defer cancel()
	reason, after := "", "unhandled as the consumer stops"
	if herr != nil {
		reason, after = nackReason(herr), fmt.Sprintf("after handler error %v", herr)
	}
	if err := r.c.NackWithReason(sctx, r.queue, delay, reason, m.Receipt); err != nil {
		r.report(fmt.Errorf("nack message %d %s: %w", m.Receipt.MessageID, after, err))
	}
}

// nackReason is the text of a handler's error as a nack reason: cut to
// the limit a reason has, at a UTF-8 character boundary, since the
// message must be given back whatever the error says.
func nackReason(err error) string {
	s := err.Error()
	if len(s) <= wire.MaxNackReason {
		return s
	}
	n := wire.MaxNackReason
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// leaseKeeper extends the leases of the deliveries being handled or
// waiting behind their group, in one Extend call per round, and cancels
// the context of one whose lease was lost. Leases are held per receipt,
// not per message: a message handed out again while its first handler
// still runs (its lease ran out) is held twice, and each lease is kept
// or lost on its own.
type leaseKeeper struct {
	r     *run
	lease time.Duration

	mu   sync.Mutex
	held map[Receipt]*heldLease

	stop chan struct{}
	done chan struct{}
}

type heldLease struct {
	m     *Message
	until time.Time // by our clock, conservatively from before the call
	// unanswered: the last Extend that carried it got no answer, so its
	// lease may end at until.
	unanswered bool
	ctx        context.Context
	cancel     context.CancelCauseFunc
}

func newLeaseKeeper(r *run, lease time.Duration) *leaseKeeper {
	k := &leaseKeeper{r: r, lease: lease, held: map[Receipt]*heldLease{}, stop: make(chan struct{}), done: make(chan struct{})}
	go k.loop()
	return k
}

func (k *leaseKeeper) add(m *Message, receivedAt time.Time) context.Context {
	ctx, cancel := context.WithCancelCause(k.r.ctx)
	k.mu.Lock()
	k.held[m.Receipt] = &heldLease{m: m, until: receivedAt.Add(k.lease), ctx: ctx, cancel: cancel}
	k.mu.Unlock()
	return ctx
}

func (k *leaseKeeper) remove(rc Receipt) {
	k.mu.Lock()
	h := k.held[rc]
	delete(k.held, rc)
	k.mu.Unlock()
	if h != nil {
		h.cancel(context.Canceled)
	}
}

// live tells whether the lease of rc is still held: not lost, and not
// past its end with its extension unanswered (by this process's clock,
// taken before each call that set the end, so it errs early). A lease
// just received may look past its end after a long poll; the next round
// extends it, so only an unanswered extension makes it count as ended.
func (k *leaseKeeper) live(rc Receipt) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	h := k.held[rc]
	return h != nil && !(h.unanswered && !time.Now().Before(h.until))
}

func (k *leaseKeeper) close() {
	close(k.stop)
	<-k.done
}

// loop extends every lease that has less than half its length left.
func (k *leaseKeeper) loop() {
	defer close(k.done)
	t := time.NewTicker(max(k.lease/10, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-k.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		var due []Receipt
		deadline := now.Add(k.lease)
		k.mu.Lock()
		for _, h := range k.held {
			if h.until.Sub(now) < k.lease/2 {
				due = append(due, h.m.Receipt)
				deadline = minTime(deadline, h.until)
			}
		}
		k.mu.Unlock()
		if len(due) == 0 {
			continue
		}
		// Past the earliest lease's end an extension is moot for it; the
		// others get the next round.
		ctx, cancel := context.WithDeadline(context.WithoutCancel(k.r.ctx), maxTime(deadline, now.Add(k.lease/4)))
		err := k.r.c.Extend(ctx, k.r.queue, k.lease, due...)
		cancel()
		failed := map[Receipt]error{}
		var ae *AckError
		switch {
		case err == nil:
		case errors.As(err, &ae):
			for _, f := range ae.Failed {
				failed[f.Receipt] = f.Err
			}
		default:
			k.r.report(fmt.Errorf("extend %d lease(s): %w", len(due), err))
			k.mu.Lock()
			for _, rc := range due {
				if h := k.held[rc]; h != nil {
					h.unanswered = true
				}
			}
			k.mu.Unlock()
			continue
		}
		k.mu.Lock()
		for _, rc := range due {
			h := k.held[rc]
			if h == nil {
				continue
			}
			if ferr := failed[rc]; ferr != nil {
				delete(k.held, rc)
				h.cancel(ErrLeaseLost)
				k.r.report(fmt.Errorf("message %d attempt %d: %w", rc.MessageID, rc.Attempt, ferr))
				continue
			}
			h.until, h.unanswered = now.Add(k.lease), false
		}
		k.mu.Unlock()
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// acker gathers the receipts of handled messages into batched Ack calls.
type acker struct {
	r    *run
	ch   chan *Message
	wg   sync.WaitGroup // Ack calls in flight
	done chan struct{}
}

func newAcker(r *run) *acker {
	a := &acker{r: r, ch: make(chan *Message, r.o.ackMax), done: make(chan struct{})}
	go a.loop()
	return a
}

func (a *acker) add(m *Message) { a.ch <- m }

// close sends what is gathered and waits for all Ack calls. Every handler
// has returned by then, so nothing is added after it.
func (a *acker) close() {
	close(a.ch)
	<-a.done
	a.wg.Wait()
}

func (a *acker) loop() {
	defer close(a.done)
	var batch []*Message
	var linger <-chan time.Time
	flush := func() {
		if len(batch) == 0 {
			return
		}
		b := batch
		batch = nil
		linger = nil
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.send(b)
		}()
	}
	for {
		select {
		case m, ok := <-a.ch:
			if !ok {
				flush()
				return
			}
			batch = append(batch, m)
			if len(batch) >= a.r.o.ackMax {
				flush()
			} else if linger == nil {
				linger = time.After(a.r.o.ackLinger)
			}
		case <-linger:
			flush()
		}
	}
}

func (a *acker) send(b []*Message) {
	rs := make([]Receipt, len(b))
	for i, m := range b {
		rs[i] = m.Receipt
	}
	ctx, cancel := a.r.settleCtx()
	defer cancel()
	if err := a.r.c.Ack(ctx, a.r.queue, rs...); err != nil {
		a.r.report(fmt.Errorf("ack %d message(s): %w", len(rs), err))
	}
	for _, m := range b {
		a.r.leases.remove(m.Receipt)
	}
}

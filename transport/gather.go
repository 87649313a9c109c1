package transport

import (
	"context"
	"sync"
	"time"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// Gathering concurrent HTTP sends into one Raft entry.
//
// The Go client gathers the concurrent sends of one process to one queue
// into one Enqueue call; a plain HTTP client cannot, so sixty-four
// workers that each send one message made sixty-four log entries, each
// encoded, stored, replicated and applied on its own. The server does it
// for them: while an enqueue of a queue gathered this way is on its way
// through Raft, the HTTP enqueues of that queue that arrive wait and go
// together, as one Enqueue command, when it is done. A lone sender waits
// for nothing: with nothing in flight its enqueue goes at once.
//
// A gathered command is the requests' messages in arrival order, each
// request still validated on its own before it joins; it holds at most a
// batch's worth of messages and bytes (the limits of one request). Its
// result is split back by position. When it fails as a whole (QUEUE_FULL,
// QUEUE_NOT_FOUND, a full disk), it changed nothing, and each request is
// sent again alone, so that a request fails only for a reason of its
// own. When its outcome is unknown, every request in it gets that answer:
// a retry with the same dedup IDs is safe, as for any send.
//
// Only HTTP enqueues without after_dedup_id are gathered: a chained batch
// must reach the log on its own, after its predecessor.
//
// Sync senders come back as soon as they are answered, and not all at
// once: each answer is written, read, and followed by a new request. Had
// the next command gone as soon as the one before was done, it would hold
// only those that were quick (and those that waited already), the slow
// ones would go in the command after, and from then on the senders stay
// split into two groups, each waiting two rounds. So, once a command of
// several requests is answered, the next one regathers: it waits for as
// many requests as that command and the batch behind it held together,
// for regatherMax at most. A wait that runs out (the senders did not come
// back: they work between sends) makes the next waits skip, one, then
// two, four, ... up to regatherSkipMax, so that senders who send now and
// then do not pay for it; a wait that fills ends the skipping.

type gatherKey struct {
	queue  string
	create bool
}

// gatherBatch is the enqueues that go together as one command.
type gatherBatch struct {
	enqs            []*fsmpb.Enqueue
	messages, bytes int
	full            bool          // a request did not fit
	done            chan struct{} // closed once res and err are set
	res             *fsmpb.Result
	err             error
}

// gatherQueue is one queue's state: the gathered commands in flight, and
// the batch waiting for one of them to be done.
type gatherQueue struct {
	inFlight int
	next     *gatherBatch

	// While the sender regathers: the requests next waits for, and the
	// channel closed once it holds them or is full.
	expect int
	ready  chan struct{}
	// After a regather ran out: the waits to skip, and how many the next
	// one that runs out makes skip.
	skip, skipNext int
}

// gatherInFlight is how many gathered commands of one queue may be in
// flight at once. Two measured no faster than one with 64 HTTP senders
// (5,184 and 5,488 msg/s against 5,207–6,162), and one gathers more.
const gatherInFlight = 1

// regatherMax bounds a regather. With 64 sync HTTP senders of one
// process, on two cores shared with the three nodes, the last of them
// came back up to about 2 ms after their command was answered: a wait of
// 1 ms went with 40 requests a command on average, one of 2 ms with 59–62
// (docs/performance.md).
const regatherMax = 2 * time.Millisecond

// regatherSkipMax bounds the waits skipped after regathers ran out.
const regatherSkipMax = 64

type gatherer struct {
	mu     sync.Mutex
	queues map[gatherKey]*gatherQueue
}

// gatheredEnqueue sends enq, gathered with the others that arrive while one is in
// flight, and returns its own results.
func (q *QueueService) gatheredEnqueue(ctx context.Context, enq *fsmpb.Enqueue, total batchTotal) ([]*fsmpb.EnqueueResult, error) {
	g := &q.gather
	key := gatherKey{enq.GetQueue(), enq.GetCreateQueue()}
	g.mu.Lock()
	if g.queues == nil {
		g.queues = make(map[gatherKey]*gatherQueue)
	}
	gq := g.queues[key]
	if gq == nil {
		gq = &gatherQueue{}
		g.queues[key] = gq
	}
	if gq.inFlight < gatherInFlight {
		// Nothing to wait for: this one goes now, and what arrives
		// meanwhile gathers behind it.
		gq.inFlight++
		g.mu.Unlock()
		b := &gatherBatch{enqs: []*fsmpb.Enqueue{enq}, messages: total.messages, bytes: total.bytes, done: make(chan struct{})}
		q.sendGathered(key, b)
		return q.split(ctx, b, enq)
	}
	b := gq.next
	if b == nil || b.messages+total.messages > q.limits.MaxBatchMessages || b.bytes+total.bytes > q.limits.MaxBatchBytes {
		if b != nil {
			b.full = true
			gq.wakeRegather()
			// Full: it goes as soon as the one in flight is done; this
			// request starts the batch after it.
			g.mu.Unlock()
			return q.alone(ctx, enq)
		}
		b = &gatherBatch{done: make(chan struct{})}
		gq.next = b
	}
	b.enqs = append(b.enqs, enq)
	b.messages += total.messages
	b.bytes += total.bytes
	if len(b.enqs) >= gq.expect {
		gq.wakeRegather()
	}
	g.mu.Unlock()
	return q.split(ctx, b, enq)
}

// wakeRegather ends the sender's regather, if it is in one: next holds
// the requests it waits for, or is full.
func (gq *gatherQueue) wakeRegather() {
	if gq.ready != nil {
		close(gq.ready)
		gq.ready = nil
	}
}

// regather waits, with g.mu held and released while it waits, until the
// batch behind a command of answered requests holds as many requests as
// the command and that batch held together, or for regatherMax.
func (gq *gatherQueue) regather(g *gatherer, answered int) {
	waiting := 0
	if gq.next != nil {
		waiting = len(gq.next.enqs)
	}
	if answered < 2 || gq.next != nil && gq.next.full {
		return
	}
	if gq.skip > 0 {
		gq.skip--
		return
	}
	ready := make(chan struct{})
	gq.expect, gq.ready = answered+waiting, ready
	g.mu.Unlock()
	t := time.NewTimer(regatherMax)
	filled := true
	select {
	case <-ready:
	case <-t.C:
		filled = false
	}
	t.Stop()
	g.mu.Lock()
	gq.expect, gq.ready = 0, nil
	if filled {
		gq.skipNext = 0
		return
	}
	gq.skipNext = min(max(2*gq.skipNext, 1), regatherSkipMax)
	gq.skip = gq.skipNext
}

// sendGathered proposes b, then the batches that gathered while it was in
// flight (each after its regather), one after another, until none is
// waiting.
func (q *QueueService) sendGathered(key gatherKey, b *gatherBatch) {
	go func() {
		for b != nil {
			q.proposeBatch(b)
			g := &q.gather
			g.mu.Lock()
			gq := g.queues[key]
			gq.regather(g, len(b.enqs))
			b, gq.next = gq.next, nil
			if b == nil {
				if gq.inFlight--; gq.inFlight == 0 {
					delete(g.queues, key)
				}
			}
			g.mu.Unlock()
		}
	}()
}

// proposeBatch proposes b's enqueues as one command; when that fails as a
// whole, each one alone.
func (q *QueueService) proposeBatch(b *gatherBatch) {
	defer close(b.done)
	if len(b.enqs) == 1 {
		b.res, b.err = q.propose(context.Background(), &fsmpb.Command{Op: &fsmpb.Command_Enqueue{Enqueue: b.enqs[0]}})
		return
	}
	merged := &fsmpb.Enqueue{Queue: b.enqs[0].GetQueue(), CreateQueue: b.enqs[0].GetCreateQueue()}
	for _, e := range b.enqs {
		merged.Messages = append(merged.Messages, e.GetMessages()...)
	}
	res, err := q.backend.Propose(context.Background(), &fsmpb.Command{Op: &fsmpb.Command_Enqueue{Enqueue: merged}})
	if err == nil && resultError(res) != nil {
		// Refused as a whole, so nothing of it was applied: each
		// request is judged on its own.
		b.res, b.err = nil, errSendAlone
		return
	}
	b.res, b.err = res, err
}

// errSendAlone marks a gathered command refused as a whole: each request
// in it is sent again alone.
var errSendAlone = &sendAlone{}

type sendAlone struct{}

func (*sendAlone) Error() string { return "gathered enqueue refused as a whole" }

// split waits for b and returns enq's part of its result.
func (q *QueueService) split(ctx context.Context, b *gatherBatch, enq *fsmpb.Enqueue) ([]*fsmpb.EnqueueResult, error) {
	select {
	case <-b.done:
	case <-ctx.Done():
		// The command may still be applied: as for any propose whose
		// wait ends, the outcome is unknown.
		return nil, wire.OutcomeUnknownError("the request ended while its gathered enqueue was in flight: " + ctx.Err().Error())
	}
	if b.err == errSendAlone {
		return q.alone(ctx, enq)
	}
	if b.err != nil {
		return nil, b.err
	}
	if len(b.enqs) == 1 {
		return b.res.GetEnqueued(), nil
	}
	off := 0
	for _, e := range b.enqs {
		if e == enq {
			return b.res.GetEnqueued()[off : off+len(e.GetMessages())], nil
		}
		off += len(e.GetMessages())
	}
	panic("transport: enqueue not in its gathered batch")
}

// alone sends enq as a command of its own.
func (q *QueueService) alone(ctx context.Context, enq *fsmpb.Enqueue) ([]*fsmpb.EnqueueResult, error) {
	res, err := q.propose(ctx, &fsmpb.Command{Op: &fsmpb.Command_Enqueue{Enqueue: enq}})
	if err != nil {
		return nil, err
	}
	return res.GetEnqueued(), nil
}

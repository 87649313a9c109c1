package client

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// A pipe sends the batches of one queue of a Producer with more than one
// batch in flight. It keeps one EnqueueStream to the leader, on which the
// leader submits batches to Raft in the order they arrive and answers in
// that order. Each batch names the last dedup ID of the batch sent just
// before it while that one is still unanswered (after_dedup_id), and the
// state machine enqueues a batch only behind it. So whatever happens on
// the way — a refused batch, a leader change between two batches, a stream
// cut after some were submitted — no batch is enqueued ahead of one sent
// before it: the ones behind a failure are refused (OUT_OF_ORDER) or their
// outcome is unknown, and the pipe sends them again, in order, with the
// same dedup IDs, so none is enqueued twice either.

// piped is a batch in a pipe: sent on the current stream or waiting to be
// sent again on the next.
type piped struct {
	b         *batch
	live      []*SendFuture
	req       *quorumqpb.EnqueueRequest
	generated []bool
	deadline  time.Time // sendTimeout after it was first sent
	uncertain bool      // a stream it was sent on broke: it may be enqueued
	lastErr   error
}

// chainID is the dedup ID the next batch is chained behind: the last one
// the client generated, if any, since a fresh ULID can only be in the
// queue once this batch is; otherwise the last caller-given one. (A
// caller-given ID may be in the queue from an earlier send: then the
// check passes before this batch is applied, and only this batch's other
// messages could land behind the next one — which also needs Raft to
// refuse this batch and accept the next, that is a leader change between
// the two.)
func (pb *piped) chainID() string {
	msgs := pb.req.GetMessages()
	for i := len(msgs) - 1; i >= 0; i-- {
		if pb.generated[i] {
			return msgs[i].GetDedupId()
		}
	}
	return msgs[len(msgs)-1].GetDedupId()
}

// runPipe is the goroutine of q's pipe. It runs while q has batches handed
// to it or unanswered, and returns when both are done.
func (p *Producer) runPipe(q *queueBatches) {
	var pending []*piped // in order: sent and unanswered, or to send again
	bo := backoff{min: p.c.opts.backoffMin, max: p.c.opts.backoffMax}
	redirects := 0
	for {
		pending = p.takePiped(q, pending)
		if len(pending) == 0 {
			p.mu.Lock()
			if len(q.toPipe) == 0 {
				q.piping = false
				p.mu.Unlock()
				return
			}
			p.mu.Unlock()
			continue
		}
		if p.c.isClosed() {
			for _, pb := range pending {
				p.fail(q, pb, fmt.Errorf("%s: %w", p.o.op, ErrClosed))
			}
			pending = nil
			continue
		}
		if time.Now().UnixNano() < p.c.unaryUntil.Load() {
			pending = p.sendUnary(q, pending)
			continue
		}
		addr := p.c.target()
		var err error
		pending, err = p.stream(q, addr, pending)
		if status.Code(err) == codes.Unimplemented {
			// A server of a release before EnqueueStream (during a
			// rolling upgrade): one batch at a time, as such a release's
			// Producer sent, and the stream again after a while.
			p.c.log.Info("quorumq: server has no EnqueueStream; sending one batch at a time", "op", p.o.op, "addr", addr)
			p.c.unaryUntil.Store(time.Now().Add(unaryRecheck).UnixNano())
			continue
		}
		if err == nil {
			bo, redirects = backoff{min: bo.min, max: bo.max}, 0
			continue
		}
		head := pending[0]
		for _, pb := range pending {
			pb.lastErr = fmt.Errorf("%s: %w", addr, err)
		}
		wait := time.Duration(0)
		if code, ok := wire.QueueErrorCode(err); ok && code == fsmpb.ErrorCode_OUT_OF_ORDER {
			// The head was refused because a batch before it failed or
			// was not applied first; that one is answered by now, so the
			// head goes again at the front of a new stream.
		} else if id, hint, ok := wire.LeaderHint(err); ok {
			if hint != "" && hint != addr && redirects < 3 {
				redirects++
				p.c.log.Debug("quorumq: redirect", "op", p.o.op, "from", addr, "to", hint, "leader_id", id)
				p.c.setLeader(hint)
			} else {
				p.c.forgetLeader(addr)
				redirects = 0
				wait = bo.next()
			}
		} else if unknown, broken := wire.IsOutcomeUnknown(err), isTransportErr(err); unknown || broken {
			if broken {
				p.c.forgetLeader(addr)
			}
			for _, pb := range pending {
				if pb.deadline != (time.Time{}) {
					pb.uncertain = true
				}
			}
			wait = bo.next()
		} else {
			// The server's definite answer to the head (invalid, full,
			// unknown queue, memory guard...): nothing of it was enqueued.
			p.fail(q, head, fromStatus(p.o.op, err))
			pending = pending[1:]
		}
		// Batches out of time fail; the rest go again after the wait.
		now := time.Now().Add(wait)
		for len(pending) > 0 && pending[0].deadline != (time.Time{}) && now.After(pending[0].deadline) {
			pb := pending[0]
			p.fail(q, pb, p.c.ctxErr(p.o.op, context.DeadlineExceeded, pb.lastErr, pb.uncertain))
			pending = pending[1:]
		}
		if wait > 0 {
			time.Sleep(wait)
		}
	}
}

// unaryRecheck is how long a Client sends without streams after a server
// answered EnqueueStream Unimplemented.
const unaryRecheck = time.Minute

// sendUnary sends the first of pending with unary Enqueue calls (retried
// like Send) and resolves it; the rest wait for the next turn of runPipe.
// Nothing is chained: the next batch is sent only once this one is
// answered, so a batch that fails for good is the only one its callers
// lose, as with WithBatchesInFlight(1).
func (p *Producer) sendUnary(q *queueBatches, pending []*piped) []*piped {
	pb := pending[0]
	if pb.deadline == (time.Time{}) {
		pb.deadline = time.Now().Add(p.o.sendTimeout)
	}
	pb.req.AfterDedupId = ""
	ctx, cancel := context.WithDeadline(context.Background(), pb.deadline)
	res, err := p.c.enqueue(ctx, p.o.op, pb.req, pb.generated)
	cancel()
	p.resolveAll(pb.live, res, err)
	p.finished(q, pb.b)
	return pending[1:]
}

// takePiped moves the batches handed to q's pipe to the end of pending.
func (p *Producer) takePiped(q *queueBatches, pending []*piped) []*piped {
	p.mu.Lock()
	bs := q.toPipe
	q.toPipe = nil
	p.mu.Unlock()
	for _, b := range bs {
		live, req, generated := p.prepare(q, b)
		if len(live) == 0 {
			p.finished(q, b)
			continue
		}
		pending = append(pending, &piped{b: b, live: live, req: req, generated: generated})
	}
	return pending
}

// stream runs one EnqueueStream to addr: it sends pending in order, then
// the batches handed to the pipe as they come, and resolves each batch
// with its answer. It returns nil once every batch is answered and none
// is left to send, or the error that ended the stream, with the batches
// still unanswered (the first of them is the one the error is about).
func (p *Producer) stream(q *queueBatches, addr string, pending []*piped) ([]*piped, error) {
	cc, err := p.c.conn(addr)
	if err != nil {
		return pending, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A node that stops answering (paused, cut off) is given up on after
	// the attempt timeout without an answer, even inside a blocked Send.
	var hung atomic.Bool
	hang := time.AfterFunc(p.c.opts.attemptTimeout, func() {
		hung.Store(true)
		cancel()
	})
	defer hang.Stop()
	st, err := quorumqpb.NewQueueClient(cc).EnqueueStream(ctx)
	if err != nil {
		return pending, err
	}
	answers := make(chan *quorumqpb.EnqueueResponse, 1)
	ended := make(chan error, 1)
	go func() {
		for {
			resp, err := st.Recv()
			if err != nil {
				ended <- err
				return
			}
			select {
			case answers <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	hangErr := func(err error) error {
		if hung.Load() {
			return status.Errorf(codes.DeadlineExceeded, "no answer to a batch within %v", p.c.opts.attemptTimeout)
		}
		return err
	}
	// send puts pending[i] on the stream, chained behind pending[i-1]
	// (which is unanswered: answered batches leave pending). A failed
	// Send stops sending; the stream's status, and the answers that came
	// before it, arrive through the receiver.
	broken := false
	send := func(i int) {
		if broken {
			return
		}
		pb := pending[i]
		pb.req.AfterDedupId = ""
		if i > 0 {
			pb.req.AfterDedupId = pending[i-1].chainID()
		}
		if pb.deadline == (time.Time{}) {
			pb.deadline = time.Now().Add(p.o.sendTimeout)
		}
		if err := st.Send(pb.req); err != nil {
			broken = true
		}
	}
	for i := range pending {
		send(i)
	}
	for {
		if !broken {
			n := len(pending)
			pending = p.takePiped(q, pending)
			if n == 0 && len(pending) > 0 {
				hang.Reset(p.c.opts.attemptTimeout)
			}
			for i := n; i < len(pending); i++ {
				send(i)
			}
		}
		if len(pending) == 0 {
			hang.Stop()
			p.mu.Lock()
			idle := len(q.toPipe) == 0
			p.mu.Unlock()
			if idle || broken {
				_ = st.CloseSend()
				return nil, nil
			}
			continue
		}
		select {
		case resp := <-answers:
			head := pending[0]
			pending = pending[1:]
			res, err := sendResults(p.o.op, head.req.GetMessages(), head.generated, resp.GetResults())
			p.resolveAll(head.live, res, err)
			p.finished(q, head.b)
			hang.Reset(p.c.opts.attemptTimeout)
		case err := <-ended:
			if err == io.EOF {
				err = status.Error(codes.Unavailable, "enqueue stream ended with batches unanswered")
			}
			return pending, hangErr(err)
		case <-q.wake:
		}
	}
}

// fail resolves every future of pb with err and frees its slot.
func (p *Producer) fail(q *queueBatches, pb *piped, err error) {
	p.resolveAll(pb.live, nil, err)
	p.finished(q, pb.b)
}

package jepsen

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/client"
)

// opTimeout bounds one client operation, so that an operation during a
// fault ends as ok, failed or unknown instead of waiting for the heal.
const opTimeout = 3 * time.Second

// Classify turns a client error into an operation status. The client
// reports "may have been applied" as ErrOutcomeUnknown (also when the
// context ended after an attempt went out), so a bare context error means
// no attempt could have taken effect. A ResourceExhausted status is a
// refusal before anything is proposed: the disk and memory guards, the
// request and queue-count limits (the client types only a full queue, as
// ErrQueueFull; the others it passes on as the server's status, and sends
// no such call again). The one ResourceExhausted that gRPC makes on the
// client's side after a call took effect, a reply over the client's
// receive limit, cannot come from the workloads' values of a few bytes.
// Errors the client does not type are treated as unknown: that never lets
// the checker blame the cluster for an operation the client could not
// account for.
func Classify(err error) Status {
	switch {
	case err == nil:
		return StatusOK
	case errors.Is(err, client.ErrOutcomeUnknown):
		return StatusUnknown
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		errors.Is(err, client.ErrLeaseLost), errors.Is(err, client.ErrQueueNotFound),
		errors.Is(err, client.ErrQueueFull), errors.Is(err, client.ErrInvalidArgument),
		errors.Is(err, client.ErrUnknownMessage), errors.Is(err, client.ErrQueueExists),
		status.Code(err) == codes.ResourceExhausted:
		return StatusFail
	default:
		return StatusUnknown
	}
}

// World is what workloads share: the cluster's addresses, the recorder and
// a flag that says the main phase is over and the drain has begun.
type World struct {
	Addrs []string
	Rec   *Recorder
	// Main is how long the main phase is expected to last; workloads with
	// a fixed operation budget pace themselves to span it.
	Main     time.Duration
	draining atomic.Bool
}

// newClient connects a workload's client. The attempt timeout is short so
// that a paused or cut-off node is given up on within one operation.
func (w *World) newClient(ctx context.Context) (*client.Client, error) {
	return client.New(ctx, w.Addrs,
		client.WithAttemptTimeout(time.Second),
		client.WithBackoff(20*time.Millisecond, 300*time.Millisecond),
		client.WithRefreshInterval(time.Second))
}

// do runs one operation under opTimeout and records it. call may fill in
// the op's results (message ID, deliveries) when it succeeds.
func (w *World) do(base Op, call func(ctx context.Context, op *Op) error) Op {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	base.Start = w.Rec.Since()
	err := call(ctx, &base)
	base.End = w.Rec.Since()
	base.Status = Classify(err)
	if err != nil {
		base.Error = err.Error()
	}
	base.Drain = w.draining.Load()
	w.Rec.Record(base)
	return base
}

func deliveries(ms []client.Message) []Delivered {
	out := make([]Delivered, 0, len(ms))
	for _, m := range ms {
		out = append(out, Delivered{Value: string(m.Body), MessageID: m.Receipt.MessageID, Attempt: m.Receipt.Attempt, DedupID: m.DedupID, Group: m.Group})
	}
	return out
}

func receipts(ms []client.Message) []client.Receipt {
	out := make([]client.Receipt, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Receipt)
	}
	return out
}

// Workload drives one part of the cluster and says how to check it.
type Workload interface {
	Name() string
	Queues() []string
	// Run starts the workload's workers. Producers stop when main ends;
	// consumers go on until drain ends. Run returns when all have stopped.
	Run(main, drain context.Context, w *World, c *client.Client)
	Specs() []QueueSpec
}

// queueSetup is a Workload whose queues need settings of their own: it
// creates them itself, before any fault. The queues of other workloads
// are created with the defaults.
type queueSetup interface {
	Setup(ctx context.Context, c *client.Client) error
}

// Workloads returns the six workloads of every case.
func Workloads() []Workload {
	return []Workload{
		&atLeastOnce{queue: "alo", producers: 2, consumers: 2, pipelined: true},
		&exactlyOnce{source: "eo-a", sink: "eo-b", producers: 1, workers: 2},
		&atMostOnce{queue: "amo", producers: 1, consumers: 2},
		&fifo{queues: []string{"fifo-0", "fifo-1"}, maxOps: 150},
		&timing{queue: "timing"},
		newGroups(),
	}
}

// producer sends value "<name>-<seq>" one at a time with the value as dedup
// ID, until ctx ends or more() says stop. With retryUnknown, a send whose
// outcome is unknown is sent once more, as a new call with the same dedup
// ID, the way an application retries after the client gave up: the dedup
// table (which must survive leader changes and restarts) is then all that
// stands between the retry and a second copy, and the checker counts
// second copies as double enqueues.
func producer(ctx context.Context, w *World, c *client.Client, workload, kind, name, queue string, pace time.Duration, retryUnknown bool, more func() bool) {
	for seq := 1; ctx.Err() == nil && more(); seq++ {
		v := fmt.Sprintf("%s-%d", name, seq)
		op := Op{Worker: name, Workload: workload, Kind: kind, Queue: queue, Value: v, Producer: name, Seq: seq, DedupID: v}
		if w.do(op, sendOne(c)).Status == StatusUnknown && retryUnknown {
			sleepCtx(ctx, 500*time.Millisecond)
			w.do(op, sendOne(c))
		}
		sleepCtx(ctx, pace)
	}
}

// Pipelined producer settings: bursts of pipeBurst SendAsync calls, issued
// back to back (far faster than a Raft round) so that batches of
// pipeBatch messages fill and use the Producer's further slots in flight,
// with at most pipeWindow futures unresolved and a pause between bursts so
// that this producer sends about half as many values as the two
// synchronous producers of the queue together (600 against 1,100 in a
// short case).
const (
	pipeWindow   = 32
	pipeBurst    = 32
	pipeBatch    = 8
	pipeInFlight = 4
	pipePause    = 800 * time.Millisecond
)

// pipelinedProducer sends values "<name>-<seq>" through one async
// client.Producer that keeps up to pipeInFlight full batches of the queue
// in flight on one EnqueueStream, each message with its value as a
// caller-given dedup ID. Every message is one Op: its invocation is the
// SendAsync call (which fixes its place in the producer's order, Seq), its
// completion the future's result. A message not yet sent after opTimeout
// is dropped by the Producer (a definite failure); a batch on the wire is
// retried, in order, for opTimeout (WithSendTimeout) and then fails, with
// an unknown outcome if an attempt may have been enqueued. Unknown
// outcomes are not retried by hand: the Producer's own resends (same dedup
// IDs) are what is under test, and the checker requires the message IDs of
// this producer's enqueued messages to rise in Seq order, gaps allowed.
func pipelinedProducer(ctx context.Context, w *World, c *client.Client, workload, name, queue string) {
	p := c.NewProducer(client.WithBatchesInFlight(pipeInFlight), client.WithBatchLimits(pipeBatch, 1<<20),
		client.WithSendTimeout(opTimeout))
	window := make(chan struct{}, pipeWindow)
	var wg sync.WaitGroup
	seq := 0
	for ctx.Err() == nil {
		for i := 0; i < pipeBurst; i++ {
			select {
			case window <- struct{}{}:
			case <-ctx.Done():
			}
			if ctx.Err() != nil {
				break
			}
			seq++
			v := fmt.Sprintf("%s-%d", name, seq)
			op := Op{Worker: name, Workload: workload, Kind: KindSend, Queue: queue, Value: v, Producer: name, Seq: seq, DedupID: v}
			octx, cancel := context.WithTimeout(context.Background(), opTimeout)
			op.Start = w.Rec.Since()
			f := p.SendAsync(octx, queue, client.OutMessage{Body: []byte(v), DedupID: v})
			wg.Go(func() {
				defer func() { <-window }()
				res, err := f.Wait(context.Background())
				op.End = w.Rec.Since()
				cancel()
				op.MessageID, op.Duplicate = res.MessageID, res.Duplicate
				op.Status = Classify(err)
				if err != nil {
					op.Error = err.Error()
				}
				op.Drain = w.draining.Load()
				w.Rec.Record(op)
			})
		}
		sleepCtx(ctx, pipePause)
	}
	wg.Wait()
	_ = p.Close()
}

// consumeLoop runs step until drain ends or, once every producer has
// returned (including its last retry, which may come after the main phase),
// step gets nothing and the queues report empty.
func consumeLoop(prodDone <-chan struct{}, drain context.Context, c *client.Client, queues []string, step func() int) {
	for drain.Err() == nil {
		got := step()
		if isDone(prodDone) && got == 0 && queuesEmpty(drain, c, queues) {
			return
		}
	}
}

// startProducers runs n producers and returns a channel closed once all
// have returned.
func startProducers(n int, run func(i int)) <-chan struct{} {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Go(func() { run(i) })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return done
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// queuesEmpty reports whether every queue holds no ready, leased, delayed
// or waiting (behind an earlier message of its group) message, by the
// leader's stats.
func queuesEmpty(ctx context.Context, c *client.Client, queues []string) bool {
	for _, q := range queues {
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		info, err := c.GetQueue(cctx, q)
		cancel()
		if err != nil {
			return false
		}
		if s := info.Stats; s.Ready+s.Leased+s.Delayed+s.Waiting > 0 {
			return false
		}
	}
	return true
}

// sendOne sends op.Value with op.DedupID and records the message ID.
func sendOne(c *client.Client) func(ctx context.Context, op *Op) error {
	return func(ctx context.Context, op *Op) error {
		res, err := c.Send(ctx, op.Queue, []byte(op.Value), client.WithDedupID(op.DedupID))
		op.MessageID, op.Duplicate = res.MessageID, res.Duplicate
		return err
	}
}

// receiveInto receives from op.Queue and records the deliveries; the
// messages are returned through ms for the caller to ack.
func receiveInto(c *client.Client, ms *[]client.Message, max int, opts ...client.ReceiveOption) func(ctx context.Context, op *Op) error {
	return func(ctx context.Context, op *Op) error {
		got, err := c.Receive(ctx, op.Queue, max, opts...)
		*ms = got
		op.Delivered = deliveries(got)
		return err
	}
}

// ackAll acks every message of ms.
func ackAll(c *client.Client, ms []client.Message) func(ctx context.Context, op *Op) error {
	return func(ctx context.Context, op *Op) error { return c.Ack(ctx, op.Queue, receipts(ms)...) }
}

func always() bool { return true }

// receiveAndAck is one at-least-once consumer step: receive up to max
// messages of queue with a visibility of vis, ack them, and return how many
// came.
func receiveAndAck(w *World, c *client.Client, worker, workload, queue string, max int, vis time.Duration) int {
	var ms []client.Message
	w.do(Op{Worker: worker, Workload: workload, Kind: KindReceive, Queue: queue, Visibility: int64(vis)},
		receiveInto(c, &ms, max, client.WithWait(500*time.Millisecond), client.WithVisibility(vis)))
	if len(ms) > 0 {
		w.do(Op{Worker: worker, Workload: workload, Kind: KindAck, Queue: queue, MessageID: ms[0].Receipt.MessageID}, ackAll(c, ms))
	}
	return len(ms)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// ---- (a) at-least-once ----

type atLeastOnce struct {
	queue                string
	producers, consumers int
	// pipelined adds one pipelinedProducer to the synchronous producers,
	// checked on its own as well (a QueueSpec restricted to it).
	pipelined bool
}

func (a *atLeastOnce) pipeName() string { return a.Name() + "-pipe" }

func (a *atLeastOnce) Name() string     { return "at-least-once" }
func (a *atLeastOnce) Queues() []string { return []string{a.queue} }
func (a *atLeastOnce) Specs() []QueueSpec {
	specs := []QueueSpec{{Workload: a.Name(), Mode: AtLeastOnce, Source: a.queue, Sink: a.queue}}
	if a.pipelined {
		specs = append(specs, QueueSpec{Workload: a.Name(), Mode: AtLeastOnce, Source: a.queue, Sink: a.queue, Producer: a.pipeName()})
	}
	return specs
}

func (a *atLeastOnce) Run(main, drain context.Context, w *World, c *client.Client) {
	var wg sync.WaitGroup
	n := a.producers
	if a.pipelined {
		n++
	}
	prodDone := startProducers(n, func(i int) {
		if i == a.producers {
			pipelinedProducer(main, w, c, a.Name(), a.pipeName(), a.queue)
			return
		}
		producer(main, w, c, a.Name(), KindSend, fmt.Sprintf("%s-p%d", a.Name(), i), a.queue, 15*time.Millisecond, true, always)
	})
	for i := 0; i < a.consumers; i++ {
		name := fmt.Sprintf("%s-c%d", a.Name(), i)
		wg.Go(func() {
			consumeLoop(prodDone, drain, c, a.Queues(), func() int {
				return receiveAndAck(w, c, name, a.Name(), a.queue, 5, 2*time.Second)
			})
		})
	}
	wg.Wait()
	<-prodDone
}

// ---- (b) exactly-once pipeline ----

type exactlyOnce struct {
	source, sink       string
	producers, workers int
}

func (e *exactlyOnce) Name() string     { return "exactly-once" }
func (e *exactlyOnce) Queues() []string { return []string{e.source, e.sink} }
func (e *exactlyOnce) Specs() []QueueSpec {
	return []QueueSpec{{Workload: e.Name(), Mode: ExactlyOnce, Source: e.source, Sink: e.sink}}
}

func (e *exactlyOnce) Run(main, drain context.Context, w *World, c *client.Client) {
	var wg sync.WaitGroup
	prodDone := startProducers(e.producers, func(i int) {
		producer(main, w, c, e.Name(), KindSend, fmt.Sprintf("%s-p%d", e.Name(), i), e.source, 20*time.Millisecond, true, always)
	})
	// Pipeline stage: receive from the source, then ack it and enqueue the
	// value to the sink in one transaction. The sink dedup ID derives from
	// the value, so a redelivered source message cannot be moved twice.
	for i := 0; i < e.workers; i++ {
		name := fmt.Sprintf("%s-w%d", e.Name(), i)
		wg.Go(func() {
			consumeLoop(prodDone, drain, c, []string{e.source}, func() int {
				var ms []client.Message
				w.do(Op{Worker: name, Workload: e.Name(), Kind: KindReceive, Queue: e.source, Visibility: int64(3 * time.Second)},
					receiveInto(c, &ms, 3, client.WithWait(500*time.Millisecond), client.WithVisibility(3*time.Second)))
				for _, m := range ms {
					tx := client.Transaction{
						Acks:     []client.TxAck{{Queue: e.source, Receipt: m.Receipt}},
						Enqueues: []client.TxEnqueue{{Queue: e.sink, Message: client.OutMessage{Body: m.Body, DedupID: "moved/" + string(m.Body)}}},
					}
					w.do(Op{Worker: name, Workload: e.Name(), Kind: KindTransact, Queue: e.sink, Value: string(m.Body), MessageID: m.Receipt.MessageID},
						func(ctx context.Context, _ *Op) error { _, err := c.Transact(ctx, tx); return err })
				}
				return len(ms)
			})
		})
	}
	// Sink consumer: at-least-once on the sink; the checker counts sink
	// values by message ID, so its redeliveries are not pipeline duplicates.
	name := e.Name() + "-sink"
	wg.Go(func() {
		consumeLoop(prodDone, drain, c, e.Queues(), func() int {
			return receiveAndAck(w, c, name, e.Name(), e.sink, 10, 3*time.Second)
		})
	})
	wg.Wait()
	<-prodDone
}

// ---- (c) at-most-once ----

type atMostOnce struct {
	queue                string
	producers, consumers int
}

func (a *atMostOnce) Name() string     { return "at-most-once" }
func (a *atMostOnce) Queues() []string { return []string{a.queue} }
func (a *atMostOnce) Specs() []QueueSpec {
	return []QueueSpec{{Workload: a.Name(), Mode: AtMostOnce, Source: a.queue, Sink: a.queue}}
}

func (a *atMostOnce) Run(main, drain context.Context, w *World, c *client.Client) {
	var wg sync.WaitGroup
	prodDone := startProducers(a.producers, func(i int) {
		producer(main, w, c, a.Name(), KindSend, fmt.Sprintf("%s-p%d", a.Name(), i), a.queue, 20*time.Millisecond, true, always)
	})
	for i := 0; i < a.consumers; i++ {
		name := fmt.Sprintf("%s-c%d", a.Name(), i)
		wg.Go(func() {
			consumeLoop(prodDone, drain, c, a.Queues(), func() int {
				var ms []client.Message
				w.do(Op{Worker: name, Workload: a.Name(), Kind: KindReceive, Queue: a.queue},
					receiveInto(c, &ms, 5, client.WithWait(500*time.Millisecond), client.WithAutoAck()))
				return len(ms)
			})
		})
	}
	wg.Wait()
	<-prodDone
}

// ---- (d) FIFO ----

// fifo runs, per queue, one producer and two consumers that dequeue one
// message at a time with auto-ack and no wait, so every operation is one
// atomic step of a FIFO queue. maxOps bounds each queue's main-phase
// history, which keeps the linearizability check fast; the workers pace
// themselves so that the budget spans the whole main phase and its faults.
type fifo struct {
	queues []string
	maxOps int
}

func (f *fifo) Name() string     { return "fifo" }
func (f *fifo) Queues() []string { return f.queues }
func (f *fifo) Specs() []QueueSpec {
	var out []QueueSpec
	for _, q := range f.queues {
		out = append(out, QueueSpec{Workload: f.Name(), Mode: AtMostOnce, Source: q, Sink: q})
	}
	return out
}

func (f *fifo) Run(main, drain context.Context, w *World, c *client.Client) {
	const workers = 3 // one producer, two consumers per queue
	pace := max(50*time.Millisecond, w.Main*workers/time.Duration(f.maxOps))
	var wg sync.WaitGroup
	for qi, q := range f.queues {
		var used atomic.Int64
		more := func() bool { return used.Add(1) <= int64(f.maxOps) }
		prodDone := startProducers(1, func(int) {
			producer(main, w, c, f.Name(), KindEnqueue, fmt.Sprintf("%s-%d-p0", f.Name(), qi), q, pace, false, more)
		})
		wg.Go(func() { <-prodDone })
		for ci := 0; ci < 2; ci++ {
			name := fmt.Sprintf("%s-%d-c%d", f.Name(), qi, ci)
			wg.Go(func() {
				sleepCtx(main, pace*time.Duration(ci+1)/3) // stagger the workers
				for drain.Err() == nil {
					if main.Err() == nil && !more() {
						sleepCtx(main, pace)
						continue
					}
					var ms []client.Message
					w.do(Op{Worker: name, Workload: f.Name(), Kind: KindDequeue, Queue: q}, receiveInto(c, &ms, 1, client.WithAutoAck()))
					if isDone(prodDone) && len(ms) == 0 && queuesEmpty(drain, c, []string{q}) {
						return
					}
					if main.Err() == nil {
						sleepCtx(main, pace)
					}
				}
			})
		}
	}
	wg.Wait()
}

// ---- (e) timing ----

// Timing workload settings: every resendEvery-th value is sent again
// resendAfter after its first send was acknowledged, well inside the
// queue's dedup window; every message's first lease (timingVisibility)
// is left to run out.
const (
	timingVisibility = 5 * time.Second
	resendAfter      = time.Second
	resendEvery      = 3
)

// timing exercises what depends on cluster time, so that a clock that
// moves it shows in the history: a producer re-sends some acknowledged
// values inside their dedup window (each must be answered as a duplicate
// of the first message), and a consumer never acks a message's first
// delivery, so every message is delivered again once its lease ends (no
// earlier, by the harness's clock). The checker's lease and dedup-window
// rules read it; the other workloads are checked by them too.
type timing struct{ queue string }

func (tw *timing) Name() string     { return "timing" }
func (tw *timing) Queues() []string { return []string{tw.queue} }
func (tw *timing) Specs() []QueueSpec {
	return []QueueSpec{{Workload: tw.Name(), Mode: AtLeastOnce, Source: tw.queue, Sink: tw.queue}}
}

func (tw *timing) Run(main, drain context.Context, w *World, c *client.Client) {
	name := tw.Name() + "-p0"
	prodDone := startProducers(1, func(int) {
		type resend struct {
			op  Op
			due time.Time
		}
		var pending []resend
		for seq := 1; main.Err() == nil; seq++ {
			v := fmt.Sprintf("%s-%d", name, seq)
			op := Op{Worker: name, Workload: tw.Name(), Kind: KindSend, Queue: tw.queue, Value: v, Producer: name, Seq: seq, DedupID: v}
			if w.do(op, sendOne(c)).Status == StatusOK && seq%resendEvery == 0 {
				pending = append(pending, resend{op, time.Now().Add(resendAfter)})
			}
			for len(pending) > 0 && !time.Now().Before(pending[0].due) && main.Err() == nil {
				w.do(pending[0].op, sendOne(c))
				pending = pending[1:]
			}
			sleepCtx(main, 40*time.Millisecond)
		}
	})
	cname := tw.Name() + "-c0"
	consumeLoop(prodDone, drain, c, tw.Queues(), func() int {
		var ms []client.Message
		w.do(Op{Worker: cname, Workload: tw.Name(), Kind: KindReceive, Queue: tw.queue, Visibility: int64(timingVisibility)},
			receiveInto(c, &ms, 5, client.WithWait(500*time.Millisecond), client.WithVisibility(timingVisibility)))
		var again []client.Message
		for _, m := range ms {
			if m.Receipt.Attempt > 1 {
				again = append(again, m)
			}
		}
		if len(again) > 0 {
			w.do(Op{Worker: cname, Workload: tw.Name(), Kind: KindAck, Queue: tw.queue, MessageID: again[0].Receipt.MessageID}, ackAll(c, again))
		}
		return len(ms)
	})
	<-prodDone
}

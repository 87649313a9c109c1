package transport

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// recorder is a Backend that records what the service proposes and
// answers with a fixed result.
type recorder struct {
	cmds   []*fsmpb.Command
	result *fsmpb.Result
	peeks  int // reads that reached the backend
}

func (r *recorder) Propose(_ context.Context, cmd *fsmpb.Command) (*fsmpb.Result, error) {
	r.cmds = append(r.cmds, cmd)
	if r.result != nil {
		return r.result, nil
	}
	return &fsmpb.Result{}, nil
}
func (r *recorder) Submit(ctx context.Context, cmd *fsmpb.Command) (func(context.Context) (*fsmpb.Result, error), error) {
	res, err := r.Propose(ctx, cmd)
	return func(context.Context) (*fsmpb.Result, error) { return res, err }, nil
}
func (r *recorder) Queue(context.Context, string) (*fsmpb.QueueInfo, error) { return nil, nil }
func (r *recorder) Queues(context.Context) ([]*fsmpb.QueueInfo, error)      { return nil, nil }
func (r *recorder) WaitAvailable(ctx context.Context, _ string) error {
	<-ctx.Done()
	return ctx.Err()
}
func (r *recorder) Peek(context.Context, string, fsm.PeekOptions, bool) ([]*fsmpb.PeekedMessage, uint64, uint64, error) {
	r.peeks++
	return nil, 0, 0, nil
}
func (r *recorder) Lookup(context.Context, string, uint64, string, bool) (*fsmpb.MessageFate, uint64, error) {
	r.peeks++
	return &fsmpb.MessageFate{}, 0, nil
}
func (r *recorder) Available(string) int        { return 0 }
func (r *recorder) HasQueue(string) (bool, int) { return true, 1 }

func msgs(n, size int) []*fsmpb.Message {
	out := make([]*fsmpb.Message, n)
	for i := range out {
		out[i] = &fsmpb.Message{Body: make([]byte, size)}
	}
	return out
}

func TestRejectsBadRequestsNamingFieldAndLimit(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		call func(*QueueService) error
		want []string // substrings of the error message
	}{
		{"empty queue name", func(q *QueueService) error {
			_, err := q.Enqueue(ctx, &quorumqpb.EnqueueRequest{Messages: msgs(1, 1)})
			return err
		}, []string{"queue", "empty"}},
		{"bad character", func(q *QueueService) error {
			_, err := q.Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "a/b", Messages: msgs(1, 1)})
			return err
		}, []string{"queue", `'/'`}},
		{"name too long", func(q *QueueService) error {
			_, err := q.CreateQueue(ctx, &quorumqpb.CreateQueueRequest{Name: strings.Repeat("x", 129)})
			return err
		}, []string{"name", "129", "128"}},
		{"no messages", func(q *QueueService) error {
			_, err := q.Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "q"})
			return err
		}, []string{"messages", "1..1000"}},
		{"message too big", func(q *QueueService) error {
			_, err := q.Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "q", Messages: msgs(1, 1<<20+1)})
			return err
		}, []string{"messages[0]", "1048577", "1048576"}},
		{"too many messages", func(q *QueueService) error {
			_, err := q.Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "q", Messages: msgs(1001, 1)})
			return err
		}, []string{"messages", "1001", "1000"}},
		{"batch too big", func(q *QueueService) error {
			_, err := q.Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "q", Messages: msgs(9, 1<<20)})
			return err
		}, []string{"messages", "8388608"}},
		{"negative delay", func(q *QueueService) error {
			m := msgs(1, 1)
			m[0].DelayNs = -1
			_, err := q.Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "q", Messages: m})
			return err
		}, []string{"messages[0].delay_ns", "negative"}},
		{"dedup ID too long", func(q *QueueService) error {
			m := msgs(1, 1)
			m[0].DedupId = strings.Repeat("d", 129)
			_, err := q.Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "q", Messages: m})
			return err
		}, []string{"messages[0].dedup_id", "128"}},
		{"wait too long", func(q *QueueService) error {
			_, err := q.Receive(ctx, &quorumqpb.ReceiveRequest{Queue: "q", WaitNs: int64(21 * time.Second)})
			return err
		}, []string{"wait_ns", "20s"}},
		{"receive max too big", func(q *QueueService) error {
			_, err := q.Receive(ctx, &quorumqpb.ReceiveRequest{Queue: "q", Max: 1001})
			return err
		}, []string{"max", "1001", "1000"}},
		{"no receipts", func(q *QueueService) error {
			_, err := q.Ack(ctx, &quorumqpb.AckRequest{Queue: "q"})
			return err
		}, []string{"receipts", "1..1000"}},
		{"zero attempt", func(q *QueueService) error {
			_, err := q.Ack(ctx, &quorumqpb.AckRequest{Queue: "q", Receipts: []*fsmpb.Receipt{{MessageId: 1}}})
			return err
		}, []string{"receipts[0].attempt"}},
		{"visibility too long", func(q *QueueService) error {
			_, err := q.Extend(ctx, &quorumqpb.ExtendRequest{Queue: "q", Receipts: []*fsmpb.Receipt{{MessageId: 1, Attempt: 1}}, VisibilityNs: int64(13 * time.Hour)})
			return err
		}, []string{"visibility_ns", "12h"}},
		{"own dead-letter queue", func(q *QueueService) error {
			dlq := "q"
			_, err := q.CreateQueue(ctx, &quorumqpb.CreateQueueRequest{Name: "q", Settings: &fsmpb.QueueSettings{DeadLetterQueue: &dlq}})
			return err
		}, []string{"settings.dead_letter_queue"}},
		{"empty transaction", func(q *QueueService) error {
			_, err := q.Transaction(ctx, &quorumqpb.TransactionRequest{})
			return err
		}, []string{"empty"}},
		{"bad queue inside a transaction", func(q *QueueService) error {
			_, err := q.Transaction(ctx, &quorumqpb.TransactionRequest{Enqueues: []*quorumqpb.EnqueueRequest{{Queue: "ok", Messages: msgs(1, 1)}, {Queue: "", Messages: msgs(1, 1)}}})
			return err
		}, []string{"enqueues[1].queue"}},
		{"peek of 101", func(q *QueueService) error {
			_, err := q.Peek(ctx, &quorumqpb.PeekRequest{Queue: "q", Max: 101})
			return err
		}, []string{"max: 101, limit is 1 to 100"}},
		{"peek of 0", func(q *QueueService) error {
			_, err := q.Peek(ctx, &quorumqpb.PeekRequest{Queue: "q"})
			return err
		}, []string{"max: 0, limit is 1 to 100"}},
		{"peek of an unknown state", func(q *QueueService) error {
			_, err := q.Peek(ctx, &quorumqpb.PeekRequest{Queue: "q", Max: 1, State: 9})
			return err
		}, []string{"state: 9"}},
		{"lookup without an id or dedup ID", func(q *QueueService) error {
			_, err := q.Lookup(ctx, &quorumqpb.LookupRequest{Queue: "q"})
			return err
		}, []string{"give an id or a dedup ID"}},
		{"lookup by id and dedup ID", func(q *QueueService) error {
			_, err := q.Lookup(ctx, &quorumqpb.LookupRequest{Queue: "q", Id: 1, DedupId: "x"})
			return err
		}, []string{"not both"}},
		{"lookup of a bad queue", func(q *QueueService) error {
			_, err := q.Lookup(ctx, &quorumqpb.LookupRequest{Queue: "a b", Id: 1})
			return err
		}, []string{"queue"}},
		{"consumer name too long", func(q *QueueService) error {
			_, err := q.Receive(ctx, &quorumqpb.ReceiveRequest{Queue: "q", Consumer: strings.Repeat("c", 129)})
			return err
		}, []string{"consumer is 129 bytes, limit is 128"}},
		{"consumer name with a newline", func(q *QueueService) error {
			_, err := q.Receive(ctx, &quorumqpb.ReceiveRequest{Queue: "q", Consumer: "a\nb"})
			return err
		}, []string{"consumer has control byte"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			err := tc.call(NewQueueService(rec, wire.Limits{}, true))
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if code, ok := wire.QueueErrorCode(err); !ok || code != fsmpb.ErrorCode_INVALID_ARGUMENT {
				t.Errorf("error lacks the INVALID_ARGUMENT QueueError detail")
			}
			if len(rec.cmds) != 0 || rec.peeks != 0 {
				t.Errorf("an invalid request reached Raft (%v) or the state (%d peeks)", rec.cmds, rec.peeks)
			}
		})
	}
}

func TestEnqueueCommandAndResultMapping(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{result: &fsmpb.Result{Enqueued: []*fsmpb.EnqueueResult{{MessageId: 7}}}}
	q := NewQueueService(rec, wire.Limits{}, true)
	resp, err := q.Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "q", Messages: msgs(1, 3)})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetResults()[0].GetMessageId() != 7 {
		t.Fatalf("results %v", resp.GetResults())
	}
	enq := rec.cmds[0].GetEnqueue()
	if enq.GetQueue() != "q" || !enq.GetCreateQueue() || len(enq.GetMessages()) != 1 {
		t.Fatalf("proposed %v, want an enqueue to q with create_queue", rec.cmds[0])
	}

	// Without auto-create the command does not create the queue.
	rec = &recorder{}
	if _, err := NewQueueService(rec, wire.Limits{}, false).Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "q", Messages: msgs(1, 1)}); err != nil {
		t.Fatal(err)
	}
	if rec.cmds[0].GetEnqueue().GetCreateQueue() {
		t.Fatal("create_queue set with auto-create off")
	}

	// An FSM error becomes its gRPC code with the QueueError detail.
	rec = &recorder{result: &fsmpb.Result{Error: &fsmpb.Error{Code: fsmpb.ErrorCode_QUEUE_FULL, Message: "queue q is full (max_depth 10)"}}}
	_, err = NewQueueService(rec, wire.Limits{}, true).Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "q", Messages: msgs(1, 1)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("queue full: %v, want ResourceExhausted", err)
	}
	if code, _ := wire.QueueErrorCode(err); code != fsmpb.ErrorCode_QUEUE_FULL {
		t.Fatalf("queue full: detail code %v", code)
	}
}

func TestReceiveLongPollDeadlineIsEmptyNotError(t *testing.T) {
	rec := &recorder{}
	q := NewQueueService(rec, wire.Limits{}, true)
	start := time.Now()
	resp, err := q.Receive(context.Background(), &quorumqpb.ReceiveRequest{Queue: "q", WaitNs: int64(200 * time.Millisecond)})
	if err != nil {
		t.Fatalf("long poll deadline: %v, want an empty response", err)
	}
	if len(resp.GetDeliveries()) != 0 || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("got %v after %v", resp, time.Since(start))
	}
	if len(rec.cmds) != 0 {
		t.Fatalf("an empty long poll proposed %d commands, want none", len(rec.cmds))
	}

	// Piggybacked acks are proposed at once, before the wait.
	rec = &recorder{result: &fsmpb.Result{Outcomes: []fsmpb.AckOutcome{fsmpb.AckOutcome_ACK_OK}}}
	resp, err = NewQueueService(rec, wire.Limits{}, true).Receive(context.Background(), &quorumqpb.ReceiveRequest{
		Queue: "q", WaitNs: int64(100 * time.Millisecond), Ack: []*fsmpb.Receipt{{MessageId: 1, Attempt: 1}},
	})
	if err != nil || len(resp.GetAckOutcomes()) != 1 || len(rec.cmds) != 1 || len(rec.cmds[0].GetReceive().GetAck()) != 1 {
		t.Fatalf("receive with acks: %v %v, proposed %v", resp, err, rec.cmds)
	}

	// A caller that goes away gets its context error, not an empty answer.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = NewQueueService(&recorder{}, wire.Limits{}, true).Receive(ctx, &quorumqpb.ReceiveRequest{Queue: "q", WaitNs: int64(time.Second)})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("caller deadline inside the long poll: %v, want DeadlineExceeded", err)
	}
}

// racer is a Backend whose queue always looks available but whose
// receives always come back empty: other consumers win every race.
type racer struct{ recorder }

func (r *racer) WaitAvailable(context.Context, string) error { return nil }
func (r *racer) Available(string) int                        { return 1 }

func TestContendedLongPollBacksOff(t *testing.T) {
	r := &racer{}
	resp, err := NewQueueService(r, wire.Limits{}, true).Receive(context.Background(), &quorumqpb.ReceiveRequest{Queue: "q", WaitNs: int64(300 * time.Millisecond)})
	if err != nil || len(resp.GetDeliveries()) != 0 {
		t.Fatalf("got %v, %v; want an empty response at the deadline", resp, err)
	}
	// 5+10+20+40+80+200 ms of pauses fit in 300 ms: about 7 proposals.
	if n := len(r.cmds); n == 0 || n > 20 {
		t.Fatalf("%d receive proposals in a 300 ms contended poll, want a handful", n)
	}
}

// TestLongPollTokensAreDroppedWhenPollsEnd: the per-queue long-poll token
// lives only while a long poll holds or waits for it, so a server whose
// queues come and go does not keep one per queue it ever saw.
func TestLongPollTokensAreDroppedWhenPollsEnd(t *testing.T) {
	q := NewQueueService(&recorder{}, wire.Limits{}, true)
	const queues, polls = 20, 3
	var wg sync.WaitGroup
	for i := range queues {
		for range polls {
			wg.Go(func() {
				req := &quorumqpb.ReceiveRequest{Queue: fmt.Sprintf("q%d", i), WaitNs: int64(300 * time.Millisecond)}
				if _, err := q.Receive(context.Background(), req); err != nil {
					t.Errorf("long poll on q%d: %v", i, err)
				}
			})
		}
	}
	deadline := time.Now().Add(200 * time.Millisecond)
	for q.turnsHeld() < queues && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := q.turnsHeld(); n != queues {
		t.Fatalf("%d long-poll tokens while %d queues are polled, want one per queue", n, queues)
	}
	wg.Wait()
	if n := q.turnsHeld(); n != 0 {
		t.Fatalf("%d long-poll tokens left after every long poll ended, want 0", n)
	}
}

// claimer is a Backend with avail messages whose first proposal blocks
// until gate is closed.
type claimer struct {
	mu    sync.Mutex
	avail int
	cmds  int
	gate  chan struct{}
}

func (c *claimer) Propose(ctx context.Context, cmd *fsmpb.Command) (*fsmpb.Result, error) {
	c.mu.Lock()
	c.cmds++
	first := c.cmds == 1
	c.mu.Unlock()
	if first {
		<-c.gate
	}
	return &fsmpb.Result{}, nil
}
func (c *claimer) Submit(ctx context.Context, cmd *fsmpb.Command) (func(context.Context) (*fsmpb.Result, error), error) {
	return func(ctx context.Context) (*fsmpb.Result, error) { return c.Propose(ctx, cmd) }, nil
}
func (c *claimer) Queue(context.Context, string) (*fsmpb.QueueInfo, error) { return nil, nil }
func (c *claimer) Peek(context.Context, string, fsm.PeekOptions, bool) ([]*fsmpb.PeekedMessage, uint64, uint64, error) {
	return nil, 0, 0, nil
}
func (c *claimer) Lookup(context.Context, string, uint64, string, bool) (*fsmpb.MessageFate, uint64, error) {
	return nil, 0, nil
}
func (c *claimer) Queues(context.Context) ([]*fsmpb.QueueInfo, error) { return nil, nil }
func (c *claimer) HasQueue(string) (bool, int)                        { return true, 1 }
func (c *claimer) Available(string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.avail
}
func (c *claimer) WaitAvailable(ctx context.Context, q string) error {
	for c.Available(q) == 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}
func (c *claimer) proposals() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cmds
}

// TestReceiveLeavesClaimedMessagesToTheReceiveInFlight: while a receive
// that may take every available message is in flight, another consumer's
// long poll waits for it instead of proposing a receive that can only come
// back empty (one Raft entry wasted per race).
func TestReceiveLeavesClaimedMessagesToTheReceiveInFlight(t *testing.T) {
	c := &claimer{avail: 5, gate: make(chan struct{})}
	q := NewQueueService(c, wire.Limits{}, true)
	first := make(chan error, 1)
	go func() {
		_, err := q.Receive(context.Background(), &quorumqpb.ReceiveRequest{Queue: "q", Max: 10})
		first <- err
	}()
	for c.proposals() == 0 {
		time.Sleep(time.Millisecond)
	}
	second := make(chan error, 1)
	go func() {
		resp, err := q.Receive(context.Background(), &quorumqpb.ReceiveRequest{Queue: "q", Max: 10, WaitNs: int64(300 * time.Millisecond)})
		if err == nil && len(resp.GetDeliveries()) != 0 {
			err = fmt.Errorf("got %d deliveries from a fake that delivers none", len(resp.GetDeliveries()))
		}
		second <- err
	}()
	time.Sleep(100 * time.Millisecond)
	if n := c.proposals(); n != 1 {
		t.Fatalf("%d receives proposed while the first, claiming all 5 available messages, was in flight; want 1", n)
	}
	// The first receive takes the messages and returns.
	c.mu.Lock()
	c.avail = 0
	c.mu.Unlock()
	close(c.gate)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	if n := c.proposals(); n != 1 {
		t.Fatalf("the second long poll proposed although nothing was left: %d proposals, want 1", n)
	}
	if n := q.turnsHeld(); n != 0 {
		t.Fatalf("%d long-poll entries left after both receives ended", n)
	}
}

// A receipt's queue is checked at the gateway; the state machine does not
// read it, so the commands written to the Raft log do not carry it (a
// batch of 100 acks would otherwise repeat the queue name 100 times).
func TestReceiptQueueIsCheckedNotLogged(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{result: &fsmpb.Result{Outcomes: []fsmpb.AckOutcome{fsmpb.AckOutcome_ACK_OK}}}
	q := NewQueueService(rec, wire.Limits{}, true)
	bound := func() []*fsmpb.Receipt { return []*fsmpb.Receipt{{MessageId: 1, Attempt: 1, Queue: "jobs"}} }
	calls := map[string]func() error{
		"ack": func() error {
			_, err := q.Ack(ctx, &quorumqpb.AckRequest{Queue: "jobs", Receipts: bound()})
			return err
		},
		"nack": func() error {
			_, err := q.Nack(ctx, &quorumqpb.NackRequest{Queue: "jobs", Receipts: bound()})
			return err
		},
		"extend": func() error {
			_, err := q.Extend(ctx, &quorumqpb.ExtendRequest{Queue: "jobs", Receipts: bound(), VisibilityNs: int64(time.Minute)})
			return err
		},
		"receive.ack": func() error {
			_, err := q.Receive(ctx, &quorumqpb.ReceiveRequest{Queue: "jobs", Max: 1, Ack: bound()})
			return err
		},
		"transaction": func() error {
			_, err := q.Transaction(ctx, &quorumqpb.TransactionRequest{Acks: []*quorumqpb.AckRequest{{Queue: "jobs", Receipts: bound()}}})
			return err
		},
	}
	for name, call := range calls {
		rec.cmds = nil
		if err := call(); err != nil {
			t.Fatalf("%s with a receipt of its own queue: %v", name, err)
		}
		if len(rec.cmds) != 1 {
			t.Fatalf("%s proposed %d commands, want 1", name, len(rec.cmds))
		}
		cmd := rec.cmds[0]
		var logged []*fsmpb.Receipt
		logged = append(logged, cmd.GetAck().GetReceipts()...)
		logged = append(logged, cmd.GetNack().GetReceipts()...)
		logged = append(logged, cmd.GetExtend().GetReceipts()...)
		logged = append(logged, cmd.GetReceive().GetAck()...)
		for _, a := range cmd.GetTransaction().GetAcks() {
			logged = append(logged, a.GetReceipts()...)
		}
		if len(logged) != 1 || logged[0].GetMessageId() != 1 || logged[0].GetQueue() != "" {
			t.Errorf("%s proposed receipts %v, want message 1 without its queue", name, logged)
		}
	}
}

package client

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

func TestBackoffStaysWithinJitteredBounds(t *testing.T) {
	b := backoff{min: 10 * time.Millisecond, max: 200 * time.Millisecond}
	want := []time.Duration{10, 20, 40, 80, 160, 200, 200, 200}
	for i, w := range want {
		w *= time.Millisecond
		d := b.next()
		if d < w/2 || d > w {
			t.Fatalf("delay %d = %v, want within [%v, %v]", i, d, w/2, w)
		}
	}
	// Far past the cap the shift must not overflow into a tiny or negative delay.
	b.n = 100
	if d := b.next(); d < 100*time.Millisecond || d > 200*time.Millisecond {
		t.Fatalf("delay after 100 attempts = %v, want within [100ms, 200ms]", d)
	}
}

func TestBackoffIsJittered(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 50 {
		b := backoff{min: time.Second, max: time.Second}
		seen[b.next()] = true
	}
	if len(seen) < 10 {
		t.Fatalf("50 first delays took only %d distinct values; clients would retry in lock-step", len(seen))
	}
}

func TestServerErrorsMatchTypedErrors(t *testing.T) {
	cases := []struct {
		code fsmpb.ErrorCode
		want error
	}{
		{fsmpb.ErrorCode_QUEUE_NOT_FOUND, ErrQueueNotFound},
		{fsmpb.ErrorCode_QUEUE_EXISTS, ErrQueueExists},
		{fsmpb.ErrorCode_QUEUE_FULL, ErrQueueFull},
		{fsmpb.ErrorCode_LEASE_LOST, ErrLeaseLost},
		{fsmpb.ErrorCode_INVALID_ARGUMENT, ErrInvalidArgument},
		{fsmpb.ErrorCode_MALFORMED, ErrInvalidArgument},
		{fsmpb.ErrorCode_UNKNOWN_MESSAGE, ErrUnknownMessage},
		{fsmpb.ErrorCode_OUT_OF_ORDER, ErrOutOfOrder},
		{fsmpb.ErrorCode_WRONG_QUEUE, ErrWrongQueue},
	}
	for _, c := range cases {
		err := fromStatus("Send", wire.QueueError(c.code, "queue \"jobs\": detail"))
		if !errors.Is(err, c.want) {
			t.Errorf("%v: got %v, want errors.Is %v", c.code, err, c.want)
		}
		if !strings.Contains(err.Error(), `queue "jobs": detail`) || !strings.HasPrefix(err.Error(), "Send: ") {
			t.Errorf("%v: error %q lost the op or the server's message", c.code, err)
		}
	}
}

// A receipt used on another queue fails in the client, before any call.
func TestReceiptOfAnotherQueueFailsLocally(t *testing.T) {
	c := &Client{}
	err := c.Ack(context.Background(), "b", Receipt{MessageID: 1, Attempt: 1, Queue: "a"})
	if !errors.Is(err, ErrWrongQueue) || !strings.Contains(err.Error(), `Ack receipts[0]: receipt of queue "a" used on queue "b"`) {
		t.Fatalf("ack on b with a receipt of a: %v, want ErrWrongQueue naming both queues", err)
	}
}

func TestAckErrorListsFailedReceipts(t *testing.T) {
	rs := []Receipt{{MessageID: 1, Attempt: 1}, {MessageID: 2, Attempt: 3}, {MessageID: 3, Attempt: 1}}
	err := ackError("Ack", "jobs", rs, []fsmpb.AckOutcome{
		fsmpb.AckOutcome_ACK_OK, fsmpb.AckOutcome_ACK_LEASE_LOST, fsmpb.AckOutcome_ACK_UNKNOWN_MESSAGE,
	}, nil)
	var ae *AckError
	if !errors.As(err, &ae) {
		t.Fatalf("got %v, want *AckError", err)
	}
	if len(ae.Failed) != 2 || ae.Failed[0].Receipt != rs[1] || ae.Failed[1].Receipt != rs[2] {
		t.Fatalf("failed receipts = %+v, want 2/3 and 3/1", ae.Failed)
	}
	if !errors.Is(err, ErrLeaseLost) || !errors.Is(err, ErrUnknownMessage) || errors.Is(err, ErrQueueFull) {
		t.Fatalf("errors.Is on %v does not match exactly lease lost and unknown message", err)
	}
	if err := ackError("Ack", "jobs", rs[:1], []fsmpb.AckOutcome{fsmpb.AckOutcome_ACK_OK}, nil); err != nil {
		t.Fatalf("all OK gave %v, want nil", err)
	}
	if err := ackError("Ack", "jobs", rs, []fsmpb.AckOutcome{fsmpb.AckOutcome_ACK_OK}, nil); err == nil {
		t.Fatal("3 receipts with 1 outcome gave nil; a short reply must not pass as success")
	}
}

func TestBadArgumentsNameTheField(t *testing.T) {
	ctx := context.Background()
	c := &Client{} // validation runs before any network use
	g := &Client{}
	g.sender = newSendGatherer(g) // Send through the gatherer
	long := strings.Repeat("q", 129)
	cases := []struct {
		name   string
		err    error
		substr string
	}{
		{"empty queue", func() error { _, err := c.Send(ctx, "", []byte("x")); return err }(), "Send queue"},
		{"long queue", func() error { _, err := c.Send(ctx, long, []byte("x")); return err }(), "has length 129, limit is 1 to 128"},
		{"bad char", func() error { _, err := c.Receive(ctx, "a/b", 1); return err }(), `'/'`},
		{"negative delay", func() error { _, err := c.Send(ctx, "q", nil, WithDelay(-time.Second)); return err }(), "msgs[0].Delay"},
		{"gathered empty queue", func() error { _, err := g.Send(ctx, "", []byte("x")); return err }(), "Send queue"},
		{"gathered negative delay", func() error { _, err := g.Send(ctx, "q", nil, WithDelay(-time.Second)); return err }(), "Send msg.Delay"},
		{"gathered empty attribute", func() error {
			_, err := g.Send(ctx, "q", nil, WithAttributes(map[string]string{"": "v"}))
			return err
		}(), "Send msg.attributes[0].key is 0 bytes, limit is 1 to 256"},
		{"13 h delay", func() error { _, err := c.Send(ctx, "q", nil, WithDelay(13*time.Hour)); return err }(), "msgs[0].Delay: must be 0..12h0m0s, got 13h0m0s"},
		{"gathered 13 h delay", func() error { _, err := g.Send(ctx, "q", nil, WithDelay(13*time.Hour)); return err }(), "Send msg.Delay: must be 0..12h0m0s"},
		{"13 h nack delay", c.Nack(ctx, "q", 13*time.Hour, Receipt{MessageID: 1, Attempt: 1}), "Nack delay: must be 0..12h0m0s"},
		{"13 h extend", c.Extend(ctx, "q", 13*time.Hour, Receipt{MessageID: 1, Attempt: 1}), "Extend visibility: must be 0..12h0m0s"},
		{"13 h receive visibility", func() error { _, err := c.Receive(ctx, "q", 1, WithVisibility(13*time.Hour)); return err }(), "Receive WithVisibility: must be 0..12h0m0s"},
		{"257-byte attribute key", func() error {
			_, err := c.Send(ctx, "q", nil, WithAttributes(map[string]string{strings.Repeat("k", 257): "v"}))
			return err
		}(), "attributes[0].key is 257 bytes, limit is 1 to 256"},
		{"max 0", func() error { _, err := c.Receive(ctx, "q", 0); return err }(), "Receive max"},
		{"wait", func() error { _, err := c.Receive(ctx, "q", 1, WithWait(21*time.Second)); return err }(), "0..20s"},
		{"no receipts", c.Ack(ctx, "q"), "Ack receipts"},
		{"attempt 0", c.Extend(ctx, "q", time.Second, Receipt{MessageID: 1}), "Extend receipts[0].Attempt"},
		{"empty batch", func() error { _, err := c.SendBatch(ctx, "q", nil); return err }(), "SendBatch msgs"},
		{"empty tx", func() error { _, err := c.Transact(ctx, Transaction{}); return err }(), "Transact tx"},
		{"tx queue", func() error {
			_, err := c.Transact(ctx, Transaction{Enqueues: []TxEnqueue{{Queue: "ok"}, {Queue: ""}}})
			return err
		}(), "Enqueues[1].Queue"},
		{"retention", func() error { _, err := c.CreateQueue(ctx, "q", QueueSettings{Retention: -2}); return err }(), "Retention"},
		{"dlq", func() error { _, err := c.CreateQueue(ctx, "q", QueueSettings{DeadLetterQueue: "a b"}); return err }(), "DeadLetterQueue"},
		{"peek of 101", func() error { _, err := c.Peek(ctx, "q", PeekOptions{Max: 101}); return err }(), "max: 101, limit is 1 to 100"},
		{"peek state", func() error { _, err := c.Peek(ctx, "q", PeekOptions{State: "gone"}); return err }(), `Peek state: "gone"`},
		{"peek queue", func() error { _, err := c.Peek(ctx, "", PeekOptions{}); return err }(), "Peek queue"},
		{"lookup of nothing", func() error { _, err := c.Lookup(ctx, "q", LookupOptions{}); return err }(), "give an id or a dedup ID"},
		{"lookup of both", func() error { _, err := c.Lookup(ctx, "q", LookupOptions{ID: 1, DedupID: "d"}); return err }(), "not both"},
		{"lookup queue", func() error { _, err := c.Lookup(ctx, "", LookupOptions{ID: 1}); return err }(), "Lookup queue"},
		{"129-byte consumer", func() error {
			_, err := c.Receive(ctx, "q", 1, WithConsumer(strings.Repeat("c", 129)))
			return err
		}(), "Receive WithConsumer: consumer is 129 bytes, limit is 128"},
		{"negative redrive rate", func() error { _, err := c.Redrive(ctx, "q", "", 0, WithRedriveRate(-1)); return err }(), "WithRedriveRate"},
		{"NaN redrive rate", func() error { _, err := c.Redrive(ctx, "q", "", 0, WithRedriveRate(math.NaN())); return err }(), "WithRedriveRate"},
		{"129-byte group", func() error { _, err := c.Send(ctx, "q", nil, WithGroup(strings.Repeat("g", 129))); return err }(), "Send msgs[0].group is 129 bytes, limit is 128"},
		{"gathered 129-byte group", func() error { _, err := g.Send(ctx, "q", nil, WithGroup(strings.Repeat("g", 129))); return err }(), "Send msg.group is 129 bytes, limit is 128"},
		{"129 bytes of 2-byte characters", func() error {
			_, err := c.Send(ctx, "q", nil, WithGroup(strings.Repeat("é", 64)+"x"))
			return err
		}(), "group is 129 bytes, limit is 128"},
		{"group with a control byte", func() error {
			_, err := c.SendBatch(ctx, "q", []OutMessage{{Body: []byte("x")}, {Group: "a\nb"}})
			return err
		}(), `SendBatch msgs[1].group has control byte '\n' at 1`},
		{"group not UTF-8", func() error {
			_, err := c.Transact(ctx, Transaction{Enqueues: []TxEnqueue{{Queue: "q", Message: OutMessage{Group: "\xff"}}}})
			return err
		}(), "Transact Enqueues[0].Message.group is not valid UTF-8"},
		{"producer 129-byte group", func() error {
			_, err := c.NewProducer().SendAsync(ctx, "q", OutMessage{Group: strings.Repeat("g", 129)}).Wait(ctx)
			return err
		}(), "SendAsync msg.group is 129 bytes, limit is 128"},
		{"concurrency", c.Consume(ctx, "q", nil, WithConcurrency(0)), "WithConcurrency"},
		{"nack backoff", c.Consume(ctx, "q", nil, WithNackBackoff(time.Second, time.Millisecond)), "WithNackBackoff"},
	}
	for _, tc := range cases {
		if !errors.Is(tc.err, ErrInvalidArgument) || !strings.Contains(tc.err.Error(), tc.substr) {
			t.Errorf("%s: got %v, want ErrInvalidArgument naming %q", tc.name, tc.err, tc.substr)
		}
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		addrs  []string
		opts   []Option
		substr string
	}{
		{nil, nil, "addrs"},
		{[]string{"a:1", ""}, nil, "addrs[1]"},
		{[]string{"a:1"}, []Option{WithToken("secret")}, "WithToken"},
		{[]string{"a:1"}, []Option{WithBackoff(time.Second, time.Millisecond)}, "WithBackoff"},
		{[]string{"a:1"}, []Option{WithConsumerName("tab\there")}, "WithConsumerName: consumer has control byte"},
	} {
		_, err := New(ctx, tc.addrs, tc.opts...)
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.substr) {
			t.Errorf("New(%v): got %v, want ErrInvalidArgument naming %q", tc.addrs, err, tc.substr)
		}
	}
}

func TestNewGivesUpWhenNoNodeAnswers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	// Port 1 on loopback refuses connections.
	_, err := New(ctx, []string{"127.0.0.1:1"}, WithBackoff(10*time.Millisecond, 50*time.Millisecond))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("got %v, want a deadline error naming the address", err)
	}
}

func TestDedupIDsAreFixedBeforeTheFirstAttempt(t *testing.T) {
	req, generated, err := enqueueRequest("SendBatch", "q", []OutMessage{
		{Body: []byte("a")},
		{Body: []byte("b"), DedupID: "mine", Attributes: map[string]string{"z": "1", "a": "2"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := req.Messages[0].GetDedupId()
	if len(id) != 26 {
		t.Fatalf("generated dedup ID %q, want a 26-character ULID", id)
	}
	if !generated[0] || generated[1] {
		t.Fatalf("generated = %v, want [true false]", generated)
	}
	if req.Messages[1].GetDedupId() != "mine" {
		t.Fatalf("caller's dedup ID replaced by %q", req.Messages[1].GetDedupId())
	}
	if a := req.Messages[1].GetAttributes(); a[0].GetKey() != "a" || a[1].GetKey() != "z" {
		t.Fatalf("attributes not sorted by key: %v", a)
	}
	seen := map[string]bool{}
	for range 10000 {
		id := NewDedupID()
		if seen[id] {
			t.Fatalf("NewDedupID repeated %q", id)
		}
		seen[id] = true
	}
}

// A message's group goes on the wire as given, up to the limit's
// boundary, on every path that builds a message: Send and SendBatch,
// the Producer and Transact all convert through enqueueRequest or
// messagePB.
func TestGroupIsCarriedOnTheWire(t *testing.T) {
	atLimit := strings.Repeat("é", 64) // 128 bytes, 64 characters
	req, _, err := enqueueRequest("SendBatch", "q", []OutMessage{
		{Body: []byte("a"), Group: "orders-42"},
		{Body: []byte("b")},
		{Body: []byte("c"), Group: atLimit},
	})
	if err != nil {
		t.Fatalf("a 128-byte group: %v; want it accepted", err)
	}
	for i, want := range []string{"orders-42", "", atLimit} {
		if got := req.Messages[i].GetGroup(); got != want {
			t.Errorf("message %d carries group %q, want %q", i, got, want)
		}
	}
	var m OutMessage
	WithGroup("k")(&m)
	if m.Group != "k" {
		t.Fatalf("WithGroup(\"k\") set Group %q", m.Group)
	}
}

func TestPipelineDedupIDIsPerMessageAndOutput(t *testing.T) {
	at := time.Unix(1700000000, 5)
	m := &Message{Queue: "in", Receipt: Receipt{MessageID: 7, Attempt: 1}, EnqueuedAt: at}
	again := &Message{Queue: "in", Receipt: Receipt{MessageID: 7, Attempt: 4}, EnqueuedAt: at}
	if PipelineDedupID(m, 0) != PipelineDedupID(again, 0) {
		t.Fatal("a redelivery (new attempt) got a different dedup ID; outputs would be enqueued twice")
	}
	ids := map[string]string{}
	for name, id := range map[string]string{
		"base":         PipelineDedupID(m, 0),
		"output 1":     PipelineDedupID(m, 1),
		"other id":     PipelineDedupID(&Message{Queue: "in", Receipt: Receipt{MessageID: 8}, EnqueuedAt: at}, 0),
		"other queue":  PipelineDedupID(&Message{Queue: "in2", Receipt: Receipt{MessageID: 7}, EnqueuedAt: at}, 0),
		"re-created q": PipelineDedupID(&Message{Queue: "in", Receipt: Receipt{MessageID: 7}, EnqueuedAt: at.Add(time.Nanosecond)}, 0),
	} {
		if other, dup := ids[id]; dup {
			t.Fatalf("%s and %s share dedup ID %s", name, other, id)
		}
		ids[id] = name
		if len(id) > 128 {
			t.Fatalf("%s: dedup ID is %d bytes, server limit is 128", name, len(id))
		}
	}
}

// A pipelined batch is chained behind a dedup ID that can only be in the
// queue once the batch before is: a generated one when there is one.
func TestPipelineChainsBehindAFreshDedupID(t *testing.T) {
	batch := func(ids []string, generated []bool) *piped {
		req := &quorumqpb.EnqueueRequest{Queue: "q"}
		for _, id := range ids {
			req.Messages = append(req.Messages, &fsmpb.Message{DedupId: id})
		}
		return &piped{req: req, generated: generated}
	}
	for _, c := range []struct {
		ids       []string
		generated []bool
		want      string
	}{
		{[]string{"a", "b", "c"}, []bool{true, true, true}, "c"},
		{[]string{"a", "mine", "c"}, []bool{true, false, false}, "a"},
		{[]string{"x", "y"}, []bool{false, false}, "y"},
	} {
		if got := batch(c.ids, c.generated).chainID(); got != c.want {
			t.Errorf("chainID of %v (generated %v) = %q, want %q", c.ids, c.generated, got, c.want)
		}
	}
}

// A queue's info reaches the caller in the client's own types, with a
// retention of 0 on the wire (keep forever) as NoRetentionLimit.
func TestQueueInfoIsTheClientsOwn(t *testing.T) {
	created := time.Unix(1700000000, 0)
	got := queueInfoOf(&fsmpb.QueueInfo{
		Name: "jobs", CreatedAtUnixNano: created.UnixNano(),
		Settings: &fsmpb.QueueSettings{
			VisibilityTimeoutNs: proto.Int64(int64(time.Minute)), MaxDeliveries: proto.Uint32(5), DeadLetterQueue: proto.String("dlq"),
			DedupWindowNs: proto.Int64(int64(time.Hour)), RetentionNs: proto.Int64(0), MaxDepth: proto.Uint64(9),
		},
		Stats: &fsmpb.QueueStats{Ready: 1, Leased: 2, Delayed: 3, AckedTotal: 4, PurgedTotal: 5, Waiting: 6, Groups: 7},
	})
	want := &QueueInfo{
		Name: "jobs", CreatedAt: created,
		Settings: QueueSettings{VisibilityTimeout: time.Minute, MaxDeliveries: 5, DeadLetterQueue: "dlq", DedupWindow: time.Hour, Retention: NoRetentionLimit, MaxDepth: 9},
		Stats:    QueueStats{Ready: 1, Leased: 2, Delayed: 3, AckedTotal: 4, PurgedTotal: 5, Waiting: 6, Groups: 7},
	}
	if !got.CreatedAt.Equal(want.CreatedAt) || got.Name != want.Name || got.Settings != want.Settings || got.Stats != want.Stats {
		t.Fatalf("queue info = %+v, want %+v", got, want)
	}
	if r := queueInfoOf(&fsmpb.QueueInfo{Settings: &fsmpb.QueueSettings{RetentionNs: proto.Int64(int64(time.Hour))}}).Settings.Retention; r != time.Hour {
		t.Fatalf("retention of 1 h = %v", r)
	}
}

// The default consumer name is host:pid and within the server's limit.
func TestDefaultConsumerName(t *testing.T) {
	name := DefaultConsumerName()
	if !strings.HasSuffix(name, fmt.Sprintf(":%d", os.Getpid())) || len(name) > 128 {
		t.Fatalf("DefaultConsumerName() = %q; want host:%d, at most 128 bytes", name, os.Getpid())
	}
}

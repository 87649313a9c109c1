package cluster

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// Oversize requests reach validation through gRPC (the server's receive
// limit leaves room for them) and are refused naming the limit.
func TestOversizeRequestsNameTheLimit(t *testing.T) {
	c := StartTestCluster(t, 3)
	li := c.Index(c.Leader(t))
	q := quorumqpb.NewQueueClient(c.Conn(t, li))
	big := &quorumqpb.EnqueueRequest{Queue: "q", Messages: []*fsmpb.Message{{Body: make([]byte, 1<<20+1)}}}
	many := &quorumqpb.EnqueueRequest{Queue: "q"}
	for range 1001 {
		many.Messages = append(many.Messages, &fsmpb.Message{Body: []byte("x")})
	}
	for _, tc := range []struct {
		name string
		req  *quorumqpb.EnqueueRequest
		want string
	}{
		{"1 MiB + 1 byte message", big, "messages[0]: body and attributes are 1048577 bytes, limit is 1048576 (max message size)"},
		{"1001-message batch", many, "messages: 1001 messages in the request, limit is 1000 per batch"},
	} {
		_, err := q.Enqueue(ctxT(t, 10*time.Second), tc.req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want InvalidArgument %q", tc.name, err, tc.want)
		}
	}
	if _, err := q.GetQueue(ctxT(t, 10*time.Second), &quorumqpb.GetQueueRequest{Name: "q"}); status.Code(err) != codes.NotFound {
		t.Errorf("queue after refused enqueues: %v, want NotFound (nothing auto-created)", err)
	}
}

func TestMemoryGuardRefusesEnqueues(t *testing.T) {
	var limit int64 = 1 << 40
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) {
		cfg.MemoryLimit = limit
		cfg.AdminAddr = "127.0.0.1:0"
	})
	leader := c.Leader(t)
	li := c.Index(leader)
	enqueue(t, c, li, "q", "a")

	// Lower the limit below what any heap holds.
	for _, n := range c.Live() {
		n.guard.limit.Store(1024)
	}
	q := quorumqpb.NewQueueClient(c.Conn(t, li))
	_, err := q.Enqueue(ctxT(t, 10*time.Second), &quorumqpb.EnqueueRequest{Queue: "q", Messages: []*fsmpb.Message{{Body: []byte("b")}}})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "limit is 1024 (--memory-limit)") {
		t.Fatalf("enqueue above the memory limit: %v, want ResourceExhausted naming the limit", err)
	}
	_, err = q.Transaction(ctxT(t, 10*time.Second), &quorumqpb.TransactionRequest{Enqueues: []*quorumqpb.EnqueueRequest{{Queue: "q", Messages: []*fsmpb.Message{{Body: []byte("c")}}}}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("transaction above the memory limit: %v, want ResourceExhausted", err)
	}
	st, err := q.EnqueueStream(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&quorumqpb.EnqueueRequest{Queue: "q", Messages: []*fsmpb.Message{{Body: []byte("d")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--memory-limit") {
		t.Fatalf("enqueue stream above the memory limit: %v, want ResourceExhausted", err)
	}
	// Consumers keep draining.
	rcv, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "q", AutoAck: true})
	if err != nil || len(rcv.GetDeliveries()) != 1 || string(rcv.GetDeliveries()[0].GetBody()) != "a" {
		t.Fatalf("receive above the memory limit: %v %v, want message a", err, rcv.GetDeliveries())
	}
	if got := scrape(t, leader.AdminAddr())["quorumq_memory_guard_rejects_total"]; got != 3 {
		t.Errorf("quorumq_memory_guard_rejects_total = %v, want 3", got)
	}
	info, err := q.GetQueue(ctxT(t, 10*time.Second), &quorumqpb.GetQueueRequest{Name: "q"})
	if err != nil {
		t.Fatal(err)
	}
	if got := info.GetQueue().GetStats().GetEnqueuedTotal(); got != 1 {
		t.Errorf("enqueued_total %d, want 1: a refused enqueue changed the queue", got)
	}
}

// TestInFlightLimitPerConnection: with MaxInFlightPerConn 2, a third call
// on a connection that has two long polls open waits until one of them
// ends; the same call on another connection does not wait.
func TestInFlightLimitPerConnection(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.MaxInFlightPerConn = 2 })
	li := c.Index(c.Leader(t))
	busy := quorumqpb.NewQueueClient(c.Conn(t, li))
	if _, err := busy.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "idle"}); err != nil {
		t.Fatal(err)
	}
	const poll = 2 * time.Second
	done := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := busy.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "idle", WaitNs: int64(poll)})
			done <- err
		}()
	}
	time.Sleep(300 * time.Millisecond) // both long polls are open

	start := time.Now()
	if _, err := quorumqpb.NewQueueClient(c.Conn(t, li)).GetQueue(ctxT(t, 10*time.Second), &quorumqpb.GetQueueRequest{Name: "idle"}); err != nil {
		t.Fatal(err)
	}
	if free := time.Since(start); free > poll/2 {
		t.Fatalf("a call on a fresh connection took %v; want it not to wait for the long polls", free)
	}
	start = time.Now()
	if _, err := busy.GetQueue(ctxT(t, 10*time.Second), &quorumqpb.GetQueueRequest{Name: "idle"}); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < poll/2 {
		t.Fatalf("the third call on a connection with 2 calls in flight ran after %v; want it to wait for a free slot (limit 2)", waited)
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("long poll: %v", err)
		}
	}
}

// BenchmarkHeapBytes is the memory guard's cost on every enqueue.
func BenchmarkHeapBytes(b *testing.B) {
	for b.Loop() {
		heapBytes()
	}
}

// An embedder of cluster gets the same limit checks as the server binary:
// a limit the state machine would refuse after a log entry, or one no
// request could ever meet, stops Start with the limit named.
func TestStartRefusesLimitsTheStateMachineWouldNot(t *testing.T) {
	for _, tc := range []struct {
		limits wire.Limits
		want   string
	}{
		{wire.Limits{MaxDelay: 24 * time.Hour}, "limits: max delay is 24h0m0s, the state machine allows at most 12h0m0s"},
		{wire.Limits{MaxVisibility: 13 * time.Hour}, "limits: max visibility is 13h0m0s, the state machine allows at most 12h0m0s"},
		{wire.Limits{MaxMessageBytes: 2 << 20}, "limits: max message size is 2097152, the state machine allows at most 1048576"},
		{wire.Limits{MaxBatchMessages: 1001}, "limits: max batch messages is 1001, the state machine allows at most 1000"},
		{wire.Limits{MaxMessageBytes: -1}, "limits: max message size is -1, want a positive value (or 0 for the default)"},
		{wire.Limits{MaxWait: -time.Second}, "limits: max wait is -1s, want a positive value (or 0 for the default)"},
		{wire.Limits{MaxQueues: -5}, "limits: max queues is -5, want a positive value (or 0 for the default)"},
		{wire.Limits{MaxMessageBytes: 1 << 20, MaxBatchBytes: 1 << 10}, "limits: max batch size 1024 is smaller than max message size 1048576: a single message could never be sent"},
	} {
		checkStartRefused(t, Config{NodeID: "n1", DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", BootstrapExpect: 1, Limits: tc.limits}, tc.want)
	}
}

package cluster

import (
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

func lastIndex(n *Node) uint64 {
	v, _ := strconv.ParseUint(n.raft.Stats()["last_log_index"], 10, 64)
	return v
}

func TestLongPollWakesOnEnqueue(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.TickInterval = time.Hour })
	leader := c.Leader(t)
	qc := quorumqpb.NewQueueClient(c.Conn(t, c.Index(leader)))
	if _, err := qc.CreateQueue(ctxT(t, 5*time.Second), &quorumqpb.CreateQueueRequest{Name: "jobs"}); err != nil {
		t.Fatal(err)
	}

	type result struct {
		resp *quorumqpb.ReceiveResponse
		err  error
		took time.Duration
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		resp, err := qc.Receive(ctxT(t, 30*time.Second), &quorumqpb.ReceiveRequest{Queue: "jobs", Max: 10, WaitNs: int64(15 * time.Second)})
		done <- result{resp, err, time.Since(start)}
	}()

	// While the poll waits, it writes nothing to the Raft log.
	time.Sleep(300 * time.Millisecond)
	before := lastIndex(leader)
	time.Sleep(700 * time.Millisecond)
	if after := lastIndex(leader); after != before {
		t.Fatalf("log grew from %d to %d during an empty long poll", before, after)
	}
	select {
	case r := <-done:
		t.Fatalf("long poll returned before any enqueue: %v %v", r.resp, r.err)
	default:
	}

	sent := time.Now()
	if _, err := qc.Enqueue(ctxT(t, 5*time.Second), &quorumqpb.EnqueueRequest{Queue: "jobs", Messages: []*fsmpb.Message{{Body: []byte("wake")}}}); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("receive: %v", r.err)
	}
	if len(r.resp.GetDeliveries()) != 1 || string(r.resp.GetDeliveries()[0].GetBody()) != "wake" {
		t.Fatalf("receive got %v, want the one message", r.resp.GetDeliveries())
	}
	wake := time.Since(sent)
	t.Logf("long poll answered %v after the enqueue was sent (wait was 15 s)", wake)
	if r.took >= 15*time.Second {
		t.Fatalf("long poll ran to its deadline (%v) instead of waking on the enqueue", r.took)
	}
}

func TestLongPollReturnsEmptyAtDeadline(t *testing.T) {
	c := StartTestCluster(t, 3)
	leader := c.Leader(t)
	qc := quorumqpb.NewQueueClient(c.Conn(t, c.Index(leader)))
	if _, err := qc.CreateQueue(ctxT(t, 5*time.Second), &quorumqpb.CreateQueueRequest{Name: "idle"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := qc.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "idle", WaitNs: int64(time.Second)})
	took := time.Since(start)
	if err != nil {
		t.Fatalf("empty long poll: %v, want an empty response", err)
	}
	if len(resp.GetDeliveries()) != 0 {
		t.Fatalf("got %d deliveries from an empty queue", len(resp.GetDeliveries()))
	}
	if took < time.Second {
		t.Fatalf("empty long poll returned after %v, before its 1 s wait", took)
	}

	// A poll on a missing queue fails at once instead of waiting.
	_, err = qc.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "missing", WaitNs: int64(5 * time.Second)})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("long poll on a missing queue: %v, want NotFound", err)
	}
}

// TestLongPollWakesOnePollerPerMessage: eight consumers long-poll an empty
// queue; one message arrives. Exactly one of them gets it, and the Raft log
// grows by the enqueue and one receive — not by one receive per waiting
// consumer (a thundering herd that also delays everyone by the backoff of
// the losers).
func TestLongPollWakesOnePollerPerMessage(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.TickInterval = time.Hour })
	leader := c.Leader(t)
	qc := quorumqpb.NewQueueClient(c.Conn(t, c.Index(leader)))
	if _, err := qc.CreateQueue(ctxT(t, 5*time.Second), &quorumqpb.CreateQueueRequest{Name: "herd"}); err != nil {
		t.Fatal(err)
	}
	const pollers = 8
	got := make(chan int, pollers)
	for i := 0; i < pollers; i++ {
		go func() {
			resp, err := qc.Receive(ctxT(t, 30*time.Second), &quorumqpb.ReceiveRequest{Queue: "herd", Max: 10, WaitNs: int64(3 * time.Second)})
			if err != nil {
				t.Errorf("receive: %v", err)
			}
			got <- len(resp.GetDeliveries())
		}()
	}
	time.Sleep(500 * time.Millisecond) // every poller is waiting
	before := lastIndex(leader)
	if _, err := qc.Enqueue(ctxT(t, 5*time.Second), &quorumqpb.EnqueueRequest{Queue: "herd", Messages: []*fsmpb.Message{{Body: []byte("one")}}}); err != nil {
		t.Fatal(err)
	}
	delivered := 0
	for i := 0; i < pollers; i++ {
		delivered += <-got
	}
	if delivered != 1 {
		t.Fatalf("%d deliveries of one message", delivered)
	}
	if grew := lastIndex(leader) - before; grew != 2 {
		t.Fatalf("the log grew by %d entries for one enqueue and %d waiting polls; want 2 (the enqueue, one receive)", grew, pollers)
	}
}

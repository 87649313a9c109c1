package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/cluster"
)

// A message nacked with a reason until it dead-letters arrives in the DLQ
// saying where it came from, why, after how many attempts, when it was
// first enqueued and what the consumer said last.
func TestDeadLetterCarriesItsOriginThroughTheCluster(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 60*time.Second)
	if _, err := c.CreateQueue(ctx, "orders-dlq", client.QueueSettings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateQueue(ctx, "orders", client.QueueSettings{MaxDeliveries: 2, DeadLetterQueue: "orders-dlq"}); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	res, err := c.Send(ctx, "orders", []byte("order 42"), client.WithDedupID("order-42"))
	if err != nil {
		t.Fatal(err)
	}
	for i, why := range []string{"payment service down", "card declined"} {
		msgs, err := c.Receive(ctx, "orders", 1)
		if err != nil || len(msgs) != 1 {
			t.Fatalf("delivery %d: %v %v", i+1, msgs, err)
		}
		if i == 1 && msgs[0].LastNackReason != "payment service down" {
			t.Fatalf("second delivery: LastNackReason %q, want the first nack's", msgs[0].LastNackReason)
		}
		if err := c.NackWithReason(ctx, "orders", 0, why, msgs[0].Receipt); err != nil {
			t.Fatal(err)
		}
	}
	if msgs, err := c.Receive(ctx, "orders", 1); err != nil || len(msgs) != 0 {
		t.Fatalf("third receive: %v %v; want nothing (max deliveries 2)", msgs, err)
	}
	msgs, err := c.Receive(ctx, "orders-dlq", 1)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("DLQ receive: %v %v", msgs, err)
	}
	dl := msgs[0].DeadLetter
	if dl == nil || dl.SourceQueue != "orders" || dl.SourceMessageID != res.MessageID || dl.Reason != client.DeadLetterMaxDeliveries ||
		dl.Attempts != 2 || dl.LastNackReason != "card declined" || dl.FirstEnqueuedAt.Before(sent.Add(-time.Minute)) || dl.FirstEnqueuedAt.After(time.Now().Add(time.Minute)) {
		t.Fatalf("dead letter %+v; want from orders id %d, max_deliveries, 2 attempts, card declined, enqueued about %v", dl, res.MessageID, sent)
	}
	if string(msgs[0].Body) != "order 42" || msgs[0].DedupID != "order-42" {
		t.Fatalf("dead letter message %+v", msgs[0])
	}

	// A consumer whose handler fails nacks with the error as the reason.
	if _, err := c.Send(ctx, "orders", []byte("order 43")); err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 2)
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(cctx, "orders", func(_ context.Context, m *client.Message) error {
			seen <- m.LastNackReason
			if m.Receipt.Attempt == 1 {
				return errors.New("inventory lookup failed")
			}
			return nil
		}, client.WithNackBackoff(10*time.Millisecond, 10*time.Millisecond), client.WithLease(5*time.Second))
	}()
	for i, want := range []string{"", "inventory lookup failed"} {
		select {
		case got := <-seen:
			if got != want {
				t.Fatalf("consumer delivery %d: LastNackReason %q, want %q", i+1, got, want)
			}
		case <-ctx.Done():
			t.Fatalf("consumer delivery %d never came", i+1)
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// A reason over the limit is refused before it is sent.
	err = c.NackWithReason(ctx, "orders-dlq", 0, strings.Repeat("x", 1025), msgs[0].Receipt)
	if !errors.Is(err, client.ErrInvalidArgument) || !strings.Contains(err.Error(), "1025 bytes, limit is 1024") {
		t.Fatalf("nack with a 1025-byte reason: %v; want invalid argument naming the limit", err)
	}
}

// Reject sends a message to the DLQ at once, fenced by its receipt: a
// retry with the same receipt succeeds, a stale receipt is LeaseLost.
func TestRejectDeadLettersNowThroughTheCluster(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 60*time.Second)
	if _, err := c.CreateQueue(ctx, "jobs-dlq", client.QueueSettings{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateQueue(ctx, "jobs", client.QueueSettings{DeadLetterQueue: "jobs-dlq"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send(ctx, "jobs", []byte("poison")); err != nil {
		t.Fatal(err)
	}
	first, err := c.Receive(ctx, "jobs", 1, client.WithVisibility(time.Second))
	if err != nil || len(first) != 1 {
		t.Fatalf("receive: %v %v", first, err)
	}
	time.Sleep(1100 * time.Millisecond)
	second, err := c.Receive(ctx, "jobs", 1)
	if err != nil || len(second) != 1 {
		t.Fatalf("receive after the lease ran out: %v %v", second, err)
	}
	if err := c.Reject(ctx, "jobs", "schema v1", first[0].Receipt); !errors.Is(err, client.ErrLeaseLost) {
		t.Fatalf("reject with the first, stale receipt: %v; want ErrLeaseLost", err)
	}
	for range 2 {
		if err := c.Reject(ctx, "jobs", "schema v1", second[0].Receipt); err != nil {
			t.Fatalf("reject: %v", err)
		}
	}
	if err := c.Ack(ctx, "jobs", second[0].Receipt); !errors.Is(err, client.ErrLeaseLost) {
		t.Fatalf("ack of a rejected message: %v; want ErrLeaseLost", err)
	}
	dl, err := c.Receive(ctx, "jobs-dlq", 10)
	if err != nil || len(dl) != 1 {
		t.Fatalf("DLQ receive: %v %v; want the one rejected message", dl, err)
	}
	if d := dl[0].DeadLetter; d == nil || d.Reason != client.DeadLetterRejected || d.RejectReason != "schema v1" || d.Attempts != 2 || d.SourceQueue != "jobs" {
		t.Fatalf("dead letter %+v; want rejected from jobs after 2 attempts with reason schema v1", d)
	}
	err = c.Reject(ctx, "jobs-dlq", strings.Repeat("x", 1025), dl[0].Receipt)
	if !errors.Is(err, client.ErrInvalidArgument) || !strings.Contains(err.Error(), "1025 bytes, limit is 1024") {
		t.Fatalf("reject with a 1025-byte reason: %v; want invalid argument naming the limit", err)
	}
}

// A queue may name only a dead-letter queue that exists, unless it asks
// for it to be created with it; a DLQ in use is deleted only with force,
// and then the dead letters of its users stay in them as dead.
func TestDeadLetterQueueMustExistThroughTheCluster(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 60*time.Second)
	_, err := c.CreateQueue(ctx, "orders", client.QueueSettings{DeadLetterQueue: "orders-dlx", MaxDeliveries: 1})
	if !errors.Is(err, client.ErrQueueNotFound) || !strings.Contains(err.Error(), `dead_letter_queue: queue "orders-dlx" does not exist`) {
		t.Fatalf("create naming a DLQ that does not exist: %v; want queue not found naming it", err)
	}
	if _, err := c.GetQueue(ctx, "orders"); !errors.Is(err, client.ErrQueueNotFound) {
		t.Fatalf("the refused create left queue orders: %v", err)
	}
	if _, err := c.CreateQueue(ctx, "orders", client.QueueSettings{DeadLetterQueue: "orders-dlq", MaxDeliveries: 1}, client.WithCreateDLQ()); err != nil {
		t.Fatalf("create with WithCreateDLQ: %v", err)
	}
	if _, err := c.GetQueue(ctx, "orders-dlq"); err != nil {
		t.Fatalf("WithCreateDLQ did not create orders-dlq: %v", err)
	}
	if _, err := c.UpdateQueue(ctx, "orders", client.QueueSettings{DeadLetterQueue: "nope"}); !errors.Is(err, client.ErrQueueNotFound) {
		t.Fatalf("update naming a DLQ that does not exist: %v; want queue not found", err)
	}
	err = c.DeleteQueue(ctx, "orders-dlq")
	if !errors.Is(err, client.ErrInvalidArgument) || !strings.Contains(err.Error(), `is the dead-letter queue of "orders"`) {
		t.Fatalf("delete of a DLQ in use: %v; want refused naming its user", err)
	}
	if err := c.DeleteQueue(ctx, "orders-dlq", client.WithForce()); err != nil {
		t.Fatalf("forced delete: %v", err)
	}
	if _, err := c.Send(ctx, "orders", []byte("poison")); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		msgs, err := c.Receive(ctx, "orders", 1, client.WithVisibility(10*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 1 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	info, err := c.GetQueue(ctx, "orders")
	if err != nil || info.Stats.Dead != 1 || info.Stats.Ready+info.Stats.Leased != 0 {
		t.Fatalf("orders after its DLQ was deleted: %+v %v; want the message kept dead", info, err)
	}
}

// Redrive puts dead letters back into their source queue (or a named
// one) in batches, all of them up to the limit given, and they are
// delivered again as fresh messages.
func TestRedriveThroughTheCluster(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 60*time.Second)
	if _, err := c.CreateQueue(ctx, "orders", client.QueueSettings{DeadLetterQueue: "orders-dlq"}, client.WithCreateDLQ()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateQueue(ctx, "retry", client.QueueSettings{}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := c.Send(ctx, "orders", []byte{byte('a' + i)}); err != nil {
			t.Fatal(err)
		}
	}
	msgs, err := c.Receive(ctx, "orders", 5)
	if err != nil || len(msgs) != 5 {
		t.Fatalf("receive: %v %v", msgs, err)
	}
	for _, m := range msgs {
		if err := c.Reject(ctx, "orders", "bug 7", m.Receipt); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := c.Redrive(ctx, "orders-dlq", "", 3, client.WithRedriveBatch(2)); err != nil || n != 3 {
		t.Fatalf("redrive max 3 in batches of 2: %d %v; want 3", n, err)
	}
	if n, err := c.Redrive(ctx, "orders-dlq", "retry", 0); err != nil || n != 2 {
		t.Fatalf("redrive of the rest to retry: %d %v; want 2", n, err)
	}
	back, err := c.Receive(ctx, "orders", 10)
	if err != nil || len(back) != 3 || string(back[0].Body) != "a" || string(back[2].Body) != "c" || back[0].DeadLetter != nil {
		t.Fatalf("orders after redrive: %v %v; want a, b, c as fresh messages", back, err)
	}
	if rest, err := c.Receive(ctx, "retry", 10); err != nil || len(rest) != 2 || string(rest[0].Body) != "d" {
		t.Fatalf("retry after redrive: %v %v; want d and e", rest, err)
	}
	info, err := c.GetQueue(ctx, "orders-dlq")
	if err != nil || info.Stats.RedrivenTotal != 5 || info.Stats.Ready != 0 {
		t.Fatalf("orders-dlq after redrive: %+v %v; want 5 redriven, empty", info, err)
	}
	if _, err := c.Redrive(ctx, "orders-dlq", "nope", 0); !errors.Is(err, client.ErrQueueNotFound) {
		t.Fatalf("redrive to a queue that does not exist: %v; want ErrQueueNotFound", err)
	}
}

package client_test

import (
	"testing"
	"time"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/cluster"
)

// Lookup follows one message through a real cluster by its dedup ID:
// ready, leased by the client's consumer name (host:pid by default, or the
// receive's own), dead-lettered by a reject to the DLQ as a new id, and
// back after a redrive; a dedup ID that was never sent is unknown, which
// is what a producer with an unknown outcome needs to know. Stats carry
// the oldest ready message's age.
func TestLookupFollowsAMessage(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 60*time.Second)
	if _, err := c.CreateQueue(ctx, "orders", client.QueueSettings{DeadLetterQueue: "orders-dlq"}, client.WithCreateDLQ()); err != nil {
		t.Fatal(err)
	}
	sent, err := c.Send(ctx, "orders", []byte("order 42"), client.WithDedupID("order-42"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.Lookup(ctx, "orders", client.LookupOptions{DedupID: "order-42", Leader: true})
	if err != nil || f.State != client.MessageReady || f.ID != sent.MessageID || f.EnqueuedAt.IsZero() || f.ChangedIndex == 0 || f.AppliedIndex < f.ChangedIndex {
		t.Fatalf("lookup after send: %+v %v; want ready as id %d", f, err, sent.MessageID)
	}
	if none, err := c.Lookup(ctx, "orders", client.LookupOptions{DedupID: "order-43", Leader: true}); err != nil || none.State != client.MessageUnknown {
		t.Fatalf("lookup of a dedup ID never sent: %+v %v; want unknown", none, err)
	}
	time.Sleep(1100 * time.Millisecond)
	if info, err := c.GetQueue(ctx, "orders"); err != nil || info.Stats.OldestReadyAge < time.Second {
		t.Fatalf("stats: %+v %v; want the oldest ready message at least 1s old", info, err)
	}

	msgs, err := c.Receive(ctx, "orders", 1, client.WithVisibility(time.Minute))
	if err != nil || len(msgs) != 1 {
		t.Fatalf("receive: %v %v", msgs, err)
	}
	f, err = c.Lookup(ctx, "orders", client.LookupOptions{DedupID: "order-42", Leader: true})
	if err != nil || f.State != client.MessageLeased || f.Consumer != client.DefaultConsumerName() || f.Attempts != 1 || !f.At.Equal(msgs[0].LeaseUntil) {
		t.Fatalf("lookup of a leased message: %+v %v; want leased by %s until %v", f, err, client.DefaultConsumerName(), msgs[0].LeaseUntil)
	}
	page, err := c.Peek(ctx, "orders", client.PeekOptions{State: client.PeekLeased, Leader: true})
	if err != nil || len(page.Messages) != 1 || page.Messages[0].Consumer != client.DefaultConsumerName() || page.Messages[0].Until.IsZero() {
		t.Fatalf("peek leased: %+v %v", page, err)
	}
	if err := c.Reject(ctx, "orders", "bad total", msgs[0].Receipt); err != nil {
		t.Fatal(err)
	}
	f, err = c.Lookup(ctx, "orders", client.LookupOptions{DedupID: "order-42", Leader: true})
	if err != nil || f.State != client.MessageDeadLettered || !f.Rejected || f.MovedTo != "orders-dlq" || f.MovedToID != 1 || f.At.IsZero() {
		t.Fatalf("lookup after a reject: %+v %v; want dead-lettered (rejected) to orders-dlq as id 1", f, err)
	}
	in, err := c.Lookup(ctx, "orders-dlq", client.LookupOptions{ID: f.MovedToID, Leader: true})
	if err != nil || in.State != client.MessageReady || in.DeadLetter == nil || in.DeadLetter.RejectReason != "bad total" || in.DedupID != "order-42" {
		t.Fatalf("lookup in the DLQ: %+v %v", in, err)
	}
	if n, err := c.Redrive(ctx, "orders-dlq", "", 0); err != nil || n != 1 {
		t.Fatalf("redrive: %d %v", n, err)
	}
	back, err := c.Lookup(ctx, "orders-dlq", client.LookupOptions{ID: f.MovedToID, Leader: true})
	if err != nil || back.State != client.MessageRedriven || back.MovedTo != "orders" || back.MovedToID != sent.MessageID+1 {
		t.Fatalf("lookup after redrive: %+v %v; want redriven to orders as id %d", back, err, sent.MessageID+1)
	}

	// A receive's own consumer name wins over the client's.
	msgs, err = c.Receive(ctx, "orders", 1, client.WithConsumer("billing-7"))
	if err != nil || len(msgs) != 1 {
		t.Fatalf("receive: %v %v", msgs, err)
	}
	if f, err := c.Lookup(ctx, "orders", client.LookupOptions{ID: msgs[0].Receipt.MessageID, Leader: true}); err != nil || f.Consumer != "billing-7" {
		t.Fatalf("lookup of a lease taken WithConsumer: %+v %v", f, err)
	}
}

// A redrive paced at 20 messages a second moves 10 in batches of 2, a
// tenth of a second apart: no less than 0.4 s.
func TestRedriveRate(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 60*time.Second)
	if _, err := c.CreateQueue(ctx, "w", client.QueueSettings{DeadLetterQueue: "w-dlq"}, client.WithCreateDLQ()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if _, err := c.Send(ctx, "w", []byte{byte('a' + i)}); err != nil {
			t.Fatal(err)
		}
	}
	msgs, err := c.Receive(ctx, "w", 10)
	if err != nil || len(msgs) != 10 {
		t.Fatalf("receive: %d %v", len(msgs), err)
	}
	for _, m := range msgs {
		if err := c.Reject(ctx, "w", "", m.Receipt); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	n, err := c.Redrive(ctx, "w-dlq", "", 0, client.WithRedriveRate(20))
	if took := time.Since(start); err != nil || n != 10 || took < 400*time.Millisecond || took > 5*time.Second {
		t.Fatalf("redrive at 20/s: moved %d in %v (%v); want 10 in 0.4 s or a little more", n, took, err)
	}
}

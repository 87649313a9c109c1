package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/quorumq/quorumq/client"
)

// Producing: Send picks a dedup ID (a ULID) before its first attempt, so
// the retries it makes through a leader change never enqueue twice. Give
// your own ID to make a retry of the whole call safe too, e.g. after a
// restart of your process.
func ExampleClient_Send() {
	ctx := context.Background()
	c, err := client.New(ctx, []string{"127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	r, err := c.Send(ctx, "orders", []byte(`{"order":42}`),
		client.WithDedupID("order-42"),
		client.WithAttributes(map[string]string{"type": "created"}))
	switch {
	case errors.Is(err, client.ErrQueueFull):
		log.Print("back off: the queue is at its max depth")
	case err != nil:
		log.Fatal(err)
	case r.Duplicate:
		fmt.Println("order-42 was already enqueued as message", r.MessageID)
	default:
		fmt.Println("enqueued as message", r.MessageID)
	}
}

// High throughput: the Producer gathers concurrent sends to the same queue
// into one enqueue RPC (one Raft entry) and reports each message's result.
func ExampleProducer() {
	ctx := context.Background()
	c, err := client.New(ctx, []string{"127.0.0.1:7101"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	p := c.NewProducer(client.WithLinger(2*time.Millisecond), client.WithMaxInFlight(10000, 64<<20))
	var futures []*client.SendFuture
	for i := range 1000 {
		futures = append(futures, p.SendAsync(ctx, "events", client.OutMessage{
			Body:    fmt.Appendf(nil, "event %d", i),
			DedupID: fmt.Sprintf("event-%d", i), // a resend with this ID is harmless
		}))
	}
	for i, f := range futures {
		if _, err := f.Wait(ctx); err != nil {
			log.Printf("event %d: %v (may or may not be enqueued: resend it with its DedupID)", i, err)
		}
	}
	if err := p.Close(); err != nil {
		log.Fatal(err)
	}
}

// Consuming with the loop: up to 16 handlers at a time, leases extended
// while a handler runs, acks batched, failures retried with backoff. The
// loop stops cleanly when ctx is cancelled.
func ExampleClient_Consume() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.New(ctx, []string{"127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	err = c.Consume(ctx, "orders", func(ctx context.Context, m *client.Message) error {
		// Returning nil acks the message; an error nacks it, and it comes
		// back after a delay that grows with m.Receipt.Attempt.
		return process(ctx, m.Body)
	}, client.WithConcurrency(16), client.WithNackBackoff(time.Second, time.Minute))
	if err != nil {
		log.Fatal(err) // e.g. the queue does not exist
	}
}

// Receiving by hand: lease, work, ack. An ack after the lease went to
// another consumer returns ErrLeaseLost: the work may be done twice.
func ExampleClient_Receive() {
	ctx := context.Background()
	c, err := client.New(ctx, []string{"127.0.0.1:7101"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	msgs, err := c.Receive(ctx, "orders", 10, client.WithWait(5*time.Second), client.WithVisibility(30*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	var done []client.Receipt
	for _, m := range msgs {
		if process(ctx, m.Body) == nil {
			done = append(done, m.Receipt)
		}
	}
	if len(done) == 0 {
		return
	}
	if err := c.Ack(ctx, "orders", done...); errors.Is(err, client.ErrLeaseLost) {
		var ae *client.AckError
		errors.As(err, &ae)
		log.Printf("%d message(s) were redelivered before the ack", len(ae.Failed))
	} else if err != nil {
		log.Fatal(err)
	}
}

// The exactly-once pipeline: each input's outputs are enqueued in the same
// transaction that acks the input, with dedup IDs derived from the input,
// so neither a retry nor a redelivery produces an output twice.
func ExampleClient_ConsumeExactlyOnce() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.New(ctx, []string{"127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	err = c.ConsumeExactlyOnce(ctx, "raw", func(ctx context.Context, m *client.Message) ([]client.TxEnqueue, error) {
		// Deterministic: the same input gives the same outputs in the same
		// order, which is what makes the derived dedup IDs match.
		upper := strings.ToUpper(string(m.Body))
		return []client.TxEnqueue{{Queue: "clean", Message: client.OutMessage{Body: []byte(upper)}}}, nil
	}, client.WithConcurrency(8))
	if err != nil {
		log.Fatal(err)
	}
}

// Message groups: the orders of one customer are handled one at a time,
// in the order they were sent, while different customers' orders are
// handled in parallel.
func ExampleWithGroup() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.New(ctx, []string{"127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	for _, o := range []struct{ customer, event string }{
		{"c-17", "created"}, {"c-42", "created"}, {"c-17", "paid"}, {"c-17", "shipped"},
	} {
		if _, err := c.Send(ctx, "orders", []byte(o.event), client.WithGroup(o.customer)); err != nil {
			log.Fatal(err)
		}
	}
	// c-17's events reach the handler as created, paid, shipped, never
	// two at once; c-42's created runs beside them.
	err = c.Consume(ctx, "orders", func(ctx context.Context, m *client.Message) error {
		log.Printf("customer %s: %s", m.Group, m.Body)
		return process(ctx, m.Body)
	}, client.WithConcurrency(16))
	if err != nil {
		log.Fatal(err)
	}
}

func process(context.Context, []byte) error { return nil }

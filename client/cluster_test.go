package client_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/cluster"
)

// These tests run the client against a real three-node cluster (raft over
// TCP, bolt files, gossip, gRPC on 127.0.0.1) and kill its leader. Each one
// fails when the guarantee it names breaks.

func newClient(t *testing.T, addrs []string) *client.Client {
	t.Helper()
	return newClientWith(t, addrs)
}

func newClientWith(t *testing.T, addrs []string, opts ...client.Option) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := client.New(ctx, addrs, append([]client.Option{client.WithBackoff(10*time.Millisecond, 250*time.Millisecond),
		client.WithAttemptTimeout(5 * time.Second), client.WithRefreshInterval(500 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatalf("client.New(%v): %v", addrs, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// drain receives and acks until a long poll comes back empty and returns
// how often each body was received.
func drain(t *testing.T, c *client.Client, queue string) map[string]int {
	t.Helper()
	ctx := ctxFor(t, 60*time.Second)
	got := map[string]int{}
	for {
		msgs, err := c.Receive(ctx, queue, 500, client.WithWait(time.Second))
		if err != nil {
			t.Fatalf("drain %s: receive: %v", queue, err)
		}
		if len(msgs) == 0 {
			return got
		}
		rs := make([]client.Receipt, len(msgs))
		for i, m := range msgs {
			got[string(m.Body)]++
			rs[i] = m.Receipt
		}
		if err := c.Ack(ctx, queue, rs...); err != nil {
			t.Fatalf("drain %s: ack: %v", queue, err)
		}
	}
}

// killLeader kills the current leader and returns its index for Restart.
func killLeader(t *testing.T, tc *cluster.TestCluster) int {
	t.Helper()
	i := tc.Index(tc.Leader(t))
	t.Logf("killing leader %d at %s", i, tc.Addrs()[i])
	tc.Kill(i)
	return i
}

func TestClientGivenOnlyAFollowerFindsTheLeader(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	leader := tc.Leader(t)
	var follower string
	for _, n := range tc.Live() {
		if n != leader {
			follower = n.APIAddr()
			break
		}
	}
	c := newClient(t, []string{follower})
	ctx := ctxFor(t, 20*time.Second)

	_, addr, err := c.Leader(ctx)
	if err != nil || addr != leader.APIAddr() {
		t.Fatalf("Leader() = %q, %v; want %q", addr, err, leader.APIAddr())
	}
	members, err := c.Members(ctx)
	if err != nil || len(members) != 3 {
		t.Fatalf("Members() = %d members, %v; want 3", len(members), err)
	}
	// Enqueue and receive are leader-only: they work only if the client
	// follows the follower's hint.
	r, err := c.Send(ctx, "only-follower", []byte("hello"))
	if err != nil {
		t.Fatalf("Send through a follower's address: %v", err)
	}
	msgs, err := c.Receive(ctx, "only-follower", 1, client.WithWait(2*time.Second))
	if err != nil || len(msgs) != 1 || msgs[0].Receipt.MessageID != r.MessageID || string(msgs[0].Body) != "hello" {
		t.Fatalf("Receive = %+v, %v; want the message just sent", msgs, err)
	}

	// The client learned the others: with the follower it was given killed,
	// it still reaches the cluster.
	tc.Kill(tc.Index(func() *cluster.Node {
		for _, n := range tc.Live() {
			if n.APIAddr() == follower {
				return n
			}
		}
		t.Fatal("follower vanished")
		return nil
	}()))
	if err := c.Ack(ctx, "only-follower", msgs[0].Receipt); err != nil {
		t.Fatalf("Ack after the only given address died: %v", err)
	}
}

// TestSendsThroughLeaderKillAreExactlyOnce: producers send while the leader
// is killed and later restarted. Every Send that returned success must be
// received exactly once, and nothing twice: a client retry that reused no
// dedup ID would duplicate the messages whose reply the dying leader never
// sent.
func TestSendsThroughLeaderKillAreExactlyOnce(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	const queue = "kill-send"
	if _, err := c.CreateQueue(ctxFor(t, 10*time.Second), queue, client.QueueSettings{}); err != nil {
		t.Fatal(err)
	}

	var (
		mu        sync.Mutex
		ok        = map[string]uint64{} // body -> message ID
		failed    []error
		afterKill atomic.Int64
		killed    atomic.Bool
	)
	record := func(body string, r client.SendResult, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed = append(failed, fmt.Errorf("%s: %w", body, err))
			return
		}
		if r.Duplicate {
			failed = append(failed, fmt.Errorf("%s: first send of a fresh dedup ID reported duplicate", body))
		}
		ok[body] = r.MessageID
		if killed.Load() {
			afterKill.Add(1)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// Two producers use Send, two the batching Producer.
	for p := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prod := c.NewProducer(client.WithLinger(time.Millisecond))
			defer prod.Close()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				if p < 2 {
					body := fmt.Sprintf("s%d-%d", p, i)
					r, err := c.Send(ctx, queue, []byte(body))
					record(body, r, err)
				} else {
					var futs []*client.SendFuture
					for j := range 20 {
						futs = append(futs, prod.SendAsync(ctx, queue, client.OutMessage{Body: fmt.Appendf(nil, "a%d-%d-%d", p, i, j)}))
					}
					for j, f := range futs {
						r, err := f.Wait(ctx)
						record(fmt.Sprintf("a%d-%d-%d", p, i, j), r, err)
					}
				}
				cancel()
			}
		}()
	}
	time.Sleep(700 * time.Millisecond)
	killed.Store(true)
	dead := killLeader(t, tc)
	time.Sleep(2 * time.Second)
	tc.Restart(t, dead)
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()

	if len(failed) > 0 {
		t.Errorf("%d sends failed although each had 20 s to retry; first: %v", len(failed), failed[0])
	}
	if afterKill.Load() == 0 {
		t.Fatal("no send succeeded after the leader was killed; the client did not fail over")
	}
	got := drain(t, c, queue)
	for body, id := range ok {
		if got[body] != 1 {
			t.Errorf("message %s (id %d) received %d times, want exactly once", body, id, got[body])
		}
	}
	for body, n := range got {
		if _, sent := ok[body]; !sent {
			t.Errorf("received %s (%d times), which no successful send produced", body, n)
		}
	}
	t.Logf("%d successful sends checked; %d succeeded after the leader was killed", len(ok), afterKill.Load())
}

func TestAckAfterTheLeaseWentToAnotherConsumerIsLeaseLost(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	a := newClient(t, tc.Addrs())
	b := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 30*time.Second)
	const queue = "lease-lost"
	if _, err := a.Send(ctx, queue, []byte("job")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateQueue(ctx, "lease-lost-out", client.QueueSettings{}); err != nil {
		t.Fatal(err)
	}
	first, err := a.Receive(ctx, queue, 1, client.WithVisibility(300*time.Millisecond))
	if err != nil || len(first) != 1 {
		t.Fatalf("consumer A receive = %v, %v", first, err)
	}
	time.Sleep(600 * time.Millisecond) // A's lease runs out
	second, err := b.Receive(ctx, queue, 1, client.WithVisibility(time.Minute), client.WithWait(5*time.Second))
	if err != nil || len(second) != 1 || second[0].Receipt.Attempt != first[0].Receipt.Attempt+1 {
		t.Fatalf("consumer B receive = %+v, %v; want the same message, next attempt", second, err)
	}

	err = a.Ack(ctx, queue, first[0].Receipt)
	var ae *client.AckError
	if !errors.Is(err, client.ErrLeaseLost) || !errors.As(err, &ae) || len(ae.Failed) != 1 || ae.Failed[0].Receipt != first[0].Receipt {
		t.Fatalf("stale ack = %v; want an *AckError listing %v as lease lost", err, first[0].Receipt)
	}
	// The stale receipt cannot smuggle outputs through a transaction either.
	_, err = a.Transact(ctx, client.Transaction{
		Acks:     []client.TxAck{{Queue: queue, Receipt: first[0].Receipt}},
		Enqueues: []client.TxEnqueue{{Queue: "lease-lost-out", Message: client.OutMessage{Body: []byte("x")}}},
	})
	if !errors.Is(err, client.ErrLeaseLost) {
		t.Fatalf("transaction with a stale receipt = %v; want ErrLeaseLost", err)
	}
	if err := b.Ack(ctx, queue, second[0].Receipt); err != nil {
		t.Fatalf("current receipt's ack: %v", err)
	}
	if err := b.Ack(ctx, queue, second[0].Receipt); err != nil {
		t.Fatalf("re-ack of an acked receipt (what a retry does) = %v; want nil", err)
	}
	if got := drain(t, a, "lease-lost-out"); len(got) != 0 {
		t.Fatalf("the failed transaction enqueued %v", got)
	}
}

func TestConsumerKeepsTheLeaseOfASlowHandler(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 60*time.Second)
	const queue = "slow"
	if _, err := c.CreateQueue(ctx, queue, client.QueueSettings{VisibilityTimeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	const n = 4
	for i := range n {
		if _, err := c.Send(ctx, queue, fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	deliveries := map[string][]uint32{}
	handled := make(chan struct{}, n)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(cctx, queue, func(ctx context.Context, m *client.Message) error {
			mu.Lock()
			deliveries[string(m.Body)] = append(deliveries[string(m.Body)], m.Receipt.Attempt)
			mu.Unlock()
			select { // three visibility timeouts
			case <-time.After(3 * time.Second):
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			handled <- struct{}{}
			return nil
		}, client.WithConcurrency(n), client.WithPollWait(500*time.Millisecond))
	}()
	for range n {
		select {
		case <-handled:
		case <-ctx.Done():
			t.Fatal("handlers did not finish")
		}
	}
	time.Sleep(1500 * time.Millisecond) // a lost lease would redeliver now
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Consume after cancel = %v; want nil", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range n {
		body := fmt.Sprintf("m%d", i)
		if a := deliveries[body]; len(a) != 1 || a[0] != 1 {
			t.Errorf("%s delivered with attempts %v; want once, attempt 1", body, a)
		}
	}
	q, err := c.GetQueue(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	st := q.Stats
	if st.AckedTotal != n || st.RedeliveredTotal != 0 || st.Ready+st.Leased != 0 {
		t.Fatalf("queue stats %v; want %d acked, 0 redelivered, nothing left", st, n)
	}
}

// TestExactlyOncePipelineThroughLeaderKill: a stage copies every input to
// an output queue with ConsumeExactlyOnce while the leader is killed. Each
// input must appear exactly once in the output.
func TestExactlyOncePipelineThroughLeaderKill(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 90*time.Second)
	const in, out, n = "eo-in", "eo-out", 600
	if _, err := c.CreateQueue(ctx, in, client.QueueSettings{VisibilityTimeout: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i += 100 {
		batch := make([]client.OutMessage, 100)
		for j := range batch {
			batch[j].Body = fmt.Appendf(nil, "in-%d", i+j)
		}
		if _, err := c.SendBatch(ctx, in, batch); err != nil {
			t.Fatal(err)
		}
	}
	var processed atomic.Int64
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.ConsumeExactlyOnce(cctx, in, func(ctx context.Context, m *client.Message) ([]client.TxEnqueue, error) {
			processed.Add(1)
			time.Sleep(5 * time.Millisecond)
			return []client.TxEnqueue{{Queue: out, Message: client.OutMessage{Body: append([]byte("out-"), m.Body...)}}}, nil
		}, client.WithConcurrency(16), client.WithPollWait(500*time.Millisecond))
	}()
	for processed.Load() < n/4 {
		time.Sleep(10 * time.Millisecond)
	}
	dead := killLeader(t, tc)
	time.Sleep(2 * time.Second)
	tc.Restart(t, dead)

	// Wait until the input is fully consumed.
	for {
		q, err := c.GetQueue(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		st := q.Stats
		if st.Ready+st.Leased+st.Delayed == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("input not consumed: %v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("ConsumeExactlyOnce after cancel = %v; want nil", err)
	}
	got := drain(t, c, out)
	for i := range n {
		if k := fmt.Sprintf("out-in-%d", i); got[k] != 1 {
			t.Errorf("%s in the output %d times, want exactly once", k, got[k])
		}
	}
	if len(got) != n {
		t.Errorf("output holds %d distinct messages, want %d", len(got), n)
	}
	q, err := c.GetQueue(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	// Dedup hits on the output are transactions applied whose reply the
	// kill swallowed, retried with the same IDs.
	t.Logf("handler ran %d times for %d inputs; output dedup hits %d", processed.Load(), n, q.Stats.DedupHitsTotal)
}

// TestProducerGathersSendsInOrder: one goroutine's SendAsync calls to a
// queue are enqueued in call order, in far fewer Raft entries than
// messages; Flush does not wait for the linger; Close refuses later sends.
func TestProducerGathersSendsInOrder(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 60*time.Second)
	const queue, n = "producer", 5000
	if _, err := c.CreateQueue(ctx, queue, client.QueueSettings{}); err != nil {
		t.Fatal(err)
	}
	lastIndex := func() uint64 {
		st, err := c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, nd := range st.Nodes {
			if nd.GetId() == st.LeaderId {
				return nd.GetLastLogIndex()
			}
		}
		t.Fatal("status names no leader node")
		return 0
	}
	before := lastIndex()
	p := c.NewProducer()
	futs := make([]*client.SendFuture, n)
	for i := range futs {
		futs[i] = p.SendAsync(ctx, queue, client.OutMessage{Body: fmt.Appendf(nil, "%d", i)})
	}
	var prev uint64
	for i, f := range futs {
		r, err := f.Wait(ctx)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if r.MessageID <= prev {
			t.Fatalf("message %d got ID %d after ID %d: the producer reordered sends", i, r.MessageID, prev)
		}
		prev = r.MessageID
	}
	entries := lastIndex() - before
	if entries > n/20 {
		t.Fatalf("%d messages took %d Raft entries; the producer is not gathering", n, entries)
	}
	t.Logf("%d messages in %d Raft entries", n, entries)

	slow := c.NewProducer(client.WithLinger(time.Hour))
	f := slow.SendAsync(ctx, queue, client.OutMessage{Body: []byte("flushed")})
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := slow.Flush(fctx); err != nil {
		t.Fatalf("Flush with a one-hour linger: %v", err)
	}
	if r, err := f.Wait(ctx); err != nil || r.MessageID != prev+1 {
		t.Fatalf("flushed message = %+v, %v; want ID %d", r, err, prev+1)
	}
	if err := slow.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := slow.SendAsync(ctx, queue, client.OutMessage{Body: []byte("late")}).Wait(ctx); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("SendAsync after Close = %v; want ErrClosed", err)
	}
}

// TestReceiveModes covers what a consumer relies on besides leases:
// auto-ack deletes on delivery, a repeated request ID replays the same
// deliveries, Nack's delay holds a message back, the Consume loop nacks a
// failing handler with backoff and stops on a missing queue.
func TestReceiveModes(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 60*time.Second)

	t.Run("auto-ack deletes on delivery", func(t *testing.T) {
		if _, err := c.Send(ctx, "auto", []byte("once")); err != nil {
			t.Fatal(err)
		}
		got, err := c.Receive(ctx, "auto", 10, client.WithAutoAck(), client.WithVisibility(100*time.Millisecond))
		if err != nil || len(got) != 1 {
			t.Fatalf("auto-ack receive = %v, %v", got, err)
		}
		time.Sleep(300 * time.Millisecond) // past the visibility: a lease would be back
		if again, err := c.Receive(ctx, "auto", 10); err != nil || len(again) != 0 {
			t.Fatalf("after auto-ack the queue still delivers %v, %v", again, err)
		}
	})

	t.Run("request ID replays", func(t *testing.T) {
		for i := range 3 {
			if _, err := c.Send(ctx, "replay", fmt.Appendf(nil, "%d", i)); err != nil {
				t.Fatal(err)
			}
		}
		first, err := c.Receive(ctx, "replay", 2, client.WithRequestID("req-1"))
		if err != nil || len(first) != 2 {
			t.Fatalf("receive = %v, %v", first, err)
		}
		second, err := c.Receive(ctx, "replay", 2, client.WithRequestID("req-1"))
		if err != nil || len(second) != 2 || second[0].Receipt != first[0].Receipt || second[1].Receipt != first[1].Receipt {
			t.Fatalf("repeat of request req-1 = %v, %v; want the same two deliveries %v", second, err, first)
		}
		third, err := c.Receive(ctx, "replay", 2)
		if err != nil || len(third) != 1 || string(third[0].Body) != "2" {
			t.Fatalf("a new request = %v, %v; want only the third message", third, err)
		}
	})

	t.Run("nack delay holds the message back", func(t *testing.T) {
		if _, err := c.Send(ctx, "nack", []byte("x")); err != nil {
			t.Fatal(err)
		}
		m, err := c.Receive(ctx, "nack", 1)
		if err != nil || len(m) != 1 {
			t.Fatalf("receive = %v, %v", m, err)
		}
		if err := c.Nack(ctx, "nack", time.Second, m[0].Receipt); err != nil {
			t.Fatal(err)
		}
		if early, err := c.Receive(ctx, "nack", 1); err != nil || len(early) != 0 {
			t.Fatalf("right after a 1 s nack: %v, %v; want nothing", early, err)
		}
		late, err := c.Receive(ctx, "nack", 1, client.WithWait(5*time.Second))
		if err != nil || len(late) != 1 || late[0].Receipt.Attempt != 2 {
			t.Fatalf("after the nack delay: %v, %v; want attempt 2", late, err)
		}
		if err := c.Ack(ctx, "nack", late[0].Receipt); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("consumer nacks a failing handler with backoff", func(t *testing.T) {
		if _, err := c.Send(ctx, "flaky", []byte("job")); err != nil {
			t.Fatal(err)
		}
		type delivery struct {
			attempt uint32
			at      time.Time
		}
		var mu sync.Mutex
		var seen []delivery
		succeeded := make(chan struct{})
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var reported atomic.Int64
		done := make(chan error, 1)
		go func() {
			done <- c.Consume(cctx, "flaky", func(ctx context.Context, m *client.Message) error {
				mu.Lock()
				seen = append(seen, delivery{m.Receipt.Attempt, time.Now()})
				mu.Unlock()
				if m.Receipt.Attempt == 1 {
					return errors.New("transient failure")
				}
				close(succeeded)
				return nil
			}, client.WithNackBackoff(700*time.Millisecond, time.Minute), client.WithPollWait(time.Second),
				client.WithErrorHandler(func(error) { reported.Add(1) }))
		}()
		select {
		case <-succeeded:
		case <-ctx.Done():
			t.Fatal("the failing message never came back")
		}
		time.Sleep(200 * time.Millisecond) // let the ack go out
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Consume = %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != 2 || seen[1].attempt != 2 {
			t.Fatalf("deliveries %v; want attempts 1 then 2", seen)
		}
		if gap := seen[1].at.Sub(seen[0].at); gap < 600*time.Millisecond {
			t.Fatalf("redelivered %v after the failure; want the 700 ms nack backoff", gap)
		}
		q, err := c.GetQueue(ctx, "flaky")
		if err != nil || q.Stats.AckedTotal != 1 || reported.Load() != 0 {
			t.Fatalf("stats %v, %v, %d async errors; want the second delivery acked without errors", q.Stats, err, reported.Load())
		}
	})

	t.Run("consume of a missing queue fails", func(t *testing.T) {
		err := c.Consume(ctx, "no-such-queue", func(context.Context, *client.Message) error { return nil })
		if !errors.Is(err, client.ErrQueueNotFound) {
			t.Fatalf("Consume(no-such-queue) = %v; want ErrQueueNotFound", err)
		}
	})
}

// TestReceiveOfManyLargeMessages receives more than gRPC's default 4 MiB in
// one call: before the client raised its receive limit, the call failed
// after the messages had been leased.
func TestReceiveOfManyLargeMessages(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 30*time.Second)
	body := make([]byte, 1<<20-1024)
	const n = 6
	for i := 0; i < n; i++ {
		body[0] = byte(i)
		if _, err := c.Send(ctx, "large", body); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	msgs, err := c.Receive(ctx, "large", n)
	if err != nil {
		t.Fatalf("receive of %d messages of %d bytes: %v", n, len(body), err)
	}
	if len(msgs) != n {
		t.Fatalf("received %d messages; want %d", len(msgs), n)
	}
	for i, m := range msgs {
		if len(m.Body) != len(body) || m.Body[0] != byte(i) {
			t.Fatalf("message %d: %d bytes starting %d; want %d bytes starting %d", i, len(m.Body), m.Body[0], len(body), i)
		}
	}
}

// TestAckAndReceiveConfirmsThePreviousBatch acks one batch and leases the
// next in one call; a stale receipt among the acks is reported while the
// next batch is still delivered.
func TestAckAndReceiveConfirmsThePreviousBatch(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 30*time.Second)
	if _, err := c.CreateQueue(ctx, "pipe", client.QueueSettings{}); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"a", "b", "c", "d", "e"} {
		if _, err := c.Send(ctx, "pipe", []byte(b)); err != nil {
			t.Fatal(err)
		}
	}
	first, err := c.Receive(ctx, "pipe", 2)
	if err != nil || len(first) != 2 {
		t.Fatalf("Receive = %d messages, %v", len(first), err)
	}
	next, ackErr, err := c.AckAndReceive(ctx, "pipe", []client.Receipt{first[0].Receipt, first[1].Receipt}, 2, client.WithWait(time.Second))
	if err != nil || ackErr != nil {
		t.Fatalf("AckAndReceive: err %v, ackErr %v", err, ackErr)
	}
	if len(next) != 2 || string(next[0].Body) != "c" || string(next[1].Body) != "d" {
		t.Fatalf("AckAndReceive delivered %v; want c, d", next)
	}
	q, err := c.GetQueue(ctx, "pipe")
	if err != nil || q.Stats.AckedTotal != 2 || q.Stats.Leased != 2 {
		t.Fatalf("stats after AckAndReceive = %v (%v); want 2 acked, 2 leased", q.Stats, err)
	}

	// Let c's lease lapse and hand c out again: its first receipt is stale.
	if err := c.Nack(ctx, "pipe", 0, next[0].Receipt); err != nil {
		t.Fatal(err)
	}
	again, err := c.Receive(ctx, "pipe", 1)
	if err != nil || len(again) != 1 || again[0].Receipt.Attempt != 2 {
		t.Fatalf("redelivery of c = %v, %v", again, err)
	}
	last, ackErr, err := c.AckAndReceive(ctx, "pipe", []client.Receipt{next[0].Receipt, next[1].Receipt}, 5)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(ackErr, client.ErrLeaseLost) {
		t.Fatalf("ack of c's stale receipt = %v; want lease lost", ackErr)
	}
	if len(last) != 1 || string(last[0].Body) != "e" {
		t.Fatalf("AckAndReceive with a stale receipt delivered %v; want e", last)
	}
}

// TestProducerPipelinesPartialBatches: a producer with a few hundred
// messages in flight keeps several batches on the wire, not one batch and
// the rest waiting for it. 256 SendAsync calls at once: the first goes
// alone, then each further 64 take a free slot while the first is still
// in its Raft round, so the queue's messages arrive in five entries or so
// instead of two, still in call order.
func TestProducerPipelinesPartialBatches(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 60*time.Second)
	const queue, n = "pipelined", 256
	if _, err := c.CreateQueue(ctx, queue, client.QueueSettings{}); err != nil {
		t.Fatal(err)
	}
	leaderIndex := func() uint64 { return tc.Leader(t).AppliedIndex() }
	for round := range 3 {
		before := leaderIndex()
		p := c.NewProducer()
		futs := make([]*client.SendFuture, n)
		for i := range futs {
			futs[i] = p.SendAsync(ctx, queue, client.OutMessage{Body: fmt.Appendf(nil, "%d-%d", round, i)})
		}
		var prev uint64
		for i, f := range futs {
			r, err := f.Wait(ctx)
			if err != nil {
				t.Fatalf("round %d, message %d: %v", round, i, err)
			}
			if r.MessageID <= prev {
				t.Fatalf("round %d: message %d got ID %d after ID %d: the producer reordered sends", round, i, r.MessageID, prev)
			}
			prev = r.MessageID
		}
		p.Close()
		entries := leaderIndex() - before
		t.Logf("round %d: %d messages sent at once took %d Raft entries", round, n, entries)
		if entries < 4 {
			t.Fatalf("%d messages sent at once took %d Raft entries; want at least 4: batches of 64 go beside the one on the wire", n, entries)
		}
		if entries > 8 {
			t.Fatalf("%d messages sent at once took %d Raft entries; the producer split them into batches smaller than 64", n, entries)
		}
	}
}

// TestConcurrentSendsAreGathered: Sends from many goroutines share Raft
// entries, each still gets its own result, and a bad message among them
// fails alone.
func TestConcurrentSendsAreGathered(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	ctx := ctxFor(t, 60*time.Second)
	leaderIndex := func() uint64 { return tc.Leader(t).AppliedIndex() }
	// run sends rounds x senders messages from senders goroutines, each
	// waiting for its Send before the next, and returns the Raft entries
	// they took.
	run := func(c *client.Client, queue string, senders, rounds int) uint64 {
		if _, err := c.CreateQueue(ctx, queue, client.QueueSettings{}); err != nil {
			t.Fatal(err)
		}
		before := leaderIndex()
		var wg sync.WaitGroup
		ids := make([][]uint64, senders)
		for s := range senders {
			wg.Go(func() {
				for r := range rounds {
					res, err := c.Send(ctx, queue, fmt.Appendf(nil, "%d-%d", s, r))
					if err != nil {
						t.Errorf("sender %d round %d: %v", s, r, err)
						return
					}
					ids[s] = append(ids[s], res.MessageID)
				}
			})
		}
		wg.Wait()
		entries := leaderIndex() - before
		for s, got := range ids {
			for i := 1; i < len(got); i++ {
				if got[i] <= got[i-1] {
					t.Fatalf("sender %d: message IDs %v are out of order", s, got)
				}
			}
		}
		got := drain(t, c, queue)
		if len(got) != senders*rounds {
			t.Fatalf("%s: %d distinct messages received, want %d", queue, len(got), senders*rounds)
		}
		for body, k := range got {
			if k != 1 {
				t.Fatalf("%s: %q received %d times", queue, body, k)
			}
		}
		return entries
	}
	const senders, rounds = 32, 20
	gathered := run(newClient(t, tc.Addrs()), "gathered", senders, rounds)
	alone := run(newClientWith(t, tc.Addrs(), client.WithSendGathering(false)), "alone", senders, rounds)
	t.Logf("%d Sends: %d Raft entries gathered, %d one by one", senders*rounds, gathered, alone)
	if alone < senders*rounds {
		t.Fatalf("one by one, %d Sends took only %d entries", senders*rounds, alone)
	}
	if gathered > senders*rounds/4 {
		t.Fatalf("%d concurrent Sends took %d Raft entries; they are not gathered", senders*rounds, gathered)
	}

	// One message the server refuses (a dedup ID over its 128-byte limit)
	// among concurrent good ones: only its Send fails, naming the field.
	c := newClient(t, tc.Addrs())
	if _, err := c.CreateQueue(ctx, "mixed", client.QueueSettings{}); err != nil {
		t.Fatal(err)
	}
	bad := string(make([]byte, 200))
	for range 3 {
		var wg sync.WaitGroup
		errs := make([]error, 16)
		for i := range errs {
			wg.Go(func() {
				var opts []client.SendOption
				if i == 7 {
					opts = append(opts, client.WithDedupID(bad))
				}
				_, errs[i] = c.Send(ctx, "mixed", fmt.Appendf(nil, "m%d", i), opts...)
			})
		}
		wg.Wait()
		for i, err := range errs {
			switch {
			case i == 7 && (!errors.Is(err, client.ErrInvalidArgument) || !strings.Contains(err.Error(), "dedup")):
				t.Fatalf("Send with a 200-byte dedup ID = %v; want an invalid-argument error naming the dedup ID", err)
			case i != 7 && err != nil:
				t.Fatalf("good Send %d beside a bad one: %v", i, err)
			}
		}
	}
	if got := drain(t, c, "mixed"); len(got) != 15 {
		t.Fatalf("received %d distinct good messages, want 15 (each enqueued once): %v", len(got), got)
	}
}

// TestPipelinedProducerKeepsOrderThroughLeaderChanges: a Producer with
// eight batches of one queue in flight, while the leader hands over
// leadership twice and is then killed and restarted. Every message must
// be enqueued exactly once, and the queue must hold them in the order of
// the SendAsync calls: no batch may overtake one sent before it, however
// the stream it travelled on was cut.
func TestPipelinedProducerKeepsOrderThroughLeaderChanges(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 90*time.Second)
	const queue = "pipelined"
	if _, err := c.CreateQueue(ctx, queue, client.QueueSettings{}); err != nil {
		t.Fatal(err)
	}
	p := c.NewProducer(client.WithBatchesInFlight(8), client.WithBatchLimits(40, 1<<20), client.WithMaxInFlight(1000, 1<<20))
	var futs []*client.SendFuture
	sent := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(sent)
		for i := 0; i < 200000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			futs = append(futs, p.SendAsync(ctx, queue, client.OutMessage{Body: fmt.Appendf(nil, "%d", i)}))
		}
	}()
	for range 2 {
		time.Sleep(600 * time.Millisecond)
		id, err := c.TransferLeadership(ctx, "")
		t.Logf("leadership handed to %q (%v)", id, err)
	}
	time.Sleep(600 * time.Millisecond)
	dead := killLeader(t, tc)
	time.Sleep(1500 * time.Millisecond)
	tc.Restart(t, dead)
	time.Sleep(600 * time.Millisecond)
	close(stop)
	<-sent
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	var prev uint64
	for i, f := range futs {
		r, err := f.Wait(ctx)
		if err != nil {
			t.Fatalf("message %d of %d: %v", i, len(futs), err)
		}
		if r.MessageID <= prev {
			t.Fatalf("message %d got ID %d after ID %d: a batch overtook one sent before it", i, r.MessageID, prev)
		}
		prev = r.MessageID
	}
	next := 0
	for {
		msgs, err := c.Receive(ctx, queue, 1000, client.WithWait(time.Second), client.WithAutoAck())
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if len(msgs) == 0 {
			break
		}
		for _, m := range msgs {
			if string(m.Body) != fmt.Sprint(next) {
				t.Fatalf("queue position %d holds message %s, want %d (lost, doubled or reordered)", next, m.Body, next)
			}
			next++
		}
	}
	if next != len(futs) {
		t.Fatalf("queue held %d messages, %d were sent", next, len(futs))
	}
	t.Logf("%d messages sent with 8 batches in flight, all in order, each once", len(futs))
}

package client_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/cluster"
)

// Message groups through a real cluster: every send path carries the
// group, a delivery, a peek and a lookup show it, and the cluster hands
// out a group's messages one at a time, in order, the next only once the
// one before is acked.
func TestGroupsThroughTheCluster(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 60*time.Second)
	const queue, out = "grouped", "grouped-out"
	for _, q := range []string{queue, out} {
		if _, err := c.CreateQueue(ctx, q, client.QueueSettings{}); err != nil {
			t.Fatal(err)
		}
	}
	// a1..a3 of group A (by Send, SendBatch and a Producer), b1 of group
	// B and n1 without a group.
	if _, err := c.Send(ctx, queue, []byte("a1"), client.WithGroup("A")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SendBatch(ctx, queue, []client.OutMessage{
		{Body: []byte("a2"), Group: "A"}, {Body: []byte("b1"), Group: "B"}, {Body: []byte("n1")},
	}); err != nil {
		t.Fatal(err)
	}
	p := c.NewProducer()
	if _, err := p.SendAsync(ctx, queue, client.OutMessage{Body: []byte("a3"), Group: "A"}).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	// One receive never returns two messages of a group.
	first, err := c.Receive(ctx, queue, 10, client.WithWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, m := range first {
		got[string(m.Body)] = m.Group
	}
	if want := map[string]string{"a1": "A", "b1": "B", "n1": ""}; len(got) != 3 || got["a1"] != "A" || got["b1"] != "B" || got["n1"] != "" {
		t.Fatalf("first receive = %v (body: group); want %v: one message per group, each with its group", got, want)
	}

	// a2 and a3 wait behind the leased a1.
	info, err := c.GetQueue(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	if st := info.Stats; st.Waiting != 2 || st.Groups != 2 || st.Ready != 0 || st.Leased != 3 {
		t.Errorf("stats with a1 leased = %+v; want 2 waiting, 2 groups, 0 ready, 3 leased", st)
	}
	page, err := c.Peek(ctx, queue, client.PeekOptions{Leader: true})
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, m := range page.Messages {
		states[string(m.Body)] = fmt.Sprintf("%s/%s", m.State, m.Group)
	}
	if states["a2"] != "waiting/A" || states["a3"] != "waiting/A" || states["a1"] != "leased/A" || states["n1"] != "leased/" {
		t.Errorf("peek = %v (body: state/group); want a1 leased/A, a2 and a3 waiting/A, n1 leased without a group", states)
	}
	waiting, err := c.Peek(ctx, queue, client.PeekOptions{State: client.PeekWaiting, Leader: true})
	if err != nil || len(waiting.Messages) != 2 {
		t.Errorf("peek --state waiting = %+v, %v; want a2 and a3", waiting, err)
	}
	var a2ID uint64
	for _, m := range page.Messages {
		if string(m.Body) == "a2" {
			a2ID = m.ID
		}
	}
	if f, err := c.Lookup(ctx, queue, client.LookupOptions{ID: a2ID, Leader: true}); err != nil || f.State != client.MessageWaiting || f.Group != "A" {
		t.Errorf("lookup of a2 = %+v, %v; want waiting in group A", f, err)
	}
	if more, err := c.Receive(ctx, queue, 10); err != nil || len(more) != 0 {
		t.Fatalf("receive with a1 leased = %d message(s) %v; want none: a2 waits behind a1", len(more), err)
	}

	// Acking a1 makes a2 the next of A; a nack of a2 makes it the next
	// again, ahead of a3.
	rs := make([]client.Receipt, len(first))
	for i, m := range first {
		rs[i] = m.Receipt
	}
	if err := c.Ack(ctx, queue, rs...); err != nil {
		t.Fatal(err)
	}
	var order []string
	for range 3 {
		ms, err := c.Receive(ctx, queue, 10, client.WithWait(2*time.Second))
		if err != nil || len(ms) != 1 {
			t.Fatalf("receive after %v = %d message(s), %v; want exactly one", order, len(ms), err)
		}
		m := ms[0]
		order = append(order, fmt.Sprintf("%s#%d", m.Body, m.Receipt.Attempt))
		if string(m.Body) == "a2" && m.Receipt.Attempt == 1 {
			if err := c.Nack(ctx, queue, 0, m.Receipt); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := c.Ack(ctx, queue, m.Receipt); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"a2#1", "a2#2", "a3#1"}; !slices.Equal(order, want) {
		t.Fatalf("group A after a1 was delivered as %v, want %v", order, want)
	}

	// A transaction's outputs carry the group they are given.
	if _, err := c.Send(ctx, queue, []byte("in"), client.WithGroup("T")); err != nil {
		t.Fatal(err)
	}
	in, err := c.Receive(ctx, queue, 1, client.WithWait(2*time.Second))
	if err != nil || len(in) != 1 || in[0].Group != "T" {
		t.Fatalf("receive of the transaction's input = %+v, %v", in, err)
	}
	if _, err := c.Transact(ctx, client.Transaction{
		Acks: []client.TxAck{{Queue: queue, Receipt: in[0].Receipt}},
		Enqueues: []client.TxEnqueue{
			{Queue: out, Message: client.OutMessage{Body: []byte("o1"), Group: "T2"}},
			{Queue: out, Message: client.OutMessage{Body: []byte("o2")}},
		},
	}); err != nil {
		t.Fatal(err)
	}
	outs, err := c.Receive(ctx, out, 10, client.WithWait(2*time.Second))
	if err != nil || len(outs) != 2 || outs[0].Group != "T2" || outs[1].Group != "" {
		t.Fatalf("transaction outputs = %+v, %v; want o1 in group T2 and o2 without a group", outs, err)
	}
	if info, err := c.GetQueue(ctx, queue); err != nil || info.Stats.Groups != 0 || info.Stats.Waiting != 0 {
		t.Fatalf("stats of the drained queue = %+v, %v; want no groups and nothing waiting", info, err)
	}
}

// Consume runs the messages of one group one at a time and in order,
// even when the cluster hands out a group's message again while its
// first handler still runs (the lease ran out under a handler that
// outlives it), and runs different groups in parallel.
func TestConsumeSerializesAGroup(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	other := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 90*time.Second)
	const queue = "serial"
	if _, err := c.CreateQueue(ctx, queue, client.QueueSettings{}); err != nil {
		t.Fatal(err)
	}
	const groups, perGroup = 4, 4
	var batch []client.OutMessage
	for i := range perGroup {
		for g := range groups {
			batch = append(batch, client.OutMessage{Body: fmt.Appendf(nil, "%d", i), Group: fmt.Sprintf("g%d", g)})
		}
	}
	if _, err := c.SendBatch(ctx, queue, batch); err != nil {
		t.Fatal(err)
	}

	type start struct {
		index   string
		attempt uint32
	}
	var (
		mu          sync.Mutex
		running     = map[string]int{}
		now, most   int
		handled     = map[string][]start{}
		overlaps    []string
		firstCause  error // of the handler whose lease was taken from it
		redelivered bool  // its message was handed out again while it ran
		reported    []error
	)
	h := func(hctx context.Context, m *client.Message) error {
		if err := hctx.Err(); err != nil {
			return fmt.Errorf("message %s of %s attempt %d started with its context ended: %w", m.Body, m.Group, m.Receipt.Attempt, err)
		}
		mu.Lock()
		if running[m.Group] > 0 {
			overlaps = append(overlaps, fmt.Sprintf("%s attempt %d of %s started while another of its group ran", m.Body, m.Receipt.Attempt, m.Group))
		}
		running[m.Group]++
		now++
		most = max(most, now)
		handled[m.Group] = append(handled[m.Group], start{string(m.Body), m.Receipt.Attempt})
		mu.Unlock()
		defer func() {
			mu.Lock()
			running[m.Group]--
			now--
			mu.Unlock()
		}()
		if m.Group == "g0" && string(m.Body) == "0" && m.Receipt.Attempt == 1 {
			// The lease ends under this handler, as when a process
			// stalls: the cluster hands the message out again while
			// this handler, ignoring its context, keeps running.
			if err := other.Extend(ctx, queue, time.Millisecond, m.Receipt); err != nil {
				return err
			}
			for f := (&client.MessageFate{}); f.Attempts < 2; time.Sleep(20 * time.Millisecond) {
				var err error
				if f, err = other.Lookup(ctx, queue, client.LookupOptions{ID: m.Receipt.MessageID, Leader: true}); err != nil {
					return err
				}
			}
			mu.Lock()
			redelivered = true
			mu.Unlock()
			// The consumer finds the lease lost when it next extends it.
			select {
			case <-hctx.Done():
			case <-time.After(5 * time.Second):
			}
			time.Sleep(300 * time.Millisecond) // the redelivery waits meanwhile
			mu.Lock()
			firstCause = context.Cause(hctx)
			mu.Unlock()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
		return nil
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(cctx, queue, h, client.WithConcurrency(8), client.WithLease(2*time.Second),
			client.WithPollWait(200*time.Millisecond), client.WithErrorHandler(func(err error) {
				mu.Lock()
				reported = append(reported, err)
				mu.Unlock()
			}))
	}()
	deadline := time.Now().Add(45 * time.Second)
	for {
		info, err := c.GetQueue(ctx, queue)
		if err != nil {
			t.Fatal(err)
		}
		if info.Stats.AckedTotal == groups*perGroup {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 45 s the queue is %+v; want all %d messages acked", info.Stats, groups*perGroup)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Consume after cancel = %v; want nil", err)
	}

	mu.Lock()
	defer mu.Unlock()
	for _, o := range overlaps {
		t.Error(o)
	}
	for g := range groups {
		group := fmt.Sprintf("g%d", g)
		var indexes []string
		for _, s := range handled[group] {
			indexes = append(indexes, s.index)
		}
		want := []string{"0", "1", "2", "3"}
		if group == "g0" {
			want = []string{"0", "0", "1", "2", "3"} // 0 again, after the first handler returned
		}
		if !slices.Equal(indexes, want) {
			t.Errorf("group %s handled as %v (%+v), want %v", group, indexes, handled[group], want)
		}
	}
	if !redelivered {
		t.Error("the message whose lease ran out was not handed out again while its handler ran")
	}
	if !errors.Is(firstCause, client.ErrLeaseLost) {
		t.Errorf("the handler whose message was handed out again saw its context end with %v, want ErrLeaseLost", firstCause)
	}
	if most < 2 {
		t.Errorf("at most %d handler(s) ran at once; want the groups handled in parallel", most)
	}
	var leaseLost bool
	for _, err := range reported {
		leaseLost = leaseLost || errors.Is(err, client.ErrLeaseLost)
	}
	if !leaseLost {
		t.Errorf("reported errors %v; want the stale ack's ErrLeaseLost", reported)
	}
}

// ConsumeExactlyOnce keeps a group's order into the output queue, and
// an output carries the group its handler gives (none unless given).
func TestExactlyOnceKeepsTheGroupOrder(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	c := newClient(t, tc.Addrs())
	ctx := ctxFor(t, 90*time.Second)
	const in, sink, audit = "eo-in", "eo-sink", "eo-audit"
	for _, q := range []string{in, sink, audit} {
		if _, err := c.CreateQueue(ctx, q, client.QueueSettings{}); err != nil {
			t.Fatal(err)
		}
	}
	const groups, perGroup = 3, 5
	var batch []client.OutMessage
	for i := range perGroup {
		for g := range groups {
			batch = append(batch, client.OutMessage{Body: fmt.Appendf(nil, "g%d-%d", g, i), Group: fmt.Sprintf("g%d", g)})
		}
	}
	if _, err := c.SendBatch(ctx, in, batch); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.ConsumeExactlyOnce(cctx, in, func(ctx context.Context, m *client.Message) ([]client.TxEnqueue, error) {
			time.Sleep(20 * time.Millisecond)
			return []client.TxEnqueue{
				{Queue: sink, Message: client.OutMessage{Body: m.Body, Group: m.Group}},
				{Queue: audit, Message: client.OutMessage{Body: m.Body}},
			}, nil
		}, client.WithConcurrency(8), client.WithPollWait(200*time.Millisecond))
	}()
	deadline := time.Now().Add(45 * time.Second)
	for {
		info, err := c.GetQueue(ctx, sink)
		if err != nil {
			t.Fatal(err)
		}
		if info.Stats.EnqueuedTotal == groups*perGroup {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 45 s the sink is %+v; want %d messages", info.Stats, groups*perGroup)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("ConsumeExactlyOnce after cancel = %v; want nil", err)
	}

	// Message ids follow the order the transactions were applied in.
	page, err := c.Peek(ctx, sink, client.PeekOptions{Max: 100, Leader: true})
	if err != nil {
		t.Fatal(err)
	}
	perG := map[string][]string{}
	for _, m := range page.Messages {
		perG[m.Group] = append(perG[m.Group], string(m.Body))
	}
	for g := range groups {
		group := fmt.Sprintf("g%d", g)
		var want []string
		for i := range perGroup {
			want = append(want, fmt.Sprintf("%s-%d", group, i))
		}
		if !slices.Equal(perG[group], want) {
			t.Errorf("sink group %s = %v, want %v", group, perG[group], want)
		}
	}
	if len(perG[""]) != 0 {
		t.Errorf("sink messages without a group: %v; want each with its input's group, as the handler gave", perG[""])
	}
	auditPage, err := c.Peek(ctx, audit, client.PeekOptions{Max: 100, Leader: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range auditPage.Messages {
		if m.Group != "" {
			t.Errorf("audit output %s has group %q; an output the handler gives no group has none", m.Body, m.Group)
		}
	}
	if len(auditPage.Messages) != groups*perGroup {
		t.Errorf("audit has %d messages, want %d", len(auditPage.Messages), groups*perGroup)
	}
}

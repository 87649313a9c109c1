package cluster

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// clockCase is a three-node cluster whose nodes read their wall clocks
// from clocks, so a test can move one node's clock as NTP, an operator or
// a bad host would.
type clockCase struct {
	c      *TestCluster
	clocks []*OffsetClock
	leader *Node
	qc     quorumqpb.QueueClient
}

func startClockCase(t *testing.T) *clockCase {
	t.Helper()
	clocks := []*OffsetClock{{}, {}, {}}
	c := StartTestClusterWith(t, 3, func(i int, cfg *Config) {
		cfg.Clock = clocks[i]
		cfg.AdminAddr = "127.0.0.1:0"
	})
	k := &clockCase{c: c, clocks: clocks}
	k.follow(t)
	return k
}

// follow points the case at the current leader.
func (k *clockCase) follow(t *testing.T) {
	t.Helper()
	k.leader = k.c.Leader(t)
	k.qc = quorumqpb.NewQueueClient(k.c.Conn(t, k.c.Index(k.leader)))
}

// load enqueues to queue "load" through the leader every few milliseconds
// (at most 3000 times) until the returned stop is called, so that the
// leader stamps many commands while its clock is wrong. Errors are
// ignored: leadership may move under it.
func (k *clockCase) load(t *testing.T) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	qc := k.qc
	wg.Go(func() {
		for i := 0; i < 3000; i++ {
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
			_, _ = qc.Enqueue(ctxT(t, 2*time.Second), &quorumqpb.EnqueueRequest{Queue: "load",
				Messages: []*fsmpb.Message{{Body: []byte(fmt.Sprint(i))}}})
		}
	})
	return func() { close(done); wg.Wait() }
}

func (k *clockCase) enqueue(t *testing.T, queue, body string, delay time.Duration) *fsmpb.EnqueueResult {
	t.Helper()
	resp, err := k.qc.Enqueue(ctxT(t, 5*time.Second), &quorumqpb.EnqueueRequest{Queue: queue,
		Messages: []*fsmpb.Message{{Body: []byte(body), DedupId: body, DelayNs: int64(delay)}}})
	if err != nil {
		t.Fatalf("enqueue %s to %s: %v", body, queue, err)
	}
	return resp.GetResults()[0]
}

func (k *clockCase) receive(t *testing.T, queue string, vis, wait time.Duration) []*fsmpb.Delivery {
	t.Helper()
	resp, err := k.qc.Receive(ctxT(t, wait+5*time.Second), &quorumqpb.ReceiveRequest{Queue: queue, Max: 10,
		VisibilityNs: int64(vis), WaitNs: int64(wait)})
	if err != nil {
		t.Fatalf("receive from %s: %v", queue, err)
	}
	return resp.GetDeliveries()
}

// lease enqueues body to queue and leases it for vis.
func (k *clockCase) lease(t *testing.T, queue, body string, vis time.Duration) {
	t.Helper()
	k.enqueue(t, queue, body, 0)
	if ds := k.receive(t, queue, vis, 0); len(ds) != 1 || string(ds[0].GetBody()) != body {
		t.Fatalf("lease of %s: got %v", body, ds)
	}
}

// redeliveredAfter polls queue for up to limit and returns how long it
// took until its message was delivered again (limit+ if it never was).
func (k *clockCase) redeliveredAfter(t *testing.T, queue string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		if len(k.receive(t, queue, time.Minute, 0)) > 0 {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return limit + time.Nanosecond
}

// checkClusterTime fails unless n's applied cluster time is within 2 s of
// the machine's clock.
func checkClusterTime(t *testing.T, n *Node, when string) {
	t.Helper()
	if skew := time.Until(n.fsm.Now()); skew > 2*time.Second || skew < -2*time.Second {
		t.Errorf("%s: cluster time on %s is %v off real time", when, n.ID(), skew.Round(time.Millisecond))
	}
}

// checkTimeHolds moves the clocks with jump under load and checks what
// users rely on: a 60 s lease is not delivered again for the 5 s the test
// watches; a 1 s lease ends within a few seconds; a re-send inside the
// dedup window is a duplicate; the long-poll path sees cluster time; and
// cluster time stays within 2 s of real time.
func checkTimeHolds(t *testing.T, k *clockCase, jump func()) {
	t.Helper()
	k.lease(t, "long", "long-lease", time.Minute)
	k.lease(t, "short", "short-lease", time.Second)
	first := k.enqueue(t, "dedup", "once", 0)

	stop := k.load(t)
	defer stop()
	jump()
	jumped := time.Now()

	k.enqueue(t, "later", "delayed", time.Second)
	polled := time.Now()
	if ds := k.receive(t, "later", time.Minute, 5*time.Second); len(ds) != 1 {
		t.Errorf("a long poll for a message delayed by 1 s got %d messages after %v", len(ds), time.Since(polled).Round(time.Millisecond))
	}
	if after := k.redeliveredAfter(t, "short", 5*time.Second); after > 5*time.Second {
		t.Errorf("a 1 s lease was not over 5 s after the clock moved")
	}
	if res := k.enqueue(t, "dedup", "once", 0); !res.GetDuplicate() || res.GetMessageId() != first.GetMessageId() {
		t.Errorf("re-send inside the dedup window: message %d duplicate=%v, want duplicate of %d", res.GetMessageId(), res.GetDuplicate(), first.GetMessageId())
	}
	if n := k.leader.Available("long"); n != 0 {
		t.Errorf("the long-poll path sees %d messages available in a queue whose only message is leased for 60 s", n)
	}
	if left := 5*time.Second - time.Since(jumped); left > 0 {
		if after := k.redeliveredAfter(t, "long", left); after <= left {
			t.Errorf("a 60 s lease was delivered again %v after the clock moved", (time.Since(jumped)).Round(time.Millisecond))
		}
	}
	checkClusterTime(t, k.leader, "after the jump")
}

// TestLeaderClockForwardJump: the leader's wall clock jumps +1 h under
// load; then leadership moves to a node whose clock is right.
func TestLeaderClockForwardJump(t *testing.T) {
	k := startClockCase(t)
	li := k.c.Index(k.leader)
	checkTimeHolds(t, k, func() { k.clocks[li].Set(time.Hour) })

	old := k.leader
	if _, err := quorumqpb.NewClusterClient(k.c.Conn(t, li)).TransferLeadership(ctxT(t, 10*time.Second), &quorumqpb.TransferLeadershipRequest{}); err != nil {
		t.Fatalf("transfer leadership: %v", err)
	}
	k.follow(t)
	if k.leader == old {
		t.Fatalf("leadership did not move")
	}
	k.enqueue(t, "moved", "m", 0)
	ds := k.receive(t, "moved", time.Minute, 0)
	if len(ds) != 1 {
		t.Fatalf("receive after the move: %v", ds)
	}
	if lasts := time.Until(time.Unix(0, ds[0].GetLeaseUntilUnixNano())); lasts > time.Minute+2*time.Second || lasts < time.Minute-2*time.Second {
		t.Errorf("a 60 s lease taken on the new leader %s ends in %v", k.leader.ID(), lasts.Round(time.Millisecond))
	}
	checkClusterTime(t, k.leader, "after leadership moved")
}

// TestLeaderClockBackwardJump: the leader's wall clock jumps -1 h under
// load. Time must go on: leases end, delayed messages come due.
func TestLeaderClockBackwardJump(t *testing.T) {
	k := startClockCase(t)
	li := k.c.Index(k.leader)
	checkTimeHolds(t, k, func() { k.clocks[li].Set(-time.Hour) })
}

// TestLeaderClockStrobes: the leader's wall clock flips between +1 h and
// -1 h every 20 ms under load.
func TestLeaderClockStrobes(t *testing.T) {
	k := startClockCase(t)
	clock := k.clocks[k.c.Index(k.leader)]
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(done); wg.Wait() }()
	checkTimeHolds(t, k, func() {
		wg.Go(func() {
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for i := 0; i < 3000; i++ { // at most a minute
				select {
				case <-done:
					return
				case <-t.C:
				}
				clock.Set(time.Duration(1-2*(i%2)) * time.Hour)
			}
		})
	})
}

// TestStatusShowsTheClockOffsetTheLeaderSees: a follower's clock is an
// hour ahead; Status, asked on either follower, shows every node's offset
// as the leader measures it, and the leader's metrics show it too.
func TestStatusShowsTheClockOffsetTheLeaderSees(t *testing.T) {
	k := startClockCase(t)
	li := k.c.Index(k.leader)
	fast, other := (li+1)%3, (li+2)%3
	k.clocks[fast].Set(time.Hour)
	want := map[string]time.Duration{k.leader.ID(): 0, k.c.Nodes[fast].ID(): time.Hour, k.c.Nodes[other].ID(): 0}
	near := func(got, want time.Duration) bool { return got-want < time.Second && want-got < time.Second }

	var last string
	deadline := time.Now().Add(15 * time.Second)
	for ok := false; !ok; {
		if time.Now().After(deadline) {
			t.Fatalf("status never showed the offsets %v; last: %s", want, last)
		}
		time.Sleep(200 * time.Millisecond)
		st, err := quorumqpb.NewClusterClient(k.c.Conn(t, other)).Status(ctxT(t, 5*time.Second), &quorumqpb.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ok, last = true, ""
		for _, ns := range st.GetNodes() {
			last += fmt.Sprintf("%s=%v ", ns.GetId(), time.Duration(ns.GetClockOffsetNs()))
			ok = ok && ns.ClockOffsetNs != nil && near(time.Duration(ns.GetClockOffsetNs()), want[ns.GetId()])
		}
	}
	t.Logf("status offsets: %s", last)
	m := scrape(t, k.leader.AdminAddr())
	for id, w := range want {
		name := fmt.Sprintf("quorumq_clock_offset_seconds{node=%q}", id)
		if v, ok := m[name]; !ok || !near(time.Duration(v*float64(time.Second)), w) {
			t.Errorf("%s = %v (present %v), want about %v", name, v, ok, w.Seconds())
		}
	}
}

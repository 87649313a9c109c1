package fsm

import (
	"testing"
	"time"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestWatch(t *testing.T) {
	h := newHarness(t)
	now := time.Unix(0, t0)

	avail, ch, next := h.f.Watch("q", now)
	if avail || !next.IsZero() || closed(ch) {
		t.Fatalf("unknown queue: available %v next %v closed %v", avail, next, closed(ch))
	}
	h.ok(createQ("q", nil))
	if !closed(ch) {
		t.Fatal("creating the queue did not close the channel")
	}

	_, ch, _ = h.f.Watch("q", now)
	h.ok(enq("q", delayed("later", 10*time.Second)))
	if !closed(ch) {
		t.Fatal("enqueue did not close the channel")
	}
	avail, ch, next = h.f.Watch("q", now)
	if avail || !next.Equal(now.Add(10*time.Second)) {
		t.Fatalf("delayed only: available %v next %v, want false, now+10s", avail, next)
	}
	if avail, _, _ := h.f.Watch("q", now.Add(10*time.Second)); !avail {
		t.Fatal("delayed message due at now is not available")
	}

	// A receive on an empty-at-now queue does not wake waiters; an ack does not either.
	h.ok(recvCmd(recv("q", 1)))
	if closed(ch) {
		t.Fatal("a receive that made nothing available closed the channel")
	}

	// A lease: next is its end; an expired lease counts as available.
	h.at(10 * time.Second)
	r := h.ok(recvCmd(recv("q", 1)))
	leaseEnd := time.Unix(0, r.Deliveries[0].LeaseUntilUnixNano)
	avail, ch, next = h.f.Watch("q", h.f.Now())
	if avail || !next.Equal(leaseEnd) {
		t.Fatalf("leased only: available %v next %v, want false, %v", avail, next, leaseEnd)
	}
	if avail, _, _ := h.f.Watch("q", leaseEnd); !avail {
		t.Fatal("expired lease is not available")
	}
	h.ok(nackCmd("q", 0, r.Deliveries[0].Receipt))
	if !closed(ch) {
		t.Fatal("nack did not close the channel")
	}
	if avail, _, _ := h.f.Watch("q", h.f.Now()); !avail {
		t.Fatal("nacked message is not available")
	}
}

func TestWatchClosedByRestore(t *testing.T) {
	src := newHarness(t)
	src.ok(enqCreate("q", "a"))
	h := newHarness(t)
	_, ch, _ := h.f.Watch("q", time.Unix(0, t0))
	if err := h.f.Restore(persist(t, src.f)); err != nil {
		t.Fatal(err)
	}
	if !closed(ch) {
		t.Fatal("Restore did not close the channel")
	}
	if avail, _, _ := h.f.Watch("q", time.Unix(0, t0)); !avail {
		t.Fatal("restored message not available")
	}
}

func TestAvailableCountsWhatAReceiveWouldFind(t *testing.T) {
	h := newHarness(t)
	now := time.Unix(0, t0)
	if n := h.f.Available("q", now); n != 0 {
		t.Fatalf("unknown queue: Available %d, want 0", n)
	}
	h.ok(createQ("q", nil))
	h.ok(enq("q", msg("a", ""), msg("b", ""), msg("c", ""), delayed("later", 10*time.Second)))
	if n := h.f.Available("q", now); n != 3 {
		t.Fatalf("3 ready and 1 delayed: Available %d, want 3", n)
	}
	h.ok(recvCmd(recv("q", 3)))
	if n := h.f.Available("q", now); n != 0 {
		t.Fatalf("all ready ones leased, the delayed one not due: Available %d, want 0", n)
	}
	if n := h.f.Available("q", now.Add(10*time.Second)); n != 1 {
		t.Fatalf("the delayed message is due: Available %d, want 1 (a lower bound)", n)
	}
}

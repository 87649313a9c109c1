package client

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// feed hands ms to d the way Consume's loop hands it what a receive
// returns: as many at a time as d has reserved, then waits for all.
func feed(d *dispatcher, ms []*Message) {
	ctx := context.Background()
	for len(ms) > 0 {
		n := d.reserve(ctx, len(ms))
		for _, m := range ms[:n] {
			d.dispatch(pending{m: m, ctx: ctx})
		}
		ms = ms[n:]
	}
	d.wait()
}

// handled records what a dispatcher's handlers did: when each started
// and ended, which overlapped within a group, and how many ran at once.
type handled struct {
	mu       sync.Mutex
	running  map[string]int
	now, max int
	order    map[string][]uint64
	started  map[uint64]time.Time
	ended    map[uint64]time.Time
	overlaps []string
}

func newHandled() *handled {
	return &handled{running: map[string]int{}, order: map[string][]uint64{}, started: map[uint64]time.Time{}, ended: map[uint64]time.Time{}}
}

// run is a handler that takes d(id) to finish.
func (h *handled) run(d func(id uint64) time.Duration) func(pending) {
	return func(p pending) {
		id, g := p.m.Receipt.MessageID, p.m.Group
		h.mu.Lock()
		if g != "" && h.running[g] > 0 {
			h.overlaps = append(h.overlaps, fmt.Sprintf("message %d of group %q started while another of its group ran", id, g))
		}
		h.running[g]++
		h.now++
		h.max = max(h.max, h.now)
		h.order[g] = append(h.order[g], id)
		h.started[id] = time.Now()
		h.mu.Unlock()
		time.Sleep(d(id))
		h.mu.Lock()
		h.running[g]--
		h.now--
		h.ended[id] = time.Now()
		h.mu.Unlock()
	}
}

func msgs(groups ...string) []*Message {
	out := make([]*Message, len(groups))
	for i, g := range groups {
		out[i] = &Message{Receipt: Receipt{MessageID: uint64(i + 1), Attempt: 1}, Group: g}
	}
	return out
}

// A server that hands out several messages of one group at once (one
// that does not order groups, or a redelivery after a lost lease) still
// gets them handled one at a time in the order they came, while other
// groups and messages without a group run beside them; nothing is kept
// for a group once it is idle, and every slot is free again at the end.
func TestDispatcherRunsAGroupInOrderAndOthersBeside(t *testing.T) {
	const concurrency = 4
	groups := []string{"a", "a", "b", "a", "", "c", "b", "a", "", "c", "c", "a", "b", "", "a", "b", "c", "a"}
	h := newHandled()
	d := newDispatcher(concurrency, h.run(func(uint64) time.Duration { return 5 * time.Millisecond }))
	feed(d, msgs(groups...))

	for _, o := range h.overlaps {
		t.Error(o)
	}
	for g, ids := range h.order {
		if g != "" && !slices.IsSorted(ids) {
			t.Errorf("group %q handled in order %v, want the order of arrival", g, ids)
		}
	}
	if n := len(h.order["a"]) + len(h.order["b"]) + len(h.order["c"]) + len(h.order[""]); n != len(groups) {
		t.Errorf("%d messages handled, want %d", n, len(groups))
	}
	if h.max < 2 || h.max > concurrency {
		t.Errorf("at most %d handlers ran at once, want 2..%d: groups run in parallel within the limit", h.max, concurrency)
	}
	if n := d.busyGroups(); n != 0 {
		t.Errorf("%d idle group(s) still kept after every handler returned", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if n := d.reserve(ctx, concurrency); n != concurrency {
		t.Errorf("reserve after the run = %d, want all %d slots free", n, concurrency)
	}
}

// A delivery waiting behind its group's slow handler holds no handler
// slot: the other groups' messages are handled meanwhile.
func TestDispatcherWaitingGroupDoesNotHoldOthersBack(t *testing.T) {
	// 1 and 2 are of group a; 1 is slow. 3, 4 and 5 are of group b.
	h := newHandled()
	d := newDispatcher(2, h.run(func(id uint64) time.Duration {
		if id == 1 {
			return 300 * time.Millisecond
		}
		return 10 * time.Millisecond
	}))
	feed(d, msgs("a", "a", "b", "b", "b"))

	for _, o := range h.overlaps {
		t.Error(o)
	}
	if !h.started[2].After(h.ended[1]) && !h.started[2].Equal(h.ended[1]) {
		t.Errorf("message 2 started %v before message 1 of its group ended", h.ended[1].Sub(h.started[2]))
	}
	if !h.ended[5].Before(h.ended[1]) {
		t.Errorf("group b's last message ended %v after group a's slow handler; want it handled meanwhile", h.ended[5].Sub(h.ended[1]))
	}
}

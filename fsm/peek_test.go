package fsm

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/fsm/limits"
)

func peekIDs(ms []*fsmpb.PeekedMessage) []uint64 {
	var ids []uint64
	for _, m := range ms {
		ids = append(ids, m.GetId())
	}
	return ids
}

// A peek shows each live message's state, attempts, body, attributes and
// nack reason, filters by state, pages by id, and changes nothing: the
// state hash and the stats are the same after it.
func TestPeekShowsStatesAndChangesNothing(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	withAttr := msg("a", "d-1")
	withAttr.Attributes = []*fsmpb.Attribute{{Key: "k", Value: "v"}}
	h.ok(enq("q", withAttr, msg("b", ""), msg("c", ""), delayed("later", time.Hour), msg("e", "")))
	h.ok(ackCmd("q", h.ok(recvCmd(recv("q", 1))).Deliveries[0].Receipt)) // id 1 acked: a tombstone
	d := h.ok(recvCmd(recv("q", 1))).Deliveries[0]                       // id 2 leased
	h.ok(nackWhy("q", "bad schema", d.Receipt))                          // id 2 ready again, attempt 1
	h.ok(recvCmd(recv("q", 1)))                                          // id 2 leased again, attempt 2

	before := h.f.StateHash()
	stats := h.stats("q")
	all, next, err := h.f.Peek("q", PeekOptions{Max: 10})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := peekIDs(all), []uint64{2, 3, 4, 5}; !slices.Equal(got, want) || next != 0 {
		t.Fatalf("peek all: ids %v next %d, want %v next 0", got, next, want)
	}
	want := []struct {
		state    fsmpb.PeekState
		attempts uint32
		body     string
		nack     string
	}{
		{fsmpb.PeekState_PEEK_LEASED, 2, "b", "bad schema"},
		{fsmpb.PeekState_PEEK_READY, 0, "c", ""},
		{fsmpb.PeekState_PEEK_DELAYED, 0, "later", ""},
		{fsmpb.PeekState_PEEK_READY, 0, "e", ""},
	}
	for i, w := range want {
		m := all[i]
		if m.GetState() != w.state || m.GetAttempts() != w.attempts || string(m.GetBody()) != w.body ||
			m.GetBodySize() != uint64(len(w.body)) || m.GetLastNackReason() != w.nack {
			t.Errorf("message %d: %v, want state %v attempts %d body %q nack %q", m.GetId(), m, w.state, w.attempts, w.body, w.nack)
		}
	}
	if all[0].GetAtUnixNano() <= h.now || all[2].GetAtUnixNano() <= h.now {
		t.Errorf("lease end %d / delay end %d not after now %d", all[0].GetAtUnixNano(), all[2].GetAtUnixNano(), h.now)
	}
	leased, _, _ := h.f.Peek("q", PeekOptions{Max: 10, State: fsmpb.PeekState_PEEK_LEASED})
	if got := peekIDs(leased); !slices.Equal(got, []uint64{2}) {
		t.Errorf("peek leased: %v, want [2]", got)
	}
	page, next, _ := h.f.Peek("q", PeekOptions{Max: 2, State: fsmpb.PeekState_PEEK_READY, NoBody: true})
	if got := peekIDs(page); !slices.Equal(got, []uint64{3, 5}) || next != 0 {
		t.Errorf("peek ready max 2: %v next %d, want [3 5] next 0", got, next)
	}
	if len(page[0].GetBody()) != 0 || page[0].GetBodySize() != 1 {
		t.Errorf("no-body peek: body %q size %d, want none and 1", page[0].GetBody(), page[0].GetBodySize())
	}
	if h.f.StateHash() != before || !proto.Equal(h.stats("q"), stats) {
		t.Fatal("peek changed the state")
	}

	// The lease of id 2 runs out: it is ready again, as the stats count it.
	h.at(time.Hour - time.Second)
	h.ok(tickCmd())
	expired, _, _ := h.f.Peek("q", PeekOptions{Max: 1, From: 2})
	if len(expired) != 1 || expired[0].GetState() != fsmpb.PeekState_PEEK_READY {
		t.Errorf("expired lease peeks as %v, want ready", expired)
	}
}

// Paging by id covers every live message exactly once, whatever the page
// size.
func TestPeekPagesCoverEveryMessageOnce(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	for range 7 {
		h.ok(enq("q", msg("x", "")))
	}
	h.ok(ackCmd("q", h.ok(recvCmd(recv("q", 1))).Deliveries[0].Receipt))
	for size := 1; size <= 7; size++ {
		var seen []uint64
		from := uint64(0)
		for pages := 0; ; pages++ {
			if pages > 10 {
				t.Fatalf("page size %d: no end after %d pages", size, pages)
			}
			ms, next, err := h.f.Peek("q", PeekOptions{From: from, Max: size})
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, peekIDs(ms)...)
			if next == 0 {
				break
			}
			from = next
		}
		if want := []uint64{2, 3, 4, 5, 6, 7}; !slices.Equal(seen, want) {
			t.Errorf("page size %d: saw %v, want %v", size, seen, want)
		}
	}
}

// A dead letter shows its origin; a dead message (no queue to go to)
// shows as dead, and only the dead filter finds it.
func TestPeekShowsDeadLetters(t *testing.T) {
	h := poisonState(t)
	h.at(2 * time.Minute)
	h.ok(recvCmd(recv("w", 1)))
	dl, _, err := h.f.Peek("dlq", PeekOptions{Max: 10})
	if err != nil || len(dl) != 1 {
		t.Fatalf("peek dlq: %v %v", dl, err)
	}
	if o := dl[0].GetDeadLetter(); o.GetSourceQueue() != "w" || o.GetReason() != fsmpb.DeadLetterReason_DEAD_LETTER_MAX_DELIVERIES || o.GetLastNackReason() != "bad schema" || dl[0].GetDedupId() != "order-42" {
		t.Errorf("dead letter peeks as %v", dl[0])
	}

	h2 := newHarness(t)
	h2.ok(createQ("n", settingsOf(func(s *fsmpb.QueueSettings) { s.MaxDeliveries = proto.Uint32(1) })))
	h2.ok(enq("n", msg("p", ""), msg("ok", "")))
	h2.ok(recvCmd(recv("n", 1)))
	h2.at(time.Hour)
	h2.ok(recvCmd(recv("n", 2))) // id 1 dies (no DLQ), id 2 leased
	dead, _, _ := h2.f.Peek("n", PeekOptions{Max: 10, State: fsmpb.PeekState_PEEK_DEAD})
	if len(dead) != 1 || dead[0].GetId() != 1 || dead[0].GetState() != fsmpb.PeekState_PEEK_DEAD || dead[0].GetDeadLetter().GetSourceQueue() != "n" {
		t.Errorf("peek dead: %v, want id 1 dead from n", dead)
	}
}

// A peek over the limit, of an unknown queue or with an unknown state
// filter is refused naming what is wrong.
func TestPeekRefusals(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	for _, tc := range []struct {
		queue string
		o     PeekOptions
		err   error
		want  string
	}{
		{"q", PeekOptions{Max: limits.MaxPeek + 1}, ErrInvalidArgument, "max: 101, limit is 1 to 100"},
		{"q", PeekOptions{Max: 0}, ErrInvalidArgument, "max: 0, limit is 1 to 100"},
		{"q", PeekOptions{Max: 1, State: 9}, ErrInvalidArgument, "state: 9"},
		{"nope", PeekOptions{Max: 1}, ErrQueueNotFound, `"nope"`},
	} {
		_, _, err := h.f.Peek(tc.queue, tc.o)
		if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Peek(%q, %+v): %v, want %v naming %q", tc.queue, tc.o, err, tc.err, tc.want)
		}
	}
}

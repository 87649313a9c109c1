package fsm

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"
	"weak"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// TestDrainedBodiesBecomeGarbage fills a queue with large messages,
// receives every one with a request ID and acks it, and checks that no
// body of an acked message is reachable from the state any more (a weak
// pointer to each is cleared by one collection) and that the heap is back
// near its size before the fill, while every dedup ID, request ID and
// receipt still gets its answer until the dedup window ends.
func TestDrainedBodiesBecomeGarbage(t *testing.T) {
	const (
		n     = 256
		batch = 16
		size  = 256 << 10
	)
	h := newHarness(t)
	h.ok(createQ("q", nil))
	before := heapAlloc()

	for i := 0; i < n; i += batch {
		var ms []*fsmpb.Message
		for j := i; j < i+batch; j++ {
			body := make([]byte, size)
			body[0] = byte(j)
			ms = append(ms, &fsmpb.Message{Body: body, DedupId: fmt.Sprintf("d%03d", j)})
		}
		h.ok(enq("q", ms...))
	}
	filled := heapAlloc()

	// Half the batches are acked by an Ack, half by the next Receive.
	var (
		bodies   []weak.Pointer[byte]
		receipts []*fsmpb.Receipt
		pending  []*fsmpb.Receipt
	)
	for r := 0; ; r++ {
		res := h.ok(recvCmd(&fsmpb.Receive{Queue: "q", Max: batch, RequestId: fmt.Sprintf("r%02d", r), Ack: pending}))
		pending = nil
		for _, d := range res.Deliveries {
			bodies = append(bodies, weak.Make(&d.Body[0]))
			pending = append(pending, d.Receipt)
		}
		receipts = append(receipts, pending...)
		if len(res.Deliveries) == 0 {
			break
		}
		if r%2 == 0 {
			h.ok(ackCmd("q", pending...))
			pending = nil
		}
	}
	if len(bodies) != n {
		t.Fatalf("received %d messages, want %d", len(bodies), n)
	}
	if st := h.stats("q"); st.Ready+st.Leased+st.Delayed != 0 || st.AckedTotal != n {
		t.Fatalf("after the drain: %v", st)
	}

	drained := heapAlloc()
	t.Logf("heap: %d KiB before the fill, %d KiB filled, %d KiB drained", before>>10, filled>>10, drained>>10)
	var alive int
	for _, b := range bodies {
		if b.Value() != nil {
			alive++
		}
	}
	if alive > 0 {
		t.Errorf("%d of %d bodies of acked messages are still reachable", alive, n)
	}
	if grown := int64(drained) - int64(before); grown > n*size/16 {
		t.Errorf("heap grew by %d KiB through the fill and drain, want under %d KiB (1/16 of the bodies)", grown>>10, n*size/16>>10)
	}

	for j := range n {
		r := h.ok(enq("q", msg("again", fmt.Sprintf("d%03d", j))))
		if e := r.Enqueued[0]; !e.Duplicate || e.MessageId != uint64(j+1) {
			t.Fatalf("dedup ID d%03d after the drain: %v, want duplicate of %d", j, e, j+1)
		}
	}
	for r := 0; r < n/batch; r++ {
		if res := h.ok(recvCmd(&fsmpb.Receive{Queue: "q", Max: batch, RequestId: fmt.Sprintf("r%02d", r)})); !res.Replayed {
			t.Fatalf("request ID r%02d after the drain: %v, want it replayed", r, res)
		}
	}
	for _, o := range h.ok(ackCmd("q", receipts...)).Outcomes {
		if o != fsmpb.AckOutcome_ACK_OK {
			t.Fatalf("a repeated ack after the drain is %v, want ACK_OK", o)
		}
	}
	runtime.KeepAlive(h)
}

// TestRefreshChangesNothing feeds one random log, over a queue whose trees
// grow several levels deep, to two FSMs, one of which refreshes every
// queue's trees after every entry: the answers, the invariants and the
// state hashes stay the same.
func TestRefreshChangesNothing(t *testing.T) {
	r := newRand(11)
	a, b := New(), New()
	var (
		idx      uint64
		now      = t0
		receipts []*fsmpb.Receipt
		next     int
	)
	apply := func(cmd *fsmpb.Command) *fsmpb.Result {
		idx++
		cmd.NowUnixNano = now
		data, err := Encode(cmd)
		if err != nil {
			t.Fatal(err)
		}
		l := &raft.Log{Index: idx, Type: raft.LogCommand, Data: data}
		res := a.Apply(l).(*fsmpb.Result)
		if resB := b.Apply(l).(*fsmpb.Result); !proto.Equal(res, resB) {
			t.Fatalf("index %d: the refreshing FSM answered %v, the other %v", idx, resB, res)
		}
		b.mu.Lock()
		b.queues.Scan(func(q *queue) bool {
			q.refresh()
			return true
		})
		b.queues = refreshed(b.queues)
		b.mu.Unlock()
		return res
	}
	pick := func(n int) []*fsmpb.Receipt {
		var out []*fsmpb.Receipt
		for range 1 + r.IntN(n) {
			if len(receipts) > 0 {
				out = append(out, receipts[r.IntN(len(receipts))])
			}
		}
		return out
	}
	apply(createQ("q", nil))
	for range 2000 {
		now += int64(r.IntN(int(500 * time.Millisecond)))
		switch k := r.IntN(10); {
		case k < 4:
			var ms []*fsmpb.Message
			for range 1 + r.IntN(20) {
				ms = append(ms, msg("m", fmt.Sprintf("d%05d", next)))
				next++
			}
			apply(enq("q", ms...))
		case k < 6:
			res := apply(recvCmd(&fsmpb.Receive{Queue: "q", Max: uint32(1 + r.IntN(20)), RequestId: fmt.Sprintf("r%d", r.IntN(300)), Ack: pick(5)}))
			for _, d := range res.Deliveries {
				receipts = append(receipts, d.Receipt)
			}
		case k < 8:
			apply(ackCmd("q", pick(20)...))
		case k < 9:
			apply(nackCmd("q", time.Duration(r.IntN(3))*time.Second, pick(3)...))
		default:
			apply(extendCmd("q", time.Minute, pick(3)...))
		}
		if idx%200 == 0 {
			apply(tickCmd())
		}
		if idx%100 == 0 {
			checkInvariants(t, b)
			if a.StateHash() != b.StateHash() {
				t.Fatalf("index %d: the refreshing FSM's state hash differs", idx)
			}
		}
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if q := b.get("q"); q.msgs.Len() < 64*64 || q.dedup.Len() < 64*64 {
		t.Fatalf("msgs %d, dedup %d entries: want trees three levels deep", q.msgs.Len(), q.dedup.Len())
	}
}

// TestRefreshWhilePersisting drains a queue, which refreshes its trees,
// while a snapshot taken before the drain is persisted: the snapshot is
// still the state it was taken from (run with -race to see that the two
// share nothing they write).
func TestRefreshWhilePersisting(t *testing.T) {
	const n = 4096
	h := newHarness(t)
	h.ok(createQ("q", nil))
	for i := 0; i < n; i += 1000 {
		var ms []*fsmpb.Message
		for j := i; j < min(i+1000, n); j++ {
			ms = append(ms, &fsmpb.Message{Body: make([]byte, 64), DedupId: fmt.Sprintf("d%05d", j)})
		}
		h.ok(enq("q", ms...))
	}
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	want := h.f.StateHash()
	var persisted memSink
	done := make(chan error)
	go func() { done <- snap.Persist(&persisted) }()
	for {
		r := h.ok(recvCmd(recv("q", 1000)))
		if len(r.Deliveries) == 0 {
			break
		}
		var rs []*fsmpb.Receipt
		for _, d := range r.Deliveries {
			rs = append(rs, d.Receipt)
		}
		h.ok(ackCmd("q", rs...))
		// With bodies in the store a drain releases too little memory to
		// be due a refresh (refreshDue), so refresh as apply does.
		h.f.mu.Lock()
		h.f.get("q").refresh()
		h.f.mu.Unlock()
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(persisted.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if g.StateHash() != want {
		t.Fatal("a snapshot persisted while the trees were refreshed is not the state it was taken from")
	}
}

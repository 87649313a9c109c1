package jepsen

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// hist builds hand-made histories for the checker tests.
type hist struct {
	ops []Op
	now int64
}

func (h *hist) add(o Op) {
	h.now += 10
	o.Start, o.End = h.now, h.now+5
	if o.Workload == "" {
		o.Workload = "w"
	}
	if o.Status == "" {
		o.Status = StatusOK
	}
	h.ops = append(h.ops, o)
}

func (h *hist) send(q, producer string, seq int, v string, st Status, id uint64) {
	h.add(Op{Kind: KindSend, Queue: q, Producer: producer, Seq: seq, Value: v, DedupID: v, Status: st, MessageID: id})
}

func (h *hist) recv(q string, ds ...Delivered) {
	h.add(Op{Kind: KindReceive, Queue: q, Delivered: ds})
}

func d(v string, id uint64) Delivered { return Delivered{Value: v, MessageID: id, Attempt: 1} }

// healthy is a history every mode accepts: three values sent and each
// delivered exactly once, one send unknown but delivered (recovered), one
// send failed and not delivered.
func healthy() *hist {
	h := &hist{}
	h.send("q", "p0", 1, "p0-1", StatusOK, 1)
	h.send("q", "p0", 2, "p0-2", StatusUnknown, 0)
	h.send("q", "p0", 3, "p0-3", StatusOK, 3)
	h.send("q", "p0", 4, "p0-4", StatusFail, 0)
	h.recv("q", d("p0-1", 1), d("p0-2", 2))
	h.recv("q", d("p0-3", 3))
	return h
}

func TestCheckQueueAcceptsHealthyHistory(t *testing.T) {
	for _, mode := range []Mode{AtLeastOnce, ExactlyOnce, AtMostOnce} {
		r := CheckQueue(healthy().ops, QueueSpec{Workload: "w", Mode: mode, Source: "q", Sink: "q"})
		if !r.Valid {
			t.Fatalf("%s: healthy history rejected: %v", mode, r.Problems)
		}
		if r.Attempted != 4 || r.OK != 2 || r.Unknown != 1 || r.Failed != 1 || r.Recovered != 1 || r.Delivered != 3 {
			t.Fatalf("%s: counts %+v", mode, r)
		}
	}
}

func TestCheckQueueRejectsLostMessage(t *testing.T) {
	h := healthy()
	h.send("q", "p0", 5, "p0-5", StatusOK, 5) // acknowledged, never delivered
	for _, mode := range []Mode{AtLeastOnce, ExactlyOnce} {
		r := CheckQueue(h.ops, QueueSpec{Workload: "w", Mode: mode, Source: "q", Sink: "q"})
		if r.Valid || r.Lost != 1 || r.LostValues[0] != "p0-5" {
			t.Fatalf("%s: lost message not rejected: valid=%v lost=%d %v", mode, r.Valid, r.Lost, r.LostValues)
		}
		t.Logf("%s rejects: %v (lost %v)", mode, r.Problems, r.LostValues)
	}
	// At-most-once tolerates loss but still counts it.
	r := CheckQueue(h.ops, QueueSpec{Workload: "w", Mode: AtMostOnce, Source: "q", Sink: "q"})
	if !r.Valid || r.Lost != 1 {
		t.Fatalf("at-most-once: valid=%v lost=%d, want valid with lost=1", r.Valid, r.Lost)
	}
}

func TestCheckQueueRejectsDuplicatedMessage(t *testing.T) {
	h := healthy()
	h.recv("q", d("p0-1", 1)) // delivered a second time
	r := CheckQueue(h.ops, QueueSpec{Workload: "w", Mode: AtMostOnce, Source: "q", Sink: "q"})
	if r.Valid || r.Duplicated != 1 {
		t.Fatalf("at-most-once: duplicate delivery not rejected: valid=%v duplicated=%d", r.Valid, r.Duplicated)
	}
	t.Logf("at-most-once rejects: %v (%v)", r.Problems, r.DuplicatedValues)
	// At-least-once allows redelivery and reports it.
	r = CheckQueue(h.ops, QueueSpec{Workload: "w", Mode: AtLeastOnce, Source: "q", Sink: "q"})
	if !r.Valid || r.Duplicated != 1 {
		t.Fatalf("at-least-once: valid=%v duplicated=%d, want valid with duplicated=1", r.Valid, r.Duplicated)
	}
}

func TestCheckQueueRejectsValueTwiceInPipelineSink(t *testing.T) {
	h := healthy()
	// The pipeline moved p0-1 to the sink twice, as two messages.
	h.recv("b", d("p0-1", 10), d("p0-2", 11), d("p0-3", 12))
	h.recv("b", d("p0-1", 13))
	r := CheckQueue(h.ops, QueueSpec{Workload: "w", Mode: ExactlyOnce, Source: "q", Sink: "b"})
	if r.Valid || r.Duplicated != 1 || r.DoubleEnqueued != 1 {
		t.Fatalf("value twice in sink not rejected: valid=%v duplicated=%d double=%d", r.Valid, r.Duplicated, r.DoubleEnqueued)
	}
	t.Logf("exactly-once rejects: %v (%v)", r.Problems, r.DoubleEnqValues)
	// The same sink message delivered twice is the sink consumer's
	// redelivery, not a pipeline duplicate.
	h = healthy()
	h.recv("b", d("p0-1", 10), d("p0-2", 11), d("p0-3", 12))
	h.recv("b", d("p0-1", 10))
	r = CheckQueue(h.ops, QueueSpec{Workload: "w", Mode: ExactlyOnce, Source: "q", Sink: "b"})
	if !r.Valid || r.Redelivered != 1 {
		t.Fatalf("sink redelivery: valid=%v redelivered=%d problems=%v", r.Valid, r.Redelivered, r.Problems)
	}
}

func TestCheckQueueRejectsDedupIDEnqueuedTwice(t *testing.T) {
	h := healthy()
	h.recv("q", d("p0-3", 7)) // same value (same dedup ID), second message ID
	r := CheckQueue(h.ops, QueueSpec{Workload: "w", Mode: AtLeastOnce, Source: "q", Sink: "q"})
	if r.Valid || r.DoubleEnqueued != 1 {
		t.Fatalf("double enqueue not rejected: valid=%v double=%d", r.Valid, r.DoubleEnqueued)
	}
	t.Logf("rejects: %v (%v)", r.Problems, r.DoubleEnqValues)
}

func TestCheckQueueRejectsUnexpectedMessage(t *testing.T) {
	for name, extra := range map[string]Delivered{
		"never sent":  d("p9-1", 9),
		"send failed": d("p0-4", 4),
	} {
		h := healthy()
		h.recv("q", extra)
		for _, mode := range []Mode{AtLeastOnce, ExactlyOnce, AtMostOnce} {
			r := CheckQueue(h.ops, QueueSpec{Workload: "w", Mode: mode, Source: "q", Sink: "q"})
			if r.Valid || r.Unexpected != 1 || !strings.Contains(r.UnexpectedValues[0], name) {
				t.Fatalf("%s/%s: unexpected value not rejected: valid=%v unexpected=%d %v", name, mode, r.Valid, r.Unexpected, r.UnexpectedValues)
			}
			t.Logf("%s/%s rejects: %v (%v)", name, mode, r.Problems, r.UnexpectedValues)
		}
	}
}

func TestCheckQueueRejectsProducerReordering(t *testing.T) {
	h := &hist{}
	h.send("q", "p0", 1, "p0-1", StatusOK, 5)
	h.send("q", "p0", 2, "p0-2", StatusOK, 4) // later send, lower message ID
	h.recv("q", d("p0-2", 4), d("p0-1", 5))
	r := CheckQueue(h.ops, QueueSpec{Workload: "w", Mode: AtLeastOnce, Source: "q", Sink: "q"})
	if r.Valid || r.OrderViolations != 1 {
		t.Fatalf("reordering not rejected: valid=%v violations=%d", r.Valid, r.OrderViolations)
	}
	t.Logf("rejects: %v (%v)", r.Problems, r.OrderExamples)
}

// fifoOp builds one FIFO workload operation with explicit call and return
// times.
func fifoOp(worker, kind, v string, start, end int64, st Status, got ...string) Op {
	o := Op{Workload: "fifo", Worker: worker, Kind: kind, Queue: "f0", Value: v, Start: start, End: end, Status: st}
	for _, g := range got {
		o.Delivered = append(o.Delivered, Delivered{Value: g})
	}
	return o
}

func TestCheckFIFOAcceptsLinearizableHistory(t *testing.T) {
	ops := []Op{
		fifoOp("p", KindEnqueue, "a", 0, 10, StatusOK),
		fifoOp("p", KindEnqueue, "b", 20, 30, StatusOK),
		fifoOp("c", KindDequeue, "", 5, 25, StatusOK, "a"), // overlaps both enqueues
		fifoOp("p", KindEnqueue, "c", 40, 50, StatusUnknown),
		fifoOp("c", KindDequeue, "", 60, 70, StatusOK, "b"),
		fifoOp("c", KindDequeue, "", 80, 90, StatusOK, "c"), // the unknown enqueue happened
		fifoOp("c", KindDequeue, "", 100, 110, StatusOK),    // empty
		fifoOp("c", KindDequeue, "", 120, 130, StatusFail, "x"),
	}
	viz := filepath.Join(t.TempDir(), "fifo.html")
	r, err := CheckFIFO(ops, "fifo", 10*time.Second, viz)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Valid || r.Result != "Ok" || r.Operations != 7 || r.Unknown != 1 {
		t.Fatalf("linearizable history: %+v", r)
	}
}

func TestCheckFIFORejectsNonLinearizableHistory(t *testing.T) {
	cases := map[string][]Op{
		// a was enqueued strictly before b, yet b came out first.
		"reordered": {
			fifoOp("p", KindEnqueue, "a", 0, 10, StatusOK),
			fifoOp("p", KindEnqueue, "b", 20, 30, StatusOK),
			fifoOp("c", KindDequeue, "", 40, 50, StatusOK, "b"),
		},
		// the queue held a (enqueued and acknowledged) but a dequeue
		// starting afterwards saw it empty: a stale read.
		"stale empty": {
			fifoOp("p", KindEnqueue, "a", 0, 10, StatusOK),
			fifoOp("c", KindDequeue, "", 20, 30, StatusOK),
			fifoOp("c", KindDequeue, "", 40, 50, StatusOK, "a"),
		},
		// a delivered twice by auto-ack dequeues.
		"double dequeue": {
			fifoOp("p", KindEnqueue, "a", 0, 10, StatusOK),
			fifoOp("c", KindDequeue, "", 20, 30, StatusOK, "a"),
			fifoOp("d", KindDequeue, "", 40, 50, StatusOK, "a"),
		},
		// a value whose enqueue definitely failed came out.
		"failed enqueue seen": {
			fifoOp("p", KindEnqueue, "a", 0, 10, StatusFail),
			fifoOp("c", KindDequeue, "", 20, 30, StatusOK, "a"),
		},
	}
	for name, ops := range cases {
		r, err := CheckFIFO(ops, "fifo", 10*time.Second, filepath.Join(t.TempDir(), "fifo.html"))
		if err != nil {
			t.Fatal(err)
		}
		if r.Valid || r.Result != "Illegal" {
			t.Errorf("%s: non-linearizable history accepted: %+v", name, r)
		}
		t.Logf("%s: porcupine says %s", name, r.Result)
	}
}

// pipeMsg is one message of a pipelined producer in a hand-made history:
// how its send ended, the message ID the answer carried, whether the
// answer was Duplicate, and the message ID it was delivered under (0: not
// delivered).
type pipeMsg struct {
	st        Status
	id        uint64
	dup       bool
	delivered uint64
}

func ok(id uint64) pipeMsg { return pipeMsg{st: StatusOK, id: id, delivered: id} }

// pipeHist adds a pipelined producer's history: every SendAsync is invoked
// in Seq order, one burst, and the ops are recorded as their futures
// resolve, a batch at a time and the last batch first, so the producer's
// ops overlap and the history's order is not the send order. Then one
// receive delivers every delivered message.
func pipeHist(h *hist, producer string, msgs []pipeMsg, batch int) {
	base := h.now
	var ds []Delivered
	for b := (len(msgs) - 1) / batch; b >= 0; b-- {
		first := b * batch
		for i := first; i < min(first+batch, len(msgs)); i++ {
			m := msgs[i]
			v := fmt.Sprintf("%s-%d", producer, i+1)
			h.ops = append(h.ops, Op{Workload: "w", Worker: producer, Kind: KindSend, Queue: "q", Producer: producer, Seq: i + 1,
				Value: v, DedupID: v, Status: m.st, MessageID: m.id, Duplicate: m.dup,
				Start: base + int64(i), End: base + 1000 - int64(first)})
		}
	}
	for i, m := range msgs {
		if m.delivered != 0 {
			ds = append(ds, d(fmt.Sprintf("%s-%d", producer, i+1), m.delivered))
		}
	}
	h.now = base + 1000
	h.recv("q", ds...)
}

func TestCheckQueueRejectsPipelinedProducerReordering(t *testing.T) {
	unknown := func(delivered uint64) pipeMsg { return pipeMsg{st: StatusUnknown, delivered: delivered} }
	for name, msgs := range map[string][]pipeMsg{
		// The second batch was enqueued ahead of the first.
		"acknowledged batches swapped": {ok(20), ok(21), ok(22), ok(23), ok(10), ok(11), ok(12), ok(13)},
		// The first batch finally failed with an unknown outcome and was
		// enqueued after all, behind the batch sent after it: a failed
		// batch may leave a gap, never a reordering.
		"unknown batch landed late": {unknown(20), unknown(21), unknown(22), unknown(23), ok(10), ok(11), ok(12), ok(13)},
		// A resent message answered Duplicate: its first attempt was
		// enqueued, but behind messages sent after it.
		"duplicate answer out of place": {ok(1), ok(2), ok(3), ok(4), ok(5), {st: StatusOK, id: 30, dup: true, delivered: 30}, ok(7), ok(8)},
		// One message of the third batch got an ID above the batch after.
		"one message out of place": {ok(1), ok(2), ok(3), ok(4), ok(5), ok(6), ok(7), ok(8), ok(9), ok(50), ok(11), ok(12), ok(13)},
	} {
		t.Run(name, func(t *testing.T) {
			h := &hist{}
			h.send("q", "p0", 1, "p0-1", StatusOK, 100) // a synchronous producer of the same queue, in order
			h.recv("q", d("p0-1", 100))
			pipeHist(h, "w-pipe", msgs, 4)
			for _, spec := range []QueueSpec{
				{Workload: "w", Mode: AtLeastOnce, Source: "q", Sink: "q"},
				{Workload: "w", Mode: AtLeastOnce, Source: "q", Sink: "q", Producer: "w-pipe"},
			} {
				r := CheckQueue(h.ops, spec)
				if r.Valid || r.OrderViolations != 1 || !strings.HasPrefix(r.OrderExamples[0], "w-pipe: ") {
					t.Fatalf("%q: reordering not rejected: valid=%v violations=%d %v %v", spec.Producer, r.Valid, r.OrderViolations, r.Problems, r.OrderExamples)
				}
				if r.Lost != 0 || r.Unexpected != 0 || r.DoubleEnqueued != 0 {
					t.Fatalf("%q: only the order is wrong, got %+v", spec.Producer, r)
				}
				t.Logf("%q rejects: %v (%v)", spec.Producer, r.Problems, r.OrderExamples)
			}
		})
	}
}

func TestCheckQueueAcceptsPipelinedProducerGaps(t *testing.T) {
	fail := pipeMsg{st: StatusFail}
	lostReply := func(id uint64) pipeMsg { return pipeMsg{st: StatusUnknown, delivered: id} }
	resent := func(id uint64) pipeMsg { return pipeMsg{st: StatusOK, id: id, dup: true, delivered: id} }
	never := pipeMsg{st: StatusUnknown}
	msgs := []pipeMsg{
		ok(1), ok(2), ok(3), ok(4), // acknowledged
		fail, fail, fail, fail, // failed before it was enqueued: a gap
		lostReply(5), lostReply(6), lostReply(7), lostReply(8), // unknown, enqueued (recovered)
		resent(9), resent(10), resent(11), resent(12), // first attempt enqueued, resend answered Duplicate
		never, never, never, never, // unknown, never enqueued: a gap
		ok(13), ok(14), ok(15), ok(16),
	}
	h := &hist{}
	h.send("q", "p0", 1, "p0-1", StatusOK, 100)
	h.recv("q", d("p0-1", 100))
	pipeHist(h, "w-pipe", msgs, 4)

	r := CheckQueue(h.ops, QueueSpec{Workload: "w", Mode: AtLeastOnce, Source: "q", Sink: "q", Producer: "w-pipe"})
	if !r.Valid || r.OrderViolations != 0 {
		t.Fatalf("in-order pipelined history rejected: %v %v", r.Problems, r.OrderExamples)
	}
	if r.Attempted != 24 || r.OK != 12 || r.Failed != 4 || r.Unknown != 8 || r.Recovered != 4 || r.Delivered != 16 || r.Lost != 0 {
		t.Fatalf("counts of the pipelined producer alone: %+v", r)
	}
	// The whole queue counts the synchronous producer too.
	r = CheckQueue(h.ops, QueueSpec{Workload: "w", Mode: AtLeastOnce, Source: "q", Sink: "q"})
	if !r.Valid || r.Attempted != 25 || r.Delivered != 17 {
		t.Fatalf("whole queue: %+v", r)
	}
}

// leaseHist is a message leased for 5 s by a receive at 0 s, and
// delivered again by a receive that ends at again.
func leaseHist(again time.Duration) []Op {
	return []Op{
		{Workload: "w", Kind: KindSend, Queue: "q", Producer: "p0", Seq: 1, Value: "p0-1", DedupID: "p0-1", Status: StatusOK, MessageID: 1, Start: 0, End: 1e6},
		{Workload: "w", Kind: KindReceive, Queue: "q", Status: StatusOK, Visibility: int64(5 * time.Second), Start: int64(10 * time.Millisecond), End: int64(20 * time.Millisecond),
			Delivered: []Delivered{{Value: "p0-1", MessageID: 1, Attempt: 1}}},
		{Workload: "w", Kind: KindReceive, Queue: "q", Status: StatusOK, Visibility: int64(5 * time.Second), Start: int64(again) - int64(10*time.Millisecond), End: int64(again),
			Delivered: []Delivered{{Value: "p0-1", MessageID: 1, Attempt: 2}}},
	}
}

// A lease that ends early by more than the slack (1 s + a tick) is
// rejected; one that ends within it, or on time, is not.
func TestCheckQueueRejectsEarlyRedelivery(t *testing.T) {
	spec := QueueSpec{Workload: "w", Mode: AtLeastOnce, Source: "q", Sink: "q"}
	for _, tc := range []struct {
		again time.Duration
		early int
	}{
		{50 * time.Millisecond, 1},                // a clock an hour ahead: at once
		{3 * time.Second, 1},                      // 2.01 s early
		{3*time.Second + 20*time.Millisecond, 0},  // within the slack
		{5*time.Second + 100*time.Millisecond, 0}, // on time
	} {
		r := CheckQueue(leaseHist(tc.again), spec)
		if r.EarlyRedeliveries != tc.early || r.Valid != (tc.early == 0) {
			t.Errorf("redelivered by %v: early %d valid %v (%v), want early %d", tc.again, r.EarlyRedeliveries, r.Valid, r.Problems, tc.early)
		}
		if tc.early > 0 {
			t.Logf("by %v: %v %v", tc.again, r.Problems, r.EarlyExamples)
		}
	}
	// Without the first delivery's receive (its outcome was unknown) there
	// is no lease to compare with.
	ops := leaseHist(50 * time.Millisecond)
	if r := CheckQueue(append(ops[:1:1], ops[2]), spec); r.EarlyRedeliveries != 0 {
		t.Errorf("a redelivery without its previous delivery counted early: %v", r.EarlyExamples)
	}
}

// dedupHist sends value p0-1 at 0 s as message 1 and again at again,
// answered as message id.
func dedupHist(again time.Duration, id uint64, dup bool) []Op {
	return []Op{
		{Workload: "w", Kind: KindSend, Queue: "q", Producer: "p0", Seq: 1, Value: "p0-1", DedupID: "p0-1", Status: StatusOK, MessageID: 1, Start: 0, End: 1e6},
		{Workload: "w", Kind: KindSend, Queue: "q", Producer: "p0", Seq: 1, Value: "p0-1", DedupID: "p0-1", Status: StatusOK, MessageID: id, Duplicate: dup,
			Start: int64(again), End: int64(again) + 1e6},
		{Workload: "w", Kind: KindReceive, Queue: "q", Status: StatusOK, Start: int64(again) + 2e6, End: int64(again) + 3e6,
			Delivered: []Delivered{{Value: "p0-1", MessageID: 1, Attempt: 1}}},
	}
}

// A re-send inside the dedup window must be a duplicate of the first
// message; after the window it may be a new one.
func TestCheckQueueRejectsASendEnqueuedTwiceInsideItsDedupWindow(t *testing.T) {
	spec := QueueSpec{Workload: "w", Mode: AtLeastOnce, Source: "q", Sink: "q"}
	r := CheckQueue(dedupHist(time.Second, 2, false), spec)
	if r.DedupWindowViolations != 1 || r.Valid {
		t.Fatalf("re-send 1 s later enqueued as message 2: violations %d valid %v", r.DedupWindowViolations, r.Valid)
	}
	t.Logf("%v %v", r.Problems, r.DedupExamples)
	if r := CheckQueue(dedupHist(time.Second, 1, true), spec); r.DedupWindowViolations != 0 || !r.Valid {
		t.Fatalf("duplicate answer rejected: %v", r.Problems)
	}
	short := spec
	short.DedupWindow = 5 * time.Second
	if r := CheckQueue(dedupHist(4*time.Second, 2, false), short); r.DedupWindowViolations != 0 {
		t.Fatalf("re-send 4 s into a 5 s window (within the slack) counted: %v", r.DedupExamples)
	}
	if r := CheckQueue(dedupHist(2*time.Second, 2, false), short); r.DedupWindowViolations != 1 {
		t.Fatalf("re-send 2 s into a 5 s window enqueued again not counted")
	}
}

package jepsen

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// groupSpec is the spec the group checker tests check: queue g with
// dead-letter queue g-dlq.
var groupSpec = QueueSpec{Workload: "w", Mode: AtLeastOnce, Source: "g", Sink: "g", DLQ: "g-dlq", Groups: true}

// groupHist builds histories of the groups workload: each op takes 5 ns
// and starts 10 ns after the previous one, unless at() sets its times.
type groupHist struct{ hist }

// gv is the value of message seq of group, as the workload names it.
func gv(group string, seq int) string { return fmt.Sprintf("%s-%d", group, seq) }

// gd is attempt of message id, value seq of group, as a receive returns it.
func gd(group string, seq int, id uint64, attempt uint32) Delivered {
	return Delivered{Value: gv(group, seq), MessageID: id, Attempt: attempt, Group: group}
}

func (h *groupHist) send(group string, seq int, st Status, id uint64) {
	v := gv(group, seq)
	h.add(Op{Kind: KindSend, Queue: "g", Producer: "p0", Group: group, Seq: seq, Value: v, DedupID: v, Status: st, MessageID: id})
}

func (h *groupHist) recv(ds ...Delivered) {
	h.add(Op{Kind: KindReceive, Queue: "g", Visibility: int64(2 * time.Second), Delivered: ds})
}

// settle records an ack, nack or reject of the receipt of d.
func (h *groupHist) settle(kind string, d Delivered, st Status) {
	h.add(Op{Kind: kind, Queue: "g", Value: d.Value, MessageID: d.MessageID, Attempt: d.Attempt, Status: st})
}

// readDLQ records the final read of the DLQ, holding ds.
func (h *groupHist) readDLQ(ds ...Delivered) {
	for i := range ds {
		ds[i].DeadLetterOf, ds[i].MessageID = ds[i].MessageID, uint64(1000+i)
	}
	h.add(Op{Kind: KindReadDLQ, Queue: "g-dlq", Delivered: ds})
}

// at gives the last op the times start and end.
func (h *groupHist) at(start, end int64) {
	o := &h.ops[len(h.ops)-1]
	o.Start, o.End = start, end
}

// healthyGroups is a history the checker accepts: groups a and b, served
// concurrently, with a nack and a redelivery, a message rejected and one
// dead-lettered by max_deliveries (both found in the DLQ), an ack whose
// outcome is unknown whose message was not delivered again, an ack that
// returns after the next message of its group was delivered and acked (the
// two acks overlap), and a last send whose outcome is unknown and that
// never came out.
func healthyGroups() *groupHist {
	h := &groupHist{}
	for seq := 1; seq <= 5; seq++ {
		h.send("a", seq, StatusOK, uint64(2*seq-1))
		h.send("b", seq, StatusOK, uint64(2*seq))
	}
	h.send("a", 6, StatusUnknown, 0)
	// One receive takes the head of each group.
	a1, b1 := gd("a", 1, 1, 1), gd("b", 1, 2, 1)
	h.recv(a1, b1)
	h.settle(KindNack, a1, StatusOK)
	h.settle(KindAck, b1, StatusOK)
	a1again := gd("a", 1, 1, 2)
	h.recv(a1again, gd("b", 2, 4, 1))
	h.settle(KindAck, a1again, StatusOK)
	h.settle(KindAck, gd("b", 2, 4, 1), StatusUnknown) // took effect: b-2 never came back
	h.recv(gd("a", 2, 3, 1), gd("b", 3, 6, 1))
	h.settle(KindReject, gd("a", 2, 3, 1), StatusOK)
	// b-3's ack answers late: from 1000 to 2000 ns; b-4 is delivered and
	// acked meanwhile, so the ack of b-3 took effect first.
	h.settle(KindAck, gd("b", 3, 6, 1), StatusOK)
	h.at(1000, 2000)
	h.recv(gd("b", 4, 8, 1))
	h.at(1100, 1200)
	h.settle(KindAck, gd("b", 4, 8, 1), StatusOK)
	h.at(1300, 1400)
	h.now = 2000
	// a-3 is nacked at every delivery until max_deliveries (3)
	// dead-letters it inside the receive that delivers a-4.
	for attempt := uint32(1); attempt <= 3; attempt++ {
		h.recv(gd("a", 3, 5, attempt))
		h.settle(KindNack, gd("a", 3, 5, attempt), StatusOK)
	}
	h.recv(gd("a", 4, 7, 1), gd("b", 5, 10, 1))
	h.settle(KindAck, gd("a", 4, 7, 1), StatusOK)
	h.settle(KindAck, gd("b", 5, 10, 1), StatusOK)
	h.recv(gd("a", 5, 9, 1))
	h.settle(KindAck, gd("a", 5, 9, 1), StatusOK)
	h.readDLQ(gd("a", 2, 3, 1), gd("a", 3, 5, 3))
	return h
}

func TestCheckGroupsAcceptsGroupsInOrder(t *testing.T) {
	h := healthyGroups()
	r := CheckGroups(h.ops, groupSpec)
	if !r.Valid {
		t.Fatalf("healthy groups rejected: %v\n%+v", r.Problems, r)
	}
	if r.Groups != 2 || r.Messages != 10 || r.Acked != 7 || r.DeadLettered != 2 {
		t.Fatalf("counts: %+v", r)
	}
	// The whole queue check, with the DLQ read: the dead letters are not
	// lost, the nack's quick redelivery is not early.
	q := CheckQueue(h.ops, groupSpec)
	if !q.Valid || q.Lost != 0 || q.Groups == nil || q.Groups.Acked != 7 {
		t.Fatalf("queue check of healthy groups: %v %+v", q.Problems, q)
	}
}

// mustReject checks that the group checker rejects ops, and logs why.
func mustReject(t *testing.T, name string, ops []Op, count func(GroupResult) int) GroupResult {
	t.Helper()
	r := CheckGroups(ops, groupSpec)
	if r.Valid || count(r) == 0 {
		t.Fatalf("%s: not rejected: valid=%v %+v", name, r.Valid, r)
	}
	q := CheckQueue(ops, groupSpec)
	if q.Valid {
		t.Fatalf("%s: the queue check passed", name)
	}
	t.Logf("%s rejects: %v %v%v%v%v%v", name, r.Problems, r.EarlyExamples, r.AckOrderExamples, r.GapExamples, r.DuplicateExamples, r.SameReceiveExamples)
	return r
}

// A group's messages 2 and 3 delivered and acked the wrong way round,
// one at a time.
func TestCheckGroupsRejectsASwappedPair(t *testing.T) {
	h := &groupHist{}
	for seq := 1; seq <= 3; seq++ {
		h.send("a", seq, StatusOK, uint64(seq))
	}
	for _, seq := range []int{1, 3, 2} {
		h.recv(gd("a", seq, uint64(seq), 1))
		h.settle(KindAck, gd("a", seq, uint64(seq), 1), StatusOK)
	}
	h.readDLQ()
	r := mustReject(t, "swapped pair", h.ops, func(r GroupResult) int { return r.AckOrder })
	if r.AckOrder != 1 || r.EarlyDeliveries != 1 || r.Gaps+r.Duplicates+r.SameReceive != 0 {
		t.Fatalf("swapped pair: %+v", r)
	}
}

// Two messages of one group leased at once by two consumers: the second
// is delivered while the first's ack is still to come, although each
// ack returns in order.
func TestCheckGroupsRejectsOverlappingLeases(t *testing.T) {
	h := &groupHist{}
	h.send("a", 1, StatusOK, 1)
	h.send("a", 2, StatusOK, 2)
	h.recv(gd("a", 1, 1, 1))
	h.at(100, 110)
	h.recv(gd("a", 2, 2, 1))
	h.at(120, 130)
	h.settle(KindAck, gd("a", 1, 1, 1), StatusOK)
	h.at(140, 150)
	h.settle(KindAck, gd("a", 2, 2, 1), StatusOK)
	h.at(160, 170)
	h.readDLQ()
	h.at(200, 210)
	r := mustReject(t, "overlapping leases", h.ops, func(r GroupResult) int { return r.EarlyDeliveries })
	if r.AckOrder != 0 {
		t.Fatalf("acks in order counted as out of order: %+v", r)
	}
	// The same, with a-1's ack started before a-2's receive ended but
	// with an unknown outcome: it may have taken effect first, so nothing
	// is certain and the history passes.
	h.ops[4].Start, h.ops[4].Status = 125, StatusUnknown
	if r := CheckGroups(h.ops, groupSpec); !r.Valid {
		t.Fatalf("an ack of unknown outcome that may have come first: %v", r.Problems)
	}
}

func TestCheckGroupsRejectsAGapWithoutADeadLetter(t *testing.T) {
	build := func(dead ...Delivered) []Op {
		h := &groupHist{}
		for seq := 1; seq <= 3; seq++ {
			h.send("a", seq, StatusOK, uint64(seq))
		}
		for _, seq := range []int{1, 3} {
			h.recv(gd("a", seq, uint64(seq), 1))
			h.settle(KindAck, gd("a", seq, uint64(seq), 1), StatusOK)
		}
		h.readDLQ(dead...)
		return h.ops
	}
	r := mustReject(t, "gap", build(), func(r GroupResult) int { return r.Gaps })
	if r.Gaps != 1 || !strings.Contains(r.GapExamples[0], "a-2") {
		t.Fatalf("gap: %+v", r)
	}
	if q := CheckQueue(build(), groupSpec); q.Lost != 1 {
		t.Fatalf("gap not lost for the queue check: %+v", q)
	}
	// a-2 in the DLQ accounts for the gap (its deliveries were all in
	// receives whose outcome the client did not learn).
	if r := CheckGroups(build(gd("a", 2, 2, 3)), groupSpec); !r.Valid || r.DeadLettered != 1 {
		t.Fatalf("gap accounted for by a dead letter rejected: %v", r.Problems)
	}
	if q := CheckQueue(build(gd("a", 2, 2, 3)), groupSpec); !q.Valid {
		t.Fatalf("queue check: a dead letter counted as lost: %v", q.Problems)
	}
	// Without the DLQ read a gap cannot be told from a dead letter.
	ops := build(gd("a", 2, 2, 3))
	ops = ops[:len(ops)-1]
	if r := CheckGroups(ops, groupSpec); r.Valid || r.DLQRead {
		t.Fatalf("history without a DLQ read accepted: %+v", r)
	}
}

func TestCheckGroupsRejectsDuplicates(t *testing.T) {
	base := func() *groupHist {
		h := &groupHist{}
		h.send("a", 1, StatusOK, 1)
		h.send("a", 2, StatusOK, 2)
		h.recv(gd("a", 1, 1, 1))
		h.settle(KindAck, gd("a", 1, 1, 1), StatusOK)
		return h
	}
	// a-1 acked, then delivered again and acked again.
	h := base()
	h.recv(gd("a", 1, 1, 2))
	h.settle(KindAck, gd("a", 1, 1, 2), StatusOK)
	h.recv(gd("a", 2, 2, 1))
	h.settle(KindAck, gd("a", 2, 2, 1), StatusOK)
	h.readDLQ()
	r := mustReject(t, "acked twice", h.ops, func(r GroupResult) int { return r.Duplicates })
	if r.Duplicates != 1 {
		t.Fatalf("acked twice: %+v", r)
	}
	// a-1 acked and also in the DLQ.
	h = base()
	h.recv(gd("a", 2, 2, 1))
	h.settle(KindAck, gd("a", 2, 2, 1), StatusOK)
	h.readDLQ(gd("a", 1, 1, 1))
	mustReject(t, "acked and dead-lettered", h.ops, func(r GroupResult) int { return r.Duplicates })
	// The same receipt acked twice (a retry finding its tombstone) is
	// at-least-once.
	h = base()
	h.settle(KindAck, gd("a", 1, 1, 1), StatusOK)
	h.recv(gd("a", 2, 2, 1))
	h.settle(KindAck, gd("a", 2, 2, 1), StatusOK)
	h.readDLQ()
	if r := CheckGroups(h.ops, groupSpec); !r.Valid {
		t.Fatalf("one receipt acked twice rejected: %v", r.Problems)
	}
}

func TestCheckGroupsRejectsTwoMessagesOfAGroupInOneReceive(t *testing.T) {
	h := &groupHist{}
	h.send("a", 1, StatusOK, 1)
	h.send("a", 2, StatusOK, 2)
	h.recv(gd("a", 1, 1, 1), gd("a", 2, 2, 1))
	h.settle(KindAck, gd("a", 1, 1, 1), StatusOK)
	h.settle(KindAck, gd("a", 2, 2, 1), StatusOK)
	h.readDLQ()
	r := mustReject(t, "same receive", h.ops, func(r GroupResult) int { return r.SameReceive })
	if r.SameReceive != 1 {
		t.Fatalf("same receive: %+v", r)
	}
}

// The group check's counts reach the summary and the report page.
func TestReportShowsTheGroupCheck(t *testing.T) {
	h := &groupHist{}
	h.send("a", 1, StatusOK, 1)
	h.send("a", 2, StatusOK, 2)
	h.recv(gd("a", 1, 1, 1), gd("a", 2, 2, 1))
	h.readDLQ()
	res := &Result{Case: "c", Queues: []QueueResult{CheckQueue(h.ops, groupSpec)}}
	if s := res.Summary(); !strings.Contains(s, "groups of g: 1 groups, 2 messages") || !strings.Contains(s, "same receive 1") {
		t.Fatalf("summary without the group check:\n%s", s)
	}
	path := filepath.Join(t.TempDir(), "index.html")
	if err := WriteHTML(path, res, h.ops); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if page := string(b); !strings.Contains(page, "Message groups of g: 1 groups") || !strings.Contains(page, "one receive") {
		t.Fatalf("report page without the group check")
	}
}

// A group's message IDs must rise with its send order; another group of
// the same producer, interleaved, is a sequence of its own.
func TestCheckQueueRejectsAGroupEnqueuedOutOfOrder(t *testing.T) {
	h := &groupHist{}
	h.send("a", 1, StatusOK, 1)
	h.send("b", 1, StatusOK, 2)
	h.send("a", 2, StatusOK, 4)
	h.send("b", 2, StatusOK, 3)
	h.readDLQ()
	r := CheckQueue(h.ops, QueueSpec{Workload: "w", Mode: AtLeastOnce, Source: "g", Sink: "g"})
	if r.OrderViolations != 0 {
		t.Fatalf("interleaved groups in order counted: %v", r.OrderExamples)
	}
	h = &groupHist{}
	h.send("a", 1, StatusOK, 3)
	h.send("a", 2, StatusOK, 1)
	r = CheckQueue(h.ops, QueueSpec{Workload: "w", Mode: AtLeastOnce, Source: "g", Sink: "g"})
	if r.OrderViolations != 1 || r.Valid {
		t.Fatalf("a group enqueued out of order: violations %d valid %v", r.OrderViolations, r.Valid)
	}
	t.Logf("rejects: %v %v", r.Problems, r.OrderExamples)
}

package fsm

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/fsm/limits"
)

func nackWhy(queue, reason string, rs ...*fsmpb.Receipt) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Nack{Nack: &fsmpb.Nack{Queue: queue, Receipts: rs, Reason: reason}}}
}

// poisonState is a queue w (max 2 deliveries, DLQ dlq) whose message
// "poison", enqueued at t0, was delivered twice and nacked with reasons
// the first time and without one the second, which keeps the first; the
// third receive at t0+2m dead-letters it.
func poisonState(t *testing.T) *harness {
	h := newHarness(t)
	h.ok(createQ("dlq", nil))
	h.ok(createQ("w", settingsOf(func(s *fsmpb.QueueSettings) {
		s.MaxDeliveries = proto.Uint32(2)
		s.DeadLetterQueue = proto.String("dlq")
	})))
	h.ok(enq("w", msg("first", ""), msg("poison", "order-42")))
	h.ok(ackCmd("w", h.ok(recvCmd(recv("w", 1))).Deliveries[0].Receipt))
	for i, why := range []string{"bad schema", ""} {
		h.at(time.Duration(i) * time.Minute)
		d := h.ok(recvCmd(recv("w", 1))).Deliveries[0]
		if i == 1 && d.LastNackReason != "bad schema" {
			t.Fatalf("second delivery has last nack reason %q, want %q", d.LastNackReason, "bad schema")
		}
		h.ok(nackWhy("w", why, d.Receipt))
	}
	return h
}

// A dead letter says where it came from, why, after how many attempts,
// when it was first enqueued, and the consumer's last nack reason.
func TestDeadLetterCarriesItsOrigin(t *testing.T) {
	h := poisonState(t)
	h.at(2 * time.Minute)
	if n := len(h.ok(recvCmd(recv("w", 1))).Deliveries); n != 0 {
		t.Fatalf("third delivery happened, max_deliveries is 2")
	}
	d := h.ok(recvCmd(recv("dlq", 1))).Deliveries[0]
	want := &fsmpb.DeadLetter{
		SourceQueue: "w", SourceMessageId: 2, Reason: fsmpb.DeadLetterReason_DEAD_LETTER_MAX_DELIVERIES,
		Attempts: 2, FirstEnqueuedAtUnixNano: t0, LastNackReason: "bad schema",
	}
	if !proto.Equal(d.DeadLetter, want) {
		t.Fatalf("dead letter metadata %v, want %v", d.DeadLetter, want)
	}
	if string(d.Body) != "poison" || d.DedupId != "order-42" || d.LastNackReason != "" {
		t.Fatalf("dead letter %v: want body poison, dedup ID order-42, no nack reason in the DLQ yet", d)
	}
	// A dead letter of a dead letter keeps the first enqueue time.
	h.ok(updateQ("dlq", settingsOf(func(s *fsmpb.QueueSettings) {
		s.MaxDeliveries = proto.Uint32(1)
		s.DeadLetterQueue = proto.String("w")
	})))
	h.ok(nackWhy("dlq", "still bad", d.Receipt))
	h.at(3 * time.Minute)
	h.ok(recvCmd(recv("dlq", 1)))
	back := h.ok(recvCmd(recv("w", 1))).Deliveries[0]
	if dl := back.DeadLetter; dl.GetSourceQueue() != "dlq" || dl.GetFirstEnqueuedAtUnixNano() != t0 || dl.GetLastNackReason() != "still bad" || dl.GetAttempts() != 1 {
		t.Fatalf("dead letter of a dead letter: %v; want source dlq, first enqueued at t0, reason still bad, 1 attempt", dl)
	}
}

// A receive without dead_letter_origin (what a leader writes while some
// voter is of an earlier release) dead-letters as that release does: the
// dead letter records no origin, so both releases keep the same state.
func TestDeadLetterWithoutOriginAsAnEarlierRelease(t *testing.T) {
	h := poisonState(t)
	h.at(2 * time.Minute)
	h.ok(recvCmd(&fsmpb.Receive{Queue: "w", Max: 1}))
	d := h.ok(recvCmd(recv("dlq", 1))).Deliveries
	if len(d) != 1 || !proto.Equal(d[0].DeadLetter, &fsmpb.DeadLetter{}) {
		t.Fatalf("dead letter of a receive without dead_letter_origin = %v; want an empty origin", d)
	}
	if bytes.Contains(persistBytes(t, h.f), []byte("bad schema")) {
		t.Fatalf("the state keeps the nack reason of a message dead-lettered without origin")
	}
}

// The metadata survives a snapshot round trip and is part of the state
// hash.
func TestDeadLetterMetadataSurvivesRestore(t *testing.T) {
	h := poisonState(t)
	h.at(2 * time.Minute)
	h.ok(recvCmd(recv("w", 1)))
	g := New()
	if err := g.Restore(persist(t, h.f)); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, g)
	if g.StateHash() != h.f.StateHash() {
		t.Fatal("restored hash differs")
	}
	h2 := &harness{t: t, f: g, idx: h.idx, now: h.now, rules: h.rules}
	a, b := h.ok(recvCmd(recv("dlq", 1))).Deliveries[0], h2.ok(recvCmd(recv("dlq", 1))).Deliveries[0]
	if !proto.Equal(a, b) || b.DeadLetter.GetLastNackReason() != "bad schema" {
		t.Fatalf("after restore %v, before %v", b, a)
	}

	// Two states that differ only in a nack reason hash differently.
	x, y := newHarness(t), newHarness(t)
	for _, z := range []*harness{x, y} {
		z.ok(createQ("q", nil))
		z.ok(enq("q", msg("m", "")))
	}
	rc := x.ok(recvCmd(recv("q", 1))).Deliveries[0].Receipt
	y.ok(recvCmd(recv("q", 1)))
	x.ok(nackWhy("q", "one", rc))
	y.ok(nackWhy("q", "two", rc))
	if x.f.StateHash() == y.f.StateHash() {
		t.Fatal("nack reasons one and two gave the same state hash")
	}
}

// A nack reason beyond limits.MaxNackReason is refused and changes nothing.
func TestNackReasonLimit(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	h.ok(enq("q", msg("m", "")))
	rc := h.ok(recvCmd(recv("q", 1))).Deliveries[0].Receipt
	h.fails(nackWhy("q", strings.Repeat("r", limits.MaxNackReason+1), rc), fsmpb.ErrorCode_INVALID_ARGUMENT,
		"nack.reason is 1025 bytes, limit is 1024")
	h.ok(nackWhy("q", strings.Repeat("r", limits.MaxNackReason), rc))
}

// A snapshot of a release without dead-letter metadata (testdata: queue w
// with max 1 delivery whose message "poison" went to dlq) still restores;
// its dead letter shows as one with no recorded reason.
func TestRestoreDeadLetterOfEarlierRelease(t *testing.T) {
	h := restoreTestdata(t, "dead-letter-v1.snap")
	h.at(time.Minute)
	d := h.ok(recvCmd(recv("dlq", 1))).Deliveries
	if len(d) != 1 || string(d[0].Body) != "poison" || d[0].DeadLetter == nil || d[0].DeadLetter.Reason != fsmpb.DeadLetterReason_DEAD_LETTER_REASON_UNSPECIFIED {
		t.Fatalf("dead letter of the earlier release = %v; want poison marked as a dead letter with no reason", d)
	}
}

func rejectCmd(queue, reason string, rs ...*fsmpb.Receipt) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Reject{Reject: &fsmpb.Reject{Queue: queue, Receipts: rs, Reason: reason}}}
}

// Reject dead-letters a leased message now, fenced by its receipt like an
// ack: a repeat with the same receipt succeeds and changes nothing, a
// stale receipt loses, and an ack of a rejected message loses.
func TestRejectDeadLettersNow(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("dlq", nil))
	h.ok(createQ("w", settingsOf(func(s *fsmpb.QueueSettings) { s.DeadLetterQueue = proto.String("dlq") })))
	h.ok(enq("w", msg("poison", "p"), msg("fine", "")))
	d := h.ok(recvCmd(recv("w", 1))).Deliveries[0]
	h.ok(nackWhy("w", "parse error", d.Receipt))
	h.at(time.Second)
	d = h.ok(recvCmd(recv("w", 1))).Deliveries[0]
	stale := receipt(d.Receipt.MessageId, 1)
	stale.Queue = "w"

	ok, lost := fsmpb.AckOutcome_ACK_OK, fsmpb.AckOutcome_ACK_LEASE_LOST
	if got := outcomes(h.ok(rejectCmd("w", "cannot parse", stale))); len(got) != 1 || got[0] != lost {
		t.Fatalf("reject with a stale receipt: %v, want lease lost", got)
	}
	if got := outcomes(h.ok(rejectCmd("w", "cannot parse", d.Receipt))); len(got) != 1 || got[0] != ok {
		t.Fatalf("reject: %v, want ok", got)
	}
	hash := h.f.StateHash()
	if got := outcomes(h.ok(rejectCmd("w", "cannot parse", d.Receipt))); len(got) != 1 || got[0] != ok || h.f.StateHash() != hash {
		t.Fatalf("reject again with the same receipt: %v (state changed: %v), want ok and no change", got, h.f.StateHash() != hash)
	}
	if got := outcomes(h.ok(ackCmd("w", d.Receipt))); len(got) != 1 || got[0] != lost {
		t.Fatalf("ack of a rejected message: %v, want lease lost", got)
	}
	if st := h.stats("w"); st.DeadLetteredTotal != 1 || st.Ready != 1 {
		t.Fatalf("source stats %v: want 1 dead-lettered, fine still ready", st)
	}
	dl := h.ok(recvCmd(recv("dlq", 1))).Deliveries
	want := &fsmpb.DeadLetter{SourceQueue: "w", SourceMessageId: 1, Reason: fsmpb.DeadLetterReason_DEAD_LETTER_REJECTED,
		Attempts: 2, FirstEnqueuedAtUnixNano: t0, LastNackReason: "parse error", RejectReason: "cannot parse"}
	if len(dl) != 1 || string(dl[0].Body) != "poison" || !proto.Equal(dl[0].DeadLetter, want) {
		t.Fatalf("rejected message in the DLQ: %v, want poison with origin %v", dl, want)
	}
	g := New()
	if err := g.Restore(persist(t, h.f)); err != nil {
		t.Fatal(err)
	}
	if g.StateHash() != h.f.StateHash() {
		t.Fatal("a state with a rejected message restores to another hash")
	}
	h.fails(rejectCmd("w", strings.Repeat("r", limits.MaxNackReason+1), d.Receipt), fsmpb.ErrorCode_INVALID_ARGUMENT,
		"reject.reason is 1025 bytes, limit is 1024")
}

func createWithDLQ(name, dlq string, create bool) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_CreateQueue{CreateQueue: &fsmpb.CreateQueue{Name: name,
		Settings: settingsOf(func(s *fsmpb.QueueSettings) { s.DeadLetterQueue = proto.String(dlq) }), CreateDeadLetterQueue: create}}}
}

func updateWithDLQ(name, dlq string, create bool) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_UpdateQueue{UpdateQueue: &fsmpb.UpdateQueue{Name: name,
		Settings: settingsOf(func(s *fsmpb.QueueSettings) { s.DeadLetterQueue = proto.String(dlq) }), CreateDeadLetterQueue: create}}}
}

func deleteQ(name string, force bool) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_DeleteQueue{DeleteQueue: &fsmpb.DeleteQueue{Name: name, Force: force}}}
}

// A queue names only a dead-letter queue that exists, or one it creates
// in the same command; a queue that is another's DLQ is deleted only
// with force.
func TestDeadLetterQueueMustExist(t *testing.T) {
	h := newHarness(t)
	h.fails(createWithDLQ("orders", "orders-dlx", false), fsmpb.ErrorCode_QUEUE_NOT_FOUND,
		`create_queue.settings.dead_letter_queue: queue "orders-dlx" does not exist`)
	h.ok(createWithDLQ("orders", "orders-dlq", true))
	if st := h.stats("orders-dlq"); st == nil {
		t.Fatal("create_dead_letter_queue did not create orders-dlq")
	}
	h.ok(createQ("jobs", nil))
	h.fails(updateWithDLQ("jobs", "jobs-dlq", false), fsmpb.ErrorCode_QUEUE_NOT_FOUND,
		`update_queue.settings.dead_letter_queue: queue "jobs-dlq" does not exist`)
	h.ok(updateWithDLQ("jobs", "jobs-dlq", true))
	h.ok(updateWithDLQ("jobs", "orders-dlq", false))

	h.fails(deleteQ("orders-dlq", false), fsmpb.ErrorCode_INVALID_ARGUMENT,
		`delete_queue.name: queue "orders-dlq" is the dead-letter queue of "jobs", "orders"`)
	h.ok(deleteQ("jobs-dlq", false)) // no longer anyone's DLQ
	h.ok(deleteQ("orders-dlq", true))

	// A leader of a mixed cluster (rules 0) writes commands applied as an
	// earlier release applies them.
	h.rules = 0
	h.ok(createWithDLQ("old", "missing", false))
	h.ok(createQ("old-dlq", nil))
	h.ok(updateQ("old", settingsOf(func(s *fsmpb.QueueSettings) { s.DeadLetterQueue = proto.String("old-dlq") })))
	h.ok(deleteQ("old-dlq", false))
}

// A dead letter with no queue to go to stays in its source queue as dead:
// not delivered, counted in stats, its receipt lost like a dead-lettered
// one's, kept through a snapshot, and removed only by purge or retention.
func TestDeadLetterWithNowhereToGoStaysDead(t *testing.T) {
	h := newHarness(t)
	h.ok(createWithDLQ("w", "gone", true))
	h.ok(updateQ("w", settingsOf(func(s *fsmpb.QueueSettings) { s.MaxDeliveries = proto.Uint32(1) })))
	h.ok(createQ("plain", settingsOf(func(s *fsmpb.QueueSettings) { s.MaxDeliveries = proto.Uint32(1) })))
	h.ok(deleteQ("gone", true))
	h.ok(enq("w", msg("a", "da"), msg("b", "")))
	h.ok(enq("plain", msg("p", "")))
	ra := h.ok(recvCmd(recv("w", 1))).Deliveries[0].Receipt
	h.ok(nackWhy("w", "boom", ra))
	h.ok(recvCmd(recv("plain", 1)))
	h.at(time.Minute)
	if got := bodies(h.ok(recvCmd(recv("w", 10)))); len(got) != 1 || got[0] != "b" {
		t.Fatalf("deliveries %v, want [b]: a stays dead", got)
	}
	if got := bodies(h.ok(recvCmd(recv("plain", 10)))); len(got) != 0 {
		t.Fatalf("deliveries of plain %v, want none: p stays dead", got)
	}
	if st := h.stats("w"); st.Dead != 1 || st.DeadLetteredTotal != 0 || st.Leased != 1 || st.Ready != 0 {
		t.Fatalf("stats of w %v: want 1 dead, b leased, nothing dead-lettered out", st)
	}
	if st := h.stats("plain"); st.Dead != 1 {
		t.Fatalf("stats of plain %v: want 1 dead", st)
	}
	if got := outcomes(h.ok(ackCmd("w", ra))); got[0] != fsmpb.AckOutcome_ACK_LEASE_LOST {
		t.Fatalf("ack of a dead message: %v, want lease lost", got)
	}
	g := New()
	if err := g.Restore(persist(t, h.f)); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, g)
	if g.StateHash() != h.f.StateHash() {
		t.Fatal("a state with a dead message restores to another hash")
	}
	if n := h.ok(purgeCmd("w")).Count; n != 2 {
		t.Fatalf("purge removed %d, want 2 (b and the dead a)", n)
	}
	if st := h.stats("w"); st.Dead != 0 {
		t.Fatalf("stats after purge %v: want no dead", st)
	}

	// Under rules 0 the message is dropped and counted, as an earlier
	// release does.
	h.rules = 0
	h.ok(enq("plain", msg("q", "")))
	h.ok(recvCmd(recv("plain", 1)))
	h.at(3 * time.Minute)
	h.ok(recvCmd(recv("plain", 1)))
	if st := h.stats("plain"); st.Dead != 1 || st.DeadLetteredTotal != 1 {
		t.Fatalf("stats of plain under rules 0 %v: want the old dead message and 1 dropped", st)
	}
}

// A reject with no dead-letter queue to go to keeps the message dead; a
// repeat with the same receipt is OK.
func TestRejectWithNowhereToGoStaysDead(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("w", nil))
	h.ok(enq("w", msg("a", "")))
	rc := h.ok(recvCmd(recv("w", 1))).Deliveries[0].Receipt
	for range 2 {
		if got := outcomes(h.ok(rejectCmd("w", "bad", rc))); got[0] != fsmpb.AckOutcome_ACK_OK {
			t.Fatalf("reject: %v, want ok", got)
		}
	}
	if got := outcomes(h.ok(ackCmd("w", rc))); got[0] != fsmpb.AckOutcome_ACK_LEASE_LOST {
		t.Fatalf("ack of a rejected dead message: %v, want lease lost", got)
	}
	if st := h.stats("w"); st.Dead != 1 || st.Leased != 0 {
		t.Fatalf("stats %v: want 1 dead", st)
	}
}

func redriveCmd(queue, to string, max uint32) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Redrive{Redrive: &fsmpb.Redrive{Queue: queue, To: to, Max: max}}}
}

// Redrive moves dead letters back to their source queue (or a named one)
// in id order, at most max per command, each deleted from the DLQ in the
// command that enqueues it; a redriven message keeps its dedup ID and is
// not taken for a duplicate.
func TestRedrive(t *testing.T) {
	h := newHarness(t)
	h.ok(createWithDLQ("w", "dlq", true))
	h.ok(updateQ("w", settingsOf(func(s *fsmpb.QueueSettings) { s.MaxDeliveries = proto.Uint32(1) })))
	h.ok(createQ("other", nil))
	h.ok(enq("w", msg("a", "da"), msg("b", "db"), msg("c", "dc")))
	for _, d := range h.ok(recvCmd(recv("w", 3))).Deliveries {
		h.ok(rejectCmd("w", "bad", d.Receipt))
	}
	h.fails(redriveCmd("dlq", "", 1001), fsmpb.ErrorCode_INVALID_ARGUMENT, "redrive.max is 1001, limit is 1 to 1000")
	h.fails(redriveCmd("dlq", "nope", 1), fsmpb.ErrorCode_QUEUE_NOT_FOUND, `redrive.to: queue "nope" does not exist`)
	if n := h.ok(redriveCmd("dlq", "", 2)).Count; n != 2 {
		t.Fatalf("redrive max 2 moved %d", n)
	}
	if n := h.ok(redriveCmd("dlq", "other", 10)).Count; n != 1 {
		t.Fatalf("redrive to other moved %d, want the last one", n)
	}
	if n := h.ok(redriveCmd("dlq", "", 10)).Count; n != 0 {
		t.Fatalf("redrive of an empty DLQ moved %d", n)
	}
	got := h.ok(recvCmd(recv("w", 10))).Deliveries
	if len(got) != 2 || string(got[0].Body) != "a" || string(got[1].Body) != "b" || got[0].DedupId != "da" || got[0].DeadLetter != nil || got[0].Receipt.Attempt != 1 {
		t.Fatalf("w after redrive: %v; want a and b, fresh, with their dedup IDs", got)
	}
	if o := h.ok(recvCmd(recv("other", 10))).Deliveries; len(o) != 1 || string(o[0].Body) != "c" {
		t.Fatalf("other after redrive: %v; want c", o)
	}
	if st := h.stats("dlq"); st.RedrivenTotal != 3 || st.Ready+st.DeadLettered != 0 {
		t.Fatalf("dlq stats %v: want 3 redriven, empty", st)
	}
	// A message sent again with a redriven message's dedup ID is still a
	// duplicate of the original.
	if r := h.ok(enq("w", msg("a again", "da"))).Enqueued[0]; !r.Duplicate {
		t.Fatalf("enqueue with a redriven dedup ID: %v, want a duplicate", r)
	}

	// Dead messages of a queue with no DLQ go back into it.
	h.ok(createQ("solo", settingsOf(func(s *fsmpb.QueueSettings) { s.MaxDeliveries = proto.Uint32(1) })))
	h.ok(enq("solo", msg("s", "")))
	h.ok(rejectCmd("solo", "", h.ok(recvCmd(recv("solo", 1))).Deliveries[0].Receipt))
	if n := h.ok(redriveCmd("solo", "", 10)).Count; n != 1 {
		t.Fatalf("redrive of a dead message moved %d", n)
	}
	if d := h.ok(recvCmd(recv("solo", 1))).Deliveries; len(d) != 1 || string(d[0].Body) != "s" {
		t.Fatalf("solo after redrive: %v", d)
	}
	g := New()
	if err := g.Restore(persist(t, h.f)); err != nil {
		t.Fatal(err)
	}
	if g.StateHash() != h.f.StateHash() {
		t.Fatal("restored hash differs after redrives")
	}
}

// A redriven message that dead-letters again still says when it was first
// enqueued, through a restore too; under the rules of an earlier release
// (< 2) a redrive records nothing more, so it says the redrive's time.
func TestRedrivenDeadLetterKeepsItsFirstEnqueueTime(t *testing.T) {
	for _, rules := range []uint32{Rules, 1} {
		h := newHarness(t)
		h.rules = rules
		h.ok(createWithDLQ("w", "dlq", true))
		h.ok(enq("w", msg("m", "dm")))
		h.at(time.Minute)
		h.ok(rejectCmd("w", "bad", h.ok(recvCmd(recv("w", 1))).Deliveries[0].Receipt))
		h.at(2 * time.Minute)
		if n := h.ok(redriveCmd("dlq", "", 10)).Count; n != 1 {
			t.Fatalf("rules %d: redrive moved %d, want 1", rules, n)
		}
		h.at(3 * time.Minute)
		h.ok(rejectCmd("w", "still bad", h.ok(recvCmd(recv("w", 1))).Deliveries[0].Receipt))
		want := t0
		if rules < 2 {
			want = t0 + int64(2*time.Minute)
		}
		g := New()
		if err := g.Restore(persist(t, h.f)); err != nil {
			t.Fatal(err)
		}
		if g.StateHash() != h.f.StateHash() {
			t.Fatalf("rules %d: restored hash differs", rules)
		}
		d := h.ok(recvCmd(recv("dlq", 1))).Deliveries[0]
		if dl := d.DeadLetter; dl.GetFirstEnqueuedAtUnixNano() != want || dl.GetRejectReason() != "still bad" {
			t.Fatalf("rules %d: dead letter after a redrive: %v; want first enqueued at %d (t0 %d), rejected: still bad", rules, dl, want, t0)
		}
	}
}

// A restored record whose first enqueue comes after its own enqueue, or
// before 0, is refused.
func TestRestoreRefusesAFirstEnqueueAfterTheEnqueue(t *testing.T) {
	for first, ok := range map[int64]bool{t0: true, t0 + 1: false, -1: false} {
		d := decoded{m: &message{id: 1, enqueuedAt: t0, ext: &extra{firstEnqueued: first}}, flags: flagReady}
		err := checkMessageRecord(d, 2)
		if ok != (err == nil) || err != nil && !strings.Contains(err.Error(), "first enqueued") {
			t.Fatalf("first enqueued %d, enqueued %d: %v", first, t0, err)
		}
	}
}

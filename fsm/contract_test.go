package fsm

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// TestDeliveryContract walks each rule of the delivery contract in
// DESIGN.md through Encode and Apply, as a cluster node would.
func TestDeliveryContract(t *testing.T) {
	const (
		ok       = fsmpb.AckOutcome_ACK_OK
		lost     = fsmpb.AckOutcome_ACK_LEASE_LOST
		unknownM = fsmpb.AckOutcome_ACK_UNKNOWN_MESSAGE
	)
	cases := []struct {
		name string
		run  func(t *testing.T, h *harness)
	}{
		{"FIFO: lowest id available first, ids start at 1 and increase", func(t *testing.T, h *harness) {
			r := h.ok(enq("q", msg("a", ""), msg("b", ""), msg("c", "")))
			for i, e := range r.GetEnqueued() {
				if e.GetMessageId() != uint64(i+1) || e.GetDuplicate() {
					t.Fatalf("enqueued[%d] = %v, want id %d", i, e, i+1)
				}
			}
			r = h.ok(recvCmd(recv("q", 2)))
			if got := bodies(r); !slices.Equal(got, []string{"a", "b"}) {
				t.Fatalf("deliveries %v, want [a b]", got)
			}
			if d := r.GetDeliveries()[0]; d.GetReceipt().GetAttempt() != 1 || d.GetLeaseUntilUnixNano() != h.now+int64(DefaultVisibility) || d.GetEnqueuedAtUnixNano() != h.now {
				t.Fatalf("delivery %v: want attempt 1, lease until now+30s, enqueued now", d)
			}
			if got := bodies(h.ok(recvCmd(recv("q", 10)))); !slices.Equal(got, []string{"c"}) {
				t.Fatalf("deliveries %v, want [c]", got)
			}
		}},
		{"dedup hit after the original was acked", func(t *testing.T, h *harness) {
			h.ok(enq("q", msg("a", "d1")))
			r := h.ok(recvCmd(recv("q", 1)))
			h.ok(ackCmd("q", r.Deliveries[0].Receipt))
			h.at(time.Minute)
			r = h.ok(enq("q", msg("a again", "d1")))
			if e := r.Enqueued[0]; e.MessageId != 1 || !e.Duplicate {
				t.Fatalf("repeat of acked dedup id: %v, want id 1 duplicate", e)
			}
			st := h.stats("q")
			if st.EnqueuedTotal != 1 || st.DedupHitsTotal != 1 || st.Ready != 0 {
				t.Fatalf("stats %v: want enqueued 1, dedup hits 1, ready 0", st)
			}
		}},
		{"dedup entry expires after the window", func(t *testing.T, h *harness) {
			h.ok(enq("q", msg("a", "d1")))
			h.at(DefaultDedupWindow - time.Nanosecond)
			if e := h.ok(enq("q", msg("a", "d1"))).Enqueued[0]; !e.Duplicate {
				t.Fatalf("repeat just inside the window: %v, want duplicate", e)
			}
			// Exact even before a Tick purges the entry.
			h.at(DefaultDedupWindow)
			if e := h.ok(enq("q", msg("a", "d1"))).Enqueued[0]; e.Duplicate || e.MessageId != 2 {
				t.Fatalf("repeat at the window's end: %v, want new id 2", e)
			}
			h.at(2 * DefaultDedupWindow)
			if n := h.ok(tickCmd()).Count; n == 0 {
				t.Fatal("tick purged nothing after the window")
			}
			if e := h.ok(enq("q", msg("a", "d1"))).Enqueued[0]; e.Duplicate || e.MessageId != 3 {
				t.Fatalf("repeat after tick: %v, want new id 3", e)
			}
		}},
		{"acking the first holder of a reused dedup id keeps the second's entry", func(t *testing.T, h *harness) {
			h.ok(enq("q", msg("a", "d1")))
			h.at(DefaultDedupWindow) // d1's window is over, before any Tick
			if e := h.ok(enq("q", msg("b", "d1"))).Enqueued[0]; e.Duplicate || e.MessageId != 2 {
				t.Fatalf("d1 after its window: %v, want new id 2", e)
			}
			r := h.ok(recvCmd(recv("q", 1)))
			if got := bodies(r); len(got) != 1 || got[0] != "a" {
				t.Fatalf("deliveries %v, want [a]", got)
			}
			h.ok(ackCmd("q", r.Deliveries[0].Receipt))
			h.at(DefaultDedupWindow + time.Minute)
			if e := h.ok(enq("q", msg("c", "d1"))).Enqueued[0]; !e.Duplicate || e.MessageId != 2 {
				t.Fatalf("d1 inside message 2's window after message 1 was acked: %v, want duplicate of id 2", e)
			}
		}},
		{"ack with a stale receipt after redelivery gets lease lost", func(t *testing.T, h *harness) {
			h.ok(enq("q", msg("a", "")))
			first := h.ok(recvCmd(recv("q", 1))).Deliveries[0].Receipt
			h.at(DefaultVisibility)
			second := h.ok(recvCmd(recv("q", 1))).Deliveries[0].Receipt
			if second.Attempt != 2 || second.MessageId != first.MessageId {
				t.Fatalf("redelivery receipt %v, want attempt 2 of message %d", second, first.MessageId)
			}
			if got := outcomes(h.ok(ackCmd("q", first, second))); !slices.Equal(got, []fsmpb.AckOutcome{lost, ok}) {
				t.Fatalf("outcomes %v, want [lease lost, ok]", got)
			}
			if got := outcomes(h.ok(ackCmd("q", first))); !slices.Equal(got, []fsmpb.AckOutcome{lost}) {
				t.Fatalf("stale receipt after the ack: %v, want lease lost", got)
			}
			if st := h.stats("q"); st.RedeliveredTotal != 1 || st.AckedTotal != 1 || st.DeliveredTotal != 2 {
				t.Fatalf("stats %v: want redelivered 1, acked 1, delivered 2", st)
			}
		}},
		{"late ack with no redelivery since succeeds, and a repeat is idempotent", func(t *testing.T, h *harness) {
			h.ok(enq("q", msg("a", "")))
			rc := h.ok(recvCmd(recv("q", 1))).Deliveries[0].Receipt
			h.at(DefaultVisibility + time.Hour)
			h.ok(tickCmd()) // stats are as of the last applied now
			if st := h.stats("q"); st.Ready != 1 || st.Leased != 0 {
				t.Fatalf("expired lease: stats %v, want ready 1 leased 0", st)
			}
			if got := outcomes(h.ok(ackCmd("q", rc))); !slices.Equal(got, []fsmpb.AckOutcome{ok}) {
				t.Fatalf("late ack: %v, want ok", got)
			}
			if got := outcomes(h.ok(ackCmd("q", rc))); !slices.Equal(got, []fsmpb.AckOutcome{ok}) {
				t.Fatalf("repeated ack: %v, want ok", got)
			}
			if n := len(h.ok(recvCmd(recv("q", 10))).Deliveries); n != 0 {
				t.Fatalf("acked message delivered again (%d deliveries)", n)
			}
		}},
		{"ack of an id never issued is unknown; a purged tombstone is unknown", func(t *testing.T, h *harness) {
			h.ok(enq("q", msg("a", "")))
			rc := h.ok(recvCmd(recv("q", 1))).Deliveries[0].Receipt
			h.ok(ackCmd("q", rc))
			if got := outcomes(h.ok(ackCmd("q", receipt(2, 1), receipt(0, 1)))); !slices.Equal(got, []fsmpb.AckOutcome{unknownM, unknownM}) {
				t.Fatalf("never issued: %v, want unknown", got)
			}
			h.at(DefaultDedupWindow + time.Second)
			h.ok(tickCmd())
			if got := outcomes(h.ok(ackCmd("q", rc))); !slices.Equal(got, []fsmpb.AckOutcome{unknownM}) {
				t.Fatalf("after the tombstone's window: %v, want unknown", got)
			}
		}},
		{"nack with delay", func(t *testing.T, h *harness) {
			h.ok(enq("q", msg("a", ""), msg("b", "")))
			rc := h.ok(recvCmd(recv("q", 1))).Deliveries[0].Receipt
			if got := outcomes(h.ok(nackCmd("q", 5*time.Second, rc))); !slices.Equal(got, []fsmpb.AckOutcome{ok}) {
				t.Fatalf("nack: %v", got)
			}
			if st := h.stats("q"); st.Delayed != 1 || st.Ready != 1 || st.Leased != 0 {
				t.Fatalf("after nack: %v, want delayed 1 ready 1", st)
			}
			h.at(5*time.Second - 1)
			if got := bodies(h.ok(recvCmd(recv("q", 10)))); !slices.Equal(got, []string{"b"}) {
				t.Fatalf("before the nack delay: %v, want [b]", got)
			}
			h.at(5 * time.Second)
			r := h.ok(recvCmd(recv("q", 10)))
			if got := bodies(r); !slices.Equal(got, []string{"a"}) || r.Deliveries[0].Receipt.Attempt != 2 {
				t.Fatalf("after the nack delay: %v, want [a] attempt 2", r.Deliveries)
			}
			if got := outcomes(h.ok(nackCmd("q", 0, rc))); !slices.Equal(got, []fsmpb.AckOutcome{lost}) {
				t.Fatalf("nack with the stale receipt: %v, want lease lost", got)
			}
		}},
		{"extend keeps the lease past the visibility timeout", func(t *testing.T, h *harness) {
			h.ok(enq("q", msg("a", "")))
			rc := h.ok(recvCmd(&fsmpb.Receive{Queue: "q", Max: 1, VisibilityNs: int64(10 * time.Second)})).Deliveries[0].Receipt
			h.at(8 * time.Second)
			if got := outcomes(h.ok(extendCmd("q", 10*time.Second, rc))); !slices.Equal(got, []fsmpb.AckOutcome{ok}) {
				t.Fatalf("extend: %v", got)
			}
			h.at(15 * time.Second)
			if n := len(h.ok(recvCmd(recv("q", 1))).Deliveries); n != 0 {
				t.Fatal("extended lease was redelivered")
			}
			h.at(18 * time.Second)
			if r := h.ok(recvCmd(recv("q", 1))); len(r.Deliveries) != 1 || r.Deliveries[0].Receipt.Attempt != 2 {
				t.Fatalf("after the extension ran out: %v, want attempt 2", r.Deliveries)
			}
			if got := outcomes(h.ok(extendCmd("q", 0, rc))); !slices.Equal(got, []fsmpb.AckOutcome{lost}) {
				t.Fatalf("extend with the stale receipt: %v, want lease lost", got)
			}
		}},
		{"max deliveries moves the message to the dead-letter queue", func(t *testing.T, h *harness) {
			h.ok(createQ("dlq", nil))
			h.ok(createQ("w", settingsOf(func(s *fsmpb.QueueSettings) {
				s.MaxDeliveries = proto.Uint32(2)
				s.DeadLetterQueue = proto.String("dlq")
			})))
			h.ok(enq("w", &fsmpb.Message{Body: []byte("poison"), Attributes: []*fsmpb.Attribute{{Key: "k", Value: "v"}}}))
			for i := range 2 {
				h.at(time.Duration(i) * time.Minute)
				if n := len(h.ok(recvCmd(recv("w", 1))).Deliveries); n != 1 {
					t.Fatalf("delivery %d: got %d messages", i+1, n)
				}
			}
			h.at(2 * time.Minute)
			if n := len(h.ok(recvCmd(recv("w", 1))).Deliveries); n != 0 {
				t.Fatalf("third delivery happened, max_deliveries is 2")
			}
			if st := h.stats("w"); st.DeadLetteredTotal != 1 || st.Ready+st.Leased+st.Delayed != 0 {
				t.Fatalf("source stats %v: want dead_lettered_total 1, empty", st)
			}
			if st := h.stats("dlq"); st.DeadLettered != 1 || st.Ready != 1 {
				t.Fatalf("dlq stats %v: want dead_lettered 1, ready 1", st)
			}
			d := h.ok(recvCmd(recv("dlq", 1))).Deliveries[0]
			if string(d.Body) != "poison" || d.Receipt.Attempt != 1 || len(d.Attributes) != 1 || d.Attributes[0].Value != "v" {
				t.Fatalf("dead letter %v: want body poison, attempt 1, attribute k=v", d)
			}
		}},
		{"max deliveries without a dead-letter queue keeps the message dead", func(t *testing.T, h *harness) {
			h.ok(createQ("w", settingsOf(func(s *fsmpb.QueueSettings) { s.MaxDeliveries = proto.Uint32(1) })))
			h.ok(enq("w", msg("a", ""), msg("b", "")))
			rc := h.ok(recvCmd(recv("w", 1))).Deliveries[0].Receipt
			h.ok(nackCmd("w", 0, rc))
			if got := bodies(h.ok(recvCmd(recv("w", 10)))); !slices.Equal(got, []string{"b"}) {
				t.Fatalf("deliveries %v, want [b] (a dead)", got)
			}
			if st := h.stats("w"); st.Dead != 1 || st.DeadLetteredTotal != 0 {
				t.Fatalf("stats %v: want dead 1, nothing dead-lettered out", st)
			}
			if got := outcomes(h.ok(ackCmd("w", rc))); !slices.Equal(got, []fsmpb.AckOutcome{lost}) {
				t.Fatalf("ack of a dead-lettered message: %v, want lease lost", got)
			}
		}},
		{"a delayed message is not delivered early", func(t *testing.T, h *harness) {
			h.ok(enq("q", delayed("later", 10*time.Second), msg("now", "")))
			if got := bodies(h.ok(recvCmd(recv("q", 10)))); !slices.Equal(got, []string{"now"}) {
				t.Fatalf("deliveries %v, want [now]", got)
			}
			if st := h.stats("q"); st.Delayed != 1 {
				t.Fatalf("stats %v: want delayed 1", st)
			}
			h.at(10*time.Second - 1)
			if n := len(h.ok(recvCmd(recv("q", 10))).Deliveries); n != 0 {
				t.Fatal("delayed message delivered 1 ns early")
			}
			h.at(10 * time.Second)
			if got := bodies(h.ok(recvCmd(recv("q", 10)))); !slices.Equal(got, []string{"later"}) {
				t.Fatalf("deliveries %v, want [later]", got)
			}
		}},
		{"auto-ack deletes in the same command", func(t *testing.T, h *harness) {
			h.ok(enq("q", msg("a", ""), msg("b", "")))
			r := h.ok(recvCmd(&fsmpb.Receive{Queue: "q", Max: 1, AutoAck: true}))
			if got := bodies(r); !slices.Equal(got, []string{"a"}) {
				t.Fatalf("deliveries %v", got)
			}
			h.at(time.Hour)
			if got := bodies(h.ok(recvCmd(recv("q", 10)))); !slices.Equal(got, []string{"b"}) {
				t.Fatalf("after auto-ack and an hour: %v, want [b]", got)
			}
			if st := h.stats("q"); st.AckedTotal != 1 {
				t.Fatalf("stats %v: want acked 1", st)
			}
			if got := outcomes(h.ok(ackCmd("q", r.Deliveries[0].Receipt))); !slices.Equal(got, []fsmpb.AckOutcome{ok}) {
				t.Fatalf("ack of an auto-acked receipt: %v, want ok", got)
			}
		}},
		{"retention expiry: never delivered after it, counted by tick", func(t *testing.T, h *harness) {
			h.ok(updateQ("q", settingsOf(func(s *fsmpb.QueueSettings) { s.RetentionNs = proto.Int64(int64(time.Minute)) })))
			h.ok(enq("q", msg("old", "")))
			h.at(30 * time.Second)
			h.ok(enq("q", msg("young", "")))
			h.at(time.Minute)
			if got := bodies(h.ok(recvCmd(recv("q", 10)))); !slices.Equal(got, []string{"young"}) {
				t.Fatalf("deliveries %v, want [young]", got)
			}
			if st := h.stats("q"); st.ExpiredTotal != 1 {
				t.Fatalf("stats %v: want expired 1", st)
			}
			h.ok(enq("q", delayed("d", 0)))
			h.at(3 * time.Minute)
			h.ok(tickCmd())
			if st := h.stats("q"); st.ExpiredTotal != 3 || st.Ready+st.Leased+st.Delayed != 0 {
				t.Fatalf("after tick: %v, want expired 3, empty", st)
			}
		}},
		{"a transaction with one stale receipt changes nothing", func(t *testing.T, h *harness) {
			h.ok(createQ("out", nil))
			h.ok(enq("in", msg("a", ""), msg("b", "")))
			r := h.ok(recvCmd(recv("in", 2)))
			a, b := r.Deliveries[0].Receipt, r.Deliveries[1].Receipt
			stale := receipt(b.MessageId, b.Attempt+1)
			h.fails(txCmd(
				[]*fsmpb.Ack{{Queue: "in", Receipts: []*fsmpb.Receipt{a, stale}}},
				[]*fsmpb.Enqueue{{Queue: "out", Messages: []*fsmpb.Message{msg("A", "tx-1")}}},
			), fsmpb.ErrorCode_LEASE_LOST, "transaction.acks[0].receipts[1]")
			h.fails(txCmd(
				[]*fsmpb.Ack{{Queue: "in", Receipts: []*fsmpb.Receipt{a}}},
				[]*fsmpb.Enqueue{{Queue: "nowhere", Messages: []*fsmpb.Message{msg("A", "tx-1")}}},
			), fsmpb.ErrorCode_QUEUE_NOT_FOUND, "transaction.enqueues[0].queue")
			tx := txCmd(
				[]*fsmpb.Ack{{Queue: "in", Receipts: []*fsmpb.Receipt{a, b}}},
				[]*fsmpb.Enqueue{{Queue: "out", Messages: []*fsmpb.Message{msg("A", "tx-1"), msg("B", "tx-2")}}},
			)
			r = h.ok(tx)
			if len(r.Outcomes) != 2 || len(r.Enqueued) != 2 || r.Enqueued[0].Duplicate {
				t.Fatalf("transaction result %v", r)
			}
			// A retry after an unknown outcome is idempotent.
			r = h.ok(tx)
			if !r.Enqueued[0].Duplicate || !r.Enqueued[1].Duplicate {
				t.Fatalf("retried transaction enqueued again: %v", r)
			}
			if st := h.stats("out"); st.Ready != 2 || st.EnqueuedTotal != 2 {
				t.Fatalf("out stats %v: want 2 messages", st)
			}
		}},
		{"receive request-ID replay returns the same deliveries", func(t *testing.T, h *harness) {
			h.ok(enq("q", msg("a", ""), msg("b", ""), msg("c", "")))
			req := &fsmpb.Receive{Queue: "q", Max: 2, RequestId: "r1"}
			first := h.ok(recvCmd(req))
			before := h.stats("q")
			h.at(time.Second)
			again := h.ok(recvCmd(req))
			if !again.Replayed || !proto.Equal(&fsmpb.Result{Deliveries: first.Deliveries}, &fsmpb.Result{Deliveries: again.Deliveries}) {
				t.Fatalf("replay %v, want the first deliveries %v", again, first)
			}
			after := h.stats("q")
			if after.OldestReadyAgeNs != before.OldestReadyAgeNs+int64(time.Second) {
				t.Fatalf("oldest ready age went from %d to %d over 1s", before.OldestReadyAgeNs, after.OldestReadyAgeNs)
			}
			after.OldestReadyAgeNs = before.OldestReadyAgeNs // it grows with time, not with the replay
			if !proto.Equal(before, after) {
				t.Fatalf("replay changed stats: %v -> %v", before, after)
			}
			h.at(DefaultDedupWindow)
			if r := h.ok(recvCmd(req)); r.Replayed {
				t.Fatal("replayed after the window")
			}
		}},
		{"a replay returns only the deliveries still leased by the attempt that made them", func(t *testing.T, h *harness) {
			h.ok(enq("q", msg("a", ""), msg("b", ""), msg("c", ""), msg("d", "")))
			req := &fsmpb.Receive{Queue: "q", Max: 4, RequestId: "r1"}
			rs := h.ok(recvCmd(req)).Deliveries
			h.ok(ackCmd("q", rs[0].Receipt))
			h.ok(nackCmd("q", time.Hour, rs[1].Receipt))
			h.ok(extendCmd("q", time.Minute, rs[2].Receipt))
			h.at(time.Second)
			r := h.ok(recvCmd(req))
			if !r.Replayed || !slices.Equal(bodies(r), []string{"c", "d"}) {
				t.Fatalf("replay after a was acked and b nacked = %v; want c and d", r)
			}
			if c := r.Deliveries[0]; c.LeaseUntilUnixNano != t0+int64(time.Minute) || c.Receipt.Attempt != 1 {
				t.Fatalf("replayed c = %v; want its extended lease", c)
			}
			// d's lease ends and d is delivered again: the old receipt no
			// longer holds it, before and after the redelivery.
			h.at(DefaultVisibility)
			if r := h.ok(recvCmd(req)); !r.Replayed || !slices.Equal(bodies(r), []string{"c"}) {
				t.Fatalf("replay after d's lease ended = %v; want c alone", r)
			}
			if r := h.ok(recvCmd(recv("q", 4))); !slices.Equal(bodies(r), []string{"d"}) || r.Deliveries[0].Receipt.Attempt != 2 {
				t.Fatalf("receive after d's lease ended = %v; want d again", r)
			}
			if r := h.ok(recvCmd(req)); !r.Replayed || !slices.Equal(bodies(r), []string{"c"}) {
				t.Fatalf("replay after d was delivered again = %v; want c alone", r)
			}
		}},
		{"a replayed auto-ack receive returns the deleted messages again", func(t *testing.T, h *harness) {
			// A retry after a lost reply must not answer "empty" for a
			// receive that took the queue's head.
			h.ok(enq("q", msg("a", ""), msg("b", "")))
			req := &fsmpb.Receive{Queue: "q", Max: 1, AutoAck: true, RequestId: "r1"}
			first := h.ok(recvCmd(req))
			if !slices.Equal(bodies(first), []string{"a"}) {
				t.Fatalf("auto-ack receive = %v", first)
			}
			if r := h.ok(recvCmd(req)); !r.Replayed || !proto.Equal(&fsmpb.Result{Deliveries: first.Deliveries}, &fsmpb.Result{Deliveries: r.Deliveries}) {
				t.Fatalf("its replay = %v; want a again", r)
			}
			if st := h.stats("q"); st.Ready != 1 || st.AckedTotal != 1 {
				t.Fatalf("after the replay: %v; want b still ready", st)
			}
		}},
		{"an empty receive leaves no replay entry, so its long poll can still deliver", func(t *testing.T, h *harness) {
			// The server proposes the same receive (same request ID) again
			// when its long poll wakes; an entry recorded for the empty
			// first try would answer that with a replayed nothing.
			req := &fsmpb.Receive{Queue: "q", Max: 1, RequestId: "poll-1"}
			if r := h.ok(recvCmd(req)); len(r.Deliveries) != 0 || r.Replayed {
				t.Fatalf("receive of an empty queue = %v", r)
			}
			h.ok(enq("q", msg("a", "")))
			r := h.ok(recvCmd(req))
			if r.Replayed || len(r.Deliveries) != 1 || string(r.Deliveries[0].Body) != "a" {
				t.Fatalf("receive after the message arrived = %v; want a fresh delivery of a", r)
			}
			if again := h.ok(recvCmd(req)); !again.Replayed || len(again.Deliveries) != 1 {
				t.Fatalf("retry after the delivery = %v; want it replayed", again)
			}
		}},
		{"a command whose now goes backwards uses the last now", func(t *testing.T, h *harness) {
			h.at(time.Hour)
			h.ok(enq("q", msg("a", "")))
			h.at(0)
			r := h.ok(recvCmd(recv("q", 1)))
			if d := r.Deliveries[0]; d.LeaseUntilUnixNano != t0+int64(time.Hour+DefaultVisibility) {
				t.Fatalf("lease until %d, want last now + 30s", d.LeaseUntilUnixNano)
			}
			if got := h.f.Now().UnixNano(); got != t0+int64(time.Hour) {
				t.Fatalf("Now %d went backwards", got)
			}
		}},
		{"queue full rejects the whole batch", func(t *testing.T, h *harness) {
			h.ok(updateQ("q", settingsOf(func(s *fsmpb.QueueSettings) { s.MaxDepth = proto.Uint64(2) })))
			h.ok(enq("q", msg("a", "da")))
			h.fails(enq("q", msg("b", ""), msg("c", "")), fsmpb.ErrorCode_QUEUE_FULL, "max_depth is 2")
			// Duplicates do not count against the depth.
			if r := h.ok(enq("q", msg("a", "da"), msg("b", ""))); !r.Enqueued[0].Duplicate {
				t.Fatalf("%v", r)
			}
			h.fails(enq("q", msg("c", "")), fsmpb.ErrorCode_QUEUE_FULL, "queue \"q\" holds 2 messages")
		}},
		{"purge removes everything and counts it", func(t *testing.T, h *harness) {
			h.ok(enq("q", msg("a", ""), delayed("b", time.Hour), msg("c", "")))
			rc := h.ok(recvCmd(recv("q", 1))).Deliveries[0].Receipt
			if n := h.ok(purgeCmd("q")).Count; n != 3 {
				t.Fatalf("purged %d, want 3", n)
			}
			if got := outcomes(h.ok(ackCmd("q", rc))); !slices.Equal(got, []fsmpb.AckOutcome{lost}) {
				t.Fatalf("ack after purge: %v, want lease lost", got)
			}
			if r := h.ok(enq("q", msg("d", ""))); r.Enqueued[0].MessageId != 4 {
				t.Fatalf("id after purge %d, want 4 (never reused)", r.Enqueued[0].MessageId)
			}
		}},
		{"receive acks its previous batch first", func(t *testing.T, h *harness) {
			h.ok(enq("q", msg("a", ""), msg("b", "")))
			rc := h.ok(recvCmd(recv("q", 1))).Deliveries[0].Receipt
			r := h.ok(recvCmd(&fsmpb.Receive{Queue: "q", Max: 5, Ack: []*fsmpb.Receipt{rc}}))
			if got := bodies(r); !slices.Equal(got, []string{"b"}) || !slices.Equal(r.Outcomes, []fsmpb.AckOutcome{ok}) {
				t.Fatalf("%v", r)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.ok(createQ("q", nil))
			h.ok(createQ("in", nil))
			tc.run(t, h)
		})
	}
}

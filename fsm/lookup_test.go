package fsm

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unsafe"

	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/fsm/limits"
)

// lookup is Lookup that fails the test on an error.
func (h *harness) lookup(queue string, id uint64, dedupID string) *fsmpb.MessageFate {
	h.t.Helper()
	f, err := h.f.Lookup(queue, id, dedupID)
	if err != nil {
		h.t.Fatalf("lookup %s id %d dedup %q: %v", queue, id, dedupID, err)
	}
	return f
}

func recvAs(queue string, max uint32, consumer string) *fsmpb.Command {
	r := recv(queue, max)
	r.Consumer = consumer
	return recvCmd(r)
}

// Lookup tells where one message is, by id or dedup ID: live (ready,
// delayed, leased by whom until when), or what removed it (acked at T,
// expired, purged, dead-lettered or redriven to a queue as a new id), with
// the Raft index of the command that last changed it, and changes nothing.
func TestLookupTellsTheFateOfOneMessage(t *testing.T) {
	h := newHarness(t)
	h.ok(createWithDLQ("w", "dlq", true))
	h.ok(updateQ("w", settingsOf(func(s *fsmpb.QueueSettings) { s.MaxDeliveries = proto.Uint32(1) })))
	h.ok(enq("w", msg("a", "order-1"), delayed("later", time.Minute), msg("c", "order-3"), msg("d", "order-4")))
	enqIdx := h.idx

	if f := h.lookup("w", 0, "order-1"); f.State != fsmpb.MessageState_MESSAGE_READY || f.Id != 1 || f.EnqueuedAtUnixNano != t0 || f.ChangedIndex != enqIdx || f.AtUnixNano != 0 {
		t.Fatalf("fresh order-1: %v; want ready id 1 enqueued at t0, changed at %d", f, enqIdx)
	}
	if f := h.lookup("w", 2, ""); f.State != fsmpb.MessageState_MESSAGE_DELAYED || f.AtUnixNano != t0+int64(time.Minute) {
		t.Fatalf("id 2: %v; want delayed until t0+1m", f)
	}

	h.at(time.Second)
	d := h.ok(recvAs("w", 1, "host-a:41")).Deliveries[0]
	recvIdx := h.idx
	before := h.f.StateHash()
	f := h.lookup("w", 0, "order-1")
	if f.State != fsmpb.MessageState_MESSAGE_LEASED || f.Consumer != "host-a:41" || f.Attempts != 1 ||
		f.AtUnixNano != d.LeaseUntilUnixNano || f.ChangedIndex != recvIdx {
		t.Fatalf("leased order-1: %v; want leased by host-a:41, attempt 1, until %d, changed at %d", f, d.LeaseUntilUnixNano, recvIdx)
	}
	if h.f.StateHash() != before {
		t.Fatal("lookup changed the state")
	}

	h.at(2 * time.Second)
	h.ok(ackCmd("w", d.Receipt))
	ackIdx := h.idx
	if f := h.lookup("w", 0, "order-1"); f.State != fsmpb.MessageState_MESSAGE_ACKED || f.AtUnixNano != t0+int64(2*time.Second) ||
		f.Attempts != 1 || f.ChangedIndex != ackIdx || f.Id != 1 || f.DedupId != "order-1" {
		t.Fatalf("acked order-1: %v; want acked at t0+2s, attempt 1, changed at %d", f, ackIdx)
	}

	// Max deliveries: c (order-3) is delivered once and dead-lettered on
	// the next receive, which then leases d.
	h.ok(recvCmd(recv("w", 1)))
	h.at(time.Minute)
	// The lease of c ran out: this receive leases the delayed one,
	// dead-letters c and leases d.
	ds := h.ok(recvCmd(recv("w", 3))).Deliveries
	dlIdx := h.idx
	if len(ds) != 2 || string(ds[1].Body) != "d" {
		t.Fatalf("receive at 1m: %v; want later and d", ds)
	}
	f = h.lookup("w", 0, "order-3")
	if f.State != fsmpb.MessageState_MESSAGE_DEAD_LETTERED || f.MovedToQueue != "dlq" || f.MovedToId != 1 || f.ChangedIndex != dlIdx || f.Rejected {
		t.Fatalf("order-3: %v; want dead-lettered to dlq as id 1 at %d", f, dlIdx)
	}
	in := h.lookup("dlq", 1, "")
	if in.State != fsmpb.MessageState_MESSAGE_READY || in.DeadLetter.GetSourceQueue() != "w" || in.DeadLetter.GetSourceMessageId() != 3 || in.DedupId != "order-3" {
		t.Fatalf("dlq id 1: %v; want ready, from w id 3", in)
	}
	h.ok(redriveCmd("dlq", "", 10))
	rdIdx := h.idx
	if f := h.lookup("dlq", 1, ""); f.State != fsmpb.MessageState_MESSAGE_REDRIVEN || f.MovedToQueue != "w" || f.MovedToId != 5 || f.ChangedIndex != rdIdx {
		t.Fatalf("dlq id 1 after redrive: %v; want redriven to w as id 5 at %d", f, rdIdx)
	}

	// A reject: dead-lettered, and says so.
	h.ok(rejectCmd("w", "bad", ds[1].Receipt))
	if f := h.lookup("w", 0, "order-4"); f.State != fsmpb.MessageState_MESSAGE_DEAD_LETTERED || !f.Rejected || f.MovedToQueue != "dlq" || f.MovedToId != 2 {
		t.Fatalf("rejected order-4: %v; want dead-lettered (rejected) to dlq as id 2", f)
	}

	// Purge and expiry.
	h.ok(enq("w", msg("p", "purged")))
	h.ok(purgeCmd("w"))
	if f := h.lookup("w", 0, "purged"); f.State != fsmpb.MessageState_MESSAGE_PURGED {
		t.Fatalf("purged: %v", f)
	}
	h.ok(updateQ("w", settingsOf(func(s *fsmpb.QueueSettings) { s.RetentionNs = proto.Int64(int64(time.Minute)) })))
	h.ok(enq("w", msg("x", "expires")))
	h.at(2*time.Minute + time.Second)
	h.ok(tickCmd())
	if f := h.lookup("w", 0, "expires"); f.State != fsmpb.MessageState_MESSAGE_EXPIRED {
		t.Fatalf("expired: %v", f)
	}

	// Unknown: never issued, never seen, or out of the window.
	for _, f := range []*fsmpb.MessageFate{h.lookup("w", 99, ""), h.lookup("w", 0, "never")} {
		if f.State != fsmpb.MessageState_MESSAGE_UNKNOWN {
			t.Fatalf("unknown message: %v", f)
		}
	}
	// Fates, indexes and holders are in snapshots and the state hash.
	g := New()
	if err := g.Restore(persist(t, h.f)); err != nil {
		t.Fatal(err)
	}
	if g.StateHash() != h.f.StateHash() {
		t.Fatal("restored hash differs")
	}
	for _, k := range []struct {
		q  string
		id uint64
	}{{"w", 3}, {"w", 4}, {"dlq", 1}, {"w", 6}, {"w", 7}} {
		a, _ := h.f.Lookup(k.q, k.id, "")
		b, _ := g.Lookup(k.q, k.id, "")
		if a.GetState() == fsmpb.MessageState_MESSAGE_UNKNOWN || !proto.Equal(a, b) {
			t.Errorf("%s id %d: before restore %v, after %v", k.q, k.id, a, b)
		}
	}
	h.at(2 * time.Hour)
	h.ok(tickCmd())
	if f := h.lookup("w", 1, ""); f.State != fsmpb.MessageState_MESSAGE_UNKNOWN || f.Id != 1 {
		t.Fatalf("id 1 out of the window: %v; want unknown", f)
	}
}

// A message enqueued into a queue created on first use, or into a queue
// created by the command before it, records its command's index.
func TestLookupIndexOfNewQueues(t *testing.T) {
	h := newHarness(t)
	h.ok(enqCreate("fresh", "a"))
	if f := h.lookup("fresh", 1, ""); f.State != fsmpb.MessageState_MESSAGE_READY || f.ChangedIndex != h.idx {
		t.Fatalf("message of a queue created on first use: %v; want changed at %d", f, h.idx)
	}
	h.ok(createWithDLQ("w", "w-dlq", true))
	h.ok(updateQ("w", settingsOf(func(s *fsmpb.QueueSettings) { s.MaxDeliveries = proto.Uint32(1) })))
	h.ok(enq("w", msg("b", "")))
	h.ok(rejectCmd("w", "", h.ok(recvCmd(recv("w", 1))).Deliveries[0].Receipt))
	if f := h.lookup("w-dlq", 1, ""); f.ChangedIndex != h.idx {
		t.Fatalf("dead letter in a DLQ created with its queue: %v; want changed at %d", f, h.idx)
	}
}

// Lookup refuses a request that names both an id and a dedup ID, or
// neither, and an unknown queue.
func TestLookupRefusals(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	for _, c := range []struct {
		queue, dedup string
		id           uint64
		want         error
		msg          string
	}{
		{"q", "", 0, ErrInvalidArgument, "give an id or a dedup ID"},
		{"q", "x", 1, ErrInvalidArgument, "not both"},
		{"q", strings.Repeat("x", limits.MaxDedupID+1), 0, ErrInvalidArgument, "dedup_id is 129 bytes"},
		{"nope", "", 1, ErrQueueNotFound, "nope"},
	} {
		_, err := h.f.Lookup(c.queue, c.id, c.dedup)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("lookup %q id %d dedup %q: %v; want %v mentioning %q", c.queue, c.id, c.dedup, err, c.want, c.msg)
		}
	}
}

// Under rules 1 (a leader whose voters include an earlier release) a
// command records no index and no fate, as that release does not: the
// replicas keep the same state, and Lookup says the message was removed.
func TestLookupUnderEarlierRules(t *testing.T) {
	h := newHarness(t)
	h.rules = 1
	h.ok(createQ("q", nil))
	h.ok(enq("q", msg("a", "da"), msg("b", "db")))
	h.ok(purgeCmd("q"))
	if f := h.lookup("q", 0, "da"); f.State != fsmpb.MessageState_MESSAGE_REMOVED || f.ChangedIndex != 0 {
		t.Fatalf("purged under rules 1: %v; want removed, no index", f)
	}
	if b := persistBytes(t, h.f); len(b) == 0 {
		t.Fatal("empty snapshot")
	}
}

// A receive's consumer name is kept on each lease it takes, shown by peek
// and lookup, and checked against limits.MaxConsumer before anything
// changes.
func TestConsumerNameOnLeases(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	withAttr := msg("a", "")
	withAttr.Attributes = []*fsmpb.Attribute{{Key: "k", Value: "v"}}
	h.ok(enq("q", withAttr, msg("b", ""), msg("c", "")))
	h.fails(recvAs("q", 1, strings.Repeat("n", limits.MaxConsumer+1)), fsmpb.ErrorCode_INVALID_ARGUMENT,
		"receive.consumer is 129 bytes, limit is 128")
	h.fails(recvAs("q", 1, "bad\nname"), fsmpb.ErrorCode_INVALID_ARGUMENT, "receive.consumer has control byte")
	ds := h.ok(recvAs("q", 2, "worker-1")).Deliveries
	h.ok(recvCmd(recv("q", 1)))
	leased, _, err := h.f.Peek("q", PeekOptions{Max: 10, State: fsmpb.PeekState_PEEK_LEASED})
	if err != nil || len(leased) != 3 {
		t.Fatalf("peek leased: %v %v", leased, err)
	}
	for i, want := range []string{"worker-1", "worker-1", ""} {
		if leased[i].Consumer != want || leased[i].AtUnixNano == 0 {
			t.Errorf("lease of %d: holder %q until %d; want %q", leased[i].Id, leased[i].Consumer, leased[i].AtUnixNano, want)
		}
	}
	if leased[0].Attributes[0].GetKey() != "k" {
		t.Errorf("the holder lost the message's attributes: %v", leased[0])
	}
	// A nacked message is nobody's; the next receive's holder replaces it.
	h.ok(nackCmd("q", 0, ds[0].Receipt))
	if f := h.lookup("q", 1, ""); f.State != fsmpb.MessageState_MESSAGE_READY || f.Consumer != "" {
		t.Errorf("nacked message: %v; want ready, no holder", f)
	}
	h.ok(recvAs("q", 1, "worker-2"))
	if f := h.lookup("q", 1, ""); f.Consumer != "worker-2" || f.Attempts != 2 {
		t.Errorf("redelivered message: %v; want held by worker-2, attempt 2", f)
	}
}

// Stats say how old the oldest ready message is: a due delayed message
// and an ended lease count, as they do in ready.
func TestOldestReadyAge(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	if st := h.stats("q"); st.OldestReadyAgeNs != 0 {
		t.Fatalf("empty queue: oldest ready age %d", st.OldestReadyAgeNs)
	}
	h.ok(enq("q", delayed("late", time.Minute)))
	h.at(10 * time.Second)
	h.ok(enq("q", msg("b", "")))
	h.at(30 * time.Second)
	h.ok(tickCmd())
	if st := h.stats("q"); st.OldestReadyAgeNs != int64(20*time.Second) {
		t.Fatalf("oldest ready age %v, want 20s (b; the delayed one is not due)", time.Duration(st.OldestReadyAgeNs))
	}
	h.at(2 * time.Minute)
	h.ok(tickCmd())
	if st := h.stats("q"); st.OldestReadyAgeNs != int64(2*time.Minute) {
		t.Fatalf("oldest ready age %v, want 2m (the delayed one, enqueued at t0, is due)", time.Duration(st.OldestReadyAgeNs))
	}
}

// The message record stays in the 80-byte size class with its index.
func TestMessageRecordSize(t *testing.T) {
	if n := unsafe.Sizeof(message{}); n != 80 {
		t.Fatalf("message record is %d bytes, want 80", n)
	}
}

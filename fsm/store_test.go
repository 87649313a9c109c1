package fsm

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// applyRaw applies cmd as the next entry without reading any body, as a
// follower does (and as the leader does before FillBodies).
func (h *harness) applyRaw(cmd *fsmpb.Command) *fsmpb.Result {
	h.t.Helper()
	cmd.NowUnixNano, cmd.Rules = h.now, h.rules
	data, err := Encode(cmd)
	if err != nil {
		h.t.Fatal(err)
	}
	h.idx++
	res := h.f.Apply(&raft.Log{Index: h.idx, Type: raft.LogCommand, Data: data}).(*fsmpb.Result)
	if err := ResultError(res); err != nil {
		h.t.Fatalf("%v: %v", cmd, err)
	}
	return res
}

// A receive's Apply reads no body: its deliveries come without bodies and
// attributes, and FillBodies reads them afterwards. A delivery whose body
// a later entry deleted before FillBodies ran is left out of the answer.
func TestReceiveBodiesAreReadAfterApply(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	h.ok(enq("q", msg("a", ""), &fsmpb.Message{Body: []byte("b"), Attributes: []*fsmpb.Attribute{{Key: "k", Value: "v"}}}, msg("c", "")))

	res := h.applyRaw(recvCmd(recv("q", 2)))
	if len(res.Deliveries) != 2 || res.Deliveries[0].Body != nil || res.Deliveries[1].Attributes != nil || len(res.BodyRefs) != 2 {
		t.Fatalf("Apply of a receive answered %v, want two deliveries without bodies and their refs", res)
	}
	if err := h.f.FillBodies(res); err != nil {
		t.Fatal(err)
	}
	if got := bodies(res); len(got) != 2 || got[0] != "a" || got[1] != "b" || res.Deliveries[1].Attributes[0].GetValue() != "v" || res.BodyRefs != nil {
		t.Fatalf("filled: %v", res)
	}

	late := h.applyRaw(recvCmd(recv("q", 1)))
	h.ok(purgeCmd("q"))
	if err := h.f.FillBodies(late); err != nil {
		t.Fatal(err)
	}
	if len(late.Deliveries) != 0 {
		t.Fatalf("a delivery whose message was purged before its body was read: %v, want none", late.Deliveries)
	}
}

// An auto-ack receive without a request ID deletes what it delivers, so
// its Apply reads the bodies; one with a request ID keeps them in the
// store for its replay entry, which answers a retry with them until Tick
// drops the entry and its bodies.
func TestAutoAckBodies(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", &fsmpb.QueueSettings{DedupWindowNs: proto.Int64(int64(time.Minute))}))
	h.ok(enq("q", msg("a", ""), msg("b", ""), msg("c", "")))
	store := h.f.store.(*MemStore)

	res := h.applyRaw(recvCmd(&fsmpb.Receive{Queue: "q", Max: 1, AutoAck: true}))
	if got := bodies(res); len(got) != 1 || got[0] != "a" {
		t.Fatalf("auto-ack receive answered %v, want body a from Apply", res)
	}
	if store.Len() != 2 {
		t.Fatalf("store holds %d bodies after an auto-ack of one of three, want 2", store.Len())
	}

	res = h.ok(recvCmd(&fsmpb.Receive{Queue: "q", Max: 1, AutoAck: true, RequestId: "r"}))
	if got := bodies(res); len(got) != 1 || got[0] != "b" || store.Len() != 2 {
		t.Fatalf("auto-ack receive with a request ID: %v, store %d bodies; want b and 2", res, store.Len())
	}
	res = h.ok(recvCmd(&fsmpb.Receive{Queue: "q", Max: 1, AutoAck: true, RequestId: "r"}))
	if got := bodies(res); !res.Replayed || len(got) != 1 || got[0] != "b" {
		t.Fatalf("retry: %v, want b replayed", res)
	}
	h.at(2 * time.Minute).ok(tickCmd())
	if store.Len() != 1 {
		t.Fatalf("store holds %d bodies after the replay window, want 1 (c)", store.Len())
	}
}

// A transaction that fails half-way, after its acks and first enqueue
// ran, leaves the store as it was, as it leaves the state.
func TestFailedTransactionLeavesTheStore(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	h.ok(enq("q", msg("a", ""), msg("b", "")))
	d := h.ok(recvCmd(recv("q", 1))).Deliveries[0]
	store := h.f.store.(*MemStore)
	before := store.Len()
	h.fails(txCmd([]*fsmpb.Ack{{Queue: "q", Receipts: []*fsmpb.Receipt{d.Receipt}}},
		[]*fsmpb.Enqueue{{Queue: "q", Messages: []*fsmpb.Message{msg("new", "")}}, {Queue: "missing", Messages: []*fsmpb.Message{msg("x", "")}}}),
		fsmpb.ErrorCode_QUEUE_NOT_FOUND, "missing")
	if store.Len() != before {
		t.Fatalf("store holds %d bodies after a failed transaction, %d before", store.Len(), before)
	}
}

// Dead-lettering and redrive move a message without writing its body
// again: the dead letter and the redriven message refer to the value the
// enqueue stored, and the store holds one copy.
func TestMovesKeepTheStoredBody(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("dlq", nil))
	h.ok(createQ("q", &fsmpb.QueueSettings{DeadLetterQueue: protoStr("dlq")}))
	h.ok(enq("q", &fsmpb.Message{Body: []byte("poison"), Attributes: []*fsmpb.Attribute{{Key: "k", Value: "v"}}}))
	store := h.f.store.(*MemStore)
	h.f.mu.RLock()
	m, _ := h.f.get("q").msgs.Min()
	id := m.body.id
	h.f.mu.RUnlock()

	d := h.ok(recvCmd(recv("q", 1))).Deliveries[0]
	h.ok(&fsmpb.Command{Op: &fsmpb.Command_Reject{Reject: &fsmpb.Reject{Queue: "q", Receipts: []*fsmpb.Receipt{d.Receipt}}}})
	h.ok(&fsmpb.Command{Op: &fsmpb.Command_Redrive{Redrive: &fsmpb.Redrive{Queue: "dlq", Max: 10}}})
	h.f.mu.RLock()
	live, _ := h.f.get("q").msgs.Max()
	h.f.mu.RUnlock()
	if live.body.id != id || store.Len() != 1 {
		t.Fatalf("redriven message refers to body %d (stored %d), store holds %d; want the original and 1", live.body.id, id, store.Len())
	}
	res := h.ok(recvCmd(recv("q", 1)))
	if got := bodies(res); len(got) != 1 || got[0] != "poison" || res.Deliveries[0].Attributes[0].GetValue() != "v" {
		t.Fatalf("redriven message delivered as %v", res)
	}
}

// failingStore is a MemStore whose commits fail once fail is set: a full
// or broken disk under the store.
type failingStore struct {
	*MemStore
	fail bool
}

func (s *failingStore) Batch() StoreBatch { return failingBatch{s.MemStore.Batch(), s} }

type failingBatch struct {
	StoreBatch
	s *failingStore
}

func (b failingBatch) Commit() error {
	if b.s.fail {
		return errors.New("no space left on device")
	}
	return b.StoreBatch.Commit()
}

// A store that cannot commit an entry's writes stops the node (Apply
// panics with the store's error) instead of answering as if the entry
// applied, and a restore into it fails without changing the state.
func TestStoreFailureStopsApply(t *testing.T) {
	s := &failingStore{MemStore: NewMemStore()}
	h := &harness{t: t, f: NewWithStore(s), now: t0, rules: Rules}
	h.ok(createQ("q", nil))
	h.ok(enq("q", msg("a", "")))
	snap := persistBytes(t, h.f)
	s.fail = true
	func() {
		defer func() {
			r := recover()
			if err, ok := r.(error); !ok || !bytes.Contains([]byte(err.Error()), []byte("no space left")) {
				t.Fatalf("Apply with a failing store: recovered %v, want a panic with the store's error", r)
			}
		}()
		h.apply(enq("q", msg("b", "")))
	}()
	hash := h.f.StateHash()
	if err := h.f.Restore(io.NopCloser(bytes.NewReader(snap))); err == nil {
		t.Fatal("restore into a failing store succeeded")
	}
	if h.f.StateHash() != hash {
		t.Fatal("a failed restore changed the state")
	}
}

// A message dead-lettered and redriven keeps one stored body, which the
// redriven record delivers, while the tombstones it left say where it
// went; a restore from a snapshot keeps both, with the consumer of a
// lease and the state hash.
func TestMovedMessageKeepsBodyAndFate(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("dlq", nil))
	h.ok(createQ("q", &fsmpb.QueueSettings{DeadLetterQueue: protoStr("dlq")}))
	h.ok(enq("q", &fsmpb.Message{Body: []byte("poison"), DedupId: "p", Attributes: []*fsmpb.Attribute{{Key: "k", Value: "v"}}}))
	d := h.ok(recvCmd(recv("q", 1))).Deliveries[0]
	h.ok(&fsmpb.Command{Op: &fsmpb.Command_Reject{Reject: &fsmpb.Reject{Queue: "q", Receipts: []*fsmpb.Receipt{d.Receipt}}}})
	h.ok(&fsmpb.Command{Op: &fsmpb.Command_Redrive{Redrive: &fsmpb.Redrive{Queue: "dlq", Max: 10}}})
	redriveIdx := h.idx
	h.ok(recvAs("q", 1, "host-b:7"))

	g := &harness{t: t, f: New(), idx: h.idx, now: h.now, rules: h.rules}
	if err := g.f.Restore(persist(t, h.f)); err != nil {
		t.Fatal(err)
	}
	if g.f.StateHash() != h.f.StateHash() {
		t.Fatal("restored state hash differs")
	}
	for _, x := range []*harness{h, g} {
		if n := x.f.store.(*MemStore).Len(); n != 1 {
			t.Fatalf("store holds %d values, want the moved body once", n)
		}
		if f := x.lookup("q", 0, "p"); f.State != fsmpb.MessageState_MESSAGE_DEAD_LETTERED || f.MovedToQueue != "dlq" || f.MovedToId != 1 || !f.Rejected {
			t.Fatalf("source tombstone: %v; want dead-lettered to dlq as 1 by a reject", f)
		}
		if f := x.lookup("dlq", 1, ""); f.State != fsmpb.MessageState_MESSAGE_REDRIVEN || f.MovedToQueue != "q" || f.MovedToId != 2 || f.ChangedIndex != redriveIdx {
			t.Fatalf("dead letter's tombstone: %v; want redriven to q as 2 at index %d", f, redriveIdx)
		}
		if f := x.lookup("q", 2, ""); f.State != fsmpb.MessageState_MESSAGE_LEASED || f.Consumer != "host-b:7" {
			t.Fatalf("redriven message: %v; want leased by host-b:7", f)
		}
		msgs, _, err := x.f.Peek("q", PeekOptions{Max: 10, State: fsmpb.PeekState_PEEK_LEASED})
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != 1 || string(msgs[0].Body) != "poison" || msgs[0].BodySize != 6 || msgs[0].Consumer != "host-b:7" ||
			len(msgs[0].Attributes) != 1 || msgs[0].Attributes[0].GetValue() != "v" {
			t.Fatalf("peek of the redriven message: %v", msgs)
		}
	}
}

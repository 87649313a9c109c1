package fsm

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

func enqAfter(queue, after string, msgs ...*fsmpb.Message) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Enqueue{Enqueue: &fsmpb.Enqueue{Queue: queue, Messages: msgs, AfterDedupId: after}}}
}

// A producer with two batches in flight sends B behind A. If Raft gets B
// first (A was refused, lost with a leader, or simply not yet submitted),
// B must not be enqueued: it is refused, and sent again behind A, so the
// queue holds A's messages before B's.
func TestEnqueueAfterKeepsPipelinedBatchesInOrder(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))

	// B arrives before A: refused, nothing changes.
	r := h.fails(enqAfter("q", "a2", msg("b1", "b1"), msg("b2", "b2")), fsmpb.ErrorCode_OUT_OF_ORDER, `after_dedup_id: no message with dedup ID "a2"`)
	if len(r.GetEnqueued()) != 0 {
		t.Fatalf("refused batch returned results %v", r.GetEnqueued())
	}
	h.ok(enq("q", msg("a1", "a1"), msg("a2", "a2")))
	h.ok(enqAfter("q", "a2", msg("b1", "b1"), msg("b2", "b2")))
	if got := bodies(h.ok(recvCmd(recv("q", 10)))); !slices.Equal(got, []string{"a1", "a2", "b1", "b2"}) {
		t.Fatalf("queue order %v, want [a1 a2 b1 b2]", got)
	}
}

func TestEnqueueAfterAFailedBatchIsRefused(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", settingsOf(func(s *fsmpb.QueueSettings) { v := uint64(2); s.MaxDepth = &v })))
	h.ok(enq("q", msg("x", "x")))
	// A does not fit; B, pipelined behind it, must not go in its place.
	h.fails(enq("q", msg("a1", "a1"), msg("a2", "a2")), fsmpb.ErrorCode_QUEUE_FULL, "max_depth is 2")
	h.fails(enqAfter("q", "a2", msg("b1", "b1")), fsmpb.ErrorCode_OUT_OF_ORDER, "a2")
	// Behind a message that is there, B goes.
	h.ok(enqAfter("q", "x", msg("b1", "b1")))
}

func TestEnqueueAfterCountsDuplicatesAndAckedMessagesUntilTheWindowEnds(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	h.ok(enq("q", msg("a", "a")))
	// A's retry finds a duplicate: A is still in the queue's history.
	if r := h.ok(enq("q", msg("a", "a"))); !r.GetEnqueued()[0].GetDuplicate() {
		t.Fatalf("retry of a: %v, want duplicate", r.GetEnqueued())
	}
	d := h.ok(recvCmd(recv("q", 1))).GetDeliveries()[0]
	h.ok(ackCmd("q", d.GetReceipt()))
	h.ok(enqAfter("q", "a", msg("b", "b")))
	h.at(DefaultDedupWindow + time.Second)
	h.fails(enqAfter("q", "a", msg("c", "c")), fsmpb.ErrorCode_OUT_OF_ORDER, "dedup window")
}

func TestEnqueueAfterIsValidated(t *testing.T) {
	h := newHarness(t)
	h.ok(createQ("q", nil))
	long := strings.Repeat("x", MaxDedupID+1)
	h.fails(enqAfter("q", long, msg("b", "b")), fsmpb.ErrorCode_INVALID_ARGUMENT, "after_dedup_id is 129 bytes, limit is 128")
	h.fails(enqAfter("nope", "a", msg("b", "b")), fsmpb.ErrorCode_QUEUE_NOT_FOUND, "nope")
}

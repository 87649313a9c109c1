package cluster

import (
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// batchReq is batch i of n messages, chained behind batch i-1's last
// message as a pipelining producer sends it.
func batchReq(queue string, i, n int) *quorumqpb.EnqueueRequest {
	req := &quorumqpb.EnqueueRequest{Queue: queue}
	for j := range n {
		req.Messages = append(req.Messages, &fsmpb.Message{Body: fmt.Appendf(nil, "%d.%d", i, j), DedupId: fmt.Sprintf("b%d-%d", i, j)})
	}
	if i > 0 {
		req.AfterDedupId = fmt.Sprintf("b%d-%d", i-1, n-1)
	}
	return req
}

// TestEnqueueStreamAnswersInOrder sends 50 batches on one stream before
// reading any answer: Raft gets them in order, so message IDs rise from
// one batch to the next, and every answer comes back in sending order.
func TestEnqueueStreamAnswersInOrder(t *testing.T) {
	c := StartTestCluster(t, 3)
	li := c.Index(c.Leader(t))
	q := quorumqpb.NewQueueClient(c.Conn(t, li))
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "s"}); err != nil {
		t.Fatal(err)
	}
	st, err := q.EnqueueStream(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	const batches, size = 50, 10
	for i := range batches {
		if err := st.Send(batchReq("s", i, size)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var last uint64
	for i := range batches {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		if len(resp.GetResults()) != size {
			t.Fatalf("answer %d: %d results, want %d", i, len(resp.GetResults()), size)
		}
		for _, r := range resp.GetResults() {
			if r.GetMessageId() <= last || r.GetDuplicate() {
				t.Fatalf("answer %d: message %d (duplicate %v) after %d: out of order", i, r.GetMessageId(), r.GetDuplicate(), last)
			}
			last = r.GetMessageId()
		}
	}
	if _, err := st.Recv(); err != io.EOF {
		t.Fatalf("after the last answer: %v, want EOF", err)
	}
}

// TestEnqueueStreamEndsAtTheFirstFailure: a batch chained behind one that
// is not in the queue is refused with OUT_OF_ORDER, the stream ends with
// that error, and a batch chained behind the refused one (sent before the
// refusal was known) is not enqueued either.
func TestEnqueueStreamEndsAtTheFirstFailure(t *testing.T) {
	c := StartTestCluster(t, 3)
	leader := c.Leader(t)
	li := c.Index(leader)
	q := quorumqpb.NewQueueClient(c.Conn(t, li))
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "s"}); err != nil {
		t.Fatal(err)
	}
	st, err := q.EnqueueStream(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// Batch 0 goes; batch 2 is chained behind batch 1, which was never sent.
	for _, i := range []int{0, 2, 3} {
		if err := st.Send(batchReq("s", i, 3)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Recv(); err != nil {
		t.Fatalf("batch 0: %v", err)
	}
	_, err = st.Recv()
	if code, _ := wire.QueueErrorCode(err); status.Code(err) != codes.FailedPrecondition || code != fsmpb.ErrorCode_OUT_OF_ORDER {
		t.Fatalf("batch 2 behind a missing batch: %v, want FailedPrecondition with OUT_OF_ORDER", err)
	}
	c.WaitReplicated(t)
	info, err := q.GetQueue(ctxT(t, 10*time.Second), &quorumqpb.GetQueueRequest{Name: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if got := info.GetQueue().GetStats().GetEnqueuedTotal(); got != 3 {
		t.Fatalf("enqueued_total %d, want 3 (batch 0 only)", got)
	}

	// A follower refuses with the leader's address.
	fi := (li + 1) % 3
	fst, err := quorumqpb.NewQueueClient(c.Conn(t, fi)).EnqueueStream(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := fst.Send(batchReq("s", 9, 1)); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	_, err = fst.Recv()
	if _, hint, ok := wire.LeaderHint(err); !ok || hint != leader.APIAddr() {
		t.Fatalf("stream to a follower: %v, want NotLeader naming %s", err, leader.APIAddr())
	}
}

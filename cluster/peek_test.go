package cluster

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// A peek on real nodes leases nothing and moves no counter and no log
// index; paging a follower's view by id covers every live message exactly
// once; leader = true is answered only by the leader.
func TestPeekReadsWithoutChangingAnything(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.TickInterval = time.Hour })
	leader := c.Leader(t)
	li := c.Index(leader)
	fi := (li + 1) % 3
	var bodies []string
	for i := range 25 {
		bodies = append(bodies, fmt.Sprintf("m%02d", i))
	}
	enqueue(t, c, li, "q", bodies...)
	lq := quorumqpb.NewQueueClient(c.Conn(t, li))
	rcv, err := lq.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "q", Max: 3})
	if err != nil || len(rcv.GetDeliveries()) != 3 {
		t.Fatalf("receive: %v %v", rcv, err)
	}
	c.WaitReplicated(t)
	before, err := lq.GetQueue(ctxT(t, 10*time.Second), &quorumqpb.GetQueueRequest{Name: "q"})
	if err != nil {
		t.Fatal(err)
	}
	index := leader.raft.LastIndex()

	fq := quorumqpb.NewQueueClient(c.Conn(t, fi))
	seen := map[uint64]int{}
	leased := 0
	from, pages := uint64(0), 0
	for {
		resp, err := fq.Peek(ctxT(t, 10*time.Second), &quorumqpb.PeekRequest{Queue: "q", FromId: from, Max: 7})
		if err != nil {
			t.Fatalf("peek on follower from %d: %v", from, err)
		}
		pages++
		for _, m := range resp.GetMessages() {
			seen[m.GetId()]++
			if m.GetState() == fsmpb.PeekState_PEEK_LEASED {
				leased++
			}
		}
		if resp.GetNextId() == 0 {
			break
		}
		from = resp.GetNextId()
	}
	if pages != 4 || len(seen) != 25 || leased != 3 {
		t.Errorf("paging in 7s: %d pages, %d distinct ids, %d leased; want 4, 25, 3", pages, len(seen), leased)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("message %d seen %d times", id, n)
		}
	}

	ready, err := lq.Peek(ctxT(t, 10*time.Second), &quorumqpb.PeekRequest{Queue: "q", Max: 100, State: fsmpb.PeekState_PEEK_READY, NoBody: true, Leader: true})
	if err != nil || len(ready.GetMessages()) != 22 || len(ready.GetMessages()[0].GetBody()) != 0 || ready.GetMessages()[0].GetBodySize() != 3 {
		t.Errorf("leader peek of ready without bodies: %d messages, %v", len(ready.GetMessages()), err)
	}
	if _, err := fq.Peek(ctxT(t, 10*time.Second), &quorumqpb.PeekRequest{Queue: "q", Max: 1, Leader: true}); status.Code(err) != codes.Unavailable {
		t.Errorf("leader peek on a follower: %v, want Unavailable (not the leader)", err)
	}

	if after := leader.raft.LastIndex(); after != index {
		t.Errorf("peeks moved the Raft log from %d to %d", index, after)
	}
	after, err := lq.GetQueue(ctxT(t, 10*time.Second), &quorumqpb.GetQueueRequest{Name: "q"})
	if err != nil {
		t.Fatal(err)
	}
	// The oldest ready message grows older with time, peeks or not.
	after.GetQueue().GetStats().OldestReadyAgeNs = before.GetQueue().GetStats().GetOldestReadyAgeNs()
	if !proto.Equal(before.GetQueue().GetStats(), after.GetQueue().GetStats()) {
		t.Errorf("peeks changed the stats:\n before %v\n after  %v", before.GetQueue().GetStats(), after.GetQueue().GetStats())
	}
}

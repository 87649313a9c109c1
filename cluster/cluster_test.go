package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// enqueue sends bodies to queue through node i and fails the test on error.
func enqueue(t *testing.T, c *TestCluster, i int, queue string, bodies ...string) []*fsmpb.EnqueueResult {
	t.Helper()
	req := &quorumqpb.EnqueueRequest{Queue: queue}
	for _, b := range bodies {
		req.Messages = append(req.Messages, &fsmpb.Message{Body: []byte(b), DedupId: queue + "/" + b})
	}
	resp, err := quorumqpb.NewQueueClient(c.Conn(t, i)).Enqueue(ctxT(t, 10*time.Second), req)
	if err != nil {
		t.Fatalf("enqueue on %s: %v", c.Nodes[i].ID(), err)
	}
	if len(resp.GetResults()) != len(bodies) {
		t.Fatalf("enqueue: %d results for %d messages", len(resp.GetResults()), len(bodies))
	}
	return resp.GetResults()
}

func TestReplicatesToEveryNode(t *testing.T) {
	c := StartTestCluster(t, 3)
	leader := c.Leader(t)
	li := c.Index(leader)
	res := enqueue(t, c, li, "orders", "a", "b", "c")
	if res[0].GetMessageId() == 0 || res[2].GetMessageId() <= res[0].GetMessageId() {
		t.Fatalf("message IDs not increasing: %v", res)
	}
	hash := c.WaitReplicated(t)
	for _, n := range c.Nodes {
		info, err := n.fsm.Queue("orders")
		if err != nil {
			t.Fatalf("%s: %v", n.ID(), err)
		}
		if got := info.GetStats().GetReady(); got != 3 {
			t.Errorf("%s: %d ready messages, want 3", n.ID(), got)
		}
		if n.StateHash() != hash {
			t.Errorf("%s: state hash %s, want %s", n.ID(), n.StateHash(), hash)
		}
	}
}

func TestFollowerRejectsWriteWithLeaderHint(t *testing.T) {
	c := StartTestCluster(t, 3)
	leader := c.Leader(t)
	fi := (c.Index(leader) + 1) % 3
	_, err := quorumqpb.NewQueueClient(c.Conn(t, fi)).Enqueue(ctxT(t, 5*time.Second), &quorumqpb.EnqueueRequest{
		Queue: "q", Messages: []*fsmpb.Message{{Body: []byte("x")}},
	})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("write on follower: %v, want Unavailable", err)
	}
	id, addr, ok := wire.LeaderHint(err)
	if !ok || id != leader.ID() || addr != leader.APIAddr() {
		t.Fatalf("leader hint = (%q, %q, %v), want (%q, %q)", id, addr, ok, leader.ID(), leader.APIAddr())
	}
	// Reads are leader-only too.
	_, err = quorumqpb.NewQueueClient(c.Conn(t, fi)).ListQueues(ctxT(t, 5*time.Second), &quorumqpb.ListQueuesRequest{})
	if id, _, ok := wire.LeaderHint(err); !ok || id != leader.ID() {
		t.Fatalf("read on follower: %v, want a NotLeader hint to %s", err, leader.ID())
	}
	// And nothing was written anywhere.
	c.WaitReplicated(t)
	if _, err := leader.fsm.Queue("q"); err == nil {
		t.Fatalf("queue q exists after a rejected write")
	}
}

func TestLeaderKillNewLeaderKeepsAcknowledgedWrites(t *testing.T) {
	c := StartTestCluster(t, 3)
	old := c.Leader(t)
	oi := c.Index(old)
	var bodies []string
	for i := 0; i < 50; i++ {
		bodies = append(bodies, fmt.Sprintf("m%02d", i))
	}
	enqueue(t, c, oi, "jobs", bodies...)

	killed := time.Now()
	c.Kill(oi)
	// Write through whichever node becomes leader, as a client would.
	var elapsed time.Duration
	for {
		if time.Since(killed) > 20*time.Second {
			t.Fatalf("no write succeeded within 20 s of the leader kill")
		}
		ok := false
		for i, n := range c.Nodes {
			if n == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := quorumqpb.NewQueueClient(c.Conn(t, i)).Enqueue(ctx, &quorumqpb.EnqueueRequest{
				Queue: "jobs", Messages: []*fsmpb.Message{{Body: []byte("after"), DedupId: "jobs/after"}},
			})
			cancel()
			if err == nil {
				ok = true
				break
			}
		}
		if ok {
			elapsed = time.Since(killed)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("leader kill -> first successful write on the new leader: %v", elapsed)
	nl := c.Leader(t)
	if nl == old {
		t.Fatalf("killed leader still leads")
	}
	c.WaitReplicated(t)
	info, err := nl.fsm.Queue("jobs")
	if err != nil {
		t.Fatal(err)
	}
	if got := info.GetStats().GetReady(); got != 51 {
		t.Fatalf("new leader has %d ready messages, want the 50 acknowledged before the kill + 1", got)
	}
}

func TestStatusReportsEveryNodeAndTheUnreachable(t *testing.T) {
	c := StartTestCluster(t, 3)
	leader := c.Leader(t)
	li := c.Index(leader)
	enqueue(t, c, li, "q", "a")
	c.WaitReplicated(t) // every node has applied something to report
	fi := (li + 1) % 3
	c.Kill(fi)
	cl := quorumqpb.NewClusterClient(c.Conn(t, li))
	st, err := cl.Status(ctxT(t, 10*time.Second), &quorumqpb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetLeaderId() != leader.ID() || st.GetLeaderApiAddr() != leader.APIAddr() {
		t.Fatalf("status leader = %s at %s, want %s at %s", st.GetLeaderId(), st.GetLeaderApiAddr(), leader.ID(), leader.APIAddr())
	}
	byID := map[string]*quorumqpb.NodeStatus{}
	for _, n := range st.GetNodes() {
		byID[n.GetId()] = n
	}
	if len(byID) != 3 {
		t.Fatalf("status lists %v, want n1..n3", byID)
	}
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("n%d", i+1)
		ns := byID[id]
		switch {
		case i == fi && ns.GetError() == "":
			t.Errorf("%s is down but has no error: %v", id, ns)
		case i != fi && (ns.GetError() != "" || ns.GetTerm() == 0 || ns.GetAppliedIndex() == 0 || !ns.GetVoter()):
			t.Errorf("%s: %v", id, ns)
		case i != fi && (ns.GetDiskSizeBytes() == 0 || ns.GetDiskFreeBytes() == 0 || ns.GetDiskFreeBytes() > ns.GetDiskSizeBytes() || ns.GetDiskError() != "" || ns.GetVersion() == ""):
			t.Errorf("%s reports disk free %d of %d (%q), version %q: want its own reading", id, ns.GetDiskFreeBytes(), ns.GetDiskSizeBytes(), ns.GetDiskError(), ns.GetVersion())
		case i == li && ns.GetState() != "Leader":
			t.Errorf("%s state %q, want Leader", id, ns.GetState())
		}
	}
	lr, err := quorumqpb.NewClusterClient(c.Conn(t, (fi+1)%3)).Leader(ctxT(t, 5*time.Second), &quorumqpb.LeaderRequest{})
	if err != nil || lr.GetLeaderId() != leader.ID() || lr.GetLeaderApiAddr() != leader.APIAddr() {
		t.Fatalf("Leader on a follower = %v, %v", lr, err)
	}
}

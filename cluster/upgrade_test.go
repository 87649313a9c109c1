package cluster

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// upgrade restarts node i gossiping every log feature of this build, as
// a server upgraded to this release does.
func upgrade(t *testing.T, c *TestCluster, i int) {
	t.Helper()
	c.Shutdown(t, i)
	c.mu.Lock()
	c.configs[i].features = nil
	c.mu.Unlock()
	c.Restart(t, i)
}

// logCommands returns the commands in node's log after index from.
func logCommands(t *testing.T, node *Node, from uint64) []*fsmpb.Command {
	t.Helper()
	last, err := node.store.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	var out []*fsmpb.Command
	for i := from + 1; i <= last; i++ {
		var l raft.Log
		if err := node.store.GetLog(i, &l); err != nil {
			t.Fatalf("log entry %d: %v", i, err)
		}
		if l.Type != raft.LogCommand {
			continue
		}
		cmd, err := fsm.Decode(l.Data)
		if err != nil {
			t.Fatalf("log entry %d: %v", i, err)
		}
		out = append(out, cmd)
	}
	return out
}

// chainedEntries counts, among node's log entries after index from, the
// enqueues that carry an after_dedup_id and those that do not.
func chainedEntries(t *testing.T, node *Node, from uint64) (chained, plain int) {
	t.Helper()
	for _, cmd := range logCommands(t, node, from) {
		enqs := cmd.GetTransaction().GetEnqueues()
		if e := cmd.GetEnqueue(); e != nil {
			enqs = append(enqs, e)
		}
		for _, e := range enqs {
			if e.GetAfterDedupId() != "" {
				chained++
			} else {
				plain++
			}
		}
	}
	return chained, plain
}

// streamChained sends batches first..first+n-1 of batchReq on one stream
// and checks every answer.
func streamChained(t *testing.T, q quorumqpb.QueueClient, first, n int) {
	t.Helper()
	st, err := q.EnqueueStream(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for i := first; i < first+n; i++ {
		if err := st.Send(batchReq("up", i, 4)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var last uint64
	for i := first; i < first+n; i++ {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
		for _, r := range resp.GetResults() {
			if r.GetMessageId() <= last || r.GetDuplicate() {
				t.Fatalf("batch %d: message %d (duplicate %v) after %d", i, r.GetMessageId(), r.GetDuplicate(), last)
			}
			last = r.GetMessageId()
		}
	}
}

// TestChainedEnqueuesWaitForEveryVoterToKnowTheField plays a rolling
// upgrade: n3 gossips no features, as a server from before
// after_dedup_id would. Such a server would ignore the field and could
// enqueue a batch the others refused, so while it is a voter the leader
// keeps the order itself (a chained batch waits for its predecessor to be
// applied) and writes no after_dedup_id into the log. Once n3 comes back
// knowing the field, chained batches carry it again.
func TestChainedEnqueuesWaitForEveryVoterToKnowTheField(t *testing.T) {
	old := []string{}
	c := StartTestClusterWith(t, 3, func(i int, cfg *Config) {
		if i == 2 {
			cfg.features = old
		}
	})
	c.WaitReplicated(t)
	leader := c.Leader(t)
	q := quorumqpb.NewQueueClient(c.Conn(t, c.Index(leader)))
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "up"}); err != nil {
		t.Fatal(err)
	}
	from := leader.raft.LastIndex()
	streamChained(t, q, 0, 30)
	if chained, plain := chainedEntries(t, leader, from); chained != 0 || plain != 30 {
		t.Fatalf("with n3 not knowing after_dedup_id: %d chained and %d plain enqueues in the log, want 0 and 30", chained, plain)
	}

	// A batch behind a message that is not there is still refused, and
	// nothing of it is enqueued.
	_, err := q.Enqueue(ctxT(t, 10*time.Second), &quorumqpb.EnqueueRequest{Queue: "up", AfterDedupId: "never-sent",
		Messages: []*fsmpb.Message{{Body: []byte("x"), DedupId: "behind-nothing"}}})
	if code, _ := wire.QueueErrorCode(err); status.Code(err) != codes.FailedPrecondition || code != fsmpb.ErrorCode_OUT_OF_ORDER {
		t.Fatalf("batch behind a missing message: %v, want FailedPrecondition OUT_OF_ORDER", err)
	}
	if info, err := q.GetQueue(ctxT(t, 10*time.Second), &quorumqpb.GetQueueRequest{Name: "up"}); err != nil || info.GetQueue().GetStats().GetReady() != 120 {
		t.Fatalf("queue after the refused batch: %v %v, want 120 ready", info, err)
	}

	// In a transaction, a chain behind a message earlier in the same
	// transaction holds by the order of the entry itself.
	from = leader.raft.LastIndex()
	tx := &quorumqpb.TransactionRequest{Enqueues: []*quorumqpb.EnqueueRequest{
		{Queue: "up", Messages: []*fsmpb.Message{{Body: []byte("t1"), DedupId: "t1"}}},
		{Queue: "up", Messages: []*fsmpb.Message{{Body: []byte("t2"), DedupId: "t2"}}, AfterDedupId: "t1"},
	}}
	if resp, err := q.Transaction(ctxT(t, 10*time.Second), tx); err != nil || len(resp.GetEnqueued()) != 2 {
		t.Fatalf("transaction chained inside itself: %v %v", resp, err)
	}
	if chained, plain := chainedEntries(t, leader, from); chained != 0 || plain != 2 {
		t.Fatalf("transaction: %d chained and %d plain enqueues in the log, want 0 and 2", chained, plain)
	}

	upgrade(t, c, 2)
	deadline := time.Now().Add(20 * time.Second)
	for batch := 30; ; batch += 2 {
		leader = c.Leader(t)
		q = quorumqpb.NewQueueClient(c.Conn(t, c.Index(leader)))
		from = leader.raft.LastIndex()
		streamChained(t, q, batch, 2)
		if chained, _ := chainedEntries(t, leader, from); chained > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("chained batches still written without after_dedup_id 20 s after every voter knows it")
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.WaitReplicated(t)
}

// TestLeaderDoesNotAddAServerOfAnOlderRelease: a fresh server that gossips
// no log features (an older release) would replay the log's chained
// enqueues without their chain, so the leader does not add it; a fresh
// server of this release that joins after it is added.
func TestLeaderDoesNotAddAServerOfAnOlderRelease(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(i int, cfg *Config) {
		if i == 3 {
			cfg.features = []string{}
		}
	})
	c.Add(t) // n4, older
	c.Add(t) // n5
	voters := func() map[string]bool {
		out := map[string]bool{}
		for _, s := range c.Leader(t).raft.GetConfiguration().Configuration().Servers {
			out[string(s.ID)] = true
		}
		return out
	}
	deadline := time.Now().Add(20 * time.Second)
	for !voters()["n5"] {
		if time.Now().After(deadline) {
			t.Fatalf("n5 not added within 20 s: %v", voters())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // two more reconcile passes
	if v := voters(); v["n4"] {
		t.Fatalf("n4, which knows no log features, was added: %v", v)
	}
}

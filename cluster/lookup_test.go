package cluster

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// On real nodes: Lookup by dedup ID follows a message from leased (by the
// receive's consumer name, which peek shows too) to dead-lettered, and
// names the Raft index that last changed it; a follower answers from its
// applied state, leader = true only the leader; the oldest ready age is
// in the stats and the Prometheus gauge.
func TestLookupAndConsumerNamesOnNodes(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) {
		cfg.TickInterval = time.Hour
		cfg.AdminAddr = "127.0.0.1:0"
	})
	leader := c.Leader(t)
	li := c.Index(leader)
	fi := (li + 1) % 3
	lq := quorumqpb.NewQueueClient(c.Conn(t, li))
	fq := quorumqpb.NewQueueClient(c.Conn(t, fi))
	md := uint32(1)
	dlq := "orders-dlq"
	if _, err := lq.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "orders", CreateDeadLetterQueue: true,
		Settings: &fsmpb.QueueSettings{MaxDeliveries: &md, DeadLetterQueue: &dlq}}); err != nil {
		t.Fatal(err)
	}
	if _, err := lq.Enqueue(ctxT(t, 10*time.Second), &quorumqpb.EnqueueRequest{Queue: "orders",
		Messages: []*fsmpb.Message{{Body: []byte("o42"), DedupId: "order-42"}, {Body: []byte("o43")}}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // let the oldest ready message age
	st, err := lq.GetQueue(ctxT(t, 10*time.Second), &quorumqpb.GetQueueRequest{Name: "orders"})
	if err != nil || st.GetQueue().GetStats().GetOldestReadyAgeNs() < int64(time.Second) {
		t.Fatalf("stats %v %v: want the oldest ready message at least 1s old", st, err)
	}
	gauge := scrape(t, leader.AdminAddr())[`quorumq_queue_oldest_ready_age_seconds{queue="orders"}`]
	if gauge < 1 {
		t.Errorf("quorumq_queue_oldest_ready_age_seconds{queue=\"orders\"} = %v, want >= 1", gauge)
	}

	rcv, err := lq.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "orders", Max: 1, Consumer: "host-a:41", VisibilityNs: int64(time.Minute)})
	if err != nil || len(rcv.GetDeliveries()) != 1 {
		t.Fatalf("receive: %v %v", rcv, err)
	}
	recvIndex := leader.raft.LastIndex()
	lk, err := lq.Lookup(ctxT(t, 10*time.Second), &quorumqpb.LookupRequest{Queue: "orders", DedupId: "order-42", Leader: true})
	if err != nil {
		t.Fatal(err)
	}
	if m := lk.GetMessage(); m.GetState() != fsmpb.MessageState_MESSAGE_LEASED || m.GetConsumer() != "host-a:41" || m.GetAttempts() != 1 ||
		m.GetChangedIndex() == 0 || m.GetChangedIndex() > recvIndex || m.GetAtUnixNano() != rcv.GetDeliveries()[0].GetLeaseUntilUnixNano() {
		t.Fatalf("lookup of a leased message: %v; want leased by host-a:41, attempt 1, changed at <= %d", m, recvIndex)
	}
	peek, err := lq.Peek(ctxT(t, 10*time.Second), &quorumqpb.PeekRequest{Queue: "orders", Max: 10, State: fsmpb.PeekState_PEEK_LEASED, Leader: true})
	if err != nil || len(peek.GetMessages()) != 1 || peek.GetMessages()[0].GetConsumer() != "host-a:41" {
		t.Fatalf("peek leased: %v %v; want one lease held by host-a:41", peek, err)
	}

	if _, err := lq.Reject(ctxT(t, 10*time.Second), &quorumqpb.RejectRequest{Queue: "orders", Receipts: []*fsmpb.Receipt{rcv.GetDeliveries()[0].GetReceipt()}, Reason: "bad"}); err != nil {
		t.Fatal(err)
	}
	rejectIndex := leader.raft.LastIndex()
	c.WaitReplicated(t)
	lk, err = fq.Lookup(ctxT(t, 10*time.Second), &quorumqpb.LookupRequest{Queue: "orders", DedupId: "order-42"})
	if err != nil {
		t.Fatal(err)
	}
	m := lk.GetMessage()
	if m.GetState() != fsmpb.MessageState_MESSAGE_DEAD_LETTERED || m.GetMovedToQueue() != dlq || m.GetMovedToId() != 1 || !m.GetRejected() ||
		m.GetChangedIndex() <= recvIndex || m.GetChangedIndex() > rejectIndex || lk.GetAppliedIndex() < m.GetChangedIndex() {
		t.Fatalf("follower lookup after a reject: %v (applied %d); want dead-lettered to %s as id 1, changed after %d", m, lk.GetAppliedIndex(), dlq, recvIndex)
	}
	if _, err := fq.Lookup(ctxT(t, 10*time.Second), &quorumqpb.LookupRequest{Queue: "orders", Id: 1, Leader: true}); status.Code(err) != codes.Unavailable {
		t.Errorf("leader lookup on a follower: %v, want Unavailable (not the leader)", err)
	}
	if _, err := lq.Lookup(ctxT(t, 10*time.Second), &quorumqpb.LookupRequest{Queue: "nope", Id: 1}); status.Code(err) != codes.NotFound {
		t.Errorf("lookup in a missing queue: %v, want NotFound", err)
	}
	if lk, err := lq.Lookup(ctxT(t, 10*time.Second), &quorumqpb.LookupRequest{Queue: "orders", DedupId: "never-sent"}); err != nil ||
		lk.GetMessage().GetState() != fsmpb.MessageState_MESSAGE_UNKNOWN {
		t.Errorf("lookup of a dedup ID never sent: %v %v; want unknown", lk, err)
	}
}

// While a voter of the release before message fates and consumer names
// is in the cluster, the leader writes rules 1 and no consumer name, so
// every replica keeps the same state (no index, no fate, no holder);
// once it is upgraded, both are written.
func TestMessageFateAndConsumerNameWaitForEveryVoter(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(i int, cfg *Config) {
		if i == 2 {
			cfg.features = []string{featureEnqueueAfter, featureLogCheckpoint, featureDeadLetterOrigin, featureReject, featureDLQRules, featureRedrive}
		}
	})
	q := quorumqpb.NewQueueClient(c.Conn(t, c.Index(c.Leader(t))))
	leader := c.Leader(t)
	from := leader.raft.LastIndex()
	enqueue(t, c, c.Index(leader), "q", "a")
	if _, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "q", Max: 1, Consumer: "w1"}); err != nil {
		t.Fatal(err)
	}
	c.WaitReplicated(t)
	for _, cmd := range logCommands(t, leader, from) {
		if cmd.GetRules() != 1 || cmd.GetReceive().GetConsumer() != "" {
			t.Fatalf("while n3 is of an earlier release the log holds %v", cmd)
		}
	}
	if lk, err := q.Lookup(ctxT(t, 10*time.Second), &quorumqpb.LookupRequest{Queue: "q", Id: 1}); err != nil ||
		lk.GetMessage().GetChangedIndex() != 0 || lk.GetMessage().GetConsumer() != "" {
		t.Fatalf("lookup while n3 is of an earlier release: %v %v; want no index, no holder", lk, err)
	}

	upgrade(t, c, 2)
	deadline := time.Now().Add(20 * time.Second)
	for round := 0; ; round++ {
		q = quorumqpb.NewQueueClient(c.Conn(t, c.Index(c.Leader(t))))
		enqueue(t, c, c.Index(c.Leader(t)), "q", fmt.Sprintf("b%d", round))
		r, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "q", Max: 1, Consumer: "w2"})
		if err != nil || len(r.GetDeliveries()) != 1 {
			t.Fatalf("receive: %v %v", r, err)
		}
		id := r.GetDeliveries()[0].GetReceipt().GetMessageId()
		lk, err := q.Lookup(ctxT(t, 10*time.Second), &quorumqpb.LookupRequest{Queue: "q", Id: id, Leader: true})
		if err != nil {
			t.Fatal(err)
		}
		if m := lk.GetMessage(); m.GetConsumer() == "w2" && m.GetChangedIndex() != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20 s after every voter knows them, lookup says %v", lk.GetMessage())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

package cluster

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// poisonOnce sends one message to w (max 1 delivery, DLQ dlq), receives
// it, nacks it with reason and receives again, which dead-letters it, and
// returns the dead letter as the DLQ delivers it.
func poisonOnce(t *testing.T, c *TestCluster, reason string) *fsmpb.Delivery {
	t.Helper()
	q := quorumqpb.NewQueueClient(c.Conn(t, c.Index(c.Leader(t))))
	ctx := ctxT(t, 10*time.Second)
	if _, err := q.Enqueue(ctx, &quorumqpb.EnqueueRequest{Queue: "w", Messages: []*fsmpb.Message{{Body: []byte(reason)}}}); err != nil {
		t.Fatal(err)
	}
	r, err := q.Receive(ctx, &quorumqpb.ReceiveRequest{Queue: "w", Max: 1})
	if err != nil || len(r.GetDeliveries()) != 1 {
		t.Fatalf("receive: %v %v", r, err)
	}
	if _, err := q.Nack(ctx, &quorumqpb.NackRequest{Queue: "w", Receipts: []*fsmpb.Receipt{r.GetDeliveries()[0].GetReceipt()}, Reason: reason}); err != nil {
		t.Fatal(err)
	}
	if r, err := q.Receive(ctx, &quorumqpb.ReceiveRequest{Queue: "w", Max: 1}); err != nil || len(r.GetDeliveries()) != 0 {
		t.Fatalf("second receive: %v %v; want the message dead-lettered", r, err)
	}
	d, err := q.Receive(ctx, &quorumqpb.ReceiveRequest{Queue: "dlq", Max: 1})
	if err != nil || len(d.GetDeliveries()) != 1 {
		t.Fatalf("DLQ receive: %v %v", d, err)
	}
	return d.GetDeliveries()[0]
}

// TestDeadLetterOriginWaitsForEveryVoterToKnowIt plays a rolling upgrade:
// n3 gossips only the features of a release before dead-letter origins,
// which would apply a nack's reason and a dead letter's origin as if they
// were not there. While it is a voter, the leader writes neither into the
// log and every replica keeps the same state, and it refuses a reject,
// which an earlier release would not apply at all; once n3 knows them,
// dead letters carry their origin and rejects go through. The same holds
// for the dead-letter queue rules (Command.rules).
func TestDeadLetterOriginWaitsForEveryVoterToKnowIt(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(i int, cfg *Config) {
		if i == 2 {
			cfg.features = []string{featureEnqueueAfter}
		}
	})
	q := quorumqpb.NewQueueClient(c.Conn(t, c.Index(c.Leader(t))))
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "dlq"}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "w",
		Settings: &fsmpb.QueueSettings{MaxDeliveries: proto.Uint32(1), DeadLetterQueue: proto.String("dlq")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "rq",
		Settings: &fsmpb.QueueSettings{DeadLetterQueue: proto.String("dlq")}}); err != nil {
		t.Fatal(err)
	}
	leader := c.Leader(t)
	from := leader.raft.LastIndex()
	if d := poisonOnce(t, c, "before"); !proto.Equal(d.GetDeadLetter(), &fsmpb.DeadLetter{}) {
		t.Fatalf("dead letter while n3 is of an earlier release: origin %v, want none recorded", d.GetDeadLetter())
	}
	// A reject cannot be written another way: it is refused, naming why.
	q = quorumqpb.NewQueueClient(c.Conn(t, c.Index(c.Leader(t))))
	if _, err := q.Enqueue(ctxT(t, 10*time.Second), &quorumqpb.EnqueueRequest{Queue: "rq", Messages: []*fsmpb.Message{{Body: []byte("r")}}}); err != nil {
		t.Fatal(err)
	}
	r, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "rq", Max: 1})
	if err != nil || len(r.GetDeliveries()) != 1 {
		t.Fatalf("receive: %v %v", r, err)
	}
	_, err = q.Reject(ctxT(t, 10*time.Second), &quorumqpb.RejectRequest{Queue: "rq", Receipts: []*fsmpb.Receipt{r.GetDeliveries()[0].GetReceipt()}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "does not know reject yet") {
		t.Fatalf("reject while n3 is of an earlier release: %v; want FailedPrecondition saying a voter does not know reject", err)
	}
	nack := func(rc *fsmpb.Receipt) {
		t.Helper()
		if _, err := q.Nack(ctxT(t, 10*time.Second), &quorumqpb.NackRequest{Queue: "rq", Receipts: []*fsmpb.Receipt{rc}}); err != nil {
			t.Fatal(err)
		}
	}
	nack(r.GetDeliveries()[0].GetReceipt())
	_, err = q.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "x",
		Settings: &fsmpb.QueueSettings{DeadLetterQueue: proto.String("x-dlq")}, CreateDeadLetterQueue: true})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("create_dead_letter_queue while n3 is of an earlier release: %v; want FailedPrecondition", err)
	}
	if _, err := q.Redrive(ctxT(t, 10*time.Second), &quorumqpb.RedriveRequest{Queue: "dlq", Max: 10}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("redrive while n3 is of an earlier release: %v; want FailedPrecondition", err)
	}
	c.WaitReplicated(t)
	for _, cmd := range logCommands(t, leader, from) {
		if cmd.GetReject() != nil || cmd.GetRedrive() != nil || cmd.GetRules() != 0 {
			t.Fatalf("while n3 is of an earlier release the log holds %v", cmd)
		}
		if cmd.GetNack().GetReason() != "" || cmd.GetReceive().GetDeadLetterOrigin() {
			t.Fatalf("while n3 is of an earlier release the log holds %v", cmd)
		}
	}

	upgrade(t, c, 2)
	deadline := time.Now().Add(20 * time.Second)
	for {
		// The leader looks at the voters' features again each second, so
		// the nack and the receive of one round may see the feature
		// before and after it opens: a round counts once its nack reason
		// went through, which it does only with the origin.
		d := poisonOnce(t, c, "after")
		if dl := d.GetDeadLetter(); dl.GetLastNackReason() == "after" {
			if dl.GetSourceQueue() != "w" || dl.GetReason() != fsmpb.DeadLetterReason_DEAD_LETTER_MAX_DELIVERIES {
				t.Fatalf("dead letter once every voter knows origins: %v", dl)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("dead letters still without origin 20 s after every voter knows it")
		}
		time.Sleep(100 * time.Millisecond)
	}
	q = quorumqpb.NewQueueClient(c.Conn(t, c.Index(c.Leader(t))))
	for {
		r, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "rq", Max: 1})
		if err != nil || len(r.GetDeliveries()) != 1 {
			t.Fatalf("receive: %v %v", r, err)
		}
		_, err = q.Reject(ctxT(t, 10*time.Second), &quorumqpb.RejectRequest{Queue: "rq", Receipts: []*fsmpb.Receipt{r.GetDeliveries()[0].GetReceipt()}, Reason: "no"})
		if err == nil {
			break
		}
		if time.Now().After(deadline) || status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("reject once every voter knows it: %v", err)
		}
		nack(r.GetDeliveries()[0].GetReceipt())
		time.Sleep(100 * time.Millisecond)
	}
	for {
		from = c.Leader(t).raft.LastIndex()
		_, err := q.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "x",
			Settings: &fsmpb.QueueSettings{DeadLetterQueue: proto.String("x-dlq")}, CreateDeadLetterQueue: true})
		if err == nil {
			break
		}
		if time.Now().After(deadline) || status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("create_dead_letter_queue once every voter knows it: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if cmds := logCommands(t, c.Leader(t), from); len(cmds) == 0 || cmds[len(cmds)-1].GetRules() != fsm.Rules {
		t.Fatalf("commands once every voter knows the rules: %v; want rules %d", cmds, fsm.Rules)
	}
	c.WaitReplicated(t)
}

// A create or update naming a dead-letter queue that does not exist is
// refused by the leader before a Raft round.
func TestMissingDeadLetterQueueIsRefusedBeforePropose(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.TickInterval = time.Hour })
	leader := c.Leader(t)
	q := quorumqpb.NewQueueClient(c.Conn(t, c.Index(leader)))
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "w"}); err != nil {
		t.Fatal(err)
	}
	missing := &fsmpb.QueueSettings{DeadLetterQueue: proto.String("w-dlq")}
	for name, call := range map[string]func() error{
		"create": func() error {
			_, err := q.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "v", Settings: missing})
			return err
		},
		"update": func() error {
			_, err := q.UpdateQueue(ctxT(t, 10*time.Second), &quorumqpb.UpdateQueueRequest{Name: "w", Settings: missing})
			return err
		},
	} {
		before := leader.raft.LastIndex()
		if err := call(); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), `dead_letter_queue: queue "w-dlq" does not exist`) {
			t.Errorf("%s naming a missing DLQ: %v; want NotFound naming it", name, err)
		}
		if after := leader.raft.LastIndex(); after != before {
			t.Errorf("%s: the Raft log moved from %d to %d", name, before, after)
		}
	}
	if _, err := q.UpdateQueue(ctxT(t, 10*time.Second), &quorumqpb.UpdateQueueRequest{Name: "w", Settings: missing, CreateDeadLetterQueue: true}); err != nil {
		t.Fatalf("update with create_dead_letter_queue: %v", err)
	}
	if _, err := q.GetQueue(ctxT(t, 10*time.Second), &quorumqpb.GetQueueRequest{Name: "w-dlq"}); err != nil {
		t.Fatalf("w-dlq after the update that creates it: %v", err)
	}
}

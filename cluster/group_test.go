package cluster

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

func groupedReq(queue string, msgs ...[2]string) *quorumqpb.EnqueueRequest {
	req := &quorumqpb.EnqueueRequest{Queue: queue}
	for _, m := range msgs {
		req.Messages = append(req.Messages, &fsmpb.Message{Body: []byte(m[0]), Group: m[1]})
	}
	return req
}

func deliveredBodies(r *quorumqpb.ReceiveResponse) []string {
	var out []string
	for _, d := range r.GetDeliveries() {
		out = append(out, string(d.GetBody()))
	}
	return out
}

// While a voter of a release before message groups is in the cluster,
// an enqueue that gives a message a group is refused before a Raft round
// (that voter would deliver the group in parallel and drift apart);
// ungrouped messages go through. Once every voter knows groups, a
// group's messages are delivered one at a time, in order, on every path:
// gRPC, Raft, the FSM of each node (equal state hashes).
func TestGroupsWaitForEveryVoterAndHoldOrder(t *testing.T) {
	var old []string
	for _, f := range supportedFeatures {
		if f != featureMessageGroups {
			old = append(old, f)
		}
	}
	c := StartTestClusterWith(t, 3, func(i int, cfg *Config) {
		if i == 2 {
			cfg.features = old
		}
	})
	leader := c.Leader(t)
	q := quorumqpb.NewQueueClient(c.Conn(t, c.Index(leader)))
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &quorumqpb.CreateQueueRequest{Name: "orders"}); err != nil {
		t.Fatal(err)
	}
	c.WaitReplicated(t)
	from := leader.raft.LastIndex()
	_, err := q.Enqueue(ctxT(t, 10*time.Second), groupedReq("orders", [2]string{"plain", ""}, [2]string{"a1", "a"}))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "enqueue.messages[1].group: a voter does not know message groups yet") {
		t.Fatalf("grouped enqueue while n3 is of an earlier release: %v, want FailedPrecondition naming the group", err)
	}
	for _, cmd := range logCommands(t, leader, from) {
		if cmd.GetEnqueue() != nil {
			t.Fatalf("the refused enqueue reached the log: %v", cmd)
		}
	}
	if _, err := q.Enqueue(ctxT(t, 10*time.Second), groupedReq("orders", [2]string{"plain", ""})); err != nil {
		t.Fatalf("ungrouped enqueue: %v", err)
	}

	upgrade(t, c, 2)
	deadline := time.Now().Add(20 * time.Second)
	for {
		q = quorumqpb.NewQueueClient(c.Conn(t, c.Index(c.Leader(t))))
		_, err = q.Enqueue(ctxT(t, 10*time.Second), groupedReq("orders", [2]string{"a1", "a"}, [2]string{"a2", "a"}, [2]string{"b1", "b"}, [2]string{"a3", "a"}))
		if err == nil {
			break
		}
		if status.Code(err) != codes.FailedPrecondition || time.Now().After(deadline) {
			t.Fatalf("grouped enqueue after the upgrade: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := q.Purge(ctxT(t, 10*time.Second), &quorumqpb.PurgeRequest{Queue: "orders"}); err != nil {
		t.Fatal(err)
	}
	var msgs [][2]string
	for i := range 20 {
		msgs = append(msgs, [2]string{fmt.Sprintf("%c%d", 'a'+i%4, i/4), fmt.Sprintf("g%c", 'a'+i%4)})
	}
	if _, err := q.Enqueue(ctxT(t, 10*time.Second), groupedReq("orders", msgs...)); err != nil {
		t.Fatal(err)
	}
	got := map[byte][]string{}
	for round := 0; round < 5; round++ {
		r, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "orders", Max: 100})
		if err != nil {
			t.Fatal(err)
		}
		bodies := deliveredBodies(r)
		if want := []string{fmt.Sprintf("a%d", round), fmt.Sprintf("b%d", round), fmt.Sprintf("c%d", round), fmt.Sprintf("d%d", round)}; !slices.Equal(bodies, want) {
			t.Fatalf("receive %d: %v, want %v: one message of each group, in order", round, bodies, want)
		}
		var receipts []*fsmpb.Receipt
		for _, d := range r.GetDeliveries() {
			got[d.GetBody()[0]] = append(got[d.GetBody()[0]], string(d.GetBody()))
			if d.GetGroup() != "g"+string(d.GetBody()[:1]) {
				t.Fatalf("delivery %s has group %q", d.GetBody(), d.GetGroup())
			}
			receipts = append(receipts, d.GetReceipt())
		}
		if _, err := q.Ack(ctxT(t, 10*time.Second), &quorumqpb.AckRequest{Queue: "orders", Receipts: receipts}); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitReplicated(t)
}

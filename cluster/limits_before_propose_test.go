package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// Every limit of the state machine is checked by the API before anything
// is proposed: an over-limit request is refused naming the field and the
// limit, and the Raft log does not move.
func TestEveryLimitIsCheckedBeforePropose(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.TickInterval = time.Hour })
	leader := c.Leader(t)
	li := c.Index(leader)
	q := quorumqpb.NewQueueClient(c.Conn(t, li))
	enqueue(t, c, li, "q", "x")
	rcv, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: "q", Max: 1})
	if err != nil || len(rcv.GetDeliveries()) != 1 {
		t.Fatalf("receive: %v %v", rcv, err)
	}
	receipt := rcv.GetDeliveries()[0].GetReceipt()
	msg := func(m *fsmpb.Message) *quorumqpb.EnqueueRequest {
		return &quorumqpb.EnqueueRequest{Queue: "q", Messages: []*fsmpb.Message{m}}
	}
	long := func(n int) string { return strings.Repeat("k", n) }
	groups := &quorumqpb.TransactionRequest{}
	for range 101 {
		groups.Enqueues = append(groups.Enqueues, msg(&fsmpb.Message{Body: []byte("x")}))
	}
	for _, tc := range []struct {
		name string
		call func(context.Context) error
		want string
	}{
		{"13 h delay", func(ctx context.Context) error {
			_, err := q.Enqueue(ctx, msg(&fsmpb.Message{Body: []byte("x"), DelayNs: int64(13 * time.Hour)}))
			return err
		}, "delay_ns: 13h0m0s exceeds the limit of 12h0m0s"},
		{"13 h nack delay", func(ctx context.Context) error {
			_, err := q.Nack(ctx, &quorumqpb.NackRequest{Queue: "q", Receipts: []*fsmpb.Receipt{receipt}, DelayNs: int64(13 * time.Hour)})
			return err
		}, "delay_ns: 13h0m0s exceeds the limit of 12h0m0s"},
		{"1025-byte nack reason", func(ctx context.Context) error {
			_, err := q.Nack(ctx, &quorumqpb.NackRequest{Queue: "q", Receipts: []*fsmpb.Receipt{receipt}, Reason: long(1025)})
			return err
		}, "reason: 1025 bytes, limit is 1024"},
		{"1025-byte reject reason", func(ctx context.Context) error {
			_, err := q.Reject(ctx, &quorumqpb.RejectRequest{Queue: "q", Receipts: []*fsmpb.Receipt{receipt}, Reason: long(1025)})
			return err
		}, "reason: 1025 bytes, limit is 1024"},
		{"redrive of 1001", func(ctx context.Context) error {
			_, err := q.Redrive(ctx, &quorumqpb.RedriveRequest{Queue: "q", Max: 1001})
			return err
		}, "max: 1001, limit is 1 to 1000"},
		{"129-byte consumer name", func(ctx context.Context) error {
			_, err := q.Receive(ctx, &quorumqpb.ReceiveRequest{Queue: "q", Max: 1, Consumer: long(129)})
			return err
		}, "consumer: consumer is 129 bytes, limit is 128"},
		{"lookup by id and dedup ID", func(ctx context.Context) error {
			_, err := q.Lookup(ctx, &quorumqpb.LookupRequest{Queue: "q", Id: 1, DedupId: "d"})
			return err
		}, "give an id or a dedup ID, not both"},
		{"peek of 101", func(ctx context.Context) error {
			_, err := q.Peek(ctx, &quorumqpb.PeekRequest{Queue: "q", Max: 101})
			return err
		}, "max: 101, limit is 1 to 100"},
		{"257-byte attribute key", func(ctx context.Context) error {
			_, err := q.Enqueue(ctx, msg(&fsmpb.Message{Body: []byte("x"), Attributes: []*fsmpb.Attribute{{Key: long(257)}}}))
			return err
		}, "attributes[0].key is 257 bytes, limit is 1 to 256"},
		{"4097-byte attribute value", func(ctx context.Context) error {
			_, err := q.Enqueue(ctx, msg(&fsmpb.Message{Body: []byte("x"), Attributes: []*fsmpb.Attribute{{Key: "k", Value: long(4097)}}}))
			return err
		}, "attributes[0].value is 4097 bytes, limit is 4096"},
		{"129-byte group", func(ctx context.Context) error {
			_, err := q.Enqueue(ctx, msg(&fsmpb.Message{Body: []byte("x"), Group: long(129)}))
			return err
		}, "group is 129 bytes, limit is 128"},
		{"group with a control byte", func(ctx context.Context) error {
			_, err := q.Enqueue(ctx, msg(&fsmpb.Message{Body: []byte("x"), Group: "a\tb"}))
			return err
		}, "group has control byte '\\t' at 1"},
		{"129-byte after_dedup_id", func(ctx context.Context) error {
			r := msg(&fsmpb.Message{Body: []byte("x")})
			r.AfterDedupId = long(129)
			_, err := q.Enqueue(ctx, r)
			return err
		}, "after_dedup_id: 129 bytes, limit is 128"},
		{"101 transaction groups", func(ctx context.Context) error {
			_, err := q.Transaction(ctx, groups)
			return err
		}, "101 acks plus enqueues, limit is 1 to 100"},
		{"8-day dedup window", func(ctx context.Context) error {
			_, err := q.CreateQueue(ctx, &quorumqpb.CreateQueueRequest{Name: "s", Settings: &fsmpb.QueueSettings{DedupWindowNs: proto.Int64(int64(8 * 24 * time.Hour))}})
			return err
		}, "settings.dedup_window_ns is 691200000000000 ns, limit is 1s to 168h0m0s"},
		{"1001 max deliveries", func(ctx context.Context) error {
			_, err := q.UpdateQueue(ctx, &quorumqpb.UpdateQueueRequest{Name: "q", Settings: &fsmpb.QueueSettings{MaxDeliveries: proto.Uint32(1001)}})
			return err
		}, "settings.max_deliveries is 1001, limit is 0 (unlimited) to 1000"},
		{"2-year retention", func(ctx context.Context) error {
			_, err := q.CreateQueue(ctx, &quorumqpb.CreateQueueRequest{Name: "s", Settings: &fsmpb.QueueSettings{RetentionNs: proto.Int64(int64(2 * 365 * 24 * time.Hour))}})
			return err
		}, "settings.retention_ns is 63072000000000000 ns, limit is 1s to 8760h0m0s"},
		{"visibility under 1 ms", func(ctx context.Context) error {
			_, err := q.CreateQueue(ctx, &quorumqpb.CreateQueueRequest{Name: "s", Settings: &fsmpb.QueueSettings{VisibilityTimeoutNs: proto.Int64(1000)}})
			return err
		}, "settings.visibility_timeout_ns is 1000 ns, limit is 1ms to 12h0m0s"},
	} {
		before := leader.raft.LastIndex()
		err := tc.call(ctxT(t, 10*time.Second))
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want InvalidArgument containing %q", tc.name, err, tc.want)
		}
		if after := leader.raft.LastIndex(); after != before {
			t.Errorf("%s: the Raft log moved from index %d to %d: the request was proposed", tc.name, before, after)
		}
	}
}

package wire

import (
	"strings"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/fsm/limits"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

func unmarshal(t *testing.T, l Limits, m proto.Message, b []byte) error {
	t.Helper()
	return l.ServerCodec().Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, m)
}

// The largest legal transaction (every message with every attribute, every
// receipt, every group) decodes, and as gRPC's own codec decodes it.
func TestServerCodecDecodesTheLargestLegalRequest(t *testing.T) {
	l := DefaultLimits()
	req := &quorumqpb.TransactionRequest{}
	groups := limits.MaxTransactionOp
	for range groups / 2 {
		ack := &quorumqpb.AckRequest{Queue: "a"}
		for range l.MaxReceipts / (groups / 2) {
			ack.Receipts = append(ack.Receipts, &fsmpb.Receipt{MessageId: 1, Attempt: 1})
		}
		req.Acks = append(req.Acks, ack)
	}
	for range groups / 2 {
		enq := &quorumqpb.EnqueueRequest{Queue: "b"}
		for range l.MaxBatchMessages / (groups / 2) {
			m := &fsmpb.Message{Body: []byte("x")}
			for range l.MaxAttributes {
				m.Attributes = append(m.Attributes, &fsmpb.Attribute{Key: "k"})
			}
			enq.Messages = append(enq.Messages, m)
		}
		req.Enqueues = append(req.Enqueues, enq)
	}
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	got := &quorumqpb.TransactionRequest{}
	if err := unmarshal(t, l, got, b); err != nil {
		t.Fatalf("largest legal transaction (%d bytes): %v", len(b), err)
	}
	if !proto.Equal(got, req) {
		t.Fatal("decoded transaction differs from the one sent")
	}
}

// emptyMessages is an EnqueueRequest whose messages field repeats an empty
// element n times.
func emptyMessages(n int) []byte {
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendString(b, "q")
	for range n {
		b = append(b, 0x12, 0x00)
	}
	return b
}

func TestServerCodecRefusesMoreNestedMessagesThanALegalRequestHolds(t *testing.T) {
	l := DefaultLimits()
	max := l.MaxNestedMessages()
	if err := unmarshal(t, l, &quorumqpb.EnqueueRequest{}, emptyMessages(max)); err != nil {
		t.Fatalf("%d empty elements (the budget): %v", max, err)
	}
	for _, n := range []int{max + 1, 4 << 20} {
		err := unmarshal(t, l, &quorumqpb.EnqueueRequest{}, emptyMessages(n))
		if err == nil || !strings.Contains(err.Error(), "more than 34100 nested messages") {
			t.Fatalf("%d empty elements: %v, want a refusal naming the limit of 34100", n, err)
		}
	}
	// Elements nested deeper count too: one message with a million
	// empty attributes.
	inner := []byte{}
	for range 1 << 20 {
		inner = append(inner, 0x22, 0x00) // Message.attributes (4), length 0
	}
	b := protowire.AppendTag(nil, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, inner)
	if err := unmarshal(t, l, &quorumqpb.EnqueueRequest{}, b); err == nil {
		t.Fatal("a message with a million empty attributes was decoded")
	}
}

package transport

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/quorumq/quorumq/fsm"
)

// MaxNestedMessages is the most nested messages (repeated elements
// included) a legal request holds: a full batch of messages with every
// attribute, a transaction's receipts and its groups. A request of a few
// megabytes can hold millions of empty elements, two bytes each on the
// wire and a whole struct each once decoded, so the server counts them in
// the wire bytes before it decodes anything.
func (l Limits) MaxNestedMessages() int {
	l = l.withDefaults()
	return l.MaxBatchMessages*(1+l.MaxAttributes) + l.MaxReceipts + fsm.MaxTransactionOp
}

// ServerCodec is the API server's protobuf codec: gRPC's own, after a scan
// of the wire bytes that refuses a request holding more nested messages
// than MaxNestedMessages. gRPC reports a codec's refusal as Internal with
// the codec's message; no legal request is refused.
func (l Limits) ServerCodec() encoding.CodecV2 {
	return boundedCodec{CodecV2: encoding.GetCodecV2(grpcproto.Name), max: l.MaxNestedMessages()}
}

type boundedCodec struct {
	encoding.CodecV2
	max int
}

func (c boundedCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	// One contiguous copy serves the scan and the decode, as gRPC's codec
	// makes one for the decode alone.
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	budget := c.max
	if !withinBudget(buf.ReadOnlyData(), m.ProtoReflect().Descriptor(), &budget) {
		return fmt.Errorf("request holds more than %d nested messages, the most a legal request holds", c.max)
	}
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

// withinBudget walks the wire bytes b of a message of type md and takes one
// from budget for every nested message it finds, at any depth; false once
// the budget is spent. Malformed bytes end the walk with true: decoding
// reports them.
func withinBudget(b []byte, md protoreflect.MessageDescriptor, budget *int) bool {
	fields := md.Fields()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return true
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return true
		}
		if fd := fields.ByNumber(num); fd != nil && typ == protowire.BytesType &&
			(fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind) {
			if *budget--; *budget < 0 {
				return false
			}
			v, _ := protowire.ConsumeBytes(b)
			if !withinBudget(v, fd.Message(), budget) {
				return false
			}
		}
		b = b[n:]
	}
	return true
}

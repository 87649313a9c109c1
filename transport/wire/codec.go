package wire

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/quorumq/quorumq/fsm/limits"
)

// MaxNestedMessages is the most nested messages (repeated elements
// included) a legal request holds: a full batch of messages with every
// attribute, a transaction's receipts and its groups. A request of a few
// megabytes can hold millions of empty elements, two bytes each on the
// wire and a whole struct each once decoded, so the server counts them in
// the wire bytes before it decodes anything.
func (l Limits) MaxNestedMessages() int {
	l = l.WithDefaults()
	return l.MaxBatchMessages*(1+l.MaxAttributes) + l.MaxReceipts + limits.MaxTransactionOp
}

// ServerCodec is the API server's protobuf codec: Codec, after a scan of
// the wire bytes that refuses a request holding more nested messages than
// MaxNestedMessages. gRPC reports a codec's refusal as Internal with the
// codec's message; no legal request is refused.
func (l Limits) ServerCodec() encoding.CodecV2 {
	return boundedCodec{max: l.MaxNestedMessages()}
}

// Codec is gRPC's protobuf codec with its buffers taken from BufferPool
// instead of gRPC's default pool (see BufferPool for why). The client
// and the server both use it.
func Codec() encoding.CodecV2 { return pooledCodec{} }

type pooledCodec struct{}

func (pooledCodec) Name() string { return grpcproto.Name }

func (pooledCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("proto: cannot marshal %T, want proto.Message", v)
	}
	size := proto.Size(m)
	// UseCachedSize reuses the size just computed.
	opts := proto.MarshalOptions{UseCachedSize: true}
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	buf := BufferPool.Get(size)
	if _, err := opts.MarshalAppend((*buf)[:0], m); err != nil {
		BufferPool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, BufferPool)}, nil
}

func (pooledCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("proto: cannot unmarshal into %T, want proto.Message", v)
	}
	buf := data.MaterializeToBuffer(BufferPool)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

type boundedCodec struct {
	pooledCodec
	max int
}

func (c boundedCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return c.pooledCodec.Unmarshal(data, v)
	}
	// One contiguous copy serves the scan and the decode, as the plain
	// codec makes one for the decode alone.
	buf := data.MaterializeToBuffer(BufferPool)
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

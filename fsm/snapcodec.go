package fsm

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// The snapshot's hot record, a SnapshotRecord holding one SnapshotMessage,
// is encoded and decoded by hand with protowire: the bytes are exactly what
// proto.Marshal writes for the schema in fsmpb/snapshot.proto (fields in number order,
// zero values omitted), but without building a protobuf message per queued
// message, which made Persist and Restore of a million messages several
// times slower. Every other record goes through the generated code.

const (
	recordMessageField = 3 // SnapshotRecord.message

	smID         = 1
	smEnqueuedAt = 2
	smAt         = 3
	smAttempt    = 4
	smFlags      = 5
	smBody       = 6
	smDedupID    = 7
	smAttributes = 8
	smDeadLetter = 9
	smNackReason = 10
	smIndex      = 11
	smConsumer   = 12
	smFate       = 13
	smMovedTo    = 14
	smMovedToID  = 15
	smFirstEnq   = 16

	attrKey   = 1
	attrValue = 2
)

func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendStringField(b []byte, num protowire.Number, v string) []byte {
	if v == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, v)
}

func attributeSize(key, value string) int {
	n := 0
	if key != "" {
		n += protowire.SizeTag(attrKey) + protowire.SizeBytes(len(key))
	}
	if value != "" {
		n += protowire.SizeTag(attrValue) + protowire.SizeBytes(len(value))
	}
	return n
}

// Fields of the state-hash form of a message (StateHash), in place of its
// body and attributes; never in a snapshot.
const (
	hashBodyCRC  = 100
	hashBodySize = 101
)

// appendSnapMessage appends m encoded as a SnapshotMessage with value, its
// stored body and attributes (fields 6 and 8, on either side of the dedup
// ID), or with hash their size and CRC32C instead.
func appendSnapMessage(b []byte, m *message, value []byte, hash bool) []byte {
	b = appendVarintField(b, smID, m.id)
	b = appendVarintField(b, smEnqueuedAt, uint64(m.enqueuedAt))
	b = appendVarintField(b, smAt, uint64(m.at))
	b = appendVarintField(b, smAttempt, uint64(m.attempt))
	b = appendVarintField(b, smFlags, uint64(m.flags))
	bodyField, attrFields := splitValue(value)
	b = append(b, bodyField...)
	b = appendStringField(b, smDedupID, m.dedupID)
	b = append(b, attrFields...)
	if d := m.dead(); d != nil {
		// Rare, so through the generated code; a DeadLetter has no map
		// field, so its encoding is the same on every node.
		b = protowire.AppendTag(b, smDeadLetter, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(proto.Size(d)))
		b, _ = proto.MarshalOptions{Deterministic: true}.MarshalAppend(b, d)
	}
	b = appendStringField(b, smNackReason, m.nackReason())
	b = appendVarintField(b, smIndex, m.index)
	b = appendStringField(b, smConsumer, m.consumer())
	if f := m.fate(); f != nil {
		b = appendVarintField(b, smFate, uint64(f.state))
		b = appendStringField(b, smMovedTo, f.queue)
		b = appendVarintField(b, smMovedToID, f.id)
	}
	if m.ext != nil {
		b = appendVarintField(b, smFirstEnq, uint64(m.ext.firstEnqueued))
	}
	if hash {
		b = appendVarintField(b, hashBodyCRC, uint64(m.body.crc))
		b = appendVarintField(b, hashBodySize, uint64(m.body.size))
	}
	return b
}

// appendMessageRecord appends a SnapshotRecord holding m (see
// appendSnapMessage).
func appendMessageRecord(b, scratch []byte, m *message, value []byte, hash bool) ([]byte, []byte) {
	scratch = appendSnapMessage(scratch[:0], m, value, hash)
	b = protowire.AppendTag(b, recordMessageField, protowire.BytesType)
	return protowire.AppendBytes(b, scratch), scratch
}

// messageRecord returns the SnapshotMessage bytes if rec is a
// SnapshotRecord holding only a message.
func messageRecord(rec []byte) ([]byte, bool) {
	num, typ, n := protowire.ConsumeTag(rec)
	if n < 0 || num != recordMessageField || typ != protowire.BytesType {
		return nil, false
	}
	v, m := protowire.ConsumeBytes(rec[n:])
	if m < 0 || n+m != len(rec) {
		return nil, false
	}
	return v, true
}

var errWireType = errors.New("wrong wire type")

// decoded is a message read from a snapshot: its new record, flags not
// yet checked, and the body and attributes that go to the store.
type decoded struct {
	m     *message
	flags uint32
	body  []byte
	attrs []*fsmpb.Attribute
}

// decodeSnapMessage decodes a SnapshotMessage into a new record; the body
// aliases b, everything else is copied. Unknown fields are skipped (a
// later release may add some); the caller validates the values.
func decodeSnapMessage(b []byte) (decoded, error) {
	m := &message{}
	var flags uint64
	var (
		body       []byte
		attrs      []*fsmpb.Attribute
		dead       *fsmpb.DeadLetter
		nackReason string
		consumer   string
		fa         fate
		firstEnq   int64
	)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return decoded{}, protowire.ParseError(n)
		}
		b = b[n:]
		var v uint64
		var raw []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			raw, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return decoded{}, protowire.ParseError(n)
		}
		b = b[n:]
		want := protowire.VarintType
		if num == smBody || num == smDedupID || num == smAttributes || num == smDeadLetter || num == smNackReason ||
			num == smConsumer || num == smMovedTo {
			want = protowire.BytesType
		}
		if num >= smID && num <= smFirstEnq && typ != want {
			return decoded{}, fmt.Errorf("field %d: %w %d", num, errWireType, typ)
		}
		switch num {
		case smID:
			m.id = v
		case smEnqueuedAt:
			m.enqueuedAt = int64(v)
		case smAt:
			m.at = int64(v)
		case smAttempt:
			m.attempt = uint32(v)
		case smFlags:
			flags = v
		case smBody:
			body = raw
		case smDedupID:
			m.dedupID = string(raw)
		case smAttributes:
			a, err := decodeAttribute(raw)
			if err != nil {
				return decoded{}, err
			}
			attrs = append(attrs, &fsmpb.Attribute{Key: a.key, Value: a.value})
		case smDeadLetter:
			dead = new(fsmpb.DeadLetter)
			if err := proto.Unmarshal(raw, dead); err != nil {
				return decoded{}, fmt.Errorf("dead letter: %w", err)
			}
		case smNackReason:
			nackReason = string(raw)
		case smIndex:
			m.index = v
		case smConsumer:
			consumer = string(raw)
		case smFate:
			fa.state = fsmpb.MessageState(v)
		case smMovedTo:
			fa.queue = string(raw)
		case smMovedToID:
			fa.id = v
		case smFirstEnq:
			firstEnq = int64(v)
		}
	}
	m.ext = (&extra{dead: dead, nackReason: nackReason, consumer: consumer, fate: fa.orNil(), firstEnqueued: firstEnq}).orNil()
	if flags > 0xffffffff {
		return decoded{}, fmt.Errorf("flags %#x out of range", flags)
	}
	return decoded{m: m, flags: uint32(flags), body: body, attrs: attrs}, nil
}

func decodeAttribute(b []byte) (attribute, error) {
	var a attribute
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return a, protowire.ParseError(n)
		}
		b = b[n:]
		if (num == attrKey || num == attrValue) && typ != protowire.BytesType {
			return a, fmt.Errorf("attribute field %d: %w %d", num, errWireType, typ)
		}
		if num != attrKey && num != attrValue {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return a, protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		raw, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return a, protowire.ParseError(n)
		}
		b = b[n:]
		if num == attrKey {
			a.key = string(raw)
		} else {
			a.value = string(raw)
		}
	}
	return a, nil
}

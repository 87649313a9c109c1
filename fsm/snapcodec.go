package fsm

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// The snapshot's hot record, a SnapshotRecord holding one SnapshotMessage,
// is encoded and decoded by hand with protowire: the bytes are exactly what
// proto.Marshal writes for the schema in fsmpb/snapshot.proto (fields in number order,
// zero values omitted), but without building a protobuf message per queued
// message, which made Persist and Restore of a million messages several
// times slower. Restore decodes the other record as numerous, a dedup
// entry, by hand as well (dedupRecord); every other record, and every
// encoding but the message's, goes through the generated code.

const (
	recordMessageField = 3 // SnapshotRecord.message
	recordDedupField   = 4 // SnapshotRecord.dedup

	sdDedupID   = 1 // SnapshotDedup.dedup_id
	sdMessageID = 2 // SnapshotDedup.message_id

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
	smGroup      = 17

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

// Fields of a message in place of its body and attributes: in the
// state-hash form (StateHash) their CRC32C and size, and in a version-2
// snapshot the body id too, under which its store checkpoint holds them.
const (
	hashBodyCRC  = 100
	hashBodySize = 101
	refBodyID    = 102
)

// encoding is how a message's body and attributes are written.
type encoding uint8

const (
	inline encoding = iota // the stored value, fields 6 and 8 (version 1)
	hashed                 // their CRC and size (the state-hash form)
	byRef                  // their CRC, size and body id (version 2)
)

// appendSnapMessage appends m encoded as a SnapshotMessage: inline with
// value, its stored body and attributes (fields 6 and 8, on either side of
// the dedup ID), or in their place their size and CRC32C (and body id).
func appendSnapMessage(b []byte, m *message, value []byte, enc encoding) []byte {
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
		b = appendStringField(b, smGroup, m.ext.group)
	}
	if enc != inline {
		b = appendVarintField(b, hashBodyCRC, uint64(m.body.crc))
		b = appendVarintField(b, hashBodySize, uint64(m.body.size))
	}
	if enc == byRef {
		b = appendVarintField(b, refBodyID, m.body.id)
	}
	return b
}

// appendMessageRecord appends a SnapshotRecord holding m (see
// appendSnapMessage).
func appendMessageRecord(b, scratch []byte, m *message, value []byte, enc encoding) ([]byte, []byte) {
	scratch = appendSnapMessage(scratch[:0], m, value, enc)
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

// dedupRecord decodes a SnapshotRecord holding only a dedup entry whose
// fields are the two it has, each once, well formed. Anything else (an
// unknown or repeated field, an ID that is not UTF-8) returns false, and
// the record goes through proto.Unmarshal, which judges it.
func dedupRecord(rec []byte) (id string, msgID uint64, ok bool) {
	num, typ, n := protowire.ConsumeTag(rec)
	if n < 0 || num != recordDedupField || typ != protowire.BytesType {
		return "", 0, false
	}
	v, m := protowire.ConsumeBytes(rec[n:])
	if m < 0 || n+m != len(rec) {
		return "", 0, false
	}
	var seenID, seenMsg bool
	for len(v) > 0 {
		num, typ, n := protowire.ConsumeTag(v)
		if n < 0 {
			return "", 0, false
		}
		v = v[n:]
		switch {
		case num == sdDedupID && typ == protowire.BytesType && !seenID:
			b, n := protowire.ConsumeBytes(v)
			if n < 0 || !utf8.Valid(b) {
				return "", 0, false
			}
			id, seenID, v = string(b), true, v[n:]
		case num == sdMessageID && typ == protowire.VarintType && !seenMsg:
			x, n := protowire.ConsumeVarint(v)
			if n < 0 {
				return "", 0, false
			}
			msgID, seenMsg, v = x, true, v[n:]
		default:
			return "", 0, false
		}
	}
	return id, msgID, true
}

var errWireType = errors.New("wrong wire type")

// decoded is a message read from a snapshot: its new record, flags not
// yet checked, and the body and attributes that go to the store (version
// 1) or the reference to them in the snapshot's checkpoint (version 2).
type decoded struct {
	m     *message
	flags uint32
	body  []byte
	attrs []*fsmpb.Attribute
	ref   bodyRef
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
		group      string
		ref        bodyRef
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
			num == smConsumer || num == smMovedTo || num == smGroup {
			want = protowire.BytesType
		}
		if num >= smID && num <= smGroup && typ != want {
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
		case smGroup:
			group = string(raw)
		case hashBodyCRC, hashBodySize, refBodyID:
			if typ != protowire.VarintType {
				return decoded{}, fmt.Errorf("field %d: %w %d", num, errWireType, typ)
			}
			switch num {
			case hashBodyCRC:
				ref.crc = uint32(v)
			case hashBodySize:
				ref.size = uint32(v)
			default:
				ref.id = v
			}
		}
	}
	m.ext = (&extra{dead: dead, nackReason: nackReason, consumer: consumer, fate: fa.orNil(), firstEnqueued: firstEnq, group: group}).orNil()
	if flags > 0xffffffff {
		return decoded{}, fmt.Errorf("flags %#x out of range", flags)
	}
	return decoded{m: m, flags: uint32(flags), body: body, attrs: attrs, ref: ref}, nil
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

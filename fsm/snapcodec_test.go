package fsm

import (
	"bytes"
	"reflect"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// TestSnapMessageCodecMatchesProto checks that the hand-written encoding of
// message records is byte for byte what the generated code writes, and
// that the hand-written decoder reads it back.
func TestSnapMessageCodecMatchesProto(t *testing.T) {
	attrs := []*fsmpb.Attribute{{Key: "k", Value: "v"}, {Key: "key"}}
	dead := &fsmpb.DeadLetter{SourceQueue: "src", SourceMessageId: 3, Reason: fsmpb.DeadLetterReason_DEAD_LETTER_REJECTED, Attempts: 2,
		FirstEnqueuedAtUnixNano: t0, LastNackReason: "there"}
	cases := []struct {
		m     *message
		body  []byte
		attrs []*fsmpb.Attribute
	}{
		{m: &message{id: 1}},
		{m: &message{id: 7, enqueuedAt: t0, at: -5, attempt: 3, flags: flagLeased | flagDeadLetter, dedupID: "d"}, body: []byte("body")},
		{m: &message{id: 1 << 40, enqueuedAt: MaxNow, at: MaxNow, attempt: 1 << 31, flags: flagReady, dedupID: "x"}, attrs: attrs},
		{m: &message{id: 9, flags: flagReady | flagDeadLetter, ext: &extra{nackReason: "here", dead: dead}}, body: []byte("b"), attrs: attrs},
		{m: &message{id: 10, flags: flagLeased, index: 77, ext: &extra{consumer: "host:1"}}, body: []byte("c")},
		{m: &message{id: 11, flags: flagDeleted | flagRejected, index: 78, ext: &extra{fate: &fate{state: fsmpb.MessageState_MESSAGE_DEAD_LETTERED, queue: "dlq", id: 4}}}},
		{m: &message{id: 12, flags: flagDeleted, ext: purgedExt}},
		{m: &message{id: 13, enqueuedAt: t0 + 5, flags: flagReady, index: 79, ext: &extra{firstEnqueued: t0}}, body: []byte("redriven")},
	}
	for _, c := range cases {
		m := c.m
		sm := &fsmpb.SnapshotMessage{
			Id: m.id, EnqueuedAtUnixNano: m.enqueuedAt, AtUnixNano: m.at, Attempt: m.attempt, Flags: uint32(m.flags),
			Body: c.body, DedupId: m.dedupID, Attributes: c.attrs, DeadLetter: m.dead(), LastNackReason: m.nackReason(),
			ChangedIndex: m.index, Consumer: m.consumer(),
		}
		if m.ext != nil {
			sm.FirstEnqueuedAtUnixNano = m.ext.firstEnqueued
		}
		if f := m.fate(); f != nil {
			sm.Fate, sm.MovedToQueue, sm.MovedToId = f.state, f.queue, f.id
		}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(&fsmpb.SnapshotRecord{Record: &fsmpb.SnapshotRecord_Message{Message: sm}})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := appendMessageRecord(nil, nil, m, encodeValue(c.body, c.attrs), inline)
		if !bytes.Equal(got, want) {
			t.Fatalf("message %d: hand encoding\n%x\nproto\n%x", m.id, got, want)
		}
		body, ok := messageRecord(got)
		if !ok {
			t.Fatal("messageRecord did not recognise a message record")
		}
		d, err := decodeSnapMessage(body)
		if err != nil {
			t.Fatal(err)
		}
		back := d.m
		back.flags = uint8(d.flags)
		if !bytes.Equal(d.body, c.body) {
			t.Fatalf("body %q, want %q", d.body, c.body)
		}
		if len(d.attrs) != len(c.attrs) {
			t.Fatalf("attributes %v, want %v", d.attrs, c.attrs)
		}
		for i := range d.attrs {
			if !proto.Equal(d.attrs[i], c.attrs[i]) {
				t.Fatalf("attributes %v, want %v", d.attrs, c.attrs)
			}
		}
		m2 := *m
		if !proto.Equal(back.dead(), m.dead()) {
			t.Fatalf("dead letter %v, want %v", back.dead(), m.dead())
		}
		if back.ext != nil && m.ext != nil {
			e1, e2 := *back.ext, *m.ext
			e1.dead, e2.dead = nil, nil
			back.ext, m2.ext = &e1, &e2
		}
		if !reflect.DeepEqual(back, &m2) {
			t.Fatalf("decoded %+v, want %+v", back, &m2)
		}

		// Version 2: the body's CRC, size and id in place of the value.
		ref := *m
		ref.body = bodyRef{id: m.id + 5, size: uint32(len(c.body)), crc: crc32c(encodeValue(c.body, c.attrs))}
		smRef := proto.Clone(sm).(*fsmpb.SnapshotMessage)
		smRef.Body, smRef.Attributes = nil, nil
		smRef.BodyCrc, smRef.BodySize, smRef.BodyId = ref.body.crc, ref.body.size, ref.body.id
		want, err = proto.MarshalOptions{Deterministic: true}.Marshal(&fsmpb.SnapshotRecord{Record: &fsmpb.SnapshotRecord_Message{Message: smRef}})
		if err != nil {
			t.Fatal(err)
		}
		got, _ = appendMessageRecord(nil, nil, &ref, nil, byRef)
		if !bytes.Equal(got, want) {
			t.Fatalf("message %d by reference: hand encoding\n%x\nproto\n%x", m.id, got, want)
		}
		body, _ = messageRecord(got)
		if d, err = decodeSnapMessage(body); err != nil || d.ref != ref.body || d.body != nil || d.attrs != nil {
			t.Fatalf("message %d by reference: decoded ref %+v, body %q, attributes %v (err %v); want ref %+v", m.id, d.ref, d.body, d.attrs, err, ref.body)
		}
	}
	if _, err := decodeSnapMessage([]byte{0x08}); err == nil {
		t.Fatal("truncated varint decoded")
	}
	if _, err := decodeSnapMessage([]byte{0x32, 0x05, 'a'}); err == nil {
		t.Fatal("truncated body decoded")
	}
	if _, err := decodeSnapMessage([]byte{0x30, 0x01}); err == nil {
		t.Fatal("body with varint wire type decoded")
	}
}

// dedupRecord decodes what proto.Unmarshal decodes, and hands everything
// it is not sure of to proto.Unmarshal.
func TestDedupRecordMatchesProto(t *testing.T) {
	record := func(sd *fsmpb.SnapshotDedup) []byte {
		b, err := proto.Marshal(&fsmpb.SnapshotRecord{Record: &fsmpb.SnapshotRecord_Dedup{Dedup: sd}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	inner := func(fields ...[]byte) []byte {
		v := slices.Concat(fields...)
		return protowire.AppendBytes(protowire.AppendTag(nil, recordDedupField, protowire.BytesType), v)
	}
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), s)
	}
	varint := func(num protowire.Number, x uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), x)
	}
	for _, tc := range []struct {
		name string
		rec  []byte
		fast bool // dedupRecord decodes it
	}{
		{"both fields", record(&fsmpb.SnapshotDedup{DedupId: "order-1", MessageId: 42}), true},
		{"no message id", record(&fsmpb.SnapshotDedup{DedupId: "order-1"}), true},
		{"no dedup id", record(&fsmpb.SnapshotDedup{MessageId: 7}), true},
		{"fields in reverse order", inner(varint(sdMessageID, 9), str(sdDedupID, "x")), true},
		{"an unknown field", inner(str(sdDedupID, "x"), varint(sdMessageID, 9), varint(3, 1)), false},
		{"the id twice", inner(str(sdDedupID, "x"), str(sdDedupID, "y"), varint(sdMessageID, 9)), false},
		{"an id that is not UTF-8", inner(str(sdDedupID, "\xff\xfe"), varint(sdMessageID, 9)), false},
		{"a message id of the wrong type", inner(str(sdDedupID, "x"), str(sdMessageID, "9")), false},
		{"a truncated varint", inner(str(sdDedupID, "x"), []byte{byte(sdMessageID << 3), 0x80}), false},
		{"bytes after the record", append(record(&fsmpb.SnapshotDedup{DedupId: "a", MessageId: 1}), 0x08, 0x01), false},
		{"a message record", messageRecordBytes(t), false},
	} {
		id, msgID, ok := dedupRecord(tc.rec)
		if ok != tc.fast {
			t.Errorf("%s: decoded %v, want %v", tc.name, ok, tc.fast)
			continue
		}
		if !ok {
			continue
		}
		var rec fsmpb.SnapshotRecord
		if err := proto.Unmarshal(tc.rec, &rec); err != nil {
			t.Errorf("%s: dedupRecord decoded what proto.Unmarshal refuses: %v", tc.name, err)
			continue
		}
		if sd := rec.GetDedup(); sd == nil || sd.GetDedupId() != id || sd.GetMessageId() != msgID {
			t.Errorf("%s: dedupRecord (%q, %d), proto.Unmarshal %v", tc.name, id, msgID, &rec)
		}
	}
}

// messageRecordBytes is a SnapshotRecord holding a message.
func messageRecordBytes(t *testing.T) []byte {
	b, err := proto.Marshal(&fsmpb.SnapshotRecord{Record: &fsmpb.SnapshotRecord_Message{Message: &fsmpb.SnapshotMessage{Id: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

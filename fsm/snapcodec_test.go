package fsm

import (
	"bytes"
	"reflect"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// TestSnapMessageCodecMatchesProto checks that the hand-written encoding of
// message records is byte for byte what the generated code writes, and
// that the hand-written decoder reads it back.
func TestSnapMessageCodecMatchesProto(t *testing.T) {
	attrs := []attribute{{"k", "v"}, {"key", ""}}
	cases := []*message{
		{id: 1},
		{id: 7, enqueuedAt: t0, at: -5, attempt: 3, flags: flagLeased | flagDeadLetter, body: "body", dedupID: "d"},
		{id: 1 << 40, enqueuedAt: MaxNow, at: MaxNow, attempt: 1 << 31, flags: flagDeleted | flagAcked, dedupID: "x", ext: &extra{attrs: attrs}},
		{id: 9, flags: flagReady | flagDeadLetter, body: "b", ext: &extra{nackReason: "here", dead: &fsmpb.DeadLetter{
			SourceQueue: "src", SourceMessageId: 3, Reason: fsmpb.DeadLetterReason_DEAD_LETTER_REJECTED, Attempts: 2,
			FirstEnqueuedAtUnixNano: t0, LastNackReason: "there"}}},
		{id: 10, flags: flagLeased, body: "c", index: 77, ext: &extra{consumer: "host:1"}},
		{id: 11, flags: flagDeleted | flagRejected, index: 78, ext: &extra{fate: &fate{state: fsmpb.MessageState_MESSAGE_DEAD_LETTERED, queue: "dlq", id: 4}}},
		{id: 12, flags: flagDeleted, ext: purgedExt},
	}
	for _, m := range cases {
		var sm fsmpb.SnapshotMessage
		toSnapMessage(&sm, m)
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(&fsmpb.SnapshotRecord{Record: &fsmpb.SnapshotRecord_Message{Message: &sm}})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := appendMessageRecord(nil, nil, m)
		if !bytes.Equal(got, want) {
			t.Fatalf("message %d: hand encoding\n%x\nproto\n%x", m.id, got, want)
		}
		body, ok := messageRecord(got)
		if !ok {
			t.Fatal("messageRecord did not recognise a message record")
		}
		back, flags, err := decodeSnapMessage(body)
		if err != nil {
			t.Fatal(err)
		}
		back.flags = uint8(flags)
		if back.body != m.body {
			t.Fatalf("body %q, want %q", back.body, m.body)
		}
		m2 := *m
		back.body, m2.body = "", ""
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
	}
	if _, _, err := decodeSnapMessage([]byte{0x08}); err == nil {
		t.Fatal("truncated varint decoded")
	}
	if _, _, err := decodeSnapMessage([]byte{0x32, 0x05, 'a'}); err == nil {
		t.Fatal("truncated body decoded")
	}
	if _, _, err := decodeSnapMessage([]byte{0x30, 0x01}); err == nil {
		t.Fatal("body with varint wire type decoded")
	}
}

package fsm

import (
	"errors"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

func TestEncodeDecode(t *testing.T) {
	cmd := enq("q", msg("body", "d1"))
	cmd.NowUnixNano = 42
	data, err := Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if data[0] != 1 {
		t.Fatalf("version byte %d, want 1", data[0])
	}
	got, err := Decode(data)
	if err != nil || !proto.Equal(got, cmd) {
		t.Fatalf("Decode = %v, %v; want %v", got, err, cmd)
	}
	bad := map[string][]byte{
		"short":       data[:3],
		"version":     append([]byte{2}, data[1:]...),
		"checksum":    append(append([]byte{}, data[:len(data)-1]...), data[len(data)-1]^1),
		"bad proto":   framed([]byte{0xff, 0xff, 0xff}),
		"empty input": nil,
	}
	for name, b := range bad {
		if _, err := Decode(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Decode error %v, want ErrMalformed", name, err)
		}
	}
}

// framed frames arbitrary bytes with a valid header, to reach the protobuf
// decoder.
func framed(pb []byte) []byte {
	cmd := &fsmpb.Command{}
	data, _ := Encode(cmd)
	data = append(data[:headerLen], pb...)
	return reframe(data)
}

func reframe(data []byte) []byte {
	out := append([]byte{}, data...)
	out[0] = commandVersion
	sum := crc32c(out[headerLen:])
	out[1], out[2], out[3], out[4] = byte(sum>>24), byte(sum>>16), byte(sum>>8), byte(sum)
	return out
}

func TestApplyMalformedAndOtherLogTypes(t *testing.T) {
	h := newHarness(t)
	h.ok(enqCreate("q", "a"))
	before := h.f.StateHash()
	res := h.f.Apply(&raft.Log{Index: 9, Type: raft.LogCommand, Data: []byte{1, 2, 3}}).(*fsmpb.Result)
	if err := ResultError(res); !errors.Is(err, ErrMalformed) {
		t.Fatalf("malformed entry: %v, want ErrMalformed", err)
	}
	if out := h.f.Apply(&raft.Log{Index: 10, Type: raft.LogConfiguration}); out != nil {
		t.Fatalf("configuration entry returned %v, want nil", out)
	}
	if h.f.StateHash() != before {
		t.Fatal("malformed entry changed the state")
	}
	if h.f.AppliedIndex() != 10 {
		t.Fatalf("applied index %d, want 10", h.f.AppliedIndex())
	}
}

func enqCreate(queue, body string) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Enqueue{Enqueue: &fsmpb.Enqueue{Queue: queue, CreateQueue: true, Messages: []*fsmpb.Message{msg(body, "")}}}}
}

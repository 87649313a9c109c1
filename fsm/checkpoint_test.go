package fsm

import (
	"testing"

	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// TestCheckpointEntriesChangeNothing: a log-verification checkpoint is a
// command entry every FSM passes over the same way: no result, no error,
// no change of state or time, only the applied index moves. Two FSMs fed
// the same commands, one with checkpoints between them and one with
// other entries at those indexes, reach the same state hash.
func TestCheckpointEntriesChangeNothing(t *testing.T) {
	if !IsCheckpoint(CheckpointData()) {
		t.Fatal("IsCheckpoint refuses CheckpointData()")
	}
	if _, err := Decode(CheckpointData()); err == nil {
		t.Fatal("a checkpoint decodes as a command: a release without checkpoints would apply it")
	}
	cmds := []*fsmpb.Command{createQ("q", nil), enq("q", msg("a", "a"))}
	for i, cmd := range cmds {
		cmd.NowUnixNano = t0 + int64(i)
	}
	with, without := New(), New()
	idx := uint64(0)
	for _, cmd := range cmds {
		data, err := Encode(cmd)
		if err != nil {
			t.Fatal(err)
		}
		idx++
		if res := with.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: CheckpointData()}); res != nil {
			t.Fatalf("checkpoint at %d: result %v, want none", idx, res)
		}
		if with.AppliedIndex() != idx {
			t.Fatalf("applied index %d after a checkpoint at %d", with.AppliedIndex(), idx)
		}
		without.Apply(&raft.Log{Index: idx, Type: raft.LogNoop})
		idx++
		for _, f := range []*FSM{with, without} {
			if res := f.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: data}).(*fsmpb.Result); res.GetError() != nil {
				t.Fatalf("command at %d: %v", idx, res.GetError())
			}
		}
	}
	if with.StateHash() != without.StateHash() || with.NowUnixNano() != without.NowUnixNano() {
		t.Fatalf("with checkpoints: hash %s now %d; without: hash %s now %d",
			with.StateHash(), with.NowUnixNano(), without.StateHash(), without.NowUnixNano())
	}
	for _, data := range [][]byte{nil, {}, CheckpointData()[:len(CheckpointData())-1], append(CheckpointData(), 0)} {
		if IsCheckpoint(data) {
			t.Errorf("IsCheckpoint(%q) is true", data)
		}
	}
}

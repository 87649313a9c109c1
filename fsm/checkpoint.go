package fsm

import "bytes"

// checkpointData is the whole Data of a log-verification checkpoint
// entry (package cluster appends one periodically; raft-wal's verifier
// checks every node's log between two of them). Its first byte is 0,
// never a command version, so Decode refuses it and no command can ever
// be mistaken for it; the rest names it for whoever reads a log dump.
var checkpointData = []byte("\x00quorumq-log-checkpoint")

// CheckpointData returns the Data of a log-verification checkpoint entry
// (a raft.LogCommand).
func CheckpointData() []byte { return bytes.Clone(checkpointData) }

// IsCheckpoint reports whether data is a log-verification checkpoint.
// Apply passes such an entry over: it has no result and changes nothing
// but the applied index, on every replica alike.
func IsCheckpoint(data []byte) bool { return bytes.Equal(data, checkpointData) }

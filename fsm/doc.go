// Package fsm is quorumq's replicated queue state machine: the one place
// that decides what a queue holds. It implements raft.FSM (and
// raft.BatchingFSM) over commands encoded with fsmpb and framed by Encode.
//
// It owns every queue, message, lease, producer dedup entry, ack tombstone
// and receive replay entry, and the snapshot format that carries them. It is
// pure: time comes only from each command's now (kept monotone), there are
// no goroutines, and the only I/O is the snapshot stream, so every node that
// applies the same log reaches the same state (see StateHash).
//
// Why it is built this way:
//
//   - Every command runs on copy-on-write clones of the queues it touches
//     (tidwall/btree Copy is O(1)) and is committed by swapping pointers
//     only when it succeeds. So a command that fails - or panics, which a
//     recover turns into an error result - leaves the state untouched, and
//     Snapshot is a frozen view taken in O(number of queues).
//   - Message records are immutable and replaced on change, for the same
//     reason. A caller must never modify a Delivery body it got from a
//     Result: it shares memory with the state.
//   - Per queue, messages live in one id-ordered tree (live records and ack
//     tombstones), plus a ready tree (id order: FIFO is its minimum) and a
//     timed tree ((time, id) order: delayed messages and leases). Ids grow
//     with enqueue time, so retention and dedup expiry are scans from the
//     oldest id that stop at the first young record.
//
// The delivery rules, limits and the snapshot format are in DESIGN.md next
// to this file.
package fsm

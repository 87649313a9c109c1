// Package fsm is quorumq's replicated queue state machine: the one place
// that decides what a queue holds. It implements raft.FSM over commands
// encoded with fsmpb and framed by Encode.
//
// It owns every queue, message, lease, producer dedup entry, ack tombstone
// and receive replay entry, and the snapshot format that carries them. It is
// pure: time comes only from each command's now (kept monotone), Apply
// starts no goroutine (Persist and SpliceSegments use one each, to write
// and to stream a snapshot), and the only I/O is the snapshot stream with
// its segment files and the Store that holds message bodies and
// attributes, so every node that applies the same log reaches the same
// state (see StateHash).
//
// Why it is built this way:
//
//   - A command validates everything before it changes anything, so a
//     failed command leaves the state untouched; a transaction, which can
//     fail half-way, runs on copy-on-write clones of its queues
//     (tidwall/btree Copy is O(1)) swapped in only on success. Snapshot
//     copies every queue's trees the same way, a frozen view taken in
//     O(number of queues). A recover turns a panic (a bug) into an error
//     result instead of killing every node that applies the entry; a Store
//     that fails to commit an entry's writes panics on, stopping only the
//     node whose disk failed.
//   - Message records are immutable and replaced on change, for the same
//     reason. A record holds a reference to its body and attributes in the
//     Store, not the bytes: a receive's Apply returns deliveries without
//     them, and FillBodies reads them on the node that answers. A caller
//     must never modify a Delivery body it got from a Result: with a
//     MemStore it shares memory with the store.
//   - Per queue, messages live in one id-ordered tree (live records and ack
//     tombstones), plus a ready tree (id order: FIFO is its minimum) and a
//     timed tree ((time, id) order: delayed messages and leases). Ids grow
//     with enqueue time, so retention and dedup expiry are scans from the
//     oldest id that stop at the first young record.
//   - Message groups add one tree per queue by (group, id). Only a
//     group's first live message is in ready or timed; the later ones wait
//     in neither, so a receive, which takes the lowest ready ids, never
//     takes two of one group, and the next one becomes deliverable when
//     the first leaves.
//
// The delivery rules, limits and the snapshot format are in DESIGN.md next
// to this file.
package fsm

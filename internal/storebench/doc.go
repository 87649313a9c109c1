// Package storebench measures the candidate engines for the message body
// store (fsm/DESIGN.md, "Storage") under a queue's access pattern: 1 KiB
// bodies written in batches, one batch per Raft apply, with the applied
// index in the same atomic write and no fsync (the Raft log is the
// write-ahead log); point reads in FIFO order; deletes after acks; the
// space a drain gives back; and the cost of a checkpoint with a large
// backlog, which is what a snapshot would cost.
//
// It holds benchmarks only: `go test ./...` compiles them and runs
// nothing. Every run keeps its data under the test's temporary directory.
//
//	go test ./internal/storebench -run '^$' -bench . -benchtime 200000x
//
// The backlog of the checkpoint benchmark is set with -storebench.backlog.
package storebench

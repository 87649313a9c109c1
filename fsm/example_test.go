package fsm_test

import (
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// Example shows the life of a message as a node drives it: every command
// is encoded, stamped with the leader's clock and applied as a log entry.
func Example() {
	f := fsm.New()
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var index uint64
	apply := func(at time.Duration, cmd *fsmpb.Command) *fsmpb.Result {
		cmd.NowUnixNano = start.Add(at).UnixNano()
		data, err := fsm.Encode(cmd)
		if err != nil {
			panic(err)
		}
		index++
		res := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data}).(*fsmpb.Result)
		// A receive's bodies are read from the store after Apply, by the
		// node that answers.
		if err := f.FillBodies(res); err != nil {
			panic(err)
		}
		return res
	}

	apply(0, &fsmpb.Command{Op: &fsmpb.Command_CreateQueue{CreateQueue: &fsmpb.CreateQueue{Name: "jobs"}}})
	send := &fsmpb.Command{Op: &fsmpb.Command_Enqueue{Enqueue: &fsmpb.Enqueue{
		Queue: "jobs", Messages: []*fsmpb.Message{{Body: []byte("resize img-1"), DedupId: "img-1"}},
	}}}
	r := apply(time.Second, send)
	fmt.Println("enqueued id", r.Enqueued[0].MessageId, "duplicate", r.Enqueued[0].Duplicate)
	r = apply(2*time.Second, send) // a producer retry
	fmt.Println("retry id", r.Enqueued[0].MessageId, "duplicate", r.Enqueued[0].Duplicate)

	r = apply(3*time.Second, &fsmpb.Command{Op: &fsmpb.Command_Receive{Receive: &fsmpb.Receive{Queue: "jobs", Max: 10}}})
	d := r.Deliveries[0]
	fmt.Printf("delivered %q attempt %d\n", d.Body, d.Receipt.Attempt)

	r = apply(4*time.Second, &fsmpb.Command{Op: &fsmpb.Command_Ack{Ack: &fsmpb.Ack{Queue: "jobs", Receipts: []*fsmpb.Receipt{d.Receipt}}}})
	fmt.Println("ack", r.Outcomes[0])

	info, _ := f.Queue("jobs")
	fmt.Println("ready", info.Stats.Ready, "acked", info.Stats.AckedTotal, "dedup hits", info.Stats.DedupHitsTotal)
	// Output:
	// enqueued id 1 duplicate false
	// retry id 1 duplicate true
	// delivered "resize img-1" attempt 1
	// ack ACK_OK
	// ready 0 acked 1 dedup hits 1
}

package cluster

import (
	"github.com/hashicorp/raft"
)

// drainedTransport is raft's NetworkTransport whose replication pipelines
// always have their answers read (drainedPipeline), so that a follower
// refusing an append cannot stop replication to it for good
// (DESIGN.md, "Pipelined replication that cannot stall").
type drainedTransport struct{ *raft.NetworkTransport }

// AppendEntriesPipeline implements raft.Transport.
func (t drainedTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	p, err := t.NetworkTransport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	return newDrainedPipeline(p), nil
}

// drainedPipeline reads every answer of the pipeline it wraps as soon as
// the transport has it, and holds it until raft takes it. raft stops taking
// answers after the first failed one; without this, the transport's
// decoder would then wait to hand over the next answer while raft's sender
// waits for the decoder to take its next request, and the pipeline, which
// only that sender closes, would never be closed. The queue holds at most
// the requests in flight when raft stopped reading.
type drainedPipeline struct {
	raft.AppendPipeline
	out  chan raft.AppendFuture
	stop chan struct{}
}

func newDrainedPipeline(p raft.AppendPipeline) *drainedPipeline {
	d := &drainedPipeline{AppendPipeline: p, out: make(chan raft.AppendFuture), stop: make(chan struct{})}
	go d.forward()
	return d
}

func (d *drainedPipeline) forward() {
	in := d.AppendPipeline.Consumer()
	var queue []raft.AppendFuture
	for {
		var out chan raft.AppendFuture
		var next raft.AppendFuture
		if len(queue) > 0 {
			out, next = d.out, queue[0]
		}
		select {
		case f := <-in:
			queue = append(queue, f)
		case out <- next:
			queue[0] = nil
			queue = queue[1:]
		case <-d.stop:
			return
		}
	}
}

// Consumer implements raft.AppendPipeline.
func (d *drainedPipeline) Consumer() <-chan raft.AppendFuture { return d.out }

// Close implements raft.AppendPipeline.
func (d *drainedPipeline) Close() error {
	err := d.AppendPipeline.Close()
	close(d.stop)
	return err
}

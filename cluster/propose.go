package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// errDeadline is what await returns when our own deadline expires first.
var errDeadline = errors.New("deadline expired while waiting for raft")

// await waits for a raft future, but never past ctx or timeout: a future
// can hang for as long as there is no quorum, and a caller must not.
func (n *Node) await(ctx context.Context, f raft.Future, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return errDeadline
	case <-ctx.Done():
		return ctx.Err()
	case <-n.stop:
		return raft.ErrRaftShutdown
	}
}

// raftShutdownTimeout bounds raft.Shutdown, which waits for raft's own
// goroutines (a snapshot being written, a stuck disk).
const raftShutdownTimeout = 10 * time.Second

// waitUpTo waits for f at most d; unlike await it keeps waiting while the
// node stops, which is when shutdown futures are waited on.
func waitUpTo(f raft.Future, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("%w after %v", errDeadline, d)
	}
}

// timeoutFor is the caller's remaining time, capped at ApplyTimeout.
func (n *Node) timeoutFor(ctx context.Context) time.Duration {
	timeout := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < timeout {
			timeout = left
		}
	}
	return timeout
}

// leaderHint returns the leader's ID and API address as far as this node
// knows them.
func (n *Node) leaderHint() (id, apiAddr string) {
	_, lid := n.raft.LeaderWithID()
	if lid == "" {
		return "", ""
	}
	if string(lid) == n.cfg.NodeID {
		return n.cfg.NodeID, n.apiAddr
	}
	if m, ok := n.members.get(string(lid)); ok {
		return string(lid), m.meta.API
	}
	return string(lid), ""
}

// notLeader is the error for a request that only a ready leader serves.
func (n *Node) notLeader() error {
	id, addr := n.leaderHint()
	if id == n.cfg.NodeID {
		// We are leader but have not yet applied earlier terms' entries:
		// no one can serve right now; the client backs off and retries.
		return wire.NotLeaderError("", "")
	}
	return wire.NotLeaderError(id, addr)
}

// Propose implements transport.Backend: it stamps cmd with cluster time
// (clustertime.go), submits it to Raft and waits (at most ApplyTimeout,
// and never past ctx) until a quorum stored it and the FSM applied it
// here.
//
// Not being leader at submission is a NotLeader error with a hint. Any
// failure after submission (leadership lost, deadline, shutdown) is an
// OutcomeUnknown error: the command may still be applied, so a retry must
// reuse its dedup and request IDs.
func (n *Node) Propose(ctx context.Context, cmd *fsmpb.Command) (*fsmpb.Result, error) {
	wait, err := n.Submit(ctx, cmd)
	if err != nil {
		return nil, err
	}
	return wait(ctx)
}

// Submit implements transport.Backend: it is Propose in two steps. It
// returns once cmd is handed to Raft, so commands submitted one after
// another from one goroutine reach the log in that order; wait then gives
// the result as Propose would. The time limit (ApplyTimeout, or ctx's
// deadline if sooner) runs from submission.
func (n *Node) Submit(ctx context.Context, cmd *fsmpb.Command) (wait func(context.Context) (*fsmpb.Result, error), err error) {
	if n.raft.State() != raft.Leader {
		return nil, n.notLeader()
	}
	if err := n.gateDeadLetterOrigin(cmd); err != nil {
		return nil, err
	}
	if err := n.gateRules(cmd); err != nil {
		return nil, err
	}
	// A dead-letter queue that does not exist is refused before a Raft
	// round; Apply checks it again, against the state it applies to.
	if res := n.fsm.MissingDeadLetterQueue(cmd); res != nil {
		n.countRefusal(res)
		return func(context.Context) (*fsmpb.Result, error) { return res, nil }, nil
	}
	if res, err := n.unchain(ctx, cmd); err != nil {
		return nil, err
	} else if res != nil {
		n.countRefusal(res)
		return func(context.Context) (*fsmpb.Result, error) { return res, nil }, nil
	}
	if n.cfg.WallClockStamps {
		cmd.NowUnixNano = n.cfg.Clock.Wall().UnixNano()
	} else {
		cmd.NowUnixNano = n.ctime.stamp(n.fsm.NowUnixNano(), n.voters())
	}
	data, err := fsm.Encode(cmd)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "encode command: %v", err)
	}
	timeout := n.timeoutFor(ctx)
	if timeout <= 0 {
		return nil, status.Error(codes.DeadlineExceeded, "deadline expired before the command was submitted")
	}
	start := time.Now()
	f := n.raft.Apply(data, timeout)
	return func(ctx context.Context) (*fsmpb.Result, error) {
		return n.result(ctx, f, start, timeout)
	}, nil
}

// result waits for the future of a command submitted at start and maps
// raft's errors to the API's.
func (n *Node) result(ctx context.Context, f raft.ApplyFuture, start time.Time, timeout time.Duration) (*fsmpb.Result, error) {
	switch err := n.await(ctx, f, max(timeout-time.Since(start), time.Millisecond)); {
	case err == nil:
		n.metrics.applyDuration.Observe(time.Since(start).Seconds())
	case errors.Is(err, raft.ErrNotLeader):
		// Raft refused the entry before appending it: nothing happened.
		return nil, n.notLeader()
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return nil, status.Error(codes.Unavailable, "raft apply queue is full; the command was not submitted")
	case errors.Is(err, raft.ErrLeadershipTransferInProgress):
		// Refused before appending, while handing leadership over: the
		// client retries once the new leader is known.
		return nil, wire.NotLeaderError("", "")
	case errors.Is(err, raft.ErrLeadershipLost):
		return nil, wire.OutcomeUnknownError("leadership lost after the command was submitted")
	case errors.Is(err, raft.ErrRaftShutdown):
		return nil, wire.OutcomeUnknownError("node shut down after the command was submitted")
	case errors.Is(err, errDeadline), errors.Is(err, context.DeadlineExceeded):
		return nil, wire.OutcomeUnknownError(fmt.Sprintf("no commit within %v", timeout.Round(time.Millisecond)))
	case errors.Is(err, context.Canceled):
		return nil, wire.OutcomeUnknownError("request canceled after the command was submitted")
	default:
		return nil, wire.OutcomeUnknownError(err.Error())
	}
	res, ok := f.Response().(*fsmpb.Result)
	if !ok {
		return nil, status.Errorf(codes.Internal, "fsm returned %T, want *fsmpb.Result", f.Response())
	}
	// A receive's Apply leaves the bodies in the store: the node that
	// answers reads them, followers never do.
	if err := n.fsm.FillBodies(res); err != nil {
		return nil, wire.OutcomeUnknownError(fmt.Sprintf("the command was applied, but its messages could not be read: %v", err))
	}
	n.countRefusal(res)
	return res, nil
}

// countRefusal counts res in quorumq_command_refusals_total if it is an
// error of the state machine.
func (n *Node) countRefusal(res *fsmpb.Result) {
	if code := res.GetError().GetCode(); code != fsmpb.ErrorCode_OK {
		n.metrics.refusals.WithLabelValues(code.String()).Inc()
	}
}

// verifyLeader confirms with a quorum that this node is still the ready
// leader, so a deposed leader cut off from the others never serves a
// stale read.
func (n *Node) verifyLeader(ctx context.Context) error {
	if !n.ready.Load() {
		return n.notLeader()
	}
	if err := n.await(ctx, n.raft.VerifyLeader(), n.timeoutFor(ctx)); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return n.notLeader()
		}
		return status.Errorf(codes.Unavailable, "cannot confirm leadership: %v", err)
	}
	return nil
}

// Queue implements transport.Backend.
func (n *Node) Queue(ctx context.Context, name string) (*fsmpb.QueueInfo, error) {
	if err := n.verifyLeader(ctx); err != nil {
		return nil, err
	}
	info, err := n.fsm.Queue(name)
	if errors.Is(err, fsm.ErrQueueNotFound) {
		return nil, wire.QueueError(fsmpb.ErrorCode_QUEUE_NOT_FOUND, fmt.Sprintf("queue %q not found", name))
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	n.ageNow(info)
	return info, nil
}

// ageNow measures each queue's oldest ready age at this node's cluster
// time rather than at the last applied command's: an idle queue applies
// no command, and its oldest message must still grow older. The messages
// counted ready are those of the applied state.
func (n *Node) ageNow(infos ...*fsmpb.QueueInfo) {
	fsmNow := n.fsm.NowUnixNano()
	lag := max(0, n.clusterNow().UnixNano()-fsmNow)
	for _, info := range infos {
		if st := info.GetStats(); st.GetReady() > 0 {
			st.OldestReadyAgeNs += lag
		}
	}
}

// Peek implements transport.Backend: a read of this node's applied state,
// after confirming leadership when leader is set.
func (n *Node) Peek(ctx context.Context, queue string, o fsm.PeekOptions, leader bool) ([]*fsmpb.PeekedMessage, uint64, uint64, error) {
	if leader {
		if err := n.verifyLeader(ctx); err != nil {
			return nil, 0, 0, err
		}
	}
	applied := n.fsm.AppliedIndex() // the state read is at least this new
	msgs, next, err := n.fsm.Peek(queue, o)
	switch {
	case errors.Is(err, fsm.ErrQueueNotFound):
		return nil, 0, 0, wire.QueueError(fsmpb.ErrorCode_QUEUE_NOT_FOUND, fmt.Sprintf("queue %q not found", queue))
	case err != nil: // a max or state the API let through, or a body the store could not read
		return nil, 0, 0, status.Error(codes.Internal, err.Error())
	}
	return msgs, next, applied, nil
}

// Lookup implements transport.Backend: a read of this node's applied
// state, after confirming leadership when leader is set.
func (n *Node) Lookup(ctx context.Context, queue string, id uint64, dedupID string, leader bool) (*fsmpb.MessageFate, uint64, error) {
	if leader {
		if err := n.verifyLeader(ctx); err != nil {
			return nil, 0, err
		}
	}
	applied := n.fsm.AppliedIndex() // the state read is at least this new
	fate, err := n.fsm.Lookup(queue, id, dedupID)
	switch {
	case errors.Is(err, fsm.ErrQueueNotFound):
		return nil, 0, wire.QueueError(fsmpb.ErrorCode_QUEUE_NOT_FOUND, fmt.Sprintf("queue %q not found", queue))
	case err != nil: // an id or dedup ID the API let through
		return nil, 0, status.Error(codes.Internal, err.Error())
	}
	return fate, applied, nil
}

// Queues implements transport.Backend.
func (n *Node) Queues(ctx context.Context) ([]*fsmpb.QueueInfo, error) {
	if err := n.verifyLeader(ctx); err != nil {
		return nil, err
	}
	infos := n.fsm.Queues()
	n.ageNow(infos...)
	return infos, nil
}

// leaderRecheck bounds how long a long poll sleeps without checking that
// this node is still the leader (the FSM only wakes it on changes).
const leaderRecheck = 500 * time.Millisecond

// HasQueue implements transport.Backend from this node's applied state.
func (n *Node) HasQueue(queue string) (exists bool, queues int) { return n.fsm.HasQueue(queue) }

// Available implements transport.Backend: the messages of queue a receive
// would find now, 0 while this node is not a ready leader.
func (n *Node) Available(queue string) int {
	if !n.ready.Load() {
		return 0
	}
	return n.fsm.Available(queue, n.clusterNow())
}

// WaitAvailable implements transport.Backend: it sleeps on the FSM's
// change notification for queue (and on the time the next delayed or
// leased message becomes available) until a message is available. It
// writes nothing to the Raft log.
func (n *Node) WaitAvailable(ctx context.Context, queue string) error {
	for {
		if !n.ready.Load() {
			return n.notLeader()
		}
		if _, err := n.fsm.Queue(queue); err != nil {
			if errors.Is(err, fsm.ErrQueueNotFound) {
				return wire.QueueError(fsmpb.ErrorCode_QUEUE_NOT_FOUND, fmt.Sprintf("queue %q not found", queue))
			}
			return status.Error(codes.Internal, err.Error())
		}
		now := n.clusterNow()
		available, changed, next := n.fsm.Watch(queue, now)
		if available {
			return nil
		}
		wait := leaderRecheck
		if !next.IsZero() && next.Sub(now) < wait {
			wait = max(next.Sub(now), time.Millisecond)
		}
		t := time.NewTimer(wait)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-n.stop:
			t.Stop()
			return wire.NotLeaderError("", "")
		}
		t.Stop()
	}
}

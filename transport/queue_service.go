package transport

import (
	"context"
	"errors"
	"io"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// Backend is what the Queue service needs from a node. Errors it returns
// are gRPC status errors (wire.NotLeaderError, wire.OutcomeUnknownError, ...), which
// the service passes through unchanged.
type Backend interface {
	// Propose stamps cmd with the leader's clock, replicates it through
	// Raft and returns the FSM's result once a quorum has it and the
	// leader applied it. A Result carrying an error changed nothing.
	Propose(ctx context.Context, cmd *fsmpb.Command) (*fsmpb.Result, error)
	// Submit is Propose in two steps: it returns once cmd is handed to
	// Raft (commands submitted one after another reach the log in that
	// order, unless refused), and wait gives Propose's result.
	Submit(ctx context.Context, cmd *fsmpb.Command) (wait func(context.Context) (*fsmpb.Result, error), err error)
	// Queue and Queues read the leader's state after confirming that this
	// node is still the leader, so a deposed leader never answers.
	Queue(ctx context.Context, name string) (*fsmpb.QueueInfo, error)
	Queues(ctx context.Context) ([]*fsmpb.QueueInfo, error)
	// Peek reads a queue's live messages (fsm.FSM.Peek) without a log
	// entry: from this node's applied state, or, with leader, on the
	// leader after confirming that it still is. It returns the messages,
	// the next page's first id and the applied index read.
	Peek(ctx context.Context, queue string, o fsm.PeekOptions, leader bool) ([]*fsmpb.PeekedMessage, uint64, uint64, error)
	// Lookup reads what became of one message (fsm.FSM.Lookup), as Peek
	// reads, and returns it with the applied index read.
	Lookup(ctx context.Context, queue string, id uint64, dedupID string, leader bool) (*fsmpb.MessageFate, uint64, error)
	// WaitAvailable returns nil as soon as queue has a message available,
	// or ctx's error when it ends first. It writes nothing to the Raft
	// log: an empty long poll costs no log entry. It checks before it
	// waits, so with a ctx that is already done it answers "available
	// now?".
	WaitAvailable(ctx context.Context, queue string) error
	// HasQueue reports whether queue exists and how many queues exist, from
	// this node's applied state without confirming leadership: what it
	// answers bounds creations, it does not fence them.
	HasQueue(queue string) (exists bool, queues int)
	// Available returns how many messages of queue a receive proposed now
	// would find (a lower bound; 0 when this node cannot serve). It
	// writes nothing.
	Available(queue string) int
}

// QueueService is the gRPC Queue service: it validates each request
// against Limits, turns it into one fsm command and maps the result back.
type QueueService struct {
	quorumqpb.UnimplementedQueueServer
	backend    Backend
	limits     limits
	autoCreate bool
	// gather gathers concurrent HTTP enqueues of a queue (gather.go).
	gather gatherer

	// polls holds, per queue with receives in progress, the long-poll
	// token and the messages claimed by receives in flight.
	//
	// The token (a chan of capacity 1) lets only the long poll holding it
	// wait for and propose a receive: one arriving message then wakes one
	// poller, not every poller of the queue (each of which would add a
	// Raft entry and, losing the race, back off and deliver late).
	//
	// The claims keep a receive off Raft when the messages available are
	// already spoken for: a receive that skips the long poll because
	// messages are available would otherwise race the receives in flight
	// for them and, losing, cost a Raft entry that leases nothing.
	//
	// An entry is dropped when nothing uses it, so queues come and go
	// without the map growing.
	pollsMu sync.Mutex
	polls   map[string]*queuePolls
}

type queuePolls struct {
	token    chan struct{}
	waiting  int           // long polls holding or waiting for token
	claimed  int           // max of the receives in flight
	released chan struct{} // closed (and replaced) when a claim ends
}

// pollsLocked returns queue's entry, made on first use; pollsMu is held.
func (q *QueueService) pollsLocked(queue string) *queuePolls {
	p, ok := q.polls[queue]
	if !ok {
		if q.polls == nil {
			q.polls = map[string]*queuePolls{}
		}
		p = &queuePolls{token: make(chan struct{}, 1), released: make(chan struct{})}
		q.polls[queue] = p
	}
	return p
}

// forgetLocked drops p once nothing uses it; pollsMu is held.
func (q *QueueService) forgetLocked(queue string, p *queuePolls) {
	if p.waiting == 0 && p.claimed == 0 && q.polls[queue] == p {
		delete(q.polls, queue)
	}
}

// turn returns queue's long-poll token; release must be called once the
// long poll is over.
func (q *QueueService) turn(queue string) (token chan struct{}, release func()) {
	q.pollsMu.Lock()
	defer q.pollsMu.Unlock()
	p := q.pollsLocked(queue)
	p.waiting++
	return p.token, func() {
		q.pollsMu.Lock()
		defer q.pollsMu.Unlock()
		p.waiting--
		q.forgetLocked(queue, p)
	}
}

// proposeReceive proposes a receive of up to max messages of queue,
// counting them as claimed while it is in flight.
func (q *QueueService) proposeReceive(ctx context.Context, queue string, max uint32, cmd *fsmpb.Command) (*fsmpb.Result, error) {
	q.pollsMu.Lock()
	p := q.pollsLocked(queue)
	p.claimed += int(max)
	q.pollsMu.Unlock()
	defer func() {
		q.pollsMu.Lock()
		p.claimed -= int(max)
		close(p.released)
		p.released = make(chan struct{})
		q.forgetLocked(queue, p)
		q.pollsMu.Unlock()
	}()
	return q.propose(ctx, cmd)
}

// unclaimedNow reports whether queue has more messages available right
// now than the receives in flight may take; when it has not, released is
// closed once one of those receives ends.
func (q *QueueService) unclaimedNow(queue string) (ok bool, released <-chan struct{}) {
	n := q.backend.Available(queue)
	q.pollsMu.Lock()
	defer q.pollsMu.Unlock()
	p, found := q.polls[queue]
	if !found || p.claimed == 0 {
		return n > 0, nil
	}
	return n > p.claimed, p.released
}

// turnsHeld is the number of queues with a long-poll entry (for tests).
func (q *QueueService) turnsHeld() int {
	q.pollsMu.Lock()
	defer q.pollsMu.Unlock()
	return len(q.polls)
}

// NewQueueService returns the Queue service over backend. With autoCreate,
// an enqueue creates a missing queue with default settings.
func NewQueueService(backend Backend, l wire.Limits, autoCreate bool) *QueueService {
	return &QueueService{backend: backend, limits: limits{l.WithDefaults()}, autoCreate: autoCreate}
}

// Register adds the service to s.
func (q *QueueService) Register(s grpc.ServiceRegistrar) { quorumqpb.RegisterQueueServer(s, q) }

// propose sends cmd and turns an FSM error into its status error.
func (q *QueueService) propose(ctx context.Context, cmd *fsmpb.Command) (*fsmpb.Result, error) {
	res, err := q.backend.Propose(ctx, cmd)
	if err != nil {
		return nil, err
	}
	if err := resultError(res); err != nil {
		return nil, err
	}
	return res, nil
}

// resultError is the status error of an FSM result that carries one.
func resultError(res *fsmpb.Result) error {
	if e := res.GetError(); e != nil && e.GetCode() != fsmpb.ErrorCode_OK {
		return wire.QueueError(e.GetCode(), e.GetMessage())
	}
	return nil
}

// CreateQueue creates a queue.
func (q *QueueService) CreateQueue(ctx context.Context, req *quorumqpb.CreateQueueRequest) (*quorumqpb.CreateQueueResponse, error) {
	if err := wire.ValidateQueueName("name", req.GetName()); err != nil {
		return nil, err
	}
	if err := q.limits.checkSettings("settings", req.GetName(), req.GetSettings()); err != nil {
		return nil, err
	}
	created := map[string]bool{}
	if err := q.admitNewQueue("name", req.GetName(), created); err != nil {
		return nil, err
	}
	if dlq := req.GetSettings().GetDeadLetterQueue(); dlq != "" && req.GetCreateDeadLetterQueue() {
		if err := q.admitNewQueue("settings.dead_letter_queue", dlq, created); err != nil {
			return nil, err
		}
	}
	res, err := q.propose(ctx, &fsmpb.Command{Op: &fsmpb.Command_CreateQueue{CreateQueue: &fsmpb.CreateQueue{
		Name: req.GetName(), Settings: req.GetSettings(), IfNotExists: req.GetIfNotExists(),
		CreateDeadLetterQueue: req.GetCreateDeadLetterQueue(),
	}}})
	if err != nil {
		return nil, err
	}
	return &quorumqpb.CreateQueueResponse{Queue: res.GetQueue()}, nil
}

// UpdateQueue changes the settings that are set in the request.
func (q *QueueService) UpdateQueue(ctx context.Context, req *quorumqpb.UpdateQueueRequest) (*quorumqpb.UpdateQueueResponse, error) {
	if err := wire.ValidateQueueName("name", req.GetName()); err != nil {
		return nil, err
	}
	if req.GetSettings() == nil {
		return nil, invalid("settings: missing (set at least one field to change)")
	}
	if err := q.limits.checkSettings("settings", req.GetName(), req.GetSettings()); err != nil {
		return nil, err
	}
	if dlq := req.GetSettings().GetDeadLetterQueue(); dlq != "" && req.GetCreateDeadLetterQueue() {
		if err := q.admitNewQueue("settings.dead_letter_queue", dlq, nil); err != nil {
			return nil, err
		}
	}
	res, err := q.propose(ctx, &fsmpb.Command{Op: &fsmpb.Command_UpdateQueue{UpdateQueue: &fsmpb.UpdateQueue{
		Name: req.GetName(), Settings: req.GetSettings(), CreateDeadLetterQueue: req.GetCreateDeadLetterQueue(),
	}}})
	if err != nil {
		return nil, err
	}
	return &quorumqpb.UpdateQueueResponse{Queue: res.GetQueue()}, nil
}

// GetQueue returns a queue's settings and stats, read on the leader.
func (q *QueueService) GetQueue(ctx context.Context, req *quorumqpb.GetQueueRequest) (*quorumqpb.GetQueueResponse, error) {
	if err := wire.ValidateQueueName("name", req.GetName()); err != nil {
		return nil, err
	}
	info, err := q.backend.Queue(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	return &quorumqpb.GetQueueResponse{Queue: info}, nil
}

// Peek shows a queue's live messages without leasing or changing any,
// read from this node's state (or the leader's, with leader set). Its max
// is checked before anything is read.
func (q *QueueService) Peek(ctx context.Context, req *quorumqpb.PeekRequest) (*quorumqpb.PeekResponse, error) {
	if err := wire.ValidateQueueName("queue", req.GetQueue()); err != nil {
		return nil, err
	}
	if err := wire.ValidatePeek(int(req.GetMax()), req.GetState()); err != nil {
		return nil, err
	}
	o := fsm.PeekOptions{From: req.GetFromId(), Max: int(req.GetMax()), State: req.GetState(), NoBody: req.GetNoBody()}
	msgs, next, applied, err := q.backend.Peek(ctx, req.GetQueue(), o, req.GetLeader())
	if err != nil {
		return nil, err
	}
	return &quorumqpb.PeekResponse{Messages: msgs, NextId: next, AppliedIndex: applied}, nil
}

// Lookup tells what became of one message, read from this node's state
// (or the leader's, with leader set). Its id, dedup ID and queue are
// checked before anything is read.
func (q *QueueService) Lookup(ctx context.Context, req *quorumqpb.LookupRequest) (*quorumqpb.LookupResponse, error) {
	if err := wire.ValidateQueueName("queue", req.GetQueue()); err != nil {
		return nil, err
	}
	if err := wire.ValidateLookup(req.GetId(), req.GetDedupId()); err != nil {
		return nil, err
	}
	fate, applied, err := q.backend.Lookup(ctx, req.GetQueue(), req.GetId(), req.GetDedupId(), req.GetLeader())
	if err != nil {
		return nil, err
	}
	return &quorumqpb.LookupResponse{Message: fate, AppliedIndex: applied}, nil
}

// ListQueues returns every queue, read on the leader.
func (q *QueueService) ListQueues(ctx context.Context, _ *quorumqpb.ListQueuesRequest) (*quorumqpb.ListQueuesResponse, error) {
	infos, err := q.backend.Queues(ctx)
	if err != nil {
		return nil, err
	}
	return &quorumqpb.ListQueuesResponse{Queues: infos}, nil
}

// DeleteQueue deletes a queue and its messages.
func (q *QueueService) DeleteQueue(ctx context.Context, req *quorumqpb.DeleteQueueRequest) (*quorumqpb.DeleteQueueResponse, error) {
	if err := wire.ValidateQueueName("name", req.GetName()); err != nil {
		return nil, err
	}
	if _, err := q.propose(ctx, &fsmpb.Command{Op: &fsmpb.Command_DeleteQueue{DeleteQueue: &fsmpb.DeleteQueue{Name: req.GetName(), Force: req.GetForce()}}}); err != nil {
		return nil, err
	}
	return &quorumqpb.DeleteQueueResponse{}, nil
}

// Purge removes every message of a queue and keeps the queue.
func (q *QueueService) Purge(ctx context.Context, req *quorumqpb.PurgeRequest) (*quorumqpb.PurgeResponse, error) {
	if err := wire.ValidateQueueName("queue", req.GetQueue()); err != nil {
		return nil, err
	}
	res, err := q.propose(ctx, &fsmpb.Command{Op: &fsmpb.Command_Purge{Purge: &fsmpb.Purge{Queue: req.GetQueue()}}})
	if err != nil {
		return nil, err
	}
	return &quorumqpb.PurgeResponse{Purged: res.GetCount()}, nil
}

// Enqueue appends a batch of messages in one Raft entry.
func (q *QueueService) Enqueue(ctx context.Context, req *quorumqpb.EnqueueRequest) (*quorumqpb.EnqueueResponse, error) {
	var total batchTotal
	enq, err := q.enqueueCommand("", req, &total, nil)
	if err != nil {
		return nil, err
	}
	if ViaHTTP(ctx) && enq.GetAfterDedupId() == "" {
		results, err := q.gatheredEnqueue(ctx, enq, total)
		if err != nil {
			return nil, err
		}
		return &quorumqpb.EnqueueResponse{Results: results}, nil
	}
	res, err := q.propose(ctx, &fsmpb.Command{Op: &fsmpb.Command_Enqueue{Enqueue: enq}})
	if err != nil {
		return nil, err
	}
	return &quorumqpb.EnqueueResponse{Results: res.GetEnqueued()}, nil
}

// streamWindow bounds the batches of one EnqueueStream submitted to Raft
// and not yet answered; the stream stops reading requests beyond it.
const streamWindow = 64

// EnqueueStream submits each request to Raft in arrival order and answers
// in the same order, so that one producer can keep several batches in
// flight without reordering them (the client chains them with
// after_dedup_id, which the FSM checks, so even a batch refused or lost on
// the way cannot be overtaken). The first request that fails ends the
// stream with its error; requests after it are not answered.
func (q *QueueService) EnqueueStream(stream quorumqpb.Queue_EnqueueStreamServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	type submitted struct {
		wait func(context.Context) (*fsmpb.Result, error)
		err  error // refused before submission
	}
	inflight := make(chan submitted, streamWindow)
	go func() {
		defer close(inflight)
		for {
			req, err := stream.Recv()
			if err != nil {
				if err != io.EOF && ctx.Err() == nil {
					inflight <- submitted{err: err}
				}
				return
			}
			var s submitted
			enq, err := q.enqueueCommand("", req, &batchTotal{}, nil)
			if err == nil {
				s.wait, err = q.backend.Submit(ctx, &fsmpb.Command{Op: &fsmpb.Command_Enqueue{Enqueue: enq}})
			}
			s.err = err
			select {
			case inflight <- s:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return // the stream ends with this error; read no more
			}
		}
	}()
	for s := range inflight {
		if s.err != nil {
			return s.err
		}
		res, err := s.wait(ctx)
		if err == nil {
			err = resultError(res)
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&quorumqpb.EnqueueResponse{Results: res.GetEnqueued()}); err != nil {
			return err
		}
	}
	return nil
}

// admitNewQueue refuses to create queue (directly, or by auto-creating it on
// enqueue) when the cluster holds MaxQueues already; created counts the
// queues earlier parts of the same request create (nil: none). Concurrent
// requests may each see room for one more, so the cluster can exceed the
// limit by the creations in flight at once, never without bound.
func (q *QueueService) admitNewQueue(field, queue string, created map[string]bool) error {
	exists, n := q.backend.HasQueue(queue)
	if exists || created[queue] {
		return nil
	}
	if n += len(created); n >= q.limits.MaxQueues {
		return resourceExhausted("%s: queue %q would be new, but %d queues exist, limit is %d (--max-queues)", field, queue, n, q.limits.MaxQueues)
	}
	if created != nil {
		created[queue] = true
	}
	return nil
}

// enqueueCommand validates one enqueue (prefix names it inside a
// transaction) and builds its fsm form; created carries the queues the
// request auto-creates.
func (q *QueueService) enqueueCommand(prefix string, req *quorumqpb.EnqueueRequest, total *batchTotal, created map[string]bool) (*fsmpb.Enqueue, error) {
	if err := wire.ValidateQueueName(prefix+"queue", req.GetQueue()); err != nil {
		return nil, err
	}
	if err := q.limits.checkMessages(prefix+"messages", req.GetMessages(), total); err != nil {
		return nil, err
	}
	if err := q.limits.checkID(prefix+"after_dedup_id", req.GetAfterDedupId()); err != nil {
		return nil, err
	}
	if q.autoCreate {
		if err := q.admitNewQueue(prefix+"queue", req.GetQueue(), created); err != nil {
			return nil, err
		}
	}
	return &fsmpb.Enqueue{Queue: req.GetQueue(), Messages: req.GetMessages(), CreateQueue: q.autoCreate, AfterDedupId: req.GetAfterDedupId()}, nil
}

// Receive leases messages. With wait_ns > 0 and nothing available it waits
// on the leader's FSM notifications (no Raft entry while it waits) and
// proposes the receive once a message is available; at the deadline it
// returns an empty response, not an error.
func (q *QueueService) Receive(ctx context.Context, req *quorumqpb.ReceiveRequest) (*quorumqpb.ReceiveResponse, error) {
	if err := wire.ValidateQueueName("queue", req.GetQueue()); err != nil {
		return nil, err
	}
	maxMsgs := req.GetMax()
	if maxMsgs == 0 {
		maxMsgs = 1
	}
	if maxMsgs > q.limits.MaxReceive {
		return nil, invalid("max: %d messages, limit is %d per receive", maxMsgs, q.limits.MaxReceive)
	}
	if err := checkDuration("visibility_ns", req.GetVisibilityNs(), q.limits.MaxVisibility); err != nil {
		return nil, err
	}
	if err := checkDuration("wait_ns", req.GetWaitNs(), q.limits.MaxWait); err != nil {
		return nil, err
	}
	if err := q.limits.checkID("request_id", req.GetRequestId()); err != nil {
		return nil, err
	}
	if err := q.limits.checkReceipts("ack", req.GetQueue(), req.GetAck(), true); err != nil {
		return nil, err
	}
	if err := wire.ValidateConsumer("consumer", req.GetConsumer()); err != nil {
		return nil, err
	}
	rcv := &fsmpb.Receive{
		Queue: req.GetQueue(), Max: maxMsgs, VisibilityNs: req.GetVisibilityNs(),
		AutoAck: req.GetAutoAck(), RequestId: req.GetRequestId(), Ack: req.GetAck(), Consumer: req.GetConsumer(),
	}
	cmd := &fsmpb.Command{Op: &fsmpb.Command_Receive{Receive: rcv}}
	resp := &quorumqpb.ReceiveResponse{}

	// Acks piggybacked on the receive must not wait for the long poll: a
	// consumer's previous batch is confirmed now.
	if req.GetWaitNs() == 0 || len(req.GetAck()) > 0 {
		res, err := q.proposeReceive(ctx, req.GetQueue(), maxMsgs, cmd)
		if err != nil {
			return nil, err
		}
		resp.Deliveries, resp.AckOutcomes = res.GetDeliveries(), res.GetOutcomes()
		if req.GetWaitNs() == 0 || len(res.GetDeliveries()) > 0 || res.GetReplayed() {
			return resp, nil
		}
		// Later proposals lease only; the acks are done.
		cmd = &fsmpb.Command{Op: &fsmpb.Command_Receive{Receive: &fsmpb.Receive{
			Queue: rcv.Queue, Max: rcv.Max, VisibilityNs: rcv.VisibilityNs, AutoAck: rcv.AutoAck, RequestId: rcv.RequestId,
			Consumer: rcv.Consumer,
		}}}
	}

	// Messages available right now, and not already claimed by receives
	// in flight, need no turn: busy consumers of a full queue propose side
	// by side and Raft batches their receives.
	if ok, _ := q.unclaimedNow(req.GetQueue()); ok {
		res, err := q.proposeReceive(ctx, req.GetQueue(), maxMsgs, cmd)
		if err != nil {
			return nil, err
		}
		if len(res.GetDeliveries()) > 0 || res.GetReplayed() {
			resp.Deliveries = res.GetDeliveries()
			return resp, nil
		}
	}

	wctx, cancel := context.WithTimeout(ctx, time.Duration(req.GetWaitNs()))
	defer cancel()
	turn, release := q.turn(req.GetQueue())
	defer release()
	// pause grows while proposals come back empty although the queue
	// looked available (a short receive elsewhere took the message between
	// the wake-up and our entry), so a contended long poll cannot turn
	// into a stream of Raft entries.
	pause := time.Duration(0)
	for {
		if pause > 0 {
			select {
			case <-wctx.Done():
				return resp, nil
			case <-time.After(pause):
			}
		}
		select {
		case turn <- struct{}{}:
		case <-wctx.Done():
			return resp, nil // the long poll ran out waiting for its turn
		}
		res, err := q.pollOnce(ctx, wctx, req.GetQueue(), maxMsgs, cmd)
		<-turn
		if err != nil || res == nil {
			return resp, err
		}
		if len(res.GetDeliveries()) > 0 || res.GetReplayed() || wctx.Err() != nil {
			resp.Deliveries = res.GetDeliveries()
			return resp, nil
		}
		pause = min(max(2*pause, 5*time.Millisecond), 200*time.Millisecond)
	}
}

// pollOnce waits until queue has a message available and proposes the
// receive cmd. It returns a nil result and nil error when the long poll's
// wait (wctx) ran out first.
func (q *QueueService) pollOnce(ctx, wctx context.Context, queue string, max uint32, cmd *fsmpb.Command) (*fsmpb.Result, error) {
	for {
		if err := q.backend.WaitAvailable(wctx, queue); err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				return nil, nil // the long poll ran out: an empty answer
			}
			if ctx.Err() != nil {
				return nil, status.FromContextError(ctx.Err()).Err()
			}
			return nil, err
		}
		ok, released := q.unclaimedNow(queue)
		if ok || released == nil {
			return q.proposeReceive(ctx, queue, max, cmd)
		}
		// Receives in flight will take what is there: wait for one to
		// end and look again.
		select {
		case <-released:
		case <-wctx.Done():
			if ctx.Err() != nil {
				return nil, status.FromContextError(ctx.Err()).Err()
			}
			return nil, nil
		}
	}
}

// Ack deletes delivered messages whose receipts are still current.
func (q *QueueService) Ack(ctx context.Context, req *quorumqpb.AckRequest) (*quorumqpb.AckResponse, error) {
	ack, err := q.ackCommand("", req)
	if err != nil {
		return nil, err
	}
	res, err := q.propose(ctx, &fsmpb.Command{Op: &fsmpb.Command_Ack{Ack: ack}})
	if err != nil {
		return nil, err
	}
	return &quorumqpb.AckResponse{Outcomes: res.GetOutcomes()}, nil
}

func (q *QueueService) ackCommand(prefix string, req *quorumqpb.AckRequest) (*fsmpb.Ack, error) {
	if err := wire.ValidateQueueName(prefix+"queue", req.GetQueue()); err != nil {
		return nil, err
	}
	if err := q.limits.checkReceipts(prefix+"receipts", req.GetQueue(), req.GetReceipts(), false); err != nil {
		return nil, err
	}
	return &fsmpb.Ack{Queue: req.GetQueue(), Receipts: req.GetReceipts()}, nil
}

// Nack releases leased messages, available again after delay_ns.
func (q *QueueService) Nack(ctx context.Context, req *quorumqpb.NackRequest) (*quorumqpb.NackResponse, error) {
	if err := wire.ValidateQueueName("queue", req.GetQueue()); err != nil {
		return nil, err
	}
	if err := q.limits.checkReceipts("receipts", req.GetQueue(), req.GetReceipts(), false); err != nil {
		return nil, err
	}
	if err := checkDuration("delay_ns", req.GetDelayNs(), q.limits.MaxDelay); err != nil {
		return nil, err
	}
	if err := wire.ValidateNackReason("reason", req.GetReason()); err != nil {
		return nil, err
	}
	res, err := q.propose(ctx, &fsmpb.Command{Op: &fsmpb.Command_Nack{Nack: &fsmpb.Nack{
		Queue: req.GetQueue(), Receipts: req.GetReceipts(), DelayNs: req.GetDelayNs(), Reason: req.GetReason(),
	}}})
	if err != nil {
		return nil, err
	}
	return &quorumqpb.NackResponse{Outcomes: res.GetOutcomes()}, nil
}

// Reject dead-letters leased messages now, fenced by their receipts like
// an ack.
func (q *QueueService) Reject(ctx context.Context, req *quorumqpb.RejectRequest) (*quorumqpb.RejectResponse, error) {
	if err := wire.ValidateQueueName("queue", req.GetQueue()); err != nil {
		return nil, err
	}
	if err := q.limits.checkReceipts("receipts", req.GetQueue(), req.GetReceipts(), false); err != nil {
		return nil, err
	}
	if err := wire.ValidateNackReason("reason", req.GetReason()); err != nil {
		return nil, err
	}
	res, err := q.propose(ctx, &fsmpb.Command{Op: &fsmpb.Command_Reject{Reject: &fsmpb.Reject{
		Queue: req.GetQueue(), Receipts: req.GetReceipts(), Reason: req.GetReason(),
	}}})
	if err != nil {
		return nil, err
	}
	return &quorumqpb.RejectResponse{Outcomes: res.GetOutcomes()}, nil
}

// Redrive moves dead letters of a queue back to their source queue, or to
// a named one, up to max in one Raft command.
func (q *QueueService) Redrive(ctx context.Context, req *quorumqpb.RedriveRequest) (*quorumqpb.RedriveResponse, error) {
	if err := wire.ValidateQueueName("queue", req.GetQueue()); err != nil {
		return nil, err
	}
	if to := req.GetTo(); to != "" {
		if err := wire.ValidateQueueName("to", to); err != nil {
			return nil, err
		}
	}
	if m := req.GetMax(); m < 1 || m > uint32(q.limits.MaxReceipts) {
		return nil, invalid("max: %d, limit is 1 to %d", m, q.limits.MaxReceipts)
	}
	res, err := q.propose(ctx, &fsmpb.Command{Op: &fsmpb.Command_Redrive{Redrive: &fsmpb.Redrive{
		Queue: req.GetQueue(), To: req.GetTo(), Max: req.GetMax(),
	}}})
	if err != nil {
		return nil, err
	}
	return &quorumqpb.RedriveResponse{Moved: res.GetCount()}, nil
}

// Extend renews leases until now + visibility_ns.
func (q *QueueService) Extend(ctx context.Context, req *quorumqpb.ExtendRequest) (*quorumqpb.ExtendResponse, error) {
	if err := wire.ValidateQueueName("queue", req.GetQueue()); err != nil {
		return nil, err
	}
	if err := q.limits.checkReceipts("receipts", req.GetQueue(), req.GetReceipts(), false); err != nil {
		return nil, err
	}
	if err := checkDuration("visibility_ns", req.GetVisibilityNs(), q.limits.MaxVisibility); err != nil {
		return nil, err
	}
	res, err := q.propose(ctx, &fsmpb.Command{Op: &fsmpb.Command_Extend{Extend: &fsmpb.Extend{
		Queue: req.GetQueue(), Receipts: req.GetReceipts(), VisibilityNs: req.GetVisibilityNs(),
	}}})
	if err != nil {
		return nil, err
	}
	return &quorumqpb.ExtendResponse{Outcomes: res.GetOutcomes()}, nil
}

// Transaction acks and enqueues all or nothing, in one Raft entry.
func (q *QueueService) Transaction(ctx context.Context, req *quorumqpb.TransactionRequest) (*quorumqpb.TransactionResponse, error) {
	if len(req.GetAcks()) == 0 && len(req.GetEnqueues()) == 0 {
		return nil, invalid("acks, enqueues: the transaction is empty")
	}
	if n := len(req.GetAcks()) + len(req.GetEnqueues()); n > fsm.MaxTransactionOp {
		return nil, invalid("acks, enqueues: the transaction has %d acks plus enqueues, limit is 1 to %d", n, fsm.MaxTransactionOp)
	}
	tx := &fsmpb.Transaction{}
	receipts := 0
	for i, a := range req.GetAcks() {
		ack, err := q.ackCommand(fieldIndex("acks", i), a)
		if err != nil {
			return nil, err
		}
		receipts += len(a.GetReceipts())
		tx.Acks = append(tx.Acks, ack)
	}
	if receipts > q.limits.MaxReceipts {
		return nil, invalid("acks: %d receipts in the transaction, limit is %d", receipts, q.limits.MaxReceipts)
	}
	total, created := &batchTotal{}, map[string]bool{}
	for i, e := range req.GetEnqueues() {
		enq, err := q.enqueueCommand(fieldIndex("enqueues", i), e, total, created)
		if err != nil {
			return nil, err
		}
		tx.Enqueues = append(tx.Enqueues, enq)
	}
	res, err := q.propose(ctx, &fsmpb.Command{Op: &fsmpb.Command_Transaction{Transaction: tx}})
	if err != nil {
		return nil, err
	}
	return &quorumqpb.TransactionResponse{AckOutcomes: res.GetOutcomes(), Enqueued: res.GetEnqueued()}, nil
}

func fieldIndex(field string, i int) string {
	return field + "[" + strconv.Itoa(i) + "]."
}

package client

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// QueueSettings are a queue's options. A zero field means "the server's
// default" on create and "unchanged" on update.
type QueueSettings struct {
	VisibilityTimeout time.Duration // default 30 s
	MaxDeliveries     uint32        // 0: unlimited (the default)
	DeadLetterQueue   string        // must exist (see WithCreateDLQ); "": dead letters stay in the queue as dead
	DedupWindow       time.Duration // default 10 min
	Retention         time.Duration // default 14 days; NoRetentionLimit keeps messages forever
	MaxDepth          uint64        // 0: unlimited (the default)
}

// NoRetentionLimit as QueueSettings.Retention keeps messages until acked.
const NoRetentionLimit time.Duration = -1

// QueueInfo is a queue as the leader has it: its settings, with every
// default filled in, and its counters.
type QueueInfo struct {
	Name      string
	CreatedAt time.Time
	// Settings has every field as the queue uses it: Retention is
	// NoRetentionLimit for a queue that keeps messages until acked;
	// MaxDeliveries and MaxDepth are 0 when unlimited, DeadLetterQueue ""
	// when there is none (dead letters then stay in the queue as dead).
	Settings QueueSettings
	Stats    QueueStats
}

// QueueStats are a queue's message counts (now) and counters (since the
// queue was created).
type QueueStats struct {
	Ready        uint64 // available for delivery now
	Leased       uint64 // delivered, waiting for an ack
	Delayed      uint64 // enqueued or nacked with a delay not yet over
	DeadLettered uint64 // held in this queue as dead letters of another
	// Dead: messages of this queue held here dead (never delivered): they
	// were dead-lettered when the queue had no dead-letter queue to go to.
	Dead uint64
	// Waiting: messages held behind an earlier message of their group,
	// which only a group's first message is not (counted in neither
	// Ready nor Delayed).
	Waiting uint64
	// Groups: message groups with at least one message in the queue
	// (ready, leased, delayed or waiting).
	Groups uint64

	EnqueuedTotal     uint64
	DeliveredTotal    uint64
	AckedTotal        uint64
	RedeliveredTotal  uint64
	DedupHitsTotal    uint64 // enqueues answered as duplicates
	ExpiredTotal      uint64 // removed by the retention limit
	DeadLetteredTotal uint64 // moved out of this queue as dead letters
	PurgedTotal       uint64
	RedrivenTotal     uint64 // moved out of this queue by Redrive

	// OldestReadyAge is how long the oldest ready message has been in
	// the queue (since its enqueue there), 0 when none is ready: how far
	// the consumers are behind. It is measured at the answering node's
	// cluster time.
	OldestReadyAge time.Duration
}

// queueInfoOf converts the wire's queue info.
func queueInfoOf(q *fsmpb.QueueInfo) *QueueInfo {
	if q == nil {
		return nil
	}
	s, st := q.GetSettings(), q.GetStats()
	info := &QueueInfo{
		Name: q.GetName(),
		Settings: QueueSettings{
			VisibilityTimeout: time.Duration(s.GetVisibilityTimeoutNs()),
			MaxDeliveries:     s.GetMaxDeliveries(),
			DeadLetterQueue:   s.GetDeadLetterQueue(),
			DedupWindow:       time.Duration(s.GetDedupWindowNs()),
			Retention:         time.Duration(s.GetRetentionNs()),
			MaxDepth:          s.GetMaxDepth(),
		},
		Stats: QueueStats{
			Ready: st.GetReady(), Leased: st.GetLeased(), Delayed: st.GetDelayed(), DeadLettered: st.GetDeadLettered(), Dead: st.GetDead(),
			Waiting: st.GetWaiting(), Groups: st.GetGroups(),
			EnqueuedTotal: st.GetEnqueuedTotal(), DeliveredTotal: st.GetDeliveredTotal(), AckedTotal: st.GetAckedTotal(),
			RedeliveredTotal: st.GetRedeliveredTotal(), DedupHitsTotal: st.GetDedupHitsTotal(), ExpiredTotal: st.GetExpiredTotal(),
			DeadLetteredTotal: st.GetDeadLetteredTotal(), PurgedTotal: st.GetPurgedTotal(), RedrivenTotal: st.GetRedrivenTotal(),
			OldestReadyAge: time.Duration(st.GetOldestReadyAgeNs()),
		},
	}
	if s != nil && s.RetentionNs != nil && *s.RetentionNs == 0 {
		info.Settings.Retention = NoRetentionLimit
	}
	if ns := q.GetCreatedAtUnixNano(); ns != 0 {
		info.CreatedAt = time.Unix(0, ns)
	}
	return info
}

func (s QueueSettings) pb(op string) (*fsmpb.QueueSettings, error) {
	out := &fsmpb.QueueSettings{}
	if err := validateNonNegative(op+" VisibilityTimeout", s.VisibilityTimeout); err != nil {
		return nil, err
	}
	if err := validateNonNegative(op+" DedupWindow", s.DedupWindow); err != nil {
		return nil, err
	}
	if s.Retention < 0 && s.Retention != NoRetentionLimit {
		return nil, invalidArg(op+" Retention", "must be >= 0 or NoRetentionLimit, got %v", s.Retention)
	}
	if s.VisibilityTimeout > 0 {
		out.VisibilityTimeoutNs = proto.Int64(int64(s.VisibilityTimeout))
	}
	if s.MaxDeliveries > 0 {
		out.MaxDeliveries = proto.Uint32(s.MaxDeliveries)
	}
	if s.DeadLetterQueue != "" {
		if err := validateQueueName(op+" DeadLetterQueue", s.DeadLetterQueue); err != nil {
			return nil, err
		}
		out.DeadLetterQueue = proto.String(s.DeadLetterQueue)
	}
	if s.DedupWindow > 0 {
		out.DedupWindowNs = proto.Int64(int64(s.DedupWindow))
	}
	switch {
	case s.Retention == NoRetentionLimit:
		out.RetentionNs = proto.Int64(0)
	case s.Retention > 0:
		out.RetentionNs = proto.Int64(int64(s.Retention))
	}
	if s.MaxDepth > 0 {
		out.MaxDepth = proto.Uint64(s.MaxDepth)
	}
	return out, nil
}

// QueueOption configures CreateQueue, EnsureQueue, UpdateQueue and
// DeleteQueue.
type QueueOption func(*queueOptions)

type queueOptions struct{ createDLQ, force bool }

func queueOptionsOf(opts []QueueOption) queueOptions {
	var o queueOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithCreateDLQ makes CreateQueue, EnsureQueue and UpdateQueue create the
// dead-letter queue the settings name, with default settings, in the same
// command, when it does not exist. Without it a dead-letter queue that
// does not exist is refused with ErrQueueNotFound.
func WithCreateDLQ() QueueOption { return func(o *queueOptions) { o.createDLQ = true } }

// WithForce makes DeleteQueue delete a queue that is another queue's
// dead-letter queue; the dead letters of that queue then stay in it as
// dead (QueueStats.Dead). Without it such a delete is refused with
// ErrInvalidArgument naming the queues that use it.
func WithForce() QueueOption { return func(o *queueOptions) { o.force = true } }

// CreateQueue creates a queue. It fails with ErrQueueExists when the queue
// exists, and with ErrQueueNotFound when the settings name a dead-letter
// queue that does not exist (see WithCreateDLQ). It is not retried after
// an unknown outcome (a retry could not tell "I created it" from "it
// existed"): the error then matches ErrOutcomeUnknown; GetQueue tells what
// happened.
func (c *Client) CreateQueue(ctx context.Context, name string, s QueueSettings, opts ...QueueOption) (*QueueInfo, error) {
	if err := validateQueueName("CreateQueue name", name); err != nil {
		return nil, err
	}
	set, err := s.pb("CreateQueue")
	if err != nil {
		return nil, err
	}
	req := &quorumqpb.CreateQueueRequest{Name: name, Settings: set, CreateDeadLetterQueue: queueOptionsOf(opts).createDLQ}
	var resp *quorumqpb.CreateQueueResponse
	err = c.call(ctx, "CreateQueue", notIdempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).CreateQueue(ctx, req)
		return err
	}, nil)
	return queueInfoOf(resp.GetQueue()), err
}

// EnsureQueue creates the queue if it is missing and returns its info. It
// is idempotent, so it is retried through leader changes. Settings apply
// only when it creates the queue.
func (c *Client) EnsureQueue(ctx context.Context, name string, s QueueSettings, opts ...QueueOption) (*QueueInfo, error) {
	if err := validateQueueName("EnsureQueue name", name); err != nil {
		return nil, err
	}
	set, err := s.pb("EnsureQueue")
	if err != nil {
		return nil, err
	}
	req := &quorumqpb.CreateQueueRequest{Name: name, Settings: set, IfNotExists: true, CreateDeadLetterQueue: queueOptionsOf(opts).createDLQ}
	var resp *quorumqpb.CreateQueueResponse
	err = c.call(ctx, "EnsureQueue", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).CreateQueue(ctx, req)
		return err
	}, nil)
	return queueInfoOf(resp.GetQueue()), err
}

// UpdateQueue changes the non-zero settings of s. Setting the same values
// twice is harmless, so it is retried like the message calls. A new
// dead-letter queue must exist, or WithCreateDLQ creates it.
func (c *Client) UpdateQueue(ctx context.Context, name string, s QueueSettings, opts ...QueueOption) (*QueueInfo, error) {
	if err := validateQueueName("UpdateQueue name", name); err != nil {
		return nil, err
	}
	set, err := s.pb("UpdateQueue")
	if err != nil {
		return nil, err
	}
	req := &quorumqpb.UpdateQueueRequest{Name: name, Settings: set, CreateDeadLetterQueue: queueOptionsOf(opts).createDLQ}
	var resp *quorumqpb.UpdateQueueResponse
	err = c.call(ctx, "UpdateQueue", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).UpdateQueue(ctx, req)
		return err
	}, nil)
	return queueInfoOf(resp.GetQueue()), err
}

// GetQueue returns a queue's settings and stats, read on the leader.
func (c *Client) GetQueue(ctx context.Context, name string) (*QueueInfo, error) {
	if err := validateQueueName("GetQueue name", name); err != nil {
		return nil, err
	}
	var resp *quorumqpb.GetQueueResponse
	err := c.call(ctx, "GetQueue", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).GetQueue(ctx, &quorumqpb.GetQueueRequest{Name: name})
		return err
	}, nil)
	return queueInfoOf(resp.GetQueue()), err
}

// ListQueues returns every queue with its settings and stats.
func (c *Client) ListQueues(ctx context.Context) ([]*QueueInfo, error) {
	var resp *quorumqpb.ListQueuesResponse
	err := c.call(ctx, "ListQueues", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).ListQueues(ctx, &quorumqpb.ListQueuesRequest{})
		return err
	}, nil)
	if err != nil {
		return nil, err
	}
	out := make([]*QueueInfo, len(resp.GetQueues()))
	for i, q := range resp.GetQueues() {
		out[i] = queueInfoOf(q)
	}
	return out, nil
}

// DeleteQueue deletes a queue and its messages. A queue that is another
// queue's dead-letter queue is deleted only WithForce. Not retried after an
// unknown outcome (ErrOutcomeUnknown).
func (c *Client) DeleteQueue(ctx context.Context, name string, opts ...QueueOption) error {
	if err := validateQueueName("DeleteQueue name", name); err != nil {
		return err
	}
	req := &quorumqpb.DeleteQueueRequest{Name: name, Force: queueOptionsOf(opts).force}
	return c.call(ctx, "DeleteQueue", notIdempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := quorumqpb.NewQueueClient(cc).DeleteQueue(ctx, req)
		return err
	}, nil)
}

// Purge removes every message of a queue and returns how many. Not retried
// after an unknown outcome (ErrOutcomeUnknown): a second purge would remove
// messages sent after the first.
func (c *Client) Purge(ctx context.Context, name string) (uint64, error) {
	if err := validateQueueName("Purge name", name); err != nil {
		return 0, err
	}
	var resp *quorumqpb.PurgeResponse
	err := c.call(ctx, "Purge", notIdempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewQueueClient(cc).Purge(ctx, &quorumqpb.PurgeRequest{Queue: name})
		return err
	}, nil)
	return resp.GetPurged(), err
}

// Status reports every server's role, term and Raft indices, as collected
// by the node asked (the leader when known).
func (c *Client) Status(ctx context.Context) (*quorumqpb.StatusResponse, error) {
	var resp *quorumqpb.StatusResponse
	err := c.call(ctx, "Status", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewClusterClient(cc).Status(ctx, &quorumqpb.StatusRequest{})
		return err
	}, nil)
	return resp, err
}

// Members returns the cluster's members as the node asked sees them, and
// updates the client's address list with them.
func (c *Client) Members(ctx context.Context) ([]*quorumqpb.Member, error) {
	var resp *quorumqpb.MembersResponse
	err := c.call(ctx, "Members", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewClusterClient(cc).Members(ctx, &quorumqpb.MembersRequest{})
		return err
	}, nil)
	if err != nil {
		return nil, err
	}
	c.setMembers(resp.GetMembers())
	return resp.GetMembers(), nil
}

// Leader asks the cluster for its leader and returns the leader's ID and API
// address (empty when there is none right now).
func (c *Client) Leader(ctx context.Context) (id, apiAddr string, err error) {
	var resp *quorumqpb.LeaderResponse
	err = c.call(ctx, "Leader", idempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewClusterClient(cc).Leader(ctx, &quorumqpb.LeaderRequest{})
		return err
	}, nil)
	if err != nil {
		return "", "", err
	}
	if resp.GetLeaderApiAddr() != "" {
		c.setLeader(resp.GetLeaderApiAddr())
	}
	return resp.GetLeaderId(), resp.GetLeaderApiAddr(), nil
}

// TransferLeadership asks the leader to hand leadership to server id (""
// lets Raft pick) and returns the new leader's ID. Not retried after an
// unknown outcome.
func (c *Client) TransferLeadership(ctx context.Context, id string) (string, error) {
	var resp *quorumqpb.TransferLeadershipResponse
	err := c.call(ctx, "TransferLeadership", notIdempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		var err error
		resp, err = quorumqpb.NewClusterClient(cc).TransferLeadership(ctx, &quorumqpb.TransferLeadershipRequest{Id: id})
		return err
	}, nil)
	if err == nil {
		c.forgetLeader(c.currentLeader())
	}
	return resp.GetNewLeaderId(), err
}

func (c *Client) currentLeader() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leader
}

// RemoveServer asks the leader to remove server id from the Raft
// configuration: the explicit admin step that replaces a dead server. Not
// retried after an unknown outcome: a second attempt after a removal that
// did happen would answer NotFound.
func (c *Client) RemoveServer(ctx context.Context, id string) error {
	return c.call(ctx, "RemoveServer", notIdempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := quorumqpb.NewClusterClient(cc).RemoveServer(ctx, &quorumqpb.RemoveServerRequest{Id: id})
		return err
	}, nil)
}

package cluster

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// Log features: command fields a server of an older release would not
// know. Protobuf lets such a server decode the entry, silently without the
// field, so it would apply the command differently from the others and
// the replicas would drift apart. A leader therefore writes a field like
// that only once every voter gossips that it knows it; until then it does
// what the field asks for another way.
const (
	// featureEnqueueAfter: Enqueue.after_dedup_id, the chain that keeps
	// a Producer's pipelined batches in order.
	featureEnqueueAfter = "enqueue-after"
	// featureDeadLetterOrigin: Nack.reason and Receive.dead_letter_origin,
	// a message's last nack reason and a dead letter's origin.
	featureDeadLetterOrigin = "dead-letter-origin"
	// featureReject: the Reject command.
	featureReject = "reject"
	// featureDLQRules: Command.rules 1 (fsm.Rules), the dead-letter queue
	// rules, with CreateQueue/UpdateQueue.create_dead_letter_queue and
	// DeleteQueue.force.
	featureDLQRules = "dlq-rules"
	// featureRedrive: the Redrive command.
	featureRedrive = "redrive"
	// featureMessageFate: Command.rules 2 (fsm.Rules), each message's
	// last-changed index and each tombstone's fate, for Lookup.
	featureMessageFate = "message-fate"
	// featureConsumerName: Receive.consumer, kept on the leases it takes.
	featureConsumerName = "consumer-name"
	// featureMessageGroups: Message.group, the delivery order of message
	// groups.
	featureMessageGroups = "message-groups"
)

// supportedFeatures are the log features this build applies.
var supportedFeatures = []string{featureEnqueueAfter, featureLogCheckpoint, featureDeadLetterOrigin, featureReject, featureDLQRules, featureRedrive, featureMessageFate, featureConsumerName, featureMessageGroups}

// gateRules stamps cmd with the state-machine rules every voter applies:
// fsm.Rules once every voter knows them, 1 while some voter knows the
// dead-letter queue rules but not message fates (records then keep no
// index and tombstones no fate, on every replica alike), else 0, the
// rules of an earlier release (a queue may then name a dead-letter queue
// that does not exist, a DLQ in use may be deleted, and a dead letter
// with nowhere to go is dropped and counted, on every replica alike).
// Creating a dead-letter queue with its user cannot be done another way,
// so it is refused with FailedPrecondition until then.
func (n *Node) gateRules(cmd *fsmpb.Command) error {
	if n.clusterHas(featureDLQRules) {
		cmd.Rules = 1
		if n.clusterHas(featureMessageFate) {
			cmd.Rules = fsm.Rules
		}
		return nil
	}
	cmd.Rules = 0
	if cmd.GetCreateQueue().GetCreateDeadLetterQueue() || cmd.GetUpdateQueue().GetCreateDeadLetterQueue() {
		return status.Error(codes.FailedPrecondition, "create_dead_letter_queue: a voter does not know it yet (a server of an earlier release); create the dead-letter queue first, or retry once every server is upgraded")
	}
	return nil
}

// gateDeadLetterOrigin sets a receive's dead_letter_origin when every
// voter knows it, and clears a nack's reason when some voter does not: a
// server of an earlier release records neither, and the replicas must
// keep the same state. The nack itself still goes through; its reason is
// advice for whoever looks at the message, and a consumer's nacks must
// not fail during a rolling upgrade.
//
// A reject or a redrive cannot be written another way, so while some
// voter does not know it, it is refused with FailedPrecondition before
// anything is proposed.
func (n *Node) gateDeadLetterOrigin(cmd *fsmpb.Command) error {
	switch op := cmd.GetOp().(type) {
	case *fsmpb.Command_Reject:
		if !n.clusterHas(featureReject) {
			return status.Error(codes.FailedPrecondition, "reject: a voter does not know reject yet (a server of an earlier release); nack the messages, or retry once every server is upgraded")
		}
	case *fsmpb.Command_Redrive:
		if !n.clusterHas(featureRedrive) {
			return status.Error(codes.FailedPrecondition, "redrive: a voter does not know redrive yet (a server of an earlier release); retry once every server is upgraded")
		}
	case *fsmpb.Command_Enqueue:
		return n.gateGroups("enqueue", op.Enqueue)
	case *fsmpb.Command_Transaction:
		for i, e := range op.Transaction.GetEnqueues() {
			if err := n.gateGroups(fmt.Sprintf("transaction.enqueues[%d]", i), e); err != nil {
				return err
			}
		}
	case *fsmpb.Command_Receive:
		op.Receive.DeadLetterOrigin = n.clusterHas(featureDeadLetterOrigin)
		// A consumer name, like a nack reason, is advice: dropped, not
		// refused, while some voter would not keep it.
		if op.Receive.GetConsumer() != "" && !n.clusterHas(featureConsumerName) {
			op.Receive.Consumer = ""
		}
	case *fsmpb.Command_Nack:
		if op.Nack.GetReason() != "" && !n.clusterHas(featureDeadLetterOrigin) {
			op.Nack.Reason = ""
		}
	}
	return nil
}

// gateGroups refuses an enqueue that gives a message a group while some
// voter does not know groups: such a server would deliver the group's
// messages in parallel, and the replicas would drift apart. Dropping the
// group would break the order the producer asked for, so it is refused.
func (n *Node) gateGroups(field string, e *fsmpb.Enqueue) error {
	for i, m := range e.GetMessages() {
		if m.GetGroup() != "" && !n.clusterHas(featureMessageGroups) {
			return status.Errorf(codes.FailedPrecondition, "%s.messages[%d].group: a voter does not know message groups yet (a server of an earlier release); retry once every server is upgraded", field, i)
		}
	}
	return nil
}

// missingFeatures returns the features of this build that have is without.
// The leader adds no server that lacks one: a new server replays the log,
// which may use them.
func missingFeatures(have []string) []string {
	var missing []string
	for _, f := range supportedFeatures {
		if !slices.Contains(have, f) {
			missing = append(missing, f)
		}
	}
	return missing
}

// featureRecheck is how long the leader trusts its last look at the
// voters' features: a server that joins or is replaced with an older
// release is noticed within this time. Downgrading a server below a
// feature the log already uses is not supported (docs/operations.md).
const featureRecheck = time.Second

// featureGate caches whether every voter knows a feature.
type featureGate struct {
	mu      sync.Mutex
	open    map[string]bool
	checked map[string]time.Time
}

// clusterHas tells whether every voter of the latest Raft configuration
// gossips feature (this node by its own metadata). A voter not heard of
// in gossip counts as not knowing it.
func (n *Node) clusterHas(feature string) bool {
	g := &n.features
	g.mu.Lock()
	defer g.mu.Unlock()
	if time.Since(g.checked[feature]) < featureRecheck {
		return g.open[feature]
	}
	open := true
	for _, s := range n.raft.GetConfiguration().Configuration().Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		var feats []string
		if string(s.ID) == n.cfg.NodeID {
			feats = n.delegate.features()
		} else if m, ok := n.members.get(string(s.ID)); ok {
			feats = m.meta.Features
		}
		if !slices.Contains(feats, feature) {
			open = false
			break
		}
	}
	if g.open == nil {
		g.open, g.checked = map[string]bool{}, map[string]time.Time{}
	}
	if open != g.open[feature] {
		n.log.Info("log feature", "feature", feature, "every voter knows it", open)
	}
	g.open[feature], g.checked[feature] = open, time.Now()
	return open
}

// chainWait bounds how long the leader holds a chained batch, while some
// voter does not know after_dedup_id, for its predecessor to be applied.
// A predecessor in flight on the same stream is applied within a round; one
// that was refused or lost never comes, and the batch is refused as the
// FSM would refuse it.
const chainWait = 2 * time.Second

// unchain makes cmd safe for voters that do not know after_dedup_id: for
// every enqueue of cmd chained behind a dedup ID, it waits until a message
// with that ID is applied (or is earlier in cmd itself), then clears the
// field, so the entry goes into the log after its predecessor and every
// replica applies it alike. A predecessor that does not appear within
// chainWait gives the OUT_OF_ORDER result the FSM gives, and nothing is
// submitted. It returns nil when cmd may be submitted.
func (n *Node) unchain(ctx context.Context, cmd *fsmpb.Command) (*fsmpb.Result, error) {
	enqs := []*fsmpb.Enqueue{cmd.GetEnqueue()}
	if tx := cmd.GetTransaction(); tx != nil {
		enqs = tx.GetEnqueues()
	}
	chained := false
	for _, e := range enqs {
		chained = chained || e.GetAfterDedupId() != ""
	}
	if !chained || n.clusterHas(featureEnqueueAfter) {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, chainWait)
	defer cancel()
	earlier := map[string]bool{}
	for i, e := range enqs {
		if after := e.GetAfterDedupId(); after != "" && !earlier[after] {
			if err := n.waitDedupID(ctx, e.GetQueue(), after); err != nil {
				if ctx.Err() == context.DeadlineExceeded {
					field := "enqueue"
					if cmd.GetTransaction() != nil {
						field = fmt.Sprintf("transaction.enqueues[%d]", i)
					}
					return fsm.OutOfOrderResult(field, after, e.GetQueue()), nil
				}
				if ctx.Err() != nil {
					err = status.FromContextError(ctx.Err()).Err()
				}
				return nil, err
			}
		}
		for _, m := range e.GetMessages() {
			earlier[m.GetDedupId()] = true
		}
	}
	for _, e := range enqs {
		e.AfterDedupId = ""
	}
	return nil, nil
}

// waitDedupID waits until queue's applied state holds dedupID.
func (n *Node) waitDedupID(ctx context.Context, queue, dedupID string) error {
	for {
		present, changed := n.fsm.WatchDedupID(queue, dedupID)
		if present {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.stop:
			return status.Error(codes.Unavailable, "node is shutting down")
		}
	}
}

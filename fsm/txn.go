package fsm

import (
	"fmt"
	"strings"

	"github.com/tidwall/btree"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// txn is one command in progress.
//
// Most commands validate everything first and then cannot fail, so they
// change the committed queues in place (cow false). A transaction can fail
// after it started changing things (its third receipt is stale), so it
// works on private copy-on-write clones of the queues it touches (cow true),
// which FSM.apply swaps in only on success. Snapshot views never see either:
// they hold their own tree copies, and a tree copy makes every later write
// to shared nodes copy them first.
type txn struct {
	committed *btree.BTreeG[*queue]
	now       int64
	rules     uint32 // Command.rules
	index     uint64 // the Raft index of the command
	cow       bool
	work      map[string]*queue // queues to commit; nil marks a deleted queue
	wake      []string          // queues whose watchers Apply notifies
	// ops: the store writes of this command, committed with it; nextBody:
	// the body id the next new body gets (FSM.nextBody once committed).
	ops      *bodyOps
	nextBody uint64
	// read reads a stored value as of the last committed command.
	read func(key []byte) ([]byte, bool, error)
	// seq: the FSM's change count for this command (see queue.changed);
	// births: the FSM's counter, which gives each queue it creates a
	// birth count of its own.
	seq    uint64
	births *uint64
}

// lookup returns the queue for reading (nil if it does not exist).
func (t *txn) lookup(name string) *queue {
	if q, ok := t.work[name]; ok {
		return q
	}
	q, _ := t.committed.Get(&queue{name: name})
	return q
}

// mut returns the queue for changing, or QUEUE_NOT_FOUND naming field.
func (t *txn) mut(field, name string) (*queue, *cmdError) {
	if q, ok := t.work[name]; ok {
		if q == nil {
			return nil, notFound(name)
		}
		return q, nil
	}
	if err := checkQueueName(field, name); err != nil {
		return nil, err
	}
	q, ok := t.committed.Get(&queue{name: name})
	if !ok {
		return nil, fail(fsmpb.ErrorCode_QUEUE_NOT_FOUND, "%s: queue %q does not exist", field, name)
	}
	if t.cow {
		q = q.clone()
	}
	return t.track(q), nil
}

// track makes q one of the queues the command changes, stamped with what
// the command records on the messages it changes (see stamp), its store
// writes going to the command's batch.
func (t *txn) track(q *queue) *queue {
	q.ops = t.ops
	q.seq = t.seq
	if q.born == 0 {
		*t.births++
		q.born = *t.births
	}
	q.stamp = stamp{}
	if t.rules >= 2 {
		q.stamp = stamp{index: t.index, fates: true}
	}
	t.work[q.name] = q
	return q
}

func (t *txn) notify(name string) { t.wake = append(t.wake, name) }

// run dispatches a command. On error nothing it did is committed.
func (t *txn) run(cmd *fsmpb.Command) (*fsmpb.Result, *cmdError) {
	_, t.cow = cmd.GetOp().(*fsmpb.Command_Transaction)
	switch op := cmd.GetOp().(type) {
	case *fsmpb.Command_CreateQueue:
		return t.createQueue(op.CreateQueue)
	case *fsmpb.Command_UpdateQueue:
		return t.updateQueue(op.UpdateQueue)
	case *fsmpb.Command_DeleteQueue:
		return t.deleteQueue(op.DeleteQueue)
	case *fsmpb.Command_Purge:
		return t.purge(op.Purge)
	case *fsmpb.Command_Enqueue:
		res := &fsmpb.Result{}
		return res, t.enqueue("enqueue", op.Enqueue, res)
	case *fsmpb.Command_Receive:
		return t.receive(op.Receive)
	case *fsmpb.Command_Ack:
		return t.settle("ack", op.Ack.GetQueue(), op.Ack.GetReceipts(), ackOp{})
	case *fsmpb.Command_Nack:
		d := op.Nack.GetDelayNs()
		if d < 0 || d > int64(MaxDelay) {
			return nil, invalid("nack.delay_ns is %d, limit is 0 to %v", d, MaxDelay)
		}
		if n := len(op.Nack.GetReason()); n > MaxNackReason {
			return nil, invalid("nack.reason is %d bytes, limit is %d", n, MaxNackReason)
		}
		return t.settle("nack", op.Nack.GetQueue(), op.Nack.GetReceipts(), nackOp{delay: d, reason: op.Nack.GetReason()})
	case *fsmpb.Command_Reject:
		if n := len(op.Reject.GetReason()); n > MaxNackReason {
			return nil, invalid("reject.reason is %d bytes, limit is %d", n, MaxNackReason)
		}
		return t.settle("reject", op.Reject.GetQueue(), op.Reject.GetReceipts(), rejectOp{t: t, reason: op.Reject.GetReason()})
	case *fsmpb.Command_Redrive:
		return t.redrive(op.Redrive)
	case *fsmpb.Command_Extend:
		v := op.Extend.GetVisibilityNs()
		if err := checkOptionalDuration("extend.visibility_ns", v, MinVisibility, MaxVisibility); err != nil {
			return nil, err
		}
		return t.settle("extend", op.Extend.GetQueue(), op.Extend.GetReceipts(), extendOp{visibility: v})
	case *fsmpb.Command_Transaction:
		return t.transaction(op.Transaction)
	case *fsmpb.Command_Tick:
		return t.tick()
	case nil:
		return nil, fail(fsmpb.ErrorCode_MALFORMED, "command has no operation (op is unset or of a newer release)")
	default:
		return nil, fail(fsmpb.ErrorCode_MALFORMED, "command operation %T is not supported", op)
	}
}

func (t *txn) createQueue(c *fsmpb.CreateQueue) (*fsmpb.Result, *cmdError) {
	if err := checkQueueName("create_queue.name", c.GetName()); err != nil {
		return nil, err
	}
	s, err := defaultSettings().merge(c.GetName(), c.GetSettings())
	if err != nil {
		return nil, err
	}
	if q := t.lookup(c.GetName()); q != nil {
		if !c.GetIfNotExists() {
			return nil, fail(fsmpb.ErrorCode_QUEUE_EXISTS, "create_queue.name: queue %q already exists", c.GetName())
		}
		return &fsmpb.Result{Queue: q.info(t.now)}, nil
	}
	if err := t.deadLetterQueue("create_queue", s.deadLetter, c.GetCreateDeadLetterQueue()); err != nil {
		return nil, err
	}
	q := t.track(newQueue(c.GetName(), t.now, s))
	t.notify(q.name)
	return &fsmpb.Result{Queue: q.info(t.now)}, nil
}

func (t *txn) updateQueue(u *fsmpb.UpdateQueue) (*fsmpb.Result, *cmdError) {
	q, err := t.mut("update_queue.name", u.GetName())
	if err != nil {
		return nil, err
	}
	s, err := q.settings.merge(q.name, u.GetSettings())
	if err != nil {
		return nil, err
	}
	if u.GetSettings().DeadLetterQueue != nil && s.deadLetter != q.settings.deadLetter {
		if err := t.deadLetterQueue("update_queue", s.deadLetter, u.GetCreateDeadLetterQueue()); err != nil {
			return nil, err
		}
	}
	q.settings = s
	t.notify(q.name)
	return &fsmpb.Result{Queue: q.info(t.now)}, nil
}

func (t *txn) deleteQueue(d *fsmpb.DeleteQueue) (*fsmpb.Result, *cmdError) {
	q, err := t.mut("delete_queue.name", d.GetName())
	if err != nil {
		return nil, err
	}
	if t.rules >= 1 && !d.GetForce() {
		var users []string
		t.committed.Scan(func(q *queue) bool {
			if q.settings.deadLetter == d.GetName() && q.name != d.GetName() {
				users = append(users, fmt.Sprintf("%q", q.name))
			}
			return true
		})
		if len(users) > 0 {
			return nil, invalid("delete_queue.name: queue %q is the dead-letter queue of %s; change their dead-letter queue first, or force the delete (their dead letters then stay in them as dead)",
				d.GetName(), strings.Join(users, ", "))
		}
	}
	// Bodies are keyed by body id, not by queue, so a deleted queue's are
	// deleted one by one: every live or dead record's, and those that its
	// auto-ack replay entries keep.
	q.msgs.Scan(func(m *message) bool {
		q.dropBody(m)
		return true
	})
	q.replayAt.Scan(func(e *replayEntry) bool {
		for _, m := range e.autoAcked {
			q.dropBody(m)
		}
		return true
	})
	t.work[d.GetName()] = nil
	t.notify(d.GetName())
	return &fsmpb.Result{}, nil
}

// deadLetterQueue checks, under rules 1, that dead-letter queue name
// (field names the command) exists, or creates it with default settings
// when create is set. It is the last check of its command, so a queue it
// creates is never left behind by a refusal.
func (t *txn) deadLetterQueue(field, name string, create bool) *cmdError {
	if t.rules < 1 || name == "" || t.lookup(name) != nil {
		return nil
	}
	if !create {
		return missingDeadLetterQueue(field, name)
	}
	t.track(newQueue(name, t.now, defaultSettings()))
	t.notify(name)
	return nil
}

func missingDeadLetterQueue(field, name string) *cmdError {
	return fail(fsmpb.ErrorCode_QUEUE_NOT_FOUND, "%s.settings.dead_letter_queue: queue %q does not exist; create it first, or ask for it to be created with the queue (create_dead_letter_queue)", field, name)
}

func (t *txn) purge(p *fsmpb.Purge) (*fsmpb.Result, *cmdError) {
	q, err := t.mut("purge.queue", p.GetQueue())
	if err != nil {
		return nil, err
	}
	var live []*message
	q.ready.scan(func(id uint64) bool {
		m, _ := q.msgs.Get(&message{id: id})
		live = append(live, m)
		return true
	})
	q.timed.Scan(func(m *message) bool {
		live = append(live, m)
		return true
	})
	if q.dead > 0 || q.waiting > 0 {
		q.msgs.Scan(func(m *message) bool {
			if m.is(flagDead | flagWaiting) {
				live = append(live, m)
			}
			return true
		})
	}
	for _, m := range live {
		q.remove(m, m.attempt, t.now, 0, purgedExt)
	}
	q.counters.purged += uint64(len(live))
	t.notify(q.name)
	return &fsmpb.Result{Count: uint64(len(live))}, nil
}

// transaction acks receipts and enqueues messages, all or nothing: the
// first receipt that is not ACK_OK fails the whole command with LEASE_LOST.
func (t *txn) transaction(x *fsmpb.Transaction) (*fsmpb.Result, *cmdError) {
	n := len(x.GetAcks()) + len(x.GetEnqueues())
	if n < 1 || n > MaxTransactionOp {
		return nil, invalid("transaction has %d acks plus enqueues, limit is 1 to %d", n, MaxTransactionOp)
	}
	res := &fsmpb.Result{}
	for i, a := range x.GetAcks() {
		field := fieldf("transaction.acks[%d]", i)
		r, err := t.settle(field, a.GetQueue(), a.GetReceipts(), ackOp{})
		if err != nil {
			return nil, err
		}
		for j, o := range r.Outcomes {
			if o != fsmpb.AckOutcome_ACK_OK {
				rc := a.GetReceipts()[j]
				return nil, fail(fsmpb.ErrorCode_LEASE_LOST, "%s.receipts[%d] (message %d attempt %d) in queue %q: %s; the transaction changed nothing",
					field, j, rc.GetMessageId(), rc.GetAttempt(), a.GetQueue(), o)
			}
		}
		res.Outcomes = append(res.Outcomes, r.Outcomes...)
	}
	for i, e := range x.GetEnqueues() {
		if err := t.enqueue(fieldf("transaction.enqueues[%d]", i), e, res); err != nil {
			return nil, err
		}
	}
	return res, nil
}

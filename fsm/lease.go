package fsm

import (
	"fmt"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/fsm/limits"
)

// fence decides a receipt's outcome without changing anything. It returns
// the record (live or tombstone) when there is one.
//
//   - id never issued, or its tombstone already purged: ACK_UNKNOWN_MESSAGE.
//   - tombstone of an ack or a reject by the same attempt: ACK_OK (an
//     idempotent retry, if the op is the same: settleOp.deletedOK).
//   - any other tombstone (acked by another attempt, expired, purged, dead-
//     lettered): ACK_LEASE_LOST.
//   - live with a different attempt (delivered again since): ACK_LEASE_LOST.
//   - live with the same attempt: ACK_OK, whether the lease still runs or
//     expired without a redelivery since.
func (q *queue) fence(r *fsmpb.Receipt) (*message, fsmpb.AckOutcome) {
	id := r.GetMessageId()
	if id == 0 || id >= q.nextID {
		return nil, fsmpb.AckOutcome_ACK_UNKNOWN_MESSAGE
	}
	m, ok := q.msgs.GetHint(&message{id: id}, &q.msgsHint)
	if !ok {
		return nil, fsmpb.AckOutcome_ACK_UNKNOWN_MESSAGE
	}
	if m.attempt != r.GetAttempt() || m.is(flagDeleted|flagDead) && !m.is(flagAcked|flagRejected) {
		return m, fsmpb.AckOutcome_ACK_LEASE_LOST
	}
	return m, fsmpb.AckOutcome_ACK_OK
}

// settleOp is what Ack, Nack and Extend do to a live message whose receipt
// passed the fence.
type settleOp interface {
	// apply changes live record m and reports whether watchers should wake.
	apply(q *queue, m *message, now int64) bool
	// deletedOK says whether fenced-OK tombstone m is a success.
	deletedOK(m *message) bool
}

type ackOp struct{}

func (ackOp) apply(q *queue, m *message, now int64) bool {
	q.remove(m, m.attempt, now, flagAcked, nil)
	q.counters.acked++
	return false
}
func (ackOp) deletedOK(m *message) bool { return m.is(flagAcked) }

// nackOp releases a message; a reason, when given, replaces the one an
// earlier nack left.
type nackOp struct {
	delay  int64
	reason string
}

func (o nackOp) apply(q *queue, m *message, now int64) bool {
	flags := m.flags &^ (flagLeased | flagReady)
	if o.delay == 0 {
		flags |= flagReady
	}
	n := m.with(addDur(now, o.delay), m.attempt, flags)
	if o.reason != "" {
		n.ext = m.withNackReason(o.reason)
	}
	q.replace(m, n)
	return true
}
func (nackOp) deletedOK(*message) bool { return false }

type extendOp struct{ visibility int64 }

func (o extendOp) apply(q *queue, m *message, now int64) bool {
	v := o.visibility
	if v == 0 {
		v = q.settings.visibility
	}
	q.replace(m, m.with(addDur(now, v), m.attempt, m.flags&^flagReady|flagLeased))
	return false
}
func (extendOp) deletedOK(*message) bool { return false }

// rejectOp dead-letters a message now, as max_deliveries would, with
// reason DEAD_LETTER_REJECTED and the consumer's reason.
type rejectOp struct {
	t      *txn
	reason string
}

func (o rejectOp) apply(q *queue, m *message, _ int64) bool {
	o.t.deadLetter(q, m, deadLetterCause{reason: fsmpb.DeadLetterReason_DEAD_LETTER_REJECTED, origin: true, rejectReason: o.reason})
	return false
}
func (rejectOp) deletedOK(m *message) bool { return m.is(flagRejected) }

// settle applies op to each receipt: one outcome each, in order; a stale
// receipt does not fail the others.
func (t *txn) settle(field, queueName string, receipts []*fsmpb.Receipt, op settleOp) (*fsmpb.Result, *cmdError) {
	if err := checkReceipts(field+".receipts", receipts); err != nil {
		return nil, err
	}
	q, err := t.mut(field+".queue", queueName)
	if err != nil {
		return nil, err
	}
	res := &fsmpb.Result{Outcomes: q.settleAll(receipts, op, t.now)}
	if _, ok := op.(nackOp); ok {
		t.notify(q.name)
	}
	return res, nil
}

func (q *queue) settleAll(receipts []*fsmpb.Receipt, op settleOp, now int64) []fsmpb.AckOutcome {
	out := make([]fsmpb.AckOutcome, len(receipts))
	for i, r := range receipts {
		m, o := q.fence(r)
		if o == fsmpb.AckOutcome_ACK_OK {
			if m.is(flagDeleted | flagDead) {
				if !op.deletedOK(m) {
					o = fsmpb.AckOutcome_ACK_LEASE_LOST
				}
			} else {
				op.apply(q, m, now)
			}
		}
		out[i] = o
	}
	return out
}

// receive leases up to max available messages, lowest id first.
func (t *txn) receive(r *fsmpb.Receive) (*fsmpb.Result, *cmdError) {
	if r.GetMax() < 1 || r.GetMax() > MaxBatch {
		return nil, invalid("receive.max is %d, limit is 1 to %d", r.GetMax(), MaxBatch)
	}
	if err := checkOptionalDuration("receive.visibility_ns", r.GetVisibilityNs(), MinVisibility, MaxVisibility); err != nil {
		return nil, err
	}
	if len(r.GetRequestId()) > MaxRequestID {
		return nil, invalid("receive.request_id is %d bytes, limit is %d", len(r.GetRequestId()), MaxRequestID)
	}
	if p := limits.ConsumerProblem(r.GetConsumer()); p != "" {
		return nil, invalid("receive.%s", p)
	}
	if len(r.GetAck()) > 0 {
		if err := checkReceipts("receive.ack", r.GetAck()); err != nil {
			return nil, err
		}
	}
	q, err := t.mut("receive.queue", r.GetQueue())
	if err != nil {
		return nil, err
	}
	now := t.now
	if r.GetRequestId() != "" {
		if e, ok := q.replay.Get(&replayEntry{requestID: r.GetRequestId()}); ok && e.at+q.settings.dedupWindow > now {
			return q.replayed(e, now), nil
		}
	}
	res := &fsmpb.Result{}
	if len(r.GetAck()) > 0 {
		res.Outcomes = q.settleAll(r.GetAck(), ackOp{}, now)
	}
	q.promote(now)
	q.promoteHeads(now) // of groups whose head an ack above removed
	vis := r.GetVisibilityNs()
	if vis == 0 {
		vis = q.settings.visibility
	}
	var (
		delivered []replayReceipt
		autoAcked []*message
		holder    *extra // the consumer's extra, shared by records that have none
	)
	for uint32(len(delivered)) < r.GetMax() {
		id, ok := q.ready.min()
		if !ok {
			break
		}
		m, _ := q.msgs.GetHint(&message{id: id}, &q.msgsHint)
		if q.settings.retention > 0 && m.enqueuedAt+q.settings.retention <= now {
			q.remove(m, m.attempt, now, 0, expiredExt)
			q.counters.expired++
			q.promoteHeads(now)
			continue
		}
		if md := q.settings.maxDeliveries; md > 0 && m.attempt >= md {
			t.deadLetter(q, m, deadLetterCause{reason: fsmpb.DeadLetterReason_DEAD_LETTER_MAX_DELIVERIES, origin: r.GetDeadLetterOrigin()})
			q.promoteHeads(now)
			continue
		}
		d := m.with(addDur(now, vis), m.attempt+1, m.flags&^flagReady|flagLeased)
		switch {
		case r.GetAutoAck() && r.GetRequestId() != "":
			// The replay entry keeps the body in the store for the
			// window; the answer reads it like a lease's.
			q.tombstone(m, d.attempt, now, flagAcked, nil)
			autoAcked = append(autoAcked, d)
			deliver(res, q.name, d)
		case r.GetAutoAck():
			// Deleted by this command, so read now: no later reader
			// would find it.
			deliverRead(res, q.name, d, t.read)
			q.remove(m, d.attempt, now, flagAcked, nil)
		default:
			d.ext = m.withConsumer(r.GetConsumer(), &holder)
			q.replace(m, d)
			deliver(res, q.name, d)
		}
		if r.GetAutoAck() {
			q.counters.acked++
		}
		q.counters.delivered++
		if d.attempt > 1 {
			q.counters.redelivered++
		}
		delivered = append(delivered, replayReceipt{id: d.id, attempt: d.attempt})
	}
	// Only a receive that delivered something is remembered. An empty one
	// leased nothing, so a retry may lease afresh; remembering it would
	// make the long poll, which proposes the same request ID again once a
	// message arrives, replay the empty answer instead. Acks piggybacked on
	// an empty receive need no entry either: a retry re-acks them and finds
	// their tombstones.
	if r.GetRequestId() != "" && len(delivered) > 0 {
		if old, ok := q.replay.Get(&replayEntry{requestID: r.GetRequestId()}); ok {
			q.dropReplay(old)
		}
		e := &replayEntry{requestID: r.GetRequestId(), at: now, outcomes: res.Outcomes}
		if autoAcked != nil {
			e.autoAcked = autoAcked
		} else {
			e.receipts = delivered
		}
		q.replay.Set(e)
		q.replayAt.Set(e)
	}
	return res, nil
}

// replayed answers a repeated receive from its replay entry. An auto-ack
// receive gets its deliveries back as they were. A leasing one gets every
// delivery that the attempt which made it still leases, as it is now (the
// body is the live record's, which shares it with the record as
// delivered; a lease extended since shows its new end). A delivery that
// was acked, nacked, expired or delivered again since is left out. Only
// the holder of the receipt could have acked, nacked or extended it, so
// the caller already dealt with it; and a message whose lease ended is
// available to other consumers (or already leased by one), so handing it
// out again under the old receipt would let two consumers work on it
// while the second lease runs.
func (q *queue) replayed(e *replayEntry, now int64) *fsmpb.Result {
	res := &fsmpb.Result{Replayed: true, Outcomes: e.outcomes}
	for _, m := range e.autoAcked {
		deliver(res, q.name, m)
	}
	for _, rr := range e.receipts {
		m, ok := q.msgs.GetHint(&message{id: rr.id}, &q.msgsHint)
		if ok && m.attempt == rr.attempt && m.is(flagLeased) && m.at > now {
			deliver(res, q.name, m)
		}
	}
	return res
}

// deadLetterCause is why a message is dead-lettered; origin says whether
// the dead letter records it (see Receive.dead_letter_origin).
type deadLetterCause struct {
	reason       fsmpb.DeadLetterReason
	origin       bool
	rejectReason string
}

// deadLetter moves m to the dead-letter queue as a new message (new id,
// same body, dedup ID and attributes) that, with c.origin, records where it
// came from and why, or drops it when the queue has none or it does not exist. Dead
// letters bypass the DLQ's max_depth: dropping a message because its DLQ
// is full would defeat the DLQ.
func (t *txn) deadLetter(q *queue, m *message, c deadLetterCause) {
	var how uint8
	if c.reason == fsmpb.DeadLetterReason_DEAD_LETTER_REJECTED {
		how = flagRejected
	}
	if q.settings.deadLetter == "" || t.lookup(q.settings.deadLetter) == nil {
		if t.rules >= 1 {
			q.keepDead(m, how, &extra{dead: origin(q, m, c), group: m.group()}, t.now)
			return
		}
		q.remove(m, m.attempt, t.now, how, nil)
		q.counters.deadLettered++
		return
	}
	dlq, _ := t.mut("dead_letter_queue", q.settings.deadLetter) // it exists: looked up above
	// The dead letter keeps its group: the DLQ delivers a group's dead
	// letters in order too, and a redrive puts them back into it.
	var ext *extra
	if c.origin {
		ext = &extra{dead: origin(q, m, c), group: m.group()}
	} else if m.group() != "" {
		ext = &extra{group: m.group()}
	}
	moved := dlq.add(m.body, m.dedupID, ext, t.now, t.now, flagDeadLetter) // the body moves, under the same key
	q.tombstone(m, m.attempt, t.now, how, movedExt(fsmpb.MessageState_MESSAGE_DEAD_LETTERED, dlq.name, moved.id))
	q.counters.deadLettered++
	t.notify(dlq.name)
}

// origin is where dead letter m of q comes from and why.
func origin(q *queue, m *message, c deadLetterCause) *fsmpb.DeadLetter {
	return &fsmpb.DeadLetter{
		SourceQueue:             q.name,
		SourceMessageId:         m.id,
		Reason:                  c.reason,
		Attempts:                m.attempt,
		FirstEnqueuedAtUnixNano: m.firstEnqueued(),
		LastNackReason:          m.nackReason(),
		RejectReason:            c.rejectReason,
	}
}

// keepDead turns live m into a dead record of q (deleted at now, how
// flagRejected for a reject): a dead letter with no queue to go to. It
// stays, with its body, out of ready and timed, so it is never delivered;
// it counts in the dead gauge, not in dead_lettered_total, since it has
// not left the queue.
func (q *queue) keepDead(m *message, how uint8, ext *extra, now int64) {
	q.unindex(m)
	q.leaveGroup(m)
	if m.is(flagDeadLetter) {
		q.deadLetters--
	}
	d := m.with(now, m.attempt, flagDead|how)
	d.ext = ext
	d.index = q.stamp.index
	q.setMsg(d)
	q.redirectDedup(m, d)
	q.dead++
}

// delivery is m as handed to a consumer of queue, without its body and
// attributes; the receipt names the queue, so that the API can refuse it
// on another one.
func delivery(queue string, m *message) *fsmpb.Delivery {
	return &fsmpb.Delivery{
		Receipt:            &fsmpb.Receipt{MessageId: m.id, Attempt: m.attempt, Queue: queue},
		EnqueuedAtUnixNano: m.enqueuedAt,
		DedupId:            m.dedupID,
		LeaseUntilUnixNano: m.at,
		DeadLetter:         deadLetterOf(m),
		LastNackReason:     m.nackReason(),
		Group:              m.group(),
	}
}

// deliver adds m to res with the reference FillBodies reads its body and
// attributes by: Apply reads no body for a delivery that outlives the
// command, so a follower, which answers no one, reads none.
func deliver(res *fsmpb.Result, queue string, m *message) {
	res.Deliveries = append(res.Deliveries, delivery(queue, m))
	res.BodyRefs = append(res.BodyRefs, m.body.id)
}

// deliverRead adds m to res with its body and attributes read now, for a
// delivery whose body this command deletes (auto-ack without a request
// ID). A store that cannot give the body of a live record is a
// storeFailure.
func deliverRead(res *fsmpb.Result, queue string, m *message, read func([]byte) ([]byte, bool, error)) {
	d := delivery(queue, m)
	body, attrs, ok, err := readValue(read, m.body)
	if err == nil && !ok {
		err = fmt.Errorf("body %d of message %d of queue %q is missing", m.body.id, m.id, queue)
	}
	if err != nil {
		panic(storeFailure{err})
	}
	d.Body, d.Attributes = append([]byte(nil), body...), attrs
	res.Deliveries = append(res.Deliveries, d)
	res.BodyRefs = append(res.BodyRefs, 0)
}

// deadLetterOf is the origin of m when it arrived as a dead letter: an
// empty one when it came in a release that did not record it.
func deadLetterOf(m *message) *fsmpb.DeadLetter {
	if !m.is(flagDeadLetter) {
		return nil
	}
	if d := m.dead(); d != nil {
		return d
	}
	return &fsmpb.DeadLetter{}
}

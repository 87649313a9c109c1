package fsm

import (
	"fmt"

	"github.com/tidwall/btree"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

func fieldf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

// enqueue validates and appends e's messages, one EnqueueResult each in
// res. A full queue fails the whole batch (QUEUE_FULL); duplicates inside
// the dedup window are not errors and do not count against max_depth.
func (t *txn) enqueue(field string, e *fsmpb.Enqueue, res *fsmpb.Result) *cmdError {
	if err := checkCount(field+".messages", len(e.GetMessages())); err != nil {
		return err
	}
	for i, m := range e.GetMessages() {
		if m == nil {
			return invalid("%s.messages[%d] is empty", field, i)
		}
		if err := checkMessage(func() string { return fmt.Sprintf("%s.messages[%d]", field, i) }, m); err != nil {
			return err
		}
	}
	if len(e.GetAfterDedupId()) > MaxDedupID {
		return invalid("%s.after_dedup_id is %d bytes, limit is %d", field, len(e.GetAfterDedupId()), MaxDedupID)
	}
	q, err := t.mut(field+".queue", e.GetQueue())
	if err != nil && err.code == fsmpb.ErrorCode_QUEUE_NOT_FOUND && e.GetCreateQueue() && t.lookup(e.GetQueue()) == nil {
		q, err = t.track(newQueue(e.GetQueue(), t.now, defaultSettings())), nil
	}
	if err != nil {
		return err
	}
	if after := e.GetAfterDedupId(); after != "" {
		// A pipelined batch goes only behind its predecessor: if that was
		// refused or lost, nothing of this one may go before it.
		if _, ok := q.dedupLookup(after, t.now, &q.dedupHint); !ok {
			return outOfOrder(field, after, q.name)
		}
	}
	if err := q.checkDepth(field, e.GetMessages(), t.now); err != nil {
		return err
	}
	for _, m := range e.GetMessages() {
		if id, dup := q.dedupLookup(m.GetDedupId(), t.now, &q.dedupHint); dup {
			q.counters.dedupHits++
			res.Enqueued = append(res.Enqueued, &fsmpb.EnqueueResult{MessageId: id, Duplicate: true})
			continue
		}
		rec := q.add(t.storeBody(m), m.GetDedupId(), q.groupExt(m.GetGroup()), addDur(t.now, m.GetDelayNs()), t.now, 0)
		if rec.dedupID != "" {
			q.setDedup(rec)
		}
		res.Enqueued = append(res.Enqueued, &fsmpb.EnqueueResult{MessageId: rec.id})
	}
	t.notify(q.name)
	return nil
}

// checkDepth fails with QUEUE_FULL, before anything changes, when the
// batch's new (not duplicate) messages do not fit under max_depth.
func (q *queue) checkDepth(field string, msgs []*fsmpb.Message, now int64) *cmdError {
	if q.settings.maxDepth == 0 {
		return nil
	}
	seen := make(map[string]bool)
	depth := q.live()
	for i, m := range msgs {
		key := m.GetDedupId()
		if _, dup := q.dedupLookup(key, now, &q.dedupHint); dup || seen[key] {
			continue
		}
		if key != "" {
			seen[key] = true
		}
		if depth >= q.settings.maxDepth {
			return fail(fsmpb.ErrorCode_QUEUE_FULL, "%s.messages[%d]: queue %q holds %d messages, max_depth is %d; the batch was not enqueued",
				field, i, q.name, q.live(), q.settings.maxDepth)
		}
		depth++
	}
	return nil
}

// storeBody writes m's body and attributes with the command in progress
// under a new body id and returns the record's reference to them.
func (t *txn) storeBody(m *fsmpb.Message) bodyRef {
	v := encodeValue(m.GetBody(), m.GetAttributes())
	if v == nil {
		return bodyRef{}
	}
	ref := bodyRef{id: t.nextBody, size: uint32(len(m.GetBody())), crc: crc32c(v)}
	t.nextBody++
	t.ops.sets = append(t.ops.sets, bodyWrite{id: ref.id, value: v})
	return ref
}

// add appends a new live message and returns its record: ready, delayed
// until deliverAt, or waiting behind an earlier message of its group
// (ext.group).
func (q *queue) add(body bodyRef, dedupID string, ext *extra, deliverAt, now int64, flags uint8) *message {
	m := &message{id: q.nextID, enqueuedAt: now, at: deliverAt, body: body, dedupID: dedupID, ext: ext, index: q.stamp.index}
	switch {
	case m.group() != "" && q.joinGroup(m.group(), m.id):
		flags |= flagWaiting
	case deliverAt <= now:
		flags |= flagReady
	}
	m.flags = flags
	q.nextID++
	q.put(m)
	q.counters.enqueued++
	if m.is(flagDeadLetter) {
		q.deadLetters++
	}
	return m
}

func outOfOrder(field, after, queue string) *cmdError {
	return fail(fsmpb.ErrorCode_OUT_OF_ORDER, "%s.after_dedup_id: no message with dedup ID %q in queue %q's dedup window; the batch was not enqueued",
		field, after, queue)
}

// OutOfOrderResult is the result Apply gives an enqueue (field names it:
// "enqueue", "transaction.enqueues[i]") chained behind a dedup ID that is
// not in queue: for a leader that refuses such a batch itself.
func OutOfOrderResult(field, after, queue string) *fsmpb.Result {
	return errorResult(outOfOrder(field, after, queue))
}

// dedupLookup returns the message ID first enqueued with key, if that was
// within the queue's dedup window (measured from the first enqueue with the
// queue's current window). Expiry is exact even before Tick purges.
// hint is q.dedupHint when applying, nil when reading (readers share q).
func (q *queue) dedupLookup(key string, now int64, hint *btree.PathHint) (uint64, bool) {
	if key == "" {
		return 0, false
	}
	m, ok := q.dedup.GetHint(&message{dedupID: key}, hint)
	if !ok || m.enqueuedAt+q.settings.dedupWindow <= now {
		return 0, false
	}
	return m.id, true
}

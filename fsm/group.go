package fsm

// Message groups: strict order per group key, groups independent.
//
// A queue's live messages that carry a group (dead ones excepted) are in
// queue.groups by (group, id): each group a run in id order. Only the
// first of a run, the group's head, is in ready or timed and may be
// delivered; every later one has flagWaiting and is in neither. So a
// message is delivered only when no earlier message of its group is
// leased, delayed or waiting for redelivery, and a receive, which takes
// ready ids, never takes two of one group. A nack, an extend or a lease
// that ends changes the head in place: it stays the head. When the head
// leaves (ack, reject, dead letter, expiry, purge, redrive), the group's
// next message becomes its head at the end of the command, or at once
// within a receive (promoteHeads), ready or delayed as its own delivery
// time says.

// groupEntry is one message of a group in queue.groups.
type groupEntry struct {
	key string
	id  uint64
}

func byGroup(a, b groupEntry) bool {
	if a.key != b.key {
		return a.key < b.key
	}
	return a.id < b.id
}

// groupHead returns the first entry of group key.
func (q *queue) groupHead(key string) (groupEntry, bool) {
	var head groupEntry
	found := false
	q.groups.AscendHint(groupEntry{key: key}, func(e groupEntry) bool {
		head, found = e, e.key == key
		return false
	}, &q.groupsHint)
	return head, found
}

// joinGroup adds message id to group key and reports whether it must wait:
// whether the group already has a message. Ids only grow, so it joins at
// the end.
func (q *queue) joinGroup(key string, id uint64) (wait bool) {
	_, wait = q.groupHead(key)
	q.groups.SetHint(groupEntry{key: key, id: id}, &q.groupsHint)
	if !wait {
		q.groupCount++
	}
	return wait
}

// leaveGroup takes live record m, which stops being live (a tombstone, or
// dead), out of its group. A head that leaves lets the next message of
// its group be delivered (promoteHeads).
func (q *queue) leaveGroup(m *message) {
	key := m.group()
	if key == "" {
		return
	}
	q.groups.DeleteHint(groupEntry{key: key, id: m.id}, &q.groupsHint)
	if _, more := q.groupHead(key); !more {
		q.groupCount--
		delete(q.exts, key)
		return
	}
	if !m.is(flagWaiting) {
		q.heads = append(q.heads, key)
	}
}

// promoteHeads gives each group whose head left in this command its next
// message as head: ready when it is due, else delayed until its delivery
// time. It reports whether a message became ready or delayed.
func (q *queue) promoteHeads(now int64) bool {
	changed := false
	for _, key := range q.heads {
		e, ok := q.groupHead(key)
		if !ok {
			continue // the group emptied since
		}
		m, _ := q.msgs.GetHint(&message{id: e.id}, &q.msgsHint)
		if !m.is(flagWaiting) {
			continue // promoted already: the key was listed twice
		}
		flags := m.flags &^ flagWaiting
		if m.at <= now {
			flags |= flagReady
		}
		q.swap(m, m.with(m.at, m.attempt, flags))
		changed = true
	}
	q.heads = nil
	return changed
}

// groupExt returns the extra that the messages of group key that carry
// nothing else share (nil for no group), so that a group's key and extra
// are in memory once, not once per message. An extra is never mutated, so
// sharing it changes nothing a record says. q.exts holds one per group
// with live messages; it is not state (no hash, no snapshot sees it), and
// a transaction's clone shares it with the queue it cloned: what a failed
// transaction added is only memory until its group empties.
func (q *queue) groupExt(key string) *extra {
	if key == "" {
		return nil
	}
	if e, ok := q.exts[key]; ok {
		return e
	}
	if q.exts == nil {
		q.exts = make(map[string]*extra)
	}
	e := &extra{group: key}
	q.exts[key] = e
	return e
}

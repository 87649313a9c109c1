package fsm

import (
	"github.com/tidwall/btree"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// Message flags. A record is exactly one of: ready (in queue.ready), timed
// (in queue.timed: delayed when not leased, leased when flagLeased),
// waiting behind an earlier message of its group (flagWaiting, in
// neither), dead (flagDead, in neither) or a tombstone (flagDeleted, in
// neither).
const (
	flagReady      = 1 << 0
	flagLeased     = 1 << 1
	flagDeadLetter = 1 << 2 // arrived as a dead letter from another queue
	flagDeleted    = 1 << 3 // tombstone
	flagAcked      = 1 << 4 // tombstone of an ack (or auto-ack)
	flagRejected   = 1 << 5 // tombstone (or dead message) of a reject
	flagDead       = 1 << 6 // dead: dead-lettered with no queue to go to, kept here, never delivered
	flagWaiting    = 1 << 7 // held behind an earlier live message of its group (see group.go)
	flagMask       = flagReady | flagLeased | flagDeadLetter | flagDeleted | flagAcked | flagRejected | flagDead | flagWaiting
)

// message is an immutable record: a change replaces the record in every
// index that holds it, so a snapshot that shares tree nodes with the live
// state sees a frozen view. Its body and attributes are in the Store; the
// record holds where (body). 80 bytes on 64-bit platforms.
type message struct {
	id         uint64
	enqueuedAt int64
	// at is the availability time of a ready or delayed message, the lease
	// end of a leased one, and the deletion time of a tombstone.
	at      int64
	body    bodyRef // zero in a tombstone
	dedupID string
	ext     *extra // nil for a message with none of it
	// index is the Raft index of the command that last changed the
	// message (0 under rules < 2, see queue.stamp). A lease that runs out
	// or a delay that ends changes nothing by itself, so promote keeps it.
	index   uint64
	attempt uint32
	flags   uint8
}

// extra is what few messages carry: a nack reason, the origin of a dead
// letter, a consumer name, a tombstone's fate, a group. Keeping it behind
// one pointer keeps the record of every other message at 80 bytes. Like a
// record it is never mutated: a change makes a new one, so records may
// share one (the messages of one group in one enqueue do).
type extra struct {
	// nackReason: the reason of the last nack in this queue that gave one.
	nackReason string
	// dead: the origin of a message that arrived as a dead letter (an
	// empty one for a dead letter of a release that kept none).
	dead *fsmpb.DeadLetter
	// consumer: the consumer name of the receive that leased it last.
	consumer string
	// fate: of a tombstone, what removed it (nil for an ack, which its
	// flags say, and under rules < 2).
	fate *fate
	// firstEnqueued: of a message a redrive put back (under rules >= 2),
	// when its first copy was enqueued, for the dead letter it may become
	// again (origin).
	firstEnqueued int64
	// group: the message group of a live or dead message (a tombstone
	// keeps none).
	group string
}

// fate is what removed a message, and where a moved one went.
type fate struct {
	state fsmpb.MessageState
	queue string
	id    uint64
}

func (f fate) orNil() *fate {
	if f == (fate{}) {
		return nil
	}
	return &f
}

// The fates of removals that moved nothing, shared by their tombstones
// (never mutated, like every extra).
var (
	expiredExt = &extra{fate: &fate{state: fsmpb.MessageState_MESSAGE_EXPIRED}}
	purgedExt  = &extra{fate: &fate{state: fsmpb.MessageState_MESSAGE_PURGED}}
)

// movedExt is the extra of the tombstone of a message moved to queue as id.
func movedExt(state fsmpb.MessageState, queue string, id uint64) *extra {
	return &extra{fate: &fate{state: state, queue: queue, id: id}}
}

type attribute struct{ key, value string }

// orNil returns e, or nil when it carries nothing.
func (e *extra) orNil() *extra {
	if e == nil || e.nackReason == "" && e.dead == nil && e.consumer == "" && e.fate == nil && e.firstEnqueued == 0 && e.group == "" {
		return nil
	}
	return e
}

func (m *message) nackReason() string {
	if m.ext == nil {
		return ""
	}
	return m.ext.nackReason
}

func (m *message) dead() *fsmpb.DeadLetter {
	if m.ext == nil {
		return nil
	}
	return m.ext.dead
}

func (m *message) consumer() string {
	if m.ext == nil {
		return ""
	}
	return m.ext.consumer
}

// firstEnqueued is when m's first copy was enqueued: m's own enqueue
// time, or for a dead letter or a redriven message what it carries.
func (m *message) firstEnqueued() int64 {
	if m.ext != nil {
		if t := m.ext.dead.GetFirstEnqueuedAtUnixNano(); t != 0 {
			return t
		}
		if m.ext.firstEnqueued != 0 {
			return m.ext.firstEnqueued
		}
	}
	return m.enqueuedAt
}

func (m *message) group() string {
	if m.ext == nil {
		return ""
	}
	return m.ext.group
}

func (m *message) fate() *fate {
	if m.ext == nil {
		return nil
	}
	return m.ext.fate
}

// withConsumer returns m's extra with the consumer set to name. Records
// without an extra share *shared, made once per receive.
func (m *message) withConsumer(name string, shared **extra) *extra {
	if m.ext == nil {
		if name == "" {
			return nil
		}
		if *shared == nil {
			*shared = &extra{consumer: name}
		}
		return *shared
	}
	if m.ext.consumer == name {
		return m.ext
	}
	e := *m.ext
	e.consumer = name
	return e.orNil()
}

// withNackReason returns m's extra with the nack reason set.
func (m *message) withNackReason(reason string) *extra {
	var e extra
	if m.ext != nil {
		e = *m.ext
	}
	e.nackReason = reason
	return &e
}

func (m *message) is(flag uint8) bool { return m.flags&flag != 0 }

// with returns a copy of m; records are never mutated in place.
func (m *message) with(at int64, attempt uint32, flags uint8) *message {
	c := *m
	c.at, c.attempt, c.flags = at, attempt, flags
	return &c
}

func byID(a, b *message) bool { return a.id < b.id }

func byAtID(a, b *message) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	return a.id < b.id
}

// replayEntry remembers a receive with a request ID for the dedup window:
// the receipts it handed out and the outcomes of the acks it carried. A
// leasing receive's entry keeps no record: a record holds its body, and an
// entry lives for the whole window, so every body delivered under a
// request ID would outlive its ack by up to that long. A replay reads the
// live records instead (queue.replayed). An auto-ack receive's messages
// are deleted as they are delivered, so its entry keeps the records.
type replayEntry struct {
	requestID string
	at        int64
	receipts  []replayReceipt
	// autoAcked: an auto-ack receive's records as delivered. Their
	// bodies stay in the store until the entry goes (dropReplay).
	autoAcked []*message
	outcomes  []fsmpb.AckOutcome
}

// replayReceipt is one delivery of a replayed receive: the message and the
// delivery attempt that leased it.
type replayReceipt struct {
	id      uint64
	attempt uint32
}

func byReplayAt(a, b *replayEntry) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	return a.requestID < b.requestID
}

func newTree[T any](less func(a, b T) bool) *btree.BTreeG[T] {
	return btree.NewBTreeGOptions(less, btree.Options{NoLocks: true})
}

// settings are a queue's resolved settings, every default filled in.
type settings struct {
	visibility    int64
	maxDeliveries uint32
	deadLetter    string
	dedupWindow   int64
	retention     int64
	maxDepth      uint64
}

// counters are the monotone totals of a queue.
type counters struct {
	enqueued, acked, redelivered, dedupHits, expired, deadLettered, delivered, purged, redriven uint64
}

// queue is one queue's state. clone() is O(1) and shares every tree node
// copy-on-write: Snapshot freezes each queue that way and a transaction
// works on clones it commits only on success.
type queue struct {
	name      string
	createdAt int64
	settings  settings
	counters  counters
	nextID    uint64 // the id the next message gets; ids start at 1
	// dedupCursor: every message with a smaller id is out of the dedup
	// window and its dedup entry is gone (Tick advances it).
	dedupCursor uint64
	leased      uint64 // records in timed with flagLeased
	deadLetters uint64 // live records with flagDeadLetter
	dead        uint64 // records with flagDead
	waiting     uint64 // records with flagWaiting
	// groupCount: distinct keys in groups.
	groupCount uint64
	// exts: per group, the extra its messages share (see groupExt).
	exts map[string]*extra
	// heads: the groups whose deliverable message left during the command
	// in progress; promoteHeads makes each one's next message deliverable
	// (nil between commands).
	heads []string
	// released: bytes of the records removed since the trees were last
	// refreshed (see refresh).
	released uint64
	// stamp: what the command changing the queue records on the records
	// it changes. Set by txn.mut; not part of the state.
	stamp stamp
	// ops: the store writes of the command in progress (set by txn.own;
	// nil between commands).
	ops *bodyOps
	// born, seq and changed tell a snapshot which chunks of msgs are as an
	// earlier snapshot wrote them (see segments.go). born: a count the
	// FSM gave this queue alone when it was created or restored; seq: the
	// change count of the command in progress (set by txn.track);
	// changed: per chunk of ids, the change count of the last command
	// that changed a record or dedup entry in it (none: unchanged since
	// the queue was born). Node-local, not part of the state.
	born, seq uint64
	changed   map[uint64]uint64

	msgs  *btree.BTreeG[*message] // by id: live messages and tombstones
	ready readySet                // ids of ready messages
	timed *btree.BTreeG[*message] // by (at, id): delayed and leased
	// tombs: tombstones by (at = deletion time, id), for expiry.
	tombs *btree.BTreeG[*message]
	// dedup: by dedup ID, the current record (live or tombstone) of the
	// message first enqueued with it. Holding the record rather than a
	// (key, id) pair saves 16 bytes per entry; replace keeps it current.
	dedup    *btree.BTreeG[*message]
	replay   *btree.BTreeG[*replayEntry] // by request ID
	replayAt *btree.BTreeG[*replayEntry] // by (at, request ID)
	// groups: by (group, id), every live message that has a group, dead
	// ones excepted: a group's messages in id order, its first the one
	// that may be delivered, the others waiting (see group.go).
	groups *btree.BTreeG[groupEntry]

	// Hints remember the path of the last operation on a tree: a batch's
	// ids, lease times, deletion times and dedup IDs (ULIDs made one
	// after another) sit next to each other, so the next search starts
	// where the last one ended instead of at the root. They change
	// nothing but the cost of a search.
	msgsHint, timedHint, tombsHint, dedupHint, groupsHint btree.PathHint
}

// stamp is what a command records on the messages it changes: its Raft
// index, and with fates, what removed a tombstone's message. Both only
// under rules >= 2: a server of an earlier release records neither, and
// the replicas must keep the same state.
type stamp struct {
	index uint64
	fates bool
}

func newQueue(name string, createdAt int64, s settings) *queue {
	return &queue{
		name:        name,
		createdAt:   createdAt,
		settings:    s,
		nextID:      1,
		dedupCursor: 1,
		msgs:        newTree(byID),
		ready:       newReadySet(),
		timed:       newTree(byAtID),
		tombs:       newTree(byAtID),
		dedup:       newTree(func(a, b *message) bool { return a.dedupID < b.dedupID }),
		replay:      newTree(func(a, b *replayEntry) bool { return a.requestID < b.requestID }),
		replayAt:    newTree(byReplayAt),
		groups:      newTree(byGroup),
	}
}

// clone returns a copy that shares tree nodes copy-on-write with q.
func (q *queue) clone() *queue {
	c := *q
	c.msgs = q.msgs.Copy()
	c.ready = q.ready.copy()
	c.timed = q.timed.Copy()
	c.tombs = q.tombs.Copy()
	c.dedup = q.dedup.Copy()
	c.replay = q.replay.Copy()
	c.replayAt = q.replayAt.Copy()
	c.groups = q.groups.Copy()
	return &c
}

// A tree refresh gives every node of the queue's trees an array of its
// own that holds its items and nothing else.
//
// tidwall/btree splits a full node by slicing one array between the two
// halves. Once either half outgrows its part it moves to a new array, but
// the old one lives on as long as the other half does, and its slots that
// neither half covers keep the pointers they held: a record that was in a
// node when it split stays reachable after the tree replaced or dropped
// it. Ids, lease ends and dedup IDs (ULIDs) arrive in ascending order, so
// almost every record goes through such a split (after an ascending fill
// of 10,000 records, each then replaced, 9,952 of the originals were still
// reachable), and the record of an acked message stayed in memory beside
// its tombstone for as long as the tombstone: the dedup window.
//
// A refresh copies each tree and scans the copy for writing, which gives
// every node a fresh array holding only its live items; the old nodes are
// garbage unless a snapshot view still reads them. It costs an allocation
// of about refreshBytesPerEntry per entry, so it runs once the records
// released since the last one are worth at least that much (and at least
// refreshMinBytes): never more than one byte copied per byte it frees,
// and what a drained queue holds on to stays below the size of its trees.
const (
	refreshMinBytes      = 1 << 20
	refreshBytesPerEntry = 32
)

func (q *queue) refreshDue() bool {
	entries := q.msgs.Len() + q.timed.Len() + q.tombs.Len() + q.dedup.Len() + 2*q.replay.Len() + q.groups.Len()
	return q.released >= max(refreshMinBytes, refreshBytesPerEntry*uint64(entries))
}

func (q *queue) refresh() {
	q.msgs = refreshed(q.msgs)
	q.timed = refreshed(q.timed)
	q.tombs = refreshed(q.tombs)
	q.dedup = refreshed(q.dedup)
	q.replay = refreshed(q.replay)
	q.replayAt = refreshed(q.replayAt)
	q.groups = refreshed(q.groups)
	q.released = 0
}

// refreshed returns a copy of t whose nodes are all new (see refresh). The
// shape is the same, so path hints stay as good as they were.
func refreshed[T any](t *btree.BTreeG[T]) *btree.BTreeG[T] {
	c := t.Copy()
	c.ScanMut(func(T) bool { return true })
	return c
}

func (q *queue) live() uint64 { return uint64(q.ready.len()+q.timed.Len()) + q.waiting }

// setMsg sets m in msgs, replacing the record with its id.
func (q *queue) setMsg(m *message) {
	q.msgs.SetHint(m, &q.msgsHint)
	q.touch(m.id)
}

// dropMsg removes m from msgs.
func (q *queue) dropMsg(m *message) {
	q.msgs.Delete(m)
	q.touch(m.id)
}

// put inserts a live record into msgs and into the index its flags name.
func (q *queue) put(m *message) {
	q.setMsg(m)
	switch {
	case m.is(flagWaiting):
		q.waiting++
	case m.is(flagReady):
		q.ready.add(m.id)
	default:
		q.timed.SetHint(m, &q.timedHint)
		if m.is(flagLeased) {
			q.leased++
		}
	}
}

// unindex removes a live record from ready/timed (not from msgs).
func (q *queue) unindex(m *message) {
	if m.is(flagWaiting) {
		q.waiting--
		return
	}
	if m.is(flagReady) {
		q.ready.remove(m.id)
		return
	}
	q.timed.DeleteHint(m, &q.timedHint)
	if m.is(flagLeased) {
		q.leased--
	}
}

// replace swaps live record old for new in every index; new is changed
// by the command applied, whose index it records.
func (q *queue) replace(old, m *message) {
	m.index = q.stamp.index
	q.swap(old, m)
}

// swap swaps live record old for new in every index.
func (q *queue) swap(old, m *message) {
	q.unindex(old)
	q.put(m)
	q.redirectDedup(old, m)
}

// redirectDedup points old's dedup entry, if it is old's, at m: one
// search where a look-up and a set would take two.
func (q *queue) redirectDedup(old, m *message) {
	if old.dedupID == "" || old.id < q.dedupCursor {
		return // Tick has removed the entries of every id below the cursor
	}
	prev, replaced := q.dedup.SetHint(m, &q.dedupHint)
	switch {
	case !replaced:
		q.dedup.DeleteHint(m, &q.dedupHint) // there was no entry
	case prev != old:
		q.dedup.SetHint(prev, &q.dedupHint) // the entry is a later message's
	}
}

// remove turns live record m into a tombstone of its final delivery attempt,
// deleted at now, and deletes its body; how is flagAcked for an ack and
// flagRejected for a reject (which make a repeat of the same receipt
// succeed), else 0. why holds the fate of anything but an ack
// (expiredExt, purgedExt, movedExt), which the tombstone keeps when the
// stamp records fates.
func (q *queue) remove(m *message, attempt uint32, now int64, how uint8, why *extra) {
	q.tombstone(m, attempt, now, how, why)
	q.dropBody(m)
}

// recordBytes is what one removed record counts towards a refresh: its
// size class.
const recordBytes = 80

// tombstone is remove without deleting the body: for a message whose body
// moves to another record (a dead letter, a redrive) or stays with a
// replay entry.
func (q *queue) tombstone(m *message, attempt uint32, now int64, how uint8, why *extra) {
	if m.is(flagDead) {
		q.dead--
	} else {
		q.unindex(m)
		q.leaveGroup(m)
	}
	if m.is(flagDeadLetter) {
		q.deadLetters--
	}
	q.released += recordBytes
	flags := flagDeleted | how
	t := &message{id: m.id, enqueuedAt: m.enqueuedAt, at: now, dedupID: m.dedupID, attempt: attempt, flags: flags, index: q.stamp.index}
	if q.stamp.fates {
		t.ext = why
	}
	q.setMsg(t)
	q.tombs.SetHint(t, &q.tombsHint)
	q.redirectDedup(m, t)
}

// promote moves every timed record that is due at now into ready: delayed
// messages whose time came and leases that expired (attempt unchanged, so
// a late ack still succeeds until the message is delivered again).
func (q *queue) promote(now int64) {
	for {
		m, ok := q.timed.Min()
		if !ok || m.at > now {
			return
		}
		q.swap(m, m.with(m.at, m.attempt, m.flags&^flagLeased|flagReady))
	}
}

// available reports, without changing q, whether a message is available at
// now and the earliest later time one becomes available (0 if none).
func (q *queue) available(now int64) (bool, int64) {
	if q.ready.len() > 0 {
		return true, 0
	}
	m, ok := q.timed.Min()
	if !ok {
		return false, 0
	}
	if m.at <= now {
		return true, 0
	}
	return false, m.at
}

// stats returns the gauges as of now (counting due timed records as ready,
// as the next command would) and the counters.
func (q *queue) stats(now int64) *fsmpb.QueueStats {
	ready, leased, delayed := uint64(q.ready.len()), q.leased, uint64(q.timed.Len())-q.leased
	q.timed.Scan(func(m *message) bool {
		if m.at > now {
			return false
		}
		ready++
		if m.is(flagLeased) {
			leased--
		} else {
			delayed--
		}
		return true
	})
	c := q.counters
	var age int64
	if first, ok := q.oldestReady(now); ok {
		age = now - first
	}
	return &fsmpb.QueueStats{
		OldestReadyAgeNs:  age,
		Ready:             ready,
		Leased:            leased,
		Delayed:           delayed,
		DeadLettered:      q.deadLetters,
		Dead:              q.dead,
		Waiting:           q.waiting,
		Groups:            q.groupCount,
		EnqueuedTotal:     c.enqueued,
		AckedTotal:        c.acked,
		RedeliveredTotal:  c.redelivered,
		DedupHitsTotal:    c.dedupHits,
		ExpiredTotal:      c.expired,
		DeadLetteredTotal: c.deadLettered,
		DeliveredTotal:    c.delivered,
		PurgedTotal:       c.purged,
		RedrivenTotal:     c.redriven,
	}
}

// oldestReady returns the enqueue time of the oldest message ready at now
// (due timed records included). Ids grow with enqueue time, so it is the
// lowest ready id's or an earlier due timed record's.
func (q *queue) oldestReady(now int64) (int64, bool) {
	var first int64
	found := false
	if id, ok := q.ready.min(); ok {
		if m, ok := q.msgs.Get(&message{id: id}); ok {
			first, found = m.enqueuedAt, true
		}
	}
	q.timed.Scan(func(m *message) bool {
		if m.at > now {
			return false
		}
		if !found || m.enqueuedAt < first {
			first, found = m.enqueuedAt, true
		}
		return true
	})
	return first, found
}

func (q *queue) info(now int64) *fsmpb.QueueInfo {
	return &fsmpb.QueueInfo{
		Name:              q.name,
		Settings:          q.settings.proto(),
		Stats:             q.stats(now),
		CreatedAtUnixNano: q.createdAt,
	}
}

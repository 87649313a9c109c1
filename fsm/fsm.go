package fsm

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/tidwall/btree"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// FSM is the replicated queue state machine. It is safe for concurrent use:
// Apply from raft's goroutine, reads (Queue, Queues, Watch, StateHash) from
// many goroutines.
type FSM struct {
	mu     sync.RWMutex
	queues *btree.BTreeG[*queue] // by name
	now    int64                 // last applied (monotone) now
	// lastNow mirrors now for NowUnixNano, which the leader reads on every
	// proposal: without the lock, so that proposals never wait for an
	// Apply in progress.
	lastNow atomic.Int64
	applied uint64

	// store holds the bodies and attributes the records refer to.
	// nextBody is the id the next stored body gets: node-local, never
	// reused, so a body id read before a later entry deleted that body
	// finds nothing rather than another message's body. It is not part of
	// the replicated state (Restore assigns ids of its own) and never
	// enters the state hash.
	store    Store
	nextBody uint64

	// wmu guards watch. Apply closes channels while holding mu for writing
	// and Watch creates them while holding mu for reading, so no change can
	// slip between a Watch's look at the state and its channel.
	wmu   sync.Mutex
	watch map[string]chan struct{}

	// seq counts the commands applied and the queues created or restored
	// in this process (see queue.changed); segs: the segment files of the
	// last snapshot persisted with them (segments.go).
	seq  uint64
	segs segmentCache
}

// FSM is deliberately not a raft.BatchingFSM: ApplyBatch (one lock per
// batch) measured the same per entry as Apply, with and without concurrent
// readers, within this machine's noise (see fsm/DESIGN.md).
var _ raft.FSM = (*FSM)(nil)

func newQueueTree() *btree.BTreeG[*queue] {
	return newTree(func(a, b *queue) bool { return a.name < b.name })
}

// New returns an empty FSM that keeps bodies in a MemStore.
func New() *FSM { return NewWithStore(NewMemStore()) }

// NewWithStore returns an empty FSM that keeps message bodies and
// attributes in s, which must be empty: the FSM is its only writer and
// assumes nothing of what was there before.
func NewWithStore(s Store) *FSM {
	return &FSM{queues: newQueueTree(), watch: make(map[string]chan struct{}), store: s, nextBody: 1}
}

// Apply applies one Raft log entry. It returns a *fsmpb.Result (never nil)
// for LogCommand entries and nil for every other entry type and for
// log-verification checkpoints (IsCheckpoint), which change nothing but
// the applied index. It never panics: a malformed entry is an error
// result that changes nothing.
func (f *FSM) Apply(l *raft.Log) interface{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applyLog(l)
}

func (f *FSM) applyLog(l *raft.Log) interface{} {
	if l.Index > f.applied {
		f.applied = l.Index
	}
	if l.Type != raft.LogCommand || IsCheckpoint(l.Data) {
		return nil
	}
	cmd, err := Decode(l.Data)
	if err != nil {
		return errorResult(fail(fsmpb.ErrorCode_MALFORMED, "%v", err))
	}
	return f.apply(cmd)
}

// ApplyCommand applies a decoded command as log entry index. It is what
// Apply calls after Decode.
func (f *FSM) ApplyCommand(index uint64, cmd *fsmpb.Command) *fsmpb.Result {
	f.mu.Lock()
	defer f.mu.Unlock()
	if index > f.applied {
		f.applied = index
	}
	return f.apply(cmd)
}

func errorResult(err *cmdError) *fsmpb.Result {
	return &fsmpb.Result{Error: &fsmpb.Error{Code: err.code, Message: err.msg}}
}

// apply runs cmd and commits it only on success. Every command validates
// all its input before it changes anything. The recover is a last line of
// defence against a bug: a panicking entry must not kill every node that
// applies it. Whatever it left behind, it left identically on every node.
// A storeFailure is the exception: it is about this node's disk, not the
// entry, and it goes on up, stopping the node before its memory and its
// store can disagree.
func (f *FSM) apply(cmd *fsmpb.Command) (res *fsmpb.Result) {
	f.seq++
	t := &txn{committed: f.queues, now: f.now, rules: cmd.GetRules(), index: f.applied, work: make(map[string]*queue),
		ops: &bodyOps{}, nextBody: f.nextBody, read: f.store.Get, seq: f.seq, births: &f.seq}
	defer func() {
		for _, q := range t.work {
			if q != nil {
				q.ops, q.heads = nil, nil
			}
		}
		if r := recover(); r != nil {
			if sf, ok := r.(storeFailure); ok {
				panic(sf)
			}
			res = errorResult(fail(fsmpb.ErrorCode_MALFORMED, "internal error applying command: %v", r))
		}
	}()
	if cmd == nil {
		return errorResult(fail(fsmpb.ErrorCode_MALFORMED, "nil command"))
	}
	if n := cmd.GetNowUnixNano(); n < 0 || n > MaxNow {
		return errorResult(invalid("now_unix_nano is %d, limit is 0 to %d", n, MaxNow))
	}
	t.now = max(cmd.GetNowUnixNano(), f.now)
	res, err := t.run(cmd)
	if err != nil {
		return errorResult(err)
	}
	for _, q := range t.work {
		if q != nil && q.promoteHeads(t.now) {
			t.notify(q.name)
		}
	}
	// The store first: a command whose writes did not land changes
	// nothing in memory either (the node stops).
	if !t.ops.empty() {
		if err := commitOps(f.store, t.ops); err != nil {
			panic(storeFailure{err})
		}
	}
	f.nextBody = t.nextBody
	refresh := false
	for name, q := range t.work {
		switch {
		case q == nil:
			f.queues.Delete(&queue{name: name})
			refresh = true
		case q.refreshDue():
			q.refresh()
			refresh = true
		}
		if q != nil {
			f.queues.Set(q)
		}
	}
	// The queue tree splits like any other (see queue.refresh): refreshed
	// after a queue was deleted or its trees replaced, so that no stale
	// slot keeps the old ones.
	if refresh {
		f.queues = refreshed(f.queues)
	}
	f.now = t.now
	f.lastNow.Store(t.now)
	f.notify(t.wake)
	return res
}

// bornAgain gives every queue a new birth count of its own after a
// restore: no chunk of a restored queue is as a segment file of an
// earlier snapshot holds it (see queue.changed).
func (f *FSM) bornAgain() {
	f.queues.Scan(func(q *queue) bool {
		f.seq++
		q.born, q.changed = f.seq, nil
		return true
	})
}

// notify closes the watch channels of the named queues.
func (f *FSM) notify(names []string) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	for _, name := range names {
		if ch, ok := f.watch[name]; ok {
			close(ch)
			delete(f.watch, name)
		}
	}
}

func (f *FSM) notifyAll() {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	for name, ch := range f.watch {
		close(ch)
		delete(f.watch, name)
	}
}

func (f *FSM) get(name string) *queue {
	q, _ := f.queues.Get(&queue{name: name})
	return q
}

// AppliedIndex returns the index of the last applied log entry (restored
// from snapshots too).
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied
}

// NowUnixNano is Now in nanoseconds, read without taking the FSM's lock.
func (f *FSM) NowUnixNano() int64 { return f.lastNow.Load() }

// Now returns the last applied (monotone) command time.
func (f *FSM) Now() time.Time {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return time.Unix(0, f.now)
}

// Queue returns the settings (every field set) and stats of a queue, as of
// the last applied command. The error wraps ErrQueueNotFound.
func (f *FSM) Queue(name string) (*fsmpb.QueueInfo, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	q := f.get(name)
	if q == nil {
		return nil, fmt.Errorf("%w: %q", ErrQueueNotFound, name)
	}
	return q.info(f.now), nil
}

// HasQueue reports whether queue exists and how many queues there are, as
// of the last applied command, without copying any queue's state.
func (f *FSM) HasQueue(name string) (exists bool, queues int) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.get(name) != nil, f.queues.Len()
}

// MissingDeadLetterQueue returns the result Apply gives, under rules 1, a
// create or update of a queue whose settings name a dead-letter queue
// that does not exist, without create_dead_letter_queue, as of the last
// applied command: for a leader that refuses such a command itself. It returns nil when the command names none, names one
// that exists or asks for it to be created, or (update) keeps the
// dead-letter queue the queue has.
func (f *FSM) MissingDeadLetterQueue(cmd *fsmpb.Command) *fsmpb.Result {
	field, name, s, create := "create_queue", cmd.GetCreateQueue().GetName(), cmd.GetCreateQueue().GetSettings(), cmd.GetCreateQueue().GetCreateDeadLetterQueue()
	if u := cmd.GetUpdateQueue(); u != nil {
		field, name, s, create = "update_queue", u.GetName(), u.GetSettings(), u.GetCreateDeadLetterQueue()
	}
	dlq := s.GetDeadLetterQueue()
	if dlq == "" || create || cmd.GetRules() < 1 {
		return nil
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.get(dlq) != nil {
		return nil
	}
	if q := f.get(name); q != nil && (cmd.GetCreateQueue() != nil || q.settings.deadLetter == dlq) {
		return nil // create of an existing queue, or an update keeping its DLQ
	}
	return errorResult(missingDeadLetterQueue(field, dlq))
}

// Queues returns every queue's settings and stats, sorted by name.
func (f *FSM) Queues() []*fsmpb.QueueInfo {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*fsmpb.QueueInfo, 0, f.queues.Len())
	f.queues.Scan(func(q *queue) bool {
		out = append(out, q.info(f.now))
		return true
	})
	return out
}

// Watch lets a long-poll receive wait without polling. available: some
// message of queue is available at now (not leased and due, counting
// expired leases as available). changed: closed by the next Apply that may
// make a message available in that queue (enqueue, nack, purge, a dead
// letter arriving, create, update or delete of the queue, Restore). next:
// the earliest time a delayed or leased message becomes available (zero if
// none). All three are read under one lock, so nothing is missed. For an
// unknown queue available is false, next is zero and changed is closed when
// the queue is created.
func (f *FSM) Watch(queue string, now time.Time) (available bool, changed <-chan struct{}, next time.Time) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ch := f.watchChan(queue)
	q := f.get(queue)
	if q == nil {
		return false, ch, time.Time{}
	}
	avail, at := q.available(now.UnixNano())
	if at != 0 {
		next = time.Unix(0, at)
	}
	return avail, ch, next
}

// WatchDedupID tells whether a message with dedupID is in queue's dedup
// window, as an enqueue applied now would see it, and gives the channel
// Watch gives (closed by the next Apply that may enqueue into queue), both
// read under one lock. The leader uses it to hold a chained batch until
// its predecessor is applied.
func (f *FSM) WatchDedupID(queue, dedupID string) (present bool, changed <-chan struct{}) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ch := f.watchChan(queue)
	if q := f.get(queue); q != nil {
		_, present = q.dedupLookup(dedupID, f.now, nil)
	}
	return present, ch
}

// watchChan returns queue's watch channel, making it if needed. f.mu is
// held (read), so no Apply closes it before the caller has read the state.
func (f *FSM) watchChan(queue string) chan struct{} {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	ch, ok := f.watch[queue]
	if !ok {
		ch = make(chan struct{})
		f.watch[queue] = ch
	}
	return ch
}

// Available returns how many messages of queue a receive would find now:
// the ready ones, or 1 when none is ready but a delayed or leased one is
// due (a lower bound); 0 for an unknown queue.
func (f *FSM) Available(queue string, now time.Time) int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	q := f.get(queue)
	if q == nil {
		return 0
	}
	if n := q.ready.len(); n > 0 {
		return n
	}
	if ok, _ := q.available(now.UnixNano()); ok {
		return 1
	}
	return 0
}

// Restore replaces the state with a snapshot written by Persist. A corrupt,
// truncated or unknown-version snapshot is rejected with an error wrapping
// ErrSnapshot and the old state is kept.
//
// The snapshot's bodies go to the store under new body ids, above every
// id in use, in batches committed as they fill; a rejected snapshot's are
// deleted again, and the old state's are deleted with the swap. Raft
// calls Restore on the goroutine that applies, so no Apply runs meanwhile.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	w := &restoreWriter{store: f.store, first: f.nextBody, next: f.nextBody}
	defer w.close()
	s, err := readSnapshot(rc, w.put)
	if err == nil {
		err = w.flush()
	}
	if err != nil {
		return errors.Join(err, w.discard())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.store.Batch()
	defer old.Close()
	old.DeleteRange(bodyKey(0), bodyKey(w.first))
	if err := old.Commit(); err != nil {
		return errors.Join(fmt.Errorf("fsm: restore: delete the bodies of the old state: %w", err), w.discard())
	}
	f.queues, f.now, f.applied = s.queues, s.now, s.applied
	f.bornAgain()
	f.nextBody = w.next
	f.lastNow.Store(s.now)
	f.notifyAll()
	return nil
}

// RestoreCheckpoint replaces the state with a version-2 snapshot read
// from index, whose bodies and attributes are in a checkpoint of the store
// written with it (CheckpointStore). The whole index is read and checked
// first; then, under the lock, adopt makes that checkpoint the FSM's store
// (the Store value stays the same: adopt swaps what is behind it), and the
// bodies the checkpoint holds at and above the snapshot's next body id,
// which no record refers to, are deleted. An error before adopt leaves the
// FSM and its store as they were; an error of adopt leaves the store to
// the caller, who stops the node (it rebuilds the store at its next
// start).
func (f *FSM) RestoreCheckpoint(index io.Reader, adopt func() error) error {
	s, err := readSnapshot(index, nil)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := adopt(); err != nil {
		return fmt.Errorf("fsm: restore: adopt the store checkpoint: %w", err)
	}
	b := f.store.Batch()
	defer b.Close()
	b.DeleteRange(bodyKey(s.nextBody), []byte{bodyPrefix + 1})
	if err := b.Commit(); err != nil {
		return fmt.Errorf("fsm: restore: delete the bodies written after the snapshot: %w", err)
	}
	f.queues, f.now, f.applied = s.queues, s.now, s.applied
	f.bornAgain()
	f.nextBody = s.nextBody
	f.lastNow.Store(s.now)
	f.notifyAll()
	return nil
}

// restoreWriter stores a restored snapshot's bodies in batches of about
// restoreBatchBytes, so that a restore never holds the backlog in memory.
type restoreWriter struct {
	store       Store
	first, next uint64 // the ids it used: first <= id < next
	b           StoreBatch
	bytes       int
}

const restoreBatchBytes = 4 << 20

func (w *restoreWriter) put(body []byte, attrs []*fsmpb.Attribute) (bodyRef, error) {
	v := encodeValue(body, attrs)
	if v == nil {
		return bodyRef{}, nil
	}
	ref := bodyRef{id: w.next, size: uint32(len(body)), crc: crc32c(v)}
	w.next++
	if w.b == nil {
		w.b = w.store.Batch()
	}
	w.b.Set(bodyKey(ref.id), v)
	if w.bytes += len(v); w.bytes >= restoreBatchBytes {
		return ref, w.flush()
	}
	return ref, nil
}

func (w *restoreWriter) flush() error {
	if w.b == nil {
		return nil
	}
	err := w.b.Commit()
	w.close()
	if err != nil {
		return fmt.Errorf("fsm: restore: store bodies: %w", err)
	}
	return nil
}

func (w *restoreWriter) close() {
	if w.b != nil {
		w.b.Close()
		w.b, w.bytes = nil, 0
	}
}

// discard deletes every body the restore stored.
func (w *restoreWriter) discard() error {
	w.close()
	b := w.store.Batch()
	defer b.Close()
	b.DeleteRange(bodyKey(w.first), bodyKey(w.next))
	if err := b.Commit(); err != nil {
		return fmt.Errorf("fsm: restore: delete the bodies of the rejected snapshot: %w", err)
	}
	return nil
}

package fsm

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"

	"github.com/tidwall/btree"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// Store holds the bodies and attributes of the FSM's messages, so that
// memory holds only their index records. The FSM is its only writer: one
// batch per applied entry, committed after the entry applied successfully
// and under the FSM's lock, so a reader of the store sees what the
// in-memory state as of the last applied entry refers to. Reads may come
// from any goroutine. Get and a View's Get return a value the caller may
// keep; a missing key is ok == false, not an error.
//
// The store is derived state: everything in it can be rebuilt from a
// snapshot and the log, so it needs no durability of its own (the Raft log
// is the write-ahead log; see DESIGN.md, "Messages on disk").
type Store interface {
	Get(key []byte) (value []byte, ok bool, err error)
	// Batch starts the writes of one applied entry.
	Batch() StoreBatch
	// View returns a read-only view frozen at the last committed batch,
	// which later batches do not change. It must be cheap: Snapshot takes
	// one on raft's apply path.
	View() (StoreView, error)
}

// CheckpointStore is a Store that can write its committed state into a
// directory cheaply (pebble: hard links to its immutable files), so that a
// snapshot refers to the bodies there instead of carrying them (version
// 2, see Snapshot). What the directory holds is the store's own format:
// the node adopts it as its store again at a restore (RestoreCheckpoint).
type CheckpointStore interface {
	Store
	// Checkpoint pins the store as of the last committed batch. Until the
	// checkpoint is released, the deletes of later batches do not reach
	// what Write writes (Get and views no longer find those keys all the
	// same). Snapshot calls it on raft's apply path: it must be cheap.
	Checkpoint() (StoreCheckpoint, error)
}

// StoreCheckpoint is a pinned state of a CheckpointStore.
type StoreCheckpoint interface {
	// Write writes the pinned state into dir, which does not exist yet.
	// It may hold values set after the pin too: the FSM's body ids grow,
	// so those are at or above the next body id of the snapshot, which
	// RestoreCheckpoint deletes.
	Write(dir string) error
	// Release unpins the store and lets the deletes through; called once,
	// after Write or instead of it.
	Release()
}

// StoreBatch collects writes that Commit applies atomically, in order.
// Set and Delete copy what they are given.
type StoreBatch interface {
	Set(key, value []byte)
	Delete(key []byte)
	// DeleteRange deletes every key k with from <= k < to.
	DeleteRange(from, to []byte)
	Commit() error
	// Close releases the batch; an uncommitted batch changes nothing.
	Close()
}

// CachedStore is a Store that keeps some values where reading them costs
// less than a view (a node keeps the bodies it stored last in memory):
// FillBodies tries Cached first and takes a view only for the rest. A
// cached value is one committed and not deleted since.
type CachedStore interface {
	Cached(key []byte) (value []byte, ok bool)
}

// StoreView is a frozen read-only view of a Store, read by one goroutine
// at a time; reads in ascending key order may be cheaper than others.
type StoreView interface {
	Get(key []byte) (value []byte, ok bool, err error)
	Close() error
}

// bodyPrefix starts the key of a stored body: bodyPrefix, then the body
// id big-endian, so bodies sort in the order they were written.
const bodyPrefix = 'b'

func bodyKey(id uint64) []byte {
	k := make([]byte, 9)
	k[0] = bodyPrefix
	binary.BigEndian.PutUint64(k[1:], id)
	return k
}

// bodyRef is what a record holds of its body and attributes: where they
// are stored and what the state hash needs of them. id is node-local (see
// FSM.nextBody) and never enters the hash; size and crc are the same on
// every node.
type bodyRef struct {
	id   uint64 // key in the store; 0: the message has no body and no attributes
	size uint32 // body bytes
	crc  uint32 // CRC32C of the stored value
}

// encodeValue is the stored value of a message: its body and attributes
// as SnapshotMessage fields 6 and 8, the bytes a snapshot record carries
// for them. One encoding on every node, so the CRC in a bodyRef is too.
func encodeValue(body []byte, attrs []*fsmpb.Attribute) []byte {
	if len(body) == 0 && len(attrs) == 0 {
		return nil
	}
	n := 0
	if len(body) > 0 {
		n = protowire.SizeTag(smBody) + protowire.SizeBytes(len(body))
	}
	for _, a := range attrs {
		n += protowire.SizeTag(smAttributes) + protowire.SizeBytes(attributeSize(a.GetKey(), a.GetValue()))
	}
	v := appendBytesField(make([]byte, 0, n), smBody, body)
	for _, a := range attrs {
		v = protowire.AppendTag(v, smAttributes, protowire.BytesType)
		v = protowire.AppendVarint(v, uint64(attributeSize(a.GetKey(), a.GetValue())))
		v = appendStringField(v, attrKey, a.GetKey())
		v = appendStringField(v, attrValue, a.GetValue())
	}
	return v
}

func appendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// splitValue splits a stored value into its body field and its attribute
// fields, which a snapshot record carries on either side of the dedup ID.
func splitValue(v []byte) (bodyField, attrFields []byte) {
	num, typ, n := protowire.ConsumeTag(v)
	if n < 0 || num != smBody || typ != protowire.BytesType {
		return nil, v
	}
	_, m := protowire.ConsumeBytes(v[n:])
	if m < 0 {
		return nil, v
	}
	return v[:n+m], v[n+m:]
}

// decodeValue reads a value written by encodeValue. The body aliases v.
func decodeValue(v []byte) (body []byte, attrs []*fsmpb.Attribute, err error) {
	for len(v) > 0 {
		num, typ, n := protowire.ConsumeTag(v)
		if n < 0 || typ != protowire.BytesType || num != smBody && num != smAttributes {
			return nil, nil, fmt.Errorf("stored value: field %d type %d", num, typ)
		}
		raw, m := protowire.ConsumeBytes(v[n:])
		if m < 0 {
			return nil, nil, fmt.Errorf("stored value: %w", protowire.ParseError(m))
		}
		v = v[n+m:]
		if num == smBody {
			body = raw
			continue
		}
		a, err := decodeAttribute(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("stored value: %w", err)
		}
		attrs = append(attrs, &fsmpb.Attribute{Key: a.key, Value: a.value})
	}
	return body, attrs, nil
}

// bodyWrite is one Set of a command's batch.
type bodyWrite struct {
	id    uint64
	value []byte
}

// bodyOps are the store writes of the command in progress. A command that
// fails drops them with everything else it did.
type bodyOps struct {
	sets []bodyWrite
	dels []uint64
}

func (o *bodyOps) empty() bool { return len(o.sets) == 0 && len(o.dels) == 0 }

// dropBody deletes the stored value of m's body, if it has one, with the
// command in progress.
func (q *queue) dropBody(m *message) {
	if m.body.id != 0 {
		q.ops.dels = append(q.ops.dels, m.body.id)
	}
}

// storeFailure is the panic of a store that cannot write or read what the
// state refers to. apply lets it through instead of turning it into an
// error result: memory and the store would disagree from then on, so the
// node stops, and rebuilds the store from the snapshot and the log when it
// starts again.
type storeFailure struct{ err error }

func (s storeFailure) Error() string { return "fsm: body store: " + s.err.Error() }

// commit writes ops in one batch. Deletes of consecutive body ids (a
// receive's or an ack's messages of one enqueue, in FIFO order) go as one
// range delete per run: one tombstone in the store instead of one per
// body, which the engine later drops with the files it covers.
func commitOps(s Store, ops *bodyOps) error {
	b := s.Batch()
	defer b.Close()
	for _, w := range ops.sets {
		b.Set(bodyKey(w.id), w.value)
	}
	dels := ops.dels
	if !slices.IsSorted(dels) {
		dels = slices.Sorted(slices.Values(dels))
	}
	for i := 0; i < len(dels); {
		j := i + 1
		for j < len(dels) && dels[j] == dels[j-1]+1 {
			j++
		}
		if j-i == 1 {
			b.Delete(bodyKey(dels[i]))
		} else {
			b.DeleteRange(bodyKey(dels[i]), bodyKey(dels[j-1]+1))
		}
		i = j
	}
	return b.Commit()
}

// readValue returns the stored body and attributes of ref; the body does
// not alias the store.
func readValue(get func([]byte) ([]byte, bool, error), ref bodyRef) (body []byte, attrs []*fsmpb.Attribute, ok bool, err error) {
	if ref.id == 0 {
		return nil, nil, true, nil
	}
	v, ok, err := get(bodyKey(ref.id))
	if err != nil || !ok {
		return nil, nil, ok, err
	}
	body, attrs, err = decodeValue(v)
	return body, attrs, err == nil, err
}

// FillBodies reads into res's deliveries the bodies and attributes that
// Apply left out (Result.body_refs) and clears body_refs. A follower
// applies a receive without reading a body; only the node that answers
// the caller reads them, after the entry is applied. A body that a later
// entry deleted meanwhile (an ack, purge, queue delete, dead-lettering)
// drops its delivery from the answer: that message is no longer the
// caller's to work on.
func (f *FSM) FillBodies(res *fsmpb.Result) error {
	refs := res.GetBodyRefs()
	if len(refs) == 0 {
		return nil
	}
	if len(refs) != len(res.Deliveries) {
		return fmt.Errorf("fsm: %d body refs for %d deliveries", len(refs), len(res.Deliveries))
	}
	// Several bodies are read through one view, in delivery order: a
	// queue's ids, mostly ascending. A body deleted after the view was
	// taken is read as it was before: that entry came after this one.
	// A CachedStore's values are taken in a first pass; only the misses
	// are read, through a view when there are several.
	var hits [][]byte
	misses := len(refs)
	if cs, ok := f.store.(CachedStore); ok {
		hits, misses = make([][]byte, len(refs)), 0
		for i, id := range refs {
			if id == 0 {
				continue
			}
			if v, ok := cs.Cached(bodyKey(id)); ok {
				hits[i] = v
			} else {
				misses++
			}
		}
	}
	get := f.store.Get
	if misses > 1 {
		v, err := f.store.View()
		if err != nil {
			return fmt.Errorf("fsm: read bodies: %w", err)
		}
		defer v.Close()
		get = v.Get
	}
	kept := res.Deliveries[:0]
	for i, d := range res.Deliveries {
		var (
			body  []byte
			attrs []*fsmpb.Attribute
			ok    = true
			err   error
		)
		if hits != nil && hits[i] != nil {
			body, attrs, err = decodeValue(hits[i])
		} else {
			body, attrs, ok, err = readValue(get, bodyRef{id: refs[i]})
		}
		if err != nil {
			return fmt.Errorf("fsm: read body of message %d: %w", d.GetReceipt().GetMessageId(), err)
		}
		if !ok {
			continue
		}
		if refs[i] != 0 {
			d.Body, d.Attributes = body, attrs
		}
		kept = append(kept, d)
	}
	clear(res.Deliveries[len(kept):])
	res.Deliveries, res.BodyRefs = kept, nil
	return nil
}

// MemStore is a Store in memory, for tests, fuzzing and tools that read a
// snapshot without a node. Its views are copy-on-write copies of a B-tree,
// as cheap as a node's.
type MemStore struct {
	mu sync.RWMutex
	m  *btree.Map[string, []byte]
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore { return &MemStore{m: new(btree.Map[string, []byte])} }

// Get implements Store.
func (s *MemStore) Get(key []byte) ([]byte, bool, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.m.Get(string(key))
	return v, ok, nil // values are never changed in place, so sharing is safe
}

// Len is the number of keys held.
func (s *MemStore) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.m.Len()
}

// Batch implements Store.
func (s *MemStore) Batch() StoreBatch { return &memBatch{s: s} }

// View implements Store.
func (s *MemStore) View() (StoreView, error) {
	s.mu.Lock() // Copy changes the source's identity
	defer s.mu.Unlock()
	return memView{m: s.m.Copy()}, nil
}

type memOp struct {
	kind     byte // 's' set, 'd' delete, 'r' range delete
	key, end string
	value    []byte
}

type memBatch struct {
	s   *MemStore
	ops []memOp
}

func (b *memBatch) Set(key, value []byte) {
	b.ops = append(b.ops, memOp{kind: 's', key: string(key), value: append([]byte(nil), value...)})
}
func (b *memBatch) Delete(key []byte) { b.ops = append(b.ops, memOp{kind: 'd', key: string(key)}) }
func (b *memBatch) DeleteRange(from, to []byte) {
	b.ops = append(b.ops, memOp{kind: 'r', key: string(from), end: string(to)})
}
func (b *memBatch) Close() { b.ops = nil }

func (b *memBatch) Commit() error {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	for _, op := range b.ops {
		switch op.kind {
		case 's':
			b.s.m.Set(op.key, op.value)
		case 'd':
			b.s.m.Delete(op.key)
		case 'r':
			var keys []string
			b.s.m.Ascend(op.key, func(k string, _ []byte) bool {
				if k >= op.end {
					return false
				}
				keys = append(keys, k)
				return true
			})
			for _, k := range keys {
				b.s.m.Delete(k)
			}
		}
	}
	b.ops = nil
	return nil
}

type memView struct{ m *btree.Map[string, []byte] }

func (v memView) Get(key []byte) ([]byte, bool, error) {
	val, ok := v.m.Get(string(key))
	return val, ok, nil
}
func (memView) Close() error { return nil }

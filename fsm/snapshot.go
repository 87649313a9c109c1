package fsm

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math/bits"

	"github.com/hashicorp/raft"
	"github.com/tidwall/btree"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/fsm/limits"
)

// Snapshot stream format, versions 1 and 2:
//
//	magic "QQFSMSNP" (8 bytes), version (uint32 big-endian)
//	records: uvarint length (> 0) + SnapshotRecord protobuf, repeated
//	terminator: uvarint 0
//	trailer: record count (uint64 big-endian), CRC32C (uint32 big-endian)
//	         of every byte before the CRC
//
// Record order: one SnapshotState, then per queue in name order a
// SnapshotQueue followed by its messages and tombstones (id order), its
// dedup entries (key order) and its replay entries (time order).
//
// Version 1 carries every message's body and attributes. Version 2
// carries their CRC, size and body id instead: it is the index of a
// snapshot whose bodies are in a checkpoint of the store, kept beside it
// (CheckpointStore), and restores only with that checkpoint
// (RestoreCheckpoint).
const (
	snapshotMagic     = "QQFSMSNP"
	snapshotVersion   = 1 // bodies inline
	checkpointVersion = 2 // bodies in a store checkpoint
	// maxSnapshotRecord bounds one record: a message of MaxBodyBytes plus
	// attributes, or a replay entry of MaxBatch such messages.
	maxSnapshotRecord = MaxBatch*(MaxBodyBytes+MaxAttributes*(MaxAttributeKey+MaxAttributeVal)+1024) + 1024
)

// view is a frozen state: queues are clones no Apply will ever change,
// and bodies (nil for a state hash, which needs none) is the store as of
// the same entry.
type view struct {
	queues   []*queue
	now      int64
	applied  uint64
	nextBody uint64
	bodies   StoreView
	// cp pins the store as of the same entry when the store can
	// checkpoint itself (CheckpointStore); nil otherwise.
	cp StoreCheckpoint
	// segs: the FSM's segment files, for a snapshot persisted into a
	// SegmentSink (each queue's changed is frozen with it).
	segs *segmentCache
}

// view freezes the current state in O(number of queues): each queue's
// trees are copy-on-write copies, and with bodies a view of the store
// (a pebble snapshot: no copy either). Copy changes the source tree's
// identity, so it needs the write lock.
func (f *FSM) view(bodies bool) (*view, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := &view{now: f.now, applied: f.applied, nextBody: f.nextBody, queues: make([]*queue, 0, f.queues.Len())}
	if bodies {
		sv, err := f.store.View()
		if err != nil {
			return nil, fmt.Errorf("fsm: view of the body store: %w", err)
		}
		v.bodies = sv
		if cs, ok := f.store.(CheckpointStore); ok {
			cp, err := cs.Checkpoint()
			if err != nil {
				_ = sv.Close()
				return nil, fmt.Errorf("fsm: checkpoint of the body store: %w", err)
			}
			v.cp = cp
		}
	}
	if bodies {
		v.segs = &f.segs
	}
	f.queues.Scan(func(q *queue) bool {
		c := q.clone()
		if bodies {
			c.changed = q.frozenChanges()
		}
		v.queues = append(v.queues, c)
		return true
	})
	return v, nil
}

// Snapshot returns a frozen view of the state; its cost is independent of
// the number of messages. Persist writes it while Apply goes on: into a
// CheckpointSink from a CheckpointStore, a checkpoint of the store beside
// the index (version 2); otherwise every body, read from a view of the
// store taken here (version 1).
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	v, err := f.view(true)
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{v: v}, nil
}

// CheckpointSink is a snapshot sink that keeps a directory beside the
// snapshot, for a checkpoint of the store that the snapshot refers to.
type CheckpointSink interface {
	raft.SnapshotSink
	// CheckpointDir names the directory, which does not exist yet; ""
	// when the sink has none.
	CheckpointDir() string
}

type fsmSnapshot struct{ v *view }

// Persist writes the snapshot to sink and closes it (or cancels it on
// error).
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	var cpDone chan error
	if cs, ok := sink.(CheckpointSink); ok && s.v.cp != nil {
		if dir := cs.CheckpointDir(); dir != "" {
			// The checkpoint (a memtable flush and links) is written
			// beside the index, which needs nothing of it.
			cpDone = make(chan error, 1)
			go func() {
				err := s.v.cp.Write(dir)
				s.v.releaseCheckpoint()
				cpDone <- err
			}()
		}
	}
	enc := inline
	var sg *segWriter
	if cpDone != nil {
		enc = byRef
		if ss, ok := sink.(SegmentSink); ok {
			era, old := s.v.segs.get()
			sg = &segWriter{sink: ss, era: era, old: old, new: make(map[segKey]chunkFiles)}
		}
	} else {
		// Deletes wait while the store is pinned; a snapshot streamed
		// inline reads its bodies from the view instead.
		s.v.releaseCheckpoint()
	}
	err := s.v.write(sink, enc, sg)
	if cpDone != nil {
		if cpErr := <-cpDone; cpErr != nil {
			err = errors.Join(err, fmt.Errorf("checkpoint of the body store: %w", cpErr))
		}
	}
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return err
	}
	if sg != nil {
		s.v.segs.set(sg.new)
	}
	return nil
}

// Release closes the view of the store and unpins it; the rest of the
// view is garbage once unreferenced.
func (s *fsmSnapshot) Release() {
	s.v.releaseCheckpoint()
	if s.v.bodies != nil {
		_ = s.v.bodies.Close()
	}
}

func (v *view) releaseCheckpoint() {
	if v.cp != nil {
		v.cp.Release()
		v.cp = nil
	}
}

// StateHash returns a hex SHA-256 over the whole logical state (queues,
// settings, messages, leases, tombstones, dedup and replay entries,
// counters, the last now), equal on every node at the same applied index.
// It hashes the snapshot encoding without the applied index and with each
// message's body and attributes replaced by their size and CRC32C, kept
// in memory: the hash reads nothing from the store, so nothing of a
// node's disk (layout, compaction, body ids) can enter it, and a restored
// FSM has the hash of the one that wrote the snapshot.
func (f *FSM) StateHash() string {
	h := sha256.New()
	v, err := f.view(false)
	if err == nil {
		err = v.write(h, hashed, nil)
	}
	if err != nil {
		// Writing to a hash never fails; a failure here is a bug.
		panic(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

type snapWriter struct {
	w       *bufio.Writer
	crc     hash.Hash32
	buf     []byte
	scratch []byte
	count   uint64
	enc     encoding
	// bodies: where inline message values are read from.
	bodies StoreView
	// segs: where message records go in version 3 (nil: in the stream).
	segs *segWriter
}

// write writes the snapshot stream, version 1 (inline), 2 (byRef) or 3
// (byRef with sg), or the form StateHash hashes (hashed: no applied
// index, no body ids).
func (v *view) write(out io.Writer, enc encoding, sg *segWriter) error {
	sw := &snapWriter{crc: crc32.New(castagnoli), enc: enc, bodies: v.bodies, segs: sg}
	sw.w = bufio.NewWriterSize(io.MultiWriter(out, sw.crc), 1<<16)
	version := uint32(snapshotVersion)
	switch {
	case sg != nil:
		version = segmentVersion
	case enc == byRef:
		version = checkpointVersion
	}
	hdr := make([]byte, 0, 12)
	hdr = append(hdr, snapshotMagic...)
	hdr = binary.BigEndian.AppendUint32(hdr, version)
	if _, err := sw.w.Write(hdr); err != nil {
		return err
	}
	st := &fsmpb.SnapshotState{NowUnixNano: v.now}
	if enc != hashed {
		st.AppliedIndex = v.applied
	}
	if enc == byRef {
		st.NextBodyId = v.nextBody
	}
	if err := sw.record(&fsmpb.SnapshotRecord{Record: &fsmpb.SnapshotRecord_State{State: st}}); err != nil {
		return err
	}
	for _, q := range v.queues {
		if err := sw.queue(q); err != nil {
			return err
		}
	}
	sw.buf = binary.AppendUvarint(sw.buf[:0], 0)
	sw.buf = binary.BigEndian.AppendUint64(sw.buf, sw.count)
	if _, err := sw.w.Write(sw.buf); err != nil {
		return err
	}
	if err := sw.w.Flush(); err != nil {
		return err
	}
	_, err := out.Write(binary.BigEndian.AppendUint32(nil, sw.crc.Sum32()))
	return err
}

func (sw *snapWriter) record(r *fsmpb.SnapshotRecord) error {
	rec, err := sw.framedRecord(r)
	if err != nil {
		return err
	}
	sw.count++
	_, err = sw.w.Write(rec)
	return err
}

// framedRecord returns r encoded with its length prefix, in a buffer the
// next record reuses.
func (sw *snapWriter) framedRecord(r *fsmpb.SnapshotRecord) ([]byte, error) {
	var err error
	// Reserve the longest uvarint, then move the body if it was shorter.
	sw.buf = append(sw.buf[:0], make([]byte, binary.MaxVarintLen64)...)
	sw.buf, err = proto.MarshalOptions{Deterministic: true}.MarshalAppend(sw.buf, r)
	if err != nil {
		return nil, err
	}
	return sw.framed(), nil
}

func (sw *snapWriter) message(m *message) error {
	rec, err := sw.framedMessage(m)
	if err != nil {
		return err
	}
	sw.count++
	_, err = sw.w.Write(rec)
	return err
}

// framedMessage returns m's record with its length prefix, in a buffer
// the next record reuses.
func (sw *snapWriter) framedMessage(m *message) ([]byte, error) {
	value, err := sw.value(m)
	if err != nil {
		return nil, err
	}
	sw.buf = append(sw.buf[:0], make([]byte, binary.MaxVarintLen64)...)
	sw.buf, sw.scratch = appendMessageRecord(sw.buf, sw.scratch, m, value, sw.enc)
	return sw.framed(), nil
}

// snapMessage is m as a SnapshotMessage protobuf, with its value (as
// message writes it) or in the state-hash form.
func (sw *snapWriter) snapMessage(m *message) (*fsmpb.SnapshotMessage, error) {
	value, err := sw.value(m)
	if err != nil {
		return nil, err
	}
	sm := new(fsmpb.SnapshotMessage)
	err = proto.Unmarshal(appendSnapMessage(nil, m, value, sw.enc), sm)
	return sm, err
}

// value reads m's stored body and attributes from the view (nil unless
// inline, or for a message without them).
func (sw *snapWriter) value(m *message) ([]byte, error) {
	if sw.enc != inline || m.body.id == 0 {
		return nil, nil
	}
	v, ok, err := sw.bodies.Get(bodyKey(m.body.id))
	if err != nil {
		return nil, fmt.Errorf("read body of message %d: %w", m.id, err)
	}
	if !ok {
		return nil, fmt.Errorf("body of message %d is missing from the store", m.id)
	}
	return v, nil
}

// framed puts the length of the record in buf into the room reserved
// before it and returns the framed record.
func (sw *snapWriter) framed() []byte {
	n := len(sw.buf) - binary.MaxVarintLen64
	var lenBuf [binary.MaxVarintLen64]byte
	l := binary.PutUvarint(lenBuf[:], uint64(n))
	start := binary.MaxVarintLen64 - l
	copy(sw.buf[start:], lenBuf[:l])
	return sw.buf[start:]
}

func (sw *snapWriter) queue(q *queue) error {
	c := q.counters
	err := sw.record(&fsmpb.SnapshotRecord{Record: &fsmpb.SnapshotRecord_Queue{Queue: &fsmpb.SnapshotQueue{
		Name:     q.name,
		Settings: q.settings.proto(),
		Counters: &fsmpb.QueueStats{
			EnqueuedTotal: c.enqueued, AckedTotal: c.acked, RedeliveredTotal: c.redelivered,
			DedupHitsTotal: c.dedupHits, ExpiredTotal: c.expired, DeadLetteredTotal: c.deadLettered,
			DeliveredTotal: c.delivered, PurgedTotal: c.purged, RedrivenTotal: c.redriven,
		},
		CreatedAtUnixNano: q.createdAt,
		NextId:            q.nextID,
		DedupCursor:       q.dedupCursor,
	}}})
	if err != nil {
		return err
	}
	if sw.segs != nil {
		err = sw.segs.queue(sw, q)
	} else {
		q.msgs.Scan(func(m *message) bool {
			err = sw.message(m)
			return err == nil
		})
		if err == nil {
			q.dedup.Scan(func(m *message) bool {
				err = sw.record(&fsmpb.SnapshotRecord{Record: &fsmpb.SnapshotRecord_Dedup{Dedup: &fsmpb.SnapshotDedup{DedupId: m.dedupID, MessageId: m.id}}})
				return err == nil
			})
		}
	}
	if err != nil {
		return err
	}
	q.replayAt.Scan(func(e *replayEntry) bool {
		r := &fsmpb.SnapshotReplay{RequestId: e.requestID, AtUnixNano: e.at, Outcomes: e.outcomes, AutoAck: e.autoAcked != nil}
		for _, m := range e.autoAcked {
			var sm *fsmpb.SnapshotMessage
			if sm, err = sw.snapMessage(m); err != nil {
				return false
			}
			r.Deliveries = append(r.Deliveries, sm)
		}
		for _, rr := range e.receipts {
			r.Receipts = append(r.Receipts, &fsmpb.Receipt{MessageId: rr.id, Attempt: rr.attempt})
		}
		err = sw.record(&fsmpb.SnapshotRecord{Record: &fsmpb.SnapshotRecord_Replay{Replay: r}})
		return err == nil
	})
	return err
}

// snapReader reads the stream, feeding every byte it consumes into crc.
type snapReader struct {
	r   *bufio.Reader
	crc hash.Hash32
	buf []byte
	one [1]byte
}

func (sr *snapReader) ReadByte() (byte, error) {
	b, err := sr.r.ReadByte()
	if err == nil {
		sr.one[0] = b
		sr.crc.Write(sr.one[:])
	}
	return b, err
}

// full reads the next n bytes. It grows its buffer as data actually
// arrives, so a corrupt length cannot make Restore allocate the whole
// record limit up front.
func (sr *snapReader) full(n int) ([]byte, error) {
	const chunk = 1 << 20
	b := sr.buf[:0]
	for len(b) < n {
		step := min(n-len(b), chunk)
		if cap(b)-len(b) < step {
			b = append(b[:cap(b)], make([]byte, step)...)[:len(b)]
		}
		if _, err := io.ReadFull(sr.r, b[len(b):len(b)+step]); err != nil {
			return nil, err
		}
		b = b[:len(b)+step]
	}
	sr.buf = b
	sr.crc.Write(b)
	return b, nil
}

// trailer reads the stream's trailer after count records: the record
// count, the CRC32C of every byte before it, and nothing after.
func (sr *snapReader) trailer(count uint64) error {
	cnt, err := sr.full(8)
	if err != nil {
		return truncated("trailer", err)
	}
	if got := binary.BigEndian.Uint64(cnt); got != count {
		return snapErr("trailer says %d records, read %d", got, count)
	}
	want := sr.crc.Sum32()
	var sum [4]byte
	if _, err := io.ReadFull(sr.r, sum[:]); err != nil {
		return truncated("checksum", err)
	}
	if got := binary.BigEndian.Uint32(sum[:]); got != want {
		return snapErr("checksum %08x, computed %08x", got, want)
	}
	if _, err := sr.r.ReadByte(); err != io.EOF {
		return snapErr("unexpected data after the checksum")
	}
	return nil
}

func snapErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrSnapshot, fmt.Sprintf(format, args...))
}

func truncated(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return snapErr("truncated in %s", what)
	}
	return snapErr("reading %s: %v", what, err)
}

// readSnapshot decodes and validates a whole snapshot into a new state,
// handing each message's body and attributes to put, which stores them
// under a new body id. It touches nothing else shared, so a rejected
// snapshot leaves the FSM as it was (and the caller removes what put
// stored).
func readSnapshot(in io.Reader, put func(body []byte, attrs []*fsmpb.Attribute) (bodyRef, error)) (*restored, error) {
	sr := &snapReader{r: bufio.NewReaderSize(in, 1<<16), crc: crc32.New(castagnoli)}
	hdr, err := sr.full(len(snapshotMagic) + 4)
	if err != nil {
		return nil, truncated("header", err)
	}
	if string(hdr[:len(snapshotMagic)]) != snapshotMagic {
		return nil, snapErr("bad magic %q, want %q", hdr[:len(snapshotMagic)], snapshotMagic)
	}
	switch v := binary.BigEndian.Uint32(hdr[len(snapshotMagic):]); {
	case v == snapshotVersion && put == nil:
		return nil, snapErr("version 1 carries its bodies, where a store checkpoint was expected")
	case v == checkpointVersion && put != nil:
		return nil, snapErr("version 2 refers to a store checkpoint that this restore does not have")
	case v == segmentVersion:
		return nil, snapErr("version %d keeps its records in segment files beside it: read it through the snapshot store that wrote it", v)
	case v != snapshotVersion && v != checkpointVersion:
		return nil, snapErr("version %d, this release reads versions %d and %d", v, snapshotVersion, checkpointVersion)
	}
	b := newBuilder(put)
	var count uint64
	for {
		n, err := binary.ReadUvarint(sr)
		if err != nil {
			return nil, truncated(fmt.Sprintf("length of record %d", count+1), err)
		}
		if n == 0 {
			break
		}
		if n > maxSnapshotRecord {
			return nil, snapErr("record %d is %d bytes, limit is %d", count+1, n, maxSnapshotRecord)
		}
		data, err := sr.full(int(n))
		if err != nil {
			return nil, truncated(fmt.Sprintf("record %d", count+1), err)
		}
		count++
		if body, ok := messageRecord(data); ok && b.q != nil {
			d, err := decodeSnapMessage(body)
			if err == nil {
				err = b.message(d)
			}
			if err != nil {
				return nil, snapErr("record %d: %v", count, err)
			}
			continue
		}
		if id, msgID, ok := dedupRecord(data); ok && b.state && b.q != nil {
			if err := b.dedup(id, msgID); err != nil {
				return nil, snapErr("record %d: %v", count, err)
			}
			continue
		}
		rec := new(fsmpb.SnapshotRecord)
		if err := proto.Unmarshal(data, rec); err != nil {
			return nil, snapErr("record %d: %v", count, err)
		}
		if err := b.add(rec); err != nil {
			return nil, snapErr("record %d: %v", count, err)
		}
	}
	if err := sr.trailer(count); err != nil {
		return nil, err
	}
	return b.finish()
}

// builder assembles and validates restored state record by record.
type builder struct {
	state    bool
	now      int64
	applied  uint64
	nextBody uint64 // version 2: above every body id referred to
	queues   *btree.BTreeG[*queue]
	q        *queue
	phase    int // within a queue: 0 messages, 1 dedup entries, 2 replay entries
	lastID   uint64
	lastKey  string
	put      func(body []byte, attrs []*fsmpb.Attribute) (bodyRef, error)
}

func newBuilder(put func([]byte, []*fsmpb.Attribute) (bodyRef, error)) *builder {
	return &builder{queues: newQueueTree(), put: put}
}

func (b *builder) add(rec *fsmpb.SnapshotRecord) error {
	if !b.state {
		st := rec.GetState()
		if st == nil {
			return errors.New("first record is not the state record")
		}
		if st.GetNowUnixNano() < 0 || st.GetNowUnixNano() > MaxNow {
			return fmt.Errorf("now %d out of range 0 to %d", st.GetNowUnixNano(), MaxNow)
		}
		b.state, b.now, b.applied = true, st.GetNowUnixNano(), st.GetAppliedIndex()
		if b.put == nil {
			if b.nextBody = st.GetNextBodyId(); b.nextBody < 1 {
				return errors.New("version 2 state record without a next body id")
			}
		}
		return nil
	}
	switch r := rec.GetRecord().(type) {
	case *fsmpb.SnapshotRecord_Queue:
		return b.queue(r.Queue)
	case *fsmpb.SnapshotRecord_Message:
		if b.q == nil {
			return errors.New("message before any queue")
		}
		return b.message(toMessage(r.Message))
	case *fsmpb.SnapshotRecord_Dedup:
		if b.q == nil {
			return errors.New("dedup entry before any queue")
		}
		return b.dedup(r.Dedup.GetDedupId(), r.Dedup.GetMessageId())
	case *fsmpb.SnapshotRecord_Replay:
		if b.q == nil {
			return errors.New("replay entry before any queue")
		}
		return b.replay(r.Replay)
	case *fsmpb.SnapshotRecord_Segment:
		return errors.New("a segment reference, which only a node's own snapshot index holds (version 3): open it through its snapshot store")
	default:
		return fmt.Errorf("unexpected record type %T", r)
	}
}

func (b *builder) queue(sq *fsmpb.SnapshotQueue) error {
	if err := checkQueueName("queue name", sq.GetName()); err != nil {
		return err
	}
	if b.q != nil && sq.GetName() <= b.q.name {
		return fmt.Errorf("queue %q after %q: not in name order", sq.GetName(), b.q.name)
	}
	if err := b.checkCounters(); err != nil {
		return err
	}
	s, err := defaultSettings().merge(sq.GetName(), sq.GetSettings())
	if err != nil {
		return fmt.Errorf("queue %q: %v", sq.GetName(), err)
	}
	if sq.GetNextId() < 1 || sq.GetDedupCursor() < 1 || sq.GetDedupCursor() > sq.GetNextId() {
		return fmt.Errorf("queue %q: next id %d, dedup cursor %d out of range", sq.GetName(), sq.GetNextId(), sq.GetDedupCursor())
	}
	q := newQueue(sq.GetName(), sq.GetCreatedAtUnixNano(), s)
	q.nextID, q.dedupCursor = sq.GetNextId(), sq.GetDedupCursor()
	c := sq.GetCounters()
	q.counters = counters{
		enqueued: c.GetEnqueuedTotal(), acked: c.GetAckedTotal(), redelivered: c.GetRedeliveredTotal(),
		dedupHits: c.GetDedupHitsTotal(), expired: c.GetExpiredTotal(), deadLettered: c.GetDeadLetteredTotal(),
		delivered: c.GetDeliveredTotal(), purged: c.GetPurgedTotal(), redriven: c.GetRedrivenTotal(),
	}
	b.queues.Set(q)
	b.q, b.phase, b.lastID, b.lastKey = q, 0, 0, ""
	return nil
}

// toMessage converts a decoded SnapshotMessage; checkMessageRecord
// validates it.
func toMessage(sm *fsmpb.SnapshotMessage) decoded {
	fa := fate{state: sm.GetFate(), queue: sm.GetMovedToQueue(), id: sm.GetMovedToId()}
	return decoded{
		m: &message{
			id: sm.GetId(), enqueuedAt: sm.GetEnqueuedAtUnixNano(), at: sm.GetAtUnixNano(),
			dedupID: sm.GetDedupId(), attempt: sm.GetAttempt(), index: sm.GetChangedIndex(),
			ext: (&extra{dead: sm.GetDeadLetter(), nackReason: sm.GetLastNackReason(), consumer: sm.GetConsumer(), fate: fa.orNil(),
				firstEnqueued: sm.GetFirstEnqueuedAtUnixNano(), group: sm.GetGroup()}).orNil(),
		},
		flags: sm.GetFlags(),
		body:  sm.GetBody(),
		attrs: sm.GetAttributes(),
		ref:   bodyRef{id: sm.GetBodyId(), size: sm.GetBodySize(), crc: sm.GetBodyCrc()},
	}
}

// checkMessageRecord validates a restored record and sets its flags.
func checkMessageRecord(d decoded, nextID uint64) error {
	m, f := d.m, d.flags
	if m.id < 1 || m.id >= nextID {
		return fmt.Errorf("message id %d out of range 1 to %d", m.id, nextID-1)
	}
	if f&^flagMask != 0 {
		return fmt.Errorf("message %d: unknown flags %#x", m.id, f)
	}
	deleted, ready, leased := f&flagDeleted != 0, f&flagReady != 0, f&flagLeased != 0
	acked, rejected, dead := f&flagAcked != 0, f&flagRejected != 0, f&flagDead != 0
	waiting := f&flagWaiting != 0
	if deleted && (ready || leased || len(d.body) > 0) || ready && leased || acked && !deleted || rejected && !deleted && !dead ||
		acked && rejected || dead && (deleted || ready || leased || f&flagDeadLetter != 0) ||
		waiting && (deleted || dead || ready || leased || m.attempt != 0) {
		return fmt.Errorf("message %d: inconsistent flags %#x", m.id, f)
	}
	if g := m.group(); g != "" {
		if p := limits.GroupProblem(g); p != "" {
			return fmt.Errorf("message %d: %s", m.id, p)
		}
		if deleted {
			return fmt.Errorf("message %d: a group on a removed message", m.id)
		}
	} else if waiting {
		return fmt.Errorf("message %d: waiting without a group", m.id)
	}
	for i, a := range d.attrs {
		if err := limits.AttributeProblem(a.GetKey(), a.GetValue()); err != "" {
			return fmt.Errorf("message %d: attribute %d: %s", m.id, i, err)
		}
	}
	if p := limits.ConsumerProblem(m.consumer()); p != "" {
		return fmt.Errorf("message %d: %s", m.id, p)
	}
	if m.consumer() != "" && (deleted || dead) {
		return fmt.Errorf("message %d: consumer on a message that is not live", m.id)
	}
	if fa := m.fate(); fa != nil {
		switch fa.state {
		case fsmpb.MessageState_MESSAGE_EXPIRED, fsmpb.MessageState_MESSAGE_PURGED:
			if fa.queue != "" || fa.id != 0 {
				return fmt.Errorf("message %d: %v with a destination", m.id, fa.state)
			}
		case fsmpb.MessageState_MESSAGE_DEAD_LETTERED, fsmpb.MessageState_MESSAGE_REDRIVEN:
			if p := limits.QueueNameProblem(fa.queue); p != "" || fa.id == 0 {
				return fmt.Errorf("message %d: %v to %q as id %d: %s", m.id, fa.state, fa.queue, fa.id, p)
			}
		default:
			return fmt.Errorf("message %d: fate %v unknown", m.id, fa.state)
		}
		if !deleted || acked {
			return fmt.Errorf("message %d: fate %v on a message that is not a removed one", m.id, fa.state)
		}
	}
	if e := m.ext; e != nil && (e.firstEnqueued < 0 || e.firstEnqueued > m.enqueuedAt) {
		return fmt.Errorf("message %d: first enqueued at %d, after its enqueue at %d or before 0", m.id, e.firstEnqueued, m.enqueuedAt)
	}
	if n := len(m.nackReason()); n > limits.MaxNackReason {
		return fmt.Errorf("message %d: nack reason is %d bytes, limit is %d", m.id, n, limits.MaxNackReason)
	}
	if d := m.dead(); d != nil {
		if f&(flagDeadLetter|flagDead) == 0 {
			return fmt.Errorf("message %d: dead-letter origin on a message that is no dead letter", m.id)
		}
		if p := limits.QueueNameProblem(d.GetSourceQueue()); p != "" {
			return fmt.Errorf("message %d: dead letter source: %s", m.id, p)
		}
		if n := max(len(d.GetLastNackReason()), len(d.GetRejectReason())); n > limits.MaxNackReason {
			return fmt.Errorf("message %d: dead letter reason is %d bytes, limit is %d", m.id, n, limits.MaxNackReason)
		}
		if _, ok := fsmpb.DeadLetterReason_name[int32(d.GetReason())]; !ok {
			return fmt.Errorf("message %d: dead letter reason %d unknown", m.id, d.GetReason())
		}
	}
	m.flags = uint8(f)
	return nil
}

// store puts a checked record's body and attributes into the store, or
// (version 2) takes its reference to them in the checkpoint; a tombstone
// has none.
func (b *builder) store(d decoded) error {
	if b.put == nil {
		switch {
		case len(d.body) > 0 || len(d.attrs) > 0:
			return fmt.Errorf("message %d: body or attributes inline in a version 2 snapshot", d.m.id)
		case d.m.is(flagDeleted) && d.ref != (bodyRef{}):
			return fmt.Errorf("message %d: a tombstone refers to a body", d.m.id)
		case d.ref.id >= b.nextBody:
			return fmt.Errorf("message %d: body id %d, not below the next body id %d", d.m.id, d.ref.id, b.nextBody)
		case d.ref.id == 0 && d.ref != (bodyRef{}):
			return fmt.Errorf("message %d: body size %d and CRC %08x without a body id", d.m.id, d.ref.size, d.ref.crc)
		}
		d.m.body = d.ref
		return nil
	}
	if d.ref != (bodyRef{}) {
		return fmt.Errorf("message %d: body reference in a version 1 snapshot", d.m.id)
	}
	if d.m.is(flagDeleted) {
		return nil
	}
	ref, err := b.put(d.body, d.attrs)
	d.m.body = ref
	return err
}

func (b *builder) message(d decoded) error {
	q, m := b.q, d.m
	if b.phase > 0 {
		return fmt.Errorf("queue %q: message after dedup or replay entries", q.name)
	}
	if err := checkMessageRecord(d, q.nextID); err != nil {
		return fmt.Errorf("queue %q: %v", q.name, err)
	}
	if err := b.store(d); err != nil {
		return err
	}
	if m.id <= b.lastID {
		return fmt.Errorf("queue %q: message %d after %d: not in id order", q.name, m.id, b.lastID)
	}
	b.lastID = m.id
	if m.is(flagDead) {
		q.msgs.Load(m)
		q.dead++
		return nil
	}
	if m.is(flagDeleted) {
		q.msgs.Load(m)
		q.tombs.Set(m)
		return nil
	}
	// Records come in id order, so the first of a group is its head,
	// which must not wait, and every later one must.
	if g := m.group(); g != "" {
		if *m.ext == (extra{group: g}) {
			m.ext = q.groupExt(g)
		}
		wait := q.joinGroup(g, m.id)
		switch {
		case wait && !m.is(flagWaiting):
			return fmt.Errorf("queue %q: message %d: group %q has a deliverable message before it, but it is not waiting", q.name, m.id, g)
		case !wait && m.is(flagWaiting):
			return fmt.Errorf("queue %q: message %d: first of group %q but waiting", q.name, m.id, g)
		}
	}
	q.msgs.Load(m)
	if m.is(flagWaiting) {
		q.waiting++
	} else if m.is(flagReady) {
		q.ready.add(m.id)
	} else {
		q.timed.Set(m)
		if m.is(flagLeased) {
			q.leased++
		}
	}
	if m.is(flagDeadLetter) {
		q.deadLetters++
	}
	return nil
}

// checkCounters refuses the queue just read if its counters do not add
// up to its records: every message enqueued into it (or moved into it as
// a dead letter) is live, dead, or gone in one of the counted ways. Apply
// keeps this true after every command, so a snapshot that breaks it was
// not written by one.
func (b *builder) checkCounters() error {
	q := b.q
	if q == nil {
		return nil
	}
	c := q.counters
	live := uint64(q.msgs.Len()) - q.dead - uint64(q.tombs.Len())
	sum, overflow := live, uint64(0)
	for _, v := range []uint64{q.dead, c.acked, c.expired, c.deadLettered, c.purged, c.redriven} {
		var carry uint64
		sum, carry = bits.Add64(sum, v, 0)
		overflow |= carry
	}
	if overflow != 0 || sum != c.enqueued {
		return fmt.Errorf("queue %q: enqueued total %d, but %d live + %d dead + %d acked + %d expired + %d dead-lettered + %d purged + %d redriven",
			q.name, c.enqueued, live, q.dead, c.acked, c.expired, c.deadLettered, c.purged, c.redriven)
	}
	return nil
}

func (b *builder) dedup(id string, msgID uint64) error {
	q := b.q
	if b.phase > 1 {
		return fmt.Errorf("queue %q: dedup entry after replay entries", q.name)
	}
	if id == "" || (b.phase == 1 && id <= b.lastKey) {
		return fmt.Errorf("queue %q: dedup id %q empty or not in order", q.name, id)
	}
	b.phase, b.lastKey = 1, id
	m, ok := q.msgs.Get(&message{id: msgID})
	if !ok || m.dedupID != id {
		return fmt.Errorf("queue %q: dedup id %q names message %d, which does not carry it", q.name, id, msgID)
	}
	// In key order (checked above): Load appends without a search.
	q.dedup.Load(m)
	return nil
}

func (b *builder) replay(sr *fsmpb.SnapshotReplay) error {
	q := b.q
	if sr.GetRequestId() == "" {
		return fmt.Errorf("queue %q: replay entry without request id", q.name)
	}
	e := &replayEntry{requestID: sr.GetRequestId(), at: sr.GetAtUnixNano(), outcomes: sr.GetOutcomes()}
	if q.replayAt.Len() > 0 {
		if last, _ := q.replayAt.Max(); !byReplayAt(last, e) {
			return fmt.Errorf("queue %q: replay entry %q not in time order", q.name, e.requestID)
		}
	}
	if _, dup := q.replay.Get(e); dup {
		return fmt.Errorf("queue %q: replay entry %q twice", q.name, e.requestID)
	}
	for _, o := range e.outcomes {
		if _, ok := fsmpb.AckOutcome_name[int32(o)]; !ok {
			return fmt.Errorf("queue %q: replay entry %q: unknown ack outcome %d", q.name, e.requestID, o)
		}
	}
	if len(sr.GetDeliveries()) > 0 && len(sr.GetReceipts()) > 0 || sr.GetAutoAck() && len(sr.GetDeliveries()) == 0 {
		return fmt.Errorf("queue %q: replay entry %q: deliveries %d, receipts %d, auto-ack %v",
			q.name, e.requestID, len(sr.GetDeliveries()), len(sr.GetReceipts()), sr.GetAutoAck())
	}
	// An auto-ack receive keeps its records. So did every receive in a
	// snapshot of an earlier release; of those only the receipts are kept
	// (see replayEntry).
	for _, sm := range sr.GetDeliveries() {
		d := toMessage(sm)
		m := d.m
		if err := checkMessageRecord(d, q.nextID); err != nil {
			return fmt.Errorf("queue %q: replay entry %q: %v", q.name, e.requestID, err)
		}
		if sr.GetAutoAck() {
			if err := b.store(d); err != nil {
				return err
			}
			e.autoAcked = append(e.autoAcked, m)
		} else {
			e.receipts = append(e.receipts, replayReceipt{id: m.id, attempt: m.attempt})
		}
	}
	for _, r := range sr.GetReceipts() {
		if r.GetMessageId() < 1 || r.GetMessageId() >= q.nextID || r.GetAttempt() < 1 || r.GetQueue() != "" {
			return fmt.Errorf("queue %q: replay entry %q: receipt %v: id out of range 1 to %d, attempt 0 or a queue name",
				q.name, e.requestID, r, q.nextID-1)
		}
		e.receipts = append(e.receipts, replayReceipt{id: r.GetMessageId(), attempt: r.GetAttempt()})
	}
	b.phase = 2
	q.replay.Set(e)
	q.replayAt.Set(e)
	return nil
}

// restored is a state read from a snapshot, ready to be swapped in.
type restored struct {
	queues   *btree.BTreeG[*queue]
	now      int64
	applied  uint64
	nextBody uint64 // version 2
}

func (b *builder) finish() (*restored, error) {
	if !b.state {
		return nil, snapErr("no state record")
	}
	if err := b.checkCounters(); err != nil {
		return nil, snapErr("%v", err)
	}
	return &restored{queues: b.queues, now: b.now, applied: b.applied, nextBody: b.nextBody}, nil
}

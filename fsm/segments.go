package fsm

import (
	"bufio"
	"container/heap"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/tidwall/btree"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// Segments keep a snapshot's cost independent of the backlog. A node's
// own snapshot (version 3, into a SegmentSink) writes each queue's
// message records not into the index but into segment files beside it,
// one per chunk of 1<<segmentShift ids, and the index refers to them
// (SnapshotSegment). A chunk that no command changed since the last
// snapshot is linked from that snapshot's files instead of written
// again, so a snapshot writes what changed since the last one: a
// consumer outage that leaves a million messages waiting costs each
// snapshot a link per chunk, not a rewrite of the million.
//
// Which chunks changed: every command that sets or drops a record in a
// queue's msgs, or a dedup entry naming one, notes its change count
// (FSM.seq, one per command) under the record's chunk (queue.changed). A
// file is named after its queue's birth count (one per queue created or
// restored in the process, from the same counter), the chunk and that
// change count (0: unchanged since the queue was born), prefixed by the
// FSM's era (random per process), so equal names mean equal records: the
// same chunk of the same queue, unchanged since the file was written. A
// command that fails after touching a clone may leave a newer count
// behind; that only costs a rewrite.
//
// What leaves the node is version 2: SpliceSegments streams the index
// with each reference replaced by its file's records, so raft's
// InstallSnapshot, a backup and a restore read the format every release
// reads, and no file of one node is ever named on another.

// segmentShift: a chunk is 1<<segmentShift ids (16,384). A variable so
// that a test can make chunks of a few ids.
var segmentShift = segmentShiftDefault

const (
	segmentShiftDefault = 14
	// segmentVersion: an index whose message records are in segment
	// files beside it.
	segmentVersion = 3
	// recordSegmentField is SnapshotRecord.segment's field number.
	recordSegmentField = 6
)

// SegmentSink is a CheckpointSink that keeps segment files beside the
// index.
type SegmentSink interface {
	CheckpointSink
	// CreateSegment creates the segment file name in this snapshot; the
	// file is durable once the writer's Close returns nil.
	CreateSegment(name string) (io.WriteCloser, error)
	// LinkSegment makes the segment file name of an earlier snapshot
	// part of this one. It reports false when no snapshot holds it.
	LinkSegment(name string) bool
}

// segKey names a chunk's records as one command left them.
type segKey struct{ born, chunk, change uint64 }

// segFile is a segment file as its reference describes it.
type segFile struct {
	name    string
	records uint64
	size    uint64
	crc     uint32
}

func (f segFile) ref(dedup bool) *fsmpb.SnapshotRecord {
	return &fsmpb.SnapshotRecord{Record: &fsmpb.SnapshotRecord_Segment{Segment: &fsmpb.SnapshotSegment{
		Name: f.name, Records: f.records, Size: f.size, Crc32C: f.crc, Dedup: dedup,
	}}}
}

// chunkFiles are the files of one chunk: its message records, and the
// dedup entries naming them (none: no file).
type chunkFiles struct{ msgs, dedup segFile }

// segmentCache holds the files of the last snapshot persisted with
// segments, which the next one may link, and the records they hold.
type segmentCache struct {
	mu      sync.Mutex
	era     string
	files   map[segKey]chunkFiles
	records uint64
}

func (c *segmentCache) get() (string, map[segKey]chunkFiles) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.era == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		c.era = hex.EncodeToString(b[:])
	}
	return c.era, c.files
}

func (c *segmentCache) set(files map[segKey]chunkFiles) {
	var n uint64
	for _, f := range files {
		n += f.msgs.records + f.dedup.records
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.files, c.records = files, n
}

// SegmentRecords returns the message records and dedup entries in the
// segment files of the last snapshot persisted with them (0 before the
// first), and those the state holds now. Once the first is much larger,
// the snapshot keeps on disk what the state has dropped (tombstones past
// the dedup window, say), and a new snapshot gives that space back.
func (f *FSM) SegmentRecords() (snapshot, now uint64) {
	f.segs.mu.Lock()
	snapshot = f.segs.records
	f.segs.mu.Unlock()
	f.mu.RLock()
	defer f.mu.RUnlock()
	f.queues.Scan(func(q *queue) bool {
		now += uint64(q.msgs.Len() + q.dedup.Len())
		return true
	})
	return snapshot, now
}

// touch notes that the command in progress changed a record of the chunk
// of id, or a dedup entry naming it.
func (q *queue) touch(id uint64) {
	if q.changed == nil {
		q.changed = make(map[uint64]uint64)
	}
	q.changed[id>>segmentShift] = q.seq
}

// setDedup makes m the dedup entry of its dedup ID.
func (q *queue) setDedup(m *message) {
	if prev, replaced := q.dedup.SetHint(m, &q.dedupHint); replaced && prev.id != m.id {
		q.touch(prev.id)
	}
}

// frozenChanges returns a copy of q.changed for a snapshot view, and
// forgets, in q, the chunks below its lowest record: they hold nothing.
func (q *queue) frozenChanges() map[uint64]uint64 {
	if low, ok := q.msgs.Min(); ok {
		for c := range q.changed {
			if c < low.id>>segmentShift {
				delete(q.changed, c)
			}
		}
	}
	return maps.Clone(q.changed)
}

// segWriter writes the message records and dedup entries of a version-3
// snapshot into segment files.
type segWriter struct {
	sink SegmentSink
	era  string
	old  map[segKey]chunkFiles
	new  map[segKey]chunkFiles
}

// link links the files of an unchanged chunk into the snapshot.
func (sg *segWriter) link(f chunkFiles) bool {
	return sg.sink.LinkSegment(f.msgs.name) && (f.dedup.name == "" || sg.sink.LinkSegment(f.dedup.name))
}

// queue writes q's message records and dedup entries as segment
// references, linking the files of unchanged chunks and writing the
// others.
func (sg *segWriter) queue(sw *snapWriter, q *queue) error {
	var dedups []segFile
	it := q.msgs.Iter()
	defer it.Release()
	ok := it.First()
	for ok {
		chunk := it.Item().id >> segmentShift
		// change 0: unchanged since the queue was born (a count is never
		// 0); born is the queue's own, so keys of two queues differ.
		key := segKey{born: q.born, chunk: chunk, change: q.changed[chunk]}
		f, reuse := sg.old[key]
		if reuse && sg.link(f) {
			next := (chunk + 1) << segmentShift
			ok = next != 0 && it.Seek(&message{id: next})
		} else {
			var err error
			if f, ok, err = sg.write(sw, q, &it, key); err != nil {
				return err
			}
		}
		sg.new[key] = f
		if err := sw.record(f.msgs.ref(false)); err != nil {
			return err
		}
		if f.dedup.name != "" {
			dedups = append(dedups, f.dedup)
		}
	}
	for _, f := range dedups {
		if err := sw.record(f.ref(true)); err != nil {
			return err
		}
	}
	return nil
}

// write writes the records of key's chunk, starting at it's item, and
// the dedup entries naming them into new segment files, and reports
// whether it stopped at an item of a later chunk.
func (sg *segWriter) write(sw *snapWriter, q *queue, it *btree.IterG[*message], key segKey) (chunkFiles, bool, error) {
	name := fmt.Sprintf("%s-%x-%x-%x", sg.era, key.born, key.chunk, key.change)
	var entries []*message
	ok := true
	f, err := sg.file(name, func(w io.Writer) (uint64, error) {
		var n uint64
		for ok && it.Item().id>>segmentShift == key.chunk {
			m := it.Item()
			rec, err := sw.framedMessage(m)
			if err != nil {
				return n, err
			}
			if _, err := w.Write(rec); err != nil {
				return n, err
			}
			n++
			if m.dedupID != "" && m.id >= q.dedupCursor {
				if cur, found := q.dedup.GetHint(m, &q.dedupHint); found && cur.id == m.id {
					entries = append(entries, m)
				}
			}
			ok = it.Next()
		}
		return n, nil
	})
	if err != nil || len(entries) == 0 {
		return chunkFiles{msgs: f}, ok, err
	}
	slices.SortFunc(entries, func(a, b *message) int { return strings.Compare(a.dedupID, b.dedupID) })
	d, err := sg.file(name+"-dedup", func(w io.Writer) (uint64, error) {
		for _, m := range entries {
			rec, err := sw.framedRecord(&fsmpb.SnapshotRecord{Record: &fsmpb.SnapshotRecord_Dedup{Dedup: &fsmpb.SnapshotDedup{DedupId: m.dedupID, MessageId: m.id}}})
			if err != nil {
				return 0, err
			}
			if _, err := w.Write(rec); err != nil {
				return 0, err
			}
		}
		return uint64(len(entries)), nil
	})
	return chunkFiles{msgs: f, dedup: d}, ok, err
}

// file creates the segment file name and fills it with fill, which
// returns the number of records it wrote.
func (sg *segWriter) file(name string, fill func(io.Writer) (uint64, error)) (segFile, error) {
	f := segFile{name: name}
	out, err := sg.sink.CreateSegment(name)
	if err != nil {
		return f, fmt.Errorf("segment %s: %w", name, err)
	}
	crc := crc32.New(castagnoli)
	cw := &countWriter{w: io.MultiWriter(out, crc)}
	w := bufio.NewWriterSize(cw, 1<<16)
	f.records, err = fill(w)
	if err == nil {
		err = w.Flush()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return f, fmt.Errorf("segment %s: %w", name, err)
	}
	f.size, f.crc = cw.n, crc.Sum32()
	return f, nil
}

type countWriter struct {
	w io.Writer
	n uint64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += uint64(n)
	return n, err
}

// IsSegmented reports whether an index begins with the header of version
// 3, whose message records are in segment files (SpliceSegments).
func IsSegmented(header []byte) bool {
	return len(header) >= len(snapshotMagic)+4 && string(header[:len(snapshotMagic)]) == snapshotMagic &&
		binary.BigEndian.Uint32(header[len(snapshotMagic):]) == segmentVersion
}

// SpliceSegments returns the version-2 stream of the version-3 index
// read from index: each segment reference replaced by the records of the
// file open returns for it, the record count and the checksum computed
// anew. The index's own checksum and each file's size and checksum are
// checked as they are read; a mismatch ends the stream with an error
// wrapping ErrSnapshot. Closing the reader stops the splice; the caller
// closes index.
func SpliceSegments(index io.Reader, open func(name string) (io.ReadCloser, error)) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		w := bufio.NewWriterSize(pw, 1<<16)
		err := splice(index, open, w)
		// What was spliced before an error goes out first, so that the
		// reader's error comes where the stream broke.
		if ferr := w.Flush(); err == nil {
			err = ferr
		}
		pw.CloseWithError(err)
	}()
	return pr
}

// SplicedSize returns the size of the stream SpliceSegments makes of the
// version-3 index read from index, reading it to its end.
func SplicedSize(index io.Reader) (int64, error) {
	var size int64
	err := splice(index, nil, writerFunc(func(b []byte) (int, error) {
		size += int64(len(b))
		return len(b), nil
	}))
	return size, err
}

// CheckSegments reads the version-3 index read from index and the
// segment files open returns, checking each as SpliceSegments would.
func CheckSegments(index io.Reader, open func(name string) (io.ReadCloser, error)) error {
	return splice(index, open, io.Discard)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// splice writes the version-2 stream of index to out. With open nil it
// writes, in place of each file's records, as many zero bytes as the
// reference gives its size (SplicedSize).
func splice(index io.Reader, open func(string) (io.ReadCloser, error), out io.Writer) error {
	sr := &snapReader{r: bufio.NewReaderSize(index, 1<<16), crc: crc32.New(castagnoli)}
	crc := crc32.New(castagnoli)
	w := io.MultiWriter(out, crc)
	hdr, err := sr.full(len(snapshotMagic) + 4)
	if err != nil {
		return truncated("header", err)
	}
	if !IsSegmented(hdr) {
		return snapErr("not a version-%d index", segmentVersion)
	}
	hdr = binary.BigEndian.AppendUint32([]byte(snapshotMagic), checkpointVersion)
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	var read, written uint64
	var lenBuf []byte
	// dedups: the dedup segments of the queue being read, merged by key
	// before the record after them.
	var dedups []*fsmpb.SnapshotSegment
	mergeDedups := func() error {
		if len(dedups) == 0 {
			return nil
		}
		var err error
		if open == nil {
			for _, seg := range dedups {
				if err = copySegment(seg, nil, w); err != nil {
					break
				}
			}
		} else {
			err = mergeSegments(dedups, open, w)
		}
		dedups = dedups[:0]
		return err
	}
	for {
		n, err := binary.ReadUvarint(sr)
		if err != nil {
			return truncated(fmt.Sprintf("length of record %d", read+1), err)
		}
		if n == 0 {
			break
		}
		if n > maxSnapshotRecord {
			return snapErr("record %d is %d bytes, limit is %d", read+1, n, maxSnapshotRecord)
		}
		data, err := sr.full(int(n))
		if err != nil {
			return truncated(fmt.Sprintf("record %d", read+1), err)
		}
		read++
		if num, _, _ := protowire.ConsumeTag(data); num != recordSegmentField {
			if err := mergeDedups(); err != nil {
				return err
			}
			lenBuf = binary.AppendUvarint(lenBuf[:0], n)
			if _, err := w.Write(lenBuf); err != nil {
				return err
			}
			if _, err := w.Write(data); err != nil {
				return err
			}
			written++
			continue
		}
		rec := new(fsmpb.SnapshotRecord)
		if err := proto.Unmarshal(data, rec); err != nil || rec.GetSegment() == nil {
			return snapErr("record %d: not a segment reference: %v", read, err)
		}
		seg := rec.GetSegment()
		if seg.GetDedup() {
			dedups = append(dedups, seg)
		} else {
			if len(dedups) > 0 {
				return snapErr("record %d: message segment after dedup segments", read)
			}
			if err := copySegment(seg, open, w); err != nil {
				return err
			}
		}
		written += seg.GetRecords()
	}
	if err := mergeDedups(); err != nil {
		return err
	}
	if err := sr.trailer(read); err != nil {
		return err
	}
	trailer := binary.AppendUvarint(nil, 0)
	trailer = binary.BigEndian.AppendUint64(trailer, written)
	if _, err := w.Write(trailer); err != nil {
		return err
	}
	_, err = out.Write(binary.BigEndian.AppendUint32(nil, crc.Sum32()))
	return err
}

// mergeSegments writes the dedup entries of segs' files into w in key
// order, checking each file as copySegment does.
func mergeSegments(segs []*fsmpb.SnapshotSegment, open func(string) (io.ReadCloser, error), w io.Writer) error {
	srcs := make([]*dedupSource, 0, len(segs))
	defer func() {
		for _, s := range srcs {
			s.f.Close()
		}
	}()
	for _, seg := range segs {
		f, err := open(seg.GetName())
		if err != nil {
			return &SegmentError{Name: seg.GetName(), Err: snapErr("%v", err)}
		}
		s := &dedupSource{seg: seg, f: f, crc: crc32.New(castagnoli)}
		s.r = bufio.NewReaderSize(io.TeeReader(io.LimitReader(f, int64(seg.GetSize())+1), s.crc), 4096)
		srcs = append(srcs, s)
		if err := s.next(); err != nil {
			return err
		}
	}
	h := dedupHeap(slices.DeleteFunc(slices.Clone(srcs), func(s *dedupSource) bool { return s.rec == nil }))
	heap.Init(&h)
	var last string
	for h.Len() > 0 {
		s := h[0]
		if s.key <= last && last != "" {
			return &SegmentError{Name: s.seg.GetName(), Err: snapErr("dedup id %q after %q: not in key order", s.key, last)}
		}
		last = s.key
		if _, err := w.Write(s.rec); err != nil {
			return err
		}
		if err := s.next(); err != nil {
			return err
		}
		if s.rec == nil {
			heap.Pop(&h)
		} else {
			heap.Fix(&h, 0)
		}
	}
	return nil
}

// dedupSource reads the framed dedup records of one segment file.
type dedupSource struct {
	seg   *fsmpb.SnapshotSegment
	f     io.ReadCloser
	r     *bufio.Reader
	crc   hash.Hash32
	read  uint64 // records
	bytes uint64
	rec   []byte // the current framed record, nil at the end
	key   string
}

// next reads the next record, or checks the file at its end.
func (s *dedupSource) next() error {
	bad := func(format string, args ...any) error {
		return &SegmentError{Name: s.seg.GetName(), Err: snapErr(format, args...)}
	}
	if s.read == s.seg.GetRecords() {
		if _, err := s.r.ReadByte(); err != io.EOF {
			return bad("more than the %d records of its reference", s.read)
		}
		if s.bytes != s.seg.GetSize() || s.crc.Sum32() != s.seg.GetCrc32C() {
			return bad("%d bytes with CRC32C %08x, its reference says %d bytes with %08x", s.bytes, s.crc.Sum32(), s.seg.GetSize(), s.seg.GetCrc32C())
		}
		s.rec = nil
		return nil
	}
	n, err := binary.ReadUvarint(s.r)
	if err != nil || n == 0 || n > maxSnapshotRecord {
		return bad("record %d: length %d: %v", s.read+1, n, err)
	}
	l := uvarintLen(n)
	s.rec = binary.AppendUvarint(s.rec[:0], n)
	s.rec = append(s.rec, make([]byte, n)...)
	if _, err := io.ReadFull(s.r, s.rec[l:]); err != nil {
		return bad("record %d: %v", s.read+1, err)
	}
	id, _, ok := dedupRecord(s.rec[l:])
	if !ok {
		return bad("record %d is not a dedup entry", s.read+1)
	}
	s.key = id
	s.read++
	s.bytes += uint64(len(s.rec))
	return nil
}

func uvarintLen(n uint64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], n)
}

type dedupHeap []*dedupSource

func (h dedupHeap) Len() int           { return len(h) }
func (h dedupHeap) Less(i, j int) bool { return h[i].key < h[j].key }
func (h dedupHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dedupHeap) Push(x any)        { *h = append(*h, x.(*dedupSource)) }
func (h *dedupHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// SegmentError is a segment file that does not match its reference, or
// cannot be read.
type SegmentError struct {
	Name string
	Err  error
}

func (e *SegmentError) Error() string { return fmt.Sprintf("segment %s: %v", e.Name, e.Err) }
func (e *SegmentError) Unwrap() error { return e.Err }

// copySegment copies the file seg refers to into w, checking its size and
// checksum; with open nil it writes seg's size in zero bytes.
func copySegment(seg *fsmpb.SnapshotSegment, open func(string) (io.ReadCloser, error), w io.Writer) error {
	if open == nil {
		_, err := io.CopyN(w, zeros{}, int64(seg.GetSize()))
		return err
	}
	bad := func(format string, args ...any) error {
		return &SegmentError{Name: seg.GetName(), Err: snapErr(format, args...)}
	}
	f, err := open(seg.GetName())
	if err != nil {
		return bad("%v", err)
	}
	defer f.Close()
	crc := crc32.New(castagnoli)
	n, err := io.Copy(io.MultiWriter(w, crc), io.LimitReader(f, int64(seg.GetSize())+1))
	if err != nil {
		return bad("%v", err)
	}
	if uint64(n) != seg.GetSize() || crc.Sum32() != seg.GetCrc32C() {
		return bad("%d bytes with CRC32C %08x, its reference says %d bytes with %08x", n, crc.Sum32(), seg.GetSize(), seg.GetCrc32C())
	}
	return nil
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

package cluster

import (
	"bytes"
	"encoding/binary"
	"math"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
)

// bodyBufferBytes is the default bound of a node's body buffer
// (Config.BodyCacheBytes).
const bodyBufferBytes = 32 << 20

// Body buffer chunks: a chunk is sealed once it holds bufChunkEntries
// bodies or bufChunkBytes of them (an eighth of the bound if that is
// less, so that a chunk whose bodies are all acked leaves long before the
// bound), and a flush writes one chunk as one pebble batch.
const (
	bufChunkEntries = 2048
	bufChunkBytes   = 1 << 20
)

// bodyBuffer holds the bodies a node stored last, before they reach pebble
// (cluster/DESIGN.md, "Bodies written behind"). Every body the FSM stores
// goes here first, in the order of its id, and reaches pebble only when
// the buffer passes its bound or a checkpoint needs it: a message acked
// while its body is still here costs pebble nothing, no write and no
// tombstone, and the FSM's goroutine never waits for a memtable insert.
// Receives and views read from here first, so it is the leader's cache of
// fresh bodies too.
//
// Crash safety: a body in the buffer came from a log entry that is still
// in the log (the entries after the newest snapshot: a snapshot's
// checkpoint writes the buffer into pebble first), and the store is
// rebuilt from the newest snapshot and the log at every start anyway.
//
// A body is in the buffer or in pebble, never in both, except while a
// flush writes its chunk: the chunk stays in the buffer until its write
// is committed, and the bodies deleted meanwhile are deleted in pebble by
// the flush, after its write and before the chunk leaves the buffer.
//
// Deletes mark entries with the buffer's delete sequence instead of
// removing them, so that a view sees the bodies as they were when it was
// taken; a chunk leaves the buffer whole, flushed or once all its bodies
// are deleted, and a view keeps the chunks it saw.
type bodyBuffer struct {
	max int // bytes; 0: no buffer, every body goes to pebble at once
	// bound is what it holds now: max on the leader, which serves
	// receives from it, half of it on a follower (setLeading).
	bound atomic.Int64

	mu     sync.RWMutex
	chunks []*bufChunk // ascending ids; only the last one grows
	bytes  int         // value bytes of the chunks held, deleted ones included
	seq    int64       // deletes marked so far
	lastID uint64      // the highest id appended
	// pebbleMax bounds the body ids pebble may hold: a range delete above
	// it need not reach pebble. Flushes and bodies too large for the
	// buffer raise it; an adopted store sets it to the top until the
	// restore's sweep of the ids above its snapshot.
	pebbleMax uint64
}

// bufEntry is one body. del is 0 while it is live, else the buffer's seq
// just after the delete that marked it.
type bufEntry struct {
	id    uint64
	value []byte
	del   int64
}

type bufChunk struct {
	// entries has a fixed capacity and is only appended to: a view reads
	// the prefix it saw while the chunk grows.
	entries []bufEntry
	bytes   int
	live    int
	sealed  bool // takes no more bodies
	// flushing: a flush is writing the chunk's live bodies to pebble
	// (under bodyStore.flushMu), and deletes them there again if they are
	// deleted meanwhile.
	flushing bool
}

func newBodyBuffer(max int) *bodyBuffer {
	b := &bodyBuffer{max: max}
	b.setLeading(false)
	return b
}

// setLeading sets the bound for a leader or a follower. A follower reads
// no body for a receive, so its buffer only spares pebble the bodies
// acked soon, and half the leader's does that for all but the slowest
// consumers.
func (b *bodyBuffer) setLeading(leading bool) {
	if leading {
		b.bound.Store(int64(b.max))
	} else {
		b.bound.Store(int64(b.max / 2))
	}
}

// storeBodyKey is the store's key of body id: 'b' and the id big-endian
// (fsm's bodyKey).
func storeBodyKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{'b'}, id)
}

// bodyKeyID returns the id of a body key ('b' and the id big-endian).
func bodyKeyID(key []byte) (uint64, bool) {
	if len(key) != 9 || key[0] != 'b' {
		return 0, false
	}
	return binary.BigEndian.Uint64(key[1:]), true
}

// bodyRangeIDs returns the ids [from, to) of a range delete of body keys.
// An end past every body key (the FSM's 'c', a restore's sweep) is
// math.MaxUint64.
func bodyRangeIDs(from, end []byte) (lo, hi uint64, ok bool) {
	lo, ok = bodyKeyID(from)
	if !ok {
		if bytes.Compare(from, []byte{'b'}) > 0 {
			return 0, 0, false
		}
		lo = 0
	}
	if hi, ok = bodyKeyID(end); ok {
		return lo, hi, true
	}
	if bytes.Compare(end, []byte{'b' + 1}) >= 0 {
		return lo, math.MaxUint64, true
	}
	return 0, 0, false
}

// add appends a body; false if the buffer takes none or the id is not
// above every id it holds (the caller writes it to pebble then).
func (b *bodyBuffer) add(id uint64, value []byte) bool {
	if b.max <= 0 || len(value) > b.max/8 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if id <= b.lastID {
		return false
	}
	var c *bufChunk
	if n := len(b.chunks); n > 0 {
		c = b.chunks[n-1]
	}
	if c == nil || c.sealed {
		c = &bufChunk{entries: make([]bufEntry, 0, bufChunkEntries)}
		b.chunks = append(b.chunks, c)
	}
	c.entries = append(c.entries, bufEntry{id: id, value: value})
	c.bytes += len(value)
	c.live++
	if len(c.entries) == cap(c.entries) || c.bytes >= min(bufChunkBytes, int(b.bound.Load())/8) {
		c.sealed = true
	}
	b.bytes += len(value)
	b.lastID = id
	return true
}

// over reports whether the buffer holds more than factor times its bound.
func (b *bodyBuffer) over(factor int) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.max > 0 && int64(b.bytes) > int64(factor)*b.bound.Load()
}

// locate returns the chunk and entry of id among chunks, the last of which
// is read up to n entries; nil if none holds it.
func locate(chunks []*bufChunk, n int, id uint64) (*bufChunk, *bufEntry) {
	i := sort.Search(len(chunks), func(i int) bool {
		e := chunks[i].entries
		return len(e) > 0 && e[len(e)-1].id >= id
	})
	if i == len(chunks) {
		return nil, nil
	}
	c := chunks[i]
	entries := c.entries
	if i == len(chunks)-1 && n < len(entries) {
		entries = entries[:n]
	}
	j := sort.Search(len(entries), func(j int) bool { return entries[j].id >= id })
	if j == len(entries) || entries[j].id != id {
		return nil, nil
	}
	return c, &entries[j]
}

func (b *bodyBuffer) tailLen() int {
	if len(b.chunks) == 0 {
		return 0
	}
	return len(b.chunks[len(b.chunks)-1].entries)
}

// get returns a live body; held reports whether the buffer has the id at
// all (deleted or not), so that the caller need not look in pebble.
func (b *bodyBuffer) get(id uint64) (value []byte, live, held bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	_, e := locate(b.chunks, b.tailLen(), id)
	if e == nil {
		return nil, false, false
	}
	return e.value, e.del == 0, true
}

// markResult says what a delete found in the buffer.
type markResult struct {
	// held: every body it deleted was in the buffer (a flush that is
	// writing one deletes it in pebble after its write) or nowhere, so
	// the delete need not reach pebble.
	held bool
	// emptied: a chunk has no live body left.
	emptied bool
}

func (b *bodyBuffer) mark(c *bufChunk, e *bufEntry, r *markResult) {
	if e.del != 0 {
		return
	}
	e.del = b.seq
	c.live--
	r.emptied = r.emptied || c.live == 0
}

// markPoint marks the body id deleted.
func (b *bodyBuffer) markPoint(id uint64) markResult {
	var r markResult
	if b.max <= 0 {
		return r
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	c, e := locate(b.chunks, b.tailLen(), id)
	if e == nil {
		r.held = id > b.pebbleMax
		return r
	}
	r.held = true // a flush that is writing it deletes it after the write
	b.mark(c, e, &r)
	return r
}

// markRange marks the bodies lo <= id < hi deleted. A range to the top of
// the ids (a restore's sweep) that the caller deletes in pebble too
// (sweep) leaves pebble nothing from lo on.
func (b *bodyBuffer) markRange(lo, hi uint64, sweep bool) markResult {
	var r markResult
	if b.max <= 0 {
		return r
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	r.held = lo > b.pebbleMax
	if sweep && hi == math.MaxUint64 && lo > 0 {
		defer func() { b.pebbleMax = min(b.pebbleMax, lo-1) }()
	}
	i := sort.Search(len(b.chunks), func(i int) bool {
		e := b.chunks[i].entries
		return len(e) > 0 && e[len(e)-1].id >= lo
	})
	for ; i < len(b.chunks); i++ {
		c := b.chunks[i]
		if len(c.entries) == 0 || c.entries[0].id >= hi {
			break
		}
		j := sort.Search(len(c.entries), func(j int) bool { return c.entries[j].id >= lo })
		for ; j < len(c.entries) && c.entries[j].id < hi; j++ {
			b.mark(c, &c.entries[j], &r)
		}
	}
	return r
}

// wrote records a body that went to pebble without the buffer.
func (b *bodyBuffer) wrote(id uint64) {
	if b.max <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pebbleMax = max(b.pebbleMax, id)
}

// dropDeadLocked removes the chunks whose bodies are all deleted, but not
// those with a body deleted after pinSeq (a pending checkpoint's, -1 for
// none), which the checkpoint must still write. The caller holds b.mu. A
// view that holds a chunk still reads it.
func (b *bodyBuffer) dropDeadLocked(pinSeq int64) {
	kept := b.chunks[:0]
	for _, c := range b.chunks {
		if c.live == 0 && !c.flushing && (pinSeq < 0 || !slices.ContainsFunc(c.entries, func(e bufEntry) bool { return e.del > pinSeq })) {
			b.bytes -= c.bytes
			continue
		}
		kept = append(kept, c)
	}
	clear(b.chunks[len(kept):])
	b.chunks = kept
}

// flushWrite is a chunk a flush writes: the bodies it must write.
type flushWrite struct {
	c      *bufChunk
	bodies []bufEntry
}

// startFlush seals chunks for a flush and returns, for each, the bodies
// pebble must get: the live ones, and those deleted after pinSeq (a
// pending checkpoint's, -1 for none), whose deletes the checkpoint holds
// back. With force, the chunks that start at or below upTo; else, if the
// buffer is over its bound, the oldest chunks down to half of it, so
// that one flush writes a file of some size. The caller holds
// bodyStore.flushMu.
func (b *bodyBuffer) startFlush(force bool, upTo uint64, pinSeq int64) []flushWrite {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dropDeadLocked(pinSeq)
	bound := b.bound.Load()
	if !force && int64(b.bytes) <= bound {
		return nil
	}
	var ws []flushWrite
	left := int64(b.bytes)
	for _, c := range b.chunks {
		if force && c.entries[0].id > upTo || !force && left <= bound/2 {
			break
		}
		left -= int64(c.bytes)
		c.sealed, c.flushing = true, true
		b.pebbleMax = max(b.pebbleMax, c.entries[len(c.entries)-1].id)
		w := flushWrite{c: c}
		for _, e := range c.entries {
			if e.del == 0 || (pinSeq >= 0 && e.del > pinSeq) {
				w.bodies = append(w.bodies, e)
			}
		}
		ws = append(ws, w)
	}
	return ws
}

// endFlushLocked removes flushed chunks and returns the ids of the bodies
// the flush wrote that were deleted while it ran and whose deletes did
// not reach pebble: not held by a checkpoint pinned at pinSeq (-1: none).
// The caller deletes them in pebble before it lets go of b.mu.
func (b *bodyBuffer) endFlushLocked(ws []flushWrite, pinSeq int64) []uint64 {
	var gone []uint64
	for _, w := range ws {
		for _, e := range w.bodies {
			cur := w.c.entries[sort.Search(len(w.c.entries), func(j int) bool { return w.c.entries[j].id >= e.id })]
			if cur.del != 0 && cur.del != e.del && (pinSeq < 0 || cur.del <= pinSeq) {
				gone = append(gone, e.id)
			}
		}
		w.c.flushing = false
		if i := slices.Index(b.chunks, w.c); i >= 0 {
			b.chunks = slices.Delete(b.chunks, i, i+1)
			b.bytes -= w.c.bytes
		}
	}
	return gone
}

// abortFlush keeps chunks whose write failed.
func (b *bodyBuffer) abortFlush(ws []flushWrite) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, w := range ws {
		w.c.flushing = false
	}
}

// clear empties the buffer: an adopted store numbers its bodies otherwise.
func (b *bodyBuffer) clear() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.chunks, b.bytes, b.lastID, b.pebbleMax = nil, 0, 0, math.MaxUint64
}

// heldBytes returns the value bytes of the chunks the buffer holds.
func (b *bodyBuffer) heldBytes() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.bytes
}

// bufView is the buffer as a view saw it.
type bufView struct {
	b      *bodyBuffer
	chunks []*bufChunk
	n      int   // entries of the last chunk
	seq    int64 // deletes marked before the view
}

// viewLocked takes a view; the caller holds b.mu (read).
func (b *bodyBuffer) viewLocked() bufView {
	return bufView{b: b, chunks: append([]*bufChunk(nil), b.chunks...), n: b.tailLen(), seq: b.seq}
}

// get returns the body id as of the view; held reports whether the view's
// chunks have it (deleted or not).
func (v bufView) get(id uint64) (value []byte, live, held bool) {
	if len(v.chunks) == 0 {
		return nil, false, false
	}
	v.b.mu.RLock()
	defer v.b.mu.RUnlock()
	_, e := locate(v.chunks, v.n, id)
	if e == nil {
		return nil, false, false
	}
	return e.value, e.del == 0 || e.del > v.seq, true
}

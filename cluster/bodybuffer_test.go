package cluster

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func testBodyKey(id uint64) []byte { return binary.BigEndian.AppendUint64([]byte{'b'}, id) }

func testValue(id uint64, size int) []byte {
	v := bytes.Repeat([]byte{byte(id)}, size)
	binary.BigEndian.PutUint64(v, id)
	return v
}

func commitTo(t *testing.T, s *bodyStore, f func(b *bodyBatch)) {
	t.Helper()
	b := s.Batch().(*bodyBatch)
	defer b.Close()
	f(b)
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
}

// flushAll writes the whole buffer into pebble.
func flushAll(t *testing.T, s *bodyStore) {
	t.Helper()
	for {
		more, err := s.flush(true, math.MaxUint64)
		if err != nil {
			t.Fatal(err)
		}
		if !more {
			return
		}
	}
}

// pebbleIDs lists the body ids in pebble itself, past the buffer.
func pebbleIDs(t *testing.T, s *bodyStore) []uint64 {
	t.Helper()
	it, err := s.db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var ids []uint64
	for ok := it.First(); ok; ok = it.Next() {
		id, _ := bodyKeyID(it.Key())
		ids = append(ids, id)
	}
	return ids
}

// A consumer that keeps up acks bodies while they are still in the
// buffer: 20 MiB of bodies stored and deleted in FIFO order (range
// deletes, as the FSM writes an ack's consecutive ids) through a 1 MiB
// buffer reach pebble not at all: no memtable flush, no file, and the
// deletes leave nothing for the log budget's flush. The same load without
// the buffer flushes memtables into files.
func TestBodyBufferKeepsADrainOutOfPebble(t *testing.T) {
	run := func(buffer int) (flushes int64, tables int64, ids []uint64) {
		s, err := openBodyStoreWith(t.TempDir(), slog.New(slog.DiscardHandler), 1<<20, buffer)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		const batch, lag, size = 64, 256, 1024
		next, acked := uint64(1), uint64(1)
		for next < 20<<20/size {
			commitTo(t, s, func(b *bodyBatch) {
				for range batch {
					b.Set(testBodyKey(next), testValue(next, size))
					next++
				}
			})
			if next-acked > lag {
				commitTo(t, s, func(b *bodyBatch) {
					b.DeleteRange(testBodyKey(acked), testBodyKey(acked+batch))
					acked += batch
				})
			}
		}
		for id := acked; id < next; id++ {
			if v, ok, err := s.Get(testBodyKey(id)); err != nil || !ok || !bytes.Equal(v, testValue(id, size)) {
				t.Fatalf("buffer %d: body %d: found %v, err %v", buffer, id, ok, err)
			}
		}
		if err := s.flushDeletes(nil); err != nil {
			t.Fatal(err)
		}
		m := s.db.Metrics()
		for _, l := range m.Levels {
			tables += l.TablesCount
		}
		return m.Flush.Count, tables, pebbleIDs(t, s)
	}
	flushes, tables, ids := run(0)
	t.Logf("without the buffer: %d flushes, %d files, %d bodies in pebble", flushes, tables, len(ids))
	if flushes == 0 || tables == 0 {
		t.Fatalf("without the buffer the load flushed %d memtables into %d files: it does not load pebble", flushes, tables)
	}
	flushes, tables, ids = run(1 << 20)
	t.Logf("with a 1 MiB buffer: %d flushes, %d files, %d bodies in pebble", flushes, tables, len(ids))
	if flushes != 0 || tables != 0 || len(ids) != 0 {
		t.Fatalf("with the buffer a drain that keeps up flushed %d memtables into %d files and left %d bodies in pebble, want none", flushes, tables, len(ids))
	}
}

// Bodies past the buffer's bound go to pebble, oldest first; a view reads
// what was there when it was taken, also once those bodies were flushed
// or deleted since; a body deleted while buffered never reaches pebble,
// and one deleted once flushed is deleted there.
func TestBodyBufferViewsAndFlushes(t *testing.T) {
	s, err := openBodyStoreWith(t.TempDir(), slog.New(slog.DiscardHandler), 1<<20, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const size = 512
	commitTo(t, s, func(b *bodyBatch) {
		for id := uint64(1); id <= 300; id++ { // 150 KiB through 64 KiB
			b.Set(testBodyKey(id), testValue(id, size))
		}
	})
	for {
		if more, err := s.flush(false, 0); err != nil {
			t.Fatal(err)
		} else if !more {
			break
		}
	}
	inPebble := pebbleIDs(t, s)
	if len(inPebble) == 0 || inPebble[0] != 1 || slices.Contains(inPebble, 300) {
		t.Fatalf("past the bound pebble holds %d bodies (%v…), want the oldest and not the newest", len(inPebble), inPebble[:min(3, len(inPebble))])
	}
	if held := s.buf.heldBytes(); held > 64<<10 {
		t.Fatalf("the buffer holds %d bytes, over its bound of 64 KiB", held)
	}
	v, err := s.View()
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	commitTo(t, s, func(b *bodyBatch) {
		b.Delete(testBodyKey(10))  // flushed
		b.Delete(testBodyKey(250)) // buffered
		b.DeleteRange(testBodyKey(20), testBodyKey(30))
		b.DeleteRange(testBodyKey(260), testBodyKey(270))
	})
	deleted := func(id uint64) bool { return id == 10 || id == 250 || id >= 20 && id < 30 || id >= 260 && id < 270 }
	flushAll(t, s)
	for id := uint64(1); id <= 300; id++ {
		if got, ok, err := v.Get(testBodyKey(id)); err != nil || !ok || !bytes.Equal(got, testValue(id, size)) {
			t.Fatalf("view: body %d found %v (err %v), want it as it was when the view was taken", id, ok, err)
		}
		if _, ok, err := s.Get(testBodyKey(id)); err != nil || ok == deleted(id) {
			t.Fatalf("store: body %d found %v (err %v) after the deletes", id, ok, err)
		}
	}
	for _, id := range pebbleIDs(t, s) {
		if deleted(id) {
			t.Fatalf("body %d, deleted, is in pebble", id)
		}
	}
	if n := len(pebbleIDs(t, s)); n != 300-22 {
		t.Fatalf("pebble holds %d bodies after the buffer was written, want %d", n, 300-22)
	}
}

// While the flusher writes chunks on its own goroutine, random sets,
// point deletes and range deletes keep the store equal to a model, and
// once the buffer is written out, pebble holds exactly the live bodies:
// no delete reached pebble before the body it deletes.
func TestBodyBufferFlushesRaceNoDelete(t *testing.T) {
	s, err := openBodyStoreWith(t.TempDir(), slog.New(slog.DiscardHandler), 1<<20, 16<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := rand.New(rand.NewPCG(5, 6))
	live := map[uint64]bool{}
	next := uint64(1)
	for step := range 4000 {
		commitTo(t, s, func(b *bodyBatch) {
			for range r.IntN(6) {
				b.Set(testBodyKey(next), testValue(next, 64+r.IntN(900)))
				live[next] = true
				next++
			}
			for range r.IntN(3) {
				id := 1 + uint64(r.IntN(int(next)))
				if r.IntN(3) == 0 {
					end := id + uint64(1+r.IntN(20))
					b.DeleteRange(testBodyKey(id), testBodyKey(end))
					for i := id; i < end; i++ {
						delete(live, i)
					}
				} else {
					b.Delete(testBodyKey(id))
					delete(live, id)
				}
			}
		})
		if step%97 == 0 {
			for range 20 {
				id := 1 + uint64(r.IntN(int(next)))
				if _, ok, err := s.Get(testBodyKey(id)); err != nil || ok != live[id] {
					t.Fatalf("step %d: body %d found %v (err %v), live %v", step, id, ok, err, live[id])
				}
			}
		}
	}
	flushAll(t, s)
	got := pebbleIDs(t, s)
	want := make([]uint64, 0, len(live))
	for id := range live {
		want = append(want, id)
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("pebble holds %d bodies, the live ones are %d", len(got), len(want))
	}
}

// A delete of a body that a flush has chosen to write, but not yet
// written, does not hold the FSM up, and the body is deleted in pebble
// after that write, not before it (where the write would bring the body
// back), whether the write is a batch or an ingested file.
func TestBodyBufferDeleteDuringAFlush(t *testing.T) {
	for _, size := range []int{100, 200 << 10} { // 1 KiB in a batch, 2 MiB ingested
		s, err := openBodyStoreWith(t.TempDir(), slog.New(slog.DiscardHandler), 1<<20, 64<<20)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		commitTo(t, s, func(b *bodyBatch) {
			for id := uint64(1); id <= 10; id++ {
				b.Set(testBodyKey(id), testValue(id, size))
			}
		})
		chosen, write := make(chan struct{}), make(chan struct{})
		s.beforeFlushCommit = func() { close(chosen); <-write }
		flushed := make(chan error)
		go func() { _, err := s.flush(true, math.MaxUint64); flushed <- err }()
		<-chosen
		deleted := make(chan struct{})
		go func() {
			defer close(deleted)
			commitTo(t, s, func(b *bodyBatch) {
				b.Delete(testBodyKey(5))
				b.DeleteRange(testBodyKey(7), testBodyKey(9))
			})
		}()
		select {
		case <-deleted:
		case <-time.After(10 * time.Second):
			t.Fatalf("bodies of %d bytes: the deletes waited for the flush", size)
		}
		close(write)
		if err := <-flushed; err != nil {
			t.Fatal(err)
		}
		s.beforeFlushCommit = nil
		if got, want := pebbleIDs(t, s), []uint64{1, 2, 3, 4, 6, 9, 10}; !slices.Equal(got, want) {
			t.Fatalf("bodies of %d bytes: pebble holds %v, want %v", size, got, want)
		}
		for id := uint64(1); id <= 10; id++ {
			v, ok, err := s.Get(testBodyKey(id))
			if want := !slices.Contains([]uint64{5, 7, 8}, id); err != nil || ok != want || ok && !bytes.Equal(v, testValue(id, size)) {
				t.Fatalf("bodies of %d bytes: body %d found %v (err %v), want %v", size, id, ok, err, want)
			}
		}
	}
}

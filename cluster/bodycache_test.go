package cluster

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"testing"
)

func testBodyKey(id uint64) []byte { return binary.BigEndian.AppendUint64([]byte{'b'}, id) }

// The leader's body cache holds what the store committed last and never
// what it deleted: point and range deletes take entries out, the oldest
// go first past the bound, a follower keeps nothing, and an adopted store
// (another numbering of ids) empties it.
func TestBodyCacheFollowsTheStore(t *testing.T) {
	s, err := openBodyStoreSized(t.TempDir(), slog.New(slog.DiscardHandler), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.cache = newBodyCache(64 << 10)
	commit := func(f func(b *bodyBatch)) {
		t.Helper()
		b := s.Batch().(*bodyBatch)
		f(b)
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	value := func(id uint64) []byte { return bytes.Repeat([]byte{byte(id)}, 512) }
	set := func(from, to uint64) {
		commit(func(b *bodyBatch) {
			for id := from; id < to; id++ {
				b.Set(testBodyKey(id), value(id))
			}
		})
	}
	cached := func(id uint64) bool { _, ok := s.Cached(testBodyKey(id)); return ok }

	set(1, 10)
	if cached(1) {
		t.Fatal("a follower's store cached a body")
	}
	s.cache.enable(true)
	set(10, 40)
	for id := uint64(10); id < 40; id++ {
		if v, ok := s.Cached(testBodyKey(id)); !ok || !bytes.Equal(v, value(id)) {
			t.Fatalf("body %d: cached %v", id, ok)
		}
	}
	commit(func(b *bodyBatch) {
		b.Delete(testBodyKey(10))
		b.DeleteRange(testBodyKey(20), testBodyKey(30))
	})
	for id := uint64(10); id < 40; id++ {
		if want := id != 10 && (id < 20 || id >= 30); cached(id) != want {
			t.Fatalf("body %d: cached %v after the deletes, want %v", id, cached(id), want)
		}
		if _, ok, err := s.Get(testBodyKey(id)); err != nil || ok != (id != 10 && (id < 20 || id >= 30)) {
			t.Fatalf("body %d: Get found %v (err %v) after the deletes", id, ok, err)
		}
	}
	set(40, 300) // 130 KiB through a 64 KiB cache: the oldest go
	if cached(11) || !cached(299) || s.cache.size > 64<<10 {
		t.Fatalf("after 260 more bodies: body 11 cached %v, body 299 cached %v, %d bytes held", cached(11), cached(299), s.cache.size)
	}
	dir := t.TempDir() + "/cp"
	cp, err := s.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Write(dir); err != nil {
		t.Fatal(err)
	}
	cp.Release()
	if err := s.adopt(dir); err != nil {
		t.Fatal(err)
	}
	if cached(299) {
		t.Fatal("body 299 still cached after the store was replaced")
	}
	if _, ok, err := s.Get(testBodyKey(299)); err != nil || !ok {
		t.Fatalf("body 299 not in the adopted store (err %v)", err)
	}
	s.cache.enable(false)
	set(300, 310)
	if cached(300) {
		t.Fatal("a store that no longer leads cached a body")
	}
}

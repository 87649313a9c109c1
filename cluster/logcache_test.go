package cluster

import (
	"bytes"
	"runtime"
	"testing"
	"weak"

	"github.com/hashicorp/raft"
)

// countingStore counts the reads that reach the store under the cache.
type countingStore struct {
	*raft.InmemStore
	reads int
}

func (s *countingStore) GetLog(index uint64, log *raft.Log) error {
	s.reads++
	return s.InmemStore.GetLog(index, log)
}

// TestLogCacheBoundsEntriesAndBytes checks that the log cache serves the
// most recent entries from memory, up to its entry count and its bytes,
// and every other entry from the store, unchanged.
func TestLogCacheBoundsEntriesAndBytes(t *testing.T) {
	disk := &countingStore{InmemStore: raft.NewInmemStore()}
	c := newLogCache(disk, 8, 100)
	entry := func(i uint64, size int) *raft.Log {
		return &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: bytes.Repeat([]byte{byte(i)}, size)}
	}
	// read returns entry i and whether it came from the store.
	read := func(i uint64) bool {
		t.Helper()
		before := disk.reads
		var l raft.Log
		if err := c.GetLog(i, &l); err != nil || l.Index != i || len(l.Data) > 0 && l.Data[0] != byte(i) {
			t.Fatalf("entry %d read as %v, %v", i, l, err)
		}
		return disk.reads > before
	}
	var logs []*raft.Log
	for i := uint64(1); i <= 10; i++ {
		logs = append(logs, entry(i, 10))
	}
	if err := c.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 10; i++ {
		if fromDisk := read(i); fromDisk != (i <= 2) {
			t.Fatalf("entry %d from the store: %v; want only the 2 entries beyond a count of 8", i, fromDisk)
		}
	}
	if c.bytes != 80 {
		t.Fatalf("cache holds %d bytes, want 80", c.bytes)
	}
	// 60 more bytes push the oldest out until 100 bytes are left.
	if err := c.StoreLog(entry(11, 60)); err != nil {
		t.Fatal(err)
	}
	for i := uint64(3); i <= 11; i++ {
		if fromDisk := read(i); fromDisk != (i <= 6) {
			t.Fatalf("entry %d from the store: %v; want entries 3 to 6 out, 100 bytes left", i, fromDisk)
		}
	}
	// An entry larger than the whole budget is not kept.
	if err := c.StoreLog(entry(12, 101)); err != nil {
		t.Fatal(err)
	}
	if !read(12) || c.bytes > 100 {
		t.Fatalf("an entry over the budget is cached (%d bytes held)", c.bytes)
	}
	// A gap longer than the ring, and a delete, leave nothing stale.
	if err := c.StoreLog(entry(100, 1)); err != nil {
		t.Fatal(err)
	}
	if read(100) || c.bytes != 1 {
		t.Fatalf("after a gap the cache holds %d bytes, want only entry 100", c.bytes)
	}
	if err := c.DeleteRange(1, 100); err != nil {
		t.Fatal(err)
	}
	var l raft.Log
	if err := c.GetLog(100, &l); err != raft.ErrLogNotFound || c.bytes != 0 {
		t.Fatalf("entry 100 after DeleteRange: %v, %v (%d bytes cached)", l, err, c.bytes)
	}
}

// copyingStore stores copies of the entries it is given, as a disk store
// does.
type copyingStore struct{ *raft.InmemStore }

func (s copyingStore) StoreLogs(logs []*raft.Log) error {
	for _, l := range logs {
		c := *l
		if err := s.InmemStore.StoreLog(&c); err != nil {
			return err
		}
	}
	return nil
}

// TestLogCacheKeepsNoEntryItWasGiven checks that the cache holds copies:
// on the leader raft hands the log store pointers into its apply futures,
// which hold the FSM's results, receive results with their bodies among
// them.
func TestLogCacheKeepsNoEntryItWasGiven(t *testing.T) {
	c := newLogCache(copyingStore{raft.NewInmemStore()}, logCacheEntries, logCacheBytes)
	type future struct {
		log      raft.Log
		response []byte
	}
	f := &future{log: raft.Log{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("cmd")}, response: make([]byte, 1<<20)}
	gone := weak.Make(f)
	if err := c.StoreLogs([]*raft.Log{&f.log}); err != nil {
		t.Fatal(err)
	}
	f = nil
	runtime.GC()
	if gone.Value() != nil {
		t.Fatal("the log cache keeps the future whose entry it was given")
	}
	c.LogStore = raft.NewInmemStore() // a hit must not need the store
	var l raft.Log
	if err := c.GetLog(1, &l); err != nil || string(l.Data) != "cmd" {
		t.Fatalf("entry 1 from the cache: %v, %v", l, err)
	}
}

package cluster

import (
	"sync"

	"github.com/hashicorp/raft"
)

// Log cache bounds: the most recent entries, up to this many and this many
// bytes of entry data.
const (
	logCacheEntries = 512
	logCacheBytes   = 16 << 20
)

// logCache keeps the most recent Raft log entries in memory, so that the
// replication path and a follower's apply read them without the disk. It
// replaces raft.LogCache, which held memory long after it was needed in
// two ways:
//
//   - It keeps the *raft.Log it is given, and on the leader raft gives it a
//     pointer into the entry's apply future, which also holds the FSM's
//     result. A receive's result holds the delivered bodies, so the leader
//     kept the bodies of its last 512 receives, acked or not. This cache
//     keeps a copy of each entry and so nothing of the future.
//   - It is bounded by count alone, and an entry can hold a whole request
//     (about 9.4 MiB): 512 of them could take 4.7 GiB per node beyond the
//     state, and the entries that filled a backlog stayed after it was
//     drained until 512 newer ones pushed them out (8.5 minutes of ticks
//     on an idle cluster). This cache is bounded by the bytes of entry data
//     too: a new entry pushes the oldest out, and one larger than the whole
//     budget is read from disk.
type logCache struct {
	raft.LogStore
	max int

	mu     sync.RWMutex
	ring   []*raft.Log // entry i in slot i % len(ring)
	bytes  int         // len(Data) of the cached entries
	oldest uint64      // no entry below it is cached
}

func newLogCache(store raft.LogStore, entries, bytes int) *logCache {
	return &logCache{LogStore: store, max: bytes, ring: make([]*raft.Log, entries)}
}

// GetLog implements raft.LogStore.
func (c *logCache) GetLog(index uint64, log *raft.Log) error {
	c.mu.RLock()
	e := c.ring[index%uint64(len(c.ring))]
	c.mu.RUnlock()
	if e != nil && e.Index == index {
		*log = *e
		return nil
	}
	return c.LogStore.GetLog(index, log)
}

// IsMonotonic implements raft.MonotonicLogStore: the cache is what the
// store under it is.
func (c *logCache) IsMonotonic() bool { return monotonic(c.LogStore) }

// StoreLog implements raft.LogStore.
func (c *logCache) StoreLog(log *raft.Log) error { return c.StoreLogs([]*raft.Log{log}) }

// StoreLogs implements raft.LogStore: the entries are cached once the
// store has them.
func (c *logCache) StoreLogs(logs []*raft.Log) error {
	if err := c.LogStore.StoreLogs(logs); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range logs {
		c.add(l)
	}
	return nil
}

// DeleteRange implements raft.LogStore; it empties the cache.
func (c *logCache) DeleteRange(lo, hi uint64) error {
	c.mu.Lock()
	clear(c.ring)
	c.bytes, c.oldest = 0, 0
	c.mu.Unlock()
	return c.LogStore.DeleteRange(lo, hi)
}

func (c *logCache) add(l *raft.Log) {
	n := uint64(len(c.ring))
	if l.Index >= n {
		c.dropBelow(l.Index - n + 1) // their slots are taken by newer entries
	}
	if old := c.ring[l.Index%n]; old != nil {
		c.bytes -= len(old.Data)
	}
	e := *l
	c.ring[l.Index%n] = &e
	c.bytes += len(e.Data)
	for c.bytes > c.max && c.oldest <= l.Index {
		c.drop(c.oldest)
		c.oldest++
	}
}

// dropBelow uncaches every entry below index.
func (c *logCache) dropBelow(index uint64) {
	if index-min(index, c.oldest) >= uint64(len(c.ring)) {
		clear(c.ring)
		c.bytes, c.oldest = 0, index
		return
	}
	for ; c.oldest < index; c.oldest++ {
		c.drop(c.oldest)
	}
}

func (c *logCache) drop(index uint64) {
	slot := &c.ring[index%uint64(len(c.ring))]
	if *slot != nil && (*slot).Index == index {
		c.bytes -= len((*slot).Data)
		*slot = nil
	}
}

package cluster

import (
	"bytes"
	"sync"
	"sync/atomic"
)

// bodyCacheBytes is the default bound of the leader's body cache
// (Config.BodyCacheBytes).
const bodyCacheBytes = 64 << 20

// bodyCache holds the values the store committed last, on the leader
// only (the node that answers receives; followers read no body), bounded
// in bytes: a consumer that keeps up reads each body from here, without
// a pebble iterator and without copying it, instead of from a memtable or
// an sstable. Keys are never reused (body ids grow), so an entry is never
// stale; a delete removes it, and an adopted store (whose ids are
// another numbering) empties it. The oldest entries go first: a backlog
// larger than the cache is read from the store, from its oldest end.
//
// It holds the values the FSM handed to the batch, which nothing changes
// afterwards (fsm.Store's batches copy what they are given; the FSM keeps
// nothing of a value it stored).
type bodyCache struct {
	on  atomic.Bool // filled while the node leads
	max int

	mu    sync.Mutex
	size  int
	vals  map[cacheKey][]byte
	order []cacheKey // insertion order; keys deleted meanwhile are skipped
}

// cacheKey is a body key: a prefix byte and a big-endian id. Other keys
// are not cached.
type cacheKey [9]byte

func toCacheKey(key []byte) (cacheKey, bool) {
	var k cacheKey
	if len(key) != len(k) {
		return k, false
	}
	copy(k[:], key)
	return k, true
}

func newBodyCache(max int) *bodyCache {
	return &bodyCache{max: max, vals: make(map[cacheKey][]byte)}
}

// enable turns filling on (the node leads) or off, emptying the cache. A
// cache of no bytes stays off.
func (c *bodyCache) enable(on bool) {
	c.on.Store(on && c.max > 0)
	if !on {
		c.clear()
	}
}

func (c *bodyCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.vals, c.order, c.size = make(map[cacheKey][]byte), nil, 0
}

func (c *bodyCache) get(key []byte) ([]byte, bool) {
	k, ok := toCacheKey(key)
	if !ok || !c.on.Load() {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.vals[k]
	return v, ok
}

// commit records a committed batch: its sets, then its deletes.
func (c *bodyCache) commit(sets []cachedSet, dels []deletion) {
	if !c.on.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range sets {
		if len(s.value) > c.max/64 {
			continue
		}
		c.vals[s.key] = s.value
		c.order = append(c.order, s.key)
		c.size += len(s.value)
	}
	for _, d := range dels {
		k, ok := toCacheKey(d.key)
		if d.end == nil {
			if ok {
				c.drop(k)
			}
			continue
		}
		// A range is a run of consecutive body ids or a restore's
		// sweep: walk it when it is short, else empty the cache.
		if n, spanOK := keySpan(d.key, d.end); ok && spanOK && n <= 4096 {
			for range n {
				c.drop(k)
				incKey(k[:])
			}
			continue
		}
		c.vals, c.order, c.size = make(map[cacheKey][]byte), nil, 0
	}
	for c.size > c.max && len(c.order) > 0 {
		c.drop(c.order[0])
		c.order = c.order[1:]
	}
	// Keys deleted by consumers that keep up never reach the front:
	// drop them from the order once they outnumber the entries.
	if len(c.order) > 2*len(c.vals)+1024 {
		kept := make([]cacheKey, 0, 2*len(c.vals)+64)
		for _, k := range c.order {
			if _, ok := c.vals[k]; ok {
				kept = append(kept, k)
			}
		}
		c.order = kept
	}
}

func (c *bodyCache) drop(k cacheKey) {
	if v, ok := c.vals[k]; ok {
		c.size -= len(v)
		delete(c.vals, k)
	}
}

// cachedSet is a value set by a batch, under a body key.
type cachedSet struct {
	key   cacheKey
	value []byte
}

// cached returns the value of key if the cache holds it (fsm's optional
// cached reads, which FillBodies tries before it takes a view).
func (s *bodyStore) Cached(key []byte) ([]byte, bool) { return s.cache.get(key) }

// keySpan returns end-from for two keys of equal length that differ only
// in their last 8 bytes (big-endian numbers, as body keys are).
func keySpan(from, end []byte) (uint64, bool) {
	if len(from) != len(end) || len(from) < 8 || !bytes.Equal(from[:len(from)-8], end[:len(end)-8]) {
		return 0, false
	}
	a, b := beUint64(from[len(from)-8:]), beUint64(end[len(end)-8:])
	if b < a {
		return 0, false
	}
	return b - a, true
}

func beUint64(b []byte) uint64 {
	var v uint64
	for _, x := range b {
		v = v<<8 | uint64(x)
	}
	return v
}

// incKey adds one to the big-endian number that ends k.
func incKey(k []byte) {
	for i := len(k) - 1; i >= len(k)-8; i-- {
		k[i]++
		if k[i] != 0 {
			return
		}
	}
}

package storebench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	bolt "go.etcd.io/bbolt"
)

// applySize is the messages one Raft apply writes or deletes: the batch a
// producer or a consumer's acks typically carry.
const applySize = 64

// bodySize is the body of every message.
const bodySize = 1 << 10

var backlog = flag.Int("storebench.backlog", 200_000, "messages waiting in the store while BenchmarkCheckpoint and BenchmarkSteadyState run")

// engine is one candidate body store seen through the operations the
// state machine would use.
type engine interface {
	// apply writes puts and removes dels together with the applied
	// index, atomically and without fsync: one Raft apply.
	apply(index uint64, puts []uint64, dels []uint64) error
	// read reads the bodies of ids (one receive) and returns their bytes.
	read(ids []uint64) (int, error)
	// scan reads the bodies of n consecutive ids from the first, with one
	// iterator, and returns their bytes.
	scan(first uint64, n int) (int, error)
	// checkpoint makes a consistent copy of the store in dir that needs
	// nothing of the live store once made.
	checkpoint(dir string) error
	// settle gives the engine the chance to reclaim space by itself: the
	// background work a running store would do after a drain (at most
	// 10 s of it).
	settle()
	// trim drops every body below id, which the state machine knows to
	// be deleted already (all of a queue's messages below its lowest
	// live id are gone): a range tombstone, which pebble reclaims by
	// dropping whole files (delete-only compactions). A no-op for bbolt,
	// whose deletes free their pages at once.
	trim(below uint64) error
	// compact reclaims what settle left, at the cost of rewriting what
	// is live.
	compact() error
	close() error
}

type engineDef struct {
	name string
	open func(b *testing.B, dir string) engine
}

var engines = []engineDef{
	{"pebble", func(b *testing.B, dir string) engine { return openPebble(b, dir, false) }},
	{"pebble-nowal", func(b *testing.B, dir string) engine { return openPebble(b, dir, true) }},
	{"bbolt", openBolt},
}

// payload is random, so no engine gains from compressing it.
var payload = func() []byte {
	p := make([]byte, 1<<20+bodySize)
	r := rand.NewChaCha8([32]byte{1})
	_, _ = r.Read(p)
	return p
}()

func body(id uint64) []byte {
	off := (id * 7919) % (1 << 20)
	return payload[off : off+bodySize]
}

// key orders a queue's bodies by message id, so FIFO order is key order.
func key(id uint64) []byte {
	var k [16]byte
	binary.BigEndian.PutUint64(k[:8], 1) // queue number
	binary.BigEndian.PutUint64(k[8:], id)
	return k[:]
}

var appliedKey = []byte("\x00applied")

func indexBytes(i uint64) []byte { return binary.BigEndian.AppendUint64(nil, i) }

// --- pebble ---

type pebbleEngine struct {
	db    *pebble.DB
	noWAL bool
}

// openPebble opens pebble with a 64 MiB block cache (the bounded cache a
// receive reads through) and 64 MiB memtables (pebble's default of 4 MiB
// flushed every 4,000 bodies and ran the fill 3.5 times slower). noWAL turns pebble's own WAL off: the Raft log
// already is one, so after a crash the store may be behind the log by
// what its memtable held, and the applied index written with the data
// says from where to apply the log again.
func openPebble(b *testing.B, dir string, noWAL bool) engine {
	cache := pebble.NewCache(64 << 20)
	defer cache.Unref()
	opts := &pebble.Options{
		Cache:              cache,
		DisableWAL:         noWAL,
		FormatMajorVersion: pebble.FormatNewest,
		MemTableSize:       64 << 20,
		Logger:             quietLogger{},
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	return &pebbleEngine{db: db, noWAL: noWAL}
}

// quietLogger drops pebble's informational lines and keeps its errors.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any) {}
func (quietLogger) Errorf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pebble: "+format+"\n", args...)
}
func (quietLogger) Fatalf(format string, args ...any) { panic(fmt.Sprintf("pebble: "+format, args...)) }

func (e *pebbleEngine) apply(index uint64, puts, dels []uint64) error {
	bt := e.db.NewBatch()
	defer bt.Close()
	for _, id := range puts {
		if err := bt.Set(key(id), body(id), nil); err != nil {
			return err
		}
	}
	for _, id := range dels {
		if err := bt.Delete(key(id), nil); err != nil {
			return err
		}
	}
	if err := bt.Set(appliedKey, indexBytes(index), nil); err != nil {
		return err
	}
	return e.db.Apply(bt, pebble.NoSync)
}

func (e *pebbleEngine) read(ids []uint64) (int, error) {
	n := 0
	for _, id := range ids {
		v, c, err := e.db.Get(key(id))
		if err != nil {
			return n, err
		}
		n += len(v)
		if err := c.Close(); err != nil {
			return n, err
		}
	}
	return n, nil
}

func (e *pebbleEngine) scan(first uint64, n int) (int, error) {
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: key(first), UpperBound: key(first + uint64(n))})
	if err != nil {
		return 0, err
	}
	got := 0
	for ok := it.First(); ok; ok = it.Next() {
		got += len(it.Value())
	}
	return got, errors.Join(it.Error(), it.Close())
}

func (e *pebbleEngine) checkpoint(dir string) error {
	if e.noWAL {
		// Without a WAL the memtable is only in memory: flush it, or the
		// checkpoint lacks the latest applies.
		if err := e.db.Flush(); err != nil {
			return err
		}
		return e.db.Checkpoint(dir)
	}
	return e.db.Checkpoint(dir, pebble.WithFlushedWAL())
}

// settle flushes the memtable and waits until no compaction has run and
// no obsolete file has waited for deletion for 300 ms (at most 10 s):
// what pebble reclaims on its own after a drain.
func (e *pebbleEngine) settle() {
	_ = e.db.Flush()
	deadline := time.Now().Add(10 * time.Second)
	for idle := 0; idle < 3 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		m := e.db.Metrics()
		if m.Compact.NumInProgress == 0 && m.Table.ObsoleteCount == 0 && m.Table.ZombieCount == 0 {
			idle++
		} else {
			idle = 0
		}
	}
}

func (e *pebbleEngine) trim(below uint64) error {
	return e.db.DeleteRange(key(0), key(below), pebble.NoSync)
}

// compact rewrites the whole key space, so deleted bodies and their
// tombstones are dropped, and waits for the files it replaced to go.
func (e *pebbleEngine) compact() error {
	if err := e.db.Compact(context.Background(), []byte{0}, []byte{0xff}, false); err != nil {
		return err
	}
	e.settle()
	return nil
}

func (e *pebbleEngine) close() error { return e.db.Close() }

// --- bbolt ---

type boltEngine struct{ db *bolt.DB }

var (
	bodiesBucket = []byte("bodies")
	metaBucket   = []byte("meta")
)

// openBolt opens bbolt as the body store would: no fsync (NoSync), no
// freelist written per commit (rebuilt by scanning at open), the hashmap
// freelist, and buckets filled to 90% since ids only grow.
func openBolt(b *testing.B, dir string) engine {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, "bodies.db"), 0o600, &bolt.Options{
		NoSync: true, NoFreelistSync: true, FreelistType: bolt.FreelistMapType,
	})
	if err != nil {
		b.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bodiesBucket); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(metaBucket)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return &boltEngine{db: db}
}

func (e *boltEngine) apply(index uint64, puts, dels []uint64) error {
	return e.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bodiesBucket)
		bk.FillPercent = 0.9
		for _, id := range puts {
			if err := bk.Put(key(id), body(id)); err != nil {
				return err
			}
		}
		for _, id := range dels {
			if err := bk.Delete(key(id)); err != nil {
				return err
			}
		}
		return tx.Bucket(metaBucket).Put(appliedKey, indexBytes(index))
	})
}

func (e *boltEngine) read(ids []uint64) (int, error) {
	n := 0
	err := e.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bodiesBucket)
		for _, id := range ids {
			n += len(bk.Get(key(id)))
		}
		return nil
	})
	return n, err
}

func (e *boltEngine) scan(first uint64, n int) (int, error) {
	got := 0
	err := e.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bodiesBucket).Cursor()
		end := key(first + uint64(n))
		for k, v := c.Seek(key(first)); k != nil && bytes.Compare(k, end) < 0; k, v = c.Next() {
			got += len(v)
		}
		return nil
	})
	return got, err
}

// checkpoint copies the whole file: bbolt has no other consistent copy.
func (e *boltEngine) checkpoint(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return e.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(filepath.Join(dir, "bodies.db"), 0o600) })
}

// settle does nothing: freed pages go to the freelist at commit and are
// reused by later writes; the file never shrinks by itself.
func (e *boltEngine) settle() {}

func (e *boltEngine) trim(uint64) error { return nil }

// compact is bbolt's only way to shrink the file: copy what is live into
// a new file, which then replaces the old one.
func (e *boltEngine) compact() error {
	path := e.db.Path()
	tmp := path + ".compact"
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		return err
	}
	if err := bolt.Compact(dst, e.db, 64<<20); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	if err := e.db.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoSync: true, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	e.db = db
	return err
}

func (e *boltEngine) close() error { return e.db.Close() }

// --- the queue around an engine ---

// queue drives an engine as the state machine would: ids from 1 up,
// one apply per batch, the oldest message received and acked first.
type queue struct {
	e          engine
	index      uint64 // last Raft index applied
	head, tail uint64 // next id to enqueue, oldest id not yet acked
}

func newQueue(e engine) *queue { return &queue{e: e, head: 1, tail: 1} }

func ids(from uint64, n int) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = from + uint64(i)
	}
	return out
}

// enqueue writes n messages, applySize per apply.
func (q *queue) enqueue(b *testing.B, n int) {
	for n > 0 {
		k := min(n, applySize)
		q.index++
		if err := q.e.apply(q.index, ids(q.head, k), nil); err != nil {
			b.Fatal(err)
		}
		q.head += uint64(k)
		n -= k
	}
}

// drain receives (reads) and acks (deletes) the n oldest messages,
// applySize per receive and per apply.
func (q *queue) drain(b *testing.B, n int) {
	for n > 0 {
		k := min(n, applySize)
		batch := ids(q.tail, k)
		got, err := q.e.read(batch)
		if err != nil {
			b.Fatal(err)
		}
		if got != k*bodySize {
			b.Fatalf("read %d bytes of %d bodies from %d, want %d", got, k, q.tail, k*bodySize)
		}
		q.index++
		if err := q.e.apply(q.index, nil, batch); err != nil {
			b.Fatal(err)
		}
		q.tail += uint64(k)
		n -= k
	}
}

func (q *queue) live() int64 { return int64(q.head-q.tail) * bodySize }

// diskUsage is the space the files under dir take on disk (allocated
// blocks), each file counted once however many links it has.
func diskUsage(b *testing.B, dir string) int64 {
	return walkUsage(b, dir, false)
}

// ownUsage is diskUsage counting only files with a single link: the
// bytes a checkpoint wrote rather than linked.
func ownUsage(b *testing.B, dir string) int64 {
	return walkUsage(b, dir, true)
}

func walkUsage(b *testing.B, dir string, unlinkedOnly bool) int64 {
	var total int64
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if seen[st.Ino] || (unlinkedOnly && st.Nlink > 1) {
			return nil
		}
		seen[st.Ino] = true
		total += st.Blocks * 512
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return total
}

func forEachEngine(b *testing.B, run func(b *testing.B, def engineDef)) {
	for _, def := range engines {
		b.Run(def.name, func(b *testing.B) { run(b, def) })
	}
}

func openIn(b *testing.B, def engineDef) (engine, string) {
	dir := filepath.Join(b.TempDir(), "store")
	e := def.open(b, dir)
	b.Cleanup(func() { _ = e.close() })
	return e, dir
}

// filled opens def's engine with n messages enqueued and settled.
func filled(b *testing.B, def engineDef, n int) (engine, *queue) {
	e, _ := openIn(b, def)
	q := newQueue(e)
	q.enqueue(b, n)
	e.settle()
	return e, q
}

// BenchmarkEnqueue writes b.N bodies, applySize per apply.
func BenchmarkEnqueue(b *testing.B) {
	forEachEngine(b, func(b *testing.B, def engineDef) {
		e, dir := openIn(b, def)
		q := newQueue(e)
		b.SetBytes(bodySize)
		b.ResetTimer()
		q.enqueue(b, b.N)
		b.StopTimer()
		b.ReportMetric(float64(diskUsage(b, dir))/float64(q.live()), "disk/live")
	})
}

// BenchmarkReceive reads b.N bodies in FIFO order, applySize per receive,
// after they were enqueued, each by a point read.
func BenchmarkReceive(b *testing.B) {
	forEachEngine(b, func(b *testing.B, def engineDef) {
		e, q := filled(b, def, b.N)
		receiveAll(b, q, func(first uint64, k int) (int, error) { return e.read(ids(first, k)) })
	})
}

// BenchmarkReceiveScan is BenchmarkReceive with each receive's
// consecutive ids read by one iterator instead of point reads.
func BenchmarkReceiveScan(b *testing.B) {
	forEachEngine(b, func(b *testing.B, def engineDef) {
		e, q := filled(b, def, b.N)
		receiveAll(b, q, e.scan)
	})
}

// receiveAll times reading every body of q in FIFO order, applySize ids
// per call of read.
func receiveAll(b *testing.B, q *queue, read func(first uint64, k int) (int, error)) {
	b.SetBytes(bodySize)
	b.ResetTimer()
	for id := q.tail; id < q.head; id += applySize {
		k := min(applySize, int(q.head-id))
		if got, err := read(id, k); err != nil || got != k*bodySize {
			b.Fatalf("read %d bodies from %d: %d bytes, %v", k, id, got, err)
		}
	}
}

// BenchmarkAck deletes b.N bodies in FIFO order, applySize per apply,
// after they were enqueued.
func BenchmarkAck(b *testing.B) {
	forEachEngine(b, func(b *testing.B, def engineDef) {
		e, q := filled(b, def, b.N)
		b.ResetTimer()
		for q.tail < q.head {
			k := min(applySize, int(q.head-q.tail))
			q.index++
			if err := e.apply(q.index, nil, ids(q.tail, k)); err != nil {
				b.Fatal(err)
			}
			q.tail += uint64(k)
		}
	})
}

// BenchmarkSteadyState keeps -storebench.backlog messages waiting while
// b.N more go through: each enqueued at the head, then received and acked
// at the tail, the way a queue with a standing backlog runs. The tail
// moves through keys deleted moments before, which is where an LSM's
// tombstones would show.
func BenchmarkSteadyState(b *testing.B) {
	forEachEngine(b, func(b *testing.B, def engineDef) {
		_, q := filled(b, def, *backlog)
		b.SetBytes(bodySize)
		b.ResetTimer()
		for done := 0; done < b.N; done += applySize {
			k := min(applySize, b.N-done)
			q.enqueue(b, k)
			q.drain(b, k)
		}
	})
}

// BenchmarkDrainSpace enqueues b.N bodies, drains half of them, then the
// rest, and reports the disk use against the live bytes at each step:
// full, half drained, and drained, each after the engine settled by
// itself, then after a trim of the drained prefix, and last after an
// explicit compaction.
func BenchmarkDrainSpace(b *testing.B) {
	forEachEngine(b, func(b *testing.B, def engineDef) {
		e, dir := openIn(b, def)
		q := newQueue(e)
		full := int64(b.N) * bodySize
		report := func(metric string, of int64) {
			b.ReportMetric(float64(diskUsage(b, dir))/float64(of), metric)
		}
		trim := func() {
			if err := e.trim(q.tail); err != nil {
				b.Fatal(err)
			}
			e.settle()
		}
		q.enqueue(b, b.N)
		e.settle()
		report("full-disk/live", full)
		q.drain(b, b.N/2)
		e.settle()
		report("half-disk/live", q.live())
		trim()
		report("half-trimmed-disk/live", q.live())
		q.drain(b, int(q.head-q.tail))
		e.settle()
		report("drained-disk/full", full)
		trim()
		report("trimmed-disk/full", full)
		start := time.Now()
		if err := e.compact(); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "compact-ms")
		report("compacted-disk/full", full)
	})
}

// BenchmarkCheckpoint takes b.N checkpoints of a store holding
// -storebench.backlog messages, one apply of new messages before each (so
// there is always something not yet flushed), and reports the bytes each
// checkpoint wrote rather than linked.
func BenchmarkCheckpoint(b *testing.B) {
	forEachEngine(b, func(b *testing.B, def engineDef) {
		e, q := filled(b, def, *backlog)
		var written int64
		b.ResetTimer()
		for i := range b.N {
			b.StopTimer()
			q.enqueue(b, applySize)
			dir := filepath.Join(b.TempDir(), "checkpoint")
			b.StartTimer()
			if err := e.checkpoint(dir); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			written += ownUsage(b, dir)
			if err := os.RemoveAll(dir); err != nil {
				b.Fatal(err)
			}
			if i < b.N-1 {
				b.StartTimer()
			}
		}
		b.ReportMetric(float64(written)/float64(b.N), "written-B/op")
		b.ReportMetric(float64(q.live())/(1<<20), "backlog-MiB")
	})
}

package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// bodyOf is the body of message i of the tests below: big enough that a
// wrong or truncated one shows, different for every message.
func bodyOf(i int, size int) []byte {
	b := bytes.Repeat([]byte{byte(i)}, size)
	copy(b, fmt.Sprintf("message %d|", i))
	return b
}

// enqueueBodies enqueues messages first … first+n-1 of size bytes, each
// with an attribute naming it, through node i.
func enqueueBodies(t *testing.T, c *TestCluster, i int, queue string, first, n, size int) {
	t.Helper()
	for lo := first; lo < first+n; lo += 32 {
		req := &quorumqpb.EnqueueRequest{Queue: queue}
		for j := lo; j < min(lo+32, first+n); j++ {
			req.Messages = append(req.Messages, &fsmpb.Message{
				Body: bodyOf(j, size), DedupId: fmt.Sprintf("%s/%d", queue, j),
				Attributes: []*fsmpb.Attribute{{Key: "n", Value: fmt.Sprint(j)}},
			})
		}
		if _, err := quorumqpb.NewQueueClient(c.Conn(t, i)).Enqueue(ctxT(t, 30*time.Second), req); err != nil {
			t.Fatalf("enqueue on %s: %v", c.Nodes[i].ID(), err)
		}
	}
}

// checkPeekBodies peeks every message of queue on node i and checks that
// messages first … first+n-1 are there in order with their bodies and
// attributes.
func checkPeekBodies(t *testing.T, c *TestCluster, i int, queue string, first, n, size int) {
	t.Helper()
	q := quorumqpb.NewQueueClient(c.Conn(t, i))
	got, from := 0, uint64(0)
	for {
		resp, err := q.Peek(ctxT(t, 10*time.Second), &quorumqpb.PeekRequest{Queue: queue, FromId: from, Max: uint32(min(100, (2<<20)/size))})
		if err != nil {
			t.Fatalf("peek on %s: %v", c.Nodes[i].ID(), err)
		}
		for _, m := range resp.GetMessages() {
			j := first + got
			if !bytes.Equal(m.GetBody(), bodyOf(j, size)) || len(m.GetAttributes()) != 1 || m.GetAttributes()[0].GetValue() != fmt.Sprint(j) {
				t.Fatalf("%s: peeked message %d has body %.20q… (%d bytes), attributes %v; want message %d", c.Nodes[i].ID(), m.GetId(), m.GetBody(), len(m.GetBody()), m.GetAttributes(), j)
			}
			got++
		}
		if from = resp.GetNextId(); from == 0 {
			break
		}
	}
	if got != n {
		t.Fatalf("%s: peeked %d messages, want %d", c.Nodes[i].ID(), got, n)
	}
}

// receiveBodies receives (leases) every message of queue through node i
// and checks that they are messages first … first+n-1 with their bodies
// and attributes.
func receiveBodies(t *testing.T, c *TestCluster, i int, queue string, first, n, size int) {
	t.Helper()
	q := quorumqpb.NewQueueClient(c.Conn(t, i))
	got := 0
	for got < n {
		resp, err := q.Receive(ctxT(t, 10*time.Second), &quorumqpb.ReceiveRequest{Queue: queue, Max: 50, RequestId: fmt.Sprintf("r%d", got)})
		if err != nil {
			t.Fatalf("receive on %s: %v", c.Nodes[i].ID(), err)
		}
		if len(resp.GetDeliveries()) == 0 {
			break
		}
		for _, d := range resp.GetDeliveries() {
			j := first + got
			if !bytes.Equal(d.GetBody(), bodyOf(j, size)) || len(d.GetAttributes()) != 1 || d.GetAttributes()[0].GetValue() != fmt.Sprint(j) {
				t.Fatalf("received message %d with body %.20q… (%d bytes), attributes %v; want message %d", d.GetReceipt().GetMessageId(), d.GetBody(), len(d.GetBody()), d.GetAttributes(), j)
			}
			got++
		}
	}
	if got != n {
		t.Fatalf("received %d messages, want %d", got, n)
	}
}

// Every node keeps message bodies in <data-dir>/store, which it rebuilds
// from its snapshot and its log at start: after all three nodes stop and
// start again, every node serves every body and attribute, from a
// snapshot's part and from the log's, and the state hashes agree.
func TestBodiesServedAfterEveryNodeRestarts(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { cfg.TickInterval = time.Hour })
	li := c.Index(c.Leader(t))
	const size = 3000
	enqueueBodies(t, c, li, "q", 0, 100, size)
	c.WaitReplicated(t)
	for _, n := range c.Live() {
		if err := n.raft.Snapshot().Error(); err != nil {
			t.Fatalf("snapshot on %s: %v", n.ID(), err)
		}
	}
	enqueueBodies(t, c, li, "q", 100, 60, size)
	c.WaitReplicated(t)
	for i := range c.Nodes {
		if st, err := os.Stat(filepath.Join(c.configs[i].DataDir, "store")); err != nil || !st.IsDir() {
			t.Fatalf("node %d has no body store in its data dir: %v", i, err)
		}
	}
	restartAll(t, c)
	for i := range c.Nodes {
		checkPeekBodies(t, c, i, "q", 0, 160, size)
	}
	receiveBodies(t, c, c.Index(c.Leader(t)), "q", 0, 160, size)
}

// restartAll kills every node and starts it again, and waits until all
// have applied the log after their snapshots with equal state hashes.
func restartAll(t *testing.T, c *TestCluster) {
	t.Helper()
	for i := range c.Nodes {
		c.Kill(i)
	}
	for i := range c.Nodes {
		c.Restart(t, i)
	}
	// Right after the restart every node is at its snapshot; an entry of
	// the new term commits (and so applies) the log after it.
	enqueue(t, c, c.Index(c.Leader(t)), "other", "x")
	hash := c.WaitReplicated(t)
	for i, n := range c.Nodes {
		if n.StateHash() != hash {
			t.Fatalf("node %d: state hash %s, want %s", i, n.StateHash(), hash)
		}
	}
}

// A node whose data dir is lost gets every body back through
// InstallSnapshot: the snapshot stream carries the bodies, and Restore
// writes them into the new node's store.
func TestWipedNodeGetsBodiesThroughSnapshotInstall(t *testing.T) {
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) {
		cfg.TrailingLogs = 5
		cfg.SnapshotThreshold = 1 << 30
		cfg.TickInterval = time.Hour
	})
	li := c.Index(c.Leader(t))
	const size = 5000
	enqueueBodies(t, c, li, "q", 0, 200, size)
	c.WaitReplicated(t)
	for _, n := range c.Live() {
		if err := n.raft.Snapshot().Error(); err != nil {
			t.Fatalf("snapshot on %s: %v", n.ID(), err)
		}
	}
	fi := follower(t, c)
	n := replaceNode(t, c, fi)
	c.WaitReplicated(t)
	if snaps, err := n.snaps.List(); err != nil || len(snaps) == 0 {
		t.Fatalf("replaced node has no snapshot (err %v): it did not catch up through InstallSnapshot", err)
	}
	checkPeekBodies(t, c, fi, "q", 0, 200, size)
}

// A node's heap holds the index of its messages, not their bodies: 128 MiB
// of bodies waiting in a queue grow the heap of a one-node cluster by far
// less than that (the Raft log cache holds up to 16 MiB of recent
// entries), and every body is still served.
func TestNodeHeapHoldsNoBodies(t *testing.T) {
	c := StartTestClusterWith(t, 1, func(_ int, cfg *Config) {
		cfg.TickInterval = time.Hour
		cfg.BodyCacheBytes = 1 << 20 // bounded, and counted apart (TestBodyBufferViewsAndFlushes)
	})
	const (
		size = 64 << 10
		n    = 2048 // 128 MiB
	)
	before := heapInUse()
	enqueueBodies(t, c, 0, "q", 0, n, size)
	c.WaitReplicated(t)
	after := heapInUse()
	grew := int64(after) - int64(before)
	t.Logf("heap: %d MiB before, %d MiB with %d MiB of bodies queued", before>>20, after>>20, n*size>>20)
	if limit := int64(n * size / 4); grew > limit {
		t.Fatalf("the heap grew by %d MiB for %d MiB of bodies, want at most %d MiB: bodies are held in memory", grew>>20, n*size>>20, limit>>20)
	}
	checkPeekBodies(t, c, 0, "q", 0, n, size)
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// Four FSMs apply the same log, one keeping bodies in memory and three in
// pebble stores with different memtable sizes and body buffers (none, a
// few bodies, all of them), one of them flushed and compacted at
// different points: their state hashes agree after every entry, and so
// does a fifth restored from a snapshot the pebble one persisted while the
// log went on, and four more restored from snapshots with a checkpoint of
// their store (a few bodies buffered, all of them buffered), taken while
// entries that deleted bodies applied (one of each linking the
// checkpoint's files, one reading them from the package). What differs
// between their disks and memories (files, levels, compactions, buffered
// bodies, body ids) does not enter the hash.
func TestBodyStoreKeepsStateHashesEqual(t *testing.T) {
	open := func(memtable uint64, buffer int) (*bodyStore, *fsm.FSM) {
		s, err := openBodyStoreWith(t.TempDir(), slog.New(slog.DiscardHandler), memtable, buffer)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s, fsm.NewWithStore(s)
	}
	sa, a := open(64<<20, 32<<10)
	_, b := open(1<<20, 0)
	_, c := open(4<<20, 64<<20)
	m := fsm.New()
	fsms := []*fsm.FSM{a, b, c, m}
	r := rand.New(rand.NewPCG(3, 4))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	var (
		receipts []*fsmpb.Receipt
		idx      uint64
		restored *fsm.FSM
		fromCP   []*fsm.FSM
		last     *raft.Log
		tail     []*raft.Log // applied since the checkpointed snapshot
	)
	apply := func(cmd *fsmpb.Command) {
		idx++
		now += int64(r.IntN(int(200 * time.Millisecond)))
		cmd.NowUnixNano, cmd.Rules = now, fsm.Rules
		data, err := fsm.Encode(cmd)
		if err != nil {
			t.Fatal(err)
		}
		l := &raft.Log{Index: idx, Type: raft.LogCommand, Data: data}
		last = l
		tail = append(tail, l)
		var first *fsmpb.Result
		for i, f := range append(append(fsms, restored), fromCP...) {
			if f == nil {
				continue
			}
			res := f.Apply(l).(*fsmpb.Result)
			if err := f.FillBodies(res); err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				first = res
				receipts = append(receipts, deliveryReceipts(res)...)
			} else if !proto.Equal(res, first) {
				t.Fatalf("index %d: FSM %d answered %v, the first %v", idx, i, res, first)
			}
		}
	}
	apply(&fsmpb.Command{Op: &fsmpb.Command_CreateQueue{CreateQueue: &fsmpb.CreateQueue{Name: "dlq"}}})
	apply(&fsmpb.Command{Op: &fsmpb.Command_CreateQueue{CreateQueue: &fsmpb.CreateQueue{Name: "q", Settings: &fsmpb.QueueSettings{
		DeadLetterQueue: proto.String("dlq"), MaxDeliveries: proto.Uint32(2), DedupWindowNs: proto.Int64(int64(10 * time.Second))}}}})
	pick := func() []*fsmpb.Receipt {
		var out []*fsmpb.Receipt
		for range 1 + r.IntN(4) {
			if len(receipts) > 0 {
				out = append(out, receipts[r.IntN(len(receipts))])
			}
		}
		return out
	}
	for step := range 600 {
		switch k := r.IntN(20); {
		case k < 7:
			e := &fsmpb.Enqueue{Queue: "q"}
			for range 1 + r.IntN(8) {
				msg := &fsmpb.Message{Body: bodyOf(r.IntN(1000), 100+r.IntN(3000)), DedupId: fmt.Sprint("d", r.IntN(400))}
				if r.IntN(3) == 0 {
					msg.Attributes = []*fsmpb.Attribute{{Key: "k", Value: fmt.Sprint(r.IntN(9))}}
				}
				e.Messages = append(e.Messages, msg)
			}
			apply(&fsmpb.Command{Op: &fsmpb.Command_Enqueue{Enqueue: e}})
		case k < 11:
			apply(&fsmpb.Command{Op: &fsmpb.Command_Receive{Receive: &fsmpb.Receive{Queue: "q", Max: uint32(1 + r.IntN(8)),
				VisibilityNs: int64(time.Second), AutoAck: r.IntN(5) == 0, RequestId: fmt.Sprint("r", r.IntN(50)), DeadLetterOrigin: true}}})
		case k < 14:
			apply(&fsmpb.Command{Op: &fsmpb.Command_Ack{Ack: &fsmpb.Ack{Queue: "q", Receipts: pick()}}})
		case k < 16:
			apply(&fsmpb.Command{Op: &fsmpb.Command_Nack{Nack: &fsmpb.Nack{Queue: "q", Receipts: pick()}}})
		case k < 17:
			apply(&fsmpb.Command{Op: &fsmpb.Command_Redrive{Redrive: &fsmpb.Redrive{Queue: "dlq", Max: 5}}})
		case k < 18:
			apply(&fsmpb.Command{Op: &fsmpb.Command_Tick{Tick: &fsmpb.Tick{}}})
		case k < 19 && step%7 == 0:
			apply(&fsmpb.Command{Op: &fsmpb.Command_Purge{Purge: &fsmpb.Purge{Queue: "dlq"}}})
		default:
			apply(&fsmpb.Command{Op: &fsmpb.Command_Receive{Receive: &fsmpb.Receive{Queue: "dlq", Max: 3, AutoAck: true}}})
		}
		if step%50 == 25 {
			if err := sa.db.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := sa.db.Compact(context.Background(), []byte{0}, []byte{0xff}, true); err != nil {
				t.Fatal(err)
			}
		}
		if step == 300 {
			snap, err := a.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			persistTo(t, snap, &buf, func() {
				// The log goes on while the snapshot is written.
				apply(&fsmpb.Command{Op: &fsmpb.Command_Purge{Purge: &fsmpb.Purge{Queue: "q"}}})
			})
			idxAt := idx - 1
			_, restored = open(4<<20, 16<<10)
			if err := restored.Restore(io.NopCloser(&buf)); err != nil {
				t.Fatal(err)
			}
			if restored.AppliedIndex() != idxAt {
				t.Fatalf("restored index %d, want %d", restored.AppliedIndex(), idxAt)
			}
			restored.Apply(last) // the entry applied during Persist
		}
		if step == 450 {
			snapA, err := a.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			snapC, err := c.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			idxAt, before := idx, peekAll(t, a, "q")
			tail = nil
			// Entries that delete bodies apply before the checkpoints are
			// written: their deletes must not reach them.
			apply(&fsmpb.Command{Op: &fsmpb.Command_Purge{Purge: &fsmpb.Purge{Queue: "q"}}})
			apply(&fsmpb.Command{Op: &fsmpb.Command_Receive{Receive: &fsmpb.Receive{Queue: "dlq", Max: 3, AutoAck: true}}})
			fromCP = append(checkpointRestores(t, snapA, idxAt, before, tail), checkpointRestores(t, snapC, idxAt, before, tail)...)
		}
		want := a.StateHash()
		for i, f := range append(append(fsms, restored), fromCP...) {
			if f != nil && f.StateHash() != want {
				t.Fatalf("step %d index %d: FSM %d has state hash %s, the first %s", step, idx, i, f.StateHash(), want)
			}
		}
	}
}

// checkpointRestores persists snap with a checkpoint of its store into a
// snapshot directory, restores two FSMs from its package, one linking the
// checkpoint's files as a restart does and one reading them from the
// package as an installed snapshot does, checks that each serves the
// messages of queue q with their bodies as they were at the snapshot
// (peeked), and applies tail to both.
func checkpointRestores(t *testing.T, snap raft.FSMSnapshot, idxAt uint64, peeked []*fsmpb.PeekedMessage, tail []*raft.Log) []*fsm.FSM {
	t.Helper()
	snapDir := t.TempDir()
	dir := filepath.Join(snapDir, "1-1-1")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	tag := []byte("0123456789abcdef")
	if err := os.WriteFile(filepath.Join(dir, tagFile), tag, 0o600); err != nil {
		t.Fatal(err)
	}
	sink := &dirSink{dir: filepath.Join(dir, checkpointDir)}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	if !bytes.HasPrefix(sink.Bytes(), []byte("QQFSMSNP\x00\x00\x00\x02")) {
		t.Fatalf("snapshot into a sink with a checkpoint directory starts %q, want version 2", sink.Bytes()[:12])
	}
	var out []*fsm.FSM
	for _, link := range []bool{true, false} {
		p, err := openPackage(sink.dir, tag, int64(sink.Len()), io.NopCloser(bytes.NewReader(sink.Bytes())))
		if err != nil {
			t.Fatal(err)
		}
		s, err := openBodyStoreSized(t.TempDir(), slog.New(slog.DiscardHandler), 2<<20)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		f := fsm.NewWithStore(s)
		from := ""
		if link {
			from = snapDir
		}
		if err := restorePackage(bufio.NewReader(p), f, s, from); err != nil {
			t.Fatalf("restore (link %v): %v", link, err)
		}
		p.Close()
		if f.AppliedIndex() != idxAt {
			t.Fatalf("restored index %d, want %d", f.AppliedIndex(), idxAt)
		}
		if n := linkedFiles(t, s.path); link != (n > 0) {
			t.Fatalf("restore (link %v): %d of the store's files are links", link, n)
		}
		got := peekAll(t, f, "q")
		if len(got) != len(peeked) || len(got) == 0 {
			t.Fatalf("restore (link %v): %d messages in q, want %d", link, len(got), len(peeked))
		}
		for i := range got {
			if !proto.Equal(got[i], peeked[i]) {
				t.Fatalf("restore (link %v): message %v, want %v", link, got[i], peeked[i])
			}
		}
		for _, l := range tail {
			f.Apply(l)
		}
		out = append(out, f)
	}
	return out
}

// peekAll peeks every live message of queue, bodies included.
func peekAll(t *testing.T, f *fsm.FSM, queue string) []*fsmpb.PeekedMessage {
	t.Helper()
	var out []*fsmpb.PeekedMessage
	from := uint64(0)
	for {
		msgs, next, err := f.Peek(queue, fsm.PeekOptions{From: from, Max: 100})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, msgs...)
		if next == 0 {
			return out
		}
		from = next
	}
}

// dirSink is a snapshot sink in memory with a checkpoint directory.
type dirSink struct {
	bytes.Buffer
	dir string
}

func (*dirSink) ID() string              { return "1-1-1" }
func (*dirSink) Cancel() error           { return nil }
func (*dirSink) Close() error            { return nil }
func (s *dirSink) CheckpointDir() string { return s.dir }

func deliveryReceipts(res *fsmpb.Result) []*fsmpb.Receipt {
	var out []*fsmpb.Receipt
	for _, d := range res.GetDeliveries() {
		out = append(out, &fsmpb.Receipt{MessageId: d.GetReceipt().GetMessageId(), Attempt: d.GetReceipt().GetAttempt()})
	}
	return out
}

// persistTo persists snap into w, running during once the stream has
// started (Persist reads the bodies from the store view taken by
// Snapshot, not from the live store).
func persistTo(t *testing.T, snap raft.FSMSnapshot, w *bytes.Buffer, during func()) {
	t.Helper()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- snap.Persist(&pipeSink{pw})
	}()
	head := make([]byte, 16)
	if _, err := io.ReadFull(pr, head); err != nil {
		t.Fatal(err)
	}
	w.Write(head)
	during()
	if _, err := io.Copy(w, pr); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	snap.Release()
}

type pipeSink struct{ *io.PipeWriter }

func (*pipeSink) ID() string      { return "pipe" }
func (s *pipeSink) Cancel() error { return s.CloseWithError(errors.New("canceled")) }

package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// checkpointMemStore is a MemStore that can checkpoint itself, so that
// Persist writes version 3 into a SegmentSink. Its checkpoints hold
// nothing: the state hash does not read bodies.
type checkpointMemStore struct{ *MemStore }

func (checkpointMemStore) Checkpoint() (StoreCheckpoint, error) { return emptyCheckpoint{}, nil }

type emptyCheckpoint struct{}

func (emptyCheckpoint) Write(dir string) error { return os.MkdirAll(dir, 0o700) }
func (emptyCheckpoint) Release()               {}

// segSink is a SegmentSink in memory: its segment files are byte slices,
// and it links from the files of the sink closed before it (prev).
type segSink struct {
	memSink
	dir     string
	files   map[string][]byte
	prev    *segSink
	written int // files created, not linked
}

func (s *segSink) CheckpointDir() string { return s.dir }

func (s *segSink) CreateSegment(name string) (io.WriteCloser, error) {
	if _, ok := s.files[name]; ok {
		return nil, fmt.Errorf("segment %s twice", name)
	}
	s.written++
	return &segFileWriter{s: s, name: name}, nil
}

func (s *segSink) LinkSegment(name string) bool {
	if s.prev == nil {
		return false
	}
	b, ok := s.prev.files[name]
	if ok {
		s.files[name] = b
	}
	return ok
}

type segFileWriter struct {
	bytes.Buffer
	s    *segSink
	name string
}

func (w *segFileWriter) Close() error {
	w.s.files[w.name] = w.Bytes()
	return nil
}

// openFrom opens segment files kept in memory.
func openFrom(files map[string][]byte) func(string) (io.ReadCloser, error) {
	return func(name string) (io.ReadCloser, error) {
		b, ok := files[name]
		if !ok {
			return nil, fmt.Errorf("no segment %s", name)
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
}

// Each snapshot's segment files, those it wrote and those it linked from
// the one before, hold exactly the state at its Snapshot: a random log
// (every command kind, transactions, ticks, queue deletions) applied
// with chunks of 4 ids, snapshots taken every few commands and persisted
// a few commands later, each spliced into version 2 and restored into a
// fresh FSM, which must have the state hash the FSM had at the snapshot.
// A command that changed a chunk without noting it would leave a linked
// file that no longer matches, and the hashes would differ.
func TestSegmentsFollowEveryChange(t *testing.T) {
	defer func(s int) { segmentShift = s }(segmentShift)
	segmentShift = 2
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := newRand(seed)
			g := newGen(rngChooser{r})
			f := NewWithStore(checkpointMemStore{NewMemStore()})
			var prev *segSink
			linked, written, snaps := 0, 0, 0
			for i := uint64(1); i <= 3000; i++ {
				cmd := g.next()
				g.observe(cmd, f.ApplyCommand(i, cmd))
				if r.IntN(25) != 0 {
					continue
				}
				want := f.StateHash()
				snap, err := f.Snapshot()
				if err != nil {
					t.Fatal(err)
				}
				// Commands go on between Snapshot and Persist, as on a
				// node: the snapshot must write what it froze.
				for range r.IntN(4) {
					i++
					cmd := g.next()
					g.observe(cmd, f.ApplyCommand(i, cmd))
				}
				sink := &segSink{dir: filepath.Join(t.TempDir(), "store"), files: map[string][]byte{}, prev: prev}
				if err := snap.Persist(sink); err != nil {
					t.Fatal(err)
				}
				snap.Release()
				if !IsSegmented(sink.Bytes()) {
					t.Fatal("the snapshot is not version 3")
				}
				spliced := SpliceSegments(bytes.NewReader(sink.Bytes()), openFrom(sink.files))
				restored := NewWithStore(NewMemStore())
				if err := restored.RestoreCheckpoint(spliced, func() error { return nil }); err != nil {
					t.Fatalf("after command %d: restore: %v", i, err)
				}
				if got := restored.StateHash(); got != want {
					t.Fatalf("after command %d: restored from the segments, state hash %s, want %s", i, got, want)
				}
				snaps++
				written += sink.written
				linked += len(sink.files) - sink.written
				prev = sink
			}
			t.Logf("%d snapshots: %d segment files written, %d linked", snaps, written, linked)
			if linked == 0 || written == 0 {
				t.Fatalf("%d files linked and %d written: the test did not exercise both", linked, written)
			}
		})
	}
}

// A corrupt or missing segment file ends the spliced stream with an error
// naming the file, and the restore changes nothing.
func TestSpliceRefusesABadSegment(t *testing.T) {
	f := NewWithStore(checkpointMemStore{NewMemStore()})
	h := &harness{t: t, f: f, now: t0, rules: Rules}
	h.ok(createQ("q", nil))
	h.ok(createQ("r", nil))
	h.ok(enq("q", msg("a", "d1"), msg("b", "d2"), msg("c", "")))
	h.at(time.Second).ok(enq("r", msg("x", "d3")))
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	sink := &segSink{dir: filepath.Join(t.TempDir(), "store"), files: map[string][]byte{}}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	for name := range sink.files {
		for _, what := range []string{"flipped", "missing"} {
			files := map[string][]byte{}
			for n, b := range sink.files {
				files[n] = b
			}
			if what == "flipped" {
				b := bytes.Clone(files[name])
				b[len(b)/2] ^= 0x10
				files[name] = b
			} else {
				delete(files, name)
			}
			restored := NewWithStore(NewMemStore())
			h2 := &harness{t: t, f: restored, now: t0, rules: Rules}
			h2.ok(createQ("other", nil))
			h2.ok(enq("other", msg("keep", "")))
			before := restored.StateHash()
			spliced := SpliceSegments(bytes.NewReader(sink.Bytes()), openFrom(files))
			err := restored.RestoreCheckpoint(spliced, func() error { return nil })
			if !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), "segment "+name+":") {
				t.Fatalf("segment %s %s: restore error %v, want ErrSnapshot naming it", name, what, err)
			}
			t.Logf("segment %s %s: %v", name, what, err)
			if restored.StateHash() != before {
				t.Fatalf("segment %s %s: the refused restore changed the state", name, what)
			}
		}
	}
}

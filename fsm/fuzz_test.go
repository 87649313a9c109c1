package fsm

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

var writeCorpus = flag.Bool("write-corpus", false, "rewrite the committed fuzz seed corpus under testdata/fuzz")

// seedCommands are encoded commands of every kind, from a random sequence.
func seedCommands() [][]byte {
	g := newGen(rngChooser{newRand(3)})
	var out [][]byte
	for range 40 {
		data, _ := Encode(g.next())
		out = append(out, data)
	}
	return out
}

// FuzzApply feeds arbitrary bytes to Apply: it must never panic, must
// return a Result, and a failed entry must leave the state untouched.
func FuzzApply(f *testing.F) {
	for _, s := range seedCommands() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, d := range [][]byte{data, reframe(append(make([]byte, headerLen), data...))} {
			h := busyState(t)
			before := h.f.StateHash()
			res, ok := h.f.Apply(&raft.Log{Index: 100, Type: raft.LogCommand, Data: d}).(*fsmpb.Result)
			if !ok || res == nil {
				t.Fatal("Apply did not return a Result")
			}
			if res.GetError() != nil && h.f.StateHash() != before {
				t.Fatalf("failed entry (%v) changed the state", res.GetError())
			}
			checkInvariants(t, h.f)
		}
	})
}

// FuzzRestore feeds arbitrary bytes to Restore, once as they are and once
// with a valid checksum so the record decoder and validator are reached. It
// must never panic; a rejected snapshot keeps the old state; an accepted
// one satisfies the invariants and survives another round trip.
func FuzzRestore(f *testing.F) {
	f.Add(persistBytes(f, busyState(f).f))
	f.Add(persistBytes(f, New()))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, d := range [][]byte{data, fixChecksum(data)} {
			h := busyState(t)
			before := h.f.StateHash()
			if err := h.f.Restore(io.NopCloser(bytes.NewReader(d))); err != nil {
				if h.f.StateHash() != before {
					t.Fatal("rejected snapshot changed the state")
				}
				continue
			}
			checkInvariants(t, h.f)
			g := New()
			if err := g.Restore(io.NopCloser(bytes.NewReader(persistBytes(t, h.f)))); err != nil {
				t.Fatalf("re-persisted accepted snapshot rejected: %v", err)
			}
			if g.StateHash() != h.f.StateHash() {
				t.Fatal("accepted snapshot does not round-trip")
			}
		}
	})
}

func fixChecksum(data []byte) []byte {
	if len(data) < 4 {
		return data
	}
	out := append([]byte{}, data...)
	binary.BigEndian.PutUint32(out[len(out)-4:], crc32c(out[:len(out)-4]))
	return out
}

// FuzzSequence interprets the input as the choices of a random command
// sequence and checks after every command that the invariants hold (each
// message in exactly one state, counters add up) and that first deliveries
// are in FIFO order; at the end a snapshot round trip keeps the hash.
func FuzzSequence(f *testing.F) {
	f.Add([]byte{})
	for i := range 4 {
		b := make([]byte, 400)
		r := newRand(uint64(i))
		for j := range b {
			b[j] = byte(r.IntN(256))
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, choices []byte) {
		c := &byteChooser{b: choices}
		g := newGen(c)
		fsm := New()
		fifo := newFIFOChecker()
		for i := uint64(1); !c.done; i++ {
			cmd := g.next()
			res := fsm.ApplyCommand(i, cmd)
			if res == nil {
				t.Fatal("nil result")
			}
			g.observe(cmd, res)
			fifo.check(t, cmd, res)
			checkInvariants(t, fsm)
		}
		g2 := New()
		if err := g2.Restore(io.NopCloser(bytes.NewReader(persistBytes(t, fsm)))); err != nil {
			t.Fatal(err)
		}
		if g2.StateHash() != fsm.StateHash() {
			t.Fatal("snapshot round trip changed the hash")
		}
	})
}

// TestWriteFuzzCorpus rewrites testdata/fuzz from the seeds above when run
// with -write-corpus, so the committed corpus follows format changes.
func TestWriteFuzzCorpus(t *testing.T) {
	if !*writeCorpus {
		t.Skip("run with -write-corpus to rewrite testdata/fuzz")
	}
	write := func(target string, inputs [][]byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, in := range inputs {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", in)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	write("FuzzApply", seedCommands())
	busy := persistBytes(t, busyState(t).f)
	write("FuzzRestore", [][]byte{busy, persistBytes(t, New()), busy[:len(busy)/2]})
	var seqs [][]byte
	for i := range 6 {
		b := make([]byte, 300+100*i)
		r := newRand(uint64(100 + i))
		for j := range b {
			b[j] = byte(r.IntN(256))
		}
		seqs = append(seqs, b)
	}
	write("FuzzSequence", seqs)
}

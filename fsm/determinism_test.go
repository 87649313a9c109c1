package fsm

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// TestDeterminism feeds the same random log to two FSMs and checks they
// reach the same state hash after every batch of entries. At random points a third FSM restores a
// snapshot of the first and must have the same hash and keep it while the
// log goes on. Invariants and FIFO are checked after every command.
func TestDeterminism(t *testing.T) {
	for seed := uint64(1); seed <= 8; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		g := newGen(rngChooser{r})
		a, b := New(), New()
		var c *FSM
		fifo := newFIFOChecker()
		var idx uint64
		const n = 3000
		for idx < n {
			batch := make([]*raft.Log, 1+r.IntN(8))
			for i := range batch {
				cmd := g.next()
				data, err := Encode(cmd)
				if err != nil {
					t.Fatal(err)
				}
				idx++
				batch[i] = &raft.Log{Index: idx, Type: raft.LogCommand, Data: data}
				res := a.Apply(batch[i]).(*fsmpb.Result)
				if err := a.FillBodies(res); err != nil {
					t.Fatal(err)
				}
				g.observe(cmd, res)
				fifo.check(t, cmd, res)
				checkInvariants(t, a)
				if c != nil {
					// Body ids are node-local: answers compare once
					// their bodies are read.
					resC := c.Apply(batch[i]).(*fsmpb.Result)
					if err := c.FillBodies(resC); err != nil {
						t.Fatal(err)
					}
					if !proto.Equal(res, resC) {
						t.Fatalf("seed %d index %d: restored FSM answered %v, original %v", seed, idx, resC, res)
					}
				}
			}
			for _, l := range batch {
				b.Apply(l)
			}
			ha := a.StateHash()
			if hb := b.StateHash(); ha != hb {
				t.Fatalf("seed %d index %d: hashes differ %s %s", seed, idx, ha, hb)
			}
			if c != nil && c.StateHash() != ha {
				t.Fatalf("seed %d index %d: restored FSM diverged", seed, idx)
			}
			if r.IntN(40) == 0 {
				c = New()
				if err := c.Restore(io.NopCloser(bytes.NewReader(persistBytes(t, a)))); err != nil {
					t.Fatalf("seed %d index %d: restore: %v", seed, idx, err)
				}
				if c.StateHash() != ha || c.AppliedIndex() != idx {
					t.Fatalf("seed %d index %d: restored hash/index differ", seed, idx)
				}
				checkInvariants(t, c)
			}
		}
	}
}

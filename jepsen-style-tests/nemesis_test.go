package jepsen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
)

func envOf(n int, seed uint64) *Env {
	c := &Cluster{&harness.Cluster{}}
	for i := 1; i <= n; i++ {
		c.Nodes = append(c.Nodes, &Node{ID: fmt.Sprintf("n%d", i)})
	}
	return &Env{Cluster: c, Rand: rand.New(rand.NewPCG(seed, 1))}
}

// hears returns, for each node, the set of nodes whose packets it receives
// (itself included).
func hears(env *Env, g Grudge) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, a := range ids(env) {
		out[a] = map[string]bool{}
		for _, b := range ids(env) {
			out[a][b] = true
		}
		for _, b := range g[a] {
			delete(out[a], b)
		}
	}
	return out
}

func setKey(m map[string]bool) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ",")
}

func TestGrudgeMajorityRing(t *testing.T) {
	for _, n := range []int{3, 5} {
		for seed := uint64(1); seed <= 20; seed++ {
			env := envOf(n, seed)
			g, _ := grudgeMajorityRing(context.Background(), env)
			seen := map[string]bool{}
			for id, set := range hears(env, g) {
				if len(set) != n/2+1 {
					t.Fatalf("n=%d seed=%d: %s hears %v, want a bare majority of %d", n, seed, id, setKey(set), n/2+1)
				}
				if seen[setKey(set)] {
					t.Fatalf("n=%d seed=%d: two nodes hear the same majority %s", n, seed, setKey(set))
				}
				seen[setKey(set)] = true
			}
		}
	}
}

func TestGrudgeBridgeAndHalves(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		env := envOf(5, seed)
		g, _ := grudgeBridge(context.Background(), env)
		h := hears(env, g)
		var bridges []string
		for id, set := range h {
			if len(set) == 5 {
				bridges = append(bridges, id)
			} else if len(set) != 3 {
				t.Fatalf("seed %d: %s hears %s; want its half (2) plus the bridge", seed, id, setKey(set))
			}
		}
		if len(bridges) != 1 {
			t.Fatalf("seed %d: bridges %v, want exactly one node hearing everyone", seed, bridges)
		}
		g, _ = grudgeRandomHalves(context.Background(), env)
		for id, set := range hears(env, g) {
			if len(set) != 2 && len(set) != 3 {
				t.Fatalf("seed %d: random halves: %s hears %s", seed, id, setKey(set))
			}
			for other := range set {
				if !hears(env, g)[other][id] {
					t.Fatalf("seed %d: random halves are not symmetric: %s hears %s but not back", seed, id, other)
				}
			}
		}
	}
}

func TestScheduleIsReplayedBySeed(t *testing.T) {
	pick := func(seed uint64) string {
		env := envOf(3, seed)
		var b strings.Builder
		for i := 0; i < 10; i++ {
			g, _ := grudgeRandomHalves(context.Background(), env)
			b.WriteString(describeGrudge(g) + "|")
		}
		return b.String()
	}
	first, again := pick(42), pick(42)
	if first != again {
		t.Fatal("the same seed gave different partitions")
	}
	if first == pick(43) {
		t.Fatal("different seeds gave the same ten partitions")
	}
}

func TestClassify(t *testing.T) {
	cases := []struct {
		err  error
		want Status
	}{
		{nil, StatusOK},
		{fmt.Errorf("Send: %w: %w", client.ErrOutcomeUnknown, context.DeadlineExceeded), StatusUnknown},
		{fmt.Errorf("Send: %w", context.DeadlineExceeded), StatusFail},
		{&client.Error{Op: "Transact", Kind: client.ErrLeaseLost}, StatusFail},
		{&client.Error{Op: "Send", Kind: client.ErrQueueFull}, StatusFail},
		{status.Error(codes.Unavailable, "connection reset"), StatusUnknown},
		// The disk guard's refusal as Send and a Producer's future return it.
		{fmt.Errorf("Producer.Send: %w", status.Error(codes.ResourceExhausted, "disk guard: data dir has 0 bytes free")), StatusFail},
		{errors.New("something the client did not type"), StatusUnknown},
	}
	for _, c := range cases {
		if got := Classify(c.err); got != c.want {
			t.Errorf("Classify(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

func TestCountOpsDuringFaults(t *testing.T) {
	ops := []Op{
		{Workload: "w", Status: StatusOK, Start: 0, End: 10},
		{Workload: "w", Status: StatusUnknown, Start: 95, End: 105}, // overlaps the window's start
		{Workload: "w", Status: StatusFail, Start: 150, End: 160},
		{Workload: "w", Status: StatusFail, Start: 300, End: 310},
	}
	c := countOps(ops, []Window{{Nemesis: "x", Start: 100, End: 200}})["w"]
	want := OpCounts{Total: 4, OK: 1, Failed: 2, Unknown: 1, DuringFaults: 2, FailedDuringFaults: 1, UnknownDuringFaults: 1}
	if c != want {
		t.Fatalf("counts %+v, want %+v", c, want)
	}
}

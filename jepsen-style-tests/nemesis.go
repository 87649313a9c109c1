package jepsen

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/quorumq/quorumq/jepsen-style-tests/lazyfs"
)

// Env is what a nemesis acts on. Rand is seeded from the run's seed, so
// every random choice a nemesis makes is replayed by -seed.
type Env struct {
	Cluster *Cluster
	Net     *Network // nil in loopback mode
	Rand    *rand.Rand
	// Disks are the nodes' data dirs' lazyfs mounts by node ID; nil when
	// the case runs on plain directories.
	Disks map[string]*lazyfs.FS
}

// Nemesis injects one kind of fault and heals it.
type Nemesis interface {
	Name() string
	// NeedsNetwork: the nemesis partitions and needs network namespaces.
	NeedsNetwork() bool
	// NeedsLazyFS: the nemesis cuts the power or corrupts files and needs
	// the data dirs on lazyfs mounts.
	NeedsLazyFS() bool
	// Inject starts the fault and describes what it did.
	Inject(ctx context.Context, env *Env) (string, error)
	// Heal ends the fault and describes what it did.
	Heal(ctx context.Context, env *Env) (string, error)
}

// Nemeses returns every nemesis by name, in a stable order.
func Nemeses() []Nemesis {
	return []Nemesis{
		&partition{name: "partition-random-halves", grudge: grudgeRandomHalves},
		&partition{name: "partition-isolate-leader", grudge: grudgeIsolateLeader},
		&partition{name: "partition-majority-ring", grudge: grudgeMajorityRing},
		&partition{name: "partition-bridge", grudge: grudgeBridge},
		&partition{name: "partition-one-way", grudge: grudgeOneWay},
		&kill{name: "kill-one", pick: pickRandom},
		&kill{name: "kill-leader", pick: pickLeader},
		&kill{name: "kill-all", pick: pickAll},
		&pauseLeader{},
		&removeReadd{},
		&powerFailure{name: "power-one", pick: pickRandom},
		&powerFailure{name: "power-leader", pick: pickLeader},
		&powerFailure{name: "power-all", pick: pickAll},
		&partitionPower{},
		&corruptNode{},
		longPartition{},
		&diskFullFollower{},
		&diskFullLeader{},
		newClockJumps(),
	}
}

// NemesisByName finds a nemesis of Nemeses by name.
func NemesisByName(name string) (Nemesis, error) {
	var names []string
	for _, n := range Nemeses() {
		if n.Name() == name {
			return n, nil
		}
		names = append(names, n.Name())
	}
	return nil, fmt.Errorf("nemesis %q: unknown; want one of %s", name, strings.Join(names, ", "))
}

// ---- partitions ----

type partition struct {
	name   string
	grudge func(ctx context.Context, env *Env) (Grudge, error)
}

func (p *partition) Name() string       { return p.name }
func (p *partition) NeedsNetwork() bool { return true }
func (p *partition) NeedsLazyFS() bool  { return false }

func (p *partition) Inject(ctx context.Context, env *Env) (string, error) {
	if env.Net == nil {
		return "", fmt.Errorf("%s: needs network namespaces", p.name)
	}
	g, err := p.grudge(ctx, env)
	if err != nil {
		return "", err
	}
	return describeGrudge(g), env.Net.Partition(g)
}

func (p *partition) Heal(ctx context.Context, env *Env) (string, error) {
	if env.Net == nil {
		return "", nil
	}
	return "all drop rules removed", env.Net.Heal()
}

func ids(env *Env) []string {
	var out []string
	for _, n := range env.Cluster.Nodes {
		out = append(out, n.ID)
	}
	return out
}

// complete cuts every node of a off from every node of b, both ways.
func complete(a, b []string) Grudge {
	g := Grudge{}
	for _, x := range a {
		for _, y := range b {
			g[x] = append(g[x], y)
			g[y] = append(g[y], x)
		}
	}
	return g
}

func grudgeRandomHalves(_ context.Context, env *Env) (Grudge, error) {
	all := ids(env)
	env.Rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	k := len(all) / 2
	return complete(all[:k], all[k:]), nil
}

func grudgeIsolateLeader(ctx context.Context, env *Env) (Grudge, error) {
	l, err := env.Cluster.WaitLeader(ctx)
	if err != nil {
		return nil, err
	}
	var rest []string
	for _, id := range ids(env) {
		if id != l.ID {
			rest = append(rest, id)
		}
	}
	return complete([]string{l.ID}, rest), nil
}

// grudgeMajorityRing gives every node a majority of its own that no other
// node shares: node i hears only itself and the next len/2 nodes around a
// shuffled ring. With three nodes this is necessarily asymmetric (n1 hears
// n2, n2 hears n3, n3 hears n1), which is the case Raft's pre-vote and
// check-quorum are meant for.
func grudgeMajorityRing(_ context.Context, env *Env) (Grudge, error) {
	ring := ids(env)
	env.Rand.Shuffle(len(ring), func(i, j int) { ring[i], ring[j] = ring[j], ring[i] })
	n := len(ring)
	g := Grudge{}
	for i, id := range ring {
		hears := map[string]bool{id: true}
		for k := 1; k <= n/2; k++ {
			hears[ring[(i+k)%n]] = true
		}
		for _, other := range ring {
			if !hears[other] {
				g[id] = append(g[id], other)
			}
		}
	}
	return g, nil
}

// grudgeBridge splits the nodes into two halves that share one node, the
// bridge, which hears everyone while the halves do not hear each other.
func grudgeBridge(_ context.Context, env *Env) (Grudge, error) {
	all := ids(env)
	env.Rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	bridge := all[0]
	rest := all[1:]
	k := len(rest) / 2
	g := complete(rest[:k], rest[k:])
	delete(g, bridge)
	return g, nil
}

// grudgeOneWay cuts the leader off in one direction only, picked at
// random: either the leader goes deaf (the others' packets are dropped on
// arrival at the leader, while its heartbeats still arrive), or it goes mute
// (the others drop what the leader sends, while it still hears them).
func grudgeOneWay(ctx context.Context, env *Env) (Grudge, error) {
	l, err := env.Cluster.WaitLeader(ctx)
	if err != nil {
		return nil, err
	}
	var others []string
	for _, id := range ids(env) {
		if id != l.ID {
			others = append(others, id)
		}
	}
	if env.Rand.IntN(2) == 0 {
		return Grudge{l.ID: others}, nil
	}
	g := Grudge{}
	for _, o := range others {
		g[o] = []string{l.ID}
	}
	return g, nil
}

func describeGrudge(g Grudge) string {
	var keys []string
	for k := range g {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		from := append([]string(nil), g[k]...)
		sort.Strings(from)
		parts = append(parts, fmt.Sprintf("%s drops %s", k, strings.Join(from, ",")))
	}
	if len(parts) == 0 {
		return "no drops"
	}
	return strings.Join(parts, "; ")
}

// ---- process faults ----

func pickRandom(_ context.Context, env *Env) ([]*Node, error) {
	return []*Node{env.Cluster.Nodes[env.Rand.IntN(len(env.Cluster.Nodes))]}, nil
}

func pickLeader(ctx context.Context, env *Env) ([]*Node, error) {
	l, err := env.Cluster.WaitLeader(ctx)
	if err != nil {
		return nil, err
	}
	return []*Node{l}, nil
}

func pickAll(_ context.Context, env *Env) ([]*Node, error) {
	return append([]*Node(nil), env.Cluster.Nodes...), nil
}

func nodeIDs(ns []*Node) string {
	var out []string
	for _, n := range ns {
		out = append(out, n.ID)
	}
	return strings.Join(out, ",")
}

// kill sends SIGKILL to the picked nodes and restarts them, with their data,
// on heal.
type kill struct {
	name   string
	pick   func(ctx context.Context, env *Env) ([]*Node, error)
	killed []*Node
}

func (k *kill) Name() string       { return k.name }
func (k *kill) NeedsNetwork() bool { return false }
func (k *kill) NeedsLazyFS() bool  { return false }

func (k *kill) Inject(ctx context.Context, env *Env) (string, error) {
	ns, err := k.pick(ctx, env)
	if err != nil {
		return "", err
	}
	k.killed = ns
	for _, n := range ns {
		if err := n.Proc.Kill(); err != nil {
			return "", fmt.Errorf("kill -9 %s: %w", n.ID, err)
		}
	}
	return "kill -9 " + nodeIDs(ns), nil
}

func (k *kill) Heal(_ context.Context, env *Env) (string, error) {
	ns := k.killed
	k.killed = nil
	return restartAll(env, ns)
}

// restartAll starts every one of ns that is down again, on its data dir.
func restartAll(env *Env, ns []*Node) (string, error) {
	for _, n := range ns {
		if n.Proc.Running() {
			continue
		}
		if err := env.Cluster.Restart(n, false); err != nil {
			return "", err
		}
	}
	return "restarted " + nodeIDs(ns), nil
}

// pauseLeader stops the leader with SIGSTOP: it keeps its sockets and
// wakes up believing it still leads.
type pauseLeader struct{ paused *Node }

func (p *pauseLeader) Name() string       { return "pause-leader" }
func (p *pauseLeader) NeedsNetwork() bool { return false }
func (p *pauseLeader) NeedsLazyFS() bool  { return false }

func (p *pauseLeader) Inject(ctx context.Context, env *Env) (string, error) {
	l, err := env.Cluster.WaitLeader(ctx)
	if err != nil {
		return "", err
	}
	if err := l.Proc.Pause(); err != nil {
		return "", err
	}
	p.paused = l
	return "SIGSTOP " + l.ID, nil
}

func (p *pauseLeader) Heal(context.Context, *Env) (string, error) {
	if p.paused == nil {
		return "", nil
	}
	n := p.paused
	p.paused = nil
	return "SIGCONT " + n.ID, n.Proc.Resume()
}

// removeReadd removes a server from the Raft configuration and stops it,
// then, on heal, wipes its data and starts it as a new joiner, the way an
// operator replaces a server: the leader must add it back and bring it up
// to date (by snapshot or log). Injections alternate between a random
// follower (removed by a leader that stays leader) and the leader itself
// (which steps down, so a new leader does the re-add): the two take
// different paths through the cluster, and each case covers both.
type removeReadd struct {
	removed *Node
	count   int
}

func (r *removeReadd) Name() string       { return "remove-readd" }
func (r *removeReadd) NeedsNetwork() bool { return false }
func (r *removeReadd) NeedsLazyFS() bool  { return false }

func (r *removeReadd) Inject(ctx context.Context, env *Env) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	leader, err := env.Cluster.WaitLeader(cctx)
	if err != nil {
		return "", err
	}
	n := leader
	role := "leader"
	if r.count%2 == 0 {
		var followers []*Node
		for _, o := range env.Cluster.Nodes {
			if o != leader {
				followers = append(followers, o)
			}
		}
		n = followers[env.Rand.IntN(len(followers))]
		role = "follower"
	}
	r.count++
	// Removing a server from a configuration that already lacks one (an
	// earlier re-add failed) would leave a single voter: refuse, the
	// earlier failure is already reported.
	if voters, err := env.Cluster.Voters(cctx); err != nil || len(voters) != len(env.Cluster.Nodes) {
		return "", fmt.Errorf("not removing %s: voters %v (err %v), want all %d servers", n.ID, voters, err, len(env.Cluster.Nodes))
	}
	how := "removed"
	if err := env.Cluster.RemoveServer(cctx, n.ID); err != nil {
		// A removal whose outcome is unknown (the leader lost its
		// leadership while committing it) may have been committed all
		// the same: then the server is out and must come back at heal.
		voters, verr := env.Cluster.WaitVoters(ctx, len(env.Cluster.Nodes)-1, 5*time.Second)
		if verr != nil || slices.Contains(voters, n.ID) {
			return "", fmt.Errorf("remove %s: %w", n.ID, err)
		}
		how = fmt.Sprintf("removed (the call said %q, the configuration lacks it)", err)
	}
	r.removed = n
	if err := n.Proc.Kill(); err != nil {
		return "", err
	}
	return how + " " + role + " " + n.ID + " from the configuration and stopped it", nil
}

func (r *removeReadd) Heal(ctx context.Context, env *Env) (string, error) {
	n := r.removed
	if n == nil {
		return "", nil
	}
	r.removed = nil
	if err := env.Cluster.Restart(n, true); err != nil {
		return "", err
	}
	voters, err := env.Cluster.WaitVoters(ctx, len(env.Cluster.Nodes), 20*time.Second)
	if err != nil {
		return "", fmt.Errorf("%s not a voter again: %w", n.ID, err)
	}
	return "restarted " + n.ID + " with an empty data dir; voters " + strings.Join(voters, ","), nil
}

// ---- heal everything ----

// HealAll undoes every fault there may be: drop rules, moved clocks,
// paused and stopped processes. It runs after every schedule, whatever happened.
func HealAll(env *Env) error {
	var errs []string
	if env.Net != nil {
		if err := env.Net.Heal(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	errs = append(errs, resetClocks(env.Cluster)...)
	for _, n := range env.Cluster.Nodes {
		if n.Proc.Paused() {
			if err := n.Proc.Resume(); err != nil {
				errs = append(errs, err.Error())
			}
		}
		if !n.Proc.Running() {
			if err := n.Proc.Start(); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("heal all: %s", strings.Join(errs, "; "))
	}
	return nil
}

// ---- schedule ----

// FaultEvent is one line of nemesis.jsonl.
type FaultEvent struct {
	Time    int64  `json:"time_ns"`
	Nemesis string `json:"nemesis"`
	Action  string `json:"action"` // inject, heal
	Detail  string `json:"detail,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Window is the span of one fault, from the start of its injection to the
// end of its heal.
type Window struct {
	Nemesis string `json:"nemesis"`
	Start   int64  `json:"start_ns"`
	End     int64  `json:"end_ns"`
}

// Schedule decides which nemesis runs when. The same seed gives the same
// sequence of nemeses, durations and random picks.
type Schedule struct {
	Nemeses []Nemesis
	Cycles  int
	// Quiet and Fault are [min, max] durations; each cycle draws from them.
	Quiet [2]time.Duration
	Fault [2]time.Duration
}

// Duration is the longest the schedule can take, for the progress line.
func (s Schedule) Duration() time.Duration {
	return time.Duration(s.Cycles)*(s.Quiet[1]+s.Fault[1]) + s.Quiet[1]
}

// NemesisLog records fault events to nemesis.jsonl and keeps the windows.
type NemesisLog struct {
	rec *Recorder
	mu  sync.Mutex
	f   *os.File
	evs []FaultEvent
}

// NewNemesisLog writes events to path, timed by rec's clock.
func NewNemesisLog(path string, rec *Recorder) (*NemesisLog, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &NemesisLog{rec: rec, f: f}, nil
}

func (l *NemesisLog) add(ev FaultEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, ev)
	b, _ := json.Marshal(ev)
	l.f.Write(append(b, '\n'))
}

// Events returns every event so far.
func (l *NemesisLog) Events() []FaultEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]FaultEvent(nil), l.evs...)
}

// Windows pairs each inject with the heal that follows it.
func (l *NemesisLog) Windows() []Window {
	var out []Window
	var open *Window
	for _, ev := range l.Events() {
		switch ev.Action {
		case "inject-start":
			open = &Window{Nemesis: ev.Nemesis, Start: ev.Time}
		case "heal":
			if open != nil {
				open.End = ev.Time
				out = append(out, *open)
				open = nil
			}
		}
	}
	if open != nil {
		open.End = l.rec.Since()
		out = append(out, *open)
	}
	return out
}

// Close closes nemesis.jsonl.
func (l *NemesisLog) Close() error { return l.f.Close() }

// Run executes the schedule until it ends or ctx is cancelled; tick is
// called with a phase description whenever the phase changes. It always
// heals the current fault before returning.
func (s Schedule) Run(ctx context.Context, env *Env, log *NemesisLog, tick func(phase string)) {
	sleep := func(r [2]time.Duration) bool {
		d := r[0]
		if r[1] > r[0] {
			d += time.Duration(env.Rand.Int64N(int64(r[1] - r[0])))
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	for i := 0; i < s.Cycles; i++ {
		tick("quiet")
		if !sleep(s.Quiet) {
			return
		}
		nem := s.Nemeses[env.Rand.IntN(len(s.Nemeses))]
		tick("fault: " + nem.Name())
		log.add(FaultEvent{Time: log.rec.Since(), Nemesis: nem.Name(), Action: "inject-start"})
		ictx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		detail, err := nem.Inject(ictx, env)
		cancel()
		log.add(faultEvent(log.rec.Since(), nem.Name(), "inject", detail, err))
		completed := sleep(s.Fault)
		tick("heal: " + nem.Name())
		hctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		detail, err = nem.Heal(hctx, env)
		cancel()
		log.add(faultEvent(log.rec.Since(), nem.Name(), "heal", detail, err))
		if !completed {
			return
		}
	}
	tick("quiet")
	sleep(s.Quiet)
}

func faultEvent(t int64, nem, action, detail string, err error) FaultEvent {
	ev := FaultEvent{Time: t, Nemesis: nem, Action: action, Detail: detail}
	if err != nil {
		ev.Error = err.Error()
	}
	return ev
}

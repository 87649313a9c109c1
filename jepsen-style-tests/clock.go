package jepsen

import (
	"context"
	"fmt"
	"time"
)

// The suite's binary is built with -tags fakeclock (BuildBinary): a server
// started with --fake-clock-file reads its wall-clock offset from that
// file (cmd/quorumq/fakeclock.go), one line:
//
//	offset <duration>
//	strobe <duration> <period>    (+<duration> and -<duration> in turn)
//
// so the clock nemesis moves one process's clock, not the machine's.

// clockOffset is the clock file's line for a fixed offset.
func clockOffset(d time.Duration) string { return fmt.Sprintf("offset %s\n", d) }

// clockStrobe is the clock file's line for a clock that flips between +d
// and -d every period.
func clockStrobe(d, period time.Duration) string { return fmt.Sprintf("strobe %s %s\n", d, period) }

// fakeClockNemesis is a nemesis that needs the nodes started with clock
// files.
type fakeClockNemesis interface {
	needsFakeClock()
}

// clockStep is one kind of clock fault.
type clockStep func(ctx context.Context, env *Env) (moved []*Node, detail string, err error)

// clockJumps moves wall clocks: in turn, the leader's clock jumps ±1 h,
// a follower's clock jumps ±1 h, and a random node's clock strobes
// between +1 h and -1 h every 100 ms (the sign of a jump is random; the
// first kind of a case is random). Heal sets the moved clocks right
// again, which is a jump too.
type clockJumps struct {
	steps []clockStep
	next  int
	begun bool
	moved []*Node
}

func newClockJumps() *clockJumps {
	return &clockJumps{steps: []clockStep{jumpLeader, jumpFollower, strobeOne}}
}

func (c *clockJumps) Name() string       { return "clock" }
func (c *clockJumps) NeedsNetwork() bool { return false }
func (c *clockJumps) NeedsLazyFS() bool  { return false }
func (c *clockJumps) needsFakeClock()    {}

func (c *clockJumps) Inject(ctx context.Context, env *Env) (string, error) {
	if !c.begun {
		c.begun = true
		c.next = env.Rand.IntN(len(c.steps))
	}
	step := c.steps[c.next%len(c.steps)]
	c.next++
	moved, detail, err := step(ctx, env)
	c.moved = append(c.moved, moved...)
	return detail, err
}

func (c *clockJumps) Heal(context.Context, *Env) (string, error) {
	moved := c.moved
	c.moved = nil
	for _, n := range moved {
		if err := n.SetClock(clockOffset(0)); err != nil {
			return "", err
		}
	}
	if len(moved) == 0 {
		return "", nil
	}
	return "clock of " + nodeIDs(moved) + " right again", nil
}

// randomHour is +1 h or -1 h.
func randomHour(env *Env) time.Duration {
	if env.Rand.IntN(2) == 0 {
		return -time.Hour
	}
	return time.Hour
}

func jumpLeader(ctx context.Context, env *Env) ([]*Node, string, error) {
	l, err := env.Cluster.WaitLeader(ctx)
	if err != nil {
		return nil, "", err
	}
	return jumpTo(l, "leader", randomHour(env))
}

// leaderForward always moves the leader's clock +1 h: the must-fail check
// uses it alone.
func leaderForward(ctx context.Context, env *Env) ([]*Node, string, error) {
	l, err := env.Cluster.WaitLeader(ctx)
	if err != nil {
		return nil, "", err
	}
	return jumpTo(l, "leader", time.Hour)
}

func jumpFollower(ctx context.Context, env *Env) ([]*Node, string, error) {
	l, err := env.Cluster.WaitLeader(ctx)
	if err != nil {
		return nil, "", err
	}
	var followers []*Node
	for _, n := range env.Cluster.Nodes {
		if n != l {
			followers = append(followers, n)
		}
	}
	return jumpTo(followers[env.Rand.IntN(len(followers))], "follower", randomHour(env))
}

func jumpTo(n *Node, role string, d time.Duration) ([]*Node, string, error) {
	if err := n.SetClock(clockOffset(d)); err != nil {
		return nil, "", err
	}
	return []*Node{n}, fmt.Sprintf("clock of %s %s jumped %+v", role, n.ID, d), nil
}

func strobeOne(_ context.Context, env *Env) ([]*Node, string, error) {
	n := env.Cluster.Nodes[env.Rand.IntN(len(env.Cluster.Nodes))]
	if err := n.SetClock(clockStrobe(time.Hour, 100*time.Millisecond)); err != nil {
		return nil, "", err
	}
	return []*Node{n}, fmt.Sprintf("clock of %s strobes between +1h and -1h every 100ms", n.ID), nil
}

// needsClockFiles reports whether any nemesis of s moves clocks.
func needsClockFiles(s Schedule) bool {
	for _, n := range s.Nemeses {
		if _, ok := n.(fakeClockNemesis); ok {
			return true
		}
	}
	return false
}

// resetClocks sets every node's clock file, if it has one, to offset 0.
func resetClocks(c *Cluster) []string {
	var errs []string
	for _, n := range c.Nodes {
		if n.ClockFile != "" {
			if err := n.SetClock(clockOffset(0)); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	return errs
}

package cluster

import (
	"cmp"
	"encoding/binary"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// Cluster time is the now a leader stamps on each command. It must not
// follow one node's wall clock: a leader whose clock jumps +1 h would
// expire every lease and dedup entry at once, and the FSM, which keeps time
// monotone, would stay an hour ahead after leadership moves; a clock that
// jumps back would make time stand still. So (DESIGN.md, "Cluster time"):
//
//   - Anchor. Every node remembers the largest (applied cluster time −
//     local monotonic reading) of the commands it applied, and the leader
//     also of the stamps it made. Its estimate is that plus its monotonic
//     clock now: time runs on from the last applied command at the speed
//     of a monotonic clock, across leader changes, whatever any wall clock
//     does.
//   - Reference. Nodes read each other's wall clocks in memberlist's ping
//     acks. When a majority of the voters (the leader's own clock counted)
//     agree within clockTolerance, their median is the reference, and the
//     leader's stamp may run ahead of the anchor towards it, by at most
//     catchUpRate of the monotonic time since its last stamp: cluster time
//     catches up after the whole cluster was down, and never goes faster
//     than 1 + catchUpRate times real time. A reference behind the anchor
//     does not slow time down (that would stretch every lease).
const (
	// clockTolerance is how far the voters' clocks may be apart and
	// still count as agreeing.
	clockTolerance = 500 * time.Millisecond
	// clockSampleTTL: a peer's clock reading older than this is not used
	// (memberlist probes each peer every few seconds).
	clockSampleTTL = 10 * time.Second
	// clockMaxRTT: a reading whose ping took longer is too uncertain.
	clockMaxRTT = clockTolerance
	// catchUpRate bounds how much faster than the monotonic clock
	// cluster time may run while it catches up with the reference.
	catchUpRate = 0.1
	// catchUpWindow caps the monotonic time one stamp's catch-up is
	// counted over, so a leader's first stamp in a while (a new term)
	// cannot make up for all the time since its last one at once; a
	// leader stamps at least every TickInterval.
	catchUpWindow = time.Second
	// clockPayloadVersion starts our memberlist ack payload.
	clockPayloadVersion = 1
)

// clockSample is one reading of a peer's wall clock.
type clockSample struct {
	wall int64         // the peer's wall clock, ns since the epoch ...
	mono time.Duration // ... at this local monotonic reading
}

// clusterTime is one node's estimate of cluster time (see above). It is
// safe for concurrent use; the FSM stays pure and never sees it.
type clusterTime struct {
	clock Clock
	self  string
	log   *slog.Logger

	mu       sync.Mutex
	anchored bool
	base     int64         // cluster time minus monotonic reading, ns
	lastMono time.Duration // of the last stamp
	peers    map[string]clockSample
	buf      []clockReading // readingsLocked's, reused
	// warned* remember what was last logged, so a state is logged once
	// when it begins and once when it ends.
	warnedNoMajority, warnedOutvoted, warnedAhead bool
}

func newClusterTime(clock Clock, self string, log *slog.Logger) *clusterTime {
	return &clusterTime{clock: clock, self: self, log: log, peers: map[string]clockSample{}}
}

// applied records that a command with cluster time t (ns) was applied now.
func (c *clusterTime) applied(t int64) {
	m := c.clock.Mono()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.anchorLocked(t, m)
}

func (c *clusterTime) anchorLocked(t int64, m time.Duration) {
	if b := t - int64(m); !c.anchored || b > c.base {
		c.base = b
	}
	c.anchored = true
}

// sample records a peer's wall clock as read in a ping ack that came back
// after rtt: the peer wrote it about rtt/2 ago.
func (c *clusterTime) sample(id string, wall int64, rtt time.Duration) {
	if id == c.self || rtt > clockMaxRTT || rtt < 0 {
		return
	}
	m := c.clock.Mono() - rtt/2
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peers[id] = clockSample{wall: wall, mono: m}
}

// clockReading is one voter's wall clock projected to now.
type clockReading struct {
	id   string
	wall int64
}

// readingsLocked projects the fresh samples of voters, and this node's own
// wall clock, to monotonic reading m.
// The slice is c.buf's, valid until the next call.
func (c *clusterTime) readingsLocked(voters []string, m time.Duration) []clockReading {
	out := append(c.buf[:0], clockReading{c.self, c.clock.Wall().UnixNano()})
	for _, id := range voters {
		s, ok := c.peers[id]
		if id == c.self || !ok || m-s.mono > clockSampleTTL {
			continue
		}
		out = append(out, clockReading{id, s.wall + int64(m-s.mono)})
	}
	c.buf = out
	return out
}

// reference returns the median of the largest set of readings within
// clockTolerance of each other, if that set holds a majority of the
// voters, and whether self's reading is in it. It sorts rs.
func reference(rs []clockReading, voters int, self string) (ref int64, selfIn, ok bool) {
	if voters == 0 {
		return 0, false, false
	}
	slices.SortFunc(rs, func(a, b clockReading) int { return cmp.Compare(a.wall, b.wall) })
	bestLo, bestN := 0, 0
	for lo, hi := 0, 0; lo < len(rs); lo++ {
		for hi < len(rs) && rs[hi].wall-rs[lo].wall <= int64(clockTolerance) {
			hi++
		}
		if hi-lo > bestN {
			bestLo, bestN = lo, hi-lo
		}
	}
	if bestN < voters/2+1 {
		return 0, false, false
	}
	group := rs[bestLo : bestLo+bestN]
	for _, r := range group {
		selfIn = selfIn || r.id == self
	}
	mid := len(group) / 2
	ref = group[mid].wall
	if len(group)%2 == 0 {
		ref = group[mid-1].wall + (group[mid].wall-group[mid-1].wall)/2
	}
	return ref, selfIn, true
}

// estimateLocked is the anchor's cluster time at m, never before fsmNow
// (the FSM's last applied time).
func (c *clusterTime) estimateLocked(fsmNow int64, m time.Duration) int64 {
	if !c.anchored {
		return fsmNow
	}
	return max(c.base+int64(m), fsmNow)
}

// now is the cluster time this node would stamp, for reads that must
// agree with the stamps (long-poll due times). It does not catch up with
// the reference: a read a little behind costs a long poll at most one
// recheck.
func (c *clusterTime) now(fsmNow int64) time.Time {
	m := c.clock.Mono()
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Unix(0, c.estimateLocked(fsmNow, m))
}

// stamp returns the cluster time for a command proposed now and anchors
// it. fsmNow is the FSM's last applied time; voters the IDs of the voters
// of the latest configuration.
func (c *clusterTime) stamp(fsmNow int64, voters []string) int64 {
	m := c.clock.Mono()
	c.mu.Lock()
	defer c.mu.Unlock()
	rs := c.readingsLocked(voters, m)
	own := rs[0].wall
	ref, selfIn, ok := reference(rs, len(voters), c.self)
	c.noteLocked(ok, selfIn, ref, own, len(rs), len(voters))
	var s int64
	switch {
	case !c.anchored && fsmNow == 0:
		// The cluster's first command: there is no time yet but the
		// clocks'. The majority's if they agree, else this leader's.
		s = own
		if ok {
			s = ref
		}
	default:
		s = c.estimateLocked(fsmNow, m)
		if ok && ref > s {
			allow := int64(catchUpRate * float64(min(m-c.lastMono, catchUpWindow)))
			s += min(ref-s, max(allow, 0))
		}
		if ok && s > ref+int64(clockTolerance) && !c.warnedAhead {
			c.warnedAhead = true
			c.log.Warn("cluster time is ahead of the voters' clocks; it runs on at the speed of the monotonic clock and never backwards",
				"ahead", time.Duration(s-ref).Round(time.Millisecond))
		} else if ok && s <= ref+int64(clockTolerance) && c.warnedAhead {
			c.warnedAhead = false
			c.log.Info("cluster time is back within tolerance of the voters' clocks")
		}
	}
	c.anchorLocked(s, m)
	c.lastMono = m
	return s
}

// noteLocked logs when the voters' clocks stop or start agreeing, and
// when this node's own clock leaves or rejoins the majority.
func (c *clusterTime) noteLocked(ok, selfIn bool, ref, own int64, readings, voters int) {
	if !ok && readings < voters/2+1 {
		return // not enough clocks read yet (just started): nothing to say
	}
	if !ok != c.warnedNoMajority {
		c.warnedNoMajority = !ok
		if !ok {
			c.log.Warn("no majority of the voters' wall clocks agree within tolerance; cluster time runs on this leader's monotonic clock",
				"tolerance", clockTolerance, "clocks", readings)
		} else {
			c.log.Info("a majority of the voters' wall clocks agree again", "tolerance", clockTolerance)
		}
	}
	outvoted := ok && !selfIn
	if outvoted != c.warnedOutvoted {
		c.warnedOutvoted = outvoted
		if outvoted {
			c.log.Warn("this node's wall clock disagrees with the voters' majority; cluster time does not follow it",
				"offset", time.Duration(own-ref).Round(time.Millisecond))
		} else {
			c.log.Info("this node's wall clock agrees with the voters' majority again")
		}
	}
}

// offsets returns, for this node and every peer with a fresh reading,
// its wall clock minus this node's cluster time now; none before this
// node has a cluster time (no command applied or stamped yet).
func (c *clusterTime) offsets(fsmNow int64, ids []string) map[string]time.Duration {
	m := c.clock.Mono()
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.estimateLocked(fsmNow, m)
	out := map[string]time.Duration{}
	if now == 0 {
		return out // no command applied or stamped yet: no cluster time to compare with
	}
	for _, r := range c.readingsLocked(ids, m) {
		out[r.id] = time.Duration(r.wall - now)
	}
	return out
}

// AckPayload implements memberlist.PingDelegate: every ping ack carries
// this node's wall clock.
func (c *clusterTime) AckPayload() []byte {
	b := make([]byte, 9)
	b[0] = clockPayloadVersion
	binary.BigEndian.PutUint64(b[1:], uint64(c.clock.Wall().UnixNano()))
	return b
}

// NotifyPingComplete implements memberlist.PingDelegate. A payload of
// another format (a release that sends none) is ignored.
func (c *clusterTime) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	if len(payload) != 9 || payload[0] != clockPayloadVersion {
		return
	}
	c.sample(other.Name, int64(binary.BigEndian.Uint64(payload[1:])), rtt)
}

var _ memberlist.PingDelegate = (*clusterTime)(nil)

// voterRecheck is how long voters() trusts its last look at the
// configuration.
const voterRecheck = time.Second

// voters returns the IDs of the voters of the latest Raft configuration,
// read at most once per voterRecheck.
func (n *Node) voters() []string {
	n.votersMu.Lock()
	defer n.votersMu.Unlock()
	if n.votersAt != 0 && n.cfg.Clock.Mono()-n.votersAt < voterRecheck {
		return n.voterIDs
	}
	var ids []string
	for _, s := range n.raft.GetConfiguration().Configuration().Servers {
		if s.Suffrage == raft.Voter {
			ids = append(ids, string(s.ID))
		}
	}
	n.voterIDs, n.votersAt = ids, n.cfg.Clock.Mono()
	return ids
}

// clusterNow is cluster time as this node would stamp it now.
func (n *Node) clusterNow() time.Time {
	return n.ctime.now(n.fsm.NowUnixNano())
}

// clockOffsets is this node's view of every voter's wall clock against
// its cluster time, sorted by ID (voters with no recent reading missing).
func (n *Node) clockOffsets() []*quorumqpb.ClockOffset {
	offs := n.ctime.offsets(n.fsm.NowUnixNano(), n.voters())
	out := make([]*quorumqpb.ClockOffset, 0, len(offs))
	for id, d := range offs {
		out = append(out, &quorumqpb.ClockOffset{Id: id, OffsetNs: int64(d)})
	}
	slices.SortFunc(out, func(a, b *quorumqpb.ClockOffset) int { return strings.Compare(a.GetId(), b.GetId()) })
	return out
}

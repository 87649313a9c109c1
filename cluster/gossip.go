package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
)

// nodeMeta is what every node publishes in its gossip metadata.
type nodeMeta struct {
	ID   string `json:"id"`
	Raft string `json:"raft"`
	API  string `json:"api"`
	// Fresh is true until the node has seen itself in a Raft
	// configuration. Only fresh nodes count for bootstrap and only fresh
	// nodes are added by the leader, so a server removed by an admin is
	// never pulled back in just because it is still running.
	Fresh bool `json:"fresh"`
	// Boot is random per process start. A removal is remembered for the
	// boot it saw, so the same server process stays out, while a server
	// wiped and started again (a new boot, fresh again) is added back.
	Boot string `json:"boot,omitempty"`
	// Features are the log features the node applies (features.go); a
	// server of a release before them gossips none.
	Features []string `json:"features,omitempty"`
}

// member is one gossip member as this node last heard of it.
type member struct {
	meta   nodeMeta
	gossip string // gossip address
	state  string // alive, suspect, dead, left
}

// members is the membership view fed by memberlist's events. It doubles as
// raft's ServerAddressProvider, so a server that moved to a new Raft
// address is dialed at the address it gossips.
type members struct {
	mu      sync.Mutex
	byID    map[string]*member
	changed chan struct{} // signalled (non-blocking) on every change
	onError func(node string, err error)
}

func newMembers(onError func(string, error)) *members {
	return &members{byID: map[string]*member{}, changed: make(chan struct{}, 1), onError: onError}
}

func (m *members) signal() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

func (m *members) set(n *memberlist.Node, state string) {
	var meta nodeMeta
	if err := json.Unmarshal(n.Meta, &meta); err != nil || meta.ID == "" {
		if m.onError != nil {
			m.onError(n.Name, fmt.Errorf("gossip metadata %q unreadable: %v", n.Meta, err))
		}
		return
	}
	m.mu.Lock()
	m.byID[meta.ID] = &member{meta: meta, gossip: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))), state: state}
	m.mu.Unlock()
	m.signal()
}

// NotifyJoin, NotifyLeave and NotifyUpdate implement memberlist.EventDelegate.
func (m *members) NotifyJoin(n *memberlist.Node)   { m.set(n, "alive") }
func (m *members) NotifyUpdate(n *memberlist.Node) { m.set(n, "alive") }
func (m *members) NotifyLeave(n *memberlist.Node) {
	state := "dead"
	if n.State == memberlist.StateLeft {
		state = "left"
	}
	m.set(n, state)
}

// ServerAddr implements raft.ServerAddressProvider.
func (m *members) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mem, ok := m.byID[string(id)]; ok && mem.meta.Raft != "" {
		return raft.ServerAddress(mem.meta.Raft), nil
	}
	return "", fmt.Errorf("server %q not known from gossip", id)
}

// get returns a copy of the member with id.
func (m *members) get(id string) (member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mem, ok := m.byID[id]
	if !ok {
		return member{}, false
	}
	return *mem, true
}

// all returns a copy of every member, sorted by ID.
func (m *members) all() []member {
	m.mu.Lock()
	out := make([]member, 0, len(m.byID))
	for _, mem := range m.byID {
		out = append(out, *mem)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].meta.ID < out[j].meta.ID })
	return out
}

// metaDelegate implements memberlist.Delegate: it publishes this node's
// metadata and nothing else (no user messages, no state exchange).
type metaDelegate struct {
	mu   sync.Mutex
	meta nodeMeta
}

func (d *metaDelegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	b, _ := json.Marshal(d.meta)
	if len(b) > limit {
		return nil // cannot happen with IDs and addresses within their limits
	}
	return b
}
func (d *metaDelegate) NotifyMsg([]byte)                           {}
func (d *metaDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *metaDelegate) LocalState(join bool) []byte                { return nil }
func (d *metaDelegate) MergeRemoteState(buf []byte, join bool)     {}

// features returns the log features this node gossips.
func (d *metaDelegate) features() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.meta.Features
}

func (d *metaDelegate) setFresh(fresh bool) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.meta.Fresh == fresh {
		return false
	}
	d.meta.Fresh = fresh
	return true
}

// startGossip creates the memberlist for n.
func (n *Node) startGossip() error {
	var mc *memberlist.Config
	if n.cfg.LocalGossip {
		mc = memberlist.DefaultLocalConfig()
	} else {
		mc = memberlist.DefaultLANConfig()
	}
	mc.Name = n.cfg.NodeID
	host, port, err := splitHostPort("gossip address", n.cfg.GossipAddr)
	if err != nil {
		return err
	}
	mc.BindAddr, mc.BindPort = host, port
	if n.cfg.GossipAdvertise != "" {
		ah, ap, err := splitHostPort("gossip advertise address", n.cfg.GossipAdvertise)
		if err != nil {
			return err
		}
		// memberlist wants an IP; a host name (a container's, a DNS
		// name) is resolved once at start, as the Raft layer does.
		if net.ParseIP(ah) == nil {
			ips, err := net.DefaultResolver.LookupIP(context.Background(), "ip4", ah)
			if err != nil || len(ips) == 0 {
				return configErr("gossip advertise address %q: cannot resolve %s to an IPv4 address (%v)", n.cfg.GossipAdvertise, ah, err)
			}
			ah = ips[0].String()
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ah, ap
	} else if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		return configErr("gossip address %q is not a specific IP; set a gossip advertise address", n.cfg.GossipAddr)
	} else {
		mc.AdvertiseAddr, mc.AdvertisePort = host, port
	}
	mc.Delegate = n.delegate
	mc.Events = n.members
	mc.Ping = n.ctime // ping acks carry wall clocks (clustertime.go)
	mc.Logger = stdlogFor(n.log, "memberlist")
	mc.SecretKey = n.cfg.GossipKey
	if n.cfg.gossipTuning != nil {
		n.cfg.gossipTuning(mc)
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return fmt.Errorf("gossip on %s: %w", n.cfg.GossipAddr, err)
	}
	n.ml = ml
	n.gossipAddr = net.JoinHostPort(ml.LocalNode().Addr.String(), strconv.Itoa(int(ml.LocalNode().Port)))
	return nil
}

func splitHostPort(what, addr string) (string, int, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, configErr("%s %q: %v", what, addr, err)
	}
	p, err := strconv.Atoi(ps)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, configErr("%s %q: port must be 0..65535", what, addr)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, p, nil
}

// Pauses of joinLoop. While something is missing from gossip, the pause
// between two join attempts doubles from joinBackoffMin up to
// joinBackoffMax; once nothing is missing it is joinCheck. The cap is what
// bounds how long after a network heals a node that was cut off for any
// length of time is back in everyone's gossip.
const (
	joinBackoffMin = 200 * time.Millisecond
	joinBackoffMax = 5 * time.Second
	joinCheck      = time.Second
)

// joinLoop keeps this node in its cluster's gossip for as long as it runs.
// At start it tries the Join addresses until one answers, so servers can
// be started in any order. Afterwards it joins again whenever a known
// server is missing from gossip: memberlist declares a node that was cut
// off dead, stops probing it and, after GossipToTheDeadTime, forgets it,
// so neither side ever contacts the other again on its own although Raft
// heals. A server is known when it is in the latest Raft configuration or
// is a configured Join address; missing means not alive in this node's
// view. The addresses tried are the Join addresses no alive member has and
// the last gossip address each missing server published. A join is
// memberlist's own (the gossip key is checked as at start): it admits no
// member that could not have joined at start, and it changes no Raft
// configuration (only the leader's reconcile adds servers).
func (n *Node) joinLoop() {
	defer n.wg.Done()
	res := &joinResolver{defaultPort: n.ml.LocalNode().Port, cache: map[string]resolvedJoin{}}
	backoff := joinBackoffMin
	var wait time.Duration
	var lastMissing string
	for {
		select {
		case <-n.stop:
			return
		case <-time.After(wait):
		}
		addrs, missing := n.joinTargets(res)
		if len(addrs) == 0 {
			if len(missing) == 0 && lastMissing != "" {
				n.log.Info("gossip whole again")
			}
			lastMissing = strings.Join(missing, ",")
			backoff, wait = joinBackoffMin, joinCheck
			continue
		}
		if m := strings.Join(missing, ","); m != lastMissing {
			n.log.Info("missing from gossip; joining", "missing", missing, "addrs", addrs)
			lastMissing = m
		}
		done := make(chan joinResult, 1)
		go func() { done <- n.joinEach(addrs) }()
		var r joinResult
		select {
		case <-n.stop:
			// A join held up by an address that does not answer ends by
			// itself within memberlist's TCP timeout; stopping the node
			// does not wait for it.
			return
		case r = <-done:
		}
		if r.joined > 0 {
			n.log.Info("joined gossip", "contacted", r.joined, "addrs", addrs, "members", n.ml.NumMembers())
			backoff, wait = joinBackoffMin, joinCheck
			continue
		}
		n.log.Debug("gossip join failed; retrying", "addrs", addrs, "err", r.err, "in", backoff)
		wait = backoff
		backoff = min(2*backoff, joinBackoffMax)
	}
}

type joinResult struct {
	joined int // addresses that answered
	err    error
}

// joinEach joins every address at once. memberlist's Join tries a list one
// address after the other, so one that does not answer (a host still cut
// off, or down) would hold up the others for its TCP timeout, 10 s on a
// LAN, and with them the return of a node whose network has healed.
func (n *Node) joinEach(addrs []string) joinResult {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		r    joinResult
		errs []error
	)
	for _, a := range addrs {
		wg.Go(func() {
			joined, err := n.ml.Join([]string{a})
			mu.Lock()
			defer mu.Unlock()
			r.joined += joined
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	r.err = errors.Join(errs...)
	return r
}

// joinTargets returns the gossip addresses joinLoop should try now and
// what is missing from gossip ("join <addr>" for a Join address, the
// server ID for a server of the Raft configuration). A missing server
// whose gossip address was never seen adds no address: the Join addresses
// are then the only way back.
func (n *Node) joinTargets(res *joinResolver) (addrs, missing []string) {
	aliveAt := map[string]bool{}
	byID := map[string]member{}
	for _, m := range n.members.all() {
		byID[m.meta.ID] = m
		if m.state == "alive" {
			aliveAt[m.gossip] = true
		}
	}
	add := func(a string) {
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	for _, j := range n.cfg.Join {
		if !slices.ContainsFunc(res.lookup(j), func(a string) bool { return aliveAt[a] }) {
			missing = append(missing, "join "+j)
			add(j)
		}
	}
	for _, s := range n.raft.GetConfiguration().Configuration().Servers {
		id := string(s.ID)
		if id == n.cfg.NodeID {
			continue
		}
		m, ok := byID[id]
		if ok && m.state == "alive" {
			continue
		}
		missing = append(missing, id)
		if ok && m.gossip != "" {
			add(m.gossip)
		}
	}
	return addrs, missing
}

// joinResolver maps a Join address to the gossip addresses (ip:port) it
// names, as memberlist resolves it (an optional "name/" prefix, the local
// gossip port when none is given). A host name is looked up at most once
// a minute, so checking every second does not query DNS every second.
type joinResolver struct {
	defaultPort uint16
	cache       map[string]resolvedJoin
}

type resolvedJoin struct {
	addrs []string
	at    time.Time
}

func (r *joinResolver) lookup(join string) []string {
	if c, ok := r.cache[join]; ok && time.Since(c.at) < time.Minute {
		return c.addrs
	}
	hostPort := join
	if i := strings.Index(hostPort, "/"); i >= 0 {
		hostPort = hostPort[i+1:]
	}
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		host, port = hostPort, strconv.Itoa(int(r.defaultPort))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	hosts, _ := net.DefaultResolver.LookupHost(ctx, host)
	cancel()
	var out []string
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			out = append(out, net.JoinHostPort(ip.String(), port))
		}
	}
	r.cache[join] = resolvedJoin{addrs: out, at: time.Now()}
	return out
}

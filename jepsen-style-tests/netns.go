package jepsen

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// nsPrefix starts the name of every namespace this package creates, followed
// by the creating process's PID, so SweepStale can tell leftovers of a dead
// run from namespaces of a run still in progress.
const nsPrefix = "qjepsen-"

// ErrNoNetns is returned by NewNetwork when the process cannot create
// network namespaces (not root, or no CAP_NET_ADMIN).
var ErrNoNetns = errors.New("network namespaces unavailable")

// Network is a private layer-2 network: one namespace per node, all joined
// by a bridge that lives in a switch namespace, and one veth from the test
// process's own namespace into that switch, so clients in the test process
// reach every node directly.
type Network struct {
	// Name is unique per run; every namespace and link name derives from it.
	Name string
	// Subnet is the /24 used only inside this network.
	Subnet netip.Prefix
	// HostIP is the test process's address on the network.
	HostIP netip.Addr

	switchNS string
	hostLink string
	nodes    []NetNode

	mu     sync.Mutex
	closed bool
	unreg  func()
}

// NetNode is one node's namespace and address.
type NetNode struct {
	ID        string
	Namespace string
	IP        netip.Addr
}

// CanUseNetns reports whether this process may create network namespaces,
// and why not when it may not. The answer cannot change while the process
// runs, so the probe runs once and cases running side by side share it.
func CanUseNetns() (bool, string) {
	return netnsProbe()
}

var netnsProbe = sync.OnceValues(func() (bool, string) {
	if os.Geteuid() != 0 {
		return false, "not running as root (euid " + strconv.Itoa(os.Geteuid()) + ")"
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return false, tool + " not found in PATH"
		}
	}
	probe := fmt.Sprintf("%sprobe-%d", nsPrefix, os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return false, "ip netns add failed: " + strings.TrimSpace(string(out))
	}
	defer exec.Command("ip", "netns", "del", probe).Run()
	if out, err := exec.Command("ip", "netns", "exec", probe, "nft", "list", "tables").CombinedOutput(); err != nil {
		return false, "nft inside a namespace failed: " + strings.TrimSpace(string(out))
	}
	return true, ""
})

// NewNetwork creates the switch namespace, its bridge, one namespace per
// node ID and the host veth. tag makes the names unique among runs of this
// process (use the seed and case name). On error everything created so far
// is removed.
func NewNetwork(tag string, ids []string) (*Network, error) {
	if ok, why := CanUseNetns(); !ok {
		return nil, fmt.Errorf("%w: %s", ErrNoNetns, why)
	}
	if len(ids) == 0 || len(ids) > 200 {
		return nil, fmt.Errorf("network: %d node IDs, want 1 to 200", len(ids))
	}
	SweepStale()
	h := fnv.New32a()
	fmt.Fprintf(h, "%d/%s", os.Getpid(), tag)
	sum := h.Sum32()
	name := fmt.Sprintf("%s%d-%06x", nsPrefix, os.Getpid(), sum&0xffffff)
	subnet, err := pickSubnet(sum)
	if err != nil {
		return nil, err
	}
	n := &Network{
		Name:     name,
		Subnet:   subnet,
		switchNS: name + "-sw",
		// Link names are limited to 15 bytes and the host link lives in the
		// shared root namespace, so it gets the hash, not the long name.
		hostLink: fmt.Sprintf("qj%08x", sum),
	}
	base := subnet.Addr().As4()
	addr := func(i int) netip.Addr {
		a := base
		a[3] = byte(i)
		return netip.AddrFrom4(a)
	}
	n.HostIP = addr(254)
	for i, id := range ids {
		n.nodes = append(n.nodes, NetNode{ID: id, Namespace: fmt.Sprintf("%s-%s", name, id), IP: addr(i + 10)})
	}
	n.unreg = registerCleanup(func() { n.Close() })
	if err := n.build(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Network) build() error {
	bits := strconv.Itoa(n.Subnet.Bits())
	steps := [][]string{
		{"ip", "netns", "add", n.switchNS},
		{"ip", "-n", n.switchNS, "link", "set", "lo", "up"},
		{"ip", "-n", n.switchNS, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", n.switchNS, "link", "set", "br0", "up"},
	}
	for i, nd := range n.nodes {
		port := fmt.Sprintf("p%d", i)
		steps = append(steps,
			[]string{"ip", "netns", "add", nd.Namespace},
			[]string{"ip", "-n", nd.Namespace, "link", "set", "lo", "up"},
			[]string{"ip", "-n", n.switchNS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", nd.Namespace},
			[]string{"ip", "-n", n.switchNS, "link", "set", port, "master", "br0", "up"},
			[]string{"ip", "-n", nd.Namespace, "addr", "add", nd.IP.String() + "/" + bits, "dev", "eth0"},
			[]string{"ip", "-n", nd.Namespace, "link", "set", "eth0", "up"},
		)
	}
	steps = append(steps,
		[]string{"ip", "link", "add", n.hostLink, "type", "veth", "peer", "name", "host", "netns", n.switchNS},
		[]string{"ip", "-n", n.switchNS, "link", "set", "host", "master", "br0", "up"},
		[]string{"ip", "addr", "add", n.HostIP.String() + "/" + bits, "dev", n.hostLink},
		[]string{"ip", "link", "set", n.hostLink, "up"},
	)
	for _, s := range steps {
		if err := run(s...); err != nil {
			return fmt.Errorf("network %s: %w", n.Name, err)
		}
	}
	return nil
}

// Nodes returns the nodes of the network in the order they were given.
func (n *Network) Nodes() []NetNode { return append([]NetNode(nil), n.nodes...) }

// Node returns the namespace and address of node id.
func (n *Network) Node(id string) (NetNode, bool) {
	for _, nd := range n.nodes {
		if nd.ID == id {
			return nd, true
		}
	}
	return NetNode{}, false
}

// Grudge maps a node ID to the IDs whose packets it drops on arrival. A
// symmetric partition lists each pair in both directions.
type Grudge map[string][]string

// Partition replaces every node's drop rules with those of g. Nodes not in g
// drop nothing. Traffic from the test process is never dropped.
func (n *Network) Partition(g Grudge) error {
	for _, nd := range n.nodes {
		var srcs []string
		for _, from := range g[nd.ID] {
			peer, ok := n.Node(from)
			if !ok {
				return fmt.Errorf("partition: unknown node %q in grudge of %s", from, nd.ID)
			}
			if from == nd.ID {
				return fmt.Errorf("partition: node %s cannot drop its own packets", nd.ID)
			}
			srcs = append(srcs, peer.IP.String())
		}
		if err := n.setDrops(nd, srcs); err != nil {
			return err
		}
	}
	return nil
}

// Heal removes every drop rule.
func (n *Network) Heal() error { return n.Partition(nil) }

// setDrops atomically replaces node nd's drop table: nft -f applies the
// whole script as one transaction, so there is no moment with half a rule
// set.
func (n *Network) setDrops(nd NetNode, srcs []string) error {
	var script bytes.Buffer
	// "add table" then "delete table" makes the delete succeed whether or
	// not the table existed.
	script.WriteString("add table inet qjepsen\ndelete table inet qjepsen\n")
	if len(srcs) > 0 {
		sort.Strings(srcs)
		script.WriteString("table inet qjepsen {\n chain input {\n  type filter hook input priority -10; policy accept;\n")
		fmt.Fprintf(&script, "  ip saddr { %s } drop\n }\n}\n", strings.Join(srcs, ", "))
	}
	cmd := exec.Command("ip", "netns", "exec", nd.Namespace, "nft", "-f", "-")
	cmd.Stdin = &script
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %v: %s", nd.Namespace, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Rules returns node id's current nftables ruleset, for reports and tests.
func (n *Network) Rules(id string) (string, error) {
	nd, ok := n.Node(id)
	if !ok {
		return "", fmt.Errorf("rules: unknown node %q", id)
	}
	out, err := exec.Command("ip", "netns", "exec", nd.Namespace, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("nft list ruleset in %s: %v: %s", nd.Namespace, err, out)
	}
	return string(out), nil
}

// Exec runs a command inside node id's namespace and returns its combined
// output.
func (n *Network) Exec(id string, args ...string) (string, error) {
	nd, ok := n.Node(id)
	if !ok {
		return "", fmt.Errorf("exec: unknown node %q", id)
	}
	out, err := exec.Command("ip", append([]string{"netns", "exec", nd.Namespace}, args...)...).CombinedOutput()
	return string(out), err
}

// Close removes the host link and every namespace (which removes their
// links). It is safe to call more than once and from a signal handler.
func (n *Network) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	if n.unreg != nil {
		n.unreg()
	}
	var errs []error
	if linkExists(n.hostLink) {
		if err := run("ip", "link", "del", n.hostLink); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ns := range append([]string{n.switchNS}, nsNames(n.nodes)...) {
		if nsExists(ns) {
			if err := run("ip", "netns", "del", ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func nsNames(nodes []NetNode) []string {
	var out []string
	for _, nd := range nodes {
		out = append(out, nd.Namespace)
	}
	return out
}

// SweepStale deletes namespaces left by runs whose process no longer exists
// (a test binary killed with SIGKILL cannot clean up after itself).
func SweepStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], nsPrefix) {
			continue
		}
		rest := strings.TrimPrefix(f[0], nsPrefix)
		rest = strings.TrimPrefix(rest, "probe-")
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		_ = run("ip", "netns", "del", f[0])
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// pickSubnet chooses a 10.x.y.0/24 that no route or address in the test
// process's namespace overlaps, starting from a hash-derived candidate.
func pickSubnet(seed uint32) (netip.Prefix, error) {
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ip route: %w", err)
	}
	var used []netip.Prefix
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dst := f[0]
		if dst == "local" || dst == "broadcast" || dst == "unicast" {
			if len(f) < 2 {
				continue
			}
			dst = f[1]
		}
		if dst == "default" {
			continue
		}
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if p, err := netip.ParsePrefix(dst); err == nil {
			used = append(used, p)
		}
	}
	for i := uint32(0); i < 4096; i++ {
		v := seed + i*7919
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + v%100), byte(v >> 8), 0}), 24)
		clash := false
		for _, u := range used {
			if u.Overlaps(cand) {
				clash = true
				break
			}
		}
		if !clash {
			return cand, nil
		}
	}
	return netip.Prefix{}, errors.New("network: no free 10.x.y.0/24 subnet")
}

func linkExists(name string) bool { return exec.Command("ip", "link", "show", name).Run() == nil }

func nsExists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

package jepsen

import (
	"context"
	"path/filepath"

	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
)

// registerCleanup adds fn to the interrupt cleanups that node processes
// register too (harness.RegisterCleanup), so that on ^C namespaces, mounts
// and processes go in the reverse order of their creation.
func registerCleanup(fn func()) (unregister func()) { return harness.RegisterCleanup(fn) }

// BuildBinary builds cmd/quorumq into dir and returns the binary's path.
// It is a test build (-tags fakeclock): a node started with
// --fake-clock-file reads its wall-clock offset from that file (clock.go);
// without the flag it is the release server.
func BuildBinary(dir string) (string, error) {
	bin := filepath.Join(dir, "quorumq")
	return bin, harness.BuildBinary(bin, nil, "-tags", "fakeclock")
}

// Cluster is the suite's cluster of server processes (harness.Cluster),
// with the gossip checks of gossip.go.
type Cluster struct{ *harness.Cluster }

// Node is one member of the cluster under test.
type Node = harness.Node

// Convergence is every node's state after healing.
type Convergence = harness.Convergence

// StartCluster starts the case's nodes, each in its namespace of netw (on
// loopback when netw is nil), and waits until the cluster has a leader
// and every node is a voter.
func StartCluster(ctx context.Context, cfg harness.ClusterConfig, netw *Network) (*Cluster, error) {
	if netw != nil {
		cfg.Place = func(id string) harness.Placement {
			nd, _ := netw.Node(id)
			return harness.Placement{Namespace: nd.Namespace, IP: nd.IP}
		}
	}
	c, err := harness.StartCluster(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &Cluster{c}, nil
}
